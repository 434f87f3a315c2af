//! The driver matrix (issue 16): every driver through the proxy on 3 real shards, the same
//! 12 scenarios each — connect, DDL, CRUD by key, prepared statements, multi-shard reads,
//! one- and two-shard transactions (commit, rollback, an error), the batch API, COPY, 20
//! concurrent connections, cancel, statement_timeout. The contract a driver program follows
//! is `tests/driver_matrix.md`; each program prints one `CELL <scenario> ok|n/a <why>` line
//! per scenario. This harness starts the shards and the proxy, runs the program, checks that
//! every cell is `ok` (or one of the n/a cells that driver is allowed), then checks placement
//! on each shard directly: every row of `items` is where its id hashes, none twice.

mod common;
mod matrix;

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;

/// The map every matrix run uses.
pub const TABLES: &str = "items: { key: id, type: bigint, strategy: hash }\n";

/// The scenarios, in the order a program reports them.
pub const SCENARIOS: [&str; 12] = [
    "connect",
    "ddl",
    "crud",
    "prepared",
    "multi_shard_read",
    "txn_one_shard",
    "txn_two_shards",
    "batch",
    "copy",
    "concurrency",
    "cancel",
    "statement_timeout",
];

/// One matrix run: the shards, the proxy, and the ids the program is given.
pub struct Run {
    pub env: TestEnv,
    pub proxy: Proxy,
    map: ShardMap,
    /// One id on each shard (`ids[s]` lives on shard `s`).
    pub ids: Vec<i64>,
    /// 50 ids that all live on shard 0.
    pub batch_ids: Vec<i64>,
}

impl Run {
    /// Three shards and a proxy with `pool` backend connections a shard (20 concurrent
    /// clients need at least that many under transaction pooling to never queue long).
    pub async fn start() -> Run {
        let env = TestEnv::new(3).await;
        let yaml = env
            .shard_map_yaml(TABLES, "")
            .replace("pool: { size: 10,", "pool: { size: 24,");
        let map = ShardMap::from_yaml_str(&yaml, "matrix").expect("matrix map");
        let proxy = Proxy::start_yaml(&yaml).await;
        let on = |id: i64| map.hash_shard(&KeyValue::Int(id));
        let ids = (0..3)
            .map(|s| (1i64..).find(|&id| on(id) == s).expect("an id per shard"))
            .collect();
        let batch_ids = (10_001i64..).filter(|&id| on(id) == 0).take(50).collect();
        Run {
            env,
            proxy,
            map,
            ids,
            batch_ids,
        }
    }

    /// `postgresql://app:app-secret@127.0.0.1:<port>/app`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://app:app-secret@127.0.0.1:{}/app",
            self.proxy.port()
        )
    }

    /// The program's arguments after the driver name: URL, IDS, BATCH_IDS.
    pub fn args(&self) -> [String; 3] {
        [self.url(), list(&self.ids), list(&self.batch_ids)]
    }

    /// Runs an external driver program (`<cmd> <driver> URL IDS BATCH_IDS`) and checks its
    /// report and the placement.
    pub async fn external(&self, mut cmd: std::process::Command, driver: &str, na: &[&str]) {
        cmd.arg(driver).args(self.args());
        let out = common::run_program(cmd, "matrix done").await;
        self.finish(driver, &out, na).await;
    }

    /// Checks a program's report: every scenario once, in order, `ok` unless listed in `na`
    /// (those must say `n/a` and why); then the placement of every row on the shards.
    pub async fn finish(&self, driver: &str, out: &str, na: &[&str]) {
        let cells: Vec<(&str, &str)> = out
            .lines()
            .filter_map(|l| l.strip_prefix("CELL "))
            .map(|l| l.split_once(' ').unwrap_or((l, "")))
            .collect();
        let names: Vec<&str> = cells.iter().map(|c| c.0).collect();
        assert_eq!(names, SCENARIOS, "{driver}: scenarios reported\n{out}");
        for (name, verdict) in &cells {
            if na.contains(name) {
                assert!(
                    verdict.starts_with("n/a ") && verdict.len() > 6,
                    "{driver} {name}: expected n/a with a reason, got {verdict:?}"
                );
            } else {
                assert_eq!(*verdict, "ok", "{driver} {name}\n{out}");
            }
        }
        self.check_placement(driver).await;
        // One line per driver for the README table (shown with --no-capture).
        let row: Vec<&str> = cells
            .iter()
            .map(|(_, v)| if *v == "ok" { "ok" } else { "n/a" })
            .collect();
        println!("MATRIX | {driver} | {} |", row.join(" | "));
    }

    /// Every row of `items` on each shard is one its id hashes to, and the proxy's count is
    /// the sum of the shards' (no row twice).
    async fn check_placement(&self, driver: &str) {
        let mut total = 0i64;
        for s in 0..self.env.shard_count() {
            let c = self.env.shard_client(s).await;
            let rows = c
                .query("SELECT id FROM items", &[])
                .await
                .unwrap_or_else(|e| panic!("{driver}: reading items on shard {s}: {e}"));
            for r in &rows {
                let id: i64 = r.get(0);
                assert_eq!(
                    self.map.hash_shard(&KeyValue::Int(id)),
                    s,
                    "{driver}: row {id} is on shard {s}"
                );
            }
            total += rows.len() as i64;
        }
        let c = self.proxy.client().await;
        let through: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(through, total, "{driver}: proxy count vs the shards'");
        assert!(total > 0, "{driver} left no rows to check");
    }
}

/// `1,2,3`.
pub fn list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

macro_rules! matrix_test {
    ($name:ident, $program:expr, $driver:literal, [$($na:literal),*]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let run = Run::start().await;
            run.external($program, $driver, &[$($na),*]).await;
        }
    };
}

matrix_test!(psycopg, common::python("matrix.py"), "psycopg", []);
matrix_test!(
    psycopg_async,
    common::python("matrix.py"),
    "psycopg-async",
    []
);
matrix_test!(
    psycopg_pipeline,
    common::python("matrix.py"),
    "psycopg-pipeline",
    []
);
matrix_test!(
    psycopg2,
    common::python("matrix.py"),
    "psycopg2",
    ["prepared"]
);
matrix_test!(asyncpg, common::python("matrix.py"), "asyncpg", []);
matrix_test!(
    sqlalchemy_psycopg,
    common::python("matrix.py"),
    "sqlalchemy-psycopg",
    []
);
matrix_test!(
    sqlalchemy_asyncpg,
    common::python("matrix.py"),
    "sqlalchemy-asyncpg",
    []
);
matrix_test!(node_postgres, common::node("matrix.mjs"), "pg", []);
matrix_test!(postgres_js, common::node("matrix.mjs"), "postgres", []);
matrix_test!(jdbc, common::java("JdbcMatrix.java"), "jdbc", []);
matrix_test!(go_pgx, common::go_run("matrix.go"), "pgx", []);
matrix_test!(go_lib_pq, common::go_run("matrix.go"), "pq", []);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres() {
    let run = Run::start().await;
    let out = matrix::tokio_pg::run(&run).await;
    run.finish("tokio-postgres", &out, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx() {
    let run = Run::start().await;
    let out = matrix::sqlx_drv::run(&run).await;
    run.finish("sqlx", &out, &["cancel"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql() {
    let run = Run::start().await;
    let out = matrix::psql::run(&run).await;
    run.finish("psql", &out, &["prepared"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple() {
    pgbench_mode("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended() {
    pgbench_mode("extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared() {
    pgbench_mode("prepared").await;
}

async fn pgbench_mode(mode: &str) {
    let run = Run::start().await;
    let out = matrix::pgbench::run(&run, mode).await;
    let mut na = vec![
        "ddl",
        "multi_shard_read",
        "txn_one_shard",
        "txn_two_shards",
        "batch",
        "copy",
        "cancel",
        "statement_timeout",
    ];
    if mode != "prepared" {
        na.push("prepared");
    }
    run.finish(&format!("pgbench -M {mode}"), &out, &na).await;
}
