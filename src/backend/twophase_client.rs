//! The client's own two-phase commit (`PREPARE TRANSACTION 'gid'` from the application),
//! mapped onto the shards with a durable record per client gid.
//!
//! A record in [`CLIENT_TABLE`] (on the default shard, next to the proxy's decision log)
//! names the participants: each shard the transaction touched and the transaction id it
//! was prepared under. The default shard holds the client's exact gid (an empty marker
//! transaction when the client's transaction did not touch it), so `pg_prepared_xacts`
//! read through the proxy lists it; the other shards get [`derived_gid`]s, which cannot
//! collide when several shards are databases of one Postgres instance, and which the
//! proxy's own recovery (`shardwire_…` ids) never matches.
//!
//! States: `preparing` (recorded before any participant is prepared) → `prepared` (the
//! client was told so) → `committing` / `aborting` (the client's decision, durable before
//! any participant is finished) → deleted once every participant is finished. All state
//! lives in the record and the shards, so any connection of any proxy can finish it.
//!
//! (It does not use [`super::twophase`], which calls it: the proxy's own commits and the
//! client's share only the shards.)
//!
//! Recovery ([`recover`]) rolls back a `preparing` record older than its threshold (the
//! client never heard of success), finishes `committing`/`aborting` ones, and never
//! touches a `prepared` one, whatever its age: that decision is the client's.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::ProxyError;
use crate::sharding::shardmap::ShardMap;

/// The table of client-owned prepared transactions (on the default shard).
pub const CLIENT_TABLE: &str = "shardwire.shardwire_2pc_client";
/// Prefix of the ids the proxy prepares a client transaction under on other shards.
pub const DERIVED_PREFIX: &str = "shardwire-client-";
/// Longest wait for one step on a control connection.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// `PREPARE TRANSACTION 'gid'`.
pub fn prepare_sql(gid: &str) -> String {
    format!("PREPARE TRANSACTION {}", crate::quote::literal(gid))
}

/// `COMMIT PREPARED 'gid'`.
fn commit_prepared_sql(gid: &str) -> String {
    format!("COMMIT PREPARED {}", crate::quote::literal(gid))
}

/// `ROLLBACK PREPARED 'gid'`.
pub fn rollback_prepared_sql(gid: &str) -> String {
    format!("ROLLBACK PREPARED {}", crate::quote::literal(gid))
}

/// The statement that creates [`CLIENT_TABLE`] (and adds `owner`, the proxy user who
/// prepared, to a table an older proxy made).
pub fn create_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {CLIENT_TABLE} (gid text PRIMARY KEY, state text NOT NULL, \
         shards text[] NOT NULL, gids text[] NOT NULL, \
         created timestamptz NOT NULL DEFAULT now(), updated timestamptz NOT NULL DEFAULT now(), \
         owner text); \
         DO $sw$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute \
         WHERE attrelid = '{CLIENT_TABLE}'::regclass AND attname = 'owner' AND NOT attisdropped) \
         THEN ALTER TABLE {CLIENT_TABLE} ADD COLUMN owner text; END IF; END $sw$"
    )
}

/// The id a client transaction is prepared under on a shard other than the default one:
/// unique per PREPARE (`nonce`) and per shard.
pub fn derived_gid(nonce: u128, shard: usize) -> String {
    format!("{DERIVED_PREFIX}{nonce:032x}-{shard}")
}

/// One participant: a shard (by index) and the id its part is prepared under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Shard index in the map.
    pub shard: usize,
    /// Its prepared transaction's id.
    pub gid: String,
}

/// Why a client two-phase step failed.
#[derive(Debug, thiserror::Error)]
pub enum TpcError {
    /// PREPARE of a gid that is recorded already.
    #[error("transaction identifier \"{0}\" is already in use")]
    InUse(String),
    /// COMMIT/ROLLBACK PREPARED of a gid with no record.
    #[error("prepared transaction with identifier \"{0}\" does not exist")]
    NotFound(String),
    /// The record is in a state that does not allow the step.
    #[error("prepared transaction with identifier \"{gid}\" is busy (it is {state})")]
    Busy {
        /// The client's gid.
        gid: String,
        /// Its record's state.
        state: String,
    },
    /// A participant's shard is not in the current map.
    #[error("shard {0} of the prepared transaction is not in the shard map")]
    UnknownShard(String),
    /// COMMIT/ROLLBACK PREPARED by another proxy user than the one that prepared it.
    #[error("permission denied to finish prepared transaction")]
    NotOwner,
    /// A shard or the record's shard failed.
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    /// A step took longer than [`STEP_TIMEOUT`].
    #[error("no answer from the shard within {0:?}")]
    Timeout(Duration),
}

impl TpcError {
    /// The error the client gets, with Postgres's SQLSTATE where Postgres has one.
    pub fn into_proxy(self) -> ProxyError {
        let code = match &self {
            TpcError::InUse(_) => "42710",
            TpcError::NotOwner => "42501",
            TpcError::NotFound(_) => "42704",
            TpcError::Busy { .. } | TpcError::UnknownShard(_) => "55000",
            TpcError::Db(e) => match e.as_db_error() {
                Some(db) => {
                    return ProxyError::Backend {
                        code: db.code().code().to_string(),
                        message: db.message().to_string(),
                    }
                }
                None => "08006",
            },
            TpcError::Timeout(_) => "08006",
        };
        ProxyError::Backend {
            code: code.into(),
            message: self.to_string(),
        }
    }

    /// Whether Postgres said the prepared transaction does not exist (finished already).
    fn is_not_found(&self) -> bool {
        matches!(self, TpcError::Db(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT))
    }
}

/// Runs `f` within [`STEP_TIMEOUT`].
async fn bounded<T, F>(f: F) -> Result<T, TpcError>
where
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(r) => r.map_err(TpcError::Db),
        Err(_) => Err(TpcError::Timeout(STEP_TIMEOUT)),
    }
}

async fn connect(map: &ShardMap, shard: usize) -> Result<Client, TpcError> {
    bounded(map.shards[shard].connect_control(map.pool.connect_timeout)).await
}

/// A control connection to the default shard, where the records live.
pub struct ClientLog {
    client: Client,
}

impl ClientLog {
    /// Connects to the default shard of `map`.
    pub async fn connect(map: &ShardMap) -> Result<Self, TpcError> {
        Ok(ClientLog {
            client: connect(map, map.default_shard).await?,
        })
    }

    /// Records `gid` as `preparing` with its participants (committed before any of them
    /// is prepared), prepared by proxy user `owner`. A recorded gid is [`TpcError::InUse`].
    pub async fn begin(
        &self,
        map: &ShardMap,
        gid: &str,
        parts: &[Part],
        owner: &str,
    ) -> Result<(), TpcError> {
        let shards: Vec<String> = parts
            .iter()
            .map(|p| map.shards[p.shard].name.clone())
            .collect();
        let gids: Vec<String> = parts.iter().map(|p| p.gid.clone()).collect();
        let sql = format!(
            "INSERT INTO {CLIENT_TABLE} (gid, state, shards, gids, owner) VALUES ($1, 'preparing', $2, $3, $4)"
        );
        match bounded(self.client.execute(&sql, &[&gid, &shards, &gids, &owner])).await {
            Err(TpcError::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(TpcError::InUse(gid.to_string()))
            }
            r => r.map(|_| ()),
        }
    }

    /// Prepares an empty transaction under `gid` (the default shard's part when the
    /// client's transaction did not reach it).
    pub async fn prepare_marker(&self, gid: &str) -> Result<(), TpcError> {
        let sql = format!("BEGIN; {}", prepare_sql(gid));
        let r = bounded(self.client.batch_execute(&sql)).await;
        if r.is_err() {
            let _ = bounded(self.client.batch_execute("ROLLBACK")).await;
        }
        r
    }

    /// Rolls back the marker prepared under `gid` (gone already counts as done).
    pub async fn rollback_marker(&self, gid: &str) -> Result<(), TpcError> {
        match bounded(self.client.batch_execute(&rollback_prepared_sql(gid))).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// `preparing` → `prepared`; false when the record is no longer `preparing` (recovery
    /// gave up on it and is rolling it back).
    pub async fn mark_prepared(&self, gid: &str) -> Result<bool, TpcError> {
        let sql = format!(
            "UPDATE {CLIENT_TABLE} SET state = 'prepared', updated = now() WHERE gid = $1 AND state = 'preparing'"
        );
        Ok(bounded(self.client.execute(&sql, &[&gid])).await? == 1)
    }

    /// Deletes the record of a transaction none of whose participants is prepared.
    pub async fn forget(&self, gid: &str) -> Result<(), TpcError> {
        let sql = format!("DELETE FROM {CLIENT_TABLE} WHERE gid = $1");
        bounded(self.client.execute(&sql, &[&gid]))
            .await
            .map(|_| ())
    }
}

/// `COMMIT PREPARED` (`commit`) or `ROLLBACK PREPARED` of the client's `gid`: records the
/// decision, finishes every participant (one already finished counts as done, so a retry
/// after a failure completes it), then deletes the record. Only proxy user `user`, who
/// prepared it, may (as Postgres allows only the preparing role): else
/// [`TpcError::NotOwner`].
pub async fn finish(map: &ShardMap, gid: &str, commit: bool, user: &str) -> Result<(), TpcError> {
    let log = connect(map, map.default_shard).await?;
    let (to, from) = if commit {
        ("committing", ["prepared", "committing"])
    } else {
        ("aborting", ["prepared", "aborting"])
    };
    let claim = format!(
        "UPDATE {CLIENT_TABLE} SET state = $2, updated = now() WHERE gid = $1 AND state = ANY($3) \
         AND (owner IS NULL OR owner = $4) RETURNING shards, gids"
    );
    let from: Vec<&str> = from.to_vec();
    let row = match bounded(log.query_opt(&claim, &[&gid, &to, &from, &user])).await {
        Ok(r) => r,
        // No table: the proxy never prepared a client transaction on this database.
        Err(TpcError::Db(e)) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
        Err(e) => return Err(e),
    };
    let Some(row) = row else {
        let state = format!("SELECT state, owner FROM {CLIENT_TABLE} WHERE gid = $1");
        return Err(match bounded(log.query_opt(&state, &[&gid])).await {
            Ok(Some(r))
                if r.try_get::<_, Option<String>>(1)?
                    .is_some_and(|o| o != user) =>
            {
                TpcError::NotOwner
            }
            Ok(Some(r)) => TpcError::Busy {
                gid: gid.to_string(),
                state: r.try_get(0)?,
            },
            _ => TpcError::NotFound(gid.to_string()),
        });
    };
    let shards: Vec<String> = row.try_get(0)?;
    let gids: Vec<String> = row.try_get(1)?;
    finish_parts(map, &log, gid, commit, &shards, &gids).await
}

/// Finishes each participant in the record's order (the default shard's, under the
/// client's gid, last: it stays listed until the rest is done), then deletes the record.
async fn finish_parts(
    map: &ShardMap,
    log: &Client,
    gid: &str,
    commit: bool,
    shards: &[String],
    gids: &[String],
) -> Result<(), TpcError> {
    for (name, part) in shards.iter().zip(gids) {
        let shard = map
            .shards
            .iter()
            .position(|s| &s.name == name)
            .ok_or_else(|| TpcError::UnknownShard(name.clone()))?;
        let sql = if commit {
            commit_prepared_sql(part)
        } else {
            rollback_prepared_sql(part)
        };
        let c = if shard == map.default_shard {
            None
        } else {
            Some(connect(map, shard).await?)
        };
        let on = c.as_ref().unwrap_or(log);
        match bounded(super::prepared_xacts::finish_as_owner(on, part, &sql)).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    let forget = format!("DELETE FROM {CLIENT_TABLE} WHERE gid = $1");
    bounded(log.execute(&forget, &[&gid])).await.map(|_| ())
}

/// One recovery pass over the records (see the module docs): `preparing` ones older than
/// `older_than` are rolled back, `committing`/`aborting` ones not updated for that long
/// are finished. Returns how many it finished; a record that cannot be finished now is
/// left for the next pass (the first such error is returned after the pass).
pub async fn recover(map: &ShardMap, older_than: Duration) -> Result<usize, TpcError> {
    let log = connect(map, map.default_shard).await?;
    let secs = older_than.as_secs_f64();
    let claim = format!(
        "UPDATE {CLIENT_TABLE} SET state = 'aborting', updated = now() WHERE state = 'preparing' \
         AND created < now() - make_interval(secs => $1) RETURNING gid, state, shards, gids"
    );
    let mut rows = bounded(log.query(&claim, &[&secs])).await?;
    let claimed: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let decided = format!(
        "SELECT gid, state, shards, gids FROM {CLIENT_TABLE} WHERE state IN ('committing', 'aborting') \
         AND updated < now() - make_interval(secs => $1) AND NOT (gid = ANY($2))"
    );
    rows.extend(bounded(log.query(&decided, &[&secs, &claimed])).await?);
    let mut done = 0;
    let mut first_error = None;
    for r in rows {
        let gid: String = r.try_get(0)?;
        let state: String = r.try_get(1)?;
        let shards: Vec<String> = r.try_get(2)?;
        let gids: Vec<String> = r.try_get(3)?;
        let commit = state == "committing";
        match finish_parts(map, &log, &gid, commit, &shards, &gids).await {
            Ok(()) => {
                tracing::warn!(%gid, %state, "finished a client's two-phase transaction");
                done += 1;
            }
            Err(e) => {
                tracing::warn!(%gid, error = %e, "cannot finish a client's two-phase transaction yet; retrying on the next pass");
                first_error.get_or_insert(e);
            }
        }
    }
    for i in 0..map.shards.len() {
        match orphans(map, i, &log, secs).await {
            Ok(n) => done += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Rolls back shard `i`'s parts under a [`derived_gid`] that no record names, older than
/// `secs`: a PREPARE that went on after recovery or a ROLLBACK had finished its record
/// (its proxy stalled, then failed). A record is written before any of its parts is
/// prepared and deleted only after all of them are finished, so no live one is touched.
async fn orphans(map: &ShardMap, i: usize, log: &Client, secs: f64) -> Result<usize, TpcError> {
    let c = connect(map, i).await?;
    let list = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
                AND gid LIKE 'shardwire-client-%' AND prepared < now() - make_interval(secs => $1)";
    let mut done = 0;
    let mut first_error = None;
    for r in bounded(c.query(list, &[&secs])).await? {
        let gid: String = r.try_get(0)?;
        if bounded(client_owned(log, &gid)).await? {
            continue;
        }
        let undo = rollback_prepared_sql(&gid);
        match bounded(super::prepared_xacts::finish_as_owner(&c, &gid, &undo)).await {
            // One that cannot be rolled back does not stop the pass (see twophase).
            Err(e) if !e.is_not_found() => {
                tracing::error!(%gid, shard = %map.shards[i].name, error = %e, "cannot roll back an orphaned part of a client's two-phase transaction; {}", super::prepared_xacts::OWNER_HINT);
                first_error.get_or_insert(e);
                continue;
            }
            _ => {}
        }
        tracing::warn!(%gid, shard = %map.shards[i].name, "rolled back an orphaned part of a client's two-phase transaction");
        done += 1;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Whether the prepared transaction `gid` on some shard belongs to a client's two-phase
/// transaction (the proxy's recovery must leave it alone).
pub async fn client_owned(log: &Client, gid: &str) -> Result<bool, tokio_postgres::Error> {
    let sql =
        format!("SELECT EXISTS (SELECT 1 FROM {CLIENT_TABLE} WHERE gid = $1 OR $1 = ANY(gids))");
    log.query_one(&sql, &[&gid]).await?.try_get(0)
}
