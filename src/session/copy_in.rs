//! `COPY … FROM STDIN` into a sharded table (rows split by key) or a reference table (every
//! row to every shard), all-or-nothing.
//!
//! Every shard runs `BEGIN` and the client's COPY statement; the client gets one
//! CopyInResponse. Its CopyData is cut at row boundaries ([`crate::routing::copysplit`]) and each
//! row's original bytes go to the shard of its key, in CopyData messages of up to
//! [`SHARD_CHUNK`] bytes per shard (bounded buffering; `copy_stream`). A binary COPY is cut
//! at tuple boundaries and each shard gets a binary stream of its own (header, its tuples,
//! trailer); `copy_layout` checks first that the key's binary form is one the proxy reads.
//! On CopyDone every shard finishes its
//! COPY; only if all succeeded are they committed together (two-phase commit where the
//! shards allow it; the tag counts every row), otherwise each gets `ROLLBACK` — a
//! malformed row anywhere leaves no row on any shard. A key the
//! proxy cannot route, a CopyFail from the client, or a broken row format aborts the COPY
//! on every shard the same way. Afterwards the client's remaining copy messages are
//! dropped, as Postgres does after an error during COPY.

use bytes::BytesMut;

use super::relay::{Outcome, RelayError};
use super::Session;
use crate::error::ProxyError;
use crate::routing::copyplan::{CopyPlan, CopyTarget};
use crate::wire::protocol::{build, command_tag, error_fields};

/// Bytes of rows buffered per shard before they are sent as one CopyData message.
pub const SHARD_CHUNK: usize = 64 * 1024;

/// How the COPY ended before the shards finished it.
pub(super) enum Abort {
    /// The proxy refused the data (with this error).
    Proxy(ProxyError),
    /// The client sent CopyFail with this message.
    ClientFail(String),
}

/// Appends a CopyData message holding `payload`.
pub(super) fn copy_data(buf: &mut BytesMut, payload: &[u8]) {
    buf.extend_from_slice(b"d");
    buf.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
    buf.extend_from_slice(payload);
}

fn copy_fail(buf: &mut BytesMut, msg: &str) {
    let at = build::begin(buf, b'f');
    build::put_cstr(buf, msg);
    build::finish(buf, at);
}

/// A shard failure during a COPY: never retried, since other shards may already be in
/// their COPY and the client's data is consumed.
pub(super) fn lost(shard: usize) -> impl Fn(crate::backend::conn::BackendError) -> RelayError {
    move |error| RelayError::Backend {
        shard,
        error,
        forwarded: true,
    }
}

impl Session {
    /// Sends `msg` to connections `idxs` during a COPY.
    pub(super) async fn copy_to(&mut self, idxs: &[usize], msg: &[u8]) -> Result<(), RelayError> {
        for &ci in idxs {
            let shard = self.conns[ci].shard;
            self.conns[ci].write_all(msg).await.map_err(lost(shard))?;
        }
        Ok(())
    }

    /// Runs `sql` (a planned `COPY … FROM STDIN`) on every shard (see the module docs).
    /// Sends CopyInResponse, then, on success, CommandComplete (and ReadyForQuery unless
    /// `hide_ready`). The flag says whether the client got CopyInResponse (so it has sent,
    /// or will send, copy data before anything else).
    pub(super) async fn copy_in_split(
        &mut self,
        plan: &CopyPlan,
        sql: &str,
        hide_ready: bool,
    ) -> Result<(Result<Outcome, ProxyError>, bool), RelayError> {
        let mut started = false;
        let r = self
            .copy_in_inner(plan, sql, hide_ready, &mut started)
            .await?;
        Ok((r, started))
    }

    async fn copy_in_inner(
        &mut self,
        plan: &CopyPlan,
        sql: &str,
        hide_ready: bool,
        started: &mut bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        // Inside a client transaction the COPY joins it (the shards commit together at
        // COMMIT, which needs two-phase commit); outside, it is its own transaction.
        if let (CopyTarget::Sharded { .. }, Some(c), false) =
            (&plan.target, self.codec, plan.binary)
        {
            if !c.ascii_safe() {
                // Rows are split on ASCII delimiters before any conversion; in these
                // encodings a character's second byte can be one.
                return Ok(Err(ProxyError::Unsupported(format!(
                    "COPY into a sharded table with client_encoding {} is not supported: its multi-byte characters can contain delimiter bytes; use UTF8 for the COPY",
                    c.name()
                ))));
            }
        }
        let in_txn = self.txn.status.is_open();
        if in_txn {
            let all = self.target_of(crate::sharding::shardset::ShardSet::all(
                self.topo.map.shards.len(),
            ));
            if let Err(e) = self.check_write(all, true, true) {
                return Ok(Err(e));
            }
        }
        let n = self.topo.map.shards.len();
        let idxs = match self.conns_for(0..n).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        // Where the key sits in each row (and, for binary, whether it can be read).
        let layout = match self.copy_layout(plan, idxs[0]).await? {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        // Postgres 18 treats a CSV `\.` row as data; older versions end the COPY there.
        let mut format = plan.format.clone();
        format.csv_end_marker = self.conns[idxs[0]]
            .params
            .iter()
            .find(|(k, _)| k == "server_version")
            .and_then(|(_, v)| {
                v.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .is_none_or(|major| major < 18);

        // A generated column left out: the shards get it in the column list, and a value
        // in every row (appended by the splitter).
        let completed;
        let sql = match &plan.generated {
            Some(g) => match with_column(sql, &g.column.name) {
                Some(s) => {
                    completed = s;
                    completed.as_str()
                }
                None => {
                    return Ok(Err(ProxyError::Internal(
                        "a COPY's column list was not found".into(),
                    )))
                }
            },
            None => sql,
        };
        // BEGIN and the COPY on every shard; each answers CopyInResponse or an error.
        let mut msg = BytesMut::with_capacity(sql.len() + 16);
        if !in_txn {
            build::query(&mut msg, "BEGIN");
        }
        build::query(&mut msg, sql);
        for &ci in &idxs {
            let shard = self.conns[ci].shard;
            self.conns[ci].write_all(&msg).await.map_err(lost(shard))?;
        }
        let mut response: Option<bytes::Bytes> = None;
        let mut first_error: Option<ProxyError> = None;
        let mut copying = vec![false; idxs.len()];
        for (k, &ci) in idxs.iter().enumerate() {
            let shard = self.conns[ci].shard;
            let mut ready = if in_txn { 1 } else { 0 };
            loop {
                let f = self.conns[ci].read_frame().await.map_err(lost(shard))?;
                match f.tag {
                    b'Z' => {
                        ready += 1;
                        if ready == 2 {
                            break; // the COPY failed at once; its error was read
                        }
                    }
                    b'G' => {
                        copying[k] = true;
                        response.get_or_insert(f.raw);
                        break;
                    }
                    b'E' if first_error.is_none() => {
                        let (code, message) = error_fields(f.body());
                        first_error = Some(ProxyError::Backend { code, message });
                    }
                    _ => {}
                }
            }
        }
        if let (Some(e), _) | (None, Some(e)) = (
            first_error,
            response
                .is_none()
                .then(|| ProxyError::Internal("no shard started the COPY".into())),
        ) {
            self.end_copy(&idxs, &copying, Some("COPY refused by a shard"), in_txn)
                .await?;
            return Ok(Err(e));
        }
        if let Some(r) = response {
            match plan.generated {
                // The client's own columns: the appended one is the proxy's.
                Some(_) => self.out.extend_from_slice(&without_last_column(&r)),
                None => self.out.extend_from_slice(&r),
            }
        }
        *started = true;
        self.flush().await?;

        // Stream the client's data.
        let abort = self.stream_copy(plan, format, layout, &idxs).await?;
        if let Some(a) = abort {
            let (e, why) = match a {
                Abort::Proxy(e) => {
                    let why = e.to_string();
                    (e, why)
                }
                Abort::ClientFail(m) => (
                    ProxyError::Backend {
                        code: "57014".into(),
                        message: format!("COPY from stdin failed: {m}"),
                    },
                    m,
                ),
            };
            self.end_copy(&idxs, &copying, Some(&why), in_txn).await?;
            return Ok(Err(e));
        }

        // Every shard finishes its COPY: CommandComplete or an error, then ReadyForQuery.
        let mut total: u64 = 0;
        let mut first_error: Option<ProxyError> = None;
        for &ci in &idxs {
            let shard = self.conns[ci].shard;
            loop {
                let f = self.conns[ci].read_frame().await.map_err(lost(shard))?;
                match f.tag {
                    b'C' => {
                        total += command_tag(f.body())
                            .rsplit(' ')
                            .next()
                            .and_then(|x| x.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                    b'E' if first_error.is_none() => {
                        let (code, message) = error_fields(f.body());
                        first_error = Some(ProxyError::Backend {
                            code,
                            message: format!("{message} (on shard {})", self.shard_name(shard)),
                        });
                    }
                    b'Z' => break,
                    _ => {}
                }
            }
        }
        let commit_failed = self
            .end_copy(
                &idxs,
                &vec![false; idxs.len()],
                first_error.as_ref().map(|_| ""),
                in_txn,
            )
            .await?;
        if let Some(e) = first_error.or(commit_failed) {
            return Ok(Err(e));
        }
        if matches!(plan.target, CopyTarget::Reference) {
            total /= idxs.len().max(1) as u64; // every shard holds the same rows
        }
        build::command_complete(&mut self.out, &format!("COPY {total}"));
        if !hide_ready {
            self.push_ready();
        }
        Ok(Ok(Outcome {
            status: Some(self.txn.status),
            error: false,
            ..Default::default()
        }))
    }

    /// Ends the COPY: shards still copying get CopyFail (`why`) and are read to
    /// ReadyForQuery; then, outside a client transaction, all roll back (`why` given) or
    /// commit together ([`Session::commit_all`]). Inside one, the client's COMMIT or
    /// ROLLBACK ends it (after an error the session reports the transaction failed).
    /// Returns the commit's failure.
    async fn end_copy(
        &mut self,
        idxs: &[usize],
        copying: &[bool],
        why: Option<&str>,
        in_txn: bool,
    ) -> Result<Option<ProxyError>, RelayError> {
        let mut msg = BytesMut::new();
        for (k, &ci) in idxs.iter().enumerate() {
            if !copying[k] {
                continue;
            }
            let shard = self.conns[ci].shard;
            msg.clear();
            copy_fail(&mut msg, why.unwrap_or("aborted by the proxy"));
            self.conns[ci].write_all(&msg).await.map_err(lost(shard))?;
            while self.conns[ci].read_frame().await.map_err(lost(shard))?.tag != b'Z' {}
        }
        if in_txn {
            return Ok(None);
        }
        if why.is_some() {
            self.rollback_all(idxs).await;
            return Ok(None);
        }
        Ok(self.commit_all(idxs).await?.err())
    }
}

/// `sql` (a `COPY t (a, b) FROM …`) with `column` added to its column list: before the
/// first `)` the Postgres lexer finds.
fn with_column(sql: &str, column: &str) -> Option<String> {
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let close = tokens
        .iter()
        .find(|t| sql.get(t.start as usize..t.end as usize) == Some(")"))?;
    let at = close.start as usize;
    Some(format!(
        "{}, {}{}",
        &sql[..at],
        crate::quote::ident(column),
        &sql[at..]
    ))
}

/// A CopyInResponse (`G`: format, column count, a format per column) without its last
/// column.
fn without_last_column(raw: &[u8]) -> Vec<u8> {
    // 1 tag + 4 length + 1 format + 2 count, then 2 bytes per column.
    let Some(count) = raw.get(6..8).map(|c| i16::from_be_bytes([c[0], c[1]])) else {
        return raw.to_vec();
    };
    if count < 1 || raw.len() < 8 + 2 * count as usize {
        return raw.to_vec();
    }
    let n = count as usize - 1;
    let mut out = Vec::with_capacity(8 + 2 * n);
    out.push(b'G');
    out.extend_from_slice(&((4 + 1 + 2 + 2 * n) as i32).to_be_bytes());
    out.push(raw[5]);
    out.extend_from_slice(&(n as i16).to_be_bytes());
    out.extend_from_slice(&raw[8..8 + 2 * n]);
    out
}
