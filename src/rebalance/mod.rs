//! Online rebalancing: `shardwire rebalance --from OLD --to NEW`.
//!
//! The command compares two shard maps, counts on the shards the rows whose owner changes
//! ([`plan`]), and moves them in units while clients keep using proxies that run the old
//! map ([`mover`]). Proxies follow through the control tables ([`control`], [`watch`]) and
//! hold statements for the short moment a unit switches ([`crate::session::gate`]). Progress is durable:
//! running the same command again after a crash finishes the job.
//!
//! Order of a run:
//! 1. record the run and its units (phase `preparing`): proxies arm their gate;
//! 2. install change capture on the source shards;
//! 3. copy reference tables to shards the new map adds, while proxies hold;
//! 4. phase `running`: proxies route through the transition;
//! 5. move every row unit, then every directory key whose static entry changed;
//! 6. phase `complete`: proxies route with the new map; capture is removed.
//!
//! This file holds the entry ([`run`]) and its types; `runplan` counts, prints and checks what
//! moves, `execute` carries out a recorded run, `side_moves` copies reference tables and
//! moves directory keys, and `statements` holds the statements the run and the mover share.

pub mod control;
mod execute;
pub mod mover;
pub mod plan;
pub mod progress;
mod runplan;
mod side_moves;
mod statements;
pub mod watch;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sharding::shardmap::{ConfigError, ShardMap};
use execute::{execute, record_run, recover_switches};
use mover::connect;
use runplan::{check_targets, make_plan, print_plan};

/// Rows per unit the plan aims at by default (`--unit-rows`): a pair with more is cut into
/// parts, so the time statements are held for one switch stays short (about 3–5 µs per row
/// on loopback); every part reads its source tables once more.
pub const UNIT_ROWS: u64 = 50_000;

/// Why a rebalance failed.
#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    /// A map file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// A map does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The two maps cannot be rebalanced into each other.
    #[error("{0}")]
    Maps(String),
    /// A shard could not be reached.
    #[error("shard {0}: {1}")]
    Shard(String, tokio_postgres::Error),
    /// A statement on a shard failed.
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    /// A binary COPY stream was malformed.
    #[error(transparent)]
    Copy(#[from] crate::wire::copybin::CopyBinError),
    /// Rows could not be interpreted.
    #[error("{0}")]
    Data(String),
    /// Tables differ between shards.
    #[error("{0}")]
    Schema(String),
    /// Source and target disagree; the unit was stopped and the source left untouched.
    #[error("verification failed: {0}")]
    Verify(String),
    /// Proxies or locks did not allow a switch in time.
    #[error("{0}")]
    Busy(String),
    /// Another rebalance is recorded and unfinished.
    #[error("{0}")]
    InProgress(String),
    /// The user did not confirm.
    #[error("cancelled: nothing was changed")]
    Cancelled,
    /// A directory key move failed.
    #[error("directory: {0}")]
    Directory(String),
}

/// What to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The map proxies run now.
    pub from: PathBuf,
    /// The map to move to.
    pub to: PathBuf,
    /// Only print the plan.
    pub dry_run: bool,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Rows per unit the plan aims at (see [`UNIT_ROWS`]).
    pub unit_rows: u64,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Rows moved by this invocation.
    pub rows: u64,
    /// Units finished by this invocation.
    pub units: usize,
    /// Wall time.
    pub seconds: f64,
    /// Longest time statements were held for a switch.
    pub longest_pause: Duration,
}

impl Summary {
    /// The machine-readable summary line.
    pub fn line(&self) -> String {
        let rate = if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        };
        format!(
            "summary rows={} units={} seconds={:.2} rows_per_s={:.0} longest_pause_ms={}",
            self.rows,
            self.units,
            self.seconds,
            rate,
            self.longest_pause.as_millis()
        )
    }
}

/// Runs `shardwire rebalance`; prints the plan (and, when executing, progress and a
/// summary line) itself.
pub async fn run(opts: &Options) -> Result<Summary, RebalanceError> {
    let started = Instant::now();
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| RebalanceError::Read(p.display().to_string(), e))
    };
    let (from_text, to_text) = (read(&opts.from)?, read(&opts.to)?);
    // Both files must load on their own, with their own error messages.
    ShardMap::from_yaml_str(&from_text, &opts.from.display().to_string())?;
    ShardMap::from_yaml_str(&to_text, &opts.to.display().to_string())?;
    let (old, new) = ShardMap::transition_pair(&from_text, &to_text, None)?;
    plan::validate(&old, &new)?;
    let timeout = new.pool.connect_timeout;
    let mut clients = Vec::with_capacity(new.shards.len());
    for s in &new.shards {
        clients.push(connect(s, timeout).await?);
    }
    if !opts.dry_run {
        let control = &clients[old.default_shard];
        if let Some(r) = control::read_run(control).await? {
            if r.from_map == from_text && r.to_map == to_text && r.phase != "complete" {
                // Proxies may be held by a killed run: finish its switch and let them go
                // before the (slow) counting starts.
                recover_switches(&new, &clients, control, r.run_id).await?;
            }
            if r.from_map == from_text && r.to_map == to_text && r.phase == "complete" {
                eprintln!("rebalance {}: already complete; nothing to do", r.run_id);
                return Ok(Summary {
                    seconds: started.elapsed().as_secs_f64(),
                    ..Summary::default()
                });
            }
        }
    }
    let plan = make_plan(&old, &new, &clients, opts.unit_rows.max(1)).await?;
    print_plan(&new, &plan);
    if opts.dry_run {
        return Ok(Summary::default());
    }
    for (i, c) in clients.iter().enumerate() {
        let n: String = c
            .query_one("SHOW max_prepared_transactions", &[])
            .await?
            .get(0);
        if n.trim() == "0" {
            return Err(RebalanceError::Maps(format!(
                "shard {} has max_prepared_transactions = 0; every switch commits source and target with two-phase commit: set it above 0 (e.g. 100) and restart that Postgres",
                new.shards[i].name
            )));
        }
    }
    check_targets(&new, &plan, &clients).await?;
    if !opts.yes && !confirm()? {
        return Err(RebalanceError::Cancelled);
    }
    let control = &clients[old.default_shard];
    crate::sharding::control_schema::prepare(control).await?;
    control.batch_execute(control::SCHEMA).await?;
    for (id, secs) in control::stale_proxies(control).await? {
        eprintln!(
            "warning: proxy {id} was last seen {secs:.0} s ago; the rebalance does not wait for it. \
             If it is still serving clients, stop it: it would not learn about switches"
        );
    }
    let run_id = match control::read_run(control).await? {
        Some(r) if r.from_map == from_text && r.to_map == to_text => {
            if r.phase == "complete" {
                eprintln!("rebalance {}: already complete; nothing to do", r.run_id);
                let s = Summary {
                    seconds: started.elapsed().as_secs_f64(),
                    ..Summary::default()
                };
                return Ok(s);
            }
            eprintln!("rebalance {}: resuming", r.run_id);
            r.run_id
        }
        Some(r) if r.phase != "complete" => {
            return Err(RebalanceError::InProgress(format!(
                "rebalance {} (another pair of maps) is unfinished on shard {}; run that one again to finish it",
                r.run_id, old.shards[old.default_shard].name
            )))
        }
        prev => record_run(control, &new, &plan, &from_text, &to_text, prev).await?,
    };
    execute(&old, &new, &plan, &clients, run_id, started).await
}

/// Asks on the terminal.
fn confirm() -> Result<bool, RebalanceError> {
    if !std::io::stdin().is_terminal() {
        return Err(RebalanceError::Maps(
            "not on a terminal: pass --yes to run the rebalance without confirmation".into(),
        ));
    }
    eprint!("Move these rows now? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| RebalanceError::Read("stdin".into(), e))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
