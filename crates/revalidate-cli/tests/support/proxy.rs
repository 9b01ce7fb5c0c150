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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::run(
        listener,
        move |peer| app.for_peer(peer),
        std::future::pending(),
        limits,
    ));
    addr
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
