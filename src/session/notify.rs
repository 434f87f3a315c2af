//! LISTEN, UNLISTEN, NOTIFY and `SELECT pg_notify(…)` for one session, answered by the
//! proxy (the process side — the listening connection and the fan-out — is
//! [`crate::backend::notify`]). What a client gets, as from Postgres:
//!
//! - Outside a transaction block each takes effect at once. LISTEN returns once the
//!   process's listening connection listens on the channel: every notification committed
//!   after it reaches the client.
//! - Inside a block they take effect when its COMMIT succeeded (LISTEN/UNLISTEN first,
//!   then the notifications, in order, a repeated channel and payload once); ROLLBACK, or
//!   ROLLBACK TO a savepoint made before them, drops them. They are steps of the
//!   transaction ([`super::txn::Step::Notify`]), carried out after its COMMIT, before the
//!   session reads the client's next message.
//! - Notifications are sent on a pooled connection to the default shard, never inside the
//!   client's transaction (whose two-phase commit Postgres would refuse after a NOTIFY).
//! - Notifications reach the client between its messages, while no transaction block or
//!   extended-protocol exchange is open — at once when it is idle, else when its
//!   transaction ends; never inside a reply. One it sends on a channel it listens on
//!   itself is waited for (bounded) and goes out right behind that statement's reply.
//! - `DISCARD ALL`, `UNLISTEN *` and disconnecting unlisten everything.
//!
//! A session that never listens holds no state here (one `None`), and its loop pays a
//! test or two per message: it waits on its client's socket alone, as before.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::sync::mpsc;

use super::extended::Op;
use super::{Session, SessionEnd};
use crate::backend::notify::{Notification, Subscription, SESSION_CHANNELS, SESSION_QUEUE};
use crate::error::ProxyError;
use crate::routing::router::{NotifyCmd, Plan, StmtKind, TextArg};
use crate::wire::encoding::Codec;
use crate::wire::protocol::{build, BindMsg};

/// Longest the session waits for a notification it sent to itself to come back through the
/// listening connection (it normally takes well under a millisecond).
const ECHO_WAIT: Duration = Duration::from_secs(1);

/// Notifications written to the client at a time before the output is flushed.
const DELIVER_BATCH: usize = 256;

/// How [`Session::wait_for_client`] ended.
pub(super) enum Waited {
    /// The client sent something (or closed its connection): read its message.
    Client,
    /// The client's queue overflowed: the FATAL that ends the session is queued.
    Ended,
    /// The idle limit passed.
    Timeout,
}

/// A session's LISTEN/NOTIFY state (boxed in the session, created on first use).
#[derive(Default)]
pub(super) struct State {
    listening: Option<Listening>,
    /// Actions of a committed transaction block, carried out before the session reads on.
    committed: Vec<NotifyCmd>,
    /// Notifications taken from the queue, written at the next point between messages.
    ready: Vec<Arc<Notification>>,
}

/// The channels a session listens on, and its queue.
struct Listening {
    sub: Subscription,
    rx: mpsc::Receiver<Arc<Notification>>,
    channels: HashSet<String>,
}

/// Too many LISTEN/NOTIFY (with settings and savepoints) in one block.
fn too_many_steps() -> ProxyError {
    ProxyError::Backend {
        code: "54000".into(),
        message: format!(
            "more than {} LISTEN, NOTIFY, savepoint and settings statements in one transaction block",
            super::MAX_TXN_STEPS
        ),
    }
}

/// Writes NotificationResponse `n` to `out`, its text in the client's encoding (a
/// character it cannot hold becomes `?`).
fn push_note(out: &mut BytesMut, codec: Option<Codec>, n: &Notification) {
    let at = build::begin(out, b'A');
    out.put_i32(n.pid);
    for text in [&n.channel, &n.payload] {
        match codec {
            None => out.put_slice(text.as_bytes()),
            Some(c) => match c.from_utf8(text) {
                Ok(b) => out.put_slice(&b),
                Err(_) => {
                    for ch in text.chars() {
                        let mut b = [0u8; 4];
                        match c.from_utf8(ch.encode_utf8(&mut b)) {
                            Ok(x) => out.put_slice(&x),
                            Err(_) => out.put_u8(b'?'),
                        }
                    }
                }
            },
        }
        out.put_u8(0);
    }
    build::finish(out, at);
}

/// The value of a `pg_notify` argument (a parameter's text in the client's encoding,
/// `codec`, when it is not UTF-8): `None` for NULL.
fn arg_value(
    arg: &TextArg,
    bind: Option<&BindMsg>,
    codec: Option<Codec>,
) -> Result<Option<String>, ProxyError> {
    let i = match arg {
        TextArg::Value(v) => return Ok(v.clone()),
        TextArg::Param(i) => *i,
    };
    let missing = || ProxyError::Backend {
        code: "42P02".into(),
        message: format!("there is no parameter ${}", i + 1),
    };
    let Some(value) = bind.and_then(|b| b.param(i)).ok_or_else(missing)? else {
        return Ok(None);
    };
    // Text in either format: a binary `text` value is its bytes too.
    let text = match codec {
        Some(c) => c.to_utf8(value).map(|t| t.into_owned()).ok(),
        None => std::str::from_utf8(value).ok().map(str::to_string),
    };
    text.map(Some)
        .ok_or_else(|| ProxyError::Encoding("invalid byte sequence in a pg_notify argument".into()))
}

impl Session {
    /// Whether a multi-statement string must run one statement at a time, its LISTEN,
    /// UNLISTEN and NOTIFY answered by the session, rather than be forwarded whole: for a
    /// LISTEN; an UNLISTEN when the session listens (else it is a no-op a backend may
    /// answer); a NOTIFY inside a block or in a string that begins one (outside one, the
    /// string runs whole on the default shard, as one transaction).
    pub(super) fn notify_alone(&self, plan: &Plan) -> bool {
        let listens = self.notify.as_ref().is_some_and(|s| s.listening.is_some());
        let in_block =
            self.txn.status.is_open() || plan.stmts.iter().any(|s| s.kind == StmtKind::Begin);
        plan.stmts.iter().any(|s| match &s.kind {
            StmtKind::Notify(cmd) => match **cmd {
                NotifyCmd::Listen(_) => true,
                NotifyCmd::Unlisten(_) => listens || in_block,
                NotifyCmd::Notify { .. } => in_block,
            },
            _ => false,
        })
    }

    /// A pipeline that executes LISTEN or UNLISTEN among statements the session cannot
    /// answer itself ([`Session::transaction_batch`] would forward it): refused whole, with
    /// the error and (at a Sync) ReadyForQuery queued — no backend may listen. Whether it
    /// was refused.
    #[inline]
    pub(super) fn refuse_listen_among_others(&mut self, ops: &[Op], sync: bool) -> bool {
        let listens = ops.iter().any(|op| match op {
            Op::Bind(p, _, _) => p.plan.stmts.first().is_some_and(|s| match &s.kind {
                StmtKind::Notify(cmd) => {
                    matches!(**cmd, NotifyCmd::Listen(_) | NotifyCmd::Unlisten(_))
                }
                _ => false,
            }),
            _ => false,
        });
        listens && self.refuse_listen(sync)
    }

    #[cold]
    fn refuse_listen(&mut self, sync: bool) -> bool {
        self.push_error(&ProxyError::Unsupported(
            "LISTEN and UNLISTEN are answered by the proxy only in a pipeline of their own (or with transaction control); send them with their own Sync".into(),
        ));
        if sync {
            self.push_ready();
        }
        true
    }

    /// LISTEN, UNLISTEN or NOTIFY: queues its CommandComplete or error, not ReadyForQuery.
    /// Whether it succeeded.
    pub(super) async fn notify_statement(&mut self, cmd: &NotifyCmd) -> bool {
        let tag = match cmd {
            NotifyCmd::Listen(_) => "LISTEN",
            NotifyCmd::Unlisten(_) => "UNLISTEN",
            NotifyCmd::Notify { .. } => "NOTIFY",
        };
        match self.notify_cmd(cmd.clone()).await {
            Ok(()) => {
                build::command_complete(&mut self.out, tag);
                true
            }
            Err(e) => {
                self.push_error(&e);
                false
            }
        }
    }

    /// `SELECT pg_notify(channel, payload)` (its parameters from `bind`): its notification,
    /// as NOTIFY sends it; the caller writes the row.
    pub(super) async fn pg_notify(
        &mut self,
        args: (&TextArg, &TextArg),
        bind: Option<&BindMsg<'_>>,
    ) -> Result<(), ProxyError> {
        // pg_notify is not strict: a NULL channel is an empty one, a NULL payload empty.
        let channel = arg_value(args.0, bind, self.codec)?.unwrap_or_default();
        let payload = arg_value(args.1, bind, self.codec)?.unwrap_or_default();
        self.notify_cmd(NotifyCmd::Notify { channel, payload })
            .await
    }

    /// Checks `cmd` and records it in the transaction block, or carries it out now.
    async fn notify_cmd(&mut self, cmd: NotifyCmd) -> Result<(), ProxyError> {
        if self.txn.failed {
            return Err(ProxyError::InFailedTransaction);
        }
        if let NotifyCmd::Notify { channel, payload } = &cmd {
            crate::backend::notify::check(channel, payload)?;
        }
        if self.txn.status.is_open() {
            if !self.txn.has_room() {
                return Err(too_many_steps());
            }
            self.txn.steps.push(super::txn::Step::Notify(Box::new(cmd)));
            return Ok(());
        }
        match cmd {
            NotifyCmd::Listen(c) => self.listen(c).await,
            NotifyCmd::Unlisten(c) => {
                self.unlisten(c.as_deref());
                Ok(())
            }
            NotifyCmd::Notify { channel, payload } => {
                let notes = [(channel, payload)];
                self.send_notes(&notes).await?;
                self.await_echo(&notes).await;
                Ok(())
            }
        }
    }

    /// Sends notifications through a pooled connection to the default shard (in session
    /// pooling, through the session's own when it holds one: the pool may have none left).
    async fn send_notes(&mut self, notes: &[(String, String)]) -> Result<(), ProxyError> {
        let shard = self.topo.map.default_shard;
        let held = self.conns.iter().position(|c| c.shard == shard);
        if let (true, Some(i)) = (self.session_mode && self.txn.status.is_idle(), held) {
            let name = self.conns[i].pool().info.name.clone();
            let r = crate::backend::notify::send_on(&mut self.conns[i], &name, notes).await;
            if self.conns[i].broken {
                self.conns.retain(|c| !c.broken);
            }
            return r;
        }
        let pool = self
            .pools
            .get(shard)
            .cloned()
            .ok_or_else(|| ProxyError::Internal("no pool for the default shard".into()))?;
        crate::backend::notify::send(&pool, notes).await
    }

    /// Listens on `channel`, once the process's listening connection does.
    async fn listen(&mut self, channel: String) -> Result<(), ProxyError> {
        let hub = self.shared.notify.clone();
        let state = self.notify.get_or_insert_with(Default::default);
        let l = state.listening.get_or_insert_with(|| {
            let (sub, rx) = hub.subscribe();
            Listening {
                sub,
                rx,
                channels: HashSet::new(),
            }
        });
        if l.channels.contains(&channel) {
            return Ok(());
        }
        if l.channels.len() >= SESSION_CHANNELS {
            return Err(ProxyError::Backend {
                code: "54000".into(),
                message: format!("a session may listen on at most {SESSION_CHANNELS} channels"),
            });
        }
        // None: the queue overflowed; the session ends before it reads on.
        let Some(since) = l.sub.listen(&channel) else {
            return Ok(());
        };
        let wait = self.topo.map.pool.connect_timeout + Duration::from_secs(1);
        if !hub.wait_applied(since, wait).await {
            self.unlisten(Some(&channel));
            let shard = hub.target().map(|(i, _)| i.name).unwrap_or_default();
            return Err(ProxyError::ShardUnavailable {
                shard,
                reason: "the proxy's LISTEN connection to it is not available".into(),
            });
        }
        if let Some(l) = self.notify.as_mut().and_then(|s| s.listening.as_mut()) {
            l.channels.insert(channel);
        }
        Ok(())
    }

    /// Stops listening on `channel`, or on every channel (`None`); queued notifications of
    /// those channels are dropped.
    fn unlisten(&mut self, channel: Option<&str>) {
        let Some(state) = self.notify.as_mut() else {
            return;
        };
        if let (Some(c), Some(l)) = (channel, state.listening.as_mut()) {
            l.channels.remove(c);
            l.sub.unlisten(c);
            if !l.channels.is_empty() {
                return;
            }
        }
        state.listening = None;
    }

    /// `DISCARD ALL`: unlistens everything.
    pub(super) fn notify_discard(&mut self) {
        self.unlisten(None);
    }

    /// An action of a committed transaction block, carried out before the session reads on
    /// ([`Session::notify_between`]).
    pub(super) fn notify_committed(&mut self, cmd: NotifyCmd) {
        self.notify
            .get_or_insert_with(Default::default)
            .committed
            .push(cmd);
    }

    /// Between the client's messages: carries out what a committed block left, then queues
    /// the notifications waiting for an `idle` client. True when its queue overflowed (the
    /// FATAL that ends the session is queued). The session loop boxes it, so its own state
    /// stays as before for the sessions that never listen.
    pub(super) async fn notify_between(&mut self, idle: bool) -> bool {
        let committed = match self.notify.as_mut() {
            Some(state) => std::mem::take(&mut state.committed),
            None => return false,
        };
        if !committed.is_empty() {
            self.apply_committed(committed).await;
        }
        self.deliver_waiting(idle)
    }

    /// Queues the notifications waiting for an `idle` client; true when its queue
    /// overflowed (the FATAL that ends the session is queued instead).
    fn deliver_waiting(&mut self, idle: bool) -> bool {
        let Some(state) = self.notify.as_mut() else {
            return false;
        };
        if !idle {
            return false;
        }
        for n in state.ready.drain(..) {
            push_note(&mut self.out, self.codec, &n);
        }
        let Some(l) = state.listening.as_mut() else {
            if state.committed.is_empty() {
                self.notify = None; // nothing left: back to costing nothing
            }
            return false;
        };
        if l.rx.is_closed() {
            self.push_overflowed();
            return true;
        }
        while let Ok(n) = l.rx.try_recv() {
            if l.channels.contains(&n.channel) {
                push_note(&mut self.out, self.codec, &n);
            }
        }
        false
    }

    /// The actions of a committed block: LISTEN/UNLISTEN in order, then the notifications
    /// as one transaction. Failures (the default shard unreachable) come as warnings: the
    /// client's transaction is committed.
    async fn apply_committed(&mut self, actions: Vec<NotifyCmd>) {
        let mut notes = Vec::new();
        for cmd in actions {
            match cmd {
                NotifyCmd::Notify { channel, payload } => notes.push((channel, payload)),
                NotifyCmd::Listen(c) => {
                    if let Err(e) = self.listen(c).await {
                        self.push_warning(&e, "LISTEN of the committed transaction failed");
                    }
                }
                NotifyCmd::Unlisten(c) => self.unlisten(c.as_deref()),
            }
        }
        if notes.is_empty() {
            return;
        }
        match self.send_notes(&notes).await {
            Ok(()) => self.await_echo(&notes).await,
            Err(e) => self.push_warning(
                &e,
                "the notifications of the committed transaction were not sent",
            ),
        }
    }

    /// Queues a NoticeResponse (WARNING) for `e`.
    fn push_warning(&mut self, e: &ProxyError, what: &str) {
        let at = self.out.len();
        build::error(
            &mut self.out,
            "WARNING",
            e.sqlstate(),
            &format!("{what}: {e}"),
        );
        self.out[at] = b'N';
    }

    /// After this session sent `notes`: the ones on channels it listens on come back
    /// through the listening connection; waits for them (bounded) and keeps them, with
    /// whatever else arrived meanwhile, for the client (they go out with the reply's
    /// ReadyForQuery, so a client that looks right after it finds them).
    async fn await_echo(&mut self, notes: &[(String, String)]) {
        let Some(state) = self.notify.as_mut() else {
            return;
        };
        let Some(l) = state.listening.as_mut() else {
            return;
        };
        let mut expected: Vec<&(String, String)> = notes
            .iter()
            .filter(|(c, _)| l.channels.contains(c))
            .collect();
        let deadline = tokio::time::Instant::now() + ECHO_WAIT;
        while !expected.is_empty() {
            let n = match tokio::time::timeout_at(deadline, l.rx.recv()).await {
                Ok(Some(n)) => n,
                // Overflowed (the session ends at its next look) or too late.
                Ok(None) | Err(_) => return,
            };
            expected.retain(|(c, p)| !(*c == n.channel && *p == n.payload));
            if l.channels.contains(&n.channel) {
                state.ready.push(n);
            }
        }
    }

    /// Whether the session listens on some channel.
    #[inline]
    pub(super) fn listens(&self) -> bool {
        self.notify.as_ref().is_some_and(|s| s.listening.is_some())
    }

    /// While the session is idle and listens: waits until the client sends something (its
    /// next message is then read as any other's), writing the notifications that arrive
    /// meanwhile. The session loop boxes it, and reads the message itself: the loop of a
    /// session that never listens is the same as before.
    pub(super) async fn wait_for_client(
        &mut self,
        limit: Option<Duration>,
    ) -> Result<Waited, SessionEnd> {
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        loop {
            let Some(l) = self.notify.as_mut().and_then(|s| s.listening.as_mut()) else {
                return Ok(Waited::Client);
            };
            tokio::select! {
                biased;
                r = self.reader.readable() => {
                    r?;
                    return Ok(Waited::Client);
                }
                n = l.rx.recv() => {
                    let Some(n) = n.filter(|_| !l.rx.is_closed()) else {
                        self.push_overflowed();
                        return Ok(Waited::Ended);
                    };
                    let mut next = Some(n);
                    let mut k = 0;
                    while let Some(n) = next.take() {
                        if l.channels.contains(&n.channel) {
                            push_note(&mut self.out, self.codec, &n);
                        }
                        k += 1;
                        if k < DELIVER_BATCH {
                            next = l.rx.try_recv().ok();
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() => return Ok(Waited::Timeout),
            }
            self.flush().await?;
        }
    }

    /// Queues the FATAL that ends a session whose queue overflowed.
    fn push_overflowed(&mut self) {
        build::error(
            &mut self.out,
            "FATAL",
            "54000",
            &format!(
                "terminating connection: more than {SESSION_QUEUE} notifications were waiting for this client (it does not read them, or stays in a transaction block)"
            ),
        );
    }
}
