//! The primary key (RFC 9111 §4.1): the host and the normalized target, plus the
//! route's key additions (headers, cookies, user scope).

use http::header::{COOKIE, HOST};
use http::{HeaderMap, HeaderValue};
use twox_hash::XxHash3_128;

use crate::routes::{KeyPart, RoutePolicy};

use super::head::RequestHead;

/// A primary key and, within it, the normalized target that URL and prefix purges
/// name: one string, built once per request.
pub(super) struct PrimaryKey {
    pub(super) key: String,
    pub(super) target: std::ops::Range<usize>,
}

impl PrimaryKey {
    pub(super) fn target(&self) -> &str {
        &self.key[self.target.clone()]
    }
}

/// The primary key (§4.1 plus route key additions): the host, then the normalized
/// target. `None` when the host is not a valid authority: such a request is never
/// cached, so a `Host: a.com/x` cannot write into the key space of `a.com`'s `/x/…`.
pub(super) fn primary_key(
    policy: &RoutePolicy,
    head: &RequestHead,
    target: String,
) -> Option<PrimaryKey> {
    let host = match head.uri.authority() {
        Some(authority) => authority.as_str(),
        None => match head.headers.get(HOST) {
            Some(value) => value.to_str().ok()?,
            None => "",
        },
    };
    // A plain `name[:port]` needs no parse; anything else must be an authority.
    if !is_plain_host(host.as_bytes()) && host.parse::<http::uri::Authority>().is_err() {
        return None;
    }
    let mut primary = target;
    primary.insert_str(0, host);
    primary[..host.len()].make_ascii_lowercase();
    let target = host.len()..primary.len();
    for name in &policy.key_headers {
        primary.push_str("\nh:");
        primary.push_str(name.as_str());
        primary.push('=');
        let values: Vec<&[u8]> = head
            .headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        primary.push_str(&String::from_utf8_lossy(&values.join(&b","[..])));
    }
    for cookie in &policy.key_cookies {
        primary.push_str("\nc:");
        primary.push_str(cookie);
        primary.push('=');
        if let Some(value) = cookie_value(&head.headers, cookie) {
            primary.push_str(&value);
        }
    }
    if let Some(header) = &policy.user_scope {
        // The credential itself stays out of the key (and out of memory dumps).
        let mut hasher = XxHash3_128::new();
        for value in head.headers.get_all(header) {
            hasher.write(value.as_bytes());
            hasher.write(b"\n");
        }
        primary.push_str(&format!("\nu:{:032x}", hasher.finish_128()));
    }
    if let Some(KeyPart(part)) = head.extensions.get::<KeyPart>() {
        primary.push_str("\nx:");
        primary.push_str(part);
    }
    Some(PrimaryKey {
        key: primary,
        target,
    })
}

/// `name` or `name:port` with a plain name (letters, digits, dots, hyphens) and a
/// numeric port: the common case, checked in one pass.
pub(super) fn is_plain_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().position(|&b| b == b':') {
        Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
        None => (host, None),
    };
    name.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|port| !port.is_empty() && port.iter().all(u8::is_ascii_digit))
}

pub(super) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::Carried;
    use http::Method;

    fn head(uri: &str, host: &str) -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, host.parse().unwrap());
        RequestHead {
            method: Method::GET,
            uri: uri.parse().unwrap(),
            version: http::Version::HTTP_11,
            carried: Carried::of(&headers),
            headers,
            extensions: http::Extensions::new(),
            route: crate::routes::RouteId::default(),
        }
    }

    #[test]
    fn hosts_that_are_not_authorities_are_never_keyed() {
        let policy = RoutePolicy::default();
        let key = |uri: &str, host: &str, target: &str| {
            primary_key(&policy, &head(uri, host), target.to_string())
        };
        assert!(key("/y", "a.test/x", "/y").is_none());
        assert!(key("/y", "a:b:c", "/y").is_none());
        assert!(key("/y", "a.test:", "/y").is_some());
        assert!(key("/y", "[::1]:8080", "/y").is_some());
        let primary = key("/x/y?q=A", "A.test:8080", "/x/y?q=A").unwrap();
        assert_eq!(primary.key, "a.test:8080/x/y?q=A");
        assert_eq!(primary.target(), "/x/y?q=A");
        // An absolute-form target's authority wins over Host.
        let primary = key("http://shop.test/y", "evil.test", "/y").unwrap();
        assert_eq!(primary.key, "shop.test/y");
        // Bytes beyond ASCII (obs-text, valid in a field value) make no authority.
        for host in [&b"caf\xc3\xa9.test"[..], b"a\xff.test"] {
            let mut head = head("/y", "x");
            head.headers
                .insert(HOST, HeaderValue::from_bytes(host).unwrap());
            assert!(primary_key(&policy, &head, "/y".into()).is_none());
        }
    }
}
