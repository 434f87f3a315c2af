//! Key extraction: a literal or parameter compared with a shard key turned into what it
//! pins ([`KeySrc`]), range predicates on a range-sharded key ([`RangeGroup`]), with the
//! offset-less timestamptz rule, and a key given as a Bind parameter ([`bind_param_key`]).

use std::ops::Bound;
use std::sync::Arc;

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

use super::template::{veto, Template};
use crate::error::ProxyError;
use crate::sharding::keys::{
    key_from_binary, key_from_int, key_from_text, numeric_literal, KeyError, KeyType, KeyValue,
    NumericLiteral,
};
use crate::sharding::shardmap::ShardMap;
use crate::sharding::shardset::ShardSet;
use crate::sharding::strategy::{Located, Sharded};

/// A value that pins a key: a literal already turned into a shard, or a parameter.
#[derive(Debug, Clone)]
pub(super) enum KeySrc {
    Shard(usize),
    /// Several shards may hold it (an offset-less timestamptz on a range table).
    Set(ShardSet),
    Param(usize, Arc<Sharded>),
    /// A literal that can never equal the key (e.g. `id = 1.5`): matches nothing.
    Nothing,
    /// Constant #n of a literal template (evaluated per query), negated or not.
    Literal(usize, Arc<Sharded>, bool),
    /// A constant key of a directory table (located per execution).
    Value(KeyValue, Arc<Sharded>),
    /// Range predicates with parameters (the shards are found at Bind).
    Range(Arc<RangeGroup>),
}

/// Turns a literal or parameter into a key source for table `t`'s key. `write`: the key
/// places a new row (INSERT), so a key no shard takes is an error, and an offset-less
/// timestamptz must fall on one shard whatever the session's time zone. `tpl`: the literal
/// template being planned, if any (its constants become [`KeySrc::Literal`]).
pub(super) fn key_src(
    map: &ShardMap,
    t: &Arc<Sharded>,
    n: &protobuf::Node,
    write: bool,
    tpl: Option<&Template>,
) -> Result<Option<KeySrc>, ProxyError> {
    let ty = t.key_type;
    match &n.node {
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => {
            Ok(Some(KeySrc::Param(p.number as usize - 1, t.clone())))
        }
        Some(NodeEnum::TypeCast(c)) => match c.arg.as_deref() {
            Some(a) => key_src(map, t, a, write, tpl),
            None => Ok(None),
        },
        Some(NodeEnum::AConst(c)) => {
            if c.isnull {
                return Ok(Some(KeySrc::Nothing));
            }
            if let Some((idx, neg)) = tpl.and_then(|x| x.literal(c.location)) {
                return Ok(Some(KeySrc::Literal(idx, t.clone(), neg)));
            }
            let (key, text): (Result<KeyValue, KeyError>, &str) = match &c.val {
                Some(Val::Ival(i)) => (key_from_int(ty, i.ival as i64), ""),
                Some(Val::Fval(f)) => match key_from_text(ty, &f.fval) {
                    Ok(k) => (Ok(k), ""),
                    Err(_) => match numeric_literal(ty, &f.fval) {
                        NumericLiteral::Value(k) => (Ok(k), ""),
                        NumericLiteral::Nothing => return Ok(Some(KeySrc::Nothing)),
                        NumericLiteral::Unknown => return Ok(None),
                    },
                },
                Some(Val::Sval(s)) => (key_from_text(ty, &s.sval), s.sval.as_str()),
                _ => return Ok(None),
            };
            match key {
                Ok(k) => const_src(map, t, k, write).map(Some),
                Err(e @ KeyError::NoUtcOffset { .. }) => offset_less(t, text, write, e),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(None),
    }
}

/// A constant key: located now, or per execution for directory tables.
fn const_src(
    map: &ShardMap,
    t: &Arc<Sharded>,
    k: KeyValue,
    write: bool,
) -> Result<KeySrc, ProxyError> {
    if t.dynamic() {
        return Ok(KeySrc::Value(k, t.clone()));
    }
    match map.locate(t, &k, false) {
        Located::Shard(s) => Ok(KeySrc::Shard(s)),
        Located::Nowhere(why) if write => Err(ProxyError::NoShard(why)),
        Located::Nowhere(_) => Ok(KeySrc::Nothing),
        Located::Unavailable(why) => Err(ProxyError::Unavailable(why)),
    }
}

/// Widest gap between local time and UTC, with margin: real zones span UTC-12 to UTC+14.
const MAX_UTC_OFFSET_MICROS: i64 = 16 * 3_600 * 1_000_000;

/// The instants an offset-less timestamptz can denote, whatever the session's time zone.
fn offset_less_window(t: &Sharded, text: &str) -> Option<(KeyValue, KeyValue)> {
    match crate::sharding::shardmap::utc_default(
        t.key_type,
        text,
        KeyError::NoUtcOffset { input: text.into() },
    ) {
        Ok(KeyValue::Timestamptz(v)) => Some((
            KeyValue::Timestamptz(v.saturating_sub(MAX_UTC_OFFSET_MICROS)),
            KeyValue::Timestamptz(v.saturating_add(MAX_UTC_OFFSET_MICROS)),
        )),
        _ => None,
    }
}

/// An offset-less timestamptz key: on a range table it pins the shards its possible
/// instants fall on (an INSERT only when that is one shard); elsewhere it pins nothing
/// (reads) or is refused (INSERT).
pub(super) fn offset_less(
    t: &Sharded,
    text: &str,
    write: bool,
    e: KeyError,
) -> Result<Option<KeySrc>, ProxyError> {
    let set = offset_less_window(t, text)
        .and_then(|(lo, hi)| t.shards_between(Bound::Included(&lo), Bound::Included(&hi)));
    match (set, write) {
        (Some(set), false) => Ok(Some(KeySrc::Set(set))),
        (Some(set), true) if set.len() == 1 => Ok(set.iter().next().map(KeySrc::Shard)),
        (None, false) => Ok(None),
        _ => Err(e.into()),
    }
}

/// One end of a range predicate on a key.
#[derive(Debug, Clone)]
pub enum BoundSrc {
    /// A constant (already widened outwards for an offset-less timestamptz).
    Value(Bound<KeyValue>),
    /// Parameter #n (0-based), read at Bind: (index, inclusive).
    Param(usize, bool),
}

/// Range predicates on one table's key (ANDed): the statement may touch only the shards
/// whose ranges overlap every one of them.
#[derive(Debug, Clone)]
pub struct RangeGroup {
    /// The range-sharded table.
    pub table: Arc<Sharded>,
    /// (lower, upper) bound of each predicate.
    pub conds: Vec<(BoundSrc, BoundSrc)>,
}

impl RangeGroup {
    /// Whether every bound is a constant.
    pub(super) fn is_const(&self) -> bool {
        self.conds
            .iter()
            .all(|(a, b)| matches!((a, b), (BoundSrc::Value(_), BoundSrc::Value(_))))
    }

    /// The shards the predicates allow, with parameters bound (`params` empty when constant).
    pub(super) fn shards(
        &self,
        n_shards: usize,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
    ) -> Result<ShardSet, ProxyError> {
        let mut set = ShardSet::all(n_shards);
        for (lo, hi) in &self.conds {
            let (Some(lo), Some(hi)) = (
                self.bound(lo, true, params, is_binary)?,
                self.bound(hi, false, params, is_binary)?,
            ) else {
                return Ok(ShardSet::default()); // compared with NULL: no row matches
            };
            if let Some(s) = self.table.shards_between(lo.as_ref(), hi.as_ref()) {
                set = set.intersect(s);
            }
        }
        Ok(set)
    }

    /// A bound's value; `None` for a NULL parameter.
    fn bound(
        &self,
        b: &BoundSrc,
        lower: bool,
        params: &[Option<&[u8]>],
        is_binary: &dyn Fn(usize) -> bool,
    ) -> Result<Option<Bound<KeyValue>>, ProxyError> {
        let (i, inclusive) = match b {
            BoundSrc::Value(v) => return Ok(Some(v.clone())),
            BoundSrc::Param(i, inclusive) => (*i, *inclusive),
        };
        let key = match bind_param_key(self.table.key_type, params, i, is_binary)? {
            BindKey::Key(k) => k,
            BindKey::Null => return Ok(None),
            BindKey::OffsetLess(text, e) => {
                let (lo, hi) = offset_less_window(&self.table, text).ok_or(e)?;
                return Ok(Some(Bound::Included(if lower { lo } else { hi })));
            }
        };
        Ok(Some(if inclusive {
            Bound::Included(key)
        } else {
            Bound::Excluded(key)
        }))
    }
}

/// A bound of a range predicate on `t`'s key: a constant (offset-less timestamps widened
/// outwards, `lower` says which end of their window to take) or a parameter. `None` when
/// it is neither. `tpl`: the literal template being planned, if any (vetoed by a constant).
fn bound_src(
    t: &Sharded,
    b: Bound<&protobuf::Node>,
    lower: bool,
    tpl: Option<&Template>,
) -> Option<BoundSrc> {
    let (n, inclusive) = match b {
        Bound::Unbounded => return Some(BoundSrc::Value(Bound::Unbounded)),
        Bound::Included(n) => (n, true),
        Bound::Excluded(n) => (n, false),
    };
    let wrap = |v: KeyValue, inclusive: bool| {
        BoundSrc::Value(if inclusive {
            Bound::Included(v)
        } else {
            Bound::Excluded(v)
        })
    };
    match &n.node {
        Some(NodeEnum::TypeCast(c)) => bound_src(
            t,
            match b {
                Bound::Included(_) => Bound::Included(c.arg.as_deref()?),
                _ => Bound::Excluded(c.arg.as_deref()?),
            },
            lower,
            tpl,
        ),
        Some(NodeEnum::ParamRef(p)) if p.number >= 1 => {
            Some(BoundSrc::Param(p.number as usize - 1, inclusive))
        }
        Some(NodeEnum::AConst(c)) if !c.isnull => {
            if tpl.is_some() {
                // The bound's value decides the shards: plan this text on its own.
                veto(tpl);
                return None;
            }
            let ty = t.key_type;
            match &c.val {
                Some(Val::Ival(i)) => key_from_int(ty, i.ival as i64)
                    .ok()
                    .map(|k| wrap(k, inclusive)),
                Some(Val::Fval(f)) => key_from_text(ty, &f.fval).ok().map(|k| wrap(k, inclusive)),
                Some(Val::Sval(s)) => match key_from_text(ty, &s.sval) {
                    Ok(k) => Some(wrap(k, inclusive)),
                    // A widened bound must be inclusive to stay a superset.
                    Err(KeyError::NoUtcOffset { .. }) => offset_less_window(t, &s.sval)
                        .map(|(lo, hi)| wrap(if lower { lo } else { hi }, true)),
                    Err(_) => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// A range predicate on `t`'s key as bounds (`None`: it does not narrow). `tpl`: the
/// literal template being planned, if any.
pub(super) fn range_cond(
    t: &Sharded,
    lo: Bound<&protobuf::Node>,
    hi: Bound<&protobuf::Node>,
    tpl: Option<&Template>,
) -> Option<(BoundSrc, BoundSrc)> {
    if !matches!(t.strategy, crate::sharding::strategy::Strategy::Range(_)) {
        return None;
    }
    Some((bound_src(t, lo, true, tpl)?, bound_src(t, hi, false, tpl)?))
}

/// A shard key given as a Bind parameter ([`bind_param_key`]).
pub(super) enum BindKey<'a> {
    /// The key.
    Key(KeyValue),
    /// The parameter is NULL.
    Null,
    /// A text-format timestamptz without a UTC offset: its text (for the offset-less rule,
    /// see [`offset_less`]), and the error to report where that rule does not apply.
    OffsetLess(&'a str, KeyError),
}

/// Decodes Bind parameter `i` (0-based) of `params` as a key of type `ty`, in the format
/// `is_binary` gives it (a text value is read as UTF-8: callers pass text parameters
/// converted from the client's encoding). Errors: too few parameters, invalid UTF-8, and a value that is not a
/// key of type `ty` (a binary one names the parameter). Allocates only on errors.
pub(super) fn bind_param_key<'a>(
    ty: KeyType,
    params: &[Option<&'a [u8]>],
    i: usize,
    is_binary: impl Fn(usize) -> bool,
) -> Result<BindKey<'a>, ProxyError> {
    let Some(raw) = params.get(i) else {
        return Err(ProxyError::Protocol(format!(
            "bind message supplies {} parameters, but the statement needs at least {}",
            params.len(),
            i + 1
        )));
    };
    let Some(raw) = *raw else {
        return Ok(BindKey::Null);
    };
    if is_binary(i) {
        return Ok(BindKey::Key(
            key_from_binary(ty, raw).map_err(|e| e.in_param(i + 1))?,
        ));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| ProxyError::Protocol("invalid UTF-8 in text parameter".into()))?;
    match key_from_text(ty, text) {
        Ok(k) => Ok(BindKey::Key(k)),
        Err(e @ KeyError::NoUtcOffset { .. }) => Ok(BindKey::OffsetLess(text, e)),
        Err(e) => Err(e.into()),
    }
}
