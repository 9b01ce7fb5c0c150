//! Graceful shutdown of a worker's connections: when the drain starts, each
//! connection finishes the request it is serving and closes; [`Drain::finish`]
//! waits until all have, or until its deadline, when the ones left are closed
//! (a client that never finishes its request cannot hold the process).
//!
//! hyper-util's `GracefulShutdown` does the same, but its per-connection future
//! polls a `watch` receiver each time the connection runs, which locks the
//! channel's waiter list: on the proxy's hit path, a lock taken and released per
//! request, for an event that happens once. Here a connection reads one flag per
//! poll and registers its waker only when it changes (a task's waker does not),
//! so the lock is taken per connection, not per request.
//!
//! ```text
//! let drain = Drain::new();
//! let watcher = drain.watcher();
//! tokio::spawn(async move { watcher.watch(builder.serve_connection(io, service)).await });
//! // ... on shutdown:
//! drain.finish(Duration::from_secs(30)).await;
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

/// The connections of one worker, and whether they are to finish.
#[derive(Debug)]
pub(super) struct Drain {
    shared: Arc<Shared>,
    /// Every watched connection holds a receiver: the drain is finished when none is
    /// left.
    open: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct Shared {
    started: AtomicBool,
    /// The deadline passed: connections still open are dropped.
    forced: AtomicBool,
    next_id: AtomicU64,
    /// The wakers of watched connections, by connection.
    waiting: Mutex<HashMap<u64, Waker>>,
}

impl Shared {
    fn wake_all(&self) {
        // Woken outside the lock: a waker may run its task at once.
        let wakers: Vec<Waker> = self.waiting().values().cloned().collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        // Nothing panics while the map is locked; a poisoned lock is reused.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drain {
    /// A drain with no connection, not started.
    pub(super) fn new() -> Self {
        Self {
            shared: Arc::default(),
            open: watch::Sender::new(()),
        }
    }

    /// A watcher for one connection, to be moved into the connection's task.
    pub(super) fn watcher(&self) -> Watcher {
        Watcher {
            shared: self.shared.clone(),
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            open: self.open.subscribe(),
        }
    }

    /// Tells every watched connection to finish, and waits until all have; those
    /// still open after `deadline` are closed. Returns how many were.
    pub(super) async fn finish(self, deadline: Duration) -> usize {
        self.shared.started.store(true, Ordering::Release);
        self.shared.wake_all();
        if tokio::time::timeout(deadline, self.open.closed())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.open.receiver_count();
        self.shared.forced.store(true, Ordering::Release);
        self.shared.wake_all();
        self.open.closed().await;
        left
    }
}

/// Counts as an open connection from its making (see [`Drain::watcher`]).
#[derive(Debug)]
pub(super) struct Watcher {
    shared: Arc<Shared>,
    id: u64,
    open: watch::Receiver<()>,
}

impl Watcher {
    /// `connection`, shut down gracefully once the drain starts.
    pub(super) fn watch<C: GracefulConnection>(self, connection: C) -> Watched<C> {
        Watched {
            connection,
            shared: self.shared,
            id: self.id,
            registered: None,
            shutting_down: false,
            _open: self.open,
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection served until it ends, or until it has finished its request
    /// once the drain started. Made by [`Watcher::watch`].
    pub(super) struct Watched<C> {
        #[pin]
        connection: C,
        shared: Arc<Shared>,
        id: u64,
        registered: Option<Waker>,
        shutting_down: bool,
        _open: watch::Receiver<()>,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.registered.is_some() {
                this.shared.waiting().remove(this.id);
            }
        }
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    /// `None` when the drain's deadline closed the connection.
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let stale = this
            .registered
            .as_ref()
            .is_none_or(|waker| !waker.will_wake(cx.waker()));
        if stale {
            this.shared.waiting().insert(*this.id, cx.waker().clone());
            *this.registered = Some(cx.waker().clone());
        }
        // Read after registering: a drain that started (or was forced) before the
        // waker was in the map is seen here, one that starts after wakes it. Until
        // the drain starts, one flag is read per poll.
        if *this.shutting_down || this.shared.started.load(Ordering::Acquire) {
            if this.shared.forced.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            if !*this.shutting_down {
                *this.shutting_down = true;
                this.connection.as_mut().graceful_shutdown();
            }
        }
        this.connection.poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A client connected to a server whose connection `drain` watches.
    async fn connected(drain: &Drain) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let watcher = drain.watcher();
        let served = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
            });
            let builder = Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(connection).await;
        });
        (client, served)
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_the_drain_finishes() {
        let drain = Drain::new();
        let (mut client, served) = connected(&drain).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = [0u8; 256];
        let n = client.read(&mut reply).await.unwrap();
        assert!(reply[..n].starts_with(b"HTTP/1.1 200"));
        // The connection has registered its waker and waits for a next request.
        let shared = drain.shared.clone();
        assert_eq!(shared.waiting().len(), 1);
        let forced =
            tokio::time::timeout(Duration::from_secs(5), drain.finish(Duration::from_secs(5)))
                .await
                .expect("the idle connection was woken and closed");
        assert_eq!(forced, 0);
        served.await.unwrap();
        assert_eq!(client.read(&mut reply).await.unwrap(), 0, "closed");
        assert!(shared.waiting().is_empty(), "its waker went with it");
    }

    #[tokio::test]
    async fn a_connection_that_starts_after_the_drain_closes_too() {
        let drain = Drain::new();
        drain.shared.started.store(true, Ordering::Release);
        let (mut client, served) = connected(&drain).await;
        tokio::time::timeout(Duration::from_secs(5), drain.finish(Duration::from_secs(5)))
            .await
            .expect("the drain saw the connection end");
        served.await.unwrap();
        let mut reply = [0u8; 64];
        assert_eq!(client.read(&mut reply).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn a_half_sent_head_is_closed_at_the_deadline() {
        let drain = Drain::new();
        let (mut client, served) = connected(&drain).await;
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let forced = drain.finish(Duration::from_millis(200)).await;
        assert_eq!(forced, 1, "the connection was still reading its head");
        assert!(started.elapsed() >= Duration::from_millis(200));
        served.await.unwrap();
        let mut reply = [0u8; 64];
        assert_eq!(client.read(&mut reply).await.unwrap(), 0, "closed");
    }
}
