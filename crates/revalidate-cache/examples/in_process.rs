//! An axum app with the shared cache in process, in front of a slow route: run
//! with `cargo run -p revalidate-cache --example in_process`, then try the curl
//! lines it prints.
//!
//! The first `GET /report` takes a second; the next ones, for the route's
//! `max-age`, are answered from the cache (`Cache-Status: …; hit`), and a burst of
//! concurrent misses makes one call. `POST /report/refresh` purges it, as a write
//! path would after changing what the report shows.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use revalidate_cache::{Cache, MemoryStore, Purge};

/// The expensive route: its own `Cache-Control` says how long it may be reused.
async fn report() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (
        [(header::CACHE_CONTROL, "public, max-age=30")],
        format!("report computed at {at}\n"),
    )
}

/// Purges the report: the cache is shared by every copy of the service.
async fn refresh(State(cache): State<Cache>) -> String {
    let purged = cache.purge(&Purge::urls(["/report"])).await;
    format!("purged {purged}\n")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cache = Cache::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    // The cache wraps the routes it serves; the purge route is outside it.
    let cached = Router::new()
        .route("/report", get(report))
        .layer(cache.layer());
    let app = Router::new()
        .route("/report/refresh", post(refresh))
        .with_state(cache)
        .merge(cached);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}; try:");
    println!("  curl -i http://{addr}/report              # a second, then a hit");
    println!("  curl -X POST http://{addr}/report/refresh # purge it");
    axum::serve(listener, app).await
}
