//! Per-shard backend connection pools (transaction pooling by default).
//!
//! A pool is a semaphore of `size` permits plus a stack of idle connections. A checkout
//! waits at most `checkout_timeout` for a permit, then reuses an idle connection of the
//! current generation or opens a new one. Any I/O failure on a shard bumps the pool's
//! generation so idle connections made before it are dropped instead of reused: after a
//! shard restart the proxy reconnects by itself on the next checkout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::BackendConn;
use crate::error::ProxyError;
use crate::shardmap::{PoolSettings, ShardInfo};

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
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
}

/// A pool's state, for the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// A pool for shard `index`.
    pub fn new(index: usize, info: ShardInfo, settings: PoolSettings) -> Arc<Self> {
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
            resumed: tokio::sync::Notify::new(),
        })
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
                        self.mark_failed();
                        continue;
                    }
                    break Some(c);
                }
                Some(_) => continue, // made before a failure: drop it
                None => break None,
            }
        };
        let gen = self.generation.load(Ordering::Acquire);
        let conn = match reused {
            Some(c) => c,
            None => {
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
                        c
                    }
                    Err(e) => {
                        self.mark_failed();
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
        self.idle.lock().clear();
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
                self.pool.mark_failed();
            } else if c.ready_status != b'I' {
                tracing::warn!(shard = %self.pool.info.name, status = %(c.ready_status as char), "closing a released connection that is still in a transaction");
            } else if !c.discard && c.generation == self.pool.generation.load(Ordering::Acquire) {
                self.pool.idle.lock().push(c);
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
