//! Statements about the client's session: the session functions the proxy answers itself
//! (`pg_backend_pid()` …), client encodings it refuses, DDL that reshapes prepared statements,
//! and statements that leave state on a pooled backend ([`dirties`], [`SESSION_LOCKS`]).

use pg_query::protobuf::{self, a_const::Val, SetOperation};
use pg_query::{NodeEnum, NodeRef};

use super::clauses::name_list;
use super::stmt::{PidArg, SessionCall, SessionFn};
use crate::sharding::shardmap::ShardMap;

/// The one function call `SELECT f(…) [AS name]` consists of, with nothing else (no FROM,
/// WHERE, other column, DISTINCT, GROUP BY, ORDER BY, LIMIT, INTO; not an aggregate or window
/// call), and its name (`pg_catalog.` allowed).
pub(super) fn bare_call(
    s: &protobuf::SelectStmt,
) -> Option<(&protobuf::ResTarget, &protobuf::FuncCall, &str)> {
    let bare = s.from_clause.is_empty()
        && s.where_clause.is_none()
        && s.target_list.len() == 1
        && s.op == SetOperation::SetopNone as i32
        && s.values_lists.is_empty()
        && s.with_clause.is_none()
        && s.distinct_clause.is_empty()
        && s.group_clause.is_empty()
        && s.sort_clause.is_empty()
        && s.limit_count.is_none()
        && s.into_clause.is_none();
    if !bare {
        return None;
    }
    let Some(NodeEnum::ResTarget(rt)) = s.target_list[0].node.as_ref() else {
        return None;
    };
    let Some(NodeEnum::FuncCall(f)) = rt.val.as_ref().and_then(|v| v.node.as_ref()) else {
        return None;
    };
    if f.agg_star || f.agg_distinct || f.over.is_some() || !f.agg_order.is_empty() {
        return None;
    }
    let name = match name_list(&f.funcname).as_slice() {
        [n] | ["pg_catalog", n] => *n,
        _ => return None,
    };
    Some((rt, f, name))
}

/// `SELECT pg_backend_pid()` / `SELECT pg_cancel_backend(<pid>)` /
/// `SELECT pg_terminate_backend(<pid>)` and nothing else (see [`bare_call`]).
pub(super) fn session_fn(s: &protobuf::SelectStmt) -> Option<SessionFn> {
    let (rt, f, name) = bare_call(s)?;
    let call = match (name, f.args.as_slice()) {
        ("pg_backend_pid", []) => SessionCall::BackendPid,
        ("pg_cancel_backend", [arg]) => SessionCall::Cancel(pid_arg(arg)?),
        ("pg_terminate_backend", [arg]) => SessionCall::Terminate(pid_arg(arg)?),
        _ => return None,
    };
    let column = if rt.name.is_empty() {
        name.to_string()
    } else {
        rt.name.clone()
    };
    Some(SessionFn { call, column })
}

/// `SELECT currval(<sequence>)` / `SELECT lastval()` alone (see [`bare_call`]),
/// when the sequence is one the proxy assigns values of: answered from the values it gave the
/// session (under transaction pooling a shard's own `currval` belongs to whichever client
/// used that backend last). `<sequence>` may be `'name'`, `'name'::regclass` or
/// `pg_get_serial_sequence('table', 'column')`.
pub(super) fn sequence_fn(map: &ShardMap, s: &protobuf::SelectStmt) -> Option<SessionFn> {
    let (rt, f, name) = bare_call(s)?;
    let text = |n: &protobuf::Node| -> Option<String> {
        match n.node.as_ref()? {
            NodeEnum::AConst(c) => match &c.val {
                Some(Val::Sval(s)) => Some(s.sval.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    let call = match (name, f.args.as_slice()) {
        ("lastval", []) if map.catalog.has_generated() => SessionCall::LastVal,
        ("currval", [arg]) => {
            let seq = match arg.node.as_ref()? {
                NodeEnum::TypeCast(c) => map.catalog.sequence_named(&text(c.arg.as_deref()?)?)?,
                NodeEnum::FuncCall(g)
                    if matches!(
                        name_list(&g.funcname).as_slice(),
                        ["pg_get_serial_sequence"] | ["pg_catalog", "pg_get_serial_sequence"]
                    ) =>
                {
                    let [t, c] = g.args.as_slice() else {
                        return None;
                    };
                    map.catalog.sequence_of(&text(t)?, &text(c)?)?
                }
                _ => map.catalog.sequence_named(&text(arg)?)?,
            };
            SessionCall::CurrVal(seq)
        }
        _ => return None,
    };
    let column = if rt.name.is_empty() {
        name.to_string()
    } else {
        rt.name.clone()
    };
    Some(SessionFn { call, column })
}

/// The value of `SET [LOCAL] client_encoding` / `SET NAMES` when it is an encoding the proxy
/// does not speak (see [`crate::wire::encoding::canonical_encoding`]).
pub(super) fn unsupported_encoding(v: &protobuf::VariableSetStmt) -> Option<String> {
    if !v.name.eq_ignore_ascii_case("client_encoding")
        || v.kind != protobuf::VariableSetKind::VarSetValue as i32
    {
        return None;
    }
    let value = match v.args.first()?.node.as_ref()? {
        NodeEnum::AConst(c) => match &c.val {
            Some(Val::Sval(s)) => s.sval.clone(),
            Some(Val::Ival(i)) => i.ival.to_string(),
            _ => return None,
        },
        _ => return None,
    };
    match crate::wire::encoding::canonical_encoding(&value) {
        Some(_) => None,
        None => Some(value),
    }
}

/// An integer literal, `$n`, or either cast to int2/int4.
fn pid_arg(arg: &protobuf::Node) -> Option<PidArg> {
    match arg.node.as_ref()? {
        NodeEnum::AConst(c) if !c.isnull => match &c.val {
            Some(Val::Ival(i)) => Some(PidArg::Value(i64::from(i.ival))),
            _ => None,
        },
        NodeEnum::ParamRef(p) if p.number >= 1 => {
            Some(PidArg::Param(usize::try_from(p.number - 1).ok()?))
        }
        NodeEnum::TypeCast(tc) => {
            let ty = tc.type_name.as_ref()?;
            let names = name_list(&ty.names);
            match names.last() {
                // No pg_cancel_backend(bigint) exists: that cast errors on the shard, as in Postgres.
                Some(&("int2" | "int4" | "integer" | "smallint")) => {}
                _ => return None,
            }
            pid_arg(tc.arg.as_deref()?)
        }
        _ => None,
    }
}

/// Whether a DDL statement can invalidate a prepared statement's result shape or the
/// objects it refers to (`cached plan must not change result type`, `cache lookup failed for
/// type`): anything that alters, drops or renames, and a view replaced in place. Creating
/// new objects (tables, indexes, temp tables) cannot, so it leaves prepared statements be.
pub(super) fn reshapes(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    match node {
        N::ViewStmt(v) => v.replace,
        N::AlterTableStmt(_)
        | N::DropStmt(_)
        | N::RenameStmt(_)
        | N::AlterEnumStmt(_)
        | N::AlterDomainStmt(_)
        | N::AlterObjectSchemaStmt(_)
        | N::AlterTypeStmt(_) => true,
        _ => false,
    }
}

/// Whether a statement can leave session state on a pooled backend that outlives its
/// transaction and that the proxy neither tracks nor resets: a setting made by
/// `set_config(…)`, a session advisory lock, a temporary object, or
/// anything a `DO` block or a `CALL`ed procedure may do. Transaction-scoped forms
/// (`pg_advisory_xact_lock`) end with the transaction and do not count. (`SET ROLE` and
/// `SET SESSION AUTHORIZATION` are settings the proxy tracks and resets.) Functions of the
/// application's own are not inspected.
pub(super) fn dirties(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    match node {
        N::DoStmt(_) | N::CallStmt(_) => return true,
        N::CreateStmt(c) if c.relation.as_ref().is_some_and(|r| r.relpersistence == "t") => {
            return true
        }
        N::ViewStmt(v) if v.view.as_ref().is_some_and(|r| r.relpersistence == "t") => return true,
        N::CreateSeqStmt(c) if c.sequence.as_ref().is_some_and(|r| r.relpersistence == "t") => {
            return true
        }
        N::CreateTableAsStmt(c)
            if c.into
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            return true
        }
        N::SelectStmt(s)
            if s.into_clause
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            return true
        }
        _ => {}
    }
    calls(node, DIRTYING_CALLS)
}

/// Functions whose effect outlives the transaction on the backend: `set_config` and the
/// session-level advisory locks ([`SESSION_LOCKS`]).
const DIRTYING_CALLS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Session-level advisory lock functions: the lock outlives the statement and its
/// transaction, on a backend the client does not keep under transaction pooling.
pub(super) const SESSION_LOCKS: &[&str] = DIRTYING_CALLS.split_at(1).1;

/// Whether the statement calls one of `names` (any schema) anywhere.
pub(super) fn calls(node: &NodeEnum, names: &[&str]) -> bool {
    node.nodes().iter().any(|(n, _, _, _)| match n {
        NodeRef::FuncCall(f) => f
            .funcname
            .last()
            .and_then(|n| match &n.node {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .is_some_and(|name| names.contains(&name)),
        _ => false,
    })
}
