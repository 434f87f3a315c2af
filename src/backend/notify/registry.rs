//! Who listens on what ([`Hub`]): the sessions of this process and their channels, how
//! many listen on each channel, and the fan-out of a notification to them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};

use super::{Notification, SESSION_QUEUE};
use crate::sharding::shard::ShardInfo;

/// What the listening connection has carried out (see [`super::listener`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The registry version whose channels it listens on.
    pub version: u64,
    /// Whether it is connected and listening.
    pub up: bool,
}

/// The process-wide registry of listening sessions, shared with the listening connection.
pub struct Hub {
    registry: Mutex<Registry>,
    /// Wakes the listening connection: the channels or its target changed.
    changed: Notify,
    applied: watch::Sender<Applied>,
    next_id: AtomicU64,
    /// The shard to listen on (the map's default shard) and the connect timeout.
    target: Mutex<Option<(ShardInfo, Duration)>>,
}

#[derive(Default)]
struct Registry {
    subs: HashMap<u64, Sub>,
    channels: HashMap<String, Channel>,
    /// Bumped whenever a channel gains its first listener or loses its last.
    version: u64,
}

/// One session's queue and channels.
struct Sub {
    tx: mpsc::Sender<Arc<Notification>>,
    channels: HashSet<String>,
}

/// One channel's listeners.
struct Channel {
    subs: HashSet<u64>,
    /// The registry version that added it: listened on once the connection applied it.
    since: u64,
}

impl Registry {
    /// Adds `channel` to `id`'s; the version the listening connection must reach, `None`
    /// when the session is gone (its queue overflowed). Whether the channel set changed.
    fn listen(&mut self, id: u64, channel: &str) -> (Option<u64>, bool) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return (None, false);
        };
        sub.channels.insert(channel.to_string());
        if let Some(c) = self.channels.get_mut(channel) {
            c.subs.insert(id);
            return (Some(c.since), false);
        }
        self.version += 1;
        let since = self.version;
        self.channels.insert(
            channel.to_string(),
            Channel {
                subs: HashSet::from([id]),
                since,
            },
        );
        (Some(since), true)
    }

    /// Removes `channel` from `id`'s; whether the channel set changed.
    fn unlisten(&mut self, id: u64, channel: &str) -> bool {
        if let Some(sub) = self.subs.get_mut(&id) {
            sub.channels.remove(channel);
        }
        let Some(c) = self.channels.get_mut(channel) else {
            return false;
        };
        c.subs.remove(&id);
        if !c.subs.is_empty() {
            return false;
        }
        self.channels.remove(channel);
        self.version += 1;
        true
    }

    /// Forgets `id` and its channels; whether the channel set changed.
    fn remove(&mut self, id: u64) -> bool {
        let Some(sub) = self.subs.remove(&id) else {
            return false;
        };
        let mut changed = false;
        for ch in &sub.channels {
            changed |= self.unlisten(id, ch);
        }
        changed
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            registry: Mutex::default(),
            changed: Notify::new(),
            applied: watch::Sender::new(Applied::default()),
            next_id: AtomicU64::new(1),
            target: Mutex::new(None),
        }
    }
}

impl Hub {
    /// A new session's subscription (no channel yet) and its queue.
    pub fn subscribe(self: &Arc<Self>) -> (Subscription, mpsc::Receiver<Arc<Notification>>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.registry.lock().subs.insert(
            id,
            Sub {
                tx,
                channels: HashSet::new(),
            },
        );
        let sub = Subscription {
            hub: self.clone(),
            id,
        };
        (sub, rx)
    }

    /// Sends `n` to every session listening on its channel. A session whose queue is full
    /// is dropped from the registry: its queue closes, and the session ends its client
    /// with an error when it next looks (Postgres never drops a notification; the proxy
    /// will not hold an unbounded backlog for a client that does not read).
    pub fn deliver(&self, n: Notification) {
        let n = Arc::new(n);
        let mut guard = self.registry.lock();
        let reg = &mut *guard;
        let Some(ch) = reg.channels.get(&n.channel) else {
            return;
        };
        let mut full = Vec::new();
        for id in &ch.subs {
            if let Some(s) = reg.subs.get(id) {
                if let Err(TrySendError::Full(_)) = s.tx.try_send(n.clone()) {
                    full.push(*id);
                }
            }
        }
        let mut changed = false;
        for id in full {
            tracing::warn!(
                channel = %n.channel,
                "a session's notification queue is full ({SESSION_QUEUE}): its client is disconnected"
            );
            changed |= reg.remove(id);
        }
        drop(guard);
        if changed {
            self.changed.notify_one();
        }
    }

    /// The channels some session listens on (sorted) and the registry version they belong to.
    pub fn wanted(&self) -> (Vec<String>, u64) {
        let reg = self.registry.lock();
        let mut names: Vec<String> = reg.channels.keys().cloned().collect();
        names.sort_unstable();
        (names, reg.version)
    }

    /// How many sessions listen on `channel`.
    pub fn listeners(&self, channel: &str) -> usize {
        self.registry
            .lock()
            .channels
            .get(channel)
            .map_or(0, |c| c.subs.len())
    }

    /// Waits until the channels or the target change (for the listening connection).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Sets where to listen: the map's default shard (a reload may move it).
    pub fn set_target(&self, info: &ShardInfo, connect_timeout: Duration) {
        let mut t = self.target.lock();
        let same = t
            .as_ref()
            .is_some_and(|(i, d)| i.same_server(info) && *d == connect_timeout);
        if !same {
            *t = Some((info.clone(), connect_timeout));
            drop(t);
            self.changed.notify_one();
        }
    }

    /// Where to listen.
    pub fn target(&self) -> Option<(ShardInfo, Duration)> {
        self.target.lock().clone()
    }

    /// What the listening connection has carried out.
    pub fn applied(&self) -> Applied {
        *self.applied.borrow()
    }

    /// Records what the listening connection has carried out.
    pub(super) fn publish(&self, a: Applied) {
        self.applied.send_replace(a);
    }

    /// Waits until the listening connection is up and listens on the channels of registry
    /// version `since`; false after `timeout`.
    pub async fn wait_applied(&self, since: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = rx.wait_for(|a| a.up && a.version >= since);
        let ok = matches!(tokio::time::timeout(timeout, reached).await, Ok(Ok(_)));
        ok
    }
}

/// One session's place in the [`Hub`]; dropping it unlistens all its channels.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
}

impl Subscription {
    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Listens on `channel`: the registry version the listening connection must reach
    /// before it hears the channel ([`Hub::wait_applied`]); `None` when the subscription
    /// was dropped for a full queue.
    pub fn listen(&self, channel: &str) -> Option<u64> {
        let (since, changed) = self.hub.registry.lock().listen(self.id, channel);
        if changed {
            self.hub.changed.notify_one();
        }
        since
    }

    /// Stops listening on `channel`.
    pub fn unlisten(&self, channel: &str) {
        if self.hub.registry.lock().unlisten(self.id, channel) {
            self.hub.changed.notify_one();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.hub.registry.lock().remove(self.id) {
            self.hub.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(channel: &str, payload: &str) -> Notification {
        Notification {
            pid: 7,
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn counts_listeners_and_fans_out() {
        let hub = Arc::new(Hub::default());
        let (a, mut ra) = hub.subscribe();
        let (b, mut rb) = hub.subscribe();
        let v1 = a.listen("x").unwrap();
        assert_eq!(
            b.listen("x"),
            Some(v1),
            "a second listener waits for the same version"
        );
        assert_eq!(hub.wanted(), (vec!["x".to_string()], v1));
        hub.deliver(note("x", "1"));
        hub.deliver(note("y", "2"));
        assert_eq!(ra.try_recv().unwrap().payload, "1");
        assert_eq!(rb.try_recv().unwrap().payload, "1");
        assert!(ra.try_recv().is_err());
        a.unlisten("x");
        assert_eq!(hub.wanted().1, v1, "b still listens");
        assert_eq!(hub.listeners("x"), 1);
        drop(b);
        let (names, v2) = hub.wanted();
        assert!(names.is_empty());
        assert!(v2 > v1);
    }

    #[test]
    fn a_full_queue_drops_the_session() {
        let hub = Arc::new(Hub::default());
        let (a, mut ra) = hub.subscribe();
        a.listen("x");
        for i in 0..=SESSION_QUEUE {
            hub.deliver(note("x", &i.to_string()));
        }
        assert_eq!(hub.listeners("x"), 0);
        assert!(a.listen("y").is_none());
        let mut n = 0;
        while ra.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, SESSION_QUEUE);
        assert!(matches!(
            ra.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
