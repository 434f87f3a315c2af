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

/// The client's settings: its startup parameters (the session's defaults, which `RESET`
/// returns to, as in Postgres) and its `SET`s, in order, with their fingerprint.
#[derive(Debug, Clone)]
pub struct Settings {
    defaults: Vec<Entry>,
    entries: Vec<Entry>,
    fp: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let mut s = Settings {
            defaults: Vec::new(),
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

impl Settings {
    fn refresh(&mut self) {
        let mut h = Vec::new();
        for e in &self.defaults {
            h.extend_from_slice(e.name.as_bytes());
            h.push(1);
            h.extend_from_slice(e.stmt.as_bytes());
            h.push(1);
        }
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

    /// Records a startup parameter (a session default) as `SET name TO 'value'`.
    pub fn set_value(&mut self, name: &str, value: &str) {
        let stmt = format!(
            "SET {} TO {}",
            crate::quote::ident(name),
            crate::quote::literal(value)
        );
        let name = name.to_ascii_lowercase();
        let value = Some(value.to_string());
        match self.defaults.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.stmt = stmt;
                e.value = value;
            }
            None => self.defaults.push(Entry { name, stmt, value }),
        }
        self.refresh();
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

    /// What brings a backend inside a transaction to the state after `RESET name`
    /// (`None` for every name: `RESET ALL`): Postgres returns to the session's defaults,
    /// which for a client of the proxy include its startup parameters. `None` when the
    /// backend's own `RESET name` is already right (no startup value for that name).
    pub fn reset_sql(&self, name: Option<&str>) -> Option<String> {
        match name {
            None => {
                let mut sql = String::from("RESET ALL");
                for e in &self.defaults {
                    sql.push_str("; ");
                    sql.push_str(&e.stmt);
                }
                Some(sql)
            }
            Some(n) => {
                let n = n.to_ascii_lowercase();
                self.defaults
                    .iter()
                    .find(|e| e.name == n)
                    .map(|e| e.stmt.clone())
            }
        }
    }

    /// Records `RESET name`.
    pub fn reset(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.entries.retain(|e| e.name != name);
        self.refresh();
    }

    /// Records `RESET ALL` / `DISCARD ALL`: back to the startup parameters.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.refresh();
    }

    /// The `client_encoding` these settings give (Postgres's name), `None` for the shards'
    /// own default (UTF8): a `SET client_encoding`/`SET NAMES` if any, else the startup value.
    pub fn client_encoding(&self) -> Option<&'static str> {
        if let Some(e) = self.entries.iter().find(|e| e.name == "client_encoding") {
            return encoding_set_by(&e.stmt);
        }
        self.startup_client_encoding()
    }

    /// The `client_encoding` of the client's startup parameters (what `RESET` returns to),
    /// `None` for UTF8.
    pub fn startup_client_encoding(&self) -> Option<&'static str> {
        self.defaults
            .iter()
            .find(|e| e.name == "client_encoding")
            .and_then(|e| e.value.as_deref())
            .and_then(crate::wire::encoding::canonical_encoding)
    }

    /// The fingerprint compared against a backend connection's.
    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    /// `(name, value)` of the settings whose value is known (startup parameters), for
    /// the ParameterStatus messages of the login.
    pub fn known_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.defaults
            .iter()
            .filter_map(|e| e.value.as_deref().map(|v| (e.name.as_str(), v)))
    }

    /// The SQL that brings a connection to these settings. `RESET ALL` leaves the role and
    /// the session authorization alone (Postgres marks them so), hence their own resets
    /// first: a client's `SET ROLE` never reaches the next client of that connection.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL");
        for e in self.defaults.iter().chain(&self.entries) {
            sql.push_str("; ");
            sql.push_str(&e.stmt);
        }
        sql
    }
}

/// The encoding a `SET [LOCAL] client_encoding …` / `SET [LOCAL] NAMES …` statement gives
/// (Postgres's name), `None` for `DEFAULT`: a shard connection's default is UTF8, its own
/// startup value.
pub fn encoding_set_by(stmt: &str) -> Option<&'static str> {
    set_value_of(stmt).and_then(crate::wire::encoding::canonical_encoding)
}

/// Whether `stmt` is `SET LOCAL client_encoding …` or `SET LOCAL NAMES …`.
pub fn sets_local_encoding(stmt: &str) -> bool {
    let mut words = stmt
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|w| !w.is_empty());
    let (Some(set), Some(local), Some(name)) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    let name = name.trim_matches('"');
    set.eq_ignore_ascii_case("set")
        && local.eq_ignore_ascii_case("local")
        && (name.eq_ignore_ascii_case("client_encoding") || name.eq_ignore_ascii_case("names"))
}

/// The value a `SET name TO value` / `SET name = value` / `SET NAMES value` statement gives
/// (quotes removed); `None` for `DEFAULT` or a text it cannot read.
fn set_value_of(stmt: &str) -> Option<&str> {
    let t = stmt.trim().trim_end_matches(';').trim_end();
    let v = t.rsplit(|c: char| c.is_whitespace() || c == '=').next()?;
    let v = v.trim_matches(|c| c == '\'' || c == '"');
    (!v.is_empty() && !v.eq_ignore_ascii_case("default")).then_some(v)
}

/// The settings in a startup packet's `options` value (`PGOPTIONS`, JDBC's `options`):
/// `-c name=value`, `-cname=value` and `--name=value`, separated by whitespace, a backslash
/// escaping the next character (Postgres's `pg_split_opts`); dashes in a name become
/// underscores, as Postgres reads them. Any other switch is an error naming it: the proxy
/// cannot honour server command-line options.
pub fn startup_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next()
                .ok_or_else(|| "startup option -c needs name=value".to_string())?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(format!(
                "startup option \"{w}\" is not supported through the proxy; use -c name=value"
            ));
        };
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("startup option \"{pair}\" needs name=value"))?;
        if name.is_empty() {
            return Err(format!("startup option \"{pair}\" has no name"));
        }
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_are_read_like_postgres() {
        let got = startup_options("-c statement_timeout=300  --search-path=a\\ b -cwork_mem=8MB")
            .unwrap();
        assert_eq!(
            got,
            vec![
                ("statement_timeout".to_string(), "300".to_string()),
                ("search_path".to_string(), "a b".to_string()),
                ("work_mem".to_string(), "8MB".to_string()),
            ]
        );
        assert!(startup_options("-B 100").is_err());
        assert!(startup_options("-c").is_err());
        assert!(startup_options("-c novalue").is_err());
        assert_eq!(startup_options("  ").unwrap(), vec![]);
    }

    #[test]
    fn client_encoding_follows_set_and_startup() {
        let mut s = Settings::default();
        assert_eq!(s.client_encoding(), None);
        s.set_value("client_encoding", "LATIN1");
        assert_eq!(s.client_encoding(), Some("LATIN1"));
        s.set("client_encoding", "SET client_encoding TO 'euc-jp'");
        assert_eq!(s.client_encoding(), Some("EUC_JP"));
        s.set("client_encoding", "set names utf8;");
        assert_eq!(s.client_encoding(), Some("UTF8"));
        s.set("client_encoding", "SET client_encoding = DEFAULT");
        assert_eq!(s.client_encoding(), None);
        s.clear();
        assert_eq!(s.client_encoding(), Some("LATIN1"));
    }

    #[test]
    fn local_encoding_statements() {
        assert!(sets_local_encoding("SET LOCAL client_encoding TO 'latin9'"));
        assert!(sets_local_encoding("set local names=latin9"));
        assert!(sets_local_encoding("SET LOCAL \"client_encoding\" = 'x'"));
        assert!(!sets_local_encoding("SET LOCAL work_mem = '8MB'"));
        assert!(!sets_local_encoding("SET client_encoding TO 'latin9'"));
        assert!(!sets_local_encoding("SET LOCAL"));
        assert_eq!(encoding_set_by("SET LOCAL NAMES 'latin9'"), Some("LATIN9"));
        assert_eq!(encoding_set_by("SET client_encoding TO DEFAULT"), None);
    }

    #[test]
    fn fingerprints_follow_content() {
        let mut a = Settings::default();
        assert_eq!(a.fingerprint(), empty_fp());
        a.set_value("application_name", "x'y");
        assert_eq!(
            a.replay_sql(),
            "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; SET \"application_name\" TO 'x''y'"
        );
        let fp = a.fingerprint();
        a.set("search_path", "SET search_path = a");
        a.reset("search_path");
        assert_eq!(a.fingerprint(), fp);
        a.clear();
        assert_eq!(
            a.fingerprint(),
            fp,
            "RESET ALL keeps the startup parameters"
        );
        assert_ne!(empty_fp(), UNKNOWN_FP);
        a.set("application_name", "SET application_name = 'z'");
        assert_eq!(
            a.replay_sql(),
            "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; SET \"application_name\" TO 'x''y'; SET application_name = 'z'"
        );
        assert_eq!(
            a.reset_sql(Some("Application_Name")).as_deref(),
            Some("SET \"application_name\" TO 'x''y'")
        );
        assert_eq!(a.reset_sql(Some("work_mem")), None);
        assert_eq!(
            a.reset_sql(None).as_deref(),
            Some("RESET ALL; SET \"application_name\" TO 'x''y'")
        );
        a.reset("application_name");
        assert_eq!(a.fingerprint(), fp);
    }
}
