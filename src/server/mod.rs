//! The listener: accepts clients, runs the startup phase (TLS when the map has `tls:`,
//! GSSENC refusal, cancel requests, protocol negotiation, password authentication) and
//! hands each logged-in client to a [`Session`] task. [`runtime`] builds the tokio runtime.

pub mod runtime;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::backend::pool::ShardPool;
use crate::routing::router::PlanCache;
use crate::session::settings::Settings;
use crate::session::{Session, Shared, Topology};
use crate::sharding::shardmap::{AuthMethod, ShardMap};
use crate::wire::auth::{md5_expected, ScramSecret, ScramServer};
use crate::wire::cancel::CancelRegistry;
use crate::wire::protocol::{self, build, Cursor, FrameReader};
use crate::wire::tls::{NetRead, NetWrite, ServerTls};

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

/// Builds the shared state for a map.
pub fn shared_state(map: ShardMap) -> Arc<Shared> {
    let map = Arc::new(map);
    let pools = map
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| ShardPool::new(i, s.clone(), map.pool.clone()))
        .collect();
    let users = Arc::new(crate::session::user_secrets(&map));
    let telemetry = crate::telemetry::Telemetry::new(map.shard_names());
    let large_message_units = map.max_buffered >> 10;
    Arc::new(Shared {
        login_key: rand::random(),
        large_messages: Arc::new(tokio::sync::Semaphore::new(large_message_units)),
        large_message_units,
        topology: arc_swap::ArcSwap::from_pointee(Topology {
            map,
            pools,
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
    for (k, v) in server_params(&shared, &settings).await {
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

/// Writes `data` and flushes it (a TLS stream may hold written bytes back until flushed).
async fn send(w: &mut NetWrite, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// The server side of a TLS handshake on a connection that has been answered `S`: the
/// plain halves are put back together and wrapped.
async fn accept_tls(
    tls: &ServerTls,
    reader: FrameReader<NetRead>,
    w: NetWrite,
) -> Result<(NetRead, NetWrite), StartupError> {
    let (NetRead::Plain(r), NetWrite::Plain(w)) = (reader.into_inner(), w) else {
        return Err(StartupError::Refused(
            "TLS requested on an encrypted connection".into(),
        ));
    };
    let sock = r.reunite(w).map_err(std::io::Error::other)?;
    tls.accept(sock).await.map_err(StartupError::Tls)
}

/// How one run of [`startup`] ended.
/// A logged-in client's user and database (`SHOW CLIENTS`).
struct Who {
    user: String,
    database: String,
}

enum Startup {
    /// Logged in: the client's settings, whether it opened the admin console, and who it is.
    Login(Settings, bool, Who),
    /// The client asked for TLS and was answered `S`: the handshake comes next.
    Tls(ServerTls),
    /// Nothing more to do (a cancel request, a refusal already sent, or the client left).
    Closed,
}

/// The ParameterStatus list a client gets: a shard's values, with the client's own settings.
async fn server_params(shared: &Arc<Shared>, settings: &Settings) -> Vec<(String, String)> {
    let cached = shared.server_params.lock().clone();
    let mut params = match cached {
        Some(p) => p,
        None => {
            let pool = &shared.topo().pools[shared.map().default_shard];
            match pool.checkout().await {
                Ok(c) => {
                    let p = c.params.clone();
                    c.release();
                    *shared.server_params.lock() = Some(p.clone());
                    p
                }
                Err(_) => vec![
                    ("server_version".into(), "15.0".into()),
                    ("server_encoding".into(), "UTF8".into()),
                    ("client_encoding".into(), "UTF8".into()),
                    ("DateStyle".into(), "ISO, MDY".into()),
                    ("TimeZone".into(), "UTC".into()),
                    ("integer_datetimes".into(), "on".into()),
                    ("standard_conforming_strings".into(), "on".into()),
                ],
            }
        }
    };
    for (name, value) in settings.known_values() {
        if let Some(p) = params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            p.1 = value.to_string();
        }
    }
    params
}

/// Startup packets until a StartupMessage, then authentication. `None` when the
/// connection was a cancel request or the client left.
async fn startup(
    shared: &Arc<Shared>,
    reader: &mut FrameReader<NetRead>,
    w: &mut NetWrite,
) -> Result<Startup, StartupError> {
    let mut out = BytesMut::new();
    let body = loop {
        let Some(mut pkt) = reader.startup_packet().await? else {
            return Ok(Startup::Closed);
        };
        if pkt.len() < 4 {
            return Err(StartupError::Refused("short startup packet".into()));
        }
        let code = pkt.get_i32();
        match code {
            protocol::SSL_REQUEST | protocol::GSSENC_REQUEST if w.is_tls() => {
                build::error(
                    &mut out,
                    "FATAL",
                    "08P01",
                    "encryption requested again on an encrypted connection",
                );
                send(w, &out).await?;
                return Ok(Startup::Closed);
            }
            protocol::SSL_REQUEST => match shared.map().tls.clone() {
                Some(tls) => {
                    if reader.has_buffered() {
                        // The client must wait for the answer: bytes sent before the
                        // handshake could have been injected by a man in the middle.
                        build::error(
                            &mut out,
                            "FATAL",
                            "08P01",
                            "received unencrypted data after SSL request",
                        );
                        send(w, &out).await?;
                        return Ok(Startup::Closed);
                    }
                    send(w, b"S").await?;
                    return Ok(Startup::Tls(tls));
                }
                None => send(w, b"N").await?,
            },
            protocol::GSSENC_REQUEST => send(w, b"N").await?,
            protocol::CANCEL_REQUEST => {
                if pkt.len() >= 8 {
                    let pid = pkt.get_i32();
                    let secret = pkt.get_i32();
                    shared.cancels.cancel(pid, secret).await;
                }
                return Ok(Startup::Closed);
            }
            c if c >> 16 == 3 => {
                if c & 0xffff != 0 {
                    // Newer minor version: answer NegotiateProtocolVersion for 3.0.
                    let mut unknown = Vec::new();
                    let mut cur = Cursor::new(&pkt, "StartupMessage");
                    while let Ok(k) = cur.cstr() {
                        if k.is_empty() {
                            break;
                        }
                        if k.starts_with("_pq_.") {
                            unknown.push(k.to_string());
                        }
                        let _ = cur.cstr();
                    }
                    let mut b = BytesMut::new();
                    b.extend_from_slice(&[b'v', 0, 0, 0, 0]);
                    b.extend_from_slice(&0i32.to_be_bytes());
                    b.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
                    for u in &unknown {
                        build::put_cstr(&mut b, u);
                    }
                    let len = (b.len() - 1) as i32;
                    b[1..5].copy_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&b);
                }
                break pkt;
            }
            other => {
                build::error(
                    &mut out,
                    "FATAL",
                    "0A000",
                    &format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        other >> 16,
                        other & 0xffff
                    ),
                );
                send(w, &out).await?;
                return Ok(Startup::Closed);
            }
        }
    };
    if !w.is_tls() && shared.map().tls.as_ref().is_some_and(|t| t.require) {
        // Like a `hostssl`-only pg_hba.conf: plain connections may only cancel queries.
        out.clear();
        build::error(
            &mut out,
            "FATAL",
            "28000",
            "SSL required: this proxy accepts encrypted connections only (use sslmode=require or stricter)",
        );
        send(w, &out).await?;
        return Ok(Startup::Closed);
    }
    let mut cur = Cursor::new(&body, "StartupMessage");
    let mut user = None;
    let mut database = None;
    let mut settings = Settings::default();
    loop {
        let k = cur
            .cstr()
            .map_err(|_| StartupError::Refused("malformed startup packet".into()))?;
        if k.is_empty() {
            break;
        }
        let v = cur
            .cstr()
            .map_err(|_| StartupError::Refused("malformed startup packet".into()))?;
        match k {
            "user" => user = Some(v.to_string()),
            "database" => database = Some(v.to_string()),
            // A replication connection (walsender) is not something a proxy can serve.
            "replication"
                if !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "off" | "no" | "0"
                ) =>
            {
                build::error(
                    &mut out,
                    "FATAL",
                    "0A000",
                    "replication connections are not supported by shardwire: connect to a shard directly",
                );
                send(w, &out).await?;
                return Ok(Startup::Closed);
            }
            "replication" => {}
            // `-c name=value` settings follow the client like its other startup parameters.
            "options" => {
                let pairs = crate::session::settings::startup_options(v)
                    .map_err(|m| ("08P01", m))
                    .and_then(|pairs| {
                        pairs
                            .into_iter()
                            .map(|(n, v)| startup_setting(&n, &v).map(|v| (n, v)))
                            .collect::<Result<Vec<_>, _>>()
                    });
                match pairs {
                    Ok(pairs) => pairs.iter().for_each(|(n, v)| settings.set_value(n, v)),
                    Err((code, msg)) => {
                        build::error(&mut out, "FATAL", code, &msg);
                        send(w, &out).await?;
                        return Ok(Startup::Closed);
                    }
                }
            }
            k if k.starts_with("_pq_.") => {}
            k => match startup_setting(k, v) {
                Ok(v) => settings.set_value(k, &v),
                Err((code, msg)) => {
                    build::error(&mut out, "FATAL", code, &msg);
                    send(w, &out).await?;
                    return Ok(Startup::Closed);
                }
            },
        }
    }
    let Some(user) = user else {
        build::error(
            &mut out,
            "FATAL",
            "28000",
            "no PostgreSQL user name specified in startup packet",
        );
        send(w, &out).await?;
        return Ok(Startup::Closed);
    };
    // One snapshot for the whole login: its user and its database are checked against the
    // same map, even when a reload swaps them meanwhile.
    let topo = shared.topo();
    let entry = topo.users.get(&user).cloned();
    let ok = match topo.map.auth {
        AuthMethod::ScramSha256 => {
            let secret = match entry.as_ref() {
                Some(e) => e.1.clone(),
                None => crate::wire::auth::ScramSecret::fake(&user, &shared.login_key),
            };
            scram_login(reader, w, &mut out, secret).await?
        }
        AuthMethod::Md5 => {
            md5_login(
                reader,
                w,
                &mut out,
                &user,
                entry.as_ref().map(|e| e.0.as_str()),
            )
            .await?
        }
    };
    if !ok {
        out.clear();
        build::error(
            &mut out,
            "FATAL",
            "28P01",
            &format!("password authentication failed for user \"{user}\""),
        );
        send(w, &out).await?;
        return Ok(Startup::Closed);
    }
    // The admin console is the database named `shardwire`, for users with `admin: true`.
    let admin = database.as_deref() == Some(ADMIN_DATABASE);
    if admin && !topo.map.users.iter().any(|u| u.name == user && u.admin) {
        out.clear();
        build::error(
            &mut out,
            "FATAL",
            "42501",
            &format!("user \"{user}\" may not use the admin console: set `admin: true` on the user in the shard map"),
        );
        send(w, &out).await?;
        return Ok(Startup::Closed);
    }
    // As in Postgres, the database defaults to the user name, and a name the proxy does not
    // serve fails after authentication (so it tells nothing to who cannot log in).
    let database = database.unwrap_or_else(|| user.clone());
    if !admin && !topo.map.databases.contains(&database) {
        // After the authentication messages, as from Postgres.
        build::error(
            &mut out,
            "FATAL",
            "3D000",
            &format!("database \"{database}\" does not exist"),
        );
        send(w, &out).await?;
        return Ok(Startup::Closed);
    }
    if !out.is_empty() {
        send(w, &out).await?;
        out.clear();
    }
    Ok(Startup::Login(settings, admin, Who { user, database }))
}

async fn read_password_message(
    reader: &mut FrameReader<NetRead>,
) -> Result<Option<bytes::Bytes>, StartupError> {
    match reader.next().await? {
        Some(f) if f.tag == b'p' => Ok(Some(f.raw.slice(5..))),
        Some(_) => Err(StartupError::Refused("expected a password message".into())),
        None => Ok(None),
    }
}

async fn scram_login(
    reader: &mut FrameReader<NetRead>,
    w: &mut NetWrite,
    out: &mut BytesMut,
    // Unknown users come with a fake verifier (`ScramSecret::fake`): the same exchange,
    // the same stable salt and the same work, so a client cannot tell them apart from a
    // wrong password.
    secret: ScramSecret,
) -> Result<bool, StartupError> {
    build::auth(out, 10, b"SCRAM-SHA-256\0\0");
    send(w, out).await?;
    out.clear();
    let Some(first) = read_password_message(reader).await? else {
        return Ok(false);
    };
    let mut c = Cursor::new(&first, "SASLInitialResponse");
    let mech = c
        .cstr()
        .map_err(|_| StartupError::Refused("malformed SASLInitialResponse".into()))?;
    if mech != "SCRAM-SHA-256" {
        return Ok(false);
    }
    let len = c
        .i32()
        .map_err(|_| StartupError::Refused("malformed SASLInitialResponse".into()))?;
    if len < 0 || len as usize != c.rest().len() {
        return Ok(false);
    }
    let Ok((server, server_first)) = ScramServer::start(secret, c.rest()) else {
        return Ok(false);
    };
    build::auth(out, 11, server_first.as_bytes());
    send(w, out).await?;
    out.clear();
    let Some(fin) = read_password_message(reader).await? else {
        return Ok(false);
    };
    match server.finish(&fin) {
        Ok(server_final) => {
            build::auth(out, 12, server_final.as_bytes());
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

async fn md5_login(
    reader: &mut FrameReader<NetRead>,
    w: &mut NetWrite,
    out: &mut BytesMut,
    user: &str,
    password: Option<&str>,
) -> Result<bool, StartupError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    build::auth(out, 5, &salt);
    send(w, out).await?;
    out.clear();
    let Some(resp) = read_password_message(reader).await? else {
        return Ok(false);
    };
    let given = resp.strip_suffix(&[0u8]).unwrap_or(&resp);
    let Some(password) = password else {
        return Ok(false);
    };
    Ok(given == md5_expected(user, password, salt).as_bytes())
}

/// A setting from the startup packet as the session keeps it: `client_encoding` as Postgres
/// names it (asyncpg sends `'utf-8'`), refused with FATAL 0A000 when it is one the proxy
/// does not speak; others unchanged.
fn startup_setting(name: &str, value: &str) -> Result<String, (&'static str, String)> {
    if name != "client_encoding" {
        return Ok(value.to_string());
    }
    crate::wire::encoding::canonical_encoding(value)
        .map(str::to_string)
        .ok_or_else(|| ("0A000", crate::wire::encoding::unsupported_encoding(value)))
}
