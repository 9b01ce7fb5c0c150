//! Counters of what the cache did: read by `/stats`, published through the
//! `metrics` facade for Prometheus.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::histogram::{HistogramSnapshot, LatencyHistogram};
use crate::store::Purge;

/// Gives every metric this crate emits its `# HELP` text (through the `metrics`
/// facade's `describe_*!`, on the recorder installed now): call it once at start,
/// after installing the recorder. The upstream latency histogram is rendered
/// apart, with its own help ([`Cache::write_histograms`](crate::Cache::write_histograms)).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "revalidate_cache_requests_total",
        "Client requests by how the cache answered them (outcome: hit, miss, stale, revalidated, coalesced, bypassed)."
    );
    describe_counter!(
        "revalidate_cache_client_conditional_total",
        "Answers to clients' conditional requests made by the cache, by status (304, 412)."
    );
    describe_counter!(
        "revalidate_cache_body_sent_bytes_total",
        "Body bytes sent to clients by the cache."
    );
    describe_counter!(
        "revalidate_cache_body_without_cache_bytes_total",
        "Body bytes a server without the cache would have sent (no 304s from stored validators)."
    );
    describe_counter!(
        "revalidate_cache_origin_spared_body_bytes_total",
        "Body bytes the upstream did not send: responses served from the store, and stored responses its 304s confirmed."
    );
    describe_counter!(
        "revalidate_upstream_requests_total",
        "Requests the cache sent upstream to fill or revalidate an entry (misses, revalidations, refreshes; bypasses and writes aside)."
    );
    describe_counter!(
        "revalidate_upstream_not_modified_total",
        "Upstream 304s to the cache's revalidations: the stored body was reused."
    );
    describe_counter!("revalidate_cache_stored_total", "Responses stored.");
    describe_counter!(
        "revalidate_cache_not_stored_total",
        "Responses not stored, by reason (the Cache-Status detail= token)."
    );
    describe_counter!(
        "revalidate_cache_purges_total",
        "Purges applied (POST /purge, write invalidations, reloads)."
    );
    describe_counter!(
        "revalidate_cache_purged_entries_total",
        "Entries purges removed or marked stale."
    );
    describe_counter!(
        "revalidate_cache_purge_failures_total",
        "Purges that did not run to their end."
    );
    describe_counter!(
        "revalidate_store_evictions_total",
        "Entries the memory store evicted to stay within max_bytes."
    );
    describe_gauge!("revalidate_store_entries", "Entries in the memory store.");
    describe_gauge!(
        "revalidate_store_bytes",
        "Bytes the memory store's entries take (bodies, fields and overhead)."
    );
    describe_counter!(
        "revalidate_route_requests_total",
        "Requests per configured route ((default): no route matched), since the routes in force were loaded."
    );
    describe_counter!(
        "revalidate_route_served_from_cache_total",
        "Requests per route answered from the store (fresh, stale or coalesced)."
    );
}

/// How one client request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from the cache.
    Hit,
    /// Fetched upstream, nothing usable stored.
    Miss,
    /// Served stale (stale-while-revalidate, stale-if-error, max-stale).
    StaleServed,
    /// Revalidated upstream with a conditional request.
    Revalidated,
    /// Answered by another request's fetch.
    Coalesced,
    /// Not handled by the cache (unsafe method, bypass route).
    Bypassed,
}

impl Outcome {
    /// Whether the response came from the store without asking the upstream.
    pub const fn is_from_store(self) -> bool {
        matches!(self, Self::Hit | Self::StaleServed | Self::Coalesced)
    }
}

/// Why a response was not stored (RFC 9111 §3), as `Cache-Status` names it in
/// `detail` and the counters count it (`revalidate_cache_not_stored_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The request said `no-store`.
    RequestNoStore,
    /// A status never stored (400, 413, 416, 431, 1xx).
    Status,
    /// `must-understand` on a status this cache does not know.
    MustUnderstand,
    /// The response said `no-store`.
    NoStore,
    /// `private`, and the route does not key on the user.
    Private,
    /// The request carried `Authorization` and the response is not explicitly
    /// shared (§3.5).
    Authorization,
    /// The request carried `Cookie`, and the response is not public nor keyed on
    /// the cookies.
    Cookie,
    /// The response sets a cookie and the route does not allow storing it.
    SetCookie,
    /// `Vary: *`: no request could ever match it.
    VaryStar,
    /// No explicit or heuristic freshness, and no route default.
    NoFreshness,
    /// The upstream client made the response up (the upstream was unreachable).
    MadeUp,
    /// A 206 to a request that asked for no range.
    UnaskedPartial,
    /// The body is larger than `max_object_bytes`.
    TooLarge,
    /// The route is `bypass`: never looked up nor stored.
    RouteBypass,
}

impl NotStored {
    /// Every reason, in the order of [`NotStored::token`]'s counters.
    pub const ALL: [Self; 14] = [
        Self::RequestNoStore,
        Self::Status,
        Self::MustUnderstand,
        Self::NoStore,
        Self::Private,
        Self::Authorization,
        Self::Cookie,
        Self::SetCookie,
        Self::VaryStar,
        Self::NoFreshness,
        Self::MadeUp,
        Self::UnaskedPartial,
        Self::TooLarge,
        Self::RouteBypass,
    ];

    /// The token in `Cache-Status` (`detail=…`), `/stats` and the metrics' label.
    pub const fn token(self) -> &'static str {
        match self {
            Self::RequestNoStore => "request-no-store",
            Self::Status => "status",
            Self::MustUnderstand => "must-understand",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::Cookie => "cookie",
            Self::SetCookie => "set-cookie",
            Self::VaryStar => "vary-star",
            Self::NoFreshness => "no-freshness",
            Self::MadeUp => "upstream-unavailable",
            Self::UnaskedPartial => "unasked-partial",
            Self::TooLarge => "too-large",
            Self::RouteBypass => "route-bypass",
        }
    }
}

/// What is counted.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Hits,
    Misses,
    StaleServed,
    Revalidated,
    Coalesced,
    Bypassed,
    NotModified,
    PreconditionFailed,
    UpstreamRequests,
    Stored,
    Purges,
    PurgedEntries,
    BytesSent,
    BytesWithoutCache,
    /// Body bytes of responses served from the store, and of stored responses
    /// an upstream 304 confirmed: what the upstream did not send.
    OriginBytesSpared,
    /// Upstream 304s to the cache's conditional requests.
    UpstreamNotModified,
    PurgeFailures,
}

const COUNTERS: usize = Counter::PurgeFailures as usize + 1;

/// Stripes per [`Stats`] (128 B each): at least the worker threads of most
/// machines (one per CPU), so each thread counts on its own cache line.
const STRIPES: usize = 64;

/// One thread's counters, alone on its cache line(s).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

/// The stripe this thread counts on: threads take stripes in turn.
pub(crate) fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|index| *index)
}

/// The cache's counters.
///
/// A hit bumps three of them. Kept as one atomic each (as `metrics`' own counters
/// are, with a generation count beside), every core's hits would write the same
/// cache lines, and under load that costs more than the rest of a hit's
/// bookkeeping. Each thread counts on its own stripe instead; reads sum the
/// stripes, and [`Stats::publish`] hands the totals to the `metrics` facade when
/// an exporter is scraped. (No maintained crate offers striped counters; this is
/// the whole of it.)
#[derive(Debug)]
pub struct Stats {
    stripes: Box<[Stripe; STRIPES]>,
    /// By [`NotStored`], in [`NotStored::ALL`]'s order; on the miss path, where
    /// one shared atomic costs nothing worth striping.
    not_stored: [AtomicU64; NotStored::ALL.len()],
    /// How long the upstream took to answer, per request sent to it.
    upstream_seconds: LatencyHistogram,
    /// The last purges, newest last (rare: a lock costs nothing here).
    recent_purges: Mutex<VecDeque<PurgeRecord>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
            not_stored: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_seconds: LatencyHistogram::new(),
            recent_purges: Mutex::default(),
        }
    }
}

/// Purges [`Stats::recent_purges`] keeps.
pub const RECENT_PURGES: usize = 20;

/// Names a purge record keeps of each kind (urls, prefixes, tags); the rest are
/// counted in [`PurgeRecord::more`].
const NAMES_KEPT: usize = 10;

/// One purge as `/stats` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurgeRecord {
    /// When it was applied, in seconds since the Unix epoch.
    pub at: u64,
    /// The URLs it named (the first ten).
    pub urls: Vec<String>,
    /// The prefixes it named (the first ten).
    pub prefixes: Vec<String>,
    /// The tags it named (the first ten).
    pub tags: Vec<String>,
    /// Names beyond those kept.
    pub more: usize,
    /// Marked stale rather than removed.
    pub soft: bool,
    /// Entries it removed (or marked stale).
    pub removed: usize,
}

impl PurgeRecord {
    fn of(purge: &Purge, removed: usize, at: SystemTime) -> Self {
        let kept = |names: &[String]| names.iter().take(NAMES_KEPT).cloned().collect();
        let more = [&purge.urls, &purge.prefixes, &purge.tags]
            .iter()
            .map(|names| names.len().saturating_sub(NAMES_KEPT))
            .sum();
        Self {
            at: at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            urls: kept(&purge.urls),
            prefixes: kept(&purge.prefixes),
            tags: kept(&purge.tags),
            more,
            soft: purge.soft,
            removed,
        }
    }
}

impl Stats {
    fn add(&self, counter: Counter, n: u64) {
        self.stripes[stripe_index()].0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn total(&self, counter: Counter) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0[counter as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Hit => Counter::Hits,
            Outcome::Miss => Counter::Misses,
            Outcome::StaleServed => Counter::StaleServed,
            Outcome::Revalidated => Counter::Revalidated,
            Outcome::Coalesced => Counter::Coalesced,
            Outcome::Bypassed => Counter::Bypassed,
        };
        self.add(counter, 1);
    }

    pub(crate) fn not_stored(&self, why: NotStored) {
        self.not_stored[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses not stored, by reason (every reason, zeros included).
    pub fn not_stored_by_reason(&self) -> Vec<(NotStored, u64)> {
        NotStored::ALL
            .iter()
            .map(|&why| (why, self.not_stored[why as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn client_status(&self, status: u16) {
        match status {
            304 => self.add(Counter::NotModified, 1),
            412 => self.add(Counter::PreconditionFailed, 1),
            _ => {}
        }
    }

    /// Body bytes sent, beside what a server without the cache would have sent.
    pub(crate) fn bytes(&self, sent: u64, without_cache: u64) {
        let stripe = &self.stripes[stripe_index()].0;
        stripe[Counter::BytesSent as usize].fetch_add(sent, Ordering::Relaxed);
        stripe[Counter::BytesWithoutCache as usize].fetch_add(without_cache, Ordering::Relaxed);
    }

    pub(crate) fn upstream(&self, elapsed: Duration) {
        self.add(Counter::UpstreamRequests, 1);
        self.upstream_seconds.record(elapsed);
    }

    /// A response served from the store, `body` bytes long, that the upstream
    /// was not asked for.
    pub(crate) fn spared_upstream(&self, body: usize) {
        self.add(Counter::OriginBytesSpared, body as u64);
    }

    /// An upstream 304 confirmed a stored response `body` bytes long.
    pub(crate) fn upstream_not_modified(&self, body: usize) {
        self.add(Counter::UpstreamNotModified, 1);
        self.add(Counter::OriginBytesSpared, body as u64);
    }

    pub(crate) fn stored(&self) {
        self.add(Counter::Stored, 1);
    }

    pub(crate) fn purge(&self, purge: &Purge, entries: usize, at: SystemTime) {
        self.add(Counter::Purges, 1);
        self.add(Counter::PurgedEntries, entries as u64);
        let mut recent = self
            .recent_purges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_PURGES {
            recent.pop_front();
        }
        recent.push_back(PurgeRecord::of(purge, entries, at));
    }

    /// A purge that did not run to its end (its task failed).
    pub(crate) fn purge_failed(&self) {
        self.add(Counter::PurgeFailures, 1);
    }

    /// The last [`RECENT_PURGES`] purges, newest first.
    pub fn recent_purges(&self) -> Vec<PurgeRecord> {
        let recent = self
            .recent_purges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }

    /// The upstream's answer times so far.
    pub fn upstream_latency(&self) -> HistogramSnapshot {
        self.upstream_seconds.snapshot()
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            hits: self.total(Counter::Hits),
            misses: self.total(Counter::Misses),
            stale_served: self.total(Counter::StaleServed),
            revalidated: self.total(Counter::Revalidated),
            coalesced: self.total(Counter::Coalesced),
            bypassed: self.total(Counter::Bypassed),
            not_modified: self.total(Counter::NotModified),
            precondition_failed: self.total(Counter::PreconditionFailed),
            upstream_requests: self.total(Counter::UpstreamRequests),
            stored: self.total(Counter::Stored),
            purges: self.total(Counter::Purges),
            bytes_sent: self.total(Counter::BytesSent),
            bytes_without_cache: self.total(Counter::BytesWithoutCache),
            purged_entries: self.total(Counter::PurgedEntries),
            purge_failures: self.total(Counter::PurgeFailures),
            upstream_not_modified: self.total(Counter::UpstreamNotModified),
            origin_bytes_spared: self.total(Counter::OriginBytesSpared),
        }
    }

    /// Sets the `metrics` facade's counters to the current totals, on the
    /// recorder in effect now: call it before an exporter renders.
    pub fn publish(&self) {
        let totals = self.snapshot();
        let requests = [
            ("hit", totals.hits),
            ("miss", totals.misses),
            ("stale", totals.stale_served),
            ("revalidated", totals.revalidated),
            ("coalesced", totals.coalesced),
            ("bypassed", totals.bypassed),
        ];
        for (outcome, total) in requests {
            metrics::counter!("revalidate_cache_requests_total", "outcome" => outcome)
                .absolute(total);
        }
        metrics::counter!("revalidate_cache_client_conditional_total", "status" => "304")
            .absolute(totals.not_modified);
        metrics::counter!("revalidate_cache_client_conditional_total", "status" => "412")
            .absolute(totals.precondition_failed);
        metrics::counter!("revalidate_cache_body_sent_bytes_total").absolute(totals.bytes_sent);
        metrics::counter!("revalidate_cache_body_without_cache_bytes_total")
            .absolute(totals.bytes_without_cache);
        metrics::counter!("revalidate_cache_origin_spared_body_bytes_total")
            .absolute(totals.origin_bytes_spared);
        metrics::counter!("revalidate_upstream_requests_total").absolute(totals.upstream_requests);
        metrics::counter!("revalidate_upstream_not_modified_total")
            .absolute(totals.upstream_not_modified);
        metrics::counter!("revalidate_cache_stored_total").absolute(totals.stored);
        metrics::counter!("revalidate_cache_purges_total").absolute(totals.purges);
        metrics::counter!("revalidate_cache_purged_entries_total").absolute(totals.purged_entries);
        metrics::counter!("revalidate_cache_purge_failures_total").absolute(totals.purge_failures);
        for (why, total) in self.not_stored_by_reason() {
            metrics::counter!("revalidate_cache_not_stored_total", "reason" => why.token())
                .absolute(total);
        }
    }
}

/// One cache line of counters.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line([AtomicU64; 16]);

/// Requests per route, and those of them answered from the store, counted on
/// per-thread stripes as [`Stats`] counts: a hit adds to both. One row per
/// configured route and one for the default policy (`(default)`), so the
/// routes' labels stay as many as the configuration names. Made with the
/// routes: a reload starts it afresh.
#[derive(Debug)]
pub(crate) struct RouteTraffic {
    /// `STRIPES` rows of `lines` lines each: `[requests, from_store]` per route.
    counts: Box<[Line]>,
    lines: usize,
    routes: usize,
}

/// One route's traffic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteCount {
    /// The route's pattern, or `(default)` for paths no route matches.
    pub route: String,
    /// Requests located to it.
    pub requests: u64,
    /// Of them, answered from the store (fresh, stale or coalesced).
    pub from_cache: u64,
}

impl RouteTraffic {
    /// Counters for `routes` routes and the default.
    pub(crate) fn new(routes: usize) -> Self {
        let lines = (2 * (routes + 1)).div_ceil(16);
        Self {
            counts: (0..STRIPES * lines).map(|_| Line::default()).collect(),
            lines,
            routes,
        }
    }

    fn slot(&self, route: Option<usize>, which: usize) -> &AtomicU64 {
        let row = route.filter(|&r| r < self.routes).unwrap_or(self.routes);
        let at = 2 * row + which;
        &self.counts[stripe_index() * self.lines + at / 16].0[at % 16]
    }

    pub(crate) fn request(&self, route: Option<usize>) {
        self.slot(route, 0).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn served_from_store(&self, route: Option<usize>) {
        self.slot(route, 1).fetch_add(1, Ordering::Relaxed);
    }

    /// `(requests, from_store)` per route, the default last.
    pub(crate) fn totals(&self) -> Vec<(u64, u64)> {
        let mut totals = vec![(0u64, 0u64); self.routes + 1];
        for stripe in 0..STRIPES {
            let row = &self.counts[stripe * self.lines..(stripe + 1) * self.lines];
            for (route, total) in totals.iter_mut().enumerate() {
                let at = 2 * route;
                let get = |at: usize| row[at / 16].0[at % 16].load(Ordering::Relaxed);
                total.0 = total.0.wrapping_add(get(at));
                total.1 = total.1.wrapping_add(get(at + 1));
            }
        }
        totals
    }
}

/// Every counter at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Fresh hits.
    pub hits: u64,
    /// Misses fetched upstream.
    pub misses: u64,
    /// Stale responses served.
    pub stale_served: u64,
    /// Conditional revalidations upstream.
    pub revalidated: u64,
    /// Requests answered by another's fetch.
    pub coalesced: u64,
    /// Requests the cache did not handle.
    pub bypassed: u64,
    /// 304s sent to clients.
    pub not_modified: u64,
    /// 412s sent to clients.
    pub precondition_failed: u64,
    /// Requests sent upstream.
    pub upstream_requests: u64,
    /// Responses stored.
    pub stored: u64,
    /// Purge operations.
    pub purges: u64,
    /// Body bytes sent to clients.
    pub bytes_sent: u64,
    /// Body bytes a server without the cache would have sent.
    pub bytes_without_cache: u64,
    /// Entries purges removed or marked stale.
    pub purged_entries: u64,
    /// Purges that did not run to their end.
    pub purge_failures: u64,
    /// Upstream 304s to the cache's revalidations.
    pub upstream_not_modified: u64,
    /// Body bytes the upstream did not send: responses served from the store,
    /// and stored responses its 304s confirmed.
    pub origin_bytes_spared: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_add_up() {
        let stats = Stats::default();
        std::thread::scope(|scope| {
            for _ in 0..(STRIPES + 3) {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        stats.outcome(Outcome::Hit);
                        stats.bytes(5, 7);
                    }
                    stats.client_status(304);
                    stats.client_status(200);
                });
            }
        });
        let totals = stats.snapshot();
        let threads = (STRIPES + 3) as u64;
        assert_eq!(totals.hits, 1000 * threads);
        assert_eq!(totals.bytes_sent, 5000 * threads);
        assert_eq!(totals.bytes_without_cache, 7000 * threads);
        assert_eq!(totals.not_modified, threads);
        assert_eq!(totals.misses, 0);
    }

    #[test]
    fn route_traffic_counts_per_route_and_default() {
        let traffic = RouteTraffic::new(9);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    traffic.request(Some(8));
                    traffic.served_from_store(Some(8));
                    traffic.request(None);
                    traffic.request(Some(42));
                });
            }
        });
        let totals = traffic.totals();
        assert_eq!(totals.len(), 10);
        assert_eq!(totals[8], (3, 3));
        assert_eq!(totals[9], (6, 0));
        assert_eq!(totals[0], (0, 0));
    }

    #[test]
    fn keeps_the_last_purges_newest_first() {
        let stats = Stats::default();
        for n in 0..(RECENT_PURGES + 5) {
            let purge = Purge::urls((0..12).map(|i| format!("/p/{n}/{i}")));
            stats.purge(
                &purge,
                n,
                SystemTime::UNIX_EPOCH + Duration::from_secs(n as u64),
            );
        }
        let recent = stats.recent_purges();
        assert_eq!(recent.len(), RECENT_PURGES);
        assert_eq!(recent[0].removed, RECENT_PURGES + 4);
        assert_eq!(recent[0].at, (RECENT_PURGES + 4) as u64);
        assert_eq!(recent[0].urls.len(), 10);
        assert_eq!(recent[0].more, 2);
    }
}
