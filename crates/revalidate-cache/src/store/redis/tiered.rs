//! Two tiers: each instance's [`MemoryStore`] over the [`RedisStore`] that all
//! instances share, kept coherent by the invalidation bus.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::RedisStore;
use super::bus::{self, BusState};
use crate::entry::Variants;
use crate::store::contract::{
    EntryFilter, EntryListing, FetchMark, LookupNow, Purge, Store, StoreUsage,
};
use crate::store::memory::MemoryStore;

/// A local tier over a shared one.
///
/// - A lookup is answered from the local tier while the bus trusts it, else from
///   Redis, and what Redis had fills the local tier: a miss that another instance
///   already fetched costs one Redis read, not an upstream request.
/// - A store goes to both tiers; Redis takes it only if no purge happened since
///   the fetch began (and the local tier likewise for purges it applied).
/// - A purge is applied in Redis, carried by the bus to every instance, and
///   returns once every live instance applied it, or once any that did not can no
///   longer serve its local tier (the invalidation bus's lease): after it, no instance serves what
///   it named.
///
/// ```no_run
/// # async fn run() -> Result<(), revalidate_cache::store::RedisError> {
/// use std::time::{Duration, SystemTime};
/// use revalidate_cache::store::{RedisConfig, RedisStore, Tiered};
/// use revalidate_cache::{Cache, MemoryStore};
///
/// let shared = RedisStore::open(RedisConfig::new("redis://127.0.0.1:6379"))?;
/// let store = Tiered::start(MemoryStore::new(256 << 20), shared, Duration::from_millis(500));
/// let cache = Cache::builder(store).build();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Tiered {
    local: MemoryStore,
    shared: RedisStore,
    bus: Arc<BusState>,
}

/// What the bus of a [`Tiered`] store is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStatus {
    /// Whether the local tier is being served (the bus is connected and caught up).
    pub trusted: bool,
    /// Whether Redis answered the last command.
    pub redis_up: bool,
    /// The number of the last purge applied here.
    pub applied: u64,
    /// Times the local tier was dropped (on connecting, or after missed purges).
    pub drops: u64,
    /// Purges whose wait for other instances ran out.
    pub fenced_waits: u64,
    /// Redis commands that failed or timed out.
    pub redis_failures: u64,
}

impl Tiered {
    /// `local` over `shared`, with the bus started on the current tokio runtime.
    /// `lease` bounds how long an instance cut off from Redis keeps serving its
    /// local tier, and so how long a purge may wait for it.
    pub fn start(local: MemoryStore, shared: RedisStore, lease: Duration) -> Self {
        let bus = Arc::new(BusState::new(lease.max(Duration::from_millis(20))));
        tokio::spawn(bus::run(bus.clone(), shared.clone(), local.clone()));
        Self { local, shared, bus }
    }

    /// The shared tier (for its version counters, say).
    pub fn shared(&self) -> &RedisStore {
        &self.shared
    }

    /// What the bus is doing.
    pub fn status(&self) -> BusStatus {
        let applied = self.bus.applied.load(Ordering::Relaxed);
        BusStatus {
            trusted: self.bus.trusted(),
            redis_up: self.shared.is_up(),
            applied,
            drops: self.bus.drops.load(Ordering::Relaxed),
            fenced_waits: self.bus.fenced_waits.load(Ordering::Relaxed),
            redis_failures: self.shared.failures(),
        }
    }

    /// How many purges Redis has numbered that this instance has not applied
    /// yet; `None` when Redis does not answer.
    pub async fn bus_lag(&self) -> Option<u64> {
        let mut connection = self.shared.connection();
        let key = self.shared.bus_key("purges");
        let numbered: Option<u64> = self
            .shared
            .run("lag", redis::AsyncCommands::get(&mut connection, &key))
            .await?;
        let applied = self.bus.applied.load(Ordering::Acquire);
        Some(numbered.unwrap_or(0).saturating_sub(applied))
    }
}

impl Store for Tiered {
    fn get_now(&self, primary: &str) -> LookupNow {
        match self.bus.trusted().then(|| self.local.get_now(primary)) {
            Some(LookupNow::Found(variants)) => LookupNow::Found(variants),
            // Not here: Redis may have it.
            _ => LookupNow::Unknown,
        }
    }

    async fn get(&self, primary: &str) -> Option<Variants> {
        if self.bus.trusted()
            && let LookupNow::Found(variants) = self.local.get_now(primary)
        {
            return Some(variants);
        }
        let generation = self.bus.generation();
        let variants = self.shared.get(primary).await?;
        // Filled only if the bus removed nothing here meanwhile (a purge may
        // have named what Redis returned just before it).
        self.local.put_if_unchanged(
            primary.to_string(),
            variants.clone(),
            &self.bus.generation,
            generation,
        );
        Some(variants)
    }

    async fn fetch_mark(&self, primary: &str) -> FetchMark {
        let generation = self.bus.generation();
        self.shared.fetch_mark(primary).await.with_local(generation)
    }

    async fn put(&self, primary: String, variants: Variants, since: FetchMark) -> bool {
        // Redis is written in the background: the cache stores under a lock, and a
        // round trip there would serialize every store behind it.
        let shared = self.shared.clone();
        let (key, copy) = (primary.clone(), variants.clone());
        tokio::spawn(async move { shared.put(key, copy, since).await });
        since.local().is_some_and(|generation| {
            self.local
                .put_if_unchanged(primary, variants, &self.bus.generation, generation)
        })
    }

    /// The local tier only: the cache calls it under its lock. Redis and the
    /// other instances get the purge from [`Store::spread`].
    async fn purge(&self, purge: &Purge) -> usize {
        self.local.purge_advancing(purge, &self.bus.generation)
    }

    /// Applies the purge in Redis and on the bus, then waits until this
    /// instance's bus applied it (whatever the local tier took from Redis before
    /// it is then gone) and every live instance acknowledged it. It runs in a
    /// task of its own: a client that goes away cannot leave it half done.
    async fn spread(&self, purge: &Purge) -> usize {
        let (shared, bus, purge) = (self.shared.clone(), self.bus.clone(), purge.clone());
        let task = tokio::spawn(async move {
            let Some(applied) = shared.apply_purge(&purge).await else {
                // Sent by the bus when Redis answers again; meanwhile the local
                // tier is not served.
                bus.unsent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(purge);
                bus.distrust();
                return 0;
            };
            bus.applied_here(applied.number).await;
            bus::wait_for_acknowledgements(&shared, &bus, &applied.id).await;
            applied.touched
        });
        task.await.unwrap_or(0)
    }

    fn usage(&self) -> StoreUsage {
        self.local.usage()
    }

    /// The local tier's: what this instance holds.
    fn entries(&self, filter: &EntryFilter, limit: usize, now: SystemTime) -> Option<EntryListing> {
        self.local.entries(filter, limit, now)
    }
}
