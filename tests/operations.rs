//! Operating a running proxy: hot reload of the shard map (admin `RELOAD` and SIGHUP to
//! `shardwire serve`), the `SHOW CLIENTS` / `SHOW SERVERS` views, admin `SHUTDOWN`, and a
//! shard that is restarted under load.
//!
//! What is proven, and how:
//! - `RELOAD` under pgbench swaps the map without failing a single transaction: a reference
//!   table added mid-run takes writes on every shard at once, an invalid file is refused
//!   with SQLSTATE 55000 naming the file and line while the old map keeps serving, and the
//!   sum of balances on the shards equals pgbench's committed transaction count.
//! - SIGHUP to the real binary does the same reload (polled until an INSERT lands on every
//!   shard); an invalid file only gets logged and the process keeps serving.
//! - `SHOW CLIENTS` has one row per connected client with its state (clients are matched by
//!   their own TCP port); `SHOW SERVERS` shows the backend of an open transaction as
//!   `active` with the pid the backend itself reports, cross-checked in `pg_stat_activity`.
//! - `SHUTDOWN` refuses new connections at once while a session in a transaction commits.
//! - A shard stopped and restarted under 6 concurrent clients: errors only for its keys and
//!   only while it is down (plus a short grace period), recovery without restarting the
//!   proxy. The per-phase counts are printed.
//!
//! Tags of admin commands are read with a small raw protocol client (tokio-postgres only
//! exposes the row count of a command tag).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use common::{Proxy, TestEnv};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const USERS_TABLE: &str = "users: { key: id, type: bigint, strategy: hash }";
const COUNTRIES_TABLE: &str = "countries: { strategy: reference }";
/// The users table with a typo in its strategy: a map that does not load.
const USERS_TABLE_INVALID: &str = "users: { key: id, type: bigint, strategy: hsh }";
/// Bound for any single step that should be quick.
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
async fn bounded<T>(what: &str, limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
}

/// A shard map for `env` with `tables` (one YAML table entry each); user `app` is an admin.
fn map_yaml(env: &TestEnv, tables: &[&str]) -> String {
    env.shard_map_yaml_with(&tables.join("\n"), "", &[], true)
}

/// Replaces the map file in one step (write a sibling, rename), so a reload never reads
/// half a file.
fn write_map(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// 1-based number of the first line of `yaml` containing `needle`.
fn line_of(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{yaml}"))
        + 1
}

/// Rows of an admin command (simple protocol) as column -> value maps.
async fn admin(c: &Client, sql: &str) -> Vec<HashMap<String, String>> {
    common::rows_as_maps(
        bounded(sql, STEP, c.simple_query(sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

/// Polls the admin command `sql` every 50 ms until `done` holds for its rows (at most 5 s);
/// the last rows.
async fn admin_until(
    c: &Client,
    sql: &str,
    what: &str,
    done: impl Fn(&[HashMap<String, String>]) -> bool,
) -> Vec<HashMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = admin(c, sql).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {sql} still shows {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first column of the first row of `sql`, run with the simple protocol.
async fn simple_value(c: &Client, sql: &str) -> String {
    bounded(sql, STEP, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// SQLSTATE and message of an error (`None` code for a broken connection or a timeout).
fn error_parts(e: &tokio_postgres::Error) -> (Option<String>, String) {
    match e.as_db_error() {
        Some(db) => (Some(db.code().code().to_string()), db.message().to_string()),
        None => (None, e.to_string()),
    }
}

/// `CREATE TABLE users (id bigint PRIMARY KEY, balance bigint ...)` through the proxy and
/// rows `1..=n` with balance 0.
async fn create_users_with_balance(c: &Client, n: i64) {
    c.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, balance bigint NOT NULL DEFAULT 0)",
    )
    .await
    .expect("create users");
    let ins = c
        .prepare("INSERT INTO users (id) VALUES ($1)")
        .await
        .expect("prepare insert");
    for id in 1..=n {
        c.execute(&ins, &[&id]).await.expect("insert user");
    }
}

/// `countries(code, name)`, empty, created directly on every shard.
async fn create_countries_on_every_shard(env: &TestEnv) {
    for i in 0..env.shard_count() {
        env.shard_client(i)
            .await
            .batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text)")
            .await
            .unwrap_or_else(|e| panic!("create countries on shard {i}: {e}"));
    }
}

/// The shards (read directly) holding country `code`.
async fn shards_with_country(env: &TestEnv, code: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        let n: i64 = env
            .shard_client(i)
            .await
            .query_one("SELECT count(*) FROM countries WHERE code = $1", &[&code])
            .await
            .unwrap_or_else(|e| panic!("reading countries on shard {i}: {e}"))
            .get(0);
        if n > 0 {
            out.push(i);
        }
    }
    out
}

/// Inserts country `code` through `c` and asserts it is on every shard.
async fn insert_reference_row_everywhere(env: &TestEnv, c: &Client, code: &str) {
    bounded(
        "a reference insert",
        STEP,
        c.execute(
            "INSERT INTO countries (code, name) VALUES ($1, $2)",
            &[&code, &format!("country {code}")],
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("insert country {code}: {e:?}"));
    let all: Vec<usize> = (0..env.shard_count()).collect();
    assert_eq!(
        shards_with_country(env, code).await,
        all,
        "a reference-table write goes to every shard"
    );
}

// ---------------------------------------------------------------------------------------
// A raw protocol client, for the exact command tags of admin commands
// ---------------------------------------------------------------------------------------

/// What one simple query returned.
#[derive(Debug, Default)]
struct Reply {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    tags: Vec<String>,
    /// SQLSTATE and message of an ErrorResponse.
    error: Option<(String, String)>,
}

/// A logged-in protocol connection as `app`/`app-secret`.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
}

/// Reads a NUL-terminated string off `b`.
fn take_cstr(b: &mut BytesMut) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance((end + 1).min(b.len()));
    s
}

/// The fields of an ErrorResponse body by their type byte.
fn error_fields(mut b: BytesMut) -> HashMap<u8, String> {
    let mut out = HashMap::new();
    while !b.is_empty() && b[0] != 0 {
        let t = b.get_u8();
        out.insert(t, take_cstr(&mut b));
    }
    out
}

impl Raw {
    /// Connects to the proxy on `port` and logs in to `database` (SCRAM, md5 or cleartext).
    async fn login(port: u16, database: &str) -> Raw {
        let sock = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connecting to the proxy on port {port}: {e}"));
        let mut r = Raw {
            sock,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", "app"), ("database", database)], &mut out).unwrap();
        r.send(&mut out).await;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = r.recv().await.expect("the proxy closed during login");
            match tag {
                b'R' => match body.get_i32() {
                    0 => {}
                    3 => {
                        frontend::password_message(b"app-secret", &mut out).unwrap();
                        r.send(&mut out).await;
                    }
                    5 => {
                        let salt = [body[0], body[1], body[2], body[3]];
                        let resp = shardwire::wire::auth::md5_expected("app", "app-secret", salt);
                        frontend::password_message(resp.as_bytes(), &mut out).unwrap();
                        r.send(&mut out).await;
                    }
                    10 => {
                        let s = ScramSha256::new(b"app-secret", ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                            .unwrap();
                        scram = Some(s);
                        r.send(&mut out).await;
                    }
                    11 => {
                        let s = scram.as_mut().expect("SASL continue before SASL");
                        s.update(&body).expect("SCRAM server-first message");
                        frontend::sasl_response(s.message(), &mut out).unwrap();
                        r.send(&mut out).await;
                    }
                    12 => {
                        let s = scram.as_mut().expect("SASL final before SASL");
                        s.finish(&body).expect("SCRAM server signature");
                    }
                    other => panic!("unexpected authentication request {other}"),
                },
                b'E' => panic!("login failed: {:?}", error_fields(body)),
                b'Z' => return r,
                _ => {}
            }
        }
    }

    async fn send(&mut self, out: &mut BytesMut) {
        self.sock
            .write_all(out)
            .await
            .expect("writing to the proxy");
        out.clear();
    }

    /// The next message (tag, body), `None` at EOF.
    async fn recv(&mut self) -> Option<(u8, BytesMut)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let mut m = self.buf.split_to(len + 1);
                    let tag = m.get_u8();
                    m.advance(4);
                    return Some((tag, m));
                }
            }
            match self.sock.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Runs `sql` with the simple protocol and reads up to ReadyForQuery.
    async fn query(&mut self, sql: &str) -> Reply {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        self.send(&mut out).await;
        let mut reply = Reply::default();
        loop {
            let (tag, mut body) = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("{sql}: connection closed before ReadyForQuery"));
            match tag {
                b'T' => {
                    let n = body.get_i16();
                    for _ in 0..n {
                        reply.columns.push(take_cstr(&mut body));
                        body.advance(18);
                    }
                }
                b'D' => {
                    let n = body.get_i16();
                    let row = (0..n)
                        .map(|_| {
                            let len = body.get_i32();
                            (len >= 0).then(|| {
                                let v = body.split_to(len as usize);
                                String::from_utf8_lossy(&v).into_owned()
                            })
                        })
                        .collect();
                    reply.rows.push(row);
                }
                b'C' => reply.tags.push(take_cstr(&mut body)),
                b'E' => {
                    let mut f = error_fields(body);
                    reply.error = Some((
                        f.remove(&b'C').unwrap_or_default(),
                        f.remove(&b'M').unwrap_or_default(),
                    ));
                }
                b'Z' => return reply,
                _ => {}
            }
        }
    }

    /// Says goodbye (Terminate) and closes.
    async fn close(mut self) {
        let _ = self.sock.write_all(b"X\0\0\0\x04").await;
        let _ = self.sock.shutdown().await;
    }
}

/// Runs one admin command on a fresh console connection: its full reply.
async fn admin_raw(port: u16, sql: &str) -> Reply {
    bounded(sql, STEP, async {
        let mut r = Raw::login(port, "shardwire").await;
        let reply = r.query(sql).await;
        r.close().await;
        reply
    })
    .await
}

// ---------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------

/// A read-modify-write transaction keyed by a random user id.
const PGBENCH_SCRIPT: &str = "\\set id random(1, 1000)\n\
                              BEGIN;\n\
                              UPDATE users SET balance = balance + 1 WHERE id = :id;\n\
                              SELECT balance FROM users WHERE id = :id;\n\
                              END;\n";

/// What a pgbench run reported.
#[derive(Debug)]
struct PgbenchRun {
    processed: i64,
    failed: i64,
    tps: f64,
}

/// Starts pgbench (`-M extended`, 8 clients, 2 threads, `seconds` long) against the proxy
/// on `port`; it is waited for on a blocking thread (the proxy runs on this runtime).
fn spawn_pgbench(
    port: u16,
    script: PathBuf,
    seconds: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let child = Command::new(common::pgbench_path())
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
        ])
        .args(["-c", "8", "-j", "2", "-T", &seconds.to_string()])
        .args(["-M", "extended", "-f"])
        .arg(&script)
        .arg("app")
        .env("PGPASSWORD", "app-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench");
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait for pgbench"))
}

/// Parses pgbench's summary; panics (with its output) when it failed to run.
fn parse_pgbench(out: &std::process::Output) -> PgbenchRun {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let failed = common::report_field(&stdout, "number of failed transactions:")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no failed-transactions line:\n{stdout}"));
    let processed = common::report_field(&stdout, "number of transactions actually processed:")
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no processed-transactions line:\n{stdout}"));
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps line:\n{stdout}"));
    PgbenchRun {
        processed,
        failed,
        tps,
    }
}

// ---------------------------------------------------------------------------------------
// 1. RELOAD under pgbench
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_pgbench_adds_a_reference_table() {
    let env = TestEnv::new(2).await;
    let yaml = map_yaml(&env, &[USERS_TABLE]);
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    create_users_with_balance(&c, 1000).await;
    create_countries_on_every_shard(&env).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.yaml");
    write_map(&path, &yaml);
    *proxy.handle.shared.config_path.lock() = Some(path.clone());
    let script = dir.path().join("rmw.sql");
    std::fs::write(&script, PGBENCH_SCRIPT).unwrap();

    let bench = spawn_pgbench(proxy.port(), script, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Valid reload mid-run: the new reference table takes writes on every shard.
    write_map(&path, &map_yaml(&env, &[USERS_TABLE, COUNTRIES_TABLE]));
    let reply = admin_raw(proxy.port(), "RELOAD").await;
    assert_eq!(reply.error, None, "RELOAD of a valid map: {reply:?}");
    assert_eq!(reply.tags, ["RELOAD"], "{reply:?}");
    assert_eq!(reply.columns, ["reloaded"], "{reply:?}");
    assert_eq!(reply.rows.len(), 1, "{reply:?}");
    let summary = reply.rows[0][0].clone().unwrap_or_default();
    println!("RELOAD summary: {summary}");
    assert!(
        summary.starts_with("tables added: countries; removed: none; changed: none"),
        "{summary}"
    );
    assert!(summary.contains("shards: s0, s1"), "{summary}");
    // `c` connected before the reload: its next transaction runs on the new map.
    insert_reference_row_everywhere(&env, &c, "fr").await;

    // Invalid file: refused with 55000 naming file and line; the running map stays.
    let invalid = map_yaml(&env, &[USERS_TABLE_INVALID, COUNTRIES_TABLE]);
    write_map(&path, &invalid);
    let reply = admin_raw(proxy.port(), "RELOAD").await;
    let (code, message) = reply
        .error
        .clone()
        .expect("RELOAD of an invalid map must fail");
    println!("RELOAD of an invalid map: {code} {message}");
    assert_eq!(code, "55000", "{reply:?}");
    assert!(
        message.starts_with("the new shard map is invalid, the running one stays:"),
        "{message}"
    );
    let at = format!("{}:{}", path.display(), line_of(&invalid, "hsh"));
    assert!(message.contains(&at), "the error names {at}: {message}");
    insert_reference_row_everywhere(&env, &c, "de").await;
    assert!(
        !bench.is_finished(),
        "the reloads happened while pgbench was running"
    );

    let out = bounded("pgbench", Duration::from_secs(60), bench)
        .await
        .expect("pgbench thread panicked");
    let run = parse_pgbench(&out);
    println!(
        "pgbench -M extended with two RELOADs: {} transactions, {} failed, {:.0} tps",
        run.processed, run.failed, run.tps
    );
    assert_eq!(
        run.failed,
        0,
        "failed transactions:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(run.processed > 0 && run.tps > 0.0, "no throughput: {run:?}");
    let total: i64 = env
        .per_shard_i64("SELECT coalesce(sum(balance), 0)::bigint FROM users")
        .await
        .iter()
        .sum();
    assert_eq!(
        total, run.processed,
        "sum of balances on the shards vs transactions pgbench committed"
    );
}

// ---------------------------------------------------------------------------------------
// 2. SIGHUP to `shardwire serve`
// ---------------------------------------------------------------------------------------

/// The `shardwire serve` process; killed (SIGKILL) if the test ends without stopping it.
struct ServeProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl ServeProcess {
    fn start(config: &Path, log: PathBuf) -> ServeProcess {
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start shardwire serve");
        ServeProcess { child, log }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most 10 s) for the exit.
    async fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_running() {
            assert!(
                Instant::now() < deadline,
                "shardwire serve did not exit after SIGTERM; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Connects to `conninfo`, retrying for up to 10 s while the server starts.
async fn connect_when_up(conninfo: &str) -> Client {
    let deadline = Instant::now() + STEP;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio_postgres::connect(conninfo, NoTls),
        )
        .await
        {
            Ok(Ok((c, conn))) => {
                tokio::spawn(conn);
                return c;
            }
            Ok(Err(e)) if Instant::now() >= deadline => panic!("connecting to {conninfo}: {e}"),
            Err(_) if Instant::now() >= deadline => panic!("connecting to {conninfo}: timeout"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_serve_command() {
    let env = TestEnv::new(2).await;
    create_countries_on_every_shard(&env).await;
    let port = free_port();
    let listen = format!("listen: 127.0.0.1:{port}");
    let yaml_for = |tables: &[&str]| map_yaml(&env, tables).replace("listen: 127.0.0.1:0", &listen);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.yaml");
    write_map(&path, &yaml_for(&[USERS_TABLE]));
    let mut serve = ServeProcess::start(&path, dir.path().join("serve.log"));

    let c = connect_when_up(&format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=app"
    ))
    .await;
    // The SIGHUP handler is installed right after the listener; a query makes sure the
    // process is well past that point.
    c.simple_query("SELECT 1").await.expect("a first query");

    write_map(&path, &yaml_for(&[USERS_TABLE, COUNTRIES_TABLE]));
    serve.signal(libc::SIGHUP);
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let code = format!("hup{attempt}");
        // Before the reload the table is unknown to the proxy (refused or one shard only).
        let _ = bounded(
            "an insert through the proxy",
            STEP,
            c.execute(
                "INSERT INTO countries (code, name) VALUES ($1, 'x')",
                &[&code],
            ),
        )
        .await;
        if shards_with_country(&env, &code).await == [0, 1] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not make countries a reference table within 5 s; log:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "SIGHUP reload visible after {:?} ({attempt} attempts)",
        started.elapsed()
    );

    // An invalid file: only logged, the process keeps serving on the map it has.
    write_map(&path, &yaml_for(&[USERS_TABLE_INVALID, COUNTRIES_TABLE]));
    serve.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !serve.log_text().contains("hsh") {
        assert!(
            Instant::now() < deadline,
            "no log line for the refused reload; log:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = serve.log_text();
    let refused = log.lines().rev().find(|l| l.contains("hsh")).unwrap_or("");
    println!("log of the refused SIGHUP reload: {refused}");
    assert!(
        refused.contains(&path.display().to_string()),
        "the logged error names the file: {refused}"
    );
    assert!(serve.is_running(), "an invalid map must not stop the proxy");
    insert_reference_row_everywhere(&env, &c, "after-bad-hup").await;
    // A client that connects now is served too.
    let fresh = connect_when_up(&format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=app"
    ))
    .await;
    insert_reference_row_everywhere(&env, &fresh, "new-client").await;

    drop(c);
    drop(fresh);
    serve.terminate().await;
}

// ---------------------------------------------------------------------------------------
// 3. SHOW CLIENTS / SHOW SERVERS
// ---------------------------------------------------------------------------------------

/// A tokio-postgres connection through the proxy on a socket of our own: the client and
/// the local port the proxy sees it from.
async fn connect_tracked(proxy: &Proxy, database: &str) -> (Client, u16) {
    let sock = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect to the proxy");
    let local = sock.local_addr().unwrap().port();
    let mut cfg = tokio_postgres::Config::new();
    cfg.user("app").password("app-secret").dbname(database);
    let (c, conn) = bounded("login", STEP, cfg.connect_raw(sock, NoTls))
        .await
        .unwrap_or_else(|e| panic!("login to {database}: {e}"));
    tokio::spawn(conn);
    (c, local)
}

/// The row of `rows` whose `port` column is `port`.
fn row_by_port(rows: &[HashMap<String, String>], port: u16) -> &HashMap<String, String> {
    rows.iter()
        .find(|r| r["port"] == port.to_string())
        .unwrap_or_else(|| panic!("no client from port {port} in {rows:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_and_servers() {
    let env = TestEnv::new(2).await;
    let yaml = map_yaml(&env, &[USERS_TABLE]);
    let proxy = Proxy::start_yaml(&yaml).await;
    {
        let setup = proxy.client().await;
        common::create_users(&setup, "", 20).await;
    }
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let shard_of_1 = map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(1));

    let (idle, idle_port) = connect_tracked(&proxy, "app").await;
    idle.simple_query("SELECT 1").await.unwrap();
    let (txn, txn_port) = connect_tracked(&proxy, "app").await;
    // Simple protocol: a Describe in a transaction would also hold a backend of the
    // default shard, which is not what this test looks at.
    txn.batch_execute("BEGIN; SELECT 1 FROM users WHERE id = 1")
        .await
        .unwrap();
    // (A bare `SELECT pg_backend_pid()` is the client's own pid, answered by the proxy;
    // with a FROM it runs on the backend that holds the transaction.)
    let pid: i32 = simple_value(&txn, "SELECT pg_backend_pid() FROM users WHERE id = 1")
        .await
        .parse()
        .unwrap();
    let (console, console_port) = connect_tracked(&proxy, "shardwire").await;

    // SHOW CLIENTS: the setup client has left; three remain, each in its state.
    let clients = admin_until(&console, "SHOW CLIENTS", "three clients", |r| r.len() == 3).await;
    println!("SHOW CLIENTS: {clients:?}");
    for (port, database, state) in [
        (idle_port, "app", "idle"),
        (txn_port, "app", "idle in transaction"),
        (console_port, "shardwire", "active"),
    ] {
        let r = row_by_port(&clients, port);
        assert_eq!(r["user"], "app", "{r:?}");
        assert_eq!(r["database"], database, "{r:?}");
        assert_eq!(r["state"], state, "{r:?}");
        assert_eq!(r["addr"], "127.0.0.1", "{r:?}");
        assert!(r["age_s"].parse::<u64>().is_ok(), "{r:?}");
        assert!(r["id"].parse::<u64>().is_ok(), "{r:?}");
    }
    let ids: HashSet<&String> = clients.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids.len(), 3, "client ids are distinct: {clients:?}");

    // SHOW SERVERS: exactly the open transaction's backend is active, with its real pid.
    let servers = admin_until(&console, "SHOW SERVERS", "one active backend", |r| {
        r.iter().filter(|s| s["state"] == "active").count() == 1
    })
    .await;
    println!("SHOW SERVERS: {servers:?}");
    let active = servers.iter().find(|s| s["state"] == "active").unwrap();
    assert_eq!(active["pid"], pid.to_string(), "{servers:?}");
    assert_eq!(active["shard"], format!("s{shard_of_1}"));
    assert_eq!(active["host"], "127.0.0.1");
    assert_eq!(active["port"], env.shard_port(shard_of_1).to_string());
    assert_eq!(active["database"], env.db_name());
    assert_eq!(active["user"], common::client_role());
    assert!(active["age_s"].parse::<u64>().is_ok(), "{active:?}");
    let state: String = env
        .shard_client(shard_of_1)
        .await
        .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("the backend is in pg_stat_activity")
        .get(0);
    assert_eq!(state, "idle in transaction");
    // Every pid listed is a real backend of that shard's database.
    for i in 0..env.shard_count() {
        let real: HashSet<String> = env
            .shard_client(i)
            .await
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0).to_string())
            .collect();
        for s in servers.iter().filter(|s| s["shard"] == format!("s{i}")) {
            assert!(real.contains(&s["pid"]), "{s:?} not a backend of shard {i}");
        }
    }

    // COMMIT: the backend goes back to the pool, the client is idle.
    txn.batch_execute("COMMIT").await.unwrap();
    admin_until(&console, "SHOW SERVERS", "the backend idle again", |r| {
        r.iter()
            .any(|s| s["pid"] == pid.to_string() && s["state"] == "idle")
            && r.iter().all(|s| s["state"] == "idle")
    })
    .await;
    let clients = admin(&console, "SHOW CLIENTS").await;
    assert_eq!(row_by_port(&clients, txn_port)["state"], "idle");

    // Clients that leave disappear.
    drop(idle);
    drop(txn);
    let left = admin_until(&console, "SHOW CLIENTS", "only the console left", |r| {
        r.len() == 1
    })
    .await;
    assert_eq!(left[0]["port"], console_port.to_string());
}

// ---------------------------------------------------------------------------------------
// 4. SHUTDOWN
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_sessions_finish() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start_yaml(&map_yaml(&env, &[USERS_TABLE])).await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let console = proxy.admin_client().await;
    c.batch_execute("BEGIN").await.unwrap();
    for id in 1..=5i64 {
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }

    let reply = admin_raw(proxy.port(), "SHUTDOWN").await;
    assert_eq!(reply.error, None, "{reply:?}");
    assert_eq!(reply.tags, ["SHUTDOWN"], "{reply:?}");

    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_postgres::connect(&proxy.conninfo(), NoTls),
    )
    .await
    .expect("a new connection attempt must fail within 2 s, not hang");
    match refused {
        Ok(_) => panic!("a new client was accepted after SHUTDOWN"),
        Err(e) => println!("new connection after SHUTDOWN: {e}"),
    }

    // The open session finishes its transaction; the console keeps answering too.
    c.execute("INSERT INTO users (id, name) VALUES (6, 'x')", &[])
        .await
        .expect("the open transaction continues");
    bounded("COMMIT", STEP, c.batch_execute("COMMIT"))
        .await
        .expect("the open transaction commits after SHUTDOWN");
    let through_proxy: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(through_proxy, 6);
    let on_shards: i64 = env
        .per_shard_i64("SELECT count(*) FROM users")
        .await
        .iter()
        .sum();
    assert_eq!(on_shards, 6, "the committed rows are on the shards");
    assert_eq!(admin(&console, "SHOW VERSION").await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 5. A shard restart under load
// ---------------------------------------------------------------------------------------

/// One statement a load task ran.
#[derive(Debug, Clone)]
struct Sample {
    /// Since the run started.
    start: Duration,
    end: Duration,
    shard: usize,
    /// An UPDATE (else a SELECT).
    update: bool,
    ok: bool,
    code: Option<String>,
    message: String,
}

const RESTART_USERS: i64 = 2000;

/// One client of the load: random point reads and updates until `stop`, reconnecting when
/// its connection breaks. Returns its samples and how many reconnects failed.
async fn load_task(
    conninfo: String,
    shard_of: Arc<Vec<usize>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Vec<Sample>, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut samples = Vec::new();
    let mut failed_connects = 0;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_postgres::connect(&conninfo, NoTls),
                )
                .await
                {
                    Ok(Ok((c, conn))) => {
                        tokio::spawn(conn);
                        client = Some(c);
                    }
                    _ => {
                        failed_connects += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                continue;
            }
        };
        let id: i64 = rng.gen_range(1..=RESTART_USERS);
        let read = rng.gen_bool(0.5);
        let start = t0.elapsed();
        let result = tokio::time::timeout(Duration::from_secs(10), async {
            if read {
                c.query_opt("SELECT balance FROM users WHERE id = $1", &[&id])
                    .await
                    .map(|r| r.is_some())
            } else {
                c.execute(
                    "UPDATE users SET balance = balance + 1 WHERE id = $1",
                    &[&id],
                )
                .await
                .map(|n| n == 1)
            }
        })
        .await;
        let (ok, code, message, broken) = match result {
            Ok(Ok(true)) => (true, None, String::new(), false),
            Ok(Ok(false)) => (false, Some("no row".into()), format!("id {id}"), false),
            Ok(Err(e)) => {
                let (code, message) = error_parts(&e);
                let broken = code.is_none() || c.is_closed();
                (false, code, message, broken)
            }
            Err(_) => (
                false,
                Some("timeout".into()),
                "no answer in 10 s".into(),
                true,
            ),
        };
        samples.push(Sample {
            start,
            end: t0.elapsed(),
            shard: shard_of[id as usize],
            update: !read,
            ok,
            code,
            message,
        });
        if broken {
            client = None;
        }
    }
    (samples, failed_connects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_shard_restart_errors_only_for_that_shard() {
    let env = Arc::new(TestEnv::new_owned(2).await);
    let yaml = map_yaml(&env, &[USERS_TABLE]);
    let proxy = Proxy::start_yaml(&yaml).await;
    create_users_with_balance(&proxy.client().await, RESTART_USERS).await;
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let shard_of: Arc<Vec<usize>> = Arc::new(
        (0..=RESTART_USERS)
            .map(|id| map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id)))
            .collect(),
    );

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..6u64)
        .map(|seed| {
            tokio::spawn(load_task(
                proxy.conninfo(),
                shard_of.clone(),
                t0,
                stop.clone(),
                seed,
            ))
        })
        .collect();

    tokio::time::sleep_until((t0 + Duration::from_secs(3)).into()).await;
    let stop_start = t0.elapsed();
    let e = env.clone();
    bounded(
        "stopping shard 1",
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || e.stop_shard(1)),
    )
    .await
    .unwrap();
    let stop_end = t0.elapsed();
    tokio::time::sleep_until((t0 + Duration::from_secs(6)).into()).await;
    let restart_start = t0.elapsed();
    let e = env.clone();
    bounded(
        "restarting shard 1",
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || e.restart_shard(1)),
    )
    .await
    .unwrap();
    let restart_end = t0.elapsed();
    let grace_end = restart_end + Duration::from_secs(5);
    // Run to t=12 s, and at least 2 s past the grace period, so it has statements to check.
    let finish = (grace_end + Duration::from_secs(2)).max(Duration::from_secs(12));
    tokio::time::sleep_until((t0 + finish).into()).await;
    stop.store(true, Ordering::Relaxed);

    let mut samples = Vec::new();
    let mut failed_connects = 0;
    for t in tasks {
        let (s, f) = bounded("a load task", Duration::from_secs(20), t)
            .await
            .expect("load task panicked");
        samples.extend(s);
        failed_connects += f;
    }
    samples.sort_by_key(|s| s.start);

    // The numbers.
    let phase = |s: &Sample| {
        if s.start < stop_start {
            "before"
        } else if s.start < restart_end {
            "down"
        } else {
            "after"
        }
    };
    let mut counts: BTreeMap<(usize, &str), (usize, usize)> = BTreeMap::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples {
        let e = counts.entry((s.shard, phase(s))).or_default();
        if s.ok {
            e.0 += 1;
        } else {
            e.1 += 1;
            *codes
                .entry(s.code.clone().unwrap_or_else(|| "connection".into()))
                .or_default() += 1;
        }
    }
    let first_ok_after = samples
        .iter()
        .find(|s| s.shard == 1 && s.ok && s.start >= restart_end)
        .map(|s| s.end.saturating_sub(restart_end));
    println!(
        "shard 1 stop {stop_start:.2?}..{stop_end:.2?}, restart {restart_start:.2?}..{restart_end:.2?}, \
         run {finish:.2?}; {} statements, {failed_connects} failed reconnects",
        samples.len()
    );
    for shard in 0..2 {
        let (ok, err) = samples
            .iter()
            .filter(|s| s.shard == shard)
            .fold(
                (0, 0),
                |(o, e), s| if s.ok { (o + 1, e) } else { (o, e + 1) },
            );
        println!("  s{shard}: ok {ok}, err {err}");
        for p in ["before", "down", "after"] {
            let (ok, err) = counts.get(&(shard, p)).copied().unwrap_or_default();
            println!("    {p:>6}: ok {ok}, err {err}");
        }
    }
    println!("  error codes: {codes:?}");
    println!("  restart -> first s1 success: {first_ok_after:?}");
    if let Some(s) = samples.iter().find(|s| !s.ok) {
        println!("  first error: {s:?}");
    }
    if let Some(s) = samples.iter().rev().find(|s| !s.ok) {
        println!("  last error: {s:?}");
    }

    let s0_errors: Vec<&Sample> = samples.iter().filter(|s| s.shard == 0 && !s.ok).collect();
    assert!(
        s0_errors.is_empty(),
        "{} errors for keys on the live shard s0, e.g. {:?}",
        s0_errors.len(),
        &s0_errors[..s0_errors.len().min(5)]
    );
    let outside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.shard == 1 && !s.ok && (s.end < stop_start || s.start > grace_end))
        .collect();
    assert!(
        outside.is_empty(),
        "s1 errors outside stop..restart+5s: {:?}",
        &outside[..outside.len().min(5)]
    );
    // Fully inside the outage: a proper error naming the shard.
    let bad_down: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.shard == 1 && s.start > stop_end && s.end < restart_start)
        .filter(|s| {
            let code = s.code.as_deref().unwrap_or("");
            s.ok || !(code.starts_with("08") || code.starts_with("57P0"))
                || !s.message.contains("s1")
        })
        .collect();
    assert!(
        bad_down.is_empty(),
        "while s1 was down its statements must fail with 08xxx/57P0x naming s1: {:?}",
        &bad_down[..bad_down.len().min(5)]
    );
    assert!(
        samples
            .iter()
            .any(|s| s.shard == 1 && s.start > stop_end && s.end < restart_start),
        "no statement for s1 ran while it was down"
    );
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start >= grace_end && !s.ok)
        .collect();
    assert!(
        late.is_empty(),
        "errors more than 5 s after the restart: {:?}",
        &late[..late.len().min(5)]
    );
    assert!(
        samples.iter().any(|s| s.start >= grace_end),
        "no statements after the grace period"
    );
    assert!(
        first_ok_after.is_some(),
        "no successful statement for s1 after its restart"
    );

    // Every acknowledged UPDATE is on the shards; one that failed at most once.
    let updates = |ok: bool| samples.iter().filter(|s| s.update && s.ok == ok).count() as i64;
    let total: i64 = env
        .per_shard_i64("SELECT coalesce(sum(balance), 0)::bigint FROM users")
        .await
        .iter()
        .sum();
    println!(
        "  updates acknowledged {}, failed {}; sum of balances {total}",
        updates(true),
        updates(false)
    );
    assert!(
        total >= updates(true) && total <= updates(true) + updates(false),
        "sum of balances {total} vs {} acknowledged + {} failed updates",
        updates(true),
        updates(false)
    );
}

/// A reload that re-points one shard (here: the same server by another host name) drops a
/// session-pooled client's connection to that shard only; the connections it keeps stay
/// cancellable (their cancel targets are kept with them — a refresh once cleared them all,
/// and the client's cancel then reached nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_a_reload_that_drops_some_connections() {
    let env = TestEnv::new(2).await;
    let session = |y: String| y.replace("pool: { size: 10,", "pool: { mode: session, size: 10,");
    let yaml = session(map_yaml(&env, &[USERS_TABLE]));
    let proxy = Proxy::start_yaml(&yaml).await;
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let on = |s: usize| {
        (1..1000i64)
            .find(|&id| map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id)) == s)
            .unwrap()
    };
    let (a, b) = (on(0), on(1));
    let c = proxy.client().await;
    common::create_users(&c, "", 0).await;
    for id in [a, b] {
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    // The session now holds a connection on each shard.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.yaml");
    write_map(&path, &yaml);
    *proxy.handle.shared.config_path.lock() = Some(path.clone());
    let s1_addr = format!("127.0.0.1:{}/", env.shard_port(1));
    assert!(yaml.contains(&s1_addr), "{yaml}");
    let moved = yaml.replace(&s1_addr, &format!("localhost:{}/", env.shard_port(1)));
    assert_ne!(moved, yaml);
    write_map(&path, &moved);
    let reply = admin_raw(proxy.port(), "RELOAD").await;
    assert_eq!(reply.error, None, "{reply:?}");
    // The next statement refreshes the session's topology: s1's connection goes, s0's stays.
    let n: i64 = c
        .query_one("SELECT count(*) FROM users WHERE id = $1", &[&b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let started = Instant::now();
    let err = c
        .query("SELECT pg_sleep(10) FROM users WHERE id = $1", &[&a])
        .await
        .expect_err("the statement is cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    canceller.await.unwrap().unwrap();
}

/// A reload swaps users and map as one: a login checks its user and its database against
/// the same map. Two maps alternate while clients log in as a user only the second has, to
/// a database only the second serves: each login either succeeds (second map) or fails its
/// password (first map) — never "database does not exist", which a login that checked the
/// user against one map and the database against the other would get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_sees_users_and_map_of_one_reload() {
    let env = TestEnv::new(2).await;
    let first = map_yaml(&env, &[USERS_TABLE]);
    assert!(first.contains("database: app\n"), "{first}");
    let second = first
        .replace("database: app\n", "database: app2\n")
        .replace(
            "users:\n",
            "users:\n  - { name: late, password: late-secret }\n",
        );
    let proxy = Proxy::start_yaml(&first).await;
    let maps: Vec<Arc<shardwire::sharding::shardmap::ShardMap>> = [&first, &second]
        .iter()
        .map(|y| Arc::new(shardwire::sharding::shardmap::ShardMap::from_yaml_str(y, "t").unwrap()))
        .collect();
    let shared = proxy.handle.shared.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                shared.swap_config(maps[i % 2].clone());
                i += 1;
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            i
        })
    };
    let conninfo = format!(
        "host=127.0.0.1 port={} user=late password=late-secret dbname=app2",
        proxy.port()
    );
    let (mut ok, mut bad_password, mut other) = (0, 0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && ok + bad_password < 400 {
        match tokio_postgres::connect(&conninfo, NoTls).await {
            Ok((client, conn)) => {
                drop(client);
                drop(conn);
                ok += 1;
            }
            Err(e) => match e.code().map(|c| c.code()) {
                Some("28P01") => bad_password += 1,
                code => other.push(format!(
                    "{code:?}: {:?}",
                    e.as_db_error().map(|d| d.message())
                )),
            },
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.await.unwrap();
    println!("{flips} swaps; {ok} logins, {bad_password} refused passwords");
    assert!(
        other.is_empty(),
        "{} other outcomes: {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    assert!(
        ok > 0 && bad_password > 0,
        "both maps were met: {ok} / {bad_password}"
    );
}
