//! The proxy as an operator runs it, in process: an origin, the proxy with a
//! reloadable configuration, and its admin API on a listener of its own.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use revalidate_cache::Cache;
use revalidate_cli::serve::admin::{AdminState, router as admin_router};
use revalidate_cli::serve::server::ClientLimits;
use revalidate_cli::serve::{Live, Loaded, ProxyStore, UpstreamClient, parse, proxy};

use super::proxy::{request, spawn};

/// Routes the tests configure: two named ones, the rest under the default.
pub const CONFIG: &str = r#"
[upstream]
timeout = "400ms"

[[routes]]
path = "/items/{id}"
tags = ["items", "item:{id}"]

[[routes]]
path = "/private"
"#;

/// An origin: `/items/{id}` (2 KiB, cacheable for a minute, with an ETag),
/// `/private` (`no-store`), `/other` (cacheable, under no route), `/hang`
/// (answers after the proxy's upstream timeout).
pub fn origin() -> Router {
    async fn item(UrlPath(id): UrlPath<String>) -> impl IntoResponse {
        (
            [
                ("cache-control", "max-age=60".to_string()),
                ("etag", format!("\"item-{id}\"")),
            ],
            format!("item {id}\n").repeat(2048 / (6 + id.len())),
        )
    }
    async fn hang() -> impl IntoResponse {
        tokio::time::sleep(Duration::from_secs(3)).await;
        "late"
    }
    Router::new()
        .route("/items/{id}", get(item))
        .route(
            "/private",
            get(|| async { ([("cache-control", "no-store")], "private") }),
        )
        .route(
            "/other",
            get(|| async { ([("cache-control", "max-age=60")], "other") }),
        )
        .route("/hang", get(hang))
}

/// A running proxy and its admin API.
pub struct Operated {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub cache: Cache<ProxyStore>,
}

/// Starts the origin, the proxy over it with `config`, and its admin API with
/// `token` and `metrics`.
pub async fn start(
    config: &str,
    token: Option<&str>,
    metrics: Option<PrometheusHandle>,
) -> Operated {
    let (origin, _) = spawn(origin()).await;
    start_over(vec![format!("http://{origin}")], config, token, metrics).await
}

/// The proxy over the upstream servers `urls` with `config`, reloadable (it
/// reads the same configuration again), and its admin API with `token` and
/// `metrics`.
pub async fn start_over(
    urls: Vec<String>,
    config: &str,
    token: Option<&str>,
    metrics: Option<PrometheusHandle>,
) -> Operated {
    let config = parse(config, "test.toml").unwrap();
    let upstream = UpstreamClient::balanced(&urls, &config).unwrap();
    let (app, cache) = proxy(&config, upstream).unwrap();
    let limits = ClientLimits::new(&config.client);
    let reload_config = config.clone();
    let live = Live::new(app, config, limits.clone(), move || {
        let upstream =
            UpstreamClient::balanced(&urls, &reload_config).map_err(|e| e.to_string())?;
        Ok(Loaded {
            config: reload_config.clone(),
            upstream,
        })
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = live.clone();
    tokio::spawn(revalidate_cli::serve::server::run(
        listener,
        move |peer| serving.for_peer(peer),
        std::future::pending(),
        limits,
    ));
    let (admin, _) = spawn(admin_router(AdminState {
        cache: cache.clone(),
        token: token.map(str::to_string),
        metrics,
        live: Some(live),
    }))
    .await;
    Operated { addr, admin, cache }
}

/// Traffic of every kind: misses then hits on two items, a client 304, a
/// response not stored, a path under no route, a purge by tag, and an upstream
/// timeout (a 504 the proxy makes).
pub async fn drive_traffic(operated: &Operated) {
    let addr = operated.addr;
    for id in ["1", "2"] {
        for _ in 0..4 {
            assert_eq!(
                request(addr, "GET", &format!("/items/{id}"), &[])
                    .await
                    .status,
                200
            );
        }
    }
    let not_modified = request(addr, "GET", "/items/1", &[("if-none-match", "\"item-1\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(request(addr, "GET", "/private", &[]).await.status, 200);
    assert_eq!(request(addr, "GET", "/other", &[]).await.status, 200);
    assert_eq!(request(addr, "GET", "/hang", &[]).await.status, 504);
    let purge = super::proxy::send(
        operated.admin,
        "POST",
        "/purge",
        &[("content-type", "application/json")],
        r#"{"tags": ["item:2"]}"#,
    )
    .await;
    assert_eq!(purge.status, 200, "{}", purge.body);
}
