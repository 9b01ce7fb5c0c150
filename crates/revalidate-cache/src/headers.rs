//! Header handling shared by the cache and the proxy.

use std::sync::LazyLock;

use http::header::{AGE, CONNECTION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

use revalidate::ConditionalFields;

/// `Surrogate-Key`: space-separated tags (Fastly's convention).
pub(crate) static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated tags (Cloudflare's convention).
pub(crate) static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// The fixed hop-by-hop fields (RFC 9110 §7.6.1), with the obsolete `Keep-Alive`
/// and `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Which of the fields that steer the cache a request carries, found in one pass
/// over its names. `false` means certainly absent; `true`, that the field was
/// there when the pass was made (a later removal, of a field `Connection` names,
/// leaves it set: a lookup then finds nothing, which is never wrong).
///
/// Most requests carry none of them: one pass costs a length test per name, where
/// a lookup per field would hash every field's name (a few hundred instructions on
/// every cache hit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Carried {
    /// A hop-by-hop field (RFC 9110 §7.6.1).
    pub hop_by_hop: bool,
    /// `Cache-Control`.
    pub cache_control: bool,
    /// The conditional fields and `Range`, as [`Preconditions::from_fields`] takes them.
    ///
    /// [`Preconditions::from_fields`]: revalidate::Preconditions::from_fields
    pub conditional: ConditionalFields,
}

impl Carried {
    /// The fields `headers` carries.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut carried = Self::default();
        for name in headers.keys() {
            let name = name.as_str();
            if carried.conditional.note(name) {
                continue;
            }
            // Names are lowercase; their length rules out all but one or two.
            match (name.len(), name) {
                (2, "te")
                | (7, "trailer" | "upgrade")
                | (10, "connection" | "keep-alive")
                | (16, "proxy-connection")
                | (17, "transfer-encoding") => carried.hop_by_hop = true,
                (13, "cache-control") => carried.cache_control = true,
                _ => {}
            }
        }
        carried
    }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1), including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names saves seven removals, each
    // hashing its name.
    if Carried::of(headers).hop_by_hop {
        remove_hop_by_hop(headers);
    }
}

/// [`strip_hop_by_hop`] for a map already known to carry a hop-by-hop field (see
/// [`Carried`]): the removals without the pass over the names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The tags a response names in `Surrogate-Key` and `Cache-Tag`.
pub(crate) fn response_tags(headers: &HeaderMap) -> Vec<String> {
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

/// Removes what must never be stored or replayed: hop-by-hop fields, Set-Cookie and
/// the fields a qualified `private` or `no-cache` names (RFC 9111 §5.2.2.4,
/// §5.2.2.7). All but the hop-by-hop fields are returned: they still belong in the
/// response to the request that caused the fetch, and only there. So does the
/// upstream's `Age`, as it was sent: it stays in `headers` (the initial age is
/// computed from it) but is not stored (see [`StoredFields`]), so a copy is returned.
///
/// [`StoredFields`]: crate::stored_fields::StoredFields
pub(crate) fn split_for_storage(
    headers: &mut HeaderMap,
    qualified: &[String],
) -> Vec<(HeaderName, HeaderValue)> {
    strip_hop_by_hop(headers);
    let mut requester_only = Vec::new();
    let names = qualified
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .chain([SET_COOKIE]);
    for name in names {
        if let http::header::Entry::Occupied(entry) = headers.entry(&name) {
            let (name, values) = entry.remove_entry_mult();
            requester_only.extend(values.map(|value| (name.clone(), value)));
        }
    }
    requester_only.extend(headers.get(AGE).map(|age| (AGE, age.clone())));
    requester_only
}

/// Ages below this have a value made once (see [`age_value`]): an hour and more.
const PREPARED_AGES: u64 = 10_000;

/// `Age` values below [`PREPARED_AGES`], made from `'static` text.
static AGE_VALUES: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    static TEXT: LazyLock<String> =
        LazyLock::new(|| (0..PREPARED_AGES).map(|n| n.to_string()).collect());
    let text: &'static str = TEXT.as_str();
    let mut at = 0;
    (0..PREPARED_AGES)
        .map(|n| {
            let len = n.checked_ilog10().map_or(1, |log| log as usize + 1);
            let value = HeaderValue::from_static(&text[at..at + len]);
            at += len;
            value
        })
        .collect()
});

/// Makes the prepared `Age` values (about a millisecond of work) if they are not
/// made yet.
pub(crate) fn prepare_age_values() {
    LazyLock::force(&AGE_VALUES);
}

/// The `Age` value for `seconds`. Every answer from the cache carries one; below
/// [`PREPARED_AGES`] it is a copy of a value made once from `'static` text, which
/// costs neither an allocation nor a shared reference count.
pub(crate) fn age_value(seconds: u64) -> HeaderValue {
    match usize::try_from(seconds)
        .ok()
        .and_then(|i| AGE_VALUES.get(i))
    {
        Some(value) => value.clone(),
        None => HeaderValue::from(seconds),
    }
}

/// Removes the tag fields meant for this cache, not for clients.
pub(crate) fn strip_tags(headers: &mut HeaderMap) {
    headers.remove(&SURROGATE_KEY);
    headers.remove(&CACHE_TAG);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(names: &[&str]) -> Carried {
        let mut headers = HeaderMap::new();
        for name in names {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_static("x"));
        }
        Carried::of(&headers)
    }

    #[test]
    fn carried_fields_are_found_by_name() {
        for name in &HOP_BY_HOP {
            assert!(carried(&[name.as_str()]).hop_by_hop, "{name}");
        }
        for name in [
            "if-match",
            "if-none-match",
            "if-modified-since",
            "if-unmodified-since",
            "if-range",
        ] {
            let found = carried(&["host", name]).conditional;
            assert!(found.any_precondition() && !found.range, "{name}");
        }
        assert!(carried(&["Cache-Control"]).cache_control);
        let range = carried(&["range"]).conditional;
        assert!(range.range && !range.any_precondition());
        let all = carried(&["range", "te", "cache-control", "if-match"]);
        assert!(all.hop_by_hop && all.cache_control);
        assert!(all.conditional.range && all.conditional.if_match);
        // Near misses: same length or a shared prefix.
        let none = carried(&[
            "host",
            "rang",
            "ranges",
            "if-matches",
            "accept-ranges",
            "cache-controls",
            "keep-alive2",
            "x-if-none-match",
            "content-type",
            "authorization",
        ]);
        assert_eq!(none, Carried::default());
    }

    #[test]
    fn prepared_ages_read_as_their_number() {
        for seconds in [0, 1, 9, 10, 99, 100, 3599, 9_999, 10_000, u64::MAX] {
            assert_eq!(age_value(seconds), seconds.to_string().as_str());
        }
    }

    #[test]
    fn tags_from_both_fields() {
        let mut h = HeaderMap::new();
        h.append("surrogate-key", "user:1  users".parse().unwrap());
        h.append("cache-tag", "a, b,,c".parse().unwrap());
        assert_eq!(response_tags(&h), vec!["user:1", "users", "a", "b", "c"]);
    }

    #[test]
    fn qualified_fields_and_cookies_are_split_off() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.append("x-user", "ada".parse().unwrap());
        h.append("etag", "\"a\"".parse().unwrap());
        h.append("age", "5".parse().unwrap());
        let split = split_for_storage(&mut h, &["X-User".to_string()]);
        assert_eq!(
            h.len(),
            2,
            "the ETag, and the Age the initial age is read from"
        );
        assert_eq!(split.len(), 4);
        assert!(split.iter().any(|(n, v)| n == "x-user" && v == "ada"));
        assert!(split.iter().any(|(n, v)| n == "age" && v == "5"));
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
        // Without Connection, the fixed hop-by-hop fields still go.
        let mut h = HeaderMap::new();
        h.append("proxy-connection", "keep-alive".parse().unwrap());
        h.append("te", "trailers".parse().unwrap());
        h.append("etag", "\"a\"".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
