//! A raw Postgres protocol client for tests that must send messages exactly as a given
//! driver does (Parse/Describe/Flush, BEGIN pipelined with a statement, Close before Sync).
//! Every read is bounded: a proxy that neither answers nor closes fails the test.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: its tag and body.
pub type Msg = (u8, BytesMut);

/// A logged-in raw connection.
pub struct Wire {
    sock: TcpStream,
    buf: BytesMut,
    /// Messages queued by the builder methods, sent by [`Wire::send`].
    pub out: BytesMut,
    /// ParameterStatus values from the login.
    pub params: Vec<(String, String)>,
    /// The process id of BackendKeyData.
    pub pid: i32,
}

impl Wire {
    /// Connects to the proxy on `port` as app/app-secret (SCRAM), with extra startup
    /// parameters.
    pub async fn login(port: u16, extra: &[(&str, &str)]) -> Wire {
        let sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let mut w = Wire {
            sock,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            params: Vec::new(),
            pid: 0,
        };
        let mut params = vec![("user", "app"), ("database", "app")];
        params.extend_from_slice(extra);
        frontend::startup_message(params.iter().copied(), &mut w.out).unwrap();
        w.send().await;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = w.recv().await.expect("closed during login");
            match tag {
                b'R' => match body.get_i32() {
                    0 => {}
                    10 => {
                        let s = ScramSha256::new(b"app-secret", ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut w.out)
                            .unwrap();
                        scram = Some(s);
                        w.send().await;
                    }
                    11 => {
                        let s = scram.as_mut().expect("SASL continue before SASL");
                        s.update(&body).unwrap();
                        frontend::sasl_response(s.message(), &mut w.out).unwrap();
                        w.send().await;
                    }
                    12 => {
                        scram.as_mut().expect("SASL final").finish(&body).unwrap();
                    }
                    other => panic!("unexpected authentication request {other}"),
                },
                b'S' => {
                    let k = cstr(&mut body);
                    let v = cstr(&mut body);
                    w.params.push((k, v));
                }
                b'K' => w.pid = body.get_i32(),
                b'E' => panic!("login failed: {}", error_code(&body)),
                b'Z' => return w,
                _ => {}
            }
        }
    }

    /// Sends what the builders queued.
    pub async fn send(&mut self) {
        self.sock
            .write_all(&self.out)
            .await
            .expect("write to the proxy");
        self.out.clear();
    }

    /// The next message within 10 s; `None` when the proxy closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        self.recv_within(Duration::from_secs(10)).await
    }

    /// The next message within `wait` (panics when none comes in time); `None` on EOF.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let mut m = self.buf.split_to(len + 1);
                    let tag = m.get_u8();
                    m.advance(4);
                    return Some((tag, m));
                }
            }
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no answer from the proxy within {wait:?}"),
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut got = Vec::new();
        loop {
            let m = self.recv().await.expect("closed before ReadyForQuery");
            let done = m.0 == b'Z';
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// Parse `name` as `sql` (no declared types).
    pub fn parse(&mut self, name: &str, sql: &str) -> &mut Self {
        frontend::parse(name, sql, std::iter::empty(), &mut self.out).unwrap();
        self
    }

    /// Bind `portal` to `stmt` with text parameters.
    pub fn bind(&mut self, portal: &str, stmt: &str, params: &[&str]) -> &mut Self {
        frontend::bind(
            portal,
            stmt,
            std::iter::empty::<i16>(),
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty::<i16>(),
            &mut self.out,
        )
        .map_err(|_| ())
        .unwrap();
        self
    }

    /// Bind `portal` to `stmt` with binary parameters (raw bytes each), text results.
    pub fn bind_binary(&mut self, portal: &str, stmt: &str, params: &[&[u8]]) -> &mut Self {
        frontend::bind(
            portal,
            stmt,
            std::iter::once(1i16),
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p);
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty::<i16>(),
            &mut self.out,
        )
        .map_err(|_| ())
        .unwrap();
        self
    }

    /// Describe a statement (`b'S'`) or portal (`b'P'`).
    pub fn describe(&mut self, kind: u8, name: &str) -> &mut Self {
        frontend::describe(kind, name, &mut self.out).unwrap();
        self
    }

    /// Execute `portal` with a row limit (0: all).
    pub fn execute(&mut self, portal: &str, max_rows: i32) -> &mut Self {
        frontend::execute(portal, max_rows, &mut self.out).unwrap();
        self
    }

    /// Close a statement (`b'S'`) or portal (`b'P'`).
    pub fn close(&mut self, kind: u8, name: &str) -> &mut Self {
        frontend::close(kind, name, &mut self.out).unwrap();
        self
    }

    /// Flush.
    pub fn flush(&mut self) -> &mut Self {
        frontend::flush(&mut self.out);
        self
    }

    /// Sync.
    pub fn sync(&mut self) -> &mut Self {
        frontend::sync(&mut self.out);
        self
    }

    /// A simple Query.
    pub fn query(&mut self, sql: &str) -> &mut Self {
        frontend::query(sql, &mut self.out).unwrap();
        self
    }
}

/// The tags of `msgs`, as a string (`"12DCZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// The SQLSTATE of the first ErrorResponse in `msgs`.
pub fn first_error(msgs: &[Msg]) -> Option<String> {
    msgs.iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, b)| error_code(b))
}

/// The first column of each DataRow in `msgs`, as text.
pub fn first_values(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let mut b = b.clone();
            let _n = b.get_i16();
            let len = b.get_i32();
            if len < 0 {
                String::new()
            } else {
                String::from_utf8_lossy(&b[..len as usize]).into_owned()
            }
        })
        .collect()
}

/// The SQLSTATE of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> String {
    let mut b = BytesMut::from(body);
    while !b.is_empty() && b[0] != 0 {
        let t = b.get_u8();
        let v = cstr(&mut b);
        if t == b'C' {
            return v;
        }
    }
    String::new()
}

fn cstr(b: &mut BytesMut) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance((end + 1).min(b.len()));
    s
}
