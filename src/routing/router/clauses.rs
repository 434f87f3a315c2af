//! A statement's FROM and WHERE as the router reads them: table references and their
//! placement ([`TableRef`]), and the top-level conjuncts on columns ([`enum@Eq`]: equalities, IN
//! lists, joins, ranges).

use std::ops::Bound;
use std::sync::Arc;

use pg_query::protobuf::{self, AExprKind, BoolExprType};
use pg_query::NodeEnum;

use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::strategy::Sharded;

/// How a table reference is placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Placement {
    Sharded,
    Reference,
    Unsharded,
    Catalog,
}

#[derive(Debug)]
pub(super) struct TableRef<'a> {
    pub(super) name: &'a str,
    alias: Option<&'a str>,
    pub(super) placement: Placement,
    pub(super) key: Option<Arc<Sharded>>,
}

pub(super) fn placement(
    map: &ShardMap,
    rv: &protobuf::RangeVar,
) -> (Placement, Option<Arc<Sharded>>) {
    match map.table(&rv.schemaname, &rv.relname) {
        Some(TableRule::Sharded(t)) => (Placement::Sharded, Some(t.clone())),
        Some(TableRule::Reference) => (Placement::Reference, None),
        None => {
            let s = rv.schemaname.as_str();
            if s == "pg_catalog"
                || s == "information_schema"
                || (s.is_empty() && rv.relname.starts_with("pg_"))
            {
                (Placement::Catalog, None)
            } else {
                (Placement::Unsharded, None)
            }
        }
    }
}

/// Whether two sharded tables place equal keys on the same shard.
pub(super) fn co_located(a: Option<&Sharded>, b: Option<&Sharded>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a.group == b.group)
}

pub(super) fn push_ref<'a>(
    map: &ShardMap,
    refs: &mut Vec<TableRef<'a>>,
    rv: &'a protobuf::RangeVar,
) {
    let (placement, key) = placement(map, rv);
    refs.push(TableRef {
        name: &rv.relname,
        alias: rv.alias.as_ref().map(|a| a.aliasname.as_str()),
        placement,
        key,
    });
}

pub(super) fn collect_from<'a>(
    map: &ShardMap,
    n: &'a protobuf::Node,
    refs: &mut Vec<TableRef<'a>>,
    conj: &mut Vec<&'a protobuf::Node>,
) {
    match &n.node {
        Some(NodeEnum::RangeVar(rv)) => push_ref(map, refs, rv),
        Some(NodeEnum::JoinExpr(j)) => {
            if let Some(l) = &j.larg {
                collect_from(map, l, refs, conj);
            }
            if let Some(r) = &j.rarg {
                collect_from(map, r, refs, conj);
            }
            // Only inner-join conditions restrict rows the way WHERE does.
            if j.jointype == protobuf::JoinType::JoinInner as i32 {
                if let Some(q) = &j.quals {
                    flatten_and(q, conj);
                }
            } else if let Some(q) = &j.quals {
                // Outer joins: key equalities between the two sides still co-locate them.
                let mut tmp = Vec::new();
                flatten_and(q, &mut tmp);
                conj.extend(
                    tmp.into_iter()
                        .filter(|c| matches!(equality(c), Some(Eq::Join(..)))),
                );
            }
        }
        _ => {} // subselects, functions: their sharded tables are counted as nested
    }
}

pub(super) fn flatten_and<'a>(n: &'a protobuf::Node, out: &mut Vec<&'a protobuf::Node>) {
    if let Some(NodeEnum::BoolExpr(b)) = &n.node {
        if b.boolop == BoolExprType::AndExpr as i32 {
            for a in &b.args {
                flatten_and(a, out);
            }
            return;
        }
    }
    out.push(n);
}

#[derive(Debug)]
pub(super) struct Col<'a> {
    pub(super) qual: Option<&'a str>,
    name: &'a str,
}

/// A top-level equality the router understands.
pub(super) enum Eq<'a> {
    /// `col = value`
    Const(Col<'a>, &'a protobuf::Node),
    /// `col IN (values)`
    In(Col<'a>, Vec<&'a protobuf::Node>),
    /// `col = col`
    Join(Col<'a>, Col<'a>),
    /// `col < value`, `col BETWEEN a AND b`, …: the bounds on `col`.
    Range(
        Col<'a>,
        Bound<&'a protobuf::Node>,
        Bound<&'a protobuf::Node>,
    ),
}

pub(super) fn column(n: &protobuf::Node) -> Option<Col<'_>> {
    let Some(NodeEnum::ColumnRef(c)) = &n.node else {
        return None;
    };
    let names = name_list(&c.fields);
    if names.len() != c.fields.len() {
        return None; // `t.*`
    }
    match names.as_slice() {
        [c] => Some(Col {
            qual: None,
            name: c,
        }),
        [.., t, c] => Some(Col {
            qual: Some(t),
            name: c,
        }),
        _ => None,
    }
}

fn is_value(n: &protobuf::Node) -> bool {
    match &n.node {
        Some(NodeEnum::AConst(_)) | Some(NodeEnum::ParamRef(_)) => true,
        Some(NodeEnum::TypeCast(t)) => t.arg.as_deref().map(is_value).unwrap_or(false),
        _ => false,
    }
}

/// The String nodes of a qualified name (function name, column reference), in order; other
/// nodes (`*`) are left out.
pub(super) fn name_list(nodes: &[protobuf::Node]) -> Vec<&str> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

pub(super) fn equality(n: &protobuf::Node) -> Option<Eq<'_>> {
    let Some(NodeEnum::AExpr(e)) = &n.node else {
        return None;
    };
    let op = e.name.last().and_then(|x| match &x.node {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    });
    let (l, r) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
    if e.kind == AExprKind::AexprOp as i32 && op == Some("=") {
        match (column(l), column(r)) {
            (Some(a), Some(b)) => return Some(Eq::Join(a, b)),
            (Some(a), None) if is_value(r) => return Some(Eq::Const(a, r)),
            (None, Some(b)) if is_value(l) => return Some(Eq::Const(b, l)),
            _ => return None,
        }
    }
    if e.kind == AExprKind::AexprOp as i32 {
        use Bound::{Excluded, Included, Unbounded};
        let (col, v, flipped) = match (column(l), column(r)) {
            (Some(c), None) if is_value(r) => (c, r, false),
            (None, Some(c)) if is_value(l) => (c, l, true),
            _ => return None,
        };
        // `v < col` is `col > v`.
        let op = match (op?, flipped) {
            ("<", false) | (">", true) => "<",
            ("<=", false) | (">=", true) => "<=",
            (">", false) | ("<", true) => ">",
            (">=", false) | ("<=", true) => ">=",
            _ => return None,
        };
        return Some(match op {
            "<" => Eq::Range(col, Unbounded, Excluded(v)),
            "<=" => Eq::Range(col, Unbounded, Included(v)),
            ">" => Eq::Range(col, Excluded(v), Unbounded),
            _ => Eq::Range(col, Included(v), Unbounded),
        });
    }
    if e.kind == AExprKind::AexprBetween as i32 {
        let col = column(l)?;
        if let Some(NodeEnum::List(list)) = &r.node {
            if let [a, b] = list.items.as_slice() {
                if is_value(a) && is_value(b) {
                    return Some(Eq::Range(col, Bound::Included(a), Bound::Included(b)));
                }
            }
        }
        return None;
    }
    if e.kind == AExprKind::AexprIn as i32 && op == Some("=") {
        let col = column(l)?;
        if let Some(NodeEnum::List(list)) = &r.node {
            if list.items.iter().all(is_value) {
                return Some(Eq::In(col, list.items.iter().collect()));
            }
        }
    }
    None
}

pub(super) fn matching_refs(refs: &[TableRef], col: &Col) -> Vec<usize> {
    refs.iter()
        .enumerate()
        .filter(|(_, r)| match col.qual {
            Some(q) => r.alias.map(|a| a == q).unwrap_or(r.name == q),
            None => r.key.as_ref().map(|k| k.key == col.name).unwrap_or(false),
        })
        .filter(|(_, r)| {
            r.key
                .as_ref()
                .map(|k| k.key == col.name)
                .unwrap_or(col.qual.is_some())
        })
        .map(|(i, _)| i)
        .collect()
}
