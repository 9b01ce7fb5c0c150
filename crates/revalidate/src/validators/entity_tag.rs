//! Entity tags and entity-tag lists (RFC 9110 §8.8.3, §13.1.1, §13.1.2).
//!
//! Written by hand rather than taken from the `headers` crate: its parser trips a
//! `debug_assert!` on input such as `"a b"`, exposes no opaque-tag getter and cannot
//! parse a list spread over several header lines. Everything here is total: any
//! byte string parses to a value or to `None`, never to a panic.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

/// An entity tag: an opaque validator, strong or weak (RFC 9110 §8.8.3).
///
/// ```
/// use revalidate::EntityTag;
///
/// let strong = EntityTag::strong("v7").unwrap();
/// let weak: EntityTag = "W/\"v7\"".parse().unwrap();
/// assert!(!strong.strong_eq(&weak));
/// assert!(strong.weak_eq(&weak));
/// assert_eq!(weak.to_string(), "W/\"v7\"");
/// ```
#[derive(Clone)]
pub struct EntityTag {
    /// The whole tag as sent (`W/"…"` or `"…"`), kept so that writing it into a
    /// response is a reference-count increment, not an allocation. Its weakness is
    /// read off its `W/` (a strong tag starts with its quote): a cache keeps a tag
    /// per stored response, and a flag beside the value would take 8 more bytes.
    value: HeaderValue,
}

impl PartialEq for EntityTag {
    fn eq(&self, other: &Self) -> bool {
        self.is_weak() == other.is_weak() && self.opaque() == other.opaque()
    }
}

impl Eq for EntityTag {}

impl std::hash::Hash for EntityTag {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.is_weak().hash(state);
        self.opaque().hash(state);
    }
}

/// The reason an entity tag could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEntityTag;

impl fmt::Display for InvalidEntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid entity-tag (RFC 9110 §8.8.3)")
    }
}

impl std::error::Error for InvalidEntityTag {}

/// `etagc = %x21 / %x23-7E / obs-text` (RFC 9110 §8.8.3).
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

impl EntityTag {
    /// A strong tag with the given opaque value (without quotes).
    pub fn strong(opaque: impl AsRef<[u8]>) -> Result<Self, InvalidEntityTag> {
        Self::new(false, opaque.as_ref())
    }

    /// A weak tag with the given opaque value (without quotes).
    pub fn weak(opaque: impl AsRef<[u8]>) -> Result<Self, InvalidEntityTag> {
        Self::new(true, opaque.as_ref())
    }

    fn new(weak: bool, opaque: &[u8]) -> Result<Self, InvalidEntityTag> {
        if !opaque.iter().all(|&b| is_etagc(b)) {
            return Err(InvalidEntityTag);
        }
        let mut buf = Vec::with_capacity(opaque.len() + 4);
        if weak {
            buf.extend_from_slice(b"W/");
        }
        buf.push(b'"');
        buf.extend_from_slice(opaque);
        buf.push(b'"');
        // Every etagc byte is a valid field-value byte, so this cannot fail.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
            .map_err(|_| InvalidEntityTag)?;
        Ok(Self { value })
    }

    /// The tag a field value holds when the value is exactly one `entity-tag`,
    /// sharing the value's bytes: reading a validator then costs a reference count,
    /// not an allocation (a cache reads the stored ETag for every conditional hit).
    fn of_whole_value(value: &HeaderValue) -> Option<Self> {
        Self::is_one_tag(value.as_bytes()).then(|| Self {
            value: value.clone(),
        })
    }

    /// Whether `bytes` are exactly one `entity-tag`, with no surrounding whitespace.
    pub fn is_one_tag(bytes: &[u8]) -> bool {
        matches!(
            bytes.strip_prefix(b"W/").unwrap_or(bytes),
            [b'"', inner @ .., b'"'] if inner.iter().all(|&b| is_etagc(b))
        )
    }

    /// Parses one `entity-tag`, with no surrounding whitespace.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (weak, rest) = match bytes {
            [b'W', b'/', rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        match rest {
            [b'"', inner @ .., b'"'] => Self::new(weak, inner).ok(),
            _ => None,
        }
    }

    /// Whether this is a weak validator.
    pub fn is_weak(&self) -> bool {
        self.value.as_bytes().starts_with(b"W/")
    }

    /// The opaque value between the quotes.
    pub fn opaque(&self) -> &[u8] {
        let bytes = self.value.as_bytes();
        let start = if self.is_weak() { 3 } else { 1 };
        &bytes[start..bytes.len() - 1]
    }

    /// This tag made weak, as a server does for a representation that is only
    /// semantically equivalent (RFC 9110 §8.8.1).
    pub fn into_weak(self) -> Self {
        if self.is_weak() {
            return self;
        }
        Self::new(true, self.opaque()).expect("the opaque tag is already valid")
    }

    /// Strong comparison: both strong and their opaque tags equal (RFC 9110 §8.8.3.2).
    pub fn strong_eq(&self, other: &Self) -> bool {
        !self.is_weak() && !other.is_weak() && self.opaque() == other.opaque()
    }

    /// Weak comparison: opaque tags equal, weakness ignored (RFC 9110 §8.8.3.2).
    pub fn weak_eq(&self, other: &Self) -> bool {
        self.opaque() == other.opaque()
    }

    /// The tag's bytes, e.g. `W/"abc"`: always exactly one entity-tag, without
    /// surrounding whitespace.
    pub fn as_bytes(&self) -> &[u8] {
        self.value.as_bytes()
    }

    /// The tag as a header value, e.g. `W/"abc"`.
    pub fn to_header_value(&self) -> HeaderValue {
        self.value.clone()
    }

    /// Reads the `ETag` field of a response, if present and valid.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(http::header::ETAG).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::from_value(first)
    }

    /// Reads the value of a response's one `ETag` field, if valid. A value that
    /// is exactly one tag is shared, not copied.
    pub fn from_value(value: &HeaderValue) -> Option<Self> {
        Self::of_whole_value(value).or_else(|| Self::parse(trim_ows(value.as_bytes())))
    }
}

impl fmt::Debug for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_weak() {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", String::from_utf8_lossy(self.opaque()))
    }
}

impl std::str::FromStr for EntityTag {
    type Err = InvalidEntityTag;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes()).ok_or(InvalidEntityTag)
    }
}

/// The value of an `If-Match` or `If-None-Match` field: `*` or a list of tags.
///
/// A list may span several header lines; empty list elements are skipped as
/// RFC 9110 §5.6.1 requires of recipients.
///
/// ```
/// use http::{HeaderMap, header::IF_NONE_MATCH};
/// use revalidate::{EntityTag, EntityTagMatch};
///
/// let mut headers = HeaderMap::new();
/// headers.append(IF_NONE_MATCH, "\"a\", W/\"b\"".parse().unwrap());
/// headers.append(IF_NONE_MATCH, "\"c\"".parse().unwrap());
/// let list = EntityTagMatch::from_headers(&headers, &IF_NONE_MATCH).unwrap().unwrap();
/// assert!(list.matches_weak(&EntityTag::strong("b").unwrap()));
/// assert!(!list.matches_strong(&EntityTag::strong("b").unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityTagMatch {
    /// `*`: any current representation.
    Any,
    /// One or more entity tags.
    Tags(Vec<EntityTag>),
}

impl EntityTagMatch {
    /// Parses every line of `name` in `headers`.
    ///
    /// Returns `Ok(None)` when the field is absent and `Err` when it is present but
    /// malformed (including `*` mixed with tags, and a list with no tags at all).
    pub fn from_headers(
        headers: &HeaderMap,
        name: &HeaderName,
    ) -> Result<Option<Self>, InvalidEntityTag> {
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            return Ok(None);
        }
        let mut tags = Vec::with_capacity(1);
        let mut any = false;
        for line in lines {
            // Most lines hold a single tag, which then shares the line's bytes.
            match EntityTag::of_whole_value(line) {
                Some(tag) => tags.push(tag),
                None => parse_list_into(line.as_bytes(), &mut tags, &mut any)?,
            }
        }
        match (any, tags.is_empty()) {
            (true, true) => Ok(Some(Self::Any)),
            (false, false) => Ok(Some(Self::Tags(tags))),
            _ => Err(InvalidEntityTag),
        }
    }

    /// True if any listed tag strongly matches `current` (`*` matches anything).
    pub fn matches_strong(&self, current: &EntityTag) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|t| t.strong_eq(current)),
        }
    }

    /// True if any listed tag weakly matches `current` (`*` matches anything).
    pub fn matches_weak(&self, current: &EntityTag) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|t| t.weak_eq(current)),
        }
    }
}

/// Parses `#entity-tag` or `*` from one field line.
fn parse_list_into(
    mut rest: &[u8],
    tags: &mut Vec<EntityTag>,
    any: &mut bool,
) -> Result<(), InvalidEntityTag> {
    loop {
        rest = trim_ows_start(rest);
        if rest.is_empty() {
            return Ok(());
        }
        if rest[0] == b',' {
            rest = &rest[1..];
            continue;
        }
        let (element, after) = if rest[0] == b'*' {
            *any = true;
            (None, &rest[1..])
        } else {
            let (tag, after) = split_entity_tag(rest).ok_or(InvalidEntityTag)?;
            (Some(tag), after)
        };
        tags.extend(element);
        let after = trim_ows_start(after);
        match after.first() {
            None => return Ok(()),
            Some(b',') => rest = &after[1..],
            Some(_) => return Err(InvalidEntityTag),
        }
    }
}

/// Splits the leading `entity-tag` off `input`.
fn split_entity_tag(input: &[u8]) -> Option<(EntityTag, &[u8])> {
    let (weak, body) = match input {
        [b'W', b'/', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let inner = body.strip_prefix(b"\"")?;
    let close = inner.iter().position(|&b| b == b'"')?;
    let tag = EntityTag::new(weak, &inner[..close]).ok()?;
    Some((tag, &inner[close + 1..]))
}

fn trim_ows_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let bytes = trim_ows_start(bytes);
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{IF_MATCH, IF_NONE_MATCH};
    use proptest::prelude::*;

    fn tag(s: &str) -> EntityTag {
        s.parse().unwrap()
    }

    fn list(lines: &[&[u8]]) -> Result<Option<EntityTagMatch>, InvalidEntityTag> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(IF_MATCH, HeaderValue::from_bytes(line).unwrap());
        }
        EntityTagMatch::from_headers(&headers, &IF_MATCH)
    }

    #[test]
    fn parses_strong_and_weak() {
        assert_eq!(tag("\"xyzzy\"").opaque(), b"xyzzy");
        assert!(!tag("\"xyzzy\"").is_weak());
        assert!(tag("W/\"xyzzy\"").is_weak());
        assert_eq!(tag("\"\"").opaque(), b"");
    }

    #[test]
    fn rejects_malformed_tags() {
        for bad in [
            "xyzzy", "\"xyzzy", "w/\"x\"", "W/x", "\"a b\"", "\"a\"b\"", " \"a\"",
        ] {
            assert!(
                bad.parse::<EntityTag>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    /// RFC 9110 §8.8.3.2, the comparison table.
    #[test]
    fn comparison_table() {
        let cases = [
            ("W/\"1\"", "W/\"1\"", false, true),
            ("W/\"1\"", "W/\"2\"", false, false),
            ("W/\"1\"", "\"1\"", false, true),
            ("\"1\"", "\"1\"", true, true),
        ];
        for (a, b, strong, weak) in cases {
            assert_eq!(tag(a).strong_eq(&tag(b)), strong, "{a} strong {b}");
            assert_eq!(tag(a).weak_eq(&tag(b)), weak, "{a} weak {b}");
        }
    }

    #[test]
    fn lists_span_lines_and_skip_empty_elements() {
        let parsed = list(&[b"\"a\" ,, W/\"b\"", b" , \"c\" "]).unwrap().unwrap();
        assert_eq!(
            parsed,
            EntityTagMatch::Tags(vec![tag("\"a\""), tag("W/\"b\""), tag("\"c\"")])
        );
        assert_eq!(list(&[b"*"]).unwrap(), Some(EntityTagMatch::Any));
        assert_eq!(list(&[]).unwrap(), None);
    }

    #[test]
    fn tags_with_commas_inside_quotes_stay_whole() {
        let parsed = list(&[b"\"a,b\", \"c\""]).unwrap().unwrap();
        assert_eq!(
            parsed,
            EntityTagMatch::Tags(vec![tag("\"a,b\""), tag("\"c\"")])
        );
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in [&b"*, \"a\""[..], b"\"a\" \"b\"", b"a", b",", b"\"a", b"**"] {
            assert!(list(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // `*` on one line and a tag on another is just as malformed.
        assert!(list(&[b"*", b"\"a\""]).is_err());
    }

    #[test]
    fn obs_text_is_kept() {
        let parsed = list(&[b"\"caf\xe9\""]).unwrap().unwrap();
        assert_eq!(
            parsed,
            EntityTagMatch::Tags(vec![EntityTag::strong(b"caf\xe9").unwrap()])
        );
    }

    #[test]
    fn header_value_round_trips() {
        for t in ["\"a\"", "W/\"b\"", "\"\""] {
            assert_eq!(tag(t).to_header_value(), t);
        }
    }

    proptest! {
        #[test]
        fn lists_never_panic(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4)) {
            let mut headers = HeaderMap::new();
            for line in &lines {
                if let Ok(v) = HeaderValue::from_bytes(line) {
                    headers.append(IF_NONE_MATCH, v);
                }
            }
            let _ = EntityTagMatch::from_headers(&headers, &IF_NONE_MATCH);
        }

        #[test]
        fn a_line_read_whole_reads_as_the_list_parser_reads_it(bytes in prop_oneof![
            "(W/)?\"[!#-~]{0,8}\"".prop_map(String::into_bytes),
            "[ W/\",a-c*]{0,10}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]) {
            // `of_whole_value` is a shortcut: it must agree with the general parser
            // wherever it accepts, and accept every single well-formed tag.
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let mut tags = Vec::new();
            let mut any = false;
            let listed = parse_list_into(&bytes, &mut tags, &mut any).map(|()| tags);
            match EntityTag::of_whole_value(&value) {
                Some(tag) => {
                    prop_assert_eq!(listed, Ok(vec![tag.clone()]));
                    prop_assert_eq!(tag.to_header_value(), value);
                }
                None => prop_assert!(EntityTag::parse(&bytes).is_none()),
            }
        }

        #[test]
        fn single_tags_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(t) = EntityTag::parse(&bytes) {
                // Whatever parses must print back to the same bytes.
                let printed = t.to_header_value();
                prop_assert_eq!(printed.as_bytes(), &bytes[..]);
            }
        }

        #[test]
        fn printed_tags_parse_back(weak in any::<bool>(), opaque in "[!#-~]{0,20}") {
            let t = if weak { EntityTag::weak(&opaque) } else { EntityTag::strong(&opaque) }.unwrap();
            let printed = t.to_header_value();
            prop_assert_eq!(EntityTag::parse(printed.as_bytes()), Some(t.clone()));
            let mut headers = HeaderMap::new();
            headers.append(IF_MATCH, printed);
            prop_assert_eq!(EntityTagMatch::from_headers(&headers, &IF_MATCH), Ok(Some(EntityTagMatch::Tags(vec![t]))));
        }
    }
}
