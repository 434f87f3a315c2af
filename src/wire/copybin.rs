//! Streaming parser for PostgreSQL's binary COPY format.
//!
//! Two readers use it: the rebalance tool reads `COPY t TO STDOUT (FORMAT binary)` from a
//! source shard, and the proxy reads a client's `COPY t FROM STDIN (FORMAT binary)`
//! (`crate::routing::copysplit`). Both get chunks of arbitrary size (a tuple may span
//! chunks, a chunk may hold many tuples), look at one field of each tuple (the shard key),
//! and forward the raw bytes of each tuple to a shard's `COPY t FROM STDIN (FORMAT binary)`,
//! framed by [`HEADER`] and [`TRAILER`]. Tuples are never re-encoded.
//!
//! # Format (PostgreSQL docs, "COPY", section "Binary Format")
//!
//! - Header: the 11-byte signature `PGCOPY\n\xff\r\n\0`; a big-endian int32 of flags (bit 16:
//!   OIDs included, refused here; bits 17–31: critical flags, refused if any is set; bits
//!   0–15: ignorable); a big-endian int32 header-extension length N, then N bytes, skipped.
//! - Tuple: a big-endian int16 field count, then per field a big-endian int32 length (-1 for
//!   NULL, no bytes follow) and that many bytes.
//! - Trailer: an int16 field count of -1. Nothing may follow it.
//!
//! # Use
//!
//! Feed chunks with [`TupleReader::push`], drain complete tuples with
//! [`TupleReader::next_tuple`] until it returns `Ok(None)`, repeat; at the end of the input
//! call [`TupleReader::finish`], which fails unless the trailer was seen and nothing
//! follows it. Consumed input is compacted away on `push`, so the reader's memory is bounded
//! by about twice the largest tuple plus one chunk, and the total copying is linear in the
//! input size. A tuple larger than the reader's limit ([`MAX_TUPLE`] by default) is an
//! error rather than an unbounded allocation. After an error the reader keeps returning it.

use thiserror::Error;

/// The 11-byte signature that starts every binary COPY stream.
pub const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A minimal binary COPY header (signature, flags 0, extension length 0), 19 bytes: what a
/// target `COPY … FROM STDIN (FORMAT binary)` must receive before the first tuple.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The binary COPY trailer (field count -1), sent after the last tuple.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Default limit on the size of one tuple, field count and length words included (1 GiB,
/// Postgres's own limit on a single field value).
pub const MAX_TUPLE: usize = 1 << 30;

/// Header flag bit 16: every tuple carries an OID (only written by pre-12 servers).
const FLAG_OIDS: u32 = 1 << 16;

/// Header flag bits 17–31: critical format flags a reader must not ignore.
const FLAGS_CRITICAL: u32 = !0u32 << 17;

/// Errors found in a binary COPY stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CopyBinError {
    /// The stream does not start with the binary COPY signature.
    #[error("not a binary COPY stream: bad signature")]
    BadSignature,
    /// The header says tuples carry OIDs, which this reader does not support.
    #[error("binary COPY stream includes OIDs, which is not supported")]
    OidsIncluded,
    /// The header sets critical flag bits this reader does not know.
    #[error("binary COPY header has unrecognized critical flags {0:#010x}")]
    UnknownCriticalFlags(u32),
    /// The header-extension length is negative.
    #[error("binary COPY header extension length {0} is negative")]
    BadHeaderExtension(i32),
    /// A tuple's field count is negative but not the trailer's -1.
    #[error("bad field count {count} in binary COPY tuple {tuple}")]
    BadFieldCount {
        /// 1-based tuple number.
        tuple: u64,
        /// The field-count word.
        count: i16,
    },
    /// A field length is negative but not NULL's -1.
    #[error("bad length {len} for field {field} of binary COPY tuple {tuple}")]
    BadFieldLength {
        /// 1-based tuple number.
        tuple: u64,
        /// 0-based field index.
        field: usize,
        /// The length word.
        len: i32,
    },
    /// A tuple is larger than the reader's limit.
    #[error("binary COPY tuple {tuple} is larger than the limit of {max} bytes")]
    TupleTooLarge {
        /// 1-based tuple number.
        tuple: u64,
        /// The limit in bytes.
        max: usize,
    },
    /// The stream ended before the trailer (mid-header, mid-tuple or between tuples).
    #[error("binary COPY stream truncated: no trailer ({buffered} unparsed bytes at the end)")]
    Truncated {
        /// Bytes of an incomplete header or tuple left at the end.
        buffered: usize,
    },
    /// Bytes follow the trailer.
    #[error("{0} bytes of data after the binary COPY trailer")]
    TrailingData(usize),
}

/// Where a field's value lies inside [`Tuple::raw`].
#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    /// Offset of the value's first byte in the tuple.
    start: usize,
    /// Value length, `None` for NULL.
    len: Option<usize>,
}

/// What the reader expects next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The fixed 19-byte part of the header.
    Header,
    /// This many header-extension bytes still to skip.
    SkipExtension(usize),
    /// A tuple or the trailer.
    Tuples,
    /// The trailer has been seen.
    Done,
    /// An error was found; it is returned again on every call.
    Failed(CopyBinError),
}

/// Progress through a tuple that is not complete yet, kept so that each `push` resumes the
/// scan instead of restarting it.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// The tuple's field count, once read.
    field_count: Option<usize>,
    /// Offset, from the tuple's start, of the next field's length word.
    offset: usize,
}

/// An incremental binary COPY parser: push chunks in, take complete tuples out.
#[derive(Debug)]
pub struct TupleReader {
    /// Input; bytes before `pos` are consumed.
    buf: Vec<u8>,
    /// Start of the unconsumed input (the current tuple's first byte).
    pos: usize,
    state: State,
    /// The current tuple's scan progress.
    scan: Scan,
    /// Field spans of the current tuple (reused between tuples).
    fields: Vec<FieldSpan>,
    /// Tuples returned so far.
    tuples: u64,
    /// Largest accepted tuple size in bytes.
    max_tuple: usize,
}

/// One complete tuple, borrowed from the reader until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Tuple<'a> {
    /// The tuple's bytes exactly as received, its 2-byte field count included: forward these
    /// to a binary `COPY … FROM STDIN`.
    pub raw: &'a [u8],
    fields: &'a [FieldSpan],
}

impl Tuple<'_> {
    /// Number of fields in the tuple.
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    /// Field `i` (0-based): `None` if out of range, `Some(None)` if NULL, else its bytes.
    pub fn field(&self, i: usize) -> Option<Option<&[u8]>> {
        let span = self.fields.get(i)?;
        Some(
            span.len
                .and_then(|len| self.raw.get(span.start..span.start + len)),
        )
    }
}

impl Default for TupleReader {
    fn default() -> Self {
        Self::new()
    }
}

impl TupleReader {
    /// A reader expecting a binary COPY header, accepting tuples up to [`MAX_TUPLE`] bytes.
    pub fn new() -> Self {
        Self::with_max_tuple(MAX_TUPLE)
    }

    /// A reader accepting tuples up to `max_tuple` bytes (field count and length words
    /// included).
    pub fn with_max_tuple(max_tuple: usize) -> Self {
        TupleReader {
            buf: Vec::new(),
            pos: 0,
            state: State::Header,
            scan: Scan {
                field_count: None,
                offset: 0,
            },
            fields: Vec::new(),
            tuples: 0,
            max_tuple,
        }
    }

    /// Appends a chunk of input (any size, any alignment), first dropping consumed bytes
    /// when they make up at least half of the buffer.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Whether the trailer has been seen.
    pub fn finished(&self) -> bool {
        self.state == State::Done
    }

    /// Number of tuples returned so far.
    pub fn tuple_count(&self) -> u64 {
        self.tuples
    }

    /// Whether the input ends cleanly between two tuples without a trailer: the header has
    /// been read and no byte of a next tuple is buffered. Postgres accepts a
    /// `COPY … FROM STDIN (FORMAT binary)` whose data ends there.
    pub fn at_tuple_boundary(&self) -> bool {
        self.state == State::Tuples && self.pos == self.buf.len()
    }

    /// Bytes buffered after the trailer (data a reader must refuse), 0 before it.
    pub fn after_trailer(&self) -> usize {
        match self.state {
            State::Done => self.buf.len() - self.pos,
            _ => 0,
        }
    }

    /// How many complete tuples the buffered input holds that [`next_tuple`](Self::next_tuple)
    /// has not returned yet (a malformed tuple and what follows it are not counted). Reads
    /// only the length words, once per call.
    pub fn complete_tuples(&self) -> usize {
        let mut at = match self.state {
            State::Tuples => self.pos,
            State::Header => {
                let avail = self.avail();
                match be_u32(avail, 15).map(|ext| ext as i32) {
                    Some(ext) if ext >= 0 => self
                        .pos
                        .saturating_add(HEADER.len())
                        .saturating_add(ext as usize),
                    _ => return 0,
                }
            }
            State::SkipExtension(left) => self.pos.saturating_add(left),
            State::Done | State::Failed(_) => return 0,
        };
        let mut n = 0;
        loop {
            let Some(count) = be_u16(&self.buf, at).map(|c| c as i16) else {
                return n;
            };
            let Ok(fields) = usize::try_from(count) else {
                return n; // the trailer, or a bad count
            };
            let start = at;
            at += 2;
            for _ in 0..fields {
                let Some(len) = be_u32(&self.buf, at).map(|l| l as i32) else {
                    return n;
                };
                at += 4;
                match len {
                    -1 => {}
                    l if l < 0 => return n,
                    l => at = at.saturating_add(l as usize),
                }
                if at > self.buf.len() || at - start > self.max_tuple {
                    return n;
                }
            }
            n += 1;
        }
    }

    /// Checks the end of the input: the trailer must have been seen and nothing may follow.
    pub fn finish(&self) -> Result<(), CopyBinError> {
        let left = self.buf.len() - self.pos;
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Done if left > 0 => Err(CopyBinError::TrailingData(left)),
            State::Done => Ok(()),
            _ => Err(CopyBinError::Truncated { buffered: left }),
        }
    }

    /// The next complete tuple, or `None` when more input is needed or the trailer has
    /// been seen (see [`finished`](Self::finished)).
    pub fn next_tuple(&mut self) -> Result<Option<Tuple<'_>>, CopyBinError> {
        match self.advance() {
            Ok(Some(end)) => Ok(Some(Tuple {
                raw: &self.buf[end.0..end.1],
                fields: &self.fields,
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Unconsumed input.
    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Parses as far as the input allows; returns the byte range of a completed tuple.
    fn advance(&mut self) -> Result<Option<(usize, usize)>, CopyBinError> {
        loop {
            match self.state {
                State::Failed(ref e) => return Err(e.clone()),
                State::Done => return Ok(None),
                State::Header => {
                    let avail = self.avail();
                    let n = avail.len().min(SIGNATURE.len());
                    if avail[..n] != SIGNATURE[..n] {
                        return Err(CopyBinError::BadSignature);
                    }
                    let (Some(flags), Some(ext)) = (be_u32(avail, 11), be_u32(avail, 15)) else {
                        return Ok(None);
                    };
                    if flags & FLAG_OIDS != 0 {
                        return Err(CopyBinError::OidsIncluded);
                    }
                    if flags & FLAGS_CRITICAL != 0 {
                        return Err(CopyBinError::UnknownCriticalFlags(flags & FLAGS_CRITICAL));
                    }
                    let ext = ext as i32;
                    let skip =
                        usize::try_from(ext).map_err(|_| CopyBinError::BadHeaderExtension(ext))?;
                    self.pos += HEADER.len();
                    self.state = State::SkipExtension(skip);
                }
                State::SkipExtension(left) => {
                    let n = left.min(self.avail().len());
                    self.pos += n;
                    if n < left {
                        self.state = State::SkipExtension(left - n);
                        return Ok(None);
                    }
                    self.state = State::Tuples;
                }
                State::Tuples => return self.scan_tuple(),
            }
        }
    }

    /// Continues scanning the current tuple; on completion consumes it and returns its range.
    fn scan_tuple(&mut self) -> Result<Option<(usize, usize)>, CopyBinError> {
        let tuple_no = self.tuples + 1;
        let avail = &self.buf[self.pos..];
        let field_count = match self.scan.field_count {
            Some(n) => n,
            None => {
                let Some(count) = be_u16(avail, 0) else {
                    return Ok(None);
                };
                let count = count as i16;
                if count == -1 {
                    self.pos += 2;
                    self.state = State::Done;
                    return Ok(None);
                }
                let n = usize::try_from(count).map_err(|_| CopyBinError::BadFieldCount {
                    tuple: tuple_no,
                    count,
                })?;
                self.fields.clear();
                self.scan = Scan {
                    field_count: Some(n),
                    offset: 2,
                };
                n
            }
        };
        while self.fields.len() < field_count {
            let offset = self.scan.offset;
            let Some(len) = be_u32(avail, offset) else {
                return Ok(None);
            };
            let len = len as i32;
            let start = offset + 4;
            let span = match len {
                -1 => FieldSpan { start, len: None },
                _ => {
                    let len = usize::try_from(len).map_err(|_| CopyBinError::BadFieldLength {
                        tuple: tuple_no,
                        field: self.fields.len(),
                        len,
                    })?;
                    FieldSpan {
                        start,
                        len: Some(len),
                    }
                }
            };
            let end = start.saturating_add(span.len.unwrap_or(0));
            if end > self.max_tuple {
                return Err(CopyBinError::TupleTooLarge {
                    tuple: tuple_no,
                    max: self.max_tuple,
                });
            }
            if end > avail.len() {
                // Wait for the value; the length word is re-read on the next call.
                return Ok(None);
            }
            self.fields.push(span);
            self.scan.offset = end;
        }
        // A zero-field tuple (or one whose fields all fit) is complete here.
        let size = self.scan.offset;
        if size > self.max_tuple {
            return Err(CopyBinError::TupleTooLarge {
                tuple: tuple_no,
                max: self.max_tuple,
            });
        }
        let range = (self.pos, self.pos + size);
        self.pos += size;
        self.tuples = tuple_no;
        self.scan = Scan {
            field_count: None,
            offset: 0,
        };
        Ok(Some(range))
    }
}

/// The big-endian u16 at `at`, if the bytes are there.
fn be_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// The big-endian u32 at `at`, if the bytes are there.
fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One binary COPY tuple with `fields` (`None` = NULL), for tests.
#[cfg(test)]
pub(crate) fn encode_tuple(fields: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(fields.len() as i16).to_be_bytes());
    for f in fields {
        match f {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// One test tuple: `None` = NULL field.
    type Row = Vec<Option<Vec<u8>>>;

    fn header(flags: u32, ext: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&(ext.len() as u32).to_be_bytes());
        out.extend_from_slice(ext);
        out
    }

    fn stream(ext: &[u8], rows: &[Row]) -> Vec<u8> {
        let mut out = header(0, ext);
        for r in rows {
            out.extend(encode_tuple(r));
        }
        out.extend_from_slice(TRAILER);
        out
    }

    fn sample_rows() -> Vec<Row> {
        vec![
            vec![Some(b"\x00\x00\x00\x2a".to_vec()), Some(b"alice".to_vec())],
            vec![Some(b"\x00\x00\x00\x07".to_vec()), None],
            vec![],
            vec![None, None, Some(Vec::new())],
            vec![Some(vec![0xff; 300]), Some(b"x".to_vec()), None],
            vec![Some(b"\xff\xff".to_vec())],
        ]
    }

    /// Feeds `data` in the given chunk sizes; returns decoded rows, raw tuples, and the
    /// final `finish()` result.
    fn run(
        data: &[u8],
        chunks: impl IntoIterator<Item = usize>,
    ) -> Result<(Vec<Row>, Vec<Vec<u8>>), CopyBinError> {
        let mut r = TupleReader::new();
        let mut rows = Vec::new();
        let mut raws = Vec::new();
        let mut at = 0;
        let mut sizes = chunks.into_iter();
        while at < data.len() {
            let n = sizes.next().unwrap_or(data.len()).clamp(1, data.len() - at);
            r.push(&data[at..at + n]);
            at += n;
            while let Some(t) = r.next_tuple()? {
                let row: Row = (0..t.field_count())
                    .map(|i| t.field(i).flatten().map(<[u8]>::to_vec))
                    .collect();
                assert_eq!(t.field(t.field_count()), None);
                raws.push(t.raw.to_vec());
                rows.push(row);
            }
        }
        r.finish()?;
        assert!(r.finished());
        assert_eq!(r.tuple_count(), rows.len() as u64);
        Ok((rows, raws))
    }

    #[test]
    fn header_constants() {
        assert_eq!(HEADER.len(), 19);
        assert_eq!(HEADER, header(0, &[]).as_slice());
        assert_eq!(TRAILER, (-1i16).to_be_bytes());
    }

    #[test]
    fn whole_stream() {
        let rows = sample_rows();
        let data = stream(&[], &rows);
        let (got, raws) = run(&data, [data.len()]).unwrap();
        assert_eq!(got, rows);
        for (raw, row) in raws.iter().zip(&rows) {
            assert_eq!(raw, &encode_tuple(row));
        }
        // Forwarding the raw tuples between HEADER and TRAILER rebuilds the stream.
        let mut rebuilt = HEADER.to_vec();
        raws.iter().for_each(|r| rebuilt.extend_from_slice(r));
        rebuilt.extend_from_slice(TRAILER);
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn one_byte_chunks() {
        let rows = sample_rows();
        let data = stream(b"ext!", &rows);
        let (got, _) = run(&data, std::iter::repeat(1)).unwrap();
        assert_eq!(got, rows);
    }

    #[test]
    fn split_at_every_boundary() {
        let rows = sample_rows();
        let data = stream(b"abc", &rows);
        for a in 0..=data.len() {
            for b in [1, 2, 3, 7] {
                let (got, _) = run(&data, [a, b]).unwrap();
                assert_eq!(got, rows, "split at {a} then {b}");
            }
        }
    }

    #[test]
    fn random_chunking() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..200 {
            let rows: Vec<Row> = (0..rng.gen_range(0..40))
                .map(|_| {
                    (0..rng.gen_range(0..6))
                        .map(|_| {
                            if rng.gen_bool(0.2) {
                                None
                            } else {
                                let n = rng.gen_range(0..50);
                                Some((0..n).map(|_| rng.gen()).collect())
                            }
                        })
                        .collect()
                })
                .collect();
            let ext: Vec<u8> = (0..rng.gen_range(0..8)).map(|_| rng.gen()).collect();
            let data = stream(&ext, &rows);
            let sizes: Vec<usize> = (0..data.len()).map(|_| rng.gen_range(1..64)).collect();
            let (got, _) = run(&data, sizes).unwrap();
            assert_eq!(got, rows);
        }
    }

    #[test]
    fn complete_tuples_counts_what_next_tuple_returns() {
        let rows = sample_rows();
        let data = stream(b"xy", &rows);
        for cut in 0..=data.len() {
            let mut r = TupleReader::new();
            r.push(&data[..cut]);
            let counted = r.complete_tuples();
            let mut got = 0;
            while let Ok(Some(_)) = r.next_tuple() {
                got += 1;
            }
            assert_eq!(counted, got, "cut at {cut}");
            assert_eq!(r.complete_tuples(), 0);
            // The rest arrives: the count covers the tuples left.
            r.push(&data[cut..]);
            let counted = r.complete_tuples();
            let mut more = 0;
            while let Ok(Some(_)) = r.next_tuple() {
                more += 1;
            }
            assert_eq!((counted, got + more), (more, rows.len()), "cut at {cut}");
            // Ends at a tuple boundary only where a tuple or the header ended.
            assert!(r.finished() && r.after_trailer() == 0);
        }
    }

    #[test]
    fn tuple_boundary_and_data_after_trailer() {
        let row: Row = vec![Some(b"k".to_vec())];
        let mut r = TupleReader::new();
        assert!(!r.at_tuple_boundary());
        r.push(&header(0, b"e"));
        assert!(r.next_tuple().unwrap().is_none());
        assert!(r.at_tuple_boundary());
        let t = encode_tuple(&row);
        r.push(&t[..3]);
        assert!(r.next_tuple().unwrap().is_none());
        assert!(!r.at_tuple_boundary());
        r.push(&t[3..]);
        assert!(r.next_tuple().unwrap().is_some());
        assert!(r.at_tuple_boundary());
        r.push(TRAILER);
        r.push(b"zz");
        assert!(r.next_tuple().unwrap().is_none());
        assert_eq!((r.finished(), r.after_trailer()), (true, 2));
        assert!(!r.at_tuple_boundary());
    }

    #[test]
    fn empty_table() {
        let data = stream(&[], &[]);
        let (got, _) = run(&data, std::iter::repeat(1)).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn header_extension_and_ignorable_flags() {
        let mut data = header(0x0000_ffff, &[9; 1000]);
        data.extend(encode_tuple(&[Some(b"k".to_vec())]));
        data.extend_from_slice(TRAILER);
        let (got, _) = run(&data, std::iter::repeat(13)).unwrap();
        assert_eq!(got, vec![vec![Some(b"k".to_vec())]]);
    }

    #[test]
    fn bad_signature_early() {
        let mut r = TupleReader::new();
        r.push(b"PGCOPX");
        assert_eq!(r.next_tuple().unwrap_err(), CopyBinError::BadSignature);
        // Text-format COPY data.
        let mut r = TupleReader::new();
        r.push(b"1\talice\n");
        assert_eq!(r.next_tuple().unwrap_err(), CopyBinError::BadSignature);
        // The error sticks.
        r.push(&stream(&[], &[]));
        assert_eq!(r.next_tuple().unwrap_err(), CopyBinError::BadSignature);
        assert_eq!(r.finish(), Err(CopyBinError::BadSignature));
    }

    #[test]
    fn oids_and_critical_flags_refused() {
        let mut r = TupleReader::new();
        r.push(&header(1 << 16, &[]));
        assert_eq!(r.next_tuple().unwrap_err(), CopyBinError::OidsIncluded);
        let mut r = TupleReader::new();
        r.push(&header(1 << 20, &[]));
        assert_eq!(
            r.next_tuple().unwrap_err(),
            CopyBinError::UnknownCriticalFlags(1 << 20)
        );
    }

    #[test]
    fn negative_extension_length() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&(-5i32).to_be_bytes());
        let mut r = TupleReader::new();
        r.push(&data);
        assert_eq!(
            r.next_tuple().unwrap_err(),
            CopyBinError::BadHeaderExtension(-5)
        );
    }

    #[test]
    fn bad_field_count_and_length() {
        let mut data = header(0, &[]);
        data.extend_from_slice(&(-2i16).to_be_bytes());
        assert_eq!(
            run(&data, [data.len()]).unwrap_err(),
            CopyBinError::BadFieldCount {
                tuple: 1,
                count: -2
            }
        );

        let mut data = header(0, &[]);
        data.extend(encode_tuple(&[None]));
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&(-3i32).to_be_bytes());
        assert_eq!(
            run(&data, std::iter::repeat(1)).unwrap_err(),
            CopyBinError::BadFieldLength {
                tuple: 2,
                field: 1,
                len: -3
            }
        );
    }

    #[test]
    fn truncated_streams() {
        let data = stream(&[], &sample_rows());
        // Every proper prefix is truncated (the trailer is the last two bytes).
        for cut in 0..data.len() {
            match run(&data[..cut], std::iter::repeat(5)) {
                Err(CopyBinError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let mut r = TupleReader::new();
        r.push(&data[..HEADER.len() + 3]);
        assert!(r.next_tuple().unwrap().is_none());
        assert_eq!(r.finish(), Err(CopyBinError::Truncated { buffered: 3 }));
    }

    #[test]
    fn data_after_trailer() {
        let mut data = stream(&[], &sample_rows());
        data.extend_from_slice(b"junk");
        assert_eq!(
            run(&data, std::iter::repeat(3)).unwrap_err(),
            CopyBinError::TrailingData(4)
        );
    }

    #[test]
    fn tuple_size_limit() {
        let row: Row = vec![Some(vec![1; 100])];
        let size = encode_tuple(&row).len(); // 2 + 4 + 100
        for (max, ok) in [(size, true), (size - 1, false)] {
            let mut r = TupleReader::with_max_tuple(max);
            r.push(&header(0, &[]));
            // Only the length word has arrived: an oversized value is refused before it is
            // buffered.
            r.push(&encode_tuple(&row)[..6]);
            let res = r.next_tuple().map(|t| t.is_some());
            if ok {
                assert_eq!(res, Ok(false));
            } else {
                assert_eq!(
                    res,
                    Err(CopyBinError::TupleTooLarge {
                        tuple: 1,
                        max: size - 1
                    })
                );
            }
        }
        // A huge declared length is refused at once.
        let mut r = TupleReader::new();
        r.push(&header(0, &[]));
        r.push(&1i16.to_be_bytes());
        r.push(&i32::MAX.to_be_bytes());
        assert!(matches!(
            r.next_tuple(),
            Err(CopyBinError::TupleTooLarge { tuple: 1, .. })
        ));
    }

    #[test]
    fn buffer_is_compacted() {
        let row: Row = vec![Some(vec![7; 1000])];
        let tuple = encode_tuple(&row);
        let mut r = TupleReader::new();
        r.push(&header(0, &[]));
        for _ in 0..10_000 {
            r.push(&tuple);
            assert!(r.next_tuple().unwrap().is_some());
            assert!(r.next_tuple().unwrap().is_none());
        }
        assert!(
            r.buf.len() <= 4 * tuple.len(),
            "buffer grew to {}",
            r.buf.len()
        );
        r.push(TRAILER);
        assert!(r.next_tuple().unwrap().is_none());
        assert!(r.finished());
        r.finish().unwrap();
    }
}
