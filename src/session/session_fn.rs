//! Server functions about the client's own session, answered by the proxy: a client's pid
//! is the one its BackendKeyData gave it (the proxy's, stable for the whole session), not
//! whichever pooled backend runs its statement.
//!
//! - `pg_backend_pid()` returns that pid.
//! - `pg_cancel_backend(pid)` cancels what the proxy session with that pid is running on
//!   the shards, when it belongs to the same proxy user (Knex cancels timed-out queries
//!   this way); `false` otherwise, as Postgres answers for a pid it cannot signal.

use super::Session;
use crate::protocol::build;
use crate::router::{SessionCall, SessionFn};

/// Type oids and lengths of the results.
const INT4: (u32, i16) = (23, 4);
const BOOL: (u32, i16) = (16, 1);

impl Session {
    /// The result of `f`: RowDescription when `describe`, then its row and CommandComplete,
    /// in text or (with `binary`) binary format.
    pub(super) async fn session_fn(&mut self, f: &SessionFn, describe: bool, binary: bool) {
        let (text, bin): (String, Vec<u8>) = match f.call {
            SessionCall::BackendPid => (
                self.key_pid.to_string(),
                self.key_pid.to_be_bytes().to_vec(),
            ),
            SessionCall::Cancel(pid) => {
                let done = self.shared.cancels.cancel_pid(pid, &self.user).await;
                (if done { "t" } else { "f" }.into(), vec![u8::from(done)])
            }
        };
        if describe {
            self.describe_session_fn(f, binary);
        }
        let value: &[u8] = if binary { &bin } else { text.as_bytes() };
        build::data_row_raw(&mut self.out, &[Some(value)]);
        build::command_complete(&mut self.out, "SELECT 1");
    }

    /// The RowDescription of `f`'s result.
    pub(super) fn describe_session_fn(&mut self, f: &SessionFn, binary: bool) {
        let (oid, len) = match f.call {
            SessionCall::BackendPid => INT4,
            SessionCall::Cancel(_) => BOOL,
        };
        build::row_description(&mut self.out, &[(&f.column, oid, len, i16::from(binary))]);
    }
}
