//! `INSERT INTO t (…) SELECT * FROM unnest($1::T1[], $2::T2[], …)`: rows bound as arrays,
//! one array per column — sqlx's documented bulk insert, also written by hand for asyncpg,
//! psycopg and JDBC (issue 19). Row k is element k of every array (NULL past an array's
//! end, as `unnest` pads). The proxy reads the key array's elements, and gives each shard
//! the same statement bound with the sub-arrays of its rows ([`ArraySplit::split`]); their
//! RETURNING rows are put back in the client's row order. Only the key array's elements are
//! decoded; the others are cut by their element boundaries, so any element type works.

use std::sync::Arc;

use pg_query::protobuf;
use pg_query::NodeEnum;

use super::key_src::{bind_param_key, BindKey};
use crate::error::ProxyError;
use crate::sharding::shardmap::ShardMap;
use crate::sharding::strategy::{Located, Sharded};
use crate::wire::arrays::{self, ArrayError, Elements};
use crate::wire::protocol::build;

/// How to split an INSERT over unnested array parameters (see the module docs).
#[derive(Debug)]
pub struct ArraySplit {
    /// The table.
    pub table: Arc<Sharded>,
    /// The unnest arguments' parameters (0-based), in the INSERT's column order.
    pub args: Vec<usize>,
    /// Which argument holds the shard key.
    pub key_arg: usize,
}

/// One shard's part of an [`ArraySplit`].
#[derive(Debug)]
pub struct ArrayPart {
    /// The shard.
    pub shard: usize,
    /// The client's rows it inserts (0-based, in order).
    pub rows: Vec<usize>,
    /// Its Bind's parameters and result formats (see [`crate::wire::protocol::build::bind_tail`]).
    pub tail: Vec<u8>,
}

/// The split of `sel` (the INSERT's SELECT, the key in column `pos`), when it has exactly
/// the form `SELECT * FROM unnest($a[::T[]], …)`.
pub(super) fn plan(t: &Arc<Sharded>, pos: usize, sel: &protobuf::SelectStmt) -> Option<ArraySplit> {
    if sel.where_clause.is_some()
        || !sel.group_clause.is_empty()
        || sel.having_clause.is_some()
        || !sel.distinct_clause.is_empty()
        || !sel.sort_clause.is_empty()
        || sel.limit_count.is_some()
        || sel.limit_offset.is_some()
        || !sel.window_clause.is_empty()
        || !sel.locking_clause.is_empty()
        || sel.with_clause.is_some()
    {
        return None;
    }
    let [from] = sel.from_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::RangeFunction(f)) = &from.node else {
        return None;
    };
    let call = super::from_values::unnest_call(sel, f)?;
    let mut args = Vec::with_capacity(call.args.len());
    for a in &call.args {
        // The parameter inside the casts.
        let mut node = a.node.as_ref();
        loop {
            match node {
                Some(NodeEnum::TypeCast(c)) => {
                    node = c.arg.as_deref().and_then(|n| n.node.as_ref())
                }
                Some(NodeEnum::ParamRef(p)) if p.number >= 1 => {
                    args.push(p.number as usize - 1);
                    break;
                }
                _ => return None,
            }
        }
    }
    (pos < args.len()).then(|| ArraySplit {
        table: t.clone(),
        args,
        key_arg: pos,
    })
}

impl ArraySplit {
    /// One part per shard its rows' keys map to (one at least: no rows go to the table's
    /// first shard), for Bind parameters `params` (each binary or text as `is_binary`
    /// says), asking for `formats`.
    pub fn split(
        &self,
        map: &ShardMap,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
        formats: &[i16],
    ) -> Result<Vec<ArrayPart>, ProxyError> {
        let bad = |i: usize, e: ArrayError| ProxyError::Backend {
            code: if is_binary(i) { "22P03" } else { "22P02" }.into(),
            message: format!("parameter ${}: {e}", i + 1),
        };
        // Every array argument, cut into elements (a NULL array is an empty one).
        let mut cut: Vec<Option<Elements<'_>>> = Vec::with_capacity(self.args.len());
        for &i in &self.args {
            let v = params.get(i).copied().flatten();
            cut.push(match v {
                None => None,
                Some(b) if is_binary(i) => Some(arrays::split_binary(b).map_err(|e| bad(i, e))?),
                Some(b) => Some(arrays::split_text(b).map_err(|e| bad(i, e))?),
            });
        }
        let rows = cut
            .iter()
            .map(|c| c.as_ref().map_or(0, |e| e.elems.len()))
            .max()
            .unwrap_or(0);
        let key_i = self.args[self.key_arg];
        let keys = cut[self.key_arg].as_ref();
        let mut parts: Vec<(usize, Vec<usize>)> = Vec::new();
        for row in 0..rows {
            let value = keys
                .and_then(|k| k.elems.get(row))
                .and_then(|e| e.value.as_deref());
            let key = match bind_param_key(self.table.key_type, &[value], 0, |_| is_binary(key_i)) {
                Ok(BindKey::Key(k)) => k,
                Ok(BindKey::Null) => {
                    return Err(ProxyError::Unsupported(format!(
                        "shard key {} must not be NULL (row {} of the arrays)",
                        self.table.what(),
                        row + 1
                    )))
                }
                Ok(BindKey::OffsetLess(_, e)) => return Err(e.into()),
                Err(e) => return Err(e),
            };
            let shard = match map.locate(&self.table, &key, true) {
                Located::Shard(s) => s,
                Located::Nowhere(why) => return Err(ProxyError::NoShard(why)),
                Located::Unavailable(why) => return Err(ProxyError::Unavailable(why)),
            };
            match parts.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, r)) => r.push(row),
                None => parts.push((shard, vec![row])),
            }
        }
        if parts.is_empty() {
            parts.push((map.default_shard, Vec::new()));
        }
        Ok(parts
            .into_iter()
            .map(|(shard, rows)| {
                let tail = self.tail(&rows, &cut, params, is_binary, formats);
                ArrayPart { shard, rows, tail }
            })
            .collect())
    }

    /// The Bind tail of one part: every parameter as sent, but each array argument cut to
    /// the part's rows.
    fn tail(
        &self,
        rows: &[usize],
        cut: &[Option<Elements<'_>>],
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
        formats: &[i16],
    ) -> Vec<u8> {
        let mut subs: Vec<Option<Vec<u8>>> = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let arg = self.args.iter().position(|&a| a == i);
            subs.push(arg.and_then(|k| cut[k].as_ref()).map(|e| {
                let mut value = Vec::new();
                let pick = rows.iter().map(|&r| e.elems.get(r).and_then(|x| x.raw));
                if is_binary(i) {
                    arrays::write_binary(e.elem_oid, pick, &mut value);
                } else {
                    arrays::write_text(pick, &mut value);
                }
                value
            }));
        }
        let values: Vec<Option<&[u8]>> = params
            .iter()
            .zip(&subs)
            .map(|(p, sub)| sub.as_deref().or(*p))
            .collect();
        let param_formats: Vec<i16> = (0..params.len()).map(|i| i16::from(is_binary(i))).collect();
        build::bind_tail_values(&param_formats, &values, formats)
    }
}

/// The split of `ins`, when it inserts into a sharded table, names its columns (the key
/// among them) and selects `* FROM unnest(<parameters>)`.
pub(super) fn for_insert(map: &ShardMap, ins: &protobuf::InsertStmt) -> Option<ArraySplit> {
    let rel = ins.relation.as_ref()?;
    let crate::sharding::shardmap::TableRule::Sharded(t) =
        map.table(&rel.schemaname, &rel.relname)?
    else {
        return None;
    };
    if ins.with_clause.is_some() {
        return None;
    }
    let pos = ins.cols.iter().position(
        |c| matches!(&c.node, Some(NodeEnum::ResTarget(r)) if r.name.eq_ignore_ascii_case(&t.key)),
    )?;
    match ins.select_stmt.as_ref().and_then(|s| s.node.as_ref()) {
        Some(NodeEnum::SelectStmt(sel)) if sel.values_lists.is_empty() => plan(t, pos, sel),
        _ => None,
    }
}
