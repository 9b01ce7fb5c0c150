//! The proxy's listener: hyper's HTTP/1.1 and HTTP/2 connections served straight
//! into the tower stack, a service per connection made for its peer's address,
//! and a graceful drain on shutdown.
//!
//! axum's `serve` would route every request through a `Router` and re-box every
//! response body; the proxy has one service and no routes, and on a cache hit
//! that work is a measurable share of the whole.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use revalidate_cache::BoxError;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits for
/// in-flight requests to finish. Each connection is served by the service that
/// `make_service` makes for its peer's address (the upstream client appends it to
/// `X-Forwarded-For`).
pub async fn run<M, S, B>(
    listener: TcpListener,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let service = make_service(peer);
        let per_request = hyper::service::service_fn(move |request: Request<Incoming>| {
            service.clone().oneshot(request.map(Body::new))
        });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), per_request);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let server = tokio::spawn(run(listener, make_service, async {
            let _ = stopped.await;
        }));
        let client = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.unwrap();
            String::from_utf8(reply).unwrap()
        });
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
