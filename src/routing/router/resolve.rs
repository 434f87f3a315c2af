//! Resolving a key route into shards: once every key is known at plan time
//! (`resolve_fixed`), or with the Bind parameters and template constants ([`resolve_keys`]).

use super::key_src::{bind_param_key, offset_less, BindKey, KeySrc};
use super::stmt::{KeyRoute, RouteSpec};
use crate::error::ProxyError;
use crate::routing::literals::{literal_value, LitVal, QueryLits};
use crate::sharding::keys::{KeyError, KeyValue};
use crate::sharding::shardmap::ShardMap;
use crate::sharding::shardset::ShardSet;
use crate::sharding::strategy::{Located, Sharded};

/// The route once every key is known: `fixed` holds all shards the keys land on.
pub(super) fn resolve_fixed(kr: &KeyRoute) -> RouteSpec {
    let mut shards = Shards::default();
    for s in &kr.fixed {
        shards.add(*s);
    }
    resolve_shards(kr, shards)
}

/// The distinct shards a statement's keys land on.
#[derive(Default, Clone, Copy)]
struct Shards {
    one: Option<usize>,
    several: bool,
    set: ShardSet,
}

impl Shards {
    fn add(&mut self, s: usize) {
        match self.one {
            None => self.one = Some(s),
            Some(o) if o != s => self.several = true,
            _ => {}
        }
        self.set.add(s);
    }
}

fn resolve_shards(kr: &KeyRoute, shards: Shards) -> RouteSpec {
    match (shards.one, shards.several, &kr.require) {
        // Every key matches nothing (NULL, 1.5 for an integer key): any shard says "no rows".
        (None, _, None) => RouteSpec::Any,
        (None, _, Some((d, _))) => RouteSpec::Shard(*d),
        (Some(s), false, None) => RouteSpec::Shard(s),
        (Some(s), false, Some((d, _))) if s == *d => RouteSpec::Shard(s),
        (_, _, Some((_, table))) => RouteSpec::Refuse(ProxyError::Unsupported(format!(
            "statement joins unsharded table {table} (on the default shard) with sharded table {} whose key is on another shard",
            kr.what
        ))),
        // Several shards: where "all shards" is the answer, only the ones the keys name run it.
        _ => match &*kr.spread {
            RouteSpec::All => RouteSpec::Subset(shards.set),
            other => other.clone(),
        },
    }
}

/// Locates one key into `shards`; `Err` is the route to return instead.
fn place(
    map: &ShardMap,
    kr: &KeyRoute,
    shards: &mut Shards,
    t: &Sharded,
    k: &KeyValue,
) -> Result<(), RouteSpec> {
    match map.locate(t, k, kr.null_is_error) {
        Located::Shard(s) => shards.add(s),
        Located::Nowhere(why) if kr.null_is_error => {
            return Err(RouteSpec::Refuse(ProxyError::NoShard(why)))
        }
        Located::Nowhere(_) => {}
        Located::Unavailable(why) => return Err(RouteSpec::Refuse(ProxyError::Unavailable(why))),
    }
    Ok(())
}

/// Resolves a parameter-dependent route with the Bind parameters (no allocation on the
/// single-shard path).
pub fn resolve_keys(
    map: &ShardMap,
    kr: &KeyRoute,
    params: &[Option<&[u8]>],
    is_binary: impl Fn(usize) -> bool,
    lits: QueryLits<'_>,
) -> RouteSpec {
    let mut shards = Shards::default();
    for s in &kr.fixed {
        shards.add(*s);
    }
    for (k, t) in &kr.values {
        if let Err(r) = place(map, kr, &mut shards, t, k) {
            return r;
        }
    }
    for g in &kr.ranges {
        match g.shards(map.shards.len(), params, &is_binary) {
            Ok(set) => set.iter().for_each(|s| shards.add(s)),
            Err(e) => return RouteSpec::Refuse(e),
        }
    }
    for (i, t, neg) in &kr.literals {
        let Some(lit) = lits.lits.get(*i) else {
            return RouteSpec::Refuse(ProxyError::Protocol(
                "internal: a literal template was used without its constants".into(),
            ));
        };
        let refuse_insert = || {
            RouteSpec::Refuse(ProxyError::Unsupported(format!(
                "INSERT into a sharded table: the shard key {} must be a literal or a parameter",
                kr.what
            )))
        };
        match literal_value(t.key_type, lits.sql, *lit, *neg) {
            LitVal::Value(k) => {
                if let Err(r) = place(map, kr, &mut shards, t, &k) {
                    return r;
                }
            }
            LitVal::Nothing if kr.null_is_error => return refuse_insert(),
            LitVal::Nothing => {}
            LitVal::Unpinned if kr.null_is_error => return refuse_insert(),
            LitVal::Unpinned if kr.require.is_some() => return refuse_insert(),
            LitVal::Unpinned => return (*kr.spread).clone(),
            LitVal::Bad(e @ KeyError::NoUtcOffset { .. }) => {
                // Planned as a template: the window decides, as for a folded constant.
                let text = lits
                    .sql
                    .get(lit.0 + 1..lit.1.saturating_sub(1))
                    .unwrap_or("");
                match offset_less(t, text, kr.null_is_error, e) {
                    Ok(Some(KeySrc::Shard(s))) => shards.add(s),
                    Ok(Some(KeySrc::Set(set))) => set.iter().for_each(|s| shards.add(s)),
                    Ok(_) => return (*kr.spread).clone(),
                    Err(e) => return RouteSpec::Refuse(e),
                }
            }
            LitVal::Bad(e) => return RouteSpec::Refuse(e.into()),
        }
    }
    for (i, t) in &kr.params {
        let key = match bind_param_key(t.key_type, params, *i, &is_binary) {
            Ok(BindKey::Key(k)) => k,
            Ok(BindKey::Null) if kr.null_is_error => {
                return RouteSpec::Refuse(ProxyError::Unsupported(format!(
                    "shard key {} must not be NULL",
                    kr.what
                )));
            }
            Ok(BindKey::Null) => continue, // key = NULL matches no row
            Ok(BindKey::OffsetLess(s, e)) => match offset_less(t, s, kr.null_is_error, e) {
                Ok(Some(KeySrc::Shard(x))) => {
                    shards.add(x);
                    continue;
                }
                Ok(Some(KeySrc::Set(set))) => {
                    set.iter().for_each(|x| shards.add(x));
                    continue;
                }
                Ok(_) => return (*kr.spread).clone(),
                Err(e) => return RouteSpec::Refuse(e),
            },
            Err(e) => return RouteSpec::Refuse(e),
        };
        if let Err(r) = place(map, kr, &mut shards, t, &key) {
            return r;
        }
    }
    resolve_shards(kr, shards)
}
