//! The load loop of one mode and the figures it yields.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, Uri};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::watch;

use super::client::BenchClient;

/// How the requests of a mode are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Mode {
    /// Unconditional GETs to the endpoint: what a client without a cache pays.
    Full,
    /// GETs to the endpoint with `If-None-Match` (or `If-Modified-Since`) carrying
    /// the validator it gave: what a client with a private cache pays.
    Conditional,
    /// Unconditional GETs through the cache given with `--via`, after one GET
    /// that fills it.
    ViaHit,
    /// Conditional GETs through the cache, with the validator it gave.
    ViaConditional,
}

impl Mode {
    /// The name used in the table, the JSON and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Conditional => "conditional",
            Self::ViaHit => "via-hit",
            Self::ViaConditional => "via-conditional",
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// What one mode measured on one URL.
#[derive(Debug, Clone, Serialize)]
pub struct ModeFigures {
    /// How the requests were sent.
    pub mode: Mode,
    /// Where they went: the URL itself, or its path and query on the `--via` base.
    pub target: String,
    /// Requests answered (with a complete response, whatever its status).
    pub requests: u64,
    /// Requests without a complete response (connection errors, timeouts).
    pub errors: u64,
    /// Answered requests by status code.
    pub status: BTreeMap<u16, u64>,
    /// Mean body bytes per answered request, as received (no decompression).
    pub body_bytes_per_request: f64,
    /// Mean status line, header and body bytes per answered request.
    pub wire_bytes_per_request: f64,
    /// Latency from sending the request to the body's last byte.
    pub latency_ms: Latency,
    /// Answered requests per second of the mode's wall time.
    pub requests_per_second: f64,
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
struct Sample {
    status: u16,
    body: u64,
    wire: u64,
    latency: Duration,
}

/// Sends `requests` GETs of `uri` with `headers` from `concurrency` tasks that
/// share the count, each on a keep-alive connection of the pool. A `true` on
/// `stop` ends the load: requests in flight are dropped, the answered ones kept.
pub(crate) async fn load(
    client: &BenchClient,
    mode: Mode,
    uri: &Uri,
    headers: &HeaderMap,
    (requests, concurrency): (usize, usize),
    stop: &watch::Receiver<bool>,
    progress: &ProgressBar,
) -> ModeFigures {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, requests.max(1)) {
        let (client, uri, headers) = (client.clone(), uri.clone(), headers.clone());
        let (next, mut stop, progress) = (next.clone(), stop.clone(), progress.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            while !*stop.borrow() && next.fetch_add(1, Ordering::Relaxed) < requests {
                let exchange = tokio::select! {
                    exchange = client.get(&uri, &headers) => exchange,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                };
                match exchange {
                    Ok(exchange) => samples.push(Sample {
                        status: exchange.status.as_u16(),
                        body: exchange.body.len() as u64,
                        wire: exchange.wire_bytes(),
                        latency: exchange.latency,
                    }),
                    Err(_) => errors += 1,
                }
                progress.inc(1);
            }
            (samples, errors)
        });
    }
    let mut samples = Vec::with_capacity(requests);
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        // A task only ends by returning: a panic here is a bug worth showing.
        let (some, failed) = joined.expect("a load task panicked");
        samples.extend(some);
        errors += failed;
    }
    figures(mode, uri, &samples, errors, started.elapsed())
}

fn figures(mode: Mode, uri: &Uri, samples: &[Sample], errors: u64, wall: Duration) -> ModeFigures {
    let answered = samples.len() as u64;
    let mut status = BTreeMap::new();
    for sample in samples {
        *status.entry(sample.status).or_insert(0) += 1;
    }
    let mean = |total: u64| {
        if answered == 0 {
            0.0
        } else {
            total as f64 / answered as f64
        }
    };
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    ModeFigures {
        mode,
        target: uri.to_string(),
        requests: answered,
        errors,
        status,
        body_bytes_per_request: round(mean(samples.iter().map(|s| s.body).sum()), 1),
        wire_bytes_per_request: round(mean(samples.iter().map(|s| s.wire).sum()), 1),
        latency_ms: Latency {
            p50: round(percentile_ms(&latencies, 50.0), 3),
            p95: round(percentile_ms(&latencies, 95.0), 3),
            p99: round(percentile_ms(&latencies, 99.0), 3),
        },
        requests_per_second: if wall.is_zero() {
            0.0
        } else {
            round(answered as f64 / wall.as_secs_f64(), 1)
        },
    }
}

/// `value` with `places` decimals: the JSON then shows what was measured (bytes to
/// a tenth, latencies to the microsecond), not the float's noise.
pub(crate) fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The nearest-rank percentile of sorted latencies: a latency that was measured,
/// never an interpolation between two.
fn percentile_ms(sorted: &[Duration], percent: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// The mode that sends the fewest bytes per request compared with `full`, as
/// `(mode, bandwidth saved %, p50 latency saved %)`; `None` without both.
pub(crate) fn best_savings(modes: &[ModeFigures]) -> Option<(Mode, f64, f64)> {
    let full = modes
        .iter()
        .find(|m| m.mode == Mode::Full && m.requests > 0)?;
    let best = modes
        .iter()
        .filter(|m| m.mode != Mode::Full && m.requests > 0)
        .min_by(|a, b| {
            a.wire_bytes_per_request
                .total_cmp(&b.wire_bytes_per_request)
                .then(a.latency_ms.p50.total_cmp(&b.latency_ms.p50))
        })?;
    let saved = |full: f64, other: f64| {
        if full > 0.0 {
            (1.0 - other / full) * 100.0
        } else {
            0.0
        }
    };
    Some((
        best.mode,
        round(
            saved(full.wire_bytes_per_request, best.wire_bytes_per_request),
            1,
        ),
        round(saved(full.latency_ms.p50, best.latency_ms.p50), 1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_measured_latencies_by_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile_ms(&sorted, 50.0), 50.0);
        assert_eq!(percentile_ms(&sorted, 99.0), 99.0);
        assert_eq!(percentile_ms(&[ms(7)], 99.0), 7.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn figures_average_bytes_over_answered_requests() {
        let sample = |status, body, wire| Sample {
            status,
            body,
            wire,
            latency: ms(1),
        };
        let samples = [sample(200, 100, 300), sample(304, 0, 100)];
        let uri: Uri = "http://127.0.0.1/x".parse().unwrap();
        let figures = figures(Mode::Full, &uri, &samples, 1, Duration::from_secs(2));
        assert_eq!(figures.requests, 2);
        assert_eq!(figures.errors, 1);
        assert_eq!(figures.status[&200], 1);
        assert_eq!(figures.status[&304], 1);
        assert_eq!(figures.body_bytes_per_request, 50.0);
        assert_eq!(figures.wire_bytes_per_request, 200.0);
        assert_eq!(figures.requests_per_second, 1.0);
    }
}
