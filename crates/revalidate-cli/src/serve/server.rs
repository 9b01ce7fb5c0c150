//! The proxy's listener: hyper's HTTP/1.1 and HTTP/2 connections served straight
//! into the tower stack, a service per connection made for its peer's address,
//! every wait on a client bounded ([`ClientLimits`]), and a graceful drain on
//! shutdown.
//!
//! axum's `serve` would route every request through a `Router` and re-box every
//! response body; the proxy has one service and no routes, and on a cache hit
//! that work is a measurable share of the whole.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use revalidate_cache::BoxError;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use super::access_log::AccessLogger;
use super::client_io::{
    Activity, BoundPassed, BoundedIo, Bounds, EndWatched, InFlight, is_client_close,
};
use super::config::{ClientSection, DEFAULT_MAX_CONNECTIONS};
use super::cpu_share;
use super::drain::{Drain, Watcher};
use super::tls::ListenerTls;
use super::watched_body::{BodyWatcher, WatchedBody};

/// The bounds a listener keeps on its clients (`[client]` in the configuration).
/// Clones share one count of connections, so that the workers of
/// [`run_per_core`] keep one limit between them, and one set of bounds, which
/// [`ClientLimits::update`] replaces for the connections accepted after it.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    now: Arc<RwLock<Settings>>,
    connections: Arc<Semaphore>,
    /// Where the requests that end before the service sees them (a head hyper
    /// refuses, or one that does not arrive in time) are logged, if anywhere.
    unserved_log: Option<AccessLogger>,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    bounds: Bounds,
    drain_timeout: Duration,
    max_connections: usize,
}

impl Settings {
    fn of(section: &ClientSection) -> Self {
        Self {
            bounds: Bounds {
                header: section.header_timeout,
                idle: section.keepalive_timeout,
                send: section.send_timeout,
            },
            drain_timeout: section.drain_timeout,
            max_connections: section
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                .clamp(1, Semaphore::MAX_PERMITS),
        }
    }
}

impl ClientLimits {
    /// The limits of `section`.
    pub fn new(section: &ClientSection) -> Self {
        let settings = Settings::of(section);
        Self {
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            now: Arc::new(RwLock::new(settings)),
            unserved_log: None,
        }
    }

    /// The same limits, with an access line to `logger` for each request whose
    /// head hyper refuses (400, 414, 431) or that the header timeout cuts short
    /// (408): no layer, the access log's included, sees those.
    pub fn logging_unserved(self, logger: Option<AccessLogger>) -> Self {
        Self {
            unserved_log: logger,
            ..self
        }
    }

    /// Client connections served at once.
    pub fn max_connections(&self) -> usize {
        self.settings().max_connections
    }

    fn settings(&self) -> Settings {
        *self
            .now
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `section` (a configuration reload): connections accepted from now
    /// on get its bounds, and the drain its timeout. A higher connection limit
    /// takes effect at once; a lower one as connections close, since open ones
    /// are not cut.
    pub fn update(&self, section: &ClientSection) {
        let next = Settings::of(section);
        let mut now = self
            .now
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if next.max_connections > now.max_connections {
            self.connections
                .add_permits(next.max_connections - now.max_connections);
        } else if let Ok(fewer) = u32::try_from(now.max_connections - next.max_connections)
            && fewer > 0
        {
            // The permits are taken as they come free, then never given back.
            let connections = self.connections.clone();
            tokio::spawn(async move {
                if let Ok(permits) = connections.acquire_many_owned(fewer).await {
                    permits.forget();
                }
            });
        }
        *now = next;
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self::new(&ClientSection::default())
    }
}

/// `section` with the connection limit that the process's file limit allows,
/// once raised to its hard limit: a client connection can take two descriptors
/// (its socket and an upstream connection), and a few are kept for listeners and
/// logs. A limit set in the configuration that the file limit does not allow is
/// lowered, with a warning; an unset one becomes the smaller of
/// [`DEFAULT_MAX_CONNECTIONS`] and what the file limit allows.
pub fn fit_to_file_limit(section: &ClientSection) -> ClientSection {
    const RESERVED: u64 = 64;
    let files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => files,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the file limit");
            return section.clone();
        }
    };
    let capacity = usize::try_from(files.saturating_sub(RESERVED) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    let max_connections = match section.max_connections {
        Some(configured) if configured > capacity => {
            tracing::warn!(
                files,
                configured,
                max_connections = capacity,
                "the file limit allows fewer client connections than [client] max_connections"
            );
            capacity
        }
        Some(configured) => configured,
        None => capacity.min(DEFAULT_MAX_CONNECTIONS),
    };
    tracing::info!(files, max_connections, "file limit");
    ClientSection {
        max_connections: Some(max_connections),
        ..section.clone()
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits for
/// in-flight requests to finish (closing what is left after the drain timeout).
/// Each request counts towards its worker's next yield of the CPU ([`cpu_share`]).
/// Each connection is served by the service that `make_service` makes for its
/// peer's address (the upstream client appends it to `X-Forwarded-For`). At the
/// connection limit, accepting pauses until a connection closes.
pub async fn run<M, S, B>(
    listener: TcpListener,
    make_service: M,
    shutdown: impl Future<Output = ()>,
    limits: ClientLimits,
) -> std::io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    run_with_tls(listener, make_service, shutdown, limits, None).await
}

/// [`run`], speaking TLS with the certificate `tls` has when each connection
/// arrives (when given). The handshake counts as the first request's head, so
/// it is bounded by the header timeout.
pub async fn run_with_tls<M, S, B>(
    listener: TcpListener,
    make_service: M,
    shutdown: impl Future<Output = ()>,
    limits: ClientLimits,
    tls: Option<ListenerTls>,
) -> std::io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let drain = Drain::new();
    tokio::pin!(shutdown);
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let permit = match limits.connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("revalidate_connection_limit_reached_total").increment(1);
                // Once a minute at most: at the limit, this happens on every accept.
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections(),
                        "connection limit reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = limits.connections.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin,
                    // as hyper's and axum's accept loops do.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = CalledInPlace::new(make_service(peer), activity.clone());
        let io = BoundedIo::new(stream, activity, limits.settings().bounds);
        let watcher = drain.watcher();
        let acceptor = tls.as_ref().map(ListenerTls::acceptor);
        let unserved_log = limits.unserved_log;
        tokio::spawn(async move {
            let _permit = permit;
            let open = metrics::gauge!("revalidate_client_connections");
            open.increment(1.0);
            match acceptor {
                None => serve_connection(io, service, watcher, peer, unserved_log).await,
                Some(acceptor) => match acceptor.accept(io).await {
                    Ok(mut stream) => {
                        // The bounds see encrypted bytes: ALPN tells HTTP/2 instead.
                        let (io, tls) = stream.get_mut();
                        let http2 = tls.alpn_protocol() == Some(b"h2");
                        io.set_under_tls(http2);
                        // An HTTP/2 connection has no heads of its own to refuse or
                        // cut short (its streams are requests), and hyper gives its
                        // socket's errors as an HTTP/1 connection's: no line.
                        let unserved_log = unserved_log.filter(|_| !http2);
                        let stream = EndWatched::new(stream, service.activity.clone());
                        serve_connection(stream, service, watcher, peer, unserved_log).await
                    }
                    Err(error) => {
                        metrics::counter!("revalidate_tls_handshake_failures_total").increment(1);
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                    }
                },
            }
            open.decrement(1.0);
        });
    }
    drop(listener);
    let drain_timeout = limits.settings().drain_timeout;
    let closed = drain.finish(drain_timeout).await;
    if closed > 0 {
        tracing::warn!(
            closed,
            ?drain_timeout,
            "closed connections still open at the drain deadline"
        );
    }
    Ok(())
}

/// Serves one client connection (HTTP/1.1, or HTTP/2 by its preface) until it
/// ends or the drain closes it; a request that ended before the service saw it
/// is logged to `unserved_log`.
async fn serve_connection<I, S, B>(
    io: I,
    service: CalledInPlace<S>,
    watcher: Watcher,
    peer: SocketAddr,
    unserved_log: Option<AccessLogger>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = service.activity.clone();
    let builder = Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    match watcher.watch(connection).await {
        Some(Err(error)) => {
            tracing::debug!(%peer, error, "connection ended with an error");
            let status = unserved_status(&*error, activity.closed_mid_head());
            if let (Some(logger), Some(status)) = (unserved_log, status) {
                logger.unserved(peer.ip(), status);
            }
        }
        Some(Ok(())) => {}
        None => tracing::debug!(%peer, "connection closed at the drain deadline"),
    }
}

/// The status of a request that `error`, ending its HTTP/1 connection, kept
/// from the service, if there was one. hyper ends a connection with an error
/// while it reads a head only when part of one came (with nothing read, a
/// closed or timed-out socket is a clean end), so every such error is a
/// request's:
/// - a head hyper refused and answered itself (its `Server::on_error`): 414 for
///   a target too long, 431 for a head too large, 400 for any other malformed
///   head; its error tells these apart by its message only;
/// - a head that did not arrive whole within the header timeout: 408, closed
///   without an answer, as nginx logs such a request;
/// - a head the client stopped sending, closing its side (`closed_mid_head`):
///   400, as nginx logs it. hyper's error is the same when a client closes
///   while its request is in flight or its response is going out, which that
///   request's own line tells, so it counts only in the middle of a head (and
///   not for a head sent behind another, pipelined, which hyper reads later).
///
/// Two parse errors get no answer from hyper, and no line here: an HTTP/2
/// preface where an HTTP/1 head was due, and an error of hyper's own. A
/// connection's first bytes are read before hyper, by hyper-util's HTTP/1-or-2
/// detection, which ends a silent connection (or one that only shook hands over
/// TLS) with a bare `io::Error`: no request, no line. An HTTP/2 connection's
/// errors carry no [`BoundPassed`] either (h2 keeps their text only), and none
/// is a parse error.
fn unserved_status(
    error: &(dyn std::error::Error + 'static),
    closed_mid_head: bool,
) -> Option<StatusCode> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if BoundPassed::in_error(error) == Some(BoundPassed::Head) {
        return Some(StatusCode::REQUEST_TIMEOUT);
    }
    if closed_mid_head && ended_early(error) {
        return Some(StatusCode::BAD_REQUEST);
    }
    if !error.is_parse() {
        return None;
    }
    let message = error.to_string();
    if message.starts_with("URI too long") {
        Some(StatusCode::URI_TOO_LONG)
    } else if error.is_parse_too_large() {
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    } else if message.contains("HTTP2 preface") || message.starts_with("internal error") {
        None
    } else {
        Some(StatusCode::BAD_REQUEST)
    }
}

/// Whether `error` is the client's side ending before a message was whole: an
/// end of stream, or an I/O error of the kind a closing client's read gives
/// ([`is_client_close`]).
fn ended_early(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    error.is_incomplete_message()
        || error
            .source()
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .is_some_and(|io| is_client_close(io.kind()))
}

/// A connection's tower service, as hyper calls it: in place when it is ready.
///
/// hyper calls a service through `&self`, tower through `&mut self` once
/// `poll_ready` has said yes. `service_fn(|r| service.clone().oneshot(r))` bridges
/// the two with a copy per request, and the copy's reference counts (the cache's
/// and the upstream's) are shared by every connection on every core: an increment
/// and a decrement on each request, on cache lines the two cores take from each
/// other. A service that is ready at once (the proxy's always is: the upstream
/// client pools connections) is called in place instead; one that is not is
/// copied and driven to readiness as `oneshot` does.
struct CalledInPlace<S> {
    // Borrowed only within `call`, which returns before hyper calls again (HTTP/2
    // streams included): the borrow never fails.
    service: RefCell<S>,
    /// The connection's requests in flight, which its idle bound looks at.
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for CalledInPlace<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
{
    type Response = Response<InFlightBody<B>>;
    type Error = S::Error;
    type Future = InPlaceFuture<S>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        cpu_share::before_request();
        self.call_with(request.map(Body::new))
    }
}

impl<S, B> CalledInPlace<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
{
    fn new(service: S, activity: Arc<Activity>) -> Self {
        Self {
            service: RefCell::new(service),
            activity,
        }
    }

    fn call_with(&self, request: Request<Body>) -> InPlaceFuture<S> {
        let in_flight = self.activity.start();
        let mut service = self.service.borrow_mut();
        // A service that is not ready registers this no-op waker and is asked again,
        // properly, through the copy; one that failed fails the copy's request too.
        let call = match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Call::InPlace {
                future: service.call(request),
            },
            _ => Call::Copied {
                future: service.clone().oneshot(request),
            },
        };
        InPlaceFuture {
            call,
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CalledInPlace`]; the request counts as in flight
    /// until its response body is done, or until this future is dropped unfinished.
    struct InPlaceFuture<S: Service<Request<Body>>> {
        #[pin]
        call: Call<S>,
        in_flight: Option<InFlight>,
    }
}

pin_project_lite::pin_project! {
    #[project = CallProjection]
    enum Call<S: Service<Request<Body>>> {
        InPlace { #[pin] future: S::Future },
        Copied { #[pin] future: Oneshot<S, Request<Body>> },
    }
}

impl<S, B> Future for InPlaceFuture<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    type Output = Result<Response<InFlightBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.call.project() {
            CallProjection::InPlace { future } => std::task::ready!(future.poll(cx)),
            CallProjection::Copied { future } => std::task::ready!(future.poll(cx)),
        };
        let mut in_flight = this.in_flight.take();
        if let Some(in_flight) = &mut in_flight {
            in_flight.responding();
        }
        Poll::Ready(
            response.map(|response| response.map(|inner| WatchedBody::new(inner, in_flight))),
        )
    }
}

/// A response body that keeps its request in flight until hyper drops it, and
/// tells the connection's send bound whether hyper comes back for it.
pub(crate) type InFlightBody<B> = WatchedBody<B, Option<InFlight>>;

impl<D> BodyWatcher<D> for Option<InFlight> {
    fn polled<E>(&mut self, polled: &Poll<Option<Result<http_body::Frame<D>, E>>>) {
        if let Some(in_flight) = self {
            in_flight.body_polled(polled);
        }
    }
}

/// `workers` listening sockets on `addr`, bound with `SO_REUSEPORT` so that the
/// kernel spreads incoming connections among them (for [`run_per_core`]). With port
/// 0, the first socket's port is taken by the others. An address already in use
/// is refused, as a plain bind would: `SO_REUSEPORT` alone would let a second
/// process share the port and silently take half of the connections.
pub fn bind_per_core(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<StdListener>> {
    // Elsewhere than Unix there is no SO_REUSEPORT to spread connections: one worker.
    let workers = if cfg!(unix) { workers.max(1) } else { 1 };
    if addr.port() != 0 {
        drop(StdListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?.into_std()?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves each listener on a thread of its own, with a single-threaded runtime,
/// until `shutdown` resolves or a worker fails; then every worker drains as [`run`]
/// does, and the first failure, if any, is returned.
///
/// A connection stays on the thread that accepted it, as in nginx's worker
/// processes: no task moves between cores and no core wakes another for it. On the
/// proxy benchmark this serves more hits per second than one work-stealing runtime
/// for all connections, for less CPU per request (bench/README.md). The cost:
/// the kernel balances connections, not requests, so a few very busy connections
/// can load one core more than another, and when another process takes a core, its
/// connections wait for it (`revalidate serve --scheduler work-stealing` lets
/// another worker take them over). A busy worker yields its core after a run of
/// requests ([`cpu_share`]), so that wait is short.
///
/// Tasks a worker spawns (upstream connections, which the upstream client pools for
/// every worker, and background refreshes) run on its runtime, so no runtime is
/// dropped before all workers have drained.
pub async fn run_per_core<M, S, B>(
    listeners: Vec<StdListener>,
    make_service: M,
    shutdown: impl Future<Output = ()>,
    limits: ClientLimits,
    tls: Option<ListenerTls>,
) -> std::io::Result<()>
where
    M: Fn(SocketAddr) -> S + Clone + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let workers = listeners.len();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (all_drained, drained) = tokio::sync::watch::channel(false);
    let (exited, mut exits) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<()>>();
    let mut threads = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let make_service = make_service.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        let (mut stopped, mut drained) = (stopped.clone(), drained.clone());
        let worker_exited = exited.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("revalidate-worker-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => return drop(worker_exited.send(Err(error))),
                };
                runtime.block_on(async move {
                    let served = match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let shutdown = async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            };
                            run_with_tls(listener, make_service, shutdown, limits, tls).await
                        }
                        Err(error) => Err(error),
                    };
                    let _ = worker_exited.send(served);
                    let _ = drained.wait_for(|all| *all).await;
                });
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                let _ = exited.send(Err(error));
            }
        }
    }
    drop(exited);
    // Until the signal, or until a worker stops on its own (it could not start, or
    // its listener failed): then all stop.
    let mut results = Vec::with_capacity(workers);
    tokio::select! {
        () = shutdown => {}
        Some(result) = exits.recv() => {
            if let Err(error) = &result {
                tracing::error!(%error, "a worker stopped; stopping the others");
            }
            results.push(result);
        }
    }
    let _ = stop.send(true);
    while results.len() < workers {
        match exits.recv().await {
            Some(result) => results.push(result),
            None => break,
        }
    }
    let _ = all_drained.send(true);
    // Joined off the async runtime: each thread returns once all have drained.
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await
    .map_err(std::io::Error::other)?;
    results
        .into_iter()
        .collect::<std::io::Result<Vec<()>>>()
        .map(drop)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A reload's limits apply to what comes next: a higher connection limit at
    /// once, a lower one as connections close, new bounds for new connections.
    #[tokio::test]
    async fn limits_follow_a_reload() {
        let section = |max: usize, header: u64| ClientSection {
            max_connections: Some(max),
            header_timeout: Duration::from_secs(header),
            ..ClientSection::default()
        };
        let limits = ClientLimits::new(&section(2, 30));
        let held: Vec<_> = (0..2)
            .map(|_| limits.connections.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(limits.connections.clone().try_acquire_owned().is_err());
        limits.update(&section(3, 5));
        assert_eq!(limits.max_connections(), 3);
        assert_eq!(limits.settings().bounds.header, Duration::from_secs(5));
        let third = limits.connections.clone().try_acquire_owned().unwrap();
        limits.update(&section(1, 5));
        assert_eq!(limits.max_connections(), 1);
        // Three are open: none may start until two have closed.
        drop(third);
        drop(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let only = limits.connections.clone().try_acquire_owned().unwrap();
        assert!(limits.connections.clone().try_acquire_owned().is_err());
        drop(only);
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    /// Counts its copies; ready only after `ready_after` polls of readiness.
    #[derive(Debug)]
    struct Counted {
        copies: Arc<AtomicUsize>,
        polls: usize,
        ready_after: usize,
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.copies.fetch_add(1, Ordering::Relaxed);
            Self {
                copies: self.copies.clone(),
                polls: self.polls,
                ready_after: self.ready_after,
            }
        }
    }

    impl Service<Request<Body>> for Counted {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.polls += 1;
            if self.polls > self.ready_after {
                return Poll::Ready(Ok(()));
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            std::future::ready(Ok(Response::new(Body::from("ok"))))
        }
    }

    /// `n` keep-alive GETs through `service`, served as the proxy serves them.
    async fn serve_requests(service: Counted, n: usize) {
        let in_place = CalledInPlace::new(service, Activity::new());
        for _ in 0..n {
            // hyper's `Incoming` cannot be made outside hyper: called past its mapping.
            let response = in_place.call_with(Request::new(Body::empty()));
            assert_eq!(response.await.unwrap().status(), 200);
        }
    }

    #[tokio::test]
    async fn a_ready_service_is_called_in_place_and_one_that_is_not_is_copied() {
        let copies = Arc::new(AtomicUsize::new(0));
        let ready = Counted {
            copies: copies.clone(),
            polls: 0,
            ready_after: 0,
        };
        serve_requests(ready, 3).await;
        assert_eq!(copies.load(Ordering::Relaxed), 0, "no copy per request");
        let slow = Counted {
            copies: copies.clone(),
            polls: 0,
            ready_after: 1,
        };
        serve_requests(slow, 1).await;
        assert_eq!(
            copies.load(Ordering::Relaxed),
            1,
            "a service not ready at once is copied and driven to readiness"
        );
    }

    #[test]
    fn an_address_in_use_is_refused_despite_reuseport() {
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let error = bind_per_core(taken.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn workers_share_one_port_and_stop_together() {
        let listeners = bind_per_core("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert_eq!(listeners[1].local_addr().unwrap(), addr);
        let make_service = |peer: SocketAddr| {
            tower::service_fn(move |_: Request<Body>| {
                let thread = std::thread::current().name().unwrap_or("").to_string();
                async move {
                    let body = format!("{thread} for {}", peer.ip());
                    Ok::<_, Infallible>(Response::new(Body::from(body)))
                }
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run_per_core(
            listeners,
            make_service,
            async {
                let _ = stopped.await;
            },
            ClientLimits::default(),
            None,
        ));
        for _ in 0..8 {
            let reply = exchange(
                addr,
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert!(reply.contains("revalidate-worker-"), "{reply}");
            assert!(reply.ends_with(" for 127.0.0.1"), "{reply}");
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no worker listens after the stop"
        );
    }

    #[tokio::test]
    async fn a_worker_yields_its_cpu_every_run_of_requests() {
        use cpu_share::REQUESTS_BEFORE_YIELD;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let make_service = |_: SocketAddr| {
            tower::service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::from("ok")))
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(
            listener,
            make_service,
            async {
                let _ = stopped.await;
            },
            ClientLimits::default(),
        ));
        let before = cpu_share::yields();
        // Pipelined on one connection, as a busy keep-alive client sends them.
        let mut requests =
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2 * REQUESTS_BEFORE_YIELD as usize - 1);
        requests.push_str("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = exchange(addr, requests.leak()).await;
        assert_eq!(
            reply.matches("HTTP/1.1 200").count(),
            2 * REQUESTS_BEFORE_YIELD as usize
        );
        // Other tests' servers may yield too, in this process: at least ours did.
        assert!(
            cpu_share::yields() >= before + 2,
            "{} yields",
            cpu_share::yields() - before
        );
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_request_in_flight() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = std::sync::Arc::new(tokio::sync::Mutex::new(Some(released)));
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let started = std::sync::Arc::new(std::sync::Mutex::new(Some(started)));
        let make_service = move |peer: SocketAddr| {
            let (released, started) = (released.clone(), started.clone());
            tower::service_fn(move |_: Request<Body>| {
                let released = released.clone();
                if let Some(started) = started.lock().unwrap().take() {
                    let _ = started.send(());
                }
                async move {
                    if let Some(released) = released.lock().await.take() {
                        let _ = released.await;
                    }
                    let body = format!("done for {}", peer.ip());
                    Ok::<_, Infallible>(Response::new(Body::from(body)))
                }
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(
            listener,
            make_service,
            async {
                let _ = stopped.await;
            },
            ClientLimits::default(),
        ));
        let client = tokio::spawn(exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        has_started.await.unwrap();
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !server.is_finished(),
            "the request in flight holds the drain"
        );
        release.send(()).unwrap();
        let reply = client.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("done for 127.0.0.1"), "{reply}");
        server.await.unwrap().unwrap();
    }
}
