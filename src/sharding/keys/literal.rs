//! Keys given as SQL number literals: an integer ([`key_from_int`]) and the decimal-literal
//! rule for integer keys ([`numeric_literal`]).

use super::numeric::Numeric;
use super::text::key_from_text;
use super::types::{KeyType, KeyValue};
use super::KeyError;

/// A key given as an integer literal in SQL (`WHERE id = 42`).
///
/// For integer keys the value is not range-checked: Postgres compares an
/// out-of-range literal across types (`int4col = 3000000000` matches no row,
/// and an `INSERT` of it fails on the shard with Postgres' own error), so any
/// shard is a correct destination. For a text key the literal routes as its
/// decimal digits and for a numeric key as that integer; a uuid, date or
/// timestamptz key cannot be compared with an integer.
pub fn key_from_int(ty: KeyType, v: i64) -> Result<KeyValue, KeyError> {
    let no_operator = |key| KeyError::NoOperator {
        key,
        given: if i32::try_from(v).is_ok() {
            "integer"
        } else {
            "bigint"
        },
    };
    match ty {
        KeyType::SmallInt | KeyType::Int | KeyType::BigInt => Ok(KeyValue::Int(v)),
        KeyType::Text => Ok(KeyValue::Text(v.to_string())),
        KeyType::Numeric => Ok(KeyValue::Numeric(Numeric::from(v))),
        KeyType::Uuid | KeyType::Date | KeyType::Timestamptz => Err(no_operator(ty.pg_name())),
    }
}

/// What a decimal literal compared with a key means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumericLiteral {
    /// It equals this key (`id = 2.0` is `id = 2`).
    Value(KeyValue),
    /// No key of the type can equal it (`id = 1.5`, or out of range).
    Nothing,
    /// Not decided here (an exponent form): it pins nothing.
    Unknown,
}

/// Evaluates a decimal literal against an integer key of type `ty`.
pub fn numeric_literal(ty: KeyType, text: &str) -> NumericLiteral {
    if !ty.is_integer() {
        return NumericLiteral::Nothing;
    }
    if text.contains(['e', 'E']) {
        return NumericLiteral::Unknown;
    }
    let (int_part, frac) = text.split_once('.').unwrap_or((text, ""));
    if !frac.bytes().all(|b| b == b'0') {
        return NumericLiteral::Nothing;
    }
    match key_from_text(ty, int_part) {
        Ok(k) => NumericLiteral::Value(k),
        Err(_) => NumericLiteral::Nothing,
    }
}
