//! FETCH and MOVE on a kept cursor (see [`super::cursors`]): the shards' cursors fetched
//! in chunks, their heads k-way merged on the hidden sort keys (or, without ORDER BY, one
//! shard after the other), OFFSET/LIMIT applied as rows pass.
//!
//! Each chunk is one extended-protocol exchange per shard, unnamed statement: `Parse`
//! (`FETCH FORWARD n FROM c`), `Bind` (the client's formats for the visible columns, binary
//! for the hidden sort keys — a FETCH's rows come in the formats of its own Bind),
//! `Execute`, `Sync`; the shards needing rows are asked at once, then read.

use std::cmp::Ordering;

use bytes::BytesMut;

use super::cursors::{Done, Fail, Kept, CHUNK, MIN_CHUNK};
use super::relay::RelayError;
use super::Session;
use crate::backend::conn::BackendError;
use crate::error::ProxyError;
use crate::gather::datum;
use crate::routing::router::Fetch;
use crate::wire::protocol::{build, Frame};

/// The Bind parameter section of a statement without parameters.
pub(super) const NO_PARAMS: &[u8] = &[0, 0, 0, 0];

pub(super) fn lost(shard: usize, error: BackendError) -> RelayError {
    RelayError::Backend {
        shard,
        error,
        forwarded: false,
    }
}

pub(super) fn protocol(e: impl std::fmt::Display) -> Fail {
    Fail::Proxy(ProxyError::Protocol(e.to_string()))
}

impl Session {
    /// FETCH/MOVE on a kept cursor: rows in `formats` (the visible columns'), with a
    /// RowDescription first when `describe`.
    pub(super) async fn fetch_kept(&mut self, f: &Fetch, formats: &[i16], describe: bool) -> Done {
        if self.txn.failed {
            return Ok(Err(ProxyError::InFailedTransaction.into()));
        }
        let Some(mut k) = self.cursors.as_mut().and_then(|c| c.kept.remove(&f.name)) else {
            return Ok(Err(super::cursors::missing(&f.name).into()));
        };
        let r = self.fetch_from(&mut k, f, formats, describe).await;
        self.cursors_mut().kept.insert(f.name.clone(), k);
        Ok(r?.map(|n| tag(f, n)))
    }

    /// The next page of up to `max_rows` rows (all for 0) of the kept cursor behind a
    /// portal: how many were sent, and whether the cursor is exhausted.
    pub(super) async fn page_kept(
        &mut self,
        name: &str,
        max_rows: i32,
        formats: &[i16],
        describe: bool,
    ) -> Result<Result<(i64, bool), Fail>, RelayError> {
        let Some(mut k) = self.cursors.as_mut().and_then(|c| c.kept.remove(name)) else {
            return Ok(Err(super::cursors::missing(name).into()));
        };
        let f = Fetch {
            name: name.to_string(),
            forward: Some(if max_rows <= 0 {
                crate::routing::router::FETCH_ALL
            } else {
                i64::from(max_rows)
            }),
            is_move: false,
        };
        let r = self.fetch_from(&mut k, &f, formats, describe).await;
        let exhausted = k.left <= 0 || k.streams.iter().all(|s| s.done && s.rows.is_empty());
        self.cursors_mut().kept.insert(name.to_string(), k);
        Ok(r?.map(|n| (n, exhausted)))
    }

    /// Hands out the rows of one FETCH/MOVE; returns how many.
    async fn fetch_from(
        &mut self,
        k: &mut Kept,
        f: &Fetch,
        formats: &[i16],
        describe: bool,
    ) -> Result<Result<i64, Fail>, RelayError> {
        let Some(count) = f.forward else {
            return Ok(Err(ProxyError::Unsupported(format!(
                "cursor \"{}\" is merged across shards (or kept WITH HOLD) by the proxy, which fetches forward only: use FETCH [NEXT | n | FORWARD n | ALL] or MOVE of the same forms",
                f.name
            ))
            .into()));
        };
        let formats = if f.is_move && !k.formats.is_empty() {
            // MOVE sends no rows: whatever is buffered stays valid.
            k.formats.clone()
        } else if formats.is_empty() {
            vec![0; k.fields.len()]
        } else {
            formats.to_vec()
        };
        if k.buffered() && k.formats != formats {
            return Ok(Err(ProxyError::Unsupported(format!(
                "cursor \"{}\" holds rows fetched in other result formats; fetch it in one format throughout",
                f.name
            ))
            .into()));
        }
        k.formats = formats;
        if describe && !f.is_move {
            datum::put_row_description(&mut self.out, &k.fields, &k.formats);
        }
        let mut n: i64 = 0;
        if let Some(g) = k.gathered.as_mut() {
            while n < count {
                let Some(r) = g.pop_front() else { break };
                if !f.is_move {
                    self.out.extend_from_slice(&r);
                }
                n += 1;
                self.maybe_flush().await.map_err(RelayError::Client)?;
            }
            return Ok(Ok(n));
        }
        let visible = k.fields.len();
        let budget = self.topo.map.gather.memory_limit;
        while n < count && k.left > 0 {
            let need: Vec<usize> = if k.plan.sort.is_empty() {
                // Concatenation: one shard after the other.
                match k
                    .streams
                    .iter()
                    .position(|s| !(s.done && s.rows.is_empty()))
                {
                    Some(i) if k.streams[i].rows.is_empty() => vec![i],
                    _ => Vec::new(),
                }
            } else {
                (0..k.streams.len())
                    .filter(|&i| k.streams[i].rows.is_empty() && !k.streams[i].done)
                    .collect()
            };
            if !need.is_empty() {
                let want = (count - n).min(k.left).saturating_add(k.skip);
                if let Err(fail) = self
                    .fill(k, &f.name, &need, want.clamp(MIN_CHUNK, CHUNK))
                    .await?
                {
                    return Ok(Err(fail));
                }
                let held: usize = k.streams.iter().map(|s| s.bytes).sum();
                if held > budget {
                    return Ok(Err(ProxyError::OutOfMemory(format!(
                        "cursor \"{}\": a chunk of rows from each shard needs more than the gather memory limit ({} MiB, gather.memory_limit_mb)",
                        f.name,
                        budget >> 20
                    ))
                    .into()));
                }
            }
            let Some(b) = head(k, visible) else { break };
            let Some((frame, vals)) = k.streams[b].rows.pop_front() else {
                break;
            };
            k.streams[b].bytes = k.streams[b].bytes.saturating_sub(frame.raw.len());
            if k.skip > 0 {
                k.skip -= 1;
                continue;
            }
            if !f.is_move {
                if k.plan.hidden == 0 {
                    self.out.extend_from_slice(&frame.raw);
                } else {
                    datum::put_row_prefix(&mut self.out, frame.body(), &vals, visible);
                }
            }
            n += 1;
            k.left -= 1;
            self.maybe_flush().await.map_err(RelayError::Client)?;
        }
        if !f.is_move {
            self.shared.telemetry.gathered_rows.increment(n as u64);
        }
        Ok(Ok(n))
    }

    /// Fetches the next `chunk` rows of the streams `need` (in parallel).
    async fn fill(
        &mut self,
        k: &mut Kept,
        name: &str,
        need: &[usize],
        chunk: i64,
    ) -> Result<Result<(), Fail>, RelayError> {
        // (On the shards the cursor has its DECLARE's name, which a portal's differs from.)
        let sql = format!(
            "FETCH FORWARD {chunk} FROM {}",
            crate::quote::ident(&k.decl.name)
        );
        let mut formats = k.formats.clone();
        formats.extend(std::iter::repeat_n(1, k.plan.hidden));
        let mut msg = BytesMut::with_capacity(sql.len() + 64);
        build::parse(&mut msg, "", &sql, &[]);
        build::bind(&mut msg, "", "", NO_PARAMS, &formats);
        build::execute(&mut msg, "", 0);
        build::empty(&mut msg, b'S');
        for &i in need {
            let (shard, pid) = (k.streams[i].shard, k.streams[i].pid);
            let Some(conn) = self.cursor_conn(pid) else {
                return Ok(Err(super::cursors::missing(name).into()));
            };
            conn.write_all(&msg).await.map_err(|e| lost(shard, e))?;
        }
        let timeout = self.topo.map.gather.timeout;
        let mut failure: Option<Frame> = None;
        for &i in need {
            let (shard, pid) = (k.streams[i].shard, k.streams[i].pid);
            let Some(conn) = self.cursor_conn(pid) else {
                return Ok(Err(super::cursors::missing(name).into()));
            };
            let s = &mut k.streams[i];
            let mut got = 0i64;
            loop {
                let f = match tokio::time::timeout(timeout, conn.read_frame()).await {
                    Ok(r) => r.map_err(|e| lost(shard, e))?,
                    Err(_) => return Err(lost(shard, BackendError::Timeout(timeout))),
                };
                match f.tag {
                    b'D' => {
                        let mut vals = Vec::new();
                        if let Err(e) = datum::row_values(f.body(), &mut vals) {
                            return Ok(Err(protocol(e)));
                        }
                        s.bytes += f.raw.len();
                        s.rows.push_back((f, vals));
                        got += 1;
                    }
                    // (A shard that sent fewer rows than asked has no more.)
                    b'C' if got < chunk => s.done = true,
                    b'E' => {
                        s.done = true;
                        failure.get_or_insert(f);
                    }
                    b'Z' => break,
                    _ => {}
                }
            }
        }
        Ok(match failure {
            Some(f) => Err(Fail::Shard(f)),
            None => Ok(()),
        })
    }
}

/// The stream whose head row comes next: the first with rows for a concatenation, else the
/// smallest head on the sort keys (ties: the lower shard, so the order is stable).
fn head(k: &Kept, visible: usize) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in k.streams.iter().enumerate() {
        let Some((fa, va)) = s.rows.front() else {
            continue;
        };
        if k.plan.sort.is_empty() {
            return Some(i);
        }
        best = match best.and_then(|b| k.streams[b].rows.front().map(|h| (b, h))) {
            None => Some(i),
            Some((b, (fb, vb))) => {
                let ord = datum::compare_rows(
                    &k.plan.sort,
                    visible,
                    &k.key_types,
                    fa.body(),
                    va,
                    fb.body(),
                    vb,
                );
                Some(if ord == Ordering::Less { i } else { b })
            }
        };
    }
    best
}

/// The command tag of a FETCH or MOVE of `n` rows.
fn tag(f: &Fetch, n: i64) -> String {
    if f.is_move {
        format!("MOVE {n}")
    } else {
        format!("FETCH {n}")
    }
}
