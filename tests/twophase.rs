//! Two-phase commit recovery against real Postgres: in-doubt prepared transactions are
//! committed when the decision log says commit, and rolled back (presumed abort) otherwise.

mod common;

use common::{Proxy, TestEnv};
use shardwire::backend::twophase::{self, LOG_TABLE};

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
    // Prepared as the role the proxy's clients run as, as the proxy's own would be.
    let p0 = env.shard_client_for_clients(0).await;
    let p1 = env.shard_client_for_clients(1).await;
    // Two transactions prepared on both shards, as a proxy that died mid-commit leaves them.
    let tag = format!("{:08x}", rand::random::<u32>());
    let decided = format!("shardwire_test{tag}_1");
    let undecided = format!("shardwire_test{tag}_2");
    for (gid, code) in [(&decided, "AA"), (&undecided, "BB")] {
        for s in [&p0, &p1] {
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
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(
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
    // One string with its own BEGIN/COMMIT: the proxy follows them across the shards, and
    // its COMMIT commits on both as one (issue 19; it used to be refused).
    c.batch_execute("BEGIN; INSERT INTO countries VALUES ('DD'); COMMIT")
        .await
        .unwrap();
    for s in [&s0, &s1] {
        let n: i64 = s
            .query_one(
                "SELECT count(*) FROM countries WHERE code IN ('CC', 'DD')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_writes_and_insert_select_are_atomic_and_stay_on_their_shards() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(
        &env,
        "users: { key: id, type: bigint, strategy: hash }\norders: { key: user_id, type: bigint, strategy: hash }",
        "",
    )
    .await;
    let c = proxy.client().await;
    for ddl in [
        "CREATE TABLE users (id bigint PRIMARY KEY, score int NOT NULL)",
        "CREATE TABLE orders (user_id bigint NOT NULL, id bigint NOT NULL, PRIMARY KEY (user_id, id))",
    ] {
        c.batch_execute(ddl).await.unwrap();
    }
    let values: Vec<String> = (1..=300).map(|i| format!("({i}, {i})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, score) VALUES {}",
        values.join(", ")
    ))
    .await
    .unwrap();
    // INSERT … SELECT taking the key from a co-located table runs on every shard, each
    // inserting its own rows.
    let n = c
        .execute(
            "INSERT INTO orders (user_id, id) SELECT u.id, u.score * 10 FROM users u",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 300);
    for i in 0..3 {
        let s = env.shard_client(i).await;
        let stray: i64 = s
            .query_one(
                "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = o.user_id)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stray, 0, "shard {i}: every order sits with its user");
    }
    // A keyless UPDATE that one shard rejects changes nothing anywhere.
    let s0 = env.shard_client(0).await;
    s0.batch_execute("ALTER TABLE users ADD CONSTRAINT small CHECK (score < 1000)")
        .await
        .unwrap();
    let e = c
        .execute("UPDATE users SET score = score + 5000", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("23514"), "{e}");
    let total: i64 = c
        .query_one("SELECT sum(score)::bigint FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, (1..=300).sum::<i64>(), "no shard kept the update");
    // The same statement in the simple protocol, and a successful one.
    assert!(c
        .simple_query("UPDATE users SET score = score + 5000")
        .await
        .is_err());
    let n = c
        .execute("UPDATE users SET score = score + 1", &[])
        .await
        .unwrap();
    assert_eq!(n, 300, "the tag sums every shard's rows");

    // A multi-row INSERT with parameter keys is split per shard, parameters renumbered.
    let ids: Vec<i64> = (2001..=2012).collect();
    let one = 1i32;
    let mut sql = String::from("INSERT INTO users (id, score) VALUES ");
    let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        if k > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${})", 2 * k + 1, 2 * k + 2));
        args.push(id);
        args.push(&one);
    }
    sql.push_str(" RETURNING id");
    let mut got: Vec<i64> = c
        .query(&sql, &args)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    got.sort();
    assert_eq!(got, ids, "RETURNING gathers every shard's rows");
    let per = env
        .per_shard_i64("SELECT count(*) FROM users WHERE id BETWEEN 2001 AND 2012")
        .await;
    assert_eq!(per.iter().sum::<i64>(), 12);
    assert!(per.iter().filter(|&&n| n > 0).count() > 1, "{per:?}");

    // COPY inside a transaction joins it: gone after ROLLBACK, on every shard after COMMIT.
    let mut c = c;
    for commit in [false, true] {
        let tx = c.transaction().await.unwrap();
        tx.execute("UPDATE users SET score = 0 WHERE id = 1", &[])
            .await
            .unwrap();
        let sink = tx
            .copy_in::<_, bytes::Bytes>("COPY users (id, score) FROM STDIN")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        let rows: String = (1001..=1100).map(|i| format!("{i}\t1\n")).collect();
        use futures::SinkExt;
        sink.send(bytes::Bytes::from(rows)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 100);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM users WHERE id BETWEEN 1001 AND 1100",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, if commit { 100 } else { 0 });
    }
    let per = env
        .per_shard_i64("SELECT count(*) FROM users WHERE id BETWEEN 1001 AND 1100")
        .await;
    assert_eq!(per.iter().sum::<i64>(), 100);
    assert!(
        per.iter().all(|&n| n > 0),
        "spread over the shards: {per:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reference_writes_are_atomic() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, "countries: { strategy: reference }", "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    // Plant a row on one shard only: the second INSERT of the pipeline fails there.
    env.shard_client(1)
        .await
        .batch_execute("INSERT INTO countries VALUES ('ZZ', 'planted')")
        .await
        .unwrap();
    let ins = c
        .prepare("INSERT INTO countries (code, name) VALUES ($1, $2)")
        .await
        .unwrap();
    // Two Bind/Execute pairs in one pipeline (tokio-postgres pipelines concurrent queries).
    let (a, b) = tokio::join!(
        c.execute(&ins, &[&"AA", &"a"]),
        c.execute(&ins, &[&"ZZ", &"z"])
    );
    assert!(a.is_err() || b.is_err(), "the duplicate fails: {a:?} {b:?}");
    // Either execute may fail first; no shard may hold 'AA' unless every shard does.
    let all = env
        .per_shard_i64("SELECT count(*) FROM countries WHERE code = 'AA'")
        .await;
    assert!(all.iter().all(|&x| x == all[0]), "{all:?}");
    let zz = env
        .per_shard_i64("SELECT count(*) FROM countries WHERE code = 'ZZ'")
        .await;
    assert_eq!(zz, vec![0, 1, 0], "only the planted row");
}
