//! A real PostgreSQL for tests: `DATABASE_URL` when set, otherwise a private server
//! started on a free port from the installed binaries (`.ci/run` installs Debian's
//! `postgresql` when they are missing). Each caller gets a database of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static SERVER: OnceLock<String> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A URL to an empty database on a real PostgreSQL server.
pub async fn fresh_database() -> String {
    let admin_url = SERVER.get_or_init(start_or_reuse).clone();
    let name = format!(
        "revalidate_t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin_url}: {e}"));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').expect("url has a database");
    format!("{base}/{name}")
}

fn start_or_reuse() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && url.starts_with("postgres")
    {
        return url;
    }
    start_private_server()
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (the server
/// refuses to run as root).
fn pg_command(name: &str, root: bool) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        command
    } else {
        Command::new(pg_bin(name))
    }
}

fn start_private_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("revalidate-pg-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = is_root();
    if root {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown of {dir:?} failed");
    }
    let data = dir.join("data");
    let status = pg_command("initdb", root)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run initdb ({e}); install PostgreSQL or set DATABASE_URL")
        });
    assert!(status.success(), "initdb failed");
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        dir.display()
    );
    let status = pg_command("pg_ctl", root)
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("log"))
        .args(["-w", "start"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "pg_ctl start failed; see {:?}",
        dir.join("log")
    );

    // Statics are never dropped, so a watchdog stops the server when this test
    // process exits, however it exits.
    let pg_ctl = pg_bin("pg_ctl");
    let stop = if root {
        format!(
            "runuser -u postgres -- {} -D {} stop -m immediate",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "{} -D {} stop -m immediate",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    // The watchdog outlives this process by design, so it is never waited on.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}
