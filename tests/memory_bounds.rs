//! The proxy's memory under large statements from many clients (issue 17, "memory
//! amplification"): large messages draw on one budget for the whole proxy
//! (`limits.max_buffered_mb`), so clients beyond it wait instead of the process growing;
//! a connection does not keep the allocation of its last large message; and the memory goes
//! back to the system after the burst. Measured on `shardwire serve` as a process (its RSS
//! from /proc).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestEnv;

fn rss_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_statements_from_many_clients_stay_within_the_budget() {
    let env = TestEnv::new(1).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let yaml = env
        .shard_map_yaml("", "limits: { max_buffered_mb: 256 }")
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(["--log-level", "warn", "serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let conninfo = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
    for _ in 0..100 {
        if tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = rss_mb(pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    // 12 clients at once, each with a 16 MiB statement (the review's shape: 40 from one
    // client reached 1.4 GB; 10 at once reached 420 MB before this budget).
    let literal = "x".repeat(16 << 20);
    let t0 = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let conninfo = conninfo.clone();
        let sql = format!("SELECT length('{literal}')");
        clients.spawn(async move {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let rows = c.simple_query(&sql).await.unwrap();
            let n = common::rows_as_maps(rows)[0]["length"].clone();
            assert_eq!(n, (16 << 20).to_string());
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let after = rss_mb(pid);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("RSS: base {base} MB, peak {peak} MB, after {after} MB ({took:?})");
    // The budget (256 MiB, a 16 MiB statement weighing 16x) lets one statement in at a
    // time: the peak is that statement's work, not twelve of them.
    assert!(peak < base + 300, "peak {peak} MB (base {base} MB)");
    assert!(
        after < base + 80,
        "after the burst {after} MB (base {base} MB)"
    );
}
