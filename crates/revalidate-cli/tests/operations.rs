//! What an operator runs `revalidate serve` with, end to end: reloading its
//! configuration (SIGHUP, `POST /reload`), several upstream servers with health
//! checks, and TLS on both sides.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use revalidate_cli::serve::server::ClientLimits;
use support::proxy::{Reply, cache_status, request, send, spawn};

/// Counts the requests each path received.
type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// An origin whose `/items/{id}` and `/slow` answer with how often they were
/// asked, cacheable for a minute.
fn counting_origin(seen: Seen) -> Router {
    async fn item(State(seen): State<Seen>, UrlPath(id): UrlPath<String>) -> impl IntoResponse {
        let n = {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(format!("/items/{id}")).or_default();
            *n += 1;
            *n
        };
        (
            [("cache-control", "max-age=60")],
            format!("item {id}, call {n}"),
        )
    }
    async fn slow() -> impl IntoResponse {
        tokio::time::sleep(Duration::from_millis(600)).await;
        ([("cache-control", "no-store")], "slow")
    }
    async fn proto(headers: http::HeaderMap) -> impl IntoResponse {
        let proto = headers
            .get("x-forwarded-proto")
            .map_or("none", |v| v.to_str().unwrap_or("invalid"))
            .to_string();
        ([("cache-control", "no-store")], proto)
    }
    Router::new()
        .route("/items/{id}", get(item))
        .route("/slow", get(slow))
        .route("/proto", get(proto))
        .with_state(seen)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary in front of `upstream` with `config`, once both its listeners
/// accept; stderr goes to `log`.
struct Running {
    child: tokio::process::Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Running {
    async fn start(upstream: SocketAddr, config: &Path, log: &Path) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_revalidate"))
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--upstream", &format!("http://{upstream}")])
            .arg("--config")
            .arg(config)
            .args(["--access-log", "off"])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for target in [addr, admin] {
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(target).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Self { child, addr, admin }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    async fn generation(&self) -> u64 {
        let stats = request(self.admin, "GET", "/stats", &[]).await;
        let stats: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
        stats["config_generation"].as_u64().unwrap()
    }

    /// Waits until the configuration's number is `generation`.
    async fn wait_for_generation(&self, generation: u64) {
        for _ in 0..200 {
            if self.generation().await == generation {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the configuration never reached generation {generation}");
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

const BEFORE: &str = r#"
[[routes]]
path = "/items/{id}"

[[routes]]
path = "/static/*"
"#;

/// The same routes, `/items/{id}` keyed by Accept-Language too; `/static/*` with
/// another TTL only.
const AFTER: &str = r#"
[[routes]]
path = "/items/{id}"
key_headers = ["accept-language"]

[[routes]]
path = "/static/*"
default_ttl = "5s"
"#;

fn hit(reply: &Reply) -> bool {
    cache_status(reply).contains("hit")
}

/// SIGHUP puts a changed file in force without a restart: requests in flight
/// finish, stored entries stay unless their route's key recipe changed (those
/// are dropped, never served under the new key), and a broken file is refused
/// with one log line while the running configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_and_keeps_what_it_may() {
    let seen = Seen::default();
    let (origin, _o) = spawn(counting_origin(seen.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("revalidate.toml");
    let log = dir.path().join("stderr.log");
    std::fs::write(&config, BEFORE).unwrap();
    let mut proxy = Running::start(origin, &config, &log).await;
    assert_eq!(proxy.generation().await, 0);

    for _ in 0..2 {
        request(proxy.addr, "GET", "/items/1", &[]).await;
    }
    assert!(hit(&request(proxy.addr, "GET", "/items/1", &[]).await));
    let static_first = request(proxy.addr, "GET", "/static/a", &[]).await;
    assert_eq!(static_first.status, 404, "the origin has no /static");

    // A request in flight while the configuration changes.
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { request(addr, "GET", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::write(&config, AFTER).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_generation(1).await;
    assert_eq!(
        in_flight.await.unwrap().status,
        200,
        "finished on the old one"
    );
    assert!(proxy.still_running(), "SIGHUP does not end the process");

    // /items/{id} has a new key recipe: its entry is gone, not served as the
    // answer for every language.
    let after = request(proxy.addr, "GET", "/items/1", &[("accept-language", "fr")]).await;
    assert!(!hit(&after), "{}", cache_status(&after));
    assert_eq!(after.body, "item 1, call 2");
    assert_eq!(seen.lock().unwrap()["/items/1"], 2);
    let again = request(proxy.addr, "GET", "/items/1", &[("accept-language", "fr")]).await;
    assert!(
        hit(&again),
        "keyed by language now: {}",
        cache_status(&again)
    );
    let other = request(proxy.addr, "GET", "/items/1", &[("accept-language", "de")]).await;
    assert!(!hit(&other), "another language, another key");

    // A broken file: refused, one line, the running configuration stays.
    std::fs::write(&config, "[[routes]]\npath = \"no-slash\"\n").unwrap();
    proxy.signal("HUP");
    let mut refused = String::new();
    for _ in 0..200 {
        refused = std::fs::read_to_string(&log).unwrap();
        if refused.contains("reload refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let lines: Vec<&str> = refused
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(lines.len(), 1, "{refused}");
    assert!(
        lines[0].contains("no-slash"),
        "names the problem: {}",
        lines[0]
    );
    assert!(proxy.still_running());
    assert_eq!(proxy.generation().await, 1);
    let kept = request(proxy.addr, "GET", "/items/1", &[("accept-language", "fr")]).await;
    assert!(
        hit(&kept),
        "still the reloaded recipe: {}",
        cache_status(&kept)
    );

    // POST /reload does the same over the admin API, and says what it did.
    std::fs::write(&config, AFTER).unwrap();
    let reloaded = send(proxy.admin, "POST", "/reload", &[], "").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let done: serde_json::Value = serde_json::from_str(&reloaded.body).unwrap();
    assert_eq!(done["generation"], 2);
    assert_eq!(done["dropped"], 0, "the same recipes: nothing to drop");
    let kept = request(proxy.addr, "GET", "/items/1", &[("accept-language", "fr")]).await;
    assert!(
        hit(&kept),
        "entries survive a reload: {}",
        cache_status(&kept)
    );

    std::fs::write(&config, "[cache]\nmax_bytes = \"lots\"\n").unwrap();
    let refused = send(proxy.admin, "POST", "/reload", &[], "").await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        refused.headers["content-type"], "application/problem+json",
        "{}",
        refused.body
    );
    assert_eq!(proxy.generation().await, 2);
}

/// An origin on a runtime of its own, so that it can crash: dropping the
/// runtime ends every task, its connections' included, as a killed process's
/// sockets end.
struct Crashable {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    served: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
}

impl Crashable {
    /// `/items/{id}` (not stored), `/fresh` (stale for an hour if the upstream
    /// fails) and `/health` (503 while `healthy` is false).
    fn start() -> Self {
        let served = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let counter = served.clone();
        let item = get(move |UrlPath(id): UrlPath<String>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
                ([("cache-control", "no-store")], format!("item {id}"))
            }
        });
        let fresh = get(|| async {
            (
                [("cache-control", "max-age=0, stale-if-error=3600")],
                "fresh",
            )
        });
        let health_flag = healthy.clone();
        let health = get(move || {
            let up = health_flag.load(Ordering::Relaxed);
            async move {
                if up {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        });
        let router = Router::new()
            .route("/items/{id}", item)
            .route("/fresh", fresh)
            .route("/health", health);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            addr,
            runtime: Some(runtime),
            served,
            healthy,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn crash(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The proxy over `origins` with `config`, and its admin API, in process.
async fn balanced_proxy(origins: &[&Crashable], config: &str) -> (SocketAddr, SocketAddr) {
    let urls = origins.iter().map(|o| o.url()).collect();
    let operated = support::operator::start_over(urls, config, None, None).await;
    (operated.addr, operated.admin)
}

const BALANCED: &str = r#"
[upstream]
max_fails = 2
fail_timeout = "30s"
"#;

/// One of three upstream servers crashes under load: no client sees an error
/// (requests caught on it are idempotent and go to another server), the crashed
/// one leaves the rotation, and the proxy stays ready. With every server down,
/// what may be served stale is, the rest is a 502 problem, and `/readyz` says
/// 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_upstream_server_costs_no_client_request() {
    let mut origins = [Crashable::start(), Crashable::start(), Crashable::start()];
    let (addr, admin) = balanced_proxy(&origins.iter().collect::<Vec<_>>(), BALANCED).await;
    assert_eq!(request(addr, "GET", "/fresh", &[]).await.status, 200);

    let failures = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..8)
        .map(|worker| {
            let failures = failures.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let reply = request(addr, "GET", &format!("/items/{worker}-{i}"), &[]).await;
                    if reply.status != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while origins.iter().map(Crashable::served).sum::<usize>() < 120 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_crash = origins[1].served();
    assert!(before_crash > 0, "the servers share the load");
    origins[1].crash();
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no client error");
    assert!(origins.iter().map(Crashable::served).sum::<usize>() >= 480);
    assert!(origins[0].served() > 100 && origins[2].served() > 100);
    let stats = request(admin, "GET", "/stats", &[]).await;
    let stats: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    let available: Vec<bool> = stats["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["available"].as_bool().unwrap())
        .collect();
    assert_eq!(available, [true, false, true], "{stats}");
    assert_eq!(request(admin, "GET", "/readyz", &[]).await.status, 200);

    origins[0].crash();
    origins[2].crash();
    for _ in 0..3 {
        let down = request(addr, "GET", "/items/x", &[]).await;
        assert_eq!(down.status, 502, "{}", down.body);
        assert_eq!(down.headers["content-type"], "application/problem+json");
    }
    let stale = request(addr, "GET", "/fresh", &[]).await;
    assert_eq!(
        stale.status,
        200,
        "stale-if-error: {}",
        cache_status(&stale)
    );
    assert_eq!(stale.body, "fresh");
    let readyz = request(admin, "GET", "/readyz", &[]).await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert_eq!(readyz.headers["content-type"], "application/problem+json");
}

/// An active check that fails takes a server out before any client request
/// meets it; one that passes again brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_steer_requests() {
    let origins = [Crashable::start(), Crashable::start()];
    let config = r#"
[upstream.health]
path = "/health"
interval = "50ms"
timeout = "200ms"
"#;
    let (addr, admin) = balanced_proxy(&origins.iter().collect::<Vec<_>>(), config).await;
    origins[1].healthy.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = origins[1].served();
    for i in 0..20 {
        assert_eq!(
            request(addr, "GET", &format!("/items/{i}"), &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        origins[1].served(),
        before,
        "no request for the unhealthy server"
    );
    assert_eq!(request(admin, "GET", "/readyz", &[]).await.status, 200);

    origins[1].healthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        request(addr, "GET", &format!("/items/back-{i}"), &[]).await;
    }
    assert!(origins[1].served() > before, "back in the rotation");
}

/// A certificate authority and a certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

/// An origin serving `counting_origin` over TLS with `cert` and `key`.
async fn tls_origin(cert: &Path, key: &Path, seen: Seen) -> SocketAddr {
    let tls = revalidate_cli::serve::tls::ListenerTls::load(cert, key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = counting_origin(seen);
    tokio::spawn(revalidate_cli::serve::server::run_with_tls(
        listener,
        move |_| router.clone(),
        std::future::pending(),
        ClientLimits::default(),
        Some(tls),
    ));
    addr
}

/// An upstream server whose certificate is refused is passed over as one that
/// refuses connections is: the handshake fails before the request is sent, so
/// every request, a POST too, goes on to a server that is trusted.
#[tokio::test]
async fn a_server_whose_certificate_is_refused_is_passed_over() {
    let trusted = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(trusted.path());
    let unknown = tempfile::tempdir().unwrap();
    let (_, other_cert, other_key) = certificates(unknown.path());
    let good = tls_origin(&cert, &key, Seen::default()).await;
    let bad = tls_origin(&other_cert, &other_key, Seen::default()).await;
    let config = revalidate_cli::serve::config::parse(
        &format!(
            "[upstream]\nca_file = {:?}\nbalance = \"round-robin\"\nmax_fails = 100\n",
            ca.display().to_string()
        ),
        "t.toml",
    )
    .unwrap();
    let servers = [bad, good].map(|addr| format!("https://localhost:{}", addr.port()));
    let upstream = revalidate_cli::serve::UpstreamClient::balanced(&servers, &config).unwrap();
    let (app, _) = revalidate_cli::serve::proxy(&config, upstream).unwrap();
    let proxy = support::proxy::spawn_proxy(app, ClientLimits::default()).await;
    for i in 0..6 {
        let reply = request(proxy, "GET", &format!("/items/{i}"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let reply = send(proxy, "POST", "/items/1", &[], "x").await;
        assert_ne!(reply.status, 502, "{}", reply.body);
    }
}

/// A TLS handshake with the proxy, trusting only `ca`.
async fn handshake(addr: SocketAddr, ca: &Path) -> Result<(), String> {
    let config = revalidate_cli::serve::tls::upstream_config(Some(ca)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Over TLS the bounds see the handshake's bytes, which begin no request: a
/// client that shakes hands and then sends nothing until the header timeout
/// closes it, or closes itself, has no access line. One that begins a head and
/// stops there has a 408; one that begins a head and closes has a 400, whether
/// it ends TLS first (close_notify) or only drops the socket. An HTTP/2
/// connection (ALPN) dropped the same way has no head to cut short, and no line.
#[tokio::test]
async fn over_tls_only_a_begun_head_is_logged_when_cut_short() {
    use tokio::io::AsyncWriteExt;
    /// How the client's connection ends.
    #[derive(Clone, Copy)]
    enum End {
        /// The header timeout closes it.
        Waits,
        /// The client ends TLS and closes its side.
        ClosesTls,
        /// The client closes its side of the socket, without ending TLS.
        ClosesSocket,
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let tls = revalidate_cli::serve::tls::ListenerTls::load(&cert, &key).unwrap();
    let config =
        revalidate_cli::serve::parse("[client]\nheader_timeout = \"300ms\"\n", "t.toml").unwrap();
    let origin = counting_origin(Seen::default());
    let logged =
        support::proxy::LoggedProxy::start(origin, ClientLimits::new(&config.client), Some(tls))
            .await;
    let http1 = revalidate_cli::serve::tls::upstream_config(Some(&ca)).unwrap();
    let mut http2 = http1.clone();
    http2.alpn_protocols = vec![b"h2".to_vec()];
    let (http1, http2) = (Arc::new(http1), Arc::new(http2));
    let begun = &b"GET /items/1 HT"[..];
    let preface = &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..];
    let cases = [
        (&http1, &b""[..], End::Waits),
        (&http1, b"", End::ClosesTls),
        (&http1, b"", End::ClosesSocket),
        (&http1, begun, End::Waits),
        (&http1, begun, End::ClosesTls),
        (&http1, begun, End::ClosesSocket),
        (&http2, preface, End::ClosesSocket),
    ];
    for (config, head, end) in cases {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tcp = tokio::net::TcpStream::connect(logged.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = connector.connect(name, tcp).await.unwrap();
        client.write_all(head).await.unwrap();
        client.flush().await.unwrap();
        match end {
            End::Waits => {}
            End::ClosesTls => client.shutdown().await.unwrap(),
            End::ClosesSocket => client.get_mut().0.shutdown().await.unwrap(),
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            let mut buffer = [0; 64];
            while matches!(client.read(&mut buffer).await, Ok(n) if n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "the connection is closed");
    }
    let (text, lines) = logged.lines();
    let statuses: Vec<_> = lines.iter().map(|line| line["status"].clone()).collect();
    assert_eq!(statuses, [408, 400, 400], "{text}");
}

/// A GET over TLS trusting `ca`, and the protocol ALPN chose.
async fn https_get(addr: SocketAddr, path: &str, ca: &Path) -> (Reply, String) {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = revalidate_cli::serve::tls::upstream_config(Some(ca)).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut probe = connector.connect(name, tcp).await.unwrap();
    let alpn = String::from_utf8(probe.get_ref().1.alpn_protocol().unwrap().to_vec()).unwrap();
    probe.shutdown().await.ok();
    let _ = probe.read(&mut [0; 1]).await;
    config.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, axum::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let uri = format!("https://localhost:{}{path}", addr.port());
    let response = client
        .request(
            http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let reply = Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    };
    (reply, alpn)
}

/// TLS both ways: clients reach the proxy over TLS (HTTP/2 offered by ALPN),
/// the proxy reaches an `https://` upstream that a private authority signed,
/// named by `--upstream-ca`. Without that authority the upstream's certificate
/// is refused: a 502 problem that says so, never a plain-text fallback. A
/// missing certificate file is one line and exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_clients_and_to_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    // The upstream, over TLS with the same certificate.
    let seen = Seen::default();
    let origin = tls_origin(&cert, &key, seen.clone()).await;
    let upstream = format!("https://localhost:{}", origin.port());
    let start = |trust: bool, log: &str| {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_revalidate"));
        command
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--admin-listen", "127.0.0.1:0", "--access-log", "off"])
            .args(["--upstream", &upstream])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .kill_on_drop(true);
        if trust {
            command.arg("--upstream-ca").arg(&ca);
        }
        (command.spawn().unwrap(), addr)
    };
    let wait = |addr: SocketAddr| async move {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };

    let (trusting, addr) = start(true, "trusting.log");
    wait(addr).await;
    let (first, alpn) = https_get(addr, "/items/7", &ca).await;
    assert_eq!(alpn, "h2", "HTTP/2 is offered");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body, "item 7, call 1");
    let (again, _) = https_get(addr, "/items/7", &ca).await;
    assert!(hit(&again), "{}", cache_status(&again));
    assert_eq!(seen.lock().unwrap()["/items/7"], 1);
    let (proto, _) = https_get(addr, "/proto", &ca).await;
    assert_eq!(
        proto.body, "https",
        "the upstream learns that clients came over TLS"
    );

    // A renewed certificate, from another authority, put in force by SIGHUP;
    // the stored entries stay.
    let renewed = tempfile::tempdir().unwrap();
    let (new_ca, new_cert, new_key) = certificates(renewed.path());
    assert!(handshake(addr, &new_ca).await.is_err(), "not yet");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let pid = trusting.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut renewed_served = Err(String::new());
    for _ in 0..200 {
        renewed_served = handshake(addr, &new_ca).await;
        if renewed_served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(renewed_served.is_ok(), "{renewed_served:?}");
    let (kept, _) = https_get(addr, "/items/7", &new_ca).await;
    assert!(hit(&kept), "{}", cache_status(&kept));

    let (_refusing, addr) = start(false, "refusing.log");
    wait(addr).await;
    let (refused, _) = https_get(addr, "/items/8", &new_ca).await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert!(refused.body.contains("certificate"), "{}", refused.body);
    assert!(!seen.lock().unwrap().contains_key("/items/8"));
    let log = std::fs::read_to_string(dir.path().join("refusing.log")).unwrap();
    assert!(log.contains("upstream TLS handshake failed"), "{log}");

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_revalidate"))
        .args(["serve", "--check", "--upstream", "http://127.0.0.1:1"])
        .args(["--tls-cert", "/nonexistent/cert.pem", "--tls-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}
