//! Postgres wire protocol 3.0: framing and the few messages the proxy decodes or builds.
//!
//! Frames are split by hand (1-byte tag, 4-byte big-endian length that counts itself),
//! with the length checked against a configured maximum before any body is buffered;
//! bodies are decoded with bounds-checked cursors only for the tags the proxy needs.
//! Everything else (`D` rows above all) is forwarded as raw bytes.
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
/// Request code of an SSLRequest.
pub const SSL_REQUEST: i32 = 80_877_103;
/// Request code of a GSSENCRequest.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// Request code of a CancelRequest.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Largest startup packet accepted (Postgres uses 10,000 bytes too).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A framing or decoding failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The declared length is below 4 or above the configured maximum.
    #[error("invalid message length {len} for message type '{tag}' (limit {max} bytes)")]
    BadLength {
        /// The message tag as a character.
        tag: char,
        /// The declared length.
        len: i64,
        /// The configured maximum.
        max: usize,
    },
    /// A string in a message is not UTF-8, the only client encoding the proxy speaks.
    #[error("invalid byte sequence for encoding \"UTF8\" in a {0} message")]
    NotUtf8(&'static str),
    /// A message body did not have the shape its tag requires.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One complete tagged message: `raw` holds the tag, the length and the body.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The whole message as received (5-byte header plus body).
    pub raw: Bytes,
}

impl Frame {
    /// The message body, after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Buffered reader that splits a byte stream into [`Frame`]s without copying bodies.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
    /// A budget shared by many readers for large messages, and its size in permits (see
    /// [`FrameReader::with_budget`]).
    budget: Option<(Arc<Semaphore>, usize)>,
    /// What the last large message took from the budget, given back at the next read.
    held: Option<LargeShare>,
}

/// Returns freed heap memory to the system (glibc keeps it in its arenas otherwise).
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A large message's share of the budget. When it goes (at the reader's next read, or with
/// the reader), the message is done with: its memory is returned to the system — the
/// allocator keeps freed memory otherwise, and RSS would stay at the burst's peak.
struct LargeShare(#[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for LargeShare {
    fn drop(&mut self) {
        give_back_memory();
    }
}

/// Messages from this size on draw on a reader's budget.
pub const LARGE_MESSAGE: usize = 1 << 20;

/// Memory a large statement costs the proxy, as a multiple of its size: its bytes, the
/// parser's copies and tree, the forwarded copy (measured: ~15 with 16 MiB statements).
const LARGE_MESSAGE_WEIGHT: usize = 16;

/// Budget units (KiB) a large message of `len` bytes takes: [`LARGE_MESSAGE_WEIGHT`] times
/// its size, capped at the whole budget (`units`) so the largest message still fits.
fn budget_units(len: usize, units: usize) -> u32 {
    let want = (len.saturating_mul(LARGE_MESSAGE_WEIGHT) >> 10).max(1);
    u32::try_from(want.min(units)).unwrap_or(u32::MAX)
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream; messages longer than `max_len` bytes are refused.
    pub fn new(inner: R, max_len: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8192),
            max_len,
            budget: None,
            held: None,
        }
    }

    /// Makes large messages (from [`LARGE_MESSAGE`] bytes) draw on `budget` (permits are
    /// KiB), shared by every client of a proxy: a message that does not fit is not read on
    /// until others give theirs back — the reader stops reading, so the client waits
    /// (backpressure) instead of the proxy's memory growing. A message keeps its share
    /// until the next read, by when the session has finished with it; the memory is then
    /// handed back to the system.
    pub fn with_budget(mut self, budget: Arc<Semaphore>, units: usize) -> Self {
        self.budget = Some((budget, units));
        self
    }

    /// After a large message: what is left of the buffer shares its allocation; move it to
    /// a small one, so the large allocation goes when the message does, not when this
    /// connection next grows its buffer.
    #[cold]
    #[inline(never)]
    fn detach_buffer(&mut self) {
        let rest = std::mem::replace(&mut self.buf, BytesMut::with_capacity(8192));
        self.buf.extend_from_slice(&rest);
    }

    /// Length (tag included) of the frame whose header is buffered, if any.
    fn pending_total(&self) -> Option<usize> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        usize::try_from(len).ok().map(|l| l + 1)
    }

    /// Takes a complete frame out of the buffer, if one is there.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as i64;
        if len < 4 || len as u64 > self.max_len as u64 {
            return Err(FrameError::BadLength {
                tag: tag as char,
                len,
                max: self.max_len,
            });
        }
        let total = len as usize + 1;
        if self.buf.len() < total {
            // Reserve what the rest of the frame needs (bounded by max_len above).
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let raw = self.buf.split_to(total).freeze();
        if total >= LARGE_MESSAGE {
            self.detach_buffer();
        }
        Ok(Some(Frame { tag, raw }))
    }

    /// Whether any bytes are buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether a complete frame is already buffered.
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        len >= 4 && self.buf.len() > len as usize
    }

    /// Reads the next frame; `Ok(None)` on a clean end of stream between messages.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.held.is_some() {
            // The last large message is done with.
            self.held = None;
        }
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(Some(f));
            }
            // More bytes are needed: a large message waits for its share of the budget
            // before they are read (its buffer is reserved, not yet filled).
            if self.budget.is_some() && self.held.is_none() && self.buf.len() >= 5 {
                self.take_share().await;
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8192);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// Waits for the budget share of the large message whose header is buffered, if it is
    /// one.
    async fn take_share(&mut self) {
        let Some((budget, size)) = &self.budget else {
            return;
        };
        if let Some(total) = self.pending_total().filter(|&t| t >= LARGE_MESSAGE) {
            if total <= self.max_len {
                let units = budget_units(total, *size);
                self.held = budget
                    .clone()
                    .acquire_many_owned(units)
                    .await
                    .ok()
                    .map(LargeShare);
            }
        }
    }

    /// Reads an untagged startup-phase packet (length, then body); returns the body.
    pub async fn startup_packet(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len =
                    i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as i64;
                if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
                    return Err(FrameError::BadLength {
                        tag: '\0',
                        len,
                        max: MAX_STARTUP_LEN,
                    });
                }
                if self.buf.len() >= len as usize {
                    let mut pkt = self.buf.split_to(len as usize);
                    pkt.advance(4);
                    return Ok(Some(pkt.freeze()));
                }
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The wrapped stream, dropping anything buffered (check [`Self::has_buffered`] first).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

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

/// Builders for messages the proxy sends (to clients or, for a few, to backends).
pub mod build {
    use super::*;

    /// Starts a message: writes `tag` and a length placeholder; returns where the length
    /// goes, for [`finish`].
    pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
        buf.put_u8(tag);
        let at = buf.len();
        buf.put_i32(0);
        at
    }
    /// Ends a message started with [`begin`] by filling in its length.
    pub fn finish(buf: &mut BytesMut, at: usize) {
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// AuthenticationOk / SASL / MD5 request: code plus payload.
    pub fn auth(buf: &mut BytesMut, code: i32, payload: &[u8]) {
        let at = begin(buf, b'R');
        buf.put_i32(code);
        buf.put_slice(payload);
        finish(buf, at);
    }
    /// ParameterStatus.
    pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
        let at = begin(buf, b'S');
        put_cstr(buf, name);
        put_cstr(buf, value);
        finish(buf, at);
    }
    /// BackendKeyData.
    pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
        let at = begin(buf, b'K');
        buf.put_i32(pid);
        buf.put_i32(secret);
        finish(buf, at);
    }
    /// ReadyForQuery with a transaction status byte (`I`, `T` or `E`).
    pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
        let at = begin(buf, b'Z');
        buf.put_u8(status);
        finish(buf, at);
    }
    /// ErrorResponse (or NoticeResponse with tag `N`).
    pub fn error(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
        error_bytes(buf, severity, code, message.as_bytes());
    }
    /// ErrorResponse whose message is already in the client's encoding (not UTF-8).
    pub fn error_bytes(buf: &mut BytesMut, severity: &str, code: &str, message: &[u8]) {
        let at = begin(buf, b'E');
        buf.put_u8(b'S');
        put_cstr(buf, severity);
        buf.put_u8(b'V');
        put_cstr(buf, severity);
        buf.put_u8(b'C');
        put_cstr(buf, code);
        buf.put_u8(b'M');
        buf.put_slice(message);
        buf.put_u8(0);
        buf.put_u8(0);
        finish(buf, at);
    }
    /// CommandComplete.
    pub fn command_complete(buf: &mut BytesMut, tag: &str) {
        let at = begin(buf, b'C');
        put_cstr(buf, tag);
        finish(buf, at);
    }
    /// A message with an empty body (ParseComplete `1`, BindComplete `2`, CloseComplete `3`,
    /// NoData `n`, EmptyQueryResponse `I`, Sync `S`, Flush `H`, Terminate `X`).
    pub fn empty(buf: &mut BytesMut, tag: u8) {
        buf.put_u8(tag);
        buf.put_i32(4);
    }
    /// RowDescription of columns made by the proxy: (name, type oid, type length, format)
    /// each, no table.
    pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32, i16, i16)]) {
        let at = begin(buf, b'T');
        buf.put_i16(columns.len() as i16);
        for &(name, oid, len, format) in columns {
            put_cstr(buf, name);
            buf.put_i32(0); // table oid
            buf.put_i16(0); // column number
            buf.put_u32(oid);
            buf.put_i16(len);
            buf.put_i32(-1); // type modifier
            buf.put_i16(format);
        }
        finish(buf, at);
    }
    /// DataRow of raw values (`None` = NULL), in whatever format was asked.
    pub fn data_row_raw(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
        let at = begin(buf, b'D');
        buf.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(b) => {
                    buf.put_i32(b.len() as i32);
                    buf.put_slice(b);
                }
                None => buf.put_i32(-1),
            }
        }
        finish(buf, at);
    }
    /// DataRow of text values (`None` = NULL).
    pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
        let raw: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
        data_row_raw(buf, &raw);
    }
    /// Query (simple protocol).
    pub fn query(buf: &mut BytesMut, sql: &str) {
        let at = begin(buf, b'Q');
        put_cstr(buf, sql);
        finish(buf, at);
    }
    /// Parse with a statement name, SQL and parameter types.
    pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
        let at = begin(buf, b'P');
        put_cstr(buf, name);
        put_cstr(buf, sql);
        buf.put_i16(types.len() as i16);
        for t in types {
            buf.put_u32(*t);
        }
        finish(buf, at);
    }
    /// A Bind whose statement name is replaced; `tail` is the original body after the statement name.
    pub fn bind_renamed(buf: &mut BytesMut, portal: &str, statement: &str, tail: &[u8]) {
        let at = begin(buf, b'B');
        put_cstr(buf, portal);
        put_cstr(buf, statement);
        buf.put_slice(tail);
        finish(buf, at);
    }
    /// Execute of a portal (`max_rows` 0 = all rows).
    pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
        let at = begin(buf, b'E');
        put_cstr(buf, portal);
        buf.put_i32(max_rows);
        finish(buf, at);
    }
    /// Describe or Close (`tag` `D` or `C`) of a statement or portal.
    pub fn target(buf: &mut BytesMut, tag: u8, kind: u8, name: &str) {
        let at = begin(buf, tag);
        buf.put_u8(kind);
        put_cstr(buf, name);
        finish(buf, at);
    }
    /// A NUL-terminated string.
    pub fn put_cstr(buf: &mut BytesMut, s: &str) {
        buf.put_slice(s.as_bytes());
        buf.put_u8(0);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_and_bounded() {
        let mut data = BytesMut::new();
        build::query(&mut data, "select 1");
        build::empty(&mut data, b'S');
        let mut r = FrameReader::new(&data[..], 1024);
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(decode_query(f.body()).unwrap(), "select 1");
        assert_eq!(r.next().await.unwrap().unwrap().tag, b'S');
        assert!(r.next().await.unwrap().is_none());
        let huge = [b'Q', 0x40, 0, 0, 0];
        let mut r = FrameReader::new(&huge[..], 1024);
        assert!(matches!(r.next().await, Err(FrameError::BadLength { .. })));
        let trunc = [b'Q', 0, 0, 0, 10, b'x'];
        let mut r = FrameReader::new(&trunc[..], 1024);
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
    }

    #[test]
    fn bind_decode_checks_lengths() {
        // portal "", stmt "s", 1 format (binary), 1 param of declared length 100 but 2 bytes present
        let body = [0, b's', 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 100, 1, 2];
        assert!(BindMsg::decode(&body).is_err());
        let ok = [0, b's', 0, 0, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0];
        let b = BindMsg::decode(&ok).unwrap();
        assert_eq!(b.params(), vec![Some(&b"42"[..])]);
        assert!(!b.is_binary(0));
        assert_eq!(b.tail_offset, 3);
        // NULL and empty values, binary format code, result codes.
        let nulls = [
            0, 0, 0, 1, 0, 1, 0, 2, 255, 255, 255, 255, 0, 0, 0, 0, 0, 1, 0, 1,
        ];
        let b = BindMsg::decode(&nulls).unwrap();
        assert_eq!(b.params(), vec![None, Some(&b""[..])]);
        assert!(b.is_binary(0) && b.is_binary(1));
        assert_eq!(b.result_formats(), vec![1]);
        // A length below -1 is malformed.
        let bad = [0, 0, 0, 0, 0, 1, 255, 255, 255, 254, 0, 0];
        assert!(BindMsg::decode(&bad).is_err());
    }

    #[test]
    fn bound_ints_in_text_and_binary() {
        assert_eq!(bound_int(b" -12 ", false), Some(-12));
        assert_eq!(bound_int(&7i16.to_be_bytes(), true), Some(7));
        assert_eq!(bound_int(&(-7i32).to_be_bytes(), true), Some(-7));
        assert_eq!(bound_int(&(1i64 << 40).to_be_bytes(), true), Some(1 << 40));
        assert_eq!(bound_int(b"abc", false), None);
        assert_eq!(bound_int(&[1, 2, 3], true), None);
    }
}
