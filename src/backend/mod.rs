//! The shard side: one connection to a shard ([`conn`]), the per-shard pools ([`pool`])
//! with their latency histograms ([`latency`]), two-phase commit's log and recovery
//! ([`twophase`], [`twophase_client`], finishing a prepared transaction as its owner:
//! [`prepared_xacts`]), the allocator of generated values ([`ids`]) and LISTEN/NOTIFY's
//! listening connection ([`notify`]). Uses [`crate::wire`] and [`crate::sharding`]; knows
//! nothing of clients.

pub mod conn;
pub mod ids;
pub mod latency;
pub mod notify;
pub mod pool;
pub mod prepared_xacts;
pub mod twophase;
pub mod twophase_client;
