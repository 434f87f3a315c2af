//! `COPY table FROM STDIN` into a sharded or reference table: what the session needs to
//! split (or replicate) the client's data, read from the parsed statement.
//!
//! Every shard receives the client's statement text unchanged and the rows that belong to
//! it, byte for byte ([`crate::routing::copysplit`] cuts the stream at row boundaries), so each shard
//! parses its rows exactly as one Postgres would have. A `HEADER` row is sent to every shard
//! ahead of its rows. `FORMAT binary` streams are cut at tuple boundaries and each shard gets
//! a binary stream of its own. Options the proxy cannot honour while splitting are refused
//! here.

use std::sync::Arc;

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

use crate::error::ProxyError;
use crate::routing::copysplit::CopyFormat;
use crate::sharding::strategy::Sharded;

/// Where the rows of a `COPY … FROM STDIN` go.
#[derive(Debug)]
pub enum CopyTarget {
    /// A sharded table: each row to the shard of its key.
    Sharded {
        /// The table's rule.
        table: Arc<Sharded>,
        /// The key's position and the number of columns, when the statement lists its
        /// columns; `None`: all columns of the table, looked up on a shard.
        columns: Option<(usize, usize)>,
    },
    /// A reference table: every row to every shard.
    Reference,
}

/// A planned `COPY … FROM STDIN` into a sharded or reference table.
#[derive(Debug)]
pub struct CopyPlan {
    /// Where rows go.
    pub target: CopyTarget,
    /// The input format (text or CSV options; the text defaults when `binary`).
    pub format: CopyFormat,
    /// `FORMAT binary`.
    pub binary: bool,
    /// The table as named in the statement (for the catalog lookup and messages).
    pub relation: String,
    /// A generated column the column list leaves out: the proxy adds it to the list and
    /// appends a value to every row.
    pub generated: Option<CopyGen>,
}

/// A generated column whose values the proxy appends to a COPY's rows.
#[derive(Debug, Clone)]
pub struct CopyGen {
    /// The column and its sequence.
    pub column: crate::sharding::catalog::GenColumn,
    /// The table's schema ("" for unqualified) and name (the allocator's floor reads it).
    pub schema: String,
    /// The table.
    pub table: String,
}

impl CopyPlan {
    /// Whether the appended generated value is the row's shard key.
    pub fn generated_key(&self) -> bool {
        match (&self.generated, &self.target) {
            (Some(g), CopyTarget::Sharded { table, .. }) => g.column.name == table.key,
            _ => false,
        }
    }
}

fn unsupported(m: String) -> ProxyError {
    ProxyError::Unsupported(m)
}

/// A DefElem argument as text (`csv`, `'|'`, `true`, `1`); `None` when absent.
fn arg_text(arg: Option<&protobuf::Node>) -> Option<String> {
    match arg?.node.as_ref()? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::Boolean(b) => Some(b.boolval.to_string()),
        NodeEnum::Integer(i) => Some(i.ival.to_string()),
        NodeEnum::AConst(c) => match &c.val {
            Some(Val::Sval(s)) => Some(s.sval.clone()),
            Some(Val::Ival(i)) => Some(i.ival.to_string()),
            Some(Val::Boolval(b)) => Some(b.boolval.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a FORCE_NULL / FORCE_NOT_NULL argument (a column list or `*`) names `key`.
fn names_key(arg: Option<&protobuf::Node>, key: &str) -> bool {
    match arg.and_then(|a| a.node.as_ref()) {
        Some(NodeEnum::AStar(_)) => true,
        Some(NodeEnum::List(l)) => l.items.iter().any(|i| match &i.node {
            Some(NodeEnum::String(s)) => s.sval.eq_ignore_ascii_case(key),
            Some(NodeEnum::AStar(_)) => true,
            _ => false,
        }),
        _ => false,
    }
}

/// One byte option (`DELIMITER`, `QUOTE`, `ESCAPE`), as Postgres requires.
fn one_byte(name: &str, v: Option<String>) -> Result<u8, ProxyError> {
    match v.as_deref().map(str::as_bytes) {
        Some([b]) if b.is_ascii() => Ok(*b),
        _ => Err(unsupported(format!(
            "COPY {name} must be a single one-byte character"
        ))),
    }
}

/// The column list of a COPY, as Postgres folds the names (empty: every column).
pub fn column_names(c: &protobuf::CopyStmt) -> Vec<&str> {
    c.attlist
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// Plans `COPY … FROM STDIN` into `table` (`None` for a reference table).
pub fn plan(
    c: &protobuf::CopyStmt,
    table: Option<&Arc<Sharded>>,
    generated: Option<CopyGen>,
) -> Result<CopyPlan, ProxyError> {
    let relation = c
        .relation
        .as_ref()
        .map(|r| {
            if r.schemaname.is_empty() {
                r.relname.clone()
            } else {
                format!("{}.{}", r.schemaname, r.relname)
            }
        })
        .unwrap_or_default();
    let key = table.map(|t| t.key.as_str()).unwrap_or("");
    let mut csv = false;
    let mut binary = false;
    let mut opts: Vec<(String, Option<&protobuf::Node>)> = Vec::new();
    for o in &c.options {
        if let Some(NodeEnum::DefElem(d)) = &o.node {
            let name = d.defname.to_ascii_lowercase();
            if name == "format" {
                match arg_text(d.arg.as_deref())
                    .map(|f| f.to_ascii_lowercase())
                    .as_deref()
                {
                    Some("csv") => csv = true,
                    Some("text") => csv = false,
                    Some("binary") => binary = true,
                    other => {
                        return Err(unsupported(format!(
                            "COPY format {} is not recognized",
                            other.unwrap_or("")
                        )))
                    }
                }
            } else {
                opts.push((name, d.arg.as_deref()));
            }
        }
    }
    let mut f = if csv {
        CopyFormat::csv()
    } else {
        CopyFormat::text()
    };
    let mut escape_given = false;
    for (name, arg) in opts {
        match name.as_str() {
            // Text and CSV options: the shards refuse them with binary, as Postgres does.
            "delimiter" | "null" | "quote" | "escape" | "header" | "force_not_null"
            | "force_null"
                if binary => {}
            "delimiter" => f.delimiter = one_byte("delimiter", arg_text(arg))?,
            "null" => f.null = arg_text(arg).unwrap_or_default().into_bytes(),
            "quote" => f.quote = one_byte("quote", arg_text(arg))?,
            "escape" => {
                f.escape = one_byte("escape", arg_text(arg))?;
                escape_given = true;
            }
            "header" => {
                f.header = !matches!(
                    arg_text(arg).map(|v| v.to_ascii_lowercase()).as_deref(),
                    Some("false" | "off" | "0")
                )
            }
            "force_not_null" => f.key_force_not_null = names_key(arg, key),
            "force_null" => f.key_force_null = names_key(arg, key),
            "freeze" | "force_quote" => {}
            other => {
                return Err(unsupported(format!(
                    "COPY option {} is not supported for COPY FROM STDIN into {relation} through the proxy",
                    other.to_ascii_uppercase()
                )))
            }
        }
    }
    if csv && !escape_given {
        f.escape = f.quote;
    }
    if binary {
        f = CopyFormat::text();
    }
    f.validate().map_err(|m| ProxyError::Backend {
        code: "22023".into(),
        message: m.into(),
    })?;
    let target = match table {
        None => CopyTarget::Reference,
        Some(t) => {
            let columns = if c.attlist.is_empty() {
                None
            } else {
                let names = column_names(c);
                let appended_key = generated.as_ref().is_some_and(|g| g.column.name == t.key);
                let pos = match names.iter().position(|n| *n == t.key) {
                    Some(p) => p,
                    // The key is the generated column the proxy appends.
                    None if appended_key => names.len(),
                    None => {
                        return Err(unsupported(format!(
                        "COPY into sharded table {relation} must include the shard key column {}",
                        t.key
                    )))
                    }
                };
                Some((pos, names.len()))
            };
            CopyTarget::Sharded {
                table: t.clone(),
                columns,
            }
        }
    };
    Ok(CopyPlan {
        target,
        format: f,
        binary,
        relation,
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_stmt(sql: &str) -> protobuf::CopyStmt {
        let p = pg_query::parse(sql, 0).unwrap();
        match p.protobuf.stmts[0]
            .stmt
            .as_ref()
            .unwrap()
            .node
            .as_ref()
            .unwrap()
        {
            NodeEnum::CopyStmt(c) => (**c).clone(),
            _ => panic!("not a COPY"),
        }
    }

    #[test]
    fn options_are_read() {
        let c = copy_stmt("COPY t (a, id, b) FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', FORCE_NOT_NULL (id))");
        let p = plan(&c, None, None).unwrap();
        assert!(p.format.csv && p.format.header && !p.format.key_force_not_null);
        assert_eq!(p.format.delimiter, b';');
        assert_eq!(p.format.escape, b'"');
        let c = copy_stmt("COPY t FROM STDIN CSV HEADER");
        let p = plan(&c, None, None).unwrap();
        assert!(p.format.csv && p.format.header);
        let c = copy_stmt("COPY t FROM STDIN (FORMAT binary)");
        assert!(plan(&c, None, None).unwrap().binary);
        let c = copy_stmt("COPY t FROM STDIN WITH BINARY FREEZE");
        assert!(plan(&c, None, None).unwrap().binary);
        let c = copy_stmt("COPY t FROM STDIN (FORMAT binary, ON_ERROR ignore)");
        assert!(plan(&c, None, None).is_err());
        let c = copy_stmt("COPY t FROM STDIN (DEFAULT 'x')");
        assert!(plan(&c, None, None).is_err());
        let c = copy_stmt("COPY t FROM STDIN (DELIMITER 'ab')");
        assert!(plan(&c, None, None).is_err());
    }
}
