//! INSERTs completed by the proxy before they are routed ([`Generate`]): the values of
//! generated columns (serial, identity: see [`crate::sharding::catalog`]) that the statement
//! leaves to their default, and the column list of an INSERT that has none.
//!
//! The plan of such an INSERT says what to add ([`Generate`]); the session takes fresh
//! values from the proxy's allocator and renders the completed text ([`Generate::render`]),
//! which is then planned and run like any INSERT: a generated shard key is a constant (or a
//! Bind parameter) the row is placed by. The edits are found again in each text by a small
//! lexer ([`shape`]), so one plan serves every text of a literal template.
//!
//! - a generated column missing from the column list gets a value in every row, appended
//!   to the list and to each row;
//! - `DEFAULT` in a generated column's place is replaced by a value;
//! - `DEFAULT VALUES` becomes a VALUES row of the generated columns;
//! - an INSERT without a column list gets one: the table's first columns, as many as a row
//!   has values (what Postgres does with such an INSERT);
//! - `GENERATED ALWAYS` identity columns that get values get `OVERRIDING SYSTEM VALUE`.

use std::fmt::Write as _;

use pg_query::protobuf::{self, OverridingKind};
use pg_query::NodeEnum;

use super::insert_lex::shape;
use crate::error::ProxyError;
use crate::quote::ident;
use crate::sharding::catalog::{GenColumn, TableColumns, TableEntry};
use crate::sharding::shardmap::{ShardMap, TableRule};

/// How to complete one INSERT (see the module docs).
#[derive(Debug)]
pub struct Generate {
    /// The target table's schema ("" for unqualified) and name.
    pub schema: String,
    /// The target table.
    pub table: String,
    /// The generated columns that get values.
    pub columns: Vec<GenColumn>,
    /// Per row: (generated column #, where its value goes), in the order values are taken.
    rows: Vec<Vec<(usize, Slot)>>,
    /// The column list's edit.
    cols: ColEdit,
    /// Add `OVERRIDING SYSTEM VALUE` before VALUES.
    overriding: bool,
    /// Instead of the above: an `INSERT … SELECT … FROM (VALUES …)` written as an INSERT …
    /// VALUES (which is then completed in its turn).
    from_values: Option<super::from_values::FromValues>,
    /// The table is not in the catalog: nothing to render until it is looked up (the
    /// statement is planned again then).
    pub unknown: bool,
}

/// Where a generated value goes in its row.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// In place of item #n (a `DEFAULT`).
    Replace(usize),
    /// After the row's last item.
    Append,
}

/// The column list's edit.
#[derive(Debug)]
enum ColEdit {
    /// Kept as written.
    Keep,
    /// Text added before the list's closing parenthesis.
    Append(String),
    /// A whole list (and a space) added before `OVERRIDING`/`VALUES`.
    Insert(String),
    /// `DEFAULT VALUES` replaced by this list and `VALUES`.
    DefaultValues(String),
}

/// How the values are written into the text.
pub enum SlotText<'a> {
    /// As integer constants (simple protocol), taken in order.
    Values(&'a [i64]),
    /// As Bind parameters `$first`, `$first+1`, … (extended protocol).
    Params(usize),
}

impl Generate {
    /// A completion of an INSERT into `rel` that changes nothing (filled in by the caller).
    fn nothing(rel: &protobuf::RangeVar) -> Generate {
        Generate {
            schema: schema_key(&rel.schemaname),
            table: rel.relname.clone(),
            columns: Vec::new(),
            rows: Vec::new(),
            cols: ColEdit::Keep,
            overriding: false,
            from_values: None,
            unknown: false,
        }
    }

    /// Values each generated column needs for one execution: (column #, count).
    pub fn counts(&self) -> Vec<(usize, usize)> {
        let mut c: Vec<(usize, usize)> = (0..self.columns.len()).map(|i| (i, 0)).collect();
        for row in &self.rows {
            for (g, _) in row {
                c[*g].1 += 1;
            }
        }
        c.retain(|(_, n)| *n > 0);
        c
    }

    /// The generated column of each value, in the order values are taken.
    pub fn slot_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.rows.iter().flat_map(|r| r.iter().map(|(g, _)| *g))
    }

    /// Appends `stmt` (this statement's text) completed to `out`. Errors: the text does not
    /// have the shape its plan was made for (an internal error).
    pub fn render(
        &self,
        stmt: &str,
        slots: SlotText<'_>,
        out: &mut String,
    ) -> Result<(), ProxyError> {
        if let Some(fv) = &self.from_values {
            return fv.render(stmt, out);
        }
        if self.unknown {
            // Looked up before and still unknown: the shards could not be read.
            return Err(ProxyError::Unavailable(format!(
                "the columns of table {} could not be read from the shards (needed to give its generated columns values unique across shards); retry when the shards are reachable",
                self.table
            )));
        }
        let bad = || ProxyError::Internal("an INSERT to complete has an unexpected shape".into());
        let sh = shape(stmt).ok_or_else(bad)?;
        let values_at = sh.values_kw.ok_or_else(bad)?;
        let mut next = 0usize;
        let mut slot = |out: &mut String| {
            match slots {
                SlotText::Values(v) => {
                    let _ = write!(out, "{}", v.get(next).copied().unwrap_or_default());
                }
                SlotText::Params(first) => {
                    let _ = write!(out, "${}", first + next);
                }
            }
            next += 1;
        };
        let overriding = if self.overriding {
            "OVERRIDING SYSTEM VALUE "
        } else {
            ""
        };
        let mut at = 0usize;
        let copy_to = |out: &mut String, to: usize, at: &mut usize| {
            out.push_str(stmt.get(*at..to).unwrap_or(""));
            *at = to;
        };
        if let ColEdit::DefaultValues(list) = &self.cols {
            let start = sh.default_kw.ok_or_else(bad)?;
            copy_to(out, start, &mut at);
            out.push_str(list);
            out.push(' ');
            out.push_str(overriding);
            out.push_str("VALUES (");
            for (k, _) in self
                .rows
                .first()
                .map(|r| r.as_slice())
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                if k > 0 {
                    out.push_str(", ");
                }
                slot(out);
            }
            out.push(')');
            at = values_at + "VALUES".len();
            copy_to(out, stmt.len(), &mut at);
            return Ok(());
        }
        match &self.cols {
            ColEdit::Append(more) => {
                let close = sh.cols_close.ok_or_else(bad)?;
                copy_to(out, close, &mut at);
                out.push_str(more);
            }
            ColEdit::Insert(list) => {
                copy_to(out, sh.overriding_kw.unwrap_or(values_at), &mut at);
                out.push_str(list);
                out.push(' ');
            }
            _ => {}
        }
        copy_to(out, values_at, &mut at);
        out.push_str(overriding);
        if sh.rows.len() != self.rows.len() {
            return Err(bad());
        }
        for (row, want) in sh.rows.iter().zip(&self.rows) {
            for (_, s) in want {
                match *s {
                    Slot::Replace(i) => {
                        let (a, b) = *row.items.get(i).ok_or_else(bad)?;
                        copy_to(out, a, &mut at);
                        slot(out);
                        at = b;
                    }
                    Slot::Append => {
                        copy_to(out, row.close, &mut at);
                        out.push_str(", ");
                        slot(out);
                    }
                }
            }
        }
        copy_to(out, stmt.len(), &mut at);
        Ok(())
    }
}

/// How an INSERT into a table the catalog knows is completed: `Ok(None)` when it needs
/// nothing. Errors: an INSERT the proxy would have to complete but cannot (`INSERT … SELECT`
/// leaving a generated column to its shards' sequences, shards that disagree on the table).
pub(super) fn plan_generate(
    map: &ShardMap,
    ins: &protobuf::InsertStmt,
) -> Result<Option<Generate>, ProxyError> {
    let Some(rel) = &ins.relation else {
        return Ok(None);
    };
    if !map.catalog.in_use() {
        return Ok(None); // not a serving proxy's map (`shardwire route`, unit tests)
    }
    let sharded = match map.table(&rel.schemaname, &rel.relname) {
        Some(TableRule::Sharded(_)) => true,
        Some(TableRule::Reference) => false,
        None => return Ok(None),
    };
    let cat = match map.catalog.table(&rel.schemaname, &rel.relname) {
        Some(TableEntry::Columns(c)) => c,
        Some(TableEntry::Inconsistent(why, generated)) => {
            // Nothing to complete when it names every column some shard generates and
            // gives each a value: the shards' definitions then do not matter here.
            let named_all = !ins.cols.is_empty()
                && generated.iter().all(|g| {
                    ins.cols
                        .iter()
                        .any(|c| matches!(&c.node, Some(NodeEnum::ResTarget(r)) if r.name == *g))
                });
            let defaults = ins.select_stmt.as_ref().is_none_or(|s| {
                s.node.as_ref().is_some_and(|n| {
                    n.nodes()
                        .iter()
                        .any(|(m, _, _, _)| matches!(m, pg_query::NodeRef::SetToDefault(_)))
                })
            });
            if named_all && !defaults {
                return Ok(None);
            }
            return Err(ProxyError::Unsupported(format!(
                "INSERT into {} needs its columns, but the shards disagree: {why}",
                rel.relname
            )));
        }
        // Not known (created behind the proxy's back, in the client's open transaction,
        // or nowhere): the session looks it up before it runs the statement.
        Some(TableEntry::Absent(_)) | None => {
            return Ok(Some(Generate {
                unknown: true,
                ..Generate::nothing(rel)
            }));
        }
    };
    let select = ins.select_stmt.as_ref().and_then(|s| s.node.as_ref());
    let named: Vec<&str> = ins
        .cols
        .iter()
        .filter_map(|c| match &c.node {
            Some(NodeEnum::ResTarget(r)) => Some(r.name.as_str()),
            _ => None,
        })
        .collect();
    let override_kind =
        OverridingKind::try_from(ins.r#override).unwrap_or(OverridingKind::Undefined);
    let values: Vec<&Vec<protobuf::Node>> = match select {
        None => Vec::new(), // DEFAULT VALUES
        Some(NodeEnum::SelectStmt(s)) if !s.values_lists.is_empty() => s
            .values_lists
            .iter()
            .filter_map(|r| match &r.node {
                Some(NodeEnum::List(l)) => Some(&l.items),
                _ => None,
            })
            .collect(),
        Some(NodeEnum::SelectStmt(sel)) if super::from_values::plan(sel).is_some() => {
            // SELECT … FROM (VALUES …): its rows become VALUES rows, read by key.
            return Ok(Some(Generate {
                from_values: super::from_values::plan(sel),
                ..Generate::nothing(rel)
            }));
        }
        Some(_) => {
            // INSERT … SELECT: the proxy cannot give each row a value. (Without a column
            // list the SELECT fills the first columns; the router refuses that for sharded
            // tables anyway.)
            if named.is_empty() {
                return Ok(None);
            }
            if let Some(g) = cat
                .generated
                .iter()
                .find(|g| !named.contains(&g.name.as_str()))
            {
                return Err(ProxyError::Unsupported(format!(
                    "INSERT … SELECT into {} leaves {} to each shard's own sequence {}, which is not unique across shards; name the column and give its values (or insert with VALUES)",
                    rel.relname, g.name, g.sequence
                )));
            }
            return Ok(None);
        }
    };
    if select.is_none() {
        return Ok(default_values(rel, &cat, override_kind));
    }
    if override_kind == OverridingKind::OverridingUserValue && !cat.generated.is_empty() {
        // Postgres then replaces the values of identity columns (not serial ones) by their
        // shards' sequences: the proxy's values would not survive it.
        return Err(ProxyError::Unsupported(format!(
            "OVERRIDING USER VALUE into {} is not supported through the proxy (its identity values would come from each shard's own sequence); leave the clause out",
            rel.relname
        )));
    }
    // Every row must have one length, and fit the columns: else Postgres reports it.
    let width = values.first().map(|r| r.len()).unwrap_or(0);
    if values.iter().any(|r| r.len() != width) {
        return Ok(None);
    }
    let names: Vec<String> = if named.is_empty() {
        if width > cat.columns.len() {
            return Ok(None);
        }
        cat.columns[..width].to_vec()
    } else {
        if width != named.len() {
            return Ok(None);
        }
        named.iter().map(|s| s.to_string()).collect()
    };
    let mut columns = Vec::new();
    let mut per_row: Vec<Vec<(usize, Slot)>> = vec![Vec::new(); values.len()];
    let mut appended = Vec::new();
    let mut always = false;
    for g in &cat.generated {
        let pos = names.iter().position(|n| *n == g.name);
        let gi = columns.len();
        let mut used = false;
        match pos {
            Some(p) => {
                for (r, row) in values.iter().enumerate() {
                    let is_default = matches!(row[p].node, Some(NodeEnum::SetToDefault(_)));
                    if is_default {
                        per_row[r].push((gi, Slot::Replace(p)));
                        used = true;
                    } else if g.always && override_kind != OverridingKind::OverridingSystemValue {
                        // Postgres refuses an explicit value here: let it say so.
                        return Ok(None);
                    }
                }
            }
            None => {
                for row in per_row.iter_mut() {
                    row.push((gi, Slot::Append));
                }
                appended.push(g.name.as_str());
                used = true;
            }
        }
        if used {
            always |= g.always;
            columns.push(g.clone());
        }
    }
    let cols = if named.is_empty() {
        if columns.is_empty() && !sharded {
            return Ok(None);
        }
        let mut list = String::from("(");
        for (i, n) in names
            .iter()
            .map(String::as_str)
            .chain(appended.iter().copied())
            .enumerate()
        {
            if i > 0 {
                list.push_str(", ");
            }
            list.push_str(&ident(n));
        }
        list.push(')');
        ColEdit::Insert(list)
    } else if appended.is_empty() {
        ColEdit::Keep
    } else {
        let mut more = String::new();
        for n in &appended {
            more.push_str(", ");
            more.push_str(&ident(n));
        }
        ColEdit::Append(more)
    };
    if columns.is_empty() && matches!(cols, ColEdit::Keep) {
        return Ok(None);
    }
    Ok(Some(Generate {
        columns,
        rows: per_row,
        cols,
        overriding: always && override_kind != OverridingKind::OverridingSystemValue,
        ..Generate::nothing(rel)
    }))
}

/// `INSERT INTO t DEFAULT VALUES` of a table with generated columns.
fn default_values(
    rel: &protobuf::RangeVar,
    cat: &TableColumns,
    override_kind: OverridingKind,
) -> Option<Generate> {
    if cat.generated.is_empty() {
        return None;
    }
    let list = format!(
        "({})",
        cat.generated
            .iter()
            .map(|g| ident(&g.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let always = cat.generated.iter().any(|g| g.always);
    Some(Generate {
        columns: cat.generated.clone(),
        rows: vec![(0..cat.generated.len())
            .map(|g| (g, Slot::Append))
            .collect()],
        cols: ColEdit::DefaultValues(list),
        overriding: always && override_kind != OverridingKind::OverridingSystemValue,
        ..Generate::nothing(rel)
    })
}

fn schema_key(s: &str) -> String {
    if s == "public" {
        String::new()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::catalog::TableColumns;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn map() -> ShardMap {
        let m = ShardMap::from_yaml_str(
            "users:\n  - { name: app, password: x }\n\
             shards:\n  - { name: s0, url: \"postgres://p@h:1/d\" }\n  - { name: s1, url: \"postgres://p@h:2/d\" }\n\
             tables:\n  app_ids: { key: user_id, type: bigint, strategy: hash }\n  users: { key: id, type: bigint, strategy: hash }\n  things: { key: id, type: bigint, strategy: hash }\n",
            "test",
        )
        .unwrap();
        let g = |name: &str, seq: &str, always| GenColumn {
            name: name.into(),
            sequence: seq.into(),
            always,
        };
        let mut t = HashMap::new();
        t.insert(
            (String::new(), "app_ids".into()),
            TableEntry::Columns(Arc::new(TableColumns {
                columns: vec!["id".into(), "user_id".into(), "v".into()],
                generated: vec![g("id", "public.app_ids_id_seq", false)],
            })),
        );
        t.insert(
            (String::new(), "users".into()),
            TableEntry::Columns(Arc::new(TableColumns {
                columns: vec!["id".into(), "name".into()],
                generated: vec![g("id", "public.users_id_seq", true)],
            })),
        );
        t.insert(
            (String::new(), "things".into()),
            TableEntry::Columns(Arc::new(TableColumns {
                columns: vec!["id".into(), "name".into()],
                generated: vec![],
            })),
        );
        m.catalog.install(t);
        m.catalog.set_in_use();
        m
    }

    fn complete(sql: &str) -> Option<String> {
        let m = map();
        let parsed = pg_query::parse(sql, 0).unwrap();
        let Some(NodeEnum::InsertStmt(ins)) = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
        else {
            panic!("not an insert")
        };
        let g = plan_generate(&m, ins).unwrap()?;
        let n: usize = g.counts().iter().map(|c| c.1).sum();
        let values: Vec<i64> = (0..n as i64).map(|i| 1000 + i).collect();
        let mut out = String::new();
        g.render(sql, SlotText::Values(&values), &mut out).unwrap();
        // The completed text parses.
        pg_query::parse(&out, 0).unwrap();
        Some(out)
    }

    #[test]
    fn omitted_default_and_listless_inserts_are_completed() {
        assert_eq!(
            complete("INSERT INTO app_ids (user_id, v) VALUES ($1, 'x') RETURNING id").as_deref(),
            Some("INSERT INTO app_ids (user_id, v, \"id\") VALUES ($1, 'x', 1000) RETURNING id")
        );
        assert_eq!(
            complete("insert into app_ids (id, user_id, v) values (DEFAULT, 1, 'a,b'), (7, 2, ')'), (default, 3, $$(x$$)").as_deref(),
            Some("insert into app_ids (id, user_id, v) values (1000, 1, 'a,b'), (7, 2, ')'), (1001, 3, $$(x$$)")
        );
        assert_eq!(
            complete("INSERT INTO app_ids VALUES (DEFAULT, 5, 'x')").as_deref(),
            Some("INSERT INTO app_ids (\"id\", \"user_id\", \"v\") VALUES (1000, 5, 'x')")
        );
        assert_eq!(
            complete("INSERT INTO app_ids AS a VALUES (9, 5) ON CONFLICT DO NOTHING").as_deref(),
            Some("INSERT INTO app_ids AS a (\"id\", \"user_id\") VALUES (9, 5) ON CONFLICT DO NOTHING")
        );
        // A table without generated columns gets a column list only.
        assert_eq!(
            complete("INSERT INTO things VALUES (1, 'a'), (2, 'b')").as_deref(),
            Some("INSERT INTO things (\"id\", \"name\") VALUES (1, 'a'), (2, 'b')")
        );
        assert_eq!(
            complete("INSERT INTO things (id, name) VALUES (1, 'a')"),
            None
        );
        assert_eq!(
            complete("INSERT INTO app_ids (id, user_id) VALUES (4, 5)"),
            None
        );
        // Identity ALWAYS: OVERRIDING SYSTEM VALUE.
        assert_eq!(
            complete("INSERT INTO users (name) VALUES ('n') RETURNING id").as_deref(),
            Some("INSERT INTO users (name, \"id\") OVERRIDING SYSTEM VALUE VALUES ('n', 1000) RETURNING id")
        );
        assert_eq!(
            complete("INSERT INTO users DEFAULT VALUES RETURNING id").as_deref(),
            Some("INSERT INTO users (\"id\") OVERRIDING SYSTEM VALUE VALUES (1000) RETURNING id")
        );
        // An explicit value into an ALWAYS column without OVERRIDING: Postgres refuses it.
        assert_eq!(
            complete("INSERT INTO users (id, name) VALUES (5, 'n')"),
            None
        );
        // Comments, quoted names and E'' strings do not confuse the lexer.
        assert_eq!(
            complete("INSERT /* ( */ INTO app_ids (\"user_id\", v) -- )\n VALUES (1, E'\\')'), (2, 'it''s')").as_deref(),
            Some("INSERT /* ( */ INTO app_ids (\"user_id\", v, \"id\") -- )\n VALUES (1, E'\\')', 1000), (2, 'it''s', 1001)")
        );
    }

    #[test]
    fn select_from_values_becomes_values_rows() {
        // SQLAlchemy's insertmanyvalues form, rows given out of order.
        let sql = "INSERT INTO app_ids (user_id, v) SELECT p0::BIGINT, lower(p1) AS l FROM (VALUES ($1::BIGINT, $2::VARCHAR, 1), ($3::BIGINT, 'A,)', 0)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING app_ids.id, app_ids.id AS id__1";
        assert_eq!(
            complete(sql).as_deref(),
            Some("INSERT INTO app_ids (user_id, v) VALUES (($3::BIGINT)::BIGINT, lower(('A,)'))), (($1::BIGINT)::BIGINT, lower(($2::VARCHAR))) RETURNING app_ids.id, app_ids.id AS id__1")
        );
    }

    #[test]
    fn select_from_unnest_becomes_values_rows() {
        // Django 5.2's bulk_create with client-side binding (psycopg's ClientCursor).
        let sql = "INSERT INTO \"app_ids\" (\"user_id\", \"v\") SELECT * FROM UNNEST(('{1,2,3}'::int2[])::bigint[], ('{a,\"b,c\",NULL}')::text[]) RETURNING \"app_ids\".\"id\"";
        let done = complete(sql).unwrap();
        assert_eq!(
            done,
            "INSERT INTO \"app_ids\" (\"user_id\", \"v\") VALUES ('1'::bigint, 'a'::text), ('2'::bigint, 'b,c'::text), ('3'::bigint, NULL::text) RETURNING \"app_ids\".\"id\""
        );
    }

    #[test]
    fn insert_select_leaving_a_generated_column_is_refused() {
        let m = map();
        let sql =
            "INSERT INTO app_ids (user_id, v) SELECT user_id, v FROM app_ids WHERE user_id = 1";
        let parsed = pg_query::parse(sql, 0).unwrap();
        let Some(NodeEnum::InsertStmt(ins)) = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
        else {
            panic!()
        };
        assert!(plan_generate(&m, ins).is_err());
    }

    #[test]
    fn parameters_are_counted_outside_strings() {
        assert_eq!(
            super::super::insert_lex::max_param("SELECT $1, '$9', $$ $7 $$, $2::int, a$3"),
            2
        );
    }
}
