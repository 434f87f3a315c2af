//! All-or-nothing writes on several shards, outside a client transaction: reference-table
//! writes (the same statement on every shard) and multi-row INSERTs split by shard.
//!
//! Every shard runs `BEGIN`, then its statement; only when every shard succeeded are they
//! committed together ([`Session::commit_all`]: two-phase commit where the shards allow it),
//! otherwise each gets `ROLLBACK` and the client gets the first error. So a unique
//! violation or a failed shard leaves no copy half-applied.
//!
//! Rows a statement returns (RETURNING) are held until the commit, within the gather
//! memory limit, then sent: once for replicated writes (every copy returns the same rows),
//! concatenated for split INSERTs, whose command tag sums the shards' row counts.

use bytes::BytesMut;

use super::relay::{Outcome, RelayError};
use super::Session;
use crate::error::ProxyError;
use crate::wire::protocol::{build, command_tag, error_fields};

/// One shard's part of a multi-shard write.
pub struct ShardWrite {
    /// Shard index.
    pub shard: usize,
    /// The statement it runs.
    pub sql: String,
    /// Extended protocol: this shard's own parameter types and Bind body after the
    /// statement name, when they differ from the client's (a split INSERT's subset).
    pub bind: Option<(Vec<u32>, Vec<u8>)>,
    /// A split INSERT's part: the client's rows it inserts (0-based, in order). Its
    /// RETURNING rows are put back in the client's row order (ORMs pair them with their
    /// objects by position: Django's bulk_create, SQLAlchemy's insertmanyvalues).
    pub rows: Vec<usize>,
}

/// How the statements are sent to the shards.
#[derive(Clone, Copy)]
pub enum WriteProtocol<'a> {
    /// A simple Query (rows come back in text).
    Simple,
    /// The client's extended-protocol Bind: the unnamed statement is parsed with
    /// `types`, bound with `bind_tail` (the client's parameters and result formats, so rows
    /// come back in the formats it asked for) and, with `describe`, the portal described.
    Extended {
        /// Parameter types of the client's Parse.
        types: &'a [u32],
        /// The client's Bind body after the statement name.
        bind_tail: &'a [u8],
        /// Whether the client described the portal.
        describe: bool,
    },
}

impl Session {
    /// Runs `work` as one all-or-nothing write (see the module docs). `replicated`: the
    /// shards hold identical copies, so the client sees one shard's rows and tag.
    pub(super) async fn multi_write(
        &mut self,
        work: &[ShardWrite],
        protocol: WriteProtocol<'_>,
        replicated: bool,
        hide_ready: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let idxs = match self.conns_for(work.iter().map(|w| w.shard)).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        // Inside a client transaction the shards already hold it open (it commits at COMMIT);
        // outside, this write is its own transaction on each shard.
        let in_txn = self.txn.status.is_open();
        let limit = self.topo.map.gather.memory_limit;
        let mut first_error: Option<ProxyError> = None;
        let mut desc: Option<bytes::Bytes> = None;
        let mut rows = BytesMut::new();
        // Per part, its RETURNING rows, when they are to be put back in the client's order.
        let reorder = !replicated && work.len() > 1 && work.iter().all(|w| !w.rows.is_empty());
        let mut held: Vec<Vec<bytes::Bytes>> =
            vec![Vec::new(); if reorder { work.len() } else { 0 }];
        let mut held_bytes = 0usize;
        let mut tag_word = String::new();
        let mut count: u64 = 0;
        let mut began = Vec::with_capacity(idxs.len());
        for (wi, (w, &ci)) in work.iter().zip(&idxs).enumerate() {
            if first_error.is_some() {
                break;
            }
            let conn = &mut self.conns[ci];
            let mut msg = BytesMut::with_capacity(w.sql.len() + 16);
            if !in_txn {
                build::query(&mut msg, "BEGIN");
            }
            match protocol {
                WriteProtocol::Simple => build::query(&mut msg, &w.sql),
                WriteProtocol::Extended {
                    types,
                    bind_tail,
                    describe,
                } => {
                    let (types, bind_tail) = match &w.bind {
                        Some((t, b)) => (t.as_slice(), b.as_slice()),
                        None => (types, bind_tail),
                    };
                    build::parse(&mut msg, "", &w.sql, types);
                    build::bind_renamed(&mut msg, "", "", bind_tail);
                    if describe {
                        build::target(&mut msg, b'D', b'P', "");
                    }
                    build::execute(&mut msg, "", 0);
                    build::empty(&mut msg, b'S');
                }
            }
            // Never retried: other shards may already have run their part.
            let fail = |error| RelayError::Backend {
                shard: w.shard,
                error,
                forwarded: true,
            };
            conn.write_all(&msg).await.map_err(fail)?;
            began.push(ci);
            // Two ReadyForQuery: one for BEGIN (when sent), one for the statement.
            let mut ready = if in_txn { 1 } else { 0 };
            let mut shard_rows = first_error.is_none();
            while ready < 2 {
                let f = conn.read_frame().await.map_err(fail)?;
                match f.tag {
                    b'Z' => ready += 1,
                    b'E' => {
                        if first_error.is_none() {
                            let (code, message) = error_fields(f.body());
                            first_error = Some(ProxyError::Backend { code, message });
                        }
                        shard_rows = false;
                    }
                    b'T' if ready == 1 && desc.is_none() => desc = Some(f.raw.clone()),
                    b'D' if ready == 1 && shard_rows => {
                        if replicated && !tag_word.is_empty() {
                            continue; // another copy's rows are already held
                        }
                        if rows.len() + held_bytes + f.raw.len() > limit {
                            first_error = Some(ProxyError::OutOfMemory(format!(
                                "the rows returned by a multi-shard write exceed gather.memory_limit_mb ({} MiB)",
                                limit >> 20
                            )));
                            shard_rows = false;
                            continue;
                        }
                        match held.get_mut(wi) {
                            Some(h) => {
                                held_bytes += f.raw.len();
                                h.push(f.raw.clone());
                            }
                            None => rows.extend_from_slice(&f.raw),
                        }
                    }
                    b'C' if ready == 1 => {
                        let tag = command_tag(f.body()).to_string();
                        let n: u64 = tag
                            .rsplit(' ')
                            .next()
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(0);
                        if tag_word.is_empty() {
                            tag_word = tag
                                .rsplit_once(' ')
                                .map(|(w, _)| w.to_string())
                                .unwrap_or(tag.clone());
                            count = n;
                        } else if !replicated {
                            count += n;
                        }
                    }
                    _ => {}
                }
            }
        }
        if in_txn {
            // COMMIT or ROLLBACK of the client's transaction ends it.
        } else if first_error.is_some() {
            self.rollback_all(&began).await;
        } else if let Err(e) = self.commit_all(&began).await? {
            first_error = Some(e);
        }
        if let Some(e) = first_error {
            self.push_error(&e);
            if !hide_ready {
                self.push_ready();
            }
            return Ok(Ok(Outcome {
                status: Some(self.txn.status),
                error: true,
                ..Default::default()
            }));
        }
        let describe = matches!(protocol, WriteProtocol::Extended { describe: true, .. });
        match desc {
            // The simple protocol describes rows itself; the extended one when asked.
            Some(d) if describe || matches!(protocol, WriteProtocol::Simple) => {
                self.out.extend_from_slice(&d)
            }
            None if describe => build::empty(&mut self.out, b'n'),
            _ => {}
        }
        if reorder {
            put_in_client_order(work, held, &mut rows);
        }
        self.out.extend_from_slice(&rows);
        // Shards answer e.g. "INSERT 0 5" or "UPDATE 3": keep the words, put the total.
        build::command_complete(&mut self.out, &format!("{tag_word} {count}"));
        if !hide_ready {
            self.push_ready();
        }
        Ok(Ok(Outcome {
            status: Some(self.txn.status),
            error: false,
            ..Default::default()
        }))
    }
}

/// Appends the parts' RETURNING rows to `out` in the client's row order: row `k` of the
/// statement is the next row of the part that inserted it. When a part returned another
/// number of rows than it inserted (`ON CONFLICT DO NOTHING`, a set-returning RETURNING),
/// no pairing holds: the parts' rows follow each other.
fn put_in_client_order(work: &[ShardWrite], held: Vec<Vec<bytes::Bytes>>, out: &mut BytesMut) {
    let exact = work.iter().zip(&held).all(|(w, h)| w.rows.len() == h.len());
    if !exact {
        for h in held {
            for r in h {
                out.extend_from_slice(&r);
            }
        }
        return;
    }
    let total: usize = work.iter().map(|w| w.rows.len()).sum();
    let mut by_row: Vec<Option<bytes::Bytes>> = vec![None; total];
    for (w, h) in work.iter().zip(held) {
        for (&k, r) in w.rows.iter().zip(h) {
            if let Some(slot) = by_row.get_mut(k) {
                *slot = Some(r);
            }
        }
    }
    for r in by_row.into_iter().flatten() {
        out.extend_from_slice(&r);
    }
}
