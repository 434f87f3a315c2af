//! Small helpers over pg_query parse trees: building nodes, comparing expressions, rewriting
//! them, and printing statements back to SQL (pg_query's deparser).

use pg_query::protobuf::{self, a_const::Val, Node};
use pg_query::NodeEnum;

use crate::error::ProxyError;

/// A node holding `e`.
pub fn node(e: NodeEnum) -> Node {
    Node { node: Some(e) }
}

/// An unqualified column reference.
pub fn column(name: &str) -> Node {
    node(NodeEnum::ColumnRef(protobuf::ColumnRef {
        fields: vec![node(NodeEnum::String(protobuf::String {
            sval: name.to_string(),
        }))],
        location: -1,
    }))
}

/// A target-list entry `val [AS name]`.
pub fn target(val: Node, name: &str) -> Node {
    node(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
        name: name.to_string(),
        indirection: Vec::new(),
        val: Some(Box::new(val)),
        location: -1,
    })))
}

/// An integer constant.
pub fn int_const(i: i32) -> Node {
    node(NodeEnum::AConst(protobuf::AConst {
        isnull: false,
        location: -1,
        val: Some(Val::Ival(protobuf::Integer { ival: i })),
    }))
}

/// A plain table reference.
pub fn table(name: &str) -> Node {
    node(NodeEnum::RangeVar(protobuf::RangeVar {
        relname: name.to_string(),
        inh: true,
        relpersistence: "p".into(),
        location: -1,
        ..Default::default()
    }))
}

/// Parses one scalar expression written as SQL.
pub fn parse_expr(sql: &str) -> Result<Node, ProxyError> {
    let parsed = pg_query::parse(&format!("SELECT {sql}"), 0)
        .map_err(|e| ProxyError::Syntax(format!("internal rewrite: {e}")))?;
    let val = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_ref())
        .and_then(|s| match &s.node {
            Some(NodeEnum::SelectStmt(sel)) => sel.target_list.first().cloned(),
            _ => None,
        })
        .and_then(|t| match t.node {
            Some(NodeEnum::ResTarget(r)) => r.val.map(|v| *v),
            _ => None,
        });
    val.ok_or_else(|| ProxyError::Syntax(format!("internal rewrite: not an expression: {sql}")))
}

/// Prints a SELECT back to SQL.
pub fn deparse_select(s: &protobuf::SelectStmt) -> Result<String, ProxyError> {
    NodeEnum::SelectStmt(Box::new(s.clone()))
        .deparse(Default::default())
        .map_err(|e| {
            ProxyError::Unsupported(format!("cannot rewrite this query for the shards: {e}"))
        })
}

/// A canonical text of an expression (for comparing expressions regardless of spacing and
/// source positions).
pub fn expr_key(n: &Node) -> String {
    let s = protobuf::SelectStmt {
        target_list: vec![target(n.clone(), "")],
        op: protobuf::SetOperation::SetopNone as i32,
        limit_option: protobuf::LimitOption::Default as i32,
        ..Default::default()
    };
    deparse_select(&s).unwrap_or_default()
}

/// The name of a function call (last part of its qualified name), lowercased.
pub fn func_name(f: &protobuf::FuncCall) -> String {
    f.funcname
        .last()
        .and_then(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The schema a function call names, if any.
pub fn func_schema(f: &protobuf::FuncCall) -> Option<String> {
    if f.funcname.len() < 2 {
        return None;
    }
    match &f.funcname[0].node {
        Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
        _ => None,
    }
}

/// The last name of a column reference (`t.col` -> `col`), unless it is `*`.
pub fn column_name(n: &Node) -> Option<&str> {
    let Some(NodeEnum::ColumnRef(c)) = &n.node else {
        return None;
    };
    match c.fields.last().and_then(|f| f.node.as_ref()) {
        Some(NodeEnum::String(s)) => Some(&s.sval),
        _ => None,
    }
}

/// Whether a column reference has no table qualifier.
pub fn is_bare_column(n: &Node) -> bool {
    matches!(&n.node, Some(NodeEnum::ColumnRef(c)) if c.fields.len() == 1)
        && column_name(n).is_some()
}

/// Whether a target list entry is `*` or `t.*`.
pub fn is_star(t: &Node) -> bool {
    let Some(NodeEnum::ResTarget(r)) = &t.node else {
        return false;
    };
    match r.val.as_deref().and_then(|v| v.node.as_ref()) {
        Some(NodeEnum::ColumnRef(c)) => c
            .fields
            .iter()
            .any(|f| matches!(f.node, Some(NodeEnum::AStar(_)))),
        _ => false,
    }
}

/// The value and name of a target-list entry.
pub fn res_target(t: &Node) -> Option<(&Node, &str)> {
    match &t.node {
        Some(NodeEnum::ResTarget(r)) => r.val.as_deref().map(|v| (v, r.name.as_str())),
        _ => None,
    }
}

/// An integer constant's value.
pub fn int_value(n: &Node) -> Option<i64> {
    match &n.node {
        Some(NodeEnum::AConst(c)) if !c.isnull => match &c.val {
            Some(Val::Ival(i)) => Some(i64::from(i.ival)),
            Some(Val::Fval(f)) => f.fval.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Rewrites an expression tree: `f` may replace a node (returning `Some`); otherwise its
/// children are rewritten. Node types this walker does not know are kept as they are.
pub fn rewrite(
    n: &Node,
    f: &mut dyn FnMut(&Node) -> Result<Option<Node>, ProxyError>,
) -> Result<Node, ProxyError> {
    if let Some(r) = f(n)? {
        return Ok(r);
    }
    let mut out = n.clone();
    let Some(e) = out.node.as_mut() else {
        return Ok(out);
    };
    let one = |b: &mut Option<Box<Node>>,
               f: &mut dyn FnMut(&Node) -> Result<Option<Node>, ProxyError>|
     -> Result<(), ProxyError> {
        if let Some(x) = b.as_mut() {
            **x = rewrite(x, f)?;
        }
        Ok(())
    };
    let many = |v: &mut Vec<Node>,
                f: &mut dyn FnMut(&Node) -> Result<Option<Node>, ProxyError>|
     -> Result<(), ProxyError> {
        for x in v.iter_mut() {
            *x = rewrite(x, f)?;
        }
        Ok(())
    };
    use NodeEnum as N;
    match e {
        N::AExpr(a) => {
            one(&mut a.lexpr, f)?;
            one(&mut a.rexpr, f)?;
        }
        N::BoolExpr(b) => many(&mut b.args, f)?,
        N::FuncCall(c) => {
            many(&mut c.args, f)?;
            one(&mut c.agg_filter, f)?;
            many(&mut c.agg_order, f)?;
        }
        N::TypeCast(t) => one(&mut t.arg, f)?,
        N::CaseExpr(c) => {
            one(&mut c.arg, f)?;
            many(&mut c.args, f)?;
            one(&mut c.defresult, f)?;
        }
        N::CaseWhen(w) => {
            one(&mut w.expr, f)?;
            one(&mut w.result, f)?;
        }
        N::CoalesceExpr(c) => many(&mut c.args, f)?,
        N::MinMaxExpr(m) => many(&mut m.args, f)?,
        N::NullTest(t) => one(&mut t.arg, f)?,
        N::BooleanTest(t) => one(&mut t.arg, f)?,
        N::CollateClause(c) => one(&mut c.arg, f)?,
        N::AIndirection(a) => one(&mut a.arg, f)?,
        N::RowExpr(r) => many(&mut r.args, f)?,
        N::AArrayExpr(a) => many(&mut a.elements, f)?,
        N::List(l) => many(&mut l.items, f)?,
        N::ResTarget(r) => one(&mut r.val, f)?,
        N::SortBy(s) => one(&mut s.node, f)?,
        _ => {}
    }
    Ok(out)
}

/// Calls `f` on every node of an expression tree (parents before children), not descending
/// into nodes for which `f` returns false.
pub fn visit(
    n: &Node,
    f: &mut dyn FnMut(&Node) -> Result<bool, ProxyError>,
) -> Result<(), ProxyError> {
    rewrite(n, &mut |x| {
        if f(x)? {
            Ok(None)
        } else {
            Ok(Some(x.clone()))
        }
    })
    .map(|_| ())
}

/// Built-in aggregate functions (pg_aggregate in Postgres 15–18), by name.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "any_value",
    "range_agg",
    "range_intersect_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_objectagg",
    "json_arrayagg",
];

/// Whether `name` (lowercase) is a built-in aggregate function.
pub fn is_aggregate_name(name: &str) -> bool {
    AGGREGATES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_spacing_and_positions() {
        let a = parse_expr("score  *  2").unwrap();
        let b = parse_expr("score*2").unwrap();
        assert_eq!(expr_key(&a), expr_key(&b));
        assert_ne!(expr_key(&a), expr_key(&parse_expr("score*3").unwrap()));
    }

    #[test]
    fn rewrite_replaces_columns() {
        let e = parse_expr("sum(x) + y").unwrap();
        let out = rewrite(&e, &mut |n| {
            Ok(if column_name(n) == Some("y") {
                Some(column("p0"))
            } else {
                None
            })
        })
        .unwrap();
        assert_eq!(
            expr_key(&out),
            expr_key(&parse_expr("sum(x) + p0").unwrap())
        );
    }
}
