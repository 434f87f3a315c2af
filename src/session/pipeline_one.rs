//! Running an extended-protocol pipeline on one shard: the statements the connection lacks
//! are prepared in front of their Binds, the replies relayed, and an exchange that met a
//! stale plan is run once more on freshly prepared statements.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::describe::ShapeCheck;
use super::extended::Op;
use super::relay::{Expect, Outcome, RelayError};
use super::{Prepared, Session, TxnStatus, SCRATCH_ITEMS};
use crate::error::ProxyError;
use crate::wire::protocol::build;

/// ParseComplete, made by the proxy for a statement the connection already has.
const PARSE_COMPLETE: Bytes = Bytes::from_static(&[b'1', 0, 0, 0, 4]);

impl Session {
    /// Runs operations on one shard.
    pub(super) async fn batch_one(
        &mut self,
        shard: usize,
        mut ops: Vec<Op>,
        cut: Option<&ProxyError>,
        sync: bool,
        detached: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let idx = match self.conn_for(shard).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        // A statement the backend kept from before a schema change made behind the proxy's
        // back fails once with a stale plan; outside a transaction block that failure undid
        // everything, so the exchange runs once more on freshly prepared statements — unless
        // part of the reply already reached the client, and only when the exchange itself
        // describes what it runs: the client then decodes the rows by the description it
        // gets now. A statement described earlier keeps its old shape in the client (asyncpg
        // decodes by it), so there the error goes to the client, as Postgres sends it.
        let describes = ops
            .iter()
            .any(|o| matches!(o, Op::DescribeStmt(_) | Op::Raw(_, Expect::Describe)));
        // A statement the client decodes by an earlier description, prepared again here:
        // its shape is checked first, and a changed one refused as Postgres refuses it.
        let mut own_cut = None;
        if cut.is_none() && !detached {
            match self.shape_check(idx, &ops).await? {
                ShapeCheck::Same => {}
                ShapeCheck::Changed(at) => {
                    // Outside a transaction block the pipeline is one implicit transaction
                    // the error undoes: what came before runs only if it writes nothing.
                    let writes = ops[..at]
                        .iter()
                        .any(|o| matches!(o, Op::Bind(p, ..) if p.plan.writes()));
                    let keep = if self.txn.status.is_idle() && writes {
                        0
                    } else {
                        at
                    };
                    self.forget_later_statements(&ops[keep..]);
                    ops.truncate(keep);
                    own_cut = Some(ProxyError::CachedPlanChanged);
                }
                ShapeCheck::Failed(e) => {
                    // The backend skips to Sync after the failed Parse (and a transaction
                    // block on it is aborted): nothing else of the pipeline runs.
                    self.forget_later_statements(&ops);
                    ops.clear();
                    own_cut = Some(e);
                }
            }
        }
        let cut = cut.or(own_cut.as_ref());
        let mut retry = sync && cut.is_none() && self.txn.status.is_idle() && describes;
        let out_mark = self.out.len();
        loop {
            let (outcome, ex, added) = self
                .batch_one_exchange(idx, &ops, cut, sync, detached)
                .await?;
            if retry && outcome.stale && !outcome.flushed && outcome.status == Some(TxnStatus::Idle)
            {
                retry = false;
                self.out.truncate(out_mark);
                if let Some(e) = self.fresh_statements(idx).await {
                    return Err(e);
                }
                if ex.capacity() <= SCRATCH_ITEMS {
                    self.scratch.expects = ex;
                }
                tracing::debug!(shard = %self.shard_name(shard), "stale prepared statement: prepared again and run once more");
                continue;
            }
            if ex.capacity() <= SCRATCH_ITEMS {
                self.scratch.expects = ex;
            }
            ops.clear();
            if ops.capacity() <= SCRATCH_ITEMS {
                self.scratch.ops = ops;
            }
            // After an error at a Flush the backend discards everything until a Sync: end its
            // exchange now (the client's messages until its own Sync are discarded by the proxy).
            let mut outcome = outcome;
            if own_cut.is_some() {
                // The error the proxy put in the exchange fails it like a shard's error.
                outcome.error = true;
            }
            if cut.is_some() && sync && outcome.status == Some(TxnStatus::InBlock) {
                // The shard's block is fine, the client's is failed (see below).
                outcome.status = Some(TxnStatus::Failed);
            }
            let open = outcome.error && !sync && !detached && cut.is_none();
            if outcome.error && (open || !added.is_empty()) {
                self.forget_statements(idx, &added, open).await?;
            }
            return Ok(Ok(outcome));
        }
    }

    /// Drops every statement the proxy kept on connection `idx` (`DEALLOCATE ALL`), so the
    /// next use prepares them again; `Some` when the backend failed. (`DEALLOCATE` is not
    /// transactional: a ROLLBACK does not bring the statements back.)
    pub(super) async fn fresh_statements(&mut self, idx: usize) -> Option<RelayError> {
        let shard = self.conns[idx].shard;
        let epoch = self
            .shared
            .schema_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        let conn = &mut self.conns[idx];
        match conn.run_simple("DEALLOCATE ALL").await {
            Ok((None, _)) => {
                conn.prepared.clear();
                conn.prepared_epoch = epoch;
                None
            }
            // Refused (an aborted transaction block): they stay, stale, for the next try.
            Ok((Some(_), _)) => None,
            Err(error) => Some(RelayError::Backend {
                shard,
                error,
                forwarded: false,
            }),
        }
    }

    /// Forgets the statements that Parse messages among `ops` named: the pipeline stops
    /// before them, so (as in Postgres) they were never created.
    fn forget_later_statements(&mut self, ops: &[Op]) {
        for op in ops {
            if let Op::Parse(q) = op {
                self.stmts.retain(|_, s| !Arc::ptr_eq(s, q));
            }
        }
    }

    /// One exchange of [`Session::batch_one`] on connection `idx`: the messages of `ops`
    /// (Parses injected where the connection lacks a statement), relayed. Returns the
    /// outcome, the (spent) expectation list for reuse, and the statements it prepared.
    async fn batch_one_exchange(
        &mut self,
        idx: usize,
        ops: &[Op],
        cut: Option<&ProxyError>,
        sync: bool,
        detached: bool,
    ) -> Result<(Outcome, VecDeque<Expect>, Vec<Arc<Prepared>>), RelayError> {
        let shard = self.conns[idx].shard;
        let mut msg = self.scratch.take_msg();
        let mut ex: VecDeque<Expect> = std::mem::take(&mut self.scratch.expects);
        ex.clear();
        let mut added: Vec<Arc<Prepared>> = Vec::new();
        {
            let conn = &mut self.conns[idx];
            let mut ensure =
                |p: &Arc<Prepared>,
                 msg: &mut BytesMut,
                 ex: &mut VecDeque<Expect>,
                 conn: &mut crate::backend::pool::PooledConn| {
                    if conn.prepared.insert(p.name_hash) {
                        build::parse(msg, &p.backend_name, &p.sql, &p.types);
                        ex.push_back(Expect::Parse { swallow: true });
                        added.push(p.clone());
                    }
                };
            for op in ops {
                match op {
                    Op::Parse(p) => {
                        if conn.prepared.contains(&p.name_hash) {
                            ex.push_back(Expect::Local(PARSE_COMPLETE));
                        } else {
                            ensure(p, &mut msg, &mut ex, conn);
                            // This Parse answers the client's own Parse.
                            if let Some(Expect::Parse { swallow }) = ex.back_mut() {
                                *swallow = false;
                            }
                        }
                    }
                    Op::Bind(p, f, tail) => {
                        ensure(p, &mut msg, &mut ex, conn);
                        let body = f.body();
                        let portal_end = body.iter().position(|&b| b == 0).unwrap_or(0);
                        let portal = std::str::from_utf8(&body[..portal_end]).unwrap_or("");
                        build::bind_renamed(&mut msg, portal, &p.backend_name, &body[*tail..]);
                        ex.push_back(Expect::Bind);
                    }
                    Op::DescribeStmt(p) => {
                        ensure(p, &mut msg, &mut ex, conn);
                        build::target(&mut msg, b'D', b'S', &p.backend_name);
                        ex.push_back(Expect::DescribeStmt(p.clone()));
                    }
                    Op::Raw(f, e) => {
                        msg.extend_from_slice(&f.raw);
                        ex.push_back(e.clone());
                    }
                    Op::Local(b) => ex.push_back(Expect::Local(b.clone())),
                    Op::Gather(f, _) => {
                        msg.extend_from_slice(&f.raw);
                        ex.push_back(Expect::Execute);
                    }
                }
            }
        }
        if let Some(e) = cut {
            let mut b = BytesMut::new();
            let text = e.to_string();
            build::error_fields(&mut b, "ERROR", e.sqlstate(), text.as_bytes(), e.fields());
            ex.push_back(Expect::Local(b.freeze()));
            self.txn.fail();
        }
        // An error the proxy adds inside a transaction block fails the block: the client's
        // ReadyForQuery says 'E' although the shard's block is fine.
        let failed_block = cut.is_some() && self.txn.status.is_open();
        if sync && !failed_block {
            build::empty(&mut msg, b'S');
            ex.push_back(Expect::Sync);
        } else if sync || cut.is_some() || detached {
            // The client has not sent Sync yet: end the backend's exchange quietly; the
            // client's own Sync (after skipped messages) gets the ReadyForQuery.
            build::empty(&mut msg, b'S');
            ex.push_back(Expect::Query { hide_ready: true });
        } else {
            build::empty(&mut msg, b'H');
        }
        if let Err(error) = self.conns[idx].write_all(&msg).await {
            return Err(RelayError::Backend {
                shard,
                error,
                forwarded: false,
            });
        }
        self.scratch.put_msg(msg);
        let outcome = self.relay_one(idx, &mut ex, false).await?;
        if sync && failed_block {
            self.push_ready();
        }
        Ok((outcome, ex, added))
    }

    /// After an error the proxy cannot tell which injected Parses succeeded: close them all
    /// (Close of a missing statement is not an error) so the next use re-prepares. With
    /// `open` the backend is still inside the failed exchange (an error at a Flush): a Sync
    /// ends it first, or it would discard the Closes and the wait would never end.
    async fn forget_statements(
        &mut self,
        idx: usize,
        added: &[Arc<Prepared>],
        open: bool,
    ) -> Result<(), RelayError> {
        let shard = self.conns[idx].shard;
        let mut msg = BytesMut::new();
        let mut ex = VecDeque::new();
        if open {
            build::empty(&mut msg, b'S');
            ex.push_back(Expect::Query { hide_ready: true });
        }
        for p in added {
            build::target(&mut msg, b'C', b'S', &p.backend_name);
            self.conns[idx].prepared.remove(&p.name_hash);
            ex.push_back(Expect::Close);
        }
        build::empty(&mut msg, b'S');
        ex.push_back(Expect::Sync);
        if let Err(error) = self.conns[idx].write_all(&msg).await {
            return Err(RelayError::Backend {
                shard,
                error,
                forwarded: true,
            });
        }
        // The replies are the proxy's, not the client's.
        self.relay_one(idx, &mut ex, true).await.map(|_| ())
    }
}
