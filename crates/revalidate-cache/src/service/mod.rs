//! The cache middleware: a request is located (route and normalized target),
//! looked up, answered from the store when fresh enough, and otherwise fetched,
//! coalesced and stored; writes are forwarded and invalidate what they change.
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
//! | `upstream` | what the cache needs of its upstream |

mod answer;
mod fetch;
mod head;
mod invalidate;
mod primary_key;
mod range;
mod storable;
mod upstream;

pub use upstream::{CacheableBody, Upstream, UpstreamUnavailable};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use crate::shared::Shared;
use crate::stats::Outcome;
use crate::status::{CacheStatus, ForwardReason};
use crate::store::{LookupNow, Store};
use revalidate::ResponseBody as CacheBody;

use answer::{gateway_timeout, with_header};
use head::{Located, Lookup, RequestHead, forwarded_uri};
use primary_key::primary_key;

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
pub(super) enum AtOnce<ReqBody, ResBody> {
    /// A fresh hit's answer.
    Answered(Response<CacheBody<ResBody>>),
    /// The request, for the full path, with what the store held under its key
    /// when it was looked up (the full path does not ask the store again).
    Later(Request<ReqBody>, LookupNow),
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
            return AtOnce::Later(request, LookupNow::Unknown);
        }
        let (parts, body) = request.into_parts();
        let Located { route, target, .. } = self.locate(&parts.uri);
        let policy = self.routes.policy(route);
        if policy.bypass {
            return AtOnce::Later(Request::from_parts(parts, body), LookupNow::Unknown);
        }
        let head = RequestHead::of(parts);
        // What the store holds is borrowed, not cloned, to answer: a clone and its
        // drop are two atomic writes to an entry that, over many keys, is rarely in
        // the CPU's cache. The full path gets it whole.
        let looked_up = primary_key(policy, &head, target).map_or(LookupNow::Unknown, |primary| {
            self.store.get_now(&primary.key)
        });
        let found = match &looked_up {
            LookupNow::Found(variants) => variants.find(&head.headers),
            LookupNow::Missing | LookupNow::Unknown => None,
        };
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

    async fn handle<S, ReqBody, ResBody>(
        self: Arc<Self>,
        inner: S,
        request: Request<ReqBody>,
        looked_up: LookupNow,
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
            return Ok(with_header(
                response,
                &CacheStatus::forward(ForwardReason::Bypass),
            ));
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
                &CacheStatus::forward(ForwardReason::Bypass).detail("invalid-host"),
            ));
        };
        let path = primary.target();

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
            route,
            params: &params,
            primary: &primary.key,
            path,
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
