//! Content ETags for the routes that ask for them (`add_etag = true`): the
//! conditional layer of the `revalidate` crate, chosen per route; and the
//! version tags of versioned routes (see `versioned`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use revalidate::{Conditional, ConditionalLayer, ContentHash};
use revalidate_cache::Routes;
use tower::{Layer, Service};

use super::upstream::{UpstreamBody, UpstreamClient};
use super::versioned::{VersionTag, tag_response};

/// Routes each request to the upstream directly or through the conditional layer.
#[derive(Debug, Clone)]
pub struct EtagByRoute {
    /// One reference to count: the cache clones its inner service for every
    /// request, hits included, and the upstreams are needed only on a miss.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    routes: Arc<Routes>,
    plain: UpstreamClient,
    tagged: Conditional<UpstreamClient, ContentHash>,
}

impl EtagByRoute {
    /// Wraps `upstream` for the given routes.
    pub fn new(routes: Arc<Routes>, upstream: UpstreamClient) -> Self {
        let tagged = ConditionalLayer::new().layer(upstream.clone());
        Self {
            inner: Arc::new(Inner {
                routes,
                plain: upstream,
                tagged,
            }),
        }
    }
}

impl Service<Request<Body>> for EtagByRoute {
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Both are always ready (`UpstreamClient::poll_ready`), so clones may be called.
        let inner = &*self.inner;
        let version = request.extensions().get::<VersionTag>().copied();
        let (route, _) = inner.routes.resolve_request_path(request.uri().path());
        let future: Self::Future = if inner.routes.policy(route).add_etag {
            let future = inner.tagged.clone().call(request);
            Box::pin(async move { Ok(future.await?.map(|body| body.boxed())) })
        } else {
            Box::pin(inner.plain.clone().call(request))
        };
        match version {
            None => future,
            Some(_) => Box::pin(async move {
                let mut response = future.await?;
                tag_response(version, &mut response);
                Ok(response)
            }),
        }
    }
}
