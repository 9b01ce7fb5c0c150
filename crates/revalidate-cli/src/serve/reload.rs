//! Reloading the configuration while serving (SIGHUP, `POST /reload`), as nginx
//! does: the new configuration is read and checked whole, and only a valid one
//! replaces the old. Requests in flight finish on the configuration they started
//! with; each connection takes up the new one at its next request. The stored
//! entries stay, except those whose route's key recipe changed (see
//! [`revalidate_cache::Cache::reconfigured`]).
//!
//! ```no_run
//! # async fn run(proxy: revalidate_cli::serve::Proxy) {
//! use revalidate_cli::serve::{Live, Loaded, ServeConfig, UpstreamClient, server::ClientLimits};
//!
//! let config = ServeConfig::default();
//! let limits = ClientLimits::new(&config.client);
//! let live = Live::new(proxy, config, limits, || {
//!     let config = revalidate_cli::serve::load("revalidate.toml".as_ref()).map_err(|e| e.to_string())?;
//!     let upstream = UpstreamClient::new("http://127.0.0.1:5000", &config).map_err(|e| e.to_string())?;
//!     Ok(Loaded { config, upstream })
//! });
//! let service = live.for_peer("127.0.0.1:50000".parse().unwrap()); // serve with it
//! let reloaded = live.reload().await; // on SIGHUP
//! # let _ = (service, reloaded);
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use axum::body::Body;
use http::Request;
use revalidate_cache::Cache;
use tower::Service;

use super::config::ServeConfig;
use super::server::{self, ClientLimits};
use super::{Proxy, ProxyService, ProxyStore, UpstreamClient};

/// A configuration read for a reload, with the upstream it names.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: ServeConfig,
    /// The upstream client made for it.
    pub upstream: UpstreamClient,
}

/// Reads the configuration again (the file and the flags that override it).
type Loader = dyn Fn() -> Result<Loaded, String> + Send + Sync;

/// The proxy currently in force, and how to replace it. Clones share it.
#[derive(Clone)]
pub struct Live {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    /// Bumped after each reload; a connection's service compares it with the one
    /// it was made at before each request (one atomic load on the hit path).
    generation: AtomicU64,
    /// The proxy in force.
    current: RwLock<Proxy>,
    limits: ClientLimits,
    load: Box<Loader>,
    /// One reload at a time, so two cannot interleave their purges and swaps.
    reloading: tokio::sync::Mutex<()>,
    /// The configuration the process started with: what the settings that only a
    /// restart applies are still at, whatever reloads asked for since.
    started: ServeConfig,
}

impl LiveInner {
    fn current(&self) -> Proxy {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// The configuration's number: 0 at start, one more for each reload.
    pub generation: u64,
    /// Stored keys dropped because their route's key recipe changed.
    pub dropped: usize,
    /// Settings that changed but take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload was refused; the old configuration keeps serving.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reload refused, the running configuration stays: {0}")]
pub struct ReloadError(pub String);

impl Live {
    /// `proxy`, made from `config`, serving clients within `limits`; `load`
    /// reads the configuration again for each reload.
    pub fn new(
        proxy: Proxy,
        config: ServeConfig,
        limits: ClientLimits,
        load: impl Fn() -> Result<Loaded, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(LiveInner {
                generation: AtomicU64::new(0),
                current: RwLock::new(proxy),
                limits,
                load: Box::new(load),
                reloading: tokio::sync::Mutex::new(()),
                started: config,
            }),
        }
    }

    /// The configuration's number: 0 at start, one more for each reload.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Proxy {
        self.inner.current()
    }

    /// The cache in force (for purges, which resolve routes).
    pub fn cache(&self) -> Cache<ProxyStore> {
        self.current().cache().clone()
    }

    /// The upstream client in force (for readiness and its servers' health).
    pub fn upstream(&self) -> UpstreamClient {
        self.current().upstream().clone()
    }

    /// The service for one client connection (see [`Proxy::for_peer`]); it
    /// takes up a new configuration at its next request after a reload.
    pub fn for_peer(&self, peer: SocketAddr) -> LiveService {
        let generation = self.generation();
        LiveService {
            live: self.inner.clone(),
            peer,
            generation,
            service: self.current().for_peer(peer),
        }
    }

    /// Reads the configuration again and puts it in force, or refuses it (with
    /// the reason) and keeps the running one.
    ///
    /// The reload runs to its end on a task of its own, even when the caller
    /// stops waiting (an admin client that disconnects): stopped halfway, it
    /// would have taken the new certificate and not the new configuration.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.spawned(false).await
    }

    /// [`Live::reload`], logged: one line either way.
    pub async fn reload_logged(&self) -> Result<Reloaded, ReloadError> {
        self.spawned(true).await
    }

    async fn spawned(&self, logged: bool) -> Result<Reloaded, ReloadError> {
        let live = self.clone();
        let task = tokio::spawn(async move {
            let result = live.reload_now().await;
            if logged {
                log(&result);
            }
            result
        });
        task.await
            .unwrap_or_else(|error| Err(ReloadError(format!("the reload failed: {error}"))))
    }

    async fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.inner.reloading.lock().await;
        let Loaded { config, upstream } = (self.inner.load)().map_err(ReloadError)?;
        let needs_restart = restart_only_changes(&self.inner.started, &config);
        let (proxy, dropped) = self.current().reconfigured(&config, upstream).await;
        self.inner
            .limits
            .update(&server::fit_to_file_limit(&config.client));
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = proxy;
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::counter!("revalidate_config_reloads_total").increment(1);
        Ok(Reloaded {
            generation,
            dropped,
            needs_restart,
        })
    }
}

/// One line for a reload's outcome.
fn log(result: &Result<Reloaded, ReloadError>) {
    match result {
        Ok(done) => tracing::info!(
            generation = done.generation,
            dropped = done.dropped,
            needs_restart = ?done.needs_restart,
            "configuration reloaded"
        ),
        Err(error) => {
            metrics::counter!("revalidate_config_reload_failures_total").increment(1);
            tracing::error!("{error}");
        }
    }
}

/// The settings whose values in `new` differ from those the process started
/// with (`started`) and that only a restart applies: the store is made once (its
/// memory budget and its Redis connection).
fn restart_only_changes(started: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if started.max_bytes != new.max_bytes {
        changed.push("[cache] max_bytes");
    }
    if started.redis != new.redis {
        changed.push("[redis]");
    }
    changed
}

/// A connection's service under [`Live`]: the proxy of the configuration in
/// force when its request arrived.
pub struct LiveService {
    live: Arc<LiveInner>,
    peer: SocketAddr,
    generation: u64,
    service: ProxyService,
}

impl Clone for LiveService {
    fn clone(&self) -> Self {
        Self {
            live: self.live.clone(),
            peer: self.peer,
            generation: self.generation,
            service: self.service.clone(),
        }
    }
}

impl Service<Request<Body>> for LiveService {
    type Response = <ProxyService as Service<Request<Body>>>::Response;
    type Error = <ProxyService as Service<Request<Body>>>::Error;
    type Future = <ProxyService as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let generation = self.live.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.service = self.live.current().for_peer(self.peer);
            self.generation = generation;
        }
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.service.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn live(next_max_bytes: u64) -> Live {
        let config = ServeConfig::default();
        let upstream = UpstreamClient::new("http://127.0.0.1:9", &config).unwrap();
        let (proxy, _) = super::super::proxy(&config, upstream).unwrap();
        let limits = ClientLimits::new(&config.client);
        Live::new(proxy, config, limits, move || {
            let config = ServeConfig {
                max_bytes: next_max_bytes,
                ..ServeConfig::default()
            };
            let upstream =
                UpstreamClient::new("http://127.0.0.1:9", &config).map_err(|e| e.to_string())?;
            Ok(Loaded { config, upstream })
        })
    }

    /// A caller that stops waiting (an admin client gone) does not stop the
    /// reload halfway: it is done all the same.
    #[tokio::test]
    async fn a_reload_whose_caller_stops_waiting_still_completes() {
        let live = live(ServeConfig::default().max_bytes);
        let busy = live.inner.reloading.lock().await;
        let abandoned = tokio::time::timeout(Duration::from_millis(20), live.reload()).await;
        assert!(abandoned.is_err(), "it waits for the reload in progress");
        drop(busy);
        for _ in 0..100 {
            if live.generation() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the abandoned reload was never done");
    }

    /// A memory budget changed in the file stays pending (the store keeps the
    /// one it was made with) for every reload until a restart, not only the
    /// first.
    #[tokio::test]
    async fn a_change_that_needs_a_restart_is_reported_until_one() {
        let live = live(512 << 20);
        for generation in 1..=2 {
            let reloaded = live.reload().await.unwrap();
            assert_eq!(reloaded.generation, generation);
            assert_eq!(reloaded.needs_restart, ["[cache] max_bytes"]);
        }
    }
}
