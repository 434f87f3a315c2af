//! Kept cursors through the extended protocol (see [`super::cursors`]):
//! - what psycopg 3's named cursors send — `DECLARE` with bound parameters (Parse, Bind,
//!   Describe, Execute, Sync), then `Describe` of the cursor's portal by name (and Sync),
//!   then each `FETCH FORWARD n FROM c` as a statement of its own with the result formats it
//!   wants, and `CLOSE c` — each a pipeline of its own that the proxy answers (see
//!   [`Session::special_batch`]);
//! - a portal of a merged read fetched with a row limit inside a transaction block (JDBC's
//!   `setFetchSize`, asyncpg's and node-postgres's cursors, tokio-postgres `query_portal`):
//!   the proxy declares a cursor of its own on the shards at the first Execute and answers
//!   each Execute with the next page from it, `PortalSuspended` between pages.

use std::sync::Arc;

use super::cursors::{DeclareParams, Fail};
use super::pipeline_special::Special;
use super::relay::{Outcome, RelayError};
use super::{Prepared, Session, SessionEnd};
use crate::error::ProxyError;
use crate::gather::{datum, GatherPlan, Mode};
use crate::routing::router::{CursorCmd, Declare, RouteSpec};
use crate::sharding::shardset::ShardSet;
use crate::wire::protocol::{build, decode_target, BindMsg, Frame};

impl Session {
    /// Whether a pipeline of this one cursor statement is the proxy's to run: a DECLARE
    /// the proxy keeps (`WITH HOLD`, or over a query that may span shards), or a statement
    /// on a cursor it keeps.
    pub(super) fn cursor_is_special(&self, c: &CursorCmd, route: &RouteSpec) -> bool {
        match c {
            CursorCmd::Declare(d) => {
                d.hold
                    || (d.merge.is_ok() && !matches!(route, RouteSpec::Shard(_) | RouteSpec::Any))
            }
            CursorCmd::Fetch(f) => self.kept_cursor(&f.name).is_some(),
            CursorCmd::Close(Some(n)) => self.kept_cursor(n).is_some(),
            CursorCmd::Close(None) => false,
        }
    }

    /// A pipeline that only describes a kept cursor's portal by name (psycopg describes the
    /// cursor it declared): its RowDescription and ReadyForQuery. Returns whether it was one.
    pub(super) fn describe_kept(&mut self, frames: &[Frame]) -> bool {
        let [d] = frames else {
            return false;
        };
        if d.tag != b'D' {
            return false;
        }
        let Ok((b'P', name)) = decode_target(d.body(), "Describe") else {
            return false;
        };
        let Some(k) = self.kept_cursor(name) else {
            return false;
        };
        // A cursor's portal describes its columns as text, binary for a BINARY cursor.
        let formats = vec![i16::from(k.decl.binary); k.fields.len()];
        let fields = k.fields.clone();
        datum::put_row_description(&mut self.out, &fields, &formats);
        self.push_ready();
        true
    }

    /// Runs a cursor statement's pipeline ([`Session::special_batch`]); ParseComplete and
    /// BindComplete are queued already.
    pub(super) async fn cursor_special(
        &mut self,
        sp: &Special,
        cmd: &CursorCmd,
    ) -> Result<(), SessionEnd> {
        let m = match BindMsg::decode(sp.bind.body()) {
            Ok(m) => m,
            Err(e) => {
                self.push_error(&ProxyError::Protocol(e.to_string()));
                self.push_ready();
                return Ok(());
            }
        };
        let r: Result<Result<String, Fail>, RelayError> = match cmd {
            CursorCmd::Declare(d) => {
                if sp.describe {
                    build::empty(&mut self.out, b'n');
                }
                let params = m.params();
                let is_binary = |i: usize| m.is_binary(i);
                let route = sp.stmt.plan.stmts.first().map(|s| &s.route);
                let target = match route {
                    Some(r) => self.resolve(r, &params, &is_binary, Default::default()),
                    None => Err(ProxyError::Internal("a DECLARE without a plan".into())),
                };
                match target {
                    Ok(t) => {
                        let p = DeclareParams {
                            types: &sp.stmt.types,
                            bind: &m,
                        };
                        self.declare_kept(d, t, Some(p)).await
                    }
                    Err(e) => Ok(Err(e.into())),
                }
            }
            CursorCmd::Fetch(f) => {
                let visible = self.kept_cursor(&f.name).map_or(0, |k| k.fields.len());
                match datum::expand_formats(&m.result_formats(), visible) {
                    Ok(formats) => {
                        if sp.describe && f.is_move {
                            build::empty(&mut self.out, b'n');
                        }
                        self.fetch_kept(f, &formats, sp.describe).await
                    }
                    Err(e) => Ok(Err(ProxyError::Protocol(e).into())),
                }
            }
            CursorCmd::Close(name) => {
                if sp.describe {
                    build::empty(&mut self.out, b'n');
                }
                let r = match name {
                    Some(n) => self.close_kept(n).await,
                    None => {
                        self.close_all_cursors().await;
                        Ok(())
                    }
                };
                Ok(r.map(|()| "CLOSE CURSOR".into()))
            }
        };
        match r {
            Ok(r) => {
                let o = self.cursor_reply(r, true);
                if sp.close && !o.error {
                    build::empty(&mut self.out, b'3');
                }
            }
            Err(RelayError::Client(e)) => return Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
            }
        }
        self.push_ready();
        self.release_if_idle(false);
        Ok(())
    }
}

impl Session {
    /// Declares the cursor a merged portal fetched with a row limit is paged from (a streaming
    /// merge only; a query that must be gathered keeps its rows in the proxy instead).
    pub(super) async fn stream_portal(
        &mut self,
        set: ShardSet,
        portal: &str,
        p: &Arc<Prepared>,
        gp: &Arc<GatherPlan>,
        m: &BindMsg<'_>,
    ) -> Result<Result<(), Fail>, RelayError> {
        if !matches!(gp.mode, Mode::Stream) {
            return Ok(Ok(()));
        }
        // Kept under the portal's name (SQL `FETCH`/`MOVE` name portals too: asyncpg moves its
        // cursor with `MOVE FORWARD n <portal>`), declared on the shards under one of the
        // proxy's (a client reuses portal names within a transaction).
        let c = self.cursors_mut();
        c.serial += 1;
        let d = Arc::new(Declare {
            name: format!("_sw_portal_{}", c.serial),
            hold: false,
            binary: false,
            scroll: false,
            query: p.sql.clone(),
            merge: Ok(gp.clone()),
        });
        let shards: Vec<usize> = set.iter().collect();
        let params = DeclareParams {
            types: &p.types,
            bind: m,
        };
        match self.declare_streams(&d, gp, &shards, Some(&params)).await? {
            Ok(Some(kept)) => {
                let key = if portal.is_empty() || self.kept_cursor(portal).is_some() {
                    d.name.clone()
                } else {
                    portal.to_string()
                };
                self.cursors_mut().kept.insert(key.clone(), kept);
                if let Some(g) = self.gather_portals.get_mut(portal) {
                    g.cursor = Some(key);
                    g.rows = Some(Default::default());
                }
                Ok(Ok(()))
            }
            // Sort keys the proxy cannot compare: gathered instead.
            Ok(None) => Ok(Ok(())),
            Err(f) => Ok(Err(f)),
        }
    }

    /// One Execute of a portal paged from the kept cursor `name`: up to `max_rows` rows
    /// (all for 0), then `PortalSuspended`, or `CommandComplete` once the cursor is exhausted.
    pub(super) async fn page_portal(
        &mut self,
        portal: &str,
        name: &str,
        m: &BindMsg<'_>,
        max_rows: i32,
        describe: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let visible = self.kept_cursor(name).map_or(0, |k| k.fields.len());
        let formats = match datum::expand_formats(&m.result_formats(), visible) {
            Ok(f) => f,
            Err(e) => return Ok(Err(ProxyError::Protocol(e))),
        };
        let (n, exhausted) = match self.page_kept(name, max_rows, &formats, describe).await? {
            Ok(r) => r,
            Err(f) => return Ok(Ok(self.cursor_reply(Err(f), true))),
        };
        let Some(g) = self.gather_portals.get_mut(portal) else {
            return Ok(Err(ProxyError::NoSuchPortal(portal.to_string())));
        };
        g.sent += n as u64;
        if exhausted || max_rows <= 0 {
            let tag = format!("SELECT {}", g.sent);
            // (The shards' cursors end with the transaction.)
            g.cursor = None;
            build::command_complete(&mut self.out, &tag);
            if let Some(c) = self.cursors.as_mut() {
                c.kept.remove(name);
            }
        } else {
            build::empty(&mut self.out, b's');
        }
        Ok(Ok(Outcome {
            status: Some(self.txn.status),
            error: false,
            ..Default::default()
        }))
    }
}
