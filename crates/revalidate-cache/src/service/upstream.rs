//! What the cache needs of the service it sits in front of, and of its bodies.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use revalidate::BoxError;

/// The upstream a cache sits in front of: any cloneable tower service.
pub trait Upstream<ReqBody, ResBody>:
    Service<Request<ReqBody>, Response = Response<ResBody>, Future: Send, Error: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<T, ReqBody, ResBody> Upstream<ReqBody, ResBody> for T where
    T: Service<Request<ReqBody>, Response = Response<ResBody>, Future: Send, Error: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// What the cache needs of an upstream response body: bytes it can buffer, stream
/// on, and move between tasks.
pub trait CacheableBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{
}

impl<T> CacheableBody for T where
    T: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{
}

/// Marks a response that an upstream client made up because the upstream could not
/// be reached or timed out: stale content may then stand in for it (RFC 9111
/// §4.2.4), even without `stale-if-error`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamUnavailable;
