//! Whether a response may be stored (RFC 9111 §3), and the entry it is stored as.

use crate::stats::NotStored;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use revalidate::{CacheControl, Validators};

use crate::entry::{StoredResponse, Timing};
use crate::freshness::{self, Directives};
use crate::headers::{response_tags, split_for_storage, strip_tags};
use crate::key::{secondary, vary_names};
use crate::routes::{Params, RoutePolicy};
use crate::shared::Shared;
use crate::store::Store;

use super::answer::delta;
use super::head::{Lookup, RequestHead};

/// Statuses never stored, whatever the response says: the answers to a malformed or
/// overlong request (400, 413, 431), which stored for everyone would be a
/// cache-poisoned denial of service, and 416, which depends on the request's Range.
/// (A 206 is stored only as the answer to a Range this cache forwarded.)
pub(super) fn never_stored(status: StatusCode) -> bool {
    matches!(status.as_u16(), 304 | 400 | 413 | 416 | 431) || status.is_informational()
}

/// Whether this cache knows the status's semantics (for `must-understand`).
pub(super) fn understood(status: StatusCode) -> bool {
    status.canonical_reason().is_some()
}

/// Whether an entry is worth storing: a response that is stale at once and can be
/// neither validated nor served stale is of no later use (it is still shared with
/// waiting requests), and a 206 whose Content-Range does not describe its body is
/// never trusted.
pub(super) fn worth_storing(entry: &StoredResponse) -> bool {
    (entry.status != StatusCode::PARTIAL_CONTENT || entry.part().is_some())
        && (!entry.lifetime().is_zero()
            || !entry.stale_while_revalidate().is_zero()
            || !entry.stale_if_error().is_zero()
            || entry.validators() != Validators::default())
}

impl<St: Store> Shared<St> {
    /// RFC 9111 §3 storability, plus the route's and this cache's safety rules.
    pub(super) fn storable(
        &self,
        policy: &RoutePolicy,
        head: &RequestHead,
        request_cc: &CacheControl,
        status: StatusCode,
        headers: &HeaderMap,
        directives: &Directives,
    ) -> Result<(), NotStored> {
        let cc = &directives.cc;
        if request_cc.no_store {
            return Err(NotStored::RequestNoStore);
        }
        if never_stored(status) {
            return Err(NotStored::Status);
        }
        // must-understand: only a cache that knows the status may store, and it may
        // then ignore no-store (§5.2.2.3).
        if cc.must_understand && !understood(status) {
            return Err(NotStored::MustUnderstand);
        }
        if cc.no_store && !cc.must_understand {
            return Err(NotStored::NoStore);
        }
        // Keyed per user only when the request carries the credential the route
        // scopes on; without it the key is shared, so no exemption applies.
        let scope = policy
            .user_scope
            .as_ref()
            .filter(|name| head.headers.contains_key(*name));
        let scoped = scope.is_some();
        if cc.private && cc.private_fields.is_empty() && !scoped {
            return Err(NotStored::Private);
        }
        let explicitly_shared = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
        if head.headers.contains_key(AUTHORIZATION)
            && scope != Some(&AUTHORIZATION)
            && !explicitly_shared
        {
            return Err(NotStored::Authorization);
        }
        // Varnish's default: a request with cookies is personal unless the origin says
        // otherwise or the route keys on the cookies.
        if head.headers.contains_key(COOKIE)
            && scope != Some(&COOKIE)
            && policy.key_cookies.is_empty()
            && !(cc.public || cc.s_maxage.is_some())
        {
            return Err(NotStored::Cookie);
        }
        if headers.contains_key(SET_COOKIE) && !policy.allow_set_cookie {
            return Err(NotStored::SetCookie);
        }
        if vary_names(headers).is_none() {
            return Err(NotStored::VaryStar);
        }
        let has_freshness = freshness::has_explicit_lifetime(directives, headers)
            || cc.public
            || cc.no_cache
            || (policy.default_ttl.is_some() && !status.is_server_error())
            || freshness::heuristically_cacheable(status);
        if !has_freshness {
            return Err(NotStored::NoFreshness);
        }
        Ok(())
    }

    /// A response as it is stored: the fields for the requester only split off (and
    /// returned), its tags and its secondary key taken.
    pub(super) fn entry_of(
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
            Arc::from(lookup.primary),
        );
        (Arc::new(entry), requester_only)
    }

    pub(super) fn timing(
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

    pub(super) fn tags_of(
        &self,
        policy: &RoutePolicy,
        params: &Params,
        headers: &HeaderMap,
    ) -> Vec<String> {
        let mut tags = response_tags(headers);
        tags.extend(policy.tags_for(params));
        tags
    }
}
