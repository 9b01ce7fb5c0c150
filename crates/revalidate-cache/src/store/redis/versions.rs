//! Version counters in Redis: one number per resource, bumped by every write,
//! shared by every instance and by apps in any language (a write path runs
//! `INCR {namespace}v:{key}`).

use revalidate::{EntityTag, Validators};

use super::RedisStore;

/// Version counters, on the connection of a [`RedisStore`].
///
/// ```no_run
/// # async fn run() -> Result<(), revalidate_cache::store::RedisError> {
/// use revalidate_cache::store::{RedisConfig, RedisStore};
///
/// let versions = RedisStore::open(RedisConfig::new("redis://127.0.0.1:6379"))?.versions();
/// let after_write = versions.bump("user:1").await;          // in the write path
/// let validators = versions.validators("user:1").await;     // in a validator source
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Versions {
    redis: RedisStore,
}

impl RedisStore {
    /// The version counters under this store's namespace.
    pub fn versions(&self) -> Versions {
        Versions {
            redis: self.clone(),
        }
    }
}

impl Versions {
    /// The Redis key of the counter `key`.
    pub fn redis_key(&self, key: &str) -> String {
        self.redis.plain_key("v:", key)
    }

    /// The current version of `key` (0 before its first bump); `None` when Redis
    /// does not answer in time.
    pub async fn current(&self, key: &str) -> Option<u64> {
        let mut connection = self.redis.connection();
        let redis_key = self.redis_key(key);
        let value: Option<u64> = self
            .redis
            .run(
                "version",
                redis::AsyncCommands::get(&mut connection, &redis_key),
            )
            .await?;
        Some(value.unwrap_or(0))
    }

    /// Counts a write to `key`; returns the new version, or `None` when Redis
    /// does not answer in time.
    pub async fn bump(&self, key: &str) -> Option<u64> {
        let mut connection = self.redis.connection();
        let redis_key = self.redis_key(key);
        self.redis
            .run(
                "bump",
                redis::AsyncCommands::incr(&mut connection, &redis_key, 1u64),
            )
            .await
    }

    /// The validators of `key`'s current version: the strong tag `"v{version}"`.
    pub async fn validators(&self, key: &str) -> Option<Validators> {
        self.current(key)
            .await
            .map(|version| Validators::new().etag(version_tag(version)))
    }
}

/// The entity tag of `version`: `"v{version}"`, as `Validators::versioned` makes it.
pub fn version_tag(version: u64) -> EntityTag {
    EntityTag::strong(format!("v{version}")).expect("a v and digits are a valid tag")
}
