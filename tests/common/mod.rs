//! Shared integration-test harness: real Postgres shards, a reference database, and the
//! proxy started in-process.
//!
//! Clusters come from `SHARDWIRE_TEST_CLUSTERS` (comma-separated ports of running clusters,
//! user `postgres`, trust auth on 127.0.0.1; `scripts/test.sh` sets it) or, when that is
//! unset or lists too few ports, are started for the test and removed with its [`TestEnv`].
//! Every `TestEnv` works in fresh databases named `sw_<random hex>`, dropped on drop, so
//! tests sharing clusters never see each other's tables.
//!
//! Use from a test file with `mod common;` and
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`. Tests that stop or restart
//! a shard use [`TestEnv::new_owned`] and should have `owned` in their name (the nextest
//! config runs those one at a time, as each starts its own clusters).
#![allow(dead_code)]

pub mod relay;
pub mod wire;

use std::path::PathBuf;

use shardwire::localpg::{self, PgCluster};
use tokio_postgres::{Client, NoTls};

/// Env var listing the ports of shared, already-running clusters.
pub const CLUSTERS_ENV: &str = "SHARDWIRE_TEST_CLUSTERS";

/// One test database: where it is.
#[derive(Debug, Clone)]
struct Db {
    port: u16,
    name: String,
}

impl Db {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }
}

/// Shard databases plus one unsharded reference database, each on its own cluster.
pub struct TestEnv {
    shards: Vec<Db>,
    reference: Db,
    /// Clusters this env started (empty when using shared ones); index = shard index,
    /// the last one holds the reference database.
    owned: Vec<PgCluster>,
    bin: PathBuf,
}

impl TestEnv {
    /// `n_shards` shard databases (one per cluster, clusters `0..n`) plus a reference
    /// database on cluster `n`. Uses the shared clusters from `SHARDWIRE_TEST_CLUSTERS` when
    /// it lists at least `n + 1` ports, otherwise starts its own.
    pub async fn new(n_shards: usize) -> TestEnv {
        match shared_ports() {
            Some(ports) if ports.len() > n_shards => {
                Self::setup(ports[..=n_shards].to_vec(), Vec::new()).await
            }
            _ => Self::new_owned(n_shards).await,
        }
    }

    /// Like [`TestEnv::new`], but always on clusters of its own (needed to stop/restart a
    /// shard); they are removed when the env drops.
    pub async fn new_owned(n_shards: usize) -> TestEnv {
        let clusters = tokio::task::spawn_blocking(move || localpg::start_many(n_shards + 1))
            .await
            .expect("cluster start task panicked")
            .unwrap_or_else(|e| panic!("cannot start local Postgres clusters: {e}"));
        let ports = clusters.iter().map(|c| c.port).collect();
        Self::setup(ports, clusters).await
    }

    /// An env on the given running clusters (`n_shards + 1` ports at least; the caller keeps
    /// them alive). Its databases are dropped on drop, as with shared clusters.
    pub async fn on_ports(ports: &[u16], n_shards: usize) -> TestEnv {
        assert!(
            ports.len() > n_shards,
            "{n_shards} shards need {} clusters, got ports {ports:?}",
            n_shards + 1
        );
        Self::setup(ports[..=n_shards].to_vec(), Vec::new()).await
    }

    async fn setup(ports: Vec<u16>, owned: Vec<PgCluster>) -> TestEnv {
        let bin = localpg::pg_bin_dir().unwrap_or_else(|e| panic!("{e}"));
        let name = format!("sw_{:016x}", rand::random::<u64>());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, &port) in ports.iter().enumerate() {
            let name = name.clone();
            tasks.spawn(async move {
                let admin =
                    connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on port {port}: {e}"));
                i
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("create database task panicked");
        }
        let mut dbs: Vec<Db> = ports
            .iter()
            .map(|&port| Db {
                port,
                name: name.clone(),
            })
            .collect();
        let reference = dbs.pop().expect("at least one cluster");
        let env = TestEnv {
            shards: dbs,
            reference,
            owned,
            bin,
        };
        if roles_mode() {
            env.least_privilege();
            // What tests create directly on the shards (as postgres) app_rw may use, as
            // an application's migrations would have granted.
            for i in 0..env.shard_count() {
                env.shard_psql(
                    i,
                    "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TABLES TO app_rw; \
                     ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SEQUENCES TO app_rw; \
                     ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON FUNCTIONS TO app_rw; \
                     ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TYPES TO app_rw; \
                     ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SCHEMAS TO app_rw",
                );
            }
        }
        env
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>` of shard `i`.
    pub fn shard_url(&self, i: usize) -> String {
        self.shards[i].url()
    }

    /// Port of the cluster behind shard `i`.
    pub fn shard_port(&self, i: usize) -> u16 {
        self.shards[i].port
    }

    /// Name of the test database (the same on every cluster).
    pub fn db_name(&self) -> &str {
        &self.reference.name
    }

    /// A direct connection to shard `i` (its connection task is spawned).
    pub async fn shard_client(&self, i: usize) -> Client {
        connect(&self.shard_url(i)).await
    }

    /// The bigint `sql` returns on each shard, read directly (e.g. a per-shard row count).
    pub async fn per_shard_i64(&self, sql: &str) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.shard_count());
        for i in 0..self.shard_count() {
            let row = self
                .shard_client(i)
                .await
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql} on shard {i}: {e}"));
            out.push(row.get(0));
        }
        out
    }

    /// Prepared (two-phase) transactions left in this environment's database, per shard.
    pub async fn prepared_left(&self) -> Vec<i64> {
        self.per_shard_i64(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
        )
        .await
    }

    /// Every `column` (cast to int8) of `table` on each shard: (shard, value).
    pub async fn placed(&self, table: &str, column: &str) -> Vec<(usize, i64)> {
        let mut out = Vec::new();
        for s in 0..self.shard_count() {
            let c = self.shard_client(s).await;
            for r in c
                .query(&format!("SELECT {column}::int8 FROM {table}"), &[])
                .await
                .unwrap()
            {
                out.push((s, r.get::<_, i64>(0)));
            }
        }
        out
    }

    /// A direct connection to the unsharded reference database.
    pub async fn reference_client(&self) -> Client {
        connect(&self.reference_url()).await
    }

    /// URL of the unsharded reference database.
    pub fn reference_url(&self) -> String {
        self.reference.url()
    }

    /// Runs SQL on shard `i` with `psql` (simple protocol, unaligned, no headers).
    pub fn shard_psql(&self, i: usize, sql: &str) -> String {
        let db = &self.shards[i];
        localpg::psql_at(&self.bin, db.port, &db.name, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates the least-privilege roles of `config/roles.sql` on every shard (control role
    /// `shardwire_control`, application role `app_rw`, which then owns the database), plus
    /// a second application role `app_rw2` (also a member of the control role's rights),
    /// with no rights on `app_rw`'s tables.
    pub fn least_privilege(&self) {
        let extra = "DO $r$ BEGIN \
             BEGIN CREATE ROLE app_rw2 LOGIN PASSWORD 'app-rw2-secret'; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; \
             IF NOT pg_has_role('shardwire_control', 'app_rw2', 'MEMBER') THEN \
             BEGIN GRANT app_rw2 TO shardwire_control; \
             EXCEPTION WHEN unique_violation THEN NULL; END; END IF; END $r$; \
             GRANT CREATE ON SCHEMA public TO app_rw2;";
        for i in 0..self.shard_count() {
            self.shard_psql(i, include_str!("../../config/roles.sql"));
            self.shard_psql(i, extra);
        }
    }

    /// A shard map like [`TestEnv::shard_map_yaml_with`] under least privilege (after
    /// [`TestEnv::least_privilege`]): the shards' URL login is `shardwire_control`, proxy
    /// user `app` runs as `app_rw` and proxy user `other` (password `other-secret`) as
    /// `app_rw2`.
    pub fn least_privilege_yaml(&self, tables: &str, extra: &str, admin: bool) -> String {
        let all: Vec<usize> = (0..self.shards.len()).collect();
        self.least_privilege_yaml_on(&all, tables, extra, admin)
    }

    /// Like [`TestEnv::least_privilege_yaml`], over the env's shards `shards` only (named
    /// `s<env index>`, as in [`TestEnv::shard_map_yaml_on`]).
    pub fn least_privilege_yaml_on(
        &self,
        shards: &[usize],
        tables: &str,
        extra: &str,
        admin: bool,
    ) -> String {
        let y = self.plain_yaml_on(shards, tables, extra, &[], admin);
        with_roles(&y, admin)
    }
}

/// With `SHARDWIRE_TEST_ROLES=1` every env's map runs under least privilege (the roles of
/// [`TestEnv::least_privilege`]), so the whole suite can be run that way.
pub fn roles_mode() -> bool {
    std::env::var("SHARDWIRE_TEST_ROLES").is_ok_and(|v| v == "1")
}

/// The role the proxy's clients run as on the shards in this mode: `app_rw` under
/// [`roles_mode`], else the URLs' `postgres`.
pub fn client_role() -> &'static str {
    role_in_mode("app_rw")
}

/// `role` under [`roles_mode`], else `postgres` (the login of the tests' plain maps).
fn role_in_mode(role: &'static str) -> &'static str {
    if roles_mode() {
        role
    } else {
        "postgres"
    }
}

/// The shards' URL login in this mode: `shardwire_control` under [`roles_mode`], else
/// `postgres`.
pub fn control_role() -> &'static str {
    role_in_mode("shardwire_control")
}

/// `y` (a map from [`TestEnv::plain_yaml_on`]) under least privilege: users `app` (as
/// app_rw) and `other` (as app_rw2), the URLs' login `shardwire_control`.
fn with_roles(y: &str, admin: bool) -> String {
    let app = if admin { ", admin: true" } else { "" };
    let users = format!(
        "users:\n  - {{ name: app, password: app-secret, shard_user: app_rw, shard_password: app-rw-secret{app} }}\n  - {{ name: other, password: other-secret, shard_user: app_rw2 }}\n"
    );
    let start = y.find("users:\n").expect("users");
    let end = y.find("shards:\n").expect("shards");
    format!("{}{users}{}", &y[..start], &y[end..]).replace(
        "postgres://postgres@",
        "postgres://shardwire_control:control-secret@",
    )
}

impl TestEnv {
    /// A direct connection to shard `i` as role `user` (trust authentication).
    pub async fn shard_client_as(&self, i: usize, user: &str) -> Client {
        let db = &self.shards[i];
        connect(&format!(
            "postgres://{user}@127.0.0.1:{}/{}",
            db.port, db.name
        ))
        .await
    }

    /// A direct connection to shard `i` as the role the proxy's clients run as (see
    /// [`client_role`]): what a test prepares there stands for the proxy's own work.
    pub async fn shard_client_for_clients(&self, i: usize) -> Client {
        self.shard_client_as(i, client_role()).await
    }

    /// Stops the cluster behind shard `i` (only for envs from [`TestEnv::new_owned`]).
    pub fn stop_shard(&self, i: usize) {
        self.owned_cluster(i)
            .stop()
            .unwrap_or_else(|e| panic!("stopping shard {i}: {e}"));
    }

    /// Starts the cluster behind shard `i` again after [`TestEnv::stop_shard`].
    pub fn restart_shard(&self, i: usize) {
        self.owned_cluster(i)
            .restart()
            .unwrap_or_else(|e| panic!("restarting shard {i}: {e}"));
    }

    fn owned_cluster(&self, i: usize) -> &PgCluster {
        assert!(
            !self.owned.is_empty(),
            "stop_shard/restart_shard need clusters of the test's own: create the env with \
             TestEnv::new_owned, not TestEnv::new (shared clusters must never be stopped)"
        );
        assert!(
            i < self.shards.len(),
            "no shard {i}: the env has {}",
            self.shards.len()
        );
        &self.owned[i]
    }

    /// A complete shard map for this env: listen on 127.0.0.1:0, database `app`, user
    /// `app`/`app-secret`,
    /// shards `s0..s{n-1}`, pool size 10, 256 vnodes, `tables:` holding `tables` (YAML, one
    /// table per line, indented here), then `extra` appended verbatim as top-level YAML.
    pub fn shard_map_yaml(&self, tables: &str, extra: &str) -> String {
        self.shard_map_yaml_with(tables, extra, &[], false)
    }

    /// Like [`TestEnv::shard_map_yaml`], but shard `i` carries `region: <regions[i]>` (no
    /// region when `regions` is shorter) and, with `admin`, user `app` is an admin
    /// (`admin: true`: may use the admin console, database `shardwire`).
    pub fn shard_map_yaml_with(
        &self,
        tables: &str,
        extra: &str,
        regions: &[&str],
        admin: bool,
    ) -> String {
        let all: Vec<usize> = (0..self.shards.len()).collect();
        self.shard_map_yaml_on(&all, tables, extra, regions, admin)
    }

    /// Like [`TestEnv::shard_map_yaml_with`], over the env's shards `shards` only, each
    /// named `s<env index>` (so a name means the same database in every map).
    pub fn shard_map_yaml_on(
        &self,
        shards: &[usize],
        tables: &str,
        extra: &str,
        regions: &[&str],
        admin: bool,
    ) -> String {
        let y = self.plain_yaml_on(shards, tables, extra, regions, admin);
        match roles_mode() {
            true => with_roles(&y, admin),
            false => y,
        }
    }

    /// [`TestEnv::shard_map_yaml_on`] logged in as `postgres` whatever the mode.
    fn plain_yaml_on(
        &self,
        shards: &[usize],
        tables: &str,
        extra: &str,
        regions: &[&str],
        admin: bool,
    ) -> String {
        let mut y = String::from("listen: 127.0.0.1:0\ndatabase: app\nusers:\n");
        if admin {
            y.push_str("  - { name: app, password: app-secret, admin: true }\n");
        } else {
            y.push_str("  - { name: app, password: app-secret }\n");
        }
        y.push_str("shards:\n");
        for &i in shards {
            let db = &self.shards[i];
            match regions.get(i) {
                Some(r) => y.push_str(&format!(
                    "  - {{ name: s{i}, url: \"{}\", region: {r} }}\n",
                    db.url()
                )),
                None => y.push_str(&format!("  - {{ name: s{i}, url: \"{}\" }}\n", db.url())),
            }
        }
        y.push_str("pool: { size: 10, connect_timeout_ms: 15000 }\nhash: { vnodes: 256 }\n");
        if tables.trim().is_empty() {
            y.push_str("tables: {}\n");
        } else {
            y.push_str("tables:\n");
            for line in tables.lines() {
                if line.trim().is_empty() {
                    y.push('\n');
                } else {
                    y.push_str("  ");
                    y.push_str(line);
                    y.push('\n');
                }
            }
        }
        if !extra.is_empty() {
            y.push_str(extra);
            if !extra.ends_with('\n') {
                y.push('\n');
            }
        }
        y
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !self.owned.is_empty() {
            return; // the clusters themselves are removed when `owned` drops
        }
        // Shared clusters: drop our databases (best effort, in parallel, blocking).
        let handles: Vec<_> = self
            .shards
            .iter()
            .chain(std::iter::once(&self.reference))
            .cloned()
            .map(|db| {
                let bin = self.bin.clone();
                std::thread::spawn(move || {
                    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name);
                    if let Err(e) = localpg::psql_at(&bin, db.port, "postgres", &sql) {
                        eprintln!("warning: cleaning up test database: {e}");
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Ports from `SHARDWIRE_TEST_CLUSTERS`, if set and non-empty.
fn shared_ports() -> Option<Vec<u16>> {
    let v = std::env::var(CLUSTERS_ENV).ok()?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    Some(
        v.split(',')
            .map(|p| {
                p.trim().parse::<u16>().unwrap_or_else(|_| {
                    panic!("{CLUSTERS_ENV}={v:?}: expected comma-separated ports, e.g. 5433,5434")
                })
            })
            .collect(),
    )
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task.
pub async fn connect(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The proxy, running in this test process.
pub struct Proxy {
    /// Its server handle (shuts the listener down when dropped).
    pub handle: shardwire::server::ServerHandle,
}

impl Proxy {
    /// Starts the proxy on 127.0.0.1:0 with `env.shard_map_yaml(tables, extra)`.
    pub async fn start(env: &TestEnv, tables: &str, extra: &str) -> Proxy {
        let yaml = env.shard_map_yaml(tables, extra);
        let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "test shard map")
            .unwrap_or_else(|e| panic!("invalid test shard map: {e}\n--- map ---\n{yaml}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let handle = shardwire::server::start(map, listener)
            .await
            .unwrap_or_else(|e| panic!("starting the proxy: {e}"));
        Proxy { handle }
    }

    /// Starts the proxy on 127.0.0.1:0 with a complete shard map (e.g. from
    /// [`TestEnv::shard_map_yaml_with`]); several proxies may share one map.
    pub async fn start_yaml(yaml: &str) -> Proxy {
        let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(yaml, "test shard map")
            .unwrap_or_else(|e| panic!("invalid test shard map: {e}\n--- map ---\n{yaml}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let handle = shardwire::server::start(map, listener)
            .await
            .unwrap_or_else(|e| panic!("starting the proxy: {e}"));
        Proxy { handle }
    }

    /// Conninfo of the admin console: like [`Proxy::conninfo`] with `dbname=shardwire`
    /// (the map must make `app` an admin).
    pub fn admin_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname=shardwire",
            self.port()
        )
    }

    /// A connection to the admin console (use the simple query protocol on it).
    pub async fn admin_client(&self) -> Client {
        connect(&self.admin_conninfo()).await
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.handle.addr.port()
    }

    /// `host=127.0.0.1 port=.. user=app password=app-secret dbname=app`, for tokio-postgres,
    /// psql and psycopg.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname=app",
            self.port()
        )
    }

    /// A tokio-postgres connection through the proxy (its connection task is spawned).
    pub async fn client(&self) -> Client {
        connect(&self.conninfo()).await
    }
}

/// Through `c`: `CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL<extra>)` and
/// rows 1..=n named `user-{id}`, inserted one prepared statement at a time.
pub async fn create_users(c: &Client, extra_columns: &str, n: i64) {
    c.batch_execute(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL{extra_columns})"
    ))
    .await
    .expect("create users");
    let st = c
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await
        .expect("prepare insert");
    for id in 1..=n {
        c.execute(&st, &[&id, &format!("user-{id}")])
            .await
            .expect("insert user");
    }
}

/// pgbench from PATH, else the newest /usr/lib/postgresql/*/bin.
pub fn pgbench_path() -> PathBuf {
    if let Ok(out) = std::process::Command::new("pgbench")
        .arg("--version")
        .output()
    {
        if out.status.success() {
            return PathBuf::from("pgbench");
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|b| b.parent())
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "pgbench not found on PATH or in /usr/lib/postgresql/*/bin: \
         apt-get install postgresql-contrib (./scripts/test.sh does)",
    )
}

/// The rows of a simple-protocol result as column -> text value maps (NULL as "").
/// The first column of the first row `sql` returns through the simple protocol (empty when
/// it returns none); panics, naming `sql`, on an error.
pub async fn first_value(c: &Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows_as_maps(rows)
        .into_iter()
        .next()
        .and_then(|m| m.into_values().next())
        .unwrap_or_default()
}

/// The SQLSTATE of `e` (empty when it has none).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

pub fn rows_as_maps(
    messages: Vec<tokio_postgres::SimpleQueryMessage>,
) -> Vec<std::collections::HashMap<String, String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The value after `prefix` on the first line that starts with it (pgbench's report).
pub fn report_field<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(str::trim)
}

/// `python3 tests/py/<script>` (`$PYTHON` if set): a Python driver program.
pub fn python(script: &str) -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR")));
    cmd
}

/// `node <script>` in tests/node (its node_modules come from `npm ci` there).
pub fn node(script: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node"))
        .arg(script);
    cmd
}

/// `java -cp <pgjdbc> tests/java/<file>` (Debian's jar, or `$PGJDBC_JAR`).
pub fn java(file: &str) -> std::process::Command {
    let jar =
        std::env::var("PGJDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    let mut cmd = std::process::Command::new("java");
    cmd.args(["-cp", &jar])
        .arg(format!("{}/tests/java/{file}", env!("CARGO_MANIFEST_DIR")));
    cmd
}

/// `go run <file>` in tests/go, offline in GOPATH mode over Debian's Go packages
/// (`$SHARDWIRE_GOPATH` to use others).
pub fn go_run(file: &str) -> std::process::Command {
    let gopath = std::env::var("SHARDWIRE_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".into());
    let mut cmd = std::process::Command::new("go");
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go"))
        .args(["run", file])
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", std::env::temp_dir().join("shardwire-gocache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off");
    cmd
}

/// Runs a driver's check program on a blocking thread (the proxy runs on the test's
/// runtime); asserts it succeeded and printed `expect`; returns its standard output.
pub async fn run_program(mut cmd: std::process::Command, expect: &'static str) -> String {
    let what = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("program task panicked")
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (./scripts/test.sh installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(expect),
        "{what} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    stdout
}

/// The first `n` ids (from 1) that `map` hashes to each of its `shards` shards, by shard.
pub fn ids_by_shard(
    map: &shardwire::sharding::shardmap::ShardMap,
    shards: usize,
    n: usize,
) -> Vec<Vec<i64>> {
    let mut out = vec![Vec::new(); shards];
    for id in 1i64.. {
        let s = map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id));
        if out[s].len() < n {
            out[s].push(id);
        }
        if out.iter().all(|v| v.len() >= n) {
            break;
        }
    }
    out
}
