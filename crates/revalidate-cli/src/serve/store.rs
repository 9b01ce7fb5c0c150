//! The proxy's store: the in-memory tier alone, or over Redis (`--redis`,
//! `--redis-cluster`).

use std::time::{Duration, SystemTime};

use revalidate_cache::store::{
    BusStatus, FetchMark, LookupNow, RedisConfig, RedisError, RedisStore, Tiered, Variants,
    Versions,
};
use revalidate_cache::{EntryFilter, EntryListing, MemoryStore, Purge, Store, StoreUsage};

use super::config::ServeConfig;

/// Why the configured store cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis as configured cannot be used.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The CA file for `rediss://` cannot be read.
    #[error("cannot read the Redis CA file {0}")]
    CaFile(String),
}

/// Where the proxy keeps responses. A decision made once at start, so an enum:
/// a hit pays one match, not a virtual call.
#[derive(Debug, Clone)]
pub enum ProxyStore {
    /// This process's memory only.
    Memory(MemoryStore),
    /// This process's memory over Redis, shared with every other instance.
    Tiered(Tiered),
}

impl ProxyStore {
    /// The store `config` asks for; Redis is connected lazily, and the
    /// invalidation bus started on the current runtime.
    pub fn of(config: &ServeConfig) -> Result<Self, StoreError> {
        let local = MemoryStore::new(config.max_bytes);
        let mut redis = match &config.redis.url {
            Some(url) => RedisConfig::new(url.clone()),
            None if !config.redis.cluster.is_empty() => {
                RedisConfig::cluster(config.redis.cluster.clone())
            }
            None => return Ok(Self::Memory(local)),
        };
        redis.namespace = config.redis.namespace.clone();
        if let Some(path) = &config.redis.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::CaFile(format!("{}: {e}", path.display())))?;
            redis.ca_pem = Some(pem);
        }
        redis.timeout = config.redis.timeout.max(Duration::from_millis(1));
        let shared = RedisStore::open(redis)?;
        Ok(Self::Tiered(Tiered::start(
            local,
            shared,
            config.redis.lease,
        )))
    }

    /// The version counters, with Redis in use.
    pub fn versions(&self) -> Option<Versions> {
        match self {
            Self::Memory(_) => None,
            Self::Tiered(tiered) => Some(tiered.shared().versions()),
        }
    }

    /// Purges numbered in Redis but not applied here yet, with Redis in use and
    /// answering.
    pub async fn bus_lag(&self) -> Option<u64> {
        match self {
            Self::Memory(_) => None,
            Self::Tiered(tiered) => tiered.bus_lag().await,
        }
    }

    /// What the invalidation bus is doing, with Redis in use.
    pub fn bus(&self) -> Option<BusStatus> {
        match self {
            Self::Memory(_) => None,
            Self::Tiered(tiered) => Some(tiered.status()),
        }
    }
}

impl Store for ProxyStore {
    async fn get(&self, primary: &str) -> Option<Variants> {
        match self {
            Self::Memory(store) => store.get(primary).await,
            Self::Tiered(store) => store.get(primary).await,
        }
    }

    fn get_now(&self, primary: &str) -> LookupNow {
        match self {
            Self::Memory(store) => store.get_now(primary),
            Self::Tiered(store) => store.get_now(primary),
        }
    }

    async fn fetch_mark(&self, primary: &str) -> FetchMark {
        match self {
            Self::Memory(store) => store.fetch_mark(primary).await,
            Self::Tiered(store) => store.fetch_mark(primary).await,
        }
    }

    async fn put(&self, primary: String, variants: Variants, since: FetchMark) -> bool {
        match self {
            Self::Memory(store) => store.put(primary, variants, since).await,
            Self::Tiered(store) => store.put(primary, variants, since).await,
        }
    }

    async fn purge(&self, purge: &Purge) -> usize {
        match self {
            Self::Memory(store) => store.purge(purge).await,
            Self::Tiered(store) => store.purge(purge).await,
        }
    }

    async fn spread(&self, purge: &Purge) -> usize {
        match self {
            Self::Memory(store) => store.spread(purge).await,
            Self::Tiered(store) => store.spread(purge).await,
        }
    }

    fn usage(&self) -> StoreUsage {
        match self {
            Self::Memory(store) => store.usage(),
            Self::Tiered(store) => store.usage(),
        }
    }

    fn entries(&self, filter: &EntryFilter, limit: usize, now: SystemTime) -> Option<EntryListing> {
        match self {
            Self::Memory(store) => store.entries(filter, limit, now),
            Self::Tiered(store) => store.entries(filter, limit, now),
        }
    }
}
