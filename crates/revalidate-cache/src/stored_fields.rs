//! The header fields a stored response keeps, and the header maps of the answers
//! made from them.
//!
//! **Compact.** A header map's slot for a field takes about 100 bytes (links, hash,
//! name, value), a ready `HeaderValue` 40. [`StoredFields`] keeps one buffer: a
//! byte or two of length per value (three from 8 KiB), then the values; its list
//! of names is shared with every other entry whose response carried the same names
//! in the same order (its *shape*, interned when the entry is stored). Over many
//! keys a hit mostly waits for memory, and each entry is smaller by as much.
//!
//! **Values of the thread's own.** An answer never points into an entry: a value
//! is the one the thread's last answer of the same shape held in that place, when
//! the bytes are the same (most are, from one response of a shape to the next: a
//! Content-Type, a Cache-Control, a Date of the same second), or a copy. No hit
//! writes a reference count of an entry's fields, so no two cores take a cache
//! line from each other for one, and an entry's fields need none (a plain boxed
//! buffer, no shared header beside it).
//!
//! **Templates.** A hit needs a header map. Made field by field, each append
//! hashes its name and probes the map (about 180 instructions), and the map's
//! capacity is allocated: most of a hit's own work on an entry this thread has not
//! copied (see the crate's `local_fields` module). The responses of one upstream mostly come in a
//! handful of shapes, so each thread keeps, per shape it serves, a template: a map
//! of the shape's names with empty values. An answer's map is a clone of the
//! template (a copy of its table, no hashing) with the entry's values set in place,
//! in order. A template is found by its shape's id (unique, never reused), so a hit
//! reads none of the names, and a thread's templates hold names of their own: a
//! custom name's reference count is never written by two cores. A shape whose slot
//! holds another's template is answered field by field, and takes the slot over on
//! its second miss there in a row.
//!
//! **Answer fields.** Every answer from the cache carries `Age` and `Cache-Status`.
//! The maps made here hold them first, as placeholders, so that an answer made from
//! a copy of one ([`set_answer_fields`]) overwrites them in place instead of growing
//! the copy (a clone holds exactly its entries) and hashing twice. The upstream's
//! own `Age` is read before this (it goes into the entry's initial age) and its
//! `Cache-Status` is replaced by this cache's.
//!
//! **Content-Length** is not kept: every answer's framing comes from the body it
//! actually sends (whole, a range or none), so a stored length can never disagree
//! with it.
//!
//! **Copies.** Values parsed by hyper are slices of the connection's read buffer;
//! stored as they are, each would keep that whole buffer alive for as long as the
//! entry lives. The copies share one allocation (a value per allocation costs about
//! as much again as the bytes themselves). The body keeps its own: appended here, a
//! 5 KiB body would move up to the allocator's 6 KiB size class, a sixth more
//! memory per entry (`examples/entry_overhead.rs` measures it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::status::CACHE_STATUS;

/// The fields a stored response keeps: all it received but `Age`,
/// `Content-Length` and `Cache-Status`, their values in one buffer. See the
/// [module documentation](self).
#[derive(Debug, Clone)]
pub(crate) struct StoredFields {
    /// The names, in the order a header map iterates them: the values of one name
    /// together.
    shape: Arc<Shape>,
    /// A length per value (with whether it is sensitive), then the values, one
    /// after the other (see [`Spans`]).
    buffer: Box<[u8]>,
}

impl StoredFields {
    /// The fields of `headers` a stored response keeps: all but `Age`,
    /// `Content-Length` and `Cache-Status`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let kept = || {
            headers
                .iter()
                .filter(|(name, _)| ![AGE, CONTENT_LENGTH].contains(name) && *name != CACHE_STATUS)
        };
        let names = kept().map(|(name, _)| name.clone()).collect();
        let values: Vec<&HeaderValue> = kept().map(|(_, value)| value).collect();
        Self {
            shape: Shape::interned(names),
            buffer: packed(&values),
        }
    }

    /// The number of fields.
    pub(crate) fn len(&self) -> usize {
        self.shape.names.len()
    }

    /// Each field's name and value, in order.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        self.shape.names.iter().zip(self.values())
    }

    /// The bytes at `span`, read in place (no reference count is written).
    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        self.buffer.get(span.range()).unwrap_or_default()
    }

    /// Where the value of `name` lies, when exactly one field has that name.
    pub(crate) fn single_span(&self, name: &HeaderName) -> Option<Span> {
        let mut at = self
            .shape
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| *n == name);
        let (index, _) = at.next()?;
        if at.next().is_some() {
            return None;
        }
        self.spans().nth(index)
    }

    /// Bytes of names and values (and of the values' lengths). The names are
    /// counted for every entry that shares them: more than their shape's own
    /// allocation when it is shared, about as much when it is not.
    pub(crate) fn byte_len(&self) -> usize {
        let names: usize = self.shape.names.iter().map(|n| n.as_str().len()).sum();
        names + self.buffer.len()
    }

    /// A header map of these fields, after `Age` and `Cache-Status` placeholders (see
    /// [`set_answer_fields`]): values of the thread's own (see the
    /// [module documentation](self)).
    pub(crate) fn to_map(&self) -> HeaderMap {
        map_over(self, Reuse::Recent)
    }

    /// The same map, its values copies that share nothing with any other map (see
    /// the crate's `local_fields` module).
    pub(crate) fn to_detached_map(&self) -> HeaderMap {
        map_over(self, Reuse::Never)
    }

    /// The values, in order: copies.
    fn values(&self) -> impl Iterator<Item = HeaderValue> + '_ {
        self.spans().map(|span| self.value(span))
    }

    fn spans(&self) -> Spans<'_> {
        Spans::of(&self.buffer, self.len())
    }

    /// The value at `span`: a clone of the thread's `last` one when that holds the
    /// same bytes (a clone skips the check of every byte that making a value
    /// costs), else a copy. Every [`ADOPT_AFTER`]th miss in a row, the copy
    /// becomes the new `last`: a place whose value has changed for good (a Date
    /// whose second has passed, a Content-Type after a rare other one) is
    /// matched again within a few answers, and one that differs in every response
    /// (an ETag) is shared, which costs its copy a reference count, only that
    /// often.
    fn value_or_last(&self, span: Span, last: &mut Last) -> HeaderValue {
        if last.value.as_bytes() == self.bytes(span)
            && last.value.is_sensitive() == span.is_sensitive()
        {
            last.misses = 0;
            return last.value.clone();
        }
        let value = self.value(span);
        last.misses += 1;
        if last.misses >= ADOPT_AFTER {
            last.value = value.clone();
            last.misses = 0;
        }
        value
    }

    /// A copy of the value at `span`.
    pub(crate) fn value(&self, span: Span) -> HeaderValue {
        // The bytes of a valid value, checked again (no crate offers an unchecked
        // constructor without `unsafe`): a few instructions per byte. It never
        // fails; an empty value stands in if it did.
        let mut value =
            HeaderValue::from_bytes(self.bytes(span)).unwrap_or(HeaderValue::from_static(""));
        value.set_sensitive(span.is_sensitive());
        value
    }
}

/// `values` in one new buffer, each after its length: values parsed by hyper are
/// slices of the connection's read buffer, which they would keep alive, and a
/// buffer per value costs about as much again as the bytes themselves.
///
/// Each length is a LEB128 varint of `length << 1 | sensitive`: one byte for a
/// value under 64 bytes, two under 8 KiB. (Hand-written: the format is these
/// few lines, and a varint crate would add a dependency for them.)
fn packed(values: &[&HeaderValue]) -> Box<[u8]> {
    let total: usize = values.iter().map(|v| v.len() + 2).sum();
    let mut buffer = Vec::with_capacity(total);
    for value in values {
        let mut word = value.len() << 1 | usize::from(value.is_sensitive());
        while word >= 0x80 {
            buffer.push((word & 0x7f) as u8 | 0x80);
            word >>= 7;
        }
        buffer.push(word as u8);
    }
    for value in values {
        buffer.extend_from_slice(value.as_bytes());
    }
    buffer.into_boxed_slice()
}

/// Where a value of a packed buffer lies: 8 bytes, so that an entry can keep one
/// (a buffer is far below the 2 GiB a span can name: a response's head is bounded
/// by hyper's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    start: u32,
    /// Its end, and in the top bit whether it is sensitive.
    end: u32,
}

impl Span {
    const SENSITIVE: u32 = 1 << 31;

    fn new(start: usize, end: usize, sensitive: bool) -> Self {
        // A span past the 2 GiB these hold would read as out of the buffer.
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX) & !Self::SENSITIVE;
        let flag = if sensitive { Self::SENSITIVE } else { 0 };
        Self {
            start: at(start),
            end: at(end) | flag,
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.end & !Self::SENSITIVE) as usize
    }

    fn is_sensitive(self) -> bool {
        self.end & Self::SENSITIVE != 0
    }

    /// Whether it holds no byte: a `Default` span stands for none.
    pub(crate) fn is_empty(self) -> bool {
        self.range().is_empty()
    }
}

/// The spans of a buffer [`packed`] made: its lengths, read one by one, and the
/// position of the next value.
#[derive(Debug)]
struct Spans<'a> {
    lengths: &'a [u8],
    next: usize,
}

impl<'a> Spans<'a> {
    /// The spans of the `count` values of `buffer`.
    fn of(buffer: &'a [u8], count: usize) -> Self {
        // The lengths end with the `count`th byte whose high bit is clear.
        let prefix = match count {
            0 => 0,
            _ => buffer
                .iter()
                .enumerate()
                .filter(|(_, byte)| **byte & 0x80 == 0)
                .nth(count - 1)
                .map_or(buffer.len(), |(at, _)| at + 1),
        };
        Self {
            lengths: &buffer[..prefix],
            next: prefix,
        }
    }
}

impl Iterator for Spans<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        let mut word = 0usize;
        let mut shift = 0u32;
        loop {
            let (&byte, rest) = self.lengths.split_first()?;
            self.lengths = rest;
            word |= usize::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let start = self.next;
        self.next += word >> 1;
        Some(Span::new(start, self.next, word & 1 == 1))
    }
}

/// Where [`map_over`] may take a value from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    /// A value the thread's last answer of the same shape set in the same place,
    /// when its bytes are the same (see [`StoredFields::value_or_last`]).
    Recent,
    /// Copies only: a detached map must share nothing.
    Never,
}

/// The map of `fields`: a clone of this thread's template for their shape, its
/// values set in place.
fn map_over(fields: &StoredFields, reuse: Reuse) -> HeaderMap {
    let shape = &*fields.shape;
    let index = (shape.id % TEMPLATE_SLOTS as u64) as usize;
    let made = TEMPLATES.try_with(|templates| {
        // Unavailable only during the thread's teardown: a map of its own then.
        let mut templates = templates.try_borrow_mut().ok()?;
        let slot = &mut templates[index];
        if slot.template.as_ref().is_none_or(|t| t.shape != shape.id) {
            // Another shape's template: replaced on this shape's second miss here
            // in a row (as `local_fields` does), so two shapes that share the slot
            // by turns are answered field by field rather than by a new template
            // each time.
            if slot.template.is_some() && slot.missed != shape.id {
                slot.missed = shape.id;
                return None;
            }
            slot.template = Some(Template::of(shape));
        }
        let template = slot.template.as_mut()?;
        let mut map = template.map.clone();
        debug_assert_eq!(
            map.len(),
            shape.names.len() + 2,
            "a template has a slot per value"
        );
        // The blank map iterates the shape's names in their order (see `blank_map`).
        let places = map.iter_mut().skip(2).zip(template.last.iter_mut());
        for (((_, value), last), span) in places.zip(fields.spans()) {
            *value = match reuse {
                Reuse::Recent => fields.value_or_last(span, last),
                Reuse::Never => fields.value(span),
            };
        }
        Some(map)
    });
    made.ok()
        .flatten()
        .unwrap_or_else(|| shape.appended_map(fields.values()))
}

/// A list of field names, in order, shared by the entries whose responses carry
/// exactly those.
#[derive(Debug)]
struct Shape {
    /// Unique among every shape this process makes, never reused: what templates
    /// are found by.
    id: u64,
    names: Arc<[HeaderName]>,
}

/// The live shapes, by their names.
static SHAPES: LazyLock<Mutex<Shapes>> = LazyLock::new(Mutex::default);

#[derive(Debug, Default)]
struct Shapes {
    /// Keyed by the shape's own names (one allocation for both).
    by_names: HashMap<Arc<[HeaderName]>, Weak<Shape>>,
    /// When the map is this long, shapes no entry holds any more are dropped.
    prune_at: usize,
}

impl Shape {
    /// The shape of `names`: the live one, or a new one. Entries are made on
    /// misses, never on hits, so one lock for all is no contention.
    fn interned(names: Vec<HeaderName>) -> Arc<Shape> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let mut shapes = SHAPES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shape) = shapes
            .by_names
            .get(names.as_slice())
            .and_then(Weak::upgrade)
        {
            return shape;
        }
        let shape = Arc::new(Shape {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            names: names.into(),
        });
        shapes
            .by_names
            .insert(shape.names.clone(), Arc::downgrade(&shape));
        if shapes.by_names.len() >= shapes.prune_at {
            // Dead shapes are dropped when the map has doubled since the last time:
            // amortized O(1) per shape, and never more than twice the live ones
            // (or 64) in the map.
            shapes.by_names.retain(|_, shape| shape.strong_count() > 0);
            shapes.prune_at = (2 * shapes.by_names.len()).max(64);
        }
        shape
    }

    /// The map of `values` under these names, field by field: for a shape whose
    /// template slot another shape holds.
    fn appended_map(&self, values: impl Iterator<Item = HeaderValue>) -> HeaderMap {
        let mut map = answer_map(self.names.len());
        for (name, value) in self.names.iter().zip(values) {
            map.append(name.clone(), value);
        }
        map
    }

    /// The answer placeholders, then these names with empty values. A map iterates
    /// the values of one name together, in the order they were appended; the names
    /// are in that order (they were taken from a map), so the map iterates them in
    /// their order. Each name is made anew, so that a thread's template shares no
    /// reference count with another thread's.
    fn blank_map(&self) -> HeaderMap {
        let mut map = answer_map(self.names.len());
        for name in self.names.iter() {
            let own = HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or(name.clone());
            map.append(own, HeaderValue::from_static(""));
        }
        map
    }
}

/// Templates kept per thread. An upstream's responses mostly come in a few shapes,
/// and shape ids are consecutive, so shapes made one after the other take
/// different slots. A template takes about 100 B per field, so a thread's are
/// bounded by 64 times its largest shapes (about 100 KiB for shapes of 15 fields).
const TEMPLATE_SLOTS: usize = 64;

#[derive(Debug)]
struct TemplateSlot {
    template: Option<Template>,
    /// The shape last answered field by field here (0: none; ids start at 1).
    missed: u64,
}

#[derive(Debug)]
struct Template {
    /// Its shape's id.
    shape: u64,
    map: HeaderMap,
    /// The values this thread's last answers of the shape held, in order.
    last: Vec<Last>,
}

/// A value of the thread's last answers in one place of a template.
#[derive(Debug)]
struct Last {
    value: HeaderValue,
    /// Answers in a row whose value there was another.
    misses: u8,
}

/// Misses in a row after which a place takes the latest value as its own (see
/// [`StoredFields::value_or_last`]).
const ADOPT_AFTER: u8 = 4;

impl Template {
    fn of(shape: &Shape) -> Self {
        Self {
            shape: shape.id,
            map: shape.blank_map(),
            last: (0..shape.names.len())
                // The first value a place sees is taken at once.
                .map(|_| Last {
                    value: HeaderValue::from_static(""),
                    misses: ADOPT_AFTER - 1,
                })
                .collect(),
        }
    }
}

thread_local! {
    static TEMPLATES: RefCell<[TemplateSlot; TEMPLATE_SLOTS]> = const {
        RefCell::new([const { TemplateSlot { template: None, missed: 0 } }; TEMPLATE_SLOTS])
    };
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
/// first two fields, as [`StoredFields::to_map`] and `answer_map` make them,
/// inserted otherwise.
pub(crate) fn set_answer_fields(headers: &mut HeaderMap, age: HeaderValue, status: HeaderValue) {
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

    /// Content-Length and Age are not kept; the answer fields come first.
    #[test]
    fn length_and_age_are_not_kept_and_answer_fields_come_first() {
        use http::HeaderMap;

        let mut received = HeaderMap::new();
        received.insert("etag", "\"v1\"".parse().unwrap());
        received.insert("content-length", "5".parse().unwrap());
        received.insert("age", "30".parse().unwrap());
        let fields = StoredFields::of(&received);
        assert_eq!(fields.len(), 1, "the length and the age are not kept");
        let answer = fields.to_map();
        let names: Vec<&str> = answer.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["age", "cache-status", "etag"], "placeholders first");
        assert_eq!(answer["etag"], "\"v1\"");
    }

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
        for (name, value) in fields.shape.names.iter().zip(fields.values()) {
            map.append(name.clone(), value);
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
    fn values_of_every_length_come_back_as_stored() {
        // Lengths whose varints take one, two and three bytes, either side of each
        // boundary, and an empty value.
        let lengths = [0, 1, 63, 64, 8191, 8192, 70_000];
        let mut map = HeaderMap::new();
        for (i, len) in lengths.iter().enumerate() {
            let name = HeaderName::from_bytes(format!("x-len-{i}").as_bytes()).unwrap();
            let value = "v".repeat(*len);
            map.append(name, HeaderValue::from_str(&value).unwrap());
        }
        let fields = StoredFields::of(&map);
        assert_eq!(fields.len(), lengths.len());
        for (i, (name, value)) in fields.iter().enumerate() {
            assert_eq!(name.as_str(), format!("x-len-{i}"));
            assert_eq!(value.len(), lengths[i], "{name}");
            assert!(value.as_bytes().iter().all(|b| *b == b'v'));
        }
        assert_eq!(fields.to_map().len(), lengths.len() + 2);
        let named = |i: usize| HeaderName::from_bytes(format!("x-len-{i}").as_bytes()).unwrap();
        let span = fields.single_span(&named(5)).unwrap();
        assert_eq!(fields.bytes(span).len(), 8192);
        assert!(
            fields
                .single_span(&HeaderName::from_static("x-none"))
                .is_none()
        );
    }

    #[test]
    fn an_answer_reuses_the_last_answers_equal_values_and_a_detached_map_never() {
        let shape = |etag: &str| fields(&[("content-type", "text/plain"), ("etag", etag)]);
        let (first, second, third) = (shape("\"1\""), shape("\"2\""), shape("\"3\""));
        let at = |map: &HeaderMap, name: &str| map[name].as_bytes().as_ptr();
        let one = first.to_map();
        let two = second.to_map();
        let three = third.to_map();
        assert_eq!(two, appended(&second));
        assert_eq!(three, appended(&third));
        assert_eq!(
            at(&one, "content-type"),
            at(&two, "content-type"),
            "the same bytes: the last answer's value"
        );
        assert_eq!(at(&two, "content-type"), at(&three, "content-type"));
        assert_ne!(
            at(&two, "etag"),
            at(&three, "etag"),
            "a copy where it differs"
        );
        let detached = second.to_detached_map();
        assert_eq!(detached, two);
        assert_ne!(at(&detached, "content-type"), at(&two, "content-type"));
        // A value equal in bytes but not in sensitivity is not reused.
        let mut secret = HeaderMap::new();
        let mut value = HeaderValue::from_static("text/plain");
        value.set_sensitive(true);
        secret.insert("content-type", value);
        secret.insert("etag", "\"4\"".parse().unwrap());
        let fourth = StoredFields::of(&secret);
        assert!(fourth.to_map()["content-type"].is_sensitive());
        assert!(!first.to_map()["content-type"].is_sensitive());
    }

    #[test]
    fn a_place_takes_a_new_value_after_a_few_misses_in_a_row() {
        let shape = |ct: &str, etag: &str| fields(&[("content-type", ct), ("etag", etag)]);
        let at = |map: &HeaderMap| map["content-type"].as_bytes().as_ptr();
        // Kept alive: a shape no entry holds is made anew.
        let stored = [
            shape("application/json", "\"1\""),
            shape("application/problem+json", "\"2\""),
            shape("application/json", "\"3\""),
        ];
        let [json, _odd, again] = stored.each_ref().map(StoredFields::to_map);
        assert_eq!(at(&json), at(&again), "one odd answer does not displace it");
        let text = shape("text/plain", "\"4\"");
        let maps: Vec<HeaderMap> = (0..=ADOPT_AFTER).map(|_| text.to_map()).collect();
        assert_ne!(at(&maps[0]), at(&maps[1]), "copies while it misses");
        let n = usize::from(ADOPT_AFTER);
        assert_eq!(
            at(&maps[n - 1]),
            at(&maps[n]),
            "taken after {ADOPT_AFTER} misses in a row"
        );
        assert!(maps.iter().all(|map| map["content-type"] == "text/plain"));
    }

    #[test]
    fn entries_of_one_shape_share_it_and_keep_their_own_values() {
        let a = fields(&[("etag", "\"a\""), ("x-many", "1"), ("x-many", "2")]);
        let b = fields(&[("etag", "\"b\""), ("x-many", "3"), ("x-many", "4")]);
        assert!(Arc::ptr_eq(&a.shape, &b.shape), "same names, same order");
        for _ in 0..2 {
            assert_eq!(a.to_map(), appended(&a));
            assert_eq!(b.to_map(), appended(&b));
        }
        let many = b.to_map();
        assert_eq!(
            many.get_all("x-many").iter().collect::<Vec<_>>(),
            ["3", "4"]
        );
        let other = fields(&[("x-many", "1"), ("etag", "\"a\"")]);
        assert!(!Arc::ptr_eq(&a.shape, &other.shape), "another order");
    }

    #[test]
    fn a_shape_no_entry_holds_is_not_reused() {
        let names = [("x-shape-reuse-test", "1")];
        let first = fields(&names);
        let id = first.shape.id;
        assert_eq!(fields(&names).shape.id, id, "alive: shared");
        drop(first);
        let again = fields(&names);
        assert_ne!(again.shape.id, id, "dropped: a new shape, with a new id");
        assert_eq!(again.to_map(), appended(&again));
    }

    #[test]
    fn shapes_that_share_a_template_slot_each_get_their_own_template() {
        // More shapes than slots (different names, orders and counts), several
        // times over: every slot is taken by turns.
        let all: Vec<StoredFields> = (0..3 * TEMPLATE_SLOTS)
            .map(|i| {
                let name = format!("x-slot-{i}");
                let mut pairs = vec![("etag", "\"e\""), (name.as_str(), "v")];
                pairs.truncate(1 + i % 2);
                if i % 3 == 0 {
                    pairs.reverse();
                }
                let owned: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                let pairs: Vec<(&str, &str)> = owned
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                fields(&pairs)
            })
            .collect();
        for round in 0..3 {
            for fields in &all {
                let map = fields.to_map();
                assert_eq!(map, appended(fields), "round {round}");
                let names: Vec<_> = map.keys().skip(2).map(HeaderName::as_str).collect();
                let expected: Vec<_> = fields.shape.names.iter().map(HeaderName::as_str).collect();
                assert_eq!(names, expected, "in the stored order");
            }
        }
    }

    #[test]
    fn a_threads_template_has_names_of_its_own_and_is_reused() {
        let fields = fields(&[("x-custom", "1"), ("etag", "\"a\"")]);
        let stored = fields.shape.names[0].as_str().as_ptr();
        let custom_name = |map: &HeaderMap| {
            let (name, _) = map.iter().nth(2).unwrap();
            assert_eq!(name, "x-custom");
            name.as_str().as_ptr()
        };
        let first = custom_name(&fields.to_map());
        assert_ne!(first, stored, "not the shape's bytes");
        for _ in 0..2 {
            assert_eq!(custom_name(&fields.to_map()), first, "the same template");
        }
    }

    #[test]
    fn a_shape_takes_a_slot_over_on_its_second_miss_in_a_row() {
        let first = fields(&[("x-first", "1")]);
        let slot = |f: &StoredFields| f.shape.id % TEMPLATE_SLOTS as u64;
        let second = (0..)
            .map(|i| fields(&[(format!("x-second-{i}").as_str(), "2")]))
            .find(|f| slot(f) == slot(&first))
            .unwrap();
        // Where the answer's name comes from: a template (bytes of the thread's
        // own) or the shape (field by field).
        let from_template = |f: &StoredFields| {
            let map = f.to_map();
            let (name, _) = map.iter().nth(2).unwrap();
            name.as_str().as_ptr() != f.shape.names[0].as_str().as_ptr()
        };
        assert!(
            from_template(&first),
            "an empty slot takes a template at once"
        );
        assert!(!from_template(&second), "first miss: field by field");
        assert!(from_template(&first), "the holder keeps its template");
        assert!(from_template(&second), "second miss in a row: taken over");
        assert!(!from_template(&first));
        assert_eq!(first.to_map(), appended(&first));
        assert_eq!(second.to_map(), appended(&second));
    }

    #[test]
    fn shapes_no_entry_holds_are_pruned() {
        let make = |tag: &str, count: usize| -> Vec<StoredFields> {
            (0..count)
                .map(|i| fields(&[(format!("x-prune-{tag}-{i}").as_str(), "v")]))
                .collect()
        };
        drop(make("dropped", 300));
        let shapes = || SHAPES.lock().unwrap().by_names.len();
        // Pruning is due by the time the map has doubled (other tests' shapes only
        // bring it sooner).
        let live = make("live", shapes() + 1);
        let dropped_kept = SHAPES
            .lock()
            .unwrap()
            .by_names
            .keys()
            .filter(|names| {
                names
                    .first()
                    .is_some_and(|n| n.as_str().starts_with("x-prune-dropped-"))
            })
            .count();
        assert_eq!(dropped_kept, 0);
        assert!(live.iter().all(|f| f.to_map() == appended(f)));
    }

    #[test]
    fn answers_never_point_into_the_entry() {
        let fields = fields(&[("etag", "\"a\""), ("content-type", "text/plain")]);
        let inside = |value: &HeaderValue| {
            let at = value.as_bytes().as_ptr() as usize;
            let start = fields.buffer.as_ptr() as usize;
            (start..start + fields.buffer.len()).contains(&at)
        };
        for _ in 0..2 {
            let map = fields.to_map();
            assert_eq!(map["etag"], "\"a\"");
            assert!(map.iter().all(|(_, value)| !inside(value)));
        }
        let detached = fields.to_detached_map();
        assert_eq!(detached["etag"], "\"a\"");
        assert!(detached.iter().all(|(_, value)| !inside(value)));
    }
}
