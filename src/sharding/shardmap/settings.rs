//! The settings a map carries besides its placement: how clients authenticate and who may
//! connect, the backend pool, the scatter-gather limits.

use std::time::Duration;

/// How clients authenticate to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the default).
    ScramSha256,
    /// MD5 password.
    Md5,
}

impl AuthMethod {
    /// The name as written in the map (`scram-sha-256`, `md5`).
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }
}

/// A user allowed to connect to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// User name.
    pub name: String,
    /// Password (plain text, as configured).
    pub password: String,
    /// May use the admin console (`psql -d shardwire`).
    pub admin: bool,
    /// The login its clients use on the shards (`shard_user`, `shard_password`); `None`:
    /// the shards' URL login.
    pub shard_login: Option<ShardLogin>,
}

/// A role and password the proxy logs in to the shards with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLogin {
    /// Role name.
    pub user: String,
    /// Its password, if the shards ask for one.
    pub password: Option<String>,
}

/// Backend pool settings, per shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections per shard.
    pub size: usize,
    /// Session pooling (a client keeps its backend connections) instead of
    /// transaction pooling.
    pub session_mode: bool,
    /// How long a query waits for a free connection.
    pub checkout_timeout: Duration,
    /// How long connecting to a shard may take.
    pub connect_timeout: Duration,
    /// The shards' `statement_timeout` default (`limits.query_timeout_ms`; `None`: none).
    pub statement_timeout: Option<Duration>,
}

/// Limits of one scatter-gather query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherSettings {
    /// Most bytes of rows the proxy holds for one query while merging.
    pub memory_limit: usize,
    /// How long one scatter query may run.
    pub timeout: Duration,
}
