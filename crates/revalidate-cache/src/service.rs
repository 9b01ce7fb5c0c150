//! The cache middleware: lookup, stale handling, coalesced fetches, storing and
//! write invalidation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, AUTHORIZATION, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, COOKIE, DATE, HOST,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LOCATION, RANGE,
    SET_COOKIE,
};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use revalidate::{
    CacheControl, Evaluation, HttpDate, Preconditions, Problem, Validators, not_modified_headers,
};
use tower::ServiceExt;
use tower_service::Service;
use twox_hash::XxHash3_128;

use crate::cache::Shared;
use crate::coalesce::{Flight, Role, wait};
use crate::entry::{Part, StoredResponse, Timing, Variants};
use crate::freshness::{self, Directives};
use crate::headers::{
    Carried, age_value, remove_hop_by_hop, response_tags, split_for_storage, strip_hop_by_hop,
    strip_tags,
};
use crate::invalidation::Ticket;
use crate::key::{
    normalize_target, push_normalized_path, push_normalized_query, secondary, vary_names,
};
use crate::replica::{LocalFields, with_local_fields};
use crate::routes::{Params, Route, RoutePolicy};
use crate::stats::Outcome;
use crate::status::{CACHE_STATUS, CacheStatus};
use crate::store::{Purge, Store};
use crate::stored_fields::set_answer_fields;
use revalidate::{BoxError, ResponseBody as CacheBody};

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

/// Middleware that answers from, and fills, a shared cache. Built by
/// [`CacheLayer`](crate::CacheLayer).
#[derive(Debug, Clone)]
pub struct CacheService<S, St> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S, St>
where
    S: Upstream<ReqBody, ResBody> + Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Default + Send + 'static,
    ResBody: CacheableBody,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // A fresh hit in a store that answers at once is answered here, without a
        // task-sized future or a copy of the upstream service.
        let (request, looked_up) = match self.shared.answer_at_once(request) {
            AtOnce::Answered(response) => {
                return ResponseFuture::Ready(std::future::ready(Ok(response)));
            }
            AtOnce::Later(request, looked_up) => (request, looked_up),
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::Pending(Box::pin(async move {
            shared.handle(inner, request, looked_up).await
        }))
    }
}

type BoxedResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

/// The response future of [`CacheService`].
pub enum ResponseFuture<B, E> {
    /// Answered when called (a fresh hit).
    Ready(std::future::Ready<Result<Response<CacheBody<B>>, E>>),
    /// Looked up, fetched, stored.
    Pending(BoxedResponseFuture<B, E>),
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are `Unpin` (`Ready` always is, the other is boxed).
        match self.get_mut() {
            Self::Ready(ready) => Pin::new(ready).poll(cx),
            Self::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<B, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ready(_) => "ResponseFuture::Ready",
            Self::Pending(_) => "ResponseFuture::Pending",
        })
    }
}

/// What [`Shared::answer_at_once`] made of a request.
enum AtOnce<ReqBody, ResBody> {
    /// A fresh hit's answer.
    Answered(Response<CacheBody<ResBody>>),
    /// The request, for the full path, with what the store held under its key
    /// when it was looked up (the full path does not ask the store again).
    Later(Request<ReqBody>, Option<Option<Variants>>),
}

/// Marks a response that an upstream client made up because the upstream could not
/// be reached or timed out: stale content may then stand in for it (RFC 9111
/// §4.2.4), even without `stale-if-error`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamUnavailable;

/// One request's place in the cache: what the lookup, fetch and store steps share.
#[derive(Clone, Copy)]
struct Lookup<'a> {
    head: &'a RequestHead,
    request_cc: &'a CacheControl,
    route: Option<&'a Route>,
    params: &'a Params,
    /// The primary key.
    primary: &'a str,
    /// The normalized path (what URL and prefix purges name).
    path: &'a str,
}

/// Bytes reserved ahead of a normalized target for the host of its primary key.
const HOST_ROOM: usize = 32;

/// Where a request target leads: see [`Shared::locate`].
struct Located<'a> {
    route: Option<&'a Route>,
    params: Params,
    /// The normalized path and query.
    target: String,
}

/// The parts of a client request that fetches are built from.
#[derive(Debug, Clone)]
struct RequestHead {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
    /// Which fields that steer the cache `headers` may hold.
    carried: Carried,
    /// Carried to the upstream request (the peer address, tracing context…).
    extensions: http::Extensions,
}

impl RequestHead {
    /// The head of a client request. Fields the upstream will never see
    /// (hop-by-hop, or named by Connection) are removed: they must not select what
    /// is stored either.
    fn of(mut parts: Parts) -> Self {
        let carried = Carried::of(&parts.headers);
        if carried.hop_by_hop {
            remove_hop_by_hop(&mut parts.headers);
        }
        Self {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            carried,
            extensions: parts.extensions,
        }
    }

    /// The request's `Cache-Control` directives.
    fn cache_control(&self) -> CacheControl {
        if self.carried.cache_control {
            CacheControl::from_headers(&self.headers)
        } else {
            CacheControl::default()
        }
    }

    /// Its `Range` field, if any.
    fn range(&self) -> Option<&HeaderValue> {
        self.carried
            .conditional
            .range
            .then(|| self.headers.get(RANGE))
            .flatten()
    }

    /// Whether it carries `If-Range`.
    fn has_if_range(&self) -> bool {
        self.carried.conditional.if_range && self.headers.contains_key(IF_RANGE)
    }

    /// The request again, with `body`.
    fn into_request<B>(self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }

    /// A GET for a storable response: the client's own validators and Range are
    /// left out (the cache answers those itself), the stored response's are added,
    /// and `range` is asked for when given.
    fn upstream_request<B: Default>(
        &self,
        validators: Option<&Validators>,
        range: Option<&HeaderValue>,
    ) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.uri_mut() = self.uri.clone();
        let mut headers = self.headers.clone();
        // The fetch carries no body, so it carries no framing either.
        for name in CONDITIONAL_FIELDS
            .iter()
            .chain(&[CONTENT_LENGTH, http::header::TRANSFER_ENCODING])
        {
            headers.remove(name);
        }
        if let Some(range) = range {
            headers.insert(RANGE, range.clone());
        }
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                headers.insert(IF_NONE_MATCH, etag.to_header_value());
            }
            if let Some(date) = v.last_modified {
                headers.insert(IF_MODIFIED_SINCE, date.to_header_value());
            }
        }
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions.clone();
        request
    }
}

/// What a fetch produced.
enum Fetched<B, E> {
    /// A storable response to serve, with the fields that only the client that
    /// caused the fetch may see (Set-Cookie, qualified private and no-cache, the
    /// upstream's Age), and whether waiting requests may reuse it.
    Entry(
        Arc<StoredResponse>,
        CacheStatus,
        Vec<(HeaderName, HeaderValue)>,
        bool,
    ),
    /// The stale entry, because the upstream failed (stale-if-error).
    Stale(Arc<StoredResponse>, CacheStatus),
    /// A response that cannot be shared.
    Live(Response<CacheBody<B>>, CacheStatus),
    /// The upstream failed and nothing stale may stand in.
    Failed(E),
}

impl<B, E> Fetched<B, E> {
    /// What requests waiting on this fetch learn.
    fn flight(&self) -> Flight {
        match self {
            Fetched::Entry(entry, _, _, true) | Fetched::Stale(entry, _) => {
                if entry.part.is_some() {
                    Flight::Part(entry.clone())
                } else {
                    Flight::Done(entry.clone())
                }
            }
            Fetched::Entry(..) | Fetched::Live(..) | Fetched::Failed(_) => Flight::NotShareable,
        }
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn delta(s: u32) -> Duration {
    Duration::from_secs(s.into())
}

/// Statuses never stored, whatever the response says: the answers to a malformed or
/// overlong request (400, 413, 431), which stored for everyone would be a
/// cache-poisoned denial of service, and 416, which depends on the request's Range.
/// (A 206 is stored only as the answer to a Range this cache forwarded.)
fn never_stored(status: StatusCode) -> bool {
    matches!(status.as_u16(), 304 | 400 | 413 | 416 | 431) || status.is_informational()
}

/// Whether this cache knows the status's semantics (for `must-understand`).
fn understood(status: StatusCode) -> bool {
    status.canonical_reason().is_some()
}

fn is_server_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

fn with_header<B>(mut response: Response<B>, status: &CacheStatus) -> Response<B> {
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), status.to_header_value());
    response
}

impl<St: Store> Shared<St> {
    /// The answer to `request` from a fresh stored response, when the store can
    /// look it up without waiting; otherwise the request, untouched but for
    /// hop-by-hop fields, for [`Shared::handle`].
    fn answer_at_once<ReqBody, ResBody>(
        &self,
        request: Request<ReqBody>,
    ) -> AtOnce<ReqBody, ResBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return AtOnce::Later(request, None);
        }
        let (parts, body) = request.into_parts();
        let Located { route, target, .. } = self.locate(&parts.uri);
        let policy = self.routes.policy(route);
        if policy.bypass {
            return AtOnce::Later(Request::from_parts(parts, body), None);
        }
        let head = RequestHead::of(parts);
        // What the store holds is borrowed, not cloned, to answer: a clone and its
        // drop are two atomic writes to an entry that, over many keys, is rarely in
        // the CPU's cache. The full path gets it whole.
        let looked_up =
            primary_key(policy, &head, target).and_then(|primary| self.store.get_now(&primary.key));
        let found = looked_up
            .as_ref()
            .and_then(|variants| variants.as_ref()?.find(&head.headers));
        let request_cc;
        let answer = match found {
            // A stored part answers only some ranges: the full path decides.
            Some(entry) if entry.part.is_none() => {
                request_cc = head.cache_control();
                self.fresh_answer(&head, &request_cc, entry, self.clock.now())
            }
            _ => None,
        };
        match answer {
            Some(response) => AtOnce::Answered(response),
            None => AtOnce::Later(head.into_request(body), looked_up),
        }
    }

    /// The answer from a stored response that is fresh enough for the request's
    /// directives (RFC 9111 §4.2, §5.2.1); `None` when it must be revalidated or
    /// served stale.
    fn fresh_answer<B>(
        &self,
        head: &RequestHead,
        request_cc: &CacheControl,
        entry: &StoredResponse,
        now: SystemTime,
    ) -> Option<Response<CacheBody<B>>> {
        let ttl = entry.ttl(now)?;
        let fresh_enough = !request_cc.no_cache
            && request_cc
                .max_age
                .is_none_or(|m| entry.age(now) <= delta(m))
            && request_cc.min_fresh.is_none_or(|m| ttl >= delta(m));
        fresh_enough.then(|| {
            self.respond_stored(head, entry, CacheStatus::hit(Some(secs(ttl))), Outcome::Hit)
        })
    }

    async fn handle<S, ReqBody, ResBody>(
        self: Arc<Self>,
        inner: S,
        request: Request<ReqBody>,
        looked_up: Option<Option<Variants>>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Default + Send + 'static,
        ResBody: CacheableBody,
    {
        let (mut parts, body) = request.into_parts();
        let Located {
            route,
            params,
            target,
        } = self.locate(&parts.uri);
        let policy = self.routes.policy(route);
        // What is forwarded is what is keyed: an origin that does not decode `%75`
        // as `u`, or splits a query on `;` where the key splits it on `&` only,
        // would otherwise answer for another resource than the key names, and that
        // answer would be served to every client of the key (cache poisoning).
        parts.uri = forwarded_uri(&parts.uri, &target);

        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Box::pin(self.forward_write(inner, parts, body, route, params)).await;
        }
        if policy.bypass {
            self.stats.outcome(Outcome::Bypassed);
            let response = inner.oneshot(Request::from_parts(parts, body)).await?;
            let response = response.map(|b| CacheBody::prefixed(Bytes::new(), b));
            return Ok(with_header(response, &CacheStatus::forward("bypass")));
        }
        drop(body);
        let head = RequestHead::of(parts);
        let request_cc = head.cache_control();
        let Some(primary) = primary_key(policy, &head, target) else {
            self.stats.outcome(Outcome::Bypassed);
            let response = inner.oneshot(head.into_request(ReqBody::default())).await?;
            let response = response.map(|b| CacheBody::prefixed(Bytes::new(), b));
            return Ok(with_header(
                response,
                &CacheStatus::forward("bypass").detail("invalid-host"),
            ));
        };
        let path = primary.target();

        let variants = match looked_up {
            Some(variants) => variants,
            None => self.store.get(&primary.key).await,
        };
        let found = variants
            .as_ref()
            .and_then(|v| v.find(&head.headers))
            .cloned();
        let lookup = Lookup {
            head: &head,
            request_cc: &request_cc,
            route,
            params: &params,
            primary: &primary.key,
            path,
        };
        match found {
            Some(entry) => self.serve_stored_or_revalidate(inner, &lookup, entry).await,
            None => {
                let reason = if variants.is_some() {
                    "vary-miss"
                } else {
                    "uri-miss"
                };
                if request_cc.only_if_cached {
                    return Ok(gateway_timeout(
                        "only-if-cached: the response is not in the cache",
                    ));
                }
                Box::pin(self.fetch_coalesced(inner, &lookup, None, reason)).await
            }
        }
    }

    async fn serve_stored_or_revalidate<S, ReqBody, ResBody>(
        self: &Arc<Self>,
        inner: S,
        lookup: &Lookup<'_>,
        entry: Arc<StoredResponse>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Default + Send + 'static,
        ResBody: CacheableBody,
    {
        let Lookup {
            head,
            request_cc,
            primary,
            path,
            ..
        } = *lookup;
        // A stored part answers only a range it holds (RFC 9111 §3.3); anything else
        // goes upstream as a miss, asking for the client's range if it has one.
        if entry.part.is_some() && !holds_requested_range(head, entry.part) {
            if request_cc.only_if_cached {
                return Ok(gateway_timeout(
                    "only-if-cached: the cache holds only part of the response",
                ));
            }
            return Box::pin(self.fetch_coalesced(inner, lookup, None, "partial")).await;
        }
        let now = self.clock.now();
        if let Some(response) = self.fresh_answer(head, request_cc, &entry, now) {
            return Ok(response);
        }
        let ttl = entry.ttl(now);

        let staleness = entry.staleness(now);
        let stale_ttl = -secs(staleness);
        let may_serve_stale = ttl.is_none()
            && !entry.forbids_stale
            && !entry.always_revalidate
            && !request_cc.no_cache;
        let max_stale_allows = match request_cc.max_stale {
            Some(None) => true,
            Some(Some(limit)) => staleness <= delta(limit),
            None => false,
        };
        if may_serve_stale && max_stale_allows {
            let status = CacheStatus::hit(Some(stale_ttl)).detail("max-stale");
            return Ok(self.respond_stored(head, &entry, status, Outcome::StaleServed));
        }
        if request_cc.only_if_cached {
            return Ok(gateway_timeout(
                "only-if-cached: the stored response is stale",
            ));
        }
        let swr_allows = may_serve_stale
            && request_cc.max_age.is_none()
            && request_cc.min_fresh.is_none()
            && staleness <= entry.stale_while_revalidate
            && !entry.stale_while_revalidate.is_zero();
        if swr_allows {
            self.spawn_refresh(
                inner,
                head.clone(),
                primary.to_string(),
                path.to_string(),
                entry.clone(),
            );
            let status = CacheStatus::hit(Some(stale_ttl)).detail("stale-while-revalidate");
            return Ok(self.respond_stored(head, &entry, status, Outcome::StaleServed));
        }
        Box::pin(self.fetch_coalesced(
            inner,
            lookup,
            Some(entry),
            // RFC 9211: `request` when the entry was fresh but the request's own
            // directives (no-cache, max-age, min-fresh) sent it upstream.
            if ttl.is_some() { "request" } else { "stale" },
        ))
        .await
    }

    /// Fetches once for all concurrent requests of a key. (Callers box this future:
    /// it is large, and a hit should not pay for moving it.)
    async fn fetch_coalesced<S, ReqBody, ResBody>(
        self: &Arc<Self>,
        inner: S,
        lookup: &Lookup<'_>,
        stale: Option<Arc<StoredResponse>>,
        reason: &'static str,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Default + Send + 'static,
        ResBody: CacheableBody,
    {
        let Lookup { head, primary, .. } = *lookup;
        let mut rejoined = false;
        loop {
            let receiver = match self.coalescer.join(primary) {
                Role::Leader(leader) => {
                    let fetched = self.fetch(inner, lookup, stale, reason).await;
                    leader.finish(fetched.flight());
                    return self.respond_fetched(head, fetched, stale_outcome(reason));
                }
                Role::Follower(receiver) => receiver,
            };
            let entry = match wait(receiver, self.config.coalesce_timeout).await {
                Flight::Done(entry) if entry.status != StatusCode::PARTIAL_CONTENT => entry,
                Flight::Part(entry) if holds_requested_range(head, entry.part) => entry,
                // A part that does not hold this request's bytes: fetch again, with
                // the others that it did not serve either.
                Flight::Part(_) if !rejoined => {
                    rejoined = true;
                    continue;
                }
                // Not shareable, an abandoned leader or a timeout: go upstream alone,
                // at once.
                _ => {
                    let fetched = self.fetch(inner, lookup, stale, reason).await;
                    return self.respond_fetched(head, fetched, stale_outcome(reason));
                }
            };
            if !entry.secondary.matches(&head.headers) {
                // A Vary mismatch: alone, at once, too.
                let fetched = self.fetch(inner, lookup, stale, reason).await;
                return self.respond_fetched(head, fetched, stale_outcome(reason));
            }
            let now = self.clock.now();
            let ttl = entry
                .ttl(now)
                .map_or_else(|| -secs(entry.staleness(now)), secs);
            let status = CacheStatus::forward(reason).ttl(ttl).collapsed();
            return Ok(self.respond_stored(head, &entry, status, Outcome::Coalesced));
        }
    }

    fn respond_fetched<ResBody, E>(
        &self,
        head: &RequestHead,
        fetched: Fetched<ResBody, E>,
        outcome: Outcome,
    ) -> Result<Response<CacheBody<ResBody>>, E>
    where
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<BoxError>,
    {
        match fetched {
            Fetched::Entry(entry, status, requester_only, _) => {
                let mut response = self.respond_stored(head, &entry, status, outcome);
                // Straight from the upstream: its own Age stands, as it sent it (it
                // is among the requester's fields when there was one).
                response.headers_mut().remove(AGE);
                for (name, value) in requester_only {
                    response.headers_mut().append(name, value);
                }
                Ok(response)
            }
            Fetched::Stale(entry, status) => {
                Ok(self.respond_stored(head, &entry, status, Outcome::StaleServed))
            }
            Fetched::Live(response, status) => {
                Ok(self.respond_live(head, response, status, outcome))
            }
            Fetched::Failed(error) => Err(error),
        }
    }

    /// Revalidates `stale` in the background, once per key.
    fn spawn_refresh<S, ReqBody, ResBody>(
        self: &Arc<Self>,
        inner: S,
        head: RequestHead,
        primary: String,
        path: String,
        stale: Arc<StoredResponse>,
    ) where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Default + Send + 'static,
        ResBody: CacheableBody,
    {
        if self.coalescer.in_flight(&primary) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let Role::Leader(leader) = shared.coalescer.join(&primary) else {
                return;
            };
            let (route, params) = shared.resolve_route(head.uri.path());
            let request_cc = head.cache_control();
            let fetched = shared
                .fetch(
                    inner,
                    &Lookup {
                        head: &head,
                        request_cc: &request_cc,
                        route,
                        params: &params,
                        primary: &primary,
                        path: &path,
                    },
                    Some(stale),
                    "stale",
                )
                .await;
            leader.finish(fetched.flight());
        });
    }

    /// One upstream fetch: conditional when a stale entry has validators; stores
    /// what may be stored.
    async fn fetch<S, ReqBody, ResBody>(
        &self,
        inner: S,
        lookup: &Lookup<'_>,
        stale: Option<Arc<StoredResponse>>,
        reason: &'static str,
    ) -> Fetched<ResBody, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Default,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let Lookup {
            head,
            request_cc,
            route,
            params,
            primary,
            ..
        } = *lookup;
        let policy = self.routes.policy(route);
        let ticket = self.log.ticket();
        let validators = stale.as_ref().map(|e| e.validators());
        // With nothing stored to validate, a single range is asked for as the client
        // asked (its 206 is stored as a part); with If-Range, the whole is fetched.
        let range = head
            .range()
            .filter(|_| stale.is_none() && head.method == Method::GET)
            .filter(|_| !head.has_if_range())
            .filter(|r| ByteRange::parse(r.as_bytes()).is_some());
        let request = head.upstream_request::<ReqBody>(validators, range);
        let request_time = self.clock.now();
        let started = Instant::now();
        let result = inner.oneshot(request).await;
        self.stats.upstream(started.elapsed().as_secs_f64());
        let response_time = self.clock.now();

        // Stale content may stand in for an error within stale-if-error, and for an
        // unreachable upstream at all (RFC 9111 §4.2.4: a disconnected cache), unless
        // the response forbids stale reuse.
        let stale_if_error =
            |stale: &Option<Arc<StoredResponse>>, fwd_status: Option<u16>, disconnected: bool| {
                let entry = stale.as_ref()?;
                let staleness = entry.staleness(response_time);
                let window = !entry.stale_if_error.is_zero() && staleness <= entry.stale_if_error;
                let allowed =
                    !entry.forbids_stale && !entry.always_revalidate && (window || disconnected);
                allowed.then(|| {
                    let mut status = CacheStatus::forward(reason)
                        .ttl(-secs(staleness))
                        .detail("stale-if-error");
                    if let Some(code) = fwd_status {
                        status = status.fwd_status(code);
                    }
                    Fetched::Stale(entry.clone(), status)
                })
            };

        let response = match result {
            Ok(response) => response,
            Err(error) => {
                return stale_if_error(&stale, None, true).unwrap_or(Fetched::Failed(error));
            }
        };
        let code = response.status();
        let disconnected = response.extensions().get::<UpstreamUnavailable>().is_some();
        if is_server_error(code)
            && let Some(fallback) = stale_if_error(&stale, Some(code.as_u16()), disconnected)
        {
            return fallback;
        }

        let (mut parts, body) = response.into_parts();
        // Route overrides describe the route's content, never its errors.
        if let Some(cc) = policy
            .cache_control
            .as_ref()
            .filter(|_| !code.is_server_error())
        {
            parts
                .headers
                .insert(http::header::CACHE_CONTROL, cc.to_header_value());
        }
        // A missing or invalid Date is replaced (RFC 9110 §6.6.1), so that freshness
        // can be computed.
        if HttpDate::from_headers(&parts.headers, &DATE).is_none() {
            parts.headers.insert(
                DATE,
                HttpDate::from_system_time(response_time).to_header_value(),
            );
        }
        let timing = |headers: &HeaderMap, status: StatusCode| {
            self.timing(policy, headers, status, request_time, response_time)
        };

        // A 304 to our conditional request freshens the stored response (§4.3.4).
        if code == StatusCode::NOT_MODIFIED
            && let Some(old) = &stale
        {
            // The 304's fields update the stored ones, and the result must still be
            // storable; its cookies and qualified private/no-cache fields go to this
            // client only.
            let mut headers = freshened(&old.headers(), &parts.headers);
            let directives = Directives::of_response(&headers);
            let verdict = self.storable(
                policy,
                head,
                request_cc,
                old.status,
                &parts.headers,
                &directives,
            );
            let requester_only = split_for_storage(&mut headers, &directives.qualified_fields());
            // Tags: those the entry had, those the 304 names, the route's.
            let mut tags = old.tags.clone();
            tags.extend(self.tags_of(policy, params, &parts.headers));
            tags.sort();
            tags.dedup();
            let timing = timing(&headers, old.status);
            let entry = Arc::new(StoredResponse::new(
                old.status,
                headers,
                old.body.clone(),
                timing,
                old.secondary.clone(),
                tags,
                old.path.clone(),
            ));
            let stored = verdict.is_ok() && self.store_entry(ticket, primary, entry.clone()).await;
            let mut status = CacheStatus::forward(reason).fwd_status(304);
            if stored {
                status = status.stored();
            }
            let shareable = verdict.is_ok();
            return Fetched::Entry(entry, status, requester_only, shareable);
        }

        let status = CacheStatus::forward(reason).fwd_status(code.as_u16());
        let directives = Directives::of_response(&parts.headers);
        let verdict = if disconnected {
            Err("made up by the upstream client")
        } else if code == StatusCode::PARTIAL_CONTENT && range.is_none() {
            Err("a 206 to a request without Range")
        } else {
            self.storable(policy, head, request_cc, code, &parts.headers, &directives)
        };
        if let Err(why) = verdict {
            tracing::debug!(uri = %head.uri, why, "not storable");
            let mut response = Response::from_parts(parts, CacheBody::prefixed(Bytes::new(), body));
            strip_hop_by_hop(response.headers_mut());
            strip_tags(response.headers_mut());
            return Fetched::Live(response, status);
        }

        // Buffer the body, bounded; too large a body streams on unstored.
        let (bytes, rest) = match buffer(body, self.config.max_object_bytes).await {
            Ok(bytes) => (bytes, None),
            Err(Buffered::TooLarge(prefix, rest)) => (prefix, Some(rest)),
            Err(Buffered::Failed(error)) => {
                let response = Response::from_parts(parts, CacheBody::failed(error));
                return Fetched::Live(response, status);
            }
        };
        if let Some(rest) = rest {
            let mut response = Response::from_parts(parts, CacheBody::prefixed(bytes, rest));
            strip_hop_by_hop(response.headers_mut());
            strip_tags(response.headers_mut());
            return Fetched::Live(response, status);
        }

        let (entry, requester_only) = self.entry_of(
            lookup,
            code,
            parts.headers,
            bytes,
            &directives,
            (request_time, response_time),
        );
        let stored =
            worth_storing(&entry) && self.store_entry(ticket, primary, entry.clone()).await;
        let status = if stored { status.stored() } else { status };
        // Waiting requests may reuse it only as they could reuse a stored response:
        // while fresh (RFC 9111 §4.2), never a `no-cache` one without validation (a
        // part only for the ranges it holds: see `Flight::Part`).
        let shareable = entry.ttl(response_time).is_some()
            && (code != StatusCode::PARTIAL_CONTENT || entry.part.is_some());
        Fetched::Entry(entry, status, requester_only, shareable)
    }

    /// A response as it is stored: the fields for the requester only split off (and
    /// returned), its tags and its secondary key taken.
    fn entry_of(
        &self,
        lookup: &Lookup<'_>,
        code: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        directives: &Directives,
        (request_time, response_time): (SystemTime, SystemTime),
    ) -> (Arc<StoredResponse>, Vec<(HeaderName, HeaderValue)>) {
        let policy = self.routes.policy(lookup.route);
        let tags = self.tags_of(policy, lookup.params, &headers);
        let requester_only = split_for_storage(&mut headers, &directives.qualified_fields());
        // Before the copy: the tag fields' bytes would stay alive in it, uncharged.
        strip_tags(&mut headers);
        let names = vary_names(&headers).unwrap_or_default();
        let timing = self.timing(policy, &headers, code, request_time, response_time);
        let entry = StoredResponse::new(
            code,
            headers,
            body,
            timing,
            secondary(&names, &lookup.head.headers),
            tags,
            Arc::from(lookup.path),
        );
        (Arc::new(entry), requester_only)
    }

    fn timing(
        &self,
        policy: &RoutePolicy,
        headers: &HeaderMap,
        status: StatusCode,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Timing {
        let directives = Directives::of_response(headers);
        let lifetime = if freshness::has_explicit_lifetime(&directives, headers) {
            freshness::lifetime(&directives, headers, status)
        } else {
            policy
                .default_ttl
                .filter(|_| !status.is_server_error())
                .or_else(|| freshness::lifetime(&directives, headers, status))
        };
        Timing {
            request_time,
            response_time,
            lifetime: lifetime.unwrap_or(Duration::ZERO),
            stale_while_revalidate: policy
                .stale_while_revalidate
                .or(directives.cc.stale_while_revalidate.map(delta))
                .unwrap_or(Duration::ZERO),
            stale_if_error: policy
                .stale_if_error
                .or(directives.cc.stale_if_error.map(delta))
                .unwrap_or(Duration::ZERO),
            always_revalidate: directives.always_revalidate(),
            forbids_stale: directives.forbids_stale(),
        }
    }

    fn tags_of(&self, policy: &RoutePolicy, params: &Params, headers: &HeaderMap) -> Vec<String> {
        let mut tags = response_tags(headers);
        tags.extend(policy.tags.iter().filter_map(|t| t.render(params)));
        tags
    }

    /// RFC 9111 §3 storability, plus the route's and this cache's safety rules.
    fn storable(
        &self,
        policy: &RoutePolicy,
        head: &RequestHead,
        request_cc: &CacheControl,
        status: StatusCode,
        headers: &HeaderMap,
        directives: &Directives,
    ) -> Result<(), &'static str> {
        let cc = &directives.cc;
        if request_cc.no_store {
            return Err("request no-store");
        }
        if never_stored(status) {
            return Err("status");
        }
        // must-understand: only a cache that knows the status may store, and it may
        // then ignore no-store (§5.2.2.3).
        if cc.must_understand && !understood(status) {
            return Err("must-understand");
        }
        if cc.no_store && !cc.must_understand {
            return Err("no-store");
        }
        // Keyed per user only when the request carries the credential the route
        // scopes on; without it the key is shared, so no exemption applies.
        let scope = policy
            .user_scope
            .as_ref()
            .filter(|name| head.headers.contains_key(*name));
        let scoped = scope.is_some();
        if cc.private && cc.private_fields.is_empty() && !scoped {
            return Err("private");
        }
        let explicitly_shared = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
        if head.headers.contains_key(AUTHORIZATION)
            && scope != Some(&AUTHORIZATION)
            && !explicitly_shared
        {
            return Err("authorization");
        }
        // Varnish's default: a request with cookies is personal unless the origin says
        // otherwise or the route keys on the cookies.
        if head.headers.contains_key(COOKIE)
            && scope != Some(&COOKIE)
            && policy.key_cookies.is_empty()
            && !(cc.public || cc.s_maxage.is_some())
        {
            return Err("cookie");
        }
        if headers.contains_key(SET_COOKIE) && !policy.allow_set_cookie {
            return Err("set-cookie");
        }
        if vary_names(headers).is_none() {
            return Err("vary *");
        }
        let has_freshness = freshness::has_explicit_lifetime(directives, headers)
            || cc.public
            || cc.no_cache
            || (policy.default_ttl.is_some() && !status.is_server_error())
            || freshness::heuristically_cacheable(status);
        if !has_freshness {
            return Err("no freshness information");
        }
        Ok(())
    }

    /// Stores `entry` unless a purge that names it was recorded after `ticket`.
    async fn store_entry(&self, ticket: Ticket, primary: &str, entry: Arc<StoredResponse>) -> bool {
        let guard = self.log.lock().await;
        if guard.invalidated_since(ticket, &entry.path, &entry.tags) {
            tracing::debug!(path = %entry.path, "not stored: invalidated while in flight");
            return false;
        }
        let existing = self.store.get(primary).await;
        let names = entry.secondary.names.clone();
        let variants = existing
            .unwrap_or_default()
            .with(names, entry, self.config.max_variants);
        let kept = self.store.put(primary.to_string(), variants).await;
        drop(guard);
        if kept {
            self.stats.stored();
        }
        kept
    }

    /// A response built from a stored entry, answering the client's own conditional
    /// request from the stored validators (§4.3.2).
    fn respond_stored<B>(
        &self,
        head: &RequestHead,
        entry: &StoredResponse,
        status: CacheStatus,
        outcome: Outcome,
    ) -> Response<CacheBody<B>> {
        with_local_fields(entry, |fields| {
            self.respond_with_fields(head, entry, fields, status, outcome)
        })
    }

    /// [`Shared::respond_stored`] with the entry's fields as a map (see
    /// [`with_local_fields`]).
    fn respond_with_fields<B>(
        &self,
        head: &RequestHead,
        entry: &StoredResponse,
        mut fields: LocalFields<'_>,
        status: CacheStatus,
        outcome: Outcome,
    ) -> Response<CacheBody<B>> {
        self.stats.outcome(outcome);
        let now = self.clock.now();
        let age = age_value(entry.age(now).as_secs());

        let mut honor_range = true;
        if entry.status.is_success()
            && head.carried.conditional.any_precondition()
            && let Some(evaluation) = self.evaluate_preconditions(head, entry, &fields)
        {
            match evaluation {
                Evaluation::NotModified => {
                    self.stats.client_status(304);
                    self.stats.bytes(0, entry.body.len() as u64);
                    let mut response = Response::new(CacheBody::empty());
                    *response.status_mut() = StatusCode::NOT_MODIFIED;
                    let mut nm = fields.not_modified_headers();
                    set_answer_fields(&mut nm, age, status.to_header_value());
                    *response.headers_mut() = nm;
                    return response;
                }
                Evaluation::PreconditionFailed => {
                    self.stats.client_status(412);
                    // The 412 carries both validators, taken from this thread's
                    // fields: the entry's share a buffer with other cores.
                    let validators = Validators::from_headers(fields.headers());
                    return with_header(precondition_failed(&validators), &status);
                }
                Evaluation::Proceed { honor_range: honor } => honor_range = honor,
            }
        }
        // The answer fields are overwritten in place (see `stored_fields`); a
        // thread's copy is cloned, without rehashing.
        let mut headers = fields.into_headers();
        set_answer_fields(&mut headers, age, status.to_header_value());
        let range = head
            .range()
            .filter(|_| honor_range && head.method == Method::GET);
        if let Some(part) = entry.part
            && let Some((first, last)) = range.and_then(|r| held_range(r, part))
        {
            return self.respond_part(headers, entry, part, first, last);
        }
        if entry.status == StatusCode::OK
            && let Some(range) = range.and_then(|r| ByteRange::parse(r.as_bytes()))
        {
            return self.respond_range(headers, entry, range);
        }
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = entry.status;
        if head.method == Method::HEAD {
            headers
                .entry(CONTENT_LENGTH)
                .or_insert(HeaderValue::from(entry.body.len()));
            self.stats.bytes(0, entry.body.len() as u64);
        } else {
            *response.body_mut() = CacheBody::full(entry.body.clone());
            self.stats
                .bytes(entry.body.len() as u64, entry.body.len() as u64);
        }
        *response.headers_mut() = headers;
        response
    }

    /// How the request's preconditions evaluate against a stored response (RFC
    /// 9110 §13.2.2); `None` when it has none, or when they are malformed (a
    /// malformed `If-Match` voids them all, as `Preconditions::from_fields` says).
    fn evaluate_preconditions(
        &self,
        head: &RequestHead,
        entry: &StoredResponse,
        fields: &LocalFields<'_>,
    ) -> Option<Evaluation> {
        let validators = entry.validators();
        if let Some(tag) = &validators.etag
            && Preconditions::if_none_match_echoes(
                &head.method,
                &head.headers,
                head.carried.conditional,
                tag,
            )
        {
            return Some(Evaluation::NotModified);
        }
        let preconditions =
            Preconditions::from_fields(&head.method, &head.headers, head.carried.conditional)
                .ok()
                .filter(|p| !p.is_empty())?;
        let mut evaluation = preconditions.evaluate(&head.method, Some(validators));
        // RFC 9111 §4.3.2: without Last-Modified, If-Modified-Since is evaluated
        // against the stored response's Date (or when it was received).
        if let (Evaluation::Proceed { .. }, None, None, Some(since)) = (
            &evaluation,
            &preconditions.if_none_match,
            validators.last_modified,
            preconditions.if_modified_since,
        ) && revalidate::is_get_or_head(&head.method)
            && HttpDate::from_headers(fields.headers(), &DATE)
                .unwrap_or_else(|| HttpDate::from_system_time(entry.response_time))
                <= since
        {
            evaluation = Evaluation::NotModified;
        }
        Some(evaluation)
    }

    /// A single byte range of a stored complete response (RFC 9110 §14): 206, or
    /// 416 when it lies outside the representation.
    fn respond_range<B>(
        &self,
        mut headers: HeaderMap,
        entry: &StoredResponse,
        range: ByteRange,
    ) -> Response<CacheBody<B>> {
        let len = entry.body.len() as u64;
        let mut response = Response::new(CacheBody::empty());
        match range.resolve(len) {
            Some((first, last)) => {
                let slice = entry.body.slice(first as usize..=last as usize);
                self.stats.bytes(slice.len() as u64, slice.len() as u64);
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                headers.insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")).expect("ascii"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(slice.len()));
                *response.body_mut() = CacheBody::full(slice);
            }
            None => {
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                headers.insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            }
        }
        *response.headers_mut() = headers;
        response
    }

    /// Bytes `first..=last` from a stored part (a 206).
    fn respond_part<B>(
        &self,
        mut headers: HeaderMap,
        entry: &StoredResponse,
        part: Part,
        first: u64,
        last: u64,
    ) -> Response<CacheBody<B>> {
        let start = (first - part.first) as usize;
        let end = (last - part.first) as usize;
        let slice = entry.body.slice(start..=end);
        self.stats.bytes(slice.len() as u64, slice.len() as u64);
        headers.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {first}-{last}/{}", part.complete))
                .expect("ascii"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(slice.len()));
        let mut response = Response::new(CacheBody::full(slice));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        *response.headers_mut() = headers;
        response
    }

    /// A response that was not stored, with the client's conditional request
    /// evaluated against its own validators.
    fn respond_live<B>(
        &self,
        head: &RequestHead,
        mut response: Response<CacheBody<B>>,
        status: CacheStatus,
        outcome: Outcome,
    ) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        self.stats.outcome(outcome);
        response
            .headers_mut()
            .insert(CACHE_STATUS.clone(), status.to_header_value());
        let length = response.body().size_hint().exact().unwrap_or(0);
        if response.status() == StatusCode::OK
            && head.carried.conditional.any_precondition()
            && let Ok(preconditions) =
                Preconditions::from_fields(&head.method, &head.headers, head.carried.conditional)
            && !preconditions.is_empty()
        {
            let validators = Validators::from_headers(response.headers());
            if (validators.etag.is_some() || validators.last_modified.is_some())
                && preconditions.evaluate(&head.method, Some(&validators))
                    == Evaluation::NotModified
            {
                self.stats.client_status(304);
                self.stats.bytes(0, length);
                let headers = not_modified_headers(response.headers());
                let mut not_modified = Response::new(CacheBody::empty());
                *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
                *not_modified.headers_mut() = headers;
                not_modified
                    .headers_mut()
                    .insert(CACHE_STATUS.clone(), status.to_header_value());
                return not_modified;
            }
        }
        if head.method == Method::HEAD {
            if let Some(len) = response.body().size_hint().exact() {
                response
                    .headers_mut()
                    .entry(CONTENT_LENGTH)
                    .or_insert(HeaderValue::from(len));
            }
            *response.body_mut() = CacheBody::empty();
            self.stats.bytes(0, length);
        } else {
            self.stats.bytes(length, length);
        }
        response
    }

    /// Forwards an unsafe request; a non-error response invalidates the target URI,
    /// same-origin Location and Content-Location (RFC 9111 §4.4) and the route's
    /// write rules.
    async fn forward_write<S, ReqBody, ResBody>(
        &self,
        inner: S,
        parts: Parts,
        body: ReqBody,
        route: Option<&Route>,
        params: Params,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ResBody: Body<Data = Bytes>,
    {
        self.stats.outcome(Outcome::Bypassed);
        let method = parts.method.clone();
        let uri = parts.uri.clone();
        let host = parts.headers.get(HOST).cloned();
        let unsafe_method = !matches!(method, Method::OPTIONS | Method::TRACE);
        let response = inner.oneshot(Request::from_parts(parts, body)).await?;
        let code = response.status();
        if unsafe_method && (code.is_success() || code.is_redirection()) {
            let policy = self.routes.policy(route);
            let mut purge = Purge::default();
            let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
            purge.urls.push(normalize_target(target, &policy.query));
            for name in [LOCATION, CONTENT_LOCATION] {
                if let Some(path) = response
                    .headers()
                    .get(name)
                    .and_then(|v| same_origin_path(v, &uri, host.as_ref()))
                {
                    let (target_route, _) =
                        self.routes.resolve(path.split('?').next().unwrap_or("/"));
                    purge.urls.push(normalize_target(
                        &path,
                        &self.routes.policy(target_route).query,
                    ));
                }
            }
            for rule in route.map(|r| r.on_write.as_slice()).unwrap_or_default() {
                if !rule.methods.is_empty() && !rule.methods.contains(&method) {
                    continue;
                }
                purge
                    .urls
                    .extend(rule.urls.iter().filter_map(|t| t.render(&params)));
                purge
                    .prefixes
                    .extend(rule.prefixes.iter().filter_map(|t| t.render(&params)));
                purge
                    .tags
                    .extend(rule.tags.iter().filter_map(|t| t.render(&params)));
            }
            self.purge(&purge).await;
        }
        let response = response.map(|b| CacheBody::prefixed(Bytes::new(), b));
        Ok(with_header(response, &CacheStatus::forward("method")))
    }
}

impl<St: Store> Shared<St> {
    /// The route of a target, matched on its normalized path, and the normalized
    /// target (with the route's query rules) that keys, tags and purges are built
    /// from, so `/users/%31` is `/users/1` everywhere.
    fn locate(&self, uri: &Uri) -> Located<'_> {
        // Room for the host, which the primary key puts in front of the target.
        let mut target = String::with_capacity(
            HOST_ROOM + uri.path().len() + uri.query().map_or(0, |q| q.len() + 1),
        );
        push_normalized_path(uri.path(), &mut target);
        let (route, params) = self.routes.resolve(&target);
        push_normalized_query(uri.query(), &self.routes.policy(route).query, &mut target);
        Located {
            route,
            params,
            target,
        }
    }

    /// The route of a path, matched on the normalized path.
    fn resolve_route(&self, path: &str) -> (Option<&Route>, Params) {
        self.routes
            .resolve(&normalize_target(path, &crate::key::QueryRules::default()))
    }

    /// Records, then applies, a purge (see [`crate::invalidation`]).
    pub(crate) async fn purge(&self, purge: &Purge) -> usize {
        if purge.is_empty() {
            return 0;
        }
        // Purges name paths as keys hold them: normalized, with the route's query rules.
        let normalized;
        let purge = if purge.urls.is_empty() && purge.prefixes.is_empty() {
            purge
        } else {
            let mut copy = purge.clone();
            for url in &mut copy.urls {
                let path = url.split('?').next().unwrap_or("/");
                let (route, _) = self.resolve_route(path);
                *url = normalize_target(url, &self.routes.policy(route).query);
            }
            for prefix in &mut copy.prefixes {
                *prefix = normalize_target(prefix, &crate::key::QueryRules::default());
            }
            normalized = copy;
            &normalized
        };
        let guard = self.log.record(purge).await;
        let touched = self.store.purge(purge).await;
        drop(guard);
        self.stats.purge(touched);
        tracing::info!(urls = ?purge.urls, prefixes = ?purge.prefixes, tags = ?purge.tags, soft = purge.soft, touched, "purge");
        touched
    }
}

fn stale_outcome(reason: &str) -> Outcome {
    if reason == "stale" || reason == "request" {
        Outcome::Revalidated
    } else {
        Outcome::Miss
    }
}

/// The request fields the cache answers itself from what it stores: the
/// preconditions (RFC 9110 §13.1) and Range.
const CONDITIONAL_FIELDS: [HeaderName; 6] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    RANGE,
];

/// Whether an entry is worth storing: a response that is stale at once and can be
/// neither validated nor served stale is of no later use (it is still shared with
/// waiting requests), and a 206 whose Content-Range does not describe its body is
/// never trusted.
fn worth_storing(entry: &StoredResponse) -> bool {
    (entry.status != StatusCode::PARTIAL_CONTENT || entry.part.is_some())
        && (!entry.lifetime.is_zero()
            || !entry.stale_while_revalidate.is_zero()
            || !entry.stale_if_error.is_zero()
            || *entry.validators() != Validators::default())
}

/// Whether a stored part holds the single range a GET asks for (without If-Range,
/// whose answer may need the whole representation).
fn holds_requested_range(head: &RequestHead, part: Option<Part>) -> bool {
    let Some(part) = part else {
        return false;
    };
    head.method == Method::GET
        && head.range().and_then(|r| held_range(r, part)).is_some()
        && !head.has_if_range()
}

/// The byte positions a `Range` value asks for, when it is one range that `part`
/// holds.
fn held_range(range: &HeaderValue, part: Part) -> Option<(u64, u64)> {
    ByteRange::parse(range.as_bytes())?
        .resolve(part.complete)
        .filter(|&(first, last)| part.holds(first, last))
}

/// The path of a Location or Content-Location value when it is same-origin.
fn same_origin_path(
    value: &HeaderValue,
    request_uri: &Uri,
    host: Option<&HeaderValue>,
) -> Option<String> {
    let uri: Uri = value.to_str().ok()?.parse().ok()?;
    if let Some(authority) = uri.authority() {
        let request_authority = request_uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| host.and_then(|h| h.to_str().ok()).map(str::to_string))?;
        if !authority.as_str().eq_ignore_ascii_case(&request_authority) {
            return None;
        }
    }
    let pq = uri.path_and_query()?.as_str();
    pq.starts_with('/').then(|| pq.to_string())
}

/// `uri` with its path and query replaced by `target`, the normalized form the key
/// holds; an absolute-form target keeps its scheme and authority (the key's host).
fn forwarded_uri(uri: &Uri, target: &str) -> Uri {
    if uri.path_and_query().is_some_and(|pq| pq.as_str() == target) {
        return uri.clone();
    }
    let mut parts = uri.clone().into_parts();
    // A normalized target only differs from a valid one by decoded unreserved
    // characters, uppercase escapes, `%25` for a bare `%` and dropped parameters,
    // so it always parses; were it not to, the client's own target is kept.
    match PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes())) {
        Ok(path_and_query) => parts.path_and_query = Some(path_and_query),
        Err(_) => return uri.clone(),
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// A primary key and, within it, the normalized target that URL and prefix purges
/// name: one string, built once per request.
struct PrimaryKey {
    key: String,
    target: std::ops::Range<usize>,
}

impl PrimaryKey {
    fn target(&self) -> &str {
        &self.key[self.target.clone()]
    }
}

/// The primary key (§4.1 plus route key additions): the host, then the normalized
/// target. `None` when the host is not a valid authority: such a request is never
/// cached, so a `Host: a.com/x` cannot write into the key space of `a.com`'s `/x/…`.
fn primary_key(policy: &RoutePolicy, head: &RequestHead, target: String) -> Option<PrimaryKey> {
    let host = match head.uri.authority() {
        Some(authority) => authority.as_str(),
        None => match head.headers.get(HOST) {
            Some(value) => value.to_str().ok()?,
            None => "",
        },
    };
    // A plain `name[:port]` needs no parse; anything else must be an authority.
    if !is_plain_host(host.as_bytes()) && host.parse::<http::uri::Authority>().is_err() {
        return None;
    }
    let mut primary = target;
    primary.insert_str(0, host);
    primary[..host.len()].make_ascii_lowercase();
    let target = host.len()..primary.len();
    for name in &policy.key_headers {
        primary.push_str("\nh:");
        primary.push_str(name.as_str());
        primary.push('=');
        let values: Vec<&[u8]> = head
            .headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        primary.push_str(&String::from_utf8_lossy(&values.join(&b","[..])));
    }
    for cookie in &policy.key_cookies {
        primary.push_str("\nc:");
        primary.push_str(cookie);
        primary.push('=');
        if let Some(value) = cookie_value(&head.headers, cookie) {
            primary.push_str(&value);
        }
    }
    if let Some(header) = &policy.user_scope {
        // The credential itself stays out of the key (and out of memory dumps).
        let mut hasher = XxHash3_128::new();
        for value in head.headers.get_all(header) {
            hasher.write(value.as_bytes());
            hasher.write(b"\n");
        }
        primary.push_str(&format!("\nu:{:032x}", hasher.finish_128()));
    }
    Some(PrimaryKey {
        key: primary,
        target,
    })
}

/// `name` or `name:port` with a plain name (letters, digits, dots, hyphens) and a
/// numeric port: the common case, checked in one pass.
fn is_plain_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().position(|&b| b == b':') {
        Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
        None => (host, None),
    };
    name.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|port| !port.is_empty() && port.iter().all(u8::is_ascii_digit))
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The stored headers updated from a 304 (RFC 9111 §3.2): every field the 304
/// carries replaces the stored one, except Content-Length and hop-by-hop fields.
/// The stored answer placeholders are left out: the result's `Age` is the 304's.
fn freshened(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    headers.remove(AGE);
    headers.remove(&CACHE_STATUS);
    let mut update = not_modified.clone();
    strip_hop_by_hop(&mut update);
    update.remove(CONTENT_LENGTH);
    strip_tags(&mut update);
    let names: Vec<HeaderName> = update.keys().cloned().collect();
    for name in names {
        headers.remove(&name);
        for value in update.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// One range of `Range: bytes=…`; several ranges are served whole (a 200), which
/// RFC 9110 §14.2 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    fn parse(value: &[u8]) -> Option<Self> {
        let spec = std::str::from_utf8(value)
            .ok()?
            .trim()
            .strip_prefix("bytes=")?
            .trim();
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match (first.trim(), last.trim()) {
            ("", suffix) => Some(Self::Suffix(number(suffix)?)),
            (first, "") => Some(Self::From(number(first)?, None)),
            (first, last) => {
                let (first, last) = (number(first)?, number(last)?);
                (first <= last).then_some(Self::From(first, Some(last)))
            }
        }
    }

    /// The inclusive byte positions within `len`, or `None` if unsatisfiable.
    fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            Self::From(first, _) if first >= len => None,
            Self::From(first, last) => Some((first, last.map_or(len - 1, |l| l.min(len - 1)))),
            Self::Suffix(0) => None,
            Self::Suffix(n) => Some((len.saturating_sub(n), len.checked_sub(1)?)),
        }
    }
}

enum Buffered<B> {
    TooLarge(Bytes, B),
    Failed(BoxError),
}

/// Reads a body whole if it fits in `limit` bytes.
async fn buffer<B>(mut body: B, limit: usize) -> Result<Bytes, Buffered<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(Buffered::TooLarge(Bytes::new(), body));
    }
    let expected = body.size_hint().exact().unwrap_or(0).min(limit as u64) as usize;
    let mut collected = BytesMut::with_capacity(expected);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Buffered::Failed(e.into()))?;
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
            if collected.len() > limit {
                return Err(Buffered::TooLarge(collected.freeze(), body));
            }
        }
    }
    // A stored body gets an allocation of its own, exactly its size: never the spare
    // capacity of a growing buffer, never a slice that pins a connection's whole
    // read buffer (that doubled the resident memory per entry).
    Ok(Bytes::copy_from_slice(&collected))
}

fn gateway_timeout<B>(detail: &str) -> Response<CacheBody<B>> {
    let (parts, body) = Problem::new(StatusCode::GATEWAY_TIMEOUT)
        .detail(detail)
        .to_response()
        .into_parts();
    let response = Response::from_parts(parts, CacheBody::full(body));
    with_header(
        response,
        &CacheStatus::forward("request").detail("only-if-cached"),
    )
}

fn precondition_failed<B>(current: &Validators) -> Response<CacheBody<B>> {
    let (mut parts, body) = Problem::new(StatusCode::PRECONDITION_FAILED)
        .detail("the stored representation does not match the request's preconditions")
        .to_response()
        .into_parts();
    current.write_to(&mut parts.headers);
    Response::from_parts(parts, CacheBody::full(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, host: &str) -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, host.parse().unwrap());
        RequestHead {
            method: Method::GET,
            uri: uri.parse().unwrap(),
            version: http::Version::HTTP_11,
            carried: Carried::of(&headers),
            headers,
            extensions: http::Extensions::new(),
        }
    }

    #[test]
    fn hosts_that_are_not_authorities_are_never_keyed() {
        let policy = RoutePolicy::default();
        let key = |uri: &str, host: &str, target: &str| {
            primary_key(&policy, &head(uri, host), target.to_string())
        };
        assert!(key("/y", "a.test/x", "/y").is_none());
        assert!(key("/y", "a:b:c", "/y").is_none());
        assert!(key("/y", "a.test:", "/y").is_some());
        assert!(key("/y", "[::1]:8080", "/y").is_some());
        let primary = key("/x/y?q=A", "A.test:8080", "/x/y?q=A").unwrap();
        assert_eq!(primary.key, "a.test:8080/x/y?q=A");
        assert_eq!(primary.target(), "/x/y?q=A");
        // An absolute-form target's authority wins over Host.
        let primary = key("http://shop.test/y", "evil.test", "/y").unwrap();
        assert_eq!(primary.key, "shop.test/y");
        // Bytes beyond ASCII (obs-text, valid in a field value) make no authority.
        for host in [&b"caf\xc3\xa9.test"[..], b"a\xff.test"] {
            let mut head = head("/y", "x");
            head.headers
                .insert(HOST, HeaderValue::from_bytes(host).unwrap());
            assert!(primary_key(&policy, &head, "/y".into()).is_none());
        }
    }
}
