//! Micro-benchmarks of the single-shard hot path: frame splitting, parse + route
//! (uncached and cached), and key normalization + ring lookup.
//!
//! Run: `cargo bench --bench hot_path`.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardwire::keys::{key_from_text, KeyType};
use shardwire::protocol::{build, FrameReader};
use shardwire::router::{plan, PlanCache};
use shardwire::shardmap::ShardMap;

const MAP: &str = r#"
users: [{ name: app, password: x }]
shards:
  - { name: s0, url: "postgres://postgres@127.0.0.1:5433/app" }
  - { name: s1, url: "postgres://postgres@127.0.0.1:5434/app" }
  - { name: s2, url: "postgres://postgres@127.0.0.1:5435/app" }
tables:
  users: { key: id, type: bigint, strategy: hash }
"#;

fn benches(c: &mut Criterion) {
    let map = ShardMap::from_yaml_str(MAP, "bench.yaml").expect("bench map is valid");
    let sql = "SELECT id, name FROM users WHERE id = 4242";

    c.bench_function("parse_route_uncached", |b| {
        b.iter(|| plan(&map, black_box(sql)))
    });

    let cache = PlanCache::new(1000);
    let _ = cache.get(&map, sql);
    c.bench_function("parse_route_cached", |b| {
        b.iter(|| cache.get(&map, black_box(sql)))
    });

    c.bench_function("pg_query_scan_point_query", |b| {
        b.iter(|| pg_query::scan(black_box(sql)).map(|r| r.tokens.len()))
    });

    c.bench_function("key_normalize_ring_lookup", |b| {
        b.iter(|| {
            let k = key_from_text(KeyType::BigInt, black_box("4242")).expect("valid key");
            map.hash_shard(&k)
        })
    });

    let mut stream = BytesMut::new();
    for _ in 0..100 {
        build::data_row(&mut stream, &[Some("4242"), Some("some name")]);
    }
    build::ready_for_query(&mut stream, b'I');
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    c.bench_function("frame_split_101_messages", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut r = FrameReader::new(&stream[..], 1 << 20);
                let mut n = 0;
                while let Ok(Some(f)) = r.next().await {
                    n += f.raw.len();
                }
                n
            })
        })
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
