//! End to end: `revalidate serve` in front of a real Flask users service
//! (`tests/flask_app/app.py`), over real sockets, driven by a real HTTP client.
//!
//! The first test to need it makes a virtualenv under the target directory
//! (`target/tmp/flask-venv-<flask>-redis-<redis-py>`, with `python3 -m venv` and `pip install`)
//! and later runs reuse it. Python 3 with its `venv` module is required: without it
//! these tests fail with the reason, they never skip. `PYTHON3=/path/to/python3`
//! picks the interpreter. docs/proxy-guide.md does the same by hand.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use revalidate_cache::{Cache, Purge};
use revalidate_cli::serve::admin::{AdminState, router as admin_router};
use revalidate_cli::serve::{Proxy, UpstreamClient, parse, proxy, server};
use serde_json::{Value, json};

/// The Flask release the virtualenv gets; its directory is named after it, so a
/// new pin makes a new virtualenv.
const FLASK_VERSION: &str = "3.1.3";
/// The Redis client the app bumps its version counters with.
const REDIS_PY_VERSION: &str = "5.2.1";
const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flask_app/app.py");

/// The proxy's configuration, as a user would write it for this app.
const CONFIG: &str = r#"
[[routes]]
path = "/users/{id}"
default_ttl = "30s"          # Flask's 404s carry no Cache-Control
tags = ["user:{id}"]

[[routes.invalidate]]
methods = ["PUT", "PATCH", "DELETE"]
urls = ["/users/{id}", "/users"]
tags = ["user:{id}"]

[[routes]]
path = "/users/{id}/plain"   # Flask sends no ETag here
add_etag = true
tags = ["user:{id}"]

[[routes]]
path = "/health"             # no-cache and no ETag
add_etag = true
"#;

const MISS: &str = "revalidate; fwd=uri-miss; fwd-status=200; stored";

// ---------------------------------------------------------------------------
// The virtualenv

fn run(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {command:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Whether `dir` is a virtualenv with the pinned Flask.
fn venv_ready(dir: &Path) -> bool {
    let check = format!(
        "import importlib.metadata as m, flask, redis; \
         assert m.version('flask') == '{FLASK_VERSION}' and m.version('redis') == '{REDIS_PY_VERSION}'"
    );
    Command::new(dir.join("bin").join("python"))
        .args(["-c", &check])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The virtualenv's interpreter, made on first use.
fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv)
}

fn make_venv() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!(
        "flask-venv-{FLASK_VERSION}-redis-{REDIS_PY_VERSION}"
    ));
    if venv_ready(&dir) {
        return dir.join("bin").join("python");
    }
    let python3 = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".to_string());
    match Command::new(&python3).arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the Flask end-to-end test needs Python 3, but `{python3} --version` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!(
            "the Flask end-to-end test needs Python 3 to run the Flask app, but `{python3}` \
             cannot be run: {e}. Install Python 3 with its venv module (Debian: \
             `apt-get install python3 python3-venv`) or set PYTHON3=/path/to/python3."
        ),
    }
    // Built beside its final place and renamed into it, so that no run ever sees
    // half a virtualenv (the interpreter finds it by its own path, so a moved
    // virtualenv still works).
    let building = tmp.join(format!(
        "flask-venv-{FLASK_VERSION}-redis-{REDIS_PY_VERSION}.building-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(tmp).unwrap();
    // Gone once renamed; removed here when a step below fails.
    let _cleanup = RemoveOnDrop(building.clone());
    run(
        Command::new(&python3).args(["-m", "venv"]).arg(&building),
        "creating the virtualenv (`python3 -m venv`)",
    );
    run(
        Command::new(building.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .arg(format!("flask=={FLASK_VERSION}"))
            .arg(format!("redis=={REDIS_PY_VERSION}")),
        "installing Flask and redis-py into the virtualenv (`pip install`)",
    );
    if !venv_ready(&dir) {
        // An outdated or broken one.
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = std::fs::rename(&building, &dir) {
        // Another run may have put its own in place meanwhile.
        let _ = std::fs::remove_dir_all(&building);
        assert!(venv_ready(&dir), "cannot move {building:?} to {dir:?}: {e}");
    }
    assert!(
        venv_ready(&dir),
        "the virtualenv {dir:?} has no Flask {FLASK_VERSION}"
    );
    dir.join("bin").join("python")
}

// ---------------------------------------------------------------------------
// An HTTP client

/// A response read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status")
            .unwrap_or_else(|| panic!("no Cache-Status in {:?}", self.headers))
    }

    fn etag(&self) -> &str {
        self.header("etag")
            .unwrap_or_else(|| panic!("no ETag in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a fresh hit: the upstream was not asked.
    #[track_caller]
    fn assert_hit(&self) {
        let status = self.cache_status();
        let ttl: i64 = status
            .strip_prefix("revalidate; hit; ttl=")
            .unwrap_or_else(|| panic!("expected a hit, got Cache-Status: {status}"))
            .parse()
            .unwrap_or_else(|_| panic!("expected a hit with a ttl, got {status}"));
        assert!(
            (1..=60).contains(&ttl),
            "a hit's ttl should be in 1..=60, got {status}"
        );
    }
}

#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

impl Http {
    fn new() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }

    async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::default(),
        };
        let request = request.body(body).map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .0
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        self.try_send(method.clone(), url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }
}

// ---------------------------------------------------------------------------
// The Flask app

/// One request the Flask app answered, from its `/_requests` log.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u64,
    if_none_match: Option<String>,
}

/// The Flask app, on a free port, killed on drop.
struct FlaskApp {
    child: Child,
    url: String,
    log: PathBuf,
}

impl FlaskApp {
    /// The app, with `env` added to its environment.
    async fn start(http: &Http, env: &[(&str, &str)]) -> Self {
        let python = venv_python();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("flask-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .arg("-u")
            .arg(APP)
            .arg(port.to_string())
            // The app's watchdog: it exits once this process is gone, however
            // this process ends.
            .env("REVALIDATE_TEST_PARENT_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python:?} {APP}: {e}"));
        let mut app = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let ready = format!("{}/_requests", app.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = app.child.try_wait().unwrap() {
                panic!("the Flask app exited ({status}) before it answered");
            }
            match http.try_send(Method::GET, &ready, &[], None).await {
                Ok(reply) if reply.status == StatusCode::OK => return app,
                _ if Instant::now() > deadline => {
                    panic!("the Flask app did not answer on {} within 30 s", app.url)
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// What the app answered for `method path`, in order.
    async fn seen(&self, http: &Http, method: &str, path: &str) -> Vec<Seen> {
        let log = http
            .send(Method::GET, &format!("{}/_requests", self.url), &[], None)
            .await
            .json();
        log.as_array()
            .expect("a JSON list")
            .iter()
            .filter(|r| r["method"] == method && r["path"] == path)
            .map(|r| Seen {
                status: r["status"].as_u64().unwrap(),
                if_none_match: r["if_none_match"].as_str().map(str::to_string),
            })
            .collect()
    }

    /// The statuses the app answered for `GET path`, in order.
    async fn gets(&self, http: &Http, path: &str) -> Vec<u64> {
        self.seen(http, "GET", path)
            .await
            .into_iter()
            .map(|s| s.status)
            .collect()
    }
}

impl Drop for FlaskApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- the Flask app's log ({}):\n{log}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

// ---------------------------------------------------------------------------
// The proxy in front of it

struct Setup {
    http: Http,
    flask: FlaskApp,
    proxy: String,
    admin: String,
    cache: Cache<revalidate_cli::serve::ProxyStore>,
}

async fn serve(app: axum::Router) -> String {
    format!("http://{}", support::proxy::spawn(app).await.0)
}

async fn serve_proxy(app: Proxy) -> String {
    let addr = support::proxy::spawn_proxy(app, server::ClientLimits::default()).await;
    format!("http://{addr}")
}

impl Setup {
    async fn start() -> Self {
        Self::with(CONFIG, &[]).await
    }

    /// The app with `env`, behind a proxy configured with `config`.
    async fn with(config: &str, env: &[(&str, &str)]) -> Self {
        let http = Http::new();
        let flask = FlaskApp::start(&http, env).await;
        let config = parse(config, "flask.toml").unwrap_or_else(|e| panic!("{e}"));
        let upstream = UpstreamClient::new(&flask.url, &config).unwrap();
        let (app, cache) = proxy(&config, upstream).unwrap();
        let proxy = serve_proxy(app).await;
        let admin = serve(admin_router(AdminState {
            cache: cache.clone(),
            token: None,
            metrics: None,
            live: None,
        }))
        .await;
        Self {
            http,
            flask,
            proxy,
            admin,
            cache,
        }
    }

    /// A GET through the proxy.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let url = format!("{}{path}", self.proxy);
        self.http.send(Method::GET, &url, headers, None).await
    }

    /// A JSON write through the proxy.
    async fn write(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Reply {
        let url = format!("{}{path}", self.proxy);
        self.http.send(method, &url, headers, Some(&body)).await
    }

    /// A GET through the proxy that must be a miss stored from a 200.
    async fn miss(&self, path: &str) -> Reply {
        let reply = self.get(path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}");
        assert_eq!(reply.cache_status(), MISS, "GET {path}");
        reply
    }

    /// A GET through the proxy that must be a fresh hit.
    async fn hit(&self, path: &str) -> Reply {
        let reply = self.get(path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}");
        reply.assert_hit();
        reply
    }
}

// ---------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn repeated_reads_are_hits_and_flask_is_asked_once() {
    let s = Setup::start().await;

    let first = s.miss("/users/1").await;
    assert_eq!(first.json()["name"], "Ada Lovelace");
    assert_eq!(
        first.etag(),
        "\"user-1-v1\"",
        "Flask's own ETag passes through"
    );
    assert_eq!(first.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(
        first.header("surrogate-key"),
        None,
        "tags are for the proxy, not for clients"
    );
    for _ in 0..3 {
        let again = s.hit("/users/1").await;
        assert_eq!(again.body, first.body);
        assert_eq!(again.etag(), "\"user-1-v1\"");
        assert!(again.header("age").is_some(), "a hit carries Age");
    }

    let list = s.miss("/users").await;
    assert_eq!(list.json().as_array().map(Vec::len), Some(3));
    assert_eq!(s.hit("/users").await.body, list.body);

    assert_eq!(s.flask.gets(&s.http, "/users/1").await, [200]);
    assert_eq!(s.flask.gets(&s.http, "/users").await, [200]);
    let stats = s.cache.stats();
    assert_eq!(
        (
            stats.hits,
            stats.misses,
            stats.upstream_requests,
            stats.stored
        ),
        (4, 2, 2, 2),
        "{stats:?}"
    );
}

#[tokio::test]
async fn writes_through_the_proxy_invalidate_what_they_change() {
    let s = Setup::start().await;
    for path in ["/users/1", "/users", "/users/2", "/users/1/plain"] {
        s.miss(path).await;
        s.hit(path).await;
    }
    // Flask's 404 for a user that does not exist yet is stored too (default_ttl).
    let missing = s.get("/users/4", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.cache_status(),
        "revalidate; fwd=uri-miss; fwd-status=404; stored"
    );
    let missing = s.get("/users/4", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    missing.assert_hit();

    // A write Flask refuses purges nothing.
    let refused = s
        .write(
            Method::PUT,
            "/users/2",
            &[("if-match", "\"user-2-v0\"")],
            json!({"name": "Alan M. Turing"}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(refused.cache_status(), "revalidate; fwd=method");
    assert_eq!(s.hit("/users/2").await.json()["name"], "Alan Turing");

    // PUT /users/1 purges the user (its URL), the list (the route's rule, and its
    // Surrogate-Key names user:1) and /users/1/plain (tagged user:1 by the config).
    let put = s
        .write(
            Method::PUT,
            "/users/1",
            &[("if-match", "\"user-1-v1\"")],
            json!({"name": "Ada King"}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.cache_status(), "revalidate; fwd=method");
    assert_eq!(put.etag(), "\"user-1-v2\"");

    let user = s.miss("/users/1").await;
    assert_eq!(user.json()["name"], "Ada King");
    assert_eq!(user.etag(), "\"user-1-v2\"");
    assert_eq!(s.miss("/users").await.json()[0]["name"], "Ada King");
    assert_eq!(s.miss("/users/1/plain").await.json()["name"], "Ada King");
    // What the write did not touch stays cached.
    assert_eq!(s.hit("/users/2").await.json()["name"], "Alan Turing");
    assert_eq!(s.hit("/users/1").await.json()["name"], "Ada King");

    // POST /users purges /users (its URL) and the new user's URL (its Location),
    // where the 404 was stored.
    let created = s
        .write(
            Method::POST,
            "/users",
            &[],
            json!({"name": "Grace Hopper", "email": "grace@example.com"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.header("location"), Some("/users/4"));
    assert_eq!(created.cache_status(), "revalidate; fwd=method");
    assert_eq!(s.miss("/users/4").await.json()["name"], "Grace Hopper");
    let list = s.miss("/users").await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(4));
    assert_eq!(list[3]["name"], "Grace Hopper");

    assert_eq!(s.flask.gets(&s.http, "/users/1").await, [200, 200]);
    assert_eq!(s.flask.gets(&s.http, "/users").await, [200, 200, 200]);
    assert_eq!(s.flask.gets(&s.http, "/users/2").await, [200]);
    assert_eq!(s.flask.gets(&s.http, "/users/4").await, [404, 200]);
    let puts: Vec<u64> = s
        .flask
        .seen(&s.http, "PUT", "/users/1")
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, [200]);
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_proxy() {
    let s = Setup::start().await;

    // With the ETag of a previous response: 304 from the cache, Flask not asked.
    let first = s.miss("/users/1").await;
    let etag = first.etag().to_string();
    let not_modified = s.get("/users/1", &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    not_modified.assert_hit();
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.etag(), etag);
    assert_eq!(
        not_modified.header("cache-control"),
        Some("public, max-age=60")
    );
    // A tag that no longer matches gets the whole response, still from the cache.
    let changed = s
        .get("/users/1", &[("if-none-match", "\"user-1-v0\"")])
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    changed.assert_hit();
    assert_eq!(changed.body, first.body);
    assert_eq!(
        s.flask.seen(&s.http, "GET", "/users/1").await,
        [Seen {
            status: 200,
            if_none_match: None
        }]
    );

    // On a cold cache the proxy fetches (and stores) the whole response, then
    // answers the client's condition itself.
    let cold = s
        .get("/users/2", &[("if-none-match", "\"user-2-v1\"")])
        .await;
    assert_eq!(cold.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cold.cache_status(), MISS);
    assert!(cold.body.is_empty());
    assert_eq!(s.hit("/users/2").await.json()["name"], "Alan Turing");
    assert_eq!(
        s.flask.seen(&s.http, "GET", "/users/2").await,
        [Seen {
            status: 200,
            if_none_match: None
        }]
    );

    // no-cache: stored, but revalidated with Flask on every use, with Flask's ETag.
    let profile = s.miss("/users/1/profile").await;
    assert_eq!(profile.header("cache-control"), Some("no-cache"));
    let tag = profile.etag().to_string();
    let again = s.get("/users/1/profile", &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.cache_status(),
        "revalidate; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(again.body, profile.body);
    let conditional = s.get("/users/1/profile", &[("if-none-match", &tag)]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        conditional.cache_status(),
        "revalidate; fwd=stale; fwd-status=304; stored"
    );
    // A write that does not go through the proxy is seen at once.
    let direct = s
        .http
        .send(
            Method::PUT,
            &format!("{}/users/1", s.flask.url),
            &[],
            Some(&json!({"name": "Ada King"})),
        )
        .await;
    assert_eq!(direct.status, StatusCode::OK);
    let fresh = s.get("/users/1/profile", &[("if-none-match", &tag)]).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(
        fresh.cache_status(),
        "revalidate; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(fresh.etag(), "\"user-1-v2\"");
    assert_eq!(fresh.json()["display"], "Ada King <ada@example.com>");
    let revalidations: Vec<(u64, Option<String>)> = s
        .flask
        .seen(&s.http, "GET", "/users/1/profile")
        .await
        .into_iter()
        .map(|r| (r.status, r.if_none_match))
        .collect();
    assert_eq!(
        revalidations,
        [
            (200, None),
            (304, Some(tag.clone())),
            (304, Some(tag.clone())),
            (200, Some(tag.clone())),
        ]
    );
    let stats = s.cache.stats();
    assert_eq!(stats.not_modified, 3, "{stats:?}");
    assert_eq!(stats.revalidated, 3, "{stats:?}");
}

#[tokio::test]
async fn add_etag_gives_flask_routes_without_validators_an_etag_and_304s() {
    let s = Setup::start().await;

    let direct = s
        .http
        .send(
            Method::GET,
            &format!("{}/users/1/plain", s.flask.url),
            &[],
            None,
        )
        .await;
    assert_eq!(direct.status, StatusCode::OK);
    assert_eq!(direct.header("etag"), None, "Flask sends no ETag here");

    let first = s.miss("/users/1/plain").await;
    assert_eq!(first.body, direct.body);
    let etag = first.etag().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "a strong entity tag, got {etag}"
    );
    let not_modified = s.get("/users/1/plain", &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    not_modified.assert_hit();
    assert_eq!(not_modified.etag(), etag);
    assert!(not_modified.body.is_empty());
    // One request from the test, one from the proxy.
    assert_eq!(s.flask.gets(&s.http, "/users/1/plain").await, [200, 200]);

    // A no-cache route without an ETag: each use is revalidated, and the content
    // ETag lets the proxy keep its stored body when the content did not change.
    let health = s.miss("/health").await;
    assert_eq!(health.body, "ok\n");
    let content_tag = health.etag().to_string();
    let again = s.get("/health", &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.cache_status(),
        "revalidate; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(again.body, "ok\n");
    assert_eq!(again.etag(), content_tag);
    let conditional = s.get("/health", &[("if-none-match", &content_tag)]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert_eq!(conditional.etag(), content_tag);
    let seen = s.flask.seen(&s.http, "GET", "/health").await;
    assert_eq!(
        seen,
        [
            Seen {
                status: 200,
                if_none_match: None
            },
            Seen {
                status: 200,
                if_none_match: Some(content_tag.clone())
            },
            Seen {
                status: 200,
                if_none_match: Some(content_tag.clone())
            },
        ],
        "Flask ignores If-None-Match here; the proxy compares the content tag"
    );
}

#[tokio::test]
async fn purges_by_tag_through_the_admin_api_and_the_library() {
    let s = Setup::start().await;
    for path in ["/users/1", "/users/1/plain", "/users", "/users/2"] {
        s.miss(path).await;
        s.hit(path).await;
    }

    // As `curl -X POST http://127.0.0.1:9090/purge -d '{"tags":["user:1"]}'` would.
    let purged = s
        .http
        .send(
            Method::POST,
            &format!("{}/purge", s.admin),
            &[],
            Some(&json!({"tags": ["user:1"]})),
        )
        .await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(purged.json(), json!({"purged": 3, "soft": false}));
    // user:1 comes from the route config (/users/1, /users/1/plain) and from
    // Flask's Surrogate-Key (/users/1, /users).
    s.miss("/users/1").await;
    s.miss("/users/1/plain").await;
    s.miss("/users").await;
    s.hit("/users/2").await;

    // The same through the library.
    assert_eq!(s.cache.purge(&Purge::tags(["users"])).await, 1);
    s.miss("/users").await;
    s.hit("/users/1").await;

    assert_eq!(s.flask.gets(&s.http, "/users").await, [200, 200, 200]);
    assert_eq!(s.flask.gets(&s.http, "/users/2").await, [200]);
    assert_eq!(s.cache.stats().purges, 2);
}

/// A route whose version counter the app bumps in Redis on every write: the
/// proxy answers `If-None-Match` from the counter, without asking Flask, and a
/// write makes the old tag stale on every instance at once.
#[tokio::test]
async fn flask_bumps_a_counter_and_the_proxy_answers_304s_from_it() {
    let url = support::redis::url();
    let namespace = support::redis::namespace("flask");
    let config = format!(
        "{CONFIG}\n[[routes]]\npath = \"/users/{{id}}/summary\"\nversion = \"user:{{id}}\"\n\n\
         [redis]\nurl = \"{url}\"\nnamespace = \"{namespace}\"\n"
    );
    let s = Setup::with(
        &config,
        &[("REDIS_URL", &url), ("REVALIDATE_NAMESPACE", &namespace)],
    )
    .await;
    let first = s.get("/users/2/summary", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.etag(), "\"v0\"", "the proxy's tag, from the counter");
    assert_eq!(first.json()["name"], "Alan Turing");
    let again = s
        .get("/users/2/summary", &[("if-none-match", "\"v0\"")])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        s.flask.gets(&s.http, "/users/2/summary").await,
        [200],
        "Flask was asked once"
    );

    let put = s
        .write(
            Method::PUT,
            "/users/2",
            &[],
            json!({ "name": "Alan M. Turing" }),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let after = s
        .get("/users/2/summary", &[("if-none-match", "\"v0\"")])
        .await;
    assert_eq!(after.status, StatusCode::OK, "the old tag is stale");
    assert_eq!(after.etag(), "\"v1\"");
    assert_eq!(after.json()["name"], "Alan M. Turing");
    let current = s
        .get("/users/2/summary", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(current.status, StatusCode::NOT_MODIFIED);
    assert_eq!(s.flask.gets(&s.http, "/users/2/summary").await, [200, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_via_the_proxy_measures_hits_that_never_reach_flask() {
    use clap::Parser;
    use revalidate_cli::bench::{BenchArgs, Mode, run_until};

    let s = Setup::start().await;
    let url = format!("{}/users/1", s.flask.url);
    let args = BenchArgs::try_parse_from([
        "bench",
        "--requests",
        "30",
        "--concurrency",
        "4",
        "--via",
        &s.proxy,
        &url,
    ])
    .unwrap();
    let mut out = Vec::new();
    let report = run_until(&args, std::future::pending(), &mut out)
        .await
        .unwrap();
    let table = String::from_utf8(out).unwrap();

    let modes = &report.urls[0].modes;
    let by_mode = |mode| modes.iter().find(|m| m.mode == mode).expect("measured");
    assert_eq!(by_mode(Mode::Full).status.get(&200), Some(&30), "{table}");
    assert_eq!(
        by_mode(Mode::Conditional).status.get(&304),
        Some(&30),
        "{table}"
    );
    assert_eq!(by_mode(Mode::ViaHit).status.get(&200), Some(&30), "{table}");
    assert_eq!(
        by_mode(Mode::ViaConditional).status.get(&304),
        Some(&30),
        "{table}"
    );
    assert!(report.warnings.is_empty(), "{table}");
    // Flask saw the checks (5 GETs and a conditional one), both direct modes and
    // the one GET that filled the cache: the via modes were answered by the proxy.
    assert_eq!(
        s.flask.gets(&s.http, "/users/1").await.len(),
        5 + 1 + 30 + 30 + 1
    );
}
