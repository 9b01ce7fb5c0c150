use std::future::{Future, Ready};

use http::request::Parts;

use crate::validators::Validators;

/// Where a route's validators come from.
///
/// [`ContentHash`] computes a strong entity tag from the response body after the
/// handler ran. Any `Fn(&Parts) -> impl Future<Output = Option<Validators>>` looks
/// them up *before* the handler — a version counter, an `updated_at` column — so a
/// matching conditional request is answered without running the handler, in the
/// spirit of Django's `@condition(etag_func=…, last_modified_func=…)`. The future
/// resolves to `None` when the target resource does not exist.
pub trait ValidatorSource: Clone + Send + Sync + 'static {
    /// The lookup in flight.
    type Future: Future<Output = Option<Validators>> + Send + 'static;

    /// Starts the lookup for a request, or returns `None` to hash the response body.
    fn lookup(&self, request: &Parts) -> Option<Self::Future>;
}

/// Validators computed from the response body (xxh3-128 over the body, its
/// `Content-Type`, `Content-Encoding` and `Content-Language`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ContentHash;

impl ValidatorSource for ContentHash {
    type Future = Ready<Option<Validators>>;

    fn lookup(&self, _: &Parts) -> Option<Self::Future> {
        None
    }
}

impl<F, Fut> ValidatorSource for F
where
    F: Fn(&Parts) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<Validators>> + Send + 'static,
{
    type Future = Fut;

    fn lookup(&self, request: &Parts) -> Option<Fut> {
        Some(self(request))
    }
}
