//! EXPLAIN through the proxy (simple protocol, text format): the route first, then each
//! shard's own plan under its name, so an operator sees where a statement runs and how.

use bytes::BytesMut;

use super::relay::{Outcome, RelayError};
use super::{Session, Target, TxnStatus};
use crate::error::ProxyError;
use crate::wire::protocol::{build, Frame};

impl Session {
    /// Runs a text-format EXPLAIN on the target's shards and writes the labelled plans.
    pub(super) async fn exec_explain(
        &mut self,
        merge: &str,
        sql: &str,
        target: Target,
        hide_ready: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let shards: Vec<usize> = match target {
            Target::Shard(s) => vec![s],
            Target::Set(set) => set.iter().collect(),
        };
        let idxs = match self.conns_for(shards.iter().copied()).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let mut msg = BytesMut::with_capacity(sql.len() + 6);
        build::query(&mut msg, sql);
        self.send_to_all(&idxs, &msg).await?;
        let mut desc: Option<Frame> = None;
        let mut plans: Vec<Vec<String>> = Vec::with_capacity(idxs.len());
        let mut failure: Option<Frame> = None;
        let mut status = TxnStatus::Idle;
        for &i in &idxs {
            let shard = self.conns[i].shard;
            let mut lines = Vec::new();
            loop {
                let f = match self.conns[i].read_frame().await {
                    Ok(f) => f,
                    Err(error) => {
                        return Err(RelayError::Backend {
                            shard,
                            error,
                            forwarded: false,
                        })
                    }
                };
                match f.tag {
                    b'T' if desc.is_none() => desc = Some(f),
                    b'D' => {
                        if let Some(v) = crate::gather::datum::first_value(f.body()) {
                            lines.push(String::from_utf8_lossy(v).into_owned());
                        }
                    }
                    b'E' => {
                        failure.get_or_insert(f);
                    }
                    b'Z' => {
                        status = status.combine(TxnStatus::of_ready(f.body()));
                        break;
                    }
                    _ => {}
                }
            }
            plans.push(lines);
        }
        let error = failure.is_some();
        if let Some(e) = failure {
            self.out.extend_from_slice(&e.raw);
        } else {
            if let Some(t) = &desc {
                self.out.extend_from_slice(&t.raw);
            }
            let names: Vec<String> = shards.iter().map(|&s| self.shard_name(s)).collect();
            let header = if shards.len() == 1 {
                format!("Shardwire: runs on shard {}", names[0])
            } else {
                format!(
                    "Shardwire: runs on {} shards ({}); merge: {merge}",
                    shards.len(),
                    names.join(", ")
                )
            };
            build::data_row(&mut self.out, &[Some(&header)]);
            for (name, lines) in names.iter().zip(&plans) {
                if shards.len() > 1 {
                    build::data_row(&mut self.out, &[Some(&format!("Shard {name}:"))]);
                }
                for l in lines {
                    let line = if shards.len() > 1 {
                        format!("  {l}")
                    } else {
                        l.clone()
                    };
                    build::data_row(&mut self.out, &[Some(&line)]);
                }
            }
            build::command_complete(&mut self.out, "EXPLAIN");
        }
        if !hide_ready {
            build::ready_for_query(&mut self.out, status.byte());
        }
        Ok(Ok(Outcome {
            status: Some(status),
            error,
            ..Default::default()
        }))
    }
}
