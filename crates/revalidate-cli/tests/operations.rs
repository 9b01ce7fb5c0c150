//! What an operator does to a running `revalidate serve`, end to end on the
//! binary: reloading its configuration (SIGHUP, `POST /reload`).

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
    Router::new()
        .route("/items/{id}", get(item))
        .route("/slow", get(slow))
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
