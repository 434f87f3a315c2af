//! The admin console: `psql -d shardwire` as a user with `admin: true`.
//!
//! Commands (simple query protocol; results are ordinary result sets of text columns):
//!
//! | command | result |
//! |---|---|
//! | `SHOW SHARDS` | name, host, port, database, region, weight |
//! | `SHOW POOLS` | shard, size, in_use, idle, waiting, mode |
//! | `SHOW STATS` | name, value: clients, statements routed by kind, refused |
//! | `SHOW CONFIG` | name, value: the settings in effect |
//! | `SHOW VERSION` | version |
//! | `PAUSE [shard]` | new statements wait; returns once in-flight transactions finished |
//! | `RESUME [shard]` | waiting statements go on |
//! | `SHOW ROUTE <table> <key>` | table, key, shard, reason |
//! | `SHOW DIRECTORY` | key, shard (the directory entries this proxy knows) |
//! | `SHOW GENERATED` | table, column, sequence, kind, next, block_end, blocks, stored_next: the generated columns the proxy assigns, this proxy's block, the shared allocator row |
//! | `DIRECTORY ASSIGN <key> TO <shard>` | assigns a key with no entry yet |
//! | `DIRECTORY MOVE <key> TO <shard>` | moves the key's rows; table, rows moved |
//!
//! Commands are split into words with the Postgres lexer (`pg_query::scan`): keys may be
//! quoted (`'acme'`) or bare (`acme`, `42`), names may be double-quoted.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::session::Shared;
use crate::sharding::directory::admin as dir_admin;
use crate::wire::protocol::{build, decode_query, FrameReader};
use crate::wire::tls::{NetRead, NetWrite};

/// Why an admin command failed: message and SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// SQLSTATE sent with it.
    pub code: &'static str,
    /// The message.
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> AdminError {
    AdminError {
        code,
        message: message.into(),
    }
}

/// A command's result: columns and rows (all text), and the command tag.
struct Output {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
    tag: String,
}

/// How long PAUSE waits for in-flight transactions to give their connections back.
const PAUSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

const USAGE: &str = "admin commands: SHOW SHARDS | POOLS | CLIENTS | SERVERS | STATS | CONFIG | VERSION; SHOW ROUTE <table> <key>; PAUSE [shard]; RESUME [shard]; RELOAD; SHUTDOWN; SHOW DIRECTORY; SHOW GENERATED; DIRECTORY ASSIGN <key> TO <shard>; DIRECTORY MOVE <key> TO <shard>";

/// Serves one admin connection until the client leaves.
pub async fn run(
    shared: Arc<Shared>,
    mut reader: FrameReader<NetRead>,
    mut w: NetWrite,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let mut failed_batch = false;
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                build::error(&mut out, "FATAL", "08P01", &e.to_string());
                let _ = w.write_all(&out).await;
                let _ = w.flush().await;
                w.close().await;
                return Ok(());
            }
        };
        match frame.tag {
            b'Q' => {
                match decode_query(frame.body()) {
                    Ok(sql) => match execute(&shared, sql).await {
                        Ok(o) => write_output(&mut out, &o),
                        Err(e) => build::error(&mut out, "ERROR", e.code, &e.message),
                    },
                    Err(e) => build::error(&mut out, "ERROR", "08P01", &e.to_string()),
                }
                build::ready_for_query(&mut out, b'I');
            }
            b'X' => return Ok(()),
            b'S' => {
                failed_batch = false;
                build::ready_for_query(&mut out, b'I');
            }
            b'H' => {}
            _ => {
                if !failed_batch {
                    build::error(
                        &mut out,
                        "ERROR",
                        "0A000",
                        "the admin console speaks the simple query protocol only (psql, or simple_query)",
                    );
                    failed_batch = true;
                }
            }
        }
        w.write_all(&out).await?;
        w.flush().await?;
        out.clear();
    }
}

fn write_output(out: &mut BytesMut, o: &Output) {
    if !o.columns.is_empty() {
        let cols: Vec<(&str, u32, i16, i16)> = o.columns.iter().map(|c| (*c, 25, -1, 0)).collect(); // text
        build::row_description(out, &cols);
        for r in &o.rows {
            let vals: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
            build::data_row(out, &vals);
        }
    }
    build::command_complete(out, &o.tag);
}

/// The words of a command as written: string constants and double-quoted names unquoted,
/// everything else verbatim (keys are case-sensitive; command words are matched
/// case-insensitively by the caller).
fn words(sql: &str) -> Result<Vec<String>, AdminError> {
    let scanned = pg_query::scan(sql).map_err(|e| err("42601", format!("{e}")))?;
    let mut out = Vec::new();
    for t in &scanned.tokens {
        let Some(text) = sql.get(t.start as usize..t.end as usize) else {
            continue;
        };
        if text == ";" {
            continue;
        }
        let w = if let Some(inner) = text.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
            inner.replace("''", "'")
        } else if let Some(inner) = text.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            inner.replace("\"\"", "\"")
        } else {
            text.to_owned()
        };
        out.push(w);
    }
    Ok(out)
}

async fn execute(shared: &Arc<Shared>, sql: &str) -> Result<Output, AdminError> {
    let w = words(sql)?;
    let map = &shared.map();
    // Command words case-insensitively; arguments as written.
    let lower: Vec<String> = w.iter().map(|x| x.to_ascii_lowercase()).collect();
    let kw: Vec<&str> = lower
        .iter()
        .zip(&w)
        .enumerate()
        .map(|(i, (l, orig))| {
            let command_word = i < 2 || l == "to";
            if command_word {
                l.as_str()
            } else {
                orig.as_str()
            }
        })
        .collect();
    let shard_of = |name: &str| {
        map.shard_index(name).ok_or_else(|| {
            err(
                "42704",
                format!(
                    "no shard is named {name}; shards: {}",
                    map.shard_names().join(", ")
                ),
            )
        })
    };
    match kw.as_slice() {
        [] => Ok(Output {
            columns: vec![],
            rows: vec![],
            tag: "EMPTY".into(),
        }),
        ["show", "shards"] => Ok(Output {
            columns: vec!["name", "host", "port", "database", "region", "weight"],
            rows: map
                .shards
                .iter()
                .map(|s| {
                    vec![
                        Some(s.name.clone()),
                        Some(s.host.clone()),
                        Some(s.port.to_string()),
                        Some(s.dbname.clone()),
                        s.region.clone(),
                        Some(s.weight.to_string()),
                    ]
                })
                .collect(),
            tag: format!("SHOW {}", map.shards.len()),
        }),
        ["pause"] | ["pause", _] | ["resume"] | ["resume", _] => {
            let pause = kw[0] == "pause";
            let targets: Vec<usize> = match kw.get(1) {
                Some(name) => vec![shard_of(name)?],
                None => (0..shared.topo().pools.len()).collect(),
            };
            let topo = shared.topo();
            for &s in &targets {
                for p in topo.client_pools_of_shard(s) {
                    p.set_paused(pause);
                }
            }
            if pause {
                // New statements now wait; in-flight transactions finish on their own.
                let deadline = tokio::time::Instant::now() + PAUSE_DRAIN;
                while targets.iter().any(|&s| topo.shard_stats(s).in_use > 0) {
                    if tokio::time::Instant::now() >= deadline {
                        let busy: Vec<String> = targets
                            .iter()
                            .filter(|&&s| topo.shard_stats(s).in_use > 0)
                            .map(|&s| map.shard_names()[s].clone())
                            .collect();
                        return Err(err(
                            "55000",
                            format!(
                                "paused, but transactions still hold connections to {} after {}s; RESUME to undo",
                                busy.join(", "),
                                PAUSE_DRAIN.as_secs()
                            ),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            tracing::info!(pause, shards = ?targets, "admin pause/resume");
            Ok(Output {
                columns: vec![],
                rows: vec![],
                tag: if pause { "PAUSE" } else { "RESUME" }.into(),
            })
        }
        ["show", "servers"] => {
            let now = std::time::SystemTime::now();
            let mut rows = Vec::new();
            let topo = shared.topo();
            let all = (0..topo.pools.len()).flat_map(|s| topo.pools_of_shard(s));
            for p in all {
                for c in p.connections() {
                    let age = now.duration_since(c.since).unwrap_or_default().as_secs();
                    rows.push(vec![
                        Some(p.info.name.clone()),
                        Some(p.info.host.clone()),
                        Some(p.info.port.to_string()),
                        Some(p.info.dbname.clone()),
                        Some(p.info.user.clone()),
                        Some(c.pid.to_string()),
                        Some(if c.in_use { "active" } else { "idle" }.to_string()),
                        Some(age.to_string()),
                    ]);
                }
            }
            let n = rows.len();
            Ok(Output {
                columns: vec![
                    "shard", "host", "port", "database", "user", "pid", "state", "age_s",
                ],
                rows,
                tag: format!("SHOW {n}"),
            })
        }
        ["show", "clients"] => {
            let now = std::time::SystemTime::now();
            let rows: Vec<Vec<Option<String>>> = shared
                .client_list
                .list()
                .iter()
                .map(|c| {
                    vec![
                        Some(c.id.to_string()),
                        Some(c.user.clone()),
                        Some(c.database.clone()),
                        c.peer.map(|p| p.ip().to_string()),
                        c.peer.map(|p| p.port().to_string()),
                        Some(c.state_name().to_string()),
                        Some(
                            now.duration_since(c.since)
                                .unwrap_or_default()
                                .as_secs()
                                .to_string(),
                        ),
                    ]
                })
                .collect();
            let n = rows.len();
            Ok(Output {
                columns: vec!["id", "user", "database", "addr", "port", "state", "age_s"],
                rows,
                tag: format!("SHOW {n}"),
            })
        }
        ["reload"] => match crate::ops::reload::reload(shared) {
            Ok(summary) => Ok(Output {
                columns: vec!["reloaded"],
                rows: vec![vec![Some(summary)]],
                tag: "RELOAD".into(),
            }),
            Err(e) => Err(err("55000", e.to_string())),
        },
        ["shutdown"] => {
            tracing::info!("admin SHUTDOWN: no new clients; connected ones may finish");
            shared.request_shutdown();
            Ok(Output {
                columns: vec![],
                rows: vec![],
                tag: "SHUTDOWN".into(),
            })
        }
        ["show", "version"] => Ok(Output {
            columns: vec!["version"],
            rows: vec![vec![Some(format!(
                "shardwire {}",
                env!("CARGO_PKG_VERSION")
            ))]],
            tag: "SHOW 1".into(),
        }),
        ["show", "pools"] => {
            // One row per pool, as PgBouncer lists (database, user) pairs: the control
            // plane's (user `-`), then each proxy user's, shard by shard.
            let topo = shared.topo();
            let mode = if map.pool.session_mode {
                "session"
            } else {
                "transaction"
            };
            let mut users: Vec<&String> = topo.client_pools.keys().collect();
            users.sort();
            let mut rows: Vec<Vec<Option<String>>> = Vec::new();
            for s in 0..topo.pools.len() {
                let control = topo.pools.get(s).map(|p| ("-", p));
                let clients = users
                    .iter()
                    .filter_map(|u| topo.client_pools[*u].get(s).map(|p| (u.as_str(), p)));
                for (user, p) in control.into_iter().chain(clients) {
                    let st = p.stats();
                    rows.push(vec![
                        Some(p.info.name.clone()),
                        Some(user.to_owned()),
                        Some(p.info.user.clone()),
                        Some(st.size.to_string()),
                        Some(st.in_use.to_string()),
                        Some(st.idle.to_string()),
                        Some(st.waiting.to_string()),
                        Some(mode.into()),
                        Some(if p.is_paused() { "yes" } else { "no" }.into()),
                    ]);
                }
            }
            Ok(Output {
                columns: vec![
                    "shard", "user", "role", "size", "in_use", "idle", "waiting", "mode", "paused",
                ],
                tag: format!("SHOW {}", rows.len()),
                rows,
            })
        }
        ["show", "stats"] => {
            use std::sync::atomic::Ordering::Relaxed;
            let st = &shared.telemetry.routes;
            let rows = [
                ("clients", shared.clients.load(Relaxed) as u64),
                ("routed_single_shard", st.single.load(Relaxed)),
                ("routed_some_shards", st.multi.load(Relaxed)),
                ("routed_all_shards", st.all.load(Relaxed)),
                ("refused_by_router", st.refused.load(Relaxed)),
            ]
            .into_iter()
            .map(|(k, v)| vec![Some(k.to_string()), Some(v.to_string())])
            .collect::<Vec<_>>();
            Ok(Output {
                columns: vec!["name", "value"],
                tag: format!("SHOW {}", rows.len()),
                rows,
            })
        }
        ["show", "config"] => {
            let p = &map.pool;
            let mut rows: Vec<(&str, String)> = vec![
                ("listen", map.listen.clone()),
                ("auth", map.auth.name().into()),
                ("shards", map.shard_names().join(", ")),
                ("pool.size", p.size.to_string()),
                (
                    "pool.mode",
                    if p.session_mode {
                        "session"
                    } else {
                        "transaction"
                    }
                    .into(),
                ),
                (
                    "pool.checkout_timeout_ms",
                    p.checkout_timeout.as_millis().to_string(),
                ),
                (
                    "pool.connect_timeout_ms",
                    p.connect_timeout.as_millis().to_string(),
                ),
                ("hash.vnodes", map.vnodes.to_string()),
                (
                    "default_shard",
                    map.shard_names()[map.default_shard].clone(),
                ),
                ("limits.max_message_size", map.max_message_size.to_string()),
                (
                    "limits.max_client_connections",
                    map.max_client_connections.to_string(),
                ),
                (
                    "gather.memory_limit_mb",
                    (map.gather.memory_limit >> 20).to_string(),
                ),
                (
                    "gather.timeout_secs",
                    map.gather.timeout.as_secs().to_string(),
                ),
                (
                    "two_phase_commit",
                    if shared.twophase.available() {
                        "on"
                    } else {
                        "off"
                    }
                    .into(),
                ),
            ];
            if let Some(d) = &map.directory {
                rows.push((
                    "directory",
                    format!("{} on {}", d.table, map.shard_names()[d.shard]),
                ));
            }
            Ok(Output {
                columns: vec!["name", "value"],
                tag: format!("SHOW {}", rows.len()),
                rows: rows
                    .into_iter()
                    .map(|(k, v)| vec![Some(k.to_string()), Some(v)])
                    .collect(),
            })
        }
        ["show", "route", table, key] => {
            let (shard, reason) = map
                .route_of(table, key)
                .map_err(|e| err("22023", e.to_string()))?;
            let shard = shard.map(|s| map.shard_names()[s].clone());
            Ok(Output {
                columns: vec!["table", "key", "shard", "reason"],
                rows: vec![vec![
                    Some(table.to_string()),
                    Some(key.to_string()),
                    shard,
                    Some(reason),
                ]],
                tag: "SHOW 1".into(),
            })
        }
        ["show", "generated"] => {
            let cat = map.catalog.summary();
            if !cat.loaded {
                return Err(err(
                    "55000",
                    "the shards' table definitions have not been read yet",
                ));
            }
            let mine = shared.ids.summary();
            let stored = shared.ids.stored(map).await.unwrap_or_default();
            let mut rows = Vec::new();
            for (table, cols) in cat.tables {
                match cols {
                    Ok(cols) => {
                        for g in cols {
                            let here = mine.iter().find(|m| m.sequence == g.sequence);
                            let kept = stored.iter().find(|(n, _)| *n == g.sequence);
                            rows.push(vec![
                                Some(table.clone()),
                                Some(g.name.clone()),
                                Some(g.sequence.clone()),
                                Some(
                                    if g.always {
                                        "identity always"
                                    } else {
                                        "default"
                                    }
                                    .into(),
                                ),
                                here.map(|h| h.next.to_string()),
                                here.map(|h| h.end.to_string()),
                                Some(here.map(|h| h.blocks).unwrap_or(0).to_string()),
                                kept.map(|k| k.1.to_string()),
                            ]);
                        }
                    }
                    Err(why) => rows.push(vec![
                        Some(table.clone()),
                        None,
                        None,
                        Some(format!("inconsistent: {why}")),
                        None,
                        None,
                        None,
                        None,
                    ]),
                }
            }
            Ok(Output {
                columns: vec![
                    "table",
                    "column",
                    "sequence",
                    "kind",
                    "next",
                    "block_end",
                    "blocks",
                    "stored_next",
                ],
                tag: format!("SHOW {}", rows.len()),
                rows,
            })
        }
        ["show", "directory"] => {
            let Some(d) = &map.directory else {
                return Err(err("55000", "the shard map has no directory tables"));
            };
            let rows: Vec<Vec<Option<String>>> = d
                .snapshot()
                .into_iter()
                .map(|(k, s)| vec![Some(k), Some(map.shard_names()[s].clone())])
                .collect();
            Ok(Output {
                columns: vec!["key", "shard"],
                tag: format!("SHOW {}", rows.len()),
                rows,
            })
        }
        ["directory", "assign", key, "to", shard] => {
            let s = shard_of(shard)?;
            dir_admin::assign(map, key, s)
                .await
                .map_err(|e| err("55000", e.to_string()))?;
            Ok(Output {
                columns: vec![],
                rows: vec![],
                tag: "DIRECTORY ASSIGN".into(),
            })
        }
        ["directory", "move", key, "to", shard] => {
            let s = shard_of(shard)?;
            let report = dir_admin::move_key(map, key, s)
                .await
                .map_err(|e| err("55000", e.to_string()))?;
            tracing::info!(key = %key, from = %report.from, to = %shard, tables = ?report.tables, "directory key moved");
            Ok(Output {
                columns: vec!["table", "rows"],
                rows: report
                    .tables
                    .into_iter()
                    .map(|(t, n)| vec![Some(t), Some(n.to_string())])
                    .collect(),
                tag: "DIRECTORY MOVE".into(),
            })
        }
        _ => Err(err("42601", format!("unknown admin command; {USAGE}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fold_and_unquote() {
        assert_eq!(
            words("DIRECTORY Move 'it''s' TO \"S1\";").unwrap(),
            vec!["DIRECTORY", "Move", "it's", "TO", "S1"]
        );
        assert_eq!(
            words("show route users 42").unwrap(),
            vec!["show", "route", "users", "42"]
        );
    }
}
