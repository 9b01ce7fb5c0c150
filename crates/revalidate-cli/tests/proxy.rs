//! `revalidate serve` over real sockets: the library's layers in front of an origin.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use revalidate_cli::serve::server::ClientLimits;
use revalidate_cli::serve::{UpstreamClient, parse, proxy};
use support::proxy::{LoggedProxy, cache_status, request, spawn, spawn_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An origin that records the headers of every request it sees.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Origin {
    fn router(&self) -> Router {
        let origin = self.clone();
        Router::new().fallback(
            move |method: http::Method, uri: http::Uri, headers: HeaderMap| {
                let origin = origin.clone();
                async move {
                    let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
                    origin
                        .seen
                        .lock()
                        .unwrap()
                        .push((format!("{method} {uri}"), headers.clone()));
                    if origin.down.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
                    }
                    if method != http::Method::GET && method != http::Method::HEAD {
                        return (StatusCode::NO_CONTENT, "").into_response();
                    }
                    if uri.path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                    let host = headers
                        .get("x-forwarded-host")
                        .map_or("-", |v| v.to_str().unwrap())
                        .to_string();
                    (
                        [("cache-control", "public, max-age=60"), ("etag", "\"e1\"")],
                        format!("{} #{n} via {host}", uri.path()),
                    )
                        .into_response()
                }
            },
        )
    }

    fn requests(&self) -> Vec<(String, HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }
}

async fn start(
    config: &str,
) -> (
    Origin,
    SocketAddr,
    tokio::task::JoinHandle<()>,
    revalidate_cache::Cache<revalidate_cli::serve::ProxyStore>,
) {
    let origin = Origin::default();
    let (origin_addr, origin_task) = spawn(origin.router()).await;
    let config = parse(config, "test.toml").unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin_addr}"), &config).unwrap();
    let (app, cache) = proxy(&config, upstream).unwrap();
    let proxy_addr = spawn_proxy(app, ClientLimits::default()).await;
    (origin, proxy_addr, origin_task, cache)
}

#[tokio::test]
async fn hits_writes_and_conditional_requests_through_the_proxy() {
    let (origin, proxy, _o, cache) = start("").await;
    let first = request(proxy, "GET", "/items/1", &[]).await;
    assert_eq!(first.status, 200);
    let second = request(proxy, "GET", "/items/1", &[]).await;
    assert!(
        cache_status(&second).contains("hit"),
        "{}",
        cache_status(&second)
    );
    assert_eq!(second.body, first.body);
    // A hit is framed by the body it sends (the stored map keeps no length).
    assert_eq!(
        second.headers["content-length"],
        second.body.len().to_string().as_str()
    );
    assert!(!second.headers.contains_key("transfer-encoding"));
    let nm = request(proxy, "GET", "/items/1", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(nm.status, 304);
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);

    let write = request(proxy, "PUT", "/items/1", &[]).await;
    assert_eq!(write.status, 204);
    let after = request(proxy, "GET", "/items/1", &[]).await;
    assert!(!cache_status(&after).contains("hit"));
    assert!(after.body.contains("#3"), "{}", after.body);
    assert_eq!(
        cache.stats().hits,
        2,
        "the GET and the 304 were answered from the cache"
    );

    // Counters reach Prometheus when published, as the admin listener does on
    // every scrape of /metrics.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || cache.publish_metrics());
    let text = handle.render();
    for line in [
        "revalidate_cache_requests_total{outcome=\"hit\"} 2",
        "revalidate_cache_requests_total{outcome=\"miss\"} 2",
        "revalidate_cache_client_conditional_total{status=\"304\"} 1",
        "revalidate_store_entries 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn request_headers_outside_the_key_never_reach_the_origin() {
    let (origin, proxy, _o, _) = start("").await;
    let attack = [
        ("x-forwarded-host", "evil.test"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("forwarded", "host=evil.test"),
    ];
    request(proxy, "GET", "/page", &attack).await;
    let victim = request(proxy, "GET", "/page", &[]).await;
    assert!(!victim.body.contains("evil"), "{}", victim.body);
    for (_, headers) in origin.requests() {
        for (name, _) in attack {
            let value = headers.get(name).map(|v| v.to_str().unwrap().to_string());
            assert!(
                value
                    .as_deref()
                    .is_none_or(|v| !v.contains("evil") && !v.contains("admin") && v != "DELETE"),
                "{name}: {value:?}"
            );
        }
    }
    // The Host the client used is keyed, and is what the origin sees as X-Forwarded-Host.
    let other_host = request(proxy, "GET", "/page", &[("host", "other.test")]).await;
    assert!(!cache_status(&other_host).contains("hit"));
    assert!(
        other_host.body.ends_with("via other.test"),
        "{}",
        other_host.body
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_problem() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = UpstreamClient::new(
        &format!("http://127.0.0.1:{port}"),
        &parse("", "t.toml").unwrap(),
    )
    .unwrap();
    let (app, _) = proxy(&parse("", "t.toml").unwrap(), upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    let reply = request(addr, "GET", "/x", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn stale_if_error_covers_an_upstream_outage() {
    let config =
        "[[routes]]\npath = \"/*\"\nstale_if_error = \"1h\"\ncache_control = \"max-age=0\"\n";
    let (origin, proxy, _o, _) = start(config).await;
    assert_eq!(request(proxy, "GET", "/p", &[]).await.status, 200);
    origin.down.store(true, Ordering::SeqCst);
    let stale = request(proxy, "GET", "/p", &[]).await;
    assert_eq!(stale.status, 200, "stale content instead of the 503");
    assert!(cache_status(&stale).contains("stale-if-error"));
}

/// Content-Length beside Transfer-Encoding (RFC 9112 §6.3): the body is read as
/// chunked, the origin gets one request without Content-Length, and the connection
/// is closed after the response, so the bytes after the chunked body are never read
/// as a second request.
#[tokio::test]
async fn request_smuggling_is_refused() {
    let (origin, proxy, _o, _) = start("").await;
    for (first, second) in [
        ("Content-Length: 44", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 44"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let smuggle = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\n{first}\r\n{second}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        stream.write_all(smuggle.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
            .await
            .expect("the connection is closed after the response")
            .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 2, "one request per connection");
    for (line, headers) in seen {
        assert_eq!(line, "POST /a");
        assert!(!headers.contains_key("content-length"), "{headers:?}");
    }
}

#[tokio::test]
async fn admin_api_requires_its_token() {
    let (_, proxy, _o, cache) = start("").await;
    request(proxy, "GET", "/t", &[]).await;
    let admin = revalidate_cli::serve::admin::router(revalidate_cli::serve::admin::AdminState {
        cache,
        token: Some("s3cret".into()),
        metrics: None,
        live: None,
    });
    let (admin_addr, _) = spawn(admin).await;
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let post = |auth: Option<&'static str>, body: &'static str| {
        let mut builder = http::Request::post(format!("http://{admin_addr}/purge"))
            .header("content-type", "application/json");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        client.request(builder.body(Body::from(body)).unwrap())
    };
    assert_eq!(
        post(None, r#"{"urls":["/t"]}"#).await.unwrap().status(),
        401
    );
    assert_eq!(
        post(Some("Bearer wrong"), r#"{"urls":["/t"]}"#)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(Some("Bearer s3cret"), r#"{"urls":["/t"], "color":"red"}"#)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(Some("Bearer s3cret"), r#"{}"#).await.unwrap().status(),
        422
    );
    let ok = post(Some("Bearer s3cret"), r#"{"urls":["/t"]}"#)
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body = ok.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["purged"],
        1
    );
    assert!(!cache_status(&request(proxy, "GET", "/t", &[]).await).contains("hit"));

    let stats = client
        .request(
            http::Request::get(format!("http://{admin_addr}/stats"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stats.status(), 401);
    let health = client
        .request(
            http::Request::get(format!("http://{admin_addr}/healthz"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "liveness stays open");

    let admin_get = |path: &str, auth: Option<&'static str>| {
        let mut builder = http::Request::get(format!("http://{admin_addr}{path}"));
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        client.request(builder.body(Body::empty()).unwrap())
    };
    let metrics = admin_get("/metrics", None).await.unwrap();
    assert_eq!(metrics.status(), 401, "metrics need the token");
    assert_problem(metrics).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth: &'static str = format!("{scheme} s3cret").leak();
        let stats = admin_get("/stats", Some(auth)).await.unwrap();
        assert_eq!(stats.status(), 200, "{scheme}");
    }
    // A page in a browser can POST text/plain or a form without a preflight: refused.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let refused = client
            .request(
                http::Request::post(format!("http://{admin_addr}/purge"))
                    .header("content-type", content_type)
                    .header("authorization", "Bearer s3cret")
                    .body(Body::from(r#"{"urls":["/t"]}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(refused.status(), 415, "{content_type}");
        assert_problem(refused).await;
    }
    let too_large = client
        .request(
            http::Request::post(format!("http://{admin_addr}/purge"))
                .header("content-type", "application/json; charset=utf-8")
                .header("authorization", "Bearer s3cret")
                .body(Body::from(vec![b' '; 2 * 1024 * 1024]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    assert_problem(too_large).await;
    let bad_json = post(Some("Bearer s3cret"), "{").await.unwrap();
    assert_eq!(bad_json.status(), 400);
    assert_problem(bad_json).await;
    let unknown = admin_get("/nowhere", Some("Bearer s3cret")).await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_problem(unknown).await;
}

/// Asserts an RFC 9457 body.
async fn assert_problem(response: http::Response<hyper::body::Incoming>) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], status);
}

fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_revalidate"))
}

#[test]
fn bad_flags_and_bad_config_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[routes]]\npath = \"/users/{id}\"\ntags = [\"user:{uid}\"]\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--config".into(),
                bad.display().to_string(),
            ],
            "bad.toml:3:",
        ),
        (
            vec!["serve".into(), "--upstream".into(), "ftp://x".into()],
            "invalid upstream \"ftp://x\"",
        ),
        (vec!["serve".into()], "no upstream: give --upstream URL"),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--tls-cert".into(),
                "cert.pem".into(),
            ],
            "--tls-key",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--admin-listen".into(),
                "0.0.0.0:0".into(),
            ],
            "without --admin-token",
        ),
        (
            vec![
                "serve".into(),
                "--listen".into(),
                "nowhere".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
            ],
            "invalid value",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--workers".into(),
                "0".into(),
            ],
            "invalid value '0' for '--workers",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--scheduler".into(),
                "sideways".into(),
            ],
            "invalid value 'sideways' for '--scheduler",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--redis".into(),
                "http://127.0.0.1:6379".into(),
            ],
            "--redis: \"http://127.0.0.1:6379\" is not a redis:// or rediss:// URL",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--redis-cluster".into(),
                "redis://127.0.0.1:7000,tcp://127.0.0.1:7001".into(),
            ],
            "--redis-cluster: \"tcp://127.0.0.1:7001\" is not a redis:// or rediss:// URL",
        ),
    ];
    for (args, expected) in cases {
        let output = binary()
            .args(&args)
            .env_remove("REVALIDATE_ADMIN_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = binary()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
            "--config",
            &bad.display().to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

/// SIGTERM lets an in-flight request finish before the process exits, whichever
/// way connections are scheduled; a hit is served either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    for scheduler in ["per-core", "work-stealing"] {
        sigterm_drains_in_flight_requests_with(scheduler).await;
    }
}

/// `revalidate serve` in front of `upstream` on a free port, with `args`, once it
/// accepts connections.
async fn spawn_binary(
    upstream: SocketAddr,
    args: &[&str],
    stderr: std::process::Stdio,
) -> (tokio::process::Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_revalidate"));
    command.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    if !args.contains(&"--admin-listen") {
        command.args(["--admin-listen", "127.0.0.1:0"]);
    }
    let child = command
        .args(["--upstream", &format!("http://{upstream}")])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

async fn sigterm_drains_in_flight_requests_with(scheduler: &str) {
    let origin = Origin::default();
    let (origin_addr, _o) = spawn(origin.router()).await;
    let (mut child, addr) = spawn_binary(
        origin_addr,
        &["--workers", "2", "--scheduler", scheduler],
        std::process::Stdio::null(),
    )
    .await;
    // Per-core workers are threads of their own, named for it; work-stealing
    // serves on the main runtime's threads. The listening sockets accept before
    // the threads have started: they are counted once they have.
    #[cfg(target_os = "linux")]
    {
        let pid = child.id().unwrap();
        let expected = if scheduler == "per-core" { 2 } else { 0 };
        let mut names = Vec::new();
        for _ in 0..100 {
            names = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .collect::<Vec<String>>();
            let workers = names
                .iter()
                .filter(|n| n.starts_with("revalidate-work"))
                .count();
            if workers == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let workers = names
            .iter()
            .filter(|n| n.starts_with("revalidate-work"))
            .count();
        assert_eq!(workers, expected, "{scheduler}: {names:?}");
    }
    request(addr, "GET", "/items/1", &[]).await;
    let hit = request(addr, "GET", "/items/1", &[]).await;
    assert!(
        cache_status(&hit).contains("hit"),
        "{scheduler}: {}",
        cache_status(&hit)
    );
    let in_flight = tokio::spawn(async move { request(addr, "GET", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status, 200,
        "{scheduler}: the in-flight request completed"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{scheduler}: {status:?}");
}

/// The proxy appends the peer's address to X-Forwarded-For; it never replaces the
/// last hop with what the client claims.
#[tokio::test]
async fn x_forwarded_for_gets_the_peer_appended() {
    let origin = Origin::default();
    let (origin_addr, _o) = spawn(origin.router()).await;
    let upstream = UpstreamClient::new(
        &format!("http://{origin_addr}"),
        &parse("", "t.toml").unwrap(),
    )
    .unwrap();
    let (app, _) = proxy(&parse("", "t.toml").unwrap(), upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    request(addr, "GET", "/xff", &[("x-forwarded-for", "203.0.113.9")]).await;
    let (_, headers) = origin.requests().pop().unwrap();
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

/// An unreachable upstream is a disconnected cache's case (RFC 9111 §4.2.4): stale
/// content is served even without stale-if-error.
#[tokio::test]
async fn a_disconnected_upstream_gets_stale_content() {
    let config = "[[routes]]\npath = \"/*\"\ncache_control = \"max-age=0\"\n";
    let (_origin, proxy, origin_task, _) = start(config).await;
    let first = request(proxy, "GET", "/gone-soon", &[]).await;
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    origin_task.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stale = request(proxy, "GET", "/gone-soon", &[]).await;
    assert_eq!(stale.status, 200, "{} {}", stale.body, cache_status(&stale));
    assert_eq!(stale.body, first.body);
    assert!(
        cache_status(&stale).contains("fwd-status=502"),
        "{}",
        cache_status(&stale)
    );
}

/// An absolute-form target names the site (RFC 9112 §3.2.2): the key and the
/// upstream's X-Forwarded-Host both use it, never a conflicting Host.
#[tokio::test]
async fn absolute_form_targets_key_and_forward_the_same_host() {
    let (origin, proxy, _o, _) = start("").await;
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let raw = "GET http://shop.test/abs HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n";
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("via shop.test"), "{response}");
    let (_, headers) = origin.requests().pop().unwrap();
    assert_eq!(headers["x-forwarded-host"], "shop.test");
}

/// An origin that answers one request per connection and then closes the connection
/// as the next request on it arrives, without answering it: the keep-alive race.
async fn origin_closing_reused_connections() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            served += 1;
            let body = format!("answer {served}");
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                // The first request: answered, the connection kept open.
                let _ = stream.read(&mut buffer).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                // The next one: read, then the connection closes unanswered.
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    addr
}

/// A GET or PUT sent on a pooled connection the origin closes under it is sent
/// again on a new one; a POST is not (the origin may have acted on it): a 502.
#[tokio::test]
async fn idempotent_requests_survive_a_closed_keep_alive_connection() {
    let origin = origin_closing_reused_connections().await;
    let upstream =
        UpstreamClient::new(&format!("http://{origin}"), &parse("", "t.toml").unwrap()).unwrap();
    let (app, _) = proxy(&parse("", "t.toml").unwrap(), upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    let first = request(addr, "GET", "/a", &[]).await;
    assert_eq!((first.status, first.body.as_str()), (200, "answer 1"));
    let second = request(addr, "GET", "/a", &[]).await;
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, "answer 2"),
        "sent again on a new connection"
    );

    // The retry's connection is not pooled: this POST opens one, which is, and the
    // origin closes it under the next POST.
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let send = |method: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}/a"))
            .body(Body::from("x"))
            .unwrap();
        client.request(request)
    };
    assert_eq!(send("POST").await.unwrap().status(), 200);
    let lost = send("POST").await.unwrap();
    assert_eq!(
        lost.status(),
        502,
        "a non-idempotent request is never sent twice"
    );
    // A PUT is idempotent: its body is held and sent again on a new connection.
    assert_eq!(send("PUT").await.unwrap().status(), 200);
    let again = send("PUT").await.unwrap();
    assert_eq!(again.status(), 200, "sent again");
    let body = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "answer 5", "the fifth connection: its own");
}

/// The example configuration in front of the demo: the user list is stored for two
/// seconds and stands in for the API when it fails (`stale_if_error` applies there,
/// unlike on routes the demo marks `no-cache`).
#[tokio::test]
async fn the_example_config_serves_the_demo_list_stale_when_the_demo_fails() {
    let (api, _dir) = support::sqlite().await;
    api.store.seed().await.unwrap();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = down.clone();
    let demo = api.app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
                }
                next.run(request).await
            }
        },
    ));
    let (demo_addr, _demo) = spawn(demo).await;
    let config = parse(
        include_str!("../../../revalidate.example.toml"),
        "revalidate.example.toml",
    )
    .unwrap();
    let upstream = UpstreamClient::new(&format!("http://{demo_addr}"), &config).unwrap();
    let (app, _) = proxy(&config, upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    let fresh = request(addr, "GET", "/users", &[]).await;
    assert_eq!(fresh.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    down.store(true, Ordering::SeqCst);
    let stale = request(addr, "GET", "/users", &[]).await;
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert_eq!(stale.body, fresh.body);
    assert!(
        cache_status(&stale).contains("stale-if-error"),
        "{}",
        cache_status(&stale)
    );
}

/// A client that never finishes its head cannot keep the process alive after
/// SIGTERM: its connection is closed at the drain deadline, and one on the admin
/// listener at the same deadline, not one drain later. The process raised its
/// file limit at start and said what capacity that gives.
#[tokio::test]
async fn sigterm_with_a_half_sent_head_exits_at_the_drain_deadline() {
    let origin = Origin::default();
    let (origin_addr, _o) = spawn(origin.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        "[client]\nheader_timeout = \"60s\"\ndrain_timeout = \"1s\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (mut child, addr) = spawn_binary(
        origin_addr,
        &["--config", &config, "--admin-listen", &admin.to_string()],
        std::process::Stdio::piped(),
    )
    .await;
    let mut streams = Vec::new();
    for listener in [addr, admin] {
        let mut stream = tokio::net::TcpStream::connect(listener).await.unwrap();
        stream
            .write_all(b"GET /q HTTP/1.1\r\nHost: a\r\nX-Half: ")
            .await
            .unwrap();
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    #[cfg(target_os = "linux")]
    {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
        let files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let numbers: Vec<&str> = files
            .split_whitespace()
            .filter(|w| w.parse::<u64>().is_ok())
            .collect();
        assert_eq!(
            numbers[0], numbers[1],
            "soft limit raised to the hard one: {files}"
        );
    }
    let pid = child.id().unwrap().to_string();
    let started = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the process exited")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // One drain of 1 s; the two one after the other took 2 s.
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("max_connections"), "{stderr}");
    assert!(stderr.contains("drain deadline"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when not a terminal: {stderr}"
    );
}

#[test]
fn serve_check_validates_without_starting() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../revalidate.example.toml");
    let ok = binary()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
            "--check",
            "--config",
            example,
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cache]\nmax_bytes = \"lots\"\n").unwrap();
    let refused = binary()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
            "--check",
            "--config",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.toml:2:"), "{stderr}");
}

#[test]
fn completions_and_the_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = binary().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("revalidate") && script.contains("upstream"),
            "{shell}"
        );
    }
    let man = binary().arg("manpage").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH revalidate 1"), "{page}");
    assert!(page.contains("serve"), "subcommands are listed");
}

/// A list field sent on several lines is one list (RFC 9110 §5.3): the proxy
/// appends itself to `Via` and the peer to `X-Forwarded-For` after every earlier
/// member, and forwards the one request id it logs, not a second one that the
/// application's server would join to it.
#[tokio::test]
async fn list_fields_on_several_lines_keep_every_member() {
    let (origin, proxy, _o, _) = start("").await;
    request(
        proxy,
        "GET",
        "/lists",
        &[
            ("via", "1.0 first"),
            ("via", "1.1 second"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("x-request-id", "id-one"),
            ("x-request-id", "id-two"),
        ],
    )
    .await;
    let (_, headers) = origin.requests().pop().unwrap();
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(all("via"), ["1.0 first, 1.1 second, 1.1 revalidate"]);
    assert_eq!(all("x-forwarded-for"), ["192.0.2.1, 192.0.2.2, 127.0.0.1"]);
    assert_eq!(all("x-request-id"), ["id-one"]);
}

/// An HTTP/1.0 upstream: the client still gets HTTP/1.1 and keeps its
/// connection, and both directions carry `Via` (RFC 9110 §7.6.3).
#[tokio::test]
async fn clients_get_the_proxys_http_version_and_via() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let seen_via = Arc::new(Mutex::new(Vec::new()));
    let seen = seen_via.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let via = head
                    .lines()
                    .find_map(|l| l.strip_prefix("via: "))
                    .unwrap_or("")
                    .to_string();
                seen.lock().unwrap().push(via);
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok")
                    .await;
            });
        }
    });
    let config = parse("", "t.toml").unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin_addr}"), &config).unwrap();
    let (app, _) = proxy(&config, upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        client
            .write_all(b"GET /old HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&response).ends_with("ok") {
            let n = client.read(&mut buffer).await.unwrap();
            assert!(
                n > 0,
                "the connection was closed: {}",
                String::from_utf8_lossy(&response)
            );
            response.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("via: 1.0 revalidate"), "{text}");
    }
    assert_eq!(
        seen_via.lock().unwrap().as_slice(),
        ["1.1 revalidate", "1.1 revalidate"]
    );
}

/// One access line per request, written off the request path: the client's
/// request id is kept (and returned), others get one, and JSON lines parse.
#[tokio::test]
async fn access_lines_carry_the_request_and_its_outcome() {
    let origin = Origin::default();
    let logged = LoggedProxy::start(origin.router(), ClientLimits::default(), None).await;
    let addr = logged.addr;

    request(
        addr,
        "GET",
        "/t?x=1",
        &[("x-request-id", "client-id-1"), ("user-agent", "tester/1")],
    )
    .await;
    let (_, forwarded) = origin.requests().pop().unwrap();
    assert_eq!(
        forwarded["x-request-id"], "client-id-1",
        "the upstream sees it too"
    );
    request(addr, "GET", "/t?x=1", &[]).await;
    // A miss without an id: the one the upstream received is the one logged.
    request(addr, "GET", "/u", &[]).await;
    let (_, forwarded) = origin.requests().pop().unwrap();
    let forwarded_id = forwarded["x-request-id"].to_str().unwrap().to_string();

    let (text, lines) = logged.lines();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[2]["request_id"], forwarded_id.as_str());
    assert!(
        lines[2]["upstream_seconds"].as_f64().is_some(),
        "{}",
        lines[2]
    );
    assert!(
        lines[0]["upstream_seconds"].as_f64().is_some(),
        "a stored miss too"
    );
    assert_eq!(lines[0]["request_id"], "client-id-1");
    assert_eq!(lines[0]["user_agent"], "tester/1");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["target"], "/t?x=1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["client"], "127.0.0.1");
    let logged = humantime::parse_rfc3339(lines[0]["time"].as_str().unwrap()).unwrap();
    let off = std::time::SystemTime::now()
        .duration_since(logged)
        .unwrap_or_else(|early| early.duration());
    assert!(off < Duration::from_secs(10), "{}", lines[0]);
    assert!(
        lines[0]["cache_status"]
            .as_str()
            .unwrap()
            .contains("fwd=uri-miss")
    );
    assert!(lines[0]["total_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        lines[1]["request_id"].as_str().unwrap().len(),
        16,
        "one made for it"
    );
    // Nothing of the first request's line is left in the next one's.
    assert!(lines[1]["user_agent"].is_null(), "{}", lines[1]);
    assert_eq!(lines[1]["target"], "/t?x=1");
    assert!(
        lines[1]["cache_status"].as_str().unwrap().contains("hit"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1]["upstream_seconds"].is_null(),
        "a hit asks no upstream"
    );
}

/// A request that never reaches the service still gets its access line, with
/// its status: a head hyper refuses (and answers itself), and a head the header
/// timeout cuts short (408, closed without an answer), and a head its client
/// stops sending and closes on (400, as nginx logs it). No layer sees such a
/// request, so without one an operator would not see malformed, oversized,
/// trickled or abandoned heads at all. A connection that sends nothing is no
/// request.
#[tokio::test]
async fn requests_that_never_reach_the_service_are_logged_with_their_status() {
    let origin = Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let config = parse("[client]\nheader_timeout = \"300ms\"\n", "t.toml").unwrap();
    let logged = LoggedProxy::start(origin, ClientLimits::new(&config.client), None).await;
    let addr = logged.addr;

    let many_fields: String = (0..120).map(|i| format!("x-f{i}: v\r\n")).collect();
    let heads = [
        (
            "GET /ok HTTP/1.1\r\nHost: a\r\nbad field: x\r\n\r\n".to_owned(),
            400,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000)),
            414,
        ),
        (
            format!("GET /ok HTTP/1.1\r\nHost: a\r\n{many_fields}\r\n"),
            431,
        ),
        ("GET /ok HTTP/1.1\r\nHo".to_owned(), 408),
        // Closed by its client: after the request line, and within it.
        ("GET /ok HTTP/1.1\r\nHo".to_owned(), 400),
        ("GET /ok HTT".to_owned(), 400),
        (String::new(), 0),
    ];
    for (at, (head, status)) in heads.iter().enumerate() {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(head.as_bytes()).await.unwrap();
        if (4..6).contains(&at) {
            client.shutdown().await.unwrap();
        }
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        match (at, status) {
            (4..6, _) | (_, 408 | 0) => assert_eq!(answer, "", "closed without an answer"),
            _ => assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{answer}"
            ),
        }
    }
    // An HTTP/2 preface where a keep-alive connection's next head was due:
    // hyper answers nothing, and no line claims it did.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    // A keep-alive connection's next head, abandoned the same way once the
    // first request is answered.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok") {
        let mut piece = [0; 512];
        let n = client.read(&mut piece).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&piece[..n]);
    }
    client.write_all(b"GET /ok HTTP/1.1\r\nHo").await.unwrap();
    client.shutdown().await.unwrap();
    client.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(request(addr, "GET", "/ok", &[]).await.status, 200);

    let (text, lines) = logged.lines();
    assert_eq!(lines.len(), 10, "{text}");
    let refused = lines[..6].iter().chain(&lines[8..9]);
    let statuses = heads[..6].iter().map(|(_, status)| status).chain([&400]);
    for (line, status) in refused.zip(statuses) {
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["client"], "127.0.0.1");
        assert!(
            line["method"].is_null() && line["target"].is_null(),
            "{line}"
        );
        assert!(line["total_seconds"].is_null(), "{line}");
        assert_eq!(line["request_id"].as_str().unwrap().len(), 16);
    }
    for line in lines[6..8].iter().chain(&lines[9..]) {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["target"], "/ok");
    }
}

/// An access line is written when the response body ends, with the bytes the
/// body gave (a streamed answer of unknown length too), and a request its client
/// abandons before the response is logged with status 499, as nginx does. A
/// client that closes while its response is still going out (its body handed to
/// hyper whole, the socket full) has that response's line only: no head was cut
/// short.
#[tokio::test]
async fn access_lines_count_the_bytes_sent_and_abandoned_requests() {
    let origin = Router::new()
        .route(
            "/stream",
            axum::routing::get(|| async {
                let pieces = (0..3).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1000]));
                (
                    [("cache-control", "no-store")],
                    Body::from_stream(futures_util::stream::iter(pieces)),
                )
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late"
            }),
        )
        .route(
            "/big",
            axum::routing::get(|| async { ([("cache-control", "max-age=60")], vec![b'x'; BIG]) }),
        );
    /// Beyond what the socket buffers take while the client reads nothing (the
    /// server's send buffer grows to 4 MiB at most by default).
    const BIG: usize = 6 << 20;
    let logged = LoggedProxy::start(origin, ClientLimits::default(), None).await;
    let addr = logged.addr;

    let streamed = request(addr, "GET", "/stream", &[]).await;
    assert_eq!(streamed.body.len(), 3000);
    let mut gone = tokio::net::TcpStream::connect(addr).await.unwrap();
    gone.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stored, then asked for by a client that closes its side once its answer
    // begins, and reads no more: the hit's body went to hyper whole, which is
    // still sending it when it reads the client's end.
    assert_eq!(request(addr, "GET", "/big", &[]).await.body.len(), BIG);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut closing = socket.connect(addr).await.unwrap();
    closing
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    closing.read_exact(&mut [0; 12]).await.unwrap();
    closing.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(closing);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (text, lines) = logged.lines();
    assert_eq!(lines.len(), 4, "{text}");
    for line in &lines[2..] {
        assert_eq!(line["target"], "/big", "{text}");
        assert_eq!(line["status"], 200, "{text}");
    }
    assert_eq!(lines[0]["target"], "/stream");
    assert_eq!(lines[0]["bytes"], 3000, "{}", lines[0]);
    assert_eq!(lines[1]["target"], "/slow");
    assert_eq!(lines[1]["status"], 499, "{}", lines[1]);
    assert_eq!(lines[1]["bytes"], 0);
    let waited = lines[1]["total_seconds"].as_f64().unwrap();
    assert!((0.15..1.5).contains(&waited), "{waited}");
}
