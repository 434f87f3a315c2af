//! Pipelines of different statements whose keys land on different shards (issue 19): what
//! pgx's `SendBatch`, JDBC's `executeBatch` and node-postgres/postgres.js pipelining send.
//! Postgres runs a pipeline up to its Sync as one transaction; so does the proxy, across
//! shards (`src/session/pipeline_segments.rs`). Sent byte for byte with the raw client.

mod common;

use common::wire::{first_error, tags, Wire};
use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;

const TABLES: &str = "mp_users: { key: id, type: bigint, strategy: hash }\n\
                      mp_kv: { key: k, type: bigint, strategy: hash }\n";

async fn setup() -> (TestEnv, Proxy, ShardMap, Vec<Vec<i64>>) {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    proxy
        .client()
        .await
        .batch_execute(
            "CREATE TABLE mp_users (id bigint PRIMARY KEY, name text); \
             CREATE TABLE mp_kv (k bigint PRIMARY KEY, v text)",
        )
        .await
        .unwrap();
    let ids: Vec<Vec<i64>> = (0..3)
        .map(|s| {
            (1..)
                .filter(|&i| map.hash_shard(&KeyValue::Int(i)) == s)
                .take(10)
                .collect()
        })
        .collect();
    (env, proxy, map, ids)
}

/// The ReadyForQuery status of a reply.
fn status(msgs: &[common::wire::Msg]) -> u8 {
    msgs.last()
        .filter(|(t, _)| *t == b'Z')
        .map(|(_, b)| b[0])
        .unwrap_or(0)
}

/// Rows per shard of `table`, read on each shard directly.
async fn counts(env: &TestEnv, table: &str) -> Vec<i64> {
    env.per_shard_i64(&format!("SELECT count(*) FROM {table}"))
        .await
}

/// Issue 19: a pipeline of INSERTs into two tables and a read by key, over three shards,
/// runs as one transaction: replies in the client's order, one ReadyForQuery, every row on
/// its key's shard; a pipeline whose 5th statement fails on another shard leaves nothing of
/// statements 1–4 on any shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pipeline_across_shards_is_one_transaction() {
    let (env, proxy, map, ids) = setup().await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let (a, b, c) = (
        ids[0][0].to_string(),
        ids[1][0].to_string(),
        ids[2][0].to_string(),
    );
    w.parse("ins_u", "INSERT INTO mp_users VALUES ($1, $2)")
        .parse("ins_kv", "INSERT INTO mp_kv VALUES ($1, $2)")
        .parse("sel", "SELECT name FROM mp_users WHERE id = $1")
        .bind("", "ins_u", &[&a, "alice"])
        .execute("", 0)
        .bind("", "ins_kv", &[&b, "v-b"])
        .execute("", 0)
        .bind("", "sel", &[&a])
        .describe(b'P', "")
        .execute("", 0)
        .bind("", "ins_u", &[&c, "carol"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(tags(&r), "1112C2C2TDC2CZ", "{r:?}");
    assert_eq!(common::wire::first_values(&r), vec!["alice"]);
    assert_eq!(status(&r), b'I');
    assert_eq!(counts(&env, "mp_users").await, vec![1, 0, 1]);
    assert_eq!(counts(&env, "mp_kv").await, vec![0, 1, 0]);
    for (s, id) in env.placed("mp_users", "id").await {
        assert_eq!(map.hash_shard(&KeyValue::Int(id)), s);
    }

    // 1–4 on shards 0, 1, 2, 0; the 5th a duplicate key on shard 1.
    let p = |s: usize, i: usize| ids[s][i].to_string();
    w.bind("", "ins_u", &[&p(0, 1), "x"])
        .execute("", 0)
        .bind("", "ins_kv", &[&p(1, 1), "x"])
        .execute("", 0)
        .bind("", "ins_u", &[&p(2, 1), "x"])
        .execute("", 0)
        .bind("", "ins_kv", &[&p(0, 2), "x"])
        .execute("", 0)
        .bind("", "ins_kv", &[&b, "dup"])
        .execute("", 0)
        .bind("", "ins_u", &[&p(2, 2), "never"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(tags(&r), "2C2C2C2C2EZ", "{r:?}");
    assert_eq!(first_error(&r).as_deref(), Some("23505"));
    assert_eq!(status(&r), b'I');
    assert_eq!(
        counts(&env, "mp_users").await,
        vec![1, 0, 1],
        "nothing of 1–4 stayed"
    );
    assert_eq!(
        counts(&env, "mp_kv").await,
        vec![0, 1, 0],
        "nothing of 1–4 stayed"
    );
    assert_eq!(env.prepared_left().await, vec![0, 0, 0]);
    // The session goes on.
    w.bind("", "sel", &[&c]).execute("", 0).sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(common::wire::first_values(&r), vec!["carol"]);
}

/// Issue 19: inside the client's block a mixed pipeline joins it (ROLLBACK undoes it); a
/// pipeline that starts with BEGIN (JDBC's habit) opens the block and the rest joins it;
/// COMMIT among statements for several shards is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pipeline_joins_the_block_and_refuses_commit_inside() {
    let (env, proxy, _map, ids) = setup().await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let p = |s: usize, i: usize| ids[s][i].to_string();
    w.parse("ins_u", "INSERT INTO mp_users VALUES ($1, $2)")
        .parse("ins_kv", "INSERT INTO mp_kv VALUES ($1, $2)")
        .parse("begin", "BEGIN")
        .parse("commit", "COMMIT")
        .sync();
    w.send().await;
    assert_eq!(tags(&w.until_ready().await), "1111Z");

    // In a block: the pipeline joins it; ROLLBACK undoes all of it.
    w.query("BEGIN");
    w.send().await;
    assert_eq!(status(&w.until_ready().await), b'T');
    w.bind("", "ins_u", &[&p(0, 0), "a"])
        .execute("", 0)
        .bind("", "ins_kv", &[&p(1, 0), "b"])
        .execute("", 0)
        .bind("", "ins_u", &[&p(2, 0), "c"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(tags(&r), "2C2C2CZ", "{r:?}");
    assert_eq!(status(&r), b'T');
    w.query("ROLLBACK");
    w.send().await;
    assert_eq!(status(&w.until_ready().await), b'I');
    assert_eq!(counts(&env, "mp_users").await, vec![0, 0, 0]);
    assert_eq!(counts(&env, "mp_kv").await, vec![0, 0, 0]);

    // JDBC: BEGIN pipelined with the first statements; the block stays open after Sync.
    w.bind("", "begin", &[])
        .execute("", 0)
        .bind("", "ins_u", &[&p(0, 1), "a"])
        .execute("", 0)
        .bind("", "ins_kv", &[&p(2, 1), "b"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(tags(&r), "2C2C2CZ", "{r:?}");
    assert_eq!(status(&r), b'T');
    w.bind("", "commit", &[]).execute("", 0).sync();
    w.send().await;
    assert_eq!(status(&w.until_ready().await), b'I');
    assert_eq!(counts(&env, "mp_users").await, vec![1, 0, 0]);
    assert_eq!(counts(&env, "mp_kv").await, vec![0, 0, 1]);

    // COMMIT among statements for several shards: refused, nothing runs.
    w.bind("", "ins_u", &[&p(0, 2), "a"])
        .execute("", 0)
        .bind("", "commit", &[])
        .execute("", 0)
        .bind("", "ins_u", &[&p(1, 2), "b"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(first_error(&r).as_deref(), Some("0A000"), "{r:?}");
    assert_eq!(status(&r), b'I');
    assert_eq!(counts(&env, "mp_users").await, vec![1, 0, 0]);

    // A named statement parsed in a refused pipeline was never reported parsed: the same
    // name parses again afterwards (no 42P05).
    w.parse("late", "INSERT INTO mp_users VALUES ($1, $2)")
        .bind("", "late", &[&p(0, 3), "a"])
        .execute("", 0)
        .bind("", "commit", &[])
        .execute("", 0)
        .bind("", "ins_u", &[&p(1, 3), "b"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(first_error(&r).as_deref(), Some("0A000"), "{r:?}");
    w.parse("late", "INSERT INTO mp_users VALUES ($1, $2)")
        .bind("", "late", &[&p(0, 3), "a"])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(tags(&r), "12CZ", "{r:?}");
    assert_eq!(counts(&env, "mp_users").await, vec![2, 0, 0]);
}

/// Issue 19 must-show 2: `kill -9` of the proxy while clients send scripts and pipelines
/// across shards leaves no half-applied batch once two-phase recovery has run: every
/// batch's rows are all there or none are, checked shard by shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_leaves_no_half_applied_batch() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    const ROWS: i64 = 6;
    let (env, proxy, map, _ids) = setup().await;
    drop(proxy);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = env
        .shard_map_yaml(TABLES, "")
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
    let path = dir.path().join("map.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .args(["--log-level", "warn", "serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut proc = spawn();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..4i64 {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut batch = 0i64;
            let mut interrupted = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                batch += 1;
                let tag = client * 100_000 + batch;
                let ok = if client % 2 == 0 {
                    // A script (simple protocol).
                    let script: String = (0..ROWS)
                        .map(|k| format!("INSERT INTO mp_users VALUES ({}, 's');", tag * 10 + k))
                        .collect();
                    let conninfo = format!(
                        "host=127.0.0.1 port={port} user=app password=app-secret dbname=app"
                    );
                    match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            c.batch_execute(&script).await.is_ok()
                        }
                        Err(_) => false,
                    }
                } else {
                    // A pipeline (extended protocol, one Sync), in a task of its own: the
                    // raw client panics when the proxy goes away under it.
                    tokio::spawn(async move {
                        let mut w = Wire::login(port, &[]).await;
                        w.parse("ins", "INSERT INTO mp_kv VALUES ($1, 'p')");
                        for k in 0..ROWS {
                            w.bind("", "ins", &[&(tag * 10 + k).to_string()])
                                .execute("", 0);
                        }
                        w.sync();
                        w.send().await;
                        first_error(&w.until_ready().await).is_none()
                    })
                    .await
                    .unwrap_or(false)
                };
                if !ok {
                    interrupted += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            interrupted
        });
    }
    // Let them run, kill the proxy (SIGKILL), start it again, let them run on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proc.kill().unwrap();
    proc.wait().unwrap();
    proc = spawn();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut interrupted = 0;
    while let Some(r) = tasks.join_next().await {
        interrupted += r.unwrap();
    }
    proc.kill().unwrap();
    proc.wait().unwrap();
    assert!(interrupted > 0, "the kill interrupted some batches");
    // Recovery finishes whatever the killed proxy left prepared.
    shardwire::backend::twophase::recover(&map, Duration::ZERO)
        .await
        .unwrap();
    let mut batches = 0;
    for table in ["mp_users", "mp_kv"] {
        let key = if table == "mp_users" { "id" } else { "k" };
        let mut per_tag: std::collections::HashMap<i64, i64> = Default::default();
        for (s, id) in env.placed(table, key).await {
            assert_eq!(map.hash_shard(&KeyValue::Int(id)), s, "{table} row {id}");
            *per_tag.entry(id / 10).or_default() += 1;
        }
        for (tag, n) in &per_tag {
            assert_eq!(*n, ROWS, "{table}: batch {tag} is half-applied");
        }
        batches += per_tag.len();
    }
    assert!(batches >= 4, "only {batches} batches ran");
    assert_eq!(env.prepared_left().await, vec![0, 0, 0]);
}
