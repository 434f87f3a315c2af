//! Validating one table's entry into its [`TableRule`]: the strategy, the shard key and its
//! type, the range bounds, geo regions and directory entries, the co-location group.

use std::collections::HashMap;
use std::sync::Arc;

use super::TableRule;
use crate::config::{ConfigError, ErrorSite, RawConfig, RawTable, Seg};
use crate::sharding::directory::Directory;
use crate::sharding::keys::{key_from_text, KeyError, KeyType, KeyValue};
use crate::sharding::ring::HashRing;
use crate::sharding::shard::ShardInfo;
use crate::sharding::strategy::{
    DirectoryRule, Fallback, GeoRule, RangeRule, Region, Sharded, Strategy,
};

const STRATEGIES: &str = "hash, range, geo, directory, reference";

/// What validating a table rule needs from the rest of the map.
pub(super) struct RuleContext<'a, 'b> {
    pub(super) site: &'a ErrorSite<'b>,
    pub(super) shards: &'a [ShardInfo],
    pub(super) vnodes: u32,
    pub(super) directory: Option<&'a Arc<Directory>>,
    /// Co-location signature -> group id.
    pub(super) groups: std::cell::RefCell<HashMap<String, u32>>,
    /// Rules are built unsettled (a rebalance is running).
    pub(super) unsettled: bool,
}

impl RuleContext<'_, '_> {
    fn shard(&self, name: &str, path: &[Seg<'_>]) -> Result<usize, ConfigError> {
        self.shards
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.shards.iter().map(|s| s.name.as_str()).collect();
                self.site.error(
                    path,
                    format!("no shard is named `{name}`"),
                    format!("use one of: {}", names.join(", ")),
                )
            })
    }

    /// The group id for a placement signature (equal signatures co-locate).
    fn group(&self, signature: String) -> u32 {
        let mut g = self.groups.borrow_mut();
        let next = g.len() as u32;
        *g.entry(signature).or_insert(next)
    }
}

/// A YAML scalar as text (strings as is, numbers and booleans printed).
fn scalar_text(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses a key written in the map. A timestamptz without a UTC offset is taken as UTC
/// (the map has no session time zone).
fn map_key(ty: KeyType, text: &str) -> Result<KeyValue, KeyError> {
    key_from_text(ty, text).or_else(|e| utc_default(ty, text, e))
}

/// Retries a timestamptz that lacked a UTC offset as UTC; other errors are returned.
pub(crate) fn utc_default(ty: KeyType, text: &str, e: KeyError) -> Result<KeyValue, KeyError> {
    if !matches!(e, KeyError::NoUtcOffset { .. }) {
        return Err(e);
    }
    let t = text.trim();
    let utc = if t.contains([' ', 'T']) {
        format!("{t}+00")
    } else {
        format!("{t} 00:00:00+00")
    };
    key_from_text(ty, &utc).map_err(|_| e)
}

/// Looks a shard up by name, reporting a missing one at a path.
pub(super) type ShardNamed<'a> = dyn Fn(&str, &[Seg<'_>]) -> Result<usize, ConfigError> + 'a;

/// The static directory entries of every directory table (key text -> shard); an entry
/// given twice with different shards is an error.
pub(super) fn directory_statics(
    site: &ErrorSite<'_>,
    raw: &RawConfig,
    shard_named: &ShardNamed<'_>,
) -> Result<Vec<(String, usize)>, ConfigError> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (name, t) in &raw.tables.0 {
        if t.strategy.as_deref() != Some("directory") {
            continue;
        }
        let Some(entries) = &t.entries else { continue };
        let path = [Seg::Key("tables"), Seg::Key(name), Seg::Key("entries")];
        let serde_norway::Value::Mapping(m) = entries else {
            return Err(site.error(
                &path,
                "entries must map keys to shard names",
                "write `entries: { acme: s0, globex: s1 }`",
            ));
        };
        let ty = t.key_type.as_deref().and_then(KeyType::parse);
        for (k, v) in m {
            let (Some(k), Some(v)) = (scalar_text(k), scalar_text(v)) else {
                return Err(site.error(
                    &path,
                    "entries must map keys to shard names",
                    "write `entries: { acme: s0, globex: s1 }`",
                ));
            };
            let at = [
                Seg::Key("tables"),
                Seg::Key(name),
                Seg::Key("entries"),
                Seg::Key(&k),
            ];
            let shard = shard_named(&v, &at)?;
            // Stored in the key's canonical text form.
            let k = match ty {
                Some(ty) => map_key(ty, &k)
                    .map_err(|e| site.error(&at, e.to_string(), "write a key of the table's type"))?
                    .to_string(),
                None => k.clone(),
            };
            match out.iter().find(|(o, _)| *o == k) {
                Some((_, s)) if *s != shard => {
                    return Err(site.error(
                        &at,
                        format!("directory key `{k}` is given two different shards"),
                        "directory tables share one directory: give each key one shard",
                    ))
                }
                Some(_) => {}
                None => out.push((k, shard)),
            }
        }
    }
    Ok(out)
}

/// Validates one table entry.
pub(super) fn table_rule(
    ctx: &RuleContext<'_, '_>,
    name: &str,
    t: &RawTable,
) -> Result<TableRule, ConfigError> {
    let site = ctx.site;
    let at = |field| [Seg::Key("tables"), Seg::Key(name), Seg::Key(field)];
    let strategy = match t.strategy.as_deref() {
        Some(s) => s,
        None => {
            return Err(site.error(
                &at("strategy"),
                "strategy is missing",
                format!("add `strategy:` with one of: {STRATEGIES}"),
            ))
        }
    };
    if !matches!(
        strategy,
        "hash" | "reference" | "range" | "geo" | "directory"
    ) {
        return Err(site.error(
            &at("strategy"),
            format!("unknown strategy '{strategy}'"),
            format!("use one of: {STRATEGIES}"),
        ));
    }
    // Fields that belong to other strategies.
    for (field, present, owner) in [
        ("ranges", t.ranges.is_some(), "range"),
        ("regions", t.regions.is_some(), "geo"),
        ("default_region", t.default_region.is_some(), "geo"),
        ("entries", t.entries.is_some(), "directory"),
        ("fallback", t.fallback.is_some(), "directory"),
    ] {
        if present && owner != strategy {
            return Err(site.error(
                &at(field),
                format!("`{field}` belongs to strategy {owner}, not {strategy}"),
                format!("remove `{field}`"),
            ));
        }
    }
    if strategy == "reference" {
        for (field, present) in [("key", t.key.is_some()), ("type", t.key_type.is_some())] {
            if present {
                return Err(site.error(
                    &at(field),
                    "a reference table has no shard key",
                    format!("remove `{field}`, or use strategy hash to shard the table"),
                ));
            }
        }
        return Ok(TableRule::Reference);
    }

    let key = match &t.key {
        None => return Err(site.error(
            &at("key"),
            format!("strategy {strategy} needs a shard-key column"),
            "add `key: <column>` and `type: <bigint|integer|text|uuid|numeric|date|timestamptz>`",
        )),
        Some(serde_norway::Value::String(s)) if s.contains(',') => {
            return Err(site.error(
                &at("key"),
                "composite shard keys are not supported",
                "shard on a single column",
            ))
        }
        Some(serde_norway::Value::Sequence(_)) => {
            return Err(site.error(
                &at("key"),
                "composite shard keys are not supported",
                "shard on a single column",
            ))
        }
        Some(serde_norway::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(_) => {
            return Err(site.error(
                &at("key"),
                "key must be a column name",
                "write `key: <column>`",
            ))
        }
    };
    let key_type = match t.key_type.as_deref() {
        None => {
            return Err(site.error(
                &at("type"),
                format!("strategy {strategy} needs the type of key column `{key}`"),
                format!("add `type:` with one of: {}", KeyType::ACCEPTED_NAMES),
            ))
        }
        Some(ty) => KeyType::parse(ty).ok_or_else(|| {
            site.error(
                &at("type"),
                format!("unsupported key type `{ty}`"),
                format!("use one of: {}", KeyType::ACCEPTED_NAMES),
            )
        })?,
    };
    let class = key_type.colocation_class();
    let (strategy, signature) = match strategy {
        "hash" => (Strategy::Hash, format!("hash/{class}")),
        "range" => {
            let r = range_rule(ctx, name, key_type, t)?;
            let sig = format!(
                "range/{class}/{}/{:?}",
                r.bounds
                    .iter()
                    .map(|(b, s)| format!("{}:{s}", b.sql_literal()))
                    .collect::<Vec<_>>()
                    .join(","),
                r.rest
            );
            (Strategy::Range(r), sig)
        }
        "geo" => {
            let g = geo_rule(ctx, name, key_type, t)?;
            let mut vals: Vec<String> = g
                .by_value
                .iter()
                .map(|(v, r)| format!("{}={}", v.sql_literal(), g.regions[*r].name))
                .collect();
            vals.sort();
            let sig = format!(
                "geo/{class}/{}/{:?}",
                vals.join(","),
                g.default.map(|d| g.regions[d].name.clone())
            );
            (Strategy::Geo(g), sig)
        }
        _ => {
            let fallback = match t.fallback.as_ref().map(scalar_text) {
                None => Fallback::Hash,
                Some(Some(f)) if f == "hash" => Fallback::Hash,
                Some(Some(f)) if f == "reject" => Fallback::Reject,
                Some(Some(f)) => Fallback::Shard(ctx.shard(&f, &at("fallback")).map_err(|_| {
                    site.error(
                        &at("fallback"),
                        format!("fallback `{f}` is neither hash, reject nor a shard name"),
                        "use hash (the default), reject, or the name of a shard",
                    )
                })?),
                Some(None) => {
                    return Err(site.error(
                        &at("fallback"),
                        "fallback must be hash, reject or a shard name",
                        "write `fallback: hash`",
                    ))
                }
            };
            let Some(directory) = ctx.directory else {
                return Err(site.error(
                    &at("strategy"),
                    "internal: no directory for a directory table",
                    "report this",
                ));
            };
            (
                Strategy::Directory(DirectoryRule {
                    fallback,
                    directory: directory.clone(),
                }),
                format!("directory/{class}"),
            )
        }
    };
    Ok(TableRule::Sharded(Arc::new(Sharded {
        name: name.strip_prefix("public.").unwrap_or(name).to_owned(),
        key,
        key_type,
        strategy,
        group: ctx.group(signature),
        unsettled: ctx.unsettled,
    })))
}

/// Validates `ranges:`: `- { below: <bound>, shard: <name> }` in strictly ascending order,
/// optionally ending with a catch-all `- { shard: <name> }`.
fn range_rule(
    ctx: &RuleContext<'_, '_>,
    name: &str,
    ty: KeyType,
    t: &RawTable,
) -> Result<RangeRule, ConfigError> {
    let site = ctx.site;
    let path = [Seg::Key("tables"), Seg::Key(name), Seg::Key("ranges")];
    let example =
        "write `ranges: [{ below: 1000, shard: s0 }, { below: 2000, shard: s1 }, { shard: s2 }]`";
    let Some(serde_norway::Value::Sequence(items)) = &t.ranges else {
        return Err(site.error(&path, "strategy range needs a list of ranges", example));
    };
    if items.is_empty() {
        return Err(site.error(&path, "ranges is empty", example));
    }
    let mut bounds: Vec<(KeyValue, usize)> = Vec::new();
    let mut rest = None;
    for (i, item) in items.iter().enumerate() {
        let at = |f| {
            [
                Seg::Key("tables"),
                Seg::Key(name),
                Seg::Key("ranges"),
                Seg::Index(i),
                Seg::Key(f),
            ]
        };
        let serde_norway::Value::Mapping(m) = item else {
            return Err(site.error(&path, format!("range #{} is not a mapping", i + 1), example));
        };
        for k in m.keys() {
            if !matches!(scalar_text(k).as_deref(), Some("below" | "shard")) {
                return Err(site.error(
                    &path,
                    format!("range #{} has an unknown field {k:?}", i + 1),
                    "a range has only `below` and `shard`",
                ));
            }
        }
        if rest.is_some() {
            return Err(site.error(
                &path,
                format!("range #{} follows the catch-all range", i + 1),
                "the range without `below` must come last",
            ));
        }
        let Some(shard) = m.get("shard").and_then(scalar_text) else {
            return Err(site.error(&at("shard"), "a range needs a shard", "add `shard: <name>`"));
        };
        let shard = ctx.shard(&shard, &at("shard"))?;
        match m.get("below") {
            None => rest = Some(shard),
            Some(b) => {
                let Some(text) = scalar_text(b) else {
                    return Err(site.error(&at("below"), "below must be a value", example));
                };
                let v = map_key(ty, &text).map_err(|e| {
                    site.error(
                        &at("below"),
                        format!("bound `{text}`: {e}"),
                        format!("write a {ty} value"),
                    )
                })?;
                if let Some((prev, _)) = bounds.last() {
                    if v.cmp_same(prev) != Some(std::cmp::Ordering::Greater) {
                        return Err(site.error(
                            &at("below"),
                            format!(
                                "bound {} is not above the previous bound {}: ranges overlap or are out of order",
                                v.sql_literal(),
                                prev.sql_literal()
                            ),
                            "list ranges in ascending order of `below`, each bound once",
                        ));
                    }
                }
                bounds.push((v, shard));
            }
        }
    }
    Ok(RangeRule { bounds, rest })
}

/// Validates `regions:` (region -> key values) and `default_region:` against the shards'
/// regions.
fn geo_rule(
    ctx: &RuleContext<'_, '_>,
    name: &str,
    ty: KeyType,
    t: &RawTable,
) -> Result<GeoRule, ConfigError> {
    let site = ctx.site;
    let path = [Seg::Key("tables"), Seg::Key(name), Seg::Key("regions")];
    let example = "write `regions: { eu: [DE, FR], us: [US, CA] }` and give shards a `region`";
    let Some(serde_norway::Value::Mapping(m)) = &t.regions else {
        return Err(site.error(&path, "strategy geo needs regions", example));
    };
    let mut regions: Vec<Region> = Vec::new();
    let mut by_value: HashMap<KeyValue, usize> = HashMap::new();
    let region_of = |rname: &str, at: &[Seg<'_>]| -> Result<Region, ConfigError> {
        let shards: Vec<usize> = (0..ctx.shards.len())
            .filter(|&i| ctx.shards[i].region.as_deref() == Some(rname))
            .collect();
        if shards.is_empty() {
            return Err(site.error(
                at,
                format!("no shard serves region `{rname}`"),
                format!("add `region: {rname}` to at least one shard"),
            ));
        }
        let input: Vec<(&str, u32)> = shards
            .iter()
            .map(|&i| (ctx.shards[i].name.as_str(), ctx.shards[i].weight))
            .collect();
        Ok(Region {
            name: rname.to_owned(),
            ring: HashRing::new(&input, ctx.vnodes),
            shards,
        })
    };
    for (rk, vals) in m {
        let Some(rname) = scalar_text(rk) else {
            return Err(site.error(&path, "region names must be text", example));
        };
        let at = [
            Seg::Key("tables"),
            Seg::Key(name),
            Seg::Key("regions"),
            Seg::Key(&rname),
        ];
        let region = region_of(&rname, &at)?;
        let idx = regions.len();
        regions.push(region);
        let serde_norway::Value::Sequence(vals) = vals else {
            return Err(site.error(&at, "a region lists key values", example));
        };
        for v in vals {
            let Some(text) = scalar_text(v) else {
                return Err(site.error(&at, "key values must be scalars", example));
            };
            let kv = map_key(ty, &text).map_err(|e| {
                site.error(
                    &at,
                    format!("value `{text}`: {e}"),
                    format!("write {ty} values"),
                )
            })?;
            if let Some(other) = by_value.insert(kv, idx) {
                return Err(site.error(
                    &at,
                    format!(
                        "value `{text}` is listed in regions {} and {rname}",
                        regions[other].name
                    ),
                    "list each value in one region",
                ));
            }
        }
    }
    let default = match &t.default_region {
        None => None,
        Some(v) => {
            let at = [
                Seg::Key("tables"),
                Seg::Key(name),
                Seg::Key("default_region"),
            ];
            let Some(rname) = scalar_text(v) else {
                return Err(site.error(&at, "default_region must be a region name", example));
            };
            match regions.iter().position(|r| r.name == rname) {
                Some(i) => Some(i),
                None => {
                    let r = region_of(&rname, &at)?;
                    regions.push(r);
                    Some(regions.len() - 1)
                }
            }
        }
    };
    Ok(GeoRule {
        regions,
        by_value,
        default,
    })
}
