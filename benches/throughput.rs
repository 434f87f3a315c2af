//! End-to-end throughput benchmark: pgbench workloads against direct Postgres, PgBouncer,
//! shardwire on one shard (pass-through) and shardwire on N shards.
//!
//! Run (release build; needs PostgreSQL's server binaries and pgbench,
//! `apt-get install -y postgresql postgresql-contrib`):
//!
//! ```sh
//! cargo bench --bench throughput                 # full run: 5 s per point, 1/8/64/256 clients
//! cargo bench --bench throughput -- --quick      # short run: 2 s per point, 1 and 8 clients
//! cargo bench --bench throughput -- --help       # all options
//! ```
//!
//! It starts its own throwaway Postgres clusters (`shardwire::localpg`, removed at the end),
//! loads `users` (sharded by `id`) and `orders` (co-located by `user_id`) directly into each
//! backing database, runs the proxy in this process on its own tokio runtime, and runs
//! pgbench (custom scripts, per-transaction logs) for every workload × target × client
//! count. PgBouncer (Debian's `pgbouncer`) is used when installed and skipped, with a note,
//! when not — the benchmark installs nothing.
//!
//! Output: a table on stdout (tps, p50/p99 transaction latency, proxy CPU seconds per 10,000
//! client statements from `/proc/<pid>/stat`, tps relative to direct Postgres), and
//! `target/bench/throughput.csv` plus `target/bench/throughput.svg` (tps vs clients, one
//! panel per workload). Proxy CPU for shardwire is this process's utime+stime (the harness
//! itself only waits for pgbench meanwhile); for PgBouncer that of the pgbouncer process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shardwire::localpg::{self, PgCluster};
use shardwire::server::ServerHandle;
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::{Client, NoTls};

/// Backend connections per shard, for shardwire and PgBouncer alike.
const POOL_SIZE: usize = 20;
/// Database holding all rows (direct, PgBouncer, shardwire on one shard).
const DB_SINGLE: &str = "bench";
/// Database holding one shard's rows on each cluster (shardwire on N shards).
const DB_SHARDED: &str = "bench_sharded";
/// Proxy login.
const APP_USER: &str = "app";
const APP_PASSWORD: &str = "app-secret";

const USAGE: &str = "\
usage: cargo bench --bench throughput [-- OPTIONS]

  --quick               short run: 2 s per point, clients 1,8 (options after it still apply)
  --seconds N           seconds per measured point (default 5)
  --warmup N            seconds of warm-up per target and workload, 0 = none (default 1)
  --clients LIST        client counts (default 1,8,64,256)
  --shards N            shards for the shardwire-N target (default 2; 1 skips that target)
  --workloads LIST      of point_select,point_update,tpcb_like,scatter_count,order_limit
                        (default all)
  --targets LIST        of direct,pgbouncer,shardwire-1,shardwire-n (default all)
  --mode MODE           pgbench protocol: simple, extended (default) or prepared
                        (PgBouncer 1.18 in transaction pooling cannot run prepared: it
                        falls back to extended there, shown in the proto column)
  --rows N              rows in users (default 100000)
  --proxy-threads N     worker threads of the proxy's runtime (default: one per core;
                        1 = a current-thread runtime, as `shardwire --threads 1`)
  -h, --help            this text

Writes target/bench/throughput.csv and target/bench/throughput.svg.
Set RUST_LOG (default warn) to see the proxy's log on stderr.";

/// Set by Ctrl-C: finish the current point, then tear everything down.
static ABORT: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------
// options

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    PointSelect,
    PointUpdate,
    TpcbLike,
    ScatterCount,
    OrderLimit,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::PointSelect,
        Workload::PointUpdate,
        Workload::TpcbLike,
        Workload::ScatterCount,
        Workload::OrderLimit,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::PointSelect => "point_select",
            Workload::PointUpdate => "point_update",
            Workload::TpcbLike => "tpcb_like",
            Workload::ScatterCount => "scatter_count",
            Workload::OrderLimit => "order_limit",
        }
    }

    /// The pgbench script (`rows` = highest user id).
    fn script(self, rows: i64) -> String {
        match self {
            Workload::PointSelect => format!(
                "\\set id random(1, {rows})\n\
                 SELECT name FROM users WHERE id = :id;\n"
            ),
            Workload::PointUpdate => format!(
                "\\set id random(1, {rows})\n\
                 UPDATE users SET balance = balance + 1 WHERE id = :id;\n"
            ),
            // Order ids are drawn from 1..10^12: a primary-key clash is practically
            // impossible (and would show as a failed point, not be hidden).
            Workload::TpcbLike => format!(
                "\\set id random(1, {rows})\n\
                 \\set delta random(-5000, 5000)\n\
                 \\set oid random(1, 1000000000000)\n\
                 BEGIN;\n\
                 UPDATE users SET balance = balance + :delta WHERE id = :id;\n\
                 SELECT balance FROM users WHERE id = :id;\n\
                 INSERT INTO orders (user_id, id, amount) VALUES (:id, :oid, :delta);\n\
                 END;\n"
            ),
            Workload::ScatterCount => "SELECT count(*) FROM users;\n".to_string(),
            Workload::OrderLimit => {
                "SELECT id, balance FROM users ORDER BY balance DESC, id LIMIT 10;\n".to_string()
            }
        }
    }

    /// Statements a client sends per transaction (BEGIN and END included).
    fn statements(self) -> u64 {
        match self {
            Workload::TpcbLike => 5,
            _ => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TargetKind {
    Direct,
    PgBouncer,
    Shardwire1,
    ShardwireN,
}

impl TargetKind {
    const ALL: [TargetKind; 4] = [
        TargetKind::Direct,
        TargetKind::PgBouncer,
        TargetKind::Shardwire1,
        TargetKind::ShardwireN,
    ];

    fn label(self, shards: usize) -> String {
        match self {
            TargetKind::Direct => "direct".into(),
            TargetKind::PgBouncer => "pgbouncer".into(),
            TargetKind::Shardwire1 => "shardwire-1".into(),
            TargetKind::ShardwireN => format!("shardwire-{shards}"),
        }
    }

    fn color(self) -> &'static str {
        match self {
            TargetKind::Direct => "#444444",
            TargetKind::PgBouncer => "#1f77b4",
            TargetKind::Shardwire1 => "#ff7f0e",
            TargetKind::ShardwireN => "#2ca02c",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    seconds: u32,
    warmup: u32,
    clients: Vec<u32>,
    shards: usize,
    workloads: Vec<Workload>,
    targets: Vec<TargetKind>,
    mode: String,
    rows: i64,
    /// Worker threads of the proxy's runtime (0 = one per core, tokio's default).
    proxy_threads: usize,
}

fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        seconds: 5,
        warmup: 1,
        clients: vec![1, 8, 64, 256],
        shards: 2,
        workloads: Workload::ALL.to_vec(),
        targets: TargetKind::ALL.to_vec(),
        mode: "extended".into(),
        rows: 100_000,
        proxy_threads: 0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{name} {v:?}: expected a whole number"))
        };
        match flag {
            // cargo bench appends --bench to the arguments of every bench binary.
            "--bench" => {}
            "-h" | "--help" => return Ok(None),
            "--quick" => {
                o.seconds = 2;
                o.clients = vec![1, 8];
            }
            "--seconds" => o.seconds = num(flag, value(flag)?)?.max(1) as u32,
            "--warmup" => o.warmup = num(flag, value(flag)?)? as u32,
            "--shards" => o.shards = num(flag, value(flag)?)?.clamp(1, 16) as usize,
            "--rows" => o.rows = num(flag, value(flag)?)?.max(100) as i64,
            "--proxy-threads" => o.proxy_threads = num(flag, value(flag)?)? as usize,
            "--clients" => {
                let v = value(flag)?;
                o.clients = v
                    .split(',')
                    .map(|c| match c.trim().parse::<u32>() {
                        Ok(n) if (1..=1000).contains(&n) => Ok(n),
                        _ => Err(format!("--clients {v:?}: expected numbers 1..=1000")),
                    })
                    .collect::<Result<_, _>>()?;
                o.clients.sort_unstable();
                o.clients.dedup();
            }
            "--workloads" => {
                let v = value(flag)?;
                o.workloads = v
                    .split(',')
                    .map(|w| {
                        Workload::ALL
                            .into_iter()
                            .find(|k| k.name() == w.trim())
                            .ok_or_else(|| format!("--workloads: unknown workload {w:?}"))
                    })
                    .collect::<Result<_, _>>()?;
                o.workloads.sort_unstable();
                o.workloads.dedup();
            }
            "--targets" => {
                let v = value(flag)?;
                o.targets = v
                    .split(',')
                    .map(|t| match t.trim() {
                        "direct" => Ok(TargetKind::Direct),
                        "pgbouncer" => Ok(TargetKind::PgBouncer),
                        "shardwire-1" => Ok(TargetKind::Shardwire1),
                        "shardwire-n" => Ok(TargetKind::ShardwireN),
                        other => Err(format!("--targets: unknown target {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
                o.targets.sort_unstable();
                o.targets.dedup();
            }
            "--mode" => {
                let v = value(flag)?;
                if !["simple", "extended", "prepared"].contains(&v.as_str()) {
                    return Err(format!(
                        "--mode {v:?}: expected simple, extended or prepared"
                    ));
                }
                o.mode = v;
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if o.clients.is_empty() || o.workloads.is_empty() || o.targets.is_empty() {
        return Err(format!("nothing to run\n\n{USAGE}"));
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------------------------------
// main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match parse_args(&args) {
        Ok(None) => {
            println!("{USAGE}");
            0
        }
        Ok(Some(opts)) => match run(opts) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    // Everything (clusters, PgBouncer, proxies) has been dropped inside `run`.
    std::process::exit(code);
}

/// One measured point.
#[derive(Debug, Clone)]
struct Point {
    workload: Workload,
    target: TargetKind,
    clients: u32,
    proto: String,
    tps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu_per_10k: Option<f64>,
    transactions: u64,
    failed: u64,
    error: Option<String>,
}

/// Where pgbench connects for a target.
struct Endpoint {
    port: u16,
    user: &'static str,
    password: Option<&'static str>,
    db: &'static str,
    /// Whose CPU time is the "proxy CPU": none (direct), this process, or a pid.
    cpu: CpuSource,
    /// Protocol override (PgBouncer cannot run `-M prepared` in transaction pooling).
    mode: String,
}

#[derive(Clone, Copy)]
enum CpuSource {
    None,
    SelfProc,
    Pid(u32),
}

fn run(opts: Opts) -> Result<(), String> {
    let started = Instant::now();
    raise_nofile_limit();
    // As `shardwire serve` does: a plain level filter unless RUST_LOG asks for more (an
    // EnvFilter costs a lock at every poll of a session, which runs inside its span).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .try_init();
    }

    let pg_bin = localpg::pg_bin_dir().map_err(|e| e.to_string())?;
    let pgbench = find_pgbench(&pg_bin)?;
    let pgbouncer = find_pgbouncer();
    let mut targets = opts.targets.clone();
    let mut notes: Vec<String> = Vec::new();
    if targets.contains(&TargetKind::PgBouncer) && pgbouncer.is_none() {
        let msg = "pgbouncer not found: skipped (apt-get install pgbouncer to include it)";
        eprintln!("{msg}");
        notes.push(msg.to_string());
        targets.retain(|t| *t != TargetKind::PgBouncer);
    }
    if opts.shards < 2 && targets.contains(&TargetKind::ShardwireN) {
        notes.push("--shards 1: shardwire-n is the same as shardwire-1, skipped".into());
        targets.retain(|t| *t != TargetKind::ShardwireN);
    }
    let need_n = targets.contains(&TargetKind::ShardwireN);
    let n_clusters = if need_n { opts.shards } else { 1 };

    let rt = ProxyRuntime::new(opts.proxy_threads)?;
    rt.handle.spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: finishing the current point, then cleaning up");
            ABORT.store(true, Ordering::SeqCst);
        }
    });

    eprintln!("starting {n_clusters} Postgres cluster(s)...");
    let clusters = localpg::start_many(n_clusters).map_err(|e| e.to_string())?;
    let single_port = clusters[0].port;

    // Shard map for shardwire-N (cluster i = shard s{i}), used for loading too.
    let map_n = if need_n {
        let urls: Vec<String> = clusters.iter().map(|c| c.url(DB_SHARDED)).collect();
        Some(shard_map(&urls)?)
    } else {
        None
    };
    let t_load = Instant::now();
    let pg_version = rt.block_on(load_data(&clusters, map_n.as_ref(), opts.rows))?;
    eprintln!(
        "loaded {} users in {:.1}s",
        opts.rows,
        t_load.elapsed().as_secs_f64()
    );

    let header = header_text(&opts, &pg_version, &pgbench, pgbouncer.as_deref(), &targets);
    println!("{header}");
    for n in &notes {
        println!("note: {n}");
    }

    let work = tempfile::Builder::new()
        .prefix("shardwire-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let mut scripts = BTreeMap::new();
    for w in &opts.workloads {
        let path = work.path().join(format!("{}.sql", w.name()));
        fs::write(&path, w.script(opts.rows)).map_err(|e| format!("{}: {e}", path.display()))?;
        scripts.insert(*w, path);
    }

    let total = targets.len() * opts.workloads.len() * opts.clients.len();
    let mut points: Vec<Point> = Vec::new();
    let mut sanity: Vec<String> = Vec::new();
    'targets: for &target in &targets {
        let label = target.label(opts.shards);
        // The running target: kept alive until its points are done.
        let mut _bouncer: Option<PgBouncer> = None;
        let mut _proxy: Option<ServerHandle> = None;
        let (endpoint, backing): (Endpoint, Vec<String>) = match target {
            TargetKind::Direct => (
                Endpoint {
                    port: single_port,
                    user: "postgres",
                    password: None,
                    db: DB_SINGLE,
                    cpu: CpuSource::None,
                    mode: opts.mode.clone(),
                },
                vec![clusters[0].url(DB_SINGLE)],
            ),
            TargetKind::PgBouncer => {
                let bin = pgbouncer.clone().expect("checked above");
                let b = match PgBouncer::start(&bin, single_port, work.path()) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("pgbouncer: {e}");
                        notes.push(format!("pgbouncer failed to start, skipped: {e}"));
                        continue 'targets;
                    }
                };
                let ep = Endpoint {
                    port: b.port,
                    user: "postgres",
                    password: None,
                    db: DB_SINGLE,
                    cpu: CpuSource::Pid(b.child.id()),
                    mode: if opts.mode == "prepared" {
                        "extended".into()
                    } else {
                        opts.mode.clone()
                    },
                };
                _bouncer = Some(b);
                (ep, vec![clusters[0].url(DB_SINGLE)])
            }
            TargetKind::Shardwire1 | TargetKind::ShardwireN => {
                let (map, backing) = if target == TargetKind::Shardwire1 {
                    let url = clusters[0].url(DB_SINGLE);
                    (shard_map(std::slice::from_ref(&url))?, vec![url])
                } else {
                    let backing = clusters.iter().map(|c| c.url(DB_SHARDED)).collect();
                    (map_n.clone().expect("built when needed"), backing)
                };
                let handle = rt.block_on(async {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| format!("bind: {e}"))?;
                    shardwire::server::start(map, listener)
                        .await
                        .map_err(|e| format!("starting the proxy: {e}"))
                })?;
                let ep = Endpoint {
                    port: handle.addr.port(),
                    user: APP_USER,
                    password: Some(APP_PASSWORD),
                    db: "app",
                    cpu: CpuSource::SelfProc,
                    mode: opts.mode.clone(),
                };
                _proxy = Some(handle);
                (ep, backing)
            }
        };

        for &workload in &opts.workloads {
            let script = &scripts[&workload];
            if opts.warmup > 0 {
                let c = opts.clients.iter().copied().filter(|&c| c <= 8).max();
                let c = c.unwrap_or(opts.clients[0]);
                let r = run_pgbench(&pgbench, &endpoint, script, c, opts.warmup, None);
                if let Err(e) = r.and_then(|o| o.error.map_or(Ok(()), Err)) {
                    let msg = format!("warm-up of {label} {} (c={c}) failed: {e}", workload.name());
                    eprintln!("{msg}");
                    notes.push(msg);
                }
            }
            for &clients in &opts.clients {
                if ABORT.load(Ordering::SeqCst) {
                    break 'targets;
                }
                let p = measure(
                    &pgbench,
                    &endpoint,
                    script,
                    workload,
                    target,
                    clients,
                    opts.seconds,
                    work.path(),
                );
                points.push(p);
                eprintln!(
                    "[{:>3}/{total}] {}",
                    points.len(),
                    progress_line(&label, points.last().expect("just pushed"))
                );
            }
        }
        if target != TargetKind::Direct {
            let conn = conninfo(&endpoint);
            match rt.block_on(sanity_check(&conn, &backing)) {
                Ok(msg) => sanity.push(format!("{label}: {msg}")),
                Err(e) => sanity.push(format!("{label}: MISMATCH: {e}")),
            }
        }
    }
    drop(rt); // stops the proxies' tasks and closes their backend connections
    drop(clusters);

    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let table = table_text(&points, opts.shards);
    println!("{table}");
    for s in &sanity {
        println!("sanity (count(*) and ORDER BY LIMIT vs the backing databases) {s}");
    }
    for n in &notes {
        println!("note: {n}");
    }
    let errors: Vec<&Point> = points.iter().filter(|p| p.error.is_some()).collect();
    if !errors.is_empty() {
        println!("errors:");
        for p in errors {
            println!(
                "  {} {} c={}: {}",
                p.workload.name(),
                p.target.label(opts.shards),
                p.clients,
                p.error.as_deref().unwrap_or_default()
            );
        }
    }
    let csv_path = out_dir.join("throughput.csv");
    fs::write(&csv_path, csv_text(&points, opts.shards))
        .map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let svg_path = out_dir.join("throughput.svg");
    fs::write(&svg_path, svg_text(&points, &opts, &targets, &header))
        .map_err(|e| format!("{}: {e}", svg_path.display()))?;
    println!(
        "wrote {} and {} ({} points in {:.0}s)",
        csv_path.display(),
        svg_path.display(),
        points.len(),
        started.elapsed().as_secs_f64()
    );
    if ABORT.load(Ordering::SeqCst) {
        return Err("interrupted (partial results written)".into());
    }
    Ok(())
}

/// The runtime the in-process proxies run on, built as `shardwire --threads N` builds
/// its own: N = 1 is a current-thread runtime, driven by a thread of its own (the bench's
/// main thread blocks on pgbench), any other N a multi-thread runtime.
struct ProxyRuntime {
    handle: tokio::runtime::Handle,
    multi: Option<tokio::runtime::Runtime>,
    driver: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl ProxyRuntime {
    fn new(threads: usize) -> Result<Self, String> {
        if threads != 1 {
            let rt = shardwire::server::runtime::build(threads)
                .map_err(|e| format!("tokio runtime: {e}"))?;
            return Ok(ProxyRuntime {
                handle: rt.handle().clone(),
                multi: Some(rt),
                driver: None,
            });
        }
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-proxy".into())
            .stack_size(shardwire::server::runtime::PARSER_STACK)
            .spawn(move || {
                let rt = match shardwire::server::runtime::build(1) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Drives the IO and timers until the bench is done with it.
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| format!("proxy runtime thread: {e}"))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| "the proxy runtime thread died".to_string())??;
        Ok(ProxyRuntime {
            handle,
            multi: None,
            driver: Some((stop_tx, thread)),
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.multi {
            Some(rt) => rt.block_on(f),
            None => self.handle.block_on(f),
        }
    }
}

impl Drop for ProxyRuntime {
    /// Stops the proxies' tasks and closes their backend connections (a multi-thread
    /// runtime does so when dropped with the struct).
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.driver.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// setup

/// A shard map over `urls` (shard `s{i}` = `urls[i]`).
fn shard_map(urls: &[String]) -> Result<ShardMap, String> {
    let mut y = format!(
        "listen: 127.0.0.1:0\ndatabase: app\nusers:\n  - {{ name: {APP_USER}, password: {APP_PASSWORD} }}\n\
         shards:\n"
    );
    for (i, u) in urls.iter().enumerate() {
        let _ = writeln!(y, "  - {{ name: s{i}, url: \"{u}\" }}");
    }
    let _ = write!(
        y,
        "pool: {{ size: {POOL_SIZE} }}\nhash: {{ vnodes: 256 }}\ntables:\n  \
         users: {{ key: id, type: bigint, strategy: hash }}\n  \
         orders: {{ key: user_id, type: bigint, strategy: hash }}\n"
    );
    ShardMap::from_yaml_str(&y, "throughput bench map").map_err(|e| format!("{e}\n{y}"))
}

async fn connect(conninfo: &str) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| format!("connecting to {conninfo}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

const SCHEMA: &str = "\
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, balance bigint NOT NULL);
CREATE TABLE orders (user_id bigint NOT NULL, id bigint NOT NULL, amount bigint NOT NULL,
                     PRIMARY KEY (user_id, id));";

/// Creates `bench` (all rows) on cluster 0 and, with a map, `bench_sharded` on every
/// cluster holding the rows the map places there. Returns the server version.
async fn load_data(
    clusters: &[PgCluster],
    map: Option<&ShardMap>,
    rows: i64,
) -> Result<String, String> {
    let admin = connect(&clusters[0].url("postgres")).await?;
    let version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    admin
        .batch_execute(&format!("CREATE DATABASE {DB_SINGLE}"))
        .await
        .map_err(|e| format!("CREATE DATABASE: {e}"))?;
    let c = connect(&clusters[0].url(DB_SINGLE)).await?;
    c.batch_execute(SCHEMA).await.map_err(|e| e.to_string())?;
    c.execute(
        "INSERT INTO users (id, name, balance) \
         SELECT g, 'user-' || g, (g * 7919) % 100003 FROM generate_series(1, $1::bigint) g",
        &[&rows],
    )
    .await
    .map_err(|e| format!("loading users: {e}"))?;
    c.batch_execute("VACUUM ANALYZE users, orders")
        .await
        .map_err(|e| e.to_string())?;

    if let Some(map) = map {
        let mut per_shard: Vec<Vec<i64>> = vec![Vec::new(); clusters.len()];
        for id in 1..=rows {
            per_shard[map.hash_shard(&KeyValue::Int(id))].push(id);
        }
        for (cluster, ids) in clusters.iter().zip(per_shard) {
            let admin = connect(&cluster.url("postgres")).await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {DB_SHARDED}"))
                .await
                .map_err(|e| format!("CREATE DATABASE: {e}"))?;
            let c = connect(&cluster.url(DB_SHARDED)).await?;
            c.batch_execute(SCHEMA).await.map_err(|e| e.to_string())?;
            c.execute(
                "INSERT INTO users (id, name, balance) \
                 SELECT g, 'user-' || g, (g * 7919) % 100003 FROM unnest($1::bigint[]) g",
                &[&ids],
            )
            .await
            .map_err(|e| format!("loading users on port {}: {e}", cluster.port))?;
            c.batch_execute("VACUUM ANALYZE users, orders")
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(version)
}

/// After a target's runs: `count(*)` and the ORDER BY … LIMIT result through the target
/// must equal what the backing databases hold.
async fn sanity_check(target: &str, backing: &[String]) -> Result<String, String> {
    const TOP: &str = "SELECT id, balance FROM users ORDER BY balance DESC, id LIMIT 10";
    let t = connect(target).await?;
    let count: i64 = t
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .map_err(|e| format!("count through the target: {e}"))?
        .get(0);
    let top: Vec<(i64, i64)> = t
        .query(TOP, &[])
        .await
        .map_err(|e| format!("ORDER BY LIMIT through the target: {e}"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut want_count = 0i64;
    let mut want_top: Vec<(i64, i64)> = Vec::new();
    for url in backing {
        let c = connect(url).await?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        want_count += n;
        for r in c.query(TOP, &[]).await.map_err(|e| e.to_string())? {
            want_top.push((r.get(0), r.get(1)));
        }
    }
    want_top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    want_top.truncate(10);
    if count != want_count {
        return Err(format!("count(*) {count}, the shards hold {want_count}"));
    }
    if top != want_top {
        return Err(format!("top 10 {top:?}, the shards say {want_top:?}"));
    }
    Ok(format!("ok ({count} rows)"))
}

fn conninfo(ep: &Endpoint) -> String {
    let mut s = format!(
        "host=127.0.0.1 port={} user={} dbname={}",
        ep.port, ep.user, ep.db
    );
    if let Some(p) = ep.password {
        let _ = write!(s, " password={p}");
    }
    s
}

/// PgBouncer in transaction pooling in front of one database, stopped on drop.
struct PgBouncer {
    child: Child,
    port: u16,
}

impl PgBouncer {
    fn start(bin: &Path, backend_port: u16, work: &Path) -> Result<PgBouncer, String> {
        let dir = work.join("pgbouncer");
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port()?;
        let auth = dir.join("userlist.txt");
        let ini = dir.join("pgbouncer.ini");
        fs::write(&auth, "\"postgres\" \"\"\n").map_err(|e| e.to_string())?;
        fs::write(
            &ini,
            format!(
                "[databases]\n\
                 {DB_SINGLE} = host=127.0.0.1 port={backend_port} dbname={DB_SINGLE} user=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {POOL_SIZE}\n\
                 max_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits\n",
                auth.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        // PgBouncer refuses to run as root; `-u postgres` makes it switch user itself, so
        // the child's pid stays PgBouncer's (for /proc/<pid>/stat). It reads its files after
        // switching, so they and the directories above them must be readable.
        for (p, mode) in [
            (work, 0o755),
            (dir.as_path(), 0o755),
            (&auth, 0o644),
            (&ini, 0o644),
        ] {
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        }
        let log_path = dir.join("pgbouncer.log");
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut b = PgBouncer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(b);
            }
            let exited = b.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "did not start listening on 127.0.0.1:{port} ({}):\n{log}",
                    exited.map_or("timed out".to_string(), |s| s.to_string())
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill on our own child's pid; it has not been reaped (try_wait said so).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn find_pgbench(pg_bin: &Path) -> Result<PathBuf, String> {
    let local = pg_bin.join("pgbench");
    if local.is_file() {
        return Ok(local);
    }
    which("pgbench").ok_or_else(|| {
        "pgbench not found next to initdb or on PATH: apt-get install postgresql-contrib \
         (or postgresql-client)"
            .to_string()
    })
}

fn find_pgbouncer() -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/pgbouncer");
    if sbin.is_file() {
        return Some(sbin);
    }
    which("pgbouncer")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// pgbench with 256 clients, and the proxy serving them, need a few hundred descriptors.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill in and then pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------------------
// measuring

/// utime + stime of a process, in seconds (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_seconds(src: CpuSource) -> Option<f64> {
    let path = match src {
        CpuSource::None => return None,
        CpuSource::SelfProc => "/proc/self/stat".to_string(),
        CpuSource::Pid(pid) => format!("/proc/{pid}/stat"),
    };
    let stat = fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; fields after it start at 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// What one pgbench run reported.
struct PgbenchOut {
    tps: Option<f64>,
    transactions: u64,
    failed: u64,
    error: Option<String>,
}

/// Runs pgbench against `ep` (blocking; the proxy keeps serving on its runtime's threads).
/// With `log_prefix`, per-transaction logs are written there.
fn run_pgbench(
    pgbench: &Path,
    ep: &Endpoint,
    script: &Path,
    clients: u32,
    seconds: u32,
    log_prefix: Option<&Path>,
) -> Result<PgbenchOut, String> {
    let mut cmd = Command::new(pgbench);
    cmd.args([
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        &ep.port.to_string(),
        "-U",
        ep.user,
    ])
    .args([
        "-c",
        &clients.to_string(),
        "-j",
        &clients.min(4).to_string(),
    ])
    .args(["-T", &seconds.to_string(), "-M", &ep.mode, "-f"])
    .arg(script);
    if let Some(prefix) = log_prefix {
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    cmd.arg(ep.db)
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match ep.password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", pgbench.display()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // Block (not poll) until pgbench ends; a stuck run is killed after a generous margin.
    let limit = Duration::from_secs(u64::from(seconds) + 120);
    let (out, timed_out) = match rx.recv_timeout(limit) {
        Ok(r) => (r, false),
        Err(_) => {
            // SAFETY: kill on our own child; its waiter thread has not reaped it yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            let r = rx
                .recv()
                .map_err(|_| "pgbench waiter thread vanished".to_string())?;
            (r, true)
        }
    };
    let out = out.map_err(|e| format!("waiting for pgbench: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let transactions = field("number of transactions actually processed:")
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let failed = field("number of failed transactions:")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let tps = field("tps =")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    let error = if timed_out {
        Some(format!(
            "pgbench did not finish within {}s and was killed",
            limit.as_secs()
        ))
    } else if !out.status.success() || tps.is_none() {
        let why = stderr
            .lines()
            .find(|l| l.contains("ERROR") || l.contains("aborted") || l.contains("FATAL"))
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output");
        let aborted = stderr.lines().filter(|l| l.contains("aborted")).count();
        Some(format!(
            "pgbench {} ({aborted} client(s) aborted): {}",
            out.status,
            why.trim()
        ))
    } else if failed > 0 {
        Some(format!("{failed} failed transactions"))
    } else {
        None
    };
    Ok(PgbenchOut {
        tps,
        transactions,
        failed,
        error,
    })
}

/// Latencies (µs) from pgbench's per-transaction logs `<prefix>.<pid>[.<thread>]`: the
/// third field of each line; failed/skipped transactions are left out.
fn read_latencies(prefix: &Path) -> Vec<u64> {
    let (Some(dir), Some(stem)) = (prefix.parent(), prefix.file_name()) else {
        return Vec::new();
    };
    let stem = format!("{}.", stem.to_string_lossy());
    let mut lat = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&stem) {
            continue;
        }
        if let Ok(text) = fs::read_to_string(entry.path()) {
            lat.extend(
                text.lines()
                    .filter_map(|l| l.split_whitespace().nth(2))
                    .filter_map(|v| v.parse::<u64>().ok()),
            );
        }
        let _ = fs::remove_file(entry.path());
    }
    lat.sort_unstable();
    lat
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Some(sorted_us[rank - 1] as f64 / 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    pgbench: &Path,
    ep: &Endpoint,
    script: &Path,
    workload: Workload,
    target: TargetKind,
    clients: u32,
    seconds: u32,
    work: &Path,
) -> Point {
    let log_dir = work.join("logs");
    let _ = fs::create_dir_all(&log_dir);
    let prefix = log_dir.join(format!("{}_{:?}_{clients}", workload.name(), target));
    let cpu_before = cpu_seconds(ep.cpu);
    let r = run_pgbench(pgbench, ep, script, clients, seconds, Some(&prefix));
    let cpu_after = cpu_seconds(ep.cpu);
    let lat = read_latencies(&prefix);
    let mut p = Point {
        workload,
        target,
        clients,
        proto: ep.mode.clone(),
        tps: None,
        p50_ms: percentile_ms(&lat, 0.50),
        p99_ms: percentile_ms(&lat, 0.99),
        cpu_per_10k: None,
        transactions: 0,
        failed: 0,
        error: None,
    };
    match r {
        Ok(o) => {
            p.tps = o.tps;
            p.transactions = o.transactions;
            p.failed = o.failed;
            p.error = o.error;
            let queries = o.transactions * workload.statements();
            if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
                if queries > 0 {
                    p.cpu_per_10k = Some((b - a) / queries as f64 * 10_000.0);
                }
            }
        }
        Err(e) => p.error = Some(e),
    }
    p
}

// ---------------------------------------------------------------------------------------
// reporting

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
}

fn ratio_to_direct(points: &[Point], p: &Point) -> Option<f64> {
    let direct = points.iter().find(|d| {
        d.target == TargetKind::Direct && d.workload == p.workload && d.clients == p.clients
    })?;
    match (p.tps, direct.tps) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn progress_line(label: &str, p: &Point) -> String {
    format!(
        "{label:<12} {:<13} c={:<4} {:>9} tps  p50 {:>7} ms  p99 {:>7} ms{}",
        p.workload.name(),
        p.clients,
        fmt_opt(p.tps, 0),
        fmt_opt(p.p50_ms, 2),
        fmt_opt(p.p99_ms, 2),
        p.error
            .as_deref()
            .map(|e| format!("  ERROR: {e}"))
            .unwrap_or_default()
    )
}

fn table_text(points: &[Point], shards: usize) -> String {
    let mut s = format!(
        "{:<13} {:<12} {:>7} {:<8} {:>10} {:>8} {:>8} {:>11} {:>9}  {}\n",
        "workload",
        "target",
        "clients",
        "proto",
        "tps",
        "p50 ms",
        "p99 ms",
        "cpu s/10kq",
        "vs direct",
        "note"
    );
    let _ = writeln!(s, "{}", "-".repeat(100));
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by_key(|p| (p.workload, p.clients, p.target));
    let mut last = None;
    for p in sorted {
        if last.is_some_and(|l| l != (p.workload, p.clients)) {
            s.push('\n');
        }
        last = Some((p.workload, p.clients));
        let note = match (&p.error, p.failed) {
            (Some(_), _) => "error (see below)".to_string(),
            (None, 0) => String::new(),
            (None, f) => format!("{f} failed"),
        };
        let _ = writeln!(
            s,
            "{:<13} {:<12} {:>7} {:<8} {:>10} {:>8} {:>8} {:>11} {:>9}  {note}",
            p.workload.name(),
            p.target.label(shards),
            p.clients,
            p.proto,
            fmt_opt(p.tps, 0),
            fmt_opt(p.p50_ms, 2),
            fmt_opt(p.p99_ms, 2),
            fmt_opt(p.cpu_per_10k, 3),
            fmt_opt(ratio_to_direct(points, p), 2),
        );
    }
    s
}

fn csv_text(points: &[Point], shards: usize) -> String {
    let mut s = String::from(
        "workload,target,clients,protocol,tps,p50_ms,p99_ms,proxy_cpu_s_per_10k_queries,\
         ratio_to_direct,transactions,failed_transactions,error\n",
    );
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},\"{}\"",
            p.workload.name(),
            p.target.label(shards),
            p.clients,
            p.proto,
            num(p.tps),
            num(p.p50_ms),
            num(p.p99_ms),
            num(p.cpu_per_10k),
            num(ratio_to_direct(points, p)),
            p.transactions,
            p.failed,
            p.error.as_deref().unwrap_or_default().replace('"', "\"\"")
        );
    }
    s
}

fn header_text(
    opts: &Opts,
    pg_version: &str,
    pgbench: &Path,
    pgbouncer: Option<&Path>,
    targets: &[TargetKind],
) -> String {
    let first_line = |cmd: &Path, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "?".into())
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let bouncer = pgbouncer.map_or("not found".to_string(), |b| first_line(b, "--version"));
    let labels: Vec<String> = targets.iter().map(|t| t.label(opts.shards)).collect();
    format!(
        "shardwire throughput benchmark — {} UTC\n\
         machine: {cpus} CPUs ({model}), Linux {kernel}\n\
         PostgreSQL {pg_version}; {}; PgBouncer: {bouncer}\n\
         {} s per point (+{} s warm-up per target and workload), clients {:?}, {} users, \
         pgbench -M {}, pool {POOL_SIZE} connections per shard (shardwire and PgBouncer)\n\
         targets: {}\n\
         latency = per transaction; cpu s/10kq = proxy CPU seconds (utime+stime) per 10,000 \
         client statements (tpcb_like: 5 per transaction incl. BEGIN/END); '-' = no proxy",
        utc_now(),
        first_line(pgbench, "--version"),
        opts.seconds,
        opts.warmup,
        opts.clients,
        opts.rows,
        opts.mode,
        labels.join(", "),
    )
}

/// `YYYY-MM-DD HH:MM` in UTC, without a date crate.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        tod / 3600,
        (tod % 3600) / 60
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round axis maximum at or above `v` (1, 2, 2.5, 5 × 10^k).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short_num(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if k.fract() == 0.0 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// tps vs clients, one panel per workload, one line per target (hand-written SVG).
fn svg_text(points: &[Point], opts: &Opts, targets: &[TargetKind], header: &str) -> String {
    const PW: f64 = 380.0; // panel width
    const PH: f64 = 250.0; // panel height
    const COLS: usize = 3;
    const TOP: f64 = 150.0;
    let (ml, mr, mt, mb) = (60.0, 15.0, 30.0, 40.0); // margins inside a panel
    let rows = opts.workloads.len().div_ceil(COLS);
    let width = PW * COLS as f64 + 20.0;
    let height = TOP + PH * rows as f64 + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">shardwire throughput: \
         tps vs clients</text>\n"
    );
    for (i, line) in header.lines().skip(1).take(4).enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\" font-size=\"11\" fill=\"#555\">{}</text>",
            42.0 + 15.0 * i as f64,
            xml_escape(line)
        );
    }
    // legend
    for (i, t) in targets.iter().enumerate() {
        let x = 10.0 + 150.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"3\"/>\
             <circle cx=\"{}\" cy=\"{y}\" r=\"3.5\" fill=\"{c}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 30.0,
            x + 15.0,
            x + 36.0,
            TOP - 16.0,
            t.label(opts.shards),
            y = TOP - 20.0,
            c = t.color()
        );
    }
    let n_x = opts.clients.len();
    for (wi, w) in opts.workloads.iter().enumerate() {
        let ox = 10.0 + PW * (wi % COLS) as f64;
        let oy = TOP + PH * (wi / COLS) as f64;
        let (x0, x1, y0, y1) = (ox + ml, ox + PW - mr, oy + PH - mb, oy + mt);
        let max = points
            .iter()
            .filter(|p| p.workload == *w)
            .filter_map(|p| p.tps)
            .fold(0.0, f64::max);
        let ymax = nice_max(max * 1.05);
        let xpos = |i: usize| {
            if n_x == 1 {
                (x0 + x1) / 2.0
            } else {
                x0 + (x1 - x0) * i as f64 / (n_x - 1) as f64
            }
        };
        let ypos = |v: f64| y0 - (y0 - y1) * v / ymax;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>",
            (x0 + x1) / 2.0,
            oy + 18.0,
            w.name()
        );
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let y = ypos(v);
            let _ = writeln!(
                s,
                "<line x1=\"{x0}\" y1=\"{y}\" x2=\"{x1}\" y2=\"{y}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
                x0 - 5.0,
                y + 4.0,
                short_num(v)
            );
        }
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#888\"/>\
             <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#888\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">clients</text>\
             <text x=\"{}\" y=\"{}\" fill=\"#555\" font-size=\"10\">tps</text>",
            (x0 + x1) / 2.0,
            y0 + 32.0,
            ox + 4.0,
            y1 - 8.0
        );
        for (i, c) in opts.clients.iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
                xpos(i),
                y0 + 16.0
            );
        }
        for t in targets {
            let pts: Vec<(f64, f64)> = opts
                .clients
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    points
                        .iter()
                        .find(|p| p.workload == *w && p.target == *t && p.clients == *c)
                        .and_then(|p| p.tps)
                        .map(|v| (xpos(i), ypos(v)))
                })
                .collect();
            if pts.len() > 1 {
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                    path.join(" "),
                    t.color()
                );
            }
            for (x, y) in pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\"/>",
                    t.color()
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `$CARGO_TARGET_DIR`, else `<package>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
