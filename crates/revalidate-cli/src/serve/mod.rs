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
    // One structured log line per request: method, path, status, Cache-Status, latency.
    let access_log = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(|request: &http::Request<axum::body::Body>| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        })
        .on_response(|response: &http::Response<axum::body::Body>, latency: std::time::Duration, _: &tracing::Span| {
            let cache_status = response.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("");
            let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            tracing::info!(status = response.status().as_u16(), cache_status, latency_us, "response");
        });
    let router = Router::new().fallback_service(service).layer(access_log);
    (router, cache)
}
