//! Two `revalidate serve` instances sharing Redis in front of one API: one
//! upstream fetch serves both, and a write through either is seen by the other
//! at once.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use revalidate_cache::Store;
use revalidate_cache::store::RedisStore;
use revalidate_cli::serve::admin::{AdminState, router as admin_router};
use revalidate_cli::serve::server::ClientLimits;
use revalidate_cli::serve::{UpstreamClient, parse, proxy};
use support::proxy::{cache_status, request, spawn, spawn_proxy};
use tower::ServiceExt;

/// An API whose item changes with every write.
fn origin(calls: Arc<AtomicUsize>, version: Arc<AtomicUsize>) -> Router {
    let read = version.clone();
    Router::new().route(
        "/items/{id}",
        get(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let body = format!("v{}", read.load(Ordering::SeqCst));
            async move { ([("cache-control", "max-age=600")], body) }
        })
        .put(move || {
            version.fetch_add(1, Ordering::SeqCst);
            async { "written" }
        }),
    )
}

#[tokio::test]
async fn two_instances_share_one_fetch_and_see_each_others_writes_on_a_server() {
    let url = support::redis::url();
    two_instances_share_one_fetch_and_see_each_others_writes(&url, &format!("url = \"{url}\""))
        .await;
}

#[tokio::test]
async fn two_instances_share_one_fetch_and_see_each_others_writes_on_a_cluster() {
    let urls = support::redis::cluster_urls();
    let nodes: Vec<String> = urls.split(',').map(|u| format!("\"{u}\"")).collect();
    let cluster = format!("cluster = [{}]", nodes.join(", "));
    two_instances_share_one_fetch_and_see_each_others_writes(&urls, &cluster).await;
}

async fn two_instances_share_one_fetch_and_see_each_others_writes(url: &str, redis: &str) {
    let namespace = support::redis::namespace("serve");
    let (calls, version) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
    let (origin_addr, _origin) = spawn(origin(calls.clone(), version)).await;
    let config = parse(
        &format!("[redis]\n{redis}\nnamespace = \"{namespace}\"\nlease = \"300ms\"\n"),
        "t.toml",
    )
    .unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let upstream = UpstreamClient::new(&format!("http://{origin_addr}"), &config).unwrap();
        let (app, cache) = proxy(&config, upstream).unwrap();
        instances.push((spawn_proxy(app, ClientLimits::default()).await, cache));
    }
    let [(a, _), (b, b_cache)] = &instances[..] else {
        unreachable!()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !instances
        .iter()
        .all(|(_, cache)| cache.store().bus().is_some_and(|bus| bus.trusted))
    {
        assert!(Instant::now() < deadline, "the bus never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(request(*a, "GET", "/items/1", &[]).await.body, "v1");
    let shared = RedisStore::open(support::redis::config(url, &namespace)).unwrap();
    let primary = format!("{a}/items/1");
    while shared.get(&primary).await.is_none() {
        assert!(Instant::now() < deadline, "never stored in Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // B's clients name B's address as the host: the same key needs the same Host.
    let from_b = request(*b, "GET", "/items/1", &[("host", &a.to_string())]).await;
    assert_eq!(from_b.body, "v1");
    assert!(
        cache_status(&from_b).contains("hit"),
        "{}",
        cache_status(&from_b)
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one upstream fetch for both"
    );

    let put = request(*a, "PUT", "/items/1", &[]).await;
    assert_eq!(put.status, 200);
    let after = request(*b, "GET", "/items/1", &[("host", &a.to_string())]).await;
    assert_eq!(after.body, "v2", "{}", cache_status(&after));

    let admin = admin_router(AdminState {
        cache: b_cache.clone(),
        token: None,
        metrics: None,
        live: None,
    });
    let stats = admin
        .clone()
        .oneshot(
            http::Request::get("/stats")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(stats.into_body())
        .await
        .unwrap()
        .to_bytes();
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats["redis"]["up"], true, "{stats}");
    assert_eq!(stats["redis"]["local_tier_served"], true, "{stats}");
    assert!(
        stats["redis"]["purges_applied"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

#[tokio::test]
async fn with_redis_out_of_reach_the_proxy_serves_and_says_so() {
    let (calls, version) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
    let (origin_addr, _origin) = spawn(origin(calls, version)).await;
    let config = parse(
        &format!(
            "[redis]\nurl = \"{}\"\n",
            support::redis::nothing_listening()
        ),
        "t.toml",
    )
    .unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin_addr}"), &config).unwrap();
    let (app, cache) = proxy(&config, upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    for _ in 0..3 {
        assert_eq!(request(addr, "GET", "/items/1", &[]).await.status, 200);
    }
    let admin = admin_router(AdminState {
        cache,
        token: None,
        metrics: None,
        live: None,
    });
    let health = admin
        .oneshot(
            http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body = http_body_util::BodyExt::collect(health.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("degraded"),
        "{body:?}"
    );
}

/// A route with `version = "user:{id}"`: the proxy answers `If-None-Match` from
/// the counter the app bumps, without calling the app, and a bump is a new key.
#[tokio::test]
async fn a_versioned_route_answers_from_the_counter() {
    let url = support::redis::url();
    let namespace = support::redis::namespace("versioned");
    let (calls, version) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
    let (origin_addr, _origin) = spawn(origin(calls.clone(), version.clone())).await;
    let config = parse(
        &format!(
            "[redis]\nurl = \"{url}\"\nnamespace = \"{namespace}\"\n\n\
             [[routes]]\npath = \"/items/{{id}}\"\nversion = \"item:{{id}}\"\n"
        ),
        "t.toml",
    )
    .unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin_addr}"), &config).unwrap();
    let (app, cache) = proxy(&config, upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    let versions = cache.store().versions().unwrap();

    let first = request(addr, "GET", "/items/7", &[]).await;
    assert_eq!(
        (first.body.as_str(), first.headers["etag"].to_str().unwrap()),
        ("v1", "\"v0\"")
    );
    let not_modified = request(addr, "GET", "/items/7", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(
        cache_status(&not_modified),
        "revalidate; hit; detail=version"
    );
    assert!(
        request(addr, "GET", "/items/7", &[]).await.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the app saw one request");

    // The app writes: new data, and a bump of the counter in its write path.
    version.fetch_add(1, Ordering::SeqCst);
    assert_eq!(versions.bump("item:7").await, Some(1));
    let after = request(addr, "GET", "/items/7", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(after.status, 200, "the old tag is not current any more");
    assert_eq!(
        (after.body.as_str(), after.headers["etag"].to_str().unwrap()),
        ("v2", "\"v1\"")
    );
    assert_eq!(
        request(addr, "GET", "/items/7", &[("if-none-match", "\"v1\"")])
            .await
            .status,
        304
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Other spellings of the same path read the same counter.
    for spelling in ["/items/%37", "/x/../items/7"] {
        let reply = request(addr, "GET", spelling, &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(reply.status, 304, "{spelling}");
    }
}

/// `rediss://` with `ca_file`: the proxy stores in Redis over TLS.
#[tokio::test]
async fn the_shared_tier_over_tls() {
    let server = support::redis::start_tls_server();
    let namespace = support::redis::namespace("tls");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();
    let (calls, version) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
    let (origin_addr, _origin) = spawn(origin(calls.clone(), version)).await;
    let config = parse(
        &format!(
            "[redis]\nurl = \"{}\"\nnamespace = \"{namespace}\"\nca_file = \"{}\"\ntimeout = \"1s\"\n",
            server.url,
            ca_file.display()
        ),
        "t.toml",
    )
    .unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin_addr}"), &config).unwrap();
    let (app, _cache) = proxy(&config, upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    assert_eq!(request(addr, "GET", "/items/1", &[]).await.status, 200);
    let mut shared = support::redis::config(&server.url, &namespace);
    shared.ca_pem = Some(server.ca_pem.clone());
    shared.timeout = Duration::from_secs(1);
    let shared = RedisStore::open(shared).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.get(&format!("{addr}/items/1")).await.is_none() {
        assert!(Instant::now() < deadline, "never stored in Redis over TLS");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
