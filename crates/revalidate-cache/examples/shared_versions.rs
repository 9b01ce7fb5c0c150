//! An axum API whose validator-first ETags agree across instances: the version
//! of each user is a counter in Redis, bumped by every write. Run two instances
//! with `cargo run -p revalidate-cache --features redis --example shared_versions -- 3001`
//! and `… -- 3002` (Redis at `REDIS_URL`, default `redis://127.0.0.1:6379`), then
//! try the curl lines it prints: a write through one instance makes the other
//! answer 200, not 304, to the old tag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use revalidate::{CacheControl, ConditionalLayer, Validators, from_extractors};
use revalidate_cache::store::{RedisConfig, RedisStore, Versions};

/// The app's state: the counters, and the data (a database in a real app).
#[derive(Clone)]
struct App {
    versions: Versions,
    names: Arc<Mutex<HashMap<u64, String>>>,
}

/// Asked before the handler: a matching `If-None-Match` is a 304 that never
/// reads the user.
async fn user_validators((Path(id), State(app)): (Path<u64>, State<App>)) -> Option<Validators> {
    app.versions.validators(&format!("user:{id}")).await
}

async fn get_user(Path(id): Path<u64>, State(app): State<App>) -> Json<serde_json::Value> {
    let name = app
        .names
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    Json(serde_json::json!({ "id": id, "name": name }))
}

async fn put_user(Path(id): Path<u64>, State(app): State<App>, body: String) -> String {
    app.names
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, body);
    // The bump is the write's last step: every instance's next answer has the new tag.
    let version = app.versions.bump(&format!("user:{id}")).await;
    format!("version {version:?}\n")
}

fn app(state: App) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(get_user).put(put_user).route_layer(
                ConditionalLayer::new()
                    .validators(from_extractors(state.clone(), user_validators))
                    .cache_control(CacheControl::new().no_cache()),
            ),
        )
        .with_state(state)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let versions = RedisStore::open(RedisConfig::new(url))?.versions();
    let state = App {
        versions,
        names: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}; try:");
    println!("  curl -i http://{addr}/users/1                          # ETag: \"v0\"");
    println!("  curl -i http://{addr}/users/1 -H 'If-None-Match: \"v0\"' # 304");
    println!("  curl -X PUT http://{addr}/users/1 -d Ada              # bumps user:1");
    axum::serve(listener, app(state)).await?;
    Ok(())
}
