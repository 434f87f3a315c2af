//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE` through the proxy (issue 19): the session
//! keeps the statements (transaction pooling lends it backends only while a transaction
//! runs), and an EXECUTE runs the statement's text with its arguments substituted.
//!
//! - A differential test: one psql script (single statements, multi-statement strings with
//!   `\;` on one shard and across shards, transaction blocks, errors) run through the proxy
//!   over 3 shards and on the reference Postgres; every reply (rows with their column
//!   names, command tags, SQLSTATEs) and the final rows must be identical, and every row on
//!   its key's shard.
//! - `psql -c "PREPARE …; EXECUTE …; EXECUTE …"` (one Query message), the same way.
//! - A statement used across transactions on a pool of one connection per shard, with
//!   another client in between; Postgres's DETAIL for a wrong number of arguments;
//!   EXPLAIN EXECUTE; the shared namespace with protocol-level statements (42P05 both
//!   ways, Close) and what the extended protocol refuses; psycopg 3 raw SQL.

mod common;

use std::process::Command;

use common::wire::{first_error, first_values, Wire};
use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::Client;

const TABLES: &str = "sp_items: { key: id, type: bigint, strategy: hash }\n";

const CREATE: &str = "CREATE TABLE sp_items (id bigint PRIMARY KEY, name text, qty int)";

/// The first `n` ids (from 1) on each shard, by shard.
fn ids_by_shard(env: &TestEnv, n: usize) -> Vec<Vec<i64>> {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    common::ids_by_shard(&map, env.shard_count(), n)
}

/// Every row of `sp_items` on the shard its key maps to.
async fn check_placement(env: &TestEnv) -> usize {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    let placed = env.placed("sp_items", "id").await;
    for (s, id) in &placed {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    placed.len()
}

/// Runs psql with `args` against `conninfo`: rows with headers (unaligned), tags, errors as
/// `ERROR:  <SQLSTATE>`, statements echoed, all on one stream in order.
fn psql(conninfo: &str, password: Option<&str>, args: &[&str]) -> String {
    let bin = shardwire::localpg::pg_bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("stdbuf -oL \"$0\" -X -A -e -v VERBOSITY=sqlstate -d \"$1\" \"$@\" 2>&1")
        .arg(bin)
        .arg(conninfo)
        .args(args)
        .env_remove("PGOPTIONS")
        .env("PGCONNECT_TIMEOUT", "10");
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let out = cmd.output().expect("run psql");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `args` through the proxy and on the reference: the outputs must be the same.
fn same_through_proxy(env: &TestEnv, proxy: &Proxy, args: &[&str]) -> String {
    let proxied = psql(&proxy.conninfo(), Some("app-secret"), args);
    let direct = psql(&env.reference_url(), None, args);
    if proxied != direct {
        let (pl, dl): (Vec<&str>, Vec<&str>) =
            (proxied.lines().collect(), direct.lines().collect());
        let at = pl
            .iter()
            .zip(dl.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(pl.len().min(dl.len()));
        panic!(
            "differs at output line {at}:\n  proxy:     {:?}\n  reference: {:?}\n--- proxy ---\n{proxied}\n--- reference ---\n{direct}",
            pl.get(at),
            dl.get(at)
        );
    }
    proxied
}

/// The script of the differential test; `a`, `b`, `c` are ids on shards 0, 1, 2.
fn script(a: &[i64], b: &[i64], c: &[i64]) -> String {
    format!(
        r#"PREPARE ins(bigint, text, int) AS INSERT INTO sp_items (id, name, qty) VALUES ($1, $2, $3);
EXECUTE ins({a0}, 'a0', 10);
EXECUTE ins({b0}, 'b0 $1', 20);
EXECUTE ins ({c0}, 'c0', 30);
EXECUTE ins({a1}, $$dollar $1 $2$$, 11 + 1);
PREPARE ins_untyped AS INSERT INTO sp_items (id, name, qty) VALUES ($1, $2, $3) RETURNING id, $2, '$1' AS lit, "qty";
EXECUTE ins_untyped({b1}, 'b1', 21);
EXECUTE ins_untyped({c1}, E'c1 \'q\' $3', 31);
PREPARE get(bigint) AS SELECT id, name, qty FROM sp_items WHERE id = $1;
EXECUTE get({b0});
EXECUTE get({a1});
PREPARE upd(int, bigint) AS UPDATE sp_items SET qty = qty + $1 WHERE id = $2;
EXECUTE upd(5, {c0});
EXECUTE get({c0});
PREPARE del AS DELETE FROM sp_items WHERE id = $1 RETURNING id;
EXECUTE del({c1});
PREPARE sorted(int) AS SELECT id, name FROM sp_items WHERE qty > $1 ORDER BY id;
EXECUTE sorted(0);
EXECUTE sorted(20);
PREPARE totals AS SELECT count(*), sum(qty) FROM sp_items;
EXECUTE totals;
PREPARE cols(int, text) AS SELECT $1, $2, ($1), $1 + 1 AS plus, $2::text;
EXECUTE cols(7, 'x');
PREPARE untyped_cols AS SELECT $1 AS v, $2 = 'x' AS is_x, upper($2);
EXECUTE untyped_cols('v', 'x');
PREPARE arr(int[]) AS SELECT $1[2] AS second, array_length($1, 1);
EXECUTE arr(ARRAY[4, 5, 6]);
PREPARE union_cols(int) AS SELECT $1 UNION ALL SELECT 2 ORDER BY 1;
EXECUTE union_cols(1);
CREATE TABLE sp_plain (a int, b int);
INSERT INTO sp_plain VALUES (1, 3), (2, 2), (3, 1);
PREPARE ord AS SELECT a, b FROM sp_plain WHERE a <> $1 ORDER BY $1, b;
EXECUTE ord(1);
PREPARE grp AS SELECT count(*) FROM sp_plain WHERE a <> $1 GROUP BY $1;
EXECUTE grp(2);
PREPARE ord_sharded AS SELECT id, qty FROM sp_items WHERE id <> $1 ORDER BY $1, qty DESC;
EXECUTE ord_sharded(2);
EXECUTE get({b0}, 2);
EXECUTE get;
EXECUTE nosuch(1);
EXECUTE get(id);
EXECUTE get((SELECT 1));
EXECUTE get(count(*));
PREPARE get AS SELECT 1;
PREPARE gap AS SELECT $2;
PREPARE zero AS SELECT $0;
DEALLOCATE get;
EXECUTE get({b0});
DEALLOCATE get;
DEALLOCATE PREPARE sorted;
BEGIN;
PREPARE in_txn(bigint) AS INSERT INTO sp_items (id, name, qty) VALUES ($1, 'txn', 0);
EXECUTE in_txn({a2});
EXECUTE in_txn({b2});
SELECT count(*) FROM sp_items WHERE name = 'txn';
ROLLBACK;
EXECUTE in_txn({c2});
SELECT id FROM sp_items WHERE name = 'txn' ORDER BY id;
BEGIN;
EXECUTE in_txn({a3});
EXECUTE nosuch;
EXECUTE in_txn({b3});
PREPARE after_error AS SELECT 1;
ROLLBACK;
EXECUTE after_error;
BEGIN;
DEALLOCATE in_txn;
ROLLBACK;
EXECUTE in_txn({a3});
PREPARE many(bigint) AS SELECT id, name FROM sp_items WHERE id = $1 \; EXECUTE many({a0}) \; EXECUTE many({b0}) \; EXECUTE many({c0});
EXECUTE ins({a4}, 'same shard 1', 1) \; EXECUTE ins({a5}, 'same shard 2', 2);
EXECUTE ins({a6}, 'rolled back', 1) \; EXECUTE ins({a4}, 'duplicate', 2);
SELECT id, name FROM sp_items WHERE id IN ({a4}, {a5}, {a6}) ORDER BY id;
EXECUTE ins({a8}, 'across', 1) \; EXECUTE ins({b4}, 'across', 2) \; EXECUTE ins({c3}, 'across', 3);
EXECUTE ins({a9}, 'undone', 1) \; EXECUTE ins({c4}, 'undone', 2) \; EXECUTE ins({b0}, 'duplicate', 3);
EXECUTE ins({b5}, 'undone', 1) \; EXECUTE nosuch(1);
SELECT id, name FROM sp_items WHERE name IN ('across', 'undone') ORDER BY id;
SELECT 1 AS first \; PREPARE late AS SELECT 2 AS second \; EXECUTE late;
EXECUTE late \; DEALLOCATE late \; EXECUTE late;
PREPARE v(int) AS SELECT $1 AS n, 'made' AS how;
CREATE TABLE sp_made AS EXECUTE v(5);
SELECT * FROM sp_made;
CREATE TABLE sp_not AS EXECUTE ins(1, 'x', 1);
DEALLOCATE ALL;
EXECUTE ins({a7}, 'gone', 0);
PREPARE d AS SELECT 'before discard';
DISCARD ALL;
EXECUTE d;
SELECT id, name, qty FROM sp_items ORDER BY id;
"#,
        a0 = a[0],
        a1 = a[1],
        a2 = a[2],
        a3 = a[3],
        a4 = a[4],
        a5 = a[5],
        a6 = a[6],
        a7 = a[7],
        a8 = a[8],
        a9 = a[9],
        b0 = b[0],
        b1 = b[1],
        b2 = b[2],
        b3 = b[3],
        b4 = b[4],
        b5 = b[5],
        c0 = c[0],
        c1 = c[1],
        c2 = c[2],
        c3 = c[3],
        c4 = c[4],
    )
}

/// Issue 19: PREPARE / EXECUTE of SELECT, INSERT, UPDATE and DELETE on a table sharded
/// over 3 shards, typed and untyped, with `$1` in literals, in transaction blocks and
/// multi-statement strings, with Postgres's errors, replies exactly as from one Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_matches_postgres() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    proxy.client().await.batch_execute(CREATE).await.unwrap();
    env.reference_client()
        .await
        .batch_execute(CREATE)
        .await
        .unwrap();
    let ids = ids_by_shard(&env, 10);
    let dir =
        std::env::temp_dir().join(format!("shardwire-sqlprep-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script.sql");
    std::fs::write(&file, script(&ids[0], &ids[1], &ids[2])).unwrap();
    let out = same_through_proxy(&env, &proxy, &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    // The script did what it says (not only the same thing twice).
    for want in [
        "?column?|?column?|?column?|plus|text\n7|x|7|8|x",
        "ERROR:  42601",
        "ERROR:  26000",
        "ERROR:  42P05",
        "ERROR:  42P18",
        "ERROR:  42703",
        "ERROR:  42809",
        "ERROR:  25P02",
        "INSERT 0 1",
        "UPDATE 1",
        "DELETE 1",
        "b0 $1",
        "SELECT 1",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    assert_eq!(check_placement(&env).await, 11, "{out}");
    // Every shard got rows.
    let placed = env.placed("sp_items", "id").await;
    assert!((0..3).all(|s| placed.iter().any(|p| p.0 == s)));
}

/// psql's `-c "PREPARE …; EXECUTE …; EXECUTE …"`: one Query message; a psql `\i` script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_one_query_and_included_script() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    proxy.client().await.batch_execute(CREATE).await.unwrap();
    env.reference_client()
        .await
        .batch_execute(CREATE)
        .await
        .unwrap();
    let ids = ids_by_shard(&env, 2);
    let (a, b) = (ids[0][0], ids[1][0]);
    let c = format!(
        "PREPARE i(bigint, text) AS INSERT INTO sp_items (id, name) VALUES ($1, $2) RETURNING *; EXECUTE i({a}, 'one'); EXECUTE i({}, 'two')",
        ids[0][1]
    );
    let out = same_through_proxy(&env, &proxy, &["-c", &c]);
    assert!(out.contains("INSERT 0 1"), "{out}");
    let c = format!(
        "PREPARE s(bigint) AS SELECT id, name FROM sp_items WHERE id = $1; EXECUTE s({a}); EXECUTE s({b}); EXECUTE s(1, 2)"
    );
    let out = same_through_proxy(&env, &proxy, &["-c", &c]);
    assert!(out.contains("ERROR:  42601"), "{out}");
    let dir =
        std::env::temp_dir().join(format!("shardwire-sqlprep-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("inner.sql"),
        format!("PREPARE u(text, bigint) AS UPDATE sp_items SET name = $1 WHERE id = $2;\nEXECUTE u('updated', {a});\n"),
    )
    .unwrap();
    let main = dir.join("main.sql");
    std::fs::write(
        &main,
        format!(
            "\\i {}\nEXECUTE u('again', {});\nSELECT id, name FROM sp_items ORDER BY id;\n",
            dir.join("inner.sql").display(),
            ids[0][1]
        ),
    )
    .unwrap();
    let out = same_through_proxy(&env, &proxy, &["-f", main.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.contains("UPDATE 1") && out.contains("again"), "{out}");
    assert_eq!(check_placement(&env).await, 2);
}

/// The rows a simple query returns, first column as text.
async fn first_column(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// A statement prepared once runs in many transactions on a pool of one connection per
/// shard, another client using (and discarding on) the same backends in between; the
/// backends never hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_outlives_pooled_backends() {
    let env = TestEnv::new(3).await;
    let yaml = env
        .shard_map_yaml(TABLES, "")
        .replace("pool: { size: 10,", "pool: { size: 1,");
    let proxy = Proxy::start_yaml(&yaml).await;
    let a = proxy.client().await;
    let other = proxy.client().await;
    a.batch_execute(CREATE).await.unwrap();
    let ids = ids_by_shard(&env, 4);
    a.simple_query(
        "PREPARE put(bigint, int) AS INSERT INTO sp_items (id, name, qty) VALUES ($1, 'p', $2)",
    )
    .await
    .unwrap();
    a.simple_query("PREPARE total AS SELECT coalesce(sum(qty), 0) FROM sp_items")
        .await
        .unwrap();
    let mut n = 0;
    for round in 0..4 {
        for shard in &ids {
            let id = shard[round];
            n += id;
            if round % 2 == 0 {
                a.simple_query(&format!("BEGIN; EXECUTE put({id}, {id}); COMMIT"))
                    .await
                    .unwrap();
            } else {
                a.batch_execute("BEGIN").await.unwrap();
                a.simple_query(&format!("EXECUTE put({id}, {id})"))
                    .await
                    .unwrap();
                a.batch_execute("COMMIT").await.unwrap();
            }
            // The other client takes the same backends, and clears its own statements.
            other
                .batch_execute(&format!(
                    "SELECT * FROM sp_items WHERE id = {id}; DISCARD ALL; DEALLOCATE ALL"
                ))
                .await
                .unwrap();
            assert_eq!(first_column(&a, "EXECUTE total").await, [n.to_string()]);
        }
    }
    assert_eq!(check_placement(&env).await, 12);
    // What pg_prepared_statements shows is a backend's: the proxy's statements are not there.
    assert_eq!(
        first_column(
            &a,
            "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
        )
        .await,
        ["0"]
    );
    let err = other.simple_query("EXECUTE total").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("26000"));
}

/// Errors carry Postgres's SQLSTATE, message and DETAIL; EXPLAIN EXECUTE explains the
/// statement with its arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_explain_as_postgres() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let p = proxy.client().await;
    let r = env.reference_client().await;
    for c in [&p, &r] {
        c.batch_execute(CREATE).await.unwrap();
        c.batch_execute(
            "PREPARE two(bigint, text) AS SELECT * FROM sp_items WHERE id = $1 AND name = $2",
        )
        .await
        .unwrap();
    }
    for sql in [
        "EXECUTE two(1)",
        "EXECUTE two",
        "EXECUTE nope(1)",
        "PREPARE two AS SELECT 1",
    ] {
        let (pe, re) = (
            p.simple_query(sql).await.unwrap_err(),
            r.simple_query(sql).await.unwrap_err(),
        );
        let (pe, re) = (pe.as_db_error().unwrap(), re.as_db_error().unwrap());
        assert_eq!(
            (pe.code(), pe.message(), pe.detail()),
            (re.code(), re.message(), re.detail()),
            "{sql}"
        );
    }
    let plan = first_column(&p, "EXPLAIN (COSTS OFF) EXECUTE two(7, 'x')").await;
    assert!(plan.iter().any(|l| l.contains("sp_items")), "{plan:?}");
    let plan = first_column(&p, "EXPLAIN EXECUTE two(7, 'x')").await;
    assert!(plan.iter().any(|l| l.contains("sp_items")), "{plan:?}");
}

/// SQL statements share the namespace of protocol-level ones (Parse of a SQL name and
/// PREPARE of a Parse name get 42P05, Close removes a SQL one); the extended protocol can
/// neither bind a SQL statement nor run PREPARE/EXECUTE (0A000, the session stays usable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespace_with_protocol_statements() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.query("PREPARE p(int) AS SELECT $1 + 1").send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.parse("p", "SELECT 1").sync().send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("42P05")
    );
    w.parse("q", "SELECT $1::int * 2").sync().send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("PREPARE q AS SELECT 1").send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("42P05")
    );
    w.query("EXECUTE q(4)").send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("0A000")
    );
    w.bind("", "p", &["1"]).execute("", 0).sync().send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("0A000")
    );
    w.parse("", "EXECUTE p(1)")
        .bind("", "", &[])
        .execute("", 0)
        .sync()
        .send()
        .await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("0A000")
    );
    w.query("EXECUTE p(41)").send().await;
    assert_eq!(first_values(&w.until_ready().await), ["42"]);
    w.close(b'S', "p").sync().send().await;
    assert_eq!(first_error(&w.until_ready().await), None);
    w.query("EXECUTE p(1)").send().await;
    assert_eq!(
        first_error(&w.until_ready().await).as_deref(),
        Some("26000")
    );
    w.query("PREPARE p AS SELECT 'again'; EXECUTE p")
        .send()
        .await;
    assert_eq!(first_values(&w.until_ready().await), ["again"]);
}

/// psycopg 3 raw SQL (`tests/py/sql_prepare.py`): PREPARE/EXECUTE without bind
/// parameters and with client-side binding, DEALLOCATE; server-side binding refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_raw_sql() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    proxy.client().await.batch_execute(CREATE).await.unwrap();
    let ids = ids_by_shard(&env, 3);
    let ids: Vec<String> = ids.iter().flatten().map(|i| i.to_string()).collect();
    let mut cmd = common::python("sql_prepare.py");
    cmd.arg(proxy.conninfo()).arg(ids.join(","));
    common::run_program(cmd, "sql_prepare checks passed").await;
    assert_eq!(check_placement(&env).await, 9);
}
