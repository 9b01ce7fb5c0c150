//! Header handling shared by the cache and the proxy.

use http::header::{CONNECTION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName};

/// `Surrogate-Key`: space-separated tags (Fastly's convention).
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated tags (Cloudflare's convention).
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Removes hop-by-hop fields (RFC 9110 §7.6.1), including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

/// The tags a response names in `Surrogate-Key` and `Cache-Tag`.
pub fn response_tags(headers: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for value in headers
        .get_all(&SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(value.split_ascii_whitespace().map(str::to_string));
    }
    for value in headers
        .get_all(&CACHE_TAG)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    tags
}

/// Removes what must never be stored or replayed: hop-by-hop fields, Set-Cookie
/// and the fields a qualified `private` or `no-cache` names (RFC 9111 §5.2.2.4, §5.2.2.7).
pub fn strip_for_storage(headers: &mut HeaderMap, qualified: &[String]) {
    strip_hop_by_hop(headers);
    headers.remove(SET_COOKIE);
    for name in qualified {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// A copy whose values own their bytes. Values parsed by hyper are slices of the
/// connection's read buffer; stored as they are, each would keep that whole buffer
/// alive for as long as the entry lives.
pub fn compact(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut owned =
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        owned.set_sensitive(value.is_sensitive());
        out.append(name.clone(), owned);
    }
    out
}

/// Removes the tag fields meant for this cache, not for clients.
pub fn strip_tags(headers: &mut HeaderMap) {
    headers.remove(&SURROGATE_KEY);
    headers.remove(&CACHE_TAG);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_both_fields() {
        let mut h = HeaderMap::new();
        h.append("surrogate-key", "user:1  users".parse().unwrap());
        h.append("cache-tag", "a, b,,c".parse().unwrap());
        assert_eq!(response_tags(&h), vec!["user:1", "users", "a", "b", "c"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut h = HeaderMap::new();
        h.append("connection", "close, x-secret".parse().unwrap());
        h.append("x-secret", "1".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("etag", "\"a\"".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
