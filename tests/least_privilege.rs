//! Least privilege on the shards (issue 17): the proxy runs each proxy user's clients as
//! that user's `shard_user` role, in pools of their own, and keeps its control state in
//! schema `shardwire`, owned by the control role (the shards' URL login) that clients'
//! roles cannot read, write or lock. Roles as in `config/roles.sql`: `shardwire_control`
//! and application roles `app_rw` (proxy user `app`) and `app_rw2` (proxy user `other`),
//! none a superuser.
//!
//! Each attack of the hostile review that needed the control tables (map takeover, 2PC log
//! abuse and locking, directory re-pointing, `COPY … TO PROGRAM` through `DO`) is tried
//! here and refused with 42501; a cast of a client's type never runs as the control role
//! inside the capture trigger's SECURITY DEFINER function. The proxy's own work (two-phase
//! commit, recovery, client-driven 2PC, the directory) goes on under these roles, and so
//! does an online rebalance (`shardwire rebalance`, logged in as the control role) while
//! clients write.

mod common;

use common::{first_value as one, sqlstate as code};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
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

    // A client's code never runs as the control role, not even in the rebalance's SECURITY
    // DEFINER capture function, which reads every row app_rw writes while a rebalance (or
    // one killed and not run again) has capture installed: a cast to json of a type app_rw
    // owns ran there as shardwire_control when the function used `to_jsonb(NEW)`.
    let map =
        ShardMap::from_yaml_str(&env.least_privilege_yaml(TABLES, "", false), "map").expect("map");
    let users: Vec<_> = map
        .sharded_tables()
        .filter(|t| t.name == "users")
        .cloned()
        .collect();
    let ctl = env.shard_client_as(0, "shardwire_control").await;
    shardwire::rebalance::mover::install_capture(&ctl, &users)
        .await
        .expect("capture installed by the control role");
    let s0 = env.shard_client_as(0, "app_rw").await;
    s0.batch_execute(
        "CREATE TYPE mood AS ENUM ('evil'); \
         CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO shardwire.shardwire_2pc (gid, decision) VALUES ('shardwire_y', 'commit') \
           ON CONFLICT DO NOTHING; \
           RETURN '\"evil\"'; END $$; \
         CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood); \
         CREATE FUNCTION mood_text(mood) RETURNS text LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO shardwire.shardwire_2pc (gid, decision) VALUES ('shardwire_z', 'commit') \
           ON CONFLICT DO NOTHING; \
           RETURN 'evil'; END $$; \
         CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood); \
         ALTER TABLE users ADD COLUMN m mood",
    )
    .await
    .unwrap();
    s0.batch_execute("INSERT INTO users (id, name, m) VALUES (1001, 'x', 'evil')")
        .await
        .expect("app_rw's write, logged");
    let logged: i64 = ctl
        .query_one(
            "SELECT count(*) FROM shardwire.shardwire_rebalance_log \
             WHERE tbl = 'users' AND key = '1001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1, "the write is logged");
    let planted: i64 = c0
        .query_one(
            "SELECT count(*) FROM shardwire.shardwire_2pc \
             WHERE gid IN ('shardwire_y', 'shardwire_z')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(planted, 0, "app_rw's cast ran as the control role");
    // Nor can a client switch capture off for its writes with the rebalance's own setting:
    // the trigger skips only sessions logged in as the control role.
    s0.batch_execute(
        "SET shardwire.rebalance = 'mover'; \
         INSERT INTO users (id, name) VALUES (1002, 'y'); \
         RESET shardwire.rebalance",
    )
    .await
    .unwrap();
    let logged: i64 = ctl
        .query_one(
            "SELECT count(*) FROM shardwire.shardwire_rebalance_log \
             WHERE tbl = 'users' AND key = '1002'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1, "a client's write escaped capture");
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
    // Another proxy user may not finish it, as Postgres allows only the role that
    // prepared a transaction (pg_prepared_xacts shows every gid to everyone).
    let b = other(&proxy).await;
    for sql in ["COMMIT PREPARED 'lp-1'", "ROLLBACK PREPARED 'lp-1'"] {
        let e = b.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {e}");
    }
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

/// What the writer of [`a_rebalance_runs_under_the_roles`] had acknowledged.
#[derive(Debug, Default)]
struct Written {
    /// New rows, ids `LIVE_IDS..`.
    inserted: i64,
    /// `name = name || '+'` updates of loaded rows.
    updated: i64,
    problems: Vec<String>,
    max_latency: Duration,
}

/// The capture objects as one poll of a source shard saw them (superuser view).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CaptureSeen {
    log_owner: String,
    seq_owner: String,
    function_owner: String,
    security_definer: bool,
    /// Capture triggers on `users`.
    triggers: i64,
}

/// An online rebalance under the roles: `shardwire rebalance` logs in as the control role
/// (the maps' URLs) and moves rows of `app_rw`'s table from s0, s1 to a new s2 while `app`
/// keeps inserting and updating through a proxy started on the OLD map. `app_rw`'s writes
/// fire the capture trigger, whose SECURITY DEFINER function logs them into schema
/// `shardwire` (which `app_rw` cannot write): no write fails, none is lost, every row ends
/// on the shard the NEW ring names, and the capture objects belong to the control role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_runs_under_the_roles() {
    const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";
    const DDL: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";
    const LOADED: i64 = 3_000;
    const LIVE_IDS: i64 = 1_000_000;
    const STATEMENT_LIMIT: Duration = Duration::from_secs(30);
    const RUN_LIMIT: Duration = Duration::from_secs(180);

    let env = TestEnv::new(3).await;
    env.least_privilege();
    let old_yaml = env.least_privilege_yaml_on(&[0, 1], TABLES, "", false);
    let new_yaml = env.least_privilege_yaml_on(&[0, 1, 2], TABLES, "", false);
    let new = ShardMap::from_yaml_str(&new_yaml, "NEW").expect("NEW map");
    let proxy = Proxy::start_yaml(&old_yaml).await;
    let app = proxy.client().await;
    // app_rw's table: created through the proxy on s0 and s1, directly as app_rw on s2.
    app.batch_execute(DDL).await.unwrap();
    env.shard_client_as(2, "app_rw")
        .await
        .batch_execute(DDL)
        .await
        .unwrap();
    for first in (1..=LOADED).step_by(500) {
        let values: Vec<String> = (first..(first + 500).min(LOADED + 1))
            .map(|id| format!("({id}, 'user-{id}')"))
            .collect();
        app.batch_execute(&format!(
            "INSERT INTO users (id, name) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM users").await[2],
        0,
        "s2 is not in the OLD map"
    );

    // The writer: a new row and an update of a loaded one, one statement at a time, each
    // acknowledged through the proxy as app (app_rw on the shards).
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn({
        let conninfo = proxy.conninfo();
        let (stop, acked) = (stop.clone(), acked.clone());
        async move {
            let c = common::connect(&conninfo).await;
            let mut w = Written::default();
            let mut id = LIVE_IDS;
            while !stop.load(Ordering::Relaxed) && w.problems.len() < 10 {
                let some = (rand::random::<u64>() % LOADED as u64) as i64 + 1;
                let name = format!("live-{id}");
                for (sql, params) in [
                    (
                        "INSERT INTO users (id, name) VALUES ($1, $2)",
                        vec![&id as &(dyn tokio_postgres::types::ToSql + Sync), &name],
                    ),
                    (
                        "UPDATE users SET name = name || '+' WHERE id = $1",
                        vec![&some as &(dyn tokio_postgres::types::ToSql + Sync)],
                    ),
                ] {
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(STATEMENT_LIMIT, c.execute(sql, &params)).await;
                    w.max_latency = w.max_latency.max(t0.elapsed());
                    match r {
                        Ok(Ok(1)) if sql.starts_with("INSERT") => w.inserted += 1,
                        Ok(Ok(1)) => w.updated += 1,
                        Ok(Ok(n)) => w.problems.push(format!("`{sql}` ({id}, {some}): {n} rows")),
                        Ok(Err(e)) => w
                            .problems
                            .push(format!("`{sql}` ({id}, {some}): {} {e}", code(&e))),
                        Err(_) => {
                            w.problems.push(format!("`{sql}` ({id}, {some}): hung"));
                            return w;
                        }
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                id += 1;
            }
            w
        }
    });
    // The watcher: the capture objects on the sources while they exist, and how far the
    // log's id sequence got (only clients' writes are logged: the mover's skip the trigger).
    let watcher = tokio::spawn({
        let stop = stop.clone();
        let sources = [env.shard_client(0).await, env.shard_client(1).await];
        async move {
            let mut seen = BTreeSet::new();
            let mut logged = [0i64; 2];
            while !stop.load(Ordering::Relaxed) {
                for (i, c) in sources.iter().enumerate() {
                    let Ok(rows) = c
                        .query(
                            "SELECT l.relowner::regrole::text, q.relowner::regrole::text, \
                                    p.proowner::regrole::text, p.prosecdef, \
                                    (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = 'public.users'::regclass \
                                     AND t.tgname = 'shardwire_rebalance_capture' AND t.tgfoid = p.oid), \
                                    coalesce(s.last_value, 0) \
                             FROM pg_class l, pg_class q, pg_proc p, pg_sequences s \
                             WHERE l.oid = to_regclass('shardwire.shardwire_rebalance_log') \
                               AND q.oid = to_regclass('shardwire.shardwire_rebalance_log_id_seq') \
                               AND p.oid = to_regprocedure('shardwire.shardwire_rebalance_capture()') \
                               AND s.schemaname = 'shardwire' AND s.sequencename = 'shardwire_rebalance_log_id_seq'",
                            &[],
                        )
                        .await
                    else {
                        continue; // dropped while being read
                    };
                    for r in rows {
                        seen.insert(CaptureSeen {
                            log_owner: r.get(0),
                            seq_owner: r.get(1),
                            function_owner: r.get(2),
                            security_definer: r.get(3),
                            triggers: r.get(4),
                        });
                        logged[i] = logged[i].max(r.get(5));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (seen, logged)
        }
    });
    let warm = Instant::now();
    while acked.load(Ordering::Relaxed) < 40 {
        assert!(
            warm.elapsed() < Duration::from_secs(30),
            "the writer is stuck"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_path, new_path) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    std::fs::write(&old_path, &old_yaml).unwrap();
    std::fs::write(&new_path, &new_yaml).unwrap();
    let before = acked.load(Ordering::Relaxed);
    let started = Instant::now();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .arg("rebalance")
        .arg("--from")
        .arg(&old_path)
        .arg("--to")
        .arg(&new_path)
        .args(["--yes", "--unit-rows", "400"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("`shardwire rebalance` did not finish within {RUN_LIMIT:?}"))
        .expect("running shardwire rebalance");
    let took = started.elapsed();
    let during = acked.load(Ordering::Relaxed) - before;
    // A moment on the NEW map, then the writer stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let w = writer.await.expect("writer task");
    let (seen, logged) = watcher.await.expect("watcher task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "rebalance took {took:.1?}; {during} writes acknowledged while it ran; writer: {w:?}\n\
         capture seen: {seen:?}, log ids reached {logged:?}\n--- stderr ---\n{stderr}"
    );
    assert!(
        out.status.success(),
        "`shardwire rebalance` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(w.problems.is_empty(), "the writer saw {:#?}", w.problems);
    assert!(
        during > 0,
        "no write was acknowledged while the command ran"
    );

    // Every row is on the shard the NEW ring names, once.
    let mut per_shard = vec![0i64; env.shard_count()];
    let mut wrong = Vec::new();
    let mut ids = BTreeSet::new();
    let mut duplicated = 0;
    for (s, id) in env.placed("users", "id").await {
        per_shard[s] += 1;
        let want = &new.shard_names()[new.hash_shard(&KeyValue::Int(id))];
        if *want != format!("s{s}") {
            wrong.push(format!("{id} on s{s}, belongs on {want}"));
        }
        if !ids.insert(id) {
            duplicated += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} rows on the wrong shard for the NEW map, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(duplicated, 0, "rows on two shards");
    assert_eq!(
        per_shard.iter().sum::<i64>(),
        LOADED + w.inserted,
        "rows per shard {per_shard:?}: {LOADED} loaded + {} inserted",
        w.inserted
    );
    let want_ids: BTreeSet<i64> = (1..=LOADED)
        .chain(LIVE_IDS..LIVE_IDS + w.inserted)
        .collect();
    assert!(
        ids == want_ids,
        "the ids on the shards are not the ones written"
    );
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "rows per shard {per_shard:?}"
    );
    // No update lost either: one '+' per acknowledged update.
    let plus: i64 = env
        .per_shard_i64(
            "SELECT coalesce(sum(length(name) - length(replace(name, '+', ''))), 0)::int8 FROM users",
        )
        .await
        .iter()
        .sum();
    assert_eq!(plus, w.updated, "updates on the shards vs acknowledged");
    // The proxy reads them all back as app_rw, the table's owner on every shard.
    assert_eq!(
        one(&app, "SELECT count(*) FROM users").await,
        (LOADED + w.inserted).to_string()
    );

    // The capture objects were the control role's, its function SECURITY DEFINER, and
    // clients' writes were logged through it; they are gone now.
    assert!(!seen.is_empty(), "the capture objects were never seen");
    for c in &seen {
        assert_eq!(c.log_owner, "shardwire_control", "{c:?}");
        assert_eq!(c.seq_owner, "shardwire_control", "{c:?}");
        assert_eq!(c.function_owner, "shardwire_control", "{c:?}");
        assert!(c.security_definer, "{c:?}");
    }
    assert!(
        seen.iter().any(|c| c.triggers == 1),
        "no capture trigger on users seen: {seen:?}"
    );
    assert!(
        logged.iter().all(|&n| n > 0),
        "app_rw's writes were not logged on every source: log ids reached {logged:?}"
    );
    for s in 0..env.shard_count() {
        let left = env
            .shard_client(s)
            .await
            .query_one(
                "SELECT to_regclass('shardwire.shardwire_rebalance_log') IS NOT NULL \
                 OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'shardwire_rebalance_capture')",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0);
        assert!(!left, "change capture left on s{s}");
    }
}
