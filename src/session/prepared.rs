//! A prepared statement as the client named it ([`Prepared`]), and what the proxy made of
//! it when it completes the client's INSERT with generated values ([`GenBind`],
//! [`Completions`]; see [`super::generate`]).

use std::sync::Arc;

use super::shape;
use crate::routing::router::{Generate, Plan, SqlPrepare};

/// A prepared statement as the client named it.
#[derive(Debug)]
pub struct Prepared {
    /// SQL text.
    pub sql: String,
    /// Declared parameter types.
    pub types: Vec<u32>,
    /// Routing plan.
    pub plan: Arc<Plan>,
    /// Name used on backends: content-addressed, so every pooled connection agrees.
    pub backend_name: String,
    /// Hash behind `backend_name` (what backend connections remember).
    pub name_hash: u64,
    /// The body of a Parse that defines this statement as the unnamed one, byte for byte, so a
    /// re-sent Parse is recognised with one comparison, before any decoding.
    pub(super) unnamed_parse: Box<[u8]>,
    /// The result shape the client was told this statement has (see [`shape`]).
    pub shape: shape::Shape,
    /// Set when the proxy completed the client's INSERT with generated values: `sql` is the
    /// completed text, with Bind parameters for those values after the client's own.
    pub gen: Option<Arc<GenBind>>,
    /// Set for a statement made by SQL `PREPARE` (see [`super::sql_prepare`]): what EXECUTE
    /// substitutes into. Its `plan` refuses a Bind.
    pub by_sql: Option<Arc<SqlPrepare>>,
}

/// A per-process secret in the names of the proxy's statements on the backends: stable
/// for the life of the proxy (every pooled connection agrees on a statement's name), not
/// predictable by a client from the statement's text.
fn name_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random)
}

impl Prepared {
    /// Whether the Parse body `body` defines this very statement as the unnamed statement
    /// (same text, same declared types).
    pub(super) fn is_unnamed_parse(&self, body: &[u8]) -> bool {
        *self.unnamed_parse == *body
    }

    /// A statement of text `sql` with declared parameter types `types`, planned as `plan`.
    pub(super) fn new(sql: &str, types: Vec<u32>, plan: Arc<Plan>) -> Self {
        let mut h = Vec::with_capacity(sql.len() + types.len() * 4);
        h.extend_from_slice(sql.as_bytes());
        for t in &types {
            h.extend_from_slice(&t.to_be_bytes());
        }
        let name_hash = xxhash_rust::xxh3::xxh3_64_with_seed(&h, name_seed());
        let mut unnamed_parse = Vec::with_capacity(sql.len() + 4 + types.len() * 4);
        unnamed_parse.push(0);
        unnamed_parse.extend_from_slice(sql.as_bytes());
        unnamed_parse.push(0);
        unnamed_parse.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in &types {
            unnamed_parse.extend_from_slice(&t.to_be_bytes());
        }
        Prepared {
            sql: sql.to_string(),
            types,
            plan,
            backend_name: format!("sw_{name_hash:016x}"),
            name_hash,
            unnamed_parse: unnamed_parse.into_boxed_slice(),
            shape: shape::Shape::default(),
            gen: None,
            by_sql: None,
        }
    }

    /// The same statement planned again (with a new map): what the client sent, and what
    /// the proxy made of it, stay (a SQL-level statement keeps its refusing plan).
    pub(super) fn replanned(&self, plan: Arc<Plan>) -> Self {
        let plan = match self.by_sql {
            Some(_) => self.plan.clone(),
            None => plan,
        };
        let mut p = Prepared::new(&self.sql, self.types.clone(), plan);
        p.unnamed_parse = self.unnamed_parse.clone();
        p.gen = self.gen.clone();
        p.by_sql = self.by_sql.clone();
        p
    }
}

/// How a prepared statement the proxy completed is bound (see [`Prepared::gen`]).
#[derive(Debug)]
pub struct GenBind {
    /// How the statement was completed.
    pub plan: Arc<Generate>,
    /// Parameters the client binds; the proxy's values follow them.
    pub client_params: usize,
}

/// A session's generated-value state.
#[derive(Default)]
pub(super) struct Completions {
    /// Statements a pipeline parses that the proxy completes, by the client's Parse body,
    /// found before the pipeline runs ([`Session::complete_binds`]); taken by its Parse.
    pub(super) pending: Vec<(Box<[u8]>, Arc<Prepared>)>,
    /// Whether this session ever prepared a completed statement (if not, Binds need no look).
    pub(super) any: bool,
    /// The last value given this session per sequence (`currval`), few in practice.
    pub(super) current: Vec<(String, i64)>,
    /// The last value given this session (`lastval`).
    pub(super) last_value: Option<i64>,
    /// DDL ran: the catalog is read again once the session is outside a transaction.
    pub(super) refresh: bool,
}

impl Completions {
    /// The last value of `sequence` given this session.
    pub(super) fn current(&self, sequence: &str) -> Option<i64> {
        self.current
            .iter()
            .find(|(s, _)| s == sequence)
            .map(|(_, v)| *v)
    }

    /// Notes `value` given this session from `sequence`.
    pub(super) fn note(&mut self, sequence: &str, value: i64) {
        match self.current.iter_mut().find(|(s, _)| s == sequence) {
            Some(slot) => slot.1 = value,
            None => self.current.push((sequence.to_string(), value)),
        }
        self.last_value = Some(value);
    }
}
