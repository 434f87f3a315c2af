//! sqlx through the proxy: its statement cache (every query is a named statement, the
//! portal closed before Sync), `pool.begin()`, `QueryBuilder::push_values` for bulk inserts,
//! `copy_in_raw`, a pool of 20, and `statement_timeout` as a connect option (sent in the
//! startup packet's `options`). sqlx has no cancel API: dropping a query's future cancels
//! nothing on the server.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use super::Report;
use crate::Run;

fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

async fn v_of(pool: &PgPool, id: i64) -> Option<String> {
    sqlx::query_scalar("SELECT v FROM items WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Runs the 12 scenarios; returns the report.
pub async fn run(run: &Run) -> String {
    let url = run.url();
    let ids = run.ids.clone();
    let mut r = Report::default();

    // connect
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let ver: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!ver.is_empty());
    r.ok("connect");

    // ddl
    sqlx::query("DROP TABLE IF EXISTS items")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)")
        .execute(&pool)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    r.ok("ddl");

    // crud
    for &id in &ids {
        let done = sqlx::query("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(1i32)
            .bind(format!("v{id}"))
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        assert_eq!(v_of(&pool, id).await.as_deref(), Some(&*format!("v{id}")));
        let done = sqlx::query("UPDATE items SET v = $2 WHERE id = $1")
            .bind(id)
            .bind(format!("u{id}"))
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        assert_eq!(v_of(&pool, id).await.as_deref(), Some(&*format!("u{id}")));
    }
    let last = ids[2];
    let done = sqlx::query("DELETE FROM items WHERE id = $1")
        .bind(last)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    assert_eq!(v_of(&pool, last).await, None);
    sqlx::query("INSERT INTO items (id, grp, v) VALUES ($1, 1, $2)")
        .bind(last)
        .bind(format!("u{last}"))
        .execute(&pool)
        .await
        .unwrap();
    let ret: i64 =
        sqlx::query_scalar("INSERT INTO items (id, grp, v) VALUES ($1, 1, 'r') RETURNING id")
            .bind(900i64)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ret, 900);
    sqlx::query("DELETE FROM items WHERE id = 900")
        .execute(&pool)
        .await
        .unwrap();
    r.ok("crud");

    // prepared: sqlx prepares every query as a named statement and caches it per connection.
    for i in 0..100 {
        let id = ids[i % 3];
        assert_eq!(
            v_of(&pool, id).await.as_deref(),
            Some(&*format!("u{id}")),
            "execution {i}"
        );
    }
    for i in 0..30 {
        let done = sqlx::query("UPDATE items SET grp = grp + 1 WHERE id = $1")
            .bind(ids[i % 3])
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    }
    for &id in &ids {
        let g: i32 = sqlx::query_scalar("SELECT grp FROM items WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(g, 11);
    }
    r.ok("prepared");

    // multi_shard_read
    for id in 1001i64..=1100 {
        sqlx::query("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)")
            .bind(id)
            .bind((id % 5) as i32)
            .bind(format!("m{id}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE id BETWEEN $1 AND $2")
        .bind(1001i64)
        .bind(1100i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 100);
    let groups: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(groups, (0..5).map(|g| (g, 20)).collect::<Vec<_>>());
    let top: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(top, [1100, 1099, 1098]);
    let sum: i64 =
        sqlx::query_scalar("SELECT sum(id)::bigint FROM items WHERE id BETWEEN 1001 AND 1100")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sum, 105_050);
    let mut any: Vec<(i64, String)> = sqlx::query_as("SELECT id, v FROM items WHERE id = ANY($1)")
        .bind(vec![1001i64, 1050, 1099])
        .fetch_all(&pool)
        .await
        .unwrap();
    any.sort();
    assert_eq!(
        any,
        [1001i64, 1050, 1099].map(|i| (i, format!("m{i}"))).to_vec()
    );
    r.ok("multi_shard_read");

    // txn_one_shard, txn_two_shards
    for (scenario, keys, tag) in [
        ("txn_one_shard", &ids[..1], "1"),
        ("txn_two_shards", &ids[..2], "2"),
    ] {
        for (value, commit) in [("c", true), ("r", false)] {
            let mut tx = pool.begin().await.unwrap();
            for id in keys {
                sqlx::query("UPDATE items SET v = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("{value}{tag}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }
        let mut tx = pool.begin().await.unwrap();
        for id in keys {
            sqlx::query("UPDATE items SET v = $2 WHERE id = $1")
                .bind(id)
                .bind(format!("e{tag}"))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let e = sqlx::query("INSERT INTO items (id, grp, v) VALUES ($1, 0, 'dup')")
            .bind(keys[keys.len() - 1])
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23505", "{e}");
        tx.rollback().await.unwrap();
        for id in keys {
            assert_eq!(v_of(&pool, *id).await.as_deref(), Some(&*format!("c{tag}")));
        }
        r.ok(scenario);
    }

    // batch: sqlx's bulk idiom, one multi-row INSERT built with QueryBuilder.
    let mut qb = sqlx::QueryBuilder::new("INSERT INTO items (id, grp, v) ");
    qb.push_values(&run.batch_ids, |mut row, id| {
        row.push_bind(*id)
            .push_bind(7i32)
            .push_bind(format!("b{id}"));
    });
    let done = qb.build().execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected(), 50);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE grp = 7")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 50);
    let done = sqlx::query("DELETE FROM items WHERE grp = 7")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 50);
    r.ok("batch");

    // copy
    let mut conn = pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw("COPY items (id, grp, v) FROM STDIN")
        .await
        .unwrap();
    copy.send(super::copy_rows().into_bytes()).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 300);
    drop(conn);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE grp = 8")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 300);
    assert_eq!(v_of(&pool, 2150).await.as_deref(), Some("c2150"));
    r.ok("copy");

    // concurrency: 20 tasks, each holding its own pooled connection, for 3 seconds.
    for id in 3001i64..=3020 {
        sqlx::query("INSERT INTO items (id, grp, v) VALUES ($1, 0, 'w')")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let until = Instant::now() + Duration::from_secs(3);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..20i64 {
        let pool = pool.clone();
        workers.spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let id = 3001 + w;
            let mut done = 0i32;
            // At least one round each, however slow the machine (connecting 20 clients
            // on a loaded CI box can take most of the window).
            while done == 0 || Instant::now() < until {
                sqlx::query("UPDATE items SET grp = grp + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                done += 1;
                let g: i32 = sqlx::query_scalar("SELECT grp FROM items WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(g, done, "worker {w}");
            }
            (id, done)
        });
    }
    let mut ops = 0;
    while let Some(done) = workers.join_next().await {
        let (id, done) = done.expect("worker panicked");
        let g: i32 = sqlx::query_scalar("SELECT grp FROM items WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(g, done);
        ops += done;
    }
    assert!(ops > 0);
    r.line(&format!("concurrency ops={ops}"));
    r.ok("concurrency");

    r.na("cancel", "sqlx has no cancel API");

    // statement_timeout, the way sqlx users set it: a connect option (startup `options`).
    let opts = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("statement_timeout", "300")]);
    let slow = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = sqlx::query("SELECT pg_sleep(2)")
        .execute(&slow)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(t0.elapsed() < Duration::from_millis(1500));
    let mut conn = slow.acquire().await.unwrap();
    conn.execute("SET statement_timeout = 0").await.unwrap();
    sqlx::query("SELECT pg_sleep(0.5)")
        .execute(&mut *conn)
        .await
        .unwrap();
    // RESET goes back to the startup value, as in Postgres.
    conn.execute("RESET statement_timeout").await.unwrap();
    let row = sqlx::query("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "300ms");
    drop(conn);
    slow.close().await;
    r.ok("statement_timeout");

    pool.close().await;
    r.done()
}
