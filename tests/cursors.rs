//! Cursors over queries that span shards (issue 19): `DECLARE … CURSOR [WITH HOLD] FOR
//! <multi-shard SELECT>` kept by the proxy, fetched page by page with `FETCH n` / `MOVE`,
//! compared step by step with one unsharded reference Postgres holding the same rows.

mod common;

use common::{Proxy, TestEnv};
use tokio_postgres::{Client, SimpleQueryMessage};

const TABLES: &str = "cu_items: { key: id, type: bigint, strategy: hash }\n";

/// The rows (as text) and command tag of one simple query (the last statement's).
async fn run(c: &Client, sql: &str) -> Result<(Vec<Vec<Option<String>>>, String), String> {
    let msgs = c.simple_query(sql).await.map_err(|e| {
        e.as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string())
    })?;
    let mut rows = Vec::new();
    let mut tag = String::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            SimpleQueryMessage::CommandComplete(n) => tag = n.to_string(),
            _ => {}
        }
    }
    Ok((rows, tag))
}

/// Runs `steps` through the proxy and on the reference, asserting equal replies (rows in
/// order, or only as sets where `unordered` is set for that step).
async fn same(proxy: &Client, reference: &Client, steps: &[&str]) {
    for step in steps {
        let got = run(proxy, step).await;
        let want = run(reference, step).await;
        let code = |r: &Result<_, String>| r.as_ref().err().map(|e| e[..5].to_string());
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "step {step}"),
            _ => assert_eq!(code(&got), code(&want), "step {step}: {got:?} vs {want:?}"),
        }
    }
}

async fn items(c: &Client, n: i64) {
    c.batch_execute(
        "DROP TABLE IF EXISTS cu_items; \
         CREATE TABLE cu_items (id bigint PRIMARY KEY, grp int NOT NULL, name text, price numeric)",
    )
    .await
    .unwrap();
    let values: Vec<String> = (1..=n)
        .map(|g| {
            let name = if g % 11 == 0 {
                "NULL".to_string()
            } else {
                format!("'item-{g}'")
            };
            format!(
                "({g}, {}, {name}, {}.{})",
                g % 7,
                g * 37 % 1000 / 10,
                g % 10
            )
        })
        .collect();
    for chunk in values.chunks(500) {
        c.batch_execute(&format!(
            "INSERT INTO cu_items (id, grp, name, price) VALUES {}",
            chunk.join(", ")
        ))
        .await
        .unwrap();
    }
}

/// Issue 19: a cursor over a sorted multi-shard query, fetched in pages of different sizes,
/// with MOVE, LIMIT/OFFSET, DESC, ties and NULLs, gives exactly the reference's rows; a
/// cursor over an aggregate (gathered) too; CLOSE and the transaction's end drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_cursor_pages_match_reference() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let p = proxy.client().await;
    let r = env.reference_client().await;
    for c in [&p, &r] {
        items(c, 2500).await;
    }
    same(
        &p,
        &r,
        &[
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT id, name, price FROM cu_items ORDER BY price DESC, id",
            "FETCH 7 FROM c",
            "FETCH NEXT FROM c",
            "MOVE 500 IN c",
            "FETCH FORWARD 1200 FROM c",
            "FETCH 3 c",
            "FETCH ALL FROM c",
            "FETCH 5 FROM c",
            "MOVE 5 FROM c",
            "CLOSE c",
            "DECLARE d NO SCROLL CURSOR FOR SELECT name, id FROM cu_items ORDER BY name NULLS FIRST, id LIMIT 1000 OFFSET 250",
            "FETCH 300 FROM d",
            "FETCH FORWARD ALL FROM d",
            "DECLARE g CURSOR FOR SELECT grp, count(*), sum(price) FROM cu_items GROUP BY grp ORDER BY grp",
            "FETCH 3 FROM g",
            "FETCH ALL FROM g",
            "COMMIT",
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT id FROM cu_items ORDER BY id",
            "FETCH 2 FROM c",
            "COMMIT",
        ],
    )
    .await;
    // After COMMIT the cursor is gone.
    same(&p, &r, &["FETCH 1 FROM c"]).await;
    // CLOSE ALL closes merged cursors and the shards' own, wherever they live.
    same(
        &p,
        &r,
        &[
            "BEGIN",
            "DECLARE a CURSOR FOR SELECT id FROM cu_items ORDER BY id",
            "DECLARE b CURSOR FOR SELECT id FROM cu_items WHERE id = 5",
            "DECLARE b2 CURSOR FOR SELECT id FROM cu_items WHERE id = 6",
            "FETCH 1 FROM b",
            "FETCH 1 FROM a",
            "CLOSE ALL",
            "FETCH 1 FROM b2",
            "ROLLBACK",
        ],
    )
    .await;
    // A cursor without WITH HOLD needs a block; other directions and SCROLL are refused.
    let e = run(
        &p,
        "DECLARE c CURSOR FOR SELECT id FROM cu_items ORDER BY id",
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("25P01"), "{e}");
    run(&p, "BEGIN").await.unwrap();
    let e = run(
        &p,
        "DECLARE s SCROLL CURSOR FOR SELECT id FROM cu_items ORDER BY id",
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("0A000"), "{e}");
    run(&p, "ROLLBACK").await.unwrap();
    run(&p, "BEGIN").await.unwrap();
    run(
        &p,
        "DECLARE c CURSOR FOR SELECT id FROM cu_items ORDER BY id",
    )
    .await
    .unwrap();
    run(&p, "FETCH 3 FROM c").await.unwrap();
    let e = run(&p, "FETCH BACKWARD 1 FROM c").await.unwrap_err();
    assert!(e.starts_with("0A000"), "{e}");
    let e = run(&p, "FETCH 1 FROM c").await.unwrap_err();
    assert!(e.starts_with("25P02"), "{e}");
    run(&p, "ROLLBACK").await.unwrap();
    // A cursor without ORDER BY: the same rows, in some order.
    run(&p, "BEGIN").await.unwrap();
    run(
        &p,
        "DECLARE u CURSOR FOR SELECT id FROM cu_items WHERE grp = 3",
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    loop {
        let (rows, tag) = run(&p, "FETCH 100 FROM u").await.unwrap();
        ids.extend(rows.into_iter().map(|r| r[0].clone().unwrap()));
        if tag != "100" {
            break;
        }
    }
    run(&p, "COMMIT").await.unwrap();
    let (want, _) = run(&r, "SELECT id FROM cu_items WHERE grp = 3")
        .await
        .unwrap();
    let mut want: Vec<String> = want.into_iter().map(|r| r[0].clone().unwrap()).collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);
}

/// Issue 19: `WITH HOLD` cursors over several shards outlive their transaction (declared
/// outside a block or inside one that commits), with transactions between their fetches; one
/// whose transaction rolled back is gone; CLOSE, CLOSE ALL; a script that declares and
/// fetches. Step by step against the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hold_cursors_outlive_their_transaction() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let p = proxy.client().await;
    let r = env.reference_client().await;
    for c in [&p, &r] {
        items(c, 1500).await;
    }
    same(
        &p,
        &r,
        &[
            "DECLARE h CURSOR WITH HOLD FOR SELECT id, name FROM cu_items ORDER BY price, id",
            "FETCH 10 FROM h",
            "BEGIN",
            "UPDATE cu_items SET grp = grp WHERE id = 1",
            "FETCH 5 FROM h",
            "COMMIT",
            "FETCH 5 FROM h",
            "MOVE 100 FROM h",
            "DECLARE t CURSOR WITH HOLD FOR SELECT name, id FROM cu_items ORDER BY name DESC, id",
            "FETCH 4 FROM t",
            "BEGIN",
            "DECLARE h2 CURSOR WITH HOLD FOR SELECT id FROM cu_items ORDER BY id DESC",
            "FETCH 2 FROM h2",
            "COMMIT",
            "FETCH 3 FROM h2",
            "FETCH 3 FROM h",
            "FETCH 2 FROM t",
            "BEGIN",
            "DECLARE h3 CURSOR WITH HOLD FOR SELECT id FROM cu_items ORDER BY id",
            "ROLLBACK",
            "FETCH 1 FROM h3",
            "CLOSE h3",
            "CLOSE h",
            "FETCH 1 FROM h",
            "CLOSE ALL",
            "FETCH 1 FROM h2",
            "FETCH 1 FROM t",
            "BEGIN; DECLARE m CURSOR FOR SELECT id FROM cu_items ORDER BY id; FETCH 4 FROM m; COMMIT",
            "DECLARE g CURSOR WITH HOLD FOR SELECT grp, count(*) FROM cu_items GROUP BY grp ORDER BY grp",
            "FETCH 2 FROM g",
            "FETCH ALL FROM g",
            "CLOSE g",
        ],
    )
    .await;
    // Many held cursors declared and closed: the proxy does not keep backends for them.
    let backends = || async {
        env.per_shard_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
    };
    let before = backends().await;
    for i in 0..20 {
        run(
            &p,
            &format!("DECLARE z{i} CURSOR WITH HOLD FOR SELECT id FROM cu_items ORDER BY id"),
        )
        .await
        .unwrap();
        let (rows, _) = run(&p, &format!("FETCH 2 FROM z{i}")).await.unwrap();
        assert_eq!(rows.len(), 2);
        run(&p, &format!("CLOSE z{i}")).await.unwrap();
    }
    let after = backends().await;
    for (b, a) in before.iter().zip(&after) {
        assert!(a <= &(b + 1), "backends before {before:?}, after {after:?}");
    }
}

/// Issue 19: psycopg 3 and psycopg2 named cursors (`tests/py/cursors.py`): 100,000 rows
/// sorted across 3 shards fetched 1,000 at a time with the proxy's memory flat, bound
/// parameters and binary rows, MOVE, two cursors at once, WITH HOLD under autocommit with
/// statements and transactions between the fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_cursors_of_python_drivers() {
    let env = TestEnv::new(3).await;
    let tables = "cu_big: { key: id, type: bigint, strategy: hash }\n";
    let proxy = Proxy::start(&env, tables, "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE cu_big (id bigint PRIMARY KEY, grp int NOT NULL, name text)")
        .await
        .unwrap();
    let data: String = (1..=100_000)
        .map(|i| format!("{i}\t{}\tname-{i}\n", i % 7))
        .collect();
    let sink = c
        .copy_in("COPY cu_big (id, grp, name) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    use futures::SinkExt;
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let mut cmd = common::python("cursors.py");
    cmd.arg("127.0.0.1")
        .arg(proxy.port().to_string())
        .arg(std::process::id().to_string());
    let out = common::run_program(cmd, "cursor checks passed").await;
    println!("{out}");
}

/// `psql` with `FETCH_COUNT` set: its output for `sql` (psql then reads through
/// `DECLARE _psql_cursor NO SCROLL CURSOR FOR …` and `FETCH FORWARD n`, in a block it opens).
fn psql_fetch_count(conninfo: &str, sql: &str) -> String {
    let bin = shardwire::localpg::pg_bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    let out = std::process::Command::new(bin)
        .args(["-X", "-v", "FETCH_COUNT=70", "-d", conninfo, "-c", sql])
        .env_remove("PGOPTIONS")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 19: psql's `FETCH_COUNT` (a cursor fetched 70 rows at a time) prints what it prints
/// against the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_fetch_count_reads_through_a_cursor() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let p = proxy.client().await;
    let r = env.reference_client().await;
    for c in [&p, &r] {
        items(c, 1000).await;
    }
    for sql in [
        "SELECT id, name, price FROM cu_items ORDER BY price DESC, id",
        "SELECT grp, count(*) FROM cu_items GROUP BY grp ORDER BY 2 DESC, 1",
    ] {
        let got = tokio::task::spawn_blocking({
            let (ci, sql) = (proxy.conninfo(), sql.to_string());
            move || psql_fetch_count(&ci, &sql)
        });
        let want = tokio::task::spawn_blocking({
            let (ci, sql) = (env.reference_url(), sql.to_string());
            move || psql_fetch_count(&ci, &sql)
        });
        let (got, want) = (got.await.unwrap(), want.await.unwrap());
        assert_eq!(got, want, "{sql}");
    }
}
