//! The HTTP endpoint on the map's `admin:` address: `GET /metrics` (Prometheus text format,
//! see [`crate::telemetry`]) and `GET /health`.
//!
//! `/health` answers 200 when every shard gives a pooled connection within a second, 503
//! otherwise, with a small JSON body naming each shard's state. Requests are read with a
//! size and time bound; anything but those two GETs is 404 (or 405 for other methods).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::session::Shared;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time each shard has to give a connection for `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the endpoint on `listener` until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => {
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, handle(sh, sock)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, mut sock: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    if !matches!(head, Ok(Ok(true))) {
        return respond(&mut sock, 400, "text/plain", "bad request\n").await;
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let topo = shared.topo();
            let stats: Vec<_> = (0..topo.pools.len()).map(|s| topo.shard_stats(s)).collect();
            let body = shared.telemetry.render(
                shared.clients.load(Ordering::Relaxed),
                &stats,
                &topo.pools,
            );
            respond(&mut sock, 200, "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/health") => {
            let (ok, body) = health(&shared).await;
            respond(
                &mut sock,
                if ok { 200 } else { 503 },
                "application/json",
                &body,
            )
            .await
        }
        ("GET", _) => {
            respond(
                &mut sock,
                404,
                "text/plain",
                "not found: try /metrics or /health\n",
            )
            .await
        }
        _ => respond(&mut sock, 405, "text/plain", "only GET\n").await,
    }
}

/// Whether every shard gives a connection in time, and the JSON body.
async fn health(shared: &Arc<Shared>) -> (bool, String) {
    let topo = shared.topo();
    let checks = topo.pools.iter().map(|p| {
        let p = p.clone();
        async move {
            let up = match tokio::time::timeout(HEALTH_TIMEOUT, p.checkout()).await {
                Ok(Ok(c)) => {
                    c.release();
                    true
                }
                _ => false,
            };
            (p.info.name.clone(), up)
        }
    });
    let results = futures::future::join_all(checks).await;
    let ok = results.iter().all(|(_, up)| *up);
    let shards: Vec<String> = results
        .iter()
        .map(|(n, up)| format!("\"{n}\":\"{}\"", if *up { "up" } else { "down" }))
        .collect();
    (
        ok,
        format!(
            "{{\"status\":\"{}\",\"shards\":{{{}}}}}\n",
            if ok { "ok" } else { "degraded" },
            shards.join(",")
        ),
    )
}

async fn respond(sock: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
