//! psql through the proxy, as people use it: `-c` and scripts on stdin (the simple protocol,
//! several statements in one Query for a script sent with `-c`), `\copy … from pstdin`,
//! Ctrl-C (SIGINT makes psql send a CancelRequest), `PGOPTIONS`. psql 15 has no way to bind
//! parameters (`\bind` came in 16), so "prepared" is n/a.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Report;
use crate::Run;

fn psql_bin() -> std::path::PathBuf {
    shardwire::localpg::pg_bin_dir()
        .map(|d| d.join("psql"))
        .unwrap_or_else(|_| "psql".into())
}

/// `psql -X -q -tA --no-psqlrc URL` with `extra` arguments, `stdin` fed, output captured.
fn psql(url: &str, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(psql_bin());
    cmd.args(["-X", "-q", "-tA", "-d", url])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run psql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("feed psql");
    child.wait_with_output().expect("psql output")
}

/// Runs `sql` with `-v ON_ERROR_STOP=1 -c`; asserts success; returns stdout, trimmed.
fn ok(url: &str, sql: &str) -> String {
    let out = psql(url, &["-v", "ON_ERROR_STOP=1", "-c", sql], "", &[]);
    assert!(
        out.status.success(),
        "psql -c {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a script from stdin without ON_ERROR_STOP (errors go to stderr, psql goes on, as in
/// an interactive session); returns (stdout, stderr).
fn script(url: &str, text: &str) -> (String, String) {
    let out = psql(url, &["-f", "-"], text, &[]);
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the 12 scenarios (psql is a process; each step runs on a blocking thread).
pub async fn run(run: &Run) -> String {
    let url = run.url();
    let ids = run.ids.clone();
    let batch = run.batch_ids.clone();
    tokio::task::spawn_blocking(move || scenarios(&url, &ids, &batch))
        .await
        .expect("psql scenarios panicked")
}

fn scenarios(url: &str, ids: &[i64], batch: &[i64]) -> String {
    let mut r = Report::default();

    assert_eq!(ok(url, "SELECT 1"), "1");
    assert!(!ok(url, "SHOW server_version").is_empty());
    r.ok("connect");

    ok(url, "DROP TABLE IF EXISTS items");
    ok(
        url,
        "CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)",
    );
    assert_eq!(ok(url, "SELECT count(*) FROM items"), "0");
    r.ok("ddl");

    for id in ids {
        ok(
            url,
            &format!("INSERT INTO items (id, grp, v) VALUES ({id}, 1, 'v{id}')"),
        );
        assert_eq!(
            ok(url, &format!("SELECT v FROM items WHERE id = {id}")),
            format!("v{id}")
        );
        assert_eq!(
            ok(
                url,
                &format!("UPDATE items SET v = 'u{id}' WHERE id = {id} RETURNING v")
            ),
            format!("u{id}")
        );
    }
    let last = ids[2];
    ok(url, &format!("DELETE FROM items WHERE id = {last}"));
    assert_eq!(
        ok(url, &format!("SELECT v FROM items WHERE id = {last}")),
        ""
    );
    ok(
        url,
        &format!("INSERT INTO items (id, grp, v) VALUES ({last}, 1, 'u{last}')"),
    );
    assert_eq!(
        ok(
            url,
            "INSERT INTO items (id, grp, v) VALUES (900, 1, 'r') RETURNING id"
        ),
        "900"
    );
    ok(url, "DELETE FROM items WHERE id = 900");
    // The same shape of script people paste: 30 updates, one statement a line.
    let updates: String = (0..30)
        .map(|i| {
            format!(
                "UPDATE items SET grp = grp + 1 WHERE id = {};\n",
                ids[i % 3]
            )
        })
        .collect();
    let (_, err) = script(url, &updates);
    assert!(err.is_empty(), "{err}");
    for id in ids {
        assert_eq!(
            ok(url, &format!("SELECT grp FROM items WHERE id = {id}")),
            "11"
        );
    }
    r.ok("crud");
    r.na(
        "prepared",
        "psql 15 cannot bind parameters (\\bind is psql 16)",
    );

    let rows: String = (1001..=1100)
        .map(|id| format!("({id}, {}, 'm{id}')", id % 5))
        .collect::<Vec<_>>()
        .join(", ");
    ok(
        url,
        &format!("INSERT INTO items (id, grp, v) VALUES {rows}"),
    );
    assert_eq!(
        ok(
            url,
            "SELECT count(*) FROM items WHERE id BETWEEN 1001 AND 1100"
        ),
        "100"
    );
    assert_eq!(
        ok(
            url,
            "SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp"
        ),
        "0|20\n1|20\n2|20\n3|20\n4|20"
    );
    assert_eq!(
        ok(
            url,
            "SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3"
        ),
        "1100\n1099\n1098"
    );
    assert_eq!(
        ok(
            url,
            "SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100"
        ),
        "105050"
    );
    assert_eq!(
        ok(
            url,
            "SELECT id, v FROM items WHERE id = ANY('{1001,1050,1099}') ORDER BY id"
        ),
        "1001|m1001\n1050|m1050\n1099|m1099"
    );
    r.ok("multi_shard_read");

    for (scenario, keys, tag) in [
        ("txn_one_shard", &ids[..1], "1"),
        ("txn_two_shards", &ids[..2], "2"),
    ] {
        let set = |v: &str| -> String {
            keys.iter()
                .map(|id| format!("UPDATE items SET v = '{v}' WHERE id = {id};\n"))
                .collect()
        };
        let (_, err) = script(
            url,
            &format!("BEGIN;\n{}COMMIT;\n", set(&format!("c{tag}"))),
        );
        assert!(err.is_empty(), "{err}");
        let (_, err) = script(
            url,
            &format!("BEGIN;\n{}ROLLBACK;\n", set(&format!("r{tag}"))),
        );
        assert!(err.is_empty(), "{err}");
        // An error mid-block: psql goes on, the next statement is refused (25P02), and the
        // COMMIT at the end reports ROLLBACK.
        let dup = keys[keys.len() - 1];
        let (out, err) = script(
            url,
            &format!(
                "BEGIN;\n{}INSERT INTO items (id, grp, v) VALUES ({dup}, 0, 'dup');\nSELECT 1;\nCOMMIT;\n",
                set(&format!("e{tag}"))
            ),
        );
        assert!(err.contains("duplicate key value"), "{err}");
        assert!(err.contains("current transaction is aborted"), "{err}");
        assert!(out.is_empty(), "{out}");
        for id in keys {
            assert_eq!(
                ok(url, &format!("SELECT v FROM items WHERE id = {id}")),
                format!("c{tag}")
            );
        }
        r.ok(scenario);
    }

    // psql's batch: several statements in one -c string, one Query message, one shard.
    let batch_sql: String = batch
        .iter()
        .map(|id| format!("INSERT INTO items (id, grp, v) VALUES ({id}, 7, 'b{id}');"))
        .collect();
    ok(url, &batch_sql);
    assert_eq!(ok(url, "SELECT count(*) FROM items WHERE grp = 7"), "50");
    assert_eq!(
        ok(url, "DELETE FROM items WHERE grp = 7 RETURNING id")
            .lines()
            .count(),
        50
    );
    r.ok("batch");

    let out = psql(
        url,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\copy items (id, grp, v) from pstdin",
        ],
        &super::copy_rows(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(url, "SELECT count(*) FROM items WHERE grp = 8"), "300");
    assert_eq!(ok(url, "SELECT v FROM items WHERE id = 2150"), "c2150");
    r.ok("copy");

    // 20 psql processes at once, each running 150 updates and reads of its own row.
    ok(url, &super::worker_rows());
    let per = 150;
    let workers: Vec<_> = (0..20)
        .map(|w| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let id = 3001 + w;
                let text: String = (1..=per)
                    .map(|_| {
                        format!(
                            "UPDATE items SET grp = grp + 1 WHERE id = {id};\nSELECT grp FROM items WHERE id = {id};\n"
                        )
                    })
                    .collect();
                let (out, err) = script(&url, &text);
                assert!(err.is_empty(), "worker {w}: {err}");
                let seen: Vec<i32> = out.lines().map(|l| l.parse().unwrap()).collect();
                assert_eq!(seen, (1..=per).collect::<Vec<_>>(), "worker {w}");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("psql worker");
    }
    assert_eq!(
        ok(
            url,
            "SELECT count(*) FROM items WHERE id BETWEEN 3001 AND 3020 AND grp = 150"
        ),
        "20"
    );
    r.line(&format!("concurrency ops={}", 20 * per));
    r.ok("concurrency");

    // Ctrl-C: SIGINT makes psql send a CancelRequest for its running statement.
    let child = Command::new(psql_bin())
        .args(["-X", "-q", "-tA", "-d", url, "-c", "SELECT pg_sleep(5)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().expect("psql");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(ok(url, "SELECT 1"), "1");
    r.ok("cancel");

    let t0 = Instant::now();
    let (out, err) = script(
        url,
        "SET statement_timeout = 300;\nSELECT pg_sleep(2);\nRESET statement_timeout;\nSELECT pg_sleep(0.5);\nSELECT 'after';\n",
    );
    assert!(
        err.contains("canceling statement due to statement timeout"),
        "{err}"
    );
    assert!(out.ends_with("after"), "{out}");
    assert!(t0.elapsed() < Duration::from_millis(2000));
    // PGOPTIONS, the startup `options` parameter.
    let out = psql(
        url,
        &["-c", "SELECT pg_sleep(2)"],
        "",
        &[("PGOPTIONS", "-c statement_timeout=300")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to statement timeout"),
        "{err}"
    );
    r.ok("statement_timeout");

    r.done()
}
