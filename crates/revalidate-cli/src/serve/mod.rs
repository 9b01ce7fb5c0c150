//! `revalidate serve`: the cache and conditional layers in front of any HTTP API.
//!
//! The proxy is the library's layers over an upstream client:
//! `CacheLayer` → (per route) `ConditionalLayer` → [`Upstream`].
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use revalidate_cli::serve::{ServeConfig, Upstream, proxy, server};
//!
//! let config = ServeConfig::default();
//! let upstream = Upstream::new("http://127.0.0.1:5000", config.upstream_timeout)?;
//! let (service, _cache) = proxy(&config, upstream);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server::run(listener, service, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod access_log;
pub mod admin;
pub mod config;
mod etag;
pub mod server;
mod upstream;

use std::sync::Arc;

pub use access_log::{AccessLog, AccessLogLayer};
pub use config::{ConfigError, ServeConfig, load, parse};
pub use etag::EtagByRoute;
use revalidate_cache::{Cache, CacheService, MemoryStore};
use tower::Layer;
pub use upstream::{InvalidUpstream, Upstream, UpstreamBody};

/// The proxy as one tower service: access log, cache, per-route content ETags,
/// upstream.
pub type Proxy = AccessLog<CacheService<EtagByRoute, MemoryStore>>;

/// The proxy's service and the cache inside it.
pub fn proxy(config: &ServeConfig, upstream: Upstream) -> (Proxy, Cache) {
    let routes = Arc::new(config.routes.clone());
    let cache = Cache::builder(MemoryStore::new(config.max_bytes))
        .routes(config.routes.clone())
        .config(config.cache.clone())
        .build();
    let service = AccessLogLayer.layer(cache.layer().layer(EtagByRoute::new(routes, upstream)));
    (service, cache)
}
