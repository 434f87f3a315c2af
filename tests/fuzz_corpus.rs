//! CI smoke for the fuzz targets (issue 17), without AFL: every file of the seed corpus
//! (`fuzz/corpus/<target>/`) and every crash reproducer (`fuzz/regressions/<target>/`) runs
//! through the same target functions the AFL binaries run (`tests/fuzz_targets/mod.rs`),
//! then some thousands of inputs mutated from the corpus with a fixed seed (about 3 s in a
//! debug build). A panic fails the test, which names every input that panicked. The long
//! runs are `scripts/fuzz.sh`.

mod fuzz_targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutated inputs per target (the router's are slower: each is parsed by Postgres's parser).
const MUTATIONS: [(&str, usize); 3] = [("frames", 20_000), ("startup", 10_000), ("router", 6_000)];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes AFL-style havoc likes: boundaries of lengths and SQL/protocol punctuation.
const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\0\0\0\0",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\0\0\0\x04",
    b"\0\0\0\x05",
    b"\xff\xff",
    b"\0\x01",
    b"'",
    b"''",
    b"$1",
    b"$$",
    b"--",
    b"/*",
    b"(",
    b")",
    b",",
    b";",
    b"\\",
    b"\\.\n",
    b"\r\n",
    b"\"",
    b"-",
    b"1e",
    b".5",
    b"E'",
    b"U&'",
    b" OR ",
    b" IN (",
    b"=",
    b"@NONCE@",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], max: usize) -> Vec<u8> {
    let mut v = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, ins.iter().copied());
            }
            4 => {
                // Splice in a piece of another corpus file.
                let o = &corpus[rng.below(corpus.len())];
                if !o.is_empty() {
                    let s = rng.below(o.len());
                    let e = (s + 1 + rng.below(64)).min(o.len());
                    v.splice(at..at, o[s..e].iter().copied());
                }
            }
            5 if v.len() > 1 => {
                let e = (at + 1 + rng.below(32)).min(v.len());
                let piece: Vec<u8> = v[at.min(v.len() - 1)..e].to_vec();
                v.splice(at..at, piece);
            }
            _ => v.truncate(at),
        }
    }
    v.truncate(max);
    v
}

fn run(name: &str, f: fn(&[u8])) {
    let start = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut corpus = Vec::new();
    let mut failed = Vec::new();
    for dir in [
        root.join("corpus").join(name),
        root.join("regressions").join(name),
    ] {
        for p in files(&dir) {
            let data = std::fs::read(&p).unwrap();
            if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
                failed.push(p.display().to_string());
            }
            corpus.push(data);
        }
    }
    assert!(
        !corpus.is_empty(),
        "no corpus for fuzz target {name} under {}",
        root.display()
    );
    let n = MUTATIONS.iter().find(|m| m.0 == name).unwrap().1;
    let mut rng = Rng(0x5EED_0017 ^ name.len() as u64);
    for i in 0..n {
        let input = mutate(&mut rng, &corpus, 4096);
        if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() && failed.len() < 20 {
            failed.push(format!(
                "mutated input #{i}: {:?}",
                String::from_utf8_lossy(&input)
            ));
        }
    }
    eprintln!(
        "fuzz target {name}: {} corpus and regression files + {n} mutated inputs in {:.2?}",
        corpus.len(),
        start.elapsed()
    );
    assert!(
        failed.is_empty(),
        "fuzz target {name} panicked (messages above) on:\n  {}",
        failed.join("\n  ")
    );
}

#[test]
fn fuzz_corpus_frames() {
    run("frames", fuzz_targets::frames);
}

#[test]
fn fuzz_corpus_startup() {
    run("startup", fuzz_targets::startup);
}

#[test]
fn fuzz_corpus_router() {
    run("router", fuzz_targets::router);
}
