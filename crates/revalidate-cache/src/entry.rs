//! A stored response and the variants of one primary key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{DATE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, StatusCode};
use revalidate::{EntityTag, HttpDate, Validators};

use crate::key::Secondary;
use crate::stored_fields::{Span, StoredFields};

/// Bytes charged per entry beyond its body and header bytes: the struct, the
/// buffers' handles and the store's bookkeeping (measured by
/// `cargo run --release -p revalidate-cache --example entry_overhead`).
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 330;

/// One response held by the cache, with what freshness needs.
///
/// The fields a hit reads come first, in declaration order (`repr(C)`), so that
/// they share as few cache lines as possible: over many keys, a hit mostly waits
/// for memory. It is kept small for the same reason, and because API responses
/// are often small JSON beside which a large entry would weigh more than its
/// body: times are microseconds, and what few responses have (a `Vary`, a stored
/// range) is boxed apart.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct StoredResponse {
    /// Unique per entry (from 1), never reused: what [`crate::local_fields`] finds copies by.
    id: u64,
    /// Bytes charged against the memory budget (fixed: the entry never changes;
    /// an entry is far below 4 GiB, the largest object stored being bounded).
    weight: u32,
    /// Status (a final, understood code).
    pub status: StatusCode,
    soft_purged: AtomicBool,
    /// [`ALWAYS_REVALIDATE`] and [`FORBIDS_STALE`].
    flags: u8,
    /// Freshness lifetime, in microseconds.
    lifetime: Micros,
    /// Corrected initial age (RFC 9111 §4.2.3), in microseconds.
    initial_age: Micros,
    /// When its response arrived, in microseconds since the Unix epoch.
    response_time: Micros,
    /// Fields as stored: no hop-by-hop fields, no Set-Cookie, no fields named by a
    /// qualified `private` or `no-cache`, no `Age`, `Content-Length` or
    /// `Cache-Status` (see [`StoredFields`]).
    fields: StoredFields,
    /// Where its one `ETag` value lies in the fields' buffer (empty: none), found
    /// once: a conditional hit compares with it, unparsed.
    etag: Span,
    /// The whole body.
    pub body: Bytes,
    /// What few responses have: a `Vary`, a stored range (`None`: neither).
    rare: Option<Box<Rare>>,
    /// `stale-while-revalidate` window.
    stale_while_revalidate: Window,
    /// `stale-if-error` window.
    stale_if_error: Window,
    /// Invalidation tags.
    tags: Tags,
    /// The primary key it is stored under: the normalized path (what URL and
    /// prefix purges name) is read from it, and the in-memory store's index
    /// shares it rather than holding a copy.
    key: Arc<str>,
}

/// A stale window in whole seconds, as its directive gives it (a configured
/// fraction of a second counts as a whole one): half of a [`Micros`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window(u32);

impl Window {
    fn of(duration: Duration) -> Self {
        let secs = duration
            .as_secs()
            .saturating_add(u64::from(duration.subsec_nanos() > 0));
        Self(u32::try_from(secs).unwrap_or(u32::MAX))
    }

    fn duration(self) -> Duration {
        Duration::from_secs(self.0.into())
    }
}

/// Invalidation tags behind one thin pointer: most entries have none, and then
/// take 8 bytes and no allocation.
#[derive(Debug, Default)]
struct Tags(Option<Box<TagList>>);

/// The tags of an entry that has some.
#[derive(Debug)]
struct TagList(Box<[String]>);

impl Tags {
    fn of(tags: Vec<String>) -> Self {
        Self((!tags.is_empty()).then(|| Box::new(TagList(tags.into_boxed_slice()))))
    }

    fn as_slice(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |list| &list.0)
    }
}

/// The parts of an entry few responses have, boxed together: one pointer in every
/// entry instead of one per part.
#[derive(Debug)]
struct Rare {
    /// The request's values for the response's `Vary` fields (none without one).
    secondary: Secondary,
    /// For a stored 206: which bytes of the representation the body holds.
    part: Option<Part>,
}

/// Unqualified `no-cache`: validate before every reuse.
const ALWAYS_REVALIDATE: u8 = 1;
/// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
const FORBIDS_STALE: u8 = 2;

/// A duration or a time since the Unix epoch, in microseconds: half of a
/// `Duration`'s or a `SystemTime`'s 16 bytes, and finer than any HTTP date or
/// delta (whole seconds) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Micros(u64);

impl Micros {
    fn of(duration: Duration) -> Self {
        Self(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
    }

    fn since_epoch(time: SystemTime) -> Self {
        Self::of(time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
    }

    fn duration(self) -> Duration {
        Duration::from_micros(self.0)
    }

    fn time(self) -> SystemTime {
        UNIX_EPOCH + self.duration()
    }
}

/// The bytes a stored 206 holds: `first..=last` of a representation of `complete`
/// bytes (RFC 9111 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    /// First byte position held.
    pub first: u64,
    /// Last byte position held.
    pub last: u64,
    /// The length of the whole representation.
    pub complete: u64,
}

impl Part {
    /// The part a 206 with a single `Content-Range: bytes first-last/complete` and a
    /// body of exactly that many bytes holds; `None` for anything else (an unknown
    /// complete length, a multipart body, a mismatch).
    pub(crate) fn of(headers: &HeaderMap, body_len: usize) -> Option<Self> {
        let value = headers
            .get(http::header::CONTENT_RANGE)?
            .to_str()
            .ok()?
            .trim();
        let (range, complete) = value.strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let number = |s: &str| {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let part = Self {
            first: number(first)?,
            last: number(last)?,
            complete: number(complete)?,
        };
        let consistent = part.first <= part.last
            && part.last < part.complete
            && part.last - part.first + 1 == body_len as u64;
        consistent.then_some(part)
    }

    /// Whether it holds every byte of `first..=last`.
    pub(crate) fn holds(&self, first: u64, last: u64) -> bool {
        self.first <= first && last <= self.last
    }
}

/// What [`StoredResponse::new`] needs beyond the response itself.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// When the request went upstream.
    pub request_time: SystemTime,
    /// When the response arrived.
    pub response_time: SystemTime,
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// `stale-while-revalidate` window.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` window.
    pub stale_if_error: Duration,
    /// Validate before every reuse.
    pub always_revalidate: bool,
    /// Never serve stale.
    pub forbids_stale: bool,
}

impl Timing {
    /// A response that arrived at `now`, right after its request, fresh for
    /// `lifetime`, with no stale windows and no revalidation required.
    #[cfg(test)]
    pub(crate) fn fresh_for(lifetime: Duration, now: SystemTime) -> Self {
        Self {
            request_time: now,
            response_time: now,
            lifetime,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            always_revalidate: false,
            forbids_stale: false,
        }
    }
}

impl StoredResponse {
    /// Builds an entry from a response's fields as received, or as a 304 freshened
    /// them (their `Age` goes into the initial age); they are kept as
    /// [`StoredFields::of`] picks them.
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        timing: Timing,
        secondary: Secondary,
        tags: Vec<String>,
        key: Arc<str>,
    ) -> Self {
        let initial_age =
            crate::freshness::initial_age(&headers, timing.request_time, timing.response_time);
        let fields = StoredFields::of(&headers);
        let etag = fields.single_span(&ETAG).unwrap_or_default();
        let header_bytes = fields.byte_len();
        let tag_bytes: usize = tags.iter().map(String::len).sum();
        let weight = body.len() + header_bytes + tag_bytes + key.len() + ENTRY_OVERHEAD_BYTES;
        let part = (status == StatusCode::PARTIAL_CONTENT)
            .then(|| Part::of(&headers, body.len()))
            .flatten();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            status,
            fields,
            etag,
            body,
            response_time: Micros::since_epoch(timing.response_time),
            initial_age: Micros::of(initial_age),
            lifetime: Micros::of(timing.lifetime),
            stale_while_revalidate: Window::of(timing.stale_while_revalidate),
            stale_if_error: Window::of(timing.stale_if_error),
            flags: (u8::from(timing.always_revalidate) * ALWAYS_REVALIDATE)
                | (u8::from(timing.forbids_stale) * FORBIDS_STALE),
            rare: (!secondary.names.is_empty() || part.is_some())
                .then(|| Box::new(Rare { secondary, part })),
            tags: Tags::of(tags),
            key,
            soft_purged: AtomicBool::new(false),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// Its invalidation tags.
    pub(crate) fn tags(&self) -> &[String] {
        self.tags.as_slice()
    }

    /// The primary key it is stored under.
    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// Its normalized path and query, what URL and prefix purges name.
    pub(crate) fn path(&self) -> &str {
        crate::key::target_of(&self.key)
    }

    /// Its id, unique among every entry this process makes.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Current age (§4.2.3).
    pub(crate) fn age(&self, now: SystemTime) -> Duration {
        // In microseconds, as stored: a hit computes it twice.
        let resident = Micros::since_epoch(now)
            .0
            .saturating_sub(self.response_time.0);
        Duration::from_micros(self.initial_age.0.saturating_add(resident))
    }

    /// When its response arrived (to the microsecond).
    pub(crate) fn response_time(&self) -> SystemTime {
        self.response_time.time()
    }

    /// Its corrected initial age (§4.2.3), which a shared tier keeps beside it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn initial_age(&self) -> Duration {
        self.initial_age.duration()
    }

    /// The same entry with `age` as its initial age: what an entry read back from
    /// a shared tier keeps, since its stored fields hold no `Age`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_initial_age(mut self, age: Duration) -> Self {
        self.initial_age = Micros::of(age);
        self
    }

    /// Unqualified `no-cache`: validate before every reuse.
    pub(crate) fn always_revalidate(&self) -> bool {
        self.flags & ALWAYS_REVALIDATE != 0
    }

    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub(crate) fn forbids_stale(&self) -> bool {
        self.flags & FORBIDS_STALE != 0
    }

    /// Its freshness lifetime.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime.duration()
    }

    /// Its `stale-while-revalidate` window.
    pub(crate) fn stale_while_revalidate(&self) -> Duration {
        self.stale_while_revalidate.duration()
    }

    /// Its `stale-if-error` window.
    pub(crate) fn stale_if_error(&self) -> Duration {
        self.stale_if_error.duration()
    }

    /// For a stored 206: which bytes of the representation the body holds.
    pub(crate) fn part(&self) -> Option<Part> {
        self.rare.as_ref().and_then(|rare| rare.part)
    }

    /// The request's values for the response's `Vary` fields.
    pub(crate) fn secondary(&self) -> &Secondary {
        static NONE: Secondary = Secondary {
            names: Vec::new(),
            values: Vec::new(),
        };
        self.rare.as_ref().map_or(&NONE, |rare| &rare.secondary)
    }

    /// Time left before it goes stale; `None` when stale, soft-purged or `no-cache`.
    pub(crate) fn ttl(&self, now: SystemTime) -> Option<Duration> {
        if self.always_revalidate() || self.is_soft_purged() {
            return None;
        }
        self.lifetime()
            .checked_sub(self.age(now))
            .filter(|d| !d.is_zero())
    }

    /// How long past its lifetime it is (zero while fresh).
    pub(crate) fn staleness(&self, now: SystemTime) -> Duration {
        if self.is_soft_purged() {
            return self
                .age(now)
                .saturating_sub(self.lifetime())
                .max(Duration::from_secs(1));
        }
        self.age(now).saturating_sub(self.lifetime())
    }

    /// Marks it stale: the next use revalidates (a soft purge).
    pub(crate) fn soft_purge(&self) {
        self.soft_purged.store(true, Ordering::Release);
    }

    /// Whether a soft purge marked it.
    pub(crate) fn is_soft_purged(&self) -> bool {
        self.soft_purged.load(Ordering::Acquire)
    }

    /// Its fields as stored.
    pub(crate) fn fields(&self) -> &StoredFields {
        &self.fields
    }

    /// Its fields as a header map, as [`StoredFields::to_map`] makes it.
    pub(crate) fn headers(&self) -> HeaderMap {
        self.fields.to_map()
    }

    /// Its entity tag: read from its stored `ETag` when a conditional request
    /// compares with it, not kept parsed beside it (a parsed tag would take 40 bytes
    /// of every entry).
    pub(crate) fn etag(&self) -> Option<EntityTag> {
        let span = Some(self.etag).filter(|span| !span.is_empty())?;
        EntityTag::from_value(&self.fields.value(span))
    }

    /// The bytes of its one `ETag` field, as stored: what most conditional
    /// requests compare with, byte for byte.
    pub(crate) fn etag_bytes(&self) -> Option<&[u8]> {
        Some(self.fields.bytes(self.etag)).filter(|bytes| !bytes.is_empty())
    }

    /// Its `Date`, when it has exactly one valid one.
    pub(crate) fn date(&self) -> Option<HttpDate> {
        self.date_field(&DATE)
    }

    /// Its entity tag and last-modified date, read from its stored fields.
    pub(crate) fn validators(&self) -> Validators {
        Validators {
            etag: self.etag(),
            last_modified: self.date_field(&LAST_MODIFIED),
        }
    }

    /// The date in its one `name` field, read in place.
    fn date_field(&self, name: &HeaderName) -> Option<HttpDate> {
        let span = self.fields.single_span(name)?;
        HttpDate::parse(self.fields.bytes(span))
    }

    /// Bytes charged against the memory budget.
    pub(crate) fn weight(&self) -> usize {
        self.weight as usize
    }
}

/// The stored variants of one primary key and the `Vary` fields that select them:
/// a handle, cheap to clone, that a store keeps by value.
///
/// A key whose response has no `Vary` (most keys) holds that one response
/// directly, so that a hit goes from the store's slot to the response without
/// another pointer in between: over many keys, each pointer followed is a read
/// that waits for memory.
#[derive(Debug, Clone, Default)]
pub struct Variants(Held);

#[derive(Debug, Clone, Default)]
enum Held {
    /// Nothing stored yet: what [`Variants::with`] starts from.
    #[default]
    Nothing,
    /// One response, without `Vary`.
    One(Arc<StoredResponse>),
    /// Responses selected by their `Vary` fields.
    Varied(Arc<Varied>),
}

#[derive(Debug)]
struct Varied {
    /// Field names of the most recent response's `Vary` (never empty).
    vary: Vec<HeaderName>,
    /// One entry per distinct secondary key.
    entries: Vec<Arc<StoredResponse>>,
    weight: usize,
}

impl Variants {
    /// The variants `entries`, selected by the `vary` field names. Without `Vary`
    /// there is one variant: give at most one entry (debug builds check it; a
    /// release build keeps the first).
    pub(crate) fn new(vary: Vec<HeaderName>, mut entries: Vec<Arc<StoredResponse>>) -> Self {
        // `find` relies on it: without Vary, one variant.
        debug_assert!(!vary.is_empty() || entries.len() <= 1);
        Self(match (vary.is_empty(), entries.len()) {
            (_, 0) => Held::Nothing,
            (true, _) => Held::One(entries.swap_remove(0)),
            (false, _) => Held::Varied(Arc::new(Varied {
                weight: entries.iter().map(|e| e.weight()).sum(),
                vary,
                entries,
            })),
        })
    }

    /// The `Vary` field names that select among them (empty without `Vary`).
    pub(crate) fn vary(&self) -> &[HeaderName] {
        match &self.0 {
            Held::Varied(varied) => &varied.vary,
            Held::Nothing | Held::One(_) => &[],
        }
    }

    /// Every stored response.
    pub(crate) fn entries(&self) -> &[Arc<StoredResponse>] {
        match &self.0 {
            Held::Nothing => &[],
            Held::One(entry) => std::slice::from_ref(entry),
            Held::Varied(varied) => &varied.entries,
        }
    }

    /// Whether `self` and `other` are copies of one handle (or both empty): the
    /// same stored responses, not merely equal ones. A store compares with it to
    /// replace only what it handed out.
    pub fn same_as(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Held::Nothing, Held::Nothing) => true,
            (Held::One(a), Held::One(b)) => Arc::ptr_eq(a, b),
            (Held::Varied(a), Held::Varied(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The entry `request` selects.
    pub(crate) fn find(&self, request: &http::HeaderMap) -> Option<&Arc<StoredResponse>> {
        match &self.0 {
            Held::Nothing => None,
            // Without Vary there is one variant, whatever the request: its secondary
            // key need not be read (on a hit over many keys, that read waits for
            // memory).
            Held::One(entry) => Some(entry),
            Held::Varied(varied) => varied
                .entries
                .iter()
                .find(|e| e.secondary().matches(request)),
        }
    }

    /// These variants with `entry` added (replacing one with the same secondary
    /// key). A different `Vary` replaces them all; beyond `max_variants` the
    /// oldest go, and `entry` always stays.
    pub(crate) fn with(
        &self,
        vary: Vec<HeaderName>,
        entry: Arc<StoredResponse>,
        max_variants: usize,
    ) -> Self {
        let mut entries: Vec<Arc<StoredResponse>> = if vary == self.vary() {
            self.entries()
                .iter()
                .filter(|e| e.secondary() != entry.secondary())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        entries.push(entry);
        let excess = entries.len().saturating_sub(max_variants.max(1));
        entries.drain(..excess);
        Self::new(vary, entries)
    }

    /// Bytes charged against the memory budget.
    pub fn weight(&self) -> usize {
        match &self.0 {
            Held::Nothing => 0,
            Held::One(entry) => entry.weight(),
            Held::Varied(varied) => varied.weight,
        }
    }

    /// The primary key all variants share.
    pub(crate) fn key(&self) -> Option<&Arc<str>> {
        self.entries().first().map(|e| &e.key)
    }

    /// The normalized path all variants share.
    pub fn path(&self) -> Option<&str> {
        self.entries().first().map(|e| e.path())
    }

    /// Tags of all entries.
    pub fn tags(&self) -> impl Iterator<Item = &String> {
        self.entries().iter().flat_map(|e| e.tags().iter())
    }

    /// Marks every variant stale, so that its next use revalidates: what a soft
    /// purge does to an entry it names.
    pub fn soft_purge(&self) {
        self.entries().iter().for_each(|e| e.soft_purge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(secondary: Secondary, body: &'static str) -> Arc<StoredResponse> {
        let timing = Timing::fresh_for(Duration::from_secs(60), SystemTime::now());
        let body = Bytes::from_static(body.as_bytes());
        Arc::new(StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            body,
            timing,
            secondary,
            vec!["t".into()],
            Arc::from("host.test/p"),
        ))
    }

    fn request(language: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(language) = language {
            headers.insert(http::header::ACCEPT_LANGUAGE, language.parse().unwrap());
        }
        headers
    }

    #[test]
    fn without_vary_the_one_response_answers_every_request() {
        let entry = stored(Secondary::default(), "one");
        let variants = Variants::default().with(Vec::new(), entry.clone(), 16);
        assert!(matches!(variants.0, Held::One(_)), "held directly");
        assert!(variants.vary().is_empty());
        for headers in [request(None), request(Some("fr"))] {
            assert!(Arc::ptr_eq(variants.find(&headers).unwrap(), &entry));
        }
        assert_eq!(variants.weight(), entry.weight());
        assert_eq!(variants.path(), Some("/p"));
        assert_eq!(variants.tags().collect::<Vec<_>>(), ["t"]);
        assert!(variants.same_as(&variants.clone()));
        let same = Variants::default().with(Vec::new(), entry, 16);
        assert!(variants.same_as(&same), "the same response");
        let other = Variants::default().with(Vec::new(), stored(Secondary::default(), "one"), 16);
        assert!(!variants.same_as(&other), "another response, equal or not");
        assert!(Variants::default().find(&request(None)).is_none());
    }

    #[test]
    fn stale_windows_keep_whole_seconds_and_never_shrink_to_none() {
        let window = |d: Duration| Window::of(d).duration();
        assert_eq!(window(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(window(Duration::from_millis(1)), Duration::from_secs(1));
        assert_eq!(window(Duration::ZERO), Duration::ZERO);
        assert_eq!(window(Duration::MAX), Duration::from_secs(u32::MAX.into()));
        assert!(Tags::of(Vec::new()).0.is_none(), "no tags, no allocation");
        assert_eq!(Tags::of(vec!["t".into()]).as_slice(), ["t"]);
    }

    #[test]
    fn an_entry_and_its_reference_counts_fit_a_160_byte_allocation() {
        // The allocator's size classes around it are 128, 160 and 192 bytes: a
        // word more would cost every entry 32 bytes.
        let counts = 2 * std::mem::size_of::<usize>();
        let size = std::mem::size_of::<StoredResponse>() + counts;
        assert!(size <= 160, "{size} bytes");
    }

    #[test]
    fn vary_selects_by_secondary_key_and_a_new_vary_replaces_all() {
        let names = vec![http::header::ACCEPT_LANGUAGE];
        let english = stored(crate::key::secondary(&names, &request(Some("en"))), "en");
        let french = stored(crate::key::secondary(&names, &request(Some("fr"))), "fr");
        let variants = Variants::default()
            .with(names.clone(), english.clone(), 16)
            .with(names.clone(), french.clone(), 16);
        assert_eq!(variants.vary(), &names[..]);
        assert_eq!(variants.entries().len(), 2);
        assert_eq!(variants.weight(), english.weight() + french.weight());
        let found = |language| variants.find(&request(language)).map(|e| e.body.clone());
        assert_eq!(found(Some("en")).unwrap(), "en");
        assert_eq!(found(Some("fr")).unwrap(), "fr");
        assert_eq!(found(Some("de")), None);
        assert_eq!(found(None), None);

        // At most `max_variants`: the oldest go, the new one stays.
        let german = stored(crate::key::secondary(&names, &request(Some("de"))), "de");
        let capped = variants.with(names.clone(), german.clone(), 2);
        assert_eq!(capped.entries().len(), 2);
        assert!(Arc::ptr_eq(&capped.entries()[0], &french));
        assert!(Arc::ptr_eq(&capped.entries()[1], &german));
        let only = variants.with(names.clone(), german.clone(), 0);
        assert_eq!(only.entries().len(), 1, "the new entry stays even at 0");
        assert_eq!(only.find(&request(Some("de"))).unwrap().body, "de");

        // One handle is not another: a varied one never equals a plain one.
        let one = Variants::default().with(Vec::new(), english.clone(), 16);
        assert!(!variants.same_as(&one) && !one.same_as(&variants));
        assert!(!Variants::default().same_as(&one));
        assert!(variants.same_as(&variants.clone()));

        // A response without Vary replaces every variant.
        let plain = variants.with(Vec::new(), stored(Secondary::default(), "plain"), 16);
        assert_eq!(plain.entries().len(), 1);
        assert_eq!(plain.find(&request(Some("en"))).unwrap().body, "plain");
    }

    #[test]
    fn parts_come_only_from_a_consistent_single_content_range() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_RANGE, value.parse().unwrap());
            h
        };
        let part = Part::of(&headers("bytes 4-9/10"), 6).unwrap();
        assert_eq!((part.first, part.last, part.complete), (4, 9, 10));
        assert!(part.holds(6, 8) && !part.holds(3, 8));
        assert_eq!(
            Part::of(&headers("bytes 4-9/10"), 5),
            None,
            "body too short"
        );
        assert_eq!(Part::of(&headers("bytes 4-9/*"), 6), None, "unknown length");
        assert_eq!(Part::of(&headers("bytes 9-4/10"), 6), None);
        assert_eq!(Part::of(&headers("bytes 4-10/10"), 7), None);
        assert_eq!(Part::of(&HeaderMap::new(), 0), None);
    }
}
