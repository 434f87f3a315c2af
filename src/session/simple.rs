//! The simple query protocol: one `Query` message, possibly several statements.

use std::collections::VecDeque;

use super::gather::GatherCall;
use super::multiwrite::{ShardWrite, WriteProtocol};
use super::relay::{Expect, Outcome, RelayError};
use super::{Session, SessionEnd, SettingChange, Target, Txn};
use crate::error::ProxyError;
use crate::protocol::build;
use crate::router::{Plan, StmtKind};

impl Session {
    /// Handles one Query message.
    pub(super) async fn simple_query(&mut self, sql: &str) -> Result<(), SessionEnd> {
        self.refresh_topology();
        let (plan, scanned) = match self.topo.cache.get_simple(&self.topo.map, sql) {
            Ok(p) => p,
            Err(e) => {
                self.push_error(&e);
                self.push_ready();
                return Ok(());
            }
        };
        if plan.stmts.is_empty() {
            build::empty(&mut self.out, b'I');
            self.push_ready();
            return Ok(());
        }
        if plan.stmts.len() == 1 {
            let kind = plan.stmts[0].kind.clone();
            if self.local_statement(&kind, sql).await? {
                return Ok(());
            }
        }
        if self.txn.local_failed {
            self.push_error(&ProxyError::InFailedTransaction);
            self.push_ready();
            return Ok(());
        }
        if let Err(e) = self.enter().await {
            self.push_error(&e);
            self.push_ready();
            return Ok(());
        }
        self.directory_gate().await;
        let lits = scanned
            .as_ref()
            .map(|s| s.query_lits(sql))
            .unwrap_or_default();
        match self.simple_target(&plan, lits) {
            Ok(Some(target)) => self.run_simple(&plan, sql, target, false).await.map(|_| ()),
            Ok(None) => self.run_split(&plan, sql).await,
            Err(e) => {
                self.push_error(&e);
                self.push_ready();
                Ok(())
            }
        }
    }

    /// One target for the whole string, `None` when its statements need different shards
    /// (and may run one by one), or the error to report.
    fn simple_target(
        &mut self,
        plan: &Plan,
        lits: crate::literals::QueryLits<'_>,
    ) -> Result<Option<Target>, ProxyError> {
        let mut target: Option<Target> = None;
        let mut split = false;
        for st in &plan.stmts {
            let t = self.resolve(&st.route, &[], &|_| false, lits)?;
            if matches!(st.route, crate::router::RouteSpec::Any) {
                continue; // goes wherever the rest goes
            }
            match target {
                None => target = Some(t),
                Some(prev) if prev == t => {}
                Some(_) => split = true,
            }
        }
        let explicit = self.txn.status != b'I';
        if plan.stmts.len() > 1 && plan.stmts.iter().any(|s| s.gather.is_some()) {
            // Each merged statement runs on its own.
            split = true;
        }
        if split {
            if plan.stmts.len() > 1
                && (plan.writes() || plan.stmts.iter().any(|s| is_txn_control(&s.kind)))
            {
                return Err(ProxyError::Unsupported(
                    "a multi-statement query that writes or controls transactions on several shards is refused; send the statements separately".into(),
                ));
            }
            return Ok(None);
        }
        let target = target.unwrap_or(Target::Shard(self.any_shard()));
        if target.is_multi()
            && plan.stmts.len() > 1
            && (plan.writes() || plan.stmts.iter().any(|s| is_txn_control(&s.kind)))
        {
            // Each shard would run (and commit) the string on its own.
            return Err(ProxyError::Unsupported(
                "a multi-statement query that writes or controls transactions on several shards is refused; send the statements separately".into(),
            ));
        }
        self.check_write(target, plan.writes(), explicit || plan.stmts.len() > 1)?;
        Ok(Some(target))
    }

    /// Statements the proxy answers itself. Returns true when handled.
    async fn local_statement(&mut self, kind: &StmtKind, sql: &str) -> Result<bool, SessionEnd> {
        match kind {
            StmtKind::Begin if self.txn.status == b'I' && self.conns.is_empty() => {
                // Lazy BEGIN: the transaction starts on the shards its statements reach.
                self.txn = Txn {
                    status: b'T',
                    prelude: Some(sql.to_string()),
                    ..Txn::idle()
                };
                build::command_complete(&mut self.out, "BEGIN");
                self.push_ready();
                Ok(true)
            }
            StmtKind::SetLocal if self.txn.status == b'T' => {
                self.set_local(sql).await?;
                Ok(true)
            }
            StmtKind::Commit | StmtKind::Rollback if self.txn.status != b'I' => {
                self.end_transaction(matches!(kind, StmtKind::Commit), sql)
                    .await?;
                Ok(true)
            }
            StmtKind::DiscardAll | StmtKind::ResetAll | StmtKind::Deallocate(_) => {
                if matches!(kind, StmtKind::DiscardAll) && self.txn.status != b'I' {
                    self.push_error(&ProxyError::Unsupported(
                        "DISCARD ALL cannot run inside a transaction block".into(),
                    ));
                    self.push_ready();
                    return Ok(true);
                }
                let tag = match kind {
                    StmtKind::DiscardAll => {
                        self.settings.clear();
                        self.stmts.clear();
                        "DISCARD ALL"
                    }
                    StmtKind::ResetAll => {
                        if self.txn.status == b'I' {
                            self.settings.clear();
                        } else {
                            self.txn.pending.push(SettingChange::ResetAll);
                        }
                        "RESET"
                    }
                    StmtKind::Deallocate(None) => {
                        self.stmts.clear();
                        "DEALLOCATE ALL"
                    }
                    StmtKind::Deallocate(Some(name)) => {
                        if self.stmts.remove(name).is_none() {
                            self.push_error(&ProxyError::NoSuchStatement(name.clone()));
                            self.push_ready();
                            return Ok(true);
                        }
                        "DEALLOCATE"
                    }
                    _ => unreachable!("matched above"),
                };
                build::command_complete(&mut self.out, tag);
                self.push_ready();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// SET LOCAL / SET TRANSACTION inside a transaction: it applies to the whole transaction,
    /// so it runs on every shard the transaction holds and joins the prelude that starts the
    /// transaction on shards it reaches later.
    async fn set_local(&mut self, sql: &str) -> Result<(), SessionEnd> {
        let stmt = sql.trim().trim_end_matches(';').to_string();
        for i in 0..self.conns.len() {
            let shard = self.conns[i].shard;
            match self.conns[i].run_simple(&stmt).await {
                Ok((None, _)) => {}
                Ok((Some((code, message)), _)) => {
                    self.push_error(&ProxyError::Backend { code, message });
                    self.push_ready();
                    return Ok(());
                }
                Err(error) => {
                    let e = self.backend_failed(shard, &error);
                    self.txn = Txn::idle();
                    self.push_error(&e);
                    self.push_ready();
                    return Ok(());
                }
            }
        }
        self.add_to_prelude(&stmt);
        build::command_complete(&mut self.out, "SET");
        self.push_ready();
        Ok(())
    }

    fn add_to_prelude(&mut self, stmt: &str) {
        let mut p = self
            .txn
            .prelude
            .take()
            .unwrap_or_else(|| "BEGIN".to_string());
        p.push_str("; ");
        p.push_str(stmt);
        self.txn.prelude = Some(p);
    }

    /// COMMIT/ROLLBACK of a transaction the proxy tracks.
    pub(super) async fn end_transaction(
        &mut self,
        commit: bool,
        sql: &str,
    ) -> Result<(), SessionEnd> {
        let commit = commit && !self.txn.local_failed;
        let tag = if commit { "COMMIT" } else { "ROLLBACK" };
        if self.conns.is_empty() {
            if commit {
                for ch in std::mem::take(&mut self.txn.pending) {
                    self.apply_setting(ch);
                }
            }
            self.txn = Txn::idle();
            build::command_complete(&mut self.out, tag);
            self.push_ready();
            return Ok(());
        }
        // A transaction that wrote on several shards commits on all of them as one.
        if commit
            && self.txn.status == b'T'
            && !self.txn.local_failed
            && matches!(self.txn.written, Some(Target::Set(_)))
        {
            let idxs: Vec<usize> = (0..self.conns.len()).collect();
            let r = self.commit_all(&idxs).await;
            let pending = std::mem::take(&mut self.txn.pending);
            self.txn = Txn::idle();
            match r {
                Ok(Ok(())) => {
                    for ch in pending {
                        self.apply_setting(ch);
                    }
                    build::command_complete(&mut self.out, "COMMIT");
                }
                Ok(Err(e)) => self.push_error(&e),
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Backend { shard, error, .. }) => {
                    let e = self.backend_failed(shard, &error);
                    self.push_error(&e);
                }
            }
            for c in self.conns.iter_mut() {
                c.settings_fp = super::settings::UNKNOWN_FP;
            }
            self.push_ready();
            self.release_if_idle(false);
            return Ok(());
        }
        // Commit the shards that only read first, the one that wrote last; its reply is the client's.
        let writer = match self.txn.written {
            Some(Target::Shard(s)) => self.conns.iter().position(|c| c.shard == s),
            _ => None,
        };
        let last = writer.unwrap_or(self.conns.len() - 1);
        let text = if commit {
            sql.to_string()
        } else {
            "ROLLBACK".to_string()
        };
        let mut order: Vec<usize> = (0..self.conns.len()).filter(|&i| i != last).collect();
        order.push(last);
        let mut outcome = Outcome::default();
        for &i in &order {
            let mut msg = bytes::BytesMut::new();
            build::query(&mut msg, &text);
            let shard = self.conns[i].shard;
            if let Err(error) = self.conns[i].write_all(&msg).await {
                let e = self.backend_failed(shard, &error);
                self.txn = Txn::idle();
                self.push_error(&e);
                self.push_ready();
                return Ok(());
            }
            let hide = i != last;
            let mut ex = VecDeque::new();
            ex.push_back(Expect::Query { hide_ready: true });
            // Replies of the read-only shards are not shown; the writer's are.
            match self.relay_one(i, &mut ex, hide).await {
                Ok(o) => outcome = o,
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Backend { shard, error, .. }) => {
                    let e = self.backend_failed(shard, &error);
                    self.txn = Txn::idle();
                    self.push_error(&e);
                    self.push_ready();
                    return Ok(());
                }
            }
        }
        if commit && !outcome.error {
            for ch in std::mem::take(&mut self.txn.pending) {
                self.apply_setting(ch);
            }
        }
        // Settings changed inside the transaction make the connections' state unknown.
        if !self.txn.pending.is_empty() || commit {
            for c in self.conns.iter_mut() {
                if c.settings_fp != self.settings.fingerprint() {
                    c.settings_fp = super::settings::UNKNOWN_FP;
                }
            }
        }
        self.txn = Txn::idle();
        self.push_ready();
        self.release_if_idle(false);
        Ok(())
    }

    /// Runs the whole query string on one target; returns whether it failed.
    async fn run_simple(
        &mut self,
        plan: &Plan,
        sql: &str,
        target: Target,
        hide_ready: bool,
    ) -> Result<bool, SessionEnd> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reused = self.conns.is_empty();
            let explain = match plan.stmts.as_slice() {
                [one] => one.explain.as_ref(),
                _ => None,
            };
            let r = match (explain, target) {
                (Some(ex), _) => {
                    // Several shards run the rewritten query a merge needs; EXPLAIN that.
                    let text = match (&ex.shard_sql, target) {
                        (Some(s), Target::Set(_)) => s.as_str(),
                        _ => sql,
                    };
                    self.exec_explain(&ex.merge, text, target, hide_ready).await
                }
                (None, Target::Shard(s)) => self.exec_query_one(s, sql, hide_ready).await,
                (None, Target::Set(set)) => match single_gather(plan) {
                    Some(gp) => {
                        let call = GatherCall {
                            plan: &gp,
                            sql,
                            param_types: &[],
                            bind: None,
                            describe: true,
                        };
                        self.gather(&call, set, hide_ready).await.map(Ok)
                    }
                    None if plan.stmts.len() == 1 && plan.stmts[0].copy.is_some() => {
                        match plan.stmts[0].copy.clone() {
                            Some(cp) => self.copy_in_split(&cp, sql, hide_ready).await.map(|r| r.0),
                            None => Ok(Err(ProxyError::Protocol(
                                "internal: copy plan vanished".into(),
                            ))),
                        }
                    }
                    None if plan.stmts.len() == 1 && plan.stmts[0].split.is_some() => {
                        let split = plan.stmts[0].split.clone();
                        match split.map(|sp| sp.statements(&self.topo.map, None)) {
                            Some(Ok(parts)) => {
                                let work: Vec<ShardWrite> = parts
                                    .into_iter()
                                    .map(|p| ShardWrite {
                                        shard: p.shard,
                                        sql: p.sql,
                                        bind: None,
                                    })
                                    .collect();
                                // Inside a transaction check_write allowed it (two-phase commit).
                                self.multi_write(&work, WriteProtocol::Simple, false, hide_ready)
                                    .await
                            }
                            Some(Err(e)) => Ok(Err(e)),
                            None => {
                                Ok(Err(ProxyError::Protocol("internal: split vanished".into())))
                            }
                        }
                    }
                    None if atomic_write(plan) && self.txn.status == b'I' => {
                        let work: Vec<ShardWrite> = set
                            .iter()
                            .map(|shard| ShardWrite {
                                shard,
                                sql: sql.to_string(),
                                bind: None,
                            })
                            .collect();
                        let replicated = plan.replicated();
                        self.multi_write(&work, WriteProtocol::Simple, replicated, hide_ready)
                            .await
                    }
                    None => {
                        self.exec_query_all(set, sql, hide_ready, plan.replicated())
                            .await
                    }
                },
            };
            match r {
                Ok(Ok(outcome)) => {
                    self.after_statements(plan, sql, outcome);
                    return Ok(outcome.error);
                }
                Ok(Err(e)) => {
                    self.push_error(&e);
                    if !hide_ready {
                        self.push_ready();
                    }
                    return Ok(true);
                }
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Backend {
                    shard,
                    error,
                    forwarded,
                }) => {
                    let e = self.backend_failed(shard, &error);
                    // A pooled connection that died while idle (shard restart) is retried once
                    // on a fresh one, when nothing reached the client and no transaction is open.
                    if attempt == 1 && reused && !forwarded && self.txn.status == b'I' {
                        continue;
                    }
                    if self.txn.status != b'I' {
                        self.txn = Txn::idle();
                    }
                    self.push_error(&e);
                    if !hide_ready {
                        self.push_ready();
                    }
                    return Ok(true);
                }
            }
        }
    }

    async fn exec_query_one(
        &mut self,
        shard: usize,
        sql: &str,
        hide_ready: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let idx = match self.conn_for(shard).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let mut msg = self.scratch.take_msg();
        build::query(&mut msg, sql);
        if let Err(error) = self.conns[idx].write_all(&msg).await {
            return Err(RelayError::Backend {
                shard,
                error,
                forwarded: false,
            });
        }
        self.scratch.put_msg(msg);
        let mut ex = std::mem::take(&mut self.scratch.expects);
        ex.clear();
        ex.push_back(Expect::Query { hide_ready });
        let r = self.relay_one(idx, &mut ex, false).await;
        self.scratch.expects = ex;
        r.map(Ok)
    }

    async fn exec_query_all(
        &mut self,
        set: crate::router::ShardSet,
        sql: &str,
        hide_ready: bool,
        replicated: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let idxs = match self.conns_for(set.iter()).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let mut msg = bytes::BytesMut::with_capacity(sql.len() + 6);
        build::query(&mut msg, sql);
        self.send_to_all(&idxs, &msg).await?;
        self.relay_all(&idxs, hide_ready, replicated).await.map(Ok)
    }

    /// Session bookkeeping after statements ran: settings, transaction state, connection release.
    fn after_statements(&mut self, plan: &Plan, sql: &str, outcome: Outcome) {
        let was_idle = self.txn.status == b'I';
        for st in &plan.stmts {
            let text = sql.get(st.span.0..st.span.1).unwrap_or("").trim();
            let ch = match &st.kind {
                StmtKind::Set { name } => Some(SettingChange::Set(name.clone(), text.to_string())),
                StmtKind::Reset { name } => Some(SettingChange::Reset(name.clone())),
                StmtKind::ResetAll => Some(SettingChange::ResetAll),
                StmtKind::Begin => {
                    self.txn.prelude = Some(text.trim_end_matches(';').to_string());
                    None
                }
                StmtKind::SetLocal if !outcome.error && outcome.status == b'T' => {
                    self.add_to_prelude(text.trim_end_matches(';'));
                    None
                }
                _ => None,
            };
            if let Some(ch) = ch {
                if outcome.error {
                    continue;
                }
                if outcome.status == b'I' && was_idle {
                    self.apply_setting(ch);
                    // The connection that ran it now holds exactly the client's settings.
                    let fp = self.settings.fingerprint();
                    for c in self.conns.iter_mut() {
                        c.settings_fp = fp;
                    }
                } else {
                    self.txn.pending.push(ch);
                    for c in self.conns.iter_mut() {
                        c.settings_fp = super::settings::UNKNOWN_FP;
                    }
                }
            }
        }
        if outcome.status != 0 {
            if outcome.status == b'I' && self.txn.status != b'I' {
                // The string itself ended the transaction (e.g. "...; COMMIT").
                let pending = std::mem::take(&mut self.txn.pending);
                if !outcome.error {
                    for ch in pending {
                        self.apply_setting(ch);
                    }
                }
                self.txn = Txn::idle();
            }
            // On 'E' the shard itself refuses statements until ROLLBACK.
            self.txn.status = outcome.status;
        }
        self.release_if_idle(false);
    }

    /// Runs the statements of a string one by one on their own targets (reads only).
    async fn run_split(&mut self, plan: &Plan, sql: &str) -> Result<(), SessionEnd> {
        let n = plan.stmts.len();
        for (i, st) in plan.stmts.iter().enumerate() {
            let text = sql.get(st.span.0..st.span.1).unwrap_or("");
            let one = Plan {
                stmts: vec![st.clone()],
            };
            let target = match self.resolve(&st.route, &[], &|_| false, Default::default()) {
                Ok(t) => t,
                Err(e) => {
                    self.push_error(&e);
                    self.push_ready();
                    return Ok(());
                }
            };
            let failed = self.run_simple(&one, text, target, i + 1 < n).await?;
            // Stop at the first failing statement, as Postgres does.
            if failed && i + 1 < n {
                self.push_ready();
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The merge plan of a one-statement string that needs one.
fn single_gather(plan: &Plan) -> Option<std::sync::Arc<crate::gather::GatherPlan>> {
    match plan.stmts.as_slice() {
        [one] => one.gather.clone(),
        _ => None,
    }
}

fn is_txn_control(k: &StmtKind) -> bool {
    matches!(
        k,
        StmtKind::Begin | StmtKind::Commit | StmtKind::Rollback | StmtKind::Savepoint
    )
}

/// A single write statement on several shards (a reference-table write, a keyless UPDATE
/// or DELETE, an INSERT … SELECT per shard): it runs all-or-nothing (see
/// [`super::multiwrite`]).
fn atomic_write(plan: &Plan) -> bool {
    matches!(plan.stmts.as_slice(), [st] if st.kind == StmtKind::Write)
}
