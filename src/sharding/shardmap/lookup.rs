//! The router's questions to a [`ShardMap`]: a table's rule, a key's shard, the shards and
//! tables by name, and the explained route of `shardwire route`.

use std::sync::Arc;

use super::rules::utc_default;
use super::{RouteExplainError, ShardMap, TableRule};
use crate::sharding::keys::{key_from_text, KeyValue};
use crate::sharding::ring::HashRing;
use crate::sharding::strategy::{Located, Sharded};

impl ShardMap {
    /// The rule for a table referenced in SQL as `schema.rel` (`schema` empty
    /// when unqualified; both already case-folded by the parser). A rule written
    /// as `schema.rel` in the map is tried first; an unqualified rule (or one
    /// written `public.rel`) matches when `schema` is empty or `public`.
    #[inline]
    pub fn table(&self, schema: &str, rel: &str) -> Option<&TableRule> {
        if !schema.is_empty() && schema != "public" {
            return self.tables.get(schema).and_then(|m| m.get(rel));
        }
        self.tables.get("").and_then(|m| m.get(rel))
    }

    /// The shard index owning a hash key.
    #[inline]
    pub fn hash_shard(&self, key: &KeyValue) -> usize {
        self.ring.locate(key.hash64()) as usize
    }

    /// Where `key` of sharded table `t` lives; `record` lets a directory table record a
    /// fallback placement (writes).
    #[inline]
    pub fn locate(&self, t: &Sharded, key: &KeyValue, record: bool) -> Located {
        let here = t.locate(&self.ring, key, record);
        match (&self.transition, here) {
            (Some(tr), Located::Shard(new)) => tr.resolve(t, key, new),
            (_, here) => here,
        }
    }

    /// Every sharded table's rule, in file order.
    pub fn sharded_tables(&self) -> impl Iterator<Item = &Arc<Sharded>> {
        self.table_order.iter().filter_map(|(_, r)| match r {
            TableRule::Sharded(t) => Some(t),
            TableRule::Reference => None,
        })
    }

    /// Shard names in map order.
    pub fn shard_names(&self) -> &[String] {
        &self.shard_names
    }

    /// Shard index by name.
    pub fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    /// The hash ring.
    pub fn ring(&self) -> &HashRing {
        &self.ring
    }

    /// Table names (as written, `public.` dropped) and rules in file order.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &TableRule)> {
        self.table_order.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// Explains where `key_text` of `table` routes, for `shardwire route`:
    ///
    /// - `users.id = 42 (bigint) -> hash 0x2e4fe982b68910ac -> shard s1`
    /// - `countries is a reference table: reads go to one shard, writes to all`
    /// - `orders2 is not in tables: unsharded, lives on shard s0 (default_shard)`
    ///
    /// `table` is `rel` or `schema.rel`; it is looked up as written, then
    /// lower-cased (as SQL folds unquoted names).
    pub fn explain_route(&self, table: &str, key_text: &str) -> Result<String, RouteExplainError> {
        self.route_of(table, key_text).map(|(_, reason)| reason)
    }

    /// The shard `key_text` of `table` lives on (`None` for a reference table, or a key no
    /// shard takes) and the explanation [`ShardMap::explain_route`] gives.
    pub fn route_of(
        &self,
        table: &str,
        key_text: &str,
    ) -> Result<(Option<usize>, String), RouteExplainError> {
        let (schema, rel) = match table.split_once('.') {
            Some((s, r)) if !s.is_empty() && !r.is_empty() && !r.contains('.') => (s, r),
            None if !table.is_empty() => ("", table),
            _ => return Err(RouteExplainError::TableName(table.to_owned())),
        };
        let rule = self
            .table(schema, rel)
            .or_else(|| self.table(&schema.to_ascii_lowercase(), &rel.to_ascii_lowercase()));
        match rule {
            Some(TableRule::Sharded(t)) => {
                let value = key_from_text(t.key_type, key_text)
                    .or_else(|e| utc_default(t.key_type, key_text, e))
                    .map_err(|source| RouteExplainError::Key {
                        table: table.to_owned(),
                        column: t.key.clone(),
                        source,
                    })?;
                let shard = match self.locate(t, &value, false) {
                    Located::Shard(s) => Some(s),
                    _ => None,
                };
                Ok((
                    shard,
                    t.explain(table, &self.ring, &value, &self.shard_names),
                ))
            }
            Some(TableRule::Reference) => Ok((
                None,
                format!("{table} is a reference table: reads go to one shard, writes to all"),
            )),
            None => Ok((
                Some(self.default_shard),
                format!(
                    "{table} is not in tables: unsharded, lives on shard {} ({})",
                    self.shards[self.default_shard].name,
                    if self.default_shard_explicit {
                        "default_shard"
                    } else {
                        "the first shard; set default_shard to change"
                    }
                ),
            )),
        }
    }
}
