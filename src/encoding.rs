//! Client encodings: the proxy speaks UTF-8 to clients (and SQL_ASCII, which is the same
//! thing against UTF-8 shards); any other `client_encoding` is refused with a clear error
//! at login or at `SET`, never half-handled.

/// The name Postgres reports for a `client_encoding` value the proxy speaks: like
/// Postgres's `clean_encoding_name`, everything but letters and digits is ignored, case too
/// (`utf-8`, asyncpg's `'utf-8'`, `unicode`). `None` for any other encoding.
///
/// Only UTF-8 text is understood: the parser needs it, and the proxy rewrites statements.
/// SQL_ASCII is accepted because Postgres itself then converts nothing and checks client
/// text against the server's encoding (UTF-8 on every shard) — the same thing; an
/// interactive psql in a C locale asks for it.
pub fn canonical_encoding(v: &str) -> Option<&'static str> {
    let squashed: String = v
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match squashed.as_str() {
        "utf8" | "unicode" => Some("UTF8"),
        "sqlascii" => Some("SQL_ASCII"),
        _ => None,
    }
}

/// The error for a client encoding the proxy does not speak.
pub fn unsupported_encoding(v: &str) -> String {
    format!(
        "client_encoding \"{v}\" is not supported by shardwire: it speaks UTF8 to clients (the shards store UTF-8); set client_encoding to UTF8"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_named_as_postgres_names_them() {
        assert_eq!(canonical_encoding("utf-8"), Some("UTF8"));
        assert_eq!(canonical_encoding("'utf-8'"), Some("UTF8"));
        assert_eq!(canonical_encoding("sql_ascii"), Some("SQL_ASCII"));
        assert_eq!(canonical_encoding("LATIN1"), None);
    }
}
