//! One way to talk to Redis, whether it is one server or a cluster: the store,
//! the bus and the counters send the same commands and scripts through
//! [`Connection`], and only this module knows which it is.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://host:port[/db]`.
    Server(String),
    /// A Redis Cluster, by any of its nodes: `redis://host:port` each.
    Cluster(Vec<String>),
}

/// A client for a [`RedisTarget`].
#[derive(Clone)]
pub(crate) enum Client {
    // Boxed: made once per store, and each of a few hundred bytes.
    Server(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

/// A connection through a [`Client`]; cheap to clone (clones share it).
#[derive(Clone)]
pub(crate) enum Connection {
    /// Reconnects by itself, with backoff.
    Managed(ConnectionManager),
    /// A connection of its own, for blocking reads.
    Single(MultiplexedConnection),
    /// Routes each command to the node that owns its keys' slot.
    Cluster(ClusterConnection),
}

impl Client {
    /// A client for `target` (nothing is connected yet). `rediss://` URLs speak
    /// TLS (rustls, with ring), trusting `ca_pem` when given, else the system's
    /// roots; a certificate that does not verify fails every command, with the
    /// reason in the log, and is never bypassed.
    pub(crate) fn open(target: &RedisTarget, ca_pem: Option<&[u8]>) -> RedisResult<Self> {
        // Once per process; a provider installed by the application stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: ca_pem.map(<[u8]>::to_vec),
        };
        Ok(match target {
            RedisTarget::Server(url) if url.starts_with("rediss://") => Self::Server(Box::new(
                redis::Client::build_with_tls(url.as_str(), certificates())?,
            )),
            RedisTarget::Server(url) => Self::Server(Box::new(redis::Client::open(url.as_str())?)),
            RedisTarget::Cluster(urls) => {
                let mut builder = ClusterClient::builder(urls.clone());
                if urls.iter().any(|url| url.starts_with("rediss://")) {
                    builder = builder.certs(certificates());
                }
                Self::Cluster(Box::new(builder.build()?))
            }
        })
    }

    /// The connection commands share: connected on first use, so a Redis that is
    /// down at start is only a failed command, tried again later.
    pub(crate) fn shared(&self, timeout: Duration) -> RedisResult<Connection> {
        let connect = timeout.max(Duration::from_millis(200));
        Ok(match self {
            Self::Server(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                Connection::Managed(ConnectionManager::new_lazy_with_config(
                    (**client).clone(),
                    config,
                )?)
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(timeout);
                Connection::Cluster(client.get_pending_async_connection_with_config(config))
            }
        })
    }

    /// A connection of its own, whose commands may block for up to `blocking`
    /// (a blocking read would hold up every command sharing its connection).
    pub(crate) async fn dedicated(&self, blocking: Duration) -> RedisResult<Connection> {
        Ok(match self {
            Self::Server(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(blocking))
                    .set_response_timeout(Some(blocking * 2));
                Connection::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(blocking)
                    .set_response_timeout(blocking * 2);
                Connection::Cluster(client.get_async_connection_with_config(config).await?)
            }
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(connection) => connection.req_packed_command(cmd),
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(connection) => connection.get_db(),
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}
