//! SQL-level prepared statements: `PREPARE`, `EXECUTE` (alone, in `EXPLAIN`, in
//! `CREATE TABLE … AS`), in simple Query messages.
//!
//! Under transaction pooling a statement prepared on a backend would stay there, not with
//! the client, so the session keeps them: in its statement map, beside the protocol-level
//! ones and in the same namespace, so `DEALLOCATE`, `DISCARD ALL`, a Close, and a Parse of
//! the same name act on them as in Postgres (their plan refuses a Bind). An EXECUTE becomes
//! the statement's text with its arguments substituted
//! ([`crate::routing::router::expand`]), which then runs exactly as if the client had sent
//! it. `pg_prepared_statements` is read on a backend and does not list them.

use std::sync::Arc;

use super::{Prepared, Session, SessionEnd, MAX_CLIENT_STATEMENTS};
use crate::error::ProxyError;
use crate::routing::router::{expand, Plan, RouteSpec, SqlExecute, SqlPrepare, StmtKind, StmtPlan};
use crate::wire::protocol::build;

/// Whether a query string holds a PREPARE or an EXECUTE: then it runs through
/// [`Session::sql_prepared_query`].
#[inline]
pub(super) fn holds_sql_prepared(plan: &Plan) -> bool {
    plan.stmts
        .iter()
        .any(|s| matches!(s.kind, StmtKind::Prepare(_) | StmtKind::Execute(_)))
}

impl Session {
    /// A query string holding PREPAREs or EXECUTEs. Leading PREPAREs take effect first, in
    /// order; the rest, each EXECUTE replaced by the text it runs, then runs as if the
    /// client had sent it (one string, one implicit transaction). When a PREPARE, DEALLOCATE
    /// or DISCARD ALL comes before an EXECUTE of the rest, or an EXECUTE cannot be expanded
    /// ahead, the rest runs one statement at a time, each error where it happens.
    pub(super) async fn sql_prepared_query(
        &mut self,
        plan: &Plan,
        sql: &str,
    ) -> Result<(), SessionEnd> {
        let exits = |s: &StmtPlan| super::txn::exits_failed(&s.kind);
        if self.txn.failed && !plan.stmts.first().is_some_and(exits) {
            self.push_error(&ProxyError::InFailedTransaction);
            self.push_ready();
            return Ok(());
        }
        let mut rest = plan.stmts.as_slice();
        while let [st, tail @ ..] = rest {
            let StmtKind::Prepare(p) = &st.kind else {
                break;
            };
            if !self.sql_prepare(p) {
                self.push_ready();
                return Ok(());
            }
            rest = tail;
        }
        if rest.is_empty() {
            self.push_ready();
            return Ok(());
        }
        if !names_change_before_execute(rest) {
            match self.expand_all(rest, sql) {
                Ok(text) => return Box::pin(self.simple_query(&text)).await,
                Err(e) if rest.len() == 1 => {
                    self.push_error(&e);
                    self.push_ready();
                    return Ok(());
                }
                Err(_) => {} // reported when its statement's turn comes
            }
        }
        let rest = Plan {
            stmts: rest.to_vec(),
        };
        self.run_each(&rest, sql).await
    }

    /// One PREPARE or EXECUTE of a string run one statement at a time (see
    /// `Session::run_each`); returns whether it succeeded.
    pub(super) async fn sql_prepared_one(
        &mut self,
        kind: &StmtKind,
        text: &str,
    ) -> Result<bool, SessionEnd> {
        let exec = match kind {
            StmtKind::Prepare(p) => return Ok(self.sql_prepare(p)),
            StmtKind::Execute(e) => e,
            _ => return Ok(true),
        };
        let (text, plan) = match self.expanded_plan(exec, text) {
            Ok(p) => p,
            Err(e) => {
                self.push_error(&e);
                return Ok(false);
            }
        };
        match plan.stmts.as_slice() {
            [st] if !matches!(st.kind, StmtKind::Prepare(_) | StmtKind::Execute(_)) => {
                Box::pin(self.run_one_of_many(st, &text)).await
            }
            _ => {
                self.push_error(&ProxyError::Internal(
                    "an EXECUTE did not expand to one statement".into(),
                ));
                Ok(false)
            }
        }
    }

    /// PREPARE: keeps the statement and queues its CommandComplete, or the error; returns
    /// whether it succeeded.
    fn sql_prepare(&mut self, p: &Arc<SqlPrepare>) -> bool {
        match self.keep_sql_prepared(p) {
            Ok(()) => {
                build::command_complete(&mut self.out, "PREPARE");
                true
            }
            Err(e) => {
                self.push_error(&e);
                false
            }
        }
    }

    fn keep_sql_prepared(&mut self, p: &Arc<SqlPrepare>) -> Result<(), ProxyError> {
        if let Some(e) = &p.error {
            return Err(e.to_error());
        }
        // What the proxy can check before an EXECUTE: the statement plans. (Errors only a
        // shard finds, like an unknown table, come at EXECUTE.)
        let plan = self.topo.cache.get(&self.topo.map, &p.body)?;
        if plan.stmts.len() != 1 {
            return Err(ProxyError::Syntax(
                "PREPARE takes exactly one statement".into(),
            ));
        }
        if self.stmts.contains_key(&p.name) {
            return Err(ProxyError::DuplicateStatement(p.name.clone()));
        }
        if self.stmts.len() >= MAX_CLIENT_STATEMENTS {
            return Err(ProxyError::Limit(format!(
                "too many prepared statements in this session (limit {MAX_CLIENT_STATEMENTS})"
            )));
        }
        let refuse = ProxyError::Unsupported(format!(
            "prepared statement \"{}\" was made by SQL PREPARE: run it with EXECUTE (the proxy does not bind it through the extended protocol)",
            p.name
        ));
        let plan = Plan {
            stmts: vec![StmtPlan::plain(
                StmtKind::Other,
                RouteSpec::Refuse(refuse),
                (0, p.body.len()),
                false,
            )],
        };
        let mut stmt = Prepared::new(&p.body, Vec::new(), Arc::new(plan));
        stmt.by_sql = Some(p.clone());
        self.stmts.insert(p.name.clone(), Arc::new(stmt));
        Ok(())
    }

    /// The text an EXECUTE statement `text` runs.
    fn expand_execute(&self, e: &SqlExecute, text: &str) -> Result<String, ProxyError> {
        let stmt = self
            .stmts
            .get(&e.name)
            .ok_or_else(|| ProxyError::NoSuchStatement(e.name.clone()))?;
        let Some(prep) = &stmt.by_sql else {
            return Err(ProxyError::Unsupported(format!(
                "prepared statement \"{}\" was made through the extended protocol; EXECUTE through the proxy runs statements made by SQL PREPARE",
                e.name
            )));
        };
        expand(text, e, prep)
    }

    /// The text of statements `stmts` of `sql` (from the first on) with every EXECUTE
    /// expanded.
    fn expand_all(&self, stmts: &[StmtPlan], sql: &str) -> Result<String, ProxyError> {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut at = stmts.first().map_or(sql.len(), |s| s.span.0);
        for st in stmts {
            let StmtKind::Execute(e) = &st.kind else {
                continue;
            };
            out.push_str(sql.get(at..st.span.0).unwrap_or(""));
            out.push_str(&self.expand_execute(e, sql.get(st.span.0..st.span.1).unwrap_or(""))?);
            at = st.span.1;
        }
        out.push_str(sql.get(at..).unwrap_or(""));
        Ok(out)
    }

    /// An EXECUTE expanded, and its text planned (by its exact text: a statement of a
    /// string runs without a literal template). An INSERT the proxy completes is completed
    /// by `Session::run_one_of_many`, as any statement of a string.
    fn expanded_plan(
        &mut self,
        e: &SqlExecute,
        text: &str,
    ) -> Result<(String, Arc<Plan>), ProxyError> {
        let text = self.expand_execute(e, text)?;
        let plan = self.topo.cache.get(&self.topo.map, &text)?;
        if plan.stmts.iter().any(|s| s.dirties) {
            self.dirty = true;
        }
        if plan.stmts.iter().any(|s| s.kind == StmtKind::Ddl) {
            self.generated.refresh = true;
            if self.txn.status.is_open() {
                self.txn.ddl = true;
            }
        }
        Ok((text, plan))
    }
}

/// Whether a PREPARE comes among `stmts`, or a DEALLOCATE or DISCARD ALL before an EXECUTE:
/// then an EXECUTE cannot be expanded before the statements ahead of it ran.
fn names_change_before_execute(stmts: &[StmtPlan]) -> bool {
    let last_execute = stmts
        .iter()
        .rposition(|s| matches!(s.kind, StmtKind::Execute(_)))
        .unwrap_or(0);
    stmts.iter().enumerate().any(|(i, s)| match s.kind {
        StmtKind::Prepare(_) => true,
        StmtKind::Deallocate(_) | StmtKind::DiscardAll => i < last_execute,
        _ => false,
    })
}
