//! Two-phase commit recovery against real Postgres: in-doubt prepared transactions are
//! committed when the decision log says commit, and rolled back (presumed abort) otherwise.

mod common;

use common::{Proxy, TestEnv};
use shardwire::twophase::{self, LOG_TABLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_in_doubt_transactions_by_the_log() {
    let env = TestEnv::new(2).await;
    // Starting the proxy creates the log table (the clusters allow prepared transactions).
    let proxy = Proxy::start(&env, "countries: { strategy: reference }", "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY)")
        .await
        .unwrap();
    let s0 = env.shard_client(0).await;
    let s1 = env.shard_client(1).await;
    // Two transactions prepared on both shards, as a proxy that died mid-commit leaves them.
    let tag = format!("{:08x}", rand::random::<u32>());
    let decided = format!("shardwire_test{tag}_1");
    let undecided = format!("shardwire_test{tag}_2");
    for (gid, code) in [(&decided, "AA"), (&undecided, "BB")] {
        for s in [&s0, &s1] {
            s.batch_execute(&format!(
                "BEGIN; INSERT INTO countries VALUES ('{code}'); PREPARE TRANSACTION '{gid}'"
            ))
            .await
            .unwrap();
        }
    }
    s0.execute(
        &format!("INSERT INTO {LOG_TABLE} (gid, decision) VALUES ($1, 'commit')"),
        &[&decided],
    )
    .await
    .unwrap();
    let map = shardwire::shardmap::ShardMap::from_yaml_str(
        &env.shard_map_yaml("countries: { strategy: reference }", ""),
        "test",
    )
    .unwrap();
    let n = twophase::recover(&map, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(n, 4, "two transactions on two shards");
    for s in [&s0, &s1] {
        let rows: Vec<String> = s
            .query("SELECT code FROM countries ORDER BY code", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            rows,
            ["AA"],
            "the decided one committed, the other rolled back"
        );
        let left: i64 = s
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }
    let decision: String = s0
        .query_one(
            &format!("SELECT decision FROM {LOG_TABLE} WHERE gid = $1"),
            &[&undecided],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(decision, "abort", "presumed abort is recorded");
    // And a reference write in a transaction through the proxy commits on both shards.
    for sql in ["BEGIN", "INSERT INTO countries VALUES ('CC')", "COMMIT"] {
        c.batch_execute(sql).await.unwrap();
    }
    // One string that would commit on each shard by itself is refused.
    let e = c
        .batch_execute("BEGIN; INSERT INTO countries VALUES ('DD'); COMMIT")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    for s in [&s0, &s1] {
        let n: i64 = s
            .query_one("SELECT count(*) FROM countries WHERE code = 'CC'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}
