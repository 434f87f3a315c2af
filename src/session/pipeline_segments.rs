//! A pipeline whose statements need different shards (issue 19): pgx's `SendBatch`, JDBC's
//! `executeBatch` of different statements, psycopg's pipeline mode, node-postgres and
//! postgres.js pipelining.
//!
//! Postgres runs a pipeline up to its Sync as one transaction — the client's block, or an
//! implicit one — and after the first error skips everything until the Sync. The proxy
//! runs such a pipeline in segments ([`Session::run_segments`]): the messages up to the
//! first one that needs another shard than those before it, then from that one on, and so
//! on. Each segment runs as any pipeline on its shard(s), ended there by a Sync of its own
//! whose ReadyForQuery the client never sees. All of them run in one transaction: the
//! client's block, or the implicit transaction the proxy opens for them (see
//! [`super::implicit`]), committed after the last segment — two-phase where several shards
//! wrote — or rolled back at the first error, after which the rest is skipped. The client
//! gets one ReadyForQuery at the end. A pipeline on one shard never gets here.
//!
//! Refused before any of it runs (`0A000`), as they would reach only one segment's shard:
//! COMMIT, ROLLBACK, savepoints and settings among statements for several shards; BEGIN
//! other than as the first statement (JDBC sends BEGIN with its first statement: that one
//! opens the client's block as usual, and the rest joins it).

use bytes::BytesMut;

use super::extended::{Batch, Op};
use super::relay::Expect;
use super::{Session, SessionEnd, TxnStatus};
use crate::error::ProxyError;
use crate::routing::router::StmtKind;
use crate::wire::protocol::{decode_execute, BindMsg, Frame};

impl Session {
    /// Whether a pipeline may go on in segments from here: at its Sync, in a transaction
    /// that has not failed.
    pub(super) fn segmentable(&self) -> bool {
        // (Session pooling keeps its connections between transactions: the proxy opens no
        // transaction of its own on them, and such a pipeline stays refused.)
        !self.txn.failed
            && !self.session_mode
            && matches!(self.txn.status, TxnStatus::Idle | TxnStatus::InBlock)
    }

    /// Starts running a pipeline in segments; `ops` is its first. `Some`: it may not run so
    /// (nothing ran), with the error to report.
    pub(super) fn begin_segments(&mut self, ops: &[Op]) -> Option<ProxyError> {
        if self.segmenting {
            return self.segment_refusal(ops);
        }
        let begins = self
            .executed(ops)
            .next()
            .is_some_and(|k| k == StmtKind::Begin)
            && self.txn.status.is_idle();
        let later = if begins {
            self.executed(ops).skip(1).find(refused)
        } else {
            self.executed(ops).find(refused)
        };
        if let Some(k) = later {
            return Some(refusal(&k));
        }
        self.segmenting = true;
        if self.txn.status.is_idle() && !begins {
            let ddl = self.executed(ops).any(|k| k == StmtKind::Ddl);
            self.open_implicit(ddl);
        }
        None
    }

    /// Why a later segment may not run, if it may not.
    pub(super) fn segment_refusal(&self, ops: &[Op]) -> Option<ProxyError> {
        self.executed(ops)
            .find(|k| refused(k) || *k == StmtKind::Begin)
            .map(|k| refusal(&k))
    }

    /// The kinds of the statements `ops` execute, in order. (A portal bound again later in
    /// the pipeline — the unnamed one usually — is its statement as bound before each
    /// Execute, not as the session holds it now.)
    fn executed<'a>(&'a self, ops: &'a [Op]) -> impl Iterator<Item = StmtKind> + 'a {
        let mut bound: Vec<(&'a str, &'a std::sync::Arc<super::Prepared>)> = Vec::new();
        ops.iter().filter_map(move |o| match o {
            Op::Bind(stmt, f, _) => {
                if let Ok(m) = BindMsg::decode(f.body()) {
                    bound.retain(|(p, _)| *p != m.portal);
                    bound.push((m.portal, stmt));
                }
                None
            }
            Op::Raw(f, Expect::Execute) => {
                let (portal, _) = decode_execute(f.body()).ok()?;
                let stmt = match bound.iter().rev().find(|(p, _)| *p == portal) {
                    Some((_, s)) => *s,
                    None => &self.portals.get(portal)?.1,
                };
                stmt.plan.stmts.first().map(|s| s.kind.clone())
            }
            Op::Gather(_, stmt) => stmt.plan.stmts.first().map(|s| s.kind.clone()),
            _ => None,
        })
    }

    /// Runs the segments after the first (`rest`: the messages from the first one that
    /// needed another shard), each cut again where it needs yet another, until the Sync
    /// or the first error; then ends the transaction the proxy opened for them and sends
    /// the one ReadyForQuery.
    pub(super) async fn run_segments(
        &mut self,
        batch: &mut Batch,
        rest: Option<Vec<Frame>>,
    ) -> Result<(), SessionEnd> {
        let mut rest = rest;
        while let Some(frames) = rest.take() {
            if self.txn.failed || !self.txn.status.is_open() {
                break; // an error: Postgres skips the rest until Sync
            }
            batch.set_frames(frames);
            rest = self.run_batch_once(batch, true).await?;
        }
        batch.clear();
        self.close_implicit().await?;
        self.segmenting = false;
        strip_ready(&mut self.out);
        self.push_ready();
        Ok(())
    }
}

/// Statements a segmented pipeline may not hold (they would reach one segment's shard).
fn refused(k: &StmtKind) -> bool {
    matches!(
        k,
        StmtKind::Commit
            | StmtKind::Rollback
            | StmtKind::Savepoint(_)
            | StmtKind::Set { .. }
            | StmtKind::SetLocal
            | StmtKind::Reset { .. }
            | StmtKind::ResetAll
    )
}

fn refusal(k: &StmtKind) -> ProxyError {
    let what = match k {
        StmtKind::Begin => "BEGIN after other statements",
        StmtKind::Commit | StmtKind::Rollback => "COMMIT or ROLLBACK",
        StmtKind::Savepoint(_) => "a savepoint command",
        _ => "a setting",
    };
    ProxyError::Unsupported(format!(
        "this pipeline runs statements on several shards and holds {what}, which would reach only some of them; send it in a pipeline of its own (Sync before and after it)"
    ))
}

/// Drops every ReadyForQuery from `out` (whole messages, as the session queues them): the
/// segments' own, which the client never sees.
pub(super) fn strip_ready(out: &mut BytesMut) {
    let mut read = 0;
    let mut write = 0;
    while read + 5 <= out.len() {
        let len = u32::from_be_bytes([out[read + 1], out[read + 2], out[read + 3], out[read + 4]])
            as usize;
        let end = (read + 1 + len).min(out.len());
        if out[read] != b'Z' {
            out.copy_within(read..end, write);
            write += end - read;
        }
        read = end.max(read + 5);
    }
    // (A partial message at the end is kept as it is.)
    let n = out.len();
    let from = read.min(n);
    out.copy_within(from..n, write);
    out.truncate(write + (n - from));
}
