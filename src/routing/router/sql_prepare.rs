//! SQL-level prepared statements as planned: a `PREPARE` read into a [`SqlPrepare`] (name,
//! declared types, the statement's text) and an `EXECUTE` (alone, in `EXPLAIN` or in
//! `CREATE TABLE … AS`) into a [`SqlExecute`]. The session keeps the statements and runs
//! an EXECUTE as the text [`super::substitute::expand`] makes of it.

use pg_query::protobuf::{self, SetOperation};
use pg_query::NodeEnum;

use std::sync::Arc;

use super::insert_lex::{lex, Tok, TokKind};
use super::stmt::{RouteSpec, StmtKind};
use crate::error::ProxyError;

/// Most parameters a prepared statement may take (what the protocol can bind).
const MAX_PARAMS: usize = 65_535;

/// A `PREPARE name [(type, …)] AS statement`.
#[derive(Debug, PartialEq, Eq)]
pub struct SqlPrepare {
    /// The statement's name, as Postgres folds it.
    pub name: String,
    /// The declared parameter types, as written (`int`, `varchar(10)`, `text[]`).
    pub types: Vec<String>,
    /// The prepared statement's text.
    pub body: String,
    /// How many arguments an EXECUTE must give: declared or used, whichever is more.
    pub params: usize,
    /// Where `body` has its `$n`, in order.
    pub slots: Vec<Slot>,
    /// Whether the statement is a query (what `CREATE TABLE … AS EXECUTE` takes).
    pub is_select: bool,
    /// The error Postgres raises at this PREPARE, when it would (see [`SqlError`]).
    pub error: Option<SqlError>,
}

/// One `$n` of a prepared statement's text.
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    /// Its byte offset.
    pub at: usize,
    /// Its length.
    pub len: usize,
    /// `n`.
    pub param: usize,
    /// When it is a whole result column (`SELECT $1`, `SELECT ($1)`): where its column
    /// ends, to be named `?column?` there as Postgres names it (a cast would name it by
    /// its type).
    pub alias_at: Option<usize>,
    /// A whole ORDER BY, GROUP BY or DISTINCT ON item, where a constant would be read as a
    /// column number: an untyped argument there is cast to text (a constant's value does
    /// not matter there, only that it is none).
    pub ordinal_place: bool,
}

/// An `EXECUTE name [(arg, …)]`, alone or inside `EXPLAIN` / `CREATE TABLE … AS`.
#[derive(Debug, PartialEq, Eq)]
pub struct SqlExecute {
    /// The statement's name, as Postgres folds it.
    pub name: String,
    /// Where the EXECUTE sits.
    pub wrap: ExecWrap,
    /// How many arguments it gives.
    pub args: usize,
    /// The error Postgres raises for its arguments, when it would.
    pub error: Option<SqlError>,
}

/// The statement an EXECUTE is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecWrap {
    /// `EXECUTE …` itself.
    Alone,
    /// `EXPLAIN … EXECUTE …`.
    Explain,
    /// `CREATE TABLE … AS EXECUTE …`.
    CreateAs,
}

/// An error Postgres raises for a PREPARE or an EXECUTE, found when planning it: its
/// SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    code: &'static str,
    message: String,
}

impl SqlError {
    pub(super) fn new(code: &'static str, message: String) -> Self {
        SqlError { code, message }
    }

    /// The error to send.
    pub fn to_error(&self) -> ProxyError {
        ProxyError::Backend {
            code: self.code.into(),
            message: self.message.clone(),
        }
    }
}

/// The kind of a PREPARE or EXECUTE statement `node` (text `text`, at byte `at` of its
/// query string); `None` for other statements. Their route refuses: the session runs them
/// itself in a simple Query, never through the extended protocol.
pub(super) fn classify(node: &NodeEnum, text: &str, at: usize) -> Option<(StmtKind, RouteSpec)> {
    let wrapped = |q: &Option<Box<protobuf::Node>>| match q.as_deref().and_then(|q| q.node.as_ref())
    {
        Some(NodeEnum::ExecuteStmt(e)) => Some(e.clone()),
        _ => None,
    };
    let kind = match node {
        NodeEnum::PrepareStmt(p) => match prepare(p, text, at) {
            Ok(p) => StmtKind::Prepare(Arc::new(p)),
            Err(e) => return Some((StmtKind::Other, RouteSpec::Refuse(e))),
        },
        NodeEnum::ExecuteStmt(e) => StmtKind::Execute(Arc::new(execute(e, ExecWrap::Alone))),
        NodeEnum::ExplainStmt(x) => {
            StmtKind::Execute(Arc::new(execute(&wrapped(&x.query)?, ExecWrap::Explain)))
        }
        NodeEnum::CreateTableAsStmt(c) => {
            StmtKind::Execute(Arc::new(execute(&wrapped(&c.query)?, ExecWrap::CreateAs)))
        }
        _ => return None,
    };
    Some((kind, RouteSpec::Refuse(ProxyError::Unsupported(
        "SQL PREPARE and EXECUTE run through the proxy in simple Query messages only (a driver's SQL without bind parameters); with the extended protocol, use the driver's own prepared statements".into(),
    ))))
}

/// The tokens of one statement's text, or a syntax error naming `what`.
pub(super) fn tokens(text: &str, what: &str) -> Result<Vec<Tok>, ProxyError> {
    lex(text).ok_or_else(|| ProxyError::Syntax(format!("could not read the {what} statement")))
}

/// The tokens of `toks` before a trailing `;`.
pub(super) fn without_semicolons<'a>(text: &str, mut toks: &'a [Tok]) -> &'a [Tok] {
    while let [rest @ .., last] = toks {
        if last.kind == TokKind::Other && &text[last.start..last.end] == ";" {
            toks = rest;
        } else {
            break;
        }
    }
    toks
}

/// Reads `PREPARE` statement `p`, whose text is `text`, starting at byte `at` of the query
/// string its node's locations count from.
pub(super) fn prepare(
    p: &protobuf::PrepareStmt,
    text: &str,
    at: usize,
) -> Result<SqlPrepare, ProxyError> {
    let all = tokens(text, "PREPARE")?;
    let toks = without_semicolons(text, &all);
    // After the name: the type list, then AS.
    let mut i = toks
        .iter()
        .skip(1)
        .position(|t| t.depth == 0 && (t.kind == TokKind::Open || t.is(text, "as")))
        .map(|k| k + 1)
        .ok_or_else(|| ProxyError::Syntax("PREPARE without AS".into()))?;
    let mut types = Vec::with_capacity(p.argtypes.len());
    if toks[i].kind == TokKind::Open {
        let close = toks[i + 1..]
            .iter()
            .position(|t| t.kind == TokKind::Close && t.depth == 0)
            .map(|k| k + i + 1)
            .ok_or_else(|| ProxyError::Syntax("PREPARE: unclosed type list".into()))?;
        types = items(text, &toks[i + 1..close], 1)
            .into_iter()
            .map(|(a, b)| text[a..b].to_string())
            .collect();
        i = close + 1;
    }
    let (Some(as_kw), Some(first), Some(last)) = (toks.get(i), toks.get(i + 1), toks.last()) else {
        return Err(ProxyError::Syntax("PREPARE without a statement".into()));
    };
    if !as_kw.is(text, "as") || types.len() != p.argtypes.len() {
        return Err(ProxyError::Syntax(
            "could not read the PREPARE statement".into(),
        ));
    }
    let body = text[first.start..last.end].to_string();
    let query = p.query.as_deref().and_then(|q| q.node.as_ref());
    let base = at + first.start;
    let bare: Vec<usize> = query
        .map(bare_params)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|loc| loc.checked_sub(base))
        .collect();
    let ordinal: Vec<usize> = query
        .map(ordinal_params)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|loc| loc.checked_sub(base))
        .collect();
    let (params, slots, error) = read_params(&body, types.len(), &bare, &ordinal)?;
    Ok(SqlPrepare {
        name: p.name.clone(),
        types,
        body,
        params,
        slots,
        is_select: matches!(query, Some(NodeEnum::SelectStmt(_))),
        error,
    })
}

/// The spans of the comma-separated items of `toks` (items at parenthesis depth `depth`,
/// outside brackets: `ARRAY[1, 2]` is one item).
pub(super) fn items(text: &str, toks: &[Tok], depth: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, usize)> = None;
    let mut brackets = 0usize;
    for t in toks {
        match (t.kind, &text[t.start..t.end]) {
            (TokKind::Comma, _) if t.depth == depth && brackets == 0 => {
                out.extend(cur.take());
                continue;
            }
            (TokKind::Other, "[") => brackets += 1,
            (TokKind::Other, "]") => brackets = brackets.saturating_sub(1),
            _ => {}
        }
        match &mut cur {
            Some((_, end)) => *end = t.end,
            None => cur = Some((t.start, t.end)),
        }
    }
    out.extend(cur);
    out
}

/// The `$n` of `body` (`bare`, `ordinal`: the offsets of those that are whole result
/// columns, and of those in an ordinal place), how many parameters it takes with
/// `declared` types, and the error Postgres raises at its PREPARE for a `$0` or a
/// parameter neither declared nor used (its type is unknown).
fn read_params(
    body: &str,
    declared: usize,
    bare: &[usize],
    ordinal: &[usize],
) -> Result<(usize, Vec<Slot>, Option<SqlError>), ProxyError> {
    let toks = tokens(body, "prepared")?;
    let mut used = vec![false; declared];
    let mut slots = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let TokKind::Param(n) = t.kind else { continue };
        if n == 0 || n > MAX_PARAMS {
            let e = SqlError::new("42P02", format!("there is no parameter ${n}"));
            return Ok((declared, slots, Some(e)));
        }
        if used.len() < n {
            used.resize(n, false);
        }
        used[n - 1] = true;
        let alias_at = bare.contains(&t.start).then(|| {
            // `(($1))`: the column ends after the parentheses around it.
            let opens = toks[..i]
                .iter()
                .rev()
                .take_while(|x| x.kind == TokKind::Open)
                .count();
            let closes = toks[i + 1..]
                .iter()
                .take_while(|x| x.kind == TokKind::Close)
                .count();
            toks[i + opens.min(closes)].end
        });
        slots.push(Slot {
            at: t.start,
            len: t.end - t.start,
            param: n,
            alias_at,
            ordinal_place: ordinal.contains(&t.start),
        });
    }
    let error = used
        .iter()
        .enumerate()
        .skip(declared)
        .find(|(_, u)| !**u)
        .map(|(k, _)| {
            SqlError::new(
                "42P18",
                format!("could not determine data type of parameter ${}", k + 1),
            )
        });
    Ok((used.len(), slots, error))
}

/// Where the `$n` that are whole ORDER BY, GROUP BY or DISTINCT ON items of a query in `q`
/// start (see [`Slot::ordinal_place`]).
fn ordinal_params(q: &NodeEnum) -> Vec<usize> {
    let param = |n: &protobuf::Node| match &n.node {
        Some(NodeEnum::ParamRef(p)) => usize::try_from(p.location).ok(),
        Some(NodeEnum::SortBy(s)) => match s.node.as_deref().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::ParamRef(p)) => usize::try_from(p.location).ok(),
            _ => None,
        },
        _ => None,
    };
    let mut out = Vec::new();
    for (n, ..) in q.nodes() {
        if let pg_query::NodeRef::SelectStmt(s) = n {
            let items = s.sort_clause.iter().chain(&s.group_clause);
            out.extend(items.chain(&s.distinct_clause).filter_map(param));
        }
    }
    out
}

/// The expressions of a RETURNING clause.
fn returning(r: &Option<protobuf::ReturningClause>) -> Option<&[protobuf::Node]> {
    r.as_ref().map(|r| r.exprs.as_slice())
}

/// Where the `$n` that are whole result columns of query `q` start (in the query string's
/// offsets): its select list (the first branch of a UNION), or its RETURNING list.
fn bare_params(q: &NodeEnum) -> Vec<usize> {
    let targets = match q {
        NodeEnum::SelectStmt(s) => {
            let mut s = s.as_ref();
            while s.op != SetOperation::SetopNone as i32 && s.op != SetOperation::Undefined as i32 {
                match s.larg.as_deref() {
                    Some(l) => s = l,
                    None => break,
                }
            }
            Some(s.target_list.as_slice())
        }
        NodeEnum::InsertStmt(i) => returning(&i.returning_clause),
        NodeEnum::UpdateStmt(u) => returning(&u.returning_clause),
        NodeEnum::DeleteStmt(d) => returning(&d.returning_clause),
        NodeEnum::MergeStmt(m) => returning(&m.returning_clause),
        _ => None,
    };
    let Some(targets) = targets else {
        return Vec::new();
    };
    targets
        .iter()
        .filter_map(|t| match &t.node {
            Some(NodeEnum::ResTarget(r)) if r.name.is_empty() => {
                match r.val.as_deref().and_then(|v| v.node.as_ref()) {
                    Some(NodeEnum::ParamRef(p)) => usize::try_from(p.location).ok(),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// Reads `EXECUTE` statement `e`, found where `wrap` says.
pub(super) fn execute(e: &protobuf::ExecuteStmt, wrap: ExecWrap) -> SqlExecute {
    SqlExecute {
        name: e.name.clone(),
        wrap,
        args: e.params.len(),
        error: e.params.iter().find_map(|p| arg_error(p).err()),
    }
}

/// Checks that an EXECUTE argument is an expression over constants, as Postgres requires
/// (its errors); refused as well: constructs not listed here, which the substitution could
/// not keep from reading the prepared statement's own columns.
fn arg_error(n: &protobuf::Node) -> Result<(), SqlError> {
    use NodeEnum as N;
    let all = |ns: &[protobuf::Node]| ns.iter().try_for_each(arg_error);
    let one = |n: &Option<Box<protobuf::Node>>| n.as_deref().map_or(Ok(()), arg_error);
    match n.node.as_ref() {
        None | Some(N::AConst(_) | N::SqlvalueFunction(_) | N::String(_) | N::AStar(_)) => Ok(()),
        Some(N::TypeCast(c)) => one(&c.arg),
        Some(N::AExpr(e)) => one(&e.lexpr).and(one(&e.rexpr)),
        Some(N::BoolExpr(e)) => all(&e.args),
        Some(N::NullTest(e)) => one(&e.arg),
        Some(N::BooleanTest(e)) => one(&e.arg),
        Some(N::CoalesceExpr(e)) => all(&e.args),
        Some(N::MinMaxExpr(e)) => all(&e.args),
        Some(N::RowExpr(e)) => all(&e.args),
        Some(N::AArrayExpr(e)) => all(&e.elements),
        Some(N::List(l)) => all(&l.items),
        Some(N::CollateClause(c)) => one(&c.arg),
        Some(N::AIndirection(i)) => one(&i.arg).and(all(&i.indirection)),
        Some(N::AIndices(i)) => one(&i.lidx).and(one(&i.uidx)),
        Some(N::CaseExpr(c)) => one(&c.arg).and(all(&c.args)).and(one(&c.defresult)),
        Some(N::CaseWhen(w)) => one(&w.expr).and(one(&w.result)),
        Some(N::FuncCall(f)) => {
            if f.over.is_some() {
                return Err(SqlError::new(
                    "42P20",
                    "window functions are not allowed in EXECUTE parameters".into(),
                ));
            }
            if f.agg_star
                || f.agg_distinct
                || f.agg_within_group
                || f.agg_filter.is_some()
                || !f.agg_order.is_empty()
            {
                return Err(SqlError::new(
                    "42803",
                    "aggregate functions are not allowed in EXECUTE parameters".into(),
                ));
            }
            all(&f.args)
        }
        Some(N::ColumnRef(c)) => {
            let names: Vec<&str> = c
                .fields
                .iter()
                .filter_map(|f| match &f.node {
                    Some(N::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            Err(match names.as_slice() {
                [col] => SqlError::new("42703", format!("column \"{col}\" does not exist")),
                [.., table, _] => SqlError::new(
                    "42P01",
                    format!("missing FROM-clause entry for table \"{table}\""),
                ),
                [] => SqlError::new("42703", "column reference in EXECUTE parameter".into()),
            })
        }
        Some(N::ParamRef(p)) => Err(SqlError::new(
            "42P02",
            format!("there is no parameter ${}", p.number),
        )),
        Some(N::SubLink(_)) => Err(SqlError::new(
            "0A000",
            "cannot use subquery in EXECUTE parameter".into(),
        )),
        Some(_) => Err(SqlError::new(
            "0A000",
            "this kind of EXECUTE argument is not supported through the proxy; use constants, operators, casts and function calls".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(sql: &str) -> SqlPrepare {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let Some(NodeEnum::PrepareStmt(p)) = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
        else {
            panic!("{sql}")
        };
        prepare(p, sql, 0).unwrap()
    }

    #[test]
    fn prepare_reads_name_types_and_statement() {
        let p = prep("PREPARE Q (int, numeric(10, 2), text[]) AS SELECT $1, ($2) AS x, $3 -- c");
        assert_eq!(p.name, "q");
        assert_eq!(p.types, ["int", "numeric(10, 2)", "text[]"]);
        assert_eq!(p.body, "SELECT $1, ($2) AS x, $3");
        assert_eq!(p.params, 3);
        let bare: Vec<_> = p.slots.iter().map(|s| s.alias_at).collect();
        assert_eq!(bare, [Some(9), None, Some(24)]);
        assert!(p.is_select && p.error.is_none());
        let p = prep("PREPARE i AS INSERT INTO t VALUES ($2, '$1') RETURNING $1;");
        assert_eq!(p.body, "INSERT INTO t VALUES ($2, '$1') RETURNING $1");
        assert_eq!((p.params, p.slots.len(), p.is_select), (2, 2, false));
        assert!(p.slots[1].alias_at.is_some());
        assert!(prep("PREPARE g AS SELECT $2").error.is_some());
        assert!(prep("PREPARE g(int) AS SELECT $2").error.is_none());
        assert!(prep("PREPARE g AS SELECT $0").error.is_some());
    }
}
