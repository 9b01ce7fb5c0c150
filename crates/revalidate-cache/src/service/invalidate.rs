//! Invalidation: writes forwarded upstream purge what they change (RFC 9111
//! §4.4 and the route's rules), and purges of the admin API and the library.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use tower::ServiceExt;

use crate::key::normalize_target;
use crate::routes::{Params, Route, Routes};
use crate::shared::Shared;
use crate::stats::Outcome;
use crate::status::{CacheStatus, ForwardReason};
use crate::store::{Purge, Store};
use revalidate::ResponseBody as CacheBody;

use super::answer::with_header;
use super::upstream::Upstream;

/// The path of a Location or Content-Location value when it is same-origin.
pub(super) fn same_origin_path(
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

/// Whether a successful request with `method` (neither GET nor HEAD) purges:
/// every method but OPTIONS and TRACE, which change nothing (RFC 9110 §9.2.1).
pub(crate) fn invalidates(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What a successful `method` on `uri` (of `route`, with `params`) purges before
/// its response is read: the target URI (RFC 9111 §4.4) and the route's write
/// rules for the method (a rule without methods applies to every write). The
/// response's same-origin Location and Content-Location are added to it.
pub(crate) fn write_purge(
    routes: &Routes,
    route: Option<&Route>,
    params: &Params,
    method: &Method,
    uri: &Uri,
) -> Purge {
    let policy = routes.policy(route);
    let mut purge = Purge::default();
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    purge.urls.push(normalize_target(target, &policy.query));
    for rule in route.map(|r| r.on_write.as_slice()).unwrap_or_default() {
        if !rule.methods.is_empty() && !rule.methods.contains(method) {
            continue;
        }
        purge
            .urls
            .extend(rule.urls.iter().filter_map(|t| t.render(params)));
        purge
            .prefixes
            .extend(rule.prefixes.iter().filter_map(|t| t.render(params)));
        purge
            .tags
            .extend(rule.tags.iter().filter_map(|t| t.render(params)));
    }
    purge
}

/// `purge` naming paths as keys hold them: normalized, each URL with the query
/// rules of its route.
pub(crate) fn normalized_purge<'a>(routes: &Routes, purge: &'a Purge) -> Cow<'a, Purge> {
    if purge.urls.is_empty() && purge.prefixes.is_empty() {
        return Cow::Borrowed(purge);
    }
    let mut copy = purge.clone();
    for url in &mut copy.urls {
        let path = url.split('?').next().unwrap_or("/");
        let (route, _) = routes.resolve_request_path(path);
        *url = normalize_target(url, &routes.policy(route).query);
    }
    for prefix in &mut copy.prefixes {
        *prefix = normalize_target(prefix, &crate::key::QueryRules::default());
    }
    Cow::Owned(copy)
}

impl<St: Store> Shared<St> {
    /// Forwards an unsafe request; a non-error response invalidates the target URI,
    /// same-origin Location and Content-Location (RFC 9111 §4.4) and the route's
    /// write rules.
    pub(super) async fn forward_write<S, ReqBody, ResBody>(
        self: &Arc<Self>,
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
        let unsafe_method = invalidates(&method);
        let response = inner.oneshot(Request::from_parts(parts, body)).await?;
        let code = response.status();
        if unsafe_method && (code.is_success() || code.is_redirection()) {
            let mut purge = write_purge(&self.routes, route, &params, &method, &uri);
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
            self.purge_to_completion(purge).await;
        }
        let response = response.map(|b| CacheBody::prefixed(Bytes::new(), b));
        Ok(with_header(
            response,
            &CacheStatus::forward(ForwardReason::Method),
        ))
    }

    /// [`Shared::purge`] in a task of its own, awaited: a caller that goes away
    /// (a client that disconnects after its write was forwarded) cannot leave
    /// the purge half done.
    pub(crate) async fn purge_to_completion(self: &Arc<Self>, purge: Purge) -> usize {
        let shared = self.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move { shared.purge(&purge).await })
            .await
            .unwrap_or_else(|_| {
                stats.purge_failed();
                0
            })
    }

    /// Records, then applies, a purge (see [`crate::invalidation`]).
    pub(crate) async fn purge(&self, purge: &Purge) -> usize {
        if purge.is_empty() {
            return 0;
        }
        let normalized = normalized_purge(&self.routes, purge);
        let purge = normalized.as_ref();
        let guard = self.log.record(purge).await;
        let here = self.store.purge(purge).await;
        drop(guard);
        let touched = here.max(self.store.spread(purge).await);
        self.stats.purge(purge, touched, self.clock.now());
        tracing::info!(urls = ?purge.urls, prefixes = ?purge.prefixes, tags = ?purge.tags, soft = purge.soft, touched, "purge");
        touched
    }
}
