//! Where a row lives: the validated shard map ([`shardmap`]) with its shards ([`shard`]),
//! key types and their canonical bytes ([`keys`]), the placement strategies ([`strategy`]:
//! hash ring [`ring`], range, geography, [`directory`]) and sets of shards ([`shardset`]).
//! Knows nothing of SQL or sessions; may use [`crate::config`] and [`crate::wire::tls`].

pub mod directory;
pub mod keys;
pub mod ring;
pub mod shard;
pub mod shardmap;
pub mod shardset;
pub mod strategy;
