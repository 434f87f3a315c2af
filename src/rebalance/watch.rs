//! The proxy side of a rebalance: follow the control tables and route accordingly.
//!
//! Every proxy keeps one control connection to its map's default shard. It heartbeats into
//! `shardwire_proxies` every second and, on every notification (and every second anyway),
//! reads the run ([`super::control`]):
//!
//! - a `preparing` run: arm the gate (the rebalance may hold it to copy reference tables);
//! - a `running` run it has not adopted yet: build the transition maps from the recorded
//!   texts ([`ShardMap::transition_pair`], sharing the live directory), attach the units as a
//!   [`Transition`], swap the topology in and arm the gate;
//! - units recorded `switched` or `done`: flip them in the transition;
//! - `hold`: hold the gate, wait for passes in flight to come back (bounded), then
//!   acknowledge; no hold: open the gate;
//! - `complete`: swap in the new map proper and disarm the gate.
//!
//! A proxy acknowledges an epoch (`shardwire_proxies.acked`) only once its routing reflects
//! it, and the rebalance waits for every live proxy before it moves on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client};

use super::control::{self, RunState};
use crate::session::Shared;
use crate::sharding::shard::ShardInfo;
use crate::sharding::shardmap::transition::{group_label, unit_name, Transition};
use crate::sharding::shardmap::ShardMap;

/// How long a proxy waits for its in-flight transactions before it stops trying to hold
/// (the rebalance then gives up this attempt and retries the unit later).
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// What this proxy has applied.
#[derive(Default)]
struct Applied {
    /// The run whose transition (or final map) is in force.
    run_id: Option<i64>,
    /// Whether the final map of `run_id` is in force.
    complete: bool,
    /// The transition in force.
    transition: Option<Arc<Transition>>,
}

/// Follows the control tables for as long as the proxy runs, reconnecting with backoff.
/// `first` is notified after the first look at the control tables.
pub async fn run(shared: Arc<Shared>, proxy_id: String, first: Arc<tokio::sync::Notify>) {
    let map = shared.map();
    let info = map.shards[map.default_shard].clone();
    let timeout = map.pool.connect_timeout;
    let mut applied = Applied::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        if let Err(e) = session(&shared, &info, timeout, &proxy_id, &mut applied, &first).await {
            tracing::debug!(error = %e, shard = %info.name, "rebalance control connection failed; retrying");
        }
        // Without the control connection this proxy cannot learn about switches: while a
        // rebalance runs it holds statements (they wait, then fail with 57P03) rather than
        // route by a stale unit state. The next successful look releases them.
        if shared.gate.armed() && !shared.gate.is_held() {
            tracing::warn!(shard = %info.name, "rebalance control connection lost during a rebalance; holding statements until it is back");
            shared.gate.hold();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn session(
    shared: &Arc<Shared>,
    info: &ShardInfo,
    timeout: Duration,
    proxy_id: &str,
    applied: &mut Applied,
    first: &tokio::sync::Notify,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut conn) = info
        .control_config(timeout)
        .connect(info.tls.clone())
        .await?;
    let (note_tx, mut notes) = tokio::sync::mpsc::channel::<()>(16);
    let (dead_tx, mut dead) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = note_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = dead_tx.send(());
    });
    // Concurrent proxies may race on CREATE TABLE IF NOT EXISTS; a loser just retries.
    if let Err(e) = crate::sharding::control_schema::prepare(&client).await {
        tracing::debug!(error = %e, "creating the control schema");
    }
    if let Err(e) = client.batch_execute(control::PROXIES_SCHEMA).await {
        tracing::debug!(error = %e, "creating shardwire_proxies");
    }
    control::listen(&client).await?;
    loop {
        let epoch = sync(&client, shared, applied).await?;
        control::heartbeat(&client, proxy_id, epoch).await?;
        first.notify_one();
        tokio::select! {
            _ = notes.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut dead => return Ok(()),
        }
    }
}

/// Brings routing in line with the recorded run; the epoch to acknowledge, if any.
async fn sync(
    client: &Client,
    shared: &Arc<Shared>,
    applied: &mut Applied,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let Some(run) = control::read_run(client).await? else {
        // No run recorded (the row is gone): nothing may stay held or armed by it — a hold
        // that lost its source ends by itself.
        release(shared, applied);
        return Ok(None);
    };
    publish_progress(client, shared, &run).await?;
    match run.phase.as_str() {
        "preparing" | "running" => {
            shared.gate.arm(true);
            if run.phase == "running" && (applied.run_id != Some(run.run_id) || applied.complete) {
                match adopt_transition(client, shared, &run).await? {
                    Some(t) => {
                        applied.run_id = Some(run.run_id);
                        applied.complete = false;
                        applied.transition = Some(t);
                    }
                    None => return Ok(None),
                }
            }
            if let Some(t) = applied
                .transition
                .as_ref()
                .filter(|_| run.phase == "running")
            {
                for u in control::read_units(client, run.run_id).await? {
                    if u.state != "pending" {
                        t.switch(&u.unit);
                    }
                }
            }
            let gate = &shared.gate;
            if run.hold {
                if !gate.is_held() {
                    gate.hold();
                    tracing::info!(epoch = run.epoch, "rebalance: holding statements");
                }
                if !gate.drained(DRAIN_WAIT).await {
                    tracing::warn!(
                        inflight = gate.inflight(),
                        "rebalance: transactions still running after {} s; not confirming the hold",
                        DRAIN_WAIT.as_secs()
                    );
                    return Ok(None);
                }
            } else if gate.is_held() {
                gate.open();
                tracing::info!(epoch = run.epoch, "rebalance: statements released");
            }
            Ok(Some(run.epoch))
        }
        "complete" => {
            if applied.run_id != Some(run.run_id) || !applied.complete {
                let current = shared.map();
                let done = match ShardMap::from_yaml_with_directory(
                    &run.to_map,
                    "rebalance --to map",
                    current.directory.clone(),
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(error = %e, "rebalance: the recorded new map does not load");
                        return Ok(None);
                    }
                };
                // A proxy started with the new map already routes by it.
                if applied.run_id.is_some() || !same_placement(&current, &done) {
                    shared.swap_map(Arc::new(done));
                    tracing::info!(
                        run = run.run_id,
                        "rebalance complete: routing with the new map"
                    );
                }
                applied.run_id = Some(run.run_id);
                applied.complete = true;
                applied.transition = None;
            }
            shared.gate.arm(false);
            Ok(Some(run.epoch))
        }
        _ => {
            // A phase this proxy does not know (or a run abandoned mid-way, e.g. `failed`):
            // it holds nothing.
            release(shared, applied);
            Ok(None)
        }
    }
}

/// Opens and disarms the gate when no known run is in force. Routing keeps the map it has:
/// a transition adopted for a run that vanished stays until a known run says otherwise.
fn release(shared: &Arc<Shared>, applied: &Applied) {
    let gate = &shared.gate;
    if gate.armed() || gate.is_held() {
        tracing::warn!(
            run = ?applied.run_id,
            "rebalance: no run in force any more; statements released"
        );
        gate.arm(false);
    }
}

/// Publishes the run's progress as metrics (`shardwire_rebalance_*`).
async fn publish_progress(
    client: &Client,
    shared: &Shared,
    run: &RunState,
) -> Result<(), tokio_postgres::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let g = &shared.telemetry.rebalance;
    let running = run.phase != "complete";
    g.running.store(u64::from(running), Relaxed);
    let units = control::read_units(client, run.run_id).await?;
    for (i, state) in ["pending", "switched", "done"].iter().enumerate() {
        let n = units.iter().filter(|u| u.state == *state).count();
        g.units[i].store(n as u64, Relaxed);
    }
    let moved: i64 = units.iter().filter_map(|u| u.rows_moved).sum();
    g.rows_moved.store(moved.max(0) as u64, Relaxed);
    Ok(())
}

/// Whether two maps list the same shards in the same order.
fn same_placement(a: &ShardMap, b: &ShardMap) -> bool {
    a.shard_names() == b.shard_names()
        && a.shards
            .iter()
            .zip(&b.shards)
            .all(|(x, y)| x.weight == y.weight && x.region == y.region)
}

/// Builds and swaps in the transition for `run`; `None` when the maps do not load.
async fn adopt_transition(
    client: &Client,
    shared: &Arc<Shared>,
    run: &RunState,
) -> Result<Option<Arc<Transition>>, tokio_postgres::Error> {
    let units = control::read_units(client, run.run_id).await?;
    let live_dir = shared.map().directory.clone();
    let (old, mut new) = match ShardMap::transition_pair(&run.from_map, &run.to_map, live_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "rebalance: the recorded maps do not load; not following it");
            return Ok(None);
        }
    };
    let groups: Vec<(String, u32)> = new
        .sharded_tables()
        .map(|t| (group_label(&new, t.group), t.group))
        .collect();
    let mut planned = Vec::new();
    for u in units.iter().filter(|u| u.kind == "rows") {
        let group = groups.iter().find(|(l, _)| *l == u.grp).map(|(_, g)| *g);
        match (group, new.shard_index(&u.src), new.shard_index(&u.dst)) {
            (Some(g), Some(s), Some(d)) => {
                let (part, parts) = (u.part.max(0) as u32, u.parts.max(1) as u32);
                planned.push((
                    unit_name(&u.grp, &u.src, &u.dst, part, parts),
                    g,
                    s,
                    d,
                    part,
                    parts,
                ))
            }
            _ => {
                tracing::error!(unit = %u.unit, "rebalance: unit does not match the recorded maps; not following it");
                return Ok(None);
            }
        }
    }
    let t = Arc::new(Transition::new(run.run_id, old, planned));
    for u in &units {
        if u.state != "pending" {
            t.switch(&u.unit);
        }
    }
    new.transition = Some(t.clone());
    shared.gate.arm(true);
    shared.swap_map(Arc::new(new));
    tracing::info!(
        run = run.run_id,
        units = t.units().len(),
        "rebalance running: routing through its transition"
    );
    Ok(Some(t))
}
