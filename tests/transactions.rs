//! A client transaction is one transaction, whatever shards it touches (issue 15):
//! errors abort all of it, savepoints and settings cover every shard, including shards it
//! reaches after them, and two-phase commit never half-commits.
//!
//! - Named regressions for the three examples of the issue, checked shard by shard.
//! - A seeded differential test: random transaction scripts run with psql through the proxy
//!   and on one reference Postgres; every reply (command tag, rows, SQLSTATE) and the final
//!   rows must be identical.
//! - Cross-shard commits that wrote on the default shard, with pool size 1 and with 50
//!   concurrent committers at pool size 20; a failure at PREPARE rolls every shard back.

mod common;

use common::sqlstate as code;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Proxy, TestEnv};
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::Client;

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\naccts: { key: id, type: bigint, strategy: hash }\n";

/// The first `n` ids (from 1) that hash to each shard, by shard.
fn ids_by_shard(env: &TestEnv, n: usize) -> Vec<Vec<i64>> {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    common::ids_by_shard(&map, env.shard_count(), n)
}

/// `name` of user `id`, read on shard `shard` directly (`None`: no such row there).
async fn name_on(env: &TestEnv, shard: usize, id: i64) -> Option<String> {
    env.shard_client(shard)
        .await
        .query_opt("SELECT name FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn users_with(c: &Client, ids: &[i64]) {
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    for id in ids {
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'orig')", &[id])
            .await
            .unwrap();
    }
}

/// The SQLSTATE of a failed statement.
/// The command tag-ish reply of a simple query through tokio-postgres: rows affected, or
/// the SQLSTATE.
async fn run(c: &Client, sql: &str) -> Result<u64, String> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .last()
            .unwrap_or(0)),
        Err(e) => Err(code(&e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_after_an_error_fail_and_commit_rolls_back_every_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let ids = ids_by_shard(&env, 1);
    let (a, b) = (ids[0][0], ids[2][0]);
    let mut c = proxy.client().await;
    users_with(&c, &[a, b]).await;
    for end in ["COMMIT", "ROLLBACK", "END"] {
        assert_eq!(run(&c, "BEGIN").await, Ok(0));
        assert_eq!(
            run(&c, &format!("UPDATE users SET name = 'x1' WHERE id = {a}")).await,
            Ok(1)
        );
        assert_eq!(run(&c, "SELECT 1/0").await, Err("22012".into()));
        // Postgres: 25P02 for everything until the end of the block, on every shard.
        for sql in [
            format!("UPDATE users SET name = 'changed after error' WHERE id = {b}"),
            format!("SELECT name FROM users WHERE id = {a}"),
            "SELECT count(*) FROM users".to_string(),
            "SET TimeZone = 'UTC'".to_string(),
            "SAVEPOINT late".to_string(),
            "SHOW TimeZone".to_string(),
        ] {
            assert_eq!(run(&c, &sql).await, Err("25P02".into()), "{sql}");
        }
        // COMMIT of an aborted transaction answers ROLLBACK (psql shows the tag).
        let tags = psql_tags(&proxy, &format!("BEGIN; SELECT 1/0; {end};"));
        assert!(tags.ends_with("ROLLBACK"), "{end} after an error: {tags}");
        assert_eq!(run(&c, end).await, Ok(0));
        assert_eq!(name_on(&env, 0, a).await.as_deref(), Some("orig"));
        assert_eq!(name_on(&env, 2, b).await.as_deref(), Some("orig"));
    }
    // The extended protocol sees the same: an error, then 25P02 at Parse/Bind, then ROLLBACK.
    let t = c.transaction().await.unwrap();
    t.execute("UPDATE users SET name = 'y' WHERE id = $1", &[&a])
        .await
        .unwrap();
    let e = t.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(code(&e), "22012");
    let e = t
        .execute("UPDATE users SET name = 'z' WHERE id = $1", &[&b])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "25P02");
    // tokio-postgres's commit sends COMMIT; the server (and the proxy) answer ROLLBACK.
    t.commit().await.unwrap();
    assert_eq!(name_on(&env, 0, a).await.as_deref(), Some("orig"));
    assert_eq!(name_on(&env, 2, b).await.as_deref(), Some("orig"));
    // And the session is clean afterwards.
    assert_eq!(
        run(
            &c,
            &format!("UPDATE users SET name = 'after' WHERE id = {b}")
        )
        .await,
        Ok(1)
    );
    assert_eq!(name_on(&env, 2, b).await.as_deref(), Some("after"));
}

/// What psql prints for `sql` (statements one per line, each sent on its own) through the
/// proxy: echoed statements, rows, command tags, `ERROR:  <SQLSTATE>`.
fn psql_tags(proxy: &Proxy, sql: &str) -> String {
    let dir = tempfile_dir();
    let file = dir.join("tags.sql");
    std::fs::write(&file, sql.replace("; ", ";\n")).unwrap();
    let out = psql_echo(
        &proxy.conninfo(),
        Some("app-secret"),
        file.to_str().unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_savepoint_undoes_a_shard_that_joined_after_it() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let ids = ids_by_shard(&env, 1);
    let (a, b, d) = (ids[0][0], ids[1][0], ids[2][0]);
    let mut c = proxy.client().await;
    users_with(&c, &[a, b, d]).await;
    let script = [
        "BEGIN".to_string(),
        format!("UPDATE users SET name = 's1' WHERE id = {a}"),
        "SAVEPOINT sp".into(),
        format!("UPDATE users SET name = 'after savepoint' WHERE id = {b}"),
        "ROLLBACK TO SAVEPOINT sp".into(),
        // An error inside a savepoint, undone by ROLLBACK TO, leaves the transaction usable.
        "SAVEPOINT \"Inner\"".into(),
        format!("UPDATE users SET name = 'doomed' WHERE id = {d}"),
        "SELECT 1/0".into(),
        "ROLLBACK TO \"Inner\"".into(),
        "RELEASE sp".into(),
        format!("UPDATE users SET name = 'kept' WHERE id = {d}"),
        "COMMIT".into(),
    ];
    let expect: [Result<u64, String>; 12] = [
        Ok(0),
        Ok(1),
        Ok(0),
        Ok(1),
        Ok(0),
        Ok(0),
        Ok(1),
        Err("22012".into()),
        Ok(0),
        Ok(0),
        Ok(1),
        Ok(0),
    ];
    for (sql, want) in script.iter().zip(expect) {
        assert_eq!(run(&c, sql).await, want, "{sql}");
    }
    assert_eq!(name_on(&env, 0, a).await.as_deref(), Some("s1"));
    assert_eq!(
        name_on(&env, 1, b).await.as_deref(),
        Some("orig"),
        "rolled back to sp"
    );
    assert_eq!(name_on(&env, 2, d).await.as_deref(), Some("kept"));
    // Savepoints that do not exist are errors, as in Postgres, and fail the transaction.
    assert_eq!(run(&c, "BEGIN").await, Ok(0));
    assert_eq!(run(&c, "RELEASE nope").await, Err("3B001".into()));
    assert_eq!(run(&c, "ROLLBACK TO nope").await, Err("3B001".into()));
    assert_eq!(run(&c, "SELECT 1").await, Err("25P02".into()));
    assert_eq!(run(&c, "ROLLBACK").await, Ok(0));
    // Writes through the extended protocol around a driver's savepoint.
    let mut t = c.transaction().await.unwrap();
    t.execute("UPDATE users SET name = 'e1' WHERE id = $1", &[&a])
        .await
        .unwrap();
    {
        let sp = t.savepoint("nested").await.unwrap();
        sp.execute("UPDATE users SET name = 'e2' WHERE id = $1", &[&b])
            .await
            .unwrap();
        sp.rollback().await.unwrap();
    }
    t.commit().await.unwrap();
    assert_eq!(name_on(&env, 0, a).await.as_deref(), Some("e1"));
    assert_eq!(name_on(&env, 1, b).await.as_deref(), Some("orig"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_in_a_transaction_reach_shards_it_uses_later() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let ids = ids_by_shard(&env, 1);
    let (a, b) = (ids[0][0], ids[2][0]);
    let c = proxy.client().await;
    users_with(&c, &[a, b]).await;
    let tz_on = |id: i64| format!("SELECT current_setting('TimeZone') FROM users WHERE id = {id}");
    let value = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        msgs.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    c.batch_execute("BEGIN; SET TimeZone = 'Asia/Kolkata'")
        .await
        .unwrap();
    assert_eq!(
        value(c.simple_query(&tz_on(b)).await.unwrap()),
        "Asia/Kolkata"
    );
    c.batch_execute("SET LOCAL work_mem = '7MB'").await.unwrap();
    assert_eq!(
        value(
            c.simple_query(&format!(
                "SELECT current_setting('work_mem') FROM users WHERE id = {a}"
            ))
            .await
            .unwrap()
        ),
        "7MB"
    );
    c.batch_execute("SAVEPOINT s; SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    c.batch_execute("ROLLBACK TO s").await.unwrap();
    // Undone with the savepoint, on every shard.
    assert_eq!(
        value(c.simple_query(&tz_on(a)).await.unwrap()),
        "Asia/Kolkata"
    );
    assert_eq!(
        value(c.simple_query(&tz_on(b)).await.unwrap()),
        "Asia/Kolkata"
    );
    c.batch_execute("COMMIT").await.unwrap();
    // A committed SET is the session's; SET LOCAL ended with the transaction.
    assert_eq!(
        value(c.simple_query(&tz_on(a)).await.unwrap()),
        "Asia/Kolkata"
    );
    assert_eq!(value(c.simple_query("SHOW work_mem").await.unwrap()), "4MB");
    // A rolled-back SET is undone, as in Postgres.
    c.batch_execute("BEGIN; SET TimeZone = 'America/Lima'; ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET TimeZone = 'America/Lima'")
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        value(c.simple_query(&tz_on(b)).await.unwrap()),
        "Asia/Kolkata"
    );
    // An invalid value is refused at the SET, and fails the transaction.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .batch_execute("SET TimeZone = 'Nowhere/Never'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
    assert_eq!(run(&c, &tz_on(b)).await, Err("25P02".into()));
    c.batch_execute("ROLLBACK").await.unwrap();
    // SET SESSION CHARACTERISTICS is a session setting that follows the client.
    c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    for id in [a, b] {
        assert_eq!(
            value(
                c.simple_query(&format!(
                    "SELECT current_setting('transaction_isolation') FROM users WHERE id = {id}"
                ))
                .await
                .unwrap()
            ),
            "repeatable read"
        );
    }
}

/// Commits that wrote on the default shard and another: the decision row must not need a
/// second connection to the default shard (pool size 1), and many at once must not starve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_commits_on_the_default_shard_with_small_pools() {
    let env = TestEnv::new(3).await;
    let ids = ids_by_shard(&env, 50);
    for (size, clients) in [(1usize, 1usize), (20, 50)] {
        let yaml = env
            .shard_map_yaml(TABLES, "")
            .replace("pool: { size: 10,", &format!("pool: {{ size: {size},"));
        let proxy = Proxy::start_yaml(&yaml).await;
        let c = proxy.client().await;
        c.batch_execute("DROP TABLE IF EXISTS accts").await.unwrap();
        c.batch_execute("CREATE TABLE accts (id bigint PRIMARY KEY, bal bigint NOT NULL)")
            .await
            .unwrap();
        let pairs: Vec<(i64, i64)> = ids[0]
            .iter()
            .copied()
            .zip(ids[1].iter().copied())
            .take(clients)
            .collect();
        for &(x, y) in &pairs {
            for id in [x, y] {
                c.execute("INSERT INTO accts (id, bal) VALUES ($1, 100)", &[&id])
                    .await
                    .unwrap();
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for &(from, to) in &pairs {
            let conninfo = proxy.conninfo();
            tasks.spawn(async move {
                let c = common::connect(&conninfo).await;
                for _ in 0..5 {
                    for sql in [
                        "BEGIN".to_string(),
                        format!("UPDATE accts SET bal = bal - 10 WHERE id = {from}"),
                        format!("UPDATE accts SET bal = bal + 10 WHERE id = {to}"),
                        "COMMIT".to_string(),
                    ] {
                        c.batch_execute(&sql)
                            .await
                            .map_err(|e| format!("{sql}: {e:?}"))?;
                    }
                }
                Ok::<(), String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap()
                .unwrap_or_else(|e| panic!("pool size {size}: {e}"));
        }
        let on0 = env
            .per_shard_i64("SELECT coalesce(sum(bal), 0)::bigint FROM accts")
            .await;
        assert_eq!(
            on0.iter().sum::<i64>(),
            200 * clients as i64,
            "pool size {size}: totals {on0:?}"
        );
        assert_eq!(on0[0], (100 - 50) * clients as i64, "pool size {size}");
        assert_eq!(on0[1], (100 + 50) * clients as i64, "pool size {size}");
        drop(proxy);
    }
}

/// A failure at PREPARE TRANSACTION (a deferred constraint) rolls every shard back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_prepare_rolls_back_every_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let ids = ids_by_shard(&env, 2);
    let c = proxy.client().await;
    c.batch_execute(
        "CREATE TABLE accts (id bigint PRIMARY KEY, bal bigint NOT NULL, \
         uniq int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
    )
    .await
    .unwrap();
    let (a, a2, b) = (ids[1][0], ids[1][1], ids[2][0]);
    for id in [a, a2, b] {
        c.execute("INSERT INTO accts (id, bal) VALUES ($1, 100)", &[&id])
            .await
            .unwrap();
    }
    assert_eq!(run(&c, "BEGIN").await, Ok(0));
    run(&c, &format!("UPDATE accts SET bal = 0 WHERE id = {b}"))
        .await
        .unwrap();
    run(
        &c,
        &format!("UPDATE accts SET uniq = 1 WHERE id IN ({a}, {a2})"),
    )
    .await
    .unwrap();
    let r = run(&c, "COMMIT").await;
    assert_eq!(
        r,
        Err("23505".into()),
        "the deferred check fails at PREPARE"
    );
    let bals = env
        .per_shard_i64("SELECT coalesce(sum(bal), 0)::bigint FROM accts")
        .await;
    assert_eq!(bals.iter().sum::<i64>(), 300, "nothing committed: {bals:?}");
    let prepared = env
        .per_shard_i64("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
        .await;
    assert_eq!(
        prepared,
        vec![0, 0, 0],
        "no prepared transaction left behind"
    );
    assert_eq!(run(&c, "SELECT 1").await, Ok(1), "the session goes on");
}

/// Splitmix64: a small seeded generator, so a failing script can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// One random script: a transaction block (or, one time in five, autocommit statements)
/// over `ids`, ending with a look at the table and the session's settings.
fn script(rng: &mut Rng, ids: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    let txn = rng.below(5) != 0;
    if txn {
        out.push(
            rng.pick(&[
                "BEGIN",
                "BEGIN",
                "START TRANSACTION",
                "BEGIN ISOLATION LEVEL REPEATABLE READ",
            ])
            .to_string(),
        );
    }
    let sps = ["sp1", "sp2", "sp3"];
    // Savepoints defined so far: ROLLBACK TO / RELEASE mostly name one of them.
    let mut defined: Vec<&str> = Vec::new();
    for _ in 0..(3 + rng.below(9)) {
        let id = *rng.pick(ids);
        let k = rng.below(50) as i64 + 1;
        // Now and then a savepoint that does not exist (3B001), mostly a defined one.
        let sp = if !defined.is_empty() && rng.below(10) != 0 {
            Some(*rng.pick(&defined))
        } else if rng.below(4) == 0 {
            Some(*rng.pick(&sps))
        } else {
            None
        };
        let op = rng.below(if txn { 17 } else { 10 });
        out.push(match op {
            0 | 1 => format!("UPDATE accts SET bal = bal + {k} WHERE id = {id}"),
            2 if rng.below(2) == 0 => format!("INSERT INTO accts (id, bal) VALUES ({id}, {k})"),
            2 => format!("INSERT INTO accts (id, bal) VALUES ({id}, {k}) ON CONFLICT (id) DO UPDATE SET bal = accts.bal + {k}"),
            3 => format!("DELETE FROM accts WHERE id = {id}"),
            4 => format!("SELECT id, bal FROM accts WHERE id = {id}"),
            // Deliberate errors: a third of the time, else a write.
            5 if rng.below(3) == 0 => "SELECT 1/0".into(),
            5 => format!("UPDATE accts SET bal = bal * 2 WHERE id = {id}"),
            6 => format!("SET work_mem = '{}MB'", 1 + rng.below(9)),
            7 => format!("SELECT current_setting('work_mem'), current_setting('TimeZone') FROM accts WHERE id = {id}"),
            8 => "SELECT count(*), sum(bal) FROM accts".into(),
            9 => rng.pick(&["SET TimeZone = 'UTC'", "SET TimeZone = 'Asia/Kolkata'", "RESET TimeZone", "SHOW work_mem", "RESET work_mem"]).to_string(),
            10 | 11 => {
                let name = *rng.pick(&sps);
                defined.push(name);
                format!("SAVEPOINT {name}")
            }
            12 | 13 if sp.is_some() => format!("ROLLBACK TO SAVEPOINT {}", sp.unwrap_or("sp1")),
            14 if sp.is_some() => format!("RELEASE SAVEPOINT {}", sp.unwrap_or("sp1")),
            12..=14 => format!("UPDATE accts SET bal = bal + {k} WHERE id = {id}"),
            15 => format!("SET LOCAL work_mem = '{}MB'", 10 + rng.below(9)),
            _ => format!("UPDATE accts SET bal = bal - {k} WHERE id = {id} AND bal >= {k}"),
        });
    }
    if txn {
        out.push(
            rng.pick(&["COMMIT", "COMMIT", "ROLLBACK", "END"])
                .to_string(),
        );
    }
    out.push("SELECT id, bal FROM accts ORDER BY id".into());
    out.push("SHOW work_mem".into());
    out.push("SHOW TimeZone".into());
    out
}

/// 500 seeded random transaction scripts through the proxy and on the reference: every
/// reply and the final rows identical; every row on the shard its key maps to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_transaction_scripts_match_one_postgres() {
    let seed: u64 = std::env::var("SHARDWIRE_TXN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0015);
    let scripts: usize = std::env::var("SHARDWIRE_TXN_SCRIPTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let by_shard = ids_by_shard(&env, 4);
    let ids: Vec<i64> = by_shard.iter().flatten().copied().collect();
    let setup = "CREATE TABLE accts (id bigint PRIMARY KEY, bal bigint NOT NULL)";
    let reference = env.reference_client().await;
    reference.batch_execute(setup).await.unwrap();
    let c = proxy.client().await;
    c.batch_execute(setup).await.unwrap();
    for &id in ids.iter().step_by(2) {
        for cl in [&reference, &c] {
            cl.execute("INSERT INTO accts (id, bal) VALUES ($1, 1000)", &[&id])
                .await
                .unwrap();
        }
    }
    let mut rng = Rng(seed);
    let dir = tempfile_dir();
    // Scripts run in chunks (one psql process each) so a difference is reported with the
    // script that caused it.
    let chunk = 50;
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut done = 0;
    while done < scripts {
        let n = chunk.min(scripts - done);
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!("\\echo script {}\n", done + i));
            for stmt in script(&mut rng, &ids) {
                text.push_str(&stmt);
                text.push_str(";\n");
            }
        }
        let file = dir.join(format!("scripts-{done}.sql"));
        std::fs::write(&file, &text).unwrap();
        let f = file.to_str().unwrap();
        // Each chunk runs twice: with psql (simple protocol), then with psycopg 3 (extended
        // protocol: Parse/Bind/Describe/Execute/Sync for every statement, savepoints too).
        for (how, proxied, direct) in [
            (
                "psql",
                psql_echo(&proxy.conninfo(), Some("app-secret"), f),
                psql_echo(&env.reference_url(), None, f),
            ),
            (
                "psycopg",
                psycopg_replay(&proxy.conninfo(), f),
                psycopg_replay(&env.reference_url(), f),
            ),
        ] {
            compare(how, seed, &file, &proxied, &direct);
            for tag in ["COMMIT", "ROLLBACK", "ERROR"] {
                *seen.entry((how, tag)).or_insert(0usize) += proxied
                    .lines()
                    .filter(|l| {
                        l.ends_with(tag)
                            || l.contains(&format!("{tag}:  "))
                            || l.contains(&format!("-> {tag}"))
                    })
                    .count();
            }
        }
        done += n;
    }
    // What the scripts exercised (printed with --no-capture).
    eprintln!("{scripts} scripts, seed {seed:#x}: replies seen {seen:?}");
    // Placement: every row on the shard its key maps to, and nothing else anywhere.
    let want: BTreeMap<i64, i64> = reference
        .query("SELECT id, bal FROM accts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut got = BTreeMap::new();
    for (s, owned) in by_shard.iter().enumerate() {
        for r in env
            .shard_client(s)
            .await
            .query("SELECT id, bal FROM accts", &[])
            .await
            .unwrap()
        {
            let id: i64 = r.get(0);
            assert!(owned.contains(&id), "row {id} on shard {s}");
            got.insert(id, r.get::<_, i64>(1));
        }
    }
    assert_eq!(got, want);
    let prepared = env
        .per_shard_i64("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
        .await;
    assert_eq!(prepared, vec![0, 0, 0]);
}

/// A fresh directory for script files (kept on failure for replay).
fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shardwire-txn-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs script file `file` with psql, echoing each statement before its reply, everything
/// (rows, tags, `ERROR:  <SQLSTATE>`) on one stream in order.
fn psql_echo(conninfo: &str, password: Option<&str>, file: &str) -> String {
    let bin = shardwire::localpg::pg_bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    // Line-buffered stdout (stdbuf), so rows and tags interleave with errors as printed.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("stdbuf -oL \"$0\" -X -A -t -e -v VERBOSITY=sqlstate -d \"$1\" -f \"$2\" 2>&1")
        .arg(bin)
        .arg(conninfo)
        .arg(file)
        .env_remove("PGOPTIONS")
        .env("PGCONNECT_TIMEOUT", "10");
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let out = cmd.output().expect("run psql");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with the first line where `proxied` and `direct` differ, and the script it is in.
fn compare(how: &str, seed: u64, file: &std::path::Path, proxied: &str, direct: &str) {
    if proxied == direct {
        return;
    }
    let (pl, dl): (Vec<&str>, Vec<&str>) = (proxied.lines().collect(), direct.lines().collect());
    let at = pl
        .iter()
        .zip(dl.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(pl.len().min(dl.len()));
    let script_no = pl[..at]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("script "))
        .unwrap_or("?");
    panic!(
        "{how}, seed {seed:#x}: script {script_no} differs at output line {at}:\n  proxy:     {:?}\n  reference: {:?}\n--- proxy, around it ---\n{}\n--- reference ---\n{}\n--- scripts in {} ---",
        pl.get(at),
        dl.get(at),
        pl[at.saturating_sub(25)..(at + 3).min(pl.len())].join("\n"),
        dl[at.saturating_sub(25)..(at + 3).min(dl.len())].join("\n"),
        file.display()
    );
}

/// Runs script file `file` with psycopg 3 (`tests/py/txn_replay.py`): one line per
/// statement with its tag and rows or its SQLSTATE.
fn psycopg_replay(conninfo: &str, file: &str) -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/txn_replay.py");
    let out = Command::new(python)
        .args([script, conninfo, file])
        .env_remove("PGOPTIONS")
        .output()
        .expect("run python3 with psycopg 3 (./scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "txn_replay.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Savepoints and settings one transaction keeps for shards that join later are bounded:
/// past the bound the statement fails (54000) and the transaction with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_per_transaction_are_bounded() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    let mut script = String::new();
    for i in 0..shardwire::session::MAX_TXN_STEPS {
        script.push_str(&format!("SAVEPOINT s{i};"));
    }
    c.batch_execute(&script).await.unwrap();
    let e = c.batch_execute("SAVEPOINT one_too_many").await.unwrap_err();
    assert_eq!(code(&e), "54000");
    assert_eq!(run(&c, "SELECT 1").await, Err("25P02".into()));
    assert_eq!(run(&c, "ROLLBACK").await, Ok(0));
    assert_eq!(run(&c, "SELECT 1").await, Ok(1));
}
