//! The multi-line summary of a map that `shardwire check` prints.

use std::fmt::Write as _;

use super::{ShardMap, TableRule};
use crate::sharding::strategy::{Fallback, Sharded, Strategy};

impl ShardMap {
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
        for u in &self.users {
            let role = match &u.shard_login {
                Some(l) => format!("runs on the shards as {}", l.user),
                None => "runs on the shards as the control role (no shard_user)".to_owned(),
            };
            let admin = if u.admin { ", admin console" } else { "" };
            let _ = writeln!(s, "  user {}: {role}{admin}", u.name);
        }
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
        let _ = writeln!(
            s,
            "shards ({}; the URLs' login is the control role):",
            self.shards.len()
        );
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
            "pool: {} connections per shard for each user and for the control plane, {} pooling, checkout timeout {} ms, connect timeout {} ms",
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
