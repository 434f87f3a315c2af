//! A fast lexer for the common shape of simple-protocol query text, so that a templated
//! query does not pay for Postgres's scanner (`pg_query::scan` goes through C, protobuf
//! encoding and decoding: about 12,000 instructions for a point SELECT, two fifths of the
//! proxy's whole per-statement cost in simple mode).
//!
//! It is not a parser, and not a full lexer: it accepts only text made of plain ASCII
//! identifiers, quoted identifiers, unsigned decimal numbers (`17`, `1.5`), standard
//! `'…'` strings without backslashes, whitespace and punctuation, and answers `None`
//! ("not sure") for everything else, which then goes to Postgres's own scanner. The rules
//! mirror `src/backend/parser/scan.l` (PostgreSQL 18, the grammar pg_query ships):
//! - a number followed by an identifier character or `.` is "trailing junk", an exponent, a
//!   `1..2` range or a `5.` form: not sure;
//! - a string preceded by an identifier character or `&` may be `E'…'`, `B'…'`, `X'…'`,
//!   `N'…'`, `U&'…'`, and a string followed (after whitespace) by another quote may be
//!   continued by it: not sure;
//! - `$` outside an identifier (parameters, dollar quotes), `--` and `/*` (comments),
//!   backslashes, control characters and non-ASCII outside quotes: not sure;
//! - a `-` before a number is a negation only when it is an operator by itself (the
//!   character before it is no operator character), as in `id = -5`; `=-5`, where the
//!   scanner splits the operator `=-`, is left to it.
//!
//! Its results must equal what the Postgres-scanner path computes for the same text (same
//! constant spans, kinds and locations); `tests::agrees_with_postgres_scanner` checks
//! that on many generated texts. Its template keys differ from that path's (they keep the
//! text between constants verbatim, whitespace included, behind a leading `\u{2}`), which
//! only means the two paths never share a cache entry.

use super::{LitKind, Scanned};

/// Operator characters of the Postgres scanner (`op_chars`). A `match`, not a search of
/// the set: it runs for every byte of a statement, and a slice `contains` may compile to an
/// out-of-line `memchr` call (it did: +130 instructions a statement).
#[inline]
fn is_op_char(b: u8) -> bool {
    matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Scans `sql` when it is made only of forms this lexer is sure of; `None` otherwise.
pub(super) fn scan(sql: &str) -> Option<Scanned> {
    let b = sql.as_bytes();
    if i32::try_from(b.len()).is_err() {
        return None;
    }
    let mut out = Scanned {
        // The marker, and room for a few constants shorter than their placeholders.
        key: String::with_capacity(sql.len() + 8),
        ..Default::default()
    };
    out.key.push('\u{2}');
    // Start of the text not yet copied into the key.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_space(c) {
            i += 1;
        } else if is_ident_start(c) {
            i += 1;
            while i < b.len() && is_ident_cont(b[i]) {
                i += 1;
            }
            if i < b.len() && b[i] >= 0x80 {
                return None;
            }
        } else if c == b'"' {
            if i > 0 && b[i - 1] == b'&' {
                return None;
            }
            let start = i;
            i = quoted_end(b, i, b'"')?;
            if i == start + 2 {
                // `""`: a zero-length identifier is an error.
                return None;
            }
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' {
                i += 1;
                let frac = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == frac {
                    return None;
                }
            }
            if i < b.len() && (is_ident_cont(b[i]) || b[i] == b'.' || b[i] >= 0x80) {
                return None;
            }
            let negated = minus_before(b, start)?;
            push_lit(
                &mut out,
                sql,
                &mut copied,
                (start, i),
                LitKind::Number,
                negated,
            );
        } else if c == b'\'' {
            if i > 0
                && (is_ident_cont(b[i - 1]) || matches!(b[i - 1], b'&' | b'"') || b[i - 1] >= 0x80)
            {
                return None;
            }
            let start = i;
            i = quoted_end(b, i, b'\'')?;
            if b[start..i].contains(&b'\\') {
                return None;
            }
            let mut j = i;
            while j < b.len() && is_space(b[j]) {
                j += 1;
            }
            if j < b.len() && (b[j] == b'\'' || is_ident_cont(b[j]) && j == i) {
                return None;
            }
            push_lit(&mut out, sql, &mut copied, (start, i), LitKind::Str, None);
        } else if c == b'.' {
            if i + 1 < b.len() && (b[i + 1].is_ascii_digit() || b[i + 1] == b'.') {
                return None;
            }
            i += 1;
        } else if (c == b'-' && b.get(i + 1) == Some(&b'-'))
            || (c == b'/' && b.get(i + 1) == Some(&b'*'))
        {
            return None;
        } else if is_op_char(c) || matches!(c, b',' | b'(' | b')' | b'[' | b']' | b';' | b':') {
            i += 1;
        } else {
            // `$`, `\`, `{`, control characters, non-ASCII outside quotes.
            return None;
        }
    }
    out.key.push_str(&sql[copied..]);
    Some(out)
}

/// The index just past the quoted form starting at `b[start]` (`quote` doubled inside is
/// one quote character); `None` when it is not closed.
fn quoted_end(b: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let off = b.get(i..)?.iter().position(|&x| x == quote)?;
        i += off + 1;
        if b.get(i) == Some(&quote) {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

/// For a number starting at `start`: `Some(Some(pos))` when a `-` that is an operator by
/// itself precedes it (whitespace between allowed), `Some(None)` when no `-` does, `None`
/// when the `-` ends a longer run of operator characters (the scanner's splitting rules
/// decide; not sure).
fn minus_before(b: &[u8], start: usize) -> Option<Option<usize>> {
    let mut j = start;
    while j > 0 && is_space(b[j - 1]) {
        j -= 1;
    }
    if j == 0 || b[j - 1] != b'-' {
        return Some(None);
    }
    let m = j - 1;
    if m > 0 && is_op_char(b[m - 1]) {
        return None;
    }
    Some(Some(m))
}

/// Copies the text before constant `start..end` into the key, then records the constant.
fn push_lit(
    out: &mut Scanned,
    sql: &str,
    copied: &mut usize,
    (start, end): (usize, usize),
    kind: LitKind,
    negated: Option<usize>,
) {
    out.key.push_str(&sql[*copied..start]);
    *copied = end;
    out.push_lit(start, end, kind, negated);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (spans and kinds, sorted locations) of a scan, for comparing the two paths.
    type Shape = (Vec<(usize, usize, LitKind)>, Vec<(i32, usize, bool)>);

    fn shape(s: &Scanned) -> Shape {
        let mut locs = s.locations.clone();
        locs.sort();
        (s.lits.clone(), locs)
    }

    #[test]
    fn common_queries_are_scanned_here() {
        for sql in [
            "SELECT name FROM users WHERE id = 17",
            "UPDATE users SET balance = balance + -5 WHERE id = 4242;",
            "select * from \"Users\" where \"id\" = 1.5 and name = 'it''s é'",
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')",
            "SELECT a$b FROM t WHERE x = ANY('{1,2}'::int[]) LIMIT 10",
        ] {
            let s = scan(sql).unwrap_or_else(|| panic!("not scanned here: {sql}"));
            assert!(s.key.starts_with('\u{2}'));
            assert!(!s.lits.is_empty());
        }
        let a = scan("SELECT name FROM users WHERE id = 17").unwrap();
        let b = scan("SELECT name FROM users WHERE id = 4242").unwrap();
        let c = scan("SELECT name FROM users WHERE id = -17").unwrap();
        let d = scan("SELECT name FROM users1 WHERE id = 17").unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_ne!(a.key, d.key);
        assert!(c.locations.contains(&(34, 0, true)));
    }

    #[test]
    fn unusual_forms_are_left_to_postgres() {
        for sql in [
            "SELECT E'x'",
            "SELECT e'x'",
            "SELECT N'x'",
            "SELECT U&'d\\0061t'",
            "SELECT U&\"x\"",
            "SELECT B'101', X'1F'",
            "SELECT 'a\\b'",
            "SELECT 'a'\n'b'",
            "SELECT 'a' 'b'",
            "SELECT $$x$$",
            "SELECT $1",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 5.",
            "SELECT .5",
            "SELECT 1..2",
            "SELECT 12abc",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT 2 =-5",
            "SELECT 2 @- 5",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT \"\"",
            "SELECT café",
            "SELECT 1 \\g",
            "SELECT 1\x0b",
        ] {
            assert!(scan(sql).is_none(), "scanned here: {sql:?}");
        }
    }

    /// Deterministic pseudo-random numbers (xorshift), so a failure is reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    /// Whenever this lexer answers, Postgres's scanner (the other path of
    /// [`super::super::scan`]) finds the same constants at the same places.
    #[test]
    fn agrees_with_postgres_scanner() {
        const PIECES: &[&str] = &[
            "SELECT",
            "id",
            "t1",
            "a$b",
            "E",
            "e",
            "N",
            "U",
            "x",
            "b",
            "\"Q\"",
            "\"a\"\"b\"",
            "U&\"x\"",
            "1",
            "42",
            "007",
            "1.5",
            "10.25",
            "1e5",
            ".5",
            "5.",
            "0x1F",
            "1_000",
            "1..2",
            "'a'",
            "'it''s'",
            "''",
            "'é'",
            "E'x'",
            "'a\\b'",
            "$1",
            "$$x$$",
            "=",
            "-",
            "+",
            "*",
            "/",
            "<",
            ">",
            "<>",
            "=-",
            "@",
            "@-",
            "~",
            "!",
            "::",
            ":",
            ".",
            ",",
            "(",
            ")",
            "[",
            "]",
            ";",
            "--c\n",
            "/*c*/",
            "&",
            "|",
            "%",
            "^",
            "?",
            "#",
            "'a'b",
            "1'x'",
            "x'1'",
            "'\n'",
            "'a''",
            "0",
            "00.5",
            "99999999999999999999",
            "- -",
            "*/",
            "\"\"",
            "é",
            "'",
            "\"",
        ];
        const GAPS: &[&str] = &["", "", " ", " ", "\n", "\t", "  "];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut here, mut total) = (0, 0);
        for _ in 0..100_000 {
            let n = 1 + rng.next() % 12;
            let mut sql = String::new();
            for _ in 0..n {
                sql.push_str(rng.pick(GAPS));
                sql.push_str(rng.pick(PIECES));
            }
            total += 1;
            let Some(fast) = scan(&sql) else { continue };
            here += 1;
            let slow = super::super::postgres_scan(&sql)
                .unwrap_or_else(|| panic!("fast scanned {sql:?}, Postgres's scanner refused it"));
            assert_eq!(shape(&fast), shape(&slow), "scans differ for {sql:?}");
        }
        // The generator must exercise this lexer, not only its refusals.
        assert!(here * 10 > total, "only {here} of {total} scanned here");
    }
}
