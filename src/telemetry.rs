//! Prometheus metrics of one proxy, through the `metrics` crate and its Prometheus exporter.
//!
//! Each proxy owns its recorder (no process-global state, so several proxies in one process —
//! the tests — keep separate numbers). Hot-path counters are handles registered once: an
//! increment is one atomic add. Pool and client gauges are read when `/metrics` is scraped.
//! Label values come from fixed sets (route kinds, shard names from the map, SQLSTATE
//! classes), so cardinality is bounded.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `shardwire_statements_total` | `route` = single, multi, all, refused | statements routed |
//! | `shardwire_errors_total` | `class` = SQLSTATE class (`23`, `0A`, …) | errors the proxy sent or relayed |
//! | `shardwire_client_connections` | | connected clients |
//! | `shardwire_pool_connections` | `shard`, `state` = in_use, idle | backend connections |
//! | `shardwire_pool_waiting` | `shard` | checkouts waiting for a connection |
//! | `shardwire_pool_size` | `shard` | most connections to the shard: `pool.size` × (users + 1, the control plane's pool) |
//! | `shardwire_shard_latency_seconds` | `shard` (histogram) | from forwarding a request to a shard to its last reply (single-shard path) |
//! | `shardwire_gathered_rows_total` | | rows returned by merged multi-shard reads |
//! | `shardwire_rebalance_running` | | 1 while a rebalance is recorded and unfinished |
//! | `shardwire_rebalance_units` | `state` = pending, switched, done | units of the current rebalance |
//! | `shardwire_rebalance_rows_moved` | | rows moved by finished units of the current rebalance |
//!
//! The latency histogram is the proxy's own ([`crate::backend::latency::LatencyHistogram`]: fixed buckets of atomic
//! counters on each shard's pool), so recording a sample never allocates or locks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

use crate::backend::pool::{PoolStats, ShardPool};

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// The metrics of one proxy.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Statements routed, by where they went (`/metrics` and the console's `SHOW STATS`).
    pub routes: RouteStats,
    errors: Mutex<HashMap<[u8; 2], Counter>>,
    clients: Gauge,
    /// Per shard: size, in use, idle, waiting.
    pools: Vec<[Gauge; 4]>,
    /// Rows returned by merged multi-shard reads.
    pub gathered_rows: Counter,
    /// The current rebalance as this proxy last read it.
    pub rebalance: RebalanceGauges,
}

/// Statements routed since the proxy started, by where they went: one relaxed atomic add
/// a statement, read by `/metrics` and by the admin console.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// To one shard.
    pub single: AtomicU64,
    /// To some of the shards (a key list).
    pub multi: AtomicU64,
    /// To every shard.
    pub all: AtomicU64,
    /// Refused by the router.
    pub refused: AtomicU64,
}

/// The rebalance progress a proxy saw in the control tables on its last look.
#[derive(Debug, Default)]
pub struct RebalanceGauges {
    /// 1 while a rebalance is unfinished.
    pub running: AtomicU64,
    /// Units pending, switched, done.
    pub units: [AtomicU64; 3],
    /// Rows moved by finished units.
    pub rows_moved: AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

impl Telemetry {
    /// Metrics for a proxy over shards named `shards`.
    pub fn new(shards: &[String]) -> Telemetry {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let clients = recorder.register_gauge(&key("shardwire_client_connections", &[]), &METADATA);
        let pools = shards
            .iter()
            .map(|s| {
                let g = |name: &'static str, state: Option<&str>| {
                    let mut labels = vec![("shard", s.clone())];
                    if let Some(st) = state {
                        labels.push(("state", st.to_string()));
                    }
                    recorder.register_gauge(&key(name, &labels), &METADATA)
                };
                [
                    g("shardwire_pool_size", None),
                    g("shardwire_pool_connections", Some("in_use")),
                    g("shardwire_pool_connections", Some("idle")),
                    g("shardwire_pool_waiting", None),
                ]
            })
            .collect();
        let gathered_rows =
            recorder.register_counter(&key("shardwire_gathered_rows_total", &[]), &METADATA);
        Telemetry {
            rebalance: RebalanceGauges::default(),
            gathered_rows,
            recorder,
            handle,
            routes: RouteStats::default(),
            errors: Mutex::new(HashMap::new()),
            clients,
            pools,
        }
    }

    /// Counts an error by its SQLSTATE class (the first two characters).
    pub fn error(&self, sqlstate: &str) {
        let b = sqlstate.as_bytes();
        let class = match b {
            [a, c, ..] if a.is_ascii_alphanumeric() && c.is_ascii_alphanumeric() => [*a, *c],
            _ => *b"XX",
        };
        let mut errors = self.errors.lock();
        errors
            .entry(class)
            .or_insert_with(|| {
                let label = String::from_utf8_lossy(&class).into_owned();
                self.recorder.register_counter(
                    &key("shardwire_errors_total", &[("class", label)]),
                    &METADATA,
                )
            })
            .increment(1);
    }

    /// The Prometheus text exposition, with gauges read now.
    /// `stats` holds each shard's pool state (every user's pools and the control plane's,
    /// summed) and `pools` one pool of each shard (for its latency), both in map order.
    pub fn render(
        &self,
        clients: usize,
        stats: &[PoolStats],
        pools: &[std::sync::Arc<ShardPool>],
    ) -> String {
        self.clients.set(clients as f64);
        for (g, st) in self.pools.iter().zip(stats) {
            g[0].set(st.size as f64);
            g[1].set(st.in_use as f64);
            g[2].set(st.idle as f64);
            g[3].set(st.waiting as f64);
        }
        let mut text = self.handle.render();
        let _ = writeln!(text, "# TYPE shardwire_statements_total counter");
        let r = &self.routes;
        for (route, n) in [
            ("single", &r.single),
            ("multi", &r.multi),
            ("all", &r.all),
            ("refused", &r.refused),
        ] {
            let _ = writeln!(
                text,
                "shardwire_statements_total{{route=\"{route}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let rb = &self.rebalance;
        let _ = writeln!(text, "# TYPE shardwire_rebalance_running gauge");
        let _ = writeln!(
            text,
            "shardwire_rebalance_running {}",
            rb.running.load(Ordering::Relaxed)
        );
        let _ = writeln!(text, "# TYPE shardwire_rebalance_units gauge");
        for (state, n) in ["pending", "switched", "done"].iter().zip(&rb.units) {
            let _ = writeln!(
                text,
                "shardwire_rebalance_units{{state=\"{state}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(text, "# TYPE shardwire_rebalance_rows_moved gauge");
        let _ = writeln!(
            text,
            "shardwire_rebalance_rows_moved {}",
            rb.rows_moved.load(Ordering::Relaxed)
        );
        let name = "shardwire_shard_latency_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Time from forwarding a request to a shard to its last reply."
        );
        let _ = writeln!(text, "# TYPE {name} histogram");
        for p in pools {
            p.latency.render(name, &p.info.name, &mut text);
        }
        text
    }
}
