//! Temporary PL/pgSQL functions (`CREATE FUNCTION pg_temp.f … LANGUAGE plpgsql`), routed by
//! the statements in their body. Sequelize's `findOrCreate` wraps its INSERT in one so that a
//! unique violation is caught without aborting the transaction, and sends it as one query:
//!
//! ```sql
//! CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response "users", OUT sequelize_caught_exception text)
//!   RETURNS RECORD AS $func_…$ BEGIN INSERT INTO "users" (…) VALUES (…) RETURNING * INTO response;
//!   EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS sequelize_caught_exception = PG_EXCEPTION_DETAIL;
//!   END $func_…$ LANGUAGE plpgsql;
//! SELECT (testfunc.response).*, testfunc.sequelize_caught_exception FROM pg_temp.testfunc();
//! DROP FUNCTION IF EXISTS pg_temp.testfunc()
//! ```
//!
//! A temporary function lives in one backend, so it must be created on the shard its body's
//! statements reach: the body is parsed with Postgres's PL/pgSQL parser (pg_query), each
//! SQL statement in it planned like any statement, and the function routed to their one
//! shard (a body that reaches no sharded table goes anywhere; one that reaches several shards,
//! or whose keys are not constants, is refused). Calls and `DROP FUNCTION pg_temp.…` then go
//! wherever the rest of their query goes, so the whole script runs on that shard.

use pg_query::{protobuf, NodeEnum};

use super::stmt::{Plan, RouteSpec, StmtKind};
use crate::error::ProxyError;
use crate::sharding::shardmap::ShardMap;

/// How a statement of a function's body is planned (the router's own `plan`, passed in so
/// that this module does not import the classifier that calls it).
pub(super) type Planner = fn(&ShardMap, &str) -> Result<Plan, ProxyError>;

/// Kind and route of a statement that creates or drops a temporary function; `None` for
/// any other statement.
pub(super) fn classify(
    map: &ShardMap,
    node: &NodeEnum,
    text: &str,
    plan: Planner,
) -> Option<(StmtKind, RouteSpec)> {
    match node {
        NodeEnum::CreateFunctionStmt(f) if in_pg_temp(&f.funcname) => Some((
            StmtKind::Other,
            body_route(map, text, &name_of(&f.funcname), plan),
        )),
        NodeEnum::DropStmt(d)
            if d.remove_type == protobuf::ObjectType::ObjectFunction as i32
                && !d.objects.is_empty()
                && d.objects.iter().all(|o| match o.node.as_ref() {
                    Some(NodeEnum::ObjectWithArgs(w)) => in_pg_temp(&w.objname),
                    _ => false,
                }) =>
        {
            // It lives where the rest of its query made it.
            Some((StmtKind::Other, RouteSpec::Any))
        }
        _ => None,
    }
}

/// Whether a qualified name is `pg_temp.name`.
fn in_pg_temp(name: &[pg_query::protobuf::Node]) -> bool {
    name.len() == 2
        && matches!(name[0].node.as_ref(), Some(NodeEnum::String(s)) if s.sval.eq_ignore_ascii_case("pg_temp"))
}

fn name_of(name: &[pg_query::protobuf::Node]) -> String {
    name.iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The one shard the function's statements reach (`Any` when none reaches a sharded table).
fn body_route(map: &ShardMap, text: &str, name: &str, plan: Planner) -> RouteSpec {
    let refuse = |why: String| {
        RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "temporary function {name}: {why}; the proxy creates a temporary function on the one shard its statements reach (constant shard keys, one shard)"
        )))
    };
    let tree = match pg_query::parse_plpgsql(text) {
        Ok(t) => t,
        // Not PL/pgSQL (an SQL-language function is planned as its text runs): anywhere,
        // unless its body names a sharded table.
        Err(_) => return RouteSpec::Any,
    };
    let mut queries = Vec::new();
    collect_queries(&tree, &mut queries);
    let mut shard: Option<usize> = None;
    for q in queries {
        // Statements parse as they are; expressions (conditions, assignments) as a SELECT.
        let planned = plan(map, &q).or_else(|_| plan(map, &format!("SELECT {q}")));
        let Ok(planned) = planned else {
            return refuse(format!("cannot plan `{q}`"));
        };
        for st in &planned.stmts {
            match &st.route {
                RouteSpec::Any => {}
                RouteSpec::Shard(s) => match shard {
                    Some(prev) if prev != *s => {
                        return refuse(format!("its statements reach shards #{prev} and #{s}"))
                    }
                    _ => shard = Some(*s),
                },
                RouteSpec::Refuse(e) => return refuse(e.to_string()),
                _ => return refuse(format!("`{q}` may run on several shards")),
            }
        }
    }
    shard.map_or(RouteSpec::Any, RouteSpec::Shard)
}

/// The text of every `PLpgSQL_expr` in a parsed function (its SQL statements and expressions).
fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "PLpgSQL_expr" {
                    if let Some(q) = x.get("query").and_then(|q| q.as_str()) {
                        out.push(q.to_string());
                    }
                }
                collect_queries(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_queries(x, out)),
        _ => {}
    }
}
