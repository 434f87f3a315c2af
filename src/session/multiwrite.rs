//! All-or-nothing writes on several shards, outside a client transaction: reference-table
//! writes (the same statement on every shard) and multi-row INSERTs split by shard.
//!
//! Every shard runs `BEGIN`, then its statement; only when every shard succeeded does each
//! get `COMMIT`, otherwise each gets `ROLLBACK` and the client gets the first error. So a
//! unique violation or a failed shard leaves no copy half-applied. The remaining window is
//! the COMMIT round itself (a shard that dies between two COMMITs): closing it needs
//! two-phase commit, which Postgres disables by default (`max_prepared_transactions = 0`).
//!
//! Rows a statement returns (RETURNING) are held until the commit, within the gather
//! memory limit, then sent: once for replicated writes (every copy returns the same rows),
//! concatenated for split INSERTs, whose command tag sums the shards' row counts.

use bytes::BytesMut;

use super::relay::{Outcome, RelayError};
use super::Session;
use crate::error::ProxyError;
use crate::protocol::{build, command_tag, error_fields};

/// One shard's part of a multi-shard write.
pub struct ShardWrite {
    /// Shard index.
    pub shard: usize,
    /// The statement it runs.
    pub sql: String,
}

impl Session {
    /// Runs `work` as one all-or-nothing write (see the module docs). `replicated`: the
    /// shards hold identical copies, so the client sees one shard's rows and tag.
    pub(super) async fn multi_write(
        &mut self,
        work: &[ShardWrite],
        replicated: bool,
        hide_ready: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let idxs = match self.conns_for(work.iter().map(|w| w.shard)).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let limit = self.shared.map.gather.memory_limit;
        let mut first_error: Option<ProxyError> = None;
        let mut desc: Option<bytes::Bytes> = None;
        let mut rows = BytesMut::new();
        let mut tag_word = String::new();
        let mut count: u64 = 0;
        let mut began = Vec::with_capacity(idxs.len());
        for (w, &ci) in work.iter().zip(&idxs) {
            if first_error.is_some() {
                break;
            }
            let conn = &mut self.conns[ci];
            let mut msg = BytesMut::with_capacity(w.sql.len() + 16);
            build::query(&mut msg, "BEGIN");
            build::query(&mut msg, &w.sql);
            let fail = |error| RelayError::Backend {
                shard: w.shard,
                error,
                forwarded: false,
            };
            conn.write_all(&msg).await.map_err(fail)?;
            began.push(ci);
            // Two ReadyForQuery: one for BEGIN, one for the statement.
            let mut ready = 0;
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
                        if rows.len() + f.raw.len() > limit {
                            first_error = Some(ProxyError::Limit(format!(
                                "the rows returned by a multi-shard write exceed gather.memory_limit_mb ({} MiB)",
                                limit >> 20
                            )));
                            shard_rows = false;
                            continue;
                        }
                        rows.extend_from_slice(&f.raw);
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
        let end = if first_error.is_some() {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        for &ci in &began {
            let shard = self.conns[ci].shard;
            match self.conns[ci].run_simple(end).await {
                Ok((None, _)) => {}
                Ok((Some((code, message)), _)) => {
                    if first_error.is_none() {
                        first_error = Some(ProxyError::Backend { code, message });
                    }
                }
                Err(error) => {
                    return Err(RelayError::Backend {
                        shard,
                        error,
                        forwarded: false,
                    })
                }
            }
        }
        if let Some(e) = first_error {
            self.push_error(&e);
            if !hide_ready {
                self.push_ready();
            }
            return Ok(Ok(Outcome {
                status: b'I',
                error: true,
            }));
        }
        if let Some(d) = desc {
            self.out.extend_from_slice(&d);
            self.out.extend_from_slice(&rows);
        }
        // Shards answer e.g. "INSERT 0 5" or "UPDATE 3": keep the words, put the total.
        build::command_complete(&mut self.out, &format!("{tag_word} {count}"));
        if !hide_ready {
            self.push_ready();
        }
        Ok(Ok(Outcome {
            status: b'I',
            error: false,
        }))
    }
}
