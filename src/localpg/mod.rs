//! Throwaway local Postgres clusters, for `shardwire quickstart` and the tests.
//!
//! A cluster lives in its own directory under the system temp dir (name prefix
//! `shardwire-pg-`): `data/` is the data directory, `postgres.log` the server log, and the
//! Unix socket sits in the directory itself. The server listens on 127.0.0.1 only, trusts
//! every local connection (`-A trust`, superuser `postgres`) and runs with durability off
//! (`fsync=off`), so it is fast and must never hold data anyone cares about.
//!
//! When the process runs as root, Postgres refuses to run as root, so every server-side
//! command (`initdb`, `pg_ctl`) runs as the `postgres` OS user through `runuser`.
//!
//! A [`PgCluster`] is stopped (`-m immediate`) and removed when dropped. Clusters whose
//! owning process died without dropping them (killed by a test timeout, say) are found by
//! the `owner.pid` file in their directory and removed the next time this process starts a
//! cluster or runs [`down_detached`].
//!
//! The pieces: `programs` finds the Postgres binaries and runs them (`initdb`, `pg_ctl`,
//! `psql`), `cluster` is one [`PgCluster`]'s life (and the reaping of orphans), `many` starts
//! several at once, or detached for `up`/`down`.

mod cluster;
mod many;
mod programs;

pub use cluster::{ClusterOptions, ClusterTls, PgCluster};
pub use many::{down_detached, start_many, up_detached};
pub use programs::{pg_bin_dir, psql_at};

use std::io;
use std::path::PathBuf;

/// Why a local cluster could not be set up, started, stopped or queried.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No Postgres installation was found.
    #[error(
        "initdb not found: install PostgreSQL (apt-get install -y postgresql) or set PG_BIN \
         to the directory holding initdb, pg_ctl and psql"
    )]
    NotInstalled,
    /// `$PG_BIN` is set but does not hold `initdb`.
    #[error(
        "PG_BIN={0} has no initdb in it: point PG_BIN at the directory holding initdb, pg_ctl \
         and psql (e.g. /usr/lib/postgresql/15/bin), or unset it"
    )]
    BadPgBin(PathBuf),
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, but there is no `postgres` OS user to run Postgres as: install \
         PostgreSQL from packages (it creates the user) or `useradd --system postgres`, or run \
         as a non-root user"
    )]
    NoPostgresUser,
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A program could not be run at all.
    #[error("cannot run {program}: {source} (check the PostgreSQL installation, or set PG_BIN)")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `initdb` failed.
    #[error(
        "initdb into {} failed: {output}{hint}",
        dir.display()
    )]
    Initdb {
        /// The data directory.
        dir: PathBuf,
        /// initdb's output.
        output: String,
        /// What to try.
        hint: &'static str,
    },
    /// The server did not start.
    #[error(
        "postgres did not start on 127.0.0.1:{port} (data dir {}): {output}\n\
         --- last lines of {} ---\n{log_tail}\n---\n\
         fix the cause above (a busy port: pass another port or leave it unset; \
         out of memory or semaphores: stop other clusters)",
        dir.display(),
        log.display()
    )]
    Start {
        /// The port it was to listen on.
        port: u16,
        /// The data directory.
        dir: PathBuf,
        /// pg_ctl's output.
        output: String,
        /// The server log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// `pg_ctl stop` failed.
    #[error("stopping the postgres in {} failed: {output} (see {})", dir.display(), log.display())]
    Stop {
        /// The data directory.
        dir: PathBuf,
        /// The server log file.
        log: PathBuf,
        /// pg_ctl's output.
        output: String,
    },
    /// A `psql` command failed.
    #[error("psql on 127.0.0.1:{port}, database {db:?} failed: {output}")]
    Psql {
        /// The server port.
        port: u16,
        /// The database.
        db: String,
        /// psql's output.
        output: String,
    },
    /// No free port could be found.
    #[error("cannot find a free TCP port on 127.0.0.1: {0}")]
    NoFreePort(#[source] io::Error),
    /// The state file written by [`up_detached`] is damaged.
    #[error(
        "{}:{line}: expected `PORT CLUSTER_DIR`, found {text:?}: fix or delete the line \
         (and stop that cluster by hand)",
        path.display()
    )]
    BadStateFile {
        /// The state file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A thread starting a cluster panicked.
    #[error("a thread starting a cluster panicked (a bug in shardwire::localpg)")]
    ThreadPanicked,
}

#[cfg(test)]
mod tests {
    use super::many::{read_state, STATE_FILE};
    use super::*;
    use std::fs;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn cluster_lifecycle() {
        let c = PgCluster::start(ClusterOptions::default()).expect("start");
        let dir = c.dir.clone();
        assert!(c.data_dir().join("PG_VERSION").exists());
        assert_eq!(c.psql("postgres", "select 1").expect("psql").trim(), "1");
        assert_eq!(
            c.url("x"),
            format!("postgres://postgres@127.0.0.1:{}/x", c.port)
        );
        let err = c.psql("postgres", "select nope").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        c.stop().expect("stop");
        assert!(c.psql("postgres", "select 1").is_err());
        c.restart().expect("restart");
        assert_eq!(
            c.psql("postgres", "show fsync").expect("psql").trim(),
            "off"
        );
        drop(c);
        assert!(!dir.exists(), "drop must remove {}", dir.display());
    }

    #[test]
    fn fixed_port_in_use_reports_log() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let err = PgCluster::start(ClusterOptions {
            port: Some(port),
            extra_conf: vec![],
            tls: None,
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("did not start"), "{msg}");
        assert!(msg.contains("Address already in use"), "{msg}");
    }

    #[test]
    fn detached_up_and_down() {
        let state = tempfile::tempdir().expect("tempdir");
        let ports = up_detached(2, state.path()).expect("up");
        assert_eq!(ports.len(), 2);
        assert_ne!(ports[0], ports[1]);
        let listed = read_state(&state.path().join(STATE_FILE)).expect("state");
        let bin = pg_bin_dir().expect("bin");
        for &p in &ports {
            assert_eq!(
                psql_at(&bin, p, "postgres", "select 2")
                    .expect("psql")
                    .trim(),
                "2"
            );
        }
        // Idempotent: the same clusters come back.
        assert_eq!(up_detached(2, state.path()).expect("up again"), ports);
        down_detached(state.path()).expect("down");
        for (p, dir) in &listed {
            assert!(!dir.exists());
            assert!(psql_at(&bin, *p, "postgres", "select 1").is_err());
        }
        assert!(!state.path().join(STATE_FILE).exists());
        down_detached(state.path()).expect("down again is a no-op");
    }

    #[test]
    fn bin_dir_found() {
        let bin = pg_bin_dir().expect("postgres installed");
        assert!(bin.join("pg_ctl").is_file());
    }

    #[test]
    fn state_file_errors_name_the_line() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(d.path().join(STATE_FILE), "5432 /tmp/x\nbogus\n").expect("write");
        let err = read_state(&d.path().join(STATE_FILE)).unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
    }
}
