//! The `shardwire` command line: serve, quickstart, check, route.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardwire::sharding::shardmap::ShardMap;

#[derive(Parser)]
#[command(
    name = "shardwire",
    version,
    about = "PostgreSQL sharding proxy and query router"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing EnvFilter directive).
    #[arg(long, global = true, default_value = "info", env = "SHARDWIRE_LOG")]
    log_level: String,
    /// Log format: text (human) or json (one object per line, with span fields such as the
    /// client id and peer).
    #[arg(long, global = true, default_value = "text", env = "SHARDWIRE_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: String,
    /// Worker threads of the proxy's runtime; 0 = one per CPU. On a host the proxy shares
    /// with busy neighbours (shards, load generators), 1 spends the least CPU per statement.
    #[arg(long, global = true, default_value_t = 0, env = "SHARDWIRE_THREADS")]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy with a shard map.
    Serve {
        /// The shard map (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Start 3 throwaway local Postgres shards and the proxy in front of them; Ctrl-C removes everything.
    Quickstart {
        /// The shard map to use (its shard ports are replaced by the throwaway shards').
        #[arg(long, default_value = "config/quickstart.yaml")]
        config: PathBuf,
        /// Listen address (overrides the map's `listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate a shard map and print a summary.
    Check {
        /// The shard map (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Move the rows whose owner changes from one shard map to another, online (see README).
    Rebalance {
        /// The shard map the proxies run now.
        #[arg(long)]
        from: PathBuf,
        /// The shard map to move to.
        #[arg(long)]
        to: PathBuf,
        /// Print the plan (rows counted on the shards) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Rows per unit: larger units copy faster, smaller ones hold statements for less
        /// time at each switch.
        #[arg(long, default_value_t = shardwire::rebalance::UNIT_ROWS)]
        unit_rows: u64,
    },
    /// Show which shard a key goes to, and why.
    Route {
        /// The shard map (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Table name.
        table: String,
        /// Key value, as SQL text.
        key: String,
    },
    /// Test support: start or stop detached local clusters (used by scripts/test.sh).
    #[command(hide = true)]
    DevClusters {
        /// up or down.
        action: String,
        /// Number of clusters for `up`.
        #[arg(long, default_value_t = 4)]
        count: usize,
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_level, cli.log_format == "json");
    let threads = cli.threads;
    // One thread: everything runs on a current-thread runtime in a thread of our own, whose
    // stack is as deep as the workers' (see `runtime`).
    let result = if threads == 1 {
        std::thread::Builder::new()
            .name("shardwire".into())
            .stack_size(shardwire::server::runtime::PARSER_STACK)
            .spawn(move || run(cli.cmd, threads))
            .map_err(|e| format!("cannot start the runtime thread: {e}"))
            .and_then(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("the runtime thread panicked".into()))
            })
    } else {
        run(cli.cmd, threads)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries command output such as the rebalance plan), with colour
/// only on a terminal. A plain level is a plain level filter: an `EnvFilter` takes a lock and
/// a map lookup each time a span is entered or left, and every client session's future runs
/// inside its span (entered at every poll) — 6% of the proxy's instructions per statement.
fn init_logs(level: &str, json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};
    let filter: Box<dyn Layer<Registry> + Send + Sync> = match level.parse::<LevelFilter>() {
        Ok(l) => Box::new(l),
        Err(_) => Box::new(EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let logs = tracing_subscriber::registry().with(filter);
    if json {
        logs.with(fmt.json().with_current_span(true)).init();
    } else {
        logs.with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init();
    }
}

/// Prints a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// The runtime for `--threads` (see [`shardwire::server::runtime::build`]).
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    shardwire::server::runtime::build(threads).map_err(|e| format!("cannot start runtime: {e}"))
}

fn run(cmd: Cmd, threads: usize) -> Result<(), String> {
    match cmd {
        Cmd::Check { config } => {
            let map = ShardMap::load(&config).map_err(|e| e.to_string())?;
            say(&format!("{} is valid\n{}", config.display(), map.summary()));
            Ok(())
        }
        Cmd::Rebalance {
            from,
            to,
            dry_run,
            yes,
            unit_rows,
        } => {
            let opts = shardwire::rebalance::Options {
                from,
                to,
                dry_run,
                yes,
                unit_rows,
            };
            let summary = runtime(threads)?
                .block_on(shardwire::rebalance::run(&opts))
                .map_err(|e| format!("rebalance: {e}"))?;
            if !dry_run {
                say(&summary.line());
            }
            Ok(())
        }
        Cmd::Route { config, table, key } => {
            let map = ShardMap::load(&config).map_err(|e| e.to_string())?;
            say(&map.explain_route(&table, &key).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Serve { config } => {
            let map = ShardMap::load(&config).map_err(|e| e.to_string())?;
            runtime(threads)?.block_on(serve(map, Some(config)))
        }
        Cmd::Quickstart { config, listen } => quickstart(&config, listen, threads),
        Cmd::DevClusters { action, count, dir } => match action.as_str() {
            "up" => {
                let ports =
                    shardwire::localpg::up_detached(count, &dir).map_err(|e| e.to_string())?;
                let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
                say(&list.join(","));
                Ok(())
            }
            "down" => shardwire::localpg::down_detached(&dir).map_err(|e| e.to_string()),
            other => Err(format!("unknown action {other}: use up or down")),
        },
    }
}

async fn serve(map: ShardMap, config: Option<PathBuf>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&map.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", map.listen))?;
    let handle = shardwire::server::start(map, listener)
        .await
        .map_err(|e| e.to_string())?;
    *handle.shared.config_path.lock() = config;
    #[cfg(unix)]
    spawn_reload_on_sighup(handle.shared.clone());
    let asked = handle.shared.shutdown.notified();
    tokio::select! {
        _ = wait_for_stop() => {}
        _ = asked => {}
    }
    // Graceful: stop accepting, let connected clients finish (up to DRAIN), then exit.
    handle.shutdown();
    let clients = || {
        handle
            .shared
            .clients
            .load(std::sync::atomic::Ordering::Acquire)
    };
    tracing::info!(
        clients = clients(),
        "shutting down: no new clients; draining"
    );
    let deadline = tokio::time::Instant::now() + DRAIN;
    let second = wait_for_stop();
    tokio::pin!(second);
    while clients() > 0 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = &mut second => break, // a second signal: exit now
        }
    }
    if clients() > 0 {
        tracing::warn!(
            clients = clients(),
            "drain deadline passed; closing the remaining sessions"
        );
    }
    Ok(())
}

/// Reloads the shard map on every SIGHUP (an invalid file is logged and ignored).
#[cfg(unix)]
fn spawn_reload_on_sighup(shared: std::sync::Arc<shardwire::session::Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; use the admin console's RELOAD");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Err(e) = shardwire::ops::reload::reload(&shared) {
                tracing::error!(error = %e, "SIGHUP: reload refused");
            }
        }
    });
}

/// How long a SIGTERM/Ctrl-C waits for connected clients to leave.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The roles `quickstart` creates on each shard (see the file).
const ROLES_SQL: &str = include_str!("../config/roles.sql");

fn quickstart(config: &Path, listen: Option<String>, threads: usize) -> Result<(), String> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(_) if config == Path::new("config/quickstart.yaml") => {
            include_str!("../config/quickstart.yaml").to_string()
        }
        Err(e) => return Err(format!("cannot read {}: {e}", config.display())),
    };
    let mut map =
        ShardMap::from_yaml_str(&text, &config.display().to_string()).map_err(|e| e.to_string())?;
    if let Some(l) = listen {
        map.listen = l;
    }
    let n = map.shards.len();
    eprintln!("starting {n} throwaway Postgres shards (initdb into temp dirs)...");
    let clusters = shardwire::localpg::start_many(n).map_err(|e| e.to_string())?;
    for (shard, cluster) in map.shards.iter_mut().zip(&clusters) {
        cluster
            .psql(
                "postgres",
                &format!("CREATE DATABASE \"{}\"", shard.dbname.replace('"', "\"\"")),
            )
            .map_err(|e| e.to_string())?;
        // The least-privilege roles the map logs in as (a control role, an application
        // role; neither a superuser).
        cluster
            .psql(&shard.dbname, ROLES_SQL)
            .map_err(|e| e.to_string())?;
        shard.host = "127.0.0.1".into();
        shard.port = cluster.port;
        eprintln!(
            "  shard {} -> 127.0.0.1:{} (data in {})",
            shard.name,
            cluster.port,
            cluster.dir.display()
        );
    }
    let user = map
        .users
        .first()
        .map(|u| (u.name.clone(), u.password.clone()));
    let rt = runtime(threads)?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&map.listen)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen on {}: {e} (pass --listen 127.0.0.1:PORT)",
                    map.listen
                )
            })?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let handle = shardwire::server::start(map, listener)
            .await
            .map_err(|e| e.to_string())?;
        if let Some((u, p)) = user {
            println!(
                "shardwire is up. Connect with:\n  psql \"postgres://{u}:{p}@{}:{}/app\"",
                addr.ip(),
                addr.port()
            );
        }
        println!("Press Ctrl-C to stop and remove the shards.");
        wait_for_stop().await;
        handle.shutdown();
        Ok::<(), String>(())
    });
    drop(rt);
    eprintln!("stopping shards and removing their data...");
    drop(clusters);
    result
}
