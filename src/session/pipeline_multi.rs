//! Running an extended-protocol pipeline on several shards: relayed to each and the replies
//! merged (atomically for a write outside a transaction), or, for a query merged across
//! shards, executed through the gather with its rows paged out by the proxy.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::extended::Op;
use super::gather::{Capture, GatherCall};
use super::relay::{Expect, Outcome, RelayError};
use super::{Prepared, Session, TxnStatus};
use crate::error::ProxyError;
use crate::sharding::shardset::ShardSet;
use crate::wire::protocol::{build, decode_execute, decode_target, BindMsg, Frame};

impl Session {
    /// Runs operations on every shard and merges the replies.
    pub(super) async fn batch_all(
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
                // (A relay that met its Sync read a status; idle is for form's sake.)
                let status = o.status.unwrap_or(TxnStatus::Idle);
                build::ready_for_query(&mut self.out, status.byte());
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
            o.status = Some(TxnStatus::Idle);
            build::ready_for_query(&mut self.out, TxnStatus::Idle.byte());
            return Ok(Ok(o));
        }
        if let Some(e) = cut {
            if !o.error {
                build::error(&mut self.out, "ERROR", e.sqlstate(), &e.to_string());
                o.error = true;
                if o.status == Some(TxnStatus::InBlock) {
                    o.status = Some(TxnStatus::Failed);
                    self.txn.fail();
                }
            }
            // (The merged relay ends at the shards' ReadyForQuery: it read a status.)
            let status = o.status.unwrap_or(TxnStatus::Idle);
            build::ready_for_query(&mut self.out, status.byte());
        }
        Ok(Ok(o))
    }

    /// Turns the Execute of each portal the proxy keeps for a plain multi-shard read (see
    /// the Bind in `prepare_op`) into a merged execution, so the proxy runs it to completion.
    pub(super) fn concatenations_as_gathers(&self, ops: &mut [Op]) {
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

    /// Runs a pipeline that executes a merged (multi-shard) query: Parse/Bind/Close are
    /// answered here, Describe of statements runs on one shard, each Execute through
    /// [`Session::gather`]. An Execute with a row limit (cursor-style fetching, e.g. JDBC's
    /// fetchSize) runs the query once, keeps its rows (bounded by the gather memory limit)
    /// and hands them out chunk by chunk with PortalSuspended, as Postgres does.
    pub(super) async fn batch_gather(
        &mut self,
        set: ShardSet,
        ops: Vec<Op>,
        cut: Option<&ProxyError>,
        ready: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let mut describe = false;
        let mut outcome = Outcome {
            status: Some(self.txn.status),
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
                if self.txn.status.is_open() {
                    self.txn.fail();
                    outcome.status = Some(TxnStatus::Failed);
                }
            }
        }
        let status = *outcome.status.get_or_insert(TxnStatus::Idle);
        if ready {
            build::ready_for_query(&mut self.out, status.byte());
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
        let gp = match p.plan.stmts.first().and_then(|s| s.gather().cloned()) {
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
        if !fetched && max_rows > 0 && self.txn.status == TxnStatus::InBlock && !self.txn.failed {
            // Inside a transaction block, pages come from cursors on the shards (memory
            // stays at a chunk per shard); a query that must be gathered is kept below.
            if let Err(f) = self.stream_portal(set, portal, p, &gp, &m).await? {
                return Ok(Ok(self.cursor_reply(Err(f), true)));
            }
        }
        if let Some(name) = self
            .gather_portals
            .get(portal)
            .and_then(|g| g.cursor.clone())
        {
            return self
                .page_portal(portal, &name, &m, max_rows, describe)
                .await;
        }
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
                    status: Some(self.txn.status),
                    error: true,
                    ..Default::default()
                }));
            }
            let mut rows = std::collections::VecDeque::new();
            let captured = captured.freeze();
            for (tag, m) in super::gather::captured_messages(&captured) {
                match tag {
                    b'D' => rows.push_back(m),
                    b'C' => {}
                    _ => self.out.extend_from_slice(&m),
                }
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
            status: Some(self.txn.status),
            error: false,
            ..Default::default()
        }))
    }

    /// A Close of a multi-shard portal whose forgetting was deferred to when its pipeline runs
    /// (see `prepare_op`): the proxy forgets the portal now.
    pub(super) fn forget_closed_portal(&mut self, close: &Frame) {
        if let Ok((b'P', name)) = decode_target(close.body(), "Close") {
            if let Some(cursor) = self.gather_portals.remove(name).and_then(|g| g.cursor) {
                // (Its cursors on the shards end with the transaction.)
                if let Some(c) = self.cursors.as_mut() {
                    c.kept.remove(&cursor);
                }
            }
            self.portals.remove(name);
        }
    }
}
