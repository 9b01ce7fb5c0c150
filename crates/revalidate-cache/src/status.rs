//! The `Cache-Status` response field (RFC 9211).

use std::cell::RefCell;
use std::fmt;

use http::{HeaderName, HeaderValue};

use crate::stats::Outcome;

/// The field name.
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went upstream: the `fwd` parameter of `Cache-Status` (RFC 9211
/// §2.2), as this cache uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum ForwardReason {
    /// The route bypasses the cache, or the request cannot be keyed.
    Bypass,
    /// The method is not one the cache answers (writes, OPTIONS…).
    Method,
    /// Nothing is stored under the request's key.
    UriMiss,
    /// Responses are stored under the key, none for this request's `Vary` fields.
    VaryMiss,
    /// A stored part does not hold the range the request asks for.
    Partial,
    /// The request's own directives (`no-cache`, `max-age`…) rule out the stored
    /// response.
    Request,
    /// The stored response is stale.
    Stale,
}

impl ForwardReason {
    /// Every reason, in the order RFC 9211 lists them.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 7] = [
        Self::Bypass,
        Self::Method,
        Self::UriMiss,
        Self::VaryMiss,
        Self::Request,
        Self::Stale,
        Self::Partial,
    ];

    /// The token in `Cache-Status`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Method => "method",
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Partial => "partial",
            Self::Request => "request",
            Self::Stale => "stale",
        }
    }

    /// How a request forwarded for this reason is counted: a fetch that validates
    /// what is stored is a revalidation, one that fills the key a miss.
    pub(crate) const fn outcome(self) -> Outcome {
        match self {
            Self::Bypass | Self::Method => Outcome::Bypassed,
            Self::Request | Self::Stale => Outcome::Revalidated,
            Self::UriMiss | Self::VaryMiss | Self::Partial => Outcome::Miss,
        }
    }
}

impl fmt::Display for ForwardReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cache's entry in `Cache-Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheStatus {
    hit: bool,
    fwd: Option<ForwardReason>,
    fwd_status: Option<u16>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    detail: Option<&'static str>,
}

impl CacheStatus {
    /// Served from the cache without going upstream.
    pub(crate) fn hit(ttl: Option<i64>) -> Self {
        Self {
            hit: true,
            ttl,
            ..Self::default()
        }
    }

    /// Forwarded upstream, for `reason`.
    pub(crate) fn forward(reason: ForwardReason) -> Self {
        Self {
            fwd: Some(reason),
            ..Self::default()
        }
    }

    /// The status the upstream answered.
    pub(crate) fn fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }

    /// The remaining freshness, in seconds (negative when stale).
    pub(crate) fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The response was stored.
    pub(crate) fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// The request was collapsed with another one's fetch.
    pub(crate) fn collapsed(mut self) -> Self {
        self.collapsed = true;
        self
    }

    /// Extra detail, e.g. `stale-while-revalidate`.
    pub(crate) fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The field value.
    pub(crate) fn to_header_value(&self) -> HeaderValue {
        // Every answer carries one, and under load a thread's consecutive answers
        // mostly carry the same one (the same ttl, within a second): the last value
        // a thread made is kept and handed out again.
        thread_local! {
            static LAST: RefCell<Option<(CacheStatus, HeaderValue)>> = const { RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| match last {
            Some((status, value)) if status == self => value.clone(),
            _ => {
                let mut out = String::with_capacity(64);
                self.write_to(&mut out);
                let value = HeaderValue::try_from(out).expect("ascii");
                *last = Some((self.clone(), value.clone()));
                value
            }
        })
    }

    fn write_to(&self, out: &mut String) {
        let mut numbers = itoa::Buffer::new();
        out.push_str("revalidate");
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            out.push_str(numbers.format(status));
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(numbers.format(ttl));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            out.push_str("; detail=");
            out.push_str(detail);
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_to(&mut out);
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_value_is_handed_out_only_for_the_same_status() {
        let hit = CacheStatus::hit(Some(5));
        assert_eq!(hit.to_header_value(), "revalidate; hit; ttl=5");
        assert_eq!(hit.to_header_value(), "revalidate; hit; ttl=5");
        assert_eq!(
            CacheStatus::hit(Some(4)).to_header_value(),
            "revalidate; hit; ttl=4"
        );
        let stale = CacheStatus::hit(Some(4)).detail("max-stale");
        assert_eq!(
            stale.to_header_value(),
            "revalidate; hit; ttl=4; detail=max-stale"
        );
        assert_eq!(
            CacheStatus::forward(ForwardReason::UriMiss)
                .stored()
                .to_header_value(),
            "revalidate; fwd=uri-miss; stored"
        );
        assert_eq!(hit.to_header_value(), "revalidate; hit; ttl=5");
    }

    /// A hit and a stored miss, as written in the header.
    #[test]
    fn a_hit_and_a_stored_miss_read_as_rfc_9211() {
        let status = CacheStatus::hit(Some(42));
        assert_eq!(status.to_string(), "revalidate; hit; ttl=42");
        let miss = CacheStatus::forward(ForwardReason::UriMiss).stored();
        assert_eq!(miss.to_string(), "revalidate; fwd=uri-miss; stored");
    }

    #[test]
    fn every_reason_is_a_distinct_rfc_9211_token() {
        let tokens: Vec<&str> = ForwardReason::ALL.iter().map(|r| r.as_str()).collect();
        for token in &tokens {
            assert!(
                [
                    "bypass",
                    "method",
                    "uri-miss",
                    "vary-miss",
                    "miss",
                    "request",
                    "stale",
                    "partial"
                ]
                .contains(token),
                "{token} is not an RFC 9211 fwd value"
            );
        }
        let mut unique = tokens.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), tokens.len());
    }
}
