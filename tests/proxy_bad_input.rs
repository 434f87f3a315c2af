//! Bad input on the client socket: malformed and oversized frames, unknown message types,
//! invalid SQL, unknown tables, keys of the wrong type and a wrong password. Each gets an
//! ErrorResponse with a fitting SQLSTATE or a closed connection; afterwards the proxy still
//! serves clients (a connection opened before, and a new one), no task of the proxy
//! panicked, and no data on any shard changed.
//!
//! The proxy runs with `auth: md5` here so raw sockets can log in by hand.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{Proxy, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n";
const EXTRA: &str = "auth: md5\n";
const ROWS: i64 = 200;

/// Panics anywhere in this test process (the proxy runs in it).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// The test's world: shards with `users` loaded, the proxy, and a client connected before
/// any bad input arrives.
struct World {
    env: TestEnv,
    proxy: Proxy,
    before: Client,
    snapshot: Vec<String>,
}

impl World {
    async fn new() -> World {
        count_panics();
        let env = TestEnv::new(2).await;
        let proxy = Proxy::start(&env, TABLES, EXTRA).await;
        let c = proxy.client().await;
        common::create_users(&c, "", ROWS).await;
        let snapshot = shard_snapshot(&env).await;
        World {
            env,
            proxy,
            before: c,
            snapshot,
        }
    }

    /// The proxy still serves: the old connection, a new one, and the data is unchanged.
    async fn still_serving(&self, after: &str) {
        for c in [&self.before, &self.proxy.client().await] {
            for id in [1i64, 77, ROWS] {
                let rows = c
                    .query("SELECT name FROM users WHERE id = $1", &[&id])
                    .await
                    .unwrap_or_else(|e| panic!("after {after}: point query failed: {e}"));
                assert_eq!(rows.len(), 1, "after {after}");
                assert_eq!(rows[0].get::<_, String>(0), format!("user-{id}"));
            }
            let n = c.query("SELECT id FROM users", &[]).await.unwrap().len();
            assert_eq!(n as i64, ROWS, "after {after}");
        }
        assert_eq!(
            shard_snapshot(&self.env).await,
            self.snapshot,
            "data on the shards changed after {after}"
        );
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "something panicked after {after}"
        );
    }
}

/// Row count and a digest of `users` on each shard.
async fn shard_snapshot(env: &TestEnv) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        let row = env
            .shard_client(i)
            .await
            .query_one(
                "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(id::text || ':' || name, ',' ORDER BY id)), '') FROM users",
                &[],
            )
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}

/// What the proxy did with the connection.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// An ErrorResponse with this SQLSTATE (the connection may close after it).
    Error(String),
    /// Closed without a word.
    Closed,
}

fn error_fields(body: &[u8]) -> HashMap<u8, String> {
    let mut out = HashMap::new();
    let mut b = body;
    while let Some((&t, rest)) = b.split_first() {
        if t == 0 {
            break;
        }
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        out.insert(t, String::from_utf8_lossy(&rest[..end]).into_owned());
        b = &rest[(end + 1).min(rest.len())..];
    }
    out
}

/// A raw protocol connection.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        Raw {
            sock: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connects and logs in as app/app-secret with md5.
    async fn login(port: u16) -> Raw {
        let mut r = Raw::connect(port).await;
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in [("user", "app"), ("database", "app")] {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut pkt = BytesMut::new();
        pkt.put_i32(body.len() as i32 + 4);
        pkt.put_slice(&body);
        r.send(&pkt).await;
        loop {
            let (tag, body) = r
                .recv(Duration::from_secs(10))
                .await
                .expect("proxy closed during login");
            match tag {
                b'R' => {
                    let mut b = body.clone();
                    match b.get_i32() {
                        0 => {}
                        5 => {
                            let salt = [body[4], body[5], body[6], body[7]];
                            let resp =
                                shardwire::wire::auth::md5_expected("app", "app-secret", salt);
                            r.send(&msg(b'p', &cstr(&resp))).await;
                        }
                        other => panic!("expected md5 authentication, got request {other}"),
                    }
                }
                b'E' => panic!("login failed: {:?}", error_fields(&body)),
                b'Z' => return r,
                _ => {}
            }
        }
    }

    async fn send(&mut self, b: &[u8]) {
        // The proxy may already have closed: that is one of the accepted outcomes.
        let _ = self.sock.write_all(b).await;
    }

    /// The next message, `None` on EOF (or a reset).
    async fn recv(&mut self, wait: Duration) -> Option<(u8, Bytes)> {
        let deadline = Instant::now() + wait;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let mut f = self.buf.split_to(len + 1).freeze();
                    let tag = f.get_u8();
                    f.advance(4);
                    return Some((tag, f));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => {
                    panic!("the proxy neither answered nor closed the connection within {wait:?}")
                }
            }
        }
    }

    /// Reads until an ErrorResponse (its SQLSTATE), or EOF.
    async fn outcome(&mut self) -> Outcome {
        while let Some((tag, body)) = self.recv(Duration::from_secs(10)).await {
            if tag == b'E' {
                return Outcome::Error(error_fields(&body).remove(&b'C').unwrap_or_default());
            }
        }
        Outcome::Closed
    }

    /// Reads to ReadyForQuery: the SQLSTATE of an error, if any, and the rows.
    async fn until_ready(&mut self) -> (Option<String>, usize) {
        let mut err = None;
        let mut rows = 0;
        loop {
            let (tag, body) = self
                .recv(Duration::from_secs(10))
                .await
                .expect("connection closed before ReadyForQuery");
            match tag {
                b'E' => err = Some(error_fields(&body).remove(&b'C').unwrap_or_default()),
                b'D' => rows += 1,
                b'Z' => return (err, rows),
                _ => {}
            }
        }
    }

    async fn simple(&mut self, sql: &str) -> (Option<String>, usize) {
        self.send(&msg(b'Q', &cstr(sql))).await;
        self.until_ready().await
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A frontend message with a correct length.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn accept_error_or_close(what: &str, got: &Outcome, codes: &[&str]) {
    match got {
        Outcome::Closed => {}
        Outcome::Error(c) if codes.contains(&c.as_str()) => {}
        Outcome::Error(c) => panic!("{what}: SQLSTATE {c}, expected one of {codes:?} or a close"),
    }
}

/// Resident set size of this process (the proxy runs in it), in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_instead_of_a_startup_packet() {
    let w = World::new().await;
    // An HTTP request: its first 4 bytes read as a ~1.2 GB length.
    let mut r = Raw::connect(w.proxy.port()).await;
    r.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let got = r.outcome().await;
    accept_error_or_close("HTTP request", &got, &["08P01", "0A000"]);

    // Random bytes, then the client goes away.
    for seed in 0..20u64 {
        let mut r = Raw::connect(w.proxy.port()).await;
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bytes: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        r.send(&bytes).await;
        let _ = r.sock.shutdown().await;
        let got = r.outcome().await;
        accept_error_or_close(
            "random bytes",
            &got,
            &["08P01", "0A000", "28000", "28P01", "08004"],
        );
    }
    // A valid length with a nonsense protocol version.
    let mut r = Raw::connect(w.proxy.port()).await;
    r.send(&[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78]).await;
    let got = r.outcome().await;
    accept_error_or_close("unknown protocol version", &got, &["0A000", "08P01"]);
    w.still_serving("garbage bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packet_with_absurd_length() {
    let w = World::new().await;
    for len in [0x7fff_ffffu32, 0xffff_ffff, 1 << 30, 3, 0] {
        let mut r = Raw::connect(w.proxy.port()).await;
        let mut pkt = len.to_be_bytes().to_vec();
        pkt.extend_from_slice(&196_608i32.to_be_bytes());
        r.send(&pkt).await;
        let started = Instant::now();
        let got = r.outcome().await;
        accept_error_or_close(&format!("startup length {len:#x}"), &got, &["08P01"]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slow to refuse {len:#x}"
        );
    }
    w.still_serving("absurd startup lengths").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_messages_then_close() {
    let w = World::new().await;
    // A startup packet cut short.
    let mut r = Raw::connect(w.proxy.port()).await;
    r.send(&[0, 0, 0, 100, 0, 3, 0, 0, b'u', b's']).await;
    let _ = r.sock.shutdown().await;
    assert_eq!(r.outcome().await, Outcome::Closed);

    // A Query that declares more bytes than it sends: the INSERT must not run.
    let mut r = Raw::login(w.proxy.port()).await;
    let sql = cstr("INSERT INTO users (id, name) VALUES (99999, 'truncated')");
    let mut m = msg(b'Q', &sql);
    m.truncate(m.len() - 5);
    let declared = (sql.len() + 4) as i32;
    m[1..5].copy_from_slice(&declared.to_be_bytes());
    r.send(&m).await;
    let _ = r.sock.shutdown().await;
    let got = r.outcome().await;
    accept_error_or_close("truncated Query", &got, &["08P01"]);

    // The same inside an open transaction that already wrote: the write is rolled back.
    let mut r = Raw::login(w.proxy.port()).await;
    assert_eq!(r.simple("BEGIN").await.0, None);
    assert_eq!(
        r.simple("UPDATE users SET name = 'half' WHERE id = 5")
            .await
            .0,
        None
    );
    r.send(&m[..12]).await;
    let _ = r.sock.shutdown().await;
    let got = r.outcome().await;
    accept_error_or_close("truncated Query in a transaction", &got, &["08P01"]);

    // A Bind whose parameter length runs past the end of its frame.
    let mut r = Raw::login(w.proxy.port()).await;
    let mut parse = cstr("");
    parse.extend(cstr("SELECT name FROM users WHERE id = $1"));
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = Vec::new();
    bind.extend(cstr(""));
    bind.extend(cstr(""));
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes()); // binary
    bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter
    bind.extend_from_slice(&1000i32.to_be_bytes()); // of 1000 bytes...
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5]); // ...but only 8 follow
    let mut batch = msg(b'P', &parse);
    batch.extend(msg(b'B', &bind));
    batch.extend(msg(b'E', &[0, 0, 0, 0, 0]));
    batch.extend(msg(b'S', &[]));
    r.send(&batch).await;
    let got = r.outcome().await;
    accept_error_or_close("Bind with a parameter past its frame", &got, &["08P01"]);

    // Parse with fewer bytes than its own fields need.
    let mut r = Raw::login(w.proxy.port()).await;
    let mut batch = msg(b'P', b"\0SELECT 1");
    batch.extend(msg(b'S', &[]));
    r.send(&batch).await;
    let got = r.outcome().await;
    accept_error_or_close("short Parse", &got, &["08P01"]);

    tokio::time::sleep(Duration::from_millis(200)).await; // let the sessions wind down
    w.still_serving("truncated messages").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_declaring_1_gb() {
    let w = World::new().await;
    let rss_before = rss();
    for tag in [b'Q', b'P', b'B', b'd'] {
        let mut r = Raw::login(w.proxy.port()).await;
        let mut m = vec![tag];
        m.extend_from_slice(&(1i32 << 30).to_be_bytes());
        m.extend_from_slice(b"SELECT 1");
        r.send(&m).await;
        let started = Instant::now();
        let got = r.outcome().await;
        accept_error_or_close(
            &format!("1 GB {} message", tag as char),
            &got,
            &["08P01", "54000"],
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A 1 GB declaration in the startup packet too.
    let mut r = Raw::connect(w.proxy.port()).await;
    r.send(&[0x40, 0, 0, 0, 0, 3, 0, 0]).await;
    accept_error_or_close("1 GB startup", &r.outcome().await, &["08P01"]);

    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < 256 << 20,
        "the proxy's process grew by {} MB on 1 GB declarations",
        grown >> 20
    );
    w.still_serving("1 GB length declarations").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_after_login() {
    let w = World::new().await;
    for tag in [b'y', b'Z', 0u8, 0xff] {
        let mut r = Raw::login(w.proxy.port()).await;
        r.send(&msg(tag, b"hello")).await;
        let got = r.outcome().await;
        accept_error_or_close(&format!("message type {tag:#x}"), &got, &["08P01"]);
    }
    w.still_serving("unknown message types").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sql_unknown_table_and_wrong_key_type() {
    let w = World::new().await;
    let c = w.proxy.client().await;

    // Raw simple protocol: the error, then the same connection keeps working.
    let mut r = Raw::login(w.proxy.port()).await;
    let cases: &[(&str, &str)] = &[
        ("SELEC name FROM users WHERE id = 1", "42601"),
        ("SELECT name FROM users WHERE id = 1 AND", "42601"),
        ("INSERT INTO users (id, name) VALUES (1, 'x'", "42601"),
        ("SELECT * FROM no_such_table", "42P01"),
        ("SELECT * FROM no_such_table WHERE id = 3", "42P01"),
        ("SELECT name FROM users WHERE id = 'abc'", "22P02"),
        ("UPDATE users SET name = 'x' WHERE id = 'abc'", "22P02"),
        ("DELETE FROM users WHERE id = '1.5'", "22P02"),
        ("INSERT INTO users (id, name) VALUES ('abc', 'x')", "22P02"),
    ];
    for (sql, code) in cases {
        let (err, _) = r.simple(sql).await;
        assert_eq!(err.as_deref(), Some(*code), "{sql}");
        let (err, rows) = r.simple("SELECT name FROM users WHERE id = 2").await;
        assert_eq!((err, rows), (None, 1), "after {sql}");
    }
    // Inside a transaction: the error fails it (25P02) until ROLLBACK.
    assert_eq!(r.simple("BEGIN").await.0, None);
    assert_eq!(
        r.simple("SELECT name FROM users WHERE id = 'abc'")
            .await
            .0
            .as_deref(),
        Some("22P02")
    );
    assert_eq!(
        r.simple("SELECT name FROM users WHERE id = 2")
            .await
            .0
            .as_deref(),
        Some("25P02")
    );
    assert_eq!(r.simple("ROLLBACK").await.0, None);
    assert_eq!(
        r.simple("SELECT name FROM users WHERE id = 2").await,
        (None, 1)
    );

    // Extended protocol (tokio-postgres): errors at Parse and at Bind.
    for (sql, code) in [
        (
            "SELEC name FROM users WHERE id = $1",
            SqlState::SYNTAX_ERROR,
        ),
        (
            "SELECT name FROM no_such_table WHERE id = $1",
            SqlState::UNDEFINED_TABLE,
        ),
    ] {
        let e = c.query(sql, &[&1i64]).await.unwrap_err();
        assert_eq!(e.code(), Some(&code), "{sql}: {e}");
    }
    let e = c
        .query("SELECT name FROM users WHERE id = 'abc'", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::INVALID_TEXT_REPRESENTATION),
        "{e}"
    );

    // A text-format parameter that is not an integer, and a binary one of the wrong size.
    let mut parse = cstr("");
    parse.extend(cstr("SELECT name FROM users WHERE id = $1"));
    parse.extend_from_slice(&0i16.to_be_bytes());
    for (format, value, code) in [
        (0i16, b"abc".to_vec(), "22P02"),
        (1i16, vec![0, 0, 7], "22P03"),
    ] {
        let mut bind = Vec::new();
        bind.extend(cstr(""));
        bind.extend(cstr(""));
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&format.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&(value.len() as i32).to_be_bytes());
        bind.extend_from_slice(&value);
        bind.extend_from_slice(&0i16.to_be_bytes());
        let mut batch = msg(b'P', &parse);
        batch.extend(msg(b'B', &bind));
        batch.extend(msg(b'E', &[0, 0, 0, 0, 0]));
        batch.extend(msg(b'S', &[]));
        r.send(&batch).await;
        let (err, rows) = r.until_ready().await;
        assert_eq!(
            err.as_deref(),
            Some(code),
            "parameter {value:?} in format {format}"
        );
        assert_eq!(rows, 0);
        assert_eq!(
            r.simple("SELECT name FROM users WHERE id = 2").await,
            (None, 1)
        );
    }

    // The tokio-postgres session is fine too.
    let n = c
        .query("SELECT name FROM users WHERE id = $1", &[&3i64])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1);
    w.still_serving("invalid SQL, unknown tables and wrong key types")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user() {
    let w = World::new().await;
    let port = w.proxy.port();
    for (user, password) in [("app", "wrong"), ("app", ""), ("nobody", "app-secret")] {
        let conninfo =
            format!("host=127.0.0.1 port={port} user={user} password='{password}' dbname=app");
        let started = Instant::now();
        let e = match tokio_postgres::connect(&conninfo, NoTls).await {
            Ok(_) => panic!("{user}/{password:?} was let in"),
            Err(e) => e,
        };
        assert_eq!(
            e.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}/{password:?}: {e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A raw client that answers the md5 challenge wrongly.
    let mut r = Raw::connect(port).await;
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    body.put_slice(b"user\0app\0\0");
    let mut pkt = BytesMut::new();
    pkt.put_i32(body.len() as i32 + 4);
    pkt.put_slice(&body);
    r.send(&pkt).await;
    let (tag, _) = r.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(tag, b'R');
    r.send(&msg(b'p', &cstr("md5000000000000000000000000000000000")))
        .await;
    assert_eq!(r.outcome().await, Outcome::Error("28P01".into()));
    // A client that leaves in the middle of authentication.
    let mut r = Raw::connect(port).await;
    r.send(&pkt).await;
    let _ = r.sock.shutdown().await;
    let _ = r.outcome().await;
    w.still_serving("wrong passwords").await;
}

/// Parse/Bind/Execute sent with Flush (no Sync): answered without waiting for Sync on one
/// shard; refused (not hung) when the statement spans all shards; after that error the
/// messages up to Sync are skipped and Sync gets exactly one ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_sync_never_hangs() {
    let w = World::new().await;
    let mut r = Raw::login(w.proxy.port()).await;
    let parse = |sql: &str| {
        let mut b = cstr("");
        b.extend(cstr(sql));
        b.extend([0, 0]);
        msg(b'P', &b)
    };
    // portal "", statement "", no formats, no params, no result formats
    let bind = msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
    let execute = msg(b'E', &[0, 0, 0, 0, 0]);
    let flush = msg(b'H', &[]);
    let sync = msg(b'S', &[]);

    // One shard: ParseComplete, BindComplete, a row and CommandComplete arrive at Flush.
    let mut out = parse("SELECT name FROM users WHERE id = 2");
    out.extend(&bind);
    out.extend(&execute);
    out.extend(&flush);
    r.send(&out).await;
    let mut tags = Vec::new();
    while tags.last() != Some(&b'C') {
        let (tag, _) = r.recv(Duration::from_secs(10)).await.expect("closed");
        tags.push(tag);
    }
    assert_eq!(tags, vec![b'1', b'2', b'D', b'C']);
    r.send(&sync).await;
    assert_eq!(r.until_ready().await, (None, 0));

    // A write on all shards cannot stop at a Flush (a read can: it runs as its own
    // exchange): an error at Flush, then Sync -> one ReadyForQuery.
    let mut out = parse("UPDATE users SET name = name");
    out.extend(&bind);
    out.extend(&execute);
    out.extend(&flush);
    r.send(&out).await;
    let (tag, body) = r.recv(Duration::from_secs(10)).await.expect("closed");
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body).remove(&b'C').as_deref(), Some("0A000"));
    r.send(&execute).await; // skipped: still before Sync
    r.send(&sync).await;
    assert_eq!(r.until_ready().await, (None, 0));
    assert_eq!(
        r.simple("SELECT name FROM users WHERE id = 2").await,
        (None, 1)
    );
}
