//! The YAML shard map as the user writes it.
//!
//! These are the raw `serde` structures (unknown fields are refused) plus the
//! [`ConfigError`] every validation failure is reported as. Meaning and
//! cross-field rules (URLs, strategies, shard names, ranges) are checked when
//! the raw map becomes a [`crate::sharding::shardmap::ShardMap`]. See
//! `config/example.yaml` for a commented map using every field.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Default client listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// Default backend connections per shard.
pub const DEFAULT_POOL_SIZE: u64 = 20;
/// Default time a query waits for a free backend connection, in milliseconds.
pub const DEFAULT_CHECKOUT_TIMEOUT_MS: u64 = 5000;
/// Default time allowed to connect to a shard, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3000;
/// Default ring tokens per shard per unit of weight.
pub const DEFAULT_VNODES: u32 = 256;
/// Default largest client message accepted, in bytes (64 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 * 1024 * 1024;
/// Default most concurrent client connections.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: u64 = 10_000;

/// The whole shard map file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address clients connect to (`host:port`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the HTTP admin endpoint (`/metrics`, `/health`).
    #[serde(default)]
    pub admin: Option<String>,
    /// The database name clients connect to (default: the database names of the shards'
    /// URLs); any other name is refused with `3D000`.
    #[serde(default)]
    pub database: Option<String>,
    /// Who may connect to the proxy (at least one).
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// Client authentication: `scram-sha-256` (default) or `md5`.
    #[serde(default)]
    pub auth: Option<String>,
    /// The shards, in map order (at least one).
    #[serde(default)]
    pub shards: Vec<RawShard>,
    /// Backend pool settings.
    #[serde(default)]
    pub pool: RawPool,
    /// Hash ring settings.
    #[serde(default)]
    pub hash: RawHash,
    /// Where the key directory table lives (for the `directory` strategy).
    #[serde(default)]
    pub directory: Option<RawDirectory>,
    /// The shard unlisted tables live on (default: the first shard).
    #[serde(default)]
    pub default_shard: Option<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Scatter-gather limits.
    #[serde(default)]
    pub gather: RawGather,
    /// Sharded and reference tables, in file order.
    #[serde(default)]
    pub tables: TableMap,
    /// TLS for client connections.
    #[serde(default)]
    pub tls: Option<RawTls>,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}

/// The `tls:` section: the proxy's certificate for client connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate chain file (PEM), server certificate first.
    pub cert: String,
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Refuse clients that do not use TLS (FATAL 28000, like a `hostssl`-only pg_hba.conf).
    #[serde(default)]
    pub require: bool,
}

/// A proxy user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// User name clients log in with.
    pub name: String,
    /// Its password (plain text).
    pub password: String,
    /// May use the admin console (`psql -d shardwire`).
    #[serde(default)]
    pub admin: bool,
    /// The role this user's clients run as on the shards (its own pools). Default: the
    /// shards' URL login, which is also the control plane's.
    #[serde(default)]
    pub shard_user: Option<String>,
    /// That role's password on the shards.
    #[serde(default)]
    pub shard_password: Option<String>,
}

/// One shard as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    /// Unique name; ring tokens derive from it (`[A-Za-z0-9_-]+`).
    pub name: String,
    /// `postgres://user[:password]@host[:port]/dbname`.
    pub url: String,
    /// Region label (for the `geo` strategy).
    #[serde(default)]
    pub region: Option<String>,
    /// Relative share of the hash ring (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Backend pool settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    /// Connections per shard.
    pub size: u64,
    /// `transaction` (default) or `session`.
    pub mode: String,
    /// How long a query waits for a free connection, in milliseconds.
    pub checkout_timeout_ms: u64,
    /// How long connecting to a shard may take, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            size: DEFAULT_POOL_SIZE,
            mode: "transaction".to_owned(),
            checkout_timeout_ms: DEFAULT_CHECKOUT_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
        }
    }
}

/// Hash ring settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHash {
    /// Ring tokens per shard per unit of weight.
    pub vnodes: u32,
}

impl Default for RawHash {
    fn default() -> Self {
        RawHash {
            vnodes: DEFAULT_VNODES,
        }
    }
}

/// Location of the key directory table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    /// Shard holding the directory table.
    pub shard: String,
    /// Table name.
    pub table: String,
}

/// Resource limits as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Largest client protocol message, in bytes.
    pub max_message_size: u64,
    /// Most concurrent client connections.
    pub max_client_connections: u64,
    /// Memory, in MiB, that large client messages (1 MiB and more) may hold at once across
    /// the whole proxy, counting the work of parsing them; a client whose message does not
    /// fit waits (the proxy stops reading from it) until others are done.
    pub max_buffered_mb: u64,
    /// Longest a statement may run on a shard, in milliseconds (0: no limit). Sent to the
    /// shards as their `statement_timeout` default; a client's own SET still wins.
    pub query_timeout_ms: u64,
    /// Longest a client may stay idle inside a transaction, in milliseconds (0: no limit).
    pub idle_in_transaction_timeout_ms: u64,
    /// Longest a client may stay idle outside a transaction, in milliseconds (0: no limit).
    pub client_idle_timeout_ms: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            max_buffered_mb: 256,
            query_timeout_ms: 0,
            idle_in_transaction_timeout_ms: 0,
            client_idle_timeout_ms: 0,
        }
    }
}

/// Scatter-gather settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGather {
    /// Most memory one scatter query may hold in the proxy while merging, in MiB.
    pub memory_limit_mb: u64,
    /// How long one scatter query may run before it is cancelled on every shard, in seconds.
    pub timeout_secs: u64,
}

/// Default of `gather.memory_limit_mb`.
pub const DEFAULT_GATHER_MEMORY_MB: u64 = 64;
/// Default of `gather.timeout_secs`.
pub const DEFAULT_GATHER_TIMEOUT_SECS: u64 = 300;

impl Default for RawGather {
    fn default() -> Self {
        RawGather {
            memory_limit_mb: DEFAULT_GATHER_MEMORY_MB,
            timeout_secs: DEFAULT_GATHER_TIMEOUT_SECS,
        }
    }
}

/// One table rule as written. Which fields are required depends on
/// `strategy`; that is checked when the map is validated.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// The shard-key column (a list here is a composite key, refused).
    #[serde(default)]
    pub key: Option<serde_norway::Value>,
    /// The key column's type (see [`crate::sharding::keys::KeyType::parse`]).
    #[serde(default, rename = "type")]
    pub key_type: Option<String>,
    /// `hash`, `reference`, `range`, `geo` or `directory`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// `range`: ordered `{ below, shard }` bounds, optionally ending with a catch-all `{ shard }`.
    #[serde(default)]
    pub ranges: Option<serde_norway::Value>,
    /// `geo`: region → key values.
    #[serde(default)]
    pub regions: Option<serde_norway::Value>,
    /// `geo`: region for unknown values (absent: refused).
    #[serde(default)]
    pub default_region: Option<serde_norway::Value>,
    /// `directory`: static key → shard entries.
    #[serde(default)]
    pub entries: Option<serde_norway::Value>,
    /// `directory`: what unknown keys do: `hash`, `reject` or a shard name.
    #[serde(default)]
    pub fallback: Option<serde_norway::Value>,
}

/// The `tables:` mapping, keeping file order and refusing duplicate names.
#[derive(Debug, Default)]
pub struct TableMap(pub Vec<(String, RawTable)>);

impl<'de> Deserialize<'de> for TableMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TableMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from table name to table rule")
            }
            fn visit_unit<E: de::Error>(self) -> Result<TableMap, E> {
                Ok(TableMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TableMap, A::Error> {
                let mut out: Vec<(String, RawTable)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format_args!(
                            "table `{name}` is listed twice"
                        )));
                    }
                    let rule = map.next_value::<RawTable>()?;
                    out.push((name, rule));
                }
                Ok(TableMap(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A shard map that cannot be used, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the shard map: {source}")]
    Read {
        /// The file.
        origin: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid shard map.
    ///
    /// Displayed as `origin:line: path: message; fix: fix`.
    #[error("{}", render_invalid(.origin, *.line, .path, .message, .fix))]
    Invalid {
        /// The file (or other origin) the text came from.
        origin: String,
        /// 1-based line of the offending entry, when it can be located.
        line: Option<usize>,
        /// Field path, e.g. `tables.events.strategy` or `shards[1].url`.
        path: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
}

fn render_invalid(
    origin: &str,
    line: Option<usize>,
    path: &str,
    message: &str,
    fix: &str,
) -> String {
    let mut s = String::from(origin);
    if let Some(line) = line {
        s.push_str(&format!(":{line}"));
    }
    s.push_str(": ");
    if !path.is_empty() {
        s.push_str(path);
        s.push_str(": ");
    }
    s.push_str(message);
    if !fix.is_empty() {
        s.push_str("; fix: ");
        s.push_str(fix);
    }
    s
}

impl ConfigError {
    /// The 1-based line the error points at, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// The field path the error is about (empty for file-level errors).
    pub fn path(&self) -> &str {
        match self {
            ConfigError::Read { .. } => "",
            ConfigError::Invalid { path, .. } => path,
        }
    }
}

/// One step of a field path: a mapping key or a sequence index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A 0-based sequence index.
    Index(usize),
}

/// Renders a path as `tables.events.strategy` / `shards[1].url`.
pub fn path_string(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Where a validation error is reported from: the text (to find line
/// numbers in) and its origin (file name).
#[derive(Clone, Copy, Debug)]
pub struct ErrorSite<'a> {
    /// The YAML text.
    pub text: &'a str,
    /// The file name or other origin used as the error prefix.
    pub origin: &'a str,
}

impl<'a> ErrorSite<'a> {
    /// Builds an [`ConfigError::Invalid`] for `path`, locating its line.
    pub fn error(
        &self,
        path: &[Seg<'_>],
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line: find_line(self.text, path),
            path: path_string(path),
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// Parses the YAML text into a [`RawConfig`], turning `serde` errors into
    /// [`ConfigError`]s with the line and field path they point at.
    pub fn parse(&self) -> Result<RawConfig, ConfigError> {
        if self
            .text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
        {
            return Err(ConfigError::Invalid {
                origin: self.origin.to_owned(),
                line: None,
                path: String::new(),
                message: "the shard map is empty".to_owned(),
                fix: "list at least `users` and `shards` (see config/example.yaml)".to_owned(),
            });
        }
        serde_norway::from_str::<RawConfig>(self.text).map_err(|e| self.serde_error(&e))
    }

    fn serde_error(&self, e: &serde_norway::Error) -> ConfigError {
        let line = e.location().map(|l| l.line());
        let mut text = e.to_string();
        // Drop the trailing " at line L column C" that serde_norway appends;
        // the line is reported in front instead.
        if let Some(pos) = text.rfind(" at line ") {
            let tail = &text[pos + " at line ".len()..];
            let is_mark = tail.split_once(" column ").is_some_and(|(l, c)| {
                l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit())
            });
            if is_mark {
                text.truncate(pos);
            }
        }
        // serde_norway prefixes messages with the path of the value: "tables.x: ...".
        let (mut path, message) = match text.split_once(": ") {
            Some((p, m)) if !p.is_empty() && !p.contains(' ') && !p.contains('`') => {
                (p.to_owned(), m.to_owned())
            }
            _ => (String::new(), text.clone()),
        };
        // Name the offending field itself: "tables.users" + "unknown field `kee`"
        // reports the path "tables.users.kee" (likewise for missing fields).
        if let Some(field) = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|m| m.split_once('`'))
            .map(|(f, _)| f)
        {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field);
        }
        let fix = if message.contains("unknown field") {
            "remove the field or correct its spelling"
        } else if message.contains("missing field") {
            "add the missing field"
        } else if message.contains("listed twice") {
            "keep one entry per table"
        } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
            "give a value of the expected type (see config/example.yaml)"
        } else {
            "fix the YAML syntax (indentation, colons, quotes) at that line"
        };
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            path,
            message,
            fix: fix.to_owned(),
        }
    }
}

/// A meaningful YAML line: its number, indentation and content.
#[derive(Debug)]
struct YLine<'t> {
    /// 1-based line number.
    no: usize,
    /// Column of the content (after any `- ` sequence markers).
    indent: usize,
    /// Column of the `-` when the line starts a sequence item.
    dash: Option<usize>,
    /// The content without indentation, markers and trailing comment.
    text: &'t str,
}

fn yaml_lines(text: &str) -> Vec<YLine<'_>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = strip_comment(raw);
        let trimmed = content.trim_start_matches(' ');
        if trimmed.trim().is_empty() || trimmed.starts_with("---") || trimmed.starts_with("...") {
            continue;
        }
        let mut indent = content.len() - trimmed.len();
        let mut rest = trimmed;
        let mut dash = None;
        if rest == "-" || rest.starts_with("- ") {
            dash = Some(indent);
            let after = rest[1..].trim_start_matches(' ');
            indent += rest.len() - after.len();
            rest = after;
        }
        out.push(YLine {
            no: i + 1,
            indent,
            dash,
            text: rest.trim_end(),
        });
    }
    out
}

/// Drops a `# comment` (a `#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    let (mut single, mut double) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') => {
                return &line[..i];
            }
            _ => {}
        }
    }
    line
}

/// Whether `text` starts with the mapping key `key` (plain or quoted).
fn starts_with_key(text: &str, key: &str) -> bool {
    let rest = if let Some(r) = text.strip_prefix(key) {
        r
    } else if let Some(r) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_prefix(key))
        .and_then(|t| t.strip_prefix('"'))
    {
        r
    } else if let Some(r) = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_prefix(key))
        .and_then(|t| t.strip_prefix('\''))
    {
        r
    } else {
        return false;
    };
    let rest = rest.trim_start_matches(' ');
    rest == ":" || rest.starts_with(": ") || rest.starts_with(":\t")
}

/// Best-effort line number of the entry at `path` in YAML `text`.
///
/// Walks block mappings and sequences by indentation, falls back to flow
/// style (`{ key: value }`) on a single line, and returns the deepest entry it
/// could find (so a missing field points at its parent). `None` when not even
/// the first step is found.
pub fn find_line(text: &str, path: &[Seg<'_>]) -> Option<usize> {
    let lines = yaml_lines(text);
    let mut lo = 0;
    let mut hi = lines.len();
    let mut found: Option<usize> = None; // index into lines
    for seg in path {
        match *seg {
            Seg::Key(key) => {
                let child_indent = match lines.get(lo..hi).and_then(|r| r.first()) {
                    Some(l) => l.indent,
                    None => return flow_fallback(&lines, found),
                };
                let hit = (lo..hi).find(|&i| {
                    let l = &lines[i];
                    l.indent == child_indent
                        && (i == lo || l.dash.is_none())
                        && starts_with_key(l.text, key)
                });
                match hit {
                    Some(i) => {
                        let own = lines[i].indent;
                        let end = (i + 1..hi)
                            .find(|&j| {
                                let l = &lines[j];
                                match l.dash {
                                    Some(d) => d < own,
                                    None => l.indent <= own,
                                }
                            })
                            .unwrap_or(hi);
                        found = Some(i);
                        lo = i + 1;
                        hi = end;
                    }
                    None => return flow_fallback(&lines, found),
                }
            }
            Seg::Index(n) => {
                let dash_col = (lo..hi).filter_map(|i| lines[i].dash).min();
                let Some(dash_col) = dash_col else {
                    return found.map(|i| lines[i].no);
                };
                let items: Vec<usize> = (lo..hi)
                    .filter(|&i| lines[i].dash == Some(dash_col))
                    .collect();
                let Some(&start) = items.get(n) else {
                    return found.map(|i| lines[i].no);
                };
                let end = (start + 1..hi)
                    .find(|&j| {
                        let l = &lines[j];
                        match l.dash {
                            Some(d) => d <= dash_col,
                            None => l.indent <= dash_col,
                        }
                    })
                    .unwrap_or(hi);
                found = Some(start);
                lo = start;
                hi = end;
            }
        }
    }
    found.map(|i| lines[i].no)
}

/// `key` was not found as a block key under `parent`: it is either inside a
/// flow mapping on the parent's line (`- { name: s0, url: … }`,
/// `pool: { size: 20 }`) or missing; both ways the parent's line is the answer.
fn flow_fallback(lines: &[YLine<'_>], parent: Option<usize>) -> Option<usize> {
    parent.map(|i| lines[i].no)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listen: 127.0.0.1:6432   # where clients connect
users:
  - { name: app, password: app-secret }
shards:
  - { name: s0, url: \"postgres://postgres@127.0.0.1:5433/app\", region: eu }
  - name: s1
    url: postgres://postgres@127.0.0.1:5434/app
    weight: 2
shards_extra: 1
pool: { size: 20, mode: transaction }
tables:
  users:       { key: id, type: bigint, strategy: hash }

  # a comment
  events:
    key: created_at
    strategy: range
  \"sales.users\": { strategy: reference }
seq_at_key_indent:
- a: 1
- b: 2
";

    fn line(path: &[Seg<'_>]) -> Option<usize> {
        find_line(TEXT, path)
    }

    #[test]
    fn finds_lines_for_paths() {
        use Seg::*;
        assert_eq!(line(&[Key("listen")]), Some(1));
        assert_eq!(line(&[Key("users"), Index(0), Key("password")]), Some(3));
        assert_eq!(line(&[Key("shards")]), Some(4));
        assert_eq!(line(&[Key("shards"), Index(0), Key("url")]), Some(5));
        assert_eq!(line(&[Key("shards"), Index(1)]), Some(6));
        assert_eq!(line(&[Key("shards"), Index(1), Key("name")]), Some(6));
        assert_eq!(line(&[Key("shards"), Index(1), Key("weight")]), Some(8));
        assert_eq!(line(&[Key("shards"), Index(1), Key("region")]), Some(6));
        assert_eq!(line(&[Key("shards"), Index(7)]), Some(4));
        assert_eq!(line(&[Key("pool"), Key("mode")]), Some(10));
        assert_eq!(line(&[Key("tables"), Key("users"), Key("type")]), Some(12));
        assert_eq!(line(&[Key("tables"), Key("events")]), Some(15));
        assert_eq!(
            line(&[Key("tables"), Key("events"), Key("strategy")]),
            Some(17)
        );
        assert_eq!(line(&[Key("tables"), Key("events"), Key("type")]), Some(15));
        assert_eq!(
            line(&[Key("tables"), Key("sales.users"), Key("strategy")]),
            Some(18)
        );
        assert_eq!(
            line(&[Key("seq_at_key_indent"), Index(1), Key("b")]),
            Some(21)
        );
        assert_eq!(line(&[Key("hash"), Key("vnodes")]), None);
        assert_eq!(line(&[Key("tables"), Key("nope")]), Some(11));
    }

    #[test]
    fn comments_are_stripped_outside_quotes() {
        assert_eq!(strip_comment("a: 1 # c"), "a: 1 ");
        assert_eq!(strip_comment("a: \"x # y\" # c"), "a: \"x # y\" ");
        assert_eq!(strip_comment("a: b#c"), "a: b#c");
        assert_eq!(strip_comment("# all"), "");
    }

    #[test]
    fn config_error_display() {
        let e = ConfigError::Invalid {
            origin: "config/x.yaml".into(),
            line: Some(14),
            path: "tables.events.strategy".into(),
            message: "strategy 'range' is not supported by this build yet".into(),
            fix: "use hash or reference for now".into(),
        };
        assert_eq!(
            e.to_string(),
            "config/x.yaml:14: tables.events.strategy: strategy 'range' is not supported by this build yet; fix: use hash or reference for now"
        );
        assert_eq!(e.line(), Some(14));
        assert_eq!(e.path(), "tables.events.strategy");
    }

    #[test]
    fn serde_errors_carry_line_and_path() {
        let site = ErrorSite {
            text: "users:\n  - { name: a, password: b }\nshards: []\ntables:\n  t:\n    strategy: hash\n    colour: red\n",
            origin: "m.yaml",
        };
        let e = site.parse().unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("m.yaml:7: tables.t.colour: unknown field `colour`"),
            "{s}"
        );
        assert!(s.contains("fix: remove the field"), "{s}");

        let site = ErrorSite {
            text: "users: [\n",
            origin: "m.yaml",
        };
        let s = site.parse().unwrap_err().to_string();
        assert!(s.starts_with("m.yaml:2: "), "{s}");

        let site = ErrorSite {
            text: "# nothing\n",
            origin: "m.yaml",
        };
        assert!(site.parse().unwrap_err().to_string().contains("empty"));

        let site = ErrorSite {
            text: "tables:\n  t: { strategy: reference }\n  t: { strategy: reference }\n",
            origin: "m.yaml",
        };
        let s = site.parse().unwrap_err().to_string();
        assert!(s.contains("table `t` is listed twice"), "{s}");
    }
}
