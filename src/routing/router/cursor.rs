//! Cursor statements (`DECLARE`, `FETCH`, `MOVE`, `CLOSE`): what the session needs to run a
//! cursor whose query spans shards. The session keeps such a cursor itself (a cursor of the
//! same name on each shard, merged FETCH by FETCH, see `session::cursors`); a cursor on one
//! shard is that shard's, and the session only remembers where it lives.

use std::sync::Arc;

use pg_query::{protobuf, NodeEnum};

use crate::error::ProxyError;
use crate::gather::GatherPlan;

/// `CURSOR_OPT_*` bits of `DeclareCursorStmt.options` (parsenodes.h).
const OPT_BINARY: i32 = 0x0001;
const OPT_SCROLL: i32 = 0x0002;
const OPT_HOLD: i32 = 0x0020;

/// Postgres's `FETCH_ALL` (LONG_MAX): `FETCH ALL`, `FETCH FORWARD ALL`.
pub const FETCH_ALL: i64 = i64::MAX;

/// A cursor statement.
#[derive(Debug, Clone)]
pub enum CursorCmd {
    /// `DECLARE name … CURSOR … FOR query`.
    Declare(Arc<Declare>),
    /// `FETCH`/`MOVE`.
    Fetch(Fetch),
    /// `CLOSE name`; `None` for `CLOSE ALL`.
    Close(Option<String>),
}

/// A `DECLARE`.
#[derive(Debug, Clone)]
pub struct Declare {
    /// The cursor's name.
    pub name: String,
    /// `WITH HOLD`: it outlives the transaction.
    pub hold: bool,
    /// `BINARY`: a simple-protocol FETCH returns binary values.
    pub binary: bool,
    /// `SCROLL` was asked for.
    pub scroll: bool,
    /// The cursor's query, as Postgres's deparser prints it back (the DECLARE holds no
    /// position of its query in the client's text).
    pub query: String,
    /// How its query is merged when it runs on several shards (`Err`: why it cannot be).
    pub merge: Result<Arc<GatherPlan>, ProxyError>,
}

/// A `FETCH` or `MOVE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The cursor's name.
    pub name: String,
    /// Rows forward (`FETCH_ALL` for all); `None` for any other direction (backward,
    /// absolute, relative, or a count of 0 or less).
    pub forward: Option<i64>,
    /// `MOVE`: no rows are returned.
    pub is_move: bool,
}

impl CursorCmd {
    /// The cursor the statement names (`None` for `CLOSE ALL`, and for a DECLARE, which
    /// makes one).
    pub fn target(&self) -> Option<&str> {
        match self {
            CursorCmd::Declare(_) => None,
            CursorCmd::Fetch(f) => Some(&f.name),
            CursorCmd::Close(n) => n.as_deref(),
        }
    }
}

/// The cursor command of a statement, when it is one. `scatters`: the DECLARE's query may
/// run on several shards (its merge plan is built only then).
pub(super) fn analyze(node: &NodeEnum, scatters: bool) -> Option<CursorCmd> {
    match node {
        NodeEnum::DeclareCursorStmt(d) => {
            let select = match d.query.as_ref().and_then(|q| q.node.as_ref()) {
                Some(NodeEnum::SelectStmt(s)) => Some(s),
                _ => None,
            };
            let query = select
                .and_then(|s| crate::gather::sqltree::deparse_select(s).ok())
                .unwrap_or_default();
            let merge = match select {
                Some(_) if scatters && !query.is_empty() => merge_plan(&query),
                _ => Err(ProxyError::Unsupported(
                    "DECLARE CURSOR over this statement on several shards is not supported".into(),
                )),
            };
            Some(CursorCmd::Declare(Arc::new(Declare {
                name: d.portalname.clone(),
                hold: d.options & OPT_HOLD != 0,
                binary: d.options & OPT_BINARY != 0,
                scroll: d.options & OPT_SCROLL != 0,
                query,
                merge,
            })))
        }
        NodeEnum::FetchStmt(f) => {
            let forward = (f.direction == protobuf::FetchDirection::FetchForward as i32
                && f.how_many > 0)
                .then_some(f.how_many);
            Some(CursorCmd::Fetch(Fetch {
                name: f.portalname.clone(),
                forward,
                is_move: f.ismove,
            }))
        }
        NodeEnum::ClosePortalStmt(c) => Some(CursorCmd::Close(
            (!c.portalname.is_empty()).then(|| c.portalname.clone()),
        )),
        _ => None,
    }
}

/// The merge plan of a cursor's query, planned from its deparsed text.
fn merge_plan(text: &str) -> Result<Arc<GatherPlan>, ProxyError> {
    let parsed = pg_query::parse(text, 0)
        .map_err(|e| ProxyError::Unsupported(format!("cannot plan the cursor's query: {e}")))?;
    let select = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|r| r.stmt.as_ref())
        .and_then(|n| n.node.as_ref());
    let Some(NodeEnum::SelectStmt(sel)) = select else {
        return Err(ProxyError::Unsupported(
            "cannot plan the cursor's query".into(),
        ));
    };
    match crate::gather::plan::build(text, sel)? {
        Some(g) => Ok(Arc::new(g)),
        None => Ok(Arc::new(GatherPlan::concatenation(text))),
    }
}
