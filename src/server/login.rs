//! The startup phase of one client: TLS, GSSENC refusal, protocol negotiation, startup
//! parameters (`options` included), password authentication (SCRAM-SHA-256 or md5) and the
//! database check; what the session starts with.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rand::RngCore;
use tokio::io::AsyncWriteExt;

use crate::session::settings::Settings;
use crate::session::Shared;
use crate::sharding::shardmap::AuthMethod;
use crate::wire::auth::{md5_expected, ScramSecret, ScramServer};
use crate::wire::protocol::{self, build, Cursor, FrameReader};
use crate::wire::tls::{NetRead, NetWrite, ServerTls};

use super::{StartupError, ADMIN_DATABASE};

/// Writes `data` and flushes it (a TLS stream may hold written bytes back until flushed).
pub(super) async fn send(w: &mut NetWrite, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// The server side of a TLS handshake on a connection that has been answered `S`: the
/// plain halves are put back together and wrapped.
pub(super) async fn accept_tls(
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
pub(super) struct Who {
    pub(super) user: String,
    pub(super) database: String,
}

pub(super) enum Startup {
    /// Logged in: the client's settings, whether it opened the admin console, and who it is.
    Login(Settings, bool, Who),
    /// The client asked for TLS and was answered `S`: the handshake comes next.
    Tls(ServerTls),
    /// Nothing more to do (a cancel request, a refusal already sent, or the client left).
    Closed,
}

/// The ParameterStatus list a client gets: a shard's values, with the client's own settings.
pub(super) async fn server_params(
    shared: &Arc<Shared>,
    settings: &Settings,
) -> Vec<(String, String)> {
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
pub(super) async fn startup(
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
