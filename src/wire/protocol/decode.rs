//! Decoding the message bodies the proxy reads: a bounds-checked cursor, Parse, Bind,
//! Describe/Close targets, Execute, Query, integer parameters, error fields, command tags.

use super::FrameError;

/// Bounds-checked reader over a message body.
pub struct Cursor<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`; `what` names the message in errors.
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor { data, what }
    }
    fn err(&self) -> FrameError {
        FrameError::Malformed(self.what)
    }
    /// A NUL-terminated string (must be UTF-8).
    pub fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let pos = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err())?;
        let s =
            std::str::from_utf8(&self.data[..pos]).map_err(|_| FrameError::NotUtf8(self.what))?;
        self.data = &self.data[pos + 1..];
        Ok(s)
    }
    /// A big-endian i16.
    pub fn i16(&mut self) -> Result<i16, FrameError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, FrameError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(self.i32()? as u32)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }
    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.data.len() < n {
            return Err(self.err());
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Ok(a)
    }
    /// What is left unread.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

/// A decoded `Parse` message.
#[derive(Debug)]
pub struct ParseMsg<'a> {
    /// Statement name ("" is the unnamed statement).
    pub name: &'a str,
    /// SQL text.
    pub query: &'a str,
    /// Declared parameter type OIDs (0 = unspecified), raw: 4 bytes each, big-endian.
    types: &'a [u8],
}

impl<'a> ParseMsg<'a> {
    /// Decodes a Parse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Parse");
        let name = c.cstr()?;
        let query = c.cstr()?;
        let n = c.i16()?;
        if n < 0 {
            return Err(FrameError::Malformed("Parse"));
        }
        let types = c.bytes(n as usize * 4)?;
        c.finish()?;
        Ok(ParseMsg { name, query, types })
    }

    /// The declared parameter type OIDs, collected.
    pub fn param_types(&self) -> Vec<u32> {
        self.types_iter().collect()
    }

    fn types_iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.types
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// A decoded `Bind` message. Every length is checked when it is decoded, but nothing is
/// copied or collected: parameters and format codes are read from the body on demand, so the
/// single-shard path does not allocate for a Bind.
#[derive(Debug)]
pub struct BindMsg<'a> {
    /// Destination portal name.
    pub portal: &'a str,
    /// Source statement name.
    pub statement: &'a str,
    /// Byte offset in the body where the part after the statement name starts.
    pub tail_offset: usize,
    /// Number of parameters.
    pub n_params: usize,
    /// Parameter format codes, raw (2 bytes each).
    formats: &'a [u8],
    /// The parameter values section (after the parameter count), raw.
    values: &'a [u8],
    /// Result format codes, raw (2 bytes each).
    results: &'a [u8],
    /// Parameter format codes and values, raw (from `tail_offset` to the result codes).
    section: &'a [u8],
}

fn codes(raw: &[u8]) -> Vec<i16> {
    raw.chunks_exact(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect()
}

impl<'a> BindMsg<'a> {
    /// Decodes a Bind body, checking every length against the body size.
    pub fn decode(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Bind");
        let portal = c.cstr()?;
        let statement = c.cstr()?;
        let tail_offset = body.len() - c.rest().len();
        let nf = c.i16()?;
        if nf < 0 {
            return Err(FrameError::Malformed("Bind"));
        }
        let formats = c.bytes(nf as usize * 2)?;
        let np = c.i16()?;
        if np < 0 {
            return Err(FrameError::Malformed("Bind"));
        }
        let values_start = body.len() - c.rest().len();
        for _ in 0..np {
            let len = c.i32()?;
            if len < -1 {
                return Err(FrameError::Malformed("Bind"));
            }
            if len > 0 {
                c.bytes(len as usize)?;
            }
        }
        let params_end = body.len() - c.rest().len();
        let nr = c.i16()?;
        if nr < 0 {
            return Err(FrameError::Malformed("Bind"));
        }
        let results = c.bytes(nr as usize * 2)?;
        c.finish()?;
        if nf > 1 && nf != np {
            return Err(FrameError::Malformed("Bind"));
        }
        Ok(BindMsg {
            portal,
            statement,
            tail_offset,
            n_params: np as usize,
            formats,
            values: &body[values_start..params_end],
            results,
            section: &body[tail_offset..params_end],
        })
    }

    /// Result format codes as sent (0, 1 or N entries).
    pub fn result_formats(&self) -> Vec<i16> {
        codes(self.results)
    }

    /// Parameter values (`None` = SQL NULL), in order.
    pub fn params(&self) -> Vec<Option<&'a [u8]>> {
        self.values().collect()
    }

    /// Calls `f` with the parameter values (`None` = SQL NULL), in order, without
    /// allocating for up to 16 of them.
    pub fn with_params<R>(&self, f: impl FnOnce(&[Option<&'a [u8]>]) -> R) -> R {
        const ON_STACK: usize = 16;
        if self.n_params <= ON_STACK {
            let mut buf: [Option<&'a [u8]>; ON_STACK] = [None; ON_STACK];
            for (slot, v) in buf.iter_mut().zip(self.values()) {
                *slot = v;
            }
            f(&buf[..self.n_params])
        } else {
            f(&self.params())
        }
    }

    /// Parameter `i` (0-based): `None` when absent, `Some(None)` for SQL NULL.
    pub fn param(&self, i: usize) -> Option<Option<&'a [u8]>> {
        self.values().nth(i)
    }

    /// The parameter format codes and values as sent (the part of the body a Bind to
    /// another statement can reuse verbatim).
    pub fn params_section(&self) -> &'a [u8] {
        self.section
    }

    fn values(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut rest = self.values;
        (0..self.n_params).map(move |_| {
            // Lengths were checked in decode.
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            rest = &rest[4..];
            if len < 0 {
                None
            } else {
                let (v, r) = rest.split_at(len as usize);
                rest = r;
                Some(v)
            }
        })
    }

    /// Whether parameter `i` (0-based) is in binary format.
    pub fn is_binary(&self, i: usize) -> bool {
        let code = |k: usize| {
            self.formats
                .get(k * 2..k * 2 + 2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
        };
        match self.formats.len() / 2 {
            0 => false,
            1 => code(0) == Some(1),
            _ => code(i) == Some(1),
        }
    }
}

/// Decodes the `(kind, name)` of a Describe or Close body.
pub fn decode_target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), FrameError> {
    let mut c = Cursor::new(body, what);
    let kind = c.u8()?;
    let name = c.cstr()?;
    c.finish()?;
    if kind != b'S' && kind != b'P' {
        return Err(FrameError::Malformed(what));
    }
    Ok((kind, name))
}

/// Decodes an Execute body: portal name and row limit.
pub fn decode_execute(body: &[u8]) -> Result<(&str, i32), FrameError> {
    let mut c = Cursor::new(body, "Execute");
    let portal = c.cstr()?;
    let max = c.i32()?;
    c.finish()?;
    Ok((portal, max))
}

/// An integer Bind parameter's value: text (`-12`), or binary int2/int4/int8 (big-endian);
/// `None` when it is neither.
pub fn bound_int(value: &[u8], binary: bool) -> Option<i64> {
    if !binary {
        return std::str::from_utf8(value).ok()?.trim().parse().ok();
    }
    match value.len() {
        2 => Some(i64::from(i16::from_be_bytes([value[0], value[1]]))),
        4 => Some(i64::from(i32::from_be_bytes([
            value[0], value[1], value[2], value[3],
        ]))),
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(value);
            Some(i64::from_be_bytes(b))
        }
        _ => None,
    }
}

/// Decodes a Query body: the SQL text.
pub fn decode_query(body: &[u8]) -> Result<&str, FrameError> {
    let mut c = Cursor::new(body, "Query");
    let q = c.cstr()?;
    c.finish()?;
    Ok(q)
}

/// Fields of an ErrorResponse/NoticeResponse body that the proxy looks at.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut msg = String::new();
    // Field texts are in the connection's client encoding, not always UTF-8: read lossily.
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => msg = String::from_utf8_lossy(v).into_owned(),
            Some(_) => {}
            None => break,
        }
    }
    (code, msg)
}

/// Whether an ErrorResponse body has severity FATAL or PANIC (the non-localized `V` field,
/// else the localized `S`): the sender closes the connection after it.
pub fn error_is_fatal(body: &[u8]) -> bool {
    let mut c = Cursor::new(body, "ErrorResponse");
    let mut severity = None;
    while let Ok(t) = c.u8() {
        if t == 0 {
            break;
        }
        let Ok(v) = c.cstr() else { break };
        match t {
            b'V' => return matches!(v, "FATAL" | "PANIC"),
            b'S' => severity = Some(v),
            _ => {}
        }
    }
    matches!(severity, Some("FATAL" | "PANIC"))
}

/// The NUL-terminated text body of a CommandComplete.
pub fn command_tag(body: &[u8]) -> &str {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).unwrap_or("")
}
