//! Statements the mover and the run both send: a control-plane connection, a binary COPY
//! piped between shards, settling prepared transactions and waiting for the proxies'
//! acknowledgements (the control-table statements themselves are in [`super::control`]).

use std::time::{Duration, Instant};

use futures::{pin_mut, SinkExt, TryStreamExt};
use tokio_postgres::Client;

use super::control;
use super::RebalanceError;
use crate::backend::twophase;
use crate::sharding::shard::ShardInfo;

/// Opens a control-plane connection to `info`.
pub async fn connect(info: &ShardInfo, timeout: Duration) -> Result<Client, RebalanceError> {
    let c = info
        .connect_control(timeout)
        .await
        .map_err(|e| RebalanceError::Shard(info.name.clone(), e))?;
    // Marks this session's writes as the rebalance's own (see CAPTURE_SQL).
    c.batch_execute("SET shardwire.rebalance = 'mover'").await?;
    Ok(c)
}

/// Streams `COPY (query) TO STDOUT` on `src` into `COPY table FROM STDIN` on `dst`, both in
/// binary format and unparsed; the rows `dst` took. `query` may be a table name.
pub async fn pipe_copy(
    src: &Client,
    query: &str,
    dst: &Client,
    table: &str,
) -> Result<u64, RebalanceError> {
    let source = if query.starts_with("SELECT") {
        format!("({query})")
    } else {
        query.to_owned()
    };
    let out = src
        .copy_out(&format!("COPY {source} TO STDOUT (FORMAT binary)"))
        .await?;
    let sink = dst
        .copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await?;
    pin_mut!(out);
    pin_mut!(sink);
    while let Some(chunk) = out.try_next().await? {
        sink.send(chunk).await?;
    }
    Ok(sink.finish().await?)
}

/// Commits (or rolls back) prepared transaction `gid` if it exists.
pub async fn finish_prepared(c: &Client, gid: &str, commit: bool) -> Result<bool, RebalanceError> {
    let exists: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database())",
            &[&gid],
        )
        .await?
        .get(0);
    if exists {
        let sql = if commit {
            twophase::commit_prepared_sql(gid)
        } else {
            twophase::rollback_prepared_sql(gid)
        };
        c.batch_execute(&sql).await?;
    }
    Ok(exists)
}

/// Waits until every live proxy has applied `epoch`; the laggards when `max` passes first.
pub async fn wait_acks(
    control: &Client,
    epoch: i64,
    max: Duration,
) -> Result<Result<(), Vec<String>>, RebalanceError> {
    let deadline = Instant::now() + max;
    loop {
        let lagging = control::lagging_proxies(control, epoch).await?;
        if lagging.is_empty() {
            return Ok(Ok(()));
        }
        if Instant::now() >= deadline {
            return Ok(Err(lagging));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
