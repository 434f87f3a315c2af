//! pgbench through the proxy with a custom script keyed by id (point SELECT + UPDATE), in
//! each query mode: zero failed transactions, nonzero throughput, and every committed
//! UPDATE on the shards exactly once. Short runs (`-T 5`) for CI; the 30 s runs
//! are done by hand with the same script.

mod common;

use std::process::Command;

use common::{Proxy, TestEnv};

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";
const USERS: i64 = 1000;
const SCRIPT: &str = "\\set id random(1, 1000)\n\
                      SELECT name, balance FROM users WHERE id = :id;\n\
                      UPDATE users SET balance = balance + 1 WHERE id = :id;\n";

async fn run_mode(mode: &str) {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    common::create_users(&c, ", balance bigint NOT NULL DEFAULT 0", USERS).await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("point.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let bin = common::pgbench_path();
    let port = proxy.port().to_string();
    let mode_arg = mode.to_string();
    // The proxy runs on this runtime: wait for pgbench on a blocking thread.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["-n", "-h", "127.0.0.1", "-p", &port, "-U", "app"])
            .args(["-c", "8", "-j", "2", "-T", "5", "-M", &mode_arg, "-f"])
            .arg(&script)
            .arg("app")
            .env("PGPASSWORD", "app-secret")
            .output()
            .expect("run pgbench")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let failed = common::report_field(&stdout, "number of failed transactions:")
        .unwrap_or_else(|| panic!("no failed-transactions line:\n{stdout}"));
    assert!(
        failed.starts_with("0 ") || failed == "0",
        "failed transactions: {failed}\n{stderr}"
    );
    let processed: i64 =
        common::report_field(&stdout, "number of transactions actually processed:")
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no processed-transactions line:\n{stdout}"));
    let tps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps line:\n{stdout}"));
    eprintln!("-M {mode}: {processed} transactions, {tps:.0} tps");
    assert!(processed > 0 && tps > 0.0, "no throughput:\n{stdout}");

    // Each transaction's UPDATE is on the shards exactly once.
    let total: i64 = env
        .per_shard_i64("SELECT coalesce(sum(balance), 0)::bigint FROM users")
        .await
        .iter()
        .sum();
    assert_eq!(
        total, processed,
        "sum of balances on the shards vs transactions pgbench reports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_protocol() {
    run_mode("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_protocol() {
    run_mode("extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_statements() {
    run_mode("prepared").await;
}
