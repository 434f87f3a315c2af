//! Sets of shards by index: what a statement's keys, ranges and rules resolve to.

/// A set of shards (by index; shard maps hold at most [`crate::sharding::shardmap::MAX_SHARDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardSet(u128);

impl ShardSet {
    /// Shards `0..n`.
    pub fn all(n: usize) -> ShardSet {
        if n >= 128 {
            ShardSet(u128::MAX)
        } else {
            ShardSet((1u128 << n) - 1)
        }
    }
    /// Adds shard `i`.
    pub fn add(&mut self, i: usize) {
        if i < 128 {
            self.0 |= 1u128 << i;
        }
    }
    /// Number of shards in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The shards in both sets.
    pub fn intersect(self, other: ShardSet) -> ShardSet {
        ShardSet(self.0 & other.0)
    }
    /// The shard indexes, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..128usize).filter(move |i| self.0 & (1u128 << i) != 0)
    }
}
