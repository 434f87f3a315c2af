//! Placement strategies of sharded tables: hash, range, geo and directory.
//!
//! A [`Sharded`] table names its key column, the key type and a [`Strategy`]; the shard map
//! answers "which shard holds key `k` of table `t`" with [`Sharded::locate`], and "which
//! shards can hold keys in `[lo, hi]`" with [`Sharded::shards_between`] (range predicates).
//!
//! Tables whose placement functions are identical share a co-location [`Sharded::group`]:
//! a join on their keys then stays on one shard. Hash tables with keys of one class share
//! the ring; range tables share a group only with identical bounds; geo tables with
//! identical regions; every directory table shares the one directory.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::sharding::directory::{Directory, Lookup};
use crate::sharding::keys::{KeyType, KeyValue};
use crate::sharding::ring::HashRing;
use crate::sharding::shardset::ShardSet;

/// A sharded table's rule.
#[derive(Debug)]
pub struct Sharded {
    /// Table name as written in the map (for messages).
    pub name: String,
    /// Shard-key column, as written in the map.
    pub key: String,
    /// Its type.
    pub key_type: KeyType,
    /// How keys map to shards.
    pub strategy: Strategy,
    /// Co-location group: tables of one group place equal keys on the same shard.
    pub group: u32,
    /// Placement may change while the map is in use (a rebalance is running): keys are
    /// located per execution, never when a plan is cached, and range predicates do not
    /// narrow the shards (a range may be half moved).
    pub unsettled: bool,
}

/// How a sharded table's keys map to shards.
#[derive(Debug)]
pub enum Strategy {
    /// The map's consistent-hash ring.
    Hash,
    /// Ordered key ranges.
    Range(RangeRule),
    /// Key values grouped into regions served by shards.
    Geo(GeoRule),
    /// Key → shard entries in the directory table.
    Directory(DirectoryRule),
}

impl Strategy {
    /// The strategy's name as written in the map.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Hash => "hash",
            Strategy::Range(_) => "range",
            Strategy::Geo(_) => "geo",
            Strategy::Directory(_) => "directory",
        }
    }
}

/// Ordered, contiguous key ranges: range `i` holds keys in `[below[i-1], below[i])`.
#[derive(Debug, Clone)]
pub struct RangeRule {
    /// Exclusive upper bounds, strictly ascending, with the shard of each range.
    pub bounds: Vec<(KeyValue, usize)>,
    /// The catch-all shard for keys at or above the last bound (`None`: refused).
    pub rest: Option<usize>,
}

impl RangeRule {
    /// The shard whose range holds `v`.
    pub fn locate(&self, v: &KeyValue) -> Option<usize> {
        for (below, shard) in &self.bounds {
            if v.cmp_same(below) == Some(Ordering::Less) {
                return Some(*shard);
            }
        }
        self.rest
    }

    /// The shards whose ranges overlap the interval `lo ..= hi` (bounds as given).
    pub fn overlapping(&self, lo: Bound<&KeyValue>, hi: Bound<&KeyValue>) -> ShardSet {
        let mut set = ShardSet::default();
        let mut start: Option<&KeyValue> = None;
        let ranges = self
            .bounds
            .iter()
            .map(|(b, s)| (Some(b), Some(*s)))
            .chain(std::iter::once((None, self.rest)));
        for (end, shard) in ranges {
            let Some(shard) = shard else {
                continue;
            };
            // Empty when hi is below the range's start, or lo at/above its (exclusive) end.
            let below_start = match (start, hi) {
                (Some(st), Bound::Included(h)) => h.cmp_same(st) == Some(Ordering::Less),
                (Some(st), Bound::Excluded(h)) => h.cmp_same(st) != Some(Ordering::Greater),
                _ => false,
            };
            let above_end = match (end, lo) {
                (Some(e), Bound::Included(l) | Bound::Excluded(l)) => {
                    l.cmp_same(e) != Some(Ordering::Less)
                }
                _ => false,
            };
            if !below_start && !above_end {
                set.add(shard);
            }
            start = end;
        }
        set
    }
}

/// A region: its shards and the ring that spreads its keys among them.
#[derive(Debug, Clone)]
pub struct Region {
    /// Region name.
    pub name: String,
    /// Shard indexes serving it, in map order.
    pub shards: Vec<usize>,
    /// Ring over those shards (same tokens as the map's ring for each shard).
    pub ring: HashRing,
}

/// Key values → regions → shards.
#[derive(Debug, Clone)]
pub struct GeoRule {
    /// The regions the table uses.
    pub regions: Vec<Region>,
    /// Key value → index into `regions`.
    pub by_value: HashMap<KeyValue, usize>,
    /// Region index for values listed nowhere (`None`: refused).
    pub default: Option<usize>,
}

/// Where unknown directory keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The hash ring decides, and the first write records the entry.
    Hash,
    /// A fixed shard (recorded on first write too).
    Shard(usize),
    /// Refused: keys must be assigned first.
    Reject,
}

/// A directory table's rule (the entries live in the shared [`Directory`]).
#[derive(Debug, Clone)]
pub struct DirectoryRule {
    /// What unknown keys do.
    pub fallback: Fallback,
    /// The directory holding the entries.
    pub directory: Arc<Directory>,
}

/// Where a key belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// On this shard.
    Shard(usize),
    /// No shard takes it; the reason, for the error message.
    Nowhere(String),
    /// It cannot be located now (the directory is not loaded); the reason.
    Unavailable(String),
}

impl Sharded {
    /// `table.key`, for messages.
    pub fn what(&self) -> String {
        format!("{}.{}", self.name, self.key)
    }

    /// The shard holding `key`. `ring` is the map's hash ring; `record` asks a directory
    /// table to record a fallback placement (set for writes).
    pub fn locate(&self, ring: &HashRing, key: &KeyValue, record: bool) -> Located {
        match &self.strategy {
            Strategy::Hash => Located::Shard(ring.locate(key.hash64()) as usize),
            Strategy::Range(r) => match r.locate(key) {
                Some(s) => Located::Shard(s),
                None => Located::Nowhere(format!(
                    "{} = {} is above the last range bound and the table has no catch-all range",
                    self.what(),
                    key.sql_literal()
                )),
            },
            Strategy::Geo(g) => {
                let region = g.by_value.get(key).copied().or(g.default);
                match region.and_then(|r| g.regions.get(r)) {
                    Some(r) => Located::Shard(region_shard(r, key)),
                    None => Located::Nowhere(format!(
                        "{} = {} is in no region and the table has no default_region",
                        self.what(),
                        key.sql_literal()
                    )),
                }
            }
            Strategy::Directory(d) => {
                match d.directory.get(key) {
                    Lookup::Entry(s) => return Located::Shard(s),
                    Lookup::NotLoaded => {
                        return Located::Unavailable(format!(
                            "the key directory of {} ({} on shard #{}) is not loaded yet: its shard is unreachable",
                            self.name, d.directory.table, d.directory.shard
                        ))
                    }
                    Lookup::Missing => {}
                }
                let s = match d.fallback {
                    Fallback::Hash => ring.locate(key.hash64()) as usize,
                    Fallback::Shard(s) => s,
                    Fallback::Reject => {
                        return Located::Nowhere(format!(
                            "{} = {} has no directory entry and the table's fallback is reject; assign it first (DIRECTORY ASSIGN in the admin console)",
                            self.what(),
                            key.sql_literal()
                        ))
                    }
                };
                if record {
                    d.directory.record(key, s);
                }
                Located::Shard(s)
            }
        }
    }

    /// The shards that can hold keys between `lo` and `hi`, or `None` when the strategy
    /// cannot narrow a range (hash, geo, directory: every shard may).
    pub fn shards_between(&self, lo: Bound<&KeyValue>, hi: Bound<&KeyValue>) -> Option<ShardSet> {
        match &self.strategy {
            Strategy::Range(r) if !self.unsettled => Some(r.overlapping(lo, hi)),
            _ => None,
        }
    }

    /// Whether placement can change at run time (directory entries): literal keys must then
    /// be located per execution, not when the plan is cached.
    pub fn dynamic(&self) -> bool {
        self.unsettled || matches!(self.strategy, Strategy::Directory(_))
    }

    /// The directory, for directory tables.
    pub fn directory(&self) -> Option<&Arc<Directory>> {
        match &self.strategy {
            Strategy::Directory(d) => Some(&d.directory),
            _ => None,
        }
    }

    /// Explains where `key` goes: `customers.country = 'DE' -> region eu -> shard s0`.
    /// `table` is the name as the user gave it.
    pub fn explain(
        &self,
        table: &str,
        ring: &HashRing,
        key: &KeyValue,
        shard_names: &[String],
    ) -> String {
        let head = format!(
            "{table}.{} = {} ({})",
            self.key,
            key.sql_literal(),
            self.key_type
        );
        let name = |s: usize| shard_names.get(s).cloned().unwrap_or_default();
        match &self.strategy {
            Strategy::Hash => {
                let h = key.hash64();
                format!(
                    "{head} -> hash {h:#018x} -> shard {}",
                    name(ring.locate(h) as usize)
                )
            }
            Strategy::Range(r) => {
                let mut prev: Option<&KeyValue> = None;
                for (below, s) in &r.bounds {
                    if key.cmp_same(below) == Some(Ordering::Less) {
                        let from = prev.map(|p| p.sql_literal()).unwrap_or("-inf".into());
                        return format!(
                            "{head} -> range [{from}, {}) -> shard {}",
                            below.sql_literal(),
                            name(*s)
                        );
                    }
                    prev = Some(below);
                }
                let from = prev.map(|p| p.sql_literal()).unwrap_or("-inf".into());
                match r.rest {
                    Some(s) => format!("{head} -> range [{from}, +inf) -> shard {}", name(s)),
                    None => format!("{head} -> no range holds it (no catch-all): refused"),
                }
            }
            Strategy::Geo(g) => {
                let (region, how) = match g.by_value.get(key) {
                    Some(r) => (Some(*r), ""),
                    None => (g.default, " (default_region)"),
                };
                match region.and_then(|r| g.regions.get(r)) {
                    Some(r) if r.shards.len() == 1 => {
                        format!(
                            "{head} -> region {}{how} -> shard {}",
                            r.name,
                            name(region_shard(r, key))
                        )
                    }
                    Some(r) => format!(
                        "{head} -> region {}{how} ({} shards, hash {:#018x}) -> shard {}",
                        r.name,
                        r.shards.len(),
                        key.hash64(),
                        name(region_shard(r, key))
                    ),
                    None => format!("{head} -> in no region and no default_region: refused"),
                }
            }
            Strategy::Directory(d) => match d.directory.get(key) {
                Lookup::Entry(s) => format!("{head} -> directory entry -> shard {}", name(s)),
                Lookup::NotLoaded => {
                    let text = key.to_string();
                    match d.directory.statics.iter().find(|(k, _)| *k == text) {
                        Some((_, s)) => format!("{head} -> static directory entry -> shard {}", name(*s)),
                        None => format!(
                            "{head} -> no static entry; the directory table {} decides (ask a running proxy: SHOW ROUTE)",
                            d.directory.table
                        ),
                    }
                }
                Lookup::Missing => match d.fallback {
                    Fallback::Hash => format!(
                        "{head} -> no directory entry; fallback hash {:#018x} -> shard {}",
                        key.hash64(),
                        name(ring.locate(key.hash64()) as usize)
                    ),
                    Fallback::Shard(s) => {
                        format!("{head} -> no directory entry; fallback shard {}", name(s))
                    }
                    Fallback::Reject => {
                        format!("{head} -> no directory entry; fallback reject: refused")
                    }
                },
            },
        }
    }
}

/// The shard of `key` within a region (its own ring when it has several shards).
fn region_shard(r: &Region, key: &KeyValue) -> usize {
    if r.shards.len() == 1 {
        return r.shards[0];
    }
    let i = r.ring.locate(key.hash64()) as usize;
    r.shards.get(i).copied().unwrap_or(r.shards[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> KeyValue {
        KeyValue::Int(v)
    }

    #[test]
    fn ranges_locate_and_overlap() {
        let r = RangeRule {
            bounds: vec![(int(100), 0), (int(200), 1)],
            rest: Some(2),
        };
        assert_eq!(r.locate(&int(-5)), Some(0));
        assert_eq!(r.locate(&int(99)), Some(0));
        assert_eq!(r.locate(&int(100)), Some(1));
        assert_eq!(r.locate(&int(200)), Some(2));
        fn shards(r: &RangeRule, lo: Bound<&KeyValue>, hi: Bound<&KeyValue>) -> Vec<usize> {
            r.overlapping(lo, hi).iter().collect()
        }
        let (v99, v100, v150, v200) = (int(99), int(100), int(150), int(200));
        use Bound::*;
        assert_eq!(shards(&r, Included(&v100), Excluded(&v200)), vec![1]);
        assert_eq!(shards(&r, Included(&v100), Included(&v200)), vec![1, 2]);
        assert_eq!(
            shards(&r, Excluded(&v99), Excluded(&v100)),
            vec![0] // 99.5 would be in range 0 for a numeric key
        );
        assert_eq!(shards(&r, Included(&v99), Included(&v99)), vec![0]);
        assert_eq!(shards(&r, Unbounded, Excluded(&v100)), vec![0]);
        assert_eq!(shards(&r, Included(&v150), Unbounded), vec![1, 2]);
        assert_eq!(shards(&r, Unbounded, Unbounded), vec![0, 1, 2]);
        let no_rest = RangeRule {
            bounds: r.bounds.clone(),
            rest: None,
        };
        assert_eq!(no_rest.locate(&int(500)), None);
        assert_eq!(
            no_rest
                .overlapping(Included(&v150), Unbounded)
                .iter()
                .collect::<Vec<_>>(),
            vec![1]
        );
    }
}
