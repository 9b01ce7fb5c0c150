//! `revalidate serve` and its origins over real sockets, and an HTTP client for them.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use revalidate_cli::serve::Proxy;
use revalidate_cli::serve::server::{self, ClientLimits};
use revalidate_cli::serve::tls::ListenerTls;

/// Serves `router` on a free loopback port.
pub async fn spawn(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, task)
}

/// Serves `app` as `revalidate serve` does, with `limits`, on a free loopback port.
pub async fn spawn_proxy(app: Proxy, limits: ClientLimits) -> SocketAddr {
    spawn_proxy_over(app, limits, None).await
}

/// [`spawn_proxy`], over TLS when `tls` is given.
pub async fn spawn_proxy_over(
    app: Proxy,
    limits: ClientLimits,
    tls: Option<ListenerTls>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::run_with_tls(
        listener,
        move |peer| app.for_peer(peer),
        std::future::pending(),
        limits,
        tls,
    ));
    addr
}

/// `revalidate serve` in front of `origin` (with `limits`, and over TLS when
/// given), writing its access log as JSON to a file, which [`LoggedProxy::lines`]
/// reads back.
pub struct LoggedProxy {
    pub addr: SocketAddr,
    _origin: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    flushed_on_drop: revalidate_cli::serve::access_log::FlushOnDrop,
}

impl LoggedProxy {
    pub async fn start(origin: Router, limits: ClientLimits, tls: Option<ListenerTls>) -> Self {
        let (origin_addr, origin) = spawn(origin).await;
        let config = revalidate_cli::serve::parse("", "t.toml").unwrap();
        let upstream =
            revalidate_cli::serve::UpstreamClient::new(&format!("http://{origin_addr}"), &config)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (logger, flushed_on_drop) = revalidate_cli::serve::AccessLogger::new(
            std::fs::File::create(&path).unwrap(),
            revalidate_cli::serve::LogFormat::Json,
        );
        let (app, _) = revalidate_cli::serve::proxy(&config, upstream).unwrap();
        let addr = spawn_proxy_over(
            app.with_access_log(Some(logger)),
            limits.logging_unserved(Some(logger)),
            tls,
        )
        .await;
        Self {
            addr,
            _origin: origin,
            _dir: dir,
            path,
            flushed_on_drop,
        }
    }

    /// Every line written, once the log is flushed and closed; the text too,
    /// for failure messages.
    pub fn lines(self) -> (String, Vec<serde_json::Value>) {
        drop(self.flushed_on_drop);
        let text = std::fs::read_to_string(&self.path).unwrap();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (text, lines)
    }
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

/// The response's `Cache-Status`, or "".
pub fn cache_status(reply: &Reply) -> &str {
    reply
        .headers
        .get("cache-status")
        .map_or("", |v| v.to_str().unwrap())
}

/// A request with `body`, on a new client.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(builder.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
    }
}

/// A request without a body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(addr, method, path, headers, "").await
}
