//! Transaction control and session statements inside extended-protocol pipelines,
//! answered by the proxy the way the simple protocol answers them (see [`super::txn`]):
//! a pipeline of one BEGIN/COMMIT/ROLLBACK/savepoint/setting/session/LISTEN/NOTIFY
//! statement, and JDBC's BEGIN pipelined with the first statement.

use std::sync::Arc;

use bytes::BytesMut;

use super::extended::{Op, BIND_COMPLETE};
use super::relay::{Expect, RelayError};
use super::{Prepared, Session, SessionEnd, Txn, TxnStatus};
use crate::routing::router::StmtKind;
use crate::wire::protocol::{build, decode_execute, decode_target, BindMsg, Frame, ParseMsg};

impl Session {
    /// JDBC (autocommit off) pipelines its BEGIN with the first statement: `Parse "BEGIN",
    /// Bind, Execute, Parse …, Bind, Describe, Execute, Sync`. When the first Execute of an
    /// idle session's pipeline is a BEGIN, the proxy answers that BEGIN itself (BindComplete,
    /// CommandComplete) and starts the transaction lazily, as for a BEGIN of its own: the
    /// statements after it decide the shard, and the transaction starts there.
    pub(super) fn lazy_begin_in_pipeline(&mut self, ops: &mut [Op]) {
        if self.txn.status.is_open() || !self.conns.is_empty() || self.session_mode {
            return;
        }
        let Some(at) = ops
            .iter()
            .position(|o| matches!(o, Op::Raw(_, Expect::Execute) | Op::Gather(..)))
        else {
            return;
        };
        // Only a pipeline that executes something after the BEGIN qualifies (a lone BEGIN is
        // `transaction_batch`'s): most pipelines stop here, before any decoding.
        if !ops[at + 1..]
            .iter()
            .any(|o| matches!(o, Op::Raw(_, Expect::Execute) | Op::Gather(..)))
        {
            return;
        }
        let Op::Raw(exec, Expect::Execute) = &ops[at] else {
            return;
        };
        let Ok((portal, _)) = decode_execute(exec.body()) else {
            return;
        };
        // The statement the portal holds at this Execute: the Bind before it in this pipeline
        // (the unnamed portal is bound again by later statements), else the session's.
        // Checked without allocating: this runs for every pipeline of an idle session.
        let bound_here = ops[..at].iter().rposition(|o| match o {
            Op::Bind(_, f, _) => BindMsg::decode(f.body()).is_ok_and(|m| m.portal == portal),
            _ => false,
        });
        let stmt = match bound_here.map(|b| &ops[b]) {
            Some(Op::Bind(p, _, _)) => p,
            _ => match self.portals.get(portal) {
                Some((_, p)) => p,
                None => return,
            },
        };
        if !matches!(
            stmt.plan.stmts.first().map(|s| &s.kind),
            Some(StmtKind::Begin)
        ) {
            return;
        }
        let stmt = stmt.clone();
        let portal = portal.to_string();
        // The Bind that made this portal is answered locally too: nothing reaches a shard.
        if let Some(b) = bound_here {
            ops[b] = Op::Local(BIND_COMPLETE);
        }
        let sql = stmt.sql.trim().trim_end_matches(';').to_string();
        let mut done = BytesMut::new();
        build::command_complete(&mut done, super::txn::begin_tag(&sql));
        ops[at] = Op::Local(done.freeze());
        // (Unless a later Bind in the pipeline took the portal over.)
        if self
            .portals
            .get(&portal)
            .is_some_and(|(_, p)| Arc::ptr_eq(p, &stmt))
        {
            self.portals.remove(&portal);
        }
        self.txn = Txn::begun(sql);
    }

    /// The statement a Bind/Describe/Execute message is about.
    fn statement_of(&self, f: &Frame) -> Option<Arc<Prepared>> {
        match f.tag {
            b'B' => {
                let m = BindMsg::decode(f.body()).ok()?;
                self.stmts.get(m.statement).cloned()
            }
            b'D' => {
                let (kind, name) = decode_target(f.body(), "Describe").ok()?;
                if kind == b'S' {
                    self.stmts.get(name).cloned()
                } else {
                    self.portals.get(name).map(|(_, p)| p.clone())
                }
            }
            b'E' => {
                let (portal, _) = decode_execute(f.body()).ok()?;
                self.portals.get(portal).map(|(_, p)| p.clone())
            }
            _ => None,
        }
    }

    /// Whether the message belongs to a COMMIT or ROLLBACK.
    pub(super) fn ends_transaction(&self, f: &Frame) -> bool {
        let plan = if f.tag == b'P' {
            ParseMsg::decode(f.body())
                .ok()
                .and_then(|m| self.topo.cache.get(&self.topo.map, m.query).ok())
        } else {
            self.statement_of(f).map(|p| p.plan.clone())
        };
        plan.is_some_and(|p| {
            p.stmts
                .first()
                .is_some_and(|s| super::txn::exits_failed(&s.kind))
        })
    }

    /// A pipeline of transaction-control statements — each Parse/Bind/Describe of a BEGIN,
    /// COMMIT, ROLLBACK, a savepoint command or (inside a transaction) a settings statement,
    /// then its Execute — is answered like the simple protocol answers them: BEGIN starts the
    /// transaction lazily on the shards later statements reach; the others act on every shard
    /// the transaction holds (see [`super::txn`]). Several run one after another (psycopg's
    /// pipeline mode sends `ROLLBACK TO SAVEPOINT` and `RELEASE SAVEPOINT` with one Sync); the
    /// first error skips the rest, as in Postgres. Without `sync` (a Flush inside a block) no
    /// ReadyForQuery ends it. Returns whether it handled the pipeline.
    pub(super) async fn transaction_batch(
        &mut self,
        ops: &[Op],
        sync: bool,
    ) -> Result<bool, SessionEnd> {
        let kind_of = |p: &Prepared| p.plan.stmts.first().map(|s| s.kind.clone());
        // Each statement's messages end at its Execute; only proxy-made replies may follow.
        let mut groups: Vec<(&[Op], Arc<Prepared>)> = Vec::new();
        let mut from = 0;
        // The transaction status each statement meets, as the ones before it leave it.
        let mut status = self.txn.status;
        // The statement the group's own Bind bound: its portal (the unnamed one, mostly) is
        // bound again by the next group, so the portal names no longer tell.
        let mut bound: Option<Arc<Prepared>> = None;
        for (i, op) in ops.iter().enumerate() {
            let p = match op {
                Op::Bind(p, _, _) => {
                    bound = Some(p.clone());
                    p.clone()
                }
                Op::Parse(p) | Op::DescribeStmt(p) => p.clone(),
                Op::Raw(f, Expect::Describe) => {
                    match bound.clone().or_else(|| self.statement_of(f)) {
                        Some(p) => p,
                        None => return Ok(false),
                    }
                }
                Op::Raw(f, Expect::Execute) => {
                    match bound.take().or_else(|| self.statement_of(f)) {
                        Some(p) => {
                            groups.push((&ops[from..=i], p.clone()));
                            from = i + 1;
                            p
                        }
                        None => return Ok(false),
                    }
                }
                Op::Local(_) => continue,
                _ => return Ok(self.refuse_listen_among_others(ops, sync)),
            };
            let executes = matches!(op, Op::Raw(_, Expect::Execute));
            match kind_of(&p) {
                Some(StmtKind::Begin) if status.is_idle() && self.conns.is_empty() => {
                    if executes {
                        status = TxnStatus::InBlock;
                    }
                }
                Some(StmtKind::Commit | StmtKind::Rollback) if status.is_open() => {
                    if executes {
                        status = TxnStatus::Idle;
                    }
                }
                Some(StmtKind::TwoPhase(op)) => {
                    if executes && matches!(op, crate::routing::router::TpcOp::Prepare(_)) {
                        status = TxnStatus::Idle;
                    }
                }
                Some(StmtKind::Savepoint(_)) if status.is_open() => {}
                Some(k) if status.is_open() && super::txn::is_setting(&k) => {}
                Some(
                    StmtKind::DiscardAll
                    | StmtKind::Deallocate(_)
                    | StmtKind::SessionFn(_)
                    | StmtKind::Notify(_),
                ) => {}
                _ => return Ok(self.refuse_listen_among_others(ops, sync)),
            }
        }
        if groups.is_empty() || !ops[from..].iter().all(|o| matches!(o, Op::Local(_))) {
            return Ok(false);
        }
        // A session function is one statement alone (its row needs the Bind's formats).
        if groups.len() > 1
            && groups
                .iter()
                .any(|(_, p)| matches!(kind_of(p), Some(StmtKind::SessionFn(_))))
        {
            return Ok(false);
        }
        for (group, exec) in groups {
            if !self.control_statement(group, &exec).await? {
                break;
            }
        }
        for op in &ops[from..] {
            if let Op::Local(b) = op {
                self.out.extend_from_slice(b);
            }
        }
        if sync {
            self.push_ready();
        }
        Ok(true)
    }

    /// Ends the extended-protocol exchange a Flush left open on `shard` with a Sync of the
    /// proxy's own, its ReadyForQuery kept from the client (who got every reply up to its
    /// Flush already). Only inside a transaction block: there a Sync ends the exchange and
    /// nothing else — the transaction and its portals live on (a Sync commits only an
    /// implicit transaction) — and the connection takes the proxy's own statements again.
    pub(super) async fn end_open_exchange(&mut self, shard: usize) -> Result<(), RelayError> {
        let Some(idx) = self.conns.iter().position(|c| c.shard == shard) else {
            return Ok(());
        };
        let mut msg = BytesMut::new();
        build::empty(&mut msg, b'S');
        if let Err(error) = self.conns[idx].write_all(&msg).await {
            return Err(RelayError::Backend {
                shard,
                error,
                forwarded: true,
            });
        }
        let mut ex = std::collections::VecDeque::from([Expect::Sync]);
        self.relay_one(idx, &mut ex, true).await.map(|_| ())
    }

    /// One statement of [`Session::transaction_batch`]: the replies to its messages, then
    /// the statement itself. Returns false when it failed (the pipeline stops there).
    async fn control_statement(
        &mut self,
        ops: &[Op],
        exec: &Arc<Prepared>,
    ) -> Result<bool, SessionEnd> {
        let kind_of = |p: &Prepared| p.plan.stmts.first().map(|s| s.kind.clone());
        // A session function returns a row (in the formats its Bind asked for); the other
        // statements here return none.
        let func = match kind_of(exec) {
            Some(StmtKind::SessionFn(f)) => Some(f),
            _ => None,
        };
        let mut binary = false;
        let mut bind: Option<BindMsg> = None;
        for op in ops {
            match op {
                Op::Parse(_) => build::empty(&mut self.out, b'1'),
                Op::Bind(_, f, _) => {
                    bind = BindMsg::decode(f.body()).ok();
                    binary = bind
                        .as_ref()
                        .is_some_and(|m| m.result_formats().first() == Some(&1));
                    build::empty(&mut self.out, b'2');
                }
                Op::DescribeStmt(p) => match &func {
                    Some(f) => {
                        self.describe_session_fn_params(f, &p.types);
                        self.describe_session_fn(f, false);
                    }
                    None => {
                        self.out.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]);
                        build::empty(&mut self.out, b'n');
                    }
                },
                Op::Raw(_, Expect::Describe) => match &func {
                    Some(f) => self.describe_session_fn(f, binary),
                    None => build::empty(&mut self.out, b'n'),
                },
                Op::Local(b) => self.out.extend_from_slice(b),
                _ => {}
            }
        }
        let sql = exec.sql.trim().trim_end_matches(';').to_string();
        match kind_of(exec) {
            Some(StmtKind::Begin) => {
                build::command_complete(&mut self.out, super::txn::begin_tag(&sql));
                self.txn = Txn::begun(sql);
            }
            Some(k @ (StmtKind::Commit | StmtKind::Rollback)) => {
                return self
                    .end_transaction(k == StmtKind::Commit, &sql, false)
                    .await;
            }
            Some(StmtKind::Savepoint(op)) => self.savepoint(&op, &sql).await?,
            Some(k @ (StmtKind::DiscardAll | StmtKind::Deallocate(_))) => {
                let _ = self.session_command(&k);
            }
            Some(StmtKind::SessionFn(f)) => {
                self.session_fn(&f, false, binary, bind.as_ref()).await;
            }
            Some(StmtKind::Notify(cmd)) => return Ok(self.notify_statement(&cmd).await),
            Some(StmtKind::TwoPhase(op)) => return self.two_phase(&op, false).await,
            Some(k) => self.txn_setting(&k, &sql).await?,
            None => {}
        }
        // In a block, an error leaves it failed (a ROLLBACK TO that worked, not).
        Ok(!self.txn.failed)
    }
}

impl Session {
    /// The error for a pipeline the proxy did not answer itself that binds a client
    /// two-phase command: it must never reach a shard as sent. (Checking the Binds is
    /// enough: the proxy answers such a Bind itself, so no shard holds such a portal.)
    pub(super) fn two_phase_stray(ops: &[Op]) -> Option<crate::error::ProxyError> {
        let bound = ops.iter().any(|op| match op {
            Op::Bind(p, _, _) | Op::Gather(_, p) => {
                Self::two_phase_among(p.plan.stmts.first().map(|s| &s.kind))
            }
            _ => false,
        });
        bound.then(super::client_tpc::not_alone)
    }
}
