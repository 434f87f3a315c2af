//! Where a sharded COPY's key sits in each row, and for `FORMAT binary` whether the proxy can
//! read it: the key column's type must send the binary form the map's key type decodes, and a
//! generated column the proxy appends must be an integer it can encode.
//!
//! Read from the shard connection the COPY runs on (inside a transaction block it sees the
//! block's own DDL), when the statement has no column list or is binary.

use super::copy_in::lost;
use super::relay::RelayError;
use super::Session;
use crate::error::ProxyError;
use crate::routing::copyplan::{CopyPlan, CopyTarget};
use crate::routing::copysplit::{key_type_accepts, IntWidth};

/// The rows of a sharded COPY as the splitter reads them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    /// The key's field (0-based; the appended field when the key is the generated column).
    pub key: usize,
    /// Fields per row as the client sends them.
    pub columns: usize,
    /// Binary: the generated column's width (`None` without one, or in text format).
    pub generated: Option<IntWidth>,
}

/// One column: name, base type name, type category.
struct Column {
    name: String,
    typname: String,
    category: String,
}

/// The columns of `relation` (stored generated columns left out, as a COPY without column
/// list leaves them), in one value: fields separated by chr(31), columns by chr(30); a
/// domain is read as its base type.
fn columns_sql(relation: &str) -> String {
    format!(
        "SELECT string_agg(concat_ws(chr(31), a.attname, bt.typname, bt.typcategory), chr(30) ORDER BY a.attnum) \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
         WHERE a.attrelid = {}::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''",
        crate::quote::literal(&crate::quote::qualified(relation)),
    )
}

fn parse_columns(v: &str) -> Option<Vec<Column>> {
    v.split('\u{1e}')
        .map(|c| {
            let mut f = c.split('\u{1f}');
            let col = Column {
                name: f.next()?.to_string(),
                typname: f.next()?.to_string(),
                category: f.next()?.to_string(),
            };
            f.next().is_none().then_some(col)
        })
        .collect()
}

impl Session {
    /// The layout of a sharded COPY's rows (`None` for a reference table), read on
    /// connection `ci` when needed; an error the client gets when the COPY cannot be split.
    pub(super) async fn copy_layout(
        &mut self,
        plan: &CopyPlan,
        ci: usize,
    ) -> Result<Result<Option<Layout>, ProxyError>, RelayError> {
        let (table, listed) = match &plan.target {
            CopyTarget::Sharded { table, columns } => (table.clone(), *columns),
            CopyTarget::Reference => return Ok(Ok(None)),
        };
        if let (Some((key, columns)), false) = (listed, plan.binary) {
            return Ok(Ok(Some(Layout {
                key,
                columns,
                generated: None,
            })));
        }
        let shard = self.conns[ci].shard;
        let v = self.conns[ci]
            .query_value(&columns_sql(&plan.relation))
            .await
            .map_err(lost(shard))?;
        let not_found = || {
            ProxyError::Unsupported(format!(
                "COPY into {}: cannot find shard key column {} among the table's columns on shard {}",
                plan.relation,
                table.key,
                self.shard_name(shard)
            ))
        };
        let Some(cols) = v.as_deref().and_then(parse_columns) else {
            return Ok(Err(not_found()));
        };
        let Some(key_col) = cols.iter().position(|c| c.name == table.key) else {
            return Ok(Err(not_found()));
        };
        let (key, columns) = listed.unwrap_or((key_col, cols.len()));
        let mut generated = None;
        if plan.binary {
            let k = &cols[key_col];
            if !key_type_accepts(table.key_type, &k.typname, &k.category) {
                return Ok(Err(ProxyError::Unsupported(format!(
                    "binary COPY into {}: shard key column {} has type {}, whose binary form is not the map's key type {}; use FORMAT text or csv",
                    plan.relation, table.key, k.typname, table.key_type
                ))));
            }
            if let Some(g) = &plan.generated {
                let ty = cols
                    .iter()
                    .find(|c| c.name == g.column.name)
                    .map(|c| c.typname.as_str());
                match ty.and_then(IntWidth::of) {
                    Some(w) => generated = Some(w),
                    None => {
                        return Ok(Err(ProxyError::Unsupported(format!(
                            "binary COPY into {} leaves out generated column {} (type {}), whose values the proxy cannot encode; list the column and give its values, or use FORMAT text or csv",
                            plan.relation,
                            g.column.name,
                            ty.unwrap_or("unknown")
                        ))))
                    }
                }
            }
        }
        Ok(Ok(Some(Layout {
            key,
            columns,
            generated,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_read_from_one_value() {
        let cols = parse_columns("id\u{1f}int8\u{1f}N\u{1e}name\u{1f}varchar\u{1f}S").unwrap();
        assert_eq!(cols.len(), 2);
        assert_eq!(
            (
                cols[1].name.as_str(),
                cols[1].typname.as_str(),
                cols[1].category.as_str()
            ),
            ("name", "varchar", "S")
        );
        assert!(parse_columns("id\u{1f}int8").is_none());
    }
}
