//! The Postgres programs: where the binaries are, running server-side ones (as `postgres`
//! when root), `psql` against any local server, and `pg_ctl stop -m immediate`.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::LocalPgError;

/// Seconds `pg_ctl` waits for the server to start or stop.
pub(super) const PG_CTL_TIMEOUT_SECS: u32 = 60;

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

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` OS user.
pub(super) fn postgres_ids() -> Option<(u32, u32)> {
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

/// A command for a server-side program, run as `postgres` via `runuser` when asked, with
/// the cluster directory as working directory (the caller's may not be readable by
/// `postgres`, and initdb/pg_ctl insist on a readable one).
pub(super) fn server_command(program: &Path, as_postgres: bool, cwd: &Path) -> Command {
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
pub(super) fn run(cmd: &mut Command) -> Result<Output, LocalPgError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| LocalPgError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })
}

pub(super) fn output_text(out: &Output) -> String {
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

pub(super) fn stop_immediate(
    bin: &Path,
    as_postgres: bool,
    data: &Path,
) -> Result<Output, LocalPgError> {
    let cwd = data.parent().unwrap_or(data);
    run(server_command(&bin.join("pg_ctl"), as_postgres, cwd)
        .arg("stop")
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "-t"])
        .arg(PG_CTL_TIMEOUT_SECS.to_string()))
}
