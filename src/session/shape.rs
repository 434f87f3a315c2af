//! The result shape a client was told a prepared statement has.
//!
//! Drivers that prepare with a statement Describe and then only Bind/Execute (asyncpg,
//! postgres.js, tokio-postgres, sqlx, pgjdbc's server-prepared statements) decode every later
//! row by the RowDescription they got then. The proxy prepares a client's statement again on
//! any pooled connection that lacks it — a connection that never had it, or one whose
//! statements were dropped after DDL — and the shard then describes the statement as the
//! schema is *now*. Postgres refuses to run a prepared statement whose result changed
//! (`0A000 cached plan must not change result type`); the proxy does the same rather than
//! hand the client rows it would decode by the old description.

use std::sync::atomic::{AtomicU64, Ordering};

/// OIDs from here on are user objects (`FirstNormalObjectId`): the same type has a different
/// OID on each shard, so only "a user type" is compared.
const FIRST_USER_OID: u32 = 16384;

/// What a fingerprint of an unknown shape is.
const UNKNOWN: u64 = 0;
/// The mark of a statement whose result changed: Postgres refuses it from then on.
const CHANGED_MARK: u64 = u64::MAX;

/// Fingerprint of a RowDescription (`T`) or NoData (`n`) body: column count, names, built-in
/// type OIDs and type modifiers — what decides how a client decodes a row. Table OIDs,
/// column numbers and user type OIDs are left out: they differ between shards for the same
/// schema. `None` for any other message or a malformed body.
pub fn fingerprint(tag: u8, body: &[u8]) -> Option<u64> {
    match tag {
        b'n' => Some(1),
        b'T' => {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            let count = body.get(..2)?;
            h.update(count);
            let mut rest = &body[2..];
            for _ in 0..u16::from_be_bytes([count[0], count[1]]) {
                let nul = rest.iter().position(|&b| b == 0)?;
                h.update(&rest[..=nul]);
                // table OID (4), column number (2), type OID (4), size (2), typmod (4), format (2)
                let fixed = rest.get(nul + 1..nul + 19)?;
                let oid = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
                let oid = if oid >= FIRST_USER_OID {
                    FIRST_USER_OID
                } else {
                    oid
                };
                h.update(&oid.to_be_bytes());
                h.update(&fixed[12..16]);
                rest = &rest[nul + 19..];
            }
            Some(h.digest().clamp(2, CHANGED_MARK - 1))
        }
        _ => None,
    }
}

/// The shape a client holds for one statement (`UNKNOWN` until it describes it).
#[derive(Debug, Default)]
pub struct Shape(AtomicU64);

impl Shape {
    /// Records the description the client just got for its statement.
    pub fn note(&self, tag: u8, body: &[u8]) {
        if let Some(fp) = fingerprint(tag, body) {
            self.0.store(fp, Ordering::Relaxed);
        }
    }

    /// The recorded fingerprint, if the client was ever given one.
    pub fn known(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            UNKNOWN => None,
            fp => Some(fp),
        }
    }

    /// Marks the statement as changed under the client: every later execution is refused,
    /// as Postgres refuses it (the client prepares it again).
    pub fn mark_changed(&self) {
        self.0.store(CHANGED_MARK, Ordering::Relaxed);
    }

    /// Whether [`Shape::mark_changed`] was called.
    pub fn changed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == CHANGED_MARK
    }

    /// Forgets the shape: the client parsed the statement again.
    pub fn forget(&self) {
        self.0.store(UNKNOWN, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_desc(cols: &[(&str, u32, u32, i32)]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for (name, table, ty, typmod) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&1u16.to_be_bytes());
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&8i16.to_be_bytes());
            b.extend_from_slice(&typmod.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        }
        b
    }

    #[test]
    fn same_schema_on_other_shards_matches() {
        let a = row_desc(&[("id", 16400, 20, -1), ("mood", 16400, 17001, -1)]);
        let b = row_desc(&[("id", 17555, 20, -1), ("mood", 17555, 18123, -1)]);
        assert_eq!(fingerprint(b'T', &a), fingerprint(b'T', &b));
    }

    #[test]
    fn changed_columns_differ() {
        let a = row_desc(&[("id", 1, 20, -1), ("v", 1, 25, -1)]);
        for other in [
            row_desc(&[("id", 1, 20, -1)]),
            row_desc(&[("id", 1, 20, -1), ("v", 1, 23, -1)]),
            row_desc(&[("id", 1, 20, -1), ("w", 1, 25, -1)]),
            row_desc(&[("id", 1, 20, -1), ("v", 1, 25, 14)]),
        ] {
            assert_ne!(fingerprint(b'T', &a), fingerprint(b'T', &other));
        }
        assert_ne!(fingerprint(b'T', &a), fingerprint(b'n', &[]));
    }

    #[test]
    fn malformed_is_none() {
        let a = row_desc(&[("id", 1, 20, -1)]);
        for cut in 0..a.len() {
            assert_eq!(fingerprint(b'T', &a[..cut]), None);
        }
        assert_eq!(fingerprint(b'D', &a), None);
    }
}
