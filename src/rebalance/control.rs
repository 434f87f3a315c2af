//! The rebalance control tables: how `shardwire rebalance` and every running proxy agree.
//!
//! They live on the old map's default shard (the *control shard*), so proxies need no
//! coordinator of their own (design §1, "many proxies, one truth"):
//!
//! - `shardwire_rebalance` — one row: the run, both maps' text, its phase (`running`,
//!   `complete`), whether proxies must `hold`, and an `epoch` bumped on every change;
//! - `shardwire_rebalance_units` — the planned units and their state (`pending`, `switched`,
//!   `done`), the commit point of every switch;
//! - `shardwire_proxies` — every proxy's heartbeat and the last epoch it has applied.
//!
//! Every change is sent as a `pg_notify` on [`CHANNEL`] in the same transaction; proxies also
//! re-read the state every second.
//!
//! Every statement the rebalance and the proxies send to these tables is written here.

use tokio_postgres::Client;

/// Notification channel proxies listen on.
pub const CHANNEL: &str = "shardwire_rebalance";

/// A proxy whose heartbeat is older than this is not waited for.
pub const PROXY_LEASE_SECS: i64 = 5;

/// Creates the control tables when absent.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS shardwire.shardwire_rebalance (
    id int PRIMARY KEY CHECK (id = 1),
    run_id bigint NOT NULL,
    from_map text NOT NULL,
    to_map text NOT NULL,
    phase text NOT NULL,
    hold boolean NOT NULL DEFAULT false,
    epoch bigint NOT NULL DEFAULT 1,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS shardwire.shardwire_rebalance_units (
    run_id bigint NOT NULL,
    unit text NOT NULL,
    seq int NOT NULL,
    kind text NOT NULL,
    grp text NOT NULL,
    src text NOT NULL,
    dst text NOT NULL,
    part int NOT NULL DEFAULT 0,
    parts int NOT NULL DEFAULT 1,
    state text NOT NULL DEFAULT 'pending',
    rows_moved bigint,
    checksum text,
    PRIMARY KEY (run_id, unit)
);
CREATE TABLE IF NOT EXISTS shardwire.shardwire_proxies (
    id text PRIMARY KEY,
    seen timestamptz NOT NULL,
    acked bigint NOT NULL DEFAULT 0
);";

/// The proxies' heartbeat table alone (proxies create it at startup).
pub const PROXIES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS shardwire.shardwire_proxies (
    id text PRIMARY KEY,
    seen timestamptz NOT NULL,
    acked bigint NOT NULL DEFAULT 0
);";

/// The run as recorded in `shardwire_rebalance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// Run identifier (new for every rebalance).
    pub run_id: i64,
    /// The old map's YAML.
    pub from_map: String,
    /// The new map's YAML.
    pub to_map: String,
    /// `running` or `complete`.
    pub phase: String,
    /// Whether proxies must hold statements.
    pub hold: bool,
    /// Bumped on every change; proxies acknowledge the epoch they have applied.
    pub epoch: i64,
}

/// A unit as recorded in `shardwire_rebalance_units`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRow {
    /// Unit name.
    pub unit: String,
    /// Execution order.
    pub seq: i32,
    /// `rows` (a co-location group between two shards) or `reference` (a reference-table copy).
    pub kind: String,
    /// Group label (tables joined by `+`).
    pub grp: String,
    /// Source shard name.
    pub src: String,
    /// Target shard name.
    pub dst: String,
    /// Part of the pair's keys (see [`crate::sharding::shardmap::transition::in_part`]).
    pub part: i32,
    /// Parts the pair's keys are cut into.
    pub parts: i32,
    /// `pending`, `switched` or `done`.
    pub state: String,
    /// Rows moved (once done).
    pub rows_moved: Option<i64>,
}

/// Reads the run, `None` when no rebalance was ever started (or the tables are absent).
pub async fn read_run(c: &Client) -> Result<Option<RunState>, tokio_postgres::Error> {
    let exists = c
        .query_one(
            "SELECT to_regclass('shardwire.shardwire_rebalance') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT run_id, from_map, to_map, phase, hold, epoch FROM shardwire.shardwire_rebalance WHERE id = 1",
            &[],
        )
        .await?;
    Ok(row.map(|r| RunState {
        run_id: r.get(0),
        from_map: r.get(1),
        to_map: r.get(2),
        phase: r.get(3),
        hold: r.get(4),
        epoch: r.get(5),
    }))
}

/// The units of run `run_id` in execution order.
pub async fn read_units(c: &Client, run_id: i64) -> Result<Vec<UnitRow>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT unit, seq, kind, grp, src, dst, part, parts, state, rows_moved FROM shardwire.shardwire_rebalance_units \
             WHERE run_id = $1 ORDER BY seq",
            &[&run_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UnitRow {
            unit: r.get(0),
            seq: r.get(1),
            kind: r.get(2),
            grp: r.get(3),
            src: r.get(4),
            dst: r.get(5),
            part: r.get(6),
            parts: r.get(7),
            state: r.get(8),
            rows_moved: r.get(9),
        })
        .collect())
}

/// Records a proxy's heartbeat (and, with `acked`, the epoch it has applied).
pub async fn heartbeat(
    c: &Client,
    proxy_id: &str,
    acked: Option<i64>,
) -> Result<(), tokio_postgres::Error> {
    match acked {
        Some(epoch) => {
            c.execute(
                "INSERT INTO shardwire.shardwire_proxies (id, seen, acked) VALUES ($1, now(), $2) \
                 ON CONFLICT (id) DO UPDATE SET seen = now(), acked = EXCLUDED.acked",
                &[&proxy_id, &epoch],
            )
            .await?
        }
        None => {
            c.execute(
                "INSERT INTO shardwire.shardwire_proxies (id, seen) VALUES ($1, now()) \
                 ON CONFLICT (id) DO UPDATE SET seen = now()",
                &[&proxy_id],
            )
            .await?
        }
    };
    Ok(())
}

/// Live proxies (heartbeat within [`PROXY_LEASE_SECS`]) that have not applied `epoch` yet.
pub async fn lagging_proxies(c: &Client, epoch: i64) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT id FROM shardwire.shardwire_proxies \
             WHERE seen > now() - make_interval(secs => $1) AND acked < $2 ORDER BY id",
            &[&(PROXY_LEASE_SECS as f64), &epoch],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Proxies seen in the last ten minutes whose heartbeat has lapsed: down, or cut off from
/// the control shard (a rebalance does not wait for them; see the README).
pub async fn stale_proxies(c: &Client) -> Result<Vec<(String, f64)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT id, extract(epoch FROM now() - seen)::float8 FROM shardwire.shardwire_proxies \
             WHERE seen <= now() - make_interval(secs => $1) AND seen > now() - interval '10 minutes' \
             ORDER BY id",
            &[&(PROXY_LEASE_SECS as f64)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A unit to record with a new run (see [`record_run`]); its `seq` is its place in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUnit {
    /// Unit name.
    pub unit: String,
    /// `rows`, `reference` or `directory`.
    pub kind: &'static str,
    /// Group label, reference table or directory key.
    pub grp: String,
    /// Source shard name.
    pub src: String,
    /// Target shard name.
    pub dst: String,
    /// Part of the pair's keys.
    pub part: i32,
    /// Parts the pair's keys are cut into.
    pub parts: i32,
}

/// Records run `run_id` (phase `preparing`, epoch `epoch`) and its units in one transaction,
/// replacing units left under the same id, and notifies the proxies.
pub async fn record_run(
    c: &Client,
    run_id: i64,
    (from_map, to_map): (&str, &str),
    epoch: i64,
    units: &[NewUnit],
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("BEGIN").await?;
    let res = async {
        c.execute(
            "DELETE FROM shardwire.shardwire_rebalance_units WHERE run_id = $1",
            &[&run_id],
        )
        .await?;
        c.execute(
            "INSERT INTO shardwire.shardwire_rebalance (id, run_id, from_map, to_map, phase, hold, epoch) \
             VALUES (1, $1, $2, $3, 'preparing', false, $4) \
             ON CONFLICT (id) DO UPDATE SET run_id = $1, from_map = $2, to_map = $3, phase = 'preparing', \
             hold = false, epoch = $4, started_at = now(), finished_at = NULL",
            &[&run_id, &from_map, &to_map, &epoch],
        )
        .await?;
        for (i, u) in units.iter().enumerate() {
            c.execute(
                "INSERT INTO shardwire.shardwire_rebalance_units (run_id, unit, seq, kind, grp, src, dst, part, parts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &run_id,
                    &u.unit,
                    &(i as i32),
                    &u.kind,
                    &u.grp,
                    &u.src,
                    &u.dst,
                    &u.part,
                    &u.parts,
                ],
            )
            .await?;
        }
        c.execute("SELECT pg_notify($1, 'run')", &[&CHANNEL])
            .await?;
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    match res {
        Ok(()) => c.batch_execute("COMMIT").await,
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Sets the run's phase and lifts any hold (bumping the epoch and notifying); the new epoch.
pub async fn set_phase(c: &Client, phase: &str) -> Result<i64, tokio_postgres::Error> {
    let r = c
        .query_one(
            "WITH e AS (UPDATE shardwire.shardwire_rebalance SET phase = $1, hold = false, epoch = epoch + 1, \
             finished_at = CASE WHEN $1 = 'complete' THEN now() END WHERE id = 1 RETURNING epoch) \
             SELECT e.epoch, pg_notify($2, e.epoch::text) IS NULL FROM e",
            &[&phase, &CHANNEL],
        )
        .await?;
    Ok(r.get(0))
}

/// Sets `hold` and bumps the epoch (notifying the proxies); the new epoch.
pub async fn set_hold(c: &Client, hold: bool) -> Result<i64, tokio_postgres::Error> {
    let r = c
        .query_one(
            "WITH e AS (UPDATE shardwire.shardwire_rebalance SET hold = $1, epoch = epoch + 1 WHERE id = 1 RETURNING epoch) \
             SELECT e.epoch, pg_notify($2, e.epoch::text) IS NULL FROM e",
            &[&hold, &CHANNEL],
        )
        .await?;
    Ok(r.get(0))
}

/// The recorded state of unit `unit` of run `run_id` (fails when it is not recorded).
pub async fn unit_state(
    c: &Client,
    run_id: i64,
    unit: &str,
) -> Result<String, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT state FROM shardwire.shardwire_rebalance_units WHERE run_id = $1 AND unit = $2",
        &[&run_id, &unit],
    )
    .await?
    .get(0))
}

/// The commit point of a switch: records unit `unit` `switched` with its row count and
/// checksums, bumping the epoch and notifying the proxies in the same statement.
pub async fn record_switch(
    c: &Client,
    run_id: i64,
    unit: &str,
    rows_moved: i64,
    checksum: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "WITH u AS (UPDATE shardwire.shardwire_rebalance_units SET state = 'switched', rows_moved = $3, checksum = $4 \
         WHERE run_id = $1 AND unit = $2 RETURNING 1), \
         e AS (UPDATE shardwire.shardwire_rebalance SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch) \
         SELECT pg_notify($5, e.epoch::text) FROM e, u",
        &[&run_id, &unit, &rows_moved, &checksum, &CHANNEL],
    )
    .await?;
    Ok(())
}

/// Records unit `unit` of run `run_id` `done` (and, with `rows_moved`, the rows it moved;
/// without, the count recorded at its switch stays).
pub async fn mark_done(
    c: &Client,
    run_id: i64,
    unit: &str,
    rows_moved: Option<i64>,
) -> Result<(), tokio_postgres::Error> {
    match rows_moved {
        Some(n) => {
            c.execute(
                "UPDATE shardwire.shardwire_rebalance_units SET state = 'done', rows_moved = $3 WHERE run_id = $1 AND unit = $2",
                &[&run_id, &unit, &n],
            )
            .await?
        }
        None => {
            c.execute(
                "UPDATE shardwire.shardwire_rebalance_units SET state = 'done' WHERE run_id = $1 AND unit = $2",
                &[&run_id, &unit],
            )
            .await?
        }
    };
    Ok(())
}

/// Subscribes the session to [`CHANNEL`].
pub async fn listen(c: &Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("LISTEN {CHANNEL}")).await
}
