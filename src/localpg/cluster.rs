//! One throwaway cluster's life: [`PgCluster`] created (directory, `initdb`, settings,
//! `pg_ctl start`), stopped, restarted and removed on drop, and the reaping of clusters
//! whose owning process died.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::thread;
use std::time::Duration;

use super::programs::{
    is_root, output_text, pg_bin_dir, postgres_ids, psql_at, run, server_command, stop_immediate,
    PG_CTL_TIMEOUT_SECS,
};
use super::LocalPgError;

/// Name prefix of every cluster directory under the temp dir.
const DIR_PREFIX: &str = "shardwire-pg-";
/// File in a cluster directory naming the process that owns it (absent for detached ones).
const OWNER_FILE: &str = "owner.pid";
/// How many ports to try when a picked free port gets taken before Postgres binds it.
const PORT_ATTEMPTS: usize = 5;
/// How many lines of `postgres.log` an error quotes.
const LOG_TAIL_LINES: usize = 20;

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Extra `postgresql.conf` settings (name, value as written in the file, e.g. `'on'`).
    pub extra_conf: Vec<(String, String)>,
    /// Serve TLS (`ssl = on`) with this certificate and key; plain connections still work.
    pub tls: Option<ClusterTls>,
}

/// A cluster's TLS certificate and key (PEM text), written into its directory at start.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// Certificate chain (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
}

/// A local Postgres cluster in a temp directory, stopped and removed on drop.
#[derive(Debug)]
pub struct PgCluster {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its directory: `data/`, `postgres.log` and the Unix socket.
    pub dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    remove_on_drop: bool,
}

impl PgCluster {
    /// Creates and starts a cluster (blocking, about a second): a fresh directory under the
    /// temp dir (owned by `postgres` when running as root), `initdb`, the settings for fast
    /// throwaway use in `postgresql.conf`, then `pg_ctl start -w`. With no port given, a free
    /// one is picked, and another one if it got taken before Postgres could bind it.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster, LocalPgError> {
        static REAP: Once = Once::new();
        REAP.call_once(reap_orphans);

        let bin = pg_bin_dir()?;
        let as_postgres = is_root();
        let owner = if as_postgres {
            Some(postgres_ids().ok_or(LocalPgError::NoPostgresUser)?)
        } else {
            None
        };
        let dir = make_cluster_dir(owner)?;
        // From here on, dropping `cluster` cleans up whatever was created.
        let mut cluster = PgCluster {
            port: opts.port.unwrap_or(0),
            dir,
            bin,
            as_postgres,
            remove_on_drop: true,
        };
        cluster.initdb()?;
        let mut extra_conf = opts.extra_conf.clone();
        if let Some(tls) = &opts.tls {
            extra_conf.extend(cluster.write_tls_files(tls, owner)?);
        }
        let conf_path = cluster.data_dir().join("postgresql.conf");
        let base_conf = fs::read_to_string(&conf_path).map_err(|source| LocalPgError::Io {
            action: "read",
            path: conf_path.clone(),
            source,
        })?;
        let attempts = if opts.port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = match opts.port {
                Some(p) => p,
                None => free_port()?,
            };
            let conf = format!("{base_conf}\n{}", cluster.settings(&extra_conf));
            fs::write(&conf_path, conf).map_err(|source| LocalPgError::Io {
                action: "write",
                path: conf_path.clone(),
                source,
            })?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < attempts && port_in_use(&e) => {
                    tracing::debug!(port = cluster.port, "port got taken; trying another");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the server (`pg_ctl stop -m fast -w`), keeping its data for [`Self::restart`].
    pub fn stop(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir();
        let out = self.pg_ctl(&[
            OsStr::new("stop"),
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-m"),
            OsStr::new("fast"),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(&PG_CTL_TIMEOUT_SECS.to_string()),
        ])?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LocalPgError::Stop {
                dir: data,
                log: self.log_path(),
                output: output_text(&out),
            })
        }
    }

    /// Starts the server again after [`Self::stop`], on the same port.
    pub fn restart(&self) -> Result<(), LocalPgError> {
        // A client may have borrowed the port as its ephemeral port meanwhile; that is
        // short-lived, so wait a little and try again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.pg_ctl_start() {
                Err(e) if attempt < PORT_ATTEMPTS && port_in_use(&e) => {
                    thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with `psql` (blocking) as user `postgres` on database `db`, stopping at the
    /// first error. Returns the output unaligned and without headers (`select 1` gives `1\n`).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, LocalPgError> {
        psql_at(&self.bin, self.port, db, sql)
    }

    /// The data directory (`<dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log (`<dir>/postgres.log`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Detaches the cluster from this value: it keeps running after drop and is no longer
    /// reaped as an orphan. Returns its port and directory.
    pub(super) fn detach(mut self) -> (u16, PathBuf) {
        self.remove_on_drop = false;
        let _ = fs::remove_file(self.dir.join(OWNER_FILE));
        (self.port, self.dir.clone())
    }

    fn initdb(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir();
        let out = run(self
            .command(&self.bin.join("initdb"), self.as_postgres)
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ]))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LocalPgError::Initdb {
                dir: data,
                output: output_text(&out),
                hint: if self.as_postgres {
                    " (running as root, initdb runs as `postgres`: the temp dir and its \
                     parents must be reachable by that user; try TMPDIR=/tmp)"
                } else {
                    ""
                },
            })
        }
    }

    /// Writes the TLS certificate and key into the cluster directory (mode 0600, owned by
    /// the server's user) and returns the settings that use them.
    fn write_tls_files(
        &self,
        tls: &ClusterTls,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<(String, String)>, LocalPgError> {
        let mut conf = vec![("ssl".to_string(), "on".to_string())];
        for (file, pem, setting) in [
            ("server.crt", &tls.cert_pem, "ssl_cert_file"),
            ("server.key", &tls.key_pem, "ssl_key_file"),
        ] {
            let path = self.dir.join(file);
            let io_err = |action, source| LocalPgError::Io {
                action,
                path: path.clone(),
                source,
            };
            fs::write(&path, pem).map_err(|e| io_err("write", e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err("set permissions of", e))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| io_err("chown to postgres", e))?;
            }
            let quoted = path.to_string_lossy().replace('\'', "''");
            conf.push((setting.to_string(), format!("'{quoted}'")));
        }
        Ok(conf)
    }

    /// The `postgresql.conf` settings appended after initdb's.
    fn settings(&self, extra: &[(String, String)]) -> String {
        let socket_dir = self.dir.to_string_lossy().replace('\'', "''");
        let mut s = String::from("# --- shardwire localpg ---\n");
        for (k, v) in [
            ("listen_addresses", "'127.0.0.1'".to_string()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", format!("'{socket_dir}'")),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("max_connections", "300".into()),
            ("max_prepared_transactions", "200".into()),
            ("shared_buffers", "64MB".into()),
            // Parallel query only adds noise on a small test machine.
            ("max_parallel_workers_per_gather", "0".into()),
        ] {
            s.push_str(&format!("{k} = {v}\n"));
        }
        for (k, v) in extra {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s
    }

    fn pg_ctl_start(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir();
        let log = self.log_path();
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let out = self.pg_ctl(&[
            OsStr::new("start"),
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-l"),
            log.as_os_str(),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(&PG_CTL_TIMEOUT_SECS.to_string()),
        ])?;
        if out.status.success() {
            return Ok(());
        }
        let err = LocalPgError::Start {
            port: self.port,
            dir: data.clone(),
            output: output_text(&out),
            log_tail: log_tail(&log, log_start),
            log: log.clone(),
        };
        // pg_ctl gave up waiting but the postmaster may still be around: make sure it is not.
        let _ = self.stop_immediate();
        Err(err)
    }

    fn stop_immediate(&self) -> Result<Output, LocalPgError> {
        stop_immediate(&self.bin, self.as_postgres, &self.data_dir())
    }

    fn pg_ctl(&self, args: &[&OsStr]) -> Result<Output, LocalPgError> {
        run(self
            .command(&self.bin.join("pg_ctl"), self.as_postgres)
            .args(args))
    }

    fn command(&self, program: &Path, as_postgres: bool) -> Command {
        server_command(program, as_postgres, &self.dir)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.remove_on_drop {
            return;
        }
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.stop_immediate();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates `<tmp>/shardwire-pg-<random>` (mode 0700, chowned to `owner`) and writes the
/// owner pid file into it.
fn make_cluster_dir(owner: Option<(u32, u32)>) -> Result<PathBuf, LocalPgError> {
    let tmp = std::env::temp_dir();
    let mut tries = 0;
    let dir = loop {
        tries += 1;
        let dir = tmp.join(format!("{DIR_PREFIX}{:016x}", rand::random::<u64>()));
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => continue,
            Err(source) => {
                return Err(LocalPgError::Io {
                    action: "create",
                    path: dir,
                    source,
                })
            }
        }
    };
    let io_err = |action, source| LocalPgError::Io {
        action,
        path: dir.clone(),
        source,
    };
    let setup = || -> Result<(), LocalPgError> {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err("set permissions of", e))?;
        fs::write(dir.join(OWNER_FILE), format!("{}\n", std::process::id()))
            .map_err(|e| io_err("write owner.pid in", e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| io_err("chown to postgres", e))?;
        }
        Ok(())
    };
    match setup() {
        Ok(()) => Ok(dir),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// The last lines of `log` written after byte `from` (or of the whole file if it shrank).
fn log_tail(log: &Path, from: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(log)?;
        let len = f.metadata()?.len();
        let start = if from <= len { from } else { 0 };
        f.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                "(the log is empty)".to_string()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

fn port_in_use(e: &LocalPgError) -> bool {
    match e {
        LocalPgError::Start { log_tail, .. } => {
            log_tail.contains("Address already in use")
                || log_tail.contains("could not bind IPv4 address")
                || log_tail.contains("could not create any TCP/IP sockets")
        }
        _ => false,
    }
}

fn free_port() -> Result<u16, LocalPgError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LocalPgError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(LocalPgError::NoFreePort)?
        .port();
    Ok(port)
}

/// Stops the cluster in `dir` if it runs and removes `dir`, if `dir` looks like ours.
pub(super) fn remove_cluster_dir(
    bin: Option<&Path>,
    as_postgres: bool,
    dir: &Path,
) -> Result<(), LocalPgError> {
    let ours = dir
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with(DIR_PREFIX));
    if !ours {
        return Ok(());
    }
    let data = dir.join("data");
    if let Some(bin) = bin {
        if data.join("postmaster.pid").exists() {
            let _ = stop_immediate(bin, as_postgres, &data);
        }
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LocalPgError::Io {
            action: "remove",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes clusters whose owning process is gone (best effort, never fails).
pub(super) fn reap_orphans() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let bin = pg_bin_dir().ok();
    let as_postgres = is_root();
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_ours {
            continue;
        }
        let Ok(pid) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue; // detached, or not ours to judge
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        if pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        tracing::debug!(dir = %dir.display(), pid, "removing orphaned local cluster");
        let _ = remove_cluster_dir(bin.as_deref(), as_postgres, &dir);
    }
}
