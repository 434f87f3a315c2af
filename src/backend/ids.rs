//! Values for generated columns that are unique across shards ([`IdAllocator`]).
//!
//! Each sequence the catalog ties to a sharded or reference table's column gets one
//! allocator row in [`SEQ_TABLE`] on the default shard (durable, like the 2PC log and the
//! directory). A proxy reserves a block of [`BLOCK`] values from it in one statement (an
//! `INSERT … ON CONFLICT DO UPDATE` that moves `next_value` on and returns the old one), then
//! hands them out from memory. So values are 64-bit, increasing per proxy, and never reused:
//! not by another proxy (each holds its own blocks), not after a restart (a reserved block
//! is never handed out again; the rest of it is skipped), not after a rebalance (the rows
//! keep their values and the row does not move).
//!
//! The first reservation of a sequence by a process also raises `next_value` above every
//! value already on the shards: the column's largest value and the shard sequence's own
//! last value, on every shard (so a proxy started on existing data never reissues an id).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ProxyError;
use crate::quote::{ident, literal};
use crate::sharding::catalog::GenColumn;
use crate::sharding::shardmap::ShardMap;

/// The allocator table (on the default shard).
pub const SEQ_TABLE: &str = "shardwire.shardwire_sequences";

/// Values reserved per round trip to the allocator table.
pub const BLOCK: i64 = 1000;

/// Hands out values of generated columns (see the module docs). One per proxy process.
#[derive(Default)]
pub struct IdAllocator {
    /// By sequence name (foldhash: hashed on every INSERT that takes values).
    seqs: parking_lot::Mutex<HashMap<String, Arc<SeqState>, foldhash::fast::RandomState>>,
    /// The control connection to the default shard (opened on first use, reopened after
    /// an error).
    control: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

/// One sequence's block in this process.
#[derive(Default)]
struct SeqState {
    /// Next value to hand out, and the end of the block (exclusive).
    block: parking_lot::Mutex<(i64, i64)>,
    /// Held while a block is reserved; `true` once the floor (existing values) was applied.
    reserving: tokio::sync::Mutex<bool>,
    /// Blocks reserved by this process (for the admin console).
    blocks: std::sync::atomic::AtomicU64,
}

/// One sequence's state in this process, for the admin console and `shardwire check`.
#[derive(Debug, Clone)]
pub struct SeqSummary {
    /// The sequence.
    pub sequence: String,
    /// The next value this proxy hands out, and the end of its block (exclusive).
    pub next: i64,
    /// End of the block this proxy holds (exclusive).
    pub end: i64,
    /// Blocks this proxy reserved.
    pub blocks: u64,
}

/// Where a generated column lives: its table (`schema.rel` as the map names it) and column.
pub struct GenTarget<'a> {
    /// Schema ("" for unqualified).
    pub schema: &'a str,
    /// Table name.
    pub table: &'a str,
    /// The column and its sequence.
    pub column: &'a GenColumn,
}

impl IdAllocator {
    fn state(&self, sequence: &str) -> Arc<SeqState> {
        let mut m = self.seqs.lock();
        if let Some(s) = m.get(sequence) {
            return s.clone();
        }
        let s = Arc::new(SeqState::default());
        m.insert(sequence.to_string(), s.clone());
        s
    }

    /// `n` fresh values of `target`'s sequence, appended to `out` (in increasing order);
    /// reserves blocks from the allocator table as needed.
    pub async fn take(
        &self,
        map: &ShardMap,
        target: &GenTarget<'_>,
        n: usize,
        out: &mut Vec<i64>,
    ) -> Result<(), ProxyError> {
        let st = self.state(&target.column.sequence);
        let mut need = n;
        loop {
            {
                let mut b = st.block.lock();
                while need > 0 && b.0 < b.1 {
                    out.push(b.0);
                    b.0 += 1;
                    need -= 1;
                }
            }
            if need == 0 {
                return Ok(());
            }
            let mut floored = st.reserving.lock().await;
            let refilled = {
                let b = st.block.lock();
                b.0 < b.1
            };
            if refilled {
                continue; // another session reserved a block meanwhile
            }
            let size = BLOCK.max(need as i64);
            let floor = if *floored {
                None
            } else {
                Some(existing_max(map, target).await? + 1)
            };
            let start = self
                .reserve(map, &target.column.sequence, floor, size)
                .await?;
            *floored = true;
            *st.block.lock() = (start, start.saturating_add(size));
            st.blocks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(sequence = %target.column.sequence, start, size, "reserved a block of generated values");
        }
    }

    /// Reserves `size` values of `sequence`, not below `floor`; returns the first.
    async fn reserve(
        &self,
        map: &ShardMap,
        sequence: &str,
        floor: Option<i64>,
        size: i64,
    ) -> Result<i64, ProxyError> {
        let timeout = map.pool.connect_timeout.max(Duration::from_secs(1));
        let mut control = self.control.lock().await;
        let mut last_err = String::new();
        for _attempt in 0..2 {
            if control.as_ref().is_none_or(|c| c.is_closed()) {
                *control = Some(open(map, timeout).await?);
            }
            let Some(c) = control.as_ref() else { continue };
            let sql = format!(
                "INSERT INTO {SEQ_TABLE} AS s (name, next_value) VALUES ($1, $2::int8 + $3::int8) \
                 ON CONFLICT (name) DO UPDATE SET next_value = greatest(s.next_value, $2::int8) + $3::int8, updated_at = now() \
                 RETURNING next_value - $3::int8"
            );
            let floor = floor.unwrap_or(1);
            match tokio::time::timeout(timeout, c.query_one(&sql, &[&sequence, &floor, &size]))
                .await
            {
                Ok(Ok(row)) => {
                    return row
                        .try_get::<_, i64>(0)
                        .map_err(|e| ProxyError::Internal(format!("allocator row: {e}")))
                }
                Ok(Err(e)) => last_err = pg_error(&e),
                Err(_) => last_err = "timed out".into(),
            }
            *control = None;
        }
        Err(unavailable(map, &last_err))
    }

    /// The allocator table's rows (sequence, next value to reserve): what every proxy
    /// shares. Empty when the table does not exist yet.
    pub async fn stored(&self, map: &ShardMap) -> Result<Vec<(String, i64)>, ProxyError> {
        let timeout = map.pool.connect_timeout.max(Duration::from_secs(1));
        let mut control = self.control.lock().await;
        if control.as_ref().is_none_or(|c| c.is_closed()) {
            *control = Some(open(map, timeout).await?);
        }
        let Some(c) = control.as_ref() else {
            return Ok(Vec::new());
        };
        let sql = format!("SELECT name, next_value FROM {SEQ_TABLE} ORDER BY name");
        let rows = tokio::time::timeout(timeout, c.query(&sql, &[]))
            .await
            .map_err(|_| unavailable(map, "timed out"))?
            .map_err(|e| unavailable(map, &pg_error(&e)))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| ProxyError::Internal(format!("allocator rows: {e}")))
    }

    /// Each sequence this proxy used, with its block.
    pub fn summary(&self) -> Vec<SeqSummary> {
        let mut v: Vec<SeqSummary> = self
            .seqs
            .lock()
            .iter()
            .map(|(name, s)| {
                let (next, end) = *s.block.lock();
                SeqSummary {
                    sequence: name.clone(),
                    next,
                    end,
                    blocks: s.blocks.load(std::sync::atomic::Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by(|a, b| a.sequence.cmp(&b.sequence));
        v
    }
}

fn unavailable(map: &ShardMap, why: &str) -> ProxyError {
    ProxyError::ShardUnavailable {
        shard: map.shards[map.default_shard].name.clone(),
        reason: format!("could not reserve generated values (allocator table {SEQ_TABLE}): {why}"),
    }
}

/// Opens the control connection to the default shard and makes sure the table exists.
async fn open(map: &ShardMap, timeout: Duration) -> Result<tokio_postgres::Client, ProxyError> {
    let c = map.shards[map.default_shard]
        .connect_control(timeout)
        .await
        .map_err(|e| unavailable(map, &e.to_string()))?;
    crate::sharding::control_schema::prepare(&c)
        .await
        .map_err(|e| unavailable(map, &pg_error(&e)))?;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {SEQ_TABLE} (name text PRIMARY KEY, next_value bigint NOT NULL, \
         updated_at timestamptz NOT NULL DEFAULT now())"
    );
    // Two proxies creating it at once: one gets a unique violation on the catalog; the
    // table exists then.
    if let Err(e) = c.batch_execute(&create).await {
        if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return Err(unavailable(map, &pg_error(&e)));
        }
    }
    Ok(c)
}

/// The largest value of the column, and of the shard sequence's own last value, on any
/// shard (0 when none).
async fn existing_max(map: &ShardMap, target: &GenTarget<'_>) -> Result<i64, ProxyError> {
    let table = if target.schema.is_empty() {
        ident(target.table)
    } else {
        format!("{}.{}", ident(target.schema), ident(target.table))
    };
    let sql = format!(
        "SELECT greatest(coalesce((SELECT max({col})::int8 FROM {table}), 0), \
                coalesce(pg_sequence_last_value({seq}::regclass), 0))",
        col = ident(&target.column.name),
        seq = literal(&target.column.sequence),
    );
    let timeout = map.pool.connect_timeout.max(Duration::from_secs(1));
    let reads = map.shards.iter().map(|s| {
        let sql = sql.as_str();
        async move {
            let c = s
                .connect_control(timeout)
                .await
                .map_err(|e| format!("shard {}: {e}", s.name))?;
            let row = match tokio::time::timeout(timeout * 4, c.query_one(sql, &[]))
                .await
                .map_err(|_| format!("shard {}: timed out", s.name))?
            {
                Ok(row) => row,
                // A table (or sequence) created in a transaction not committed yet: it
                // holds no committed rows, and its sequence is new.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    return Ok(0)
                }
                Err(e) => return Err(format!("shard {}: {}", s.name, pg_error(&e))),
            };
            row.try_get::<_, i64>(0)
                .map_err(|e| format!("shard {}: {e}", s.name))
        }
    });
    let mut max = 0;
    for r in futures::future::join_all(reads).await {
        max = max.max(r.map_err(|e| unavailable(map, &e))?);
    }
    Ok(max)
}

/// A tokio-postgres error with the server's message when there is one ("db error" alone
/// says nothing).
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}
