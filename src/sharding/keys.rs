//! Shard-key types and their canonical byte form.
//!
//! A key value can reach the proxy as a SQL literal, a text-format `Bind`
//! parameter or a binary-format `Bind` parameter. All three are normalized to
//! one [`KeyValue`], whose [`canonical bytes`](KeyValue::canonical_bytes) are
//! what the ring hashes, so they all route identically:
//!
//! | key type                        | canonical bytes                                              |
//! |---------------------------------|--------------------------------------------------------------|
//! | `smallint`, `integer`, `bigint` | 8-byte big-endian two's complement of the `i64`              |
//! | `text`                          | the UTF-8 bytes, as is                                       |
//! | `uuid`                          | the 16 raw bytes                                             |
//! | `numeric`                       | the normalized decimal text (see [`Numeric`]): `-12.5`, `0`, `0.0001`, `100000000000000000000`, `NaN`, `Infinity`, `-Infinity` |
//! | `date`                          | 4-byte big-endian two's complement of the days since 2000-01-01 (`i32::MIN`/`i32::MAX` for `-infinity`/`infinity`) |
//! | `timestamptz`                   | 8-byte big-endian two's complement of the microseconds since 2000-01-01 00:00:00 UTC (`i64::MIN`/`i64::MAX` for `-infinity`/`infinity`) |
//!
//! All integer widths share one form, so `int4 42` and `int8 42` hash alike and
//! `orders.user_id integer` is co-located with `users.id bigint`. Numerics are
//! normalized first, so `1.50`, `1.5` and `001.5` hash alike; the date and
//! timestamp forms are Postgres' own binary representation.
//!
//! Text input follows the Postgres input functions (`int2in`/`int4in`/`int8in`,
//! `uuid_in`, `numeric_in`, `date_in`, `timestamptz_in`) and reports the same
//! messages and SQLSTATEs, so a bad key is refused by the proxy exactly as
//! Postgres would refuse it. For `numeric`, `date` and `timestamptz` the proxy
//! accepts a documented subset of what Postgres accepts (see
//! [`key_from_text`]); every accepted input denotes the value Postgres would
//! store, and the rest is refused rather than guessed.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

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
    fn int_range(self) -> Option<(i64, i64)> {
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

/// Postgres' name for `timestamptz`, as its messages spell it.
const TIMESTAMPTZ: &str = "timestamp with time zone";

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

/// An exact `numeric` value, normalized so that values equal in Postgres are
/// equal here (`1.50`, `1.5`, `001.5` and `0.15e1` are one value; `-0` is
/// `0`): derived `Eq` and `Hash` are by value.
///
/// Besides finite decimals it holds Postgres' special values `NaN`,
/// `Infinity` and `-Infinity`. [`Ord`] is Postgres' order: `-Infinity` <
/// finite values < `Infinity` < `NaN`, and `NaN` equals itself.
///
/// `Display` prints the normalized decimal without an exponent and without
/// trailing fractional zeros (`-12.5`, `0`, `0.0001`,
/// `100000000000000000000`) or `NaN`, `Infinity`, `-Infinity`; those bytes
/// are the key's canonical form. Note that Postgres prints the scale a value
/// was written with (`1.50`), and that a column declared `numeric(p, s)`
/// rounds what it stores to `s` places: write keys at the column's scale.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Numeric(Num);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Num {
    NaN,
    Infinity,
    NegInfinity,
    /// `±0.DIGITS × 10^point`. `digits` are ASCII `0`–`9` with neither a
    /// leading nor a trailing `0`; zero is `neg: false`, no digits, `point: 0`.
    Finite {
        neg: bool,
        digits: Box<[u8]>,
        point: i32,
    },
}

/// Largest decimal exponent of a numeric's leading digit (Postgres' base-10000
/// weight is at most `i16::MAX`).
const NUMERIC_MAX_LEADING_EXP: i64 = (i16::MAX as i64 + 1) * 4 - 1;
/// Largest display scale of a numeric (`NUMERIC_DSCALE_MAX`).
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;

impl Numeric {
    /// `NaN`.
    pub fn nan() -> Numeric {
        Numeric(Num::NaN)
    }

    /// `Infinity`.
    pub fn infinity() -> Numeric {
        Numeric(Num::Infinity)
    }

    /// `-Infinity`.
    pub fn neg_infinity() -> Numeric {
        Numeric(Num::NegInfinity)
    }

    /// Whether this is `NaN`.
    pub fn is_nan(&self) -> bool {
        matches!(self.0, Num::NaN)
    }

    /// Whether this is neither `NaN` nor an infinity.
    pub fn is_finite(&self) -> bool {
        matches!(self.0, Num::Finite { .. })
    }

    /// Builds a finite value `±0.DIGITS × 10^point` from ASCII digits that may
    /// have leading and trailing zeros. The caller ensures the normalized
    /// `point` fits an `i32` (numeric's own limits keep it within ±2^18).
    fn finite(neg: bool, digits: &[u8], point: i64) -> Numeric {
        let lead = digits.iter().take_while(|&&c| c == b'0').count();
        let digits = &digits[lead..];
        let trail = digits.iter().rev().take_while(|&&c| c == b'0').count();
        let digits = &digits[..digits.len() - trail];
        let point = point.saturating_sub(lead as i64);
        match i32::try_from(point) {
            Ok(point) if !digits.is_empty() => Numeric(Num::Finite {
                neg,
                digits: digits.into(),
                point,
            }),
            _ => Numeric(Num::Finite {
                neg: false,
                digits: Box::default(),
                point: 0,
            }),
        }
    }

    /// Emits the canonical text in pieces (no allocation).
    fn write_parts(&self, mut put: impl FnMut(&[u8])) {
        fn zeros(mut n: usize, put: &mut dyn FnMut(&[u8])) {
            const ZEROS: [u8; 64] = [b'0'; 64];
            while n > 0 {
                let k = n.min(ZEROS.len());
                put(&ZEROS[..k]);
                n -= k;
            }
        }
        let (neg, digits, point) = match &self.0 {
            Num::NaN => return put(b"NaN"),
            Num::Infinity => return put(b"Infinity"),
            Num::NegInfinity => return put(b"-Infinity"),
            Num::Finite { digits, .. } if digits.is_empty() => return put(b"0"),
            Num::Finite { neg, digits, point } => (*neg, &digits[..], *point),
        };
        if neg {
            put(b"-");
        }
        match usize::try_from(point) {
            Err(_) | Ok(0) => {
                put(b"0.");
                zeros(point.unsigned_abs() as usize, &mut put);
                put(digits);
            }
            Ok(p) if p >= digits.len() => {
                put(digits);
                zeros(p - digits.len(), &mut put);
            }
            Ok(p) => {
                put(&digits[..p]);
                put(b".");
                put(&digits[p..]);
            }
        }
    }

    /// [`hash_bytes`] of the canonical text, on the stack when it fits.
    fn hash64(&self) -> u64 {
        let mut stack = [0u8; 64];
        let mut len = 0;
        let mut heap: Option<Vec<u8>> = None;
        self.write_parts(|part| match &mut heap {
            Some(v) => v.extend_from_slice(part),
            None if len + part.len() <= stack.len() => {
                stack[len..len + part.len()].copy_from_slice(part);
                len += part.len();
            }
            None => {
                let mut v = stack[..len].to_vec();
                v.extend_from_slice(part);
                heap = Some(v);
            }
        });
        match &heap {
            Some(v) => hash_bytes(v),
            None => hash_bytes(&stack[..len]),
        }
    }

    /// The magnitude order of two finite values (`digits`, `point`).
    fn cmp_magnitude(a: (&[u8], i32), b: (&[u8], i32)) -> Ordering {
        match (a.0.is_empty(), b.0.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            // Normalized: no trailing zeros, so digit strings compare
            // lexicographically once the leading digit's place is equal.
            (false, false) => a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)),
        }
    }
}

impl From<i64> for Numeric {
    /// The numeric of an integer.
    fn from(v: i64) -> Numeric {
        let text = v.unsigned_abs().to_string();
        Numeric::finite(v < 0, text.as_bytes(), text.len() as i64)
    }
}

impl FromStr for Numeric {
    type Err = KeyError;

    /// Parses numeric text as [`key_from_text`] does for a `numeric` key.
    fn from_str(s: &str) -> Result<Numeric, KeyError> {
        parse_pg_numeric(s)
    }
}

impl Ord for Numeric {
    /// Postgres' order: `-Infinity` < finite < `Infinity` < `NaN`.
    fn cmp(&self, other: &Numeric) -> Ordering {
        // Rank of each kind; finite values tie and compare by value.
        let rank = |n: &Num| match n {
            Num::NegInfinity => 0,
            Num::Finite { .. } => 1,
            Num::Infinity => 2,
            Num::NaN => 3,
        };
        match (&self.0, &other.0) {
            (
                Num::Finite {
                    neg: an,
                    digits: ad,
                    point: ap,
                },
                Num::Finite {
                    neg: bn,
                    digits: bd,
                    point: bp,
                },
            ) => match (an, bn) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => Numeric::cmp_magnitude((ad, *ap), (bd, *bp)),
                (true, true) => Numeric::cmp_magnitude((bd, *bp), (ad, *ap)),
            },
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, other: &Numeric) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Numeric {
    /// The normalized decimal text: `-12.5`, `0`, `NaN`, `Infinity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut res = Ok(());
        self.write_parts(|part| {
            if res.is_ok() {
                // The parts are ASCII.
                res = f.write_str(std::str::from_utf8(part).unwrap_or_default());
            }
        });
        res
    }
}

/// A shard-key value that does not fit its key type. Messages and SQLSTATEs
/// match what Postgres reports for the same input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not parse as the type: SQLSTATE 22P02, or 22007 for
    /// `date` and `timestamp with time zone` (as Postgres reports them).
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
    /// A numeric beyond what Postgres' numeric can store (more than 131072
    /// digits before the point or a scale above 16383; SQLSTATE 22003).
    #[error("value overflows numeric format")]
    NumericOverflow,
    /// A date or timestamp field or value out of range (SQLSTATE 22008):
    /// `date/time field value out of range: "2025-02-30"`,
    /// `date out of range: "…"`, `timestamp out of range: "…"`; binary input
    /// has no input to quote (`date out of range`).
    #[error("{what}{}", fmt_input(.input.as_deref()))]
    DateTimeOutOfRange {
        /// What is out of range, as Postgres words it.
        what: &'static str,
        /// The text input exactly as given; `None` for binary input.
        input: Option<String>,
    },
    /// A UTC offset beyond ±15:59:59 (SQLSTATE 22009).
    #[error("time zone displacement out of range: \"{input}\"")]
    TimeZoneOutOfRange {
        /// The input exactly as given.
        input: String,
    },
    /// A `timestamptz` key given as text without an explicit UTC offset (or
    /// with a time zone name): Postgres would read it in the session's
    /// `TimeZone`, which the proxy does not track, so routing it could pick
    /// the wrong shard (SQLSTATE 22007).
    #[error(
        "timestamptz shard key \"{input}\" has no UTC offset: the proxy cannot know the session \
         time zone; write it with an offset ({}) or bind it as a binary timestamptz parameter",
        utc_example(.input)
    )]
    NoUtcOffset {
        /// The input exactly as given.
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

fn fmt_input(input: Option<&str>) -> String {
    input.map(|s| format!(": \"{s}\"")).unwrap_or_default()
}

/// The example in [`KeyError::NoUtcOffset`]'s message: the input's local
/// date and time written with `+00`.
fn utc_example(input: &str) -> String {
    let local = match parse_timestamptz_text(input) {
        Ok(Parsed::Local { local_us, .. }) => i64::try_from(local_us).ok(),
        _ => None,
    };
    // Else 2025-03-01 00:00:00, 9191 days after 2000-01-01.
    let t = local.unwrap_or(9191 * DAY_US);
    format!("{}", KeyValue::Timestamptz(t))
}

impl KeyError {
    /// The SQLSTATE Postgres reports for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            KeyError::InvalidSyntax { ty, .. } if *ty == "date" || *ty == TIMESTAMPTZ => "22007",
            KeyError::InvalidSyntax { .. } => "22P02",
            KeyError::OutOfRange { .. } | KeyError::NumericOverflow => "22003",
            KeyError::DateTimeOutOfRange { .. } => "22008",
            KeyError::TimeZoneOutOfRange { .. } => "22009",
            KeyError::NoUtcOffset { .. } => "22007",
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
/// - `numeric` (`numeric_in`): optional surrounding whitespace, optional
///   `+`/`-`, digits with an optional decimal point (`5`, `5.`, `.5`), single
///   `_` separators between digits (Postgres 16+), an optional exponent
///   `e[+-]N`; or `NaN` (unsigned), `Infinity` / `inf` with an optional sign,
///   case-insensitively. Values beyond numeric's limits fail with
///   [`KeyError::NumericOverflow`]. Postgres 16's `0x`/`0o`/`0b` integer forms
///   are not accepted for numeric keys.
/// - `date`: ISO `YYYY-MM-DD` (a year of at least 4 digits, month and day of 1
///   or 2), optionally followed by `BC`, with optional surrounding whitespace;
///   or `infinity`, `-infinity`, `epoch` (any case). Other `DateStyle` forms
///   (`03/01/2025`, `March 1, 2025`, `2025-03-01 12:00`, `today`) are not
///   accepted for keys and fail as invalid syntax. Month and day are checked
///   (leap years included) as Postgres checks them.
/// - `timestamptz`: an ISO date as above, optionally followed by a space or
///   `T` and `HH:MM[:SS[.ffffff]]` (24:00:00 and a leap second 60 are allowed,
///   as Postgres allows them), then — optionally after whitespace — a UTC
///   offset: `Z`, `UTC`, `GMT`, `+HH`, `-H`, `+HHMM`, `+HH:MM`, `+HH:MM:SS`
///   (at most ±15:59:59), then optionally `BC`; or `infinity`, `-infinity`,
///   `epoch` (1970-01-01 00:00:00+00). More than 6 fractional digits round as
///   Postgres rounds them. A value without an offset, or with a zone name
///   (`Europe/Berlin`, `EST`), fails with [`KeyError::NoUtcOffset`]: Postgres
///   would read it in the session's `TimeZone`, which the proxy does not track.
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
        KeyType::Numeric => parse_pg_numeric(s).map(KeyValue::Numeric),
        KeyType::Date => parse_pg_date(s).map(KeyValue::Date),
        KeyType::Timestamptz => parse_pg_timestamptz(s).map(KeyValue::Timestamptz),
    }
}

/// Parses a binary-format `Bind` parameter.
///
/// Integer keys accept a big-endian integer of 2, 4 or 8 bytes whatever the
/// key's width (a client may bind an `int4` for a `bigint` column), range-checked
/// against the key type. A uuid must be exactly 16 bytes; text must be valid
/// UTF-8 without NUL bytes.
///
/// A numeric is Postgres' binary numeric: `int16 ndigits`, `int16 weight`,
/// `uint16 sign` (`0x0000` positive, `0x4000` negative, `0xC000` NaN, `0xD000`
/// Infinity, `0xF000` -Infinity), `uint16 dscale`, then `ndigits` base-10000
/// `int16` digits; digits beyond `dscale` are truncated away, as
/// `numeric_recv` does. A malformed numeric fails with
/// [`KeyError::BinaryFormat`] (Postgres reports the same SQLSTATE). A date is
/// a big-endian `int32` of days and a timestamptz a big-endian `int64` of
/// microseconds (both since 2000-01-01), range-checked as Postgres does.
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
        KeyType::Numeric => numeric_from_binary(b).map(KeyValue::Numeric),
        KeyType::Date => {
            let d = <[u8; 4]>::try_from(b)
                .map(i32::from_be_bytes)
                .map_err(|_| KeyError::BinaryFormat { param: None })?;
            if d == i32::MIN || d == i32::MAX || (DATE_MIN..DATE_END).contains(&d) {
                Ok(KeyValue::Date(d))
            } else {
                Err(KeyError::DateTimeOutOfRange {
                    what: "date out of range",
                    input: None,
                })
            }
        }
        KeyType::Timestamptz => {
            let t = <[u8; 8]>::try_from(b)
                .map(i64::from_be_bytes)
                .map_err(|_| KeyError::BinaryFormat { param: None })?;
            if t == i64::MIN || t == i64::MAX || (TIMESTAMP_MIN..TIMESTAMP_END).contains(&t) {
                Ok(KeyValue::Timestamptz(t))
            } else {
                Err(KeyError::DateTimeOutOfRange {
                    what: "timestamp out of range",
                    input: None,
                })
            }
        }
    }
}

/// A key given as an integer literal in SQL (`WHERE id = 42`).
///
/// For integer keys the value is not range-checked: Postgres compares an
/// out-of-range literal across types (`int4col = 3000000000` matches no row,
/// and an `INSERT` of it fails on the shard with Postgres' own error), so any
/// shard is a correct destination. For a text key the literal routes as its
/// decimal digits and for a numeric key as that integer; a uuid, date or
/// timestamptz key cannot be compared with an integer.
pub fn key_from_int(ty: KeyType, v: i64) -> Result<KeyValue, KeyError> {
    let no_operator = |key| KeyError::NoOperator {
        key,
        given: if i32::try_from(v).is_ok() {
            "integer"
        } else {
            "bigint"
        },
    };
    match ty {
        KeyType::SmallInt | KeyType::Int | KeyType::BigInt => Ok(KeyValue::Int(v)),
        KeyType::Text => Ok(KeyValue::Text(v.to_string())),
        KeyType::Numeric => Ok(KeyValue::Numeric(Numeric::from(v))),
        KeyType::Uuid | KeyType::Date | KeyType::Timestamptz => Err(no_operator(ty.pg_name())),
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

/// `s` without leading and trailing C-locale whitespace.
fn trim_c_space(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

/// A byte cursor for the hand-written parsers below; reads past the end as
/// `0`, which no grammar accepts.
struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Cursor<'a> {
        Cursor {
            b: s.as_bytes(),
            p: 0,
        }
    }

    fn peek_at(&self, k: usize) -> u8 {
        self.p
            .checked_add(k)
            .and_then(|i| self.b.get(i))
            .copied()
            .unwrap_or(0)
    }

    fn peek(&self) -> u8 {
        self.peek_at(0)
    }

    fn at_end(&self) -> bool {
        self.p >= self.b.len()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == c && !self.at_end();
        if hit {
            self.p += 1;
        }
        hit
    }

    fn skip_space(&mut self) {
        while is_c_space(self.peek()) {
            self.p += 1;
        }
    }

    /// Whether `word` (lowercase ASCII) comes next, case-insensitively, and
    /// is followed by a non-letter.
    fn is_word(&self, word: &str) -> bool {
        let end = self.p + word.len();
        self.b
            .get(self.p..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
            && !self.b.get(end).is_some_and(u8::is_ascii_alphabetic)
    }

    /// Consumes `word` if [`Cursor::is_word`].
    fn eat_word(&mut self, word: &str) -> bool {
        let hit = self.is_word(word);
        if hit {
            self.p += word.len();
        }
        hit
    }

    /// Consumes `prefix` (lowercase ASCII) case-insensitively, whatever
    /// follows it.
    fn eat_prefix(&mut self, prefix: &str) -> bool {
        let end = self.p + prefix.len();
        let hit = self
            .b
            .get(self.p..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(prefix.as_bytes()));
        if hit {
            self.p = end;
        }
        hit
    }

    /// A run of decimal digits of `min..=max` length (saturating value).
    fn digits(&mut self, min: usize, max: usize) -> Option<u64> {
        let start = self.p;
        let mut v: u64 = 0;
        while self.peek().is_ascii_digit() {
            v = v
                .saturating_mul(10)
                .saturating_add(u64::from(self.peek() - b'0'));
            self.p += 1;
        }
        (min..=max).contains(&(self.p - start)).then_some(v)
    }
}

/// `numeric_in` (Postgres 16+, decimal input): see [`key_from_text`].
fn parse_pg_numeric(s: &str) -> Result<Numeric, KeyError> {
    let syntax = || KeyError::InvalidSyntax {
        ty: "numeric",
        input: s.to_owned(),
    };
    let mut c = Cursor::new(s);
    c.skip_space();
    let numstart = c.p;
    let neg = c.peek() == b'-';
    if matches!(c.peek(), b'+' | b'-') {
        c.p += 1;
    }
    if !c.peek().is_ascii_digit() && c.peek() != b'.' {
        // NaN (never signed) or an infinity (optionally signed).
        let after_sign = c.p;
        c.p = numstart;
        let value = if c.eat_prefix("nan") {
            Numeric::nan()
        } else {
            c.p = after_sign;
            if !(c.eat_prefix("infinity") || c.eat_prefix("inf")) {
                return Err(syntax());
            }
            if neg {
                Numeric::neg_infinity()
            } else {
                Numeric::infinity()
            }
        };
        c.skip_space();
        return if c.at_end() { Ok(value) } else { Err(syntax()) };
    }
    // set_var_from_str.
    let mut have_dp = c.eat(b'.');
    if !c.peek().is_ascii_digit() {
        return Err(syntax());
    }
    let mut digits = Vec::new();
    let mut int_digits: i64 = 0;
    let mut dscale: i64 = 0;
    loop {
        let ch = c.peek();
        if ch.is_ascii_digit() {
            digits.push(ch);
            if have_dp {
                dscale += 1;
            } else {
                int_digits += 1;
            }
            c.p += 1;
        } else if ch == b'.' {
            if have_dp {
                return Err(syntax());
            }
            have_dp = true;
            c.p += 1;
            if c.peek() == b'_' {
                return Err(syntax());
            }
        } else if ch == b'_' {
            c.p += 1;
            if !c.peek().is_ascii_digit() {
                return Err(syntax());
            }
        } else {
            break;
        }
    }
    let mut exponent: i64 = 0;
    if matches!(c.peek(), b'e' | b'E') {
        c.p += 1;
        let exp_neg = c.peek() == b'-';
        if matches!(c.peek(), b'+' | b'-') {
            c.p += 1;
        }
        if !c.peek().is_ascii_digit() {
            return Err(syntax());
        }
        loop {
            let ch = c.peek();
            if ch.is_ascii_digit() {
                exponent = exponent * 10 + i64::from(ch - b'0');
                c.p += 1;
                if exponent > i64::from(i32::MAX / 2) {
                    return Err(KeyError::NumericOverflow);
                }
            } else if ch == b'_' {
                c.p += 1;
                if !c.peek().is_ascii_digit() {
                    return Err(syntax());
                }
            } else {
                break;
            }
        }
        if exp_neg {
            exponent = -exponent;
        }
    }
    c.skip_space();
    if !c.at_end() {
        return Err(syntax());
    }
    // make_result's limits, checked before building the value: the
    // base-10000 weight of the leading digit must fit an int16, the display
    // scale 14 bits. (Together they keep the point within ±2^18.)
    let point = int_digits + exponent;
    let lead = digits.iter().take_while(|&&ch| ch == b'0').count();
    let leading_exp = point - lead as i64 - 1;
    if (lead < digits.len() && leading_exp > NUMERIC_MAX_LEADING_EXP)
        || (dscale - exponent).max(0) > NUMERIC_DSCALE_MAX
    {
        return Err(KeyError::NumericOverflow);
    }
    Ok(Numeric::finite(neg, &digits, point))
}

/// `numeric_recv`: see [`key_from_binary`].
fn numeric_from_binary(b: &[u8]) -> Result<Numeric, KeyError> {
    let format = || KeyError::BinaryFormat { param: None };
    let [n0, n1, w0, w1, s0, s1, d0, d1, ref rest @ ..] = *b else {
        return Err(format());
    };
    let ndigits = usize::from(u16::from_be_bytes([n0, n1]));
    let weight = i64::from(i16::from_be_bytes([w0, w1]));
    let sign = u16::from_be_bytes([s0, s1]);
    let dscale = u16::from_be_bytes([d0, d1]);
    if rest.len() != ndigits * 2 || i64::from(dscale) > NUMERIC_DSCALE_MAX {
        return Err(format());
    }
    let mut digits = Vec::with_capacity(ndigits * 4);
    for pair in rest.chunks_exact(2) {
        let d = i16::from_be_bytes([pair[0], pair[1]]);
        if !(0..10_000).contains(&d) {
            return Err(format());
        }
        // 0..10_000, so every place is one decimal digit.
        let d = d as u16;
        digits.extend([1000, 100, 10, 1].map(|place| b'0' + (d / place % 10) as u8));
    }
    let neg = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Ok(Numeric::nan()),
        0xD000 => return Ok(Numeric::infinity()),
        0xF000 => return Ok(Numeric::neg_infinity()),
        _ => return Err(format()),
    };
    // trunc_var(value, dscale): keep the digits up to `dscale` places after
    // the point.
    let point = (weight + 1) * 4;
    let keep = point + i64::from(dscale);
    let keep = usize::try_from(keep).unwrap_or(0).min(digits.len());
    Ok(Numeric::finite(neg, &digits[..keep], point))
}

/// Days from 1970-01-01 to 2000-01-01.
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds per day.
const DAY_US: i64 = 86_400_000_000;
/// First valid date (4714-11-24 BC), in days since 2000-01-01.
const DATE_MIN: i32 = -2_451_545;
/// One past the last valid date (5874898-01-01).
const DATE_END: i32 = 2_145_031_949;
/// First valid timestamp (4714-11-24 00:00:00 BC UTC), in µs since 2000-01-01.
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
/// One past the last valid timestamp (294277-01-01 00:00:00 UTC).
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year
/// numbering: 1 BC is year 0), after H. Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both in range by construction (1..=31, 1..=12).
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Days since 2000-01-01 of a date as written (`bc`: the year is BC), or
/// `None` if a field is out of range (year 0, month 13, February 30, …).
fn checked_days(year: u64, month: u64, day: u64, bc: bool) -> Option<i64> {
    let year = i64::try_from(year)
        .ok()
        .filter(|y| (1..=i64::from(i32::MAX)).contains(y))?;
    let year = if bc { 1 - year } else { year };
    let month = u32::try_from(month).ok().filter(|m| (1..=12).contains(m))?;
    let month_days = match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day = u32::try_from(day)
        .ok()
        .filter(|d| (1..=month_days).contains(d))?;
    Some(days_from_civil(year, month, day) - UNIX_TO_PG_EPOCH_DAYS)
}

/// `YYYY-MM-DD` (year of 4+ digits, month and day of 1–2), not followed by a
/// digit.
fn parse_ymd(c: &mut Cursor<'_>) -> Option<(u64, u64, u64)> {
    let y = c.digits(4, usize::MAX)?;
    c.eat(b'-').then_some(())?;
    let m = c.digits(1, 2)?;
    c.eat(b'-').then_some(())?;
    let d = c.digits(1, 2)?;
    Some((y, m, d))
}

/// The special inputs shared by `date` and `timestamptz`.
enum Special {
    /// `infinity`.
    Infinity,
    /// `-infinity`.
    NegInfinity,
    /// `epoch`: 1970-01-01 (00:00:00 UTC).
    Epoch,
}

/// `infinity`, `-infinity` or `epoch`, case-insensitively (`t` is trimmed).
fn datetime_special(t: &str) -> Option<Special> {
    let is = |w: &str| t.eq_ignore_ascii_case(w);
    if is("infinity") {
        Some(Special::Infinity)
    } else if is("-infinity") {
        Some(Special::NegInfinity)
    } else if is("epoch") {
        Some(Special::Epoch)
    } else {
        None
    }
}

/// `date_in` for ISO dates: see [`key_from_text`].
fn parse_pg_date(s: &str) -> Result<i32, KeyError> {
    let syntax = || KeyError::InvalidSyntax {
        ty: "date",
        input: s.to_owned(),
    };
    let t = trim_c_space(s);
    match datetime_special(t) {
        Some(Special::Infinity) => return Ok(i32::MAX),
        Some(Special::NegInfinity) => return Ok(i32::MIN),
        Some(Special::Epoch) => return Ok(-(UNIX_TO_PG_EPOCH_DAYS as i32)),
        None => {}
    }
    let mut c = Cursor::new(t);
    let (y, m, d) = parse_ymd(&mut c).ok_or_else(syntax)?;
    c.skip_space();
    let bc = c.eat_word("bc");
    if !c.at_end() {
        return Err(syntax());
    }
    let days = checked_days(y, m, d, bc).ok_or_else(|| KeyError::DateTimeOutOfRange {
        what: "date/time field value out of range",
        input: Some(s.to_owned()),
    })?;
    i32::try_from(days)
        .ok()
        .filter(|d| (DATE_MIN..DATE_END).contains(d))
        .ok_or_else(|| KeyError::DateTimeOutOfRange {
            what: "date out of range",
            input: Some(s.to_owned()),
        })
}

/// A syntactically valid `timestamptz` text with valid fields.
enum Parsed {
    /// `infinity`, `-infinity` or `epoch`, in µs since 2000-01-01 UTC.
    Special(i64),
    /// A date and time as written, in µs since 2000-01-01 of the (unknown)
    /// local time, and the UTC offset in seconds east, if one was given.
    Local { local_us: i128, offset: Option<i64> },
}

/// `HH:MM[:SS[.f…]]` as (hours, minutes, seconds, microseconds): the
/// fraction is read as a double and rounded half to even, as
/// `ParseFractionalSecond` does.
fn parse_time(c: &mut Cursor<'_>) -> Option<(u64, u64, u64, i64)> {
    let h = c.digits(1, 2)?;
    c.eat(b':').then_some(())?;
    let m = c.digits(1, 2)?;
    let (mut s, mut us) = (0, 0);
    if c.eat(b':') {
        s = c.digits(1, 2)?;
        if c.peek() == b'.' {
            let start = c.p;
            c.p += 1;
            c.digits(1, usize::MAX)?;
            let frac: f64 = std::str::from_utf8(&c.b[start..c.p]).ok()?.parse().ok()?;
            // 0 <= frac < 1, so this is 0..=1_000_000.
            us = (frac * 1e6).round_ties_even() as i64;
        }
    }
    Some((h, m, s, us))
}

/// A numeric UTC offset after its sign, as `DecodeTimezone` reads it: `H`,
/// `HH`, `HMM`, `HHMM`, `H:MM` or `H:MM:SS`, as (hours, minutes, seconds),
/// unchecked.
fn parse_offset(c: &mut Cursor<'_>) -> Option<(u64, u64, u64)> {
    let start = c.p;
    let hr = c.digits(1, usize::MAX)?;
    if c.eat(b':') {
        let min = c.digits(1, usize::MAX)?;
        let sec = if c.eat(b':') {
            c.digits(1, usize::MAX)?
        } else {
            0
        };
        Some((hr, min, sec))
    } else if c.p - start >= 3 {
        Some((hr / 100, hr % 100, 0))
    } else {
        Some((hr, 0, 0))
    }
}

/// Whether `rest` looks like a time zone name or abbreviation
/// (`Europe/Berlin`, `EST`, `Etc/GMT+5`): one word starting with a letter.
fn is_zone_name(rest: &[u8]) -> bool {
    rest.first().is_some_and(u8::is_ascii_alphabetic)
        && rest.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'/' | b'+' | b'-' | b':' | b'.')
        })
}

/// The `timestamptz` grammar of [`key_from_text`], without the final
/// offset-presence and range checks. Syntax is checked first, then the time
/// fields, the offset and the date, roughly the order of Postgres' errors.
fn parse_timestamptz_text(s: &str) -> Result<Parsed, KeyError> {
    let syntax = || KeyError::InvalidSyntax {
        ty: TIMESTAMPTZ,
        input: s.to_owned(),
    };
    let field = || KeyError::DateTimeOutOfRange {
        what: "date/time field value out of range",
        input: Some(s.to_owned()),
    };
    let t = trim_c_space(s);
    match datetime_special(t) {
        Some(Special::Infinity) => return Ok(Parsed::Special(i64::MAX)),
        Some(Special::NegInfinity) => return Ok(Parsed::Special(i64::MIN)),
        Some(Special::Epoch) => return Ok(Parsed::Special(-UNIX_TO_PG_EPOCH_DAYS * DAY_US)),
        None => {}
    }
    let mut c = Cursor::new(t);
    let (y, m, d) = parse_ymd(&mut c).ok_or_else(syntax)?;
    let mut time = (0, 0, 0, 0);
    if matches!(c.peek(), b'T' | b't') && c.peek_at(1).is_ascii_digit() {
        c.p += 1;
        time = parse_time(&mut c).ok_or_else(syntax)?;
    } else if is_c_space(c.peek()) {
        let save = c.p;
        c.skip_space();
        if c.peek().is_ascii_digit() {
            time = parse_time(&mut c).ok_or_else(syntax)?;
        } else {
            c.p = save;
        }
    } else if c.peek() == b'-' {
        // `2025-03-01-05` is one malformed date field to Postgres.
        return Err(syntax());
    }
    let before_space = c.p;
    c.skip_space();
    // (negative, hours, minutes, seconds)
    let mut offset = None;
    let mut zone_name = false;
    let sign = c.peek();
    if matches!(sign, b'+' | b'-') {
        c.p += 1;
        let (hr, min, sec) = parse_offset(&mut c).ok_or_else(syntax)?;
        offset = Some((sign == b'-', hr, min, sec));
    } else if c.eat_word("z") || c.eat_word("utc") || c.eat_word("gmt") {
        offset = Some((false, 0, 0, 0));
    } else if c.p > before_space && !c.is_word("bc") && !c.is_word("t") && is_zone_name(&c.b[c.p..])
    {
        // A zone name or abbreviation: Postgres would resolve it with its
        // time zone database, which the proxy does not have.
        zone_name = true;
    }
    let bc = if zone_name {
        false
    } else {
        c.skip_space();
        let bc = c.eat_word("bc");
        c.skip_space();
        if !c.at_end() {
            return Err(syntax());
        }
        bc
    };
    // time_overflows: 24:00:00 and a leap second are allowed, but not past
    // the end of the day.
    let (h, mi, se, us) = time;
    if h > 24 || mi >= 60 || se > 60 {
        return Err(field());
    }
    // All fields are at most two digits, so this is small.
    let time_us = ((h * 60 + mi) * 60 + se) as i64 * 1_000_000 + us;
    if time_us > DAY_US {
        return Err(field());
    }
    let offset = match offset {
        Some((_, hr, min, sec)) if hr > 15 || min >= 60 || sec >= 60 => {
            return Err(KeyError::TimeZoneOutOfRange {
                input: s.to_owned(),
            })
        }
        // At most 15:59:59, so this is small.
        Some((neg, hr, min, sec)) => {
            let secs = (hr * 3600 + min * 60 + sec) as i64;
            Some(if neg { -secs } else { secs })
        }
        None => None,
    };
    let days = checked_days(y, m, d, bc).ok_or_else(field)?;
    Ok(Parsed::Local {
        local_us: i128::from(days) * i128::from(DAY_US) + i128::from(time_us),
        offset,
    })
}

/// `timestamptz_in` for ISO timestamps: see [`key_from_text`].
fn parse_pg_timestamptz(s: &str) -> Result<i64, KeyError> {
    match parse_timestamptz_text(s)? {
        Parsed::Special(t) => Ok(t),
        Parsed::Local { offset: None, .. } => Err(KeyError::NoUtcOffset {
            input: s.to_owned(),
        }),
        Parsed::Local {
            local_us,
            offset: Some(offset),
        } => i64::try_from(local_us - i128::from(offset) * 1_000_000)
            .ok()
            .filter(|t| (TIMESTAMP_MIN..TIMESTAMP_END).contains(t))
            .ok_or_else(|| KeyError::DateTimeOutOfRange {
                what: "timestamp out of range",
                input: Some(s.to_owned()),
            }),
    }
}

/// Writes `YYYY-MM-DD` of days since 2000-01-01 and returns whether the year
/// is BC (the caller appends ` BC` after any time part, as Postgres does).
fn fmt_ymd(f: &mut fmt::Formatter<'_>, days: i64) -> Result<bool, fmt::Error> {
    let (y, m, d) = civil_from_days(days + UNIX_TO_PG_EPOCH_DAYS);
    let (year, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    write!(f, "{year:04}-{m:02}-{d:02}")?;
    Ok(bc)
}

/// A `date` as Postgres prints it (ISO `DateStyle`).
fn fmt_date(f: &mut fmt::Formatter<'_>, d: i32) -> fmt::Result {
    match d {
        i32::MIN => f.write_str("-infinity"),
        i32::MAX => f.write_str("infinity"),
        _ => {
            if fmt_ymd(f, i64::from(d))? {
                f.write_str(" BC")?;
            }
            Ok(())
        }
    }
}

/// A `timestamptz` as Postgres prints it with `TimeZone` UTC (ISO
/// `DateStyle`): `2025-03-01 00:00:00.5+00`.
fn fmt_timestamptz(f: &mut fmt::Formatter<'_>, t: i64) -> fmt::Result {
    match t {
        i64::MIN => f.write_str("-infinity"),
        i64::MAX => f.write_str("infinity"),
        _ => {
            let bc = fmt_ymd(f, t.div_euclid(DAY_US))?;
            let us = t.rem_euclid(DAY_US);
            let secs = us / 1_000_000;
            write!(
                f,
                " {:02}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            )?;
            let frac = us % 1_000_000;
            if frac != 0 {
                let digits = format!("{frac:06}");
                write!(f, ".{}", digits.trim_end_matches('0'))?;
            }
            f.write_str("+00")?;
            if bc {
                f.write_str(" BC")?;
            }
            Ok(())
        }
    }
}

/// What a decimal literal compared with a key means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumericLiteral {
    /// It equals this key (`id = 2.0` is `id = 2`).
    Value(KeyValue),
    /// No key of the type can equal it (`id = 1.5`, or out of range).
    Nothing,
    /// Not decided here (an exponent form): it pins nothing.
    Unknown,
}

/// Evaluates a decimal literal against an integer key of type `ty`.
pub fn numeric_literal(ty: KeyType, text: &str) -> NumericLiteral {
    if !ty.is_integer() {
        return NumericLiteral::Nothing;
    }
    if text.contains(['e', 'E']) {
        return NumericLiteral::Unknown;
    }
    let (int_part, frac) = text.split_once('.').unwrap_or((text, ""));
    if !frac.bytes().all(|b| b == b'0') {
        return NumericLiteral::Nothing;
    }
    match key_from_text(ty, int_part) {
        Ok(k) => NumericLiteral::Value(k),
        Err(_) => NumericLiteral::Nothing,
    }
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
            "timestamp",
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

    fn num(s: &str) -> Numeric {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn date(s: &str) -> Result<i32, KeyError> {
        key_from_text(KeyType::Date, s).map(|k| match k {
            KeyValue::Date(d) => d,
            other => panic!("{other:?}"),
        })
    }

    fn tstz(s: &str) -> Result<i64, KeyError> {
        key_from_text(KeyType::Timestamptz, s).map(|k| match k {
            KeyValue::Timestamptz(t) => t,
            other => panic!("{other:?}"),
        })
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `(message, sqlstate)` of a failed parse.
    fn fails(r: Result<impl fmt::Debug, KeyError>) -> (String, &'static str) {
        let e = r.unwrap_err();
        (e.to_string(), e.sqlstate())
    }

    const US_PER_SEC: i64 = 1_000_000;

    #[test]
    fn new_type_names() {
        for (s, t) in [
            ("numeric", KeyType::Numeric),
            ("DECIMAL", KeyType::Numeric),
            ("date", KeyType::Date),
            (" Date ", KeyType::Date),
            ("timestamptz", KeyType::Timestamptz),
            ("TimestampTZ", KeyType::Timestamptz),
            ("timestamp with time zone", KeyType::Timestamptz),
            ("Timestamp  With\tTime Zone", KeyType::Timestamptz),
        ] {
            assert_eq!(KeyType::parse(s), Some(t), "{s}");
        }
        for s in [
            "numeric(10,2)",
            "timestamp",
            "timestamp without time zone",
            "timestamp with time",
            "timestamp with time zone zone",
            "time with time zone",
            "datetime",
        ] {
            assert_eq!(KeyType::parse(s), None, "{s}");
        }
        for name in [
            "numeric",
            "decimal",
            "date",
            "timestamptz",
            "timestamp with time zone",
        ] {
            assert!(KeyType::ACCEPTED_NAMES.contains(name), "{name}");
            assert!(KeyType::parse(name).is_some(), "{name}");
        }
        assert_eq!(KeyType::Numeric.to_string(), "numeric");
        assert_eq!(KeyType::Date.pg_name(), "date");
        assert_eq!(KeyType::Timestamptz.pg_name(), "timestamp with time zone");
        assert!(!KeyType::Numeric.is_integer());
    }

    #[test]
    fn colocation_classes() {
        let all = [
            KeyType::SmallInt,
            KeyType::Int,
            KeyType::BigInt,
            KeyType::Text,
            KeyType::Uuid,
            KeyType::Numeric,
            KeyType::Date,
            KeyType::Timestamptz,
        ];
        for a in all {
            for b in all {
                let same = a == b || (a.is_integer() && b.is_integer());
                assert_eq!(
                    a.colocation_class() == b.colocation_class(),
                    same,
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn numerics_from_text() {
        for (s, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.000", "0"),
            ("0e100", "0"),
            ("+0.0e-5", "0"),
            ("42", "42"),
            ("  -1.50e+2\n", "-150"),
            (".5", "0.5"),
            ("5.", "5"),
            ("001.5", "1.5"),
            ("1.50", "1.5"),
            ("0.15e1", "1.5"),
            ("15E-1", "1.5"),
            ("1e20", "100000000000000000000"),
            ("0.0001", "0.0001"),
            ("1e-4", "0.0001"),
            ("-12345.678", "-12345.678"),
            ("123456789.000000001", "123456789.000000001"),
            ("1_000.000_1", "1000.0001"),
            ("1e1_0", "10000000000"),
            ("120e-1", "12"),
            ("NaN", "NaN"),
            (" nan ", "NaN"),
            ("Infinity", "Infinity"),
            ("+infinity", "Infinity"),
            ("-inf", "-Infinity"),
            ("\t-INF\t", "-Infinity"),
        ] {
            assert_eq!(num(s).to_string(), want, "{s:?}");
            assert_eq!(
                key_from_text(KeyType::Numeric, s),
                Ok(KeyValue::Numeric(num(want))),
                "{s:?}"
            );
        }
        for s in [
            "",
            " ",
            ".",
            "+",
            "-",
            "1e",
            "1e+",
            "1e-",
            "e5",
            "- 1",
            "+nan",
            "-NaN",
            "nan1",
            "1.2.3",
            "1_",
            "_1",
            "1__0",
            "1._5",
            "1_.5",
            "._5",
            "1e_5",
            "1e5_",
            "1e5.5",
            "1 2",
            "0x10",
            "abc",
            "infinityx",
            "infinit",
            "inf inity",
            "١",
            "1,5",
            "$1",
            "1e5e5",
        ] {
            assert_eq!(
                fails(key_from_text(KeyType::Numeric, s)),
                (
                    format!("invalid input syntax for type numeric: \"{s}\""),
                    "22P02"
                ),
                "{s:?}"
            );
        }
    }

    #[test]
    fn numeric_limits() {
        let overflow = ("value overflows numeric format".to_owned(), "22003");
        // 131072 digits before the point (base-10000 weight 32767) and a
        // scale of 16383 are the most Postgres stores.
        assert_eq!(num("1e131071").to_string().len(), 131_072);
        assert_eq!(num("-9.9e131071").to_string().len(), 131_073);
        assert_eq!(num("1e-16383").to_string().len(), 16_385);
        assert_eq!(num(&format!("1.{}", "0".repeat(16_383))), num("1"));
        for s in [
            "1e131072".to_owned(),
            "10e131071".to_owned(),
            "1e-16384".to_owned(),
            "0e-16384".to_owned(),
            format!("1.{}", "0".repeat(16_384)),
            format!("1{}", "0".repeat(131_072)),
            "1e1073741824".to_owned(),
            "1e-99999999999999999999".to_owned(),
        ] {
            assert_eq!(
                fails(key_from_text(KeyType::Numeric, &s)),
                overflow,
                "{}",
                &s[..s.len().min(20)]
            );
        }
        // Leading zeros are not digits of the value.
        assert_eq!(num(&format!("{}1e131071", "0".repeat(10))), num("1e131071"));
    }

    #[test]
    fn numeric_normalization() {
        let a = num("1.50");
        for s in ["1.5", "001.5", "+1.500", "0.15e1", "15e-1", "1_5e-1"] {
            let b = num(s);
            assert_eq!(a, b, "{s}");
            assert_eq!(
                KeyValue::Numeric(a.clone()).hash64(),
                KeyValue::Numeric(b).hash64()
            );
        }
        assert_ne!(num("1.5"), num("1.05"));
        assert_ne!(num("1.5"), num("-1.5"));
        assert_ne!(num("15"), num("1.5"));
        assert_eq!(num("-0"), num("0"));
        assert_eq!(Numeric::from(0), num("0.000"));
        assert_eq!(Numeric::from(-1500), num("-1.5e3"));
        assert_eq!(Numeric::from(i64::MIN), num("-9223372036854775808"));
        assert_eq!(Numeric::from(i64::MAX), num("9223372036854775807"));
        assert!(num("NaN").is_nan() && !num("NaN").is_finite());
        assert!(!num("inf").is_finite() && !num("inf").is_nan());
        assert!(num("-1").is_finite());
    }

    #[test]
    fn numerics_from_binary() {
        // numeric_send output of Postgres 15.
        for (hex, want) in [
            ("0000000000000000", "0"),
            ("000200000000000100011388", "1.5"),
            ("000200000000000200011388", "1.50"),
            ("0003000140000003000109291a7c", "-12345.678"),
            ("00010005000000000001", "1e20"),
            ("0001ffff000000040001", "0.0001"),
            ("00000000c0000000", "NaN"),
            ("00000000d0000020", "Infinity"),
            ("00000000f0000020", "-Infinity"),
            ("0000000000000003", "-0.000"),
            (
                "0006000200000009000109291a850000000003e8",
                "123456789.000000001",
            ),
        ] {
            assert_eq!(
                key_from_binary(KeyType::Numeric, &unhex(hex)),
                Ok(KeyValue::Numeric(num(want))),
                "{hex}"
            );
        }
        let bin = |ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[i16]| {
            let mut b = Vec::new();
            for v in [ndigits, weight as u16, sign, dscale] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            for d in digits {
                b.extend_from_slice(&d.to_be_bytes());
            }
            key_from_binary(KeyType::Numeric, &b)
        };
        let ok = |r: Result<KeyValue, KeyError>, want: &str| {
            assert_eq!(r, Ok(KeyValue::Numeric(num(want))), "{want}")
        };
        // Digits beyond dscale are truncated (not rounded), as numeric_recv does.
        ok(bin(1, -1, 0, 2, &[1299]), "0.12");
        ok(bin(2, 0, 0x4000, 0, &[7, 9999]), "-7");
        ok(bin(1, -2, 0, 3, &[5]), "0");
        ok(bin(1, -2, 0x4000, 8, &[5]), "-5e-8");
        ok(bin(1, -1, 0x4000, 4, &[5]), "-0.0005");
        // Leading and trailing zero digits, negative zero.
        ok(bin(3, 2, 0, 0, &[0, 5, 0]), "50000");
        ok(bin(2, 0, 0x4000, 4, &[0, 0]), "0");
        ok(bin(1, 32767, 0, 0, &[1]), "1e131068");
        ok(bin(1, -32768, 0, 16383, &[1]), "0");
        // Special values ignore the other fields but still check digits.
        ok(bin(1, 3, 0xC000, 5, &[42]), "NaN");
        let format = |r: Result<KeyValue, KeyError>| {
            assert_eq!(
                fails(r),
                (
                    "incorrect binary data format in bind parameter".to_owned(),
                    "22P03"
                )
            )
        };
        format(bin(1, 0, 0, 0, &[10_000]));
        format(bin(1, 0, 0, 0, &[-1]));
        format(bin(1, 0, 0xC000, 0, &[-1]));
        format(bin(1, 0, 0x8000, 0, &[1]));
        format(bin(1, 0, 0x4001, 0, &[1]));
        format(bin(1, 0, 0, 0x4000, &[1]));
        format(bin(2, 0, 0, 0, &[1]));
        format(bin(0, 0, 0, 0, &[1]));
        format(bin(0xffff, 0, 0, 0, &[1]));
        for short in [&[][..], &[0][..], &[0; 7][..]] {
            format(key_from_binary(KeyType::Numeric, short));
        }
    }

    #[test]
    fn dates_from_text() {
        for (s, want) in [
            ("2000-01-01", 0),
            ("2025-03-01", 9191),
            (" 2025-3-1\t", 9191),
            ("02025-03-01", 9191),
            ("2024-02-29", 8825),
            ("2000-02-29", 59),
            ("1970-01-01", -10957),
            ("epoch", -10957),
            ("EPOCH", -10957),
            ("0001-01-01", -730119),
            ("0001-12-31 BC", -730120),
            ("0001-12-31bc", -730120),
            ("0001-02-29 BC", -730426),
            ("0005-02-29 BC", -731887),
            ("4714-11-24 BC", DATE_MIN),
            ("5874897-12-31", DATE_END - 1),
            ("infinity", i32::MAX),
            (" Infinity ", i32::MAX),
            ("-INFINITY", i32::MIN),
        ] {
            assert_eq!(date(s), Ok(want), "{s:?}");
        }
        for s in [
            "",
            " ",
            "2025/03/01",
            "03/01/2025",
            "2025-03",
            "2025-03-",
            "2025-03-01x",
            "2025-03-01 12:00",
            "2025-03-01T00:00",
            "2025-03-01+00",
            "2025-03-001",
            "2025-003-01",
            "25-03-01",
            "999-01-01",
            "20250301",
            "March 1, 2025",
            "today",
            "now",
            "+infinity",
            "infinity x",
            "2025-03-01 BCE",
            "2025-03-01 AD",
            "２０２５-03-01",
        ] {
            assert_eq!(
                fails(date(s)),
                (
                    format!("invalid input syntax for type date: \"{s}\""),
                    "22007"
                ),
                "{s:?}"
            );
        }
        for s in [
            "2025-02-29",
            "1900-02-29",
            "2025-00-10",
            "2025-13-01",
            "2025-01-00",
            "2025-01-32",
            "2025-04-31",
            "0000-01-01",
            "0003-02-29 BC",
            "0004-02-29 BC",
            "99999999999-01-01",
        ] {
            assert_eq!(
                fails(date(s)),
                (
                    format!("date/time field value out of range: \"{s}\""),
                    "22008"
                ),
                "{s:?}"
            );
        }
        for s in ["4714-11-23 BC", "5874898-01-01", "2147483647-01-01"] {
            assert_eq!(
                fails(date(s)),
                (format!("date out of range: \"{s}\""), "22008"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn dates_from_binary_and_back() {
        // date_send output of Postgres 15.
        for (hex, days) in [
            ("000023e7", 9191),
            ("00000000", 0),
            ("ffffd533", -10957),
            ("ffda97a7", DATE_MIN),
            ("7fda970c", DATE_END - 1),
            ("7fffffff", i32::MAX),
            ("80000000", i32::MIN),
        ] {
            assert_eq!(
                key_from_binary(KeyType::Date, &unhex(hex)),
                Ok(KeyValue::Date(days))
            );
            let mut buf = Vec::new();
            KeyValue::Date(days).canonical_bytes(&mut buf);
            assert_eq!(buf, unhex(hex));
        }
        for d in [DATE_MIN - 1, DATE_END, i32::MIN + 1, i32::MAX - 1] {
            assert_eq!(
                fails(key_from_binary(KeyType::Date, &d.to_be_bytes())),
                ("date out of range".to_owned(), "22008")
            );
        }
        for bad in [&[][..], &[0; 3][..], &[0; 8][..]] {
            assert_eq!(
                fails(key_from_binary(KeyType::Date, bad)).1,
                "22P03",
                "{bad:?}"
            );
        }
        for (days, shown) in [
            (9191, "2025-03-01"),
            (0, "2000-01-01"),
            (-730119, "0001-01-01"),
            (-730120, "0001-12-31 BC"),
            (DATE_MIN, "4714-11-24 BC"),
            (DATE_END - 1, "5874897-12-31"),
            (i32::MAX, "infinity"),
            (i32::MIN, "-infinity"),
        ] {
            let k = KeyValue::Date(days);
            assert_eq!(k.to_string(), shown);
            assert_eq!(k.sql_literal(), format!("'{shown}'::date"));
            assert_eq!(date(shown), Ok(days), "{shown}");
        }
    }

    #[test]
    fn timestamptz_from_text() {
        let base = 794_102_400 * US_PER_SEC; // 2025-03-01 00:00:00+00
        let h = 3600 * US_PER_SEC;
        for (s, want) in [
            ("2025-03-01 00:00:00+00", base),
            ("2025-03-01+00", base),
            ("2025-03-01 +00", base),
            ("2025-03-01Z", base),
            ("2025-03-01 utc", base),
            ("2025-03-01 00:00Z", base),
            ("2025-03-01T00:00:00Z", base),
            ("2025-03-01t00:00z", base),
            ("  2025-03-01   00:00:00 GMT  ", base),
            ("2025-3-1 0:0:0+0", base),
            ("2025-03-01 10:00+10", base),
            ("2025-03-01 10:00+1000", base),
            ("2025-03-01 10:00 +10:00", base),
            ("2025-02-28 14:00-10", base),
            ("2025-02-28 14:00:00 -10:00", base),
            ("2025-03-01 05:30+0530", base),
            ("2025-03-01 05:30+530", base),
            ("2025-03-01 05:30+05:30", base),
            ("2025-03-01 05:30:15+05:30:15", base),
            ("2025-02-28 08:00:01-15:59:59", base),
            ("2025-03-01 15:59:59+15:59:59", base),
            ("2025-03-01 00:05+00000005", base),
            ("2025-02-28 24:00:00+00", base),
            ("2025-02-28 23:59:60+00", base),
            ("2025-02-28 23:59:59.9999999+00", base),
            (
                "2025-03-01 10:30:15.5+00",
                base + 10 * h + 1815 * US_PER_SEC + 500_000,
            ),
            (
                "2025-03-01 12:30:60.5+00",
                base + 12 * h + 31 * 60 * US_PER_SEC + 500_000,
            ),
            ("2025-03-01 00:00:00.000001+00", base + 1),
            // More than 6 fractional digits: read as a double, rounded half
            // to even, as Postgres does.
            ("2025-03-01 00:00:00.1234565+00", base + 123_456),
            ("2025-03-01 00:00:00.1234575+00", base + 123_458),
            ("2025-03-01 00:00:00.0000005+00", base),
            ("2025-03-01 00:00:00.0000015+00", base + 2),
            ("2025-03-01 00:00:00.12345650001+00", base + 123_457),
            (
                "2025-03-01 00:00:00.123456789012345678901234567890+00",
                base + 123_457,
            ),
            ("2025-03-01 00:00:00+00 BC", -126_980_006_400 * US_PER_SEC),
            ("2000-01-01 00:00:00+00", 0),
            ("1999-12-31 23:59:59.999999+00", -1),
            ("epoch", -946_684_800 * US_PER_SEC),
            ("1970-01-01 00:00:00+00", -946_684_800 * US_PER_SEC),
            (" Infinity ", i64::MAX),
            ("-infinity", i64::MIN),
            ("294276-12-31 23:59:59.999999+00", TIMESTAMP_END - 1),
            ("294277-01-01 00:00+01", TIMESTAMP_END - h),
            ("4714-11-24 00:00:00+00 BC", TIMESTAMP_MIN),
            ("0001-01-01 00:00+15", -63_082_335_600 * US_PER_SEC),
        ] {
            assert_eq!(tstz(s), Ok(want), "{s:?}");
        }
        // Postgres' own binary form of two of them (timestamptz_send).
        assert_eq!(
            tstz("2025-03-01T10:30:15.5+05:30").map(i64::to_be_bytes),
            Ok(<[u8; 8]>::try_from(unhex("0002d23f914656e0")).unwrap())
        );
        assert_eq!(tstz("2025-03-01 00:00:00+00"), Ok(794_102_400_000_000));

        for s in [
            "",
            "2025-03-01-05",
            "2025-03-01 10",
            "2025-03-01 10+00",
            "2025-03-01 10:00:00.+00",
            "2025-03-01 10:00:00:00+00",
            "2025-03-01 10:00.5+00",
            "2025-03-01 100:00+00",
            "2025-03-01 10:000+00",
            "2025-03-01T 10:00+00",
            "2025-03-01 T10:00+00",
            "2025-03-01 10:00EST",
            "2025-03-01 10:00+",
            "2025-03-01 10:00+ 05",
            "2025-03-01 10:00+05:",
            "2025-03-01 10:00+05:30:",
            "2025-03-01 10:00+05.5",
            "2025-03-01 10:00+00 UTC",
            "2025-03-01 10:00+00Z",
            "2025-03-01 10:00 UTC+00",
            "2025-03-01 10:00+00 BC x",
            "2025/03/01 10:00+00",
            "+infinity",
            "25-03-01 10:00+00",
        ] {
            assert_eq!(
                fails(tstz(s)),
                (
                    format!("invalid input syntax for type timestamp with time zone: \"{s}\""),
                    "22007"
                ),
                "{s:?}"
            );
        }
        for s in [
            "2025-02-29 00:00+00",
            "2025-03-01 25:00+00",
            "2025-03-01 24:00:00.000001+00",
            "2025-03-01 24:01+00",
            "2025-03-01 23:60:00+00",
            "2025-03-01 23:59:61+00",
            "2025-03-01 23:59:60.5+00",
            "0000-01-01 00:00+00",
        ] {
            assert_eq!(
                fails(tstz(s)),
                (
                    format!("date/time field value out of range: \"{s}\""),
                    "22008"
                ),
                "{s:?}"
            );
        }
        for s in [
            "2025-03-01 10:00+16",
            "2025-03-01 10:00-16:00",
            "2025-03-01 10:00+05:60",
            "2025-03-01 10:00+05:00:60",
            "2025-03-01 10:00+1560",
            "2025-03-01 10:00+05305",
            "2025-03-01 10:00+99999999999999999999999",
        ] {
            assert_eq!(
                fails(tstz(s)),
                (
                    format!("time zone displacement out of range: \"{s}\""),
                    "22009"
                ),
                "{s:?}"
            );
        }
        for s in [
            "294277-01-01 00:00+00",
            "294276-12-31 23:59:59.999999-01",
            "4714-11-23 23:59:59.999999+00 BC",
            "5874898-01-01 00:00+00",
            "2147483647-12-31 00:00+00",
        ] {
            assert_eq!(
                fails(tstz(s)),
                (format!("timestamp out of range: \"{s}\""), "22008"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn timestamptz_needs_a_utc_offset() {
        let msg = |input: &str, example: &str| {
            (
                format!(
                    "timestamptz shard key \"{input}\" has no UTC offset: the proxy cannot know \
                     the session time zone; write it with an offset ({example}) or bind it as a \
                     binary timestamptz parameter"
                ),
                "22007",
            )
        };
        for (s, example) in [
            ("2025-03-01", "2025-03-01 00:00:00+00"),
            (" 2025-03-01 ", "2025-03-01 00:00:00+00"),
            ("2025-03-01 10:30", "2025-03-01 10:30:00+00"),
            ("2025-03-01T10:30:15.25", "2025-03-01 10:30:15.25+00"),
            ("2025-02-28 24:00", "2025-03-01 00:00:00+00"),
            ("0001-12-31 09:00:00 BC", "0001-12-31 09:00:00+00 BC"),
            ("2025-03-01 10:00 Europe/Berlin", "2025-03-01 10:00:00+00"),
            ("2025-03-01 10:00 EST", "2025-03-01 10:00:00+00"),
            ("2025-03-01 10:00 zulu", "2025-03-01 10:00:00+00"),
            ("294277-01-01 00:00", "294277-01-01 00:00:00+00"),
        ] {
            assert_eq!(fails(tstz(s)), msg(s, example), "{s:?}");
        }
        // Field errors come first.
        assert_eq!(fails(tstz("2025-02-30")).1, "22008");
        assert_eq!(fails(tstz("2025-03-01 25:00")).1, "22008");
    }

    #[test]
    fn timestamptz_binary_and_display() {
        // timestamptz_send output of Postgres 15.
        for hex in [
            "0002d23b5f77a000",
            "0002d23f914656e0",
            "fffca2fec4c82000",
            "7fffff5bb3b29fff",
            "fd0f7cc1411fa000",
            "0000000000000001",
            "ffffffffffffffff",
            "7fffffffffffffff",
            "8000000000000000",
        ] {
            let b = unhex(hex);
            let t = i64::from_be_bytes(<[u8; 8]>::try_from(&b[..]).unwrap());
            let k = key_from_binary(KeyType::Timestamptz, &b).unwrap();
            assert_eq!(k, KeyValue::Timestamptz(t));
            let mut buf = Vec::new();
            k.canonical_bytes(&mut buf);
            assert_eq!(buf, b);
            assert_eq!(k.hash64(), hash_bytes(&b));
            // What Postgres prints parses back to the same value.
            assert_eq!(tstz(&k.to_string()), Ok(t), "{k}");
        }
        for t in [TIMESTAMP_MIN - 1, TIMESTAMP_END, i64::MIN + 1, i64::MAX - 1] {
            assert_eq!(
                fails(key_from_binary(KeyType::Timestamptz, &t.to_be_bytes())),
                ("timestamp out of range".to_owned(), "22008")
            );
        }
        for bad in [&[][..], &[0; 4][..], &[0; 9][..]] {
            assert_eq!(fails(key_from_binary(KeyType::Timestamptz, bad)).1, "22P03");
        }
        for (t, shown) in [
            (794_102_400_000_000, "2025-03-01 00:00:00+00"),
            (794_120_415_500_000, "2025-03-01 05:00:15.5+00"),
            (1, "2000-01-01 00:00:00.000001+00"),
            (-1, "1999-12-31 23:59:59.999999+00"),
            (TIMESTAMP_END - 1, "294276-12-31 23:59:59.999999+00"),
            (TIMESTAMP_MIN, "4714-11-24 00:00:00+00 BC"),
            (i64::MAX, "infinity"),
            (i64::MIN, "-infinity"),
        ] {
            let k = KeyValue::Timestamptz(t);
            assert_eq!(k.to_string(), shown);
            assert_eq!(k.sql_literal(), format!("'{shown}'::timestamptz"));
        }
    }

    #[test]
    fn new_types_canonical_bytes_and_literals() {
        for (s, canonical) in [
            ("-12.50", "-12.5"),
            ("0.0", "0"),
            ("1e20", "100000000000000000000"),
            ("1e-4", "0.0001"),
            ("NaN", "NaN"),
            ("inf", "Infinity"),
            ("-inf", "-Infinity"),
            ("-1e70", &format!("-1{}", "0".repeat(70))),
            ("1e-70", &format!("0.{}1", "0".repeat(69))),
        ] {
            let k = key_from_text(KeyType::Numeric, s).unwrap();
            let mut buf = Vec::new();
            k.canonical_bytes(&mut buf);
            assert_eq!(buf, canonical.as_bytes(), "{s}");
            assert_eq!(k.hash64(), hash_bytes(canonical.as_bytes()), "{s}");
            assert_eq!(k.to_string(), canonical);
        }
        // Pinned: the canonical forms never change.
        assert_eq!(KeyValue::Numeric(num("12.5")).hash64(), hash_bytes(b"12.5"));
        assert_eq!(
            KeyValue::Date(9191).hash64(),
            hash_bytes(&[0, 0, 0x23, 0xe7])
        );
        assert_eq!(
            KeyValue::Timestamptz(1).hash64(),
            hash_bytes(&[0, 0, 0, 0, 0, 0, 0, 1])
        );
        assert_eq!(KeyValue::Numeric(num("12.5")).sql_literal(), "12.5");
        assert_eq!(KeyValue::Numeric(num("-0.001")).sql_literal(), "-0.001");
        assert_eq!(
            KeyValue::Numeric(num("nan")).sql_literal(),
            "'NaN'::numeric"
        );
        assert_eq!(
            KeyValue::Numeric(num("-inf")).sql_literal(),
            "'-Infinity'::numeric"
        );
        assert_eq!(KeyValue::Date(9191).sql_literal(), "'2025-03-01'::date");
        assert_eq!(
            KeyValue::Timestamptz(794_102_400_000_000).sql_literal(),
            "'2025-03-01 00:00:00+00'::timestamptz"
        );
    }

    #[test]
    fn new_types_from_int_literals() {
        assert_eq!(
            key_from_int(KeyType::Numeric, -42),
            Ok(KeyValue::Numeric(num("-42.0")))
        );
        assert_eq!(
            key_from_int(KeyType::Numeric, 1000),
            key_from_text(KeyType::Numeric, "1e3")
        );
        let e = key_from_int(KeyType::Date, 42).unwrap_err();
        assert_eq!(e.to_string(), "operator does not exist: date = integer");
        assert_eq!(e.sqlstate(), "42883");
        let e = key_from_int(KeyType::Timestamptz, 1 << 40).unwrap_err();
        assert_eq!(
            e.to_string(),
            "operator does not exist: timestamp with time zone = bigint"
        );
    }

    #[test]
    fn cmp_same_orders_like_postgres() {
        let sorted = |ty: KeyType, values: &[&str]| {
            let keys: Vec<KeyValue> = values
                .iter()
                .map(|s| key_from_text(ty, s).unwrap_or_else(|e| panic!("{s}: {e}")))
                .collect();
            for (i, a) in keys.iter().enumerate() {
                for (j, b) in keys.iter().enumerate() {
                    assert_eq!(a.cmp_same(b), Some(i.cmp(&j)), "{a} vs {b}");
                }
            }
        };
        sorted(
            KeyType::Numeric,
            &[
                "-Infinity",
                "-1e20",
                "-12345.678",
                "-1.5",
                "-1.05",
                "-1",
                "-0.0001",
                "0",
                "1e-16383",
                "0.0001",
                "0.001",
                "0.5",
                "1",
                "1.05",
                "1.5",
                "1.51",
                "2",
                "10",
                "99",
                "100",
                "1e20",
                "Infinity",
                "NaN",
            ],
        );
        sorted(
            KeyType::BigInt,
            &[
                "-9223372036854775808",
                "-1",
                "0",
                "7",
                "9223372036854775807",
            ],
        );
        // Text compares bytewise (the C collation).
        sorted(
            KeyType::Text,
            &["", "B", "Z", "a", "ab", "b", "z", "é", "€"],
        );
        sorted(
            KeyType::Uuid,
            &[
                "00000000-0000-0000-0000-000000000000",
                "00000000-0000-0000-0000-0000000000ff",
                "7fffffff-0000-0000-0000-000000000000",
                "80000000-0000-0000-0000-000000000000",
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
            ],
        );
        sorted(
            KeyType::Date,
            &[
                "-infinity",
                "4714-11-24 BC",
                "0001-12-31 BC",
                "epoch",
                "2000-01-01",
                "2025-03-01",
                "5874897-12-31",
                "infinity",
            ],
        );
        sorted(
            KeyType::Timestamptz,
            &[
                "-infinity",
                "4714-11-24 00:00+00 BC",
                "epoch",
                "1999-12-31 23:59:59.999999Z",
                "2000-01-01 00:00Z",
                "2025-03-01 00:00+01",
                "2025-03-01 00:00Z",
                "2025-02-28 23:00-02",
                "294276-12-31 23:59:59.999999+00",
                "infinity",
            ],
        );
        let nan = KeyValue::Numeric(Numeric::nan());
        assert_eq!(nan.cmp_same(&nan.clone()), Some(Ordering::Equal));
        assert_eq!(
            KeyValue::Numeric(Numeric::infinity())
                .cmp_same(&KeyValue::Numeric(Numeric::infinity())),
            Some(Ordering::Equal)
        );
        assert_eq!(KeyValue::Int(1).cmp_same(&KeyValue::Date(1)), None);
        assert_eq!(KeyValue::Date(1).cmp_same(&KeyValue::Timestamptz(1)), None);
        assert_eq!(
            KeyValue::Text("1".into()).cmp_same(&KeyValue::Numeric(num("1"))),
            None
        );
    }

    #[test]
    fn calendar_constants() {
        assert_eq!(checked_days(2000, 1, 1, false), Some(0));
        assert_eq!(checked_days(4714, 11, 24, true), Some(i64::from(DATE_MIN)));
        assert_eq!(
            checked_days(5_874_898, 1, 1, false),
            Some(i64::from(DATE_END))
        );
        assert_eq!(
            checked_days(294_277, 1, 1, false).map(|d| d * DAY_US),
            Some(TIMESTAMP_END)
        );
        assert_eq!(i64::from(DATE_MIN) * DAY_US, TIMESTAMP_MIN);
        // civil_from_days inverts days_from_civil across the whole range.
        let mut d = i64::from(DATE_MIN);
        while d < i64::from(DATE_END) {
            let (y, m, day) = civil_from_days(d + UNIX_TO_PG_EPOCH_DAYS);
            assert_eq!(days_from_civil(y, m, day) - UNIX_TO_PG_EPOCH_DAYS, d);
            d += 9_973;
        }
        for d in -800_000..800_000 {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
    }

    /// A deterministic pseudo-random sequence (64-bit LCG, high bits).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const ALL_TYPES: [KeyType; 8] = [
        KeyType::SmallInt,
        KeyType::Int,
        KeyType::BigInt,
        KeyType::Text,
        KeyType::Uuid,
        KeyType::Numeric,
        KeyType::Date,
        KeyType::Timestamptz,
    ];

    /// Everything a parsed key offers must work, and numeric, date and
    /// timestamptz values must survive a trip through their printed form.
    fn exercise(ty: KeyType, k: &KeyValue) {
        let mut buf = Vec::new();
        k.canonical_bytes(&mut buf);
        assert_eq!(k.hash64(), hash_bytes(&buf));
        let _ = k.sql_literal();
        assert_eq!(k.cmp_same(k), Some(Ordering::Equal));
        if matches!(ty, KeyType::Numeric | KeyType::Date | KeyType::Timestamptz) {
            assert_eq!(key_from_text(ty, &k.to_string()).as_ref(), Ok(k), "{k}");
        }
    }

    #[test]
    fn odd_input_never_panics() {
        const PIECES: &[&str] = &[
            "2025",
            "-",
            "03",
            "01",
            "1",
            "0",
            "9",
            "00",
            "24",
            "60",
            "99",
            " ",
            "\t",
            "T",
            "t",
            ":",
            ".",
            "+",
            "Z",
            "utc",
            "GMT",
            "bc",
            "BC",
            "e",
            "E",
            "_",
            "nan",
            "NaN",
            "inf",
            "Infinity",
            "infinity",
            "-infinity",
            "epoch",
            "é",
            "€",
            "\0",
            "x",
            "/",
            "99999999999999999999",
            "0x",
            "{",
            "}",
            "a0eebc99",
            "5874897",
            "294276",
            "4714",
            "1e131071",
            "e-16383",
            "Europe/Berlin",
        ];
        let mut rng = Lcg(42);
        let mut inputs: Vec<String> = Vec::new();
        for _ in 0..600 {
            let n = 1 + rng.below(9);
            inputs.push((0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect());
        }
        // Well-formed stems with one random piece spliced in somewhere.
        for stem in [
            "2025-03-01 10:30:15.123456+05:30",
            "-12345.678e-3",
            "2024-02-29",
            "4714-11-24 00:00:00+00 BC",
        ] {
            for _ in 0..100 {
                let mut s = stem.to_owned();
                let mut at = rng.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, PIECES[rng.below(PIECES.len())]);
                inputs.push(s);
            }
        }
        for s in &inputs {
            for ty in ALL_TYPES {
                if let Ok(k) = key_from_text(ty, s) {
                    exercise(ty, &k);
                }
                let _ = key_from_text(ty, s).map_err(|e| (e.to_string(), e.sqlstate()));
            }
        }
        // Random bytes, and numeric-shaped bytes with a consistent length.
        for i in 0..800 {
            let len = rng.below(24);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 {
                let ndigits = rng.below(5);
                let weight = [0i16, -1, 3, i16::MIN, i16::MAX, -4097][rng.below(6)];
                let sign = [0u16, 0x4000, 0xC000, 0xD000, 0xF000, 0x1234][rng.below(6)];
                let dscale = [0u16, 3, 0x3FFF, 0x4000, 0xFFFF][rng.below(5)];
                b.clear();
                for v in [ndigits as u16, weight as u16, sign, dscale] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                for _ in 0..ndigits {
                    let d = [0i16, 1, 9999, 10_000, -1, 1234][rng.below(6)];
                    b.extend_from_slice(&d.to_be_bytes());
                }
            }
            for ty in ALL_TYPES {
                if let Ok(k) = key_from_binary(ty, &b) {
                    exercise(ty, &k);
                }
            }
        }
    }
}
