//! Which shards a multi-shard read reaches: a key list runs only on the shards its keys land
//! on (proved with a table that exists on some shards only, so touching any other shard would
//! fail), and EXPLAIN through the proxy names the route.

mod common;

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::SimpleQueryMessage;

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n\
                      probe: { key: id, type: bigint, strategy: hash }\n";

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lists_run_only_on_their_shards() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    let shard_of = |id: i64| map.hash_shard(&KeyValue::Int(id));
    // Keys on shards 0 and 1; shard 2 holds neither. (Shard 0 must have the table: drivers
    // prepare statements before binding keys, and that Describe goes to the default shard.)
    let a = (1..1000).find(|&k| shard_of(k) == 0).unwrap();
    let b = (1..1000).find(|&k| shard_of(k) == 1).unwrap();
    let other = 2;
    // `probe` exists only on the shards of a and b: a query reaching the third shard fails.
    for s in [shard_of(a), shard_of(b)] {
        env.shard_client(s)
            .await
            .batch_execute("CREATE TABLE probe (id bigint PRIMARY KEY, v text)")
            .await
            .unwrap();
    }
    let c = proxy.client().await;
    c.execute("INSERT INTO probe (id, v) VALUES ($1, 'a')", &[&a])
        .await
        .unwrap();
    c.execute("INSERT INTO probe (id, v) VALUES ($1, 'b')", &[&b])
        .await
        .unwrap();

    // Literal IN list, simple protocol, merged with ORDER BY.
    let got = c
        .simple_query(&format!(
            "SELECT v FROM probe WHERE id IN ({a}, {b}) ORDER BY v DESC"
        ))
        .await
        .unwrap();
    assert_eq!(rows(&got), vec!["b", "a"]);
    // Parameters (extended protocol): IN ($1, $2) and = ANY($1).
    let r = c
        .query("SELECT count(*) FROM probe WHERE id IN ($1, $2)", &[&a, &b])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 2);
    // The keyless form reaches the third shard, where the table is missing.
    let e = c
        .simple_query("SELECT count(*) FROM probe")
        .await
        .unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("probe"), "{e:?}");
    // EXPLAIN names exactly the shards involved.
    let plan = rows(
        &c.simple_query(&format!(
            "EXPLAIN SELECT * FROM probe WHERE id IN ({a}, {b})"
        ))
        .await
        .unwrap(),
    );
    let names = [format!("s{}", shard_of(a)), format!("s{}", shard_of(b))];
    assert!(plan[0].contains("runs on 2 shards"), "{plan:?}");
    for n in &names {
        assert!(plan.iter().any(|l| l == &format!("Shard {n}:")), "{plan:?}");
    }
    assert!(
        !plan.iter().any(|l| l == &format!("Shard s{other}:")),
        "{plan:?}"
    );
    let one = rows(
        &c.simple_query(&format!("EXPLAIN SELECT * FROM probe WHERE id = {a}"))
            .await
            .unwrap(),
    );
    assert_eq!(one[0], format!("Shardwire: runs on shard s{}", shard_of(a)));
    assert!(one.iter().any(|l| l.contains("Scan")), "{one:?}");
}
