//! Per-thread copies of the header maps of the entries a thread serves often, and
//! of their 304 fields: one of the two devices behind `answer_fields`.
//!
//! A hit makes its header map from the stored fields: a clone of the thread's
//! template for their shape, each value compared with the thread's last one in
//! that place and copied where it differs (see `stored_fields`). An entry served
//! over and over (one hot URL) needs none of that more than once: a thread that
//! serves an entry twice in a row (in the slot the entry's id picks) keeps a copy
//! of its whole map, values of the thread's own, and clones that copy from then
//! on; the values' reference counts stay in that core's cache. The copy also
//! keeps the fields a 304 repeats ([`not_modified_headers`]), picked out once
//! rather than on every conditional hit.
//!
//! An entry never changes once made (freshening makes a new one), and every entry
//! has its own id, so a copy found by id is always the right one. A few dozen
//! copies per thread are kept: they are small (a few hundred bytes each, a little
//! more with the 304 fields; not charged to the store's budget), and replaced as
//! other entries take their slots, which may be after their entry has left the store (a copy is only ever found
//! through its entry, so it is never served for another). (No crate offers such a
//! per-thread replica of a shared value; this is the whole of it.)
//!
//! For example, the first and every later use of an entry see the same fields (the test `every_use_sees_the_same_fields`).

use std::borrow::Cow;
use std::cell::RefCell;

use http::HeaderMap;
use revalidate::not_modified_headers;

use crate::entry::StoredResponse;
use crate::stored_fields::answer_map;

/// Copies kept per thread.
const SLOTS: usize = 64;

#[derive(Debug)]
struct Slot {
    /// The id of the entry last served through this slot (0: none; ids start at 1).
    id: u64,
    /// Its copy, made when it was served a second time in a row.
    copy: Option<LocalCopy>,
}

#[derive(Debug)]
struct LocalCopy {
    headers: HeaderMap,
    /// The fields a 304 repeats, picked from `headers` at the first 304.
    not_modified: Option<HeaderMap>,
}

thread_local! {
    static COPIES: RefCell<[Slot; SLOTS]> = const {
        RefCell::new([const { Slot { id: 0, copy: None } }; SLOTS])
    };
}

/// An entry's fields, as [`with_local_fields`] hands them over.
#[derive(Debug)]
pub(crate) struct LocalFields<'a> {
    headers: Cow<'a, HeaderMap>,
    /// The copy's 304 fields, when `headers` is this thread's copy.
    not_modified: Option<&'a mut Option<HeaderMap>>,
}

impl LocalFields<'_> {
    /// The fields as a header map.
    #[cfg(test)]
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Whether they are this thread's copy.
    #[cfg(test)]
    pub(crate) fn is_copy(&self) -> bool {
        matches!(self.headers, Cow::Borrowed(_))
    }

    /// The fields, owned (a clone of the copy, which does not rehash).
    pub(crate) fn into_headers(self) -> HeaderMap {
        self.headers.into_owned()
    }

    /// The fields a 304 for this entry repeats ([`not_modified_headers`]), after
    /// answer placeholders ([`answer_map`]).
    pub(crate) fn not_modified_headers(&mut self) -> HeaderMap {
        let Self {
            headers,
            not_modified,
        } = self;
        match not_modified {
            Some(kept) => kept
                .get_or_insert_with(|| not_modified_answer(headers))
                .clone(),
            None => not_modified_answer(headers),
        }
    }
}

fn not_modified_answer(headers: &HeaderMap) -> HeaderMap {
    let picked = not_modified_headers(headers);
    let mut map = answer_map(picked.len());
    map.extend(picked);
    map
}

/// Calls `f` with `entry`'s fields: this thread's copy when it has one (borrowed),
/// else a map made from the stored fields (owned).
pub(crate) fn with_local_fields<R>(
    entry: &StoredResponse,
    f: impl FnOnce(LocalFields<'_>) -> R,
) -> R {
    let id = entry.id();
    // Ids are consecutive: their low bits spread entries over the slots.
    let index = (id % SLOTS as u64) as usize;
    let mut f = Some(f);
    let from_copy = COPIES.try_with(|copies| {
        // Unavailable only during the thread's teardown, and borrowed only if `f`
        // called this again: both fall back to a map of its own.
        let mut copies = copies.try_borrow_mut().ok()?;
        let slot = &mut copies[index];
        if slot.id != id {
            *slot = Slot { id, copy: None };
            return None;
        }
        let copy = slot.copy.get_or_insert_with(|| LocalCopy {
            headers: entry.fields().to_detached_map(),
            not_modified: None,
        });
        f.take().map(|f| {
            f(LocalFields {
                headers: Cow::Borrowed(&copy.headers),
                not_modified: Some(&mut copy.not_modified),
            })
        })
    });
    match (from_copy, f) {
        (Ok(Some(result)), _) => result,
        (_, Some(f)) => f(LocalFields {
            headers: Cow::Owned(entry.headers()),
            not_modified: None,
        }),
        (_, None) => unreachable!("`f` returned through the copy"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;

    #[test]
    fn every_use_sees_the_same_fields() {
        use crate::entry::{StoredResponse, Timing};
        use crate::key::Secondary;
        use crate::local_fields::with_local_fields;
        use bytes::Bytes;
        use http::{HeaderMap, StatusCode};
        use std::time::{Duration, SystemTime};

        let mut fields = HeaderMap::new();
        fields.insert("etag", "\"v1\"".parse().unwrap());
        let timing = Timing::fresh_for(Duration::from_secs(60), SystemTime::now());
        let entry = StoredResponse::new(
            StatusCode::OK,
            fields,
            Bytes::from("hello"),
            timing,
            Secondary::default(),
            Vec::new(),
            "/".into(),
        );
        // The first and every later use see the same fields.
        for _ in 0..3 {
            let etag = with_local_fields(&entry, |fields| fields.headers()["etag"].clone());
            assert_eq!(etag, "\"v1\"");
            let not_modified =
                with_local_fields(&entry, |mut fields| fields.not_modified_headers());
            assert_eq!(not_modified["etag"], "\"v1\"");
        }
    }
    use crate::entry::Timing;
    use crate::key::Secondary;

    fn entry(etag: &str) -> StoredResponse {
        let mut fields = HeaderMap::new();
        fields.insert(http::header::ETAG, etag.parse().unwrap());
        fields.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let now = SystemTime::now();
        let timing = Timing::fresh_for(Duration::from_secs(60), now);
        let path: Arc<str> = Arc::from("/");
        StoredResponse::new(
            StatusCode::OK,
            fields,
            Bytes::from("x"),
            timing,
            Secondary::default(),
            Vec::new(),
            path,
        )
    }

    /// Where a field's value lives.
    fn value_address(headers: &HeaderMap, name: http::HeaderName) -> usize {
        headers[name].as_bytes().as_ptr() as usize
    }

    #[test]
    fn an_entry_served_twice_in_a_row_is_served_from_a_copy_of_the_threads_own() {
        let entry = entry("\"a\"");
        let stored = value_address(&entry.headers(), http::header::ETAG);
        let (owned, first) = with_local_fields(&entry, |h| {
            (!h.is_copy(), value_address(h.headers(), http::header::ETAG))
        });
        assert!(owned, "the first use makes a map");
        assert_eq!(first, stored, "as any answer's map is made");
        for _ in 0..2 {
            let (borrowed, address, fields) = with_local_fields(&entry, |h| {
                let address = value_address(h.headers(), http::header::ETAG);
                (h.is_copy(), address, h.into_headers())
            });
            assert!(borrowed, "later uses borrow the thread's copy");
            assert_ne!(address, stored, "whose values are the copy's own");
            assert_eq!(
                fields,
                entry.headers(),
                "with the same fields, in the same order"
            );
        }
    }

    #[test]
    fn the_304_fields_are_the_same_from_a_copy() {
        let entry = entry("\"nm\"");
        let expected = not_modified_answer(&entry.headers());
        assert!(expected.contains_key(http::header::ETAG));
        assert!(!expected.contains_key(http::header::CONTENT_TYPE));
        let names: Vec<&str> = expected.keys().map(|n| n.as_str()).collect();
        assert_eq!(names[..2], ["age", "cache-status"], "placeholders first");
        let picked: Vec<(bool, HeaderMap)> = (0..3)
            .map(|_| with_local_fields(&entry, |mut h| (h.is_copy(), h.not_modified_headers())))
            .collect();
        assert!(!picked[0].0 && picked[1].0 && picked[2].0);
        for (_, fields) in &picked {
            assert_eq!(
                *fields, expected,
                "from the stored fields and from the copy"
            );
        }
    }

    #[test]
    fn entries_that_share_a_slot_each_get_their_own_fields() {
        // Other tests make entries too: make them until one takes the first's slot.
        let first = entry("\"first\"");
        let slot = |e: &StoredResponse| e.id() % SLOTS as u64;
        let last = std::iter::repeat_with(|| entry("\"last\""))
            .find(|e| slot(e) == slot(&first))
            .unwrap();
        let first = &first;
        for _ in 0..3 {
            for (entry, expected) in [(first, "\"first\""), (&last, "\"last\"")] {
                // Several times in a row: all but the first from a copy.
                for _ in 0..2 {
                    let etag =
                        with_local_fields(entry, |h| h.headers()[http::header::ETAG].clone());
                    assert_eq!(etag, expected);
                    let etag = with_local_fields(entry, |mut h| {
                        h.not_modified_headers()[http::header::ETAG].clone()
                    });
                    assert_eq!(etag, expected, "and their own 304 fields");
                }
            }
        }
    }
}
