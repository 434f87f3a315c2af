//! The validated, immutable routing map built from a shard map file.
//!
//! [`ShardMap::from_yaml_str`] parses the YAML ([`crate::config`]), checks
//! every rule, and builds the hash ring once. The result answers the router's
//! questions — which rule a table follows ([`ShardMap::table`]) and which
//! shard a key lives on ([`ShardMap::hash_shard`]) — without allocating. It is
//! never mutated: a reload builds a new map and swaps it in whole.
//!
//! Here are the map's types; `load` and `build` make a map (with `rules` for the tables,
//! `url` for addresses, `settings` for users, pool and limits), `lookup` answers the
//! router, `summary` prints it for `check`, and `transition` overlays a rebalance.

mod build;
mod load;
mod lookup;
mod rules;
mod settings;
mod summary;
pub mod transition;
mod url;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use build::{MAX_RING_TOKENS, MAX_SHARDS};
pub(crate) use rules::utc_default;
pub use settings::{AuthMethod, GatherSettings, PoolSettings, ShardLogin, UserEntry};

pub use crate::config::ConfigError;
use crate::sharding::directory::Directory;
use crate::sharding::keys::KeyError;
#[cfg(test)]
use crate::sharding::keys::KeyType;
use crate::sharding::ring::HashRing;
use crate::sharding::shard::ShardInfo;
use crate::sharding::strategy::Sharded;
#[cfg(test)]
use crate::sharding::strategy::Strategy;

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
    /// The tables' columns as the shards define them (generated columns); shared with the
    /// maps reloaded from this one.
    pub catalog: Arc<crate::sharding::catalog::Catalog>,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sharding::keys::KeyValue;

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
                shard_login: None,
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
            "pool: 20 connections per shard for each user and for the control plane, transaction pooling",
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
