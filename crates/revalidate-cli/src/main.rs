//! `revalidate`: the sample users API (`demo`), the caching proxy (`serve`), the
//! savings measurement (`bench`) and the key map (`routes`, `explain`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use revalidate_cli::bench::{self, BenchArgs};
use revalidate_cli::demo::{UserStore, router};
use revalidate_cli::keymap;
use revalidate_cli::serve::{self, ConfigError, UpstreamClient};
use tokio::net::TcpListener;

// jemalloc, as Varnish uses: a cache lives with constant churn of 5 KiB-ish blocks,
// which fragments glibc's arenas over time, and a hit's few small allocations (the
// answer's header map, the request's parts) come from thread caches.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Transparent huge pages for the heap. Over many keys, a hit reads an entry's
// scattered pieces (the store's slot, the stored response, its fields, the body's
// handle), and with 4 KiB pages most of those reads miss the TLB as well as the
// CPU's caches; 2 MiB pages cover the whole cache in a few TLB entries. The cost
// is resident memory: a few tens of MiB more when idle, a few percent more when
// full (`cargo bench -p revalidate-bench --bench hit` and `bench/run.sh` show both
// sides). Turned off at run time with
// `_RJEM_MALLOC_CONF=thp:default,metadata_thp:disabled`.
// The symbol's name carries tikv-jemalloc-sys's `_rjem_` prefix; its feature
// `unprefixed_malloc_on_supported_platforms` would rename it `malloc_conf`.
// SAFETY: jemalloc reads this C string (`const char *`) once, at its start, and
// never writes it; it is NUL-terminated and lives as long as the process.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 31] = b"thp:always,metadata_thp:always\0";

#[derive(Debug, Parser)]
#[command(
    name = "revalidate",
    version,
    about = "Correct ETags, 304s and caching for HTTP APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the sample users API with conditional requests.
    Demo {
        /// Address to listen on.
        #[arg(long, env = "REVALIDATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// `sqlite://FILE` (created if missing) or `postgres://…`.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "sqlite://revalidate-demo.db"
        )]
        database: String,
    },
    /// Put the cache and conditional layers in front of an HTTP API.
    Serve(Box<ServeArgs>),
    /// Measure what 304s and a cache save on an HTTP API, and diagnose its headers.
    ///
    /// Sends full, conditional and (with --via) cached GETs to each URL; prints bytes,
    /// latency and req/s per mode, and warnings about ETag, Vary and Cache-Control
    /// mistakes (docs/bench.md).
    Bench(BenchArgs),
    /// Print how each route of a configuration builds its cache key, keeps, tags
    /// and purges, in match order, then the defaults (docs/key-map.md).
    Routes {
        /// The configuration (TOML).
        #[arg(long, env = "REVALIDATE_CONFIG")]
        config: std::path::PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Tell what the cache does with one request: its route, its exact key, its
    /// tags, and what a write to it purges (docs/key-map.md).
    Explain(ExplainArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `revalidate manpage > revalidate.1`.
    Manpage,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "REVALIDATE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The API behind the proxy, e.g. http://127.0.0.1:5000 or https://api.internal;
    /// repeat it (or separate with commas) for several servers (overrides
    /// `[upstream] servers`).
    #[arg(long, env = "REVALIDATE_UPSTREAM", value_delimiter = ',')]
    upstream: Vec<String>,
    /// For https:// upstreams: a PEM file of authorities trusted besides the
    /// system's roots (overrides `[upstream] ca_file`).
    #[arg(long, env = "REVALIDATE_UPSTREAM_CA")]
    upstream_ca: Option<std::path::PathBuf>,
    /// Serve clients over TLS with this PEM certificate chain (needs --tls-key);
    /// read again on each reload.
    #[arg(long, env = "REVALIDATE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "REVALIDATE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Route configuration (TOML); see revalidate.example.toml.
    #[arg(long, env = "REVALIDATE_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Address of the admin API (purge, stats, metrics).
    #[arg(
        long,
        env = "REVALIDATE_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    admin_listen: SocketAddr,
    /// Bearer token for the admin API; required off loopback.
    #[arg(long, env = "REVALIDATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Redis as a tier shared by every instance, e.g. redis://127.0.0.1:6379
    /// (overrides `[redis]`).
    #[arg(long, env = "REVALIDATE_REDIS", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// For rediss:// URLs: a PEM file of the authorities to trust instead of the
    /// system's roots (overrides `[redis] ca_file`).
    #[arg(long, env = "REVALIDATE_REDIS_CA")]
    redis_ca: Option<std::path::PathBuf>,
    /// A Redis Cluster as that tier, by any of its nodes:
    /// redis://10.0.0.1:6379,redis://10.0.0.2:6379 (overrides `[redis]`).
    #[arg(long, env = "REVALIDATE_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Vec<String>,
    /// Where access lines go: `off`, `stderr`, or a file (appended to).
    #[arg(long, env = "REVALIDATE_ACCESS_LOG", default_value = "stderr")]
    access_log: String,
    /// How access lines and diagnostic logs are written.
    #[arg(long, env = "REVALIDATE_LOG_FORMAT", value_enum, default_value_t = serve::LogFormat::Text)]
    log_format: serve::LogFormat,
    /// Check the flags and the configuration, then exit: 0 when valid, 2 with
    /// the reason when not (like `nginx -t`).
    #[arg(long)]
    check: bool,
    /// Threads serving clients (default: one per CPU).
    #[arg(long, env = "REVALIDATE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// How connections meet threads: `per-core` (each thread has its own socket
    /// and keeps its connections: the most requests per CPU) or `work-stealing`
    /// (one runtime whose threads share the connections' work: a shorter latency
    /// tail when the CPUs are also busy with other work).
    #[arg(long, env = "REVALIDATE_SCHEDULER", value_enum, default_value_t = Scheduler::PerCore)]
    scheduler: Scheduler,
}

#[derive(Debug, Clone, clap::Args)]
struct ExplainArgs {
    /// The configuration (TOML).
    #[arg(long, env = "REVALIDATE_CONFIG")]
    config: std::path::PathBuf,
    /// The method (a write shows what it purges).
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// A request header, `Name: value` (repeat it for more).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A response's Vary (comma-separated names): shows this request's secondary key.
    #[arg(long)]
    vary: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The URL, e.g. http://api.test/users/1?b=2&a=1.
    url: String,
}

/// See `ServeArgs::scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scheduler {
    PerCore,
    WorkStealing,
}

/// A mistake in the invocation or the configuration: exit code 2, like clap's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    // clap prints its own one-line error and exits with code 2 on bad flags.
    let cli = Cli::parse();
    let json =
        matches!(&cli.command, Command::Serve(args) if args.log_format == serve::LogFormat::Json);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    // Under work-stealing, this runtime serves the clients: it gets the workers.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command
        && let (Scheduler::WorkStealing, Some(workers)) = (args.scheduler, args.workers)
    {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("revalidate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<UsageError>().is_some() => {
            eprintln!("revalidate: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("revalidate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo { listen, database } => demo(listen, &database).await,
        Command::Serve(args) => serve(*args).await,
        Command::Bench(args) => match bench::run(&args).await {
            Ok(_) => Ok(()),
            // An unreachable URL is the network's fault, not the invocation's: exit 1.
            Err(error) if error.is_usage() => Err(UsageError(error.to_string()).into()),
            Err(error) => Err(anyhow::Error::msg(error.to_string())),
        },
        Command::Routes { config, json } => {
            let config = serve::load(&config).map_err(|e| UsageError(e.to_string()))?;
            if json {
                println!("{:#}", keymap::routes_json(&config));
            } else {
                print!("{}", keymap::routes_text(&config));
            }
            Ok(())
        }
        Command::Explain(args) => {
            let config = serve::load(&args.config).map_err(|e| UsageError(e.to_string()))?;
            let asked =
                keymap::Asked::parse(&args.method, &args.url, &args.headers, args.vary.as_deref())
                    .map_err(UsageError)?;
            if args.json {
                println!("{:#}", keymap::explain_json(&config, &asked));
            } else {
                print!("{}", keymap::explain_text(&config, &asked));
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "revalidate", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// The configuration the file and the flags give (the flags override the file).
fn serve_config(args: &ServeArgs) -> Result<serve::ServeConfig, UsageError> {
    let mut config = match &args.config {
        Some(path) => serve::load(path).map_err(|e: ConfigError| UsageError(e.to_string()))?,
        None => serve::ServeConfig::default(),
    };
    if let Some(url) = args.redis.clone().filter(|u| !u.is_empty()) {
        serve::config::check_redis_url(&url).map_err(|e| UsageError(format!("--redis: {e}")))?;
        config.redis.url = Some(url);
        config.redis.cluster.clear();
    }
    if let Some(ca) = args.redis_ca.clone() {
        config.redis.ca_file = Some(ca);
    }
    if let Some(ca) = args.upstream_ca.clone() {
        config.upstream.ca_file = Some(ca);
    }
    config.client.tls = args.tls_cert.is_some();
    let servers: Vec<String> = args
        .upstream
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    if !servers.is_empty() {
        config.upstream.servers = servers;
    }
    let nodes: Vec<String> = args
        .redis_cluster
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    if !nodes.is_empty() {
        for url in &nodes {
            serve::config::check_redis_url(url)
                .map_err(|e| UsageError(format!("--redis-cluster: {e}")))?;
        }
        config.redis.cluster = nodes;
        config.redis.url = None;
    }
    if !config.versions.is_empty() && !config.redis.is_set() {
        return Err(UsageError(
            "routes with `version` read their counters in Redis: set [redis] or --redis".into(),
        ));
    }
    Ok(config)
}

/// The configuration and the upstream client it asks for.
fn load_serve(args: &ServeArgs) -> Result<serve::Loaded, UsageError> {
    let config = serve_config(args)?;
    let upstream = UpstreamClient::balanced(&config.upstream.servers, &config)
        .map_err(|e| UsageError(e.to_string()))?;
    Ok(serve::Loaded { config, upstream })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let serve::Loaded { config, upstream } = load_serve(&args)?;
    let token = args.admin_token.clone().filter(|t| !t.is_empty());
    if token.is_none() && !args.admin_listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "refusing to serve the admin API on {} without --admin-token (or REVALIDATE_ADMIN_TOKEN)",
            args.admin_listen
        ))
        .into());
    }
    // At start, the store reads the CA file itself (and a failure is the same
    // usage error); `--check` makes no store, so it reads the file here.
    if args.check
        && let Some(path) = &config.redis.ca_file
        && let Err(error) = std::fs::read(path)
    {
        return Err(UsageError(format!(
            "cannot read the Redis CA file {}: {error}",
            path.display()
        ))
        .into());
    }
    let (access_logger, _access_log_flushed_on_drop) = match args.access_log.as_str() {
        "off" | "" => (None, None),
        "stderr" => {
            let (logger, guard) = serve::AccessLogger::new(std::io::stderr(), args.log_format);
            (Some(logger), Some(guard))
        }
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| UsageError(format!("--access-log {path}: {e}")))?;
            let (logger, guard) = serve::AccessLogger::new(file, args.log_format);
            (Some(logger), Some(guard))
        }
    };
    if let Some(logger) = access_logger {
        serve::observe::report_access_log(logger);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(serve::tls::ListenerTls::load(cert, key).map_err(|e| UsageError(e.to_string()))?)
        }
        _ => None,
    };
    if args.check {
        println!("revalidate: the flags and the configuration are valid");
        return Ok(());
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    serve::observe::describe_metrics();
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let limits =
        serve::server::ClientLimits::new(&serve::server::fit_to_file_limit(&config.client))
            .logging_unserved(access_logger);
    let (app, cache) = serve::proxy(&config, upstream).map_err(|e| UsageError(e.to_string()))?;
    let app = app.with_access_log(access_logger);
    let reload_args = args.clone();
    let reload_tls = tls.clone();
    let live = serve::Live::new(app, config.clone(), limits.clone(), move || {
        let loaded = load_serve(&reload_args).map_err(|e| e.0)?;
        // The certificate is read again with the configuration, and either both
        // are taken or neither.
        if let Some(tls) = &reload_tls {
            tls.reload().map_err(|e| e.to_string())?;
        }
        Ok(loaded)
    });
    #[cfg(unix)]
    reload_on_hangup(&live)?;
    if let Some(url) = &config.redis.url {
        tracing::info!(%url, lease = ?config.redis.lease, "shared tier: redis");
    } else if !config.redis.cluster.is_empty() {
        tracing::info!(nodes = ?config.redis.cluster, lease = ?config.redis.lease, "shared tier: redis cluster");
    }
    let admin = serve::admin::router(serve::admin::AdminState {
        cache,
        token,
        metrics: Some(metrics),
        live: Some(live.clone()),
    });
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let listeners = match args.scheduler {
        Scheduler::PerCore => serve::server::bind_per_core(args.listen, workers),
        // One socket, bound as each per-core one is (backlog of 1,024).
        Scheduler::WorkStealing => serve::server::bind_per_core(args.listen, 1),
    }
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", args.admin_listen))?;
    let addr = listeners[0].local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let scheduler = args.scheduler;
    let max_connections = limits.max_connections();
    let upstreams = config.upstream.servers.join(", ");
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %admin_addr, %upstreams, tls = tls.is_some(), workers, ?scheduler, max_connections, "proxy listening");
    println!("revalidate serve: {scheme}://{addr} -> {upstreams} (admin: http://{admin_addr})");

    let (stop, _) = tokio::sync::watch::channel(false);
    let admin_stop = stop.subscribe();
    // The admin listener has clients of its own, bounded the same way.
    let admin_limits = serve::server::ClientLimits::new(&serve::config::ClientSection {
        max_connections: Some(64),
        ..config.client.clone()
    });
    let admin_task = tokio::spawn(async move {
        let mut admin_stop = admin_stop;
        let stopped = async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        };
        serve::server::run(
            admin_listener,
            move |_| admin.clone(),
            stopped,
            admin_limits,
        )
        .await
    });
    let make_service = move |peer| live.for_peer(peer);
    // The admin listener drains alongside the proxy, so that shutting down takes
    // one drain timeout, not two; it stops too if the proxy ends otherwise (the
    // sender is dropped with this future).
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    let result = match scheduler {
        Scheduler::PerCore => {
            serve::server::run_per_core(listeners, make_service, shutdown, limits, tls).await
        }
        // `bind_per_core`'s sockets are already non-blocking (tokio made them).
        Scheduler::WorkStealing => match listeners.into_iter().next().map(TcpListener::from_std) {
            Some(Ok(listener)) => {
                serve::server::run_with_tls(listener, make_service, shutdown, limits, tls).await
            }
            Some(Err(error)) => Err(error),
            None => Ok(()),
        },
    };
    let _ = admin_task.await;
    result.context("server error")
}

/// Reloads the configuration on each SIGHUP, as nginx does. The handler is
/// installed before the proxy listens, so an early SIGHUP cannot end the process.
#[cfg(unix)]
fn reload_on_hangup(live: &serve::Live) -> anyhow::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    let live = live.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let _ = live.reload_logged().await;
        }
    });
    Ok(())
}

async fn demo(listen: SocketAddr, database: &str) -> anyhow::Result<()> {
    let store = UserStore::connect(database)
        .await
        .with_context(|| format!("cannot open the database {database}"))?;
    let seeded = store.seed().await.context("cannot seed the database")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, database, seeded, "users API listening");
    // The lines name user 1's tag as it is now, so they work on a database that
    // earlier runs wrote to, not only on a fresh one.
    let current = store
        .validators(1)
        .await
        .ok()
        .flatten()
        .map(|(version, _)| version);
    println!("The users API is listening on http://{addr} (database: {database}). Try:");
    match current {
        Some(version) => {
            let (tag, next) = (format!("\"v{version}\""), format!("\"v{}\"", version + 1));
            println!("  curl -i http://{addr}/users/1");
            println!(
                "  curl -i http://{addr}/users/1 -H 'If-None-Match: {tag}'          # 304 Not Modified"
            );
            println!(
                "  curl -i -X PATCH http://{addr}/users/1 -H 'Content-Type: application/json' \\"
            );
            println!(
                "       -H 'If-Match: {tag}' -d '{{\"name\":\"Ada King\"}}'                # 200, ETag {next}"
            );
            println!(
                "  curl -i -X PATCH http://{addr}/users/1 -H 'Content-Type: application/json' \\"
            );
            println!(
                "       -H 'If-Match: {tag}' -d '{{\"name\":\"Ada\"}}'                     # 412: stale tag"
            );
            println!(
                "  curl -i -X PUT http://{addr}/users/1 -H 'Content-Type: application/json' -d '{{}}'  # 428"
            );
        }
        None => println!(
            "  curl -i -X POST http://{addr}/users -H 'Content-Type: application/json' -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\"}}'   # user 1 is gone: a new user"
        ),
    }
    println!(
        "  curl -i http://{addr}/users                                        # collection ETag"
    );
    println!(
        "  curl -i http://{addr}/me -H 'Authorization: Bearer 2'              # private, user-scoped"
    );
    let app = router(store);
    let limits = serve::server::ClientLimits::new(&serve::server::fit_to_file_limit(
        &serve::config::ClientSection::default(),
    ));
    serve::server::run(listener, move |_| app.clone(), shutdown_signal(), limits)
        .await
        .context("server error")?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; in-flight requests then drain before exit.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}
