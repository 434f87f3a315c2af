//! tokio-postgres through the proxy: its prepared statements (named, described at
//! prepare), pipelining of concurrent queries on one client, `copy_in`, and its cancel token.

use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::Report;
use crate::Run;

async fn connect(url: &str) -> Client {
    crate::common::connect(url).await
}

async fn v_of(c: &Client, id: i64) -> Option<String> {
    c.query_opt("SELECT v FROM items WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// Runs the 12 scenarios; returns the report.
pub async fn run(run: &Run) -> String {
    let url = run.url();
    let ids = run.ids.clone();
    let mut r = Report::default();

    // connect
    let mut c = connect(&url).await;
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let ver = c.simple_query("SHOW server_version").await.unwrap();
    assert!(!crate::common::rows_as_maps(ver)[0]["server_version"].is_empty());
    r.ok("connect");

    // ddl
    c.batch_execute("DROP TABLE IF EXISTS items").await.unwrap();
    c.batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    r.ok("ddl");

    // crud
    for &id in &ids {
        let n = c
            .execute(
                "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)",
                &[&id, &1i32, &format!("v{id}")],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(v_of(&c, id).await.as_deref(), Some(&*format!("v{id}")));
        let n = c
            .execute(
                "UPDATE items SET v = $2 WHERE id = $1",
                &[&id, &format!("u{id}")],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(v_of(&c, id).await.as_deref(), Some(&*format!("u{id}")));
    }
    let last = ids[2];
    assert_eq!(
        c.execute("DELETE FROM items WHERE id = $1", &[&last])
            .await
            .unwrap(),
        1
    );
    assert_eq!(v_of(&c, last).await, None);
    c.execute(
        "INSERT INTO items (id, grp, v) VALUES ($1, 1, $2)",
        &[&last, &format!("u{last}")],
    )
    .await
    .unwrap();
    let ret: i64 = c
        .query_one(
            "INSERT INTO items (id, grp, v) VALUES ($1, 1, 'r') RETURNING id",
            &[&900i64],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ret, 900);
    c.execute("DELETE FROM items WHERE id = 900", &[])
        .await
        .unwrap();
    r.ok("crud");

    // prepared
    let sel = c
        .prepare("SELECT v FROM items WHERE id = $1")
        .await
        .unwrap();
    for i in 0..100 {
        let id = ids[i % 3];
        let v: String = c.query_one(&sel, &[&id]).await.unwrap().get(0);
        assert_eq!(v, format!("u{id}"));
    }
    let upd = c
        .prepare("UPDATE items SET grp = grp + 1 WHERE id = $1")
        .await
        .unwrap();
    for i in 0..30 {
        assert_eq!(c.execute(&upd, &[&ids[i % 3]]).await.unwrap(), 1);
    }
    for &id in &ids {
        let g: i32 = c
            .query_one("SELECT grp FROM items WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(g, 11, "grp of {id}");
    }
    r.ok("prepared");

    // multi_shard_read
    let ins = c
        .prepare("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for id in 1001i64..=1100 {
        c.execute(&ins, &[&id, &((id % 5) as i32), &format!("m{id}")])
            .await
            .unwrap();
    }
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM items WHERE id BETWEEN $1 AND $2",
            &[&1001i64, &1100i64],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let groups: Vec<(i32, i64)> = c
        .query(
            "SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(groups, (0..5).map(|g| (g, 20)).collect::<Vec<_>>());
    let top: Vec<i64> = c
        .query(
            "SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(top, [1100, 1099, 1098]);
    let sum: i64 = c
        .query_one(
            "SELECT sum(id)::bigint FROM items WHERE id BETWEEN 1001 AND 1100",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 105_050);
    let mut any: Vec<(i64, String)> = c
        .query(
            "SELECT id, v FROM items WHERE id = ANY($1)",
            &[&vec![1001i64, 1050, 1099]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
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
        let t = c.transaction().await.unwrap();
        for id in keys {
            t.execute(
                "UPDATE items SET v = $2 WHERE id = $1",
                &[id, &format!("c{tag}")],
            )
            .await
            .unwrap();
        }
        t.commit().await.unwrap();
        let t = c.transaction().await.unwrap();
        for id in keys {
            t.execute(
                "UPDATE items SET v = $2 WHERE id = $1",
                &[id, &format!("r{tag}")],
            )
            .await
            .unwrap();
        }
        t.rollback().await.unwrap();
        let t = c.transaction().await.unwrap();
        for id in keys {
            t.execute(
                "UPDATE items SET v = $2 WHERE id = $1",
                &[id, &format!("e{tag}")],
            )
            .await
            .unwrap();
        }
        let dup = keys[keys.len() - 1];
        let e = t
            .execute(
                "INSERT INTO items (id, grp, v) VALUES ($1, 0, 'dup')",
                &[&dup],
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(&SqlState::UNIQUE_VIOLATION), "{e}");
        t.rollback().await.unwrap();
        for id in keys {
            assert_eq!(v_of(&c, *id).await.as_deref(), Some(&*format!("c{tag}")));
        }
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        r.ok(scenario);
    }

    // batch: tokio-postgres pipelines the queries issued together on one client.
    let futs = run.batch_ids.iter().map(|id| {
        let c = &c;
        let v = format!("b{id}");
        async move {
            c.execute(
                "INSERT INTO items (id, grp, v) VALUES ($1, 7, $2)",
                &[id, &v],
            )
            .await
        }
    });
    for n in futures::future::try_join_all(futs).await.unwrap() {
        assert_eq!(n, 1);
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE grp = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
    assert_eq!(
        c.execute("DELETE FROM items WHERE grp = 7", &[])
            .await
            .unwrap(),
        50
    );
    r.ok("batch");

    // copy
    let sink = c
        .copy_in("COPY items (id, grp, v) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(super::copy_rows()))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 300);
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE grp = 8", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 300);
    assert_eq!(v_of(&c, 2150).await.as_deref(), Some("c2150"));
    r.ok("copy");

    // concurrency: 20 clients, each on its own row, for 3 seconds.
    for id in 3001i64..=3020 {
        c.execute("INSERT INTO items (id, grp, v) VALUES ($1, 0, 'w')", &[&id])
            .await
            .unwrap();
    }
    let until = Instant::now() + Duration::from_secs(3);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..20i64 {
        let url = url.clone();
        workers.spawn(async move {
            let c = connect(&url).await;
            let id = 3001 + w;
            let mut done = 0i32;
            // At least one round each, however slow the machine (connecting 20 clients
            // on a loaded CI box can take most of the window).
            while done == 0 || Instant::now() < until {
                c.execute("UPDATE items SET grp = grp + 1 WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                done += 1;
                let g: i32 = c
                    .query_one("SELECT grp FROM items WHERE id = $1", &[&id])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(g, done, "worker {w}");
            }
            (id, done)
        });
    }
    let mut ops = 0;
    while let Some(done) = workers.join_next().await {
        let (id, done) = done.expect("worker panicked");
        let g: i32 = c
            .query_one("SELECT grp FROM items WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(g, done);
        ops += done;
    }
    assert!(ops > 0);
    r.line(&format!("concurrency ops={ops}"));
    r.ok("concurrency");

    // cancel
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let t0 = Instant::now();
    let e = c.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    canceller.await.unwrap().unwrap();
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    r.ok("cancel");

    // statement_timeout
    c.batch_execute("SET statement_timeout = 300")
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = c.query("SELECT pg_sleep(2)", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(1500));
    c.batch_execute("RESET statement_timeout").await.unwrap();
    c.query("SELECT pg_sleep(0.5)", &[]).await.unwrap();
    r.ok("statement_timeout");

    r.done()
}
