//! A fault-injecting TCP relay for tests: sits between the proxy and one shard, forwards
//! bytes both ways, and when armed breaks the connection that carries a chosen statement —
//! before the shard sees it, or after the shard got it but before its reply comes back.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What an armed relay does to the connection that sends the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close it before the request reaches the shard.
    DropRequest,
    /// Deliver the request, then close the connection before any reply reaches the sender
    /// (the shard runs it; its answer is lost).
    DropReply,
    /// Abort the shard's open transaction behind the sender's back: send it a failing
    /// statement first (its answer is swallowed), then the request.
    AbortFirst,
}

#[derive(Default)]
struct Armed {
    plan: Option<(Vec<u8>, Fault)>,
    fired: usize,
}

/// A relay to `127.0.0.1:<upstream>`, listening on [`Relay::port`].
pub struct Relay {
    /// Where it listens.
    pub port: u16,
    armed: Arc<Mutex<Armed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to the shard on `upstream`.
    pub async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let armed = Arc::new(Mutex::new(Armed::default()));
        let a = armed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let a = a.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        pump(client, server, a).await;
                    }
                });
            }
        });
        Relay { port, armed, task }
    }

    /// Breaks the next connection that sends `pattern` (once).
    pub fn arm(&self, pattern: &str, fault: Fault) {
        let mut a = self.armed.lock();
        a.plan = Some((pattern.as_bytes().to_vec(), fault));
        a.fired = 0;
    }

    /// How many times a fault fired since it was last armed.
    pub fn fired(&self) -> usize {
        self.armed.lock().fired
    }

    /// Disarms without firing.
    pub fn disarm(&self) {
        self.armed.lock().plan = None;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(client: TcpStream, server: TcpStream, armed: Arc<Mutex<Armed>>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cut = Arc::new(Notify::new());
    let cut2 = cut.clone();
    // Set before the request goes out: no reply read after it is forwarded.
    let is_cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_cut2 = is_cut.clone();
    // Replies to swallow: the shard's messages up to this many ReadyForQuery are dropped.
    let swallow = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let swallow2 = swallow.clone();
    // Shard -> client, until the shard closes or the connection is cut.
    let back = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut held: Vec<u8> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = cut2.notified() => break,
                r = sr.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) if is_cut2.load(std::sync::atomic::Ordering::Acquire) => break,
                    Ok(n) => {
                        held.extend_from_slice(&buf[..n]);
                        // Drop whole messages while some are to be swallowed.
                        while swallow2.load(std::sync::atomic::Ordering::Acquire) > 0 && held.len() >= 5 {
                            let len = u32::from_be_bytes([held[1], held[2], held[3], held[4]]) as usize;
                            if held.len() < len + 1 {
                                break;
                            }
                            if held[0] == b'Z' {
                                swallow2.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                            }
                            held.drain(..len + 1);
                        }
                        if swallow2.load(std::sync::atomic::Ordering::Acquire) == 0 && !held.is_empty() {
                            if cw.write_all(&held).await.is_err() { break }
                            held.clear();
                        }
                    }
                },
            }
        }
        let _ = cw.shutdown().await;
    });
    // Client -> shard, watching for the armed pattern.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let fire = {
            let mut a = armed.lock();
            let hit = a
                .plan
                .as_ref()
                .filter(|(p, _)| chunk.windows(p.len()).any(|w| w == p.as_slice()))
                .map(|(_, f)| *f);
            if hit.is_some() {
                a.plan = None;
                a.fired += 1;
            }
            hit
        };
        match fire {
            Some(Fault::DropRequest) => {
                is_cut.store(true, std::sync::atomic::Ordering::Release);
                cut.notify_one();
                break;
            }
            Some(Fault::AbortFirst) => {
                swallow.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let mut q = vec![b'Q'];
                let sql = b"SELECT 1/0\0";
                q.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
                q.extend_from_slice(sql);
                q.extend_from_slice(chunk);
                if sw.write_all(&q).await.is_err() {
                    break;
                }
            }
            Some(Fault::DropReply) => {
                // Stop replies first, then deliver the request and give the shard time to
                // run it before its connection closes.
                is_cut.store(true, std::sync::atomic::Ordering::Release);
                cut.notify_one();
                let _ = sw.write_all(chunk).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            None => {
                if sw.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
    }
    cut.notify_one();
    let _ = back.await;
}
