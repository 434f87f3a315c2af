//! State shared by every session of one proxy: the [`Topology`] sessions route with (map,
//! pools, plan cache, users) and how a reload or rebalance swaps it, plus the proxy's
//! counters, registries and shutdown signal.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use parking_lot::Mutex;

use super::gate;
use crate::backend::latency::LatencyHistogram;
use crate::backend::pool::ShardPool;
use crate::routing::router::PlanCache;
use crate::sharding::shardmap::ShardMap;
use crate::wire::auth::ScramSecret;
use crate::wire::cancel::CancelRegistry;

/// What sessions route with: a map, its pools and the plans made with that map. A reload
/// or a rebalance swaps in a new one whole; a session moves to it between transactions.
///
/// Pools are per (user, shard), as PgBouncer pools per user and database: a client only
/// ever shares a backend with clients of its own proxy user, and runs on the shards as that
/// user's `shard_user` role. The control plane (2PC decisions, health) has pools of its own
/// with the shards' URL login.
pub struct Topology {
    /// The routing map.
    pub map: Arc<ShardMap>,
    /// The control plane's pools, one per shard in map order (the shards' URL login).
    pub pools: Vec<Arc<ShardPool>>,
    /// Client pools: for each proxy user, one per shard in map order.
    pub client_pools: HashMap<String, ClientPools>,
    /// Parsed plans by SQL text (plans hold shard indexes of this map).
    pub cache: PlanCache,
    /// Counts swaps; sessions compare it with [`Shared::generation`].
    pub generation: u64,
    /// The map's users with their SCRAM verifiers, swapped with the map in one step: a login
    /// checks its user and its database against the same map.
    pub users: Arc<Users>,
}

/// One user's pools, one per shard in map order.
pub type ClientPools = Arc<[Arc<ShardPool>]>;

impl Topology {
    /// The pools `user`'s clients use (empty when the map no longer lists the user).
    pub fn pools_of(&self, user: &str) -> ClientPools {
        self.client_pools
            .get(user)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Every pool of shard `shard`: the control plane's and each user's.
    pub fn pools_of_shard(&self, shard: usize) -> impl Iterator<Item = &Arc<ShardPool>> {
        self.pools
            .get(shard)
            .into_iter()
            .chain(self.client_pools_of_shard(shard))
    }

    /// The users' pools of shard `shard` (what PAUSE holds: the control plane's pool stays
    /// open, so that transactions in flight can record their commit decision and end).
    pub fn client_pools_of_shard(&self, shard: usize) -> impl Iterator<Item = &Arc<ShardPool>> {
        self.client_pools.values().filter_map(move |p| p.get(shard))
    }

    /// The state of shard `shard`'s pools, summed.
    pub fn shard_stats(&self, shard: usize) -> crate::backend::pool::PoolStats {
        let mut t = crate::backend::pool::PoolStats::default();
        for p in self.pools_of_shard(shard) {
            let s = p.stats();
            t.size += s.size;
            t.in_use += s.in_use;
            t.idle += s.idle;
            t.waiting += s.waiting;
        }
        t
    }
}

/// The pools of `map`: the control plane's and each user's, reusing those of `cur` whose
/// shard keeps its place, address and login.
pub fn build_pools(
    map: &ShardMap,
    cur: Option<&Topology>,
) -> (Vec<Arc<ShardPool>>, HashMap<String, ClientPools>) {
    // One latency histogram per shard, shared by all its pools (kept while the shard keeps
    // its place and name; every pool of a shard was made with it, so reused ones share it).
    let latency: Vec<Arc<LatencyHistogram>> = map
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| match cur.and_then(|t| t.pools.get(i)) {
            Some(p) if p.info.name == s.name => p.latency.clone(),
            _ => Default::default(),
        })
        .collect();
    let control: Vec<Arc<ShardPool>> = map
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| match cur.and_then(|t| t.pools.get(i)) {
            Some(p) if p.info.same_server(s) => p.clone(),
            _ => ShardPool::new(i, s.clone(), map.pool.clone(), latency[i].clone()),
        })
        .collect();
    let clients = map
        .users
        .iter()
        .map(|u| {
            let pools: Vec<Arc<ShardPool>> = map
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let info = match &u.shard_login {
                        Some(l) => s.with_login(&l.user, l.password.as_deref()),
                        None => s.clone(),
                    };
                    // Two users never share a pool, even with one login: a pool found by
                    // login belongs to whoever had it, so each user's is its own.
                    match cur
                        .and_then(|t| t.client_pools.get(&u.name))
                        .and_then(|p| p.get(i))
                    {
                        Some(p) if p.info.same_server(&info) => p.clone(),
                        _ => ShardPool::new(i, info, map.pool.clone(), latency[i].clone()),
                    }
                })
                .collect();
            (u.name.clone(), Arc::from(pools))
        })
        .collect();
    (control, clients)
}

/// Passwords and SCRAM verifiers by user name.
pub type Users = HashMap<String, (String, ScramSecret)>;

/// State shared by every session of one proxy.
pub struct Shared {
    /// The current topology.
    pub topology: arc_swap::ArcSwap<Topology>,
    /// Generation of `topology` (read by sessions on every statement, cheaply).
    pub generation: std::sync::atomic::AtomicU64,
    /// The rebalance hold.
    pub gate: Arc<gate::Gate>,
    /// Cancel keys handed to clients.
    pub cancels: CancelRegistry,
    /// The budget large client messages draw on (`limits.max_buffered_mb`, in KiB), shared
    /// by every client's reader, and its size.
    pub large_messages: Arc<tokio::sync::Semaphore>,
    /// Size of [`Shared::large_messages`] in permits (KiB).
    pub large_message_units: usize,
    /// Per-process secret behind the salts unknown users are answered with.
    pub login_key: [u8; 32],
    /// The shard map file, for reloads (`None` for a proxy started from text).
    pub config_path: Mutex<Option<std::path::PathBuf>>,
    /// Notified when the admin console asks the proxy to shut down.
    pub shutdown: tokio::sync::Notify,
    /// Set once a shutdown was asked for.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// ParameterStatus values learned from a shard, sent to clients at login.
    pub server_params: Mutex<Option<Vec<(String, String)>>>,
    /// Connected clients.
    pub clients: AtomicUsize,
    /// Who they are, for `SHOW CLIENTS`.
    pub client_list: Arc<crate::session::clients::ClientRegistry>,
    /// Whether text sorts in byte order on the shards (learned once, for merging ORDER BY).
    pub bytewise_text: std::sync::OnceLock<bool>,
    /// Two-phase commit for writes that span shards.
    pub twophase: Arc<crate::backend::twophase::TwoPhase>,
    /// Prometheus metrics.
    pub telemetry: crate::telemetry::Telemetry,
    /// Bumped by every schema change that passes through this proxy: a backend connection
    /// whose prepared statements are older is cleared (`DEALLOCATE ALL`) at its next
    /// checkout, so statements shared by content never outlive the DDL they depend on.
    pub schema_epoch: std::sync::atomic::AtomicU64,
    /// Values of generated columns, unique across shards.
    pub ids: crate::backend::ids::IdAllocator,
    /// LISTEN/NOTIFY: the sessions listening and the process's listening connection.
    pub notify: Arc<crate::backend::notify::Hub>,
}

impl Shared {
    /// The current topology.
    pub fn topo(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Asks the proxy to stop accepting clients and drain (admin `SHUTDOWN`).
    pub fn request_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        self.shutdown.notify_waiters();
    }

    /// The current map.
    pub fn map(&self) -> Arc<ShardMap> {
        self.topology.load().map.clone()
    }

    /// Swaps in `map`, keeping the pools of shards whose place and address are unchanged.
    /// Sessions move to it when they next start a transaction.
    pub fn swap_map(&self, map: Arc<ShardMap>) {
        let users = self.topology.load().users.clone();
        self.swap(map, users);
    }

    /// Swaps in a reloaded map and its users together (see [`Topology::users`]).
    pub fn swap_config(&self, map: Arc<ShardMap>) {
        let users = Arc::new(user_secrets(&map));
        self.swap(map, users);
    }

    fn swap(&self, map: Arc<ShardMap>, users: Arc<Users>) {
        let cur = self.topology.load();
        // Every map of this proxy shares one catalog (generated columns): a new map must not
        // route INSERTs without it while it is read again for the tables the map gains.
        let map = if Arc::ptr_eq(&map.catalog, &cur.map.catalog) {
            map
        } else {
            let mut m = (*map).clone();
            m.catalog = cur.map.catalog.clone();
            Arc::new(m)
        };
        map.catalog.request_refresh();
        let (pools, client_pools) = build_pools(&map, Some(&cur));
        let generation = cur.generation + 1;
        if let Some(info) = map.shards.get(map.default_shard) {
            self.notify.set_target(info, map.pool.connect_timeout);
        }
        self.topology.store(Arc::new(Topology {
            map,
            pools,
            client_pools,
            cache: PlanCache::new(crate::routing::router::PLAN_CACHE_CAPACITY),
            generation,
            users,
        }));
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
    }
}

/// Passwords and SCRAM verifiers of `map`'s users, by name.
pub fn user_secrets(map: &ShardMap) -> Users {
    map.users
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                (u.password.clone(), ScramSecret::from_password(&u.password)),
            )
        })
        .collect()
}
