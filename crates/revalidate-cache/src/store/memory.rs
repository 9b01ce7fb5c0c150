use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::contract::{
    EntryFilter, EntryListing, EntrySummary, FetchMark, LookupNow, Purge, Store, StoreUsage,
};
use crate::entry::{StoredResponse, Variants};
use crate::key::target_of;

/// The in-memory tier: quick_cache (S3-FIFO-style admission and eviction, lock-sharded
/// reads that only flip a bit) bounded by a byte budget charged on real body and
/// header bytes, with a path index and a tag index so a purge touches only the
/// entries it names.
///
/// Not moka: on the hit path its read recording and deferred housekeeping cost
/// about a tenth of the proxy's CPU over 10,000 URLs, and its per-entry
/// bookkeeping a few hundred bytes per object.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// A primary key's digest and what is stored under it.
type Stored = (Digest, Variants);

/// A primary key as the cache's table holds it: a 64-bit hash of it (foldhash,
/// seeded at random per store). A lookup compares 8 bytes in the table's slot,
/// and the slot is as small for a long key as for a short one; the key itself is
/// the entry's, which purges and the index read. Two keys may share a digest: a
/// found entry is used only when its own key is the one looked up (a collision is
/// a miss, and storing one key displaces the other), so a digest decides where an
/// entry is kept, never whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest(u64);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The table's hasher for digests: a digest is already a hash, so it is used as it
/// is. (Hand-written: it is these few lines.)
#[derive(Debug, Clone, Copy, Default)]
struct DigestHash;

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

#[derive(Debug, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only digests are hashed here, through `write_u64`.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

/// How a store makes digests.
#[derive(Debug)]
enum Digests {
    Seeded(DefaultHashBuilder),
    /// Every key the same digest: tests of collisions.
    #[cfg(test)]
    Colliding,
}

/// Whether `variants` are stored under `primary` itself.
fn held_under(variants: &Variants, primary: &str) -> bool {
    variants.key().is_some_and(|key| **key == *primary)
}

type Entries = Cache<Digest, Variants, ByBytes, DigestHash, EvictionNotices>;

#[derive(Debug)]
struct Inner {
    entries: Entries,
    /// What digests are made with.
    digests: Digests,
    /// Every change to `entries` other than a read is made holding this lock, so the
    /// indexes always describe exactly what is stored. Lock order: index, then a
    /// cache shard, then the eviction notices.
    index: Mutex<Index>,
    notices: EvictionNotices,
}

/// Charges a key and its variants by their bytes (the variants cache their weight:
/// the weigher runs during eviction and must be cheap).
#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl Weighter<Digest, Variants> for ByBytes {
    fn weight(&self, _: &Digest, variants: &Variants) -> u64 {
        // The entry charges its key, which the index shares. A zero weight would
        // make an entry unevictable.
        variants.weight().max(1) as u64
    }
}

/// Values that left the cache during an insert, queued for unindexing. They are
/// reported while a cache shard is locked, so the index (locked before the shard)
/// is updated after the insert that caused them returns.
#[derive(Debug, Clone, Default)]
struct EvictionNotices {
    evicted: Arc<Mutex<Vec<Stored>>>,
    count: Arc<AtomicU64>,
}

impl Lifecycle<Digest, Variants> for EvictionNotices {
    type RequestState = ();

    // quick_cache 0.7 reports a replaced value here too, not only evicted ones.
    fn on_evict(&self, _: &mut (), key: Digest, variants: Variants) {
        lock(&self.evicted).push((key, variants));
    }
}

/// Which primary keys hold which paths and tags. Each key is its entry's
/// `Arc<str>`, shared by both indexes; the path index orders keys by the target
/// they hold.
#[derive(Debug, Default)]
struct Index {
    /// The primary keys, ordered by target so that a URL or prefix purge is a
    /// range scan.
    by_path: BTreeSet<ByTarget>,
    by_tag: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

impl Index {
    fn add(&mut self, primary: &Arc<str>, variants: &Variants) {
        self.by_path.insert(ByTarget(primary.clone()));
        for tag in variants.tags() {
            match self.by_tag.get_mut(tag.as_str()) {
                Some(primaries) => {
                    primaries.insert(primary.clone());
                }
                None => {
                    self.by_tag
                        .insert(Arc::from(tag.as_str()), HashSet::from([primary.clone()]));
                }
            }
        }
    }

    fn remove(&mut self, primary: &Arc<str>, variants: &Variants) {
        self.by_path.remove(&ByTarget(primary.clone()));
        for tag in variants.tags() {
            if let Some(primaries) = self.by_tag.get_mut(tag.as_str()) {
                primaries.remove(primary);
                if primaries.is_empty() {
                    self.by_tag.remove(tag.as_str());
                }
            }
        }
    }

    /// Primary keys named by a purge.
    fn select(&self, purge: &Purge) -> HashSet<Arc<str>> {
        let mut out = HashSet::new();
        for url in &purge.urls {
            let named = self.keys_from(url).take_while(|key| key.target() == url);
            out.extend(named.map(|key| key.0.clone()));
        }
        for prefix in &purge.prefixes {
            let named = self
                .keys_from(prefix)
                .take_while(|key| key.target().starts_with(prefix.as_str()));
            out.extend(named.map(|key| key.0.clone()));
        }
        for tag in &purge.tags {
            out.extend(self.by_tag.get(tag.as_str()).into_iter().flatten().cloned());
        }
        out
    }

    /// Up to `max` primary keys `filter` selects, with their targets: a range of
    /// the path index (a prefix), or the members of a tag (its primary keys'
    /// targets checked against the prefix).
    fn list(&self, filter: &EntryFilter, max: usize) -> Vec<(Arc<str>, Arc<str>)> {
        let prefix = filter.prefix.as_deref().unwrap_or("");
        if let Some(tag) = &filter.tag {
            return self
                .by_tag
                .get(tag.as_str())
                .into_iter()
                .flatten()
                .filter(|primary| target_of(primary).starts_with(prefix))
                .take(max)
                .map(|primary| (Arc::from(target_of(primary)), primary.clone()))
                .collect();
        }
        self.keys_from(prefix)
            .take_while(|key| key.target().starts_with(prefix))
            .take(max)
            .map(|key| (Arc::from(key.target()), key.0.clone()))
            .collect()
    }

    /// The keys whose target sorts at or after `target`, in order.
    fn keys_from(&self, target: &str) -> impl Iterator<Item = &ByTarget> {
        // A key of no host holding `target` sorts before every key that holds it.
        let start = ByTarget(Arc::from(target));
        self.by_path
            .range((Bound::Included(start), Bound::Unbounded))
    }
}

/// A primary key in the path index, ordered by the target it holds, then by its
/// host, then as a whole: the keys of one target (or of targets with one prefix)
/// are neighbours. Ordering the keys themselves, rather than (target, key) pairs,
/// keeps one pointer per entry in the index and no copy of its path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ByTarget(Arc<str>);

impl ByTarget {
    fn target(&self) -> &str {
        target_of(&self.0)
    }

    fn host(&self) -> &str {
        self.0.split('/').next().unwrap_or("")
    }
}

impl Ord for ByTarget {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.target(), self.host(), &*self.0).cmp(&(other.target(), other.host(), &*other.0))
    }
}

impl PartialOrd for ByTarget {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `entry`, stored under `key`, as it is at `now`.
fn summary(key: &str, entry: &StoredResponse, now: SystemTime) -> EntrySummary {
    let text = |value: http::HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let ttl = match entry.ttl(now) {
        Some(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        None => -i64::try_from(entry.staleness(now).as_secs()).unwrap_or(i64::MAX),
    };
    let validators = entry.validators();
    EntrySummary {
        key: key.to_string(),
        path: entry.path().to_string(),
        status: entry.status.as_u16(),
        size: entry.body.len() as u64,
        age: entry.age(now).as_secs(),
        ttl,
        tags: entry.tags().to_vec(),
        etag: validators
            .etag
            .as_ref()
            .map(|tag| text(tag.to_header_value())),
        last_modified: validators
            .last_modified
            .map(|date| text(date.to_header_value())),
        soft_purged: entry.is_soft_purged(),
        vary: entry
            .secondary()
            .names
            .iter()
            .zip(&entry.secondary().values)
            .map(|(name, value)| {
                let value = if CREDENTIALS.contains(name) {
                    value.as_ref().map(|_| REDACTED.to_string())
                } else {
                    value.clone()
                };
                (name.to_string(), value)
            })
            .collect(),
    }
}

/// Fields whose values a listing never shows (a response may vary on them).
const CREDENTIALS: [http::HeaderName; 3] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
];

/// What a listing shows for a credential.
pub(crate) const REDACTED: &str = "(redacted)";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update keeps the structures consistent before it can panic, so a
    // poisoned lock is simply reused.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryStore {
    /// A store holding at most `budget_bytes` of responses.
    pub fn new(budget_bytes: u64) -> Self {
        // quick_cache splits the budget evenly between shards, evicts per shard and
        // refuses an entry heavier than its shard: keep shards large (at least
        // 16 MiB, or a single one) so that the largest object stored (8 MiB by
        // default) fits and never crowds out a whole shard.
        let shards = 1usize << (budget_bytes / (16 << 20)).clamp(1, 16).ilog2();
        let estimated_items = usize::try_from(budget_bytes / (16 << 10))
            .unwrap_or(usize::MAX)
            .clamp(64, 1 << 20);
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(estimated_items)
            .weight_capacity(budget_bytes)
            .build()
            .expect("weight and item capacities are set");
        let notices = EvictionNotices::default();
        let entries = Cache::with_options(options, ByBytes, DigestHash, notices.clone());
        Self {
            inner: Arc::new(Inner {
                entries,
                digests: Digests::Seeded(DefaultHashBuilder::default()),
                index: Mutex::new(Index::default()),
                notices,
            }),
        }
    }
}

/// A local tier's guard against stores that a concurrent purge should have
/// removed: a counter that every removal by the invalidation bus advances, and
/// that a store compares with the value it read before its fetch began. Both
/// happen under the store's index lock, so a check cannot pass and then see its
/// entry removed by a purge that ran in between.
#[cfg(feature = "redis")]
impl MemoryStore {
    /// Drops everything and advances `generation`: what a local tier does when
    /// it may have missed a purge.
    pub(crate) fn clear_advancing(&self, generation: &AtomicU64) {
        let mut index = lock(&self.inner.index);
        generation.fetch_add(1, Ordering::AcqRel);
        self.inner.entries.clear();
        *index = Index::default();
        lock(&self.inner.notices.evicted).clear();
    }

    /// [`Store::purge`], advancing `generation` first.
    pub(crate) fn purge_advancing(&self, purge: &Purge, generation: &AtomicU64) -> usize {
        let mut index = lock(&self.inner.index);
        generation.fetch_add(1, Ordering::AcqRel);
        self.inner.purge_locked(&mut index, purge)
    }

    /// [`Store::put`], only while `generation` still reads `expected`.
    pub(crate) fn put_if_unchanged(
        &self,
        primary: String,
        variants: Variants,
        generation: &AtomicU64,
        expected: u64,
    ) -> bool {
        let mut index = lock(&self.inner.index);
        if generation.load(Ordering::Acquire) != expected {
            return false;
        }
        self.inner.put_locked(&mut index, primary, variants)
    }
}

impl Inner {
    fn digest(&self, primary: &str) -> Digest {
        match &self.digests {
            Digests::Seeded(seeded) => Digest(seeded.hash_one(primary)),
            #[cfg(test)]
            Digests::Colliding => Digest(0),
        }
    }

    /// What is stored under `primary`, read as a hit reads it.
    fn get(&self, primary: &str) -> Option<Variants> {
        let found = self.entries.get(&self.digest(primary))?;
        held_under(&found, primary).then_some(found)
    }

    /// What is stored under `primary`, read without counting as a use.
    fn peek(&self, primary: &str) -> Option<Variants> {
        let found = self.entries.peek(&self.digest(primary))?;
        held_under(&found, primary).then_some(found)
    }

    /// Stores `variants` under `primary` (the index lock is held); returns
    /// whether they are kept.
    fn put_locked(&self, index: &mut Index, primary: String, variants: Variants) -> bool {
        let digest = self.digest(&primary);
        // The index shares the entries' own copy of the key, which is what an
        // eviction unindexes by: variants are stored under their own key only.
        let Some(primary) = variants.key().filter(|held| ***held == *primary).cloned() else {
            return false;
        };
        // What was there may be another key's, of the same digest.
        if let Some(old) = self.entries.peek(&digest)
            && let Some(key) = old.key()
        {
            index.remove(key, &old);
        }
        index.add(&primary, &variants);
        self.entries.insert(digest, variants.clone());
        // The insert may have evicted others, or refused this one (too heavy).
        self.unindex_evicted(index);
        self.entries
            .peek(&digest)
            .is_some_and(|kept| kept.same_as(&variants))
    }

    /// Applies `purge` (the index lock is held); returns how many keys it named.
    fn purge_locked(&self, index: &mut Index, purge: &Purge) -> usize {
        let selected = index.select(purge);
        for primary in &selected {
            let digest = self.digest(primary);
            let Some(variants) = self.entries.peek(&digest) else {
                continue;
            };
            if !held_under(&variants, primary) {
                continue;
            }
            if purge.soft {
                variants.soft_purge();
            } else if let Some((_, variants)) = self.entries.remove(&digest) {
                index.remove(primary, &variants);
            }
        }
        selected.len()
    }

    /// Unindexes what the last cache insert evicted (the index lock is held).
    fn unindex_evicted(&self, index: &mut Index) {
        let evicted = std::mem::take(&mut *lock(&self.notices.evicted));
        for (digest, variants) in &evicted {
            let Some(primary) = variants.key() else {
                continue;
            };
            // A key that is still there had its value replaced, which `put` has
            // already reindexed: that is no eviction.
            if self
                .entries
                .peek(digest)
                .is_some_and(|now| held_under(&now, primary))
            {
                continue;
            }
            index.remove(primary, variants);
            self.notices.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Store for MemoryStore {
    async fn get(&self, primary: &str) -> Option<Variants> {
        self.inner.get(primary)
    }

    fn get_now(&self, primary: &str) -> LookupNow {
        self.inner.get(primary).into()
    }

    async fn put(&self, primary: String, variants: Variants, _: FetchMark) -> bool {
        let mut index = lock(&self.inner.index);
        self.inner.put_locked(&mut index, primary, variants)
    }

    async fn purge(&self, purge: &Purge) -> usize {
        let mut index = lock(&self.inner.index);
        self.inner.purge_locked(&mut index, purge)
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            entries: self.inner.entries.len() as u64,
            bytes: self.inner.entries.weight(),
            evictions: self.inner.notices.count.load(Ordering::Relaxed),
        }
    }

    fn entries(&self, filter: &EntryFilter, limit: usize, now: SystemTime) -> Option<EntryListing> {
        // Only the keys are copied under the index lock (which writes take, never
        // a hit), one more than asked to tell whether there are more; the
        // responses are read after it, each under its shard's lock alone.
        let mut keys = lock(&self.inner.index).list(filter, limit.saturating_add(1));
        keys.sort();
        let mut listing = EntryListing {
            truncated: keys.len() > limit,
            entries: Vec::with_capacity(keys.len().min(limit)),
        };
        'keys: for (_, primary) in &keys {
            // Gone since the snapshot: evicted or purged.
            let Some(variants) = self.inner.peek(primary) else {
                continue;
            };
            for entry in variants.entries() {
                if listing.entries.len() == limit {
                    listing.truncated = true;
                    break 'keys;
                }
                listing.entries.push(summary(primary, entry, now));
            }
        }
        Some(listing)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::entry::{StoredResponse, Timing};
    use crate::key::Secondary;

    /// What a store holds under `key`: one entry, which knows its key.
    fn variants(key: &str, tags: &[&str], body_len: usize) -> Variants {
        let now = SystemTime::now();
        let timing = Timing::fresh_for(Duration::from_secs(60), now);
        let entry = StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body_len]),
            timing,
            Secondary::default(),
            tags.iter().map(|t| t.to_string()).collect(),
            Arc::from(key),
        );
        Variants::new(Vec::new(), vec![Arc::new(entry)])
    }

    fn indexed(store: &MemoryStore) -> (usize, usize) {
        let index = lock(&store.inner.index);
        (index.by_path.len(), index.by_tag.len())
    }

    #[tokio::test]
    async fn the_indexes_share_the_entrys_own_key() {
        let store = MemoryStore::new(64 << 20);
        let stored = variants("h/a", &["t"], 10);
        store
            .put("h/a".into(), stored.clone(), FetchMark::NONE)
            .await;
        let index = lock(&store.inner.index);
        let held = stored.key().expect("an entry");
        let by_path = &index.by_path.iter().next().expect("indexed").0;
        assert!(Arc::ptr_eq(by_path, held), "no second copy of the key");
        assert!(index.by_tag["t"].iter().all(|key| Arc::ptr_eq(key, held)));
    }

    #[tokio::test]
    async fn purges_select_by_url_prefix_and_tag() {
        let store = MemoryStore::new(64 << 20);
        store
            .put("h/a".into(), variants("h/a", &["t1"], 10), FetchMark::NONE)
            .await;
        store
            .put(
                "h/a/b".into(),
                variants("h/a/b", &["t2"], 10),
                FetchMark::NONE,
            )
            .await;
        store
            .put("h/ab".into(), variants("h/ab", &[], 10), FetchMark::NONE)
            .await;
        store
            .put("h/c".into(), variants("h/c", &["t1"], 10), FetchMark::NONE)
            .await;
        assert_eq!(store.purge(&Purge::urls(["/a"])).await, 1);
        assert!(store.get("h/a").await.is_none());
        assert!(store.get("h/a/b").await.is_some());
        assert_eq!(store.purge(&Purge::prefixes(["/a/"])).await, 1);
        assert!(store.get("h/ab").await.is_some());
        assert_eq!(store.purge(&Purge::tags(["t1"])).await, 1);
        assert!(store.get("h/c").await.is_none());
        assert_eq!(indexed(&store), (1, 0), "only /ab is left in the indexes");
    }

    /// The path index orders keys by target, then host: a URL purge finds the
    /// target under every host (one whose name sorts before `/` too) and every
    /// key addition, and nothing of a neighbouring target.
    #[tokio::test]
    async fn a_url_purge_finds_its_target_under_every_host_and_addition() {
        let store = MemoryStore::new(64 << 20);
        let named = [
            "!h/x",
            "a.example/x",
            "a.example/x\nh:accept=json",
            "z/x",
            "/x",
        ];
        let spared = ["a.example/x/y", "a.example/w", "!h/xy"];
        for key in named.iter().chain(&spared) {
            store
                .put(key.to_string(), variants(key, &[], 10), FetchMark::NONE)
                .await;
        }
        assert_eq!(store.purge(&Purge::urls(["/x"])).await, named.len());
        for key in named {
            assert!(store.get(key).await.is_none(), "{key:?} is purged");
        }
        for key in spared {
            assert!(store.get(key).await.is_some(), "{key:?} stays");
        }
        assert_eq!(
            store.purge(&Purge::prefixes(["/x"])).await,
            2,
            "/x/y and /xy"
        );
    }

    #[tokio::test]
    async fn listings_filter_by_prefix_and_tag_and_stop_at_the_limit() {
        let store = MemoryStore::new(64 << 20);
        for (key, tags) in [
            ("h/a\nh:accept=x", &["t1"][..]),
            ("h/a/b", &["t2"]),
            ("h/ab", &[]),
            ("g/c", &["t1"]),
        ] {
            store
                .put(key.into(), variants(key, tags, 10), FetchMark::NONE)
                .await;
        }
        let now = SystemTime::now();
        let list = |prefix: Option<&str>, tag: Option<&str>, limit| {
            let filter = EntryFilter {
                prefix: prefix.map(str::to_string),
                tag: tag.map(str::to_string),
            };
            let listing = store.entries(&filter, limit, now).unwrap();
            let keys: Vec<String> = listing.entries.iter().map(|e| e.key.clone()).collect();
            (keys, listing.truncated)
        };
        assert_eq!(
            list(None, None, 10),
            (
                vec![
                    "h/a\nh:accept=x".into(),
                    "h/a/b".into(),
                    "h/ab".into(),
                    "g/c".into()
                ],
                false
            ),
            "ordered by target"
        );
        assert_eq!(list(Some("/a/"), None, 10), (vec!["h/a/b".into()], false));
        assert!(list(Some("/a"), None, 2).1, "three match, two listed");
        assert_eq!(list(Some("/a"), None, 2).0.len(), 2);
        assert!(!list(Some("/a"), None, 3).1);
        assert_eq!(
            list(None, Some("t1"), 10),
            (vec!["h/a\nh:accept=x".into(), "g/c".into()], false)
        );
        assert_eq!(
            list(Some("/c"), Some("t1"), 10),
            (vec!["g/c".into()], false)
        );
        assert!(list(None, Some("t1"), 1).1);
        assert_eq!(list(None, Some("none"), 10), (vec![], false));
        let entry = &store
            .entries(&EntryFilter::default(), 1, now)
            .unwrap()
            .entries[0];
        assert_eq!(
            (
                entry.path.as_str(),
                entry.status,
                entry.size,
                entry.soft_purged
            ),
            ("/a", 200, 10, false)
        );
        // Stored a moment before `now`, fresh for 60 s.
        assert!((59..=60).contains(&entry.ttl), "{entry:?}");
        store.purge(&Purge::urls(["/a"]).soft()).await;
        let later = now + Duration::from_secs(5);
        let entry = &store
            .entries(&EntryFilter::default(), 1, later)
            .unwrap()
            .entries[0];
        assert!(
            entry.soft_purged && entry.ttl < 0 && entry.age == 5,
            "{entry:?}"
        );
        assert_eq!(target_of("h:80/x?y\nu:1"), "/x?y");
        assert_eq!(target_of("/x"), "/x", "no host");
    }

    #[tokio::test]
    async fn keys_are_exact_at_any_length() {
        let store = MemoryStore::new(64 << 20);
        // Keys that are the same for longer than a digest, and two that differ
        // in their last byte only.
        let long = "l".repeat(64);
        let fits = "f".repeat(14);
        let paths = [
            format!("/{long}1"),
            format!("/{long}2"),
            format!("/{fits}"),
            format!("/{fits}x"),
        ];
        for (i, path) in paths.iter().enumerate() {
            let body_len = 10 + i;
            assert!(
                store
                    .put(
                        format!("h{path}"),
                        variants(&format!("h{path}"), &["t"], body_len),
                        FetchMark::NONE
                    )
                    .await
            );
        }
        for (i, path) in paths.iter().enumerate() {
            let found = store.get(&format!("h{path}")).await.expect("stored");
            assert_eq!(found.entries()[0].body.len(), 10 + i, "{path}");
        }
        assert!(store.get(&format!("h/{long}")).await.is_none());
        assert_eq!(store.purge(&Purge::urls([paths[1].as_str()])).await, 1);
        assert!(store.get(&format!("h{}", paths[1])).await.is_none());
        assert!(store.get(&format!("h{}", paths[0])).await.is_some());
        assert_eq!(store.purge(&Purge::tags(["t"])).await, 3);
        assert_eq!(indexed(&store), (0, 0));
        assert_eq!(store.usage().entries, 0);
    }

    #[tokio::test]
    async fn keys_are_charged_once_and_unindexed_when_evicted() {
        let long = |i: usize| format!("h/{}{i}", "k".repeat(64));
        let store = MemoryStore::new(64 << 10);
        store
            .put(long(0), variants(&long(0), &["old"], 10), FetchMark::NONE)
            .await;
        let charged = store.usage().bytes;
        store
            .put("h/s".into(), variants("h/s", &[], 10), FetchMark::NONE)
            .await;
        let short = store.usage().bytes - charged;
        // The two differ in their key and tag bytes only.
        let long_bytes = long(0).len() + "old".len();
        let short_bytes = "h/s".len();
        assert_eq!(
            charged - short,
            (long_bytes - short_bytes) as u64,
            "a key's bytes count once, however long"
        );
        // Replaced, then evicted by many more long keys: the index follows.
        store
            .put(long(0), variants(&long(0), &["new"], 10), FetchMark::NONE)
            .await;
        assert_eq!(store.purge(&Purge::tags(["old"])).await, 0);
        for i in 1..100 {
            store
                .put(long(i), variants(&long(i), &["all"], 4096), FetchMark::NONE)
                .await;
        }
        let usage = store.usage();
        assert!(usage.evictions > 0, "{usage:?}");
        assert_eq!(
            indexed(&store).0 as u64,
            usage.entries,
            "evicted keys are unindexed"
        );
        let tagged = store.purge(&Purge::tags(["all"])).await as u64;
        let left = usage.entries - tagged;
        assert!(left <= 2, "only /long0 and /s may be left: {left}");
        assert_eq!(indexed(&store).0 as u64, left);
    }

    #[tokio::test]
    async fn keys_of_one_digest_never_see_each_others_entries() {
        let mut store = MemoryStore::new(64 << 20);
        Arc::get_mut(&mut store.inner).unwrap().digests = Digests::Colliding;
        let put = |key: &'static str, tag: &'static str| {
            store.put(key.into(), variants(key, &[tag], 10), FetchMark::NONE)
        };
        assert!(put("h/a", "ta").await);
        assert!(store.get("h/b").await.is_none(), "a collision is a miss");
        assert!(put("h/b", "tb").await);
        assert!(store.get("h/a").await.is_none(), "displaced");
        assert_eq!(
            store.get("h/b").await.unwrap().key().unwrap().as_ref(),
            "h/b"
        );
        assert_eq!(indexed(&store), (1, 1), "only h/b is indexed");
        assert_eq!(store.purge(&Purge::urls(["/a"])).await, 0);
        assert!(
            store.get("h/b").await.is_some(),
            "a purge of h/a leaves h/b"
        );
        assert_eq!(store.purge(&Purge::tags(["tb"])).await, 1);
        assert_eq!((indexed(&store), store.usage().entries), ((0, 0), 0));
    }

    #[tokio::test]
    async fn variants_are_stored_under_their_own_key_only() {
        let store = MemoryStore::new(64 << 20);
        assert!(
            !store
                .put("h/a".into(), variants("h/b", &[], 10), FetchMark::NONE)
                .await
        );
        assert!(store.get("h/a").await.is_none());
        assert!(store.get("h/b").await.is_none());
        assert_eq!(indexed(&store), (0, 0));
    }

    #[tokio::test]
    async fn replacing_and_evicting_keep_the_indexes_exact() {
        let store = MemoryStore::new(64 << 10);
        store
            .put("h/x".into(), variants("h/x", &["old"], 10), FetchMark::NONE)
            .await;
        store
            .put("h/x".into(), variants("h/x", &["new"], 10), FetchMark::NONE)
            .await;
        assert_eq!(store.purge(&Purge::tags(["old"])).await, 0);
        for i in 0..100 {
            let path = format!("/o{i}");
            store
                .put(
                    format!("h{path}"),
                    variants(&format!("h{path}"), &["all"], 4096),
                    FetchMark::NONE,
                )
                .await;
        }
        let usage = store.usage();
        assert!(usage.evictions > 0 && usage.bytes <= 64 << 10, "{usage:?}");
        assert!(
            !store
                .put(
                    "h/big".into(),
                    variants("h/big", &[], 80 << 10),
                    FetchMark::NONE
                )
                .await,
            "an entry heavier than the store is refused, and says so"
        );
        assert!(store.get("h/big").await.is_none());
        let (paths, _) = indexed(&store);
        assert_eq!(paths as u64, usage.entries, "evicted entries are unindexed");
        let x_left = store.get("h/x").await.is_some();
        let tagged_all = usage.entries - u64::from(x_left);
        assert_eq!(
            store.purge(&Purge::tags(["all"])).await as u64,
            tagged_all,
            "a tag names only what is still stored"
        );
        assert_eq!(
            indexed(&store).1,
            usize::from(x_left),
            "only /x's tag is left"
        );
        // Over a stored key, a refused entry leaves nothing behind: never the older
        // response it was meant to replace.
        store
            .put("h/y".into(), variants("h/y", &["y"], 10), FetchMark::NONE)
            .await;
        assert!(
            !store
                .put(
                    "h/y".into(),
                    variants("h/y", &["y"], 80 << 10),
                    FetchMark::NONE
                )
                .await
        );
        assert!(store.get("h/y").await.is_none(), "the older /y is gone");
        assert_eq!(store.purge(&Purge::tags(["y"])).await, 0, "and unindexed");
    }
}
