//! Server functions about the client's own session, answered by the proxy: a client's pid
//! is the one its BackendKeyData gave it (the proxy's, stable for the whole session), not
//! whichever pooled backend runs its statement.
//!
//! - `pg_backend_pid()` returns that pid.
//! - `pg_cancel_backend(pid)` cancels what the proxy session with that pid is running on
//!   the shards, when it belongs to the same proxy user (Knex cancels timed-out queries
//!   this way, binding the pid as `$1`); `false` otherwise, as Postgres answers for a pid it
//!   cannot signal.
//! - `pg_terminate_backend(pid)` also ends that session: it answers FATAL 57P01 before
//!   anything else.
//!
//! Both functions are strict: a NULL pid gives a NULL result, as in Postgres.
//!
//! - `pg_notify(channel, payload)` sends its notification as NOTIFY does (see
//!   [`super::notify`]) and returns one void value.
//!
//! - `currval(seq)` / `lastval()` of sequences whose values the proxy assigns (generated
//!   columns, see [`super::generate`]): the last value it gave this session, or `55000` as
//!   Postgres says when there is none.

use super::Session;
use crate::routing::router::{PidArg, SessionCall, SessionFn, TextArg};
use crate::wire::protocol::{build, BindMsg};

/// Type oids and lengths of the results.
const INT4: (u32, i16) = (23, 4);
const BOOL: (u32, i16) = (16, 1);
const INT8: (u32, i16) = (20, 8);
const VOID: (u32, i16) = (2278, 4);
/// The type of a text parameter.
const TEXT: u32 = 25;

/// The pid `arg` names: `Ok(None)` for NULL, `Err` for a value that is not an integer.
fn pid_value(arg: PidArg, bind: Option<&BindMsg>) -> Result<Option<i64>, ()> {
    let i = match arg {
        PidArg::Value(v) => return Ok(Some(v)),
        PidArg::Param(i) => i,
    };
    let Some(value) = bind.and_then(|b| b.param(i)).ok_or(())? else {
        return Ok(None);
    };
    crate::wire::protocol::bound_int(value, bind.is_some_and(|b| b.is_binary(i)))
        .map(Some)
        .ok_or(())
}

impl Session {
    /// The result of `f` (its parameters from `bind`, when it came by the extended
    /// protocol): RowDescription when `describe`, then its row and CommandComplete, in text or
    /// (with `binary`) binary format.
    pub(super) async fn session_fn(
        &mut self,
        f: &SessionFn,
        describe: bool,
        binary: bool,
        bind: Option<&BindMsg<'_>>,
    ) {
        let (arg, terminate) = match &f.call {
            SessionCall::CurrVal(_) | SessionCall::LastVal => {
                let value = match &f.call {
                    SessionCall::CurrVal(seq) => self.generated.current(seq),
                    _ => self.generated.last_value,
                };
                let Some(v) = value else {
                    let message = match &f.call {
                        SessionCall::CurrVal(seq) => format!(
                            "currval of sequence \"{}\" is not yet defined in this session",
                            seq.rsplit('.').next().unwrap_or(seq).trim_matches('"')
                        ),
                        _ => "lastval is not yet defined in this session".to_string(),
                    };
                    build::error(&mut self.out, "ERROR", "55000", &message);
                    return;
                };
                if describe {
                    self.describe_session_fn(f, binary);
                }
                let (text, bin) = (v.to_string(), v.to_be_bytes());
                let value: &[u8] = if binary { &bin } else { text.as_bytes() };
                build::data_row_raw(&mut self.out, &[Some(value)]);
                build::command_complete(&mut self.out, "SELECT 1");
                return;
            }
            SessionCall::BackendPid => {
                if describe {
                    self.describe_session_fn(f, binary);
                }
                let (text, bin) = (self.key_pid.to_string(), self.key_pid.to_be_bytes());
                let value: &[u8] = if binary { &bin } else { text.as_bytes() };
                build::data_row_raw(&mut self.out, &[Some(value)]);
                build::command_complete(&mut self.out, "SELECT 1");
                return;
            }
            SessionCall::Notify(args) => {
                if let Err(e) = self.pg_notify((&args.0, &args.1), bind).await {
                    self.push_error(&e);
                    return;
                }
                if describe {
                    self.describe_session_fn(f, binary);
                }
                // A void value: empty in text and binary format alike.
                build::data_row_raw(&mut self.out, &[Some(b"")]);
                build::command_complete(&mut self.out, "SELECT 1");
                return;
            }
            SessionCall::Cancel(arg) => (*arg, false),
            SessionCall::Terminate(arg) => (*arg, true),
        };
        let pid = match pid_value(arg, bind) {
            Ok(pid) => pid,
            Err(()) => {
                build::error(
                    &mut self.out,
                    "ERROR",
                    "22P02",
                    "invalid input syntax for the pid argument: an integer is expected",
                );
                return;
            }
        };
        let done = match pid {
            None => None,
            Some(pid) if terminate => {
                Some(self.shared.cancels.terminate_pid(pid, &self.user).await)
            }
            Some(pid) => Some(self.shared.cancels.cancel_pid(pid, &self.user).await),
        };
        if describe {
            self.describe_session_fn(f, binary);
        }
        let bin = done.map(|d| [u8::from(d)]);
        let value: Option<&[u8]> = match (done, binary) {
            (None, _) => None,
            (Some(_), true) => bin.as_ref().map(|b| &b[..]),
            (Some(true), false) => Some(b"t"),
            (Some(false), false) => Some(b"f"),
        };
        build::data_row_raw(&mut self.out, &[value]);
        build::command_complete(&mut self.out, "SELECT 1");
    }

    /// The RowDescription of `f`'s result.
    pub(super) fn describe_session_fn(&mut self, f: &SessionFn, binary: bool) {
        let (oid, len) = match f.call {
            SessionCall::BackendPid => INT4,
            SessionCall::CurrVal(_) | SessionCall::LastVal => INT8,
            SessionCall::Cancel(_) | SessionCall::Terminate(_) => BOOL,
            SessionCall::Notify(..) => VOID,
        };
        build::row_description(&mut self.out, &[(&f.column, oid, len, i16::from(binary))]);
    }

    /// The ParameterDescription of `f`'s statement: one int4 for a `$1` pid, text for the
    /// parameters of `pg_notify` (the types the client gave at Parse, when it gave them),
    /// none otherwise.
    pub(super) fn describe_session_fn_params(&mut self, f: &SessionFn, declared: &[u32]) {
        let declared_or =
            |i: usize, oid: u32| declared.get(i).copied().filter(|&t| t != 0).unwrap_or(oid);
        match &f.call {
            SessionCall::Notify(args) => {
                let n = [&args.0, &args.1]
                    .iter()
                    .filter_map(|x| match x {
                        TextArg::Param(i) => Some(i + 1),
                        TextArg::Value(_) => None,
                    })
                    .max()
                    .unwrap_or(0);
                let at = build::begin(&mut self.out, b't');
                self.out.extend_from_slice(&(n as i16).to_be_bytes());
                for i in 0..n {
                    self.out
                        .extend_from_slice(&declared_or(i, TEXT).to_be_bytes());
                }
                build::finish(&mut self.out, at);
            }
            SessionCall::Cancel(PidArg::Param(0)) | SessionCall::Terminate(PidArg::Param(0)) => {
                let oid = declared_or(0, INT4.0);
                let mut body = [0u8; 6];
                body[..2].copy_from_slice(&1i16.to_be_bytes());
                body[2..].copy_from_slice(&oid.to_be_bytes());
                self.out.extend_from_slice(&[b't', 0, 0, 0, 10]);
                self.out.extend_from_slice(&body);
            }
            _ => self.out.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]),
        }
    }
}
