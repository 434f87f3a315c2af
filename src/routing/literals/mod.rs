//! Literal templates: simple-protocol queries that differ only in their constants
//! (`… WHERE id = 17`, `… WHERE id = 42`) share one cached plan.
//!
//! Plain text (identifiers, unsigned numbers, plain `'…'` strings) is split by a small
//! lexer of our own (`fast`, a few hundred instructions, checked against Postgres's);
//! everything else by Postgres's own lexer (`pg_query::scan`, ~1 µs, against ~7 µs for a
//! full parse). The template key is the text with every plain constant replaced by a
//! placeholder. A plan made for a template never folds a constant into its route: a
//! constant that is a shard key stays a reference to "literal #n", evaluated for each query
//! from that query's own tokens ([`literal_value`]). Only plans whose other parts do not depend
//! on constant values are kept as templates (see `router::PlanCache::get_simple`).

use pg_query::protobuf::Token;

use crate::sharding::keys::{key_from_text, KeyType, KeyValue};

/// Kind of a templated constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LitKind {
    /// Integer or decimal number.
    Number,
    /// `'…'` string (standard-conforming, `''` for a quote).
    Str,
}

/// The constants of one query text and its template key.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The template key (token texts, constants replaced by placeholders).
    pub key: String,
    /// Byte ranges and kinds of the constants, in order.
    pub lits: Vec<(usize, usize, LitKind)>,
    /// Parser locations of the constants' AConst nodes (the `-` of a negated number, else the
    /// constant itself): (location, constant index, negated).
    pub locations: Vec<(i32, usize, bool)>,
}

mod fast;

/// Scans `sql`; `None` when it holds constants this module does not template (E'', $$,
/// U&'', B'', X'', hex/underscored numbers) or cannot be scanned. Plain text is scanned
/// by `fast`, the rest by Postgres's scanner.
pub fn scan(sql: &str) -> Option<Scanned> {
    fast::scan(sql).or_else(|| postgres_scan(sql))
}

/// [`scan`] by Postgres's own scanner (`pg_query::scan`).
fn postgres_scan(sql: &str) -> Option<Scanned> {
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let mut out = Scanned {
        key: String::with_capacity(sql.len()),
        ..Default::default()
    };
    let mut prev_minus: Option<i32> = None;
    for t in &tokens {
        let (s, e) = (t.start.max(0) as usize, t.end.max(0) as usize);
        let text = sql.get(s..e)?;
        let kind = Token::try_from(t.token).unwrap_or(Token::Nul);
        let lit = match kind {
            Token::Iconst | Token::Fconst => {
                if !text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    return None;
                }
                Some(LitKind::Number)
            }
            Token::Sconst => {
                if !text.starts_with('\'') {
                    return None;
                }
                Some(LitKind::Str)
            }
            Token::Usconst | Token::Bconst | Token::Xconst => return None,
            Token::SqlComment | Token::CComment => continue,
            _ => None,
        };
        match lit {
            Some(k) => {
                let minus = prev_minus.filter(|_| k == LitKind::Number);
                out.push_lit(s, e, k, minus.map(|m| m as usize));
            }
            None => out.key.push_str(text),
        }
        out.key.push('\u{1f}');
        prev_minus = if kind == Token::Ascii45 {
            Some(t.start)
        } else {
            None
        };
    }
    Some(out)
}

impl Scanned {
    /// Records constant `start..end` (negated by the `-` at `minus`): its placeholder in
    /// the key, its span, and the parser locations that may name it. Offsets fit `i32`
    /// (pg_query's are `i32`; the fast lexer refuses longer text).
    fn push_lit(&mut self, start: usize, end: usize, kind: LitKind, minus: Option<usize>) {
        self.key.push('\u{1}');
        self.key
            .push(if kind == LitKind::Number { 'n' } else { 's' });
        let idx = self.lits.len();
        self.lits.push((start, end, kind));
        self.locations.push((start as i32, idx, false));
        if let Some(m) = minus {
            self.locations.push((m as i32, idx, true));
        }
    }

    /// The constants as [`QueryLits`] of `sql` (the text that was scanned).
    pub fn query_lits<'a>(&'a self, sql: &'a str) -> QueryLits<'a> {
        QueryLits {
            sql,
            lits: &self.lits,
        }
    }
}

/// The constants of the query being routed (empty outside literal templates).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryLits<'a> {
    /// The query text.
    pub sql: &'a str,
    /// Its constants, as [`Scanned::lits`].
    pub lits: &'a [(usize, usize, LitKind)],
}

/// What a templated constant says about a key.
#[derive(Debug)]
pub enum LitVal {
    /// It is this key.
    Value(KeyValue),
    /// No key can equal it (`id = 1.5`).
    Nothing,
    /// It pins nothing (an exponent form); the statement runs where it would without it.
    Unpinned,
    /// Not a valid key of the type (`id = 'abc'`).
    Bad(crate::sharding::keys::KeyError),
}

/// Evaluates constant `lit` of `sql` (negated or not) as a key of type `ty`, with the same
/// meaning the router gives a constant it folds at plan time.
pub fn literal_value(ty: KeyType, sql: &str, lit: (usize, usize, LitKind), negate: bool) -> LitVal {
    let raw = sql.get(lit.0..lit.1).unwrap_or("");
    match lit.2 {
        LitKind::Str => {
            let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
            // Only a doubled quote needs unescaping (and a copy).
            let text: std::borrow::Cow<'_, str> = if inner.contains("''") {
                inner.replace("''", "'").into()
            } else {
                inner.into()
            };
            match key_from_text(ty, &text) {
                Ok(k) => LitVal::Value(k),
                Err(e) => LitVal::Bad(e),
            }
        }
        LitKind::Number => {
            let text: std::borrow::Cow<'_, str> = if negate {
                format!("-{raw}").into()
            } else {
                raw.into()
            };
            match key_from_text(ty, &text) {
                Ok(k) => LitVal::Value(k),
                Err(_) => match crate::sharding::keys::numeric_literal(ty, &text) {
                    crate::sharding::keys::NumericLiteral::Value(k) => LitVal::Value(k),
                    crate::sharding::keys::NumericLiteral::Nothing => LitVal::Nothing,
                    crate::sharding::keys::NumericLiteral::Unknown => LitVal::Unpinned,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_become_placeholders() {
        let a = scan("SELECT name FROM users WHERE id = 17 AND name = 'x'").unwrap();
        let b = scan("SELECT name FROM users WHERE id = 4242 AND name = 'it''s'").unwrap();
        assert_eq!(a.key, b.key);
        // Postgres's scanner (comments, whitespace) keys by tokens alone.
        let a2 = postgres_scan("SELECT name FROM users WHERE id = 17 AND name = 'x'").unwrap();
        let b2 = postgres_scan("SELECT name FROM users  WHERE id = 4242 AND name = 'it''s' -- hi")
            .unwrap();
        assert_eq!(a2.key, b2.key);
        assert_eq!(
            scan("SELECT name FROM users WHERE id = 4242 AND name = 'it''s' -- hi")
                .unwrap()
                .key,
            a2.key
        );
        assert_eq!(a.lits.len(), 2);
        let c = scan("SELECT name FROM users WHERE id = -17").unwrap();
        assert_ne!(a.key, c.key);
        assert!(c.locations.iter().any(|(_, _, neg)| *neg));
        // Different structure, different key.
        assert_ne!(
            a.key,
            scan("SELECT name FROM users WHERE id < 17 AND name = 'x'")
                .unwrap()
                .key
        );
        // Forms not templated.
        assert!(scan("SELECT E'\\\\n'").is_none());
        assert!(scan("SELECT $$x$$").is_none());
    }
}
