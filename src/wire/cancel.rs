//! CancelRequest routing: the proxy hands each client its own (pid, secret) pair and
//! remembers which backend connections the client is using, so a cancel sent to the
//! proxy is forwarded to exactly those backends. `pg_terminate_backend` of a client's pid
//! also marks its session to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
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

/// One client session's entry: the backends it is currently using, whether a cancel was
/// forwarded to them, and whether another session asked for it to end
/// (`pg_terminate_backend`).
///
/// A forwarded cancel is a signal the shard may deliver after the statement it was meant
/// for has ended; a backend that got one is therefore closed rather than pooled, or the
/// late signal would cancel whatever runs there next — another client's statement
/// included. Targets are taken and the flag set under one lock, and the session clears the
/// targets (reading the flag) under the same lock *before* it gives the backends back, so a
/// cancel either sees the backends and marks them, or sees none and sends nothing.
///
/// A cancel also reaches a statement that has no backend yet (waiting for a pooled
/// connection, or being brought to the client's settings on one): Postgres cancels the
/// statement in progress, whatever it waits for. The session marks when a statement is
/// under way ([`Slot::statement_started`], [`Slot::statement_ended`]); a cancel during one
/// marks it cancelled and wakes [`Slot::cancel_requested`] (a checkout stops waiting), and
/// [`Slot::register`] refuses the next backend, under the targets' lock, so the statement
/// fails with 57014 before it reaches a shard. Between statements the mark is cleared: a
/// cancel while the client is idle does nothing, and never reaches its next statement.
#[derive(Default)]
pub struct Slot {
    targets: Mutex<Targets>,
    terminated: AtomicBool,
    /// [`IDLE`], [`BUSY`] or [`CANCELLED`]. Only the session moves it to and from `IDLE`; a
    /// cancel only moves it from `BUSY` to `CANCELLED`.
    statement: AtomicU8,
    /// Woken when a cancel marks the statement cancelled.
    wake: tokio::sync::Notify,
}

/// No statement under way: a cancel does nothing.
const IDLE: u8 = 0;
/// A statement is under way (received, not yet answered).
const BUSY: u8 = 1;
/// A cancel came while a statement was under way; it is still to take effect.
const CANCELLED: u8 = 2;

/// See [`Slot`].
#[derive(Default)]
pub struct Targets {
    list: Vec<CancelTarget>,
    cancelled: bool,
}

impl std::ops::Deref for Targets {
    type Target = Vec<CancelTarget>;
    fn deref(&self) -> &Vec<CancelTarget> {
        &self.list
    }
}

impl std::ops::DerefMut for Targets {
    fn deref_mut(&mut self) -> &mut Vec<CancelTarget> {
        &mut self.list
    }
}

impl Slot {
    /// The backends the session is using (the session pushes them; see
    /// [`Slot::release_all`] for giving them back).
    pub fn lock(&self) -> MutexGuard<'_, Targets> {
        self.targets.lock()
    }

    /// Forgets every backend (the session is about to give them back or close them);
    /// returns whether a cancel was forwarded to them since they were taken, in which case
    /// they must be closed, not pooled.
    pub fn release_all(&self) -> bool {
        let mut t = self.targets.lock();
        t.list.clear();
        std::mem::take(&mut t.cancelled)
    }

    /// Forgets the most recently taken backend; returns whether a cancel was forwarded to
    /// the session's backends (then it must be closed, not pooled).
    pub fn release_last(&self) -> bool {
        let mut t = self.targets.lock();
        t.list.pop();
        let cancelled = t.cancelled;
        if t.list.is_empty() {
            t.cancelled = false;
        }
        cancelled
    }

    /// The backends to cancel, marked as cancelled; a statement under way is marked too, for
    /// the backends it has yet to take (see [`Slot`]).
    fn take_for_cancel(&self) -> Vec<CancelTarget> {
        let mut t = self.targets.lock();
        if !t.list.is_empty() {
            t.cancelled = true;
        }
        if self
            .statement
            .compare_exchange(BUSY, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_waiters();
        }
        t.list.clone()
    }

    /// The session took a client message in: a statement is under way until
    /// [`Slot::statement_ended`] (a cancel already marked stays marked).
    #[inline]
    pub fn statement_started(&self) {
        // Only the session leaves IDLE, so no cancel slips between the load and the store.
        if self.statement.load(Ordering::Relaxed) == IDLE {
            self.statement.store(BUSY, Ordering::Release);
        }
    }

    /// The session waits for its client again: a cancel from now on does nothing, and one
    /// that came during the statement and did not take effect is forgotten.
    #[inline]
    pub fn statement_ended(&self) {
        if self.statement.load(Ordering::Relaxed) != IDLE {
            self.statement.store(IDLE, Ordering::Release);
        }
    }

    /// Takes a cancel that came during the statement and has not taken effect yet.
    pub fn take_cancel(&self) -> bool {
        self.statement
            .compare_exchange(CANCELLED, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Resolves once a cancel marks the statement under way cancelled (at once if one has).
    pub async fn cancel_requested(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches a `Notified` from its
            // creation on, so a cancel between the check and the wait is not missed.
            let woken = self.wake.notified();
            if self.statement.load(Ordering::Acquire) == CANCELLED {
                return;
            }
            woken.await;
        }
    }

    /// Adds a backend the session took, unless a cancel came for the statement before it
    /// (then nothing is added, the cancel is taken, and false is returned): checked under
    /// the targets' lock, so a cancel either reaches the backend or is seen here.
    pub fn register(&self, target: CancelTarget) -> bool {
        let mut t = self.targets.lock();
        if self.take_cancel() {
            return false;
        }
        t.list.push(target);
        true
    }

    /// Whether `pg_terminate_backend` named this session; it then ends with FATAL 57P01.
    #[inline]
    pub fn terminated(&self) -> bool {
        self.terminated.load(Ordering::Relaxed)
    }
}

/// See [`Slot`].
pub type CancelSlot = Arc<Slot>;

/// One registered session: its secret, its user and its slot.
struct Registered {
    secret: i32,
    user: Arc<str>,
    slot: CancelSlot,
}

/// Map from the pids handed to clients (unique among live sessions) to their sessions.
#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Registered>>,
}

impl CancelRegistry {
    /// Registers a new session of `user`; returns its (pid, secret) and slot.
    pub fn register(&self, user: &str) -> (i32, i32, CancelSlot) {
        let mut rng = rand::thread_rng();
        let mut slots = self.slots.lock();
        loop {
            let pid = rng.gen_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(e) = slots.entry(pid) {
                let secret = rng.gen::<i32>();
                let slot: CancelSlot = Arc::default();
                e.insert(Registered {
                    secret,
                    user: Arc::from(user),
                    slot: slot.clone(),
                });
                return (pid, secret, slot);
            }
        }
    }

    /// Removes a session.
    pub fn unregister(&self, pid: i32, secret: i32) {
        let mut slots = self.slots.lock();
        if slots.get(&pid).is_some_and(|r| r.secret == secret) {
            slots.remove(&pid);
        }
    }

    /// Forwards a cancel for (pid, secret) to the backends that session is using.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let targets = match self.slots.lock().get(&pid) {
            Some(r) if r.secret == secret => r.slot.take_for_cancel(),
            _ => return, // Postgres ignores unknown keys silently, so do we.
        };
        for t in targets {
            send_cancel(&t).await;
        }
    }

    /// `pg_cancel_backend(pid)` from a client of `user`: cancels what the session with that
    /// pid runs, when it belongs to the same user (Postgres lets a role signal its own
    /// sessions). Returns whether such a session exists.
    pub async fn cancel_pid(&self, pid: i64, user: &str) -> bool {
        self.signal_pid(pid, user, false).await
    }

    /// `pg_terminate_backend(pid)`: like [`CancelRegistry::cancel_pid`], and the session
    /// ends (FATAL 57P01) before it answers anything else.
    pub async fn terminate_pid(&self, pid: i64, user: &str) -> bool {
        self.signal_pid(pid, user, true).await
    }

    async fn signal_pid(&self, pid: i64, user: &str, terminate: bool) -> bool {
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        let targets = match self.slots.lock().get(&pid) {
            Some(r) if &*r.user == user => {
                if terminate {
                    r.slot.terminated.store(true, Ordering::Relaxed);
                }
                r.slot.take_for_cancel()
            }
            _ => return false,
        };
        for t in targets {
            send_cancel(&t).await;
        }
        true
    }
}

/// Sends a CancelRequest to one backend and waits until the shard closes the connection,
/// which it does once it has signalled the backend (libpq's PQcancel waits the same way, so
/// the client's next statement cannot meet the signal); at most 5 s; failures are logged, as
/// a cancel is best effort in Postgres too.
pub async fn send_cancel(t: &CancelTarget) {
    let pkt = cancel_packet(t.pid, t.secret);
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((&*t.host, t.port)).await?;
        s.write_all(&pkt).await?;
        let mut sink = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut s, &mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
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
    p[4..8].copy_from_slice(&crate::wire::protocol::CANCEL_REQUEST.to_be_bytes());
    p[8..12].copy_from_slice(&pid.to_be_bytes());
    p[12..16].copy_from_slice(&secret.to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            host: Arc::from("127.0.0.1"),
            port: 1,
            pid: 1,
            secret: 1,
        }
    }

    /// A cancel with no backend to reach: taken by the statement under way (its next
    /// backend is refused), ignored between statements, forgotten when the statement ends.
    #[tokio::test]
    async fn a_cancel_waits_for_the_statements_backend() {
        let slot = Slot::default();
        // Idle: nothing to cancel, nothing remembered.
        assert!(slot.take_for_cancel().is_empty());
        slot.statement_started();
        assert!(slot.register(target()));
        assert!(!slot.release_all());
        // Under way, no backend: the next one is refused, once.
        assert!(slot.take_for_cancel().is_empty());
        tokio::time::timeout(std::time::Duration::from_secs(1), slot.cancel_requested())
            .await
            .expect("the waiter is woken");
        assert!(!slot.register(target()));
        assert!(slot.lock().is_empty());
        assert!(slot.register(target()));
        slot.release_all();
        // A cancel that did not take effect ends with its statement.
        slot.take_for_cancel();
        slot.statement_ended();
        slot.statement_started();
        assert!(slot.register(target()));
        slot.release_all();
        slot.statement_ended();
        // Between statements: the next statement never sees it.
        slot.take_for_cancel();
        slot.statement_started();
        assert!(!slot.take_cancel());
        assert!(slot.register(target()));
    }

    /// A waiter parked before the cancel comes is woken by it.
    #[tokio::test]
    async fn a_parked_checkout_is_woken() {
        let slot = Arc::new(Slot::default());
        slot.statement_started();
        let s = slot.clone();
        let waiter = tokio::spawn(async move { s.cancel_requested().await });
        tokio::task::yield_now().await;
        slot.take_for_cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(slot.take_cancel());
    }
}
