//! The routing overlay of a rebalance in progress.
//!
//! While `shardwire rebalance` runs, a proxy routes with the *new* map built over the merged
//! shard list ([`crate::sharding::shardmap::ShardMap::transition_pair`]) plus a [`Transition`]: for a
//! key whose owner differs between the old and the new map, the unit
//! `(co-location group, old owner, new owner)` decides. Until the rebalance has switched
//! that unit, the key still lives on its old owner; afterwards on the new one. Units are
//! listed by the rebalance in its control table and switched one at a time
//! ([`crate::rebalance`]); the proxy flips them here as it learns about them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::sharding::keys::KeyValue;
use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::strategy::{Located, Sharded};

/// One unit of a rebalance: the keys of one co-location group moving between two shards.
#[derive(Debug)]
pub struct Unit {
    /// Its name, e.g. `users+orders s0->s3` (see [`unit_name`]).
    pub name: String,
    /// Co-location group (in the new map).
    pub group: u32,
    /// Old owner (shard index in the merged list).
    pub src: usize,
    /// New owner.
    pub dst: usize,
    /// Which part of the pair's keys: those with `hash64 % parts == part`.
    pub part: u32,
    /// Into how many parts the pair's keys are cut (bounding the rows of one switch).
    pub parts: u32,
    /// Whether the new owner serves the unit's keys now.
    switched: AtomicBool,
}

impl Unit {
    /// Whether the unit has been switched to its new owner.
    pub fn is_switched(&self) -> bool {
        self.switched.load(Ordering::Acquire)
    }
}

/// The name of part `part` of `parts` of the keys of `group_label` moving from `src` to `dst`.
pub fn unit_name(group_label: &str, src: &str, dst: &str, part: u32, parts: u32) -> String {
    if parts <= 1 {
        format!("{group_label} {src}->{dst}")
    } else {
        format!("{group_label} {src}->{dst} part {}/{parts}", part + 1)
    }
}

/// Whether `key` falls in part `part` of `parts`.
pub fn in_part(key: &KeyValue, part: u32, parts: u32) -> bool {
    parts <= 1 || key.hash64() % u64::from(parts) == u64::from(part)
}

/// A unit as planned: name, group, source, target, part, parts.
pub type PlannedUnit = (String, u32, usize, usize, u32, u32);

/// The label of a co-location group: its tables in map order, joined by `+`.
pub fn group_label(map: &ShardMap, group: u32) -> String {
    let names: Vec<&str> = map
        .sharded_tables()
        .filter(|t| t.group == group)
        .map(|t| t.name.as_str())
        .collect();
    names.join("+")
}

/// A rebalance as one proxy routes it.
#[derive(Debug)]
pub struct Transition {
    /// The rebalance run this overlay belongs to.
    pub run_id: i64,
    /// The old map, over the merged shard list.
    old: ShardMap,
    /// The old map's rules by table name.
    old_rules: HashMap<String, Arc<Sharded>>,
    /// The planned units.
    units: Vec<Unit>,
}

impl Transition {
    /// The overlay for run `run_id`: `old` is the old side of
    /// [`ShardMap::transition_pair`].
    pub fn new(run_id: i64, old: ShardMap, units: Vec<PlannedUnit>) -> Self {
        let old_rules = old
            .tables()
            .filter_map(|(_, r)| match r {
                TableRule::Sharded(t) => Some((t.name.clone(), t.clone())),
                TableRule::Reference => None,
            })
            .collect();
        let units = units
            .into_iter()
            .map(|(name, group, src, dst, part, parts)| Unit {
                name,
                group,
                src,
                dst,
                part,
                parts,
                switched: AtomicBool::new(false),
            })
            .collect();
        Transition {
            run_id,
            old,
            old_rules,
            units,
        }
    }

    /// Where `key` of `t` lives now, given that the new map puts it on `new`.
    pub fn resolve(&self, t: &Sharded, key: &KeyValue, new: usize) -> Located {
        let Some(old_rule) = self.old_rules.get(&t.name) else {
            return Located::Shard(new);
        };
        let old = match old_rule.locate(self.old.ring(), key, false) {
            Located::Shard(o) => o,
            _ => return Located::Shard(new),
        };
        if old == new {
            return Located::Shard(new);
        }
        let switched = self
            .units
            .iter()
            .find(|u| {
                u.group == t.group && u.src == old && u.dst == new && in_part(key, u.part, u.parts)
            })
            .is_some_and(Unit::is_switched);
        Located::Shard(if switched { new } else { old })
    }

    /// Marks the unit named `name` switched; false when there is no such unit.
    pub fn switch(&self, name: &str) -> bool {
        match self.units.iter().find(|u| u.name == name) {
            Some(u) => {
                u.switched.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The planned units.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// The old map (merged shard list).
    pub fn old_map(&self) -> &ShardMap {
        &self.old
    }
}
