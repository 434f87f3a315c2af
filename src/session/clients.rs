//! Connected clients, for the admin console's `SHOW CLIENTS`.
//!
//! A client is registered once after login and removed when its session ends; its state
//! (idle, active, idle in transaction) is one relaxed atomic store per message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// Waiting for the client, outside a transaction.
pub const IDLE: u8 = 0;
/// Running a statement.
pub const ACTIVE: u8 = 1;
/// Waiting for the client inside a transaction.
pub const IDLE_IN_TRANSACTION: u8 = 2;

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    /// Registry id (increasing).
    pub id: u64,
    /// User it logged in as.
    pub user: String,
    /// Database it asked for.
    pub database: String,
    /// Its address.
    pub peer: Option<SocketAddr>,
    /// When it logged in.
    pub since: SystemTime,
    state: AtomicU8,
}

impl ClientEntry {
    /// Records the session's state.
    #[inline]
    pub fn set_state(&self, s: u8) {
        self.state.store(s, Ordering::Relaxed);
    }

    /// The state's name, as `pg_stat_activity` spells it.
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            ACTIVE => "active",
            IDLE_IN_TRANSACTION => "idle in transaction",
            _ => "idle",
        }
    }
}

/// Every connected client.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

/// Removes its client from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ClientRegistry>,
    /// The entry.
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.entry.id);
    }
}

impl ClientRegistry {
    /// Registers a logged-in client.
    pub fn register(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        peer: Option<SocketAddr>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            user: user.to_owned(),
            database: database.to_owned(),
            peer,
            since: SystemTime::now(),
            state: AtomicU8::new(IDLE),
        });
        self.clients.lock().insert(id, entry.clone());
        Registration {
            registry: self.clone(),
            entry,
        }
    }

    /// The connected clients, oldest first.
    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        self.clients.lock().values().cloned().collect()
    }
}
