//! Multi-statement simple queries across shards (issue 19): a script, a migration file sent
//! as one query, `psql -c "…; …"`, sqlx's `raw_sql`, psycopg2's `execute_batch` — run as
//! Postgres runs them, one implicit transaction across every shard they reach.

mod common;

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::SimpleQueryMessage;

const TABLES: &str = "sc_users: { key: id, type: bigint, strategy: hash }\n\
                      sc_ddl: { key: id, type: bigint, strategy: hash }\n";

/// Rows per shard of `table`, read on each shard directly.
async fn counts(env: &TestEnv, table: &str) -> Vec<i64> {
    env.per_shard_i64(&format!("SELECT count(*) FROM {table}"))
        .await
}

/// Keys `n` of them, each on a given shard: the first `n` ids that map to `shard`.
fn ids_on(map: &ShardMap, shard: usize, n: usize) -> Vec<i64> {
    (1..)
        .filter(|&i| map.hash_shard(&KeyValue::Int(i)) == shard)
        .take(n)
        .collect()
}

/// Issue 19: a 12-statement INSERT script over all shards is one transaction: committed on
/// every shard, each row where its key maps; the same script with its 5th statement failing
/// on another shard leaves nothing of statements 1–4 on any shard, and the session is idle
/// and usable after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_script_across_shards_is_atomic() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE sc_users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    // 12 INSERTs, 4 on each shard, interleaved.
    let per: Vec<Vec<i64>> = (0..3).map(|s| ids_on(&map, s, 8)).collect();
    let script: String = (0..12)
        .map(|i| {
            let id = per[i % 3][i / 3];
            format!("INSERT INTO sc_users VALUES ({id}, 'n{id}');")
        })
        .collect();
    c.batch_execute(&script).await.unwrap();
    assert_eq!(counts(&env, "sc_users").await, vec![4, 4, 4]);
    for (s, id) in env.placed("sc_users", "id").await {
        assert_eq!(map.hash_shard(&KeyValue::Int(id)), s, "row {id}");
    }

    // Statements 1–4 on shards 0, 1, 2, 0; the 5th fails on shard 1 (a duplicate key).
    let dup = per[1][0];
    let failing = format!(
        "INSERT INTO sc_users VALUES ({}, 'a'); INSERT INTO sc_users VALUES ({}, 'b'); \
         INSERT INTO sc_users VALUES ({}, 'c'); UPDATE sc_users SET name = 'changed' WHERE id = {}; \
         INSERT INTO sc_users VALUES ({dup}, 'dup'); INSERT INTO sc_users VALUES ({}, 'e')",
        per[0][5], per[1][5], per[2][5], per[0][0], per[2][6]
    );
    let e = c.batch_execute(&failing).await.unwrap_err();
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("23505"),
        "the duplicate's error: {e:?}"
    );
    assert_eq!(
        counts(&env, "sc_users").await,
        vec![4, 4, 4],
        "nothing of 1–4 stayed"
    );
    let name: String = env
        .shard_client(0)
        .await
        .query_one("SELECT name FROM sc_users WHERE id = $1", &[&per[0][0]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        name,
        format!("n{}", per[0][0]),
        "the UPDATE was rolled back"
    );
    // No prepared transaction is left behind, and the session goes on outside a block.
    assert_eq!(env.prepared_left().await, vec![0, 0, 0]);
    let n: i64 = c
        .query_one("SELECT count(*) FROM sc_users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 12);
}

/// Issue 19: the text's own BEGIN/COMMIT/ROLLBACK and savepoints behave as in Postgres: a
/// BEGIN takes what ran before into the client's block; a COMMIT in the implicit
/// transaction commits it with a warning and what follows is a new one; SAVEPOINT outside a
/// block is `25P01`. Differential against the reference Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_follow_their_own_transaction_control() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let reference = env.reference_client().await;
    let c = proxy.client().await;
    let ddl = "CREATE TABLE sc_users (id bigint PRIMARY KEY, name text)";
    c.batch_execute(ddl).await.unwrap();
    reference.batch_execute(ddl).await.unwrap();
    let a = ids_on(&map, 0, 3);
    let b = ids_on(&map, 1, 3);
    let ins = |id: i64| format!("INSERT INTO sc_users VALUES ({id}, 'x')");
    let scripts: Vec<(String, &str)> = vec![
        // BEGIN after a statement: both in the client's block, which the next query rolls back.
        (format!("{}; BEGIN; {}", ins(a[0]), ins(b[0])), "T"),
        ("ROLLBACK".into(), "I"),
        // COMMIT in the implicit transaction: the first two stay; the failing rest does not.
        (
            format!(
                "{}; {}; COMMIT; {}; {}",
                ins(a[1]),
                ins(b[1]),
                ins(a[2]),
                ins(b[1])
            ),
            "I",
        ),
        // SAVEPOINT outside a block: an error, and the insert before it is undone.
        (format!("{}; SAVEPOINT s; {}", ins(b[2]), ins(a[0])), "I"),
        // A block opened and closed inside the text, then a failing statement outside it.
        (format!("BEGIN; {}; COMMIT; {}", ins(a[0]), ins(a[0])), "I"),
    ];
    for (sql, status) in &scripts {
        let got = run_script(&c, sql).await;
        let want = run_script(&reference, sql).await;
        assert_eq!(got, want, "{sql}");
        assert_eq!(got.status, *status, "{sql}");
    }
    let rows = |cl: tokio_postgres::Client| async move {
        let mut v: Vec<i64> = cl
            .query("SELECT id FROM sc_users", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        v.sort();
        v
    };
    let sharded = rows(proxy.client().await).await;
    assert_eq!(sharded, rows(env.reference_client().await).await);
    assert_eq!(sharded.len(), 3, "{sharded:?}");
    for (s, id) in env.placed("sc_users", "id").await {
        assert_eq!(map.hash_shard(&KeyValue::Int(id)), s, "row {id}");
    }
}

/// What a client saw of one script: command tags, the error's SQLSTATE, the status after.
#[derive(Debug, PartialEq)]
struct Seen {
    tags: Vec<u64>,
    error: Option<String>,
    status: &'static str,
}

async fn run_script(c: &tokio_postgres::Client, sql: &str) -> Seen {
    let (tags, error) = match c.simple_query(sql).await {
        Ok(msgs) => (
            msgs.iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), e.code().map(|c| c.code().to_string())),
    };
    // The status, read back: inside a block now() is the block's start, not this statement's.
    let status = match c.simple_query("SELECT now() = statement_timestamp()").await {
        Ok(m) => match m.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        }) {
            Some("t") => "I",
            _ => "T",
        },
        Err(_) => "E",
    };
    Seen {
        tags,
        error,
        status,
    }
}

/// `psql -c "…"` with `sql`: its combined output and whether it succeeded.
fn psql_c(proxy: &Proxy, sql: &str) -> (bool, String) {
    let bin = shardwire::localpg::pg_bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    let out = std::process::Command::new(bin)
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &proxy.conninfo(),
            "-c",
            sql,
        ])
        .env_remove("PGOPTIONS")
        .output()
        .expect("run psql");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Issue 19: a 3-statement DDL script through `psql -c` (a migration sent as one query)
/// runs on every shard as one transaction; run twice (its DROP … IF EXISTS finds the
/// table); a script whose last statement fails leaves nothing of the first on any shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_script_through_psql_reaches_every_shard_atomically() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let proxy = Proxy::start_yaml(&yaml).await;
    let script = "DROP TABLE IF EXISTS sc_ddl; \
                  CREATE TABLE sc_ddl (id bigint PRIMARY KEY, v text); \
                  CREATE INDEX sc_ddl_v ON sc_ddl (v)";
    for round in 0..2 {
        let (ok, out) = psql_c(&proxy, script);
        assert!(ok, "round {round}: {out}");
        let idx = env
            .per_shard_i64("SELECT count(*) FROM pg_indexes WHERE indexname = 'sc_ddl_v'")
            .await;
        assert_eq!(idx, vec![1, 1, 1], "round {round}");
    }
    // The second statement fails: the first (a new table) is on no shard.
    let (ok, out) = psql_c(
        &proxy,
        "CREATE TABLE sc_ddl_new (id bigint); CREATE INDEX sc_bad ON sc_missing (id)",
    );
    assert!(!ok && out.contains("sc_missing"), "{out}");
    let made = env
        .per_shard_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'sc_ddl_new'")
        .await;
    assert_eq!(made, vec![0, 0, 0]);
    // The table the script made is usable through the proxy at once.
    let c = proxy.client().await;
    c.batch_execute("INSERT INTO sc_ddl VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .await
        .unwrap();
    assert_eq!(counts(&env, "sc_ddl").await.iter().sum::<i64>(), 3);
}

/// Issue 19: sqlx's `raw_sql` (a multi-statement simple query) and psycopg2's
/// `execute_batch` (pages of `INSERT …; INSERT …` in one query) over rows on every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_and_execute_batch_across_shards() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let url = format!("postgres://app:app-secret@127.0.0.1:{}/app", proxy.port());
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE sc_users (id bigint PRIMARY KEY, name text); \
         INSERT INTO sc_users VALUES (1, 'a'); INSERT INTO sc_users VALUES (2, 'b'); \
         INSERT INTO sc_users VALUES (3, 'c'); INSERT INTO sc_users VALUES (4, 'd')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // A failing one leaves nothing.
    let e = sqlx::raw_sql(
        "INSERT INTO sc_users VALUES (5, 'e'); INSERT INTO sc_users VALUES (1, 'dup')",
    )
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("duplicate key"), "{e}");
    conn.close().await.unwrap();
    let mut cmd = common::python("execute_batch.py");
    cmd.arg(proxy.conninfo());
    common::run_program(cmd, "execute_batch checks passed").await;
    let placed = env.placed("sc_users", "id").await;
    assert_eq!(
        placed.len(),
        4 + 1000,
        "{:?}",
        counts(&env, "sc_users").await
    );
    for (s, id) in &placed {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    assert!((0..3).all(|s| placed.iter().any(|p| p.0 == s)));
}

/// With `pool.mode: session` the proxy opens no transactions of its own on the client's
/// connections: a script that writes on several shards stays refused (`0A000`), nothing of
/// it applied, rather than running statement by statement without atomicity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_refuses_scripts_across_shards() {
    let env = TestEnv::new(3).await;
    let yaml = env
        .shard_map_yaml(TABLES, "")
        .replace("pool: { size: 10,", "pool: { mode: session, size: 10,");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE sc_users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let (a, b) = (ids_on(&map, 0, 1)[0], ids_on(&map, 1, 1)[0]);
    let e = c
        .batch_execute(&format!(
            "INSERT INTO sc_users VALUES ({a}, 'a'); INSERT INTO sc_users VALUES ({b}, 'b')"
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    assert_eq!(counts(&env, "sc_users").await, vec![0, 0, 0]);
}

/// Issue 19: Sequelize's `findOrCreate` — in a transaction, a script that creates a
/// temporary PL/pgSQL function wrapping the INSERT (to catch a unique violation), calls it
/// and drops it. The proxy routes the function by the key its INSERT writes, so the whole
/// script runs on that shard: the row lands there, and a second run catches the duplicate
/// inside the function and the transaction still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequelize_find_or_create_script() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE sc_users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let script = |id: i64| {
        format!(
            "CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response \"sc_users\", OUT sequelize_caught_exception text) \
             RETURNS RECORD AS $func_5e1b$ BEGIN INSERT INTO \"sc_users\" (\"id\",\"name\") VALUES ({id},'n{id}') RETURNING * INTO response; \
             EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS sequelize_caught_exception = PG_EXCEPTION_DETAIL; \
             END $func_5e1b$ LANGUAGE plpgsql; \
             SELECT (testfunc.response).*, testfunc.sequelize_caught_exception FROM pg_temp.testfunc(); \
             DROP FUNCTION IF EXISTS pg_temp.testfunc();"
        )
    };
    for shard in 0..3 {
        let id = ids_on(&map, shard, 1)[0];
        for round in 0..2 {
            c.batch_execute("START TRANSACTION").await.unwrap();
            c.simple_query(&format!("SELECT id FROM sc_users WHERE id = {id}"))
                .await
                .unwrap();
            let rows: Vec<_> = c
                .simple_query(&script(id))
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((r.get(0).map(str::to_string), r.get(2).map(str::to_string)))
                    }
                    _ => None,
                })
                .collect();
            c.batch_execute("COMMIT").await.unwrap();
            assert_eq!(rows.len(), 1, "{rows:?}");
            if round == 0 {
                assert_eq!(rows[0], (Some(id.to_string()), None), "created");
            } else {
                assert_eq!(rows[0].0, None, "found, not created");
                assert!(
                    rows[0]
                        .1
                        .as_deref()
                        .is_some_and(|d| d.contains("already exists")),
                    "{rows:?}"
                );
            }
        }
    }
    assert_eq!(counts(&env, "sc_users").await, vec![1, 1, 1]);
    for (s, id) in env.placed("sc_users", "id").await {
        assert_eq!(map.hash_shard(&KeyValue::Int(id)), s, "row {id}");
    }
    // Outside a transaction too (the script is then one implicit transaction on the shard).
    let id = ids_on(&map, 2, 2)[1];
    c.simple_query(&script(id)).await.unwrap();
    assert_eq!(counts(&env, "sc_users").await, vec![1, 1, 2]);
}
