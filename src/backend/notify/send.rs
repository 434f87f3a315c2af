//! Sending notifications: Postgres's checks of a channel and payload ([`check`]), and the
//! NOTIFY statements run on a pooled connection to the default shard ([`send`], or
//! [`send_on`] a connection the session holds).

use std::collections::HashSet;
use std::sync::Arc;

use crate::backend::conn::BackendConn;
use crate::backend::pool::ShardPool;
use crate::error::ProxyError;

/// Payloads must be shorter than this many bytes (Postgres's `NOTIFY_PAYLOAD_MAX_LENGTH`).
pub const NOTIFY_PAYLOAD_MAX: usize = 8000;

/// Longest channel name, in bytes (`NAMEDATALEN - 1`).
const CHANNEL_MAX: usize = 63;

/// Postgres's checks of `pg_notify(channel, payload)` / `NOTIFY`, with its errors.
pub fn check(channel: &str, payload: &str) -> Result<(), ProxyError> {
    let invalid = |m: &str| ProxyError::Backend {
        code: "22023".into(),
        message: m.into(),
    };
    if channel.is_empty() {
        return Err(invalid("channel name cannot be empty"));
    }
    if channel.len() > CHANNEL_MAX {
        return Err(invalid("channel name too long"));
    }
    if payload.len() >= NOTIFY_PAYLOAD_MAX {
        return Err(invalid("payload string too long"));
    }
    Ok(())
}

/// The statements that send `notes` (a repeated channel and payload once, as Postgres
/// collapses them within a transaction), in order.
fn statements(notes: &[(String, String)]) -> String {
    let mut seen = HashSet::with_capacity(notes.len());
    let mut sql = String::new();
    for (channel, payload) in notes {
        if !seen.insert((channel.as_str(), payload.as_str())) {
            continue;
        }
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str("NOTIFY ");
        sql.push_str(&crate::quote::ident(channel));
        if !payload.is_empty() {
            sql.push_str(", ");
            sql.push_str(&crate::quote::literal(payload));
        }
    }
    sql
}

/// Sends `notes` (each [`check`]ed) as one transaction on a connection from `pool` (the
/// default shard's): all or none are sent.
pub async fn send(pool: &Arc<ShardPool>, notes: &[(String, String)]) -> Result<(), ProxyError> {
    if notes.is_empty() {
        return Ok(());
    }
    let mut conn = pool.checkout().await?;
    let r = send_on(&mut conn, &pool.info.name, notes).await;
    if conn.ready_status == b'I' && !conn.broken {
        conn.release();
    } // else dropped here: closed
    r
}

/// [`send`] on `conn`, a connection to the default shard (`shard`, for messages) outside
/// any transaction: the one a session holds in session pooling.
pub async fn send_on(
    conn: &mut BackendConn,
    shard: &str,
    notes: &[(String, String)],
) -> Result<(), ProxyError> {
    if notes.is_empty() {
        return Ok(());
    }
    let reply =
        conn.command(&statements(notes))
            .await
            .map_err(|e| ProxyError::ShardUnavailable {
                shard: shard.to_string(),
                reason: e.to_string(),
            })?;
    match reply.error {
        None => Ok(()),
        Some((code, message)) => Err(ProxyError::Backend { code, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_as_postgres() {
        assert!(check("c", "").is_ok());
        assert!(check("", "x").is_err());
        assert!(check(&"c".repeat(64), "").is_err());
        assert!(check("c", &"p".repeat(7999)).is_ok());
        let e = check("c", &"p".repeat(8000)).unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert_eq!(e.to_string(), "payload string too long");
    }

    #[test]
    fn quotes_and_collapses() {
        let notes = vec![
            ("Chan".to_string(), "it's".to_string()),
            ("Chan".to_string(), "it's".to_string()),
            ("b\"c".to_string(), String::new()),
            ("Chan".to_string(), "a\\b".to_string()),
        ];
        assert_eq!(
            statements(&notes),
            "NOTIFY \"Chan\", 'it''s'; NOTIFY \"b\"\"c\"; NOTIFY \"Chan\",  E'a\\\\b'"
        );
    }
}
