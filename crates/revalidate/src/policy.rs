//! Per-route caching policy: `Cache-Control`, `Vary` and user scope.
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, header::ACCEPT_LANGUAGE};
//! use revalidate::{CacheControl, CachePolicy};
//!
//! let policy = CachePolicy::new(CacheControl::new().public().max_age(Duration::from_secs(60)))
//!     .vary(ACCEPT_LANGUAGE)
//!     .user_scoped();
//! let mut headers = HeaderMap::new();
//! policy.decorate(&mut headers);
//! // A user-scoped response is never public, and varies on the credential.
//! assert_eq!(headers["cache-control"], "private, max-age=60");
//! assert_eq!(headers["vary"], "accept-language, authorization");
//! ```

use std::sync::Arc;

use http::header::{AUTHORIZATION, CACHE_CONTROL, VARY};
use http::{HeaderMap, HeaderName, HeaderValue};
use twox_hash::XxHash3_128;

use crate::cache_control::CacheControl;
use crate::validators::EntityTag;

/// What a route says about caching its responses.
#[derive(Debug, Clone, Default)]
pub struct CachePolicy {
    cache_control: Option<CacheControl>,
    /// `cache_control` rendered once, not on every response.
    cache_control_value: Option<HeaderValue>,
    vary: Vec<HeaderName>,
    user_scope: Option<HeaderName>,
}

/// The credential of one caller on a user-scoped route, mixed into its entity tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(Arc<[u8]>);

impl Scope {
    /// Mixes this scope into `tag` so that two callers never share a tag, even for
    /// identical bodies. The weakness of the tag is kept.
    pub fn mix_into(&self, tag: &EntityTag) -> EntityTag {
        let mut hasher = XxHash3_128::new();
        hasher.write(&(self.0.len() as u64).to_le_bytes());
        hasher.write(&self.0);
        hasher.write(tag.opaque());
        let opaque = crate::conditional::hex128(hasher.finish_128());
        let scoped = EntityTag::strong(opaque).expect("hex is etagc");
        if tag.is_weak() {
            scoped.into_weak()
        } else {
            scoped
        }
    }
}

impl CachePolicy {
    /// A policy that sets `cache_control` on responses that carry none.
    pub fn new(cache_control: CacheControl) -> Self {
        let mut policy = Self::default();
        policy.set_cache_control(cache_control);
        policy
    }

    /// Replaces the `Cache-Control` this policy sets.
    pub fn set_cache_control(&mut self, cache_control: CacheControl) {
        self.cache_control_value = Some(cache_control.to_header_value());
        self.cache_control = Some(cache_control);
    }

    /// Adds a field to `Vary`.
    pub fn vary(mut self, name: HeaderName) -> Self {
        if !self.vary.contains(&name) {
            self.vary.push(name);
        }
        self
    }

    /// Makes the route user-scoped on the `Authorization` credential.
    pub fn user_scoped(self) -> Self {
        self.user_scoped_by(AUTHORIZATION)
    }

    /// Makes the route user-scoped on the credential carried in `header`
    /// (e.g. a session cookie's header or `X-Api-Key`).
    pub fn user_scoped_by(mut self, header: HeaderName) -> Self {
        self.user_scope = Some(header);
        self
    }

    /// The configured `Cache-Control`, if any.
    pub fn cache_control(&self) -> Option<&CacheControl> {
        self.cache_control.as_ref()
    }

    /// The configured `Vary` fields.
    pub fn vary_fields(&self) -> &[HeaderName] {
        &self.vary
    }

    /// The credential header of a user-scoped route.
    pub fn user_scope_header(&self) -> Option<&HeaderName> {
        self.user_scope.as_ref()
    }

    /// The caller's scope on a user-scoped route; `None` on other routes.
    ///
    /// A request without the credential gets an empty scope, still distinct from
    /// every caller that presents one.
    pub fn scope_of(&self, request_headers: &HeaderMap) -> Option<Scope> {
        let header = self.user_scope.as_ref()?;
        let mut credential = Vec::new();
        for value in request_headers.get_all(header) {
            credential.extend_from_slice(value.as_bytes());
            credential.push(b'\n');
        }
        Some(Scope(credential.into()))
    }

    /// Sets `Cache-Control` and `Vary` on a response's headers.
    ///
    /// `Cache-Control` from the policy applies only where the handler set none; on a
    /// user-scoped route the result is always `private` (no `public`, no `s-maxage`),
    /// whatever the handler said. `Vary` fields are merged without duplicates.
    pub fn decorate(&self, headers: &mut HeaderMap) {
        if let Some(value) = &self.cache_control_value
            && !headers.contains_key(CACHE_CONTROL)
        {
            headers.insert(CACHE_CONTROL, value.clone());
        }
        if self.user_scope.is_some() {
            let mut cc = CacheControl::from_headers(headers);
            if !cc.private || cc.public || cc.s_maxage.is_some() || !cc.private_fields.is_empty() {
                cc.private = true;
                cc.private_fields.clear();
                cc.public = false;
                cc.s_maxage = None;
                headers.insert(CACHE_CONTROL, cc.to_header_value());
            }
        }
        let extra = self.vary.iter().chain(self.user_scope.as_ref());
        merge_vary(headers, extra);
    }
}

/// Adds `names` to the `Vary` of `headers`, keeping existing members and `*`.
pub fn merge_vary<'a>(headers: &mut HeaderMap, names: impl Iterator<Item = &'a HeaderName>) {
    let mut names = names.peekable();
    if names.peek().is_none() {
        return;
    }
    let mut members: Vec<String> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    let before = members.len();
    if members.iter().any(|m| m == "*") {
        return;
    }
    for name in names {
        if !members.iter().any(|m| m == name.as_str()) {
            members.push(name.as_str().to_string());
        }
    }
    if members.len() != before {
        let value = HeaderValue::from_str(&members.join(", ")).expect("field names are tokens");
        headers.insert(VARY, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn handler_cache_control_wins_but_scope_forces_private() {
        let policy = CachePolicy::new(CacheControl::new().no_cache());
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            "public, s-maxage=600, max-age=5".parse().unwrap(),
        );
        policy.decorate(&mut headers);
        assert_eq!(headers[CACHE_CONTROL], "public, s-maxage=600, max-age=5");

        let scoped =
            CachePolicy::new(CacheControl::new().max_age(Duration::from_secs(1))).user_scoped();
        scoped.decorate(&mut headers);
        assert_eq!(headers[CACHE_CONTROL], "private, max-age=5");
        assert_eq!(headers[VARY], "authorization");
    }

    #[test]
    fn vary_merges_and_respects_star() {
        let policy = CachePolicy::default()
            .vary(http::header::ACCEPT)
            .vary(http::header::ACCEPT_ENCODING);
        let mut headers = HeaderMap::new();
        headers.insert(VARY, "Accept".parse().unwrap());
        policy.decorate(&mut headers);
        assert_eq!(headers[VARY], "accept, accept-encoding");

        let mut star = HeaderMap::new();
        star.insert(VARY, "*".parse().unwrap());
        policy.decorate(&mut star);
        assert_eq!(star[VARY], "*");
    }

    #[test]
    fn scopes_separate_identical_tags() {
        let policy = CachePolicy::default().user_scoped();
        let tag = EntityTag::strong("v1").unwrap();
        let scope = |cred: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, cred.parse().unwrap());
            policy.scope_of(&h).unwrap()
        };
        let alice = scope("Bearer 1").mix_into(&tag);
        let bob = scope("Bearer 2").mix_into(&tag);
        assert_ne!(alice, bob);
        assert_eq!(alice, scope("Bearer 1").mix_into(&tag));
        assert!(
            scope("Bearer 1")
                .mix_into(&tag.clone().into_weak())
                .is_weak()
        );
        assert_eq!(CachePolicy::default().scope_of(&HeaderMap::new()), None);
    }
}
