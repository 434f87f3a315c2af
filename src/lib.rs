//! shardwire: a PostgreSQL sharding proxy and query router.
//!
//! Module map (one concept each):
//! - [`config`]: the YAML shard map as written by the user, and its validation.
//! - [`keys`]: shard-key types and their canonical byte form.
//! - [`ring`]: the consistent-hash ring (fixed xxh3-64 hash, explicit tokens).
//! - [`shardmap`]: the validated, immutable routing map built from a config;
//!   [`strategy`]: hash/range/geo/directory placement; [`directory`]: the key directory.
//! - [`router`]: SQL -> statement kinds and routes; [`gather`]: merging multi-shard reads.
//! - [`localpg`]: throwaway local Postgres clusters (quickstart and tests).

pub mod admin;
pub mod admin_http;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod clients;
pub mod config;
pub mod copyplan;
pub mod copysplit;
pub mod directory;
pub mod encoding;
pub mod error;
pub mod gather;
pub mod keys;
pub mod latency;
pub mod literals;
pub mod localpg;
pub mod pool;
pub mod protocol;
pub mod rebalance;
pub mod reload;
pub mod ring;
pub mod router;
pub mod runtime;
pub mod server;
pub mod session;
pub mod shard;
pub mod shardmap;
pub mod shardset;
pub mod strategy;
pub mod telemetry;
pub mod tls;
pub mod transition;
pub mod twophase;
