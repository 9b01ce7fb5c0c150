//! The header fields a stored response keeps, and the header maps of the answers
//! made from them.
//!
//! **Compact.** A header map's slot for a field takes about 100 bytes (links, hash,
//! name, value); [`StoredFields`] keeps a name and a value per field ([`FIELD_BYTES`]),
//! the values slices of one buffer. Over many keys a hit mostly waits for memory,
//! and each entry is smaller by as much.
//!
//! **Templates.** A hit needs a header map. Made field by field, each append
//! hashes its name and probes the map (about 180 instructions), and the map's
//! capacity is allocated: most of a hit's own work on an entry this thread has not
//! copied (see [`crate::replica`]). But the responses of one upstream mostly carry
//! the same names in the same order. So each thread keeps, per such list of names
//! (its *shape*, hashed once when the entry is stored), a template: a map of those
//! names with empty values. An answer's map is a clone of the template (a copy of
//! its table, no hashing) with the entry's values set in place, in order. A shape
//! found in a template's slot is compared name by name before its template is used,
//! so a hash collision only costs a new template.
//!
//! **Answer fields.** Every answer from the cache carries `Age` and `Cache-Status`.
//! The maps made here hold them first, as placeholders, so that an answer made from
//! a copy of one ([`set_answer_fields`]) overwrites them in place instead of growing
//! the copy (a clone holds exactly its entries) and hashing twice. The upstream's
//! own `Age` is read before this (it goes into the entry's initial age) and its
//! `Cache-Status` is replaced by this cache's, as it always was.
//!
//! **Content-Length** is not kept: every answer's framing comes from the body it
//! actually sends (whole, a range or none), so a stored length can never disagree
//! with it.
//!
//! **Copies.** Values parsed by hyper are slices of the connection's read buffer;
//! stored as they are, each would keep that whole buffer alive for as long as the
//! entry lives. The copies share one allocation (a value per allocation cost about
//! as much again as the bytes themselves). The body keeps its own: appended here, a
//! 5 KiB body moves up to the allocator's 6 KiB size class (measured: 742 instead of
//! 657 MiB for 100,000 such entries).
//!
//! ```
//! use http::HeaderMap;
//! use revalidate_cache::stored_fields::StoredFields;
//!
//! let mut received = HeaderMap::new();
//! received.insert("etag", "\"v1\"".parse().unwrap());
//! received.insert("content-length", "5".parse().unwrap());
//! received.insert("age", "30".parse().unwrap());
//! let fields = StoredFields::of(&received);
//! assert_eq!(fields.len(), 1, "the length and the age are not kept");
//! let answer = fields.to_map();
//! let names: Vec<&str> = answer.keys().map(|name| name.as_str()).collect();
//! assert_eq!(names, ["age", "cache-status", "etag"], "placeholders first");
//! assert_eq!(answer["etag"], "\"v1\"");
//! ```

use std::cell::RefCell;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::{Bytes, BytesMut};
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::status::CACHE_STATUS;

/// Bytes a stored field takes beyond its name's and value's bytes.
pub const FIELD_BYTES: usize = size_of::<StoredField>();

/// The fields a stored response keeps: all it received but `Age`,
/// `Content-Length` and `Cache-Status`, their values sharing one buffer. See the
/// [module documentation](self).
#[derive(Debug, Clone)]
pub struct StoredFields {
    /// In the order a header map iterates them: the values of one name together.
    fields: Box<[StoredField]>,
    /// A hash of the names, in order: which template slot they use.
    shape: u32,
}

#[derive(Debug, Clone)]
struct StoredField {
    name: HeaderName,
    /// A slice of the buffer every value of the entry shares.
    value: HeaderValue,
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
        let mut buffer = BytesMut::with_capacity(kept().map(|(_, value)| value.len()).sum());
        for (_, value) in kept() {
            buffer.extend_from_slice(value.as_bytes());
        }
        Self::over(
            buffer.freeze(),
            kept().map(|(name, value)| (name.clone(), value)),
        )
    }

    /// Fields whose values, given in `fields`, are copied from `buffer`, which holds
    /// them one after the other.
    fn over<'a>(
        buffer: Bytes,
        fields: impl Iterator<Item = (HeaderName, &'a HeaderValue)>,
    ) -> Self {
        let mut start = 0;
        let fields: Box<[StoredField]> = fields
            .filter_map(|(name, original)| {
                let end = start + original.len();
                let bytes = buffer.slice(start..end);
                start = end;
                // The bytes of a valid value, so this never fails; the check is
                // made once, when the entry is stored.
                let mut value = HeaderValue::from_maybe_shared(bytes).ok()?;
                value.set_sensitive(original.is_sensitive());
                Some(StoredField { name, value })
            })
            .collect();
        let mut hasher = DefaultHasher::new();
        for field in &fields {
            field.name.hash(&mut hasher);
        }
        Self {
            fields,
            // Only picks a slot: the names are compared before a template is used.
            shape: hasher.finish() as u32,
        }
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
        self.fields
            .iter()
            .map(|f| f.name.as_str().len() + f.value.len())
            .sum()
    }

    /// A header map of these fields, after `Age` and `Cache-Status` placeholders (see
    /// [`set_answer_fields`]); its values share the stored buffer.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = self.blank_map();
        // The blank map holds these names in this order (see `appended_blank_map`).
        for ((_, value), field) in map.iter_mut().skip(2).zip(&self.fields) {
            *value = field.value.clone();
        }
        map
    }

    /// The same map, its values in a buffer of its own (see [`crate::replica`]).
    pub fn to_detached_map(&self) -> HeaderMap {
        let mut buffer = BytesMut::with_capacity(self.byte_len());
        for field in &self.fields {
            buffer.extend_from_slice(field.value.as_bytes());
        }
        let fields = self.fields.iter().map(|f| (f.name.clone(), &f.value));
        Self::over(buffer.freeze(), fields).to_map()
    }

    /// The answer placeholders, then these names with empty values: a clone of this
    /// thread's template for them, made first if needed.
    fn blank_map(&self) -> HeaderMap {
        let index = self.shape as usize % TEMPLATE_SLOTS;
        let cloned = TEMPLATES.try_with(|templates| {
            // Unavailable only during the thread's teardown: a map of its own then.
            let mut templates = templates.try_borrow_mut().ok()?;
            let slot = &mut templates[index];
            let fits = |template: &Template| {
                template.shape == self.shape
                    && template.names.len() == self.fields.len()
                    && template
                        .names
                        .iter()
                        .zip(&self.fields)
                        .all(|(n, f)| *n == f.name)
            };
            if !slot.as_ref().is_some_and(fits) {
                *slot = Some(Template {
                    shape: self.shape,
                    names: self.fields.iter().map(|f| f.name.clone()).collect(),
                    map: self.appended_blank_map(),
                });
            }
            slot.as_ref().map(|template| template.map.clone())
        });
        cloned
            .ok()
            .flatten()
            .unwrap_or_else(|| self.appended_blank_map())
    }

    /// [`Self::blank_map`], field by field. A map iterates the values of one name
    /// together, in the order they were appended; the fields are in that order
    /// (they were taken from a map), so the map iterates them in their order.
    fn appended_blank_map(&self) -> HeaderMap {
        let mut map = answer_map(self.fields.len());
        for field in &self.fields {
            map.append(field.name.clone(), HeaderValue::from_static(""));
        }
        map
    }
}

/// Templates kept per thread: an upstream's responses rarely come in more than a
/// handful of shapes.
const TEMPLATE_SLOTS: usize = 16;

#[derive(Debug)]
struct Template {
    shape: u32,
    names: Box<[HeaderName]>,
    map: HeaderMap,
}

thread_local! {
    static TEMPLATES: RefCell<[Option<Template>; TEMPLATE_SLOTS]> =
        const { RefCell::new([const { None }; TEMPLATE_SLOTS]) };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::age_value;

    fn received() -> HeaderMap {
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
        upstream
    }

    #[test]
    fn stored_maps_hold_the_answer_fields_first_and_take_them_in_place() {
        let fields = StoredFields::of(&received());
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

    /// The map made field by field: what a template must reproduce.
    fn appended(fields: &StoredFields) -> HeaderMap {
        let mut map = answer_map(fields.len());
        for field in &fields.fields {
            map.append(field.name.clone(), field.value.clone());
        }
        map
    }

    fn fields(pairs: &[(&str, &str)]) -> StoredFields {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        StoredFields::of(&map)
    }

    #[test]
    fn entries_of_one_shape_share_a_template_and_keep_their_own_values() {
        let a = fields(&[("etag", "\"a\""), ("x-many", "1"), ("x-many", "2")]);
        let b = fields(&[("etag", "\"b\""), ("x-many", "3"), ("x-many", "4")]);
        assert_eq!(a.shape, b.shape, "same names, same order");
        for _ in 0..2 {
            assert_eq!(a.to_map(), appended(&a));
            assert_eq!(b.to_map(), appended(&b));
        }
        assert_eq!(
            b.to_map().get_all("x-many").iter().collect::<Vec<_>>(),
            ["3", "4"]
        );
    }

    #[test]
    fn shapes_that_share_a_slot_each_get_their_own_template() {
        // Different names, different counts, and a colliding shape forced below.
        let shapes = [
            fields(&[("etag", "\"a\""), ("content-type", "text/plain")]),
            fields(&[("content-type", "text/plain"), ("etag", "\"a\"")]),
            fields(&[("etag", "\"a\"")]),
            fields(&[
                ("etag", "\"a\""),
                ("content-type", "text/plain"),
                ("x-a", "1"),
            ]),
            fields(&[]),
        ];
        let mut forced = shapes.clone();
        for fields in &mut forced {
            fields.shape = 7;
        }
        for round in 0..3 {
            for fields in shapes.iter().chain(&forced) {
                let map = fields.to_map();
                assert_eq!(map, appended(fields), "round {round}");
                let names: Vec<_> = map.keys().skip(2).map(HeaderName::as_str).collect();
                let expected: Vec<_> = fields.fields.iter().map(|f| f.name.as_str()).collect();
                assert_eq!(names, expected, "in the stored order");
            }
        }
    }

    #[test]
    fn values_share_one_buffer() {
        let fields = fields(&[("etag", "\"a\""), ("content-type", "text/plain")]);
        let map = fields.to_map();
        let etag = map["etag"].as_bytes().as_ptr() as usize;
        let content_type = map["content-type"].as_bytes().as_ptr() as usize;
        assert_eq!(content_type, etag + 3, "one after the other");
        let detached = fields.to_detached_map();
        assert_ne!(detached["etag"].as_bytes().as_ptr() as usize, etag);
    }
}
