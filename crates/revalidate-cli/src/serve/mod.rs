//! `revalidate serve`: the cache and conditional layers in front of any HTTP API.
//!
//! The proxy is the library's layers over an upstream client:
//! `CacheLayer` → (per route) `ConditionalLayer` → [`Upstream`].
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use revalidate_cli::serve::{ServeConfig, Upstream, proxy};
//!
//! let config = ServeConfig::default();
//! let upstream = Upstream::new("http://127.0.0.1:5000", config.upstream_timeout)?;
//! let (app, _cache) = proxy(&config, upstream);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
mod etag;
mod upstream;

use std::sync::Arc;

use axum::Router;
pub use config::{ConfigError, ServeConfig, load, parse};
pub use etag::EtagByRoute;
use revalidate_cache::{Cache, MemoryStore};
use tower::Layer;
pub use upstream::{InvalidUpstream, Upstream, UpstreamBody};

/// The proxy's router and the cache behind it.
pub fn proxy(config: &ServeConfig, upstream: Upstream) -> (Router, Cache) {
    let routes = Arc::new(config.routes.clone());
    let cache = Cache::builder(MemoryStore::new(config.max_bytes))
        .routes(config.routes.clone())
        .config(config.cache.clone())
        .build();
    let service = cache.layer().layer(EtagByRoute::new(routes, upstream));
    (Router::new().fallback_service(service), cache)
}
