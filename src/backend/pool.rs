//! Per-shard backend connection pools (transaction pooling by default).
//!
//! A pool is a semaphore of `size` permits plus a stack of idle connections. A checkout
//! waits at most `checkout_timeout` for a permit, then reuses an idle connection of the
//! current generation or opens a new one. Any I/O failure on a shard bumps the pool's
//! generation so idle connections made before it are dropped instead of reused: after a
//! shard restart the proxy reconnects by itself on the next checkout.
//!
//! Reconnection backs off: after a failed connect the shard is marked down for 100 ms,
//! doubling with every further failure up to 2 s. While it is down, checkouts that would open
//! a new connection fail at once with the last error (no pile-up of connection attempts
//! against a dead server); the first checkout after the wait tries again, and a success
//! clears the backoff.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::conn::BackendConn;
use crate::error::ProxyError;
use crate::sharding::shard::ShardInfo;
use crate::sharding::shardmap::PoolSettings;

/// The pool of one shard.
pub struct ShardPool {
    /// Shard index in the map.
    pub index: usize,
    /// Connection details.
    pub info: ShardInfo,
    /// The shard's host, shared (CancelRequest targets keep it without copying).
    pub host: Arc<str>,
    settings: PoolSettings,
    idle: Mutex<Vec<BackendConn>>,
    permits: Arc<Semaphore>,
    generation: AtomicU64,
    waiting: AtomicUsize,
    /// Reconnection backoff after failed connects.
    backoff: Mutex<Backoff>,
    paused: std::sync::atomic::AtomicBool,
    warned_superuser: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// Request latency on this shard (`shardwire_shard_latency_seconds`), shared by the
    /// shard's pools (one per user and the control plane's).
    pub latency: Arc<crate::backend::latency::LatencyHistogram>,
    /// Open connections by backend pid: when opened and whether checked out (`SHOW SERVERS`).
    open: Mutex<std::collections::HashMap<i32, ServerConn>>,
}

/// The reconnection backoff of a pool.
#[derive(Debug, Default)]
struct Backoff {
    /// Consecutive failed connects.
    failures: u32,
    /// No new connection is tried before this.
    until: Option<std::time::Instant>,
    /// The last connect error.
    last_error: String,
}

/// First wait after a failed connect; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest wait between connection attempts to a down shard.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// One open connection of a pool, for `SHOW SERVERS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConn {
    /// Backend process id.
    pub pid: i32,
    /// When it was opened.
    pub since: std::time::SystemTime,
    /// Checked out by a session (else idle in the pool).
    pub in_use: bool,
}

/// A pool's state, for the admin console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Most connections.
    pub size: usize,
    /// Connections checked out now.
    pub in_use: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Checkouts waiting for a free connection.
    pub waiting: usize,
}

/// A checked-out connection; give it back with [`PooledConn::release`]. Dropping it
/// without release closes the connection (its state is unknown).
pub struct PooledConn {
    conn: Option<BackendConn>,
    pool: Arc<ShardPool>,
    _permit: OwnedSemaphorePermit,
}

impl ShardPool {
    /// A connection outside the pool (not counted against its size, never pooled), for a
    /// control step that must not wait for a slot: finishing a decided two-phase commit.
    pub async fn connect_unpooled(
        &self,
    ) -> Result<BackendConn, crate::backend::conn::BackendError> {
        BackendConn::connect(
            self.index,
            &self.info,
            self.settings.connect_timeout,
            self.settings.statement_timeout,
        )
        .await
    }

    /// A pool for shard `index`, recording latency in `latency`.
    pub fn new(
        index: usize,
        info: ShardInfo,
        settings: PoolSettings,
        latency: Arc<crate::backend::latency::LatencyHistogram>,
    ) -> Arc<Self> {
        Arc::new(ShardPool {
            index,
            permits: Arc::new(Semaphore::new(settings.size)),
            host: info.host.as_str().into(),
            info,
            settings,
            idle: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            paused: std::sync::atomic::AtomicBool::new(false),
            warned_superuser: std::sync::atomic::AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            open: Mutex::new(std::collections::HashMap::new()),
            latency,
            backoff: Mutex::new(Backoff::default()),
        })
    }

    /// While the shard is down and its backoff runs: the error a checkout gets at once.
    fn backing_off(&self) -> Option<ProxyError> {
        let b = self.backoff.lock();
        let until = b.until?;
        let now = std::time::Instant::now();
        if now >= until {
            return None;
        }
        Some(ProxyError::ShardUnavailable {
            shard: self.info.name.clone(),
            reason: format!(
                "{}:{}: {} (down; next connection attempt in {} ms)",
                self.info.host,
                self.info.port,
                b.last_error,
                (until - now).as_millis()
            ),
        })
    }

    fn connect_failed(&self, error: &str) {
        let mut b = self.backoff.lock();
        let wait = FIRST_BACKOFF
            .saturating_mul(1u32 << b.failures.min(5))
            .min(MAX_BACKOFF);
        b.failures = b.failures.saturating_add(1);
        b.until = Some(std::time::Instant::now() + wait);
        b.last_error = error.to_owned();
    }

    /// Logs once per pool when its login is a superuser: its clients can then do anything
    /// on the shard's server (`COPY … TO PROGRAM`, reading files, the proxy's control
    /// tables).
    fn warn_if_superuser(&self, c: &BackendConn) {
        let superuser = c
            .params
            .iter()
            .any(|(k, v)| k == "is_superuser" && v == "on");
        if superuser && !self.warned_superuser.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                shard = %self.info.name,
                role = %self.info.user,
                "the shard login is a superuser: clients running as it can do anything on the \
                 shard's server; give the map's users a non-superuser `shard_user` (see config/roles.sql)"
            );
        }
    }

    fn connected(&self) {
        let mut b = self.backoff.lock();
        if b.failures > 0 {
            tracing::info!(shard = %self.info.name, after = b.failures, "shard reachable again");
        }
        *b = Backoff::default();
    }

    /// Whether the shard is in reconnection backoff (down).
    pub fn is_down(&self) -> bool {
        self.backoff
            .lock()
            .until
            .is_some_and(|u| std::time::Instant::now() < u)
    }

    /// The pool's open connections, by pid.
    pub fn connections(&self) -> Vec<ServerConn> {
        // "In use" is worked out here, from the idle list, rather than recorded at every
        // checkout and release: those are per transaction, this is per admin query.
        let idle: Vec<i32> = self.idle.lock().iter().map(|c| c.pid).collect();
        let mut v: Vec<ServerConn> = self
            .open
            .lock()
            .values()
            .map(|c| ServerConn {
                in_use: !idle.contains(&c.pid),
                ..*c
            })
            .collect();
        v.sort_by_key(|c| c.pid);
        v
    }

    fn note_closed(&self, pid: i32) {
        self.open.lock().remove(&pid);
    }

    /// Pauses (or resumes) the shard: while paused, new checkouts wait; connections already
    /// checked out (transactions in flight) are not touched.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Whether the shard is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// The pool's current state.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.settings.size,
            in_use: self
                .settings
                .size
                .saturating_sub(self.permits.available_permits()),
            idle: self.idle.lock().len(),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Takes a connection, waiting at most the configured checkout timeout.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, ProxyError> {
        // PAUSE: wait (without a limit, as PgBouncer does) until RESUME.
        while self.is_paused() {
            let resumed = self.resumed.notified();
            if !self.is_paused() {
                break;
            }
            resumed.await;
        }
        let timeout = self.settings.checkout_timeout;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                // Counted while waiting, also if the checkout is abandoned.
                struct Waiting<'a>(&'a AtomicUsize);
                impl Drop for Waiting<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let _w = Waiting(&self.waiting);
                tokio::time::timeout(timeout, self.permits.clone().acquire_owned()).await
            }
        };
        let permit = match permit {
            Ok(Ok(p)) => p,
            _ => {
                return Err(ProxyError::PoolTimeout {
                    shard: self.info.name.clone(),
                    secs: timeout.as_secs().max(1),
                    size: self.settings.size,
                })
            }
        };
        let gen = self.generation.load(Ordering::Acquire);
        let reused = loop {
            let popped = self.idle.lock().pop();
            match popped {
                Some(mut c) if c.generation == gen => {
                    if c.is_stale() {
                        // The shard closed it (restart, idle timeout): the others likely too.
                        tracing::info!(shard = %self.info.name, "discarding stale idle connections");
                        self.note_closed(c.pid);
                        self.mark_failed();
                        continue;
                    }
                    break Some(c);
                }
                Some(c) => {
                    // Made before a failure: drop it.
                    self.note_closed(c.pid);
                    continue;
                }
                None => break None,
            }
        };
        let gen = self.generation.load(Ordering::Acquire);
        let conn = match reused {
            Some(c) => c,
            None => {
                if let Some(err) = self.backing_off() {
                    return Err(err);
                }
                match BackendConn::connect(
                    self.index,
                    &self.info,
                    self.settings.connect_timeout,
                    self.settings.statement_timeout,
                )
                .await
                {
                    Ok(mut c) => {
                        c.generation = gen;
                        self.connected();
                        self.warn_if_superuser(&c);
                        self.open.lock().insert(
                            c.pid,
                            ServerConn {
                                pid: c.pid,
                                since: std::time::SystemTime::now(),
                                in_use: true,
                            },
                        );
                        c
                    }
                    Err(e) => {
                        self.mark_failed();
                        self.connect_failed(&e.to_string());
                        tracing::warn!(shard = %self.info.name, error = %e, "connect to shard failed");
                        return Err(ProxyError::ShardUnavailable {
                            shard: self.info.name.clone(),
                            reason: format!("{}:{}: {e}", self.info.host, self.info.port),
                        });
                    }
                }
            }
        };
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Records that the shard failed: idle connections made so far will be discarded.
    pub fn mark_failed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let dropped: Vec<BackendConn> = std::mem::take(&mut *self.idle.lock());
        let mut open = self.open.lock();
        for c in &dropped {
            open.remove(&c.pid);
        }
    }
}

impl PooledConn {
    /// Returns the connection to the pool; a broken one is closed instead (and the shard's
    /// idle connections discarded), and so is one that is not idle at a transaction boundary
    /// (its last ReadyForQuery said `T`/`E`) or was marked for discarding — a connection
    /// never goes back to the pool inside a transaction.
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            if c.broken {
                self.pool.note_closed(c.pid);
                self.pool.mark_failed();
            } else if c.ready_status != b'I' {
                tracing::warn!(shard = %self.pool.info.name, status = %(c.ready_status as char), "closing a released connection that is still in a transaction");
                self.pool.note_closed(c.pid);
            } else if !c.discard && c.generation == self.pool.generation.load(Ordering::Acquire) {
                self.pool.idle.lock().push(c);
            } else {
                self.pool.note_closed(c.pid);
            }
        }
    }

    /// The shard's pool.
    pub fn pool(&self) -> &Arc<ShardPool> {
        &self.pool
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.note_closed(c.pid);
            if c.broken {
                self.pool.mark_failed();
            }
        }
    }
}

impl std::ops::Deref for PooledConn {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        match &self.conn {
            Some(c) => c,
            None => unreachable!("connection is present until release or drop"),
        }
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut BackendConn {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable!("connection is present until release or drop"),
        }
    }
}
