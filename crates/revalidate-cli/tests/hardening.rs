//! `revalidate serve` against hostile clients and misbehaving origins, over real
//! sockets: what is forwarded is what is keyed, every wait has a bound, malformed
//! requests are the client's error, and lost keep-alive connections cost no write.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use http::{HeaderMap, StatusCode};
use revalidate_cli::serve::server::{self, ClientLimits};
use revalidate_cli::serve::{ServeConfig, UpstreamClient, parse, proxy};
use support::proxy::{Reply, request, send, spawn, spawn_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The targets an origin received, as it received them.
type Seen = Arc<Mutex<Vec<String>>>;

/// An origin that routes on the raw path (no percent-decoding, as many routers
/// do) and reads its query split on `&` and `;` (as Rack 2 and older Python
/// `parse_qs` do); its 404s are cacheable for a minute. It reads every request
/// body whole before answering.
fn raw_origin(seen: Seen) -> Router {
    Router::new().fallback(move |uri: http::Uri, headers: HeaderMap, _body: String| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(uri.to_string());
            let a = uri
                .query()
                .unwrap_or("")
                .split(['&', ';'])
                .filter_map(|p| p.strip_prefix("a="))
                .next_back()
                .unwrap_or("-")
                .to_string();
            let underscored = headers.keys().any(|n| n.as_str().contains('_'));
            let cc = [("cache-control", "public, max-age=60")];
            match uri.path() {
                "/users/3" => (cc, "user 3".to_string()).into_response(),
                "/q" => (cc, format!("a={a}")).into_response(),
                "/echo" => (cc, format!("underscored={underscored}")).into_response(),
                "/big" => (cc, "x".repeat(200_000)).into_response(),
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    (cc, "slow".to_string()).into_response()
                }
                _ => (StatusCode::NOT_FOUND, cc, "not found".to_string()).into_response(),
            }
        }
    })
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The proxy with `config` in front of `origin`.
async fn start_proxy(config: &str, origin: SocketAddr) -> SocketAddr {
    let config: ServeConfig = parse(config, "test.toml").unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin}"), &config).unwrap();
    let limits = ClientLimits::new(&config.client);
    let (app, _) = proxy(&config, upstream).unwrap();
    spawn_proxy(app, limits).await
}

/// Serves `router` on a free port.
async fn serve_router(router: Router) -> SocketAddr {
    spawn(router).await.0
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers).await
}

/// Writes `bytes` on a new connection and reads until the server closes it or
/// `within` passes; the reply and how long the connection lasted.
async fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> (String, Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut reply)).await;
    (
        String::from_utf8_lossy(&reply).into_owned(),
        started.elapsed(),
    )
}

fn is_problem(reply: &str, status: u16) -> bool {
    reply.starts_with(&format!("HTTP/1.1 {status} ")) && reply.contains("application/problem+json")
}

const ROUTES: &str = r#"
[defaults]
query = { drop = ["utm_*"] }

[[routes]]
path = "/users/{id}"
default_ttl = "60s"
"#;

/// `GET /%75sers/3` with `no-cache` once stored the origin's 404 (it routes on the
/// raw path) under `/users/3`; the origin now receives `/users/3` itself.
#[tokio::test]
async fn percent_encoding_cannot_poison_a_key() {
    let seen = Seen::default();
    let origin = serve_router(raw_origin(seen.clone())).await;
    let proxy = start_proxy(ROUTES, origin).await;
    for method in ["GET", "HEAD"] {
        let attack = send(
            proxy,
            method,
            "/%75sers/3",
            &[("cache-control", "no-cache")],
            "",
        )
        .await;
        assert_eq!(attack.status, 200, "{method}");
    }
    let victim = get(proxy, "/users/3", &[]).await;
    assert_eq!((victim.status, victim.body.as_str()), (200, "user 3"));
    assert!(
        victim.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert!(
        seen.lock().unwrap().iter().all(|t| t == "/users/3"),
        "{seen:?}"
    );
}

/// `?a=1&utm_source=x;a=2` was keyed as `?a=1` but forwarded whole, so an origin
/// splitting on `;` answered for a=2 to every `?a=1` client.
#[tokio::test]
async fn a_dropped_parameter_cannot_cloak_another() {
    let seen = Seen::default();
    let origin = serve_router(raw_origin(seen.clone())).await;
    let proxy = start_proxy(ROUTES, origin).await;
    let attack = get(proxy, "/q?a=1&utm_source=x;a=2", &[]).await;
    assert_eq!(attack.body, "a=1", "the origin never saw a=2");
    assert_eq!(get(proxy, "/q?a=1", &[]).await.body, "a=1");
    assert_eq!(seen.lock().unwrap().as_slice(), ["/q?a=1"]);
}

#[tokio::test]
async fn override_headers_and_underscored_names_never_reach_the_origin() {
    let seen = Seen::default();
    let origin = serve_router(raw_origin(seen)).await;
    let proxy = start_proxy("", origin).await;
    let attack = [
        ("x-forwarded-prefix", "/evil"),
        ("x-host", "evil.test"),
        ("x-original-host", "evil.test"),
        ("x-forwarded-uri", "/evil"),
        ("x_forwarded_host", "evil.test"),
        ("x-forwarded_host", "evil.test"),
    ];
    let reply = get(proxy, "/echo", &attack).await;
    assert_eq!(reply.body, "underscored=false");

    let allowed = start_proxy("[client]\nforward_underscored_headers = true\n", origin).await;
    let reply = get(allowed, "/echo?x", &[("x_custom", "1")]).await;
    assert_eq!(reply.body, "underscored=true", "forwarded when configured");
}

/// An origin whose requests `received` records, as raw request heads.
async fn recording_origin() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    (serve_router(raw_origin(seen.clone())).await, seen)
}

#[tokio::test]
async fn malformed_requests_are_refused_and_never_forwarded() {
    let (origin, seen) = recording_origin().await;
    let proxy = start_proxy("", origin).await;
    let cases: [(&str, u16); 9] = [
        ("GET /q HTTP/1.1\r\n\r\n", 400),
        ("GET /q HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET /q HTTP/1.1\r\nHost: \r\n\r\n", 400),
        ("GET /q HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET ftp://a/q HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
        (
            "POST /q HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
    ];
    for (request, status) in cases {
        let (reply, _) = exchange(proxy, request.as_bytes(), Duration::from_secs(2)).await;
        assert!(is_problem(&reply, status), "{request:?} -> {reply:?}");
    }
    assert!(seen.lock().unwrap().is_empty(), "{seen:?}");
}

#[tokio::test]
async fn bad_chunked_framing_is_a_400_not_an_upstream_failure() {
    let (origin, _) = recording_origin().await;
    let proxy = start_proxy("", origin).await;
    for method in ["POST", "PUT"] {
        let request = format!(
            "{method} /q HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        );
        let (reply, _) = exchange(proxy, request.as_bytes(), Duration::from_secs(2)).await;
        assert!(is_problem(&reply, 400), "{method}: {reply:?}");
    }
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408() {
    let (origin, _) = recording_origin().await;
    let proxy = start_proxy("[client]\nbody_timeout = \"300ms\"\n", origin).await;
    // PUT is held for a retry, POST streams: both are bounded.
    for method in ["PUT", "POST"] {
        let request =
            format!("{method} /q HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789");
        let (reply, lasted) = exchange(proxy, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(is_problem(&reply, 408), "{method}: {reply:?}");
        assert!(lasted < Duration::from_secs(3), "{method}: {lasted:?}");
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_head_is_cut_off() {
    let (origin, _) = recording_origin().await;
    let proxy = start_proxy("[client]\nheader_timeout = \"400ms\"\n", origin).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    // One byte every 100 ms, as slowloris does: the connection is active, but its
    // head never completes.
    let trickle = async {
        for byte in
            b"GET /q HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .unwrap();
    let lasted = started.elapsed();
    assert!(
        lasted < Duration::from_millis(1500),
        "cut off after {lasted:?}"
    );
    // A silent connection is held to the same bound.
    let (reply, lasted) = exchange(proxy, b"", Duration::from_secs(5)).await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply:?}"
    );
    assert!(lasted < Duration::from_millis(1500), "{lasted:?}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_are_not() {
    let (origin, _) = recording_origin().await;
    let config = "[client]\nkeepalive_timeout = \"400ms\"\nheader_timeout = \"2s\"\n";
    let proxy = start_proxy(config, origin).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    // Requests every 150 ms for a second: longer than the idle bound in all, never
    // idle that long; the slow one keeps the connection busy for 600 ms.
    for path in ["/q", "/q", "/slow", "/q", "/q", "/q", "/q"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = vec![0; 4096];
        let n = stream.read(&mut reply).await.unwrap();
        assert!(reply[..n].starts_with(b"HTTP/1.1 200"), "{path}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was closed");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

/// An origin that answers with a Content-Length of 10,000, sends 100 bytes and
/// then nothing, keeping the connection open.
async fn stalling_origin() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let _ = stream.read(&mut buffer).await;
                let head =
                    "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 10000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 100]).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_and_nothing_is_stored() {
    let origin = stalling_origin().await;
    let proxy = start_proxy("[upstream]\nbody_timeout = \"300ms\"\n", origin).await;
    for _ in 0..2 {
        let (reply, lasted) = exchange(
            proxy,
            b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(lasted < Duration::from_secs(3), "{lasted:?}");
        assert!(
            !reply.contains("cache-status: revalidate; hit"),
            "never stored: {reply:?}"
        );
        // The body, if the head was sent, ends short: the connection closed.
        if let Some((_, body)) = reply.split_once("\r\n\r\n") {
            assert!(body.len() < 10_000, "{} bytes", body.len());
        }
    }
}

/// A listener that never accepts, its queue full: connecting to it hangs.
fn black_hole() -> (std::net::SocketAddr, Vec<std::net::TcpStream>) {
    let socket = socket2_like_listener();
    let addr = socket.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        match stream {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    std::mem::forget(socket);
    (addr, held)
}

/// A listening socket with a backlog of one.
fn socket2_like_listener() -> std::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    listener.into_std().unwrap()
}

#[tokio::test]
async fn connecting_to_the_upstream_is_bounded() {
    let (origin, _held) = black_hole();
    let config = "[upstream]\nconnect_timeout = \"300ms\"\ntimeout = \"10s\"\n";
    let proxy = start_proxy(config, origin).await;
    let started = Instant::now();
    let reply = get(proxy, "/q", &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn at_the_connection_limit_new_connections_wait_for_a_free_one() {
    let (origin, _) = recording_origin().await;
    let config = "[client]\nmax_connections = 2\nheader_timeout = \"600ms\"\n";
    let proxy = start_proxy(config, origin).await;
    let silent: Vec<TcpStream> = vec![
        TcpStream::connect(proxy).await.unwrap(),
        TcpStream::connect(proxy).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        exchange(
            proxy,
            b"GET /q HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "not served while two connections are open"
    );
    let (reply, _) = waiting.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    // Served once the silent connections reached their header bound.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// Racing writes through the proxy to an origin that closes idle keep-alive
/// connections after a few milliseconds: the proxy's pooled connections are closed
/// under it, and every PUT is sent again rather than answered 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_an_origin_that_closes_idle_connections() {
    let origin_app =
        Router::new().fallback(|body: String| async move { format!("stored {}", body.len()) });
    let (listener, origin) = listen().await;
    let quick_close = ClientLimits::new(
        &parse("[client]\nkeepalive_timeout = \"20ms\"\n", "origin.toml")
            .unwrap()
            .client,
    );
    tokio::spawn(server::run(
        listener,
        move |_| origin_app.clone(),
        std::future::pending(),
        quick_close,
    ));
    let proxy = start_proxy("", origin).await;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..100 {
                let reply =
                    send(proxy, "PUT", &format!("/items/{worker}"), &[], "0123456789").await;
                if reply.status != 200 {
                    failures.push((reply.status, reply.body));
                }
                // Pauses around the origin's idle bound, so that reuse races the close.
                tokio::time::sleep(Duration::from_millis(((worker * 7 + i * 3) % 25) as u64)).await;
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// A large upload at the client's own pace, pauses included, is not the
/// upstream's delay: the upstream's `timeout` runs from the last piece of the
/// body it took, and not while the body waits for the client, so the request is
/// answered and the server is not counted as failing.
#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    let (origin, _) = recording_origin().await;
    let config = "[client]\nbody_timeout = \"2s\"\n\
                  [upstream]\ntimeout = \"500ms\"\nmax_fails = 1\nretry_body_bytes = \"1 KiB\"\n";
    let proxy = start_proxy(config, origin).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let piece = [b'x'; 4096];
    let head = format!(
        "POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        piece.len() * 8
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // 2.4 s in all, with a pause of 1 s: more than the upstream's timeout, within
    // the client's body timeout.
    for i in 0..8 {
        stream.write_all(&piece).await.unwrap();
        let pause = if i == 3 { 1000 } else { 200 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let mut reply = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let after = get(proxy, "/q?a=after", &[]).await;
    assert_eq!(after.status, 200, "the server is still in the rotation");
}

/// An HTTP/2 client that never opens its stream's flow-control window holds a
/// response up without a write ever blocking: the send bound closes the
/// connection all the same, instead of letting it (and its connection permit)
/// be held forever.
#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_is_cut_off() {
    let (origin, _) = recording_origin().await;
    let proxy = start_proxy("[client]\nsend_timeout = \"1s\"\n", origin).await;
    // Stored first, so that the body is ready at once.
    assert_eq!(get(proxy, "/big", &[]).await.body.len(), 200_000);
    let client: hyper_util::client::legacy::Client<_, axum::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(0)
            .build_http();
    let response = client
        .request(
            http::Request::get(format!("http://{proxy}/big"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let mut body = response.into_body();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await;
    assert!(
        matches!(ended, Ok(None | Some(Err(_)))),
        "the stream is still open after {:?}: {ended:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
