//! Two-phase commit for writes that span shards, with a durable decision log.
//!
//! A write on several shards (a reference-table write, a split INSERT, a COPY, or a
//! transaction that wrote on several shards) ends with:
//!
//! 1. `PREPARE TRANSACTION 'gid'` on every shard; if any fails, every prepared one gets
//!    `ROLLBACK PREPARED` and the others `ROLLBACK`: nothing is applied.
//! 2. The decision: `INSERT INTO shardwire_2pc (gid, decision) VALUES (gid, 'commit')
//!    ON CONFLICT DO NOTHING` on the log shard (the default shard). Its commit is the
//!    commit point. If the insert finds an `abort` already recorded (recovery gave up on a
//!    stalled proxy), every shard rolls back.
//! 3. `COMMIT PREPARED` everywhere, then the log row is deleted. A shard unreachable here is
//!    finished by recovery.
//!
//! Recovery ([`run`]) runs in every proxy: every [`RECOVER_EVERY`] it lists this database's
//! prepared transactions named `shardwire_…` that are older than [`IN_DOUBT_AFTER`], records
//! `abort` for any that has no decision (presumed abort; the insert races safely with a
//! late proxy through the primary key), and commits or rolls each back by the decision.
//!
//! The client's own two-phase commit (`PREPARE TRANSACTION` from the application) is
//! [`super::twophase_client`]'s: recovery here never decides one of its participants.
//!
//! Two-phase commit needs `max_prepared_transactions > 0` on every shard (Postgres's default
//! is 0). Without it the proxy falls back to committing shard by shard, reports a failure in
//! that round with the shards that did commit, and refuses multi-shard writes inside
//! transaction blocks; it logs a warning at startup.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use crate::sharding::shardmap::ShardMap;

/// The decision log table (on the default shard), schema-qualified so that a client's
/// `search_path` on the connection that records a decision cannot hide it.
pub const LOG_TABLE: &str = "shardwire.shardwire_2pc";
/// How often recovery looks for in-doubt transactions.
pub const RECOVER_EVERY: Duration = Duration::from_secs(10);
/// A prepared transaction older than this with no decision is presumed aborted.
pub const IN_DOUBT_AFTER: Duration = Duration::from_secs(30);
/// Prefix of every transaction id the proxy prepares.
pub const GID_PREFIX: &str = "shardwire_";

/// Two-phase commit state shared by a proxy's sessions.
#[derive(Debug)]
pub struct TwoPhase {
    available: AtomicBool,
    probed: AtomicBool,
    instance: u64,
    counter: AtomicU64,
}

impl Default for TwoPhase {
    fn default() -> Self {
        TwoPhase {
            available: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            instance: rand::random(),
            counter: AtomicU64::new(0),
        }
    }
}

impl TwoPhase {
    /// Whether every shard accepts PREPARE TRANSACTION and the log table exists.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Whether the shards have been checked (either way).
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    /// A transaction id unique across proxies and time: `shardwire_<instance>_<n>`.
    pub fn next_gid(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{GID_PREFIX}{:016x}_{n}", self.instance)
    }
}

/// `INSERT` of a commit decision; returns `commit` when it was recorded (a row means the
/// insert won), nothing when an abort was recorded first.
pub fn decide_sql(gid: &str) -> String {
    format!(
        "INSERT INTO {LOG_TABLE} (gid, decision) VALUES ('{gid}', 'commit') ON CONFLICT (gid) DO NOTHING RETURNING decision"
    )
}

/// The statement that prepares the shard's part of transaction `gid`.
pub fn prepare_sql(gid: &str) -> String {
    format!("PREPARE TRANSACTION {}", crate::quote::literal(gid))
}

/// The statement that commits a prepared part.
pub fn commit_prepared_sql(gid: &str) -> String {
    format!("COMMIT PREPARED {}", crate::quote::literal(gid))
}

/// The statement that rolls a prepared part back.
pub fn rollback_prepared_sql(gid: &str) -> String {
    format!("ROLLBACK PREPARED {}", crate::quote::literal(gid))
}

/// Forgets a finished transaction's decision (every part committed).
pub fn forget_sql(gid: &str) -> String {
    format!("DELETE FROM {LOG_TABLE} WHERE gid = '{gid}'")
}

async fn connect(map: &ShardMap, shard: usize) -> Result<Client, tokio_postgres::Error> {
    map.shards[shard]
        .connect_control(map.pool.connect_timeout)
        .await
}

/// Checks that every shard allows prepared transactions and creates the log table; then
/// recovers in-doubt transactions every [`RECOVER_EVERY`] for as long as the proxy runs.
pub async fn run(map: Arc<ShardMap>, tp: Arc<TwoPhase>) {
    loop {
        match probe(&map).await {
            Ok(true) => {
                tp.available.store(true, Ordering::Release);
                tp.probed.store(true, Ordering::Release);
                break;
            }
            Ok(false) => {
                tp.probed.store(true, Ordering::Release);
                tracing::warn!(
                    "max_prepared_transactions is 0 on a shard: writes that span shards commit shard by shard (not crash-atomic) and are refused inside transaction blocks; set max_prepared_transactions > 0 on every shard for two-phase commit"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check two-phase commit support yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    loop {
        if let Err(e) = recover(&map, IN_DOUBT_AFTER).await {
            tracing::warn!(error = %e, "two-phase commit recovery failed; retrying");
        }
        if let Err(e) = super::twophase_client::recover(&map, IN_DOUBT_AFTER).await {
            tracing::warn!(error = %e, "recovery of clients' two-phase transactions failed; retrying");
        }
        tokio::time::sleep(RECOVER_EVERY).await;
    }
}

/// Whether every shard has `max_prepared_transactions > 0`; creates the log table.
pub async fn probe(map: &ShardMap) -> Result<bool, tokio_postgres::Error> {
    for i in 0..map.shards.len() {
        let c = connect(map, i).await?;
        let v: String = c
            .query_one("SHOW max_prepared_transactions", &[])
            .await?
            .get(0);
        if v.trim().parse::<u64>().unwrap_or(0) == 0 {
            return Ok(false);
        }
    }
    let c = connect(map, map.default_shard).await?;
    crate::sharding::control_schema::prepare(&c).await?;
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (gid text PRIMARY KEY, decision text NOT NULL, \
         decided_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    c.batch_execute(&super::twophase_client::create_sql())
        .await?;
    Ok(true)
}

/// One recovery pass over every shard (see the module docs): prepared transactions older
/// than `older_than` are finished by their decision alone — commit when the log says
/// commit, else `abort` is recorded first and they are rolled back. A shard that cannot be
/// reached is skipped (and retried on the next pass) without stopping the others; the first
/// such error is returned after the pass. Returns how many it finished.
pub async fn recover(map: &ShardMap, older_than: Duration) -> Result<usize, tokio_postgres::Error> {
    let log = connect(map, map.default_shard).await?;
    let mut done = 0;
    let mut first_error = None;
    for i in 0..map.shards.len() {
        match recover_shard(map, i, &log, older_than).await {
            Ok(n) => done += n,
            Err(e) => {
                tracing::warn!(shard = %map.shards[i].name, error = %e, "two-phase recovery could not finish this shard; retrying on the next pass");
                first_error.get_or_insert(e);
            }
        }
    }
    // Decisions are only needed while some shard may still hold the prepared transaction.
    log.batch_execute(&format!(
        "DELETE FROM {LOG_TABLE} WHERE decided_at < now() - interval '1 day'"
    ))
    .await?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Recovery of one shard's in-doubt transactions, with decisions read from `log`.
async fn recover_shard(
    map: &ShardMap,
    i: usize,
    log: &Client,
    older_than: Duration,
) -> Result<usize, tokio_postgres::Error> {
    let c = connect(map, i).await?;
    let rows = c
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
             AND gid LIKE 'shardwire\\_%' AND prepared < now() - make_interval(secs => $1)",
            &[&(older_than.as_secs_f64())],
        )
        .await?;
    let mut done = 0;
    let mut first_error = None;
    for r in rows {
        let gid: String = r.get(0);
        if !gid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue; // not one of ours
        }
        if super::twophase_client::client_owned(log, &gid).await? {
            continue; // a client's own: only the client decides it
        }
        log.execute(
            &format!(
                "INSERT INTO {LOG_TABLE} (gid, decision) VALUES ($1, 'abort') ON CONFLICT (gid) DO NOTHING"
            ),
            &[&gid],
        )
        .await?;
        let decision: String = log
            .query_one(
                &format!("SELECT decision FROM {LOG_TABLE} WHERE gid = $1"),
                &[&gid],
            )
            .await?
            .get(0);
        let sql = if decision == "commit" {
            commit_prepared_sql(&gid)
        } else {
            rollback_prepared_sql(&gid)
        };
        // One that cannot be finished (its owner is a role the control role may not act
        // as) does not stop the pass: the others are finished, the error reported after.
        if let Err(e) = super::prepared_xacts::finish_as_owner(&c, &gid, &sql).await {
            tracing::error!(%gid, shard = %map.shards[i].name, %decision, error = %e, "cannot finish an in-doubt two-phase transaction; {}", super::prepared_xacts::OWNER_HINT);
            first_error.get_or_insert(e);
            continue;
        }
        tracing::warn!(%gid, shard = %map.shards[i].name, %decision, "finished an in-doubt two-phase transaction");
        done += 1;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}
