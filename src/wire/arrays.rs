//! One-dimensional array values as a client binds them, cut into elements and put back
//! together from a subset of them (the proxy splits `unnest($1::T[], …)` rows by shard).
//!
//! Binary format (Postgres `array_send`): int32 dimensions (0 for an empty array), int32
//! has-nulls flag, uint32 element type OID, then per dimension int32 length and int32 lower
//! bound, then per element int32 length (-1 for NULL) and its bytes. Text format
//! (`array_out`): `{e1,e2,…}`, an element double-quoted when it holds special characters
//! (backslash escapes inside quotes), `NULL` unquoted for a null; an explicit lower bound
//! (`[2:3]={…}`) is not taken. The elements are kept as they came, so a subset is written
//! back byte for byte, whatever the element type.

use thiserror::Error;

/// Why an array value could not be taken apart.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArrayError {
    /// Cut short, or lengths that do not add up.
    #[error("malformed array value: {0}")]
    Malformed(&'static str),
    /// More than one dimension, or bounds the proxy does not rewrite.
    #[error("only one-dimensional arrays are split by shard ({0})")]
    Shape(&'static str),
}

/// One element: `None` for NULL; for text arrays, the element as written (quotes included)
/// and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem<'a> {
    /// The bytes written back: binary element bytes, or the text element as written.
    pub raw: Option<&'a [u8]>,
    /// The value: binary element bytes, or the unquoted, unescaped text.
    pub value: Option<std::borrow::Cow<'a, [u8]>>,
}

/// An array cut into elements.
#[derive(Debug)]
pub struct Elements<'a> {
    /// Binary: the element type OID (written back in the header). Text: 0.
    pub elem_oid: u32,
    /// The elements, in order.
    pub elems: Vec<Elem<'a>>,
}

fn i32_at(b: &[u8], at: usize) -> Result<i32, ArrayError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or(ArrayError::Malformed("cut short"))
}

/// Cuts a binary array value into its elements.
pub fn split_binary(b: &[u8]) -> Result<Elements<'_>, ArrayError> {
    let ndim = i32_at(b, 0)?;
    let elem_oid = i32_at(b, 8)? as u32;
    let mut at = 12;
    let count = match ndim {
        0 => 0,
        1 => {
            let n = i32_at(b, at)?;
            at += 8; // length, lower bound
            usize::try_from(n).map_err(|_| ArrayError::Malformed("negative length"))?
        }
        _ => return Err(ArrayError::Shape("several dimensions")),
    };
    // Each element takes at least its 4-byte length: a count beyond that is a lie.
    if count > b.len().saturating_sub(at) / 4 {
        return Err(ArrayError::Malformed("more elements than bytes"));
    }
    let mut elems = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32_at(b, at)?;
        at += 4;
        if len < 0 {
            elems.push(Elem {
                raw: None,
                value: None,
            });
            continue;
        }
        let v = b
            .get(at..at + len as usize)
            .ok_or(ArrayError::Malformed("element cut short"))?;
        at += len as usize;
        elems.push(Elem {
            raw: Some(v),
            value: Some(std::borrow::Cow::Borrowed(v)),
        });
    }
    if at != b.len() {
        return Err(ArrayError::Malformed("bytes after the last element"));
    }
    Ok(Elements { elem_oid, elems })
}

/// Writes a binary array of `elems` (one dimension, lower bound 1) of type `elem_oid`.
pub fn write_binary<'a>(
    elem_oid: u32,
    elems: impl ExactSizeIterator<Item = Option<&'a [u8]>> + Clone,
    out: &mut Vec<u8>,
) {
    let n = elems.len();
    let has_null = elems.clone().any(|e| e.is_none());
    if n == 0 {
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&elem_oid.to_be_bytes());
        return;
    }
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&elem_oid.to_be_bytes());
    out.extend_from_slice(&(n as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    for e in elems {
        match e {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
}

/// Cuts a text array value (`{…}`) into its elements.
pub fn split_text(s: &[u8]) -> Result<Elements<'_>, ArrayError> {
    let s_trim = trim(s);
    if s_trim.first() == Some(&b'[') {
        return Err(ArrayError::Shape("explicit bounds"));
    }
    let inner = s_trim
        .strip_prefix(b"{")
        .and_then(|r| r.strip_suffix(b"}"))
        .ok_or(ArrayError::Malformed("no braces"))?;
    let mut elems = Vec::new();
    if trim(inner).is_empty() {
        return Ok(Elements { elem_oid: 0, elems });
    }
    let mut at = 0;
    loop {
        // Skip blanks before the element.
        while inner.get(at).is_some_and(|c| c.is_ascii_whitespace()) {
            at += 1;
        }
        let start = at;
        let value: Option<std::borrow::Cow<'_, [u8]>> = match inner.get(at) {
            Some(b'{') => return Err(ArrayError::Shape("several dimensions")),
            Some(b'"') => {
                at += 1;
                let mut v = Vec::new();
                loop {
                    match inner.get(at) {
                        Some(b'\\') => {
                            v.push(*inner.get(at + 1).ok_or(ArrayError::Malformed("escape"))?);
                            at += 2;
                        }
                        Some(b'"') => {
                            at += 1;
                            break;
                        }
                        Some(&c) => {
                            v.push(c);
                            at += 1;
                        }
                        None => return Err(ArrayError::Malformed("unterminated quote")),
                    }
                }
                Some(std::borrow::Cow::Owned(v))
            }
            _ => {
                while inner.get(at).is_some_and(|&c| c != b',') {
                    if inner[at] == b'"' || inner[at] == b'{' {
                        return Err(ArrayError::Malformed("quote inside an element"));
                    }
                    at += 1;
                }
                let t = trim(&inner[start..at]);
                if t.eq_ignore_ascii_case(b"NULL") {
                    None
                } else {
                    let mut v = Vec::with_capacity(t.len());
                    let mut i = 0;
                    while i < t.len() {
                        if t[i] == b'\\' && i + 1 < t.len() {
                            i += 1;
                        }
                        v.push(t[i]);
                        i += 1;
                    }
                    Some(std::borrow::Cow::Owned(v))
                }
            }
        };
        let raw_end = at;
        while inner.get(at).is_some_and(|c| c.is_ascii_whitespace()) {
            at += 1;
        }
        let raw = trim(&inner[start..raw_end]);
        elems.push(Elem {
            raw: value.as_ref().map(|_| raw),
            value,
        });
        match inner.get(at) {
            None => break,
            Some(b',') => at += 1,
            Some(_) => return Err(ArrayError::Malformed("junk after an element")),
        }
    }
    Ok(Elements { elem_oid: 0, elems })
}

/// Writes a text array of `elems` (each as written, `None` as `NULL`).
pub fn write_text<'a>(elems: impl Iterator<Item = Option<&'a [u8]>>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (k, e) in elems.enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.unwrap_or(b"NULL"));
    }
    out.push(b'}');
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let b = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(a, |p| p + 1);
    &s[a..b]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_split_and_rejoin() {
        let e = split_text(br#"{1, "b,c" ,NULL,"x\"y",plain}"#).unwrap();
        let vals: Vec<Option<&[u8]>> = e.elems.iter().map(|e| e.value.as_deref()).collect();
        assert_eq!(
            vals,
            vec![
                Some(&b"1"[..]),
                Some(b"b,c"),
                None,
                Some(b"x\"y"),
                Some(b"plain")
            ]
        );
        let mut out = Vec::new();
        write_text(e.elems.iter().map(|e| e.raw).rev(), &mut out);
        assert_eq!(out, br#"{plain,"x\"y",NULL,"b,c",1}"#);
        assert!(split_text(b"{}").unwrap().elems.is_empty());
        assert_eq!(
            split_text(b"{{1},{2}}").unwrap_err(),
            ArrayError::Shape("several dimensions")
        );
        assert!(split_text(b"{\"open").is_err());
        assert!(split_text(b"[2:3]={1,2}").is_err());
    }

    #[test]
    fn binary_arrays_split_and_rejoin() {
        let mut b = Vec::new();
        let one = 7i64.to_be_bytes();
        let two = 9i64.to_be_bytes();
        write_binary(
            20,
            [Some(&one[..]), None, Some(&two[..])].into_iter(),
            &mut b,
        );
        let e = split_binary(&b).unwrap();
        assert_eq!(e.elem_oid, 20);
        assert_eq!(e.elems.len(), 3);
        assert_eq!(e.elems[1].raw, None);
        let mut again = Vec::new();
        write_binary(20, e.elems.iter().map(|e| e.raw), &mut again);
        assert_eq!(again, b);
        // Cut short, or a count larger than the bytes: errors, not panics.
        for n in 0..b.len() {
            let _ = split_binary(&b[..n]);
        }
        let mut lie = b.clone();
        lie[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(split_binary(&lie).is_err());
        let mut empty = Vec::new();
        write_binary(25, std::iter::empty::<Option<&[u8]>>(), &mut empty);
        assert!(split_binary(&empty).unwrap().elems.is_empty());
    }
}
