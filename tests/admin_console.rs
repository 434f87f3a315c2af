//! The admin console (`psql -d shardwire`) against real shards: every SHOW command after a
//! known workload, admin-only access, and clear errors for what it does not speak.

mod common;

use std::collections::HashMap;

use common::{Proxy, TestEnv};

const TABLES: &str =
    "users: { key: id, type: bigint, strategy: hash }\ncountries: { strategy: reference }";

/// Rows of an admin command as column -> value maps.
async fn admin(c: &tokio_postgres::Client, sql: &str) -> Vec<HashMap<String, String>> {
    common::rows_as_maps(
        c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

/// `SHOW STATS` / `SHOW CONFIG` as name -> value.
async fn pairs(c: &tokio_postgres::Client, sql: &str) -> HashMap<String, String> {
    admin(c, sql)
        .await
        .into_iter()
        .map(|r| (r["name"].clone(), r["value"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_report_the_proxy_state() {
    let env = TestEnv::new(3).await;
    let proxy =
        Proxy::start_yaml(&env.shard_map_yaml_with(TABLES, "", &["eu", "us", "us"], true)).await;
    let console = proxy.admin_client().await;

    let v = admin(&console, "SHOW VERSION").await;
    assert_eq!(v.len(), 1);
    assert!(v[0]["version"].starts_with("shardwire "), "{v:?}");

    let shards = admin(&console, "show shards").await;
    assert_eq!(shards.len(), 3);
    assert_eq!(shards[1]["name"], "s1");
    assert_eq!(shards[1]["region"], "us");
    assert_eq!(shards[1]["port"], env.shard_port(1).to_string());

    let cfg = pairs(&console, "SHOW CONFIG").await;
    assert_eq!(cfg["pool.size"], "10");
    assert_eq!(cfg["pool.mode"], "transaction");
    assert_eq!(cfg["shards"], "s0, s1, s2");
    assert_eq!(cfg["two_phase_commit"], "on");

    // A known workload: 20 single-shard statements, one keyless read, one key list.
    let before = pairs(&console, "SHOW STATS").await;
    let n = |m: &HashMap<String, String>, k: &str| m[k].parse::<u64>().unwrap();
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let ins = c
        .prepare("INSERT INTO users (id, name) VALUES ($1, 'x')")
        .await
        .unwrap();
    for id in 1..=20i64 {
        c.execute(&ins, &[&id]).await.unwrap();
    }
    c.query("SELECT count(*) FROM users", &[]).await.unwrap();
    let ids: Vec<i64> = (1..=20).collect();
    c.query("SELECT * FROM users WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap();
    let _ = c
        .query("SELECT * FROM users u, users v WHERE u.name = v.name", &[])
        .await;
    let after = pairs(&console, "SHOW STATS").await;
    assert!(
        n(&after, "routed_single_shard") >= n(&before, "routed_single_shard") + 20,
        "{after:?}"
    );
    // DDL and the count(*) go to every shard; the key list to the shards its ids are on.
    assert!(
        n(&after, "routed_all_shards") >= n(&before, "routed_all_shards") + 2,
        "{after:?}"
    );
    assert!(
        n(&after, "routed_some_shards") + n(&after, "routed_all_shards")
            >= n(&before, "routed_some_shards") + n(&before, "routed_all_shards") + 3,
        "{after:?}"
    );
    assert!(
        n(&after, "refused_by_router") > n(&before, "refused_by_router"),
        "{after:?}"
    );
    assert!(n(&after, "clients") >= 2, "{after:?}");

    // Pools: connections were opened and are idle again (a session gives its connection
    // back just after the client has its reply); nothing waits.
    let mut pools = admin(&console, "SHOW POOLS").await;
    for _ in 0..40 {
        if pools.iter().all(|p| p["in_use"] == "0") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pools = admin(&console, "SHOW POOLS").await;
    }
    // One pool per (shard, user): the control plane's (user `-`) and each user's.
    let users = if common::roles_mode() { 2 } else { 1 };
    assert_eq!(pools.len(), 3 * (1 + users), "{pools:?}");
    assert!(pools.iter().any(|p| p["user"] == "-"), "{pools:?}");
    let pools: Vec<_> = pools.into_iter().filter(|p| p["user"] == "app").collect();
    assert_eq!(pools.len(), 3);
    for p in &pools {
        assert_eq!(p["size"], "10");
        assert_eq!(p["in_use"], "0", "{p:?}");
        assert_eq!(p["waiting"], "0", "{p:?}");
        assert!(p["idle"].parse::<usize>().unwrap() >= 1, "{p:?}");
    }

    // Errors: unknown command, extended protocol; the console stays usable.
    let e = console.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42601"), "{e}");
    assert!(e.to_string().contains("SHOW POOLS") || format!("{e:?}").contains("POOLS"));
    let e = console.query("SHOW VERSION", &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    assert_eq!(admin(&console, "SHOW VERSION").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_for_admin_users_only() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await; // user app is not an admin
    let e = tokio_postgres::connect(&proxy.admin_conninfo(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a non-admin user must be refused");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    assert!(format!("{e:?}").contains("admin: true"), "{e:?}");
}

/// One HTTP GET against the admin endpoint: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// The value of a metric line `name{labels} value` (labels as rendered).
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_over_http() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "admin: 127.0.0.1:0").await;
    let addr = proxy.handle.admin_addr.expect("admin endpoint");
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    for id in 1..=10i64 {
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    c.query("SELECT count(*) FROM users", &[]).await.unwrap();
    // Two errors: one the router refuses (0A), one a shard reports (23).
    let _ = c
        .query("SELECT * FROM users u, users v WHERE u.name = v.name", &[])
        .await
        .unwrap_err();
    let _ = c
        .execute("INSERT INTO users (id, name) VALUES (1, 'dup')", &[])
        .await
        .unwrap_err();

    // A session gives its connection back just after the client has its reply: wait for it.
    let mut text = String::new();
    for _ in 0..40 {
        let (code, t) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200, "{t}");
        text = t;
        if metric(
            &text,
            "shardwire_pool_connections{shard=\"s1\",state=\"in_use\"}",
        ) == 0.0
            && metric(
                &text,
                "shardwire_pool_connections{shard=\"s0\",state=\"in_use\"}",
            ) == 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(metric(&text, "shardwire_statements_total{route=\"single\"}") >= 11.0);
    assert!(metric(&text, "shardwire_statements_total{route=\"all\"}") >= 2.0);
    assert!(metric(&text, "shardwire_statements_total{route=\"refused\"}") >= 1.0);
    assert!(metric(&text, "shardwire_errors_total{class=\"0A\"}") >= 1.0);
    assert!(metric(&text, "shardwire_errors_total{class=\"23\"}") >= 1.0);
    assert_eq!(metric(&text, "shardwire_client_connections"), 1.0);
    // Per-shard latency histogram: every single-shard statement is a sample, cumulative
    // buckets end at the count.
    for shard in ["s0", "s1"] {
        let count = metric(
            &text,
            &format!("shardwire_shard_latency_seconds_count{{shard=\"{shard}\"}}"),
        );
        assert!(count >= 1.0, "no latency samples for {shard}:\n{text}");
        assert_eq!(
            metric(
                &text,
                &format!("shardwire_shard_latency_seconds_bucket{{shard=\"{shard}\",le=\"+Inf\"}}"),
            ),
            count
        );
    }
    // The scatter count(*) returned one merged row.
    assert!(
        metric(&text, "shardwire_gathered_rows_total") >= 1.0,
        "{text}"
    );
    // Most connections to the shard: each user's pool and the control plane's, 10 each.
    let users = if common::roles_mode() { 2.0 } else { 1.0 };
    assert_eq!(
        metric(&text, "shardwire_pool_size{shard=\"s0\"}"),
        10.0 * (1.0 + users)
    );
    assert_eq!(
        metric(
            &text,
            "shardwire_pool_connections{shard=\"s1\",state=\"in_use\"}"
        ),
        0.0
    );
    assert!(
        metric(
            &text,
            "shardwire_pool_connections{shard=\"s1\",state=\"idle\"}"
        ) >= 1.0
    );

    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"s0\":\"up\"") && body.contains("\"s1\":\"up\""),
        "{body}"
    );
    assert_eq!(http_get(addr, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_health_reports_a_stopped_shard() {
    let env = TestEnv::new_owned(2).await;
    let proxy = Proxy::start(&env, TABLES, "admin: 127.0.0.1:0").await;
    let addr = proxy.handle.admin_addr.expect("admin endpoint");
    assert_eq!(http_get(addr, "/health").await.0, 200);
    env.stop_shard(1);
    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("\"s1\":\"down\"") && body.contains("\"s0\":\"up\""),
        "{body}"
    );
}

/// PAUSE waits for a transaction that writes on two shards, and that transaction's COMMIT
/// (two-phase: its decision is recorded on a control-plane connection) is not held by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_lets_a_cross_shard_commit_finish() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start_yaml(&env.shard_map_yaml_with(TABLES, "", &[], true)).await;
    let a = proxy.client().await;
    a.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    a.batch_execute(
        "BEGIN; INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), \
         (5, 'e'), (6, 'f'), (7, 'g'), (8, 'h')",
    )
    .await
    .unwrap();
    let console = proxy.admin_client().await;
    let pause = tokio::spawn(async move { console.simple_query("PAUSE").await.map(|_| console) });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        a.batch_execute("COMMIT"),
    )
    .await
    .expect("COMMIT finishes while PAUSE waits for it")
    .unwrap();
    let console = tokio::time::timeout(std::time::Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap()
        .unwrap();
    console.simple_query("RESUME").await.unwrap();
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM users")
            .await
            .iter()
            .sum::<i64>(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_and_holds_new_statements_until_resume() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start_yaml(&env.shard_map_yaml_with(TABLES, "", &[], true)).await;
    let setup = proxy.client().await;
    setup
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    setup
        .batch_execute("INSERT INTO users (id, name) VALUES (1, 'a')")
        .await
        .unwrap();
    // A transaction in flight.
    let a = proxy.client().await;
    a.batch_execute("BEGIN").await.unwrap();
    a.query("SELECT * FROM users WHERE id = 1", &[])
        .await
        .unwrap();

    let console = proxy.admin_client().await;
    let pause = tokio::spawn(async move {
        console.simple_query("PAUSE").await.unwrap();
        console
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returns only when the transaction ended"
    );
    // A new statement from another client waits.
    let b = proxy.client().await;
    let waiting = tokio::spawn(async move {
        b.query_one("SELECT count(*) FROM users", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
    });
    a.batch_execute("COMMIT").await.unwrap();
    let console = tokio::time::timeout(std::time::Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap();
    let pools = admin(&console, "SHOW POOLS").await;
    // Every user's pool; the control plane's stays open for commits in flight.
    assert!(
        pools
            .iter()
            .all(|p| p["paused"] == if p["user"] == "-" { "no" } else { "yes" }),
        "{pools:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "new statements wait while paused");
    console.simple_query("RESUME").await.unwrap();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("RESUME lets it run")
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    // One shard only, and an unknown shard.
    console.simple_query("PAUSE s1").await.unwrap();
    let pools = admin(&console, "SHOW POOLS").await;
    for p in &pools {
        let paused = if p["shard"] == "s1" && p["user"] != "-" {
            "yes"
        } else {
            "no"
        };
        assert_eq!(p["paused"], paused, "{p:?}");
    }
    console.simple_query("RESUME s1").await.unwrap();
    let e = console.simple_query("PAUSE s9").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42704"), "{e}");
}
