//! Keys given as binary-format `Bind` parameters: [`key_from_binary`].

use super::datetime::{DATE_END, DATE_MIN, TIMESTAMP_END, TIMESTAMP_MIN};
use super::numeric::numeric_from_binary;
use super::types::{KeyType, KeyValue};
use super::KeyError;

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

fn check_range(ty: KeyType, v: i64) -> Result<i64, KeyError> {
    match ty.int_range() {
        Some((lo, hi)) if v < lo || v > hi => Err(KeyError::OutOfRange {
            ty: ty.pg_name(),
            input: v.to_string(),
        }),
        _ => Ok(v),
    }
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
