//! Splitting `COPY table FROM STDIN (FORMAT binary)` data by shard key: [`BinarySplitter`].
//!
//! The client's stream (header, tuples, trailer; see [`crate::wire::copybin`]) arrives in
//! CopyData payloads whose boundaries have nothing to do with tuples. The splitter buffers
//! until a tuple is complete (bounded by the maximum tuple size), reads only the shard-key
//! field, and appends the tuple's bytes unchanged to its shard's output. Every shard gets a
//! stream of its own: [`HEADER`] first ([`BinarySplitter::start`]), its tuples, and
//! [`TRAILER`] ([`BinarySplitter::finish`]); a shard without rows gets an empty stream, which
//! Postgres accepts (`COPY 0`).
//!
//! As in Postgres (`CopyFromBinaryOneRow`): every tuple must have as many fields as the COPY
//! has columns ("row field count"), data after the trailer is an error, and a stream that
//! ends between two tuples without a trailer is accepted. Malformed data is reported with the
//! 1-based tuple number as the line, as Postgres's COPY context does. Key bytes are in the
//! column's binary send format; the caller decodes them (and checks beforehand, with
//! [`key_type_accepts`], that the column's type has the send format the key type reads).

use std::collections::VecDeque;

use super::SplitError;
use crate::sharding::keys::KeyType;
use crate::wire::copybin::{CopyBinError, TupleReader, HEADER, TRAILER};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Done,
    Failed,
}

/// An integer column's binary width (int2, int4, int8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntWidth {
    /// `smallint`: 2 bytes.
    Two,
    /// `integer`: 4 bytes.
    Four,
    /// `bigint`: 8 bytes.
    Eight,
}

impl IntWidth {
    /// The width of Postgres type `typname` (`int2`, `int4`, `int8`); `None` for others.
    pub fn of(typname: &str) -> Option<IntWidth> {
        match typname {
            "int2" => Some(IntWidth::Two),
            "int4" => Some(IntWidth::Four),
            "int8" => Some(IntWidth::Eight),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            IntWidth::Two => 2,
            IntWidth::Four => 4,
            IntWidth::Eight => 8,
        }
    }

    fn pg_name(self) -> &'static str {
        match self {
            IntWidth::Two => "smallint",
            IntWidth::Four => "integer",
            IntWidth::Eight => "bigint",
        }
    }

    /// `v` big-endian in this width into `buf`; the bytes written, `None` when out of range.
    fn encode(self, v: i64, buf: &mut [u8; 8]) -> Option<usize> {
        match self {
            IntWidth::Two => buf[..2].copy_from_slice(&i16::try_from(v).ok()?.to_be_bytes()),
            IntWidth::Four => buf[..4].copy_from_slice(&i32::try_from(v).ok()?.to_be_bytes()),
            IntWidth::Eight => buf.copy_from_slice(&v.to_be_bytes()),
        }
        Some(self.bytes())
    }
}

/// Whether a column of Postgres type `typname` (a domain's base type; `category` is its
/// `pg_type.typcategory`) sends the binary form the key type `key` decodes: integers of any
/// width for the integer key types, any string type (`text`, `varchar`, `bpchar`, `citext`,
/// …: their send format is the characters) for `text`, and the type itself for the others.
pub fn key_type_accepts(key: KeyType, typname: &str, category: &str) -> bool {
    match key {
        KeyType::SmallInt | KeyType::Int | KeyType::BigInt => IntWidth::of(typname).is_some(),
        KeyType::Text => category == "S",
        KeyType::Uuid => typname == "uuid",
        KeyType::Numeric => typname == "numeric",
        KeyType::Date => typname == "date",
        KeyType::Timestamptz => typname == "timestamptz",
    }
}

/// Values of a generated column appended to every tuple as one more field.
#[derive(Debug)]
struct Appended {
    /// The value is the tuple's shard key.
    is_key: bool,
    width: IntWidth,
    values: VecDeque<i64>,
    last: Option<i64>,
}

/// Splits a binary COPY FROM STDIN stream into per-shard binary streams by shard key.
///
/// Call [`start`](Self::start) once, [`feed`](Self::feed) every CopyData payload (or
/// [`push`](Self::push) then [`drain`](Self::drain), to supply generated values in between),
/// and [`finish`](Self::finish) at CopyDone. After an error every call returns
/// [`SplitError::Aborted`].
#[derive(Debug)]
pub struct BinarySplitter {
    reader: TupleReader,
    key_column: usize,
    n_columns: usize,
    max_tuple: usize,
    state: State,
    rows: u64,
    generated: Option<Appended>,
}

impl BinarySplitter {
    /// A splitter for tuples of exactly `n_columns` fields whose shard key is field
    /// `key_column`; tuples larger than `max_tuple` bytes are refused (which bounds the
    /// buffering of a partial tuple).
    pub fn new(key_column: usize, n_columns: usize, max_tuple: usize) -> Self {
        BinarySplitter {
            reader: TupleReader::with_max_tuple(max_tuple),
            key_column,
            n_columns,
            max_tuple,
            state: State::Running,
            rows: 0,
            generated: None,
        }
    }

    /// Each tuple gets one more field: the next supplied value ([`supply`](Self::supply)),
    /// encoded as an integer of `width`; with `is_key` it is also the tuple's shard key.
    pub fn append_generated(mut self, is_key: bool, width: IntWidth) -> Self {
        self.generated = Some(Appended {
            is_key,
            width,
            values: VecDeque::new(),
            last: None,
        });
        self
    }

    /// Writes the binary COPY header every shard's stream starts with.
    pub fn start(&self, out: &mut [Vec<u8>]) {
        for o in out {
            o.extend_from_slice(HEADER);
        }
    }

    /// Buffers one CopyData payload (input after a failure or the end is dropped).
    pub fn push(&mut self, chunk: &[u8]) {
        if self.state == State::Running {
            self.reader.push(chunk);
        }
    }

    /// Values to [`supply`](Self::supply) before [`drain`](Self::drain): one per complete
    /// tuple buffered, minus the values held.
    pub fn values_needed(&self) -> usize {
        match &self.generated {
            Some(g) if self.state == State::Running => {
                self.reader.complete_tuples().saturating_sub(g.values.len())
            }
            _ => 0,
        }
    }

    /// Supplies values for [`append_generated`](Self::append_generated), used in order.
    pub fn supply(&mut self, values: impl IntoIterator<Item = i64>) {
        if let Some(g) = &mut self.generated {
            g.values.extend(values);
        }
    }

    /// The last appended value used by a tuple.
    pub fn last_generated(&self) -> Option<i64> {
        self.generated.as_ref().and_then(|g| g.last)
    }

    /// Tuples routed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// [`push`](Self::push) then [`drain`](Self::drain).
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut [Vec<u8>],
        route: impl FnMut(Option<&[u8]>) -> Result<usize, E>,
    ) -> Result<(), SplitError<E>> {
        self.push(chunk);
        self.drain(out, route)
    }

    /// Routes every complete tuple buffered: calls `route` with its key field (`None` when
    /// NULL) and appends the tuple to `out[shard]`.
    pub fn drain<E>(
        &mut self,
        out: &mut [Vec<u8>],
        mut route: impl FnMut(Option<&[u8]>) -> Result<usize, E>,
    ) -> Result<(), SplitError<E>> {
        match self.state {
            State::Done => return Ok(()),
            State::Failed => return Err(SplitError::Aborted),
            State::Running => {}
        }
        let r = self.drain_inner(out, &mut route);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    /// End of data (CopyDone): the stream must have ended with the trailer or between two
    /// tuples; appends the trailer to every shard's stream.
    pub fn finish<E>(&mut self, out: &mut [Vec<u8>]) -> Result<(), SplitError<E>> {
        match self.state {
            State::Done => return Ok(()),
            State::Failed => return Err(SplitError::Aborted),
            State::Running => {}
        }
        let line = self.reader.tuple_count() + 1;
        let r = if self.reader.finished() || self.reader.at_tuple_boundary() {
            match self.reader.after_trailer() {
                0 => Ok(()),
                n => Err(bad(line, CopyBinError::TrailingData(n))),
            }
        } else {
            // A stream cut inside the header or a tuple (an empty one included).
            Err(self
                .reader
                .finish()
                .err()
                .map_or(SplitError::Aborted, |e| bin_error(line, e, self.max_tuple)))
        };
        self.state = if r.is_err() {
            State::Failed
        } else {
            for o in out.iter_mut() {
                o.extend_from_slice(TRAILER);
            }
            State::Done
        };
        r
    }

    fn drain_inner<E, R>(&mut self, out: &mut [Vec<u8>], route: &mut R) -> Result<(), SplitError<E>>
    where
        R: FnMut(Option<&[u8]>) -> Result<usize, E>,
    {
        loop {
            let line = self.reader.tuple_count() + 1;
            let tuple = match self.reader.next_tuple() {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => return Err(bin_error(line, e, self.max_tuple)),
            };
            if tuple.field_count() != self.n_columns {
                return Err(SplitError::ColumnCount {
                    line,
                    expected: self.n_columns,
                    found: tuple.field_count(),
                });
            }
            let mut value = [0u8; 8];
            let appended = match self.generated.as_mut() {
                Some(g) => {
                    let v = g.values.pop_front().ok_or(SplitError::Aborted)?;
                    g.last = Some(v);
                    let n = g
                        .width
                        .encode(v, &mut value)
                        .ok_or(SplitError::OutOfRange {
                            line,
                            value: v,
                            ty: g.width.pg_name(),
                        })?;
                    Some((g.is_key, n))
                }
                None => None,
            };
            let key = match appended {
                Some((true, n)) => Some(&value[..n]),
                _ => tuple.field(self.key_column).flatten(),
            };
            let shard = route(key).map_err(|error| SplitError::Route { line, error })?;
            let shards = out.len();
            let Some(dst) = out.get_mut(shard) else {
                return Err(SplitError::BadShard {
                    line,
                    shard,
                    shards,
                });
            };
            match appended {
                Some((_, n)) => {
                    // One more field: the count, the tuple's fields, the value.
                    let count =
                        i16::try_from(self.n_columns + 1).map_err(|_| SplitError::ColumnCount {
                            line,
                            expected: self.n_columns,
                            found: self.n_columns,
                        })?;
                    dst.extend_from_slice(&count.to_be_bytes());
                    dst.extend_from_slice(tuple.raw.get(2..).unwrap_or_default());
                    dst.extend_from_slice(&(n as i32).to_be_bytes());
                    dst.extend_from_slice(&value[..n]);
                }
                None => dst.extend_from_slice(tuple.raw),
            }
            self.rows += 1;
        }
        if self.reader.finished() && self.reader.after_trailer() > 0 {
            let line = self.reader.tuple_count() + 1;
            return Err(bad(
                line,
                CopyBinError::TrailingData(self.reader.after_trailer()),
            ));
        }
        Ok(())
    }
}

fn bad<E>(line: u64, error: CopyBinError) -> SplitError<E> {
    SplitError::Binary { line, error }
}

/// A reader error at tuple `line`: an oversized tuple is [`SplitError::RowTooLong`].
fn bin_error<E>(line: u64, e: CopyBinError, max_tuple: usize) -> SplitError<E> {
    match e {
        CopyBinError::TupleTooLarge { .. } => SplitError::RowTooLong {
            line,
            limit: max_tuple,
        },
        e => bad(line, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const SHARDS: usize = 3;

    /// A tuple: `None` = NULL.
    type Row = Vec<Option<Vec<u8>>>;

    fn tuple(row: &Row) -> Vec<u8> {
        crate::wire::copybin::encode_tuple(row)
    }

    fn stream(rows: &[Row], trailer: bool) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        rows.iter().for_each(|r| out.extend(tuple(r)));
        if trailer {
            out.extend_from_slice(TRAILER);
        }
        out
    }

    fn row(id: i64, name: &str) -> Row {
        vec![
            Some(id.to_be_bytes().to_vec()),
            Some(name.as_bytes().to_vec()),
        ]
    }

    /// Routes an int8 key by value modulo 3; NULL to shard 0; `-1` fails.
    fn route(k: Option<&[u8]>) -> Result<usize, String> {
        match k.map(|b| <[u8; 8]>::try_from(b).map(i64::from_be_bytes)) {
            None => Ok(0),
            Some(Ok(-1)) => Err("bad key".into()),
            Some(Ok(v)) => Ok(v.rem_euclid(SHARDS as i64) as usize),
            Some(Err(_)) => Err("not an int8".into()),
        }
    }

    /// Feeds `data` in chunks of the given sizes, then finishes.
    fn run(
        sp: &mut BinarySplitter,
        data: &[u8],
        sizes: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<Vec<u8>>, SplitError<String>> {
        let mut out = vec![Vec::new(); SHARDS];
        sp.start(&mut out);
        let mut at = 0;
        let mut sizes = sizes.into_iter();
        while at < data.len() {
            let n = sizes.next().unwrap_or(data.len()).clamp(1, data.len() - at);
            sp.feed(&data[at..at + n], &mut out, route)?;
            at += n;
        }
        sp.finish(&mut out)?;
        Ok(out)
    }

    /// The tuples of a complete binary stream.
    fn parse(data: &[u8]) -> Vec<Row> {
        let mut r = TupleReader::new();
        r.push(data);
        let mut rows = Vec::new();
        while let Some(t) = r.next_tuple().unwrap() {
            rows.push(
                (0..t.field_count())
                    .map(|i| t.field(i).flatten().map(<[u8]>::to_vec))
                    .collect(),
            );
        }
        r.finish().unwrap();
        rows
    }

    #[test]
    fn tuples_go_to_their_key_shard_whatever_the_chunking() {
        let mut rng = StdRng::seed_from_u64(19);
        let rows: Vec<Row> = (0..300)
            .map(|i| row(i * 7 - 40, &"x".repeat(rng.gen_range(0..40))))
            .collect();
        let data = stream(&rows, true);
        for max_chunk in [1, 2, 5, 17, 64, 1000, data.len()] {
            let sizes: Vec<usize> = (0..data.len())
                .map(|_| rng.gen_range(1..=max_chunk))
                .collect();
            let mut sp = BinarySplitter::new(0, 2, 1 << 20);
            let out = run(&mut sp, &data, sizes).unwrap();
            assert_eq!(sp.rows(), 300);
            let mut back = Vec::new();
            for (s, o) in out.iter().enumerate() {
                for r in parse(o) {
                    assert_eq!(route(r[0].as_deref()), Ok(s));
                    back.push(r);
                }
            }
            back.sort();
            let mut want = rows.clone();
            want.sort();
            assert_eq!(back, want);
        }
    }

    #[test]
    fn a_shard_without_rows_gets_an_empty_stream_and_null_keys_are_routed() {
        let rows = vec![vec![None, Some(b"n".to_vec())], row(3, "three")];
        let mut sp = BinarySplitter::new(0, 2, 1 << 20);
        let out = run(&mut sp, &stream(&rows, true), [5]).unwrap();
        assert_eq!(parse(&out[0]).len(), 2);
        assert_eq!(out[1], stream(&[], true));
    }

    #[test]
    fn a_stream_may_end_between_tuples_without_trailer() {
        let rows = vec![row(1, "a"), row(2, "b")];
        let mut sp = BinarySplitter::new(0, 2, 1 << 20);
        let out = run(&mut sp, &stream(&rows, false), [3]).unwrap();
        assert_eq!(out.iter().map(|o| parse(o).len()).sum::<usize>(), 2);
    }

    fn fails(data: &[u8], ncols: usize) -> SplitError<String> {
        let mut sp = BinarySplitter::new(0, ncols, 64);
        let e = run(&mut sp, data, std::iter::repeat(3)).unwrap_err();
        // Failed for good.
        let mut out = vec![Vec::new(); SHARDS];
        assert!(matches!(
            sp.feed(b"x", &mut out, route),
            Err(SplitError::Aborted)
        ));
        e
    }

    #[test]
    fn malformed_streams_are_refused_with_the_tuple_number() {
        let good = stream(&[row(1, "a"), row(2, "b")], true);
        // Cut inside the second tuple, inside the header, empty.
        for cut in [HEADER.len() + 20, 5, 0] {
            let e = fails(&good[..cut], 2);
            assert_eq!(e.sqlstate(), Some("22P04"), "{e}");
        }
        let e = fails(&good[..HEADER.len() + 20], 2);
        assert_eq!(e.line(), Some(2));
        // Text data, not binary.
        assert!(matches!(
            fails(b"1\tx\n", 2),
            SplitError::Binary {
                line: 1,
                error: CopyBinError::BadSignature
            }
        ));
        // Wrong field count.
        let e = fails(&stream(&[row(1, "a"), vec![None]], true), 2);
        assert!(
            matches!(
                e,
                SplitError::ColumnCount {
                    line: 2,
                    expected: 2,
                    found: 1
                }
            ),
            "{e}"
        );
        assert_eq!(e.sqlstate(), Some("22P04"));
        // Data after the trailer.
        let mut extra = good.clone();
        extra.extend_from_slice(b"more");
        let e = fails(&extra, 2);
        assert!(
            matches!(
                e,
                SplitError::Binary {
                    error: CopyBinError::TrailingData(_),
                    ..
                }
            ),
            "{e}"
        );
        // A negative length.
        let mut neg = HEADER.to_vec();
        neg.extend_from_slice(&1i16.to_be_bytes());
        neg.extend_from_slice(&(-7i32).to_be_bytes());
        assert_eq!(fails(&neg, 1).sqlstate(), Some("22P04"));
        // Too large.
        let e = fails(&stream(&[row(1, &"z".repeat(100))], true), 2);
        assert!(matches!(e, SplitError::RowTooLong { line: 1, limit: 64 }));
        // The route's error, with its tuple.
        let e = fails(&stream(&[row(1, "a"), row(-1, "b")], true), 2);
        assert!(matches!(e, SplitError::Route { line: 2, .. }));
    }

    #[test]
    fn generated_values_are_appended_as_one_more_field() {
        let rows: Vec<Row> = (0..50).map(|i| vec![Some(vec![b'a' + i as u8])]).collect();
        let data = stream(&rows, true);
        for (is_key, width) in [(true, IntWidth::Eight), (false, IntWidth::Four)] {
            let mut sp = BinarySplitter::new(0, 1, 1 << 20).append_generated(is_key, width);
            let mut out = vec![Vec::new(); SHARDS];
            sp.start(&mut out);
            let mut next = 1000i64;
            let mut keys = Vec::new();
            for chunk in data.chunks(9) {
                sp.push(chunk);
                let need = sp.values_needed();
                sp.supply(next..next + need as i64);
                next += need as i64;
                sp.drain(&mut out, |k| {
                    keys.push(k.map(<[u8]>::to_vec));
                    Ok::<_, String>(keys.len() % SHARDS)
                })
                .unwrap();
                assert_eq!(sp.values_needed(), 0);
            }
            sp.finish::<String>(&mut out).unwrap();
            // Exactly one value per tuple was taken.
            assert_eq!((next, sp.last_generated()), (1050, Some(1049)));
            let mut got: Vec<Row> = out.iter().flat_map(|o| parse(o)).collect();
            got.sort_by_key(|r| r[0].clone());
            for (i, r) in got.iter().enumerate() {
                let v = 1000 + i as i64;
                let enc = match width {
                    IntWidth::Eight => v.to_be_bytes().to_vec(),
                    _ => (v as i32).to_be_bytes().to_vec(),
                };
                assert_eq!(r, &vec![rows[i][0].clone(), Some(enc)]);
            }
            if is_key {
                assert_eq!(keys[0].as_deref(), Some(&1000i64.to_be_bytes()[..]));
            } else {
                assert_eq!(keys[0].as_deref(), Some(&b"a"[..]));
            }
        }
        // A value the column cannot hold.
        let mut sp = BinarySplitter::new(0, 1, 1 << 20).append_generated(false, IntWidth::Two);
        let mut out = vec![Vec::new(); SHARDS];
        sp.push(&data);
        sp.supply([70_000]);
        let e = sp.drain(&mut out, route).unwrap_err();
        assert!(matches!(e, SplitError::OutOfRange { line: 1, .. }));
        assert_eq!(e.sqlstate(), Some("22003"));
    }

    #[test]
    fn key_types_accept_their_send_formats() {
        assert!(key_type_accepts(KeyType::BigInt, "int4", "N"));
        assert!(key_type_accepts(KeyType::SmallInt, "int8", "N"));
        assert!(!key_type_accepts(KeyType::Int, "numeric", "N"));
        assert!(key_type_accepts(KeyType::Text, "varchar", "S"));
        assert!(key_type_accepts(KeyType::Text, "citext", "S"));
        assert!(!key_type_accepts(KeyType::Text, "int8", "N"));
        assert!(key_type_accepts(KeyType::Uuid, "uuid", "U"));
        assert!(!key_type_accepts(KeyType::Timestamptz, "timestamp", "D"));
        assert!(key_type_accepts(KeyType::Date, "date", "D"));
        assert!(key_type_accepts(KeyType::Numeric, "numeric", "N"));
    }
}
