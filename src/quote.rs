//! Names and values quoted into the SQL text the proxy writes itself (control tables,
//! `SET` replays, rebalance copies), with postgres-protocol's escaping: identifiers always
//! double-quoted (so case and reserved words survive), literals single-quoted (the `E''`
//! form when they hold a backslash, right whatever `standard_conforming_strings` says).

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// One identifier (a column, a setting name): `"name"`.
pub fn ident(name: &str) -> String {
    escape_identifier(name)
}

/// A possibly schema-qualified name as the shard map writes it (`schema.table`): each part
/// quoted on its own.
pub fn qualified(name: &str) -> String {
    name.split('.')
        .map(escape_identifier)
        .collect::<Vec<_>>()
        .join(".")
}

/// A string literal: `'value'`.
pub fn literal(value: &str) -> String {
    escape_literal(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident("Order"), "\"Order\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("app.users"), "\"app\".\"users\"");
        assert_eq!(qualified("users"), "\"users\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), " E'a\\\\b'");
    }
}
