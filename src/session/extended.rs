//! The extended query protocol: Parse/Bind/Describe/Execute/Close collected up to Sync (or
//! Flush) and run as one unit on the shard(s) its Binds route to.
//!
//! Client statement names are session-local; on backends every statement is prepared under a
//! content-addressed name (`sw_<hash of SQL and types>`), so any pooled connection can run any
//! client's statement: a connection that lacks it gets a Parse injected in front of the Bind.
//!
//! Here the messages are taken in (batched, decoded into [`Op`]s) and a batch is sent its way:
//! `pipeline_one` runs it on one shard, `pipeline_multi` on several, `pipeline_special` runs
//! the pipelines the proxy takes over, `describe` describes and checks statements on a shard.

use std::sync::Arc;

use bytes::Bytes;

use super::relay::{Expect, RelayError};
use super::{
    Prepared, Session, SessionEnd, Target, Txn, TxnStatus, MAX_BATCH_BYTES, SCRATCH_ITEMS,
    STALE_EPOCH,
};
use crate::error::ProxyError;
use crate::routing::router::StmtKind;
use crate::wire::protocol::{build, Frame};

/// Extended-protocol messages waiting for Sync or Flush.
#[derive(Default)]
pub(super) struct Batch {
    frames: Vec<Frame>,
    bytes: usize,
    /// After a Flush: the target the unfinished exchange runs on.
    open: Option<Target>,
    /// After an error reported at a Flush: discard messages until Sync, as Postgres does.
    skip_to_sync: bool,
    /// After a Flush that ran a pipeline across shards: its connections, in an implicit
    /// transaction the client's Sync commits (see `pipeline_spread`).
    spread: Option<Vec<usize>>,
}

impl Batch {
    /// Whether an exchange is unfinished (a Flush left it open).
    pub fn is_open(&self) -> bool {
        self.open.is_some() || self.spread.is_some()
    }

    /// Adds a message, bounded by [`MAX_BATCH_BYTES`] (bytes and per-message overhead).
    pub fn push(&mut self, f: Frame) -> Result<(), SessionEnd> {
        if self.skip_to_sync {
            return Ok(());
        }
        // Each held message costs its bytes plus its handle: counting only the bytes let
        // millions of tiny messages hold far more memory than the limit says.
        self.bytes += f.raw.len() + FRAME_OVERHEAD;
        if self.bytes > MAX_BATCH_BYTES {
            return Err(SessionEnd::Protocol(format!(
                "more than {MAX_BATCH_BYTES} bytes of extended-protocol messages without Sync"
            )));
        }
        self.frames.push(f);
        Ok(())
    }
    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    /// The connections of a pipeline across shards left open at a Flush, if any.
    pub fn take_spread(&mut self) -> Option<Vec<usize>> {
        self.spread.take()
    }

    /// Replaces the pending messages (a later segment of a pipeline, see
    /// [`super::pipeline_segments`]).
    pub fn set_frames(&mut self, frames: Vec<Frame>) {
        self.frames = frames;
    }

    /// Drops pending messages.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

/// Memory a held message costs besides its bytes: its `Frame` in the list (tag, `Bytes`
/// handle) and the shared buffer's bookkeeping, rounded up.
const FRAME_OVERHEAD: usize = 64;

/// What the statements a pipeline executes do beyond their results, gathered while its
/// messages are decoded and applied once it ran.
#[derive(Default)]
pub(super) struct Effects {
    /// Some statement writes (or changes schema).
    pub(super) writes: bool,
    /// Settings statements (`SET`, `SET LOCAL`, `RESET`, `DISCARD ALL`) with their text.
    pub(super) settings: Vec<(StmtKind, String)>,
    /// Some statement alters, drops or renames schema objects (see `StmtPlan::reshapes`).
    pub(super) reshapes: bool,
    /// A `ROLLBACK TO SAVEPOINT` that ends a failed transaction's failure is executed earlier
    /// in the pipeline: what follows it is not refused up front.
    pub(super) recovers: bool,
    /// Some statement is a step of a transaction block (a savepoint command or a setting),
    /// which the proxy runs on every shard the block holds and records.
    pub(super) steps: bool,
    /// The message that needed another shard than the ones before it, given back so the
    /// pipeline can go on from it in a segment of its own (see [`super::pipeline_segments`]).
    pub(super) back: Option<Frame>,
}

/// One decoded pipeline message, ready to run.
pub(super) enum Op {
    Parse(Arc<Prepared>),
    Bind(Arc<Prepared>, Frame, usize),
    DescribeStmt(Arc<Prepared>),
    Raw(Frame, Expect),
    Local(Bytes),
    /// Execute of a portal whose statement needs a scatter-gather merge.
    Gather(Frame, Arc<Prepared>),
}

/// BindComplete, for a Bind the proxy answers itself.
pub(super) const BIND_COMPLETE: Bytes = Bytes::from_static(&[b'2', 0, 0, 0, 4]);
/// NoData, for a Describe of a portal the proxy answers itself.
pub(super) const NO_DATA: Bytes = Bytes::from_static(&[b'n', 0, 0, 0, 4]);
/// CloseComplete, for a Close the proxy answers itself.
pub(super) const CLOSE_COMPLETE: Bytes = Bytes::from_static(&[b'3', 0, 0, 0, 4]);

impl Session {
    /// Drops a pipeline's operations that will not run (it was refused before anything ran):
    /// the statements its Parses registered are forgotten too, since the client gets no
    /// ParseComplete for them (else its next Parse of the name would meet 42P05).
    fn drop_unrun(&mut self, ops: &mut Vec<Op>) {
        for op in ops.iter() {
            if let Op::Parse(p) = op {
                self.stmts.retain(|_, s| !Arc::ptr_eq(s, p));
            }
        }
        ops.clear();
    }

    /// Refuses the whole pending batch with `e` before any of it ran: the error, then
    /// ReadyForQuery at a Sync, or (at a Flush) the messages until Sync are skipped.
    fn refuse_batch(&mut self, batch: &mut Batch, e: &ProxyError, sync: bool) {
        batch.frames.clear();
        batch.bytes = 0;
        self.push_error(e);
        if sync {
            self.push_ready();
        } else {
            batch.skip_to_sync = true;
        }
    }

    /// Runs the pending batch; `sync` is false for Flush. A pipeline whose statements need
    /// different shards runs in segments (see [`super::pipeline_segments`]).
    pub(super) async fn run_batch(
        &mut self,
        batch: &mut Batch,
        sync: bool,
    ) -> Result<(), SessionEnd> {
        let rest = self.run_batch_once(batch, sync).await?;
        if self.segmenting {
            // Boxed: the rare path keeps the common one's future small.
            Box::pin(self.run_segments(batch, rest)).await?;
        }
        Ok(())
    }

    /// Runs the pending batch, or, when its statements need different shards, its first
    /// segment (the messages up to the first that needs another shard): `Some` holds the
    /// messages after it, to run by [`Session::run_segments`].
    pub(super) async fn run_batch_once(
        &mut self,
        batch: &mut Batch,
        sync: bool,
    ) -> Result<Option<Vec<Frame>>, SessionEnd> {
        if batch.skip_to_sync {
            if sync {
                batch.skip_to_sync = false;
                self.push_ready();
            }
            return Ok(None);
        }
        if let Some(idxs) = batch.spread.take() {
            batch.bytes = 0;
            batch.spread = self.end_spread(idxs, &mut batch.frames, sync).await?;
            return Ok(None);
        }
        if let Err(e) = self.enter().await {
            self.refuse_batch(batch, &e, sync);
            return Ok(None);
        }
        // INSERTs the proxy completes get their values before anything looks at the Binds.
        // (A later segment's Binds were completed with the first.)
        if self.segmenting {
        } else if let Err(e) = self.complete_binds(&mut batch.frames).await {
            self.refuse_batch(batch, &e, sync);
            return Ok(None);
        }
        if sync && batch.open.is_none() {
            if self.cursors.is_some() && self.describe_kept(&batch.frames) {
                batch.frames.clear();
                batch.bytes = 0;
                return Ok(None);
            }
            if let Some(special) = self.special_batch(&batch.frames) {
                batch.frames.clear();
                batch.bytes = 0;
                return self.run_special(special).await.map(|()| None);
            }
        }
        // Executions of one statement whose keys land on several shards (executemany).
        if batch.open.is_none()
            && batch
                .frames
                .iter()
                .filter(|f| f.tag == b'E')
                .nth(1)
                .is_some()
        {
            self.directory_gate().await; // before its keys are located
            if let Some(spread) = self.spread_batch(&batch.frames) {
                batch.frames.clear();
                batch.bytes = 0;
                match self.run_spread(spread, sync).await? {
                    Ok(open) => batch.spread = open,
                    Err(()) => batch.skip_to_sync = !sync,
                }
                return Ok(None);
            }
        }
        let mut frames = std::mem::take(&mut batch.frames);
        batch.bytes = 0;
        let mut ops: Vec<Op> = std::mem::take(&mut self.scratch.ops);
        ops.clear();
        self.directory_gate().await;
        let mut cut: Option<ProxyError> = None;
        let mut target: Option<Target> = batch.open;
        let mut fx = Effects::default();
        let mut rest: Option<Vec<Frame>> = None;
        let later_segment = self.segmenting;
        let mut pending = frames.drain(..);
        while let Some(f) = pending.next() {
            match self.prepare_op(f, &mut target, &mut fx) {
                Ok(op) => ops.push(op),
                Err(e) => {
                    match fx.back.take() {
                        // A message for another shard than those before it: the pipeline
                        // runs in segments, this one first.
                        Some(back) if sync && batch.open.is_none() && self.segmentable() => {
                            let mut r = Vec::with_capacity(pending.len() + 1);
                            r.push(back);
                            r.extend(pending.by_ref());
                            rest = Some(r);
                            if let Some(e) = self.begin_segments(&ops) {
                                cut = Some(e);
                                self.drop_unrun(&mut ops);
                                rest = None;
                            }
                        }
                        _ => cut = Some(e),
                    }
                    break;
                }
            }
        }
        drop(pending);
        if later_segment && cut.is_none() {
            // A later segment: what it may hold is checked before it runs.
            if let Some(e) = self.segment_refusal(&ops) {
                cut = Some(e);
                self.drop_unrun(&mut ops);
            }
        }
        // Keep the (now empty) frame list's capacity for the next pipeline, if small.
        if frames.capacity() <= SCRATCH_ITEMS {
            batch.frames = frames;
        }
        if cut.is_some() && !sync {
            // Postgres discards messages after an error until Sync.
            batch.skip_to_sync = true;
        }
        let stale = self.conns.iter().any(|c| c.prepared_epoch == STALE_EPOCH);
        if cut.is_none() && (stale || fx.steps && self.txn.status == TxnStatus::InBlock) {
            // A savepoint or setting continuing an exchange a Flush left open (psycopg's
            // pipeline mode) ends that exchange first, so it runs as any other step: on every
            // shard the block holds, recorded for its ROLLBACK TO and for shards it reaches
            // later. Statements DDL made stale on held connections are dropped before this
            // pipeline's Parses are answered.
            match self.settle_held(&mut batch.open, fx.steps).await {
                Ok(()) => {}
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Backend { shard, error, .. }) => {
                    let e = self.backend_failed(shard, &error);
                    self.lose_transaction();
                    self.push_error(&e);
                    if sync {
                        self.push_ready();
                    } else {
                        batch.skip_to_sync = true;
                    }
                    batch.open = None;
                    return Ok(None);
                }
            }
        }
        // Transaction control at a Flush too, inside a block (outside one, a Flush leaves the
        // backend's implicit transaction open, which the statements must share).
        if cut.is_none()
            && batch.open.is_none()
            && (sync || self.txn.status.is_open())
            && self.transaction_batch(&ops, sync).await?
        {
            if !sync && self.txn.failed {
                // Postgres discards what follows an error until Sync.
                batch.skip_to_sync = true;
            }
            return Ok(None);
        }
        // Not answered above: a client two-phase command must not reach a shard as sent.
        if let Some(e) = cut.is_none().then(|| Self::two_phase_stray(&ops)).flatten() {
            cut = Some(e);
            self.drop_unrun(&mut ops);
            if !sync {
                batch.skip_to_sync = true;
            }
        }
        if fx.recovers && cut.is_none() {
            // A ROLLBACK TO acts on every shard the transaction holds, as the proxy runs it
            // (`transaction_batch`), never inside a pipeline relayed to one shard.
            cut = Some(ProxyError::Unsupported(
                "in a failed transaction, send ROLLBACK TO SAVEPOINT in a pipeline of transaction-control statements only, then Sync".into(),
            ));
            self.drop_unrun(&mut ops);
            if !sync {
                batch.skip_to_sync = true;
            }
        }
        if cut.is_some() && self.txn.status.is_idle() && batch.open.is_none() {
            // Postgres runs a pipeline outside a transaction block as one implicit transaction:
            // an error anywhere undoes all of it. The proxy found the error before sending
            // anything, so nothing runs at all (never a half-applied pipeline).
            self.drop_unrun(&mut ops);
        }
        if cut.is_none() && batch.open.is_none() {
            self.lazy_begin_in_pipeline(&mut ops);
        }
        let needs_backend = ops
            .iter()
            .any(|o| !matches!(o, Op::Local(_) | Op::Parse(_)));
        if !needs_backend && batch.open.is_none() {
            // Answer locally: ParseComplete/CloseComplete, then the error if any. A Parse is
            // checked on a shard first (libpq's PQprepare, psycopg's prepare: Parse, Sync), so
            // a statement that does not plan fails at its Parse, as in Postgres, and its name
            // is free again.
            for (i, op) in ops.iter().enumerate() {
                match op {
                    // (DEALLOCATE / DISCARD ALL are the proxy's own: nothing to check.)
                    Op::Parse(p)
                        if sync
                            && cut.is_none()
                            && !p.plan.stmts.first().is_some_and(|s| {
                                matches!(s.kind, StmtKind::Deallocate(_) | StmtKind::DiscardAll)
                            }) =>
                    {
                        match self.parse_fails(p).await? {
                            false => build::empty(&mut self.out, b'1'),
                            true => {
                                // Postgres skips the rest of the pipeline: those names are free too.
                                for later in &ops[i..] {
                                    if let Op::Parse(q) = later {
                                        self.stmts.retain(|_, s| !Arc::ptr_eq(s, q));
                                    }
                                }
                                self.txn.fail();
                                break;
                            }
                        }
                    }
                    Op::Parse(_) => build::empty(&mut self.out, b'1'),
                    Op::Local(b) => self.out.extend_from_slice(b),
                    _ => {}
                }
            }
            if let Some(e) = &cut {
                self.push_error(e);
            }
            if sync {
                self.push_ready();
            }
            self.release_if_idle(false);
            return Ok(None);
        }
        if target.is_none()
            && self.txn.status == TxnStatus::InBlock
            && self.conns.is_empty()
            && !self.session_mode
            && batch.open.is_none()
            && ops
                .iter()
                .all(|o| matches!(o, Op::Parse(_) | Op::Local(_) | Op::DescribeStmt(_)))
        {
            // A prepare inside a transaction that has not run anything yet (tokio-postgres,
            // JDBC): describe outside it, so the transaction does not BEGIN on and hold a
            // shard it may never use.
            return self
                .describe_only(ops, cut.as_ref(), sync)
                .await
                .map(|()| None);
        }
        // A prepare that ends at a Flush (asyncpg, postgres.js: Parse, Describe, Flush, then
        // Bind, Execute, Sync): only metadata, which every shard answers alike. It runs as an
        // exchange of its own (closed with a Sync whose ReadyForQuery the client never sees),
        // so it pins no shard: the Bind that follows decides where the statement runs.
        let detached = !sync
            && target.is_none()
            && batch.open.is_none()
            && ops
                .iter()
                .all(|o| matches!(o, Op::Parse(_) | Op::Local(_) | Op::DescribeStmt(_)));
        let target = target.unwrap_or(Target::Shard(self.any_shard()));
        if let Err(e) = self.check_write(target, fx.writes, self.txn.status.is_open()) {
            self.push_error(&e);
            if sync {
                self.push_ready();
            }
            return Ok(None);
        }
        let mut gathered_at_flush = false;
        let result = match target {
            Target::Shard(s) => self.batch_one(s, ops, cut.as_ref(), sync, detached).await,
            Target::Set(set) => {
                if !sync && !fx.writes && batch.open.is_none() {
                    // At a Flush, a plain read on several shards is paged by the proxy too.
                    self.concatenations_as_gathers(&mut ops);
                }
                let gather = ops.iter().any(|o| matches!(o, Op::Gather(..)));
                if !sync && gather && !fx.writes && batch.open.is_none() {
                    // A merged read fetched at a Flush (psycopg's pipeline mode fetches
                    // results so): it runs as its own exchange on the shards, as a read may —
                    // the rows reach the client now, the ReadyForQuery at the client's Sync.
                    gathered_at_flush = true;
                    self.batch_gather(set, ops, cut.as_ref(), false).await
                } else if !sync {
                    // Anything else on several shards stops at Sync only: refuse it and skip
                    // to Sync like after any error.
                    batch.skip_to_sync = true;
                    Ok(Err(ProxyError::Unsupported(
                        "Flush before Sync in a pipeline that runs on several shards is supported for a merged read alone; send Sync".into(),
                    )))
                } else if gather {
                    self.batch_gather(set, ops, cut.as_ref(), true).await
                } else {
                    // Writes outside a transaction: one atomic write on every shard.
                    let atomic = fx.writes && self.txn.status.is_idle();
                    self.batch_all(set, ops, cut.as_ref(), atomic).await
                }
            }
        };
        let outcome = match result {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                self.push_error(&e);
                if sync {
                    self.push_ready();
                }
                batch.open = None;
                self.release_if_idle(false);
                return Ok(None);
            }
            Err(RelayError::Client(e)) => return Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
                if sync {
                    self.push_ready();
                }
                batch.open = None;
                return Ok(None);
            }
        };
        if fx.reshapes {
            self.schema_changed();
        }
        batch.open = if sync || detached || gathered_at_flush {
            None
        } else {
            Some(target)
        };
        if !sync && outcome.error {
            // An error before Sync aborts the transaction block (the client's Sync says 'E'),
            // and Postgres discards what the client sends until that Sync. The backend's own
            // exchange was already closed (see `batch_one`).
            self.txn.fail();
            batch.skip_to_sync = true;
            batch.open = None;
        }
        if let Some(status) = outcome.status.filter(|_| sync) {
            let was_idle = self.txn.status.is_idle();
            for (kind, sql) in fx.settings {
                if outcome.error {
                    break;
                }
                if was_idle && status.is_idle() {
                    if let Some(ch) = super::txn::setting_change(&kind, &sql) {
                        self.apply_setting(ch);
                    }
                } else if status == TxnStatus::InBlock {
                    // A step of the transaction: shards it reaches later replay it too.
                    self.txn.record_setting(&kind, &sql);
                    self.sync_codec();
                }
                for c in self.conns.iter_mut() {
                    c.settings_fp = super::settings::UNKNOWN_FP;
                }
            }
            if status.is_idle() && self.txn.status.is_open() {
                self.txn = Txn::idle();
                self.sync_codec();
            }
            if status.is_open() && self.txn.prelude.is_none() {
                self.txn.prelude = Some("BEGIN".into());
            }
            self.txn.status = status;
            if status == TxnStatus::Failed {
                // One shard's failure fails the client's whole transaction.
                self.txn.fail();
            }
        }
        self.release_if_idle(batch.open.is_some());
        Ok(rest)
    }

    /// Text-format Bind parameters in UTF-8, for reading shard keys, when the client's
    /// encoding is not UTF-8 and some parameter is not plain ASCII; `None` otherwise (use them
    /// as sent). The shards still get the parameters as sent: they run in the client's
    /// encoding. Binary-format values are left alone (their bytes are not text in general;
    /// drivers that bind text in binary — asyncpg, pgx, JDBC, tokio-postgres — speak UTF-8).
    pub(super) fn params_utf8<'p>(
        &self,
        params: &[Option<&'p [u8]>],
        is_binary: &dyn Fn(usize) -> bool,
    ) -> Option<Vec<Option<std::borrow::Cow<'p, [u8]>>>> {
        let codec = self.codec?;
        let needed = params
            .iter()
            .enumerate()
            .any(|(i, v)| !is_binary(i) && v.is_some_and(|v| !v.is_ascii()));
        if !needed {
            return None;
        }
        let converted = params
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(|v| match codec.to_utf8(v) {
                    Ok(s) if !is_binary(i) => match s {
                        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
                        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
                    },
                    _ => std::borrow::Cow::Borrowed(v),
                })
            })
            .collect();
        Some(converted)
    }
}
