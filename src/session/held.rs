//! The backend connections a session holds, together with the cancel targets another task
//! reads to forward a client's CancelRequest (see [`crate::wire::cancel::Slot`]).
//!
//! The targets run parallel to the connections — target `i` is connection `i`'s backend —
//! and [`HeldConns`] is the only way to add or drop a connection, so the two cannot drift:
//! a cancel reaches exactly the backends the session holds.

use std::sync::Arc;

use crate::backend::pool::{PooledConn, ShardPool};
use crate::error::ProxyError;
use crate::wire::cancel::{CancelSlot, CancelTarget, Slot};

/// The connections a session holds and their cancel targets, kept in step. Reads (indexing,
/// `iter`, `len`, …) go through the slice; a connection's state may be changed in place
/// (`conns[i]`, [`HeldConns::iter_mut`]), but only the methods here add or drop one.
pub(super) struct HeldConns {
    conns: Vec<PooledConn>,
    slot: CancelSlot,
}

/// Where a cancel for `c`'s backend is sent.
fn cancel_target(c: &PooledConn) -> CancelTarget {
    let pool = c.pool();
    CancelTarget {
        host: pool.host.clone(),
        port: pool.info.port,
        pid: c.pid,
        secret: c.secret,
    }
}

impl HeldConns {
    /// No connections yet; their cancel targets go to `slot`.
    pub fn new(slot: CancelSlot) -> Self {
        HeldConns {
            conns: Vec::new(),
            slot,
        }
    }

    /// The session's cancel slot (whether `pg_terminate_backend` named it).
    #[inline]
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// A connection from `pool` for the statement under way; a cancel of the statement
    /// while it waits ends the wait with 57014 (see [`Slot`]). The checkout is polled first,
    /// so a free connection costs nothing more.
    pub async fn checkout(&self, pool: &Arc<ShardPool>) -> Result<PooledConn, ProxyError> {
        tokio::select! {
            biased;
            r = pool.checkout() => r,
            () = self.slot.cancel_requested() => {
                self.slot.take_cancel();
                Err(ProxyError::QueryCanceled)
            }
        }
    }

    /// Holds `conn` (a cancel now reaches it); returns its index. When the statement was
    /// cancelled before (it had no backend the cancel could reach), `conn` is not held and
    /// the statement fails with 57014 before it reaches the shard: the connection goes back
    /// to the pool (a cancel never reached it), or is closed when it joined the client's
    /// transaction (its shard rolls back that `BEGIN`).
    pub fn push(&mut self, conn: PooledConn) -> Result<usize, ProxyError> {
        if !self.slot.register(cancel_target(&conn)) {
            if conn.ready_status == b'I' {
                conn.release();
            } // else dropped here: closed
            return Err(ProxyError::QueryCanceled);
        }
        self.conns.push(conn);
        Ok(self.conns.len() - 1)
    }

    /// Drops (closes) the connections for which `keep` is false, and their cancel targets.
    pub fn retain(&mut self, mut keep: impl FnMut(&PooledConn) -> bool) {
        let keep: Vec<bool> = self.conns.iter().map(&mut keep).collect();
        if !keep.contains(&false) {
            return;
        }
        // The targets first: a cancel never sees a backend the session no longer holds.
        let mut targets = self.slot.lock();
        let mut i = 0;
        targets.retain(|_| {
            i += 1;
            keep.get(i - 1).copied().unwrap_or(false)
        });
        drop(targets);
        let mut j = 0;
        self.conns.retain(|_| {
            j += 1;
            keep.get(j - 1).copied().unwrap_or(false)
        });
    }

    /// Stops holding the connection at `idx` and hands it over (a cursor kept past its
    /// transaction pins it); it is forgotten for cancels.
    pub fn take(&mut self, idx: usize) -> PooledConn {
        let mut targets = self.slot.lock();
        let mut i = 0;
        targets.retain(|_| {
            i += 1;
            i - 1 != idx
        });
        drop(targets);
        self.conns.remove(idx)
    }

    /// Stops holding the most recently taken connection and returns it, with whether a
    /// cancel was forwarded to the session's backends since they were taken (then it must
    /// be closed, not pooled).
    pub fn pop(&mut self) -> Option<(PooledConn, bool)> {
        let conn = self.conns.pop()?;
        let cancelled = self.slot.release_last();
        Some((conn, cancelled))
    }

    /// Gives every connection back to its pool — unless a cancel was forwarded to them since
    /// they were taken (the signal may land after the statement it was meant for) or
    /// `reusable` (asked only then) says no: then they are closed.
    pub fn release_all(&mut self, reusable: impl FnOnce() -> bool) {
        // Forgotten for cancels before they are given back (see `Slot`).
        let cancelled = self.slot.release_all();
        let keep = !cancelled && reusable();
        for c in self.conns.drain(..) {
            if keep {
                c.release();
            }
        }
    }

    /// Closes every connection (their shards roll back what they had open).
    pub fn close_all(&mut self) {
        self.slot.release_all();
        self.conns.clear();
    }

    /// Sends a CancelRequest to the backends of the connections at `idxs` and marks them
    /// to be closed instead of pooled (a late cancel must not hit another query).
    pub fn cancel(&mut self, idxs: impl IntoIterator<Item = usize>) {
        for i in idxs {
            let Some(c) = self.conns.get_mut(i) else {
                continue;
            };
            c.discard = true;
            let target = cancel_target(c);
            tokio::spawn(async move { crate::wire::cancel::send_cancel(&target).await });
        }
    }

    /// The held connections, to change their state in place.
    #[inline]
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, PooledConn> {
        self.conns.iter_mut()
    }
}

impl std::ops::Deref for HeldConns {
    type Target = [PooledConn];
    #[inline]
    fn deref(&self) -> &[PooledConn] {
        &self.conns
    }
}

impl std::ops::Index<usize> for HeldConns {
    type Output = PooledConn;
    #[inline]
    fn index(&self, i: usize) -> &PooledConn {
        &self.conns[i]
    }
}

impl std::ops::IndexMut<usize> for HeldConns {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut PooledConn {
        &mut self.conns[i]
    }
}
