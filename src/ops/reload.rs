//! Hot reload: re-read the shard map file and swap it in (SIGHUP or admin `RELOAD`).
//!
//! The new map is validated completely before anything changes; an invalid file leaves the
//! running map alone and the error names the line. Sessions move to the new map between
//! transactions (a transaction in flight finishes on the map it started with); pools of
//! shards whose address is unchanged are kept. The listen address, the admin address and
//! the directory's location need a restart: a change to them is refused or reported.

use std::path::Path;
use std::sync::Arc;

use crate::session::Shared;
use crate::sharding::shardmap::{ConfigError, ShardMap};

/// Why a reload was refused (the running map stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was not started from a file.
    #[error("this proxy was not started from a shard map file; nothing to reload")]
    NoFile,
    /// The file does not load.
    #[error("the new shard map is invalid, the running one stays: {0}")]
    Invalid(#[from] ConfigError),
    /// A rebalance is running.
    #[error("a rebalance is running: it swaps maps itself; reload after it completes")]
    Rebalancing,
    /// A change that needs a restart.
    #[error("{0}; the running map stays (restart the proxy for this change)")]
    NeedsRestart(String),
}

/// Reloads the map from the proxy's file; a one-line summary of what changed.
pub fn reload(shared: &Shared) -> Result<String, ReloadError> {
    let path = shared
        .config_path
        .lock()
        .clone()
        .ok_or(ReloadError::NoFile)?;
    reload_from(shared, &path)
}

/// Reloads the map from `path`; a one-line summary of what changed.
pub fn reload_from(shared: &Shared, path: &Path) -> Result<String, ReloadError> {
    if shared.gate.armed() {
        return Err(ReloadError::Rebalancing);
    }
    let cur = shared.map();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: path.display().to_string(),
        source,
    })?;
    let origin = path.display().to_string();
    // Validate on its own first, to compare the directory's location.
    let fresh = ShardMap::from_yaml_str(&text, &origin)?;
    let loc = |m: &ShardMap| {
        m.directory
            .as_ref()
            .map(|d| (m.shard_names()[d.shard].clone(), d.table.clone()))
    };
    if loc(&fresh) != loc(&cur) {
        return Err(ReloadError::NeedsRestart(format!(
            "the key directory moves from {:?} to {:?}",
            loc(&cur),
            loc(&fresh)
        )));
    }
    let new = ShardMap::from_yaml_with_directory(&text, &origin, cur.directory.clone())?;
    let mut notes = Vec::new();
    if new.listen != cur.listen {
        notes.push(format!(
            "listen stays {} (restart to change it)",
            cur.listen
        ));
    }
    if new.admin != cur.admin {
        notes.push("admin address unchanged until a restart".to_string());
    }
    let summary = describe(&cur, &new);
    shared.swap_config(Arc::new(new));
    notes.insert(0, summary);
    let line = notes.join("; ");
    tracing::info!(file = %path.display(), changes = %line, "shard map reloaded");
    Ok(line)
}

/// What differs between two maps, in one line.
fn describe(cur: &ShardMap, new: &ShardMap) -> String {
    let names = |m: &ShardMap| -> Vec<String> { m.tables().map(|(n, _)| n.to_string()).collect() };
    let (a, b) = (names(cur), names(new));
    let added: Vec<&String> = b.iter().filter(|n| !a.contains(n)).collect();
    let removed: Vec<&String> = a.iter().filter(|n| !b.contains(n)).collect();
    let changed: Vec<&String> = b
        .iter()
        .filter(|n| {
            let r = |m: &ShardMap| m.tables().find(|(x, _)| x == n).map(|(_, r)| r.clone());
            a.contains(n) && r(cur) != r(new)
        })
        .collect();
    let list = |v: &[&String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    format!(
        "tables added: {}; removed: {}; changed: {}; shards: {}",
        list(&added),
        list(&removed),
        list(&changed),
        new.shard_names().join(", ")
    )
}
