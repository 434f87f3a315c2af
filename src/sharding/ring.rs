//! The consistent-hash ring: a fixed key hash and explicit `u64` tokens.
//!
//! # Placement contract
//!
//! Where a row lives is part of the on-disk state of a sharded database, so the
//! scheme below is a compatibility contract: it never depends on the Rust
//! version, the platform, or the internals of any crate, and golden-value tests
//! pin it. Changing any step is a data migration, not a refactoring.
//!
//! 1. **Key hash.** A key is first turned into its canonical bytes
//!    ([`crate::sharding::keys::KeyValue::canonical_bytes`]: integers of every width as the
//!    8-byte big-endian two's complement of the `i64`, text as its UTF-8 bytes,
//!    uuid as its 16 raw bytes). The key hash is XXH3-64 with seed 0 of those
//!    bytes ([`hash_bytes`]).
//! 2. **Tokens.** With `hash.vnodes = V`, the shard named `N` with weight `w`
//!    owns the `V × w` tokens `XXH3-64(UTF-8 bytes of "N#j")` for
//!    `j = 0, 1, …, V×w − 1`, where `j` is written in decimal without padding
//!    (`"s0#0"`, `"s0#1"`, …). Tokens derive from the shard *name*, never from
//!    its position in the map, so adding or removing a shard leaves every other
//!    shard's tokens where they were.
//! 3. **Owner.** A key with hash `h` belongs to the shard owning the smallest
//!    token `>= h`; if there is none, to the owner of the smallest token
//!    (the ring wraps around).
//! 4. **Ties.** When two shards produce the same token, the shard whose name
//!    sorts first (byte-wise) owns it.
//!
//! `std::hash::Hash` is deliberately not used anywhere here: its output is not
//! promised stable across compiler versions.

use std::fmt;
use std::fmt::Write as _;

/// The fixed, documented key hash: XXH3-64 with seed 0.
///
/// Used both for key hashes and for ring tokens; see the module documentation.
#[inline]
pub fn hash_bytes(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

/// A consistent-hash ring mapping 64-bit key hashes to shard indexes.
///
/// Tokens and their owners are kept in two parallel vectors sorted by token,
/// so a lookup is one binary search over a dense `u64` array.
#[derive(Clone, PartialEq, Eq)]
pub struct HashRing {
    /// Sorted tokens (duplicates allowed; the first of equal tokens wins).
    tokens: Vec<u64>,
    /// `owners[i]` is the shard index owning `tokens[i]`.
    owners: Vec<u32>,
    /// Number of shards the ring was built for.
    shard_count: usize,
}

impl HashRing {
    /// Builds the ring.
    ///
    /// `shards` holds `(name, weight)` in map order; the index into this slice is
    /// the shard index that [`HashRing::locate`] returns. Shard `i` owns
    /// `vnodes × weight` tokens, derived from its name as described in the
    /// module documentation; equal tokens are ordered by shard name.
    pub fn new(shards: &[(&str, u32)], vnodes: u32) -> HashRing {
        let total: usize = shards
            .iter()
            .map(|&(_, w)| (u64::from(vnodes) * u64::from(w)) as usize)
            .sum();
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(total);
        let mut label = String::new();
        for (index, &(name, weight)) in shards.iter().enumerate() {
            let count = u64::from(vnodes) * u64::from(weight);
            for j in 0..count {
                label.clear();
                // Writing to a String cannot fail.
                let _ = write!(label, "{name}#{j}");
                points.push((hash_bytes(label.as_bytes()), index as u32));
            }
        }
        sort_points(&mut points, shards);
        let (tokens, owners) = points.into_iter().unzip();
        HashRing {
            tokens,
            owners,
            shard_count: shards.len(),
        }
    }

    /// The shard index owning a key hash: the owner of the first token `>= hash`,
    /// wrapping around to the first token. Returns 0 for an empty ring.
    #[inline]
    pub fn locate(&self, hash: u64) -> u32 {
        let i = self.tokens.partition_point(|&t| t < hash);
        let i = if i == self.tokens.len() { 0 } else { i };
        self.owners.get(i).copied().unwrap_or(0)
    }

    /// The ring's tokens, ascending (every point where ownership may change).
    pub fn tokens(&self) -> &[u64] {
        &self.tokens
    }

    /// Total number of tokens on the ring.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The fraction of the 64-bit hash space each shard owns (index = shard
    /// index). Sums to 1 for a non-empty ring.
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0u128; self.shard_count];
        let n = self.tokens.len();
        if n == 0 {
            return vec![0.0; self.shard_count];
        }
        const SPACE: u128 = 1u128 << 64;
        for i in 0..n {
            // Token i owns the hashes in (previous token, token i].
            let cur = u128::from(self.tokens[i]);
            let arc = if i == 0 {
                // Wrap-around arc: (last token, 2^64) plus [0, first token].
                let last = u128::from(self.tokens[n - 1]);
                SPACE - last + cur
            } else {
                cur - u128::from(self.tokens[i - 1])
            };
            if let Some(slot) = owned.get_mut(self.owners[i] as usize) {
                *slot += arc;
            }
        }
        owned.into_iter().map(|o| o as f64 / SPACE as f64).collect()
    }
}

/// Orders ring points by token; equal tokens by shard name (byte-wise), then
/// by shard index, so placement never depends on input order.
fn sort_points(points: &mut [(u64, u32)], shards: &[(&str, u32)]) {
    let name = |i: u32| shards.get(i as usize).map_or("", |s| s.0);
    points.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| name(a.1).cmp(name(b.1)))
            .then_with(|| a.1.cmp(&b.1))
    });
}

impl fmt::Debug for HashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRing")
            .field("shards", &self.shard_count)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::keys::KeyValue;

    const N: i64 = 100_000;

    fn ring(shards: &[(&str, u32)]) -> HashRing {
        HashRing::new(shards, 256)
    }

    fn int_shard(ring: &HashRing, k: i64) -> u32 {
        ring.locate(KeyValue::Int(k).hash64())
    }

    fn counts(ring: &HashRing, shards: usize) -> Vec<usize> {
        let mut c = vec![0usize; shards];
        for k in 0..N {
            c[int_shard(ring, k) as usize] += 1;
        }
        c
    }

    #[test]
    fn hash_bytes_golden() {
        // XXH3-64, seed 0. The empty-input value is the reference constant from
        // the xxHash test suite; the others pin the key hash forever.
        assert_eq!(hash_bytes(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_bytes(b"s0#0"), 0x3ca1_8f17_0a22_0936);
        let mut buf = Vec::new();
        KeyValue::Int(42).canonical_bytes(&mut buf);
        assert_eq!(buf, [0, 0, 0, 0, 0, 0, 0, 42]);
        assert_eq!(hash_bytes(&buf), 0x2e4f_e982_b689_10ac);
        assert_eq!(KeyValue::Int(42).hash64(), 0x2e4f_e982_b689_10ac);
        assert_eq!(hash_bytes(b"acme"), 0x44ad_9865_5d88_58e1);
        assert_eq!(
            KeyValue::Text("acme".into()).hash64(),
            0x44ad_9865_5d88_58e1
        );
        assert_eq!(KeyValue::Uuid([0u8; 16]).hash64(), 0xd0a6_6a65_c752_8968);
    }

    #[test]
    fn placement_golden() {
        let r = ring(&[("s0", 1), ("s1", 1), ("s2", 1)]);
        let got: Vec<u32> = (1..=20).map(|k| int_shard(&r, k)).collect();
        assert_eq!(
            got,
            [1, 2, 0, 1, 2, 1, 0, 1, 0, 2, 2, 1, 1, 1, 0, 2, 1, 2, 2, 0]
        );
        let got: Vec<u32> = ["acme", "globex", "initech", "umbrella", "hooli"]
            .iter()
            .map(|s| r.locate(KeyValue::Text((*s).into()).hash64()))
            .collect();
        assert_eq!(got, [1, 1, 2, 1, 0]);
        // Placement depends on names, not on the order shards are listed in.
        let names = ["s0", "s1", "s2"];
        let rev = ring(&[("s2", 1), ("s1", 1), ("s0", 1)]);
        for k in 0..2000 {
            let a = names[int_shard(&r, k) as usize];
            let b = names[2 - int_shard(&rev, k) as usize];
            assert_eq!(a, b, "key {k}");
        }
    }

    #[test]
    fn locate_edges_and_ties() {
        let r = ring(&[("s0", 1), ("s1", 1)]);
        assert_eq!(r.token_count(), 512);
        assert!(r.tokens.windows(2).all(|w| w[0] <= w[1]));
        // A hash equal to a token belongs to that token; one above, to the next.
        assert_eq!(r.locate(r.tokens[5]), r.owners[5]);
        assert_eq!(r.locate(r.tokens[5] + 1), r.owners[6]);
        // Below the first token, and above the last one (wrap-around): the
        // first token's owner.
        assert_eq!(r.locate(0), r.owners[0]);
        let last = r.tokens[r.tokens.len() - 1];
        assert!(last < u64::MAX);
        assert_eq!(r.locate(last + 1), r.owners[0]);
        assert_eq!(r.locate(u64::MAX), r.owners[0]);
        // Equal tokens: the shard whose name sorts first owns the token,
        // whatever the map order.
        let shards = [("zeta", 1), ("alpha", 1), ("mid", 1)];
        let mut points = vec![(9, 0), (5, 2), (5, 0), (5, 1), (1, 2)];
        sort_points(&mut points, &shards);
        assert_eq!(points, [(1, 2), (5, 1), (5, 2), (5, 0), (9, 0)]);
        // An empty ring answers 0 rather than panicking.
        assert_eq!(HashRing::new(&[], 256).locate(7), 0);
        assert_eq!(HashRing::new(&[("s0", 1)], 0).locate(7), 0);
    }

    #[test]
    fn adding_a_shard_moves_about_a_quarter_all_to_it() {
        let old = ring(&[("s0", 1), ("s1", 1), ("s2", 1)]);
        let new = ring(&[("s0", 1), ("s1", 1), ("s2", 1), ("s3", 1)]);
        let mut moved = 0;
        for k in 0..N {
            let (a, b) = (int_shard(&old, k), int_shard(&new, k));
            if a != b {
                assert_eq!(
                    b, 3,
                    "key {k} moved from s{a} to s{b}, not to the new shard"
                );
                moved += 1;
            }
        }
        let pct = moved as f64 * 100.0 / N as f64;
        println!("adding s3 to s0..s2: {moved} of {N} keys moved ({pct:.2}%)");
        assert!((20.0..=30.0).contains(&pct), "{pct}% moved");
    }

    #[test]
    fn removing_a_shard_moves_only_its_keys() {
        let old = ring(&[("s0", 1), ("s1", 1), ("s2", 1), ("s3", 1)]);
        let new = ring(&[("s0", 1), ("s1", 1), ("s3", 1)]);
        let names_old = ["s0", "s1", "s2", "s3"];
        let names_new = ["s0", "s1", "s3"];
        let mut moved = 0;
        for k in 0..N {
            let a = names_old[int_shard(&old, k) as usize];
            let b = names_new[int_shard(&new, k) as usize];
            if a != b {
                assert_eq!(
                    a, "s2",
                    "key {k} moved from {a} to {b} but only s2 was removed"
                );
                moved += 1;
            }
        }
        let pct = moved as f64 * 100.0 / N as f64;
        println!("removing s2 from s0..s3: {moved} of {N} keys moved ({pct:.2}%)");
        assert!((18.0..=32.0).contains(&pct), "{pct}% moved");
    }

    #[test]
    fn balance_three_shards() {
        let r = ring(&[("s0", 1), ("s1", 1), ("s2", 1)]);
        let c = counts(&r, 3);
        let even = N as f64 / 3.0;
        let ratios: Vec<f64> = c.iter().map(|&n| n as f64 / even).collect();
        let min = ratios.iter().cloned().fold(f64::MAX, f64::min);
        let max = ratios.iter().cloned().fold(f64::MIN, f64::max);
        println!("3 shards x 256 vnodes, {N} keys: counts {c:?}, min/even {min:.3}, max/even {max:.3}, max/min {:.3}", max / min);
        println!("ring shares {:?}", r.shares());
        assert!(min >= 0.5 && max <= 1.5, "{ratios:?}");
        let total: f64 = r.shares().iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn weight_two_roughly_doubles_a_share() {
        let r = ring(&[("s0", 1), ("s1", 1), ("s2", 2)]);
        let c = counts(&r, 3);
        let ratio = c[2] as f64 / ((c[0] + c[1]) as f64 / 2.0);
        println!("weights 1,1,2: counts {c:?}, s2 / mean(s0,s1) = {ratio:.3}");
        assert!((1.6..=2.4).contains(&ratio), "{c:?}");
        assert_eq!(r.token_count(), 256 * 4);
    }
}
