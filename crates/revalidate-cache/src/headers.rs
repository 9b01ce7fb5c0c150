//! Header handling shared by the cache and the proxy.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{
    AGE, CONNECTION, CONTENT_LENGTH, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use revalidate::ConditionalFields;

use crate::status::CACHE_STATUS;

/// `Surrogate-Key`: space-separated tags (Fastly's convention).
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated tags (Cloudflare's convention).
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

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
pub struct Carried {
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
    pub fn of(headers: &HeaderMap) -> Self {
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
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
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

/// Removes what must never be stored or replayed: hop-by-hop fields, Set-Cookie and
/// the fields a qualified `private` or `no-cache` names (RFC 9111 §5.2.2.4,
/// §5.2.2.7). All but the hop-by-hop fields are returned: they still belong in the
/// response to the request that caused the fetch, and only there. So does the
/// upstream's `Age`, as it was sent: it stays in `headers` (the initial age is
/// computed from it) but is not stored (see [`StoredFields`]), so a copy is returned.
pub fn split_for_storage(
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

/// The fields a stored response keeps, compact: each field's name and where its
/// value lies in one buffer that holds all the values. [`StoredFields::to_map`]
/// makes the header map of an answer from them, with two answer fields first.
///
/// **Compact.** A header map's slot for a field takes about 100 bytes (links, hash,
/// name, value); here a field takes its name, an offset and a flag, about 40. Over
/// many keys, a hit mostly waits for memory: making the answer's map from a few
/// lines costs fewer cycles than copying a stored map's fifteen (measured in the
/// README), and each entry is smaller by as much. An entry served often by one
/// thread is answered from that thread's copy of the map instead (see
/// [`crate::replica`]).
///
/// **Answer fields.** Every answer from the cache carries `Age` and `Cache-Status`.
/// The maps made here hold them first, as placeholders, so that an answer made from
/// a copy of one (see [`set_answer_fields`]) overwrites them in place instead of
/// growing the copy (a clone holds exactly its entries) and hashing twice. The
/// upstream's own `Age` is read before this (it goes into the entry's initial age)
/// and its `Cache-Status` is replaced by this cache's, as it always was.
///
/// **Content-Length** is not kept: every answer's framing comes from the body it
/// actually sends (whole, a range or none), so a stored length can never disagree
/// with it.
///
/// **Copies.** Values parsed by hyper are slices of the connection's read buffer;
/// stored as they are, each would keep that whole buffer alive for as long as the
/// entry lives. The copies share one allocation (a value per allocation cost about
/// as much again as the bytes themselves). The body keeps its own: appended here, a
/// 5 KiB body moves up to the allocator's 6 KiB size class (measured: 742 instead of
/// 657 MiB for 100,000 such entries).
#[derive(Debug, Clone)]
pub struct StoredFields {
    fields: Box<[StoredField]>,
    /// Every value, one after the other.
    values: Bytes,
}

#[derive(Debug, Clone)]
struct StoredField {
    name: HeaderName,
    /// Where its value ends in `values` (it starts where the previous one ends).
    end: u32,
    sensitive: bool,
}

impl StoredFields {
    /// The fields of `headers` a stored response keeps: all but `Age`,
    /// `Content-Length` and `Cache-Status`.
    pub fn of(headers: &HeaderMap) -> Self {
        let kept = || {
            headers
                .iter()
                .filter(|(name, _)| ![AGE, CONTENT_LENGTH].contains(name) && *name != CACHE_STATUS)
        };
        let total = kept().map(|(_, value)| value.len()).sum();
        let mut values = bytes::BytesMut::with_capacity(total);
        let fields = kept()
            .map(|(name, value)| {
                values.extend_from_slice(value.as_bytes());
                StoredField {
                    name: name.clone(),
                    // Field values are far below 4 GiB: hyper refuses heads of more
                    // than a few hundred KiB.
                    end: u32::try_from(values.len()).unwrap_or(u32::MAX),
                    sensitive: value.is_sensitive(),
                }
            })
            .collect();
        let values = values.freeze();
        // The first slice of a buffer made this way allocates its reference count:
        // done now, so the entry's size does not change when it is first served.
        drop(values.clone());
        Self { fields, values }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Bytes of names and values.
    pub fn byte_len(&self) -> usize {
        self.values.len()
            + self
                .fields
                .iter()
                .map(|f| f.name.as_str().len())
                .sum::<usize>()
    }

    /// A header map of these fields, after `Age` and `Cache-Status` placeholders (see
    /// [`set_answer_fields`]); its values share the stored buffer.
    pub fn to_map(&self) -> HeaderMap {
        self.map_over(&self.values)
    }

    /// The same map, its values in a buffer of its own (see [`crate::replica`]).
    pub fn to_detached_map(&self) -> HeaderMap {
        self.map_over(&Bytes::copy_from_slice(&self.values))
    }

    fn map_over(&self, values: &Bytes) -> HeaderMap {
        let mut map = answer_map(self.fields.len());
        let mut start = 0;
        for field in &self.fields {
            let end = field.end as usize;
            let bytes = values.slice(start..end);
            start = end;
            // Valid when stored, so this never fails; the check costs a pass over
            // a few dozen bytes.
            if let Ok(mut value) = HeaderValue::from_maybe_shared(bytes) {
                value.set_sensitive(field.sensitive);
                map.append(field.name.clone(), value);
            }
        }
        map
    }
}

/// A map holding only the `Age` and `Cache-Status` placeholders (see
/// [`set_answer_fields`]), with room for `fields` more.
pub(crate) fn answer_map(fields: usize) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields + 2);
    map.append(AGE, HeaderValue::from_static("0"));
    map.append(CACHE_STATUS.clone(), HeaderValue::from_static("revalidate"));
    map
}

/// Sets `Age` and `Cache-Status` in an answer's map: in place when they are its
/// first two fields, as [`StoredFields::to_map`] and [`answer_map`] make them,
/// inserted otherwise.
pub fn set_answer_fields(headers: &mut HeaderMap, age: HeaderValue, status: HeaderValue) {
    let (mut age, mut status) = (Some(age), Some(status));
    for (name, value) in headers.iter_mut().take(2) {
        if name == AGE {
            if let Some(age) = age.take() {
                *value = age;
            }
        } else if name == CACHE_STATUS
            && let Some(status) = status.take()
        {
            *value = status;
        }
    }
    if let Some(age) = age {
        headers.insert(AGE, age);
    }
    if let Some(status) = status {
        headers.insert(CACHE_STATUS.clone(), status);
    }
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
pub fn age_value(seconds: u64) -> HeaderValue {
    match usize::try_from(seconds)
        .ok()
        .and_then(|i| AGE_VALUES.get(i))
    {
        Some(value) => value.clone(),
        None => HeaderValue::from(seconds),
    }
}

/// Removes the tag fields meant for this cache, not for clients.
pub fn strip_tags(headers: &mut HeaderMap) {
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
    fn stored_maps_hold_the_answer_fields_first_and_take_them_in_place() {
        let mut upstream = HeaderMap::new();
        upstream.insert("etag", "\"a\"".parse().unwrap());
        upstream.insert("age", "30".parse().unwrap());
        upstream.insert("cache-status", "origin; hit".parse().unwrap());
        upstream.insert("content-length", "5".parse().unwrap());
        upstream.append("x-many", "1".parse().unwrap());
        upstream.append("x-many", "2".parse().unwrap());
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        upstream.insert("x-secret", secret);
        let fields = StoredFields::of(&upstream);
        assert_eq!(fields.len(), 4, "etag, x-many twice, x-secret");
        let stored = fields.to_map();
        let names: Vec<_> = stored.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["age", "cache-status", "etag", "x-many", "x-secret"]);
        let many: Vec<_> = stored.get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"], "every value, in order");
        assert!(stored["x-secret"].is_sensitive());
        let detached = fields.to_detached_map();
        assert_eq!(detached, stored);
        assert!(detached["x-secret"].is_sensitive());

        let mut answer = stored.clone();
        set_answer_fields(
            &mut answer,
            age_value(7),
            HeaderValue::from_static("revalidate; hit"),
        );
        assert_eq!(answer["age"], "7");
        assert_eq!(answer["cache-status"], "revalidate; hit");
        assert_eq!(answer.len(), stored.len(), "overwritten, not added");

        // A map not made for storage gets them inserted.
        let mut plain = HeaderMap::new();
        plain.insert("etag", "\"a\"".parse().unwrap());
        plain.insert("cache-status", "origin; hit".parse().unwrap());
        set_answer_fields(
            &mut plain,
            age_value(1),
            HeaderValue::from_static("revalidate; hit"),
        );
        assert_eq!(plain["age"], "1");
        assert_eq!(plain.get_all("cache-status").iter().count(), 1);
        assert_eq!(plain["cache-status"], "revalidate; hit");
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
