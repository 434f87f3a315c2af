//! pgbench through the proxy in one protocol mode (`-M simple|extended|prepared`): a
//! custom script of key updates, reads and upserts on rows spread over the shards, one client
//! first (CRUD, and the prepared statements with `-M prepared`), then 20 clients for 3
//! seconds; every transaction's effect is counted on the rows afterwards.

use super::Report;
use crate::Run;

const SCRIPT: &str = "\\set id random(3001, 3020)
\\set other :id + 1000
UPDATE items SET grp = grp + 1 WHERE id = :id;
SELECT grp FROM items WHERE id = :id;
INSERT INTO items (id, grp, v) VALUES (:other, 1, 'p') ON CONFLICT (id) DO UPDATE SET grp = items.grp + 1;
";

/// Runs pgbench with `args`; asserts no failed transaction; returns how many it processed.
fn pgbench(url: &str, mode: &str, args: &[&str]) -> i64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("matrix.sql");
    std::fs::write(&file, SCRIPT).expect("write script");
    let out = std::process::Command::new(crate::common::pgbench_path())
        .args(["-n", "-M", mode, "-f"])
        .arg(&file)
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench -M {mode}: {text}{err}");
    if let Some(failed) = crate::common::report_field(&text, "number of failed transactions:") {
        assert!(failed.starts_with("0 "), "pgbench -M {mode}: {text}");
    }
    crate::common::report_field(&text, "number of transactions actually processed:")
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("pgbench -M {mode} report: {text}{err}"))
}

/// Runs the scenarios pgbench has (connect, crud, prepared with `-M prepared`,
/// concurrency); the rest are n/a.
pub async fn run(run: &Run, mode: &str) -> String {
    let c = run.proxy.client().await;
    c.batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)")
        .await
        .unwrap();
    c.batch_execute(&super::worker_rows()).await.unwrap();
    let url = run.url();
    let prepares = mode == "prepared";
    let mode = mode.to_string();
    let (one, many) = tokio::task::spawn_blocking(move || {
        let one = pgbench(&url, &mode, &["-c", "1", "-t", "200"]);
        let many = pgbench(&url, &mode, &["-c", "20", "-j", "2", "-T", "3"]);
        (one, many)
    })
    .await
    .expect("pgbench task");
    assert_eq!(one, 200);
    let mut sums = [0i64; 2];
    for (sum, from) in sums.iter_mut().zip([3001i64, 4001]) {
        *sum = c
            .query_one(
                "SELECT sum(grp)::bigint FROM items WHERE id BETWEEN $1 AND $1 + 19",
                &[&from],
            )
            .await
            .unwrap()
            .get(0);
    }
    let [updated, upserted] = sums;
    assert_eq!(updated, one + many, "every update counted");
    assert_eq!(upserted, one + many, "every upsert counted");

    let mut r = Report::default();
    r.ok("connect");
    r.na("ddl", "pgbench runs DML scripts");
    r.ok("crud");
    if prepares {
        r.ok("prepared");
    } else {
        r.na("prepared", "only -M prepared prepares");
    }
    for s in [
        "multi_shard_read",
        "txn_one_shard",
        "txn_two_shards",
        "batch",
        "copy",
    ] {
        r.na(s, "not a pgbench scenario");
    }
    r.line(&format!("concurrency ops={many}"));
    r.ok("concurrency");
    r.na("cancel", "not a pgbench scenario");
    r.na("statement_timeout", "not a pgbench scenario");
    r.done()
}
