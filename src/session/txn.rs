//! The client's transaction block, kept as one transaction across the shards it touches.
//!
//! What a client can rely on (the same as from one Postgres server):
//! - **One failure fails it all.** The first error inside a transaction block — from any
//!   shard, or from the proxy itself — puts the whole client transaction in the aborted
//!   state: every later statement gets `25P02` without reaching a shard, `COMMIT` answers
//!   `ROLLBACK` and rolls every shard back, `ROLLBACK` ends it, and `ROLLBACK TO` a savepoint
//!   made before the error makes it usable again.
//! - **Shards join lazily and catch up.** A shard the transaction reaches for the first time
//!   starts with the transaction's own BEGIN text and then replays the transaction's steps in
//!   order: settings (`SET`, `SET LOCAL`, `RESET`, `SET TRANSACTION …`) and savepoints. A
//!   shard that joins after a `SAVEPOINT` gets the savepoint right after its BEGIN, so
//!   `ROLLBACK TO` undoes everything it did since.
//! - **Savepoints and settings reach every shard.** `SAVEPOINT`, `RELEASE`, `ROLLBACK TO` and
//!   settings run on every shard the transaction holds, and are recorded as steps for the
//!   shards it reaches later. `ROLLBACK TO` drops the steps made after the savepoint (their
//!   settings are undone, as in Postgres); `RELEASE` keeps them.
//! - **A lost shard loses the transaction.** When a shard connection fails mid-transaction,
//!   the other shards are rolled back (their connections closed) and the client transaction
//!   stays aborted until the client's `ROLLBACK` (or `COMMIT`, answered `ROLLBACK`).
//!
//! Commits that wrote on several shards go through two-phase commit ([`super::commit`]).

use std::collections::VecDeque;

use super::relay::{Expect, Outcome, RelayError};
use super::{Session, SessionEnd, Target};
use crate::error::ProxyError;
use crate::routing::router::{NotifyCmd, SavepointOp, StmtKind, TpcOp};
use crate::wire::protocol::build;

/// Most savepoints and settings statements one transaction block may hold.
pub const MAX_STEPS: usize = 10_000;

/// A change to the client's session settings, kept when the transaction commits.
#[derive(Debug, Clone)]
pub(super) enum SettingChange {
    /// `SET name …` with its statement text.
    Set(String, String),
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL` / `DISCARD ALL`.
    ResetAll,
    /// LISTEN, UNLISTEN or NOTIFY of the block (see [`super::notify`]).
    Notify(Box<NotifyCmd>),
}

/// The `client_encoding` a settings statement inside a transaction block switches to. In
/// Postgres it takes effect at once (the backend converts the client's next messages from
/// it and reports it in a ParameterStatus), lasts until the block ends, and is undone by
/// `ROLLBACK` or `ROLLBACK TO` a savepoint made before it; `COMMIT` keeps a plain `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    /// `SET [LOCAL] client_encoding` / `SET [LOCAL] NAMES`: this one (Postgres's name;
    /// `None` for UTF8, see [`super::settings::encoding_set_by`]).
    Named(Option<&'static str>),
    /// `RESET client_encoding` / `RESET ALL`: the session's default, its startup value.
    Default,
}

impl Encoding {
    /// The switch a settings statement `sql` of kind `kind` makes, if any.
    fn switched_by(kind: &StmtKind, sql: &str) -> Option<Encoding> {
        let named = || Encoding::Named(super::settings::encoding_set_by(sql));
        match kind {
            StmtKind::Set { name } if name == "client_encoding" => Some(named()),
            StmtKind::SetLocal if super::settings::sets_local_encoding(sql) => Some(named()),
            StmtKind::Reset { name } if name == "client_encoding" => Some(Encoding::Default),
            StmtKind::ResetAll | StmtKind::DiscardAll => Some(Encoding::Default),
            _ => None,
        }
    }
}

/// Something a shard joining the transaction late must replay after its BEGIN.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// A settings statement, the session-level change it makes at COMMIT (`None` for
    /// `SET LOCAL` / `SET TRANSACTION`, which end with the transaction) and the client
    /// encoding it switches to.
    Setting {
        sql: String,
        change: Option<SettingChange>,
        encoding: Option<Encoding>,
    },
    /// A savepoint, by the name Postgres gives it.
    Savepoint(String),
    /// LISTEN, UNLISTEN or NOTIFY, carried out at COMMIT (see [`super::notify`]); no shard
    /// replays it.
    Notify(Box<NotifyCmd>),
}

/// The transaction status a ReadyForQuery reports: the client's, or one shard's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// Outside a transaction block (`I`).
    Idle,
    /// Inside a transaction block (`T`).
    InBlock,
    /// Inside a failed transaction block (`E`).
    Failed,
}

impl TxnStatus {
    /// The status byte ReadyForQuery carries.
    #[inline]
    pub fn byte(self) -> u8 {
        match self {
            TxnStatus::Idle => b'I',
            TxnStatus::InBlock => b'T',
            TxnStatus::Failed => b'E',
        }
    }

    /// The status in the body of a backend's ReadyForQuery (`T`, `E`; anything else is idle).
    #[inline]
    pub fn of_ready(body: &[u8]) -> Self {
        match body.first() {
            Some(b'T') => TxnStatus::InBlock,
            Some(b'E') => TxnStatus::Failed,
            _ => TxnStatus::Idle,
        }
    }

    /// Whether this is outside a transaction block.
    #[inline]
    pub fn is_idle(self) -> bool {
        self == TxnStatus::Idle
    }

    /// Whether a transaction block is open (in progress or failed).
    #[inline]
    pub fn is_open(self) -> bool {
        self != TxnStatus::Idle
    }

    /// The status of a statement that ran on several shards: failed if any shard failed, in
    /// a block if any is, else idle.
    #[inline]
    pub fn combine(self, other: TxnStatus) -> TxnStatus {
        match (self, other) {
            (TxnStatus::Failed, _) | (_, TxnStatus::Failed) => TxnStatus::Failed,
            (TxnStatus::InBlock, _) | (_, TxnStatus::InBlock) => TxnStatus::InBlock,
            _ => TxnStatus::Idle,
        }
    }
}

/// Transaction state as the client sees it.
#[derive(Debug)]
pub(super) struct Txn {
    /// What the client's ReadyForQuery reports.
    pub status: TxnStatus,
    /// The BEGIN text that starts the transaction on shards it reaches later.
    pub prelude: Option<String>,
    /// Settings and savepoints, in order, replayed on shards that join later.
    pub steps: Vec<Step>,
    /// Where the transaction wrote.
    pub written: Option<Target>,
    /// The transaction is aborted (an error anywhere): only ROLLBACK / ROLLBACK TO get through.
    pub failed: bool,
    /// A shard connection failed: the work on every shard is gone, only ROLLBACK ends it.
    pub lost: bool,
    /// The block ran DDL: rolled back (or back to a savepoint), what it created is gone, so
    /// statements the backends prepared against it are stale.
    pub ddl: bool,
    /// The client encoding the latest step still in `steps` switched to: in effect until
    /// the block ends (see [`Encoding`]).
    pub encoding: Option<Encoding>,
    /// Opened by the proxy around a multi-statement query or a pipeline that runs on several
    /// shards outside a transaction block (Postgres's implicit transaction): it commits or
    /// rolls back when they end, and the client never sees its BEGIN or COMMIT (see
    /// [`super::implicit`]).
    pub implicit: bool,
}

impl Txn {
    /// No transaction.
    pub fn idle() -> Self {
        Txn {
            status: TxnStatus::Idle,
            prelude: None,
            steps: Vec::new(),
            written: None,
            failed: false,
            lost: false,
            ddl: false,
            encoding: None,
            implicit: false,
        }
    }

    /// A transaction begun with `begin` (the client's BEGIN text) that has touched no shard.
    pub fn begun(begin: String) -> Self {
        Txn {
            status: TxnStatus::InBlock,
            prelude: Some(begin),
            ..Txn::idle()
        }
    }

    /// Marks an open transaction aborted (nothing happens outside one).
    pub fn fail(&mut self) {
        if self.status.is_open() {
            self.status = TxnStatus::Failed;
            self.failed = true;
        }
    }

    /// Marks an open transaction aborted for good: its shards' work is gone.
    pub fn lose(&mut self) {
        if self.status.is_open() {
            self.fail();
            self.lost = true;
        }
    }

    /// What a shard joining the transaction runs: the BEGIN text, then every step.
    pub fn join_sql(&self) -> String {
        let mut sql = self.prelude.clone().unwrap_or_else(|| "BEGIN".to_string());
        for step in &self.steps {
            match step {
                Step::Setting { sql: s, .. } => {
                    sql.push_str("; ");
                    sql.push_str(s.trim().trim_end_matches(';'));
                }
                Step::Savepoint(name) => {
                    sql.push_str("; SAVEPOINT ");
                    sql.push_str(&postgres_protocol::escape::escape_identifier(name));
                }
                Step::Notify(_) => {}
            }
        }
        sql
    }

    /// Index in `steps` of the latest savepoint called `name`.
    fn savepoint_at(&self, name: &str) -> Option<usize> {
        self.steps
            .iter()
            .rposition(|s| matches!(s, Step::Savepoint(n) if n == name))
    }

    /// The session-level setting changes the transaction made, in order (applied at COMMIT),
    /// with its LISTEN/UNLISTEN/NOTIFY.
    pub fn take_changes(&mut self) -> Vec<SettingChange> {
        self.encoding = None;
        std::mem::take(&mut self.steps)
            .into_iter()
            .filter_map(|s| match s {
                Step::Setting { change, .. } => change,
                Step::Savepoint(_) => None,
                Step::Notify(cmd) => Some(SettingChange::Notify(cmd)),
            })
            .collect()
    }

    /// Whether the transaction may record another step (a bound on what a shard joining
    /// late replays and on the memory one transaction holds in the proxy).
    pub fn has_room(&self) -> bool {
        self.steps.len() < MAX_STEPS
    }

    /// Records a settings statement `sql` of kind `kind` that ran in the transaction.
    pub fn record_setting(&mut self, kind: &StmtKind, sql: &str) {
        let change = setting_change(kind, sql);
        let encoding = Encoding::switched_by(kind, sql);
        if encoding.is_some() {
            self.encoding = encoding;
        }
        self.steps.push(Step::Setting {
            sql: sql.trim().trim_end_matches(';').to_string(),
            change,
            encoding,
        });
    }

    /// Keeps the first `len` steps (`ROLLBACK TO`): the settings after them are undone,
    /// the client encoding included.
    pub fn truncate_steps(&mut self, len: usize) {
        self.steps.truncate(len);
        self.encoding = self.steps.iter().rev().find_map(|s| match s {
            Step::Setting { encoding, .. } => *encoding,
            Step::Savepoint(_) | Step::Notify(_) => None,
        });
    }
}

/// The session-level change a settings statement makes (none for SET LOCAL and friends).
pub(super) fn setting_change(kind: &StmtKind, sql: &str) -> Option<SettingChange> {
    match kind {
        StmtKind::Set { name } => Some(SettingChange::Set(
            name.clone(),
            sql.trim().trim_end_matches(';').to_string(),
        )),
        StmtKind::Reset { name } => Some(SettingChange::Reset(name.clone())),
        StmtKind::ResetAll | StmtKind::DiscardAll => Some(SettingChange::ResetAll),
        _ => None,
    }
}

/// The command tag of a BEGIN the proxy answers: `START TRANSACTION` for that spelling.
pub(super) fn begin_tag(sql: &str) -> &'static str {
    let t = sql.trim_start().as_bytes();
    if t.len() >= 5 && t[..5].eq_ignore_ascii_case(b"start") {
        "START TRANSACTION"
    } else {
        "BEGIN"
    }
}

/// Whether a statement may run in an aborted transaction (Postgres's
/// `IsTransactionExitStmt`: COMMIT, ROLLBACK, ROLLBACK TO, PREPARE TRANSACTION).
pub(super) fn exits_failed(kind: &StmtKind) -> bool {
    matches!(
        kind,
        StmtKind::Commit
            | StmtKind::Rollback
            | StmtKind::Savepoint(SavepointOp::RollbackTo(_))
            | StmtKind::TwoPhase(TpcOp::Prepare(_))
    )
}

/// Whether a statement changes settings in the way [`Session::txn_setting`] handles.
pub(super) fn is_setting(kind: &StmtKind) -> bool {
    matches!(
        kind,
        StmtKind::Set { .. } | StmtKind::SetLocal | StmtKind::Reset { .. } | StmtKind::ResetAll
    )
}

impl Session {
    /// After a shard connection failed (`backend_failed` already dropped every held
    /// connection, so every shard rolls back): the client's transaction, if any, stays
    /// aborted until it ends it.
    pub(super) fn lose_transaction(&mut self) {
        self.txn.lose();
    }

    /// Runs `sql` on every connection the transaction holds. On a shard's error it queues the
    /// error (failing the transaction) and returns false; a lost connection loses the
    /// transaction.
    async fn on_every_held(&mut self, sql: &str) -> bool {
        for i in 0..self.conns.len() {
            let shard = self.conns[i].shard;
            // The first shard's ParameterStatus messages are the client's (a SET DateStyle
            // inside a block is reported at once, as Postgres does; drivers parse by it).
            let statuses = (i == 0).then_some(&mut self.out);
            match self.conns[i].run_simple_into(sql, statuses).await {
                Ok((None, _)) => {}
                Ok((Some((code, message)), _)) => {
                    self.push_error(&ProxyError::Backend { code, message });
                    return false;
                }
                Err(error) => {
                    let e = self.backend_failed(shard, &error);
                    self.lose_transaction();
                    self.push_error(&e);
                    return false;
                }
            }
        }
        true
    }

    /// `SAVEPOINT`, `RELEASE` or `ROLLBACK TO` inside a transaction block: on every shard the
    /// transaction holds, and recorded for the shards it reaches later. Queues the reply
    /// (CommandComplete or an error), not ReadyForQuery.
    pub(super) async fn savepoint(
        &mut self,
        op: &SavepointOp,
        sql: &str,
    ) -> Result<(), SessionEnd> {
        let sql = sql.trim().trim_end_matches(';');
        if matches!(op, SavepointOp::Define(_)) && !self.txn.has_room() {
            self.push_error(&too_many_steps());
            return Ok(());
        }
        match op {
            SavepointOp::Define(name) => {
                if self.on_every_held(sql).await {
                    self.txn.steps.push(Step::Savepoint(name.clone()));
                    build::command_complete(&mut self.out, "SAVEPOINT");
                }
            }
            SavepointOp::Release(name) => {
                let Some(at) = self.txn.savepoint_at(name) else {
                    self.push_error(&no_savepoint(name));
                    return Ok(());
                };
                if self.on_every_held(sql).await {
                    // The savepoint and every one made after it are gone; settings stay.
                    let mut k = 0;
                    self.txn.steps.retain(|s| {
                        let keep = k < at || !matches!(s, Step::Savepoint(_));
                        k += 1;
                        keep
                    });
                    build::command_complete(&mut self.out, "RELEASE");
                }
            }
            SavepointOp::RollbackTo(name) => {
                if self.txn.lost {
                    self.push_error(&ProxyError::Backend {
                        code: "25P02".into(),
                        message: "current transaction is aborted: a shard connection was lost, so only ROLLBACK can end it".into(),
                    });
                    return Ok(());
                }
                let Some(at) = self.txn.savepoint_at(name) else {
                    self.push_error(&no_savepoint(name));
                    return Ok(());
                };
                if self.txn.ddl {
                    self.schema_changed();
                }
                if self.on_every_held(sql).await {
                    // What came after the savepoint is undone, settings included (the
                    // backends' client_encoding too: the proxy's conversion follows).
                    self.txn.truncate_steps(at + 1);
                    self.sync_codec();
                    self.txn.failed = false;
                    self.txn.status = TxnStatus::InBlock;
                    build::command_complete(&mut self.out, "ROLLBACK");
                }
            }
        }
        Ok(())
    }

    /// `SET`, `SET LOCAL`, `SET TRANSACTION`, `RESET` inside a transaction block: on every
    /// shard the transaction holds (joining one first when it holds none, so the value is
    /// checked as Postgres checks it), and recorded for the shards it reaches later. Queues
    /// the reply, not ReadyForQuery.
    pub(super) async fn txn_setting(
        &mut self,
        kind: &StmtKind,
        sql: &str,
    ) -> Result<(), SessionEnd> {
        if !self.txn.has_room() {
            self.push_error(&too_many_steps());
            return Ok(());
        }
        // RESET returns to the session's defaults, the client's startup parameters included.
        let reset = match kind {
            StmtKind::ResetAll => self.settings.reset_sql(None),
            StmtKind::Reset { name } => self.settings.reset_sql(Some(name)),
            _ => None,
        };
        let stmt = reset.unwrap_or_else(|| sql.trim().trim_end_matches(';').to_string());
        if self.conns.is_empty() {
            let shard = self.any_shard();
            if let Err(e) = self.conn_for(shard).await {
                self.push_error(&e);
                return Ok(());
            }
        }
        if self.on_every_held(&stmt).await {
            self.txn.record_setting(kind, &stmt);
            // A client_encoding set here is the backends' at once (their ParameterStatus
            // reached the client): the client's next messages come in it.
            self.sync_codec();
            let tag = match kind {
                StmtKind::Reset { .. } | StmtKind::ResetAll => "RESET",
                _ => "SET",
            };
            build::command_complete(&mut self.out, tag);
        }
        Ok(())
    }

    /// COMMIT/ROLLBACK of a transaction the proxy tracks; queues the reply (and, with
    /// `ready`, ReadyForQuery). An aborted transaction is rolled back whatever the client
    /// asked, and says `ROLLBACK`. Returns whether it ended without an error.
    pub(super) async fn end_transaction(
        &mut self,
        commit: bool,
        sql: &str,
        ready: bool,
    ) -> Result<bool, SessionEnd> {
        let commit = commit && !self.txn.failed;
        if !commit && self.txn.ddl {
            // A type or table made in this block and used by a prepared statement vanishes
            // with it: the backends' statements are prepared again.
            self.schema_changed();
        }
        if self.conns.is_empty() {
            if commit {
                for ch in self.txn.take_changes() {
                    self.apply_setting(ch);
                }
            }
            self.txn = Txn::idle();
            self.sync_codec();
            build::command_complete(&mut self.out, if commit { "COMMIT" } else { "ROLLBACK" });
            if ready {
                self.push_ready();
            }
            return Ok(true);
        }
        // A transaction that wrote on several shards commits on all of them as one.
        if commit && matches!(self.txn.written, Some(Target::Set(_))) {
            let idxs: Vec<usize> = (0..self.conns.len()).collect();
            let r = self.commit_all(&idxs).await;
            let changes = self.txn.take_changes();
            self.txn = Txn::idle();
            self.sync_codec();
            let ok = self.committed(r, changes)?;
            if ok {
                build::command_complete(&mut self.out, "COMMIT");
            }
            for c in self.conns.iter_mut() {
                c.settings_fp = super::settings::UNKNOWN_FP;
            }
            if ready {
                self.push_ready();
            }
            self.release_if_idle(false);
            return Ok(ok);
        }
        // Commit the shards that only read first, the one that wrote last; its reply is the client's.
        let writer = match self.txn.written {
            Some(Target::Shard(s)) => self.conns.iter().position(|c| c.shard == s),
            _ => None,
        };
        let last = writer.unwrap_or(self.conns.len() - 1);
        let text = if commit { sql } else { "ROLLBACK" };
        let mut order: Vec<usize> = (0..self.conns.len()).filter(|&i| i != last).collect();
        order.push(last);
        let mut outcome = Outcome::default();
        let mut msg = bytes::BytesMut::new();
        build::query(&mut msg, text);
        for &i in &order {
            let shard = self.conns[i].shard;
            if let Err(error) = self.conns[i].write_all(&msg).await {
                return Ok(self.end_lost(shard, &error, ready));
            }
            let mut ex = VecDeque::new();
            ex.push_back(Expect::Query { hide_ready: true });
            // Replies of the read-only shards are not shown; the writer's are.
            match self.relay_one(i, &mut ex, i != last).await {
                Ok(o) => outcome = o,
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Backend { shard, error, .. }) => {
                    return Ok(self.end_lost(shard, &error, ready));
                }
            }
        }
        let changed = self
            .txn
            .steps
            .iter()
            .any(|s| matches!(s, Step::Setting { .. }));
        if commit && !outcome.error {
            for ch in self.txn.take_changes() {
                self.apply_setting(ch);
            }
        }
        // Settings changed inside the transaction make the connections' state unknown.
        if changed || commit {
            let fp = self.settings.fingerprint();
            for c in self.conns.iter_mut() {
                if c.settings_fp != fp || changed {
                    c.settings_fp = super::settings::UNKNOWN_FP;
                }
            }
        }
        self.txn = Txn::idle();
        self.sync_codec();
        if ready {
            self.push_ready();
        }
        self.release_if_idle(false);
        Ok(!outcome.error)
    }
}

impl Session {
    /// A shard connection failed while the transaction ended: every shard rolls back (the
    /// connections are dropped), the client gets the error. Returns false (not ended cleanly).
    fn end_lost(
        &mut self,
        shard: usize,
        error: &crate::backend::conn::BackendError,
        ready: bool,
    ) -> bool {
        let e = self.backend_failed(shard, error);
        self.txn = Txn::idle();
        self.sync_codec();
        self.push_error(&e);
        if ready {
            self.push_ready();
        }
        false
    }
}

/// A transaction block past [`MAX_STEPS`] savepoints and settings.
fn too_many_steps() -> ProxyError {
    ProxyError::Backend {
        code: "54000".into(),
        message: format!(
            "more than {MAX_STEPS} savepoints and settings statements in one transaction block"
        ),
    }
}

/// `ROLLBACK TO` / `RELEASE` of a savepoint the transaction does not have.
fn no_savepoint(name: &str) -> ProxyError {
    ProxyError::Backend {
        code: "3B001".into(),
        message: format!("savepoint \"{name}\" does not exist"),
    }
}
