//! The listening connection: one per proxy process, to the map's default shard, opened
//! when a first session listens. It LISTENs on every channel of the [`Hub`] (and UNLISTENs
//! the ones nobody listens on any more), hands each notification to the hub, follows the
//! default shard when a reload moves it, and reconnects with backoff when it is lost —
//! notifications sent while it is down are lost (a `tracing` warning says so).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::AsyncMessage;

use super::{Applied, Hub, Notification};
use crate::sharding::shard::ShardInfo;

/// First wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest a LISTEN/UNLISTEN round trip may take before the connection is given up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a listening connection ended.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("{0}")]
    Pg(#[from] tokio_postgres::Error),
    #[error("LISTEN/UNLISTEN did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed")]
    Closed,
}

/// Keeps the process's listening connection for as long as the proxy runs.
pub async fn run(hub: Arc<Hub>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Connected only while some session listens.
        while hub.wanted().0.is_empty() {
            hub.changed().await;
        }
        let Some((info, timeout)) = hub.target() else {
            hub.changed().await;
            continue;
        };
        match session(&hub, &info, timeout).await {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => {
                hub.publish(Applied {
                    up: false,
                    ..hub.applied()
                });
                tracing::warn!(
                    shard = %info.name,
                    error = %e,
                    "the LISTEN connection to the default shard failed; notifications sent until it is back are lost; reconnecting"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection: listens until nobody listens any more or the target moves (`Ok`), or
/// until it fails.
async fn session(hub: &Arc<Hub>, info: &ShardInfo, timeout: Duration) -> Result<(), Lost> {
    let mut config = info.control_config(timeout);
    config.application_name("shardwire-listen");
    let (client, mut conn) = config.connect(info.tls.clone()).await?;
    let (dead_tx, mut dead) = tokio::sync::oneshot::channel::<Option<tokio_postgres::Error>>();
    let fan_out = hub.clone();
    let reader = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => fan_out.deliver(Notification {
                    pid: n.process_id(),
                    channel: n.channel().to_string(),
                    payload: n.payload().to_string(),
                }),
                Ok(_) => {}
                Err(e) => {
                    let _ = dead_tx.send(Some(e));
                    return;
                }
            }
        }
        let _ = dead_tx.send(None);
    });
    // Ends the reader (and with it the connection) however this returns.
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _reader = Abort(reader);
    tracing::info!(shard = %info.name, "LISTEN connection to the default shard open");
    let mut active: BTreeSet<String> = BTreeSet::new();
    loop {
        if !hub
            .target()
            .is_some_and(|(t, d)| t.same_server(info) && d == timeout)
        {
            hub.publish(Applied {
                up: false,
                ..hub.applied()
            });
            return Ok(()); // the default shard moved: listen there
        }
        let (wanted, version) = hub.wanted();
        if wanted.is_empty() {
            hub.publish(Applied { version, up: false });
            return Ok(());
        }
        let wanted: BTreeSet<String> = wanted.into_iter().collect();
        let mut sql = String::new();
        for c in active.difference(&wanted) {
            sql.push_str("UNLISTEN ");
            sql.push_str(&crate::quote::ident(c));
            sql.push_str(";\n");
        }
        for c in wanted.difference(&active) {
            sql.push_str("LISTEN ");
            sql.push_str(&crate::quote::ident(c));
            sql.push_str(";\n");
        }
        if !sql.is_empty() {
            match tokio::time::timeout(COMMAND_TIMEOUT, client.batch_execute(&sql)).await {
                Ok(r) => r?,
                Err(_) => return Err(Lost::Timeout(COMMAND_TIMEOUT)),
            }
            active = wanted;
        }
        hub.publish(Applied { version, up: true });
        // Woken by a change of the channels or of the target (a reload moved the default
        // shard), or by the connection's end.
        tokio::select! {
            _ = hub.changed() => {}
            r = &mut dead => return Err(match r {
                Ok(Some(e)) => Lost::Pg(e),
                _ => Lost::Closed,
            }),
        }
    }
}
