//! # revalidate-cache
//!
//! A shared HTTP cache (RFC 9111) as a tower layer: freshness and Age, request
//! directives, validation with the origin, `stale-while-revalidate` and
//! `stale-if-error` (RFC 5861), request coalescing, invalidation by URL, prefix and
//! tag (race-safe), user-scoped keys, `Cache-Status` (RFC 9211) and metrics.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use revalidate_cache::{Cache, MemoryStore, MockClock};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let origin = service_fn(|_: Request<Full<Bytes>>| async {
//!     let mut response = Response::new(Full::new(Bytes::from("hello")));
//!     response.headers_mut().insert("cache-control", "max-age=60".parse().unwrap());
//!     Ok::<_, Infallible>(response)
//! });
//! let cache = Cache::builder(MemoryStore::new(64 << 20)).clock(MockClock::new()).build();
//! let service = cache.layer().layer(origin);
//!
//! let first = service.clone().oneshot(Request::get("http://example.com/").body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(first.headers()["cache-status"], "revalidate; fwd=uri-miss; fwd-status=200; stored");
//! let second = service.oneshot(Request::get("http://example.com/").body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(second.headers()["cache-status"], "revalidate; hit; ttl=60");
//! # });
//! ```

// Only the binaries name an unsafe symbol (jemalloc's options); the libraries never.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod answer_fields;
mod cache;
pub mod clock;
mod coalesce;
mod entry;
mod freshness;
mod headers;
pub mod histogram;
mod invalidation;
mod key;
mod local_fields;
pub mod routes;
mod service;
mod shared;
pub mod stats;
mod status;
pub mod store;
mod stored_fields;

pub use cache::{Cache, CacheBuilder, CacheLayer};
pub use clock::{Clock, MockClock, SystemClock};
pub use headers::strip_hop_by_hop;
pub use revalidate::{BoxError, ResponseBody as CacheBody};
pub use routes::{
    InvalidationRule, KeyPart, Pattern, QueryRules, Route, RoutePolicy, Routes, Template,
};
pub use service::{
    CacheService, CacheableBody, Decision, Explanation, ResponseFuture, Upstream,
    UpstreamUnavailable,
};
pub use shared::CacheConfig;
pub use stats::{NotStored, Outcome, PurgeRecord, RouteCount, Snapshot, describe_metrics};
pub use store::{
    EntryFilter, EntryListing, EntrySummary, LookupNow, MemoryStore, Purge, Store, StoreUsage,
};
