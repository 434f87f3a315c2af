//! Scatter-gather: how a read that spans shards is split into per-shard queries and how
//! their results are merged so the client gets what one Postgres holding all rows would send.
//!
//! Two merge modes (chosen when the query is planned, see [`plan::build`]):
//! - **Stream**: every shard runs the query (with `LIMIT offset+limit` pushed down and the
//!   ORDER BY keys appended as hidden binary columns); the proxy k-way merges the sorted
//!   streams on those keys, applies OFFSET/LIMIT and strips the hidden columns. Memory: one
//!   row per shard. Used for ORDER BY / LIMIT / OFFSET without aggregates or DISTINCT, when
//!   every sort key has a type the proxy compares exactly ([`datum`]); otherwise it falls
//!   back to Combine.
//! - **Combine**: every shard returns partial rows (partial aggregates per group, or its
//!   distinct/sorted rows); the proxy gathers them under the memory budget and finishes the
//!   query on one shard, which runs the final step over the gathered rows passed as array
//!   parameters (`unnest($n, …)`). Postgres itself then does the final grouping, HAVING,
//!   DISTINCT, ORDER BY (with its collations) and LIMIT, so types, numeric scales and text
//!   order are exactly Postgres's.

pub mod datum;
pub mod plan;
pub mod sqltree;

/// How the proxy finishes a query that runs on several shards.
#[derive(Debug, Clone)]
pub struct GatherPlan {
    /// The query each shard runs.
    pub shard_sql: String,
    /// Trailing columns of the shard result that only carry sort keys (stripped).
    pub hidden: usize,
    /// Sort keys, in ORDER BY order.
    pub sort: Vec<SortKey>,
    /// LIMIT the proxy applies.
    pub limit: Option<Count>,
    /// OFFSET the proxy applies.
    pub offset: Option<Count>,
    /// The merge mode.
    pub mode: Mode,
    /// One line for EXPLAIN and logs.
    pub describe: String,
}

impl GatherPlan {
    /// The rows of every shard one after the other, unchanged (a read whose result is the
    /// union of the shards' results: no ORDER BY, aggregate, DISTINCT or LIMIT).
    pub fn concatenation(sql: &str) -> GatherPlan {
        GatherPlan {
            shard_sql: sql.to_string(),
            hidden: 0,
            sort: Vec::new(),
            limit: None,
            offset: None,
            mode: Mode::Stream,
            describe: "concatenate the shards' rows".into(),
        }
    }
}

/// A LIMIT or OFFSET value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A constant.
    Const(i64),
    /// A Bind parameter (0-based).
    Param(usize),
}

/// Which shard-result column a sort key reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCol {
    /// A visible output column (0-based).
    Visible(usize),
    /// A hidden column (0-based among the hidden ones).
    Hidden(usize),
}

impl KeyCol {
    /// The column's position in a shard row with `visible` visible columns.
    pub fn index(self, visible: usize) -> usize {
        match self {
            KeyCol::Visible(i) => i,
            KeyCol::Hidden(h) => visible + h,
        }
    }
}

/// One ORDER BY item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The column holding the key.
    pub col: KeyCol,
    /// Descending.
    pub desc: bool,
    /// NULLs sort first.
    pub nulls_first: bool,
    /// An explicit COLLATE name, as written.
    pub collate: Option<String>,
}

/// How the shard results are merged.
#[derive(Debug, Clone)]
pub enum Mode {
    /// k-way merge (or concatenation when there are no sort keys) in the proxy.
    Stream,
    /// Gather partial rows, finish on one shard.
    Combine(Final),
}

/// The final step of a Combine.
#[derive(Debug, Clone)]
pub enum Final {
    /// Rows (no aggregation): `SELECT [DISTINCT [ON]] visible FROM partials ORDER BY keys LIMIT`.
    Rows {
        /// Plain DISTINCT.
        distinct: bool,
        /// DISTINCT ON keys (hidden columns).
        distinct_on: Vec<usize>,
    },
    /// Grouped/aggregated: the original statement over the partial rows.
    Grouped {
        /// The final SELECT with `__sw_agg_N__` placeholders for the combined aggregates,
        /// reading `_sw_partials(p0, p1, …)`.
        template: String,
        /// The aggregates, by placeholder number.
        aggs: Vec<FinalAgg>,
    },
}

/// How one aggregate is combined from its partial columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalAgg {
    /// Which aggregate.
    pub kind: AggKind,
    /// Partial columns it reads.
    pub cols: Vec<usize>,
    /// `agg(DISTINCT x)`: `cols[0]` holds the distinct values.
    pub distinct: bool,
}

/// Aggregates that can be combined from per-shard partial results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// count(*) / count(x): partial counts are summed.
    Count,
    /// sum(x).
    Sum,
    /// min(x).
    Min,
    /// max(x).
    Max,
    /// avg(x): from partial sum, count (and avg, for floating point).
    Avg,
    /// bool_and / every.
    BoolAnd,
    /// bool_or.
    BoolOr,
    /// bit_and.
    BitAnd,
    /// bit_or.
    BitOr,
    /// bit_xor.
    BitXor,
}

impl AggKind {
    /// The aggregate for a function name, when it can be combined.
    pub fn from_name(name: &str) -> Option<AggKind> {
        Some(match name {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" => AggKind::Avg,
            "bool_and" | "every" => AggKind::BoolAnd,
            "bool_or" => AggKind::BoolOr,
            "bit_and" => AggKind::BitAnd,
            "bit_or" => AggKind::BitOr,
            "bit_xor" => AggKind::BitXor,
            _ => return None,
        })
    }

    fn sql_name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
            AggKind::BoolAnd => "bool_and",
            AggKind::BoolOr => "bool_or",
            AggKind::BitAnd => "bit_and",
            AggKind::BitOr => "bit_or",
            AggKind::BitXor => "bit_xor",
        }
    }
}

/// Type OIDs the combine step needs to know.
mod oid {
    pub const INT8: u32 = 20;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const INTERVAL: u32 = 1186;
}

impl FinalAgg {
    /// SQL combining the partial columns, given the partial result's column types.
    pub fn combine_sql(&self, types: &[u32]) -> String {
        let p = |i: usize| format!("p{}", self.cols.get(i).copied().unwrap_or(0));
        let ty = |i: usize| {
            self.cols
                .get(i)
                .and_then(|c| types.get(*c))
                .copied()
                .unwrap_or(0)
        };
        if self.distinct {
            return format!("({}(DISTINCT {}))", self.kind.sql_name(), p(0));
        }
        match self.kind {
            AggKind::Count => format!("(COALESCE(sum({}), 0)::int8)", p(0)),
            // sum(int8 partial sums) would be numeric; the original sum(int2/int4) is int8.
            AggKind::Sum if ty(0) == oid::INT8 => format!("(sum({})::int8)", p(0)),
            AggKind::Avg => {
                let (s, c, a) = (p(0), p(1), p(2));
                match ty(0) {
                    // float4 partial sums lose precision: weight the per-shard float8 averages.
                    oid::FLOAT4 => {
                        format!("(sum({a} * {c}) / NULLIF(sum({c}), 0)::float8)")
                    }
                    oid::FLOAT8 => format!("(sum({s}) / NULLIF(sum({c}), 0)::float8)"),
                    oid::INTERVAL => format!("(sum({s}) / NULLIF(sum({c}), 0)::float8)"),
                    // int8/numeric: numeric division of exact sums, as Postgres's own avg does.
                    _ => format!("(sum({s})::numeric / NULLIF(sum({c}), 0)::numeric)"),
                }
            }
            k => format!("({}({}))", k.sql_name(), p(0)),
        }
    }
}

/// The placeholder for aggregate `i` in a [`Final::Grouped`] template.
pub fn agg_placeholder(i: usize) -> String {
    format!("__sw_agg_{i}__")
}

/// Name of the relation holding the gathered partial rows in the final step.
pub const PARTIALS: &str = "_sw_partials";

/// The final SQL of a Combine: the partial rows arrive as one array parameter per column,
/// numbered after the client's `n_params` parameters.
pub fn final_sql(
    plan: &GatherPlan,
    fin: &Final,
    partial_types: &[u32],
    n_params: usize,
    visible: usize,
    limit: Option<i64>,
    offset: Option<i64>,
) -> String {
    let ncols = partial_types.len();
    let mut sql = format!("WITH {PARTIALS} AS (SELECT * FROM unnest(");
    for i in 0..ncols {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", n_params + i + 1));
    }
    sql.push_str(") AS _sw_u(");
    for i in 0..ncols {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("p{i}"));
    }
    sql.push_str(")) ");
    match fin {
        Final::Grouped { template, aggs } => {
            let mut body = template.clone();
            for (i, a) in aggs.iter().enumerate() {
                body = body.replace(&agg_placeholder(i), &a.combine_sql(partial_types));
            }
            sql.push_str(&body);
        }
        Final::Rows {
            distinct,
            distinct_on,
        } => {
            let col = |k: &KeyCol| format!("p{}", k.index(visible));
            sql.push_str("SELECT ");
            if *distinct {
                sql.push_str("DISTINCT ");
            } else if !distinct_on.is_empty() {
                let on: Vec<String> = distinct_on
                    .iter()
                    .map(|h| col(&KeyCol::Hidden(*h)))
                    .collect();
                sql.push_str(&format!("DISTINCT ON ({}) ", on.join(", ")));
            }
            let cols: Vec<String> = (0..visible).map(|i| format!("p{i}")).collect();
            sql.push_str(&cols.join(", "));
            sql.push_str(&format!(" FROM {PARTIALS}"));
            if !plan.sort.is_empty() {
                let keys: Vec<String> = plan
                    .sort
                    .iter()
                    .map(|k| {
                        let mut s = col(&k.col);
                        if let Some(c) = &k.collate {
                            s.push_str(&format!(" COLLATE \"{}\"", c.replace('"', "\"\"")));
                        }
                        s.push_str(if k.desc { " DESC" } else { " ASC" });
                        s.push_str(if k.nulls_first {
                            " NULLS FIRST"
                        } else {
                            " NULLS LAST"
                        });
                        s
                    })
                    .collect();
                sql.push_str(" ORDER BY ");
                sql.push_str(&keys.join(", "));
            }
            if let Some(l) = limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            if let Some(o) = offset {
                sql.push_str(&format!(" OFFSET {o}"));
            }
        }
    }
    sql
}
