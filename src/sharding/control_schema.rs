//! The schema the proxy's control tables live in: `shardwire`, out of the application's own
//! (`public`), so schema reflection (SQLAlchemy, Alembic autogenerate, Django `inspectdb`)
//! and migration tools see only the application's tables (issue 17).
//!
//! Tables: the 2PC decision log and client-prepared transactions ([`super::twophase`],
//! [`super::twophase_client`]), the allocator of generated values ([`super::ids`]), the
//! rebalance's run, units and proxy heartbeats (`rebalance::control`) and its capture log on
//! source shards (`rebalance::mover`). The key directory's table is the one the shard map
//! names (`directory.table`).
//!
//! Proxies before this one created these tables in `public`: [`prepare`] moves each such
//! table into the schema the first time (`ALTER TABLE … SET SCHEMA` keeps its rows).

/// The control schema's name.
pub const SCHEMA: &str = "shardwire";

/// Control tables older proxies created in `public` (their names stay the same).
const MOVED: [&str; 7] = [
    "shardwire_2pc",
    "shardwire_2pc_client",
    "shardwire_sequences",
    "shardwire_rebalance",
    "shardwire_rebalance_units",
    "shardwire_proxies",
    "shardwire_rebalance_log",
];

/// The statement that creates the schema and moves the older proxies' tables into it.
pub fn prepare_sql() -> String {
    let mut moves = String::new();
    for t in MOVED {
        moves.push_str(&format!(
            "IF to_regclass('public.{t}') IS NOT NULL AND to_regclass('{SCHEMA}.{t}') IS NULL THEN \
             ALTER TABLE public.{t} SET SCHEMA {SCHEMA}; END IF; "
        ));
    }
    format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}; DO $sw$ BEGIN {moves}END $sw$;")
}

/// Creates the schema (and moves older tables into it) on a control connection. Proxies
/// doing so at once race on the catalog: the loser's unique violation means it exists.
pub async fn prepare(c: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    match c.batch_execute(&prepare_sql()).await {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            c.batch_execute(&prepare_sql()).await
        }
        r => r,
    }
}
