//! Version counters in Redis make validator-first ETags agree across instances:
//! a write through one makes the other answer 200, not 304, to the old tag.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use http::{Request, StatusCode};
use revalidate::{ConditionalLayer, Validators, from_extractors};
use revalidate_cache::store::{RedisConfig, RedisStore, Versions};
use tower::ServiceExt;

#[derive(Clone)]
struct App {
    versions: Versions,
    reads: Arc<AtomicUsize>,
}

async fn validators((Path(id), State(app)): (Path<u64>, State<App>)) -> Option<Validators> {
    app.versions.validators(&format!("user:{id}")).await
}

/// One instance of the app; both share Redis (and, in a real app, a database).
fn instance(versions: Versions, reads: Arc<AtomicUsize>) -> Router {
    let state = App { versions, reads };
    Router::new()
        .route(
            "/users/{id}",
            get(|State(app): State<App>| async move {
                app.reads.fetch_add(1, Ordering::SeqCst);
                "a user"
            })
            .put(|Path(id): Path<u64>, State(app): State<App>| async move {
                app.versions.bump(&format!("user:{id}")).await;
                "written"
            })
            .route_layer(
                ConditionalLayer::new().validators(from_extractors(state.clone(), validators)),
            ),
        )
        .with_state(state)
}

async fn send(app: &Router, method: &str, if_none_match: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri("/users/1");
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let etag = response
        .headers()
        .get("etag")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    (response.status(), etag)
}

#[tokio::test]
async fn a_write_through_one_instance_changes_the_tag_every_instance_answers_with() {
    let mut config = RedisConfig::new(support::redis::url());
    config.namespace = support::redis::namespace("versions");
    let versions = RedisStore::open(config).unwrap().versions();
    let reads = Arc::new(AtomicUsize::new(0));
    let a = instance(versions.clone(), reads.clone());
    let b = instance(versions, reads.clone());

    let (status, tag) = send(&a, "GET", None).await;
    assert_eq!((status, tag.as_str()), (StatusCode::OK, "\"v0\""));
    let (status, _) = send(&b, "GET", Some("\"v0\"")).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED, "the same tag on both");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "the 304 never read the user"
    );

    assert_eq!(send(&a, "PUT", None).await.0, StatusCode::OK);
    let (status, tag) = send(&b, "GET", Some("\"v0\"")).await;
    assert_eq!(
        (status, tag.as_str()),
        (StatusCode::OK, "\"v1\""),
        "B sees A's write"
    );
    assert_eq!(
        send(&a, "GET", Some("\"v1\"")).await.0,
        StatusCode::NOT_MODIFIED
    );
}
