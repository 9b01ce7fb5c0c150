//! Validator sources written like axum handlers: the lookup takes extractors (the
//! route's `Path`, the app's `State`, a header) instead of the request's `Parts`.
//!
//! ```
//! use axum::extract::{Path, State};
//! use axum::{Router, routing::get};
//! use revalidate::{ConditionalLayer, HttpDate, Validators, from_extractors};
//!
//! #[derive(Clone)]
//! struct Db; // a pool, in a real app
//!
//! impl Db {
//!     async fn version(&self, id: u64) -> Option<(u64, u64)> {
//!         (id == 1).then_some((7, 1_700_000_000)) // (version, updated_at)
//!     }
//! }
//!
//! /// Runs before the handler: a matching `If-None-Match` never reaches it.
//! async fn user_validators((Path(id), State(db)): (Path<u64>, State<Db>)) -> Option<Validators> {
//!     let (version, updated_at) = db.version(id).await?;
//!     Some(Validators::versioned(version, HttpDate::from_unix_secs(updated_at)))
//! }
//!
//! let db = Db;
//! let app: Router = Router::new()
//!     .route(
//!         "/users/{id}",
//!         get(|Path(id): Path<u64>| async move { format!("user {id}") })
//!             .route_layer(ConditionalLayer::new().validators(from_extractors(db.clone(), user_validators))),
//!     )
//!     .with_state(db);
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use axum_core::extract::FromRequestParts;
use http::request::Parts;

use super::source::ValidatorSource;
use crate::validators::Validators;

/// A [`ValidatorSource`] that extracts `T` from each request, as a handler's
/// arguments are, and looks the validators up from it. Made by
/// [`from_extractors`].
pub struct FromExtractors<T, S, F> {
    state: S,
    lookup: F,
    extracted: PhantomData<fn() -> T>,
}

/// A validator source from `lookup`, which receives what `T` extracts (a tuple
/// extracts several, in order) with `state` as the app's state.
///
/// Add the layer with `route_layer`, so that the route's path parameters are
/// known when it runs. When extraction fails (a path parameter that does not
/// parse, say), the lookup is not called and the resource counts as missing: a GET
/// goes on to the handler, whose own extractor answers the error, and a write's
/// `If-Match` fails with 412, as for any resource that does not exist.
///
/// Each request's head is copied for the extractors (they may outlive the
/// borrow the layer holds).
pub fn from_extractors<T, S, F, Fut>(state: S, lookup: F) -> FromExtractors<T, S, F>
where
    T: FromRequestParts<S> + Send + 'static,
    S: Clone + Send + Sync + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<Validators>> + Send + 'static,
{
    FromExtractors {
        state,
        lookup,
        extracted: PhantomData,
    }
}

impl<T, S: Clone, F: Clone> Clone for FromExtractors<T, S, F> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            lookup: self.lookup.clone(),
            extracted: PhantomData,
        }
    }
}

impl<T, S, F> std::fmt::Debug for FromExtractors<T, S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromExtractors")
            .field("extracts", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T, S, F, Fut> ValidatorSource for FromExtractors<T, S, F>
where
    T: FromRequestParts<S> + Send + 'static,
    S: Clone + Send + Sync + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<Validators>> + Send + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Option<Validators>> + Send>>;

    fn lookup(&self, request: &Parts) -> Option<Self::Future> {
        let mut parts = request.clone();
        let state = self.state.clone();
        let lookup = self.lookup.clone();
        Some(Box::pin(async move {
            let extracted = T::from_request_parts(&mut parts, &state).await.ok()?;
            lookup(extracted).await
        }))
    }
}
