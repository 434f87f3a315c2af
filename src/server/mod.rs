//! The listener: accepts clients, runs the startup phase (TLS when the map has `tls:`,
//! GSSENC refusal, cancel requests, protocol negotiation, password authentication) and
//! hands each logged-in client to a [`Session`] task (the startup phase is `login`).
//! [`runtime`] builds the tokio runtime.

mod login;
pub mod runtime;

use login::{accept_tls, send, server_params, startup, Startup};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::routing::router::PlanCache;
use crate::session::{Session, Shared, Topology};
use crate::sharding::shardmap::ShardMap;
use crate::wire::cancel::CancelRegistry;
use crate::wire::protocol::{self, build, FrameReader};

/// How long a client may take to log in.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or accepting failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running proxy.
pub struct ServerHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of the HTTP endpoint (`/metrics`, `/health`), when the map has `admin:`.
    pub admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// State shared by its sessions.
    pub shared: Arc<Shared>,
}

impl ServerHandle {
    /// Stops accepting clients (running sessions finish on their own).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the directory's control task (when the map has directory tables) and waits, up
/// to the connect timeout, for its first load: until then directory tables are refused.
pub async fn start_directory(shared: &Arc<Shared>, stop: watch::Receiver<bool>) {
    let Some(dir) = shared.map().directory.clone() else {
        return;
    };
    let ready = Arc::new(tokio::sync::Notify::new());
    let waiting = ready.notified();
    until_stopped(
        stop,
        crate::sharding::directory::run(
            dir.clone(),
            shared.map().shards[dir.shard].clone(),
            shared.map().shard_names().to_vec(),
            shared.map().pool.connect_timeout,
            ready.clone(),
        ),
    );
    if tokio::time::timeout(shared.map().pool.connect_timeout, waiting)
        .await
        .is_err()
        && !dir.is_loaded()
    {
        tracing::warn!(table = %dir.table, "the key directory is not loaded yet; directory tables are refused until it is");
    }
}

/// Spawns a background task that ends when the server stops.
fn until_stopped(
    mut stop: watch::Receiver<bool>,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    });
}

/// Follows the rebalance control tables (see [`crate::rebalance::watch`]); waits briefly for
/// the first look, so a proxy started during a rebalance routes through it from its first
/// client on.
pub async fn start_rebalance_watch(shared: &Arc<Shared>, stop: watch::Receiver<bool>) {
    let proxy_id = format!("{}:{:08x}", std::process::id(), rand::random::<u32>());
    let first = Arc::new(tokio::sync::Notify::new());
    until_stopped(
        stop,
        crate::rebalance::watch::run(shared.clone(), proxy_id, first.clone()),
    );
    let _ = tokio::time::timeout(shared.map().pool.connect_timeout, first.notified()).await;
}

/// Starts two-phase commit support: checks the shards (waiting up to the connect timeout,
/// so the first multi-shard write already uses it) and runs recovery in the background.
pub async fn start_twophase(shared: &Arc<Shared>, stop: watch::Receiver<bool>) {
    let tp = shared.twophase.clone();
    until_stopped(
        stop,
        crate::backend::twophase::run(shared.map().clone(), tp.clone()),
    );
    let deadline = tokio::time::Instant::now() + shared.map().pool.connect_timeout;
    while !tp.probed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the shards' table definitions (generated columns, column order) now, then keeps
/// them fresh in the background: on request (DDL, reload, an unknown table) and every
/// [`crate::sharding::catalog_read::REFRESH_EVERY`].
pub async fn start_catalog(shared: &Arc<Shared>, stop: watch::Receiver<bool>) {
    shared.map().catalog.set_in_use();
    crate::sharding::catalog_read::refresh(&shared.map()).await;
    let sh = shared.clone();
    until_stopped(stop, async move {
        loop {
            let map = sh.map();
            map.catalog
                .wait_refresh(crate::sharding::catalog_read::REFRESH_EVERY)
                .await;
            // Requests that arrive while it reads are served by this read.
            tokio::time::sleep(Duration::from_millis(20)).await;
            crate::sharding::catalog_read::refresh(&sh.map()).await;
        }
    });
}

/// Builds the shared state for a map.
pub fn shared_state(map: ShardMap) -> Arc<Shared> {
    let map = Arc::new(map);
    let (pools, client_pools) = crate::session::build_pools(&map, None);
    let users = Arc::new(crate::session::user_secrets(&map));
    let telemetry = crate::telemetry::Telemetry::new(map.shard_names());
    let large_message_units = map.max_buffered >> 10;
    let notify = Arc::new(crate::backend::notify::Hub::default());
    if let Some(info) = map.shards.get(map.default_shard) {
        notify.set_target(info, map.pool.connect_timeout);
    }
    Arc::new(Shared {
        login_key: rand::random(),
        large_messages: Arc::new(tokio::sync::Semaphore::new(large_message_units)),
        large_message_units,
        topology: arc_swap::ArcSwap::from_pointee(Topology {
            map,
            pools,
            client_pools,
            cache: PlanCache::new(crate::routing::router::PLAN_CACHE_CAPACITY),
            generation: 0,
            users,
        }),
        generation: Default::default(),
        gate: Default::default(),
        cancels: CancelRegistry::default(),
        config_path: Mutex::new(None),
        client_list: Default::default(),
        shutdown: tokio::sync::Notify::new(),
        shutting_down: Default::default(),
        server_params: Mutex::new(None),
        clients: Default::default(),
        bytewise_text: Default::default(),
        twophase: Default::default(),
        telemetry,
        schema_epoch: Default::default(),
        ids: Default::default(),
        notify,
    })
}

/// Starts serving `map` on `listener` in the background.
pub async fn start(map: ShardMap, listener: TcpListener) -> Result<ServerHandle, ServerError> {
    let addr = listener.local_addr()?;
    let shared = shared_state(map);
    let (stop, mut stopped) = watch::channel(false);
    start_directory(&shared, stopped.clone()).await;
    start_twophase(&shared, stopped.clone()).await;
    start_rebalance_watch(&shared, stopped.clone()).await;
    start_catalog(&shared, stopped.clone()).await;
    // LISTEN/NOTIFY's connection: opened when a first session listens.
    until_stopped(
        stopped.clone(),
        crate::backend::notify::run(shared.notify.clone()),
    );
    let admin_addr = match &shared.map().admin {
        Some(a) => {
            let l = TcpListener::bind(a.as_str()).await?;
            let at = l.local_addr()?;
            tokio::spawn(crate::ops::http::serve(shared.clone(), l, stopped.clone()));
            tracing::info!(addr = %at, "admin endpoint (/metrics, /health) listening");
            Some(at)
        }
        None => None,
    };
    let sh = shared.clone();
    tokio::spawn(async move {
        // Created once, so a SHUTDOWN arriving while a connection is handed off is not missed.
        let asked = sh.shutdown.notified();
        tokio::pin!(asked);
        let mut conn_no: u64 = 0;
        loop {
            if sh.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        let sh = sh.clone();
                        // Every log line of the session carries its connection number and peer.
                        conn_no += 1;
                        let span = tracing::info_span!("client", conn = conn_no, %peer);
                        tokio::spawn(tracing::Instrument::instrument(async move {
                            if let Err(e) = handle_client(sh, sock).await {
                                tracing::debug!(error = %e, "client session ended");
                            }
                        }, span));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped.changed() => break,
                _ = &mut asked => break,
            }
        }
    });
    tracing::info!(%addr, shards = shared.map().shards.len(), "shardwire listening");
    Ok(ServerHandle {
        addr,
        admin_addr,
        stop,
        shared,
    })
}

/// The database name that opens the admin console.
pub const ADMIN_DATABASE: &str = "shardwire";

/// Why a client's startup failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Socket or framing failure.
    #[error("{0}")]
    Frame(#[from] protocol::FrameError),
    /// Socket failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client was refused (and told why).
    #[error("{0}")]
    Refused(String),
    /// The TLS handshake with the client failed.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The session ended.
    #[error("{0}")]
    Session(#[from] crate::session::SessionEnd),
}

struct ClientGuard(Arc<Shared>);
impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle_client(shared: Arc<Shared>, sock: TcpStream) -> Result<(), StartupError> {
    sock.set_nodelay(true)?;
    let peer = sock.peer_addr().ok();
    let max_message_size = shared.map().max_message_size;
    let budget = (shared.large_messages.clone(), shared.large_message_units);
    // Plain sockets keep their own lock-free halves; TLS replaces them after the handshake.
    let (r, mut w) = crate::wire::tls::split_plain(sock);
    let mut reader = FrameReader::new(r, max_message_size).with_budget(budget.0.clone(), budget.1);
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let (settings, admin, who) = loop {
        match tokio::time::timeout_at(deadline, startup(&shared, &mut reader, &mut w)).await {
            Ok(Ok(Startup::Login(settings, admin, who))) => break (settings, admin, who),
            Ok(Ok(Startup::Tls(tls))) => {
                let (r, tls_w) =
                    match tokio::time::timeout_at(deadline, accept_tls(&tls, reader, w)).await {
                        Ok(r) => r?,
                        Err(_) => return Ok(()),
                    };
                reader =
                    FrameReader::new(r, max_message_size).with_budget(budget.0.clone(), budget.1);
                w = tls_w;
            }
            Ok(Ok(Startup::Closed)) => {
                w.close().await;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let mut out = BytesMut::new();
                build::error(
                    &mut out,
                    "FATAL",
                    "08P01",
                    "timeout during startup and authentication",
                );
                let _ = send(&mut w, &out).await;
                w.close().await;
                return Ok(());
            }
        }
    };
    let n = shared.clients.fetch_add(1, Ordering::AcqRel) + 1;
    let _guard = ClientGuard(shared.clone());
    let mut out = BytesMut::new();
    if n > shared.map().max_client_connections {
        build::error(
            &mut out,
            "FATAL",
            "53300",
            "sorry, too many clients already",
        );
        send(&mut w, &out).await?;
        w.close().await;
        return Ok(());
    }
    let (pid, secret, slot) = shared.cancels.register(&who.user);
    struct Unreg(Arc<Shared>, i32, i32);
    impl Drop for Unreg {
        fn drop(&mut self) {
            self.0.cancels.unregister(self.1, self.2);
        }
    }
    let _unreg = Unreg(shared.clone(), pid, secret);
    build::auth(&mut out, 0, &[]);
    // What the client's session runs as on the shards is its user's shard role.
    let role = shared
        .map()
        .users
        .iter()
        .find(|u| u.name == who.user)
        .and_then(|u| u.shard_login.as_ref().map(|l| l.user.clone()));
    for (k, v) in server_params(&shared, &settings).await {
        let v = match (&role, k.as_str()) {
            (Some(r), "session_authorization") => r.clone(),
            _ => v,
        };
        build::parameter_status(&mut out, &k, &v);
    }
    build::backend_key_data(&mut out, pid, secret);
    build::ready_for_query(&mut out, b'I');
    send(&mut w, &out).await?;
    let registration = shared.client_list.register(&who.user, &who.database, peer);
    if admin {
        // The console is shown `active`: it only ever runs the command being listed.
        registration
            .entry
            .set_state(crate::session::clients::ACTIVE);
        crate::ops::admin::run(shared, reader, w).await?;
        return Ok(());
    }
    Session::new(shared, reader, w, settings, slot)
        .with_client(registration.entry.clone())
        .with_key(pid, &who.user)
        .run()
        .await?;
    Ok(())
}
