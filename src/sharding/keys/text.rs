//! Keys given as text (SQL string literals, text-format `Bind` parameters): [`key_from_text`]
//! and the integer (`int2in`…`int8in`) and `uuid_in` parsers.

use super::cursor::is_c_space;
use super::datetime::{parse_pg_date, parse_pg_timestamptz};
use super::numeric::parse_pg_numeric;
use super::types::{KeyType, KeyValue};
use super::KeyError;

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
