//! One backend shard as the map names it: its address, login and TLS settings.

/// One backend shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Unique shard name (ring tokens derive from it).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User the proxy logs in as.
    pub user: String,
    /// Its password, if any.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// Region label.
    pub region: Option<String>,
    /// Relative share of the hash ring (>= 1).
    pub weight: u32,
    /// TLS to the shard (the URL's `sslmode` and `sslrootcert`).
    pub tls: crate::wire::tls::ShardTls,
}

impl ShardInfo {
    /// Whether both describe the same server and login (name, address, user, database,
    /// TLS settings).
    pub fn same_server(&self, o: &ShardInfo) -> bool {
        self.name == o.name
            && self.host == o.host
            && self.port == o.port
            && self.user == o.user
            && self.password == o.password
            && self.dbname == o.dbname
            && self.tls == o.tls
    }
}
