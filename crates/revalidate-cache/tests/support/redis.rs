//! A real Redis for tests: the one `REDIS_URL` names, or a `redis-server` started
//! on a free port (and stopped with the last test that uses it). Each test uses
//! its own key namespace, so tests share one server safely.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Started {
    url: String,
    _server: Option<Server>,
}

/// A `redis-server` of a test's own, stopped when dropped.
pub struct Server(Child);

impl Server {
    /// Stops it now.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the pipe stops the server.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

static SERVER: OnceLock<Mutex<Started>> = OnceLock::new();

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts `redis-server` on a free port; panics with a clear message when it is
/// not installed (`.ci/run` installs it). The server is stopped when this process
/// exits, however it exits: a shell holds it and waits on a pipe from this process.
pub fn start_server(port: u16) -> Server {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "redis-server must be installed (apt-get install redis-server), or REDIS_URL set"
    );
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & \
         r=$!; read _; kill $r; wait $r"
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh starts");
    wait_until_up(port);
    Server(child)
}

fn wait_until_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not start on port {port}");
}

/// The URL of a Redis for tests.
pub fn url() -> String {
    let server = SERVER.get_or_init(|| {
        Mutex::new(match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Started { url, _server: None },
            _ => {
                let port = free_port();
                Started {
                    url: format!("redis://127.0.0.1:{port}"),
                    _server: Some(start_server(port)),
                }
            }
        })
    });
    server.lock().unwrap().url.clone()
}

/// A namespace no other test uses.
pub fn namespace(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{test}:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free port with no server behind it.
pub fn nothing_listening() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

pub fn free_port_for_server() -> u16 {
    free_port()
}
