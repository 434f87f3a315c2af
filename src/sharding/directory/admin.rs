//! Directory changes made from the admin console: assign a key, move a key with its rows.
//!
//! A move copies the key's rows of every directory table from the source shard to the
//! target, switches the entry, and deletes the rows from the source:
//!
//! 1. this proxy holds new statements on directory tables back ([`Directory::begin_move`])
//!    and waits [`GRACE`] so statements already routed reach their shard;
//! 2. on the source, one transaction takes `SHARE ROW EXCLUSIVE` locks on every directory
//!    table: it waits for transactions that already wrote there to commit (their rows are
//!    then copied) and blocks new writes until the move commits;
//! 3. the rows are streamed with binary `COPY` into the target in one transaction, the
//!    row counts compared, and the target committed;
//! 4. the entry is switched (with `pg_notify`, so other proxies reload it), the rows are
//!    deleted from the source and the source transaction commits;
//! 5. after [`GRACE`] the source is checked once more: a write another proxy routed before
//!    it saw the switch (blocked by the lock, then applied) is moved the same way.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;

use super::{Directory, DirectoryError, Lookup, CHANNEL, MOVE_ANNOUNCE};
use crate::sharding::keys::key_from_text;
use crate::sharding::shardmap::ShardMap;
use crate::sharding::strategy::{Fallback, Sharded, Strategy};

/// How long a move waits for statements already routed, before locking and after switching.
pub const GRACE: Duration = Duration::from_millis(300);

/// Rows moved per table.
#[derive(Debug, Default)]
pub struct MoveReport {
    /// (table, rows moved), in map order.
    pub tables: Vec<(String, u64)>,
    /// The shard the rows came from.
    pub from: String,
}

fn directory_tables(map: &ShardMap) -> Vec<Arc<Sharded>> {
    map.sharded_tables()
        .filter(|t| matches!(t.strategy, Strategy::Directory(_)))
        .cloned()
        .collect()
}

async fn connect(map: &ShardMap, shard: usize) -> Result<Client, DirectoryError> {
    let info = &map.shards[shard];
    info.connect_control(map.pool.connect_timeout)
        .await
        .map_err(|e| db_err(map, shard, e))
}

fn db_err(map: &ShardMap, shard: usize, source: tokio_postgres::Error) -> DirectoryError {
    DirectoryError::Db {
        table: map
            .directory
            .as_ref()
            .map(|d| d.table.clone())
            .unwrap_or_default(),
        shard: map.shards[shard].name.clone(),
        message: match source.as_db_error() {
            Some(d) => format!("{} ({})", d.message(), d.code().code()),
            None => source.to_string(),
        },
    }
}

/// The directory, or a refusal when the map has no directory tables.
fn dir_of(map: &ShardMap) -> Result<&Arc<Directory>, DirectoryError> {
    map.directory
        .as_ref()
        .ok_or_else(|| DirectoryError::Refused("the shard map has no directory tables".into()))
}

/// `key = <literal>` for a table's key column, or a refusal when `key` does not fit its type.
fn key_predicate(t: &Sharded, key: &str) -> Result<String, DirectoryError> {
    let v = key_from_text(t.key_type, key)
        .map_err(|e| DirectoryError::Refused(format!("{}: {e}", t.what())))?;
    Ok(format!(
        "{} = {}",
        crate::quote::ident(&t.key),
        v.sql_literal()
    ))
}

/// Where `key` lives now: its entry, else the fallback of the first directory table.
fn current_shard(
    map: &ShardMap,
    dir: &Directory,
    tables: &[Arc<Sharded>],
    key: &str,
) -> Option<usize> {
    let first = tables.first()?;
    let v = key_from_text(first.key_type, key).ok()?;
    match dir.get(&v) {
        Lookup::Entry(s) => Some(s),
        Lookup::NotLoaded => None,
        Lookup::Missing => match &first.strategy {
            Strategy::Directory(d) => match d.fallback {
                Fallback::Hash => Some(map.ring().locate(v.hash64()) as usize),
                Fallback::Shard(s) => Some(s),
                Fallback::Reject => None,
            },
            _ => None,
        },
    }
}

/// Sends a directory notification.
async fn announce(c: &Client, payload: &str) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map(|_| ())
}

/// Writes an entry (and the shard a move still has to delete from, if any) and announces it.
async fn write_entry(
    c: &Client,
    dir: &Directory,
    key: &str,
    shard: &str,
    moving_from: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let t = crate::quote::qualified(&dir.table);
    c.execute(
        &format!(
            "WITH up AS (INSERT INTO {t} (key, shard, moving_from) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE \
             SET shard = EXCLUDED.shard, moving_from = EXCLUDED.moving_from, updated_at = now() RETURNING key) \
             SELECT pg_notify('{CHANNEL}', key) FROM up"
        ),
        &[&key, &shard, &moving_from],
    )
    .await?;
    Ok(())
}

/// Assigns `key` (which has no entry yet) to `shard`. Refused when the key already has an
/// entry on another shard, or rows where its fallback put them (use [`move_key`]).
pub async fn assign(map: &ShardMap, key: &str, shard: usize) -> Result<(), DirectoryError> {
    let dir = dir_of(map)?;
    let tables = directory_tables(map);
    let target = map.shards[shard].name.clone();
    for t in &tables {
        key_predicate(t, key)?;
    }
    let dc = connect(map, dir.shard).await?;
    let existing = dc
        .query_opt(
            &format!(
                "SELECT shard FROM {} WHERE key = $1",
                crate::quote::qualified(&dir.table)
            ),
            &[&key],
        )
        .await
        .map_err(|e| db_err(map, dir.shard, e))?;
    if let Some(row) = existing {
        let s: String = row.get(0);
        if s == target {
            return Ok(());
        }
        return Err(DirectoryError::Refused(format!(
            "key '{key}' is already assigned to shard {s}; use DIRECTORY MOVE '{key}' TO {target} to move it with its rows"
        )));
    }
    // Rows already written under the fallback placement would be stranded.
    if let Some(cur) = current_shard(map, dir, &tables, key).filter(|c| *c != shard) {
        let c = connect(map, cur).await?;
        for t in &tables {
            let sql = format!(
                "SELECT 1 FROM {} WHERE {} LIMIT 1",
                crate::quote::qualified(&t.name),
                key_predicate(t, key)?
            );
            if !c
                .query(&sql, &[])
                .await
                .map_err(|e| db_err(map, cur, e))?
                .is_empty()
            {
                return Err(DirectoryError::Refused(format!(
                    "key '{key}' already has rows in {} on shard {}; use DIRECTORY MOVE '{key}' TO {target} to move them",
                    t.name, map.shards[cur].name
                )));
            }
        }
    }
    write_entry(&dc, dir, key, &target, None)
        .await
        .map_err(|e| db_err(map, dir.shard, e))?;
    dir.set(key, Some(shard));
    Ok(())
}

/// Moves `key` and its rows in every directory table to `target` (see the module docs).
pub async fn move_key(
    map: &ShardMap,
    key: &str,
    target: usize,
) -> Result<MoveReport, DirectoryError> {
    let dir = dir_of(map)?;
    let tables = directory_tables(map);
    let preds: Vec<String> = tables
        .iter()
        .map(|t| key_predicate(t, key))
        .collect::<Result<_, _>>()?;
    let Some(source) = current_shard(map, dir, &tables, key) else {
        return Err(DirectoryError::Refused(format!(
            "key '{key}' has no directory entry (and its tables' fallback is reject); use DIRECTORY ASSIGN"
        )));
    };
    let mut report = MoveReport {
        from: map.shards[source].name.clone(),
        tables: tables.iter().map(|t| (t.name.clone(), 0)).collect(),
    };
    let dc = connect(map, dir.shard).await?;
    let target_name = map.shards[target].name.clone();
    // A move that crashed after switching the entry left rows on the old shard.
    let unfinished: Option<String> = dc
        .query_opt(
            &format!(
                "SELECT moving_from FROM {} WHERE key = $1 AND moving_from IS NOT NULL",
                crate::quote::qualified(&dir.table)
            ),
            &[&key],
        )
        .await
        .map_err(|e| db_err(map, dir.shard, e))?
        .map(|r| r.get(0));
    if source == target {
        if let Some(from) = unfinished.as_deref().and_then(|f| map.shard_index(f)) {
            let src = connect(map, from).await?;
            src.batch_execute("BEGIN")
                .await
                .map_err(|e| db_err(map, from, e))?;
            delete_and_commit(map, &tables, &preds, (&src, from)).await?;
            report.from = map.shards[from].name.clone();
        }
        write_entry(&dc, dir, key, &target_name, None)
            .await
            .map_err(|e| db_err(map, dir.shard, e))?;
        dir.set(key, Some(target));
        return Ok(report);
    }
    let src = connect(map, source).await?;
    let dst = connect(map, target).await?;
    {
        let _guard = dir.begin_move();
        // Other proxies hold their statements back too until the entry switches.
        announce(&dc, &format!("{MOVE_ANNOUNCE}{key}"))
            .await
            .map_err(|e| db_err(map, dir.shard, e))?;
        tokio::time::sleep(GRACE).await;
        let copied = copy_rows(
            map,
            &tables,
            &preds,
            (&src, source),
            (&dst, target),
            true,
            &mut report,
        )
        .await;
        if let Err(e) = copied {
            // Release the other proxies' hold (the entry is unchanged).
            let _ = announce(&dc, key).await;
            return Err(e);
        }
        // Switch, then delete: a reader never finds the key on neither shard.
        write_entry(&dc, dir, key, &target_name, Some(&report.from))
            .await
            .map_err(|e| db_err(map, dir.shard, e))?;
        dir.set(key, Some(target));
        delete_and_commit(map, &tables, &preds, (&src, source)).await?;
    }
    // Stragglers: writes routed to the source before the switch was seen elsewhere.
    tokio::time::sleep(GRACE).await;
    let mut late = MoveReport {
        tables: report.tables.iter().map(|(t, _)| (t.clone(), 0)).collect(),
        ..Default::default()
    };
    copy_rows(
        map,
        &tables,
        &preds,
        (&src, source),
        (&dst, target),
        false,
        &mut late,
    )
    .await?;
    delete_and_commit(map, &tables, &preds, (&src, source)).await?;
    for (r, l) in report.tables.iter_mut().zip(late.tables) {
        r.1 += l.1;
    }
    write_entry(&dc, dir, key, &target_name, None)
        .await
        .map_err(|e| db_err(map, dir.shard, e))?;
    Ok(report)
}

/// Opens the source transaction with its locks and copies the rows into a committed target
/// transaction, checking counts. The source transaction stays open. `clear_target` first
/// deletes the key's rows on the target (left by an interrupted move; never after the switch,
/// when the target takes new writes).
async fn copy_rows(
    map: &ShardMap,
    tables: &[Arc<Sharded>],
    preds: &[String],
    (src, source): (&Client, usize),
    (dst, target): (&Client, usize),
    clear_target: bool,
    report: &mut MoveReport,
) -> Result<(), DirectoryError> {
    let names: Vec<String> = tables
        .iter()
        .map(|t| crate::quote::qualified(&t.name))
        .collect();
    src.batch_execute(&format!(
        "BEGIN; SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        names.join(", ")
    ))
    .await
    .map_err(|e| db_err(map, source, e))?;
    // The target holds no rows of a key that lives elsewhere, except what an interrupted
    // move copied: clearing them first makes running the move again safe.
    let mut clear = String::from("BEGIN;");
    if clear_target {
        for (name, pred) in names.iter().zip(preds) {
            clear.push_str(&format!("DELETE FROM {name} WHERE {pred};"));
        }
    }
    dst.batch_execute(&clear)
        .await
        .map_err(|e| db_err(map, target, e))?;
    let result = async {
        for (i, (name, pred)) in names.iter().zip(preds).enumerate() {
            let n: i64 = src
                .query_one(&format!("SELECT count(*) FROM {name} WHERE {pred}"), &[])
                .await
                .map_err(|e| db_err(map, source, e))?
                .get(0);
            if n == 0 {
                continue;
            }
            let out = src
                .copy_out(&format!(
                    "COPY (SELECT * FROM {name} WHERE {pred}) TO STDOUT (FORMAT binary)"
                ))
                .await
                .map_err(|e| db_err(map, source, e))?;
            let sink = dst
                .copy_in(&format!("COPY {name} FROM STDIN (FORMAT binary)"))
                .await
                .map_err(|e| db_err(map, target, e))?;
            futures::pin_mut!(out);
            futures::pin_mut!(sink);
            while let Some(chunk) = out.next().await {
                let chunk = chunk.map_err(|e| db_err(map, source, e))?;
                sink.send(chunk).await.map_err(|e| db_err(map, target, e))?;
            }
            let copied = sink.finish().await.map_err(|e| db_err(map, target, e))?;
            if copied != n as u64 {
                return Err(DirectoryError::Refused(format!(
                    "{name}: copied {copied} rows but the source holds {n}; nothing was changed"
                )));
            }
            report.tables[i].1 += copied;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            dst.batch_execute("COMMIT")
                .await
                .map_err(|e| db_err(map, target, e))?;
            Ok(())
        }
        Err(e) => {
            let _ = dst.batch_execute("ROLLBACK").await;
            let _ = src.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Deletes the key's rows in the open source transaction and commits it.
async fn delete_and_commit(
    map: &ShardMap,
    tables: &[Arc<Sharded>],
    preds: &[String],
    (src, source): (&Client, usize),
) -> Result<(), DirectoryError> {
    let mut sql = String::new();
    for (t, pred) in tables.iter().zip(preds) {
        sql.push_str(&format!(
            "DELETE FROM {} WHERE {pred};",
            crate::quote::qualified(&t.name)
        ));
    }
    sql.push_str("COMMIT");
    src.batch_execute(&sql)
        .await
        .map_err(|e| db_err(map, source, e))
}
