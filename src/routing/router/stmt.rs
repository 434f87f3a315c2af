//! The plan's vocabulary: statement kinds ([`StmtKind`]), routes ([`RouteSpec`], and
//! [`KeyRoute`] for routes decided at Bind), and the plans of a statement and of a query
//! string ([`StmtPlan`], [`Plan`]).

use std::sync::Arc;

use super::explain::ExplainPlan;
use super::key_src::RangeGroup;
use super::split::InsertSplit;
use crate::error::ProxyError;
use crate::gather::GatherPlan;
use crate::sharding::keys::KeyValue;
use crate::sharding::shardset::ShardSet;
use crate::sharding::strategy::Sharded;

/// What a statement is, as far as session handling cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StmtKind {
    /// A read (SELECT, VALUES, SHOW handled separately).
    Read,
    /// INSERT/UPDATE/DELETE/MERGE.
    Write,
    /// Schema change or other utility that must run on every shard.
    Ddl,
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / END (and COMMIT AND CHAIN).
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO, with the savepoint's name as Postgres folds it.
    Savepoint(SavepointOp),
    /// A session-level SET (not LOCAL); `name` is lowercased.
    Set {
        /// The setting name.
        name: String,
    },
    /// SET LOCAL / SET TRANSACTION: affects only the current transaction.
    SetLocal,
    /// RESET name.
    Reset {
        /// The setting name.
        name: String,
    },
    /// RESET ALL.
    ResetAll,
    /// DISCARD ALL.
    DiscardAll,
    /// DEALLOCATE name / DEALLOCATE ALL (`None`).
    Deallocate(Option<String>),
    /// SQL `PREPARE`: the session keeps the statement (see [`super::SqlPrepare`]).
    Prepare(Arc<super::SqlPrepare>),
    /// SQL `EXECUTE` (alone, in EXPLAIN or CREATE TABLE AS): the session runs the text
    /// [`super::expand`] makes of it.
    Execute(Arc<super::SqlExecute>),
    /// SHOW.
    Show,
    /// COPY ... FROM STDIN.
    CopyIn,
    /// `SELECT pg_backend_pid()`, `pg_cancel_backend(pid)` or `pg_terminate_backend(pid)` on
    /// its own: about the client's session as the proxy presents it, so the proxy answers it.
    SessionFn(SessionFn),
    /// LISTEN, UNLISTEN or NOTIFY: the proxy answers it (see `crate::session::notify`).
    /// Boxed, as rare: every statement's kind stays small.
    Notify(Box<NotifyCmd>),
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED` of the client's own
    /// two-phase commit (see `crate::session::client_tpc`).
    TwoPhase(TpcOp),
    /// Anything else that runs on one shard.
    Other,
}

/// A client's two-phase commit command, with its transaction identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpcOp {
    /// `PREPARE TRANSACTION 'gid'`.
    Prepare(String),
    /// `COMMIT PREPARED 'gid'`.
    CommitPrepared(String),
    /// `ROLLBACK PREPARED 'gid'`.
    RollbackPrepared(String),
}

impl TpcOp {
    /// The client's transaction identifier.
    pub fn gid(&self) -> &str {
        match self {
            TpcOp::Prepare(g) | TpcOp::CommitPrepared(g) | TpcOp::RollbackPrepared(g) => g,
        }
    }
}

/// LISTEN / UNLISTEN / NOTIFY, with the channel as Postgres names it (unquoted names
/// lowercased, quoted ones as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyCmd {
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`, or `UNLISTEN *` (`None`).
    Unlisten(Option<String>),
    /// `NOTIFY channel [, 'payload']`.
    Notify {
        /// The channel.
        channel: String,
        /// The payload (empty when none is given).
        payload: String,
    },
}

/// A server function about sessions that the proxy answers itself: a client's pid is the
/// one in its BackendKeyData (the proxy's), not a pooled backend's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFn {
    /// What it asks.
    pub call: SessionCall,
    /// The result column's name (the alias, or the function's name).
    pub column: String,
}

/// See [`SessionFn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCall {
    /// `pg_backend_pid()`.
    BackendPid,
    /// `pg_cancel_backend(pid)`.
    Cancel(PidArg),
    /// `pg_terminate_backend(pid)`.
    Terminate(PidArg),
    /// `currval(<sequence>)` of a sequence whose values the proxy assigns (see
    /// [`crate::sharding::catalog`]): the last value it gave this session. The sequence as
    /// the catalog names it.
    CurrVal(String),
    /// `lastval()`, where the proxy assigns generated values: the last one it gave this session.
    LastVal,
    /// `pg_notify(channel, payload)`: sent through the proxy's notification path (see
    /// [`StmtKind::Notify`]). Boxed, as rare.
    Notify(Box<(TextArg, TextArg)>),
}

/// A text argument of [`SessionCall::Notify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextArg {
    /// A constant (`None`: NULL).
    Value(Option<String>),
    /// Bind parameter `$n` (index `n - 1`).
    Param(usize),
}

/// The pid argument of [`SessionCall::Cancel`] / [`SessionCall::Terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidArg {
    /// A literal.
    Value(i64),
    /// Bind parameter `$n` (index `n - 1`); Knex and node-postgres bind the pid.
    Param(usize),
}

/// A savepoint command; the name is the one Postgres uses (unquoted names lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointOp {
    /// `SAVEPOINT name`.
    Define(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackTo(String),
}

/// Where a statement goes, as far as it is known before parameters are bound.
#[derive(Debug, Clone)]
pub enum RouteSpec {
    /// Touches no sharded data: any one shard answers (the session picks one).
    Any,
    /// One shard (unsharded tables, or keys given as literals).
    Shard(usize),
    /// Every shard (DDL, reference writes, keyless reads where concatenation is exact).
    All,
    /// Some of the shards (a key list that lands on several): only those run it.
    Subset(ShardSet),
    /// Depends on Bind parameters.
    Keys(Arc<KeyRoute>),
    /// Refused, with the error to send.
    Refuse(ProxyError),
}

/// A route that is decided from Bind parameters (or, for directory tables, from the
/// directory at execution time).
#[derive(Debug, Clone)]
pub struct KeyRoute {
    /// Shards already fixed by literal keys.
    pub fixed: Vec<usize>,
    /// Parameters (0-based index) that carry shard keys, with their table.
    pub params: Vec<(usize, Arc<Sharded>)>,
    /// Constants of a literal template that carry shard keys: (constant #, table, negated).
    pub literals: Vec<(usize, Arc<Sharded>, bool)>,
    /// Constant keys of tables whose placement can change (directory): located per execution.
    pub values: Vec<(KeyValue, Arc<Sharded>)>,
    /// Range predicates with parameters: each adds the shards its ranges overlap.
    pub ranges: Vec<Arc<RangeGroup>>,
    /// Where the statement goes when its keys land on several shards.
    pub spread: Box<RouteSpec>,
    /// Whether a NULL key is an error (INSERT) rather than "matches nothing".
    pub null_is_error: bool,
    /// Table and key column, for messages.
    pub what: String,
    /// The shard every key must land on (unsharded tables in the statement live there), and the table.
    pub require: Option<(usize, String)>,
}

impl KeyRoute {
    /// Whether every key is already located (no parameters, template constants or
    /// directory keys): the route can be fixed when the plan is made.
    pub fn is_static(&self) -> bool {
        self.params.is_empty()
            && self.literals.is_empty()
            && self.values.is_empty()
            && self.ranges.is_empty()
    }
}

/// One analyzed statement.
#[derive(Debug, Clone)]
pub struct StmtPlan {
    /// Kind.
    pub kind: StmtKind,
    /// Route.
    pub route: RouteSpec,
    /// Byte range of this statement in the SQL text.
    pub span: (usize, usize),
    /// Runs on every shard against identical copies (reference-table writes, DDL): the
    /// client gets one shard's command tag, not the sum.
    pub replicated: bool,
    /// How the session executes it beyond forwarding (decided here, once).
    pub exec: Execution,
    /// DDL that can change what a prepared statement returns or refers to (ALTER, DROP,
    /// RENAME, CREATE OR REPLACE VIEW): pooled connections drop their prepared statements.
    pub reshapes: bool,
    /// Leaves session state on the backend that outlives the transaction and that the proxy
    /// does not track (see `router::session::dirties`): the connections it ran on are closed, not pooled.
    pub dirties: bool,
}

/// How a statement is executed, beyond where it goes: the router decides it once, the
/// session dispatches on it. The kinds exclude each other (each belongs to one statement
/// type).
#[derive(Debug, Clone)]
pub enum Execution {
    /// Sent as written: on one shard, or on several with their replies concatenated (or,
    /// for replicated statements, one shard's reply).
    Forward,
    /// A SELECT merged across shards by this plan when it runs on several.
    Merge(Arc<GatherPlan>),
    /// A text-format EXPLAIN: how the explained statement would be merged (the proxy adds
    /// its route and labels each shard's plan).
    Explain(ExplainPlan),
    /// A multi-row INSERT whose rows may belong to different shards: how to split it.
    SplitInsert(Arc<InsertSplit>),
    /// `INSERT … SELECT * FROM unnest($1, …)` of arrays bound as parameters: how to split
    /// its rows (run only as a pipeline of its own; its route refuses otherwise).
    SplitArrays(Arc<super::array_split::ArraySplit>),
    /// `COPY … FROM STDIN` into a sharded or reference table: how to split its rows.
    Copy(Arc<crate::routing::copyplan::CopyPlan>),
    /// An INSERT the proxy completes before it is planned and run (generated values, a
    /// column list): the session renders the completed text and runs that instead. Its
    /// route refuses, so a path that would run it as written fails loudly.
    Generate(Arc<super::generate::Generate>),
    /// A cursor statement: the session keeps cursors whose query spans shards itself, and
    /// routes FETCH/MOVE/CLOSE to the shard a single-shard cursor lives on.
    Cursor(super::cursor::CursorCmd),
}

impl StmtPlan {
    /// A statement forwarded as written (or kept by the session), planned by its kind and
    /// route alone.
    pub fn plain(kind: StmtKind, route: RouteSpec, span: (usize, usize), dirties: bool) -> Self {
        StmtPlan {
            kind,
            route,
            span,
            replicated: false,
            exec: Execution::Forward,
            reshapes: false,
            dirties,
        }
    }
    /// The merge plan, for a merged SELECT.
    pub fn gather(&self) -> Option<&Arc<GatherPlan>> {
        match &self.exec {
            Execution::Merge(g) => Some(g),
            _ => None,
        }
    }
    /// The cursor command, for DECLARE/FETCH/MOVE/CLOSE.
    pub fn cursor(&self) -> Option<&super::cursor::CursorCmd> {
        match &self.exec {
            Execution::Cursor(c) => Some(c),
            _ => None,
        }
    }
    /// The EXPLAIN merge description, for a text-format EXPLAIN.
    pub fn explain(&self) -> Option<&ExplainPlan> {
        match &self.exec {
            Execution::Explain(e) => Some(e),
            _ => None,
        }
    }
    /// The array split, for an INSERT over unnested array parameters.
    pub fn arrays(&self) -> Option<&Arc<super::array_split::ArraySplit>> {
        match &self.exec {
            Execution::SplitArrays(a) => Some(a),
            _ => None,
        }
    }
    /// The row split, for a multi-row INSERT.
    pub fn split(&self) -> Option<&Arc<InsertSplit>> {
        match &self.exec {
            Execution::SplitInsert(s) => Some(s),
            _ => None,
        }
    }
    /// How to complete the INSERT, when the proxy must (see [`Execution::Generate`]).
    pub fn generate(&self) -> Option<&Arc<super::generate::Generate>> {
        match &self.exec {
            Execution::Generate(g) => Some(g),
            _ => None,
        }
    }
    /// The COPY plan, for `COPY … FROM STDIN`.
    pub fn copy(&self) -> Option<&Arc<crate::routing::copyplan::CopyPlan>> {
        match &self.exec {
            Execution::Copy(c) => Some(c),
            _ => None,
        }
    }
}

/// All statements of one SQL string.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The statements, in order (empty for an empty query).
    pub stmts: Vec<StmtPlan>,
}

impl Plan {
    /// Whether the statements run against identical copies on every shard (see [`StmtPlan::replicated`]).
    pub fn replicated(&self) -> bool {
        self.stmts.iter().any(|s| s.replicated)
    }

    /// Whether a statement must be completed by the proxy before it runs.
    pub fn generates(&self) -> bool {
        self.stmts.iter().any(|s| s.generate().is_some())
    }

    /// The tables (schema "" when unqualified, name) INSERTs into need looked up in the
    /// shards' catalogs before this plan can be completed.
    pub fn unknown_tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.stmts
            .iter()
            .filter_map(|s| s.generate())
            .filter(|g| g.unknown)
            .map(|g| (g.schema.as_str(), g.table.as_str()))
    }

    /// Whether any statement writes (or changes schema), or may (an EXECUTE runs a
    /// statement known only when the string runs).
    pub fn writes(&self) -> bool {
        self.stmts.iter().any(|s| {
            matches!(
                s.kind,
                StmtKind::Write | StmtKind::Ddl | StmtKind::CopyIn | StmtKind::Execute(_)
            )
        })
    }
}
