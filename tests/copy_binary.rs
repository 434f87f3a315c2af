//! Binary `COPY … FROM STDIN` into sharded tables (issue 19): tuples split by their key's
//! binary form, each shard loading a binary stream of its own, placed exactly where text COPY
//! and INSERT place the same keys; malformed streams refused with 22P04; one transaction.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{Proxy, TestEnv};
use futures::{pin_mut, SinkExt};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;

const ROWS: i64 = 100_000;

const ITEMS: &str =
    "CREATE TABLE bc_items (id bigint PRIMARY KEY, name text NOT NULL, qty integer, \
                     price numeric, at timestamptz, day date)";

/// A uuid as tokio-postgres sends it (the crate is built without its uuid feature).
#[derive(Debug)]
struct Uuid([u8; 16]);

impl ToSql for Uuid {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    to_sql_checked!();
}

/// A numeric as its text, sent in numeric's binary form (base-10000 digits), for integers.
#[derive(Debug)]
struct Num(i64);

impl ToSql for Num {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mut v = self.0.unsigned_abs();
        let mut digits = Vec::new();
        while v > 0 {
            digits.push((v % 10_000) as i16);
            v /= 10_000;
        }
        digits.reverse();
        out.put_i16(digits.len() as i16);
        out.put_i16(digits.len().saturating_sub(1) as i16);
        out.put_u16(if self.0 < 0 { 0x4000 } else { 0 });
        out.put_u16(0);
        digits.iter().for_each(|d| out.put_i16(*d));
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// `n` rows of bc_items by binary COPY on `c`; returns the tag's count and the time taken.
async fn copy_items(c: &Client, lo: i64, n: i64) -> Result<(u64, Duration), tokio_postgres::Error> {
    let started = Instant::now();
    let sink = c
        .copy_in("COPY bc_items (id, name, qty, price, at, day) FROM STDIN (FORMAT binary)")
        .await?;
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::INT4,
        Type::NUMERIC,
        Type::TIMESTAMPTZ,
        Type::DATE,
    ];
    let w = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(w);
    for id in lo..lo + n {
        let name = format!("item-{id}");
        let qty = (id % 1000) as i32;
        let qty: Option<i32> = (id % 17 != 0).then_some(qty);
        let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + id as u64);
        let day =
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * (id as u64 % 20_000));
        w.as_mut()
            .write(&[&id, &name, &qty, &Num(id * 3 - 7), &at, &DateOnly(day)])
            .await?;
    }
    let count = w.finish().await?;
    Ok((count, started.elapsed()))
}

/// A date from a time (days since 2000-01-01 in binary).
#[derive(Debug)]
struct DateOnly(std::time::SystemTime);

impl ToSql for DateOnly {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let secs = self
            .0
            .duration_since(std::time::SystemTime::UNIX_EPOCH)?
            .as_secs() as i64;
        out.put_i32((secs / 86_400 - 10_957) as i32);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }

    to_sql_checked!();
}

/// The rows of `sql` as text, one string per row (simple protocol).
async fn text_rows(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

/// tokio-postgres's `BinaryCopyInWriter`, 100,000 rows over 3 shards: every row on its key's
/// shard, the same rows as the same COPY into one Postgres, and the time both take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_of_100k_rows_is_split_by_key() {
    let env = TestEnv::new(3).await;
    let tables = "bc_items: { key: id, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    c.batch_execute(ITEMS).await.unwrap();
    let r = env.reference_client().await;
    r.batch_execute(ITEMS).await.unwrap();

    let (n, via_proxy) = copy_items(&c, 1, ROWS).await.unwrap();
    assert_eq!(n, ROWS as u64, "COPY reports every row");
    let (n, direct) = copy_items(&r, 1, ROWS).await.unwrap();
    assert_eq!(n, ROWS as u64);
    eprintln!(
        "binary COPY of {ROWS} rows: {:.3} s through the proxy (3 shards), {:.3} s directly into one Postgres, ratio {:.2}",
        via_proxy.as_secs_f64(),
        direct.as_secs_f64(),
        via_proxy.as_secs_f64() / direct.as_secs_f64()
    );

    let placed = env.placed("bc_items", "id").await;
    assert_eq!(placed.len(), ROWS as usize);
    for (s, id) in &placed {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    assert!((0..3).all(|s| placed.iter().any(|p| p.0 == s)));
    // Every value as one Postgres stored it.
    let q = "SELECT id, name, qty, price, at, day FROM bc_items ORDER BY id";
    let got = text_rows(&c, q).await;
    let want = text_rows(&r, q).await;
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "first difference: {:?}",
        got.iter().zip(&want).find(|(a, b)| a != b)
    );
}

/// Text and uuid keys (and numeric, date, timestamptz keys): a binary COPY places each row
/// on the shard a text COPY places the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_land_where_text_keys_do() {
    let env = TestEnv::new(3).await;
    let mut tables = String::new();
    let kinds = [
        ("tag", "text", "varchar(40)"),
        ("uid", "uuid", "uuid"),
        ("amt", "numeric", "numeric"),
        ("day", "date", "date"),
        ("ts", "timestamptz", "timestamptz"),
    ];
    for (name, ty, _) in kinds {
        for suffix in ["bin", "txt"] {
            tables.push_str(&format!(
                "bk_{name}_{suffix}: {{ key: k, type: {ty}, strategy: hash }}\n"
            ));
        }
    }
    let proxy = Proxy::start(&env, &tables, "").await;
    let c = proxy.client().await;
    for (name, _, col) in kinds {
        for suffix in ["bin", "txt"] {
            c.batch_execute(&format!(
                "CREATE TABLE bk_{name}_{suffix} (n int NOT NULL, k {col} PRIMARY KEY)"
            ))
            .await
            .unwrap();
        }
    }
    const N: i64 = 3000;
    for (name, _, _) in kinds {
        // Binary, through the driver.
        let ty = match name {
            "tag" => Type::VARCHAR,
            "uid" => Type::UUID,
            "amt" => Type::NUMERIC,
            "day" => Type::DATE,
            _ => Type::TIMESTAMPTZ,
        };
        let sink = c
            .copy_in(&format!(
                "COPY bk_{name}_bin (n, k) FROM STDIN (FORMAT binary)"
            ))
            .await
            .unwrap();
        let w = BinaryCopyInWriter::new(sink, &[Type::INT4, ty]);
        pin_mut!(w);
        for i in 0..N {
            let n = i as i32;
            let t = std::time::SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_600_000_000 + 3_607 * i as u64);
            let d = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * i as u64);
            let mut u = [0u8; 16];
            u[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            u[8..].copy_from_slice(&(i as u64).to_be_bytes());
            let tag = format!("tag-é-{i}");
            let r = match name {
                "tag" => w.as_mut().write(&[&n, &tag]).await,
                "uid" => w.as_mut().write(&[&n, &Uuid(u)]).await,
                "amt" => w.as_mut().write(&[&n, &Num(i * 10_001 - 5_000_000)]).await,
                "day" => w.as_mut().write(&[&n, &DateOnly(d)]).await,
                _ => w.as_mut().write(&[&n, &t]).await,
            };
            r.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), N as u64, "{name}");
        // The same keys as text: read back from the binary table, written by text COPY.
        let lines: String = text_rows(&c, &format!("SELECT n, k FROM bk_{name}_bin ORDER BY n"))
            .await
            .into_iter()
            .map(|l| l.replace('|', "\t") + "\n")
            .collect();
        assert_eq!(lines.lines().count(), N as usize);
        // (timestamptz values are written with their UTC offset, as text keys need)
        let sink = c
            .copy_in::<_, Bytes>(&format!("COPY bk_{name}_txt (n, k) FROM STDIN"))
            .await
            .unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from(lines)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), N as u64, "{name} text");
        let mut spread = Vec::new();
        for s in 0..3 {
            let sc = env.shard_client(s).await;
            let q = |t: &str| format!("SELECT n, k::text FROM bk_{name}_{t} ORDER BY n");
            let bin = text_rows(&sc, &q("bin")).await;
            let txt = text_rows(&sc, &q("txt")).await;
            assert_eq!(
                bin, txt,
                "{name}: shard {s} holds other keys from binary than from text"
            );
            spread.push(bin.len());
        }
        assert_eq!(spread.iter().sum::<usize>(), N as usize);
        assert!(spread.iter().all(|&n| n > 0), "{name}: {spread:?}");
    }
    // The text key as the map hashes it.
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(&tables, ""), "t").unwrap();
    let sc = env.shard_client(1).await;
    for row in text_rows(&sc, "SELECT k FROM bk_tag_bin").await {
        assert_eq!(map.hash_shard(&KeyValue::Text(row.clone())), 1, "{row}");
    }
}

/// A raw binary COPY stream built by hand, sent in chunks of `chunk` bytes.
async fn copy_raw(
    c: &Client,
    sql: &str,
    data: &[u8],
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    for part in data.chunks(chunk) {
        sink.send(Bytes::copy_from_slice(part)).await?;
    }
    sink.finish().await
}

fn header() -> Vec<u8> {
    let mut h = b"PGCOPY\n\xff\r\n\0".to_vec();
    h.extend_from_slice(&[0; 8]);
    h
}

/// A tuple of an int8 and a text (`None`: NULL).
fn tuple(id: Option<i64>, name: &str) -> Vec<u8> {
    let mut t = 2i16.to_be_bytes().to_vec();
    match id {
        Some(id) => {
            t.extend_from_slice(&8i32.to_be_bytes());
            t.extend_from_slice(&id.to_be_bytes());
        }
        None => t.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    t.extend_from_slice(&(name.len() as i32).to_be_bytes());
    t.extend_from_slice(name.as_bytes());
    t
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Malformed streams get 22P04 and leave nothing behind; the connection stays usable; a NULL
/// key gets the error text COPY gives; a key column whose binary form is not the map's key
/// type is refused before any data (0A000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_copy_is_refused() {
    let env = TestEnv::new(3).await;
    let tables = "bm_t: { key: id, type: bigint, strategy: hash }\n\
                  bm_wrong: { key: id, type: text, strategy: hash }\n";
    let proxy = Proxy::start(&env, tables, "").await;
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE bm_t (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE bm_wrong (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let sql = "COPY bm_t (id, name) FROM STDIN (FORMAT binary)";
    // Many good tuples first, so some shards have received rows when the error comes.
    let mut good = header();
    for id in 1..=2000 {
        good.extend(tuple(Some(id), "ok"));
    }
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("text data", b"1\tone\n".to_vec()));
    let mut cut = good.clone();
    cut.extend(&tuple(Some(9), "cut")[..7]);
    cases.push(("a tuple cut short", cut));
    let mut count = good.clone();
    count.extend_from_slice(&1i16.to_be_bytes());
    count.extend_from_slice(&8i32.to_be_bytes());
    count.extend_from_slice(&9i64.to_be_bytes());
    count.extend_from_slice(&[0xff, 0xff]);
    cases.push(("a wrong field count", count));
    let mut len = good.clone();
    len.extend_from_slice(&2i16.to_be_bytes());
    len.extend_from_slice(&(-5i32).to_be_bytes());
    cases.push(("a negative length", len));
    let mut after = good.clone();
    after.extend_from_slice(&[0xff, 0xff]);
    after.extend(tuple(Some(5000), "late"));
    cases.push(("data after the trailer", after));
    let mut oids = b"PGCOPY\n\xff\r\n\0".to_vec();
    oids.extend_from_slice(&(1u32 << 16).to_be_bytes());
    oids.extend_from_slice(&0u32.to_be_bytes());
    cases.push(("OIDs", oids));
    for (what, data) in &cases {
        for chunk in [5, 4096] {
            let e = copy_raw(&c, sql, data, chunk).await.unwrap_err();
            assert_eq!(code(&e), "22P04", "{what}: {e:?}");
            let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1, "usable after {what}");
        }
    }
    let per = env.per_shard_i64("SELECT count(*) FROM bm_t").await;
    assert_eq!(per, vec![0, 0, 0], "nothing of a refused COPY stays");

    // A stream ending between tuples without the trailer is accepted, as by Postgres.
    assert_eq!(copy_raw(&c, sql, &good, 1000).await.unwrap(), 2000);
    c.batch_execute("DELETE FROM bm_t").await.unwrap();

    // A NULL key: the error text COPY gives.
    let mut null = header();
    null.extend(tuple(Some(1), "a"));
    null.extend(tuple(None, "b"));
    null.extend_from_slice(&[0xff, 0xff]);
    let bin = copy_raw(&c, sql, &null, 64).await.unwrap_err();
    let txt = copy_raw(&c, "COPY bm_t (id, name) FROM STDIN", b"1\ta\n\\N\tb\n", 64)
        .await
        .unwrap_err();
    assert_eq!(code(&bin), code(&txt));
    let msg = |e: &tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_string());
    assert_eq!(msg(&bin), msg(&txt), "{bin:?}");
    assert_eq!(code(&bin), "23514");

    // The map says text, the column is bigint: its binary form is not text.
    let e = copy_raw(
        &c,
        "COPY bm_wrong (id, name) FROM STDIN (FORMAT binary)",
        &good,
        4096,
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e:?}");
    // tokio-postgres gives up a connection whose COPY was refused before CopyInResponse (it
    // sends CopyFail and Sync anyway, and takes the second ReadyForQuery for a protocol
    // error), with Postgres itself too: go on with a new one.
    let c = proxy.client().await;
    // A binary key of the wrong width.
    let mut narrow = header();
    narrow.extend_from_slice(&2i16.to_be_bytes());
    narrow.extend_from_slice(&3i32.to_be_bytes());
    narrow.extend_from_slice(&[0, 0, 1]);
    narrow.extend_from_slice(&(-1i32).to_be_bytes());
    let e = copy_raw(&c, sql, &narrow, 4096).await.unwrap_err();
    assert_eq!(code(&e), "22P03", "{e:?}");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM bm_t").await,
        vec![0, 0, 0]
    );
}

/// Inside a transaction block the COPY joins it: ROLLBACK leaves nothing, COMMIT keeps every
/// row; outside one it commits on its own. A reference table gets every row on every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_joins_the_transaction() {
    let env = TestEnv::new(3).await;
    let tables = "bt_t: { key: id, type: bigint, strategy: hash }\n\
                  bt_ref: { strategy: reference }\n";
    let proxy = Proxy::start(&env, tables, "").await;
    let mut c = proxy.client().await;
    c.batch_execute("CREATE TABLE bt_t (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE bt_ref (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let mut data = header();
    for id in 1..=600 {
        data.extend(tuple(Some(id), &format!("n{id}")));
    }
    data.extend_from_slice(&[0xff, 0xff]);
    let sql = "COPY bt_t (id, name) FROM STDIN (FORMAT binary)";
    for commit in [false, true] {
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO bt_t VALUES (-1, 'before')", &[])
            .await
            .unwrap();
        let sink = tx.copy_in::<_, Bytes>(sql).await.unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from(data.clone())).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 600);
        let n: i64 = tx
            .query_one("SELECT count(*) FROM bt_t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 601, "the transaction sees its rows");
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let per = env.per_shard_i64("SELECT count(*) FROM bt_t").await;
        let want = if commit { 601 } else { 0 };
        assert_eq!(per.iter().sum::<i64>(), want, "commit {commit}: {per:?}");
        if commit {
            assert!(per.iter().all(|&n| n > 0), "{per:?}");
        }
    }
    // An error in the block after the COPY aborts it: nothing of the COPY stays.
    let tx = c.transaction().await.unwrap();
    let mut more = header();
    for id in 1001..=1100 {
        more.extend(tuple(Some(id), "x"));
    }
    let n = {
        let sink = tx.copy_in::<_, Bytes>(sql).await.unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from(more)).await.unwrap();
        sink.finish().await.unwrap()
    };
    assert_eq!(n, 100);
    assert!(tx
        .execute("INSERT INTO bt_t VALUES (1, 'dup')", &[])
        .await
        .is_err());
    let _ = tx.commit().await; // answered ROLLBACK
    let per = env
        .per_shard_i64("SELECT count(*) FROM bt_t WHERE id > 1000")
        .await;
    assert_eq!(per, vec![0, 0, 0]);

    // Reference table: every shard gets every row, the tag counts them once.
    let n = copy_raw(
        &c,
        "COPY bt_ref (id, name) FROM STDIN (FORMAT binary)",
        &data,
        777,
    )
    .await
    .unwrap();
    assert_eq!(n, 600);
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM bt_ref").await,
        vec![600, 600, 600]
    );
}

/// The 16 bytes of a uuid's text form.
fn uuid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).unwrap();
        out[i] = u8::from_str_radix(s, 16).unwrap();
    }
    out
}

/// asyncpg's `copy_records_to_table` (binary COPY, simple protocol; tests/py/copy_binary.py):
/// 100,000 rows, a uuid key, a generated key, a rolled-back block, an atomic failure; every
/// row on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_copy_records_to_table() {
    let env = TestEnv::new(3).await;
    let tables = "cb_py: { key: id, type: bigint, strategy: hash }\n\
                  cb_py_uuid: { key: id, type: uuid, strategy: hash }\n\
                  cb_py_gen: { key: id, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let mut cmd = common::python("copy_binary.py");
    cmd.arg("127.0.0.1")
        .arg(proxy.port().to_string())
        .arg(env.reference_url());
    let out = common::run_program(cmd, "copy_binary checks passed").await;
    eprint!("{out}");
    for table in ["cb_py", "cb_py_gen"] {
        let placed = env.placed(table, "id").await;
        assert_eq!(
            placed.len(),
            if table == "cb_py" {
                ROWS as usize
            } else {
                3000
            }
        );
        for (s, id) in &placed {
            assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "{table} row {id}");
        }
        assert!((0..3).all(|s| placed.iter().any(|p| p.0 == s)), "{table}");
    }
    let mut total = 0;
    for s in 0..3 {
        let sc = env.shard_client(s).await;
        for id in text_rows(&sc, "SELECT id FROM cb_py_uuid").await {
            assert_eq!(map.hash_shard(&KeyValue::Uuid(uuid_bytes(&id))), s, "{id}");
            total += 1;
        }
    }
    assert_eq!(total, 5000);
}

/// pgx v4's `CopyFrom` (binary COPY after a Prepare that describes the columns; Go program
/// tests/go/copy_binary.go): 100,000 rows timed against one Postgres, a text key, a
/// rolled-back transaction; every row on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgx_copy_from() {
    let env = TestEnv::new(3).await;
    let tables = "cb_go: { key: id, type: bigint, strategy: hash }\n\
                  cb_go_tag: { key: tag, type: text, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let mut cmd = common::go_run("copy_binary.go");
    cmd.arg(format!(
        "postgres://app:app-secret@127.0.0.1:{}/app",
        proxy.port()
    ))
    .arg(env.reference_url());
    let out = common::run_program(cmd, "copy_binary checks passed").await;
    eprint!("{out}");
    let placed = env.placed("cb_go", "id").await;
    assert_eq!(placed.len(), ROWS as usize);
    for (s, id) in &placed {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "row {id}");
    }
    let mut total = 0;
    for s in 0..3 {
        let sc = env.shard_client(s).await;
        for tag in text_rows(&sc, "SELECT tag FROM cb_go_tag").await {
            assert_eq!(map.hash_shard(&KeyValue::Text(tag.clone())), s, "{tag}");
            total += 1;
        }
    }
    assert_eq!(total, 4000);
}

/// A generated column the COPY's column list leaves out (issue 20): the proxy appends a value
/// to every tuple in the column's binary width (`serial`: int4 beside a bigint key;
/// `bigserial` as the key itself), unique across shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_are_appended_in_binary() {
    let env = TestEnv::new(3).await;
    let tables = "bg_app: { key: user_id, type: bigint, strategy: hash }\n\
                  bg_acc: { key: id, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    c.batch_execute(
        "CREATE TABLE bg_app (id serial, user_id bigint NOT NULL, v text, PRIMARY KEY (user_id, id))",
    )
    .await
    .unwrap();
    c.batch_execute("CREATE TABLE bg_acc (id bigserial PRIMARY KEY, name text)")
        .await
        .unwrap();
    let sink = c
        .copy_in("COPY bg_app (user_id, v) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT]);
    pin_mut!(w);
    for i in 0..2500i64 {
        w.as_mut()
            .write(&[&(i % 7), &format!("v{i}")])
            .await
            .unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), 2500);
    let sink = c
        .copy_in("COPY bg_acc (name) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let w = BinaryCopyInWriter::new(sink, &[Type::TEXT]);
    pin_mut!(w);
    for i in 0..2500i64 {
        w.as_mut().write(&[&format!("a{i}")]).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), 2500);
    let ids: Vec<i64> = env
        .placed("bg_app", "id")
        .await
        .iter()
        .map(|p| p.1)
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (2500, 2500), "serial ids unique");
    for (s, user) in env.placed("bg_app", "user_id").await {
        assert_eq!(map.hash_shard(&KeyValue::Int(user)), s, "user {user}");
    }
    let acc = env.placed("bg_acc", "id").await;
    assert_eq!(acc.len(), 2500);
    for (s, id) in &acc {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "account {id}");
    }
    assert!((0..3).all(|s| acc.iter().any(|p| p.0 == s)));
    // Inserted through the proxy afterwards: no value is reissued.
    let r = c
        .query_one(
            "INSERT INTO bg_acc (name) VALUES ('after') RETURNING id",
            &[],
        )
        .await
        .unwrap();
    let after: i64 = r.get(0);
    assert!(acc.iter().all(|p| p.1 != after), "{after} reissued");
}

/// A binary text key from a LATIN1 client is read in LATIN1, as Postgres's textrecv reads it:
/// `café` lands where a UTF-8 client's `café` does; a domain over text is read as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_text_keys_are_read_in_the_client_encoding() {
    let env = TestEnv::new(3).await;
    let tables = "bl_t: { key: tag, type: text, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    c.batch_execute("CREATE DOMAIN short_tag AS varchar(20)")
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE bl_t (tag short_tag PRIMARY KEY, n int)")
        .await
        .unwrap();
    let words = ["café", "naïve", "Ærø", "plain"];
    let mut data = header();
    for (i, w) in words.iter().enumerate() {
        // LATIN1: one byte per character.
        let latin1: Vec<u8> = w.chars().map(|ch| ch as u32 as u8).collect();
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&(latin1.len() as i32).to_be_bytes());
        data.extend_from_slice(&latin1);
        data.extend_from_slice(&4i32.to_be_bytes());
        data.extend_from_slice(&(i as i32).to_be_bytes());
    }
    data.extend_from_slice(&[0xff, 0xff]);
    c.simple_query("SET client_encoding TO 'LATIN1'")
        .await
        .unwrap();
    let n = copy_raw(
        &c,
        "COPY bl_t (tag, n) FROM STDIN (FORMAT binary)",
        &data,
        7,
    )
    .await
    .unwrap();
    assert_eq!(n, 4);
    c.simple_query("RESET client_encoding").await.unwrap();
    for s in 0..3 {
        let sc = env.shard_client(s).await;
        for tag in text_rows(&sc, "SELECT tag FROM bl_t").await {
            assert!(words.contains(&tag.as_str()), "{tag:?} stored");
            assert_eq!(map.hash_shard(&KeyValue::Text(tag.clone())), s, "{tag}");
        }
    }
    assert_eq!(
        env.per_shard_i64("SELECT count(*) FROM bl_t")
            .await
            .iter()
            .sum::<i64>(),
        4
    );
}
