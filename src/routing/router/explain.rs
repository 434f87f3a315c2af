//! EXPLAIN support: the options of an EXPLAIN, and what the proxy adds to a text-format
//! one ([`ExplainPlan`]: the merge, and the EXPLAIN of the query the shards really run).

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

/// An EXPLAIN option's value (lowercased; "true" when given without a value).
pub(super) fn explain_option(e: &protobuf::ExplainStmt, name: &str) -> Option<String> {
    e.options.iter().find_map(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case(name) => {
            Some(match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::String(s)) => s.sval.to_ascii_lowercase(),
                Some(NodeEnum::Boolean(b)) => b.boolval.to_string(),
                Some(NodeEnum::AConst(c)) => match &c.val {
                    Some(Val::Sval(s)) => s.sval.to_ascii_lowercase(),
                    Some(Val::Boolval(b)) => b.boolval.to_string(),
                    Some(Val::Ival(i)) => (i.ival != 0).to_string(),
                    _ => "true".into(),
                },
                _ => "true".into(),
            })
        }
        _ => None,
    })
}

/// For a text-format EXPLAIN: how the explained statement's results are merged, and the
/// EXPLAIN of the query the shards really run (when the merge rewrites it).
pub(super) fn explain_merge(e: &protobuf::ExplainStmt) -> Option<ExplainPlan> {
    if explain_option(e, "format").is_some_and(|f| f != "text") {
        return None;
    }
    let mut shard_sql = None;
    let merge = match e.query.as_ref().and_then(|q| q.node.as_ref()) {
        Some(NodeEnum::SelectStmt(s)) => match crate::gather::plan::build("", s) {
            Ok(Some(g)) => {
                shard_sql = explain_of(e, &g.shard_sql);
                g.describe.clone()
            }
            Ok(None) => "concatenate shard results".into(),
            Err(e) => format!("refused: {e}"),
        },
        _ => "sum command tags".into(),
    };
    Some(ExplainPlan { merge, shard_sql })
}

/// `EXPLAIN (same options) <sql>`.
fn explain_of(e: &protobuf::ExplainStmt, sql: &str) -> Option<String> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let q = parsed.protobuf.stmts.first()?.stmt.clone()?;
    let ex = protobuf::ExplainStmt {
        query: Some(q),
        options: e.options.clone(),
    };
    NodeEnum::ExplainStmt(Box::new(ex))
        .deparse(Default::default())
        .ok()
}

/// What the proxy adds to a text-format EXPLAIN.
#[derive(Debug, Clone)]
pub struct ExplainPlan {
    /// How shard results are merged.
    pub merge: String,
    /// The EXPLAIN sent to the shards when they run a rewritten query.
    pub shard_sql: Option<String>,
}
