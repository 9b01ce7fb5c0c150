//! Counters of what the cache did, kept as atomics for `/stats` and emitted through
//! the `metrics` facade for Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Its position in [`Exported::outcomes`].
    fn index(self) -> usize {
        self as usize
    }
}

/// Handles of the `metrics` facade, looked up once: a lookup per request by name
/// and labels costs more than the rest of a hit's bookkeeping.
#[derive(Debug)]
struct Exported {
    outcomes: [metrics::Counter; 6],
    not_modified: metrics::Counter,
    precondition_failed: metrics::Counter,
    bytes_sent: metrics::Counter,
    bytes_without_cache: metrics::Counter,
    upstream_seconds: metrics::Histogram,
    stored: metrics::Counter,
    purges: metrics::Counter,
    purged_entries: metrics::Counter,
}

impl Default for Exported {
    fn default() -> Self {
        let outcome = |label: &'static str| metrics::counter!("revalidate_cache_requests_total", "outcome" => label);
        Self {
            outcomes: [
                "hit",
                "miss",
                "stale",
                "revalidated",
                "coalesced",
                "bypassed",
            ]
            .map(outcome),
            not_modified: metrics::counter!("revalidate_cache_client_conditional_total", "status" => "304"),
            precondition_failed: metrics::counter!("revalidate_cache_client_conditional_total", "status" => "412"),
            bytes_sent: metrics::counter!("revalidate_cache_body_bytes_sent_total"),
            bytes_without_cache: metrics::counter!(
                "revalidate_cache_body_bytes_without_cache_total"
            ),
            upstream_seconds: metrics::histogram!("revalidate_upstream_duration_seconds"),
            stored: metrics::counter!("revalidate_cache_stored_total"),
            purges: metrics::counter!("revalidate_cache_purges_total"),
            purged_entries: metrics::counter!("revalidate_cache_purged_entries_total"),
        }
    }
}

/// The cache's counters.
#[derive(Debug, Default)]
pub struct Stats {
    exported: Exported,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    revalidated: AtomicU64,
    coalesced: AtomicU64,
    bypassed: AtomicU64,
    not_modified: AtomicU64,
    precondition_failed: AtomicU64,
    upstream_requests: AtomicU64,
    stored: AtomicU64,
    purges: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_without_cache: AtomicU64,
}

impl Stats {
    pub(crate) fn outcome(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Hit => &self.hits,
            Outcome::Miss => &self.misses,
            Outcome::StaleServed => &self.stale_served,
            Outcome::Revalidated => &self.revalidated,
            Outcome::Coalesced => &self.coalesced,
            Outcome::Bypassed => &self.bypassed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.exported.outcomes[outcome.index()].increment(1);
    }

    pub(crate) fn client_status(&self, status: u16) {
        let (counter, exported) = match status {
            304 => (&self.not_modified, &self.exported.not_modified),
            412 => (
                &self.precondition_failed,
                &self.exported.precondition_failed,
            ),
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        exported.increment(1);
    }

    /// Body bytes sent, beside what a server without the cache would have sent.
    pub(crate) fn bytes(&self, sent: u64, without_cache: u64) {
        self.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.bytes_without_cache
            .fetch_add(without_cache, Ordering::Relaxed);
        self.exported.bytes_sent.increment(sent);
        self.exported.bytes_without_cache.increment(without_cache);
    }

    pub(crate) fn upstream(&self, seconds: f64) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
        self.exported.upstream_seconds.record(seconds);
    }

    pub(crate) fn stored(&self) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        self.exported.stored.increment(1);
    }

    pub(crate) fn purge(&self, entries: usize) {
        self.purges.fetch_add(1, Ordering::Relaxed);
        self.exported.purges.increment(1);
        self.exported.purged_entries.increment(entries as u64);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            stale_served: get(&self.stale_served),
            revalidated: get(&self.revalidated),
            coalesced: get(&self.coalesced),
            bypassed: get(&self.bypassed),
            not_modified: get(&self.not_modified),
            precondition_failed: get(&self.precondition_failed),
            upstream_requests: get(&self.upstream_requests),
            stored: get(&self.stored),
            purges: get(&self.purges),
            bytes_sent: get(&self.bytes_sent),
            bytes_without_cache: get(&self.bytes_without_cache),
        }
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
}
