//! Clients sharing pooled backends never see each other's session state (issue 17, "state
//! leaking between clients"). Pool size 1, so every client of a shard meets the one backend
//! the previous client left: what client A leaves there — a role, a session authorization,
//! `set_config`, a temp table, a `WITH HOLD` cursor, what a `DO` block did — client B never
//! sees, while A's own tracked settings (`SET ROLE`) still follow A. Session advisory locks,
//! which transaction pooling cannot keep for a client, are refused with a clear error.

mod common;

use common::{Proxy, TestEnv};
use tokio_postgres::Client;

async fn setup() -> (TestEnv, Proxy) {
    let env = TestEnv::new(2).await;
    for s in 0..env.shard_count() {
        // A role per shard cluster (roles are cluster-wide; tests share clusters).
        env.shard_client(s)
            .await
            .batch_execute(
                "DO $$ BEGIN CREATE ROLE sw_lowpriv NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
            )
            .await
            .unwrap();
    }
    let yaml = env
        .shard_map_yaml("", "")
        .replace("pool: { size: 10,", "pool: { size: 1,");
    let proxy = Proxy::start_yaml(&yaml).await;
    (env, proxy)
}

async fn one(c: &Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap();
    common::rows_as_maps(rows)
        .into_iter()
        .next()
        .and_then(|m| m.into_values().next())
        .unwrap_or_default()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_follows_its_client_and_no_other() {
    let (_env, proxy) = setup().await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    let owner = one(&b, "SELECT current_user").await;
    a.batch_execute("SET ROLE sw_lowpriv").await.unwrap();
    assert_eq!(one(&a, "SELECT current_user").await, "sw_lowpriv");
    assert_eq!(
        one(&b, "SELECT current_user").await,
        owner,
        "B got A's role"
    );
    assert_eq!(
        one(&a, "SELECT current_user").await,
        "sw_lowpriv",
        "A lost it"
    );
    a.batch_execute("SET SESSION AUTHORIZATION sw_lowpriv")
        .await
        .unwrap();
    assert_eq!(one(&a, "SELECT session_user").await, "sw_lowpriv");
    assert_eq!(one(&b, "SELECT session_user").await, owner);
    assert_eq!(one(&b, "SELECT current_user").await, owner);
    a.batch_execute("RESET SESSION AUTHORIZATION; RESET ROLE")
        .await
        .unwrap();
    assert_eq!(one(&a, "SELECT current_user").await, owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_session_state_never_reaches_another_client() {
    let (_env, proxy) = setup().await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    // set_config, directly and from a DO block.
    one(
        &a,
        "SELECT set_config('application_name', 'secret-a', false)",
    )
    .await;
    assert_ne!(one(&b, "SHOW application_name").await, "secret-a");
    a.batch_execute(
        "DO $$ BEGIN PERFORM set_config('application_name', 'secret-do', false); END $$",
    )
    .await
    .unwrap();
    assert_ne!(one(&b, "SHOW application_name").await, "secret-do");
    // A temp table and its contents.
    a.batch_execute("CREATE TEMP TABLE secret AS SELECT 's3cr3t'::text AS v")
        .await
        .unwrap();
    let e = b.simple_query("SELECT v FROM secret").await.unwrap_err();
    assert_eq!(code(&e), "42P01", "B read A's temp table: {e}");
    // A WITH HOLD cursor left open outside a transaction.
    a.batch_execute("DECLARE held CURSOR WITH HOLD FOR SELECT 'a-row'")
        .await
        .unwrap();
    let e = b.simple_query("FETCH held").await.unwrap_err();
    assert_eq!(code(&e), "34000", "B fetched A's cursor: {e}");
    // Session advisory locks: refused (the backend is given back after the statement);
    // transaction-level ones work.
    let e = a
        .simple_query("SELECT pg_advisory_lock(42)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e}");
    let msg = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        msg.unwrap_or_default().contains("pg_advisory_xact_lock"),
        "{e:?}"
    );
    a.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(42); COMMIT")
        .await
        .unwrap();
    let free = one(&b, "SELECT pg_try_advisory_xact_lock(42)").await;
    assert_eq!(free, "t");
}
