//! TLS: clients to the proxy (psql, psycopg, a raw rustls client) and the proxy to shards
//! (`sslmode` in shard URLs, against a cluster of the test's own with `ssl = on`).
//! Certificates are made for each test with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Proxy, TestEnv};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA, certificates it signed, and an unrelated CA, as PEM files in a temp dir.
struct Certs {
    dir: tempfile::TempDir,
    /// The CA certificate.
    ca: PathBuf,
    /// Another CA that signed nothing here.
    other_ca: PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca("shardwire test CA");
        let other = ca_pem("someone else's CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        std::fs::write(dir.path().join("other-ca.pem"), other).expect("write other ca");
        let certs = Certs {
            ca: dir.path().join("ca.pem"),
            other_ca: dir.path().join("other-ca.pem"),
            dir,
        };
        // The proxy's certificate: valid for localhost and 127.0.0.1.
        let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1"]);
        certs.write("proxy.crt", &cert);
        certs.write("proxy.key", &key);
        // The shard's certificate: valid for localhost only.
        let (cert, key) = leaf(&ca, &["localhost"]);
        certs.write("shard.crt", &cert);
        certs.write("shard.key", &key);
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write pem");
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read pem")
    }

    /// The `tls:` section for the proxy's certificate.
    fn tls_section(&self, require: bool) -> String {
        format!(
            "tls: {{ cert: \"{}\", key: \"{}\", require: {require} }}\n",
            self.path("proxy.crt").display(),
            self.path("proxy.key").display()
        )
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca cert")
}

fn ca_pem(name: &str) -> String {
    ca(name).pem()
}

/// A server certificate for `names` signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem())
}

// ---------------------------------------------------------------------------------------
// Client tools.

/// `tool` from PATH, else the newest /usr/lib/postgresql/*/bin.
fn pg_tool(tool: &str) -> PathBuf {
    if Command::new(tool).arg("--version").output().is_ok() {
        return PathBuf::from(tool);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{tool} not found (./scripts/test.sh installs it)"))
}

/// Runs psql with `conninfo` and the `-c` commands; (success, stdout + stderr).
async fn psql(conninfo: String, commands: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT");
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run psql"))
        .await
        .expect("psql task");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

const PSYCOPG_PROBE: &str = r#"
import sys, psycopg
try:
    with psycopg.connect(sys.argv[1], connect_timeout=10) as c:
        v = c.execute("select 41 + 1").fetchone()[0]
        print("ok", v, "ssl" if c.pgconn.ssl_in_use else "plain")
except psycopg.OperationalError as e:
    print("error", " ".join(str(e).split()))
"#;

/// Connects with psycopg and runs a query: `ok 42 ssl`, `ok 42 plain` or `error <message>`.
async fn psycopg(conninfo: String) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-c", PSYCOPG_PROBE])
            .arg(conninfo)
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()))
    })
    .await
    .expect("python task");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "python failed (is psycopg 3 installed?): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// ---------------------------------------------------------------------------------------
// Clients to the proxy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_sslmode_require_is_encrypted() {
    let certs = Certs::new();
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, "", &certs.tls_section(false)).await;
    let (ok, out) = psql(
        format!("{} sslmode=require", proxy.conninfo()),
        &["select 41 + 1", "\\conninfo"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.trim() == "42"), "{out}");
    assert!(
        out.contains("SSL connection"),
        "\\conninfo shows no SSL: {out}"
    );

    // Plain text still works when TLS is not required.
    let (ok, out) = psql(
        format!("{} sslmode=disable", proxy.conninfo()),
        &["select 1", "\\conninfo"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(!out.contains("SSL connection"), "{out}");
}

/// Results and queries larger than the socket buffers cross TLS whole in both directions
/// (a TLS writer may hold bytes back until flushed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_over_tls() {
    let certs = Certs::new();
    let env = TestEnv::new(1).await;
    let proxy = Proxy::start(&env, "", &certs.tls_section(true)).await;
    // 2 MiB of SQL: too long for a command-line argument, so psql reads it from a file.
    let big_sql = certs.path("big.sql");
    std::fs::write(
        &big_sql,
        format!("select length('{}');\n", "y".repeat(2 << 20)),
    )
    .expect("write big.sql");
    let (ok, out) = psql(
        format!("{} sslmode=require", proxy.conninfo()),
        &[
            "select repeat('x', 1000) from generate_series(1, 20000)",
            &format!("\\i {}", big_sql.display()),
        ],
    )
    .await;
    assert!(ok, "{}", &out[..out.len().min(2000)]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        20001,
        "{}",
        &out[out.len().saturating_sub(2000)..]
    );
    assert!(lines[..20000].iter().all(|l| l.len() == 1000));
    assert_eq!(lines[20000], (2 << 20).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_verify_full_checks_the_proxy_certificate() {
    let certs = Certs::new();
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, "", &certs.tls_section(false)).await;
    let out = psycopg(format!(
        "{} sslmode=verify-full sslrootcert={}",
        proxy.conninfo(),
        certs.ca.display()
    ))
    .await;
    assert_eq!(out, "ok 42 ssl");
    let out = psycopg(format!(
        "{} sslmode=verify-full sslrootcert={}",
        proxy.conninfo(),
        certs.other_ca.display()
    ))
    .await;
    assert!(
        out.starts_with("error"),
        "a certificate from another CA passed: {out}"
    );
    assert!(out.contains("certificate verify failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_refuses_plain_clients() {
    let certs = Certs::new();
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, "", &certs.tls_section(true)).await;
    let out = psycopg(format!("{} sslmode=disable", proxy.conninfo())).await;
    assert!(out.starts_with("error"), "{out}");
    assert!(out.contains("SSL required"), "{out}");
    let (ok, out) = psql(
        format!("{} sslmode=disable", proxy.conninfo()),
        &["select 1"],
    )
    .await;
    assert!(!ok && out.contains("SSL required"), "{out}");
    // Encrypted clients get in.
    let out = psycopg(format!("{} sslmode=require", proxy.conninfo())).await;
    assert_eq!(out, "ok 42 ssl");
    let out = psycopg(format!("{} sslmode=prefer", proxy.conninfo())).await;
    assert_eq!(out, "ok 42 ssl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_require_fails_and_prefer_is_plain() {
    let env = TestEnv::new(2).await;
    let proxy = Proxy::start(&env, "", "").await;
    let out = psycopg(format!("{} sslmode=require", proxy.conninfo())).await;
    assert!(out.starts_with("error"), "{out}");
    assert!(out.contains("does not support SSL"), "{out}");
    let out = psycopg(format!("{} sslmode=prefer", proxy.conninfo())).await;
    assert_eq!(out, "ok 42 plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_over_tls() {
    let certs = Certs::new();
    let env = TestEnv::new(2).await;
    let yaml = env.shard_map_yaml_with("", &certs.tls_section(true), &[], true);
    let proxy = Proxy::start_yaml(&yaml).await;
    let (ok, out) = psql(
        format!("{} sslmode=require", proxy.admin_conninfo()),
        &["SHOW VERSION", "\\conninfo"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("shardwire"), "{out}");
    assert!(out.contains("SSL connection"), "{out}");
}

/// An SSLRequest packet.
fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8i32.to_be_bytes());
    b[4..].copy_from_slice(&80_877_103i32.to_be_bytes());
    b
}

/// A rustls client config that trusts `ca`.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("open ca") {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Reads until end of stream (bounded by a timeout) and returns what came.
async fn read_to_end<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut all)).await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_twice_or_with_data_behind_it_is_refused() {
    let certs = Certs::new();
    let env = TestEnv::new(1).await;
    let proxy = Proxy::start(&env, "", &certs.tls_section(false)).await;

    // A second SSLRequest inside TLS: FATAL 08P01, then the connection closes.
    let mut sock = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    sock.write_all(&ssl_request()).await.unwrap();
    let mut answer = [0u8; 1];
    sock.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&certs.ca))
        .connect(name, sock)
        .await
        .expect("handshake with the proxy");
    tls.write_all(&ssl_request()).await.unwrap();
    tls.flush().await.unwrap();
    let got = read_to_end(&mut tls).await;
    assert_eq!(got.first(), Some(&b'E'), "{got:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("08P01") && text.contains("encrypted"),
        "{text}"
    );

    // Bytes sent behind the SSLRequest, before the answer: refused in plain text.
    let mut sock = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    let mut pkt = ssl_request().to_vec();
    pkt.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
    sock.write_all(&pkt).await.unwrap();
    let got = read_to_end(&mut sock).await;
    assert_eq!(got.first(), Some(&b'E'), "{got:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("unencrypted data after SSL request"),
        "{text}"
    );
}

#[test]
fn tls_config_errors_name_the_file() {
    let base = "listen: 127.0.0.1:0\nusers: [{ name: app, password: x }]\ntables: {}\n";
    let map = |extra: &str| {
        shardwire::sharding::shardmap::ShardMap::from_yaml_str(&format!("{base}{extra}"), "m.yaml")
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let shard = "shards: [{ name: s0, url: \"postgres://u@127.0.0.1:5432/db\" }]\n";
    let e = map(&format!(
        "{shard}tls: {{ cert: /nonexistent/proxy.crt, key: /nonexistent/proxy.key }}\n"
    ))
    .unwrap_err();
    assert!(e.contains("/nonexistent/proxy.crt"), "{e}");
    assert!(e.contains("tls"), "{e}");

    let url = |q: &str| {
        format!("shards: [{{ name: s0, url: \"postgres://u@127.0.0.1:5432/db?{q}\" }}]\n")
    };
    let e = map(&url("sslmode=verify-full")).unwrap_err();
    assert!(e.contains("sslrootcert"), "{e}");
    let e = map(&url("sslmode=allow")).unwrap_err();
    assert!(e.contains("unknown sslmode"), "{e}");
    let e = map(&url("sslmode=require&sslnegotiation=direct")).unwrap_err();
    assert!(e.contains("sslnegotiation"), "{e}");
    let e = map(&url("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")).unwrap_err();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    for ok in [
        "sslmode=disable",
        "sslmode=prefer",
        "sslmode=require",
        "application_name=x&sslmode=require",
    ] {
        map(&url(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// The proxy to shards.

/// A one-shard map on `url` (no tables: everything runs on that shard).
fn one_shard_map(url: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\ndatabase: app\nusers: [{{ name: app, password: app-secret }}]\n\
         shards: [{{ name: s0, url: \"{url}\" }}]\n\
         pool: {{ size: 2, connect_timeout_ms: 2000 }}\ntables: {{}}\n"
    )
}

/// Through a proxy on `url`: whether its query connection to the shard is encrypted, and
/// whether its control connections (`shardwire-control`: at least one, the rebalance watch)
/// all are; or the error the query got.
async fn shard_ssl(url: &str) -> Result<(bool, bool), String> {
    let proxy = Proxy::start_yaml(&one_shard_map(url)).await;
    let c = proxy.client().await;
    let err = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    let query = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(err)?
        .get::<_, bool>(0);
    let control = c
        .query_one(
            "SELECT count(*) > 0 AND bool_and(s.ssl) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'shardwire-control'",
            &[],
        )
        .await
        .map_err(err)?
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    Ok((query, control))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_sslmode_owned_cluster() {
    let certs = Certs::new();
    let tls = shardwire::localpg::ClusterTls {
        cert_pem: certs.read("shard.crt"),
        key_pem: certs.read("shard.key"),
    };
    let cluster = tokio::task::spawn_blocking(move || {
        shardwire::localpg::PgCluster::start(shardwire::localpg::ClusterOptions {
            tls: Some(tls),
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot start a cluster with ssl = on: {e}"));
    let port = cluster.port;
    let ca = certs.ca.display().to_string();
    let other_ca = certs.other_ca.display().to_string();
    let at = |host: &str, q: &str| format!("postgres://postgres@{host}:{port}/postgres?{q}");

    // Large results come through the encrypted shard connection whole.
    {
        let proxy = Proxy::start_yaml(&one_shard_map(&at("127.0.0.1", "sslmode=require"))).await;
        let c = proxy.client().await;
        let rows = c
            .query(
                "SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
                &[],
            )
            .await
            .expect("large result over TLS");
        assert_eq!(rows.len(), 20000);
        let big = "y".repeat(2 << 20);
        let row = c
            .query_one("SELECT length($1::text)", &[&big])
            .await
            .expect("large parameter over TLS");
        assert_eq!(row.get::<_, i32>(0), 2 << 20);
    }
    // Encrypted, certificate not checked.
    assert_eq!(
        shard_ssl(&at("127.0.0.1", "sslmode=require")).await,
        Ok((true, true))
    );
    assert_eq!(
        shard_ssl(&at("127.0.0.1", "sslmode=prefer")).await,
        Ok((true, true))
    );
    // Chain and name checked: the certificate names localhost.
    let url = at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_eq!(shard_ssl(&url).await, Ok((true, true)));
    // Chain only: 127.0.0.1 is not in the certificate, which verify-ca does not mind...
    let url = at("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert_eq!(shard_ssl(&url).await, Ok((true, true)));
    // ...but verify-full does.
    let url = at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let e = shard_ssl(&url).await.unwrap_err();
    assert!(
        e.contains("TLS handshake") && e.contains("certificate"),
        "{e}"
    );
    // A CA that did not sign it: refused by verify-ca, and by require given sslrootcert
    // (which libpq treats as verify-ca).
    for mode in ["verify-ca", "require"] {
        let url = at(
            "localhost",
            &format!("sslmode={mode}&sslrootcert={other_ca}"),
        );
        let e = shard_ssl(&url).await.unwrap_err();
        assert!(
            e.contains("TLS handshake") && e.contains("certificate"),
            "{mode}: {e}"
        );
    }
    // No sslmode: plain, as before.
    assert_eq!(shard_ssl(&at("127.0.0.1", "")).await, Ok((false, false)));
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_without_ssl_refuses_require_and_prefer_falls_back() {
    let env = TestEnv::new(1).await;
    let url = env.shard_url(0);
    let e = shard_ssl(&format!("{url}?sslmode=require"))
        .await
        .unwrap_err();
    assert!(e.contains("does not accept TLS"), "{e}");
    assert_eq!(
        shard_ssl(&format!("{url}?sslmode=prefer")).await,
        Ok((false, false))
    );
}
