//! A client request as the cache sees it: its head, where its target leads
//! (route and normalized target), and the target forwarded upstream.

use bytes::Bytes;
use http::header::{
    CONTENT_LENGTH, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    RANGE,
};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use revalidate::{CacheControl, Validators};

use crate::headers::{Carried, remove_hop_by_hop};
use crate::key::{push_normalized_path, push_normalized_query};
use crate::routes::{Params, Route, RouteId, Routes};

/// The parts of a client request that fetches are built from.
#[derive(Debug, Clone)]
pub(super) struct RequestHead {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) version: http::Version,
    pub(super) headers: HeaderMap,
    /// Which fields that steer the cache `headers` may hold.
    pub(super) carried: Carried,
    /// Carried to the upstream request (the peer address, tracing context…).
    pub(super) extensions: http::Extensions,
    /// The route it resolved to, for the per-route counters.
    pub(super) route: RouteId,
}

impl RequestHead {
    /// The head of a client request. Fields the upstream will never see
    /// (hop-by-hop, or named by Connection) are removed: they must not select what
    /// is stored either.
    pub(super) fn of(mut parts: Parts, route: RouteId) -> Self {
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
            route,
        }
    }

    /// The request's `Cache-Control` directives.
    pub(super) fn cache_control(&self) -> CacheControl {
        if self.carried.cache_control {
            CacheControl::from_headers(&self.headers)
        } else {
            CacheControl::default()
        }
    }

    /// Its `Range` field, if any.
    pub(super) fn range(&self) -> Option<&HeaderValue> {
        self.carried
            .conditional
            .range
            .then(|| self.headers.get(RANGE))
            .flatten()
    }

    /// Whether it carries `If-Range`.
    pub(super) fn has_if_range(&self) -> bool {
        self.carried.conditional.if_range && self.headers.contains_key(IF_RANGE)
    }

    /// The request again, with `body`.
    pub(super) fn into_request<B>(self, body: B) -> Request<B> {
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
    pub(super) fn upstream_request<B: Default>(
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

/// The request fields the cache answers itself from what it stores: the
/// preconditions (RFC 9110 §13.1) and Range.
pub(super) const CONDITIONAL_FIELDS: [HeaderName; 6] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    RANGE,
];

/// One request's place in the cache: what the lookup, fetch and store steps share.
#[derive(Clone, Copy)]
pub(super) struct Lookup<'a> {
    pub(super) head: &'a RequestHead,
    pub(super) request_cc: &'a CacheControl,
    pub(super) route: Option<&'a Route>,
    pub(super) params: &'a Params,
    /// The primary key.
    pub(super) primary: &'a str,
}

/// Bytes reserved ahead of a normalized target for the host of its primary key.
pub(super) const HOST_ROOM: usize = 32;

/// Where a request target leads: see [`Shared::locate`].
pub(super) struct Located {
    pub(super) route: RouteId,
    pub(super) params: Params,
    /// The normalized path and query.
    pub(super) target: String,
}

/// Replaces `uri`'s path and query with `target`, the normalized form the key
/// holds; an absolute-form target keeps its scheme and authority (the key's host).
/// A target that is already normalized (most are) is left as it is.
pub(super) fn forward_as_keyed(uri: &mut Uri, target: &str) {
    if uri.path_and_query().is_some_and(|pq| pq.as_str() == target) {
        return;
    }
    let mut parts = uri.clone().into_parts();
    // A normalized target only differs from a valid one by decoded unreserved
    // characters, uppercase escapes, `%25` for a bare `%` and dropped parameters,
    // so it always parses; were it not to, the client's own target is kept.
    let Ok(path_and_query) =
        PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes()))
    else {
        return;
    };
    parts.path_and_query = Some(path_and_query);
    if let Ok(forwarded) = Uri::from_parts(parts) {
        *uri = forwarded;
    }
}

/// The route of a target, matched on its normalized path, and the normalized
/// target (with the route's query rules) that keys, tags and purges are built
/// from, so `/users/%31` is `/users/1` everywhere.
pub(super) fn locate(routes: &Routes, uri: &Uri) -> Located {
    // Room for the host, which the primary key puts in front of the target.
    let mut target = String::with_capacity(
        HOST_ROOM + uri.path().len() + uri.query().map_or(0, |q| q.len() + 1),
    );
    push_normalized_path(uri.path(), &mut target);
    let (route, params) = routes.resolve_id(&target);
    let policy = routes.policy(routes.get(route));
    push_normalized_query(uri.query(), &policy.query, &mut target);
    Located {
        route,
        params,
        target,
    }
}
