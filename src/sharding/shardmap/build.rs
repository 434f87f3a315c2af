//! Validating a parsed map file ([`RawConfig`]) and building the [`ShardMap`]: addresses,
//! users, shards, pool, hash and limits, the directory, then every table's rule.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::rules::{directory_statics, table_rule, RuleContext};
use super::settings::{AuthMethod, GatherSettings, PoolSettings, ShardLogin, UserEntry};
use super::url::{check_addr, parse_url};
use super::{ShardMap, TableRule};
use crate::config::{ConfigError, ErrorSite, RawConfig, Seg};
use crate::sharding::directory::Directory;
use crate::sharding::ring::HashRing;
use crate::sharding::shard::ShardInfo;

/// Most ring tokens a map may ask for (`hash.vnodes × total weight`).
pub const MAX_RING_TOKENS: u64 = 1 << 22;

/// Most shards one map may hold.
pub const MAX_SHARDS: usize = 128;

/// How [`build`] treats a map that is one side of a rebalance.
#[derive(Default)]
pub(super) struct BuildOpts {
    /// Shards of weight 0 are allowed ("parked": listed, owning no ring tokens).
    pub(super) allow_parked: bool,
    /// Use this directory instead of a new one (a proxy's live directory).
    pub(super) directory: Option<Arc<Directory>>,
    /// Placement may change while the map is in use (see [`Sharded::unsettled`]).
    pub(super) unsettled: bool,
}

/// Validates a parsed map and builds the runtime form.
pub(super) fn build(
    site: &ErrorSite<'_>,
    raw: RawConfig,
    opts: BuildOpts,
) -> Result<ShardMap, ConfigError> {
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
        let shard_login = match (&u.shard_user, &u.shard_password) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(site.error(
                    &[Key("users"), Index(i), Key("shard_password")],
                    "shard_password without shard_user",
                    "name the role with `shard_user`, or drop `shard_password`",
                ))
            }
            (Some(r), _) if r.is_empty() => {
                return Err(site.error(
                    &[Key("users"), Index(i), Key("shard_user")],
                    "shard_user is empty",
                    "name the role this user's clients run as on the shards",
                ))
            }
            (Some(r), p) => Some(ShardLogin {
                user: r.clone(),
                password: p.clone(),
            }),
        };
        users.push(UserEntry {
            name: u.name.clone(),
            password: u.password.clone(),
            admin: u.admin,
            shard_login,
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
        catalog: Default::default(),
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
