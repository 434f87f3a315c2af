//! One client session: the task that owns a client socket, its session state (settings,
//! prepared statements, transaction) and the backend connections it holds while a
//! transaction (or a single statement outside one) runs.

pub mod clients;
mod commit;
mod copy_in;
mod explain;
mod extended;
pub mod gate;
mod gather;
mod multiwrite;
mod pipeline_control;
mod relay;
mod session_fn;
pub mod settings;
pub mod shape;
mod simple;
mod txn;

use std::collections::HashMap;

/// A map with a fast, per-process seeded hash (foldhash) for the per-statement lookups of a
/// session: SipHash cost ~150 instructions a lookup, eight lookups a statement. The keys are
/// the client's own statement and portal names, in maps bounded per session.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;

use crate::backend::pool::{PooledConn, ShardPool};
use crate::error::ProxyError;
use crate::routing::router::{resolve_keys, Plan, PlanCache, RouteSpec};
use crate::sharding::shardmap::ShardMap;
use crate::sharding::shardset::ShardSet;
use crate::wire::auth::ScramSecret;
use crate::wire::cancel::{CancelRegistry, CancelSlot, CancelTarget};
use crate::wire::protocol::{build, FrameError, FrameReader};
use crate::wire::tls::{NetRead, NetWrite};
use settings::Settings;
/// Most savepoints and settings statements one transaction block may hold.
pub use txn::MAX_STEPS as MAX_TXN_STEPS;
use txn::{SettingChange, Txn};

/// Most prepared statements kept per backend connection before they are all deallocated.
pub const MAX_PREPARED_PER_CONN: usize = 1000;
/// The prepared-statement epoch of a connection whose statements must be dropped.
pub const STALE_EPOCH: u64 = u64::MAX;
/// Most prepared statements a client may hold.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;
/// Most bytes of extended-protocol messages buffered before a Sync/Flush.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Output buffered for the client before it is written out.
const OUT_FLUSH_AT: usize = 64 * 1024;

/// What sessions route with: a map, one pool per shard and the plans made with that map.
/// A reload or a rebalance swaps in a new one whole; a session moves to it between
/// transactions.
pub struct Topology {
    /// The routing map.
    pub map: Arc<ShardMap>,
    /// One pool per shard, in map order.
    pub pools: Vec<Arc<ShardPool>>,
    /// Parsed plans by SQL text (plans hold shard indexes of this map).
    pub cache: PlanCache,
    /// Counts swaps; sessions compare it with [`Shared::generation`].
    pub generation: u64,
    /// The map's users with their SCRAM verifiers, swapped with the map in one step: a login
    /// checks its user and its database against the same map.
    pub users: Arc<Users>,
}

/// Passwords and SCRAM verifiers by user name.
pub type Users = HashMap<String, (String, ScramSecret)>;

/// State shared by every session of one proxy.
pub struct Shared {
    /// The current topology.
    pub topology: arc_swap::ArcSwap<Topology>,
    /// Generation of `topology` (read by sessions on every statement, cheaply).
    pub generation: std::sync::atomic::AtomicU64,
    /// The rebalance hold.
    pub gate: Arc<gate::Gate>,
    /// Cancel keys handed to clients.
    pub cancels: CancelRegistry,
    /// The budget large client messages draw on (`limits.max_buffered_mb`, in KiB), shared
    /// by every client's reader, and its size.
    pub large_messages: Arc<tokio::sync::Semaphore>,
    /// Size of [`Shared::large_messages`] in permits (KiB).
    pub large_message_units: usize,
    /// Per-process secret behind the salts unknown users are answered with.
    pub login_key: [u8; 32],
    /// The shard map file, for reloads (`None` for a proxy started from text).
    pub config_path: Mutex<Option<std::path::PathBuf>>,
    /// Notified when the admin console asks the proxy to shut down.
    pub shutdown: tokio::sync::Notify,
    /// Set once a shutdown was asked for.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// ParameterStatus values learned from a shard, sent to clients at login.
    pub server_params: Mutex<Option<Vec<(String, String)>>>,
    /// Connected clients.
    pub clients: AtomicUsize,
    /// Who they are, for `SHOW CLIENTS`.
    pub client_list: Arc<crate::session::clients::ClientRegistry>,
    /// Whether text sorts in byte order on the shards (learned once, for merging ORDER BY).
    pub bytewise_text: std::sync::OnceLock<bool>,
    /// Two-phase commit for writes that span shards.
    pub twophase: Arc<crate::backend::twophase::TwoPhase>,
    /// Statements routed, by kind of route.
    pub stats: RouteStats,
    /// Prometheus metrics.
    pub telemetry: crate::telemetry::Telemetry,
    /// Bumped by every schema change that passes through this proxy: a backend connection
    /// whose prepared statements are older is cleared (`DEALLOCATE ALL`) at its next
    /// checkout, so statements shared by content never outlive the DDL they depend on.
    pub schema_epoch: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The current topology.
    pub fn topo(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Asks the proxy to stop accepting clients and drain (admin `SHUTDOWN`).
    pub fn request_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        self.shutdown.notify_waiters();
    }

    /// The current map.
    pub fn map(&self) -> Arc<ShardMap> {
        self.topology.load().map.clone()
    }

    /// Swaps in `map`, keeping the pools of shards whose place and address are unchanged.
    /// Sessions move to it when they next start a transaction.
    pub fn swap_map(&self, map: Arc<ShardMap>) {
        let users = self.topology.load().users.clone();
        self.swap(map, users);
    }

    /// Swaps in a reloaded map and its users together (see [`Topology::users`]).
    pub fn swap_config(&self, map: Arc<ShardMap>) {
        let users = Arc::new(user_secrets(&map));
        self.swap(map, users);
    }

    fn swap(&self, map: Arc<ShardMap>, users: Arc<Users>) {
        let cur = self.topology.load();
        let pools = map
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| match cur.pools.get(i) {
                Some(p) if p.info.same_server(s) => p.clone(),
                _ => ShardPool::new(i, s.clone(), map.pool.clone()),
            })
            .collect();
        let generation = cur.generation + 1;
        self.topology.store(Arc::new(Topology {
            map,
            pools,
            cache: PlanCache::new(crate::routing::router::PLAN_CACHE_CAPACITY),
            generation,
            users,
        }));
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
    }
}

/// Passwords and SCRAM verifiers of `map`'s users, by name.
pub fn user_secrets(map: &ShardMap) -> Users {
    map.users
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                (u.password.clone(), ScramSecret::from_password(&u.password)),
            )
        })
        .collect()
}

/// Statements routed since the proxy started, by where they went.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// To one shard.
    pub single: std::sync::atomic::AtomicU64,
    /// To some of the shards (a key list).
    pub multi: std::sync::atomic::AtomicU64,
    /// To every shard.
    pub all: std::sync::atomic::AtomicU64,
    /// Refused by the router.
    pub refused: std::sync::atomic::AtomicU64,
}

/// A resolved destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One shard.
    Shard(usize),
    /// Several shards (every shard, or the ones a key list names).
    Set(ShardSet),
}

impl Target {
    /// Whether it runs on several shards.
    pub fn is_multi(self) -> bool {
        matches!(self, Target::Set(_))
    }
}

/// The shards of a target.
fn shards_of(t: Target) -> ShardSet {
    match t {
        Target::Shard(s) => {
            let mut set = ShardSet::default();
            set.add(s);
            set
        }
        Target::Set(set) => set,
    }
}

/// Why a session ends.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The client went away or the socket failed.
    #[error("client connection: {0}")]
    Client(#[from] std::io::Error),
    /// The client broke the protocol; it was told why.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl From<FrameError> for SessionEnd {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) => SessionEnd::Client(io),
            other => SessionEnd::Protocol(other.to_string()),
        }
    }
}

/// A prepared statement as the client named it.
#[derive(Debug)]
pub struct Prepared {
    /// SQL text.
    pub sql: String,
    /// Declared parameter types.
    pub types: Vec<u32>,
    /// Routing plan.
    pub plan: Arc<Plan>,
    /// Name used on backends: content-addressed, so every pooled connection agrees.
    pub backend_name: String,
    /// Hash behind `backend_name` (what backend connections remember).
    pub name_hash: u64,
    /// The body of a Parse that defines this statement as the unnamed one, byte for byte, so a
    /// re-sent Parse is recognised with one comparison, before any decoding.
    unnamed_parse: Box<[u8]>,
    /// The result shape the client was told this statement has (see [`shape`]).
    pub shape: shape::Shape,
}

/// A per-process secret in the names of the proxy's statements on the backends: stable
/// for the life of the proxy (every pooled connection agrees on a statement's name), not
/// predictable by a client from the statement's text.
fn name_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random)
}

impl Prepared {
    /// Whether the Parse body `body` defines this very statement as the unnamed statement
    /// (same text, same declared types).
    fn is_unnamed_parse(&self, body: &[u8]) -> bool {
        *self.unnamed_parse == *body
    }

    fn new(sql: &str, types: Vec<u32>, plan: Arc<Plan>) -> Self {
        let mut h = Vec::with_capacity(sql.len() + types.len() * 4);
        h.extend_from_slice(sql.as_bytes());
        for t in &types {
            h.extend_from_slice(&t.to_be_bytes());
        }
        let name_hash = xxhash_rust::xxh3::xxh3_64_with_seed(&h, name_seed());
        let mut unnamed_parse = Vec::with_capacity(sql.len() + 4 + types.len() * 4);
        unnamed_parse.push(0);
        unnamed_parse.extend_from_slice(sql.as_bytes());
        unnamed_parse.push(0);
        unnamed_parse.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in &types {
            unnamed_parse.extend_from_slice(&t.to_be_bytes());
        }
        Prepared {
            sql: sql.to_string(),
            types,
            plan,
            backend_name: format!("sw_{name_hash:016x}"),
            name_hash,
            unnamed_parse: unnamed_parse.into_boxed_slice(),
            shape: shape::Shape::default(),
        }
    }
}

/// Buffers reused from one request to the next, kept only while small.
#[derive(Default)]
struct Scratch {
    /// Outgoing message bytes for a backend.
    msg: BytesMut,
    /// Replies a relay waits for.
    expects: std::collections::VecDeque<relay::Expect>,
    /// Operations of a pipeline.
    ops: Vec<extended::Op>,
}

/// Most entries a reused list keeps.
const SCRATCH_ITEMS: usize = 256;

/// Largest buffer kept for reuse; bigger ones are freed (10,000 idle sessions stay small).
const SCRATCH_KEEP: usize = 16 * 1024;

impl Scratch {
    /// Takes the message buffer, empty.
    fn take_msg(&mut self) -> BytesMut {
        let mut m = std::mem::take(&mut self.msg);
        m.clear();
        m
    }
    /// Gives a message buffer back for reuse.
    fn put_msg(&mut self, m: BytesMut) {
        if m.capacity() <= SCRATCH_KEEP {
            self.msg = m;
        }
    }
}

/// One client connection after login.
pub struct Session {
    shared: Arc<Shared>,
    /// The topology this session routes with (refreshed between transactions).
    topo: Arc<Topology>,
    /// Held while the rebalance gate is armed and a transaction or statement runs.
    pass: Option<gate::Pass>,
    /// This client in `SHOW CLIENTS`.
    client: Option<Arc<crate::session::clients::ClientEntry>>,
    reader: FrameReader<NetRead>,
    writer: NetWrite,
    out: BytesMut,
    settings: Settings,
    stmts: FastMap<String, Arc<Prepared>>,
    portals: FastMap<String, (Target, Arc<Prepared>)>,
    /// Portals of merged (multi-shard) queries: their Bind, and rows kept for fetching in chunks.
    gather_portals: FastMap<String, gather::GatherPortal>,
    /// While set, output is being captured for a portal instead of sent (see [`gather::Capture`]).
    capture: Option<gather::Capture>,
    /// Reused buffers of the single-shard path (no allocation per query).
    scratch: Scratch,
    conns: Vec<PooledConn>,
    txn: Txn,
    cancel_slot: CancelSlot,
    session_mode: bool,
    /// A statement since the held connections were checked out left session state the
    /// proxy cannot reset (see `StmtPlan::dirties`): they are closed, not pooled.
    dirty: bool,
    /// The pid the client was given (BackendKeyData): what `pg_backend_pid()` returns.
    key_pid: i32,
    /// The proxy user the client logged in as.
    user: Arc<str>,
    /// The client's encoding when it is not UTF-8 (see [`crate::wire::encoding`]).
    codec: Option<crate::wire::encoding::Codec>,
}

impl Session {
    /// A session for a logged-in client.
    pub fn new(
        shared: Arc<Shared>,
        reader: FrameReader<NetRead>,
        writer: NetWrite,
        settings: Settings,
        cancel_slot: CancelSlot,
    ) -> Self {
        let topo = shared.topo();
        let session_mode = topo.map.pool.session_mode;
        Session {
            shared,
            topo,
            pass: None,
            client: None,
            reader,
            writer,
            out: BytesMut::with_capacity(16 * 1024),
            settings,
            stmts: FastMap::default(),
            portals: FastMap::default(),
            gather_portals: FastMap::default(),
            capture: None,
            scratch: Scratch::default(),
            conns: Vec::new(),
            txn: Txn::idle(),
            cancel_slot,
            session_mode,
            dirty: false,
            key_pid: 0,
            user: Arc::from(""),
            codec: None,
        }
        .with_codec()
    }

    /// Follows the client's `client_encoding` (see [`crate::wire::encoding`]).
    fn with_codec(mut self) -> Self {
        self.refresh_codec();
        self
    }

    fn refresh_codec(&mut self) {
        let codec = self
            .settings
            .client_encoding()
            .and_then(crate::wire::encoding::Codec::for_name);
        if codec != self.codec {
            self.codec = codec;
            for c in self.conns.iter_mut() {
                c.codec = codec;
            }
        }
    }

    /// The pid handed to the client and the user it logged in as.
    pub fn with_key(mut self, pid: i32, user: &str) -> Self {
        self.key_pid = pid;
        self.user = Arc::from(user);
        self
    }

    /// Shows the session's state in `entry` (`SHOW CLIENTS`).
    pub fn with_client(mut self, entry: Arc<crate::session::clients::ClientEntry>) -> Self {
        self.client = Some(entry);
        self
    }

    /// Serves the client until it leaves.
    pub async fn run(mut self) -> Result<(), SessionEnd> {
        let result = self.serve().await;
        // Connections still held belong to an open transaction or an unfinished
        // exchange: closing them makes the shard roll back. When the client vanished
        // mid-query, cancel what the shards are still running first.
        if result.is_err() && !self.conns.is_empty() {
            let all: Vec<usize> = (0..self.conns.len()).collect();
            self.cancel_conns(&all);
        }
        self.conns.clear();
        if let Err(SessionEnd::Protocol(m)) = &result {
            self.out.clear();
            build::error(&mut self.out, "FATAL", "08P01", m);
            let _ = self.writer.write_all(&self.out).await;
            let _ = self.writer.flush().await;
        }
        self.writer.close().await;
        result
    }

    /// `pg_terminate_backend` named this session: whatever it was answering is dropped and
    /// it ends as Postgres ends a terminated backend (the held shard connections are closed,
    /// so their transactions roll back).
    async fn end_terminated(&mut self) -> Result<(), SessionEnd> {
        self.out.clear();
        build::error(
            &mut self.out,
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        );
        self.flush().await
    }

    async fn serve(&mut self) -> Result<(), SessionEnd> {
        let mut batch = extended::Batch::default();
        loop {
            if self.cancel_slot.terminated() {
                return self.end_terminated().await;
            }
            if !self.out.is_empty() && !self.reader.has_frame() {
                self.flush().await?;
            }
            // A pass is held only while work is under way, never while waiting for the client
            // between transactions (a rebalance switch waits for passes to come back).
            if self.pass.is_some() && self.txn.status == b'I' && !batch.is_open() {
                self.pass = None;
            }
            if let Some(c) = &self.client {
                c.set_state(if self.txn.status == b'I' {
                    crate::session::clients::IDLE
                } else {
                    crate::session::clients::IDLE_IN_TRANSACTION
                });
            }
            // Idle limits apply while the proxy waits for the client's next message.
            let (limit, code, what) = if self.txn.status == b'I' {
                (
                    self.topo.map.client_idle_timeout,
                    "57P05",
                    "terminating connection due to idle-session timeout",
                )
            } else {
                (
                    self.topo.map.idle_in_transaction_timeout,
                    "25P03",
                    "terminating connection due to idle-in-transaction timeout",
                )
            };
            let next = match limit {
                None => self.reader.next().await?,
                Some(d) => match tokio::time::timeout(d, self.reader.next()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        // The held connections are closed, not pooled: their shards roll back.
                        build::error(&mut self.out, "FATAL", code, what);
                        self.flush().await?;
                        return Ok(());
                    }
                },
            };
            let Some(frame) = next else {
                return Ok(());
            };
            if self.cancel_slot.terminated() {
                return self.end_terminated().await;
            }
            if let Some(c) = &self.client {
                c.set_state(crate::session::clients::ACTIVE);
            }
            match frame.tag {
                b'Q' => {
                    if !batch.is_empty() {
                        // A Query ends any unfinished extended exchange like Postgres does: the
                        // pending messages are discarded with the statement they belonged to.
                        batch.clear();
                    }
                    let converted = match self.codec {
                        Some(c) => {
                            match crate::wire::encoding::body_to_utf8(&c, b'Q', frame.body()) {
                                Ok(b) => b,
                                Err(e) => {
                                    self.push_error(&ProxyError::Encoding(e.to_string()));
                                    self.push_ready();
                                    continue;
                                }
                            }
                        }
                        None => None,
                    };
                    let body = converted.as_deref().unwrap_or(frame.body());
                    match crate::wire::protocol::decode_query(body) {
                        Ok(sql) => self.simple_query(sql).await?,
                        // Postgres answers bytes invalid in the client encoding with an error,
                        // not by closing the connection.
                        Err(e @ crate::wire::protocol::FrameError::NotUtf8(_)) => {
                            self.push_error(&ProxyError::Encoding(e.to_string()));
                            self.push_ready();
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                b'P' if self.codec.is_some() => {
                    // The statement in UTF-8 for the proxy; text the encoding cannot read
                    // stays as sent, and its Parse fails as invalid (22021).
                    let frame = self.frame_to_utf8(frame);
                    batch.push(frame)?;
                }
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    batch.push(frame)?;
                }
                b'S' => self.run_batch(&mut batch, true).await?,
                b'H' => self.run_batch(&mut batch, false).await?,
                b'X' => return Ok(()),
                // CopyData/CopyDone/CopyFail outside COPY are ignored, as Postgres does.
                b'd' | b'c' | b'f' => {}
                other => {
                    return Err(SessionEnd::Protocol(format!(
                        "invalid frontend message type {}",
                        other
                    )))
                }
            }
        }
    }

    /// A Parse message from a client with a non-UTF-8 encoding, its text in UTF-8.
    fn frame_to_utf8(&self, frame: crate::wire::protocol::Frame) -> crate::wire::protocol::Frame {
        let Some(c) = self.codec else { return frame };
        match crate::wire::encoding::body_to_utf8(&c, frame.tag, frame.body()) {
            Ok(Some(body)) => {
                let mut raw = BytesMut::with_capacity(body.len() + 5);
                raw.extend_from_slice(&[frame.tag]);
                raw.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                raw.extend_from_slice(&body);
                crate::wire::protocol::Frame {
                    tag: frame.tag,
                    raw: raw.freeze(),
                }
            }
            _ => frame,
        }
    }

    /// Writes buffered output to the client.
    async fn flush(&mut self) -> Result<(), SessionEnd> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            // A no-op on plain sockets; TLS may hold the tail back until flushed.
            self.writer.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn maybe_flush(&mut self) -> Result<(), SessionEnd> {
        if let Some(c) = self.capture.as_mut() {
            // Captured rows stay in memory, bounded by the gather memory limit.
            if self.out.len().saturating_sub(c.start) > c.limit {
                c.overflow = true;
                self.out.truncate(c.start);
            }
            return Ok(());
        }
        if self.out.len() >= OUT_FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues an ErrorResponse; inside a transaction it fails the transaction, as in Postgres.
    fn push_error(&mut self, e: &ProxyError) {
        self.shared.telemetry.error(e.sqlstate());
        let text = e.to_string();
        match self.codec.filter(|_| !text.is_ascii()) {
            // In the client's encoding, as Postgres sends its messages (a character it
            // cannot hold becomes `?`).
            Some(c) => {
                let safe: String = text
                    .chars()
                    .map(|ch| {
                        let mut b = [0u8; 4];
                        if c.from_utf8(ch.encode_utf8(&mut b)).is_ok() {
                            ch
                        } else {
                            '?'
                        }
                    })
                    .collect();
                let bytes = c
                    .from_utf8(&safe)
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                build::error_bytes(&mut self.out, "ERROR", e.sqlstate(), &bytes);
            }
            None => build::error(&mut self.out, "ERROR", e.sqlstate(), &text),
        }
        self.txn.fail();
    }

    /// Queues ReadyForQuery with the current status.
    fn push_ready(&mut self) {
        build::ready_for_query(&mut self.out, self.txn.status);
    }

    fn shard_name(&self, i: usize) -> String {
        self.topo
            .map
            .shards
            .get(i)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("#{i}"))
    }

    /// The shard an "any shard" statement uses: one the transaction already holds, else the default.
    fn any_shard(&self) -> usize {
        if let Some(Target::Shard(s)) = self.txn.written {
            return s;
        }
        self.conns
            .first()
            .map(|c| c.shard)
            .unwrap_or(self.topo.map.default_shard)
    }

    /// The target for a set of shards (one shard is a plain single-shard target).
    fn target_of(&self, set: ShardSet) -> Target {
        match (set.len(), set.iter().next()) {
            (1, Some(s)) => Target::Shard(s),
            _ => Target::Set(set),
        }
    }

    /// Names of a target's shards, for messages.
    fn target_name(&self, t: Target) -> String {
        match t {
            Target::Shard(i) => self.shard_name(i),
            Target::Set(set) if set.len() == self.topo.map.shards.len() => "all shards".into(),
            Target::Set(set) => {
                let names: Vec<String> = set.iter().map(|i| self.shard_name(i)).collect();
                format!("shards {}", names.join(", "))
            }
        }
    }

    /// Before a statement runs: between transactions, moves to the proxy's current topology;
    /// while a rebalance runs, takes a gate pass (waiting while a unit switches).
    async fn enter(&mut self) -> Result<(), ProxyError> {
        self.refresh_topology();
        if self.pass.is_none() && self.shared.gate.armed() {
            let gate = self.shared.gate.clone();
            match gate.enter(gate::MAX_HOLD_WAIT).await {
                Ok(p) => self.pass = Some(p),
                Err(e) => return Err(ProxyError::Unavailable(e.to_string())),
            }
            self.refresh_topology();
            self.refresh_topology_in_transaction();
        }
        Ok(())
    }

    /// Inside a transaction, moves to a newer topology only when every held connection keeps
    /// its shard index (a rebalance's merged shard list does): the transaction's next
    /// statements then route like every other session's.
    fn refresh_topology_in_transaction(&mut self) {
        if self.txn.status == b'I' || !self.topology_changed() {
            return;
        }
        let topo = self.shared.topo();
        let keeps = self.conns.iter().all(|c| {
            match (topo.pools.get(c.shard), self.topo.pools.get(c.shard)) {
                (Some(a), Some(b)) => a.info.same_server(&b.info),
                _ => false,
            }
        });
        if keeps {
            self.replan(&topo);
            self.topo = topo;
        }
    }

    /// Whether the proxy swapped in a topology newer than the session's.
    #[inline]
    fn topology_changed(&self) -> bool {
        self.shared
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
            != self.topo.generation
    }

    /// Plans the session's prepared statements again with `topo`'s map.
    fn replan(&mut self, topo: &Topology) {
        let stmts = std::mem::take(&mut self.stmts);
        for (name, p) in stmts {
            match topo.cache.get(&topo.map, &p.sql) {
                Ok(plan) => {
                    let fresh = Prepared::new(&p.sql, p.types.clone(), plan);
                    self.stmts.insert(name, Arc::new(fresh));
                }
                Err(e) => {
                    tracing::info!(statement = %name, error = %e, "prepared statement dropped: it does not plan with the new shard map")
                }
            }
        }
    }

    /// Moves to a newer topology when no transaction is open. Prepared statements are planned
    /// again with the new map; held connections whose shard changed place are closed.
    fn refresh_topology(&mut self) {
        if self.txn.status != b'I' || !self.topology_changed() {
            return;
        }
        let topo = self.shared.topo();
        let old = self.topo.clone();
        let keep: Vec<bool> = self
            .conns
            .iter()
            .map(
                |c| match (topo.pools.get(c.shard), old.pools.get(c.shard)) {
                    (Some(a), Some(b)) => a.info.same_server(&b.info),
                    _ => false,
                },
            )
            .collect();
        if keep.contains(&false) {
            // The cancel targets run parallel to the connections: drop the same ones, so
            // the kept connections can still be cancelled.
            let mut targets = self.cancel_slot.lock();
            let mut i = 0;
            targets.retain(|_| {
                i += 1;
                keep.get(i - 1).copied().unwrap_or(false)
            });
            drop(targets);
            let mut j = 0;
            self.conns.retain(|_| {
                j += 1;
                keep.get(j - 1).copied().unwrap_or(false)
            });
        }
        self.replan(&topo);
        self.portals.clear();
        self.gather_portals.clear();
        self.topo = topo;
    }

    /// Waits while a directory key move runs in this proxy (see [`crate::sharding::directory::admin`]).
    /// Sessions inside a transaction are not held: the move's table lock orders them.
    async fn directory_gate(&self) {
        if self.txn.status != b'I' {
            return;
        }
        if let Some(d) = &self.topo.map.directory {
            if d.moving() {
                d.wait_moves().await;
            }
        }
    }

    /// Resolves a route (with Bind parameters where it needs them), counting it in the
    /// proxy's route statistics.
    fn resolve(
        &self,
        route: &RouteSpec,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
        lits: crate::routing::literals::QueryLits<'_>,
    ) -> Result<Target, ProxyError> {
        let r = self.resolve_route(route, params, is_binary, lits);
        let n = self.topo.map.shards.len();
        let (st, tm) = (&self.shared.stats, &self.shared.telemetry);
        let (counter, metric) = match &r {
            Ok(Target::Shard(_)) => (&st.single, &tm.single),
            Ok(Target::Set(set)) if set.len() >= n => (&st.all, &tm.all),
            Ok(Target::Set(_)) => (&st.multi, &tm.multi),
            Err(_) => (&st.refused, &tm.refused),
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metric.increment(1);
        // Off by default (--log-level debug): a disabled event costs one relaxed load.
        tracing::debug!(target_shards = ?r.as_ref().ok(), "statement routed");
        r
    }

    fn resolve_route(
        &self,
        route: &RouteSpec,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
        lits: crate::routing::literals::QueryLits<'_>,
    ) -> Result<Target, ProxyError> {
        match route {
            RouteSpec::Any => Ok(Target::Shard(self.any_shard())),
            RouteSpec::Shard(s) => Ok(Target::Shard(*s)),
            RouteSpec::All => Ok(self.target_of(ShardSet::all(self.topo.map.shards.len()))),
            RouteSpec::Subset(set) => Ok(self.target_of(*set)),
            RouteSpec::Refuse(e) => Err(e.clone()),
            RouteSpec::Keys(kr) => {
                let r = resolve_keys(&self.topo.map, kr, params, is_binary, lits);
                if matches!(r, RouteSpec::Keys(_)) {
                    return Err(ProxyError::Protocol("unresolved key route".into()));
                }
                self.resolve_route(&r, params, is_binary, lits)
            }
        }
    }

    /// Refuses writes that would make one transaction write on several shards.
    fn check_write(
        &mut self,
        target: Target,
        writes: bool,
        explicit_txn: bool,
    ) -> Result<(), ProxyError> {
        if !writes || !explicit_txn {
            return Ok(());
        }
        let names = |s: &Session, t: Target| s.target_name(t);
        // With two-phase commit a transaction may write anywhere: COMMIT commits all as one.
        if self.shared.twophase.available() {
            let mut set = self.txn.written.map(shards_of).unwrap_or_default();
            for s in shards_of(target).iter() {
                set.add(s);
            }
            self.txn.written = Some(self.target_of(set));
            return Ok(());
        }
        match (self.txn.written, target) {
            (None, t) if t.is_multi() => Err(ProxyError::Unsupported(
                "a transaction that writes on several shards is refused: two-phase commit is off (set max_prepared_transactions > 0 on every shard); run this statement outside the transaction block".into(),
            )),
            (None, t) => {
                self.txn.written = Some(t);
                Ok(())
            }
            (Some(w), t) if w == t => Ok(()),
            (Some(w), t) => Err(ProxyError::Unsupported(format!(
                "a transaction that writes on several shards is refused: it already wrote on {} and this statement writes on {}; two-phase commit is off (set max_prepared_transactions > 0 on every shard)",
                names(self, w),
                names(self, t)
            ))),
        }
    }

    /// The index in `self.conns` of a connection to `shard`, checking one out (and bringing it to
    /// the client's settings and transaction) when the session does not hold one yet.
    async fn conn_for(&mut self, shard: usize) -> Result<usize, ProxyError> {
        if let Some(i) = self.conns.iter().position(|c| c.shard == shard) {
            return Ok(i);
        }
        let pool = self
            .topo
            .pools
            .get(shard)
            .cloned()
            .ok_or_else(|| ProxyError::Protocol(format!("no shard #{shard}")))?;
        let mut conn = pool.checkout().await?;
        let lost =
            |e: crate::backend::conn::BackendError, name: String| ProxyError::ShardUnavailable {
                shard: name,
                reason: e.to_string(),
            };
        let epoch = self
            .shared
            .schema_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        // Statements prepared before a schema change (or found stale) are dropped and
        // prepared again on next use.
        let stale = conn.prepared_epoch != epoch && !conn.prepared.is_empty();
        conn.prepared_epoch = epoch;
        if stale || conn.prepared.len() > MAX_PREPARED_PER_CONN {
            conn.run_simple("DEALLOCATE ALL")
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            conn.prepared.clear();
        }
        if conn.codec != self.codec {
            // The replay below is read in the encoding the connection has now: switch it
            // first, so the text of the client's settings arrives in the one it is sent in.
            let name = self.codec.map_or("UTF8", |c| c.name());
            let (err, _) = conn
                .run_simple(&format!("SET client_encoding TO '{name}'"))
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            if err.is_some() {
                conn.broken = true;
                return Err(ProxyError::Unsupported(format!(
                    "shard {} does not accept client_encoding {name}",
                    pool.info.name
                )));
            }
            conn.codec = self.codec;
            conn.settings_fp = settings::UNKNOWN_FP;
        }
        if conn.settings_fp != self.settings.fingerprint() {
            let sql = self.settings.replay_sql();
            let (err, _) = conn
                .run_simple(&sql)
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            if let Some((code, msg)) = err {
                conn.settings_fp = settings::UNKNOWN_FP;
                conn.release();
                return Err(ProxyError::Unsupported(format!(
                    "could not apply this session's settings on shard {}: {msg} (SQLSTATE {code})",
                    pool.info.name
                )));
            }
            conn.settings_fp = self.settings.fingerprint();
        }
        if self.txn.status != b'I' {
            // The transaction's BEGIN, then its settings and savepoints so far.
            let begin = self.txn.join_sql();
            let (err, _) = conn
                .run_simple(&begin)
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            if let Some((code, msg)) = err {
                conn.release();
                return Err(ProxyError::Unsupported(format!(
                    "could not start the transaction on shard {}: {msg} (SQLSTATE {code})",
                    pool.info.name
                )));
            }
        }
        self.cancel_slot.lock().push(CancelTarget {
            host: pool.host.clone(),
            port: pool.info.port,
            pid: conn.pid,
            secret: conn.secret,
        });
        self.conns.push(conn);
        Ok(self.conns.len() - 1)
    }

    /// Connections to each of `shards` (indexes into `self.conns`), checked out as needed.
    async fn conns_for(
        &mut self,
        shards: impl Iterator<Item = usize>,
    ) -> Result<Vec<usize>, ProxyError> {
        let mut idxs = Vec::with_capacity(shards.size_hint().0);
        for s in shards {
            idxs.push(self.conn_for(s).await?);
        }
        Ok(idxs)
    }

    /// A schema change passed through this session: every pooled connection's prepared
    /// statements are cleared at its next checkout, the ones held now included.
    fn schema_changed(&mut self) {
        self.shared
            .schema_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        for c in self.conns.iter_mut() {
            c.prepared_epoch = STALE_EPOCH;
        }
    }

    /// Gives the held connections back when no transaction or exchange needs them.
    fn release_if_idle(&mut self, exchange_open: bool) {
        if self.txn.status == b'I' && !exchange_open {
            self.pass = None;
        }
        if self.txn.status == b'I' && !exchange_open && !self.session_mode {
            // Forget them for cancels first: a backend a cancel reached is closed, not
            // pooled (the signal may land after the statement it was meant for); so is one
            // a statement left untracked session state on (a temp table, a session
            // advisory lock, set_config, a WITH HOLD cursor, a DO block).
            let cancelled = self.cancel_slot.release_all();
            let keep = !cancelled && !std::mem::take(&mut self.dirty);
            for c in self.conns.drain(..) {
                if keep {
                    c.release();
                }
            }
            self.portals.clear();
            self.gather_portals.clear();
            self.txn = Txn::idle();
        }
    }

    /// Applies settings changes that took effect.
    fn apply_setting(&mut self, ch: SettingChange) {
        match ch {
            SettingChange::Set(n, s) => self.settings.set(&n, &s),
            SettingChange::Reset(n) => self.settings.reset(&n),
            SettingChange::ResetAll => self.settings.clear(),
        }
        self.refresh_codec();
    }
}
