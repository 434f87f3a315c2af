//! Two-phase commit under faults (issue 15): a relay between the proxy and each shard breaks
//! the connection that carries one commit step — before the shard sees it, or after it ran
//! but before its answer returns. In every case the client never hears COMMIT for a
//! transaction that is not decided, never sees a panic (the session answers and goes on),
//! and once recovery has run every shard agrees with the decision: the ledger's total is
//! exact and each transfer is applied on both sides or on neither.

mod common;

use std::time::Duration;

use common::relay::{Fault, Relay};
use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;

const TABLES: &str = "accts: { key: id, type: bigint, strategy: hash }\n";
const START: i64 = 1000;

/// One account id on each shard.
fn one_per_shard(env: &TestEnv) -> Vec<i64> {
    let map = ShardMap::from_yaml_str(&env.shard_map_yaml(TABLES, ""), "t").unwrap();
    let mut out = vec![0i64; env.shard_count()];
    for id in 1i64.. {
        let s = map.hash_shard(&KeyValue::Int(id));
        if out[s] == 0 {
            out[s] = id;
        }
        if out.iter().all(|&x| x != 0) {
            return out;
        }
    }
    unreachable!()
}

/// What the client must hear.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Heard {
    /// COMMIT.
    Commit,
    /// An error with this SQLSTATE.
    Error(&'static str),
}

/// What the shards must hold after recovery.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Applied {
    Yes,
    No,
}

struct Case {
    what: &'static str,
    /// Which shard's relay breaks, the statement it watches for, and how.
    shard: usize,
    pattern: &'static str,
    fault: Fault,
    /// The transfer's two shards (from, to).
    between: (usize, usize),
    heard: Heard,
    applied: Applied,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_never_half_commits_under_faults() {
    let env = TestEnv::new(3).await;
    let mut relays = Vec::new();
    for i in 0..env.shard_count() {
        relays.push(Relay::start(env.shard_port(i)).await);
    }
    let direct = env.shard_map_yaml(TABLES, "");
    let mut relayed = direct.clone();
    for (i, r) in relays.iter().enumerate() {
        relayed = relayed.replace(
            &format!("127.0.0.1:{}/", env.shard_port(i)),
            &format!("127.0.0.1:{}/", r.port),
        );
    }
    let proxy = Proxy::start_yaml(&relayed).await;
    let ids = one_per_shard(&env);
    let c = proxy.client().await;
    c.batch_execute("CREATE TABLE accts (id bigint PRIMARY KEY, bal bigint NOT NULL)")
        .await
        .unwrap();
    for &id in &ids {
        c.execute(
            "INSERT INTO accts (id, bal) VALUES ($1, $2)",
            &[&id, &START],
        )
        .await
        .unwrap();
    }
    let direct_map = ShardMap::from_yaml_str(&direct, "direct").unwrap();
    // The decision row is the only INSERT with this text (recovery binds its gid).
    let decision = "'commit') ON CONFLICT";
    let cases = [
        Case {
            what: "a participant's transaction aborted before PREPARE (it answers ROLLBACK)",
            shard: 1,
            pattern: "PREPARE TRANSACTION",
            fault: Fault::AbortFirst,
            between: (0, 1),
            heard: Heard::Error("40000"),
            applied: Applied::No,
        },
        Case {
            what: "a participant's PREPARE answer is lost",
            shard: 1,
            pattern: "PREPARE TRANSACTION",
            fault: Fault::DropReply,
            between: (0, 1),
            heard: Heard::Error("08006"),
            applied: Applied::No,
        },
        Case {
            what: "the first participant's PREPARE answer is lost",
            shard: 0,
            pattern: "PREPARE TRANSACTION",
            fault: Fault::DropReply,
            between: (0, 1),
            heard: Heard::Error("08006"),
            applied: Applied::No,
        },
        Case {
            what: "a participant is lost before its PREPARE",
            shard: 2,
            pattern: "PREPARE TRANSACTION",
            fault: Fault::DropRequest,
            between: (1, 2),
            heard: Heard::Error("08006"),
            applied: Applied::No,
        },
        Case {
            what: "the decision's answer is lost (decided on the held log-shard connection)",
            shard: 0,
            pattern: decision,
            fault: Fault::DropReply,
            between: (0, 2),
            heard: Heard::Error("08007"),
            applied: Applied::Yes,
        },
        Case {
            what: "the decision's answer is lost (decided on a pooled connection)",
            shard: 0,
            pattern: decision,
            fault: Fault::DropReply,
            between: (1, 2),
            heard: Heard::Error("08007"),
            applied: Applied::Yes,
        },
        Case {
            what: "the decision never reaches the log shard",
            shard: 0,
            pattern: decision,
            fault: Fault::DropRequest,
            between: (1, 2),
            heard: Heard::Error("08007"),
            applied: Applied::No,
        },
        Case {
            what: "a COMMIT PREPARED answer is lost",
            shard: 2,
            pattern: "COMMIT PREPARED",
            fault: Fault::DropReply,
            between: (1, 2),
            heard: Heard::Commit,
            applied: Applied::Yes,
        },
        Case {
            what: "a COMMIT PREPARED never arrives (finished on a fresh connection)",
            shard: 1,
            pattern: "COMMIT PREPARED",
            fault: Fault::DropRequest,
            between: (0, 1),
            heard: Heard::Commit,
            applied: Applied::Yes,
        },
    ];
    for case in &cases {
        let before = balances(&env, &ids).await;
        let (from, to) = (ids[case.between.0], ids[case.between.1]);
        relays[case.shard].arm(case.pattern, case.fault);
        let c = proxy.client().await;
        for sql in [
            "BEGIN".to_string(),
            format!("UPDATE accts SET bal = bal - 10 WHERE id = {from}"),
            format!("UPDATE accts SET bal = bal + 10 WHERE id = {to}"),
        ] {
            c.batch_execute(&sql).await.unwrap();
        }
        let heard = match c.batch_execute("COMMIT").await {
            Ok(()) => Heard::Commit,
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                Heard::Error(match code.as_str() {
                    "40000" => "40000",
                    "08006" => "08006",
                    "08007" => "08007",
                    other => panic!("{}: unexpected error {other}: {e:?}", case.what),
                })
            }
        };
        assert_eq!(
            relays[case.shard].fired(),
            1,
            "{}: the fault fired",
            case.what
        );
        relays[case.shard].disarm();
        assert_eq!(heard, case.heard, "{}", case.what);
        // The session is still usable (no panic, no hang).
        let one: i64 = c
            .query_one("SELECT count(*) FROM accts", &[])
            .await
            .unwrap_or_else(|e| panic!("{}: session unusable: {e}", case.what))
            .get(0);
        assert_eq!(one, ids.len() as i64);
        // Recovery decides from the log alone; afterwards nothing is left in doubt.
        shardwire::backend::twophase::recover(&direct_map, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{}: recovery: {e}", case.what));
        let left = env
            .per_shard_i64(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            )
            .await;
        assert_eq!(left, vec![0, 0, 0], "{}: prepared left", case.what);
        let after = balances(&env, &ids).await;
        assert_eq!(
            after.iter().sum::<i64>(),
            START * ids.len() as i64,
            "{}: ledger total",
            case.what
        );
        let mut want = before.clone();
        if case.applied == Applied::Yes {
            want[case.between.0] -= 10;
            want[case.between.1] += 10;
        }
        assert_eq!(after, want, "{}: balances", case.what);
        relays.iter().for_each(|r| r.disarm());
    }
}

/// Each account's balance, read on its shard directly.
async fn balances(env: &TestEnv, ids: &[i64]) -> Vec<i64> {
    let mut out = Vec::new();
    for (s, &id) in ids.iter().enumerate() {
        let row = env
            .shard_client(s)
            .await
            .query_one("SELECT bal FROM accts WHERE id = $1", &[&id])
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}
