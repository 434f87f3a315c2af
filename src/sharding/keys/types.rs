//! The key types ([`KeyType`]: names, co-location classes) and normalized key values
//! ([`KeyValue`]: canonical bytes, hash, Postgres order, SQL literal and display form).

use std::cmp::Ordering;
use std::fmt;

use super::datetime::{fmt_date, fmt_timestamptz, TIMESTAMPTZ};
use super::numeric::Numeric;
use crate::sharding::ring::hash_bytes;

/// The declared type of a shard-key column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `smallint` / `int2`.
    SmallInt,
    /// `integer` / `int` / `int4`.
    Int,
    /// `bigint` / `int8`.
    BigInt,
    /// `text` / `varchar` / `character varying`.
    Text,
    /// `uuid`.
    Uuid,
    /// `numeric` / `decimal` (without a typmod).
    Numeric,
    /// `date`.
    Date,
    /// `timestamptz` / `timestamp with time zone`.
    Timestamptz,
}

impl KeyType {
    /// Every type name [`KeyType::parse`] accepts, for error messages.
    pub const ACCEPTED_NAMES: &'static str =
        "smallint, int2, integer, int, int4, bigint, int8, text, varchar, character varying, uuid, \
         numeric, decimal, date, timestamptz, timestamp with time zone";

    /// Parses a type name as written in the shard map. Accepts `smallint`,
    /// `int2`, `int`, `integer`, `int4`, `bigint`, `int8`, `text`, `varchar`,
    /// `character varying`, `uuid`, `numeric`, `decimal`, `date`,
    /// `timestamptz` and `timestamp with time zone`, case-insensitively (any
    /// run of whitespace between the words of a multi-word name).
    pub fn parse(s: &str) -> Option<KeyType> {
        let s = s.trim();
        let is = |name: &str| s.eq_ignore_ascii_case(name);
        if is("smallint") || is("int2") {
            Some(KeyType::SmallInt)
        } else if is("int") || is("integer") || is("int4") {
            Some(KeyType::Int)
        } else if is("bigint") || is("int8") {
            Some(KeyType::BigInt)
        } else if is("text") || is("varchar") || is_words(s, &["character", "varying"]) {
            Some(KeyType::Text)
        } else if is("uuid") {
            Some(KeyType::Uuid)
        } else if is("numeric") || is("decimal") {
            Some(KeyType::Numeric)
        } else if is("date") {
            Some(KeyType::Date)
        } else if is("timestamptz") || is_words(s, &["timestamp", "with", "time", "zone"]) {
            Some(KeyType::Timestamptz)
        } else {
            None
        }
    }

    /// The Postgres type name used in messages: `smallint`, `integer`,
    /// `bigint`, `text`, `uuid`, `numeric`, `date` or
    /// `timestamp with time zone` (as Postgres spells it in its own errors).
    pub fn pg_name(self) -> &'static str {
        match self {
            KeyType::SmallInt => "smallint",
            KeyType::Int => "integer",
            KeyType::BigInt => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
            KeyType::Numeric => "numeric",
            KeyType::Date => "date",
            KeyType::Timestamptz => TIMESTAMPTZ,
        }
    }

    /// Whether this is one of the integer types (which share a canonical form).
    pub fn is_integer(self) -> bool {
        matches!(self, KeyType::SmallInt | KeyType::Int | KeyType::BigInt)
    }

    /// The co-location class: two key columns can be co-located (their equal
    /// values routed to the same shard) only if their classes are equal. All
    /// integer widths share class 0 (they share a canonical form); every other
    /// type has a class of its own (`text` 1, `uuid` 2, `numeric` 3, `date` 4,
    /// `timestamptz` 5).
    pub fn colocation_class(self) -> u8 {
        match self {
            KeyType::SmallInt | KeyType::Int | KeyType::BigInt => 0,
            KeyType::Text => 1,
            KeyType::Uuid => 2,
            KeyType::Numeric => 3,
            KeyType::Date => 4,
            KeyType::Timestamptz => 5,
        }
    }

    /// Inclusive value range of an integer type (`None` for the others).
    pub(super) fn int_range(self) -> Option<(i64, i64)> {
        match self {
            KeyType::SmallInt => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
            KeyType::Int => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
            KeyType::BigInt => Some((i64::MIN, i64::MAX)),
            KeyType::Text
            | KeyType::Uuid
            | KeyType::Numeric
            | KeyType::Date
            | KeyType::Timestamptz => None,
        }
    }
}

/// Whether `s` is exactly `words`, case-insensitively, with any run of
/// whitespace between them (`character varying`, `timestamp with time zone`).
fn is_words(s: &str, words: &[&str]) -> bool {
    let mut given = s.split_ascii_whitespace();
    words
        .iter()
        .all(|w| given.next().is_some_and(|g| g.eq_ignore_ascii_case(w)))
        && given.next().is_none()
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pg_name())
    }
}

/// A normalized shard-key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// Any integer key (`smallint`, `integer`, `bigint`), widened to `i64`.
    Int(i64),
    /// A text key.
    Text(String),
    /// A uuid key, as its 16 bytes.
    Uuid([u8; 16]),
    /// A `numeric` key, normalized (so equal values are equal structs).
    Numeric(Numeric),
    /// A `date` key: days since 2000-01-01 (Postgres' epoch), with `i32::MIN`
    /// for `-infinity` and `i32::MAX` for `infinity`, as Postgres stores it.
    Date(i32),
    /// A `timestamptz` key: microseconds since 2000-01-01 00:00:00 UTC, with
    /// `i64::MIN` for `-infinity` and `i64::MAX` for `infinity`, as Postgres
    /// stores it.
    Timestamptz(i64),
}

impl KeyValue {
    /// Appends the canonical bytes to `buf`: for `Int` the 8-byte big-endian
    /// two's complement of the `i64` (for every integer width), for `Text` the
    /// UTF-8 bytes, for `Uuid` the 16 raw bytes, for `Numeric` the normalized
    /// decimal text ([`Numeric`]'s `Display`), for `Date` the 4-byte and for
    /// `Timestamptz` the 8-byte big-endian integer.
    pub fn canonical_bytes(&self, buf: &mut Vec<u8>) {
        match self {
            KeyValue::Int(v) => buf.extend_from_slice(&v.to_be_bytes()),
            KeyValue::Text(s) => buf.extend_from_slice(s.as_bytes()),
            KeyValue::Uuid(u) => buf.extend_from_slice(u),
            KeyValue::Numeric(n) => n.write_parts(|part| buf.extend_from_slice(part)),
            KeyValue::Date(d) => buf.extend_from_slice(&d.to_be_bytes()),
            KeyValue::Timestamptz(t) => buf.extend_from_slice(&t.to_be_bytes()),
        }
    }

    /// The key hash: [`hash_bytes`] over the canonical bytes (no allocation,
    /// except for a numeric whose text is longer than 64 bytes).
    #[inline]
    pub fn hash64(&self) -> u64 {
        match self {
            KeyValue::Int(v) => hash_bytes(&v.to_be_bytes()),
            KeyValue::Text(s) => hash_bytes(s.as_bytes()),
            KeyValue::Uuid(u) => hash_bytes(u),
            KeyValue::Numeric(n) => n.hash64(),
            KeyValue::Date(d) => hash_bytes(&d.to_be_bytes()),
            KeyValue::Timestamptz(t) => hash_bytes(&t.to_be_bytes()),
        }
    }

    /// Compares two values of the same variant exactly as Postgres orders them
    /// for that type; `None` when the variants differ.
    ///
    /// - `Int`, `Date`, `Timestamptz`: as integers (so `-infinity` sorts first
    ///   and `infinity` last, as in Postgres).
    /// - `Text`: bytewise on the UTF-8, i.e. the `C` collation. Range bounds on
    ///   text keys therefore compare bytewise whatever the column's collation.
    /// - `Uuid`: bytewise (Postgres' `uuid_cmp`).
    /// - `Numeric`: by value, `-Infinity` < finite < `Infinity` < `NaN`
    ///   (Postgres sorts `NaN` above everything and equal to itself).
    pub fn cmp_same(&self, other: &KeyValue) -> Option<Ordering> {
        match (self, other) {
            (KeyValue::Int(a), KeyValue::Int(b)) => Some(a.cmp(b)),
            (KeyValue::Text(a), KeyValue::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (KeyValue::Uuid(a), KeyValue::Uuid(b)) => Some(a.cmp(b)),
            (KeyValue::Numeric(a), KeyValue::Numeric(b)) => Some(a.cmp(b)),
            (KeyValue::Date(a), KeyValue::Date(b)) => Some(a.cmp(b)),
            (KeyValue::Timestamptz(a), KeyValue::Timestamptz(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The value as a SQL literal: `42`, `'acme'` (quotes doubled),
    /// `'0b5f…'` (canonical hyphenated uuid), `12.5` (a finite numeric),
    /// `'NaN'::numeric` / `'Infinity'::numeric`, `'2025-03-01'::date`,
    /// `'2025-03-01 00:00:00+00'::timestamptz`.
    pub fn sql_literal(&self) -> String {
        match self {
            KeyValue::Int(v) => v.to_string(),
            KeyValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
            KeyValue::Uuid(_) => format!("'{self}'"),
            KeyValue::Numeric(n) if n.is_finite() => n.to_string(),
            KeyValue::Numeric(n) => format!("'{n}'::numeric"),
            KeyValue::Date(_) => format!("'{self}'::date"),
            KeyValue::Timestamptz(_) => format!("'{self}'::timestamptz"),
        }
    }
}

impl fmt::Display for KeyValue {
    /// The value as Postgres would print it: uuid in canonical hyphenated
    /// form, numeric normalized (`1.5`, not `1.50`), date as `2025-03-01`,
    /// timestamptz in UTC as `2025-03-01 00:00:00+00` (fractional seconds
    /// only when present; ` BC` appended for years before 1; `infinity` and
    /// `-infinity` spelled out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Text(s) => f.write_str(s),
            KeyValue::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            KeyValue::Numeric(n) => write!(f, "{n}"),
            KeyValue::Date(d) => fmt_date(f, *d),
            KeyValue::Timestamptz(t) => fmt_timestamptz(f, *t),
        }
    }
}
