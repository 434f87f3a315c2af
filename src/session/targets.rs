//! Where a statement runs: [`Target`] (one shard or several), routes resolved to targets
//! (counted in the route statistics), shard names for messages, and the rule that refuses a
//! transaction writing on several shards when two-phase commit is off.

use super::Session;
use crate::error::ProxyError;
use crate::routing::router::{resolve_keys, RouteSpec};
use crate::sharding::shardset::ShardSet;

/// A resolved destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One shard.
    Shard(usize),
    /// Several shards (every shard, or the ones a key list names).
    Set(ShardSet),
}

impl Target {
    /// Whether it runs on several shards.
    pub fn is_multi(self) -> bool {
        matches!(self, Target::Set(_))
    }
}

/// The shards of a target.
fn shards_of(t: Target) -> ShardSet {
    match t {
        Target::Shard(s) => {
            let mut set = ShardSet::default();
            set.add(s);
            set
        }
        Target::Set(set) => set,
    }
}

impl Session {
    pub(super) fn shard_name(&self, i: usize) -> String {
        self.topo
            .map
            .shards
            .get(i)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("#{i}"))
    }

    /// The shard an "any shard" statement uses: one the transaction already holds, else the default.
    pub(super) fn any_shard(&self) -> usize {
        if let Some(Target::Shard(s)) = self.txn.written {
            return s;
        }
        self.conns
            .first()
            .map(|c| c.shard)
            .unwrap_or(self.topo.map.default_shard)
    }

    /// The target for a set of shards (one shard is a plain single-shard target).
    pub(super) fn target_of(&self, set: ShardSet) -> Target {
        match (set.len(), set.iter().next()) {
            (1, Some(s)) => Target::Shard(s),
            _ => Target::Set(set),
        }
    }

    /// Names of a target's shards, for messages.
    pub(super) fn target_name(&self, t: Target) -> String {
        match t {
            Target::Shard(i) => self.shard_name(i),
            Target::Set(set) if set.len() == self.topo.map.shards.len() => "all shards".into(),
            Target::Set(set) => {
                let names: Vec<String> = set.iter().map(|i| self.shard_name(i)).collect();
                format!("shards {}", names.join(", "))
            }
        }
    }

    /// Resolves a route (with Bind parameters where it needs them), counting it in the
    /// proxy's route statistics.
    pub(super) fn resolve(
        &self,
        route: &RouteSpec,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
        lits: crate::routing::literals::QueryLits<'_>,
    ) -> Result<Target, ProxyError> {
        let r = self.resolve_route(route, params, is_binary, lits);
        let n = self.topo.map.shards.len();
        let st = &self.shared.telemetry.routes;
        let counter = match &r {
            Ok(Target::Shard(_)) => &st.single,
            Ok(Target::Set(set)) if set.len() >= n => &st.all,
            Ok(Target::Set(_)) => &st.multi,
            Err(_) => &st.refused,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Off by default (--log-level debug): a disabled event costs one relaxed load.
        tracing::debug!(target_shards = ?r.as_ref().ok(), "statement routed");
        r
    }

    fn resolve_route(
        &self,
        route: &RouteSpec,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
        lits: crate::routing::literals::QueryLits<'_>,
    ) -> Result<Target, ProxyError> {
        match route {
            RouteSpec::Any => Ok(Target::Shard(self.any_shard())),
            RouteSpec::Shard(s) => Ok(Target::Shard(*s)),
            RouteSpec::All => Ok(self.target_of(ShardSet::all(self.topo.map.shards.len()))),
            RouteSpec::Subset(set) => Ok(self.target_of(*set)),
            RouteSpec::Refuse(e) => Err(e.clone()),
            RouteSpec::Keys(kr) => {
                let r = resolve_keys(&self.topo.map, kr, params, is_binary, lits);
                if matches!(r, RouteSpec::Keys(_)) {
                    return Err(ProxyError::Protocol("unresolved key route".into()));
                }
                self.resolve_route(&r, params, is_binary, lits)
            }
        }
    }

    /// Refuses writes that would make one transaction write on several shards.
    pub(super) fn check_write(
        &mut self,
        target: Target,
        writes: bool,
        explicit_txn: bool,
    ) -> Result<(), ProxyError> {
        if !writes || !explicit_txn {
            return Ok(());
        }
        let names = |s: &Session, t: Target| s.target_name(t);
        // With two-phase commit a transaction may write anywhere: COMMIT commits all as one.
        if self.shared.twophase.available() {
            let mut set = self.txn.written.map(shards_of).unwrap_or_default();
            for s in shards_of(target).iter() {
                set.add(s);
            }
            self.txn.written = Some(self.target_of(set));
            return Ok(());
        }
        match (self.txn.written, target) {
            (None, t) if t.is_multi() => Err(ProxyError::Unsupported(
                "a transaction that writes on several shards is refused: two-phase commit is off (set max_prepared_transactions > 0 on every shard); run this statement outside the transaction block".into(),
            )),
            (None, t) => {
                self.txn.written = Some(t);
                Ok(())
            }
            (Some(w), t) if w == t => Ok(()),
            (Some(w), t) => Err(ProxyError::Unsupported(format!(
                "a transaction that writes on several shards is refused: it already wrote on {} and this statement writes on {}; two-phase commit is off (set max_prepared_transactions > 0 on every shard)",
                names(self, w),
                names(self, t)
            ))),
        }
    }
}
