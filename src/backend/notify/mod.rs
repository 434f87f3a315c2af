//! LISTEN/NOTIFY for one proxy process, under transaction pooling.
//!
//! Sessions never listen on pooled connections. The process holds one connection of its
//! own to the map's default shard ([`listener`]) that listens on every channel some session
//! of it listens on ([`registry`] counts them: the first LISTEN of a channel makes the
//! connection listen, the last UNLISTEN or disconnect stops it). Each NotificationResponse
//! that connection receives goes to every session listening on its channel, through a
//! bounded queue per session. Notifications are sent through a pooled connection to the
//! default shard ([`send`]), so every proxy process on the map — and every client connected
//! to that shard directly — hears them.

mod listener;
mod registry;
mod send;

pub use listener::run;
pub use registry::{Applied, Hub, Subscription};
pub use send::{check, send, send_on, NOTIFY_PAYLOAD_MAX};

/// Notifications one session may have waiting for delivery (its client does not read them,
/// or it stays inside a transaction block); past that the session is ended (see
/// [`Hub::deliver`]). Payloads are shared between the sessions that receive them.
pub const SESSION_QUEUE: usize = 10_000;

/// Channels one session may listen on.
pub const SESSION_CHANNELS: usize = 10_000;

/// One notification, as Postgres sent it to the listening connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Notification {
    /// The pid of the backend that sent it (a pooled connection's, for notifications sent
    /// through a proxy).
    pub pid: i32,
    /// The channel.
    pub channel: String,
    /// The payload.
    pub payload: String,
}
