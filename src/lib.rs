//! shardwire: a PostgreSQL sharding proxy and query router.
//!
//! The folders follow a statement from the client to the shards and back; each stage
//! imports only the stages listed after it (checked by `tests/module_graph.rs`):
//!
//! - [`server`]: the listener, TLS and login, the runtime; starts a session per client and
//!   the control plane beside them.
//! - [`ops`]: the operator's surface: admin console, HTTP endpoints, config reload.
//! - [`rebalance`]: `shardwire rebalance` (moving rows whose owner changes) and the proxy's
//!   watcher that follows a running rebalance.
//! - [`session`]: one client session: simple and extended protocol, transactions, settings,
//!   relay of single-shard replies, merge of multi-shard ones; the state sessions share.
//! - [`telemetry`]: Prometheus metrics.
//! - [`backend`]: connections to the shards, their pools, two-phase commit.
//! - [`routing`]: SQL text → statement kind and route (parse, key extraction, INSERT
//!   splitting, literal templates, the plan cache, COPY plans).
//! - [`gather`]: how a multi-shard read is merged (plans and row values).
//! - [`sharding`]: the validated shard map, key types, strategies (hash ring, range,
//!   geography, directory) and the transition of a map during a rebalance.
//! - [`config`]: the YAML shard map as written by the user; [`error`]: the proxy's errors;
//!   [`quote`]: names and values quoted into the SQL the proxy writes.
//! - [`wire`]: the Postgres wire protocol as a codec (no I/O), SCRAM, TLS, cancel keys,
//!   client encodings.
//! - [`localpg`]: throwaway local Postgres clusters (quickstart and tests).

pub mod backend;
pub mod config;
pub mod error;
pub mod gather;
pub mod localpg;
pub mod ops;
pub mod quote;
pub mod rebalance;
pub mod routing;
pub mod server;
pub mod session;
pub mod sharding;
pub mod telemetry;
pub mod wire;
