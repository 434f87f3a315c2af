//! Differential tests of scatter-gather reads: every query runs through the proxy (3 hash
//! shards) and on one unsharded reference Postgres holding the same rows, and the answers
//! must be identical — column names, type OIDs, parameter types and values (raw binary
//! bytes in the extended protocol, so numerics are checked with their scale; text in the
//! simple protocol), command-tag row counts, and the SQLSTATE where Postgres fails. Covers
//! ORDER BY merging (hidden sort columns included), LIMIT/OFFSET, aggregates, GROUP BY/
//! HAVING, DISTINCT, co-located and reference joins, key lists and point queries; then
//! pipelined queries, portal fetches in chunks, more clients than pooled connections,
//! reads inside a transaction that wrote, keyless writes followed by re-reads, edge values
//! (NaN, ±Infinity, float overflow, extreme ids, odd text) and changed session settings
//! (DateStyle, TimeZone, extra_float_digits, IntervalStyle).
//!
//! All differences are collected and reported together. To find a query that aborts the
//! whole process, run with `SHARDWIRE_GATHER_TRACE=1`; skip queries by label with
//! `SHARDWIRE_GATHER_SKIP=read#12,read#40`.

mod common;

use std::error::Error;
use std::fmt::Write as _;

use common::{Proxy, TestEnv};
use futures::future::join_all;
use futures::StreamExt;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

const TABLES: &str = "users: { key: id, type: bigint, strategy: hash }\n\
                      orders: { key: user_id, type: bigint, strategy: hash }\n\
                      countries: { strategy: reference }\n";

const N_USERS: i64 = 2000;
const N_ORDERS: i64 = 5000;
/// Concurrent proxy connections used to load rows.
const LOADERS: usize = 6;

const DDL: [&str; 3] = [
    "CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int, \
     balance numeric(12,2), ratio float8, born date, seen timestamptz, active bool)",
    "CREATE TABLE orders (user_id bigint NOT NULL, id bigint NOT NULL, amount numeric(10,2), \
     qty int, status text, PRIMARY KEY (user_id, id))",
    "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, region text)",
];

const COUNTRIES: &str = "INSERT INTO countries (code, name, region) VALUES \
    ('DE', 'Germany', 'EU'), ('FR', 'France', 'EU'), ('NL', 'Netherlands', 'EU'), \
    ('US', 'United States', 'NA'), ('CA', 'Canada', 'NA'), ('JP', 'Japan', 'APAC'), \
    ('IN', 'India', 'APAC'), ('AU', 'Australia', 'APAC'), ('BR', 'Brazil', 'LATAM'), \
    ('ZA', 'South Africa', NULL)";

// ---------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------

/// A 64-bit LCG (Knuth's MMIX constants); the high bits are used.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One row: the key, then every other column as text (None = NULL), in table order.
struct DataRow {
    key: i64,
    vals: Vec<Option<String>>,
}

/// users(id, name, country, score, balance, ratio, born, seen, active)
fn users() -> Vec<DataRow> {
    const FIRST: &[&str] = &[
        "anna", "Anna", "ANNA", "bob", "Bob", "carla", "Dmitri", "eve", "Émile", "zoë", "Zack",
        "yusuf", "Xu", "walter", "Vera", "uma", "o'brien", "Åsa",
    ];
    // XX has no row in countries (inner joins drop it).
    const CC: &[&str] = &[
        "DE", "FR", "NL", "US", "CA", "JP", "IN", "AU", "BR", "ZA", "XX",
    ];
    let mut r = Lcg(0x5eed_0001);
    (1..=N_USERS)
        .map(|id| {
            let name = if r.chance(4) {
                None
            } else if r.chance(30) {
                Some(r.pick(FIRST).to_string())
            } else {
                let first = r.pick(FIRST);
                Some(format!("{first} {}", r.below(400)))
            };
            let country = (!r.chance(5)).then(|| r.pick(CC).to_string());
            let score = (!r.chance(7)).then(|| r.range(-50, 150).to_string());
            let balance = (!r.chance(6)).then(|| {
                let cents = r.range(-500_000, 1_500_000);
                let sign = if cents < 0 { "-" } else { "" };
                format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
            });
            let ratio = (!r.chance(8)).then(|| {
                // Mostly positive so sums do not cancel out (approx comparisons are relative).
                let v = r.range(-200_000, 1_000_000) as f64 / 7.0;
                format!("{v:?}")
            });
            let born = (!r.chance(5)).then(|| {
                format!(
                    "{}-{:02}-{:02}",
                    r.range(1940, 2010),
                    r.range(1, 12),
                    r.range(1, 28)
                )
            });
            let seen = (!r.chance(10)).then(|| {
                format!(
                    "2024-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                    r.range(1, 12),
                    r.range(1, 28),
                    r.range(0, 23),
                    r.range(0, 59),
                    r.range(0, 59),
                    r.below(1_000_000)
                )
            });
            let active = (!r.chance(10)).then(|| r.chance(60).to_string());
            DataRow {
                key: id,
                vals: vec![name, country, score, balance, ratio, born, seen, active],
            }
        })
        .collect()
}

/// orders(user_id, id, amount, qty, status)
fn orders() -> Vec<DataRow> {
    const STATUS: &[&str] = &[
        "paid",
        "paid",
        "shipped",
        "cancelled",
        "pending",
        "refunded",
    ];
    let mut r = Lcg(0x5eed_0002);
    (1..=N_ORDERS)
        .map(|id| {
            // Users above 1900 never order (LEFT JOIN gives count 0 for them).
            let user_id = r.range(1, 1900);
            let amount = (!r.chance(3)).then(|| {
                let cents = if r.chance(5) {
                    -r.range(1, 20_000)
                } else {
                    r.range(50, 99_999)
                };
                let sign = if cents < 0 { "-" } else { "" };
                format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
            });
            let qty = (!r.chance(3)).then(|| r.range(1, 10).to_string());
            let status = (!r.chance(2)).then(|| r.pick(STATUS).to_string());
            DataRow {
                key: user_id,
                vals: vec![Some(id.to_string()), amount, qty, status],
            }
        })
        .collect()
}

fn sql_literal(v: &Option<String>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => format!("'{}'", s.replace('\'', "''")),
    }
}

/// Creates the schema through the proxy and on the reference DB, and loads the same rows:
/// through the proxy one prepared single-row INSERT at a time (several connections at
/// once), on the reference DB with multi-row INSERTs.
async fn load(proxy: &Proxy, reference: &Client) {
    let c = proxy.client().await;
    for ddl in DDL {
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl} through the proxy: {}", err_text(&e)));
        reference.batch_execute(ddl).await.unwrap();
    }
    c.batch_execute(COUNTRIES)
        .await
        .unwrap_or_else(|e| panic!("countries through the proxy: {}", err_text(&e)));
    reference.batch_execute(COUNTRIES).await.unwrap();

    let clients = join_all((0..LOADERS).map(|_| proxy.client())).await;
    insert_rows(&clients, reference, "users", &users()).await;
    insert_rows(&clients, reference, "orders", &orders()).await;
}

const USERS_INSERT: &str =
    "INSERT INTO users (id, name, country, score, balance, ratio, born, seen, active) \
     VALUES ($1, $2, $3, $4::text::int, $5::text::numeric, $6::text::float8, \
     $7::text::date, $8::text::timestamptz, $9::text::bool)";
const ORDERS_INSERT: &str = "INSERT INTO orders (user_id, id, amount, qty, status) \
     VALUES ($1, $2::text::bigint, $3::text::numeric, $4::text::int, $5)";

/// Inserts `rows` into `table`: on the reference DB with multi-row INSERTs, through the
/// proxy one prepared single-row INSERT at a time, spread over `clients` in parallel.
async fn insert_rows(clients: &[Client], reference: &Client, table: &str, rows: &[DataRow]) {
    let (insert, cols) = match table {
        "users" => (
            USERS_INSERT,
            "id, name, country, score, balance, ratio, born, seen, active",
        ),
        _ => (ORDERS_INSERT, "user_id, id, amount, qty, status"),
    };
    for chunk in rows.chunks(500) {
        let mut sql = format!("INSERT INTO {table} ({cols}) VALUES ");
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            write!(sql, "({}", row.key).unwrap();
            for v in &row.vals {
                write!(sql, ", {}", sql_literal(v)).unwrap();
            }
            sql.push(')');
        }
        reference.batch_execute(&sql).await.unwrap();
    }
    let n = clients.len();
    join_all(clients.iter().enumerate().map(|(k, client)| async move {
        let st = client
            .prepare(insert)
            .await
            .unwrap_or_else(|e| panic!("prepare {insert}: {}", err_text(&e)));
        for row in rows.iter().skip(k).step_by(n) {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&row.key];
            params.extend(row.vals.iter().map(|v| v as &(dyn ToSql + Sync)));
            let n = client
                .execute(&st, &params)
                .await
                .unwrap_or_else(|e| panic!("{table} row {}: {}", row.key, err_text(&e)));
            assert_eq!(n, 1, "{table} row {}", row.key);
        }
    }))
    .await;
}

/// Users with edge values, all in country 'QQ': NaN/±Infinity/-0/huge floats, numeric NaN
/// and extremes, ±infinity dates and timestamps, int4 extremes, names that need quoting,
/// extreme ids. Columns: id|name|score|balance|ratio|born|seen|active, `~` = NULL.
const SPECIALS: &str = "\
3001||2147483647|NaN|NaN|1900-01-01|1900-01-01 00:00:00+00|true
3002| trailing |-2147483648|9999999999.99|Infinity|infinity|infinity|false
3003|tab\there|0|-9999999999.99|-Infinity|-infinity|-infinity|~
3004|ZZZ|1|0.00|-0|2000-01-01|2000-01-01 00:00:00+00|true
3005|zzz|-1|0.01|0|2000-01-02|2000-01-01 00:00:00.000001+00|false
3006|big1|~|~|1e308|~|~|~
3007|big2|~|~|1e308|~|~|~
3008|big3|~|~|1.7976931348623157e308|~|~|~
3009|tiny|~|~|5e-324|~|~|~
3010|negbig|~|~|-1e308|~|~|~
3011|O'Hara \\ back|~|~|~|~|~|~
3012|\"dq\" $1 %s -- /* x */|~|~|~|~|~|~
3013|O'Hara \\ back|7|~|~|~|~|~
3014|ünï|~|~|~|~|~|~
9223372036854775807|max id|5|1.00|1.5|~|~|~
-9223372036854775808|min id|6|2.00|2.5|~|~|~";

fn special_users() -> Vec<DataRow> {
    let mut rows: Vec<DataRow> = SPECIALS
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 8, "{line}");
            let v = |s: &str| (s != "~").then(|| s.to_string());
            DataRow {
                key: f[0].parse().unwrap(),
                vals: vec![
                    v(f[1]),
                    Some("QQ".into()),
                    v(f[2]),
                    v(f[3]),
                    v(f[4]),
                    v(f[5]),
                    v(f[6]),
                    v(f[7]),
                ],
            }
        })
        .collect();
    rows.push(DataRow {
        key: 3015,
        vals: vec![Some("new\nline".into()), Some("QQ".into())]
            .into_iter()
            .chain(std::iter::repeat_n(None, 6))
            .collect(),
    });
    rows
}

// ---------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------

/// A parameter, usable typed (extended protocol) or as a literal (simple protocol).
#[derive(Debug)]
enum P {
    I64(i64),
    I32(i32),
    Text(&'static str),
    I64s(Vec<i64>),
    /// A bigint that may be NULL.
    OptI64(Option<i64>),
}

impl P {
    fn literal(&self) -> String {
        match self {
            P::I64(v) => v.to_string(),
            P::I32(v) => v.to_string(),
            P::Text(s) => format!("'{}'", s.replace('\'', "''")),
            P::I64s(v) => format!(
                "'{{{}}}'::bigint[]",
                v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            ),
            P::OptI64(v) => v.map_or("NULL".into(), |v| v.to_string()),
        }
    }
    fn to_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            P::I64(v) => v,
            P::I32(v) => v,
            P::Text(s) => s,
            P::I64s(v) => v,
            P::OptI64(v) => v,
        }
    }
}

/// One differential query.
#[derive(Debug)]
struct Q {
    sql: String,
    params: Vec<P>,
    /// Compare rows in order (ORDER BY makes the order fully deterministic).
    ordered: bool,
    /// float8/float4 values may differ in the last bits: relative tolerance 1e-9.
    approx: bool,
    /// Any rows are valid (LIMIT without ORDER BY): compare only the row count.
    count_only: bool,
    /// Not required yet: a 0A000 refusal is only noted, a wrong answer still fails.
    may_refuse: bool,
    /// Any rows are valid as long as they are rows of this (unlimited) query: compare the
    /// row count, and check each row is one of this query's (as a multiset).
    subset_of: Option<String>,
    /// Postgres answers with an error: the proxy must fail with the same SQLSTATE.
    errors: bool,
    /// Several statements in one string: only the simple protocol can send it.
    simple_only: bool,
}

fn q(sql: &str) -> Q {
    Q {
        sql: sql.to_string(),
        params: Vec::new(),
        ordered: false,
        approx: false,
        count_only: false,
        may_refuse: false,
        subset_of: None,
        errors: false,
        simple_only: false,
    }
}

impl Q {
    fn ordered(mut self) -> Q {
        self.ordered = true;
        self
    }
    fn approx(mut self) -> Q {
        self.approx = true;
        self
    }
    fn count_only(mut self) -> Q {
        self.count_only = true;
        self
    }
    fn may_refuse(mut self) -> Q {
        self.may_refuse = true;
        self
    }
    fn subset_of(mut self, sql: &str) -> Q {
        self.subset_of = Some(sql.to_string());
        self
    }
    fn errors(mut self) -> Q {
        self.errors = true;
        self
    }
    fn simple_only(mut self) -> Q {
        self.simple_only = true;
        self
    }
    fn params(mut self, params: Vec<P>) -> Q {
        self.params = params;
        self
    }
    /// The SQL with literals in place of `$n` (for the simple protocol).
    fn literal_sql(&self) -> String {
        let mut sql = self.sql.clone();
        for (i, p) in self.params.iter().enumerate().rev() {
            sql = sql.replace(&format!("${}", i + 1), &p.literal());
        }
        sql
    }
}

/// The read queries (at least 60), each compared in both protocols.
fn read_queries() -> Vec<Q> {
    use P::*;
    vec![
        // --- ORDER BY -----------------------------------------------------------------
        q("SELECT id, name FROM users ORDER BY id").ordered(),
        q("SELECT id, name FROM users ORDER BY id DESC").ordered(),
        q("SELECT id, name, score FROM users ORDER BY score DESC, id").ordered(),
        q("SELECT id, score FROM users ORDER BY score ASC NULLS FIRST, id DESC").ordered(),
        q("SELECT id, score FROM users ORDER BY score DESC NULLS LAST, id").ordered(),
        q("SELECT id, country, score FROM users ORDER BY country, score DESC, id").ordered(),
        q("SELECT id, score * 2 AS dbl FROM users ORDER BY score * 2, id").ordered(),
        q("SELECT id, name FROM users ORDER BY lower(name), id").ordered(),
        q("SELECT name, id FROM users ORDER BY 2 DESC").ordered(),
        q("SELECT id, score AS s FROM users ORDER BY s NULLS FIRST, id").ordered(),
        // Sort columns not in the select list (hidden, must be stripped).
        q("SELECT name FROM users ORDER BY id").ordered(),
        q("SELECT id FROM users ORDER BY balance, id").ordered(),
        q("SELECT name, country FROM users WHERE score > 100 \
           ORDER BY country DESC NULLS FIRST, name, id")
        .ordered(),
        // One ORDER BY per type.
        q("SELECT id, name FROM users ORDER BY name, id").ordered(),
        q("SELECT id, balance FROM users ORDER BY balance DESC, id").ordered(),
        q("SELECT id, born FROM users ORDER BY born DESC NULLS LAST, id").ordered(),
        q("SELECT id, seen FROM users ORDER BY seen, id").ordered(),
        q("SELECT id, ratio FROM users ORDER BY ratio DESC, id").ordered(),
        q("SELECT id, active FROM users ORDER BY active DESC NULLS LAST, id").ordered(),
        q("SELECT user_id, id, amount FROM orders ORDER BY amount, user_id, id").ordered(),
        q("SELECT * FROM users WHERE false ORDER BY id").ordered(),
        // Output alias shadowing a column: ORDER BY name means the output column (= id).
        q("SELECT id AS name, name AS id FROM users ORDER BY name LIMIT 5").ordered(),
        q("SELECT name FROM users ORDER BY users.name, id").ordered(),
        q("SELECT u.* FROM users u ORDER BY u.id DESC LIMIT 3").ordered(),
        q("SELECT 1 AS one FROM users ORDER BY id LIMIT 2").ordered(),
        q("SELECT id FROM users ORDER BY abs(score - $1) NULLS LAST, id LIMIT 10")
            .params(vec![I32(42)])
            .ordered(),
        q("SELECT id, name FROM users ORDER BY name COLLATE \"C\" DESC NULLS LAST, id LIMIT 20")
            .ordered(),
        q("SELECT id FROM users ORDER BY id USING > LIMIT 4")
            .ordered()
            .may_refuse(),
        q("SELECT id FROM users ORDER BY 5").errors(),
        q("SELECT nosuch FROM users ORDER BY id").errors(),
        q("SELECT id, 100 / (score - score) FROM users ORDER BY id").errors(),
        // One shard fails after the others (and itself) have sent rows.
        q("SELECT id, 10 / (id - 1500) FROM users ORDER BY id").errors(),
        q("SELECT country, sum(10 / (id - 1500)) FROM users GROUP BY country").errors(),
        // --- LIMIT / OFFSET -----------------------------------------------------------
        q("SELECT id, name FROM users ORDER BY id LIMIT 10").ordered(),
        q("SELECT id, score FROM users ORDER BY score DESC NULLS LAST, id LIMIT 25 OFFSET 40")
            .ordered(),
        q("SELECT id FROM users ORDER BY id OFFSET 1990").ordered(),
        q("SELECT id, name FROM users ORDER BY id LIMIT $1 OFFSET $2")
            .params(vec![I64(15), I64(100)])
            .ordered(),
        q("SELECT id FROM users ORDER BY id DESC LIMIT $1")
            .params(vec![I64(7)])
            .ordered(),
        q("SELECT id, balance FROM users ORDER BY balance DESC NULLS LAST, id LIMIT 10 OFFSET $1")
            .params(vec![I64(5)])
            .ordered(),
        q("SELECT id, score FROM users WHERE score > $1 ORDER BY score, id LIMIT $2")
            .params(vec![I32(140), I64(12)])
            .ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT 0").ordered(),
        q("SELECT id FROM users ORDER BY id OFFSET 5000").ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT 5 OFFSET 5000").ordered(),
        q("SELECT id FROM users ORDER BY id DESC FETCH FIRST 5 ROWS ONLY").ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT ALL").ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT NULL OFFSET 1995").ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT $1 OFFSET $2")
            .params(vec![OptI64(None), OptI64(Some(1995))])
            .ordered(),
        q("SELECT id FROM users ORDER BY id DESC LIMIT $1 OFFSET $2")
            .params(vec![OptI64(Some(3)), OptI64(None)])
            .ordered(),
        q("SELECT id FROM users ORDER BY id OFFSET 10 ROWS FETCH NEXT 5 ROWS ONLY").ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT 2 + 3")
            .ordered()
            .may_refuse(),
        q("SELECT id, score FROM users ORDER BY score DESC NULLS LAST FETCH FIRST 5 ROWS WITH TIES")
            .may_refuse(),
        q("SELECT id FROM users ORDER BY id LIMIT -1").errors(),
        q("SELECT id FROM users ORDER BY id OFFSET -1").errors(),
        q("SELECT id FROM users ORDER BY id LIMIT $1")
            .params(vec![I64(-3)])
            .errors(),
        // LIMIT without ORDER BY: any rows of the unlimited query, the right number.
        q("SELECT id, name FROM users LIMIT 10").subset_of("SELECT id, name FROM users"),
        q("SELECT id FROM users WHERE country = 'DE' LIMIT 5 OFFSET 3")
            .subset_of("SELECT id FROM users WHERE country = 'DE'"),
        q("SELECT * FROM orders LIMIT 1").subset_of("SELECT * FROM orders"),
        q("SELECT id FROM users LIMIT $1")
            .params(vec![I64(3)])
            .count_only(),
        q("SELECT country, count(*) FROM users GROUP BY country LIMIT 3")
            .subset_of("SELECT country, count(*) FROM users GROUP BY country"),
        q("SELECT DISTINCT country FROM users LIMIT 4")
            .subset_of("SELECT DISTINCT country FROM users"),
        // --- Aggregates without GROUP BY ----------------------------------------------
        q("SELECT count(*) FROM users"),
        q("SELECT count(*) AS n, count(name), count(score), count(balance), count(ratio), \
           count(born), count(seen), count(active) FROM users"),
        q("SELECT sum(score) FROM users"),
        q("SELECT sum(id) FROM users"),
        q("SELECT sum(balance) FROM users"),
        q("SELECT sum(qty), sum(amount), count(*) FROM orders"),
        q("SELECT min(name), max(name), min(country), max(country) FROM users"),
        q("SELECT min(born), max(born), min(seen), max(seen) FROM users"),
        q("SELECT min(balance), max(balance), min(score), max(score), min(id), max(id), \
           min(ratio), max(ratio) FROM users"),
        q("SELECT avg(score) FROM users"),
        q("SELECT avg(id) FROM users"),
        q("SELECT avg(balance) FROM users"),
        q("SELECT avg(amount), avg(qty) FROM orders"),
        q("SELECT avg(ratio), sum(ratio) FROM users").approx(),
        q("SELECT count(DISTINCT country), count(DISTINCT score) FROM users"),
        q("SELECT sum(DISTINCT score) FROM users"),
        q("SELECT count(DISTINCT status) FROM orders"),
        q("SELECT count(*) FILTER (WHERE active), sum(score) FILTER (WHERE country = 'DE'), \
           avg(balance) FILTER (WHERE score < 0) FROM users"),
        q("SELECT count(*), count(score), sum(score), sum(balance), avg(score), min(name), \
           max(balance) FROM users WHERE false"),
        q("SELECT count(*), sum(balance), avg(ratio) FROM users WHERE id < 0"),
        q("SELECT min(id), max(id), count(*) FROM users WHERE score BETWEEN 10 AND 20"),
        q("SELECT max(seen), min(born), count(*) FROM users WHERE country = 'JP'"),
        q("SELECT count(*) FROM users HAVING count(*) > 10"),
        q("SELECT count(*) FROM users HAVING count(*) > 5000"),
        q("SELECT min(seen) FILTER (WHERE active), max(born) FILTER (WHERE NOT active), \
           sum(balance) FILTER (WHERE balance < 0) FROM users"),
        q("SELECT count(DISTINCT country) FILTER (WHERE score > 0) FROM users").may_refuse(),
        q("SELECT sum(name) FROM users").errors(),
        q("SELECT sum(100 / (score - score)) FROM users").errors(),
        // Beyond the required set: a refusal is acceptable, a wrong answer is not.
        q("SELECT sum(score) / count(*) AS avg_int, count(*) * 2 AS twice, \
           coalesce(sum(score), 0) + 1 AS plus FROM users")
        .may_refuse(),
        q("SELECT round(avg(score), 2), sum(score)::float8 / count(score) FROM users")
            .approx()
            .may_refuse(),
        q("SELECT count(DISTINCT (country, active)) FROM users").may_refuse(),
        q("SELECT sum(score)::int2 FROM users").errors().may_refuse(),
        q("SELECT max(score) - min(score) AS spread FROM users").may_refuse(),
        q("SELECT stddev(score), variance(score) FROM users").may_refuse(),
        q("SELECT bool_and(active), bool_or(active) FROM users").may_refuse(),
        // --- GROUP BY / HAVING --------------------------------------------------------
        q("SELECT country, count(*) FROM users GROUP BY country"),
        q("SELECT country, count(*), sum(score), avg(score), min(name), max(balance), \
           sum(balance), avg(balance) FROM users GROUP BY country ORDER BY country")
        .ordered(),
        q("SELECT score % 10 AS bucket, count(*) FROM users GROUP BY score % 10 \
           ORDER BY bucket NULLS FIRST")
        .ordered(),
        q("SELECT country, count(*) FROM users GROUP BY 1 ORDER BY 1").ordered(),
        q("SELECT country, active, count(*), sum(balance) FROM users GROUP BY country, active"),
        q("SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > 180"),
        q("SELECT country FROM users GROUP BY country HAVING sum(score) > 9000"),
        q("SELECT country, min(score) FROM users GROUP BY country \
           HAVING max(balance) > 14000 AND count(*) > 150 ORDER BY country")
        .ordered(),
        q("SELECT country, sum(score) AS total FROM users GROUP BY country \
           ORDER BY total DESC NULLS LAST, country LIMIT 3")
        .ordered(),
        q("SELECT country, count(*) FROM users GROUP BY country \
           ORDER BY count(*) DESC, country NULLS FIRST LIMIT 5")
        .ordered(),
        q("SELECT extract(year FROM born) AS y, count(*), avg(ratio) FROM users \
           GROUP BY 1 ORDER BY 1 NULLS FIRST")
        .ordered()
        .approx(),
        q("SELECT active, count(*), avg(balance), min(seen) FROM users GROUP BY active \
           ORDER BY active NULLS FIRST")
        .ordered(),
        q("SELECT country, count(*) FILTER (WHERE score > 50) FROM users GROUP BY country \
           ORDER BY country")
        .ordered(),
        q("SELECT country, count(*) FROM users WHERE false GROUP BY country"),
        q("SELECT count(*) FROM users GROUP BY country"),
        q("SELECT count(*), country FROM users GROUP BY country ORDER BY 2 NULLS FIRST").ordered(),
        q("SELECT country, count(*) FROM users GROUP BY country ORDER BY 2 DESC, 1").ordered(),
        q("SELECT country FROM users GROUP BY country ORDER BY max(balance) DESC NULLS LAST, country")
            .ordered(),
        q("SELECT score / $1 AS b, count(*) FROM users GROUP BY score / $1 ORDER BY 1 NULLS FIRST")
            .params(vec![I32(25)])
            .ordered(),
        q("SELECT lower(name) AS ln, count(*) FROM users GROUP BY lower(name) \
           ORDER BY count(*) DESC, ln NULLS FIRST LIMIT 10")
        .ordered(),
        q("SELECT country, name FROM users GROUP BY country").errors(),
        q("SELECT country, count(*) FROM users GROUP BY ROLLUP (country)").may_refuse(),
        q("SELECT country, count(*) FROM users WHERE score > $1 GROUP BY country ORDER BY country")
            .params(vec![I32(20)])
            .ordered(),
        q("SELECT status, count(*), min(amount), max(amount), sum(qty) FROM orders \
           GROUP BY status ORDER BY status")
        .ordered(),
        q("SELECT status, sum(amount) FILTER (WHERE qty > 2) FROM orders GROUP BY status \
           ORDER BY status")
        .ordered(),
        q("SELECT country, count(DISTINCT score) FROM users GROUP BY country ORDER BY country")
            .ordered()
            .may_refuse(),
        // --- DISTINCT -----------------------------------------------------------------
        q("SELECT DISTINCT country FROM users"),
        q("SELECT DISTINCT country, active FROM users ORDER BY country, active").ordered(),
        q("SELECT DISTINCT score FROM users ORDER BY score DESC NULLS LAST LIMIT 10").ordered(),
        q("SELECT DISTINCT status FROM orders ORDER BY status NULLS FIRST").ordered(),
        q("SELECT DISTINCT country FROM users ORDER BY country DESC LIMIT 3 OFFSET 2").ordered(),
        q("SELECT DISTINCT lower(name) FROM users"),
        q("SELECT DISTINCT ON (country) country, id, name FROM users ORDER BY country, id")
            .ordered(),
        q("SELECT DISTINCT ON (country) country, score, id FROM users \
           ORDER BY country, score DESC NULLS LAST, id")
        .ordered(),
        // --- Co-located join ----------------------------------------------------------
        q("SELECT u.id, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id \
           WHERE u.score > 90"),
        q("SELECT u.id, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id \
           ORDER BY o.amount DESC NULLS LAST, u.id, o.id LIMIT 20")
        .ordered(),
        q("SELECT u.country, count(*), sum(o.amount) FROM users u \
           JOIN orders o ON o.user_id = u.id GROUP BY u.country ORDER BY u.country")
        .ordered(),
        q("SELECT count(*), sum(o.qty), avg(o.amount) FROM users u \
           JOIN orders o ON o.user_id = u.id WHERE o.status = 'paid'"),
        q("SELECT u.id, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id \
           GROUP BY u.id ORDER BY count(o.id) DESC, u.id LIMIT 10")
        .ordered(),
        q("SELECT count(*) FROM users u LEFT JOIN orders o ON o.user_id = u.id \
           WHERE o.id IS NULL"),
        q("SELECT u.country, o.status, count(*), sum(o.qty) FROM users u \
           JOIN orders o ON o.user_id = u.id GROUP BY 1, 2 ORDER BY 1, 2")
        .ordered(),
        // --- Subqueries co-located on the shard key ------------------------------------
        q("SELECT count(*) FROM users u WHERE EXISTS \
           (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.status = 'paid')"),
        q("SELECT id, name FROM users u WHERE NOT EXISTS \
           (SELECT 1 FROM orders o WHERE o.user_id = u.id) ORDER BY id LIMIT 25")
        .ordered(),
        q("SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) AS n \
           FROM users u WHERE u.score > 80 ORDER BY n DESC, u.id")
        .ordered(),
        q("SELECT country, count(*) FROM users u WHERE u.id IN \
           (SELECT o.user_id FROM orders o WHERE o.amount > 500) GROUP BY country ORDER BY 1")
        .ordered(),
        q("SELECT count(*) FROM users u WHERE u.id NOT IN (SELECT user_id FROM orders)"),
        q("SELECT * FROM users u WHERE u.id = $1 AND EXISTS \
           (SELECT 1 FROM orders o WHERE o.user_id = u.id)")
        .params(vec![I64(42)]),
        // --- Join with the reference table --------------------------------------------
        q("SELECT c.region, count(*), sum(u.balance) FROM users u \
           JOIN countries c ON c.code = u.country GROUP BY c.region ORDER BY c.region")
        .ordered(),
        q("SELECT u.id, c.name FROM users u JOIN countries c ON c.code = u.country \
           WHERE u.score < -40 ORDER BY u.id")
        .ordered(),
        q("SELECT code, name, region FROM countries ORDER BY code").ordered(),
        q("SELECT c.region, count(DISTINCT u.country) FROM users u \
           JOIN countries c ON c.code = u.country GROUP BY c.region ORDER BY 1")
        .ordered()
        .may_refuse(),
        // --- Key lists, = ANY, point queries ------------------------------------------
        q("SELECT id, name FROM users WHERE id IN (1, 2, 3, 500) ORDER BY id").ordered(),
        q("SELECT id, score FROM users WHERE id IN (7, 70, 700, 1700, 99999) \
           ORDER BY score DESC NULLS LAST, id")
        .ordered(),
        q("SELECT count(*), sum(score), max(name) FROM users WHERE id IN (1, 2, 3, 500)"),
        q("SELECT id FROM users WHERE id = ANY($1) ORDER BY id")
            .params(vec![I64s(vec![3, 30, 300, 1999, 5000])])
            .ordered(),
        q("SELECT * FROM users WHERE id = $1").params(vec![I64(42)]),
        q("SELECT * FROM users WHERE id = $1").params(vec![I64(1999)]),
        q("SELECT * FROM users WHERE id = $1").params(vec![I64(-5)]),
        q("SELECT * FROM orders WHERE user_id = $1 ORDER BY id")
            .params(vec![I64(17)])
            .ordered(),
        q("SELECT count(*), sum(amount), avg(qty) FROM orders WHERE user_id = $1")
            .params(vec![I64(17)]),
        // --- Plain scatter and a text parameter ---------------------------------------
        q("SELECT * FROM users"),
        q("SELECT * FROM orders WHERE qty > 8"),
        q("SELECT id, name FROM users WHERE country = $1 ORDER BY id")
            .params(vec![Text("FR")])
            .ordered(),
        // Several statements in one simple-protocol string.
        q("SELECT count(*) FROM users; SELECT id FROM users ORDER BY id LIMIT 3")
            .simple_only()
            .ordered(),
        q("SELECT id FROM users ORDER BY id DESC LIMIT 2; \
           SELECT country, count(*) FROM users GROUP BY country ORDER BY country")
        .simple_only()
        .ordered(),
    ]
}

/// Reads whose text output or grouping depends on session settings, run after the client
/// (and the reference session) changed DateStyle, TimeZone, extra_float_digits and
/// IntervalStyle.
const SESSION_SETTINGS: [&str; 4] = [
    "SET DateStyle = 'SQL, DMY'",
    "SET TimeZone = 'America/Sao_Paulo'",
    "SET extra_float_digits = 0",
    "SET IntervalStyle = 'sql_standard'",
];

fn session_queries() -> Vec<Q> {
    let finite = "ratio <> 'NaN' AND abs(ratio) < 1e300";
    vec![
        q("SELECT id, seen, born FROM users ORDER BY seen NULLS FIRST, id LIMIT 20").ordered(),
        q("SELECT min(seen), max(seen), min(born), max(born) FROM users"),
        q("SELECT seen::date AS d, count(*) FROM users GROUP BY 1 ORDER BY 1 NULLS FIRST")
            .ordered(),
        q(
            "SELECT date_trunc('month', seen) AS m, count(*), min(seen) FROM users \
           GROUP BY 1 ORDER BY 1 NULLS FIRST",
        )
        .ordered(),
        q(&format!(
            "SELECT avg(ratio), sum(ratio), min(ratio), max(ratio) FROM users WHERE {finite}"
        ))
        .approx(),
        q(&format!(
            "SELECT country, avg(ratio), max(ratio) FROM users WHERE {finite} \
             GROUP BY country ORDER BY country"
        ))
        .ordered()
        .approx(),
        q("SELECT id, ratio FROM users WHERE ratio > 100000 ORDER BY ratio DESC, id LIMIT 10")
            .ordered(),
        q("SELECT DISTINCT born FROM users ORDER BY born NULLS FIRST LIMIT 10").ordered(),
        q("SELECT max(seen) - min(seen) AS span FROM users \
           WHERE seen BETWEEN '2024-01-01' AND '2025-01-01'")
        .may_refuse(),
    ]
}

/// Reads over the edge values of [`special_users`].
fn special_queries() -> Vec<Q> {
    vec![
        q("SELECT id, ratio FROM users ORDER BY ratio, id").ordered(),
        q("SELECT id, ratio FROM users WHERE country = 'QQ' ORDER BY ratio DESC NULLS LAST, id")
            .ordered(),
        q("SELECT id, balance FROM users ORDER BY balance DESC NULLS LAST, id LIMIT 5").ordered(),
        q("SELECT id, balance FROM users ORDER BY balance NULLS FIRST, id LIMIT 5").ordered(),
        q("SELECT min(ratio), max(ratio), count(ratio) FROM users"),
        q("SELECT min(ratio), max(ratio) FROM users WHERE ratio <> 'NaN'"),
        q("SELECT min(balance), max(balance), sum(balance), avg(balance) FROM users"),
        q("SELECT sum(balance), avg(balance) FROM users WHERE balance <> 'NaN'"),
        // (Only sums whose value does not depend on the order of addition: NaN and ±Infinity
        // absorb everything, and no two huge finite values meet.)
        q(
            "SELECT sum(ratio), avg(ratio) FROM users WHERE country = 'QQ' \
           AND (abs(ratio) < 1e300 OR ratio IN ('NaN', 'Infinity', '-Infinity'))",
        )
        .approx(),
        q(
            "SELECT sum(ratio), avg(ratio) FROM users WHERE country = 'QQ' \
           AND (abs(ratio) < 1e300 OR ratio = 'Infinity')",
        )
        .approx(),
        q(
            "SELECT sum(ratio), avg(ratio) FROM users WHERE country = 'QQ' AND id > 3003 \
           AND abs(ratio) < 1e300",
        )
        .approx(),
        // avg(float8) also accumulates the sum of squares, which overflows for -1e308:
        // Postgres fails even though the mean itself would fit.
        q("SELECT avg(ratio) FROM users WHERE ratio IN (-1e308, 5e-324)").errors(),
        // float8 addition overflows: Postgres raises 22003 even when each shard's sum fits.
        q("SELECT sum(ratio) FROM users WHERE ratio > 1e300 AND ratio < 'Infinity'::float8")
            .errors(),
        q("SELECT avg(ratio) FROM users WHERE ratio > 1e300 AND ratio < 'Infinity'::float8")
            .errors(),
        q("SELECT min(born), max(born), min(seen), max(seen) FROM users"),
        q("SELECT id, born FROM users ORDER BY born NULLS FIRST, id LIMIT 5").ordered(),
        q("SELECT id, seen FROM users ORDER BY seen DESC NULLS LAST, id LIMIT 5").ordered(),
        q("SELECT id FROM users ORDER BY id LIMIT 3").ordered(),
        q("SELECT id FROM users ORDER BY id DESC LIMIT 3").ordered(),
        q("SELECT sum(id), avg(id), min(id), max(id), count(id) FROM users"),
        q("SELECT sum(score), avg(score), min(score), max(score) FROM users WHERE country = 'QQ'"),
        q("SELECT name, id FROM users WHERE country = 'QQ' ORDER BY name NULLS FIRST, id")
            .ordered(),
        q("SELECT max(name), min(name) FROM users WHERE country = 'QQ'"),
        q("SELECT name, count(*), sum(score) FROM users WHERE country = 'QQ' GROUP BY name"),
        q("SELECT DISTINCT name FROM users WHERE country = 'QQ' ORDER BY name").ordered(),
        q(
            "SELECT count(DISTINCT name), min(name) FILTER (WHERE name > 'O') FROM users \
           WHERE country = 'QQ'",
        ),
        q("SELECT ratio, count(*) FROM users WHERE country = 'QQ' AND ratio <> 0 GROUP BY ratio"),
        q("SELECT DISTINCT balance FROM users WHERE country = 'QQ' ORDER BY balance NULLS FIRST")
            .ordered(),
        q(
            "SELECT count(*) FILTER (WHERE ratio = 'NaN'), count(*) FILTER (WHERE ratio = 0) \
           FROM users",
        ),
        q("SELECT id, ratio FROM users WHERE ratio = 0 ORDER BY id").ordered(),
    ]
}

/// Re-read after the keyless writes.
fn after_write_queries() -> Vec<Q> {
    vec![
        q(
            "SELECT country, sum(score), count(score), count(*) FROM users GROUP BY country \
           ORDER BY country",
        )
        .ordered(),
        q("SELECT id, score FROM users WHERE country = 'DE' ORDER BY id").ordered(),
        q("SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status")
            .ordered(),
        q("SELECT count(*), sum(amount) FROM orders"),
        q("SELECT * FROM orders"),
    ]
}

// ---------------------------------------------------------------------------------------
// Running and comparing
// ---------------------------------------------------------------------------------------

/// One value as raw bytes, whatever the type (NULL = None).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

type Row = Vec<Raw>;

/// A result: column names, type OIDs (extended only), parameter OIDs (extended only) and
/// rows (text bytes in the simple protocol, binary in the extended one).
#[derive(Debug, Default)]
struct Out {
    names: Vec<String>,
    types: Vec<u32>,
    params: Vec<u32>,
    rows: Vec<Row>,
    /// Row counts of the command tags (`SELECT n`), one per statement.
    tags: Vec<u64>,
    binary: bool,
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn is_refusal(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.code().code() == "0A000")
}

async fn run_simple(c: &Client, sql: &str) -> Result<Out, tokio_postgres::Error> {
    let mut out = Out::default();
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                if !out.names.is_empty() {
                    out.names.push("|".into()); // next statement
                }
                out.names.extend(cols.iter().map(|c| c.name().to_string()));
            }
            SimpleQueryMessage::CommandComplete(n) => out.tags.push(n),
            SimpleQueryMessage::Row(r) => out.rows.push(
                (0..r.len())
                    .map(|i| Raw(r.get(i).map(|s| s.as_bytes().to_vec())))
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(out)
}

async fn run_extended(c: &Client, q: &Q) -> Result<Out, tokio_postgres::Error> {
    let st = c.prepare(&q.sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = q.params.iter().map(P::to_sql).collect();
    let stream = c.query_raw(&st, params).await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(r) = stream.next().await {
        let r = r?;
        rows.push((0..r.len()).map(|i| r.get::<_, Raw>(i)).collect());
    }
    Ok(Out {
        names: st.columns().iter().map(|c| c.name().to_string()).collect(),
        types: st.columns().iter().map(|c| c.type_().oid()).collect(),
        params: st.params().iter().map(Type::oid).collect(),
        rows,
        tags: stream.rows_affected().into_iter().collect(),
        binary: true,
    })
}

fn show_value(v: &Raw, binary: bool, ty: Option<u32>) -> String {
    let Some(b) = &v.0 else {
        return "NULL".into();
    };
    if binary {
        if let Some(s) = ty.and_then(Type::from_oid).and_then(|t| decode(&t, b)) {
            return s;
        }
    }
    match std::str::from_utf8(b) {
        Ok(s) if !binary || s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!(
            "0x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}

/// A binary value of a common type as text (for failure messages; numerics show their
/// display scale, timestamps are UTC).
fn decode(ty: &Type, b: &[u8]) -> Option<String> {
    let int = |n: usize| -> Option<i64> {
        Some(match n {
            2 => i16::from_be_bytes(b.get(..2)?.try_into().ok()?) as i64,
            4 => i32::from_be_bytes(b.get(..4)?.try_into().ok()?) as i64,
            _ => i64::from_be_bytes(b.get(..8)?.try_into().ok()?),
        })
    };
    let s = match *ty {
        Type::BOOL => (b.first()? != &0).to_string(),
        Type::INT2 => int(2)?.to_string(),
        Type::INT4 => int(4)?.to_string(),
        Type::INT8 => int(8)?.to_string(),
        Type::FLOAT4 => format!("{:?}", f32::from_be_bytes(b.try_into().ok()?)),
        Type::FLOAT8 => format!("{:?}", f64::from_be_bytes(b.try_into().ok()?)),
        Type::NUMERIC => numeric_text(b)?,
        Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ
            if matches!(int(b.len())?, i64::MAX | 2_147_483_647) =>
        {
            "infinity".into()
        }
        Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ
            if matches!(int(b.len())?, i64::MIN | -2_147_483_648) =>
        {
            "-infinity".into()
        }
        Type::DATE => {
            let (y, m, d) = civil(int(4)? + 10_957);
            format!("{y:04}-{m:02}-{d:02}")
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let us = int(8)? + 946_684_800_000_000;
            let (days, rem) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
            let (y, m, d) = civil(days);
            let secs = rem / 1_000_000;
            // Fractional seconds as Postgres prints them: trailing zeros dropped.
            let frac = format!(".{:06}", rem % 1_000_000);
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{}{}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                frac.trim_end_matches('0').trim_end_matches('.'),
                if *ty == Type::TIMESTAMPTZ { "+00" } else { "" }
            )
        }
        _ => return None,
    };
    Some(s)
}

/// Checks [`decode`] against Postgres' own text output (so failure messages can be trusted).
async fn check_decoder(reference_url: &str) {
    let c = common::connect(reference_url).await;
    c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let sql = "SELECT v::numeric AS n, v::numeric::text AS nt, NULL::date AS d, NULL::text AS dt, \
                      NULL::timestamptz AS t, NULL::text AS tt \
               FROM unnest(ARRAY['0', '-0.001', '12345678.90', '0.00', '1e-20', '-99999999999.9999', \
                                 'NaN', '10000', '0.5', '123.456789012345678901']) AS v \
               UNION ALL \
               SELECT NULL, NULL, v::date, v::date::text, v::timestamptz, v::timestamptz::text \
               FROM unnest(ARRAY['1940-01-01 00:00:00+00', '2000-02-29 23:59:59.5+00', \
                                 '1999-12-31 12:00:00.000001+00', '2024-03-01 01:02:03.12+00', \
                                 '1969-07-20 20:17:40+00']) AS v";
    for r in c.query(sql, &[]).await.unwrap() {
        for (col, txt) in [(0, 1), (2, 3), (4, 5)] {
            let raw: Raw = r.get(col);
            if raw.0.is_none() {
                continue;
            }
            let want: String = r.get(txt);
            let got = decode(r.columns()[col].type_(), raw.0.as_deref().unwrap());
            assert_eq!(
                got.as_deref(),
                Some(want.as_str()),
                "decoding {want} in the test harness"
            );
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The text form of a binary numeric, with its display scale.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = word(0)? as i64;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digit = |i: i64| -> u16 {
        if i < 0 || i >= ndigits {
            0
        } else {
            word(8 + 2 * i as usize).unwrap_or(0)
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                write!(s, "{}", digit(0)).ok()?;
            } else {
                write!(s, "{:04}", digit(i)).ok()?;
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            write!(frac, "{:04}", digit(i)).ok()?;
            i += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

fn show_row(row: &Row, out: &Out) -> String {
    let vals: Vec<String> = row
        .iter()
        .enumerate()
        .map(|(i, v)| show_value(v, out.binary, out.types.get(i).copied()))
        .collect();
    format!("({})", vals.join(", "))
}

fn float_of(v: &[u8], binary: bool, ty: Option<u32>) -> Option<f64> {
    if !binary {
        return std::str::from_utf8(v).ok()?.parse().ok();
    }
    match (ty, v.len()) {
        (Some(t), 8) if t == Type::FLOAT8.oid() => Some(f64::from_be_bytes(v.try_into().ok()?)),
        (Some(t), 4) if t == Type::FLOAT4.oid() => {
            Some(f32::from_be_bytes(v.try_into().ok()?) as f64)
        }
        _ => None,
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn rows_match(got: &Row, want: &Row, approx: bool, out: &Out) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).enumerate().all(|(i, (g, w))| {
            g == w
                || (approx
                    && match (&g.0, &w.0) {
                        (Some(g), Some(w)) => {
                            let ty = out.types.get(i).copied();
                            match (float_of(g, out.binary, ty), float_of(w, out.binary, ty)) {
                                (Some(g), Some(w)) => close(g, w),
                                _ => false,
                            }
                        }
                        _ => false,
                    })
        })
}

/// Differences between the proxy's answer and the reference's, or None.
fn compare(q: &Q, got: &Out, want: &Out, full: Option<&Out>) -> Option<String> {
    if got.names != want.names {
        return Some(format!(
            "columns differ: proxy {:?}, reference {:?}",
            got.names, want.names
        ));
    }
    if got.types != want.types {
        return Some(format!(
            "column type OIDs differ: proxy {:?}, reference {:?}",
            got.types, want.types
        ));
    }
    if got.params != want.params {
        return Some(format!(
            "parameter type OIDs differ: proxy {:?}, reference {:?}",
            got.params, want.params
        ));
    }
    if got.tags != want.tags {
        return Some(format!(
            "command tag row counts differ: proxy {:?}, reference {:?} ({} rows received)",
            got.tags,
            want.tags,
            got.rows.len()
        ));
    }
    if q.count_only || full.is_some() {
        if got.rows.len() != want.rows.len() {
            return Some(format!(
                "row count differs: proxy {}, reference {}",
                got.rows.len(),
                want.rows.len()
            ));
        }
        let mut pool = full.map(|f| f.rows.clone())?;
        pool.sort();
        for row in &got.rows {
            match pool.binary_search(row) {
                Ok(at) => {
                    pool.remove(at);
                }
                Err(_) => {
                    return Some(format!(
                        "row {} is not a row of the unlimited query (or appears too often)",
                        show_row(row, got)
                    ))
                }
            }
        }
        return None;
    }
    let (mut g, mut w) = (got.rows.clone(), want.rows.clone());
    if !q.ordered {
        g.sort();
        w.sort();
    }
    let first_diff = (0..g.len().max(w.len())).find(|&i| match (g.get(i), w.get(i)) {
        (Some(a), Some(b)) => !rows_match(a, b, q.approx, want),
        _ => true,
    })?;
    let mut msg = format!(
        "rows differ ({}; proxy {} rows, reference {} rows); first difference at {} row {first_diff}: \
         proxy {}, reference {}",
        if q.ordered { "in order" } else { "as multisets" },
        g.len(),
        w.len(),
        if q.ordered { "position" } else { "sorted" },
        g.get(first_diff)
            .map_or("<none>".into(), |r| show_row(r, got)),
        w.get(first_diff)
            .map_or("<none>".into(), |r| show_row(r, want)),
    );
    if q.ordered && g.len() == w.len() {
        let mut gs = g.clone();
        let mut ws = w.clone();
        gs.sort();
        ws.sort();
        if gs == ws {
            msg.push_str(" [same rows, wrong order]");
        }
    }
    Some(msg)
}

/// A copy of `q`'s parameters and flags (for running a variant of its SQL).
fn q_like(src: &Q) -> Q {
    Q {
        params: src
            .params
            .iter()
            .map(|p| match p {
                P::I64(v) => P::I64(*v),
                P::I32(v) => P::I32(*v),
                P::Text(v) => P::Text(v),
                P::I64s(v) => P::I64s(v.clone()),
                P::OptI64(v) => P::OptI64(*v),
            })
            .collect(),
        ordered: src.ordered,
        approx: src.approx,
        ..q(&src.sql)
    }
}

async fn run_mode(c: &Client, q: &Q, simple: bool) -> Result<Out, tokio_postgres::Error> {
    if simple {
        run_simple(c, &q.literal_sql()).await
    } else {
        run_extended(c, q).await
    }
}

/// Set to print each query before it runs (to find one that crashes the process).
const TRACE_ENV: &str = "SHARDWIRE_GATHER_TRACE";
/// Comma-separated queries to skip, e.g. `read#12,after-write#0` (while investigating).
const SKIP_ENV: &str = "SHARDWIRE_GATHER_SKIP";

fn skipped() -> Vec<String> {
    std::env::var(SKIP_ENV)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs `queries` in both protocols through the proxy and on the reference; returns the
/// failures and the notes (accepted refusals). Reconnects if the proxy connection died.
async fn run_queries(
    proxy: &Proxy,
    c: &mut Client,
    reference: &Client,
    queries: &[Q],
    label: &str,
) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let trace = std::env::var_os(TRACE_ENV).is_some();
    let skip = skipped();
    for (i, q) in queries.iter().enumerate() {
        if skip.contains(&format!("{label}#{i}")) {
            notes.push(format!("{label} #{i} skipped ({SKIP_ENV}): {}", q.sql));
            continue;
        }
        for mode in ["simple", "extended/binary"] {
            if mode != "simple" && q.simple_only {
                continue;
            }
            if trace {
                eprintln!("trace: {label} #{i} [{mode}] {}", q.sql);
            }
            let what = format!("{label} #{i} [{mode}] {}", q.sql);
            let simple = mode == "simple";
            let want = run_mode(reference, q, simple).await;
            let got = run_mode(c, q, simple).await;
            let want = match (want, q.errors) {
                (Ok(w), false) => Ok(w),
                (Err(e), true) if e.as_db_error().is_some() => Err(e),
                (Ok(_), true) => panic!("{what}: the reference answers; an error was expected"),
                (Err(e), _) => panic!("{what}: the reference fails: {}", err_text(&e)),
            };
            match (got, want) {
                (Err(e), _) if q.may_refuse && is_refusal(&e) => {
                    notes.push(format!("{what}: refused (allowed): {}", err_text(&e)));
                }
                (Err(g), Err(w)) => {
                    if g.as_db_error().map(|d| d.code()) != w.as_db_error().map(|d| d.code()) {
                        failures.push(format!(
                            "{what}\n    proxy error: {}\n    reference error: {}",
                            err_text(&g),
                            err_text(&w)
                        ));
                    }
                }
                (Ok(g), Err(w)) => failures.push(format!(
                    "{what}\n    proxy answers {} rows; Postgres fails: {}",
                    g.rows.len(),
                    err_text(&w)
                )),
                (Err(e), Ok(_)) => {
                    failures.push(format!("{what}\n    proxy error: {}", err_text(&e)))
                }
                (Ok(got), Ok(want)) => {
                    let full = match &q.subset_of {
                        Some(sql) => {
                            let unlimited = Q {
                                sql: sql.clone(),
                                ..q_like(q)
                            };
                            Some(
                                run_mode(reference, &unlimited, simple)
                                    .await
                                    .unwrap_or_else(|e| {
                                        panic!(
                                            "{what}: the reference fails the unlimited query: {}",
                                            err_text(&e)
                                        )
                                    }),
                            )
                        }
                        None => None,
                    };
                    if let Some(d) = compare(q, &got, &want, full.as_ref()) {
                        failures.push(format!("{what}\n    {d}"));
                    }
                }
            }
            if c.is_closed() {
                failures.push(format!("{what}\n    the proxy closed the connection"));
                *c = proxy.client().await;
            }
        }
    }
    (failures, notes)
}

fn report(failures: &[String], notes: &[String], runs: usize) {
    for n in notes {
        eprintln!("note: {n}");
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} differential checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_gather_reads_match_one_postgres() {
    let env = TestEnv::new(3).await;
    let proxy = Proxy::start(&env, TABLES, "").await;
    let reference = env.reference_client().await;
    let started = std::time::Instant::now();
    load(&proxy, &reference).await;
    eprintln!("loaded in {:?}", started.elapsed());

    // Setup sanity (independent of gather support): every row landed exactly once.
    let users_per_shard = env.per_shard_i64("SELECT count(*) FROM users").await;
    let orders_per_shard = env.per_shard_i64("SELECT count(*) FROM orders").await;
    assert_eq!(
        users_per_shard.iter().sum::<i64>(),
        N_USERS,
        "{users_per_shard:?}"
    );
    assert_eq!(
        orders_per_shard.iter().sum::<i64>(),
        N_ORDERS,
        "{orders_per_shard:?}"
    );
    assert!(
        users_per_shard.iter().all(|&n| n > N_USERS / 6),
        "users badly spread: {users_per_shard:?}"
    );
    for i in 0..env.shard_count() {
        let n: i64 = env
            .shard_client(i)
            .await
            .query_one("SELECT count(*) FROM countries", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 10, "countries on shard {i}");
    }

    check_decoder(&env.reference_url()).await;
    let mut c = proxy.client().await;
    let queries = read_queries();
    assert!(queries.len() >= 60, "only {} queries", queries.len());
    let started = std::time::Instant::now();
    let (mut failures, mut notes) = run_queries(&proxy, &mut c, &reference, &queries, "read").await;
    eprintln!(
        "{} read queries x 2 protocols in {:?}",
        queries.len(),
        started.elapsed()
    );
    let mut runs = queries.len() * 2;

    let (f, n) = pipelined_and_portals(&mut c, &reference).await;
    failures.extend(f);
    notes.extend(n);
    let (f, r) = concurrent_clients(&proxy, &reference).await;
    failures.extend(f);
    runs += r;
    let (f, r) = reads_see_own_transaction(&c, &reference).await;
    failures.extend(f);
    runs += r;
    if c.is_closed() {
        failures.push("the proxy closed the connection (pipelines, portals, transaction)".into());
        c = proxy.client().await;
    }

    // Keyless writes, identically on both sides.
    let update = "UPDATE users SET score = score + 1 WHERE country = 'DE'";
    let want = reference.execute(update, &[]).await.unwrap();
    match c.execute(update, &[]).await {
        Ok(got) if got == want => {}
        Ok(got) => failures.push(format!(
            "write: {update}: proxy reports {got} rows, reference {want}"
        )),
        Err(e) => failures.push(format!("write: {update}: proxy error: {}", err_text(&e))),
    }
    let toggle = "UPDATE users SET active = NOT active WHERE score = 77";
    let want = run_simple_tag(&reference, toggle).await.unwrap();
    match run_simple_tag(&c, toggle).await {
        Ok(got) if got == want => {}
        Ok(got) => failures.push(format!(
            "write (simple protocol): {toggle}: proxy reports {got:?} rows, reference {want:?}"
        )),
        Err(e) => failures.push(format!("write: {toggle}: proxy error: {}", err_text(&e))),
    }
    let delete = "DELETE FROM orders WHERE status = 'cancelled' RETURNING user_id, id";
    let raw_rows = |rows: Vec<tokio_postgres::Row>| {
        let mut v: Vec<Row> = rows
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
            .collect();
        v.sort();
        v
    };
    let want = raw_rows(reference.query(delete, &[]).await.unwrap());
    assert!(!want.is_empty(), "the data set has cancelled orders");
    match c.query(delete, &[]).await {
        Ok(got) => {
            let got = raw_rows(got);
            if got != want {
                failures.push(format!(
                    "write: {delete}: RETURNING gave {} rows, reference {} (as multisets: {})",
                    got.len(),
                    want.len(),
                    if got.len() == want.len() {
                        "different rows"
                    } else {
                        "different counts"
                    }
                ));
            }
        }
        Err(e) => failures.push(format!("write: {delete}: proxy error: {}", err_text(&e))),
    }
    runs += 3;
    if c.is_closed() {
        failures.push("the proxy closed the connection after the writes".into());
        c = proxy.client().await;
    }

    let after = after_write_queries();
    let (f, n) = run_queries(&proxy, &mut c, &reference, &after, "after-write").await;
    failures.extend(f);
    notes.extend(n);
    runs += after.len() * 2;

    // Edge values.
    insert_rows(
        std::slice::from_ref(&c),
        &reference,
        "users",
        &special_users(),
    )
    .await;
    let specials = special_queries();
    let (f, n) = run_queries(&proxy, &mut c, &reference, &specials, "special").await;
    failures.extend(f);
    notes.extend(n);
    runs += specials.len() * 2;

    // Session settings that change text output and date arithmetic.
    for set in SESSION_SETTINGS {
        reference.batch_execute(set).await.unwrap();
        if let Err(e) = c.batch_execute(set).await {
            failures.push(format!("{set}: {}", err_text(&e)));
        }
    }
    let session = session_queries();
    let (f, n) = run_queries(&proxy, &mut c, &reference, &session, "session").await;
    failures.extend(f);
    notes.extend(n);
    runs += session.len() * 2;
    report(&failures, &notes, runs);
}

/// Gather queries pipelined on one connection (all sent before the first answer is read),
/// and read through a portal a few rows per Execute (as JDBC's fetchSize does). A refusal
/// (0A000) of the portal fetch is only noted.
async fn pipelined_and_portals(c: &mut Client, reference: &Client) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let batch = [
        q("SELECT id FROM users ORDER BY id LIMIT 5").ordered(),
        q("SELECT count(*), sum(balance) FROM users"),
        q("SELECT * FROM users WHERE id = 42"),
        q("SELECT country, count(*) FROM users GROUP BY country ORDER BY country").ordered(),
        q("SELECT DISTINCT status FROM orders ORDER BY 1 NULLS FIRST").ordered(),
        q("SELECT id, name FROM users WHERE score > 140"),
        q("SELECT id FROM users ORDER BY score DESC NULLS LAST, id LIMIT 3 OFFSET 2").ordered(),
    ];
    let got = join_all(batch.iter().map(|q| run_extended(c, q))).await;
    for (i, (q, got)) in batch.iter().zip(got).enumerate() {
        let want = run_extended(reference, q).await.unwrap();
        let what = format!("pipelined #{i} {}", q.sql);
        match got {
            Err(e) => failures.push(format!("{what}\n    proxy error: {}", err_text(&e))),
            Ok(got) => {
                if let Some(d) = compare(q, &got, &want, None) {
                    failures.push(format!("{what}\n    {d}"));
                }
            }
        }
    }

    let portals = [
        ("SELECT id, name FROM users ORDER BY id", 97),
        (
            "SELECT country, count(*) FROM users GROUP BY country ORDER BY country",
            5,
        ),
        (
            "SELECT id FROM users ORDER BY score DESC NULLS LAST, id LIMIT 50 OFFSET 10",
            7,
        ),
        ("SELECT DISTINCT country FROM users ORDER BY 1", 4),
        ("SELECT count(*) FROM users", 1),
        // Control: a single-shard query (no gather involved).
        (
            "SELECT user_id, id FROM orders WHERE user_id = 17 ORDER BY id",
            2,
        ),
    ];
    for (sql, chunk) in portals {
        let what = format!("portal fetch ({chunk} rows per Execute) {sql}");
        let want = run_extended(reference, &q(sql)).await.unwrap();
        match portal_fetch(c, sql, chunk).await {
            Err((e, step)) if is_refusal(&e) => {
                notes.push(format!("{what}: refused at {step}: {}", err_text(&e)))
            }
            Err((e, step)) => failures.push(format!(
                "{what}\n    proxy error at {step}: {}",
                err_text(&e)
            )),
            Ok(rows) => {
                let got = Out {
                    names: want.names.clone(),
                    types: want.types.clone(),
                    params: want.params.clone(),
                    tags: want.tags.clone(),
                    rows,
                    binary: true,
                };
                if let Some(d) = compare(&q(sql).ordered(), &got, &want, None) {
                    failures.push(format!("{what}\n    {d}"));
                }
            }
        }
    }
    (failures, notes)
}

/// More clients than the pool has connections per shard (10), each running gather
/// queries at the same time: all must answer correctly (no pool deadlock or timeout).
async fn concurrent_clients(proxy: &Proxy, reference: &Client) -> (Vec<String>, usize) {
    const CLIENTS: usize = 24;
    let batch = [
        q(
            "SELECT country, count(*), avg(balance), max(name) FROM users GROUP BY country \
           ORDER BY country",
        )
        .ordered(),
        q("SELECT id, name FROM users ORDER BY score DESC NULLS LAST, id LIMIT 30").ordered(),
        q("SELECT count(DISTINCT score), sum(balance) FROM users"),
        q("SELECT DISTINCT country FROM users ORDER BY 1").ordered(),
    ];
    let mut want = Vec::new();
    for q in &batch {
        want.push(run_extended(reference, q).await.unwrap());
    }
    let clients = join_all((0..CLIENTS).map(|_| proxy.client())).await;
    let started = std::time::Instant::now();
    let results = join_all(clients.iter().enumerate().map(|(k, c)| {
        let batch = &batch;
        async move {
            let mut out = Vec::new();
            for j in 0..batch.len() {
                let i = (j + k) % batch.len();
                out.push((i, run_extended(c, &batch[i]).await));
            }
            out
        }
    }))
    .await;
    eprintln!(
        "{CLIENTS} clients x {} gather queries at once in {:?}",
        batch.len(),
        started.elapsed()
    );
    let mut failures = Vec::new();
    for (k, per_client) in results.into_iter().enumerate() {
        for (i, got) in per_client {
            let what = format!("concurrent client {k}: {}", batch[i].sql);
            match got {
                Err(e) => failures.push(format!("{what}\n    proxy error: {}", err_text(&e))),
                Ok(got) => {
                    if let Some(d) = compare(&batch[i], &got, &want[i], None) {
                        failures.push(format!("{what}\n    {d}"));
                    }
                }
            }
        }
    }
    (failures, CLIENTS * batch.len())
}

/// Rows of `sql` read through a portal, `chunk` rows per Execute, in a transaction.
/// On failure: the error and where it happened.
async fn portal_fetch(
    c: &mut Client,
    sql: &str,
    chunk: i32,
) -> Result<Vec<Row>, (tokio_postgres::Error, String)> {
    let at = |step: &str| {
        let step = step.to_string();
        move |e| (e, step)
    };
    let tx = c.transaction().await.map_err(at("BEGIN"))?;
    let st = tx.prepare(sql).await.map_err(at("prepare"))?;
    let portal = tx.bind(&st, &[]).await.map_err(at("Bind"))?;
    let mut rows = Vec::new();
    for execute in 1.. {
        let part = tx.query_portal(&portal, chunk).await.map_err(at(&format!(
            "Execute #{execute}, after {} rows",
            rows.len()
        )))?;
        let n = part.len();
        rows.extend(
            part.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect()),
        );
        if n < chunk as usize {
            break;
        }
    }
    tx.commit().await.map_err(at("COMMIT"))?;
    Ok(rows)
}

/// Inside a transaction that inserted a row on one shard, gather reads see that row
/// (they must run on the transaction's connection for that shard); after ROLLBACK it is
/// gone. Returns the failures and the number of checks.
async fn reads_see_own_transaction(c: &Client, reference: &Client) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let reads = [
        q("SELECT count(*), max(name) FILTER (WHERE id > 4000) FROM users"),
        q("SELECT id, name FROM users ORDER BY id DESC LIMIT 3").ordered(),
        q("SELECT country, count(*) FROM users GROUP BY country ORDER BY country").ordered(),
    ];
    let insert = "INSERT INTO users (id, name, country) VALUES (4001, 'in tx', 'TX')";
    // The reference: the expected answers inside the transaction, then roll back.
    reference.batch_execute("BEGIN").await.unwrap();
    reference.batch_execute(insert).await.unwrap();
    let mut want = Vec::new();
    for r in &reads {
        want.push(run_extended(reference, r).await.unwrap());
    }
    reference.batch_execute("ROLLBACK").await.unwrap();

    let result: Result<(), tokio_postgres::Error> = async {
        c.batch_execute("BEGIN").await?;
        c.batch_execute(insert).await?;
        for (i, r) in reads.iter().enumerate() {
            match run_extended(c, r).await {
                Ok(got) => {
                    if let Some(d) = compare(r, &got, &want[i], None) {
                        failures.push(format!(
                            "in a transaction after an INSERT: {}\n    {d}",
                            r.sql
                        ));
                    }
                }
                Err(e) => {
                    failures.push(format!(
                        "in a transaction after an INSERT: {}\n    proxy error: {}",
                        r.sql,
                        err_text(&e)
                    ));
                    break;
                }
            }
        }
        c.batch_execute("ROLLBACK").await
    }
    .await;
    if let Err(e) = result {
        failures.push(format!("transaction: {}", err_text(&e)));
        let _ = c.batch_execute("ROLLBACK").await;
    }
    // After the rollback both agree again.
    let after = q("SELECT count(*) FROM users WHERE id = 4001 OR country = 'TX'");
    let want_after = run_extended(reference, &after).await.unwrap();
    match run_extended(c, &after).await {
        Ok(got) => {
            if let Some(d) = compare(&after, &got, &want_after, None) {
                failures.push(format!("after ROLLBACK: {}\n    {d}", after.sql));
            }
        }
        Err(e) => failures.push(format!("after ROLLBACK: {}: {}", after.sql, err_text(&e))),
    }
    (failures, reads.len() + 1)
}

/// The affected-row count of a simple-protocol statement.
async fn run_simple_tag(c: &Client, sql: &str) -> Result<Option<u64>, tokio_postgres::Error> {
    Ok(c.simple_query(sql).await?.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    }))
}
