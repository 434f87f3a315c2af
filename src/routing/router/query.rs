//! Routing of SELECT/UPDATE/DELETE ([`route_query`]): the tables a statement touches, the
//! keys its conjuncts pin (joined classes of co-located tables), co-located subqueries, and
//! whether scattering to every shard gives the single-Postgres answer.

use std::collections::HashMap;
use std::sync::Arc;

use pg_query::protobuf::{self, SetOperation};
use pg_query::{NodeEnum, NodeRef};

use super::clauses::{
    co_located, collect_from, column, equality, flatten_and, matching_refs, placement, push_ref,
    Col, Eq, Placement, TableRef,
};
use super::key_src::{key_src, range_cond, BoundSrc, KeySrc, RangeGroup};
use super::resolve::resolve_fixed;
use super::stmt::{KeyRoute, RouteSpec};
use super::template::Template;
use crate::error::ProxyError;
use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::strategy::Sharded;

/// Routes SELECT/UPDATE/DELETE (and the query part of other statements); `tpl`: the
/// literal template being planned, if any.
pub(super) fn route_query(
    map: &ShardMap,
    node: &NodeEnum,
    top: Option<&protobuf::SelectStmt>,
    tpl: Option<&Template>,
) -> RouteSpec {
    // Every table anywhere in the statement, minus CTE names.
    let all_nodes = node.nodes();
    let mut cte_names: Vec<&str> = Vec::new();
    for (n, _, _, _) in &all_nodes {
        if let NodeRef::CommonTableExpr(c) = n {
            cte_names.push(&c.ctename);
        }
    }
    let mut any_hash = false;
    let mut any_unsharded = false;
    let mut any_reference_written = false;
    let write_target = write_target(node);
    for (n, _, _, _) in &all_nodes {
        if let NodeRef::RangeVar(rv) = n {
            if rv.schemaname.is_empty() && cte_names.contains(&rv.relname.as_str()) {
                continue;
            }
            match placement(map, rv).0 {
                Placement::Sharded => any_hash = true,
                Placement::Unsharded => any_unsharded = true,
                Placement::Reference => {
                    if write_target.map(|w| std::ptr::eq(w, *rv)).unwrap_or(false) {
                        any_reference_written = true;
                    }
                }
                Placement::Catalog => {}
            }
        }
    }
    if any_reference_written {
        if any_hash || any_unsharded {
            return RouteSpec::Refuse(ProxyError::Unsupported(
                "a write to a reference table may only read reference tables".into(),
            ));
        }
        return RouteSpec::All;
    }
    if !any_hash {
        return if any_unsharded {
            RouteSpec::Shard(map.default_shard)
        } else {
            RouteSpec::Any
        };
    }

    // Sharded tables are involved: only the top-level FROM/target may hold them.
    let mut refs: Vec<TableRef> = Vec::new();
    let mut conjuncts: Vec<&protobuf::Node> = Vec::new();
    let (from, where_clause): (Vec<&protobuf::Node>, Option<&protobuf::Node>) = match node {
        NodeEnum::SelectStmt(s) => (s.from_clause.iter().collect(), s.where_clause.as_deref()),
        NodeEnum::UpdateStmt(u) => {
            if let Some(rv) = &u.relation {
                push_ref(map, &mut refs, rv);
            }
            (u.from_clause.iter().collect(), u.where_clause.as_deref())
        }
        NodeEnum::DeleteStmt(d) => {
            if let Some(rv) = &d.relation {
                push_ref(map, &mut refs, rv);
            }
            (d.using_clause.iter().collect(), d.where_clause.as_deref())
        }
        _ => (Vec::new(), None),
    };
    for f in from {
        collect_from(map, f, &mut refs, &mut conjuncts);
    }
    if let Some(w) = where_clause {
        flatten_and(w, &mut conjuncts);
    }
    // Sharded tables inside subqueries, CTEs or set operations are not analyzed yet.
    let top_hash = refs
        .iter()
        .filter(|r| r.placement == Placement::Sharded)
        .count();
    let total_hash = all_nodes
        .iter()
        .filter(|(n, _, _, _)| matches!(n, NodeRef::RangeVar(rv) if placement(map, rv).0 == Placement::Sharded && !(rv.schemaname.is_empty() && cte_names.contains(&rv.relname.as_str()))))
        .count();
    // Subqueries joined to the outer query on co-located shard keys run per shard correctly.
    let covered: usize = all_nodes
        .iter()
        .filter_map(|(n, _, _, _)| match n {
            NodeRef::SubLink(sl) => colocated_sublink(map, sl, &refs),
            _ => None,
        })
        .sum();
    let nested_hash = total_hash > top_hash + covered;
    let unsharded_refs: Vec<&TableRef> = refs
        .iter()
        .filter(|r| r.placement == Placement::Unsharded)
        .collect();

    // Union-find over sharded refs joined on their keys.
    let n = refs.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let mut pins: Vec<Vec<KeySrc>> = vec![Vec::new(); n];
    let mut ranges: Vec<Vec<(BoundSrc, BoundSrc)>> = vec![Vec::new(); n];
    let mut bad_key: Option<ProxyError> = None;
    for c in &conjuncts {
        match equality(c) {
            Some(Eq::Range(col, lo, hi)) => {
                for i in matching_refs(&refs, &col) {
                    let Some(t) = refs[i].key.clone() else {
                        continue;
                    };
                    if let Some(cond) = range_cond(&t, lo, hi, tpl) {
                        ranges[i].push(cond);
                    }
                }
            }
            Some(Eq::Const(col, val)) => {
                for i in matching_refs(&refs, &col) {
                    let Some(t) = refs[i].key.clone() else {
                        continue;
                    };
                    match key_src(map, &t, val, false, tpl) {
                        Ok(Some(k)) => pins[i].push(k),
                        Ok(None) => {}
                        Err(e) => bad_key = Some(e),
                    }
                }
            }
            Some(Eq::In(col, vals)) => {
                for i in matching_refs(&refs, &col) {
                    let Some(t) = refs[i].key.clone() else {
                        continue;
                    };
                    // An IN list pins the ref only if every element is a usable key.
                    let mut srcs = Vec::new();
                    let mut ok = true;
                    for v in &vals {
                        match key_src(map, &t, v, false, tpl) {
                            Ok(Some(k)) => srcs.push(k),
                            Ok(None) => ok = false,
                            Err(e) => bad_key = Some(e),
                        }
                    }
                    if ok && !srcs.is_empty() {
                        // Several values: every shard they land on may hold rows.
                        pins[i].extend(srcs);
                    }
                }
            }
            Some(Eq::Join(a, b)) => {
                let ia: Vec<usize> = matching_refs(&refs, &a);
                let ib: Vec<usize> = matching_refs(&refs, &b);
                if ia.len() == 1
                    && ib.len() == 1
                    && refs[ia[0]].key.is_some()
                    && refs[ib[0]].key.is_some()
                {
                    let (ta, tb) = (refs[ia[0]].key.as_deref(), refs[ib[0]].key.as_deref());
                    if co_located(ta, tb) {
                        let (ra, rb) = (find(&mut parent, ia[0]), find(&mut parent, ib[0]));
                        parent[ra] = rb;
                    }
                }
            }
            None => {}
        }
    }
    if let Some(e) = bad_key {
        return RouteSpec::Refuse(e);
    }
    // Range predicates pin a ref with no equality to the shards their ranges overlap.
    for i in 0..n {
        if !pins[i].is_empty() || ranges[i].is_empty() {
            continue;
        }
        let Some(table) = refs[i].key.clone() else {
            continue;
        };
        let group = RangeGroup {
            table,
            conds: std::mem::take(&mut ranges[i]),
        };
        if group.is_const() {
            match group.shards(map.shards.len(), &[], &|_| false) {
                Ok(set) => pins[i].push(KeySrc::Set(set)),
                Err(e) => return RouteSpec::Refuse(e),
            }
        } else {
            pins[i].push(KeySrc::Range(Arc::new(group)));
        }
    }
    // Group pins per join class of sharded refs.
    let mut classes: HashMap<usize, (Vec<KeySrc>, bool)> = HashMap::new();
    for i in 0..n {
        if refs[i].placement != Placement::Sharded {
            continue;
        }
        let r = find(&mut parent, i);
        let e = classes.entry(r).or_insert_with(|| (Vec::new(), false));
        if !pins[i].is_empty() {
            // Several pins on one class (IN lists, id = 1 AND id = 2) all count as shards
            // it may touch: a superset is always correct.
            e.0.extend(pins[i].iter().cloned());
            e.1 = true;
        }
    }
    let what = refs
        .iter()
        .find(|r| r.placement == Placement::Sharded)
        .map(|r| {
            format!(
                "{}.{}",
                r.name,
                r.key.as_ref().map(|k| k.key.as_str()).unwrap_or("?")
            )
        })
        .unwrap_or_default();

    let scatter = scatter_check(top, nested_hash, classes.len(), &unsharded_refs);
    let all_pinned = !nested_hash && classes.values().all(|(_, pinned)| *pinned);
    if !all_pinned {
        return match scatter {
            Ok(()) => RouteSpec::All,
            Err(e) => RouteSpec::Refuse(e),
        };
    }
    let mut fixed = Vec::new();
    let mut params = Vec::new();
    let mut literals = Vec::new();
    let mut values = Vec::new();
    let mut range_groups = Vec::new();
    for (srcs, _) in classes.values() {
        for src in srcs {
            match src {
                KeySrc::Shard(x) if !fixed.contains(x) => fixed.push(*x),
                KeySrc::Set(set) => {
                    for x in set.iter() {
                        if !fixed.contains(&x) {
                            fixed.push(x);
                        }
                    }
                }
                KeySrc::Param(i, t) => params.push((*i, t.clone())),
                KeySrc::Literal(i, t, n) => literals.push((*i, t.clone(), *n)),
                KeySrc::Value(v, t) => values.push((v.clone(), t.clone())),
                KeySrc::Range(g) => range_groups.push(g.clone()),
                _ => {}
            }
        }
    }
    let spread = if classes.len() > 1 {
        RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "join of sharded tables that are not joined on their shard keys spans shards ({what})"
        )))
    } else {
        match scatter {
            Ok(()) => RouteSpec::All,
            Err(e) => RouteSpec::Refuse(e),
        }
    };
    let require = unsharded_refs
        .first()
        .map(|u| (map.default_shard, u.name.to_string()));
    let kr = KeyRoute {
        fixed,
        params,
        literals,
        values,
        ranges: range_groups,
        spread: Box::new(spread),
        null_is_error: false,
        what,
        require,
    };
    if kr.is_static() {
        resolve_fixed(&kr)
    } else {
        RouteSpec::Keys(Arc::new(kr))
    }
}

/// Sharded tables in a subquery that is co-located with the outer query: `outer_key IN
/// (SELECT inner_key FROM t …)`, or an EXISTS/scalar subquery whose WHERE equates its table's
/// shard key with an outer table's (`o.user_id = u.id`). Every row such a subquery can see
/// lives on the same shard as the outer row, so it runs per shard. Returns how many sharded
/// table references it covers.
fn colocated_sublink(map: &ShardMap, sl: &protobuf::SubLink, outer: &[TableRef]) -> Option<usize> {
    use protobuf::SubLinkType as T;
    let Some(NodeEnum::SelectStmt(sel)) = sl.subselect.as_deref().and_then(|n| n.node.as_ref())
    else {
        return None;
    };
    if sel.op != SetOperation::SetopNone as i32 && sel.op != SetOperation::Undefined as i32 {
        return None;
    }
    if sel.with_clause.is_some() {
        return None;
    }
    let mut inner: Vec<TableRef> = Vec::new();
    let mut conj: Vec<&protobuf::Node> = Vec::new();
    for f in &sel.from_clause {
        collect_from(map, f, &mut inner, &mut conj);
    }
    if let Some(w) = sel.where_clause.as_deref() {
        flatten_and(w, &mut conj);
    }
    let hashed: Vec<usize> = (0..inner.len())
        .filter(|&i| inner[i].placement == Placement::Sharded)
        .collect();
    if hashed.len() != 1 || inner.iter().any(|r| r.placement == Placement::Unsharded) {
        return None;
    }
    // Nothing else sharded below this subquery.
    let nested = NodeEnum::SelectStmt(Box::new((**sel).clone()));
    let below = nested
        .nodes()
        .iter()
        .filter(|(n, _, _, _)| matches!(n, NodeRef::RangeVar(rv) if placement(map, rv).0 == Placement::Sharded))
        .count();
    if below != 1 {
        return None;
    }
    let h = hashed[0];
    let inner_ty = inner[h].key.as_deref();
    let is_inner_key = |c: &Col| matching_refs(&inner, c).contains(&h);
    // The rule of the outer sharded table a column names (inside the subquery an outer
    // column must be qualified, or it would name the inner table's).
    let outer_key_type = |c: &Col, need_qual: bool| -> Option<&Sharded> {
        if need_qual {
            c.qual?;
        }
        let m = matching_refs(outer, c);
        match m.as_slice() {
            [i] if outer[*i].placement == Placement::Sharded => outer[*i].key.as_deref(),
            _ => None,
        }
    };
    let kind = T::try_from(sl.sub_link_type).unwrap_or(T::Undefined);
    match kind {
        T::AnySublink => {
            if sel.limit_count.is_some() || sel.limit_offset.is_some() || sel.target_list.len() != 1
            {
                return None;
            }
            let out_col = sl.testexpr.as_deref().and_then(column)?;
            let target = match &sel.target_list[0].node {
                Some(NodeEnum::ResTarget(r)) => r.val.as_deref().and_then(column)?,
                _ => return None,
            };
            let out_ty = outer_key_type(&out_col, false);
            (is_inner_key(&target) && co_located(out_ty, inner_ty)).then_some(1)
        }
        T::ExistsSublink | T::ExprSublink => {
            let joined = conj.iter().any(|c| match equality(c) {
                Some(Eq::Join(a, b)) => {
                    (is_inner_key(&a) && co_located(outer_key_type(&b, true), inner_ty))
                        || (is_inner_key(&b) && co_located(outer_key_type(&a, true), inner_ty))
                }
                _ => false,
            });
            joined.then_some(1)
        }
        _ => None,
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Checks that concatenating per-shard results equals the single-Postgres answer.
fn scatter_check(
    top: Option<&protobuf::SelectStmt>,
    nested_hash: bool,
    classes: usize,
    unsharded: &[&TableRef],
) -> Result<(), ProxyError> {
    let refuse = |what: &str| {
        Err(ProxyError::Unsupported(format!(
            "{what} is not supported across shards yet; add the shard key to the WHERE clause to run it on one shard"
        )))
    };
    if let Some(u) = unsharded.first() {
        return Err(ProxyError::Unsupported(format!(
            "statement mixes unsharded table {} (on the default shard) with sharded tables but gives no shard key",
            u.name
        )));
    }
    if nested_hash {
        return refuse(
            "a subquery, CTE or set operation over a sharded table that is not joined to the outer query on co-located shard keys",
        );
    }
    if classes > 1 {
        return refuse("a join of sharded tables not on their shard keys");
    }
    let Some(s) = top else { return Ok(()) };
    if s.op != SetOperation::SetopNone as i32 && s.op != SetOperation::Undefined as i32 {
        return refuse("UNION/INTERSECT/EXCEPT");
    }
    if !s.window_clause.is_empty() {
        return refuse("a window function");
    }
    for t in s.target_list.iter().chain(s.sort_clause.iter()) {
        let Some(tn) = t.node.as_ref() else { continue };
        for (n, _, _, _) in tn.nodes() {
            if let NodeRef::FuncCall(f) = n {
                if f.over.is_some() {
                    return refuse("a window function");
                }
            }
        }
    }
    Ok(())
}

/// Whether the statement writes a reference table.
pub(super) fn writes_reference(map: &ShardMap, node: &NodeEnum) -> bool {
    write_target(node)
        .map(|rv| {
            matches!(
                map.table(&rv.schemaname, &rv.relname),
                Some(TableRule::Reference)
            )
        })
        .unwrap_or(false)
}

fn write_target(node: &NodeEnum) -> Option<&protobuf::RangeVar> {
    match node {
        NodeEnum::InsertStmt(i) => i.relation.as_ref(),
        NodeEnum::UpdateStmt(u) => u.relation.as_ref(),
        NodeEnum::DeleteStmt(d) => d.relation.as_ref(),
        NodeEnum::MergeStmt(m) => m.relation.as_ref(),
        _ => None,
    }
}
