//! TLS with rustls (the `ring` provider), on both sides of the proxy.
//!
//! - Clients: with `tls:` in the shard map, an SSLRequest is answered `S` and a TLS handshake
//!   follows ([`ServerTls`]); without it the answer stays `N`.
//! - Shards: the shard URL's `sslmode` (and `sslrootcert`) pick what a shard connection does,
//!   with libpq's meaning ([`SslMode`], [`ShardTls`]).
//! - Both: sessions and shard connections read and write through [`NetRead`] / [`NetWrite`],
//!   which hold either the plain socket's own halves (no lock: the common case stays as fast
//!   as before) or the halves of a TLS stream.
//!
//! Writes through a TLS half may stay buffered inside rustls until the next write or a
//! flush, so every writer here follows `write_all` with `flush` (a no-op on plain sockets).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A TLS stream over TCP, either side (the proxy accepts clients and connects to shards).
pub type TlsTcpStream = tokio_rustls::TlsStream<TcpStream>;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from `{}`: {source}", path.display())]
    Pem {
        /// What the file should hold (`certificate chain`, `private key`, `CA certificates`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's or parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// The key file holds no PEM private key.
    #[error("`{}` holds no PEM private key", .0.display())]
    NoKey(PathBuf),
    /// A PEM file holds no certificate.
    #[error("`{}` holds no PEM certificate", .0.display())]
    NoCertificates(PathBuf),
    /// rustls refused the certificate, key or CA certificates.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being set up.
        context: String,
        /// rustls' error.
        source: rustls::Error,
    },
    /// `verify-ca` or `verify-full` without `sslrootcert`.
    #[error("sslmode={} needs sslrootcert=PATH (the CA certificates that verify the shard)", .0.name())]
    NoRootCert(SslMode),
    /// The CA certificates could not be turned into a verifier.
    #[error("cannot use the CA certificates in `{}`: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// rustls' error.
        source: rustls::client::VerifierBuilderError,
    },
}

/// The crypto provider every config here uses (rustls' `ring` backend).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates(path.to_owned()));
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------
// Client side: the proxy as a TLS server.

/// The proxy's TLS server settings (the map's `tls:` section).
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls configuration handshakes use.
    pub config: Arc<rustls::ServerConfig>,
    /// Refuse clients that log in without TLS (`tls.require`).
    pub require: bool,
    /// The certificate chain file (PEM), as configured.
    pub cert: PathBuf,
    /// The private key file (PEM), as configured.
    pub key: PathBuf,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate chain and private key (PEM files) and builds the server config.
    pub fn load(cert: &Path, key: &Path, require: bool) -> Result<ServerTls, TlsError> {
        let chain = read_certs(cert, "certificate chain")?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(key.to_owned()),
            source => TlsError::Pem {
                what: "private key",
                path: key.to_owned(),
                source,
            },
        })?;
        let rustls_err = |source| TlsError::Rustls {
            context: format!(
                "cannot use certificate `{}` with key `{}`",
                cert.display(),
                key.display()
            ),
            source,
        };
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(rustls_err)?;
        Ok(ServerTls {
            config: Arc::new(config),
            require,
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Runs the server side of a handshake on `stream` (after the `S` answer).
    pub async fn accept(&self, stream: TcpStream) -> io::Result<(NetRead, NetWrite)> {
        let tls = tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(stream)
            .await?;
        Ok(split(tls.into()))
    }
}

// ---------------------------------------------------------------------------------------
// Shard side: the proxy as a TLS client.

/// `sslmode` of a shard URL, as in libpq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS (the default).
    #[default]
    Disable,
    /// TLS when the shard offers it, plain otherwise; the certificate is not checked.
    Prefer,
    /// TLS always; the certificate is not checked (unless `sslrootcert` is given, which makes
    /// it `verify-ca`, as in libpq).
    Require,
    /// TLS always; the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// TLS always; the certificate must chain to `sslrootcert` and name the shard's host.
    VerifyFull,
}

impl SslMode {
    /// Parses a URL value (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The name as written in a URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS to one shard: the URL's `sslmode` and `sslrootcert`, with the client config built
/// from them once (at map load).
#[derive(Clone, Default)]
pub struct ShardTls {
    /// The mode in effect.
    pub mode: SslMode,
    /// CA certificates (PEM) that verify the shard's certificate.
    pub root_cert: Option<PathBuf>,
    config: Option<Arc<rustls::ClientConfig>>,
}

impl PartialEq for ShardTls {
    /// Same mode and CA file (the loaded configs are not compared).
    fn eq(&self, o: &ShardTls) -> bool {
        self.mode == o.mode && self.root_cert == o.root_cert
    }
}

impl Eq for ShardTls {}

impl fmt::Debug for ShardTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardTls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

impl ShardTls {
    /// Builds the settings for `mode`. `require` with a `root_cert` becomes `verify-ca`
    /// (libpq does the same); `verify-ca` and `verify-full` need `root_cert`.
    pub fn new(mode: SslMode, root_cert: Option<PathBuf>) -> Result<ShardTls, TlsError> {
        let mode = match (mode, &root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, &root_cert) {
            (SslMode::Disable, _) => {
                return Ok(ShardTls {
                    mode,
                    root_cert,
                    config: None,
                })
            }
            (SslMode::Prefer | SslMode::Require, _) => Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsError::NoRootCert(mode))
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "CA certificates")? {
                    roots.add(cert).map_err(|source| TlsError::Rustls {
                        context: format!("cannot use a CA certificate in `{}`", path.display()),
                        source,
                    })?;
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|source| TlsError::Verifier {
                            path: path.clone(),
                            source,
                        })?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly { inner: webpki })
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                context: "cannot set up TLS to shards".into(),
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ShardTls {
            mode,
            root_cert,
            config: Some(Arc::new(config)),
        })
    }

    /// Whether connections send an SSLRequest at all.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Runs the client side of a handshake with the shard at `host` (after its `S` answer).
    pub async fn connect(&self, host: &str, stream: TcpStream) -> io::Result<(NetRead, NetWrite)> {
        let Some(config) = &self.config else {
            return Err(io::Error::other("TLS is disabled for this shard"));
        };
        let name = server_name(host)?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await?;
        Ok(split(tls.into()))
    }
}

impl ShardTls {
    /// The `sslmode` tokio-postgres should use for control connections with these settings.
    pub fn pg_ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// The proxy's control connections (tokio-postgres: directory, two-phase commit recovery,
/// rebalance) use the same TLS settings as its query connections.
impl tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> for ShardTls {
    type Stream = ControlTlsStream;
    type TlsConnect = ControlTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<ControlTlsConnect> {
        Ok(ControlTlsConnect {
            tls: self.clone(),
            host: domain.to_owned(),
        })
    }
}

/// One control connection's TLS handshake (see [`ShardTls`]'s `MakeTlsConnect`).
pub struct ControlTlsConnect {
    tls: ShardTls,
    host: String,
}

impl tokio_postgres::tls::TlsConnect<tokio_postgres::Socket> for ControlTlsConnect {
    type Stream = ControlTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<ControlTlsStream>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.tls.config else {
                return Err(io::Error::other("TLS is disabled for this shard"));
            };
            let name = server_name(&self.host)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(ControlTlsStream(tls))
        })
    }
}

/// A control connection's TLS stream.
pub struct ControlTlsStream(tokio_rustls::client::TlsStream<tokio_postgres::Socket>);

impl tokio_postgres::tls::TlsStream for ControlTlsStream {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl AsyncRead for ControlTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControlTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The TLS server name for `host` (a DNS name or an IP address).
fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{host}` is not a valid TLS server name: {e}"),
        )
    })
}

/// `require`/`prefer`: any certificate is accepted, but the handshake signatures are still
/// checked (so the connection is encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a configured CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The webpki verifier checks the name last, after the chain: a name mismatch means
        // the chain itself was good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// Stream halves.

/// Splits a TLS stream into halves (tokio's `split`, which locks per call: only TLS pays it).
fn split(stream: TlsTcpStream) -> (NetRead, NetWrite) {
    let (r, w) = tokio::io::split(stream);
    (NetRead::Tls(r), NetWrite::Tls(w))
}

/// Splits a plain socket into its lock-free owned halves.
pub fn split_plain(stream: TcpStream) -> (NetRead, NetWrite) {
    let (r, w) = stream.into_split();
    (NetRead::Plain(r), NetWrite::Plain(w))
}

/// The read half of a client or shard connection.
#[derive(Debug)]
pub enum NetRead {
    /// A plain TCP socket's read half.
    Plain(OwnedReadHalf),
    /// A TLS stream's read half.
    Tls(tokio::io::ReadHalf<TlsTcpStream>),
}

/// The write half of a client or shard connection.
#[derive(Debug)]
pub enum NetWrite {
    /// A plain TCP socket's write half.
    Plain(OwnedWriteHalf),
    /// A TLS stream's write half.
    Tls(tokio::io::WriteHalf<TlsTcpStream>),
}

impl NetRead {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, NetRead::Tls(_))
    }

    /// Reads what is available without waiting: `WouldBlock` when nothing is.
    pub fn try_read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            NetRead::Plain(r) => r.try_read(buf),
            NetRead::Tls(r) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(buf);
                match Pin::new(r).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => Ok(rb.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl NetWrite {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, NetWrite::Tls(_))
    }

    /// Ends a TLS connection politely (close_notify), waiting at most a second; a plain
    /// socket is shut down when dropped, so nothing is done for it here.
    pub async fn close(&mut self) {
        if let NetWrite::Tls(w) = self {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
        }
    }
}

impl AsyncRead for NetRead {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            NetRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetWrite {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            NetWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetWrite::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            NetWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            NetWrite::Plain(w) => w.is_write_vectored(),
            NetWrite::Tls(w) => w.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            NetWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            NetWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_names_round_trip() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(m.name()), Some(m));
        }
        assert_eq!(SslMode::parse("allow"), None);
    }

    #[test]
    fn shard_tls_modes() {
        let off = ShardTls::new(SslMode::Disable, None).unwrap();
        assert!(!off.enabled());
        let req = ShardTls::new(SslMode::Require, None).unwrap();
        assert!(req.enabled());
        assert_eq!(req.mode, SslMode::Require);
        let e = ShardTls::new(SslMode::VerifyFull, None).unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let e = ShardTls::new(SslMode::VerifyCa, Some("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn server_tls_names_missing_file() {
        let e = ServerTls::load(
            Path::new("/nonexistent/cert.pem"),
            Path::new("k.pem"),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }
}
