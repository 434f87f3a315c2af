//! The byte-level helpers the hand-written text parsers share: C-locale whitespace and a
//! [`Cursor`] over the input.

/// C-locale `isspace`.
pub(super) fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `s` without leading and trailing C-locale whitespace.
pub(super) fn trim_c_space(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

/// A byte cursor for the hand-written parsers; reads past the end as
/// `0`, which no grammar accepts.
pub(super) struct Cursor<'a> {
    pub(super) b: &'a [u8],
    pub(super) p: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(s: &'a str) -> Cursor<'a> {
        Cursor {
            b: s.as_bytes(),
            p: 0,
        }
    }

    pub(super) fn peek_at(&self, k: usize) -> u8 {
        self.p
            .checked_add(k)
            .and_then(|i| self.b.get(i))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn peek(&self) -> u8 {
        self.peek_at(0)
    }

    pub(super) fn at_end(&self) -> bool {
        self.p >= self.b.len()
    }

    pub(super) fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == c && !self.at_end();
        if hit {
            self.p += 1;
        }
        hit
    }

    pub(super) fn skip_space(&mut self) {
        while is_c_space(self.peek()) {
            self.p += 1;
        }
    }

    /// Whether `word` (lowercase ASCII) comes next, case-insensitively, and
    /// is followed by a non-letter.
    pub(super) fn is_word(&self, word: &str) -> bool {
        let end = self.p + word.len();
        self.b
            .get(self.p..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
            && !self.b.get(end).is_some_and(u8::is_ascii_alphabetic)
    }

    /// Consumes `word` if [`Cursor::is_word`].
    pub(super) fn eat_word(&mut self, word: &str) -> bool {
        let hit = self.is_word(word);
        if hit {
            self.p += word.len();
        }
        hit
    }

    /// Consumes `prefix` (lowercase ASCII) case-insensitively, whatever
    /// follows it.
    pub(super) fn eat_prefix(&mut self, prefix: &str) -> bool {
        let end = self.p + prefix.len();
        let hit = self
            .b
            .get(self.p..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(prefix.as_bytes()));
        if hit {
            self.p = end;
        }
        hit
    }

    /// A run of decimal digits of `min..=max` length (saturating value).
    pub(super) fn digits(&mut self, min: usize, max: usize) -> Option<u64> {
        let start = self.p;
        let mut v: u64 = 0;
        while self.peek().is_ascii_digit() {
            v = v
                .saturating_mul(10)
                .saturating_add(u64::from(self.peek() - b'0'));
            self.p += 1;
        }
        (min..=max).contains(&(self.p - start)).then_some(v)
    }
}
