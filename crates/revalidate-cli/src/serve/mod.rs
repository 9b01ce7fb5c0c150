//! `revalidate serve`: the cache and conditional layers in front of any HTTP API.
//!
//! The proxy is the library's layers over an upstream client, behind a check of
//! each request's framing and target:
//! [`AccessLog`] → [`RequestCheck`] → `VersionCheck` (versioned routes) → `CacheLayer`
//! → [`EtagByRoute`] (per route, `ConditionalLayer`) → [`UpstreamClient`].
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use revalidate_cli::serve::{ServeConfig, UpstreamClient, proxy, server};
//!
//! let config = ServeConfig::default();
//! let upstream = UpstreamClient::new("http://127.0.0.1:5000", &config)?;
//! let (proxy, _cache) = proxy(&config, upstream)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let limits = server::ClientLimits::new(&config.client);
//! server::run(listener, move |peer| proxy.for_peer(peer), std::future::pending(), limits).await?;
//! # Ok(()) }
//! ```

pub mod access_log;
pub mod admin;
pub mod balance;
mod client_io;
pub mod config;
pub mod cpu_share;
mod drain;
mod etag;
pub mod observe;
pub mod reload;
pub mod request_check;
pub mod server;
mod store;
pub mod timed_body;
pub mod tls;
mod upstream;
pub mod versioned;
pub mod watched_body;

use std::net::SocketAddr;
use std::sync::Arc;

pub use access_log::{AccessLog, AccessLogLayer, AccessLogger, LogFormat};
pub use config::{ConfigError, ServeConfig, load, parse};
pub use etag::EtagByRoute;
pub use reload::{Live, Loaded, ReloadError, Reloaded};
pub use request_check::RequestCheck;
use revalidate_cache::{Cache, CacheService, Routes};
pub use store::{ProxyStore, StoreError};
use tower::Layer;
pub use upstream::{InvalidUpstream, UpstreamBody, UpstreamClient, UpstreamError};
use versioned::{VersionCheck, Versioning};

/// The proxy's parts, from which each client connection gets its own service
/// ([`Proxy::for_peer`]).
#[derive(Debug, Clone)]
pub struct Proxy {
    cache: Cache<ProxyStore>,
    routes: Arc<Routes>,
    versioning: Versioning,
    upstream: UpstreamClient,
    access_log: AccessLogLayer,
}

/// The proxy as one tower service: access log, request check, version check,
/// cache, per-route content ETags, upstream.
pub type ProxyService =
    AccessLog<RequestCheck<VersionCheck<CacheService<EtagByRoute, ProxyStore>>>>;

impl Proxy {
    /// The service for one client connection; requests it forwards name `peer` in
    /// `X-Forwarded-For`. The address belongs to the connection, so it is given
    /// once here rather than carried in every request's extensions.
    pub fn for_peer(&self, peer: SocketAddr) -> ProxyService {
        let upstream = EtagByRoute::new(self.routes.clone(), self.upstream.for_peer(peer));
        self.wrap(self.cache.layer().layer(upstream), Some(peer))
    }

    /// The service for requests that carry their peer, if any, as axum's
    /// `ConnectInfo` extension.
    pub fn service(&self) -> ProxyService {
        let upstream = EtagByRoute::new(self.routes.clone(), self.upstream.clone());
        self.wrap(self.cache.layer().layer(upstream), None)
    }

    /// The same proxy, writing an access line per request to `logger`.
    pub fn with_access_log(mut self, logger: Option<AccessLogger>) -> Self {
        self.access_log = AccessLogLayer::new(logger);
        self
    }

    /// The cache inside.
    pub fn cache(&self) -> &Cache<ProxyStore> {
        &self.cache
    }

    /// The upstream client.
    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// This proxy under a new configuration and upstream, over the same store
    /// (see [`Cache::reconfigured`]: entries whose route's key recipe changed are
    /// dropped); returns it and the number of keys dropped.
    pub async fn reconfigured(
        &self,
        config: &ServeConfig,
        upstream: UpstreamClient,
    ) -> (Self, usize) {
        upstream.pool().inherit_health(self.upstream.pool());
        let (cache, dropped) = self
            .cache
            .reconfigured(config.routes.clone(), config.cache.clone())
            .await;
        let proxy = Self::over(cache, config, upstream, self.access_log);
        (proxy, dropped)
    }

    /// The proxy made of `cache` (built for `config`) and `upstream`.
    fn over(
        cache: Cache<ProxyStore>,
        config: &ServeConfig,
        upstream: UpstreamClient,
        access_log: AccessLogLayer,
    ) -> Self {
        let routes = Arc::new(config.routes.clone());
        let versioning = Versioning::new(
            routes.clone(),
            config.versions.clone(),
            cache.store().versions(),
        );
        Self {
            cache,
            routes,
            versioning,
            upstream,
            access_log,
        }
    }

    fn wrap(
        &self,
        cache: CacheService<EtagByRoute, ProxyStore>,
        peer: Option<SocketAddr>,
    ) -> ProxyService {
        let versioned = VersionCheck::new(cache, self.versioning.clone());
        let access_log = match peer {
            Some(peer) => self.access_log.for_peer(peer),
            None => self.access_log,
        };
        access_log.layer(RequestCheck::new(versioned))
    }
}

/// The proxy and the cache inside it, over the store `config` asks for.
pub fn proxy(
    config: &ServeConfig,
    upstream: UpstreamClient,
) -> Result<(Proxy, Cache<ProxyStore>), StoreError> {
    let cache = Cache::builder(ProxyStore::of(config)?)
        .routes(config.routes.clone())
        .config(config.cache.clone())
        .build();
    let proxy = Proxy::over(cache.clone(), config, upstream, AccessLogLayer::default());
    Ok((proxy, cache))
}
