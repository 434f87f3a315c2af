//! Placement strategies end to end: hash, range, geo, directory and reference tables on
//! three real shards (regions eu, us, us). Every placement is checked by connecting to each
//! shard directly and comparing with a shard computed independently in the test (range
//! bounds, region lists, the directory table, the map's own hash ring); which shards a range
//! predicate reaches is proved from the backends themselves (`pg_stat_activity` and table
//! locks); the admin console (`dbname=shardwire`) assigns and moves directory keys while
//! writes continue; refusals carry the documented SQLSTATEs and leave the session usable.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Proxy, TestEnv};
use futures::SinkExt;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, SimpleQueryMessage};

// ----------------------------------------------------------------------------------------
// Maps and schemas
// ----------------------------------------------------------------------------------------

/// Regions of s0, s1, s2.
const REGIONS: &[&str] = &["eu", "us", "us"];

/// One table of every strategy (the product design's example), plus a second directory
/// table sharing the directory.
const TABLES: &str = r#"users: { key: id, type: bigint, strategy: hash }
events:
  key: created_at
  type: timestamptz
  strategy: range
  ranges:
    - { below: "2025-01-01", shard: s0 }
    - { below: "2026-01-01", shard: s1 }
    - { shard: s2 }
customers:
  key: country
  type: text
  strategy: geo
  regions: { eu: [DE, FR, NL], us: [US, CA] }
  default_region: us
tenant_docs:
  key: tenant_id
  type: text
  strategy: directory
  entries: { acme: s0, globex: s1 }
  fallback: hash
tenant_users:
  key: tenant_id
  type: text
  strategy: directory
  entries: { acme: s0, globex: s1 }
  fallback: hash
countries: { strategy: reference }
"#;

/// The strict variants: no catch-all range, no default region, reject unknown tenants.
const STRICT_TABLES: &str = r#"users: { key: id, type: bigint, strategy: hash }
events:
  key: created_at
  type: timestamptz
  strategy: range
  ranges:
    - { below: "2025-01-01", shard: s0 }
    - { below: "2026-01-01", shard: s1 }
customers:
  key: country
  type: text
  strategy: geo
  regions: { eu: [DE, FR, NL], us: [US, CA] }
tenant_docs:
  key: tenant_id
  type: text
  strategy: directory
  entries: { acme: s0, globex: s1 }
  fallback: reject
"#;

const USERS_DDL: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";
const EVENTS_DDL: &str =
    "CREATE TABLE events (id bigint NOT NULL, created_at timestamptz NOT NULL, note text NOT NULL)";
const CUSTOMERS_DDL: &str = "CREATE TABLE customers (id bigint NOT NULL, country text NOT NULL, \
                             name text NOT NULL, PRIMARY KEY (country, id))";
const TENANT_DOCS_DDL: &str = "CREATE TABLE tenant_docs (tenant_id text NOT NULL, \
                               doc_id bigint NOT NULL, body text NOT NULL, \
                               PRIMARY KEY (tenant_id, doc_id))";
const TENANT_USERS_DDL: &str = "CREATE TABLE tenant_users (tenant_id text NOT NULL, \
                                user_id bigint NOT NULL, email text NOT NULL)";
const COUNTRIES_DDL: &str = "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL)";

/// The geo table's regions, as in [`TABLES`].
const EU: &[&str] = &["DE", "FR", "NL"];
const US: &[&str] = &["US", "CA"];

/// The full map (regions, `app` is an admin) for `env`.
fn full_map(env: &TestEnv) -> String {
    env.shard_map_yaml_with(TABLES, "", REGIONS, true)
}

/// A hash-only map over the same shards and vnodes: its ring is the one the proxy hashes
/// with (ring tokens derive from shard names and weights only). Parses with or without the
/// new strategies, so expected hash placement never depends on the code under test.
fn ring_map(env: &TestEnv) -> ShardMap {
    let yaml = env.shard_map_yaml_with(
        "users: { key: id, type: bigint, strategy: hash }",
        "",
        REGIONS,
        false,
    );
    ShardMap::from_yaml_str(&yaml, "hash-only test map").unwrap()
}

fn ring_int(map: &ShardMap, id: i64) -> usize {
    map.hash_shard(&KeyValue::Int(id))
}

fn ring_text(map: &ShardMap, key: &str) -> usize {
    map.hash_shard(&KeyValue::Text(key.to_string()))
}

// ----------------------------------------------------------------------------------------
// Time: range bounds and literals (no chrono in this crate)
// ----------------------------------------------------------------------------------------

const MICROS: i64 = 1_000_000;
const HOUR: i64 = 3600 * MICROS;
const DAY: i64 = 24 * HOUR;

use common::{civil_from_days, days_from_civil};

/// Microseconds since the Unix epoch of midnight UTC on a date.
fn utc_midnight(y: i64, m: i64, d: i64) -> i64 {
    days_from_civil(y, m, d) * DAY
}

/// The range bounds of `events` ("2025-01-01" and "2026-01-01", UTC).
fn b2025() -> i64 {
    utc_midnight(2025, 1, 1)
}
fn b2026() -> i64 {
    utc_midnight(2026, 1, 1)
}

/// The shard `events` places an instant on (with the catch-all range).
fn range_shard(us: i64) -> usize {
    if us < b2025() {
        0
    } else if us < b2026() {
        1
    } else {
        2
    }
}

/// `'YYYY-MM-DD HH:MM:SS[.ffffff]+HH:MM'` for an instant written at a UTC offset.
fn ts_literal(us: i64, offset_min: i64) -> String {
    let local = us + offset_min * 60 * MICROS;
    let (y, m, d) = civil_from_days(local.div_euclid(DAY));
    let in_day = local.rem_euclid(DAY);
    let (h, mi, s, f) = (
        in_day / HOUR,
        in_day % HOUR / (60 * MICROS),
        in_day % (60 * MICROS) / MICROS,
        in_day % MICROS,
    );
    let frac = if f == 0 {
        String::new()
    } else {
        format!(".{f:06}")
    };
    let sign = if offset_min < 0 { '-' } else { '+' };
    let off = offset_min.abs();
    format!(
        "{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}{frac}{sign}{:02}:{:02}",
        off / 60,
        off % 60
    )
}

fn system_time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).expect("after 1970"))
}

/// SQL selecting an instant as microseconds since the Unix epoch.
const EPOCH_US: &str = "(extract(epoch FROM created_at) * 1000000)::bigint";

// ----------------------------------------------------------------------------------------
// Client helpers
// ----------------------------------------------------------------------------------------

/// `SQLSTATE message` of a server error, or the whole error otherwise.
fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
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

/// Rows of a simple query as column name -> text value.
fn named_rows(msgs: &[SimpleQueryMessage]) -> Vec<BTreeMap<String, Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The value of column `name` (panics listing the columns when absent or NULL).
fn col<'a>(row: &'a BTreeMap<String, Option<String>>, name: &str) -> &'a str {
    match row.get(name) {
        Some(Some(v)) => v,
        Some(None) => panic!("column {name} is NULL in {row:?}"),
        None => panic!("no column {name} in {row:?}"),
    }
}

/// The row count of the last CommandComplete.
fn command_count(msgs: &[SimpleQueryMessage]) -> Option<u64> {
    msgs.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    })
}

/// Runs `sql` (simple protocol), panicking with the server's error.
async fn simple(c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {}", short(sql), err_text(&e)))
}

/// The first 200 characters of a statement, for messages.
fn short(sql: &str) -> String {
    if sql.len() <= 200 {
        sql.to_string()
    } else {
        format!("{}… ({} bytes)", &sql[..200], sql.len())
    }
}

/// An admin-console command (simple protocol): its rows by column name.
async fn admin(a: &Client, cmd: &str) -> Vec<BTreeMap<String, Option<String>>> {
    let msgs = a
        .simple_query(cmd)
        .await
        .unwrap_or_else(|e| panic!("admin console `{cmd}`: {}", err_text(&e)));
    named_rows(&msgs)
}

/// `SELECT 1` on `c` must still work after `after`.
async fn assert_usable(c: &Client, after: &str) {
    let rows = c
        .simple_query("SELECT 1")
        .await
        .unwrap_or_else(|e| panic!("session unusable after {after}: {}", err_text(&e)));
    assert_eq!(
        simple_rows(&rows),
        vec![vec![Some("1".to_string())]],
        "SELECT 1 after {after}"
    );
}

/// `sql` (simple protocol) must fail with `code` and a message naming `table` (when not
/// empty); the session must then still work. Returns the message.
async fn expect_refusal(c: &Client, what: &str, sql: &str, code: &str, table: &str) -> String {
    let r = c.simple_query(sql).await;
    check_refusal(c, what, sql, r.map(|_| ()), code, table).await
}

/// Like [`expect_refusal`], for an extended-protocol statement with parameters.
async fn expect_refusal_ext(
    c: &Client,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    code: &str,
    table: &str,
) -> String {
    let r = c.execute(sql, params).await;
    check_refusal(c, what, sql, r.map(|_| ()), code, table).await
}

async fn check_refusal(
    c: &Client,
    what: &str,
    sql: &str,
    r: Result<(), tokio_postgres::Error>,
    code: &str,
    table: &str,
) -> String {
    let e = match r {
        Ok(()) => panic!(
            "{what}: `{}` succeeded, expected SQLSTATE {code}",
            short(sql)
        ),
        Err(e) => e,
    };
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: `{}`: not a server error: {e:?}", short(sql)));
    assert_eq!(
        db.code().code(),
        code,
        "{what}: `{}` failed with the wrong SQLSTATE: {}",
        short(sql),
        err_text(&e)
    );
    assert!(
        db.message().contains(table),
        "{what}: the message should name table {table}: {}",
        err_text(&e)
    );
    eprintln!("{what}: refused as expected: {}", err_text(&e));
    assert_usable(c, what).await;
    db.message().to_string()
}

/// Multi-row INSERTs of `values` (SQL tuples) through the simple protocol, `batch` rows
/// per statement; each statement's command tag must count its rows.
async fn insert_batches(c: &Client, head: &str, values: &[String], batch: usize) {
    for chunk in values.chunks(batch) {
        let sql = format!("{head} VALUES {}", chunk.join(", "));
        let msgs = simple(c, &sql).await;
        assert_eq!(
            command_count(&msgs),
            Some(chunk.len() as u64),
            "command tag of a {}-row `{head}`",
            chunk.len()
        );
    }
}

/// `sql` run directly on every shard, each row mapped by `f`.
async fn per_shard<T>(env: &TestEnv, sql: &str, f: impl Fn(&Row) -> T) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(env.shard_count());
    for i in 0..env.shard_count() {
        let rows = env
            .shard_client(i)
            .await
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} on shard {i}: {}", err_text(&e)));
        out.push(rows.iter().map(&f).collect());
    }
    out
}

/// A single bigint through the proxy.
async fn proxy_count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)))
        .get(0)
}

/// `COPY ... FROM STDIN` of `lines` (each ending in a newline), sent in chunks of `chunk`
/// lines.
async fn copy_lines(
    c: &Client,
    sql: &str,
    lines: &[String],
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let mut sink = Box::pin(c.copy_in::<_, Bytes>(sql).await?);
    for part in lines.chunks(chunk) {
        sink.send(Bytes::from(part.concat())).await?;
    }
    sink.as_mut().finish().await
}

/// The directory table (`shardwire.shardwire_directory` on s0), read directly: key -> shard.
async fn directory_table(env: &TestEnv) -> BTreeMap<String, String> {
    env.shard_client(0)
        .await
        .query(
            "SELECT key::text, shard::text FROM shardwire.shardwire_directory",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading shardwire_directory on s0: {}", err_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Creates the tables through the proxy (one statement each: DDL goes to every shard) and
/// checks each exists on every shard.
async fn create_tables(env: &TestEnv, c: &Client, ddls: &[&str]) {
    for ddl in ddls {
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {}", err_text(&e)));
    }
    let names: Vec<String> = ddls
        .iter()
        .map(|d| d.split_whitespace().nth(2).unwrap().to_string())
        .collect();
    for i in 0..env.shard_count() {
        let s = env.shard_client(i).await;
        for n in &names {
            let found: i64 = s
                .query_one(
                    "SELECT count(*) FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_name = $1",
                    &[n],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(found, 1, "table {n} was not created on shard {i}");
        }
    }
}

// ----------------------------------------------------------------------------------------
// Placement checks shared by several tests
// ----------------------------------------------------------------------------------------

/// Every `users` row with id in `ids` must be on exactly the ring shard of its id, with
/// the expected name; no other id in `[lo, hi]` may exist. Returns id -> shard.
async fn check_users(
    env: &TestEnv,
    ring: &ShardMap,
    expected: &BTreeMap<i64, String>,
    lo: i64,
    hi: i64,
) -> HashMap<i64, usize> {
    let sql = format!("SELECT id, name FROM users WHERE id BETWEEN {lo} AND {hi}");
    let per = per_shard(env, &sql, |r| (r.get::<_, i64>(0), r.get::<_, String>(1))).await;
    let mut at = HashMap::with_capacity(expected.len());
    for (i, rows) in per.iter().enumerate() {
        for (id, name) in rows {
            if let Some(prev) = at.insert(*id, i) {
                panic!("users id {id} is on shard {prev} and on shard {i}");
            }
            let want = expected
                .get(id)
                .unwrap_or_else(|| panic!("users id {id} on shard {i} was never inserted"));
            assert_eq!(name, want, "users id {id} on shard {i}: name");
            assert_eq!(
                ring_int(ring, *id),
                i,
                "users id {id} is on shard {i}, the hash ring says {}",
                ring_int(ring, *id)
            );
        }
    }
    let missing: Vec<&i64> = expected
        .keys()
        .filter(|id| !at.contains_key(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "users ids on no shard, e.g. {missing:?}"
    );
    assert_eq!(at.len(), expected.len());
    at
}

/// Every `customers` row (id -> (country, name)) must be on its region's shard: eu rows on
/// s0, us (and default-region) rows on s1 or s2, each country's rows on exactly one shard.
/// Returns country -> shard.
async fn check_customers(
    env: &TestEnv,
    expected: &BTreeMap<i64, (String, String)>,
) -> BTreeMap<String, usize> {
    let per = per_shard(env, "SELECT id, country, name FROM customers", |r| {
        (
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
        )
    })
    .await;
    let mut seen = HashSet::new();
    let mut country_shards: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, rows) in per.iter().enumerate() {
        for (id, country, name) in rows {
            assert!(
                seen.insert(*id),
                "customers id {id} is on more than one shard"
            );
            let (want_c, want_n) = expected
                .get(id)
                .unwrap_or_else(|| panic!("customers id {id} on shard {i} was never inserted"));
            assert_eq!(
                (country, name),
                (want_c, want_n),
                "customers id {id} on shard {i}"
            );
            if EU.contains(&country.as_str()) {
                assert_eq!(
                    i, 0,
                    "customer {id} ({country}, region eu) is on shard s{i}, not s0"
                );
            } else {
                // US, CA: region us; anything else: default_region us.
                let region = if US.contains(&country.as_str()) {
                    "region us"
                } else {
                    "default_region us"
                };
                assert!(
                    i == 1 || i == 2,
                    "customer {id} ({country}, {region}) is on shard s{i}, not s1 or s2"
                );
            }
            country_shards.entry(country.clone()).or_default().insert(i);
        }
    }
    assert_eq!(seen.len(), expected.len(), "customers rows on the shards");
    country_shards
        .into_iter()
        .map(|(c, s)| {
            assert_eq!(
                s.len(),
                1,
                "rows of country {c} are spread over shards {s:?}"
            );
            (c, *s.iter().next().unwrap())
        })
        .collect()
}

// ----------------------------------------------------------------------------------------
// 1. Placement of every strategy
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_places_rows_on_the_mapped_shard() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start_yaml(&full_map(&env)).await;
    let ring = ring_map(&env);
    let c = proxy.client().await;
    create_tables(
        &env,
        &c,
        &[
            USERS_DDL,
            EVENTS_DDL,
            CUSTOMERS_DDL,
            TENANT_DOCS_DDL,
            COUNTRIES_DDL,
        ],
    )
    .await;

    // Rows per table: the first N - SINGLE in multi-row INSERTs (literals, simple
    // protocol, spanning shards), the last SINGLE one at a time as prepared statements
    // with binary parameters.
    const N: i64 = 2400;
    const SINGLE: i64 = 200;
    const BATCH: usize = 250;
    let started = Instant::now();

    // users (hash)
    let users: BTreeMap<i64, String> = (1..=N).map(|id| (id, format!("user-{id}"))).collect();
    let lits: Vec<String> = users
        .iter()
        .filter(|(id, _)| **id <= N - SINGLE)
        .map(|(id, n)| format!("({id}, '{n}')"))
        .collect();
    insert_batches(&c, "INSERT INTO users (id, name)", &lits, BATCH).await;
    let st = c
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await
        .unwrap();
    for (id, name) in users.range(N - SINGLE + 1..) {
        let n = c
            .execute(&st, &[id, name])
            .await
            .unwrap_or_else(|e| panic!("insert users {id}: {}", err_text(&e)));
        assert_eq!(n, 1);
    }

    // events (range on timestamptz): spread over 2024..2026 at assorted UTC offsets, plus
    // instants on and next to both bounds.
    let offsets = [0i64, 60, -300, 330, 540, -480, 840, -600, 345];
    let start = utc_midnight(2024, 1, 1);
    let step = (utc_midnight(2027, 1, 1) - start - DAY) / N;
    let mut events: Vec<(i64, i64, i64)> = (1..=N)
        .map(|id| {
            let us = start + id * step + (id * 7919 % 3600) * MICROS + id % 1000;
            (id, us, offsets[id as usize % offsets.len()])
        })
        .collect();
    let specials = [
        (b2025(), 0),             // exactly on the bound: s1
        (b2025() - 1, 0),         // one microsecond before: s0
        (b2025() - HOUR / 2, 60), // '2025-01-01 00:30:00+01' = 2024-12-31 23:30 UTC: s0
        (b2025(), -300),          // '2024-12-31 19:00:00-05': s1
        (b2025() + HOUR, 840),    // '2025-01-01 15:00:00+14': s1
        (b2026() - 1, 840),       // s1
        (b2026(), 0),             // s2
        (b2026() + HOUR, -300),   // '2025-12-31 20:00:00-05' = 2026-01-01 01:00 UTC: s2
        (b2026() - HOUR, 330),    // '2026-01-01 04:30:00+05:30' = 2025-12-31 23:00 UTC: s1
    ];
    for (k, (us, off)) in specials.iter().enumerate() {
        // Each special once among the literal rows and once among the prepared ones.
        events[3 + 7 * k] = (events[3 + 7 * k].0, *us, *off);
        let j = (N - SINGLE) as usize + 5 + 11 * k;
        events[j] = (events[j].0, *us, *off);
    }
    let lits: Vec<String> = events
        .iter()
        .filter(|e| e.0 <= N - SINGLE)
        .map(|(id, us, off)| format!("({id}, '{}', 'ev-{id}')", ts_literal(*us, *off)))
        .collect();
    insert_batches(
        &c,
        "INSERT INTO events (id, created_at, note)",
        &lits,
        BATCH,
    )
    .await;
    let st = c
        .prepare("INSERT INTO events (id, created_at, note) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for (id, us, _) in events.iter().filter(|e| e.0 > N - SINGLE) {
        let n = c
            .execute(&st, &[id, &system_time(*us), &format!("ev-{id}")])
            .await
            .unwrap_or_else(|e| panic!("insert events {id}: {}", err_text(&e)));
        assert_eq!(n, 1);
    }

    // customers (geo): eu countries, us countries, and two in no region (default us).
    let countries = ["DE", "FR", "NL", "US", "CA", "BR", "JP"];
    let customers: BTreeMap<i64, (String, String)> = (1..=N)
        .map(|id| {
            (
                id,
                (
                    countries[id as usize % countries.len()].to_string(),
                    format!("cust-{id}"),
                ),
            )
        })
        .collect();
    let lits: Vec<String> = customers
        .iter()
        .filter(|(id, _)| **id <= N - SINGLE)
        .map(|(id, (co, n))| format!("({id}, '{co}', '{n}')"))
        .collect();
    insert_batches(
        &c,
        "INSERT INTO customers (id, country, name)",
        &lits,
        BATCH,
    )
    .await;
    let st = c
        .prepare("INSERT INTO customers (id, country, name) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for (id, (co, name)) in customers.range(N - SINGLE + 1..) {
        let n = c
            .execute(&st, &[id, co, name])
            .await
            .unwrap_or_else(|e| panic!("insert customers {id}: {}", err_text(&e)));
        assert_eq!(n, 1);
    }

    // tenant_docs (directory): the two static entries and 40 tenants placed by the
    // hash fallback on first write.
    let mut tenants = vec!["acme".to_string(), "globex".to_string()];
    tenants.extend((1..=40).map(|k| format!("t{k:02}")));
    let docs: BTreeMap<i64, String> = (1..=N)
        .map(|id| (id, tenants[id as usize % tenants.len()].clone()))
        .collect();
    let lits: Vec<String> = docs
        .iter()
        .filter(|(id, _)| **id <= N - SINGLE)
        .map(|(id, t)| format!("('{t}', {id}, 'doc-{id}')"))
        .collect();
    insert_batches(
        &c,
        "INSERT INTO tenant_docs (tenant_id, doc_id, body)",
        &lits,
        BATCH,
    )
    .await;
    let st = c
        .prepare("INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for (id, t) in docs.range(N - SINGLE + 1..) {
        let n = c
            .execute(&st, &[t, id, &format!("doc-{id}")])
            .await
            .unwrap_or_else(|e| panic!("insert tenant_docs {id}: {}", err_text(&e)));
        assert_eq!(n, 1);
    }

    // countries (reference)
    let refs: BTreeMap<String, String> = (1..=N)
        .map(|k| (format!("C{k:04}"), format!("country-{k}")))
        .collect();
    let lits: Vec<String> = refs
        .iter()
        .take((N - SINGLE) as usize)
        .map(|(code, n)| format!("('{code}', '{n}')"))
        .collect();
    insert_batches(&c, "INSERT INTO countries (code, name)", &lits, BATCH).await;
    let st = c
        .prepare("INSERT INTO countries (code, name) VALUES ($1, $2)")
        .await
        .unwrap();
    for (code, name) in refs.iter().skip((N - SINGLE) as usize) {
        let n = c
            .execute(&st, &[code, name])
            .await
            .unwrap_or_else(|e| panic!("insert countries {code}: {}", err_text(&e)));
        assert_eq!(n, 1, "a reference INSERT reports one copy");
    }
    eprintln!("loaded 5 x {N} rows in {:?}", started.elapsed());

    // --- hash: each id on exactly its ring shard.
    let at = check_users(&env, &ring, &users, 1, N).await;
    for s in 0..3 {
        assert!(at.values().any(|&x| x == s), "no users row on shard {s}");
    }

    // --- range: each event on the shard of its instant, the instant as inserted.
    let per = per_shard(&env, &format!("SELECT id, {EPOCH_US} FROM events"), |r| {
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    })
    .await;
    let want: HashMap<i64, i64> = events.iter().map(|(id, us, _)| (*id, *us)).collect();
    let mut seen = HashSet::new();
    for (i, rows) in per.iter().enumerate() {
        for (id, us) in rows {
            assert!(seen.insert(*id), "events id {id} is on more than one shard");
            assert_eq!(
                want.get(id),
                Some(us),
                "events id {id} on shard {i}: created_at"
            );
            assert_eq!(
                range_shard(*us),
                i,
                "events id {id} ({} UTC) is on shard s{i}, its range is on s{}",
                ts_literal(*us, 0),
                range_shard(*us)
            );
        }
        assert!(!rows.is_empty(), "no events row on shard {i}");
    }
    assert_eq!(seen.len(), N as usize, "events rows on the shards");

    // --- geo
    let country_at = check_customers(&env, &customers).await;
    assert_eq!(country_at.len(), countries.len());
    eprintln!("geo placement: {country_at:?}");

    // --- directory: static entries on their shards, fallback keys on one shard each
    // (the ring's choice), recorded in the directory table.
    let per = per_shard(&env, "SELECT tenant_id, doc_id FROM tenant_docs", |r| {
        (r.get::<_, String>(0), r.get::<_, i64>(1))
    })
    .await;
    let mut seen = HashSet::new();
    let mut tenant_shards: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, rows) in per.iter().enumerate() {
        for (t, id) in rows {
            assert!(
                seen.insert(*id),
                "tenant_docs doc {id} is on more than one shard"
            );
            assert_eq!(
                docs.get(id),
                Some(t),
                "tenant_docs doc {id} on shard {i}: tenant"
            );
            tenant_shards.entry(t.clone()).or_default().insert(i);
        }
    }
    assert_eq!(seen.len(), N as usize, "tenant_docs rows on the shards");
    assert_eq!(
        tenant_shards["acme"],
        BTreeSet::from([0]),
        "acme (entry s0)"
    );
    assert_eq!(
        tenant_shards["globex"],
        BTreeSet::from([1]),
        "globex (entry s1)"
    );
    let dir = directory_table(&env).await;
    assert_eq!(
        dir.get("acme").map(String::as_str),
        Some("s0"),
        "directory: {dir:?}"
    );
    assert_eq!(
        dir.get("globex").map(String::as_str),
        Some("s1"),
        "directory: {dir:?}"
    );
    for t in &tenants[2..] {
        let s = &tenant_shards[t];
        assert_eq!(
            s.len(),
            1,
            "rows of fallback tenant {t} are on shards {s:?}"
        );
        let shard = *s.iter().next().unwrap();
        assert_eq!(
            dir.get(t),
            Some(&format!("s{shard}")),
            "the directory must record fallback tenant {t} on the shard holding its rows (s{shard})"
        );
        assert_eq!(
            shard,
            ring_text(&ring, t),
            "fallback tenant {t}: rows on s{shard}, the hash ring says s{}",
            ring_text(&ring, t)
        );
    }
    assert_eq!(dir.len(), tenants.len(), "directory entries: {dir:?}");

    // --- reference: the same rows on every shard.
    let want: Vec<(String, String)> = refs.clone().into_iter().collect();
    let per = per_shard(
        &env,
        "SELECT code, name FROM countries ORDER BY code",
        |r| (r.get::<_, String>(0), r.get::<_, String>(1)),
    )
    .await;
    for (i, rows) in per.iter().enumerate() {
        assert!(
            rows == &want,
            "countries on shard {i} differ ({} rows)",
            rows.len()
        );
    }

    // --- counts through the proxy (scatter for sharded tables, one copy for reference).
    for t in ["users", "events", "customers", "tenant_docs", "countries"] {
        assert_eq!(
            proxy_count(&c, &format!("SELECT count(*) FROM {t}")).await,
            N,
            "SELECT count(*) FROM {t} through the proxy"
        );
    }
    // Keyed reads through the proxy find each key's rows.
    for co in countries {
        let want = customers.values().filter(|(c2, _)| c2 == co).count() as i64;
        let got = proxy_count(
            &c,
            &format!("SELECT count(*) FROM customers WHERE country = '{co}'"),
        )
        .await;
        assert_eq!(got, want, "customers of {co} through the proxy");
    }
    for t in ["acme", "globex", "t01", "t17"] {
        let want = docs.values().filter(|x| *x == t).count() as i64;
        let got: i64 = c
            .query_one(
                "SELECT count(*) FROM tenant_docs WHERE tenant_id = $1",
                &[&t],
            )
            .await
            .unwrap_or_else(|e| panic!("tenant_docs of {t}: {}", err_text(&e)))
            .get(0);
        assert_eq!(got, want, "tenant_docs of {t} through the proxy");
    }

    // --- the admin console explains the same placements (every mismatch reported).
    let a = proxy.admin_client().await;
    let mut wrong = Vec::new();
    let us_shard = format!("s{}", country_at["US"]);
    let t05_shard = format!("s{}", tenant_shards["t05"].iter().next().unwrap());
    for (cmd, table, key, shard, reason_has) in [
        (
            "SHOW ROUTE customers DE",
            "customers",
            "DE",
            "s0",
            Some("region eu"),
        ),
        (
            "SHOW ROUTE customers US",
            "customers",
            "US",
            us_shard.as_str(),
            Some("region us"),
        ),
        (
            "SHOW ROUTE tenant_docs t05",
            "tenant_docs",
            "t05",
            t05_shard.as_str(),
            None,
        ),
        (
            "SHOW ROUTE tenant_docs acme",
            "tenant_docs",
            "acme",
            "s0",
            None,
        ),
    ] {
        let r = admin(&a, cmd).await;
        let ok = r.len() == 1
            && (col(&r[0], "table"), col(&r[0], "key"), col(&r[0], "shard")) == (table, key, shard)
            && col(&r[0], "reason").contains(shard)
            && reason_has.is_none_or(|h| col(&r[0], "reason").contains(h));
        if !ok {
            wrong.push(format!(
                "`{cmd}`: expected table {table}, key {key}, shard {shard} (reason naming \
                 {shard}{}), got {r:?}",
                reason_has.map(|h| format!(" and {h}")).unwrap_or_default()
            ));
        }
    }
    assert!(wrong.is_empty(), "SHOW ROUTE:\n{}", wrong.join("\n"));
}

// ----------------------------------------------------------------------------------------
// 2. Range predicates reach only the overlapping shards
// ----------------------------------------------------------------------------------------

/// How many backends on each shard (other than the asking one) are running, or last ran, a
/// statement containing `marker`. `pg_stat_activity` is updated when a statement starts, so
/// unlike the cumulative statistics it does not lag; but a backend's later statement
/// replaces the text, so only a count seen while the statement is blocked proves it ran.
/// The `monitors` must not be inside a transaction (the view is snapshotted per transaction).
async fn backends_with_marker(monitors: &[Client], marker: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for s in monitors {
        let n: i64 = s
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
                &[&marker],
            )
            .await
            .unwrap()
            .get(0);
        out.push(n);
    }
    out
}

/// Direct connections holding ACCESS EXCLUSIVE locks on `events` on the given shards, in
/// open transactions: a statement reaching one of them blocks until [`unlock`].
async fn lock_events(env: &TestEnv, on: &[usize]) -> Vec<Client> {
    let mut out = Vec::new();
    for &i in on {
        let l = env.shard_client(i).await;
        l.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        out.push(l);
    }
    out
}

async fn unlock(lockers: Vec<Client>) {
    for l in lockers {
        l.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// Runs `sql` through `c` (simple protocol) while every shard outside `allowed` holds an
/// ACCESS EXCLUSIVE lock on `events`: a statement reaching any of them blocks, and its
/// backend shows `marker` (which `sql` must contain) in `pg_stat_activity` there. Returns
/// the rows, which must equal the same query on the reference database.
async fn run_on_only(
    env: &TestEnv,
    c: &Client,
    monitors: &[Client],
    reference: &Client,
    sql: &str,
    marker: &str,
    allowed: &[usize],
) -> Vec<Vec<Option<String>>> {
    let others: Vec<usize> = (0..env.shard_count())
        .filter(|i| !allowed.contains(i))
        .collect();
    let lockers = lock_events(env, &others).await;
    let r = tokio::time::timeout(Duration::from_secs(5), c.simple_query(sql)).await;
    let touched = backends_with_marker(monitors, marker).await;
    unlock(lockers).await;
    let got = match r {
        Ok(Ok(m)) => simple_rows(&m),
        Ok(Err(e)) => panic!("{sql}: {}", err_text(&e)),
        Err(_) => panic!(
            "{sql}\nblocked for 5 s on a locked shard: backends running it per shard \
             {touched:?}, expected it on shards {allowed:?} only"
        ),
    };
    for &i in &others {
        assert_eq!(
            touched[i], 0,
            "{sql}\nran on shard s{i}, expected only {allowed:?} (backends per shard: {touched:?})"
        );
    }
    let want = simple_rows(&simple(reference, sql).await);
    assert_eq!(
        got, want,
        "{sql}\nthrough the proxy vs the reference database"
    );
    got
}

/// The shards (by the range bounds) holding the events whose ids are the first column.
fn shards_of_rows(rows: &[Vec<Option<String>>], instants: &[i64]) -> BTreeSet<usize> {
    rows.iter()
        .map(|r| {
            let id: usize = r[0].as_deref().unwrap().parse().unwrap();
            range_shard(instants[id])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_predicates_touch_only_overlapping_shards() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start_yaml(&full_map(&env)).await;
    let c = proxy.client().await;
    let reference = env.reference_client().await;
    create_tables(&env, &c, &[EVENTS_DDL]).await;
    reference.batch_execute(EVENTS_DDL).await.unwrap();

    // ~1,100 instants over 2024..2026, and every 30 minutes within 40 h of each bound.
    let offsets = [0i64, 60, -300, 330, 540, -480, 840, -600];
    let start = utc_midnight(2024, 1, 1);
    let mut instants: Vec<i64> = (0..900).map(|k| start + k * (DAY + 5 * HOUR / 4)).collect();
    for b in [b2025(), b2026()] {
        instants.extend((-80..=80).map(|k| b + k * HOUR / 2));
    }
    let lits: Vec<String> = instants
        .iter()
        .enumerate()
        .map(|(k, us)| {
            format!(
                "({k}, '{}', 'ev-{k}')",
                ts_literal(*us, offsets[k % offsets.len()])
            )
        })
        .collect();
    for chunk in lits.chunks(300) {
        let sql = format!(
            "INSERT INTO events (id, created_at, note) VALUES {}",
            chunk.join(", ")
        );
        simple(&c, &sql).await;
        simple(&reference, &sql).await;
    }
    let per = env.per_shard_i64("SELECT count(*) FROM events").await;
    assert!(per.iter().all(|&n| n > 0), "events per shard: {per:?}");
    assert_eq!(per.iter().sum::<i64>(), instants.len() as i64);

    let mut monitors = Vec::new();
    for i in 0..env.shard_count() {
        monitors.push(env.shard_client(i).await);
    }
    // (predicate, the shards it must reach and no others). The marker in the predicate
    // (never equal to a note) identifies the statement in pg_stat_activity on each shard.
    // The other shards are locked while it runs, so reaching one would block it; every
    // listed shard must contribute rows (only that shard holds them).
    let cases: &[(&str, &[usize])] = &[
        (
            "created_at >= '2025-03-01 00:00:00+00' AND created_at < '2025-04-01 00:00:00+00'",
            &[1],
        ),
        (
            "created_at BETWEEN '2025-03-01 00:00:00+00' AND '2025-03-31 23:59:59+00'",
            &[1],
        ),
        ("created_at < '2024-06-01 00:00:00+00'", &[0]),
        ("created_at >= '2026-02-01 00:00:00+00'", &[2]),
        ("created_at = '2025-01-01 00:00:00+00'", &[1]),
        (
            // 2025-01-01 00:00..01:00 UTC written at two other offsets.
            "created_at >= '2024-12-31 23:00:00-01' AND created_at < '2025-01-01 06:00:00+05'",
            &[1],
        ),
        (
            "created_at BETWEEN '2024-12-31 00:00:00+00' AND '2025-01-01 00:00:00+00'",
            &[0, 1],
        ),
    ];
    for (k, (pred, allowed)) in cases.iter().enumerate() {
        let marker = format!("sw-probe-{k}");
        let sql =
            format!("SELECT id, note FROM events WHERE {pred} AND note <> '{marker}' ORDER BY id");
        let rows = run_on_only(&env, &c, &monitors, &reference, &sql, &marker, allowed).await;
        assert_eq!(
            shards_of_rows(&rows, &instants),
            allowed.iter().copied().collect::<BTreeSet<usize>>(),
            "{sql}: shards holding the rows returned (the test data should cover each)"
        );
    }

    // A keyless query reaches all three shards: with one shard at a time locked, a backend
    // there must be seen waiting with it; once unlocked, it counts every row. (One at a
    // time: the proxy may contact the shards in turn, so with all locked it would wait on
    // the first.)
    for shard in 0..env.shard_count() {
        let marker = format!("sw-probe-keyless-{shard}");
        let sql = format!("SELECT count(*) FROM events WHERE note <> '{marker}'");
        let lockers = lock_events(&env, &[shard]).await;
        let conninfo = proxy.conninfo();
        let task_sql = sql.clone();
        let task = tokio::spawn(async move {
            let c = common::connect(&conninfo).await;
            c.simple_query(&task_sql).await.map(|m| simple_rows(&m))
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let touched = loop {
            let t = backends_with_marker(&monitors, &marker).await;
            if t[shard] >= 1 || Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        unlock(lockers).await;
        let got = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the keyless query did not finish after the shard was unlocked")
            .unwrap()
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        assert!(
            touched[shard] >= 1,
            "{sql}: never seen on shard s{shard} (backends running it per shard: {touched:?})"
        );
        assert_eq!(got, vec![vec![Some(instants.len().to_string())]], "{sql}");
    }

    // Offset-less literals in predicates are accepted (the proxy widens the range by the
    // largest UTC offsets) and return what one Postgres returns in the same time zone.
    let marker = "sw-probe-nooffset";
    let sql = format!(
        "SELECT id, note FROM events WHERE created_at >= '2025-03-01' AND created_at < '2025-04-01' \
         AND note <> '{marker}' ORDER BY id"
    );
    let rows = run_on_only(&env, &c, &monitors, &reference, &sql, marker, &[1]).await;
    assert_eq!(
        shards_of_rows(&rows, &instants),
        BTreeSet::from([1]),
        "{sql}"
    );
    // Near a bound the session's time zone decides the shard: at +14 these local times are
    // 2024-12-31 10:00..22:00 UTC (s0), at -10 (Pacific/Honolulu) 2025-01-01 02:00..09:00
    // UTC (s1). The proxy must still find them, as one Postgres would.
    for (zone, pred, shard) in [
        (
            "Pacific/Kiritimati",
            "created_at >= '2025-01-01 00:00' AND created_at < '2025-01-01 12:00'",
            0,
        ),
        (
            "Pacific/Honolulu",
            "created_at >= '2024-12-31 16:00' AND created_at < '2024-12-31 23:00'",
            1,
        ),
    ] {
        let zc = proxy.client().await;
        let set = format!("SET TimeZone = '{zone}'");
        simple(&zc, &set).await;
        simple(&reference, &set).await;
        let sql = format!("SELECT id, note FROM events WHERE {pred} ORDER BY id");
        let got = simple_rows(&simple(&zc, &sql).await);
        let want = simple_rows(&simple(&reference, &sql).await);
        assert_eq!(
            shards_of_rows(&want, &instants),
            BTreeSet::from([shard]),
            "{zone}: {sql}: the test data should put these rows on s{shard}"
        );
        assert_eq!(
            got, want,
            "TimeZone {zone}: {sql}\nthrough the proxy vs the reference"
        );
        simple(&reference, "RESET TimeZone").await;
    }
}

// ----------------------------------------------------------------------------------------
// 3. A directory assignment through one proxy is seen by another within 1 s
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_assignment_visible_to_second_proxy_within_1s() {
    let env = TestEnv::new(3).await;
    let yaml = full_map(&env);
    let proxy_a = Proxy::start_yaml(&yaml).await;
    let proxy_b = Proxy::start_yaml(&yaml).await;
    let ring = ring_map(&env);
    let a = proxy_a.client().await;
    let b = proxy_b.client().await;
    // Every directory table of the map exists (the console checks each for the key's rows).
    create_tables(&env, &a, &[TENANT_DOCS_DDL, TENANT_USERS_DDL]).await;
    // 'initech' is the specification's key. If it hashes to s2 with these shard names, it
    // alone cannot tell a fresh route from the hash fallback, so a second key whose hash
    // names another shard is assigned to s2 the same way.
    let other = ["umbrella", "hooli", "vandelay", "wonka", "stark", "wayne"]
        .into_iter()
        .find(|k| ring_text(&ring, k) != 2)
        .unwrap();
    let keys = ["initech", other];
    eprintln!(
        "fallback hash: initech -> s{}, {other} -> s{}",
        ring_text(&ring, "initech"),
        ring_text(&ring, other)
    );

    // Warm proxy B's directory: writes and reads for the static tenants, and reads of the
    // two keys while they have no entry (a cache could remember that).
    for (t, id) in [("globex", 1i64), ("acme", 2)] {
        let n = b
            .execute(
                "INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES ($1, $2, 'warm')",
                &[&t, &id],
            )
            .await
            .unwrap_or_else(|e| panic!("insert {t} through B: {}", err_text(&e)));
        assert_eq!(n, 1);
    }
    assert_eq!(
        proxy_count(
            &b,
            "SELECT count(*) FROM tenant_docs WHERE tenant_id = 'acme'"
        )
        .await,
        1
    );
    for k in keys {
        let sql = format!("SELECT count(*) FROM tenant_docs WHERE tenant_id = '{k}'");
        assert_eq!(proxy_count(&b, &sql).await, 0, "{sql}");
    }
    let dir = directory_table(&env).await;
    for k in keys {
        assert!(
            !dir.contains_key(k),
            "{k} must have no entry before the test assigns it (reads must not record one): {dir:?}"
        );
    }

    let admin_a = proxy_a.admin_client().await;
    let s = [
        env.shard_client(0).await,
        env.shard_client(1).await,
        env.shard_client(2).await,
    ];
    let ins = b
        .prepare("INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES ($1, $2, 'poll')")
        .await
        .unwrap();
    let mut doc = 100i64;
    for k in keys {
        // Assign through proxy A's admin console.
        admin(&admin_a, &format!("DIRECTORY ASSIGN '{k}' TO s2")).await;
        let assigned = Instant::now();
        assert_eq!(
            directory_table(&env).await.get(k).map(String::as_str),
            Some("s2"),
            "the directory table after DIRECTORY ASSIGN '{k}' TO s2"
        );

        // Proxy B: an INSERT for the key lands on s2 within 1 s (polled every 50 ms).
        let mut attempts = Vec::new();
        let landed = loop {
            doc += 1;
            let outcome = match b.execute(&ins, &[&k, &doc]).await {
                Ok(_) => {
                    let mut on = Vec::new();
                    for (i, sc) in s.iter().enumerate() {
                        let n: i64 = sc
                            .query_one(
                                "SELECT count(*) FROM tenant_docs WHERE tenant_id = $1 AND doc_id = $2",
                                &[&k, &doc],
                            )
                            .await
                            .unwrap()
                            .get(0);
                        if n > 0 {
                            on.push(i);
                        }
                    }
                    format!("doc {doc} on shards {on:?}")
                }
                Err(e) => format!("doc {doc}: {}", err_text(&e)),
            };
            let done = outcome.ends_with("on shards [2]");
            attempts.push((assigned.elapsed(), outcome));
            if done {
                break assigned.elapsed();
            }
            if assigned.elapsed() > Duration::from_secs(1) {
                panic!(
                    "proxy B did not route {k} to s2 within 1 s of the assignment: {attempts:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("proxy B routed {k} to s2 after {landed:?}: {attempts:?}");
        // No row of the key may sit anywhere but s2 (a stale route would have left one).
        let per = env
            .per_shard_i64(&format!(
                "SELECT count(*) FROM tenant_docs WHERE tenant_id = '{k}'"
            ))
            .await;
        assert_eq!(
            per[0] + per[1],
            0,
            "{k} rows on s0/s1: {per:?} ({attempts:?})"
        );
        assert_eq!(
            directory_table(&env).await.get(k).map(String::as_str),
            Some("s2")
        );
        // And reads through B find them.
        assert_eq!(
            proxy_count(
                &b,
                &format!("SELECT count(*) FROM tenant_docs WHERE tenant_id = '{k}'")
            )
            .await,
            per[2]
        );
    }

    // ASSIGN of a key that already has an entry elsewhere is refused (MOVE is for that),
    // and the console stays usable.
    let e = admin_a
        .simple_query("DIRECTORY ASSIGN 'acme' TO s2")
        .await
        .expect_err("DIRECTORY ASSIGN of acme (entry s0) to s2 must be refused");
    let msg = err_text(&e);
    eprintln!("ASSIGN acme refused: {msg}");
    assert!(
        msg.contains("acme"),
        "the refusal should name the key: {msg}"
    );
    assert_eq!(
        directory_table(&env).await.get("acme").map(String::as_str),
        Some("s0")
    );

    // SHOW DIRECTORY on either console: every entry, ordered by key.
    let mut want = vec![
        ("acme".to_string(), "s0".to_string()),
        ("globex".to_string(), "s1".to_string()),
        ("initech".to_string(), "s2".to_string()),
        (other.to_string(), "s2".to_string()),
    ];
    want.sort();
    let admin_b = proxy_b.admin_client().await;
    for (who, console) in [("A", &admin_a), ("B", &admin_b)] {
        let rows: Vec<(String, String)> = admin(console, "SHOW DIRECTORY")
            .await
            .iter()
            .map(|r| (col(r, "key").to_string(), col(r, "shard").to_string()))
            .collect();
        assert_eq!(rows, want, "SHOW DIRECTORY on proxy {who}");
    }
}

// ----------------------------------------------------------------------------------------
// 4. DIRECTORY MOVE while writes for the key continue
// ----------------------------------------------------------------------------------------

/// A task inserting rows for tenant acme into `table` (`tenant_id`, `id_col`, `text_col`)
/// through its own proxy connection, one statement at a time, sequence numbers from
/// 1,000,001, until `stop`. Returns the acknowledged sequence numbers; any error or a
/// statement hanging for 20 s fails it.
fn spawn_writer(
    conninfo: String,
    table: &'static str,
    id_col: &'static str,
    text_col: &'static str,
    extended: bool,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Result<Vec<i64>, String>> {
    tokio::spawn(async move {
        let c = common::connect(&conninfo).await;
        let st = c
            .prepare(&format!(
                "INSERT INTO {table} (tenant_id, {id_col}, {text_col}) VALUES ($1, $2, $3)"
            ))
            .await
            .map_err(|e| format!("prepare: {}", err_text(&e)))?;
        let mut done = Vec::new();
        let mut seq = 1_000_000i64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let text = format!("live-{seq}");
            let r = if extended {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    c.execute(&st, &[&"acme", &seq, &text]),
                )
                .await
            } else {
                let sql = format!(
                    "INSERT INTO {table} (tenant_id, {id_col}, {text_col}) VALUES ('acme', {seq}, '{text}')"
                );
                tokio::time::timeout(Duration::from_secs(20), async {
                    c.simple_query(&sql)
                        .await
                        .map(|m| command_count(&m).unwrap_or(0))
                })
                .await
            };
            match r {
                Ok(Ok(1)) => {
                    done.push(seq);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(n)) => return Err(format!("{table} insert {seq} reported {n} rows")),
                Ok(Err(e)) => return Err(format!("{table} insert {seq}: {}", err_text(&e))),
                Err(_) => return Err(format!("{table} insert {seq} hung for 20 s")),
            }
        }
        Ok(done)
    })
}

/// Waits until `counter` reaches `n` (the writers must be alive), up to `secs`.
async fn wait_acked(
    what: &str,
    counters: &[(&str, &Arc<AtomicUsize>)],
    at_least: &[usize],
    writers: &[&tokio::task::JoinHandle<Result<Vec<i64>, String>>],
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if counters
            .iter()
            .zip(at_least)
            .all(|((_, c), n)| c.load(Ordering::Relaxed) >= *n)
        {
            return;
        }
        if writers.iter().any(|w| w.is_finished()) || Instant::now() > deadline {
            let now: Vec<(&str, usize)> = counters
                .iter()
                .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
                .collect();
            panic!("{what}: writers stopped or stalled: acknowledged {now:?}, wanted {at_least:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_move_under_concurrent_writes() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start_yaml(&full_map(&env)).await;
    let c = proxy.client().await;
    // No primary key on tenant_docs here, so a row copied twice would show.
    let docs_ddl = "CREATE TABLE tenant_docs (tenant_id text NOT NULL, doc_id bigint NOT NULL, \
                    body text NOT NULL)";
    create_tables(&env, &c, &[docs_ddl, TENANT_USERS_DDL]).await;

    // Preload: acme (entry s0) and globex (entry s1) rows in both directory tables.
    const DOCS: i64 = 3000;
    const USERS: i64 = 300;
    let lits: Vec<String> = (1..=DOCS)
        .map(|k| format!("('acme', {k}, 'pre-{k}')"))
        .chain((1..=100).map(|k| format!("('globex', {k}, 'g-{k}')")))
        .collect();
    insert_batches(
        &c,
        "INSERT INTO tenant_docs (tenant_id, doc_id, body)",
        &lits,
        500,
    )
    .await;
    let lits: Vec<String> = (1..=USERS)
        .map(|k| format!("('acme', {k}, 'u{k}@acme')"))
        .chain((1..=50).map(|k| format!("('globex', {k}, 'u{k}@globex')")))
        .collect();
    insert_batches(
        &c,
        "INSERT INTO tenant_users (tenant_id, user_id, email)",
        &lits,
        500,
    )
    .await;
    let acme_docs = "SELECT count(*) FROM tenant_docs WHERE tenant_id = 'acme'";
    let acme_users = "SELECT count(*) FROM tenant_users WHERE tenant_id = 'acme'";
    assert_eq!(env.per_shard_i64(acme_docs).await, vec![DOCS, 0, 0]);
    assert_eq!(env.per_shard_i64(acme_users).await, vec![USERS, 0, 0]);

    // Two writers for acme: tenant_docs (extended protocol) through the proxy that moves the
    // key, tenant_users (simple) through a second proxy that only hears of the move.
    let proxy_b = Proxy::start_yaml(&full_map(&env)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let docs_acked = Arc::new(AtomicUsize::new(0));
    let users_acked = Arc::new(AtomicUsize::new(0));
    let w_docs = spawn_writer(
        proxy.conninfo(),
        "tenant_docs",
        "doc_id",
        "body",
        true,
        stop.clone(),
        docs_acked.clone(),
    );
    let w_users = spawn_writer(
        proxy_b.conninfo(),
        "tenant_users",
        "user_id",
        "email",
        false,
        stop.clone(),
        users_acked.clone(),
    );
    let counters = [("tenant_docs", &docs_acked), ("tenant_users", &users_acked)];
    wait_acked(
        "before the move",
        &counters,
        &[30, 30],
        &[&w_docs, &w_users],
        30,
    )
    .await;

    // The move, while both keep writing.
    let console = proxy.admin_client().await;
    let started = Instant::now();
    let moved = tokio::time::timeout(
        Duration::from_secs(60),
        console.simple_query("DIRECTORY MOVE 'acme' TO s2"),
    )
    .await
    .expect("DIRECTORY MOVE did not finish within 60 s")
    .unwrap_or_else(|e| panic!("DIRECTORY MOVE 'acme' TO s2: {}", err_text(&e)));
    let took = started.elapsed();
    let moved: BTreeMap<String, i64> = named_rows(&moved)
        .iter()
        .map(|r| {
            (
                col(r, "table").to_string(),
                col(r, "rows").parse::<i64>().expect("rows is a number"),
            )
        })
        .collect();
    let during = (
        docs_acked.load(Ordering::Relaxed),
        users_acked.load(Ordering::Relaxed),
    );
    eprintln!("DIRECTORY MOVE took {took:?}: {moved:?}; writes acknowledged so far {during:?}");

    // Writes go on after the switch (now to s2).
    wait_acked(
        "after the move",
        &counters,
        &[during.0 + 30, during.1 + 30],
        &[&w_docs, &w_users],
        30,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let docs_done = w_docs
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the tenant_docs writer failed: {e}"));
    let users_done = w_users
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the tenant_users writer failed: {e}"));

    // The move reports both tables: at least the preloaded rows, at most all acme rows.
    for (t, pre, acked) in [
        ("tenant_docs", DOCS, docs_done.len() as i64),
        ("tenant_users", USERS, users_done.len() as i64),
    ] {
        let n = *moved
            .get(t)
            .unwrap_or_else(|| panic!("DIRECTORY MOVE did not report table {t}: {moved:?}"));
        assert!(
            n >= pre && n <= pre + acked,
            "DIRECTORY MOVE reports {n} rows of {t}; {pre} were there before, {acked} written during"
        );
    }

    // Every acme row on s2, none left on s0 (or s1); exactly the acknowledged rows, once.
    for (t, id_col, pre, done) in [
        ("tenant_docs", "doc_id", DOCS, &docs_done),
        ("tenant_users", "user_id", USERS, &users_done),
    ] {
        let per = env
            .per_shard_i64(&format!(
                "SELECT count(*) FROM {t} WHERE tenant_id = 'acme'"
            ))
            .await;
        assert_eq!(
            per[0], 0,
            "acme rows of {t} left on s0 after the move: {per:?}"
        );
        assert_eq!(per[1], 0, "acme rows of {t} on s1: {per:?}");
        let mut got: Vec<i64> = env
            .shard_client(2)
            .await
            .query(
                &format!("SELECT {id_col} FROM {t} WHERE tenant_id = 'acme' ORDER BY 1"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let n_got = got.len();
        got.dedup();
        assert_eq!(n_got, got.len(), "{t}: acme rows duplicated on s2");
        let want: BTreeSet<i64> = (1..=pre).chain(done.iter().copied()).collect();
        let got: BTreeSet<i64> = got.into_iter().collect();
        let lost: Vec<&i64> = want.difference(&got).take(20).collect();
        let extra: Vec<&i64> = got.difference(&want).take(20).collect();
        assert!(
            lost.is_empty() && extra.is_empty(),
            "{t}: acme rows on s2 differ from the acknowledged ones: lost {lost:?}, \
             never acknowledged {extra:?} ({} acknowledged during the run)",
            done.len()
        );
        // Reads through the proxy see them all.
        assert_eq!(
            proxy_count(
                &c,
                &format!("SELECT count(*) FROM {t} WHERE tenant_id = 'acme'")
            )
            .await,
            want.len() as i64,
            "{t}: acme rows through the proxy"
        );
    }
    // globex did not move.
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM tenant_docs WHERE tenant_id = 'globex'")
            .await,
        vec![0, 100, 0]
    );
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM tenant_users WHERE tenant_id = 'globex'")
            .await,
        vec![0, 50, 0]
    );
    // The directory says s2, in the table and on the console.
    assert_eq!(
        directory_table(&env).await.get("acme").map(String::as_str),
        Some("s2")
    );
    let rows: Vec<(String, String)> = admin(&console, "SHOW DIRECTORY")
        .await
        .iter()
        .map(|r| (col(r, "key").to_string(), col(r, "shard").to_string()))
        .collect();
    assert!(
        rows.contains(&("acme".to_string(), "s2".to_string()))
            && rows.contains(&("globex".to_string(), "s1".to_string())),
        "SHOW DIRECTORY after the move: {rows:?}"
    );
}

// ----------------------------------------------------------------------------------------
// 5. Statements with several keys: split INSERTs, key lists, COPY
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_statements_split_and_route() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start_yaml(&full_map(&env)).await;
    let ring = ring_map(&env);
    let c = proxy.client().await;
    create_tables(&env, &c, &[USERS_DDL, CUSTOMERS_DDL]).await;
    let mut users: BTreeMap<i64, String> = BTreeMap::new();

    // Multi-row INSERT .. RETURNING, simple protocol: 30 rows over all three shards.
    let ids: Vec<i64> = (1..=30).collect();
    let shards: BTreeSet<usize> = ids.iter().map(|&id| ring_int(&ring, id)).collect();
    assert_eq!(shards.len(), 3, "ids 1..=30 should hash to all shards");
    let vals: Vec<String> = ids.iter().map(|id| format!("({id}, 'u{id}')")).collect();
    let msgs = simple(
        &c,
        &format!(
            "INSERT INTO users (id, name) VALUES {} RETURNING id",
            vals.join(", ")
        ),
    )
    .await;
    assert_eq!(
        command_count(&msgs),
        Some(30),
        "command tag of a 30-row INSERT"
    );
    let mut returned: Vec<i64> = simple_rows(&msgs)
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    returned.sort_unstable();
    assert_eq!(
        returned, ids,
        "INSERT .. RETURNING id returns every row once"
    );
    users.extend(ids.iter().map(|id| (*id, format!("u{id}"))));

    // Extended protocol, constant keys: 20 rows (rows affected), then 10 with RETURNING.
    // (Failures here are collected and reported at the end, so the rest still runs.)
    let mut failures: Vec<String> = Vec::new();
    let lits = |from: i64, n: i64| -> (String, Vec<(i64, String)>) {
        let rows: Vec<(i64, String)> = (from..from + n).map(|id| (id, format!("u{id}"))).collect();
        let vals: Vec<String> = rows
            .iter()
            .map(|(id, n)| format!("({id}, '{n}')"))
            .collect();
        (vals.join(", "), rows)
    };
    let (vals, rows) = lits(31, 20);
    match c
        .execute(&format!("INSERT INTO users (id, name) VALUES {vals}"), &[])
        .await
    {
        Ok(20) => users.extend(rows.iter().cloned()),
        Ok(n) => {
            failures.push(format!(
                "20-row INSERT (extended protocol) reported {n} rows"
            ));
            users.extend(rows.iter().cloned());
        }
        Err(e) => {
            failures.push(format!(
                "20-row INSERT (extended protocol): {}",
                err_text(&e)
            ));
            eprintln!(
                "FAILURE (reported at the end): {}",
                failures.last().unwrap()
            );
            assert_usable(&c, "a failed extended-protocol INSERT").await;
        }
    }
    let (vals, rows) = lits(51, 10);
    match c
        .query(
            &format!("INSERT INTO users (id, name) VALUES {vals} RETURNING id, name"),
            &[],
        )
        .await
    {
        Ok(r) => {
            let mut got: Vec<(i64, String)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
            got.sort();
            if got != rows {
                failures.push(format!(
                    "10-row INSERT .. RETURNING (extended protocol) returned {got:?}"
                ));
            }
            users.extend(rows.iter().cloned());
        }
        Err(e) => {
            failures.push(format!(
                "10-row INSERT .. RETURNING (extended protocol): {}",
                err_text(&e)
            ));
            eprintln!(
                "FAILURE (reported at the end): {}",
                failures.last().unwrap()
            );
            assert_usable(&c, "a failed extended-protocol INSERT").await;
        }
    }

    // Parameters as shard keys in a multi-row INSERT spanning shards: the specification
    // only promises splitting for literal rows, so either the proxy splits them (every row
    // on its shard, RETURNING complete) or refuses clearly (0A000 naming users) without
    // writing anything.
    let ids: Vec<i64> = (61..=80).collect();
    let names: Vec<String> = ids.iter().map(|id| format!("u{id}")).collect();
    let ph: Vec<String> = (0..ids.len())
        .map(|k| format!("(${}, ${})", 2 * k + 1, 2 * k + 2))
        .collect();
    let params: Vec<&(dyn ToSql + Sync)> = ids
        .iter()
        .zip(&names)
        .flat_map(|(id, n)| [id as &(dyn ToSql + Sync), n as &(dyn ToSql + Sync)])
        .collect();
    let sql = format!(
        "INSERT INTO users (id, name) VALUES {} RETURNING id",
        ph.join(", ")
    );
    match c.query(&sql, &params).await {
        Ok(rows) => {
            let mut got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            got.sort_unstable();
            assert_eq!(got, ids, "parameterized multi-row INSERT .. RETURNING");
            users.extend(ids.iter().zip(&names).map(|(i, n)| (*i, n.clone())));
            eprintln!("parameterized multi-row INSERT spanning shards: split");
        }
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
            assert_eq!(db.code().code(), "0A000", "{}", err_text(&e));
            assert!(db.message().contains("users"), "{}", err_text(&e));
            eprintln!(
                "parameterized multi-row INSERT spanning shards: refused: {}",
                err_text(&e)
            );
            assert_usable(&c, "a refused parameterized multi-row INSERT").await;
        }
    }
    check_users(&env, &ring, &users, 1, 99_999).await;

    // Key lists: literal IN, parameter IN, = ANY($1).
    let pick = [2i64, 7, 13, 31, 44, 59, 77_777];
    let want: Vec<(i64, String)> = pick
        .iter()
        .filter_map(|id| users.get(id).map(|n| (*id, n.clone())))
        .collect();
    let lit: Vec<(i64, String)> = simple_rows(
        &simple(
            &c,
            &format!(
                "SELECT id, name FROM users WHERE id IN ({}) ORDER BY id",
                pick.map(|i| i.to_string()).join(", ")
            ),
        )
        .await,
    )
    .iter()
    .map(|r| {
        (
            r[0].as_deref().unwrap().parse().unwrap(),
            r[1].clone().unwrap(),
        )
    })
    .collect();
    assert_eq!(lit, want, "WHERE id IN (literals)");
    let ph: Vec<String> = (1..=pick.len()).map(|k| format!("${k}")).collect();
    let params: Vec<&(dyn ToSql + Sync)> = pick.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let got: Vec<(i64, String)> = c
        .query(
            &format!(
                "SELECT id, name FROM users WHERE id IN ({}) ORDER BY id",
                ph.join(", ")
            ),
            &params,
        )
        .await
        .unwrap_or_else(|e| panic!("IN ($1..): {}", err_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, want, "WHERE id IN ($1, ..)");
    let arr: Vec<i64> = pick.to_vec();
    let got: Vec<(i64, String)> = c
        .query(
            "SELECT id, name FROM users WHERE id = ANY($1) ORDER BY id",
            &[&arr],
        )
        .await
        .unwrap_or_else(|e| panic!("= ANY($1): {}", err_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, want, "WHERE id = ANY($1)");
    // A multi-key UPDATE reaches every key's shard.
    let upd = [2i64, 7, 13, 31, 44, 52, 77_777];
    let present: Vec<i64> = upd
        .iter()
        .copied()
        .filter(|id| users.contains_key(id))
        .collect();
    let msgs = simple(
        &c,
        &format!(
            "UPDATE users SET name = name || '!' WHERE id IN ({})",
            upd.map(|i| i.to_string()).join(", ")
        ),
    )
    .await;
    assert_eq!(
        command_count(&msgs),
        Some(present.len() as u64),
        "UPDATE .. WHERE id IN ({upd:?}); present: {present:?}"
    );
    for id in present {
        users.get_mut(&id).unwrap().push('!');
    }
    check_users(&env, &ring, &users, 1, 99_999).await;

    // COPY FROM STDIN, text format: 100,000 rows.
    const COPY_LO: i64 = 100_001;
    const COPY_N: i64 = 100_000;
    let lines: Vec<String> = (COPY_LO..COPY_LO + COPY_N)
        .map(|id| format!("{id}\tcopied-{id}\n"))
        .collect();
    let started = Instant::now();
    let n = copy_lines(&c, "COPY users (id, name) FROM STDIN", &lines, 5000)
        .await
        .unwrap_or_else(|e| panic!("COPY users of {COPY_N} rows: {}", err_text(&e)));
    eprintln!("COPY of {COPY_N} rows took {:?}", started.elapsed());
    assert_eq!(n, COPY_N as u64, "COPY reports the rows it loaded");
    let copied: BTreeMap<i64, String> = (COPY_LO..COPY_LO + COPY_N)
        .map(|id| (id, format!("copied-{id}")))
        .collect();
    // Each id on exactly one shard, the one the ring names; all 100,000 there.
    let at = check_users(&env, &ring, &copied, COPY_LO, COPY_LO + COPY_N - 1).await;
    assert_eq!(
        proxy_count(&c, "SELECT count(*) FROM users").await,
        (users.len() + copied.len()) as i64
    );
    // The admin console's route agrees with where 200 random copied rows are.
    let console = proxy.admin_client().await;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let all: Vec<i64> = copied.keys().copied().collect();
    for id in all.choose_multiple(&mut rng, 200) {
        let r = admin(&console, &format!("SHOW ROUTE users {id}")).await;
        assert_eq!(r.len(), 1, "SHOW ROUTE users {id}: {r:?}");
        assert_eq!(col(&r[0], "table"), "users");
        assert_eq!(col(&r[0], "key"), id.to_string());
        assert_eq!(
            col(&r[0], "shard"),
            format!("s{}", at[id]),
            "SHOW ROUTE users {id} vs the shard holding the row: {r:?}"
        );
    }

    // COPY .. WITH (FORMAT csv) into the geo table: quoted fields, commas, quotes.
    let countries = ["DE", "FR", "NL", "US", "CA", "BR"];
    let mut customers: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let lines: Vec<String> = (1..=3000i64)
        .map(|id| {
            let co = countries[id as usize % countries.len()];
            let name = format!("Cust, {id} \"q\"");
            customers.insert(id, (co.to_string(), name));
            let co_field = if id % 5 == 0 {
                format!("\"{co}\"")
            } else {
                co.to_string()
            };
            format!("{id},{co_field},\"Cust, {id} \"\"q\"\"\"\n")
        })
        .collect();
    let n = copy_lines(
        &c,
        "COPY customers (id, country, name) FROM STDIN WITH (FORMAT csv)",
        &lines,
        700,
    )
    .await
    .unwrap_or_else(|e| panic!("CSV COPY into customers: {}", err_text(&e)));
    assert_eq!(n, 3000);
    check_customers(&env, &customers).await;

    // A COPY with one malformed row in the middle fails as a whole: no row of it anywhere.
    /// The malformed line replacing row `id`.
    type BadLine = fn(i64) -> String;
    let bad_cases: [(&str, i64, BadLine); 2] = [
        ("a non-integer id", 300_001, |_| "abc\tbad\n".to_string()),
        ("a row missing a column", 400_001, |id| format!("{id}\n")),
    ];
    for (what, lo, bad) in bad_cases {
        let n = 20_000i64;
        let lines: Vec<String> = (lo..lo + n)
            .map(|id| {
                if id == lo + n / 2 {
                    bad(id)
                } else {
                    format!("{id}\tbatch-{id}\n")
                }
            })
            .collect();
        let r = copy_lines(&c, "COPY users (id, name) FROM STDIN", &lines, 2000).await;
        match r {
            Ok(n) => panic!("COPY with {what} in the middle succeeded ({n} rows)"),
            Err(e) => eprintln!("COPY with {what}: failed as expected: {}", err_text(&e)),
        }
        assert_usable(&c, &format!("a failed COPY ({what})")).await;
        let per = env
            .per_shard_i64(&format!(
                "SELECT count(*) FROM users WHERE id BETWEEN {lo} AND {}",
                lo + n
            ))
            .await;
        assert_eq!(
            per,
            vec![0, 0, 0],
            "rows of the failed COPY ({what}) left on the shards"
        );
    }
    assert_eq!(
        proxy_count(&c, "SELECT count(*) FROM users").await,
        (users.len() + copied.len()) as i64
    );
    assert!(
        failures.is_empty(),
        "multi-row INSERT:\n{}",
        failures.join("\n")
    );
}

// ----------------------------------------------------------------------------------------
// 6. Refusals: SQLSTATE, message, and the session goes on
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_session_survives() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start_yaml(&env.shard_map_yaml_with(STRICT_TABLES, "", REGIONS, true)).await;
    let ring = ring_map(&env);
    let c = proxy.client().await;
    create_tables(
        &env,
        &c,
        &[USERS_DDL, EVENTS_DDL, CUSTOMERS_DDL, TENANT_DOCS_DDL],
    )
    .await;
    let vals: Vec<String> = (1..=20).map(|id| format!("({id}, 'user-{id}')")).collect();
    insert_batches(&c, "INSERT INTO users (id, name)", &vals, 20).await;

    let a = 1i64;
    let sa = ring_int(&ring, a);
    let elsewhere = (1000..).find(|&k| ring_int(&ring, k) != sa).unwrap();
    let same = (1000..).find(|&k| ring_int(&ring, k) == sa).unwrap();

    // UPDATE of the key to a value on another shard: 0A000 (simple and extended).
    expect_refusal(
        &c,
        "UPDATE users.id to another shard",
        &format!("UPDATE users SET id = {elsewhere} WHERE id = {a}"),
        "0A000",
        "users",
    )
    .await;
    expect_refusal_ext(
        &c,
        "UPDATE users.id to another shard (parameters)",
        "UPDATE users SET id = $1 WHERE id = $2",
        &[&elsewhere, &a],
        "0A000",
        "users",
    )
    .await;
    // INSERT without the shard key: 0A000.
    expect_refusal(
        &c,
        "INSERT into users without id",
        "INSERT INTO users (name) VALUES ('no key')",
        "0A000",
        "users",
    )
    .await;
    // INSERT .. SELECT into a sharded table, spanning shards: 0A000.
    expect_refusal(
        &c,
        "INSERT .. SELECT spanning shards",
        "INSERT INTO users (id, name) SELECT id + 5000, name FROM users",
        "0A000",
        "users",
    )
    .await;
    // Geo value in no region, no default_region: 23514.
    expect_refusal(
        &c,
        "INSERT customers country XX",
        "INSERT INTO customers (id, country, name) VALUES (1, 'XX', 'x')",
        "23514",
        "customers",
    )
    .await;
    expect_refusal_ext(
        &c,
        "INSERT customers country XX (parameters)",
        "INSERT INTO customers (id, country, name) VALUES ($1, $2, $3)",
        &[&2i64, &"XX", &"x"],
        "23514",
        "customers",
    )
    .await;
    // A multi-row INSERT with one unplaceable row is refused whole.
    expect_refusal(
        &c,
        "multi-row INSERT customers with one XX row",
        "INSERT INTO customers (id, country, name) VALUES (3, 'DE', 'ok'), (4, 'XX', 'bad'), (5, 'US', 'ok')",
        "23514",
        "customers",
    )
    .await;
    // Directory key unknown, fallback reject: 23514.
    expect_refusal(
        &c,
        "INSERT tenant_docs unknown tenant (fallback reject)",
        "INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES ('unknown-co', 1, 'x')",
        "23514",
        "tenant_docs",
    )
    .await;
    // Range key above the last bound, no catch-all: 23514.
    expect_refusal(
        &c,
        "INSERT events above the last bound",
        "INSERT INTO events (id, created_at, note) VALUES (1, '2026-06-01 00:00:00+00', 'x')",
        "23514",
        "events",
    )
    .await;
    expect_refusal_ext(
        &c,
        "INSERT events above the last bound (parameters)",
        "INSERT INTO events (id, created_at, note) VALUES ($1, $2, $3)",
        &[&2i64, &system_time(utc_midnight(2030, 1, 1)), &"x"],
        "23514",
        "events",
    )
    .await;
    // An offset-less timestamptz that could fall in two ranges: 22007.
    expect_refusal(
        &c,
        "INSERT events offset-less near a bound",
        "INSERT INTO events (id, created_at, note) VALUES (3, '2025-01-01 03:00:00', 'x')",
        "22007",
        "",
    )
    .await;

    // Nothing was written by any refusal.
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM users")
            .await
            .iter()
            .sum::<i64>(),
        20
    );
    for t in ["customers", "tenant_docs", "events"] {
        assert_eq!(
            env.per_shard_i64(&format!("SELECT count(*) FROM {t}"))
                .await,
            vec![0, 0, 0],
            "{t} after the refusals"
        );
    }
    // Reads of keys that belong to no shard just return no rows.
    for sql in [
        "SELECT * FROM customers WHERE country = 'XX'",
        "SELECT * FROM tenant_docs WHERE tenant_id = 'unknown-co'",
        "SELECT * FROM events WHERE created_at = '2026-06-01 00:00:00+00'",
        "SELECT * FROM events WHERE created_at >= '2027-01-01 00:00:00+00'",
    ] {
        let rows = simple_rows(&simple(&c, sql).await);
        assert!(rows.is_empty(), "{sql}: {rows:?}");
    }
    // Placeable rows still go in, on their shards.
    simple(
        &c,
        "INSERT INTO customers (id, country, name) VALUES (10, 'DE', 'de'), (11, 'FR', 'fr')",
    )
    .await;
    simple(
        &c,
        "INSERT INTO tenant_docs (tenant_id, doc_id, body) VALUES ('acme', 1, 'a'), ('globex', 2, 'g')",
    )
    .await;
    simple(
        &c,
        "INSERT INTO events (id, created_at, note) VALUES (1, '2025-12-31 23:59:59+00', 'last')",
    )
    .await;
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM customers").await,
        vec![2, 0, 0]
    );
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM tenant_docs").await,
        vec![1, 1, 0]
    );
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM events").await,
        vec![0, 1, 0]
    );

    // UPDATE of the key that stays on the same shard succeeds.
    let msgs = simple(&c, &format!("UPDATE users SET id = {same} WHERE id = {a}")).await;
    assert_eq!(command_count(&msgs), Some(1), "same-shard key UPDATE");
    let rows = per_shard(
        &env,
        &format!("SELECT id, name FROM users WHERE id IN ({a}, {same})"),
        |r| (r.get::<_, i64>(0), r.get::<_, String>(1)),
    )
    .await;
    for (i, r) in rows.iter().enumerate() {
        let want = if i == sa {
            vec![(same, format!("user-{a}"))]
        } else {
            vec![]
        };
        assert_eq!(r, &want, "users {a} -> {same} on shard {i}");
    }
    assert_usable(&c, "the same-shard key UPDATE").await;
}

// ----------------------------------------------------------------------------------------
// 7. Reference writes: all copies or none
// ----------------------------------------------------------------------------------------

/// `countries` on each shard, read directly, ordered by code.
async fn countries_per_shard(env: &TestEnv) -> Vec<Vec<(String, String)>> {
    per_shard(env, "SELECT code, name FROM countries ORDER BY code", |r| {
        (r.get::<_, String>(0), r.get::<_, String>(1))
    })
    .await
}

/// Every copy of `countries` must hold `want` (shard 1 also the planted `ZZ`). A mismatch
/// is recorded in `failures` and the copies are then reset to the expected rows directly,
/// so the later steps still test something.
async fn check_countries(
    env: &TestEnv,
    want: &BTreeMap<String, String>,
    when: &str,
    failures: &mut Vec<String>,
) {
    let per = countries_per_shard(env).await;
    let mut wrong = false;
    for (i, rows) in per.iter().enumerate() {
        let mut w: Vec<(String, String)> =
            want.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if i == 1 {
            w.push(("ZZ".to_string(), "planted".to_string()));
            w.sort();
        }
        if rows != &w {
            wrong = true;
            failures.push(format!(
                "countries on shard {i} {when}: {rows:?}, expected {w:?}"
            ));
        }
    }
    if wrong {
        for i in 0..env.shard_count() {
            let s = env.shard_client(i).await;
            s.batch_execute("DELETE FROM countries").await.unwrap();
            for (k, v) in want {
                s.execute("INSERT INTO countries VALUES ($1, $2)", &[k, v])
                    .await
                    .unwrap();
            }
            if i == 1 {
                s.batch_execute("INSERT INTO countries VALUES ('ZZ', 'planted')")
                    .await
                    .unwrap();
            }
        }
    }
}

/// Runs `stmts` (simple protocol, one statement per string) between BEGIN and COMMIT (or
/// ROLLBACK when `commit` is false). On the first error: ROLLBACK, check the session
/// still works, and return the error.
async fn run_in_tx(c: &Client, stmts: &[&str], commit: bool) -> Result<(), String> {
    simple(c, "BEGIN").await;
    for sql in stmts {
        if let Err(e) = c.simple_query(sql).await {
            simple(c, "ROLLBACK").await;
            assert_usable(c, &format!("a failed `{sql}` in a transaction")).await;
            return Err(format!("`{sql}`: {}", err_text(&e)));
        }
    }
    let end = if commit { "COMMIT" } else { "ROLLBACK" };
    c.simple_query(end)
        .await
        .map(|_| ())
        .map_err(|e| format!("{end}: {}", err_text(&e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_writes_all_or_nothing() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, "countries: { strategy: reference }", "").await;
    let mut c = proxy.client().await;
    create_tables(&env, &c, &[COUNTRIES_DDL]).await;
    simple(
        &c,
        "INSERT INTO countries (code, name) VALUES ('AA', 'a'), ('BB', 'b')",
    )
    .await;
    let mut want: BTreeMap<String, String> = [("AA", "a"), ("BB", "b")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    // A row that exists on shard 1 only (planted behind the proxy's back).
    env.shard_client(1)
        .await
        .batch_execute("INSERT INTO countries (code, name) VALUES ('ZZ', 'planted')")
        .await
        .unwrap();
    let mut failures: Vec<String> = Vec::new();

    // The same key through the proxy: fails on shard 1, so it must be on no shard.
    let e = c
        .simple_query("INSERT INTO countries (code, name) VALUES ('ZZ', 'new')")
        .await
        .expect_err("inserting a key that exists on one copy must fail");
    eprintln!("reference INSERT of ZZ: {}", err_text(&e));
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("23505"),
        "{}",
        err_text(&e)
    );
    assert_usable(&c, "the failed reference INSERT").await;
    check_countries(
        &env,
        &want,
        "after the failed single-row INSERT",
        &mut failures,
    )
    .await;
    // Multi-row, with a fresh key first; and the extended protocol.
    let e = c
        .simple_query("INSERT INTO countries (code, name) VALUES ('CC', 'c'), ('ZZ', 'new')")
        .await
        .expect_err("multi-row INSERT including ZZ must fail");
    eprintln!("reference multi-row INSERT with ZZ: {}", err_text(&e));
    assert_usable(&c, "the failed multi-row reference INSERT").await;
    check_countries(
        &env,
        &want,
        "after the failed multi-row INSERT (simple protocol)",
        &mut failures,
    )
    .await;
    let e = c
        .execute(
            "INSERT INTO countries (code, name) VALUES ($1, $2), ($3, $4)",
            &[&"DD", &"d", &"ZZ", &"new"],
        )
        .await
        .expect_err("parameterized INSERT including ZZ must fail");
    eprintln!("reference parameterized INSERT with ZZ: {}", err_text(&e));
    assert_usable(&c, "the failed parameterized reference INSERT").await;
    check_countries(
        &env,
        &want,
        "after the failed parameterized INSERT (extended protocol)",
        &mut failures,
    )
    .await;

    // A transaction of several reference writes commits on every copy (simple protocol,
    // one statement per string).
    match run_in_tx(
        &c,
        &[
            "INSERT INTO countries (code, name) VALUES ('EE', 'e')",
            "UPDATE countries SET name = 'a2' WHERE code = 'AA'",
            "INSERT INTO countries (code, name) VALUES ('FF', 'f'), ('GG', 'g')",
            "DELETE FROM countries WHERE code = 'BB'",
        ],
        true,
    )
    .await
    {
        Ok(()) => {
            want.insert("EE".into(), "e".into());
            want.insert("AA".into(), "a2".into());
            want.insert("FF".into(), "f".into());
            want.insert("GG".into(), "g".into());
            want.remove("BB");
        }
        Err(e) => failures.push(format!("transaction of reference writes (simple): {e}")),
    }
    check_countries(
        &env,
        &want,
        "after the committed transaction",
        &mut failures,
    )
    .await;

    // The same with the extended protocol.
    let r: Result<(), tokio_postgres::Error> = async {
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO countries (code, name) VALUES ($1, $2)",
            &[&"HH", &"h"],
        )
        .await?;
        tx.execute(
            "UPDATE countries SET name = $1 WHERE code = $2",
            &[&"e2", &"EE"],
        )
        .await?;
        tx.commit().await
    }
    .await;
    match r {
        Ok(()) => {
            want.insert("HH".into(), "h".into());
            if want.contains_key("EE") {
                want.insert("EE".into(), "e2".into());
            }
        }
        Err(e) => {
            failures.push(format!(
                "transaction of reference writes (extended): {}",
                err_text(&e)
            ));
            assert_usable(&c, "a failed extended-protocol transaction").await;
        }
    }
    check_countries(
        &env,
        &want,
        "after the extended-protocol transaction",
        &mut failures,
    )
    .await;

    // A transaction whose later write fails on one copy leaves nothing behind.
    match run_in_tx(
        &c,
        &[
            "INSERT INTO countries (code, name) VALUES ('II', 'i')",
            "INSERT INTO countries (code, name) VALUES ('ZZ', 'new')",
        ],
        false,
    )
    .await
    {
        Ok(()) => failures.push("a transaction inserting ZZ succeeded".to_string()),
        Err(e) => eprintln!("transaction inserting II then ZZ: {e}"),
    }
    // And a plain ROLLBACK undoes reference writes on every copy.
    if let Err(e) = run_in_tx(&c, &["DELETE FROM countries WHERE code = 'AA'"], false).await {
        failures.push(format!("DELETE in a transaction: {e}"));
    }
    check_countries(
        &env,
        &want,
        "after the rolled-back transactions",
        &mut failures,
    )
    .await;

    // Reads through the proxy see one copy.
    assert_eq!(
        proxy_count(&c, "SELECT count(*) FROM countries").await,
        want.len() as i64
    );
    assert!(
        failures.is_empty(),
        "reference writes were not all-or-nothing:\n{}",
        failures.join("\n")
    );
}

/// The test's own calendar arithmetic (no chrono here) against known instants.
#[test]
fn time_literals_are_right() {
    assert_eq!(b2025(), 1_735_689_600 * MICROS);
    assert_eq!(b2026(), 1_767_225_600 * MICROS);
    assert_eq!(ts_literal(b2025(), 0), "2025-01-01 00:00:00+00:00");
    assert_eq!(
        ts_literal(b2025() - 1, 0),
        "2024-12-31 23:59:59.999999+00:00"
    );
    assert_eq!(
        ts_literal(b2025() - HOUR / 2, 60),
        "2025-01-01 00:30:00+01:00"
    );
    assert_eq!(
        ts_literal(b2026() + HOUR, -300),
        "2025-12-31 20:00:00-05:00"
    );
    assert_eq!(ts_literal(b2026() - HOUR, 330), "2026-01-01 04:30:00+05:30");
    assert_eq!(
        ts_literal(utc_midnight(2024, 2, 29) + 13 * HOUR, 0),
        "2024-02-29 13:00:00+00:00"
    );
    for days in [-1000, 0, 19_000, 20_089, 20_454, 21_000] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(range_shard(b2025() - 1), 0);
    assert_eq!(range_shard(b2025()), 1);
    assert_eq!(range_shard(b2026()), 2);
}
