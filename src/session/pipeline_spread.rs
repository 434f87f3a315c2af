//! A batch of single-shard statements whose keys land on different shards, sent as one
//! pipeline: psycopg's and asyncpg's `executemany` (also SQLAlchemy's ORM flush of several
//! updated objects) of INSERTs/UPDATEs/SELECTs by key (issue 19).
//!
//! Postgres runs such a pipeline (up to its Sync) as one implicit transaction: every
//! statement commits, or none does; the first error skips the rest; replies come in order.
//! The proxy does the same across shards ([`Session::spread_batch`], [`Session::run_spread`]):
//! each shard gets `BEGIN`, the statement (prepared on it when needed) and its own Binds and
//! Executes in the client's order, then `Sync`; the replies are held, cut per message, and
//! handed to the client in the client's order up to the first error; then every shard
//! commits together (two-phase where available) or rolls back. Inside a transaction block
//! the executions join it instead (no BEGIN or commit of their own; an error aborts the
//! block, as in Postgres).
//!
//! Only the shape drivers send is taken: `[Parse] [Describe statement]` then, for each
//! execution, `Bind [Describe portal] Execute` of the unnamed portal, then `Sync`; every
//! statement a read or write on one shard. Anything else keeps the usual path.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::relay::RelayError;
use super::{Prepared, Session, SessionEnd, Target, TxnStatus};
use crate::error::ProxyError;
use crate::routing::router::{RouteSpec, StmtKind};
use crate::wire::protocol::{build, decode_target, BindMsg, Frame, ParseMsg};

/// One client message of a spread batch.
enum SpreadOp {
    /// The Parse (answered by the proxy once the statement is registered).
    Parse,
    /// Describe of the statement (asked of the first execution's shard).
    DescribeStmt,
    /// Bind of the unnamed portal on this shard; the frame and where its tail starts.
    Bind(usize, Frame, usize),
    /// Describe of that portal.
    DescribePortal(usize, Frame),
    /// Execute of that portal.
    Execute(usize, Frame),
}

impl SpreadOp {
    fn shard(&self) -> Option<usize> {
        match self {
            SpreadOp::Bind(s, ..) | SpreadOp::DescribePortal(s, _) | SpreadOp::Execute(s, _) => {
                Some(*s)
            }
            SpreadOp::Parse | SpreadOp::DescribeStmt => None,
        }
    }
}

/// A pipeline [`Session::run_spread`] runs.
pub(super) struct Spread {
    /// The statement executed.
    stmt: Arc<Prepared>,
    /// Its name, when the pipeline parses it.
    parsed_as: Option<String>,
    ops: Vec<SpreadOp>,
    /// The shards, in order of first use.
    shards: Vec<usize>,
}

impl Session {
    /// The spread batch `frames` (ending at a Sync, outside a transaction) is, if it is one
    /// (see the module docs) and its executions reach more than one shard.
    pub(super) fn spread_batch(&self, frames: &[Frame]) -> Option<Spread> {
        // Cheap checks first: this runs for every pipeline that reaches its Sync.
        let in_block = self.txn.status == TxnStatus::InBlock && !self.txn.failed;
        if !(self.txn.status.is_idle() || in_block)
            || self.session_mode
            || frames.iter().filter(|f| f.tag == b'E').nth(1).is_none()
        {
            return None;
        }
        let mut it = frames.iter().peekable();
        let mut ops = Vec::with_capacity(frames.len());
        let mut parsed: Option<(String, Arc<Prepared>)> = None;
        if let Some(p) = it.next_if(|f| f.tag == b'P') {
            let m = ParseMsg::decode(p.body()).ok()?;
            let full = self.stmts.len() >= super::MAX_CLIENT_STATEMENTS;
            if !m.name.is_empty() && (self.stmts.contains_key(m.name) || full) {
                return None; // a duplicate name, or too many: the usual path reports it
            }
            let stmt = match self.stmts.get("").filter(|s| s.is_unnamed_parse(p.body())) {
                Some(s) if m.name.is_empty() => s.clone(),
                _ => match self.peek_pending(p.body()) {
                    Some(s) => s.clone(),
                    None => {
                        let plan = self.topo.cache.get(&self.topo.map, m.query).ok()?;
                        if plan.generates() {
                            return None;
                        }
                        Arc::new(Prepared::new(m.query, m.param_types(), plan))
                    }
                },
            };
            parsed = Some((m.name.to_string(), stmt));
            ops.push(SpreadOp::Parse);
        }
        if it
            .next_if(|f| f.tag == b'D' && f.body().first() == Some(&b'S'))
            .is_some()
        {
            ops.push(SpreadOp::DescribeStmt);
        }
        let mut stmt: Option<Arc<Prepared>> = None;
        let mut shards: Vec<usize> = Vec::new();
        while let Some(b) = it.next() {
            if b.tag == b'S' {
                break;
            }
            if b.tag != b'B' {
                return None;
            }
            let m = BindMsg::decode(b.body()).ok()?;
            if !m.portal.is_empty() {
                return None;
            }
            let p = match &parsed {
                Some((name, p)) if name == m.statement => p.clone(),
                _ => self.stmts.get(m.statement)?.clone(),
            };
            if stmt.as_ref().is_some_and(|s| !Arc::ptr_eq(s, &p)) {
                return None; // one statement per batch (executemany's shape)
            }
            let st = p.plan.stmts.first()?;
            let simple_kind = matches!(st.kind, StmtKind::Read | StmtKind::Write)
                && p.plan.stmts.len() == 1
                && st.gather().is_none()
                && st.explain().is_none()
                && st.copy().is_none()
                && st.split().is_none()
                && !st.dirties
                && !matches!(st.route, RouteSpec::Any);
            if !simple_kind {
                return None;
            }
            let target = m.with_params(|params| {
                let is_binary = |i| m.is_binary(i);
                match self.params_utf8(params, &is_binary) {
                    Some(c) => {
                        let c: Vec<Option<&[u8]>> = c.iter().map(|v| v.as_deref()).collect();
                        self.resolve(&st.route, &c, &is_binary, Default::default())
                    }
                    None => self.resolve(&st.route, params, &is_binary, Default::default()),
                }
            });
            let Ok(Target::Shard(shard)) = target else {
                return None;
            };
            if !shards.contains(&shard) {
                shards.push(shard);
            }
            ops.push(SpreadOp::Bind(shard, b.clone(), m.tail_offset));
            if let Some(d) = it.next_if(|f| f.tag == b'D' && f.body().first() == Some(&b'P')) {
                if !decode_target(d.body(), "Describe").ok()?.1.is_empty() {
                    return None;
                }
                ops.push(SpreadOp::DescribePortal(shard, d.clone()));
            }
            let e = it.next().filter(|f| f.tag == b'E')?;
            ops.push(SpreadOp::Execute(shard, e.clone()));
            stmt = Some(p);
        }
        if it.next().is_some() || shards.len() < 2 {
            return None;
        }
        Some(Spread {
            stmt: stmt?,
            parsed_as: parsed.map(|(n, _)| n),
            ops,
            shards,
        })
    }

    /// Runs a [`Session::spread_batch`] pipeline (see the module docs). `sync`: it ended at
    /// a Sync; at a Flush (psycopg's pipeline mode: it reads the results, then sends Sync)
    /// the replies go out now and the shards' transactions stay open: the returned
    /// connections are committed (or rolled back) by [`Session::end_spread`] at the Sync.
    /// `Ok(Err(()))`: it failed at a Flush; the client's messages until Sync are skipped.
    pub(super) async fn run_spread(
        &mut self,
        sp: Spread,
        sync: bool,
    ) -> Result<Result<Option<Vec<usize>>, ()>, SessionEnd> {
        let r = match self.spread_inner(&sp, sync).await {
            Ok(r) => r,
            Err(RelayError::Client(e)) => return Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
                if sync {
                    self.push_ready();
                }
                Err(())
            }
        };
        self.release_if_idle(matches!(r, Ok(Some(_))));
        Ok(r)
    }

    /// The Sync after a spread pipeline ended at a Flush (see [`Session::run_spread`]):
    /// `frames` are the messages between them. None may come (more statements would join
    /// the implicit transaction on shards of their own: refused, and it rolls back);
    /// otherwise the shards commit together. `sync` false: another Flush, still open.
    pub(super) async fn end_spread(
        &mut self,
        idxs: Vec<usize>,
        frames: &mut Vec<Frame>,
        sync: bool,
    ) -> Result<Option<Vec<usize>>, SessionEnd> {
        if !frames.is_empty() {
            frames.clear();
            self.rollback_all(&idxs).await;
            self.push_error(&ProxyError::Unsupported(
                "after a Flush that ran statements on several shards, send Sync before other statements".into(),
            ));
            if sync {
                self.push_ready();
            }
            self.release_if_idle(false);
            return Ok(None);
        }
        if !sync {
            return Ok(Some(idxs));
        }
        match self.commit_all(&idxs).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.push_error(&e),
            Err(RelayError::Client(e)) => return Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
            }
        }
        self.push_ready();
        self.release_if_idle(false);
        Ok(None)
    }

    async fn spread_inner(
        &mut self,
        sp: &Spread,
        sync: bool,
    ) -> Result<Result<Option<Vec<usize>>, ()>, RelayError> {
        if let Some(name) = &sp.parsed_as {
            self.generated.any |= sp.stmt.gen.is_some();
            self.stmts.insert(name.clone(), sp.stmt.clone());
        }
        let refuse = |s: &mut Session, e: &ProxyError| {
            s.push_error(e);
            if sync {
                s.push_ready();
            }
        };
        // Inside a transaction block the executions join it (its shards, BEGIN included, and
        // its commit); outside, they are their own transaction across the shards.
        let in_txn = self.txn.status.is_open();
        if in_txn {
            let mut set = crate::sharding::shardset::ShardSet::default();
            for &s in &sp.shards {
                set.add(s);
            }
            let target = self.target_of(set);
            let writes = sp.stmt.plan.writes();
            if let Err(e) = self.check_write(target, writes, true) {
                self.txn.fail();
                refuse(self, &e);
                return Ok(Err(()));
            }
        }
        let idxs = match self.conns_for(sp.shards.iter().copied()).await {
            Ok(i) => i,
            Err(e) => {
                refuse(self, &e);
                return Ok(Err(()));
            }
        };
        let p = &sp.stmt;
        // Each shard: BEGIN, the statement when it lacks it, its own messages, Sync; its
        // replies cut per client message (in that shard's order). Shard after shard, each in
        // windows ended by a Flush whose replies are read before the next is written, so a
        // long batch never has both sides blocked writing to each other.
        let first_shard = sp.shards[0];
        let limit = self.topo.map.gather.memory_limit;
        let mut held = 0usize;
        let mut replies: Vec<VecDeque<(bool, Vec<Bytes>)>> = Vec::with_capacity(idxs.len());
        for (&shard, &ci) in sp.shards.iter().zip(&idxs) {
            let mut preamble = BytesMut::with_capacity(256);
            if !in_txn {
                build::query(&mut preamble, "BEGIN");
            }
            let prepare = !self.conns[ci].prepared.contains(&p.name_hash);
            if prepare {
                build::parse(&mut preamble, &p.backend_name, &p.sql, &p.types);
            }
            let mut msgs: Vec<BytesMut> = Vec::new();
            for op in &sp.ops {
                let mut m = BytesMut::new();
                match op {
                    SpreadOp::DescribeStmt if shard == first_shard => {
                        build::target(&mut m, b'D', b'S', &p.backend_name)
                    }
                    SpreadOp::Bind(s, f, tail) if *s == shard => {
                        build::bind_renamed(&mut m, "", &p.backend_name, &f.body()[*tail..])
                    }
                    SpreadOp::DescribePortal(s, f) | SpreadOp::Execute(s, f) if *s == shard => {
                        m.extend_from_slice(&f.raw)
                    }
                    _ => continue,
                }
                msgs.push(m);
            }
            let window = ShardWindow {
                ci,
                shard,
                preamble,
                msgs,
                begin: !in_txn,
                prepare,
                name_hash: p.name_hash,
            };
            match self.spread_shard(window, &mut held, limit).await? {
                Some(chunks) => replies.push(chunks),
                None => {
                    if in_txn {
                        self.txn.fail();
                    } else {
                        self.rollback_all(&idxs).await;
                    }
                    refuse(
                        self,
                        &ProxyError::OutOfMemory(format!(
                            "the replies of a pipeline across shards exceed gather.memory_limit_mb ({} MiB)",
                            limit >> 20
                        )),
                    );
                    return Ok(Err(()));
                }
            }
        }
        // The client's replies in its order, up to the first error.
        let mut failed = false;
        for op in &sp.ops {
            let shard = match op {
                SpreadOp::Parse => {
                    build::empty(&mut self.out, b'1');
                    continue;
                }
                SpreadOp::DescribeStmt => first_shard,
                other => other.shard().unwrap_or(first_shard),
            };
            let k = sp.shards.iter().position(|&s| s == shard).unwrap_or(0);
            let Some((error, frames)) = replies.get_mut(k).and_then(|q| q.pop_front()) else {
                failed = true; // (a shard stopped after its own error, met first)
                break;
            };
            for f in &frames {
                self.out.extend_from_slice(f);
            }
            if error {
                failed = true;
                break;
            }
        }
        if failed {
            if in_txn {
                self.txn.fail(); // aborted, as in Postgres: until ROLLBACK
            } else {
                self.rollback_all(&idxs).await;
            }
            if sync {
                self.push_ready();
            }
            return Ok(Err(()));
        }
        if in_txn {
            // The client's COMMIT commits it; a Flush leaves nothing open of its own.
            if sync {
                self.push_ready();
            }
            return Ok(Ok(None));
        }
        if !sync {
            return Ok(Ok(Some(idxs))); // committed at the client's Sync
        }
        if let Err(e) = self.commit_all(&idxs).await? {
            self.push_error(&e);
        }
        self.push_ready();
        debug_assert!(self.txn.status == TxnStatus::Idle);
        Ok(Ok(None))
    }
}

/// One shard's part of a spread batch (see [`Session::spread_shard`]).
struct ShardWindow {
    ci: usize,
    shard: usize,
    /// `BEGIN` (a simple query) and the statement's Parse, as needed.
    preamble: BytesMut,
    /// Its messages, one per client message it answers.
    msgs: Vec<BytesMut>,
    /// Whether the preamble holds BEGIN (its reply comes first).
    begin: bool,
    /// Whether the preamble holds the Parse (its ParseComplete comes next).
    prepare: bool,
    /// The statement's hash (what the connection remembers once it is prepared there).
    name_hash: u64,
}

/// Bytes of messages written to a shard before its replies are read.
const WINDOW_BYTES: usize = 64 * 1024;

impl Session {
    /// Runs one shard's part: its messages in windows of [`WINDOW_BYTES`] ended by a Flush,
    /// each window's replies read before the next is written (Postgres stops reading while
    /// its replies wait to be sent); after an error the shard skips to the Sync, so no more
    /// windows go. Its replies cut per message: (is an error, frames). `None`: they exceed
    /// `limit` with the others already held (`held`).
    async fn spread_shard(
        &mut self,
        w: ShardWindow,
        held: &mut usize,
        limit: usize,
    ) -> Result<Option<VecDeque<(bool, Vec<Bytes>)>>, RelayError> {
        let ShardWindow {
            ci,
            shard,
            preamble,
            msgs,
            begin,
            prepare,
            name_hash,
        } = w;
        let lost = |error| RelayError::Backend {
            shard,
            error,
            forwarded: false,
        };
        let mut chunks: VecDeque<(bool, Vec<Bytes>)> = VecDeque::new();
        let mut cur: Vec<Bytes> = Vec::new();
        let mut parse_done = !prepare;
        let mut begun = !begin;
        let mut failed = false;
        let mut next = 0usize;
        let mut out = preamble;
        loop {
            // The next window: messages up to WINDOW_BYTES, then Flush (or the final Sync).
            let from = next;
            while next < msgs.len() && (next == from || out.len() < WINDOW_BYTES) {
                out.extend_from_slice(&msgs[next]);
                next += 1;
            }
            let last = next >= msgs.len() || failed;
            build::empty(&mut out, if last { b'S' } else { b'H' });
            self.conns[ci].write_all(&out).await.map_err(lost)?;
            out.clear();
            // Replies expected: one completing frame per message of the window (none after
            // an error), or up to ReadyForQuery after the Sync.
            let mut expected = next - from;
            loop {
                if !last && (expected == 0 || failed) {
                    break;
                }
                let f = self.conns[ci].read_frame().await.map_err(lost)?;
                match f.tag {
                    b'Z' if !begun => begun = true, // BEGIN's own ReadyForQuery
                    b'C' if !begun => {}            // BEGIN's CommandComplete
                    b'Z' => break,
                    b'1' if !parse_done => parse_done = true,
                    b'E' => {
                        cur.push(f.raw);
                        chunks.push_back((true, std::mem::take(&mut cur)));
                        failed = true;
                    }
                    // A message's reply ends here: BindComplete, the Describe's last part,
                    // an Execute's completion.
                    b'2' | b'T' | b'n' | b'C' | b'I' | b's' => {
                        *held += f.raw.len();
                        cur.push(f.raw);
                        chunks.push_back((false, std::mem::take(&mut cur)));
                        expected = expected.saturating_sub(1);
                    }
                    _ => {
                        *held += f.raw.len();
                        cur.push(f.raw);
                    }
                }
                if *held > limit {
                    // (The shard is left mid-exchange: the caller rolls back or fails the
                    // block, and the connection is not reused as it is.)
                    self.conns[ci].broken = true;
                    return Ok(None);
                }
            }
            if last {
                break;
            }
            if failed {
                // The shard skips to a Sync: send it and read to its ReadyForQuery.
                let mut sync = BytesMut::new();
                build::empty(&mut sync, b'S');
                self.conns[ci].write_all(&sync).await.map_err(lost)?;
                loop {
                    if self.conns[ci].read_frame().await.map_err(lost)?.tag == b'Z' {
                        break;
                    }
                }
                break;
            }
        }
        if parse_done {
            self.conns[ci].prepared.insert(name_hash);
        }
        Ok(Some(chunks))
    }
}
