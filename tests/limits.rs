//! Client-facing limits against real shards: the connection limit, the query timeout, and
//! the idle / idle-in-transaction timeouts, each with its documented error.

mod common;

use std::time::Duration;

use common::{Proxy, TestEnv};

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }";

/// Connects and returns the client and its connection task's outcome.
async fn connect(
    conninfo: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (c, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    (c, tokio::spawn(conn))
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_limit() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "limits: { max_client_connections: 2 }").await;
    let (a, _ta) = connect(&proxy.conninfo()).await;
    let (b, _tb) = connect(&proxy.conninfo()).await;
    let e = tokio_postgres::connect(&proxy.conninfo(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("the third client is refused");
    assert_eq!(sqlstate(&e), Some("53300"), "{e}");
    assert!(format!("{e:?}").contains("too many clients"), "{e:?}");
    // The first two still work, and a slot frees when one leaves.
    a.simple_query("SELECT 1").await.unwrap();
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, _tc) = connect(&proxy.conninfo()).await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_long_statements() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "limits: { query_timeout_ms: 300 }").await;
    let (c, _t) = connect(&proxy.conninfo()).await;
    let started = std::time::Instant::now();
    let e = c.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("57014"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(format!("{e:?}").contains("statement timeout"), "{e:?}");
    // Short statements run; a client's own SET overrides the default.
    c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    c.simple_query("SELECT pg_sleep(0.5)").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_and_idle_session_timeouts() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(
        &env,
        TABLES,
        "limits: { idle_in_transaction_timeout_ms: 300, client_idle_timeout_ms: 1500 }",
    )
    .await;
    let setup = proxy.client().await;
    setup
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();

    // Idle inside a transaction: disconnected with 25P03, and its write is rolled back.
    let (c, task) = connect(&proxy.conninfo()).await;
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO users (id, name) VALUES (7, 'x')", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let e = task.await.unwrap().expect_err("the connection ends");
    assert_eq!(sqlstate(&e), Some("25P03"), "{e}");
    assert!(c.simple_query("SELECT 1").await.is_err());
    let n: i64 = setup
        .query_one("SELECT count(*) FROM users WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the abandoned transaction's write is gone");

    // Busy clients are not touched; one idle outside a transaction goes with 57P05.
    let (c, task) = connect(&proxy.conninfo()).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.simple_query("SELECT 1").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = task.await.unwrap().expect_err("the connection ends");
    assert_eq!(sqlstate(&e), Some("57P05"), "{e}");
}
