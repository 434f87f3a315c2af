//! The test harness itself: databases are created on every cluster and dropped afterwards.

mod common;

use common::{connect, TestEnv, CLUSTERS_ENV};
use shardwire::localpg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_creates_and_drops_databases() {
    // The databases must be gone from clusters that outlive the env: use the shared ones
    // when the test script provides them, else clusters this test keeps until the end.
    let (env, _clusters) = if std::env::var(CLUSTERS_ENV).is_ok_and(|v| v.split(',').count() >= 4) {
        (TestEnv::new(3).await, Vec::new())
    } else {
        let clusters = tokio::task::spawn_blocking(|| localpg::start_many(4))
            .await
            .unwrap()
            .expect("start clusters");
        let ports: Vec<u16> = clusters.iter().map(|c| c.port).collect();
        (TestEnv::on_ports(&ports, 3).await, clusters)
    };
    assert_eq!(env.shard_count(), 3);
    let db = env.db_name().to_string();
    let mut ports: Vec<u16> = (0..3).map(|i| env.shard_port(i)).collect();
    let reference_port: u16 = env
        .reference_url()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port in reference url");
    ports.push(reference_port);
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "shards and reference must be on 4 clusters: {ports:?}"
    );

    for i in 0..3 {
        assert!(env.shard_url(i).ends_with(&format!("/{db}")));
        let c = env.shard_client(i).await;
        c.batch_execute("CREATE TABLE t (id bigint primary key); INSERT INTO t VALUES (1)")
            .await
            .expect("create table on shard");
        let row = c
            .query_one("SELECT current_database(), count(*) FROM t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db);
        assert_eq!(row.get::<_, i64>(1), 1);
        assert_eq!(env.shard_psql(i, "SELECT count(*) FROM t").trim(), "1");
    }
    let r = env.reference_client().await;
    r.batch_execute("CREATE TABLE t (id bigint primary key)")
        .await
        .unwrap();

    let yaml = env.shard_map_yaml("users: { key: id, type: bigint, strategy: hash }\n", "");
    assert!(yaml.contains("  users: { key: id"), "{yaml}");
    for i in 0..3 {
        let addr = format!("@127.0.0.1:{}/{}", env.shard_port(i), env.db_name());
        assert!(yaml.contains(&addr), "{yaml}");
    }

    // Keep a client open: dropping the env must still remove the databases (FORCE).
    let _open = env.shard_client(0).await;
    drop(env);

    for port in ports {
        let admin = connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "database {db} still exists on port {port}");
    }
}
