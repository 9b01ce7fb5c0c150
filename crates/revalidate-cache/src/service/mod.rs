//! The cache middleware. Every request takes the same steps:
//!
//! 1. **prepare** — locate it (route and normalized target), forward it under the
//!    target it is keyed by, and key it ([`Shared::prepare`]);
//! 2. **look up** — in the store, at once when the store can tell without waiting;
//! 3. **check freshness** — against the stored response and the request's
//!    directives;
//! 4. **answer** — from the store (`answer`, whose header fields come from
//!    `crate::answer_fields`), or revalidate, fetch, coalesce and store (`fetch`).
//!
//! A fresh hit in a store that answers at once takes steps 1–4 in
//! [`Shared::answer_at_once`], before a future is made; everything else continues
//! in [`Shared::handle`] from what step 1 made. Writes are forwarded and
//! invalidate what they change (`invalidate`).
//!
//! | module | concern |
//! |---|---|
//! | `head` | the request as the cache sees it, where its target leads |
//! | `primary_key` | the key (§4.1) |
//! | `answer` | answers from stored and live responses |
//! | `range` | byte ranges from stored responses and parts |
//! | `storable` | whether a response may be stored, and as what |
//! | `fetch` | validation, stale serving, coalesced fetches, storing |
//! | `invalidate` | write invalidation and purges |
//! | `explain` | what the cache does with a request, from the steps above |
//! | `upstream` | what the cache needs of its upstream |

mod answer;
mod explain;
mod fetch;
mod head;
mod invalidate;
mod primary_key;
mod range;
mod storable;
mod upstream;

pub use explain::{Decision, Explanation};
pub use upstream::{CacheableBody, Upstream, UpstreamUnavailable};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use crate::routes::{Params, RouteId, Routes};
use crate::shared::Shared;
use crate::stats::{NotStored, Outcome};
use crate::status::{CacheStatus, ForwardReason};
use crate::store::{LookupNow, Store};
use revalidate::ResponseBody as CacheBody;

use answer::{gateway_timeout, with_header};
use head::{Located, Lookup, RequestHead, forward_as_keyed, locate};
use primary_key::{PrimaryKey, primary_key};

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
        let (prepared, looked_up) = match self.shared.answer_at_once(request) {
            AtOnce::Answered(response) => {
                return ResponseFuture::Ready(std::future::ready(Ok(response)));
            }
            AtOnce::Later(prepared, looked_up) => (prepared, looked_up),
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::Pending(Box::pin(async move {
            shared.handle(inner, prepared, looked_up).await
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

/// A request as every path of the cache starts from it, made once by
/// [`Shared::prepare`]: located (route and normalized target), its target
/// replaced by the one it is keyed under, and, for a read, keyed.
pub(super) enum Prepared<B> {
    /// Not a GET or HEAD: forwarded; a successful write invalidates.
    Write {
        parts: Parts,
        body: B,
        route: RouteId,
        params: Params,
    },
    /// A read the cache does not keep: forwarded as it is.
    Bypass {
        request: Request<B>,
        why: Bypass,
        route: RouteId,
        params: Params,
    },
    /// A read the cache may answer from the store.
    Read(Read),
}

/// A GET or HEAD the cache may answer (its body, if any, is not forwarded).
pub(super) struct Read {
    head: RequestHead,
    route: RouteId,
    params: Params,
    primary: PrimaryKey,
}

/// What [`Shared::answer_at_once`] made of a request.
pub(super) enum AtOnce<ReqBody, ResBody> {
    /// A fresh hit's answer.
    Answered(Response<CacheBody<ResBody>>),
    /// The prepared request, for the full path, with what the store held under its
    /// key when it was looked up (the full path does not ask the store again).
    Later(Prepared<ReqBody>, LookupNow),
}

/// Locates and keys `request` under `routes`: the one step both the answer at
/// once and the full path start from, and what [`crate::explain`] reports.
fn prepare<B: Default>(routes: &Routes, request: Request<B>) -> Prepared<B> {
    let (mut parts, body) = request.into_parts();
    let Located {
        route,
        params,
        target,
    } = locate(routes, &parts.uri);
    // What is forwarded is what is keyed: an origin that does not decode `%75`
    // as `u`, or splits a query on `;` where the key splits it on `&` only,
    // would otherwise answer for another resource than the key names, and that
    // answer would be served to every client of the key (cache poisoning).
    forward_as_keyed(&mut parts.uri, &target);
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Prepared::Write {
            parts,
            body,
            route,
            params,
        };
    }
    let policy = routes.policy(routes.get(route));
    if policy.bypass {
        return Prepared::Bypass {
            request: Request::from_parts(parts, body),
            why: Bypass::Route,
            route,
            params,
        };
    }
    let head = RequestHead::of(parts, route);
    // Every key holds a path (what purges name): `*` names no resource.
    if !target.starts_with('/') {
        return Prepared::Bypass {
            request: head.into_request(B::default()),
            why: Bypass::NotAPath,
            route,
            params,
        };
    }
    match primary_key(policy, &head, target) {
        Some(primary) => Prepared::Read(Read {
            head,
            route,
            params,
            primary,
        }),
        None => Prepared::Bypass {
            request: head.into_request(B::default()),
            why: Bypass::InvalidHost,
            route,
            params,
        },
    }
}

/// Why a read is forwarded without the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bypass {
    /// The route is `bypass`.
    Route,
    /// The host makes no key.
    InvalidHost,
    /// The target is not a path (`*`).
    NotAPath,
}

impl Bypass {
    /// Its `Cache-Status` detail.
    const fn detail(self) -> &'static str {
        match self {
            Self::Route => NotStored::RouteBypass.token(),
            Self::InvalidHost => "invalid-host",
            Self::NotAPath => "not-a-path",
        }
    }
}

impl<St: Store> Shared<St> {
    /// [`prepare`] under this cache's routes, counted.
    fn prepare<B: Default>(&self, request: Request<B>) -> Prepared<B> {
        let prepared = prepare(&self.routes, request);
        let route = match &prepared {
            Prepared::Write { route, .. } | Prepared::Bypass { route, .. } => *route,
            Prepared::Read(read) => read.route,
        };
        self.traffic.request(route.index());
        if let Prepared::Bypass {
            why: Bypass::Route, ..
        } = &prepared
        {
            self.stats.not_stored(NotStored::RouteBypass);
        }
        prepared
    }

    /// The answer to `request` from a fresh stored response, when the store can
    /// look it up without waiting; otherwise the prepared request, for
    /// [`Shared::handle`].
    fn answer_at_once<ReqBody: Default, ResBody>(
        &self,
        request: Request<ReqBody>,
    ) -> AtOnce<ReqBody, ResBody> {
        let prepared = self.prepare(request);
        let Prepared::Read(read) = &prepared else {
            return AtOnce::Later(prepared, LookupNow::Unknown);
        };
        let looked_up = self.store.get_now(&read.primary.key);
        // What the store holds is borrowed, not cloned, to answer: a clone and its
        // drop are two atomic writes to an entry that, over many keys, is rarely in
        // the CPU's cache. The full path gets it whole.
        if let LookupNow::Found(variants) = &looked_up
            && let Some(entry) = variants.find(&read.head.headers)
            // A stored part answers only some ranges: the full path decides.
            && entry.part().is_none()
            && let Some(response) = self.fresh_answer(
                &read.head,
                &read.head.cache_control(),
                entry,
                self.clock.now(),
            )
        {
            return AtOnce::Answered(response);
        }
        AtOnce::Later(prepared, looked_up)
    }

    /// The full path: writes and bypasses are forwarded; a read is looked up,
    /// answered when fresh enough, and otherwise revalidated or fetched.
    async fn handle<S, ReqBody, ResBody>(
        self: Arc<Self>,
        inner: S,
        prepared: Prepared<ReqBody>,
        looked_up: LookupNow,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Default + Send + 'static,
        ResBody: CacheableBody,
    {
        let Read {
            head,
            route,
            params,
            primary,
        } = match prepared {
            Prepared::Write {
                parts,
                body,
                route,
                params,
            } => {
                let route = self.routes.get(route);
                return Box::pin(self.forward_write(inner, parts, body, route, params)).await;
            }
            Prepared::Bypass { request, why, .. } => {
                self.stats.outcome(Outcome::Bypassed);
                let response = inner.oneshot(request).await?;
                let response = response.map(|b| CacheBody::prefixed(Bytes::new(), b));
                let status = CacheStatus::forward(ForwardReason::Bypass).detail(why.detail());
                return Ok(with_header(response, &status));
            }
            Prepared::Read(read) => read,
        };
        let request_cc = head.cache_control();
        let variants = match looked_up {
            LookupNow::Found(variants) => Some(variants),
            LookupNow::Missing => None,
            LookupNow::Unknown => self.store.get(&primary.key).await,
        };
        let found = variants
            .as_ref()
            .and_then(|v| v.find(&head.headers))
            .cloned();
        let lookup = Lookup {
            head: &head,
            request_cc: &request_cc,
            route: self.routes.get(route),
            params: &params,
            primary: &primary.key,
        };
        match found {
            Some(entry) => self.serve_stored_or_revalidate(inner, &lookup, entry).await,
            None => {
                let reason = if variants.is_some() {
                    ForwardReason::VaryMiss
                } else {
                    ForwardReason::UriMiss
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
}
