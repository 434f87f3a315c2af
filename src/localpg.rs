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

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::thread;
use std::time::Duration;

/// Name prefix of every cluster directory under the temp dir.
const DIR_PREFIX: &str = "shardwire-pg-";
/// File in a cluster directory naming the process that owns it (absent for detached ones).
const OWNER_FILE: &str = "owner.pid";
/// State file written by [`up_detached`].
const STATE_FILE: &str = "clusters.txt";
/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: u32 = 60;
/// How many ports to try when a picked free port gets taken before Postgres binds it.
const PORT_ATTEMPTS: usize = 5;
/// How many lines of `postgres.log` an error quotes.
const LOG_TAIL_LINES: usize = 20;

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

/// Where the Postgres binaries are: `$PG_BIN` if set, else the highest
/// `/usr/lib/postgresql/<ver>/bin`, else the directory of `initdb` on `PATH`.
pub fn pg_bin_dir() -> Result<PathBuf, LocalPgError> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(LocalPgError::BadPgBin(dir))
        };
    }
    if let Some(dir) = debian_bin_dir(Path::new("/usr/lib/postgresql")) {
        return Ok(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() {
                // Follow a symlink (e.g. /usr/local/bin/initdb) to the real bin dir, where
                // pg_ctl and postgres are guaranteed to sit next to it.
                let real = fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| d.join("pg_ctl").is_file());
                return Ok(real.unwrap_or(dir));
            }
        }
    }
    Err(LocalPgError::NotInstalled)
}

/// The highest `<root>/<version>/bin` holding `initdb` (Debian/Ubuntu layout).
fn debian_bin_dir(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in fs::read_dir(root).ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(version) = name
            .split('.')
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("initdb").is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

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
    fn detach(mut self) -> (u16, PathBuf) {
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

/// Runs SQL with `psql` against a server on 127.0.0.1 (any cluster, not only ours), as user
/// `postgres`, stopping at the first error; output is unaligned and without headers.
/// `bin` is the directory from [`pg_bin_dir`]; `psql` on `PATH` is used when it has none.
pub fn psql_at(bin: &Path, port: u16, db: &str, sql: &str) -> Result<String, LocalPgError> {
    let local = bin.join("psql");
    let program = if local.is_file() {
        local
    } else {
        PathBuf::from("psql")
    };
    let out = run(Command::new(program)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LocalPgError::Psql {
            port,
            db: db.to_string(),
            output: output_text(&out),
        })
    }
}

// ---------------------------------------------------------------------------------------
// helpers

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` OS user.
fn postgres_ids() -> Option<(u32, u32)> {
    let name = CString::new("postgres").ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for an out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the duration of the call and `buf` is as long as
    // the length passed; getpwnam_r is thread-safe.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
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

/// A command for a server-side program, run as `postgres` via `runuser` when asked, with
/// the cluster directory as working directory (the caller's may not be readable by
/// `postgres`, and initdb/pg_ctl insist on a readable one).
fn server_command(program: &Path, as_postgres: bool, cwd: &Path) -> Command {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd)
        .env("LC_ALL", "C")
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST");
    cmd
}

/// Runs a command to completion with stdin closed, capturing its output.
fn run(cmd: &mut Command) -> Result<Output, LocalPgError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| LocalPgError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })
}

fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    if !err.is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(err);
    }
    if s.is_empty() {
        s = format!("exited with {}", out.status);
    }
    s
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

fn stop_immediate(bin: &Path, as_postgres: bool, data: &Path) -> Result<Output, LocalPgError> {
    let cwd = data.parent().unwrap_or(data);
    run(server_command(&bin.join("pg_ctl"), as_postgres, cwd)
        .arg("stop")
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "-t"])
        .arg(PG_CTL_TIMEOUT_SECS.to_string()))
}

fn read_state(path: &Path) -> Result<Vec<(u16, PathBuf)>, LocalPgError> {
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

/// Stops the cluster in `dir` if it runs and removes `dir`, if `dir` looks like ours.
fn remove_cluster_dir(
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
fn reap_orphans() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
