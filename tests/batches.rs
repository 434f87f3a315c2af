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
    assert_eq!(users.len(), 192);
    for (s, id) in users.iter().chain(env.placed("em_auto", "id").await.iter()) {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    assert!((0..3).all(|s| users.iter().any(|p| p.0 == s)));
}
