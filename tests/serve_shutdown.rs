//! `shardwire serve` as a process: SIGTERM stops new clients at once and lets connected ones
//! finish their transaction before the process exits.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_connected_clients() {
    sigterm_drains(&[]).await;
}

/// The same with `--threads 1` (a current-thread runtime on a thread of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_connected_clients_on_one_thread() {
    sigterm_drains(&["--threads", "1"]).await;
}

async fn sigterm_drains(extra_args: &[&str]) {
    let env = TestEnv::new(2).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let yaml = env
        .shard_map_yaml("users: { key: id, type: bigint, strategy: hash }", "")
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(extra_args)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let conninfo = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
    let mut client = None;
    for _ in 0..100 {
        if let Ok((c, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client.expect("the proxy accepts clients");
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO users (id) VALUES (1)")
        .await
        .unwrap();

    // SIGTERM: new clients are refused, the open transaction still commits.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .is_err(),
        "no new clients after SIGTERM"
    );
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    c.batch_execute("COMMIT").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(c);
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the proxy exits once its last client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
