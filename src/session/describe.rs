//! Statements checked and described on a shard apart from the pipeline that uses them: a
//! Parse checked before it is answered, a Describe outside a transaction that holds nothing
//! yet, and the result-shape check of a statement the client described before.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::extended::Op;
use super::relay::{Expect, Outcome, RelayError};
use super::{Prepared, Session, SessionEnd, TxnStatus};
use crate::error::ProxyError;
use crate::wire::protocol::build;

/// What [`Session::shape_check`] found.
pub(super) enum ShapeCheck {
    /// Every statement the connection had to prepare describes as the client holds it.
    Same,
    /// The statement bound by the op at this index now has another result shape.
    Changed(usize),
    /// Preparing a statement failed on the shard (its error); the shard skips to Sync.
    Failed(ProxyError),
}

impl Session {
    /// Checks, before an exchange on connection `idx`, the statements its Binds use that the
    /// connection lacks and whose shape the client holds (see [`super::shape`]): each is
    /// prepared and described there (Parse, Describe, Flush — no Sync, so an implicit
    /// transaction the pipeline has open stays open) and its description compared.
    pub(super) async fn shape_check(
        &mut self,
        idx: usize,
        ops: &[Op],
    ) -> Result<ShapeCheck, RelayError> {
        let shard = self.conns[idx].shard;
        for (at, op) in ops.iter().enumerate() {
            let Op::Bind(p, ..) = op else { continue };
            if p.shape.changed() {
                return Ok(ShapeCheck::Changed(at));
            }
            let Some(held) = p.shape.known() else {
                continue;
            };
            if self.conns[idx].prepared.contains(&p.name_hash) {
                continue;
            }
            let conn = &mut self.conns[idx];
            let mut msg = BytesMut::new();
            build::parse(&mut msg, &p.backend_name, &p.sql, &p.types);
            build::target(&mut msg, b'D', b'S', &p.backend_name);
            build::empty(&mut msg, b'H');
            let backend = |error| RelayError::Backend {
                shard,
                error,
                forwarded: false,
            };
            conn.write_all(&msg).await.map_err(backend)?;
            loop {
                let f = conn.read_frame().await.map_err(backend)?;
                match f.tag {
                    b'E' => {
                        let (code, message) = crate::wire::protocol::error_fields(f.body());
                        self.shared.telemetry.error(&code);
                        return Ok(ShapeCheck::Failed(ProxyError::Backend { code, message }));
                    }
                    b'T' | b'n' => {
                        conn.prepared.insert(p.name_hash);
                        if super::shape::fingerprint(f.tag, f.body()) != Some(held) {
                            p.shape.mark_changed();
                            tracing::debug!(shard = %self.shard_name(shard), statement = %p.backend_name, "a prepared statement's result changed since the client described it");
                            return Ok(ShapeCheck::Changed(at));
                        }
                        break;
                    }
                    // ParseComplete, ParameterDescription, notices.
                    _ => {}
                }
            }
        }
        Ok(ShapeCheck::Same)
    }

    /// Answers a batch of Parse/Describe-statement messages inside a transaction that holds
    /// no connection: each statement is described on a connection outside the transaction.
    /// An error fails the client's transaction, as the same error would in Postgres.
    pub(super) async fn describe_only(
        &mut self,
        ops: Vec<Op>,
        cut: Option<&ProxyError>,
        sync: bool,
    ) -> Result<(), SessionEnd> {
        let mut failed = false;
        for op in ops {
            match op {
                Op::Parse(_) => build::empty(&mut self.out, b'1'),
                Op::Local(b) => self.out.extend_from_slice(&b),
                Op::DescribeStmt(p) => match self.describe_on_one(&p).await {
                    Ok(Ok(o)) if !o.error => {}
                    Ok(Ok(_)) => {
                        failed = true;
                        break;
                    }
                    Ok(Err(e)) => {
                        self.push_error(&e);
                        failed = true;
                        break;
                    }
                    Err(RelayError::Client(e)) => return Err(e),
                    Err(RelayError::Backend { shard, error, .. }) => {
                        self.push_error(&ProxyError::ShardUnavailable {
                            shard: self.shard_name(shard),
                            reason: error.to_string(),
                        });
                        failed = true;
                        break;
                    }
                },
                _ => {}
            }
        }
        if failed {
            self.txn.fail();
        } else if let Some(e) = cut {
            self.push_error(e);
        }
        if sync {
            self.push_ready();
        }
        Ok(())
    }

    /// Checks that `p` parses and plans on a shard (see [`Session::describe_on_one`]);
    /// returns whether it failed (the error is queued for the client).
    pub(super) async fn parse_fails(&mut self, p: &Arc<Prepared>) -> Result<bool, SessionEnd> {
        match self.parse_on_one(p, false).await {
            Ok(Ok(o)) => Ok(o.error), // a shard's error was forwarded
            Ok(Err(e)) => {
                self.push_error(&e);
                Ok(true)
            }
            Err(RelayError::Client(e)) => Err(e),
            Err(RelayError::Backend { shard, error, .. }) => {
                let e = self.backend_failed(shard, &error);
                self.lose_transaction();
                self.push_error(&e);
                Ok(true)
            }
        }
    }

    /// Describe of a statement on one shard (ParameterDescription + RowDescription/NoData);
    /// a shard error is forwarded.
    pub(super) async fn describe_on_one(
        &mut self,
        p: &Arc<Prepared>,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        self.parse_on_one(p, true).await
    }

    /// Parses `p` as the unnamed statement on one shard (with `describe`, also describes it
    /// to the client), outside the transaction when it holds no connection yet.
    async fn parse_on_one(
        &mut self,
        p: &Arc<Prepared>,
        describe: bool,
    ) -> Result<Result<Outcome, ProxyError>, RelayError> {
        let shard = self.any_shard();
        // Inside a transaction that holds no connection yet, describe on a connection outside
        // it (nothing the transaction created can be involved: it has not run anything).
        let outside = self.txn.status.is_open() && self.conns.is_empty() && !self.session_mode;
        let status = self.txn.status;
        if outside {
            self.txn.status = TxnStatus::Idle; // no BEGIN on the connection
        }
        let idx = self.conn_for(shard).await;
        self.txn.status = status;
        let idx = match idx {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let mut msg = BytesMut::new();
        build::parse(&mut msg, "", &p.sql, &p.types);
        if describe {
            build::target(&mut msg, b'D', b'S', "");
        }
        build::empty(&mut msg, b'S');
        if let Err(error) = self.conns[idx].write_all(&msg).await {
            return Err(RelayError::Backend {
                shard,
                error,
                forwarded: false,
            });
        }
        let mut ex = VecDeque::new();
        ex.push_back(Expect::Parse { swallow: true });
        if describe {
            ex.push_back(Expect::DescribeStmt(p.clone()));
        }
        ex.push_back(Expect::Query { hide_ready: true });
        let r = self.relay_one(idx, &mut ex, false).await.map(Ok);
        // (`conn_for` took it into an empty list, so it is the last one, unless a failure
        // dropped them all.)
        if outside && idx + 1 == self.conns.len() {
            // It never joined the transaction: back to the pool.
            if let Some((c, cancelled)) = self.conns.pop() {
                if !cancelled {
                    c.release();
                }
            }
        }
        r
    }
}
