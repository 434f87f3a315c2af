//! A client's session settings (`SET`s and startup parameters), replayed onto whichever
//! pooled backend connection serves the client next.
//!
//! Each backend connection remembers the fingerprint of the settings applied to it; a
//! checkout whose fingerprint differs runs `RESET ALL` plus the client's `SET`s first
//! (one round trip, only on mismatch), so settings never leak between clients.

use xxhash_rust::xxh3::xxh3_64;

/// Fingerprint of a connection whose settings are unknown (always resynced).
pub const UNKNOWN_FP: u64 = 0;

/// One setting: its lowercased name, the SQL that applies it, and its value when the
/// proxy knows it (startup parameters).
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    stmt: String,
    value: Option<String>,
}

/// Ordered name -> SET statement list with its fingerprint.
#[derive(Debug, Clone)]
pub struct Settings {
    entries: Vec<Entry>,
    fp: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let mut s = Settings {
            entries: Vec::new(),
            fp: 0,
        };
        s.refresh();
        s
    }
}

/// Fingerprint of a connection with no settings applied (fresh, or after RESET ALL).
pub fn empty_fp() -> u64 {
    Settings::default().fp
}

/// Quotes a value as a SQL string literal.
pub fn quote_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Quotes an identifier (for setting names with odd characters).
pub fn quote_ident(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('"', "\"\""))
    }
}

impl Settings {
    fn refresh(&mut self) {
        let mut h = Vec::new();
        for e in &self.entries {
            h.extend_from_slice(e.name.as_bytes());
            h.push(0);
            h.extend_from_slice(e.stmt.as_bytes());
            h.push(0);
        }
        // Never collide with UNKNOWN_FP.
        self.fp = xxh3_64(&h).max(1);
    }

    /// Records `SET name ...` given as the statement text.
    pub fn set(&mut self, name: &str, stmt: &str) {
        self.put(name, stmt.to_string(), None);
    }

    /// Records a startup parameter as `SET name TO 'value'`.
    pub fn set_value(&mut self, name: &str, value: &str) {
        let stmt = format!("SET {} TO {}", quote_ident(name), quote_literal(value));
        self.put(name, stmt, Some(value.to_string()));
    }

    fn put(&mut self, name: &str, stmt: String, value: Option<String>) {
        let name = name.to_ascii_lowercase();
        match self.entries.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.stmt = stmt;
                e.value = value;
            }
            None => self.entries.push(Entry { name, stmt, value }),
        }
        self.refresh();
    }

    /// Records `RESET name`.
    pub fn reset(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.entries.retain(|e| e.name != name);
        self.refresh();
    }

    /// Records `RESET ALL` / `DISCARD ALL`.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.refresh();
    }

    /// The fingerprint compared against a backend connection's.
    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    /// `(name, value)` of the settings whose value is known (startup parameters), for
    /// the ParameterStatus messages of the login.
    pub fn known_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter_map(|e| e.value.as_deref().map(|v| (e.name.as_str(), v)))
    }

    /// The SQL that brings a connection to these settings.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for e in &self.entries {
            sql.push_str("; ");
            sql.push_str(&e.stmt);
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_content() {
        let mut a = Settings::default();
        assert_eq!(a.fingerprint(), empty_fp());
        a.set_value("application_name", "x'y");
        assert_eq!(a.replay_sql(), "RESET ALL; SET application_name TO 'x''y'");
        let fp = a.fingerprint();
        a.set("search_path", "SET search_path = a");
        a.reset("search_path");
        assert_eq!(a.fingerprint(), fp);
        a.clear();
        assert_eq!(a.fingerprint(), empty_fp());
        assert_ne!(empty_fp(), UNKNOWN_FP);
    }
}
