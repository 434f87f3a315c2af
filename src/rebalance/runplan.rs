//! The plan of one run, counted: row units per shard pair, reference tables to copy and
//! directory keys to move; printed for the user and checked against the target shards
//! before anything is recorded.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::plan::{self, Group};
use super::RebalanceError;
use crate::sharding::shardmap::{ShardMap, TableRule};

/// Most parts one pair is cut into.
const MAX_PARTS: u64 = 64;

/// A directory key whose static entry moves it.
#[derive(Debug, Clone)]
pub(super) struct DirMove {
    /// Rows of the directory tables on every shard (the same for every move).
    all_rows: u64,
    pub(super) key: String,
    pub(super) src: usize,
    pub(super) dst: usize,
    /// Rows per directory table.
    pub(super) rows: Vec<(String, u64)>,
}

/// The plan, counted.
pub(super) struct Plan {
    pub(super) groups: Vec<Group>,
    pub(super) counts: plan::Counts,
    /// (group label, src, dst, parts), in execution order.
    pub(super) row_units: Vec<(String, usize, usize, u32)>,
    /// (reference table, src, dst, rows).
    pub(super) reference: Vec<(String, usize, usize, u64)>,
    pub(super) directory: Vec<DirMove>,
}

/// Counts everything that moves.
pub(super) async fn make_plan(
    old: &ShardMap,
    new: &ShardMap,
    clients: &[Client],
    unit_rows: u64,
) -> Result<Plan, RebalanceError> {
    let groups = plan::groups(new);
    let counts = plan::count(old, new, &groups, clients).await?;
    let mut row_units = Vec::new();
    for g in &groups {
        let mut pairs = plan::pairs(old, new, g);
        for (t, s, d) in counts.moves.keys() {
            if g.tables.iter().any(|x| x.name == *t) {
                pairs.insert((*s, *d));
            }
        }
        for (s, d) in pairs {
            let rows: u64 = counts
                .moves
                .iter()
                .filter(|((t, a, b), _)| {
                    *a == s && *b == d && g.tables.iter().any(|x| x.name == *t)
                })
                .map(|(_, n)| *n)
                .sum();
            let parts = rows.div_ceil(unit_rows).clamp(1, MAX_PARTS) as u32;
            row_units.push((g.label.clone(), s, d, parts));
        }
    }
    let mut reference = Vec::new();
    let added: Vec<usize> = (0..new.shards.len())
        .filter(|&i| old.shards[i].weight == 0 && new.shards[i].weight > 0)
        .collect();
    for (name, rule) in new.tables() {
        if matches!(rule, TableRule::Reference) {
            for &d in &added {
                let src = old.default_shard;
                let rows: i64 = clients[src]
                    .query_one(
                        &format!("SELECT count(*) FROM {}", crate::quote::qualified(name)),
                        &[],
                    )
                    .await?
                    .get(0);
                reference.push((name.to_owned(), src, d, rows as u64));
            }
        }
    }
    let directory = directory_moves(new, clients).await?;
    Ok(Plan {
        groups,
        counts,
        row_units,
        reference,
        directory,
    })
}

/// Directory keys whose static entry in the new map differs from the directory table.
async fn directory_moves(
    new: &ShardMap,
    clients: &[Client],
) -> Result<Vec<DirMove>, RebalanceError> {
    let Some(dir) = &new.directory else {
        return Ok(Vec::new());
    };
    let c = &clients[dir.shard];
    if !plan::table_exists(c, &dir.table).await? {
        return Ok(Vec::new());
    }
    let live: BTreeMap<String, String> = crate::sharding::directory::entries(c, dir)
        .await?
        .into_iter()
        .collect();
    let tables: Vec<_> = new
        .sharded_tables()
        .filter(|t| t.directory().is_some())
        .cloned()
        .collect();
    let mut all_rows = 0u64;
    for t in &tables {
        for c in clients {
            if plan::table_exists(c, &t.name).await? {
                let n: i64 = c
                    .query_one(
                        &format!("SELECT count(*) FROM {}", crate::quote::qualified(&t.name)),
                        &[],
                    )
                    .await?
                    .get(0);
                all_rows += n as u64;
            }
        }
    }
    let mut out = Vec::new();
    for (key, dst) in &dir.statics {
        let Some(src) = live.get(key).and_then(|s| new.shard_index(s)) else {
            continue;
        };
        if src == *dst {
            continue;
        }
        let mut counts = Vec::new();
        for t in &tables {
            let n: i64 = clients[src]
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {} WHERE {}::text = $1",
                        crate::quote::qualified(&t.name),
                        crate::quote::ident(&t.key)
                    ),
                    &[key],
                )
                .await?
                .get(0);
            counts.push((t.name.clone(), n as u64));
        }
        out.push(DirMove {
            all_rows,
            key: key.clone(),
            src,
            dst: *dst,
            rows: counts,
        });
    }
    Ok(out)
}

/// Prints the plan on stdout: `move <table> <src> -> <dst> <rows>` lines, reference copies,
/// and `total <moving> of <rows>`.
pub(super) fn print_plan(new: &ShardMap, p: &Plan) {
    let name = |i: usize| new.shards[i].name.as_str();
    println!("rebalance plan (rows counted on the shards):");
    let mut moving = 0u64;
    for ((t, s, d), n) in &p.counts.moves {
        println!("move {t} {} -> {} {n}", name(*s), name(*d));
        moving += n;
    }
    for m in &p.directory {
        for (t, n) in &m.rows {
            println!("move {t} {} -> {} {n}", name(m.src), name(m.dst));
            moving += n;
        }
        println!("  (directory key '{}')", m.key);
    }
    for (t, s, d, n) in &p.reference {
        println!(
            "copy {t} {} -> {} {n} (reference table)",
            name(*s),
            name(*d)
        );
    }
    if p.counts.misplaced > 0 {
        println!(
            "warning: {} rows sit on a shard the old map does not place them on (rows an interrupted run already moved, or rows written around the proxy); they are left where they are",
            p.counts.misplaced
        );
    }
    let total = p.counts.total + p.directory.first().map_or(0, |m| m.all_rows);
    println!("total {moving} of {total}");
    println!(
        "units: {} row units ({} shard pairs), {} reference copies, {} directory keys",
        p.row_units.iter().map(|u| u.3 as usize).sum::<usize>(),
        p.row_units.len(),
        p.reference.len(),
        p.directory.len()
    );
}

/// Refuses, before anything is recorded, when a table is missing on a shard that is to
/// receive its rows (the command copies rows, not schemas).
pub(super) async fn check_targets(
    new: &ShardMap,
    p: &Plan,
    clients: &[Client],
) -> Result<(), RebalanceError> {
    let mut needed: Vec<(&str, usize)> = Vec::new();
    for (label, _, d, _) in &p.row_units {
        if let Some(g) = p.groups.iter().find(|g| &g.label == label) {
            needed.extend(g.tables.iter().map(|t| (t.name.as_str(), *d)));
        }
    }
    needed.extend(p.reference.iter().map(|(t, _, d, _)| (t.as_str(), *d)));
    for m in &p.directory {
        for (t, _) in &m.rows {
            needed.push((t.as_str(), m.dst));
        }
    }
    needed.sort_unstable();
    needed.dedup();
    for (table, d) in needed {
        if !plan::table_exists(&clients[d], table).await? {
            return Err(RebalanceError::Schema(format!(
                "table {table} does not exist on shard {}; create it there (empty, with the same columns) and run the command again",
                new.shards[d].name
            )));
        }
    }
    Ok(())
}
