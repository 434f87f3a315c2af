//! Generated keys unique across shards (issue 20): serial, bigserial and identity columns of
//! sharded and reference tables get their values from the proxy's allocator, also when the
//! generated column is the shard key; values are never reissued (existing rows, several
//! proxy processes, a proxy killed mid-run).

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Proxy, TestEnv};
use shardwire::sharding::keys::KeyValue;
use shardwire::sharding::shardmap::ShardMap;

const TABLES: &str = "app_ids: { key: user_id, type: bigint, strategy: hash }\n\
accounts: { key: id, type: bigint, strategy: hash }\n\
tickets: { key: id, type: bigint, strategy: hash }\n\
kinds: { strategy: reference }\n";

/// The tables, one statement each (a multi-statement DDL string across shards is issue 19).
const SCHEMA: [&str; 4] = [
    "CREATE TABLE app_ids (id bigserial, user_id bigint NOT NULL, v text, PRIMARY KEY (user_id, id))",
    "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text)",
    "CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)",
    "CREATE TABLE kinds (id serial PRIMARY KEY, code text UNIQUE)",
];

/// Creates [`SCHEMA`] through the proxy.
async fn create_schema(c: &tokio_postgres::Client) {
    for ddl in SCHEMA {
        c.batch_execute(ddl).await.unwrap();
    }
}

/// Runs `sql` (a `COPY … FROM STDIN`) with 500 rows made by `row`, in chunks that cut rows.
async fn copy_rows(c: &tokio_postgres::Client, sql: &str, row: impl Fn(usize) -> String) {
    use futures::SinkExt;
    let data: String = (0..500).map(row).collect();
    let sink = c.copy_in::<_, bytes::Bytes>(sql).await.unwrap();
    futures::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(777) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 500);
}

/// Asserts the values are distinct.
fn assert_unique(what: &str, values: impl IntoIterator<Item = i64>) -> usize {
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for v in values {
        if !seen.insert(v) {
            dups.push(v);
        }
    }
    assert!(
        dups.is_empty(),
        "{what}: duplicate values {:?}",
        &dups[..dups.len().min(20)]
    );
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_values_are_unique_across_shards() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml_with(TABLES, "", &[], true);
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    create_schema(&c).await;

    // The example: 60 rows of a table hashed on user_id, each id from the proxy.
    let ins = c
        .prepare("INSERT INTO app_ids (user_id, v) VALUES ($1, 'x') RETURNING id")
        .await
        .unwrap();
    assert_eq!(
        ins.params().len(),
        1,
        "the client sees its own parameters only"
    );
    let mut ids = Vec::new();
    for u in 1..=60i64 {
        ids.push(c.query_one(&ins, &[&u]).await.unwrap().get::<_, i64>(0));
    }
    // The same through the simple protocol, and through DEFAULT / no column list.
    for u in 61..=90i64 {
        let sql = match u % 3 {
            0 => format!("INSERT INTO app_ids (user_id, v) VALUES ({u}, 's') RETURNING id"),
            1 => format!("INSERT INTO app_ids VALUES (DEFAULT, {u}, 'd') RETURNING id"),
            _ => format!("INSERT INTO app_ids (id, user_id) VALUES (DEFAULT, {u}) RETURNING id"),
        };
        let rows = c.simple_query(&sql).await.unwrap();
        let id = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get(0).map(|v| v.parse::<i64>().unwrap())
            }
            _ => None,
        });
        ids.push(id.unwrap());
    }
    assert_eq!(assert_unique("app_ids RETURNING", ids.iter().copied()), 90);
    let on_shards = env.placed("app_ids", "id").await;
    assert_eq!(on_shards.len(), 90);
    assert_unique("app_ids on the shards", on_shards.iter().map(|p| p.1));
    assert!(
        (0..3).all(|s| on_shards.iter().any(|p| p.0 == s)),
        "rows on every shard"
    );
    // ON CONFLICT takes a value as in Postgres; the row keeps its first id.
    let again = c
        .query(
            "INSERT INTO app_ids (user_id, v) VALUES (1, 'y') ON CONFLICT DO NOTHING RETURNING id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "a new id, so no conflict");

    // The key itself generated: the proxy assigns it before routing.
    let mut keys = Vec::new();
    let named = c
        .prepare("INSERT INTO accounts (name) VALUES ($1) RETURNING id")
        .await
        .unwrap();
    for i in 0..40 {
        keys.push(
            c.query_one(&named, &[&format!("a{i}")])
                .await
                .unwrap()
                .get::<_, i64>(0),
        );
    }
    for sql in [
        "INSERT INTO accounts DEFAULT VALUES RETURNING id",
        "INSERT INTO accounts VALUES (DEFAULT, 'd') RETURNING id",
        "INSERT INTO accounts (name) VALUES ('m1'), ('m2'), ('m3'), ('m4'), ('m5') RETURNING id",
    ] {
        for r in c.query(sql, &[]).await.unwrap() {
            keys.push(r.get(0));
        }
        for m in c.simple_query(sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                keys.push(r.get(0).unwrap().parse().unwrap());
            }
        }
    }
    // Multi-row INSERTs whose generated keys span shards, in a transaction: the simple
    // protocol and the extended one (its parts join the transaction); RETURNING in row order.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO accounts (name) VALUES ('t1'), ('t2'), ('t3'), ('t4')")
        .await
        .unwrap();
    let returned: Vec<(i64, String)> = c
        .query(
            "INSERT INTO accounts (name) VALUES ($1), ($2), ($3), ($4), ($5), ($6) RETURNING id, name",
            &[&"x1", &"x2", &"x3", &"x4", &"x5", &"x6"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    c.batch_execute("COMMIT").await.unwrap();
    let names: Vec<&str> = returned.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        names,
        ["x1", "x2", "x3", "x4", "x5", "x6"],
        "RETURNING in the rows' order"
    );
    assert!(
        returned.windows(2).all(|w| w[0].0 < w[1].0),
        "ids increase in row order: {returned:?}"
    );
    let spread: HashSet<usize> = returned
        .iter()
        .map(|r| map.hash_shard(&KeyValue::Int(r.0)))
        .collect();
    assert!(spread.len() > 1, "the rows span shards");
    let on_shards = env.placed("accounts", "id").await;
    assert_eq!(on_shards.len(), keys.len() + 10);
    assert_unique("accounts", on_shards.iter().map(|p| p.1));
    for (s, id) in &on_shards {
        assert_eq!(
            map.hash_shard(&KeyValue::Int(*id)),
            *s,
            "account {id} is on the shard its key maps to"
        );
    }
    assert!((0..3).all(|s| on_shards.iter().any(|p| p.0 == s)));

    // currval/lastval answer the values the proxy gave this session (both protocols).
    let fresh = proxy.client().await;
    let err = fresh
        .simple_query("SELECT currval('accounts_id_seq')")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "{err}");
    let id: i64 = fresh
        .query_one(
            "INSERT INTO accounts (name) VALUES ('cv') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for sql in [
        "SELECT currval('accounts_id_seq')",
        "SELECT currval('public.accounts_id_seq'::regclass)",
        "SELECT currval(pg_get_serial_sequence('accounts', 'id'))",
        "SELECT lastval()",
    ] {
        let v: i64 = fresh.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(v, id, "{sql}");
    }
    fresh
        .batch_execute("INSERT INTO app_ids (user_id, v) VALUES (5, 'a'), (6, 'b')")
        .await
        .unwrap();
    let last: i64 = fresh
        .query_one("SELECT lastval()", &[])
        .await
        .unwrap()
        .get(0);
    let cur: i64 = fresh
        .query_one("SELECT currval('app_ids_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, cur, "lastval follows the last value given");
    let still: i64 = fresh
        .query_one("SELECT currval('accounts_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, id, "each sequence keeps its own currval");

    // GENERATED ALWAYS AS IDENTITY: values given with OVERRIDING SYSTEM VALUE.
    let t: Vec<i64> = c
        .query(
            "INSERT INTO tickets (name) VALUES ('a'), ('b'), ('c') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(assert_unique("tickets", t.iter().copied()), 3);
    let err = c
        .batch_execute("INSERT INTO tickets (id, name) VALUES (5, 'x')")
        .await
        .unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("428C9"),
        "an explicit value into GENERATED ALWAYS is refused as by Postgres"
    );

    // A reference table's copies get the same id on every shard.
    c.batch_execute("INSERT INTO kinds (code) VALUES ('k1'), ('k2')")
        .await
        .unwrap();
    let mut copies: Vec<Vec<(i64, String)>> = Vec::new();
    for s in 0..3 {
        let sc = env.shard_client(s).await;
        copies.push(
            sc.query("SELECT id::int8, code FROM kinds ORDER BY code", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        );
    }
    assert!(copies.windows(2).all(|w| w[0] == w[1]), "{copies:?}");

    // INSERT … SELECT cannot get a value per row from the proxy: refused, not duplicated.
    let err = c
        .batch_execute(
            "INSERT INTO app_ids (user_id, v) SELECT user_id, v FROM app_ids WHERE user_id = 1",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");

    // COPY without the generated column: the proxy appends a value to every row (text and
    // CSV; the key generated or not).
    let before = env.placed("accounts", "id").await.len();
    let before_app = env.placed("app_ids", "id").await.len();
    copy_rows(&c, "COPY app_ids (user_id, v) FROM STDIN", |i| {
        format!("{}\tc{i}\n", 1000 + i % 9)
    })
    .await;
    copy_rows(&c, "COPY accounts (name) FROM STDIN (FORMAT csv)", |i| {
        format!("\"n,{i}\"\n")
    })
    .await;
    let ids = env.placed("app_ids", "id").await;
    assert_unique("app_ids after COPY", ids.iter().map(|p| p.1));
    assert_eq!(ids.len(), before_app + 500);
    let accounts = env.placed("accounts", "id").await;
    assert_unique("accounts after COPY", accounts.iter().map(|p| p.1));
    assert_eq!(accounts.len(), before + 500);
    for (s, id) in &accounts {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "account {id}");
    }
    let copied: i64 = c
        .query_one("SELECT count(*) FROM accounts WHERE name LIKE 'n,%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 500);
    // Into a reference table it is refused (each shard's sequence would fill it).
    let err = c
        .simple_query("COPY kinds (code) FROM STDIN")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");

    // DDL through the proxy is seen at once: a column added with a default sequence.
    c.batch_execute("CREATE TABLE gen_later (id bigint PRIMARY KEY, n int)")
        .await
        .unwrap();
    // (not in the map: unsharded, Postgres's own sequence applies)
    c.batch_execute("ALTER TABLE tickets ADD COLUMN seqno bigserial")
        .await
        .unwrap();
    let r = c
        .query_one(
            "INSERT INTO tickets (name) VALUES ('s') RETURNING seqno",
            &[],
        )
        .await
        .unwrap();
    let seqno: i64 = r.get(0);
    // (Rows already there got values from each shard's own sequence when the column was
    // added: Postgres fills them on each shard. New rows get the proxy's.)
    let all: Vec<i64> = env
        .placed("tickets", "seqno")
        .await
        .iter()
        .map(|p| p.1)
        .collect();
    assert_eq!(all.iter().filter(|&&v| v == seqno).count(), 1);
    assert!(
        all.iter().all(|&v| v <= seqno),
        "above every existing value"
    );

    // The admin console shows the generated columns and the allocator.
    let admin = proxy.admin_client().await;
    let rows: Vec<Vec<Option<String>>> = admin
        .simple_query("SHOW GENERATED")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..8).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect();
    let row = |t: &str, c: &str| {
        rows.iter()
            .find(|r| r[0].as_deref() == Some(t) && r[1].as_deref() == Some(c))
            .unwrap_or_else(|| panic!("{t}.{c} in {rows:?}"))
            .clone()
    };
    let a = row("app_ids", "id");
    assert_eq!(a[2].as_deref(), Some("public.app_ids_id_seq"));
    let next: i64 = a[4].as_deref().unwrap().parse().unwrap();
    let stored: i64 = a[7].as_deref().unwrap().parse().unwrap();
    assert!(next > 0 && stored >= next, "{a:?}");
    assert_eq!(row("tickets", "id")[3].as_deref(), Some("identity always"));
    assert_eq!(row("kinds", "id")[3].as_deref(), Some("default"));
}

/// Tables the catalog has not seen: created on the shards behind the proxy's back after it
/// started, and created in the same transaction as the INSERTs (uncommitted DDL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_later_get_proxy_values_from_the_first_insert() {
    let env = TestEnv::new(3).await;
    let tables = "late: { key: k, type: bigint, strategy: hash }\n\
                  intxn: { key: k, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let c = proxy.client().await;
    // Keys on three different shards.
    let keys: Vec<i64> = (0..3)
        .map(|s| {
            (1i64..)
                .find(|&k| map.hash_shard(&KeyValue::Int(k)) == s)
                .unwrap()
        })
        .collect();
    // Before it exists anywhere: Postgres's own error, even without a column list.
    let err = c
        .batch_execute("INSERT INTO late VALUES (1, 2)")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "{err}");
    for s in 0..3 {
        env.shard_client(s)
            .await
            .batch_execute(
                "CREATE TABLE late (id bigserial, k bigint NOT NULL, PRIMARY KEY (k, id))",
            )
            .await
            .unwrap();
    }
    // A table found nowhere is looked for again after a second (until then: 42P01, never
    // the shards' own sequences).
    tokio::time::sleep(shardwire::sharding::catalog::ABSENT_FOR + Duration::from_millis(100)).await;
    let mut ids = Vec::new();
    for k in &keys {
        let r = c
            .query_one("INSERT INTO late (k) VALUES ($1) RETURNING id", &[k])
            .await
            .unwrap();
        ids.push(r.get::<_, i64>(0));
    }
    assert_eq!(assert_unique("late", ids.iter().copied()), 3, "{ids:?}");

    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("CREATE TABLE intxn (id bigserial, k bigint NOT NULL, PRIMARY KEY (k, id))")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for k in &keys {
        let sql = format!("INSERT INTO intxn (k) VALUES ({k}) RETURNING id");
        for m in c.simple_query(&sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                ids.push(r.get(0).unwrap().parse::<i64>().unwrap());
            }
        }
    }
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(assert_unique("intxn", ids.iter().copied()), 3, "{ids:?}");
    let on_shards = env.placed("intxn", "id").await;
    assert_eq!(on_shards.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_already_on_the_shards_are_never_reissued() {
    let env = TestEnv::new(3).await;
    // Tables made directly on the shards, with rows and sequences already used.
    for s in 0..3 {
        env.shard_client(s)
            .await
            .batch_execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, name text)")
            .await
            .unwrap();
    }
    env.shard_client(1)
        .await
        .batch_execute("INSERT INTO accounts (id, name) VALUES (5000, 'old')")
        .await
        .unwrap();
    env.shard_client(2)
        .await
        .batch_execute("SELECT setval('accounts_id_seq', 7000)")
        .await
        .unwrap();
    let proxy = Proxy::start(&env, TABLES, "").await;
    let c = proxy.client().await;
    let id: i64 = c
        .query_one(
            "INSERT INTO accounts (name) VALUES ('new') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id > 7000, "a fresh id above every existing value, got {id}");
    // The allocator's state is durable on the default shard.
    let next: i64 = env
        .shard_client(0)
        .await
        .query_one(
            "SELECT next_value FROM shardwire.shardwire_sequences WHERE name = 'public.accounts_id_seq'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(next > id);
}

/// A proxy process serving `yaml` (written to `dir`) on `port`.
fn spawn_proxy(dir: &std::path::Path, yaml: &str, port: u16) -> Child {
    let path = dir.join(format!("map-{port}.yaml"));
    std::fs::write(
        &path,
        yaml.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(["--log-level", "warn", "serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to the proxy on `port`, retrying while it starts (or restarts).
async fn connect_retry(port: u16) -> tokio_postgres::Client {
    let conninfo = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
    // Up to a minute: a restarted proxy reads the shards' catalogs and probes two-phase
    // commit before it listens, which takes long on a loaded CI machine.
    for _ in 0..600 {
        if let Ok((c, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no proxy on port {port}");
}

/// Must-show 1: two proxy processes × 8 clients insert 100,000 rows (half into a table whose
/// key is the generated id, half into one keyed otherwise); one proxy is killed and
/// restarted mid-run. No value is ever issued twice, and every row is on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxy_processes_and_a_restart_never_duplicate() {
    let env = TestEnv::new(3).await;
    let yaml = env.shard_map_yaml(TABLES, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    {
        let setup = Proxy::start_yaml(&yaml).await;
        create_schema(&setup.client().await).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut procs: Vec<Child> = ports
        .iter()
        .map(|&p| spawn_proxy(dir.path(), &yaml, p))
        .collect();
    const CLIENTS_PER_PROXY: usize = 8;
    const ROWS: usize = 100_000;
    const PER_STMT: usize = 10;
    let per_client = ROWS / (2 * CLIENTS_PER_PROXY);
    let mut tasks = tokio::task::JoinSet::new();
    for (pi, &port) in ports.iter().enumerate() {
        for ci in 0..CLIENTS_PER_PROXY {
            tasks.spawn(async move {
                // Even clients: key = generated id (accounts); odd: key = user_id (app_ids).
                let keyed_by_id = ci % 2 == 0;
                let extended = ci % 4 < 2;
                let mut c = connect_retry(port).await;
                let mut done = 0usize;
                let mut errors = 0usize;
                let mut stmt_no = 0usize;
                while done < per_client {
                    stmt_no += 1;
                    let n = PER_STMT.min(per_client - done);
                    let r = if keyed_by_id {
                        let rows: Vec<String> = (0..n)
                            .map(|k| format!("('p{pi}c{ci}n{stmt_no}r{k}')"))
                            .collect();
                        let sql = format!("INSERT INTO accounts (name) VALUES {}", rows.join(", "));
                        if extended {
                            c.execute(&sql, &[]).await.map(|_| ())
                        } else {
                            c.batch_execute(&sql).await
                        }
                    } else {
                        let user = (pi * 1000 + ci * 100 + stmt_no % 50) as i64;
                        if extended {
                            let mut sql = String::from("INSERT INTO app_ids (user_id, v) VALUES ");
                            let mut params: Vec<
                                Box<dyn tokio_postgres::types::ToSql + Sync + Send>,
                            > = Vec::new();
                            for k in 0..n {
                                if k > 0 {
                                    sql.push_str(", ");
                                }
                                sql.push_str(&format!("(${}, 'e')", k + 1));
                                params.push(Box::new(user));
                            }
                            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                                .iter()
                                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                                .collect();
                            c.execute(&sql, &refs).await.map(|_| ())
                        } else {
                            let rows: Vec<String> =
                                (0..n).map(|_| format!("({user}, 's')")).collect();
                            c.batch_execute(&format!(
                                "INSERT INTO app_ids (user_id, v) VALUES {}",
                                rows.join(", ")
                            ))
                            .await
                        }
                    };
                    match r {
                        Ok(()) => done += n,
                        Err(e) => {
                            // The proxy was killed: reconnect (to its restarted self).
                            errors += 1;
                            assert!(
                                errors < 50,
                                "client {pi}/{ci}: too many errors, last: {e:?}"
                            );
                            c = connect_retry(port).await;
                        }
                    }
                }
                errors
            });
        }
    }
    // Kill proxy 0 (no shutdown: SIGKILL) a moment into the run, then start it again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    procs[0].kill().unwrap();
    procs[0].wait().unwrap();
    procs[0] = spawn_proxy(dir.path(), &yaml, ports[0]);
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r.expect("client task");
    }
    for p in procs.iter_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert!(errors > 0, "the kill interrupted some clients");
    let accounts = env.placed("accounts", "id").await;
    let app_ids = env.placed("app_ids", "id").await;
    assert!(
        accounts.len() >= ROWS / 2 && app_ids.len() >= ROWS / 2,
        "{} {}",
        accounts.len(),
        app_ids.len()
    );
    assert_unique("accounts.id", accounts.iter().map(|p| p.1));
    assert_unique("app_ids.id", app_ids.iter().map(|p| p.1));
    let mut wrong = 0;
    for (s, id) in &accounts {
        if map.hash_shard(&KeyValue::Int(*id)) != *s {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "accounts on the wrong shard");
    // app_ids rows are placed by user_id.
    let mut by_user: HashMap<usize, i64> = HashMap::new();
    for s in 0..env.shard_count() {
        let c = env.shard_client(s).await;
        for r in c
            .query("SELECT DISTINCT user_id FROM app_ids", &[])
            .await
            .unwrap()
        {
            let u: i64 = r.get(0);
            assert_eq!(map.hash_shard(&KeyValue::Int(u)), s, "user {u}");
            *by_user.entry(s).or_default() += 1;
        }
    }
    assert_eq!(by_user.len(), 3, "users on every shard");
}

/// Must-show 2: SQLAlchemy (`tests/py/generated_ids.py`): add_all of 1,000 objects with
/// auto-increment keys, on a table keyed by user_id and on one keyed by the id itself; the
/// ids are unique, returned to the right objects, and every row is on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_add_all_gets_unique_ids() {
    let env = TestEnv::new(3).await;
    let tables = "sa_ticket: { key: user_id, type: bigint, strategy: hash }\n\
                  sa_account: { key: id, type: bigint, strategy: hash }\n";
    let yaml = env.shard_map_yaml(tables, "");
    let map = ShardMap::from_yaml_str(&yaml, "t").unwrap();
    let proxy = Proxy::start_yaml(&yaml).await;
    let mut cmd = common::python("generated_ids.py");
    cmd.arg("127.0.0.1").arg(proxy.port().to_string());
    common::run_program(cmd, "sqlalchemy generated ids passed").await;
    let tickets = env.placed("sa_ticket", "id").await;
    assert_eq!(
        assert_unique("sa_ticket.id", tickets.iter().map(|p| p.1)),
        1000
    );
    let accounts = env.placed("sa_account", "id").await;
    assert_eq!(
        assert_unique("sa_account.id", accounts.iter().map(|p| p.1)),
        1001
    );
    for (s, id) in &accounts {
        assert_eq!(map.hash_shard(&KeyValue::Int(*id)), *s, "account {id}");
    }
    for s in 0..env.shard_count() {
        for r in env
            .shard_client(s)
            .await
            .query("SELECT DISTINCT user_id FROM sa_ticket", &[])
            .await
            .unwrap()
        {
            assert_eq!(map.hash_shard(&KeyValue::Int(r.get(0))), s);
        }
    }
}
