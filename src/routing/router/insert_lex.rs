//! A small lexer for the INSERTs the proxy completes ([`lex`]): it knows Postgres's
//! quoting (strings, `E''`, quoted identifiers, dollar quotes, nested comments) and the
//! nesting of parentheses, which is all the completion needs to find an INSERT's column
//! list, its VALUES rows and their items ([`shape`], [`rows_at`]) in any text of a literal
//! template.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokKind {
    /// A keyword or unquoted identifier.
    Word,
    /// A quoted identifier (`"name"`).
    Quoted,
    /// `(`.
    Open,
    /// `)`.
    Close,
    /// `,`.
    Comma,
    /// `$n`.
    Param(usize),
    /// Anything else (a constant, an operator).
    Other,
}

/// One token: its kind, byte span and the parenthesis depth it sits at (for `(` and `)`,
/// the depth outside them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tok {
    pub kind: TokKind,
    pub start: usize,
    pub end: usize,
    pub depth: usize,
}

impl Tok {
    /// Whether this is the keyword (or unquoted name) `w`.
    pub fn is(&self, s: &str, w: &str) -> bool {
        self.kind == TokKind::Word && s[self.start..self.end].eq_ignore_ascii_case(w)
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// The tokens of `s`; `None` for text it cannot follow (an unterminated quote or comment,
/// unbalanced parentheses).
pub(super) fn lex(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    // About one token per 3 bytes of SQL: grown once, not token by token.
    let mut out = Vec::with_capacity(s.len() / 3 + 8);
    let mut i = 0usize;
    let mut depth = 0usize;
    let mut push = |kind, start, end, depth| {
        out.push(Tok {
            kind,
            start,
            end,
            depth,
        })
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = s[i..].find('\n').map(|k| i + k + 1).unwrap_or(b.len());
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut nest = 1;
                i += 2;
                while nest > 0 {
                    match (b.get(i)?, b.get(i + 1)) {
                        (b'/', Some(b'*')) => {
                            nest += 1;
                            i += 2;
                        }
                        (b'*', Some(b'/')) => {
                            nest -= 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                i += 1;
                loop {
                    match b.get(i)? {
                        b'\\' if escapes => i += 2,
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                push(TokKind::Other, start, i, depth);
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i)? {
                        b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                push(TokKind::Quoted, start, i, depth);
            }
            b'$' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n: usize = s[start + 1..i].parse().ok()?;
                push(TokKind::Param(n), start, i, depth);
            }
            b'$' => {
                let mut j = i + 1;
                while j < b.len() && is_ident(b[j]) {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') {
                    let tag = &s[i..=j];
                    let end = s[j + 1..].find(tag)?;
                    i = j + 1 + end + tag.len();
                } else {
                    i += 1;
                }
                push(TokKind::Other, start, i, depth);
            }
            b'(' => {
                push(TokKind::Open, start, i + 1, depth);
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                push(TokKind::Close, start, i + 1, depth);
                i += 1;
            }
            b',' => {
                push(TokKind::Comma, start, i + 1, depth);
                i += 1;
            }
            c if is_ident(c) && !c.is_ascii_digit() => {
                while i < b.len() && (is_ident(b[i]) || b[i] == b'$') {
                    i += 1;
                }
                push(TokKind::Word, start, i, depth);
            }
            c if c.is_ascii_digit() || c == b'.' => {
                // A number (with exponent or fraction): one token.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                push(TokKind::Other, start, i, depth);
            }
            _ => {
                i += 1;
                push(TokKind::Other, start, i, depth);
            }
        }
    }
    (depth == 0).then_some(out)
}

/// One VALUES row as the lexer found it.
#[derive(Debug, Default)]
pub(super) struct Row {
    /// Its closing parenthesis.
    pub close: usize,
    /// Its items' spans.
    pub items: Vec<(usize, usize)>,
}

/// The rows of the VALUES list whose keyword is token `values` (rows at that depth), and
/// the index of the first token after them.
pub(super) fn rows_at(toks: &[Tok], values: usize) -> (Vec<Row>, usize) {
    let d = toks[values].depth;
    let mut rows = Vec::new();
    let mut i = values + 1;
    while let Some(t) = toks.get(i) {
        if t.kind != TokKind::Open || t.depth != d {
            break;
        }
        let mut row = Row::default();
        let mut item_start: Option<usize> = None;
        let mut item_end = 0usize;
        i += 1;
        while let Some(t) = toks.get(i) {
            match t.kind {
                TokKind::Close if t.depth == d => {
                    if let Some(a) = item_start.take() {
                        row.items.push((a, item_end));
                    }
                    row.close = t.start;
                    break;
                }
                TokKind::Comma if t.depth == d + 1 => {
                    if let Some(a) = item_start.take() {
                        row.items.push((a, item_end));
                    }
                }
                _ => {
                    item_start.get_or_insert(t.start);
                    item_end = t.end;
                }
            }
            i += 1;
        }
        rows.push(row);
        i += 1; // the row's `)`
        match toks.get(i) {
            Some(t) if t.kind == TokKind::Comma && t.depth == d => i += 1,
            _ => break,
        }
    }
    (rows, i)
}

/// Where a plain `INSERT … VALUES` has its parts (byte offsets).
#[derive(Debug, Default)]
pub(super) struct Shape {
    /// `VALUES` (the first at depth 0).
    pub values_kw: Option<usize>,
    /// `DEFAULT` of `DEFAULT VALUES`.
    pub default_kw: Option<usize>,
    /// `OVERRIDING` before `VALUES`.
    pub overriding_kw: Option<usize>,
    /// The last `)` at depth 0 before `VALUES` (the column list's).
    pub cols_close: Option<usize>,
    /// The VALUES rows.
    pub rows: Vec<Row>,
}

/// Finds a plain INSERT's parts; `None` for text the lexer cannot follow.
pub(super) fn shape(s: &str) -> Option<Shape> {
    let toks = lex(s)?;
    let mut sh = Shape::default();
    for (i, t) in toks.iter().enumerate() {
        if t.depth != 0 {
            continue;
        }
        match t.kind {
            TokKind::Close => sh.cols_close = Some(t.start),
            TokKind::Word if t.is(s, "overriding") => sh.overriding_kw = Some(t.start),
            TokKind::Word if t.is(s, "values") => {
                sh.values_kw = Some(t.start);
                if let Some(p) = i.checked_sub(1).map(|k| toks[k]) {
                    if p.is(s, "default") {
                        sh.default_kw = Some(p.start);
                    }
                }
                sh.rows = rows_at(&toks, i).0;
                break;
            }
            _ => {}
        }
    }
    Some(sh)
}

/// The highest `$n` in `s` (0 when none).
pub fn max_param(s: &str) -> usize {
    lex(s)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| match t.kind {
            TokKind::Param(n) => Some(n),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}
