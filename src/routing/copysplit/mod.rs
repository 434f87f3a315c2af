//! Splitting `COPY table FROM STDIN` data by shard key: text and CSV ([`CopySplitter`]),
//! binary ([`BinarySplitter`], in `binary`; the rest of these docs are about text and CSV).
//!
//! The client sends the rows of a `COPY … FROM STDIN` as CopyData payloads whose boundaries
//! have nothing to do with rows: a row may span several payloads and one payload may hold
//! many rows. [`CopySplitter`] finds the rows, decodes only the shard-key field of each, asks
//! a callback which shard owns that key, and appends the row's original bytes (line
//! terminator included) to that shard's output buffer. Rows are never re-encoded, so each
//! shard parses exactly the bytes the client sent. The splitter is pure and synchronous: no
//! I/O, and no allocation per row in the steady state (one partial-row buffer and one
//! key-decoding buffer are reused).
//!
//! This file holds the options ([`CopyFormat`]) and the error ([`SplitError`]); `splitter`
//! holds the row scan ([`CopySplitter`]) and `fields` the field splitting and key decoding of
//! one row.
//!
//! # Postgres behaviour this module mirrors
//!
//! From the COPY documentation and `src/backend/commands/copyfromparse.c`
//! (`CopyReadLineText`, `CopyReadAttributesText`, `CopyReadAttributesCSV`, PostgreSQL 18):
//!
//! - **Row ends.** A row ends at LF, CR or CR LF. The first terminator in the stream fixes the
//!   style; a later bare CR or LF of another style is an error ("literal carriage return found
//!   in data", "unquoted newline found in data"). Mirroring this keeps the proxy's rows the
//!   rows Postgres would see (a bare-CR file would otherwise be one huge "row").
//! - **Text format.** A backslash makes the next byte part of the data, whatever it is (so a
//!   backslash before the delimiter, CR, LF or a backslash is literal and never ends a field
//!   or row). Field escapes: `\b \f \n \r \t \v`, `\` + 1–3 octal digits, `\x` + 1–2 hex
//!   digits (`\x` without a hex digit is `x`); any other escaped byte stands for itself; a
//!   backslash ending the row is dropped. The NULL string (default `\N`) is compared with the
//!   raw field text before de-escaping, so `\N` is NULL but `\\N` is the text `\N`.
//! - **End marker (text).** A row consisting of exactly `\.` ends the data; Postgres ignores
//!   everything after it up to CopyDone. PostgreSQL 18 rejects a `\.` that is not alone on
//!   its line ("end-of-copy marker is not alone on its line"; earlier versions silently ended
//!   the data there), and so does this module ([`SplitError::BadEndMarker`]).
//!   One leniency: a final `\.` without line terminator also ends the data here (Postgres
//!   calls it "end-of-copy marker corrupt"; it cannot be data in text format).
//! - **CSV.** Quoting may start anywhere in a field (`a"b,c"d` is `ab,cd`). Inside quotes the
//!   delimiter, CR and LF are data, and ESCAPE followed by ESCAPE or QUOTE stands for that
//!   byte (default ESCAPE = QUOTE, giving `""` for `"`); any other byte, including a lone
//!   ESCAPE, is itself. The NULL string (default: empty) is compared with the raw field, and
//!   a field containing any quote never matches it: an unquoted empty field is NULL, `""` is
//!   the empty string. `FORCE_NOT_NULL` turns a NULL match into the NULL string as a value;
//!   `FORCE_NULL` turns a quoted value equal to the NULL string into NULL.
//! - **End marker (CSV).** Up to PostgreSQL 17, a row that is exactly `\.` (unquoted) and
//!   has a line terminator ends the data (a final unterminated `\.` is a data row);
//!   PostgreSQL 18 treats it as data (psql 18 strips it client-side, older psql sends it).
//!   See [`CopyFormat::csv_end_marker`].
//! - **Columns.** Every row must have exactly as many fields as the COPY has columns ("extra
//!   data after last expected column", "missing data for column"). The splitter checks this
//!   itself, so the error carries the line number of the client's stream (a shard's line
//!   numbers count only the rows it received).
//! - **HEADER.** The first row is skipped (it is read like any row, so a quoted CSV header may
//!   span lines, and a first row `\.` still ends the data).
//! - **Line numbers** are 1-based and count like Postgres's `cur_lineno`, so errors name the
//!   line a direct COPY would: one per row (the header included) plus, in CSV, one per line
//!   break inside quotes, where a "line break" is LF once the first row has ended with LF and
//!   CR otherwise (Postgres's own approximation: breaks inside quotes in the first row, before
//!   the style is known, count only if they are CRs). Errors report the line on which the
//!   offending row starts.
//!
//! # What the caller must do
//!
//! - **HEADER:** the header row is *not* forwarded to any shard; send the shards the COPY
//!   statement without `HEADER` (or prepend [`CopySplitter::header`] to each shard's stream
//!   and keep `HEADER`, e.g. to have each shard check `HEADER MATCH`).
//! - **End marker:** `\.` and everything after it are not forwarded; after it, [`feed`]
//!   ignores its input. Send each shard CopyDone when the client sends CopyDone (after
//!   [`finish`]).
//! - **Line terminators** are forwarded as sent (LF, CR or CR LF); every shard receives rows
//!   of one style, so it accepts them as Postgres would have. A final row without terminator
//!   is forwarded without one, as the last bytes of its shard's stream.
//! - **Encoding:** Postgres splits rows after converting to the server encoding, whose
//!   multi-byte characters never contain ASCII bytes. This module splits the client's bytes,
//!   which is the same only for ASCII-safe client encodings: refuse a sharded COPY when
//!   `client_encoding` (or the COPY's `ENCODING` option) is SJIS, BIG5, GBK, UHC, GB18030 or
//!   JOHAB.
//! - **Options not handled here:** `FORMAT binary` goes to [`BinarySplitter`]; refuse the
//!   `DEFAULT` option (a key
//!   field equal to the DEFAULT string would take the column default, which the proxy cannot
//!   route), and a column list that omits the shard-key column. Validate the options with
//!   [`CopyFormat::validate`].
//! - **After an error** the COPY must be abandoned (CopyFail to the shards); the splitter
//!   then refuses further input with [`SplitError::Aborted`].
//!
//! [`feed`]: CopySplitter::feed
//! [`finish`]: CopySplitter::finish

mod binary;
mod fields;
mod splitter;

pub use binary::{key_type_accepts, BinarySplitter, IntWidth};
pub use splitter::CopySplitter;

/// COPY input format options, as parsed from the COPY statement by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// `FORMAT csv` when true, `FORMAT text` otherwise.
    pub csv: bool,
    /// `DELIMITER`: one byte.
    pub delimiter: u8,
    /// `NULL`: compared with the raw field text (before de-escaping or unquoting).
    pub null: Vec<u8>,
    /// `QUOTE` (CSV only).
    pub quote: u8,
    /// `ESCAPE` (CSV only); equal to `quote` unless given.
    pub escape: u8,
    /// `HEADER` (`true` or `MATCH`): the first row is a header, not data.
    pub header: bool,
    /// CSV only: `FORCE_NOT_NULL` lists the shard-key column (or is `*`), so a key field
    /// matching the NULL string is that string, not NULL.
    pub key_force_not_null: bool,
    /// CSV only: `FORCE_NULL` lists the shard-key column (or is `*`), so a quoted key equal
    /// to the NULL string is NULL too.
    pub key_force_null: bool,
    /// CSV only: whether a row that is exactly `\.` ends the data, as in PostgreSQL 17 and
    /// earlier (`true`, the default), or is an ordinary row, as in PostgreSQL 18 (`false`).
    /// Match the shards' version: a `\.` row forwarded to a PostgreSQL 17 shard would end
    /// that shard's data early.
    pub csv_end_marker: bool,
}

impl CopyFormat {
    /// Postgres defaults for `FORMAT text`: delimiter tab, NULL `\N`.
    pub fn text() -> Self {
        CopyFormat {
            csv: false,
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            quote: b'"',
            escape: b'"',
            header: false,
            key_force_not_null: false,
            key_force_null: false,
            csv_end_marker: true,
        }
    }

    /// Postgres defaults for `FORMAT csv`: delimiter `,`, NULL the unquoted empty string,
    /// quote `"`, escape = quote.
    pub fn csv() -> Self {
        CopyFormat {
            csv: true,
            delimiter: b',',
            null: Vec::new(),
            ..CopyFormat::text()
        }
    }

    /// Postgres's own checks on these options (`ProcessCopyOptions`), with its messages
    /// (paraphrased where Postgres names the offending character). Postgres refuses a COPY
    /// whose options fail them; the splitter does not panic on such options, but what it
    /// produces with them is meaningless.
    pub fn validate(&self) -> Result<(), &'static str> {
        if matches!(self.delimiter, b'\r' | b'\n') {
            return Err("COPY delimiter cannot be newline or carriage return");
        }
        if self.null.iter().any(|&b| matches!(b, b'\r' | b'\n')) {
            return Err("COPY null representation cannot use newline or carriage return");
        }
        if !self.csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&self.delimiter) {
            return Err("COPY delimiter cannot be a backslash, a period, a lowercase letter or a digit in text format");
        }
        if self.null.contains(&self.delimiter) {
            return Err("COPY delimiter character must not appear in the NULL specification");
        }
        if self.csv {
            if self.quote == self.delimiter {
                return Err("COPY delimiter and quote must be different");
            }
            if self.null.contains(&self.quote) {
                return Err("CSV quote character must not appear in the NULL specification");
            }
        } else if self.key_force_not_null || self.key_force_null {
            return Err("COPY FORCE_NOT_NULL and FORCE_NULL are available only in CSV mode");
        }
        Ok(())
    }
}

/// An error splitting COPY data. `line` is the 1-based line of the client's stream on which
/// the offending row starts.
#[derive(Debug, thiserror::Error)]
pub enum SplitError<E> {
    /// The routing callback refused the row's key.
    #[error("COPY line {line}: {error}")]
    Route {
        /// Line of the row.
        line: u64,
        /// The callback's error.
        #[source]
        error: E,
    },
    /// The routing callback returned a shard index with no output buffer.
    #[error("COPY line {line}: shard index {shard} is out of range ({shards} output buffers)")]
    BadShard {
        /// Line of the row.
        line: u64,
        /// The index returned.
        shard: usize,
        /// Number of output buffers.
        shards: usize,
    },
    /// A row (its terminator included) is longer than the configured maximum.
    #[error("COPY line {line}: row is longer than {limit} bytes")]
    RowTooLong {
        /// Line of the row.
        line: u64,
        /// The maximum row length in bytes.
        limit: usize,
    },
    /// The row has no field at the shard-key position.
    #[error(
        "COPY line {line}: missing data for the shard-key column (the row has {found} fields)"
    )]
    MissingKey {
        /// Line of the row.
        line: u64,
        /// Number of fields in the row.
        found: usize,
    },
    /// The row has the key field but not exactly as many fields as the COPY has columns.
    #[error("COPY line {line}: expected {expected} fields, found {found}")]
    ColumnCount {
        /// Line of the row.
        line: u64,
        /// Number of columns of the COPY.
        expected: usize,
        /// Number of fields in the row.
        found: usize,
    },
    /// A CSV quoted field is still open at the end of the data.
    #[error("COPY line {line}: unterminated CSV quoted field")]
    UnterminatedQuote {
        /// Line of the row.
        line: u64,
    },
    /// A bare CR or LF that does not match the line terminator of the first row.
    #[error(
        "COPY line {line}: {found} found in data; every row must end like the first one \
         (escape it in text format, quote it in CSV)"
    )]
    MixedNewlines {
        /// Line of the row.
        line: u64,
        /// `"carriage return"` or `"newline"`.
        found: &'static str,
    },
    /// Text format: a `\.` that is not alone on its line.
    #[error("COPY line {line}: end-of-copy marker is not alone on its line")]
    BadEndMarker {
        /// Line of the row.
        line: u64,
    },
    /// Binary format: the stream is malformed (bad header, field count or length, data
    /// after the trailer, cut inside a tuple).
    #[error("COPY line {line}: {error}")]
    Binary {
        /// 1-based tuple number.
        line: u64,
        /// What is wrong.
        #[source]
        error: crate::wire::copybin::CopyBinError,
    },
    /// Binary format: a generated value does not fit the column's integer type.
    #[error("COPY line {line}: generated value {value} is out of range for type {ty}")]
    OutOfRange {
        /// 1-based tuple number.
        line: u64,
        /// The value.
        value: i64,
        /// The column's type.
        ty: &'static str,
    },
    /// The splitter already failed; the COPY must be abandoned.
    #[error("COPY data splitting already failed")]
    Aborted,
}

impl<E> SplitError<E> {
    /// The line the error is about, if any.
    pub fn line(&self) -> Option<u64> {
        match self {
            SplitError::Route { line, .. }
            | SplitError::BadShard { line, .. }
            | SplitError::RowTooLong { line, .. }
            | SplitError::MissingKey { line, .. }
            | SplitError::ColumnCount { line, .. }
            | SplitError::UnterminatedQuote { line }
            | SplitError::MixedNewlines { line, .. }
            | SplitError::BadEndMarker { line }
            | SplitError::Binary { line, .. }
            | SplitError::OutOfRange { line, .. } => Some(*line),
            SplitError::Aborted => None,
        }
    }

    /// The SQLSTATE Postgres uses for the same condition; `None` for [`SplitError::Route`]
    /// (the callback's error has its own) and for the proxy-internal [`SplitError::BadShard`]
    /// and [`SplitError::Aborted`].
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            SplitError::Route { .. } | SplitError::BadShard { .. } | SplitError::Aborted => None,
            // program_limit_exceeded
            SplitError::RowTooLong { .. } => Some("54000"),
            // numeric_value_out_of_range
            SplitError::OutOfRange { .. } => Some("22003"),
            // bad_copy_file_format
            _ => Some("22P04"),
        }
    }
}
