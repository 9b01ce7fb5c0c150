//! `revalidate demo`: the sample users API, served with the conditional layer.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use revalidate_cli::demo::{UserStore, router};
//!
//! let store = UserStore::connect("sqlite://users.db").await?;
//! store.seed().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router(store)).await?;
//! # Ok(()) }
//! ```

mod routes;
mod store;

pub use routes::{ApiError, MAX_BODY_BYTES, router};
pub use store::{Expected, Fields, User, UserStore, WriteOutcome};
