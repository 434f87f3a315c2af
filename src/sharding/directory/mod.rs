//! The key directory: key → shard entries for `strategy: directory` tables.
//!
//! The entries live in a real Postgres table (`directory: { shard, table }` in the map,
//! default `shardwire.shardwire_directory` on the first shard) so that every proxy instance sees the
//! same map. Each proxy keeps the whole directory in memory ([`Directory`]) and a control
//! task ([`run`]) keeps it current:
//!
//! - at start it creates the table if absent, seeds the map's static `entries` (existing
//!   rows win), and loads every entry;
//! - it `LISTEN`s on [`CHANNEL`]; every change (assign, move, fallback record) is written
//!   with a `pg_notify` carrying the key in the same transaction, so other proxies reload
//!   that key as soon as it commits (well under a second on a LAN);
//! - fallback placements of first writes are recorded through a bounded queue
//!   (`INSERT … ON CONFLICT DO NOTHING`: every proxy computes the same fallback shard, so a
//!   race between proxies records one value);
//! - if the control connection drops it reconnects with backoff and reloads everything.
//!
//! Keys are stored as their Postgres text form ([`KeyValue`]'s `Display`), so one directory
//! serves every directory table: a tenant's rows in all of them live on one shard.

pub mod admin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::RwLock;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::{AsyncMessage, Client};

use crate::sharding::keys::KeyValue;
use crate::sharding::shard::ShardInfo;

/// The LISTEN/NOTIFY channel directory changes are announced on.
pub const CHANNEL: &str = "shardwire_directory";
/// Default directory table name: in the control schema, out of clients' reach (the
/// shards' URL login owns it; application roles have no rights in schema `shardwire`).
pub const DEFAULT_TABLE: &str = "shardwire.shardwire_directory";
/// Most fallback placements waiting to be recorded (more are recorded on a later write).
const RECORD_QUEUE: usize = 4096;
/// Longest a statement waits for a directory key move to finish.
pub const MOVE_WAIT: Duration = Duration::from_secs(30);
/// Longest statements wait for a move another proxy announced.
pub const REMOTE_MOVE_HOLD: Duration = Duration::from_secs(10);
/// Prefix of a notification that announces a move (`move\t<key>`); a plain key payload
/// says the key's entry changed.
pub const MOVE_ANNOUNCE: &str = "move\t";

/// Why the directory could not be used or changed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A shard could not be reached or refused a statement of a directory operation.
    #[error("directory operation on shard {shard} (directory table {table}): {message}")]
    Db {
        /// Table name.
        table: String,
        /// Shard name.
        shard: String,
        /// What failed: the server's message when it sent one, else the driver's error.
        message: String,
    },
    /// An operation that cannot be done (unknown shard, key already assigned, …).
    #[error("{0}")]
    Refused(String),
}

/// The in-memory directory of one proxy.
#[derive(Debug)]
pub struct Directory {
    /// Index of the shard holding the directory table.
    pub shard: usize,
    /// The directory table's name.
    pub table: String,
    /// Static entries from the map (key text, shard), seeded into the table.
    pub statics: Vec<(String, usize)>,
    entries: RwLock<HashMap<String, usize>>,
    loaded: AtomicBool,
    record_tx: parking_lot::Mutex<Option<mpsc::Sender<(String, usize)>>>,
    moving: AtomicUsize,
    /// Moves announced by other proxies: key and when the hold expires.
    remote: parking_lot::Mutex<Vec<(String, std::time::Instant)>>,
    remote_count: AtomicUsize,
    moved: Notify,
}

/// The result of a directory lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The key's entry.
    Entry(usize),
    /// No entry: the table's fallback decides.
    Missing,
    /// The directory has not been loaded yet (its shard is unreachable).
    NotLoaded,
}

impl Directory {
    /// An empty, not yet loaded directory.
    pub fn new(shard: usize, table: String, statics: Vec<(String, usize)>) -> Directory {
        Directory {
            shard,
            table,
            statics,
            entries: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            record_tx: parking_lot::Mutex::new(None),
            moving: AtomicUsize::new(0),
            remote: parking_lot::Mutex::new(Vec::new()),
            remote_count: AtomicUsize::new(0),
            moved: Notify::new(),
        }
    }

    /// The entry for `key`.
    pub fn get(&self, key: &KeyValue) -> Lookup {
        if !self.loaded.load(Ordering::Acquire) {
            return Lookup::NotLoaded;
        }
        // Text keys (the usual tenant ids) are looked up without a copy; the text form of
        // other types is built before the lock is taken.
        let text: std::borrow::Cow<'_, str> = match key {
            KeyValue::Text(t) => t.as_str().into(),
            other => other.to_string().into(),
        };
        match self.entries.read().get(text.as_ref()) {
            Some(s) => Lookup::Entry(*s),
            None => Lookup::Missing,
        }
    }

    /// Whether the directory has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Notes a fallback placement made by a write: cached at once and queued to be recorded
    /// in the directory table (dropped when the queue is full; a later write retries).
    pub fn record(&self, key: &KeyValue, shard: usize) {
        let text = key.to_string();
        let queued = match &*self.record_tx.lock() {
            Some(tx) => tx.try_send((text.clone(), shard)).is_ok(),
            None => false,
        };
        if queued {
            self.entries.write().insert(text, shard);
        }
    }

    /// Sets the cached entry (after a change this proxy committed).
    pub fn set(&self, key: &str, shard: Option<usize>) {
        let mut e = self.entries.write();
        match shard {
            Some(s) => e.insert(key.to_owned(), s),
            None => e.remove(key),
        };
    }

    /// Every cached entry, sorted by key.
    pub fn snapshot(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .entries
            .read()
            .iter()
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        v.sort();
        v
    }

    /// Whether a key move is running, in this proxy or announced by another one
    /// (statements outside transactions wait). One atomic load when none is.
    pub fn moving(&self) -> bool {
        if self.moving.load(Ordering::Acquire) > 0 {
            return true;
        }
        if self.remote_count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut r = self.remote.lock();
        let now = std::time::Instant::now();
        r.retain(|(_, until)| *until > now);
        self.remote_count.store(r.len(), Ordering::Release);
        !r.is_empty()
    }

    /// Another proxy announced a move of `key`: hold statements back until it switches the
    /// entry, at most [`REMOTE_MOVE_HOLD`] (a mover that died must not stall everyone).
    fn remote_move_started(&self, key: &str) {
        let mut r = self.remote.lock();
        r.push((key.to_owned(), std::time::Instant::now() + REMOTE_MOVE_HOLD));
        self.remote_count.store(r.len(), Ordering::Release);
    }

    /// The entry of `key` changed: a move of it announced by another proxy is over.
    fn remote_move_ended(&self, key: &str) {
        let mut r = self.remote.lock();
        r.retain(|(k, _)| k != key);
        self.remote_count.store(r.len(), Ordering::Release);
        drop(r);
        self.moved.notify_waiters();
    }

    /// Waits until no move runs, at most [`MOVE_WAIT`]; false on timeout.
    pub async fn wait_moves(&self) -> bool {
        let deadline = tokio::time::Instant::now() + MOVE_WAIT;
        while self.moving() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Woken when a move ends; rechecked regularly for holds that expire.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.moved.notified()).await;
        }
        true
    }

    /// Marks a move as running until the guard drops.
    pub fn begin_move(self: &Arc<Self>) -> MoveGuard {
        self.moving.fetch_add(1, Ordering::AcqRel);
        MoveGuard(self.clone())
    }

    /// Replaces every entry (a full load).
    fn replace(&self, rows: HashMap<String, usize>) {
        *self.entries.write() = rows;
        self.loaded.store(true, Ordering::Release);
    }
}

/// Holds statements on directory tables back while a move runs (see [`Directory::begin_move`]).
pub struct MoveGuard(Arc<Directory>);

impl Drop for MoveGuard {
    fn drop(&mut self) {
        self.0.moving.fetch_sub(1, Ordering::AcqRel);
        self.0.moved.notify_waiters();
    }
}

/// Creates the directory table if absent and seeds the static entries (existing rows win).
pub async fn ensure_table(
    c: &Client,
    dir: &Directory,
    shard_names: &[String],
) -> Result<(), tokio_postgres::Error> {
    let t = crate::quote::qualified(&dir.table);
    if dir.table == DEFAULT_TABLE {
        // The schema, and the table older proxies made by default in `public`, moved with
        // its rows (a map naming `shardwire_directory` itself keeps using that one).
        crate::sharding::control_schema::prepare(c).await?;
        c.batch_execute(
            "DO $sw$ BEGIN IF to_regclass('public.shardwire_directory') IS NOT NULL \
             AND to_regclass('shardwire.shardwire_directory') IS NULL THEN \
             ALTER TABLE public.shardwire_directory SET SCHEMA shardwire; END IF; END $sw$",
        )
        .await?;
    }
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (key text PRIMARY KEY, shard text NOT NULL, \
         moving_from text, updated_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    for (k, s) in &dir.statics {
        let name = shard_names.get(*s).map(String::as_str).unwrap_or("");
        c.execute(
            &format!("INSERT INTO {t} (key, shard) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"),
            &[k, &name],
        )
        .await?;
    }
    Ok(())
}

/// Every entry of the directory table as stored: (key text, shard name).
pub async fn entries(
    c: &Client,
    dir: &Directory,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT key, shard FROM {}",
        crate::quote::qualified(&dir.table)
    );
    let rows = c.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Loads every entry (entries naming a shard the map does not have are skipped, logged).
async fn load_all(
    c: &Client,
    dir: &Directory,
    shard_names: &[String],
) -> Result<HashMap<String, usize>, tokio_postgres::Error> {
    let rows = entries(c, dir).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (k, s) in rows {
        match shard_names.iter().position(|n| *n == s) {
            Some(i) => {
                out.insert(k, i);
            }
            None => {
                tracing::warn!(key = %k, shard = %s, "directory entry names an unknown shard; ignored")
            }
        }
    }
    Ok(out)
}

/// Whether backend `pid` (the sender of a notification) runs as this connection's role,
/// the control role. Notifications are hints: entries are always read from the table, and
/// only a move hold (which delays statements) is taken on a notification's word.
async fn announced_by_control(c: &Client, pid: i32) -> Result<bool, tokio_postgres::Error> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND usename = current_user)",
        &[&pid],
    )
    .await?
    .try_get(0)
}

/// Reloads one key's entry.
async fn load_key(
    c: &Client,
    dir: &Directory,
    key: &str,
    shard_names: &[String],
) -> Result<(), tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!(
                "SELECT shard FROM {} WHERE key = $1",
                crate::quote::qualified(&dir.table)
            ),
            &[&key],
        )
        .await?;
    let shard = row.and_then(|r| {
        let s: String = r.get(0);
        shard_names.iter().position(|n| *n == s)
    });
    dir.set(key, shard);
    Ok(())
}

/// Keeps `dir` current for as long as the proxy runs (see the module docs). `ready` is
/// notified after every full load.
pub async fn run(
    dir: Arc<Directory>,
    info: ShardInfo,
    shard_names: Vec<String>,
    connect_timeout: Duration,
    ready: Arc<Notify>,
) {
    let (tx, mut rx) = mpsc::channel::<(String, usize)>(RECORD_QUEUE);
    *dir.record_tx.lock() = Some(tx);
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&dir, &info, &shard_names, connect_timeout, &ready, &mut rx).await {
            Ok(true) => return,
            Ok(false) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, table = %dir.table, shard = %info.name, "directory connection failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One control connection's life: load, then apply notifications and record placements.
async fn session(
    dir: &Arc<Directory>,
    info: &ShardInfo,
    shard_names: &[String],
    connect_timeout: Duration,
    ready: &Notify,
    rx: &mut mpsc::Receiver<(String, usize)>,
) -> Result<bool, tokio_postgres::Error> {
    let (client, mut conn) = info
        .control_config(connect_timeout)
        .connect(info.tls.clone())
        .await?;
    // Drive the connection ourselves to see notifications.
    let (note_tx, mut notes) = mpsc::channel::<(i32, String)>(1024);
    let (dead_tx, mut dead) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    // A full queue means we are behind: a reload of everything catches up.
                    if note_tx
                        .try_send((n.process_id(), n.payload().to_owned()))
                        .is_err()
                    {
                        let _ = note_tx.try_send((0, String::new()));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = dead_tx.send(());
    });
    ensure_table(&client, dir, shard_names).await?;
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    dir.replace(load_all(&client, dir, shard_names).await?);
    ready.notify_waiters();
    tracing::info!(table = %dir.table, entries = dir.entries.read().len(), "directory loaded");
    let insert = client
        .prepare(&format!(
            "WITH ins AS (INSERT INTO {} (key, shard) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING key) \
             SELECT pg_notify('{CHANNEL}', key) FROM ins",
            crate::quote::qualified(&dir.table)
        ))
        .await?;
    loop {
        tokio::select! {
            n = notes.recv() => match n {
                Some((pid, n)) if n.starts_with(MOVE_ANNOUNCE) => {
                    // Anyone may NOTIFY on the channel: a hold is only taken for a move
                    // announced by a session of the control role itself.
                    if announced_by_control(&client, pid).await? {
                        dir.remote_move_started(&n[MOVE_ANNOUNCE.len()..]);
                    } else {
                        tracing::warn!(pid, "directory move announced by another role; ignored");
                    }
                }
                Some((_, key)) if !key.is_empty() => {
                    load_key(&client, dir, &key, shard_names).await?;
                    dir.remote_move_ended(&key);
                }
                Some(_) => dir.replace(load_all(&client, dir, shard_names).await?),
                None => return Ok(false),
            },
            r = rx.recv() => match r {
                Some((key, shard)) => {
                    let name = shard_names.get(shard).map(String::as_str).unwrap_or("");
                    client.query(&insert, &[&key, &name]).await?;
                    // Another proxy (or an assign) may have won: take what the table says.
                    load_key(&client, dir, &key, shard_names).await?;
                }
                None => return Ok(true),
            },
            _ = &mut dead => return Ok(false),
        }
    }
}
