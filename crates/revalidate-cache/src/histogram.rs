//! Latency histograms with fixed buckets, counted on per-thread stripes, rendered
//! in the Prometheus text format and read as interpolated quantiles.
//!
//! `metrics::histogram!` with metrics-exporter-prometheus keeps every recorded
//! value until the next scrape (and renders a summary unless told the buckets):
//! on the hit path, at 100,000 requests a second, that is an allocation-prone
//! queue per thread and megabytes between scrapes. A fixed-bucket histogram is
//! two relaxed adds per value on the recording thread's own cache lines (as
//! [`Stats`](crate::stats::Stats) counts), whatever the rate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds, in microseconds: 100 µs to 10 s, about three per
/// decade (Prometheus' `le`, each bucket counting values up to and including it).
pub const BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Buckets, the last one unbounded (`+Inf`).
const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

/// Stripes per histogram, as for [`Stats`](crate::stats::Stats).
const STRIPES: usize = 64;

/// One thread's counts: the buckets (not cumulative), then the sum in
/// nanoseconds; alone on its cache lines.
#[repr(align(128))]
struct Stripe([AtomicU64; BUCKETS + 1]);

/// A latency histogram; see the [module docs](self). It holds 64 stripes of
/// 256 bytes: make it once (a `static` works, [`LatencyHistogram::new`] is
/// `const`) and share it.
pub struct LatencyHistogram {
    stripes: [Stripe; STRIPES],
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.snapshot().count())
            .finish_non_exhaustive()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU64 = AtomicU64::new(0);
        #[allow(clippy::declare_interior_mutable_const)]
        const EMPTY: Stripe = Stripe([ZERO; BUCKETS + 1]);
        Self {
            stripes: [EMPTY; STRIPES],
        }
    }

    /// Counts one value: two relaxed adds on this thread's stripe.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // Most values fall in the first buckets: a linear scan ends there.
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BOUNDS_MICROS.len());
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let stripe = &self.stripes[crate::stats::stripe_index()].0;
        stripe[bucket].fetch_add(1, Ordering::Relaxed);
        stripe[BUCKETS].fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts summed over the stripes.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0u64; BUCKETS];
        let mut nanos = 0u64;
        for stripe in &self.stripes {
            for (total, count) in buckets.iter_mut().zip(&stripe.0) {
                *total = total.wrapping_add(count.load(Ordering::Relaxed));
            }
            nanos = nanos.wrapping_add(stripe.0[BUCKETS].load(Ordering::Relaxed));
        }
        HistogramSnapshot { buckets, nanos }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// Per bucket, not cumulative; the last is `+Inf`.
    buckets: [u64; BUCKETS],
    /// The sum of the values, in nanoseconds.
    nanos: u64,
}

impl HistogramSnapshot {
    /// Values counted per bucket (not cumulative), the buckets bounded by
    /// [`BOUNDS_MICROS`] then `+Inf`.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The sum of the values, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// Adds `other`'s counts to these (two series of one family, summed).
    pub fn add(&mut self, other: &Self) {
        for (total, n) in self.buckets.iter_mut().zip(other.buckets) {
            *total += n;
        }
        self.nanos += other.nanos;
    }

    /// The counts of `self` since `earlier` (a previous snapshot of the same
    /// histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut buckets = [0u64; BUCKETS];
        for (i, bucket) in buckets.iter_mut().enumerate() {
            *bucket = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        Self {
            buckets,
            nanos: self.nanos.saturating_sub(earlier.nanos),
        }
    }

    /// The `q`-quantile (0 to 1) in seconds, interpolated linearly within its
    /// bucket as Prometheus' `histogram_quantile` does: the first bucket starts at
    /// 0, and a quantile in the `+Inf` bucket is the largest finite bound. `None`
    /// when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BOUNDS_MICROS.get(i) else {
                    break;
                };
                let lower = if i == 0 { 0 } else { BOUNDS_MICROS[i - 1] };
                let within = (rank - below as f64) / n as f64;
                let micros = lower as f64 + (upper - lower) as f64 * within;
                return Some(micros / 1e6);
            }
            below += n;
        }
        Some(BOUNDS_MICROS[BOUNDS_MICROS.len() - 1] as f64 / 1e6)
    }

    /// Appends the series of this histogram in the Prometheus text format
    /// (`NAME_bucket{…,le="…"}` cumulative, `NAME_sum`, `NAME_count`); `labels` is
    /// `key="value"` pairs joined by commas, or empty. The family's `# HELP` and
    /// `# TYPE` lines come from [`write_family_header`], once per family.
    pub fn write_prometheus(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            cumulative += n;
            match BOUNDS_MICROS.get(i) {
                Some(&bound) => {
                    let le = bound as f64 / 1e6;
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_seconds());
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Appends a histogram family's `# HELP` and `# TYPE` lines.
pub fn write_family_header(name: &str, help: &str, out: &mut String) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        // 100 values in (100 µs, 250 µs].
        for _ in 0..100 {
            histogram.record(Duration::from_micros(200));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 100);
        let p50 = snapshot.quantile(0.5).unwrap();
        assert!((p50 - 0.000175).abs() < 1e-9, "{p50}");
        let p99 = snapshot.quantile(0.99).unwrap();
        assert!((p99 - 0.0002485).abs() < 1e-9, "{p99}");
        assert!((snapshot.sum_seconds() - 0.02).abs() < 1e-9);
        // Beyond the last bound: the largest finite bound.
        histogram.record(Duration::from_secs(60));
        assert_eq!(histogram.snapshot().quantile(1.0), Some(10.0));
    }

    #[test]
    fn renders_cumulative_buckets() {
        let histogram = LatencyHistogram::new();
        histogram.record(Duration::from_micros(50));
        histogram.record(Duration::from_millis(3));
        let mut out = String::new();
        write_family_header("t_seconds", "Test.", &mut out);
        histogram
            .snapshot()
            .write_prometheus("t_seconds", "class=\"a\"", &mut out);
        assert!(out.contains("# TYPE t_seconds histogram\n"));
        assert!(out.contains("t_seconds_bucket{class=\"a\",le=\"0.0001\"} 1\n"));
        assert!(out.contains("t_seconds_bucket{class=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("t_seconds_bucket{class=\"a\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("t_seconds_count{class=\"a\"} 2\n"));
        let earlier = histogram.snapshot();
        histogram.record(Duration::from_millis(3));
        assert_eq!(histogram.snapshot().since(&earlier).count(), 1);
    }
}
