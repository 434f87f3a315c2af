//! Running a multi-shard read with a [`GatherPlan`]: fan-out to every shard, then a streaming
//! k-way merge or a combine step on one shard (see [`crate::gather`]).
//!
//! Exchange with the shards, all in the extended protocol with the unnamed statement:
//! 1. shard 0: Parse + Describe statement + Flush — the column layout (and the client's
//!    parameter types) before anything runs;
//! 2. every shard: [Parse] + Bind + Execute + Sync, read in parallel (the shards run at once;
//!    the proxy reads whichever stream the merge needs next);
//! 3. Combine only, shard 0: the final query over the gathered rows.
//!
//! A failure on one shard cancels the others (their connections are then closed rather than
//! pooled, so a late cancel can never hit another client's query); the whole query is bounded
//! by `gather.timeout_secs` and its gathered rows by `gather.memory_limit_mb`.

use std::cmp::Ordering;

use super::relay::{Outcome, RelayError};
use super::{Session, SessionEnd, TxnStatus};
use crate::backend::conn::BackendError;
use crate::error::ProxyError;
use crate::gather::datum::{self, Field};
use crate::gather::{self as g, Count, Final, GatherPlan, Mode};
use crate::sharding::shardset::ShardSet;
use crate::wire::protocol::{build, BindMsg, Frame};
use bytes::{BufMut, BytesMut};

/// One execution of a gather statement.
pub(super) struct GatherCall<'a> {
    /// The plan.
    pub plan: &'a GatherPlan,
    /// The client's statement text.
    pub sql: &'a str,
    /// Parameter types the client declared.
    pub param_types: &'a [u32],
    /// The client's Bind (`None` for a simple Query: no parameters, text results).
    pub bind: Option<&'a BindMsg<'a>>,
    /// Send a RowDescription first.
    pub describe: bool,
}

impl GatherCall<'_> {
    /// Parameter format codes and values as the client sent them.
    fn params_section(&self) -> &[u8] {
        self.bind.map_or(NO_PARAMS, |b| b.params_section())
    }
    /// Result format codes as sent.
    fn result_formats(&self) -> Vec<i16> {
        self.bind.map(|b| b.result_formats()).unwrap_or_default()
    }
    /// Parameter `i` (`None` for NULL or absent).
    fn param(&self, i: usize) -> Option<&[u8]> {
        self.bind.and_then(|b| b.param(i)).flatten()
    }
    /// Whether parameter `i` is in binary format.
    fn is_binary(&self, i: usize) -> bool {
        self.bind.is_some_and(|b| b.is_binary(i))
    }
}

/// A portal of a merged query.
pub(super) struct GatherPortal {
    /// The client's Bind.
    pub bind: Frame,
    /// Rows not yet fetched (once the query ran for a fetch with a row limit).
    pub rows: Option<std::collections::VecDeque<bytes::Bytes>>,
    /// Rows fetched so far.
    pub sent: u64,
    /// The kept cursor it is fetched from, inside a transaction block (see
    /// `Session::stream_portal`): rows are then fetched from the shards page by page.
    pub cursor: Option<String>,
}

impl GatherPortal {
    /// Bytes of rows it keeps.
    pub fn held(&self) -> usize {
        self.rows
            .as_ref()
            .map_or(0, |r| r.iter().map(|b| b.len()).sum())
    }
}

/// Output being captured (for a portal fetched in chunks) instead of sent to the client.
pub(super) struct Capture {
    /// Where the captured output starts in the session's output buffer.
    pub start: usize,
    /// Most bytes it may hold: the gather memory limit less what the session's other
    /// fetched portals already keep.
    pub limit: usize,
    /// It outgrew the gather memory limit and was dropped.
    pub overflow: bool,
}

/// The messages of output captured whole (see [`Capture`]): each one's type byte and bytes
/// (header included). The proxy wrote them, so they are complete; a torn tail is dropped.
pub(super) fn captured_messages(
    captured: &bytes::Bytes,
) -> impl Iterator<Item = (u8, bytes::Bytes)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 5 > captured.len() {
            return None;
        }
        let len = i32::from_be_bytes([
            captured[at + 1],
            captured[at + 2],
            captured[at + 3],
            captured[at + 4],
        ])
        .max(4) as usize;
        let end = (at + 1 + len).min(captured.len());
        let m = (captured[at], captured.slice(at..end));
        at = end;
        Some(m)
    })
}

/// The Bind parameter section of a statement without parameters.
const NO_PARAMS: &[u8] = &[0, 0, 0, 0];

/// How one gather ended, when it did not end with an error from a shard.
enum Fail {
    /// A shard reported an error: forwarded as is.
    Shard(Frame),
    /// The proxy refuses or gives up.
    Proxy(ProxyError),
}

type GResult<T> = Result<T, GatherError>;

/// Errors inside a gather.
enum GatherError {
    /// The client or a backend connection failed.
    Relay(RelayError),
    /// The query failed; connections are drained.
    Failed(Fail),
}

impl From<SessionEnd> for GatherError {
    fn from(e: SessionEnd) -> Self {
        GatherError::Relay(RelayError::Client(e))
    }
}

fn backend(shard: usize, error: BackendError) -> GatherError {
    GatherError::Relay(RelayError::Backend {
        shard,
        error,
        forwarded: true,
    })
}

fn proxy_fail(e: ProxyError) -> GatherError {
    GatherError::Failed(Fail::Proxy(e))
}

/// Byte ranges of a row's values.
type Values = Vec<Option<(usize, usize)>>;

/// A shard's stream in the merge: its current row and whether it has finished.
struct Stream {
    idx: usize,
    head: Option<(Frame, Values)>,
    done: bool,
    /// The value-range buffer of the last row, reused for the next (no allocation per row).
    spare: Values,
}

impl Session {
    /// Runs a gather statement; writes RowDescription (when asked), rows, CommandComplete or
    /// the error, and — unless `hide_ready` — ReadyForQuery.
    pub(super) async fn gather(
        &mut self,
        call: &GatherCall<'_>,
        set: ShardSet,
        hide_ready: bool,
    ) -> Result<Outcome, RelayError> {
        let idxs = match self.conns_for(set.iter()).await {
            Ok(i) => i,
            Err(e) => return Ok(self.gather_failed(Fail::Proxy(e), hide_ready)),
        };
        let timeout = self.topo.map.gather.timeout;
        let run = tokio::time::timeout(timeout, self.gather_run(call, &idxs)).await;
        match run {
            Ok(Ok(status)) => {
                if !hide_ready {
                    build::ready_for_query(&mut self.out, status.byte());
                }
                Ok(Outcome {
                    status: Some(status),
                    error: false,
                    ..Default::default()
                })
            }
            Ok(Err(GatherError::Relay(e))) => Err(e),
            Ok(Err(GatherError::Failed(f))) => Ok(self.gather_failed(f, hide_ready)),
            Err(_) => {
                // Out of time: stop the shards and drop their connections (their state is unknown).
                self.conns.cancel(idxs.iter().copied());
                self.conns.close_all();
                let e = ProxyError::Backend {
                    code: "57014".into(),
                    message: format!(
                        "canceling statement due to the scatter-gather timeout (gather.timeout_secs = {})",
                        timeout.as_secs()
                    ),
                };
                self.txn.fail();
                Ok(self.gather_failed(Fail::Proxy(e), hide_ready))
            }
        }
    }

    /// Reports a failed gather; the shards' connections were already drained.
    fn gather_failed(&mut self, f: Fail, hide_ready: bool) -> Outcome {
        match f {
            Fail::Shard(frame) => {
                self.shared
                    .telemetry
                    .error(&crate::wire::protocol::error_fields(frame.body()).0);
                self.out.extend_from_slice(&frame.raw)
            }
            Fail::Proxy(e) => build::error(&mut self.out, "ERROR", e.sqlstate(), &e.to_string()),
        }
        let status = match self.txn.status {
            TxnStatus::Idle => TxnStatus::Idle,
            _ => TxnStatus::Failed,
        };
        if !hide_ready {
            build::ready_for_query(&mut self.out, status.byte());
        }
        Outcome {
            status: Some(status),
            error: true,
            ..Default::default()
        }
    }

    async fn write_to(&mut self, idx: usize, msg: &[u8]) -> GResult<()> {
        let shard = self.conns[idx].shard;
        self.conns[idx]
            .write_all(msg)
            .await
            .map_err(|e| backend(shard, e))
    }

    /// The next frame of connection `idx`, watching the client meanwhile (see
    /// [`Session::backend_frame`]).
    async fn read_from(&mut self, idx: usize) -> GResult<Frame> {
        self.backend_frame(idx, true)
            .await
            .map_err(GatherError::Relay)
    }

    /// Reads until ReadyForQuery; returns its status.
    async fn drain_to_ready(&mut self, idx: usize) -> GResult<TxnStatus> {
        loop {
            let f = self.read_from(idx).await?;
            if f.tag == b'Z' {
                return Ok(TxnStatus::of_ready(f.body()));
            }
        }
    }

    /// Whether text sorts in byte order on the shards (C/POSIX collation, libc provider, no
    /// column with a collation of its own), asked once per proxy on the given connection.
    pub(super) async fn bytewise_text(&mut self, idx: usize) -> bool {
        if let Some(v) = self.shared.bytewise_text.get() {
            return *v;
        }
        // Byte order holds when the database collation is C-like (libc provider) and no user
        // column declares another collation (RowDescription does not say which collation a
        // sort key has; 100 = default, 950/951 = "C"/"POSIX").
        let probe = "SELECT (d.datcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8') AND \
                     coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c' AND NOT EXISTS \
                     (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                      WHERE a.attnum > 0 AND NOT a.attisdropped \
                      AND a.attcollation NOT IN (0, 100, 950, 951) \
                      AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, \
                                                 'information_schema'::regnamespace)))::text \
                     FROM pg_database d WHERE d.datname = current_database()";
        match self.conns[idx].query_value(probe).await {
            Ok(Some(v)) => {
                let b = v == "true";
                let _ = self.shared.bytewise_text.set(b);
                b
            }
            _ => false,
        }
    }

    /// The gather itself; returns the ReadyForQuery status to report.
    async fn gather_run(&mut self, call: &GatherCall<'_>, idxs: &[usize]) -> GResult<TxnStatus> {
        let gp = call.plan;
        let c0 = idxs[0];
        let wants_text_probe = !gp.sort.is_empty() && self.shared.bytewise_text.get().is_none();
        let bytewise = if wants_text_probe && self.txn.status != TxnStatus::Failed {
            self.bytewise_text(c0).await
        } else {
            self.shared.bytewise_text.get().copied().unwrap_or(false)
        };
        // 1. Describe on shard 0.
        let describe_sql = match &gp.mode {
            Mode::Combine(Final::Grouped { .. }) => call.sql,
            _ => gp.shard_sql.as_str(),
        };
        let mut msg = BytesMut::with_capacity(describe_sql.len() + 64);
        build::parse(&mut msg, "", describe_sql, call.param_types);
        build::target(&mut msg, b'D', b'S', "");
        build::empty(&mut msg, b'H');
        self.write_to(c0, &msg).await?;
        let mut param_oids: Vec<u32> = Vec::new();
        let fields: Vec<Field>;
        loop {
            let f = self.read_from(c0).await?;
            match f.tag {
                b'1' => {}
                b't' => param_oids = parse_param_description(f.body()),
                b'T' => {
                    fields = datum::parse_row_description(f.body())
                        .map_err(|e| proxy_fail(ProxyError::Protocol(e.to_string())))?;
                    break;
                }
                b'n' => {
                    self.abort_describe(c0).await?;
                    return Err(proxy_fail(ProxyError::Unsupported(
                        "this statement returns no rows and cannot be merged across shards".into(),
                    )));
                }
                b'E' => {
                    self.abort_describe(c0).await?;
                    return Err(GatherError::Failed(Fail::Shard(f)));
                }
                b'N' => self.out.extend_from_slice(&f.raw),
                _ => {}
            }
        }
        let visible = fields.len().saturating_sub(gp.hidden);
        let prepared = (|| -> Result<_, ProxyError> {
            let formats = datum::expand_formats(&call.result_formats(), visible)
                .map_err(ProxyError::Protocol)?;
            let limit = self.count_value(gp.limit, call, "LIMIT")?;
            let offset = self.count_value(gp.offset, call, "OFFSET")?;
            Ok((formats, limit, offset))
        })();
        let (formats, limit, offset) = match prepared {
            Ok(v) => v,
            Err(e) => {
                self.abort_describe(c0).await?;
                return Err(proxy_fail(e));
            }
        };
        // Stream when every sort key can be compared here; otherwise combine.
        let key_types: Vec<u32> = gp
            .sort
            .iter()
            .map(|k| fields.get(k.col.index(visible)).map_or(0, |f| f.type_oid))
            .collect();
        let fallback = Final::Rows {
            distinct: false,
            distinct_on: Vec::new(),
        };
        let fin: Option<&Final> = match &gp.mode {
            Mode::Combine(f) => Some(f),
            Mode::Stream => {
                if streamable(gp, &key_types, bytewise) {
                    None
                } else {
                    Some(&fallback)
                }
            }
        };
        if call.describe {
            datum::put_row_description(&mut self.out, &fields[..visible], &formats);
        }
        // 2. Every shard runs its part.
        let shard_formats: Vec<i16> = match fin {
            None => {
                let mut f = formats.clone();
                f.extend(std::iter::repeat_n(1, gp.hidden));
                f
            }
            Some(_) => vec![1],
        };
        let grouped = matches!(fin, Some(Final::Grouped { .. }));
        for (k, &idx) in idxs.iter().enumerate() {
            let mut msg = BytesMut::with_capacity(gp.shard_sql.len() + 64);
            if k != 0 || grouped {
                build::parse(&mut msg, "", &gp.shard_sql, &param_oids);
            }
            build::bind(&mut msg, "", "", call.params_section(), &shard_formats);
            if k == 0 && grouped {
                build::target(&mut msg, b'D', b'P', "");
            }
            build::execute(&mut msg, "", 0);
            build::empty(&mut msg, b'S');
            self.write_to(idx, &msg).await?;
        }
        match fin {
            None => {
                self.merge_streams(gp, idxs, visible, &key_types, limit, offset)
                    .await
            }
            Some(fin) => {
                let partial_fields = if grouped { None } else { Some(fields.clone()) };
                self.combine(
                    call,
                    fin,
                    idxs,
                    partial_fields,
                    &param_oids,
                    visible,
                    &formats,
                    limit,
                    offset,
                )
                .await
            }
        }
    }

    /// Ends an exchange left open after Describe + Flush.
    async fn abort_describe(&mut self, c0: usize) -> GResult<()> {
        let mut msg = BytesMut::with_capacity(5);
        build::empty(&mut msg, b'S');
        self.write_to(c0, &msg).await?;
        self.drain_to_ready(c0).await.map(|_| ())
    }

    /// A LIMIT/OFFSET value: a constant, or the Bind parameter it names.
    pub(super) fn count_value(
        &self,
        c: Option<Count>,
        call: &GatherCall<'_>,
        what: &str,
    ) -> Result<Option<i64>, ProxyError> {
        let v = match c {
            None => return Ok(None),
            Some(Count::Const(v)) => v,
            Some(Count::Param(i)) => {
                let Some(raw) = call.param(i) else {
                    return Ok(None);
                };
                let parsed = crate::wire::protocol::bound_int(raw, call.is_binary(i));
                parsed.ok_or_else(|| ProxyError::Backend {
                    code: "22P02".into(),
                    message: format!("invalid value for {what} parameter ${}", i + 1),
                })?
            }
        };
        if v < 0 {
            // Postgres: invalid_row_count_in_limit_clause / ..._in_result_offset_clause.
            let code = if what == "OFFSET" { "2201X" } else { "2201W" };
            return Err(ProxyError::Backend {
                code: code.into(),
                message: format!("{what} must not be negative"),
            });
        }
        Ok(Some(v))
    }

    /// Reads the next row of a stream into its head (or marks it done); a shard error is
    /// returned as the frame.
    async fn advance(&mut self, s: &mut Stream) -> GResult<Option<Frame>> {
        s.head = None;
        while !s.done {
            let f = self.read_from(s.idx).await?;
            match f.tag {
                b'D' => {
                    let mut vals = std::mem::take(&mut s.spare);
                    datum::row_values(f.body(), &mut vals)
                        .map_err(|e| proxy_fail(ProxyError::Protocol(e.to_string())))?;
                    s.head = Some((f, vals));
                    return Ok(None);
                }
                b'C' | b'I' => s.done = true,
                b'E' => {
                    s.done = true;
                    return Ok(Some(f));
                }
                _ => {} // ParseComplete, BindComplete, notices
            }
        }
        Ok(None)
    }

    /// Streams: k-way merge on the hidden sort columns (or concatenation without sort keys),
    /// OFFSET/LIMIT applied here.
    async fn merge_streams(
        &mut self,
        gp: &GatherPlan,
        idxs: &[usize],
        visible: usize,
        types: &[u32],
        limit: Option<i64>,
        offset: Option<i64>,
    ) -> GResult<TxnStatus> {
        let mut streams: Vec<Stream> = idxs
            .iter()
            .map(|&idx| Stream {
                idx,
                head: None,
                done: false,
                spare: Vec::new(),
            })
            .collect();
        let mut failure: Option<Frame> = None;
        for s in streams.iter_mut() {
            if let Some(e) = self.advance(s).await? {
                failure.get_or_insert(e);
                break;
            }
        }
        let mut skip = offset.unwrap_or(0);
        let mut left = limit.unwrap_or(i64::MAX);
        let mut sent: u64 = 0;
        while failure.is_none() && left > 0 {
            // The stream with the smallest head (ties: lowest shard, so the order is stable).
            let mut best: Option<usize> = None;
            for (i, s) in streams.iter().enumerate() {
                let Some((fa, va)) = &s.head else { continue };
                if gp.sort.is_empty() {
                    best = Some(i);
                    break;
                }
                best = match best {
                    None => Some(i),
                    Some(b) => {
                        let Some((fb, vb)) = streams[b].head.as_ref() else {
                            continue;
                        };
                        if datum::compare_rows(
                            &gp.sort,
                            visible,
                            types,
                            fa.body(),
                            va,
                            fb.body(),
                            vb,
                        ) == Ordering::Less
                        {
                            Some(i)
                        } else {
                            Some(b)
                        }
                    }
                };
            }
            let Some(b) = best else { break };
            let Some((f, vals)) = streams[b].head.take() else {
                break;
            };
            if skip > 0 {
                skip -= 1;
            } else {
                if gp.hidden == 0 {
                    self.out.extend_from_slice(&f.raw);
                } else {
                    datum::put_row_prefix(&mut self.out, f.body(), &vals, visible);
                }
                sent += 1;
                left -= 1;
                self.maybe_flush().await?;
            }
            let mut s = std::mem::replace(
                &mut streams[b],
                Stream {
                    idx: 0,
                    head: None,
                    done: true,
                    spare: Vec::new(),
                },
            );
            s.spare = vals;
            if let Some(e) = self.advance(&mut s).await? {
                failure = Some(e);
            }
            streams[b] = s;
        }
        if failure.is_some() {
            let live: Vec<usize> = streams.iter().filter(|s| !s.done).map(|s| s.idx).collect();
            self.conns.cancel(live);
        }
        // Drain every shard to ReadyForQuery (rows past the LIMIT are discarded).
        let mut status = TxnStatus::Idle;
        for s in &streams {
            let mut done = s.done;
            loop {
                let f = self.read_from(s.idx).await?;
                match f.tag {
                    b'Z' => {
                        status = status.combine(TxnStatus::of_ready(f.body()));
                        break;
                    }
                    b'E' if !done || failure.is_none() => {
                        failure.get_or_insert(f);
                        done = true;
                    }
                    _ => {}
                }
            }
        }
        if let Some(e) = failure {
            return Err(GatherError::Failed(Fail::Shard(e)));
        }
        build::command_complete(&mut self.out, &format!("SELECT {sent}"));
        self.shared.telemetry.gathered_rows.increment(sent);
        Ok(status)
    }

    /// Combine: gather every shard's partial rows (bounded), then run the final step on shard 0.
    #[allow(clippy::too_many_arguments)]
    async fn combine(
        &mut self,
        call: &GatherCall<'_>,
        fin: &Final,
        idxs: &[usize],
        mut partial_fields: Option<Vec<Field>>,
        param_oids: &[u32],
        visible: usize,
        formats: &[i16],
        limit: Option<i64>,
        offset: Option<i64>,
    ) -> GResult<TxnStatus> {
        let budget = self.topo.map.gather.memory_limit;
        let mut used = 0usize;
        let mut rows: Vec<Frame> = Vec::new();
        let mut failure: Option<Fail> = None;
        let mut status = TxnStatus::Idle;
        for (k, &idx) in idxs.iter().enumerate() {
            loop {
                let f = self.read_from(idx).await?;
                match f.tag {
                    b'D' if failure.is_none() => {
                        used += f.raw.len() + 64;
                        if used > budget {
                            failure = Some(Fail::Proxy(ProxyError::OutOfMemory(format!(
                                "scatter-gather query needs more than the gather memory limit ({} MiB, gather.memory_limit_mb) to merge shard results; add a shard key or a LIMIT, or raise the limit",
                                budget >> 20
                            ))));
                            rows = Vec::new();
                            // Stop every shard still producing rows (this one included).
                            self.conns.cancel(idxs[k..].iter().copied());
                        } else {
                            rows.push(f);
                        }
                    }
                    b'T' if k == 0 => {
                        partial_fields = Some(
                            datum::parse_row_description(f.body())
                                .map_err(|e| proxy_fail(ProxyError::Protocol(e.to_string())))?,
                        );
                    }
                    b'E' if failure.is_none() => {
                        failure = Some(Fail::Shard(f));
                        // Earlier shards are done; stop the ones not read yet.
                        self.conns.cancel(idxs[k + 1..].iter().copied());
                    }
                    b'Z' => {
                        status = status.combine(TxnStatus::of_ready(f.body()));
                        break;
                    }
                    _ => {}
                }
            }
        }
        if let Some(f) = failure {
            return Err(GatherError::Failed(f));
        }
        let partial = partial_fields.ok_or_else(|| {
            proxy_fail(ProxyError::Internal(
                "shard sent no row description for partial rows".into(),
            ))
        })?;
        let types: Vec<u32> = partial.iter().map(|f| f.type_oid).collect();
        // 3. The final step on shard 0, the gathered columns as array parameters.
        let mut oids: Vec<u32> = param_oids.to_vec();
        for t in &types {
            match datum::array_oid(*t) {
                Some(a) => oids.push(a),
                None => {
                    return Err(proxy_fail(ProxyError::Unsupported(format!(
                        "merging values of type oid {t} across shards is not supported; cast the column to a built-in type"
                    ))))
                }
            }
        }
        let sql = g::final_sql(
            call.plan,
            fin,
            &types,
            param_oids.len(),
            visible,
            limit,
            offset,
        );
        let mut values: Vec<Vec<Option<(usize, usize)>>> = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut v = Vec::with_capacity(types.len());
            datum::row_values(r.body(), &mut v)
                .map_err(|e| proxy_fail(ProxyError::Protocol(e.to_string())))?;
            values.push(v);
        }
        let c0 = idxs[0];
        let mut msg = BytesMut::with_capacity(used + sql.len() + 256);
        build::parse(&mut msg, "", &sql, &oids);
        let at = build::begin(&mut msg, b'B');
        build::put_cstr(&mut msg, "");
        build::put_cstr(&mut msg, "");
        let n_client = param_oids.len();
        msg.put_i16((n_client + types.len()) as i16);
        for i in 0..n_client {
            msg.put_i16(i16::from(call.is_binary(i)));
        }
        for _ in &types {
            msg.put_i16(1);
        }
        msg.put_i16((n_client + types.len()) as i16);
        for i in 0..n_client {
            match call.param(i) {
                None => msg.put_i32(-1),
                Some(v) => {
                    msg.put_i32(v.len() as i32);
                    msg.extend_from_slice(v);
                }
            }
        }
        for (col, t) in types.iter().enumerate() {
            let len_at = msg.len();
            msg.put_i32(0);
            let vals = rows
                .iter()
                .zip(values.iter())
                .map(|(r, v)| v.get(col).copied().flatten().map(|(s, e)| &r.body()[s..e]));
            datum::put_array(&mut msg, *t, vals);
            let len = (msg.len() - len_at - 4) as i32;
            msg[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        msg.put_i16(formats.len() as i16);
        for f in formats {
            msg.put_i16(*f);
        }
        build::finish(&mut msg, at);
        drop(rows);
        build::execute(&mut msg, "", 0);
        build::empty(&mut msg, b'S');
        self.write_to(c0, &msg).await?;
        drop(msg);
        let mut failed: Option<Frame> = None;
        let final_status;
        loop {
            let f = self.read_from(c0).await?;
            match f.tag {
                b'D' | b'C' if failed.is_none() => {
                    if f.tag == b'D' {
                        self.shared.telemetry.gathered_rows.increment(1);
                    }
                    self.out.extend_from_slice(&f.raw);
                    self.maybe_flush().await?;
                }
                b'E' => {
                    failed.get_or_insert(f);
                }
                b'Z' => {
                    final_status = TxnStatus::of_ready(f.body());
                    break;
                }
                _ => {} // ParseComplete, BindComplete, notices
            }
        }
        if let Some(e) = failed {
            return Err(GatherError::Failed(Fail::Shard(e)));
        }
        Ok(status.combine(final_status))
    }
}

/// Whether every sort key of a streaming plan can be compared in the proxy (`bytewise`: text
/// sorts in byte order on the shards).
pub(super) fn streamable(gp: &GatherPlan, key_types: &[u32], bytewise: bool) -> bool {
    gp.sort.iter().zip(key_types).all(|(k, &oid)| {
        let text_ok = match k.collate.as_deref() {
            Some(c) => matches!(c, "C" | "POSIX" | "ucs_basic"),
            None => bytewise,
        };
        datum::sortable(oid, text_ok || !datum::is_collatable(oid))
    })
}

/// A Bind of the unnamed statement to the unnamed portal with the client's parameters.
fn parse_param_description(body: &[u8]) -> Vec<u32> {
    let mut c = crate::wire::protocol::Cursor::new(body, "ParameterDescription");
    let n = c.i16().unwrap_or(0).max(0);
    (0..n).filter_map(|_| c.u32().ok()).collect()
}
