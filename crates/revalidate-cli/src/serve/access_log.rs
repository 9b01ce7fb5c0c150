//! One structured log line per request: method, path, status, `Cache-Status` and
//! latency, as a tracing event at INFO.
//!
//! tower-http's `TraceLayer` does this and more (a span per request, body
//! callbacks); when INFO is off — as in production at `RUST_LOG=warn` — this layer
//! does no work beyond one level check.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use tower::{Layer, Service};

/// Applies [`AccessLog`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// Logs each request's outcome; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = tracing::enabled!(tracing::Level::INFO).then(|| Started {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            at: Instant::now(),
        });
        AccessLogFuture {
            inner: self.inner.call(request),
            started,
        }
    }
}

#[derive(Debug)]
struct Started {
    method: Method,
    path: String,
    at: Instant,
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`].
    #[derive(Debug)]
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F, B, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(started), Ok(response)) = (this.started.take(), &result) {
            let cache_status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let latency_us = u64::try_from(started.at.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::info!(
                method = %started.method,
                path = %started.path,
                status = response.status().as_u16(),
                cache_status,
                latency_us,
                "response"
            );
        }
        Poll::Ready(result)
    }
}
