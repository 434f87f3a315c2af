//! The proxy-side hold a rebalance uses while it switches a unit.
//!
//! While a rebalance runs the gate is *armed*: every transaction (or statement outside one)
//! takes a [`Pass`] before it reaches a shard and gives it back when it ends. To switch a
//! unit the rebalance asks every proxy to *hold*: new passes wait (bounded), and the proxy
//! confirms once the passes in flight have come back, so no statement runs while rows change
//! owner. Unarmed, the gate costs one relaxed atomic load per statement.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Longest a statement waits at a held gate before it is refused.
pub const MAX_HOLD_WAIT: Duration = Duration::from_secs(10);

/// The hold shared by every session of one proxy.
#[derive(Debug, Default)]
pub struct Gate {
    armed: AtomicBool,
    held: AtomicBool,
    inflight: AtomicUsize,
    opened: Notify,
}

/// A transaction's (or statement's) right to run while the gate is armed.
#[derive(Debug)]
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a statement could not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a rebalance switch held this statement for more than {} s", MAX_HOLD_WAIT.as_secs())]
pub struct HoldTimeout;

impl Gate {
    /// Whether passes are needed (a rebalance is running).
    #[inline]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Arms or disarms the gate; disarming also opens it.
    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::SeqCst);
        if !on {
            self.open();
        }
    }

    /// Whether the gate is held.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Holds new passes.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lets passes through again.
    pub fn open(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    /// Passes in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Takes a pass, waiting up to `max_wait` while the gate is held.
    pub async fn enter(self: &Arc<Self>, max_wait: Duration) -> Result<Pass, HoldTimeout> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Count first, then look: with `hold` storing before it reads `inflight`, either
            // the holder sees this pass or this pass sees the hold.
            self.inflight.fetch_add(1, Ordering::SeqCst);
            if !self.held.load(Ordering::SeqCst) {
                return Ok(Pass(self.clone()));
            }
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            let notified = self.opened.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.held.load(Ordering::SeqCst) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HoldTimeout);
            }
        }
    }

    /// Waits until no pass is in flight; false when `max` passed first.
    pub async fn drained(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        while self.inflight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hold_waits_for_passes_and_blocks_new_ones() {
        let g = Arc::new(Gate::default());
        g.arm(true);
        let p = g.enter(Duration::from_millis(10)).await.expect("open gate");
        g.hold();
        assert!(!g.drained(Duration::from_millis(20)).await);
        drop(p);
        assert!(g.drained(Duration::from_millis(20)).await);
        assert_eq!(
            g.enter(Duration::from_millis(20)).await.err(),
            Some(HoldTimeout)
        );
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.enter(Duration::from_secs(5)).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.open();
        assert!(waiter.await.expect("join"));
    }
}
