//! Classification: [`plan`] parses a query string and gives each statement its kind and
//! route (and its merge, split, COPY and EXPLAIN plans); `analyze` decides kind and route
//! per statement type.

use std::sync::Arc;

use pg_query::protobuf;
use pg_query::NodeEnum;

use super::explain::{explain_merge, explain_option};
use super::query::{route_query, writes_reference};
use super::session::{
    calls, dirties, reshapes, sequence_fn, session_fn, unsupported_encoding, SESSION_LOCKS,
};
use super::split::insert_split;
use super::stmt::{Execution, Plan, RouteSpec, SavepointOp, StmtKind, StmtPlan, TpcOp};
use super::template::Template;
use super::writes::{key_update, route_insert};
use crate::error::ProxyError;
use crate::sharding::shardmap::{ShardMap, TableRule};

/// Parses and routes `sql` against `map`.
pub fn plan(map: &ShardMap, sql: &str) -> Result<Plan, ProxyError> {
    plan_template(map, sql, None)
}

/// [`plan`], as the literal template `tpl` when given: its key constants stay references
/// to "constant #n", and `tpl` is vetoed when the plan depends on a constant's value.
pub(super) fn plan_template(
    map: &ShardMap,
    sql: &str,
    tpl: Option<&Template>,
) -> Result<Plan, ProxyError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| match e {
        pg_query::Error::Parse(m) => ProxyError::Syntax(m),
        other => ProxyError::Syntax(format!("could not parse statement: {other}")),
    })?;
    let mut stmts = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let start = raw.stmt_location.max(0) as usize;
        let len = if raw.stmt_len == 0 {
            sql.len().saturating_sub(start)
        } else {
            raw.stmt_len as usize
        };
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let span = (start, (start + len).min(sql.len()));
        let text = sql.get(span.0..span.1).unwrap_or("");
        if let Some((kind, route)) = super::sql_prepare::classify(node, text, span.0) {
            // Kept and run by the session (PREPARE, EXECUTE).
            stmts.push(StmtPlan::plain(kind, route, span, false));
            continue;
        }
        if let Some((kind, route)) = super::temp_function::classify(map, node, text, plan) {
            // A temporary function goes to the shard its body reaches (its temporary objects
            // stay on that backend: closed, not pooled, after).
            let dirties = matches!(node, NodeEnum::CreateFunctionStmt(_));
            stmts.push(StmtPlan::plain(kind, route, span, dirties));
            continue;
        }
        if let NodeEnum::InsertStmt(ins) = node {
            // An INSERT the proxy completes first is planned in its completed form.
            let exec = match super::generate::plan_generate(map, ins) {
                Ok(Some(g)) => Some(Ok(g)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(g) = exec {
                let (route, exec) = match g {
                    Ok(g) => (
                        RouteSpec::Refuse(ProxyError::Internal(
                            "an INSERT that needs generated values was run as written".into(),
                        )),
                        Execution::Generate(Arc::new(g)),
                    ),
                    Err(e) => (RouteSpec::Refuse(e), Execution::Forward),
                };
                stmts.push(StmtPlan {
                    kind: StmtKind::Write,
                    route,
                    span,
                    replicated: false,
                    exec,
                    reshapes: false,
                    dirties: false,
                });
                continue;
            }
        }
        let (kind, mut route) = analyze(map, node, tpl);
        if !matches!(kind, StmtKind::SessionFn(_)) && mentions_notify(&sql[span.0..span.1]) {
            route = super::notify::route_calls(map, node, route);
        }
        let replicated = matches!(route, RouteSpec::All)
            && (kind == StmtKind::Ddl || writes_reference(map, node));
        let mut gather = None;
        if let NodeEnum::SelectStmt(s) = node {
            if may_scatter(&route) {
                match crate::gather::plan::build(&sql[span.0..span.1], s) {
                    Ok(g) => gather = g.map(Arc::new),
                    Err(e) => route = refuse_scatter(route, e),
                }
            }
        }
        let cursor = super::cursor::analyze(node, may_scatter(&route));
        if let Some(super::cursor::CursorCmd::Declare(d)) = &cursor {
            if let Err(e) = &d.merge {
                if may_scatter(&route) {
                    route = refuse_scatter(route, e.clone());
                }
            }
        }
        let explain = match node {
            NodeEnum::ExplainStmt(e) => explain_merge(e),
            _ => None,
        };
        let mut copy = None;
        if let NodeEnum::CopyStmt(c) = node {
            let rule = c
                .relation
                .as_ref()
                .and_then(|r| map.table(&r.schemaname, &r.relname));
            let table = match rule {
                Some(TableRule::Sharded(t)) => Some(Some(t)),
                Some(TableRule::Reference) => Some(None),
                None => None,
            };
            let mut generated = None;
            if c.is_from {
                match copy_generated(map, c) {
                    Ok(g) => generated = g,
                    Err(e) => route = RouteSpec::Refuse(e),
                }
            }
            if let (true, false, Some(table)) =
                (c.is_from, matches!(route, RouteSpec::Refuse(_)), table)
            {
                match crate::routing::copyplan::plan(c, table, generated) {
                    Ok(p) => copy = Some(Arc::new(p)),
                    Err(e) => route = RouteSpec::Refuse(e),
                }
            }
        }
        let split = match node {
            NodeEnum::InsertStmt(i) => {
                let split = insert_split(map, i, &sql[span.0..span.1], tpl);
                let values = i
                    .select_stmt
                    .as_ref()
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(
                        |n| matches!(n, NodeEnum::SelectStmt(sel) if !sel.values_lists.is_empty()),
                    );
                let sharded = values
                    && i.relation.as_ref().is_some_and(|r| {
                        matches!(
                            map.table(&r.schemaname, &r.relname),
                            Some(TableRule::Sharded(_))
                        )
                    });
                if sharded && split.is_none() && may_scatter(&route) {
                    // Never send one INSERT to several shards: that would duplicate rows.
                    route = refuse_scatter(
                        route,
                        ProxyError::Unsupported(
                            "multi-row INSERT whose rows belong to different shards can only be split when every shard key is a constant".into(),
                        ),
                    );
                }
                split
            }
            _ => None,
        };
        // INSERT … SELECT * FROM unnest($1, …): split by the session, as a pipeline of its
        // own; anywhere else it is refused (never sent to several shards as written).
        let arrays = match node {
            NodeEnum::InsertStmt(i) if split.is_none() => {
                super::array_split::for_insert(map, i).map(Arc::new)
            }
            _ => None,
        };
        if let Some(a) = &arrays {
            route = RouteSpec::Refuse(ProxyError::Unsupported(format!(
                "INSERT … SELECT FROM unnest of array parameters into sharded table {} is split by shard only as a pipeline of its own ([Parse], Bind, [Describe], Execute, [Close], Sync)",
                a.table.what()
            )));
        }
        let dirties = dirties(node);
        if dirties && !map.pool.session_mode && calls(node, SESSION_LOCKS) {
            // Held by a backend the client gives back after the statement: it would be
            // released behind the client's back (the connection is closed) — refuse.
            route = RouteSpec::Refuse(ProxyError::Unsupported(
                "session-level advisory locks (pg_advisory_lock, pg_try_advisory_lock) cannot be held under transaction pooling: use pg_advisory_xact_lock inside a transaction block, or pool.mode: session".into(),
            ));
        }
        stmts.push(StmtPlan {
            reshapes: kind == StmtKind::Ddl && reshapes(node),
            dirties,
            kind,
            route,
            span,
            replicated,
            exec: match (gather, explain, split, copy) {
                _ if cursor.is_some() => match cursor {
                    Some(c) => Execution::Cursor(c),
                    None => Execution::Forward,
                },
                (Some(g), ..) => Execution::Merge(g),
                (_, Some(e), ..) => Execution::Explain(e),
                (_, _, Some(s), _) => Execution::SplitInsert(s),
                (.., Some(c)) => Execution::Copy(c),
                _ => match arrays {
                    Some(a) => Execution::SplitArrays(a),
                    None => Execution::Forward,
                },
            },
        });
    }
    Ok(Plan { stmts })
}

/// The generated column a `COPY … FROM` into a sharded table leaves out of its column
/// list: the proxy appends its values to every row (see [`crate::sharding::catalog`]).
/// Refused when there are several, or for a reference table (each shard's own sequence
/// would fill them, and the values would collide across shards).
fn copy_generated(
    map: &ShardMap,
    c: &protobuf::CopyStmt,
) -> Result<Option<crate::routing::copyplan::CopyGen>, ProxyError> {
    let Some(rel) = c.relation.as_ref() else {
        return Ok(None);
    };
    let Some(rule) = map.table(&rel.schemaname, &rel.relname) else {
        return Ok(None);
    };
    if c.attlist.is_empty() {
        return Ok(None); // every column is given
    }
    if !map.catalog.in_use() {
        return Ok(None);
    }
    let cat = match map.catalog.table(&rel.schemaname, &rel.relname) {
        Some(crate::sharding::catalog::TableEntry::Columns(cat)) => cat,
        Some(_) => return Ok(None),
        None => {
            map.catalog.request_refresh();
            return Err(ProxyError::Unavailable(format!(
                "the columns of table {} have not been read from the shards yet (needed to give its generated columns values unique across shards); retry in a moment",
                rel.relname
            )));
        }
    };
    let listed = crate::routing::copyplan::column_names(c);
    let missing: Vec<_> = cat
        .generated
        .iter()
        .filter(|g| !listed.contains(&g.name.as_str()))
        .collect();
    match (missing.as_slice(), rule) {
        ([], _) => Ok(None),
        ([g], TableRule::Sharded(_)) => Ok(Some(crate::routing::copyplan::CopyGen {
            column: (*g).clone(),
            schema: if rel.schemaname == "public" {
                String::new()
            } else {
                rel.schemaname.clone()
            },
            table: rel.relname.clone(),
        })),
        ([g, ..], _) => Err(ProxyError::Unsupported(format!(
            "COPY into {} leaves {} to each shard's own sequence {}, which is not unique across shards; list the column and give its values, or insert the rows with INSERT … VALUES (the proxy gives the values)",
            rel.relname, g.name, g.sequence
        ))),
    }
}

/// Whether `text` may call `pg_notify` (a cheap look before walking the statement's tree).
fn mentions_notify(text: &str) -> bool {
    text.as_bytes()
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"pg_notify"))
}

/// Whether a route can end up on several shards.
fn may_scatter(route: &RouteSpec) -> bool {
    match route {
        RouteSpec::All | RouteSpec::Subset(_) => true,
        RouteSpec::Keys(kr) => matches!(*kr.spread, RouteSpec::All),
        _ => false,
    }
}

/// The route with its multi-shard case refused by `e` (a key-pinned single shard still runs).
fn refuse_scatter(route: RouteSpec, e: ProxyError) -> RouteSpec {
    match route {
        RouteSpec::Keys(kr) => {
            let mut k = (*kr).clone();
            k.spread = Box::new(RouteSpec::Refuse(e));
            RouteSpec::Keys(Arc::new(k))
        }
        _ => RouteSpec::Refuse(e),
    }
}

/// A statement's kind and route (`tpl`: see [`plan_template`]).
fn analyze(map: &ShardMap, node: &NodeEnum, tpl: Option<&Template>) -> (StmtKind, RouteSpec) {
    use NodeEnum as N;
    match node {
        N::SelectStmt(s) => match session_fn(s).or_else(|| sequence_fn(map, s)) {
            Some(f) => (StmtKind::SessionFn(f), RouteSpec::Any),
            None => match super::notify::notify_fn(s) {
                // Where the proxies listen, should the session forward it.
                Some(f) => (StmtKind::SessionFn(f), RouteSpec::Shard(map.default_shard)),
                None => (StmtKind::Read, route_query(map, node, Some(s), tpl)),
            },
        },
        N::InsertStmt(i) => (StmtKind::Write, route_insert(map, node, i, tpl)),
        N::UpdateStmt(u) => {
            let route = route_query(map, node, None, tpl);
            if let Some(rel) = &u.relation {
                if let Some(TableRule::Sharded(t)) = map.table(&rel.schemaname, &rel.relname) {
                    let new_key = u.target_list.iter().find_map(|x| match &x.node {
                        Some(N::ResTarget(r)) if r.name.eq_ignore_ascii_case(&t.key) => {
                            Some(r.val.as_deref())
                        }
                        _ => None,
                    });
                    if let Some(new_key) = new_key {
                        return (StmtKind::Write, key_update(map, t, new_key, route, tpl));
                    }
                }
            }
            (StmtKind::Write, route)
        }
        N::DeleteStmt(_) | N::MergeStmt(_) => (StmtKind::Write, route_query(map, node, None, tpl)),
        N::TransactionStmt(t) => {
            use protobuf::TransactionStmtKind as T;
            let kind = match T::try_from(t.kind).unwrap_or(T::Undefined) {
                T::TransStmtBegin | T::TransStmtStart => StmtKind::Begin,
                T::TransStmtCommit => StmtKind::Commit,
                T::TransStmtRollback => StmtKind::Rollback,
                T::TransStmtSavepoint => StmtKind::Savepoint(SavepointOp::Define(t.savepoint_name.clone())),
                T::TransStmtRelease => StmtKind::Savepoint(SavepointOp::Release(t.savepoint_name.clone())),
                T::TransStmtRollbackTo => StmtKind::Savepoint(SavepointOp::RollbackTo(t.savepoint_name.clone())),
                T::TransStmtPrepare | T::TransStmtCommitPrepared | T::TransStmtRollbackPrepared => {
                    let gid = t.gid.clone();
                    let op = match T::try_from(t.kind).unwrap_or(T::Undefined) {
                        T::TransStmtPrepare => TpcOp::Prepare(gid),
                        T::TransStmtCommitPrepared => TpcOp::CommitPrepared(gid),
                        _ => TpcOp::RollbackPrepared(gid),
                    };
                    // The session answers it (alone: among other statements it is refused,
                    // see `crate::session::client_tpc`); it never reaches a shard as sent.
                    return (StmtKind::TwoPhase(op), RouteSpec::Any);
                }
                T::Undefined => {
                    return (
                        StmtKind::Other,
                        RouteSpec::Refuse(ProxyError::Unsupported("unknown transaction statement".into())),
                    )
                }
            };
            (kind, RouteSpec::Any)
        }
        N::VariableSetStmt(v) => {
            use protobuf::VariableSetKind as K;
            if let Some(name) = unsupported_encoding(v) {
                return (
                    StmtKind::SetLocal,
                    RouteSpec::Refuse(ProxyError::Unsupported(
                        crate::wire::encoding::unsupported_encoding(&name),
                    )),
                );
            }
            let kind = match K::try_from(v.kind).unwrap_or(K::Undefined) {
                K::VarResetAll => StmtKind::ResetAll,
                K::VarReset => StmtKind::Reset { name: v.name.to_ascii_lowercase() },
                // SET SESSION CHARACTERISTICS AS TRANSACTION …: a session setting (it sets
                // default_transaction_*), kept and replayed like any SET.
                K::VarSetMulti if v.name.eq_ignore_ascii_case("session characteristics") => {
                    StmtKind::Set { name: v.name.to_ascii_lowercase() }
                }
                _ if v.is_local || v.kind == K::VarSetMulti as i32 => StmtKind::SetLocal,
                _ => StmtKind::Set { name: v.name.to_ascii_lowercase() },
            };
            (kind, RouteSpec::Any)
        }
        N::VariableShowStmt(_) => (StmtKind::Show, RouteSpec::Any),
        N::DiscardStmt(d) => {
            if d.target == protobuf::DiscardMode::DiscardAll as i32 {
                (StmtKind::DiscardAll, RouteSpec::Any)
            } else {
                (StmtKind::Other, RouteSpec::Any)
            }
        }
        N::DeallocateStmt(d) => {
            (StmtKind::Deallocate(if d.isall { None } else { Some(d.name.clone()) }), RouteSpec::Any)
        }
        // Top-level ones are planned by `sql_prepare::classify`.
        N::PrepareStmt(_) | N::ExecuteStmt(_) => (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "PREPARE/EXECUTE is supported through the proxy only as a statement of its own, or inside EXPLAIN or CREATE TABLE AS".into(),
            )),
        ),
        N::ListenStmt(_) | N::UnlistenStmt(_) | N::NotifyStmt(_) => {
            super::notify::analyze(map, node).unwrap_or((StmtKind::Other, RouteSpec::Any))
        }
        N::ExplainStmt(e) => {
            let inner = e.query.as_ref().and_then(|q| q.node.as_ref());
            match inner {
                Some(q) => {
                    let (kind, route) = analyze(map, q, tpl);
                    // EXPLAIN ANALYZE runs the statement: a write stays a write.
                    let runs = explain_option(e, "analyze").is_some_and(|v| v != "false" && v != "off");
                    let kind = if runs && kind == StmtKind::Write {
                        StmtKind::Write
                    } else {
                        StmtKind::Read
                    };
                    (kind, route)
                }
                None => (StmtKind::Read, RouteSpec::Any),
            }
        }
        N::CopyStmt(c) => route_copy(map, node, c, tpl),
        N::DeclareCursorStmt(d) => {
            // The cursor lives on the shard its query runs on; on several, the session keeps
            // one on each and merges them FETCH by FETCH (`cursor::analyze` plans the merge).
            let route = match d.query.as_ref().and_then(|q| q.node.as_ref()) {
                Some(q) => analyze(map, q, tpl).1,
                None => RouteSpec::Any,
            };
            (StmtKind::Read, route)
        }
        N::FetchStmt(_) | N::ClosePortalStmt(_) => (StmtKind::Read, RouteSpec::Any),
        N::DoStmt(_) | N::CallStmt(_) => (StmtKind::Other, RouteSpec::Shard(map.default_shard)),
        N::CreatedbStmt(_) | N::DropdbStmt(_) => (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "CREATE/DROP DATABASE through the proxy is not supported; create the database on each shard".into(),
            )),
        ),
        // LOCK goes where its tables are: an unsharded table lives on the default shard
        // only (elsewhere the LOCK would fail, or lock a stray table of that name).
        N::LockStmt(l) => {
            let mut unsharded = false;
            let mut everywhere = false;
            for r in &l.relations {
                if let Some(NodeEnum::RangeVar(rv)) = r.node.as_ref() {
                    match map.table(&rv.schemaname, &rv.relname) {
                        Some(_) => everywhere = true,
                        None => unsharded = true,
                    }
                }
            }
            let route = match (unsharded, everywhere) {
                (true, true) => RouteSpec::Refuse(ProxyError::Unsupported(
                    "LOCK of an unsharded table together with sharded or reference tables; lock them in two statements".into(),
                )),
                (true, false) => RouteSpec::Shard(map.default_shard),
                _ => RouteSpec::All,
            };
            (StmtKind::Other, route)
        }
        N::VacuumStmt(_) | N::CheckPointStmt(_) | N::ReindexStmt(_) | N::ClusterStmt(_) => {
            (StmtKind::Other, RouteSpec::All)
        }
        // Everything else is a utility/DDL statement: it runs on every shard.
        _ => (StmtKind::Ddl, RouteSpec::All),
    }
}

fn route_copy(
    map: &ShardMap,
    node: &NodeEnum,
    c: &protobuf::CopyStmt,
    tpl: Option<&Template>,
) -> (StmtKind, RouteSpec) {
    if c.is_program || !c.filename.is_empty() {
        return (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "COPY to or from a server file or program is not supported through the proxy; use STDIN/STDOUT".into(),
            )),
        );
    }
    if let Some(rel) = &c.relation {
        let rule = map.table(&rel.schemaname, &rel.relname);
        if c.is_from {
            return match rule {
                None => (StmtKind::CopyIn, RouteSpec::Shard(map.default_shard)),
                // Split by key (sharded) or copied to every shard (reference): see StmtPlan::copy.
                Some(_) => (StmtKind::CopyIn, RouteSpec::All),
            };
        }
        return match rule {
            None => (StmtKind::Read, RouteSpec::Shard(map.default_shard)),
            Some(TableRule::Reference) => (StmtKind::Read, RouteSpec::Any),
            Some(_) => (StmtKind::Read, RouteSpec::All),
        };
    }
    match c.query.as_ref().and_then(|q| q.node.as_ref()) {
        Some(q) => {
            let route = analyze(map, q, tpl).1;
            if let NodeEnum::SelectStmt(s) = q {
                if may_scatter(&route) && !matches!(crate::gather::plan::build("", s), Ok(None)) {
                    let e = ProxyError::Unsupported(
                        "COPY (query) TO STDOUT across shards with ORDER BY, LIMIT, DISTINCT or aggregates is not supported; run the query itself".into(),
                    );
                    return (StmtKind::Read, refuse_scatter(route, e));
                }
            }
            (StmtKind::Read, route)
        }
        None => (StmtKind::Read, route_query(map, node, None, tpl)),
    }
}
