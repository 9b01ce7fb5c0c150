//! Redis as a store shared by every instance of a service: one upstream fetch
//! fills it for the fleet, and each entry expires on its own. One server or a
//! Redis Cluster.
//!
//! ```no_run
//! # async fn run() -> Result<(), revalidate_cache::store::RedisError> {
//! use revalidate_cache::store::{RedisConfig, RedisStore};
//! use revalidate_cache::{Cache, MemoryStore};
//!
//! let shared = RedisStore::open(RedisConfig::new("redis://127.0.0.1:6379"))?;
//! // Alone: every lookup asks Redis. Under a local tier: see `Tiered`.
//! let cache = Cache::builder(shared).build();
//! # Ok(()) }
//! ```
//!
//! **Keys.** Entries are spread over *groups* (one on a single server, 16 on a
//! cluster) by a hash of their primary key. Everything a store or a purge touches
//! at once lives in one group, under one hash tag, so on a cluster it lies in one
//! hash slot and a script never fails with `CROSSSLOT`:
//!
//! | key | what |
//! |---|---|
//! | `{ns g}e:{primary key}` | the variants of one key ([`codec`]), expiring when no request may use them: the freshness left plus the longer stale window |
//! | `{ns g}p:{path}`, `{ns g}t:{tag}` | the group's primary keys stored under a path or a tag (sets, expiring with their longest entry) |
//! | `{ns g}paths` | the paths the group holds, for prefix purges (a sorted set read by range; paths whose entries all expired leave it at the next prefix purge, and it expires with the group's longest entry) |
//! | `{ns g}purges` | how many purges reached the group: the mark a fetch takes ([`FetchMark`]) |
//! | `{ns bus}purges`, `{ns bus}bus` | every purge numbered, and the stream that carries them to the instances' local tiers |
//! | `{ns bus}acks`, `{ns bus}beats` | what each instance applied, and when it last read |
//! | `{ns}v:{key}` | version counters ([`Versions`]) |
//!
//! Storing is one Lua script per entry: it checks that no purge reached the
//! group since the fetch began and writes the entry and its indexes. A purge is
//! one script per group (count it, remove or mark what it names), then one that
//! numbers it and appends it to the stream. Every command is bounded by the
//! configured timeout; a command that fails or times out is a miss (or a store
//! skipped), never an error to a client.

mod bus;
mod codec;
mod connection;
mod tiered;
mod versions;

pub use connection::RedisTarget;
pub use tiered::{BusStatus, Tiered};
pub use versions::{Versions, version_tag};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::{AsyncCommands, Script};

use super::contract::{FetchMark, Purge, Store, StoreUsage};
use crate::entry::Variants;
use connection::{Client, Connection};

/// How to reach Redis, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One server or a cluster.
    pub target: RedisTarget,
    /// Prefix of every key, so that several caches can share one Redis.
    pub namespace: String,
    /// The longest any command may take; then it counts as failed.
    pub timeout: Duration,
    /// Purges the stream keeps (older ones are trimmed; an instance that
    /// missed them drops its local tier).
    pub bus_length: u64,
    /// For `rediss://`: the PEM certificates of the authorities to trust instead
    /// of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisConfig {
    /// Defaults for the server at `url` (`redis://` or, with TLS, `rediss://`):
    /// namespace `revalidate:`, 50 ms per command, 10,000 purges kept, the
    /// system's roots for TLS.
    pub fn new(url: impl Into<String>) -> Self {
        Self::for_target(RedisTarget::Server(url.into()))
    }

    /// The same defaults for the cluster that any of `urls` belongs to.
    pub fn cluster<I: IntoIterator<Item = S>, S: Into<String>>(urls: I) -> Self {
        Self::for_target(RedisTarget::Cluster(
            urls.into_iter().map(Into::into).collect(),
        ))
    }

    fn for_target(target: RedisTarget) -> Self {
        Self {
            target,
            namespace: "revalidate:".into(),
            timeout: Duration::from_millis(50),
            bus_length: 10_000,
            ca_pem: None,
        }
    }

    /// Whether the URLs are ones this build can connect to (nothing is
    /// connected), and the namespace one that keeps the groups apart (no `{` or
    /// `}`, which would make one hash tag of them all).
    pub fn check(&self) -> Result<(), RedisError> {
        if self.namespace.contains(['{', '}']) {
            return Err(RedisError(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the namespace may not contain { or }",
            ))));
        }
        Client::open(&self.target, self.ca_pem.as_deref()).map(drop)?;
        Ok(())
    }

    /// Entry groups: one on a server, 16 on a cluster (spread over its nodes).
    fn groups(&self) -> u64 {
        match self.target {
            RedisTarget::Server(_) => 1,
            RedisTarget::Cluster(_) => 16,
        }
    }
}

/// Why Redis cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(#[from] redis::RedisError);

/// Redis as a [`Store`]. Cheap to clone: clones share one connection, which
/// reconnects by itself (with backoff) when Redis goes away.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    connection: Connection,
    config: RedisConfig,
    put: Script,
    purge: Script,
    announce: Script,
    up: AtomicBool,
    failures: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.config.target)
            .field("namespace", &self.inner.config.namespace)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Stores `ARGV[2]` under `KEYS[2]` for `ARGV[3]` ms, unless the group's purge
/// count `KEYS[1]` moved past the fetch's mark `ARGV[1]`; indexes it under its
/// path (`KEYS[3]`, `KEYS[4]`) and tags (`KEYS[5..]`). Every index lives at least
/// as long as its longest entry, and goes when none is left.
const PUT: &str = r"
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[3], 0, ARGV[5])
for i = 3, #KEYS do
  if i > 3 then redis.call('SADD', KEYS[i], ARGV[4]) end
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
";

/// Counts a purge in one group (`KEYS[1]`) and removes (or, soft, marks) every
/// entry of the group it names. `ARGV`: the group's key prefix, `1` for soft,
/// then the URLs, prefixes and tags, each list preceded by its length. The
/// group's keys are named from its prefix, all under the group's hash tag (one
/// slot). Returns how many entries it touched.
const PURGE: &str = r"
local group = ARGV[1]
local soft = ARGV[2] == '1'
redis.call('INCR', KEYS[1])
local primaries, seen, paths, tags = {}, {}, {}, {}
local function collect(set)
  for _, p in ipairs(redis.call('SMEMBERS', set)) do
    if not seen[p] then seen[p] = true; primaries[#primaries + 1] = p end
  end
end
local i = 3
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do paths[#paths + 1] = ARGV[i]; collect(group .. 'p:' .. ARGV[i]); i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  for _, path in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ARGV[i], '[' .. ARGV[i] .. '\255')) do
    if redis.call('EXISTS', group .. 'p:' .. path) == 1 then
      paths[#paths + 1] = path; collect(group .. 'p:' .. path)
    else
      -- Its entries all expired: the path leaves the index.
      redis.call('ZREM', KEYS[2], path)
    end
  end
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do tags[#tags + 1] = ARGV[i]; collect(group .. 't:' .. ARGV[i]); i = i + 1 end
local touched = 0
for _, p in ipairs(primaries) do
  local key = group .. 'e:' .. p
  if soft then
    if redis.call('EXISTS', key) == 1 then redis.call('SETRANGE', key, 1, '\1'); touched = touched + 1 end
  else
    touched = touched + redis.call('DEL', key)
  end
end
if not soft then
  for _, path in ipairs(paths) do redis.call('DEL', group .. 'p:' .. path); redis.call('ZREM', KEYS[2], path) end
  for _, tag in ipairs(tags) do redis.call('DEL', group .. 't:' .. tag) end
end
return touched
";

/// Numbers a purge (`KEYS[1]`) and appends it to the stream `KEYS[2]` (kept
/// to about `ARGV[2]` entries). Returns its number and stream id.
const ANNOUNCE: &str = r"
local number = redis.call('INCR', KEYS[1])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'number', number, 'purge', ARGV[1])
return {number, id}
";

// The purge script marks a soft purge at offset 1 of the value.
const _: () = assert!(codec::FLAGS_OFFSET == 1);

/// A purge as Redis applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Its number in the sequence of purges.
    pub(crate) number: u64,
    /// Its id in the stream.
    pub(crate) id: String,
    /// Entries it removed or marked.
    pub(crate) touched: usize,
}

impl RedisStore {
    /// A store on the Redis `config` names. Connects lazily: a Redis that is
    /// down now is tried again on every use, with backoff.
    pub fn open(config: RedisConfig) -> Result<Self, RedisError> {
        config.check()?;
        let client = Client::open(&config.target, config.ca_pem.as_deref())?;
        let connection = client.shared(config.timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                connection,
                config,
                put: Script::new(PUT),
                purge: Script::new(PURGE),
                announce: Script::new(ANNOUNCE),
                up: AtomicBool::new(true),
                failures: AtomicU64::new(0),
            }),
        })
    }

    /// Whether the last command succeeded.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Commands that failed or timed out so far.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    pub(crate) fn connection(&self) -> Connection {
        self.inner.connection.clone()
    }

    /// The hash tag, and so the key prefix, of entry group `group`.
    fn group_prefix(&self, group: u64) -> String {
        format!("{{{}g{group}}}", self.inner.config.namespace)
    }

    /// The group of `primary`.
    fn group_of(&self, primary: &str) -> u64 {
        twox_hash::XxHash3_64::oneshot(primary.as_bytes()) % self.inner.config.groups()
    }

    /// A key of the bus (all under one hash tag).
    pub(crate) fn bus_key(&self, name: &str) -> String {
        format!("{{{}bus}}{name}", self.inner.config.namespace)
    }

    /// A key outside the groups and the bus.
    pub(crate) fn plain_key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}{name}", self.inner.config.namespace)
    }

    /// Runs `command` within the timeout, recording whether Redis answered.
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        self.run_within(what, self.inner.config.timeout, command)
            .await
    }

    /// The time a purge script may take: a purge may name many entries, and
    /// one that times out is sent again later.
    fn purge_timeout(&self) -> Duration {
        self.inner.config.timeout.max(Duration::from_millis(250))
    }

    /// [`RedisStore::run`] within `timeout`.
    pub(crate) async fn run_within<T>(
        &self,
        what: &'static str,
        timeout: Duration,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let outcome = tokio::time::timeout(timeout, command).await;
        let (result, error) = match outcome {
            Ok(Ok(value)) => (Some(value), None),
            Ok(Err(error)) => (None, Some(error.to_string())),
            Err(_) => (None, Some("timed out".to_string())),
        };
        let was_up = self.inner.up.swap(result.is_some(), Ordering::Relaxed);
        if let Some(error) = error {
            self.inner.failures.fetch_add(1, Ordering::Relaxed);
            // Once per outage at warn (a refused certificate is a configuration
            // error an operator must see), every failure at debug.
            if was_up {
                tracing::warn!(what, %error, "redis unavailable; serving without it");
            } else {
                tracing::debug!(what, %error, "redis command failed");
            }
        } else if !was_up {
            tracing::info!("redis available again");
        }
        result
    }

    /// Applies `purge` in every group, then numbers it and appends it to the bus.
    pub(crate) async fn apply_purge(&self, purge: &Purge) -> Option<Applied> {
        let message = serde_json::to_string(purge).ok()?;
        let mut groups = tokio::task::JoinSet::new();
        for group in 0..self.inner.config.groups() {
            let store = self.clone();
            let purge = purge.clone();
            groups.spawn(async move { store.purge_group(group, &purge).await });
        }
        let mut touched = 0;
        while let Some(done) = groups.join_next().await {
            touched += done.ok().flatten()?;
        }
        let mut invocation = self.inner.announce.prepare_invoke();
        invocation
            .key(self.bus_key("purges"))
            .key(self.bus_key("bus"))
            .arg(message)
            .arg(self.inner.config.bus_length);
        let mut connection = self.connection();
        let (number, id): (u64, String) = self
            .run_within(
                "announce",
                self.purge_timeout(),
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Some(Applied {
            number,
            id,
            touched,
        })
    }

    async fn purge_group(&self, group: u64, purge: &Purge) -> Option<usize> {
        let prefix = self.group_prefix(group);
        let mut invocation = self.inner.purge.prepare_invoke();
        invocation
            .key(format!("{prefix}purges"))
            .key(format!("{prefix}paths"))
            .arg(&prefix)
            .arg(if purge.soft { "1" } else { "0" });
        for list in [&purge.urls, &purge.prefixes, &purge.tags] {
            invocation.arg(list.len());
            for item in list {
                invocation.arg(item);
            }
        }
        let mut connection = self.connection();
        self.run_within(
            "purge",
            self.purge_timeout(),
            invocation.invoke_async(&mut connection),
        )
        .await
    }
}

/// How long Redis keeps `variants`: while any of them is fresh or may be served
/// stale (at least a second).
fn lifetime_in_redis(variants: &Variants) -> Duration {
    variants
        .entries()
        .iter()
        .map(|e| {
            e.lifetime().saturating_sub(e.initial_age())
                + e.stale_while_revalidate().max(e.stale_if_error())
        })
        .max()
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

impl Store for RedisStore {
    async fn get(&self, primary: &str) -> Option<Variants> {
        let mut connection = self.connection();
        let key = format!("{}e:{primary}", self.group_prefix(self.group_of(primary)));
        let value: Option<Vec<u8>> = self.run("get", connection.get(&key)).await?;
        codec::decode(primary, Bytes::from(value?))
    }

    async fn fetch_mark(&self, primary: &str) -> FetchMark {
        let mut connection = self.connection();
        let key = format!("{}purges", self.group_prefix(self.group_of(primary)));
        match self
            .run("mark", connection.get::<_, Option<u64>>(&key))
            .await
        {
            Some(count) => FetchMark::at(count.unwrap_or(0)),
            None => FetchMark::NONE,
        }
    }

    async fn put(&self, primary: String, variants: Variants, since: FetchMark) -> bool {
        // Without a mark, a purge may have happened unseen since the fetch began.
        let (Some(mark), Some(path)) = (since.position(), variants.path()) else {
            return false;
        };
        let prefix = self.group_prefix(self.group_of(&primary));
        let mut invocation = self.inner.put.prepare_invoke();
        invocation
            .key(format!("{prefix}purges"))
            .key(format!("{prefix}e:{primary}"))
            .key(format!("{prefix}paths"))
            .key(format!("{prefix}p:{path}"));
        let mut tags: Vec<&String> = variants.tags().collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            invocation.key(format!("{prefix}t:{tag}"));
        }
        invocation
            .arg(mark)
            .arg(codec::encode(&variants).as_ref())
            .arg(u64::try_from(lifetime_in_redis(&variants).as_millis()).unwrap_or(u64::MAX))
            .arg(&primary)
            .arg(path);
        let mut connection = self.connection();
        let stored: Option<u8> = self
            .run("put", invocation.invoke_async(&mut connection))
            .await;
        stored == Some(1)
    }

    async fn purge(&self, purge: &Purge) -> usize {
        self.apply_purge(purge).await.map_or(0, |a| a.touched)
    }

    /// Redis's own occupancy is not tracked here (see its `INFO memory`).
    fn usage(&self) -> StoreUsage {
        StoreUsage::default()
    }
}
