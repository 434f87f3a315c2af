//! The plan cache ([`PlanCache`]): plans by SQL text, and for the simple protocol by
//! literal template (planned with a [`Template`]).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::classify::{plan, plan_template};
use super::stmt::{Plan, StmtKind};
use super::template::Template;
use crate::error::ProxyError;
use crate::sharding::shardmap::ShardMap;

/// Plans kept in each of the parse cache's maps.
pub const PLAN_CACHE_CAPACITY: usize = 10_000;

/// Parsed plans cached by SQL text, and (for the simple protocol) by literal template;
/// each map is cleared when full (bounded memory).
///
/// The maps hash with foldhash (seeded per process), not SipHash: hashing the text is
/// part of every statement's cost (~150 instructions a point query with SipHash), and the
/// maps are bounded whatever keys clients choose.
pub struct PlanCache {
    map: RwLock<TextMap>,
    templates: RwLock<TextMap>,
    capacity: usize,
    /// The catalog version the cached plans were made under (INSERTs are completed by it).
    catalog: std::sync::atomic::AtomicU64,
}

/// Plans by SQL text or template key.
type TextMap = HashMap<Box<str>, Arc<Plan>, foldhash::fast::RandomState>;

/// Longest SQL text that is cached (longer ones are parsed each time).
const MAX_CACHED_SQL: usize = 16 * 1024;

impl PlanCache {
    /// A cache of at most `capacity` plans.
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            map: RwLock::new(TextMap::default()),
            templates: RwLock::new(TextMap::default()),
            capacity,
            catalog: Default::default(),
        }
    }

    /// Empties the cache when the catalog changed since its plans were made.
    #[inline]
    fn follow_catalog(&self, map: &ShardMap) {
        use std::sync::atomic::Ordering;
        let v = map.catalog.version();
        if self.catalog.load(Ordering::Acquire) != v {
            self.map.write().clear();
            self.templates.write().clear();
            self.catalog.store(v, Ordering::Release);
        }
    }

    /// The plan of a simple-protocol query string: by exact text, else by literal template
    /// (then the returned constants must be passed to [`resolve_keys`](super::resolve_keys)).
    pub fn get_simple(
        &self,
        map: &ShardMap,
        sql: &str,
    ) -> Result<(Arc<Plan>, Option<crate::routing::literals::Scanned>), ProxyError> {
        self.follow_catalog(map);
        if let Some(p) = self.map.read().get(sql) {
            return Ok((p.clone(), None));
        }
        if sql.len() > MAX_CACHED_SQL {
            return self.get(map, sql).map(|p| (p, None));
        }
        let scanned = match crate::routing::literals::scan(sql) {
            Some(s) if !s.lits.is_empty() => s,
            _ => return self.get(map, sql).map(|p| (p, None)),
        };
        if let Some(p) = self.templates.read().get(scanned.key.as_str()) {
            return Ok((p.clone(), Some(scanned)));
        }
        // Plan it as a template: key constants stay references to "constant #n".
        let locs: HashMap<i32, (usize, bool)> = scanned
            .locations
            .iter()
            .map(|(loc, i, neg)| (*loc, (*i, *neg)))
            .collect();
        let tpl = Template::new(locs);
        let p = Arc::new(plan_template(map, sql, Some(&tpl))?);
        let reusable = !tpl.vetoed()
            && p.stmts.len() == 1
            && p.stmts.iter().all(|st| {
                matches!(st.kind, StmtKind::Read | StmtKind::Write)
                    && st.gather().is_none()
                    && st.explain().is_none()
                    && st.cursor().is_none()
            });
        if !reusable {
            // Values matter beyond key routing (merges, EXPLAIN, settings, FETCH counts):
            // exact text only.
            return self.get(map, sql).map(|p| (p, None));
        }
        let mut w = self.templates.write();
        if w.len() >= self.capacity {
            w.clear();
        }
        w.insert(scanned.key.as_str().into(), p.clone());
        Ok((p, Some(scanned)))
    }

    /// The plan of `sql`, parsed on a miss.
    pub fn get(&self, map: &ShardMap, sql: &str) -> Result<Arc<Plan>, ProxyError> {
        self.follow_catalog(map);
        if let Some(p) = self.map.read().get(sql) {
            return Ok(p.clone());
        }
        let p = Arc::new(plan(map, sql)?);
        if sql.len() <= MAX_CACHED_SQL {
            let mut w = self.map.write();
            if w.len() >= self.capacity {
                w.clear();
            }
            w.insert(sql.into(), p.clone());
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{map, route};
    use super::super::{resolve_keys, RouteSpec};
    use super::*;

    /// The route of `sql` through the simple-protocol cache (literal templates), resolved.
    fn simple_route(cache: &PlanCache, m: &ShardMap, sql: &str) -> String {
        let (p, sc) = cache.get_simple(m, sql).unwrap();
        let lits = sc.as_ref().map(|s| s.query_lits(sql)).unwrap_or_default();
        let r = match &p.stmts[0].route {
            RouteSpec::Keys(kr) => resolve_keys(m, kr, &[], |_| false, lits),
            other => other.clone(),
        };
        format!("{r:?}")
    }

    #[test]
    fn literal_templates_route_like_exact_plans() {
        let m = map();
        let cache = PlanCache::new(100);
        let shapes = [
            "SELECT * FROM users WHERE id = {}",
            "SELECT * FROM users WHERE id = -{}",
            "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = {} AND o.id = 7",
            "SELECT * FROM users WHERE id IN ({}, 3, 900)",
            "UPDATE users SET name = 'x' WHERE id = {}",
            "INSERT INTO users (id, name) VALUES ({}, 'n')",
            "SELECT * FROM users WHERE id = '{}'",
            "SELECT * FROM users WHERE id = {}.0",
            "SELECT * FROM users WHERE id = {}.5",
        ];
        for shape in shapes {
            for v in ["1", "2", "17", "4242", "99999999999", "abc"] {
                if v == "abc" && !shape.contains("'{}'") {
                    continue;
                }
                let sql = shape.replace("{}", v);
                let want = format!("{:?}", route(&sql));
                let got = simple_route(&cache, &m, &sql);
                // Refusals may differ in wording only when a constant is invalid.
                if want.starts_with("Refuse") {
                    assert!(
                        got.starts_with("Refuse"),
                        "{sql}: template {got} vs exact {want}"
                    );
                } else {
                    assert_eq!(got, want, "{sql}");
                }
            }
        }
        // The shapes above were planned once each (templates reused across values).
        let n = cache.templates.read().len();
        assert!((5..=shapes.len()).contains(&n), "{n} templates");
        // Statements whose plan depends on values are never templated.
        let (_, sc) = cache
            .get_simple(&m, "SELECT * FROM users ORDER BY id LIMIT 5")
            .unwrap();
        assert!(sc.is_none());
        let (_, sc) = cache.get_simple(&m, "SET search_path = 'x'").unwrap();
        assert!(sc.is_none());
    }
}
