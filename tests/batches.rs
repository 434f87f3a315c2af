//! Batches across shards (issue 19): pipelines of one statement executed with keys on
//! several shards (`executemany`), run as one implicit transaction as Postgres runs them.

mod common;

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;

/// Issue 19: psycopg's and asyncpg's `executemany` of rows on several shards
/// (`tests/py/executemany.py`): one implicit transaction across shards, replies in order,
/// every row on the shard its key maps to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executemany_across_shards_is_one_transaction() {
    let env = TestEnv::new(3).await;
    let tables = "em_users: { key: id, type: bigint, strategy: hash }\n\
                  em_auto: { key: id, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let mut cmd = common::python("executemany.py");
    cmd.arg("127.0.0.1").arg(proxy.port().to_string());
    common::run_program(cmd, "executemany checks passed").await;
    let users = env.placed("em_users", "id").await;
    assert_eq!(users.len(), 2132);
    for (s, id) in users.iter().chain(env.placed("em_auto", "id").await.iter()) {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    assert!((0..3).all(|s| users.iter().any(|p| p.0 == s)));
}

/// Issue 19: `INSERT … SELECT * FROM UNNEST($1::int8[], $2::text[])` — sqlx's bulk insert,
/// arrays bound in binary — over rows on every shard: each shard gets its rows' sub-arrays,
/// RETURNING comes back in the client's row order, inside a transaction the parts join it;
/// text-format arrays (quoted elements, NULL) work too; a NULL key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnest_of_bound_arrays_is_split_by_shard() {
    use sqlx::Connection;
    let env = TestEnv::new(3).await;
    let tables = "au_users: { key: id, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    proxy
        .client()
        .await
        .batch_execute("CREATE TABLE au_users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let url = format!("postgres://app:app-secret@127.0.0.1:{}/app", proxy.port());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    const SQL: &str =
        "INSERT INTO au_users (id, name) SELECT * FROM UNNEST($1::int8[], $2::text[])";
    let ids: Vec<i64> = (1..=1000).map(|i| (i * 7919) % 1000 + 1).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
    let done = sqlx::query(SQL)
        .bind(&ids)
        .bind(&names)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1000);
    let placed = env.placed("au_users", "id").await;
    assert_eq!(placed.len(), 1000);
    for (s, id) in &placed {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    assert!((0..3).all(|s| placed.iter().any(|p| p.0 == s)));
    // RETURNING in the client's row order.
    let more: Vec<i64> = (2000..2100).rev().collect();
    let back: Vec<i64> = sqlx::query_scalar(&format!("{SQL} RETURNING id"))
        .bind(&more)
        .bind(vec!["r".to_string(); more.len()])
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(back, more);
    // In a transaction the parts join it: rolled back, nothing stays.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(SQL)
        .bind(vec![3000i64, 3001, 3002, 3003])
        .bind(vec!["t".to_string(); 4])
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // A duplicate on one shard undoes the other shards' rows.
    let e = sqlx::query(SQL)
        .bind(vec![4000i64, 4001, 4002, 1])
        .bind(vec!["d".to_string(); 4])
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("duplicate key"), "{e}");
    // A NULL key is refused.
    let e = sqlx::query(SQL)
        .bind(vec![Some(5000i64), None])
        .bind(vec!["x".to_string(); 2])
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must not be NULL"), "{e}");
    conn.close().await.unwrap();
    let n: i64 = env
        .per_shard_i64("SELECT count(*) FROM au_users")
        .await
        .iter()
        .sum();
    assert_eq!(n, 1100, "only the committed rows");

    // Text-format arrays, through the raw protocol: quoted elements and NULL.
    let mut w = common::wire::Wire::login(proxy.port(), &[]).await;
    w.parse("", SQL)
        .bind("", "", &["{6001, 6002,6003}", r#"{"a, b",NULL,"c\"d"}"#])
        .execute("", 0)
        .sync();
    w.send().await;
    let r = w.until_ready().await;
    assert_eq!(common::wire::tags(&r), "12CZ", "{r:?}");
    let c = proxy.client().await;
    let rows = c
        .query(
            "SELECT id, name FROM au_users WHERE id > 6000 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (6001, Some("a, b".to_string())),
            (6002, None),
            (6003, Some("c\"d".to_string()))
        ]
    );
}
