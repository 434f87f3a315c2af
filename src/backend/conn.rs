//! One server connection to a shard: TCP connect, TLS when the shard URL's `sslmode` asks
//! for it, startup, authentication (trust, cleartext, md5, SCRAM-SHA-256 via
//! `postgres-protocol`), and raw frame I/O.

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sharding::shard::ShardInfo;
use crate::wire::protocol::{error_fields, Cursor, Frame, FrameError, FrameReader};
use crate::wire::tls::{NetRead, NetWrite, SslMode};

/// Largest message accepted from a shard (a row can be up to 1 GB in Postgres; we bound lower).
pub const MAX_BACKEND_MESSAGE: usize = 256 * 1024 * 1024;

/// Why a shard connection failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect or socket I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The connect or startup did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The shard sent something that is not valid protocol.
    #[error("protocol error from shard: {0}")]
    Frame(#[from] FrameError),
    /// The shard closed the connection.
    #[error("connection closed by the shard")]
    Closed,
    /// The shard refused the login or startup.
    #[error("{message} (SQLSTATE {code})")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// The shard ended a working session with a FATAL error.
    #[error("the shard ended the session: {message} (SQLSTATE {code})")]
    Ended {
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// The shard asked for an authentication method we cannot do.
    #[error("unsupported authentication request {0} from shard")]
    UnsupportedAuth(i32),
    /// The URL asks for TLS (`sslmode={0}`) but the shard does not offer it.
    #[error("the shard does not accept TLS, but the shard URL has sslmode={0}")]
    TlsRefused(&'static str),
    /// The shard answered the SSLRequest with something other than `S` or `N`.
    #[error("unexpected answer {0:?} to SSLRequest from shard")]
    TlsAnswer(char),
    /// The TLS handshake failed (certificate not trusted, wrong host name, ...).
    #[error("TLS handshake with the shard failed: {0}")]
    Tls(#[source] std::io::Error),
}

/// How a shard answered one simple-query statement ([`BackendConn::command`]).
#[derive(Debug, Default)]
pub struct Reply {
    /// The shard's error (SQLSTATE, message), if it reported one.
    pub error: Option<(String, String)>,
    /// The last command tag (empty when none came).
    pub tag: String,
    /// The first column of the first row, as text (`None` for no row or NULL).
    pub value: Option<String>,
}

impl Reply {
    /// Whether it succeeded with exactly this command tag.
    pub fn is(&self, tag: &str) -> bool {
        self.error.is_none() && self.tag == tag
    }
}

/// A live, authenticated connection to one shard.
pub struct BackendConn {
    reader: FrameReader<NetRead>,
    writer: NetWrite,
    /// Shard index in the map.
    pub shard: usize,
    /// Backend process id (for CancelRequest).
    pub pid: i32,
    /// Backend secret key (for CancelRequest).
    pub secret: i32,
    /// ParameterStatus values reported at startup.
    pub params: Vec<(String, String)>,
    /// Hashes of the proxy-named prepared statements that exist on this connection.
    pub prepared: HashSet<u64, foldhash::fast::RandomState>,
    /// Fingerprint of the session settings (SETs) applied to this connection.
    pub settings_fp: u64,
    /// The proxy's schema epoch its prepared statements belong to (see `Shared::schema_epoch`).
    pub prepared_epoch: u64,
    /// Pool generation this connection was made in.
    pub generation: u64,
    /// Set when the connection must not be reused (I/O error, unknown state).
    pub broken: bool,
    /// Set when the connection works but must be closed instead of pooled (e.g. a cancel
    /// was sent to it and could still arrive).
    pub discard: bool,
    /// Transaction status of the last ReadyForQuery it sent (`I`, `T`, `E`).
    pub ready_status: u8,
    /// The `client_encoding` the connection runs with when it is not UTF-8: the text of the
    /// Query and Parse messages the proxy writes is converted to it (see [`crate::wire::encoding`]).
    pub codec: Option<crate::wire::encoding::Codec>,
    /// Set at the first ReadyForQuery: the login is over, and a FATAL from here on ends a
    /// working session (see [`BackendConn::read_frame`]).
    logged_in: bool,
}

impl BackendConn {
    /// Connects and logs in to `info`, within `timeout`.
    /// `statement_timeout` becomes the connection's default (a startup parameter, so
    /// `RESET ALL` keeps it and a client's own `SET statement_timeout` overrides it).
    pub async fn connect(
        shard: usize,
        info: &ShardInfo,
        timeout: Duration,
        statement_timeout: Option<Duration>,
    ) -> Result<BackendConn, BackendError> {
        match tokio::time::timeout(timeout, Self::connect_inner(shard, info, statement_timeout))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout(timeout)),
        }
    }

    async fn connect_inner(
        shard: usize,
        info: &ShardInfo,
        statement_timeout: Option<Duration>,
    ) -> Result<BackendConn, BackendError> {
        let stream = TcpStream::connect((info.host.as_str(), info.port)).await?;
        stream.set_nodelay(true)?;
        let (r, w) = Self::negotiate_tls(info, stream).await?;
        let mut conn = BackendConn {
            reader: FrameReader::new(r, MAX_BACKEND_MESSAGE),
            writer: w,
            shard,
            pid: 0,
            secret: 0,
            params: Vec::new(),
            prepared: HashSet::default(),
            settings_fp: 0,
            prepared_epoch: 0,
            generation: 0,
            broken: false,
            discard: false,
            ready_status: b'I',
            logged_in: false,
            codec: None,
        };
        let mut buf = BytesMut::new();
        let timeout_ms = statement_timeout.map(|d| d.as_millis().to_string());
        let mut params = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if let Some(ms) = &timeout_ms {
            params.push(("statement_timeout", ms.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut buf)?;
        conn.writer.write_all(&buf).await?;
        conn.writer.flush().await?;
        let password = info.password.clone().unwrap_or_default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                b'R' => {
                    let mut c = Cursor::new(f.body(), "Authentication");
                    let code = c.i32()?;
                    buf.clear();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password.as_bytes(), &mut buf)?,
                        5 => {
                            let s = c.bytes(4)?;
                            let salt = [s[0], s[1], s[2], s[3]];
                            let h = postgres_protocol::authentication::md5_hash(
                                info.user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(h.as_bytes(), &mut buf)?;
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut buf,
                            )?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or(BackendError::UnsupportedAuth(code))?;
                            s.update(c.rest())?;
                            frontend::sasl_response(s.message(), &mut buf)?;
                        }
                        12 => {
                            let mut s = scram.take().ok_or(BackendError::UnsupportedAuth(code))?;
                            s.finish(c.rest())?;
                            continue;
                        }
                        other => return Err(BackendError::UnsupportedAuth(other)),
                    }
                    conn.writer.write_all(&buf).await?;
                    conn.writer.flush().await?;
                }
                b'S' => {
                    let mut c = Cursor::new(f.body(), "ParameterStatus");
                    let k = c.cstr()?.to_string();
                    let v = c.cstr()?.to_string();
                    conn.params.push((k, v));
                }
                b'K' => {
                    let mut c = Cursor::new(f.body(), "BackendKeyData");
                    conn.pid = c.i32()?;
                    conn.secret = c.i32()?;
                }
                b'Z' => return Ok(conn),
                b'E' => {
                    let (code, message) = error_fields(f.body());
                    return Err(BackendError::Refused { code, message });
                }
                _ => {} // NoticeResponse and friends during startup
            }
        }
    }

    /// Sends an SSLRequest when the shard's `sslmode` asks for TLS and runs the handshake
    /// on `S`; `N` means plain for `prefer` and an error otherwise. Exactly one byte is read
    /// before the handshake, so nothing unencrypted can be slipped in after it.
    async fn negotiate_tls(
        info: &ShardInfo,
        mut stream: TcpStream,
    ) -> Result<(NetRead, NetWrite), BackendError> {
        if !info.tls.enabled() {
            return Ok(crate::wire::tls::split_plain(stream));
        }
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&8i32.to_be_bytes());
        req[4..].copy_from_slice(&crate::wire::protocol::SSL_REQUEST.to_be_bytes());
        stream.write_all(&req).await?;
        let mut answer = [0u8; 1];
        if stream.read(&mut answer).await? == 0 {
            return Err(BackendError::Closed);
        }
        match answer[0] {
            b'S' => info
                .tls
                .connect(&info.host, stream)
                .await
                .map_err(BackendError::Tls),
            b'N' if info.tls.mode == SslMode::Prefer => {
                tracing::debug!(shard = %info.name, "shard does not offer TLS; sslmode=prefer goes on in plain text");
                Ok(crate::wire::tls::split_plain(stream))
            }
            b'N' => Err(BackendError::TlsRefused(info.tls.mode.name())),
            other => Err(BackendError::TlsAnswer(other as char)),
        }
    }

    /// Reads one message; a closed connection is an error. So is a FATAL (or PANIC) error
    /// after login — the shard ends the session right after it (an administrator's
    /// `pg_terminate_backend`, a shutdown, `idle_in_transaction_session_timeout`): it is
    /// never relayed as is, since the client's session goes on through the proxy.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        match self.reader.next().await {
            Ok(Some(f)) => {
                if f.tag == b'Z' {
                    self.ready_status = f.body().first().copied().unwrap_or(b'I');
                    self.logged_in = true;
                } else if f.tag == b'E'
                    && self.logged_in
                    && crate::wire::protocol::error_is_fatal(f.body())
                {
                    self.broken = true;
                    let (code, message) = error_fields(f.body());
                    return Err(BackendError::Ended { code, message });
                }
                Ok(f)
            }
            Ok(None) => {
                self.broken = true;
                Err(BackendError::Closed)
            }
            Err(e) => {
                self.broken = true;
                Err(e.into())
            }
        }
    }

    /// Whether an idle connection has gone bad: anything readable on it (a FATAL from a shard
    /// shutdown, or end of stream) means it must not be reused. Never waits.
    pub fn is_stale(&mut self) -> bool {
        if self.broken || self.reader.has_buffered() {
            return true;
        }
        let mut probe = [0u8; 1];
        match self.reader.get_mut().try_read_now(&mut probe) {
            Ok(_) => true, // data or EOF while idle
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Whether a complete message is already buffered (reading it will not wait).
    pub fn has_frame(&self) -> bool {
        self.reader.has_frame()
    }

    /// Writes bytes to the shard.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), BackendError> {
        let converted = self
            .codec
            .and_then(|c| crate::wire::encoding::to_client_messages(&c, data));
        let data = converted.as_deref().unwrap_or(data);
        // flush() is a no-op on plain sockets; TLS may hold the tail back until flushed.
        let sent = match self.writer.write_all(data).await {
            Ok(()) => self.writer.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.broken = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends `sql` as a simple query and returns the first column of its first row as text
    /// (`None` for no row, NULL, or an error).
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        let mut buf = BytesMut::new();
        crate::wire::protocol::build::query(&mut buf, sql);
        self.write_all(&buf).await?;
        let mut value = None;
        let mut failed = false;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' if value.is_none() => {
                    value = crate::gather::datum::first_value(f.body())
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string);
                }
                b'E' => failed = true,
                b'Z' => return Ok(if failed { None } else { value }),
                _ => {}
            }
        }
    }

    /// Sends one statement as a simple query and waits for ReadyForQuery; returns the shard's
    /// error or the statement's command tag. Two-phase commit checks the tag: a
    /// `PREPARE TRANSACTION` in an aborted transaction answers `ROLLBACK`, without an error.
    pub async fn command(&mut self, sql: &str) -> Result<Reply, BackendError> {
        let mut buf = BytesMut::new();
        crate::wire::protocol::build::query(&mut buf, sql);
        self.write_all(&buf).await?;
        let mut reply = Reply::default();
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'E' if reply.error.is_none() => reply.error = Some(error_fields(f.body())),
                b'C' => reply.tag = crate::wire::protocol::command_tag(f.body()).to_string(),
                b'D' if reply.value.is_none() => {
                    reply.value = crate::gather::datum::first_value(f.body())
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string);
                }
                b'Z' => return Ok(reply),
                _ => {}
            }
        }
    }

    /// Sends `sql` as a simple query and waits for ReadyForQuery, discarding results;
    /// returns the first error the shard reported, if any, and the final status byte.
    pub async fn run_simple(
        &mut self,
        sql: &str,
    ) -> Result<(Option<(String, String)>, u8), BackendError> {
        self.run_simple_into(sql, None).await
    }

    /// Like [`BackendConn::run_simple`], appending the ParameterStatus messages the shard
    /// sends (a `SET DateStyle` reports the new value) to `statuses`, raw, when given.
    pub async fn run_simple_into(
        &mut self,
        sql: &str,
        mut statuses: Option<&mut BytesMut>,
    ) -> Result<(Option<(String, String)>, u8), BackendError> {
        let mut buf = BytesMut::new();
        crate::wire::protocol::build::query(&mut buf, sql);
        self.write_all(&buf).await?;
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'E' if err.is_none() => err = Some(error_fields(f.body())),
                b'S' => {
                    if let Some(out) = statuses.as_deref_mut() {
                        out.extend_from_slice(&f.raw);
                    }
                }
                b'Z' => return Ok((err, f.body().first().copied().unwrap_or(b'I'))),
                _ => {}
            }
        }
    }
}
