//! Online rebalancing: `shardwire rebalance --from OLD --to NEW`.
//!
//! The command compares two shard maps, counts on the shards the rows whose owner changes
//! ([`plan`]), and moves them in units while clients keep using proxies that run the old
//! map ([`mover`]). Proxies follow through the control tables ([`control`], [`watch`]) and
//! hold statements for the short moment a unit switches ([`gate`]). Progress is durable:
//! running the same command again after a crash finishes the job.
//!
//! Order of a run:
//! 1. record the run and its units (phase `preparing`): proxies arm their gate;
//! 2. install change capture on the source shards;
//! 3. copy reference tables to shards the new map adds, while proxies hold;
//! 4. phase `running`: proxies route through the transition;
//! 5. move every row unit, then every directory key whose static entry changed;
//! 6. phase `complete`: proxies route with the new map; capture is removed.

pub mod control;
pub mod copybin;
pub mod mover;
pub mod plan;
pub mod progress;
pub mod watch;

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::sharding::shardmap::{ConfigError, ShardMap, TableRule};
use mover::{connect, finish_prepared, set_hold, wait_acks, UnitJob};
use plan::{quote_ident, Group};
use progress::Progress;

/// Rows per unit the plan aims at by default (`--unit-rows`): a pair with more is cut into
/// parts, so the time statements are held for one switch stays short (about 3–5 µs per row
/// on loopback); every part reads its source tables once more.
pub const UNIT_ROWS: u64 = 50_000;
/// Most parts one pair is cut into.
const MAX_PARTS: u64 = 64;

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
    Copy(#[from] copybin::CopyBinError),
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

/// A directory key whose static entry moves it.
#[derive(Debug, Clone)]
struct DirMove {
    /// Rows of the directory tables on every shard (the same for every move).
    all_rows: u64,
    key: String,
    src: usize,
    dst: usize,
    /// Rows per directory table.
    rows: Vec<(String, u64)>,
}

/// The plan, counted.
struct Plan {
    groups: Vec<Group>,
    counts: plan::Counts,
    /// (group label, src, dst, parts), in execution order.
    row_units: Vec<(String, usize, usize, u32)>,
    /// (reference table, src, dst, rows).
    reference: Vec<(String, usize, usize, u64)>,
    directory: Vec<DirMove>,
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

/// Settles the switches a killed run left: a unit recorded `switched` has its prepared
/// transactions committed, any other unit's are rolled back; then the proxies are released.
async fn recover_switches(
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
            control
                .execute(
                    "UPDATE shardwire_rebalance_units SET state = 'done' WHERE run_id = $1 AND unit = $2",
                    &[&run_id, &u.unit],
                )
                .await?;
        }
        if a || b || commit {
            eprintln!(
                "rebalance {run_id}: unit {}: {} the switch a killed run left",
                u.unit,
                if commit { "finished" } else { "rolled back" }
            );
        }
    }
    set_hold(control, false).await?;
    Ok(())
}

/// Counts everything that moves.
async fn make_plan(
    old: &ShardMap,
    new: &ShardMap,
    clients: &[Client],
    unit_rows: u64,
) -> Result<Plan, RebalanceError> {
    let groups = plan::groups(new);
    let counts = plan::count(old, new, &groups, clients).await?;
    let mut row_units = Vec::new();
    for g in &groups {
        let mut pairs = plan::pairs(old, new, g);
        for (t, s, d) in counts.moves.keys() {
            if g.tables.iter().any(|x| x.name == *t) {
                pairs.insert((*s, *d));
            }
        }
        for (s, d) in pairs {
            let rows: u64 = counts
                .moves
                .iter()
                .filter(|((t, a, b), _)| {
                    *a == s && *b == d && g.tables.iter().any(|x| x.name == *t)
                })
                .map(|(_, n)| *n)
                .sum();
            let parts = rows.div_ceil(unit_rows).clamp(1, MAX_PARTS) as u32;
            row_units.push((g.label.clone(), s, d, parts));
        }
    }
    let mut reference = Vec::new();
    let added: Vec<usize> = (0..new.shards.len())
        .filter(|&i| old.shards[i].weight == 0 && new.shards[i].weight > 0)
        .collect();
    for (name, rule) in new.tables() {
        if matches!(rule, TableRule::Reference) {
            for &d in &added {
                let src = old.default_shard;
                let rows: i64 = clients[src]
                    .query_one(&format!("SELECT count(*) FROM {}", quote_ident(name)), &[])
                    .await?
                    .get(0);
                reference.push((name.to_owned(), src, d, rows as u64));
            }
        }
    }
    let directory = directory_moves(new, clients).await?;
    Ok(Plan {
        groups,
        counts,
        row_units,
        reference,
        directory,
    })
}

/// Directory keys whose static entry in the new map differs from the directory table.
async fn directory_moves(
    new: &ShardMap,
    clients: &[Client],
) -> Result<Vec<DirMove>, RebalanceError> {
    let Some(dir) = &new.directory else {
        return Ok(Vec::new());
    };
    let c = &clients[dir.shard];
    if !plan::table_exists(c, &dir.table).await? {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            &format!("SELECT key, shard FROM {}", quote_ident(&dir.table)),
            &[],
        )
        .await?;
    let live: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let tables: Vec<_> = new
        .sharded_tables()
        .filter(|t| t.directory().is_some())
        .cloned()
        .collect();
    let mut all_rows = 0u64;
    for t in &tables {
        for c in clients {
            if plan::table_exists(c, &t.name).await? {
                let n: i64 = c
                    .query_one(
                        &format!("SELECT count(*) FROM {}", quote_ident(&t.name)),
                        &[],
                    )
                    .await?
                    .get(0);
                all_rows += n as u64;
            }
        }
    }
    let mut out = Vec::new();
    for (key, dst) in &dir.statics {
        let Some(src) = live.get(key).and_then(|s| new.shard_index(s)) else {
            continue;
        };
        if src == *dst {
            continue;
        }
        let mut counts = Vec::new();
        for t in &tables {
            let n: i64 = clients[src]
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {} WHERE {}::text = $1",
                        quote_ident(&t.name),
                        quote_ident(&t.key)
                    ),
                    &[key],
                )
                .await?
                .get(0);
            counts.push((t.name.clone(), n as u64));
        }
        out.push(DirMove {
            all_rows,
            key: key.clone(),
            src,
            dst: *dst,
            rows: counts,
        });
    }
    Ok(out)
}

/// Prints the plan on stdout: `move <table> <src> -> <dst> <rows>` lines, reference copies,
/// and `total <moving> of <rows>`.
fn print_plan(new: &ShardMap, p: &Plan) {
    let name = |i: usize| new.shards[i].name.as_str();
    println!("rebalance plan (rows counted on the shards):");
    let mut moving = 0u64;
    for ((t, s, d), n) in &p.counts.moves {
        println!("move {t} {} -> {} {n}", name(*s), name(*d));
        moving += n;
    }
    for m in &p.directory {
        for (t, n) in &m.rows {
            println!("move {t} {} -> {} {n}", name(m.src), name(m.dst));
            moving += n;
        }
        println!("  (directory key '{}')", m.key);
    }
    for (t, s, d, n) in &p.reference {
        println!(
            "copy {t} {} -> {} {n} (reference table)",
            name(*s),
            name(*d)
        );
    }
    if p.counts.misplaced > 0 {
        println!(
            "warning: {} rows sit on a shard the old map does not place them on (rows an interrupted run already moved, or rows written around the proxy); they are left where they are",
            p.counts.misplaced
        );
    }
    let total = p.counts.total + p.directory.first().map_or(0, |m| m.all_rows);
    println!("total {moving} of {total}");
    println!(
        "units: {} row units ({} shard pairs), {} reference copies, {} directory keys",
        p.row_units.iter().map(|u| u.3 as usize).sum::<usize>(),
        p.row_units.len(),
        p.reference.len(),
        p.directory.len()
    );
}

/// Refuses, before anything is recorded, when a table is missing on a shard that is to
/// receive its rows (the command copies rows, not schemas).
async fn check_targets(new: &ShardMap, p: &Plan, clients: &[Client]) -> Result<(), RebalanceError> {
    let mut needed: Vec<(&str, usize)> = Vec::new();
    for (label, _, d, _) in &p.row_units {
        if let Some(g) = p.groups.iter().find(|g| &g.label == label) {
            needed.extend(g.tables.iter().map(|t| (t.name.as_str(), *d)));
        }
    }
    needed.extend(p.reference.iter().map(|(t, _, d, _)| (t.as_str(), *d)));
    for m in &p.directory {
        for (t, _) in &m.rows {
            needed.push((t.as_str(), m.dst));
        }
    }
    needed.sort_unstable();
    needed.dedup();
    for (table, d) in needed {
        if !plan::table_exists(&clients[d], table).await? {
            return Err(RebalanceError::Schema(format!(
                "table {table} does not exist on shard {}; create it there (empty, with the same columns) and run the command again",
                new.shards[d].name
            )));
        }
    }
    Ok(())
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

/// Records a new run and its units (phase `preparing`); its id.
async fn record_run(
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
    let mut units: Vec<(String, &str, String, String, String, i32, i32)> = Vec::new();
    for (t, s, d, _) in &p.reference {
        units.push((
            format!("reference {t} {}->{}", name(*s), name(*d)),
            "reference",
            t.clone(),
            name(*s),
            name(*d),
            0,
            1,
        ));
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
            units.push((
                u,
                "rows",
                g.clone(),
                name(*s),
                name(*d),
                part as i32,
                *parts as i32,
            ));
        }
    }
    for m in &p.directory {
        units.push((
            format!("directory {} {}->{}", m.key, name(m.src), name(m.dst)),
            "directory",
            m.key.clone(),
            name(m.src),
            name(m.dst),
            0,
            1,
        ));
    }
    control.batch_execute("BEGIN").await?;
    let res = async {
        control
            .execute("DELETE FROM shardwire_rebalance_units WHERE run_id = $1", &[&run_id])
            .await?;
        control
            .execute(
                "INSERT INTO shardwire_rebalance (id, run_id, from_map, to_map, phase, hold, epoch) \
                 VALUES (1, $1, $2, $3, 'preparing', false, $4) \
                 ON CONFLICT (id) DO UPDATE SET run_id = $1, from_map = $2, to_map = $3, phase = 'preparing', \
                 hold = false, epoch = $4, started_at = now(), finished_at = NULL",
                &[&run_id, &from_text, &to_text, &epoch],
            )
            .await?;
        for (i, (u, kind, g, s, d, part, parts)) in units.iter().enumerate() {
            control
                .execute(
                    "INSERT INTO shardwire_rebalance_units (run_id, unit, seq, kind, grp, src, dst, part, parts) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[&run_id, u, &(i as i32), kind, g, s, d, part, parts],
                )
                .await?;
        }
        control
            .execute("SELECT pg_notify($1, 'run')", &[&control::CHANNEL])
            .await?;
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    match res {
        Ok(()) => control.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = control.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    }
    eprintln!("rebalance {run_id}: recorded {} units", units.len());
    Ok(run_id)
}

/// Sets the phase (bumping the epoch and notifying); the new epoch.
async fn set_phase(control: &Client, phase: &str) -> Result<i64, RebalanceError> {
    let r = control
        .query_one(
            "WITH e AS (UPDATE shardwire_rebalance SET phase = $1, hold = false, epoch = epoch + 1, \
             finished_at = CASE WHEN $1 = 'complete' THEN now() END WHERE id = 1 RETURNING epoch) \
             SELECT e.epoch, pg_notify($2, e.epoch::text) IS NULL FROM e",
            &[&phase, &control::CHANNEL],
        )
        .await?;
    Ok(r.get(0))
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
async fn execute(
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
    set_hold(control, false).await?;
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
        let epoch = set_phase(control, "preparing").await?;
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
            let epoch = set_hold(control, true).await?;
            if let Err(e) = require_acks(control, epoch, Duration::from_secs(10), "the hold").await
            {
                set_hold(control, false).await?;
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
                        set_hold(control, false).await?;
                        return Err(e);
                    }
                };
                control
                    .execute(
                        "UPDATE shardwire_rebalance_units SET state = 'done', rows_moved = $3 WHERE run_id = $1 AND unit = $2",
                        &[&run_id, &u.unit, &(n as i64)],
                    )
                    .await?;
                summary.units += 1;
            }
            // Proxies adopt the transition before they let statements through again.
            let epoch = set_phase(control, "running").await?;
            summary.longest_pause = summary.longest_pause.max(held_at.elapsed());
            require_acks(control, epoch, Duration::from_secs(30), "the transition").await?;
        } else {
            let epoch = set_phase(control, "running").await?;
            require_acks(control, epoch, Duration::from_secs(30), "the transition").await?;
        }
    } else {
        let epoch = set_phase(control, "running").await?;
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
        let state: String = control
            .query_one(
                "SELECT state FROM shardwire_rebalance_units WHERE run_id = $1 AND unit = $2",
                &[&run_id, &u.unit],
            )
            .await?
            .get(0);
        match state.as_str() {
            "done" => {}
            "switched" => {
                finish_prepared(&clients[d], &gids.1, true).await?;
                finish_prepared(&clients[s], &gids.0, true).await?;
                control
                    .execute(
                        "UPDATE shardwire_rebalance_units SET state = 'done' WHERE run_id = $1 AND unit = $2",
                        &[&run_id, &u.unit],
                    )
                    .await?;
                progress.log(&format!(
                    "unit {}: finished the switch a killed run had committed",
                    u.unit
                ));
                set_hold(control, false).await?;
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
    let epoch = set_phase(control, "complete").await?;
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

/// Copies reference table `table` from `src` to `dst` (replacing what `dst` holds), with the
/// source locked against writes; the rows copied.
async fn copy_reference(
    src: &crate::sharding::shard::ShardInfo,
    dst: &crate::sharding::shard::ShardInfo,
    table: &str,
    timeout: Duration,
) -> Result<u64, RebalanceError> {
    let s = connect(src, timeout).await?;
    let t = connect(dst, timeout).await?;
    let name = quote_ident(table);
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
async fn move_directory_keys(
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
        control
            .execute(
                "UPDATE shardwire_rebalance_units SET state = 'done', rows_moved = $3 WHERE run_id = $1 AND unit = $2",
                &[&run_id, &u.unit, &(n as i64)],
            )
            .await?;
    }
    task.abort();
    Ok((rows, moved))
}
