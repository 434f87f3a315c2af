//! One backend shard as the map names it: its address, login and TLS settings, and how the
//! control plane (directory, 2PC log, rebalance) opens its own connections to it.

use std::time::Duration;

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

impl ShardInfo {
    /// The same shard, logged in to as `user` with `password`.
    pub fn with_login(&self, user: &str, password: Option<&str>) -> ShardInfo {
        ShardInfo {
            user: user.to_owned(),
            password: password.map(str::to_owned),
            ..self.clone()
        }
    }

    /// A tokio-postgres config for the control plane's connections to this shard (TLS as the
    /// URL's `sslmode` says: connect with [`ShardInfo::tls`]).
    pub fn control_config(&self, connect_timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("shardwire-control")
            // A lock a client holds never freezes the control plane: its statements give
            // up after 10 s (and are retried), explicit `SET LOCAL lock_timeout`s aside.
            .options("-c lock_timeout=10s")
            .connect_timeout(connect_timeout)
            .ssl_mode(self.tls.pg_ssl_mode());
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// Opens a control-plane connection; its I/O runs on a task of its own until the client
    /// is dropped. (Listeners that must see notifications drive the connection themselves
    /// from [`ShardInfo::control_config`].)
    pub async fn connect_control(
        &self,
        connect_timeout: Duration,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self
            .control_config(connect_timeout)
            .connect(self.tls.clone())
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}
