//! What `revalidate serve` measures beyond the cache's own counters: the time
//! each client request took, upstream failures the proxy answered itself, the
//! build, and the `# HELP` of every metric the binary emits.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use revalidate_cache::histogram::{HistogramSnapshot, LatencyHistogram, write_family_header};

/// The name of the client-facing latency histogram.
pub const REQUEST_DURATION: &str = "revalidate_request_duration_seconds";

const REQUEST_DURATION_HELP: &str = "Time from a client request's head to its response head, by who answered (served_by: cache, upstream).";

/// Client request times: `[answered from the store, answered by the upstream]`.
///
/// Counted for every request on the worker's own stripe (two relaxed adds, see
/// [`revalidate_cache::histogram`]) rather than with `metrics::histogram!`, whose
/// Prometheus exporter keeps every value until the next scrape. One per process:
/// a `static` costs the request path no reference count, where a shared handle
/// would be cloned, and its count written, by every request.
static REQUEST_SECONDS: [LatencyHistogram; 2] = [LatencyHistogram::new(), LatencyHistogram::new()];

/// Counts one client request that took `elapsed`; `upstream` when the upstream
/// was asked for its answer.
pub fn record_request(elapsed: Duration, upstream: bool) {
    REQUEST_SECONDS[usize::from(upstream)].record(elapsed);
}

/// Client request times so far: `(from the cache, from the upstream)`.
pub fn request_latency() -> (HistogramSnapshot, HistogramSnapshot) {
    (REQUEST_SECONDS[0].snapshot(), REQUEST_SECONDS[1].snapshot())
}

/// Appends `revalidate_request_duration_seconds` in the Prometheus text format.
pub fn write_histograms(out: &mut String) {
    write_family_header(REQUEST_DURATION, REQUEST_DURATION_HELP, out);
    let (cache, upstream) = request_latency();
    cache.write_prometheus(REQUEST_DURATION, "served_by=\"cache\"", out);
    upstream.write_prometheus(REQUEST_DURATION, "served_by=\"upstream\"", out);
}

/// Why the proxy answered for an upstream that did not (a 502 or 504 problem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No response head within the upstream timeout (504).
    Timeout,
    /// No connection, or it broke before a response (502).
    Unreachable,
    /// The upstream's TLS certificate was refused (502).
    Tls,
    /// Every server is out of the rotation (502).
    NoneAvailable,
}

impl UpstreamFailure {
    const ALL: [Self; 4] = [
        Self::Timeout,
        Self::Unreachable,
        Self::Tls,
        Self::NoneAvailable,
    ];

    /// The `kind` label.
    pub const fn token(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Tls => "tls",
            Self::NoneAvailable => "none-available",
        }
    }

    /// Counts one.
    pub fn count(self) {
        UPSTREAM_FAILURES[self as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// By [`UpstreamFailure`], in [`UpstreamFailure::ALL`]'s order (the failure path:
/// one shared atomic costs nothing worth striping).
static UPSTREAM_FAILURES: [AtomicU64; UpstreamFailure::ALL.len()] =
    [const { AtomicU64::new(0) }; UpstreamFailure::ALL.len()];

/// Upstream failures the proxy answered itself, by kind (every kind, zeros
/// included).
pub fn upstream_failures() -> Vec<(&'static str, u64)> {
    UpstreamFailure::ALL
        .iter()
        .map(|&kind| {
            (
                kind.token(),
                UPSTREAM_FAILURES[kind as usize].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// The process's access log, whose dropped lines [`publish`] reports.
static ACCESS_LOG: OnceLock<super::AccessLogger> = OnceLock::new();

/// Reports `logger`'s dropped lines in `revalidate_access_log_lines_dropped_total`
/// (the first logger of the process; the process has one).
pub fn report_access_log(logger: super::AccessLogger) {
    let _ = ACCESS_LOG.set(logger);
}

/// Sets the `metrics` facade's counters kept here to their totals: call it
/// before an exporter renders, as the admin listener does on every scrape.
pub fn publish() {
    for (kind, total) in upstream_failures() {
        metrics::counter!("revalidate_upstream_failures_total", "kind" => kind).absolute(total);
    }
    // Zero without an access log too: an alert reads one series either way.
    let dropped = ACCESS_LOG.get().map_or(0, super::AccessLogger::dropped);
    metrics::counter!("revalidate_access_log_lines_dropped_total").absolute(dropped);
}

/// Gives every metric the binary emits its `# HELP` (the cache's through
/// [`revalidate_cache::describe_metrics`]), sets `revalidate_build_info`, and
/// Call once, after installing the recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    revalidate_cache::describe_metrics();
    describe_gauge!(
        "revalidate_build_info",
        "Always 1; the version label names the running build."
    );
    metrics::gauge!("revalidate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        "revalidate_upstream_failures_total",
        "Upstream requests the proxy answered itself with a 502 or 504 problem, by kind (timeout, unreachable, tls, none-available)."
    );
    describe_gauge!(
        "revalidate_upstream_available",
        "1 while the upstream server (server label) is in the rotation, else 0."
    );
    describe_gauge!(
        "revalidate_ready",
        "1 while at least one upstream server is in the rotation (as /readyz), else 0."
    );
    describe_gauge!("revalidate_client_connections", "Client connections open.");
    describe_counter!(
        "revalidate_connection_limit_reached_total",
        "Times accepting paused at [client] max_connections."
    );
    describe_counter!(
        "revalidate_tls_handshake_failures_total",
        "Client TLS handshakes that failed."
    );
    describe_counter!(
        "revalidate_config_reloads_total",
        "Configuration reloads put in force (SIGHUP, POST /reload)."
    );
    describe_counter!(
        "revalidate_config_reload_failures_total",
        "Configuration reloads refused; the running configuration stayed."
    );
    describe_gauge!(
        "revalidate_redis_up",
        "1 while Redis (the shared tier) answers, else 0."
    );
    describe_gauge!(
        "revalidate_local_tier_served",
        "1 while this instance serves its local tier (it has every purge), else 0."
    );
    describe_gauge!(
        "revalidate_bus_purges_applied",
        "The number of the last purge from the invalidation bus applied here (Redis numbers them)."
    );
    describe_gauge!(
        "revalidate_bus_lag_purges",
        "Purges numbered in Redis and not applied here yet."
    );
    describe_counter!(
        "revalidate_local_tier_drops_total",
        "Times the local tier was dropped (on connecting to Redis, or after missed purges)."
    );
    describe_counter!(
        "revalidate_purge_waits_timed_out_total",
        "Purges whose wait for the other instances to apply them ran out."
    );
    describe_counter!(
        "revalidate_redis_failed_commands_total",
        "Redis commands that failed or timed out."
    );
    describe_counter!(
        "revalidate_access_log_lines_dropped_total",
        "Access lines dropped because the sink (file, terminal) could not keep up."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_times_render_both_sources() {
        record_request(Duration::from_micros(80), false);
        record_request(Duration::from_millis(30), true);
        let mut out = String::new();
        write_histograms(&mut out);
        assert!(out.starts_with("# HELP revalidate_request_duration_seconds "));
        assert!(out.contains(
            "revalidate_request_duration_seconds_bucket{served_by=\"cache\",le=\"0.0001\"} "
        ));
        assert!(out.contains("revalidate_request_duration_seconds_count{served_by=\"upstream\"} "));
    }
}
