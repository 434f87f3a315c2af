//! The pipelines the proxy runs itself instead of relaying them (see
//! [`Session::special_batch`]): a `COPY … FROM STDIN` sent through the extended protocol,
//! outside a transaction an all-or-nothing write on several shards, and a multi-row INSERT
//! split by shard (inside a transaction block too: its parts join the transaction).

use std::sync::Arc;

use super::multiwrite::{ShardWrite, WriteProtocol};
use super::relay::{Outcome, RelayError};
use super::{Prepared, Session, SessionEnd, TxnStatus};
use crate::routing::router::{RouteSpec, StmtKind};
use crate::sharding::shardset::ShardSet;
use crate::wire::protocol::{build, BindMsg, Frame, ParseMsg};

/// A pipeline the proxy runs itself (see [`Session::special_batch`]).
pub(super) struct Special {
    /// The statement bound.
    pub stmt: Arc<Prepared>,
    /// Set when the pipeline parsed it (as the unnamed statement).
    parsed: Option<Arc<Prepared>>,
    /// The client's Bind message.
    pub bind: Frame,
    /// Where its parameters and result formats start in the body.
    tail_offset: usize,
    /// Whether the portal is described.
    pub describe: bool,
    /// Whether the client closes the portal after its Execute (sqlx does).
    pub close: bool,
    kind: SpecialKind,
}

enum SpecialKind {
    /// COPY FROM STDIN into a sharded or reference table.
    Copy(Arc<crate::routing::copyplan::CopyPlan>),
    /// An all-or-nothing write on several shards.
    Write {
        work: Vec<ShardWrite>,
        replicated: bool,
    },
    /// Refused before anything ran (e.g. a NULL key among bound arrays).
    Fail(crate::error::ProxyError),
    /// A statement on a cursor the proxy keeps, or a DECLARE of one (see [`super::cursors`]).
    Cursor(crate::routing::router::CursorCmd),
}

impl Session {
    /// A pipeline the proxy runs itself rather than relaying it: [Parse] + Bind
    /// [+ Describe portal] + Execute + Sync of one statement that is
    /// - a `COPY … FROM STDIN` into a sharded or reference table (what drivers send for COPY);
    /// - outside a transaction, a write on several shards (a reference-table write, a keyless
    ///   UPDATE/DELETE, an INSERT … SELECT per shard, a multi-row INSERT whose constant keys
    ///   span shards): an all-or-nothing write.
    pub(super) fn special_batch(&self, frames: &[Frame]) -> Option<Special> {
        let (parse, rest) = match frames.split_first()? {
            (p, rest) if p.tag == b'P' => (Some(p), rest),
            _ => (None, frames),
        };
        let (bind, rest) = rest.split_first()?;
        // (sqlx closes the unnamed portal before Sync.)
        let closes = |c: &Frame| c.tag == b'C' && c.body() == b"P\0";
        let (describe, close) = match rest {
            [e] if e.tag == b'E' => (false, false),
            [d, e] if d.tag == b'D' && e.tag == b'E' => (true, false),
            [e, c] if e.tag == b'E' && closes(c) => (false, true),
            [d, e, c] if d.tag == b'D' && e.tag == b'E' && closes(c) => (true, true),
            _ => return None,
        };
        if bind.tag != b'B' {
            return None;
        }
        // Most pipelines are not special: look at the plan first, and decode the Bind and
        // build a statement only for one that is. A Parse of the session's unnamed statement
        // again (drivers re-send it before every execution) is recognised without decoding.
        let (existing, parsed) = match parse {
            Some(p) => match self
                .stmts
                .get("")
                .filter(|s| s.is_unnamed_parse(p.body()))
                .or_else(|| self.peek_pending(p.body()))
            {
                Some(s) => (Some(s), None),
                None => {
                    let pm = ParseMsg::decode(p.body()).ok()?;
                    // Only an unnamed statement, bound right away, is taken over here.
                    if !pm.name.is_empty() {
                        return None;
                    }
                    (None, Some(pm))
                }
            },
            None => {
                let m = BindMsg::decode(bind.body()).ok()?;
                (Some(self.stmts.get(m.statement)?), None)
            }
        };
        let plan = match (existing, &parsed) {
            (Some(p), _) => p.plan.clone(),
            (None, Some(pm)) => self.topo.cache.get(&self.topo.map, pm.query).ok()?,
            (None, None) => return None,
        };
        let st = plan.stmts.first()?;
        if plan.stmts.len() != 1 {
            return None;
        }
        // A split INSERT also runs inside a transaction block: its parts join it.
        let in_block = self.txn.status == TxnStatus::InBlock && !self.txn.failed;
        let cursor = st.cursor().filter(|c| self.cursor_is_special(c, &st.route));
        let may_be_special = cursor.is_some()
            || st.copy().is_some()
            || ((in_block || self.txn.status.is_idle()) && st.arrays().is_some())
            || (in_block && st.split().is_some())
            || (self.txn.status.is_idle()
                && (st.split().is_some()
                    || (st.kind == StmtKind::Write
                        && matches!(st.route, RouteSpec::All | RouteSpec::Subset(_)))));
        if !may_be_special {
            return None;
        }
        let m = BindMsg::decode(bind.body()).ok()?;
        if parse.is_some() && !m.statement.is_empty() {
            return None;
        }
        let declared;
        let types: &[u32] = match (existing, &parsed) {
            (Some(p), _) => &p.types,
            (None, Some(pm)) => {
                declared = pm.param_types();
                &declared
            }
            (None, None) => return None,
        };
        let sql: &str = match (existing, &parsed) {
            (Some(p), _) => &p.sql,
            (None, Some(pm)) => pm.query,
            (None, None) => return None,
        };
        if close && st.arrays().is_none() && cursor.is_none() {
            return None;
        }
        let kind = if let Some(c) = cursor {
            SpecialKind::Cursor(c.clone())
        } else if let Some(copy) = st.copy() {
            SpecialKind::Copy(copy.clone())
        } else if let Some(arr) = st.arrays() {
            let params = m.params();
            let is_binary = |i: usize| m.is_binary(i);
            match arr.split(&self.topo.map, &params, &is_binary, &m.result_formats()) {
                Ok(parts) => SpecialKind::Write {
                    work: parts
                        .into_iter()
                        .map(|p| ShardWrite {
                            shard: p.shard,
                            sql: sql.to_string(),
                            bind: Some((types.to_vec(), p.tail)),
                            rows: p.rows,
                        })
                        .collect(),
                    replicated: false,
                },
                Err(e) => SpecialKind::Fail(e),
            }
        } else if let Some(split) = st.split() {
            let params = m.params();
            let is_binary = |i: usize| m.is_binary(i);
            // Keys are read in UTF-8; the shards get the values as sent.
            let utf8 = self.params_utf8(&params, &is_binary);
            let keyed: Vec<Option<&[u8]>> = match &utf8 {
                Some(c) => c.iter().map(|v| v.as_deref()).collect(),
                None => params.clone(),
            };
            let parts = split
                .statements(&self.topo.map, Some((&keyed, &is_binary)))
                .ok()?;
            if parts.len() < 2 {
                return None;
            }
            let formats = m.result_formats();
            SpecialKind::Write {
                work: parts
                    .into_iter()
                    .map(|p| {
                        let types = p
                            .params
                            .iter()
                            .map(|&i| types.get(i).copied().unwrap_or(0))
                            .collect();
                        let tail = build::bind_tail(&p.params, &params, &is_binary, &formats);
                        ShardWrite {
                            shard: p.shard,
                            sql: p.sql,
                            bind: Some((types, tail)),
                            rows: p.rows,
                        }
                    })
                    .collect(),
                replicated: false,
            }
        } else if self.txn.status.is_open() {
            return None;
        } else if st.kind == StmtKind::Write {
            // A write whose route names several shards without parameters.
            let set = match &st.route {
                RouteSpec::All => ShardSet::all(self.topo.map.shards.len()),
                RouteSpec::Subset(set) => *set,
                _ => return None,
            };
            if set.len() < 2 {
                return None;
            }
            SpecialKind::Write {
                work: set
                    .iter()
                    .map(|shard| ShardWrite {
                        shard,
                        sql: sql.to_string(),
                        bind: None,
                        rows: Vec::new(),
                    })
                    .collect(),
                replicated: st.replicated,
            }
        } else {
            return None;
        };
        let stmt = match (existing, parsed) {
            (Some(p), _) => p.clone(),
            (None, Some(pm)) => Arc::new(Prepared::new(pm.query, types.to_vec(), plan.clone())),
            (None, None) => return None,
        };
        Some(Special {
            parsed: parse.is_some().then(|| stmt.clone()),
            stmt,
            bind: bind.clone(),
            tail_offset: m.tail_offset,
            describe,
            close,
            kind,
        })
    }

    /// Runs a [`Session::special_batch`] pipeline. BindComplete (and NoData for a COPY)
    /// come from the proxy. After a COPY that started, the Sync that came before the data is
    /// ignored, as Postgres does: ReadyForQuery answers the Sync the client sends after
    /// CopyDone/CopyFail (libpq and tokio-postgres send one).
    pub(super) async fn run_special(&mut self, sp: Special) -> Result<(), SessionEnd> {
        if let Some(p) = &sp.parsed {
            self.stmts.insert(String::new(), p.clone());
            build::empty(&mut self.out, b'1');
        }
        build::empty(&mut self.out, b'2');
        let (result, started) = match &sp.kind {
            SpecialKind::Copy(plan) => {
                if sp.describe {
                    build::empty(&mut self.out, b'n');
                }
                match self.copy_in_split(plan, &sp.stmt.sql, true).await {
                    Ok((Ok(_), _)) => (Ok(Ok(Outcome::default())), true),
                    Ok((r, started)) => (Ok(r), started),
                    Err(e) => (Err(e), true),
                }
            }
            SpecialKind::Write { work, replicated } => {
                let in_txn = self.txn.status.is_open();
                if in_txn {
                    // The parts join the client's transaction (two-phase commit at COMMIT).
                    let mut set = ShardSet::default();
                    for w in work {
                        set.add(w.shard);
                    }
                    let target = self.target_of(set);
                    if let Err(e) = self.check_write(target, true, true) {
                        self.txn.fail();
                        self.push_error(&e);
                        self.push_ready();
                        return Ok(());
                    }
                }
                let protocol = WriteProtocol::Extended {
                    types: &sp.stmt.types,
                    bind_tail: sp.bind.body().get(sp.tail_offset..).unwrap_or(&[]),
                    describe: sp.describe,
                };
                let r = self
                    .multi_write(work, protocol, *replicated, sp.close)
                    .await;
                if in_txn && !matches!(r, Ok(Ok(ref o)) if !o.error) {
                    // A part failed: the client's transaction is aborted, as in Postgres.
                    self.txn.fail();
                }
                if sp.close {
                    // The client's Close of the portal, answered after the statement's reply
                    // (after an error Postgres skips it), then the ReadyForQuery kept for it.
                    if matches!(r, Ok(Ok(ref o)) if !o.error) {
                        build::empty(&mut self.out, b'3');
                    }
                    if matches!(r, Ok(Ok(_))) {
                        self.push_ready();
                    }
                }
                (r, false)
            }
            SpecialKind::Fail(e) => {
                self.push_error(e);
                self.push_ready();
                self.release_if_idle(false);
                return Ok(());
            }
            SpecialKind::Cursor(cmd) => return self.cursor_special(&sp, cmd).await,
        };
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.push_error(&e);
                if !started {
                    self.push_ready();
                }
            }
            Err(RelayError::Client(e)) => return Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
                if !started {
                    self.push_ready();
                }
            }
        }
        self.release_if_idle(false);
        Ok(())
    }
}
