//! Moving one unit: copy, catch up, hold, verify, switch, delete.
//!
//! 1. **Capture.** Before anything is copied, every source table carries a trigger that logs
//!    the key of every row written (`shardwire_rebalance_log`, see [`CAPTURE_SQL`]).
//! 2. **Copy.** A transaction on the target receives, by binary COPY, the rows of the source
//!    whose key belongs to the unit (the key is decoded from the stream; nothing else is).
//! 3. **Catch up.** The log is consumed (`DELETE … RETURNING`, so entries committed late are
//!    seen in a later round) and every logged key of the unit is copied again: deleted on the
//!    target, re-read from the source. A few rounds bring the target close.
//! 4. **Switch.** Every proxy holds statements and confirms its in-flight transactions are
//!    done; the source tables are locked (`SHARE ROW EXCLUSIVE`: no writes); the last log
//!    entries are applied; count and checksum of the unit's rows must match on both sides (a
//!    mismatch stops here and leaves the source untouched); the rows are deleted on the
//!    source; both transactions are prepared (two-phase commit); the unit is recorded
//!    `switched` in the control table — the commit point — and both are committed; then the
//!    proxies, which have flipped the unit's routing, are released.
//!
//! A rebalance killed at any point is finished by running it again: a unit recorded
//! `switched` has its prepared transactions committed, any other unit's are rolled back and
//! the unit starts over.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{pin_mut, SinkExt, TryStreamExt};
use tokio_postgres::Client;

use super::control;
use super::plan::{columns, old_rule, owner, Group};
use super::progress::Progress;
pub use super::statements::{connect, finish_prepared, pipe_copy, wait_acks};
use super::RebalanceError;
use crate::backend::twophase;
use crate::quote;
use crate::sharding::keys::{key_from_binary, key_from_text, KeyValue};
use crate::sharding::shardmap::transition::in_part;
use crate::sharding::shardmap::ShardMap;
use crate::sharding::strategy::Sharded;
use crate::wire::copybin::{TupleReader, HEADER, TRAILER};

/// The change-capture log and trigger function installed on source shards. The trigger's
/// `WHEN` clause skips the rebalance's own writes (copies, deletes) without calling the
/// function: its sessions set `shardwire.rebalance = 'mover'`.
///
/// The function is `SECURITY DEFINER` (it runs as the control role that created it, with a
/// fixed `search_path`): it fires on clients' writes, whose roles have no rights in schema
/// `shardwire`, and must log them all the same. So it must run no code a client wrote: it
/// reads only the key column, as its type's output function writes it (`format('%s')`:
/// output functions are C, which only a superuser can create), never through a cast, which
/// the owner of a type may define in SQL and which would then run as the control role
/// (`to_jsonb(NEW)` calls a column type's cast to json). `DateStyle` and `TimeZone` are fixed
/// so that the text does not depend on the writer's session (`key_from_text` reads it).
pub const CAPTURE_SQL: &str = "\
CREATE TABLE IF NOT EXISTS shardwire.shardwire_rebalance_log (id bigserial PRIMARY KEY, tbl text NOT NULL, key text);
CREATE OR REPLACE FUNCTION shardwire.shardwire_rebalance_capture() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO' SET TimeZone = 'UTC' AS $f$
DECLARE
    q text := format('SELECT CASE WHEN ($1).%1$I IS NULL THEN NULL ELSE format(''%%s'', ($1).%1$I) END, '
                     'CASE WHEN ($2).%1$I IS NULL THEN NULL ELSE format(''%%s'', ($2).%1$I) END', TG_ARGV[1]);
    new_key text;
    old_key text;
BEGIN
    EXECUTE q INTO new_key, old_key USING NEW, OLD;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO shardwire.shardwire_rebalance_log (tbl, key) VALUES (TG_ARGV[0], new_key);
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key) THEN
        INSERT INTO shardwire.shardwire_rebalance_log (tbl, key) VALUES (TG_ARGV[0], old_key);
    END IF;
    RETURN NULL;
END $f$;";

/// Catch-up rounds before the switch.
const CATCH_UP_ROUNDS: usize = 6;
/// A round that finds fewer changed keys than this goes straight to the switch.
const CATCH_UP_ENOUGH: usize = 500;
/// Attempts at holding the proxies and locking the source before the unit fails.
const SWITCH_ATTEMPTS: usize = 10;
/// How long every live proxy gets to confirm a hold.
const ACK_WAIT: Duration = Duration::from_secs(7);
/// Change-log rows taken per statement.
const LOG_BATCH: i64 = 50_000;
/// Keys per statement when rows are copied again or compared.
const KEY_BATCH: usize = 20_000;
/// Bytes buffered before they are sent to the target.
const SEND_AT: usize = 256 * 1024;

/// Installs the capture trigger on `tables` of one shard (idempotent), as the control role
/// `c` is logged in as. The trigger skips a write only from a session logged in as that
/// role with `shardwire.rebalance = 'mover'` (the rebalance's own copies and deletes): a
/// client can set the setting, but under its own `shard_user` role it cannot change its
/// `session_user` (only a superuser may), so it cannot switch capture off.
pub async fn install_capture(c: &Client, tables: &[Arc<Sharded>]) -> Result<(), RebalanceError> {
    crate::sharding::control_schema::prepare(c).await?;
    c.batch_execute(CAPTURE_SQL).await?;
    let control: String = c.query_one("SELECT session_user::text", &[]).await?.get(0);
    for t in tables {
        let exists: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'shardwire_rebalance_capture' AND tgrelid = $1::text::regclass)",
                &[&quote::qualified(&t.name)],
            )
            .await?
            .get(0);
        if !exists {
            c.batch_execute(&format!(
                "CREATE TRIGGER shardwire_rebalance_capture AFTER INSERT OR UPDATE OR DELETE ON {} \
                 FOR EACH ROW WHEN (session_user IS DISTINCT FROM {} \
                 OR current_setting('shardwire.rebalance', true) IS DISTINCT FROM 'mover') \
                 EXECUTE FUNCTION shardwire.shardwire_rebalance_capture({}, {})",
                quote::qualified(&t.name),
                quote::literal(&control),
                quote::literal(&t.name),
                quote::literal(&t.key)
            ))
            .await?;
        }
    }
    Ok(())
}

/// Removes the capture triggers and the log from one shard.
pub async fn remove_capture(c: &Client, tables: &[Arc<Sharded>]) -> Result<(), RebalanceError> {
    for t in tables {
        c.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS shardwire_rebalance_capture ON {}",
            quote::qualified(&t.name)
        ))
        .await?;
    }
    c.batch_execute(
        "DROP TABLE IF EXISTS shardwire.shardwire_rebalance_log; DROP FUNCTION IF EXISTS shardwire.shardwire_rebalance_capture()",
    )
    .await?;
    Ok(())
}

/// Everything a unit needs.
pub struct UnitJob<'a> {
    /// The old map (merged shard list).
    pub old: &'a ShardMap,
    /// The new map (merged shard list).
    pub new: &'a ShardMap,
    /// The group moved.
    pub group: &'a Group,
    /// Source shard.
    pub src: usize,
    /// Target shard.
    pub dst: usize,
    /// The parts of the pair to move now (the pair's keys are cut into `nparts` parts;
    /// parts a killed run finished are not listed). One scan of the source feeds them all.
    pub parts: Vec<PartSpec>,
    /// Into how many parts the pair's keys are cut.
    pub nparts: u32,
    /// The run.
    pub run_id: i64,
    /// Control connection.
    pub control: &'a Client,
    /// Progress display.
    pub progress: &'a Arc<Progress>,
}

/// One part of a pair: a unit as recorded.
#[derive(Debug, Clone)]
pub struct PartSpec {
    /// Unit name as recorded.
    pub name: String,
    /// Which part of the pair's keys (`hash64 % nparts`).
    pub part: u32,
    /// Prepared-transaction names (source, target).
    pub gids: (String, String),
}

/// What a finished unit reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitResult {
    /// Rows moved (all tables of the group).
    pub rows: u64,
    /// Time statements were held.
    pub pause: Duration,
}

/// One table of the unit.
struct TableMove {
    rule: Arc<Sharded>,
    old_rule: Arc<Sharded>,
    key_pos: usize,
}

impl UnitJob<'_> {
    /// The index in `parts` of the part `k` belongs to, if it moves with this job.
    fn part_of(&self, m: &TableMove, k: &KeyValue) -> Option<usize> {
        if owner(self.old, &m.old_rule, k) != Some(self.src)
            || owner(self.new, &m.rule, k) != Some(self.dst)
        {
            return None;
        }
        self.parts
            .iter()
            .position(|p| in_part(k, p.part, self.nparts))
    }

    /// Moves the job's parts (see the module docs); one result per part.
    pub async fn run(&self) -> Result<Vec<UnitResult>, RebalanceError> {
        let timeout = self.new.pool.connect_timeout;
        let src_info = &self.new.shards[self.src];
        let dst_info = &self.new.shards[self.dst];
        let reader = connect(src_info, timeout).await?;
        let s = connect(src_info, timeout).await?;
        let t = connect(dst_info, timeout).await?;
        let mut tables = Vec::new();
        for rule in &self.group.tables {
            if !super::plan::table_exists(&t, &rule.name).await? {
                return Err(RebalanceError::Schema(format!(
                    "table {} does not exist on shard {}; create it there (empty, with the same columns) and run the command again",
                    rule.name, dst_info.name
                )));
            }
            let cols = columns(&reader, &rule.name).await?;
            let dcols = columns(&t, &rule.name).await?;
            if cols != dcols {
                return Err(RebalanceError::Schema(format!(
                    "table {} has columns ({}) on shard {} but ({}) on shard {}; make them equal first",
                    rule.name,
                    cols.join(", "),
                    src_info.name,
                    dcols.join(", "),
                    dst_info.name
                )));
            }
            let key_pos = cols.iter().position(|c| *c == rule.key).ok_or_else(|| {
                RebalanceError::Schema(format!(
                    "table {} on shard {} has no column {}",
                    rule.name, src_info.name, rule.key
                ))
            })?;
            let old_rule = old_rule(self.old, &rule.name).ok_or_else(|| {
                RebalanceError::Maps(format!("{} is not in the old map", rule.name))
            })?;
            tables.push(TableMove {
                rule: rule.clone(),
                old_rule,
                key_pos,
            });
        }
        let first = self
            .parts
            .first()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        self.progress.set_unit(&first);
        let n = self.parts.len();
        let mut targets = Vec::with_capacity(n);
        targets.push(t);
        for _ in 1..n {
            targets.push(connect(dst_info, timeout).await?);
        }
        for t in &targets {
            t.batch_execute("BEGIN").await?;
        }
        let mut keys: Vec<HashSet<String>> = vec![HashSet::new(); n];
        let mut rows = 0u64;
        let copy_started = Instant::now();
        for m in &tables {
            rows += self.bulk_copy(&reader, &targets, m, &mut keys).await?;
        }
        let copied_in = copy_started.elapsed();
        let mut changed_keys = 0;
        for _ in 0..CATCH_UP_ROUNDS {
            let changed = self.consume_log(&reader, &tables).await?;
            let count: usize = changed.iter().map(HashSet::len).sum();
            changed_keys += count;
            for (i, set) in changed.into_iter().enumerate() {
                if !set.is_empty() {
                    self.resync(&reader, &targets[i], &tables, &set).await?;
                    keys[i].extend(set);
                }
            }
            if count < CATCH_UP_ENOUGH {
                break;
            }
        }
        self.progress.log(&format!(
            "units {}{}: copied {rows} rows in {} ms ({:.0} rows/s, one scan for {n} part(s)); caught up {changed_keys} changed keys in {} ms",
            first,
            if n > 1 { " …" } else { "" },
            copied_in.as_millis(),
            rows as f64 / copied_in.as_secs_f64().max(1e-6),
            (copy_started.elapsed() - copied_in).as_millis()
        ));
        // Changes seen while an earlier part was switching, for the parts still to come.
        let mut dirty: Vec<HashSet<String>> = vec![HashSet::new(); n];
        let mut results = Vec::with_capacity(n);
        for i in 0..n {
            let part = &self.parts[i];
            self.progress.set_unit(&part.name);
            let late = std::mem::take(&mut dirty[i]);
            if !late.is_empty() {
                self.resync(&reader, &targets[i], &tables, &late).await?;
                keys[i].extend(late);
            }
            let part_keys: Vec<String> = keys[i].iter().cloned().collect();
            let mut done = None;
            for attempt in 1..=SWITCH_ATTEMPTS {
                match self
                    .switch(&s, &targets[i], &tables, part_keys.clone(), i, &mut dirty)
                    .await
                {
                    Ok(r) => {
                        done = Some(r);
                        break;
                    }
                    Err(RebalanceError::Busy(why)) => {
                        self.progress.log(&format!(
                            "unit {}: switch attempt {attempt} of {SWITCH_ATTEMPTS} gave up ({why}); retrying",
                            part.name
                        ));
                        tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            match done {
                Some(r) => results.push(r),
                None => {
                    return Err(RebalanceError::Busy(format!(
                        "unit {}: could not hold the proxies and lock the source in {SWITCH_ATTEMPTS} attempts",
                        part.name
                    )))
                }
            }
        }
        Ok(results)
    }

    /// Streams the job's rows of one table from the source into each part's target
    /// transaction (one scan for all parts).
    async fn bulk_copy(
        &self,
        reader: &Client,
        targets: &[Client],
        m: &TableMove,
        keys: &mut [HashSet<String>],
    ) -> Result<u64, RebalanceError> {
        let name = quote::qualified(&m.rule.name);
        let out = reader
            .copy_out(&format!("COPY {name} TO STDOUT (FORMAT binary)"))
            .await?;
        pin_mut!(out);
        let mut sinks = Vec::with_capacity(targets.len());
        for t in targets {
            let sink = t
                .copy_in::<_, bytes::Bytes>(&format!("COPY {name} FROM STDIN (FORMAT binary)"))
                .await?;
            sinks.push(Box::pin(sink));
        }
        let mut bufs: Vec<BytesMut> = targets
            .iter()
            .map(|_| {
                let mut b = BytesMut::with_capacity(SEND_AT + 1024);
                b.extend_from_slice(HEADER);
                b
            })
            .collect();
        let mut sent = vec![0u64; targets.len()];
        let mut tuples = TupleReader::new();
        let mut pending = 0u64;
        while let Some(chunk) = out.try_next().await? {
            tuples.push(&chunk);
            while let Some(tuple) = tuples.next_tuple()? {
                let Some(Some(kb)) = tuple.field(m.key_pos) else {
                    continue;
                };
                let k = key_from_binary(m.rule.key_type, kb).map_err(|e| {
                    RebalanceError::Data(format!("{}: undecodable key: {e}", m.rule.what()))
                })?;
                if let Some(i) = self.part_of(m, &k) {
                    bufs[i].extend_from_slice(tuple.raw);
                    keys[i].insert(k.to_string());
                    sent[i] += 1;
                    pending += 1;
                }
            }
            for (buf, sink) in bufs.iter_mut().zip(sinks.iter_mut()) {
                if buf.len() >= SEND_AT {
                    sink.send(buf.split().freeze()).await?;
                }
            }
            if pending >= 10_000 {
                self.progress.add_rows(pending);
                pending = 0;
            }
        }
        tuples.finish()?;
        self.progress.add_rows(pending);
        let mut total = 0;
        for (i, (mut buf, mut sink)) in bufs.into_iter().zip(sinks).enumerate() {
            buf.extend_from_slice(TRAILER);
            sink.send(buf.freeze()).await?;
            let copied = sink.as_mut().finish().await?;
            if copied != sent[i] {
                return Err(RebalanceError::Verify(format!(
                    "{}: sent {} rows to shard {} but it took {copied}",
                    m.rule.name, sent[i], self.new.shards[self.dst].name
                )));
            }
            total += copied;
        }
        Ok(total)
    }

    /// Takes every logged change of the group's tables; the keys that move with this job,
    /// by part.
    async fn consume_log(
        &self,
        c: &Client,
        tables: &[TableMove],
    ) -> Result<Vec<HashSet<String>>, RebalanceError> {
        let names: Vec<String> = tables.iter().map(|m| m.rule.name.clone()).collect();
        let mut out = vec![HashSet::new(); self.parts.len()];
        // In batches: a log that grew while the command was down must not arrive as one
        // unbounded result. Only distinct keys of the job are kept.
        loop {
            let rows = c
                .query(
                    "DELETE FROM shardwire.shardwire_rebalance_log WHERE id IN \
                     (SELECT id FROM shardwire.shardwire_rebalance_log WHERE tbl = ANY($1) ORDER BY id LIMIT $2) \
                     RETURNING tbl, key",
                    &[&names, &LOG_BATCH],
                )
                .await?;
            let full = rows.len() as i64 >= LOG_BATCH;
            self.keep_logged(tables, rows, &mut out)?;
            if !full {
                return Ok(out);
            }
        }
    }

    /// Adds the logged keys of `rows` that move with this job to `out`, by part.
    fn keep_logged(
        &self,
        tables: &[TableMove],
        rows: Vec<tokio_postgres::Row>,
        out: &mut [HashSet<String>],
    ) -> Result<(), RebalanceError> {
        for r in rows {
            let tbl: String = r.get(0);
            let Some(key): Option<String> = r.get(1) else {
                continue;
            };
            let Some(m) = tables.iter().find(|m| m.rule.name == tbl) else {
                continue;
            };
            let k = key_from_text(m.rule.key_type, &key).map_err(|e| {
                RebalanceError::Data(format!("{}: logged key {key:?}: {e}", m.rule.what()))
            })?;
            if let Some(i) = self.part_of(m, &k) {
                out[i].insert(k.to_string());
            }
        }
        Ok(())
    }

    /// Makes the target's rows of `keys` equal to the source's (`src` reads the source).
    async fn resync(
        &self,
        src: &Client,
        t: &Client,
        tables: &[TableMove],
        keys: &HashSet<String>,
    ) -> Result<(), RebalanceError> {
        let keys: Vec<&String> = keys.iter().collect();
        for batch in keys.chunks(KEY_BATCH) {
            let list: Vec<String> = batch.iter().map(|k| (*k).clone()).collect();
            for m in tables {
                let name = quote::qualified(&m.rule.name);
                let ty = m.rule.key_type.pg_name();
                let key = quote::ident(&m.rule.key);
                t.execute(
                    &format!("DELETE FROM {name} WHERE {key} = ANY($1::text[]::{ty}[])"),
                    &[&list],
                )
                .await?;
                let query = format!(
                    "SELECT * FROM {name} WHERE {key} = ANY({}::{ty}[])",
                    array_literal(&list)
                );
                pipe_copy(src, &query, t, &name).await?;
            }
        }
        Ok(())
    }

    /// Count and checksum of the unit's rows of one table as `c` sees them.
    async fn digest(
        &self,
        c: &Client,
        m: &TableMove,
        keys: &[String],
    ) -> Result<(i64, String), RebalanceError> {
        let name = quote::qualified(&m.rule.name);
        let ty = m.rule.key_type.pg_name();
        let key = quote::ident(&m.rule.key);
        let mut count = 0i64;
        let mut sum = 0i128;
        for batch in keys.chunks(KEY_BATCH) {
            let r = c
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(sum(hashtextextended(x::text, 0)), 0)::text \
                         FROM {name} x WHERE {key} = ANY($1::text[]::{ty}[])"
                    ),
                    &[&batch],
                )
                .await?;
            count += r.get::<_, i64>(0);
            let s: String = r.get(1);
            sum += s.parse::<i128>().map_err(|e| {
                RebalanceError::Data(format!("checksum {s:?} of {}: {e}", m.rule.name))
            })?;
        }
        Ok((count, format!("{count}:{sum:x}")))
    }

    /// Holds the proxies, locks, verifies, switches and releases (see the module docs).
    async fn switch(
        &self,
        s: &Client,
        t: &Client,
        tables: &[TableMove],
        mut keys: Vec<String>,
        i: usize,
        dirty: &mut [HashSet<String>],
    ) -> Result<UnitResult, RebalanceError> {
        let part = &self.parts[i];
        let held_at = Instant::now();
        let mut lap = Laps::new();
        let epoch = control::set_hold(self.control, true).await?;
        let acked = wait_acks(self.control, epoch, ACK_WAIT).await?;
        lap.mark("hold");
        if let Err(lagging) = acked {
            control::set_hold(self.control, false).await?;
            return Err(RebalanceError::Busy(format!(
                "proxies {} did not confirm the hold",
                lagging.join(", ")
            )));
        }
        let names: Vec<String> = tables
            .iter()
            .map(|m| quote::qualified(&m.rule.name))
            .collect();
        let locked = s
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '3s'; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                names.join(", ")
            ))
            .await;
        lap.mark("lock");
        if let Err(e) = locked {
            let _ = s.batch_execute("ROLLBACK").await;
            control::set_hold(self.control, false).await?;
            return Err(RebalanceError::Busy(format!("locking the source: {e}")));
        }
        let result = self
            .switch_locked(s, t, tables, &mut keys, &mut lap, (i, dirty))
            .await;
        match result {
            Ok(rows) => {
                control::set_hold(self.control, false).await?;
                lap.mark("release");
                self.progress.log(&format!(
                    "unit {}: statements held {} ms ({})",
                    part.name,
                    held_at.elapsed().as_millis(),
                    lap.report()
                ));
                Ok(UnitResult {
                    rows,
                    pause: held_at.elapsed(),
                })
            }
            Err(e) => {
                // Before the commit point nothing is committed: the source keeps its rows.
                // After it (or when unsure), the recorded state decides, as on a re-run.
                let _ = s.batch_execute("ROLLBACK").await;
                let _ = t.batch_execute("ROLLBACK").await;
                let state = control::unit_state(self.control, self.run_id, &part.name).await?;
                let commit = state != "pending";
                finish_prepared(t, &part.gids.1, commit).await?;
                finish_prepared(s, &part.gids.0, commit).await?;
                if commit {
                    control::mark_done(self.control, self.run_id, &part.name, None).await?;
                }
                control::set_hold(self.control, false).await?;
                Err(e)
            }
        }
    }

    async fn switch_locked(
        &self,
        s: &Client,
        t: &Client,
        tables: &[TableMove],
        keys: &mut Vec<String>,
        lap: &mut Laps,
        (i, dirty): (usize, &mut [HashSet<String>]),
    ) -> Result<u64, RebalanceError> {
        let part = &self.parts[i];
        let mut changed = self.consume_log(s, tables).await?;
        // Later parts' changes are applied before their own switches.
        for (j, set) in changed.iter_mut().enumerate() {
            if j > i {
                dirty[j].extend(std::mem::take(set));
            }
        }
        let mine = std::mem::take(&mut changed[i]);
        if !mine.is_empty() {
            self.resync(s, t, tables, &mine).await?;
            let known: HashSet<String> = keys.iter().cloned().collect();
            keys.extend(mine.into_iter().filter(|k| !known.contains(k)));
        }
        lap.mark("catch-up");
        let mut rows = 0u64;
        let mut sums = Vec::new();
        for m in tables {
            let (a, b) = tokio::try_join!(self.digest(s, m, keys), self.digest(t, m, keys))?;
            if a != b {
                return Err(RebalanceError::Verify(format!(
                    "{} {}: source {} has {} (count:checksum) but target {} has {}; the source is left untouched",
                    part.name, m.rule.name, self.new.shards[self.src].name, a.1,
                    self.new.shards[self.dst].name, b.1
                )));
            }
            rows += a.0 as u64;
            sums.push(format!("{}={}", m.rule.name, a.1));
        }
        lap.mark("verify");
        for m in tables {
            let name = quote::qualified(&m.rule.name);
            let ty = m.rule.key_type.pg_name();
            let key = quote::ident(&m.rule.key);
            for batch in keys.chunks(KEY_BATCH) {
                s.execute(
                    &format!("DELETE FROM {name} WHERE {key} = ANY($1::text[]::{ty}[])"),
                    &[&batch],
                )
                .await?;
            }
        }
        lap.mark("delete");
        let (gs, gt) = &part.gids;
        t.batch_execute(&twophase::prepare_sql(gt)).await?;
        s.batch_execute(&twophase::prepare_sql(gs)).await?;
        // The commit point: once recorded, a re-run commits both prepared transactions.
        control::record_switch(
            self.control,
            self.run_id,
            &part.name,
            rows as i64,
            &sums.join(" "),
        )
        .await?;
        lap.mark("prepare+record");
        finish_prepared(t, gt, true).await?;
        finish_prepared(s, gs, true).await?;
        lap.mark("commit");
        control::mark_done(self.control, self.run_id, &part.name, None).await?;
        Ok(rows)
    }
}

/// Durations of the steps of a switch, for the log.
struct Laps {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    fn report(&self) -> String {
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(w, d)| format!("{w} {} ms", d.as_millis()))
            .collect();
        parts.join(", ")
    }
}

/// A SQL literal of a text array holding `items`.
fn array_literal(items: &[String]) -> String {
    let mut a = String::from("{");
    for (i, k) in items.iter().enumerate() {
        if i > 0 {
            a.push(',');
        }
        a.push('"');
        a.push_str(&k.replace('\\', "\\\\").replace('"', "\\\""));
        a.push('"');
    }
    a.push('}');
    quote::literal(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_escape_quotes_and_backslashes() {
        let v = vec!["a".to_string(), "b\"c".into(), "d\\e".into(), "it's".into()];
        // Backslashes doubled twice: once for the array syntax, once for the E'' literal
        // (crate::quote), which reads the same whatever standard_conforming_strings says.
        assert_eq!(array_literal(&v), r#" E'{"a","b\\"c","d\\\\e","it''s"}'"#);
    }
}

#[cfg(test)]
mod key_text_tests {
    use crate::sharding::keys::{key_from_text, KeyType, KeyValue};

    /// The capture trigger logs keys as their types' output functions write them, in
    /// DateStyle ISO and TimeZone UTC; logs a run of an earlier version left hold JSON's ISO
    /// 8601 forms (`to_jsonb(row) ->> key`). Both parse, to the same keys.
    #[test]
    fn logged_forms_of_keys_parse_like_postgres_text() {
        let a = key_from_text(KeyType::Timestamptz, "2025-01-01T01:00:00+01:00").expect("json ts");
        let b = key_from_text(KeyType::Timestamptz, "2025-01-01 00:00:00+00").expect("text ts");
        assert_eq!(a, b);
        let c =
            key_from_text(KeyType::Timestamptz, "2024-07-01T00:00:00.123456+00:00").expect("frac");
        assert!(matches!(c, KeyValue::Timestamptz(_)));
        assert_eq!(
            key_from_text(KeyType::Timestamptz, "2024-07-01 00:00:00.123456+00").expect("frac"),
            c
        );
        for ts in ["0044-03-15 12:00:00+00 BC", "infinity", "-infinity"] {
            assert!(key_from_text(KeyType::Timestamptz, ts).is_ok(), "{ts}");
        }
        for d in ["0044-03-15 BC", "infinity"] {
            assert!(key_from_text(KeyType::Date, d).is_ok(), "{d}");
        }
        assert_eq!(
            key_from_text(KeyType::BigInt, "42").expect("int"),
            KeyValue::Int(42)
        );
        assert!(key_from_text(KeyType::Date, "2025-03-01").is_ok());
        assert!(key_from_text(KeyType::Numeric, "1.50").is_ok());
    }
}
