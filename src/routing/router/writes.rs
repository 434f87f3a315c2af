//! Routes of writes placed by their key: `INSERT … VALUES`, `INSERT … SELECT` (rows stay
//! on the shard they are read on), and an UPDATE that sets the shard key.

use std::sync::Arc;

use pg_query::protobuf::{self, SetOperation};
use pg_query::{NodeEnum, NodeRef};

use super::clauses::{co_located, collect_from, column, matching_refs};
use super::key_src::{key_src, KeySrc};
use super::query::route_query;
use super::resolve::resolve_fixed;
use super::stmt::{KeyRoute, RouteSpec};
use super::template::{veto, Template};
use crate::error::ProxyError;
use crate::gather::sqltree::is_aggregate_name;
use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::strategy::Sharded;

/// Routes `INSERT INTO t (…) SELECT …` when every row stays on the shard it is read on:
/// - the key column is filled from the key of a co-located table the SELECT reads: each
///   shard inserts its own rows, so the statement runs where the SELECT would (one shard,
///   some, or all — the latter only for a plain SELECT, without aggregates, DISTINCT,
///   ORDER BY or LIMIT, whose per-shard meaning would differ);
/// - or the key is a constant and the SELECT runs on that constant's shard.
///
/// `None`: refused. `tpl`: the literal template being planned, if any.
fn insert_select(
    map: &ShardMap,
    t: &Arc<Sharded>,
    pos: usize,
    sel: &protobuf::SelectStmt,
    tpl: Option<&Template>,
) -> Option<RouteSpec> {
    if sel.op != SetOperation::SetopNone as i32 && sel.op != SetOperation::Undefined as i32 {
        return None;
    }
    let expr = match &sel.target_list.get(pos)?.node {
        Some(NodeEnum::ResTarget(r)) => r.val.as_deref()?,
        _ => return None,
    };
    let node = NodeEnum::SelectStmt(Box::new(sel.clone()));
    let route = route_query(map, &node, None, tpl);
    if let Some(col) = column(expr) {
        let mut refs = Vec::new();
        let mut conj = Vec::new();
        for f in &sel.from_clause {
            collect_from(map, f, &mut refs, &mut conj);
        }
        let follows = match matching_refs(&refs, &col).as_slice() {
            [i] => co_located(refs[*i].key.as_deref(), Some(t)),
            _ => false,
        };
        if !follows {
            return None;
        }
        let per_shard_same = sel.group_clause.is_empty()
            && sel.distinct_clause.is_empty()
            && sel.sort_clause.is_empty()
            && sel.limit_count.is_none()
            && sel.limit_offset.is_none()
            && sel.having_clause.is_none()
            && !sel.target_list.iter().any(|x| {
                x.node.as_ref().is_some_and(|n| {
                    n.nodes().iter().any(|(m, _, _, _)| {
                        matches!(m, NodeRef::FuncCall(f) if f.over.is_some() || f.funcname.last().is_some_and(|nm| matches!(&nm.node, Some(NodeEnum::String(s)) if is_aggregate_name(&s.sval.to_ascii_lowercase()))))
                    })
                })
            });
        return match route {
            RouteSpec::Shard(_) | RouteSpec::Keys(_) => Some(route),
            RouteSpec::All | RouteSpec::Subset(_) if per_shard_same => Some(route),
            _ => None,
        };
    }
    // The constant's own shard decides: read its value, and plan this text on its own.
    let src = key_src(map, t, expr, true, None);
    veto(tpl);
    match (src, &route) {
        (Ok(Some(KeySrc::Shard(k))), RouteSpec::Shard(s)) if k == *s => Some(route),
        // Only reference tables read: they are on every shard, so the key's shard runs it.
        (Ok(Some(KeySrc::Shard(k))), RouteSpec::Any) => Some(RouteSpec::Shard(k)),
        (Err(e), _) => Some(RouteSpec::Refuse(e)),
        _ => None,
    }
}

/// Routes an UPDATE that sets the shard key: allowed when the statement runs on one shard
/// and the new key (a constant) belongs to that same shard; refused otherwise, since the
/// row would have to move. `tpl`: the literal template being planned, if any.
pub(super) fn key_update(
    map: &ShardMap,
    t: &Arc<Sharded>,
    new_key: Option<&protobuf::Node>,
    route: RouteSpec,
    tpl: Option<&Template>,
) -> RouteSpec {
    let refuse = || {
        RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "UPDATE of shard key {} would move rows to another shard; only updates that keep the key on the row's shard (a constant key, and a WHERE clause pinning one shard) are supported",
            t.what()
        )))
    };
    let Some(n) = new_key else { return refuse() };
    // The new key's own shard decides: read its value, and plan this text on its own.
    let src = key_src(map, t, n, true, None);
    veto(tpl);
    match (src, &route) {
        (Ok(Some(KeySrc::Shard(new))), RouteSpec::Shard(old)) if new == *old => route,
        (Err(e), _) => RouteSpec::Refuse(e),
        _ => refuse(),
    }
}

/// Routes an INSERT by its target table and, for a sharded one, its rows' keys. `tpl`: the
/// literal template being planned, if any.
pub(super) fn route_insert(
    map: &ShardMap,
    node: &NodeEnum,
    ins: &protobuf::InsertStmt,
    tpl: Option<&Template>,
) -> RouteSpec {
    let Some(rel) = &ins.relation else {
        return RouteSpec::Any;
    };
    match map.table(&rel.schemaname, &rel.relname) {
        Some(TableRule::Reference) => route_query(map, node, None, tpl),
        None => {
            // Unsharded target: any sharded table read would be on other shards.
            match route_query(map, node, None, tpl) {
                RouteSpec::Any | RouteSpec::Shard(_) => RouteSpec::Shard(map.default_shard),
                _ => RouteSpec::Refuse(ProxyError::Unsupported(format!(
                    "INSERT into unsharded table {} may not read sharded tables",
                    rel.relname
                ))),
            }
        }
        Some(TableRule::Sharded(t)) => {
            let key = &t.key;
            let what = format!("{}.{key}", rel.relname);
            let refuse = |m: String| RouteSpec::Refuse(ProxyError::Unsupported(m));
            if ins.cols.is_empty() {
                return refuse(format!(
                    "INSERT into sharded table {} must name its columns so the shard key {key} can be found",
                    rel.relname
                ));
            }
            let pos = ins.cols.iter().position(|c| {
                matches!(&c.node, Some(NodeEnum::ResTarget(r)) if r.name.eq_ignore_ascii_case(key))
            });
            let Some(pos) = pos else {
                return refuse(format!(
                    "INSERT into sharded table {} must include the shard key column {key}",
                    rel.relname
                ));
            };
            let Some(NodeEnum::SelectStmt(sel)) =
                ins.select_stmt.as_ref().and_then(|s| s.node.as_ref())
            else {
                return refuse(format!(
                    "INSERT into sharded table {} needs a VALUES list",
                    rel.relname
                ));
            };
            if ins.with_clause.is_some() {
                return refuse(format!(
                    "INSERT with a WITH clause into sharded table {} is not supported; insert rows with VALUES",
                    rel.relname
                ));
            }
            if sel.values_lists.is_empty() {
                return insert_select(map, t, pos, sel, tpl).unwrap_or_else(|| {
                    refuse(format!(
                        "INSERT … SELECT into sharded table {} must keep every row on its shard: take the shard key {key} from the key of a co-located table the SELECT reads (it then runs on each shard), or give it as a constant on the one shard the SELECT runs on",
                        rel.relname
                    ))
                });
            }
            let mut fixed = Vec::new();
            let mut params = Vec::new();
            let mut literals = Vec::new();
            let mut values = Vec::new();
            for row in &sel.values_lists {
                let Some(NodeEnum::List(l)) = &row.node else {
                    continue;
                };
                let Some(v) = l.items.get(pos) else {
                    return refuse(format!(
                        "INSERT into {}: VALUES row is missing the shard key {key}",
                        rel.relname
                    ));
                };
                if let Some(NodeEnum::AConst(c)) = &v.node {
                    if c.isnull {
                        return refuse(format!("shard key {what} must not be NULL"));
                    }
                }
                match key_src(map, t, v, true, tpl) {
                    Ok(Some(KeySrc::Shard(s))) => {
                        if !fixed.contains(&s) {
                            fixed.push(s)
                        }
                    }
                    Ok(Some(KeySrc::Param(i, t))) => params.push((i, t)),
                    Ok(Some(KeySrc::Literal(i, t, n))) => literals.push((i, t, n)),
                    Ok(Some(KeySrc::Value(v, t))) => values.push((v, t)),
                    Ok(Some(KeySrc::Nothing | KeySrc::Set(_) | KeySrc::Range(_))) | Ok(None) => {
                        return refuse(format!(
                            "INSERT into sharded table {}: the shard key {key} must be a literal or a parameter",
                            rel.relname
                        ))
                    }
                    Err(e) => return RouteSpec::Refuse(e),
                }
            }
            // Any sharded/unsharded table read by the INSERT (RETURNING subqueries etc.)
            match route_query(map, &NodeEnum::SelectStmt(sel.clone()), None, tpl) {
                RouteSpec::Any => {}
                _ => {
                    return refuse(format!(
                        "INSERT into sharded table {} may only read reference tables in its VALUES",
                        rel.relname
                    ))
                }
            }
            // Rows on several shards: the statement is split per shard (see InsertSplit; the
            // plan refuses it when no split could be made).
            let spread = RouteSpec::All;
            let kr = KeyRoute {
                fixed,
                params,
                literals,
                values,
                ranges: Vec::new(),
                spread: Box::new(spread),
                null_is_error: true,
                what,
                require: None,
            };
            if kr.is_static() {
                resolve_fixed(&kr)
            } else {
                RouteSpec::Keys(Arc::new(kr))
            }
        }
    }
}
