//! Online rebalancing end to end: `shardwire rebalance --from OLD.yaml --to NEW.yaml` run as
//! a separate process against real shards while clients keep using a proxy started (in this
//! process) with the OLD map.
//!
//! What is proven, and how:
//! - **Plan**: `--dry-run` lists exactly the (table, source, target, rows) moves computed
//!   independently here from the two maps (hash rings via `ShardMap::hash_shard`, range
//!   bounds and directory entries written out in the test), and changes nothing.
//! - **Placement**: afterwards every row on every shard is on the shard the NEW map names
//!   (each shard is read directly and every key recomputed in Rust); co-located orders stay
//!   with their users; reference tables are copied to new shards; drained shards are empty.
//! - **No loss, no duplicates**: every statement a writer gets acknowledged through the
//!   proxy is applied to an unsharded reference database, and the count plus an
//!   order-independent checksum (`sum(hashtext(t::text))`) of each table over the union of
//!   the shards must equal the reference's. Killing the command with SIGKILL and running it
//!   again must give the same result.
//! - **Online**: a writer and a reader keep using the OLD proxy during the move; the reader
//!   must always find each user exactly once and scatter counts must stay exact; the
//!   longest statement latency is printed. After the command exits the same proxy routes
//!   with the NEW map.
//! - **Output**: the plan's `move`/`total` lines and the final `summary` line parse; last in
//!   each test (after the data checks), stdout and stderr must be plain text with no log
//!   lines on stdout.
//!
//! Data is loaded straight into the shards (and the reference) with `COPY FROM STDIN`,
//! placed by the OLD map. Every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Proxy, TestEnv};
use futures::SinkExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

// ----------------------------------------------------------------------------------------
// Sizes and limits
// ----------------------------------------------------------------------------------------

/// Users loaded for the 3 -> 4 growth test (orders: [`ORDERS_PER_USER`] each).
const GROW_USERS: i64 = 250_000;
/// Users loaded for the kill -9 test.
const KILL_USERS: i64 = 200_000;
/// Users loaded for the 4 -> 3 drain test.
const DRAIN_USERS: i64 = 20_000;
/// Orders per loaded user (order ids 1..=3).
const ORDERS_PER_USER: i64 = 3;
/// Rows of the reference table `countries`.
const COUNTRIES: usize = 50;
/// Events loaded for the range test.
const RANGE_EVENTS: i64 = 30_000;
/// Documents per tenant for the directory test.
const DOCS_PER_TENANT: i64 = 3_000;
/// First id of rows the writers create (loaded ids stay below it).
const FIRST_NEW_ID: i64 = 10_000_000;

/// Limit for the command on the large data sets.
const LONG_RUN: Duration = Duration::from_secs(600);
/// Limit for the command otherwise.
const SHORT_RUN: Duration = Duration::from_secs(180);
/// One statement through the proxy taking longer than this counts as hung.
const STATEMENT_LIMIT: Duration = Duration::from_secs(30);
/// How long the load keeps going after the command exits (on the NEW map by then).
const AFTER_EXIT: Duration = Duration::from_secs(1);
/// Statements the writer must have acknowledged before the command starts.
const WARMUP_WRITES: u64 = 20;

// ----------------------------------------------------------------------------------------
// Schemas and maps
// ----------------------------------------------------------------------------------------

const USERS_DDL: &str =
    "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, balance bigint NOT NULL)";
const ORDERS_DDL: &str = "CREATE TABLE orders (user_id bigint NOT NULL, order_id bigint NOT NULL, \
                          amount bigint NOT NULL, note text, PRIMARY KEY (user_id, order_id))";
const COUNTRIES_DDL: &str = "CREATE TABLE countries (code text PRIMARY KEY, name text)";
const EVENTS_DDL: &str = "CREATE TABLE events (created_at timestamptz NOT NULL, \
                          id bigint NOT NULL, payload text, PRIMARY KEY (created_at, id))";
const TENANT_DOCS_DDL: &str = "CREATE TABLE tenant_docs (tenant_id text NOT NULL, \
                               doc_id bigint NOT NULL, body text, \
                               PRIMARY KEY (tenant_id, doc_id))";

/// users and orders hashed and co-located by user id, countries everywhere.
const HASH_TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n\
                           orders: { key: user_id, type: bigint, strategy: hash }\n\
                           countries: { strategy: reference }\n";

/// `events` by range of `created_at`: below `first` on s0, below `second` on s1, rest s2.
fn events_tables(first: &str, second: &str) -> String {
    format!(
        r#"events:
  key: created_at
  type: timestamptz
  strategy: range
  ranges:
    - {{ below: "{first}", shard: s0 }}
    - {{ below: "{second}", shard: s1 }}
    - {{ shard: s2 }}
"#
    )
}

/// The directory, on s0 (top-level map section).
const DIRECTORY_EXTRA: &str = "directory: { shard: s0, table: shardwire_directory }\n";

/// `tenant_docs` by directory, with `acme` on `acme_shard`.
fn docs_tables(acme_shard: &str) -> String {
    format!(
        r#"tenant_docs:
  key: tenant_id
  type: text
  strategy: directory
  entries: {{ acme: {acme_shard}, globex: s1, initech: s2 }}
  fallback: reject
"#
    )
}

/// A complete shard map over env shards `shards` (named `s{i}` by env index, so a name
/// means the same database in every map), like `TestEnv::shard_map_yaml_with` with `app`
/// an admin.
fn map_yaml(env: &TestEnv, shards: &[usize], tables: &str, extra: &str) -> String {
    env.shard_map_yaml_on(shards, tables, extra, &[], true)
}

/// The OLD and NEW maps, parsed and written to files for the command (whose output files
/// go to the same temporary directory).
struct Maps {
    old_yaml: String,
    old: ShardMap,
    new: ShardMap,
    old_path: PathBuf,
    new_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Maps {
    fn new(old_yaml: String, new_yaml: String) -> Maps {
        let parse = |yaml: &str, what: &str| {
            ShardMap::from_yaml_str(yaml, what)
                .unwrap_or_else(|e| panic!("invalid {what} map: {e}\n--- map ---\n{yaml}"))
        };
        let old = parse(&old_yaml, "OLD");
        let new = parse(&new_yaml, "NEW");
        let dir = tempfile::tempdir().expect("temporary directory");
        let old_path = dir.path().join("old.yaml");
        let new_path = dir.path().join("new.yaml");
        std::fs::write(&old_path, &old_yaml).expect("write old.yaml");
        std::fs::write(&new_path, &new_yaml).expect("write new.yaml");
        Maps {
            old_yaml,
            old,
            new,
            old_path,
            new_path,
            dir,
        }
    }
}

/// Name of the shard `map` hashes integer key `id` to.
fn hash_owner(map: &ShardMap, id: i64) -> &str {
    &map.shard_names()[map.hash_shard(&KeyValue::Int(id))]
}

/// Env shard index of a shard named `s{i}`.
fn env_index(name: &str) -> usize {
    name.strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("shard name {name:?} is not s<env index>"))
}

// ----------------------------------------------------------------------------------------
// Time (no chrono in this crate)
// ----------------------------------------------------------------------------------------

const MICROS: i64 = 1_000_000;
const DAY: i64 = 86_400 * MICROS;

use common::{civil_from_days, days_from_civil};

/// Microseconds since the Unix epoch of midnight UTC on a date.
fn utc(y: i64, m: i64, d: i64) -> i64 {
    days_from_civil(y, m, d) * DAY
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00` (always an explicit UTC offset).
fn ts_literal(us: i64) -> String {
    let (y, m, d) = civil_from_days(us.div_euclid(DAY));
    let t = us.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}+00",
        t / (3600 * MICROS),
        t % (3600 * MICROS) / (60 * MICROS),
        t % (60 * MICROS) / MICROS,
        t % MICROS
    )
}

fn system_time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).expect("after 1970"))
}

/// The range test's bounds, OLD and NEW.
struct Bounds {
    first: i64,
    second: i64,
}

const OLD_FIRST: &str = "2025-01-01T00:00:00Z";
const OLD_SECOND: &str = "2026-01-01T00:00:00Z";
const NEW_FIRST: &str = "2024-07-01T00:00:00Z";
const NEW_SECOND: &str = "2026-03-01T00:00:00Z";

fn old_bounds() -> Bounds {
    Bounds {
        first: utc(2025, 1, 1),
        second: utc(2026, 1, 1),
    }
}

fn new_bounds() -> Bounds {
    Bounds {
        first: utc(2024, 7, 1),
        second: utc(2026, 3, 1),
    }
}

impl Bounds {
    /// The shard an instant's range names.
    fn owner(&self, us: i64) -> &'static str {
        if us < self.first {
            "s0"
        } else if us < self.second {
            "s1"
        } else {
            "s2"
        }
    }
}

// ----------------------------------------------------------------------------------------
// Client helpers
// ----------------------------------------------------------------------------------------

/// `SQLSTATE message` of a server error, or the whole error otherwise.
fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
}

/// Connects (bounded to 5 s) without panicking, spawning the connection task.
async fn try_connect(conninfo: &str) -> Result<Client, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(conninfo, NoTls),
    )
    .await
    {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(format!("connect: {}", err_text(&e))),
        Err(_) => Err("connect: timed out after 5 s".to_string()),
    }
}

/// Runs `ddls` directly on every env shard and on the reference database.
async fn create_everywhere(env: &TestEnv, ddls: &[&str]) {
    let sql = ddls.join(";\n");
    for i in 0..env.shard_count() {
        env.shard_client(i)
            .await
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("schema on shard {i}: {}", err_text(&e)));
    }
    env.reference_client()
        .await
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("schema on the reference database: {}", err_text(&e)));
}

/// One `COPY ... FROM STDIN` (text format) of `data`, expected to load `rows` rows.
struct CopyJob {
    sql: String,
    data: String,
    rows: u64,
}

/// Sends `data` in 1 MiB pieces (COPY data is a stream: pieces need not end on a line).
async fn copy_text(c: &Client, job: CopyJob) -> Result<u64, tokio_postgres::Error> {
    let data = Bytes::from(job.data);
    let mut sink = Box::pin(c.copy_in::<_, Bytes>(job.sql.as_str()).await?);
    let mut at = 0;
    while at < data.len() {
        let end = (at + (1 << 20)).min(data.len());
        sink.send(data.slice(at..end)).await?;
        at = end;
    }
    sink.as_mut().finish().await
}

/// Runs the COPY jobs of each database URL, one task per database, all concurrently.
async fn load_copies(jobs: BTreeMap<String, Vec<CopyJob>>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (url, jobs) in jobs {
        tasks.spawn(async move {
            let c = common::connect(&url).await;
            for job in jobs {
                let (sql, rows) = (job.sql.clone(), job.rows);
                let n = copy_text(&c, job)
                    .await
                    .unwrap_or_else(|e| panic!("{sql} on {url}: {}", err_text(&e)));
                assert_eq!(n, rows, "{sql} on {url}: rows loaded");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("COPY task panicked");
    }
}

/// Text-format COPY buffers of one table, per destination URL.
#[derive(Default)]
struct Buffers(BTreeMap<String, (String, u64)>);

impl Buffers {
    fn push(&mut self, url: &str, line: &str) {
        let e = self.0.entry(url.to_string()).or_default();
        e.0.push_str(line);
        e.1 += 1;
    }

    /// Adds one [`CopyJob`] per destination to `jobs`.
    fn into_jobs(self, sql: &str, jobs: &mut BTreeMap<String, Vec<CopyJob>>) {
        for (url, (data, rows)) in self.0 {
            jobs.entry(url).or_default().push(CopyJob {
                sql: sql.to_string(),
                data,
                rows,
            });
        }
    }
}

// ----------------------------------------------------------------------------------------
// Data sets
// ----------------------------------------------------------------------------------------

fn user_line(id: i64) -> String {
    format!("{id}\tuser-{id}\t{}\n", id % 1000)
}

fn order_line(user_id: i64, order_id: i64) -> String {
    let note = if (user_id + order_id) % 10 == 0 {
        "\\N".to_string()
    } else {
        format!("note {user_id}/{order_id} \"ü\"")
    };
    format!(
        "{user_id}\t{order_id}\t{}\t{note}\n",
        (user_id * 7 + order_id) % 10_000
    )
}

/// The 50 reference rows of `countries`.
fn countries() -> Vec<(String, String)> {
    (0..COUNTRIES)
        .map(|i| (format!("C{i:02}"), format!("Country {i}")))
        .collect()
}

/// Users `1..=n` with [`ORDERS_PER_USER`] orders each, on the shard `map` hashes them to,
/// and `countries` on every shard of `map`; everything into the reference database too.
async fn load_hash_data(env: &TestEnv, map: &ShardMap, n: i64) {
    let reference = env.reference_url();
    let mut users = Buffers::default();
    let mut orders = Buffers::default();
    for id in 1..=n {
        let url = env.shard_url(env_index(hash_owner(map, id)));
        let u = user_line(id);
        users.push(&url, &u);
        users.push(&reference, &u);
        for k in 1..=ORDERS_PER_USER {
            let o = order_line(id, k);
            orders.push(&url, &o);
            orders.push(&reference, &o);
        }
    }
    let mut countries_buf = Buffers::default();
    for (code, name) in countries() {
        let line = format!("{code}\t{name}\n");
        for s in map.shard_names() {
            countries_buf.push(&env.shard_url(env_index(s)), &line);
        }
        countries_buf.push(&reference, &line);
    }
    let mut jobs = BTreeMap::new();
    users.into_jobs("COPY users (id, name, balance) FROM STDIN", &mut jobs);
    orders.into_jobs(
        "COPY orders (user_id, order_id, amount, note) FROM STDIN",
        &mut jobs,
    );
    countries_buf.into_jobs("COPY countries (code, name) FROM STDIN", &mut jobs);
    load_copies(jobs).await;
}

/// Instant of loaded event `i` (0-based; id `i + 1`): evenly spread over 2024..2026 UTC.
fn event_us(i: i64) -> i64 {
    let (start, end) = (utc(2024, 1, 1), utc(2027, 1, 1));
    start + i * ((end - start) / RANGE_EVENTS)
}

/// [`RANGE_EVENTS`] events placed by `bounds`, into their shards and the reference.
async fn load_events(env: &TestEnv, bounds: &Bounds) {
    let reference = env.reference_url();
    let mut events = Buffers::default();
    for i in 0..RANGE_EVENTS {
        let us = event_us(i);
        let line = format!("{}\t{}\tev-{}\n", ts_literal(us), i + 1, i + 1);
        events.push(&env.shard_url(env_index(bounds.owner(us))), &line);
        events.push(&reference, &line);
    }
    let mut jobs = BTreeMap::new();
    events.into_jobs(
        "COPY events (created_at, id, payload) FROM STDIN",
        &mut jobs,
    );
    load_copies(jobs).await;
}

// ----------------------------------------------------------------------------------------
// The command
// ----------------------------------------------------------------------------------------

/// A started `shardwire rebalance`, its stdout and stderr going to files.
struct Running {
    child: tokio::process::Child,
    args: String,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
}

/// How a run ended.
struct Outcome {
    args: String,
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// `shardwire rebalance --from OLD --to NEW <extra>`.
fn spawn_rebalance(maps: &Maps, extra: &[&str]) -> Running {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let out = maps.dir.path().join(format!("run{n}.stdout"));
    let err = maps.dir.path().join(format!("run{n}.stderr"));
    let file = |p: &PathBuf| std::fs::File::create(p).expect("create output file");
    // SHARDWIRE_REBALANCE_BIN runs another build (e.g. target/release/shardwire, to
    // measure the copy rate) against the same scenario.
    let bin = std::env::var("SHARDWIRE_REBALANCE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_shardwire").to_string());
    let child = tokio::process::Command::new(bin)
        .arg("rebalance")
        .arg("--from")
        .arg(&maps.old_path)
        .arg("--to")
        .arg(&maps.new_path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(file(&out))
        .stderr(file(&err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shardwire rebalance");
    Running {
        child,
        args: format!("rebalance --from OLD --to NEW {}", extra.join(" ")),
        out,
        err,
        started: Instant::now(),
    }
}

impl Running {
    /// Waits for the exit, up to `limit` (then kills it and fails the test).
    async fn finish(mut self, limit: Duration) -> Outcome {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("waiting for shardwire rebalance");
                self.outcome(Some(status))
            }
            Err(_) => {
                let _ = self.child.kill().await;
                let o = self.outcome(None);
                panic!(
                    "`{}` did not finish within {limit:?}\n{}",
                    o.args,
                    o.describe()
                );
            }
        }
    }

    /// Waits until something is on its stderr (or it exited), up to `limit`; returns the
    /// time since it started.
    async fn wait_for_stderr(&mut self, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit;
        loop {
            let written = std::fs::metadata(&self.err).map_or(0, |m| m.len()) > 0;
            if written || self.child.try_wait().expect("try_wait").is_some() {
                return self.started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "`{}` wrote nothing to stderr within {limit:?}",
                self.args
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL (if it is still running) and reap it.
    async fn kill(mut self) -> Outcome {
        let status = match self.child.try_wait().expect("try_wait") {
            Some(s) => {
                println!("note: the command had already exited ({s}) when it was to be killed");
                Some(s)
            }
            None => {
                self.child
                    .kill()
                    .await
                    .expect("kill -9 shardwire rebalance");
                None
            }
        };
        self.outcome(status)
    }

    fn outcome(&self, status: Option<std::process::ExitStatus>) -> Outcome {
        let read = |p: &PathBuf| {
            String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
        };
        Outcome {
            args: self.args.clone(),
            status,
            stdout: read(&self.out),
            stderr: read(&self.err),
            took: self.started.elapsed(),
        }
    }
}

impl Outcome {
    /// Exit status, stdout and the end of stderr, for messages.
    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed".to_string(),
        };
        format!(
            "`shardwire {}`: {status} after {:.1?}\n--- stdout ---\n{}\n--- stderr (last 60 lines) ---\n{}",
            self.args,
            self.took,
            self.stdout.trim_end(),
            tail(&self.stderr, 60)
        )
    }

    fn expect_success(&self) {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "the command failed\n{}",
            self.describe()
        );
    }
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs the command to its end.
async fn run_rebalance(maps: &Maps, extra: &[&str], limit: Duration) -> Outcome {
    spawn_rebalance(maps, extra).finish(limit).await
}

/// (table, source shard, target shard).
type MoveKey = (String, String, String);

/// What `--dry-run` printed.
#[derive(Debug)]
struct DryRun {
    moves: BTreeMap<MoveKey, i64>,
    moving: i64,
    all: i64,
}

/// Parses the `move <table> <src> -> <dst> <rows>` lines and the one `total <moving> of
/// <all>` line after them (a line starting with `move` or `total` must have exactly that
/// shape); other lines (headers, notes) are informative and only printed.
fn parse_dry_run(stdout: &str) -> DryRun {
    let bad = |line: &str, why: &str| -> ! {
        panic!("dry run stdout: {why}: {line:?}\n--- stdout ---\n{stdout}")
    };
    let mut moves = BTreeMap::new();
    let mut total = None;
    for line in stdout.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| bad(line, "not a number")) };
        match w.as_slice() {
            ["move", t, src, "->", dst, rows] => {
                if total.is_some() {
                    bad(line, "a move after the total");
                }
                let rows = num(rows);
                if rows <= 0 {
                    bad(line, "a move of no rows");
                }
                let key = (t.to_string(), src.to_string(), dst.to_string());
                if moves.insert(key, rows).is_some() {
                    bad(line, "the same move twice");
                }
            }
            ["total", moving, "of", all] => {
                if total.replace((num(moving), num(all))).is_some() {
                    bad(line, "a second total");
                }
            }
            ["move" | "total", ..] => bad(line, "malformed"),
            _ => {
                if !line.trim().is_empty() {
                    println!("dry run, other stdout line: {line:?}");
                }
            }
        }
    }
    let (moving, all) = total.unwrap_or_else(|| bad("", "no `total` line"));
    assert_eq!(
        moving,
        moves.values().sum::<i64>(),
        "dry run: the total does not add up the moves: {moves:?}\n{stdout}"
    );
    DryRun { moves, moving, all }
}

/// Runs `--dry-run` and checks it lists exactly `want` out of `all` rows.
async fn check_dry_run(maps: &Maps, want: &BTreeMap<MoveKey, i64>, all: i64) -> DryRun {
    let out = run_rebalance(maps, &["--dry-run"], SHORT_RUN).await;
    out.expect_success();
    println!("dry run ({:.1?}):\n{}", out.took, out.stdout.trim_end());
    let got = parse_dry_run(&out.stdout);
    assert_eq!(
        &got.moves, want,
        "dry run moves differ from the ones computed from the two maps"
    );
    assert_eq!(
        got.all, all,
        "dry run: rows of the tables involved\n{}",
        out.stdout
    );
    got
}

/// The `summary rows=.. units=.. seconds=.. rows_per_s=.. longest_pause_ms=..` line, which
/// must be the last line on stdout ([`parse_summary`] prints it).
struct Summary {
    rows: i64,
    units: i64,
    seconds: f64,
    rows_per_s: f64,
    longest_pause_ms: i64,
}

fn parse_summary(out: &Outcome) -> Summary {
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let fail = |why: &str| -> ! { panic!("summary line: {why}: {line:?}\n{}", out.describe()) };
    let mut words = line.split_whitespace();
    if words.next() != Some("summary") {
        fail("the last stdout line is not `summary ...`");
    }
    let kv: HashMap<&str, &str> = words
        .map(|w| w.split_once('=').unwrap_or_else(|| fail("not key=value")))
        .collect();
    let get = |k: &str| -> &str { kv.get(k).copied().unwrap_or_else(|| fail(k)) };
    let int = |k: &str| -> i64 { get(k).parse().unwrap_or_else(|_| fail(k)) };
    let float = |k: &str| -> f64 { get(k).parse().unwrap_or_else(|_| fail(k)) };
    let s = Summary {
        rows: int("rows"),
        units: int("units"),
        seconds: float("seconds"),
        rows_per_s: float("rows_per_s"),
        longest_pause_ms: int("longest_pause_ms"),
    };
    println!(
        "summary: {} rows in {} units, {:.2} s, {:.0} rows/s, longest pause {} ms",
        s.rows, s.units, s.seconds, s.rows_per_s, s.longest_pause_ms
    );
    if s.rows < 0 || s.units < 0 || s.seconds < 0.0 || s.rows_per_s < 0.0 || s.longest_pause_ms < 0
    {
        fail("negative numbers");
    }
    s
}

/// `s` without `ESC [ ... <letter>` sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Checked last in each test, after the data: the output is plain text (stdout is not a
/// terminal, so no ANSI escapes anywhere, and log lines belong on stderr, not between the
/// plan and the summary on stdout), and moved rows were counted in at least one unit.
fn check_output_hygiene(out: &Outcome, summary: &Summary) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let escaped: Vec<&str> = text
            .lines()
            .filter(|l| l.contains('\x1b'))
            .take(5)
            .collect();
        assert!(
            escaped.is_empty(),
            "{name} of `shardwire {}` has ANSI escape sequences although it is not a terminal, \
             e.g. {escaped:#?}",
            out.args
        );
    }
    let logs: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| {
            let plain = strip_ansi(l);
            [" INFO ", " WARN ", " ERROR ", " DEBUG "]
                .iter()
                .any(|lv| plain.contains(lv))
        })
        .take(5)
        .collect();
    assert!(
        logs.is_empty(),
        "log lines on stdout of `shardwire {}` (they belong on stderr): {logs:#?}",
        out.args
    );
    assert!(
        summary.rows == 0 || summary.units > 0,
        "summary: {} rows moved in {} units",
        summary.rows,
        summary.units
    );
}

// ----------------------------------------------------------------------------------------
// Concurrent load through the OLD proxy
// ----------------------------------------------------------------------------------------

/// A statement the writer runs through the proxy and then, once acknowledged, on the
/// reference database. Every one must affect exactly one row.
struct Op {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Op {
    fn new(sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Op {
        Op { sql, params }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Statements of one writer iteration, from its random source and iteration number.
type OpGen = Box<dyn FnMut(&mut StdRng, i64) -> Vec<Op> + Send>;

/// What the writer saw.
#[derive(Debug, Default)]
struct WriterReport {
    acked: u64,
    errors: u64,
    wrong_counts: u64,
    problems: Vec<String>,
    max_latency: Duration,
    max_latency_sql: &'static str,
}

/// What the reader saw.
#[derive(Debug, Default)]
struct ReaderReport {
    lookups: u64,
    scatters: u64,
    errors: u64,
    wrong: u64,
    problems: Vec<String>,
    max_latency: Duration,
}

/// Keeps the first 10 problems, stamped with the time since the load started.
fn note(problems: &mut Vec<String>, since: Instant, what: String) {
    if problems.len() < 10 {
        problems.push(format!("[+{:.2}s] {what}", since.elapsed().as_secs_f64()));
    }
}

/// The proxy connection, reconnected when it was lost.
async fn ensure_connected<'a>(
    slot: &'a mut Option<Client>,
    conninfo: &str,
) -> Result<&'a Client, String> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        *slot = Some(try_connect(conninfo).await?);
    }
    Ok(slot.as_ref().unwrap())
}

/// The writer: `gen`'s statements one at a time through its own proxy connection, each
/// acknowledged one then applied to the reference database, until `stop`.
fn spawn_writer(
    conninfo: String,
    reference_url: String,
    mut gen: OpGen,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> JoinHandle<WriterReport> {
    tokio::spawn(async move {
        let since = Instant::now();
        let mut rng = StdRng::seed_from_u64(rand::random());
        let reference = common::connect(&reference_url).await;
        let mut proxy = None;
        let mut rep = WriterReport::default();
        let mut seq = 0;
        while !stop.load(Ordering::Relaxed) {
            for op in gen(&mut rng, seq) {
                let c = match ensure_connected(&mut proxy, &conninfo).await {
                    Ok(c) => c,
                    Err(e) => {
                        rep.errors += 1;
                        note(&mut rep.problems, since, format!("writer {e}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let params = op.params();
                let t0 = Instant::now();
                let r = tokio::time::timeout(STATEMENT_LIMIT, c.execute(op.sql, &params)).await;
                let took = t0.elapsed();
                if took > rep.max_latency {
                    rep.max_latency = took;
                    rep.max_latency_sql = op.sql;
                }
                match r {
                    Ok(Ok(n)) => {
                        if n != 1 {
                            rep.wrong_counts += 1;
                            note(
                                &mut rep.problems,
                                since,
                                format!("`{}` {:?} affected {n} rows", op.sql, op.params),
                            );
                        }
                        reference
                            .execute(op.sql, &params)
                            .await
                            .unwrap_or_else(|e| {
                                panic!("reference: `{}` {:?}: {}", op.sql, op.params, err_text(&e))
                            });
                        rep.acked += 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        rep.errors += 1;
                        note(
                            &mut rep.problems,
                            since,
                            format!("`{}` {:?}: {}", op.sql, op.params, err_text(&e)),
                        );
                    }
                    Err(_) => {
                        rep.errors += 1;
                        note(
                            &mut rep.problems,
                            since,
                            format!("`{}` {:?}: hung for {STATEMENT_LIMIT:?}", op.sql, op.params),
                        );
                        proxy = None;
                    }
                }
            }
            seq += 1;
        }
        rep
    })
}

/// The hash writer: a new user (ids from [`FIRST_NEW_ID`]) with 2 orders, a balance update
/// of a random loaded user, an amount update of a random loaded order.
fn hash_ops(loaded_users: i64) -> OpGen {
    Box::new(move |rng, seq| {
        let id = FIRST_NEW_ID + seq;
        let some_user: i64 = rng.gen_range(1..=loaded_users);
        let some_order: i64 = rng.gen_range(1..=ORDERS_PER_USER);
        vec![
            Op::new(
                "INSERT INTO users (id, name, balance) VALUES ($1, $2, $3)",
                vec![Box::new(id), Box::new(format!("live-{id}")), Box::new(0i64)],
            ),
            Op::new(
                "INSERT INTO orders (user_id, order_id, amount, note) VALUES ($1, $2, $3, $4)",
                vec![
                    Box::new(id),
                    Box::new(1i64),
                    Box::new(seq % 500),
                    Box::new(Some(format!("live {id}/1"))),
                ],
            ),
            Op::new(
                "INSERT INTO orders (user_id, order_id, amount, note) VALUES ($1, $2, $3, $4)",
                vec![
                    Box::new(id),
                    Box::new(2i64),
                    Box::new(seq % 700),
                    Box::new(None::<String>),
                ],
            ),
            Op::new(
                "UPDATE users SET balance = balance + 1 WHERE id = $1",
                vec![Box::new(some_user)],
            ),
            Op::new(
                "UPDATE orders SET amount = amount + 1 WHERE user_id = $1 AND order_id = $2",
                vec![Box::new(some_user), Box::new(some_order)],
            ),
        ]
    })
}

/// The reader: point lookups of random loaded users (exactly one row each), and every 50
/// lookups scatter counts of the loaded users and orders (exact), until `stop`.
fn spawn_reader(
    conninfo: String,
    loaded_users: i64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<ReaderReport> {
    tokio::spawn(async move {
        let since = Instant::now();
        let mut rng = StdRng::seed_from_u64(rand::random());
        let mut conn = None;
        let mut rep = ReaderReport::default();
        let users_sql = format!("SELECT count(*) FROM users WHERE id <= {loaded_users}");
        let orders_sql = format!("SELECT count(*) FROM orders WHERE user_id <= {loaded_users}");
        let checks = [
            (users_sql.as_str(), loaded_users),
            (orders_sql.as_str(), loaded_users * ORDERS_PER_USER),
        ];
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let c = match ensure_connected(&mut conn, &conninfo).await {
                Ok(c) => c,
                Err(e) => {
                    rep.errors += 1;
                    note(&mut rep.problems, since, format!("reader {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let id: i64 = rng.gen_range(1..=loaded_users);
            let t0 = Instant::now();
            let r = tokio::time::timeout(
                STATEMENT_LIMIT,
                c.query("SELECT balance FROM users WHERE id = $1", &[&id]),
            )
            .await;
            rep.max_latency = rep.max_latency.max(t0.elapsed());
            rep.lookups += 1;
            match r {
                Ok(Ok(rows)) if rows.len() == 1 => {}
                Ok(Ok(rows)) => {
                    rep.wrong += 1;
                    note(
                        &mut rep.problems,
                        since,
                        format!("users id {id}: {} rows, expected 1", rows.len()),
                    );
                }
                Ok(Err(e)) => {
                    rep.errors += 1;
                    note(
                        &mut rep.problems,
                        since,
                        format!("lookup {id}: {}", err_text(&e)),
                    );
                }
                Err(_) => {
                    rep.errors += 1;
                    note(&mut rep.problems, since, format!("lookup {id}: hung"));
                    conn = None;
                }
            }
            if !i.is_multiple_of(50) {
                continue;
            }
            for (sql, want) in checks {
                let Some(c) = conn.as_ref().filter(|c| !c.is_closed()) else {
                    break;
                };
                let t0 = Instant::now();
                let r = tokio::time::timeout(STATEMENT_LIMIT, c.query_one(sql, &[])).await;
                rep.max_latency = rep.max_latency.max(t0.elapsed());
                rep.scatters += 1;
                match r {
                    Ok(Ok(row)) => {
                        let got: i64 = row.get(0);
                        if got != want {
                            rep.wrong += 1;
                            note(
                                &mut rep.problems,
                                since,
                                format!("{sql}: {got}, expected {want}"),
                            );
                        }
                    }
                    Ok(Err(e)) => {
                        rep.errors += 1;
                        note(&mut rep.problems, since, format!("{sql}: {}", err_text(&e)));
                    }
                    Err(_) => {
                        rep.errors += 1;
                        note(&mut rep.problems, since, format!("{sql}: hung"));
                        conn = None;
                    }
                }
            }
        }
        rep
    })
}

/// A writer (and optionally a reader) running against the proxy.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    writer: JoinHandle<WriterReport>,
    reader: Option<JoinHandle<ReaderReport>>,
}

impl Load {
    /// Starts the writer with `gen` and, with `reader_users`, a reader of that many loaded
    /// users; returns once the writer has [`WARMUP_WRITES`] acknowledged statements.
    async fn start(env: &TestEnv, proxy: &Proxy, gen: OpGen, reader_users: Option<i64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let writer = spawn_writer(
            proxy.conninfo(),
            env.reference_url(),
            gen,
            stop.clone(),
            acked.clone(),
        );
        let reader = reader_users.map(|n| spawn_reader(proxy.conninfo(), n, stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < WARMUP_WRITES {
            assert!(
                !writer.is_finished() && Instant::now() < deadline,
                "the writer did not get {WARMUP_WRITES} statements acknowledged within 30 s \
                 (before the command started)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Load {
            stop,
            acked,
            writer,
            reader,
        }
    }

    /// Stops both tasks and prints what they saw.
    async fn stop(self) -> (WriterReport, Option<ReaderReport>) {
        self.stop.store(true, Ordering::Relaxed);
        let limit = STATEMENT_LIMIT * 2;
        let w = tokio::time::timeout(limit, self.writer)
            .await
            .expect("the writer did not stop")
            .expect("the writer panicked");
        let r = match self.reader {
            Some(r) => Some(
                tokio::time::timeout(limit, r)
                    .await
                    .expect("the reader did not stop")
                    .expect("the reader panicked"),
            ),
            None => None,
        };
        println!(
            "writer: {} statements acknowledged, {} errors, {} with a wrong row count, \
             longest statement {:?} (`{}`)",
            w.acked, w.errors, w.wrong_counts, w.max_latency, w.max_latency_sql
        );
        for p in &w.problems {
            println!("  writer: {p}");
        }
        if let Some(r) = &r {
            println!(
                "reader: {} lookups, {} scatter counts, {} errors, {} wrong answers, \
                 longest statement {:?}",
                r.lookups, r.scatters, r.errors, r.wrong, r.max_latency
            );
            for p in &r.problems {
                println!("  reader: {p}");
            }
        }
        (w, r)
    }
}

/// Runs the command with `--yes` while `load` runs, stops the load [`AFTER_EXIT`] after the
/// command exits, and asserts the command succeeded.
async fn execute_under_load(
    maps: &Maps,
    load: Load,
    limit: Duration,
) -> (Outcome, WriterReport, Option<ReaderReport>) {
    let before = load.acked.load(Ordering::Relaxed);
    let out = run_rebalance(maps, &["--yes"], limit).await;
    let during = load.acked.load(Ordering::Relaxed) - before;
    tokio::time::sleep(AFTER_EXIT).await;
    let (w, r) = load.stop().await;
    println!(
        "rebalance took {:.1?}; {during} writes acknowledged while it ran\n--- stderr (last 30 lines) ---\n{}",
        out.took,
        tail(&out.stderr, 30)
    );
    out.expect_success();
    (out, w, r)
}

/// No errors, no wrong row counts, no wrong reads.
fn assert_clean_load(w: &WriterReport, r: Option<&ReaderReport>) {
    assert!(
        w.errors == 0 && w.wrong_counts == 0,
        "the writer saw {} errors and {} wrong row counts: {:#?}",
        w.errors,
        w.wrong_counts,
        w.problems
    );
    if let Some(r) = r {
        assert!(
            r.errors == 0 && r.wrong == 0,
            "the reader saw {} errors and {} wrong answers: {:#?}",
            r.errors,
            r.wrong,
            r.problems
        );
    }
}

// ----------------------------------------------------------------------------------------
// Checks after the move
// ----------------------------------------------------------------------------------------

/// Count and order-independent checksum of `table` on one database (UTC, ISO dates, so
/// row texts compare across databases).
async fn digest(c: &Client, table: &str) -> (i64, i128) {
    c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
        .await
        .expect("session settings");
    let sql = format!(
        "SELECT count(*), coalesce(sum(hashtext(t::text)::numeric), 0)::text FROM {table} t"
    );
    let row = c
        .query_one(sql.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
    let sum: String = row.get(1);
    (row.get(0), sum.parse().expect("checksum is an integer"))
}

/// [`digest`] of `table` on each env shard.
async fn shard_digests(env: &TestEnv, table: &str) -> Vec<(i64, i128)> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        out.push(digest(&env.shard_client(i).await, table).await);
    }
    out
}

/// (b) The union of `table` over all shards equals the reference database's table.
async fn check_against_reference(env: &TestEnv, table: &str) {
    let per = shard_digests(env, table).await;
    let union = per
        .iter()
        .fold((0i64, 0i128), |(n, s), (pn, ps)| (n + pn, s + ps));
    let want = digest(&env.reference_client().await, table).await;
    assert_eq!(
        union, want,
        "{table}: (count, checksum) over all shards {union:?} differs from the reference \
         database's {want:?} (per shard: {per:?}): rows lost, duplicated or changed"
    );
    println!("{table}: {} rows, identical to the reference", want.0);
}

/// (a) Every `key` of `table` on every env shard is where `owner` says.
async fn check_placement(env: &TestEnv, table: &str, key_sql: &str, owner: impl Fn(i64) -> String) {
    let sql = format!("SELECT DISTINCT {key_sql} FROM {table}");
    let mut wrong = 0usize;
    let mut examples = Vec::new();
    let mut total = 0usize;
    for i in 0..env.shard_count() {
        let here = format!("s{i}");
        let rows = env
            .shard_client(i)
            .await
            .query(sql.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} on s{i}: {}", err_text(&e)));
        total += rows.len();
        for r in rows {
            let k: i64 = r.get(0);
            let want = owner(k);
            if want != here {
                wrong += 1;
                if examples.len() < 10 {
                    examples.push(format!("{k} on {here}, belongs on {want}"));
                }
            }
        }
    }
    assert_eq!(
        wrong, 0,
        "{table}: {wrong} of {total} keys on the wrong shard for the NEW map, e.g. {examples:#?}"
    );
}

/// (a) users and orders are where the NEW map hashes them.
async fn check_hash_placement(env: &TestEnv, map: &ShardMap) {
    check_placement(env, "users", "id", |id| hash_owner(map, id).to_string()).await;
    check_placement(env, "orders", "user_id", |id| {
        hash_owner(map, id).to_string()
    })
    .await;
}

/// (c) Every order is on the shard of its user: orders without their user on the same
/// shard are exactly the reference database's orders without a user.
async fn check_colocated(env: &TestEnv) {
    let sql = "SELECT count(*) FROM orders o WHERE NOT EXISTS \
               (SELECT 1 FROM users u WHERE u.id = o.user_id)";
    let per = env.per_shard_i64(sql).await;
    let want: i64 = env
        .reference_client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        per.iter().sum::<i64>(),
        want,
        "orders separated from their user, per shard: {per:?} (orders without any user in \
         the reference: {want})"
    );
}

/// (d) `countries` holds exactly its 50 rows on each of `shards`.
async fn check_countries(env: &TestEnv, shards: &[usize]) {
    let want = countries();
    for &i in shards {
        let got: Vec<(String, String)> = env
            .shard_client(i)
            .await
            .query("SELECT code, name FROM countries ORDER BY code", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, want, "countries on s{i}");
    }
}

/// Checks (a) to (d) of a hash scenario; `countries_on` lists the NEW map's shards.
async fn check_hash_result(env: &TestEnv, maps: &Maps, countries_on: &[usize]) {
    check_hash_placement(env, &maps.new).await;
    check_against_reference(env, "users").await;
    check_against_reference(env, "orders").await;
    check_colocated(env).await;
    check_countries(env, countries_on).await;
}

/// Moves of users and orders `1..=n` between the two maps' rings, and all their rows.
fn expected_hash_moves(maps: &Maps, n: i64) -> (BTreeMap<MoveKey, i64>, i64) {
    let mut moves = BTreeMap::new();
    for id in 1..=n {
        let (from, to) = (hash_owner(&maps.old, id), hash_owner(&maps.new, id));
        if from != to {
            for (t, rows) in [("users", 1), ("orders", ORDERS_PER_USER)] {
                *moves
                    .entry((t.to_string(), from.to_string(), to.to_string()))
                    .or_insert(0) += rows;
            }
        }
    }
    (moves, n * (1 + ORDERS_PER_USER))
}

// ----------------------------------------------------------------------------------------
// Hash scenarios
// ----------------------------------------------------------------------------------------

/// A hash scenario: users/orders/countries on 4 env shards (schema everywhere), data on
/// the OLD map's shards, and a proxy with the OLD map.
struct HashCase {
    proxy: Proxy,
    maps: Maps,
    users: i64,
    env: TestEnv,
}

async fn hash_case(old: &[usize], new: &[usize], users: i64) -> HashCase {
    hash_case_with(old, new, users, |y| y).await
}

/// Like [`hash_case`], with the NEW map's YAML passed through `edit` (e.g. a weight).
async fn hash_case_with(
    old: &[usize],
    new: &[usize],
    users: i64,
    edit: impl Fn(String) -> String,
) -> HashCase {
    let env = TestEnv::new(4).await;
    create_everywhere(&env, &[USERS_DDL, ORDERS_DDL, COUNTRIES_DDL]).await;
    let maps = Maps::new(
        map_yaml(&env, old, HASH_TABLES, ""),
        edit(map_yaml(&env, new, HASH_TABLES, "")),
    );
    let t0 = Instant::now();
    load_hash_data(&env, &maps.old, users).await;
    println!(
        "loaded {users} users and {} orders in {:.1?}",
        users * ORDERS_PER_USER,
        t0.elapsed()
    );
    let proxy = Proxy::start_yaml(&maps.old_yaml).await;
    HashCase {
        proxy,
        maps,
        users,
        env,
    }
}

impl HashCase {
    /// The dry run must list exactly the computed moves and change nothing.
    async fn dry_run(&self) -> DryRun {
        let (want, all) = expected_hash_moves(&self.maps, self.users);
        let count = "SELECT count(*) FROM users";
        let before = self.env.per_shard_i64(count).await;
        let got = check_dry_run(&self.maps, &want, all).await;
        assert_eq!(
            self.env.per_shard_i64(count).await,
            before,
            "users per shard changed by --dry-run"
        );
        got
    }

    /// Starts the writer and (with `reader`) the reader through the proxy.
    async fn load(&self, reader: bool) -> Load {
        Load::start(
            &self.env,
            &self.proxy,
            hash_ops(self.users),
            reader.then_some(self.users),
        )
        .await
    }
}

/// (e) The OLD proxy now routes with the NEW map: moved users read back as in the
/// reference, and a new user whose NEW shard differs from its OLD one lands on the NEW one.
async fn check_proxy_adopted_new_map(case: &HashCase) {
    let (env, maps) = (&case.env, &case.maps);
    let c = case.proxy.client().await;
    let reference = env.reference_client().await;
    let moved: Vec<i64> = (1..=case.users)
        .filter(|&id| hash_owner(&maps.old, id) != hash_owner(&maps.new, id))
        .take(300)
        .collect();
    assert!(!moved.is_empty());
    for id in &moved {
        let want: i64 = reference
            .query_one("SELECT balance FROM users WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        let rows = c
            .query("SELECT balance FROM users WHERE id = $1", &[id])
            .await
            .unwrap_or_else(|e| panic!("lookup of moved user {id}: {}", err_text(&e)));
        let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, vec![want], "moved user {id} through the proxy");
        let orders: i64 = c
            .query_one("SELECT count(*) FROM orders WHERE user_id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(orders, ORDERS_PER_USER, "orders of moved user {id}");
    }
    let id = (2 * FIRST_NEW_ID..)
        .find(|&id| hash_owner(&maps.old, id) != hash_owner(&maps.new, id))
        .unwrap();
    let target = env_index(hash_owner(&maps.new, id));
    c.execute(
        "INSERT INTO users (id, name, balance) VALUES ($1, 'after', 0)",
        &[&id],
    )
    .await
    .unwrap_or_else(|e| panic!("insert user {id} after the move: {}", err_text(&e)));
    let per = env
        .per_shard_i64(&format!("SELECT count(*) FROM users WHERE id = {id}"))
        .await;
    let mut want = vec![0; env.shard_count()];
    want[target] = 1;
    assert_eq!(
        per,
        want,
        "user {id} inserted through the OLD proxy after the move: NEW map says s{target}, \
         OLD map says {}",
        hash_owner(&maps.old, id)
    );
    println!(
        "the OLD proxy routes with the NEW map ({} moved users read, user {id} -> s{target})",
        moved.len()
    );
}

// ----------------------------------------------------------------------------------------
// 1. Grow 3 -> 4 shards, a million rows, under load
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_grow_3_to_4_million_rows_under_load() {
    let case = hash_case(&[0, 1, 2], &[0, 1, 2, 3], GROW_USERS).await;

    let dry = case.dry_run().await;
    for (t, _, dst) in dry.moves.keys() {
        assert_eq!(dst, "s3", "growing onto s3: a move of {t} goes to {dst}");
    }
    let share = dry.moving as f64 / dry.all as f64;
    assert!(
        (0.20..=0.30).contains(&share),
        "growing 3 -> 4 shards should move 20-30% of the rows, the plan moves {} of {} ({:.1}%)",
        dry.moving,
        dry.all,
        share * 100.0
    );

    let load = case.load(true).await;
    let (out, w, r) = execute_under_load(&case.maps, load, LONG_RUN).await;
    let summary = parse_summary(&out);
    assert_clean_load(&w, r.as_ref());
    assert!(
        summary.rows >= dry.moving,
        "summary: {} rows moved, the dry run planned {}",
        summary.rows,
        dry.moving
    );

    check_hash_result(&case.env, &case.maps, &[0, 1, 2, 3]).await;
    check_proxy_adopted_new_map(&case).await;

    // Again: nothing left to do, nothing changes.
    let before = (
        shard_digests(&case.env, "users").await,
        shard_digests(&case.env, "orders").await,
    );
    let again = run_rebalance(&case.maps, &["--yes"], SHORT_RUN).await;
    again.expect_success();
    println!("second run:\n{}", again.stdout.trim_end());
    if again.stdout.contains("summary ") {
        let s = parse_summary(&again);
        assert_eq!(s.rows, 0, "the second run moved rows\n{}", again.describe());
    }
    let after = (
        shard_digests(&case.env, "users").await,
        shard_digests(&case.env, "orders").await,
    );
    assert_eq!(after, before, "the second run changed shard contents");
    check_output_hygiene(&out, &summary);
}

// ----------------------------------------------------------------------------------------
// 2. kill -9 at a random moment, then run again
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_kill9_resume() {
    let case = hash_case(&[0, 1, 2], &[0, 1, 2, 3], KILL_USERS).await;
    let load = case.load(true).await;

    // The delay counts from the command's first stderr output: before it, the command is
    // still counting rows for its plan (about 2 s here), and a kill there tests nothing.
    // Killed twice: a whole run takes about 9 s here, so kills land in copies, catch-ups
    // and switches of every unit across runs of the suite.
    for round in 1..=2 {
        let delay = rand::thread_rng().gen_range(300..=7000u64);
        let mut running = spawn_rebalance(&case.maps, &["--yes"]);
        let planned = running.wait_for_stderr(Duration::from_secs(60)).await;
        println!(
            "kill {round}: the command wrote to stderr {planned:.1?} after it started; SIGKILL in {delay} ms"
        );
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let killed = running.kill().await;
        println!(
            "killed run {round}:\n--- stdout ---\n{}\n--- stderr (last 30 lines) ---\n{}",
            killed.stdout.trim_end(),
            tail(&killed.stderr, 30)
        );
    }

    let (out, w, r) = execute_under_load(&case.maps, load, LONG_RUN).await;
    let summary = parse_summary(&out);
    // Errors are allowed while the command is dead; wrong results never.
    assert_eq!(
        w.wrong_counts, 0,
        "acknowledged writes that affected the wrong number of rows: {:#?}",
        w.problems
    );
    let r = r.expect("reader report");
    assert_eq!(
        r.wrong, 0,
        "reads through the proxy returned wrong answers: {:#?}",
        r.problems
    );

    check_hash_result(&case.env, &case.maps, &[0, 1, 2, 3]).await;
    check_output_hygiene(&out, &summary);
}

// ----------------------------------------------------------------------------------------
// 3. Drain s3: 4 -> 3 shards
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_drain_4_to_3() {
    let case = hash_case(&[0, 1, 2, 3], &[0, 1, 2], DRAIN_USERS).await;

    let dry = case.dry_run().await;
    for (t, src, _) in dry.moves.keys() {
        assert_eq!(src, "s3", "draining s3: a move of {t} comes from {src}");
    }

    let load = case.load(true).await;
    let (out, w, r) = execute_under_load(&case.maps, load, SHORT_RUN).await;
    let summary = parse_summary(&out);
    assert_clean_load(&w, r.as_ref());

    check_hash_result(&case.env, &case.maps, &[0, 1, 2]).await;
    for t in ["users", "orders"] {
        let per = case
            .env
            .per_shard_i64(&format!("SELECT count(*) FROM {t}"))
            .await;
        assert_eq!(per[3], 0, "{t} rows left on the drained s3: {per:?}");
    }
    check_output_hygiene(&out, &summary);
}

// ----------------------------------------------------------------------------------------
// 3a. A target without the schema: a clear error, nothing moved
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_refuses_a_target_without_the_tables() {
    let env = TestEnv::new(4).await;
    // The tables exist on s0..s2 only; s3 is empty.
    for i in 0..3 {
        env.shard_client(i)
            .await
            .batch_execute(&[USERS_DDL, ORDERS_DDL, COUNTRIES_DDL].join(";\n"))
            .await
            .unwrap_or_else(|e| panic!("schema on shard {i}: {}", err_text(&e)));
    }
    env.reference_client()
        .await
        .batch_execute(&[USERS_DDL, ORDERS_DDL, COUNTRIES_DDL].join(";\n"))
        .await
        .unwrap_or_else(|e| panic!("schema on the reference: {}", err_text(&e)));
    let maps = Maps::new(
        map_yaml(&env, &[0, 1, 2], HASH_TABLES, ""),
        map_yaml(&env, &[0, 1, 2, 3], HASH_TABLES, ""),
    );
    load_hash_data(&env, &maps.old, 2_000).await;
    let old_shards = || async {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(digest(&env.shard_client(i).await, "users").await);
        }
        v
    };
    let before = old_shards().await;
    let out = run_rebalance(&maps, &["--yes"], Duration::from_secs(120)).await;
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "the command succeeded without tables on s3:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("does not exist on shard s3"),
        "the error does not name the missing table and shard:\n{}",
        out.stderr
    );
    assert_eq!(
        old_shards().await,
        before,
        "a refused rebalance changed the shards"
    );
}

// ----------------------------------------------------------------------------------------
// 3b. Weight change: s1 from 1 to 2
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_weight_change() {
    let case = hash_case_with(&[0, 1, 2], &[0, 1, 2], DRAIN_USERS, |y| {
        let at = y.find("name: s1, url: ").expect("s1 in the map");
        let end = at + y[at..].find(" }").expect("end of s1");
        format!("{}, weight: 2{}", &y[..end], &y[end..])
    })
    .await;
    assert!(
        case.maps.new.shards[1].weight == 2,
        "the NEW map gives s1 weight 2"
    );

    // More tokens for s1: keys only move to s1, never between s0 and s2.
    let dry = case.dry_run().await;
    assert!(!dry.moves.is_empty(), "a weight change moves rows");
    for (t, src, dst) in dry.moves.keys() {
        assert_eq!(
            dst, "s1",
            "weight of s1 raised: a move of {t} goes {src} -> {dst}"
        );
    }

    let load = case.load(true).await;
    let (out, w, r) = execute_under_load(&case.maps, load, SHORT_RUN).await;
    let summary = parse_summary(&out);
    assert_clean_load(&w, r.as_ref());
    check_hash_result(&case.env, &case.maps, &[0, 1, 2]).await;
    check_output_hygiene(&out, &summary);
}

// ----------------------------------------------------------------------------------------
// 4. Range bounds change
// ----------------------------------------------------------------------------------------

/// The range writer: an event at a random instant of a moving window (every 10th exactly
/// on an OLD or NEW bound), and a payload update of a random loaded event.
fn range_ops() -> OpGen {
    let windows = [
        (utc(2024, 7, 1), utc(2025, 1, 1)),
        (utc(2026, 1, 1), utc(2026, 3, 1)),
    ];
    let edges = [
        utc(2024, 7, 1),
        utc(2025, 1, 1),
        utc(2026, 1, 1),
        utc(2026, 3, 1),
    ];
    Box::new(move |rng, seq| {
        let us = if seq % 10 == 0 {
            edges[(seq / 10) as usize % edges.len()]
        } else {
            let (lo, hi) = windows[rng.gen_range(0..windows.len())];
            rng.gen_range(lo..hi)
        };
        let some = rng.gen_range(0..RANGE_EVENTS);
        vec![
            Op::new(
                "INSERT INTO events (created_at, id, payload) VALUES ($1, $2, $3)",
                vec![
                    Box::new(system_time(us)),
                    Box::new(FIRST_NEW_ID + seq),
                    Box::new(format!("live-{seq}")),
                ],
            ),
            Op::new(
                "UPDATE events SET payload = payload || '+' WHERE created_at = $1 AND id = $2",
                vec![Box::new(system_time(event_us(some))), Box::new(some + 1)],
            ),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_range_bounds_change() {
    let env = TestEnv::new(3).await;
    create_everywhere(&env, &[EVENTS_DDL]).await;
    let maps = Maps::new(
        map_yaml(&env, &[0, 1, 2], &events_tables(OLD_FIRST, OLD_SECOND), ""),
        map_yaml(&env, &[0, 1, 2], &events_tables(NEW_FIRST, NEW_SECOND), ""),
    );
    let (old, new) = (old_bounds(), new_bounds());
    load_events(&env, &old).await;
    let proxy = Proxy::start_yaml(&maps.old_yaml).await;

    let mut want = BTreeMap::new();
    for i in 0..RANGE_EVENTS {
        let (from, to) = (old.owner(event_us(i)), new.owner(event_us(i)));
        if from != to {
            *want
                .entry(("events".to_string(), from.to_string(), to.to_string()))
                .or_insert(0) += 1;
        }
    }
    let keys: BTreeSet<(&str, &str)> = want
        .keys()
        .map(|(_, f, t)| (f.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([("s0", "s1"), ("s2", "s1")]),
        "test data: both windows must hold events"
    );
    check_dry_run(&maps, &want, RANGE_EVENTS).await;

    let load = Load::start(&env, &proxy, range_ops(), None).await;
    let (out, w, _) = execute_under_load(&maps, load, SHORT_RUN).await;
    let summary = parse_summary(&out);
    assert_clean_load(&w, None);

    check_placement(
        &env,
        "events",
        "(extract(epoch FROM created_at) * 1000000)::bigint",
        |us| new.owner(us).to_string(),
    )
    .await;
    check_against_reference(&env, "events").await;
    check_output_hygiene(&out, &summary);

    // The proxy's metrics report the finished run (it reads the control tables every second).
    let shared = &proxy.handle.shared;
    let mut text = String::new();
    for _ in 0..50 {
        let topo = shared.topo();
        let stats: Vec<_> = (0..topo.pools.len()).map(|s| topo.shard_stats(s)).collect();
        text = shared.telemetry.render(0, &stats, &topo.pools);
        if text.contains("shardwire_rebalance_running 0\n")
            && text.contains("shardwire_rebalance_units{state=\"done\"} 2\n")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("shardwire_rebalance_running 0\n")
            && text.contains("shardwire_rebalance_units{state=\"done\"} 2\n")
            && text.contains("shardwire_rebalance_units{state=\"pending\"} 0\n"),
        "rebalance metrics after the run:\n{text}"
    );
    let moved: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("shardwire_rebalance_rows_moved "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        moved as i64, summary.rows,
        "rows moved in the metrics vs the summary"
    );
}

// ----------------------------------------------------------------------------------------
// 5. A directory key moves
// ----------------------------------------------------------------------------------------

/// The directory writer: a new acme document and an update of a loaded one.
fn directory_ops() -> OpGen {
    Box::new(move |rng, seq| {
        let some: i64 = rng.gen_range(1..=DOCS_PER_TENANT);
        vec![
            Op::new(
                "INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES ($1, $2, $3)",
                vec![
                    Box::new("acme".to_string()),
                    Box::new(FIRST_NEW_ID + seq),
                    Box::new(format!("live-{seq}")),
                ],
            ),
            Op::new(
                "UPDATE tenant_docs SET body = body || '+' WHERE tenant_id = $1 AND doc_id = $2",
                vec![Box::new("acme".to_string()), Box::new(some)],
            ),
        ]
    })
}

/// doc_ids of tenant acme, sorted, from `sql` on `c`.
async fn acme_ids(c: &Client, sql: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = c
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort_unstable();
    ids
}

/// `DOCS_PER_TENANT` documents for each tenant through the proxy (multi-row INSERTs; the
/// first is retried while the proxy loads its directory), and the same into the reference.
async fn load_docs_through_proxy(env: &TestEnv, proxy: &Proxy) {
    let c = proxy.client().await;
    let reference = env.reference_client().await;
    for tenant in ["acme", "globex", "initech"] {
        for chunk in (1..=DOCS_PER_TENANT).collect::<Vec<_>>().chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|k| format!("('{tenant}', {k}, 'doc {tenant} {k}')"))
                .collect();
            let sql = format!(
                "INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES {}",
                values.join(", ")
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.batch_execute(&sql).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        println!(
                            "insert through the proxy not accepted yet: {}",
                            err_text(&e)
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!(
                        "inserting {tenant} docs through the proxy: {}",
                        err_text(&e)
                    ),
                }
            }
            reference
                .batch_execute(&sql)
                .await
                .expect("reference insert");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_directory_key_move() {
    let env = TestEnv::new(3).await;
    create_everywhere(&env, &[TENANT_DOCS_DDL]).await;
    let maps = Maps::new(
        map_yaml(&env, &[0, 1, 2], &docs_tables("s0"), DIRECTORY_EXTRA),
        map_yaml(&env, &[0, 1, 2], &docs_tables("s2"), DIRECTORY_EXTRA),
    );
    let proxy = Proxy::start_yaml(&maps.old_yaml).await;
    load_docs_through_proxy(&env, &proxy).await;
    for (tenant, shard) in [("acme", 0), ("globex", 1), ("initech", 2)] {
        let per = env
            .per_shard_i64(&format!(
                "SELECT count(*) FROM tenant_docs WHERE tenant_id = '{tenant}'"
            ))
            .await;
        let mut want = vec![0; 3];
        want[shard] = DOCS_PER_TENANT;
        assert_eq!(per, want, "{tenant} documents per shard before the move");
    }

    let want = BTreeMap::from([(
        (
            "tenant_docs".to_string(),
            "s0".to_string(),
            "s2".to_string(),
        ),
        DOCS_PER_TENANT,
    )]);
    check_dry_run(&maps, &want, 3 * DOCS_PER_TENANT).await;

    let load = Load::start(&env, &proxy, directory_ops(), None).await;
    let (out, w, _) = execute_under_load(&maps, load, SHORT_RUN).await;
    let summary = parse_summary(&out);
    assert_clean_load(&w, None);

    let acme_sql = "SELECT doc_id FROM tenant_docs WHERE tenant_id = 'acme'";
    let per = env
        .per_shard_i64("SELECT count(*) FROM tenant_docs WHERE tenant_id = 'acme'")
        .await;
    assert_eq!(
        (per[0], per[1]),
        (0, 0),
        "acme documents left outside s2: {per:?}"
    );
    let want_ids = acme_ids(&env.reference_client().await, acme_sql).await;
    assert!(
        want_ids.len() as i64 > DOCS_PER_TENANT,
        "no acme writes during the move"
    );
    let on_s2 = acme_ids(&env.shard_client(2).await, acme_sql).await;
    assert!(
        on_s2 == want_ids,
        "acme documents on s2: {} rows, the reference has {} (3000 loaded + acknowledged writes)",
        on_s2.len(),
        want_ids.len()
    );
    let through_proxy = acme_ids(&proxy.client().await, acme_sql).await;
    assert!(
        through_proxy == want_ids,
        "acme documents through the proxy: {} rows, expected {}",
        through_proxy.len(),
        want_ids.len()
    );
    check_against_reference(&env, "tenant_docs").await;
    for (tenant, shard) in [("globex", 1), ("initech", 2)] {
        let per = env
            .per_shard_i64(&format!(
                "SELECT count(*) FROM tenant_docs WHERE tenant_id = '{tenant}'"
            ))
            .await;
        assert_eq!(per[shard], DOCS_PER_TENANT, "{tenant} per shard: {per:?}");
    }

    let entry = env
        .shard_client(0)
        .await
        .query(
            "SELECT shard, moving_from FROM shardwire_directory WHERE key = 'acme'",
            &[],
        )
        .await
        .expect("reading shardwire_directory on s0");
    let entry: Vec<(String, Option<String>)> = entry.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        entry,
        vec![("s2".to_string(), None)],
        "the directory entry of acme (shard, moving_from) on s0"
    );
    check_output_hygiene(&out, &summary);
}
