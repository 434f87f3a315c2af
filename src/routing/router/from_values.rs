//! `INSERT … SELECT` over rows written in the statement, made a plain `INSERT … VALUES`
//! ([`FromValues`]). It is the same rows in the same order, but each row's key can now be
//! read, so the INSERT is routed (and split by shard) like any multi-row INSERT, and
//! generated values are given per row. Two forms:
//!
//! - `SELECT <exprs> FROM (VALUES …) AS a(c1, c2, …) [ORDER BY cN]`: each row's
//!   expressions with the alias columns replaced by that row's values, rows in the ORDER
//!   BY's order. SQLAlchemy's "insertmanyvalues" sends it for ORM bulk inserts that return
//!   server generated keys (`… FROM (VALUES ($1::BIGINT, $2::VARCHAR, 0), …) AS imp_sen(p0,
//!   p1, sen_counter) ORDER BY sen_counter RETURNING t.id`), relying on RETURNING in row order.
//! - `SELECT * FROM UNNEST('{…}'::T[], …)` over array constants: row k holds element k of
//!   each array (NULL past an array's end, as `unnest` pads), cast to the element type.
//!   Django 5.2's `bulk_create` sends it (`UNNEST(('{1,2}'::int2[])::bigint[], …)`, with
//!   client-side binding, its default).

use pg_query::protobuf::{self, SortByDir, SortByNulls};
use pg_query::{NodeEnum, NodeRef};

use super::insert_lex::{lex, rows_at, Tok, TokKind};
use crate::error::ProxyError;

/// How to turn the INSERT … SELECT into an INSERT … VALUES (see the module docs).
#[derive(Debug)]
pub(super) enum FromValues {
    /// `SELECT … FROM (VALUES …) AS a(…) [ORDER BY …]`.
    Values {
        /// The alias's column names (as Postgres folds them).
        names: Vec<String>,
        /// The alias column the rows are ordered by (its values are integer constants).
        order_by: Option<usize>,
    },
    /// `SELECT * FROM UNNEST(<array constant>, …)`: the number of arrays.
    Unnest(usize),
}

/// The conversion of `sel` (an INSERT's SELECT), when it has exactly that form: the SELECT
/// list reads only the alias's columns (no subqueries, aggregates or window functions), no
/// WHERE, GROUP BY, DISTINCT, LIMIT or locking, and an ORDER BY, if any, on one alias column
/// holding integer constants.
pub(super) fn plan(sel: &protobuf::SelectStmt) -> Option<FromValues> {
    if sel.where_clause.is_some()
        || !sel.group_clause.is_empty()
        || sel.having_clause.is_some()
        || !sel.distinct_clause.is_empty()
        || sel.limit_count.is_some()
        || sel.limit_offset.is_some()
        || !sel.window_clause.is_empty()
        || !sel.locking_clause.is_empty()
        || sel.with_clause.is_some()
        || !sel.values_lists.is_empty()
        || sel.target_list.is_empty()
    {
        return None;
    }
    let [from] = sel.from_clause.as_slice() else {
        return None;
    };
    if let Some(NodeEnum::RangeFunction(f)) = &from.node {
        return plan_unnest(sel, f);
    }
    let Some(NodeEnum::RangeSubselect(sub)) = &from.node else {
        return None;
    };
    if sub.lateral {
        return None;
    }
    let Some(NodeEnum::SelectStmt(inner)) = sub.subquery.as_ref().and_then(|n| n.node.as_ref())
    else {
        return None;
    };
    let alias = sub.alias.as_ref()?;
    let names: Vec<String> = alias
        .colnames
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    if names.is_empty() || inner.values_lists.is_empty() {
        return None;
    }
    let rows: Vec<&Vec<protobuf::Node>> = inner
        .values_lists
        .iter()
        .filter_map(|r| match &r.node {
            Some(NodeEnum::List(l)) => Some(&l.items),
            _ => None,
        })
        .collect();
    if rows.len() != inner.values_lists.len() || rows.iter().any(|r| r.len() != names.len()) {
        return None;
    }
    // Every column reference of the SELECT list is one of the alias's columns.
    for t in &sel.target_list {
        let Some(NodeEnum::ResTarget(r)) = &t.node else {
            return None;
        };
        let v = r.val.as_deref()?.node.as_ref()?;
        for (n, _, _, _) in v.nodes() {
            match n {
                NodeRef::ColumnRef(c) => {
                    let [f] = c.fields.as_slice() else {
                        return None;
                    };
                    match &f.node {
                        Some(NodeEnum::String(s)) if names.contains(&s.sval) => {}
                        _ => return None,
                    }
                }
                NodeRef::SubLink(_) => return None,
                NodeRef::FuncCall(f)
                    if f.over.is_some()
                        || f.agg_star
                        || !f.agg_order.is_empty()
                        || f.agg_filter.is_some() =>
                {
                    return None
                }
                NodeRef::FuncCall(f) => {
                    let name = f.funcname.last().and_then(|n| match &n.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
                        _ => None,
                    });
                    if name.is_some_and(|n| crate::gather::sqltree::is_aggregate_name(&n)) {
                        return None;
                    }
                }
                _ => {}
            }
        }
    }
    let order_by = match sel.sort_clause.as_slice() {
        [] => None,
        [s] => {
            let Some(NodeEnum::SortBy(sb)) = &s.node else {
                return None;
            };
            let dir = SortByDir::try_from(sb.sortby_dir).unwrap_or(SortByDir::Undefined);
            let nulls = SortByNulls::try_from(sb.sortby_nulls).unwrap_or(SortByNulls::Undefined);
            if !matches!(dir, SortByDir::SortbyDefault | SortByDir::SortbyAsc)
                || !matches!(nulls, SortByNulls::SortbyNullsDefault)
                || !sb.use_op.is_empty()
            {
                return None;
            }
            let Some(NodeEnum::ColumnRef(c)) = sb.node.as_deref().and_then(|n| n.node.as_ref())
            else {
                return None;
            };
            let [f] = c.fields.as_slice() else {
                return None;
            };
            let Some(NodeEnum::String(s)) = &f.node else {
                return None;
            };
            let k = names.iter().position(|n| *n == s.sval)?;
            let all_ints = rows.iter().all(|r| {
                matches!(&r[k].node, Some(NodeEnum::AConst(c)) if matches!(c.val, Some(protobuf::a_const::Val::Ival(_))))
            });
            if !all_ints {
                return None;
            }
            Some(k)
        }
        _ => return None,
    };
    Some(FromValues::Values { names, order_by })
}

/// The `unnest(…)` call of `SELECT * FROM unnest(…)` (one function, no ORDER BY, no
/// ordinality, ROWS FROM or LATERAL), with at least one argument.
pub(super) fn unnest_call<'a>(
    sel: &'a protobuf::SelectStmt,
    f: &'a protobuf::RangeFunction,
) -> Option<&'a protobuf::FuncCall> {
    let star = matches!(sel.target_list.as_slice(), [t] if matches!(&t.node,
        Some(NodeEnum::ResTarget(r)) if matches!(r.val.as_deref().and_then(|v| v.node.as_ref()),
            Some(NodeEnum::ColumnRef(c)) if matches!(c.fields.as_slice(), [x] if matches!(x.node, Some(NodeEnum::AStar(_)))))));
    if !star || !sel.sort_clause.is_empty() || f.ordinality || f.lateral || f.is_rowsfrom {
        return None;
    }
    let [item] = f.functions.as_slice() else {
        return None;
    };
    let Some(NodeEnum::List(l)) = &item.node else {
        return None;
    };
    let Some(NodeEnum::FuncCall(call)) = l.items.first().and_then(|n| n.node.as_ref()) else {
        return None;
    };
    let name = call.funcname.last().and_then(|n| match &n.node {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    })?;
    (name == "unnest" && !call.args.is_empty()).then_some(&**call)
}

/// `SELECT * FROM UNNEST(a1, a2, …)` with every argument an array constant with a cast to
/// an array type (`'{…}'::T[]`, possibly cast twice), no ORDER BY, no ordinality.
fn plan_unnest(sel: &protobuf::SelectStmt, f: &protobuf::RangeFunction) -> Option<FromValues> {
    let call = unnest_call(sel, f)?;
    for a in &call.args {
        let Some(NodeEnum::TypeCast(c)) = &a.node else {
            return None;
        };
        if c.type_name
            .as_ref()
            .is_none_or(|t| t.array_bounds.is_empty())
        {
            return None;
        }
        // The constant inside the casts.
        let mut inner = c.arg.as_deref();
        loop {
            match inner.and_then(|n| n.node.as_ref()) {
                Some(NodeEnum::TypeCast(c)) => inner = c.arg.as_deref(),
                Some(NodeEnum::AConst(k))
                    if matches!(k.val, Some(protobuf::a_const::Val::Sval(_))) =>
                {
                    break
                }
                _ => return None,
            }
        }
    }
    Some(FromValues::Unnest(call.args.len()))
}

/// The elements of a one-dimensional array constant's text (`{1,"b,c",NULL}`); `None` for
/// anything else (dimensions, nested arrays).
fn array_elements(s: &str) -> Option<Vec<Option<String>>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut v = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => v.push(chars.next()?),
                    '"' => break,
                    c => v.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    ',' => break,
                    '{' | '}' | '"' => return None,
                    '\\' => {
                        chars.next();
                        v.push(chars.next()?);
                    }
                    c => {
                        v.push(c);
                        chars.next();
                    }
                }
            }
            v = v.trim_end().to_string();
        }
        out.push(if !quoted && v.eq_ignore_ascii_case("null") {
            None
        } else {
            Some(v)
        });
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

impl FromValues {
    /// Appends `stmt` written as an INSERT … VALUES to `out`.
    pub(super) fn render(&self, stmt: &str, out: &mut String) -> Result<(), ProxyError> {
        let (names, order_by) = match self {
            FromValues::Values { names, order_by } => (names, *order_by),
            FromValues::Unnest(n) => return render_unnest(stmt, *n, out),
        };
        let bad =
            || ProxyError::Internal("an INSERT … SELECT to rewrite has an unexpected shape".into());
        let toks = lex(stmt).ok_or_else(bad)?;
        let select = toks
            .iter()
            .position(|t| t.depth == 0 && t.is(stmt, "select"))
            .ok_or_else(bad)?;
        let from = select
            + toks[select..]
                .iter()
                .position(|t| t.depth == 0 && t.is(stmt, "from"))
                .ok_or_else(bad)?;
        let values = from
            + toks[from..]
                .iter()
                .position(|t| t.depth == 1 && t.is(stmt, "values"))
                .ok_or_else(bad)?;
        let (mut rows, after) = rows_at(&toks, values);
        // The rest of the statement (ON CONFLICT, RETURNING) after the alias and ORDER BY.
        let rest = toks[after..]
            .iter()
            .find(|t| t.depth == 0 && (t.is(stmt, "returning") || t.is(stmt, "on")))
            .map(|t| t.start)
            .unwrap_or(stmt.len());
        // The SELECT list's expressions, as token ranges.
        let mut targets: Vec<(usize, usize)> = Vec::new();
        let mut first = select + 1;
        for (i, t) in toks.iter().enumerate().take(from).skip(select + 1) {
            if t.kind == TokKind::Comma && t.depth == 0 {
                targets.push((first, i));
                first = i + 1;
            }
        }
        targets.push((first, from));
        if let Some(k) = order_by {
            let mut keyed = Vec::with_capacity(rows.len());
            for r in rows {
                let (a, b) = *r.items.get(k).ok_or_else(bad)?;
                let v: i64 = stmt[a..b].trim().parse().map_err(|_| bad())?;
                keyed.push((v, r));
            }
            keyed.sort_by_key(|(v, _)| *v); // stable: equal keys keep their order
            rows = keyed.into_iter().map(|(_, r)| r).collect();
        }
        out.push_str(&stmt[..toks[select].start]);
        out.push_str("VALUES ");
        for (ri, row) in rows.iter().enumerate() {
            if row.items.len() != names.len() {
                return Err(bad());
            }
            out.push_str(if ri == 0 { "(" } else { ", (" });
            for (ti, &(a, b)) in targets.iter().enumerate() {
                if ti > 0 {
                    out.push_str(", ");
                }
                expression(names, stmt, &toks[a..b], row, out);
            }
            out.push(')');
        }
        out.push(' ');
        out.push_str(&stmt[rest..]);
        Ok(())
    }
}

/// One SELECT-list expression (its tokens) with the alias's columns `names` replaced by the
/// row's values. A trailing `AS name` is dropped (VALUES has no column names).
fn expression(
    names: &[String],
    stmt: &str,
    toks: &[Tok],
    row: &super::insert_lex::Row,
    out: &mut String,
) {
    let end = toks
        .iter()
        .position(|t| t.depth == 0 && t.is(stmt, "as"))
        .unwrap_or(toks.len());
    let toks = &toks[..end];
    let Some(first) = toks.first() else { return };
    let mut at = first.start;
    for (i, t) in toks.iter().enumerate() {
        let name = match t.kind {
            TokKind::Word => Some(stmt[t.start..t.end].to_ascii_lowercase()),
            TokKind::Quoted => Some(stmt[t.start + 1..t.end - 1].replace("\"\"", "\"")),
            _ => None,
        };
        let qualified = i > 0 && &stmt[toks[i - 1].start..toks[i - 1].end] == ".";
        let called = toks.get(i + 1).is_some_and(|n| n.kind == TokKind::Open);
        let cast_type = i > 0 && &stmt[toks[i - 1].start..toks[i - 1].end] == ":";
        let col = name
            .filter(|_| !qualified && !called && !cast_type)
            .and_then(|n| names.iter().position(|x| *x == n));
        if let Some(k) = col {
            let (a, b) = row.items[k];
            out.push_str(&stmt[at..t.start]);
            out.push('(');
            out.push_str(&stmt[a..b]);
            out.push(')');
            at = t.end;
        }
    }
    if let Some(last) = toks.last() {
        out.push_str(&stmt[at..last.end]);
    }
}

/// `stmt` (`… SELECT * FROM UNNEST(a1, …, an) …`) written as an INSERT … VALUES.
fn render_unnest(stmt: &str, n: usize, out: &mut String) -> Result<(), ProxyError> {
    let bad = || {
        ProxyError::Internal(
            "an INSERT … SELECT FROM UNNEST to rewrite has an unexpected shape".into(),
        )
    };
    let toks = lex(stmt).ok_or_else(bad)?;
    let select = toks
        .iter()
        .position(|t| t.depth == 0 && t.is(stmt, "select"))
        .ok_or_else(bad)?;
    let open = select
        + toks[select..]
            .iter()
            .position(|t| t.depth == 0 && t.kind == TokKind::Open)
            .ok_or_else(bad)?;
    // The arguments: token ranges split at commas inside UNNEST's parentheses.
    let mut args: Vec<(usize, usize)> = Vec::new();
    let mut first = open + 1;
    let mut close = open;
    for (i, t) in toks.iter().enumerate().skip(open + 1) {
        match t.kind {
            TokKind::Comma if t.depth == 1 => {
                args.push((first, i));
                first = i + 1;
            }
            TokKind::Close if t.depth == 0 => {
                args.push((first, i));
                close = i;
                break;
            }
            _ => {}
        }
    }
    if args.len() != n || close == open {
        return Err(bad());
    }
    let mut columns: Vec<(Vec<Option<String>>, &str)> = Vec::with_capacity(n);
    for &(a, b) in &args {
        let arg = &toks[a..b];
        // The array constant: the one string token (a standard string, not E'' or U&'').
        let lit = arg
            .iter()
            .find(|t| t.kind == TokKind::Other && stmt[t.start..t.end].starts_with('\''))
            .ok_or_else(|| {
                ProxyError::Unsupported(
                    "INSERT … SELECT FROM UNNEST of an array that is not a plain string constant"
                        .into(),
                )
            })?;
        let text = stmt[lit.start + 1..lit.end - 1].replace("''", "'");
        let elems = array_elements(&text).ok_or_else(|| {
            ProxyError::Unsupported(
                "UNNEST of an array constant that is not one-dimensional".into(),
            )
        })?;
        // The element type: what follows the last `::`, without its `[]`.
        let last_cast = (1..arg.len())
            .rev()
            .find(|&i| {
                &stmt[arg[i - 1].start..arg[i - 1].end] == ":"
                    && &stmt[arg[i].start..arg[i].end] == ":"
            })
            .ok_or_else(bad)?;
        let ty = stmt[arg.get(last_cast + 1).ok_or_else(bad)?.start..arg[arg.len() - 1].end]
            .trim()
            .strip_suffix(']')
            .and_then(|t| t.trim_end().strip_suffix('['))
            .ok_or_else(bad)?
            .trim_end();
        columns.push((elems, ty));
    }
    let rows = columns.iter().map(|c| c.0.len()).max().unwrap_or(0);
    if rows == 0 {
        return Err(ProxyError::Unsupported(
            "INSERT … SELECT FROM UNNEST of empty arrays".into(),
        ));
    }
    let rest = toks[close..]
        .iter()
        .find(|t| t.depth == 0 && (t.is(stmt, "returning") || t.is(stmt, "on")))
        .map(|t| t.start)
        .unwrap_or(stmt.len());
    out.push_str(&stmt[..toks[select].start]);
    out.push_str("VALUES ");
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for (k, (elems, ty)) in columns.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            match elems.get(r).cloned().flatten() {
                Some(v) => out.push_str(&crate::quote::literal(&v)),
                None => out.push_str("NULL"),
            }
            out.push_str("::");
            out.push_str(ty);
        }
        out.push(')');
    }
    out.push(' ');
    out.push_str(&stmt[rest..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_constants_are_read_as_postgres_writes_them() {
        assert_eq!(
            array_elements(r#"{1, 2,3}"#),
            Some(vec![Some("1".into()), Some("2".into()), Some("3".into())])
        );
        assert_eq!(
            array_elements(r#"{a,"b,c",NULL,"NULL","q\"x",it's}"#),
            Some(vec![
                Some("a".into()),
                Some("b,c".into()),
                None,
                Some("NULL".into()),
                Some("q\"x".into()),
                Some("it's".into())
            ])
        );
        assert_eq!(array_elements("{}"), Some(vec![]));
        assert_eq!(array_elements("{{1,2},{3,4}}"), None);
        assert_eq!(array_elements("[1:2]={1,2}"), None);
    }
}
