//! Reading the [`Catalog`](super::catalog::Catalog) from the shards ([`load`], [`refresh`]): the map's sharded and
//! reference tables' columns from every shard's `pg_attribute`, compared across shards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::catalog::{GenColumn, TableColumns, TableEntry};
use super::shard::ShardInfo;
use super::shardmap::{ShardMap, TableRule};

/// Reads every column of table `(schema, name)` pairs (`$1` schemas, `$2` names, schema
/// `public` for unqualified names), with what makes a column generated: its identity kind,
/// the sequence Postgres ties to it, and its default expression.
const COLUMNS_SQL: &str = "\
SELECT n.nspname, c.relname, a.attname, a.attidentity::text, \
       pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname), \
       pg_get_expr(d.adbin, d.adrelid), a.atttypid::int8 \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
JOIN unnest($1::text[], $2::text[]) AS want(nsp, rel) ON want.nsp = n.nspname AND want.rel = c.relname \
WHERE c.relkind IN ('r', 'p') \
ORDER BY n.nspname, c.relname, a.attnum";

/// Integer types a generated column may have (int2, int4, int8).
const INTEGER_TYPES: [i64; 3] = [21, 23, 20];

/// The sequence named by a default `nextval('name'::regclass)`, as written there.
fn nextval_sequence(expr: &str) -> Option<String> {
    let rest = expr.strip_prefix("nextval('")?;
    let end = rest.find("'::regclass)")?;
    Some(rest[..end].replace("''", "'"))
}

/// The map's sharded and reference tables as (schema, name) keys.
fn map_tables(map: &ShardMap) -> Vec<(String, String)> {
    map.tables()
        .filter(|(_, r)| matches!(r, TableRule::Sharded(_) | TableRule::Reference))
        .map(|(n, _)| match n.split_once('.') {
            Some((s, r)) if s != "public" => (s.to_string(), r.to_string()),
            Some((_, r)) => (String::new(), r.to_string()),
            None => (String::new(), n.to_string()),
        })
        .collect()
}

/// Reads the map's tables from one shard.
async fn load_shard(
    shard: &ShardInfo,
    want: &[(String, String)],
    timeout: Duration,
) -> Result<HashMap<(String, String), TableColumns>, String> {
    let client = shard
        .connect_control(timeout)
        .await
        .map_err(|e| format!("shard {}: {e}", shard.name))?;
    let schemas: Vec<&str> = want
        .iter()
        .map(|(s, _)| if s.is_empty() { "public" } else { s.as_str() })
        .collect();
    let names: Vec<&str> = want.iter().map(|(_, r)| r.as_str()).collect();
    let rows = tokio::time::timeout(timeout, client.query(COLUMNS_SQL, &[&schemas, &names]))
        .await
        .map_err(|_| format!("shard {}: catalog query timed out", shard.name))?
        .map_err(|e| format!("shard {}: {e}", shard.name))?;
    let mut out: HashMap<(String, String), TableColumns> = HashMap::new();
    for row in rows {
        let nsp: String = row.try_get(0).map_err(|e| e.to_string())?;
        let rel: String = row.try_get(1).map_err(|e| e.to_string())?;
        let col: String = row.try_get(2).map_err(|e| e.to_string())?;
        let identity: String = row.try_get(3).map_err(|e| e.to_string())?;
        let serial: Option<String> = row.try_get(4).map_err(|e| e.to_string())?;
        let default: Option<String> = row.try_get(5).map_err(|e| e.to_string())?;
        let ty: i64 = row.try_get(6).map_err(|e| e.to_string())?;
        let key = (if nsp == "public" { String::new() } else { nsp }, rel);
        add_column(
            out.entry(key).or_default(),
            col,
            &identity,
            serial,
            default,
            ty,
        );
    }
    Ok(out)
}

/// Adds column `col` to `t`, as a generated one when its identity kind (`a`, `d`) or its
/// default (`nextval(…)`) says so and its type (`ty`, an oid) is an integer.
fn add_column(
    t: &mut TableColumns,
    col: String,
    identity: &str,
    serial: Option<String>,
    default: Option<String>,
    ty: i64,
) {
    let sequence = if identity == "a" || identity == "d" {
        serial
    } else {
        default
            .as_deref()
            .and_then(nextval_sequence)
            .map(|named| serial.unwrap_or(named))
    };
    if let (Some(sequence), true) = (sequence, INTEGER_TYPES.contains(&ty)) {
        t.generated.push(GenColumn {
            name: col.clone(),
            sequence,
            always: identity == "a",
        });
    }
    t.columns.push(col);
}

/// One table's columns in one text value, for a connection that can only run simple
/// queries (a session's own, which sees its transaction's uncommitted DDL): fields
/// separated by chr(31), columns by chr(30); NULL when the table does not exist. Read it
/// with [`parse_table`].
pub fn table_sql(schema: &str, rel: &str) -> String {
    let schema = if schema.is_empty() { "public" } else { schema };
    format!(
        "SELECT string_agg(concat_ws(chr(31), a.attname, a.attidentity::text,            coalesce(pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname), ''),            coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.atttypid::int8::text), chr(30) ORDER BY a.attnum)          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum          WHERE c.relkind IN ('r', 'p') AND n.nspname = {} AND c.relname = {}",
        crate::quote::literal(schema),
        crate::quote::literal(rel)
    )
}

/// The columns [`table_sql`]'s value lists; `None` when it is malformed.
pub fn parse_table(text: &str) -> Option<TableColumns> {
    let mut t = TableColumns::default();
    for col in text.split('\u{1e}') {
        let f: Vec<&str> = col.split('\u{1f}').collect();
        let [name, identity, serial, default, ty] = f.as_slice() else {
            return None;
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        add_column(
            &mut t,
            name.to_string(),
            identity,
            some(serial),
            some(default),
            ty.parse().ok()?,
        );
    }
    Some(t)
}

/// Reads the map's sharded and reference tables from every shard and compares them.
/// Errors: a shard could not be read (nothing is installed then).
pub async fn load(
    map: &ShardMap,
    timeout: Duration,
) -> Result<HashMap<(String, String), TableEntry>, String> {
    let want = map_tables(map);
    // Per shard: its tables, or `None` when it could not be read (a shard that is down
    // does not stop INSERTs into the others; it is compared again at the next load).
    let mut per_shard: Vec<Option<HashMap<(String, String), TableColumns>>> =
        Vec::with_capacity(map.shards.len());
    if !want.is_empty() {
        let reads = map.shards.iter().map(|s| load_shard(s, &want, timeout));
        let mut first_error = None;
        for r in futures::future::join_all(reads).await {
            match r {
                Ok(t) => per_shard.push(Some(t)),
                Err(e) => {
                    tracing::warn!(error = %e, "a shard's table definitions could not be read");
                    first_error.get_or_insert(e);
                    per_shard.push(None);
                }
            }
        }
        if per_shard.iter().all(Option::is_none) {
            return Err(first_error.unwrap_or_default());
        }
    }
    let mut out = HashMap::new();
    for key in want {
        let seen: Vec<Option<&TableColumns>> = per_shard
            .iter()
            .filter_map(|m| m.as_ref().map(|m| m.get(&key)))
            .collect();
        let Some(first) = seen.iter().flatten().next() else {
            continue; // no shard has it (yet)
        };
        let name = if key.0.is_empty() {
            key.1.clone()
        } else {
            format!("{}.{}", key.0, key.1)
        };
        let readable: Vec<&str> = per_shard
            .iter()
            .zip(&map.shards)
            .filter(|(m, _)| m.is_some())
            .map(|(_, s)| s.name.as_str())
            .collect();
        let mut why = None;
        for (i, s) in seen.iter().enumerate() {
            let shard = readable.get(i).copied().unwrap_or("?");
            match s {
                // Not (yet) created there: an INSERT routed there fails on that shard.
                None => tracing::debug!(table = %name, %shard, "table missing on a shard"),
                Some(t) if t != first => {
                    why = Some(format!(
                        "table {name} differs between shards: {shard} has columns ({}) with generated ({}), {} has ({}) with ({})",
                        t.columns.join(", "),
                        gen_names(t),
                        readable.first().copied().unwrap_or("?"),
                        first.columns.join(", "),
                        gen_names(first),
                    ));
                    break;
                }
                _ => {}
            }
        }
        let entry = match why {
            Some(w) => {
                let mut generated: Vec<String> = seen
                    .iter()
                    .flatten()
                    .flat_map(|t| t.generated.iter().map(|g| g.name.clone()))
                    .collect();
                generated.sort();
                generated.dedup();
                TableEntry::Inconsistent(w, generated)
            }
            None => TableEntry::Columns(Arc::new((*first).clone())),
        };
        out.insert(key, entry);
    }
    Ok(out)
}

fn gen_names(t: &TableColumns) -> String {
    t.generated
        .iter()
        .map(|g| format!("{} from {}", g.name, g.sequence))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How often the catalog is read again without being asked.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Loads the catalog of `map` now, logging a failure; `true` when it loaded.
pub async fn refresh(map: &ShardMap) -> bool {
    match load(map, map.pool.connect_timeout).await {
        Ok(t) => {
            map.catalog.install(t);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the shards' table definitions (generated columns); INSERTs keep the last ones read");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nextval_defaults_name_their_sequence() {
        assert_eq!(
            nextval_sequence("nextval('app_ids_id_seq'::regclass)").as_deref(),
            Some("app_ids_id_seq")
        );
        assert_eq!(
            nextval_sequence("nextval('s.\"Odd''seq\"'::regclass)").as_deref(),
            Some("s.\"Odd'seq\"")
        );
        assert_eq!(nextval_sequence("now()"), None);
    }
}
