//! Keeps the single-shard path honest without timing anything: the proxy runs on threads of
//! its own whose heap allocations are counted. A prepared query (Bind/Execute/Sync) must cost
//! the proxy no allocation once its buffers are warm, and one returning 200 rows no more than
//! one returning 1 row — rows (`DataRow`) are forwarded as raw frames, never decoded or copied
//! one by one. The unnamed statement re-sent before every execution (pgbench -M extended,
//! node-postgres) costs no allocation either.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::TestEnv;

/// Counts allocations made on threads marked as proxy threads.
struct Counting;

static PROXY_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ON_PROXY_THREAD: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON_PROXY_THREAD.try_with(|c| c.get()).unwrap_or(false) {
            PROXY_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON_PROXY_THREAD.try_with(|c| c.get()).unwrap_or(false) {
            PROXY_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Proxy allocations per query for `n` prepared executions of `sql` with parameter `rows`.
async fn allocs_per_query(client: &tokio_postgres::Client, rows: i32, n: u64) -> f64 {
    let st = client
        .prepare("SELECT g, 'row ' || g FROM generate_series(1, $1::int) g")
        .await
        .unwrap();
    // Warm up: plan cache, backend statement, pooled connections.
    for _ in 0..50 {
        client.query(&st, &[&rows]).await.unwrap();
    }
    let before = PROXY_ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        let got = client.query(&st, &[&rows]).await.unwrap();
        assert_eq!(got.len(), rows as usize);
    }
    let after = PROXY_ALLOCS.load(Ordering::Relaxed);
    (after - before) as f64 / n as f64
}

/// Proxy allocations per query for `n` executions of a key-routed point lookup sent as the
/// unnamed statement every time — Parse, Bind, Describe, Execute, Sync in one pipeline, as
/// pgbench -M extended, node-postgres and JDBC's first executions send it.
async fn allocs_per_unnamed_lookup(client: &tokio_postgres::Client, n: u64) -> f64 {
    let sql = "SELECT name FROM users WHERE id = $1";
    let ty = tokio_postgres::types::Type::INT8;
    for id in 0..50i64 {
        client
            .query_typed(sql, &[(&(id % 20 + 1), ty.clone())])
            .await
            .unwrap();
    }
    let before = PROXY_ALLOCS.load(Ordering::Relaxed);
    for id in 0..n as i64 {
        let got = client
            .query_typed(sql, &[(&(id % 20 + 1), ty.clone())])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    }
    let after = PROXY_ALLOCS.load(Ordering::Relaxed);
    (after - before) as f64 / n as f64
}

/// Proxy allocations per query for `n` simple-protocol point lookups whose key constant
/// changes every time (pgbench -S, psql): the text differs, the literal template is cached.
async fn allocs_per_simple_lookup(client: &tokio_postgres::Client, n: u64) -> f64 {
    let sql = |id: u64| format!("SELECT name FROM users WHERE id = {}", id % 20 + 1);
    for id in 0..50 {
        client.simple_query(&sql(id)).await.unwrap();
    }
    let before = PROXY_ALLOCS.load(Ordering::Relaxed);
    for id in 0..n {
        client.simple_query(&sql(id)).await.unwrap();
    }
    let after = PROXY_ALLOCS.load(Ordering::Relaxed);
    (after - before) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_shard_rows_are_forwarded_without_per_row_work() {
    let env = TestEnv::new(2).await;
    let yaml = env.shard_map_yaml("users: { key: id, type: bigint, strategy: hash }\n", "");
    let map = shardwire::sharding::shardmap::ShardMap::from_yaml_str(&yaml, "test").unwrap();
    // The proxy on a runtime of its own, whose threads are counted.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| ON_PROXY_THREAD.with(|c| c.set(true)))
        .build()
        .unwrap();
    let handle = rt
        .spawn(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            shardwire::server::start(map, listener).await
        })
        .await
        .unwrap()
        .unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=app",
        handle.addr.port()
    );
    let client = common::connect(&conninfo).await;
    common::create_users(&client, "", 20).await;

    let one = allocs_per_query(&client, 1, 2000).await;
    let many = allocs_per_query(&client, 200, 2000).await;
    eprintln!("proxy allocations per query: 1 row {one:.2}, 200 rows {many:.2}");
    // Forwarding 199 more rows must not add per-row allocations (a per-row copy or decode
    // would add ~199 per query); buffer growth may add a few.
    assert!(
        many - one < 5.0,
        "200-row queries cost {many:.2} allocations vs {one:.2} for 1 row: rows are not forwarded raw"
    );
    // And a query allocates nothing at all once buffers are warm (reused per session).
    assert!(one < 1.0, "{one:.2} allocations per single-shard query");
    // The unnamed statement sent again and again is kept, not parsed and planned again, and
    // its key is read from the Bind without allocating.
    let unnamed = allocs_per_unnamed_lookup(&client, 2000).await;
    eprintln!("proxy allocations per unnamed key lookup: {unnamed:.2}");
    let simple = allocs_per_simple_lookup(&client, 2000).await;
    eprintln!("proxy allocations per simple-protocol key lookup: {simple:.2}");
    // A new text (another constant) is scanned (literals::fast: the template key, the
    // constants and their locations, 3 allocations) before the cached template routes it;
    // the count does not grow with anything the client controls. (Postgres's own scanner,
    // for unusual text, makes 7.)
    assert!(
        simple <= 3.5,
        "{simple:.2} allocations per simple-protocol lookup (3 expected: the literal scan)"
    );
    assert!(
        unnamed < 1.0,
        "{unnamed:.2} allocations per re-sent unnamed key lookup"
    );
    drop(client);
    drop(handle);
    rt.shutdown_background();
}
