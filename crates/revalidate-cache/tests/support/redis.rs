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
    start_server_with(port, &[])
}

fn start_server_with(port: u16, extra: &[String]) -> Server {
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
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no {} >/dev/null 2>&1 & \
         r=$!; read _; kill $r; wait $r",
        extra.join(" ")
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

struct Cluster {
    urls: String,
    _servers: Vec<Server>,
}

static CLUSTER: OnceLock<Mutex<Cluster>> = OnceLock::new();

/// A free port whose cluster bus port (10,000 higher) is free too.
fn free_cluster_port() -> u16 {
    let seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761);
    (0..1000u64)
        .map(|i| 20_000 + ((seed + i * 7_919) % 25_000) as u16)
        .find(|&port| {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        })
        .expect("free ports for a cluster")
}

/// The URLs (comma-separated) of a real three-master Redis Cluster: the nodes
/// `REDIS_CLUSTER_URLS` names, or three `redis-server`s started on loopback ports
/// and joined with `redis-cli --cluster create` (stopped when this process exits).
pub fn cluster_urls() -> String {
    let cluster = CLUSTER.get_or_init(|| {
        if let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS")
            && !urls.is_empty()
        {
            return Mutex::new(Cluster {
                urls,
                _servers: Vec::new(),
            });
        }
        let dir = std::env::temp_dir().join(format!("revalidate-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's node files");
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            let extra = [
                "--cluster-enabled yes".to_string(),
                format!("--cluster-config-file nodes-{port}.conf"),
                format!("--dir {}", dir.display()),
            ];
            servers.push(start_server_with(port, &extra));
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never became ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Mutex::new(Cluster {
            urls: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            _servers: servers,
        })
    });
    cluster.lock().unwrap().urls.clone()
}

/// The configuration for `url`: one server, or a cluster when it lists several
/// URLs separated by commas.
pub fn config(url: &str, namespace: &str) -> revalidate_cache::store::RedisConfig {
    let mut config = if url.contains(',') {
        revalidate_cache::store::RedisConfig::cluster(url.split(','))
    } else {
        revalidate_cache::store::RedisConfig::new(url)
    };
    config.namespace = namespace.to_string();
    config
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

/// A `redis-server` that speaks only TLS, with a certificate for 127.0.0.1 from
/// an authority made for it.
pub struct TlsServer {
    /// `rediss://127.0.0.1:{port}`.
    pub url: String,
    /// The authority's certificate (PEM).
    pub ca_pem: Vec<u8>,
    _server: Server,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a TLS-only `redis-server` (Debian's is built with TLS).
pub fn start_tls_server() -> TlsServer {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "revalidate-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let cert_file = write("server.pem", cert.pem());
    let key_file = write("server.key", key.serialize_pem());
    let ca_file = write("ca.pem", ca.pem());
    let port = free_port();
    let extra = [
        "--port 0".to_string(),
        format!("--tls-port {port}"),
        format!("--tls-cert-file {cert_file}"),
        format!("--tls-key-file {key_file}"),
        format!("--tls-ca-cert-file {ca_file}"),
        "--tls-auth-clients no".to_string(),
    ];
    let server = start_server_with(port, &extra);
    TlsServer {
        url: format!("rediss://127.0.0.1:{port}"),
        ca_pem: ca.pem().into_bytes(),
        _server: server,
        _dir: TempDir(dir),
    }
}
