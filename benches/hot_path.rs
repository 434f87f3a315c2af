//! Micro-benchmarks of the hot path: frame splitting, parse + route (uncached and cached),
//! the lexer scan behind literal templates, key normalization + ring lookup, and the gather
//! k-way merge of sorted shard streams.
//!
//! Run: `cargo bench --bench hot_path`.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardwire::routing::router::{plan, PlanCache};
use shardwire::sharding::keys::{key_from_text, KeyType};
use shardwire::sharding::shardmap::ShardMap;
use shardwire::wire::protocol::{build, FrameReader};

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

    // Simple-protocol texts that differ only in the key constant share a literal template.
    let texts: Vec<String> = (0..1000)
        .map(|i| format!("SELECT id, name FROM users WHERE id = {i}"))
        .collect();
    let tcache = PlanCache::new(1000);
    let _ = tcache.get_simple(&map, &texts[0]);
    let mut i = 0usize;
    c.bench_function("parse_route_literal_template_hit", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            tcache
                .get_simple(&map, black_box(&texts[i]))
                .map(|(p, _)| p.stmts.len())
        })
    });

    // The Postgres parser alone: most of an uncached parse + route.
    c.bench_function("pg_query_parse_point_query", |b| {
        b.iter(|| pg_query::parse(black_box(sql), 0).map(|r| r.protobuf.stmts.len()))
    });

    c.bench_function("pg_query_scan_point_query", |b| {
        b.iter(|| pg_query::scan(black_box(sql)).map(|r| r.tokens.len()))
    });

    // What a literal-template lookup scans with for such text (our lexer; Postgres's
    // scanner above only for unusual forms).
    c.bench_function("literals_scan_point_query", |b| {
        b.iter(|| shardwire::routing::literals::scan(black_box(sql)).map(|s| s.lits.len()))
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

/// Value ranges of one row.
type Values = Vec<Option<(usize, usize)>>;

/// k-way merge of 3 sorted streams of 1,000 rows on an int8 key (binary), as the gather
/// merge does it: decode value ranges, compare heads, pick the smallest.
fn merge_benches(c: &mut Criterion) {
    use shardwire::gather::datum::{compare_rows, row_values};
    use shardwire::gather::{KeyCol, SortKey};
    let rows: Vec<Vec<bytes::Bytes>> = (0..3i64)
        .map(|shard| {
            (0..1000i64)
                .map(|i| {
                    let key = (i * 3 + shard).to_be_bytes();
                    let mut b = BytesMut::new();
                    b.extend_from_slice(&2i16.to_be_bytes());
                    b.extend_from_slice(&9i32.to_be_bytes());
                    b.extend_from_slice(b"some name");
                    b.extend_from_slice(&8i32.to_be_bytes());
                    b.extend_from_slice(&key);
                    b.freeze()
                })
                .collect()
        })
        .collect();
    let keys = [SortKey {
        col: KeyCol::Hidden(0),
        desc: false,
        nulls_first: false,
        collate: None,
    }];
    let types = [20u32];
    c.bench_function("gather_merge_3x1000_rows", |b| {
        b.iter(|| {
            let mut pos = [0usize; 3];
            let mut heads: [Option<Values>; 3] = [None, None, None];
            let mut out = 0usize;
            loop {
                let mut best: Option<usize> = None;
                for s in 0..3 {
                    if pos[s] >= rows[s].len() {
                        continue;
                    }
                    if heads[s].is_none() {
                        let mut v = Vec::new();
                        row_values(&rows[s][pos[s]], &mut v).expect("valid row");
                        heads[s] = Some(v);
                    }
                    best = match best {
                        None => Some(s),
                        Some(b) => {
                            let (va, vb) = (heads[s].as_ref().unwrap(), heads[b].as_ref().unwrap());
                            if compare_rows(
                                &keys,
                                1,
                                &types,
                                &rows[s][pos[s]],
                                va,
                                &rows[b][pos[b]],
                                vb,
                            )
                            .is_lt()
                            {
                                Some(s)
                            } else {
                                Some(b)
                            }
                        }
                    };
                }
                let Some(b) = best else { break };
                out += rows[b][pos[b]].len();
                pos[b] += 1;
                heads[b] = None;
            }
            black_box(out)
        })
    });
}

criterion_group!(hot, benches, merge_benches);
criterion_main!(hot);
