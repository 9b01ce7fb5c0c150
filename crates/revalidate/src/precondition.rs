//! Evaluation of conditional requests in the order of RFC 9110 §13.2.2.
//!
//! ```
//! use http::{HeaderMap, Method};
//! use revalidate::{EntityTag, Evaluation, Preconditions, Validators};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("if-none-match", "\"v1\"".parse().unwrap());
//! let pre = Preconditions::from_request(&Method::GET, &headers).unwrap();
//! let current = Validators::new().etag(EntityTag::strong("v1").unwrap());
//! assert_eq!(pre.evaluate(&Method::GET, Some(&current)), Evaluation::NotModified);
//! assert_eq!(pre.evaluate(&Method::PUT, Some(&current)), Evaluation::PreconditionFailed);
//! ```

use http::header::{
    HeaderName, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};
use http::{HeaderMap, Method};

use crate::validators::{EntityTag, EntityTagMatch, HttpDate, Validators, trim_ows};

/// What the server does after evaluating the preconditions of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// Perform the method. `honor_range` is false when a `Range` must be ignored
    /// because its `If-Range` failed (RFC 9110 §13.2.2 step 5).
    Proceed {
        /// Whether a `Range` header, if any, may be served as a 206.
        honor_range: bool,
    },
    /// Respond 304 Not Modified (GET and HEAD only).
    NotModified,
    /// Respond 412 Precondition Failed.
    PreconditionFailed,
}

/// A precondition field that is present but cannot be evaluated safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedPrecondition {
    /// The offending field, e.g. `if-match`.
    pub field: &'static str,
}

impl std::fmt::Display for MalformedPrecondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed {} field: expected `*` or a list of quoted entity tags",
            self.field
        )
    }
}

impl std::error::Error for MalformedPrecondition {}

/// The validator of an `If-Range` field (RFC 9110 §13.1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfRange {
    /// An entity tag; only a strong one can ever match.
    Tag(EntityTag),
    /// An HTTP-date, compared exactly with `Last-Modified`.
    Date(HttpDate),
    /// Neither: the condition is false.
    Invalid,
}

/// The conditional header fields of one request, parsed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`.
    pub if_match: Option<EntityTagMatch>,
    /// `If-Unmodified-Since`, if present with a valid date.
    pub if_unmodified_since: Option<HttpDate>,
    /// `If-None-Match`.
    pub if_none_match: Option<EntityTagMatch>,
    /// `If-Modified-Since`, if present with a valid date.
    pub if_modified_since: Option<HttpDate>,
    /// `If-Range`, only kept when the request also has a `Range`.
    pub if_range: Option<IfRange>,
}

/// True for the methods a 304 can answer (RFC 9110 §13.2.2 steps 3 and 4).
pub fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Which of the fields [`Preconditions::from_request`] reads a request carries,
/// from one pass over its names: a lookup hashes its name, and most requests carry
/// one precondition or none. A caller that already passes over the names (a cache
/// deciding what a request asks of it) can [`note`](Self::note) them itself and
/// hand the result to [`Preconditions::from_fields`].
///
/// ```
/// use http::HeaderMap;
/// use revalidate::ConditionalFields;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("if-none-match", "\"a\"".parse().unwrap());
/// let fields = ConditionalFields::of(&headers);
/// assert!(fields.if_none_match && fields.any_precondition() && !fields.range);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConditionalFields {
    /// `If-Match`.
    pub if_match: bool,
    /// `If-None-Match`.
    pub if_none_match: bool,
    /// `If-Modified-Since`.
    pub if_modified_since: bool,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: bool,
    /// `If-Range`.
    pub if_range: bool,
    /// `Range` (If-Range is evaluated only with it).
    pub range: bool,
}

impl ConditionalFields {
    /// The fields `headers` carries.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut fields = Self::default();
        for name in headers.keys() {
            fields.note(name.as_str());
        }
        fields
    }

    /// Records `name` (lowercase, as a `HeaderName` is) when it is one of these
    /// fields; returns whether it was.
    pub fn note(&mut self, name: &str) -> bool {
        // The length rules out all but one or two names.
        let flag = match (name.len(), name) {
            (8, "if-match") => &mut self.if_match,
            (13, "if-none-match") => &mut self.if_none_match,
            (17, "if-modified-since") => &mut self.if_modified_since,
            (19, "if-unmodified-since") => &mut self.if_unmodified_since,
            (8, "if-range") => &mut self.if_range,
            (5, "range") => &mut self.range,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Whether any precondition is present (`Range` alone is none).
    pub fn any_precondition(&self) -> bool {
        self.if_match
            || self.if_none_match
            || self.if_modified_since
            || self.if_unmodified_since
            || self.if_range
    }
}

impl Preconditions {
    /// Parses the conditional fields of a request.
    ///
    /// A malformed `If-Match` is an error for every method, and a malformed
    /// `If-None-Match` for methods other than GET and HEAD: guessing could perform a
    /// write the client meant to guard. On GET and HEAD a malformed `If-None-Match`
    /// is ignored, which can only cost a full response. Invalid dates are ignored, as
    /// RFC 9110 §13.1.3 and §13.1.4 require.
    pub fn from_request(
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Self, MalformedPrecondition> {
        Self::from_fields(method, headers, ConditionalFields::of(headers))
    }

    /// [`from_request`](Self::from_request) for a request whose conditional fields
    /// are already known: only those `present` names are looked up.
    pub fn from_fields(
        method: &Method,
        headers: &HeaderMap,
        present: ConditionalFields,
    ) -> Result<Self, MalformedPrecondition> {
        let if_match = if present.if_match {
            EntityTagMatch::from_headers(headers, &IF_MATCH)
                .map_err(|_| MalformedPrecondition { field: "if-match" })?
        } else {
            None
        };
        let listed = if present.if_none_match {
            EntityTagMatch::from_headers(headers, &IF_NONE_MATCH)
        } else {
            Ok(None)
        };
        let if_none_match = match listed {
            Ok(list) => list,
            Err(_) if is_get_or_head(method) => None,
            Err(_) => {
                return Err(MalformedPrecondition {
                    field: "if-none-match",
                });
            }
        };
        let if_range = if present.if_range && present.range && method == Method::GET {
            headers.get(IF_RANGE).map(|v| parse_if_range(v.as_bytes()))
        } else {
            None
        };
        let date = |present: bool, name: &HeaderName| {
            present
                .then(|| HttpDate::from_headers(headers, name))
                .flatten()
        };
        Ok(Self {
            if_match,
            if_unmodified_since: date(present.if_unmodified_since, &IF_UNMODIFIED_SINCE),
            if_none_match,
            if_modified_since: date(present.if_modified_since, &IF_MODIFIED_SINCE),
            if_range,
        })
    }

    /// Whether a request with the `present` fields gets a 304 because its one
    /// `If-None-Match` line is, byte for byte, the `current` tag: answered without
    /// parsing anything, as most conditional GETs (a client echoing the tag it
    /// was given) can be. `false` means "evaluate in full", not "modified".
    ///
    /// RFC 9110 §13.2.2: with no `If-Match` or `If-Unmodified-Since` to evaluate
    /// first, a matching `If-None-Match` decides (step 3; `If-Modified-Since` and
    /// `If-Range` are not evaluated), and identical tags match under the weak
    /// comparison it uses (a line that is exactly one entity-tag parses as that
    /// tag); on GET and HEAD the answer is 304.
    pub fn if_none_match_echoes(
        method: &Method,
        headers: &HeaderMap,
        present: ConditionalFields,
        current: &EntityTag,
    ) -> bool {
        // An `EntityTag` is exactly one entity-tag: the bytes decide.
        Self::echo_candidate(method, headers, present)
            .is_some_and(|line| line == current.as_bytes())
    }

    /// [`if_none_match_echoes`](Self::if_none_match_echoes), given the current
    /// `ETag` field's value as it is stored, unparsed: a value that is not exactly
    /// one entity-tag never echoes (it is evaluated in full).
    pub fn if_none_match_echoes_field(
        method: &Method,
        headers: &HeaderMap,
        present: ConditionalFields,
        current: &[u8],
    ) -> bool {
        Self::echo_candidate(method, headers, present)
            .is_some_and(|line| line == current && EntityTag::is_one_tag(current))
    }

    /// The request's one `If-None-Match` line, when it alone decides (no
    /// `If-Match` or `If-Unmodified-Since`, a GET or HEAD).
    fn echo_candidate<'h>(
        method: &Method,
        headers: &'h HeaderMap,
        present: ConditionalFields,
    ) -> Option<&'h [u8]> {
        if !present.if_none_match
            || present.if_match
            || present.if_unmodified_since
            || !is_get_or_head(method)
        {
            return None;
        }
        let mut lines = headers.get_all(IF_NONE_MATCH).iter();
        match (lines.next(), lines.next()) {
            (Some(line), None) => Some(line.as_bytes()),
            _ => None,
        }
    }

    /// Whether the request carries no precondition at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether [`evaluate`](Self::evaluate) may read the last-modified date: a
    /// caller holding only an unparsed date can skip parsing it otherwise.
    pub fn compares_dates(&self) -> bool {
        self.if_unmodified_since.is_some()
            || self.if_modified_since.is_some()
            || matches!(self.if_range, Some(IfRange::Date(_)))
    }

    /// Evaluates the preconditions against the current state of the target resource,
    /// `None` meaning it has no current representation.
    ///
    /// The caller is responsible for RFC 9110 §13.2.1: preconditions are only
    /// evaluated when the response without them would be 2xx or 412.
    pub fn evaluate(&self, method: &Method, current: Option<&Validators>) -> Evaluation {
        let etag = current.and_then(|v| v.etag.as_ref());
        let last_modified = current.and_then(|v| v.last_modified);

        // Step 1: If-Match, strong comparison (§13.1.1).
        if let Some(if_match) = &self.if_match {
            let passes = match (if_match, current, etag) {
                (EntityTagMatch::Any, Some(_), _) => true,
                (EntityTagMatch::Tags(_), _, Some(etag)) => if_match.matches_strong(etag),
                _ => false,
            };
            if !passes {
                return Evaluation::PreconditionFailed;
            }
        } else if let (Some(since), Some(modified)) = (self.if_unmodified_since, last_modified) {
            // Step 2: If-Unmodified-Since, only without If-Match (§13.1.4).
            if modified > since {
                return Evaluation::PreconditionFailed;
            }
        }

        // Step 3: If-None-Match, weak comparison (§13.1.2).
        if let Some(if_none_match) = &self.if_none_match {
            let fails = match (if_none_match, etag) {
                (EntityTagMatch::Any, _) => current.is_some(),
                (EntityTagMatch::Tags(_), Some(etag)) => if_none_match.matches_weak(etag),
                (EntityTagMatch::Tags(_), None) => false,
            };
            if fails {
                return if is_get_or_head(method) {
                    Evaluation::NotModified
                } else {
                    Evaluation::PreconditionFailed
                };
            }
        } else if is_get_or_head(method) {
            // Step 4: If-Modified-Since, only for GET/HEAD without If-None-Match (§13.1.3).
            if let (Some(since), Some(modified)) = (self.if_modified_since, last_modified)
                && modified <= since
            {
                return Evaluation::NotModified;
            }
        }

        // Step 5: If-Range (§13.1.5).
        let honor_range = match &self.if_range {
            None => true,
            Some(IfRange::Tag(tag)) => etag.is_some_and(|etag| tag.strong_eq(etag)),
            Some(IfRange::Date(date)) => last_modified == Some(*date),
            Some(IfRange::Invalid) => false,
        };
        Evaluation::Proceed { honor_range }
    }
}

fn parse_if_range(value: &[u8]) -> IfRange {
    let value = trim_ows(value);
    if let Some(tag) = EntityTag::parse(value) {
        IfRange::Tag(tag)
    } else if let Some(date) = HttpDate::parse(value) {
        IfRange::Date(date)
    } else {
        IfRange::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    fn eval(
        method: Method,
        pairs: &[(&'static str, &str)],
        current: Option<&Validators>,
    ) -> Evaluation {
        Preconditions::from_request(&method, &headers(pairs))
            .unwrap()
            .evaluate(&method, current)
    }

    #[test]
    fn an_echoed_tag_is_a_304_without_parsing_and_nothing_else_is() {
        let strong = current();
        let weak = Validators::new().etag(EntityTag::weak("v3").unwrap());
        // The request's fields; a case: the stored validators, the method, the
        // fields, and whether the shortcut answers 304.
        type Fields = &'static [(&'static str, &'static str)];
        type Case<'a> = (&'a Validators, Method, Fields, bool);
        let cases: [(Method, Fields, bool); 12] = [
            (Method::GET, &[("if-none-match", "\"v2\"")], true),
            // Step 3 answers before Range and If-Range are looked at.
            (
                Method::GET,
                &[
                    ("if-none-match", "\"v2\""),
                    ("range", "bytes=0-1"),
                    ("if-range", "\"v1\""),
                ],
                true,
            ),
            // `*` matches too, but only the full evaluation says so.
            (Method::GET, &[("if-none-match", "*")], false),
            (Method::HEAD, &[("if-none-match", "\"v2\"")], true),
            // If-Modified-Since is not evaluated when If-None-Match is present.
            (
                Method::GET,
                &[
                    ("if-none-match", "\"v2\""),
                    ("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ],
                true,
            ),
            (Method::GET, &[("if-none-match", "W/\"v2\"")], false),
            (Method::GET, &[("if-none-match", "\"v1\", \"v2\"")], false),
            (
                Method::GET,
                &[("if-none-match", "\"v2\""), ("if-none-match", "\"v1\"")],
                false,
            ),
            (
                Method::GET,
                &[("if-none-match", "\"v2\""), ("if-match", "\"v1\"")],
                false,
            ),
            (
                Method::GET,
                &[
                    ("if-none-match", "\"v2\""),
                    ("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ],
                false,
            ),
            (Method::PUT, &[("if-none-match", "\"v2\"")], false),
            (Method::GET, &[("if-none-match", "\"v1\"")], false),
        ];
        let against_strong = cases.into_iter().map(|(m, p, e)| (&strong, m, p, e));
        // A weak stored tag echoed as it was sent.
        let weak_echoed: Case = (&weak, Method::GET, &[("if-none-match", "W/\"v3\"")], true);
        for (current, method, pairs, expected) in against_strong.chain([weak_echoed]) {
            let headers = headers(pairs);
            let present = ConditionalFields::of(&headers);
            let tag = current.etag.as_ref().unwrap();
            let echoes = Preconditions::if_none_match_echoes(&method, &headers, present, tag);
            assert_eq!(echoes, expected, "{method} {pairs:?}");
            if echoes {
                // Never a 304 that the full evaluation would not give.
                assert_eq!(eval(method, pairs, Some(current)), Evaluation::NotModified);
            }
        }
        // A stored value that is not exactly one tag never echoes, even byte for
        // byte: it is evaluated in full.
        for stored in ["\"v2\", \"v3\"", " \"v2\"", "v2"] {
            let headers = headers(&[("if-none-match", stored)]);
            let present = ConditionalFields::of(&headers);
            let echoes = Preconditions::if_none_match_echoes_field(
                &Method::GET,
                &headers,
                present,
                stored.as_bytes(),
            );
            assert!(!echoes, "{stored}");
        }
    }

    fn current() -> Validators {
        Validators::new()
            .etag(EntityTag::strong("v2").unwrap())
            .last_modified(HttpDate::from_unix_secs(T0))
    }

    fn date(secs: u64) -> String {
        HttpDate::from_unix_secs(secs).to_string()
    }

    const PROCEED: Evaluation = Evaluation::Proceed { honor_range: true };
    use Evaluation::{NotModified, PreconditionFailed};

    #[test]
    fn if_match_uses_strong_comparison() {
        let c = current();
        assert_eq!(
            eval(Method::PUT, &[("if-match", "\"v2\"")], Some(&c)),
            PROCEED
        );
        assert_eq!(
            eval(Method::PUT, &[("if-match", "W/\"v2\"")], Some(&c)),
            PreconditionFailed
        );
        assert_eq!(
            eval(Method::PUT, &[("if-match", "\"v1\", \"v2\"")], Some(&c)),
            PROCEED
        );
        assert_eq!(
            eval(Method::PUT, &[("if-match", "\"v1\"")], Some(&c)),
            PreconditionFailed
        );
        let weak = Validators::new().etag(EntityTag::weak("v2").unwrap());
        assert_eq!(
            eval(Method::PUT, &[("if-match", "\"v2\"")], Some(&weak)),
            PreconditionFailed
        );
    }

    #[test]
    fn if_match_star_needs_a_current_representation() {
        assert_eq!(
            eval(Method::PUT, &[("if-match", "*")], Some(&current())),
            PROCEED
        );
        assert_eq!(
            eval(Method::PUT, &[("if-match", "*")], None),
            PreconditionFailed
        );
        // A representation without any validator still exists.
        assert_eq!(
            eval(Method::PUT, &[("if-match", "*")], Some(&Validators::new())),
            PROCEED
        );
        assert_eq!(
            eval(
                Method::PUT,
                &[("if-match", "\"x\"")],
                Some(&Validators::new())
            ),
            PreconditionFailed
        );
    }

    #[test]
    fn if_none_match_star_is_create_only() {
        assert_eq!(eval(Method::PUT, &[("if-none-match", "*")], None), PROCEED);
        assert_eq!(
            eval(Method::PUT, &[("if-none-match", "*")], Some(&current())),
            PreconditionFailed
        );
        assert_eq!(
            eval(Method::GET, &[("if-none-match", "*")], Some(&current())),
            NotModified
        );
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_304_only_for_get_head() {
        let c = current();
        for m in [Method::GET, Method::HEAD] {
            assert_eq!(
                eval(m.clone(), &[("if-none-match", "W/\"v2\"")], Some(&c)),
                NotModified
            );
            assert_eq!(eval(m, &[("if-none-match", "\"v1\"")], Some(&c)), PROCEED);
        }
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                eval(m, &[("if-none-match", "\"v2\"")], Some(&c)),
                PreconditionFailed
            );
        }
    }

    #[test]
    fn if_unmodified_since() {
        let c = current();
        assert_eq!(
            eval(Method::PUT, &[("if-unmodified-since", &date(T0))], Some(&c)),
            PROCEED
        );
        assert_eq!(
            eval(
                Method::PUT,
                &[("if-unmodified-since", &date(T0 - 1))],
                Some(&c)
            ),
            PreconditionFailed
        );
        // Ignored when invalid, and when If-Match is present.
        assert_eq!(
            eval(Method::PUT, &[("if-unmodified-since", "never")], Some(&c)),
            PROCEED
        );
        assert_eq!(
            eval(
                Method::PUT,
                &[
                    ("if-match", "\"v2\""),
                    ("if-unmodified-since", &date(T0 - 1))
                ],
                Some(&c)
            ),
            PROCEED
        );
    }

    #[test]
    fn if_modified_since() {
        let c = current();
        assert_eq!(
            eval(Method::GET, &[("if-modified-since", &date(T0))], Some(&c)),
            NotModified
        );
        assert_eq!(
            eval(
                Method::GET,
                &[("if-modified-since", &date(T0 + 5))],
                Some(&c)
            ),
            NotModified
        );
        assert_eq!(
            eval(
                Method::GET,
                &[("if-modified-since", &date(T0 - 1))],
                Some(&c)
            ),
            PROCEED
        );
        // All three date forms.
        assert_eq!(
            eval(
                Method::GET,
                &[("if-modified-since", "Tuesday, 14-Nov-23 22:13:20 GMT")],
                Some(&c)
            ),
            NotModified
        );
        assert_eq!(
            eval(
                Method::GET,
                &[("if-modified-since", "Tue Nov 14 22:13:20 2023")],
                Some(&c)
            ),
            NotModified
        );
    }

    #[test]
    fn if_modified_since_is_ignored_beside_if_none_match() {
        let c = current();
        let pairs = [
            ("if-none-match", "\"other\""),
            ("if-modified-since", &date(T0 + 5)),
        ];
        assert_eq!(eval(Method::GET, &pairs, Some(&c)), PROCEED);
    }

    #[test]
    fn if_modified_since_is_ignored_for_other_methods_and_bad_dates() {
        let c = current();
        assert_eq!(
            eval(
                Method::POST,
                &[("if-modified-since", &date(T0 + 5))],
                Some(&c)
            ),
            PROCEED
        );
        assert_eq!(
            eval(Method::GET, &[("if-modified-since", "garbage")], Some(&c)),
            PROCEED
        );
        let list = format!("{}, {}", date(T0 + 5), date(T0 + 5));
        assert_eq!(
            eval(Method::GET, &[("if-modified-since", &list)], Some(&c)),
            PROCEED
        );
    }

    #[test]
    fn order_if_match_failure_wins_over_if_none_match() {
        let c = current();
        let pairs = [("if-match", "\"v1\""), ("if-none-match", "\"v2\"")];
        assert_eq!(eval(Method::GET, &pairs, Some(&c)), PreconditionFailed);
    }

    #[test]
    fn order_if_unmodified_since_before_if_none_match() {
        let c = current();
        let old = date(T0 - 10);
        let pairs = [
            ("if-unmodified-since", old.as_str()),
            ("if-none-match", "\"v2\""),
        ];
        assert_eq!(eval(Method::GET, &pairs, Some(&c)), PreconditionFailed);
    }

    #[test]
    fn if_range() {
        let c = current();
        let with_range = |v: &str| {
            eval(
                Method::GET,
                &[("range", "bytes=0-1"), ("if-range", v)],
                Some(&c),
            )
        };
        assert_eq!(with_range("\"v2\""), PROCEED);
        assert_eq!(
            with_range("W/\"v2\""),
            Evaluation::Proceed { honor_range: false }
        );
        assert_eq!(
            with_range("\"v1\""),
            Evaluation::Proceed { honor_range: false }
        );
        assert_eq!(with_range(&date(T0)), PROCEED);
        assert_eq!(
            with_range(&date(T0 + 1)),
            Evaluation::Proceed { honor_range: false }
        );
        assert_eq!(
            with_range("nonsense"),
            Evaluation::Proceed { honor_range: false }
        );
        // Without Range, If-Range means nothing.
        assert_eq!(
            eval(Method::GET, &[("if-range", "\"v1\"")], Some(&c)),
            PROCEED
        );
    }

    #[test]
    fn malformed_if_match_is_an_error_but_malformed_if_none_match_on_get_is_ignored() {
        let bad = headers(&[("if-match", "v2")]);
        assert!(Preconditions::from_request(&Method::GET, &bad).is_err());
        let bad = headers(&[("if-none-match", "v2")]);
        assert!(
            Preconditions::from_request(&Method::GET, &bad)
                .unwrap()
                .is_empty()
        );
        assert!(Preconditions::from_request(&Method::PUT, &bad).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 6),
            method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::PUT), Just(Method::DELETE)],
            exists in any::<bool>(),
        ) {
            let names = ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "range"];
            let mut map = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                if let Ok(v) = http::HeaderValue::from_bytes(value) {
                    map.append(*name, v);
                }
            }
            if let Ok(pre) = Preconditions::from_request(&method, &map) {
                let c = current();
                let outcome = pre.evaluate(&method, exists.then_some(&c));
                if outcome == Evaluation::NotModified {
                    prop_assert!(is_get_or_head(&method));
                }
            }
        }

        #[test]
        fn without_date_preconditions_the_date_is_never_read(
            fields in proptest::collection::vec((0..6usize, 0..6usize), 0..6),
            method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::PUT)],
            modified in prop_oneof![Just(T0 - 60), Just(T0), Just(T0 + 60)],
        ) {
            // Well-formed values, so that every field takes part.
            let names = ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "range"];
            let values = ["\"v2\"", "W/\"v1\"", "*", &date(T0), &date(T0 - 3600), "bytes=0-1"];
            let mut map = HeaderMap::new();
            for (name, value) in fields {
                map.append(names[name], values[value].parse().unwrap());
            }
            let Ok(pre) = Preconditions::from_request(&method, &map) else { return Ok(()) };
            let dated = Validators::new()
                .etag(EntityTag::strong("v2").unwrap())
                .last_modified(HttpDate::from_unix_secs(modified));
            let undated = Validators::new().etag(EntityTag::strong("v2").unwrap());
            if !pre.compares_dates() {
                prop_assert_eq!(pre.evaluate(&method, Some(&dated)), pre.evaluate(&method, Some(&undated)));
            }
        }
    }
}
