//! LISTEN / UNLISTEN / NOTIFY / `pg_notify()` under transaction pooling (issue 19), against
//! real Postgres: each proxy process listens on the default shard with a connection of its
//! own and hands notifications to its listening sessions; notifications are sent at commit
//! through the default shard, so listeners on any proxy, and clients of that shard directly,
//! hear them.

mod common;

use std::time::Duration;

use common::wire::{error_code, first_error, tags, Wire};
use common::{Proxy, TestEnv};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const TABLES: &str = "nt_users: { key: id, type: bigint, strategy: hash }";

/// (pid, channel, payload) of a notification a client received.
type Note = (i32, String, String);

/// A tokio-postgres client whose notifications arrive on the receiver.
async fn listener(conninfo: &str) -> (Client, UnboundedReceiver<Note>) {
    let (client, mut conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {conninfo}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.process_id(), n.channel().into(), n.payload().into()));
            }
        }
    });
    (client, rx)
}

/// The next notification, within 5 s.
async fn next_note(rx: &mut UnboundedReceiver<Note>) -> Note {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no notification within 5 s")
        .expect("the listener's connection ended")
}

/// Asserts the next notification is `payload` on `channel`; returns its pid.
async fn expect_note(rx: &mut UnboundedReceiver<Note>, channel: &str, payload: &str) -> i32 {
    let (pid, c, p) = next_note(rx).await;
    assert_eq!((c.as_str(), p.as_str()), (channel, payload));
    assert_ne!(pid, 0);
    pid
}

/// Asserts nothing arrives within 300 ms.
async fn expect_none(rx: &mut UnboundedReceiver<Note>, why: &str) {
    if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("{why}: got {n:?}");
    }
}

/// SQLSTATE and message of a failed statement.
fn db_error(e: tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.message().to_string())
}

/// How many listening connections of a proxy are open to `shard`'s database.
async fn listening(shard: &Client) -> i64 {
    shard
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'shardwire-listen'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to 5 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 5 s: {what}");
}

/// Listeners on two proxy processes and on the default shard directly hear notifications
/// sent through either proxy (NOTIFY, `pg_notify` as a simple query and with bound
/// parameters) and from the shard directly, with the sender's pid and quoted names intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_listeners_everywhere() {
    let env = TestEnv::new(2).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let p1 = Proxy::start_yaml(&yaml).await;
    let p2 = Proxy::start_yaml(&yaml).await;
    let (a, mut ra) = listener(&p1.conninfo()).await;
    a.batch_execute("LISTEN chan_a; LISTEN \"Mixed Case\"")
        .await
        .unwrap();
    assert_eq!(p1.handle.shared.notify.listeners("chan_a"), 1);
    let (a2, mut ra2) = listener(&p2.conninfo()).await;
    a2.batch_execute("LISTEN chan_a").await.unwrap();
    let (direct, mut rd) = listener(&env.shard_url(0)).await;
    direct.batch_execute("LISTEN chan_a").await.unwrap();

    let b = p1.client().await;
    b.batch_execute("NOTIFY chan_a, 'from-b'").await.unwrap();
    for rx in [&mut ra, &mut ra2, &mut rd] {
        expect_note(rx, "chan_a", "from-b").await;
    }
    b.execute("SELECT pg_notify($1, $2)", &[&"chan_a", &"bound"])
        .await
        .unwrap();
    expect_note(&mut ra, "chan_a", "bound").await;
    let rows = b
        .simple_query("SELECT pg_notify('chan_a', 'fn')")
        .await
        .unwrap();
    let n = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 1, "one row");
    expect_note(&mut ra, "chan_a", "fn").await;
    b.batch_execute("NOTIFY \"Mixed Case\", 'quoted'")
        .await
        .unwrap();
    expect_note(&mut ra, "Mixed Case", "quoted").await;
    // Another proxy process on the same map.
    let c = p2.client().await;
    c.batch_execute("SELECT pg_notify('chan_a', 'from-p2')")
        .await
        .unwrap();
    expect_note(&mut ra, "chan_a", "from-p2").await;
    // A client of the default shard itself; its pid is its backend's.
    let d = env.shard_client(0).await;
    let pid: i32 = d
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    d.batch_execute("NOTIFY chan_a, 'direct'").await.unwrap();
    assert_eq!(expect_note(&mut ra, "chan_a", "direct").await, pid);
    for rx in [&mut ra2, &mut rd] {
        for p in ["bound", "fn", "from-p2", "direct"] {
            expect_note(rx, "chan_a", p).await;
        }
    }
    // NOTIFY in a string of several statements outside a block runs on the default shard.
    b.batch_execute("NOTIFY chan_a, 'm1'; NOTIFY chan_a, 'm2'")
        .await
        .unwrap();
    expect_note(&mut ra, "chan_a", "m1").await;
    expect_note(&mut ra, "chan_a", "m2").await;
    expect_none(&mut ra, "nothing else").await;
}

/// Notifications are sent at COMMIT and dropped at ROLLBACK (or ROLLBACK TO a savepoint
/// made before them), a repeated channel and payload once; a transaction that writes on two
/// shards (two-phase commit) may notify, and so may a query string of several statements
/// (one implicit transaction); a listener inside its own transaction hears them
/// once it ends; LISTEN inside a block takes effect at COMMIT only; errors are Postgres's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_transactions() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let (a, mut ra) = listener(&proxy.conninfo()).await;
    a.batch_execute("LISTEN chan_t").await.unwrap();
    let b = proxy.client().await;
    b.batch_execute("CREATE TABLE nt_users (id bigint PRIMARY KEY)")
        .await
        .unwrap();

    b.batch_execute("BEGIN; NOTIFY chan_t, 'c1'").await.unwrap();
    b.batch_execute("SELECT pg_notify('chan_t', 'c2')")
        .await
        .unwrap();
    expect_none(&mut ra, "before COMMIT").await;
    b.batch_execute("COMMIT").await.unwrap();
    expect_note(&mut ra, "chan_t", "c1").await;
    expect_note(&mut ra, "chan_t", "c2").await;

    b.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("NOTIFY chan_t, 'r1'").await.unwrap();
    b.batch_execute("ROLLBACK").await.unwrap();
    expect_none(&mut ra, "after ROLLBACK").await;

    b.batch_execute("BEGIN").await.unwrap();
    for p in ["d", "d", "e", "d"] {
        b.execute("SELECT pg_notify('chan_t', $1)", &[&p])
            .await
            .unwrap();
    }
    b.batch_execute("COMMIT").await.unwrap();
    expect_note(&mut ra, "chan_t", "d").await;
    expect_note(&mut ra, "chan_t", "e").await;
    expect_none(&mut ra, "repeats collapse").await;

    b.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("NOTIFY chan_t, 's1'").await.unwrap();
    b.batch_execute("SAVEPOINT sp").await.unwrap();
    b.batch_execute("NOTIFY chan_t, 's2'").await.unwrap();
    b.batch_execute("ROLLBACK TO sp").await.unwrap();
    b.batch_execute("NOTIFY chan_t, 's3'").await.unwrap();
    b.batch_execute("SAVEPOINT sq; NOTIFY chan_t, 's4'; RELEASE sq")
        .await
        .unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    for p in ["s1", "s3", "s4"] {
        expect_note(&mut ra, "chan_t", p).await;
    }
    expect_none(&mut ra, "s2 was rolled back").await;

    // Writes on both shards: two-phase commit, with the notification sent after it.
    b.batch_execute("BEGIN").await.unwrap();
    for id in 1..=20i64 {
        b.execute("INSERT INTO nt_users VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    b.batch_execute("NOTIFY chan_t, 'two-shards'")
        .await
        .unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    expect_note(&mut ra, "chan_t", "two-shards").await;
    let placed = env.per_shard_i64("SELECT count(*) FROM nt_users").await;
    assert!(placed.iter().all(|&n| n > 0), "{placed:?}");

    // A query string of several statements on several shards is one implicit transaction:
    // its notification is sent when all of it committed, and not at all after an error.
    let inserts: String = (21..=30i64)
        .map(|id| format!("INSERT INTO nt_users VALUES ({id}); "))
        .collect();
    b.batch_execute(&format!("{inserts}NOTIFY chan_t, 'implicit'"))
        .await
        .unwrap();
    expect_note(&mut ra, "chan_t", "implicit").await;
    let e = b
        .batch_execute(&format!(
            "NOTIFY chan_t, 'failed'; {inserts}SELECT pg_notify('chan_t', 'failed2')"
        ))
        .await
        .unwrap_err();
    assert_eq!(db_error(e).0, "23505");
    expect_none(&mut ra, "the failed string sent nothing").await;
    let placed = env.per_shard_i64("SELECT count(*) FROM nt_users").await;
    assert_eq!(placed.iter().sum::<i64>(), 30, "{placed:?}");

    // The listener's own transaction holds its notifications back until it ends.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("NOTIFY chan_t, 'while-busy'")
        .await
        .unwrap();
    expect_none(&mut ra, "inside the listener's transaction").await;
    a.batch_execute("COMMIT").await.unwrap();
    expect_note(&mut ra, "chan_t", "while-busy").await;

    // LISTEN in a block: dropped at ROLLBACK, in force after COMMIT.
    let (l, mut rl) = listener(&proxy.conninfo()).await;
    l.batch_execute("BEGIN; LISTEN chan_r; ROLLBACK")
        .await
        .unwrap();
    l.batch_execute("BEGIN").await.unwrap();
    l.batch_execute("LISTEN chan_r").await.unwrap();
    l.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(proxy.handle.shared.notify.listeners("chan_r"), 0);
    b.batch_execute("NOTIFY chan_r, 'nobody'").await.unwrap();
    expect_none(&mut rl, "LISTEN was rolled back").await;
    l.batch_execute("BEGIN").await.unwrap();
    l.batch_execute("LISTEN chan_r").await.unwrap();
    assert_eq!(proxy.handle.shared.notify.listeners("chan_r"), 0);
    l.batch_execute("COMMIT").await.unwrap();
    assert_eq!(proxy.handle.shared.notify.listeners("chan_r"), 1);
    b.batch_execute("NOTIFY chan_r, 'now'").await.unwrap();
    expect_note(&mut rl, "chan_r", "now").await;
    // NOTIFY then LISTEN of the same channel in one block: the listener hears it.
    l.batch_execute("BEGIN; NOTIFY chan_s, 'own'; LISTEN chan_s; COMMIT")
        .await
        .unwrap();
    expect_note(&mut rl, "chan_s", "own").await;

    // Postgres's errors.
    let long = "x".repeat(8000);
    let e = b
        .execute("SELECT pg_notify('chan_t', $1)", &[&long])
        .await
        .unwrap_err();
    assert_eq!(
        db_error(e),
        ("22023".into(), "payload string too long".into())
    );
    let e = b
        .batch_execute(&format!("NOTIFY chan_t, '{long}'"))
        .await
        .unwrap_err();
    assert_eq!(db_error(e).0, "22023");
    let e = b
        .batch_execute("SELECT pg_notify('', 'x')")
        .await
        .unwrap_err();
    assert_eq!(
        db_error(e),
        ("22023".into(), "channel name cannot be empty".into())
    );
    // An error inside a block aborts it, as in Postgres.
    b.batch_execute("BEGIN; NOTIFY chan_t, 'lost'")
        .await
        .unwrap();
    assert!(b
        .batch_execute("SELECT pg_notify(NULL, 'x')")
        .await
        .is_err());
    let e = b.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(e).0, "25P02");
    b.batch_execute("COMMIT").await.unwrap();
    b.batch_execute(&format!("NOTIFY chan_t, '{}'", "y".repeat(7999)))
        .await
        .unwrap();
    let (_, _, p) = next_note(&mut ra).await;
    assert_eq!(p.len(), 7999, "the aborted block sent nothing");
}

/// UNLISTEN, UNLISTEN *, DISCARD ALL and disconnecting release channels: the listening
/// connection stops listening on a channel with no listener left, and closes when none is
/// left; a busy session's LISTEN/UNLISTEN churn leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_released() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let hub = proxy.handle.shared.notify.clone();
    let shard0 = env.shard_client(0).await;
    assert_eq!(listening(&shard0).await, 0, "no connection before a LISTEN");
    let (a, mut ra) = listener(&proxy.conninfo()).await;
    let b = proxy.client().await;
    a.batch_execute("LISTEN u1; LISTEN u2; LISTEN u2")
        .await
        .unwrap();
    assert_eq!(listening(&shard0).await, 1);
    a.batch_execute("UNLISTEN u1").await.unwrap();
    assert_eq!(hub.wanted().0, vec!["u2".to_string()]);
    b.batch_execute("NOTIFY u1; NOTIFY u2, 'yes'")
        .await
        .unwrap();
    expect_note(&mut ra, "u2", "yes").await;
    expect_none(&mut ra, "u1 was unlistened").await;
    a.batch_execute("UNLISTEN *").await.unwrap();
    b.batch_execute("NOTIFY u2, 'no'").await.unwrap();
    expect_none(&mut ra, "after UNLISTEN *").await;
    a.batch_execute("LISTEN u3").await.unwrap();
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(hub.listeners("u3"), 0);

    // A client that goes away releases its channels.
    let (gone, _rg) = listener(&proxy.conninfo()).await;
    gone.batch_execute("LISTEN u4").await.unwrap();
    assert_eq!(hub.listeners("u4"), 1);
    drop(gone);
    eventually("u4 released", || hub.wanted().0.is_empty()).await;
    // With nobody listening, the connection closes.
    for _ in 0..250 {
        if listening(&shard0).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        listening(&shard0).await,
        0,
        "the listening connection closed"
    );

    // Churn: many LISTEN/UNLISTEN (and UNLISTEN of channels never listened on).
    for i in 0..500 {
        a.batch_execute(&format!(
            "LISTEN churn_{i}; LISTEN churn_{}; UNLISTEN churn_{i}; UNLISTEN never_{i}",
            i + 1
        ))
        .await
        .unwrap();
    }
    assert_eq!(hub.wanted().0, vec!["churn_500".to_string()]);
    a.batch_execute("UNLISTEN churn_500; LISTEN last")
        .await
        .unwrap();
    b.batch_execute("NOTIFY last, 'heard'").await.unwrap();
    expect_note(&mut ra, "last", "heard").await;
    // Many sessions on one channel: each hears it; the channel stays while one listens.
    let mut many = Vec::new();
    for _ in 0..10 {
        let (c, rc) = listener(&proxy.conninfo()).await;
        c.batch_execute("LISTEN shared_ch").await.unwrap();
        many.push((c, rc));
    }
    b.batch_execute("NOTIFY shared_ch, 'all'").await.unwrap();
    for (_, rc) in many.iter_mut() {
        expect_note(rc, "shared_ch", "all").await;
    }
    many.truncate(1);
    eventually("nine released", || hub.listeners("shared_ch") == 1).await;
    drop(many);
    drop(a);
    eventually("all released", || hub.wanted().0.is_empty()).await;
}

/// The exact replies on the wire: command tags, a notification to oneself right behind the
/// reply's ReadyForQuery, LISTEN through the extended protocol, LISTEN among other
/// statements of a pipeline refused, and a client whose queue overflows ended with a FATAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_replies() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let hub = proxy.handle.shared.notify.clone();
    let mut w = Wire::login(proxy.port(), &[]).await;
    w.query("LISTEN self_ch");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "CZ");
    assert_eq!(&got[0].1[..], b"LISTEN\0");
    w.query("NOTIFY self_ch, 'me'");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(&got[0].1[..], b"NOTIFY\0");
    let (tag, body) = w.recv_within(Duration::from_secs(1)).await.unwrap();
    assert_eq!(tag, b'A');
    assert_eq!(&body[4..], b"self_ch\0me\0");
    w.query("UNLISTEN self_ch; LISTEN m1; LISTEN m2");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "CCCZ");
    assert_eq!(&got[0].1[..], b"UNLISTEN\0");
    assert_eq!(hub.wanted().0, vec!["m1".to_string(), "m2".to_string()]);

    // Extended protocol: LISTEN, then pg_notify with a parameter, Describe included.
    w.parse("", "LISTEN ext_ch")
        .bind("", "", &[])
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "12CZ");
    w.parse("n", "SELECT pg_notify('ext_ch', $1)")
        .describe(b'S', "n")
        .bind("", "n", &["p1"])
        .describe(b'P', "")
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "1tT2TDCZ", "{got:?}");
    let (tag, body) = w.recv_within(Duration::from_secs(1)).await.unwrap();
    assert_eq!((tag, &body[4..]), (b'A', &b"ext_ch\0p1\0"[..]));
    // LISTEN among statements the proxy forwards: refused whole.
    w.parse("", "LISTEN mixed")
        .bind("", "", &[])
        .execute("", 0)
        .parse("", "SELECT 1")
        .bind("", "", &[])
        .execute("", 0)
        .sync();
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(first_error(&got).as_deref(), Some("0A000"));
    assert_eq!(hub.listeners("mixed"), 0);

    // A LATIN1 client: notifications arrive in its encoding, its pg_notify text is read in it.
    let mut l1 = Wire::login(proxy.port(), &[("client_encoding", "LATIN1")]).await;
    l1.query("LISTEN enc");
    l1.send().await;
    l1.until_ready().await;
    let (u, mut ru) = listener(&proxy.conninfo()).await;
    u.batch_execute("LISTEN enc").await.unwrap();
    u.batch_execute("NOTIFY enc, 'café'").await.unwrap();
    expect_note(&mut ru, "enc", "café").await;
    let (tag, body) = l1.recv_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!((tag, &body[4..]), (b'A', &b"enc\0caf\xe9\0"[..]));
    l1.parse("", "SELECT pg_notify('enc', $1)")
        .bind_binary("", "", &[b"na\xefve"])
        .execute("", 0)
        .sync();
    l1.send().await;
    let got = l1.until_ready().await;
    assert_eq!(first_error(&got), None, "{}", tags(&got));
    expect_note(&mut ru, "enc", "naïve").await;

    // A client that stays in a transaction while more notifications arrive than its queue
    // holds is ended once the transaction is over.
    w.query("BEGIN; SELECT 1");
    w.send().await;
    w.until_ready().await;
    let d = env.shard_client(0).await;
    d.batch_execute("SELECT pg_notify('m1', g::text) FROM generate_series(1, 10001) g")
        .await
        .unwrap();
    eventually("the session dropped", || hub.listeners("m1") == 0).await;
    w.query("COMMIT");
    w.send().await;
    let got = w.until_ready().await;
    assert_eq!(tags(&got), "CZ");
    let (tag, body) = w.recv().await.expect("a FATAL");
    assert_eq!((tag, error_code(&body).as_str()), (b'E', "54000"));
    assert!(w.recv().await.is_none(), "closed");
}

/// A reload that makes another shard the default one moves the listening connection there:
/// listeners keep listening, and notifications sent through the proxy go there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_follows_the_default_shard() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let (a, mut ra) = listener(&proxy.conninfo()).await;
    a.batch_execute("LISTEN moving").await.unwrap();
    let yaml = env.shard_map_yaml(TABLES, "default_shard: s1\n");
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "t").unwrap();
    proxy.handle.shared.swap_config(std::sync::Arc::new(map));
    // Notifications sent while it moves are lost: probe until one arrives.
    let s1 = env.shard_client(1).await;
    let mut heard = false;
    for i in 0..50 {
        s1.batch_execute(&format!("NOTIFY moving, 'probe{i}'"))
            .await
            .unwrap();
        if let Ok(Some((_, c, _))) =
            tokio::time::timeout(Duration::from_millis(200), ra.recv()).await
        {
            assert_eq!(c, "moving");
            heard = true;
            break;
        }
    }
    assert!(heard, "listening on the new default shard");
    while tokio::time::timeout(Duration::from_millis(300), ra.recv())
        .await
        .is_ok()
    {}
    let (direct1, mut r1) = listener(&env.shard_url(1)).await;
    direct1.batch_execute("LISTEN moving").await.unwrap();
    let b = proxy.client().await;
    b.batch_execute("NOTIFY moving, 'via-proxy'").await.unwrap();
    expect_note(&mut ra, "moving", "via-proxy").await;
    expect_note(&mut r1, "moving", "via-proxy").await;
}

/// Session pooling: a session sends its notifications on the connection it holds (the pool
/// has none to spare when every client holds one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_notifies_on_the_held_connection() {
    let env = TestEnv::new(1).await;
    let yaml = env
        .shard_map_yaml(TABLES, "")
        .replace("pool: { size: 10,", "pool: { mode: session, size: 2,");
    let proxy = Proxy::start_yaml(&yaml).await;
    let (a, mut ra) = listener(&proxy.conninfo()).await;
    a.batch_execute("SELECT 1; LISTEN held").await.unwrap();
    let b = proxy.client().await;
    b.batch_execute("SELECT 1").await.unwrap();
    let started = std::time::Instant::now();
    b.batch_execute("NOTIFY held, 'one'").await.unwrap();
    b.batch_execute("BEGIN; SELECT pg_notify('held', 'two'); COMMIT")
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "no pool wait");
    expect_note(&mut ra, "held", "one").await;
    expect_note(&mut ra, "held", "two").await;
}

/// psycopg 3's `conn.notifies()` and asyncpg's `add_listener` (tests/py/notify.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_listen() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let mut cmd = common::python("notify.py");
    cmd.arg("127.0.0.1").arg(proxy.port().to_string());
    common::run_program(cmd, "notify checks passed").await;
}

/// node-postgres's `client.on('notification')` and postgres.js's `sql.listen`
/// (tests/node/notify.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drivers_listen() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let url = format!("postgres://app:app-secret@127.0.0.1:{}/app", proxy.port());
    let mut cmd = common::node("notify.mjs");
    cmd.arg(url);
    common::run_program(cmd, "notify checks passed").await;
}

/// lib/pq's `pq.Listener` and pgx's `WaitForNotification` (tests/go/notify.go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_drivers_listen() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let url = format!(
        "postgres://app:app-secret@127.0.0.1:{}/app?sslmode=disable",
        proxy.port()
    );
    let mut cmd = common::go_run("notify.go");
    cmd.arg(url);
    common::run_program(cmd, "notify checks passed").await;
}
