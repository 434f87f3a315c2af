//! The router: SQL text -> parsed, classified statements with a route each.
//!
//! Parsing uses pg_query (the Postgres grammar itself). The analysis is conservative:
//! a statement goes to one shard only when every sharded table it reads or writes is
//! pinned to a key by an equality in the top-level `WHERE`/`JOIN ON` conjuncts (directly,
//! or through an equi-join on the shard keys of co-located tables); it scatters to all
//! shards only where concatenating the per-shard results equals the single-Postgres
//! answer; anything else is refused with an error that names the construct.
//! Plans are cached by SQL text ([`PlanCache`]).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;
use pg_query::protobuf::{self, a_const::Val, AExprKind, BoolExprType, SetOperation};
use pg_query::{NodeEnum, NodeRef};

use crate::error::ProxyError;
use crate::gather::sqltree::is_aggregate_name;
use crate::gather::GatherPlan;
use crate::routing::literals::{literal_value, LitVal, QueryLits};
use crate::sharding::keys::{
    key_from_binary, key_from_int, key_from_text, numeric_literal, KeyError, KeyType, KeyValue,
    NumericLiteral,
};
use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::shardset::ShardSet;
use crate::sharding::strategy::{Located, Sharded};

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
    /// SHOW.
    Show,
    /// COPY ... FROM STDIN.
    CopyIn,
    /// `SELECT pg_backend_pid()`, `pg_cancel_backend(pid)` or `pg_terminate_backend(pid)` on
    /// its own: about the client's session as the proxy presents it, so the proxy answers it.
    SessionFn(SessionFn),
    /// Anything else that runs on one shard.
    Other,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCall {
    /// `pg_backend_pid()`.
    BackendPid,
    /// `pg_cancel_backend(pid)`.
    Cancel(PidArg),
    /// `pg_terminate_backend(pid)`.
    Terminate(PidArg),
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
    /// How results are merged when the statement runs on several shards (`None`: concatenated).
    pub gather: Option<Arc<GatherPlan>>,
    /// A text-format EXPLAIN: how the explained statement would be merged (the proxy adds
    /// its route and labels each shard's plan).
    pub explain: Option<ExplainPlan>,
    /// A multi-row INSERT whose rows may belong to different shards: how to split it.
    pub split: Option<Arc<InsertSplit>>,
    /// `COPY … FROM STDIN` into a sharded or reference table: how to split its rows.
    pub copy: Option<Arc<crate::routing::copyplan::CopyPlan>>,
    /// DDL that can change what a prepared statement returns or refers to (ALTER, DROP,
    /// RENAME, CREATE OR REPLACE VIEW): pooled connections drop their prepared statements.
    pub reshapes: bool,
    /// Leaves session state on the backend that outlives the transaction and that the proxy
    /// does not track (see [`dirties`]): the connections it ran on are closed, not pooled.
    pub dirties: bool,
}

/// A multi-row `INSERT … VALUES` cut into one INSERT per shard. The per-shard statements are
/// the original text with only that shard's rows (prefix + rows joined by `, ` + suffix), so
/// ON CONFLICT and RETURNING clauses stay as written; `$n` parameters are renumbered per
/// shard and each shard is bound only the parameters its text uses.
#[derive(Debug)]
pub struct InsertSplit {
    /// The table.
    pub table: Arc<Sharded>,
    /// Per row: its key, and its text span in the statement.
    pub rows: Vec<(RowKey, (usize, usize))>,
    /// The statement's text (spans index it).
    pub text: String,
    /// `$n` references in the text: (start, end, 0-based parameter index).
    params: Vec<(usize, usize, usize)>,
}

/// Bind parameters and whether each is binary.
pub type BindParams<'a> = (&'a [Option<&'a [u8]>], &'a dyn Fn(usize) -> bool);

/// The shard key of one VALUES row.
#[derive(Debug, Clone)]
pub enum RowKey {
    /// A constant.
    Const(KeyValue),
    /// Parameter #n (0-based).
    Param(usize),
}

/// One shard's part of a split INSERT.
#[derive(Debug)]
pub struct SplitPart {
    /// The shard.
    pub shard: usize,
    /// Its INSERT.
    pub sql: String,
    /// The client's parameters it takes (0-based), in the order of its `$1, $2, …`.
    pub params: Vec<usize>,
}

impl InsertSplit {
    /// One statement per shard, for the current placement of each row's key. `bind` gives
    /// the Bind parameters when rows' keys are parameters.
    pub fn statements(
        &self,
        map: &ShardMap,
        bind: Option<BindParams<'_>>,
    ) -> Result<Vec<SplitPart>, ProxyError> {
        let mut rows_of: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
        for (key, span) in &self.rows {
            let owned;
            let key = match key {
                RowKey::Const(k) => k,
                RowKey::Param(i) => {
                    owned = self.param_key(*i, bind)?;
                    &owned
                }
            };
            let shard = match map.locate(&self.table, key, true) {
                Located::Shard(s) => s,
                Located::Nowhere(why) => return Err(ProxyError::NoShard(why)),
                Located::Unavailable(why) => return Err(ProxyError::Unavailable(why)),
            };
            match rows_of.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, rows)) => rows.push(*span),
                None => rows_of.push((shard, vec![*span])),
            }
        }
        let first = self.rows.first().map(|r| r.1 .0).unwrap_or(0);
        let last = self.rows.last().map(|r| r.1 .1).unwrap_or(0);
        Ok(rows_of
            .into_iter()
            .map(|(shard, rows)| {
                let mut part = SplitPart {
                    shard,
                    sql: String::with_capacity(self.text.len()),
                    params: Vec::new(),
                };
                self.copy_renumbered(0, first, &mut part);
                for (k, (a, b)) in rows.iter().enumerate() {
                    if k > 0 {
                        part.sql.push_str(", ");
                    }
                    self.copy_renumbered(*a, *b, &mut part);
                }
                self.copy_renumbered(last, self.text.len(), &mut part);
                part
            })
            .collect())
    }

    /// Appends text `a..b` to the part, renumbering `$n` references.
    fn copy_renumbered(&self, a: usize, b: usize, part: &mut SplitPart) {
        let mut at = a;
        for &(s, e, i) in self.params.iter().filter(|(s, _, _)| *s >= a && *s < b) {
            part.sql.push_str(self.text.get(at..s).unwrap_or(""));
            let n = match part.params.iter().position(|&p| p == i) {
                Some(n) => n,
                None => {
                    part.params.push(i);
                    part.params.len() - 1
                }
            };
            part.sql.push_str(&format!("${}", n + 1));
            at = e;
        }
        part.sql.push_str(self.text.get(at..b).unwrap_or(""));
    }

    /// The key given as Bind parameter `i`.
    fn param_key(&self, i: usize, bind: Option<BindParams<'_>>) -> Result<KeyValue, ProxyError> {
        let ty = self.table.key_type;
        let Some((params, is_binary)) = bind else {
            return Err(ProxyError::Protocol(
                "internal: a split INSERT with parameters was run without them".into(),
            ));
        };
        let raw = params.get(i).ok_or_else(|| {
            ProxyError::Protocol(format!(
                "bind message supplies {} parameters, but the statement needs at least {}",
                params.len(),
                i + 1
            ))
        })?;
        let Some(raw) = raw else {
            return Err(ProxyError::Unsupported(format!(
                "shard key {} must not be NULL",
                self.table.what()
            )));
        };
        if is_binary(i) {
            return Ok(key_from_binary(ty, raw).map_err(|e| e.in_param(i + 1))?);
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| ProxyError::Protocol("invalid UTF-8 in text parameter".into()))?;
        Ok(key_from_text(ty, text)?)
    }
}

/// The `$n` parameter references in `stmt`, found with the Postgres lexer.
fn param_refs(stmt: &str) -> Option<Vec<(usize, usize, usize)>> {
    let tokens = pg_query::scan(stmt).ok()?.tokens;
    Some(
        tokens
            .iter()
            .filter_map(|t| {
                let (s, e) = (t.start as usize, t.end as usize);
                let digits = stmt.get(s..e)?.strip_prefix('$')?;
                let n: usize = digits.parse().ok()?;
                (n >= 1).then(|| (s, e, n - 1))
            })
            .collect(),
    )
}

/// The text spans of the rows of `INSERT … VALUES (…), (…)` in `stmt`, found with the
/// Postgres lexer: the parenthesized groups at depth 0 after the first `VALUES`.
fn values_rows(stmt: &str) -> Option<Vec<(usize, usize)>> {
    let tokens = pg_query::scan(stmt).ok()?.tokens;
    let text = |t: &protobuf::ScanToken| stmt.get(t.start as usize..t.end as usize).unwrap_or("");
    let start = tokens
        .iter()
        .position(|t| text(t).eq_ignore_ascii_case("values") && t.keyword_kind != 0)?;
    let mut rows = Vec::new();
    let mut depth = 0usize;
    let mut open = 0usize;
    for t in &tokens[start + 1..] {
        match (text(t), depth) {
            ("(", 0) => {
                open = t.start as usize;
                depth = 1;
            }
            ("(", _) => depth += 1,
            (")", 1) => {
                rows.push((open, t.end as usize));
                depth = 0;
            }
            (")", 0) => return None,
            (")", _) => depth -= 1,
            (",", 0) => {}
            (_, 0) => break,
            _ => {}
        }
    }
    Some(rows)
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

    /// Whether any statement writes (or changes schema).
    pub fn writes(&self) -> bool {
        self.stmts
            .iter()
            .any(|s| matches!(s.kind, StmtKind::Write | StmtKind::Ddl | StmtKind::CopyIn))
    }
}

/// Parses and routes `sql` against `map`.
pub fn plan(map: &ShardMap, sql: &str) -> Result<Plan, ProxyError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| match e {
        pg_query::Error::Parse(m) => ProxyError::Syntax(m),
        other => ProxyError::Syntax(format!("could not parse statement: {other}")),
    })?;
    let mut stmts = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let start = raw.stmt_location.max(0) as usize;
        let len = if raw.stmt_len == 0 {
            sql.len().saturating_sub(start)
        } else {
            raw.stmt_len as usize
        };
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let (kind, mut route) = analyze(map, node);
        let replicated = matches!(route, RouteSpec::All)
            && (kind == StmtKind::Ddl || writes_reference(map, node));
        let span = (start, (start + len).min(sql.len()));
        let mut gather = None;
        if let NodeEnum::SelectStmt(s) = node {
            if may_scatter(&route) {
                match crate::gather::plan::build(&sql[span.0..span.1], s) {
                    Ok(g) => gather = g.map(Arc::new),
                    Err(e) => route = refuse_scatter(route, e),
                }
            }
        }
        let explain = match node {
            NodeEnum::ExplainStmt(e) => explain_merge(e),
            _ => None,
        };
        let mut copy = None;
        if let NodeEnum::CopyStmt(c) = node {
            let rule = c
                .relation
                .as_ref()
                .and_then(|r| map.table(&r.schemaname, &r.relname));
            let table = match rule {
                Some(TableRule::Sharded(t)) => Some(Some(t)),
                Some(TableRule::Reference) => Some(None),
                None => None,
            };
            if let (true, false, Some(table)) =
                (c.is_from, matches!(route, RouteSpec::Refuse(_)), table)
            {
                match crate::routing::copyplan::plan(c, table) {
                    Ok(p) => copy = Some(Arc::new(p)),
                    Err(e) => route = RouteSpec::Refuse(e),
                }
            }
        }
        let split = match node {
            NodeEnum::InsertStmt(i) => {
                let split = insert_split(map, i, &sql[span.0..span.1]);
                let values = i
                    .select_stmt
                    .as_ref()
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(
                        |n| matches!(n, NodeEnum::SelectStmt(sel) if !sel.values_lists.is_empty()),
                    );
                let sharded = values
                    && i.relation.as_ref().is_some_and(|r| {
                        matches!(
                            map.table(&r.schemaname, &r.relname),
                            Some(TableRule::Sharded(_))
                        )
                    });
                if sharded && split.is_none() && may_scatter(&route) {
                    // Never send one INSERT to several shards: that would duplicate rows.
                    route = refuse_scatter(
                        route,
                        ProxyError::Unsupported(
                            "multi-row INSERT whose rows belong to different shards can only be split when every shard key is a constant".into(),
                        ),
                    );
                }
                split
            }
            _ => None,
        };
        let dirties = dirties(node);
        if dirties && !map.pool.session_mode && calls(node, SESSION_LOCKS) {
            // Held by a backend the client gives back after the statement: it would be
            // released behind the client's back (the connection is closed) — refuse.
            route = RouteSpec::Refuse(ProxyError::Unsupported(
                "session-level advisory locks (pg_advisory_lock, pg_try_advisory_lock) cannot be held under transaction pooling: use pg_advisory_xact_lock inside a transaction block, or pool.mode: session".into(),
            ));
        }
        stmts.push(StmtPlan {
            reshapes: kind == StmtKind::Ddl && reshapes(node),
            dirties,
            kind,
            route,
            span,
            replicated,
            gather,
            explain,
            split,
            copy,
        });
    }
    Ok(Plan { stmts })
}

/// Whether a DDL statement can invalidate a prepared statement's result shape or the
/// objects it refers to (`cached plan must not change result type`, `cache lookup failed for
/// type`): anything that alters, drops or renames, and a view replaced in place. Creating
/// new objects (tables, indexes, temp tables) cannot, so it leaves prepared statements be.
fn reshapes(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    match node {
        N::ViewStmt(v) => v.replace,
        N::AlterTableStmt(_)
        | N::DropStmt(_)
        | N::RenameStmt(_)
        | N::AlterEnumStmt(_)
        | N::AlterDomainStmt(_)
        | N::AlterObjectSchemaStmt(_)
        | N::AlterTypeStmt(_) => true,
        _ => false,
    }
}

/// Whether a statement can leave session state on a pooled backend that outlives its
/// transaction and that the proxy neither tracks nor resets: a setting made by
/// `set_config(…)`, a session advisory lock, a temporary object, a `WITH HOLD` cursor, or
/// anything a `DO` block or a `CALL`ed procedure may do. Transaction-scoped forms
/// (`pg_advisory_xact_lock`) end with the transaction and do not count. (`SET ROLE` and
/// `SET SESSION AUTHORIZATION` are settings the proxy tracks and resets.) Functions of the
/// application's own are not inspected.
fn dirties(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    match node {
        N::DoStmt(_) | N::CallStmt(_) => return true,
        // CURSOR_OPT_HOLD (parsenodes.h)
        N::DeclareCursorStmt(d) if d.options & 0x0020 != 0 => return true,
        N::CreateStmt(c) if c.relation.as_ref().is_some_and(|r| r.relpersistence == "t") => {
            return true
        }
        N::ViewStmt(v) if v.view.as_ref().is_some_and(|r| r.relpersistence == "t") => return true,
        N::CreateSeqStmt(c) if c.sequence.as_ref().is_some_and(|r| r.relpersistence == "t") => {
            return true
        }
        N::CreateTableAsStmt(c)
            if c.into
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            return true
        }
        N::SelectStmt(s)
            if s.into_clause
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            return true
        }
        _ => {}
    }
    calls(node, DIRTYING_CALLS)
}

/// Functions whose effect outlives the transaction on the backend: `set_config` and the
/// session-level advisory locks ([`SESSION_LOCKS`]).
const DIRTYING_CALLS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Session-level advisory lock functions: the lock outlives the statement and its
/// transaction, on a backend the client does not keep under transaction pooling.
const SESSION_LOCKS: &[&str] = DIRTYING_CALLS.split_at(1).1;

/// Whether the statement calls one of `names` (any schema) anywhere.
fn calls(node: &NodeEnum, names: &[&str]) -> bool {
    node.nodes().iter().any(|(n, _, _, _)| match n {
        NodeRef::FuncCall(f) => f
            .funcname
            .last()
            .and_then(|n| match &n.node {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .is_some_and(|name| names.contains(&name)),
        _ => false,
    })
}

/// An EXPLAIN option's value (lowercased; "true" when given without a value).
fn explain_option(e: &protobuf::ExplainStmt, name: &str) -> Option<String> {
    e.options.iter().find_map(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case(name) => {
            Some(match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::String(s)) => s.sval.to_ascii_lowercase(),
                Some(NodeEnum::Boolean(b)) => b.boolval.to_string(),
                Some(NodeEnum::AConst(c)) => match &c.val {
                    Some(Val::Sval(s)) => s.sval.to_ascii_lowercase(),
                    Some(Val::Boolval(b)) => b.boolval.to_string(),
                    Some(Val::Ival(i)) => (i.ival != 0).to_string(),
                    _ => "true".into(),
                },
                _ => "true".into(),
            })
        }
        _ => None,
    })
}

/// For a text-format EXPLAIN: how the explained statement's results are merged, and the
/// EXPLAIN of the query the shards really run (when the merge rewrites it).
fn explain_merge(e: &protobuf::ExplainStmt) -> Option<ExplainPlan> {
    if explain_option(e, "format").is_some_and(|f| f != "text") {
        return None;
    }
    let mut shard_sql = None;
    let merge = match e.query.as_ref().and_then(|q| q.node.as_ref()) {
        Some(NodeEnum::SelectStmt(s)) => match crate::gather::plan::build("", s) {
            Ok(Some(g)) => {
                shard_sql = explain_of(e, &g.shard_sql);
                g.describe.clone()
            }
            Ok(None) => "concatenate shard results".into(),
            Err(e) => format!("refused: {e}"),
        },
        _ => "sum command tags".into(),
    };
    Some(ExplainPlan { merge, shard_sql })
}

/// `EXPLAIN (same options) <sql>`.
fn explain_of(e: &protobuf::ExplainStmt, sql: &str) -> Option<String> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let q = parsed.protobuf.stmts.first()?.stmt.clone()?;
    let ex = protobuf::ExplainStmt {
        query: Some(q),
        options: e.options.clone(),
    };
    NodeEnum::ExplainStmt(Box::new(ex))
        .deparse(Default::default())
        .ok()
}

/// What the proxy adds to a text-format EXPLAIN.
#[derive(Debug, Clone)]
pub struct ExplainPlan {
    /// How shard results are merged.
    pub merge: String,
    /// The EXPLAIN sent to the shards when they run a rewritten query.
    pub shard_sql: Option<String>,
}

/// Whether a route can end up on several shards.
fn may_scatter(route: &RouteSpec) -> bool {
    match route {
        RouteSpec::All | RouteSpec::Subset(_) => true,
        RouteSpec::Keys(kr) => matches!(*kr.spread, RouteSpec::All),
        _ => false,
    }
}

/// The route with its multi-shard case refused by `e` (a key-pinned single shard still runs).
fn refuse_scatter(route: RouteSpec, e: ProxyError) -> RouteSpec {
    match route {
        RouteSpec::Keys(kr) => {
            let mut k = (*kr).clone();
            k.spread = Box::new(RouteSpec::Refuse(e));
            RouteSpec::Keys(Arc::new(k))
        }
        _ => RouteSpec::Refuse(e),
    }
}

fn analyze(map: &ShardMap, node: &NodeEnum) -> (StmtKind, RouteSpec) {
    use NodeEnum as N;
    match node {
        N::SelectStmt(s) => match session_fn(s) {
            Some(f) => (StmtKind::SessionFn(f), RouteSpec::Any),
            None => (StmtKind::Read, route_query(map, node, Some(s))),
        },
        N::InsertStmt(i) => (StmtKind::Write, route_insert(map, node, i)),
        N::UpdateStmt(u) => {
            let route = route_query(map, node, None);
            if let Some(rel) = &u.relation {
                if let Some(TableRule::Sharded(t)) = map.table(&rel.schemaname, &rel.relname) {
                    let new_key = u.target_list.iter().find_map(|x| match &x.node {
                        Some(N::ResTarget(r)) if r.name.eq_ignore_ascii_case(&t.key) => {
                            Some(r.val.as_deref())
                        }
                        _ => None,
                    });
                    if let Some(new_key) = new_key {
                        return (StmtKind::Write, key_update(map, t, new_key, route));
                    }
                }
            }
            (StmtKind::Write, route)
        }
        N::DeleteStmt(_) | N::MergeStmt(_) => (StmtKind::Write, route_query(map, node, None)),
        N::TransactionStmt(t) => {
            use protobuf::TransactionStmtKind as T;
            let kind = match T::try_from(t.kind).unwrap_or(T::Undefined) {
                T::TransStmtBegin | T::TransStmtStart => StmtKind::Begin,
                T::TransStmtCommit => StmtKind::Commit,
                T::TransStmtRollback => StmtKind::Rollback,
                T::TransStmtSavepoint => StmtKind::Savepoint(SavepointOp::Define(t.savepoint_name.clone())),
                T::TransStmtRelease => StmtKind::Savepoint(SavepointOp::Release(t.savepoint_name.clone())),
                T::TransStmtRollbackTo => StmtKind::Savepoint(SavepointOp::RollbackTo(t.savepoint_name.clone())),
                _ => {
                    return (
                        StmtKind::Other,
                        RouteSpec::Refuse(ProxyError::Unsupported(
                            "two-phase commit commands (PREPARE TRANSACTION, COMMIT PREPARED) are reserved for the proxy".into(),
                        )),
                    )
                }
            };
            (kind, RouteSpec::Any)
        }
        N::VariableSetStmt(v) => {
            use protobuf::VariableSetKind as K;
            if let Some(name) = unsupported_encoding(v) {
                return (
                    StmtKind::SetLocal,
                    RouteSpec::Refuse(ProxyError::Unsupported(
                        crate::wire::encoding::unsupported_encoding(&name),
                    )),
                );
            }
            let kind = match K::try_from(v.kind).unwrap_or(K::Undefined) {
                K::VarResetAll => StmtKind::ResetAll,
                K::VarReset => StmtKind::Reset { name: v.name.to_ascii_lowercase() },
                // SET SESSION CHARACTERISTICS AS TRANSACTION …: a session setting (it sets
                // default_transaction_*), kept and replayed like any SET.
                K::VarSetMulti if v.name.eq_ignore_ascii_case("session characteristics") => {
                    StmtKind::Set { name: v.name.to_ascii_lowercase() }
                }
                _ if v.is_local || v.kind == K::VarSetMulti as i32 => StmtKind::SetLocal,
                _ => StmtKind::Set { name: v.name.to_ascii_lowercase() },
            };
            (kind, RouteSpec::Any)
        }
        N::VariableShowStmt(_) => (StmtKind::Show, RouteSpec::Any),
        N::DiscardStmt(d) => {
            if d.target == protobuf::DiscardMode::DiscardAll as i32 {
                (StmtKind::DiscardAll, RouteSpec::Any)
            } else {
                (StmtKind::Other, RouteSpec::Any)
            }
        }
        N::DeallocateStmt(d) => {
            (StmtKind::Deallocate(if d.isall { None } else { Some(d.name.clone()) }), RouteSpec::Any)
        }
        N::PrepareStmt(_) | N::ExecuteStmt(_) => (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "SQL-level PREPARE/EXECUTE is not supported with transaction pooling; use the extended protocol (driver prepared statements)".into(),
            )),
        ),
        // LISTEN is refused, so no pooled connection listens: UNLISTEN (asyncpg's pool sends
        // `UNLISTEN *` on every release) is a no-op any shard answers.
        N::UnlistenStmt(_) => (StmtKind::Other, RouteSpec::Any),
        N::ListenStmt(_) | N::NotifyStmt(_) => (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "LISTEN/NOTIFY is not supported with transaction pooling".into(),
            )),
        ),
        N::ExplainStmt(e) => {
            let inner = e.query.as_ref().and_then(|q| q.node.as_ref());
            match inner {
                Some(q) => {
                    let (kind, route) = analyze(map, q);
                    // EXPLAIN ANALYZE runs the statement: a write stays a write.
                    let runs = explain_option(e, "analyze").is_some_and(|v| v != "false" && v != "off");
                    let kind = if runs && kind == StmtKind::Write {
                        StmtKind::Write
                    } else {
                        StmtKind::Read
                    };
                    (kind, route)
                }
                None => (StmtKind::Read, RouteSpec::Any),
            }
        }
        N::CopyStmt(c) => route_copy(map, node, c),
        N::DeclareCursorStmt(d) => {
            // The cursor lives on the shard its query runs on; FETCH/CLOSE follow the
            // transaction there. A cursor over several shards would need a merge per FETCH.
            let route = match d.query.as_ref().and_then(|q| q.node.as_ref()) {
                Some(q) => analyze(map, q).1,
                None => RouteSpec::Any,
            };
            let e = ProxyError::Unsupported(
                "DECLARE CURSOR for a query that runs on several shards is not supported; fetch the whole result, or add the shard key".into(),
            );
            let route = if may_scatter(&route) {
                refuse_scatter(route, e)
            } else {
                route
            };
            (StmtKind::Read, route)
        }
        N::FetchStmt(_) | N::ClosePortalStmt(_) => (StmtKind::Read, RouteSpec::Any),
        N::DoStmt(_) | N::CallStmt(_) => (StmtKind::Other, RouteSpec::Shard(map.default_shard)),
        N::CreatedbStmt(_) | N::DropdbStmt(_) => (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "CREATE/DROP DATABASE through the proxy is not supported; create the database on each shard".into(),
            )),
        ),
        // LOCK goes where its tables are: an unsharded table lives on the default shard
        // only (elsewhere the LOCK would fail, or lock a stray table of that name).
        N::LockStmt(l) => {
            let mut unsharded = false;
            let mut everywhere = false;
            for r in &l.relations {
                if let Some(NodeEnum::RangeVar(rv)) = r.node.as_ref() {
                    match map.table(&rv.schemaname, &rv.relname) {
                        Some(_) => everywhere = true,
                        None => unsharded = true,
                    }
                }
            }
            let route = match (unsharded, everywhere) {
                (true, true) => RouteSpec::Refuse(ProxyError::Unsupported(
                    "LOCK of an unsharded table together with sharded or reference tables; lock them in two statements".into(),
                )),
                (true, false) => RouteSpec::Shard(map.default_shard),
                _ => RouteSpec::All,
            };
            (StmtKind::Other, route)
        }
        N::VacuumStmt(_) | N::CheckPointStmt(_) | N::ReindexStmt(_) | N::ClusterStmt(_) => {
            (StmtKind::Other, RouteSpec::All)
        }
        // Everything else is a utility/DDL statement: it runs on every shard.
        _ => (StmtKind::Ddl, RouteSpec::All),
    }
}

/// `SELECT pg_backend_pid()` / `SELECT pg_cancel_backend(<pid>)` /
/// `SELECT pg_terminate_backend(<pid>)` and nothing else (no FROM, WHERE or other column;
/// `pg_catalog.` allowed).
fn session_fn(s: &protobuf::SelectStmt) -> Option<SessionFn> {
    let bare = s.from_clause.is_empty()
        && s.where_clause.is_none()
        && s.target_list.len() == 1
        && s.op == SetOperation::SetopNone as i32
        && s.values_lists.is_empty()
        && s.with_clause.is_none()
        && s.distinct_clause.is_empty()
        && s.group_clause.is_empty()
        && s.sort_clause.is_empty()
        && s.limit_count.is_none()
        && s.into_clause.is_none();
    if !bare {
        return None;
    }
    let Some(NodeEnum::ResTarget(rt)) = s.target_list[0].node.as_ref() else {
        return None;
    };
    let Some(NodeEnum::FuncCall(f)) = rt.val.as_ref().and_then(|v| v.node.as_ref()) else {
        return None;
    };
    if f.agg_star || f.agg_distinct || f.over.is_some() || !f.agg_order.is_empty() {
        return None;
    }
    let names = name_list(&f.funcname);
    let name = match names.as_slice() {
        [n] | ["pg_catalog", n] => *n,
        _ => return None,
    };
    let call = match (name, f.args.as_slice()) {
        ("pg_backend_pid", []) => SessionCall::BackendPid,
        ("pg_cancel_backend", [arg]) => SessionCall::Cancel(pid_arg(arg)?),
        ("pg_terminate_backend", [arg]) => SessionCall::Terminate(pid_arg(arg)?),
        _ => return None,
    };
    let column = if rt.name.is_empty() {
        name.to_string()
    } else {
        rt.name.clone()
    };
    Some(SessionFn { call, column })
}

/// The value of `SET [LOCAL] client_encoding` / `SET NAMES` when it is an encoding the proxy
/// does not speak (see [`crate::wire::encoding::canonical_encoding`]).
fn unsupported_encoding(v: &protobuf::VariableSetStmt) -> Option<String> {
    if !v.name.eq_ignore_ascii_case("client_encoding")
        || v.kind != protobuf::VariableSetKind::VarSetValue as i32
    {
        return None;
    }
    let value = match v.args.first()?.node.as_ref()? {
        NodeEnum::AConst(c) => match &c.val {
            Some(Val::Sval(s)) => s.sval.clone(),
            Some(Val::Ival(i)) => i.ival.to_string(),
            _ => return None,
        },
        _ => return None,
    };
    match crate::wire::encoding::canonical_encoding(&value) {
        Some(_) => None,
        None => Some(value),
    }
}

/// An integer literal, `$n`, or either cast to int2/int4.
fn pid_arg(arg: &protobuf::Node) -> Option<PidArg> {
    match arg.node.as_ref()? {
        NodeEnum::AConst(c) if !c.isnull => match &c.val {
            Some(Val::Ival(i)) => Some(PidArg::Value(i64::from(i.ival))),
            _ => None,
        },
        NodeEnum::ParamRef(p) if p.number >= 1 => {
            Some(PidArg::Param(usize::try_from(p.number - 1).ok()?))
        }
        NodeEnum::TypeCast(tc) => {
            let ty = tc.type_name.as_ref()?;
            let names = name_list(&ty.names);
            match names.last() {
                // No pg_cancel_backend(bigint) exists: that cast errors on the shard, as in Postgres.
                Some(&("int2" | "int4" | "integer" | "smallint")) => {}
                _ => return None,
            }
            pid_arg(tc.arg.as_deref()?)
        }
        _ => None,
    }
}

fn route_copy(map: &ShardMap, node: &NodeEnum, c: &protobuf::CopyStmt) -> (StmtKind, RouteSpec) {
    if c.is_program || !c.filename.is_empty() {
        return (
            StmtKind::Other,
            RouteSpec::Refuse(ProxyError::Unsupported(
                "COPY to or from a server file or program is not supported through the proxy; use STDIN/STDOUT".into(),
            )),
        );
    }
    if let Some(rel) = &c.relation {
        let rule = map.table(&rel.schemaname, &rel.relname);
        if c.is_from {
            return match rule {
                None => (StmtKind::CopyIn, RouteSpec::Shard(map.default_shard)),
                // Split by key (sharded) or copied to every shard (reference): see StmtPlan::copy.
                Some(_) => (StmtKind::CopyIn, RouteSpec::All),
            };
        }
        return match rule {
            None => (StmtKind::Read, RouteSpec::Shard(map.default_shard)),
            Some(TableRule::Reference) => (StmtKind::Read, RouteSpec::Any),
            Some(_) => (StmtKind::Read, RouteSpec::All),
        };
    }
    match c.query.as_ref().and_then(|q| q.node.as_ref()) {
        Some(q) => {
            let route = analyze(map, q).1;
            if let NodeEnum::SelectStmt(s) = q {
                if may_scatter(&route) && !matches!(crate::gather::plan::build("", s), Ok(None)) {
                    let e = ProxyError::Unsupported(
                        "COPY (query) TO STDOUT across shards with ORDER BY, LIMIT, DISTINCT or aggregates is not supported; run the query itself".into(),
                    );
                    return (StmtKind::Read, refuse_scatter(route, e));
                }
            }
            (StmtKind::Read, route)
        }
        None => (StmtKind::Read, route_query(map, node, None)),
    }
}

/// How a table reference is placed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Placement {
    Sharded,
    Reference,
    Unsharded,
    Catalog,
}

#[derive(Debug)]
struct TableRef<'a> {
    name: &'a str,
    alias: Option<&'a str>,
    placement: Placement,
    key: Option<Arc<Sharded>>,
}

/// A value that pins a key: a literal already turned into a shard, or a parameter.
#[derive(Debug, Clone)]
enum KeySrc {
    Shard(usize),
    /// Several shards may hold it (an offset-less timestamptz on a range table).
    Set(ShardSet),
    Param(usize, Arc<Sharded>),
    /// A literal that can never equal the key (e.g. `id = 1.5`): matches nothing.
    Nothing,
    /// Constant #n of a literal template (evaluated per query), negated or not.
    Literal(usize, Arc<Sharded>, bool),
    /// A constant key of a directory table (located per execution).
    Value(KeyValue, Arc<Sharded>),
    /// Range predicates with parameters (the shards are found at Bind).
    Range(Arc<RangeGroup>),
}

/// While a literal template is planned: parser location -> (constant #, negated), and
/// whether a key constant was found that is not one of them.
type TemplateState = Option<(HashMap<i32, (usize, bool)>, bool)>;

thread_local! {
    /// The template being planned on this thread (see [`crate::routing::literals`]).
    static TEMPLATE: std::cell::RefCell<TemplateState> = const { std::cell::RefCell::new(None) };
}

/// Routes `INSERT INTO t (…) SELECT …` when every row stays on the shard it is read on:
/// - the key column is filled from the key of a co-located table the SELECT reads: each
///   shard inserts its own rows, so the statement runs where the SELECT would (one shard,
///   some, or all — the latter only for a plain SELECT, without aggregates, DISTINCT,
///   ORDER BY or LIMIT, whose per-shard meaning would differ);
/// - or the key is a constant and the SELECT runs on that constant's shard.
///
/// `None`: refused.
fn insert_select(
    map: &ShardMap,
    t: &Arc<Sharded>,
    pos: usize,
    sel: &protobuf::SelectStmt,
) -> Option<RouteSpec> {
    if sel.op != SetOperation::SetopNone as i32 && sel.op != SetOperation::Undefined as i32 {
        return None;
    }
    let expr = match &sel.target_list.get(pos)?.node {
        Some(NodeEnum::ResTarget(r)) => r.val.as_deref()?,
        _ => return None,
    };
    let node = NodeEnum::SelectStmt(Box::new(sel.clone()));
    let route = route_query(map, &node, None);
    if let Some(col) = column(expr) {
        let mut refs = Vec::new();
        let mut conj = Vec::new();
        for f in &sel.from_clause {
            collect_from(map, f, &mut refs, &mut conj);
        }
        let follows = match matching_refs(&refs, &col).as_slice() {
            [i] => co_located(refs[*i].key.as_deref(), Some(t)),
            _ => false,
        };
        if !follows {
            return None;
        }
        let per_shard_same = sel.group_clause.is_empty()
            && sel.distinct_clause.is_empty()
            && sel.sort_clause.is_empty()
            && sel.limit_count.is_none()
            && sel.limit_offset.is_none()
            && sel.having_clause.is_none()
            && !sel.target_list.iter().any(|x| {
                x.node.as_ref().is_some_and(|n| {
                    n.nodes().iter().any(|(m, _, _, _)| {
                        matches!(m, NodeRef::FuncCall(f) if f.over.is_some() || f.funcname.last().is_some_and(|nm| matches!(&nm.node, Some(NodeEnum::String(s)) if is_aggregate_name(&s.sval.to_ascii_lowercase()))))
                    })
                })
            });
        return match route {
            RouteSpec::Shard(_) | RouteSpec::Keys(_) => Some(route),
            RouteSpec::All | RouteSpec::Subset(_) if per_shard_same => Some(route),
            _ => None,
        };
    }
    let prev = TEMPLATE.with(|x| x.borrow_mut().take());
    let src = key_src(map, t, expr, true);
    TEMPLATE.with(|x| *x.borrow_mut() = prev);
    if TEMPLATE.with(|x| x.borrow().is_some()) {
        template_veto();
    }
    match (src, &route) {
        (Ok(Some(KeySrc::Shard(k))), RouteSpec::Shard(s)) if k == *s => Some(route),
        // Only reference tables read: they are on every shard, so the key's shard runs it.
        (Ok(Some(KeySrc::Shard(k))), RouteSpec::Any) => Some(RouteSpec::Shard(k)),
        (Err(e), _) => Some(RouteSpec::Refuse(e)),
        _ => None,
    }
}

/// The split of a multi-row INSERT into a sharded table whose keys are all constants.
fn insert_split(
    map: &ShardMap,
    ins: &protobuf::InsertStmt,
    stmt: &str,
) -> Option<Arc<InsertSplit>> {
    let rel = ins.relation.as_ref()?;
    let Some(TableRule::Sharded(t)) = map.table(&rel.schemaname, &rel.relname) else {
        return None;
    };
    let Some(NodeEnum::SelectStmt(sel)) = ins.select_stmt.as_ref().and_then(|s| s.node.as_ref())
    else {
        return None;
    };
    if sel.values_lists.len() < 2 {
        return None;
    }
    if TEMPLATE.with(|x| x.borrow().is_some()) {
        // Rows are cut by their constants' values: plan the exact text.
        template_veto();
        return None;
    }
    let pos = ins.cols.iter().position(
        |c| matches!(&c.node, Some(NodeEnum::ResTarget(r)) if r.name.eq_ignore_ascii_case(&t.key)),
    )?;
    let spans = values_rows(stmt)?;
    if spans.len() != sel.values_lists.len() {
        return None;
    }
    let mut rows = Vec::with_capacity(spans.len());
    for (row, span) in sel.values_lists.iter().zip(spans) {
        let Some(NodeEnum::List(l)) = &row.node else {
            return None;
        };
        let item = l.items.get(pos)?;
        let key = match param_of(item) {
            Some(i) => RowKey::Param(i),
            None => RowKey::Const(const_key(t.key_type, item)?),
        };
        rows.push((key, span));
    }
    Some(Arc::new(InsertSplit {
        table: t.clone(),
        params: param_refs(stmt)?,
        text: stmt.to_string(),
        rows,
    }))
}

/// The 0-based parameter a key expression is (`$3`, `$3::bigint`).
fn param_of(n: &protobuf::Node) -> Option<usize> {
    match &n.node {
        Some(NodeEnum::TypeCast(c)) => param_of(c.arg.as_deref()?),
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => Some(p.number as usize - 1),
        _ => None,
    }
}

/// A constant as a key of type `ty` (`None` for anything else, or a bad value).
fn const_key(ty: KeyType, n: &protobuf::Node) -> Option<KeyValue> {
    match &n.node {
        Some(NodeEnum::TypeCast(c)) => const_key(ty, c.arg.as_deref()?),
        Some(NodeEnum::AConst(c)) if !c.isnull => match &c.val {
            Some(Val::Ival(i)) => key_from_int(ty, i.ival as i64).ok(),
            Some(Val::Fval(f)) => {
                key_from_text(ty, &f.fval)
                    .ok()
                    .or_else(|| match numeric_literal(ty, &f.fval) {
                        NumericLiteral::Value(k) => Some(k),
                        _ => None,
                    })
            }
            Some(Val::Sval(s)) => key_from_text(ty, &s.sval).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Marks the template being planned as not reusable (a constant's value shapes the plan).
fn template_veto() {
    TEMPLATE.with(|t| {
        if let Some((_, unmapped)) = t.borrow_mut().as_mut() {
            *unmapped = true;
        }
    });
}

/// The template constant at parser location `loc`, if a template is being planned; notes
/// a key constant that is not a template constant.
fn template_literal(loc: i32) -> Option<(usize, bool)> {
    TEMPLATE.with(|t| {
        let mut t = t.borrow_mut();
        let (locs, unmapped) = t.as_mut()?;
        let hit = locs.get(&loc).copied();
        if hit.is_none() {
            *unmapped = true;
        }
        hit
    })
}

fn placement(map: &ShardMap, rv: &protobuf::RangeVar) -> (Placement, Option<Arc<Sharded>>) {
    match map.table(&rv.schemaname, &rv.relname) {
        Some(TableRule::Sharded(t)) => (Placement::Sharded, Some(t.clone())),
        Some(TableRule::Reference) => (Placement::Reference, None),
        None => {
            let s = rv.schemaname.as_str();
            if s == "pg_catalog"
                || s == "information_schema"
                || (s.is_empty() && rv.relname.starts_with("pg_"))
            {
                (Placement::Catalog, None)
            } else {
                (Placement::Unsharded, None)
            }
        }
    }
}

/// Routes SELECT/UPDATE/DELETE (and the query part of other statements).
fn route_query(map: &ShardMap, node: &NodeEnum, top: Option<&protobuf::SelectStmt>) -> RouteSpec {
    // Every table anywhere in the statement, minus CTE names.
    let all_nodes = node.nodes();
    let mut cte_names: Vec<&str> = Vec::new();
    for (n, _, _, _) in &all_nodes {
        if let NodeRef::CommonTableExpr(c) = n {
            cte_names.push(&c.ctename);
        }
    }
    let mut any_hash = false;
    let mut any_unsharded = false;
    let mut any_reference_written = false;
    let write_target = write_target(node);
    for (n, _, _, _) in &all_nodes {
        if let NodeRef::RangeVar(rv) = n {
            if rv.schemaname.is_empty() && cte_names.contains(&rv.relname.as_str()) {
                continue;
            }
            match placement(map, rv).0 {
                Placement::Sharded => any_hash = true,
                Placement::Unsharded => any_unsharded = true,
                Placement::Reference => {
                    if write_target.map(|w| std::ptr::eq(w, *rv)).unwrap_or(false) {
                        any_reference_written = true;
                    }
                }
                Placement::Catalog => {}
            }
        }
    }
    if any_reference_written {
        if any_hash || any_unsharded {
            return RouteSpec::Refuse(ProxyError::Unsupported(
                "a write to a reference table may only read reference tables".into(),
            ));
        }
        return RouteSpec::All;
    }
    if !any_hash {
        return if any_unsharded {
            RouteSpec::Shard(map.default_shard)
        } else {
            RouteSpec::Any
        };
    }

    // Sharded tables are involved: only the top-level FROM/target may hold them.
    let mut refs: Vec<TableRef> = Vec::new();
    let mut conjuncts: Vec<&protobuf::Node> = Vec::new();
    let (from, where_clause): (Vec<&protobuf::Node>, Option<&protobuf::Node>) = match node {
        NodeEnum::SelectStmt(s) => (s.from_clause.iter().collect(), s.where_clause.as_deref()),
        NodeEnum::UpdateStmt(u) => {
            if let Some(rv) = &u.relation {
                push_ref(map, &mut refs, rv);
            }
            (u.from_clause.iter().collect(), u.where_clause.as_deref())
        }
        NodeEnum::DeleteStmt(d) => {
            if let Some(rv) = &d.relation {
                push_ref(map, &mut refs, rv);
            }
            (d.using_clause.iter().collect(), d.where_clause.as_deref())
        }
        _ => (Vec::new(), None),
    };
    for f in from {
        collect_from(map, f, &mut refs, &mut conjuncts);
    }
    if let Some(w) = where_clause {
        flatten_and(w, &mut conjuncts);
    }
    // Sharded tables inside subqueries, CTEs or set operations are not analyzed yet.
    let top_hash = refs
        .iter()
        .filter(|r| r.placement == Placement::Sharded)
        .count();
    let total_hash = all_nodes
        .iter()
        .filter(|(n, _, _, _)| matches!(n, NodeRef::RangeVar(rv) if placement(map, rv).0 == Placement::Sharded && !(rv.schemaname.is_empty() && cte_names.contains(&rv.relname.as_str()))))
        .count();
    // Subqueries joined to the outer query on co-located shard keys run per shard correctly.
    let covered: usize = all_nodes
        .iter()
        .filter_map(|(n, _, _, _)| match n {
            NodeRef::SubLink(sl) => colocated_sublink(map, sl, &refs),
            _ => None,
        })
        .sum();
    let nested_hash = total_hash > top_hash + covered;
    let unsharded_refs: Vec<&TableRef> = refs
        .iter()
        .filter(|r| r.placement == Placement::Unsharded)
        .collect();

    // Union-find over sharded refs joined on their keys.
    let n = refs.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let mut pins: Vec<Vec<KeySrc>> = vec![Vec::new(); n];
    let mut ranges: Vec<Vec<(BoundSrc, BoundSrc)>> = vec![Vec::new(); n];
    let mut bad_key: Option<ProxyError> = None;
    for c in &conjuncts {
        match equality(c) {
            Some(Eq::Range(col, lo, hi)) => {
                for i in matching_refs(&refs, &col) {
                    let Some(t) = refs[i].key.clone() else {
                        continue;
                    };
                    if let Some(cond) = range_cond(&t, lo, hi) {
                        ranges[i].push(cond);
                    }
                }
            }
            Some(Eq::Const(col, val)) => {
                for i in matching_refs(&refs, &col) {
                    let Some(t) = refs[i].key.clone() else {
                        continue;
                    };
                    match key_src(map, &t, val, false) {
                        Ok(Some(k)) => pins[i].push(k),
                        Ok(None) => {}
                        Err(e) => bad_key = Some(e),
                    }
                }
            }
            Some(Eq::In(col, vals)) => {
                for i in matching_refs(&refs, &col) {
                    let Some(t) = refs[i].key.clone() else {
                        continue;
                    };
                    // An IN list pins the ref only if every element is a usable key.
                    let mut srcs = Vec::new();
                    let mut ok = true;
                    for v in &vals {
                        match key_src(map, &t, v, false) {
                            Ok(Some(k)) => srcs.push(k),
                            Ok(None) => ok = false,
                            Err(e) => bad_key = Some(e),
                        }
                    }
                    if ok && !srcs.is_empty() {
                        // Several values: every shard they land on may hold rows.
                        pins[i].extend(srcs);
                    }
                }
            }
            Some(Eq::Join(a, b)) => {
                let ia: Vec<usize> = matching_refs(&refs, &a);
                let ib: Vec<usize> = matching_refs(&refs, &b);
                if ia.len() == 1
                    && ib.len() == 1
                    && refs[ia[0]].key.is_some()
                    && refs[ib[0]].key.is_some()
                {
                    let (ta, tb) = (refs[ia[0]].key.as_deref(), refs[ib[0]].key.as_deref());
                    if co_located(ta, tb) {
                        let (ra, rb) = (find(&mut parent, ia[0]), find(&mut parent, ib[0]));
                        parent[ra] = rb;
                    }
                }
            }
            None => {}
        }
    }
    if let Some(e) = bad_key {
        return RouteSpec::Refuse(e);
    }
    // Range predicates pin a ref with no equality to the shards their ranges overlap.
    for i in 0..n {
        if !pins[i].is_empty() || ranges[i].is_empty() {
            continue;
        }
        let Some(table) = refs[i].key.clone() else {
            continue;
        };
        let group = RangeGroup {
            table,
            conds: std::mem::take(&mut ranges[i]),
        };
        if group.is_const() {
            match group.shards(map.shards.len(), &[], &|_| false) {
                Ok(set) => pins[i].push(KeySrc::Set(set)),
                Err(e) => return RouteSpec::Refuse(e),
            }
        } else {
            pins[i].push(KeySrc::Range(Arc::new(group)));
        }
    }
    // Group pins per join class of sharded refs.
    let mut classes: HashMap<usize, (Vec<KeySrc>, bool)> = HashMap::new();
    for i in 0..n {
        if refs[i].placement != Placement::Sharded {
            continue;
        }
        let r = find(&mut parent, i);
        let e = classes.entry(r).or_insert_with(|| (Vec::new(), false));
        if !pins[i].is_empty() {
            // Several pins on one class (IN lists, id = 1 AND id = 2) all count as shards
            // it may touch: a superset is always correct.
            e.0.extend(pins[i].iter().cloned());
            e.1 = true;
        }
    }
    let what = refs
        .iter()
        .find(|r| r.placement == Placement::Sharded)
        .map(|r| {
            format!(
                "{}.{}",
                r.name,
                r.key.as_ref().map(|k| k.key.as_str()).unwrap_or("?")
            )
        })
        .unwrap_or_default();

    let scatter = scatter_check(top, nested_hash, classes.len(), &unsharded_refs);
    let all_pinned = !nested_hash && classes.values().all(|(_, pinned)| *pinned);
    if !all_pinned {
        return match scatter {
            Ok(()) => RouteSpec::All,
            Err(e) => RouteSpec::Refuse(e),
        };
    }
    let mut fixed = Vec::new();
    let mut params = Vec::new();
    let mut literals = Vec::new();
    let mut values = Vec::new();
    let mut range_groups = Vec::new();
    for (srcs, _) in classes.values() {
        for src in srcs {
            match src {
                KeySrc::Shard(x) if !fixed.contains(x) => fixed.push(*x),
                KeySrc::Set(set) => {
                    for x in set.iter() {
                        if !fixed.contains(&x) {
                            fixed.push(x);
                        }
                    }
                }
                KeySrc::Param(i, t) => params.push((*i, t.clone())),
                KeySrc::Literal(i, t, n) => literals.push((*i, t.clone(), *n)),
                KeySrc::Value(v, t) => values.push((v.clone(), t.clone())),
                KeySrc::Range(g) => range_groups.push(g.clone()),
                _ => {}
            }
        }
    }
    let spread = if classes.len() > 1 {
        RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "join of sharded tables that are not joined on their shard keys spans shards ({what})"
        )))
    } else {
        match scatter {
            Ok(()) => RouteSpec::All,
            Err(e) => RouteSpec::Refuse(e),
        }
    };
    let require = unsharded_refs
        .first()
        .map(|u| (map.default_shard, u.name.to_string()));
    let kr = KeyRoute {
        fixed,
        params,
        literals,
        values,
        ranges: range_groups,
        spread: Box::new(spread),
        null_is_error: false,
        what,
        require,
    };
    if kr.is_static() {
        resolve_fixed(&kr)
    } else {
        RouteSpec::Keys(Arc::new(kr))
    }
}

/// Sharded tables in a subquery that is co-located with the outer query: `outer_key IN
/// (SELECT inner_key FROM t …)`, or an EXISTS/scalar subquery whose WHERE equates its table's
/// shard key with an outer table's (`o.user_id = u.id`). Every row such a subquery can see
/// lives on the same shard as the outer row, so it runs per shard. Returns how many sharded
/// table references it covers.
fn colocated_sublink(map: &ShardMap, sl: &protobuf::SubLink, outer: &[TableRef]) -> Option<usize> {
    use protobuf::SubLinkType as T;
    let Some(NodeEnum::SelectStmt(sel)) = sl.subselect.as_deref().and_then(|n| n.node.as_ref())
    else {
        return None;
    };
    if sel.op != SetOperation::SetopNone as i32 && sel.op != SetOperation::Undefined as i32 {
        return None;
    }
    if sel.with_clause.is_some() {
        return None;
    }
    let mut inner: Vec<TableRef> = Vec::new();
    let mut conj: Vec<&protobuf::Node> = Vec::new();
    for f in &sel.from_clause {
        collect_from(map, f, &mut inner, &mut conj);
    }
    if let Some(w) = sel.where_clause.as_deref() {
        flatten_and(w, &mut conj);
    }
    let hashed: Vec<usize> = (0..inner.len())
        .filter(|&i| inner[i].placement == Placement::Sharded)
        .collect();
    if hashed.len() != 1 || inner.iter().any(|r| r.placement == Placement::Unsharded) {
        return None;
    }
    // Nothing else sharded below this subquery.
    let nested = NodeEnum::SelectStmt(Box::new((**sel).clone()));
    let below = nested
        .nodes()
        .iter()
        .filter(|(n, _, _, _)| matches!(n, NodeRef::RangeVar(rv) if placement(map, rv).0 == Placement::Sharded))
        .count();
    if below != 1 {
        return None;
    }
    let h = hashed[0];
    let inner_ty = inner[h].key.as_deref();
    let is_inner_key = |c: &Col| matching_refs(&inner, c).contains(&h);
    // The rule of the outer sharded table a column names (inside the subquery an outer
    // column must be qualified, or it would name the inner table's).
    let outer_key_type = |c: &Col, need_qual: bool| -> Option<&Sharded> {
        if need_qual {
            c.qual?;
        }
        let m = matching_refs(outer, c);
        match m.as_slice() {
            [i] if outer[*i].placement == Placement::Sharded => outer[*i].key.as_deref(),
            _ => None,
        }
    };
    let kind = T::try_from(sl.sub_link_type).unwrap_or(T::Undefined);
    match kind {
        T::AnySublink => {
            if sel.limit_count.is_some() || sel.limit_offset.is_some() || sel.target_list.len() != 1
            {
                return None;
            }
            let out_col = sl.testexpr.as_deref().and_then(column)?;
            let target = match &sel.target_list[0].node {
                Some(NodeEnum::ResTarget(r)) => r.val.as_deref().and_then(column)?,
                _ => return None,
            };
            let out_ty = outer_key_type(&out_col, false);
            (is_inner_key(&target) && co_located(out_ty, inner_ty)).then_some(1)
        }
        T::ExistsSublink | T::ExprSublink => {
            let joined = conj.iter().any(|c| match equality(c) {
                Some(Eq::Join(a, b)) => {
                    (is_inner_key(&a) && co_located(outer_key_type(&b, true), inner_ty))
                        || (is_inner_key(&b) && co_located(outer_key_type(&a, true), inner_ty))
                }
                _ => false,
            });
            joined.then_some(1)
        }
        _ => None,
    }
}

/// The route once every key is known: `fixed` holds all shards the keys land on.
fn resolve_fixed(kr: &KeyRoute) -> RouteSpec {
    let mut shards = Shards::default();
    for s in &kr.fixed {
        shards.add(*s);
    }
    resolve_shards(kr, shards)
}

/// The distinct shards a statement's keys land on.
#[derive(Default, Clone, Copy)]
struct Shards {
    one: Option<usize>,
    several: bool,
    set: ShardSet,
}

impl Shards {
    fn add(&mut self, s: usize) {
        match self.one {
            None => self.one = Some(s),
            Some(o) if o != s => self.several = true,
            _ => {}
        }
        self.set.add(s);
    }
}

fn resolve_shards(kr: &KeyRoute, shards: Shards) -> RouteSpec {
    match (shards.one, shards.several, &kr.require) {
        // Every key matches nothing (NULL, 1.5 for an integer key): any shard says "no rows".
        (None, _, None) => RouteSpec::Any,
        (None, _, Some((d, _))) => RouteSpec::Shard(*d),
        (Some(s), false, None) => RouteSpec::Shard(s),
        (Some(s), false, Some((d, _))) if s == *d => RouteSpec::Shard(s),
        (_, _, Some((_, table))) => RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "statement joins unsharded table {table} (on the default shard) with sharded table {} whose key is on another shard",
            kr.what
        ))),
        // Several shards: where "all shards" is the answer, only the ones the keys name run it.
        _ => match &*kr.spread {
            RouteSpec::All => RouteSpec::Subset(shards.set),
            other => other.clone(),
        },
    }
}

/// Locates one key into `shards`; `Err` is the route to return instead.
fn place(
    map: &ShardMap,
    kr: &KeyRoute,
    shards: &mut Shards,
    t: &Sharded,
    k: &KeyValue,
) -> Result<(), RouteSpec> {
    match map.locate(t, k, kr.null_is_error) {
        Located::Shard(s) => shards.add(s),
        Located::Nowhere(why) if kr.null_is_error => {
            return Err(RouteSpec::Refuse(ProxyError::NoShard(why)))
        }
        Located::Nowhere(_) => {}
        Located::Unavailable(why) => return Err(RouteSpec::Refuse(ProxyError::Unavailable(why))),
    }
    Ok(())
}

/// Resolves a parameter-dependent route with the Bind parameters (no allocation on the
/// single-shard path).
pub fn resolve_keys(
    map: &ShardMap,
    kr: &KeyRoute,
    params: &[Option<&[u8]>],
    is_binary: impl Fn(usize) -> bool,
    lits: QueryLits<'_>,
) -> RouteSpec {
    let mut shards = Shards::default();
    for s in &kr.fixed {
        shards.add(*s);
    }
    for (k, t) in &kr.values {
        if let Err(r) = place(map, kr, &mut shards, t, k) {
            return r;
        }
    }
    for g in &kr.ranges {
        match g.shards(map.shards.len(), params, &is_binary) {
            Ok(set) => set.iter().for_each(|s| shards.add(s)),
            Err(e) => return RouteSpec::Refuse(e),
        }
    }
    for (i, t, neg) in &kr.literals {
        let Some(lit) = lits.lits.get(*i) else {
            return RouteSpec::Refuse(ProxyError::Protocol(
                "internal: a literal template was used without its constants".into(),
            ));
        };
        let refuse_insert = || {
            RouteSpec::Refuse(ProxyError::Unsupported(format!(
                "INSERT into a sharded table: the shard key {} must be a literal or a parameter",
                kr.what
            )))
        };
        match literal_value(t.key_type, lits.sql, *lit, *neg) {
            LitVal::Value(k) => {
                if let Err(r) = place(map, kr, &mut shards, t, &k) {
                    return r;
                }
            }
            LitVal::Nothing if kr.null_is_error => return refuse_insert(),
            LitVal::Nothing => {}
            LitVal::Unpinned if kr.null_is_error => return refuse_insert(),
            LitVal::Unpinned if kr.require.is_some() => return refuse_insert(),
            LitVal::Unpinned => return (*kr.spread).clone(),
            LitVal::Bad(e @ KeyError::NoUtcOffset { .. }) => {
                // Planned as a template: the window decides, as for a folded constant.
                let text = lits
                    .sql
                    .get(lit.0 + 1..lit.1.saturating_sub(1))
                    .unwrap_or("");
                match offset_less(t, text, kr.null_is_error, e) {
                    Ok(Some(KeySrc::Shard(s))) => shards.add(s),
                    Ok(Some(KeySrc::Set(set))) => set.iter().for_each(|s| shards.add(s)),
                    Ok(_) => return (*kr.spread).clone(),
                    Err(e) => return RouteSpec::Refuse(e),
                }
            }
            LitVal::Bad(e) => return RouteSpec::Refuse(e.into()),
        }
    }
    for (i, t) in &kr.params {
        let Some(raw) = params.get(*i) else {
            return RouteSpec::Refuse(ProxyError::Protocol(format!(
                "bind message supplies {} parameters, but the statement needs at least {}",
                params.len(),
                i + 1
            )));
        };
        let Some(raw) = raw else {
            if kr.null_is_error {
                return RouteSpec::Refuse(ProxyError::Unsupported(format!(
                    "shard key {} must not be NULL",
                    kr.what
                )));
            }
            continue; // key = NULL matches no row
        };
        let key = if is_binary(*i) {
            key_from_binary(t.key_type, raw).map_err(|e| e.in_param(i + 1))
        } else {
            match std::str::from_utf8(raw) {
                Ok(s) => match key_from_text(t.key_type, s) {
                    Err(e @ KeyError::NoUtcOffset { .. }) => {
                        match offset_less(t, s, kr.null_is_error, e) {
                            Ok(Some(KeySrc::Shard(x))) => {
                                shards.add(x);
                                continue;
                            }
                            Ok(Some(KeySrc::Set(set))) => {
                                set.iter().for_each(|x| shards.add(x));
                                continue;
                            }
                            Ok(_) => return (*kr.spread).clone(),
                            Err(e) => return RouteSpec::Refuse(e),
                        }
                    }
                    other => other,
                },
                Err(_) => {
                    return RouteSpec::Refuse(ProxyError::Protocol(
                        "invalid UTF-8 in text parameter".into(),
                    ))
                }
            }
        };
        match key {
            Ok(k) => {
                if let Err(r) = place(map, kr, &mut shards, t, &k) {
                    return r;
                }
            }
            Err(e) => return RouteSpec::Refuse(e.into()),
        }
    }
    resolve_shards(kr, shards)
}

/// Whether two sharded tables place equal keys on the same shard.
fn co_located(a: Option<&Sharded>, b: Option<&Sharded>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a.group == b.group)
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Checks that concatenating per-shard results equals the single-Postgres answer.
fn scatter_check(
    top: Option<&protobuf::SelectStmt>,
    nested_hash: bool,
    classes: usize,
    unsharded: &[&TableRef],
) -> Result<(), ProxyError> {
    let refuse = |what: &str| {
        Err(ProxyError::Unsupported(format!(
            "{what} is not supported across shards yet; add the shard key to the WHERE clause to run it on one shard"
        )))
    };
    if let Some(u) = unsharded.first() {
        return Err(ProxyError::Unsupported(format!(
            "statement mixes unsharded table {} (on the default shard) with sharded tables but gives no shard key",
            u.name
        )));
    }
    if nested_hash {
        return refuse(
            "a subquery, CTE or set operation over a sharded table that is not joined to the outer query on co-located shard keys",
        );
    }
    if classes > 1 {
        return refuse("a join of sharded tables not on their shard keys");
    }
    let Some(s) = top else { return Ok(()) };
    if s.op != SetOperation::SetopNone as i32 && s.op != SetOperation::Undefined as i32 {
        return refuse("UNION/INTERSECT/EXCEPT");
    }
    if !s.window_clause.is_empty() {
        return refuse("a window function");
    }
    for t in s.target_list.iter().chain(s.sort_clause.iter()) {
        let Some(tn) = t.node.as_ref() else { continue };
        for (n, _, _, _) in tn.nodes() {
            if let NodeRef::FuncCall(f) = n {
                if f.over.is_some() {
                    return refuse("a window function");
                }
            }
        }
    }
    Ok(())
}

/// Whether the statement writes a reference table.
fn writes_reference(map: &ShardMap, node: &NodeEnum) -> bool {
    write_target(node)
        .map(|rv| {
            matches!(
                map.table(&rv.schemaname, &rv.relname),
                Some(TableRule::Reference)
            )
        })
        .unwrap_or(false)
}

fn write_target(node: &NodeEnum) -> Option<&protobuf::RangeVar> {
    match node {
        NodeEnum::InsertStmt(i) => i.relation.as_ref(),
        NodeEnum::UpdateStmt(u) => u.relation.as_ref(),
        NodeEnum::DeleteStmt(d) => d.relation.as_ref(),
        NodeEnum::MergeStmt(m) => m.relation.as_ref(),
        _ => None,
    }
}

fn push_ref<'a>(map: &ShardMap, refs: &mut Vec<TableRef<'a>>, rv: &'a protobuf::RangeVar) {
    let (placement, key) = placement(map, rv);
    refs.push(TableRef {
        name: &rv.relname,
        alias: rv.alias.as_ref().map(|a| a.aliasname.as_str()),
        placement,
        key,
    });
}

fn collect_from<'a>(
    map: &ShardMap,
    n: &'a protobuf::Node,
    refs: &mut Vec<TableRef<'a>>,
    conj: &mut Vec<&'a protobuf::Node>,
) {
    match &n.node {
        Some(NodeEnum::RangeVar(rv)) => push_ref(map, refs, rv),
        Some(NodeEnum::JoinExpr(j)) => {
            if let Some(l) = &j.larg {
                collect_from(map, l, refs, conj);
            }
            if let Some(r) = &j.rarg {
                collect_from(map, r, refs, conj);
            }
            // Only inner-join conditions restrict rows the way WHERE does.
            if j.jointype == protobuf::JoinType::JoinInner as i32 {
                if let Some(q) = &j.quals {
                    flatten_and(q, conj);
                }
            } else if let Some(q) = &j.quals {
                // Outer joins: key equalities between the two sides still co-locate them.
                let mut tmp = Vec::new();
                flatten_and(q, &mut tmp);
                conj.extend(
                    tmp.into_iter()
                        .filter(|c| matches!(equality(c), Some(Eq::Join(..)))),
                );
            }
        }
        _ => {} // subselects, functions: their sharded tables are counted as nested
    }
}

fn flatten_and<'a>(n: &'a protobuf::Node, out: &mut Vec<&'a protobuf::Node>) {
    if let Some(NodeEnum::BoolExpr(b)) = &n.node {
        if b.boolop == BoolExprType::AndExpr as i32 {
            for a in &b.args {
                flatten_and(a, out);
            }
            return;
        }
    }
    out.push(n);
}

#[derive(Debug)]
struct Col<'a> {
    qual: Option<&'a str>,
    name: &'a str,
}

/// A top-level equality the router understands.
enum Eq<'a> {
    /// `col = value`
    Const(Col<'a>, &'a protobuf::Node),
    /// `col IN (values)`
    In(Col<'a>, Vec<&'a protobuf::Node>),
    /// `col = col`
    Join(Col<'a>, Col<'a>),
    /// `col < value`, `col BETWEEN a AND b`, …: the bounds on `col`.
    Range(
        Col<'a>,
        Bound<&'a protobuf::Node>,
        Bound<&'a protobuf::Node>,
    ),
}

fn column(n: &protobuf::Node) -> Option<Col<'_>> {
    let Some(NodeEnum::ColumnRef(c)) = &n.node else {
        return None;
    };
    let names = name_list(&c.fields);
    if names.len() != c.fields.len() {
        return None; // `t.*`
    }
    match names.as_slice() {
        [c] => Some(Col {
            qual: None,
            name: c,
        }),
        [.., t, c] => Some(Col {
            qual: Some(t),
            name: c,
        }),
        _ => None,
    }
}

fn is_value(n: &protobuf::Node) -> bool {
    match &n.node {
        Some(NodeEnum::AConst(_)) | Some(NodeEnum::ParamRef(_)) => true,
        Some(NodeEnum::TypeCast(t)) => t.arg.as_deref().map(is_value).unwrap_or(false),
        _ => false,
    }
}

/// The String nodes of a qualified name (function name, column reference), in order; other
/// nodes (`*`) are left out.
fn name_list(nodes: &[protobuf::Node]) -> Vec<&str> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

fn equality(n: &protobuf::Node) -> Option<Eq<'_>> {
    let Some(NodeEnum::AExpr(e)) = &n.node else {
        return None;
    };
    let op = e.name.last().and_then(|x| match &x.node {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    });
    let (l, r) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
    if e.kind == AExprKind::AexprOp as i32 && op == Some("=") {
        match (column(l), column(r)) {
            (Some(a), Some(b)) => return Some(Eq::Join(a, b)),
            (Some(a), None) if is_value(r) => return Some(Eq::Const(a, r)),
            (None, Some(b)) if is_value(l) => return Some(Eq::Const(b, l)),
            _ => return None,
        }
    }
    if e.kind == AExprKind::AexprOp as i32 {
        use Bound::{Excluded, Included, Unbounded};
        let (col, v, flipped) = match (column(l), column(r)) {
            (Some(c), None) if is_value(r) => (c, r, false),
            (None, Some(c)) if is_value(l) => (c, l, true),
            _ => return None,
        };
        // `v < col` is `col > v`.
        let op = match (op?, flipped) {
            ("<", false) | (">", true) => "<",
            ("<=", false) | (">=", true) => "<=",
            (">", false) | ("<", true) => ">",
            (">=", false) | ("<=", true) => ">=",
            _ => return None,
        };
        return Some(match op {
            "<" => Eq::Range(col, Unbounded, Excluded(v)),
            "<=" => Eq::Range(col, Unbounded, Included(v)),
            ">" => Eq::Range(col, Excluded(v), Unbounded),
            _ => Eq::Range(col, Included(v), Unbounded),
        });
    }
    if e.kind == AExprKind::AexprBetween as i32 {
        let col = column(l)?;
        if let Some(NodeEnum::List(list)) = &r.node {
            if let [a, b] = list.items.as_slice() {
                if is_value(a) && is_value(b) {
                    return Some(Eq::Range(col, Bound::Included(a), Bound::Included(b)));
                }
            }
        }
        return None;
    }
    if e.kind == AExprKind::AexprIn as i32 && op == Some("=") {
        let col = column(l)?;
        if let Some(NodeEnum::List(list)) = &r.node {
            if list.items.iter().all(is_value) {
                return Some(Eq::In(col, list.items.iter().collect()));
            }
        }
    }
    None
}

fn matching_refs(refs: &[TableRef], col: &Col) -> Vec<usize> {
    refs.iter()
        .enumerate()
        .filter(|(_, r)| match col.qual {
            Some(q) => r.alias.map(|a| a == q).unwrap_or(r.name == q),
            None => r.key.as_ref().map(|k| k.key == col.name).unwrap_or(false),
        })
        .filter(|(_, r)| {
            r.key
                .as_ref()
                .map(|k| k.key == col.name)
                .unwrap_or(col.qual.is_some())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Turns a literal or parameter into a key source for table `t`'s key. `write`: the key
/// places a new row (INSERT), so a key no shard takes is an error, and an offset-less
/// timestamptz must fall on one shard whatever the session's time zone.
fn key_src(
    map: &ShardMap,
    t: &Arc<Sharded>,
    n: &protobuf::Node,
    write: bool,
) -> Result<Option<KeySrc>, ProxyError> {
    let ty = t.key_type;
    match &n.node {
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => {
            Ok(Some(KeySrc::Param(p.number as usize - 1, t.clone())))
        }
        Some(NodeEnum::TypeCast(c)) => match c.arg.as_deref() {
            Some(a) => key_src(map, t, a, write),
            None => Ok(None),
        },
        Some(NodeEnum::AConst(c)) => {
            if c.isnull {
                return Ok(Some(KeySrc::Nothing));
            }
            if let Some((idx, neg)) = template_literal(c.location) {
                return Ok(Some(KeySrc::Literal(idx, t.clone(), neg)));
            }
            let (key, text): (Result<KeyValue, KeyError>, &str) = match &c.val {
                Some(Val::Ival(i)) => (key_from_int(ty, i.ival as i64), ""),
                Some(Val::Fval(f)) => match key_from_text(ty, &f.fval) {
                    Ok(k) => (Ok(k), ""),
                    Err(_) => match numeric_literal(ty, &f.fval) {
                        NumericLiteral::Value(k) => (Ok(k), ""),
                        NumericLiteral::Nothing => return Ok(Some(KeySrc::Nothing)),
                        NumericLiteral::Unknown => return Ok(None),
                    },
                },
                Some(Val::Sval(s)) => (key_from_text(ty, &s.sval), s.sval.as_str()),
                _ => return Ok(None),
            };
            match key {
                Ok(k) => const_src(map, t, k, write).map(Some),
                Err(e @ KeyError::NoUtcOffset { .. }) => offset_less(t, text, write, e),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(None),
    }
}

/// A constant key: located now, or per execution for directory tables.
fn const_src(
    map: &ShardMap,
    t: &Arc<Sharded>,
    k: KeyValue,
    write: bool,
) -> Result<KeySrc, ProxyError> {
    if t.dynamic() {
        return Ok(KeySrc::Value(k, t.clone()));
    }
    match map.locate(t, &k, false) {
        Located::Shard(s) => Ok(KeySrc::Shard(s)),
        Located::Nowhere(why) if write => Err(ProxyError::NoShard(why)),
        Located::Nowhere(_) => Ok(KeySrc::Nothing),
        Located::Unavailable(why) => Err(ProxyError::Unavailable(why)),
    }
}

/// Widest gap between local time and UTC, with margin: real zones span UTC-12 to UTC+14.
const MAX_UTC_OFFSET_MICROS: i64 = 16 * 3_600 * 1_000_000;

/// The instants an offset-less timestamptz can denote, whatever the session's time zone.
fn offset_less_window(t: &Sharded, text: &str) -> Option<(KeyValue, KeyValue)> {
    match crate::sharding::shardmap::utc_default(
        t.key_type,
        text,
        KeyError::NoUtcOffset { input: text.into() },
    ) {
        Ok(KeyValue::Timestamptz(v)) => Some((
            KeyValue::Timestamptz(v.saturating_sub(MAX_UTC_OFFSET_MICROS)),
            KeyValue::Timestamptz(v.saturating_add(MAX_UTC_OFFSET_MICROS)),
        )),
        _ => None,
    }
}

/// An offset-less timestamptz key: on a range table it pins the shards its possible
/// instants fall on (an INSERT only when that is one shard); elsewhere it pins nothing
/// (reads) or is refused (INSERT).
fn offset_less(
    t: &Sharded,
    text: &str,
    write: bool,
    e: KeyError,
) -> Result<Option<KeySrc>, ProxyError> {
    let set = offset_less_window(t, text)
        .and_then(|(lo, hi)| t.shards_between(Bound::Included(&lo), Bound::Included(&hi)));
    match (set, write) {
        (Some(set), false) => Ok(Some(KeySrc::Set(set))),
        (Some(set), true) if set.len() == 1 => Ok(set.iter().next().map(KeySrc::Shard)),
        (None, false) => Ok(None),
        _ => Err(e.into()),
    }
}

/// One end of a range predicate on a key.
#[derive(Debug, Clone)]
pub enum BoundSrc {
    /// A constant (already widened outwards for an offset-less timestamptz).
    Value(Bound<KeyValue>),
    /// Parameter #n (0-based), read at Bind: (index, inclusive).
    Param(usize, bool),
}

/// Range predicates on one table's key (ANDed): the statement may touch only the shards
/// whose ranges overlap every one of them.
#[derive(Debug, Clone)]
pub struct RangeGroup {
    /// The range-sharded table.
    pub table: Arc<Sharded>,
    /// (lower, upper) bound of each predicate.
    pub conds: Vec<(BoundSrc, BoundSrc)>,
}

impl RangeGroup {
    /// Whether every bound is a constant.
    fn is_const(&self) -> bool {
        self.conds
            .iter()
            .all(|(a, b)| matches!((a, b), (BoundSrc::Value(_), BoundSrc::Value(_))))
    }

    /// The shards the predicates allow, with parameters bound (`params` empty when constant).
    fn shards(
        &self,
        n_shards: usize,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
    ) -> Result<ShardSet, ProxyError> {
        let mut set = ShardSet::all(n_shards);
        for (lo, hi) in &self.conds {
            let (Some(lo), Some(hi)) = (
                self.bound(lo, true, params, is_binary)?,
                self.bound(hi, false, params, is_binary)?,
            ) else {
                return Ok(ShardSet::default()); // compared with NULL: no row matches
            };
            if let Some(s) = self.table.shards_between(lo.as_ref(), hi.as_ref()) {
                set = set.intersect(s);
            }
        }
        Ok(set)
    }

    /// A bound's value; `None` for a NULL parameter.
    fn bound(
        &self,
        b: &BoundSrc,
        lower: bool,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
    ) -> Result<Option<Bound<KeyValue>>, ProxyError> {
        let (i, inclusive) = match b {
            BoundSrc::Value(v) => return Ok(Some(v.clone())),
            BoundSrc::Param(i, inclusive) => (*i, *inclusive),
        };
        let Some(raw) = params.get(i).ok_or_else(|| {
            ProxyError::Protocol(format!(
                "bind message supplies {} parameters, but the statement needs at least {}",
                params.len(),
                i + 1
            ))
        })?
        else {
            return Ok(None);
        };
        let ty = self.table.key_type;
        let key = if is_binary(i) {
            key_from_binary(ty, raw).map_err(|e| e.in_param(i + 1))?
        } else {
            let text = std::str::from_utf8(raw)
                .map_err(|_| ProxyError::Protocol("invalid UTF-8 in text parameter".into()))?;
            match key_from_text(ty, text) {
                Ok(k) => k,
                Err(e @ KeyError::NoUtcOffset { .. }) => {
                    let (lo, hi) = offset_less_window(&self.table, text).ok_or(e)?;
                    return Ok(Some(Bound::Included(if lower { lo } else { hi })));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Some(if inclusive {
            Bound::Included(key)
        } else {
            Bound::Excluded(key)
        }))
    }
}

/// A bound of a range predicate on `t`'s key: a constant (offset-less timestamps widened
/// outwards, `lower` says which end of their window to take) or a parameter. `None` when
/// it is neither.
fn bound_src(t: &Sharded, b: Bound<&protobuf::Node>, lower: bool) -> Option<BoundSrc> {
    let (n, inclusive) = match b {
        Bound::Unbounded => return Some(BoundSrc::Value(Bound::Unbounded)),
        Bound::Included(n) => (n, true),
        Bound::Excluded(n) => (n, false),
    };
    let wrap = |v: KeyValue, inclusive: bool| {
        BoundSrc::Value(if inclusive {
            Bound::Included(v)
        } else {
            Bound::Excluded(v)
        })
    };
    match &n.node {
        Some(NodeEnum::TypeCast(c)) => bound_src(
            t,
            match b {
                Bound::Included(_) => Bound::Included(c.arg.as_deref()?),
                _ => Bound::Excluded(c.arg.as_deref()?),
            },
            lower,
        ),
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => {
            Some(BoundSrc::Param(p.number as usize - 1, inclusive))
        }
        Some(NodeEnum::AConst(c)) if !c.isnull => {
            if TEMPLATE.with(|x| x.borrow().is_some()) {
                // The bound's value decides the shards: plan this text on its own.
                template_veto();
                return None;
            }
            let ty = t.key_type;
            match &c.val {
                Some(Val::Ival(i)) => key_from_int(ty, i.ival as i64)
                    .ok()
                    .map(|k| wrap(k, inclusive)),
                Some(Val::Fval(f)) => key_from_text(ty, &f.fval).ok().map(|k| wrap(k, inclusive)),
                Some(Val::Sval(s)) => match key_from_text(ty, &s.sval) {
                    Ok(k) => Some(wrap(k, inclusive)),
                    // A widened bound must be inclusive to stay a superset.
                    Err(KeyError::NoUtcOffset { .. }) => offset_less_window(t, &s.sval)
                        .map(|(lo, hi)| wrap(if lower { lo } else { hi }, true)),
                    Err(_) => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// A range predicate on `t`'s key as bounds (`None`: it does not narrow).
fn range_cond(
    t: &Sharded,
    lo: Bound<&protobuf::Node>,
    hi: Bound<&protobuf::Node>,
) -> Option<(BoundSrc, BoundSrc)> {
    if !matches!(t.strategy, crate::sharding::strategy::Strategy::Range(_)) {
        return None;
    }
    Some((bound_src(t, lo, true)?, bound_src(t, hi, false)?))
}

/// Routes an UPDATE that sets the shard key: allowed when the statement runs on one shard
/// and the new key (a constant) belongs to that same shard; refused otherwise, since the
/// row would have to move.
fn key_update(
    map: &ShardMap,
    t: &Arc<Sharded>,
    new_key: Option<&protobuf::Node>,
    route: RouteSpec,
) -> RouteSpec {
    let refuse = || {
        RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "UPDATE of shard key {} would move rows to another shard; only updates that keep the key on the row's shard (a constant key, and a WHERE clause pinning one shard) are supported",
            t.what()
        )))
    };
    let Some(n) = new_key else { return refuse() };
    let prev = TEMPLATE.with(|x| x.borrow_mut().take());
    let src = key_src(map, t, n, true);
    TEMPLATE.with(|x| *x.borrow_mut() = prev);
    if TEMPLATE.with(|x| x.borrow().is_some()) {
        template_veto();
    }
    match (src, &route) {
        (Ok(Some(KeySrc::Shard(new))), RouteSpec::Shard(old)) if new == *old => route,
        (Err(e), _) => RouteSpec::Refuse(e),
        _ => refuse(),
    }
}

fn route_insert(map: &ShardMap, node: &NodeEnum, ins: &protobuf::InsertStmt) -> RouteSpec {
    let Some(rel) = &ins.relation else {
        return RouteSpec::Any;
    };
    match map.table(&rel.schemaname, &rel.relname) {
        Some(TableRule::Reference) => route_query(map, node, None),
        None => {
            // Unsharded target: any sharded table read would be on other shards.
            match route_query(map, node, None) {
                RouteSpec::Any | RouteSpec::Shard(_) => RouteSpec::Shard(map.default_shard),
                _ => RouteSpec::Refuse(ProxyError::Unsupported(format!(
                    "INSERT into unsharded table {} may not read sharded tables",
                    rel.relname
                ))),
            }
        }
        Some(TableRule::Sharded(t)) => {
            let key = &t.key;
            let what = format!("{}.{key}", rel.relname);
            let refuse = |m: String| RouteSpec::Refuse(ProxyError::Unsupported(m));
            if ins.cols.is_empty() {
                return refuse(format!(
                    "INSERT into sharded table {} must name its columns so the shard key {key} can be found",
                    rel.relname
                ));
            }
            let pos = ins.cols.iter().position(|c| {
                matches!(&c.node, Some(NodeEnum::ResTarget(r)) if r.name.eq_ignore_ascii_case(key))
            });
            let Some(pos) = pos else {
                return refuse(format!(
                    "INSERT into sharded table {} must include the shard key column {key}",
                    rel.relname
                ));
            };
            let Some(NodeEnum::SelectStmt(sel)) =
                ins.select_stmt.as_ref().and_then(|s| s.node.as_ref())
            else {
                return refuse(format!(
                    "INSERT into sharded table {} needs a VALUES list",
                    rel.relname
                ));
            };
            if ins.with_clause.is_some() {
                return refuse(format!(
                    "INSERT with a WITH clause into sharded table {} is not supported; insert rows with VALUES",
                    rel.relname
                ));
            }
            if sel.values_lists.is_empty() {
                return insert_select(map, t, pos, sel).unwrap_or_else(|| {
                    refuse(format!(
                        "INSERT … SELECT into sharded table {} must keep every row on its shard: take the shard key {key} from the key of a co-located table the SELECT reads (it then runs on each shard), or give it as a constant on the one shard the SELECT runs on",
                        rel.relname
                    ))
                });
            }
            let mut fixed = Vec::new();
            let mut params = Vec::new();
            let mut literals = Vec::new();
            let mut values = Vec::new();
            for row in &sel.values_lists {
                let Some(NodeEnum::List(l)) = &row.node else {
                    continue;
                };
                let Some(v) = l.items.get(pos) else {
                    return refuse(format!(
                        "INSERT into {}: VALUES row is missing the shard key {key}",
                        rel.relname
                    ));
                };
                if let Some(NodeEnum::AConst(c)) = &v.node {
                    if c.isnull {
                        return refuse(format!("shard key {what} must not be NULL"));
                    }
                }
                match key_src(map, t, v, true) {
                    Ok(Some(KeySrc::Shard(s))) => {
                        if !fixed.contains(&s) {
                            fixed.push(s)
                        }
                    }
                    Ok(Some(KeySrc::Param(i, t))) => params.push((i, t)),
                    Ok(Some(KeySrc::Literal(i, t, n))) => literals.push((i, t, n)),
                    Ok(Some(KeySrc::Value(v, t))) => values.push((v, t)),
                    Ok(Some(KeySrc::Nothing | KeySrc::Set(_) | KeySrc::Range(_))) | Ok(None) => {
                        return refuse(format!(
                            "INSERT into sharded table {}: the shard key {key} must be a literal or a parameter",
                            rel.relname
                        ))
                    }
                    Err(e) => return RouteSpec::Refuse(e),
                }
            }
            // Any sharded/unsharded table read by the INSERT (RETURNING subqueries etc.)
            match route_query(map, &NodeEnum::SelectStmt(sel.clone()), None) {
                RouteSpec::Any => {}
                _ => {
                    return refuse(format!(
                        "INSERT into sharded table {} may only read reference tables in its VALUES",
                        rel.relname
                    ))
                }
            }
            // Rows on several shards: the statement is split per shard (see InsertSplit; the
            // plan refuses it when no split could be made).
            let spread = RouteSpec::All;
            let kr = KeyRoute {
                fixed,
                params,
                literals,
                values,
                ranges: Vec::new(),
                spread: Box::new(spread),
                null_is_error: true,
                what,
                require: None,
            };
            if kr.is_static() {
                resolve_fixed(&kr)
            } else {
                RouteSpec::Keys(Arc::new(kr))
            }
        }
    }
}

/// Plans kept in each of the parse cache's maps.
pub const PLAN_CACHE_CAPACITY: usize = 10_000;

/// Parsed plans cached by SQL text, and (for the simple protocol) by literal template;
/// each map is cleared when full (bounded memory).
///
/// The maps hash with foldhash (seeded per process), not SipHash: hashing the text is
/// part of every statement's cost (~150 instructions a point query with SipHash), and the
/// maps are bounded whatever keys clients choose.
pub struct PlanCache {
    map: RwLock<TextMap>,
    templates: RwLock<TextMap>,
    capacity: usize,
}

/// Plans by SQL text or template key.
type TextMap = HashMap<Box<str>, Arc<Plan>, foldhash::fast::RandomState>;

/// Longest SQL text that is cached (longer ones are parsed each time).
const MAX_CACHED_SQL: usize = 16 * 1024;

impl PlanCache {
    /// A cache of at most `capacity` plans.
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            map: RwLock::new(TextMap::default()),
            templates: RwLock::new(TextMap::default()),
            capacity,
        }
    }

    /// The plan of a simple-protocol query string: by exact text, else by literal template
    /// (then the returned constants must be passed to [`resolve_keys`]).
    pub fn get_simple(
        &self,
        map: &ShardMap,
        sql: &str,
    ) -> Result<(Arc<Plan>, Option<crate::routing::literals::Scanned>), ProxyError> {
        if let Some(p) = self.map.read().get(sql) {
            return Ok((p.clone(), None));
        }
        if sql.len() > MAX_CACHED_SQL {
            return self.get(map, sql).map(|p| (p, None));
        }
        let scanned = match crate::routing::literals::scan(sql) {
            Some(s) if !s.lits.is_empty() => s,
            _ => return self.get(map, sql).map(|p| (p, None)),
        };
        if let Some(p) = self.templates.read().get(scanned.key.as_str()) {
            return Ok((p.clone(), Some(scanned)));
        }
        // Plan it as a template: key constants stay references to "constant #n".
        let locs: HashMap<i32, (usize, bool)> = scanned
            .locations
            .iter()
            .map(|(loc, i, neg)| (*loc, (*i, *neg)))
            .collect();
        TEMPLATE.with(|t| *t.borrow_mut() = Some((locs, false)));
        let planned = plan(map, sql);
        let unmapped = TEMPLATE.with(|t| t.borrow_mut().take().map(|(_, u)| u).unwrap_or(true));
        let p = Arc::new(planned?);
        let reusable = !unmapped
            && p.stmts.len() == 1
            && p.stmts.iter().all(|st| {
                matches!(st.kind, StmtKind::Read | StmtKind::Write)
                    && st.gather.is_none()
                    && st.explain.is_none()
            });
        if !reusable {
            // Values matter beyond key routing (merges, EXPLAIN, settings): exact text only.
            return self.get(map, sql).map(|p| (p, None));
        }
        let mut w = self.templates.write();
        if w.len() >= self.capacity {
            w.clear();
        }
        w.insert(scanned.key.as_str().into(), p.clone());
        Ok((p, Some(scanned)))
    }

    /// The plan of `sql`, parsed on a miss.
    pub fn get(&self, map: &ShardMap, sql: &str) -> Result<Arc<Plan>, ProxyError> {
        if let Some(p) = self.map.read().get(sql) {
            return Ok(p.clone());
        }
        let p = Arc::new(plan(map, sql)?);
        if sql.len() <= MAX_CACHED_SQL {
            let mut w = self.map.write();
            if w.len() >= self.capacity {
                w.clear();
            }
            w.insert(sql.into(), p.clone());
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        ShardMap::from_yaml_str(
            "users:\n  - { name: app, password: x }\n\
             shards:\n  - { name: s0, url: \"postgres://p@h:1/d\" }\n  - { name: s1, url: \"postgres://p@h:2/d\" }\n  - { name: s2, url: \"postgres://p@h:3/d\" }\n\
             tables:\n  users: { key: id, type: bigint, strategy: hash }\n  orders: { key: user_id, type: bigint, strategy: hash }\n  countries: { strategy: reference }\n",
            "test",
        )
        .unwrap()
    }

    fn route(sql: &str) -> RouteSpec {
        plan(&map(), sql).unwrap().stmts[0].route.clone()
    }

    #[test]
    fn range_predicates_narrow_with_constants_and_parameters() {
        let m = ShardMap::from_yaml_str(
            "users:\n  - { name: app, password: x }\n\
             shards:\n  - { name: s0, url: \"postgres://p@h:1/d\" }\n  - { name: s1, url: \"postgres://p@h:2/d\" }\n  - { name: s2, url: \"postgres://p@h:3/d\" }\n\
             tables:\n  events:\n    key: created_at\n    type: timestamptz\n    strategy: range\n    ranges:\n      - { below: \"2025-01-01\", shard: s0 }\n      - { below: \"2026-01-01\", shard: s1 }\n      - { shard: s2 }\n",
            "test",
        )
        .unwrap();
        let route = |sql: &str| plan(&m, sql).unwrap().stmts[0].route.clone();
        let shards = |r: RouteSpec| match r {
            RouteSpec::Shard(s) => vec![s],
            RouteSpec::Subset(set) => set.iter().collect(),
            RouteSpec::All => vec![0, 1, 2],
            other => panic!("{other:?}"),
        };
        let c = "SELECT * FROM events WHERE created_at >= '2025-03-01 00:00:00+00' AND created_at < '2025-04-01 00:00:00+00'";
        assert_eq!(shards(route(c)), vec![1]);
        let c = "SELECT * FROM events WHERE created_at BETWEEN '2024-06-01 00:00:00+00' AND '2025-06-01 00:00:00+00'";
        assert_eq!(shards(route(c)), vec![0, 1]);
        // Offset-less: widened by the largest UTC offsets, so a bound near a range edge
        // includes the neighbouring shard.
        let c = "SELECT * FROM events WHERE created_at >= '2025-12-31 20:00' AND created_at < '2026-02-01'";
        assert_eq!(shards(route(c)), vec![1, 2]);
        // Parameters: decided at Bind.
        let r = route("SELECT * FROM events WHERE created_at >= $1 AND created_at < $2");
        let RouteSpec::Keys(kr) = r else {
            panic!("{r:?}")
        };
        let resolve = |a: &str, b: Option<&str>| {
            let params = [Some(a.as_bytes()), b.map(str::as_bytes)];
            shards(resolve_keys(
                &m,
                &kr,
                &params,
                |_| false,
                Default::default(),
            ))
        };
        assert_eq!(
            resolve("2025-03-01 00:00:00+00", Some("2025-04-01 00:00:00+00")),
            vec![1]
        );
        assert_eq!(
            resolve("2024-03-01 00:00:00+00", Some("2027-01-01 00:00:00+00")),
            vec![0, 1, 2]
        );
        // A NULL bound matches no row: any one shard answers.
        let r = resolve_keys(
            &m,
            &kr,
            &[Some(b"2025-03-01 00:00:00+00"), None],
            |_| false,
            Default::default(),
        );
        assert!(matches!(r, RouteSpec::Any), "{r:?}");
        // Binary timestamptz (microseconds since 2000-01-01): 2025-03-01 is in s1's range.
        let us: i64 = 794_016_000 * 1_000_000;
        let b = us.to_be_bytes();
        let r = resolve_keys(&m, &kr, &[Some(&b), Some(&b)], |_| true, Default::default());
        // created_at >= t AND created_at < t: empty interval, but ranges overlap at most s1.
        assert!(shards(r).iter().all(|&s| s == 1));
    }

    #[test]
    fn split_insert_renumbers_parameters_per_shard() {
        let m = map();
        let p = plan(
            &m,
            "INSERT INTO users (id, name) VALUES ($1, $2), ($3, $4), ($5, 'c') RETURNING id, $6::text",
        )
        .unwrap();
        let split = p.stmts[0].split.clone().expect("split");
        // Keys 1, 2, 3: find two that land on different shards.
        let shard = |k: i64| m.hash_shard(&KeyValue::Int(k));
        let params: Vec<Option<&[u8]>> = vec![
            Some(b"1"),
            Some(b"a"),
            Some(b"2"),
            Some(b"b"),
            Some(b"3"),
            Some(b"tag"),
        ];
        let parts = split.statements(&m, Some((&params, &|_| false))).unwrap();
        let total_rows: usize = parts
            .iter()
            .map(|p| p.sql.matches("), (").count() + 1)
            .sum();
        assert_eq!(total_rows, 3, "{parts:?}");
        for part in &parts {
            // Every shard's text uses $1.. densely, ending with the RETURNING parameter.
            let n = part.params.len();
            assert!(part.sql.contains(&format!("${n}::text")), "{part:?}");
            assert_eq!(*part.params.last().unwrap(), 5, "{part:?}");
            for (k, &i) in part.params.iter().enumerate() {
                assert!(part.sql.contains(&format!("${}", k + 1)), "{part:?} {i}");
            }
            let keys: Vec<i64> = part
                .params
                .iter()
                .filter(|&&i| i % 2 == 0 && i < 5)
                .map(|&i| (i / 2 + 1) as i64)
                .collect();
            assert!(keys.iter().all(|&k| shard(k) == part.shard), "{part:?}");
        }
        assert_eq!(
            parts
                .iter()
                .map(|p| p.shard)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            parts.len()
        );
        // A NULL key is refused.
        let mut nul = params.clone();
        nul[2] = None;
        assert!(split.statements(&m, Some((&nul, &|_| false))).is_err());
    }

    #[test]
    fn insert_select_keeps_rows_on_their_shard() {
        let shard_of = |k: i64| map().hash_shard(&KeyValue::Int(k));
        let r = route("INSERT INTO orders (user_id, id) SELECT id, 1 FROM users WHERE id = 5");
        assert!(
            matches!(r, RouteSpec::Shard(s) if s == shard_of(5)),
            "{r:?}"
        );
        let r = route("INSERT INTO orders (user_id, id) SELECT u.id, u.id FROM users u");
        assert!(matches!(r, RouteSpec::All), "{r:?}");
        let r = route("INSERT INTO orders (user_id, id) SELECT 5, 1 FROM countries");
        assert!(
            matches!(r, RouteSpec::Shard(s) if s == shard_of(5)),
            "{r:?}"
        );
        for sql in [
            "INSERT INTO orders (user_id, id) SELECT score, id FROM users",
            "INSERT INTO orders (user_id, id) SELECT id, count(*) FROM users GROUP BY id",
            "INSERT INTO orders (user_id, id) SELECT id, 1 FROM users ORDER BY id LIMIT 3",
            "INSERT INTO orders (user_id, id) SELECT 7, 1 FROM users WHERE id = 5",
            "INSERT INTO orders (user_id, id) SELECT code::bigint, 1 FROM countries",
        ] {
            match route(sql) {
                RouteSpec::Refuse(e) => assert!(e.to_string().contains("orders"), "{sql}: {e}"),
                r if sql.contains("7, 1") && shard_of(7) == shard_of(5) => {
                    assert!(matches!(r, RouteSpec::Shard(_)))
                }
                r => panic!("{sql}: {r:?}"),
            }
        }
    }

    #[test]
    fn colocated_subqueries_run_per_shard() {
        for sql in [
            "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)",
            "SELECT * FROM users u WHERE u.id IN (SELECT o.user_id FROM orders o WHERE o.id > 3)",
            "SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u",
            "DELETE FROM orders o WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = o.user_id)",
        ] {
            assert!(
                matches!(route(sql), RouteSpec::All),
                "{sql}: {:?}",
                route(sql)
            );
        }
        // Pinned by the outer key: one shard.
        let r = route("SELECT * FROM users u WHERE u.id = 7 AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)");
        assert!(matches!(r, RouteSpec::Shard(_)), "{r:?}");
    }

    #[test]
    fn subqueries_across_shards_are_refused() {
        for sql in [
            "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = u.id)",
            "SELECT * FROM users WHERE score > (SELECT avg(amount) FROM orders)",
            "SELECT * FROM users u WHERE u.id IN (SELECT o.id FROM orders o)",
            "SELECT * FROM users u WHERE u.id IN (SELECT o.user_id FROM orders o LIMIT 3)",
        ] {
            match route(sql) {
                RouteSpec::Refuse(e) => assert!(e.to_string().contains("subquery"), "{e}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn decimal_literals_compare_by_value() {
        let two = route("SELECT * FROM users WHERE id = 2");
        let two_dec = route("SELECT * FROM users WHERE id = 2.000");
        match (two, two_dec) {
            (RouteSpec::Shard(a), RouteSpec::Shard(b)) => assert_eq!(a, b),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route("SELECT * FROM users WHERE id = 1.5"),
            RouteSpec::Any
        ));
        assert!(matches!(
            route("SELECT * FROM users WHERE id = 2e0"),
            RouteSpec::All
        ));
    }

    /// The route of `sql` through the simple-protocol cache (literal templates), resolved.
    fn simple_route(cache: &PlanCache, m: &ShardMap, sql: &str) -> String {
        let (p, sc) = cache.get_simple(m, sql).unwrap();
        let lits = sc.as_ref().map(|s| s.query_lits(sql)).unwrap_or_default();
        let r = match &p.stmts[0].route {
            RouteSpec::Keys(kr) => resolve_keys(m, kr, &[], |_| false, lits),
            other => other.clone(),
        };
        format!("{r:?}")
    }

    #[test]
    fn literal_templates_route_like_exact_plans() {
        let m = map();
        let cache = PlanCache::new(100);
        let shapes = [
            "SELECT * FROM users WHERE id = {}",
            "SELECT * FROM users WHERE id = -{}",
            "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = {} AND o.id = 7",
            "SELECT * FROM users WHERE id IN ({}, 3, 900)",
            "UPDATE users SET name = 'x' WHERE id = {}",
            "INSERT INTO users (id, name) VALUES ({}, 'n')",
            "SELECT * FROM users WHERE id = '{}'",
            "SELECT * FROM users WHERE id = {}.0",
            "SELECT * FROM users WHERE id = {}.5",
        ];
        for shape in shapes {
            for v in ["1", "2", "17", "4242", "99999999999", "abc"] {
                if v == "abc" && !shape.contains("'{}'") {
                    continue;
                }
                let sql = shape.replace("{}", v);
                let want = format!("{:?}", route(&sql));
                let got = simple_route(&cache, &m, &sql);
                // Refusals may differ in wording only when a constant is invalid.
                if want.starts_with("Refuse") {
                    assert!(
                        got.starts_with("Refuse"),
                        "{sql}: template {got} vs exact {want}"
                    );
                } else {
                    assert_eq!(got, want, "{sql}");
                }
            }
        }
        // The shapes above were planned once each (templates reused across values).
        let n = cache.templates.read().len();
        assert!((5..=shapes.len()).contains(&n), "{n} templates");
        // Statements whose plan depends on values are never templated.
        let (_, sc) = cache
            .get_simple(&m, "SELECT * FROM users ORDER BY id LIMIT 5")
            .unwrap();
        assert!(sc.is_none());
        let (_, sc) = cache.get_simple(&m, "SET search_path = 'x'").unwrap();
        assert!(sc.is_none());
    }

    #[test]
    fn cursors_stay_on_one_shard() {
        assert!(matches!(
            route("DECLARE c CURSOR FOR SELECT * FROM users ORDER BY id"),
            RouteSpec::Refuse(_)
        ));
        assert!(matches!(
            route("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = 3"),
            RouteSpec::Shard(_)
        ));
        assert!(matches!(route("FETCH 10 FROM c"), RouteSpec::Any));
    }

    #[test]
    fn key_lists_name_a_subset() {
        match route("SELECT * FROM users WHERE id IN (1, 2, 3, 4, 5, 6)") {
            RouteSpec::Subset(set) => assert!(set.len() >= 2, "{set:?}"),
            other => panic!("{other:?}"),
        }
    }
}
