//! Freshness lifetime and age (RFC 9111 §4.2), with stale windows (RFC 5861) and
//! the targeted `CDN-Cache-Control` field (RFC 9213).
//!
//! For example, a shared cache takes `s-maxage` over `max-age` (the test `a_shared_cache_prefers_s_maxage`).

use std::time::{Duration, SystemTime};

use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, StatusCode};
use revalidate::{CacheControl, HttpDate};

/// `CDN-Cache-Control` (RFC 9213).
pub(crate) static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// `Surrogate-Control` (W3C Edge Architecture), the older targeted field.
pub(crate) static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// The upper bound on a heuristic lifetime.
pub(crate) const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// The cache directives that govern a stored response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    /// The parsed directives: `CDN-Cache-Control`, else `Surrogate-Control`, else
    /// `Cache-Control`.
    pub cc: CacheControl,
    /// Whether they came from a targeted field (then `Expires` is ignored too).
    pub targeted: bool,
}

impl Directives {
    /// RFC 9213 §2.1: a cache that honours a targeted field ignores `Cache-Control`
    /// when the targeted field is present and valid. `CDN-Cache-Control` ranks
    /// before `Surrogate-Control`.
    pub(crate) fn of_response(headers: &HeaderMap) -> Self {
        let targeted = cdn_cache_control(headers)
            .filter(|cc| !cc.is_empty())
            .or_else(|| surrogate_control(headers).filter(|cc| !cc.is_empty()));
        match targeted {
            Some(cc) => Self { cc, targeted: true },
            None => Self {
                cc: CacheControl::from_headers(headers),
                targeted: false,
            },
        }
    }

    /// Whether the response must be validated before every reuse: unqualified
    /// `no-cache` (§5.2.2.4).
    pub(crate) fn always_revalidate(&self) -> bool {
        self.cc.no_cache && self.cc.no_cache_fields.is_empty()
    }

    /// Whether stale reuse is forbidden: `must-revalidate`, `proxy-revalidate`, or
    /// `s-maxage`, which implies `proxy-revalidate` for shared caches (§5.2.2.10).
    pub(crate) fn forbids_stale(&self) -> bool {
        self.cc.must_revalidate || self.cc.proxy_revalidate || self.cc.s_maxage.is_some()
    }

    /// The field names a qualified `private` or `no-cache` names: never stored.
    pub(crate) fn qualified_fields(&self) -> Vec<String> {
        let cc = &self.cc;
        cc.private_fields
            .iter()
            .chain(&cc.no_cache_fields)
            .cloned()
            .collect()
    }
}

/// Directives whose value must be a non-negative integer (delta-seconds).
const INTEGER_DIRECTIVES: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// `CDN-Cache-Control` read as the Structured Fields Dictionary RFC 9213 requires:
/// an invalid field is ignored whole (`None`), a directive of the wrong type (a
/// quoted `max-age`) is dropped.
fn cdn_cache_control(headers: &HeaderMap) -> Option<CacheControl> {
    let mut lines = Vec::new();
    for value in headers.get_all(&CDN_CACHE_CONTROL) {
        lines.push(value.to_str().ok()?);
    }
    if lines.is_empty() {
        return None;
    }
    let joined = lines.join(",");
    let mut accepted = Vec::new();
    for member in split_members(&joined)? {
        let member = member.trim_matches([' ', '\t']);
        let (item, _params) = member.split_once(';').unwrap_or((member, ""));
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if !is_sf_key(key) || value.is_some_and(|v| !is_sf_bare_item(v)) {
            return None;
        }
        let integer = value.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
        if INTEGER_DIRECTIVES.contains(&key) {
            if let Some(n) = integer {
                accepted.push(format!("{key}={n}"));
            }
        } else if value.is_none() || value == Some("?1") {
            accepted.push(key.to_string());
        }
    }
    Some(CacheControl::parse_str(&accepted.join(", ")))
}

/// `Surrogate-Control` directives not aimed at another device (`;target`).
fn surrogate_control(headers: &HeaderMap) -> Option<CacheControl> {
    let mut members = Vec::new();
    for value in headers.get_all(&SURROGATE_CONTROL) {
        let text = value.to_str().ok()?;
        members.extend(
            text.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty() && !m.contains(';')),
        );
    }
    (!members.is_empty()).then(|| CacheControl::parse_str(&members.join(", ")))
}

/// Splits a dictionary on commas outside quoted strings; `None` on an empty member
/// or an unterminated string.
fn split_members(text: &str) -> Option<Vec<&str>> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                members.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    members.push(&text[start..]);
    members
        .iter()
        .all(|m| !m.trim_matches([' ', '\t']).is_empty())
        .then_some(members)
}

/// RFC 8941 §3.1.2 key: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
fn is_sf_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        })
}

/// RFC 8941 bare items: integer, decimal, string, token, byte sequence, boolean.
fn is_sf_bare_item(value: &str) -> bool {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'"') => value.len() >= 2 && value.ends_with('"'),
        Some(b'?') => value == "?0" || value == "?1",
        Some(b':') => value.len() >= 2 && value.ends_with(':'),
        Some(b) if b.is_ascii_digit() || *b == b'-' => {
            let digits = value.trim_start_matches('-');
            let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
            !int.is_empty()
                && int.len() <= 15
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.len() <= 3
                && frac.bytes().all(|b| b.is_ascii_digit())
                && (frac.is_empty() || !digits.ends_with('.'))
        }
        Some(b) if b.is_ascii_alphabetic() || *b == b'*' => value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b)),
        _ => false,
    }
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn date_of(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    HttpDate::from_headers(headers, name).map(HttpDate::to_system_time)
}

/// Whether the response states its own freshness: `s-maxage`, `max-age` or `Expires`.
pub(crate) fn has_explicit_lifetime(directives: &Directives, headers: &HeaderMap) -> bool {
    directives.cc.s_maxage.is_some()
        || directives.cc.max_age.is_some()
        || headers.contains_key(EXPIRES)
}

/// The freshness lifetime (§4.2.1): `s-maxage`, then `max-age`, then `Expires` −
/// `Date`, then a heuristic (§4.2.2) of 10% of the time since `Last-Modified`, only
/// for heuristically cacheable statuses or `public`. `None`: no lifetime at all.
pub(crate) fn lifetime(
    directives: &Directives,
    headers: &HeaderMap,
    status: StatusCode,
) -> Option<Duration> {
    let cc = &directives.cc;
    if let Some(s) = cc.s_maxage {
        return Some(Duration::from_secs(s.into()));
    }
    if let Some(s) = cc.max_age {
        return Some(Duration::from_secs(s.into()));
    }
    if !directives.targeted && headers.contains_key(EXPIRES) {
        // §5.3: an invalid Expires (such as "0") means already expired.
        let Some(expires) = date_of(headers, &EXPIRES) else {
            return Some(Duration::ZERO);
        };
        let date = date_of(headers, &DATE)?;
        return Some(expires.duration_since(date).unwrap_or(Duration::ZERO));
    }
    if heuristically_cacheable(status) || cc.public {
        let last_modified = date_of(headers, &LAST_MODIFIED)?;
        let date = date_of(headers, &DATE)?;
        let since = date.duration_since(last_modified).ok()?;
        return Some((since / 10).min(HEURISTIC_MAX));
    }
    None
}

/// An `Age` field value in seconds (RFC 9111 §5.1): of a list, the first member;
/// anything but digits is invalid and ignored; a value too large to represent is
/// 2^31 (§1.2.2).
fn age_seconds(value: &str) -> Option<u64> {
    let first = value.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        first
            .parse::<u64>()
            .map_or(1 << 31, |secs| secs.min(1 << 31)),
    )
}

/// The corrected initial age of a response when it was received (§4.2.3).
pub(crate) fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let date = date_of(headers, &DATE).unwrap_or(response_time);
    let apparent_age = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(age_seconds)
        .map_or(Duration::ZERO, Duration::from_secs);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value.saturating_add(response_delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_cache_prefers_s_maxage() {
        use crate::freshness::{Directives, lifetime};
        use http::HeaderMap;
        use std::time::Duration;

        let mut headers = HeaderMap::new();
        headers.insert("cache-control", "max-age=60, s-maxage=300".parse().unwrap());
        let directives = Directives::of_response(&headers);
        // A shared cache prefers s-maxage.
        assert_eq!(
            lifetime(&directives, &headers, http::StatusCode::OK),
            Some(Duration::from_secs(300))
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    fn life(pairs: &[(&'static str, &str)], status: u16) -> Option<u64> {
        let h = headers(pairs);
        lifetime(
            &Directives::of_response(&h),
            &h,
            StatusCode::from_u16(status).unwrap(),
        )
        .map(|d| d.as_secs())
    }

    const DATE_T: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    #[test]
    fn precedence_s_maxage_max_age_expires() {
        assert_eq!(
            life(&[("cache-control", "max-age=60, s-maxage=5")], 200),
            Some(5)
        );
        assert_eq!(
            life(
                &[
                    ("cache-control", "max-age=60"),
                    ("expires", "Tue, 14 Nov 2023 23:13:20 GMT"),
                    ("date", DATE_T)
                ],
                200
            ),
            Some(60)
        );
        assert_eq!(
            life(
                &[
                    ("expires", "Tue, 14 Nov 2023 22:23:20 GMT"),
                    ("date", DATE_T)
                ],
                200
            ),
            Some(600)
        );
        assert_eq!(life(&[("expires", "0"), ("date", DATE_T)], 200), Some(0));
        assert_eq!(
            life(
                &[
                    ("expires", "Tue, 14 Nov 2023 22:03:20 GMT"),
                    ("date", DATE_T)
                ],
                200
            ),
            Some(0)
        );
    }

    #[test]
    fn heuristic_only_where_allowed() {
        let lm = "Tue, 14 Nov 2023 12:13:20 GMT"; // ten hours before DATE_T
        assert_eq!(
            life(&[("last-modified", lm), ("date", DATE_T)], 200),
            Some(3600)
        );
        assert_eq!(life(&[("last-modified", lm), ("date", DATE_T)], 201), None);
        assert_eq!(
            life(
                &[
                    ("last-modified", lm),
                    ("date", DATE_T),
                    ("cache-control", "public")
                ],
                201
            ),
            Some(3600)
        );
        assert_eq!(
            life(
                &[
                    ("last-modified", "Tue, 14 Nov 2000 12:13:20 GMT"),
                    ("date", DATE_T)
                ],
                200
            ),
            Some(86400)
        );
        assert_eq!(life(&[], 200), None);
    }

    #[test]
    fn cdn_cache_control_overrides_cache_control() {
        assert_eq!(
            life(
                &[
                    ("cache-control", "max-age=5"),
                    ("cdn-cache-control", "max-age=600")
                ],
                200
            ),
            Some(600)
        );
        let h = headers(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        assert!(!Directives::of_response(&h).cc.no_store);
    }

    #[test]
    fn invalid_cdn_cache_control_is_ignored_whole() {
        // Not a valid dictionary: Cache-Control's no-store governs.
        let h = headers(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=10000, &&&&&"),
        ]);
        assert!(Directives::of_response(&h).cc.no_store);
        // A quoted max-age is the wrong type: dropped, leaving nothing targeted.
        let h = headers(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=\"10000\""),
        ]);
        assert!(Directives::of_response(&h).cc.no_store);
        let h = headers(&[("cdn-cache-control", "max-age=60, must-revalidate")]);
        let d = Directives::of_response(&h);
        assert_eq!(d.cc.max_age, Some(60));
        assert!(d.cc.must_revalidate && d.targeted);
    }

    #[test]
    fn surrogate_control_ranks_after_cdn_cache_control() {
        assert_eq!(
            life(
                &[
                    ("cache-control", "no-store"),
                    ("surrogate-control", "max-age=300")
                ],
                200
            ),
            Some(300)
        );
        let h = headers(&[
            ("cache-control", "max-age=300"),
            ("surrogate-control", "no-store"),
        ]);
        assert!(Directives::of_response(&h).cc.no_store);
        // Directives aimed at another device are not ours.
        assert_eq!(
            life(
                &[
                    ("cache-control", "max-age=5"),
                    ("surrogate-control", "max-age=300;other")
                ],
                200
            ),
            Some(5)
        );
        assert_eq!(
            life(
                &[
                    ("cdn-cache-control", "max-age=7"),
                    ("surrogate-control", "max-age=300")
                ],
                200
            ),
            Some(7)
        );
    }

    #[test]
    fn s_maxage_implies_proxy_revalidate() {
        let h = headers(&[("cache-control", "s-maxage=5")]);
        assert!(Directives::of_response(&h).forbids_stale());
        let h = headers(&[("cache-control", "max-age=5")]);
        assert!(!Directives::of_response(&h).forbids_stale());
    }

    #[test]
    fn initial_age_follows_4_2_3() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = HttpDate::from_system_time(t - Duration::from_secs(10)).to_string();
        // Apparent age 10 s beats Age 3 + 1 s delay.
        let h = headers(&[("date", &date), ("age", "3")]);
        assert_eq!(
            initial_age(&h, t - Duration::from_secs(1), t),
            Duration::from_secs(10)
        );
        // Age 30 + 1 s delay beats apparent age.
        let h = headers(&[("date", &date), ("age", "30")]);
        assert_eq!(
            initial_age(&h, t - Duration::from_secs(1), t),
            Duration::from_secs(31)
        );
        // An Age too large to represent is 2^31 seconds, not a panic.
        let h = headers(&[("date", &date), ("age", "18446744073709551615")]);
        assert_eq!(initial_age(&h, t, t), Duration::from_secs(1 << 31));
        // Of a list, the first member counts (§5.1); a parameter makes it invalid.
        let h = headers(&[("date", &date), ("age", "7200, 0")]);
        assert_eq!(initial_age(&h, t, t), Duration::from_secs(7200));
        let h = headers(&[("date", &date), ("age", "7200;foo=bar")]);
        assert_eq!(initial_age(&h, t, t), Duration::from_secs(10));
        // A Date in the future gives no negative age.
        let future = HttpDate::from_system_time(t + Duration::from_secs(100)).to_string();
        assert_eq!(
            initial_age(&headers(&[("date", &future)]), t, t),
            Duration::ZERO
        );
    }
}
