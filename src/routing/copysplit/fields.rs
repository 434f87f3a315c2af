//! One row's fields: splitting a row's content into text or CSV fields, decoding the
//! shard-key field, and the eight-bytes-at-a-time byte search the row scan uses too.

use super::{CopyFormat, SplitError};

/// Where the decoded key is.
pub(super) enum Key {
    Null,
    /// `content[.0 .. .1]`, no decoding needed.
    Raw(usize, usize),
    /// In the key buffer.
    Decoded,
    /// The NULL string itself (CSV `FORCE_NOT_NULL`).
    NullString,
}

/// A row-content error, before the line number is attached.
pub(super) enum RowFault {
    MissingKey(usize),
    ColumnCount(usize),
    UnterminatedQuote,
}

impl RowFault {
    pub(super) fn at<E>(self, line: u64, expected: usize) -> SplitError<E> {
        match self {
            RowFault::MissingKey(found) => SplitError::MissingKey { line, found },
            RowFault::ColumnCount(found) => SplitError::ColumnCount {
                line,
                expected,
                found,
            },
            RowFault::UnterminatedQuote => SplitError::UnterminatedQuote { line },
        }
    }
}

/// One field of a row's content.
struct Field {
    /// End of the raw field text (what the NULL string is compared with).
    end: usize,
    /// Start of the next field (meaningful when `delim`).
    next: usize,
    /// The field ended at a delimiter (else at the end of the row).
    delim: bool,
    /// The field needs decoding (text: holds a backslash; CSV: holds a quote).
    special: bool,
}

/// Splits `content` (a row without terminator) into fields, checks their count and finds
/// the key field, decoding it into `key_buf` when it holds escapes or quotes.
pub(super) fn locate_key(
    fmt: &CopyFormat,
    key_column: usize,
    n_columns: usize,
    content: &[u8],
    key_buf: &mut Vec<u8>,
) -> Result<Key, RowFault> {
    let mut start = 0;
    let mut fields = 0usize;
    let mut key = None;
    loop {
        let f = if fmt.csv {
            csv_field(content, start, fmt.delimiter, fmt.quote, fmt.escape)
                .ok_or(RowFault::UnterminatedQuote)?
        } else {
            text_field(content, start, fmt.delimiter)
        };
        if fields == key_column {
            key = Some((start, f.end, f.special));
        }
        fields += 1;
        if !f.delim {
            break;
        }
        start = f.next;
    }
    let Some((s, e, special)) = key else {
        return Err(RowFault::MissingKey(fields));
    };
    if fields != n_columns {
        return Err(RowFault::ColumnCount(fields));
    }
    let raw = content.get(s..e).unwrap_or_default();
    if fmt.csv {
        if !special && raw == fmt.null.as_slice() {
            return Ok(if fmt.key_force_not_null {
                Key::NullString
            } else {
                Key::Null
            });
        }
        let value = if special {
            decode_csv(raw, fmt.quote, fmt.escape, key_buf);
            key_buf.as_slice()
        } else {
            raw
        };
        if fmt.key_force_null && value == fmt.null.as_slice() {
            return Ok(Key::Null);
        }
        Ok(if special {
            Key::Decoded
        } else {
            Key::Raw(s, e)
        })
    } else if raw == fmt.null.as_slice() {
        Ok(Key::Null)
    } else if special {
        decode_text(raw, key_buf);
        Ok(Key::Decoded)
    } else {
        Ok(Key::Raw(s, e))
    }
}

/// The text-format field starting at `start`, as `CopyReadAttributesText` delimits it.
fn text_field(content: &[u8], start: usize, delim: u8) -> Field {
    let len = content.len();
    let mut i = start;
    let mut special = false;
    loop {
        let rest = content.get(i..).unwrap_or_default();
        let Some(off) = find_any(rest, [delim, b'\\']) else {
            return Field {
                end: len,
                next: len,
                delim: false,
                special,
            };
        };
        let j = i + off;
        if content.get(j) == Some(&delim) {
            return Field {
                end: j,
                next: j + 1,
                delim: true,
                special,
            };
        }
        special = true;
        let esc = content.get(j + 1..).unwrap_or_default();
        if esc.is_empty() {
            // A backslash ending the row is not part of the raw field (Postgres stops
            // before it).
            return Field {
                end: j,
                next: len,
                delim: false,
                special,
            };
        }
        // Skip the whole escape as Postgres does: `\x` may take up to two hex digits even
        // when one is the delimiter (an uppercase A-F delimiter is allowed).
        i = j + 1 + decode_escape(esc).1;
    }
}

/// Decodes the escape after a backslash (`esc` is non-empty): the byte it stands for and
/// how many bytes of `esc` it takes.
fn decode_escape(esc: &[u8]) -> (u8, usize) {
    let Some(&c) = esc.first() else {
        return (b'\\', 0);
    };
    match c {
        b'0'..=b'7' => {
            let mut val = u32::from(c - b'0');
            let mut n = 1;
            while n < 3 {
                match esc.get(n) {
                    Some(&d @ b'0'..=b'7') => {
                        val = (val << 3) + u32::from(d - b'0');
                        n += 1;
                    }
                    _ => break,
                }
            }
            ((val & 0xff) as u8, n)
        }
        b'x' => match esc.get(1).and_then(|&h| hex_value(h)) {
            Some(v) => match esc.get(2).and_then(|&h| hex_value(h)) {
                Some(w) => ((v << 4) | w, 3),
                None => (v, 2),
            },
            None => (b'x', 1),
        },
        b'b' => (0x08, 1),
        b'f' => (0x0c, 1),
        b'n' => (b'\n', 1),
        b'r' => (b'\r', 1),
        b't' => (b'\t', 1),
        b'v' => (0x0b, 1),
        other => (other, 1),
    }
}

fn hex_value(h: u8) -> Option<u8> {
    match h {
        b'0'..=b'9' => Some(h - b'0'),
        b'a'..=b'f' => Some(h - b'a' + 10),
        b'A'..=b'F' => Some(h - b'A' + 10),
        _ => None,
    }
}

/// De-escapes a raw text-format field into `out`.
fn decode_text(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    loop {
        let rest = raw.get(i..).unwrap_or_default();
        let Some(off) = find_any(rest, [b'\\']) else {
            out.extend_from_slice(rest);
            return;
        };
        out.extend_from_slice(&rest[..off]);
        let esc = rest.get(off + 1..).unwrap_or_default();
        if esc.is_empty() {
            return;
        }
        let (b, n) = decode_escape(esc);
        out.push(b);
        i += off + 1 + n;
    }
}

/// The CSV field starting at `start`, as `CopyReadAttributesCSV` delimits it; `None` when
/// a quote is still open at the end of the row.
fn csv_field(content: &[u8], start: usize, delim: u8, quote: u8, escape: u8) -> Option<Field> {
    let len = content.len();
    let mut i = start;
    let mut special = false;
    loop {
        // Outside quotes: the delimiter ends the field, a quote opens a quoted part.
        let rest = content.get(i..).unwrap_or_default();
        let Some(off) = find_any(rest, [delim, quote]) else {
            return Some(Field {
                end: len,
                next: len,
                delim: false,
                special,
            });
        };
        let j = i + off;
        if content.get(j) == Some(&delim) {
            return Some(Field {
                end: j,
                next: j + 1,
                delim: true,
                special,
            });
        }
        special = true;
        i = j + 1;
        // Inside quotes: escape + (escape | quote) is data, a quote closes.
        loop {
            let rest = content.get(i..)?;
            let off = find_any(rest, [escape, quote])?;
            let k = i + off;
            let c = *content.get(k)?;
            i = k + 1;
            if c == escape && matches!(content.get(i), Some(&n) if n == escape || n == quote) {
                i += 1;
                continue;
            }
            if c == quote {
                break;
            }
        }
    }
}

/// Unquotes a raw CSV field into `out` (same rules as [`csv_field`]).
fn decode_csv(raw: &[u8], quote: u8, escape: u8, out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    let mut in_quote = false;
    loop {
        let rest = raw.get(i..).unwrap_or_default();
        let needles = if in_quote {
            [escape, quote]
        } else {
            [quote, quote]
        };
        let Some(off) = find_any(rest, needles) else {
            out.extend_from_slice(rest);
            return;
        };
        out.extend_from_slice(&rest[..off]);
        let k = i + off;
        let c = raw.get(k).copied().unwrap_or(quote);
        i = k + 1;
        if !in_quote {
            in_quote = true;
        } else if c == escape && matches!(raw.get(i), Some(&n) if n == escape || n == quote) {
            out.push(raw.get(i).copied().unwrap_or(quote));
            i += 1;
        } else if c == quote {
            in_quote = false;
        } else {
            out.push(c);
        }
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Position of the first byte of `hay` equal to any of `needles`, eight bytes at a time
/// (a portable stand-in for `memchr`).
///
/// For each needle, `(x - LO) & !x & HI` of `x = word ^ splat(needle)` flags the zero bytes
/// of `x`; flags above the lowest true zero byte may be false (borrows), but the lowest flag
/// of each needle is exact, so the lowest flag of their union is the first match.
#[inline]
pub(super) fn find_any<const N: usize>(hay: &[u8], needles: [u8; N]) -> Option<usize> {
    let splat = needles.map(|n| LO.wrapping_mul(u64::from(n)));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
        let mut m = 0;
        for s in splat {
            let x = w ^ s;
            m |= x.wrapping_sub(LO) & !x & HI;
        }
        if m != 0 {
            return Some(base + (m.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| needles.contains(b))
        .map(|p| base + p)
}
