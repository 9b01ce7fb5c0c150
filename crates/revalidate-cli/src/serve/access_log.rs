//! The access log: one line per request, in text or JSON, written off the
//! request path.
//!
//! Each line has the client's address, the method, path and query, the status,
//! the body bytes, `Cache-Status`, the upstream's time (when the upstream was
//! asked), the total time, the request id and the user agent. The request id is
//! the client's `X-Request-Id` when it sent a usable one, otherwise one made here;
//! the upstream receives it on every request forwarded to it.
//!
//! Lines are batched per worker thread and written by a thread of their own
//! every 50 ms: a slow disk or terminal never blocks a worker, and lines that do
//! not fit are dropped and counted ([`AccessLogger::dropped`]) instead.
//!
//! ```text
//! 127.0.0.1 "GET /users/1?fields=name HTTP/1.1" 200 48 "revalidate; hit; ttl=29" upstream=- total=0.000041 id=5f3a9c0e00000001 ua="curl/8.5.0"
//! ```

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::USER_AGENT;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tower::{Layer, Service};

/// The request id's field.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// Where access lines go, and how they are written. Cheap to clone.
///
/// Each worker thread appends its lines to a batch of its own (a lock no other
/// thread takes but the writer, every [`FLUSH_EVERY`]); a writer thread moves
/// the batches to the sink. Written here rather than with
/// `tracing_appender::non_blocking`, whose channel hands each line to the writer
/// thread and wakes it: measured, a fifth of a hit's cost at 150,000 lines a
/// second, where batches cost a few percent.
#[derive(Clone)]
pub struct AccessLogger {
    shared: Arc<Batches>,
    format: LogFormat,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// How often the writer thread moves the batches to the sink.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The most a thread's batch holds before new lines are dropped (and counted):
/// a sink slower than the traffic loses lines, it never stalls a worker.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One thread's lines, waiting for the writer thread.
type Batch = Arc<Mutex<Vec<u8>>>;

/// The batches of every thread that wrote a line, and what was dropped.
#[derive(Debug, Default)]
struct Batches {
    all: Mutex<Vec<Batch>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Batches {
    /// Moves every batch's lines to `sink`.
    fn drain(&self, sink: &mut impl std::io::Write, spare: &mut Vec<u8>) {
        let all: Vec<Batch> = lock(&self.all).clone();
        for batch in all {
            std::mem::swap(&mut *lock(&batch), spare);
            if !spare.is_empty() {
                let _ = sink.write_all(spare);
                spare.clear();
            }
        }
        let _ = sink.flush();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes what is left when dropped, and stops the writer thread.
#[derive(Debug)]
pub struct FlushOnDrop {
    shared: Option<Arc<Batches>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.stop.store(true, Ordering::Release);
        }
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl AccessLogger {
    /// A logger writing to `sink` from a thread of its own; keep the guard for as
    /// long as lines may be written (dropping it writes the last ones).
    pub fn new<W: std::io::Write + Send + 'static>(
        sink: W,
        format: LogFormat,
    ) -> (Self, FlushOnDrop) {
        let shared = Arc::new(Batches::default());
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("revalidate-access-log".into())
            .spawn(move || {
                let mut sink = std::io::BufWriter::with_capacity(64 * 1024, sink);
                let mut spare = Vec::new();
                while !writer.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    writer.drain(&mut sink, &mut spare);
                }
                writer.drain(&mut sink, &mut spare);
            })
            .ok();
        let guard = FlushOnDrop {
            shared: Some(shared.clone()),
            thread,
        };
        (Self { shared, format }, guard)
    }

    /// Lines dropped because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Appends `line` to this thread's batch.
    fn append(&self, line: &str) {
        thread_local! {
            static MINE: RefCell<Option<(usize, Batch)>> = const { RefCell::new(None) };
        }
        // Several loggers may live in one process (tests): a thread's batch
        // belongs to the logger that made it.
        let owner = Arc::as_ptr(&self.shared) as usize;
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            let batch = match &*mine {
                Some((who, batch)) if *who == owner => batch.clone(),
                _ => {
                    let batch = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
                    lock(&self.shared.all).push(batch.clone());
                    *mine = Some((owner, batch.clone()));
                    batch
                }
            };
            let mut batch = lock(&batch);
            if batch.len() + line.len() > MAX_BATCH_BYTES {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                batch.extend_from_slice(line.as_bytes());
            }
        });
    }
}

/// Applies [`AccessLog`]; without a logger, the layer passes requests through.
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer {
    logger: Option<AccessLogger>,
    /// The connection's client address, written once.
    peer: Option<Arc<str>>,
}

impl AccessLogLayer {
    /// Lines to `logger`, or none.
    pub fn new(logger: Option<AccessLogger>) -> Self {
        Self { logger, peer: None }
    }

    /// The same, for the connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            logger: self.logger.clone(),
            peer: self
                .logger
                .as_ref()
                .map(|_| Arc::from(peer.ip().to_string())),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            logger: self.logger.clone(),
            peer: self.peer.clone(),
        }
    }
}

/// Logs each request's outcome; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    logger: Option<AccessLogger>,
    peer: Option<Arc<str>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = self.logger.as_ref().map(|logger| {
            // The client's id, if usable; otherwise the one the upstream client
            // gives a request it forwards, or (a hit) one made for the line.
            let id = request
                .headers()
                .get(&X_REQUEST_ID)
                .filter(|v| usable_id(v))
                .cloned();
            Started {
                logger: logger.clone(),
                peer: self.peer.clone(),
                method: request.method().clone(),
                // A clone shares the request's bytes.
                target: request.uri().clone(),
                version: request.version(),
                user_agent: request.headers().get(USER_AGENT).cloned(),
                id,
                at: Instant::now(),
            }
        });
        AccessLogFuture {
            inner: self.inner.call(request),
            started,
        }
    }
}

/// Whether a client's request id may be kept: visible ASCII, at most 128 bytes.
pub fn usable_id(value: &HeaderValue) -> bool {
    !value.is_empty() && value.len() <= 128 && value.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// The client's request id when it is a usable one, else a new one: this
/// thread's random prefix and its count.
pub fn request_id(sent: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = sent.filter(|v| usable_id(v)) {
        return value.clone();
    }
    thread_local! {
        static NEXT: Cell<(u32, u32)> = Cell::new((rand_prefix(), 0));
    }
    let (prefix, count) = NEXT.with(|next| {
        let (prefix, count) = next.get();
        next.set((prefix, count.wrapping_add(1)));
        (prefix, count)
    });
    let mut id = [0u8; 16];
    let digits = b"0123456789abcdef";
    let value = (u64::from(prefix) << 32) | u64::from(count);
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = digits[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// A prefix that tells this thread's ids from other threads' and processes'.
fn rand_prefix() -> u32 {
    use std::hash::BuildHasher;
    // The standard library's hasher keys are random per process.
    let hash = std::collections::hash_map::RandomState::new()
        .hash_one((std::thread::current().id(), std::process::id()));
    (hash >> 32) as u32
}

#[derive(Debug)]
struct Started {
    logger: AccessLogger,
    peer: Option<Arc<str>>,
    method: http::Method,
    target: http::Uri,
    version: http::Version,
    user_agent: Option<HeaderValue>,
    /// The client's id, when it sent a usable one.
    id: Option<HeaderValue>,
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
    B: Body,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(started), Ok(response)) = (this.started.take(), &result) {
            started.write(response);
        }
        Poll::Ready(result)
    }
}

impl Started {
    /// Formats the line into this thread's buffer and queues it.
    fn write<B: Body>(self, response: &Response<B>) {
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
        }
        let total = self.at.elapsed();
        let upstream = response.extensions().get::<UpstreamTime>().map(|t| t.0);
        let bytes = response.body().size_hint().exact();
        let cache_status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok());
        let user_agent = self.user_agent.as_ref().and_then(|v| v.to_str().ok());
        let id = match &self.id {
            Some(id) => id.clone(),
            None => match response.extensions().get::<RequestId>() {
                Some(RequestId(forwarded)) => forwarded.clone(),
                None => request_id(None),
            },
        };
        let id = id.to_str().unwrap_or("-");
        let line = Line {
            client: self.peer.as_deref(),
            method: self.method.as_str(),
            target: self.target.path_and_query().map_or("/", |pq| pq.as_str()),
            version: self.version,
            status: response.status().as_u16(),
            bytes,
            cache_status,
            upstream,
            total,
            id,
            user_agent,
        };
        LINE.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            match self.logger.format {
                LogFormat::Text => line.text(&mut buffer),
                LogFormat::Json => line.json(&mut buffer),
            }
            buffer.push('\n');
            self.logger.append(&buffer);
        });
    }
}

/// One access line's fields.
struct Line<'a> {
    client: Option<&'a str>,
    method: &'a str,
    target: &'a str,
    version: http::Version,
    status: u16,
    bytes: Option<u64>,
    cache_status: Option<&'a str>,
    upstream: Option<Duration>,
    total: Duration,
    id: &'a str,
    user_agent: Option<&'a str>,
}

impl Line<'_> {
    /// Written piece by piece, numbers with `itoa`: `write!` costs several
    /// times more, on every request.
    fn text(&self, out: &mut String) {
        let mut numbers = itoa::Buffer::new();
        out.push_str(self.client.unwrap_or("-"));
        out.push_str(" \"");
        out.push_str(self.method);
        out.push(' ');
        escape_into(out, self.target);
        out.push(' ');
        out.push_str(version_str(self.version));
        out.push_str("\" ");
        out.push_str(numbers.format(self.status));
        out.push(' ');
        match self.bytes {
            Some(bytes) => out.push_str(numbers.format(bytes)),
            None => out.push('-'),
        }
        out.push_str(" \"");
        escape_into(out, self.cache_status.unwrap_or("-"));
        out.push_str("\" upstream=");
        match self.upstream {
            Some(upstream) => seconds(out, upstream),
            None => out.push('-'),
        }
        out.push_str(" total=");
        seconds(out, self.total);
        out.push_str(" id=");
        escape_into(out, self.id);
        out.push_str(" ua=\"");
        escape_into(out, self.user_agent.unwrap_or("-"));
        out.push('"');
    }

    fn json(&self, out: &mut String) {
        let value = serde_json::json!({
            "client": self.client,
            "method": self.method,
            "target": self.target,
            "version": version_str(self.version),
            "status": self.status,
            "bytes": self.bytes,
            "cache_status": self.cache_status,
            "upstream_seconds": self.upstream.map(|d| d.as_secs_f64()),
            "total_seconds": self.total.as_secs_f64(),
            "request_id": self.id,
            "user_agent": self.user_agent,
        });
        let _ = write!(out, "{value}");
    }
}

/// `duration` in seconds with six decimals, formatted as integers (a float's
/// formatting costs several times more, on every request).
fn seconds(out: &mut String, duration: Duration) {
    let micros = duration.as_micros();
    let mut numbers = itoa::Buffer::new();
    out.push_str(numbers.format(micros / 1_000_000));
    out.push('.');
    let fraction = numbers.format(micros % 1_000_000);
    for _ in fraction.len()..6 {
        out.push('0');
    }
    out.push_str(fraction);
}

/// The protocol as a request line names it.
fn version_str(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `value` with `"`, `\\` and control characters escaped (see [`Escaped`]).
fn escape_into(out: &mut String, value: &str) {
    let plain = |b: u8| b != b'"' && b != b'\\' && !b.is_ascii_control() && b < 0x80;
    if value.bytes().all(plain) {
        out.push_str(value);
    } else {
        let _ = write!(out, "{}", Escaped(value));
    }
}

/// A field value with `"`, `\` and control characters escaped, so that a line
/// is always one line and its quoted fields always end where they should.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |b: u8| b != b'"' && b != b'\\' && !b.is_ascii_control() && b < 0x80;
        if self.0.bytes().all(plain) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
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
    fn quoted_fields_cannot_break_a_line() {
        let mut out = String::new();
        let line = Line {
            client: None,
            method: "GET",
            target: "/a\"b\nc",
            version: http::Version::HTTP_11,
            status: 200,
            bytes: Some(5),
            cache_status: Some("revalidate; hit"),
            upstream: None,
            total: Duration::from_micros(41),
            id: "i",
            user_agent: Some("ua\"x"),
        };
        line.text(&mut out);
        assert_eq!(
            out,
            "- \"GET /a\\\"b\\x0ac HTTP/1.1\" 200 5 \"revalidate; hit\" upstream=- total=0.000041 id=i ua=\"ua\\\"x\""
        );
        out.clear();
        line.json(&mut out);
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["target"], "/a\"b\nc");
        assert_eq!(parsed["status"], 200);
    }
}
