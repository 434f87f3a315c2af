//! Postgres wire protocol 3.0: framing and the few messages the proxy decodes or builds.
//!
//! Frames are split by hand (1-byte tag, 4-byte big-endian length that counts itself),
//! with the length checked against a configured maximum before any body is buffered;
//! bodies are decoded with bounds-checked cursors only for the tags the proxy needs.
//! Everything else (`D` rows above all) is forwarded as raw bytes.
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.
//!
//! This file frames; [`decode`] reads the bodies the proxy looks at (re-exported here);
//! [`build`] writes the messages it sends.

pub mod build;
pub mod decode;

pub use decode::*;

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
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

    /// Waits until bytes are buffered (read now if none were: what arrives is kept for
    /// [`Self::next`]) or the stream ended. Cancel safe: a read either lands in the buffer or
    /// does not happen.
    pub async fn readable(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            return Ok(());
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        self.inner.read_buf(&mut self.buf).await.map(|_| ())
    }

    /// Resolves only when the peer is gone: its end of stream (a FIN, possibly behind bytes
    /// it sent first, such as a Terminate) or a read error (a reset). Bytes that arrive
    /// meanwhile are kept for [`Self::next`], read only into the buffer's spare capacity (no
    /// allocation; `BytesMut` grows only when it is full, which is checked first): once it
    /// is full, watching stops — a peer that sends that much is there. Cancel safe: a read
    /// either lands in the buffer or does not happen.
    pub async fn gone(&mut self) -> std::io::Error {
        loop {
            if self.buf.len() >= self.buf.capacity() {
                return std::future::pending().await;
            }
            match self.inner.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client closed its connection while a statement ran",
                    )
                }
                Ok(_) => {}
                Err(e) => return e,
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
