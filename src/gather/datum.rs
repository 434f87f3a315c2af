//! Raw wire values the merge works with: RowDescription and DataRow layout, exact ordering
//! of binary-format values for the types the proxy sorts itself, and binary arrays for
//! shipping gathered rows to the final step.
//!
//! Orderings follow the Postgres comparison functions (`btint8cmp`, `float8_cmp_internal`
//! with NaN above everything, `cmp_numerics` with -Infinity < numbers < Infinity < NaN (the
//! shard keys' [`Numeric`] order),
//! `interval_cmp_value`, `bpcharcmp` ignoring trailing spaces, `memcmp` for uuid/bytea, and
//! byte order for text under the C collation). Binary formats: Postgres docs, "Base Data
//! Types" send/recv functions (numeric: ndigits, weight, sign, dscale, base-10000 digits).

use std::cmp::Ordering;

use bytes::{BufMut, BytesMut};

use super::SortKey;
use crate::sharding::keys::Numeric;
use crate::wire::protocol::{build, Cursor, FrameError};

/// One column of a RowDescription.
#[derive(Debug, Clone)]
pub struct Field {
    /// The field's bytes from its name up to (not including) the format code.
    pub head: Vec<u8>,
    /// Type OID.
    pub type_oid: u32,
}

/// Splits a RowDescription body into its fields.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<Field>, FrameError> {
    let mut c = Cursor::new(body, "RowDescription");
    let n = c.i16()?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let start = body.len() - c.rest().len();
        c.cstr()?;
        c.u32()?; // table oid
        c.i16()?; // attnum
        let type_oid = c.u32()?;
        c.i16()?; // typlen
        c.i32()?; // typmod
        let end = body.len() - c.rest().len();
        c.i16()?; // format
        out.push(Field {
            head: body[start..end].to_vec(),
            type_oid,
        });
    }
    Ok(out)
}

/// Writes a RowDescription of `fields` with the given per-column format codes.
pub fn put_row_description(buf: &mut BytesMut, fields: &[Field], formats: &[i16]) {
    let at = build::begin(buf, b'T');
    buf.put_i16(fields.len() as i16);
    for (i, f) in fields.iter().enumerate() {
        buf.extend_from_slice(&f.head);
        buf.put_i16(formats.get(i).copied().unwrap_or(0));
    }
    build::finish(buf, at);
}

/// Per-column result format codes for `n` columns from a Bind's list (0, 1 or n entries).
pub fn expand_formats(codes: &[i16], n: usize) -> Result<Vec<i16>, String> {
    match codes.len() {
        0 => Ok(vec![0; n]),
        1 => Ok(vec![codes[0]; n]),
        k if k == n => Ok(codes.to_vec()),
        k => Err(format!(
            "bind message has {k} result formats but query has {n} columns"
        )),
    }
}

/// Byte ranges of a DataRow's values (`None` = NULL), checked against the body.
pub fn row_values(body: &[u8], out: &mut Vec<Option<(usize, usize)>>) -> Result<(), FrameError> {
    out.clear();
    let mut c = Cursor::new(body, "DataRow");
    let n = c.i16()?;
    for _ in 0..n.max(0) {
        let len = c.i32()?;
        if len < 0 {
            out.push(None);
        } else {
            let start = body.len() - c.rest().len();
            c.bytes(len as usize)?;
            out.push(Some((start, start + len as usize)));
        }
    }
    Ok(())
}

/// The first value of a DataRow (`None` for NULL, no column, or a malformed row).
pub fn first_value(body: &[u8]) -> Option<&[u8]> {
    let mut c = Cursor::new(body, "DataRow");
    if c.i16().ok()? < 1 {
        return None;
    }
    let len = c.i32().ok()?;
    if len < 0 {
        return None;
    }
    c.bytes(len as usize).ok()
}

/// Writes a DataRow holding the first `n` values of another row.
pub fn put_row_prefix(
    buf: &mut BytesMut,
    body: &[u8],
    values: &[Option<(usize, usize)>],
    n: usize,
) {
    let at = build::begin(buf, b'D');
    buf.put_i16(n as i16);
    for v in values.iter().take(n) {
        match v {
            None => buf.put_i32(-1),
            Some((s, e)) => {
                buf.put_i32((e - s) as i32);
                buf.extend_from_slice(&body[*s..*e]);
            }
        }
    }
    build::finish(buf, at);
}

/// Type OIDs the proxy orders itself.
pub mod oid {
    /// bool
    pub const BOOL: u32 = 16;
    /// bytea
    pub const BYTEA: u32 = 17;
    /// "char"
    pub const CHAR: u32 = 18;
    /// name
    pub const NAME: u32 = 19;
    /// int8
    pub const INT8: u32 = 20;
    /// int2
    pub const INT2: u32 = 21;
    /// int4
    pub const INT4: u32 = 23;
    /// text
    pub const TEXT: u32 = 25;
    /// oid
    pub const OID: u32 = 26;
    /// float4
    pub const FLOAT4: u32 = 700;
    /// float8
    pub const FLOAT8: u32 = 701;
    /// bpchar
    pub const BPCHAR: u32 = 1042;
    /// varchar
    pub const VARCHAR: u32 = 1043;
    /// date
    pub const DATE: u32 = 1082;
    /// time
    pub const TIME: u32 = 1083;
    /// timestamp
    pub const TIMESTAMP: u32 = 1114;
    /// timestamptz
    pub const TIMESTAMPTZ: u32 = 1184;
    /// interval
    pub const INTERVAL: u32 = 1186;
    /// numeric
    pub const NUMERIC: u32 = 1700;
    /// uuid
    pub const UUID: u32 = 2950;
}

/// Whether values of type `oid` are text whose order depends on a collation.
pub fn is_collatable(oid: u32) -> bool {
    matches!(oid, oid::TEXT | oid::VARCHAR | oid::BPCHAR)
}

/// Whether the proxy can order binary values of type `oid` exactly as Postgres does;
/// `bytewise_text`: text sorts in byte order (C collation).
pub fn sortable(oid: u32, bytewise_text: bool) -> bool {
    use oid::*;
    match oid {
        BOOL | BYTEA | CHAR | NAME | INT2 | INT4 | INT8 | OID | FLOAT4 | FLOAT8 | DATE | TIME
        | TIMESTAMP | TIMESTAMPTZ | INTERVAL | NUMERIC | UUID => true,
        TEXT | VARCHAR | BPCHAR => bytewise_text,
        _ => false,
    }
}

fn int(b: &[u8]) -> i64 {
    match b.len() {
        2 => i64::from(i16::from_be_bytes([b[0], b[1]])),
        4 => i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        8 => i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => 0,
    }
}

fn float(b: &[u8]) -> f64 {
    match b.len() {
        4 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        8 => f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => f64::NAN,
    }
}

/// Postgres float order: NaN equals NaN and sorts above everything; -0 equals 0.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Postgres' numeric order of two binary values, the shard keys' [`Numeric`] order
/// (`-Infinity` < numbers < `Infinity` < `NaN`, scale ignored). Every sent digit counts; a
/// value `numeric_recv` would reject (never sent by a server) sorts as `NaN`.
fn cmp_numeric(a: &[u8], b: &[u8]) -> Ordering {
    let value = |b: &[u8]| Numeric::from_sent_binary(b).unwrap_or_else(Numeric::nan);
    value(a).cmp(&value(b))
}

fn interval_span(b: &[u8]) -> i128 {
    if b.len() != 16 {
        return 0;
    }
    let time = i128::from(int(&b[0..8]));
    let days = i128::from(int(&b[8..12]));
    let months = i128::from(int(&b[12..16]));
    (months * 30 + days) * 86_400_000_000 + time
}

fn trim_spaces(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| *c != b' ')
        .map(|p| p + 1)
        .unwrap_or(0);
    &b[..end]
}

/// Compares two non-NULL binary values of type `oid` (one of [`sortable`]'s types).
pub fn compare(oid: u32, a: &[u8], b: &[u8]) -> Ordering {
    use oid::*;
    match oid {
        INT2 | INT4 | INT8 | DATE | TIME | TIMESTAMP | TIMESTAMPTZ => int(a).cmp(&int(b)),
        OID => (int(a) as u32).cmp(&(int(b) as u32)),
        FLOAT4 | FLOAT8 => cmp_float(float(a), float(b)),
        NUMERIC => cmp_numeric(a, b),
        INTERVAL => interval_span(a).cmp(&interval_span(b)),
        BPCHAR => trim_spaces(a).cmp(trim_spaces(b)),
        _ => a.cmp(b),
    }
}

/// The array type of a built-in element type, for passing gathered columns as parameters.
pub fn array_oid(elem: u32) -> Option<u32> {
    Some(match elem {
        16 => 1000,   // bool
        17 => 1001,   // bytea
        18 => 1002,   // char
        19 => 1003,   // name
        20 => 1016,   // int8
        21 => 1005,   // int2
        23 => 1007,   // int4
        25 => 1009,   // text
        26 => 1028,   // oid
        114 => 199,   // json
        142 => 143,   // xml
        650 => 651,   // cidr
        700 => 1021,  // float4
        701 => 1022,  // float8
        790 => 791,   // money
        829 => 1040,  // macaddr
        869 => 1041,  // inet
        1042 => 1014, // bpchar
        1043 => 1015, // varchar
        1082 => 1182, // date
        1083 => 1183, // time
        1114 => 1115, // timestamp
        1184 => 1185, // timestamptz
        1186 => 1187, // interval
        1266 => 1270, // timetz
        1560 => 1561, // bit
        1562 => 1563, // varbit
        1700 => 1231, // numeric
        2950 => 2951, // uuid
        3802 => 3807, // jsonb
        _ => return None,
    })
}

/// Appends a one-dimensional binary array of `elem` values (`None` = NULL) to `buf`.
pub fn put_array<'a>(
    buf: &mut BytesMut,
    elem: u32,
    values: impl Iterator<Item = Option<&'a [u8]>> + Clone,
) {
    let n = values.clone().count();
    let has_null = values.clone().any(|v| v.is_none());
    if n == 0 {
        buf.put_i32(0); // ndim
        buf.put_i32(0);
        buf.put_u32(elem);
        return;
    }
    buf.put_i32(1);
    buf.put_i32(i32::from(has_null));
    buf.put_u32(elem);
    buf.put_i32(n as i32);
    buf.put_i32(1); // lower bound
    for v in values {
        match v {
            None => buf.put_i32(-1),
            Some(b) => {
                buf.put_i32(b.len() as i32);
                buf.extend_from_slice(b);
            }
        }
    }
}

/// Orders two rows (DataRow bodies and their value ranges, see [`row_values`]) by the sort
/// keys; `types` holds the keys' type OIDs, `visible` the number of visible columns.
pub fn compare_rows(
    keys: &[SortKey],
    visible: usize,
    types: &[u32],
    a: &[u8],
    va: &[Option<(usize, usize)>],
    b: &[u8],
    vb: &[Option<(usize, usize)>],
) -> Ordering {
    for (k, key) in keys.iter().enumerate() {
        let i = key.col.index(visible);
        let x = va.get(i).copied().flatten();
        let y = vb.get(i).copied().flatten();
        let ord = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if key.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if key.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some((s1, e1)), Some((s2, e2))) => {
                let o = compare(types.get(k).copied().unwrap_or(0), &a[s1..e1], &b[s2..e2]);
                if key.desc {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(ndigits: i16, weight: i16, sign: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ndigits.to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&0i16.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_order() {
        let zero = num(0, 0, 0, &[]);
        let one = num(1, 0, 0, &[1]);
        let ten_thousand = num(1, 1, 0, &[1]);
        let half = num(1, -1, 0, &[5000]);
        let minus_one = num(1, 0, 0x4000, &[1]);
        let minus_two = num(1, 0, 0x4000, &[2]);
        let nan = num(0, 0, 0xC000, &[]);
        let inf = num(0, 0, 0xD000, &[]);
        let ninf = num(0, 0, 0xF000, &[]);
        let ordered = [
            &ninf,
            &minus_two,
            &minus_one,
            &zero,
            &half,
            &one,
            &ten_thousand,
            &inf,
            &nan,
        ];
        for w in ordered.windows(2) {
            assert_eq!(cmp_numeric(w[0], w[1]), Ordering::Less);
            assert_eq!(cmp_numeric(w[1], w[0]), Ordering::Greater);
        }
        // 1.5 vs 1.50: equal values, different scale.
        assert_eq!(
            cmp_numeric(&num(2, 0, 0, &[1, 5000]), &num(2, 0, 0, &[1, 5000])),
            Ordering::Equal
        );
    }

    #[test]
    fn floats_put_nan_last() {
        let f = |x: f64| x.to_be_bytes().to_vec();
        assert_eq!(
            compare(oid::FLOAT8, &f(f64::NAN), &f(f64::INFINITY)),
            Ordering::Greater
        );
        assert_eq!(compare(oid::FLOAT8, &f(-0.0), &f(0.0)), Ordering::Equal);
        assert_eq!(compare(oid::FLOAT8, &f(-1.0), &f(0.5)), Ordering::Less);
    }

    #[test]
    fn bpchar_ignores_trailing_spaces() {
        assert_eq!(compare(oid::BPCHAR, b"ab  ", b"ab"), Ordering::Equal);
        assert_eq!(
            compare(oid::INT4, &(-5i32).to_be_bytes(), &3i32.to_be_bytes()),
            Ordering::Less
        );
    }

    #[test]
    fn arrays_have_the_binary_layout() {
        let mut b = BytesMut::new();
        let vals: Vec<Option<&[u8]>> = vec![Some(&[0, 0, 0, 7]), None];
        put_array(&mut b, 23, vals.iter().copied());
        assert_eq!(
            &b[..20],
            &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23, 0, 0, 0, 2, 0, 0, 0, 1]
        );
        assert_eq!(&b[20..], &[0, 0, 0, 4, 0, 0, 0, 7, 255, 255, 255, 255]);
    }
}
