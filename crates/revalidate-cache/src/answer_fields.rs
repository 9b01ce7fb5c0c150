//! The header fields of an answer made from a stored response: the one function
//! the hit path calls for them, [`answer_fields`].
//!
//! What it returns is simple to say: `Age` and `Cache-Status` first, then every
//! field the entry keeps, in order — or, for a 304, only those a 304 repeats
//! (RFC 9110 §15.4.5). `reference` in the tests says exactly that, with one plain
//! header map, and a property test holds [`answer_fields`] to it for arbitrary
//! stored responses, on every use (the first, and the ones after a copy is made).
//!
//! How it is made fast is hidden here: per-thread templates of each field *shape*
//! (see the crate's `stored_fields` module) and per-thread copies of the entries a
//! thread serves often (`local_fields`). Both exist because, over many keys, a hit
//! mostly waits for memory, and on one hot key the cores would otherwise take one
//! reference count from each other.

use http::{HeaderMap, HeaderValue};

use crate::entry::StoredResponse;
use crate::local_fields::with_local_fields;
use crate::stored_fields::set_answer_fields;

/// Which answer the fields are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerKind {
    /// The stored response itself (or a range of it).
    Whole,
    /// A `304 Not Modified` to the client's own conditional request.
    NotModified,
}

/// The fields of an answer of `kind` made from `entry`, with `age` and `status`
/// as its `Age` and `Cache-Status`.
pub(crate) fn answer_fields(
    entry: &StoredResponse,
    kind: AnswerKind,
    age: HeaderValue,
    status: HeaderValue,
) -> HeaderMap {
    let mut headers = with_local_fields(entry, |mut fields| match kind {
        AnswerKind::Whole => fields.into_headers(),
        AnswerKind::NotModified => fields.not_modified_headers(),
    });
    set_answer_fields(&mut headers, age, status);
    headers
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::header::{AGE, CONTENT_LENGTH};
    use http::{HeaderName, StatusCode};
    use proptest::prelude::*;
    use revalidate::not_modified_headers;

    use super::*;
    use crate::entry::Timing;
    use crate::key::Secondary;
    use crate::status::CACHE_STATUS;

    /// What [`answer_fields`] must return, made the plain way from the fields the
    /// response was received with: the cache keeps all but `Age`,
    /// `Content-Length` and `Cache-Status`.
    fn reference(
        received: &HeaderMap,
        kind: AnswerKind,
        age: HeaderValue,
        status: HeaderValue,
    ) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for (name, value) in received {
            if name != AGE && name != CONTENT_LENGTH && name != CACHE_STATUS {
                kept.append(name.clone(), value.clone());
            }
        }
        if kind == AnswerKind::NotModified {
            kept = not_modified_headers(&kept);
        }
        let mut answer = HeaderMap::new();
        answer.insert(AGE, age);
        answer.insert(CACHE_STATUS.clone(), status);
        for (name, value) in &kept {
            answer.append(name.clone(), value.clone());
        }
        answer
    }

    fn stored(received: &HeaderMap) -> StoredResponse {
        let timing = Timing::fresh_for(Duration::from_secs(60), SystemTime::now());
        StoredResponse::new(
            StatusCode::OK,
            received.clone(),
            Bytes::from_static(b"body"),
            timing,
            Secondary::default(),
            Vec::new(),
            Arc::from("/"),
        )
    }

    /// The fields in the order a client receives them.
    fn listed(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect()
    }

    /// Names a response may carry: ones a 304 repeats, ones it does not, ones the
    /// cache drops, and custom ones (each shape of them gets its own template).
    fn name() -> impl Strategy<Value = HeaderName> {
        prop::sample::select(vec![
            "etag",
            "last-modified",
            "cache-control",
            "date",
            "expires",
            "vary",
            "content-location",
            "content-type",
            "content-length",
            "age",
            "cache-status",
            "set-cookie",
            "x-request-id",
            "x-a",
            "x-b",
        ])
        .prop_map(HeaderName::from_static)
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        "[ -~]{0,12}".prop_map(|v| HeaderValue::from_str(&v).expect("visible ASCII"))
    }

    fn received() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((name(), value()), 0..12).prop_map(|fields| {
            let mut headers = HeaderMap::new();
            for (name, value) in fields {
                headers.append(name, value);
            }
            headers
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every use of every entry, interleaved so that entries take each other's
        /// per-thread slots, gives the reference's fields in the reference's order.
        #[test]
        fn the_fast_fields_are_the_reference_fields(
            responses in prop::collection::vec(received(), 1..4),
            uses in prop::collection::vec((0usize..4, prop::bool::ANY), 1..24),
        ) {
            let entries: Vec<(HeaderMap, StoredResponse)> =
                responses.iter().map(|r| (r.clone(), stored(r))).collect();
            for (step, (which, not_modified)) in uses.into_iter().enumerate() {
                let (received, entry) = &entries[which % entries.len()];
                let kind = if not_modified { AnswerKind::NotModified } else { AnswerKind::Whole };
                let age = HeaderValue::from(step);
                let status = HeaderValue::from_static("revalidate; hit");
                let fast = answer_fields(entry, kind, age.clone(), status.clone());
                prop_assert_eq!(listed(&fast), listed(&reference(received, kind, age, status)));
            }
        }
    }

    #[test]
    fn an_entry_used_three_times_gives_the_same_fields_each_time() {
        let mut received = HeaderMap::new();
        received.insert("etag", HeaderValue::from_static("\"v1\""));
        received.insert("content-type", HeaderValue::from_static("text/plain"));
        received.insert("content-length", HeaderValue::from_static("4"));
        let entry = stored(&received);
        let status = HeaderValue::from_static("revalidate; hit");
        for kind in [AnswerKind::Whole, AnswerKind::NotModified] {
            let expected = reference(&received, kind, HeaderValue::from(7), status.clone());
            for _ in 0..3 {
                let fast = answer_fields(&entry, kind, HeaderValue::from(7), status.clone());
                assert_eq!(listed(&fast), listed(&expected));
            }
        }
    }
}
