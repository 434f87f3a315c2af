//! Clients sharing pooled backends never see each other's session state (issue 17, "state
//! leaking between clients"). Pool size 1, so every client of a shard meets the one backend
//! the previous client left: what client A leaves there — a role, a session authorization,
//! `set_config`, a temp table, a `WITH HOLD` cursor, what a `DO` block did — client B never
//! sees, while A's own tracked settings (`SET ROLE`) still follow A. Session advisory locks,
//! which transaction pooling cannot keep for a client, are refused with a clear error.

mod common;

use common::{first_value as one, sqlstate as code};

use common::{Proxy, TestEnv};

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
        if common::roles_mode() {
            // The clients' role may become it, as the test's superuser could.
            env.shard_client(s)
                .await
                .batch_execute(
                    "DO $$ BEGIN IF NOT pg_has_role('app_rw', 'sw_lowpriv', 'MEMBER') THEN \
                     GRANT sw_lowpriv TO app_rw; END IF; \
                     EXCEPTION WHEN unique_violation THEN NULL; END $$",
                )
                .await
                .unwrap();
        }
    }
    let yaml = env
        .shard_map_yaml("", "")
        .replace("pool: { size: 10,", "pool: { size: 1,");
    let proxy = Proxy::start_yaml(&yaml).await;
    (env, proxy)
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
    if common::roles_mode() {
        // Only a superuser may: the clients' role gets Postgres's refusal.
        let e = a
            .batch_execute("SET SESSION AUTHORIZATION sw_lowpriv")
            .await
            .unwrap_err();
        assert_eq!(code(&e), "42501", "{e}");
    } else {
        a.batch_execute("SET SESSION AUTHORIZATION sw_lowpriv")
            .await
            .unwrap();
        assert_eq!(one(&a, "SELECT session_user").await, "sw_lowpriv");
    }
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
    // A WITH HOLD cursor: A keeps it across transactions (its backend is pinned to A until
    // the CLOSE, then closed), B never reaches it.
    a.batch_execute("DECLARE held CURSOR WITH HOLD FOR SELECT 'a-row'")
        .await
        .unwrap();
    a.batch_execute("BEGIN; COMMIT").await.unwrap();
    assert_eq!(one(&a, "FETCH held").await, "a-row");
    a.batch_execute("CLOSE held").await.unwrap();
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

/// The salt in the proxy's SCRAM server-first message for `user`, and how long that reply
/// took (the client-first message sent to the reply read).
async fn scram_salt(port: u16, user: &str) -> (String, std::time::Duration) {
    use bytes::{Buf, BytesMut};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", "app")], &mut out).unwrap();
    sock.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let next = async |sock: &mut tokio::net::TcpStream, buf: &mut BytesMut| loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            if buf.len() > len {
                let mut m = buf.split_to(len + 1);
                let tag = m.get_u8();
                m.advance(4);
                return (tag, m);
            }
        }
        assert!(sock.read_buf(buf).await.unwrap() > 0, "closed");
    };
    let (tag, _) = next(&mut sock, &mut buf).await;
    assert_eq!(tag, b'R');
    let scram = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
    out.clear();
    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
    let t0 = std::time::Instant::now();
    sock.write_all(&out).await.unwrap();
    let (tag, mut body) = next(&mut sock, &mut buf).await;
    let took = t0.elapsed();
    assert_eq!(tag, b'R');
    assert_eq!(body.get_i32(), 11, "SASL continue");
    let text = String::from_utf8(body.to_vec()).unwrap();
    let salt = text
        .split(',')
        .find_map(|p| p.strip_prefix("s="))
        .unwrap()
        .to_string();
    (salt, took)
}

/// Login hygiene: an unknown user meets the same stable salt and the same work as a known
/// one (no enumeration by salt or timing); a database the proxy does not serve is `3D000`
/// after authentication; a replication connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_hygiene() {
    let (_env, proxy) = setup().await;
    let port = proxy.port();
    let (known1, _) = scram_salt(port, "app").await;
    let (known2, _) = scram_salt(port, "app").await;
    assert_eq!(known1, known2, "a known user's salt is stable");
    let (ghost1, _) = scram_salt(port, "nobody").await;
    let (ghost2, _) = scram_salt(port, "nobody").await;
    assert_eq!(ghost1, ghost2, "an unknown user's salt is stable too");
    let (other, _) = scram_salt(port, "somebody-else").await;
    assert_ne!(ghost1, other);
    // The same work: medians of 15 first replies each, within noise.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..15 {
        known.push(scram_salt(port, "app").await.1);
        unknown.push(scram_salt(port, "nobody").await.1);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[7], unknown[7]);
    assert!(
        u < k * 3 + std::time::Duration::from_millis(2)
            && k < u * 3 + std::time::Duration::from_millis(2),
        "first reply: known {k:?}, unknown {u:?}"
    );
    // A database the proxy does not serve.
    let e = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=nosuchdb"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("nosuchdb must be refused");
    assert_eq!(code(&e), "3D000", "{e:?}");
    // A wrong password for it still says the password is wrong (nothing about the database).
    let e = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app password=nope dbname=nosuchdb"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("wrong password");
    assert_eq!(code(&e), "28P01", "{e:?}");
    // Replication connections: refused; replication=false is a normal session.
    for (value, refused) in [("true", true), ("database", true), ("false", false)] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "app"), ("database", "app"), ("replication", value)],
            &mut out,
        )
        .unwrap();
        sock.write_all(&out).await.unwrap();
        let mut first = [0u8; 1];
        sock.read_exact(&mut first).await.unwrap();
        if refused {
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
            let text = String::from_utf8_lossy(&rest);
            assert_eq!(first[0], b'E', "replication={value}");
            assert!(text.contains("0A000"), "replication={value}: {text}");
        } else {
            assert_eq!(
                first[0], b'R',
                "replication={value}: authentication goes on"
            );
        }
    }
}

/// `LOCK TABLE` routes like other statements (the review found an unsharded table locked on
/// every shard): an unsharded table on the default shard only, a sharded one on every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_table_goes_where_the_table_is() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(
        &env,
        "users: { key: id, type: bigint, strategy: hash }\n",
        "",
    )
    .await;
    let c = proxy.client().await;
    common::create_users(&c, "", 0).await;
    c.batch_execute("CREATE TABLE plain (v int)").await.unwrap();
    let locks_on = |s: usize, table: &'static str| {
        let env = &env;
        async move {
            let sql = format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = '{table}' AND l.mode = 'ExclusiveLock'"
            );
            let n: i64 = env
                .shard_client(s)
                .await
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    c.batch_execute("BEGIN; LOCK TABLE plain IN EXCLUSIVE MODE")
        .await
        .unwrap();
    assert_eq!(locks_on(0, "plain").await, 1, "the default shard holds it");
    assert_eq!(locks_on(1, "plain").await, 0, "no other shard");
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("LOCK TABLE users IN EXCLUSIVE MODE")
        .await
        .unwrap();
    assert_eq!(locks_on(0, "users").await, 1);
    assert_eq!(locks_on(1, "users").await, 1);
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .batch_execute("LOCK TABLE plain, users")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
}

/// The review's statement hijack: a `DO` block on a shared backend DEALLOCATEs one of the
/// proxy's prepared statements and PREPAREs its name with other SQL. The backend a `DO`
/// block ran on is closed, so the victim's next execution never meets the impostor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_block_cannot_hijack_another_clients_statement() {
    let (_env, proxy) = setup().await;
    let victim = proxy.client().await;
    let st = victim.prepare("SELECT 'original'::text").await.unwrap();
    let v: String = victim.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(v, "original");
    let attacker = proxy.client().await;
    attacker
        .batch_execute(
            "DO $$ DECLARE n text; BEGIN
               FOR n IN SELECT name FROM pg_prepared_statements WHERE name LIKE 'sw_%' LOOP
                 EXECUTE format('DEALLOCATE %I', n);
                 EXECUTE format('PREPARE %I AS SELECT ''hijacked''::text', n);
               END LOOP;
             END $$",
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let v: String = victim.query_one(&st, &[]).await.unwrap().get(0);
        assert_eq!(v, "original");
    }
}

/// The review's "hold freeze": a `hold` row in the rebalance control table (written by hand
/// here, as a client could) holds statements; once the row is gone the proxy releases them
/// by itself — it stayed frozen until restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_lost_its_row_ends_by_itself() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(
        &env,
        "users: { key: id, type: bigint, strategy: hash }\n",
        "",
    )
    .await;
    let c = proxy.client().await;
    common::create_users(&c, "", 3).await;
    let control = env.shard_client(0).await;
    control
        .batch_execute(&shardwire::sharding::control_schema::prepare_sql())
        .await
        .unwrap();
    control
        .batch_execute(shardwire::rebalance::control::SCHEMA)
        .await
        .unwrap();
    control
        .batch_execute(
            "INSERT INTO shardwire.shardwire_rebalance (id, run_id, from_map, to_map, phase, hold) \
             VALUES (1, 666, '', '', 'preparing', true); NOTIFY shardwire_rebalance",
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let waiting = tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        let r = c.query_one("SELECT count(*) FROM users", &[]).await;
        (r.map(|r| r.get::<_, i64>(0)), t0.elapsed())
    });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert!(!waiting.is_finished(), "the hold holds statements");
    control
        .batch_execute("DELETE FROM shardwire.shardwire_rebalance; NOTIFY shardwire_rebalance")
        .await
        .unwrap();
    let (n, took) = waiting.await.unwrap();
    assert_eq!(n.unwrap(), 3, "released, not failed with 57P03");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

/// A transaction that left untracked state on its backend (`set_config`) and was cancelled
/// closes that backend — and only that one: the clean statement after it gives its backend
/// back to the pool (it was closed too, because the "dirty" mark outlived the cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_dirty_transaction_leaves_the_next_backend_pooled() {
    let (_env, proxy) = setup().await;
    let a = proxy.client().await;
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SELECT set_config('sw_test.mark', '1', false)")
        .await
        .unwrap();
    let token = a.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = a
        .simple_query("SELECT pg_sleep(10)")
        .await
        .expect_err("cancelled");
    assert_eq!(code(&err), "57014", "{err:?}");
    canceller.await.unwrap().unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    // The shard backend's own pid (pg_backend_pid() answers the client's virtual pid).
    let pid = "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%sw_backend_pid_probe%' AND pid <> 0 ORDER BY pid LIMIT 1";
    let first = one(&a, pid).await;
    let second = one(&a, pid).await;
    assert!(!first.is_empty());
    assert_eq!(
        first, second,
        "the clean statement's backend was closed instead of pooled"
    );
}

/// A one-shard proxy whose pool holds `size` connections and waits at most `checkout_ms`
/// for one.
async fn small_pool(size: usize, checkout_ms: u64) -> (TestEnv, Proxy) {
    let env = TestEnv::new(1).await;
    let yaml = env.shard_map_yaml("", "").replace(
        "pool: { size: 10,",
        &format!("pool: {{ size: {size}, checkout_timeout_ms: {checkout_ms},"),
    );
    let proxy = Proxy::start_yaml(&yaml).await;
    (env, proxy)
}

/// asyncpg's `test_isolation_level` met `53300 no connection to shard s0 within 5s`: earlier
/// tests had dropped their connections during `pg_sleep(10)`, and each statement kept its
/// pooled backend until it ended. A client that goes away (with or without a Terminate,
/// which a driver may send before closing) frees its backend at once, and the statement is
/// cancelled on the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_clients_statement_frees_its_backend() {
    let (env, proxy) = small_pool(3, 3000).await;
    let mut gone = Vec::new();
    for i in 0..3 {
        let mut w = common::wire::Wire::login(proxy.port(), &[]).await;
        w.query("SELECT pg_sleep(10)");
        if i == 0 {
            // Terminate pipelined behind the statement.
            w.out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
        }
        w.send().await;
        gone.push(w);
    }
    // Every statement runs on a backend of its own.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(gone);
    let t0 = std::time::Instant::now();
    let c = proxy.client().await;
    let r = c.simple_query("SELECT 1").await;
    assert!(r.is_ok(), "the pool stayed exhausted: {r:?}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    // The abandoned statements were cancelled on the shard, not left to run for 10 s.
    let shard = env.shard_client(0).await;
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                    AND query = 'SELECT pg_sleep(10)' AND state = 'active'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let n: i64 = shard.query_one(sleeping, &[]).await.unwrap().get(0);
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} abandoned statements still run on the shard"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// psycopg's `test_cancel`: a cancel sent while the statement waits for a pooled connection
/// was lost (the session had no backend to forward it to) and the statement ran later. It
/// now fails at once with 57014 and never runs, in both protocols; a cancel sent while the
/// client is idle does nothing, and none leaks into the client's next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_waiting_for_a_pooled_connection_cancels_the_statement() {
    let (_env, proxy) = small_pool(1, 5000).await;
    let holder = proxy.client().await;
    holder
        .batch_execute("CREATE TABLE cancel_probe (v int)")
        .await
        .unwrap();
    let waiter = std::sync::Arc::new(proxy.client().await);
    for extended in [false, true] {
        // The only backend is held by an open transaction.
        holder
            .batch_execute("BEGIN; SELECT count(*) FROM cancel_probe")
            .await
            .unwrap();
        let w = waiter.clone();
        let stmt = tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let r = if extended {
                w.execute("INSERT INTO cancel_probe VALUES ($1)", &[&1i32])
                    .await
                    .map(|_| ())
            } else {
                w.simple_query("INSERT INTO cancel_probe VALUES (1)")
                    .await
                    .map(|_| ())
            };
            (r, t0.elapsed())
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        waiter
            .cancel_token()
            .cancel_query(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // It stopped waiting at once (not only when the backend came free).
        assert!(stmt.is_finished(), "extended {extended}: still waiting");
        holder.batch_execute("ROLLBACK").await.unwrap();
        let (r, took) = stmt.await.unwrap();
        let err = r.expect_err("the cancel was lost: the statement ran");
        assert_eq!(code(&err), "57014", "extended {extended}: {err:?}");
        assert!(
            took < std::time::Duration::from_millis(3000),
            "extended {extended}: {took:?}"
        );
        assert_eq!(one(&holder, "SELECT count(*) FROM cancel_probe").await, "0");
        // No cancel leaks into the next statement.
        assert_eq!(one(&waiter, "SELECT 7").await, "7");
    }
    // A cancel while the client is idle does nothing.
    waiter
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(one(&waiter, "SELECT 8").await, "8");
    waiter
        .execute("INSERT INTO cancel_probe VALUES ($1)", &[&2i32])
        .await
        .unwrap();
    assert_eq!(one(&holder, "SELECT count(*) FROM cancel_probe").await, "1");
}

/// Issue 17: the proxy's control tables live in the `shardwire` schema, not in the
/// application's `public` (schema reflection — SQLAlchemy, Alembic autogenerate, Django
/// inspectdb — and migration tools no longer list them); a table an older proxy made in
/// `public` is moved there with its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_tables_live_in_their_own_schema() {
    let env = TestEnv::new(2).await;
    // Made by an older proxy, logged in as the shards' URL login.
    let s0 = env.shard_client_as(0, common::control_role()).await;
    s0.batch_execute(
        "CREATE TABLE public.shardwire_sequences (name text PRIMARY KEY, next_value bigint NOT NULL, \
         updated_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO public.shardwire_sequences (name, next_value) VALUES ('public.old_seq', 42)",
    )
    .await
    .unwrap();
    let proxy = Proxy::start(
        &env,
        "ct_items: { key: id, type: bigint, strategy: hash }\n",
        "",
    )
    .await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE ct_items (id bigserial PRIMARY KEY, v text)")
        .await
        .unwrap();
    // Generated ids (the allocator), a write on both shards in one transaction (2PC's log).
    c.batch_execute("INSERT INTO ct_items (v) VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f')")
        .await
        .unwrap();
    c.batch_execute("BEGIN; UPDATE ct_items SET v = v || '!'; COMMIT")
        .await
        .unwrap();
    for s in 0..2 {
        let public: i64 = env
            .shard_client(s)
            .await
            .query_one(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_name LIKE 'shardwire%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(public, 0, "shard {s}: control tables in public");
    }
    for t in ["shardwire_sequences", "shardwire_2pc", "shardwire_proxies"] {
        let there: bool = s0
            .query_one(
                &format!("SELECT to_regclass('shardwire.{t}') IS NOT NULL"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(there, "shardwire.{t}");
    }
    let kept: i64 = s0
        .query_one(
            "SELECT next_value FROM shardwire.shardwire_sequences WHERE name = 'public.old_seq'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 42, "the older proxy's row moved with its table");
}
