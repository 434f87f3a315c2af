//! A shard that goes down: its queries fail fast with an error naming it, the other shards
//! keep serving, and when it comes back the proxy reconnects by itself.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::Client;

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";

/// The name, or `Err(message)`, of user `id`, within `limit`.
async fn lookup(c: &Client, id: i64, limit: Duration) -> Result<String, String> {
    match tokio::time::timeout(
        limit,
        c.query_one("SELECT name FROM users WHERE id = $1", &[&id]),
    )
    .await
    {
        Ok(Ok(row)) => Ok(row.get(0)),
        Ok(Err(e)) => Err(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        }),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_shard_down_fails_fast_and_recovers() {
    let env = TestEnv::new_owned(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    common::create_users(&c, "", 300).await;
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    let keys_on = |shard: usize| -> Vec<i64> {
        (1..=300i64)
            .filter(|&id| map.hash_shard(&KeyValue::Int(id)) == shard)
            .take(5)
            .collect()
    };
    let (k0, k1, k2) = (keys_on(0), keys_on(1), keys_on(2));
    // Warm every pool, so the proxy holds idle connections to shard 1 when it dies.
    for &id in k0.iter().chain(&k1).chain(&k2) {
        assert_eq!(
            lookup(&c, id, Duration::from_secs(5)).await.unwrap(),
            format!("user-{id}")
        );
    }

    env.stop_shard(1);

    for round in 0..3 {
        for &id in &k1 {
            let started = Instant::now();
            let e = lookup(&c, id, Duration::from_secs(10))
                .await
                .expect_err("a query for the stopped shard succeeded");
            let took = started.elapsed();
            if round == 0 && id == k1[0] {
                eprintln!("with s1 down, after {took:?}: {e}");
            }
            assert!(
                took < Duration::from_secs(5),
                "round {round}: the error for shard s1 took {took:?}: {e}"
            );
            assert!(
                e.contains("s1"),
                "round {round}: the error does not name the shard: {e}"
            );
        }
        for &id in k0.iter().chain(&k2) {
            assert_eq!(
                lookup(&c, id, Duration::from_secs(5)).await,
                Ok(format!("user-{id}")),
                "round {round}: a key on a live shard"
            );
        }
    }
    // A client connecting while the shard is down gets in and reaches the live shards.
    let fresh = proxy.client().await;
    assert_eq!(
        lookup(&fresh, k2[0], Duration::from_secs(5)).await,
        Ok(format!("user-{}", k2[0]))
    );
    // A write for a live shard goes through; one for the dead shard fails.
    c.execute(
        "UPDATE users SET name = name || '+' WHERE id = $1",
        &[&k0[0]],
    )
    .await
    .unwrap();
    assert!(c
        .execute(
            "UPDATE users SET name = name || '+' WHERE id = $1",
            &[&k1[0]]
        )
        .await
        .is_err());
    // A keyless read needs every shard: a clear error, not a partial answer.
    match c.query("SELECT id FROM users", &[]).await {
        Ok(rows) => panic!("scatter with a shard down returned {} rows", rows.len()),
        Err(e) => {
            let m = e.as_db_error().map(|d| d.message().to_string());
            assert!(m.as_deref().unwrap_or("").contains("s1"), "{e:?}");
        }
    }

    env.restart_shard(1);

    // The proxy reconnects on its own: the same client and a new one.
    let started = Instant::now();
    loop {
        match lookup(&c, k1[0], Duration::from_secs(5)).await {
            Ok(name) => {
                assert_eq!(name, format!("user-{}", k1[0]));
                break;
            }
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("shard s1 is back but its keys still fail after 10 s: {e}"),
        }
    }
    eprintln!(
        "shard s1 served again {:?} after restart",
        started.elapsed()
    );
    for &id in k1.iter().chain(&k0).chain(&k2) {
        let want = if id == k0[0] {
            format!("user-{id}+")
        } else {
            format!("user-{id}")
        };
        assert_eq!(
            lookup(&c, id, Duration::from_secs(5)).await,
            Ok(want.clone())
        );
        assert_eq!(lookup(&fresh, id, Duration::from_secs(5)).await, Ok(want));
    }
    assert_eq!(
        c.query("SELECT id FROM users", &[]).await.unwrap().len(),
        300
    );
}
