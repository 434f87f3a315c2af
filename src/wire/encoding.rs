//! Client encodings.
//!
//! The proxy parses SQL with Postgres's parser, which needs UTF-8, and its routing reads shard
//! keys as UTF-8 (a key is placed by its characters, whatever encoding a client spoke). A
//! client speaking another `client_encoding` (LATIN1, WIN1252, EUC_JP, …) is served so:
//! - the proxy converts the text of its Query and Parse messages (and the text-format
//!   parameters and COPY fields it reads keys from) to UTF-8 for itself;
//! - the shard connections serving it run with the same `client_encoding` (a session
//!   setting, replayed like any other), so the shards convert everything else exactly as
//!   Postgres does: rows, errors, notices — and the statement text the proxy sends, which it
//!   converts back to the client's encoding on the way out ([`to_client_messages`]).
//!
//! SQL_ASCII is taken as is, as Postgres takes it against a UTF-8 server (no conversion).
//! Encodings without a converter here (MULE_INTERNAL, EUC_TW, EUC_JIS_2004,
//! SHIFT_JIS_2004, JOHAB) are refused with a clear error, never half-handled.

use std::borrow::Cow;

use bytes::BytesMut;

/// Postgres's names of the client encodings the proxy converts, with their converter.
/// (LATIN1 is done by hand: WHATWG, hence `encoding_rs`, reads ISO-8859-1 as windows-1252.)
const CODECS: &[(&str, Option<&encoding_rs::Encoding>)] = &[
    ("LATIN1", None),
    ("LATIN2", Some(encoding_rs::ISO_8859_2)),
    ("LATIN3", Some(encoding_rs::ISO_8859_3)),
    ("LATIN4", Some(encoding_rs::ISO_8859_4)),
    ("LATIN5", Some(encoding_rs::WINDOWS_1254)),
    ("LATIN6", Some(encoding_rs::ISO_8859_10)),
    ("LATIN7", Some(encoding_rs::ISO_8859_13)),
    ("LATIN8", Some(encoding_rs::ISO_8859_14)),
    ("LATIN9", Some(encoding_rs::ISO_8859_15)),
    ("LATIN10", Some(encoding_rs::ISO_8859_16)),
    ("ISO_8859_5", Some(encoding_rs::ISO_8859_5)),
    ("ISO_8859_6", Some(encoding_rs::ISO_8859_6)),
    ("ISO_8859_7", Some(encoding_rs::ISO_8859_7)),
    ("ISO_8859_8", Some(encoding_rs::ISO_8859_8)),
    ("WIN866", Some(encoding_rs::IBM866)),
    ("WIN874", Some(encoding_rs::WINDOWS_874)),
    ("WIN1250", Some(encoding_rs::WINDOWS_1250)),
    ("WIN1251", Some(encoding_rs::WINDOWS_1251)),
    ("WIN1252", Some(encoding_rs::WINDOWS_1252)),
    ("WIN1253", Some(encoding_rs::WINDOWS_1253)),
    ("WIN1254", Some(encoding_rs::WINDOWS_1254)),
    ("WIN1255", Some(encoding_rs::WINDOWS_1255)),
    ("WIN1256", Some(encoding_rs::WINDOWS_1256)),
    ("WIN1257", Some(encoding_rs::WINDOWS_1257)),
    ("WIN1258", Some(encoding_rs::WINDOWS_1258)),
    ("KOI8R", Some(encoding_rs::KOI8_R)),
    ("KOI8U", Some(encoding_rs::KOI8_U)),
    ("EUC_JP", Some(encoding_rs::EUC_JP)),
    ("EUC_KR", Some(encoding_rs::EUC_KR)),
    ("EUC_CN", Some(encoding_rs::GBK)),
    ("SJIS", Some(encoding_rs::SHIFT_JIS)),
    ("BIG5", Some(encoding_rs::BIG5)),
    ("GBK", Some(encoding_rs::GBK)),
    ("UHC", Some(encoding_rs::EUC_KR)),
    ("GB18030", Some(encoding_rs::GB18030)),
];

/// Other spellings Postgres accepts (its `pg_encname_tbl`), squashed as
/// [`canonical_encoding`] squashes them.
const ALIASES: &[(&str, &str)] = &[
    ("utf8", "UTF8"),
    ("unicode", "UTF8"),
    ("sqlascii", "SQL_ASCII"),
    ("iso88591", "LATIN1"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88599", "LATIN5"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("alt", "WIN866"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("win", "WIN1251"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("abc", "WIN1258"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("vscii", "WIN1258"),
    ("koi8", "KOI8R"),
    ("shiftjis", "SJIS"),
    ("mskanji", "SJIS"),
    ("windows932", "SJIS"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
    ("windows936", "GBK"),
];

/// The name Postgres reports for a `client_encoding` value the proxy speaks: like
/// Postgres's `clean_encoding_name`, everything but letters and digits is ignored, case too
/// (`utf-8`, asyncpg's `'utf-8'`, `latin-1`). `None` for any other encoding.
pub fn canonical_encoding(v: &str) -> Option<&'static str> {
    let squashed: String = v
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some((_, name)) = ALIASES.iter().find(|(a, _)| *a == squashed) {
        return Some(name);
    }
    CODECS.iter().map(|(n, _)| *n).find(|n| {
        n.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .eq(squashed.chars())
    })
}

/// The error for a client encoding the proxy does not speak.
pub fn unsupported_encoding(v: &str) -> String {
    format!(
        "client_encoding \"{v}\" is not supported by shardwire (it converts UTF8, SQL_ASCII, LATIN1-10, ISO_8859_5-8, WIN866, WIN874, WIN1250-1258, KOI8R/U, EUC_JP, EUC_KR, EUC_CN, SJIS, BIG5, GBK, UHC and GB18030)"
    )
}

/// A client encoding the proxy converts (anything but UTF8 and SQL_ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    name: &'static str,
    rs: Option<&'static encoding_rs::Encoding>,
}

/// Text that is not valid in the client's encoding, or a character it cannot hold.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

impl Codec {
    /// The converter for a canonical encoding name; `None` for UTF8, SQL_ASCII and names
    /// without one.
    pub fn for_name(canonical: &str) -> Option<Codec> {
        CODECS
            .iter()
            .find(|(n, _)| *n == canonical)
            .map(|(name, rs)| Codec { name, rs: *rs })
    }

    /// Postgres's name of the encoding.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether every byte below 0x80 in this encoding's text is that ASCII character (not
    /// so for SJIS, BIG5, GBK, UHC, GB18030, whose second bytes can be `\` or `,`): text
    /// split on ASCII delimiters (COPY rows) must be converted first otherwise.
    pub fn ascii_safe(&self) -> bool {
        !matches!(self.name, "SJIS" | "BIG5" | "GBK" | "UHC" | "GB18030")
    }

    /// Client text as UTF-8 (borrowed when it is plain ASCII).
    pub fn to_utf8<'a>(&self, b: &'a [u8]) -> Result<Cow<'a, str>, ConvertError> {
        if b.is_ascii() {
            // ASCII is ASCII in every encoding here (and valid UTF-8).
            return Ok(Cow::Borrowed(std::str::from_utf8(b).unwrap_or_default()));
        }
        match self.rs {
            None => Ok(Cow::Owned(b.iter().map(|&c| char::from(c)).collect())),
            Some(rs) => match rs.decode_without_bom_handling_and_without_replacement(b) {
                Some(s) => Ok(Cow::Owned(s.into_owned())),
                None => Err(ConvertError(format!(
                    "invalid byte sequence for encoding \"{}\"",
                    self.name
                ))),
            },
        }
    }

    /// UTF-8 text in this encoding (borrowed when it is plain ASCII).
    pub fn from_utf8<'a>(&self, s: &'a str) -> Result<Cow<'a, [u8]>, ConvertError> {
        if s.is_ascii() {
            return Ok(Cow::Borrowed(s.as_bytes()));
        }
        let unmappable = |c: char| {
            ConvertError(format!(
                "character \"{c}\" has no equivalent in encoding \"{}\"",
                self.name
            ))
        };
        match self.rs {
            None => s
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| unmappable(c)))
                .collect::<Result<Vec<u8>, _>>()
                .map(Cow::Owned),
            Some(rs) => {
                let (out, _, bad) = rs.encode(s);
                if bad {
                    let c = s
                        .chars()
                        .find(|c| {
                            let mut b = [0u8; 4];
                            rs.encode(c.encode_utf8(&mut b)).2
                        })
                        .unwrap_or('?');
                    return Err(unmappable(c));
                }
                Ok(Cow::Owned(out.into_owned()))
            }
        }
    }
}

/// The statement text of one Query (`Q`) or Parse (`P`) body as UTF-8: the body rebuilt
/// (a Parse's name and text converted, its parameter types copied). `None` when it is plain
/// ASCII (nothing to convert).
pub fn body_to_utf8(codec: &Codec, tag: u8, body: &[u8]) -> Result<Option<Vec<u8>>, ConvertError> {
    recode_body(tag, body, |b| {
        codec.to_utf8(b).map(|s| match s {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        })
    })
}

/// Messages the proxy sends a shard connection running with the client's encoding: the
/// text of each Query and Parse (UTF-8 inside the proxy) converted to that encoding, every
/// other message copied. `None` when nothing needs converting (all ASCII), which is
/// checked first. A text the encoding cannot hold is left as is (the shard then reports it).
pub fn to_client_messages(codec: &Codec, data: &[u8]) -> Option<BytesMut> {
    if data.is_ascii() {
        return None;
    }
    let mut out = BytesMut::with_capacity(data.len() + 16);
    let mut rest = data;
    let mut changed = false;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(frame) = rest.get(..1 + len).filter(|_| len >= 4) else {
            break;
        };
        let recoded = match frame[0] {
            b'Q' | b'P' => recode_body(frame[0], &frame[5..], |b| {
                let s = std::str::from_utf8(b).map_err(|e| ConvertError(e.to_string()))?;
                codec.from_utf8(s).map(|c| Cow::Owned(c.into_owned()))
            })
            .ok()
            .flatten(),
            _ => None,
        };
        match recoded {
            Some(body) => {
                changed = true;
                out.extend_from_slice(&[frame[0]]);
                out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            None => out.extend_from_slice(frame),
        }
        rest = &rest[1 + len..];
    }
    out.extend_from_slice(rest);
    changed.then_some(out)
}

/// Rebuilds a Query or Parse body with its strings passed through `conv`; `None` when they
/// are all ASCII. A body without its terminators is returned unchanged (`None`): its
/// decoder reports it.
fn recode_body<'b>(
    tag: u8,
    body: &'b [u8],
    conv: impl Fn(&'b [u8]) -> Result<Cow<'b, [u8]>, ConvertError>,
) -> Result<Option<Vec<u8>>, ConvertError> {
    if body.is_ascii() {
        return Ok(None);
    }
    let strings = if tag == b'P' { 2 } else { 1 };
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut rest = body;
    for _ in 0..strings {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Ok(None);
        };
        out.extend_from_slice(&conv(&rest[..nul])?);
        out.push(0);
        rest = &rest[nul + 1..];
    }
    out.extend_from_slice(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_named_as_postgres_names_them() {
        assert_eq!(canonical_encoding("utf-8"), Some("UTF8"));
        assert_eq!(canonical_encoding("'utf-8'"), Some("UTF8"));
        assert_eq!(canonical_encoding("sql_ascii"), Some("SQL_ASCII"));
        assert_eq!(canonical_encoding("latin1"), Some("LATIN1"));
        assert_eq!(canonical_encoding("ISO-8859-15"), Some("LATIN9"));
        assert_eq!(canonical_encoding("euc-jp"), Some("EUC_JP"));
        assert_eq!(canonical_encoding("Shift_JIS"), Some("SJIS"));
        assert_eq!(canonical_encoding("win1252"), Some("WIN1252"));
        assert_eq!(canonical_encoding("MULE_INTERNAL"), None);
    }

    #[test]
    fn latin_texts_convert_both_ways() {
        for (name, text) in [
            ("LATIN1", "Müller façade ÿ"),
            ("LATIN9", "€ œuvre"),
            ("WIN1252", "“quoted” – €"),
            ("EUC_JP", "日本語のテキスト"),
            ("SJIS", "表示ソフト"),
            ("KOI8R", "Привет"),
        ] {
            let c = Codec::for_name(name).unwrap();
            let bytes = c.from_utf8(text).unwrap().into_owned();
            assert_ne!(bytes, text.as_bytes(), "{name}");
            assert_eq!(c.to_utf8(&bytes).unwrap(), text, "{name}");
        }
        let l1 = Codec::for_name("LATIN1").unwrap();
        assert!(l1.from_utf8("€").is_err());
        assert!(Codec::for_name("EUC_JP")
            .unwrap()
            .to_utf8(&[0xff, 0xfe])
            .is_err());
        assert!(Codec::for_name("UTF8").is_none());
    }

    #[test]
    fn messages_convert_their_text_only() {
        let c = Codec::for_name("LATIN1").unwrap();
        let mut data = BytesMut::new();
        crate::wire::protocol::build::query(&mut data, "SELECT 'é'");
        crate::wire::protocol::build::parse(&mut data, "s1", "SELECT 'ü' = $1", &[25]);
        crate::wire::protocol::build::empty(&mut data, b'S');
        let out = to_client_messages(&c, &data).unwrap();
        let mut want = BytesMut::new();
        want.extend_from_slice(b"Q\0\0\0\x0fSELECT '\xe9'\0");
        let mut p = b"P\0\0\0\x1bs1\0SELECT '\xfc' = $1\0\0\x01\0\0\0\x19".to_vec();
        p[4] = (p.len() - 1) as u8;
        want.extend_from_slice(&p);
        want.extend_from_slice(b"S\0\0\0\x04");
        assert_eq!(&out[..], &want[..]);
        let back = body_to_utf8(&c, b'P', &p[5..]).unwrap().unwrap();
        assert_eq!(
            &back[..],
            "s1\0SELECT 'ü' = $1\0\0\x01\0\0\0\x19".as_bytes()
        );
        assert!(to_client_messages(&c, b"S\0\0\0\x04").is_none());
    }
}
