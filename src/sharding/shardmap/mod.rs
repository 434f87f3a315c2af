//! The validated, immutable routing map built from a shard map file.
//!
//! [`ShardMap::from_yaml_str`] parses the YAML ([`crate::config`]), checks
//! every rule, and builds the hash ring once. The result answers the router's
//! questions — which rule a table follows ([`ShardMap::table`]) and which
//! shard a key lives on ([`ShardMap::hash_shard`]) — without allocating. It is
//! never mutated: a reload builds a new map and swaps it in whole.

pub mod transition;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

pub use crate::config::ConfigError;
use crate::config::{ErrorSite, RawConfig, RawTable, Seg};
use crate::sharding::directory::Directory;
use crate::sharding::keys::{key_from_text, KeyError, KeyType, KeyValue};
use crate::sharding::ring::HashRing;
use crate::sharding::strategy::{
    DirectoryRule, Fallback, GeoRule, Located, RangeRule, Region, Sharded, Strategy,
};
use std::sync::Arc;

/// Most ring tokens a map may ask for (`hash.vnodes × total weight`).
pub const MAX_RING_TOKENS: u64 = 1 << 22;

use crate::sharding::shard::ShardInfo;

/// How clients authenticate to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the default).
    ScramSha256,
    /// MD5 password.
    Md5,
}

impl AuthMethod {
    /// The name as written in the map (`scram-sha-256`, `md5`).
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }
}

/// A user allowed to connect to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// User name.
    pub name: String,
    /// Password (plain text, as configured).
    pub password: String,
    /// May use the admin console (`psql -d shardwire`).
    pub admin: bool,
}

/// Backend pool settings, per shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections per shard.
    pub size: usize,
    /// Session pooling (a client keeps its backend connections) instead of
    /// transaction pooling.
    pub session_mode: bool,
    /// How long a query waits for a free connection.
    pub checkout_timeout: Duration,
    /// How long connecting to a shard may take.
    pub connect_timeout: Duration,
    /// The shards' `statement_timeout` default (`limits.query_timeout_ms`; `None`: none).
    pub statement_timeout: Option<Duration>,
}

/// Most shards one map may hold.
pub const MAX_SHARDS: usize = 128;

/// Limits of one scatter-gather query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherSettings {
    /// Most bytes of rows the proxy holds for one query while merging.
    pub memory_limit: usize,
    /// How long one scatter query may run.
    pub timeout: Duration,
}

/// How a table is placed on the shards.
#[derive(Clone, Debug)]
pub enum TableRule {
    /// Rows are placed by their shard key (hash, range, geo or directory).
    Sharded(Arc<Sharded>),
    /// A full copy on every shard: reads go to one, writes to all.
    Reference,
}

impl PartialEq for TableRule {
    /// Same kind, key column, key type and strategy (bounds and regions are not compared).
    fn eq(&self, other: &TableRule) -> bool {
        match (self, other) {
            (TableRule::Reference, TableRule::Reference) => true,
            (TableRule::Sharded(a), TableRule::Sharded(b)) => {
                a.key == b.key && a.key_type == b.key_type && a.strategy.name() == b.strategy.name()
            }
            _ => false,
        }
    }
}

impl TableRule {
    /// A hash rule, for comparisons in tests.
    #[cfg(test)]
    fn hash_for_tests(key: &str, key_type: KeyType) -> TableRule {
        TableRule::Sharded(Arc::new(Sharded {
            name: String::new(),
            key: key.into(),
            key_type,
            strategy: Strategy::Hash,
            group: 0,
            unsettled: false,
        }))
    }
}

/// The validated shard map.
#[derive(Clone, Debug)]
pub struct ShardMap {
    /// Address clients connect to.
    pub listen: String,
    /// Address of the HTTP admin endpoint (`/metrics`, `/health`).
    pub admin: Option<String>,
    /// Who may connect.
    pub users: Vec<UserEntry>,
    /// Client authentication method.
    pub auth: AuthMethod,
    /// Shards in map order; a shard index is an index into this vector.
    pub shards: Vec<ShardInfo>,
    /// Backend pool settings.
    pub pool: PoolSettings,
    /// Ring tokens per shard per unit of weight.
    pub vnodes: u32,
    /// Index of the shard unlisted tables live on.
    pub default_shard: usize,
    /// Largest client message accepted, in bytes.
    pub max_message_size: usize,
    /// Most concurrent client connections.
    pub max_client_connections: usize,
    /// Bytes large client messages may hold at once across the proxy (`limits.max_buffered_mb`,
    /// never below the largest message).
    pub max_buffered: usize,
    /// A client idle inside a transaction longer than this is disconnected (25P03).
    pub idle_in_transaction_timeout: Option<Duration>,
    /// A client idle outside a transaction longer than this is disconnected (57P05).
    pub client_idle_timeout: Option<Duration>,
    /// Scatter-gather limits.
    pub gather: GatherSettings,
    /// TLS for client connections (the `tls:` section), if configured.
    pub tls: Option<crate::wire::tls::ServerTls>,
    /// Database names clients may connect to: `database:`, else the shards' database names.
    pub databases: Vec<String>,
    /// Table rules by schema ("" = unqualified) then relation name.
    tables: HashMap<String, HashMap<String, TableRule>>,
    /// Table names and rules in file order (for summaries).
    table_order: Vec<(String, TableRule)>,
    /// Whether `default_shard` was set explicitly.
    default_shard_explicit: bool,
    /// The key directory, when a table uses strategy directory.
    pub directory: Option<Arc<Directory>>,
    /// The hash ring.
    ring: HashRing,
    /// Shard names in map order.
    shard_names: Vec<String>,
    /// A rebalance in progress: keys of units not yet switched still live where the old
    /// map put them (see [`crate::sharding::shardmap::transition`]).
    pub transition: Option<Arc<crate::sharding::shardmap::transition::Transition>>,
}

/// Why [`ShardMap::explain_route`] could not explain a route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteExplainError {
    /// The key text does not fit the table's key type.
    #[error("{table}.{column}: {source}")]
    Key {
        /// Table name as given.
        table: String,
        /// Key column.
        column: String,
        /// Why the key was refused.
        #[source]
        source: KeyError,
    },
    /// The table name is not `table` or `schema.table`.
    #[error("invalid table name \"{0}\": expected table or schema.table")]
    TableName(String),
}

impl ShardMap {
    /// Reads and validates the shard map file at `path`.
    pub fn load(path: &Path) -> Result<ShardMap, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        ShardMap::from_yaml_str(&text, &origin)
    }

    /// Parses and validates a shard map; `origin` (usually the file name)
    /// prefixes every error.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<ShardMap, ConfigError> {
        let site = ErrorSite { text, origin };
        let raw = site.parse()?;
        build(&site, raw, BuildOpts::default())
    }

    /// Like [`ShardMap::from_yaml_str`], but directory tables use `directory` (a proxy's
    /// live directory) when given.
    pub fn from_yaml_with_directory(
        text: &str,
        origin: &str,
        directory: Option<Arc<Directory>>,
    ) -> Result<ShardMap, ConfigError> {
        let site = ErrorSite { text, origin };
        let raw = site.parse()?;
        let opts = BuildOpts {
            directory,
            ..BuildOpts::default()
        };
        build(&site, raw, opts)
    }

    /// The two sides of a rebalance from `old_text` to `new_text`, built over one merged
    /// shard list (the old map's shards in order, then the new map's added ones) so that a
    /// shard index means the same shard in both. A shard missing from one side is *parked*
    /// there: listed, weight 0, no region, owning no keys. Both maps are unsettled (see
    /// [`Sharded::unsettled`]) and share `directory` when given (a proxy's live directory).
    pub fn transition_pair(
        old_text: &str,
        new_text: &str,
        directory: Option<Arc<Directory>>,
    ) -> Result<(ShardMap, ShardMap), ConfigError> {
        let old_site = ErrorSite {
            text: old_text,
            origin: "rebalance --from map",
        };
        let new_site = ErrorSite {
            text: new_text,
            origin: "rebalance --to map",
        };
        let mut old_raw = old_site.parse()?;
        let mut new_raw = new_site.parse()?;
        let park = |s: &crate::config::RawShard| crate::config::RawShard {
            name: s.name.clone(),
            url: s.url.clone(),
            region: None,
            weight: 0,
        };
        let mut merged_old = Vec::new();
        let mut merged_new = Vec::new();
        for s in &old_raw.shards {
            merged_old.push(s.clone());
            match new_raw.shards.iter().find(|n| n.name == s.name) {
                Some(n) => merged_new.push(n.clone()),
                None => merged_new.push(park(s)),
            }
        }
        for n in &new_raw.shards {
            if !old_raw.shards.iter().any(|s| s.name == n.name) {
                merged_old.push(park(n));
                merged_new.push(n.clone());
            }
        }
        if new_raw.default_shard.is_none() {
            // The default shard (unlisted tables, the 2PC log) stays where it was.
            new_raw.default_shard = old_raw
                .default_shard
                .clone()
                .or_else(|| old_raw.shards.first().map(|s| s.name.clone()));
        }
        old_raw.shards = merged_old;
        new_raw.shards = merged_new;
        let opts = |d: Option<Arc<Directory>>| BuildOpts {
            allow_parked: true,
            directory: d,
            unsettled: true,
        };
        let old = build(&old_site, old_raw, opts(directory.clone()))?;
        let new = build(&new_site, new_raw, opts(directory))?;
        Ok((old, new))
    }

    /// The rule for a table referenced in SQL as `schema.rel` (`schema` empty
    /// when unqualified; both already case-folded by the parser). A rule written
    /// as `schema.rel` in the map is tried first; an unqualified rule (or one
    /// written `public.rel`) matches when `schema` is empty or `public`.
    #[inline]
    pub fn table(&self, schema: &str, rel: &str) -> Option<&TableRule> {
        if !schema.is_empty() && schema != "public" {
            return self.tables.get(schema).and_then(|m| m.get(rel));
        }
        self.tables.get("").and_then(|m| m.get(rel))
    }

    /// The shard index owning a hash key.
    #[inline]
    pub fn hash_shard(&self, key: &KeyValue) -> usize {
        self.ring.locate(key.hash64()) as usize
    }

    /// Where `key` of sharded table `t` lives; `record` lets a directory table record a
    /// fallback placement (writes).
    #[inline]
    pub fn locate(&self, t: &Sharded, key: &KeyValue, record: bool) -> Located {
        let here = t.locate(&self.ring, key, record);
        match (&self.transition, here) {
            (Some(tr), Located::Shard(new)) => tr.resolve(t, key, new),
            (_, here) => here,
        }
    }

    /// Every sharded table's rule, in file order.
    pub fn sharded_tables(&self) -> impl Iterator<Item = &Arc<Sharded>> {
        self.table_order.iter().filter_map(|(_, r)| match r {
            TableRule::Sharded(t) => Some(t),
            TableRule::Reference => None,
        })
    }

    /// Shard names in map order.
    pub fn shard_names(&self) -> &[String] {
        &self.shard_names
    }

    /// Shard index by name.
    pub fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    /// The hash ring.
    pub fn ring(&self) -> &HashRing {
        &self.ring
    }

    /// Table names (as written, `public.` dropped) and rules in file order.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &TableRule)> {
        self.table_order.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// Explains where `key_text` of `table` routes, for `shardwire route`:
    ///
    /// - `users.id = 42 (bigint) -> hash 0x2e4fe982b68910ac -> shard s1`
    /// - `countries is a reference table: reads go to one shard, writes to all`
    /// - `orders2 is not in tables: unsharded, lives on shard s0 (default_shard)`
    ///
    /// `table` is `rel` or `schema.rel`; it is looked up as written, then
    /// lower-cased (as SQL folds unquoted names).
    pub fn explain_route(&self, table: &str, key_text: &str) -> Result<String, RouteExplainError> {
        self.route_of(table, key_text).map(|(_, reason)| reason)
    }

    /// The shard `key_text` of `table` lives on (`None` for a reference table, or a key no
    /// shard takes) and the explanation [`ShardMap::explain_route`] gives.
    pub fn route_of(
        &self,
        table: &str,
        key_text: &str,
    ) -> Result<(Option<usize>, String), RouteExplainError> {
        let (schema, rel) = match table.split_once('.') {
            Some((s, r)) if !s.is_empty() && !r.is_empty() && !r.contains('.') => (s, r),
            None if !table.is_empty() => ("", table),
            _ => return Err(RouteExplainError::TableName(table.to_owned())),
        };
        let rule = self
            .table(schema, rel)
            .or_else(|| self.table(&schema.to_ascii_lowercase(), &rel.to_ascii_lowercase()));
        match rule {
            Some(TableRule::Sharded(t)) => {
                let value = key_from_text(t.key_type, key_text)
                    .or_else(|e| utc_default(t.key_type, key_text, e))
                    .map_err(|source| RouteExplainError::Key {
                        table: table.to_owned(),
                        column: t.key.clone(),
                        source,
                    })?;
                let shard = match self.locate(t, &value, false) {
                    Located::Shard(s) => Some(s),
                    _ => None,
                };
                Ok((
                    shard,
                    t.explain(table, &self.ring, &value, &self.shard_names),
                ))
            }
            Some(TableRule::Reference) => Ok((
                None,
                format!("{table} is a reference table: reads go to one shard, writes to all"),
            )),
            None => Ok((
                Some(self.default_shard),
                format!(
                    "{table} is not in tables: unsharded, lives on shard {} ({})",
                    self.shards[self.default_shard].name,
                    if self.default_shard_explicit {
                        "default_shard"
                    } else {
                        "the first shard; set default_shard to change"
                    }
                ),
            )),
        }
    }

    /// A multi-line summary for `shardwire check`: shards (address, weight,
    /// region, share of the ring), pool, hash settings, every table rule, and
    /// the default shard.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "listen {} (auth {}, {} user{})",
            self.listen,
            self.auth.name(),
            self.users.len(),
            if self.users.len() == 1 { "" } else { "s" }
        );
        if let Some(admin) = &self.admin {
            let _ = writeln!(s, "admin {admin} (HTTP: /metrics, /health)");
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "tls for clients: cert {}, key {}{}",
                t.cert.display(),
                t.key.display(),
                if t.require { " (required)" } else { "" }
            );
        }
        let shares = self.ring.shares();
        let name_w = self.shards.iter().map(|x| x.name.len()).max().unwrap_or(0);
        let addrs: Vec<String> = self
            .shards
            .iter()
            .map(|x| {
                let mut a = format!("{}@{}:{}/{}", x.user, x.host, x.port, x.dbname);
                if x.tls.mode != crate::wire::tls::SslMode::Disable {
                    a.push_str(" sslmode=");
                    a.push_str(x.tls.mode.name());
                }
                a
            })
            .collect();
        let addr_w = addrs.iter().map(String::len).max().unwrap_or(0);
        let _ = writeln!(s, "shards ({}):", self.shards.len());
        for (i, x) in self.shards.iter().enumerate() {
            let _ = write!(
                s,
                "  {:name_w$}  {:addr_w$}  weight {}  ring {:5.1}%",
                x.name,
                addrs[i],
                x.weight,
                shares.get(i).copied().unwrap_or(0.0) * 100.0
            );
            if let Some(r) = &x.region {
                let _ = write!(s, "  region {r}");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "clients connect to database: {}",
            self.databases.join(", ")
        );
        let _ = writeln!(
            s,
            "pool: {} connections per shard, {} pooling, checkout timeout {} ms, connect timeout {} ms",
            self.pool.size,
            if self.pool.session_mode { "session" } else { "transaction" },
            self.pool.checkout_timeout.as_millis(),
            self.pool.connect_timeout.as_millis()
        );
        let _ = writeln!(
            s,
            "hash: xxh3-64 ring, {} vnodes per unit of weight ({} tokens)",
            self.vnodes,
            self.ring.token_count()
        );
        let _ = writeln!(
            s,
            "limits: max message {} bytes, max {} client connections, {} MiB for large messages at once",
            self.max_message_size,
            self.max_client_connections,
            self.max_buffered >> 20
        );
        if let Some(d) = &self.directory {
            let _ = writeln!(
                s,
                "directory: table {} on shard {} ({} static entries)",
                d.table,
                self.shards[d.shard].name,
                d.statics.len()
            );
        }
        let _ = writeln!(s, "tables ({}):", self.table_order.len());
        let tw = self
            .table_order
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        for (name, rule) in &self.table_order {
            match rule {
                TableRule::Sharded(t) => {
                    let _ = writeln!(
                        s,
                        "  {name:tw$}  {} on {} ({}){}",
                        t.strategy.name(),
                        t.key,
                        t.key_type,
                        strategy_detail(t, &self.shard_names)
                    );
                }
                TableRule::Reference => {
                    let _ = writeln!(s, "  {name:tw$}  reference (full copy on every shard)");
                }
            }
        }
        let _ = writeln!(
            s,
            "default shard: {} (tables not listed above live there)",
            self.shards[self.default_shard].name
        );
        s
    }
}

/// Validates a parsed map and builds the runtime form.
/// How [`build`] treats a map that is one side of a rebalance.
#[derive(Default)]
struct BuildOpts {
    /// Shards of weight 0 are allowed ("parked": listed, owning no ring tokens).
    allow_parked: bool,
    /// Use this directory instead of a new one (a proxy's live directory).
    directory: Option<Arc<Directory>>,
    /// Placement may change while the map is in use (see [`Sharded::unsettled`]).
    unsettled: bool,
}

fn build(site: &ErrorSite<'_>, raw: RawConfig, opts: BuildOpts) -> Result<ShardMap, ConfigError> {
    use Seg::{Index, Key};

    check_addr(site, &[Key("listen")], &raw.listen)?;
    if let Some(admin) = &raw.admin {
        check_addr(site, &[Key("admin")], admin)?;
    }
    let tls = match &raw.tls {
        None => None,
        Some(t) => Some(
            crate::wire::tls::ServerTls::load(Path::new(&t.cert), Path::new(&t.key), t.require).map_err(
                |e| {
                    site.error(
                        &[Key("tls")],
                        e.to_string(),
                        "point tls.cert and tls.key at readable PEM files (a certificate chain and its private key)",
                    )
                },
            )?,
        ),
    };

    // Users.
    if raw.users.is_empty() {
        return Err(site.error(
            &[Key("users")],
            "at least one user is required",
            "add `users: [{ name: app, password: app-secret }]`",
        ));
    }
    let mut users = Vec::with_capacity(raw.users.len());
    for (i, u) in raw.users.iter().enumerate() {
        if u.name.is_empty() {
            return Err(site.error(
                &[Key("users"), Index(i), Key("name")],
                "user name is empty",
                "give the user a name",
            ));
        }
        if raw.users[..i].iter().any(|o| o.name == u.name) {
            return Err(site.error(
                &[Key("users"), Index(i), Key("name")],
                format!("user `{}` is listed twice", u.name),
                "keep one entry per user",
            ));
        }
        if u.password.is_empty() {
            return Err(site.error(
                &[Key("users"), Index(i), Key("password")],
                "password is empty",
                "set a password",
            ));
        }
        users.push(UserEntry {
            name: u.name.clone(),
            password: u.password.clone(),
            admin: u.admin,
        });
    }
    let auth = match raw.auth.as_deref() {
        None | Some("scram-sha-256") => AuthMethod::ScramSha256,
        Some("md5") => AuthMethod::Md5,
        Some(other) => {
            return Err(site.error(
                &[Key("auth")],
                format!("unknown auth method `{other}`"),
                "use scram-sha-256 (the default) or md5",
            ))
        }
    };

    // Shards.
    if raw.shards.is_empty() {
        return Err(site.error(
            &[Key("shards")],
            "at least one shard is required",
            "add `shards: [{ name: s0, url: \"postgres://user@host:5432/db\" }]`",
        ));
    }
    if raw.shards.len() > MAX_SHARDS {
        return Err(site.error(
            &[Key("shards")],
            format!(
                "{} shards are listed; at most {MAX_SHARDS} are supported",
                raw.shards.len()
            ),
            "merge shards, or run several proxies over disjoint table sets",
        ));
    }
    let mut shards: Vec<ShardInfo> = Vec::with_capacity(raw.shards.len());
    let mut total_weight: u64 = 0;
    for (i, s) in raw.shards.iter().enumerate() {
        let at = |field| [Key("shards"), Index(i), Key(field)];
        if s.name.is_empty()
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(site.error(
                &at("name"),
                format!("invalid shard name `{}`", s.name),
                "use only letters, digits, `_` and `-`",
            ));
        }
        if shards.iter().any(|o| o.name == s.name) {
            return Err(site.error(
                &at("name"),
                format!("shard name `{}` is used twice", s.name),
                "give every shard a unique name",
            ));
        }
        if s.weight == 0 && !opts.allow_parked {
            return Err(site.error(
                &at("weight"),
                "weight must be at least 1",
                "set weight to 1 or more (or remove it; the default is 1)",
            ));
        }
        if let Some(r) = &s.region {
            if r.is_empty() {
                return Err(site.error(
                    &at("region"),
                    "region is empty",
                    "name the region or remove the field",
                ));
            }
        }
        total_weight += u64::from(s.weight);
        let mut info =
            parse_url(&s.url).map_err(|(message, fix)| site.error(&at("url"), message, fix))?;
        info.name = s.name.clone();
        info.region = s.region.clone();
        info.weight = s.weight;
        shards.push(info);
    }

    // Pool, hash, limits.
    let pool = &raw.pool;
    if !(1..=10_000).contains(&pool.size) {
        return Err(site.error(
            &[Key("pool"), Key("size")],
            format!("pool size {} is out of range", pool.size),
            "use 1 to 10000 connections per shard",
        ));
    }
    let session_mode = match pool.mode.as_str() {
        "transaction" => false,
        "session" => true,
        other => {
            return Err(site.error(
                &[Key("pool"), Key("mode")],
                format!("unknown pool mode `{other}`"),
                "use transaction (the default) or session",
            ))
        }
    };
    for (field, v) in [
        ("checkout_timeout_ms", pool.checkout_timeout_ms),
        ("connect_timeout_ms", pool.connect_timeout_ms),
    ] {
        if v == 0 {
            return Err(site.error(
                &[Key("pool"), Key(field)],
                "timeout must be at least 1 ms",
                "give a timeout in milliseconds (or remove it for the default)",
            ));
        }
    }
    let vnodes = raw.hash.vnodes;
    if !(1..=65_536).contains(&vnodes) {
        return Err(site.error(
            &[Key("hash"), Key("vnodes")],
            format!("vnodes {vnodes} is out of range"),
            "use 1 to 65536 (256 is a good default)",
        ));
    }
    let tokens = u64::from(vnodes) * total_weight;
    if tokens > MAX_RING_TOKENS {
        return Err(site.error(
            &[Key("hash"), Key("vnodes")],
            format!("the ring would have {tokens} tokens (vnodes x total weight); the limit is {MAX_RING_TOKENS}"),
            "lower hash.vnodes or the shard weights",
        ));
    }
    let limits = &raw.limits;
    let g = &raw.gather;
    if g.memory_limit_mb == 0 || g.memory_limit_mb > 1 << 20 {
        return Err(site.error(
            &[Key("gather"), Key("memory_limit_mb")],
            format!("memory_limit_mb {} is out of range", g.memory_limit_mb),
            "use 1 to 1048576 MiB (default 64)",
        ));
    }
    if g.timeout_secs == 0 || g.timeout_secs > 86_400 {
        return Err(site.error(
            &[Key("gather"), Key("timeout_secs")],
            format!("timeout_secs {} is out of range", g.timeout_secs),
            "use 1 to 86400 seconds (default 300)",
        ));
    }
    if limits.max_message_size < 1024 || limits.max_message_size > (1 << 30) {
        return Err(site.error(
            &[Key("limits"), Key("max_message_size")],
            format!(
                "max_message_size {} is out of range",
                limits.max_message_size
            ),
            "use 1024 bytes to 1 GiB (default 64 MiB)",
        ));
    }
    if limits.max_client_connections == 0 || limits.max_client_connections > 10_000_000 {
        return Err(site.error(
            &[Key("limits"), Key("max_client_connections")],
            format!(
                "max_client_connections {} is out of range",
                limits.max_client_connections
            ),
            "use 1 to 10000000 (default 10000)",
        ));
    }

    let shard_named = |name: &str, path: &[Seg<'_>]| {
        shards.iter().position(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = shards.iter().map(|s| s.name.as_str()).collect();
            site.error(
                path,
                format!("no shard is named `{name}`"),
                format!("use one of: {}", names.join(", ")),
            )
        })
    };
    let (default_shard, default_shard_explicit) = match &raw.default_shard {
        Some(name) => (shard_named(name, &[Key("default_shard")])?, true),
        None => (0, false),
    };
    let ring_input: Vec<(&str, u32)> = shards.iter().map(|s| (s.name.as_str(), s.weight)).collect();
    let ring = HashRing::new(&ring_input, vnodes);
    let shard_names: Vec<String> = shards.iter().map(|s| s.name.clone()).collect();
    let uses_directory = raw
        .tables
        .0
        .iter()
        .any(|(_, t)| t.strategy.as_deref() == Some("directory"));
    let directory = match (&raw.directory, uses_directory) {
        (Some(d), _) => {
            let shard = shard_named(&d.shard, &[Key("directory"), Key("shard")])?;
            if d.table.is_empty() {
                return Err(site.error(
                    &[Key("directory"), Key("table")],
                    "directory table name is empty",
                    "name the table, e.g. shardwire_directory",
                ));
            }
            Some((shard, d.table.clone()))
        }
        (None, true) => Some((0, crate::sharding::directory::DEFAULT_TABLE.to_owned())),
        (None, false) => None,
    };
    let directory = match directory {
        Some((shard, table)) => {
            let statics = directory_statics(site, &raw, &shard_named)?;
            match opts.directory {
                Some(d) => Some(d),
                None => Some(Arc::new(Directory::new(shard, table, statics))),
            }
        }
        None => None,
    };
    let ctx = RuleContext {
        site,
        shards: &shards,
        vnodes,
        directory: directory.as_ref(),
        groups: std::cell::RefCell::new(HashMap::new()),
        unsettled: opts.unsettled,
    };

    // Tables.
    let mut tables: HashMap<String, HashMap<String, TableRule>> = HashMap::new();
    let mut table_order = Vec::with_capacity(raw.tables.0.len());
    for (name, t) in &raw.tables.0 {
        let path = [Key("tables"), Key(name.as_str())];
        let (schema, rel) = split_table_name(name).ok_or_else(|| {
            site.error(
                &path,
                format!("invalid table name `{name}`"),
                "write table or schema.table",
            )
        })?;
        let rule = table_rule(&ctx, name, t)?;
        let by_rel = tables.entry(schema.to_owned()).or_default();
        if by_rel.contains_key(rel) {
            return Err(site.error(
                &path,
                format!(
                    "table `{name}` is listed twice (public.{rel} and {rel} are the same table)"
                ),
                "keep one entry per table",
            ));
        }
        by_rel.insert(rel.to_owned(), rule.clone());
        let shown = if schema.is_empty() {
            rel.to_owned()
        } else {
            format!("{schema}.{rel}")
        };
        table_order.push((shown, rule));
    }

    let databases = match &raw.database {
        Some(d) => vec![d.clone()],
        None => {
            let mut names: Vec<String> = shards.iter().map(|s| s.dbname.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    Ok(ShardMap {
        databases,
        listen: raw.listen,
        admin: raw.admin,
        users,
        auth,
        pool: PoolSettings {
            size: pool.size as usize,
            session_mode,
            checkout_timeout: Duration::from_millis(pool.checkout_timeout_ms),
            connect_timeout: Duration::from_millis(pool.connect_timeout_ms),
            statement_timeout: nonzero_ms(limits.query_timeout_ms),
        },
        idle_in_transaction_timeout: nonzero_ms(limits.idle_in_transaction_timeout_ms),
        client_idle_timeout: nonzero_ms(limits.client_idle_timeout_ms),
        shards,
        vnodes,
        default_shard,
        max_message_size: limits.max_message_size as usize,
        max_client_connections: limits.max_client_connections as usize,
        max_buffered: ((limits.max_buffered_mb as usize) << 20)
            .max(limits.max_message_size as usize),
        gather: GatherSettings {
            memory_limit: (g.memory_limit_mb as usize) << 20,
            timeout: Duration::from_secs(g.timeout_secs),
        },
        tls,
        tables,
        table_order,
        default_shard_explicit,
        directory,
        ring,
        shard_names,
        transition: None,
    })
}

/// A timeout in milliseconds, 0 meaning none.
fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// `table` → ("", table); `schema.table` → (schema, table); `public.table` →
/// ("", table). `None` for empty parts or more than one dot.
fn split_table_name(name: &str) -> Option<(&str, &str)> {
    let (schema, rel) = match name.split_once('.') {
        Some((s, r)) => (s, r),
        None => ("", name),
    };
    if rel.is_empty() || rel.contains('.') || (name.contains('.') && schema.is_empty()) {
        return None;
    }
    Some(if schema == "public" {
        ("", rel)
    } else {
        (schema, rel)
    })
}

const STRATEGIES: &str = "hash, range, geo, directory, reference";

/// What validating a table rule needs from the rest of the map.
struct RuleContext<'a, 'b> {
    site: &'a ErrorSite<'b>,
    shards: &'a [ShardInfo],
    vnodes: u32,
    directory: Option<&'a Arc<Directory>>,
    /// Co-location signature -> group id.
    groups: std::cell::RefCell<HashMap<String, u32>>,
    /// Rules are built unsettled (a rebalance is running).
    unsettled: bool,
}

impl RuleContext<'_, '_> {
    fn shard(&self, name: &str, path: &[Seg<'_>]) -> Result<usize, ConfigError> {
        self.shards
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.shards.iter().map(|s| s.name.as_str()).collect();
                self.site.error(
                    path,
                    format!("no shard is named `{name}`"),
                    format!("use one of: {}", names.join(", ")),
                )
            })
    }

    /// The group id for a placement signature (equal signatures co-locate).
    fn group(&self, signature: String) -> u32 {
        let mut g = self.groups.borrow_mut();
        let next = g.len() as u32;
        *g.entry(signature).or_insert(next)
    }
}

/// A YAML scalar as text (strings as is, numbers and booleans printed).
fn scalar_text(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses a key written in the map. A timestamptz without a UTC offset is taken as UTC
/// (the map has no session time zone).
fn map_key(ty: KeyType, text: &str) -> Result<KeyValue, KeyError> {
    key_from_text(ty, text).or_else(|e| utc_default(ty, text, e))
}

/// Retries a timestamptz that lacked a UTC offset as UTC; other errors are returned.
pub(crate) fn utc_default(ty: KeyType, text: &str, e: KeyError) -> Result<KeyValue, KeyError> {
    if !matches!(e, KeyError::NoUtcOffset { .. }) {
        return Err(e);
    }
    let t = text.trim();
    let utc = if t.contains([' ', 'T']) {
        format!("{t}+00")
    } else {
        format!("{t} 00:00:00+00")
    };
    key_from_text(ty, &utc).map_err(|_| e)
}

/// Looks a shard up by name, reporting a missing one at a path.
type ShardNamed<'a> = dyn Fn(&str, &[Seg<'_>]) -> Result<usize, ConfigError> + 'a;

/// The static directory entries of every directory table (key text -> shard); an entry
/// given twice with different shards is an error.
fn directory_statics(
    site: &ErrorSite<'_>,
    raw: &RawConfig,
    shard_named: &ShardNamed<'_>,
) -> Result<Vec<(String, usize)>, ConfigError> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (name, t) in &raw.tables.0 {
        if t.strategy.as_deref() != Some("directory") {
            continue;
        }
        let Some(entries) = &t.entries else { continue };
        let path = [Seg::Key("tables"), Seg::Key(name), Seg::Key("entries")];
        let serde_norway::Value::Mapping(m) = entries else {
            return Err(site.error(
                &path,
                "entries must map keys to shard names",
                "write `entries: { acme: s0, globex: s1 }`",
            ));
        };
        let ty = t.key_type.as_deref().and_then(KeyType::parse);
        for (k, v) in m {
            let (Some(k), Some(v)) = (scalar_text(k), scalar_text(v)) else {
                return Err(site.error(
                    &path,
                    "entries must map keys to shard names",
                    "write `entries: { acme: s0, globex: s1 }`",
                ));
            };
            let at = [
                Seg::Key("tables"),
                Seg::Key(name),
                Seg::Key("entries"),
                Seg::Key(&k),
            ];
            let shard = shard_named(&v, &at)?;
            // Stored in the key's canonical text form.
            let k = match ty {
                Some(ty) => map_key(ty, &k)
                    .map_err(|e| site.error(&at, e.to_string(), "write a key of the table's type"))?
                    .to_string(),
                None => k.clone(),
            };
            match out.iter().find(|(o, _)| *o == k) {
                Some((_, s)) if *s != shard => {
                    return Err(site.error(
                        &at,
                        format!("directory key `{k}` is given two different shards"),
                        "directory tables share one directory: give each key one shard",
                    ))
                }
                Some(_) => {}
                None => out.push((k, shard)),
            }
        }
    }
    Ok(out)
}

/// Validates one table entry.
fn table_rule(
    ctx: &RuleContext<'_, '_>,
    name: &str,
    t: &RawTable,
) -> Result<TableRule, ConfigError> {
    let site = ctx.site;
    let at = |field| [Seg::Key("tables"), Seg::Key(name), Seg::Key(field)];
    let strategy = match t.strategy.as_deref() {
        Some(s) => s,
        None => {
            return Err(site.error(
                &at("strategy"),
                "strategy is missing",
                format!("add `strategy:` with one of: {STRATEGIES}"),
            ))
        }
    };
    if !matches!(
        strategy,
        "hash" | "reference" | "range" | "geo" | "directory"
    ) {
        return Err(site.error(
            &at("strategy"),
            format!("unknown strategy '{strategy}'"),
            format!("use one of: {STRATEGIES}"),
        ));
    }
    // Fields that belong to other strategies.
    for (field, present, owner) in [
        ("ranges", t.ranges.is_some(), "range"),
        ("regions", t.regions.is_some(), "geo"),
        ("default_region", t.default_region.is_some(), "geo"),
        ("entries", t.entries.is_some(), "directory"),
        ("fallback", t.fallback.is_some(), "directory"),
    ] {
        if present && owner != strategy {
            return Err(site.error(
                &at(field),
                format!("`{field}` belongs to strategy {owner}, not {strategy}"),
                format!("remove `{field}`"),
            ));
        }
    }
    if strategy == "reference" {
        for (field, present) in [("key", t.key.is_some()), ("type", t.key_type.is_some())] {
            if present {
                return Err(site.error(
                    &at(field),
                    "a reference table has no shard key",
                    format!("remove `{field}`, or use strategy hash to shard the table"),
                ));
            }
        }
        return Ok(TableRule::Reference);
    }

    let key = match &t.key {
        None => return Err(site.error(
            &at("key"),
            format!("strategy {strategy} needs a shard-key column"),
            "add `key: <column>` and `type: <bigint|integer|text|uuid|numeric|date|timestamptz>`",
        )),
        Some(serde_norway::Value::String(s)) if s.contains(',') => {
            return Err(site.error(
                &at("key"),
                "composite shard keys are not supported",
                "shard on a single column",
            ))
        }
        Some(serde_norway::Value::Sequence(_)) => {
            return Err(site.error(
                &at("key"),
                "composite shard keys are not supported",
                "shard on a single column",
            ))
        }
        Some(serde_norway::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(_) => {
            return Err(site.error(
                &at("key"),
                "key must be a column name",
                "write `key: <column>`",
            ))
        }
    };
    let key_type = match t.key_type.as_deref() {
        None => {
            return Err(site.error(
                &at("type"),
                format!("strategy {strategy} needs the type of key column `{key}`"),
                format!("add `type:` with one of: {}", KeyType::ACCEPTED_NAMES),
            ))
        }
        Some(ty) => KeyType::parse(ty).ok_or_else(|| {
            site.error(
                &at("type"),
                format!("unsupported key type `{ty}`"),
                format!("use one of: {}", KeyType::ACCEPTED_NAMES),
            )
        })?,
    };
    let class = key_type.colocation_class();
    let (strategy, signature) = match strategy {
        "hash" => (Strategy::Hash, format!("hash/{class}")),
        "range" => {
            let r = range_rule(ctx, name, key_type, t)?;
            let sig = format!(
                "range/{class}/{}/{:?}",
                r.bounds
                    .iter()
                    .map(|(b, s)| format!("{}:{s}", b.sql_literal()))
                    .collect::<Vec<_>>()
                    .join(","),
                r.rest
            );
            (Strategy::Range(r), sig)
        }
        "geo" => {
            let g = geo_rule(ctx, name, key_type, t)?;
            let mut vals: Vec<String> = g
                .by_value
                .iter()
                .map(|(v, r)| format!("{}={}", v.sql_literal(), g.regions[*r].name))
                .collect();
            vals.sort();
            let sig = format!(
                "geo/{class}/{}/{:?}",
                vals.join(","),
                g.default.map(|d| g.regions[d].name.clone())
            );
            (Strategy::Geo(g), sig)
        }
        _ => {
            let fallback = match t.fallback.as_ref().map(scalar_text) {
                None => Fallback::Hash,
                Some(Some(f)) if f == "hash" => Fallback::Hash,
                Some(Some(f)) if f == "reject" => Fallback::Reject,
                Some(Some(f)) => Fallback::Shard(ctx.shard(&f, &at("fallback")).map_err(|_| {
                    site.error(
                        &at("fallback"),
                        format!("fallback `{f}` is neither hash, reject nor a shard name"),
                        "use hash (the default), reject, or the name of a shard",
                    )
                })?),
                Some(None) => {
                    return Err(site.error(
                        &at("fallback"),
                        "fallback must be hash, reject or a shard name",
                        "write `fallback: hash`",
                    ))
                }
            };
            let Some(directory) = ctx.directory else {
                return Err(site.error(
                    &at("strategy"),
                    "internal: no directory for a directory table",
                    "report this",
                ));
            };
            (
                Strategy::Directory(DirectoryRule {
                    fallback,
                    directory: directory.clone(),
                }),
                format!("directory/{class}"),
            )
        }
    };
    Ok(TableRule::Sharded(Arc::new(Sharded {
        name: name.strip_prefix("public.").unwrap_or(name).to_owned(),
        key,
        key_type,
        strategy,
        group: ctx.group(signature),
        unsettled: ctx.unsettled,
    })))
}

/// Validates `ranges:`: `- { below: <bound>, shard: <name> }` in strictly ascending order,
/// optionally ending with a catch-all `- { shard: <name> }`.
fn range_rule(
    ctx: &RuleContext<'_, '_>,
    name: &str,
    ty: KeyType,
    t: &RawTable,
) -> Result<RangeRule, ConfigError> {
    let site = ctx.site;
    let path = [Seg::Key("tables"), Seg::Key(name), Seg::Key("ranges")];
    let example =
        "write `ranges: [{ below: 1000, shard: s0 }, { below: 2000, shard: s1 }, { shard: s2 }]`";
    let Some(serde_norway::Value::Sequence(items)) = &t.ranges else {
        return Err(site.error(&path, "strategy range needs a list of ranges", example));
    };
    if items.is_empty() {
        return Err(site.error(&path, "ranges is empty", example));
    }
    let mut bounds: Vec<(KeyValue, usize)> = Vec::new();
    let mut rest = None;
    for (i, item) in items.iter().enumerate() {
        let at = |f| {
            [
                Seg::Key("tables"),
                Seg::Key(name),
                Seg::Key("ranges"),
                Seg::Index(i),
                Seg::Key(f),
            ]
        };
        let serde_norway::Value::Mapping(m) = item else {
            return Err(site.error(&path, format!("range #{} is not a mapping", i + 1), example));
        };
        for k in m.keys() {
            if !matches!(scalar_text(k).as_deref(), Some("below" | "shard")) {
                return Err(site.error(
                    &path,
                    format!("range #{} has an unknown field {k:?}", i + 1),
                    "a range has only `below` and `shard`",
                ));
            }
        }
        if rest.is_some() {
            return Err(site.error(
                &path,
                format!("range #{} follows the catch-all range", i + 1),
                "the range without `below` must come last",
            ));
        }
        let Some(shard) = m.get("shard").and_then(scalar_text) else {
            return Err(site.error(&at("shard"), "a range needs a shard", "add `shard: <name>`"));
        };
        let shard = ctx.shard(&shard, &at("shard"))?;
        match m.get("below") {
            None => rest = Some(shard),
            Some(b) => {
                let Some(text) = scalar_text(b) else {
                    return Err(site.error(&at("below"), "below must be a value", example));
                };
                let v = map_key(ty, &text).map_err(|e| {
                    site.error(
                        &at("below"),
                        format!("bound `{text}`: {e}"),
                        format!("write a {ty} value"),
                    )
                })?;
                if let Some((prev, _)) = bounds.last() {
                    if v.cmp_same(prev) != Some(std::cmp::Ordering::Greater) {
                        return Err(site.error(
                            &at("below"),
                            format!(
                                "bound {} is not above the previous bound {}: ranges overlap or are out of order",
                                v.sql_literal(),
                                prev.sql_literal()
                            ),
                            "list ranges in ascending order of `below`, each bound once",
                        ));
                    }
                }
                bounds.push((v, shard));
            }
        }
    }
    Ok(RangeRule { bounds, rest })
}

/// Validates `regions:` (region -> key values) and `default_region:` against the shards'
/// regions.
fn geo_rule(
    ctx: &RuleContext<'_, '_>,
    name: &str,
    ty: KeyType,
    t: &RawTable,
) -> Result<GeoRule, ConfigError> {
    let site = ctx.site;
    let path = [Seg::Key("tables"), Seg::Key(name), Seg::Key("regions")];
    let example = "write `regions: { eu: [DE, FR], us: [US, CA] }` and give shards a `region`";
    let Some(serde_norway::Value::Mapping(m)) = &t.regions else {
        return Err(site.error(&path, "strategy geo needs regions", example));
    };
    let mut regions: Vec<Region> = Vec::new();
    let mut by_value: HashMap<KeyValue, usize> = HashMap::new();
    let region_of = |rname: &str, at: &[Seg<'_>]| -> Result<Region, ConfigError> {
        let shards: Vec<usize> = (0..ctx.shards.len())
            .filter(|&i| ctx.shards[i].region.as_deref() == Some(rname))
            .collect();
        if shards.is_empty() {
            return Err(site.error(
                at,
                format!("no shard serves region `{rname}`"),
                format!("add `region: {rname}` to at least one shard"),
            ));
        }
        let input: Vec<(&str, u32)> = shards
            .iter()
            .map(|&i| (ctx.shards[i].name.as_str(), ctx.shards[i].weight))
            .collect();
        Ok(Region {
            name: rname.to_owned(),
            ring: HashRing::new(&input, ctx.vnodes),
            shards,
        })
    };
    for (rk, vals) in m {
        let Some(rname) = scalar_text(rk) else {
            return Err(site.error(&path, "region names must be text", example));
        };
        let at = [
            Seg::Key("tables"),
            Seg::Key(name),
            Seg::Key("regions"),
            Seg::Key(&rname),
        ];
        let region = region_of(&rname, &at)?;
        let idx = regions.len();
        regions.push(region);
        let serde_norway::Value::Sequence(vals) = vals else {
            return Err(site.error(&at, "a region lists key values", example));
        };
        for v in vals {
            let Some(text) = scalar_text(v) else {
                return Err(site.error(&at, "key values must be scalars", example));
            };
            let kv = map_key(ty, &text).map_err(|e| {
                site.error(
                    &at,
                    format!("value `{text}`: {e}"),
                    format!("write {ty} values"),
                )
            })?;
            if let Some(other) = by_value.insert(kv, idx) {
                return Err(site.error(
                    &at,
                    format!(
                        "value `{text}` is listed in regions {} and {rname}",
                        regions[other].name
                    ),
                    "list each value in one region",
                ));
            }
        }
    }
    let default = match &t.default_region {
        None => None,
        Some(v) => {
            let at = [
                Seg::Key("tables"),
                Seg::Key(name),
                Seg::Key("default_region"),
            ];
            let Some(rname) = scalar_text(v) else {
                return Err(site.error(&at, "default_region must be a region name", example));
            };
            match regions.iter().position(|r| r.name == rname) {
                Some(i) => Some(i),
                None => {
                    let r = region_of(&rname, &at)?;
                    regions.push(r);
                    Some(regions.len() - 1)
                }
            }
        }
    };
    Ok(GeoRule {
        regions,
        by_value,
        default,
    })
}

/// A short description of a table's placement for `check`.
fn strategy_detail(t: &Sharded, names: &[String]) -> String {
    let name = |s: usize| names.get(s).cloned().unwrap_or_default();
    match &t.strategy {
        Strategy::Hash => String::new(),
        Strategy::Range(r) => {
            let mut parts: Vec<String> = r
                .bounds
                .iter()
                .map(|(b, s)| format!("< {} -> {}", b.sql_literal(), name(*s)))
                .collect();
            match r.rest {
                Some(s) => parts.push(format!("rest -> {}", name(s))),
                None => parts.push("rest refused".into()),
            }
            format!(": {}", parts.join(", "))
        }
        Strategy::Geo(g) => {
            let regions: Vec<String> = g
                .regions
                .iter()
                .map(|r| {
                    let shards: Vec<String> = r.shards.iter().map(|&s| name(s)).collect();
                    format!("{} -> {}", r.name, shards.join("+"))
                })
                .collect();
            format!(
                ": {}; unknown values {}",
                regions.join(", "),
                match g.default {
                    Some(d) => format!("-> {}", g.regions[d].name),
                    None => "refused".into(),
                }
            )
        }
        Strategy::Directory(d) => format!(
            ": fallback {}",
            match d.fallback {
                Fallback::Hash => "hash".to_owned(),
                Fallback::Reject => "reject".to_owned(),
                Fallback::Shard(s) => name(s),
            }
        ),
    }
}

/// `host:port` with a numeric port.
fn check_addr(site: &ErrorSite<'_>, path: &[Seg<'_>], addr: &str) -> Result<(), ConfigError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(site.error(
            path,
            format!("`{addr}` is not a host:port address"),
            "write it as host:port, e.g. 127.0.0.1:6432",
        ))
    }
}

/// Parses a shard URL into a [`ShardInfo`] (name, region and weight left
/// empty). The error is a (message, fix) pair for [`ConfigError::Invalid`].
fn parse_url(url: &str) -> Result<ShardInfo, (String, &'static str)> {
    use tokio_postgres::config::Host;
    const FIX: &str = "write it as postgres://user[:password]@host[:port]/dbname";

    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err((format!("`{}` is not a postgres:// URL", redact(url)), FIX));
    }
    let (url, mode, root_cert) = take_ssl_params(url)?;
    let url = url.as_str();
    let cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        let mut msg = format!("cannot parse URL `{}`: {e}", redact(url));
        if let Some(source) = std::error::Error::source(&e) {
            msg.push_str(&format!(": {source}"));
        }
        (msg, FIX)
    })?;
    let host = match cfg.get_hosts() {
        [Host::Tcp(h)] if !h.is_empty() => h.clone(),
        [] => return Err(("the URL names no host".to_owned(), FIX)),
        [_] => {
            return Err((
                "unix-socket hosts are not supported".to_owned(),
                "name a TCP host, e.g. postgres://user@127.0.0.1:5432/dbname",
            ))
        }
        _ => {
            return Err((
                "the URL names several hosts; a shard has exactly one".to_owned(),
                "list each server as its own shard, or name one host",
            ))
        }
    };
    let port = match cfg.get_ports() {
        [] => 5432,
        [p] => *p,
        _ => {
            return Err((
                "the URL names several ports; a shard has exactly one".to_owned(),
                FIX,
            ))
        }
    };
    let user = match cfg.get_user() {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ => return Err(("the URL names no user".to_owned(), FIX)),
    };
    let dbname = match cfg.get_dbname() {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => return Err(("the URL names no database".to_owned(), FIX)),
    };
    let password = match cfg.get_password() {
        None => None,
        Some(p) => Some(String::from_utf8(p.to_vec()).map_err(|_| {
            (
                "the URL's password is not valid UTF-8".to_owned(),
                "percent-encode a UTF-8 password",
            )
        })?),
    };
    let tls = crate::wire::tls::ShardTls::new(mode, root_cert).map_err(|e| {
        (
            e.to_string(),
            "give sslrootcert=PATH of a readable PEM file with the CA certificates",
        )
    })?;
    Ok(ShardInfo {
        name: String::new(),
        host,
        port,
        user,
        password,
        dbname,
        region: None,
        weight: 1,
        tls,
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query (tokio-postgres knows neither
/// `verify-ca`/`verify-full` nor `sslrootcert`): the URL without them, the mode (default
/// `disable`) and the CA file.
fn take_ssl_params(
    url: &str,
) -> Result<
    (
        String,
        crate::wire::tls::SslMode,
        Option<std::path::PathBuf>,
    ),
    (String, &'static str),
> {
    use crate::wire::tls::SslMode;
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), SslMode::Disable, None));
    };
    let mut mode = SslMode::Disable;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = SslMode::parse(&percent_decode(v)).ok_or_else(|| {
                    (
                        format!("unknown sslmode `{v}`"),
                        "use disable (the default), prefer, require, verify-ca or verify-full",
                    )
                })?;
            }
            "sslrootcert" => root_cert = Some(std::path::PathBuf::from(percent_decode(v))),
            "sslnegotiation" if percent_decode(v) == "postgres" => {}
            "sslnegotiation" => {
                return Err((
                    format!("sslnegotiation `{v}` is not supported"),
                    "remove sslnegotiation (the proxy sends an SSLRequest first, like the default `postgres`)",
                ))
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

/// Decodes `%XX` escapes (and leaves anything malformed as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with any password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The design §3 example without the range/geo/directory tables.
    const DESIGN: &str = r#"listen: 127.0.0.1:6432
admin: 127.0.0.1:9930            # HTTP /metrics (Prometheus) and /health
users:                            # who may connect to the proxy
  - { name: app, password: app-secret }
shards:
  - { name: s0, url: "postgres://postgres@127.0.0.1:5433/app", region: eu }
  - { name: s1, url: "postgres://postgres@127.0.0.1:5434/app", region: us }
  - { name: s2, url: "postgres://postgres@127.0.0.1:5435/app", region: us, weight: 2 }
pool: { size: 20, mode: transaction }
hash: { vnodes: 256 }
directory: { shard: s0, table: shardwire_directory }
tables:
  users:       { key: id, type: bigint, strategy: hash }
  orders:      { key: user_id, type: bigint, strategy: hash }     # co-located with users
  countries:   { strategy: reference }
"#;

    fn load(text: &str) -> Result<ShardMap, ConfigError> {
        ShardMap::from_yaml_str(text, "config/x.yaml")
    }

    /// Asserts a map fails with an error naming `line` and `path` and containing `needle`.
    fn bad(text: &str, line: usize, path: &str, needle: &str) -> String {
        let e = load(text).expect_err("map should be rejected");
        let s = e.to_string();
        assert_eq!(e.line(), Some(line), "{s}");
        assert_eq!(e.path(), path, "{s}");
        let prefix = if path.is_empty() {
            format!("config/x.yaml:{line}: ")
        } else {
            format!("config/x.yaml:{line}: {path}: ")
        };
        assert!(s.starts_with(&prefix), "{s}");
        assert!(s.contains(needle), "{s}");
        assert!(s.contains("; fix: "), "{s}");
        s
    }

    #[test]
    fn design_example_loads() {
        let m = load(DESIGN).unwrap();
        assert_eq!(m.listen, "127.0.0.1:6432");
        assert_eq!(m.admin.as_deref(), Some("127.0.0.1:9930"));
        assert_eq!(
            m.users,
            [UserEntry {
                name: "app".into(),
                password: "app-secret".into(),
                admin: false,
            }]
        );
        assert_eq!(m.auth, AuthMethod::ScramSha256);
        assert_eq!(m.shards.len(), 3);
        assert_eq!(
            m.shards[2],
            ShardInfo {
                name: "s2".into(),
                host: "127.0.0.1".into(),
                port: 5435,
                user: "postgres".into(),
                password: None,
                dbname: "app".into(),
                region: Some("us".into()),
                weight: 2,
                tls: Default::default(),
            }
        );
        assert_eq!(
            m.pool,
            PoolSettings {
                size: 20,
                session_mode: false,
                checkout_timeout: Duration::from_millis(5000),
                connect_timeout: Duration::from_millis(3000),
                statement_timeout: None,
            }
        );
        assert_eq!(m.vnodes, 256);
        assert_eq!(m.ring().token_count(), 256 * 4);
        assert_eq!(m.default_shard, 0);
        assert_eq!(m.max_message_size, 64 << 20);
        assert_eq!(m.max_client_connections, 10_000);
        assert_eq!(
            m.table("", "users"),
            Some(&TableRule::hash_for_tests("id", KeyType::BigInt))
        );
        assert_eq!(m.table("public", "countries"), Some(&TableRule::Reference));
        assert_eq!(m.table("sales", "users"), None);
        assert_eq!(m.table("", "nope"), None);
        let names: Vec<&str> = m.tables().map(|(n, _)| n).collect();
        assert_eq!(names, ["users", "orders", "countries"]);
        assert_eq!(m.shard_index("s1"), Some(1));
        assert_eq!(m.shard_index("s9"), None);
        let summary = m.summary();
        println!("{summary}");
        for needle in [
            "s2  postgres@127.0.0.1:5435/app  weight 2",
            "region us",
            "pool: 20 connections per shard, transaction pooling",
            "256 vnodes",
            "users      hash on id (bigint)",
            "countries  reference",
            "default shard: s0",
        ] {
            assert!(summary.contains(needle), "missing {needle:?} in\n{summary}");
        }
    }

    #[test]
    fn quickstart_and_example_files_load() {
        for file in ["config/quickstart.yaml", "config/example.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let m = ShardMap::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.shards.len(), 3, "{file}");
            assert_eq!(m.listen, "127.0.0.1:6432");
            assert_eq!(m.users[0].name, "app");
            assert_eq!(
                m.table("", "orders"),
                Some(&TableRule::hash_for_tests("user_id", KeyType::BigInt))
            );
            assert_eq!(m.table("", "countries"), Some(&TableRule::Reference));
            assert_eq!(m.shards[1].port, 5434);
        }
    }

    #[test]
    fn defaults_and_options() {
        let m = load(
            "users: [{ name: a, password: b }, { name: c, password: d }]\n\
             auth: md5\n\
             shards:\n  - name: x\n    url: postgresql://u:p%40ss@db.example:6000/d?application_name=sw\n\
             pool:\n  mode: session\n  size: 3\n  checkout_timeout_ms: 10\n\
             limits: { max_message_size: 2048, max_client_connections: 5 }\n\
             default_shard: x\n",
        )
        .unwrap();
        assert_eq!(m.listen, DEFAULT_LISTEN_FOR_TEST);
        assert_eq!(m.auth, AuthMethod::Md5);
        assert_eq!(m.users.len(), 2);
        let s = &m.shards[0];
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str(), s.dbname.as_str()),
            ("db.example", 6000, "u", "d")
        );
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert_eq!(s.weight, 1);
        assert!(m.pool.session_mode);
        assert_eq!(m.pool.size, 3);
        assert_eq!(m.pool.checkout_timeout, Duration::from_millis(10));
        assert_eq!(m.pool.connect_timeout, Duration::from_millis(3000));
        assert_eq!(m.vnodes, 256);
        assert_eq!((m.max_message_size, m.max_client_connections), (2048, 5));
        assert_eq!(m.tables().count(), 0);
        assert_eq!(
            m.explain_route("t", "1").unwrap(),
            "t is not in tables: unsharded, lives on shard x (default_shard)"
        );
        // Default port.
        let m = load(
            "users: [{name: a, password: b}]\nshards: [{name: x, url: \"postgres://u@h/d\"}]\n",
        )
        .unwrap();
        assert_eq!(m.shards[0].port, 5432);
    }

    const DEFAULT_LISTEN_FOR_TEST: &str = crate::config::DEFAULT_LISTEN;

    #[test]
    fn schema_qualified_tables() {
        let m = load(
            "users: [{name: a, password: b}]\nshards: [{name: x, url: \"postgres://u@h/d\"}]\n\
             tables:\n  sales.users: { key: id, type: int, strategy: hash }\n  \
             public.orders: { key: id, type: int4, strategy: hash }\n  users: { strategy: reference }\n",
        )
        .unwrap();
        let sales = TableRule::hash_for_tests("id", KeyType::Int);
        assert_eq!(m.table("sales", "users"), Some(&sales));
        assert_eq!(m.table("", "users"), Some(&TableRule::Reference));
        assert_eq!(m.table("public", "users"), Some(&TableRule::Reference));
        assert_eq!(m.table("other", "users"), None);
        assert!(m.table("", "orders").is_some());
        assert!(m.table("public", "orders").is_some());
        assert_eq!(m.table("sales", "orders"), None);
        let names: Vec<&str> = m.tables().map(|(n, _)| n).collect();
        assert_eq!(names, ["sales.users", "orders", "users"]);
        assert!(m
            .explain_route("sales.users", "7")
            .unwrap()
            .starts_with("sales.users.id = 7 (integer) -> hash 0x"));
        assert!(m
            .explain_route("Sales.Users", "7")
            .unwrap()
            .contains("(integer)"));
        assert!(matches!(
            m.explain_route("a.b.c", "1"),
            Err(RouteExplainError::TableName(_))
        ));
        assert!(matches!(
            m.explain_route("", "1"),
            Err(RouteExplainError::TableName(_))
        ));

        // public.x and x are the same table.
        bad(
            "users: [{name: a, password: b}]\nshards: [{name: x, url: \"postgres://u@h/d\"}]\n\
             tables:\n  t: { strategy: reference }\n  public.t: { strategy: reference }\n",
            5,
            "tables.public.t",
            "listed twice",
        );
    }

    #[test]
    fn explain_route_outputs() {
        let m = load(DESIGN).unwrap();
        let s = m.explain_route("users", "42").unwrap();
        let want_shard = &m.shards[m.hash_shard(&KeyValue::Int(42))].name;
        assert_eq!(
            s,
            format!("users.id = 42 (bigint) -> hash 0x2e4fe982b68910ac -> shard {want_shard}")
        );
        // Same key, co-located table, same shard; whitespace and sign accepted as in Postgres.
        let o = m.explain_route("orders", " +42 ").unwrap();
        assert!(o.ends_with(&format!("-> shard {want_shard}")), "{o}");
        assert_eq!(
            m.explain_route("countries", "whatever").unwrap(),
            "countries is a reference table: reads go to one shard, writes to all"
        );
        assert_eq!(
            m.explain_route("orders2", "1").unwrap(),
            "orders2 is not in tables: unsharded, lives on shard s0 (the first shard; set default_shard to change)"
        );
        let e = m.explain_route("users", "abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "users.id: invalid input syntax for type bigint: \"abc\""
        );
        let e = m
            .explain_route("users", "99999999999999999999")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "users.id: value \"99999999999999999999\" is out of range for type bigint"
        );
    }

    #[test]
    fn ring_follows_names_and_weights() {
        let m = load(DESIGN).unwrap();
        // hash_shard agrees with a ring built from the same names and weights.
        let ring = HashRing::new(&[("s0", 1), ("s1", 1), ("s2", 2)], 256);
        for k in 0..1000 {
            let key = KeyValue::Int(k);
            assert_eq!(m.hash_shard(&key), ring.locate(key.hash64()) as usize);
        }
    }

    const HEAD: &str = "users: [{ name: app, password: x }]\nshards:\n  - { name: s0, url: \"postgres://u@h:1/d\" }\n";

    #[test]
    fn bad_maps_name_line_and_path() {
        // Unknown field (serde).
        let s = bad(
            &format!("{HEAD}tables:\n  users:\n    key: id\n    kee: id\n"),
            7,
            "tables.users.kee",
            "unknown field `kee`",
        );
        println!("{s}");
        let s = bad(
            "listen: 1.2.3.4:5\ncolour: red\n",
            2,
            "colour",
            "unknown field `colour`",
        );
        println!("{s}");
        // Missing key for hash.
        let s = bad(
            &format!("{HEAD}tables:\n  users: {{ type: bigint, strategy: hash }}\n"),
            5,
            "tables.users.key",
            "needs a shard-key column",
        );
        println!("{s}");
        // Missing type, bad type.
        bad(
            &format!("{HEAD}tables:\n  users:\n    key: id\n    strategy: hash\n"),
            5,
            "tables.users.type",
            "needs the type",
        );
        let s = bad(
            &format!(
                "{HEAD}tables:\n  users:\n    key: id\n    type: interval\n    strategy: hash\n"
            ),
            7,
            "tables.users.type",
            "unsupported key type `interval`",
        );
        println!("{s}");
        // Duplicate shard name.
        let s = bad(
            &format!("{HEAD}  - name: s0\n    url: postgres://u@h:2/d\n"),
            4,
            "shards[1].name",
            "shard name `s0` is used twice",
        );
        println!("{s}");
        // Unknown default shard.
        let s = bad(
            &format!("{HEAD}default_shard: s9\n"),
            4,
            "default_shard",
            "no shard is named `s9`",
        );
        println!("{s}");
        // Bad URLs.
        for (url, needle) in [
            ("mysql://u@h/d", "not a postgres:// URL"),
            ("postgres://h:5432/d", "names no user"),
            ("postgres://u@h:5432", "names no database"),
            ("postgres://u@h:notaport/d", "cannot parse URL"),
            ("postgres://u@/d", "names no host"),
            ("postgres://u@h1,h2/d", "several hosts"),
            ("postgres://u@%2Ftmp/d", "unix-socket"),
            ("postgres://u@h/d?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://u@h/d?sslmode=allow", "unknown sslmode"),
        ] {
            let s = bad(
                &format!("users: [{{ name: app, password: x }}]\nshards:\n  - name: s0\n    url: \"{url}\"\n"),
                4,
                "shards[0].url",
                needle,
            );
            println!("{s}");
        }
        // Passwords never appear in URL errors.
        let s = bad(
            "users: [{ name: app, password: x }]\nshards: [{ name: s0, url: \"postgres://u:hunter2@h:bad/d\" }]\n",
            2,
            "shards[0].url",
            "u:***@h:bad/d",
        );
        assert!(!s.contains("hunter2"), "{s}");
        // Range bounds out of order, and a catch-all that is not last.
        let s = bad(
            &format!(
                "{HEAD}tables:\n  events:\n    key: created_at\n    type: timestamptz\n    strategy: range\n    ranges:\n      - {{ below: \"2025-01-01\", shard: s0 }}\n      - {{ below: \"2024-01-01\", shard: s0 }}\n"
            ),
            11,
            "tables.events.ranges[1].below",
            "is not above the previous bound",
        );
        println!("{s}");
        bad(
            &format!(
                "{HEAD}tables:\n  events:\n    key: id\n    type: bigint\n    strategy: range\n    ranges:\n      - {{ shard: s0 }}\n      - {{ below: 5, shard: s0 }}\n"
            ),
            9,
            "tables.events.ranges",
            "follows the catch-all",
        );
        // Geo: a region no shard serves; a value in two regions.
        bad(
            &format!("{HEAD}tables:\n  t: {{ key: k, type: text, strategy: geo, regions: {{ eu: [DE] }} }}\n"),
            5,
            "tables.t.regions.eu",
            "no shard serves region `eu`",
        );
        // Directory: unknown fallback.
        bad(
            &format!("{HEAD}tables:\n  t: {{ key: k, type: text, strategy: directory, fallback: sideways }}\n"),
            5,
            "tables.t.fallback",
            "neither hash, reject nor a shard name",
        );
        // Missing / unknown strategy lists the valid ones.
        let s = bad(
            &format!("{HEAD}tables:\n  t: {{ key: k, type: text }}\n"),
            5,
            "tables.t.strategy",
            "hash, range, geo, directory, reference",
        );
        println!("{s}");
        bad(
            &format!("{HEAD}tables:\n  t: {{ strategy: modulo }}\n"),
            5,
            "tables.t.strategy",
            "unknown strategy 'modulo'",
        );
        // Composite keys.
        bad(
            &format!(
                "{HEAD}tables:\n  t:\n    key: [a, b]\n    type: bigint\n    strategy: hash\n"
            ),
            6,
            "tables.t.key",
            "composite shard keys are not supported",
        );
        bad(
            &format!("{HEAD}tables:\n  t: {{ key: \"a, b\", type: bigint, strategy: hash }}\n"),
            5,
            "tables.t.key",
            "composite shard keys are not supported",
        );
        // Reference tables have no key.
        bad(
            &format!("{HEAD}tables:\n  t: {{ key: k, strategy: reference }}\n"),
            5,
            "tables.t.key",
            "no shard key",
        );
        bad(
            &format!("{HEAD}tables:\n  t:\n    strategy: hash\n    key: k\n    type: int\n    fallback: reject\n"),
            9,
            "tables.t.fallback",
            "belongs to strategy directory",
        );
        // Other fields.
        bad(
            &format!("{HEAD}gather: {{ memory_limit_mb: 0 }}\n"),
            4,
            "gather.memory_limit_mb",
            "out of range",
        );
        bad(
            &format!("{HEAD}gather: {{ timeout_secs: 0 }}\n"),
            4,
            "gather.timeout_secs",
            "out of range",
        );
        bad("users: []\nshards: []\n", 1, "users", "at least one user");
        bad(
            "users: [{ name: a, password: b }]\nshards: []\n",
            2,
            "shards",
            "at least one shard",
        );
        bad(
            &format!("{HEAD}pool:\n  size: 0\n"),
            5,
            "pool.size",
            "out of range",
        );
        bad(
            &format!("{HEAD}pool: {{ mode: statement }}\n"),
            4,
            "pool.mode",
            "unknown pool mode",
        );
        bad(
            &format!("{HEAD}hash:\n  vnodes: 0\n"),
            5,
            "hash.vnodes",
            "out of range",
        );
        bad(
            &format!("{HEAD}auth: trust\n"),
            4,
            "auth",
            "unknown auth method",
        );
        bad(
            &format!("{HEAD}listen: localhost\n"),
            4,
            "listen",
            "not a host:port",
        );
        bad(
            &format!("{HEAD}limits: {{ max_message_size: 10 }}\n"),
            4,
            "limits.max_message_size",
            "out of range",
        );
        bad("users: [{ name: a, password: b }]\nshards:\n  - { name: \"s 0\", url: \"postgres://u@h/d\" }\n", 3, "shards[0].name", "invalid shard name");
        bad("users: [{ name: a, password: b }]\nshards:\n  - { name: s0, url: \"postgres://u@h/d\", weight: 0 }\n", 3, "shards[0].weight", "at least 1");
        bad(
            &format!("{HEAD}directory: {{ shard: s5, table: d }}\n"),
            4,
            "directory.shard",
            "no shard is named",
        );
        bad(
            "users:\n  - { name: a, password: b }\n  - { name: a, password: c }\nshards: [{ name: s0, url: \"postgres://u@h/d\" }]\n",
            3,
            "users[1].name",
            "listed twice",
        );
        // Missing required fields (serde) name the field.
        bad(
            "users: [{ name: a, password: b }]\nshards:\n  - { name: s0 }\n",
            3,
            "shards[0].url",
            "missing field `url`",
        );
        // serde type errors point at the value.
        bad(
            &format!("{HEAD}pool:\n  size: lots\n"),
            5,
            "pool.size",
            "invalid type",
        );
        bad(
            "users: [{ name: a, password: b }]\nshards:\n  - { name: s0, url: \"postgres://u@h/d\", weight: -1 }\n",
            3,
            "shards[0].weight",
            "expected u32",
        );
        // Not found on disk.
        let e = ShardMap::load(Path::new("/nonexistent/shardwire.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/shardwire.yaml: cannot read the shard map"),
            "{e}"
        );
    }

    #[test]
    fn ring_size_is_bounded() {
        let e = load("users: [{ name: a, password: b }]\nshards: [{ name: s0, url: \"postgres://u@h/d\", weight: 100 }]\nhash: { vnodes: 65536 }\n")
            .unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
    }
}
