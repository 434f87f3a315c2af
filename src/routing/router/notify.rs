//! LISTEN, UNLISTEN, NOTIFY and `pg_notify(…)`: the proxy answers them itself (see
//! `crate::session::notify`), so their kind carries what they say. Their route is the
//! default shard, where the proxies listen: it is used only where the session forwards a
//! NOTIFY or `pg_notify` among other statements (a pipeline that mixes them); LISTEN is never
//! forwarded (a pooled backend must not listen), UNLISTEN only where it is a no-op.

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

use super::clauses::name_list;
use super::session::{bare_call, calls};
use super::stmt::{NotifyCmd, RouteSpec, SessionCall, SessionFn, StmtKind, TextArg};
use crate::error::ProxyError;
use crate::sharding::shardmap::ShardMap;

/// The kind and route of a LISTEN, UNLISTEN or NOTIFY statement.
pub(super) fn analyze(map: &ShardMap, node: &NodeEnum) -> Option<(StmtKind, RouteSpec)> {
    let cmd = match node {
        NodeEnum::ListenStmt(l) => NotifyCmd::Listen(l.conditionname.clone()),
        NodeEnum::UnlistenStmt(u) => {
            NotifyCmd::Unlisten(Some(u.conditionname.clone()).filter(|c| !c.is_empty()))
        }
        NodeEnum::NotifyStmt(n) => NotifyCmd::Notify {
            channel: n.conditionname.clone(),
            payload: n.payload.clone(),
        },
        _ => return None,
    };
    // UNLISTEN is forwarded only where it is a no-op (the session listens on nothing): any
    // shard answers it.
    let route = match &cmd {
        NotifyCmd::Unlisten(_) => RouteSpec::Any,
        _ => RouteSpec::Shard(map.default_shard),
    };
    Some((StmtKind::Notify(Box::new(cmd)), route))
}

/// `SELECT pg_notify(channel, payload)` alone, each argument a string constant, NULL or a
/// parameter (possibly cast to text).
pub(super) fn notify_fn(s: &protobuf::SelectStmt) -> Option<SessionFn> {
    let (rt, f, name) = bare_call(s)?;
    let [channel, payload] = f.args.as_slice() else {
        return None;
    };
    if name != "pg_notify" {
        return None;
    }
    let call = SessionCall::Notify(Box::new((text_arg(channel)?, text_arg(payload)?)));
    let column = if rt.name.is_empty() {
        name.to_string()
    } else {
        rt.name.clone()
    };
    Some(SessionFn { call, column })
}

/// A string constant, NULL, or `$n`, possibly cast to a string type.
fn text_arg(arg: &protobuf::Node) -> Option<TextArg> {
    match arg.node.as_ref()? {
        NodeEnum::AConst(c) if c.isnull => Some(TextArg::Value(None)),
        NodeEnum::AConst(c) => match &c.val {
            Some(Val::Sval(s)) => Some(TextArg::Value(Some(s.sval.clone()))),
            _ => None,
        },
        NodeEnum::ParamRef(p) if p.number >= 1 => {
            Some(TextArg::Param(usize::try_from(p.number - 1).ok()?))
        }
        NodeEnum::TypeCast(tc) => {
            let names = name_list(&tc.type_name.as_ref()?.names);
            match names.last() {
                Some(&("text" | "varchar")) => text_arg(tc.arg.as_deref()?),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The route of a statement that calls `pg_notify` among other things: the default shard,
/// where the proxies listen, when it can run there; refused when it needs other shards (its
/// notification would reach no listener of the proxy).
pub(super) fn route_calls(map: &ShardMap, node: &NodeEnum, route: RouteSpec) -> RouteSpec {
    if !calls(node, &["pg_notify"]) {
        return route;
    }
    match route {
        RouteSpec::Any => RouteSpec::Shard(map.default_shard),
        RouteSpec::Shard(s) if s == map.default_shard => route,
        RouteSpec::Refuse(_) => route,
        _ => RouteSpec::Refuse(ProxyError::Unsupported(
            "pg_notify() in a statement that runs on other shards than the default one would reach no listener through the proxy; call SELECT pg_notify('channel', 'payload') on its own".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::map;
    use super::super::{plan, NotifyCmd, RouteSpec, SessionCall, StmtKind, TextArg};

    fn kind(sql: &str) -> StmtKind {
        plan(&map(), sql).unwrap().stmts[0].kind.clone()
    }

    #[test]
    fn listen_unlisten_notify_carry_their_channel() {
        assert_eq!(
            kind("LISTEN Chan"),
            StmtKind::Notify(Box::new(NotifyCmd::Listen("chan".into())))
        );
        assert_eq!(
            kind("UNLISTEN \"Chan\""),
            StmtKind::Notify(Box::new(NotifyCmd::Unlisten(Some("Chan".into()))))
        );
        assert_eq!(
            kind("UNLISTEN *"),
            StmtKind::Notify(Box::new(NotifyCmd::Unlisten(None)))
        );
        assert_eq!(
            kind("NOTIFY c, 'it''s'"),
            StmtKind::Notify(Box::new(NotifyCmd::Notify {
                channel: "c".into(),
                payload: "it's".into()
            }))
        );
        assert_eq!(
            kind("NOTIFY c"),
            StmtKind::Notify(Box::new(NotifyCmd::Notify {
                channel: "c".into(),
                payload: String::new()
            }))
        );
    }

    #[test]
    fn pg_notify_alone_is_the_sessions() {
        let call = |sql: &str| match kind(sql) {
            StmtKind::SessionFn(f) => Some(f.call),
            _ => None,
        };
        assert_eq!(
            call("SELECT pg_notify('c', 'p')"),
            Some(SessionCall::Notify(Box::new((
                TextArg::Value(Some("c".into())),
                TextArg::Value(Some("p".into()))
            ))))
        );
        assert_eq!(
            call("select pg_catalog.pg_notify($1::text, NULL)"),
            Some(SessionCall::Notify(Box::new((
                TextArg::Param(0),
                TextArg::Value(None)
            ))))
        );
        assert_eq!(call("SELECT pg_notify('c', 'p'), 1"), None);
        assert_eq!(call("SELECT pg_notify('c', now()::text)"), None);
    }

    #[test]
    fn pg_notify_in_a_larger_statement_runs_on_the_default_shard() {
        let m = map();
        let route = |sql: &str| plan(&m, sql).unwrap().stmts[0].route.clone();
        assert!(matches!(
            route("SELECT pg_notify('c', now()::text)"),
            RouteSpec::Shard(0)
        ));
        assert!(matches!(
            route("SELECT PG_NOTIFY('c', name) FROM unsharded WHERE id = 1"),
            RouteSpec::Shard(0)
        ));
        assert!(matches!(
            route("SELECT pg_notify('c', name) FROM users"),
            RouteSpec::Refuse(_)
        ));
        assert!(matches!(
            route("SELECT name FROM users WHERE id = 1"),
            RouteSpec::Shard(_)
        ));
    }
}
