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
//!
//! The parts: [`KeyType`] and [`KeyValue`] (`types`), [`Numeric`] (`numeric`), dates and
//! timestamps (`datetime`), text input (`text`, with the `cursor` it scans with), binary
//! input (`binary`), SQL number literals (`literal`); [`KeyError`] is here.

mod binary;
mod cursor;
mod datetime;
mod literal;
mod numeric;
mod text;
mod types;

pub use binary::key_from_binary;
pub use literal::{key_from_int, numeric_literal, NumericLiteral};
pub use numeric::Numeric;
pub use text::key_from_text;
pub use types::{KeyType, KeyValue};

use datetime::{parse_timestamptz_text, Parsed, DAY_US, TIMESTAMPTZ};

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

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::fmt;

    use super::datetime::{
        checked_days, civil_from_days, days_from_civil, DATE_END, DATE_MIN, TIMESTAMP_END,
        TIMESTAMP_MIN, UNIX_TO_PG_EPOCH_DAYS,
    };
    use super::*;
    use crate::sharding::ring::hash_bytes;

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
