//! The admin listener: `GET /` (a live dashboard), `POST /purge`, `POST /reload`,
//! `GET /stats`, `GET /entries` (stored responses, see `entries`), `GET /metrics`,
//! `GET /healthz` (liveness), `GET /readyz` (readiness: an upstream server is up).
//!
//! With a token, every route but `/`, `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 §11.1); the
//! probes stay open because orchestrators' probes carry no credentials, and they
//! reveal nothing but "ok" or "not ready"; the dashboard page holds no data, and
//! sends the token the operator types in with each read of `/stats`. `/purge`
//! takes only `application/json`: a form or `text/plain` body is what a web page
//! can send to a loopback admin without a preflight (CSRF), and is refused with
//! 415. Every error is a problem (RFC 9457).

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use revalidate::Problem;
use revalidate_cache::histogram::{BOUNDS_MICROS, HistogramSnapshot};
use revalidate_cache::{Cache, Purge};

use super::{Live, ProxyStore, observe};

mod entries;
use serde_json::json;

/// What the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// The cache.
    pub cache: Cache<ProxyStore>,
    /// The bearer token; `None` only on a loopback address.
    pub token: Option<String>,
    /// The Prometheus recorder's handle.
    pub metrics: Option<PrometheusHandle>,
    /// The reloadable proxy, for `POST /reload`; when set, its cache (the one
    /// the configuration in force made) is used rather than `cache`.
    pub live: Option<Live>,
}

impl AdminState {
    /// The cache in force.
    fn cache(&self) -> Cache<ProxyStore> {
        match &self.live {
            Some(live) => live.cache(),
            None => self.cache.clone(),
        }
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    Problem::new(status)
        .detail(detail)
        .to_response()
        .map(Body::from)
        .into_response()
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest `/purge` body read.
const MAX_PURGE_BYTES: usize = 1024 * 1024;

/// The token of an `Authorization: Bearer <token>` field, the scheme compared
/// without regard to case.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Lets a request through when no token is set or it presents the token.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match refused(&state, request.headers()) {
        Some(denied) => denied,
        None => next.run(request).await,
    }
}

/// `None` when the caller may proceed, else the 401 to send.
fn refused(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let token = state.token.as_ref()?;
    let presented = bearer_token(headers);
    if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "send Authorization: Bearer <admin token>",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/purge", post(purge))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .route("/entries", get(entries::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "admin routes: GET / (dashboard), POST /purge, POST /reload, GET /stats, /entries, /metrics, /healthz, /readyz",
            )
        })
        .method_not_allowed_fallback(|| async {
            problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .with_state(state)
}

/// The live dashboard: one page, its style and script inline, that polls
/// `/stats` every second.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard holds no data (it reads `/stats`, with the token the operator
/// types in when one is asked for), so it is served without the token. Nothing
/// else may run or be loaded in it: no script, style or request from elsewhere,
/// no framing, no form submission.
async fn dashboard() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// Whether a `Content-Type` is `application/json`, with parameters or not.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

async fn purge(State(state): State<AdminState>, request: Request) -> Response {
    if !is_json(request.headers()) {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the purge as Content-Type: application/json",
        );
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_PURGE_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            let too_large = error
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a purge body is at most {MAX_PURGE_BYTES} bytes"),
                )
            } else {
                problem(StatusCode::BAD_REQUEST, "the purge body could not be read")
            };
        }
    };
    let purge: Purge = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"urls\": [...], \"prefixes\": [...], \"tags\": [...], \"soft\": bool}}: {e}"
                ),
            );
        }
    };
    if purge.is_empty() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the purge names no url, prefix or tag",
        );
    }
    if purge
        .urls
        .iter()
        .chain(&purge.prefixes)
        .any(|p| !p.starts_with('/'))
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urls and prefixes are paths starting with '/'",
        );
    }
    let purged = state.cache().purge(&purge).await;
    axum::Json(json!({ "purged": purged, "soft": purge.soft })).into_response()
}

/// Liveness: always 200 while the process serves; says when Redis is out of
/// reach (requests are then served from the upstream and the local tier is not).
async fn healthz(State(state): State<AdminState>) -> &'static str {
    match state.cache().store().bus() {
        Some(bus) if !bus.redis_up || !bus.trusted => {
            "ok (degraded: the shared tier is out of reach; serving from the upstream)\n"
        }
        _ => "ok\n",
    }
}

/// Readiness: 200 while at least one upstream server is in the rotation, else
/// 503, so that a load balancer sends clients elsewhere. Without a reloadable
/// proxy (tests), always ready.
async fn readyz(State(state): State<AdminState>) -> Response {
    let ready = state
        .live
        .as_ref()
        .is_none_or(|live| live.upstream().pool().any_available());
    if ready {
        "ready\n".into_response()
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no upstream server is in the rotation",
        )
    }
}

async fn stats(State(state): State<AdminState>) -> Response {
    let cache = state.cache();
    let bus_lag = cache.store().bus_lag().await;
    let counters = cache.stats();
    let usage = cache.usage();
    let answered = counters.hits
        + counters.stale_served
        + counters.coalesced
        + counters.misses
        + counters.revalidated;
    let served_from_cache = counters.hits + counters.stale_served + counters.coalesced;
    let hit_ratio = if answered == 0 {
        0.0
    } else {
        served_from_cache as f64 / answered as f64
    };
    let client_saved = counters
        .bytes_without_cache
        .saturating_sub(counters.bytes_sent);
    let (from_cache, from_upstream) = observe::request_latency();
    let mut client = from_cache;
    client.add(&from_upstream);
    let mut routes = cache.route_traffic();
    routes.sort_by_key(|r| std::cmp::Reverse(r.requests));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    axum::Json(json!({
        "at_unix_seconds": now.as_secs_f64(),
        "requests": counters,
        "hit_ratio": hit_ratio,
        "bytes_saved": client_saved,
        "client_bandwidth_saved_bytes": client_saved,
        "origin_offload": {
            "requests": served_from_cache,
            "revalidated_not_modified": counters.upstream_not_modified,
            "body_bytes": counters.origin_bytes_spared,
        },
        "upstream_failures": observe::upstream_failures()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        "latency": {
            "bounds_seconds": BOUNDS_MICROS.iter().map(|&b| b as f64 / 1e6).collect::<Vec<_>>(),
            "upstream": latency(&cache.upstream_latency()),
            "client": latency(&client),
            "client_from_cache": latency(&from_cache),
            "client_from_upstream": latency(&from_upstream),
        },
        "recent_purges": cache.recent_purges(),
        "top_routes": routes
            .iter()
            .take(TOP_ROUTES)
            .map(|r| json!({
                "route": r.route,
                "requests": r.requests,
                "from_cache": r.from_cache,
                "hit_ratio": if r.requests == 0 { 0.0 } else { r.from_cache as f64 / r.requests as f64 },
            }))
            .collect::<Vec<_>>(),
        "store": { "entries": usage.entries, "bytes": usage.bytes, "evictions": usage.evictions },
        "not_stored": cache
            .not_stored()
            .into_iter()
            .map(|(why, count)| (why.token(), count))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "config_generation": state.live.as_ref().map_or(0, Live::generation),
        "upstreams": state.live.as_ref().map(|live| {
            let upstream = live.upstream();
            let pool = upstream.pool();
            pool.servers()
                .iter()
                .map(|server| json!({
                    "server": server.authority().as_str(),
                    "available": pool.is_available(server),
                }))
                .collect::<Vec<_>>()
        }),
        "redis": cache.store().bus().map(|bus| json!({
            "up": bus.redis_up,
            "local_tier_served": bus.trusted,
            "purges_applied": bus.applied,
            "bus_lag": bus_lag,
            "local_tier_drops": bus.drops,
            "purge_waits_timed_out": bus.fenced_waits,
            "failed_commands": bus.redis_failures,
        })),
    }))
    .into_response()
}

/// Routes `/stats` lists in `top_routes`.
const TOP_ROUTES: usize = 10;

/// A histogram in `/stats`: interpolated quantiles since start, and the raw
/// bucket counts (for quantiles over a window, from two polls).
fn latency(histogram: &HistogramSnapshot) -> serde_json::Value {
    json!({
        "count": histogram.count(),
        "sum_seconds": histogram.sum_seconds(),
        "p50_seconds": histogram.quantile(0.5),
        "p99_seconds": histogram.quantile(0.99),
        "buckets": histogram.buckets(),
    })
}

/// Reloads the configuration, as SIGHUP does: 200 with what the reload did, or
/// 422 with why the new configuration was refused (the old one keeps serving).
async fn reload(State(state): State<AdminState>) -> Response {
    let Some(live) = &state.live else {
        return problem(
            StatusCode::NOT_IMPLEMENTED,
            "this admin API serves no reloadable proxy",
        );
    };
    match live.reload_logged().await {
        Ok(done) => axum::Json(done).into_response(),
        Err(error) => problem(StatusCode::UNPROCESSABLE_ENTITY, &error.to_string()),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let cache = state.cache();
    cache.publish_metrics();
    super::observe::publish();
    if let Some(live) = &state.live {
        let upstream = live.upstream();
        let pool = upstream.pool();
        for server in pool.servers() {
            metrics::gauge!("revalidate_upstream_available", "server" => server.authority().to_string())
                .set(f64::from(u8::from(pool.is_available(server))));
        }
        metrics::gauge!("revalidate_ready").set(f64::from(u8::from(pool.any_available())));
    }
    if let Some(bus) = cache.store().bus() {
        metrics::gauge!("revalidate_redis_up").set(f64::from(u8::from(bus.redis_up)));
        metrics::gauge!("revalidate_local_tier_served").set(f64::from(u8::from(bus.trusted)));
        metrics::gauge!("revalidate_bus_purges_applied").set(bus.applied as f64);
        if let Some(lag) = cache.store().bus_lag().await {
            metrics::gauge!("revalidate_bus_lag_purges").set(lag as f64);
        }
        metrics::counter!("revalidate_local_tier_drops_total").absolute(bus.drops);
        metrics::counter!("revalidate_purge_waits_timed_out_total").absolute(bus.fenced_waits);
        metrics::counter!("revalidate_redis_failed_commands_total").absolute(bus.redis_failures);
    }
    match &state.metrics {
        Some(handle) => {
            // The exporter's families, then the histograms counted apart.
            let mut text = handle.render();
            cache.write_histograms(&mut text);
            super::observe::write_histograms(&mut text);
            ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder is installed",
        ),
    }
}
