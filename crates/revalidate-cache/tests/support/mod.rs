//! A scriptable origin and a client for the cache layer.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "redis")]
pub mod redis;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use revalidate_cache::{Cache, CacheBody, CacheService, MemoryStore, MockClock, Routes, Store};
use tower::{Layer, ServiceExt};

pub type Handler = Arc<dyn Fn(&Request<Full<Bytes>>, usize) -> Response<Full<Bytes>> + Send + Sync>;

/// An origin whose answer a test scripts; it counts the requests it sees.
#[derive(Clone)]
pub struct Origin {
    pub calls: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// The path and query of every request, as received.
    pub targets: Arc<Mutex<Vec<String>>>,
    handler: Arc<Mutex<Handler>>,
    pub delay: Arc<Mutex<std::time::Duration>>,
}

pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    response
}

impl Origin {
    pub fn new(
        handler: impl Fn(&Request<Full<Bytes>>, usize) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            targets: Arc::new(Mutex::new(Vec::new())),
            handler: Arc::new(Mutex::new(Arc::new(handler))),
            delay: Arc::new(Mutex::new(std::time::Duration::ZERO)),
        }
    }

    /// Always the same response.
    pub fn fixed(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> Self {
        Self::new(move |_, _| response(status, headers, body))
    }

    pub fn set(
        &self,
        handler: impl Fn(&Request<Full<Bytes>>, usize) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn last_target(&self) -> String {
        self.targets.lock().unwrap().last().cloned().unwrap()
    }

    pub fn last_request(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }

    pub fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let origin = self.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let origin = origin.clone();
            async move {
                let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
                origin.seen.lock().unwrap().push(request.headers().clone());
                let target = request.uri().path_and_query().map_or("", |pq| pq.as_str());
                origin.targets.lock().unwrap().push(target.to_string());
                let delay = *origin.delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let handler = origin.handler.lock().unwrap().clone();
                Ok::<_, Infallible>(handler(&request, n))
            }
        })
    }
}

pub type Upstream =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

pub type Service<St = MemoryStore> = CacheService<Upstream, St>;

/// A cache with a mock clock over an origin.
pub struct Harness {
    pub cache: Cache,
    pub clock: MockClock,
    pub origin: Origin,
    pub service: Service,
}

impl Harness {
    pub fn new(origin: Origin) -> Self {
        Self::with_routes(origin, Routes::default())
    }

    pub fn with_routes(origin: Origin, routes: Routes) -> Self {
        Self::build(origin, routes, 64 << 20)
    }

    pub fn build(origin: Origin, routes: Routes, budget: u64) -> Self {
        let clock = MockClock::new();
        let cache = Cache::builder(MemoryStore::new(budget))
            .routes(routes)
            .clock(clock.clone())
            .build();
        let upstream = tower::util::BoxCloneSyncService::new(origin.service());
        let service = cache.layer().layer(upstream);
        Self {
            cache,
            clock,
            origin,
            service,
        }
    }

    pub async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Reply {
        send(&self.service, method, uri, headers).await
    }

    pub async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", uri, headers).await
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(std::time::Duration::from_secs(secs));
    }
}

pub async fn send<St: Store>(
    service: &Service<St>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://origin.test{uri}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response: Response<CacheBody<Full<Bytes>>> = service
        .clone()
        .oneshot(builder.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    pub fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}
