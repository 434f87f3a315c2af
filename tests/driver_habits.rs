//! Drivers' wire habits, sent byte for byte as each driver sends them (issue 16), on three
//! shards with `users` hashed on `id`:
//! - an error reported at a Flush, then Sync (psycopg pipeline mode) never hangs nor leaks
//!   the backend connection;
//! - JDBC (autocommit off) pipelines BEGIN with the first statement;
//! - asyncpg / postgres.js prepare with Parse, Describe, Flush before Bind, Execute, Sync;
//! - sqlx closes the portal before Sync, also for merged multi-shard queries;
//! - asyncpg's pool reset (`UNLISTEN *` among others), its quoted `client_encoding`, and the
//!   `options` startup parameter (`PGOPTIONS=-c statement_timeout=300`).

mod common;

use std::time::{Duration, Instant};

use common::wire::{first_error, first_values, tags, Wire};
use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";

/// One user id on each shard.
fn one_per_shard(env: &TestEnv) -> Vec<i64> {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    (0..env.shard_count())
        .map(|s| {
            (1i64..)
                .find(|&id| map.hash_shard(&KeyValue::Int(id)) == s)
                .unwrap()
        })
        .collect()
}

async fn setup(pool_size: usize) -> (TestEnv, Proxy, Vec<i64>) {
    let env = TestEnv::new(3).await;
    let yaml = env
        .shard_map_yaml(TABLES, "")
        .replace("pool: { size: 10,", &format!("pool: {{ size: {pool_size},"));
    let proxy = Proxy::start_yaml(&yaml).await;
    let ids = one_per_shard(&env);
    let c = proxy.client().await;
    common::create_users(&c, "", 0).await;
    for id in &ids {
        c.execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[id, &format!("user-{id}")],
        )
        .await
        .unwrap();
    }
    (env, proxy, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_at_flush_then_sync_answers_at_once_and_keeps_the_pool_clean() {
    // Pool size 1: a connection leaked by one failed exchange would stop every later one.
    let (env, proxy, ids) = setup(1).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let mut slowest = Duration::ZERO;
    for i in 0..1000 {
        // A statement the connection may or may not have yet: both paths.
        let sql = if i % 2 == 0 {
            "SELECT 1/0".to_string()
        } else {
            format!("SELECT 1/(id - id) FROM users WHERE id = {}", ids[i % 3])
        };
        let started = Instant::now();
        w.parse("", &sql).bind("", "", &[]).execute("", 0).flush();
        w.send().await;
        let mut got = Vec::new();
        while got.last().map(|m: &common::wire::Msg| m.0) != Some(b'E') {
            got.push(w.recv().await.expect("closed"));
        }
        assert_eq!(first_error(&got).as_deref(), Some("22012"), "round {i}");
        // Messages after the error are discarded until Sync, which gets one ReadyForQuery.
        w.bind("", "", &[]).execute("", 0).sync();
        w.send().await;
        let rest = w.until_ready().await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(tags(&rest), "Z", "round {i}: {:?}", tags(&rest));
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest error-at-Flush round took {slowest:?}"
    );
    // The pool's only connection per shard is clean: statements go on, here and elsewhere.
    w.query(&format!("SELECT name FROM users WHERE id = {}", ids[0]));
    w.send().await;
    assert_eq!(
        first_values(&w.until_ready().await),
        vec![format!("user-{}", ids[0])]
    );
    let other = proxy.client().await;
    for id in &ids {
        let n: String = other
            .query_one("SELECT name FROM users WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, format!("user-{id}"));
    }
    // Nothing was left idle in a transaction on any shard.
    let stuck = env
        .per_shard_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
        )
        .await;
    assert_eq!(stuck, vec![0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_begin_pipelined_with_the_first_statement_on_every_shard() {
    let (env, proxy, ids) = setup(5).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    for (s, id) in ids.iter().enumerate() {
        let id = id.to_string();
        // pgjdbc with autocommit off: BEGIN rides in the first statement's pipeline.
        w.parse("", "BEGIN")
            .bind("", "", &[])
            .execute("", 0)
            .parse("", "UPDATE users SET name = 'jdbc' WHERE id = $1")
            .bind("", "", &[&id])
            .describe(b'P', "")
            .execute("", 1)
            .sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "shard {s}: {}", tags(&got));
        assert_eq!(tags(&got), "12C12nCZ", "shard {s}");
        assert_eq!(got.last().unwrap().1[0], b'T', "in a transaction");
        // A second statement on another shard joins the same transaction.
        let next = ids[(s + 1) % 3].to_string();
        w.parse("", "UPDATE users SET name = 'jdbc2' WHERE id = $1")
            .bind("", "", &[&next])
            .execute("", 1)
            .sync();
        w.send().await;
        assert_eq!(first_error(&w.until_ready().await), None);
        w.parse("", "ROLLBACK")
            .bind("", "", &[])
            .execute("", 0)
            .sync();
        w.send().await;
        assert_eq!(tags(&w.until_ready().await), "12CZ");
    }
    // Rolled back everywhere; and a committed one lands on its shard.
    for (s, id) in ids.iter().enumerate() {
        let name: String = env
            .shard_client(s)
            .await
            .query_one("SELECT name FROM users WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, format!("user-{id}"));
    }
    let id = ids[2].to_string();
    w.parse("", "BEGIN")
        .bind("", "", &[])
        .execute("", 0)
        .parse("", "UPDATE users SET name = 'committed' WHERE id = $1")
        .bind("", "", &[&id])
        .execute("", 1)
        .parse("", "COMMIT")
        .bind("", "", &[])
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(got.last().unwrap().1[0], b'I');
    let name: String = env
        .shard_client(2)
        .await
        .query_one("SELECT name FROM users WHERE id = $1", &[&ids[2]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepare_with_flush_then_execute_on_every_shard() {
    let (_env, proxy, ids) = setup(5).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    for k in 0..ids.len() {
        // Outside and inside a transaction block (postgres.js re-describes in both).
        if k == 2 {
            w.query("BEGIN");
            w.send().await;
            w.until_ready().await;
        }
        let name = format!("__asyncpg_stmt_{k}__");
        w.parse(&name, "SELECT name FROM users WHERE id = $1")
            .describe(b'S', &name)
            .flush();
        w.send().await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(w.recv().await.expect("closed"));
        }
        assert_eq!(tags(&got), "1tT", "statement {k}");
        for id in &ids {
            let key = id.to_string();
            w.bind("", &name, &[&key]).execute("", 0).sync();
            w.send().await;
            let got = w.until_ready().await;
            assert_eq!(first_error(&got), None, "{name} for {id}: {}", tags(&got));
            assert_eq!(first_values(&got), vec![format!("user-{id}")]);
        }
    }
    w.query("COMMIT");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    // A failing prepare at a Flush: the error, then the client's messages are discarded
    // until its Sync.
    w.parse("bad", "SELECT nosuchcolumn FROM users")
        .describe(b'S', "bad")
        .flush();
    w.send().await;
    let (tag, _) = w.recv().await.expect("closed");
    assert_eq!(tag, b'E');
    w.sync();
    w.send().await;
    assert_eq!(tags(&w.until_ready().await), "Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_closes_the_portal_of_a_merged_query_before_sync() {
    let (_env, proxy, ids) = setup(5).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    for sql in [
        "SELECT count(*) FROM users",
        "SELECT id FROM users ORDER BY id",
        "SELECT sum(id) FROM users",
    ] {
        w.parse("sqlx_s_1", sql).describe(b'S', "sqlx_s_1").sync();
        w.send().await;
        assert_eq!(first_error(&w.until_ready().await), None, "{sql}");
        w.bind("", "sqlx_s_1", &[])
            .execute("", 0)
            .close(b'P', "")
            .sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{sql}: {}", tags(&got));
        let vals = first_values(&got);
        match sql {
            s if s.contains("count") => assert_eq!(vals, vec!["3"]),
            s if s.contains("sum") => {
                assert_eq!(vals, vec![ids.iter().sum::<i64>().to_string()])
            }
            _ => {
                let mut sorted = ids.clone();
                sorted.sort();
                assert_eq!(
                    vals,
                    sorted.iter().map(|i| i.to_string()).collect::<Vec<_>>()
                );
            }
        }
        assert!(tags(&got).ends_with("C3Z"), "{sql}: {}", tags(&got));
        w.close(b'S', "sqlx_s_1").sync();
        w.send().await;
        w.until_ready().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_reset_options_and_client_encoding() {
    let (_env, proxy, _ids) = setup(5).await;
    let mut w = Wire::login(
        proxy.port(),
        &[
            ("client_encoding", "'utf-8'"),
            (
                "options",
                "-c statement_timeout=300 --application-name=opts",
            ),
        ],
    )
    .await;
    let enc = w
        .params
        .iter()
        .find(|(k, _)| k == "client_encoding")
        .map(|(_, v)| v.clone());
    assert_eq!(enc.as_deref(), Some("UTF8"));
    for _ in 0..1000 {
        // What asyncpg's Pool.release() sends.
        w.query("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;");
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{}", tags(&got));
    }
    // RESET ALL returns to the startup values, options included (on the same connection,
    // after the reset string ran on a backend, and inside a transaction).
    w.query("SHOW statement_timeout");
    w.send().await;
    assert_eq!(first_values(&w.until_ready().await), vec!["300ms"]);
    w.query("BEGIN; SET statement_timeout = 1000");
    w.send().await;
    w.until_ready().await;
    w.query("RESET ALL");
    w.send().await;
    w.until_ready().await;
    w.query("SHOW statement_timeout");
    w.send().await;
    assert_eq!(first_values(&w.until_ready().await), vec!["300ms"]);
    w.query("COMMIT");
    w.send().await;
    w.until_ready().await;
    let mut w = Wire::login(
        proxy.port(),
        &[(
            "options",
            "-c statement_timeout=300 --application-name=opts",
        )],
    )
    .await;
    w.query("SET statement_timeout = 5000; RESET statement_timeout");
    w.send().await;
    w.until_ready().await;
    w.query("SHOW statement_timeout");
    w.send().await;
    assert_eq!(first_values(&w.until_ready().await), vec!["300ms"]);
    w.query("SELECT pg_sleep(2)");
    w.send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("57014")
    );
    w.query("SHOW application_name");
    w.send().await;
    assert_eq!(first_values(&w.until_ready().await), vec!["opts"]);
    // A server switch the proxy cannot honour is refused at login, not dropped.
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "app"), ("database", "app"), ("options", "-B 100")],
        &mut out,
    )
    .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = sock;
    sock.write_all(&out).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf.first(), Some(&b'E'), "{:?}", &buf[..n]);
    assert!(String::from_utf8_lossy(&buf[..n]).contains("-B"));
}

fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// asyncpg itself: prepare for keys on every shard (first executions), transactions with a
/// nested savepoint, and its pool's reset on 1,000 releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_driver_through_the_proxy() {
    let (_env, proxy, ids) = setup(5).await;
    let mut cmd = common::python("asyncpg_habits.py");
    cmd.arg(format!(
        "postgresql://app:app-secret@127.0.0.1:{}/app",
        proxy.port()
    ))
    .arg(id_list(&ids));
    common::run_program(cmd, "asyncpg checks passed").await;
}

/// pgjdbc (Debian's libpostgresql-jdbc-java): autocommit off, so BEGIN rides with the first
/// statement; first keys on each shard; 8 threads committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_driver_through_the_proxy() {
    let (_env, proxy, ids) = setup(10).await;
    let mut cmd = common::java("JdbcHabits.java");
    cmd.arg(format!(
        "jdbc:postgresql://127.0.0.1:{}/app?sslmode=disable",
        proxy.port()
    ))
    .arg(id_list(&ids));
    common::run_program(cmd, "jdbc checks passed").await;
}

/// Execute with a row limit on a query that runs on several shards without a merge
/// (tokio-postgres `query_portal`, asyncpg cursors, JDBC `setFetchSize`): the proxy pages
/// the concatenated rows and answers PortalSuspended — never an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limited_execute_on_several_shards() {
    let (_env, proxy, ids) = setup(5).await;
    let mut c = proxy.client().await;
    for n in 4..40i64 {
        c.execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&(1000 + n), &format!("user-{}", 1000 + n)],
        )
        .await
        .unwrap();
    }
    let mut want: Vec<i64> = ids.clone();
    want.extend((4..40).map(|n| 1000 + n));
    want.sort();
    let any: Vec<i64> = vec![ids[0], ids[1], ids[2], 1004, 1005];
    for (sql, expect) in [
        ("SELECT id FROM users", want.clone()),
        ("SELECT id FROM users WHERE id = ANY($1)", {
            let mut a = any.clone();
            a.sort();
            a
        }),
    ] {
        let t = c.transaction().await.unwrap();
        let st = t.prepare(sql).await.unwrap();
        let portal = if sql.contains("ANY") {
            t.bind(&st, &[&any]).await.unwrap()
        } else {
            t.bind(&st, &[]).await.unwrap()
        };
        let mut got: Vec<i64> = Vec::new();
        let mut pages = 0;
        loop {
            let rows = t
                .query_portal(&portal, 7)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            pages += 1;
            if rows.is_empty() {
                break;
            }
            assert!(rows.len() <= 7);
            got.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        }
        t.commit().await.unwrap();
        got.sort();
        assert_eq!(got, expect, "{sql}");
        assert!(pages > expect.len() / 7, "{sql}: fetched in {pages} pages");
    }
    // The raw exchange, as asyncpg's cursor sends it: Bind, Execute(2), Sync, Execute(2)…
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.parse("", "SELECT id FROM users WHERE id < 1000")
        .bind("cur", "", &[])
        .execute("cur", 2)
        .sync();
    w.send().await;
    let first = w.until_ready().await;
    assert_eq!(tags(&first), "12DDsZ", "{}", tags(&first));
    w.execute("cur", 2).sync();
    w.send().await;
    let second = w.until_ready().await;
    assert_eq!(first_error(&second), None, "{}", tags(&second));
    let mut all = first_values(&first);
    all.extend(first_values(&second));
    all.sort();
    let mut three: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    three.sort();
    assert_eq!(all, three);
    assert!(tags(&second).ends_with("CZ"), "{}", tags(&second));
}

/// Prepared statements shared by content on pooled backends never outlive the DDL they
/// depend on: DDL through the proxy clears them; DDL made elsewhere is noticed from the
/// first error it causes (`cached plan must not change result type`,
/// `cache lookup failed for type`), after which the statement is prepared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_ddl() {
    // Pool size 1: every client meets the statements the previous one left on the backend.
    let (env, proxy, _ids) = setup(1).await;
    let a = proxy.client().await;
    a.batch_execute("CREATE TABLE t_ddl (a int)").await.unwrap();
    a.batch_execute("INSERT INTO t_ddl VALUES (1)")
        .await
        .unwrap();
    let rows = a.query("SELECT * FROM t_ddl", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 1);
    drop(a);
    let b = proxy.client().await;
    b.batch_execute("ALTER TABLE t_ddl ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let rows = b.query("SELECT * FROM t_ddl", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2, "a new prepare sees the new column");
    assert_eq!(rows[0].get::<_, i32>(1), 7);
    // A type dropped and made again (SQLAlchemy's and asyncpg's suites do this constantly).
    b.batch_execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        .await
        .unwrap();
    let v: String = b
        .query_one("SELECT $1::text::mood::text", &[&"ok"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "ok");
    b.batch_execute("DROP TYPE mood").await.unwrap();
    b.batch_execute("CREATE TYPE mood AS ENUM ('ok', 'sad', 'glad')")
        .await
        .unwrap();
    let c = proxy.client().await;
    let v: String = c
        .query_one("SELECT $1::text::mood::text", &[&"glad"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "glad");
    // DDL made directly on the shards, behind the proxy's back. An exchange that describes
    // what it runs (Parse, Bind, Describe, Execute, Sync: pgbench, JDBC, psycopg,
    // node-postgres) meets the stale statement, and outside a transaction block it is
    // prepared again and run once more: the client sees no error, and decodes the rows by
    // the description it gets in that same reply.
    let mut w = Wire::login(proxy.port(), &[]).await;
    let run = |w: &mut Wire| {
        w.parse("", "SELECT * FROM t_ddl")
            .bind("", "", &[])
            .describe(b'P', "")
            .execute("", 0)
            .sync();
    };
    run(&mut w);
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    for s in 0..env.shard_count() {
        env.shard_client(s)
            .await
            .batch_execute("ALTER TABLE t_ddl ADD COLUMN c int DEFAULT 9")
            .await
            .unwrap();
    }
    run(&mut w);
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    let desc = got.iter().find(|m| m.0 == b'T').unwrap();
    assert_eq!(
        i16::from_be_bytes([desc.1[0], desc.1[1]]),
        3,
        "the new shape"
    );
    // A statement the client described before the change (asyncpg, tokio-postgres) is not
    // run again silently: its rows would not match the description the client decodes by.
    // It gets the error, as from Postgres, and works once prepared again.
    let d = proxy.client().await;
    let mine = d.prepare("SELECT * FROM t_ddl").await.unwrap();
    assert_eq!(mine.columns().len(), 3);
    for s in 0..env.shard_count() {
        env.shard_client(s)
            .await
            .batch_execute("ALTER TABLE t_ddl ALTER COLUMN c TYPE real")
            .await
            .unwrap();
    }
    let err = d.query(&mine, &[]).await.unwrap_err();
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(code == "0A000" || code == "XX000", "{err:?}");
    let again = d.prepare("SELECT * FROM t_ddl").await.unwrap();
    let rows = d.query(&again, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, f32>(2), 9.0);
    for s in 0..env.shard_count() {
        env.shard_client(s)
            .await
            .batch_execute("ALTER TABLE t_ddl ADD COLUMN e int DEFAULT 11")
            .await
            .unwrap();
    }
    // Inside a transaction block that already did work, the error reaches the client, as
    // Postgres would send it (a retry could not undo what the block did).
    let e = proxy.client().await;
    let warm = e.query("SELECT * FROM t_ddl", &[]).await.unwrap();
    assert_eq!(warm[0].len(), 4);
    for s in 0..env.shard_count() {
        env.shard_client(s)
            .await
            .batch_execute("ALTER TABLE t_ddl ADD COLUMN f int DEFAULT 12")
            .await
            .unwrap();
    }
    e.batch_execute("BEGIN; INSERT INTO t_ddl (a) VALUES (2)")
        .await
        .unwrap();
    let err = e.query("SELECT * FROM t_ddl", &[]).await.unwrap_err();
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(code == "0A000" || code == "XX000", "{err:?}");
    e.batch_execute("ROLLBACK").await.unwrap();
    let rows = e.query("SELECT * FROM t_ddl", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 5);
}

/// A statement the client described (asyncpg, tokio-postgres, sqlx: Parse, Describe, then
/// only Bind/Execute) is decoded by that description for good. After DDL through the proxy
/// (which drops the proxy's statements on every pooled backend) it is prepared again; if its
/// result changed it is refused with Postgres's own error rather than run with rows the
/// client would decode wrongly; if not, it runs without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_described_statement_never_changes_shape_silently() {
    let (_env, proxy, _ids) = setup(1).await;
    let admin = proxy.client().await;
    admin
        .batch_execute("CREATE TABLE t_shape (a int, b text)")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO t_shape VALUES (1, 'x')")
        .await
        .unwrap();
    let d = proxy.client().await;
    let star = d.prepare("SELECT * FROM t_shape").await.unwrap();
    let narrow = d.prepare("SELECT a FROM t_shape").await.unwrap();
    assert_eq!(d.query(&star, &[]).await.unwrap()[0].len(), 2);
    // DDL that leaves both results alone: both run on, re-prepared quietly.
    admin
        .batch_execute("CREATE INDEX t_shape_a ON t_shape (a)")
        .await
        .unwrap();
    assert_eq!(d.query(&star, &[]).await.unwrap()[0].len(), 2);
    // A column that changes type under `SELECT *` but not under `SELECT a`.
    admin
        .batch_execute("ALTER TABLE t_shape ALTER COLUMN b TYPE int USING 7")
        .await
        .unwrap();
    let err = d.query(&star, &[]).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{err:?}");
    assert_eq!(db.message(), "cached plan must not change result type");
    // Postgres keeps refusing that statement; the other one runs; a new prepare sees the
    // new shape.
    assert!(d.query(&star, &[]).await.is_err());
    assert_eq!(d.query(&narrow, &[]).await.unwrap()[0].get::<_, i32>(0), 1);
    let again = d.prepare("SELECT * FROM t_shape").await.unwrap();
    assert_eq!(d.query(&again, &[]).await.unwrap()[0].get::<_, i32>(1), 7);
    // Inside a transaction block the error aborts the block, as in Postgres: the client's
    // ReadyForQuery says so, and only ROLLBACK gets through.
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.parse("held", "SELECT * FROM t_shape")
        .describe(b'S', "held")
        .sync();
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    admin
        .batch_execute("ALTER TABLE t_shape ADD COLUMN c int")
        .await
        .unwrap();
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.bind("", "held", &[]).execute("", 0).sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(
        first_error(&got).as_deref(),
        Some("0A000"),
        "{}",
        tags(&got)
    );
    assert_eq!(got.last().map(|m| m.1.to_vec()), Some(vec![b'E']));
    w.query("SELECT 1");
    w.send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("25P02")
    );
    w.query("ROLLBACK");
    w.send().await;
    let end = w.until_ready().await;
    assert_eq!(end.last().map(|m| m.1.to_vec()), Some(vec![b'I']));
}

/// `DEALLOCATE` / `DISCARD ALL` among other statements — a multi-statement Query, or a
/// pipeline (psycopg's pipeline mode sends `ROLLBACK` then `DEALLOCATE ALL`) — act on the
/// client's statements as the proxy keeps them and never reach a backend, whose prepared
/// statements are the proxy's: the next prepare and execution work (it got 26000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_among_other_statements() {
    let (_env, proxy, ids) = setup(1).await;
    let id = ids[0].to_string();
    let sel = "SELECT name FROM users WHERE id = $1";
    let mut w = Wire::login(proxy.port(), &[]).await;
    let run_named = |w: &mut Wire, name: &str| {
        w.parse(name, sel)
            .bind("", name, &[id.as_str()])
            .execute("", 0)
            .sync();
    };
    for (round, batch) in [
        "SELECT 1; DEALLOCATE ALL",
        "DEALLOCATE s1; SELECT 1",
        "SET application_name = 'x'; DISCARD ALL",
    ]
    .iter()
    .enumerate()
    {
        run_named(&mut w, "s1");
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{batch}: prepare");
        w.query(batch);
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{batch}");
        // s1 is gone for the client, as in Postgres; preparing again works.
        w.bind("", "s1", &[id.as_str()]).execute("", 0).sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got).as_deref(), Some("26000"), "{batch}");
        run_named(&mut w, &format!("again{round}"));
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{batch}: prepared again");
        assert_eq!(first_values(&got), vec![format!("user-{id}")]);
        w.query(&format!("DEALLOCATE again{round}"));
        w.send().await;
        w.until_ready().await;
    }
    // A pipeline: BEGIN, a prepared read, ROLLBACK, DEALLOCATE ALL, one Sync.
    run_named(&mut w, "p1");
    w.send().await;
    w.until_ready().await;
    w.parse("", "BEGIN").bind("", "", &[]).execute("", 0);
    w.bind("", "p1", &[id.as_str()]).execute("", 0);
    w.parse("", "ROLLBACK").bind("", "", &[]).execute("", 0);
    w.parse("", "DEALLOCATE ALL")
        .bind("", "", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(tags(&got), "12C2DC12C12nCZ");
    run_named(&mut w, "p1");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "prepared again after the pipeline");
    assert_eq!(first_values(&got), vec![format!("user-{id}")]);
}

/// A merged read fetched at a Flush (psycopg's pipeline mode: Parse, Bind, Describe,
/// Execute, Flush, and the Sync only when the pipeline block ends): its rows come at the
/// Flush, ReadyForQuery at the Sync; a plain read on several shards likewise; and the
/// pipeline goes on after them, in and out of a transaction block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_read_fetched_at_a_flush() {
    let (_env, proxy, ids) = setup(2).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    for block in [false, true] {
        if block {
            w.query("BEGIN");
            w.send().await;
            w.until_ready().await;
        }
        w.parse("", "SELECT count(*) FROM users WHERE id > $1")
            .bind("", "", &["0"])
            .describe(b'P', "")
            .execute("", 0)
            .flush();
        w.send().await;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(w.recv_within(Duration::from_secs(5)).await.unwrap());
        }
        assert_eq!(tags(&got), "12TDC", "block {block}");
        assert_eq!(first_values(&got), vec![ids.len().to_string()]);
        // A plain read on every shard (no merge plan), fetched at a Flush too.
        w.parse("", "SELECT name FROM users")
            .bind("", "", &[])
            .describe(b'P', "")
            .execute("", 0)
            .flush();
        w.send().await;
        let mut got = Vec::new();
        for _ in 0..(4 + ids.len()) {
            got.push(w.recv_within(Duration::from_secs(5)).await.unwrap());
        }
        assert_eq!(tags(&got), format!("12T{}C", "D".repeat(ids.len())));
        // The pipeline goes on: a write on one shard, then the Sync.
        w.parse("", "UPDATE users SET name = name WHERE id = $1")
            .bind("", "", &[ids[0].to_string().as_str()])
            .execute("", 0)
            .sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(tags(&got), "12CZ", "block {block}");
        assert_eq!(got.last().unwrap().1[..], [if block { b'T' } else { b'I' }]);
        if block {
            w.query("COMMIT");
            w.send().await;
            assert_eq!(first_error(&w.until_ready().await), None);
        }
    }
}

/// `SET` of a reported parameter (DateStyle, TimeZone, …) inside a transaction block sends
/// its ParameterStatus, as Postgres does — psycopg parses dates by it — and a ROLLBACK that
/// undoes it reports the old value again (found by psycopg's own suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_inside_a_block_report_parameter_status() {
    let (_env, proxy, _ids) = setup(2).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let status = |got: &[common::wire::Msg]| -> Vec<String> {
        got.iter()
            .filter(|m| m.0 == b'S')
            .map(|m| String::from_utf8_lossy(&m.1).replace('\0', "="))
            .collect()
    };
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.query("SET datestyle = German, DMY");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None);
    assert_eq!(status(&got), vec!["DateStyle=German, DMY=".to_string()]);
    w.query("ROLLBACK");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(status(&got), vec!["DateStyle=ISO, MDY=".to_string()]);
}

/// A protocol Close of a portal made by SQL `DECLARE` closes the cursor on its shard
/// (psycopg's `close_portal`); it was answered CloseComplete and left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_declared_cursor_closes_it() {
    let (_env, proxy, ids) = setup(2).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.query(&format!(
        "BEGIN; DECLARE cur CURSOR FOR SELECT id FROM users WHERE id = {}",
        ids[0]
    ));
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.close(b'P', "cur").sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "3Z");
    w.query("FETCH 1 FROM cur");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(
        first_error(&got).as_deref(),
        Some("34000"),
        "{}",
        tags(&got)
    );
    w.query("ROLLBACK");
    w.send().await;
    w.until_ready().await;
}

/// A table made inside a transaction block that rolls back takes the backends' statements
/// prepared against it along (SQLAlchemy's suite recreates tables with other column types
/// this way, 150 tests): the next block's same statement text is prepared again, never run
/// on the stale plan (`invalid input syntax for type cidr`, `cache lookup failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_rolled_back_leaves_no_stale_statements() {
    let (_env, proxy, _ids) = setup(1).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    for (coltype, value) in [("cidr", "10.0.0.0/8"), ("macaddr", "08:00:2b:01:02:03")] {
        w.query("BEGIN");
        w.send().await;
        w.until_ready().await;
        w.query(&format!(
            "CREATE TABLE addresses (name varchar, value {coltype})"
        ));
        w.send().await;
        assert_eq!(first_error(&w.until_ready().await), None);
        w.parse("", "INSERT INTO addresses (name, value) VALUES ($1, $2)")
            .bind("", "", &["test", value])
            .execute("", 0)
            .sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{coltype}: {}", tags(&got));
        w.query("ROLLBACK");
        w.send().await;
        w.until_ready().await;
    }
}

/// A merged `ORDER BY … LIMIT $1::integer` prepared without parameter types, the parameter
/// then bound in binary as the int4 the client was told (SQLAlchemy renders `.limit(n)` so,
/// asyncpg binds it so): the shards must infer the same type. And `OFFSET $1` with no LIMIT
/// keeps its parameter on the shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_limit_and_offset_parameters_keep_their_types() {
    let (_env, proxy, ids) = setup(2).await;
    let mut sorted = ids.clone();
    sorted.sort();
    let mut w = Wire::login(proxy.port(), &[]).await;
    let three = 3i32.to_be_bytes();
    let one = 1i32.to_be_bytes();
    for (sql, params, want) in [
        (
            "SELECT id FROM users ORDER BY id DESC LIMIT $1::integer",
            vec![&three[..]],
            sorted.iter().rev().copied().collect::<Vec<_>>(),
        ),
        (
            "SELECT id FROM users ORDER BY id LIMIT $1::integer OFFSET $2::integer",
            vec![&one[..], &one[..]],
            sorted[1..2].to_vec(),
        ),
        (
            "SELECT id FROM users ORDER BY id OFFSET $1::int",
            vec![&one[..]],
            sorted[1..].to_vec(),
        ),
    ] {
        w.parse("", sql)
            .describe(b'S', "")
            .bind_binary("", "", &params)
            .execute("", 0)
            .sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(first_error(&got), None, "{sql}: {}", tags(&got));
        let rows: Vec<i64> = got
            .iter()
            .filter(|m| m.0 == b'D')
            .map(|m| {
                let v = &m.1[6..];
                std::str::from_utf8(v).unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(rows, want, "{sql}");
    }
    // Untyped OFFSET in text, as asyncpg and libpq's PQprepare send it.
    w.parse("", "SELECT id FROM users ORDER BY id DESC OFFSET $1")
        .bind("", "", &["2"])
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(tags(&got), "12DC".to_string() + "Z");
}

/// `pg_backend_pid()` is the pid of the client's BackendKeyData for the whole session, in
/// both protocols; `pg_cancel_backend(pid)` with it, from another connection (Knex's way to
/// cancel a timed-out query), cancels that client's statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_pid_and_cancel_by_pid() {
    let (_env, proxy, _ids) = setup(5).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let pid = w.pid.to_string();
    for _ in 0..3 {
        w.query("SELECT pg_backend_pid()");
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(tags(&got), "TDCZ");
        assert_eq!(first_values(&got), vec![pid.clone()]);
        w.parse("", "SELECT pg_backend_pid() AS me")
            .bind("", "", &[])
            .describe(b'P', "")
            .execute("", 0)
            .sync();
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(tags(&got), "12TDCZ");
        assert_eq!(first_values(&got), vec![pid.clone()]);
    }
    // Cancel by pid from another connection.
    let conninfo = proxy.conninfo();
    let sleeper = tokio::spawn(async move {
        let mut w = w;
        w.query("SELECT pg_sleep(20)");
        w.send().await;
        let started = Instant::now();
        let got = w.until_ready().await;
        (first_error(&got), started.elapsed())
    });
    let other = common::connect(&conninfo).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = other
        .simple_query(&format!("SELECT pg_cancel_backend({pid})"))
        .await
        .unwrap();
    let answered = common::rows_as_maps(rows);
    assert_eq!(answered[0]["pg_cancel_backend"], "t");
    let (err, took) = sleeper.await.unwrap();
    assert_eq!(err.as_deref(), Some("57014"));
    assert!(took < Duration::from_secs(10), "cancelled after {took:?}");
    // A pid that is no session of this proxy: false, as Postgres answers.
    let v: bool = other
        .query_one("SELECT pg_cancel_backend(12345)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!v);
    let mine: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(mine.to_string(), pid);
}

/// A cancel is a signal the shard may deliver late; a backend that got one is closed, not
/// pooled, and the proxy answers the client's CancelRequest only once the shard has taken
/// it. Else the late signal cancels the next statement on that backend — the same client's
/// (pgx, lib/pq: 6 of 40 times) or another client's (6 of 15,749 statements of uncancelled
/// clients in the matrix's probe). Postgres itself: 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backend_never_cancels_the_next_statement() {
    let (_env, proxy, _ids) = setup(1).await;
    let c = proxy.client().await;
    let pid_of = |rows: Vec<tokio_postgres::Row>| -> i32 { rows[0].get(1) };
    let first = pid_of(c.query("SELECT 1, pg_backend_pid()", &[]).await.unwrap());
    let mut seen = vec![first];
    for i in 0..20 {
        let token = c.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        });
        let e = c.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
        canceller.await.unwrap().unwrap();
        // The very next statement: never hit by the cancel just sent.
        c.query("SELECT pg_sleep(0.02)", &[])
            .await
            .unwrap_or_else(|e| panic!("round {i}: the next statement was cancelled: {e}"));
        let pid = pid_of(c.query("SELECT 1, pg_backend_pid()", &[]).await.unwrap());
        assert!(
            !seen.contains(&pid),
            "round {i}: a cancelled backend was pooled again"
        );
        seen.push(pid);
    }
}

/// Messages until the proxy closes the connection (EOF).
async fn until_closed(w: &mut Wire) -> Vec<common::wire::Msg> {
    let mut got = Vec::new();
    while let Some(m) = w.recv().await {
        got.push(m);
    }
    got
}

/// `pg_cancel_backend($1)` and `pg_terminate_backend($1)` with the pid bound as a parameter
/// (node-postgres and Knex bind it), cast to int or not: the proxy answers them for its own pids.
/// Terminate ends the named session with FATAL 57P01, whether it was running a statement or
/// idle (it learns at its next message), and its shard connections are not pooled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_terminate_with_a_bound_pid() {
    let (_env, proxy, _ids) = setup(2).await;
    let other = proxy.client().await;
    // Cancel, the pid bound as int4.
    for sql in [
        "SELECT pg_cancel_backend($1)",
        "SELECT pg_catalog.pg_cancel_backend($1::int) AS c",
    ] {
        let mut w = Wire::login(proxy.port(), &[]).await;
        let pid = w.pid;
        let sleeper = tokio::spawn(async move {
            w.query("SELECT pg_sleep(20)");
            w.send().await;
            let t0 = Instant::now();
            let got = w.until_ready().await;
            (first_error(&got), t0.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = other.prepare(sql).await.unwrap();
        let done: bool = other.query_one(&st, &[&pid]).await.unwrap().get(0);
        assert!(done, "{sql}");
        let (err, took) = sleeper.await.unwrap();
        assert_eq!(err.as_deref(), Some("57014"), "{sql}");
        assert!(took < Duration::from_secs(5), "{sql}: {took:?}");
    }
    // Strict: a NULL pid gives NULL; an unknown pid false.
    let v: Option<bool> = other
        .query_one("SELECT pg_cancel_backend($1)", &[&None::<i32>])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, None);
    let v: bool = other
        .query_one("SELECT pg_terminate_backend($1)", &[&7i32])
        .await
        .unwrap()
        .get(0);
    assert!(!v);
    // Terminate a session that is running a statement inside a transaction.
    let mut w = Wire::login(proxy.port(), &[]).await;
    let pid = w.pid;
    w.query("BEGIN; UPDATE users SET name = 'gone' WHERE id > 0");
    w.send().await;
    w.until_ready().await;
    let sleeper = tokio::spawn(async move {
        w.query("SELECT pg_sleep(20)");
        w.send().await;
        let t0 = Instant::now();
        let got = until_closed(&mut w).await;
        // Only the FATAL, as from Postgres (after the RowDescription, when it was sent): not
        // the statement's own cancel error first.
        let errors: Vec<String> = got
            .iter()
            .filter(|m| m.0 == b'E')
            .map(|m| common::wire::error_code(&m.1))
            .collect();
        assert_eq!(errors.len(), 1, "{}", tags(&got));
        assert!(tags(&got).ends_with('E'), "{}", tags(&got));
        (first_error(&got), t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done: bool = other
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(done);
    let (err, took) = sleeper.await.unwrap();
    assert_eq!(err.as_deref(), Some("57P01"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Its transaction rolled back; the pool (2 a shard) still serves.
    for _ in 0..4 {
        let n: i64 = other
            .query_one("SELECT count(*) FROM users WHERE name = 'gone'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
    // An idle session learns at its next message.
    let mut w = Wire::login(proxy.port(), &[]).await;
    let done: bool = other
        .query_one("SELECT pg_terminate_backend($1)", &[&w.pid])
        .await
        .unwrap()
        .get(0);
    assert!(done);
    w.query("SELECT 1");
    w.send().await;
    let got = until_closed(&mut w).await;
    assert_eq!(first_error(&got).as_deref(), Some("57P01"));
    assert_eq!(tags(&got), "E");
}

/// A Query message with raw statement bytes (text in a client encoding other than UTF-8).
fn query_bytes(w: &mut Wire, sql: &[u8]) {
    w.out.extend_from_slice(b"Q");
    w.out
        .extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    w.out.extend_from_slice(sql);
    w.out.extend_from_slice(b"\0");
}

/// The raw bytes of the first column of each DataRow.
fn raw_values(msgs: &[common::wire::Msg]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter(|m| m.0 == b'D')
        .map(|m| {
            let len = i32::from_be_bytes([m.1[2], m.1[3], m.1[4], m.1[5]]);
            m.1[6..6 + len.max(0) as usize].to_vec()
        })
        .collect()
}

/// Client encodings other than UTF-8, as Postgres serves them: LATIN1 and EUC_JP clients
/// (startup parameter, `options`, `SET NAMES`) send and receive text in their encoding —
/// rows, errors, statement text — while the shards store UTF-8 and every client reads the
/// same characters. A text shard key is placed by its characters, whatever encoding sent it
/// (a literal, a bound parameter). Encodings without a converter are refused clearly;
/// bytes invalid in the client's encoding get 22021 and the session goes on; a pooled
/// connection goes back to UTF-8 for the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_encodings() {
    let env = TestEnv::new(3).await;
    let tables = "users: { key: id, type: bigint, strategy: hash }\n\
                  tags: { key: tag, type: text, strategy: hash }\n";
    let yaml = env
        .shard_map_yaml(tables, "")
        .replace("pool: { size: 10,", "pool: { size: 1,");
    let proxy = Proxy::start_yaml(&yaml).await;
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let utf8 = proxy.client().await;
    common::create_users(&utf8, "", 0).await;
    utf8.batch_execute("CREATE TABLE tags (tag text PRIMARY KEY, v text)")
        .await
        .unwrap();
    // LATIN1 at login: ParameterStatus says so; text goes both ways in LATIN1.
    let mut w = Wire::login(proxy.port(), &[("client_encoding", "latin1")]).await;
    assert!(w
        .params
        .contains(&("client_encoding".into(), "LATIN1".into())));
    query_bytes(
        &mut w,
        b"INSERT INTO users (id, name) VALUES (1, 'M\xfcller')",
    );
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    query_bytes(
        &mut w,
        b"INSERT INTO tags (tag, v) VALUES ('caf\xe9', 'literal')",
    );
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    // A bound text key, in a named statement whose text is not ASCII.
    w.out.extend_from_slice(
        b"P\0\0\0\x00ins1\0INSERT INTO tags (tag, v) VALUES ($1, 'bo\xeete')\0\0\0",
    );
    let plen = (w.out.len() - 1) as u32;
    w.out[1..5].copy_from_slice(&plen.to_be_bytes());
    let mut bind = b"B\0\0\0\x00\0ins1\0\0\0\0\x01\0\0\0\x05na\xefve\0\0".to_vec();
    let blen = (bind.len() - 1) as u32;
    bind[1..5].copy_from_slice(&blen.to_be_bytes());
    w.out.extend_from_slice(&bind);
    w.execute("", 0).sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    query_bytes(&mut w, b"SELECT name FROM users WHERE id = 1");
    w.send().await;
    assert_eq!(
        raw_values(&w.until_ready().await),
        vec![b"M\xfcller".to_vec()]
    );
    // The shard's error text arrives in LATIN1 too.
    query_bytes(&mut w, b"SELECT * FROM \"tabelle_\xfc\"");
    w.send().await;
    let got = w.until_ready().await;
    let err = got.iter().find(|m| m.0 == b'E').expect("an error");
    assert!(
        err.1.windows(9).any(|b| b == b"tabelle_\xfc"),
        "{:?}",
        err.1
    );
    // A UTF-8 client on the same pooled connection (pool size 1) reads UTF-8, and finds
    // each text key where its characters hash.
    let name: String = utf8
        .query_one("SELECT name FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Müller");
    for (tag, v) in [("café", "literal"), ("naïve", "boîte")] {
        let got: String = utf8
            .query_one("SELECT v FROM tags WHERE tag = $1", &[&tag])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, v);
        let shard = map.hash_shard(&KeyValue::Text(tag.to_string()));
        let n: i64 = env
            .shard_client(shard)
            .await
            .query_one("SELECT count(*) FROM tags WHERE tag = $1", &[&tag])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{tag} on shard {shard}");
    }
    // EUC_JP through `options`, then SET NAMES back and forth within the session.
    let mut j = Wire::login(proxy.port(), &[("options", "-c client_encoding=euc_jp")]).await;
    assert!(j
        .params
        .contains(&("client_encoding".into(), "EUC_JP".into())));
    // 日本 in EUC-JP.
    query_bytes(
        &mut j,
        b"INSERT INTO tags (tag, v) VALUES ('\xc6\xfc\xcb\xdc', 'jp')",
    );
    j.send().await;
    assert_eq!(first_error(&j.until_ready().await), None);
    query_bytes(&mut j, b"SELECT tag FROM tags WHERE v = 'jp'");
    j.send().await;
    assert_eq!(
        raw_values(&j.until_ready().await),
        vec![b"\xc6\xfc\xcb\xdc".to_vec()]
    );
    let got: String = utf8
        .query_one("SELECT tag FROM tags WHERE v = 'jp'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "日本");
    j.query("SET NAMES 'latin1'");
    j.send().await;
    assert_eq!(first_error(&j.until_ready().await), None);
    query_bytes(&mut j, b"SELECT v FROM tags WHERE tag = 'caf\xe9'");
    j.send().await;
    assert_eq!(
        raw_values(&j.until_ready().await),
        vec![b"literal".to_vec()]
    );
    // Bytes invalid in the client's encoding: 22021, and the session goes on.
    j.query("SET client_encoding TO 'EUC_JP'");
    j.send().await;
    assert_eq!(first_error(&j.until_ready().await), None);
    query_bytes(&mut j, b"SELECT '\xff\xfe'");
    j.send().await;
    assert_eq!(
        first_error(&j.until_ready().await).as_deref(),
        Some("22021")
    );
    j.query("SELECT 1");
    j.send().await;
    assert_eq!(first_values(&j.until_ready().await), vec!["1".to_string()]);
    // A sharded COPY in an encoding whose characters can hold delimiter bytes is refused.
    j.query("SET client_encoding TO 'SJIS'");
    j.send().await;
    assert_eq!(first_error(&j.until_ready().await), None);
    j.query("COPY tags FROM STDIN");
    j.send().await;
    assert_eq!(
        first_error(&j.until_ready().await).as_deref(),
        Some("0A000")
    );
    // RESET ALL goes back to the login's encoding (EUC_JP), for the proxy's conversion too.
    j.query("RESET ALL");
    j.send().await;
    assert_eq!(first_error(&j.until_ready().await), None);
    query_bytes(&mut j, b"SELECT '\xa4\xa2'");
    j.send().await;
    assert_eq!(
        raw_values(&j.until_ready().await),
        vec![b"\xa4\xa2".to_vec()]
    );
    // Encodings without a converter: refused at login (FATAL) and at SET (ERROR).
    for params in [
        vec![("user", "app"), ("client_encoding", "MULE_INTERNAL")],
        vec![("user", "app"), ("options", "-c client_encoding=euc_tw")],
    ] {
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut out)
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut sock, &out)
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut sock, &mut got),
        )
        .await
        .expect("the proxy closes the connection")
        .unwrap();
        assert_eq!(got.first(), Some(&b'E'), "{params:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("0A000") && text.contains("FATAL"), "{text}");
        assert!(text.contains("not supported by shardwire"), "{text}");
    }
    let mut w = Wire::login(proxy.port(), &[("client_encoding", "sql_ascii")]).await;
    assert!(w
        .params
        .contains(&("client_encoding".into(), "SQL_ASCII".into())));
    w.query("SET NAMES 'mule_internal'");
    w.send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("0A000")
    );
    w.query("SET client_encoding = 'utf-8'; SHOW client_encoding");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_values(&got), vec!["UTF8".to_string()]);
    // Bytes that are not UTF-8 from a UTF-8 client, in a Query and in a Parse: 22021.
    w.out.extend_from_slice(b"Q\0\0\0\x12SELECT 'caf\xe9'\0");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got).as_deref(), Some("22021"));
    w.out
        .extend_from_slice(b"P\0\0\0\x15\0SELECT 'caf\xe9'\0\0\0");
    w.sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got).as_deref(), Some("22021"));
    assert_eq!(tags(&got), "EZ");
    w.query("SELECT 'café'");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_values(&got), vec!["café".to_string()]);
}

/// node-postgres and postgres.js (`tests/node`, installed by `scripts/test.sh`): postgres.js
/// prepares with Flush, in and out of transactions; node-postgres's named statements,
/// savepoints, and Knex's cancel by `processID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drivers_through_the_proxy() {
    let (_env, proxy, ids) = setup(5).await;
    let mut cmd = common::node("habits.mjs");
    cmd.arg(format!(
        "postgres://app:app-secret@127.0.0.1:{}/app",
        proxy.port()
    ))
    .arg(id_list(&ids));
    common::run_program(cmd, "node checks passed").await;
}

/// A Parse that fails (libpq's PQprepare: Parse, Sync) is reported at the Parse, as
/// Postgres does, and its name is free again; one that works is reported at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parse_is_reported_at_the_parse_and_frees_its_name() {
    let (_env, proxy, ids) = setup(5).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.parse("st", "SELECT nosuchcolumn FROM users WHERE id = $1")
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "EZ");
    assert_eq!(first_error(&got).as_deref(), Some("42703"));
    // The name is free: the corrected statement takes it.
    w.parse("st", "SELECT name FROM users WHERE id = $1").sync();
    w.send().await;
    assert_eq!(tags(&w.until_ready().await), "1Z");
    let key = ids[1].to_string();
    w.bind("", "st", &[&key]).execute("", 0).sync();
    w.send().await;
    assert_eq!(
        first_values(&w.until_ready().await),
        vec![format!("user-{}", ids[1])]
    );
    // Inside a transaction the failure aborts it, as in Postgres.
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.parse("bad", "SELECT * FROM nosuchtable").sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got).as_deref(), Some("42P01"));
    assert_eq!(got.last().unwrap().1[0], b'E');
    w.query("ROLLBACK");
    w.send().await;
    assert_eq!(w.until_ready().await.last().unwrap().1[0], b'I');
}

/// psycopg2, and SQLAlchemy's ORM over psycopg 3, psycopg2 and asyncpg
/// (`tests/py/orm_habits.py`): reads on every shard, a failed nested transaction inside one
/// that commits across shards, merged reads, a statement reused 100 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_and_sqlalchemy_through_the_proxy() {
    let (_env, proxy, ids) = setup(5).await;
    let mut cmd = common::python("orm_habits.py");
    cmd.arg("127.0.0.1")
        .arg(proxy.port().to_string())
        .arg(id_list(&ids));
    common::run_program(cmd, "orm checks passed").await;
}

/// Django (`tests/py/djapp`): `migrate` through the proxy, then the ORM on a model sharded
/// by `user_id` — creates on every shard, `atomic()` with a nested `atomic()` that fails,
/// filters, a merged count, update and delete by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_migrate_and_orm_through_the_proxy() {
    let env = TestEnv::new(3).await;
    let tables = format!(
        "{TABLES}shop_order: {{ key: user_id, type: bigint, strategy: hash }}\n\
         shop_ticket: {{ key: user_id, type: bigint, strategy: hash }}\n\
         shop_account: {{ key: id, type: bigint, strategy: hash }}\n"
    );
    let proxy = Proxy::start(&env, &tables, "").await;
    let uids = one_per_shard(&env);
    let mut cmd = common::python("djapp/run.py");
    cmd.arg("127.0.0.1")
        .arg(proxy.port().to_string())
        .arg(id_list(&uids));
    common::run_program(cmd, "django checks passed").await;
    // Each order on the shard its user_id maps to.
    for (s, u) in uids.iter().enumerate() {
        let n: i64 = env
            .shard_client(s)
            .await
            .query_one("SELECT count(*) FROM shop_order WHERE user_id <> $1", &[u])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "shard {s} holds only user {u}'s orders");
    }
    // bulk_create's tickets and accounts (issue 20): ids unique across shards, every row
    // on the shard its key maps to (tickets by user_id, accounts by the generated id).
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(&tables, ""), "t").unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut accounts = 0;
    for s in 0..env.shard_count() {
        let c = env.shard_client(s).await;
        for r in c
            .query("SELECT id, user_id FROM shop_ticket", &[])
            .await
            .unwrap()
        {
            assert!(ids.insert(r.get::<_, i64>(0)), "ticket ids unique");
            let u: i64 = r.get(1);
            assert_eq!(map.hash_shard(&KeyValue::Int(u)), s);
        }
        for r in c.query("SELECT id FROM shop_account", &[]).await.unwrap() {
            let id: i64 = r.get(0);
            assert_eq!(map.hash_shard(&KeyValue::Int(id)), s, "account {id}");
            accounts += 1;
        }
    }
    assert_eq!((ids.len(), accounts), (1000, 1001));
}

/// sqlx itself: its statement cache (named statements), `Close` of the portal before `Sync`
/// on merged queries, reads by key on every shard, a transaction over two shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_driver_through_the_proxy() {
    let (env, proxy, ids) = setup(5).await;
    let url = format!("postgres://app:app-secret@127.0.0.1:{}/app", proxy.port());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    for _ in 0..20 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 3);
        let sum: i64 = sqlx::query_scalar("SELECT sum(id)::bigint FROM users")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(sum, ids.iter().sum::<i64>());
        for id in &ids {
            let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(name, format!("user-{id}"));
        }
    }
    let mut tx = pool.begin().await.unwrap();
    for id in &ids[..2] {
        sqlx::query("UPDATE users SET name = 'sqlx' WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    for (s, id) in ids.iter().enumerate().take(2) {
        let name: String = env
            .shard_client(s)
            .await
            .query_one("SELECT name FROM users WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "sqlx");
    }
    pool.close().await;
}

/// Go: pgx v4 and lib/pq from Debian's packages (`tests/go/habits.go`, built offline in
/// GOPATH mode): pgx's statement cache, a transaction across shards and a batch on one
/// shard; lib/pq's prepared statements and a rolled-back transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_drivers_through_the_proxy() {
    let (_env, proxy, ids) = setup(5).await;
    let mut cmd = common::go_run("habits.go");
    cmd.arg(format!(
        "postgres://app:app-secret@127.0.0.1:{}/app",
        proxy.port()
    ))
    .arg(id_list(&ids));
    common::run_program(cmd, "go checks passed").await;
}

/// psycopg's pipeline mode ends a failed savepoint with `ROLLBACK TO` and `RELEASE` in one
/// pipeline (one Sync): both run, on every shard the transaction holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_and_release_in_one_pipeline() {
    let (_env, proxy, ids) = setup(4).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.query(&format!(
        "UPDATE users SET name = 'a' WHERE id = {}",
        ids[0]
    ));
    w.send().await;
    w.until_ready().await;
    w.query("SAVEPOINT s1");
    w.send().await;
    w.until_ready().await;
    w.query(&format!(
        "UPDATE users SET name = 'b' WHERE id = {}",
        ids[1]
    ));
    w.send().await;
    w.until_ready().await;
    w.query("SELECT 1/0");
    w.send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("22012")
    );
    w.parse("", "ROLLBACK TO s1")
        .bind("", "", &[])
        .describe(b'P', "")
        .execute("", 0)
        .parse("", "RELEASE s1")
        .bind("", "", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(tags(&got), "12nC12nCZ");
    assert_eq!(got.last().map(|m| m.1.to_vec()), Some(vec![b'T']));
    w.query("COMMIT");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    let c = proxy.client().await;
    let names: Vec<String> = c
        .query(
            "SELECT name FROM users WHERE id = ANY($1) ORDER BY id = $2 DESC",
            &[&vec![ids[0], ids[1]], &ids[0]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["a".to_string(), format!("user-{}", ids[1])]);
}

/// The severity field of an ErrorResponse body.
fn severity(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'S'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// A shard session ended under the proxy — an administrator's `pg_terminate_backend` on
/// the shard, a shard restart — while a client holds it (in a transaction, or mid-statement):
/// the shard's FATAL is not relayed (the client's session is the proxy's and goes on; drivers
/// such as node-postgres wait for a close that would never come). The client gets an
/// ERROR, its transaction is over, and its next statements run on fresh connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_session_ended_by_its_administrator_is_an_error_not_a_hangup() {
    let (env, proxy, ids) = setup(1).await;
    let shard0 = env.shard_client(0).await;
    let kill = |cond: &str| {
        format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND {cond}"
        )
    };
    let read = format!("SELECT name FROM users WHERE id = {}", ids[0]);
    let mut w = Wire::login(proxy.port(), &[]).await;
    // In a transaction holding the shard.
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.query(&format!(
        "UPDATE users SET name = 'gone' WHERE id = {}",
        ids[0]
    ));
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    let killed: i64 = shard0
        .query_one(&kill("state = 'idle in transaction'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    w.query(&read);
    w.send().await;
    let got = w.until_ready().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = got.iter().find(|m| m.0 == b'E').expect("an error");
    assert_eq!(severity(&err.1), "ERROR", "{}", tags(&got));
    assert_eq!(got.last().map(|m| m.1.to_vec()), Some(vec![b'E']));
    w.query("ROLLBACK");
    w.send().await;
    let end = w.until_ready().await;
    assert_eq!(end.last().map(|m| m.1.to_vec()), Some(vec![b'I']));
    w.query(&read);
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_values(&got), vec![format!("user-{}", ids[0])]);
    // Mid-statement, outside a transaction block.
    w.query(&format!(
        "SELECT pg_sleep(5)::text FROM users WHERE id = {}",
        ids[0]
    ));
    w.send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed: i64 = shard0
        .query_one(&kill("query LIKE '%pg_sleep(5)%'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let started = Instant::now();
    let got = w.until_ready().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?} {}",
        started.elapsed(),
        tags(&got)
    );
    let err = got.iter().find(|m| m.0 == b'E').expect("an error");
    assert_eq!(severity(&err.1), "ERROR", "{}", tags(&got));
    assert_eq!(got.last().map(|m| m.1.to_vec()), Some(vec![b'I']));
    w.query(&read);
    w.send().await;
    assert_eq!(
        first_values(&w.until_ready().await),
        vec![format!("user-{}", ids[0])]
    );
}

/// An unnamed Parse whose statement text is raw bytes (in the client's encoding).
fn parse_bytes(w: &mut Wire, sql: &[u8]) {
    w.out.extend_from_slice(b"P");
    w.out
        .extend_from_slice(&((sql.len() + 4 + 1 + 1 + 2) as u32).to_be_bytes());
    w.out.extend_from_slice(b"\0");
    w.out.extend_from_slice(sql);
    w.out.extend_from_slice(b"\0\0\0");
}

/// `text` in LATIN9 (its characters are Latin-1's, with `€` at A4).
fn latin9(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            '€' => 0xa4,
            c => u8::try_from(u32::from(c)).expect("a LATIN9 character"),
        })
        .collect()
}

/// The `client_encoding` values reported by ParameterStatus in `msgs`.
fn reported_encodings(msgs: &[common::wire::Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.0 == b'S' && m.1.starts_with(b"client_encoding\0"))
        .map(|m| String::from_utf8_lossy(&m.1[16..m.1.len() - 1]).into_owned())
        .collect()
}

/// `SET client_encoding` inside a transaction block takes effect at once, as in Postgres
/// (psycopg's `test_query_encode[latin9]` runs it in a block, then speaks LATIN9): the proxy
/// converts the client's next statements from the new encoding, on the shards the block holds
/// and on those it reaches later; `ROLLBACK`, or `ROLLBACK TO` a savepoint made before it,
/// takes it back; `COMMIT` keeps it. In both protocols, and for `SET LOCAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_client_encoding_inside_a_block_takes_effect_at_once() {
    let (_env, proxy, ids) = setup(2).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    // Simple protocol: BEGIN, SET, then LATIN9 text ('é' is E9, '€' is A4 in LATIN9).
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.query("SET client_encoding TO 'LATIN9'");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(reported_encodings(&got), vec!["LATIN9".to_string()]);
    query_bytes(&mut w, b"SELECT 'caf\xe9 \xa4'");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(raw_values(&got), vec![b"caf\xe9 \xa4".to_vec()]);
    // A shard the block reaches only now runs in LATIN9 too.
    query_bytes(
        &mut w,
        &latin9(&format!(
            "SELECT name || ' €' FROM users WHERE id = {}",
            ids[1]
        )),
    );
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(
        raw_values(&got),
        vec![latin9(&format!("user-{} €", ids[1]))]
    );
    // The extended protocol reads LATIN9 as well.
    parse_bytes(&mut w, b"SELECT 'na\xefve'");
    w.bind("", "", &[]).execute("", 0).sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(raw_values(&got), vec![b"na\xefve".to_vec()]);
    // ROLLBACK takes it back: UTF-8 again, for the proxy and the shards.
    w.query("ROLLBACK");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(reported_encodings(&got), vec!["UTF8".to_string()]);
    w.query("SELECT 'café'");
    w.send().await;
    assert_eq!(
        first_values(&w.until_ready().await),
        vec!["café".to_string()]
    );
    // As psycopg sends it: the SET through the extended protocol, after a savepoint; then
    // ROLLBACK TO that savepoint takes it back, and COMMIT keeps UTF-8.
    w.query(&format!(
        "BEGIN; SELECT name FROM users WHERE id = {}",
        ids[0]
    ));
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("SAVEPOINT s1");
    w.send().await;
    w.until_ready().await;
    w.parse("", "SET client_encoding TO 'LATIN9'")
        .bind("", "", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(reported_encodings(&got), vec!["LATIN9".to_string()]);
    parse_bytes(&mut w, b"SELECT '\xa4'");
    w.bind("", "", &[]).execute("", 0).sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(raw_values(&got), vec![b"\xa4".to_vec()]);
    w.query("ROLLBACK TO s1");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    w.query(&format!(
        "SELECT name || ' €' FROM users WHERE id = {}",
        ids[1]
    ));
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(first_values(&got), vec![format!("user-{} €", ids[1])]);
    w.query("COMMIT");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("SELECT 'é'");
    w.send().await;
    assert_eq!(first_values(&w.until_ready().await), vec!["é".to_string()]);
    // SET LOCAL: for the rest of the block only.
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.query("SET LOCAL client_encoding TO 'LATIN9'");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    query_bytes(&mut w, b"SELECT '\xe9'");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(raw_values(&got), vec![b"\xe9".to_vec()], "{}", tags(&got));
    w.query("COMMIT");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("SELECT 'é'");
    w.send().await;
    assert_eq!(first_values(&w.until_ready().await), vec!["é".to_string()]);
    // A plain SET committed stays: LATIN9 after the block, on any shard.
    w.query("BEGIN");
    w.send().await;
    w.until_ready().await;
    w.query("SET NAMES 'LATIN9'");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("COMMIT");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    for id in &ids {
        query_bytes(
            &mut w,
            &latin9(&format!("SELECT name || ' €' FROM users WHERE id = {id}")),
        );
        w.send().await;
        let got = w.until_ready().await;
        assert_eq!(
            raw_values(&got),
            vec![latin9(&format!("user-{id} €"))],
            "{}",
            tags(&got)
        );
    }
}

/// asyncpg after the result of a prepared statement changed (its suite's
/// `test_prepare_cache_invalidation_silent`, `…_in_transaction`,
/// `test_prepare_statement_invalid`): the proxy's own "cached plan must not change result
/// type" carries the fields Postgres's has — the routine field `R = RevalidateCachedQuery`
/// is how asyncpg knows it and prepares again. The script runs on one Postgres first, so
/// what it expects is Postgres's behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepares_again_after_a_result_type_change() {
    let (env, proxy, _ids) = setup(2).await;
    for dsn in [
        env.reference_url(),
        format!("postgresql://app:app-secret@127.0.0.1:{}/app", proxy.port()),
    ] {
        let mut cmd = common::python("asyncpg_invalidation.py");
        cmd.arg(dsn);
        common::run_program(cmd, "asyncpg invalidation checks passed").await;
    }
    // The fields, as Postgres sends them.
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE inval2 (a int, b int)")
        .await
        .unwrap();
    let stmt = c.prepare("SELECT * FROM inval2").await.unwrap();
    c.batch_execute("ALTER TABLE inval2 ALTER COLUMN b TYPE text")
        .await
        .unwrap();
    let err = c.query(&stmt, &[]).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000");
    assert_eq!(db.message(), "cached plan must not change result type");
    assert_eq!(db.routine(), Some("RevalidateCachedQuery"));
    assert_eq!(db.file(), Some("plancache.c"));
}

/// `psycopg_block_habits.py CASE`, directly on one Postgres (so what it expects is
/// Postgres's behaviour), then through the proxy.
async fn psycopg_block_case(env: &TestEnv, proxy: &Proxy, case: &str) {
    for dsn in [env.reference_url(), proxy.conninfo()] {
        let mut cmd = common::python("psycopg_block_habits.py");
        cmd.arg(&dsn).arg(case);
        let out = common::run_program(cmd, "checks passed").await;
        assert!(
            out.contains(&format!("psycopg {case} checks passed")),
            "{dsn}: {out}"
        );
    }
}

/// A `SAVEPOINT` sent in a pipeline that continues an exchange a Flush left open (psycopg's
/// pipeline mode: a read fetched at a Flush, then `SAVEPOINT "_pg3_1"`, Sync) is a savepoint
/// like any other: on every shard the block holds, and found by its `ROLLBACK TO` (it got
/// the proxy's own `3B001`). Also when the savepoint statements end at a Flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_in_a_pipeline_continued_after_a_flush() {
    let (env, proxy, ids) = setup(2).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let (a, b) = (ids[0].to_string(), ids[1].to_string());
    let step = |w: &mut Wire, sql: &str| {
        w.parse("", sql)
            .bind("", "", &[])
            .describe(b'P', "")
            .execute("", 0);
    };
    w.query(&format!(
        "BEGIN; UPDATE users SET name = 'kept' WHERE id = {a}"
    ));
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    // A read on the other shard fetched at a Flush: the exchange stays open there.
    step(&mut w, &format!("SELECT name FROM users WHERE id = {b}"));
    w.flush();
    w.send().await;
    let mut got = Vec::new();
    while got.last().map(|m: &common::wire::Msg| m.0) != Some(b'C') {
        got.push(w.recv().await.expect("closed"));
    }
    assert_eq!(tags(&got), "12TDC");
    step(&mut w, "SAVEPOINT \"_pg3_1\"");
    w.sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(tags(&got), "12nCZ");
    for id in [&a, &b] {
        step(
            &mut w,
            &format!("UPDATE users SET name = 'undone' WHERE id = {id}"),
        );
        w.sync();
        w.send().await;
        assert_eq!(first_error(&w.until_ready().await), None);
    }
    step(&mut w, "ROLLBACK TO \"_pg3_1\"");
    step(&mut w, "RELEASE \"_pg3_1\"");
    w.sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    assert_eq!(tags(&got), "12nC12nCZ");
    assert_eq!(got.last().map(|m| m.1.to_vec()), Some(vec![b'T']));
    // Again with the savepoint statements at a Flush, after a read left the exchange open.
    step(&mut w, &format!("SELECT name FROM users WHERE id = {a}"));
    w.flush();
    w.send().await;
    let mut got = Vec::new();
    while got.last().map(|m: &common::wire::Msg| m.0) != Some(b'C') {
        got.push(w.recv().await.expect("closed"));
    }
    assert_eq!(first_values(&got), vec!["kept".to_string()]);
    step(&mut w, "SAVEPOINT s2");
    w.flush();
    w.send().await;
    let mut got = Vec::new();
    while got.last().map(|m: &common::wire::Msg| m.0) != Some(b'C') {
        got.push(w.recv().await.expect("closed"));
    }
    assert_eq!(tags(&got), "12nC");
    w.sync();
    w.send().await;
    assert_eq!(tags(&w.until_ready().await), "Z");
    step(
        &mut w,
        &format!("UPDATE users SET name = 'undone' WHERE id = {b}"),
    );
    w.sync();
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("ROLLBACK TO s2");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    w.query("COMMIT");
    w.send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    let c = proxy.client().await;
    for (id, want) in [
        (ids[0], "kept".to_string()),
        (ids[1], format!("user-{}", ids[1])),
    ] {
        let name: String = c
            .query_one("SELECT name FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, want);
    }
    // psycopg itself, nested transactions in pipeline mode.
    psycopg_block_case(&env, &proxy, "pipeline-savepoint").await;
}

/// The column count of the RowDescription in `msgs`.
fn column_count(msgs: &[common::wire::Msg]) -> Option<i16> {
    msgs.iter()
        .find(|m| m.0 == b'T')
        .map(|m| i16::from_be_bytes([m.1[0], m.1[1]]))
}

/// Statements prepared inside a transaction block, then DDL in that same block (`DROP` and
/// a type made again, `ALTER TABLE`, or a `ROLLBACK TO` that undoes an `ALTER`): a new
/// Parse of the same text meets the schema as it is now, as on Postgres. The backend
/// statement (named by content) had been kept and answered the new Parse with its old plan
/// (`cache lookup failed for type`, `cached plan must not change result type`: psycopg's
/// `test_change_type`, `test_change_type_savepoint`, `test_alter_table_clears_state`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_parse_after_ddl_in_the_same_block_sees_the_new_schema() {
    let (env, proxy, _ids) = setup(2).await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    let ok = |got: &[common::wire::Msg]| {
        assert_eq!(first_error(got), None, "{}", tags(got));
    };
    // DDL runs on every shard: one statement per Query.
    async fn each(w: &mut Wire, sqls: &[&str]) {
        for sql in sqls {
            w.query(sql);
            w.send().await;
            let got = w.until_ready().await;
            assert_eq!(first_error(&got), None, "{sql}: {}", tags(&got));
        }
    }
    let insert = "INSERT INTO blockenum (bar) VALUES ($1::blockmood[])";
    let make = [
        "CREATE TYPE blockmood AS ENUM ('foo', 'bar')",
        "CREATE TABLE blockenum (id int, bar blockmood[])",
    ];
    each(&mut w, &["BEGIN"]).await;
    each(&mut w, &make).await;
    w.parse("s1", insert)
        .bind("", "s1", &["{foo}"])
        .execute("", 0)
        .sync();
    w.send().await;
    ok(&w.until_ready().await);
    each(&mut w, &["DROP TABLE blockenum", "DROP TYPE blockmood"]).await;
    each(&mut w, &make).await;
    w.parse("s2", insert)
        .bind("", "s2", &["{bar}"])
        .execute("", 0)
        .sync();
    w.send().await;
    ok(&w.until_ready().await);
    // ALTER TABLE, then the same SELECT parsed again: the new column.
    let select = "SELECT * FROM blockenum";
    w.parse("s3", select).describe(b'S', "s3").sync();
    w.send().await;
    assert_eq!(column_count(&w.until_ready().await), Some(2));
    each(
        &mut w,
        &["ALTER TABLE blockenum ADD COLUMN extra int DEFAULT 7"],
    )
    .await;
    w.parse("s4", select)
        .bind("", "s4", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    ok(&got);
    assert_eq!(column_count(&got), Some(3));
    // ROLLBACK TO a savepoint made before an ALTER: the statement parsed after the ALTER
    // (three columns) is stale again.
    each(
        &mut w,
        &["SAVEPOINT sp", "ALTER TABLE blockenum ADD COLUMN more int"],
    )
    .await;
    w.parse("s5", select)
        .bind("", "s5", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    ok(&got);
    assert_eq!(column_count(&got), Some(4));
    each(&mut w, &["ROLLBACK TO sp"]).await;
    w.parse("s6", select)
        .bind("", "s6", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    ok(&got);
    assert_eq!(column_count(&got), Some(3));
    assert_eq!(
        first_values(&got).len(),
        1,
        "the row inserted after the DROP"
    );
    each(&mut w, &["ROLLBACK"]).await;
    // psycopg itself.
    psycopg_block_case(&env, &proxy, "ddl-in-block").await;
}
