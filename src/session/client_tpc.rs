//! The client's own two-phase commit: `PREPARE TRANSACTION 'gid'`, `COMMIT PREPARED 'gid'`
//! and `ROLLBACK PREPARED 'gid'` (psycopg's `tpc_*`, SQLAlchemy's `twophase=True`, JDBC
//! XA), mapped onto every shard the transaction touched; the durable side is
//! [`crate::backend::twophase_client`].
//!
//! `PREPARE TRANSACTION` answers as Postgres does: outside a block a warning and
//! `ROLLBACK`; in a failed block it rolls back (`ROLLBACK`); else the record is written
//! (`preparing`), every participant is prepared (the default shard's part, under the
//! client's exact gid, last), and the record becomes `prepared`. Any failure before that
//! rolls every participant back, drops the record and reports the error; the session is
//! then outside a transaction block, as in Postgres.

use std::time::Duration;

use super::txn::Step;
use super::{Session, SessionEnd, Txn};
use crate::backend::twophase::GID_PREFIX;
use crate::backend::twophase_client::{self as client, ClientLog, Part, TpcError};
use crate::error::ProxyError;
use crate::routing::router::{StmtKind, TpcOp};
use crate::wire::protocol::build;

/// Longest wait at a client's first two-phase command for the startup check of the shards.
const PROBE_WAIT: Duration = Duration::from_secs(10);

impl Session {
    /// A client's two-phase command; queues its reply (and ReadyForQuery with `ready`).
    /// Returns whether it succeeded.
    pub(super) async fn two_phase(&mut self, op: &TpcOp, ready: bool) -> Result<bool, SessionEnd> {
        let ok = match op {
            TpcOp::Prepare(gid) => self.prepare_transaction(gid).await?,
            TpcOp::CommitPrepared(gid) => self.finish_prepared(gid, true).await,
            TpcOp::RollbackPrepared(gid) => self.finish_prepared(gid, false).await,
        };
        if ready {
            self.push_ready();
        }
        Ok(ok)
    }

    /// `PREPARE TRANSACTION 'gid'` (see the module docs).
    async fn prepare_transaction(&mut self, gid: &str) -> Result<bool, SessionEnd> {
        if self.txn.status.is_idle() {
            self.warn_no_transaction();
            build::command_complete(&mut self.out, "ROLLBACK");
            return Ok(true);
        }
        if self.txn.failed {
            return self.end_transaction(false, "ROLLBACK", false).await;
        }
        if let Err(e) = self.may_prepare(gid).await {
            self.abandon(e).await;
            return Ok(false);
        }
        let map = self.topo.map.clone();
        let log_shard = map.default_shard;
        // The held connections in the block, the default shard's last.
        let mut idxs: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].ready_status != b'I')
            .collect();
        idxs.sort_by_key(|&i| self.conns[i].shard == log_shard);
        let nonce: u128 = rand::random();
        let mut parts: Vec<Part> = idxs
            .iter()
            .map(|&i| {
                let shard = self.conns[i].shard;
                let gid = if shard == log_shard {
                    gid.to_string()
                } else {
                    client::derived_gid(nonce, shard)
                };
                Part { shard, gid }
            })
            .collect();
        let marker = !parts.iter().any(|p| p.shard == log_shard);
        if marker {
            parts.push(Part {
                shard: log_shard,
                gid: gid.to_string(),
            });
        }
        let log = match ClientLog::connect(&map).await {
            Ok(l) => l,
            Err(e) => {
                self.abandon(e.into_proxy()).await;
                return Ok(false);
            }
        };
        if let Err(e) = log.begin(&map, gid, &parts, &self.user).await {
            self.abandon(e.into_proxy()).await;
            return Ok(false);
        }
        // Prepared participants, by index into `idxs` (the marker is `idxs.len()`).
        let mut prepared: Vec<usize> = Vec::with_capacity(parts.len());
        let mut failure: Option<ProxyError> = None;
        for (k, &ci) in idxs.iter().enumerate() {
            let shard = self.conns[ci].shard;
            match self.step(ci, &client::prepare_sql(&parts[k].gid)).await {
                Ok(r) if r.is("PREPARE TRANSACTION") => prepared.push(k),
                Ok(r) => {
                    let (code, message) = r.error.unwrap_or_else(|| {
                        ("40000".into(), format!("the transaction was rolled back on shard {} before it could be prepared", self.shard_name(shard)))
                    });
                    failure = Some(ProxyError::Backend { code, message });
                }
                Err(error) => failure = Some(self.lost(shard, &error)),
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() && marker {
            match log.prepare_marker(gid).await {
                Ok(()) => prepared.push(idxs.len()),
                Err(e) => failure = Some(e.into_proxy()),
            }
        }
        let e = match failure {
            Some(e) => e,
            None => match log.mark_prepared(gid).await {
                Ok(true) => {
                    self.end_prepared(true);
                    return Ok(true);
                }
                Ok(false) => ProxyError::Backend {
                    code: "40000".into(),
                    message: format!(
                        "transaction \"{gid}\" was rolled back by recovery before it was prepared"
                    ),
                },
                // Its outcome is unknown: `preparing` (recovery rolls it back) or
                // `prepared` (listed; the client decides). Nothing is undone.
                Err(e) => {
                    self.end_prepared(false);
                    self.push_error(&ProxyError::Backend {
                        code: "08007".into(),
                        message: format!("transaction resolution unknown: recording transaction \"{gid}\" as prepared failed ({e}); it is listed in pg_prepared_xacts if it was recorded, else recovery rolls it back"),
                    });
                    return Ok(false);
                }
            },
        };
        let undone = self.undo_prepare(&log, &idxs, &parts, &prepared).await;
        if undone {
            // Nothing stays prepared: the record can go (else recovery rolls it back).
            let _ = log.forget(gid).await;
        }
        self.abandon(e).await;
        Ok(false)
    }

    /// Checks made before anything is prepared: two-phase commit is on, the gid is not
    /// the proxy's, and the transaction did nothing Postgres cannot prepare.
    async fn may_prepare(&mut self, gid: &str) -> Result<(), ProxyError> {
        let tp = self.shared.twophase.clone();
        let start = tokio::time::Instant::now();
        while !tp.probed() && start.elapsed() < PROBE_WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !tp.available() {
            return Err(disabled());
        }
        if gid.starts_with(GID_PREFIX) || gid.starts_with(client::DERIVED_PREFIX) {
            return Err(ProxyError::Backend {
                code: "42939".into(),
                message: format!("transaction identifier \"{gid}\" is reserved: ids starting with \"{GID_PREFIX}\" or \"{}\" are the proxy's", client::DERIVED_PREFIX),
            });
        }
        if self.txn.steps.iter().any(|s| matches!(s, Step::Notify(_))) {
            return Err(ProxyError::Backend {
                code: "0A000".into(),
                message:
                    "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY"
                        .into(),
            });
        }
        Ok(())
    }

    /// The transaction is prepared: the block ends as a COMMIT ends it (its settings stay);
    /// with `tag`, the client is told so.
    fn end_prepared(&mut self, tag: bool) {
        let changes = self.txn.take_changes();
        if self.txn.ddl {
            self.schema_changed();
        }
        self.txn = Txn::idle();
        for ch in changes {
            self.apply_setting(ch);
        }
        self.sync_codec();
        for c in self.conns.iter_mut() {
            c.settings_fp = super::settings::UNKNOWN_FP;
        }
        if tag {
            build::command_complete(&mut self.out, "PREPARE TRANSACTION");
        }
        self.release_if_idle(false);
    }

    /// Rolls back what a failed PREPARE did: prepared parts by their ids, the others by
    /// ROLLBACK. Returns whether nothing stays prepared.
    async fn undo_prepare(
        &mut self,
        log: &ClientLog,
        idxs: &[usize],
        parts: &[Part],
        prepared: &[usize],
    ) -> bool {
        let mut clean = true;
        for (k, &ci) in idxs.iter().enumerate() {
            let was_prepared = prepared.contains(&k);
            let sql = if was_prepared {
                client::rollback_prepared_sql(&parts[k].gid)
            } else {
                "ROLLBACK".to_string()
            };
            let ok = matches!(self.step(ci, &sql).await, Ok(r) if r.error.is_none());
            clean &= ok || !was_prepared;
        }
        if prepared.contains(&idxs.len()) {
            if let Some(p) = parts.last() {
                clean &= log.rollback_marker(&p.gid).await.is_ok();
            }
        }
        clean
    }

    /// Ends the client's transaction with error `e`: every held shard rolls back and the
    /// session is outside a block (as after a failed PREPARE in Postgres).
    async fn abandon(&mut self, e: ProxyError) {
        let idxs: Vec<usize> = (0..self.conns.len()).collect();
        self.rollback_all(&idxs).await;
        if self.txn.ddl {
            self.schema_changed();
        }
        self.txn = Txn::idle();
        self.sync_codec();
        for c in self.conns.iter_mut() {
            c.settings_fp = super::settings::UNKNOWN_FP;
        }
        self.push_error(&e);
        self.release_if_idle(false);
    }

    /// `COMMIT PREPARED 'gid'` (`commit`) or `ROLLBACK PREPARED 'gid'`: only outside a
    /// transaction block, from any session of any proxy.
    async fn finish_prepared(&mut self, gid: &str, commit: bool) -> bool {
        let what = if commit {
            "COMMIT PREPARED"
        } else {
            "ROLLBACK PREPARED"
        };
        // (A multi-statement string's implicit transaction allows it, as in Postgres.)
        if self.txn.status.is_open() && !self.txn.implicit {
            self.push_error(&ProxyError::Backend {
                code: "25001".into(),
                message: format!("{what} cannot run inside a transaction block"),
            });
            return false;
        }
        let map = self.topo.map.clone();
        match client::finish(&map, gid, commit, &self.user).await {
            Ok(()) => {
                build::command_complete(&mut self.out, what);
                true
            }
            Err(e) => {
                if let TpcError::Db(_) | TpcError::Timeout(_) = e {
                    tracing::warn!(%gid, error = %e, "{what} did not finish; a retry or recovery will");
                }
                self.push_error(&e.into_proxy());
                false
            }
        }
    }
}

impl Session {
    /// Whether statements of kinds `kinds` hold a client two-phase command: the proxy
    /// answers one itself — forwarded, it would prepare one shard under an unrecorded id.
    pub(super) fn two_phase_among<'a>(kinds: impl IntoIterator<Item = &'a StmtKind>) -> bool {
        kinds
            .into_iter()
            .any(|k| matches!(k, StmtKind::TwoPhase(_)))
    }
}

/// The error for a client two-phase command among other statements of a pipeline.
pub(super) fn not_alone() -> ProxyError {
    ProxyError::Unsupported(
        "PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are answered in a pipeline of transaction-control statements only; send them with their own Sync".into(),
    )
}

/// The error for PREPARE TRANSACTION in a query string's implicit transaction (no BEGIN):
/// Postgres warns and commits it there, which the proxy does not imitate.
pub(super) fn prepare_in_implicit() -> ProxyError {
    ProxyError::Unsupported(
        "PREPARE TRANSACTION in a multi-statement query string without BEGIN is refused (Postgres would commit the string's statements instead); use BEGIN … PREPARE TRANSACTION".into(),
    )
}

/// Postgres's error for PREPARE TRANSACTION without `max_prepared_transactions` (here:
/// on some shard; the proxy logged which at startup).
fn disabled() -> ProxyError {
    ProxyError::Backend {
        code: "55000".into(),
        message: "prepared transactions are disabled".into(),
    }
}
