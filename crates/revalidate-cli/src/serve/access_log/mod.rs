//! The access log: one line per request, in text or JSON, written off the
//! request path.
//!
//! Each line has the client's address, the time the request's head was read (UTC,
//! to the millisecond), the method, path and query, the status, the body bytes
//! sent, `Cache-Status`, the upstream's time (when the upstream was asked), the
//! total time, the request id and the user agent. The request id is the client's
//! `X-Request-Id` when it sent a usable one, otherwise one made here; the upstream
//! receives it on every request forwarded to it.
//!
//! A line is written when the response body ends, or is dropped unfinished: its
//! bytes are those the body gave hyper, and its total time runs to then (as
//! nginx's `$body_bytes_sent` and `$request_time`). A request dropped before its
//! response (the client went away) is logged with status 499, as nginx does. A
//! head refused before any layer sees it (by hyper, or by the header timeout) is
//! logged by the listener when its connection ends ([`AccessLogger::unserved`]).
//!
//! Each worker thread formats its lines into a batch of its own, which a thread
//! of the logger's writes every 10 ms ([`writer`]): a slow disk or terminal never
//! blocks a worker, and lines that do not fit are dropped and counted
//! ([`AccessLogger::dropped`]) instead. [`line`] has the formats.
//!
//! With or without a log, the layer times every request (head to response head)
//! into `revalidate_request_duration_seconds` ([`super::observe`]): it is the
//! outermost layer, the one place every request passes through.
//!
//! ```text
//! 127.0.0.1 [2026-12-03T08:17:42.123Z] "GET /users/1?fields=name HTTP/1.1" 200 48 "revalidate; hit; ttl=29" upstream=- total=0.000041 id=5f3a9c0e00000001 ua="curl/8.5.0"
//! ```

mod line;
mod writer;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::USER_AGENT;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tower::{Layer, Service};

use super::watched_body::{BodyWatcher, WatchedBody};
use line::{Id, Line, RequestLine};
pub use writer::{AccessLogger, FlushOnDrop};

/// The request id's field.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of space-separated fields, like nginx's.
    Text,
    /// One JSON object per line.
    Json,
}

/// The id the upstream client gave a request it forwarded without one.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The time the upstream took to answer, put in a response's extensions by the
/// upstream client, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// Applies [`AccessLog`]; without a logger, the layer passes requests through.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer {
    logger: Option<AccessLogger>,
    /// The connection's client address.
    peer: Option<IpAddr>,
}

impl AccessLogLayer {
    /// Lines to `logger`, or none.
    pub fn new(logger: Option<AccessLogger>) -> Self {
        Self { logger, peer: None }
    }

    /// The same, for the connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            logger: self.logger,
            peer: Some(peer.ip()),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            logger: self.logger,
            peer: self.peer,
        }
    }
}

/// Logs each request's outcome; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    logger: Option<AccessLogger>,
    peer: Option<IpAddr>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Taken with or without a log: every request's time is counted. The
        // TSC clock (quanta): a few instructions where the system's monotonic
        // clock costs some fifty, twice on every request.
        let at = quanta::Instant::now();
        let started = self.logger.map(|logger| {
            let target = request
                .uri()
                .path_and_query()
                .map_or(&b"/"[..], |pq| pq.as_str().as_bytes());
            // The client's id, if usable; otherwise the one the upstream client
            // gives a request it forwards, or (a hit) one made for the line.
            let (user_agent, id) = agent_and_id(request.headers());
            let mut started = spare_line().unwrap_or_else(|| {
                Box::new(Started {
                    at,
                    logger,
                    peer: None,
                    method: http::Method::GET,
                    fields: Fields::default(),
                    version: http::Version::HTTP_11,
                    outcome: Outcome::ABANDONED,
                })
            });
            started.at = at;
            started.logger = logger;
            started.peer = self.peer;
            started.method = request.method().clone();
            started.fields.fill(target, user_agent, id);
            started.version = request.version();
            started.outcome = Outcome::ABANDONED;
            started
        });
        AccessLogFuture {
            inner: self.inner.call(request),
            at,
            started,
        }
    }
}

/// At most this many fields are looked through one by one for a field the log
/// wants; a larger map is asked by name.
const FEW_FIELDS: usize = 8;

/// The request's user agent and its id when usable. Most requests carry a few
/// fields: one pass comparing names costs less than two lookups, each hashing
/// its name.
fn agent_and_id(headers: &HeaderMap) -> (Option<&[u8]>, Option<&[u8]>) {
    let (user_agent, id) = if headers.len() > FEW_FIELDS {
        (headers.get(USER_AGENT), headers.get(&X_REQUEST_ID))
    } else {
        let (mut user_agent, mut id) = (None, None);
        // A name's first value is the one a lookup returns.
        for (name, value) in headers {
            if *name == USER_AGENT {
                user_agent = user_agent.or(Some(value));
            } else if *name == X_REQUEST_ID {
                id = id.or(Some(value));
            }
        }
        (user_agent, id)
    };
    (
        user_agent.map(HeaderValue::as_bytes),
        id.filter(|v| usable_id(v)).map(HeaderValue::as_bytes),
    )
}

/// A response's `Cache-Status`. The cache writes it second in the answers it
/// makes from what it stores (after `Age`), so the first fields are looked at
/// before the map is asked by name.
fn cache_status(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .iter()
        .take(2)
        .find(|(name, _)| **name == CACHE_STATUS)
        .map(|(_, value)| value)
        .or_else(|| headers.get(&CACHE_STATUS))
        .map(HeaderValue::as_bytes)
}

/// Whether a client's request id may be kept: visible ASCII, at most 128 bytes.
pub fn usable_id(value: &HeaderValue) -> bool {
    !value.is_empty() && value.len() <= 128 && value.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// The client's request id when it is a usable one, else a new one.
pub fn request_id(sent: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = sent.filter(|v| usable_id(v)) {
        return value.clone();
    }
    HeaderValue::from_bytes(&hex_id(new_id())).unwrap_or(HeaderValue::from_static("-"))
}

/// A new request id: this thread's random prefix and its count.
fn new_id() -> u64 {
    thread_local! {
        static NEXT: Cell<(u32, u32)> = Cell::new((rand_prefix(), 0));
    }
    let (prefix, count) = NEXT.with(|next| {
        let (prefix, count) = next.get();
        next.set((prefix, count.wrapping_add(1)));
        (prefix, count)
    });
    (u64::from(prefix) << 32) | u64::from(count)
}

/// An id in hex, as the field carries it.
fn hex_id(value: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    let digits = b"0123456789abcdef";
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = digits[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
    id
}

/// A prefix that tells this thread's ids from other threads' and processes'.
fn rand_prefix() -> u32 {
    use std::hash::BuildHasher;
    // The standard library's hasher keys are random per process.
    let hash = std::collections::hash_map::RandomState::new()
        .hash_one((std::thread::current().id(), std::process::id()));
    (hash >> 32) as u32
}

/// A request's line in the making: what its head said, then its outcome.
/// Boxed wherever it goes: the future and the response body that carry it are
/// moved a few times on the way to hyper, and a pointer moves for less than its
/// two hundred bytes.
#[derive(Debug)]
struct Started {
    /// When the request's head was read.
    at: quanta::Instant,
    logger: AccessLogger,
    peer: Option<IpAddr>,
    method: http::Method,
    fields: Fields,
    version: http::Version,
    /// 499 until a response comes.
    outcome: Outcome,
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`].
    #[derive(Debug)]
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        at: quanta::Instant,
        started: Option<Box<Started>>,
    }

    impl<F> PinnedDrop for AccessLogFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its response: the client went away (499).
            if let Some(started) = this.project().started.take() {
                started.write_and_keep();
            }
        }
    }
}

thread_local! {
    /// Lines in the making that were written, kept by each thread with their
    /// buffers for its next requests: a line then costs no allocation, where a
    /// box and a buffer made and freed for each are about a seventh of the log's
    /// cost. Written here: a thread's own free list is a few lines, and the pool
    /// crates share theirs between threads, with the synchronization that takes.
    #[expect(clippy::vec_box, reason = "the boxes are what is reused, handed out whole")]
    static SPARE_LINES: RefCell<Vec<Box<Started>>> = const { RefCell::new(Vec::new()) };
}

/// The most lines in the making a thread keeps: more than its requests in
/// flight at once, most of the time.
const SPARE_LINES_KEPT: usize = 64;

/// A line whose buffer grew beyond this (a long target or user agent) is not
/// kept: a few such requests must not pin that much memory per thread.
const SPARE_BUFFER_KEPT: usize = 2048;

/// A line this thread kept, if any.
fn spare_line() -> Option<Box<Started>> {
    SPARE_LINES
        .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

/// Keeps `started`, written, for this thread's next request.
fn keep_spare(started: Box<Started>) {
    if started.fields.bytes.capacity() > SPARE_BUFFER_KEPT {
        return;
    }
    let _ = SPARE_LINES.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < SPARE_LINES_KEPT
        {
            spare.push(started);
        }
    });
}

/// The status nginx logs for a request whose client closed the connection
/// before the response (no response has it).
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl<F, B, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<LoggedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let started = this.started.take();
        Poll::Ready(result.map(|response| {
            let total = this.at.elapsed();
            let upstream = response.extensions().get::<UpstreamTime>().map(|t| t.0);
            super::observe::record_request(total, upstream.is_some());
            let line = started.map(|mut started| {
                started.fields.add_response(
                    cache_status(response.headers()),
                    response
                        .extensions()
                        .get::<RequestId>()
                        .map(|RequestId(id)| id.as_bytes()),
                );
                started.outcome.status = response.status().as_u16();
                started.outcome.upstream = upstream;
                started
            });
            response.map(|inner| WatchedBody::new(inner, LineInWaiting(line)))
        }))
    }
}

/// A response body that writes its request's line when it ends, or when it is
/// dropped unfinished, with the bytes it gave.
pub type LoggedBody<B> = WatchedBody<B, LineInWaiting>;

/// A request's line, written when its response body ends or is dropped.
#[derive(Debug)]
pub struct LineInWaiting(Option<Box<Started>>);

impl<D: bytes::Buf> BodyWatcher<D> for LineInWaiting {
    fn polled<E>(&mut self, polled: &Poll<Option<Result<http_body::Frame<D>, E>>>) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(started), Some(data)) = (self.0.as_mut(), frame.data_ref()) {
                    started.outcome.bytes += data.remaining() as u64;
                }
            }
            // Ended: written now rather than when hyper drops the body.
            Poll::Ready(None) => {
                if let Some(started) = self.0.take() {
                    started.write_and_keep();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
    }
}

impl Drop for LineInWaiting {
    fn drop(&mut self) {
        if let Some(started) = self.0.take() {
            started.write_and_keep();
        }
    }
}

/// What a request came to, as its line tells it.
#[derive(Debug)]
struct Outcome {
    status: u16,
    /// Body bytes given to hyper so far.
    bytes: u64,
    upstream: Option<Duration>,
}

impl Outcome {
    /// No response yet: the client went away, if nothing else comes.
    const ABANDONED: Self = Self {
        status: CLIENT_CLOSED_REQUEST,
        bytes: 0,
        upstream: None,
    };
}

/// A request's target, user agent and id (when the client sent a usable one),
/// then its response's `Cache-Status` and the id the upstream was sent, copied
/// into one buffer. Copied rather than cloned: a clone of a request's bytes
/// shares hyper's read buffer, which hyper must then replace rather than reuse
/// for the connection's next request, and the last clone's drop frees it.
#[derive(Debug, Default)]
struct Fields {
    bytes: Vec<u8>,
    target: usize,
    user_agent: Option<usize>,
    id: Option<usize>,
    cache_status: Option<usize>,
    forwarded_id: Option<usize>,
}

/// Room kept for the response's fields: a `Cache-Status` of the cache's (up to
/// about 60 bytes) and an id of 16.
const RESPONSE_ROOM: usize = 80;

impl Fields {
    /// Holds a new request's fields, in place of the last one's.
    fn fill(&mut self, target: &[u8], user_agent: Option<&[u8]>, id: Option<&[u8]>) {
        let len = |s: Option<&[u8]>| s.map_or(0, <[u8]>::len);
        self.bytes.clear();
        self.bytes
            .reserve(target.len() + len(user_agent) + len(id) + RESPONSE_ROOM);
        self.bytes.extend_from_slice(target);
        self.bytes.extend_from_slice(user_agent.unwrap_or_default());
        self.bytes.extend_from_slice(id.unwrap_or_default());
        self.target = target.len();
        self.user_agent = user_agent.map(<[u8]>::len);
        self.id = id.map(<[u8]>::len);
        self.cache_status = None;
        self.forwarded_id = None;
    }

    /// Adds the response's `Cache-Status`, and the id its request was forwarded
    /// with when the client sent none.
    fn add_response(&mut self, cache_status: Option<&[u8]>, forwarded_id: Option<&[u8]>) {
        if let Some(value) = cache_status {
            self.bytes.extend_from_slice(value);
            self.cache_status = Some(value.len());
        }
        if let Some(id) = forwarded_id.filter(|_| self.id.is_none()) {
            self.bytes.extend_from_slice(id);
            self.forwarded_id = Some(id.len());
        }
    }

    /// The piece of `len` bytes, if any, after `before` bytes of earlier pieces.
    fn piece(&self, before: usize, len: Option<usize>) -> Option<&[u8]> {
        len.map(|len| &self.bytes[before..before + len])
    }

    fn target(&self) -> &[u8] {
        &self.bytes[..self.target]
    }

    fn user_agent(&self) -> Option<&[u8]> {
        self.piece(self.target, self.user_agent)
    }

    /// The client's id, or the one the upstream was sent.
    fn id(&self) -> Option<&[u8]> {
        let client = self.target + self.user_agent.unwrap_or(0);
        let forwarded = client + self.id.unwrap_or(0) + self.cache_status.unwrap_or(0);
        self.piece(client, self.id)
            .or_else(|| self.piece(forwarded, self.forwarded_id))
    }

    fn cache_status(&self) -> Option<&[u8]> {
        let before = self.target + self.user_agent.unwrap_or(0) + self.id.unwrap_or(0);
        self.piece(before, self.cache_status)
    }
}

impl AccessLogger {
    /// Appends the line of a request whose head was refused before any layer
    /// saw it (by hyper, or by the header timeout), with the `status` it was
    /// answered or closed with: its request line and its times are unknown, and
    /// written as such (`-`, or `null` in JSON).
    pub fn unserved(self, client: IpAddr, status: http::StatusCode) {
        self.append(&Line {
            time: self.micros(quanta::Instant::now()),
            status: status.as_u16(),
            request: None,
            bytes: Some(0),
            upstream: None,
            total: None,
            client: Some(client),
            cache_status: None,
            id: Id::Made(new_id()),
            user_agent: None,
        });
    }
}

impl Started {
    /// Appends this request's line to the log, and keeps its box for this
    /// thread's next request.
    fn write_and_keep(self: Box<Self>) {
        self.write();
        keep_spare(self);
    }

    /// Appends this request's line to the log.
    fn write(&self) {
        let outcome = &self.outcome;
        let line = Line {
            time: self.logger.micros(self.at),
            status: outcome.status,
            request: Some(RequestLine {
                method: self.method.as_str().as_bytes(),
                target: self.fields.target(),
                version: self.version,
            }),
            bytes: Some(outcome.bytes),
            upstream: outcome.upstream,
            total: Some(self.at.elapsed()),
            client: self.peer,
            cache_status: self.fields.cache_status(),
            id: self
                .fields
                .id()
                .map_or_else(|| Id::Made(new_id()), Id::Text),
            user_agent: self.fields.user_agent(),
        };
        self.logger.append(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_request_id_is_kept_and_others_replaced() {
        let kept = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&kept)), kept);
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        for unusable in [None, Some(&long), Some(&HeaderValue::from_static(""))] {
            let made = request_id(unusable);
            assert_eq!(made.len(), 16);
            assert_ne!(request_id(unusable), made, "each request its own");
        }
    }

    #[test]
    fn the_user_agent_and_id_are_found_in_few_fields_and_in_many() {
        for others in [0, FEW_FIELDS + 1] {
            let mut headers = HeaderMap::new();
            for i in 0..others {
                let name = HeaderName::from_bytes(format!("x-other-{i}").as_bytes()).unwrap();
                headers.insert(name, HeaderValue::from_static("v"));
            }
            headers.append(USER_AGENT, HeaderValue::from_static("first"));
            headers.append(USER_AGENT, HeaderValue::from_static("second"));
            headers.insert(&X_REQUEST_ID, HeaderValue::from_static("id-1"));
            assert_eq!(
                agent_and_id(&headers),
                (Some(&b"first"[..]), Some(&b"id-1"[..])),
                "{others} other fields"
            );
            headers.insert(&X_REQUEST_ID, HeaderValue::from_static("not usable"));
            assert_eq!(agent_and_id(&headers).1, None, "{others} other fields");
        }
    }

    /// A line's buffer, filled for a new request, keeps nothing of the last.
    #[test]
    fn fields_filled_again_keep_nothing_of_the_last_request() {
        let mut fields = Fields::default();
        fields.fill(b"/first", Some(b"agent/1"), Some(b"id-1"));
        fields.add_response(Some(b"revalidate; hit"), None);
        assert_eq!(fields.user_agent(), Some(&b"agent/1"[..]));
        assert_eq!(fields.id(), Some(&b"id-1"[..]));
        fields.fill(b"/second", None, None);
        assert_eq!(
            (
                fields.target(),
                fields.user_agent(),
                fields.id(),
                fields.cache_status()
            ),
            (&b"/second"[..], None, None, None)
        );
        fields.add_response(None, Some(b"0123456789abcdef"));
        assert_eq!(
            fields.id(),
            Some(&b"0123456789abcdef"[..]),
            "the forwarded id"
        );
        assert_eq!(fields.cache_status(), None);
    }

    #[test]
    fn cache_status_is_found_wherever_it_is() {
        let status = HeaderValue::from_static("revalidate; hit");
        let mut first = HeaderMap::new();
        first.insert(&CACHE_STATUS, status.clone());
        first.insert(USER_AGENT, HeaderValue::from_static("x"));
        let mut last = HeaderMap::new();
        for name in ["a", "b", "c"] {
            last.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        last.insert(&CACHE_STATUS, status);
        for headers in [&first, &last] {
            assert_eq!(cache_status(headers), Some(&b"revalidate; hit"[..]));
        }
        assert_eq!(cache_status(&HeaderMap::new()), None);
    }
}
