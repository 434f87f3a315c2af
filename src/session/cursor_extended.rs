//! Kept cursors through the extended protocol (see [`super::cursors`]): what psycopg 3's
//! named cursors send — `DECLARE` with bound parameters (Parse, Bind, Describe, Execute,
//! Sync), then `Describe` of the cursor's portal by name (and Sync), then each `FETCH
//! FORWARD n FROM c` as a statement of its own with the result formats it wants, and
//! `CLOSE c` — each a pipeline of its own that the proxy answers (see
//! [`Session::special_batch`]).

use super::cursors::{DeclareParams, Fail};
use super::pipeline_special::Special;
use super::relay::RelayError;
use super::{Session, SessionEnd};
use crate::error::ProxyError;
use crate::gather::datum;
use crate::routing::router::{CursorCmd, RouteSpec};
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
