//! `date` and `timestamptz` keys: Postgres' ranges and calendar arithmetic, the ISO text
//! input (`date_in`, `timestamptz_in`) and the form Postgres prints them in.

use std::fmt;

use super::cursor::{is_c_space, trim_c_space, Cursor};
use super::KeyError;

/// Postgres' name for `timestamptz`, as its messages spell it.
pub(super) const TIMESTAMPTZ: &str = "timestamp with time zone";

/// Days from 1970-01-01 to 2000-01-01.
pub(super) const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds per day.
pub(super) const DAY_US: i64 = 86_400_000_000;
/// First valid date (4714-11-24 BC), in days since 2000-01-01.
pub(super) const DATE_MIN: i32 = -2_451_545;
/// One past the last valid date (5874898-01-01).
pub(super) const DATE_END: i32 = 2_145_031_949;
/// First valid timestamp (4714-11-24 00:00:00 BC UTC), in µs since 2000-01-01.
pub(super) const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
/// One past the last valid timestamp (294277-01-01 00:00:00 UTC).
pub(super) const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year
/// numbering: 1 BC is year 0), after H. Hinnant's `days_from_civil`.
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)`.
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
pub(super) fn checked_days(year: u64, month: u64, day: u64, bc: bool) -> Option<i64> {
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
pub(super) fn parse_pg_date(s: &str) -> Result<i32, KeyError> {
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
pub(super) enum Parsed {
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
pub(super) fn parse_timestamptz_text(s: &str) -> Result<Parsed, KeyError> {
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
pub(super) fn parse_pg_timestamptz(s: &str) -> Result<i64, KeyError> {
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
pub(super) fn fmt_date(f: &mut fmt::Formatter<'_>, d: i32) -> fmt::Result {
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
pub(super) fn fmt_timestamptz(f: &mut fmt::Formatter<'_>, t: i64) -> fmt::Result {
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
