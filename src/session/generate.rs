//! INSERTs the proxy completes with generated values before they run (see
//! [`crate::routing::router::Generate`]).
//!
//! - Simple protocol: the values are written into the text as constants
//!   ([`Session::complete_text`]), and the completed text is planned and run.
//! - Extended protocol: the Parse is completed with Bind parameters `$n+1…` after the
//!   client's `n` ([`Session::generated_statement`]); each Bind of it gets fresh values
//!   appended, in text format ([`Session::complete_binds`], before the pipeline is
//!   looked at, so every path sees the completed Bind). A Describe of the statement shows
//!   the client its own parameters only ([`client_param_description`]).
//!
//! The values come from the proxy's allocator ([`crate::backend::ids`]); the last one of
//! each sequence is remembered for `currval`/`lastval`-style questions (`SHOW` in the admin
//! console shows the allocator).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::prepared::GenBind;
use super::{Prepared, Session};
use crate::backend::ids::GenTarget;
use crate::error::ProxyError;
use crate::routing::literals::Scanned;
use crate::routing::router::{max_param, Generate, Plan, SlotText};
use crate::sharding::catalog::{TableEntry, ABSENT_FOR};
use crate::wire::protocol::{build, BindMsg, Frame, ParseMsg};

/// Most statements a pipeline may leave pending.
const MAX_PENDING: usize = 64;

impl Session {
    /// `sql` with every INSERT its plan completes filled in with fresh values.
    pub(super) async fn complete_text(
        &mut self,
        plan: &Plan,
        sql: &str,
    ) -> Result<String, ProxyError> {
        let mut out = String::with_capacity(sql.len() + 32);
        let mut at = 0;
        let whole = plan.stmts.len() == 1;
        for st in &plan.stmts {
            let Some(g) = st.generate() else { continue };
            // A plan shared by a literal template has the spans of the text it was made
            // for: one statement is the whole text.
            let (a, b) = if whole { (0, sql.len()) } else { st.span };
            out.push_str(sql.get(at..a).unwrap_or(""));
            let values = self.take_values(g).await?;
            g.render(
                sql.get(a..b).unwrap_or(""),
                SlotText::Values(&values),
                &mut out,
            )?;
            at = b;
        }
        out.push_str(sql.get(at..).unwrap_or(""));
        Ok(out)
    }

    /// Fresh values for one execution of `g`, in the order its slots take them.
    async fn take_values(&mut self, g: &Generate) -> Result<Vec<i64>, ProxyError> {
        if let [column] = g.columns.as_slice() {
            // One generated column (the usual case): its values in slot order as they come.
            let n = g.slot_columns().count();
            let target = GenTarget {
                schema: &g.schema,
                table: &g.table,
                column,
            };
            let mut out = Vec::with_capacity(n);
            self.shared
                .ids
                .take(&self.topo.map, &target, n, &mut out)
                .await?;
            if let Some(&v) = out.last() {
                self.generated.note(&column.sequence, v);
            }
            return Ok(out);
        }
        let mut per_col: Vec<Vec<i64>> = vec![Vec::new(); g.columns.len()];
        for (c, n) in g.counts() {
            let target = GenTarget {
                schema: &g.schema,
                table: &g.table,
                column: &g.columns[c],
            };
            let mut got = Vec::with_capacity(n);
            self.shared
                .ids
                .take(&self.topo.map, &target, n, &mut got)
                .await?;
            per_col[c] = got;
        }
        let mut next = vec![0usize; per_col.len()];
        let mut out = Vec::new();
        for c in g.slot_columns() {
            let v = per_col
                .get(c)
                .and_then(|vals| vals.get(next[c]))
                .copied()
                .ok_or_else(|| ProxyError::Internal("too few generated values".into()))?;
            next[c] += 1;
            out.push(v);
            // As nextval would: currval/lastval follow the values in the order given.
            self.generated.note(&g.columns[c].sequence, v);
        }
        Ok(out)
    }

    /// The prepared statement for a Parse whose plan completes it: the completed text, its
    /// plan, and how it is bound. `body` is the client's Parse body.
    pub(super) fn generated_statement(
        &self,
        body: &[u8],
        m: &ParseMsg<'_>,
        plan: &Arc<Plan>,
    ) -> Result<Prepared, ProxyError> {
        let types = m.param_types();
        let mut text = m.query.to_string();
        let mut plan = plan.clone();
        let mut gen = None;
        // An INSERT … SELECT … FROM (VALUES …) is made an INSERT … VALUES first, which may
        // then need values: at most two rounds.
        for _ in 0..2 {
            let Some(g) = plan.stmts.first().and_then(|s| s.generate()).cloned() else {
                break;
            };
            let n = max_param(&text).max(types.len());
            let mut next = String::with_capacity(text.len() + 32);
            g.render(&text, SlotText::Params(n + 1), &mut next)?;
            if !g.counts().is_empty() {
                gen = Some(Arc::new(GenBind {
                    plan: g,
                    client_params: n,
                }));
            }
            text = next;
            plan = self.topo.cache.get(&self.topo.map, &text)?;
        }
        if plan.generates() {
            return Err(ProxyError::Internal(
                "a completed INSERT still needs values".into(),
            ));
        }
        let mut p = Prepared::new(&text, types, plan);
        p.unnamed_parse = body.into();
        p.gen = gen;
        Ok(p)
    }

    /// Looks up the tables `plan` INSERTs into that the catalog does not know (created
    /// behind the proxy's back, or in this session's open transaction): the shards'
    /// catalogs are read again; a table still missing there but created by this session's
    /// transaction is read through the session's own connection (which sees it). Afterwards
    /// the plan must be made again. Errors: a table that exists nowhere (`42P01`, as
    /// Postgres says; looked for again after [`ABSENT_FOR`]), and shards that could not be
    /// read (`57P03`) — never the shards' own sequences.
    pub(super) async fn learn_tables(&mut self, plan: &Plan) -> Result<(), ProxyError> {
        let map = self.topo.map.clone();
        let wanted: Vec<(String, String)> = plan
            .unknown_tables()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect();
        let _one_at_a_time = map.catalog.lookups.lock().await;
        let known = |s: &str, t: &str| match map.catalog.table(s, t) {
            Some(TableEntry::Absent(at)) => at.elapsed() < ABSENT_FOR,
            other => other.is_some(),
        };
        if !wanted.iter().all(|(s, t)| known(s, t)) {
            if !crate::sharding::catalog_read::refresh(&map).await {
                return Err(ProxyError::Unavailable(format!(
                    "the columns of table {} could not be read from the shards (needed to give its generated columns values unique across shards); retry when the shards are reachable",
                    wanted.first().map(|w| w.1.as_str()).unwrap_or("")
                )));
            }
            for (schema, table) in &wanted {
                if map.catalog.table(schema, table).is_some() {
                    continue;
                }
                let mut entry = TableEntry::Absent(std::time::Instant::now());
                if self.txn.status.is_open() && self.txn.ddl {
                    // Uncommitted DDL of this transaction: read it where it is visible.
                    if let Ok(idx) = self.conn_for(map.default_shard).await {
                        let sql = crate::sharding::catalog_read::table_sql(schema, table);
                        if let Ok(Some(v)) = self.conns[idx].query_value(&sql).await {
                            if let Some(cols) = crate::sharding::catalog_read::parse_table(&v) {
                                tracing::debug!(%table, "columns read in the client's transaction");
                                entry = TableEntry::Columns(Arc::new(cols));
                            }
                        }
                    }
                }
                map.catalog.install_one(schema, table, entry);
            }
        }
        match wanted
            .iter()
            .find(|(s, t)| matches!(map.catalog.table(s, t), Some(TableEntry::Absent(_))))
        {
            Some((_, table)) => Err(ProxyError::Backend {
                code: "42P01".into(),
                message: format!("relation \"{table}\" does not exist"),
            }),
            None => Ok(()),
        }
    }

    /// A simple query whose plan completes INSERTs, completed (see [`Session::complete_text`]),
    /// with its plan and literal scan.
    pub(super) async fn completed_query(
        &mut self,
        plan: &Plan,
        sql: &str,
    ) -> Result<(String, Arc<Plan>, Option<Scanned>), ProxyError> {
        let mut text = self.complete_text(plan, sql).await?;
        for _ in 0..2 {
            let (p, scanned) = self.topo.cache.get_simple(&self.topo.map, &text)?;
            if !p.generates() {
                return Ok((text, p, scanned));
            }
            text = self.complete_text(&p, &text).await?;
        }
        Err(ProxyError::Internal(
            "a completed INSERT still needs values".into(),
        ))
    }

    /// The pending completed statement of a Parse `body`, if the pipeline's look-ahead made
    /// one (see [`Session::complete_binds`]).
    pub(super) fn take_pending(&mut self, body: &[u8]) -> Option<Arc<Prepared>> {
        let i = self
            .generated
            .pending
            .iter()
            .position(|(b, _)| **b == *body)?;
        Some(self.generated.pending.swap_remove(i).1)
    }

    /// The pending completed statement of a Parse `body`, left in place.
    pub(super) fn peek_pending(&self, body: &[u8]) -> Option<&Arc<Prepared>> {
        self.generated
            .pending
            .iter()
            .find(|(b, _)| **b == *body)
            .map(|(_, p)| p)
    }

    /// Looks ahead through a pipeline before it runs: a Parse the proxy completes gets its
    /// statement made now (kept pending for the Parse), and every Bind of a completed
    /// statement is replaced by one with fresh values appended. Errors: what the Bind would
    /// have failed with (the pipeline is cut there, as Postgres would).
    pub(super) async fn complete_binds(&mut self, frames: &mut [Frame]) -> Result<(), ProxyError> {
        self.generated.pending.clear();
        if !self.generated.any {
            // Nothing completed yet: only a Parse of a new statement may need a look (a
            // re-sent unnamed one is recognised with one comparison, without allocating).
            let known = |f: &Frame| {
                self.stmts
                    .get("")
                    .is_some_and(|p| p.gen.is_none() && p.is_unnamed_parse(f.body()))
            };
            if frames.iter().all(|f| f.tag != b'P' || known(f)) {
                return Ok(());
            }
        }
        // Statements this pipeline parses, by name: (name, completed statement if any).
        let mut parsed: Vec<(String, Option<Arc<Prepared>>)> = Vec::new();
        for f in frames.iter_mut() {
            match f.tag {
                b'P' => {
                    if let Some(p) = self.stmts.get("").filter(|p| p.is_unnamed_parse(f.body())) {
                        let p = p.gen.is_some().then(|| p.clone());
                        parsed.push((String::new(), p));
                        continue;
                    }
                    let Ok(m) = ParseMsg::decode(f.body()) else {
                        return Ok(());
                    };
                    let Ok(mut plan) = self.topo.cache.get(&self.topo.map, m.query) else {
                        return Ok(());
                    };
                    if plan.unknown_tables().next().is_some() {
                        self.learn_tables(&plan).await?;
                        let Ok(again) = self.topo.cache.get(&self.topo.map, m.query) else {
                            return Ok(());
                        };
                        plan = again;
                    }
                    let made = if plan.stmts.len() == 1 && plan.generates() {
                        let p = Arc::new(self.generated_statement(f.body(), &m, &plan)?);
                        if self.generated.pending.len() < MAX_PENDING {
                            self.generated.pending.push((f.body().into(), p.clone()));
                        }
                        Some(p)
                    } else {
                        None
                    };
                    parsed.push((m.name.to_string(), made));
                }
                b'B' => {
                    let Ok(m) = BindMsg::decode(f.body()) else {
                        return Ok(());
                    };
                    let stmt = match parsed.iter().rev().find(|(n, _)| n == m.statement) {
                        Some((_, p)) => p.clone(),
                        None => self
                            .stmts
                            .get(m.statement)
                            .filter(|p| p.gen.is_some())
                            .cloned(),
                    };
                    let Some(gb) = stmt.as_ref().and_then(|p| p.gen.clone()) else {
                        continue;
                    };
                    let completed = self.complete_bind(&m, &gb).await?;
                    *f = completed;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A Bind of a completed statement with fresh values appended (text format).
    async fn complete_bind(&mut self, m: &BindMsg<'_>, gb: &GenBind) -> Result<Frame, ProxyError> {
        if m.n_params != gb.client_params {
            return Err(ProxyError::Protocol(format!(
                "bind message supplies {} parameters, but prepared statement \"{}\" requires {}",
                m.n_params, m.statement, gb.client_params
            )));
        }
        let values = self.take_values(&gb.plan).await?;
        let texts: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let extra: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        let mut b = BytesMut::with_capacity(64 + (m.n_params + extra.len()) * 16);
        m.with_params(|params| {
            build::bind_with_extra(
                &mut b,
                m.portal,
                m.statement,
                params,
                &|i| m.is_binary(i),
                &extra,
                &m.result_formats(),
            )
        });
        Ok(Frame {
            tag: b'B',
            raw: b.freeze(),
        })
    }
}

/// The ParameterDescription the client sees for `p` (its own parameters only), when the
/// proxy completed it; `None` to forward the shard's as it is.
pub(super) fn client_param_description(p: &Prepared, body: &[u8]) -> Option<BytesMut> {
    let gb = p.gen.as_ref()?;
    let n = gb.client_params;
    let oids = body.get(2..2 + n * 4)?;
    let mut out = BytesMut::with_capacity(7 + n * 4);
    out.put_u8(b't');
    out.put_i32((6 + n * 4) as i32);
    out.put_i16(n as i16);
    out.put_slice(oids);
    Some(out)
}
