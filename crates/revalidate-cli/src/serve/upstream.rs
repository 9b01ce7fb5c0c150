//! The upstream client: hyper-util's pooled keep-alive client, streaming bodies,
//! with the request made safe to forward.

use super::observe::UpstreamFailure;
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
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use revalidate::Problem;
use revalidate::body::{Uncollected, collect_up_to};
use revalidate_cache::BoxError;
use revalidate_cache::strip_hop_by_hop;
use tower::Service;

pub use super::balance::InvalidUpstream;
use super::balance::{Pool, Server};
use super::config::{ServeConfig, UpstreamSection};
use super::timed_body::{BodyFault, Sender, TimedBody};
use super::tls::{TlsError, upstream_config};
use super::watched_body::{BodyWatcher, WatchedBody};

/// A response body from the upstream (or a problem the proxy wrote).
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Request headers a client could use to make the upstream produce a response for
/// another URL, method or host than the one the cache keys it under; they are
/// never forwarded (the classic cache-poisoning vectors). Names with `_` are
/// dropped separately (see [`super::config::ClientSection::forward_underscored_headers`]).
const UNKEYED_OVERRIDES: [&str; 20] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
    // Read for the scheme by Rack (before X-Forwarded-Proto), Django, Werkzeug
    // and IIS: a client's `on` would make the upstream link to https.
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "front-end-https",
    "x-url-scheme",
    "x-scheme",
    "x-original-url",
    "x-original-host",
    "x-rewrite-url",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The upstream origin as a tower service.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    /// Shared: the service is cloned for every request (tower's readiness contract).
    inner: Arc<UpstreamInner>,
    /// The client at the other end of the connection this copy serves (see
    /// [`UpstreamClient::for_peer`]).
    peer: Option<SocketAddr>,
}

/// The connector: plain TCP for `http://` servers, rustls for `https://`.
type Connector = HttpsConnector<HttpConnector>;

#[derive(Debug)]
struct UpstreamInner {
    client: Client<Connector, Body>,
    /// Opens a new connection for every request: a retry must not be sent on
    /// another pooled connection the upstream may have closed too.
    fresh: Client<Connector, Body>,
    pool: Arc<Pool>,
    settings: UpstreamSection,
    client_body_timeout: Duration,
    forward_underscored_headers: bool,
    /// `X-Forwarded-Proto`: the scheme clients reach the proxy by.
    forwarded_proto: HeaderValue,
}

/// Why the upstream client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A server's URL is not one.
    #[error(transparent)]
    Url(#[from] InvalidUpstream),
    /// The authorities for `https://` servers cannot be read.
    #[error("--upstream-ca: {0}")]
    Tls(#[from] TlsError),
    /// No server was named.
    #[error("no upstream: give --upstream URL (or [upstream] servers)")]
    None,
}

impl UpstreamClient {
    /// An upstream at `url` (`http://host:port` or `https://…`, optionally with a
    /// base path), with the settings of `config`.
    pub fn new(url: &str, config: &ServeConfig) -> Result<Self, UpstreamError> {
        Self::balanced(&[url.to_string()], config)
    }

    /// Requests spread over the servers at `urls` (see [`Pool`]), with the
    /// settings of `config`, active health checks included.
    pub fn balanced(urls: &[String], config: &ServeConfig) -> Result<Self, UpstreamError> {
        if urls.is_empty() {
            return Err(UpstreamError::None);
        }
        let servers = urls
            .iter()
            .map(|url| Server::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = upstream_config(config.upstream.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.upstream.connect_timeout));
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Idle connections are dropped before the upstream's keep-alive timeout
        // can close them under a request.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.upstream.idle_timeout)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let pool = Arc::new(Pool::new(servers, &config.upstream));
        if let Some(health) = config.upstream.health.clone() {
            let probe_client = fresh.clone();
            let probe_pool = Arc::downgrade(&pool);
            pool.check_actively(health.interval, move |index| {
                let client = probe_client.clone();
                let pool = probe_pool.clone();
                let health = health.clone();
                async move {
                    let Some(pool) = pool.upgrade() else {
                        return false;
                    };
                    let server = &pool.servers()[index];
                    let request = Request::get(server.target(&health.path))
                        .header(HOST, server.host().clone())
                        .body(Body::empty());
                    let Ok(request) = request else { return false };
                    drop(pool);
                    matches!(
                        tokio::time::timeout(health.timeout, client.request(request)).await,
                        Ok(Ok(response)) if response.status().is_success() || response.status().is_redirection()
                    )
                }
            });
        }
        Ok(Self {
            inner: Arc::new(UpstreamInner {
                client,
                fresh,
                pool,
                settings: config.upstream.clone(),
                client_body_timeout: config.client.body_timeout,
                forward_underscored_headers: config.client.forward_underscored_headers,
                forwarded_proto: HeaderValue::from_static(if config.client.tls {
                    "https"
                } else {
                    "http"
                }),
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

    /// The servers and their health.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }
}

/// A problem (RFC 9457) made up by the proxy.
pub(super) fn problem(status: StatusCode, detail: &str) -> Response<UpstreamBody> {
    Problem::new(status).detail(detail).to_response().map(|b| {
        http_body_util::Full::new(b)
            .map_err(|never| match never {})
            .boxed()
    })
}

/// A 502 or 504 made up here, marked so the cache may serve stale content instead.
/// The problem the proxy answers for an upstream that did not, counted by kind
/// (`revalidate_upstream_failures_total`).
fn unavailable(kind: UpstreamFailure, detail: String) -> Response<UpstreamBody> {
    kind.count();
    let status = match kind {
        UpstreamFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut response = problem(status, &detail);
    response
        .extensions_mut()
        .insert(revalidate_cache::UpstreamUnavailable);
    response
}

impl Service<Request<Body>> for UpstreamClient {
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
        if !self.inner.forward_underscored_headers {
            drop_underscored(&mut parts.headers);
        }
        // What the upstream may use to build absolute links: the keyed Host.
        if let Some(host) = client_host {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        parts.headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            self.inner.forwarded_proto.clone(),
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
            append_to_list(&mut parts.headers, &X_FORWARDED_FOR, &peer.ip().to_string());
        }
        append_via(&mut parts.headers, parts.version, &self.inner.settings.via);
        // Every forwarded request has one id, the one the access log shows: the
        // client's first when usable, else a new one, which the response carries
        // back for the log.
        let id = &super::access_log::X_REQUEST_ID;
        let sent = parts.headers.get(id);
        let made = (!sent.is_some_and(super::access_log::usable_id))
            .then(|| super::access_log::request_id(None));
        let kept = match &made {
            Some(made) => Some(made.clone()),
            // Later lines would be joined to it by the application's server.
            None if parts.headers.get_all(id).iter().nth(1).is_some() => sent.cloned(),
            None => None,
        };
        if let Some(kept) = kept {
            parts.headers.insert(id.clone(), kept);
        }
        parts.version = http::Version::HTTP_11;
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut response = inner.forward(parts, body).await;
            if let Some(id) = made {
                response
                    .extensions_mut()
                    .insert(super::access_log::RequestId(id));
            }
            Ok(response)
        })
    }
}

/// Appends this proxy to `Via` (RFC 9110 §7.6.3): the protocol version the
/// message was received with, then `pseudonym`.
fn append_via(headers: &mut http::HeaderMap, received: http::Version, pseudonym: &str) {
    if pseudonym.is_empty() {
        return;
    }
    let protocol = match received {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    append_to_list(
        headers,
        &http::header::VIA,
        &format!("{protocol} {pseudonym}"),
    );
}

/// Appends `member` to the list field `name`, whose field lines (any number)
/// are one comma-separated list (RFC 9110 §5.3): every earlier member stays, in
/// order, and the field becomes one line.
fn append_to_list(headers: &mut http::HeaderMap, name: &HeaderName, member: &str) {
    let mut list = Vec::new();
    for line in headers.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            list.extend_from_slice(line);
            list.extend_from_slice(b", ");
        }
    }
    list.extend_from_slice(member.as_bytes());
    // Each line was a valid field value, and so is their join.
    if let Ok(value) = HeaderValue::from_bytes(&list) {
        headers.insert(name.clone(), value);
    }
}

/// Removes every field whose name contains `_`.
fn drop_underscored(headers: &mut http::HeaderMap) {
    // Most requests have none: the map is only rebuilt when one is there.
    if !headers.keys().any(|name| name.as_str().contains('_')) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// A request body as it is sent upstream: held whole when it is small enough to
/// send again, streamed otherwise.
enum Outgoing {
    Held(Bytes),
    Streamed(Body),
}

/// How far a streamed request body has gone: the upstream's `timeout` is the
/// time it takes to answer once it has the whole request, so an upload at the
/// client's pace (bounded by the client's `body_timeout` between pieces) does
/// not count against it, while an upstream that stops reading the body does.
#[derive(Debug)]
struct Upload {
    /// When the upstream last took a piece of the body (or its end), and whether
    /// the body then waited for the client to send more.
    progress: std::sync::Mutex<(tokio::time::Instant, bool)>,
}

impl Upload {
    fn new(at: tokio::time::Instant) -> Self {
        Self {
            progress: std::sync::Mutex::new((at, false)),
        }
    }

    /// The deadline for the response head: `timeout` after the last progress of
    /// the body (which, for a body sent whole, is its end), or after now while
    /// the body waits for the client (whose pauses `body_timeout` bounds).
    fn progress(&self) -> std::sync::MutexGuard<'_, (tokio::time::Instant, bool)> {
        // Nothing panics while it is locked; a poisoned lock is reused.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deadline(&self, timeout: Duration) -> tokio::time::Instant {
        let (at, waits_for_client) = *self.progress();
        if waits_for_client {
            tokio::time::Instant::now() + timeout
        } else {
            at + timeout
        }
    }

    fn polled(&self, ready: bool) {
        let mut progress = self.progress();
        *progress = if ready {
            (tokio::time::Instant::now(), false)
        } else {
            (progress.0, true)
        };
    }
}

/// A streamed request body records its [`Upload`]'s progress as it is sent.
impl<D> BodyWatcher<D> for Arc<Upload> {
    fn polled<E>(&mut self, polled: &Poll<Option<Result<http_body::Frame<D>, E>>>) {
        Upload::polled(self, polled.is_ready());
    }
}

/// Waits for `sent` until `timeout` has passed since the request was sent
/// whole (`deadline` for a held body, which is sent at once; for a streamed one,
/// [`Upload::deadline`] as the body goes); `None` when it has.
async fn within_timeout<F: Future>(
    sent: F,
    deadline: tokio::time::Instant,
    timeout: Duration,
    upload: Option<&Upload>,
) -> Option<F::Output> {
    let Some(upload) = upload else {
        return tokio::time::timeout_at(deadline, sent).await.ok();
    };
    tokio::pin!(sent);
    loop {
        let deadline = upload.deadline(timeout).max(deadline);
        match tokio::time::timeout_at(deadline, &mut sent).await {
            Ok(output) => return Some(output),
            // The body moved on meanwhile: the wait starts again from there.
            Err(_) if upload.deadline(timeout) > tokio::time::Instant::now() => {}
            Err(_) => return None,
        }
    }
}

/// Most tries of one request: one more server after a failure, two when there
/// are three or more (so that one server down and one going down do not fail a
/// request), and with a single server one more try on a new connection.
fn tries(servers: usize) -> usize {
    servers.clamp(2, 3)
}

impl UpstreamInner {
    /// Sends the prepared request (`parts.uri` is its path and query) to a
    /// server of the pool. A request that failed before a response head arrived
    /// (a refused connection, a pooled connection the upstream had closed) goes
    /// to another server (or, with one server, again on a new connection), as
    /// with nginx's `proxy_next_upstream error`: an idempotent one after any such
    /// failure (RFC 9110 §9.2.2), another only when no connection was made, so it
    /// was provably not sent. Bodies up to `retry_body_bytes` are held for this;
    /// a longer one is streamed and sent once.
    async fn forward(&self, parts: http::request::Parts, body: Body) -> Response<UpstreamBody> {
        let (body, fault) = TimedBody::new(body, self.client_body_timeout, Sender::Client);
        let limit = usize::try_from(self.settings.retry_body_bytes.as_u64()).unwrap_or(usize::MAX);
        let mut outgoing = match collect_up_to(body, limit).await {
            Ok(bytes) => Outgoing::Held(bytes),
            // Too long to hold: streamed on from where the reading stopped.
            Err(Uncollected::TooLarge(read, rest)) => {
                Outgoing::Streamed(Body::new(revalidate::ResponseBody::prefixed(read, rest)))
            }
            Err(Uncollected::Failed(_)) => return client_fault(fault.get().copied()),
        };
        let idempotent = parts.method.is_idempotent();
        let timeout = self.settings.timeout;
        let asked = tokio::time::Instant::now();
        let deadline = asked + timeout;
        let mut tried = Vec::new();
        // The last try's refused certificate, which the answer names when it was
        // the last word.
        let mut last_refused = None;
        for attempt in 0..tries(self.pool.servers().len()) {
            let Some(picked) = self.pool.pick(&tried) else {
                break;
            };
            let server = picked.server();
            let mut request_parts = parts.clone();
            request_parts.uri =
                server.target(parts.uri.path_and_query().map_or("/", PathAndQuery::as_str));
            request_parts.headers.insert(HOST, server.host().clone());
            let (body, again, upload) =
                match std::mem::replace(&mut outgoing, Outgoing::Held(Bytes::new())) {
                    Outgoing::Held(bytes) => (Body::from(bytes.clone()), Some(bytes), None),
                    Outgoing::Streamed(inner) => {
                        let upload = Arc::new(Upload::new(asked));
                        let body = Body::new(WatchedBody::new(inner, upload.clone()));
                        (body, None, Some(upload))
                    }
                };
            let client = if attempt == 0 {
                &self.client
            } else {
                &self.fresh
            };
            let sent = client.request(Request::from_parts(request_parts, body));
            let error = match within_timeout(sent, deadline, timeout, upload.as_deref()).await {
                Some(Ok(response)) => {
                    picked.succeeded();
                    return self.relay(response, asked.elapsed());
                }
                // The client's body failed under the request: its fault, not the
                // upstream's.
                _ if fault.get().is_some() => return client_fault(fault.get().copied()),
                Some(Err(error)) => error,
                None => {
                    picked.failed();
                    let authority = server.authority();
                    tracing::warn!(upstream = %authority, ?timeout, "upstream timed out");
                    return unavailable(
                        UpstreamFailure::Timeout,
                        format!("the upstream {authority} did not answer within {timeout:?}"),
                    );
                }
            };
            picked.failed();
            let authority = server.authority().clone();
            let refused = certificate_error(&error);
            if let Some(refused) = &refused {
                tracing::warn!(upstream = %authority, error = %refused, "upstream TLS handshake failed");
            }
            // A refused certificate ends the handshake before a byte of the request
            // is sent, as a refused connection does.
            let may_retry = match &again {
                Some(_) if idempotent => true,
                Some(_) => error.is_connect() || refused.is_some(),
                None => false,
            };
            if let (true, Some(bytes)) = (may_retry, again) {
                tracing::debug!(%error, upstream = %authority, "upstream failed before answering; trying again");
                outgoing = Outgoing::Held(bytes);
                tried.push(picked.index());
                last_refused = refused.map(|refused| (authority, refused));
                continue;
            }
            if let Some(refused) = refused {
                return certificate_refused(&authority, &refused);
            }
            tracing::warn!(%error, upstream = %authority, "upstream unreachable");
            return unavailable(
                UpstreamFailure::Unreachable,
                format!("the upstream {authority} could not be reached"),
            );
        }
        if let Some((authority, refused)) = last_refused {
            return certificate_refused(&authority, &refused);
        }
        tracing::warn!("no upstream server could be reached");
        unavailable(
            UpstreamFailure::NoneAvailable,
            "no upstream server could be reached".to_string(),
        )
    }

    /// The upstream's response as the client gets it.
    fn relay(
        &self,
        response: Response<hyper::body::Incoming>,
        upstream_time: Duration,
    ) -> Response<UpstreamBody> {
        let (mut parts, body) = response.into_parts();
        parts
            .extensions
            .insert(super::access_log::UpstreamTime(upstream_time));
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers, parts.version, &self.settings.via);
        // The client gets this proxy's HTTP version, whatever the upstream
        // spoke: an HTTP/1.0 upstream must not close a client's keep-alive.
        parts.version = http::Version::HTTP_11;
        let (body, _) = TimedBody::new(body, self.settings.body_timeout, Sender::Upstream);
        Response::from_parts(parts, body.boxed())
    }
}

/// The TLS error under `error`, when the upstream's certificate (or the
/// handshake) was refused: a problem of configuration, named as such rather
/// than as an unreachable server.
fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        // An I/O error's `source` skips the error it wraps: step into it instead.
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            cause = Some(inner);
            continue;
        }
        cause = current.source();
    }
    None
}

/// The answer when the upstream's TLS certificate was refused.
fn certificate_refused(
    authority: &http::uri::Authority,
    refused: &rustls::Error,
) -> Response<UpstreamBody> {
    unavailable(
        UpstreamFailure::Tls,
        format!("the upstream {authority}'s TLS certificate was refused: {refused}"),
    )
}

/// The answer to a request whose body could not be read: 408 when the client
/// stopped sending, 400 when its framing was broken. Logged as the client's doing.
fn client_fault(fault: Option<BodyFault>) -> Response<UpstreamBody> {
    let (status, detail) = match fault {
        Some(BodyFault::Stalled) => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body stopped arriving",
        ),
        Some(BodyFault::Broken) | None => (
            StatusCode::BAD_REQUEST,
            "the request body is malformed (bad chunked framing) or was cut off",
        ),
    };
    tracing::debug!(%status, detail, "request body failed");
    let mut response = problem(status, detail);
    // The connection's framing can no longer be trusted.
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}
