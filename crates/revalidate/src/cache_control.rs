//! The `Cache-Control` field (RFC 9111 §5.2, RFC 5861, RFC 8246): parsed from requests
//! and responses, and built for per-route policies.
//!
//! Written by hand because `headers::CacheControl` is case-sensitive, lacks
//! `stale-while-revalidate`/`stale-if-error`, drops `no-cache="Set-Cookie"` and rejects a
//! whole field for one bad `max-age`.
//!
//! ```
//! use std::time::Duration;
//! use revalidate::CacheControl;
//!
//! let cc = CacheControl::new()
//!     .public()
//!     .max_age(Duration::from_secs(60))
//!     .stale_while_revalidate(Duration::from_secs(30));
//! assert_eq!(cc.to_string(), "public, max-age=60, stale-while-revalidate=30");
//!
//! let parsed = CacheControl::parse_str("Max-Age=60, NO-CACHE=\"Set-Cookie\", foo=bar");
//! assert_eq!(parsed.max_age, Some(60));
//! assert!(parsed.no_cache);
//! assert_eq!(parsed.no_cache_fields, vec!["set-cookie".to_string()]);
//! ```

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
const DELTA_SECONDS_MAX: u32 = 1 << 31;

/// Cache directives of a request or a response. Durations are whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `public` (response).
    pub public: bool,
    /// `private` (response); without field names it applies to the whole response.
    pub private: bool,
    /// Field names of a qualified `private="…"` (lowercase).
    pub private_fields: Vec<String>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`; unqualified unless `no_cache_fields` is non-empty.
    pub no_cache: bool,
    /// Field names of a qualified `no-cache="…"` (lowercase).
    pub no_cache_fields: Vec<String>,
    /// `no-transform`.
    pub no_transform: bool,
    /// `max-age`, in seconds. An invalid value reads as 0 (stale), as RFC 9111 §4.2.1 encourages.
    pub max_age: Option<u32>,
    /// `s-maxage` (response), in seconds.
    pub s_maxage: Option<u32>,
    /// `must-revalidate` (response).
    pub must_revalidate: bool,
    /// `proxy-revalidate` (response).
    pub proxy_revalidate: bool,
    /// `must-understand` (response).
    pub must_understand: bool,
    /// `immutable` (response, RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate` (RFC 5861), in seconds.
    pub stale_while_revalidate: Option<u32>,
    /// `stale-if-error` (RFC 5861), in seconds.
    pub stale_if_error: Option<u32>,
    /// `max-stale` (request): `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<u32>>,
    /// `min-fresh` (request), in seconds.
    pub min_fresh: Option<u32>,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).map_or(DELTA_SECONDS_MAX, |s| s.min(DELTA_SECONDS_MAX))
}

impl CacheControl {
    /// No directives.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `public`.
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }
    /// Adds `private`.
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }
    /// Adds `no-store`.
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }
    /// Adds `no-cache`.
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }
    /// Adds `no-transform`.
    pub fn no_transform(mut self) -> Self {
        self.no_transform = true;
        self
    }
    /// Sets `max-age`.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(secs(age));
        self
    }
    /// Sets `s-maxage`.
    pub fn s_maxage(mut self, age: Duration) -> Self {
        self.s_maxage = Some(secs(age));
        self
    }
    /// Adds `must-revalidate`.
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }
    /// Adds `proxy-revalidate`.
    pub fn proxy_revalidate(mut self) -> Self {
        self.proxy_revalidate = true;
        self
    }
    /// Adds `immutable`.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }
    /// Sets `stale-while-revalidate`.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(secs(window));
        self
    }
    /// Sets `stale-if-error`.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(secs(window));
        self
    }

    /// Parses every `Cache-Control` line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_header_lines(headers, &http::header::CACHE_CONTROL)
    }

    /// Parses every line of the field `name` (e.g. `CDN-Cache-Control`, RFC 9213).
    pub fn from_header_lines(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(name) {
            cc.parse_line(line.as_bytes());
        }
        cc
    }

    /// Parses one field value; unknown directives are ignored (RFC 9111 §5.2.3).
    pub fn parse_str(value: &str) -> Self {
        let mut cc = Self::default();
        cc.parse_line(value.as_bytes());
        cc
    }

    /// Whether no directive at all was present.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn parse_line(&mut self, line: &[u8]) {
        let mut rest = line;
        while !rest.is_empty() {
            let (directive, after) = split_directive(rest);
            rest = after;
            let Some((name, value)) = directive else {
                continue;
            };
            self.apply(&name, value);
        }
    }

    fn apply(&mut self, name: &str, value: Option<String>) {
        // RFC 9111 §4.2.1: with duplicate directives the first occurrence is used.
        let delta = |value: &Option<String>| -> u32 { value.as_deref().map_or(0, parse_delta) };
        match name {
            "public" => self.public = true,
            "private" => {
                self.private = true;
                self.private_fields.extend(field_names(value.as_deref()));
            }
            "no-store" => self.no_store = true,
            "no-cache" => {
                self.no_cache = true;
                self.no_cache_fields.extend(field_names(value.as_deref()));
            }
            "no-transform" => self.no_transform = true,
            "max-age" if self.max_age.is_none() => self.max_age = Some(delta(&value)),
            "s-maxage" if self.s_maxage.is_none() => self.s_maxage = Some(delta(&value)),
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "immutable" => self.immutable = true,
            "stale-while-revalidate" if self.stale_while_revalidate.is_none() => {
                self.stale_while_revalidate = Some(delta(&value))
            }
            "stale-if-error" if self.stale_if_error.is_none() => {
                self.stale_if_error = Some(delta(&value))
            }
            "max-stale" if self.max_stale.is_none() => {
                self.max_stale = Some(value.as_deref().map(parse_delta))
            }
            "min-fresh" if self.min_fresh.is_none() => self.min_fresh = Some(delta(&value)),
            "only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }

    /// The directives as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("directives are ASCII")
    }
}

/// `delta-seconds = 1*DIGIT`; overflow clamps to 2^31, anything else is 0.
fn parse_delta(value: &str) -> u32 {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    value.parse::<u64>().map_or(DELTA_SECONDS_MAX, |v| {
        v.min(u64::from(DELTA_SECONDS_MAX)) as u32
    })
}

fn field_names(value: Option<&str>) -> impl Iterator<Item = String> + '_ {
    value
        .unwrap_or("")
        .split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
}

/// Splits one `directive [= value]` off a list, returning it lowercased with its
/// unquoted value, and the remainder after the next comma.
fn split_directive(input: &[u8]) -> (Option<(String, Option<String>)>, &[u8]) {
    let input = super::validators::trim_ows(input);
    let name_end = input
        .iter()
        .position(|&b| b == b',' || b == b'=' || b == b' ' || b == b'\t')
        .unwrap_or(input.len());
    let name = String::from_utf8_lossy(&input[..name_end]).to_ascii_lowercase();
    let mut rest = super::validators::trim_ows(&input[name_end..]);
    let mut value = None;
    if let Some(after_eq) = rest.strip_prefix(b"=") {
        let after_eq = super::validators::trim_ows(after_eq);
        if let Some(quoted) = after_eq.strip_prefix(b"\"") {
            let mut out = Vec::new();
            let mut i = 0;
            while i < quoted.len() && quoted[i] != b'"' {
                if quoted[i] == b'\\' && i + 1 < quoted.len() {
                    i += 1;
                }
                out.push(quoted[i]);
                i += 1;
            }
            value = Some(String::from_utf8_lossy(&out).into_owned());
            rest = quoted.get(i + 1..).unwrap_or(&[]);
        } else {
            let end = after_eq
                .iter()
                .position(|&b| b == b',')
                .unwrap_or(after_eq.len());
            value = Some(
                String::from_utf8_lossy(super::validators::trim_ows(&after_eq[..end])).into_owned(),
            );
            rest = &after_eq[end..];
        }
    }
    // Skip anything up to the next comma (malformed trailing text is dropped).
    let next = rest
        .iter()
        .position(|&b| b == b',')
        .map_or(&[][..], |i| &rest[i + 1..]);
    let directive = (!name.is_empty()).then_some((name, value));
    (directive, next)
}

impl fmt::Display for CacheControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let quoted = |name: &str, fields: &[String]| {
            if fields.is_empty() {
                name.to_string()
            } else {
                format!("{name}=\"{}\"", fields.join(", "))
            }
        };
        if self.public {
            parts.push("public".into());
        }
        if self.private {
            parts.push(quoted("private", &self.private_fields));
        }
        if self.no_store {
            parts.push("no-store".into());
        }
        if self.no_cache {
            parts.push(quoted("no-cache", &self.no_cache_fields));
        }
        if let Some(v) = self.max_age {
            parts.push(format!("max-age={v}"));
        }
        if let Some(v) = self.s_maxage {
            parts.push(format!("s-maxage={v}"));
        }
        if self.must_revalidate {
            parts.push("must-revalidate".into());
        }
        if self.proxy_revalidate {
            parts.push("proxy-revalidate".into());
        }
        if self.must_understand {
            parts.push("must-understand".into());
        }
        if self.no_transform {
            parts.push("no-transform".into());
        }
        if self.immutable {
            parts.push("immutable".into());
        }
        if let Some(v) = self.stale_while_revalidate {
            parts.push(format!("stale-while-revalidate={v}"));
        }
        if let Some(v) = self.stale_if_error {
            parts.push(format!("stale-if-error={v}"));
        }
        match self.max_stale {
            Some(Some(v)) => parts.push(format!("max-stale={v}")),
            Some(None) => parts.push("max-stale".into()),
            None => {}
        }
        if let Some(v) = self.min_fresh {
            parts.push(format!("min-fresh={v}"));
        }
        if self.only_if_cached {
            parts.push("only-if-cached".into());
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_case_insensitive() {
        let cc = CacheControl::parse_str("No-Store, MAX-AGE=60");
        assert!(cc.no_store);
        assert_eq!(cc.max_age, Some(60));
    }

    #[test]
    fn one_bad_directive_spoils_only_itself() {
        let cc = CacheControl::parse_str("max-age=abc, s-maxage=30, public");
        assert_eq!(cc.max_age, Some(0), "invalid max-age is treated as stale");
        assert_eq!(cc.s_maxage, Some(30));
        assert!(cc.public);
    }

    #[test]
    fn overflow_clamps_to_two_to_the_31() {
        let cc = CacheControl::parse_str("max-age=99999999999999999999");
        assert_eq!(cc.max_age, Some(2_147_483_648));
    }

    #[test]
    fn first_occurrence_wins() {
        assert_eq!(
            CacheControl::parse_str("max-age=5, max-age=60").max_age,
            Some(5)
        );
    }

    #[test]
    fn quoted_values_and_request_directives() {
        let cc = CacheControl::parse_str(
            "private=\"Set-Cookie, X-Y\", max-age=\"10\", max-stale, min-fresh=3, only-if-cached",
        );
        assert_eq!(cc.private_fields, vec!["set-cookie", "x-y"]);
        assert_eq!(cc.max_age, Some(10));
        assert_eq!(cc.max_stale, Some(None));
        assert_eq!(cc.min_fresh, Some(3));
        assert!(cc.only_if_cached);
    }

    #[test]
    fn lines_accumulate() {
        let mut headers = HeaderMap::new();
        headers.append("cache-control", "public".parse().unwrap());
        headers.append("cache-control", "max-age=9".parse().unwrap());
        let cc = CacheControl::from_headers(&headers);
        assert!(cc.public);
        assert_eq!(cc.max_age, Some(9));
    }

    #[test]
    fn formats_every_policy_directive() {
        let cc = CacheControl::new()
            .private()
            .no_cache()
            .max_age(Duration::from_secs(1))
            .s_maxage(Duration::from_secs(2))
            .must_revalidate()
            .proxy_revalidate()
            .immutable()
            .stale_while_revalidate(Duration::from_secs(3))
            .stale_if_error(Duration::from_secs(4));
        assert_eq!(
            cc.to_string(),
            "private, no-cache, max-age=1, s-maxage=2, must-revalidate, proxy-revalidate, \
             immutable, stale-while-revalidate=3, stale-if-error=4"
        );
        assert_eq!(CacheControl::parse_str(&cc.to_string()), cc);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut cc = CacheControl::default();
            cc.parse_line(&bytes);
        }
    }
}
