//! The shard side: one connection to a shard ([`conn`]), the per-shard pools ([`pool`])
//! with their latency histograms ([`latency`]), and two-phase commit's log and recovery
//! ([`twophase`]). Uses [`crate::wire`] and [`crate::sharding`]; knows nothing of clients.

pub mod conn;
pub mod latency;
pub mod pool;
pub mod twophase;
