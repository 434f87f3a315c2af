//! Ending a write that spans shards: two-phase commit when every shard allows it (see
//! [`crate::backend::twophase`]), else a COMMIT round shard by shard.
//!
//! The coordinator's rules, step by step:
//! 1. `PREPARE TRANSACTION` on every participant. Only the tag `PREPARE TRANSACTION` counts
//!    as prepared: a shard whose transaction had aborted answers `ROLLBACK` with no error.
//!    Any other answer, an error or a lost connection aborts the commit: prepared shards get
//!    `ROLLBACK PREPARED`, the rest `ROLLBACK`, and the client gets the error.
//! 2. The decision row, on the log shard (the default shard), on a connection of the
//!    control plane's pool there (the shards' URL login, which owns schema `shardwire`:
//!    clients' roles can neither write nor lock the log). Its commit is the commit point.
//!    If its reply is lost (connection error, timeout) the outcome is unknown: nothing is
//!    rolled back, the participants stay prepared, the client gets `08007`, and recovery
//!    decides from the log alone.
//! 3. `COMMIT PREPARED` everywhere (a shard that fails here is finished by recovery: the
//!    decision is made), then the log row is deleted.
//!
//! Every step is bounded by [`STEP_TIMEOUT`]; a connection that fails or times out is
//! marked broken and never pooled again. No step indexes a connection list that a failure
//! may have emptied.

use std::time::Duration;

use super::relay::RelayError;
use super::{Session, SessionEnd};
use crate::backend::conn::{BackendError, Reply};
use crate::backend::twophase::{self, decide_sql};
use crate::error::ProxyError;

/// Longest wait for a shard's answer to one commit step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of the decision row.
enum Decision {
    /// Recorded: the transaction commits.
    Commit,
    /// Not recorded (an error, or recovery recorded `abort` first): roll back.
    Abort(ProxyError),
    /// Its reply was lost: recovery decides.
    Unknown(ProxyError),
}

impl Session {
    /// Commits the open transactions on connections `idxs` (indexes into `self.conns`) as
    /// one: all or none. `Ok(Err)` when the commit did not happen (or, without two-phase
    /// commit, when a COMMIT failed after others succeeded: the error names them), and with
    /// `08007` when its outcome is unknown until recovery runs.
    pub(super) async fn commit_all(
        &mut self,
        idxs: &[usize],
    ) -> Result<Result<(), ProxyError>, RelayError> {
        if idxs.len() < 2 || !self.shared.twophase.available() {
            return self.commit_each(idxs).await;
        }
        let gid = self.shared.twophase.next_gid();
        let prepare = twophase::prepare_sql(&gid);
        let mut prepared: Vec<usize> = Vec::with_capacity(idxs.len());
        let mut failure: Option<ProxyError> = None;
        for &ci in idxs {
            let shard = self.conns[ci].shard;
            match self.step(ci, &prepare).await {
                Ok(r) if r.is("PREPARE TRANSACTION") => prepared.push(ci),
                Ok(r) => {
                    failure = Some(match r.error {
                        Some((code, message)) => ProxyError::Backend {
                            code,
                            message: format!(
                                "{message} (PREPARE TRANSACTION on shard {})",
                                self.shard_name(shard)
                            ),
                        },
                        None => ProxyError::Backend {
                            code: "40000".into(),
                            message: format!(
                                "the transaction was rolled back on shard {} before it could be prepared (it answered {:?}); nothing was committed",
                                self.shard_name(shard),
                                r.tag
                            ),
                        },
                    });
                    break;
                }
                Err(error) => {
                    failure = Some(self.lost(shard, &error));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.undo(idxs, &prepared, &gid).await;
            return Ok(Err(e));
        }
        match self.decide(&gid).await {
            Decision::Commit => {}
            Decision::Abort(e) => {
                self.undo(idxs, &prepared, &gid).await;
                return Ok(Err(e));
            }
            Decision::Unknown(e) => {
                tracing::error!(%gid, error = %e, "two-phase commit outcome unknown; recovery will finish it from the decision log");
                return Ok(Err(e));
            }
        }
        let finish = twophase::commit_prepared_sql(&gid);
        let mut all = true;
        for &ci in &prepared {
            let shard = self.conns[ci].shard;
            let done = match self.step(ci, &finish).await {
                Ok(r) if r.is("COMMIT PREPARED") => true,
                // The held connection failed: any session of the database can finish it.
                Err(_) => self.finish_elsewhere(shard, &finish).await,
                Ok(r) => {
                    tracing::warn!(%gid, shard = %self.shard_name(shard), reply = ?r, "COMMIT PREPARED refused");
                    false
                }
            };
            if !done {
                // Decided: recovery commits it when the shard answers again.
                tracing::warn!(%gid, shard = %self.shard_name(shard), "COMMIT PREPARED failed; recovery will finish it");
                all = false;
            }
        }
        if all {
            let forget = twophase::forget_sql(&gid);
            if let Err(e) = self.on_log_shard(&forget).await {
                tracing::debug!(%gid, error = %e, "decision row not deleted; recovery's cleanup will");
            }
        }
        Ok(Ok(()))
    }

    /// `COMMIT PREPARED` of a decided transaction on a fresh connection to `shard`, once,
    /// outside the pool (the session may hold that pool's only slot). Returns whether it
    /// committed there; if not, recovery will.
    async fn finish_elsewhere(&self, shard: usize, finish: &str) -> bool {
        let Some(pool) = self.pools.get(shard) else {
            return false;
        };
        let attempt = async {
            let mut conn = pool.connect_unpooled().await.ok()?;
            conn.command(finish).await.ok()
        };
        matches!(
            tokio::time::timeout(STEP_TIMEOUT, attempt).await,
            Ok(Some(r)) if r.is("COMMIT PREPARED")
        )
    }

    /// Runs one commit step on held connection `ci`, bounded by [`STEP_TIMEOUT`]; a
    /// connection that times out is marked broken (its state is unknown).
    pub(super) async fn step(&mut self, ci: usize, sql: &str) -> Result<Reply, BackendError> {
        let conn = &mut self.conns[ci];
        if conn.broken {
            return Err(BackendError::Closed);
        }
        match tokio::time::timeout(STEP_TIMEOUT, conn.command(sql)).await {
            Ok(r) => r,
            Err(_) => {
                conn.broken = true;
                Err(BackendError::Timeout(STEP_TIMEOUT))
            }
        }
    }

    /// The error for a shard connection lost during a commit step. Unlike
    /// [`Session::backend_failed`] it keeps the held connections in place (marked broken
    /// where they failed) so the rest of the commit can still address them.
    pub(super) fn lost(&self, shard: usize, error: &BackendError) -> ProxyError {
        tracing::warn!(shard = %self.shard_name(shard), %error, "shard connection lost during commit");
        ProxyError::ShardUnavailable {
            shard: self.shard_name(shard),
            reason: error.to_string(),
        }
    }

    /// Rolls back before the decision point: prepared participants by gid, the rest by
    /// ROLLBACK. A participant that cannot be reached keeps its prepared transaction until
    /// recovery presumes abort (no decision row exists).
    async fn undo(&mut self, idxs: &[usize], prepared: &[usize], gid: &str) {
        let undo = twophase::rollback_prepared_sql(gid);
        for &ci in idxs {
            if self.conns[ci].broken {
                continue;
            }
            let was_prepared = prepared.contains(&ci);
            let sql = if was_prepared {
                undo.as_str()
            } else {
                "ROLLBACK"
            };
            let ok = matches!(self.step(ci, sql).await, Ok(r) if r.error.is_none());
            if !ok && was_prepared {
                tracing::warn!(%gid, "ROLLBACK PREPARED failed; recovery will roll it back");
            }
        }
    }

    /// Records the commit decision for `gid` on the log shard (see the module docs).
    async fn decide(&mut self, gid: &str) -> Decision {
        let log = self.topo.map.default_shard;
        let sql = decide_sql(gid);
        let r = match self.on_log_shard(&sql).await {
            Ok(r) => r,
            Err(LogError::Before(e)) => return Decision::Abort(e),
            Err(LogError::Lost(error)) => {
                return Decision::Unknown(ProxyError::Backend {
                    code: "08007".into(),
                    message: format!(
                        "transaction resolution unknown: the commit decision was sent to shard {} but its answer was lost ({error}); every shard will be committed if the decision was recorded, else rolled back, when recovery runs (transaction {gid})",
                        self.shard_name(log)
                    ),
                })
            }
        };
        match (r.error, r.value.as_deref()) {
            (None, Some("commit")) => Decision::Commit,
            (Some((code, message)), _) => Decision::Abort(ProxyError::Backend {
                code,
                message: format!(
                    "{message} (recording the commit decision on shard {}); nothing was committed",
                    self.shard_name(log)
                ),
            }),
            (None, _) => Decision::Abort(ProxyError::Unavailable(format!(
                "transaction {gid} was aborted by recovery before it could commit"
            ))),
        }
    }

    /// Runs `sql` on its own (autocommit) on the log shard, on a control connection.
    async fn on_log_shard(&mut self, sql: &str) -> Result<Reply, LogError> {
        let log = self.topo.map.default_shard;
        let pool = self.topo.pools[log].clone();
        let mut conn = pool.checkout().await.map_err(LogError::Before)?;
        match tokio::time::timeout(STEP_TIMEOUT, conn.command(sql)).await {
            Ok(Ok(r)) => {
                conn.release();
                Ok(r)
            }
            Ok(Err(error)) => Err(LogError::Lost(error)), // dropped: a broken connection is closed
            Err(_) => {
                conn.broken = true;
                Err(LogError::Lost(BackendError::Timeout(STEP_TIMEOUT)))
            }
        }
    }

    /// COMMIT on each connection in turn (no two-phase commit available).
    pub(super) async fn commit_each(
        &mut self,
        idxs: &[usize],
    ) -> Result<Result<(), ProxyError>, RelayError> {
        let mut committed: Vec<String> = Vec::new();
        for (k, &ci) in idxs.iter().enumerate() {
            let shard = self.conns[ci].shard;
            let failed = match self.step(ci, "COMMIT").await {
                Ok(r) if r.is("COMMIT") => {
                    committed.push(self.shard_name(shard));
                    continue;
                }
                Ok(r) => match r.error {
                    Some((code, message)) => ProxyError::Backend { code, message },
                    None => ProxyError::Backend {
                        code: "40000".into(),
                        message: format!(
                            "the transaction was rolled back on shard {} (it answered {:?})",
                            self.shard_name(shard),
                            r.tag
                        ),
                    },
                },
                Err(error) => self.lost(shard, &error),
            };
            for &rest in &idxs[k + 1..] {
                let _ = self.step(rest, "ROLLBACK").await;
            }
            return Ok(Err(if committed.is_empty() {
                failed
            } else {
                ProxyError::Backend {
                    code: "40003".into(), // statement_completion_unknown
                    message: format!(
                        "{failed}: COMMIT failed on shard {} after shards {} committed (two-phase commit is off: set max_prepared_transactions > 0 on every shard)",
                        self.shard_name(shard),
                        committed.join(", ")
                    ),
                }
            }));
        }
        Ok(Ok(()))
    }

    /// What a commit's result `r` leaves for the client: on success the transaction's
    /// setting changes apply (returns true), else its error is queued. (The transaction is
    /// already ended on the session's side.)
    pub(super) fn committed(
        &mut self,
        r: Result<Result<(), ProxyError>, RelayError>,
        changes: Vec<super::txn::SettingChange>,
    ) -> Result<bool, SessionEnd> {
        match r {
            Ok(Ok(())) => {
                for ch in changes {
                    self.apply_setting(ch);
                }
                Ok(true)
            }
            Ok(Err(e)) => {
                self.push_error(&e);
                Ok(false)
            }
            Err(RelayError::Client(e)) => Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.push_error(&e);
                Ok(false)
            }
        }
    }

    /// ROLLBACK on each connection (errors ignored: a broken connection is not pooled).
    pub(super) async fn rollback_all(&mut self, idxs: &[usize]) {
        for &ci in idxs {
            let _ = self.step(ci, "ROLLBACK").await;
        }
    }
}

/// Why a statement on the log shard did not get an answer.
#[derive(Debug, thiserror::Error)]
enum LogError {
    /// Nothing was sent (no connection could be had).
    #[error("{0}")]
    Before(ProxyError),
    /// It was sent and the answer was lost.
    #[error("{0}")]
    Lost(BackendError),
}
