//! Carrying out a recorded run: recording it and its units, the phases and the proxies'
//! acknowledgements, the row units pair by pair, and settling the switches a killed run left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::control;
use super::mover::{self, finish_prepared, wait_acks, UnitJob};
use super::progress::Progress;
use super::runplan::Plan;
use super::side_moves::{copy_reference, move_directory_keys};
use super::{RebalanceError, Summary};
use crate::sharding::shardmap::ShardMap;

/// Settles the switches a killed run left: a unit recorded `switched` has its prepared
/// transactions committed, any other unit's are rolled back; then the proxies are released.
pub(super) async fn recover_switches(
    new: &ShardMap,
    clients: &[Client],
    control: &Client,
    run_id: i64,
) -> Result<(), RebalanceError> {
    for u in control::read_units(control, run_id).await? {
        if u.kind != "rows" || u.state == "done" {
            continue;
        }
        let (Some(s), Some(d)) = (new.shard_index(&u.src), new.shard_index(&u.dst)) else {
            continue;
        };
        let commit = u.state == "switched";
        let a =
            finish_prepared(&clients[d], &format!("swrb_{run_id}_{}_dst", u.seq), commit).await?;
        let b =
            finish_prepared(&clients[s], &format!("swrb_{run_id}_{}_src", u.seq), commit).await?;
        if commit {
            control::mark_done(control, run_id, &u.unit, None).await?;
        }
        if a || b || commit {
            eprintln!(
                "rebalance {run_id}: unit {}: {} the switch a killed run left",
                u.unit,
                if commit { "finished" } else { "rolled back" }
            );
        }
    }
    control::set_hold(control, false).await?;
    Ok(())
}

/// Records a new run and its units (phase `preparing`); its id.
pub(super) async fn record_run(
    control: &Client,
    new: &ShardMap,
    p: &Plan,
    from_text: &str,
    to_text: &str,
    prev: Option<control::RunState>,
) -> Result<i64, RebalanceError> {
    let run_id = prev.as_ref().map(|r| r.run_id + 1).unwrap_or(1);
    let epoch = prev.as_ref().map(|r| r.epoch + 1).unwrap_or(1);
    let name = |i: usize| new.shards[i].name.clone();
    let mut units: Vec<control::NewUnit> = Vec::new();
    for (t, s, d, _) in &p.reference {
        units.push(control::NewUnit {
            unit: format!("reference {t} {}->{}", name(*s), name(*d)),
            kind: "reference",
            grp: t.clone(),
            src: name(*s),
            dst: name(*d),
            part: 0,
            parts: 1,
        });
    }
    for (g, s, d, parts) in &p.row_units {
        for part in 0..*parts {
            let u = crate::sharding::shardmap::transition::unit_name(
                g,
                &name(*s),
                &name(*d),
                part,
                *parts,
            );
            units.push(control::NewUnit {
                unit: u,
                kind: "rows",
                grp: g.clone(),
                src: name(*s),
                dst: name(*d),
                part: part as i32,
                parts: *parts as i32,
            });
        }
    }
    for m in &p.directory {
        units.push(control::NewUnit {
            unit: format!("directory {} {}->{}", m.key, name(m.src), name(m.dst)),
            kind: "directory",
            grp: m.key.clone(),
            src: name(m.src),
            dst: name(m.dst),
            part: 0,
            parts: 1,
        });
    }
    control::record_run(control, run_id, (from_text, to_text), epoch, &units).await?;
    eprintln!("rebalance {run_id}: recorded {} units", units.len());
    Ok(run_id)
}

/// Waits for every live proxy to apply `epoch`, failing after `max`.
async fn require_acks(
    control: &Client,
    epoch: i64,
    max: Duration,
    what: &str,
) -> Result<(), RebalanceError> {
    match wait_acks(control, epoch, max).await? {
        Ok(()) => Ok(()),
        Err(lagging) => Err(RebalanceError::Busy(format!(
            "proxies {} did not confirm {what} within {} s; they may be stuck on long transactions. Run the command again to continue",
            lagging.join(", "),
            max.as_secs()
        ))),
    }
}

/// Carries out a recorded run (also the resumption of a killed one).
pub(super) async fn execute(
    old: &ShardMap,
    new: &ShardMap,
    p: &Plan,
    clients: &[Client],
    run_id: i64,
    started: Instant,
) -> Result<Summary, RebalanceError> {
    let control = &clients[old.default_shard];
    let units = control::read_units(control, run_id).await?;
    let name = |i: usize| new.shards[i].name.as_str();
    let mut summary = Summary::default();
    let planned: u64 = p.counts.moves.values().sum::<u64>()
        + p.directory
            .iter()
            .flat_map(|m| m.rows.iter().map(|r| r.1))
            .sum::<u64>();
    let progress = Arc::new(Progress::new(planned));
    let ticker = progress.spawn_ticker();
    // A hold left by a killed run is lifted first.
    control::set_hold(control, false).await?;
    // Change capture on every source of row units.
    for u in units
        .iter()
        .filter(|u| u.kind == "rows" && u.state == "pending")
    {
        let (Some(g), Some(s)) = (
            p.groups.iter().find(|g| g.label == u.grp),
            new.shard_index(&u.src),
        ) else {
            continue;
        };
        mover::install_capture(&clients[s], &g.tables).await?;
    }
    let phase = control::read_run(control)
        .await?
        .map(|r| r.phase)
        .unwrap_or_default();
    if phase == "preparing" {
        let epoch = control::set_phase(control, "preparing").await?;
        require_acks(
            control,
            epoch,
            Duration::from_secs(30),
            "the start of the rebalance",
        )
        .await?;
        let pending: Vec<_> = units
            .iter()
            .filter(|u| u.kind == "reference" && u.state != "done")
            .collect();
        if !pending.is_empty() {
            let held_at = Instant::now();
            let epoch = control::set_hold(control, true).await?;
            if let Err(e) = require_acks(control, epoch, Duration::from_secs(10), "the hold").await
            {
                control::set_hold(control, false).await?;
                return Err(e);
            }
            for u in pending {
                let (Some(s), Some(d)) = (new.shard_index(&u.src), new.shard_index(&u.dst)) else {
                    continue;
                };
                progress.set_unit(&u.unit);
                let n = match copy_reference(
                    &new.shards[s],
                    &new.shards[d],
                    &u.grp,
                    new.pool.connect_timeout,
                )
                .await
                {
                    Ok(n) => n,
                    Err(e) => {
                        control::set_hold(control, false).await?;
                        return Err(e);
                    }
                };
                control::mark_done(control, run_id, &u.unit, Some(n as i64)).await?;
                summary.units += 1;
            }
            // Proxies adopt the transition before they let statements through again.
            let epoch = control::set_phase(control, "running").await?;
            summary.longest_pause = summary.longest_pause.max(held_at.elapsed());
            require_acks(control, epoch, Duration::from_secs(30), "the transition").await?;
        } else {
            let epoch = control::set_phase(control, "running").await?;
            require_acks(control, epoch, Duration::from_secs(30), "the transition").await?;
        }
    } else {
        let epoch = control::set_phase(control, "running").await?;
        require_acks(control, epoch, Duration::from_secs(30), "the transition").await?;
    }
    // Pending parts of one pair run as one job: one scan of the source feeds them all.
    let mut pending: Vec<&control::UnitRow> = Vec::new();
    let rows_units: Vec<&control::UnitRow> = units.iter().filter(|u| u.kind == "rows").collect();
    for (k, u) in rows_units.iter().enumerate() {
        let gids = (
            format!("swrb_{run_id}_{}_src", u.seq),
            format!("swrb_{run_id}_{}_dst", u.seq),
        );
        let (Some(s), Some(d)) = (new.shard_index(&u.src), new.shard_index(&u.dst)) else {
            return Err(RebalanceError::Maps(format!(
                "recorded unit {} does not match the maps",
                u.unit
            )));
        };
        // Re-read: a killed run may have left it half way.
        let state = control::unit_state(control, run_id, &u.unit).await?;
        match state.as_str() {
            "done" => {}
            "switched" => {
                finish_prepared(&clients[d], &gids.1, true).await?;
                finish_prepared(&clients[s], &gids.0, true).await?;
                control::mark_done(control, run_id, &u.unit, None).await?;
                progress.log(&format!(
                    "unit {}: finished the switch a killed run had committed",
                    u.unit
                ));
                control::set_hold(control, false).await?;
            }
            _ => {
                finish_prepared(&clients[d], &gids.1, false).await?;
                finish_prepared(&clients[s], &gids.0, false).await?;
                pending.push(u);
            }
        }
        let same_pair = |a: &control::UnitRow, b: &control::UnitRow| {
            a.grp == b.grp && a.src == b.src && a.dst == b.dst
        };
        let last_of_pair = rows_units.get(k + 1).is_none_or(|n| !same_pair(n, u));
        if last_of_pair && !pending.is_empty() {
            let job_units = std::mem::take(&mut pending);
            run_pair(
                (old, new),
                p,
                &job_units,
                (run_id, control),
                &progress,
                &mut summary,
            )
            .await?;
        }
    }
    if units
        .iter()
        .any(|u| u.kind == "directory" && u.state != "done")
    {
        let (rows, n) = move_directory_keys(new, control, run_id, &units, &progress).await?;
        summary.rows += rows;
        summary.units += n;
    }
    let epoch = control::set_phase(control, "complete").await?;
    if let Ok(Err(lagging)) = wait_acks(control, epoch, Duration::from_secs(10)).await {
        progress.log(&format!(
            "warning: proxies {} have not confirmed the new map yet; they will on their next look",
            lagging.join(", ")
        ));
    }
    let mut sources: Vec<usize> = Vec::new();
    for u in units.iter().filter(|u| u.kind == "rows") {
        if let Some(s) = new.shard_index(&u.src) {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
    }
    for s in sources {
        let tables: Vec<_> = p
            .groups
            .iter()
            .flat_map(|g| g.tables.iter().cloned())
            .collect();
        if let Err(e) = mover::remove_capture(&clients[s], &tables).await {
            progress.log(&format!(
                "warning: removing change capture from {}: {e}",
                name(s)
            ));
        }
    }
    let _ = progress.finish();
    ticker.abort();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Moves the pending parts `parts` of one pair with one [`UnitJob`].
async fn run_pair(
    (old, new): (&ShardMap, &ShardMap),
    p: &Plan,
    parts: &[&control::UnitRow],
    (run_id, control): (i64, &Client),
    progress: &Arc<Progress>,
    summary: &mut Summary,
) -> Result<(), RebalanceError> {
    let Some(u) = parts.first() else {
        return Ok(());
    };
    let (Some(g), Some(s), Some(d)) = (
        p.groups.iter().find(|g| g.label == u.grp),
        new.shard_index(&u.src),
        new.shard_index(&u.dst),
    ) else {
        return Err(RebalanceError::Maps(format!(
            "recorded unit {} does not match the maps",
            u.unit
        )));
    };
    let job = UnitJob {
        old,
        new,
        group: g,
        src: s,
        dst: d,
        parts: parts
            .iter()
            .map(|u| mover::PartSpec {
                name: u.unit.clone(),
                part: u.part.max(0) as u32,
                gids: (
                    format!("swrb_{run_id}_{}_src", u.seq),
                    format!("swrb_{run_id}_{}_dst", u.seq),
                ),
            })
            .collect(),
        nparts: u.parts.max(1) as u32,
        run_id,
        control,
        progress,
    };
    for (r, u) in job.run().await?.into_iter().zip(parts) {
        summary.rows += r.rows;
        summary.units += 1;
        summary.longest_pause = summary.longest_pause.max(r.pause);
        progress.log(&format!(
            "unit {}: {} rows moved, statements held {} ms",
            u.unit,
            r.rows,
            r.pause.as_millis()
        ));
    }
    Ok(())
}
