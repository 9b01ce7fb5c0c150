//! Counters of what the cache did: read by `/stats`, published through the
//! `metrics` facade for Prometheus.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
}

const COUNTERS: usize = Counter::BytesWithoutCache as usize + 1;

/// Stripes per [`Stats`] (128 B each): at least the worker threads of most
/// machines (one per CPU), so each thread counts on its own cache line.
const STRIPES: usize = 64;

/// One thread's counters, alone on its cache line(s).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

/// The stripe this thread counts on: threads take stripes in turn.
fn stripe_index() -> usize {
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
    /// Recorded per upstream fetch, where a lookup's cost does not matter.
    upstream_seconds: metrics::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
            not_stored: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_seconds: metrics::histogram!("revalidate_upstream_duration_seconds"),
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

    pub(crate) fn upstream(&self, seconds: f64) {
        self.add(Counter::UpstreamRequests, 1);
        self.upstream_seconds.record(seconds);
    }

    pub(crate) fn stored(&self) {
        self.add(Counter::Stored, 1);
    }

    pub(crate) fn purge(&self, entries: usize) {
        self.add(Counter::Purges, 1);
        self.add(Counter::PurgedEntries, entries as u64);
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
        metrics::counter!("revalidate_cache_body_bytes_sent_total").absolute(totals.bytes_sent);
        metrics::counter!("revalidate_cache_body_bytes_without_cache_total")
            .absolute(totals.bytes_without_cache);
        metrics::counter!("revalidate_cache_stored_total").absolute(totals.stored);
        metrics::counter!("revalidate_cache_purges_total").absolute(totals.purges);
        metrics::counter!("revalidate_cache_purged_entries_total")
            .absolute(self.total(Counter::PurgedEntries));
        for (why, total) in self.not_stored_by_reason() {
            metrics::counter!("revalidate_cache_not_stored_total", "reason" => why.token())
                .absolute(total);
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
}
