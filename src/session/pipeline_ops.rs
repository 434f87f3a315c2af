//! Decoding one extended-protocol message of a pipeline into an operation ([`Op`]):
//! statements and portals are registered as Postgres would (names checked, plans made or
//! reused), each Bind's shard is found from its parameters, and the shards the pipeline
//! needs are gathered — a message for another shard than those before it ends the
//! pipeline's first segment (see [`super::pipeline_segments`]).

use std::sync::Arc;

use bytes::BytesMut;

use super::extended::{Effects, Op, BIND_COMPLETE, CLOSE_COMPLETE, NO_DATA};
use super::gather::GatherPortal;
use super::relay::Expect;
use super::{Prepared, Session, Target, MAX_CLIENT_STATEMENTS};
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

impl Session {
    /// Decodes one message into an operation, registering statements and portals.
    pub(super) fn prepare_op(
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
        // Nothing before this message in its pipeline needs a shard yet.
        let first = target.is_none();
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
                let mut t = m.with_params(|params| {
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
                // A cursor of one shard: its DECLARE's shard is remembered, and its FETCH, MOVE
                // and CLOSE go there (not to whichever shard the transaction holds first).
                let mut on_cursor_shard = false;
                if let Some(cmd) = stmt.plan.stmts.first().and_then(|s| s.cursor()) {
                    on_cursor_shard = self.cursor_shard(cmd, &mut t);
                }
                if !matches!(route, RouteSpec::Any) || on_cursor_shard {
                    if let Err(e) = merge(t, self) {
                        fx.back = Some(f);
                        return Err(e);
                    }
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
                        cursor: None,
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
                                if let Err(e) = merge(t, self) {
                                    fx.back = Some(f);
                                    return Err(e);
                                }
                            }
                        }
                        // A cursor made by SQL DECLARE (psycopg's named cursors describe it):
                        // it lives in the transaction, on the shard that ran the DECLARE.
                        None if self.txn.status.is_open() && !self.conns.is_empty() => {
                            let on = self
                                .cursors
                                .as_ref()
                                .and_then(|c| c.on_shard.get(name).copied());
                            if let Some(s) = on {
                                if let Err(e) = merge(Target::Shard(s), self) {
                                    fx.back = Some(f);
                                    return Err(e);
                                }
                            }
                        }
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
                    if let Err(e) = merge(t, self) {
                        fx.back = Some(f);
                        return Err(e);
                    }
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
                    // runs it first and forgets it at its Close. Closed before anything else
                    // in its pipeline (pgjdbc closes a fetched portal at the start of the next
                    // statement's, e.g. its COMMIT's), nothing runs it: forgotten now.
                    if first {
                        self.forget_closed_portal(&f);
                        self.portals.remove(name);
                        return Ok(Op::Local(CLOSE_COMPLETE));
                    }
                    match self.portals.get(name) {
                        Some((t, _)) => {
                            let t = *t;
                            if let Err(e) = merge(t, self) {
                                fx.back = Some(f);
                                return Err(e);
                            }
                            Ok(Op::Raw(f, Expect::Close))
                        }
                        None => Ok(Op::Local(CLOSE_COMPLETE)),
                    }
                } else {
                    match self.portals.get(name).map(|p| p.0) {
                        Some(t) => {
                            if let Err(e) = merge(t, self) {
                                fx.back = Some(f);
                                return Err(e);
                            }
                            self.portals.remove(name);
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
