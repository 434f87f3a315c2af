//! Shard-key types and their canonical byte form.
//!
//! A key value can reach the proxy as a SQL literal, a text-format `Bind`
//! parameter or a binary-format `Bind` parameter. All three are normalized to
//! one [`KeyValue`], whose [`canonical bytes`](KeyValue::canonical_bytes) are
//! what the ring hashes, so they all route identically:
//!
//! | key type                      | canonical bytes                                   |
//! |-------------------------------|---------------------------------------------------|
//! | `smallint`, `integer`, `bigint` | 8-byte big-endian two's complement of the `i64` |
//! | `text`                        | the UTF-8 bytes, as is                            |
//! | `uuid`                        | the 16 raw bytes                                  |
//!
//! All integer widths share one form, so `int4 42` and `int8 42` hash alike and
//! `orders.user_id integer` is co-located with `users.id bigint`.
//!
//! Text input follows the Postgres input functions (`int2in`/`int4in`/`int8in`,
//! `uuid_in`) and reports the same messages and SQLSTATEs, so a bad key is
//! refused by the proxy exactly as Postgres would refuse it.

use std::fmt;

use crate::ring::hash_bytes;

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
}

impl KeyType {
    /// Every type name [`KeyType::parse`] accepts, for error messages.
    pub const ACCEPTED_NAMES: &'static str =
        "smallint, int2, integer, int, int4, bigint, int8, text, varchar, character varying, uuid";

    /// Parses a type name as written in the shard map. Accepts `smallint`,
    /// `int2`, `int`, `integer`, `int4`, `bigint`, `int8`, `text`, `varchar`,
    /// `character varying` and `uuid`, case-insensitively.
    pub fn parse(s: &str) -> Option<KeyType> {
        let s = s.trim();
        let is = |name: &str| s.eq_ignore_ascii_case(name);
        if is("smallint") || is("int2") {
            Some(KeyType::SmallInt)
        } else if is("int") || is("integer") || is("int4") {
            Some(KeyType::Int)
        } else if is("bigint") || is("int8") {
            Some(KeyType::BigInt)
        } else if is("text") || is("varchar") || is_character_varying(s) {
            Some(KeyType::Text)
        } else if is("uuid") {
            Some(KeyType::Uuid)
        } else {
            None
        }
    }

    /// The Postgres type name used in messages: `smallint`, `integer`,
    /// `bigint`, `text` or `uuid`.
    pub fn pg_name(self) -> &'static str {
        match self {
            KeyType::SmallInt => "smallint",
            KeyType::Int => "integer",
            KeyType::BigInt => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }

    /// Whether this is one of the integer types (which share a canonical form).
    pub fn is_integer(self) -> bool {
        matches!(self, KeyType::SmallInt | KeyType::Int | KeyType::BigInt)
    }

    /// Inclusive value range of an integer type (`None` for text and uuid).
    fn int_range(self) -> Option<(i64, i64)> {
        match self {
            KeyType::SmallInt => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
            KeyType::Int => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
            KeyType::BigInt => Some((i64::MIN, i64::MAX)),
            KeyType::Text | KeyType::Uuid => None,
        }
    }
}

/// `character varying`, with any run of spaces between the two words.
fn is_character_varying(s: &str) -> bool {
    let mut words = s.split_ascii_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(a), Some(b), None)
            if a.eq_ignore_ascii_case("character") && b.eq_ignore_ascii_case("varying")
    )
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
}

impl KeyValue {
    /// Appends the canonical bytes to `buf`: for `Int` the 8-byte big-endian
    /// two's complement of the `i64` (for every integer width), for `Text` the
    /// UTF-8 bytes, for `Uuid` the 16 raw bytes.
    pub fn canonical_bytes(&self, buf: &mut Vec<u8>) {
        match self {
            KeyValue::Int(v) => buf.extend_from_slice(&v.to_be_bytes()),
            KeyValue::Text(s) => buf.extend_from_slice(s.as_bytes()),
            KeyValue::Uuid(u) => buf.extend_from_slice(u),
        }
    }

    /// The key hash: [`hash_bytes`] over the canonical bytes (no allocation).
    #[inline]
    pub fn hash64(&self) -> u64 {
        match self {
            KeyValue::Int(v) => hash_bytes(&v.to_be_bytes()),
            KeyValue::Text(s) => hash_bytes(s.as_bytes()),
            KeyValue::Uuid(u) => hash_bytes(u),
        }
    }

    /// The value as a SQL literal: `42`, `'acme'` (quotes doubled),
    /// `'0b5f…'` (canonical hyphenated uuid).
    pub fn sql_literal(&self) -> String {
        match self {
            KeyValue::Int(v) => v.to_string(),
            KeyValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
            KeyValue::Uuid(_) => format!("'{self}'"),
        }
    }
}

impl fmt::Display for KeyValue {
    /// The value as Postgres would print it (uuid in canonical hyphenated form).
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
        }
    }
}

/// A shard-key value that does not fit its key type. Messages and SQLSTATEs
/// match what Postgres reports for the same input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not parse as the type (SQLSTATE 22P02).
    #[error("invalid input syntax for type {ty}: \"{input}\"")]
    InvalidSyntax {
        /// Postgres type name.
        ty: &'static str,
        /// The input exactly as given.
        input: String,
    },
    /// The number does not fit the integer type (SQLSTATE 22003).
    #[error("value \"{input}\" is out of range for type {ty}")]
    OutOfRange {
        /// Postgres type name.
        ty: &'static str,
        /// The input exactly as given (decimal for binary input).
        input: String,
    },
    /// A binary parameter of the wrong length (SQLSTATE 22P03). `param` is the
    /// 1-based parameter number once known (see [`KeyError::in_param`]).
    #[error("incorrect binary data format in bind parameter{}", fmt_param(*.param))]
    BinaryFormat {
        /// 1-based `Bind` parameter number, if known.
        param: Option<usize>,
    },
    /// A binary text parameter that is not valid UTF-8 (SQLSTATE 22021).
    /// `bytes` is the offending sequence as Postgres prints it (`0xff 0xfe`).
    #[error("invalid byte sequence for encoding \"UTF8\": {bytes}")]
    InvalidEncoding {
        /// The offending bytes, formatted as `0x%02x` separated by spaces.
        bytes: String,
    },
    /// A value of a type that cannot be compared with the key (SQLSTATE 42883).
    #[error("operator does not exist: {key} = {given}")]
    NoOperator {
        /// The key's Postgres type name.
        key: &'static str,
        /// The given value's Postgres type name.
        given: &'static str,
    },
}

fn fmt_param(param: Option<usize>) -> String {
    param.map(|n| format!(" {n}")).unwrap_or_default()
}

impl KeyError {
    /// The SQLSTATE Postgres reports for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            KeyError::InvalidSyntax { .. } => "22P02",
            KeyError::OutOfRange { .. } => "22003",
            KeyError::BinaryFormat { .. } => "22P03",
            KeyError::InvalidEncoding { .. } => "22021",
            KeyError::NoOperator { .. } => "42883",
        }
    }

    /// Attaches the 1-based `Bind` parameter number to a
    /// [`KeyError::BinaryFormat`] (so the message reads `... bind parameter 2`,
    /// as Postgres words it); other errors are returned unchanged.
    pub fn in_param(self, param: usize) -> KeyError {
        match self {
            KeyError::BinaryFormat { .. } => KeyError::BinaryFormat { param: Some(param) },
            other => other,
        }
    }
}

/// Parses a key given as SQL text: a string literal or a text-format `Bind`
/// parameter, following the Postgres input functions.
///
/// - Integers: optional surrounding whitespace, optional `+`/`-`, then decimal
///   digits — or, as Postgres 16+ accepts, `0x`/`0o`/`0b` prefixed digits and
///   single `_` separators between digits. Range-checked for the key's width.
/// - `uuid`: 32 hex digits (any case), optionally a hyphen after any group of
///   4, optionally enclosed in `{}`; nothing else, not even whitespace.
/// - `text`: taken as is.
pub fn key_from_text(ty: KeyType, s: &str) -> Result<KeyValue, KeyError> {
    match ty {
        KeyType::SmallInt | KeyType::Int | KeyType::BigInt => {
            parse_pg_int(ty, s).map(KeyValue::Int)
        }
        KeyType::Text => Ok(KeyValue::Text(s.to_owned())),
        KeyType::Uuid => {
            parse_pg_uuid(s)
                .map(KeyValue::Uuid)
                .ok_or_else(|| KeyError::InvalidSyntax {
                    ty: "uuid",
                    input: s.to_owned(),
                })
        }
    }
}

/// Parses a binary-format `Bind` parameter.
///
/// Integer keys accept a big-endian integer of 2, 4 or 8 bytes whatever the
/// key's width (a client may bind an `int4` for a `bigint` column), range-checked
/// against the key type. A uuid must be exactly 16 bytes; text must be valid
/// UTF-8 without NUL bytes.
pub fn key_from_binary(ty: KeyType, b: &[u8]) -> Result<KeyValue, KeyError> {
    match ty {
        KeyType::SmallInt | KeyType::Int | KeyType::BigInt => {
            let v = match *b {
                [a, b] => i64::from(i16::from_be_bytes([a, b])),
                [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
                _ => return Err(KeyError::BinaryFormat { param: None }),
            };
            check_range(ty, v).map(KeyValue::Int)
        }
        KeyType::Uuid => <[u8; 16]>::try_from(b)
            .map(KeyValue::Uuid)
            .map_err(|_| KeyError::BinaryFormat { param: None }),
        KeyType::Text => match std::str::from_utf8(b) {
            Ok(s) => match s.bytes().position(|c| c == 0) {
                None => Ok(KeyValue::Text(s.to_owned())),
                Some(_) => Err(KeyError::InvalidEncoding {
                    bytes: "0x00".to_owned(),
                }),
            },
            Err(e) => Err(KeyError::InvalidEncoding {
                bytes: invalid_utf8_bytes(&b[e.valid_up_to()..]),
            }),
        },
    }
}

/// A key given as an integer literal in SQL (`WHERE id = 42`).
///
/// For integer keys the value is not range-checked: Postgres compares an
/// out-of-range literal across types (`int4col = 3000000000` matches no row,
/// and an `INSERT` of it fails on the shard with Postgres' own error), so any
/// shard is a correct destination. For a text key the literal routes as its
/// decimal digits; a uuid key cannot be compared with an integer.
pub fn key_from_int(ty: KeyType, v: i64) -> Result<KeyValue, KeyError> {
    match ty {
        KeyType::SmallInt | KeyType::Int | KeyType::BigInt => Ok(KeyValue::Int(v)),
        KeyType::Text => Ok(KeyValue::Text(v.to_string())),
        KeyType::Uuid => Err(KeyError::NoOperator {
            key: "uuid",
            given: if i32::try_from(v).is_ok() {
                "integer"
            } else {
                "bigint"
            },
        }),
    }
}

fn check_range(ty: KeyType, v: i64) -> Result<i64, KeyError> {
    match ty.int_range() {
        Some((lo, hi)) if v < lo || v > hi => Err(KeyError::OutOfRange {
            ty: ty.pg_name(),
            input: v.to_string(),
        }),
        _ => Ok(v),
    }
}

/// C-locale `isspace`.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `pg_strtoint16/32/64_safe` (Postgres 16+): see [`key_from_text`].
fn parse_pg_int(ty: KeyType, s: &str) -> Result<i64, KeyError> {
    let syntax = || KeyError::InvalidSyntax {
        ty: ty.pg_name(),
        input: s.to_owned(),
    };
    let range = || KeyError::OutOfRange {
        ty: ty.pg_name(),
        input: s.to_owned(),
    };
    let (min, max) = ty.int_range().ok_or_else(syntax)?;
    // Magnitudes are accumulated as u64 up to |min|, as Postgres does.
    let abs_min = min.unsigned_abs();
    let b = s.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut p = 0;
    while is_c_space(at(p)) {
        p += 1;
    }
    let mut neg = false;
    if at(p) == b'-' {
        neg = true;
        p += 1;
    } else if at(p) == b'+' {
        p += 1;
    }
    let (base, digit): (u64, fn(u8) -> Option<u64>) = match (at(p), at(p + 1)) {
        (b'0', b'x' | b'X') => (16, |c| (c as char).to_digit(16).map(u64::from)),
        (b'0', b'o' | b'O') => (8, |c| (c as char).to_digit(8).map(u64::from)),
        (b'0', b'b' | b'B') => (2, |c| (c as char).to_digit(2).map(u64::from)),
        _ => (10, |c| (c as char).to_digit(10).map(u64::from)),
    };
    if base != 10 {
        p += 2;
    }
    let first = p;
    let mut tmp: u64 = 0;
    loop {
        let c = at(p);
        if let Some(d) = digit(c) {
            if tmp > abs_min / base {
                return Err(range());
            }
            tmp = tmp * base + d;
            p += 1;
        } else if c == b'_' {
            // Decimal: an underscore may not come first. Every base: it must be
            // followed by another digit.
            if base == 10 && p == first {
                return Err(syntax());
            }
            p += 1;
            if digit(at(p)).is_none() {
                return Err(syntax());
            }
        } else {
            break;
        }
    }
    if p == first {
        return Err(syntax());
    }
    while is_c_space(at(p)) {
        p += 1;
    }
    if p != b.len() {
        return Err(syntax());
    }
    if neg {
        if tmp > abs_min {
            return Err(range());
        }
        // tmp <= |min| so the negation fits.
        Ok(0i64.wrapping_sub_unsigned(tmp))
    } else if tmp > max as u64 {
        Err(range())
    } else {
        Ok(tmp as i64)
    }
}

/// `string_to_uuid` from Postgres' `uuid.c`.
fn parse_pg_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let hex = |c: u8| (c as char).to_digit(16);
    let mut p = 0;
    let braces = at(0) == b'{';
    if braces {
        p += 1;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = hex(at(p))?;
        let lo = hex(at(p + 1))?;
        *byte = (hi * 16 + lo) as u8;
        p += 2;
        if at(p) == b'-' && i % 2 == 1 && i < 15 {
            p += 1;
        }
    }
    if braces {
        if at(p) != b'}' {
            return None;
        }
        p += 1;
    }
    (p == b.len()).then_some(out)
}

/// Formats the first invalid UTF-8 sequence the way Postgres'
/// `report_invalid_encoding` does: as many bytes as the lead byte announces
/// (bounded by what is left), each as `0x%02x`, separated by spaces.
fn invalid_utf8_bytes(rest: &[u8]) -> String {
    let lead = rest.first().copied().unwrap_or(0);
    let len = if lead & 0x80 == 0 {
        1
    } else if lead & 0xe0 == 0xc0 {
        2
    } else if lead & 0xf0 == 0xe0 {
        3
    } else if lead & 0xf8 == 0xf0 {
        4
    } else {
        1
    };
    rest.iter()
        .take(len.min(rest.len()))
        .map(|c| format!("0x{c:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(ty: KeyType, s: &str) -> (String, &'static str) {
        let e = key_from_text(ty, s).unwrap_err();
        (e.to_string(), e.sqlstate())
    }

    #[test]
    fn parse_type_names() {
        for (s, t) in [
            ("smallint", KeyType::SmallInt),
            ("INT2", KeyType::SmallInt),
            ("int", KeyType::Int),
            ("Integer", KeyType::Int),
            ("int4", KeyType::Int),
            ("bigint", KeyType::BigInt),
            ("INT8", KeyType::BigInt),
            ("text", KeyType::Text),
            ("varchar", KeyType::Text),
            ("character varying", KeyType::Text),
            ("Character  Varying", KeyType::Text),
            ("UUID", KeyType::Uuid),
        ] {
            assert_eq!(KeyType::parse(s), Some(t), "{s}");
        }
        for s in [
            "",
            "timestamptz",
            "int16",
            "character",
            "varchar(10)",
            "serial",
        ] {
            assert_eq!(KeyType::parse(s), None, "{s}");
        }
        assert_eq!(KeyType::Int.pg_name(), "integer");
        assert_eq!(KeyType::SmallInt.to_string(), "smallint");
    }

    #[test]
    fn canonical_bytes_shared_by_all_int_widths() {
        let a = key_from_text(KeyType::Int, "42").unwrap();
        let b = key_from_text(KeyType::BigInt, "42").unwrap();
        let c = key_from_binary(KeyType::BigInt, &42i32.to_be_bytes()).unwrap();
        let d = key_from_binary(KeyType::SmallInt, &42i16.to_be_bytes()).unwrap();
        let e = key_from_int(KeyType::SmallInt, 42).unwrap();
        for k in [&a, &b, &c, &d, &e] {
            assert_eq!(*k, KeyValue::Int(42));
            assert_eq!(k.hash64(), a.hash64());
        }
        let mut buf = vec![0xAA];
        KeyValue::Int(-2).canonical_bytes(&mut buf);
        assert_eq!(buf, [0xAA, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        let mut buf = Vec::new();
        KeyValue::Text("héllo".into()).canonical_bytes(&mut buf);
        assert_eq!(buf, "héllo".as_bytes());
        let u = key_from_text(KeyType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        let mut buf = Vec::new();
        u.canonical_bytes(&mut buf);
        assert_eq!(
            buf,
            [
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11
            ]
        );
        let mut buf = Vec::new();
        for k in [KeyValue::Int(7), KeyValue::Text("acme".into()), u.clone()] {
            buf.clear();
            k.canonical_bytes(&mut buf);
            assert_eq!(k.hash64(), hash_bytes(&buf));
        }
        assert_eq!(key_from_binary(KeyType::Uuid, &buf).unwrap(), u);
    }

    #[test]
    fn integers_from_text() {
        let ok =
            |ty, s: &str, v: i64| assert_eq!(key_from_text(ty, s), Ok(KeyValue::Int(v)), "{s:?}");
        ok(KeyType::BigInt, "42", 42);
        ok(KeyType::BigInt, "  +42\t\n", 42);
        ok(KeyType::BigInt, "-0", 0);
        ok(KeyType::BigInt, "007", 7);
        ok(KeyType::BigInt, "9223372036854775807", i64::MAX);
        ok(KeyType::BigInt, "-9223372036854775808", i64::MIN);
        ok(KeyType::Int, "2147483647", 2147483647);
        ok(KeyType::Int, "-2147483648", -2147483648);
        ok(KeyType::SmallInt, "-32768", -32768);
        ok(KeyType::SmallInt, "32767", 32767);
        // Postgres 16+ forms.
        ok(KeyType::BigInt, "1_000_000", 1_000_000);
        ok(KeyType::BigInt, "0x2A", 42);
        ok(KeyType::BigInt, "-0X2a", -42);
        ok(KeyType::BigInt, "0o52", 42);
        ok(KeyType::BigInt, "0b101010", 42);
        ok(KeyType::BigInt, "0x_2A", 42);
        ok(KeyType::BigInt, "-0x8000000000000000", i64::MIN);
        ok(KeyType::SmallInt, "0x7FFF", 32767);

        for s in [
            "abc", "", " ", "+", "-", "4 2", "42abc", "1.5", "1e3", "_1", "1_", "1__0", "0x",
            "0x_", "0xG", "--1", "0b2", "٤٢",
        ] {
            assert_eq!(
                err(KeyType::BigInt, s),
                (
                    format!("invalid input syntax for type bigint: \"{s}\""),
                    "22P02"
                ),
                "{s:?}"
            );
        }
        assert_eq!(
            err(KeyType::Int, "abc"),
            (
                "invalid input syntax for type integer: \"abc\"".into(),
                "22P02"
            )
        );
        assert_eq!(
            err(KeyType::SmallInt, "x"),
            (
                "invalid input syntax for type smallint: \"x\"".into(),
                "22P02"
            )
        );
        assert_eq!(
            err(KeyType::Int, "99999999999"),
            (
                "value \"99999999999\" is out of range for type integer".into(),
                "22003"
            )
        );
        for (ty, s) in [
            (KeyType::Int, "2147483648"),
            (KeyType::Int, "-2147483649"),
            (KeyType::SmallInt, "32768"),
            (KeyType::SmallInt, " -32769 "),
            (KeyType::BigInt, "9223372036854775808"),
            (KeyType::BigInt, "-9223372036854775809"),
            (KeyType::BigInt, "0x10000000000000000"),
            // Overflow is detected while reading digits, before trailing junk.
            (KeyType::BigInt, "99999999999999999999abc"),
        ] {
            assert_eq!(
                err(ty, s),
                (
                    format!("value \"{s}\" is out of range for type {}", ty.pg_name()),
                    "22003"
                ),
                "{s:?}"
            );
        }
    }

    #[test]
    fn uuids_from_text() {
        let want = KeyValue::Uuid([
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ]);
        for s in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(key_from_text(KeyType::Uuid, s).as_ref(), Ok(&want), "{s}");
        }
        assert_eq!(want.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(want.sql_literal(), "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'");
        for s in [
            "",
            "abc",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(
                err(KeyType::Uuid, s),
                (
                    format!("invalid input syntax for type uuid: \"{s}\""),
                    "22P02"
                ),
                "{s:?}"
            );
        }
    }

    #[test]
    fn text_from_text_is_verbatim() {
        assert_eq!(
            key_from_text(KeyType::Text, "  Acme 'x' "),
            Ok(KeyValue::Text("  Acme 'x' ".into()))
        );
        assert_eq!(KeyValue::Text("it's".into()).sql_literal(), "'it''s'");
    }

    #[test]
    fn binary_params() {
        assert_eq!(
            key_from_binary(KeyType::BigInt, &(-5i64).to_be_bytes()),
            Ok(KeyValue::Int(-5))
        );
        assert_eq!(
            key_from_binary(KeyType::SmallInt, &(-5i64).to_be_bytes()),
            Ok(KeyValue::Int(-5))
        );
        let e = key_from_binary(KeyType::Int, &99999999999i64.to_be_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value \"99999999999\" is out of range for type integer"
        );
        assert_eq!(e.sqlstate(), "22003");
        let e = key_from_binary(KeyType::SmallInt, &40000i32.to_be_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value \"40000\" is out of range for type smallint"
        );
        for bad in [&[][..], &[1][..], &[0, 0, 1][..], &[0; 16][..]] {
            let e = key_from_binary(KeyType::BigInt, bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                "incorrect binary data format in bind parameter"
            );
            assert_eq!(e.sqlstate(), "22P03");
        }
        let e = key_from_binary(KeyType::Uuid, &[0; 8]).unwrap_err();
        assert_eq!(e.sqlstate(), "22P03");
        assert_eq!(
            e.in_param(2).to_string(),
            "incorrect binary data format in bind parameter 2"
        );
        assert_eq!(
            key_from_binary(KeyType::Uuid, &[7; 16]),
            Ok(KeyValue::Uuid([7; 16]))
        );
        assert_eq!(
            key_from_binary(KeyType::Text, "acme".as_bytes()),
            Ok(KeyValue::Text("acme".into()))
        );
        for (bytes, shown) in [
            (&b"ab\xffcd"[..], "0xff"),
            (&b"ab\xc3\x28"[..], "0xc3 0x28"),
            (&b"\xe2\x82"[..], "0xe2 0x82"),
            (&b"a\0b"[..], "0x00"),
        ] {
            let e = key_from_binary(KeyType::Text, bytes).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("invalid byte sequence for encoding \"UTF8\": {shown}")
            );
            assert_eq!(e.sqlstate(), "22021");
        }
    }

    #[test]
    fn int_literals() {
        assert_eq!(key_from_int(KeyType::BigInt, 42), Ok(KeyValue::Int(42)));
        // Out of the column's range: Postgres compares across types, no error.
        assert_eq!(
            key_from_int(KeyType::SmallInt, 100_000),
            Ok(KeyValue::Int(100_000))
        );
        assert_eq!(
            key_from_int(KeyType::Text, -42),
            Ok(KeyValue::Text("-42".into()))
        );
        let e = key_from_int(KeyType::Uuid, 42).unwrap_err();
        assert_eq!(e.to_string(), "operator does not exist: uuid = integer");
        assert_eq!(e.sqlstate(), "42883");
        let e = key_from_int(KeyType::Uuid, 1 << 40).unwrap_err();
        assert_eq!(e.to_string(), "operator does not exist: uuid = bigint");
    }
}
