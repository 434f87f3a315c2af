//! A non-Rust driver through the proxy: psycopg 3 runs tests/py/psycopg_suite.py.

mod common;

use std::process::Command;

use common::{Proxy, TestEnv};

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_suite_through_the_proxy() {
    let probe = Command::new(python())
        .args(["-c", "import psycopg; print(psycopg.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; install python3", python()));
    assert!(
        probe.status.success(),
        "psycopg 3 is not importable by {}: {}\ninstall it with \
         `python3 -m pip install 'psycopg[binary]>=3.1'` (./scripts/test.sh does this)",
        python(),
        String::from_utf8_lossy(&probe.stderr).trim()
    );

    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/psycopg_suite.py");
    let conninfo = proxy.conninfo();
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(
        &env.shard_map_yaml(TABLES, ""),
        "t",
    )
    .unwrap();
    let same_shard: Vec<String> = (1..=1000i64)
        .filter(|&id| map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id)) == 0)
        .take(20)
        .map(|id| id.to_string())
        .collect();
    let same_shard = same_shard.join(",");
    // The proxy runs on this test's runtime: run the script on a blocking thread.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(&conninfo)
            .arg(&same_shard)
            .output()
            .expect("run the psycopg suite")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "psycopg suite failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains("checks passed"), "{stdout}");

    // The rows it wrote are on the shards, each once.
    let per_shard = env.per_shard_i64("SELECT count(*) FROM users").await;
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "a shard holds none of the rows: {per_shard:?}"
    );
    let total: i64 = per_shard.iter().sum();
    assert_eq!(total, 1000);
}

/// psycopg's `executemany` in pipeline mode sends one pipeline of Bind/Execute pairs: into a
/// reference table it must apply on every shard or on none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipelined_reference_writes_are_all_or_nothing() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, "countries: { strategy: reference }\n", "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    env.shard_client(1)
        .await
        .batch_execute("INSERT INTO countries VALUES ('ZZ', 'planted')")
        .await
        .unwrap();
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
rows = [("AA", "a"), ("ZZ", "z"), ("BB", "b")]
try:
    with conn.pipeline():
        conn.cursor().executemany("INSERT INTO countries (code, name) VALUES (%s, %s)", rows)
    print("applied")
except psycopg.Error as e:
    print("failed", e.sqlstate)
conn.close()
conn = psycopg.connect(sys.argv[1], autocommit=True)
with conn.pipeline():
    conn.cursor().executemany("INSERT INTO countries (code, name) VALUES (%s, %s)", [("CC", "c"), ("DD", "d")])
print("second applied")
"#;
    let conninfo = proxy.conninfo();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-c", script, &conninfo])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("failed 23505"), "{stdout}");
    assert!(stdout.contains("second applied"), "{stdout}");
    for (code, want) in [("AA", 0), ("BB", 0), ("CC", 1), ("DD", 1)] {
        let per = env
            .per_shard_i64(&format!(
                "SELECT count(*) FROM countries WHERE code = '{code}'"
            ))
            .await;
        assert_eq!(per, vec![want; 3], "{code}");
    }
}

/// Django-style nested `atomic()` over three shards, as psycopg 3 sends it (extended
/// protocol; BEGIN, SAVEPOINT "_pg3_n", ROLLBACK TO, RELEASE): an error in the inner block is
/// undone with its savepoint on every shard — including one first reached inside it — and
/// the outer transaction commits; an error outside a savepoint aborts the whole transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_nested_transactions_span_shards() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(
        &env.shard_map_yaml(TABLES, ""),
        "t",
    )
    .unwrap();
    let on = |s: usize| {
        (1..1000i64)
            .find(|&id| map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id)) == s)
            .unwrap()
    };
    let (a, b, d) = (on(0), on(1), on(2));
    let c = proxy.client().await;
    common::create_users(&c, "", 0).await;
    for id in [a, b, d] {
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'orig')", &[&id])
            .await
            .unwrap();
    }
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1])
a, b, d = map(int, sys.argv[2].split(","))
cur = conn.cursor()
with conn.transaction():
    cur.execute("UPDATE users SET name = 'outer' WHERE id = %s", (a,))
    try:
        with conn.transaction():
            cur.execute("UPDATE users SET name = 'inner' WHERE id = %s", (b,))
            cur.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero:
        print("inner rolled back")
    cur.execute("UPDATE users SET name = 'after' WHERE id = %s", (d,))
cur.execute("UPDATE users SET name = 'lost' WHERE id = %s", (b,))
try:
    cur.execute("SELECT 1/0")
except psycopg.errors.DivisionByZero:
    pass
try:
    cur.execute("UPDATE users SET name = 'lost' WHERE id = %s", (d,))
except psycopg.errors.InFailedSqlTransaction:
    print("aborted")
conn.commit()
print("done")
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", script, &proxy.conninfo(), &format!("{a},{b},{d}")]);
    let stdout = common::run_program(cmd, "done").await;
    assert!(stdout.contains("inner rolled back"), "{stdout}");
    assert!(stdout.contains("aborted"), "{stdout}");
    for (shard, id, want) in [(0, a, "outer"), (1, b, "orig"), (2, d, "after")] {
        let name: String = env
            .shard_client(shard)
            .await
            .query_one("SELECT name FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, want, "id {id} on shard {shard}");
    }
}

/// psycopg 3 server-side cursors (`conn.cursor(name=…)`: DECLARE, then a Describe of the
/// portal DECLARE made) on a single-shard query; and `DISCARD ALL` / `DEALLOCATE ALL` sent
/// through the extended protocol, after which prepared executions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_named_cursor_and_discard_all() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    common::create_users(&c, "", 40).await;
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1])
for key in range(1, 41):
    with conn.cursor(name="nc") as cur:
        cur.execute("SELECT id, name FROM users WHERE id = %s", (key,))
        assert cur.fetchall() == [(key, f"user-{key}")], key
    conn.commit()
with conn.cursor(name="big") as cur:
    cur.itersize = 3
    cur.execute("SELECT u.id, g FROM users u, generate_series(1, 10) g WHERE u.id = 5")
    assert [g for _, g in cur] == list(range(1, 11))
conn.commit()
conn.autocommit = True
for i in range(3):
    for key in (1, 2, 3):
        row = conn.execute("SELECT name FROM users WHERE id = %s", (key,), prepare=True).fetchone()
        assert row == (f"user-{key}",), row
    conn.execute("DISCARD ALL" if i == 0 else "DEALLOCATE ALL")
print("cursor checks passed")
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", script, &proxy.conninfo()]);
    common::run_program(cmd, "cursor checks passed").await;
}

/// The same nesting in psycopg's pipeline mode: after the error inside the savepoint,
/// psycopg sends `ROLLBACK TO SAVEPOINT` and `RELEASE SAVEPOINT` in one pipeline (one Sync),
/// and the transaction goes on and commits on every shard it reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipeline_savepoint_recovers() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(
        &env.shard_map_yaml(TABLES, ""),
        "t",
    )
    .unwrap();
    let on = |s: usize| {
        (1..1000i64)
            .find(|&id| map.hash_shard(&shardwire::sharding::keys::KeyValue::Int(id)) == s)
            .unwrap()
    };
    let (a, b, d) = (on(0), on(1), on(2));
    let c = proxy.client().await;
    common::create_users(&c, "", 0).await;
    for id in [a, b, d] {
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'orig')", &[&id])
            .await
            .unwrap();
    }
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1])
a, b, d = map(int, sys.argv[2].split(","))
cur = conn.cursor()
with conn.pipeline():
    with conn.transaction():
        cur.execute("UPDATE users SET name = 'outer' WHERE id = %s", (a,))
        try:
            with conn.transaction():
                cur.execute("UPDATE users SET name = 'inner' WHERE id = %s", (b,))
                cur.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            print("inner rolled back")
        cur.execute("UPDATE users SET name = 'after' WHERE id = %s", (d,))
        cur.execute("SELECT name FROM users WHERE id = %s", (d,))
        print("seen", cur.fetchone()[0])
print("done")
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", script, &proxy.conninfo(), &format!("{a},{b},{d}")]);
    let stdout = common::run_program(cmd, "done").await;
    assert!(stdout.contains("inner rolled back"), "{stdout}");
    assert!(stdout.contains("seen after"), "{stdout}");
    for (shard, id, want) in [(0, a, "outer"), (1, b, "orig"), (2, d, "after")] {
        let name: String = env
            .shard_client(shard)
            .await
            .query_one("SELECT name FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, want, "id {id} on shard {shard}");
    }
}

/// psycopg with a LATIN9 connection (`client_encoding` at connect, as psycopg's own suite
/// does): statements and parameters in LATIN9 — bound server-side and client-side — read
/// back as sent, stored as the same characters a UTF-8 client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_latin9_connection() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    common::create_users(&c, "", 0).await;
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], client_encoding="latin9", autocommit=True)
assert conn.info.encoding == "iso8859-15", conn.info.encoding
cur = conn.cursor()
for i, name in [(1, "€uro"), (2, "œuvre"), (3, "Ÿ")]:
    cur.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (i, name))
cur.execute("SELECT name FROM users WHERE id = %s AND name <> 'ž'", (1,))
assert cur.fetchone()[0] == "€uro"
cur = psycopg.ClientCursor(conn)
cur.execute("SELECT name FROM users WHERE id = %s AND name = %s", (2, "œuvre"))
assert cur.fetchone()[0] == "œuvre"
cur.execute("SELECT count(*) FROM users WHERE name LIKE 'Ÿ%'")
assert cur.fetchone()[0] == 1
try:
    cur.execute("SELECT * FROM nowhere_€")
except psycopg.errors.UndefinedTable as e:
    assert "nowhere_€" in str(e), str(e)
print("done")
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", script, &proxy.conninfo()]);
    common::run_program(cmd, "done").await;
    let rows = c
        .query("SELECT name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["€uro", "œuvre", "Ÿ"]);
}
