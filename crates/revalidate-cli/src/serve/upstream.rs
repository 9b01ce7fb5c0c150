//! The upstream client: hyper-util's pooled keep-alive client, streaming bodies,
//! with the request made safe to forward.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use revalidate::Problem;
use revalidate_cache::BoxError;
use revalidate_cache::headers::strip_hop_by_hop;
use tower::Service;

/// A response body from the upstream (or a problem the proxy wrote).
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Request headers a client could use to make the upstream produce a response for
/// another URL, method or host than the one the cache keys it under; they are
/// never forwarded (the classic cache-poisoning vectors).
const UNKEYED_OVERRIDES: [&str; 10] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The upstream origin as a tower service.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Shared: the service is cloned for every request (tower's readiness contract).
    inner: Arc<UpstreamInner>,
    /// The client at the other end of the connection this copy serves (see
    /// [`Upstream::for_peer`]).
    peer: Option<SocketAddr>,
}

#[derive(Debug)]
struct UpstreamInner {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    timeout: Duration,
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid --upstream {0:?}: expected http://HOST[:PORT][/PATH]")]
pub struct InvalidUpstream(pub String);

impl Upstream {
    /// An upstream at `url` (`http://host:port`, optionally with a base path).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, InvalidUpstream> {
        let uri: Uri = url.parse().map_err(|_| InvalidUpstream(url.to_string()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(InvalidUpstream(url.to_string()));
        };
        if scheme != Scheme::HTTP {
            return Err(InvalidUpstream(url.to_string()));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // Idle connections are dropped before the common upstream keep-alive
        // timeouts (Node and uvicorn: 5 s) can close them under a request.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(4))
            .build(connector);
        Ok(Self {
            inner: Arc::new(UpstreamInner {
                client,
                scheme,
                authority,
                base_path: uri.path().trim_end_matches('/').to_string(),
                timeout,
            }),
            peer: None,
        })
    }

    /// A copy for one client connection: requests it forwards name `peer` in
    /// `X-Forwarded-For`. Without one, a request's [`ConnectInfo`] extension (as
    /// axum's `into_make_service_with_connect_info` adds) is used.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            peer: Some(peer),
        }
    }

    fn target(&self, uri: &Uri) -> Uri {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path = format!("{}{pq}", self.inner.base_path);
        Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }
}

/// A 502 or 504 made up here, marked so the cache may serve stale content instead.
fn problem(status: StatusCode, detail: String) -> Response<UpstreamBody> {
    let mut response = Problem::new(status).detail(detail).to_response().map(|b| {
        http_body_util::Full::new(b)
            .map_err(|never| match never {})
            .boxed()
    });
    response
        .extensions_mut()
        .insert(revalidate_cache::UpstreamUnavailable);
    response
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        // The host the cache keys on: an absolute-form target's authority wins over
        // Host (RFC 9112 §3.2.2), here as in the key, so both name the same site.
        let client_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(HOST).cloned());
        strip_hop_by_hop(&mut parts.headers);
        for name in UNKEYED_OVERRIDES {
            parts.headers.remove(name);
        }
        // What the upstream may use to build absolute links: the keyed Host.
        if let Some(host) = client_host {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        parts.headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        // Append the peer's address, as nginx's $proxy_add_x_forwarded_for does: only
        // the last entry is this proxy's word, earlier ones are the client's.
        let peer = self.peer.or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| *peer)
        });
        if let Some(peer) = peer {
            let forwarded_for = match parts
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(previous) => format!("{previous}, {}", peer.ip()),
                None => peer.ip().to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
                parts.headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
        if let Ok(host) = HeaderValue::from_str(self.inner.authority.as_str()) {
            parts.headers.insert(HOST, host);
        }
        parts.uri = self.target(&parts.uri);
        parts.version = http::Version::HTTP_11;
        // An idempotent request without a body can be sent again when a pooled
        // connection turns out to have been closed by the upstream as it was sent
        // (its keep-alive timeout racing the reuse), as nginx's proxy_next_upstream
        // does; a body may already be half consumed, so those are not retried.
        let retry = (parts.method.is_idempotent() && body.is_end_stream()).then(|| {
            let mut again = Request::new(Body::empty());
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.version_mut() = parts.version;
            *again.headers_mut() = parts.headers.clone();
            again
        });
        let request = Request::from_parts(parts, body);
        let client = self.inner.client.clone();
        let timeout = self.inner.timeout;
        let authority = self.inner.authority.clone();
        Box::pin(async move {
            let exchange = async {
                match (client.request(request).await, retry) {
                    (Err(error), Some(again)) if !error.is_connect() => {
                        tracing::debug!(%error, "upstream connection lost; sending again");
                        client.request(again).await
                    }
                    (result, _) => result,
                }
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(response)) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(
                        parts,
                        body.map_err(BoxError::from).boxed(),
                    ))
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, upstream = %authority, "upstream unreachable");
                    Ok(problem(
                        StatusCode::BAD_GATEWAY,
                        format!("the upstream {authority} could not be reached"),
                    ))
                }
                Err(_) => {
                    tracing::warn!(upstream = %authority, ?timeout, "upstream timed out");
                    Ok(problem(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("the upstream {authority} did not answer within {timeout:?}"),
                    ))
                }
            }
        })
    }
}
