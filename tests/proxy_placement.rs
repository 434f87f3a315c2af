//! Placement through the proxy: DDL reaches every shard, hashed rows land on exactly the
//! shard the ring names (checked by connecting to each shard directly), a key routes the
//! same whether it arrives as a literal, a text parameter or a binary parameter, reference
//! tables are copied everywhere and co-located joins stay on one shard.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{Proxy, TestEnv};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n\
                      orders: { key: user_id, type: bigint, strategy: hash }\n\
                      countries: { strategy: reference }\n";

/// The shard the map's hash ring assigns to an integer key.
fn expected_shard(env: &TestEnv, id: i64) -> usize {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    map.hash_shard(&KeyValue::Int(id))
}

/// Expected shard for many keys (parses the map once).
fn expected_shards(env: &TestEnv, ids: impl IntoIterator<Item = i64>) -> HashMap<i64, usize> {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    ids.into_iter()
        .map(|id| (id, map.hash_shard(&KeyValue::Int(id))))
        .collect()
}

/// Rows of a simple query, as text.
fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A minimal hand-written protocol client (SCRAM login), used to send text-format `Bind`
/// parameters, which tokio-postgres never does.
struct RawClient {
    sock: TcpStream,
    buf: BytesMut,
}

/// One backend message.
struct Msg {
    tag: u8,
    body: Bytes,
}

impl RawClient {
    async fn connect(port: u16, user: &str, password: &str) -> RawClient {
        let sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut c = RawClient {
            sock,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", user), ("database", "app")],
            &mut out,
        )
        .unwrap();
        c.send(&out).await;
        let mut scram = None;
        loop {
            let m = c.recv().await.expect("proxy closed during login");
            match m.tag {
                b'R' => {
                    let mut b = m.body.clone();
                    let code = b.get_i32();
                    let mut out = BytesMut::new();
                    match code {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            postgres_protocol::message::frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut out,
                            )
                            .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASLContinue before SASL");
                            s.update(&b).unwrap();
                            postgres_protocol::message::frontend::sasl_response(
                                s.message(),
                                &mut out,
                            )
                            .unwrap();
                        }
                        12 => scram.as_mut().unwrap().finish(&b).unwrap(),
                        other => panic!("unexpected authentication request {other}"),
                    }
                    if !out.is_empty() {
                        c.send(&out).await;
                    }
                }
                b'E' => panic!("login failed: {:?}", error_fields(&m.body)),
                b'Z' => return c,
                _ => {}
            }
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.sock.write_all(b).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let mut frame = self.buf.split_to(len + 1).freeze();
                    let tag = frame.get_u8();
                    frame.advance(4);
                    return Some(Msg { tag, body: frame });
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.sock.read_buf(&mut self.buf))
                    .await
                    .expect("no reply from the proxy within 20 s")
                    .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    /// Parse/Bind/Execute/Sync with every parameter in text format (types unspecified);
    /// the rows as text, or the SQLSTATE of the error.
    async fn query_text_params(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        use postgres_protocol::message::frontend;
        let mut out = BytesMut::new();
        frontend::parse("", sql, std::iter::empty(), &mut out).unwrap();
        frontend::bind(
            "",
            "",
            std::iter::once(0i16),
            params.iter(),
            |p, buf| {
                buf.put_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::once(0i16),
            &mut out,
        )
        .map_err(|_| "bind encoding".to_string())
        .unwrap();
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        self.send(&out).await;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let m = self.recv().await.expect("proxy closed the connection");
            match m.tag {
                b'D' => rows.push(data_row(&m.body)),
                b'E' => err = Some(error_fields(&m.body).remove(&b'C').unwrap_or_default()),
                b'Z' => break,
                _ => {}
            }
        }
        match err {
            Some(code) => Err(code),
            None => Ok(rows),
        }
    }
}

fn data_row(body: &Bytes) -> Vec<Option<String>> {
    let mut b = body.clone();
    let n = b.get_i16();
    (0..n)
        .map(|_| {
            let len = b.get_i32();
            if len < 0 {
                None
            } else {
                let v = b.split_to(len as usize);
                Some(String::from_utf8(v.to_vec()).unwrap())
            }
        })
        .collect()
}

fn error_fields(body: &Bytes) -> HashMap<u8, String> {
    let mut out = HashMap::new();
    let mut b = body.clone();
    while b.has_remaining() {
        let t = b.get_u8();
        if t == 0 {
            break;
        }
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let v = String::from_utf8_lossy(&b[..end]).into_owned();
        b.advance((end + 1).min(b.len()));
        out.insert(t, v);
    }
    out
}

/// Every (id, name) row of `table` on each shard, read directly from the shards.
async fn rows_per_shard(env: &TestEnv, sql: &str) -> Vec<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for i in 0..env.shard_count() {
        let c = env.shard_client(i).await;
        let rows = c.query(sql, &[]).await.unwrap();
        out.push(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_on_every_shard_and_10k_rows_each_on_its_hash_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    c.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, score int NOT NULL DEFAULT 0)",
    )
    .await
    .unwrap();

    // The table exists on every shard, with its columns.
    for i in 0..env.shard_count() {
        let s = env.shard_client(i).await;
        let cols: Vec<String> = s
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = 'users' ORDER BY ordinal_position",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(cols, ["id", "name", "score"], "users on shard {i}");
    }

    // 10,000 rows through 8 concurrent clients: half bind the key as a binary int8
    // parameter (prepared statement), half send it as a literal (simple protocol, as psql).
    const N: i64 = 10_000;
    const CLIENTS: i64 = 8;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let conninfo = proxy.conninfo();
        tasks.spawn(async move {
            let c = common::connect(&conninfo).await;
            let ids = (1..=N).filter(|id| id % CLIENTS == k);
            if k % 2 == 0 {
                let st = c
                    .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
                    .await
                    .unwrap();
                for id in ids {
                    let n = c.execute(&st, &[&id, &format!("user-{id}")]).await.unwrap();
                    assert_eq!(n, 1);
                }
            } else {
                for id in ids {
                    c.batch_execute(&format!(
                        "INSERT INTO users (id, name) VALUES ({id}, 'user-{id}')"
                    ))
                    .await
                    .unwrap();
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!("inserted {N} rows in {:?}", started.elapsed());

    // Each row on exactly one shard, the one the ring names.
    let expected = expected_shards(&env, 1..=N);
    let per_shard = rows_per_shard(&env, "SELECT id, name FROM users").await;
    let mut seen = HashSet::new();
    let even = N as f64 / env.shard_count() as f64;
    for (i, rows) in per_shard.iter().enumerate() {
        for (id, name) in rows {
            assert!(seen.insert(*id), "id {id} is on more than one shard");
            assert_eq!(
                expected[id], i,
                "id {id} is on shard {i}, the ring says {}",
                expected[id]
            );
            assert_eq!(name, &format!("user-{id}"));
        }
        let share = rows.len() as f64 / even;
        eprintln!(
            "shard {i}: {} rows ({share:.2} of an even share)",
            rows.len()
        );
        assert!(
            (0.5..=1.5).contains(&share),
            "shard {i} holds {} rows, {share:.2}× its even share of {even:.0}",
            rows.len()
        );
    }
    assert_eq!(seen.len(), N as usize, "rows missing from the shards");

    // Point reads through the proxy, both protocols.
    let st = c
        .prepare("SELECT id, name FROM users WHERE id = $1")
        .await
        .unwrap();
    for id in (1..=N).step_by(97).chain([N]) {
        let rows = c.query(&st, &[&id]).await.unwrap();
        assert_eq!(rows.len(), 1, "id {id}");
        assert_eq!(rows[0].get::<_, i64>(0), id);
        assert_eq!(rows[0].get::<_, String>(1), format!("user-{id}"));
        let rows = simple_rows(
            &c.simple_query(&format!("SELECT id, name FROM users WHERE id = {id}"))
                .await
                .unwrap(),
        );
        assert_eq!(
            rows,
            vec![vec![Some(id.to_string()), Some(format!("user-{id}"))]]
        );
    }
    assert!(c.query(&st, &[&(N + 1)]).await.unwrap().is_empty());

    // A keyless read scatters: every row exactly once.
    let all = c.query("SELECT id FROM users", &[]).await.unwrap();
    let mut ids: Vec<i64> = all.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_text_param_and_binary_param_route_identically() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    let mut raw = RawClient::connect(proxy.port(), "app", "app-secret").await;
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();

    let ids: Vec<i64> = (1..=60).map(|i| i * 7919 - 30_000).collect(); // negatives too
    let expected = expected_shards(&env, ids.iter().copied());
    let shards_hit: HashSet<usize> = expected.values().copied().collect();
    assert_eq!(shards_hit.len(), 3, "the sample must cover every shard");

    let bin_insert = c
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await
        .unwrap();
    let bin_select = c
        .prepare("SELECT name FROM users WHERE id = $1")
        .await
        .unwrap();
    // An int4 parameter for the bigint key: 4 binary bytes.
    let int4_select = c
        .prepare_typed("SELECT name FROM users WHERE id = $1", &[Type::INT4])
        .await
        .unwrap();

    for (n, &id) in ids.iter().enumerate() {
        let name = format!("n{id}");
        // Insert through one form...
        match n % 3 {
            0 => c
                .batch_execute(&format!(
                    "INSERT INTO users (id, name) VALUES ({id}, '{name}')"
                ))
                .await
                .unwrap(),
            1 => {
                c.execute(&bin_insert, &[&id, &name]).await.unwrap();
            }
            _ => {
                raw.query_text_params(
                    "INSERT INTO users (id, name) VALUES ($1, $2)",
                    &[&id.to_string(), &name],
                )
                .await
                .unwrap();
            }
        }
        // ...and read it back through all of them.
        let want = vec![vec![Some(name.clone())]];
        let lit = simple_rows(
            &c.simple_query(&format!("SELECT name FROM users WHERE id = {id}"))
                .await
                .unwrap(),
        );
        assert_eq!(lit, want, "literal read of {id}");
        let quoted = simple_rows(
            &c.simple_query(&format!("SELECT name FROM users WHERE id = '{id}'"))
                .await
                .unwrap(),
        );
        assert_eq!(quoted, want, "quoted-literal read of {id}");
        let txt = raw
            .query_text_params("SELECT name FROM users WHERE id = $1", &[&id.to_string()])
            .await
            .unwrap();
        assert_eq!(txt, want, "text-parameter read of {id}");
        let bin: Vec<String> = c
            .query(&bin_select, &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(bin, std::slice::from_ref(&name), "binary int8 read of {id}");
        let id4 = i32::try_from(id).unwrap();
        let bin4: Vec<String> = c
            .query(&int4_select, &[&id4])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            bin4,
            std::slice::from_ref(&name),
            "binary int4 read of {id}"
        );
        // UPDATE and DELETE route the same way: update via the text parameter form.
        let upd = raw
            .query_text_params(
                "UPDATE users SET name = name || '!' WHERE id = $1 RETURNING name",
                &[&id.to_string()],
            )
            .await
            .unwrap();
        assert_eq!(upd, vec![vec![Some(format!("{name}!"))]]);
    }

    // Every row on its ring shard, nowhere else.
    let per_shard = rows_per_shard(&env, "SELECT id, name FROM users").await;
    let mut count = 0;
    for (i, rows) in per_shard.iter().enumerate() {
        for (id, name) in rows {
            assert_eq!(expected[id], i, "id {id} on shard {i}");
            assert_eq!(name, &format!("n{id}!"));
            count += 1;
        }
    }
    assert_eq!(count, ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_table_is_identical_on_every_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France')")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO countries VALUES ('NL', 'Netherland')")
        .await
        .unwrap();
    let ins = c
        .prepare("INSERT INTO countries (code, name) VALUES ($1, $2)")
        .await
        .unwrap();
    for (code, name) in [("US", "United States"), ("CA", "Canada"), ("JP", "Japan")] {
        // (The affected-row count is checked in reference_writes_report_one_copy.)
        c.execute(&ins, &[&code, &name]).await.unwrap();
    }
    c.execute(
        "UPDATE countries SET name = $1 WHERE code = $2",
        &[&"Netherlands", &"NL"],
    )
    .await
    .unwrap();
    c.batch_execute("DELETE FROM countries WHERE code = 'JP'")
        .await
        .unwrap();

    let want: Vec<(String, String)> = [
        ("CA", "Canada"),
        ("DE", "Germany"),
        ("FR", "France"),
        ("NL", "Netherlands"),
        ("US", "United States"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for i in 0..env.shard_count() {
        let s = env.shard_client(i).await;
        let got: Vec<(String, String)> = s
            .query("SELECT code, name FROM countries ORDER BY code", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, want, "countries on shard {i}");
    }

    // Reads go to one copy: each row once, not once per shard.
    let rows = c
        .query("SELECT code, name FROM countries", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), want.len(), "a reference read must not scatter");
    let one = c
        .query("SELECT name FROM countries WHERE code = $1", &[&"FR"])
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].get::<_, String>(0), "France");
    // One copy answers the whole query, so ORDER BY / aggregates are plain Postgres.
    let sorted: Vec<String> = c
        .query("SELECT code FROM countries ORDER BY code", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sorted, ["CA", "DE", "FR", "NL", "US"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colocated_join_on_the_key_returns_the_right_rows() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    let reference = env.reference_client().await;
    let users_ddl = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";
    let orders_ddl =
        "CREATE TABLE orders (id bigint NOT NULL, user_id bigint NOT NULL, amount int NOT NULL, \
               PRIMARY KEY (user_id, id))";
    // One statement per string: a multi-statement string writing on every shard is an
    // implicit multi-shard transaction, which the proxy refuses.
    for ddl in [users_ddl, orders_ddl] {
        c.batch_execute(ddl).await.unwrap();
        reference.batch_execute(ddl).await.unwrap();
    }

    let ins_user = c
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await
        .unwrap();
    let ins_order = c
        .prepare("INSERT INTO orders (id, user_id, amount) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    let mut order_id = 0i64;
    for uid in 1..=60i64 {
        let name = format!("u{uid}");
        c.execute(&ins_user, &[&uid, &name]).await.unwrap();
        reference
            .execute(
                "INSERT INTO users (id, name) VALUES ($1, $2)",
                &[&uid, &name],
            )
            .await
            .unwrap();
        for k in 0..(uid % 4) {
            order_id += 1;
            let amount = (uid * 10 + k) as i32;
            c.execute(&ins_order, &[&order_id, &uid, &amount])
                .await
                .unwrap();
            reference
                .execute(
                    "INSERT INTO orders (id, user_id, amount) VALUES ($1, $2, $3)",
                    &[&order_id, &uid, &amount],
                )
                .await
                .unwrap();
        }
    }

    // Orders sit with their user: on the shard the ring names for user_id.
    for i in 0..env.shard_count() {
        let s = env.shard_client(i).await;
        for r in s.query("SELECT user_id FROM orders", &[]).await.unwrap() {
            let uid: i64 = r.get(0);
            assert_eq!(
                expected_shard(&env, uid),
                i,
                "order of user {uid} on shard {i}"
            );
        }
        let orphans: i64 = s
            .query_one(
                "SELECT count(*) FROM orders o LEFT JOIN users u ON u.id = o.user_id WHERE u.id IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(orphans, 0, "orders without their user on shard {i}");
    }

    let join =
        "SELECT u.id, u.name, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id \
                WHERE u.id = $1 ORDER BY o.id";
    let via_proxy = c.prepare(join).await.unwrap();
    let agg = "SELECT u.name, count(o.id), coalesce(sum(o.amount), 0)::bigint FROM users AS u \
               LEFT JOIN public.orders o ON o.user_id = u.id WHERE u.id = $1::bigint GROUP BY u.name";
    let via_proxy_agg = c.prepare(agg).await.unwrap();
    let mut by_uid: BTreeMap<i64, usize> = BTreeMap::new();
    for uid in 1..=60i64 {
        let got: Vec<(i64, String, i64, i32)> = c
            .query(&via_proxy, &[&uid])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let want: Vec<(i64, String, i64, i32)> = reference
            .query(join, &[&uid])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(got, want, "join for user {uid}");
        assert_eq!(got.len() as i64, uid % 4);
        by_uid.insert(uid, got.len());

        let got: Vec<(String, i64, i64)> = c
            .query(&via_proxy_agg, &[&uid])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let want: Vec<(String, i64, i64)> = reference
            .query(agg, &[&uid])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(got, want, "aggregate join for user {uid}");
    }
    assert_eq!(by_uid.values().sum::<usize>() as i64, order_id);

    // The literal form of the same join.
    let rows = simple_rows(
        &c.simple_query(
            "SELECT o.amount FROM orders o JOIN users u ON u.id = o.user_id WHERE o.user_id = 7 ORDER BY o.id",
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        rows,
        vec![
            vec![Some("70".to_string())],
            vec![Some("71".to_string())],
            vec![Some("72".to_string())]
        ]
    );
}

/// A write to a reference table runs on every copy, but the client must see what one
/// Postgres would report: one command tag count and one set of RETURNING rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_writes_report_one_copy() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    let mut wrong = Vec::new();
    let mut check = |what: &str, got: u64, want: u64| {
        if got != want {
            wrong.push(format!("{what}: {got}, one Postgres reports {want}"));
        }
    };
    // Extended protocol.
    let n = c
        .execute(
            "INSERT INTO countries (code, name) VALUES ($1, $2)",
            &[&"DE", &"Germany"],
        )
        .await
        .unwrap();
    check("extended INSERT of 1 row", n, 1);
    let n = c
        .execute(
            "UPDATE countries SET name = $1 WHERE code = $2",
            &[&"Deutschland", &"DE"],
        )
        .await
        .unwrap();
    check("extended UPDATE of 1 row", n, 1);
    let rows = c
        .query(
            "INSERT INTO countries (code, name) VALUES ($1, $2) RETURNING code",
            &[&"FR", &"France"],
        )
        .await
        .unwrap();
    check("extended INSERT .. RETURNING rows", rows.len() as u64, 1);
    // Simple protocol.
    let msgs = c
        .simple_query("INSERT INTO countries VALUES ('NL', 'Netherlands'), ('BE', 'Belgium')")
        .await
        .unwrap();
    let tag = msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    check("simple INSERT of 2 rows", tag.unwrap_or(0), 2);
    let msgs = c
        .simple_query("DELETE FROM countries WHERE code = 'BE' RETURNING code")
        .await
        .unwrap();
    check(
        "simple DELETE .. RETURNING rows",
        simple_rows(&msgs).len() as u64,
        1,
    );
    assert!(
        wrong.is_empty(),
        "reference-table writes report every copy: {wrong:#?}"
    );
}
