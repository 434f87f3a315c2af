//! The router: SQL text -> parsed, classified statements with a route each.
//!
//! Parsing uses pg_query (the Postgres grammar itself). The analysis is conservative:
//! a statement goes to one shard only when every sharded table it reads or writes is
//! pinned to a key by an equality in the top-level `WHERE`/`JOIN ON` conjuncts (directly,
//! or through an equi-join on the shard keys of co-located tables); it scatters to all
//! shards only where concatenating the per-shard results equals the single-Postgres
//! answer; anything else is refused with an error that names the construct.
//! Plans are cached by SQL text ([`PlanCache`]).
//!
//! Files: `stmt` (plan types), `classify` ([`plan`]), `query` and `clauses` (SELECT/UPDATE/
//! DELETE over FROM/WHERE), `writes` (INSERT, key UPDATE), `key_src`, `resolve` ([`resolve_keys`]),
//! `split` (multi-row INSERT), `generate` (INSERTs completed with generated values), `sql_prepare`
//! and `substitute` (SQL PREPARE/EXECUTE, [`expand`]), `session`, `notify`, `explain`, `template` and
//! `cache` ([`PlanCache`]).

mod array_split;
mod cache;
mod classify;
mod clauses;
mod cursor;
mod explain;
mod from_values;
mod generate;
mod insert_lex;
mod key_src;
mod notify;
mod query;
mod resolve;
mod session;
mod split;
mod sql_prepare;
mod stmt;
mod substitute;
mod temp_function;
mod template;
mod writes;

pub use array_split::{ArrayPart, ArraySplit};
pub use cache::{PlanCache, PLAN_CACHE_CAPACITY};
pub use classify::plan;
pub use cursor::{CursorCmd, Declare, Fetch, FETCH_ALL};
pub use explain::ExplainPlan;
pub use generate::{Generate, SlotText};
pub use insert_lex::max_param;
pub use key_src::{BoundSrc, RangeGroup};
pub use resolve::resolve_keys;
pub use split::{BindParams, InsertSplit, RowKey, SplitPart};
pub use sql_prepare::{ExecWrap, Slot, SqlError, SqlExecute, SqlPrepare};
pub use stmt::{
    Execution, KeyRoute, NotifyCmd, PidArg, Plan, RouteSpec, SavepointOp, SessionCall, SessionFn,
    StmtKind, StmtPlan, TextArg, TpcOp,
};
pub use substitute::expand;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::keys::KeyValue;
    use crate::sharding::shardmap::ShardMap;

    pub(super) fn map() -> ShardMap {
        ShardMap::from_yaml_str(
            "users:\n  - { name: app, password: x }\n\
             shards:\n  - { name: s0, url: \"postgres://p@h:1/d\" }\n  - { name: s1, url: \"postgres://p@h:2/d\" }\n  - { name: s2, url: \"postgres://p@h:3/d\" }\n\
             tables:\n  users: { key: id, type: bigint, strategy: hash }\n  orders: { key: user_id, type: bigint, strategy: hash }\n  countries: { strategy: reference }\n",
            "test",
        )
        .unwrap()
    }

    pub(super) fn route(sql: &str) -> RouteSpec {
        plan(&map(), sql).unwrap().stmts[0].route.clone()
    }

    #[test]
    fn range_predicates_narrow_with_constants_and_parameters() {
        let m = ShardMap::from_yaml_str(
            "users:\n  - { name: app, password: x }\n\
             shards:\n  - { name: s0, url: \"postgres://p@h:1/d\" }\n  - { name: s1, url: \"postgres://p@h:2/d\" }\n  - { name: s2, url: \"postgres://p@h:3/d\" }\n\
             tables:\n  events:\n    key: created_at\n    type: timestamptz\n    strategy: range\n    ranges:\n      - { below: \"2025-01-01\", shard: s0 }\n      - { below: \"2026-01-01\", shard: s1 }\n      - { shard: s2 }\n",
            "test",
        )
        .unwrap();
        let route = |sql: &str| plan(&m, sql).unwrap().stmts[0].route.clone();
        let shards = |r: RouteSpec| match r {
            RouteSpec::Shard(s) => vec![s],
            RouteSpec::Subset(set) => set.iter().collect(),
            RouteSpec::All => vec![0, 1, 2],
            other => panic!("{other:?}"),
        };
        let c = "SELECT * FROM events WHERE created_at >= '2025-03-01 00:00:00+00' AND created_at < '2025-04-01 00:00:00+00'";
        assert_eq!(shards(route(c)), vec![1]);
        let c = "SELECT * FROM events WHERE created_at BETWEEN '2024-06-01 00:00:00+00' AND '2025-06-01 00:00:00+00'";
        assert_eq!(shards(route(c)), vec![0, 1]);
        // Offset-less: widened by the largest UTC offsets, so a bound near a range edge
        // includes the neighbouring shard.
        let c = "SELECT * FROM events WHERE created_at >= '2025-12-31 20:00' AND created_at < '2026-02-01'";
        assert_eq!(shards(route(c)), vec![1, 2]);
        // Parameters: decided at Bind.
        let r = route("SELECT * FROM events WHERE created_at >= $1 AND created_at < $2");
        let RouteSpec::Keys(kr) = r else {
            panic!("{r:?}")
        };
        let resolve = |a: &str, b: Option<&str>| {
            let params = [Some(a.as_bytes()), b.map(str::as_bytes)];
            shards(resolve_keys(
                &m,
                &kr,
                &params,
                |_| false,
                Default::default(),
            ))
        };
        assert_eq!(
            resolve("2025-03-01 00:00:00+00", Some("2025-04-01 00:00:00+00")),
            vec![1]
        );
        assert_eq!(
            resolve("2024-03-01 00:00:00+00", Some("2027-01-01 00:00:00+00")),
            vec![0, 1, 2]
        );
        // A NULL bound matches no row: any one shard answers.
        let r = resolve_keys(
            &m,
            &kr,
            &[Some(b"2025-03-01 00:00:00+00"), None],
            |_| false,
            Default::default(),
        );
        assert!(matches!(r, RouteSpec::Any), "{r:?}");
        // Binary timestamptz (microseconds since 2000-01-01): 2025-03-01 is in s1's range.
        let us: i64 = 794_016_000 * 1_000_000;
        let b = us.to_be_bytes();
        let r = resolve_keys(&m, &kr, &[Some(&b), Some(&b)], |_| true, Default::default());
        // created_at >= t AND created_at < t: empty interval, but ranges overlap at most s1.
        assert!(shards(r).iter().all(|&s| s == 1));
    }

    #[test]
    fn split_insert_renumbers_parameters_per_shard() {
        let m = map();
        let p = plan(
            &m,
            "INSERT INTO users (id, name) VALUES ($1, $2), ($3, $4), ($5, 'c') RETURNING id, $6::text",
        )
        .unwrap();
        let split = p.stmts[0].split().cloned().expect("split");
        // Keys 1, 2, 3: find two that land on different shards.
        let shard = |k: i64| m.hash_shard(&KeyValue::Int(k));
        let params: Vec<Option<&[u8]>> = vec![
            Some(b"1"),
            Some(b"a"),
            Some(b"2"),
            Some(b"b"),
            Some(b"3"),
            Some(b"tag"),
        ];
        let parts = split.statements(&m, Some((&params, &|_| false))).unwrap();
        let total_rows: usize = parts
            .iter()
            .map(|p| p.sql.matches("), (").count() + 1)
            .sum();
        assert_eq!(total_rows, 3, "{parts:?}");
        for part in &parts {
            // Every shard's text uses $1.. densely, ending with the RETURNING parameter.
            let n = part.params.len();
            assert!(part.sql.contains(&format!("${n}::text")), "{part:?}");
            assert_eq!(*part.params.last().unwrap(), 5, "{part:?}");
            for (k, &i) in part.params.iter().enumerate() {
                assert!(part.sql.contains(&format!("${}", k + 1)), "{part:?} {i}");
            }
            let keys: Vec<i64> = part
                .params
                .iter()
                .filter(|&&i| i % 2 == 0 && i < 5)
                .map(|&i| (i / 2 + 1) as i64)
                .collect();
            assert!(keys.iter().all(|&k| shard(k) == part.shard), "{part:?}");
        }
        assert_eq!(
            parts
                .iter()
                .map(|p| p.shard)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            parts.len()
        );
        // A NULL key is refused.
        let mut nul = params.clone();
        nul[2] = None;
        assert!(split.statements(&m, Some((&nul, &|_| false))).is_err());
    }

    #[test]
    fn insert_select_keeps_rows_on_their_shard() {
        let shard_of = |k: i64| map().hash_shard(&KeyValue::Int(k));
        let r = route("INSERT INTO orders (user_id, id) SELECT id, 1 FROM users WHERE id = 5");
        assert!(
            matches!(r, RouteSpec::Shard(s) if s == shard_of(5)),
            "{r:?}"
        );
        let r = route("INSERT INTO orders (user_id, id) SELECT u.id, u.id FROM users u");
        assert!(matches!(r, RouteSpec::All), "{r:?}");
        let r = route("INSERT INTO orders (user_id, id) SELECT 5, 1 FROM countries");
        assert!(
            matches!(r, RouteSpec::Shard(s) if s == shard_of(5)),
            "{r:?}"
        );
        for sql in [
            "INSERT INTO orders (user_id, id) SELECT score, id FROM users",
            "INSERT INTO orders (user_id, id) SELECT id, count(*) FROM users GROUP BY id",
            "INSERT INTO orders (user_id, id) SELECT id, 1 FROM users ORDER BY id LIMIT 3",
            "INSERT INTO orders (user_id, id) SELECT 7, 1 FROM users WHERE id = 5",
            "INSERT INTO orders (user_id, id) SELECT code::bigint, 1 FROM countries",
        ] {
            match route(sql) {
                RouteSpec::Refuse(e) => assert!(e.to_string().contains("orders"), "{sql}: {e}"),
                r if sql.contains("7, 1") && shard_of(7) == shard_of(5) => {
                    assert!(matches!(r, RouteSpec::Shard(_)))
                }
                r => panic!("{sql}: {r:?}"),
            }
        }
    }

    #[test]
    fn colocated_subqueries_run_per_shard() {
        for sql in [
            "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)",
            "SELECT * FROM users u WHERE u.id IN (SELECT o.user_id FROM orders o WHERE o.id > 3)",
            "SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u",
            "DELETE FROM orders o WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = o.user_id)",
        ] {
            assert!(
                matches!(route(sql), RouteSpec::All),
                "{sql}: {:?}",
                route(sql)
            );
        }
        // Pinned by the outer key: one shard.
        let r = route("SELECT * FROM users u WHERE u.id = 7 AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)");
        assert!(matches!(r, RouteSpec::Shard(_)), "{r:?}");
    }

    #[test]
    fn subqueries_across_shards_are_refused() {
        for sql in [
            "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = u.id)",
            "SELECT * FROM users WHERE score > (SELECT avg(amount) FROM orders)",
            "SELECT * FROM users u WHERE u.id IN (SELECT o.id FROM orders o)",
            "SELECT * FROM users u WHERE u.id IN (SELECT o.user_id FROM orders o LIMIT 3)",
        ] {
            match route(sql) {
                RouteSpec::Refuse(e) => assert!(e.to_string().contains("subquery"), "{e}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn decimal_literals_compare_by_value() {
        let two = route("SELECT * FROM users WHERE id = 2");
        let two_dec = route("SELECT * FROM users WHERE id = 2.000");
        match (two, two_dec) {
            (RouteSpec::Shard(a), RouteSpec::Shard(b)) => assert_eq!(a, b),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route("SELECT * FROM users WHERE id = 1.5"),
            RouteSpec::Any
        ));
        assert!(matches!(
            route("SELECT * FROM users WHERE id = 2e0"),
            RouteSpec::All
        ));
    }

    /// Sequelize's findOrCreate script: the temporary function goes to the shard of the key
    /// its INSERT writes, the call and the DROP follow it, so the script has one shard.
    #[test]
    fn temporary_functions_follow_their_body() {
        let script = |id: &str| {
            format!(
                "CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response \"users\", OUT sequelize_caught_exception text) \
                 RETURNS RECORD AS $func_1a$ BEGIN INSERT INTO \"users\" (\"id\",\"name\") VALUES ({id},'x') RETURNING * INTO response; \
                 EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS sequelize_caught_exception = PG_EXCEPTION_DETAIL; \
                 END $func_1a$ LANGUAGE plpgsql; \
                 SELECT (testfunc.response).*, testfunc.sequelize_caught_exception FROM pg_temp.testfunc(); \
                 DROP FUNCTION IF EXISTS pg_temp.testfunc();"
            )
        };
        let p = plan(&map(), &script("7")).unwrap();
        let want = route("SELECT * FROM users WHERE id = 7");
        match (&p.stmts[0].route, want) {
            (RouteSpec::Shard(a), RouteSpec::Shard(b)) => assert_eq!(*a, b),
            other => panic!("{other:?}"),
        }
        assert!(p.stmts[0].dirties);
        assert!(
            matches!(p.stmts[1].route, RouteSpec::Any),
            "{:?}",
            p.stmts[1].route
        );
        assert!(
            matches!(p.stmts[2].route, RouteSpec::Any),
            "{:?}",
            p.stmts[2].route
        );
        // A body whose key is not a constant reaches every shard: refused.
        let p = plan(&map(), &script("(SELECT max(id) FROM users)")).unwrap();
        assert!(
            matches!(p.stmts[0].route, RouteSpec::Refuse(_)),
            "{:?}",
            p.stmts[0].route
        );
    }

    #[test]
    fn cursors_over_several_shards_are_merged() {
        assert!(matches!(
            route("DECLARE c CURSOR FOR SELECT * FROM users ORDER BY id"),
            RouteSpec::All
        ));
        let p = plan(
            &map(),
            "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM users ORDER BY id",
        )
        .unwrap();
        match p.stmts[0].cursor() {
            Some(CursorCmd::Declare(d)) => {
                assert!(d.hold && d.merge.is_ok() && d.name == "c", "{d:?}");
            }
            other => panic!("{other:?}"),
        }
        let p = plan(&map(), "FETCH BACKWARD 2 FROM c").unwrap();
        assert!(matches!(p.stmts[0].cursor(), Some(CursorCmd::Fetch(f)) if f.forward.is_none()));
        let p = plan(&map(), "MOVE ALL IN c").unwrap();
        assert!(
            matches!(p.stmts[0].cursor(), Some(CursorCmd::Fetch(f)) if f.is_move && f.forward == Some(FETCH_ALL))
        );
        assert!(matches!(
            route("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = 3"),
            RouteSpec::Shard(_)
        ));
        assert!(matches!(route("FETCH 10 FROM c"), RouteSpec::Any));
    }

    #[test]
    fn key_lists_name_a_subset() {
        match route("SELECT * FROM users WHERE id IN (1, 2, 3, 4, 5, 6)") {
            RouteSpec::Subset(set) => assert!(set.len() >= 2, "{set:?}"),
            other => panic!("{other:?}"),
        }
    }
}
