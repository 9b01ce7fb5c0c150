//! The primary key (RFC 9111 §4.1): the host and the normalized target, plus the
//! route's key additions (headers, cookies, user scope).

use http::header::{COOKIE, HOST};
use http::{HeaderMap, HeaderValue};
use twox_hash::XxHash3_128;

use crate::routes::{KeyPart, RoutePolicy};

use super::head::RequestHead;

/// A primary key: one string, built once per request, which holds the normalized
/// target that URL and prefix purges name (see `key::target_of`).
pub(super) struct PrimaryKey {
    pub(super) key: String,
}

/// The primary key (§4.1 plus route key additions): the host, then the normalized
/// target. `None` when the host is not a valid authority: such a request is never
/// cached, so a `Host: a.com/x` cannot write into the key space of `a.com`'s `/x/…`.
pub(super) fn primary_key(
    policy: &RoutePolicy,
    head: &RequestHead,
    target: String,
) -> Option<PrimaryKey> {
    // A host that is not visible ASCII is no authority (`None` either way);
    // `to_str` tells that for less than a UTF-8 check would.
    let host = match head.uri.authority() {
        Some(authority) => authority.as_str(),
        None => match head.headers.get(HOST) {
            Some(value) => value.to_str().ok()?,
            None => "",
        },
    };
    // A plain `name[:port]` (the common case) needs no parse; anything else must
    // be an authority.
    let already_lowercase = match plain_host(host.as_bytes()) {
        Some(Case::Lower) => true,
        Some(Case::Mixed) => false,
        None => {
            host.parse::<http::uri::Authority>().ok()?;
            false
        }
    };
    let mut primary = target;
    primary.insert_str(0, host);
    if !already_lowercase {
        primary[..host.len()].make_ascii_lowercase();
    }
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
    Some(PrimaryKey { key: primary })
}

/// Whether a plain host name holds uppercase letters (the key holds it in
/// lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Case {
    Lower,
    Mixed,
}

/// What a byte is in a plain host name: allowed (a letter, a digit, a dot or a
/// hyphen), and an uppercase letter.
const NAME_BYTE: u8 = 1;
const UPPER: u8 = 2;
static HOST_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' {
            table[b] = NAME_BYTE;
        }
        if byte.is_ascii_uppercase() {
            table[b] |= UPPER;
        }
        b += 1;
    }
    table
};

/// `Some` when `host` is `name` or `name:port` with a plain name (letters, digits,
/// dots, hyphens) and a numeric port: the common case, checked in one pass with a
/// table (a hit checks every request's host).
pub(super) fn plain_host(host: &[u8]) -> Option<Case> {
    let mut seen = 0;
    for (at, &byte) in host.iter().enumerate() {
        let class = HOST_BYTES[usize::from(byte)];
        if class == 0 {
            let port = &host[at + 1..];
            let numeric = byte == b':' && !port.is_empty() && port.iter().all(u8::is_ascii_digit);
            if !numeric {
                return None;
            }
            break;
        }
        seen |= class;
    }
    Some(if seen & UPPER == 0 {
        Case::Lower
    } else {
        Case::Mixed
    })
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
    fn a_plain_host_is_told_in_one_pass_with_its_case() {
        assert_eq!(plain_host(b"a.test"), Some(Case::Lower));
        assert_eq!(plain_host(b"a-1.test:8080"), Some(Case::Lower));
        assert_eq!(plain_host(b""), Some(Case::Lower));
        assert_eq!(plain_host(b"A.test:80"), Some(Case::Mixed));
        for other in [
            &b"a.test:"[..],
            b"a.test:8o",
            b"a:1:2",
            b"[::1]:80",
            b"a_b",
            b"a\xc3\xa9",
        ] {
            assert_eq!(
                plain_host(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
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
        assert_eq!(crate::key::target_of(&primary.key), "/x/y?q=A");
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
