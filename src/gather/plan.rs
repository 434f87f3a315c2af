//! Planning a scatter read: the per-shard SQL and the merge ([`GatherPlan`]), or a clear
//! refusal naming the construct that cannot be merged correctly.

use pg_query::protobuf::{self, Node, SortByDir, SortByNulls};
use pg_query::NodeEnum;

use super::sqltree::{
    column, column_name, deparse_select, expr_key, func_name, func_schema, int_const, int_value,
    is_bare_column, is_star, node, parse_expr, res_target, rewrite, table, target, visit,
};
use super::{
    agg_placeholder, AggKind, Count, Final, FinalAgg, GatherPlan, KeyCol, Mode, SortKey, PARTIALS,
};
use crate::error::ProxyError;

fn refuse<T>(what: &str) -> Result<T, ProxyError> {
    Err(ProxyError::Unsupported(format!(
        "{what} is not supported across shards; add the shard key to the WHERE clause to run it on one shard"
    )))
}

/// Plans the merge of a SELECT that runs on several shards. `Ok(None)`: concatenating the
/// shards' results is already the right answer.
pub fn build(sql: &str, s: &protobuf::SelectStmt) -> Result<Option<GatherPlan>, ProxyError> {
    let mut aggs: Vec<Node> = Vec::new();
    let mut agg_keys: Vec<String> = Vec::new();
    let collect = |n: &Node, aggs: &mut Vec<Node>, keys: &mut Vec<String>| {
        visit(n, &mut |x| {
            if let Some(NodeEnum::SubLink(_)) = &x.node {
                return Ok(false);
            }
            if let Some(NodeEnum::FuncCall(f)) = &x.node {
                if is_aggregate(f) {
                    let k = expr_key(x);
                    if !keys.contains(&k) {
                        keys.push(k);
                        aggs.push(x.clone());
                    }
                    return Ok(false);
                }
            }
            Ok(true)
        })
    };
    for t in &s.target_list {
        collect(t, &mut aggs, &mut agg_keys)?;
    }
    if let Some(h) = &s.having_clause {
        collect(h, &mut aggs, &mut agg_keys)?;
    }
    for o in &s.sort_clause {
        collect(o, &mut aggs, &mut agg_keys)?;
    }
    let grouped = !aggs.is_empty() || !s.group_clause.is_empty() || s.having_clause.is_some();
    let plain = !grouped
        && s.sort_clause.is_empty()
        && s.distinct_clause.is_empty()
        && s.limit_count.is_none()
        && s.limit_offset.is_none();
    if plain {
        return Ok(None);
    }
    if sql.contains("__sw_") {
        return Err(ProxyError::Unsupported(
            "identifiers starting with __sw_ are reserved by the proxy in queries that run on several shards".into(),
        ));
    }
    if s.into_clause.is_some() {
        return refuse("SELECT INTO");
    }
    if s.limit_option == protobuf::LimitOption::WithTies as i32 {
        return refuse("FETCH FIRST … WITH TIES");
    }
    if !s.locking_clause.is_empty() && (grouped || !s.distinct_clause.is_empty()) {
        return refuse("FOR UPDATE/SHARE with aggregates or DISTINCT");
    }
    if grouped {
        build_grouped(s, aggs).map(Some)
    } else {
        build_rows(s).map(Some)
    }
}

fn is_aggregate(f: &protobuf::FuncCall) -> bool {
    if f.over.is_some() {
        return false;
    }
    f.agg_star
        || f.agg_distinct
        || f.agg_filter.is_some()
        || f.agg_within_group
        || !f.agg_order.is_empty()
        || super::sqltree::is_aggregate_name(&func_name(f))
}

/// LIMIT/OFFSET as a constant or a parameter; `None` for absent, `ALL` or `NULL`.
fn count_of(n: Option<&Node>, what: &str) -> Result<Option<Count>, ProxyError> {
    let Some(n) = n else { return Ok(None) };
    let inner = match &n.node {
        Some(NodeEnum::TypeCast(t)) => t.arg.as_deref().unwrap_or(n),
        _ => n,
    };
    match &inner.node {
        Some(NodeEnum::AConst(c)) if c.isnull => Ok(None),
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => {
            Ok(Some(Count::Param(p.number as usize - 1)))
        }
        _ => match int_value(inner) {
            Some(v) if v >= 0 => Ok(Some(Count::Const(v))),
            Some(_) => Err(ProxyError::Backend {
                code: if what == "OFFSET" { "2201X" } else { "2201W" }.into(),
                message: format!("{what} must not be negative"),
            }),
            None => refuse(&format!("{what} that is not a constant or a parameter")),
        },
    }
}

/// Sort direction and NULLS placement of an ORDER BY item.
fn sort_spec(sb: &protobuf::SortBy) -> Result<(bool, bool), ProxyError> {
    let desc = match SortByDir::try_from(sb.sortby_dir).unwrap_or(SortByDir::SortbyDefault) {
        SortByDir::SortbyDesc => true,
        SortByDir::SortbyUsing => return refuse("ORDER BY … USING"),
        _ => false,
    };
    let nulls_first =
        match SortByNulls::try_from(sb.sortby_nulls).unwrap_or(SortByNulls::SortbyNullsDefault) {
            SortByNulls::SortbyNullsFirst => true,
            SortByNulls::SortbyNullsLast => false,
            _ => desc, // Postgres: NULLS LAST for ASC, NULLS FIRST for DESC
        };
    Ok((desc, nulls_first))
}

/// The expression an ORDER BY / DISTINCT ON / GROUP BY item stands for: positions and output
/// names refer to the target list.
fn item_expr<'a>(s: &'a protobuf::SelectStmt, item: &'a Node) -> Result<&'a Node, ProxyError> {
    if let Some(pos) = int_value(item) {
        if pos < 1 || pos as usize > s.target_list.len() {
            return Err(ProxyError::Backend {
                code: "42P10".into(),
                message: format!("position {pos} is not in select list"),
            });
        }
        let idx = pos as usize - 1;
        if s.target_list[..=idx].iter().any(is_star) {
            return refuse("ORDER BY/GROUP BY position after a * in the select list");
        }
        return res_target(&s.target_list[idx])
            .map(|(v, _)| v)
            .ok_or_else(|| ProxyError::Syntax("bad target list".into()));
    }
    if is_bare_column(item) {
        let name = column_name(item).unwrap_or_default();
        for t in &s.target_list {
            if let Some((v, alias)) = res_target(t) {
                if !alias.is_empty() && alias == name {
                    return Ok(v);
                }
            }
        }
    }
    Ok(item)
}

/// The collation named by `expr COLLATE "x"`, if any.
fn collate_of(n: &Node) -> Option<String> {
    match &n.node {
        Some(NodeEnum::CollateClause(c)) => c.collname.last().and_then(|x| match &x.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// ORDER BY / LIMIT / DISTINCT without aggregation.
fn build_rows(s: &protobuf::SelectStmt) -> Result<GatherPlan, ProxyError> {
    let plain_distinct = s.distinct_clause.iter().any(|d| d.node.is_none());
    let on: Vec<&Node> = s
        .distinct_clause
        .iter()
        .filter(|d| d.node.is_some())
        .collect();
    let has_star = s.target_list.iter().any(is_star);
    let mut hidden: Vec<Node> = Vec::new();
    let mut hidden_keys: Vec<String> = Vec::new();
    // One hidden column per distinct expression (DISTINCT ON and ORDER BY share theirs).
    let mut hide = |e: &Node| -> usize {
        let k = expr_key(e);
        if let Some(i) = hidden_keys.iter().position(|x| *x == k) {
            return i;
        }
        hidden_keys.push(k);
        hidden.push(target(e.clone(), ""));
        hidden.len() - 1
    };
    let mut sort = Vec::new();
    for item in &s.sort_clause {
        let Some(NodeEnum::SortBy(sb)) = &item.node else {
            return refuse("this ORDER BY item");
        };
        let (desc, nulls_first) = sort_spec(sb)?;
        let Some(e) = sb.node.as_deref() else {
            return refuse("an empty ORDER BY item");
        };
        let collate = collate_of(e);
        let col = if plain_distinct {
            // SELECT DISTINCT: ORDER BY must name output columns (Postgres requires it too).
            if has_star {
                return refuse("SELECT DISTINCT * with ORDER BY");
            }
            KeyCol::Visible(visible_index(s, e)?)
        } else {
            KeyCol::Hidden(hide(item_expr(s, e)?))
        };
        sort.push(SortKey {
            col,
            desc,
            nulls_first,
            collate,
        });
    }
    let mut distinct_on = Vec::new();
    for e in &on {
        distinct_on.push(hide(item_expr(s, e)?));
    }
    let limit = count_of(s.limit_count.as_deref(), "LIMIT")?;
    let offset = count_of(s.limit_offset.as_deref(), "OFFSET")?;
    let mut shard = s.clone();
    shard.target_list.extend(hidden.iter().cloned());
    push_down_limit(&mut shard, limit, offset)?;
    let mode = if plain_distinct || !distinct_on.is_empty() {
        Mode::Combine(Final::Rows {
            distinct: plain_distinct,
            distinct_on,
        })
    } else {
        Mode::Stream
    };
    let describe = match (&mode, sort.is_empty()) {
        (Mode::Stream, true) => "concatenate shard results, apply LIMIT/OFFSET".to_string(),
        (Mode::Stream, false) => {
            format!("merge sorted shard streams on {} key(s)", sort.len())
        }
        _ => "gather distinct rows, finish DISTINCT/ORDER BY/LIMIT on one shard".to_string(),
    };
    Ok(GatherPlan {
        shard_sql: deparse_select(&shard)?,
        hidden: hidden.len(),
        sort,
        limit,
        offset,
        mode,
        describe,
    })
}

/// The output position an ORDER BY item of a SELECT DISTINCT refers to.
fn visible_index(s: &protobuf::SelectStmt, e: &Node) -> Result<usize, ProxyError> {
    if let Some(pos) = int_value(e) {
        if pos >= 1 && (pos as usize) <= s.target_list.len() {
            return Ok(pos as usize - 1);
        }
    }
    let key = expr_key(e);
    let name = if is_bare_column(e) {
        column_name(e)
    } else {
        None
    };
    for (i, t) in s.target_list.iter().enumerate() {
        if let Some((v, alias)) = res_target(t) {
            if name.is_some() && name == Some(alias) {
                return Ok(i);
            }
            if expr_key(v) == key {
                return Ok(i);
            }
        }
    }
    Err(ProxyError::Backend {
        code: "42P10".into(),
        message: "for SELECT DISTINCT, ORDER BY expressions must appear in select list".into(),
    })
}

/// Shards return at most `offset + limit` rows; the proxy applies the OFFSET.
///
/// A parameter keeps the client's own expression (`$3::integer` stays that, cast to int8
/// only to be added), so the shard infers the same parameter types the client's statement
/// has: a driver that binds the int4 it was told about must not meet an int8 on the shard.
/// An OFFSET parameter with no LIMIT stays referenced (`OFFSET 0 * $n`) for the same reason:
/// a parameter a statement does not mention has no type to infer.
fn push_down_limit(
    shard: &mut protobuf::SelectStmt,
    limit: Option<Count>,
    offset: Option<Count>,
) -> Result<(), ProxyError> {
    let orig_limit = shard.limit_count.take();
    let orig_offset = shard.limit_offset.take();
    let Some(limit) = limit else {
        shard.limit_option = protobuf::LimitOption::Default as i32;
        if let (Some(Count::Param(_)), Some(o)) = (offset, orig_offset) {
            shard.limit_offset = Some(Box::new(with_args(parse_expr("0 * $1::int8")?, &[*o])?));
        }
        return Ok(());
    };
    let expr = match (limit, offset, orig_limit, orig_offset) {
        (Count::Const(l), Some(Count::Const(o)), _, _) => {
            parse_expr(&l.saturating_add(o).to_string())?
        }
        (_, None, Some(l), _) => *l,
        (_, Some(_), Some(l), Some(o)) => with_args(parse_expr("$1::int8 + $2::int8")?, &[*l, *o])?,
        _ => return refuse("LIMIT/OFFSET"),
    };
    shard.limit_count = Some(Box::new(expr));
    shard.limit_option = protobuf::LimitOption::Count as i32;
    Ok(())
}

/// `template` with the argument of each `$n::int8` cast in it (in order) replaced by the
/// given expressions.
fn with_args(mut template: Node, args: &[Node]) -> Result<Node, ProxyError> {
    fn casts<'a>(n: &'a mut Node, out: &mut Vec<&'a mut protobuf::TypeCast>) {
        match n.node.as_mut() {
            Some(NodeEnum::TypeCast(tc)) => out.push(tc),
            Some(NodeEnum::AExpr(e)) => {
                if let Some(l) = e.lexpr.as_deref_mut() {
                    casts(l, out);
                }
                if let Some(r) = e.rexpr.as_deref_mut() {
                    casts(r, out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    casts(&mut template, &mut found);
    if found.len() != args.len() {
        return refuse("LIMIT/OFFSET rewrite");
    }
    for (tc, arg) in found.into_iter().zip(args) {
        tc.arg = Some(Box::new(arg.clone()));
    }
    Ok(template)
}

/// A classified aggregate call.
struct AggCall {
    node: Node,
    kind: AggKind,
    distinct: bool,
}

fn classify(n: &Node) -> Result<AggCall, ProxyError> {
    let Some(NodeEnum::FuncCall(f)) = &n.node else {
        return refuse("this aggregate");
    };
    let name = func_name(f);
    if let Some(schema) = func_schema(f) {
        if schema != "pg_catalog" {
            return refuse(&format!("aggregate {schema}.{name}()"));
        }
    }
    if f.agg_within_group || !f.agg_order.is_empty() {
        return refuse(&format!(
            "ordered aggregate {name}() (WITHIN GROUP / ORDER BY inside the call)"
        ));
    }
    let Some(kind) = AggKind::from_name(&name) else {
        return refuse(&format!(
            "aggregate {name}() (it cannot be combined from per-shard results)"
        ));
    };
    if f.func_variadic {
        return refuse(&format!("VARIADIC {name}()"));
    }
    if f.agg_distinct {
        if f.args.len() != 1 || f.agg_filter.is_some() {
            return refuse(&format!(
                "{name}(DISTINCT …) with several arguments or FILTER"
            ));
        }
        if !matches!(
            kind,
            AggKind::Count | AggKind::Sum | AggKind::Avg | AggKind::Min | AggKind::Max
        ) {
            return refuse(&format!("{name}(DISTINCT …)"));
        }
    }
    Ok(AggCall {
        node: n.clone(),
        kind,
        distinct: f.agg_distinct,
    })
}

/// The same call under another function name (`avg(x)` -> `sum(x)`), FILTER kept.
fn renamed(call: &Node, name: &str) -> Node {
    let mut c = call.clone();
    if let Some(NodeEnum::FuncCall(f)) = c.node.as_mut() {
        f.funcname = vec![node(NodeEnum::String(protobuf::String {
            sval: name.into(),
        }))];
        f.agg_star = false;
    }
    c
}

/// The first argument of an aggregate call.
fn first_arg(call: &Node) -> Option<Node> {
    match &call.node {
        Some(NodeEnum::FuncCall(f)) => f.args.first().cloned(),
        _ => None,
    }
}

/// Aggregates, GROUP BY, HAVING: partial aggregation on the shards, the final step on one.
fn build_grouped(s: &protobuf::SelectStmt, agg_nodes: Vec<Node>) -> Result<GatherPlan, ProxyError> {
    if s.target_list.iter().any(is_star) {
        return refuse("SELECT * with GROUP BY or aggregates");
    }
    if s.distinct_clause.iter().any(|d| d.node.is_some()) {
        return refuse("DISTINCT ON with GROUP BY or aggregates");
    }
    if s.group_distinct {
        return refuse("GROUP BY DISTINCT");
    }
    // Group keys.
    let mut groups: Vec<Node> = Vec::new();
    let mut group_keys: Vec<String> = Vec::new();
    for g in &s.group_clause {
        if let Some(NodeEnum::GroupingSet(_)) = &g.node {
            return refuse("GROUPING SETS / ROLLUP / CUBE");
        }
        let mut e = item_expr(s, g)?;
        // GROUP BY name prefers an input column; an alias of a different expression is an output name.
        if is_bare_column(g) {
            e = g;
            if let Some(name) = column_name(g) {
                for t in &s.target_list {
                    if let Some((v, alias)) = res_target(t) {
                        if alias == name && column_name(v) != Some(name) {
                            e = v;
                        }
                    }
                }
            }
        }
        let k = expr_key(e);
        if !group_keys.contains(&k) {
            group_keys.push(k);
            groups.push(e.clone());
        }
    }
    // Aggregates and the partial columns they need.
    let calls: Vec<AggCall> = agg_nodes.iter().map(classify).collect::<Result<_, _>>()?;
    let mut distinct_args: Vec<Node> = Vec::new();
    let mut distinct_keys: Vec<String> = Vec::new();
    for c in calls.iter().filter(|c| c.distinct) {
        let arg = first_arg(&c.node)
            .ok_or_else(|| ProxyError::Syntax("aggregate without argument".into()))?;
        let k = expr_key(&arg);
        if !distinct_keys.contains(&k) {
            distinct_keys.push(k);
            distinct_args.push(arg);
        }
    }
    let mut partial: Vec<Node> = Vec::new();
    for g in groups.iter().chain(distinct_args.iter()) {
        partial.push(g.clone());
    }
    let n_keys = partial.len();
    let mut finals = Vec::with_capacity(calls.len());
    for c in &calls {
        let base = partial.len();
        let cols = if c.distinct {
            let arg = first_arg(&c.node).unwrap_or_else(|| column("?"));
            let k = expr_key(&arg);
            let i = distinct_keys.iter().position(|x| *x == k).unwrap_or(0);
            vec![groups.len() + i]
        } else if c.kind == AggKind::Avg {
            partial.push(renamed(&c.node, "sum"));
            partial.push(renamed(&c.node, "count"));
            partial.push(renamed(&c.node, "avg"));
            vec![base, base + 1, base + 2]
        } else {
            partial.push(c.node.clone());
            vec![base]
        };
        finals.push(FinalAgg {
            kind: c.kind,
            cols,
            distinct: c.distinct,
        });
    }
    // The shard query.
    let mut shard = s.clone();
    shard.target_list = partial.iter().map(|p| target(p.clone(), "")).collect();
    shard.group_clause = (1..=n_keys).map(|i| int_const(i as i32)).collect();
    shard.having_clause = None;
    shard.sort_clause.clear();
    shard.limit_count = None;
    shard.limit_offset = None;
    shard.limit_option = protobuf::LimitOption::Default as i32;
    shard.distinct_clause.clear();
    // The final step: the statement itself over the partial rows.
    let agg_keys: Vec<String> = calls.iter().map(|c| expr_key(&c.node)).collect();
    let group_names: Vec<Option<String>> = groups
        .iter()
        .map(|g| column_name(g).map(str::to_string))
        .collect();
    let mut subst = |n: &Node| -> Result<Option<Node>, ProxyError> {
        if let Some(NodeEnum::SubLink(_)) = &n.node {
            return refuse(
                "a subquery in the select list, HAVING or ORDER BY of an aggregate query",
            );
        }
        let is_expr = !matches!(
            &n.node,
            Some(NodeEnum::ResTarget(_)) | Some(NodeEnum::SortBy(_)) | Some(NodeEnum::List(_))
        );
        if !is_expr {
            return Ok(None);
        }
        let k = expr_key(n);
        if let Some(i) = group_keys.iter().position(|g| *g == k) {
            return Ok(Some(column(&format!("p{i}"))));
        }
        if let Some(j) = agg_keys.iter().position(|a| *a == k) {
            return Ok(Some(column(&agg_placeholder(j))));
        }
        if let Some(name) = column_name(n) {
            // `t.col` vs `col`: the same column as a group key written differently.
            if let Some(i) = group_names.iter().position(|g| g.as_deref() == Some(name)) {
                return Ok(Some(column(&format!("p{i}"))));
            }
            return Err(ProxyError::Backend {
                code: "42803".into(),
                message: format!(
                    "column \"{name}\" must appear in the GROUP BY clause or be used in an aggregate function"
                ),
            });
        }
        Ok(None)
    };
    let mut fin = s.clone();
    fin.with_clause = None;
    fin.from_clause = vec![table(PARTIALS)];
    fin.where_clause = None;
    fin.group_clause = (0..groups.len())
        .map(|i| column(&format!("p{i}")))
        .collect();
    fin.target_list = s
        .target_list
        .iter()
        .map(|t| rewrite(t, &mut subst))
        .collect::<Result<_, _>>()?;
    fin.having_clause = match &s.having_clause {
        Some(h) => Some(Box::new(rewrite(h, &mut subst)?)),
        None => None,
    };
    let aliases: Vec<&str> = s
        .target_list
        .iter()
        .filter_map(|t| res_target(t).map(|(_, a)| a))
        .filter(|a| !a.is_empty())
        .collect();
    let mut sorts = Vec::with_capacity(s.sort_clause.len());
    for item in &s.sort_clause {
        let keep = match &item.node {
            Some(NodeEnum::SortBy(sb)) => sb.node.as_deref().is_some_and(|e| {
                int_value(e).is_some()
                    || (is_bare_column(e) && column_name(e).is_some_and(|n| aliases.contains(&n)))
            }),
            _ => false,
        };
        sorts.push(if keep {
            item.clone()
        } else {
            rewrite(item, &mut subst)?
        });
    }
    fin.sort_clause = sorts;
    fin.locking_clause.clear();
    let template = deparse_select(&fin)?;
    Ok(GatherPlan {
        shard_sql: deparse_select(&shard)?,
        hidden: 0,
        sort: Vec::new(),
        limit: None,
        offset: None,
        mode: Mode::Combine(Final::Grouped {
            template,
            aggs: finals,
        }),
        describe: format!(
            "partial aggregates per shard ({} group key(s), {} aggregate(s)), final aggregation on one shard",
            groups.len(),
            calls.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(sql: &str) -> Result<Option<GatherPlan>, ProxyError> {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().unwrap();
        let Some(NodeEnum::SelectStmt(s)) = &stmt.node else {
            panic!("not a select")
        };
        build(sql, s)
    }

    #[test]
    fn plain_select_needs_no_merge() {
        assert!(plan_of("SELECT * FROM users WHERE name = 'x'")
            .unwrap()
            .is_none());
    }

    #[test]
    fn order_by_adds_hidden_keys_and_pushes_limit() {
        let p = plan_of("SELECT id, name FROM users ORDER BY score DESC, 1 LIMIT 10 OFFSET 5")
            .unwrap()
            .unwrap();
        assert_eq!(p.hidden, 2);
        assert!(matches!(p.mode, Mode::Stream));
        assert_eq!(
            p.shard_sql,
            "SELECT id, name, score, id FROM users ORDER BY score DESC, 1 LIMIT 15"
        );
        assert_eq!(p.limit, Some(Count::Const(10)));
        assert_eq!(p.offset, Some(Count::Const(5)));
        assert!(p.sort[0].desc && p.sort[0].nulls_first);
        assert!(!p.sort[1].desc && !p.sort[1].nulls_first);
    }

    #[test]
    fn limit_params_push_down_as_a_sum() {
        let p = plan_of("SELECT id FROM users ORDER BY id LIMIT $1 OFFSET $2")
            .unwrap()
            .unwrap();
        assert!(
            p.shard_sql.ends_with("LIMIT $1::int8 + $2::int8"),
            "{}",
            p.shard_sql
        );
        assert_eq!(p.limit, Some(Count::Param(0)));
        // The client's casts stay (SQLAlchemy renders LIMIT $n::INTEGER; asyncpg then binds
        // an int4), and an OFFSET parameter alone stays referenced.
        let p = plan_of("SELECT id FROM users ORDER BY id LIMIT $1::integer")
            .unwrap()
            .unwrap();
        assert!(p.shard_sql.ends_with("LIMIT $1::int"), "{}", p.shard_sql);
        let p = plan_of("SELECT id FROM users ORDER BY id LIMIT $1::integer OFFSET $2::integer")
            .unwrap()
            .unwrap();
        assert!(
            p.shard_sql.ends_with("LIMIT $1::int::int8 + $2::int::int8"),
            "{}",
            p.shard_sql
        );
        let p = plan_of("SELECT id FROM users ORDER BY id OFFSET $1")
            .unwrap()
            .unwrap();
        assert!(
            p.shard_sql.ends_with("OFFSET 0 * $1::int8"),
            "{}",
            p.shard_sql
        );
        assert_eq!(p.offset, Some(Count::Param(0)));
    }

    #[test]
    fn aggregates_split_into_partials_and_final() {
        let p = plan_of(
            "SELECT country, count(*), avg(score) AS a FROM users WHERE id > 3 GROUP BY country HAVING sum(score) > 10 ORDER BY a DESC LIMIT 3",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p.shard_sql,
            "SELECT country, count(*), sum(score), count(score), avg(score), sum(score) FROM users WHERE id > 3 GROUP BY 1"
        );
        let Mode::Combine(Final::Grouped { template, aggs }) = &p.mode else {
            panic!("not grouped")
        };
        assert_eq!(
            template,
            "SELECT p0, __sw_agg_0__, __sw_agg_1__ AS a FROM _sw_partials GROUP BY p0 HAVING __sw_agg_2__ > 10 ORDER BY a DESC LIMIT 3"
        );
        assert_eq!(aggs.len(), 3);
        assert_eq!(aggs[1].cols, vec![2, 3, 4]);
    }

    #[test]
    fn distinct_aggregates_group_by_their_argument() {
        let p = plan_of("SELECT count(DISTINCT country), count(*) FROM users")
            .unwrap()
            .unwrap();
        assert_eq!(
            p.shard_sql,
            "SELECT country, count(*) FROM users GROUP BY 1"
        );
    }

    #[test]
    fn refusals_name_the_construct() {
        let e = plan_of("SELECT string_agg(name, ',') FROM users").unwrap_err();
        assert!(e.to_string().contains("string_agg"), "{e}");
        let e = plan_of("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY score) FROM users")
            .unwrap_err();
        assert!(e.to_string().contains("percentile_cont"), "{e}");
        let e = plan_of("SELECT country, name, count(*) FROM users GROUP BY country").unwrap_err();
        assert!(e.to_string().contains("GROUP BY"), "{e}");
    }
}
