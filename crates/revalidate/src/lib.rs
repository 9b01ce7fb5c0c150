//! # revalidate
//!
//! HTTP APIs that are cheap to read again: correct entity tags, `304 Not Modified`,
//! `412 Precondition Failed` and per-route `Cache-Control`, following RFC 9110 and
//! RFC 9111 to the letter, for any [tower] service (axum, hyper, tonic).
//!
//! - [`validators`]: entity tags, tag lists and HTTP-dates (RFC 9110 §8.8);
//! - [`precondition`]: evaluation in the order of RFC 9110 §13.2.2;
//! - [`conditional`]: the tower layer that tags responses and answers conditionals,
//!   from a hashed body or from validators looked up before the handler;
//! - [`cache_control`] and [`policy`]: directives and per-route policy;
//! - [`problem`]: RFC 9457 error bodies.
//!
//! ```
//! use axum::{Router, routing::get};
//! use revalidate::{CacheControl, ConditionalLayer};
//! use std::time::Duration;
//!
//! let app: Router = Router::new().route(
//!     "/catalog",
//!     get(|| async { r#"{"items":[]}"# }).route_layer(
//!         ConditionalLayer::new().cache_control(CacheControl::new().public().max_age(Duration::from_secs(60))),
//!     ),
//! );
//! ```
//!
//! [tower]: https://docs.rs/tower

// Only the binaries name an unsafe symbol (jemalloc's options); the libraries never.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod body;
pub mod cache_control;
pub mod conditional;
pub mod not_modified;
pub mod policy;
pub mod precondition;
pub mod problem;
pub mod validators;

pub use body::{BoxError, ResponseBody};
pub use cache_control::CacheControl;
pub use conditional::{Conditional, ConditionalLayer, ContentHash, ValidatorSource};
#[cfg(feature = "axum")]
pub use conditional::{FromExtractors, from_extractors};
pub use not_modified::not_modified_headers;
pub use policy::{CachePolicy, Scope};
pub use precondition::{
    ConditionalFields, Evaluation, IfRange, MalformedPrecondition, Preconditions, is_get_or_head,
};
pub use problem::{PROBLEM_JSON, Problem};
pub use validators::{
    EntityTag, EntityTagMatch, HttpDate, InvalidEntityTag, InvalidHttpDate, Validators,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
