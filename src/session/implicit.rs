//! Postgres's implicit transaction, kept across shards (issue 19).
//!
//! Postgres runs a multi-statement simple query, and an extended-protocol pipeline up to its
//! Sync, as one transaction unless the client's own BEGIN/COMMIT say otherwise: every
//! statement commits or none does, the first error stops the rest. When those statements
//! reach several shards, the proxy opens the same transaction itself ([`Txn::implicit`]):
//! shards join it as they are reached (BEGIN, as in a client's block), and when the query
//! or pipeline ends it commits on all of them as one — two-phase commit where more than
//! one wrote — or, after an error, rolls all of them back. The client never sees its BEGIN
//! or COMMIT.
//!
//! Inside it, as in Postgres (protocol docs, "Multiple Statements in a Simple Query"):
//! - a `BEGIN` turns it into the client's own block: what ran before is part of it;
//! - a `COMMIT`/`ROLLBACK` ends it with the warning `there is no transaction in progress`,
//!   and what follows runs in a new implicit transaction;
//! - `SAVEPOINT`, `RELEASE`, `ROLLBACK TO` are errors (`25P01`);
//! - statements that cannot run in a transaction block (`VACUUM`, `CREATE INDEX
//!   CONCURRENTLY`) fail on the shard, as they do in Postgres.

use super::txn::{Step, Txn};
use super::{Session, SessionEnd, Target};
use crate::error::ProxyError;
use crate::routing::router::SavepointOp;
use crate::wire::protocol::build;

impl Session {
    /// Opens the implicit transaction (the session has none open). `ddl`: its statements
    /// change the schema (a rollback makes the backends' prepared statements stale).
    pub(super) fn open_implicit(&mut self, ddl: bool) {
        let mut txn = Txn::begun("BEGIN".to_string());
        txn.implicit = true;
        txn.ddl = ddl;
        self.txn = txn;
    }

    /// The client's `BEGIN` inside the implicit transaction: it becomes the client's block,
    /// what ran before included. Queues the `BEGIN` tag.
    pub(super) fn adopt_implicit(&mut self) {
        self.txn.implicit = false;
        build::command_complete(&mut self.out, "BEGIN");
    }

    /// The client's `COMMIT`/`ROLLBACK` inside the implicit transaction: Postgres warns
    /// before it ends the transaction.
    pub(super) fn warn_no_transaction(&mut self) {
        build::warning(
            &mut self.out,
            "25P01",
            "there is no transaction in progress",
        );
    }

    /// The error for a savepoint command inside the implicit transaction.
    pub(super) fn savepoint_outside_block(op: &SavepointOp) -> ProxyError {
        let what = match op {
            SavepointOp::Define(_) => "SAVEPOINT",
            SavepointOp::Release(_) => "RELEASE SAVEPOINT",
            SavepointOp::RollbackTo(_) => "ROLLBACK TO SAVEPOINT",
        };
        ProxyError::Backend {
            code: "25P01".into(),
            message: format!("{what} can only be used in transaction blocks"),
        }
    }

    /// Ends the implicit transaction if it is still open: commits it everywhere as one, or
    /// rolls it back after an error. A failed commit queues its error (nothing committed,
    /// or `08007` when recovery decides); nothing else is queued. Returns whether it
    /// committed (true also when none was open).
    pub(super) async fn close_implicit(&mut self) -> Result<bool, SessionEnd> {
        if !self.txn.implicit || !self.txn.status.is_open() {
            return Ok(true);
        }
        let idxs: Vec<usize> = (0..self.conns.len()).collect();
        let changed = self
            .txn
            .steps
            .iter()
            .any(|s| matches!(s, Step::Setting { .. }));
        let ok = if self.txn.failed {
            if self.txn.ddl {
                self.schema_changed();
            }
            self.rollback_all(&idxs).await;
            self.txn = Txn::idle();
            false
        } else {
            let r = match self.txn.written {
                // Written on several shards: two-phase commit.
                Some(Target::Set(_)) => self.commit_all(&idxs).await,
                // Else the shards that only read first, the writer last: a failure before it
                // rolls it back.
                written => {
                    let writer = match written {
                        Some(Target::Shard(s)) => self.conns.iter().position(|c| c.shard == s),
                        _ => None,
                    };
                    let mut order: Vec<usize> = idxs
                        .iter()
                        .copied()
                        .filter(|&i| Some(i) != writer)
                        .collect();
                    order.extend(writer);
                    self.commit_each(&order).await
                }
            };
            let changes = self.txn.take_changes();
            self.txn = Txn::idle();
            self.committed(r, changes)?
        };
        self.sync_codec();
        if changed {
            // Settings made inside it: the connections' state is not the client's any more.
            for c in self.conns.iter_mut() {
                c.settings_fp = super::settings::UNKNOWN_FP;
            }
        }
        self.release_if_idle(false);
        Ok(ok)
    }
}
