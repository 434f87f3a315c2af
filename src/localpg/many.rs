//! Several clusters at once: started in parallel ([`start_many`]), or detached so they
//! outlive this process and listed in a state file ([`up_detached`], [`down_detached`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;

use super::cluster::{reap_orphans, remove_cluster_dir, ClusterOptions, PgCluster};
use super::programs::{is_root, pg_bin_dir, run, server_command};
use super::LocalPgError;

/// State file written by [`up_detached`].
pub(super) const STATE_FILE: &str = "clusters.txt";

/// Starts `n` clusters in parallel threads (free ports, default settings). If any fails,
/// the others are removed and the first error is returned.
pub fn start_many(n: usize) -> Result<Vec<PgCluster>, LocalPgError> {
    let handles: Vec<_> = (0..n)
        .map(|_| thread::spawn(|| PgCluster::start(ClusterOptions::default())))
        .collect();
    let mut clusters = Vec::with_capacity(n);
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(c)) => clusters.push(c),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(LocalPgError::ThreadPanicked);
            }
        }
    }
    match first_err {
        None => Ok(clusters),
        Some(e) => Err(e), // `clusters` drops here, removing the ones that did start
    }
}

/// Starts `n` clusters that outlive this process and records them in `<dir>/clusters.txt`
/// (`PORT CLUSTER_DIR` lines); returns their ports. If the state file already lists `n`
/// running clusters, their ports are returned as they are; any other clusters it lists are
/// removed first. [`down_detached`] removes them.
pub fn up_detached(n: usize, dir: &Path) -> Result<Vec<u16>, LocalPgError> {
    fs::create_dir_all(dir).map_err(|source| LocalPgError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let state = dir.join(STATE_FILE);
    if state.exists() {
        if let Ok(existing) = read_state(&state) {
            if existing.len() == n && !existing.is_empty() && all_running(&existing) {
                return Ok(existing.iter().map(|(p, _)| *p).collect());
            }
        }
        down_detached(dir)?;
    }
    let clusters = start_many(n)?;
    let mut text = String::new();
    for c in &clusters {
        text.push_str(&format!("{} {}\n", c.port, c.dir.display()));
    }
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    fs::write(&tmp, &text)
        .and_then(|()| fs::rename(&tmp, &state))
        .map_err(|source| LocalPgError::Io {
            action: "write",
            path: state.clone(),
            source,
        })?;
    // Only now, with the state file safely written, let them outlive us.
    Ok(clusters.into_iter().map(|c| c.detach().0).collect())
}

/// Stops (`pg_ctl stop -m immediate`) and removes every cluster listed in
/// `<dir>/clusters.txt`, then the file itself; also removes orphaned clusters of dead
/// processes. Does nothing when there is no state file. Only directories that look like
/// ours (`shardwire-pg-*` holding `data/`) are removed.
pub fn down_detached(dir: &Path) -> Result<(), LocalPgError> {
    reap_orphans();
    let state = dir.join(STATE_FILE);
    let listed = match read_state(&state) {
        Ok(l) => l,
        Err(LocalPgError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let bin = pg_bin_dir().ok();
    let as_postgres = is_root();
    let mut first_err = None;
    for (_, cdir) in &listed {
        if let Err(e) = remove_cluster_dir(bin.as_deref(), as_postgres, cdir) {
            first_err.get_or_insert(e);
        }
    }
    if let Err(source) = fs::remove_file(&state) {
        if source.kind() != io::ErrorKind::NotFound {
            first_err.get_or_insert(LocalPgError::Io {
                action: "remove",
                path: state,
                source,
            });
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

pub(super) fn read_state(path: &Path) -> Result<Vec<(u16, PathBuf)>, LocalPgError> {
    let text = fs::read_to_string(path).map_err(|source| LocalPgError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || LocalPgError::BadStateFile {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        };
        let (port, dir) = line.split_once(' ').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        out.push((port, PathBuf::from(dir.trim())));
    }
    Ok(out)
}

fn all_running(clusters: &[(u16, PathBuf)]) -> bool {
    let Ok(bin) = pg_bin_dir() else { return false };
    let as_postgres = is_root();
    clusters.iter().all(|(_, dir)| {
        run(server_command(&bin.join("pg_ctl"), as_postgres, dir)
            .arg("status")
            .arg("-D")
            .arg(dir.join("data")))
        .map(|o| o.status.success())
        .unwrap_or(false)
    })
}
