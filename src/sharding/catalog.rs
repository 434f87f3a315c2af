//! What the shards' own catalogs say about the map's tables ([`Catalog`]): each sharded and
//! reference table's columns in order, and which of them take their values from a sequence
//! (`serial`/`bigserial`, `DEFAULT nextval(…)`, `GENERATED … AS IDENTITY`). The router uses
//! it to complete INSERTs that omit those columns (or have no column list) before routing,
//! so the proxy can give generated columns values unique across shards.
//!
//! It is read from every shard ([`super::catalog_read`]) when the proxy starts, after DDL that passes
//! through the proxy, on reload, on request and once a minute; shards that define a table
//! differently make it [`TableEntry::Inconsistent`] (INSERTs that need its columns are
//! refused, naming the difference). A table some shards lack is taken from the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

/// A column whose values come from a sequence; the proxy assigns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenColumn {
    /// Column name (as stored: case preserved).
    pub name: String,
    /// The sequence behind its default, schema-qualified (`public.t_id_seq`): the name of
    /// the proxy's allocator for it.
    pub sequence: String,
    /// `GENERATED ALWAYS AS IDENTITY`: an explicit value needs `OVERRIDING SYSTEM VALUE`.
    pub always: bool,
}

/// One table's columns as its shards define them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableColumns {
    /// Every column in order (`attnum`), dropped ones left out.
    pub columns: Vec<String>,
    /// The columns whose values come from a sequence, in column order.
    pub generated: Vec<GenColumn>,
}

/// How long a table found nowhere is taken as absent before it is looked for again.
pub const ABSENT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// What the catalog knows of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEntry {
    /// Every shard defines it alike.
    Columns(Arc<TableColumns>),
    /// The shards define it differently: why (for the error an INSERT gets), and every
    /// column some shard generates (an INSERT that gives them all values needs nothing).
    Inconsistent(String, Vec<String>),
    /// Looked for on the shards and not found, at this time: an INSERT into it gets
    /// Postgres's `42P01`; looked for again once [`ABSENT_FOR`] has passed (it may have been
    /// created behind the proxy's back), and forgotten at the next load.
    Absent(std::time::Instant),
}

/// The map's tables as the shards define them (see the module docs). Shared by a map and
/// the maps reloaded from it.
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
    /// Bumped when a load changes what is known: plans made before are stale.
    version: std::sync::atomic::AtomicU64,
    /// Wakes the refresh task (after DDL, or a lookup of a table it does not know).
    wake: tokio::sync::Notify,
    /// Held by a session looking tables up, so concurrent lookups read the shards once.
    pub lookups: tokio::sync::Mutex<()>,
    /// Whether a proxy keeps this catalog (set when it starts serving). Maps read only to
    /// plan (`shardwire route`, tests) complete nothing.
    in_use: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Whether a load has completed.
    loaded: bool,
    /// Tables by (schema, name); schema "" for unqualified names (`public`).
    tables: HashMap<(String, String), TableEntry>,
    /// Completed loads (tests and `SHOW` read it).
    loads: u64,
}

/// The catalog's state for the admin console and `shardwire check`.
#[derive(Debug, Clone)]
pub struct CatalogSummary {
    /// Whether a load has completed.
    pub loaded: bool,
    /// Completed loads.
    pub loads: u64,
    /// Per table (`schema.name` or `name`): its generated columns, or why it is inconsistent.
    pub tables: Vec<(String, Result<Vec<GenColumn>, String>)>,
}

impl Catalog {
    /// What the catalog knows of table `schema.rel` (`schema` "" or `public`: unqualified);
    /// `None` when no shard has it (or nothing is loaded yet).
    pub fn table(&self, schema: &str, rel: &str) -> Option<TableEntry> {
        let schema = if schema == "public" { "" } else { schema };
        let st = self.state.read();
        // The key is borrowed in two parts; a linear probe keeps lookups allocation-free.
        st.tables
            .iter()
            .find(|((s, r), _)| s == schema && r == rel)
            .map(|(_, e)| e.clone())
    }

    /// The generated column's sequence (as the catalog names it) that `regclass` (a
    /// sequence name as a client writes it: `seq`, `public.seq`, `"Seq"`) denotes.
    pub fn sequence_named(&self, regclass: &str) -> Option<String> {
        let want = normalize(regclass)?;
        let st = self.state.read();
        st.tables.values().find_map(|e| match e {
            TableEntry::Columns(c) => c
                .generated
                .iter()
                .find(|g| normalize(&g.sequence).as_ref() == Some(&want))
                .map(|g| g.sequence.clone()),
            TableEntry::Inconsistent(..) | TableEntry::Absent(_) => None,
        })
    }

    /// The sequence of generated column `column` of `table` (as `pg_get_serial_sequence`
    /// takes them: the table name by SQL rules, the column name literally).
    pub fn sequence_of(&self, table: &str, column: &str) -> Option<String> {
        let (schema, rel) = normalize(table)?;
        let schema = if schema == "public" {
            String::new()
        } else {
            schema
        };
        let st = self.state.read();
        match st.tables.get(&(schema, rel))? {
            TableEntry::Columns(c) => c
                .generated
                .iter()
                .find(|g| g.name == column)
                .map(|g| g.sequence.clone()),
            TableEntry::Inconsistent(..) | TableEntry::Absent(_) => None,
        }
    }

    /// Whether any table has a generated column (then the proxy assigns their values).
    pub fn has_generated(&self) -> bool {
        self.state
            .read()
            .tables
            .values()
            .any(|e| matches!(e, TableEntry::Columns(c) if !c.generated.is_empty()))
    }

    /// Marks the catalog as kept by a serving proxy (see [`Catalog::in_use`]).
    pub fn set_in_use(&self) {
        self.in_use
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a serving proxy keeps this catalog: only then are INSERTs completed.
    #[inline]
    pub fn in_use(&self) -> bool {
        self.in_use.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a load has completed.
    pub fn is_loaded(&self) -> bool {
        self.state.read().loaded
    }

    /// Completed loads.
    pub fn loads(&self) -> u64 {
        self.state.read().loads
    }

    /// Counts the loads that changed something: a plan made under another version may
    /// complete INSERTs by stale columns (the plan cache is cleared when it moves).
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Installs the result of a load.
    pub fn install(&self, tables: HashMap<(String, String), TableEntry>) {
        let mut st = self.state.write();
        let changed = !st.loaded || st.tables != tables;
        st.tables = tables;
        st.loaded = true;
        st.loads += 1;
        if changed {
            self.version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Sets what is known of one table (`schema` "" for unqualified): a table looked up on
    /// its own (see `Session::learn_tables`).
    pub fn install_one(&self, schema: &str, rel: &str, entry: TableEntry) {
        let mut st = self.state.write();
        let key = (schema.to_string(), rel.to_string());
        if st.tables.get(&key) != Some(&entry) {
            st.tables.insert(key, entry);
            self.version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Asks the refresh task to read the shards again soon.
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Catalog::request_refresh`] or `every`, whichever comes first.
    pub async fn wait_refresh(&self, every: Duration) {
        let _ = tokio::time::timeout(every, self.wake.notified()).await;
    }

    /// The state for the admin console and `shardwire check`.
    pub fn summary(&self) -> CatalogSummary {
        let st = self.state.read();
        let mut tables: Vec<(String, Result<Vec<GenColumn>, String>)> = st
            .tables
            .iter()
            .map(|((s, r), e)| {
                let name = if s.is_empty() {
                    r.clone()
                } else {
                    format!("{s}.{r}")
                };
                let v = match e {
                    TableEntry::Columns(c) => Ok(c.generated.clone()),
                    TableEntry::Inconsistent(why, _) => Err(why.clone()),
                    TableEntry::Absent(_) => Ok(Vec::new()),
                };
                (name, v)
            })
            .collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        CatalogSummary {
            loaded: st.loaded,
            loads: st.loads,
            tables,
        }
    }
}

/// A possibly qualified name by SQL rules: parts split at dots outside quotes, quoted parts
/// unquoted, others lowercased; schema `public` when unqualified.
fn normalize(text: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    '"' => break,
                    c => cur.push(c),
                }
            },
            '.' => parts.push(std::mem::take(&mut cur)),
            c => cur.extend(c.to_lowercase()),
        }
    }
    parts.push(cur);
    match parts.as_slice() {
        [n] => Some(("public".into(), n.clone())),
        [s, n] => Some((s.clone(), n.clone())),
        _ => None,
    }
}
