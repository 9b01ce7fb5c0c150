//! Fetching from the upstream: validation of stored responses (RFC 9111 §4.3),
//! stale-while-revalidate and stale-if-error (RFC 5861), coalesced misses, and
//! storing what may be stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH, DATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use revalidate::HttpDate;
use revalidate::body::{Uncollected, collect_up_to};
use tower::ServiceExt;

use crate::coalesce::{Flight, Role, wait};
use crate::entry::StoredResponse;
use crate::freshness::Directives;
use crate::headers::{split_for_storage, strip_hop_by_hop, strip_tags};
use crate::invalidation::Ticket;
use crate::shared::Shared;
use crate::stats::Outcome;
use crate::status::{CACHE_STATUS, CacheStatus, ForwardReason};
use crate::store::{FetchMark, Store};
use revalidate::{BoxError, ResponseBody as CacheBody};

use super::answer::{delta, gateway_timeout, secs};
use super::head::{Lookup, RequestHead};
use super::range::{ByteRange, holds_requested_range};
use super::storable::worth_storing;
use super::upstream::{CacheableBody, Upstream, UpstreamUnavailable};
use crate::stats::NotStored;

/// What a fetch produced.
pub(super) enum Fetched<B, E> {
    /// A storable response to serve.
    Entry {
        entry: Arc<StoredResponse>,
        status: CacheStatus,
        /// The fields only the client that caused the fetch may see (Set-Cookie,
        /// qualified private and no-cache, the upstream's Age).
        requester_only: Vec<(HeaderName, HeaderValue)>,
        /// The upstream response's extensions (what the upstream service noted
        /// about the exchange), handed on to the answer of the request that
        /// caused the fetch.
        extensions: http::Extensions,
        /// Whether requests waiting on the fetch may reuse it.
        shareable: bool,
    },
    /// The stale entry, because the upstream failed (stale-if-error).
    Stale(Arc<StoredResponse>, CacheStatus),
    /// A response that cannot be shared.
    Live(Response<CacheBody<B>>, CacheStatus),
    /// The upstream failed and nothing stale may stand in.
    Failed(E),
}

impl<B, E> Fetched<B, E> {
    /// What requests waiting on this fetch learn.
    pub(super) fn flight(&self) -> Flight {
        match self {
            Fetched::Entry {
                entry,
                shareable: true,
                ..
            }
            | Fetched::Stale(entry, _) => {
                if entry.part().is_some() {
                    Flight::Part(entry.clone())
                } else {
                    Flight::Done(entry.clone())
                }
            }
            Fetched::Entry { .. } | Fetched::Live(..) | Fetched::Failed(_) => Flight::NotShareable,
        }
    }
}

pub(super) fn is_server_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// The stored headers updated from a 304 (RFC 9111 §3.2): every field the 304
/// carries replaces the stored one, except Content-Length and hop-by-hop fields.
/// The stored answer placeholders are left out: the result's `Age` is the 304's.
pub(super) fn freshened(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
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

impl<St: Store> Shared<St> {
    pub(super) async fn serve_stored_or_revalidate<S, ReqBody, ResBody>(
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
            ..
        } = *lookup;
        // A stored part answers only a range it holds (RFC 9111 §3.3); anything else
        // goes upstream as a miss, asking for the client's range if it has one.
        if entry.part().is_some() && !holds_requested_range(head, entry.part()) {
            if request_cc.only_if_cached {
                return Ok(gateway_timeout(
                    "only-if-cached: the cache holds only part of the response",
                ));
            }
            return Box::pin(self.fetch_coalesced(inner, lookup, None, ForwardReason::Partial))
                .await;
        }
        let now = self.clock.now();
        if let Some(response) = self.fresh_answer(head, request_cc, &entry, now) {
            return Ok(response);
        }
        let ttl = entry.ttl(now);

        let staleness = entry.staleness(now);
        let stale_ttl = -secs(staleness);
        let may_serve_stale = ttl.is_none()
            && !entry.forbids_stale()
            && !entry.always_revalidate()
            && !request_cc.no_cache;
        let max_stale_allows = match request_cc.max_stale {
            Some(None) => true,
            Some(Some(limit)) => staleness <= delta(limit),
            None => false,
        };
        if may_serve_stale && max_stale_allows {
            let status = CacheStatus::hit(Some(stale_ttl)).detail("max-stale");
            return Ok(self.respond_stored(head, &entry, status, Outcome::StaleServed, now));
        }
        if request_cc.only_if_cached {
            return Ok(gateway_timeout(
                "only-if-cached: the stored response is stale",
            ));
        }
        let swr_allows = may_serve_stale
            && request_cc.max_age.is_none()
            && request_cc.min_fresh.is_none()
            && staleness <= entry.stale_while_revalidate()
            && !entry.stale_while_revalidate().is_zero();
        if swr_allows {
            self.spawn_refresh(inner, head.clone(), primary.to_string(), entry.clone());
            let status = CacheStatus::hit(Some(stale_ttl)).detail("stale-while-revalidate");
            return Ok(self.respond_stored(head, &entry, status, Outcome::StaleServed, now));
        }
        Box::pin(self.fetch_coalesced(
            inner,
            lookup,
            Some(entry),
            // RFC 9211: `request` when the entry was fresh but the request's own
            // directives (no-cache, max-age, min-fresh) sent it upstream.
            if ttl.is_some() {
                ForwardReason::Request
            } else {
                ForwardReason::Stale
            },
        ))
        .await
    }

    /// Fetches once for all concurrent requests of a key. (Callers box this future:
    /// it is large, and a hit should not pay for moving it.)
    pub(super) async fn fetch_coalesced<S, ReqBody, ResBody>(
        self: &Arc<Self>,
        inner: S,
        lookup: &Lookup<'_>,
        stale: Option<Arc<StoredResponse>>,
        reason: ForwardReason,
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
                    return self.respond_fetched(head, fetched, reason.outcome());
                }
                Role::Follower(receiver) => receiver,
            };
            let entry = match wait(receiver, self.config.coalesce_timeout).await {
                Flight::Done(entry) if entry.status != StatusCode::PARTIAL_CONTENT => entry,
                Flight::Part(entry) if holds_requested_range(head, entry.part()) => entry,
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
                    return self.respond_fetched(head, fetched, reason.outcome());
                }
            };
            if !entry.secondary().matches(&head.headers) {
                // A Vary mismatch: alone, at once, too.
                let fetched = self.fetch(inner, lookup, stale, reason).await;
                return self.respond_fetched(head, fetched, reason.outcome());
            }
            let now = self.clock.now();
            let ttl = entry
                .ttl(now)
                .map_or_else(|| -secs(entry.staleness(now)), secs);
            let status = CacheStatus::forward(reason).ttl(ttl).collapsed();
            return Ok(self.respond_stored(head, &entry, status, Outcome::Coalesced, now));
        }
    }

    pub(super) fn respond_fetched<ResBody, E>(
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
            Fetched::Entry {
                entry,
                status,
                requester_only,
                extensions,
                ..
            } => {
                let mut response =
                    self.respond_stored(head, &entry, status, outcome, self.clock.now());
                *response.extensions_mut() = extensions;
                // Straight from the upstream: its own Age stands, as it sent it (it
                // is among the requester's fields when there was one).
                response.headers_mut().remove(AGE);
                for (name, value) in requester_only {
                    response.headers_mut().append(name, value);
                }
                Ok(response)
            }
            Fetched::Stale(entry, status) => Ok(self.respond_stored(
                head,
                &entry,
                status,
                Outcome::StaleServed,
                self.clock.now(),
            )),
            Fetched::Live(response, status) => {
                Ok(self.respond_live(head, response, status, outcome))
            }
            Fetched::Failed(error) => Err(error),
        }
    }

    /// Revalidates `stale` in the background, once per key.
    pub(super) fn spawn_refresh<S, ReqBody, ResBody>(
        self: &Arc<Self>,
        inner: S,
        head: RequestHead,
        primary: String,
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
            let (route, params) = shared.routes.resolve_request_path(head.uri.path());
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
                    },
                    Some(stale),
                    ForwardReason::Stale,
                )
                .await;
            leader.finish(fetched.flight());
        });
    }

    /// One upstream fetch: conditional when a stale entry has validators; stores
    /// what may be stored.
    pub(super) async fn fetch<S, ReqBody, ResBody>(
        &self,
        inner: S,
        lookup: &Lookup<'_>,
        stale: Option<Arc<StoredResponse>>,
        reason: ForwardReason,
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
        let since = self.store.fetch_mark(primary).await;
        let validators = stale.as_ref().map(|e| e.validators());
        let validators = validators.as_ref();
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
        self.stats.upstream(started.elapsed());
        let response_time = self.clock.now();

        // Stale content may stand in for an error within stale-if-error, and for an
        // unreachable upstream at all (RFC 9111 §4.2.4: a disconnected cache), unless
        // the response forbids stale reuse.
        let stale_if_error = |stale: &Option<Arc<StoredResponse>>,
                              fwd_status: Option<u16>,
                              disconnected: bool| {
            let entry = stale.as_ref()?;
            let staleness = entry.staleness(response_time);
            let window = !entry.stale_if_error().is_zero() && staleness <= entry.stale_if_error();
            let allowed =
                !entry.forbids_stale() && !entry.always_revalidate() && (window || disconnected);
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
            self.stats.upstream_not_modified(old.body.len());
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
            let mut tags = old.tags().to_vec();
            tags.extend(self.tags_of(policy, params, &parts.headers));
            tags.sort();
            tags.dedup();
            let timing = timing(&headers, old.status);
            let entry = Arc::new(StoredResponse::new(
                old.status,
                headers,
                old.body.clone(),
                timing,
                old.secondary().clone(),
                tags,
                old.key().clone(),
            ));
            let stored = verdict.is_ok()
                && self
                    .store_entry(ticket, since, primary, entry.clone())
                    .await;
            let mut status = CacheStatus::forward(reason).fwd_status(304);
            if stored {
                status = status.stored();
            }
            let shareable = verdict.is_ok();
            return Fetched::Entry {
                entry,
                status,
                requester_only,
                extensions: parts.extensions,
                shareable,
            };
        }

        let status = CacheStatus::forward(reason).fwd_status(code.as_u16());
        let directives = Directives::of_response(&parts.headers);
        let verdict = if disconnected {
            Err(NotStored::MadeUp)
        } else if code == StatusCode::PARTIAL_CONTENT && range.is_none() {
            Err(NotStored::UnaskedPartial)
        } else {
            self.storable(policy, head, request_cc, code, &parts.headers, &directives)
        };
        if let Err(why) = verdict {
            tracing::debug!(uri = %head.uri, why = why.token(), "not storable");
            self.stats.not_stored(why);
            let status = status.detail(why.token());
            let mut response = Response::from_parts(parts, CacheBody::prefixed(Bytes::new(), body));
            strip_hop_by_hop(response.headers_mut());
            strip_tags(response.headers_mut());
            return Fetched::Live(response, status);
        }

        // Buffer the body, bounded; too large a body streams on unstored. A stored
        // body gets an allocation of its own, exactly its size: never the spare
        // capacity of a growing buffer, never a slice that pins a connection's whole
        // read buffer (that would double the resident memory per entry).
        let (bytes, rest) = match collect_up_to(body, self.config.max_object_bytes).await {
            Ok(bytes) => (Bytes::copy_from_slice(&bytes), None),
            Err(Uncollected::TooLarge(prefix, rest)) => (prefix, Some(rest)),
            Err(Uncollected::Failed(error)) => {
                let response = Response::from_parts(parts, CacheBody::failed(error));
                return Fetched::Live(response, status);
            }
        };
        if let Some(rest) = rest {
            self.stats.not_stored(NotStored::TooLarge);
            let status = status.detail(NotStored::TooLarge.token());
            let mut response = Response::from_parts(parts, CacheBody::prefixed(bytes, rest));
            strip_hop_by_hop(response.headers_mut());
            strip_tags(response.headers_mut());
            return Fetched::Live(response, status);
        }

        let extensions = parts.extensions;
        let (entry, requester_only) = self.entry_of(
            lookup,
            code,
            parts.headers,
            bytes,
            &directives,
            (request_time, response_time),
        );
        let stored = worth_storing(&entry)
            && self
                .store_entry(ticket, since, primary, entry.clone())
                .await;
        let status = if stored { status.stored() } else { status };
        // Waiting requests may reuse it only as they could reuse a stored response:
        // while fresh (RFC 9111 §4.2), never a `no-cache` one without validation (a
        // part only for the ranges it holds: see `Flight::Part`).
        let shareable = entry.ttl(response_time).is_some()
            && (code != StatusCode::PARTIAL_CONTENT || entry.part().is_some());
        Fetched::Entry {
            entry,
            status,
            requester_only,
            extensions,
            shareable,
        }
    }

    /// Stores `entry` unless a purge that names it was recorded after `ticket`.
    pub(super) async fn store_entry(
        &self,
        ticket: Ticket,
        since: FetchMark,
        primary: &str,
        entry: Arc<StoredResponse>,
    ) -> bool {
        // Read before the lock: with a shared tier it may be a round trip, and
        // every store waits for the lock. A variant stored meanwhile by another
        // fetch of the same key may be left out of the merge (it is fetched
        // again); nothing purged gets in (checked below, under the lock).
        let existing = self.store.get(primary).await;
        let guard = self.log.lock().await;
        if self.retired.load(Ordering::Acquire) {
            tracing::debug!(
                path = entry.path(),
                "not stored: the configuration changed the key recipe"
            );
            return false;
        }
        if guard.invalidated_since(ticket, entry.path(), entry.tags()) {
            tracing::debug!(
                path = entry.path(),
                "not stored: invalidated while in flight"
            );
            return false;
        }
        // The other variants were read before the lock: a purge since the fetch
        // began that names any of them (a tag only they carry) leaves them out.
        let existing = existing
            .filter(|v| {
                !v.entries()
                    .iter()
                    .any(|e| guard.invalidated_since(ticket, e.path(), e.tags()))
            })
            .unwrap_or_default();
        let names = entry.secondary().names.clone();
        let variants = existing.with(names, entry, self.config.max_variants);
        let kept = self.store.put(primary.to_string(), variants, since).await;
        drop(guard);
        if kept {
            self.stats.stored();
        }
        kept
    }
}
