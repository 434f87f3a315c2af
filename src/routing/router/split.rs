//! Multi-row `INSERT … VALUES` cut into one INSERT per shard ([`InsertSplit`]): the rows'
//! keys and text spans, found when the statement is planned, and the per-shard statements
//! with their parameters renumbered.

use std::sync::Arc;

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

use super::key_src::{bind_param_key, BindKey};
use super::template::{veto, Template};
use crate::error::ProxyError;
use crate::sharding::keys::{
    key_from_int, key_from_text, numeric_literal, KeyType, KeyValue, NumericLiteral,
};
use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::strategy::{Located, Sharded};

/// A multi-row `INSERT … VALUES` cut into one INSERT per shard. The per-shard statements are
/// the original text with only that shard's rows (prefix + rows joined by `, ` + suffix), so
/// ON CONFLICT and RETURNING clauses stay as written; `$n` parameters are renumbered per
/// shard and each shard is bound only the parameters its text uses.
#[derive(Debug)]
pub struct InsertSplit {
    /// The table.
    pub table: Arc<Sharded>,
    /// Per row: its key, and its text span in the statement.
    pub rows: Vec<(RowKey, (usize, usize))>,
    /// The statement's text (spans index it).
    pub text: String,
    /// `$n` references in the text: (start, end, 0-based parameter index).
    params: Vec<(usize, usize, usize)>,
}

/// Bind parameters and whether each is binary.
pub type BindParams<'a> = (&'a [Option<&'a [u8]>], &'a dyn Fn(usize) -> bool);

/// The shard key of one VALUES row.
#[derive(Debug, Clone)]
pub enum RowKey {
    /// A constant.
    Const(KeyValue),
    /// Parameter #n (0-based).
    Param(usize),
}

/// One shard's part of a split INSERT.
#[derive(Debug)]
pub struct SplitPart {
    /// The shard.
    pub shard: usize,
    /// Its INSERT.
    pub sql: String,
    /// The client's parameters it takes (0-based), in the order of its `$1, $2, …`.
    pub params: Vec<usize>,
    /// The client's rows it inserts (0-based, in the statement's order): RETURNING rows
    /// are put back in the client's order by them.
    pub rows: Vec<usize>,
}

impl InsertSplit {
    /// One statement per shard, for the current placement of each row's key. `bind` gives
    /// the Bind parameters when rows' keys are parameters.
    pub fn statements(
        &self,
        map: &ShardMap,
        bind: Option<BindParams<'_>>,
    ) -> Result<Vec<SplitPart>, ProxyError> {
        // Per shard: its rows' spans, and their numbers in the statement.
        type ShardRows = (usize, Vec<(usize, usize)>, Vec<usize>);
        let mut rows_of: Vec<ShardRows> = Vec::new();
        for (row_no, (key, span)) in self.rows.iter().enumerate() {
            let owned;
            let key = match key {
                RowKey::Const(k) => k,
                RowKey::Param(i) => {
                    owned = self.param_key(*i, bind)?;
                    &owned
                }
            };
            let shard = match map.locate(&self.table, key, true) {
                Located::Shard(s) => s,
                Located::Nowhere(why) => return Err(ProxyError::NoShard(why)),
                Located::Unavailable(why) => return Err(ProxyError::Unavailable(why)),
            };
            match rows_of.iter_mut().find(|(s, _, _)| *s == shard) {
                Some((_, rows, nos)) => {
                    rows.push(*span);
                    nos.push(row_no);
                }
                None => rows_of.push((shard, vec![*span], vec![row_no])),
            }
        }
        let first = self.rows.first().map(|r| r.1 .0).unwrap_or(0);
        let last = self.rows.last().map(|r| r.1 .1).unwrap_or(0);
        Ok(rows_of
            .into_iter()
            .map(|(shard, rows, nos)| {
                let mut part = SplitPart {
                    shard,
                    sql: String::with_capacity(self.text.len()),
                    params: Vec::new(),
                    rows: nos,
                };
                self.copy_renumbered(0, first, &mut part);
                for (k, (a, b)) in rows.iter().enumerate() {
                    if k > 0 {
                        part.sql.push_str(", ");
                    }
                    self.copy_renumbered(*a, *b, &mut part);
                }
                self.copy_renumbered(last, self.text.len(), &mut part);
                part
            })
            .collect())
    }

    /// Appends text `a..b` to the part, renumbering `$n` references.
    fn copy_renumbered(&self, a: usize, b: usize, part: &mut SplitPart) {
        let mut at = a;
        for &(s, e, i) in self.params.iter().filter(|(s, _, _)| *s >= a && *s < b) {
            part.sql.push_str(self.text.get(at..s).unwrap_or(""));
            let n = match part.params.iter().position(|&p| p == i) {
                Some(n) => n,
                None => {
                    part.params.push(i);
                    part.params.len() - 1
                }
            };
            part.sql.push_str(&format!("${}", n + 1));
            at = e;
        }
        part.sql.push_str(self.text.get(at..b).unwrap_or(""));
    }

    /// The key given as Bind parameter `i`.
    fn param_key(&self, i: usize, bind: Option<BindParams<'_>>) -> Result<KeyValue, ProxyError> {
        let Some((params, is_binary)) = bind else {
            return Err(ProxyError::Protocol(
                "internal: a split INSERT with parameters was run without them".into(),
            ));
        };
        match bind_param_key(self.table.key_type, params, i, is_binary)? {
            BindKey::Key(k) => Ok(k),
            BindKey::Null => Err(ProxyError::Unsupported(format!(
                "shard key {} must not be NULL",
                self.table.what()
            ))),
            // A row is placed on one shard: the session's time zone would decide which.
            BindKey::OffsetLess(_, e) => Err(e.into()),
        }
    }
}

/// The `$n` parameter references in `stmt`, found with the Postgres lexer.
fn param_refs(stmt: &str) -> Option<Vec<(usize, usize, usize)>> {
    let tokens = pg_query::scan(stmt).ok()?.tokens;
    Some(
        tokens
            .iter()
            .filter_map(|t| {
                let (s, e) = (t.start as usize, t.end as usize);
                let digits = stmt.get(s..e)?.strip_prefix('$')?;
                let n: usize = digits.parse().ok()?;
                (n >= 1).then(|| (s, e, n - 1))
            })
            .collect(),
    )
}

/// The text spans of the rows of `INSERT … VALUES (…), (…)` in `stmt`, found with the
/// Postgres lexer: the parenthesized groups at depth 0 after the first `VALUES`.
fn values_rows(stmt: &str) -> Option<Vec<(usize, usize)>> {
    let tokens = pg_query::scan(stmt).ok()?.tokens;
    let text = |t: &protobuf::ScanToken| stmt.get(t.start as usize..t.end as usize).unwrap_or("");
    let start = tokens
        .iter()
        .position(|t| text(t).eq_ignore_ascii_case("values") && t.keyword_kind != 0)?;
    let mut rows = Vec::new();
    let mut depth = 0usize;
    let mut open = 0usize;
    for t in &tokens[start + 1..] {
        match (text(t), depth) {
            ("(", 0) => {
                open = t.start as usize;
                depth = 1;
            }
            ("(", _) => depth += 1,
            (")", 1) => {
                rows.push((open, t.end as usize));
                depth = 0;
            }
            (")", 0) => return None,
            (")", _) => depth -= 1,
            (",", 0) => {}
            (_, 0) => break,
            _ => {}
        }
    }
    Some(rows)
}

/// The split of a multi-row INSERT into a sharded table whose keys are all constants.
/// `tpl`: the literal template being planned, if any (vetoed: rows are cut by value).
pub(super) fn insert_split(
    map: &ShardMap,
    ins: &protobuf::InsertStmt,
    stmt: &str,
    tpl: Option<&Template>,
) -> Option<Arc<InsertSplit>> {
    let rel = ins.relation.as_ref()?;
    let Some(TableRule::Sharded(t)) = map.table(&rel.schemaname, &rel.relname) else {
        return None;
    };
    let Some(NodeEnum::SelectStmt(sel)) = ins.select_stmt.as_ref().and_then(|s| s.node.as_ref())
    else {
        return None;
    };
    if sel.values_lists.len() < 2 {
        return None;
    }
    if tpl.is_some() {
        // Rows are cut by their constants' values: plan the exact text.
        veto(tpl);
        return None;
    }
    let pos = ins.cols.iter().position(
        |c| matches!(&c.node, Some(NodeEnum::ResTarget(r)) if r.name.eq_ignore_ascii_case(&t.key)),
    )?;
    let spans = values_rows(stmt)?;
    if spans.len() != sel.values_lists.len() {
        return None;
    }
    let mut rows = Vec::with_capacity(spans.len());
    for (row, span) in sel.values_lists.iter().zip(spans) {
        let Some(NodeEnum::List(l)) = &row.node else {
            return None;
        };
        let item = l.items.get(pos)?;
        let key = match param_of(item) {
            Some(i) => RowKey::Param(i),
            None => RowKey::Const(const_key(t.key_type, item)?),
        };
        rows.push((key, span));
    }
    Some(Arc::new(InsertSplit {
        table: t.clone(),
        params: param_refs(stmt)?,
        text: stmt.to_string(),
        rows,
    }))
}

/// The 0-based parameter a key expression is (`$3`, `$3::bigint`).
fn param_of(n: &protobuf::Node) -> Option<usize> {
    match &n.node {
        Some(NodeEnum::TypeCast(c)) => param_of(c.arg.as_deref()?),
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => Some(p.number as usize - 1),
        _ => None,
    }
}

/// A constant as a key of type `ty` (`None` for anything else, or a bad value).
fn const_key(ty: KeyType, n: &protobuf::Node) -> Option<KeyValue> {
    match &n.node {
        Some(NodeEnum::TypeCast(c)) => const_key(ty, c.arg.as_deref()?),
        Some(NodeEnum::AConst(c)) if !c.isnull => match &c.val {
            Some(Val::Ival(i)) => key_from_int(ty, i.ival as i64).ok(),
            Some(Val::Fval(f)) => {
                key_from_text(ty, &f.fval)
                    .ok()
                    .or_else(|| match numeric_literal(ty, &f.fval) {
                        NumericLiteral::Value(k) => Some(k),
                        _ => None,
                    })
            }
            Some(Val::Sval(s)) => key_from_text(ty, &s.sval).ok(),
            _ => None,
        },
        _ => None,
    }
}
