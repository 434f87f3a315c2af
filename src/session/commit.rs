//! Ending a write that spans shards: two-phase commit when every shard allows it (see
//! [`crate::twophase`]), else a COMMIT round shard by shard.

use super::relay::RelayError;
use super::Session;
use crate::error::ProxyError;
use crate::twophase::decide_sql;

impl Session {
    /// Commits the open transactions on connections `idxs` (indexes into `self.conns`) as
    /// one: all or none. `Ok(Err)` when nothing was committed (or, without two-phase
    /// commit, when a COMMIT failed after others succeeded: the error names them).
    pub(super) async fn commit_all(
        &mut self,
        idxs: &[usize],
    ) -> Result<Result<(), ProxyError>, RelayError> {
        if idxs.len() < 2 || !self.shared.twophase.available() {
            return self.commit_each(idxs).await;
        }
        let gid = self.shared.twophase.next_gid();
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        let mut prepared: Vec<usize> = Vec::with_capacity(idxs.len());
        let mut failure: Option<ProxyError> = None;
        for &ci in idxs {
            let shard = self.conns[ci].shard;
            match self.conns[ci].run_simple(&prepare).await {
                Ok((None, _)) => prepared.push(ci),
                Ok((Some((code, message)), _)) => {
                    failure = Some(ProxyError::Backend {
                        code,
                        message: format!(
                            "{message} (PREPARE TRANSACTION on shard {})",
                            self.shard_name(shard)
                        ),
                    });
                    break;
                }
                Err(error) => {
                    failure = Some(self.backend_failed(shard, &error));
                    break;
                }
            }
        }
        // The decision, recorded on the log shard: its commit is the commit point.
        if failure.is_none() {
            match self.on_log_shard(&decide_sql(&gid)).await {
                Ok(Some(d)) if d == "commit" => {}
                Ok(_) => {
                    failure = Some(ProxyError::Unavailable(format!(
                        "transaction {gid} was aborted by recovery before it could commit"
                    )))
                }
                Err(e) => failure = Some(e),
            }
        }
        let Some(e) = failure else {
            let finish = format!("COMMIT PREPARED '{gid}'");
            let mut all = true;
            for &ci in &prepared {
                let shard = self.conns[ci].shard;
                if !matches!(self.conns[ci].run_simple(&finish).await, Ok((None, _))) {
                    // Decided: recovery commits it when the shard is back.
                    tracing::warn!(%gid, shard = %self.shard_name(shard), "COMMIT PREPARED failed; recovery will finish it");
                    all = false;
                }
            }
            if all {
                let forget = format!(
                    "DELETE FROM {} WHERE gid = '{gid}'",
                    crate::twophase::LOG_TABLE
                );
                let _ = self.on_log_shard(&forget).await;
            }
            return Ok(Ok(()));
        };
        // Undo: prepared ones by gid, the rest by ROLLBACK (harmless where PREPARE already ended it).
        let undo = format!("ROLLBACK PREPARED '{gid}'");
        for &ci in idxs {
            let sql = if prepared.contains(&ci) {
                undo.as_str()
            } else {
                "ROLLBACK"
            };
            if self.conns[ci].run_simple(sql).await.is_err() && prepared.contains(&ci) {
                tracing::warn!(%gid, "ROLLBACK PREPARED failed; recovery will roll it back");
            }
        }
        Ok(Err(e))
    }

    /// Runs `sql` on its own (autocommit) on the log shard, on a connection of the pool that
    /// is not part of the session's transaction; returns the first value.
    async fn on_log_shard(&mut self, sql: &str) -> Result<Option<String>, ProxyError> {
        let log = self.topo.map.default_shard;
        let pool = self.topo.pools[log].clone();
        let mut conn = pool.checkout().await?;
        let r = conn.query_value(sql).await;
        match r {
            Ok(v) => {
                conn.release();
                Ok(v)
            }
            Err(error) => {
                drop(conn); // a broken connection is closed, not pooled
                Err(ProxyError::ShardUnavailable {
                    shard: self.shard_name(log),
                    reason: error.to_string(),
                })
            }
        }
    }

    /// COMMIT on each connection in turn (no two-phase commit available).
    async fn commit_each(&mut self, idxs: &[usize]) -> Result<Result<(), ProxyError>, RelayError> {
        let mut committed: Vec<String> = Vec::new();
        for (k, &ci) in idxs.iter().enumerate() {
            let shard = self.conns[ci].shard;
            let r = self.conns[ci].run_simple("COMMIT").await;
            let failed = match r {
                Ok((None, _)) => {
                    committed.push(self.shard_name(shard));
                    continue;
                }
                Ok((Some((code, message)), _)) => ProxyError::Backend { code, message },
                Err(error) => self.backend_failed(shard, &error),
            };
            for &rest in &idxs[k + 1..] {
                let _ = self.conns[rest].run_simple("ROLLBACK").await;
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

    /// ROLLBACK on each connection (errors ignored: a broken connection is not pooled).
    pub(super) async fn rollback_all(&mut self, idxs: &[usize]) {
        for &ci in idxs {
            let _ = self.conns[ci].run_simple("ROLLBACK").await;
        }
    }
}
