//! The cache handle: configuration, store, routes, counters and purges.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_layer::Layer;

use crate::clock::{Clock, SystemClock};
use crate::histogram::HistogramSnapshot;
use crate::invalidation::InvalidationLog;
use crate::routes::Routes;
use crate::service::CacheService;
use crate::shared::{CacheConfig, Shared};
use crate::stats::{PurgeRecord, RouteCount, RouteTraffic, Snapshot};
use crate::store::{EntryFilter, EntryListing, MemoryStore, Purge, Store, StoreUsage};

/// A shared HTTP cache (RFC 9111). Cloning gives another handle to the same cache.
///
/// ```
/// use revalidate_cache::{Cache, MemoryStore};
///
/// let cache = Cache::builder(MemoryStore::new(256 * 1024 * 1024)).build();
/// let layer = cache.layer(); // wrap an upstream service with it
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct Cache<St = MemoryStore> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for Cache<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// `# HELP` of `revalidate_upstream_duration_seconds`.
const UPSTREAM_DURATION_HELP: &str =
    "Time from sending a request upstream to its response head, per request the cache sent.";

/// Builds a [`Cache`].
#[derive(Debug)]
pub struct CacheBuilder<St> {
    store: St,
    routes: Routes,
    clock: Arc<dyn Clock>,
    config: CacheConfig,
}

impl<St: Store> CacheBuilder<St> {
    /// Per-route policies.
    pub fn routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// The clock (a [`MockClock`](crate::MockClock) in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Limits.
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// The cache.
    pub fn build(self) -> Cache<St> {
        // Made now rather than by the first answer.
        crate::headers::prepare_age_values();
        let routes = self.routes.len();
        Cache {
            shared: Arc::new(Shared {
                store: self.store,
                routes: self.routes,
                clock: self.clock,
                log: Arc::new(InvalidationLog::new(self.config.invalidation_horizon)),
                coalescer: Arc::default(),
                retired: Arc::default(),
                stats: Arc::default(),
                traffic: RouteTraffic::new(routes),
                config: self.config,
            }),
        }
    }
}

impl<St: Store> Cache<St> {
    /// Starts building a cache over `store`.
    pub fn builder(store: St) -> CacheBuilder<St> {
        CacheBuilder {
            store,
            routes: Routes::default(),
            clock: Arc::new(SystemClock),
            config: CacheConfig::default(),
        }
    }

    /// The layer that puts this cache in front of a service.
    pub fn layer(&self) -> CacheLayer<St> {
        CacheLayer {
            cache: self.clone(),
        }
    }

    /// Invalidates what `purge` names; returns the number of keys touched.
    ///
    /// The purge is recorded before it is applied, so a response whose fetch began
    /// before it is never stored after it.
    ///
    /// It runs to completion even if the future awaiting it is dropped.
    pub async fn purge(&self, purge: &Purge) -> usize {
        self.shared.purge_to_completion(purge.clone()).await
    }

    /// Counters.
    pub fn stats(&self) -> Snapshot {
        self.shared.stats.snapshot()
    }

    /// Responses not stored, by reason (every reason, zeros included).
    pub fn not_stored(&self) -> Vec<(crate::stats::NotStored, u64)> {
        self.shared.stats.not_stored_by_reason()
    }

    /// Sets the `metrics` facade's counters and store gauges to their current
    /// values. Counters are summed on demand rather than sent on every request
    /// (see [`Stats`]), so call this before an exporter renders, as
    /// `revalidate serve` does on every scrape of `/metrics`.
    pub fn publish_metrics(&self) {
        self.shared.stats.publish();
        let usage = self.usage();
        metrics::gauge!("revalidate_store_entries").set(usage.entries as f64);
        metrics::gauge!("revalidate_store_bytes").set(usage.bytes as f64);
        metrics::counter!("revalidate_store_evictions_total").absolute(usage.evictions);
        for count in self.route_traffic() {
            metrics::counter!("revalidate_route_requests_total", "route" => count.route.clone())
                .absolute(count.requests);
            metrics::counter!("revalidate_route_served_from_cache_total", "route" => count.route)
                .absolute(count.from_cache);
        }
    }

    /// Appends the histograms kept outside the `metrics` facade (see
    /// [`crate::histogram`]) in the Prometheus text format, `# HELP` and `# TYPE`
    /// included: `revalidate_upstream_duration_seconds`. Append it to what the
    /// exporter renders.
    pub fn write_histograms(&self, out: &mut String) {
        const NAME: &str = "revalidate_upstream_duration_seconds";
        crate::histogram::write_family_header(NAME, UPSTREAM_DURATION_HELP, out);
        self.upstream_latency().write_prometheus(NAME, "", out);
    }

    /// How long the upstream took to answer the requests sent to it.
    pub fn upstream_latency(&self) -> HistogramSnapshot {
        self.shared.stats.upstream_latency()
    }

    /// The last purges (at most [`RECENT_PURGES`](crate::stats::RECENT_PURGES)),
    /// newest first.
    pub fn recent_purges(&self) -> Vec<PurgeRecord> {
        self.shared.stats.recent_purges()
    }

    /// Requests per route since the routes in force were configured, in the
    /// routes' order, `(default)` (paths no route matches) last.
    pub fn route_traffic(&self) -> Vec<RouteCount> {
        let names = self
            .shared
            .routes
            .iter()
            .map(|route| route.pattern.as_str().to_string())
            .chain(std::iter::once("(default)".to_string()));
        names
            .zip(self.shared.traffic.totals())
            .map(|(route, (requests, from_cache))| RouteCount {
                route,
                requests,
                from_cache,
            })
            .collect()
    }

    /// Store occupancy.
    pub fn usage(&self) -> StoreUsage {
        self.shared.store.usage()
    }

    /// Up to `limit` of the stored responses `filter` selects, with their age and
    /// freshness by this cache's clock; `None` when the store cannot list them.
    /// The prefix is normalized as a purge's is. The values of credentials a
    /// response varies on (`Authorization`, `Cookie`, a route's user scope) are
    /// shown as `(redacted)`.
    pub fn entries(&self, filter: &EntryFilter, limit: usize) -> Option<EntryListing> {
        let mut filter = filter.clone();
        if let Some(prefix) = &mut filter.prefix {
            *prefix = crate::key::normalize_target(prefix, &crate::key::QueryRules::default());
        }
        let mut listing = self
            .shared
            .store
            .entries(&filter, limit, self.shared.clock.now())?;
        for entry in &mut listing.entries {
            let path = entry.path.split('?').next().unwrap_or("/");
            let (route, _) = self.shared.routes.resolve(path);
            if let Some(scope) = &self.shared.routes.policy(route).user_scope
                && let Some(Some(value)) = entry.vary.get_mut(scope.as_str())
            {
                *value = crate::store::REDACTED.to_string();
            }
        }
        Some(listing)
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.shared.routes
    }

    /// A cache over the same store with new routes and limits, for a configuration
    /// reload: its purge log, coalescing and counters are this cache's, so requests
    /// still running on this one and those starting on the new one see each
    /// other's purges and misses.
    ///
    /// Entries stored under a route whose key recipe or tags differ in `routes`
    /// would be found under the wrong key, or missed by the new invalidations: the
    /// new cache purges them (through the shared log, so a response still being
    /// fetched under the old recipe is not stored after it) before it is returned.
    /// This cache (with the earlier ones of the same recipe) then stores nothing
    /// more, so that a request it still serves cannot store under the old recipe
    /// after the purge; and the new cache gets
    /// coalescing of its own, so that none of its requests is answered by a fetch
    /// made under the old recipe. Returns the new cache and the number of keys
    /// that purge touched.
    ///
    /// ```
    /// use revalidate_cache::{Cache, CacheConfig, MemoryStore, Routes};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache = Cache::builder(MemoryStore::new(1 << 20)).build();
    /// let (next, dropped) = cache.reconfigured(Routes::default(), CacheConfig::default()).await;
    /// assert_eq!(dropped, 0);
    /// # let _ = next;
    /// # });
    /// ```
    pub async fn reconfigured(&self, routes: Routes, config: CacheConfig) -> (Cache<St>, usize)
    where
        St: Store + Clone,
    {
        let changed = self.shared.routes.changed_keys(&routes);
        if changed.is_some() {
            // Before the purge is recorded: a store that checks after it sees this.
            self.shared.retired.store(true, Ordering::Release);
        }
        let traffic = RouteTraffic::new(routes.len());
        let next = Cache {
            shared: Arc::new(Shared {
                store: self.shared.store.clone(),
                routes,
                clock: self.shared.clock.clone(),
                log: self.shared.log.clone(),
                coalescer: match changed {
                    Some(_) => Arc::default(),
                    None => self.shared.coalescer.clone(),
                },
                retired: match changed {
                    Some(_) => Arc::default(),
                    None => self.shared.retired.clone(),
                },
                stats: self.shared.stats.clone(),
                traffic,
                config,
            }),
        };
        let dropped = match changed {
            Some(purge) => next.purge(&purge).await,
            None => 0,
        };
        (next, dropped)
    }
}

/// Applies a [`Cache`] to a service.
#[derive(Debug, Clone)]
pub struct CacheLayer<St = MemoryStore> {
    cache: Cache<St>,
}

impl<S, St: Store> Layer<S> for CacheLayer<St> {
    type Service = CacheService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            shared: self.cache.shared.clone(),
        }
    }
}
