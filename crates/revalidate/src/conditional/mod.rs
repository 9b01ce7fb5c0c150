//! The conditional-request layer: entity tags, 304, 412 and 428 for tower services.
//!
//! Per route, validators come either from the response body (a strong xxh3-128
//! tag, buffered up to a bound) or from a lookup that runs **before** the handler,
//! so a matching `If-None-Match` costs one cheap query and no handler call.
//!
//! In axum, add it with `route_layer` rather than `layer`: it then runs only for
//! the methods the route serves, so any other method gets axum's 405 before a
//! precondition rule (a PUT to a GET-only route that requires If-Match is a 405,
//! not a 428).
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode, request::Parts};
//! use revalidate::{CacheControl, ConditionalLayer, EntityTag, Validators};
//! use tower::ServiceExt;
//!
//! # tokio_test_block_on(async {
//! // Validators first: the version would come from a counter or a database column.
//! let version = |_: &Parts| async { Some(Validators::new().etag(EntityTag::strong("v42").unwrap())) };
//! let app = Router::new().route(
//!     "/prices",
//!     get(|| async { "expensive to compute" })
//!         .route_layer(ConditionalLayer::new().validators(version).cache_control(CacheControl::new().no_cache())),
//! );
//! let request = Request::get("/prices").header("if-none-match", "\"v42\"").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
//! assert_eq!(response.headers()["etag"], "\"v42\"");
//! assert_eq!(response.headers()["cache-control"], "no-cache");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

#[cfg(feature = "axum")]
mod extract;
mod layer;
mod service;
mod source;

#[cfg(feature = "axum")]
pub use extract::{FromExtractors, from_extractors};
pub use layer::{ConditionalLayer, DEFAULT_MAX_BUFFERED_BYTES};
pub use service::Conditional;
pub(crate) use service::hex128;
pub use source::{ContentHash, ValidatorSource};
