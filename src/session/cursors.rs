//! Cursors the proxy keeps itself: `DECLARE … CURSOR` over a query that runs on several
//! shards, and every `WITH HOLD` cursor.
//!
//! A kept cursor is a cursor of the same name on each shard its query reaches (declared
//! `NO SCROLL`, over the merge plan's shard query: its ORDER BY keys as hidden binary
//! columns, LIMIT pushed down). Each client `FETCH n` fetches forward from the shards in
//! chunks (at most [`CHUNK`] rows a shard at a time) and k-way merges their heads on the
//! hidden keys ([`super::cursor_fetch`]), so the proxy holds at most a chunk per shard
//! whatever the result's size. A query the proxy cannot merge as it streams (aggregates,
//! DISTINCT, text keys in a non-C collation) is gathered at DECLARE within the gather memory
//! budget and handed out from there.
//!
//! Lifetime, as in Postgres: a cursor without `WITH HOLD` needs a transaction block and ends
//! with it; a `WITH HOLD` cursor outlives it. Under transaction pooling the backends a held
//! cursor lives on are pinned to the session (taken out of the pool) until its `CLOSE` or the
//! client leaves; they are then closed, not pooled. Only forward fetching is supported:
//! `FETCH [NEXT | n | FORWARD n | ALL | FORWARD ALL]` and `MOVE` of the same forms; other
//! directions and `SCROLL` get 0A000.
//!
//! A cursor of one shard without `WITH HOLD` stays that shard's (its DECLARE and FETCH are
//! forwarded); the proxy remembers where it lives so FETCH, MOVE and CLOSE reach it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::relay::{Outcome, RelayError};
use super::{Session, Target};
use crate::backend::pool::PooledConn;
use crate::error::ProxyError;
use crate::gather::datum::Field;
use crate::gather::{GatherPlan, Mode};
use crate::routing::router::{CursorCmd, Declare};
use crate::wire::protocol::{build, BindMsg, Frame};

/// Most rows fetched from one shard at a time.
pub(super) const CHUNK: i64 = 1000;
/// Fewest rows fetched from one shard at a time (a FETCH of a few rows still fetches this many).
pub(super) const MIN_CHUNK: i64 = 100;

/// The session's kept cursors and the backends pinned for them.
#[derive(Default)]
pub(super) struct Cursors {
    /// Kept cursors by name.
    pub kept: super::FastMap<String, Kept>,
    /// Cursors of one shard, forwarded: where each lives.
    pub on_shard: super::FastMap<String, usize>,
    /// Backends held past their transaction by `WITH HOLD` cursors.
    pub pinned: Vec<PooledConn>,
    /// Cursors made for unnamed portals so far (their names are `_sw_portal_<n>`).
    pub serial: u64,
}

/// Byte ranges of a row's values.
pub(super) type Values = Vec<Option<(usize, usize)>>;

/// One kept cursor.
pub(super) struct Kept {
    /// The DECLARE; its name is the cursors' on the shards (for a portal's cursor, not the
    /// portal's: a name the client may reuse for another portal in the same transaction).
    pub decl: Arc<Declare>,
    /// The merge plan (sort keys, hidden columns, LIMIT/OFFSET).
    pub plan: Arc<GatherPlan>,
    /// The visible columns.
    pub fields: Vec<Field>,
    /// Types of the sort keys.
    pub key_types: Vec<u32>,
    /// One stream per shard, in shard order.
    pub streams: Vec<Stream>,
    /// Rows still to skip (OFFSET).
    pub skip: i64,
    /// Rows still to hand out (LIMIT).
    pub left: i64,
    /// Formats of the visible columns of the rows buffered now.
    pub formats: Vec<i16>,
    /// Rows gathered at DECLARE, when the query could not be merged as it streams.
    pub gathered: Option<VecDeque<Bytes>>,
}

/// One shard's side of a kept cursor.
pub(super) struct Stream {
    /// The shard.
    pub shard: usize,
    /// The backend holding the shard's cursor.
    pub pid: i32,
    /// Rows fetched and not merged yet.
    pub rows: VecDeque<(Frame, Values)>,
    /// Bytes in `rows`.
    pub bytes: usize,
    /// The shard's cursor is exhausted.
    pub done: bool,
}

impl Kept {
    /// Whether rows are buffered (fetched in `formats`).
    pub fn buffered(&self) -> bool {
        self.streams.iter().any(|s| !s.rows.is_empty())
            || self.gathered.as_ref().is_some_and(|g| !g.is_empty())
    }
}

/// The parameters of a DECLARE sent through the extended protocol.
pub(super) struct DeclareParams<'a> {
    /// Parameter types the client declared.
    pub types: &'a [u32],
    /// The client's Bind.
    pub bind: &'a BindMsg<'a>,
}

/// Why a kept cursor's statement failed.
pub(super) enum Fail {
    /// The proxy's own error.
    Proxy(ProxyError),
    /// A shard's ErrorResponse, forwarded as is.
    Shard(Frame),
    /// The error is already queued for the client.
    Sent,
}

impl From<ProxyError> for Fail {
    fn from(e: ProxyError) -> Self {
        Fail::Proxy(e)
    }
}

/// A kept cursor statement's command tag, or why it failed.
pub(super) type Done = Result<Result<String, Fail>, RelayError>;

/// Postgres's error for a cursor name it does not know.
pub(super) fn missing(name: &str) -> ProxyError {
    ProxyError::Backend {
        code: "34000".into(),
        message: format!("cursor \"{name}\" does not exist"),
    }
}

type Step = Result<Result<Outcome, ProxyError>, RelayError>;

impl Session {
    /// Whether the session keeps cursors (then FETCH/CLOSE and Describe are looked at).
    pub(super) fn keeps_cursors(&self) -> bool {
        self.cursors
            .as_ref()
            .is_some_and(|c| !c.kept.is_empty() || !c.on_shard.is_empty())
    }

    /// Whether `name` is a cursor the proxy keeps.
    pub(super) fn kept_cursor(&self, name: &str) -> Option<&Kept> {
        self.cursors.as_ref().and_then(|c| c.kept.get(name))
    }

    pub(super) fn cursors_mut(&mut self) -> &mut Cursors {
        self.cursors.get_or_insert_with(Default::default)
    }

    /// Whether the proxy keeps the cursor a DECLARE makes: over several shards, or `WITH HOLD`.
    pub(super) fn keeps(d: &Declare, target: Target) -> bool {
        d.hold || target.is_multi()
    }

    /// A cursor statement through the simple protocol (or one statement of a script).
    pub(super) async fn cursor_simple(
        &mut self,
        cmd: &CursorCmd,
        sql: &str,
        target: Target,
        hide_ready: bool,
    ) -> Step {
        let r = match cmd {
            CursorCmd::Declare(d) if Self::keeps(d, target) => {
                self.declare_kept(d, target, None).await?
            }
            CursorCmd::Declare(d) => {
                let Target::Shard(s) = target else {
                    return Ok(Err(ProxyError::Internal("cursor target".into())));
                };
                let r = self.exec_query_one(s, sql, hide_ready).await?;
                if matches!(r, Ok(ref o) if !o.error) {
                    self.cursors_mut().on_shard.insert(d.name.clone(), s);
                }
                return Ok(r);
            }
            CursorCmd::Fetch(f) if self.kept_cursor(&f.name).is_some() => {
                let formats = self.simple_formats(&f.name);
                self.fetch_kept(f, &formats, !f.is_move).await?
            }
            CursorCmd::Close(Some(name)) if self.kept_cursor(name).is_some() => self
                .close_kept(name)
                .await
                .map(|()| "CLOSE CURSOR".to_string()),
            CursorCmd::Close(None) if self.keeps_cursors() => {
                self.close_all_cursors().await;
                // The shards' own cursors: on every backend the session holds.
                let mut held = crate::sharding::shardset::ShardSet::default();
                for c in self.conns.iter() {
                    held.add(c.shard);
                }
                match held.len() {
                    0 => Ok("CLOSE CURSOR ALL".to_string()),
                    _ => {
                        let t = self.target_of(held);
                        return self.forward_cursor_cmd(sql, t, hide_ready).await;
                    }
                }
            }
            other => {
                // A cursor of one shard: where it lives (else wherever the route says).
                let name = other.target();
                let t = name
                    .and_then(|n| self.cursors.as_ref().and_then(|c| c.on_shard.get(n)))
                    .map_or(target, |&s| Target::Shard(s));
                if let (CursorCmd::Close(Some(n)), Some(c)) = (other, self.cursors.as_mut()) {
                    c.on_shard.remove(n);
                }
                return self.forward_cursor_cmd(sql, t, hide_ready).await;
            }
        };
        Ok(Ok(self.cursor_reply(r, hide_ready)))
    }

    /// Sends a cursor statement the proxy does not keep on as written.
    async fn forward_cursor_cmd(&mut self, sql: &str, t: Target, hide_ready: bool) -> Step {
        match t {
            Target::Shard(s) => self.exec_query_one(s, sql, hide_ready).await,
            // (CLOSE ALL on every held backend: one reply, as from one Postgres.)
            Target::Set(set) => self.exec_query_all(set, sql, hide_ready, true).await,
        }
    }

    /// For a cursor statement bound in a pipeline the proxy relays: a DECLARE on one shard is
    /// remembered there; a FETCH/MOVE/CLOSE of such a cursor is sent there (`t` is set to it,
    /// and true returned).
    pub(super) fn cursor_shard(&mut self, cmd: &CursorCmd, t: &mut Target) -> bool {
        match (cmd, *t) {
            (CursorCmd::Declare(d), Target::Shard(s)) => {
                self.cursors_mut().on_shard.insert(d.name.clone(), s);
                false
            }
            (CursorCmd::Declare(_), _) => false,
            (other, _) => {
                let Some(&s) = other
                    .target()
                    .and_then(|n| self.cursors.as_ref().and_then(|c| c.on_shard.get(n)))
                else {
                    return false;
                };
                if let (CursorCmd::Close(Some(n)), Some(c)) = (other, self.cursors.as_mut()) {
                    c.on_shard.remove(n);
                }
                *t = Target::Shard(s);
                true
            }
        }
    }

    /// Queues a kept cursor statement's tag or error (and ReadyForQuery unless hidden).
    pub(super) fn cursor_reply(&mut self, r: Result<String, Fail>, hide_ready: bool) -> Outcome {
        let error = match r {
            Ok(tag) => {
                build::command_complete(&mut self.out, &tag);
                false
            }
            Err(f) => {
                match f {
                    Fail::Proxy(e) => self.push_error(&e),
                    Fail::Shard(frame) => self.out.extend_from_slice(&frame.raw),
                    Fail::Sent => {}
                }
                self.txn.fail();
                true
            }
        };
        if !hide_ready {
            build::ready_for_query(&mut self.out, self.txn.status.byte());
        }
        Outcome {
            status: Some(self.txn.status),
            error,
            ..Default::default()
        }
    }

    /// The formats a simple-protocol FETCH returns: binary for a `BINARY` cursor.
    fn simple_formats(&self, name: &str) -> Vec<i16> {
        match self.kept_cursor(name) {
            Some(k) => vec![i16::from(k.decl.binary); k.fields.len()],
            None => Vec::new(),
        }
    }

    /// Declares a kept cursor on the shards of `target`; returns its tag.
    pub(super) async fn declare_kept(
        &mut self,
        d: &Arc<Declare>,
        target: Target,
        params: Option<DeclareParams<'_>>,
    ) -> Done {
        if !d.hold && self.txn.status.is_idle() {
            return Ok(Err(Fail::Proxy(ProxyError::Backend {
                code: "25P01".into(),
                message: "DECLARE CURSOR can only be used in transaction blocks".into(),
            })));
        }
        if d.scroll {
            return Ok(Err(Fail::Proxy(ProxyError::Unsupported(format!(
                "SCROLL cursors are not supported for cursor \"{}\" (its query runs on several shards, or it is WITH HOLD): declare it NO SCROLL and fetch forward only",
                d.name
            )))));
        }
        if self.kept_cursor(&d.name).is_some() {
            return Ok(Err(Fail::Proxy(ProxyError::Backend {
                code: "42P03".into(),
                message: format!("cursor \"{}\" already exists", d.name),
            })));
        }
        let plan = match (&d.merge, target) {
            (Ok(p), _) => p.clone(),
            (Err(_), Target::Shard(_)) => Arc::new(GatherPlan::concatenation(&d.query)),
            (Err(e), Target::Set(_)) => return Ok(Err(Fail::Proxy(e.clone()))),
        };
        let shards: Vec<usize> = match target {
            Target::Shard(s) => vec![s],
            Target::Set(set) => set.iter().collect(),
        };
        if matches!(plan.mode, Mode::Combine(_)) {
            return self.declare_gathered(d, plan, target, params).await;
        }
        match self
            .declare_streams(d, &plan, &shards, params.as_ref())
            .await?
        {
            Ok(Some(kept)) => {
                self.cursors_mut().kept.insert(d.name.clone(), kept);
                self.pin_held();
                Ok(Ok("DECLARE CURSOR".into()))
            }
            // Its sort keys cannot be compared here: gathered instead.
            Ok(None) => self.declare_gathered(d, plan, target, params).await,
            Err(f) => Ok(Err(f)),
        }
    }

    /// Closes a kept cursor on its shards and forgets it. A shard whose cursor is gone (a
    /// `WITH HOLD` cursor whose transaction rolled back) says so: its error is returned.
    pub(super) async fn close_kept(&mut self, name: &str) -> Result<(), Fail> {
        let Some(k) = self.cursors.as_mut().and_then(|c| c.kept.remove(name)) else {
            return Ok(());
        };
        let pids: Vec<i32> = k.streams.iter().map(|s| s.pid).collect();
        let failure = self.close_on(&k.decl.name, &pids).await;
        self.unpin_unused();
        failure.map_or(Ok(()), Err)
    }

    /// Closes every kept cursor.
    pub(super) async fn close_all_cursors(&mut self) {
        let names: Vec<String> = self
            .cursors
            .as_ref()
            .map(|c| c.kept.keys().cloned().collect())
            .unwrap_or_default();
        for n in names {
            // (CLOSE ALL closes what there is: a cursor already gone is no error.)
            let _ = self.close_kept(&n).await;
        }
        if let Some(c) = self.cursors.as_mut() {
            c.on_shard.clear();
        }
    }

    /// The backend `pid` of the session: held for its transaction, or pinned.
    pub(super) fn cursor_conn(&mut self, pid: i32) -> Option<&mut PooledConn> {
        if let Some(i) = self.conns.iter().position(|c| c.pid == pid) {
            return Some(&mut self.conns[i]);
        }
        self.cursors
            .as_mut()
            .and_then(|c| c.pinned.iter_mut().find(|c| c.pid == pid))
    }

    /// At a transaction's end: cursors without `WITH HOLD` are gone (their shards closed
    /// them); the backends `WITH HOLD` cursors live on are taken out of the held connections
    /// and pinned, so the pool does not get them back.
    pub(super) fn cursors_at_idle(&mut self) {
        let Some(c) = self.cursors.as_mut() else {
            return;
        };
        c.kept.retain(|_, k| k.decl.hold);
        c.on_shard.clear();
        if self.session_mode {
            return;
        }
        self.pin_held();
    }

    /// Pins the held connections that hold cursors `WITH HOLD` (outside a transaction).
    fn pin_held(&mut self) {
        if self.session_mode || self.txn.status.is_open() {
            return;
        }
        let Some(c) = self.cursors.as_ref() else {
            return;
        };
        let pids: Vec<i32> = c
            .kept
            .values()
            .flat_map(|k| k.streams.iter().map(|s| s.pid))
            .collect();
        while let Some(i) = self.conns.iter().position(|c| pids.contains(&c.pid)) {
            let conn = self.conns.take(i);
            self.cursors_mut().pinned.push(conn);
        }
    }

    /// Takes a backend pinned for the session's cursors on `shard`, to hold it for a
    /// statement or transaction (it is pinned again when that ends).
    pub(super) fn take_pinned(&mut self, shard: usize) -> Option<PooledConn> {
        let c = self.cursors.as_mut()?;
        let i = c.pinned.iter().position(|p| p.shard == shard)?;
        Some(c.pinned.swap_remove(i))
    }

    /// Closes the pinned backends no kept cursor uses any more (closed, not pooled: what
    /// else the client left on them is unknown).
    fn unpin_unused(&mut self) {
        let Some(c) = self.cursors.as_mut() else {
            return;
        };
        let used: Vec<i32> = c
            .kept
            .values()
            .flat_map(|k| k.streams.iter().map(|s| s.pid))
            .collect();
        c.pinned.retain(|p| used.contains(&p.pid));
    }
}
