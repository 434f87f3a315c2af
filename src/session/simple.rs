//! The simple query protocol: one `Query` message, possibly several statements.

use super::gather::GatherCall;
use super::multiwrite::{ShardWrite, WriteProtocol};
use super::relay::{Expect, Outcome, RelayError};
use super::txn::SettingChange;
use super::{Session, SessionEnd, Target, Txn, TxnStatus};
use crate::error::ProxyError;
use crate::routing::router::{Execution, Plan, StmtKind, TpcOp};
use crate::wire::protocol::build;

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
        if super::sql_prepare::holds_sql_prepared(&plan) {
            return self.sql_prepared_query(&plan, sql).await;
        }
        // A script that makes tables and fills them (CREATE TABLE …; INSERT …): its INSERTs
        // are looked up and completed one by one as the script reaches them (`run_each`).
        let deferred = !self.session_mode
            && plan.stmts.len() > 1
            && plan.generates()
            && plan.stmts.iter().any(|s| s.kind == StmtKind::Ddl);
        // INSERTs into tables the catalog does not know: looked up first, then planned again.
        let (plan, scanned) =
            if plan.unknown_tables().next().is_some() && !self.txn.failed && !deferred {
                let learned = self.learn_tables(&plan).await;
                match learned.and_then(|()| self.topo.cache.get_simple(&self.topo.map, sql)) {
                    Ok(p) => p,
                    Err(e) => {
                        self.push_error(&e);
                        self.push_ready();
                        return Ok(());
                    }
                }
            } else {
                (plan, scanned)
            };
        // INSERTs the proxy completes (generated values, a column list) run completed.
        let completed;
        let (plan, scanned, sql) = if plan.generates() && !self.txn.failed && !deferred {
            match self.completed_query(&plan, sql).await {
                Ok((text, p, s)) => {
                    completed = text;
                    (p, s, completed.as_str())
                }
                Err(e) => {
                    self.push_error(&e);
                    self.push_ready();
                    return Ok(());
                }
            }
        } else {
            (plan, scanned, sql)
        };
        if plan.stmts.is_empty() {
            build::empty(&mut self.out, b'I');
            self.push_ready();
            return Ok(());
        }
        if plan.stmts.iter().any(|s| s.dirties) {
            self.dirty = true;
        }
        if plan.stmts.iter().any(|s| s.kind == StmtKind::Ddl) {
            self.generated.refresh = true;
            if self.txn.status.is_open() {
                self.txn.ddl = true;
            }
        }
        let single = (plan.stmts.len() == 1).then(|| plan.stmts[0].kind.clone());
        // An aborted transaction lets only COMMIT, ROLLBACK and ROLLBACK TO through.
        if self.txn.failed && !single.as_ref().is_some_and(super::txn::exits_failed) {
            self.push_error(&ProxyError::InFailedTransaction);
            self.push_ready();
            return Ok(());
        }
        if let Some(kind) = single {
            if self.local_statement(&kind, sql).await? {
                return Ok(());
            }
        } else if plan.stmts.iter().any(|s| is_session_command(&s.kind))
            || self.notify_alone(&plan)
            // A client two-phase command among others: the proxy answers it in turn.
            || Self::two_phase_among(plan.stmts.iter().map(|s| &s.kind))
            || self.txn.status.is_open()
                && plan
                    .stmts
                    .iter()
                    .any(|s| is_txn_control(&s.kind) || super::txn::is_setting(&s.kind))
        {
            // DEALLOCATE, DISCARD ALL and session functions among other statements act on
            // the client's session as the proxy keeps it, never on a backend.
            return self.run_each(&plan, sql).await;
        }
        if let Err(e) = self.enter().await {
            self.push_error(&e);
            self.push_ready();
            return Ok(());
        }
        self.directory_gate().await;
        if deferred {
            return self.run_each(&plan, sql).await;
        }
        let lits = scanned
            .as_ref()
            .map(|s| s.query_lits(sql))
            .unwrap_or_default();
        match self.simple_target(&plan, lits) {
            Ok(Some(target)) => self.run_simple(&plan, sql, target, false).await.map(|_| ()),
            // Each statement on its own target (reads; and transaction control, settings).
            Ok(None) => self.run_each(&plan, sql).await,
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
        lits: crate::routing::literals::QueryLits<'_>,
    ) -> Result<Option<Target>, ProxyError> {
        let mut target: Option<Target> = None;
        let mut split = false;
        for st in &plan.stmts {
            let t = self.resolve(&st.route, &[], &|_| false, lits)?;
            if matches!(st.route, crate::routing::router::RouteSpec::Any) {
                continue; // goes wherever the rest goes
            }
            match target {
                None => target = Some(t),
                Some(prev) if prev == t => {}
                Some(_) => split = true,
            }
        }
        let explicit = self.txn.status.is_open();
        if plan.stmts.len() > 1
            && plan
                .stmts
                .iter()
                .any(|s| s.gather().is_some() || s.cursor().is_some())
        {
            // Each merged statement, and each cursor statement, runs on its own.
            split = true;
        }
        if split || target.is_some_and(|t| t.is_multi()) && atomic_script(plan) {
            if self.session_mode && atomic_script(plan) {
                // (Session pooling keeps its connections between transactions: the proxy does
                // not open transactions of its own on them.)
                return Err(ProxyError::Unsupported(
                    "with pool.mode: session, a multi-statement query that writes or controls transactions on several shards is refused; send the statements separately".into(),
                ));
            }
            // Statement by statement (`run_each`): one implicit transaction across the shards
            // when the string writes or controls transactions.
            return Ok(None);
        }
        // (A string on several shards that must be atomic went statement by statement above:
        // each shard would have run, and committed, the string on its own.)
        let target = target.unwrap_or(Target::Shard(self.any_shard()));
        self.check_write(target, plan.writes(), explicit || plan.stmts.len() > 1)?;
        Ok(Some(target))
    }

    /// Statements the proxy answers itself. Returns true when handled.
    async fn local_statement(&mut self, kind: &StmtKind, sql: &str) -> Result<bool, SessionEnd> {
        match kind {
            StmtKind::Begin if self.txn.status.is_idle() && self.conns.is_empty() => {
                // Lazy BEGIN: the transaction starts on the shards its statements reach.
                self.txn = Txn::begun(sql.trim().trim_end_matches(';').to_string());
                build::command_complete(&mut self.out, super::txn::begin_tag(sql));
                self.push_ready();
                Ok(true)
            }
            StmtKind::Savepoint(op) if self.txn.status.is_open() => {
                self.savepoint(op, sql).await?;
                self.push_ready();
                Ok(true)
            }
            k if self.txn.status.is_open() && super::txn::is_setting(k) => {
                self.txn_setting(k, sql).await?;
                self.push_ready();
                Ok(true)
            }
            StmtKind::Commit | StmtKind::Rollback if self.txn.status.is_open() => {
                self.end_transaction(matches!(kind, StmtKind::Commit), sql, true)
                    .await?;
                Ok(true)
            }
            StmtKind::TwoPhase(op) => {
                self.two_phase(op, true).await?;
                Ok(true)
            }
            StmtKind::DiscardAll | StmtKind::ResetAll | StmtKind::Deallocate(_) => {
                self.session_command(kind);
                self.push_ready();
                Ok(true)
            }
            StmtKind::SessionFn(f) => {
                self.session_fn(f, true, false, None).await;
                self.push_ready();
                Ok(true)
            }
            StmtKind::Notify(cmd) => {
                self.notify_statement(cmd).await;
                self.push_ready();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `DISCARD ALL`, `RESET ALL`, `DEALLOCATE [ALL]`: they act on the client's session as
    /// the proxy keeps it (its settings, its prepared statements), never on a pooled backend
    /// (whose statements are the proxy's). Queues the reply, not ReadyForQuery; returns
    /// whether it succeeded.
    pub(super) fn session_command(&mut self, kind: &StmtKind) -> bool {
        match self.apply_session_command(kind) {
            Ok(tag) => {
                build::command_complete(&mut self.out, tag);
                true
            }
            Err(e) => {
                self.push_error(&e);
                false
            }
        }
    }

    /// The effect of a [`Session::session_command`]: its command tag, or its error.
    pub(super) fn apply_session_command(
        &mut self,
        kind: &StmtKind,
    ) -> Result<&'static str, ProxyError> {
        Ok(match kind {
            StmtKind::DiscardAll if self.txn.status.is_open() => {
                return Err(ProxyError::Backend {
                    code: "25001".into(),
                    message: "DISCARD ALL cannot run inside a transaction block".into(),
                });
            }
            StmtKind::DiscardAll => {
                // Through apply_setting, so the client encoding follows the reset too.
                self.apply_setting(SettingChange::ResetAll);
                self.stmts.clear();
                self.notify_discard();
                "DISCARD ALL"
            }
            StmtKind::ResetAll => {
                self.apply_setting(SettingChange::ResetAll);
                "RESET"
            }
            StmtKind::Deallocate(None) => {
                self.stmts.clear();
                "DEALLOCATE ALL"
            }
            StmtKind::Deallocate(Some(name)) => {
                if self.stmts.remove(name).is_none() {
                    return Err(ProxyError::NoSuchStatement(name.clone()));
                }
                "DEALLOCATE"
            }
            _ => return Err(ProxyError::Unsupported("not a session command".into())),
        })
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
        let out_mark = self.out.len();
        loop {
            attempt += 1;
            let reused = self.conns.is_empty();
            // One statement's execution kind, as the router decided it; a multi-statement
            // text is forwarded (or, across shards, run as written on each).
            let exec = match plan.stmts.as_slice() {
                [one] => &one.exec,
                _ => &Execution::Forward,
            };
            let r = match (exec, target) {
                (Execution::Cursor(c), _) => self.cursor_simple(c, sql, target, hide_ready).await,
                (Execution::Explain(ex), _) => {
                    // Several shards run the rewritten query a merge needs; EXPLAIN that.
                    let text = match (&ex.shard_sql, target) {
                        (Some(s), Target::Set(_)) => s.as_str(),
                        _ => sql,
                    };
                    self.exec_explain(&ex.merge, text, target, hide_ready).await
                }
                (_, Target::Shard(s)) => self.exec_query_one(s, sql, hide_ready).await,
                (Execution::Merge(gp), Target::Set(set)) => {
                    let call = GatherCall {
                        plan: gp,
                        sql,
                        param_types: &[],
                        bind: None,
                        describe: true,
                    };
                    self.gather(&call, set, hide_ready).await.map(Ok)
                }
                (Execution::Copy(cp), Target::Set(_)) => {
                    self.copy_in_split(cp, sql, hide_ready).await.map(|r| r.0)
                }
                (Execution::SplitInsert(split), Target::Set(_)) => {
                    match split.statements(&self.topo.map, None) {
                        Ok(parts) => {
                            let work: Vec<ShardWrite> = parts
                                .into_iter()
                                .map(|p| ShardWrite {
                                    shard: p.shard,
                                    sql: p.sql,
                                    bind: None,
                                    rows: p.rows,
                                })
                                .collect();
                            // Inside a transaction check_write allowed it (two-phase commit).
                            self.multi_write(&work, WriteProtocol::Simple, false, hide_ready)
                                .await
                        }
                        Err(e) => Ok(Err(e)),
                    }
                }
                (Execution::Forward, Target::Set(set))
                    if atomic_write(plan) && self.txn.status.is_idle() =>
                {
                    let work: Vec<ShardWrite> = set
                        .iter()
                        .map(|shard| ShardWrite {
                            shard,
                            sql: sql.to_string(),
                            bind: None,
                            rows: Vec::new(),
                        })
                        .collect();
                    let replicated = plan.replicated();
                    self.multi_write(&work, WriteProtocol::Simple, replicated, hide_ready)
                        .await
                }
                (Execution::Forward, Target::Set(set)) => {
                    self.exec_query_all(set, sql, hide_ready, plan.replicated())
                        .await
                }
                // Bound arrays exist only in the extended protocol (its route refuses here).
                (Execution::SplitArrays(_), Target::Set(_)) => Ok(Err(ProxyError::Unsupported(
                    "INSERT … SELECT FROM unnest of array parameters needs the extended protocol"
                        .into(),
                ))),
                // Completed before it is planned (`simple_query`): never run as written.
                (Execution::Generate(_), Target::Set(_)) => Ok(Err(ProxyError::Internal(
                    "an INSERT that needs generated values was run as written".into(),
                ))),
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
                    // on a fresh one, when nothing reached the client and no transaction is open
                    // — never when the shard ended the session on purpose with a FATAL while
                    // the statement ran (an administrator's pg_terminate_backend stops it).
                    let ended = matches!(error, crate::backend::conn::BackendError::Ended { .. });
                    if attempt == 1 && reused && !forwarded && !ended && self.txn.status.is_idle() {
                        self.out.truncate(out_mark);
                        continue;
                    }
                    self.lose_transaction();
                    self.push_error(&e);
                    if !hide_ready {
                        self.push_ready();
                    }
                    return Ok(true);
                }
            }
        }
    }

    pub(super) async fn exec_query_one(
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

    pub(super) async fn exec_query_all(
        &mut self,
        set: crate::sharding::shardset::ShardSet,
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
        // Follow the string's own BEGIN/COMMIT/ROLLBACK: a setting inside a block is a step
        // of the transaction (kept at COMMIT, dropped at ROLLBACK), outside one it is the
        // session's at once.
        let mut in_block = self.txn.status.is_open();
        let mut settings = false;
        let mut only_autocommit = true;
        for st in &plan.stmts {
            let text = sql.get(st.span.0..st.span.1).unwrap_or("").trim();
            match &st.kind {
                StmtKind::Begin => {
                    self.txn.prelude = Some(text.trim_end_matches(';').to_string());
                    in_block = true;
                }
                StmtKind::Commit if !outcome.error => {
                    for ch in self.txn.take_changes() {
                        self.apply_setting(ch);
                    }
                    in_block = false;
                }
                StmtKind::Rollback if !outcome.error => {
                    self.txn.truncate_steps(0);
                    in_block = false;
                }
                k if super::txn::is_setting(k) => {
                    settings = true;
                    if matches!(k, StmtKind::Reset { .. } | StmtKind::ResetAll) {
                        // The backend reset to its own defaults, not the client's startup
                        // parameters: it is brought back to the client's settings before reuse.
                        only_autocommit = false;
                    }
                    if outcome.error {
                        // Which of them ran is unknown: the connections are resynced.
                        only_autocommit = false;
                    } else if in_block {
                        only_autocommit = false;
                        // Shards the transaction reaches later replay it too. (Only a string
                        // that began the block gets here; inside one, settings go through
                        // `run_each`, which bounds them.)
                        self.txn.record_setting(k, text);
                        self.sync_codec();
                    } else if let Some(ch) = super::txn::setting_change(k, text) {
                        self.apply_setting(ch);
                    }
                }
                _ => {}
            }
            if in_block {
                only_autocommit = false;
            }
        }
        if plan.stmts.iter().any(|st| st.reshapes) {
            self.schema_changed();
        }
        if settings {
            // A connection that ran only autocommit SETs holds exactly the client's settings.
            let fp = if only_autocommit {
                self.settings.fingerprint()
            } else {
                super::settings::UNKNOWN_FP
            };
            for c in self.conns.iter_mut() {
                c.settings_fp = fp;
            }
        }
        if let Some(status) = outcome.status {
            if status.is_idle() && self.txn.status.is_open() {
                // The string itself ended the transaction (e.g. "...; COMMIT").
                let changes = self.txn.take_changes();
                if !outcome.error {
                    for ch in changes {
                        self.apply_setting(ch);
                    }
                }
                self.txn = Txn::idle();
                self.sync_codec();
            }
            self.txn.status = status;
            if status == TxnStatus::Failed {
                // One shard's failure fails the client's whole transaction.
                self.txn.fail();
            }
        }
        self.release_if_idle(false);
    }
}

impl Session {
    /// A multi-statement string whose statements need different shards, or that holds
    /// savepoint, settings or transaction-control statements inside a transaction block: one
    /// statement at a time, each on its own target, as Postgres runs them (so savepoints and
    /// settings reach every shard the transaction holds). The first error stops the string;
    /// one ReadyForQuery ends it.
    ///
    /// Outside a transaction block, a string that writes or controls transactions runs in
    /// one implicit transaction across the shards it reaches, as Postgres runs it (see
    /// [`super::implicit`]): all of it commits, or none.
    pub(super) async fn run_each(&mut self, plan: &Plan, sql: &str) -> Result<(), SessionEnd> {
        let implicit = self.txn.status.is_idle() && !self.session_mode && atomic_script(plan);
        let ddl = plan.stmts.iter().any(|s| s.kind == StmtKind::Ddl);
        for st in &plan.stmts {
            if implicit && self.txn.status.is_idle() {
                // The first statement, or the next after the string's own COMMIT.
                self.open_implicit(ddl);
            }
            let text = sql.get(st.span.0..st.span.1).unwrap_or("").trim();
            if !self.run_one_of_many(st, text).await? {
                // An error aborts the transaction the string is in, as in Postgres.
                self.txn.fail();
                break;
            }
        }
        if implicit {
            self.close_implicit().await?;
        }
        self.push_ready();
        Ok(())
    }

    /// One statement of [`Session::run_each`]; returns whether it succeeded.
    pub(super) async fn run_one_of_many(
        &mut self,
        st: &crate::routing::router::StmtPlan,
        text: &str,
    ) -> Result<bool, SessionEnd> {
        if self.txn.failed && !super::txn::exits_failed(&st.kind) {
            self.push_error(&ProxyError::InFailedTransaction);
            return Ok(false);
        }
        match &st.kind {
            StmtKind::Begin if self.txn.implicit => {
                self.adopt_implicit();
                return Ok(true);
            }
            StmtKind::Commit | StmtKind::Rollback if self.txn.status.is_open() => {
                if self.txn.implicit {
                    self.warn_no_transaction();
                }
                let commit = st.kind == StmtKind::Commit;
                return self.end_transaction(commit, text, false).await;
            }
            StmtKind::Savepoint(op) if self.txn.implicit => {
                self.push_error(&Self::savepoint_outside_block(op));
                self.txn.fail();
                return Ok(false);
            }
            StmtKind::Savepoint(op) if self.txn.status.is_open() => {
                self.savepoint(op, text).await?;
                return Ok(!self.txn.failed);
            }
            k if self.txn.status.is_open() && super::txn::is_setting(k) => {
                self.txn_setting(k, text).await?;
                return Ok(!self.txn.failed);
            }
            StmtKind::DiscardAll | StmtKind::ResetAll | StmtKind::Deallocate(_) => {
                return Ok(self.session_command(&st.kind));
            }
            StmtKind::SessionFn(f) => {
                self.session_fn(f, true, false, None).await;
                return Ok(true);
            }
            StmtKind::Prepare(_) | StmtKind::Execute(_) => {
                return self.sql_prepared_one(&st.kind, text).await;
            }
            StmtKind::Notify(cmd) => return Ok(self.notify_statement(cmd).await),
            StmtKind::TwoPhase(TpcOp::Prepare(_)) if self.txn.implicit => {
                self.push_error(&super::client_tpc::prepare_in_implicit());
                self.txn.fail();
                return Ok(false);
            }
            StmtKind::TwoPhase(op) => return self.two_phase(op, false).await,
            _ => {}
        }
        let (one, scanned, text) = match st.generate() {
            // An INSERT the proxy completes, in a script that made its table: looked up and
            // completed now that the statements before it ran.
            Some(_) => match self.complete_one(st, text).await {
                Ok((p, s, t)) => (p, s, std::borrow::Cow::Owned(t)),
                Err(e) => {
                    self.push_error(&e);
                    return Ok(false);
                }
            },
            None => (
                std::sync::Arc::new(Plan {
                    stmts: vec![st.clone()],
                }),
                None,
                std::borrow::Cow::Borrowed(text),
            ),
        };
        let Some(st) = one.stmts.first() else {
            return Ok(true);
        };
        let lits = scanned
            .as_ref()
            .map(|s| s.query_lits(&text))
            .unwrap_or_default();
        let target = match self.resolve(&st.route, &[], &|_| false, lits) {
            Ok(t) => t,
            Err(e) => {
                self.push_error(&e);
                return Ok(false);
            }
        };
        if let Err(e) = self.check_write(target, one.writes(), self.txn.status.is_open()) {
            self.push_error(&e);
            return Ok(false);
        }
        let failed = self.run_simple(&one, &text, target, true).await?;
        Ok(!failed)
    }

    /// One INSERT of a script, looked up in the catalog (through the script's own
    /// transaction when it made the table) and completed: its plan, literal scan and text.
    async fn complete_one(
        &mut self,
        st: &crate::routing::router::StmtPlan,
        text: &str,
    ) -> Result<
        (
            std::sync::Arc<Plan>,
            Option<crate::routing::literals::Scanned>,
            String,
        ),
        ProxyError,
    > {
        let own = Plan {
            stmts: vec![st.clone()],
        };
        if own.unknown_tables().next().is_some() {
            self.learn_tables(&own).await?;
        }
        let (plan, scanned) = self.topo.cache.get_simple(&self.topo.map, text)?;
        if !plan.generates() {
            return Ok((plan, scanned, text.to_string()));
        }
        let (t, p, s) = self.completed_query(&plan, text).await?;
        Ok((p, s, t))
    }
}

/// Statements the proxy answers from the client's session as it keeps it.
fn is_session_command(k: &StmtKind) -> bool {
    matches!(
        k,
        StmtKind::DiscardAll | StmtKind::Deallocate(_) | StmtKind::SessionFn(_)
    )
}

fn is_txn_control(k: &StmtKind) -> bool {
    matches!(
        k,
        StmtKind::Begin
            | StmtKind::Commit
            | StmtKind::Rollback
            | StmtKind::Savepoint(_)
            | StmtKind::TwoPhase(_)
    )
}

/// A multi-statement string that must be one transaction across shards: it writes, or
/// holds transaction control (whose BEGIN/COMMIT the proxy follows across shards).
fn atomic_script(plan: &Plan) -> bool {
    plan.stmts.len() > 1 && (plan.writes() || plan.stmts.iter().any(|s| is_txn_control(&s.kind)))
}

/// A single write statement on several shards (a reference-table write, a keyless UPDATE
/// or DELETE, an INSERT … SELECT per shard): it runs all-or-nothing (see
/// [`super::multiwrite`]).
fn atomic_write(plan: &Plan) -> bool {
    matches!(plan.stmts.as_slice(), [st] if st.kind == StmtKind::Write)
}
