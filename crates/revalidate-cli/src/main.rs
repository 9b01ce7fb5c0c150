//! `revalidate`: the sample users API (`demo`); the caching proxy (`serve`) comes next.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use revalidate_cli::demo::{UserStore, router};
use tokio::net::TcpListener;

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
}

fn main() -> ExitCode {
    // clap prints its own one-line error and exits with code 2 on bad flags.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("revalidate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("revalidate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo { listen, database } => demo(listen, &database).await,
    }
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
    println!("The users API is listening on http://{addr} (database: {database}). Try:");
    println!("  curl -i http://{addr}/users/1");
    println!(
        "  curl -i http://{addr}/users/1 -H 'If-None-Match: \"v1\"'          # 304 Not Modified"
    );
    println!("  curl -i -X PATCH http://{addr}/users/1 -H 'Content-Type: application/json' \\");
    println!(
        "       -H 'If-Match: \"v1\"' -d '{{\"name\":\"Ada King\"}}'                # 200, ETag \"v2\""
    );
    println!("  curl -i -X PATCH http://{addr}/users/1 -H 'Content-Type: application/json' \\");
    println!(
        "       -H 'If-Match: \"v1\"' -d '{{\"name\":\"Ada\"}}'                     # 412: stale tag"
    );
    println!(
        "  curl -i -X PUT http://{addr}/users/1 -H 'Content-Type: application/json' -d '{{}}'  # 428"
    );
    println!(
        "  curl -i http://{addr}/users                                        # collection ETag"
    );
    println!(
        "  curl -i http://{addr}/me -H 'Authorization: Bearer 2'              # private, user-scoped"
    );
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown_signal())
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
