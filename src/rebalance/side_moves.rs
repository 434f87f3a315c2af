//! The moves beside the row units: reference tables copied to the shards the new map adds,
//! and directory keys moved where the new map's static entries put them.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::control;
use super::mover::{self, connect};
use super::progress::Progress;
use super::RebalanceError;
use crate::sharding::shardmap::ShardMap;

/// Copies reference table `table` from `src` to `dst` (replacing what `dst` holds), with the
/// source locked against writes; the rows copied.
pub(super) async fn copy_reference(
    src: &crate::sharding::shard::ShardInfo,
    dst: &crate::sharding::shard::ShardInfo,
    table: &str,
    timeout: Duration,
) -> Result<u64, RebalanceError> {
    let s = connect(src, timeout).await?;
    let t = connect(dst, timeout).await?;
    let name = crate::quote::qualified(table);
    s.batch_execute(&format!("BEGIN; LOCK TABLE {name} IN SHARE MODE"))
        .await?;
    t.batch_execute(&format!("BEGIN; TRUNCATE {name}")).await?;
    let n = mover::pipe_copy(&s, &name, &t, &name).await?;
    let digest = format!(
        "SELECT count(*), coalesce(sum(hashtextextended(x::text, 0)), 0)::text FROM {name} x"
    );
    let (a, b) = tokio::try_join!(s.query_one(&digest, &[]), t.query_one(&digest, &[]))?;
    let key = |r: &tokio_postgres::Row| (r.get::<_, i64>(0), r.get::<_, String>(1));
    if key(&a) != key(&b) {
        let _ = t.batch_execute("ROLLBACK").await;
        return Err(RebalanceError::Verify(format!(
            "reference table {table}: {} has {:?} but {} received {:?}",
            src.name,
            key(&a),
            dst.name,
            key(&b)
        )));
    }
    t.batch_execute("COMMIT").await?;
    s.batch_execute("COMMIT").await?;
    Ok(n)
}

/// Moves the directory keys the new map's static entries reassign; rows moved.
pub(super) async fn move_directory_keys(
    new: &ShardMap,
    control: &Client,
    run_id: i64,
    units: &[control::UnitRow],
    progress: &Arc<Progress>,
) -> Result<(u64, usize), RebalanceError> {
    let Some(dir) = new.directory.clone() else {
        return Ok((0, 0));
    };
    let ready = Arc::new(tokio::sync::Notify::new());
    let loaded = ready.notified();
    let task = tokio::spawn(crate::sharding::directory::run(
        dir.clone(),
        new.shards[dir.shard].clone(),
        new.shard_names().to_vec(),
        new.pool.connect_timeout,
        ready.clone(),
    ));
    if tokio::time::timeout(Duration::from_secs(30), loaded)
        .await
        .is_err()
    {
        task.abort();
        return Err(RebalanceError::Directory(
            "the directory did not load within 30 s".into(),
        ));
    }
    let mut rows = 0;
    let mut moved = 0;
    for u in units
        .iter()
        .filter(|u| u.kind == "directory" && u.state != "done")
    {
        let Some(d) = new.shard_index(&u.dst) else {
            continue;
        };
        progress.set_unit(&u.unit);
        let report = crate::sharding::directory::admin::move_key(new, &u.grp, d)
            .await
            .map_err(|e| RebalanceError::Directory(format!("moving key '{}': {e}", u.grp)));
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                task.abort();
                return Err(e);
            }
        };
        let n: u64 = report.tables.iter().map(|t| t.1).sum();
        progress.add_rows(n);
        rows += n;
        moved += 1;
        control::mark_done(control, run_id, &u.unit, Some(n as i64)).await?;
    }
    task.abort();
    Ok((rows, moved))
}
