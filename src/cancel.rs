//! CancelRequest routing: the proxy hands each client its own (pid, secret) pair and
//! remembers which backend connections the client is using, so a cancel sent to the
//! proxy is forwarded to exactly those backends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncWriteExt;

/// A backend a cancel is forwarded to.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Shard host.
    pub host: std::sync::Arc<str>,
    /// Shard port.
    pub port: u16,
    /// Backend process id.
    pub pid: i32,
    /// Backend secret key.
    pub secret: i32,
}

/// The backends one client session is currently using.
pub type CancelSlot = Arc<Mutex<Vec<CancelTarget>>>;

/// Map from the keys handed to clients to their sessions' slots.
#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<(i32, i32), CancelSlot>>,
}

impl CancelRegistry {
    /// Registers a new session; returns its (pid, secret) and slot.
    pub fn register(&self) -> (i32, i32, CancelSlot) {
        let mut rng = rand::thread_rng();
        let mut slots = self.slots.lock();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = slots.entry(key) {
                let slot: CancelSlot = Arc::new(Mutex::new(Vec::new()));
                e.insert(slot.clone());
                return (key.0, key.1, slot);
            }
        }
    }

    /// Removes a session.
    pub fn unregister(&self, pid: i32, secret: i32) {
        self.slots.lock().remove(&(pid, secret));
    }

    /// Forwards a cancel for (pid, secret) to the backends that session is using.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let targets = match self.slots.lock().get(&(pid, secret)) {
            Some(slot) => slot.lock().clone(),
            None => return, // Postgres ignores unknown keys silently, so do we.
        };
        for t in targets {
            send_cancel(&t).await;
        }
    }
}

/// Sends a CancelRequest to one backend (at most 5 s; failures are logged, as a cancel is
/// best effort in Postgres too).
pub async fn send_cancel(t: &CancelTarget) {
    let pkt = cancel_packet(t.pid, t.secret);
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((&*t.host, t.port)).await?;
        s.write_all(&pkt).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), fut).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(host = %t.host, port = t.port, error = %e, "sending a cancel failed")
        }
        Err(_) => tracing::warn!(host = %t.host, port = t.port, "sending a cancel timed out"),
    }
}

/// The 16-byte CancelRequest packet.
pub fn cancel_packet(pid: i32, secret: i32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0..4].copy_from_slice(&16i32.to_be_bytes());
    p[4..8].copy_from_slice(&crate::protocol::CANCEL_REQUEST.to_be_bytes());
    p[8..12].copy_from_slice(&pid.to_be_bytes());
    p[12..16].copy_from_slice(&secret.to_be_bytes());
    p
}
