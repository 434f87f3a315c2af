//! Where a row lives: the validated shard map ([`shardmap`]) with its shards ([`shard`]),
//! key types and their canonical bytes ([`keys`]), the placement strategies ([`strategy`]:
//! hash ring [`ring`], range, geography, [`directory`]), sets of shards ([`shardset`]) and the
//! tables' columns as the shards define them ([`catalog`], read by [`catalog_read`]), and the
//! schema the proxy's control tables live in ([`control_schema`]).
//! Knows nothing of SQL or sessions; may use [`crate::config`] and [`crate::wire::tls`].

pub mod catalog;
pub mod catalog_read;
pub mod control_schema;
pub mod directory;
pub mod keys;
pub mod ring;
pub mod shard;
pub mod shardmap;
pub mod shardset;
pub mod strategy;
