//! Routes whose resources have a version counter in Redis (`version =
//! "user:{id}"`): the app bumps the counter in its write path, and the proxy
//! answers conditional requests from it, with no call to the app, and keys what
//! it stores by it, so a bump is also the invalidation of every stored copy.
//!
//! [`VersionCheck`] sits in front of the cache: it reads the counter, answers an
//! `If-None-Match` that names the current version with a 304, and otherwise
//! passes the request on with the version as a [`KeyPart`]. Behind the cache,
//! responses fetched for a version are tagged `"v{version}"`, so the tags the
//! proxy hands out are exactly the counter's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use revalidate::{EntityTagMatch, ResponseBody};
use revalidate_cache::store::{Versions, version_tag};
use revalidate_cache::{KeyPart, Routes, Template};
use tower::Service;

/// The version a request was keyed under, carried to the upstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionTag(pub u64);

/// The versioned routes and their counters.
#[derive(Debug, Clone)]
pub struct Versioning {
    routes: Arc<Routes>,
    templates: Arc<HashMap<String, Template>>,
    versions: Option<Versions>,
}

impl Versioning {
    /// Versioning for `templates` (by route pattern), with the counters in
    /// `versions` (`None`: no Redis, so no route may be versioned).
    pub fn new(
        routes: Arc<Routes>,
        templates: HashMap<String, Template>,
        versions: Option<Versions>,
    ) -> Self {
        Self {
            routes,
            templates: Arc::new(templates),
            versions,
        }
    }

    /// The counter key of a request's resource, when its route is versioned.
    fn key_of(&self, path: &str) -> Option<(String, Versions)> {
        let versions = self.versions.as_ref()?;
        if self.templates.is_empty() {
            return None;
        }
        let (route, params) = self.routes.resolve_request_path(path);
        let template = self.templates.get(route?.pattern.as_str())?;
        Some((template.render(&params)?, versions.clone()))
    }
}

/// The check in front of the cache (see the module documentation).
#[derive(Debug, Clone)]
pub struct VersionCheck<S> {
    inner: S,
    versioning: Versioning,
}

impl<S> VersionCheck<S> {
    /// Wraps `inner` (the cache).
    pub fn new(inner: S, versioning: Versioning) -> Self {
        Self { inner, versioning }
    }
}

type Boxed<B> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`VersionCheck`]: the cache's own when the route is not
    /// versioned, so those requests pay no allocation.
    #[project = Projected]
    // pin-project-lite takes no docs on variant fields; the variants say it all.
    #[allow(missing_docs)]
    pub enum VersionFuture<F, B> {
        /// Not versioned: the cache's future.
        Direct { #[pin] future: F },
        /// Versioned: the counter is read, then the cache asked.
        Checked { future: Boxed<B> },
    }
}

impl<F, B> Future for VersionFuture<F, B>
where
    F: Future<Output = Result<Response<ResponseBody<B>>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Direct { future } => future.poll(cx),
            Projected::Checked { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Request<Body>> for VersionCheck<S>
where
    S: Service<Request<Body>, Response = Response<ResponseBody<B>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = VersionFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let readable = request.method() == Method::GET || request.method() == Method::HEAD;
        let versioned = readable
            .then(|| self.versioning.key_of(request.uri().path()))
            .flatten();
        let Some((key, versions)) = versioned else {
            return VersionFuture::Direct {
                future: self.inner.call(request),
            };
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = Box::pin(async move {
            let Some(version) = versions.current(&key).await else {
                // Without the counter, what is stored cannot be trusted to be
                // current: the cache revalidates it with the app.
                request
                    .headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                return inner.call(request).await;
            };
            let tag = version_tag(version);
            let echoed = EntityTagMatch::from_headers(request.headers(), &IF_NONE_MATCH)
                .ok()
                .flatten()
                .is_some_and(|condition| condition.matches_weak(&tag));
            if echoed {
                let mut response = Response::new(ResponseBody::empty());
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                let headers = response.headers_mut();
                headers.insert(ETAG, tag.to_header_value());
                headers.insert(
                    "cache-status",
                    HeaderValue::from_static("revalidate; hit; detail=version"),
                );
                return Ok(response);
            }
            request
                .extensions_mut()
                .insert(KeyPart(format!("v{version}")));
            request.extensions_mut().insert(VersionTag(version));
            inner.call(request).await
        });
        VersionFuture::Checked { future }
    }
}

/// Tags a successful response fetched for a version with that version's tag.
pub fn tag_response<B>(version: Option<VersionTag>, response: &mut Response<B>) {
    if let Some(VersionTag(version)) = version
        && response.status().is_success()
    {
        response
            .headers_mut()
            .insert(ETAG, version_tag(version).to_header_value());
    }
}
