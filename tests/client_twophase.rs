//! The client's own two-phase commit (issue 19): `PREPARE TRANSACTION 'gid'` through the
//! proxy prepares every shard the transaction touched, and `COMMIT PREPARED` / `ROLLBACK
//! PREPARED` finish it from any connection, any proxy process, after a restart too; the
//! proxy's recovery never decides it. Real Postgres shards, psycopg's `tpc_*` API.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Proxy, TestEnv};
use shardwire::backend::{twophase, twophase_client};
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::Client;

const TABLES: &str = "tpc_users: { key: id, type: bigint, strategy: hash }";

/// A gid no other test (or run) on the shared clusters uses: gids are per Postgres instance.
fn unique(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

/// The ids of `tpc_users` on each shard, read directly.
async fn ids_on(env: &TestEnv) -> Vec<Vec<i64>> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        let rows = env
            .shard_client(i)
            .await
            .query("SELECT id FROM tpc_users ORDER BY id", &[])
            .await
            .unwrap();
        out.push(rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

/// The prepared transactions of this env's database on each shard.
async fn prepared_on(env: &TestEnv) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        let rows = env
            .shard_client(i)
            .await
            .query(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
                &[],
            )
            .await
            .unwrap();
        out.push(rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

/// The SQLSTATE `sql` fails with (`None` when it works).
async fn code_of(c: &Client, sql: &str) -> Option<String> {
    c.batch_execute(sql)
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_string()))
}

/// `tests/py/tpc.py ACTION GTRID IDS…` through `port`; returns its output.
async fn tpc_py(port: u16, action: &str, gtrid: &str, ids: &[i64], expect: &'static str) -> String {
    let mut cmd = common::python("tpc.py");
    cmd.arg("127.0.0.1")
        .arg(port.to_string())
        .arg(action)
        .arg(gtrid)
        .args(ids.iter().map(|i| i.to_string()));
    common::run_program(cmd, expect).await
}

/// Starts the proxy and the table; the map and the first ids on each shard.
async fn setup(env: &TestEnv, extra: &str) -> (Proxy, ShardMap, Vec<Vec<i64>>) {
    let yaml = env.shard_map_yaml(TABLES, extra);
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    proxy
        .client()
        .await
        .batch_execute("CREATE TABLE tpc_users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    let ids = common::ids_by_shard(&map, env.shard_count(), 4);
    (proxy, map, ids)
}

/// psycopg: tpc_begin, writes on shards 1 and 2 (the default shard 0 only gets a marker),
/// tpc_prepare; the rows are invisible on every shard, tpc_recover lists the xid through
/// the proxy; tpc_commit from another connection commits every shard. Then writes on all
/// three shards, prepared and rolled back from another connection: nothing stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_tpc_prepares_every_shard_and_finishes_from_another_connection() {
    let env = TestEnv::new(3).await;
    let (proxy, _map, ids) = setup(&env, "").await;
    let on_1_2: Vec<i64> = [&ids[1][..2], &ids[2][..2]].concat();
    let g1 = unique("tpc-commit");
    let out = tpc_py(proxy.port(), "prepare", &g1, &on_1_2, "tpc prepare done").await;
    let gid = common::report_field(&out, "gid=").unwrap().to_string();
    assert_eq!(ids_on(&env).await, vec![Vec::<i64>::new(); 3], "invisible");
    let prepared = prepared_on(&env).await;
    assert_eq!(
        prepared[0],
        std::slice::from_ref(&gid),
        "the client's gid on the default shard"
    );
    for p in &prepared[1..] {
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with(twophase_client::DERIVED_PREFIX), "{p:?}");
    }
    tpc_py(proxy.port(), "commit", &g1, &[], "tpc commit done").await;
    let got = ids_on(&env).await;
    assert_eq!(got, [vec![], ids[1][..2].to_vec(), ids[2][..2].to_vec()]);
    assert_eq!(env.prepared_left().await, [0, 0, 0]);

    let all: Vec<i64> = ids.iter().map(|v| v[2]).collect();
    let g2 = unique("tpc-rollback");
    tpc_py(proxy.port(), "prepare", &g2, &all, "tpc prepare done").await;
    assert_eq!(env.prepared_left().await, [1, 1, 1]);
    tpc_py(proxy.port(), "rollback", &g2, &[], "tpc rollback done").await;
    assert_eq!(ids_on(&env).await, got, "nothing of the rolled back one");
    assert_eq!(env.prepared_left().await, [0, 0, 0]);

    // On one connection (tpc_commit() after tpc_prepare()), and the errors psycopg maps.
    let g3 = unique("tpc-one");
    tpc_py(
        proxy.port(),
        "one-connection",
        &g3,
        &all,
        "tpc one-connection done",
    )
    .await;
    assert_eq!(env.prepared_left().await, [0, 0, 0]);
    let n: i64 = env
        .shard_client(0)
        .await
        .query_one(
            &format!("SELECT count(*) FROM {}", twophase_client::CLIENT_TABLE),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no record is left");
}

/// A `shardwire serve` process on `yaml` (its `listen` port replaced) and the directory of
/// its map; killed on drop.
struct Serve(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl Serve {
    async fn start(yaml: &str) -> (Serve, Client) {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yaml");
        std::fs::write(
            &path,
            yaml.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")),
        )
        .unwrap();
        let serve = Serve(
            Command::new(env!("CARGO_BIN_EXE_shardwire"))
                .args(["--log-level", "warn", "serve", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            dir,
        );
        let conninfo =
            format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
        for _ in 0..100 {
            if let Ok((c, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                return (serve, c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("shardwire serve did not accept clients");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prepared through one proxy, committed through a second `shardwire serve` process; and
/// prepared, the proxy restarted, rolled back through the new one. Also through the
/// extended protocol (what JDBC's XA sends), and with `pool.mode: session`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_through_another_proxy_process_and_after_a_restart() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let (proxy, _map, ids) = setup(&env, "").await;
    let (serve, other) = Serve::start(&yaml).await;
    let c = proxy.client().await;
    let g1 = unique("two-proxies");
    c.batch_execute("BEGIN").await.unwrap();
    for s in &ids {
        c.execute(
            "INSERT INTO tpc_users (id, name) VALUES ($1, 'a')",
            &[&s[0]],
        )
        .await
        .unwrap();
    }
    c.batch_execute(&format!("PREPARE TRANSACTION '{g1}'"))
        .await
        .unwrap();
    assert_eq!(env.prepared_left().await, [1, 1, 1]);
    other
        .batch_execute(&format!("COMMIT PREPARED '{g1}'"))
        .await
        .unwrap();
    let firsts: Vec<Vec<i64>> = ids.iter().map(|v| vec![v[0]]).collect();
    assert_eq!(ids_on(&env).await, firsts);
    assert_eq!(env.prepared_left().await, [0, 0, 0]);
    drop(serve);

    // Extended protocol (Parse/Bind/Execute of the command), then a restart.
    let g2 = unique("restart");
    c.batch_execute("BEGIN").await.unwrap();
    for s in &ids {
        c.execute(
            "INSERT INTO tpc_users (id, name) VALUES ($1, 'b')",
            &[&s[1]],
        )
        .await
        .unwrap();
    }
    c.execute(&format!("PREPARE TRANSACTION '{g2}'"), &[])
        .await
        .unwrap();
    drop(c);
    drop(proxy);
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    let listed: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
            &[&g2],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listed, 1, "listed through the restarted proxy");
    c.execute(&format!("ROLLBACK PREPARED '{g2}'"), &[])
        .await
        .unwrap();
    assert_eq!(ids_on(&env).await, firsts, "rolled back");
    assert_eq!(env.prepared_left().await, [0, 0, 0]);

    // pool.mode: session keeps its connections: the same, prepared and committed.
    let session = yaml.replace("pool: { size: 10,", "pool: { mode: session, size: 10,");
    assert_ne!(session, yaml);
    let sp = Proxy::start_yaml(&session).await;
    let s = sp.client().await;
    let g3 = unique("session");
    s.batch_execute("SELECT 1").await.unwrap();
    s.batch_execute("BEGIN").await.unwrap();
    for v in &ids[1..] {
        s.execute(
            "INSERT INTO tpc_users (id, name) VALUES ($1, 'c')",
            &[&v[2]],
        )
        .await
        .unwrap();
    }
    s.batch_execute(&format!("PREPARE TRANSACTION '{g3}'"))
        .await
        .unwrap();
    s.batch_execute(&format!("COMMIT PREPARED '{g3}'"))
        .await
        .unwrap();
    let n: i64 = s
        .query_one("SELECT count(*) FROM tpc_users WHERE name = 'c'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(env.prepared_left().await, [0, 0, 0]);
}

/// Recovery never decides a prepared client transaction, however old; it rolls back one
/// left `preparing` (its proxy died mid-PREPARE: the client never heard of success) and
/// finishes one whose client decided (`committing`) before its proxy died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_prepared_client_transactions_to_the_client() {
    let env = TestEnv::new(3).await;
    let (proxy, map, ids) = setup(&env, "").await;
    let c = proxy.client().await;
    let g = unique("old");
    c.batch_execute("BEGIN").await.unwrap();
    for s in &ids {
        c.execute(
            "INSERT INTO tpc_users (id, name) VALUES ($1, 'p')",
            &[&s[0]],
        )
        .await
        .unwrap();
    }
    c.batch_execute(&format!("PREPARE TRANSACTION '{g}'"))
        .await
        .unwrap();
    // Older than any threshold: neither the proxy's recovery nor the clients' decides it.
    twophase::recover(&map, Duration::ZERO).await.unwrap();
    twophase_client::recover(&map, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(env.prepared_left().await, [1, 1, 1]);
    assert_eq!(ids_on(&env).await, vec![Vec::<i64>::new(); 3]);

    // Left by proxies that died: one `preparing`, one `committing`, and a part prepared
    // after its record was finished.
    let s: Vec<Client> = futures_join(&env).await;
    // Parts are prepared as the role the proxy's clients run as, like the proxy's own.
    let mut p: Vec<Client> = Vec::new();
    for i in 0..env.shard_count() {
        p.push(env.shard_client_for_clients(i).await);
    }
    let (dead, decided) = (unique("dead"), unique("decided"));
    for (gid, state, id_at) in [(&dead, "preparing", 1), (&decided, "committing", 2)] {
        let mut gids = Vec::new();
        for (i, sc) in p.iter().enumerate() {
            let part = if i == 0 {
                gid.clone()
            } else {
                twophase_client::derived_gid(rand::random(), i)
            };
            sc.batch_execute(&format!(
                "BEGIN; INSERT INTO tpc_users VALUES ({}, 'r'); PREPARE TRANSACTION '{part}'",
                ids[i][id_at]
            ))
            .await
            .unwrap();
            gids.push(part);
        }
        gids.rotate_left(1); // the default shard's last, as the proxy records it
        s[0].execute(
            &format!(
                "INSERT INTO {} (gid, state, shards, gids) VALUES ($1, $2, ARRAY['s1','s2','s0'], $3)",
                twophase_client::CLIENT_TABLE
            ),
            &[gid, &state, &gids],
        )
        .await
        .unwrap();
    }
    let orphan = twophase_client::derived_gid(rand::random(), 1);
    p[1].batch_execute(&format!(
        "BEGIN; INSERT INTO tpc_users VALUES ({}, 'o'); PREPARE TRANSACTION '{orphan}'",
        ids[1][3]
    ))
    .await
    .unwrap();
    // The proxy's own recovery leaves all of it alone.
    twophase::recover(&map, Duration::ZERO).await.unwrap();
    assert_eq!(env.prepared_left().await, [3, 4, 3]);
    let n = twophase_client::recover(&map, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(n, 3, "two records and the orphan");
    assert_eq!(
        env.prepared_left().await,
        [1, 1, 1],
        "the prepared one stays"
    );
    let decided_rows: Vec<Vec<i64>> = ids.iter().map(|v| vec![v[2]]).collect();
    assert_eq!(
        ids_on(&env).await,
        decided_rows,
        "only the decided one committed"
    );
    // The client decides the old one.
    c.batch_execute(&format!("COMMIT PREPARED '{g}'"))
        .await
        .unwrap();
    assert_eq!(env.prepared_left().await, [0, 0, 0]);
}

/// Direct connections to every shard.
async fn futures_join(env: &TestEnv) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        out.push(env.shard_client(i).await);
    }
    out
}

/// Errors and replies as Postgres gives them, compared with the reference Postgres:
/// a duplicate gid (42710), an unknown one (42704), COMMIT PREPARED inside a block
/// (25001), PREPARE outside a block (a warning) and in a failed block (it rolls back);
/// and the proxy's own ids are not the client's to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_match_postgres() {
    let env = TestEnv::new(2).await;
    let (proxy, _map, ids) = setup(&env, "").await;
    let px = proxy.client().await;
    let reference = env.reference_client().await;
    reference
        .batch_execute("CREATE TABLE tpc_users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    for (c, g) in [(&px, unique("px")), (&reference, unique("ref"))] {
        let step = |sql: String| async move { code_of(c, &sql).await };
        let insert = |i: i64| format!("INSERT INTO tpc_users VALUES ({i}, 'x')");
        assert_eq!(step("BEGIN".into()).await, None);
        for v in &ids {
            assert_eq!(step(insert(v[0])).await, None);
        }
        assert_eq!(step(format!("PREPARE TRANSACTION '{g}'")).await, None);
        // The same gid again.
        assert_eq!(step("BEGIN".into()).await, None);
        assert_eq!(step(insert(ids[1][1])).await, None);
        let dup = format!("PREPARE TRANSACTION '{g}'");
        assert_eq!(step(dup).await.as_deref(), Some("42710"));
        assert_eq!(
            step("SELECT 1".into()).await,
            None,
            "outside a block after it"
        );
        let e = c.batch_execute(&format!("PREPARE TRANSACTION '{g}'")).await;
        assert!(e.is_ok(), "outside a block: a warning, no error: {e:?}");
        // Inside a block.
        assert_eq!(step("BEGIN".into()).await, None);
        let inside = step(format!("COMMIT PREPARED '{g}'")).await;
        assert_eq!(inside.as_deref(), Some("25001"));
        assert_eq!(step("SELECT 1".into()).await.as_deref(), Some("25P02"));
        assert_eq!(step("ROLLBACK".into()).await, None);
        // A failed block: PREPARE rolls it back.
        assert_eq!(step("BEGIN".into()).await, None);
        assert_eq!(step("SELECT 1/0".into()).await.as_deref(), Some("22012"));
        assert_eq!(step(format!("PREPARE TRANSACTION '{g}-f'")).await, None);
        assert_eq!(step("SELECT 1".into()).await, None);
        // Unknown gids.
        for verb in ["COMMIT", "ROLLBACK"] {
            let sql = format!("{verb} PREPARED '{g}-unknown'");
            assert_eq!(step(sql).await.as_deref(), Some("42704"));
        }
        assert_eq!(step(format!("ROLLBACK PREPARED '{g}'")).await, None);
        let n: i64 = c
            .query_one("SELECT count(*) FROM tpc_users", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
    // Messages as Postgres words them.
    let msg = |e: tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_string());
    let unknown = "prepared transaction with identifier \"tpc-nope\" does not exist";
    for c in [&px, &reference] {
        let got = c.batch_execute("COMMIT PREPARED 'tpc-nope'").await;
        assert_eq!(got.err().and_then(msg).as_deref(), Some(unknown));
        c.batch_execute("BEGIN").await.unwrap();
        let got = c.batch_execute("COMMIT PREPARED 'tpc-nope'").await;
        let inside = "COMMIT PREPARED cannot run inside a transaction block";
        assert_eq!(got.err().and_then(msg).as_deref(), Some(inside));
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    // In one query string, as psycopg's own tests send it; COMMIT PREPARED in a string's
    // implicit transaction is allowed, as in Postgres.
    let g = unique("string");
    px.batch_execute(&format!(
        "BEGIN; INSERT INTO tpc_users VALUES ({}, 'm'), ({}, 'm'); PREPARE TRANSACTION '{g}'",
        ids[0][0], ids[1][0]
    ))
    .await
    .unwrap();
    assert_eq!(env.prepared_left().await, [1, 1]);
    px.batch_execute(&format!("SELECT 1; COMMIT PREPARED '{g}'"))
        .await
        .unwrap();
    assert_eq!(env.prepared_left().await, [0, 0]);
    assert_eq!(ids_on(&env).await, [vec![ids[0][0]], vec![ids[1][0]]]);
    // Without BEGIN Postgres would commit the string's statements instead: refused, and
    // nothing of the string stays.
    let implicit = format!(
        "INSERT INTO tpc_users VALUES ({}, 'i'); PREPARE TRANSACTION '{g}-i'",
        ids[0][1]
    );
    assert_eq!(code_of(&px, &implicit).await.as_deref(), Some("0A000"));
    assert_eq!(ids_on(&env).await, [vec![ids[0][0]], vec![ids[1][0]]]);
    assert_eq!(env.prepared_left().await, [0, 0]);
    // The proxy's own ids stay its own.
    px.batch_execute("BEGIN").await.unwrap();
    let own = code_of(&px, "PREPARE TRANSACTION 'shardwire_0_1'").await;
    assert_eq!(own.as_deref(), Some("42939"));
    assert_eq!(env.prepared_left().await, [0, 0]);
}

/// pgjdbc's XA (`PGXADataSource`): prepare on every shard, `recover()` and `commit` from
/// another XA connection, `rollback` likewise, and a one-phase commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_xa_prepares_recovers_and_commits_across_shards() {
    let env = TestEnv::new(3).await;
    let (proxy, _map, ids) = setup(&env, "").await;
    let list: Vec<String> = ids
        .iter()
        .flat_map(|v| v[..2].to_vec())
        .map(|i| i.to_string())
        .collect();
    let mut cmd = common::java("JdbcXa.java");
    cmd.arg("127.0.0.1")
        .arg(proxy.port().to_string())
        .arg(unique("xa"))
        .arg(list.join(","));
    common::run_program(cmd, "jdbc xa done").await;
    assert_eq!(env.prepared_left().await, [0, 0, 0]);
}

/// Without `max_prepared_transactions` on a shard, PREPARE TRANSACTION fails as Postgres
/// fails it (55000, same message) and rolls the transaction back; COMMIT PREPARED finds
/// nothing (42704), as in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prepared_transactions_postgres_error() {
    let env = TestEnv::new_owned(2).await;
    env.shard_client(1)
        .await
        .batch_execute("ALTER SYSTEM SET max_prepared_transactions = 0")
        .await
        .unwrap();
    env.stop_shard(1);
    env.restart_shard(1);
    let direct = env.shard_client(1).await;
    let (proxy, _map, ids) = setup(&env, "").await;
    let px = proxy.client().await;
    let mut errors = Vec::new();
    for c in [&px, &direct] {
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute(&format!(
            "INSERT INTO tpc_users VALUES ({}, 'x')",
            ids[1][0]
        ))
        .await
        .unwrap();
        let e = c
            .batch_execute("PREPARE TRANSACTION 'tpc-disabled'")
            .await
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        errors.push((db.code().code().to_string(), db.message().to_string()));
        c.batch_execute("SELECT 1").await.unwrap(); // outside a block
        let e = c.batch_execute("COMMIT PREPARED 'tpc-disabled'").await;
        assert_eq!(e.unwrap_err().code().map(|c| c.code()), Some("42704"));
    }
    assert_eq!(errors[0], errors[1], "as Postgres words it");
    assert_eq!(errors[0].0, "55000");
    assert_eq!(
        ids_on(&env).await,
        vec![Vec::<i64>::new(); 2],
        "rolled back"
    );
}
