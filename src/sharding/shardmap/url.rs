//! Addresses in the map: `host:port` listen addresses, and shard URLs with their TLS
//! parameters (`sslmode`, `sslrootcert`).

use crate::config::{ConfigError, ErrorSite, Seg};
use crate::sharding::shard::ShardInfo;

/// `host:port` with a numeric port.
pub(super) fn check_addr(
    site: &ErrorSite<'_>,
    path: &[Seg<'_>],
    addr: &str,
) -> Result<(), ConfigError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(site.error(
            path,
            format!("`{addr}` is not a host:port address"),
            "write it as host:port, e.g. 127.0.0.1:6432",
        ))
    }
}

/// Parses a shard URL into a [`ShardInfo`] (name, region and weight left
/// empty). The error is a (message, fix) pair for [`ConfigError::Invalid`].
pub(super) fn parse_url(url: &str) -> Result<ShardInfo, (String, &'static str)> {
    use tokio_postgres::config::Host;
    const FIX: &str = "write it as postgres://user[:password]@host[:port]/dbname";

    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err((format!("`{}` is not a postgres:// URL", redact(url)), FIX));
    }
    let (url, mode, root_cert) = take_ssl_params(url)?;
    let url = url.as_str();
    let cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        let mut msg = format!("cannot parse URL `{}`: {e}", redact(url));
        if let Some(source) = std::error::Error::source(&e) {
            msg.push_str(&format!(": {source}"));
        }
        (msg, FIX)
    })?;
    let host = match cfg.get_hosts() {
        [Host::Tcp(h)] if !h.is_empty() => h.clone(),
        [] => return Err(("the URL names no host".to_owned(), FIX)),
        [_] => {
            return Err((
                "unix-socket hosts are not supported".to_owned(),
                "name a TCP host, e.g. postgres://user@127.0.0.1:5432/dbname",
            ))
        }
        _ => {
            return Err((
                "the URL names several hosts; a shard has exactly one".to_owned(),
                "list each server as its own shard, or name one host",
            ))
        }
    };
    let port = match cfg.get_ports() {
        [] => 5432,
        [p] => *p,
        _ => {
            return Err((
                "the URL names several ports; a shard has exactly one".to_owned(),
                FIX,
            ))
        }
    };
    let user = match cfg.get_user() {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ => return Err(("the URL names no user".to_owned(), FIX)),
    };
    let dbname = match cfg.get_dbname() {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => return Err(("the URL names no database".to_owned(), FIX)),
    };
    let password = match cfg.get_password() {
        None => None,
        Some(p) => Some(String::from_utf8(p.to_vec()).map_err(|_| {
            (
                "the URL's password is not valid UTF-8".to_owned(),
                "percent-encode a UTF-8 password",
            )
        })?),
    };
    let tls = crate::wire::tls::ShardTls::new(mode, root_cert).map_err(|e| {
        (
            e.to_string(),
            "give sslrootcert=PATH of a readable PEM file with the CA certificates",
        )
    })?;
    Ok(ShardInfo {
        name: String::new(),
        host,
        port,
        user,
        password,
        dbname,
        region: None,
        weight: 1,
        tls,
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query (tokio-postgres knows neither
/// `verify-ca`/`verify-full` nor `sslrootcert`): the URL without them, the mode (default
/// `disable`) and the CA file.
fn take_ssl_params(
    url: &str,
) -> Result<
    (
        String,
        crate::wire::tls::SslMode,
        Option<std::path::PathBuf>,
    ),
    (String, &'static str),
> {
    use crate::wire::tls::SslMode;
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), SslMode::Disable, None));
    };
    let mut mode = SslMode::Disable;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = SslMode::parse(&percent_decode(v)).ok_or_else(|| {
                    (
                        format!("unknown sslmode `{v}`"),
                        "use disable (the default), prefer, require, verify-ca or verify-full",
                    )
                })?;
            }
            "sslrootcert" => root_cert = Some(std::path::PathBuf::from(percent_decode(v))),
            "sslnegotiation" if percent_decode(v) == "postgres" => {}
            "sslnegotiation" => {
                return Err((
                    format!("sslnegotiation `{v}` is not supported"),
                    "remove sslnegotiation (the proxy sends an SSLRequest first, like the default `postgres`)",
                ))
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

/// Decodes `%XX` escapes (and leaves anything malformed as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with any password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
