//! tokio-postgres through the proxy: the extended protocol with binary parameters and
//! results, prepared statements across transaction-pooled backend connections,
//! transactions, errors, concurrency, session settings and pipelining.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";

fn shard_of(env: &TestEnv, ids: impl IntoIterator<Item = i64>) -> HashMap<i64, usize> {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    ids.into_iter()
        .map(|id| (id, map.hash_shard(&KeyValue::Int(id))))
        .collect()
}

/// `users(id, name, hits)` with ids `1..=n`, created and loaded through the proxy.
async fn load_users(c: &Client, n: i64) {
    common::create_users(c, ", hits bigint NOT NULL DEFAULT 0", n).await;
}

/// Count of rows with `id` on shard `i`, read directly.
async fn count_on_shard(env: &TestEnv, i: usize, id: i64) -> i64 {
    env.shard_client(i)
        .await
        .query_one("SELECT count(*) FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_across_1000_transactions_and_pool_switches() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let setup = proxy.client().await;
    const USERS: i64 = 200;
    load_users(&setup, USERS).await;

    // 20 clients over a pool of 10 per shard: backend connections are shared, so each
    // client's statements must be (re-)prepared on whichever connection it gets.
    const CLIENTS: i64 = 20;
    const TXNS: i64 = 50; // per client: 1,000 transactions, 1,000 executions of each statement
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let conninfo = proxy.conninfo();
        tasks.spawn(async move {
            let mut c = common::connect(&conninfo).await;
            let select = c
                .prepare("SELECT id, name, pg_backend_pid() FROM users WHERE id = $1")
                .await
                .unwrap();
            let update = c
                .prepare("UPDATE users SET hits = hits + 1 WHERE id = $1 RETURNING hits")
                .await
                .unwrap();
            let mut pids = HashSet::new();
            let mut updated = Vec::new();
            for t in 0..TXNS {
                let id = (k * TXNS + t) % USERS + 1;
                let tx = c.transaction().await.unwrap();
                let row = tx.query_one(&select, &[&id]).await.unwrap();
                assert_eq!(row.get::<_, i64>(0), id);
                assert_eq!(row.get::<_, String>(1), format!("user-{id}"));
                pids.insert(row.get::<_, i32>(2));
                let hits: i64 = tx.query_one(&update, &[&id]).await.unwrap().get(0);
                assert!(hits >= 1);
                tx.commit().await.unwrap();
                updated.push(id);
            }
            (pids, updated)
        });
    }
    let mut all_pids = HashSet::new();
    let mut expected_hits: HashMap<i64, i64> = HashMap::new();
    let mut clients_that_switched = 0;
    while let Some(r) = tasks.join_next().await {
        let (pids, updated) = r.unwrap();
        if pids.len() > 1 {
            clients_that_switched += 1;
        }
        all_pids.extend(pids);
        for id in updated {
            *expected_hits.entry(id).or_default() += 1;
        }
    }
    eprintln!(
        "{} distinct backend pids; {clients_that_switched} of {CLIENTS} clients ran on several",
        all_pids.len()
    );
    assert!(
        clients_that_switched > 0,
        "no client ever changed backend connection: the test did not exercise pooling"
    );
    assert!(
        all_pids.len() <= 2 * 10,
        "more backends than the pools allow"
    );

    // Every committed increment is on the shards, exactly once.
    let mut hits = HashMap::new();
    for i in 0..env.shard_count() {
        for r in env
            .shard_client(i)
            .await
            .query("SELECT id, hits FROM users", &[])
            .await
            .unwrap()
        {
            hits.insert(r.get::<_, i64>(0), r.get::<_, i64>(1));
        }
    }
    assert_eq!(hits.len() as i64, USERS);
    for id in 1..=USERS {
        assert_eq!(
            hits[&id],
            expected_hits.get(&id).copied().unwrap_or(0),
            "hits of user {id}"
        );
    }

    // One client executing one prepared statement 1,000 times, each in its own
    // transaction, while another client keeps the pool busy.
    let c = proxy.client().await;
    let busy = proxy.client().await;
    let st = c
        .prepare("SELECT name FROM users WHERE id = $1")
        .await
        .unwrap();
    let busy_task = tokio::spawn(async move {
        for id in 1..=300i64 {
            busy.query_one("SELECT name FROM users WHERE id = $1", &[&(id % USERS + 1)])
                .await
                .unwrap();
        }
    });
    for n in 0..1000i64 {
        let id = n % USERS + 1;
        let name: String = c.query_one(&st, &[&id]).await.unwrap().get(0);
        assert_eq!(name, format!("user-{id}"));
    }
    busy_task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_discards_writes() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let mut c = proxy.client().await;
    load_users(&c, 10).await;
    // A transaction may write on one shard only: pick a new key on the shard of id 5.
    let shards = shard_of(&env, 5..=1000);
    let ghost = (500..=1000).find(|id| shards[id] == shards[&5]).unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO users (id, name) VALUES ($1, $2)",
        &[&ghost, &"ghost"],
    )
    .await
    .unwrap();
    tx.execute("UPDATE users SET name = 'changed' WHERE id = $1", &[&5i64])
        .await
        .unwrap();
    // Visible inside the transaction...
    let n = tx
        .query("SELECT 1 FROM users WHERE id = $1", &[&ghost])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1);
    tx.rollback().await.unwrap();

    // ...gone after ROLLBACK, on the shard itself and through the proxy.
    assert_eq!(count_on_shard(&env, shards[&ghost], ghost).await, 0);
    let name: String = env
        .shard_client(shards[&5])
        .await
        .query_one("SELECT name FROM users WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "user-5");
    assert!(c
        .query("SELECT 1 FROM users WHERE id = $1", &[&ghost])
        .await
        .unwrap()
        .is_empty());

    // The same with simple-protocol BEGIN/ROLLBACK.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("DELETE FROM users WHERE id = 5")
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count_on_shard(&env, shards[&5], 5).await, 1);

    // And a committed write does stick.
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO users (id, name) VALUES ($1, $2)",
        &[&ghost, &"kept"],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_on_shard(&env, shards[&ghost], ghost).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_transaction_then_rollback_leaves_session_usable() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    load_users(&c, 10).await;
    let ins = c
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await
        .unwrap();
    let sel = c
        .prepare("SELECT name FROM users WHERE id = $1")
        .await
        .unwrap();
    let div = c
        .prepare("SELECT 1 / (hits::int) FROM users WHERE id = $1")
        .await
        .unwrap();

    // New keys on the shard of id 3, so each transaction stays on one shard.
    let shards = shard_of(&env, 1..=1000);
    let fresh: Vec<i64> = (100..=1000)
        .filter(|id| shards[id] == shards[&3])
        .take(3)
        .collect();
    for (round, &new_id) in fresh.iter().enumerate() {
        // Unique violation.
        c.batch_execute("BEGIN").await.unwrap();
        c.execute(&ins, &[&new_id, &"new"]).await.unwrap();
        let e = c.execute(&ins, &[&3i64, &"dup"]).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION), "{e}");
        // The transaction is failed, as in Postgres: even a valid statement is refused.
        let e = c.query(&sel, &[&3i64]).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{e}");
        let e = c.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        // Usable again; the insert before the error is gone.
        assert_eq!(
            c.query_one(&sel, &[&3i64])
                .await
                .unwrap()
                .get::<_, String>(0),
            "user-3"
        );
        assert!(
            c.query(&sel, &[&new_id]).await.unwrap().is_empty(),
            "round {round}"
        );

        // Division by zero, with the transaction API.
        let mut c2 = proxy.client().await;
        let tx = c2.transaction().await.unwrap();
        let e = tx
            .query("SELECT 1 / (hits::int) FROM users WHERE id = $1", &[&4i64])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e}");
        tx.rollback().await.unwrap();
        assert_eq!(
            c2.query_one("SELECT name FROM users WHERE id = $1", &[&4i64])
                .await
                .unwrap()
                .get::<_, String>(0),
            "user-4"
        );

        // An error outside a transaction needs no ROLLBACK.
        let e = c.query(&div, &[&5i64]).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e}");
        assert_eq!(
            c.query_one(&sel, &[&5i64])
                .await
                .unwrap()
                .get::<_, String>(0),
            "user-5"
        );
    }
    // Nothing from the failed transactions reached the shards.
    let left = env
        .per_shard_i64("SELECT count(*) FROM users WHERE id >= 100")
        .await;
    assert!(left.iter().all(|&n| n == 0), "per shard: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_get_their_own_rows() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let setup = proxy.client().await;
    setup
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, hits bigint NOT NULL DEFAULT 0)",
        )
        .await
        .unwrap();

    const CLIENTS: i64 = 50;
    const KEYS: i64 = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let conninfo = proxy.conninfo();
        tasks.spawn(async move {
            let c = common::connect(&conninfo).await;
            let ins = c
                .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
                .await
                .unwrap();
            let ids: Vec<i64> = (0..KEYS).map(|j| k * 1000 + j).collect();
            for &id in &ids {
                c.execute(&ins, &[&id, &format!("c{k}-{id}")])
                    .await
                    .unwrap();
            }
            for _ in 0..3 {
                for &id in &ids {
                    let row = c
                        .query_one(
                            "UPDATE users SET hits = hits + 1 WHERE id = $1 RETURNING name, hits",
                            &[&id],
                        )
                        .await
                        .unwrap();
                    assert_eq!(row.get::<_, String>(0), format!("c{k}-{id}"));
                }
            }
            for &id in &ids {
                let row = c
                    .query_one("SELECT id, name, hits FROM users WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i64>(0), id);
                assert_eq!(row.get::<_, String>(1), format!("c{k}-{id}"));
                assert_eq!(row.get::<_, i64>(2), 3);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    // On the shards: every row once, on its shard, with 3 hits.
    let all: Vec<i64> = (0..CLIENTS)
        .flat_map(|k| (0..KEYS).map(move |j| k * 1000 + j))
        .collect();
    let want = shard_of(&env, all.iter().copied());
    let mut seen = 0;
    for i in 0..env.shard_count() {
        for r in env
            .shard_client(i)
            .await
            .query("SELECT id, hits FROM users", &[])
            .await
            .unwrap()
        {
            let id: i64 = r.get(0);
            assert_eq!(want[&id], i, "id {id} on shard {i}");
            assert_eq!(r.get::<_, i64>(1), 3, "hits of {id}");
            seen += 1;
        }
    }
    assert_eq!(seen, all.len());
}

/// `current_setting(name)` as seen by a backend, via a query routed to a shard by key.
async fn backend_setting(c: &Client, name: &str, id: i64) -> String {
    c.query_one(
        "SELECT current_setting($2) FROM users WHERE id = $1",
        &[&id, &name],
    )
    .await
    .unwrap()
    .get(0)
}

async fn show(c: &Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_do_not_leak_between_clients() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    load_users(&a, 20).await;
    a.batch_execute("CREATE SCHEMA other").await.unwrap();

    let default_app = show(&b, "application_name").await;
    let default_path = show(&b, "search_path").await;
    assert_ne!(default_app, "client_a");

    a.batch_execute("SET application_name = 'client_a'")
        .await
        .unwrap();
    a.batch_execute("SET search_path = other, public")
        .await
        .unwrap();
    b.batch_execute("SET application_name = 'client_b'")
        .await
        .unwrap();

    // Both clients active, alternating over the same few backend connections.
    for round in 0..40i64 {
        let id = round % 20 + 1;
        assert_eq!(show(&a, "application_name").await, "client_a");
        assert_eq!(show(&b, "application_name").await, "client_b");
        assert_eq!(
            backend_setting(&a, "application_name", id).await,
            "client_a"
        );
        assert_eq!(
            backend_setting(&b, "application_name", id).await,
            "client_b"
        );
        assert_eq!(
            backend_setting(&a, "search_path", id).await,
            "other, public",
            "round {round}"
        );
        assert_eq!(
            backend_setting(&b, "search_path", id).await,
            default_path,
            "client A's search_path leaked to B in round {round}"
        );
        assert_eq!(show(&b, "search_path").await, default_path);
    }

    // A third client, connected after A and B changed settings, sees the defaults.
    let fresh = proxy.client().await;
    for id in 1..=20 {
        assert_eq!(
            backend_setting(&fresh, "application_name", id).await,
            default_app
        );
        assert_eq!(
            backend_setting(&fresh, "search_path", id).await,
            default_path
        );
    }

    // RESET brings A back to the defaults.
    a.batch_execute("RESET search_path").await.unwrap();
    for id in 1..=20 {
        assert_eq!(backend_setting(&a, "search_path", id).await, default_path);
        assert_eq!(
            backend_setting(&a, "application_name", id).await,
            "client_a"
        );
    }
    a.batch_execute("RESET ALL").await.unwrap();
    for id in 1..=20 {
        assert_eq!(
            backend_setting(&a, "application_name", id).await,
            default_app
        );
        assert_eq!(
            backend_setting(&b, "application_name", id).await,
            "client_b"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_applies_to_its_transaction_only() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    load_users(&a, 20).await;
    let default_app = backend_setting(&b, "application_name", 2).await;
    a.batch_execute("SET application_name = 'client_a'")
        .await
        .unwrap();

    // SET LOCAL after the transaction has reached its shard.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(backend_setting(&a, "application_name", 2).await, "client_a");
    a.batch_execute("SET LOCAL application_name = 'local_a'")
        .await
        .unwrap();
    assert_eq!(backend_setting(&a, "application_name", 2).await, "local_a");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(backend_setting(&a, "application_name", 2).await, "client_a");

    // SET LOCAL as the first statement, before any shard is known: it must still apply
    // to the statements of the transaction (Postgres semantics).
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET LOCAL application_name = 'local_b'")
        .await
        .unwrap();
    assert_eq!(show(&a, "application_name").await, "local_b");
    assert_eq!(
        backend_setting(&a, "application_name", 2).await,
        "local_b",
        "SET LOCAL sent before the transaction's first routed statement was not applied on the shard"
    );
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(backend_setting(&a, "application_name", 2).await, "client_a");

    // The classic use: a per-transaction statement_timeout.
    a.batch_execute("BEGIN; SET LOCAL statement_timeout = '20ms'")
        .await
        .unwrap();
    let e = a
        .query("SELECT pg_sleep(0.5) FROM users WHERE id = $1", &[&3i64])
        .await
        .expect_err("SET LOCAL statement_timeout was not enforced");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        backend_setting(&b, "application_name", 2).await,
        default_app
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_on_one_client() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    load_users(&c, 300).await;
    let shards = shard_of(&env, 1..=300);
    let st = c
        .prepare("SELECT id, name FROM users WHERE id = $1")
        .await
        .unwrap();

    let check = |rows: Vec<tokio_postgres::Row>, id: i64| {
        assert_eq!(rows.len(), 1, "id {id}");
        assert_eq!(rows[0].get::<_, i64>(0), id);
        assert_eq!(rows[0].get::<_, String>(1), format!("user-{id}"));
    };

    // All on one shard: tokio-postgres sends them back to back before reading replies.
    let same: Vec<i64> = (1..=300).filter(|id| shards[id] == 0).take(25).collect();
    type P<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync); 1];
    let (p0, p1, p2): (P, P, P) = ([&same[0]], [&same[1]], [&same[2]]);
    let (r1, r2, r3) = tokio::join!(c.query(&st, &p0), c.query(&st, &p1), c.query(&st, &p2));
    check(r1.unwrap(), same[0]);
    check(r2.unwrap(), same[1]);
    check(r3.unwrap(), same[2]);
    for _ in 0..4 {
        let results = futures::future::join_all(same.iter().map(|id| {
            let (c, st) = (&c, &st);
            async move { c.query(st, &[id]).await }
        }))
        .await;
        for (r, &id) in results.into_iter().zip(&same) {
            check(r.unwrap(), id);
        }
    }

    // Mixed shards, prepared and unprepared, reads and writes, in one pipeline.
    let mixed: Vec<i64> = (1..=60).collect();
    let results = futures::future::join_all(mixed.iter().map(|id| {
        let c = &c;
        let st = &st;
        async move {
            if id % 3 == 0 {
                c.query(
                    "UPDATE users SET hits = hits + 1 WHERE id = $1 RETURNING id, name",
                    &[id],
                )
                .await
            } else {
                c.query(st, &[id]).await
            }
        }
    }))
    .await;
    for (r, &id) in results.into_iter().zip(&mixed) {
        check(r.unwrap(), id);
    }
    for i in 0..env.shard_count() {
        for r in env
            .shard_client(i)
            .await
            .query("SELECT id, hits FROM users WHERE id <= 60", &[])
            .await
            .unwrap()
        {
            let id: i64 = r.get(0);
            let want = if id % 3 == 0 { 1 } else { 0 };
            assert_eq!(r.get::<_, i64>(1), want, "hits of {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_select_scatters_over_the_extended_protocol() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    load_users(&c, 500).await;
    let reference = env.reference_client().await;
    reference
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, hits bigint NOT NULL DEFAULT 0);\
             INSERT INTO users (id, name) SELECT g, 'user-' || g FROM generate_series(1, 500) g",
        )
        .await
        .unwrap();

    // Each shard holds part of the rows; the scatter returns them all.
    let per_shard = env.per_shard_i64("SELECT count(*) FROM users").await;
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "a shard is empty: {per_shard:?}"
    );
    assert_eq!(per_shard.iter().sum::<i64>(), 500);

    let sorted = |rows: Vec<tokio_postgres::Row>| {
        let mut v: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        v.sort();
        v
    };
    for sql in [
        "SELECT id, name FROM users",
        "SELECT id, name FROM users WHERE name LIKE $1",
        "SELECT u.id, u.name FROM users u WHERE u.hits = $1",
    ] {
        let st = c.prepare(sql).await.unwrap();
        for _ in 0..3 {
            let (got, want) = match st.params().len() {
                0 => (
                    c.query(&st, &[]).await.unwrap(),
                    reference.query(sql, &[]).await.unwrap(),
                ),
                _ if sql.contains("LIKE") => (
                    c.query(&st, &[&"user-1%"]).await.unwrap(),
                    reference.query(sql, &[&"user-1%"]).await.unwrap(),
                ),
                _ => (
                    c.query(&st, &[&0i64]).await.unwrap(),
                    reference.query(sql, &[&0i64]).await.unwrap(),
                ),
            };
            assert!(!want.is_empty());
            assert_eq!(sorted(got), sorted(want), "{sql}");
        }
    }
    // ORDER BY + LIMIT $1 is merged across shards (tests/gather_*.rs cover merging in depth);
    // shapes that cannot be merged are refused clearly, and the session goes on.
    let ids: Vec<i64> = c
        .query("SELECT id FROM users ORDER BY id DESC LIMIT $1", &[&5i64])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![500, 499, 498, 497, 496]);
    let e = c
        .query("SELECT string_agg(name, $1) FROM users", &[&","])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e}");
    assert_eq!(
        c.query("SELECT id FROM users", &[]).await.unwrap().len(),
        500
    );
}

/// BEGIN/COMMIT sent through the extended protocol (drivers' `execute("BEGIN")`, pgbench -M
/// extended, JDBC) end the transaction on every shard it touched; no backend connection is
/// left "idle in transaction" or handed to the next client inside someone else's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_transactions_end_on_every_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    load_users(&c, 200).await;
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(
        &env.shard_map_yaml(TABLES, ""),
        "t",
    )
    .unwrap();
    let shard_of = |id: i64| map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id));
    // Keys away from the default shard, and one on it.
    let far = (1..200).find(|&k| shard_of(k) != 0).unwrap();
    let near = (1..200).find(|&k| shard_of(k) == 0).unwrap();
    for round in 0..20 {
        c.execute("BEGIN", &[]).await.unwrap();
        c.execute("UPDATE users SET hits = hits + 1 WHERE id = $1", &[&far])
            .await
            .unwrap();
        c.query("SELECT hits FROM users WHERE id = $1", &[&near])
            .await
            .unwrap();
        if round % 2 == 0 {
            c.execute("COMMIT", &[]).await.unwrap();
        } else {
            c.execute("ROLLBACK", &[]).await.unwrap();
        }
    }
    let hits: i64 = c
        .query_one("SELECT hits FROM users WHERE id = $1", &[&far])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hits, 10, "only the committed rounds count");
    // A refused statement fails the transaction; ROLLBACK over the extended protocol ends it.
    c.execute("BEGIN", &[]).await.unwrap();
    let e = c
        .execute("UPDATE users SET id = id + 1 WHERE id = $1", &[&far])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e}");
    c.execute("ROLLBACK", &[]).await.unwrap();
    c.query("SELECT 1", &[]).await.unwrap();
    // No shard holds an open transaction of ours.
    for i in 0..3 {
        let n: i64 = env
            .shard_client(i)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "shard {i} has a backend left idle in transaction");
    }
}

/// A prepare (Parse + Describe) inside a transaction is described outside it: the
/// transaction holds (and BEGINs on) only the shard its statements run on. A prepare that
/// fails still fails the transaction, as in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_inside_a_transaction_holds_only_the_shard_it_uses() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    load_users(&c, 20).await;
    let shards = shard_of(&env, 1..=20);
    let (&id, _) = shards
        .iter()
        .find(|(_, &s)| s == 1)
        .expect("an id on shard 1");
    let in_txn = |i: usize| {
        let env = &env;
        async move {
            env.shard_client(i)
                .await
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND state = 'idle in transaction'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    c.batch_execute("BEGIN").await.unwrap();
    let st = c
        .prepare("UPDATE users SET hits = hits + 1 WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(in_txn(0).await, 0, "a prepare made the transaction hold s0");
    assert_eq!(c.execute(&st, &[&id]).await.unwrap(), 1);
    assert_eq!(
        in_txn(0).await,
        0,
        "the transaction holds a connection on s0"
    );
    assert_eq!(in_txn(1).await, 1, "the transaction's connection on s1");
    c.batch_execute("COMMIT").await.unwrap();
    let hits: i64 = c
        .query_one("SELECT hits FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hits, 1);

    // A failing prepare fails the transaction: the next statement is refused until ROLLBACK.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.prepare("SELECT nope FROM users").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e}");
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(c.query("SELECT 1", &[]).await.unwrap().len(), 1);
}
