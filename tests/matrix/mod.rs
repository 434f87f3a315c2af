//! The matrix's drivers that run inside the test process (Rust) or as a command driven from
//! it (psql, pgbench); the others are programs in tests/py, tests/node, tests/java, tests/go.

pub mod pgbench;
pub mod psql;
pub mod sqlx_drv;
pub mod tokio_pg;

/// The report a program prints: `CELL <scenario> ok` lines, then `matrix done`.
#[derive(Default)]
pub struct Report(String);

impl Report {
    /// A scenario that ran and whose assertions held.
    pub fn ok(&mut self, scenario: &str) {
        self.0.push_str(&format!("CELL {scenario} ok\n"));
    }

    /// A scenario the driver has no API for.
    pub fn na(&mut self, scenario: &str, why: &str) {
        self.0.push_str(&format!("CELL {scenario} n/a {why}\n"));
    }

    /// A free line (counts and the like).
    pub fn line(&mut self, text: &str) {
        self.0.push_str(text);
        self.0.push('\n');
    }

    /// The whole report.
    pub fn done(mut self) -> String {
        self.0.push_str("matrix done\n");
        self.0
    }
}

/// The rows of `COPY items (id, grp, v) FROM STDIN` for the copy scenario (2001..=2300).
pub fn copy_rows() -> String {
    (2001..=2300)
        .map(|id| format!("{id}\t8\tc{id}\n"))
        .collect()
}

/// The rows the concurrency scenario's workers update (3001..=3020, grp 0), as one
/// multi-row INSERT (the proxy splits it by key).
pub fn worker_rows() -> String {
    let rows: Vec<String> = (3001..=3020).map(|id| format!("({id}, 0, 'w')")).collect();
    format!("INSERT INTO items (id, grp, v) VALUES {}", rows.join(", "))
}
