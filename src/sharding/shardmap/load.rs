//! Building a [`ShardMap`] from a file or text, and the two maps of a rebalance
//! ([`ShardMap::transition_pair`]).

use std::path::Path;
use std::sync::Arc;

use super::build::{build, BuildOpts};
use super::ShardMap;
use crate::config::{ConfigError, ErrorSite};
use crate::sharding::directory::Directory;

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
    /// [`Sharded::unsettled`](crate::sharding::strategy::Sharded::unsettled)) and share
    /// `directory` when given (a proxy's live directory).
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
}
