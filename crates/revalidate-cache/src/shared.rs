//! The state every copy of a cache's service shares: its store, routes, clock,
//! purge log, coalescer, counters and limits. The service's modules add their
//! steps to [`Shared`] in `impl` blocks of their own; nothing here depends on them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::clock::Clock;
use crate::coalesce::Coalescer;
use crate::invalidation::InvalidationLog;
use crate::routes::Routes;
use crate::stats::{RouteTraffic, Stats};

/// Limits of a cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The largest body stored; larger ones stream through.
    pub max_object_bytes: usize,
    /// How long a coalesced request waits for the leader's fetch.
    pub coalesce_timeout: Duration,
    /// Variants kept per primary key (distinct `Vary` values).
    pub max_variants: usize,
    /// How long purges are remembered to refuse responses fetched before them: at
    /// least the upstream timeout.
    pub invalidation_horizon: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_object_bytes: 8 * 1024 * 1024,
            coalesce_timeout: Duration::from_secs(10),
            max_variants: 16,
            invalidation_horizon: Duration::from_secs(120),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) routes: Routes,
    pub(crate) clock: Arc<dyn Clock>,
    /// Shared with the caches that [`Cache::reconfigured`](crate::Cache::reconfigured)
    /// makes: a purge recorded by one refuses the fetches of every generation.
    pub(crate) log: Arc<InvalidationLog>,
    /// Shared likewise: a miss in flight under one generation is joined by the
    /// next, unless a key recipe changed between them.
    pub(crate) coalescer: Arc<Coalescer>,
    /// Set when a reconfiguration changed a key recipe or tags: from then on this
    /// cache stores nothing, since it would key (or tag) by the old recipe; its
    /// requests in flight are still answered. Shared, as the coalescer is, with
    /// the generations before it of the same recipe.
    pub(crate) retired: Arc<AtomicBool>,
    /// Shared likewise: the counters go on across reloads.
    pub(crate) stats: Arc<Stats>,
    /// Per route of `routes`: made afresh with them.
    pub(crate) traffic: RouteTraffic,
    pub(crate) config: CacheConfig,
}
