//! One client session: the task that owns a client socket, its session state (settings,
//! prepared statements, transaction) and the backend connections it holds while a
//! transaction (or a single statement outside one) runs.
//!
//! Here: the [`Session`] itself, its serve loop and output. Beside it: `shared` (proxy-wide
//! state, topology), `targets` (routing), `conns` (taking and giving back connections),
//! `held` (the held connections and their cancel targets), `simple`/`extended` (the two query
//! protocols) and their helpers, `txn`/`commit` (transactions).

mod client_tpc;
pub mod clients;
mod commit;
mod conns;
mod copy_in;
mod copy_layout;
mod copy_stream;
mod cursor_declare;
mod cursor_extended;
mod cursor_fetch;
mod cursors;
mod describe;
mod explain;
mod extended;
pub mod gate;
mod gather;
mod generate;
mod held;
mod implicit;
mod multiwrite;
mod notify;
mod pipeline_control;
mod pipeline_multi;
mod pipeline_one;
mod pipeline_ops;
mod pipeline_segments;
mod pipeline_special;
mod pipeline_spread;
mod prepared;
mod relay;
mod session_fn;
pub mod settings;
pub mod shape;
mod shared;
mod simple;
mod sql_prepare;
mod targets;
mod txn;

use std::collections::HashMap;

/// A map with a fast, per-process seeded hash (foldhash) for the per-statement lookups of a
/// session: SipHash cost ~150 instructions a lookup, eight lookups a statement. The keys are
/// the client's own statement and portal names, in maps bounded per session.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::error::ProxyError;
use crate::wire::cancel::CancelSlot;
use crate::wire::protocol::{build, FrameError, FrameReader};
use crate::wire::tls::{NetRead, NetWrite};
use held::HeldConns;
use settings::Settings;
/// Most savepoints and settings statements one transaction block may hold.
pub use txn::MAX_STEPS as MAX_TXN_STEPS;
use txn::{SettingChange, Txn, TxnStatus};

pub use prepared::Prepared;
pub use shared::{build_pools, user_secrets, ClientPools, Shared, Topology, Users};
pub use targets::Target;

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
    /// Its user's pools in `topo`, one per shard (see [`Topology::client_pools`]).
    pools: ClientPools,
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
    /// The backend connections held, with their cancel targets (the session's cancel slot).
    conns: HeldConns,
    txn: Txn,
    session_mode: bool,
    /// A pipeline runs in segments on different shards (see [`pipeline_segments`]): the
    /// ReadyForQuery of each stays from the client, which gets one at the end.
    segmenting: bool,
    /// A statement since the held connections were checked out left session state the
    /// proxy cannot reset (see `StmtPlan::dirties`): they are closed, not pooled.
    dirty: bool,
    /// The pid the client was given (BackendKeyData): what `pg_backend_pid()` returns.
    key_pid: i32,
    /// The proxy user the client logged in as.
    user: Arc<str>,
    /// The client's encoding when it is not UTF-8 (see [`crate::wire::encoding`]): its
    /// session's, or the one a `SET` in the open transaction block switched to.
    codec: Option<crate::wire::encoding::Codec>,
    /// `codec` is a transaction block's (see [`txn::Encoding`]), until the block ends.
    codec_in_txn: bool,
    /// Generated values: statements being completed, and the last values handed out.
    generated: prepared::Completions,
    /// LISTEN/NOTIFY: `None` until the session uses them (see [`notify`]).
    notify: Option<Box<notify::State>>,
    /// Cursors the proxy keeps or routes: `None` until the session declares one (see [`cursors`]).
    cursors: Option<Box<cursors::Cursors>>,
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
            pools: Arc::from(Vec::new()),
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
            conns: HeldConns::new(cancel_slot),
            txn: Txn::idle(),
            session_mode,
            segmenting: false,
            dirty: false,
            key_pid: 0,
            user: Arc::from(""),
            codec: None,
            codec_in_txn: false,
            generated: Default::default(),
            notify: None,
            cursors: None,
        }
        .with_codec()
    }

    /// Follows the client's `client_encoding` (see [`crate::wire::encoding`]).
    fn with_codec(mut self) -> Self {
        self.refresh_codec();
        self
    }

    fn refresh_codec(&mut self) {
        let name = match self.txn.encoding {
            None => self.settings.client_encoding(),
            Some(txn::Encoding::Named(name)) => name,
            Some(txn::Encoding::Default) => self.settings.startup_client_encoding(),
        };
        self.codec_in_txn = self.txn.encoding.is_some();
        let codec = name.and_then(crate::wire::encoding::Codec::for_name);
        // The held connections ran the statement that switched (or, at a block's end, the
        // ROLLBACK that switched back): they speak the new encoding from now on.
        if codec != self.codec {
            self.codec = codec;
            for c in self.conns.iter_mut() {
                c.codec = codec;
            }
        }
    }

    /// Follows the open transaction block's client encoding: after its steps changed (a
    /// `SET`, `ROLLBACK TO`) or it ended. Cheap when no block switched it.
    fn sync_codec(&mut self) {
        if self.codec_in_txn || self.txn.encoding.is_some() {
            self.refresh_codec();
        }
    }

    /// The encoding of the client's session settings, outside any transaction block.
    fn session_codec(&self) -> Option<crate::wire::encoding::Codec> {
        match self.codec_in_txn {
            true => self
                .settings
                .client_encoding()
                .and_then(crate::wire::encoding::Codec::for_name),
            false => self.codec,
        }
    }

    /// The pid handed to the client and the user it logged in as.
    pub fn with_key(mut self, pid: i32, user: &str) -> Self {
        self.key_pid = pid;
        self.user = Arc::from(user);
        self.pools = self.topo.pools_of(user);
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
            self.conns.cancel(0..self.conns.len());
        }
        self.conns.close_all();
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
            if self.conns.slot().terminated() {
                return self.end_terminated().await;
            }
            if batch.is_empty() {
                // Nothing under way: a cancel from now on does nothing, as in Postgres
                // (messages held for a Sync are a statement under way).
                self.conns.slot().statement_ended();
            }
            if self.generated.refresh && self.txn.status.is_idle() {
                // After DDL, the client hears back once the catalog (generated columns,
                // column order) is read again: its next INSERT is completed by the new one.
                self.generated.refresh = false;
                crate::sharding::catalog_read::refresh(&self.topo.map).await;
            }
            // LISTEN/NOTIFY: what a committed block left, notifications for an idle client
            // (no block or exchange open), whose wait then watches its queue too.
            let mut listening = false;
            if self.notify.is_some() {
                let idle = self.txn.status.is_idle() && batch.is_empty() && !batch.is_open();
                if Box::pin(self.notify_between(idle)).await {
                    self.flush().await?;
                    return Ok(());
                }
                listening = idle && self.listens();
            }
            if !self.out.is_empty() && !self.reader.has_frame() {
                self.flush().await?;
            }
            if self.codec_in_txn && self.txn.encoding.is_none() {
                // A block that switched the client encoding ended: back to the session's.
                self.refresh_codec();
            }
            // A pass is held only while work is under way, never while waiting for the client
            // between transactions (a rebalance switch waits for passes to come back).
            if self.pass.is_some() && self.txn.status.is_idle() && !batch.is_open() {
                self.pass = None;
            }
            if let Some(c) = &self.client {
                c.set_state(if self.txn.status.is_idle() {
                    crate::session::clients::IDLE
                } else {
                    crate::session::clients::IDLE_IN_TRANSACTION
                });
            }
            // Idle limits apply while the proxy waits for the client's next message.
            let (limit, code, what) = if self.txn.status.is_idle() {
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
            if listening {
                match Box::pin(self.wait_for_client(limit)).await? {
                    notify::Waited::Client => {}
                    notify::Waited::Ended => {
                        self.flush().await?;
                        return Ok(());
                    }
                    notify::Waited::Timeout => {
                        build::error(&mut self.out, "FATAL", code, what);
                        self.flush().await?;
                        return Ok(());
                    }
                }
            }
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
            self.conns.slot().statement_started();
            if self.conns.slot().terminated() {
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
                    if let Some(idxs) = batch.take_spread() {
                        // A pipeline across shards left open at a Flush, never synced: its
                        // implicit transaction is undone, not committed behind the client.
                        self.rollback_all(&idxs).await;
                        self.release_if_idle(false);
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
        if self.segmenting {
            pipeline_segments::strip_ready(&mut self.out);
        }
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
        // A DETAIL (ASCII) after the fixed fields, for the few errors that have one.
        let detail = e.detail();
        let with_detail: Vec<(u8, &str)>;
        let fields = match &detail {
            Some(d) => {
                with_detail = e
                    .fields()
                    .iter()
                    .copied()
                    .chain([(b'D', d.as_str())])
                    .collect();
                &with_detail[..]
            }
            None => e.fields(),
        };
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
                build::error_fields(&mut self.out, "ERROR", e.sqlstate(), &bytes, fields);
            }
            None => build::error_fields(
                &mut self.out,
                "ERROR",
                e.sqlstate(),
                text.as_bytes(),
                fields,
            ),
        }
        self.txn.fail();
    }

    /// Queues ReadyForQuery with the current status.
    fn push_ready(&mut self) {
        if self.segmenting {
            return;
        }
        build::ready_for_query(&mut self.out, self.txn.status.byte());
    }

    /// Applies settings changes that took effect.
    fn apply_setting(&mut self, ch: SettingChange) {
        match ch {
            SettingChange::Set(n, s) => self.settings.set(&n, &s),
            SettingChange::Reset(n) => self.settings.reset(&n),
            SettingChange::ResetAll => self.settings.clear(),
            SettingChange::Notify(cmd) => return self.notify_committed(*cmd),
        }
        self.refresh_codec();
    }
}
