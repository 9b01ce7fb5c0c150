use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use moka::future::Cache;
use moka::notification::RemovalCause;

use super::{Purge, Store, StoreUsage};
use crate::entry::Variants;

/// The in-memory tier: moka (TinyLFU admission, LRU eviction) bounded by a byte
/// budget charged on real body and header bytes, with tag and path indexes so a
/// purge touches only the entries it names.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    cache: Cache<String, Slot>,
    index: Arc<Mutex<Index>>,
    evictions: Arc<AtomicU64>,
    next_generation: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
struct Slot {
    /// Distinguishes this value from a later one under the same key, so a late
    /// eviction notice never unindexes its replacement.
    generation: u64,
    variants: Arc<Variants>,
}

#[derive(Debug, Default)]
struct Index {
    by_tag: HashMap<String, HashSet<String>>,
    by_path: BTreeMap<String, HashSet<String>>,
    entries: HashMap<String, Indexed>,
}

#[derive(Debug)]
struct Indexed {
    generation: u64,
    tags: Vec<String>,
    path: String,
}

fn unlink(map_remove: &mut HashMap<String, HashSet<String>>, key: &str, primary: &str) {
    if let Some(set) = map_remove.get_mut(key) {
        set.remove(primary);
        if set.is_empty() {
            map_remove.remove(key);
        }
    }
}

impl Index {
    fn add(&mut self, primary: &str, generation: u64, variants: &Variants) {
        self.unindex(primary);
        let mut tags: Vec<String> = variants.tags().cloned().collect();
        tags.sort();
        tags.dedup();
        let path = variants
            .entries
            .first()
            .map(|e| e.path.clone())
            .unwrap_or_default();
        for tag in &tags {
            self.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(primary.to_string());
        }
        self.by_path
            .entry(path.clone())
            .or_default()
            .insert(primary.to_string());
        self.entries.insert(
            primary.to_string(),
            Indexed {
                generation,
                tags,
                path,
            },
        );
    }

    fn remove_if_current(&mut self, primary: &str, generation: u64) {
        if self
            .entries
            .get(primary)
            .is_some_and(|e| e.generation == generation)
        {
            self.unindex(primary);
        }
    }

    fn unindex(&mut self, primary: &str) {
        let Some(old) = self.entries.remove(primary) else {
            return;
        };
        for tag in &old.tags {
            unlink(&mut self.by_tag, tag, primary);
        }
        if let Some(set) = self.by_path.get_mut(&old.path) {
            set.remove(primary);
            if set.is_empty() {
                self.by_path.remove(&old.path);
            }
        }
    }

    /// Primary keys named by a purge.
    fn select(&self, purge: &Purge) -> HashSet<String> {
        let mut out = HashSet::new();
        for url in &purge.urls {
            out.extend(self.by_path.get(url).into_iter().flatten().cloned());
        }
        for prefix in &purge.prefixes {
            for (path, primaries) in self.by_path.range(prefix.clone()..) {
                if !path.starts_with(prefix.as_str()) {
                    break;
                }
                out.extend(primaries.iter().cloned());
            }
        }
        for tag in &purge.tags {
            out.extend(self.by_tag.get(tag).into_iter().flatten().cloned());
        }
        out
    }
}

impl MemoryStore {
    /// A store holding at most `budget_bytes` of responses.
    pub fn new(budget_bytes: u64) -> Self {
        let index = Arc::new(Mutex::new(Index::default()));
        let evictions = Arc::new(AtomicU64::new(0));
        let listener_index = index.clone();
        let listener_evictions = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|key: &String, slot: &Slot| {
                u32::try_from(key.len() + slot.variants.weight()).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |key: Arc<String>, slot: Slot, cause: RemovalCause| {
                if cause == RemovalCause::Size {
                    listener_evictions.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("revalidate_store_evictions_total").increment(1);
                }
                if cause != RemovalCause::Replaced {
                    lock(&listener_index).remove_if_current(&key, slot.generation);
                }
            })
            .build();
        Self {
            cache,
            index,
            evictions,
            next_generation: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Applies moka's deferred bookkeeping now (eviction, counts); tests and
    /// statistics call it for exact figures.
    pub async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    // A panic while holding the lock cannot leave the index half-updated in a way
    // that matters more than losing it, so a poisoned lock is simply reused.
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store for MemoryStore {
    async fn get(&self, primary: &str) -> Option<Arc<Variants>> {
        self.cache.get(primary).await.map(|slot| slot.variants)
    }

    async fn put(&self, primary: String, variants: Arc<Variants>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        lock(&self.index).add(&primary, generation, &variants);
        self.cache
            .insert(
                primary,
                Slot {
                    generation,
                    variants,
                },
            )
            .await;
    }

    async fn purge(&self, purge: &Purge) -> usize {
        let selected = lock(&self.index).select(purge);
        for primary in &selected {
            if purge.soft {
                if let Some(slot) = self.cache.get(primary).await {
                    slot.variants.entries.iter().for_each(|e| e.soft_purge());
                }
            } else {
                lock(&self.index).unindex(primary);
                self.cache.invalidate(primary).await;
            }
        }
        selected.len()
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}
