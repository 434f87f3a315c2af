//! Limits of scatter-gather: constructs the proxy cannot answer correctly across shards are
//! refused with 0A000 naming the construct (and the connection stays usable); the gather
//! memory budget stops buffering queries (53200) but not streaming ORDER BY merges; the
//! gather timeout and client cancels stop slow scatters on every shard (57014); clients
//! vanishing mid-gather leak no shard connections; EXPLAIN of a scatter shows every
//! shard's plan.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, TestEnv};
use futures::StreamExt;
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n\
                      orders: { key: user_id, type: bigint, strategy: hash }\n\
                      countries: { strategy: reference }\n";

const DDL: [&str; 3] = [
    "CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int)",
    "CREATE TABLE orders (user_id bigint NOT NULL, id bigint NOT NULL, qty int, \
     amount numeric(10,2), PRIMARY KEY (user_id, id))",
    "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, region text)",
];

/// Creates the schema through the proxy (DDL goes to every shard).
async fn create_schema(c: &Client) {
    for ddl in DDL {
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl} through the proxy: {}", err_text(&e)));
    }
    c.batch_execute(
        "INSERT INTO countries VALUES ('DE', 'Germany', 'EU'), ('JP', 'Japan', 'APAC')",
    )
    .await
    .unwrap_or_else(|e| panic!("countries through the proxy: {}", err_text(&e)));
}

/// Loads users 1..=n (and 2 orders each) straight into the shard the proxy's ring names
/// for each id: the name is `<id>:` followed by `name_len` bytes (distinct per id).
async fn load_direct(env: &TestEnv, n: i64, name_len: usize) {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "test map").unwrap();
    let mut ids: Vec<Vec<i64>> = vec![Vec::new(); env.shard_count()];
    for id in 1..=n {
        ids[map.hash_shard(&KeyValue::Int(id))].push(id);
    }
    let reps = name_len.div_ceil(32) as i32;
    let name_len = name_len as i32;
    for (shard, ids) in ids.iter().enumerate() {
        let s = env.shard_client(shard).await;
        let params: [&(dyn ToSql + Sync); 3] = [ids, &reps, &name_len];
        s.execute(
            "INSERT INTO users (id, name, country, score) \
             SELECT id, id || ':' || left(repeat(md5(id::text), $2), $3), \
                    (ARRAY['DE', 'JP', 'FR'])[1 + id % 3], (id * 37 % 200)::int - 50 \
             FROM unnest($1::bigint[]) AS id",
            &params,
        )
        .await
        .unwrap_or_else(|e| panic!("loading shard {shard}: {}", err_text(&e)));
        s.execute(
            "INSERT INTO orders (user_id, id, qty, amount) \
             SELECT id, k, (id + k) % 7, (id % 1000) / 10.0 \
             FROM unnest($1::bigint[]) AS id, generate_series(1, 2) AS k",
            &[ids],
        )
        .await
        .unwrap_or_else(|e| panic!("loading orders on shard {shard}: {}", err_text(&e)));
    }
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// Checks that `c` still answers `SELECT 1` in both protocols; the problem otherwise.
async fn still_usable(c: &Client) -> Option<String> {
    match c.simple_query("SELECT 1").await {
        Ok(msgs) => {
            let one = msgs
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));
            if !one {
                return Some("simple SELECT 1 returned no row 1".into());
            }
        }
        Err(e) => return Some(format!("simple SELECT 1 failed: {}", err_text(&e))),
    }
    match c.query_one("SELECT 1::int4", &[]).await {
        Ok(r) if r.get::<_, i32>(0) == 1 => None,
        Ok(_) => Some("extended SELECT 1 returned something else".into()),
        Err(e) => Some(format!("extended SELECT 1 failed: {}", err_text(&e))),
    }
}

/// Test-process resident set size in KiB (the proxy runs in this process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Active statements on each shard (this test's database) whose text contains `needle`.
async fn active_on_shards(env: &TestEnv, needle: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        let n: i64 = env
            .shard_client(i)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'active' AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
                &[&needle],
            )
            .await
            .unwrap()
            .get(0);
        out.push(n);
    }
    out
}

/// Waits up to `within` for no shard to run a statement containing `needle`; the
/// per-shard counts seen last.
async fn shards_go_idle(env: &TestEnv, needle: &str, within: Duration) -> Result<(), Vec<i64>> {
    let deadline = Instant::now() + within;
    loop {
        let n = active_on_shards(env, needle).await;
        if n.iter().all(|&x| x == 0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Words of a plan line (split on anything but letters, digits and '_').
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_constructs_name_themselves_and_explain_shows_shards() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    create_schema(&c).await;
    load_direct(&env, 300, 20).await;
    let mut failures = Vec::new();

    // (statement, words of which the message must contain one, case-insensitive)
    let refused: [(&str, &[&str]); 6] = [
        (
            "SELECT id, row_number() OVER (ORDER BY id) FROM users",
            &["window"],
        ),
        (
            "SELECT count(*) FROM users u JOIN orders o ON o.qty = u.score",
            &["join"],
        ),
        (
            "SELECT * FROM users WHERE score > (SELECT avg(qty) FROM orders)",
            &["subquery"],
        ),
        ("SELECT string_agg(name, ',') FROM users", &["string_agg"]),
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY score) FROM users",
            &["percentile_cont"],
        ),
        (
            "SELECT id FROM users UNION SELECT user_id FROM orders",
            &["union", "set operation"],
        ),
    ];
    for (sql, words) in refused {
        for mode in ["simple", "extended"] {
            let res = if mode == "simple" {
                c.simple_query(sql).await.map(|_| ())
            } else {
                c.query(sql, &[]).await.map(|_| ())
            };
            match res {
                Ok(()) => failures.push(format!("[{mode}] {sql}: answered, expected 0A000")),
                Err(e) => {
                    eprintln!("[{mode}] {sql}: {}", err_text(&e));
                    let msg = e.as_db_error().map(|d| d.message().to_lowercase());
                    if sqlstate(&e) != Some("0A000") {
                        failures.push(format!(
                            "[{mode}] {sql}: expected SQLSTATE 0A000, got {}",
                            err_text(&e)
                        ));
                    } else if !words
                        .iter()
                        .any(|w| msg.as_deref().is_some_and(|m| m.contains(w)))
                    {
                        failures.push(format!(
                            "[{mode}] {sql}: message does not name the construct (one of {words:?}): {}",
                            err_text(&e)
                        ));
                    }
                }
            }
            if let Some(p) = still_usable(&c).await {
                failures.push(format!("[{mode}] after {sql}: {p}"));
            }
        }
    }

    // EXPLAIN of a scatter: one plan per shard, labelled with the shard name.
    let plan = |msgs: Vec<SimpleQueryMessage>| -> (Vec<String>, Vec<String>) {
        let mut names = Vec::new();
        let mut lines = Vec::new();
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    names = cols.iter().map(|c| c.name().to_string()).collect();
                }
                SimpleQueryMessage::Row(r) => {
                    lines.push(r.get(0).unwrap_or_default().to_string());
                }
                _ => {}
            }
        }
        (names, lines)
    };
    let shards_named = |lines: &[String]| -> Vec<String> {
        let mut named: Vec<String> = (0..env.shard_count())
            .map(|i| format!("s{i}"))
            .filter(|s| lines.iter().any(|l| words(l).any(|w| w == s)))
            .collect();
        named.dedup();
        named
    };
    let sql = "EXPLAIN SELECT count(*) FROM users";
    match c.simple_query(sql).await {
        Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
        Ok(msgs) => {
            let (names, lines) = plan(msgs);
            eprintln!("{sql}:\n{}", lines.join("\n"));
            let named = shards_named(&lines);
            if names != ["QUERY PLAN"] {
                failures.push(format!(
                    "{sql}: columns {names:?}, expected [\"QUERY PLAN\"]"
                ));
            }
            if named.len() != env.shard_count() || !lines.iter().any(|l| l.contains("Scan")) {
                failures.push(format!(
                    "{sql}: expected every shard (s0..s2) and a Scan; names {named:?} in:\n{}",
                    lines.join("\n")
                ));
            }
        }
    }
    let sql = "EXPLAIN SELECT * FROM users WHERE id = 5";
    match c.simple_query(sql).await {
        Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
        Ok(msgs) => {
            let (_, lines) = plan(msgs);
            eprintln!("{sql}:\n{}", lines.join("\n"));
            let named = shards_named(&lines);
            if named.len() != 1 {
                failures.push(format!(
                    "{sql}: expected exactly one shard named, got {named:?} in:\n{}",
                    lines.join("\n")
                ));
            }
        }
    }
    if let Some(p) = still_usable(&c).await {
        failures.push(format!("after EXPLAIN: {p}"));
    }
    assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_stops_buffering_but_not_streaming_merges() {
    const N: i64 = 20_000;
    const NAME_LEN: usize = 300;
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "gather: { memory_limit_mb: 1 }").await;
    let c = proxy.client().await;
    create_schema(&c).await;
    let started = Instant::now();
    load_direct(&env, N, NAME_LEN).await;
    eprintln!("loaded {N} users directly in {:?}", started.elapsed());
    // Plain scatter (no merging) sees every row once.
    let n = c
        .query_raw("SELECT id FROM users", std::iter::empty::<i64>())
        .await
        .unwrap_or_else(|e| panic!("plain scatter: {}", err_text(&e)))
        .fold(0i64, |n, r| async move {
            r.unwrap();
            n + 1
        })
        .await;
    assert_eq!(n, N, "rows through a plain scatter");

    let mut failures = Vec::new();
    let rss_before = rss_kib();
    eprintln!("RSS before gather queries: {} MiB", rss_before / 1024);

    // DISTINCT over ~6 MB of distinct names must be held in the proxy: over budget.
    let sql = "SELECT DISTINCT name FROM users";
    for mode in ["simple", "extended"] {
        let res = if mode == "simple" {
            c.simple_query(sql).await.map(|m| m.len())
        } else {
            c.query(sql, &[]).await.map(|r| r.len())
        };
        match res {
            Ok(n) => failures.push(format!(
                "[{mode}] {sql}: answered ({n} messages/rows) with a 1 MiB budget, expected 53200"
            )),
            Err(e) => {
                eprintln!("[{mode}] {sql}: {}", err_text(&e));
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_lowercase())
                    .unwrap_or_default();
                if sqlstate(&e) != Some("53200") {
                    failures.push(format!(
                        "[{mode}] {sql}: expected SQLSTATE 53200, got {}",
                        err_text(&e)
                    ));
                } else if !(msg.contains("memory") && msg.contains("limit")) {
                    failures.push(format!(
                        "[{mode}] {sql}: message should mention the memory limit: {}",
                        err_text(&e)
                    ));
                }
            }
        }
        if let Some(p) = still_usable(&c).await {
            failures.push(format!("[{mode}] after {sql}: {p}"));
        }
    }
    eprintln!("RSS after DISTINCT: {} MiB", rss_kib() / 1024);

    // A streaming ORDER BY merge over the same ~6 MB fits in 1 MiB; consume it as a stream
    // so the client side holds one row at a time.
    let sql = "SELECT id, name FROM users ORDER BY id";
    match c.query_raw(sql, std::iter::empty::<i64>()).await {
        Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            let (mut count, mut last, mut bytes) = (0i64, 0i64, 0usize);
            let mut problem = None;
            while let Some(r) = stream.next().await {
                match r {
                    Err(e) => {
                        problem = Some(format!("failed after {count} rows: {}", err_text(&e)));
                        break;
                    }
                    Ok(row) => {
                        let id: i64 = row.get(0);
                        let name: &str = row.get(1);
                        if id <= last && problem.is_none() {
                            problem = Some(format!("id {id} after {last}: not in order"));
                        }
                        if !name.starts_with(&format!("{id}:")) {
                            problem = Some(format!("row {id} has name {name:.20}…"));
                        }
                        bytes += name.len();
                        last = id;
                        count += 1;
                    }
                }
            }
            if let Some(p) = problem {
                failures.push(format!("{sql}: {p}"));
            } else if count != N {
                failures.push(format!("{sql}: {count} rows, expected {N}"));
            }
            eprintln!("streamed {count} rows, {} KiB of names", bytes / 1024);
        }
    }
    if let Some(p) = still_usable(&c).await {
        failures.push(format!("after the streaming merge: {p}"));
    }

    // Names sort by their "<id>:" prefix (':' sorts after every digit, C collation).
    let mut by_name: Vec<i64> = (1..=N).collect();
    by_name.sort_by_key(|id| format!("{id}:"));

    // The same merge on a text key, streamed in full, and as a top-N (LIMIT pushed down).
    let sql = "SELECT id FROM users ORDER BY name";
    match c.query_raw(sql, std::iter::empty::<i64>()).await {
        Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
        Ok(stream) => {
            let ids: Result<Vec<i64>, _> = stream
                .map(|r| r.map(|r| r.get::<_, i64>(0)))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect();
            match ids {
                Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
                Ok(ids) if ids != by_name => failures.push(format!(
                    "{sql}: {} rows, not in name order (first {:?}, expected {:?})",
                    ids.len(),
                    &ids[..ids.len().min(5)],
                    &by_name[..5]
                )),
                Ok(_) => {}
            }
        }
    }
    let sql = "SELECT id, name FROM users ORDER BY name DESC LIMIT 10 OFFSET 5";
    match c.query(sql, &[]).await {
        Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
        Ok(rows) => {
            let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let want: Vec<i64> = by_name.iter().rev().skip(5).take(10).copied().collect();
            if got != want {
                failures.push(format!("{sql}: ids {got:?}, expected {want:?}"));
            }
        }
    }
    // Aggregates hold one state per group: fine for few groups...
    let sql = "SELECT country, count(*), max(name) FROM users GROUP BY country ORDER BY country";
    match c.query(sql, &[]).await {
        Err(e) => failures.push(format!("{sql}: {}", err_text(&e))),
        Ok(rows) => {
            let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let want: Vec<(String, i64)> = [("DE", 0), ("FR", 2), ("JP", 1)]
                .iter()
                .map(|(cc, rem)| {
                    (
                        cc.to_string(),
                        (1..=N).filter(|id| id % 3 == *rem).count() as i64,
                    )
                })
                .collect();
            if counts != want {
                failures.push(format!("{sql}: {counts:?}, expected {want:?}"));
            }
        }
    }
    // ...while 20,000 groups of ~300-byte keys either stay within the budget (a streaming
    // group merge) with the right answer, or are refused with 53200 — never wrong.
    let sql = "SELECT name, count(*) FROM users GROUP BY name";
    match c.query(sql, &[]).await {
        Ok(rows) if rows.len() as i64 == N && rows.iter().all(|r| r.get::<_, i64>(1) == 1) => {}
        Ok(rows) => failures.push(format!(
            "{sql}: {} rows, expected {N} groups of 1",
            rows.len()
        )),
        Err(e) if sqlstate(&e) == Some("53200") => eprintln!("{sql}: {}", err_text(&e)),
        Err(e) => failures.push(format!(
            "{sql}: expected the answer or 53200, got {}",
            err_text(&e)
        )),
    }
    if let Some(p) = still_usable(&c).await {
        failures.push(format!("after the text merges and GROUP BY: {p}"));
    }
    let rss_after = rss_kib();
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "RSS after streaming merge: {} MiB (growth {growth_mib} MiB)",
        rss_after / 1024
    );
    if growth_mib >= 64 {
        failures.push(format!(
            "test process RSS grew by {growth_mib} MiB during the gather queries (limit 64 MiB)"
        ));
    }
    assert_no_failures(&failures);
}

/// Slow on every shard: ~300 rows per shard, 10 ms each.
const SLOW: [&str; 2] = [
    "SELECT id, pg_sleep(0.01) FROM users ORDER BY id",
    "SELECT count(*) FROM users WHERE pg_sleep(0.01) IS NOT NULL",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gather_timeout_and_client_cancel_stop_every_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let timed = Proxy::start(&env, TABLES, "gather: { timeout_secs: 1 }").await;
    let c = proxy.client().await;
    create_schema(&c).await;
    load_direct(&env, 900, 20).await;
    let per_shard = env.per_shard_i64("SELECT count(*) FROM users").await;
    assert!(
        per_shard.iter().all(|&n| n >= 250),
        "each shard needs ~300 rows to be slow: {per_shard:?}"
    );
    let mut failures = Vec::new();

    // Gather timeout (1 s) against ~3 s of work per shard.
    let t = timed.client().await;
    for sql in SLOW {
        let started = Instant::now();
        let res = t.query(sql, &[]).await;
        let took = started.elapsed();
        if let Err(e) = &res {
            eprintln!("timeout: {sql}: {} after {took:?}", err_text(e));
        }
        match res {
            Ok(rows) => failures.push(format!(
                "timeout: {sql}: answered {} rows after {took:?}, expected 57014 after ~1 s",
                rows.len()
            )),
            Err(e) if sqlstate(&e) != Some("57014") => failures.push(format!(
                "timeout: {sql}: expected SQLSTATE 57014, got {} after {took:?}",
                err_text(&e)
            )),
            Err(_) if took > Duration::from_millis(2500) || took < Duration::from_millis(900) => {
                failures.push(format!(
                    "timeout: {sql}: 57014 after {took:?}, expected ~1 s (0.9–2.5 s)"
                ))
            }
            Err(_) => {}
        }
        if let Err(n) = shards_go_idle(&env, "pg_sleep(0.01)", Duration::from_millis(1000)).await {
            failures.push(format!(
                "timeout: {sql}: shards still running it 1 s after the error: {n:?}"
            ));
            // Let it finish so the next check starts clean.
            let _ = shards_go_idle(&env, "pg_sleep(0.01)", Duration::from_secs(5)).await;
        }
        if let Some(p) = still_usable(&t).await {
            failures.push(format!("timeout: after {sql}: {p}"));
        }
    }

    // Client cancel after 300 ms, through the proxy without a gather timeout; a plain
    // scatter first (no merging), then the gather queries.
    let plain = "SELECT id, pg_sleep(0.01) FROM users";
    for sql in std::iter::once(plain).chain(SLOW) {
        let token = c.cancel_token();
        let started = Instant::now();
        let (res, cancel) = tokio::join!(c.query(sql, &[]), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(NoTls).await
        });
        let took = started.elapsed();
        if let Err(e) = &res {
            eprintln!("cancel: {sql}: {} after {took:?}", err_text(e));
        }
        if let Err(e) = cancel {
            failures.push(format!(
                "cancel: {sql}: sending the cancel request failed: {e}"
            ));
        }
        match res {
            Ok(rows) => failures.push(format!(
                "cancel: {sql}: answered {} rows after {took:?}, expected 57014",
                rows.len()
            )),
            Err(e) if sqlstate(&e) != Some("57014") => failures.push(format!(
                "cancel: {sql}: expected SQLSTATE 57014, got {} after {took:?}",
                err_text(&e)
            )),
            Err(_) if took > Duration::from_millis(2000) => failures.push(format!(
                "cancel: {sql}: 57014 only after {took:?}, expected soon after 300 ms"
            )),
            Err(_) => {}
        }
        if let Err(n) = shards_go_idle(&env, "pg_sleep(0.01)", Duration::from_millis(1000)).await {
            failures.push(format!(
                "cancel: {sql}: shards still running it 1 s after the error: {n:?}"
            ));
            let _ = shards_go_idle(&env, "pg_sleep(0.01)", Duration::from_secs(5)).await;
        }
        if let Some(p) = still_usable(&c).await {
            failures.push(format!("cancel: after {sql}: {p}"));
        }
    }

    // Clients that vanish mid-gather (socket closed), more of them than the pool has
    // connections per shard: busy shard connections must be neither leaked nor reused.
    // (~1.2 s per shard, so that abandoned statements end soon even if never cancelled.)
    let slow = "SELECT id, pg_sleep(0.004) FROM users ORDER BY id";
    for _ in 0..12 {
        let (client, conn) = tokio_postgres::connect(&proxy.conninfo(), NoTls)
            .await
            .unwrap();
        let conn_task = tokio::spawn(conn);
        let query = tokio::spawn(async move {
            let _ = client.query(slow, &[]).await;
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        conn_task.abort();
        query.abort();
    }
    let gone = Instant::now();
    match shards_go_idle(&env, "pg_sleep(0.004)", Duration::from_secs(8)).await {
        Ok(()) => eprintln!(
            "abandoned gathers stopped on the shards {:?} after the last client vanished",
            gone.elapsed()
        ),
        Err(n) => failures.push(format!(
            "abandoned gathers still run on the shards 8 s after their clients vanished: {n:?}"
        )),
    }
    let fresh = futures::future::join_all((0..10).map(|_| proxy.client())).await;
    let started = Instant::now();
    let answers = futures::future::join_all(fresh.iter().map(|c| async move {
        let n = c.query_one("SELECT count(*) FROM users", &[]).await?;
        let ids = c
            .query("SELECT id FROM users ORDER BY id DESC LIMIT 3", &[])
            .await?;
        Ok::<_, tokio_postgres::Error>((
            n.get::<_, i64>(0),
            ids.iter().map(|r| r.get(0)).collect::<Vec<i64>>(),
        ))
    }))
    .await;
    for a in answers {
        match a {
            Ok((900, ids)) if ids == [900, 899, 898] => {}
            Ok(other) => failures.push(format!(
                "after abandoned gathers: wrong answer {other:?} (count 900, ids [900, 899, 898])"
            )),
            Err(e) => failures.push(format!("after abandoned gathers: {}", err_text(&e))),
        }
    }
    eprintln!("10 fresh clients answered in {:?}", started.elapsed());
    assert_no_failures(&failures);
}
