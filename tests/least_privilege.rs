//! Least privilege on the shards (issue 17): the proxy runs each proxy user's clients as
//! that user's `shard_user` role, in pools of their own, and keeps its control state in
//! schema `shardwire`, owned by the control role (the shards' URL login) that clients'
//! roles cannot read, write or lock. Roles as in `config/roles.sql`: `shardwire_control`
//! and application roles `app_rw` (proxy user `app`) and `app_rw2` (proxy user `other`),
//! none a superuser.
//!
//! Each attack of the hostile review that needed the control tables (map takeover, 2PC log
//! abuse and locking, directory re-pointing, `COPY … TO PROGRAM` through `DO`) is tried
//! here and refused with 42501, and the proxy's own work (two-phase commit, recovery,
//! client-driven 2PC, the directory) goes on under these roles.

mod common;

use std::time::Duration;

use common::{Proxy, TestEnv};
use tokio_postgres::Client;

const TABLES: &str = r#"users: { key: id, type: bigint, strategy: hash }
docs:
  key: tenant
  type: text
  strategy: directory
  entries: { acme: s1, globex: s0 }
  fallback: reject
"#;

async fn setup(pool: usize) -> (TestEnv, Proxy) {
    let env = TestEnv::new(2).await;
    env.least_privilege();
    let yaml = env
        .least_privilege_yaml(TABLES, "", false)
        .replace("pool: { size: 10,", &format!("pool: {{ size: {pool},"));
    let proxy = Proxy::start_yaml(&yaml).await;
    let app = proxy.client().await;
    app.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL); \
         CREATE TABLE docs (tenant text NOT NULL, id int NOT NULL, body text)",
    )
    .await
    .unwrap();
    (env, proxy)
}

async fn other(proxy: &Proxy) -> Client {
    common::connect(&format!(
        "host=127.0.0.1 port={} user=other password=other-secret dbname=app",
        proxy.port()
    ))
    .await
}

async fn one(c: &Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    common::rows_as_maps(rows)
        .into_iter()
        .next()
        .and_then(|m| m.into_values().next())
        .unwrap_or_default()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// `sql` through `c` fails with 42501 (insufficient privilege).
async fn refused(c: &Client, sql: &str) {
    match c.batch_execute(sql).await {
        Ok(()) => panic!("{sql}: succeeded; it must be refused"),
        Err(e) => assert_eq!(code(&e), "42501", "{sql}: {e}"),
    }
    // Leave no failed transaction block behind.
    let _ = c.batch_execute("ROLLBACK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_run_as_their_users_role_in_pools_of_their_own() {
    let (env, proxy) = setup(1).await;
    let app = proxy.client().await;
    let b = other(&proxy).await;
    assert_eq!(one(&app, "SELECT current_user").await, "app_rw");
    assert_eq!(one(&b, "SELECT current_user").await, "app_rw2");
    assert_eq!(
        one(
            &app,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"
        )
        .await,
        "false"
    );
    // The tables app created belong to app_rw, on every shard.
    for s in 0..env.shard_count() {
        let c = env.shard_client(s).await;
        let owner: String = c
            .query_one(
                "SELECT tableowner::text FROM pg_tables WHERE tablename = 'users'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(owner, "app_rw", "shard {s}");
    }
    // Another user's role has no rights on them (its own Postgres would say the same).
    let e = b.simple_query("SELECT * FROM users").await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    // Pool size 1 per (user, shard): app holding its backend of every shard does not make
    // the other user wait; the backends are different ones.
    app.batch_execute("BEGIN; SELECT count(*) FROM users")
        .await
        .unwrap();
    let app_pid = one(&app, "SELECT pg_backend_pid()").await;
    let b_pid = tokio::time::timeout(Duration::from_secs(3), one(&b, "SELECT pg_backend_pid()"))
        .await
        .expect("the other user's clients have pools of their own");
    assert_ne!(app_pid, b_pid);
    app.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_reach_the_control_state() {
    let (env, proxy) = setup(2).await;
    let app = proxy.client().await;
    // A write across both shards: two-phase commit creates and uses the decision log.
    app.batch_execute(
        "INSERT INTO users VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f')",
    )
    .await
    .unwrap();
    app.batch_execute("INSERT INTO docs VALUES ('acme', 1, 'x')")
        .await
        .unwrap();
    // The schema and its tables belong to the control role.
    let c0 = env.shard_client(0).await;
    let owner: String = c0
        .query_one(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'shardwire'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "shardwire_control");

    // Map takeover: the rebalance's run row; hold freeze; 2PC log abuse; directory
    // re-pointing; locks that would block every cross-shard commit.
    for sql in [
        "INSERT INTO shardwire.shardwire_rebalance (id, phase) VALUES (666, 'complete')",
        "CREATE TABLE shardwire.shardwire_rebalance_units (x int)",
        "SELECT * FROM shardwire.shardwire_2pc",
        "INSERT INTO shardwire.shardwire_2pc (gid, decision) VALUES ('shardwire_x', 'abort')",
        "BEGIN; LOCK TABLE shardwire.shardwire_2pc",
        "DO $$ BEGIN LOCK TABLE shardwire.shardwire_2pc IN ACCESS EXCLUSIVE MODE; PERFORM pg_sleep(5); END $$",
        "UPDATE shardwire.shardwire_directory SET shard = 's0' WHERE key = 'acme'",
        "DO $$ BEGIN UPDATE shardwire.shardwire_directory SET shard = 's0'; END $$",
        "DELETE FROM shardwire.shardwire_sequences",
        // A superuser's powers through a DO block.
        "DO $$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''true'''; END $$",
    ] {
        refused(&app, sql).await;
    }

    // A look-alike table in the application's schema is not the proxy's.
    app.batch_execute(
        "CREATE TABLE shardwire_rebalance (id int, phase text, new_map text); \
         INSERT INTO shardwire_rebalance VALUES (666, 'complete', 'shards: []')",
    )
    .await
    .unwrap();
    // Notifications are hints: none of these changes routing or holds a statement.
    for sql in [
        "SELECT pg_notify('shardwire_rebalance', '666')",
        "SELECT pg_notify('shardwire_directory', 'acme')",
        "SELECT pg_notify('shardwire_directory', E'move\\tacme')",
    ] {
        app.batch_execute(sql).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.batch_execute("INSERT INTO docs VALUES ('acme', 2, 'y')")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a spoofed move announcement held the statement for {:?}",
        started.elapsed()
    );
    // acme still lives on s1, both rows; a cross-shard write still commits.
    let on: Vec<i64> = env
        .per_shard_i64("SELECT count(*) FROM docs WHERE tenant = 'acme'")
        .await;
    assert_eq!(on, vec![0, 2]);
    app.batch_execute("UPDATE users SET name = name || '!'")
        .await
        .unwrap();
    assert_eq!(
        one(&app, "SELECT count(*) FROM users WHERE name LIKE '%!'").await,
        "6"
    );
    // The proxy's own prepared transactions (its gids show in pg_stat_activity to clients
    // of the same role) cannot be finished by a client: COMMIT/ROLLBACK PREPARED cannot run
    // inside a DO block, and at top level the proxy refuses its own gids.
    let gid = format!("shardwire_{:016x}", rand::random::<u64>());
    let s0 = env.shard_client_as(0, "app_rw").await;
    s0.batch_execute(&format!(
        "BEGIN; INSERT INTO users (id, name) VALUES (900, 'in flight'); PREPARE TRANSACTION '{gid}'"
    ))
    .await
    .unwrap();
    for sql in [
        format!("ROLLBACK PREPARED '{gid}'"),
        format!("COMMIT PREPARED '{gid}'"),
        format!("DO $$ BEGIN EXECUTE 'ROLLBACK PREPARED ''{gid}'''; END $$"),
    ] {
        let e = app.batch_execute(&sql).await.unwrap_err();
        assert_ne!(code(&e), "", "{sql}: {e}");
    }
    let still: i64 = c0
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
            &[&gid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        still, 1,
        "a client finished the proxy's prepared transaction"
    );
    s0.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .await
        .unwrap();
    // Another role sees none of the control role's statements (gids included).
    let b = other(&proxy).await;
    let shown = one(
        &b,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'shardwire_control' \
         AND query <> '<insufficient privilege>'",
    )
    .await;
    assert_eq!(shown, "0");

    // The log is clean: nothing the client tried is in it.
    let planted: i64 = c0
        .query_one(
            "SELECT count(*) FROM shardwire.shardwire_2pc WHERE gid = 'shardwire_x'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(planted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_and_its_recovery_work_under_the_roles() {
    let (env, proxy) = setup(2).await;
    let app = proxy.client().await;
    app.batch_execute(
        "BEGIN; INSERT INTO users VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'); COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM users")
            .await
            .iter()
            .sum::<i64>(),
        4
    );
    assert!(env
        .per_shard_i64("SELECT count(*) FROM users")
        .await
        .iter()
        .all(|&n| n > 0));

    // Client-driven 2PC: prepared by app_rw's backends, finished by the proxy's control
    // connections acting as app_rw.
    app.batch_execute(
        "BEGIN; INSERT INTO users VALUES (10, 'x'), (11, 'y'), (12, 'z'); PREPARE TRANSACTION 'lp-1'",
    )
    .await
    .unwrap();
    let listed = one(
        &app,
        "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'lp-1'",
    )
    .await;
    assert_eq!(listed, "1");
    app.batch_execute("COMMIT PREPARED 'lp-1'").await.unwrap();
    assert_eq!(one(&app, "SELECT count(*) FROM users").await, "7");
    assert_eq!(env.prepared_left().await, vec![0, 0]);

    // Recovery of an in-doubt transaction app_rw prepared: the decision says commit.
    let gid = format!("shardwire_{:016x}", rand::random::<u64>());
    let s0 = env.shard_client_as(0, "app_rw").await;
    s0.batch_execute(&format!(
        "BEGIN; INSERT INTO users VALUES (1000, 'in doubt'); PREPARE TRANSACTION '{gid}'"
    ))
    .await
    .unwrap();
    let ctl = env.shard_client_as(0, "shardwire_control").await;
    ctl.execute(
        "INSERT INTO shardwire.shardwire_2pc (gid, decision) VALUES ($1, 'commit')",
        &[&gid],
    )
    .await
    .unwrap();
    let yaml = env.least_privilege_yaml(TABLES, "", false);
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "test map").unwrap();
    let done = shardwire::backend::twophase::recover(&map, Duration::ZERO)
        .await
        .expect("recovery as the control role");
    assert!(done >= 1, "recovery finished {done}");
    assert_eq!(env.prepared_left().await, vec![0, 0]);
    let n: i64 = s0
        .query_one("SELECT count(*) FROM users WHERE id = 1000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "committed as decided");
}

/// The quickstart's roles: what `shardwire quickstart` serves runs clients as `app_rw`,
/// not a superuser, so a `DO` block cannot run a program on the shard's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_clients_are_not_superusers() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args([
            "--log-level",
            "warn",
            "quickstart",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting shardwire quickstart");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.trim().strip_prefix("psql ") {
                let _ = tx.send(url.trim_matches('"').to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("quickstart prints its psql line");
    let result = async {
        let c = common::connect(&url).await;
        assert_eq!(one(&c, "SELECT current_user").await, "app_rw");
        refused(
            &c,
            "DO $$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''true'''; END $$",
        )
        .await;
        refused(&c, "SELECT * FROM shardwire.shardwire_2pc").await;
        // And the quickstart still works as a sharded database.
        c.batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text); \
             INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')",
        )
        .await
        .map_err(|e| format!("{e:?}"))
    }
    .await;
    // SIGTERM-like stop: kill the process; its clusters are temp dirs removed on exit only
    // with Ctrl-C, so send SIGINT.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    result.unwrap();
}
