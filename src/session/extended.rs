//! The extended query protocol: Parse/Bind/Describe/Execute/Close collected up to Sync (or
//! Flush) and run as one unit on the shard(s) its Binds route to.
//!
//! Client statement names are session-local; on backends every statement is prepared under a
//! content-addressed name (`sw_<hash of SQL and types>`), so any pooled connection can run any
//! client's statement: a connection that lacks it gets a Parse injected in front of the Bind.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::gather::{Capture, GatherCall, GatherPortal};
use super::multiwrite::{ShardWrite, WriteProtocol};
use super::relay::{Expect, Outcome, RelayError};
use super::{
    Prepared, Session, SessionEnd, Target, Txn, MAX_BATCH_BYTES, MAX_CLIENT_STATEMENTS,
    SCRATCH_ITEMS,
};
use crate::error::ProxyError;
use crate::routing::router::{RouteSpec, SavepointOp, StmtKind};
use crate::sharding::shardset::ShardSet;
use crate::wire::protocol::{build, decode_execute, decode_target, BindMsg, Frame, ParseMsg};

/// A Bind body after the statement name that binds the client's parameters `take` (in that
/// order), each with its own format code, and asks for the client's result formats.
fn bind_tail(
    take: &[usize],
    params: &[Option<&[u8]>],
    is_binary: &dyn Fn(usize) -> bool,
    result_formats: &[i16],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(take.len() as i16).to_be_bytes());
    for &i in take {
        b.extend_from_slice(&(i16::from(is_binary(i))).to_be_bytes());
    }
    b.extend_from_slice(&(take.len() as i16).to_be_bytes());
    for &i in take {
        match params.get(i).copied().flatten() {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

/// Whether a statement touches no sharded data (route `Any`): it runs wherever the rest of
/// its pipeline runs instead of deciding the shard.
fn floats(stmt: &Prepared) -> bool {
    matches!(
        stmt.plan.stmts.first().map(|s| &s.route),
        Some(RouteSpec::Any) | None
    )
}

/// A pipeline the proxy runs itself (see [`Session::special_batch`]).
struct Special {
    /// The statement bound.
    stmt: Arc<Prepared>,
    /// Set when the pipeline parsed it (as the unnamed statement).
    parsed: Option<Arc<Prepared>>,
    /// The client's Bind message.
    bind: Frame,
    /// Where its parameters and result formats start in the body.
    tail_offset: usize,
    /// Whether the portal is described.
    describe: bool,
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
}

impl Batch {
    /// Whether an exchange is unfinished (a Flush left it open).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
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
}

/// What [`Session::shape_check`] found.
enum ShapeCheck {
    /// Every statement the connection had to prepare describes as the client holds it.
    Same,
    /// The statement bound by the op at this index now has another result shape.
    Changed(usize),
    /// Preparing a statement failed on the shard (its error); the shard skips to Sync.
    Failed(ProxyError),
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

/// ParseComplete, made by the proxy for a statement the connection already has.
const PARSE_COMPLETE: Bytes = Bytes::from_static(&[b'1', 0, 0, 0, 4]);
/// BindComplete, for a Bind the proxy answers itself.
pub(super) const BIND_COMPLETE: Bytes = Bytes::from_static(&[b'2', 0, 0, 0, 4]);
/// NoData, for a Describe of a portal the proxy answers itself.
const NO_DATA: Bytes = Bytes::from_static(&[b'n', 0, 0, 0, 4]);
/// CloseComplete, for a Close the proxy answers itself.
const CLOSE_COMPLETE: Bytes = Bytes::from_static(&[b'3', 0, 0, 0, 4]);

impl Session {
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
        if let Err(e) = self.enter().await {
            batch.frames.clear();
            batch.bytes = 0;
            self.push_error(&e);
            if sync {
                self.push_ready();
            } else {
                batch.skip_to_sync = true;
            }
            return Ok(());
        }
        if sync && batch.open.is_none() {
            if let Some(special) = self.special_batch(&batch.frames) {
                batch.frames.clear();
                batch.bytes = 0;
                return self.run_special(special).await;
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
        if sync && cut.is_none() && batch.open.is_none() && self.transaction_batch(&ops).await? {
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
        if cut.is_some() && self.txn.status == b'I' && batch.open.is_none() {
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
            && self.txn.status == b'T'
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
        if let Err(e) = self.check_write(target, fx.writes, self.txn.status != b'I') {
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
                    let atomic = fx.writes && self.txn.status == b'I';
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
        if sync && outcome.status != 0 {
            let was_idle = self.txn.status == b'I';
            for (kind, sql) in fx.settings {
                if outcome.error {
                    break;
                }
                if was_idle && outcome.status == b'I' {
                    if let Some(ch) = super::txn::setting_change(&kind, &sql) {
                        self.apply_setting(ch);
                    }
                } else if outcome.status == b'T' {
                    // A step of the transaction: shards it reaches later replay it too.
                    self.txn.record_setting(&kind, &sql);
                }
                for c in self.conns.iter_mut() {
                    c.settings_fp = super::settings::UNKNOWN_FP;
                }
            }
            if outcome.status == b'I' && self.txn.status != b'I' {
                self.txn = Txn::idle();
            }
            if outcome.status != b'I' && self.txn.prelude.is_none() {
                self.txn.prelude = Some("BEGIN".into());
            }
            self.txn.status = outcome.status;
            if outcome.status == b'E' {
                // One shard's failure fails the client's whole transaction.
                self.txn.fail();
            }
        }
        self.release_if_idle(batch.open.is_some());
        Ok(())
    }

    /// A pipeline the proxy runs itself rather than relaying it: [Parse] + Bind
    /// [+ Describe portal] + Execute + Sync of one statement that is
    /// - a `COPY … FROM STDIN` into a sharded or reference table (what drivers send for COPY);
    /// - outside a transaction, a write on several shards (a reference-table write, a keyless
    ///   UPDATE/DELETE, an INSERT … SELECT per shard, a multi-row INSERT whose constant keys
    ///   span shards): an all-or-nothing write.
    fn special_batch(&self, frames: &[Frame]) -> Option<Special> {
        let (parse, rest) = match frames.split_first()? {
            (p, rest) if p.tag == b'P' => (Some(p), rest),
            _ => (None, frames),
        };
        let (bind, rest) = rest.split_first()?;
        let describe = match rest {
            [e] if e.tag == b'E' => false,
            [d, e] if d.tag == b'D' && e.tag == b'E' => true,
            _ => return None,
        };
        if bind.tag != b'B' {
            return None;
        }
        // Most pipelines are not special: look at the plan first, and decode the Bind and
        // build a statement only for one that is. A Parse of the session's unnamed statement
        // again (drivers re-send it before every execution) is recognised without decoding.
        let (existing, parsed) = match parse {
            Some(p) => match self.stmts.get("").filter(|s| s.is_unnamed_parse(p.body())) {
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
        let may_be_special = st.copy.is_some()
            || (self.txn.status == b'I'
                && (st.split.is_some()
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
        let kind = if let Some(copy) = &st.copy {
            SpecialKind::Copy(copy.clone())
        } else if self.txn.status != b'I' {
            return None;
        } else if let Some(split) = &st.split {
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
                        let tail = bind_tail(&p.params, &params, &is_binary, &formats);
                        ShardWrite {
                            shard: p.shard,
                            sql: p.sql,
                            bind: Some((types, tail)),
                        }
                    })
                    .collect(),
                replicated: false,
            }
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
            kind,
        })
    }

    /// Runs a [`Session::special_batch`] pipeline. BindComplete (and NoData for a COPY)
    /// come from the proxy. After a COPY that started, the Sync that came before the data is
    /// ignored, as Postgres does: ReadyForQuery answers the Sync the client sends after
    /// CopyDone/CopyFail (libpq and tokio-postgres send one).
    async fn run_special(&mut self, sp: Special) -> Result<(), SessionEnd> {
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
                let protocol = WriteProtocol::Extended {
                    types: &sp.stmt.types,
                    bind_tail: sp.bind.body().get(sp.tail_offset..).unwrap_or(&[]),
                    describe: sp.describe,
                };
                let r = self.multi_write(work, protocol, *replicated, false).await;
                (r, false)
            }
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

    /// Text-format Bind parameters in UTF-8, for reading shard keys, when the client's
    /// encoding is not UTF-8 and some parameter is not plain ASCII; `None` otherwise (use them
    /// as sent). The shards still get the parameters as sent: they run in the client's
    /// encoding. Binary-format values are left alone (their bytes are not text in general;
    /// drivers that bind text in binary — asyncpg, pgx, JDBC, tokio-postgres — speak UTF-8).
    fn params_utf8<'p>(
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
                let m = ParseMsg::decode(f.body()).map_err(proto)?;
                let plan = self.topo.cache.get(&self.topo.map, m.query)?;
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
                let p = Arc::new(Prepared::new(m.query, m.param_types(), plan));
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
                if t.is_multi() && stmt.plan.stmts.first().is_some_and(|s| s.split.is_some()) {
                    return Err(ProxyError::Unsupported(
                        "a multi-row INSERT whose rows belong to different shards is split only outside a transaction block, as its own pipeline (Bind, Execute, Sync); insert the rows separately here".into(),
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
                        s.gather.is_some()
                            || (s.kind == StmtKind::Read && s.explain.is_none() && s.copy.is_none())
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
                        None if self.txn.status != b'I' && !self.conns.is_empty() => {}
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
                    let planned = stmt.plan.stmts.first().is_some_and(|s| s.gather.is_some());
                    if planned || max_rows > 0 || g.rows.is_some() {
                        return Ok(Op::Gather(f, stmt));
                    }
                }
                if let Some(st) = stmt.plan.stmts.first() {
                    self.dirty |= st.dirties;
                    if st.kind == StmtKind::Ddl && self.txn.status != b'I' {
                        self.txn.ddl = true;
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
                        None if self.txn.status != b'I' && !self.conns.is_empty() => {
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

    /// Runs operations on one shard.
    async fn batch_one(
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
                    let keep = if self.txn.status == b'I' && writes {
                        0
                    } else {
                        at
                    };
                    self.forget_later_statements(&ops[keep..]);
                    ops.truncate(keep);
                    own_cut = Some(ProxyError::Backend {
                        code: "0A000".into(),
                        message: super::shape::CHANGED.into(),
                    });
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
        let mut retry = sync && cut.is_none() && self.txn.status == b'I' && describes;
        let out_mark = self.out.len();
        loop {
            let (outcome, ex, added) = self
                .batch_one_exchange(idx, &ops, cut, sync, detached)
                .await?;
            if retry && outcome.stale && !outcome.flushed && outcome.status == b'I' {
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
            if cut.is_some() && sync && outcome.status == b'T' {
                // The shard's block is fine, the client's is failed (see below).
                outcome.status = b'E';
            }
            let open = outcome.error && !sync && !detached && cut.is_none();
            if outcome.error && (open || !added.is_empty()) {
                self.forget_statements(idx, &added, open).await?;
            }
            return Ok(Ok(outcome));
        }
    }

    /// Drops every statement the proxy kept on connection `idx` (`DEALLOCATE ALL`), so the
    /// next use prepares them again; `Some` when the backend failed.
    async fn fresh_statements(&mut self, idx: usize) -> Option<RelayError> {
        let shard = self.conns[idx].shard;
        let epoch = self
            .shared
            .schema_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        let conn = &mut self.conns[idx];
        match conn.run_simple("DEALLOCATE ALL").await {
            Ok(_) => {
                conn.prepared.clear();
                conn.prepared_epoch = epoch;
                None
            }
            Err(error) => Some(RelayError::Backend {
                shard,
                error,
                forwarded: false,
            }),
        }
    }

    /// Checks, before an exchange on connection `idx`, the statements its Binds use that the
    /// connection lacks and whose shape the client holds (see [`super::shape`]): each is
    /// prepared and described there (Parse, Describe, Flush — no Sync, so an implicit
    /// transaction the pipeline has open stays open) and its description compared.
    async fn shape_check(&mut self, idx: usize, ops: &[Op]) -> Result<ShapeCheck, RelayError> {
        let shard = self.conns[idx].shard;
        for (at, op) in ops.iter().enumerate() {
            let Op::Bind(p, ..) = op else { continue };
            if p.shape.changed() {
                return Ok(ShapeCheck::Changed(at));
            }
            let Some(held) = p.shape.known() else {
                continue;
            };
            if self.conns[idx].prepared.contains(&p.name_hash) {
                continue;
            }
            let conn = &mut self.conns[idx];
            let mut msg = BytesMut::new();
            build::parse(&mut msg, &p.backend_name, &p.sql, &p.types);
            build::target(&mut msg, b'D', b'S', &p.backend_name);
            build::empty(&mut msg, b'H');
            let backend = |error| RelayError::Backend {
                shard,
                error,
                forwarded: false,
            };
            conn.write_all(&msg).await.map_err(backend)?;
            loop {
                let f = conn.read_frame().await.map_err(backend)?;
                match f.tag {
                    b'E' => {
                        let (code, message) = crate::wire::protocol::error_fields(f.body());
                        self.shared.telemetry.error(&code);
                        return Ok(ShapeCheck::Failed(ProxyError::Backend { code, message }));
                    }
                    b'T' | b'n' => {
                        conn.prepared.insert(p.name_hash);
                        if super::shape::fingerprint(f.tag, f.body()) != Some(held) {
                            p.shape.mark_changed();
                            tracing::debug!(shard = %self.shard_name(shard), statement = %p.backend_name, "a prepared statement's result changed since the client described it");
                            return Ok(ShapeCheck::Changed(at));
                        }
                        break;
                    }
                    // ParseComplete, ParameterDescription, notices.
                    _ => {}
                }
            }
        }
        Ok(ShapeCheck::Same)
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
            build::error(&mut b, "ERROR", e.sqlstate(), &e.to_string());
            ex.push_back(Expect::Local(b.freeze()));
            self.txn.fail();
        }
        // An error the proxy adds inside a transaction block fails the block: the client's
        // ReadyForQuery says 'E' although the shard's block is fine.
        let failed_block = cut.is_some() && self.txn.status != b'I';
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

    /// Runs operations on every shard and merges the replies.
    async fn batch_all(
        &mut self,
        set: ShardSet,
        ops: Vec<Op>,
        cut: Option<&ProxyError>,
        atomic: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let idxs = match self.conns_for(set.iter()).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        // Statements the batch uses must exist on every connection first.
        let mut needed: Vec<Arc<Prepared>> = Vec::new();
        for op in &ops {
            if let Op::Parse(p) | Op::Bind(p, _, _) | Op::DescribeStmt(p) = op {
                if !needed.iter().any(|x| x.name_hash == p.name_hash) {
                    needed.push(p.clone());
                }
            }
        }
        for &i in &idxs {
            let missing: Vec<Arc<Prepared>> = needed
                .iter()
                .filter(|p| !self.conns[i].prepared.contains(&p.name_hash))
                .cloned()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let mut msg = BytesMut::new();
            let mut ex = VecDeque::new();
            for p in &missing {
                build::parse(&mut msg, &p.backend_name, &p.sql, &p.types);
                ex.push_back(Expect::Parse { swallow: true });
            }
            build::empty(&mut msg, b'S');
            ex.push_back(Expect::Query { hide_ready: true });
            let shard = self.conns[i].shard;
            if let Err(error) = self.conns[i].write_all(&msg).await {
                return Err(RelayError::Backend {
                    shard,
                    error,
                    forwarded: false,
                });
            }
            let o = self.relay_one(i, &mut ex, false).await?;
            if o.error {
                // The error was forwarded; end the exchange like Postgres would.
                build::ready_for_query(&mut self.out, o.status);
                return Ok(Ok(Outcome {
                    status: o.status,
                    error: true,
                    ..Default::default()
                }));
            }
            for p in &missing {
                self.conns[i].prepared.insert(p.name_hash);
            }
        }
        // A pipeline that writes on several shards outside a transaction runs inside one on
        // each shard and ends with their joint commit (two-phase where available), so a
        // failure on one shard leaves nothing applied on the others.
        let atomic = atomic && cut.is_none() && idxs.len() > 1;
        if atomic {
            for &i in &idxs {
                let shard = self.conns[i].shard;
                match self.conns[i].run_simple("BEGIN").await {
                    Ok((None, _)) => {}
                    Ok((Some((code, message)), _)) => {
                        self.rollback_all(&idxs).await;
                        return Ok(Err(ProxyError::Backend { code, message }));
                    }
                    Err(error) => {
                        return Err(RelayError::Backend {
                            shard,
                            error,
                            forwarded: true,
                        })
                    }
                }
            }
        }
        let mut msg = BytesMut::with_capacity(256);
        let mut seen_backend_op = false;
        let replicated = ops.iter().any(|op| match op {
            Op::Bind(p, _, _) => p.plan.replicated(),
            _ => false,
        });
        for op in ops {
            match op {
                Op::Parse(_) | Op::Local(_) if seen_backend_op => {
                    if atomic {
                        self.rollback_all(&idxs).await;
                    }
                    return Ok(Err(ProxyError::Unsupported(
                        "in a pipeline that runs on all shards, Parse and Close of statements must come before Bind/Execute".into(),
                    )));
                }
                Op::Parse(_) => build::empty(&mut self.out, b'1'),
                Op::Local(b) => self.out.extend_from_slice(&b),
                Op::Bind(p, f, tail) => {
                    seen_backend_op = true;
                    let body = f.body();
                    let portal_end = body.iter().position(|&b| b == 0).unwrap_or(0);
                    let portal = std::str::from_utf8(&body[..portal_end]).unwrap_or("");
                    build::bind_renamed(&mut msg, portal, &p.backend_name, &body[tail..]);
                }
                Op::DescribeStmt(p) => {
                    seen_backend_op = true;
                    build::target(&mut msg, b'D', b'S', &p.backend_name);
                }
                Op::Raw(f, e) => {
                    seen_backend_op = true;
                    if matches!(e, Expect::Close) {
                        self.forget_closed_portal(&f);
                    }
                    msg.extend_from_slice(&f.raw);
                }
                Op::Gather(f, _) => {
                    seen_backend_op = true;
                    msg.extend_from_slice(&f.raw);
                }
            }
        }
        build::empty(&mut msg, b'S');
        self.send_to_all(&idxs, &msg).await?;
        let hide = cut.is_some() || atomic;
        let mut o = self.relay_all(&idxs, hide, replicated).await?;
        if atomic {
            if o.error {
                self.rollback_all(&idxs).await;
            } else if let Err(e) = self.commit_all(&idxs).await? {
                self.push_error(&e);
                o.error = true;
            }
            o.status = b'I';
            build::ready_for_query(&mut self.out, b'I');
            return Ok(Ok(o));
        }
        if let Some(e) = cut {
            if !o.error {
                build::error(&mut self.out, "ERROR", e.sqlstate(), &e.to_string());
                o.error = true;
                if o.status == b'T' {
                    o.status = b'E';
                    self.txn.fail();
                }
            }
            build::ready_for_query(&mut self.out, o.status);
        }
        Ok(Ok(o))
    }

    /// Runs a pipeline that executes a merged (multi-shard) query: Parse/Bind/Close are
    /// answered here, Describe of statements runs on one shard, each Execute through
    /// [`Session::gather`]. An Execute with a row limit (cursor-style fetching, e.g. JDBC's
    /// fetchSize) runs the query once, keeps its rows (bounded by the gather memory limit)
    /// and hands them out chunk by chunk with PortalSuspended, as Postgres does.
    /// Turns the Execute of each portal the proxy keeps for a plain multi-shard read (see
    /// the Bind in `prepare_op`) into a merged execution, so the proxy runs it to completion.
    fn concatenations_as_gathers(&self, ops: &mut [Op]) {
        for op in ops.iter_mut() {
            let Op::Raw(f, Expect::Execute) = op else {
                continue;
            };
            let Ok((portal, _)) = decode_execute(f.body()) else {
                continue;
            };
            if !self.gather_portals.contains_key(portal) {
                continue;
            }
            if let Some((_, stmt)) = self.portals.get(portal) {
                *op = Op::Gather(f.clone(), stmt.clone());
            }
        }
    }

    async fn batch_gather(
        &mut self,
        set: ShardSet,
        ops: Vec<Op>,
        cut: Option<&ProxyError>,
        ready: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let mut describe = false;
        let mut outcome = Outcome {
            status: self.txn.status,
            error: false,
            ..Default::default()
        };
        for op in ops {
            match op {
                Op::Parse(_) => build::empty(&mut self.out, b'1'),
                Op::Local(b) => self.out.extend_from_slice(&b),
                Op::DescribeStmt(p) => match self.describe_on_one(&p).await? {
                    Ok(o) if o.error => {
                        outcome = o;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => return Ok(Err(e)),
                },
                Op::Bind(_, f, _) => {
                    let merged = BindMsg::decode(f.body())
                        .map(|m| self.gather_portals.contains_key(m.portal))
                        .unwrap_or(false);
                    if !merged {
                        return Ok(Err(ProxyError::Unsupported(
                            "a pipeline with a query merged across shards may not bind other multi-shard statements before Sync".into(),
                        )));
                    }
                    build::empty(&mut self.out, b'2');
                }
                Op::Raw(_, Expect::Describe) => describe = true,
                Op::Raw(f, Expect::Close) => {
                    self.forget_closed_portal(&f);
                    build::empty(&mut self.out, b'3');
                }
                Op::Gather(f, p) => {
                    let (portal, max_rows) =
                        decode_execute(f.body()).map_err(|e| RelayError::Client(e.into()))?;
                    let portal = portal.to_string();
                    outcome = match self.execute_merged(set, &portal, &p, max_rows, describe).await? {
                        Ok(o) => o,
                        Err(e) => return Ok(Err(e)),
                    };
                    describe = false;
                    if outcome.error {
                        break; // Postgres skips the rest of the pipeline after an error
                    }
                }
                Op::Raw(..) => {
                    return Ok(Err(ProxyError::Unsupported(
                        "a pipeline with a query merged across shards may hold only that query's Parse/Bind/Describe/Execute/Close before Sync".into(),
                    )))
                }
            }
        }
        if let Some(e) = cut {
            if !outcome.error {
                build::error(&mut self.out, "ERROR", e.sqlstate(), &e.to_string());
                outcome.error = true;
                if self.txn.status != b'I' {
                    self.txn.fail();
                    outcome.status = b'E';
                }
            }
        }
        if outcome.status == 0 {
            outcome.status = b'I';
        }
        if ready {
            build::ready_for_query(&mut self.out, outcome.status);
        }
        Ok(Ok(outcome))
    }

    /// One Execute of a merged query's portal.
    async fn execute_merged(
        &mut self,
        set: ShardSet,
        portal: &str,
        p: &Arc<Prepared>,
        max_rows: i32,
        describe: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        // A read without a merge plan is a concatenation of the shards' rows.
        let gp = match p.plan.stmts.first().and_then(|s| s.gather.clone()) {
            Some(gp) => gp,
            None => Arc::new(crate::gather::GatherPlan::concatenation(&p.sql)),
        };
        let Some(bind) = self.gather_portals.get(portal).map(|g| g.bind.clone()) else {
            return Ok(Err(ProxyError::NoSuchPortal(portal.to_string())));
        };
        let fetched = self
            .gather_portals
            .get(portal)
            .is_some_and(|g| g.rows.is_some());
        let m = BindMsg::decode(bind.body()).map_err(|e| RelayError::Client(e.into()))?;
        let call = GatherCall {
            plan: &gp,
            sql: &p.sql,
            param_types: &p.types,
            bind: Some(&m),
            describe,
        };
        if max_rows <= 0 && !fetched {
            // The usual case: run and stream everything.
            let o = self.gather(&call, set, true).await?;
            if let Some(g) = self.gather_portals.get_mut(portal) {
                g.rows = Some(Default::default()); // ran to completion
            }
            return Ok(Ok(o));
        }
        if !fetched {
            // First fetch: run the query with its output captured.
            let start = self.out.len();
            // All portals of the session share one gather memory limit.
            let held: usize = self.gather_portals.values().map(|g| g.held()).sum();
            self.capture = Some(Capture {
                start,
                limit: self.topo.map.gather.memory_limit.saturating_sub(held),
                overflow: false,
            });
            let r = self.gather(&call, set, true).await;
            let cap = self.capture.take();
            let o = r?;
            let captured = self.out.split_off(start);
            if cap.is_some_and(|c| c.overflow) {
                let e = ProxyError::Backend {
                    code: "53200".into(),
                    message: format!(
                        "fetching a multi-shard result in chunks keeps it in the proxy, and it needs more than what is left of the gather memory limit ({} MiB, gather.memory_limit_mb, shared by the session's open portals); fetch all rows at once, add a shard key or a LIMIT, or raise the limit",
                        self.topo.map.gather.memory_limit >> 20
                    ),
                };
                self.push_error(&e);
                return Ok(Ok(Outcome {
                    status: self.txn.status,
                    error: true,
                    ..Default::default()
                }));
            }
            let mut rows = std::collections::VecDeque::new();
            let captured = captured.freeze();
            let mut at = 0;
            while at + 5 <= captured.len() {
                let len = i32::from_be_bytes([
                    captured[at + 1],
                    captured[at + 2],
                    captured[at + 3],
                    captured[at + 4],
                ])
                .max(4) as usize;
                let end = (at + 1 + len).min(captured.len());
                match captured[at] {
                    b'D' => rows.push_back(captured.slice(at..end)),
                    b'C' => {}
                    _ => self.out.extend_from_slice(&captured[at..end]),
                }
                at = end;
            }
            if o.error {
                return Ok(Ok(o));
            }
            if let Some(g) = self.gather_portals.get_mut(portal) {
                g.rows = Some(rows);
            }
        }
        // Hand out the next chunk.
        let Some(g) = self.gather_portals.get_mut(portal) else {
            return Ok(Err(ProxyError::NoSuchPortal(portal.to_string())));
        };
        let rows = g.rows.get_or_insert_with(Default::default);
        let n = if max_rows <= 0 {
            rows.len()
        } else {
            (max_rows as usize).min(rows.len())
        };
        for r in rows.drain(..n) {
            self.out.extend_from_slice(&r);
        }
        g.sent += n as u64;
        self.shared.telemetry.gathered_rows.increment(n as u64);
        if rows.is_empty() {
            let tag = format!("SELECT {}", g.sent);
            build::command_complete(&mut self.out, &tag);
        } else {
            build::empty(&mut self.out, b's');
        }
        Ok(Ok(Outcome {
            status: self.txn.status,
            error: false,
            ..Default::default()
        }))
    }

    /// Describe of a statement on one shard (ParameterDescription + RowDescription/NoData);
    /// a shard error is forwarded.
    /// Answers a batch of Parse/Describe-statement messages inside a transaction that holds
    /// no connection: each statement is described on a connection outside the transaction.
    /// An error fails the client's transaction, as the same error would in Postgres.
    async fn describe_only(
        &mut self,
        ops: Vec<Op>,
        cut: Option<&ProxyError>,
        sync: bool,
    ) -> Result<(), SessionEnd> {
        let mut failed = false;
        for op in ops {
            match op {
                Op::Parse(_) => build::empty(&mut self.out, b'1'),
                Op::Local(b) => self.out.extend_from_slice(&b),
                Op::DescribeStmt(p) => match self.describe_on_one(&p).await {
                    Ok(Ok(o)) if !o.error => {}
                    Ok(Ok(_)) => {
                        failed = true;
                        break;
                    }
                    Ok(Err(e)) => {
                        self.push_error(&e);
                        failed = true;
                        break;
                    }
                    Err(RelayError::Client(e)) => return Err(e),
                    Err(RelayError::Backend { shard, error, .. }) => {
                        self.push_error(&ProxyError::ShardUnavailable {
                            shard: self.shard_name(shard),
                            reason: error.to_string(),
                        });
                        failed = true;
                        break;
                    }
                },
                _ => {}
            }
        }
        if failed {
            self.txn.fail();
        } else if let Some(e) = cut {
            self.push_error(e);
        }
        if sync {
            self.push_ready();
        }
        Ok(())
    }

    /// A Close of a multi-shard portal whose forgetting was deferred to when its pipeline runs
    /// (see `prepare_op`): the proxy forgets the portal now.
    fn forget_closed_portal(&mut self, close: &Frame) {
        if let Ok((b'P', name)) = decode_target(close.body(), "Close") {
            self.gather_portals.remove(name);
            self.portals.remove(name);
        }
    }

    /// Checks that `p` parses and plans on a shard (see [`Session::describe_on_one`]);
    /// returns whether it failed (the error is queued for the client).
    async fn parse_fails(&mut self, p: &Arc<Prepared>) -> Result<bool, SessionEnd> {
        match self.parse_on_one(p, false).await {
            Ok(Ok(o)) => Ok(o.error), // a shard's error was forwarded
            Ok(Err(e)) => {
                self.push_error(&e);
                Ok(true)
            }
            Err(RelayError::Client(e)) => Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
                Ok(true)
            }
        }
    }

    async fn describe_on_one(
        &mut self,
        p: &Arc<Prepared>,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        self.parse_on_one(p, true).await
    }

    /// Parses `p` as the unnamed statement on one shard (with `describe`, also describes it
    /// to the client), outside the transaction when it holds no connection yet.
    async fn parse_on_one(
        &mut self,
        p: &Arc<Prepared>,
        describe: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let shard = self.any_shard();
        // Inside a transaction that holds no connection yet, describe on a connection outside
        // it (nothing the transaction created can be involved: it has not run anything).
        let outside = self.txn.status != b'I' && self.conns.is_empty() && !self.session_mode;
        let status = self.txn.status;
        if outside {
            self.txn.status = b'I'; // no BEGIN on the connection
        }
        let idx = self.conn_for(shard).await;
        self.txn.status = status;
        let idx = match idx {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let mut msg = BytesMut::new();
        build::parse(&mut msg, "", &p.sql, &p.types);
        if describe {
            build::target(&mut msg, b'D', b'S', "");
        }
        build::empty(&mut msg, b'S');
        if let Err(error) = self.conns[idx].write_all(&msg).await {
            return Err(RelayError::Backend {
                shard,
                error,
                forwarded: false,
            });
        }
        let mut ex = VecDeque::new();
        ex.push_back(Expect::Parse { swallow: true });
        if describe {
            ex.push_back(Expect::DescribeStmt(p.clone()));
        }
        ex.push_back(Expect::Query { hide_ready: true });
        let r = self.relay_one(idx, &mut ex, false).await.map(Ok);
        if outside && idx < self.conns.len() {
            // It never joined the transaction: back to the pool.
            let c = self.conns.remove(idx);
            if !self.cancel_slot.release_last() {
                c.release();
            }
        }
        r
    }
}
