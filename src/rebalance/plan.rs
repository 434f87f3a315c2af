//! What a rebalance moves: the co-location groups, the units and the rows counted per unit.
//!
//! A unit is the keys of one co-location group whose owner changes from shard `src` to shard
//! `dst`. Which pairs can occur follows from the maps alone (ring segments whose owner
//! changes, range intervals whose shard changes; for geo every pair of shards); how many rows
//! each unit holds is counted on the shards by reading every key once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::Client;

use super::RebalanceError;
use crate::sharding::keys::{key_from_binary, KeyValue};
use crate::sharding::shardmap::transition::group_label;
use crate::sharding::shardmap::{ShardMap, TableRule};
use crate::sharding::strategy::{Located, Sharded, Strategy};
use crate::wire::copybin::TupleReader;

/// The tables of one co-location group (rules of the new map).
#[derive(Debug, Clone)]
pub struct Group {
    /// Tables joined by `+`, e.g. `users+orders`.
    pub label: String,
    /// Group id in the new map.
    pub id: u32,
    /// Its tables.
    pub tables: Vec<Arc<Sharded>>,
}

/// A planned unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedUnit {
    /// Group label.
    pub group: String,
    /// Source shard index (merged list).
    pub src: usize,
    /// Target shard index.
    pub dst: usize,
}

/// The rows that move, counted on the shards.
#[derive(Debug, Default)]
pub struct Counts {
    /// (table, src, dst) -> rows.
    pub moves: BTreeMap<(String, usize, usize), u64>,
    /// Rows of the groups' tables on all shards.
    pub total: u64,
    /// Rows found on a shard the old map does not place them on (left where they are).
    pub misplaced: u64,
}

/// The groups whose placement the maps decide (hash, range, geo; directory tables move by
/// directory entry instead).
pub fn groups(new: &ShardMap) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for t in new.sharded_tables() {
        if matches!(t.strategy, Strategy::Directory(_)) {
            continue;
        }
        match out.iter_mut().find(|g| g.id == t.group) {
            Some(g) => g.tables.push(t.clone()),
            None => out.push(Group {
                label: group_label(new, t.group),
                id: t.group,
                tables: vec![t.clone()],
            }),
        }
    }
    out
}

/// Refuses map pairs a rebalance cannot carry out: tables must keep their kind, key and key
/// type, and directory tables must stay directory tables.
pub fn validate(old: &ShardMap, new: &ShardMap) -> Result<(), RebalanceError> {
    let refuse = |m: String| Err(RebalanceError::Maps(m));
    let (od, nd) = (
        &old.shards[old.default_shard].name,
        &new.shards[new.default_shard].name,
    );
    if od != nd || new.shards[new.default_shard].weight == 0 {
        return refuse(format!(
            "the default shard changes from {od} to {nd}: unlisted tables, the two-phase-commit log and the rebalance's own control tables live there; keep {od} in the new map as default_shard (moving unlisted tables is not a rebalance)"
        ));
    }
    for (name, rule) in new.tables() {
        let before = old.tables().find(|(n, _)| *n == name).map(|(_, r)| r);
        match (before, rule) {
            (None, _) => {
                return refuse(format!(
                    "table {name} is in the new map but not the old one; add it to both maps first (a rebalance moves rows, it does not shard a table)"
                ))
            }
            (Some(TableRule::Reference), TableRule::Reference) => {}
            (Some(TableRule::Sharded(a)), TableRule::Sharded(b)) => {
                if a.key != b.key || a.key_type != b.key_type {
                    return refuse(format!(
                        "table {name}: the key changes from {} {} to {} {}; a rebalance keeps the key",
                        a.key,
                        a.key_type.pg_name(),
                        b.key,
                        b.key_type.pg_name()
                    ));
                }
                let dir = |t: &Sharded| matches!(t.strategy, Strategy::Directory(_));
                if dir(a) != dir(b) {
                    return refuse(format!(
                        "table {name}: moving between the directory strategy and another one is not supported"
                    ));
                }
            }
            _ => {
                return refuse(format!(
                    "table {name} changes between reference and sharded; that is not a rebalance"
                ))
            }
        }
    }
    if let Some((name, _)) = old
        .tables()
        .find(|(n, _)| !new.tables().any(|(m, _)| m == *n))
    {
        return refuse(format!(
            "table {name} is in the old map but not the new one; keep it in both"
        ));
    }
    Ok(())
}

/// Where `key` of `t` lives according to `map` (no transition overlay).
pub fn owner(map: &ShardMap, t: &Sharded, key: &KeyValue) -> Option<usize> {
    match t.locate(map.ring(), key, false) {
        Located::Shard(s) => Some(s),
        _ => None,
    }
}

/// The old map's rule for table `name`.
pub fn old_rule(old: &ShardMap, name: &str) -> Option<Arc<Sharded>> {
    old.sharded_tables().find(|t| t.name == name).cloned()
}

/// Every (src, dst) pair the maps can move keys of `g` between.
pub fn pairs(old: &ShardMap, new: &ShardMap, g: &Group) -> BTreeSet<(usize, usize)> {
    let mut out = BTreeSet::new();
    let Some(t) = g.tables.first() else {
        return out;
    };
    let Some(o) = old_rule(old, &t.name) else {
        return out;
    };
    match (&o.strategy, &t.strategy) {
        (Strategy::Hash, Strategy::Hash) => {
            for &tok in old.ring().tokens().iter().chain(new.ring().tokens()) {
                let (a, b) = (
                    old.ring().locate(tok) as usize,
                    new.ring().locate(tok) as usize,
                );
                if a != b {
                    out.insert((a, b));
                }
            }
        }
        (Strategy::Range(a), Strategy::Range(b)) => {
            let first =
                |r: &crate::sharding::strategy::RangeRule| r.bounds.first().map(|x| x.1).or(r.rest);
            if let (Some(x), Some(y)) = (first(a), first(b)) {
                if x != y {
                    out.insert((x, y));
                }
            }
            for (v, _) in a.bounds.iter().chain(&b.bounds) {
                if let (Some(x), Some(y)) = (a.locate(v), b.locate(v)) {
                    if x != y {
                        out.insert((x, y));
                    }
                }
            }
        }
        _ => {
            let active = |m: &ShardMap| -> Vec<usize> {
                (0..m.shards.len())
                    .filter(|&i| m.shards[i].weight > 0)
                    .collect()
            };
            for &a in &active(old) {
                for &b in &active(new) {
                    if a != b {
                        out.insert((a, b));
                    }
                }
            }
        }
    }
    out
}

/// The position of column `col` in table `table` on a shard (0-based), and the column list.
pub async fn columns(c: &Client, table: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Counts, on shard `shard`, the rows of `t` by new owner: calls `each(key, new_owner)`
/// for every row (the key decoded from a binary COPY of the key column alone).
pub async fn scan_keys(
    c: &Client,
    t: &Sharded,
    mut each: impl FnMut(&KeyValue),
) -> Result<(), RebalanceError> {
    let sql = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
        crate::quote::ident(&t.key),
        crate::quote::qualified(&t.name)
    );
    let stream = c.copy_out(&sql).await?;
    pin_mut!(stream);
    let mut reader = TupleReader::new();
    while let Some(chunk) = stream.try_next().await? {
        reader.push(&chunk);
        while let Some(tuple) = reader.next_tuple()? {
            if let Some(Some(b)) = tuple.field(0) {
                let k = key_from_binary(t.key_type, b).map_err(|e| {
                    RebalanceError::Data(format!("{}: undecodable key: {e}", t.what()))
                })?;
                each(&k);
            }
        }
    }
    reader.finish()?;
    Ok(())
}

/// Counts the rows of every group's tables on every shard by (src, dst).
pub async fn count(
    old: &ShardMap,
    new: &ShardMap,
    groups: &[Group],
    clients: &[Client],
) -> Result<Counts, RebalanceError> {
    let mut counts = Counts::default();
    for g in groups {
        for t in &g.tables {
            let Some(o) = old_rule(old, &t.name) else {
                continue;
            };
            for (s, c) in clients.iter().enumerate() {
                if !table_exists(c, &t.name).await? {
                    continue;
                }
                let mut local: BTreeMap<usize, u64> = BTreeMap::new();
                let mut misplaced = 0u64;
                let mut total = 0u64;
                scan_keys(c, t, |k| {
                    total += 1;
                    if owner(old, &o, k) != Some(s) {
                        misplaced += 1;
                        return;
                    }
                    if let Some(d) = owner(new, t, k) {
                        if d != s {
                            *local.entry(d).or_default() += 1;
                        }
                    }
                })
                .await?;
                counts.total += total;
                counts.misplaced += misplaced;
                for (d, n) in local {
                    *counts.moves.entry((t.name.clone(), s, d)).or_default() += n;
                }
            }
        }
    }
    Ok(counts)
}

/// Whether `table` exists on the shard.
pub async fn table_exists(c: &Client, table: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT to_regclass($1) IS NOT NULL",
        &[&crate::quote::qualified(table)],
    )
    .await?
    .get(0))
}
