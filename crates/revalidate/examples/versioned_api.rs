//! An axum API with conditional requests, run with
//! `cargo run -p revalidate --features axum --example versioned_api`, then try the curl lines it
//! prints.
//!
//! - `GET /catalog`: a content ETag (the body is hashed), public for a minute.
//! - `GET /items/{id}`: validators first. The layer asks the app's version counter
//!   before the handler runs, so a matching `If-None-Match` is a 304 that never
//!   reads the item.
//! - `PUT /items/{id}`: needs `If-Match` (428 without it, 412 when stale); the
//!   handler checks the tag again under the lock, so two writers racing with the
//!   same tag cannot both win.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use revalidate::{CacheControl, ConditionalLayer, EntityTagMatch, Validators, from_extractors};

/// One item and its version, bumped by every write.
#[derive(Clone)]
struct Item {
    name: String,
    version: u64,
    updated_at: SystemTime,
}

type Items = Arc<Mutex<HashMap<u64, Item>>>;

fn validators(item: &Item) -> Validators {
    Validators::versioned(item.version, item.updated_at)
}

/// The validators of `/items/{id}`: what the layer asks before the handler runs
/// (a counter or a version column in a real app), from the same extractors a
/// handler takes.
async fn current((Path(id), State(items)): (Path<u64>, State<Items>)) -> Option<Validators> {
    let items = items.lock().unwrap_or_else(|e| e.into_inner());
    items.get(&id).map(validators)
}

async fn get_item(State(items): State<Items>, Path(id): Path<u64>) -> Response {
    let items = items.lock().unwrap_or_else(|e| e.into_inner());
    match items.get(&id) {
        Some(item) => {
            let mut response =
                Json(serde_json::json!({ "id": id, "name": item.name })).into_response();
            validators(item).write_to(response.headers_mut());
            response
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn put_item(
    State(items): State<Items>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let Some(name) = body["name"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected {\"name\": \"...\"}",
        )
            .into_response();
    };
    let mut items = items.lock().unwrap_or_else(|e| e.into_inner());
    let Some(item) = items.get_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The layer checked If-Match before this handler ran; another write may have
    // landed since, so the tag is compared again where the write happens.
    let current = validators(item).etag;
    let still_current = EntityTagMatch::from_headers(&headers, &header::IF_MATCH)
        .ok()
        .flatten()
        .zip(current.as_ref())
        .is_some_and(|(condition, tag)| condition.matches_strong(tag));
    if !still_current {
        return StatusCode::PRECONDITION_FAILED.into_response();
    }
    item.name = name.to_string();
    item.version += 1;
    item.updated_at = SystemTime::now();
    let mut response = Json(serde_json::json!({ "id": id, "name": item.name })).into_response();
    validators(item).write_to(response.headers_mut());
    response
}

fn app(items: Items) -> Router {
    let catalog = get(|| async { Json(serde_json::json!({ "items": [1, 2] })) }).route_layer(
        ConditionalLayer::new().cache_control(
            CacheControl::new()
                .public()
                .max_age(Duration::from_secs(60)),
        ),
    );
    let item = get(get_item).put(put_item).route_layer(
        ConditionalLayer::new()
            .validators(from_extractors(items.clone(), current))
            .cache_control(CacheControl::new().no_cache())
            .require_if_match(),
    );
    Router::new()
        .route("/catalog", catalog)
        .route("/items/{id}", item)
        .with_state(items)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let items: Items = Arc::default();
    let first = Item {
        name: "lamp".into(),
        version: 1,
        updated_at: SystemTime::now(),
    };
    items
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(1, first);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}; try:");
    println!("  curl -i http://{addr}/catalog");
    println!("  curl -i http://{addr}/items/1 -H 'If-None-Match: \"v1\"'       # 304");
    println!(
        "  curl -i -X PUT http://{addr}/items/1 -H 'Content-Type: application/json' -d '{{\"name\":\"desk\"}}'   # 428"
    );
    println!(
        "  curl -i -X PUT http://{addr}/items/1 -H 'If-Match: \"v1\"' -H 'Content-Type: application/json' -d '{{\"name\":\"desk\"}}'"
    );
    axum::serve(listener, app(items)).await
}
