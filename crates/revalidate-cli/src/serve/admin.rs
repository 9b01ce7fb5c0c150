//! The admin listener: `POST /purge`, `GET /stats`, `GET /metrics`, `GET /healthz`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use revalidate::Problem;
use revalidate_cache::{Cache, Purge};
use serde_json::json;

/// What the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// The cache.
    pub cache: Cache,
    /// The bearer token; `None` only on a loopback address.
    pub token: Option<String>,
    /// The Prometheus recorder's handle.
    pub metrics: Option<PrometheusHandle>,
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

/// `None` when the caller may proceed, else the 401 to send.
fn refused(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let token = state.token.as_ref()?;
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
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
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "admin routes: POST /purge, GET /stats, /metrics, /healthz",
            )
        })
        .method_not_allowed_fallback(|| async {
            problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

async fn purge(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = refused(&state, &headers) {
        return denied;
    }
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
    let purged = state.cache.purge(&purge).await;
    axum::Json(json!({ "purged": purged, "soft": purge.soft })).into_response()
}

async fn stats(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(denied) = refused(&state, &headers) {
        return denied;
    }
    let counters = state.cache.stats();
    let usage = state.cache.usage();
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
    axum::Json(json!({
        "requests": counters,
        "hit_ratio": hit_ratio,
        "bytes_saved": counters.bytes_without_cache.saturating_sub(counters.bytes_sent),
        "store": { "entries": usage.entries, "bytes": usage.bytes, "evictions": usage.evictions },
    }))
    .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.cache.publish_metrics();
    match &state.metrics {
        Some(handle) => (
            [(CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder is installed",
        ),
    }
}
