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

use bytes::{Bytes, BytesMut};

use super::gather::GatherPortal;
use super::relay::{Expect, RelayError};
use super::{
    Prepared, Session, SessionEnd, Target, Txn, TxnStatus, MAX_BATCH_BYTES, MAX_CLIENT_STATEMENTS,
    SCRATCH_ITEMS, STALE_EPOCH,
};
use crate::error::ProxyError;
use crate::routing::router::{RouteSpec, SavepointOp, StmtKind};
use crate::wire::protocol::{build, decode_execute, decode_target, BindMsg, Frame, ParseMsg};

/// Whether a statement touches no sharded data (route `Any`): it runs wherever the rest of
/// its pipeline runs instead of deciding the shard.
fn floats(stmt: &Prepared) -> bool {
    matches!(
        stmt.plan.stmts.first().map(|s| &s.route),
        Some(RouteSpec::Any) | None
    )
}

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
    writes: bool,
    /// Settings statements (`SET`, `SET LOCAL`, `RESET`, `DISCARD ALL`) with their text.
    settings: Vec<(StmtKind, String)>,
    /// Some statement alters, drops or renames schema objects (see `StmtPlan::reshapes`).
    reshapes: bool,
    /// A `ROLLBACK TO SAVEPOINT` that ends a failed transaction's failure is executed earlier
    /// in the pipeline: what follows it is not refused up front.
    recovers: bool,
    /// Some statement is a step of a transaction block (a savepoint command or a setting),
    /// which the proxy runs on every shard the block holds and records.
    steps: bool,
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
const NO_DATA: Bytes = Bytes::from_static(&[b'n', 0, 0, 0, 4]);
/// CloseComplete, for a Close the proxy answers itself.
const CLOSE_COMPLETE: Bytes = Bytes::from_static(&[b'3', 0, 0, 0, 4]);

impl Session {
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

    /// Runs the pending batch; `sync` is false for Flush.
    pub(super) async fn run_batch(
        &mut self,
        batch: &mut Batch,
        sync: bool,
    ) -> Result<(), SessionEnd> {
        if batch.skip_to_sync {
            if sync {
                batch.skip_to_sync = false;
                self.push_ready();
            }
            return Ok(());
        }
        if let Some(idxs) = batch.spread.take() {
            batch.bytes = 0;
            batch.spread = self.end_spread(idxs, &mut batch.frames, sync).await?;
            return Ok(());
        }
        if let Err(e) = self.enter().await {
            self.refuse_batch(batch, &e, sync);
            return Ok(());
        }
        // INSERTs the proxy completes get their values before anything looks at the Binds.
        if let Err(e) = self.complete_binds(&mut batch.frames).await {
            self.refuse_batch(batch, &e, sync);
            return Ok(());
        }
        if sync && batch.open.is_none() {
            if let Some(special) = self.special_batch(&batch.frames) {
                batch.frames.clear();
                batch.bytes = 0;
                return self.run_special(special).await;
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
                return Ok(());
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
        for f in frames.drain(..) {
            match self.prepare_op(f, &mut target, &mut fx) {
                Ok(op) => ops.push(op),
                Err(e) => {
                    cut = Some(e);
                    break;
                }
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
                    return Ok(());
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
            return Ok(());
        }
        if fx.recovers && cut.is_none() {
            // A ROLLBACK TO acts on every shard the transaction holds, as the proxy runs it
            // (`transaction_batch`), never inside a pipeline relayed to one shard.
            cut = Some(ProxyError::Unsupported(
                "in a failed transaction, send ROLLBACK TO SAVEPOINT in a pipeline of transaction-control statements only, then Sync".into(),
            ));
            ops.clear();
            if !sync {
                batch.skip_to_sync = true;
            }
        }
        if cut.is_some() && self.txn.status.is_idle() && batch.open.is_none() {
            // Postgres runs a pipeline outside a transaction block as one implicit transaction:
            // an error anywhere undoes all of it. The proxy found the error before sending
            // anything, so nothing runs at all (never a half-applied pipeline).
            ops.clear();
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
            return Ok(());
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
            return self.describe_only(ops, cut.as_ref(), sync).await;
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
            return Ok(());
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
                return Ok(());
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
                return Ok(());
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
        Ok(())
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

    /// Decodes one message into an operation, registering statements and portals.
    fn prepare_op(
        &mut self,
        f: Frame,
        target: &mut Option<Target>,
        fx: &mut Effects,
    ) -> Result<Op, ProxyError> {
        let proto = |e: crate::wire::protocol::FrameError| match e {
            crate::wire::protocol::FrameError::NotUtf8(_) => ProxyError::Encoding(e.to_string()),
            e => ProxyError::Protocol(e.to_string()),
        };
        // In a transaction the proxy failed, only COMMIT/ROLLBACK (and Close) get through.
        if self.txn.failed && !fx.recovers && f.tag != b'C' && !self.ends_transaction(&f) {
            return Err(ProxyError::InFailedTransaction);
        }
        let mut merge = |t: Target, s: &Session| -> Result<(), ProxyError> {
            match *target {
                None => *target = Some(t),
                Some(prev) if prev == t => {}
                Some(prev) => {
                    return Err(ProxyError::Unsupported(format!(
                        "this pipeline touches several shards ({} and {}) before one Sync; send a Sync between statements for different shards",
                        s.target_name(prev),
                        s.target_name(t)
                    )));
                }
            }
            Ok(())
        };
        match f.tag {
            b'P' => {
                // Drivers re-send the same unnamed statement before every execution
                // (pgbench -M extended, node-postgres, JDBC's first runs): the one the
                // session has is kept, with its plan, instead of decoded and built again.
                if let Some(p) = self.stmts.get("").filter(|p| p.is_unnamed_parse(f.body())) {
                    if !p.shape.changed() {
                        // Parsed anew: the client describes it again if it decodes by that.
                        p.shape.forget();
                        return Ok(Op::Parse(p.clone()));
                    }
                }
                let pending = self.take_pending(f.body());
                let m = ParseMsg::decode(f.body()).map_err(proto)?;
                let plan = match &pending {
                    Some(p) => p.plan.clone(),
                    None => self.topo.cache.get(&self.topo.map, m.query)?,
                };
                if plan.stmts.len() > 1 {
                    return Err(ProxyError::Syntax(
                        "cannot insert multiple commands into a prepared statement".into(),
                    ));
                }
                if !m.name.is_empty() && self.stmts.contains_key(m.name) {
                    return Err(ProxyError::DuplicateStatement(m.name.to_string()));
                }
                if self.stmts.len() >= MAX_CLIENT_STATEMENTS && !self.stmts.contains_key(m.name) {
                    return Err(ProxyError::Limit(format!(
                        "too many prepared statements in this session (limit {MAX_CLIENT_STATEMENTS})"
                    )));
                }
                let p = match pending {
                    Some(p) => p,
                    // An INSERT the proxy completes (generated values): its completed form.
                    None if plan.generates() => {
                        Arc::new(self.generated_statement(f.body(), &m, &plan)?)
                    }
                    None => Arc::new(Prepared::new(m.query, m.param_types(), plan)),
                };
                self.generated.any |= p.gen.is_some();
                self.stmts.insert(m.name.to_string(), p.clone());
                Ok(Op::Parse(p))
            }
            b'B' => {
                let m = BindMsg::decode(f.body()).map_err(proto)?;
                let stmt = self
                    .stmts
                    .get(m.statement)
                    .cloned()
                    .ok_or_else(|| ProxyError::NoSuchStatement(m.statement.to_string()))?;
                let route = stmt
                    .plan
                    .stmts
                    .first()
                    .map(|s| s.route.clone())
                    .unwrap_or(RouteSpec::Any);
                let t = m.with_params(|params| {
                    let is_binary = |i| m.is_binary(i);
                    match self.params_utf8(params, &is_binary) {
                        Some(c) => {
                            let c: Vec<Option<&[u8]>> = c.iter().map(|v| v.as_deref()).collect();
                            self.resolve(&route, &c, &is_binary, Default::default())
                        }
                        None => self.resolve(&route, params, &is_binary, Default::default()),
                    }
                })?;
                if t.is_multi() && stmt.plan.stmts.first().is_some_and(|s| s.split().is_some()) {
                    return Err(ProxyError::Unsupported(
                        "a multi-row INSERT whose rows belong to different shards is split only as a pipeline of its own ([Parse], Bind, [Describe], Execute, Sync); send a Sync before and after it".into(),
                    ));
                }
                if !matches!(route, RouteSpec::Any) {
                    merge(t, self)?;
                }
                // A read on several shards keeps its Bind in the proxy: a merge needs it, and a
                // plain concatenation does too when it is fetched with a row limit (JDBC's
                // setFetchSize, asyncpg cursors, tokio-postgres's query_portal).
                let merged = t.is_multi()
                    && stmt.plan.stmts.first().is_some_and(|s| {
                        s.gather().is_some()
                            || (s.kind == StmtKind::Read
                                && s.explain().is_none()
                                && s.copy().is_none())
                    });
                let portal = m.portal.to_string();
                let tail = m.tail_offset;
                if merged {
                    let gp = GatherPortal {
                        bind: f.clone(),
                        rows: None,
                        sent: 0,
                    };
                    self.gather_portals.insert(portal.clone(), gp);
                } else if !self.gather_portals.is_empty() {
                    self.gather_portals.remove(&portal);
                }
                let local = stmt.plan.stmts.first().is_some_and(|s| {
                    matches!(s.kind, StmtKind::Deallocate(_) | StmtKind::DiscardAll)
                });
                self.portals.insert(portal, (t, stmt.clone()));
                if local {
                    // Answered by the proxy at its Execute (below): no backend portal.
                    return Ok(Op::Local(BIND_COMPLETE));
                }
                Ok(Op::Bind(stmt, f, tail))
            }
            b'D' => {
                let (kind, name) = decode_target(f.body(), "Describe").map_err(proto)?;
                if kind == b'S' {
                    let stmt = self
                        .stmts
                        .get(name)
                        .cloned()
                        .ok_or_else(|| ProxyError::NoSuchStatement(name.to_string()))?;
                    Ok(Op::DescribeStmt(stmt))
                } else {
                    match self.portals.get(name).cloned() {
                        Some((_, stmt))
                            if stmt.plan.stmts.first().is_some_and(|s| {
                                matches!(s.kind, StmtKind::Deallocate(_) | StmtKind::DiscardAll)
                            }) =>
                        {
                            return Ok(Op::Local(NO_DATA));
                        }
                        Some((t, stmt)) => {
                            if !floats(&stmt) {
                                merge(t, self)?;
                            }
                        }
                        // A cursor made by SQL DECLARE (psycopg's named cursors describe it):
                        // it lives in the transaction, on the shard that ran the DECLARE.
                        None if self.txn.status.is_open() && !self.conns.is_empty() => {}
                        None => return Err(ProxyError::NoSuchPortal(name.to_string())),
                    }
                    Ok(Op::Raw(f, Expect::Describe))
                }
            }
            b'E' => {
                let (portal, max_rows) = decode_execute(f.body()).map_err(proto)?;
                let (t, stmt) = self
                    .portals
                    .get(portal)
                    .cloned()
                    .ok_or_else(|| ProxyError::NoSuchPortal(portal.to_string()))?;
                // A statement any shard answers (BEGIN, SET, SELECT 1) goes wherever the rest
                // of the pipeline goes.
                if !floats(&stmt) {
                    merge(t, self)?;
                }
                if stmt.plan.writes() {
                    fx.writes = true;
                }
                if self.txn.failed
                    && stmt.plan.stmts.first().is_some_and(|s| {
                        matches!(s.kind, StmtKind::Savepoint(SavepointOp::RollbackTo(_)))
                    })
                {
                    fx.recovers = true;
                }
                // Its Bind registered the portal as merged when it runs on several shards. A
                // plain concatenation fetched whole streams through the shards' own portals;
                // fetched in chunks, the proxy pages it.
                if let Some(g) = self.gather_portals.get(portal) {
                    let planned = stmt
                        .plan
                        .stmts
                        .first()
                        .is_some_and(|s| s.gather().is_some());
                    if planned || max_rows > 0 || g.rows.is_some() {
                        return Ok(Op::Gather(f, stmt));
                    }
                }
                if let Some(st) = stmt.plan.stmts.first() {
                    self.dirty |= st.dirties;
                    if st.kind == StmtKind::Ddl {
                        self.generated.refresh = true;
                        if self.txn.status.is_open() {
                            self.txn.ddl = true;
                        }
                    }
                    if matches!(st.kind, StmtKind::Deallocate(_) | StmtKind::DiscardAll) {
                        // Among other statements (psycopg's pipeline sends ROLLBACK then
                        // DEALLOCATE ALL): it acts on the client's statements as the proxy
                        // keeps them, never on the backend (whose statements are the proxy's).
                        // Its effect is applied now, before the statements ahead of it run.
                        let tag = self.apply_session_command(&st.kind)?;
                        let mut done = BytesMut::new();
                        build::command_complete(&mut done, tag);
                        return Ok(Op::Local(done.freeze()));
                    }
                    if matches!(
                        st.kind,
                        StmtKind::Set { .. }
                            | StmtKind::SetLocal
                            | StmtKind::Reset { .. }
                            | StmtKind::ResetAll
                    ) {
                        fx.settings
                            .push((st.kind.clone(), stmt.sql.trim().to_string()));
                    }
                    fx.reshapes |= st.reshapes;
                    fx.steps |= matches!(st.kind, StmtKind::Savepoint(_))
                        || super::txn::is_setting(&st.kind);
                    if matches!(st.kind, StmtKind::CopyIn) {
                        return Err(ProxyError::Unsupported(
                            "COPY FROM STDIN through the extended protocol is not supported; use a simple Query".into(),
                        ));
                    }
                }
                Ok(Op::Raw(f, Expect::Execute))
            }
            b'C' => {
                let (kind, name) = decode_target(f.body(), "Close").map_err(proto)?;
                if kind == b'S' {
                    self.stmts.remove(name);
                    Ok(Op::Local(CLOSE_COMPLETE))
                } else if self.gather_portals.contains_key(name) {
                    // A merged query's portal (sqlx: Bind, Execute, Close, Sync): the merge
                    // runs it first and forgets it at its Close.
                    match self.portals.get(name) {
                        Some((t, _)) => {
                            let t = *t;
                            merge(t, self)?;
                            Ok(Op::Raw(f, Expect::Close))
                        }
                        None => Ok(Op::Local(CLOSE_COMPLETE)),
                    }
                } else {
                    match self.portals.remove(name) {
                        Some((t, _)) => {
                            merge(t, self)?;
                            Ok(Op::Raw(f, Expect::Close))
                        }
                        // A cursor made by SQL DECLARE (psycopg closes its named cursors so):
                        // it lives in the transaction, on the shard that ran the DECLARE.
                        None if self.txn.status.is_open() && !self.conns.is_empty() => {
                            Ok(Op::Raw(f, Expect::Close))
                        }
                        None => Ok(Op::Local(CLOSE_COMPLETE)),
                    }
                }
            }
            other => Err(ProxyError::Protocol(format!(
                "unexpected message type {other} in a pipeline"
            ))),
        }
    }
}
