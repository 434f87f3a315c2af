//! Errors the proxy reports to clients, each with the SQLSTATE it is sent with.

use crate::sharding::keys::KeyError;

/// An error the proxy itself raises for a client request.
///
/// Every variant maps to a Postgres SQLSTATE via [`ProxyError::sqlstate`] and is
/// sent to the client as an `ErrorResponse`; the session stays usable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The client broke the wire protocol (bad framing, unknown message).
    #[error("{0}")]
    Protocol(String),
    /// The SQL text did not parse.
    #[error("{0}")]
    Syntax(String),
    /// A construct shardwire refuses because it cannot give a correct answer yet.
    #[error("{0}")]
    Unsupported(String),
    /// A row whose key no shard takes (no range, region or directory entry holds it);
    /// SQLSTATE 23514, as Postgres reports a row that fits no partition.
    #[error("no shard for the row: {0}")]
    NoShard(String),
    /// Routing information is temporarily unavailable (the key directory is not loaded).
    #[error("{0}")]
    Unavailable(String),
    /// A shard-key value that does not fit the key's type.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// A shard could not be reached.
    #[error("shard {shard} is unavailable: {reason}")]
    ShardUnavailable {
        /// Shard name.
        shard: String,
        /// What failed (connect error, closed connection, ...).
        reason: String,
    },
    /// No pooled connection became free in time.
    #[error("no connection to shard {shard} within {secs}s (pool size {size})")]
    PoolTimeout {
        /// Shard name.
        shard: String,
        /// The checkout timeout that expired.
        secs: u64,
        /// The pool size.
        size: usize,
    },
    /// A statement in a transaction that already failed.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    /// Bind/Describe/Close named a prepared statement the session does not have.
    #[error("prepared statement \"{0}\" does not exist")]
    NoSuchStatement(String),
    /// Parse named a prepared statement that already exists.
    #[error("prepared statement \"{0}\" already exists")]
    DuplicateStatement(String),
    /// SQL EXECUTE gave another number of arguments than the statement takes.
    #[error("wrong number of parameters for prepared statement \"{name}\"")]
    WrongParamCount {
        /// The statement.
        name: String,
        /// Parameters it takes.
        expected: usize,
        /// Arguments given.
        got: usize,
    },
    /// Execute/Describe named a portal the session does not have.
    #[error("portal \"{0}\" does not exist")]
    NoSuchPortal(String),
    /// Authentication failed.
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// Text that is not valid UTF-8 (the proxy's only client encoding).
    #[error("{0}")]
    Encoding(String),
    /// The client exceeded a configured limit (message size, connections).
    #[error("{0}")]
    Limit(String),
    /// The proxy needed more memory than a configured budget allows (the gather memory
    /// limit); SQLSTATE 53200, as Postgres reports running out of memory.
    #[error("{0}")]
    OutOfMemory(String),
    /// An invariant of the proxy's own did not hold (a bug, never the client's doing);
    /// SQLSTATE XX000, as Postgres reports an internal error.
    #[error("internal error: {0}")]
    Internal(String),
    /// The client cancelled the statement before it reached a shard (it was waiting for a
    /// pooled connection); SQLSTATE 57014, as from Postgres.
    #[error("canceling statement due to user request")]
    QueryCanceled,
    /// A prepared statement the client described earlier now has another result shape
    /// (see [`crate::session::shape`]): refused as Postgres refuses it.
    #[error("cached plan must not change result type")]
    CachedPlanChanged,
    /// A shard refused a statement the proxy ran on the client's behalf.
    #[error("{message}")]
    Backend {
        /// The shard's SQLSTATE.
        code: String,
        /// The shard's message.
        message: String,
    },
}

impl ProxyError {
    /// The SQLSTATE sent with this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            ProxyError::Protocol(_) => "08P01",
            ProxyError::Syntax(_) => "42601",
            ProxyError::Unsupported(_) => "0A000",
            ProxyError::Key(k) => k.sqlstate(),
            ProxyError::NoShard(_) => "23514",
            ProxyError::Unavailable(_) => "57P03",
            ProxyError::ShardUnavailable { .. } => "08006",
            ProxyError::PoolTimeout { .. } => "53300",
            ProxyError::InFailedTransaction => "25P02",
            ProxyError::NoSuchStatement(_) => "26000",
            ProxyError::DuplicateStatement(_) => "42P05",
            ProxyError::WrongParamCount { .. } => "42601",
            ProxyError::NoSuchPortal(_) => "34000",
            ProxyError::AuthFailed(_) => "28P01",
            ProxyError::Limit(_) => "53300",
            ProxyError::Encoding(_) => "22021",
            ProxyError::OutOfMemory(_) => "53200",
            ProxyError::Internal(_) => "XX000",
            ProxyError::QueryCanceled => "57014",
            ProxyError::CachedPlanChanged => "0A000",
            ProxyError::Backend { code, .. } => code,
        }
    }

    /// The DETAIL sent with the error, as Postgres sends one for it.
    pub fn detail(&self) -> Option<String> {
        match self {
            ProxyError::WrongParamCount { expected, got, .. } => {
                Some(format!("Expected {expected} parameters but got {got}."))
            }
            _ => None,
        }
    }

    /// ErrorResponse fields sent after the message, for errors Postgres itself raises and
    /// drivers tell apart by where it raised them: asyncpg knows "cached plan must not
    /// change result type" only by its routine field (`R`, `RevalidateCachedQuery`), and
    /// then prepares the statement again. As Postgres 15 sends it (`F`, `L`, `R`).
    pub fn fields(&self) -> &'static [(u8, &'static str)] {
        match self {
            ProxyError::CachedPlanChanged => &[
                (b'F', "plancache.c"),
                (b'L', "722"),
                (b'R', "RevalidateCachedQuery"),
            ],
            _ => &[],
        }
    }
}
