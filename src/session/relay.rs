//! Moving backend replies to the client.
//!
//! - [`Session::relay_one`]: one backend. Frames are copied through unchanged; only the tag is
//!   looked at, to know when each request we sent is answered (so replies the proxy makes
//!   itself, like a ParseComplete for a statement the connection already has, are slotted in
//!   at the right place, and replies to requests the proxy injected are swallowed).
//! - [`Session::relay_all`]: several backends that got identical requests. Rows stream through
//!   shard by shard; at every other message ("boundary") the shards are brought into step and
//!   their boundaries merged (command tags summed, statuses combined, first error wins).

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Session, SessionEnd, TxnStatus};
use crate::backend::conn::BackendError;
use crate::error::ProxyError;
use crate::wire::protocol::{build, command_tag, Frame};

/// A reply the relay waits for, in request order.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Parse -> ParseComplete; `swallow` for a Parse the proxy injected.
    Parse { swallow: bool },
    /// Bind -> BindComplete.
    Bind,
    /// Describe -> (ParameterDescription) RowDescription | NoData.
    Describe,
    /// Describe of a client's statement: as `Describe`, and the client's statement remembers
    /// the shape it was given (see `shape`).
    DescribeStmt(std::sync::Arc<super::Prepared>),
    /// Execute -> rows, then CommandComplete | EmptyQueryResponse | PortalSuspended.
    Execute,
    /// Close -> CloseComplete.
    Close,
    /// Sync -> ReadyForQuery.
    Sync,
    /// Query -> everything up to ReadyForQuery; `hide_ready` keeps that ReadyForQuery from the client.
    Query { hide_ready: bool },
    /// A reply the proxy makes itself.
    Local(Bytes),
}

/// How a relayed exchange ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Transaction status from the last ReadyForQuery (`None` if none was read).
    pub status: Option<TxnStatus>,
    /// Whether any backend reported an error.
    pub error: bool,
    /// The error said a statement the proxy kept on the backend is out of date (see
    /// `stale_statement`); the relay then held its output back until ReadyForQuery.
    pub stale: bool,
    /// Whether part of the reply was already written to the client.
    pub flushed: bool,
}

/// A failure while relaying.
#[derive(Debug)]
pub enum RelayError {
    /// The client side failed; the session ends.
    Client(SessionEnd),
    /// A backend connection failed; `forwarded` says whether the client already got part of the reply.
    Backend {
        shard: usize,
        error: BackendError,
        forwarded: bool,
    },
}

impl From<SessionEnd> for RelayError {
    fn from(e: SessionEnd) -> Self {
        RelayError::Client(e)
    }
}

impl From<std::io::Error> for RelayError {
    fn from(e: std::io::Error) -> Self {
        RelayError::Client(SessionEnd::Client(e))
    }
}

fn completes(e: &Expect, tag: u8) -> bool {
    match e {
        Expect::Parse { .. } => tag == b'1',
        Expect::Bind => tag == b'2',
        Expect::Describe | Expect::DescribeStmt(_) => tag == b'T' || tag == b'n',
        Expect::Execute => matches!(tag, b'C' | b'I' | b's'),
        Expect::Close => tag == b'3',
        Expect::Sync | Expect::Query { .. } => tag == b'Z',
        Expect::Local(_) => false,
    }
}

impl Session {
    /// Relays replies of connection `idx` until every expectation is met (the queue is left
    /// empty, its capacity kept for reuse). With `quiet`
    /// nothing reaches the client (replies to requests the proxy made for itself).
    pub(super) async fn relay_one(
        &mut self,
        idx: usize,
        expects: &mut VecDeque<Expect>,
        quiet: bool,
    ) -> Result<Outcome, RelayError> {
        let mut outcome = Outcome::default();
        let mut forwarded = false;
        // Whether `out` holds something worth a write before we wait on the backend: the
        // backend's own frames (a result in progress) or whatever was queued before this call.
        // Replies the proxy makes itself (a ParseComplete for a statement the connection
        // already has) wait for the backend's answer, so they share its write: one `sendto`
        // per exchange instead of two, and the client is woken once.
        let mut worth_flushing = !self.out.is_empty();
        let started = std::time::Instant::now();
        loop {
            while let Some(Expect::Local(_)) = expects.front() {
                if let Some(Expect::Local(b)) = expects.pop_front() {
                    self.out.extend_from_slice(&b);
                }
            }
            if expects.is_empty() {
                self.conns[idx].pool().latency.record(started.elapsed());
                return Ok(outcome);
            }
            if worth_flushing && !self.conns[idx].has_frame() && !self.out.is_empty() {
                self.flush().await?;
                forwarded = true;
                outcome.flushed = true;
            }
            let f = self.backend_frame(idx, forwarded).await?;
            let swallow = quiet || matches!(expects.front(), Some(Expect::Parse { swallow: true }));
            worth_flushing = true;
            match f.tag {
                b'E' => {
                    outcome.error = true;
                    let (code, message) = crate::wire::protocol::error_fields(f.body());
                    self.shared.telemetry.error(&code);
                    let stale = stale_statement(&code, &message);
                    if stale {
                        // A statement the proxy prepared outlived a schema change made
                        // elsewhere (or vanished): this connection's are prepared again.
                        self.conns[idx].prepared_epoch = super::STALE_EPOCH;
                        outcome.stale = true;
                    }
                    // A session terminated by pg_terminate_backend reports only its FATAL
                    // (the cancel that stopped this statement is part of it).
                    if !quiet && !self.conns.slot().terminated() {
                        self.out.extend_from_slice(&f.raw);
                    }
                    // After an error the backend skips to Sync; a Query runs on to its ReadyForQuery.
                    while let Some(e) = expects.front() {
                        if matches!(e, Expect::Sync | Expect::Query { .. }) {
                            break;
                        }
                        expects.pop_front();
                    }
                    if stale {
                        // Held until ReadyForQuery: the caller may run the statement again.
                        worth_flushing = false;
                    }
                }
                b'Z' => {
                    outcome.status = Some(TxnStatus::of_ready(f.body()));
                    // ReadyForQuery answers a Sync (or Query): anything still expected before
                    // it was skipped by the backend (it discards messages after an error).
                    while matches!(
                        expects.front(),
                        Some(e) if !matches!(e, Expect::Sync | Expect::Query { .. } | Expect::Local(_))
                    ) {
                        expects.pop_front();
                    }
                    let hide = matches!(expects.front(), Some(Expect::Query { hide_ready: true }));
                    expects.pop_front();
                    if !hide && !quiet {
                        self.out.extend_from_slice(&f.raw);
                    }
                }
                b'G' if !quiet => {
                    self.out.extend_from_slice(&f.raw);
                    self.flush().await?;
                    forwarded = true;
                    self.copy_in(idx).await?;
                }
                b'W' => {
                    return Err(RelayError::Client(SessionEnd::Protocol(
                        "COPY BOTH (replication) is not supported through the proxy".into(),
                    )))
                }
                tag => {
                    if !swallow {
                        match expects.front() {
                            Some(Expect::DescribeStmt(p)) => {
                                // A statement the proxy completed: the client's parameters only.
                                match (tag, p.gen.is_some()) {
                                    (b't', true) => {
                                        match super::generate::client_param_description(p, f.body())
                                        {
                                            Some(own) => self.out.extend_from_slice(&own),
                                            None => self.out.extend_from_slice(&f.raw),
                                        }
                                    }
                                    _ => self.out.extend_from_slice(&f.raw),
                                }
                                p.shape.note(tag, f.body());
                            }
                            _ => self.out.extend_from_slice(&f.raw),
                        }
                    }
                    if expects.front().map(|e| completes(e, tag)).unwrap_or(false) {
                        expects.pop_front();
                    }
                }
            }
            if self.out.len() >= 64 * 1024 {
                self.flush().await?;
                forwarded = true;
            }
        }
    }

    /// The next frame from connection `idx` (`forwarded`: whether the client already got
    /// part of the reply, for the error). While the backend has nothing to read, the client
    /// socket is watched too: a client that went away (end of stream, reset) ends the wait
    /// with [`RelayError::Client`], and `Session::run` then cancels the statement on the
    /// shards and closes (never pools) the connections. Postgres itself notices a vanished
    /// client only at its next write (or with `client_connection_check_interval`); a proxy
    /// sharing a pool must not let an abandoned `pg_sleep(10)` hold a backend for 10 s.
    ///
    /// The backend is polled first (`biased`): a reply already there costs nothing more.
    /// The watch reads whatever the client sends meanwhile into the session's reader
    /// (`FrameReader::gone`), where the next read would take it anyway. It costs no syscall
    /// in the usual case: tokio (`PollEvented::poll_read`, 1.54) clears a socket's readiness
    /// after a read that did not fill the buffer, as the one that brought the statement, so
    /// the watch only registers for the next epoll event (measured with `strace -c` under
    /// pgbench `SELECT 1`, simple and extended: 2 `recvfrom`, 2 `sendto`, 2 `epoll_wait` per
    /// statement, before and after).
    pub(super) async fn backend_frame(
        &mut self,
        idx: usize,
        forwarded: bool,
    ) -> Result<Frame, RelayError> {
        let conn = &mut self.conns[idx];
        let shard = conn.shard;
        let client = &mut self.reader;
        tokio::select! {
            biased;
            r = conn.read_frame() => r.map_err(|error| RelayError::Backend {
                shard,
                error,
                forwarded,
            }),
            e = client.gone() => Err(RelayError::Client(SessionEnd::Client(e))),
        }
    }

    /// Streams the client's COPY data to connection `idx` until CopyDone or CopyFail.
    async fn copy_in(&mut self, idx: usize) -> Result<(), RelayError> {
        let shard = self.conns[idx].shard;
        loop {
            let f = match self.reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err(RelayError::Client(SessionEnd::Protocol(
                        "client left during COPY".into(),
                    )))
                }
                Err(e) => return Err(RelayError::Client(e.into())),
            };
            match f.tag {
                b'd' | b'c' | b'f' => {
                    if let Err(error) = self.conns[idx].write_all(&f.raw).await {
                        return Err(RelayError::Backend {
                            shard,
                            error,
                            forwarded: true,
                        });
                    }
                    if f.tag != b'd' {
                        return Ok(());
                    }
                }
                b'H' | b'S' => {} // ignored during COPY, as Postgres does
                other => {
                    // Abort the copy on the backend, then report the violation.
                    let mut buf = bytes::BytesMut::new();
                    let at = buf.len();
                    buf.extend_from_slice(&[b'f', 0, 0, 0, 0]);
                    build::put_cstr(&mut buf, "unexpected message during COPY");
                    let len = (buf.len() - at - 1) as i32;
                    buf[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
                    let _ = self.conns[idx].write_all(&buf).await;
                    return Err(RelayError::Client(SessionEnd::Protocol(format!(
                        "unexpected message type {other} during COPY from stdin"
                    ))));
                }
            }
        }
    }

    /// Relays replies of several connections that were sent identical requests, merging them.
    /// `locals` are replies the proxy makes for requests it answered itself; they precede the rest.
    /// With `replicated` the shards hold identical copies and the first shard's command tag is used.
    pub(super) async fn relay_all(
        &mut self,
        idxs: &[usize],
        hide_ready: bool,
        replicated: bool,
    ) -> Result<Outcome, RelayError> {
        let mut outcome = Outcome::default();
        let mut failed: Option<Frame> = None;
        let mut boundaries: Vec<Option<Frame>> = vec![None; idxs.len()];
        loop {
            // Bring every shard to its next boundary (or to ReadyForQuery after a failure).
            for (k, &idx) in idxs.iter().enumerate() {
                if matches!(&boundaries[k], Some(f) if f.tag == b'Z') {
                    continue;
                }
                loop {
                    if !self.conns[idx].has_frame() && !self.out.is_empty() {
                        self.flush().await?;
                    }
                    let f = self.backend_frame(idx, true).await?;
                    match f.tag {
                        b'D' | b'd' => {
                            // Identical copies: one copy's rows (RETURNING of a reference write).
                            if failed.is_none() && (!replicated || k == 0) {
                                self.out.extend_from_slice(&f.raw);
                                self.maybe_flush().await?;
                            }
                        }
                        b'N' | b'S' | b'A' => {
                            if k == 0 && failed.is_none() {
                                self.out.extend_from_slice(&f.raw);
                            }
                        }
                        b'G' | b'W' => {
                            return Err(RelayError::Client(SessionEnd::Protocol(
                                "COPY FROM STDIN to several shards is not supported".into(),
                            )))
                        }
                        _ => {
                            if f.tag == b'E' && failed.is_none() {
                                failed = Some(f.clone());
                            }
                            if failed.is_some() && f.tag != b'Z' {
                                continue; // after a failure, drain to ReadyForQuery
                            }
                            boundaries[k] = Some(f);
                            break;
                        }
                    }
                }
            }
            if let Some(err) = &failed {
                if boundaries
                    .iter()
                    .all(|b| matches!(b, Some(f) if f.tag == b'Z'))
                {
                    self.out.extend_from_slice(&err.raw);
                    outcome.error = true;
                    let status = merge_status(&boundaries);
                    outcome.status = Some(status);
                    if !hide_ready {
                        build::ready_for_query(&mut self.out, status.byte());
                    }
                    return Ok(outcome);
                }
                // Shards that had not failed yet are drained on the next pass.
                for b in boundaries.iter_mut() {
                    if !matches!(b, Some(f) if f.tag == b'Z') {
                        *b = None;
                    }
                }
                continue;
            }
            let first_tag = boundaries[0].as_ref().map(|f| f.tag).unwrap_or(0);
            if boundaries
                .iter()
                .any(|b| b.as_ref().map(|f| f.tag) != Some(first_tag))
            {
                // Shards answered differently (e.g. one is in a failed transaction): report and drain.
                let msg = "shards returned different kinds of replies for the same statement";
                let mut buf = bytes::BytesMut::new();
                build::error(&mut buf, "ERROR", "XX000", msg);
                failed = Some(Frame {
                    tag: b'E',
                    raw: buf.freeze(),
                });
                for b in boundaries.iter_mut() {
                    if !matches!(b, Some(f) if f.tag == b'Z') {
                        *b = None;
                    }
                }
                continue;
            }
            match first_tag {
                b'Z' => {
                    let status = merge_status(&boundaries);
                    outcome.status = Some(status);
                    if !hide_ready {
                        build::ready_for_query(&mut self.out, status.byte());
                    }
                    return Ok(outcome);
                }
                b'C' if !replicated => {
                    let tags: Vec<&str> = boundaries
                        .iter()
                        .flatten()
                        .map(|f| command_tag(f.body()))
                        .collect();
                    let merged = sum_tags(&tags);
                    build::command_complete(&mut self.out, &merged);
                }
                _ => {
                    if let Some(f) = &boundaries[0] {
                        self.out.extend_from_slice(&f.raw);
                    }
                }
            }
            for b in boundaries.iter_mut() {
                *b = None;
            }
        }
    }

    /// Writes the same request to several held connections.
    pub(super) async fn send_to_all(
        &mut self,
        idxs: &[usize],
        msg: &[u8],
    ) -> Result<(), RelayError> {
        for &i in idxs {
            let shard = self.conns[i].shard;
            if let Err(error) = self.conns[i].write_all(msg).await {
                return Err(RelayError::Backend {
                    shard,
                    error,
                    forwarded: false,
                });
            }
        }
        Ok(())
    }

    /// Turns a relay failure into what the client sees; returns Err only when the session must end.
    pub(super) fn backend_failed(&mut self, shard: usize, error: &BackendError) -> ProxyError {
        tracing::warn!(shard = %self.shard_name(shard), %error, "backend connection lost");
        // Every held connection is in an unknown state now: drop them all.
        for c in self.conns.iter_mut() {
            if c.shard == shard {
                c.broken = true;
            }
        }
        self.conns.close_all();
        ProxyError::ShardUnavailable {
            shard: self.shard_name(shard),
            reason: error.to_string(),
        }
    }
}

/// Whether an error says a prepared statement on the backend is out of date or gone:
/// `cached plan must not change result type` (0A000), `cache lookup failed for type N`
/// (XX000, a type dropped and made again), or a missing statement (26000).
fn stale_statement(code: &str, message: &str) -> bool {
    (code == "0A000" && message.starts_with("cached plan must not change result type"))
        || (code == "XX000" && message.starts_with("cache lookup failed"))
        || code == "26000"
}

/// The joint status of the shards' ReadyForQuery frames (see [`TxnStatus::combine`]).
fn merge_status(boundaries: &[Option<Frame>]) -> TxnStatus {
    boundaries.iter().flatten().fold(TxnStatus::Idle, |st, f| {
        st.combine(TxnStatus::of_ready(f.body()))
    })
}

/// Sums the row counts of per-shard command tags ("INSERT 0 3" + "INSERT 0 4" = "INSERT 0 7").
pub fn sum_tags(tags: &[&str]) -> String {
    let Some(first) = tags.first() else {
        return String::new();
    };
    let Some((prefix, _)) = first.rsplit_once(' ') else {
        return first.to_string();
    };
    let mut total: u64 = 0;
    for t in tags {
        match t.rsplit_once(' ') {
            Some((p, n)) if p == prefix => match n.parse::<u64>() {
                Ok(n) => total += n,
                Err(_) => return first.to_string(),
            },
            _ => return first.to_string(),
        }
    }
    format!("{prefix} {total}")
}

#[cfg(test)]
mod tests {
    use super::sum_tags;

    #[test]
    fn tags_sum() {
        assert_eq!(sum_tags(&["INSERT 0 3", "INSERT 0 4"]), "INSERT 0 7");
        assert_eq!(sum_tags(&["UPDATE 1", "UPDATE 0", "UPDATE 2"]), "UPDATE 3");
        assert_eq!(sum_tags(&["CREATE TABLE", "CREATE TABLE"]), "CREATE TABLE");
    }
}
