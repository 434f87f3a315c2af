//! The backend connections a session holds: checked out and brought to the client's
//! settings and transaction (`conn_for`), given back when idle, and the move to a newer
//! topology between transactions (closing those whose shard changed place), behind the gates.

use std::sync::Arc;

use super::relay::RelayError;
use super::{
    gate, settings, Session, Target, Topology, Txn, TxnStatus, MAX_PREPARED_PER_CONN, STALE_EPOCH,
};
use crate::error::ProxyError;

impl Session {
    /// Before a statement runs: between transactions, moves to the proxy's current topology;
    /// while a rebalance runs, takes a gate pass (waiting while a unit switches).
    pub(super) async fn enter(&mut self) -> Result<(), ProxyError> {
        self.refresh_topology();
        if self.pass.is_none() && self.shared.gate.armed() {
            let gate = self.shared.gate.clone();
            match gate.enter(gate::MAX_HOLD_WAIT).await {
                Ok(p) => self.pass = Some(p),
                Err(e) => return Err(ProxyError::Unavailable(e.to_string())),
            }
            self.refresh_topology();
            self.refresh_topology_in_transaction();
        }
        Ok(())
    }

    /// Inside a transaction, moves to a newer topology only when every held connection keeps
    /// its shard index (a rebalance's merged shard list does): the transaction's next
    /// statements then route like every other session's.
    fn refresh_topology_in_transaction(&mut self) {
        if self.txn.status.is_idle() || !self.topology_changed() {
            return;
        }
        let topo = self.shared.topo();
        let pools = topo.pools_of(&self.user);
        let keeps =
            self.conns
                .iter()
                .all(|c| match (pools.get(c.shard), self.pools.get(c.shard)) {
                    (Some(a), Some(b)) => a.info.same_server(&b.info),
                    _ => false,
                });
        if keeps {
            self.replan(&topo);
            self.topo = topo;
            self.pools = pools;
        }
    }

    /// Whether the proxy swapped in a topology newer than the session's.
    #[inline]
    fn topology_changed(&self) -> bool {
        self.shared
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
            != self.topo.generation
    }

    /// Plans the session's prepared statements again with `topo`'s map.
    fn replan(&mut self, topo: &Topology) {
        let stmts = std::mem::take(&mut self.stmts);
        for (name, p) in stmts {
            match topo.cache.get(&topo.map, &p.sql) {
                Ok(plan) => {
                    let fresh = p.replanned(plan);
                    self.stmts.insert(name, Arc::new(fresh));
                }
                Err(e) => {
                    tracing::info!(statement = %name, error = %e, "prepared statement dropped: it does not plan with the new shard map")
                }
            }
        }
    }

    /// Moves to a newer topology when no transaction is open. Prepared statements are planned
    /// again with the new map; held connections whose shard changed place are closed.
    pub(super) fn refresh_topology(&mut self) {
        if self.txn.status.is_open() || !self.topology_changed() {
            return;
        }
        let topo = self.shared.topo();
        let pools = topo.pools_of(&self.user);
        let old = self.pools.clone();
        self.conns
            .retain(|c| match (pools.get(c.shard), old.get(c.shard)) {
                (Some(a), Some(b)) => a.info.same_server(&b.info),
                _ => false,
            });
        self.replan(&topo);
        self.portals.clear();
        self.gather_portals.clear();
        self.topo = topo;
        self.pools = pools;
    }

    /// Waits while a directory key move runs in this proxy (see [`crate::sharding::directory::admin`]).
    /// Sessions inside a transaction are not held: the move's table lock orders them.
    pub(super) async fn directory_gate(&self) {
        if self.txn.status.is_open() {
            return;
        }
        if let Some(d) = &self.topo.map.directory {
            if d.moving() {
                d.wait_moves().await;
            }
        }
    }

    /// The index in `self.conns` of a connection to `shard`, checking one out (and bringing it to
    /// the client's settings and transaction) when the session does not hold one yet.
    pub(super) async fn conn_for(&mut self, shard: usize) -> Result<usize, ProxyError> {
        if let Some(i) = self.conns.iter().position(|c| c.shard == shard) {
            return Ok(i);
        }
        let pool = self.pools.get(shard).cloned().ok_or_else(|| {
            ProxyError::AuthFailed(format!(
                "user \"{}\" is no longer served by this proxy (no pool for shard #{shard})",
                self.user
            ))
        })?;
        // A backend the session's WITH HOLD cursors pinned serves it first (its transactions
        // run there as they would in its own Postgres session; it is pinned again after).
        let pinned = match self.cursors.is_some() {
            true => self.take_pinned(shard),
            false => None,
        };
        let mut conn = match pinned {
            Some(c) => c,
            None => self.conns.checkout(&pool).await?,
        };
        let lost =
            |e: crate::backend::conn::BackendError, name: String| ProxyError::ShardUnavailable {
                shard: name,
                reason: e.to_string(),
            };
        let epoch = self
            .shared
            .schema_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        // Statements prepared before a schema change (or found stale) are dropped and
        // prepared again on next use.
        let stale = conn.prepared_epoch != epoch && !conn.prepared.is_empty();
        conn.prepared_epoch = epoch;
        if stale || conn.prepared.len() > MAX_PREPARED_PER_CONN {
            conn.run_simple("DEALLOCATE ALL")
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            conn.prepared.clear();
        }
        // The session's encoding: a block's own switch comes with its steps, below.
        let codec = self.session_codec();
        if conn.codec != codec {
            // The replay below is read in the encoding the connection has now: switch it
            // first, so the text of the client's settings arrives in the one it is sent in.
            let name = codec.map_or("UTF8", |c| c.name());
            let (err, _) = conn
                .run_simple(&format!("SET client_encoding TO '{name}'"))
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            if err.is_some() {
                conn.broken = true;
                return Err(ProxyError::Unsupported(format!(
                    "shard {} does not accept client_encoding {name}",
                    pool.info.name
                )));
            }
            conn.codec = codec;
            conn.settings_fp = settings::UNKNOWN_FP;
        }
        if conn.settings_fp != self.settings.fingerprint() {
            let sql = self.settings.replay_sql();
            let (err, _) = conn
                .run_simple(&sql)
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            if let Some((code, msg)) = err {
                conn.settings_fp = settings::UNKNOWN_FP;
                conn.release();
                return Err(ProxyError::Unsupported(format!(
                    "could not apply this session's settings on shard {}: {msg} (SQLSTATE {code})",
                    pool.info.name
                )));
            }
            conn.settings_fp = self.settings.fingerprint();
        }
        if self.txn.status.is_open() {
            // The transaction's BEGIN, then its settings and savepoints so far.
            let begin = self.txn.join_sql();
            let (err, _) = conn
                .run_simple(&begin)
                .await
                .map_err(|e| lost(e, pool.info.name.clone()))?;
            if let Some((code, msg)) = err {
                conn.release();
                return Err(ProxyError::Unsupported(format!(
                    "could not start the transaction on shard {}: {msg} (SQLSTATE {code})",
                    pool.info.name
                )));
            }
            // Its steps may have switched the client encoding (Postgres reads a simple
            // Query whole in the encoding it had when it came, so the steps went in the
            // session's).
            conn.codec = self.codec;
        }
        self.conns.push(conn)
    }

    /// Connections to each of `shards` (indexes into `self.conns`), checked out as needed.
    pub(super) async fn conns_for(
        &mut self,
        shards: impl Iterator<Item = usize>,
    ) -> Result<Vec<usize>, ProxyError> {
        let mut idxs = Vec::with_capacity(shards.size_hint().0);
        for s in shards {
            idxs.push(self.conn_for(s).await?);
        }
        Ok(idxs)
    }

    /// A schema change passed through this session: every pooled connection's prepared
    /// statements are cleared at its next checkout; the ones held now (inside a transaction
    /// block, in session mode) before this session's next pipeline ([`Session::settle_held`]):
    /// else a client's new Parse after `ALTER`/`DROP` in a block — psycopg parses again after
    /// them — would meet the statement prepared before, by the same content-addressed name.
    pub(super) fn schema_changed(&mut self) {
        self.shared
            .schema_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        for c in self.conns.iter_mut() {
            c.prepared_epoch = STALE_EPOCH;
        }
    }

    /// Before a pipeline runs: with `steps` (it holds savepoint commands or settings) inside
    /// a transaction block, ends the exchange a Flush left open on `open`'s shard; inside a
    /// block, also when that connection's statements are stale. Then drops the statements
    /// a schema change made stale on every other held connection (see
    /// [`Session::schema_changed`]).
    pub(super) async fn settle_held(
        &mut self,
        open: &mut Option<Target>,
        steps: bool,
    ) -> Result<(), RelayError> {
        if let Some(Target::Shard(s)) = *open {
            let stale = self
                .conns
                .iter()
                .any(|c| c.shard == s && c.prepared_epoch == STALE_EPOCH);
            if self.txn.status == TxnStatus::InBlock && (steps || stale) {
                self.end_open_exchange(s).await?;
                *open = None;
            }
        }
        let busy = match *open {
            Some(Target::Shard(s)) => Some(s),
            _ => None,
        };
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            // An aborted block refuses DEALLOCATE: after its ROLLBACK [TO], then.
            if c.prepared_epoch != STALE_EPOCH || Some(c.shard) == busy || c.ready_status == b'E' {
                continue;
            }
            if let Some(e) = self.fresh_statements(idx).await {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Gives the held connections back when no transaction or exchange needs them.
    pub(super) fn release_if_idle(&mut self, exchange_open: bool) {
        if self.txn.status.is_idle() && !exchange_open {
            self.pass = None;
            if self.cursors.is_some() {
                self.cursors_at_idle();
            }
        }
        if self.txn.status.is_idle() && !exchange_open && !self.session_mode {
            // Forget them for cancels first: a backend a cancel reached is closed, not
            // pooled (the signal may land after the statement it was meant for); so is one
            // a statement left untracked session state on (a temp table, a session
            // advisory lock, set_config, a WITH HOLD cursor, a DO block).
            // Taken whether or not a cancel closes them anyway: the flag belongs to these
            // connections, not to the next ones.
            let dirty = std::mem::take(&mut self.dirty);
            // (A block's client encoding ended with it: the connections say so first.)
            self.txn = Txn::idle();
            self.sync_codec();
            self.conns.release_all(|| !dirty);
            self.portals.clear();
            self.gather_portals.clear();
        }
    }
}
