//! The row scan of COPY text and CSV data: [`CopySplitter`] finds row ends across CopyData
//! payloads as `CopyReadLineText` does, and routes each complete row by its key field.

use std::mem;

use super::fields::{find_any, locate_key, Key};
use super::{CopyFormat, SplitError};

/// The line-terminator style, fixed by the first row (`EolType` in Postgres).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    Cr,
    CrNl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// End marker seen or `finish` called: further input is ignored.
    Done,
    Failed,
}

/// What a special byte does to the row scan.
enum Step {
    /// Keep scanning after skipping this many further bytes.
    Continue(usize),
    /// The row ends after this many further bytes; the terminator is `.1` bytes long.
    End(usize, usize),
}

/// Splits a COPY FROM STDIN text or CSV data stream into per-shard streams by shard key.
///
/// Feed every CopyData payload to [`feed`](Self::feed) and call [`finish`](Self::finish) at
/// CopyDone. See the [module documentation](super) for the behaviour the caller relies on.
#[derive(Debug)]
pub struct CopySplitter {
    format: CopyFormat,
    key_column: usize,
    n_columns: usize,
    max_row: usize,
    /// Bytes the row scan stops at: LF, CR, and backslash (text) or quote and escape (CSV).
    needles: [u8; 4],
    /// CSV escape as the row scan sees it: `None` when equal to the quote (Postgres ignores
    /// it there, the quote then just toggles).
    line_escape: Option<u8>,
    eol: Eol,
    state: State,
    /// Line on which the current row starts.
    line: u64,
    rows: u64,
    header_pending: bool,
    header: Option<Vec<u8>>,
    ended_by_marker: bool,
    /// The current row's bytes from earlier payloads.
    partial: Vec<u8>,
    /// A special byte at the end of `partial` whose handling needs the next byte.
    pending: Option<u8>,
    in_quote: bool,
    last_was_esc: bool,
    /// Text: the row holds an unescaped `\.`.
    saw_dot: bool,
    /// CSV: line breaks inside quotes in the current row.
    embedded_lines: u64,
    /// Terminator length of the row just ended.
    term_len: usize,
    key_buf: Vec<u8>,
    /// A generated column's values, one appended to each row (see
    /// [`CopySplitter::append_generated`]).
    generated: Option<Appended>,
}

/// Values appended to the rows as one more field.
#[derive(Debug, Default)]
struct Appended {
    /// The value is the row's shard key (the key column is the appended one).
    is_key: bool,
    /// Values supplied and not used yet.
    values: std::collections::VecDeque<i64>,
    /// The last value used.
    last: Option<i64>,
    /// The value as text, reused.
    text: String,
}

impl CopySplitter {
    /// A splitter for rows of exactly `n_columns` fields (the COPY's column list, or the
    /// table's columns without one) whose shard key is field `key_column` (0-based, less
    /// than `n_columns`); rows longer than `max_row` bytes (terminator included) are refused,
    /// which bounds the buffering of a partial row.
    pub fn new(format: CopyFormat, key_column: usize, n_columns: usize, max_row: usize) -> Self {
        let (needles, line_escape) = if format.csv {
            let esc = (format.escape != format.quote).then_some(format.escape);
            (
                [b'\n', b'\r', format.quote, esc.unwrap_or(format.quote)],
                esc,
            )
        } else {
            ([b'\n', b'\r', b'\\', b'\\'], None)
        };
        CopySplitter {
            header_pending: format.header,
            format,
            key_column,
            n_columns,
            max_row,
            needles,
            line_escape,
            eol: Eol::Unknown,
            state: State::Running,
            line: 1,
            rows: 0,
            header: None,
            ended_by_marker: false,
            partial: Vec::new(),
            pending: None,
            in_quote: false,
            last_was_esc: false,
            saw_dot: false,
            embedded_lines: 0,
            term_len: 0,
            key_buf: Vec::new(),
            generated: None,
        }
    }

    /// Each row gets one more field: the next supplied value ([`CopySplitter::supply`]);
    /// with `is_key` it is also the row's shard key (the key column given to
    /// [`CopySplitter::new`] is then not read from the row).
    pub fn append_generated(mut self, is_key: bool) -> Self {
        self.generated = Some(Appended {
            is_key,
            ..Default::default()
        });
        self
    }

    /// Values to [`CopySplitter::supply`] before feeding `chunk` (`None` at CopyDone):
    /// enough for every row it can complete (each ends at a CR or LF, the last at
    /// CopyDone), minus the values held.
    pub fn values_needed(&self, chunk: Option<&[u8]>) -> usize {
        let Some(g) = &self.generated else { return 0 };
        let rows = chunk.map_or(1, |c| {
            c.iter().filter(|&&b| b == b'\n' || b == b'\r').count() + 1
        });
        rows.saturating_sub(g.values.len())
    }

    /// Supplies values for [`CopySplitter::append_generated`], used in order.
    pub fn supply(&mut self, values: impl IntoIterator<Item = i64>) {
        if let Some(g) = &mut self.generated {
            g.values.extend(values);
        }
    }

    /// The last appended value used by a row.
    pub fn last_generated(&self) -> Option<i64> {
        self.generated.as_ref().and_then(|g| g.last)
    }

    /// Feeds one CopyData payload.
    ///
    /// For every row completed by `chunk`, calls `route` with the decoded key field (`None`
    /// when it is NULL) and appends the row's original bytes, terminator included, to
    /// `out[shard]` for the shard index `route` returns. The last incomplete row is kept
    /// for the next call. After the end marker `\.` (or [`finish`](Self::finish)), input is
    /// ignored. After an error, every call returns [`SplitError::Aborted`].
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut [Vec<u8>],
        mut route: impl FnMut(Option<&[u8]>) -> Result<usize, E>,
    ) -> Result<(), SplitError<E>> {
        match self.state {
            State::Done => return Ok(()),
            State::Failed => return Err(SplitError::Aborted),
            State::Running => {}
        }
        let r = self.feed_inner(chunk, out, &mut route);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    /// End of data (CopyDone): routes a final row that has no line terminator (or that ends
    /// in a CR whose style was still open), and fails if the row is incomplete (an open CSV
    /// quote). In text format a final `\.` without terminator is accepted as the end marker
    /// (in CSV it is a data row, as in Postgres 17). Afterwards the splitter ignores input.
    pub fn finish<E>(
        &mut self,
        out: &mut [Vec<u8>],
        mut route: impl FnMut(Option<&[u8]>) -> Result<usize, E>,
    ) -> Result<(), SplitError<E>> {
        match self.state {
            State::Done => return Ok(()),
            State::Failed => return Err(SplitError::Aborted),
            State::Running => {}
        }
        let r = self.finish_inner(out, &mut route);
        self.state = if r.is_err() {
            State::Failed
        } else {
            State::Done
        };
        r
    }

    /// Rows routed so far (the header and the end marker are not rows).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The header row's raw bytes, terminator included, once it has been read.
    pub fn header(&self) -> Option<&[u8]> {
        self.header.as_deref()
    }

    /// Whether the data ended with the end marker `\.` (rather than only at CopyDone).
    pub fn ended_by_marker(&self) -> bool {
        self.ended_by_marker
    }

    fn feed_inner<E, R>(
        &mut self,
        chunk: &[u8],
        out: &mut [Vec<u8>],
        route: &mut R,
    ) -> Result<(), SplitError<E>>
    where
        R: FnMut(Option<&[u8]>) -> Result<usize, E>,
    {
        let mut pos = 0;
        while pos < chunk.len() && self.state == State::Running {
            // Scan at most one byte more than a row may hold, counted from the row's start,
            // so the result (which error, or RowTooLong) does not depend on chunking.
            let room = self
                .max_row
                .saturating_sub(self.partial.len())
                .saturating_add(1);
            let end = pos.saturating_add(room).min(chunk.len());
            let data = &chunk[pos..end];
            match self.scan(data)? {
                Some(n) => {
                    let row_end = pos + n;
                    if self.partial.is_empty() {
                        self.complete_row(&chunk[pos..row_end], out, route)?;
                    } else {
                        self.partial.extend_from_slice(&chunk[pos..row_end]);
                        let row = mem::take(&mut self.partial);
                        let r = self.complete_row(&row, out, route);
                        self.partial = row;
                        self.partial.clear();
                        r?;
                    }
                    pos = row_end;
                }
                None => {
                    if self.partial.len() + data.len() > self.max_row {
                        return Err(SplitError::RowTooLong {
                            line: self.line,
                            limit: self.max_row,
                        });
                    }
                    self.partial.extend_from_slice(data);
                    pos = end;
                }
            }
        }
        Ok(())
    }

    fn finish_inner<E, R>(
        &mut self,
        out: &mut [Vec<u8>],
        route: &mut R,
    ) -> Result<(), SplitError<E>>
    where
        R: FnMut(Option<&[u8]>) -> Result<usize, E>,
    {
        if let Some(c) = self.pending.take() {
            match self.step(c, None)? {
                Step::End(_, t) => self.term_len = t,
                Step::Continue(_) => self.term_len = 0,
            }
        }
        if self.partial.is_empty() {
            return Ok(());
        }
        // Postgres reads the header without parsing its fields, so an open quote there is
        // no error.
        if self.in_quote && !self.header_pending {
            return Err(SplitError::UnterminatedQuote { line: self.line });
        }
        let row = mem::take(&mut self.partial);
        let r = self.complete_row(&row, out, route);
        self.partial = row;
        self.partial.clear();
        r
    }

    /// Scans `data` (the bytes after `partial`) for the end of the current row: `Some(n)`
    /// when the row ends after `data[..n]` (terminator length in `term_len`), `None` when
    /// all of `data` belongs to the row.
    fn scan<E>(&mut self, data: &[u8]) -> Result<Option<usize>, SplitError<E>> {
        let mut i = 0;
        if let Some(c) = self.pending.take() {
            let Some(&next) = data.first() else {
                self.pending = Some(c);
                return Ok(None);
            };
            match self.step(c, Some(next))? {
                Step::Continue(k) => i = k,
                Step::End(k, t) => {
                    self.term_len = t;
                    return Ok(Some(k));
                }
            }
        }
        loop {
            let rest = data.get(i..).unwrap_or_default();
            let Some(off) = find_any(rest, self.needles) else {
                if !rest.is_empty() {
                    // Skipped bytes are not the escape (a needle): Postgres clears the flag.
                    self.last_was_esc = false;
                }
                return Ok(None);
            };
            if off > 0 {
                self.last_was_esc = false;
            }
            let j = i + off;
            let Some(&c) = data.get(j) else {
                return Ok(None);
            };
            let next = data.get(j + 1).copied();
            if next.is_none() && self.needs_lookahead(c) {
                self.pending = Some(c);
                return Ok(None);
            }
            match self.step(c, next)? {
                Step::Continue(k) => i = j + 1 + k,
                Step::End(k, t) => {
                    self.term_len = t;
                    return Ok(Some(j + 1 + k));
                }
            }
        }
    }

    fn needs_lookahead(&self, c: u8) -> bool {
        (!self.format.csv && c == b'\\')
            || (c == b'\r' && matches!(self.eol, Eol::Unknown | Eol::CrNl))
    }

    /// Handles one special byte `c` as `CopyReadLineText` does; `next` is the byte after it,
    /// `None` at the end of the data.
    fn step<E>(&mut self, c: u8, next: Option<u8>) -> Result<Step, SplitError<E>> {
        if self.format.csv {
            // Postgres's quote tracking, in its order (the escape only counts inside quotes
            // and only when it differs from the quote).
            let esc = self.line_escape;
            if self.in_quote && Some(c) == esc {
                self.last_was_esc = !self.last_was_esc;
            }
            if c == self.format.quote && !self.last_was_esc {
                self.in_quote = !self.in_quote;
            }
            if Some(c) != esc {
                self.last_was_esc = false;
            }
            if self.in_quote {
                if c == if self.eol == Eol::Nl { b'\n' } else { b'\r' } {
                    self.embedded_lines += 1;
                }
                return Ok(Step::Continue(0));
            }
        } else if c == b'\\' {
            // The escaped byte is data, whatever it is; `\.` is the end marker.
            if next == Some(b'.') {
                self.saw_dot = true;
            }
            return Ok(Step::Continue(usize::from(next.is_some())));
        }
        match c {
            b'\r' => match self.eol {
                Eol::Nl => Err(self.mixed("carriage return")),
                Eol::Cr => Ok(Step::End(0, 1)),
                Eol::Unknown | Eol::CrNl => {
                    if next == Some(b'\n') {
                        self.eol = Eol::CrNl;
                        Ok(Step::End(1, 2))
                    } else if self.eol == Eol::CrNl {
                        Err(self.mixed("carriage return"))
                    } else {
                        self.eol = Eol::Cr;
                        Ok(Step::End(0, 1))
                    }
                }
            },
            b'\n' => match self.eol {
                Eol::Cr | Eol::CrNl => Err(self.mixed("newline")),
                Eol::Unknown | Eol::Nl => {
                    self.eol = Eol::Nl;
                    Ok(Step::End(0, 1))
                }
            },
            _ => Ok(Step::Continue(0)),
        }
    }

    fn mixed<E>(&self, found: &'static str) -> SplitError<E> {
        SplitError::MixedNewlines {
            line: self.line,
            found,
        }
    }

    /// Handles a complete row (`row` ends with its `term_len`-byte terminator, if any).
    fn complete_row<E, R>(
        &mut self,
        row: &[u8],
        out: &mut [Vec<u8>],
        route: &mut R,
    ) -> Result<(), SplitError<E>>
    where
        R: FnMut(Option<&[u8]>) -> Result<usize, E>,
    {
        let line = self.line;
        let term_len = mem::replace(&mut self.term_len, 0);
        let saw_dot = mem::replace(&mut self.saw_dot, false);
        self.line += 1 + mem::replace(&mut self.embedded_lines, 0);
        self.in_quote = false;
        self.last_was_esc = false;
        self.pending = None;

        if row.len() > self.max_row {
            return Err(SplitError::RowTooLong {
                line,
                limit: self.max_row,
            });
        }
        let content = &row[..row.len().saturating_sub(term_len)];
        // Text: `\.` ends the data even without a terminator at the very end (Postgres
        // rejects that as "corrupt", but it cannot be data). CSV: only with a terminator, as
        // in Postgres 17, where a final unterminated `\.` is a data row.
        let marker = if self.format.csv {
            self.format.csv_end_marker && term_len > 0
        } else {
            true
        };
        if marker && content == b"\\." {
            self.state = State::Done;
            self.ended_by_marker = true;
            return Ok(());
        }
        if saw_dot {
            return Err(SplitError::BadEndMarker { line });
        }
        if self.header_pending {
            self.header_pending = false;
            self.header = Some(row.to_vec());
            return Ok(());
        }
        let appended = match self.generated.as_mut() {
            Some(g) => {
                let v = g.values.pop_front().ok_or(SplitError::Aborted)?;
                g.last = Some(v);
                g.text.clear();
                g.text.push_str(&v.to_string());
                Some(g.is_key)
            }
            None => None,
        };
        let key = if appended == Some(true) {
            // Every field of the row is checked by the shard; the key is the appended value.
            Key::Raw(0, 0)
        } else {
            locate_key(
                &self.format,
                self.key_column,
                self.n_columns,
                content,
                &mut self.key_buf,
            )
            .map_err(|f| f.at(line, self.n_columns))?
        };
        let key = match (appended, key) {
            (Some(true), _) => self.generated.as_ref().map(|g| g.text.as_bytes()),
            (_, Key::Null) => None,
            (_, Key::Raw(s, e)) => Some(content.get(s..e).unwrap_or_default()),
            (_, Key::Decoded) => Some(self.key_buf.as_slice()),
            (_, Key::NullString) => Some(self.format.null.as_slice()),
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
        match (&self.generated, appended) {
            (Some(g), Some(_)) => {
                // The row, then the delimiter and the value, then its terminator.
                dst.extend_from_slice(content);
                dst.push(self.format.delimiter);
                dst.extend_from_slice(g.text.as_bytes());
                dst.extend_from_slice(&row[content.len()..]);
            }
            _ => dst.extend_from_slice(row),
        }
        self.rows += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const SHARDS: usize = 3;

    /// Routes by the key's byte sum; records every key seen.
    fn router(
        keys: &mut Vec<Option<Vec<u8>>>,
    ) -> impl FnMut(Option<&[u8]>) -> Result<usize, String> + '_ {
        move |k| {
            keys.push(k.map(<[u8]>::to_vec));
            match k {
                None => Ok(0),
                Some(b"bad") => Err("bad key".to_string()),
                Some(k) => Ok(k.iter().map(|&b| b as usize).sum::<usize>() % SHARDS),
            }
        }
    }

    #[derive(Debug, PartialEq)]
    struct Outcome {
        out: Vec<Vec<u8>>,
        keys: Vec<Option<Vec<u8>>>,
        rows: u64,
        err: Option<String>,
        header: Option<Vec<u8>>,
        ended: bool,
    }

    fn run_chunks(
        fmt: &CopyFormat,
        key: usize,
        ncols: usize,
        max: usize,
        chunks: &[&[u8]],
    ) -> Outcome {
        let mut s = CopySplitter::new(fmt.clone(), key, ncols, max);
        let mut out = vec![Vec::new(); SHARDS];
        let mut keys = Vec::new();
        let mut err = None;
        for c in chunks {
            if let Err(e) = s.feed(c, &mut out, router(&mut keys)) {
                err = Some(e.to_string());
                break;
            }
        }
        if err.is_none() {
            if let Err(e) = s.finish(&mut out, router(&mut keys)) {
                err = Some(e.to_string());
            }
        }
        Outcome {
            out,
            keys,
            rows: s.rows(),
            err,
            header: s.header().map(<[u8]>::to_vec),
            ended: s.ended_by_marker(),
        }
    }

    fn run(fmt: &CopyFormat, key: usize, ncols: usize, input: &[u8]) -> Outcome {
        run_chunks(fmt, key, ncols, 1 << 20, &[input])
    }

    /// Runs `input` whole, byte by byte and in random chunks; all must agree.
    fn run_all(
        fmt: &CopyFormat,
        key: usize,
        ncols: usize,
        max: usize,
        input: &[u8],
        rng: &mut StdRng,
    ) -> Outcome {
        let whole = run_chunks(fmt, key, ncols, max, &[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run_chunks(fmt, key, ncols, max, &bytes),
            whole,
            "byte-by-byte differs for {:?}",
            String::from_utf8_lossy(input)
        );
        for _ in 0..4 {
            let mut parts = Vec::new();
            let mut rest = input;
            while !rest.is_empty() {
                let n = rng.gen_range(0..=rest.len().min(12));
                let (a, b) = rest.split_at(n);
                parts.push(a);
                rest = b;
            }
            assert_eq!(
                run_chunks(fmt, key, ncols, max, &parts),
                whole,
                "chunks {parts:?} differ"
            );
        }
        whole
    }

    fn keys(o: &Outcome) -> Vec<Option<&[u8]>> {
        o.keys.iter().map(|k| k.as_deref()).collect()
    }

    /// The concatenated output must hold exactly the routed rows, each on its key's shard.
    fn shard_of(k: &[u8]) -> usize {
        k.iter().map(|&b| b as usize).sum::<usize>() % SHARDS
    }

    #[test]
    fn text_rows_split_by_key() {
        let input = b"1\ta\n2\tb\n3\tc\n1\td\n";
        let o = run_all(
            &CopyFormat::text(),
            0,
            2,
            1024,
            input,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(o.err, None);
        assert_eq!(o.rows, 4);
        assert_eq!(
            keys(&o),
            vec![Some(&b"1"[..]), Some(b"2"), Some(b"3"), Some(b"1")]
        );
        assert_eq!(o.out[shard_of(b"1")], b"1\ta\n1\td\n");
        assert_eq!(o.out[shard_of(b"2")], b"2\tb\n");
        assert_eq!(o.out[shard_of(b"3")], b"3\tc\n");
    }

    #[test]
    fn key_in_a_later_column_and_final_row_without_newline() {
        let input = b"a\t1\tx\nb\t2\ty";
        let o = run_all(
            &CopyFormat::text(),
            1,
            3,
            1024,
            input,
            &mut StdRng::seed_from_u64(2),
        );
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![Some(&b"1"[..]), Some(b"2")]);
        assert_eq!(o.out[shard_of(b"2")], b"b\t2\ty");
    }

    #[test]
    fn text_escapes_in_key() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\\tb", b"a\tb"),
            (b"a\\\tb", b"a\tb"), // escaped delimiter
            (b"\\\\", b"\\"),
            (b"\\\\N", b"\\N"),
            (b"\\Nx", b"Nx"),
            (b"\\101\\60", b"A0"),
            (b"\\1018", b"A8"),
            (b"\\x41\\x4g", b"A\x04g"),
            (b"\\xg", b"xg"),
            (b"\\b\\f\\n\\r\\v\\q", b"\x08\x0c\n\r\x0bq"),
            (b"\\777", b"\xff"),
            (b"a\\\nb", b"a\nb"), // backslash-newline is data, not a row end
        ];
        for &(field, want) in cases {
            let mut input = field.to_vec();
            input.extend_from_slice(b"\tv\n");
            let o = run_all(
                &CopyFormat::text(),
                0,
                2,
                1024,
                &input,
                &mut StdRng::seed_from_u64(3),
            );
            assert_eq!(o.err, None, "{field:?}");
            assert_eq!(keys(&o), vec![Some(want)], "{field:?}");
            assert_eq!(o.out.concat(), input, "forwarded unchanged");
        }
        // An uppercase hex-digit delimiter can be swallowed by `\x`, as in Postgres.
        let fmt = CopyFormat {
            delimiter: b'A',
            ..CopyFormat::text()
        };
        let o = run(&fmt, 0, 2, b"\\x4AA1\n");
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![Some(&b"J"[..])]);
        // A backslash ending the data is dropped (and not part of the NULL comparison).
        let o = run(&CopyFormat::text(), 1, 2, b"k\t\\N\\");
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![None]);
        let o = run(&CopyFormat::text(), 1, 2, b"k\tab\\");
        assert_eq!(keys(&o), vec![Some(&b"ab"[..])]);
    }

    #[test]
    fn null_keys() {
        let o = run(&CopyFormat::text(), 0, 2, b"\\N\tv\n\tv\n");
        assert_eq!(keys(&o), vec![None, Some(&b""[..])]);
        let fmt = CopyFormat {
            null: b"NULL".to_vec(),
            ..CopyFormat::text()
        };
        let o = run(&fmt, 0, 2, b"NULL\tv\n\\N\tv\n");
        assert_eq!(keys(&o), vec![None, Some(&b"N"[..])]);

        let o = run(&CopyFormat::csv(), 0, 2, b",v\n\"\",v\nx,v\n");
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![None, Some(&b""[..]), Some(b"x")]);

        let fmt = CopyFormat {
            key_force_not_null: true,
            ..CopyFormat::csv()
        };
        assert_eq!(keys(&run(&fmt, 0, 2, b",v\n")), vec![Some(&b""[..])]);
        let fmt = CopyFormat {
            key_force_null: true,
            ..CopyFormat::csv()
        };
        assert_eq!(keys(&run(&fmt, 0, 2, b"\"\",v\n,v\n")), vec![None, None]);
        let fmt = CopyFormat {
            null: b"N".to_vec(),
            key_force_null: true,
            ..CopyFormat::csv()
        };
        assert_eq!(
            keys(&run(&fmt, 0, 2, b"\"N\",v\nN,v\n\"\",v\n")),
            vec![None, None, Some(&b""[..])]
        );
    }

    #[test]
    fn csv_quoted_keys() {
        let input: &[u8] =
            b"\"a,b\",1\n\"line1\nline2\",2\n\"he said \"\"hi\"\"\",3\na\"b,c\"d,4\n\"\"\"\",5\n";
        let o = run_all(
            &CopyFormat::csv(),
            0,
            2,
            1024,
            input,
            &mut StdRng::seed_from_u64(4),
        );
        assert_eq!(o.err, None);
        assert_eq!(
            keys(&o),
            vec![
                Some(&b"a,b"[..]),
                Some(b"line1\nline2"),
                Some(b"he said \"hi\""),
                Some(b"ab,cd"),
                Some(b"\""),
            ]
        );
        assert_eq!(o.rows, 5);
        let mut all = o.out.concat();
        all.sort_unstable();
        let mut want = input.to_vec();
        want.sort_unstable();
        assert_eq!(all, want, "every byte forwarded once");

        // ESCAPE '\': \" and \\ inside quotes; a lone backslash is itself; outside quotes
        // backslashes are plain data.
        let fmt = CopyFormat {
            escape: b'\\',
            ..CopyFormat::csv()
        };
        let input: &[u8] = b"\"a\\\"b\",1\n\"c\\\\\",2\n\"d\\e\",3\nf\\,4\n";
        let o = run_all(&fmt, 0, 2, 1024, input, &mut StdRng::seed_from_u64(5));
        assert_eq!(o.err, None);
        assert_eq!(
            keys(&o),
            vec![
                Some(&b"a\"b"[..]),
                Some(b"c\\"),
                Some(b"d\\e"),
                Some(b"f\\")
            ]
        );

        // Other delimiter and quote; key in the last column, quoted with a CR LF inside.
        let fmt = CopyFormat {
            delimiter: b'|',
            quote: b'\'',
            escape: b'\'',
            ..CopyFormat::csv()
        };
        let input: &[u8] = b"1|'x|y'\r\n2|'p\r\nq'''\r\n";
        let o = run_all(&fmt, 1, 2, 1024, input, &mut StdRng::seed_from_u64(6));
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![Some(&b"x|y"[..]), Some(b"p\r\nq'")]);
    }

    #[test]
    fn header_is_dropped_and_kept() {
        let fmt = CopyFormat {
            header: true,
            ..CopyFormat::csv()
        };
        let input: &[u8] = b"\"id\nx\",name\n1,a\n2,b\n";
        let o = run_all(&fmt, 0, 2, 1024, input, &mut StdRng::seed_from_u64(7));
        assert_eq!(o.err, None);
        assert_eq!(o.rows, 2);
        assert_eq!(o.header.as_deref(), Some(&b"\"id\nx\",name\n"[..]));
        assert_eq!(keys(&o), vec![Some(&b"1"[..]), Some(b"2")]);
        assert!(!o.out.concat().windows(4).any(|w| w == b"name"));

        // Line numbers count the header (but not the LF inside its quotes: the line style
        // is not known yet, as in Postgres).
        let o = run(&fmt, 0, 2, b"\"id\nx\",name\n1,a\n2\n");
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 3: expected 2 fields, found 1")
        );

        let fmt = CopyFormat {
            header: true,
            ..CopyFormat::text()
        };
        let o = run(&fmt, 0, 2, b"id\tname\n1\ta\n");
        assert_eq!(o.rows, 1);
        assert_eq!(o.header.as_deref(), Some(&b"id\tname\n"[..]));
        // An empty stream has no header and no rows.
        let o = run(&fmt, 0, 2, b"");
        assert_eq!((o.rows, o.header, o.err), (0, None, None));
    }

    #[test]
    fn end_marker() {
        let mut rng = StdRng::seed_from_u64(8);
        let input: &[u8] = b"1\ta\n\\.\n2\tb\ngarbage \\. \"\n";
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, input, &mut rng);
        assert_eq!(o.err, None);
        assert_eq!(o.rows, 1);
        assert_eq!(o.out.concat(), b"1\ta\n");

        let mut s = CopySplitter::new(CopyFormat::text(), 0, 2, 1024);
        let mut out = vec![Vec::new(); SHARDS];
        let mut k = Vec::new();
        s.feed(b"1\ta\r\n\\.\r\nmore", &mut out, router(&mut k))
            .unwrap();
        assert!(s.ended_by_marker());
        s.feed(b"anything\n", &mut out, router(&mut k)).unwrap();
        s.finish(&mut out, router(&mut k)).unwrap();
        assert_eq!((s.rows(), out.concat()), (1, b"1\ta\r\n".to_vec()));

        // At the very end, without a terminator.
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, b"1\ta\n\\.", &mut rng);
        assert_eq!((o.rows, o.err, o.ended), (1, None, true));
        // As the first row, with HEADER: still the end.
        let fmt = CopyFormat {
            header: true,
            ..CopyFormat::text()
        };
        let o = run(&fmt, 0, 2, b"\\.\nid\tname\n1\ta\n");
        assert_eq!((o.rows, o.header, o.err), (0, None, None));

        // Not alone on its line: an error, as in PostgreSQL 18.
        for bad in [&b"1\ta\\.\n"[..], b"\\.x\n", b"1\t\\.\n", b"\\.\\.\n"] {
            let o = run_all(&CopyFormat::text(), 0, 2, 1024, bad, &mut rng);
            assert_eq!(
                o.err.as_deref(),
                Some("COPY line 1: end-of-copy marker is not alone on its line"),
                "{bad:?}"
            );
        }
        // An escaped backslash before a period is data.
        let o = run(&CopyFormat::text(), 0, 2, b"\\\\.\tb\n");
        assert_eq!(keys(&o), vec![Some(&b"\\."[..])]);

        // CSV: `\.` alone ends the data (PostgreSQL <= 17) unless disabled (PostgreSQL 18);
        // quoted or with other data it is data.
        let o = run_all(
            &CopyFormat::csv(),
            0,
            1,
            1024,
            b"a\n\"\\.\"\n\\.,\n\\.\nb\n",
            &mut rng,
        );
        assert_eq!(
            o.err,
            Some("COPY line 3: expected 1 fields, found 2".into())
        );
        let o = run_all(
            &CopyFormat::csv(),
            0,
            1,
            1024,
            b"a\n\"\\.\"\n\\.\nb\n",
            &mut rng,
        );
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![Some(&b"a"[..]), Some(b"\\.")]);
        let fmt = CopyFormat {
            csv_end_marker: false,
            ..CopyFormat::csv()
        };
        let o = run_all(&fmt, 0, 1, 1024, b"a\n\\.\nb\n", &mut rng);
        assert_eq!(keys(&o), vec![Some(&b"a"[..]), Some(b"\\."), Some(b"b")]);
        // A final `\.` without terminator is data in CSV (as in Postgres 17).
        let o = run_all(&CopyFormat::csv(), 0, 1, 1024, b"a\n\\.", &mut rng);
        assert_eq!(keys(&o), vec![Some(&b"a"[..]), Some(b"\\.")]);
        assert!(!o.ended);
    }

    #[test]
    fn line_terminators() {
        let mut rng = StdRng::seed_from_u64(9);
        // CR LF: forwarded as is, key without the CR.
        let input: &[u8] = b"1\ta\r\n2\tb\r\n3\tc";
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, input, &mut rng);
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![Some(&b"1"[..]), Some(b"2"), Some(b"3")]);
        assert_eq!(o.out[shard_of(b"1")], b"1\ta\r\n");
        // Key in the last column: no CR in the key.
        let o = run_all(&CopyFormat::csv(), 1, 2, 1024, b"a,1\r\nb,2\r\n", &mut rng);
        assert_eq!(keys(&o), vec![Some(&b"1"[..]), Some(b"2")]);
        // Bare CR rows.
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, b"1\ta\r2\tb\r", &mut rng);
        assert_eq!(o.err, None);
        assert_eq!(keys(&o), vec![Some(&b"1"[..]), Some(b"2")]);
        assert_eq!(o.out[shard_of(b"2")], b"2\tb\r");
        // Mixed styles are refused, as Postgres does.
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, b"1\ta\n2\tb\r\n", &mut rng);
        assert_eq!(
            o.err.as_deref(),
            Some(
                "COPY line 2: carriage return found in data; every row must end like the first \
                 one (escape it in text format, quote it in CSV)"
            )
        );
        let o = run_all(&CopyFormat::csv(), 0, 2, 1024, b"1,a\r\n2,b\n", &mut rng);
        assert!(o.err.unwrap().starts_with("COPY line 2: newline found"));
        let o = run_all(
            &CopyFormat::csv(),
            0,
            2,
            1024,
            b"1,a\r\n2,b\r3,c\r\n",
            &mut rng,
        );
        assert!(o
            .err
            .unwrap()
            .starts_with("COPY line 2: carriage return found"));
        // A trailing CR at the end of CR LF data is a stray carriage return.
        let o = run_all(&CopyFormat::csv(), 0, 2, 1024, b"1,a\r\n2,b\r", &mut rng);
        assert!(o
            .err
            .unwrap()
            .starts_with("COPY line 2: carriage return found"));
        // An escaped CR is data in text format.
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, b"a\\\rb\tv\n", &mut rng);
        assert_eq!(keys(&o), vec![Some(&b"a\rb"[..])]);
    }

    #[test]
    fn field_count_errors_with_line_numbers() {
        let mut rng = StdRng::seed_from_u64(10);
        let o = run_all(
            &CopyFormat::text(),
            2,
            3,
            1024,
            b"a\tb\tc\nd\te\n",
            &mut rng,
        );
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 2: missing data for the shard-key column (the row has 2 fields)")
        );
        assert_eq!(o.rows, 1);
        let o = run_all(
            &CopyFormat::text(),
            0,
            2,
            1024,
            b"a\tb\nc\td\te\n",
            &mut rng,
        );
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 2: expected 2 fields, found 3")
        );
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, b"a\tb\nc\n", &mut rng);
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 2: expected 2 fields, found 1")
        );
        // An escaped delimiter does not separate fields; an empty line is one field.
        let o = run_all(&CopyFormat::text(), 0, 2, 1024, b"a\\\tb\n", &mut rng);
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 1: expected 2 fields, found 1")
        );
        let o = run_all(&CopyFormat::text(), 1, 2, 1024, b"\n", &mut rng);
        assert!(o.err.unwrap().starts_with("COPY line 1: missing data"));
        // CSV: a row spanning lines counts its lines (once the line style is known).
        let input = b"z,0\n\"a\nb\nc\",1\nx\n";
        let o = run_all(&CopyFormat::csv(), 1, 2, 1024, input, &mut rng);
        assert!(o.err.unwrap().starts_with("COPY line 5: missing data"));
        let input = b"z,0\r\n\"a\r\nb\nc\",1\r\nx\r\n";
        let o = run_all(&CopyFormat::csv(), 1, 2, 1024, input, &mut rng);
        assert!(o.err.unwrap().starts_with("COPY line 4: missing data"));
    }

    #[test]
    fn unterminated_quote_at_finish() {
        let mut rng = StdRng::seed_from_u64(11);
        let o = run_all(
            &CopyFormat::csv(),
            0,
            2,
            1024,
            b"1,a\n\"2,b\n3,c\n",
            &mut rng,
        );
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 2: unterminated CSV quoted field")
        );
        assert_eq!(o.rows, 1);
        // Also in a non-key field.
        let o = run_all(&CopyFormat::csv(), 0, 2, 1024, b"1,\"a", &mut rng);
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 1: unterminated CSV quoted field")
        );
        // Not in the header, which Postgres skips unparsed.
        let fmt = CopyFormat {
            header: true,
            ..CopyFormat::csv()
        };
        let o = run_all(&fmt, 0, 2, 1024, b"id,\"name\n", &mut rng);
        assert_eq!((o.err, o.rows), (None, 0));
        assert_eq!(o.header.as_deref(), Some(&b"id,\"name\n"[..]));
    }

    #[test]
    fn row_length_limit() {
        let mut rng = StdRng::seed_from_u64(12);
        // Exactly the limit (terminator included) is fine; one more byte is not.
        let o = run_all(&CopyFormat::text(), 0, 2, 8, b"1234\tab\n1\t1\n", &mut rng);
        assert_eq!((o.err, o.rows), (None, 2));
        let o = run_all(
            &CopyFormat::text(),
            0,
            2,
            8,
            b"1\t1\n1234\tabc\n1\t1\n",
            &mut rng,
        );
        assert_eq!(
            o.err.as_deref(),
            Some("COPY line 2: row is longer than 8 bytes")
        );
        assert_eq!(o.rows, 1);
        // A row that never ends is refused once it exceeds the limit, not buffered.
        let mut s = CopySplitter::new(CopyFormat::text(), 0, 2, 100);
        let mut out = vec![Vec::new(); SHARDS];
        let mut k = Vec::new();
        let mut failed = None;
        for i in 0..100 {
            if let Err(e) = s.feed(&[b'x'; 7], &mut out, router(&mut k)) {
                failed = Some((i, e));
                break;
            }
        }
        let (i, e) = failed.expect("refused");
        assert_eq!(i, 14);
        assert!(matches!(
            e,
            SplitError::RowTooLong {
                line: 1,
                limit: 100
            }
        ));
        assert!(s.partial.capacity() <= 200);
        // Then the splitter stays failed.
        assert!(matches!(
            s.feed(b"\n", &mut out, router(&mut k)),
            Err(SplitError::Aborted)
        ));
        assert!(matches!(
            s.finish(&mut out, router(&mut k)),
            Err(SplitError::Aborted)
        ));
    }

    #[test]
    fn route_errors_carry_the_line() {
        let mut rng = StdRng::seed_from_u64(13);
        let o = run_all(
            &CopyFormat::csv(),
            0,
            2,
            1024,
            b"a,1\n\"b\n\",2\nbad,3\nc,4\n",
            &mut rng,
        );
        assert_eq!(o.err.as_deref(), Some("COPY line 4: bad key"));
        assert_eq!(o.rows, 2);
        assert_eq!(o.out.concat().len(), b"a,1\n\"b\n\",2\n".len());

        let mut s = CopySplitter::new(CopyFormat::text(), 0, 1, 1024);
        let mut out = vec![Vec::new(); 2];
        let e = s
            .feed(b"x\n", &mut out, |_| Ok::<_, String>(2))
            .unwrap_err();
        assert!(matches!(
            e,
            SplitError::BadShard {
                line: 1,
                shard: 2,
                shards: 2
            }
        ));
        let e = SplitError::Route {
            line: 7,
            error: std::fmt::Error,
        };
        assert_eq!(e.line(), Some(7));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            SplitError::<String>::UnterminatedQuote { line: 1 }.sqlstate(),
            Some("22P04")
        );
    }

    #[test]
    fn no_allocation_per_row_in_steady_state() {
        let mut s = CopySplitter::new(CopyFormat::text(), 0, 2, 1024);
        let mut out: Vec<Vec<u8>> = (0..SHARDS).map(|_| Vec::with_capacity(1 << 16)).collect();
        let chunk = b"12\\t3\tv\n45\tw\n6";
        for _ in 0..50 {
            s.feed(chunk, &mut out, |k| {
                Ok::<_, ()>(k.map_or(0, |k| k.len() % SHARDS))
            })
            .unwrap();
        }
        let caps = (s.partial.capacity(), s.key_buf.capacity());
        for _ in 0..50 {
            s.feed(chunk, &mut out, |k| {
                Ok::<_, ()>(k.map_or(0, |k| k.len() % SHARDS))
            })
            .unwrap();
        }
        assert_eq!(caps, (s.partial.capacity(), s.key_buf.capacity()));
        assert_eq!(s.rows(), 200);
    }

    #[test]
    fn find_any_matches_naive() {
        let mut rng = StdRng::seed_from_u64(14);
        for _ in 0..2000 {
            let len = rng.gen_range(0..40);
            let hay: Vec<u8> = (0..len).map(|_| rng.gen_range(0..6u8) * 51).collect();
            let needles = [
                rng.gen_range(0..6u8) * 51,
                rng.gen_range(0..6u8) * 51,
                0x80,
                0xff,
            ];
            let want = hay.iter().position(|b| needles.contains(b));
            assert_eq!(find_any(&hay, needles), want, "{hay:?} {needles:?}");
            let want = hay.iter().position(|&b| b == needles[0]);
            assert_eq!(find_any(&hay, [needles[0]]), want);
        }
    }

    fn random_format(rng: &mut StdRng) -> CopyFormat {
        let mut f = if rng.gen() {
            CopyFormat::csv()
        } else {
            CopyFormat::text()
        };
        f.header = rng.gen_bool(0.2);
        f.key_force_null = f.csv && rng.gen_bool(0.2);
        f.key_force_not_null = f.csv && rng.gen_bool(0.2);
        f.csv_end_marker = rng.gen();
        if f.csv && rng.gen_bool(0.3) {
            f.escape = b'\\';
        }
        if rng.gen_bool(0.2) {
            f.delimiter = b'|';
        }
        f
    }

    #[test]
    fn fuzz_chunking_invariance_and_no_panics() {
        let mut rng = StdRng::seed_from_u64(15);
        let alphabet = b"ab1,|\t\"\\.\n\r\rNx7A";
        for round in 0..3000 {
            let fmt = random_format(&mut rng);
            let len = rng.gen_range(0..48);
            let input: Vec<u8> = if round % 4 == 0 {
                (0..len).map(|_| rng.gen()).collect()
            } else {
                (0..len)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect()
            };
            let key = rng.gen_range(0..3);
            let ncols = rng.gen_range(key..key + 2);
            let max = rng.gen_range(0..24);
            let o = run_all(&fmt, key, ncols, max, &input, &mut rng);
            // Whatever was routed is a set of whole rows: each key maps to its shard.
            if o.err.is_none() {
                assert_eq!(o.rows as usize, o.keys.len());
            }
        }
    }

    #[test]
    fn fuzz_odd_options_never_panic() {
        let mut rng = StdRng::seed_from_u64(16);
        let special = b"\n\r\\\".,\t\0";
        for _ in 0..2000 {
            let mut fmt = random_format(&mut rng);
            fmt.delimiter = special[rng.gen_range(0..special.len())];
            fmt.quote = special[rng.gen_range(0..special.len())];
            fmt.escape = special[rng.gen_range(0..special.len())];
            fmt.null = (0..rng.gen_range(0..3))
                .map(|_| special[rng.gen_range(0..special.len())])
                .collect();
            let _ = fmt.validate();
            let input: Vec<u8> = (0..rng.gen_range(0..40))
                .map(|_| special[rng.gen_range(0..special.len())])
                .collect();
            let key = rng.gen_range(0..3);
            run_all(&fmt, key, key + 1, rng.gen_range(0..64), &input, &mut rng);
        }
    }

    #[test]
    fn format_validation() {
        assert_eq!(CopyFormat::text().validate(), Ok(()));
        assert_eq!(CopyFormat::csv().validate(), Ok(()));
        let bad = |f: CopyFormat| f.validate().is_err();
        assert!(bad(CopyFormat {
            delimiter: b'\n',
            ..CopyFormat::csv()
        }));
        assert!(bad(CopyFormat {
            delimiter: b'\\',
            ..CopyFormat::text()
        }));
        assert!(bad(CopyFormat {
            delimiter: b'"',
            ..CopyFormat::csv()
        }));
        assert!(bad(CopyFormat {
            null: b"a,b".to_vec(),
            ..CopyFormat::csv()
        }));
        assert!(bad(CopyFormat {
            key_force_null: true,
            ..CopyFormat::text()
        }));
    }
}
