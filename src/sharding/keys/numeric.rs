//! The exact `numeric` key value ([`Numeric`]): normalization, canonical text, hash and
//! Postgres' order, and its text (`numeric_in`) and binary (`numeric_recv`) input.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::cursor::Cursor;
use super::KeyError;
use crate::sharding::ring::hash_bytes;

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
    pub(super) fn write_parts(&self, mut put: impl FnMut(&[u8])) {
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
    pub(super) fn hash64(&self) -> u64 {
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

    /// Parses numeric text as [`key_from_text`](super::key_from_text) does for a `numeric` key.
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

/// `numeric_in` (Postgres 16+, decimal input): see [`key_from_text`].
pub(super) fn parse_pg_numeric(s: &str) -> Result<Numeric, KeyError> {
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
pub(super) fn numeric_from_binary(b: &[u8]) -> Result<Numeric, KeyError> {
    decode_binary(b, true)
}

impl Numeric {
    /// The value of a binary numeric a server sent (`numeric_send`), for ordering result
    /// values by [`Ord`]; `None` when malformed. Every digit counts: unlike key input
    /// ([`key_from_binary`](super::key_from_binary), which truncates as `numeric_recv`
    /// does), digits past the display scale are not dropped.
    pub fn from_sent_binary(b: &[u8]) -> Option<Numeric> {
        decode_binary(b, false).ok()
    }
}

/// A binary numeric (`ndigits`, `weight`, `sign`, `dscale`, base-10000 digits), checked as
/// `numeric_recv` checks it; with `trunc`, digits past `dscale` are dropped as it does.
fn decode_binary(b: &[u8], trunc: bool) -> Result<Numeric, KeyError> {
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
    let point = (weight + 1) * 4;
    let keep = if trunc {
        // trunc_var(value, dscale): keep the digits up to `dscale` places after
        // the point.
        let keep = point + i64::from(dscale);
        usize::try_from(keep).unwrap_or(0).min(digits.len())
    } else {
        digits.len()
    };
    Ok(Numeric::finite(neg, &digits[..keep], point))
}
