//! The shard side: one connection to a shard ([`conn`]), the per-shard pools ([`pool`])
//! with their latency histograms ([`latency`]), two-phase commit's log and recovery
//! ([`twophase`]) and the allocator of generated values ([`ids`]). Uses [`crate::wire`] and [`crate::sharding`]; knows nothing of clients.

pub mod conn;
pub mod ids;
pub mod latency;
pub mod pool;
pub mod twophase;
