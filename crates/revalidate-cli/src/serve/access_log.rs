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
//! With or without a log, the layer times every request (head to response head)
//! into `revalidate_request_duration_seconds` ([`super::observe`]): it is the
//! outermost layer, the one place every request passes through.
//!
//! ```text
//! 127.0.0.1 "GET /users/1?fields=name HTTP/1.1" 200 48 "revalidate; hit; ttl=29" upstream=- total=0.000041 id=5f3a9c0e00000001 ua="curl/8.5.0"
//! ```

use std::borrow::Cow;
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
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("format", &self.shared.format)
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
#[derive(Debug)]
struct Batches {
    all: Mutex<Vec<Batch>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    format: LogFormat,
}

impl Batches {
    /// Moves every batch's records to `sink`, formatted.
    fn drain(&self, sink: &mut impl std::io::Write, spare: &mut Vec<u8>, line: &mut String) {
        let all: Vec<Batch> = lock(&self.all).clone();
        for batch in all {
            std::mem::swap(&mut *lock(&batch), spare);
            let mut records = &spare[..];
            while let Some(record) = Record::read(&mut records) {
                line.clear();
                record.line().write(self.format, line);
                line.push('\n');
                let _ = sink.write_all(line.as_bytes());
            }
            spare.clear();
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
        let shared = Arc::new(Batches {
            all: Mutex::default(),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            format,
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("revalidate-access-log".into())
            .spawn(move || {
                let mut sink = std::io::BufWriter::with_capacity(64 * 1024, sink);
                let (mut spare, mut line) = (Vec::new(), String::with_capacity(256));
                while !writer.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    writer.drain(&mut sink, &mut spare, &mut line);
                }
                writer.drain(&mut sink, &mut spare, &mut line);
            })
            .ok();
        let guard = FlushOnDrop {
            shared: Some(shared.clone()),
            thread,
        };
        (Self { shared }, guard)
    }

    /// Lines dropped because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Appends a record, which `write` puts in this thread's batch.
    fn append(&self, record: &Record<'_>) {
        thread_local! {
            static MINE: RefCell<Option<(usize, Batch)>> = const { RefCell::new(None) };
        }
        // Several loggers may live in one process (tests): a thread's batch
        // belongs to the logger that made it.
        let owner = Arc::as_ptr(&self.shared) as usize;
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            if mine.as_ref().is_none_or(|(who, _)| *who != owner) {
                let batch = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
                lock(&self.shared.all).push(batch.clone());
                *mine = Some((owner, batch));
            }
            let Some((_, batch)) = &*mine else { return };
            let mut batch = lock(batch);
            if batch.len() + record.len() > MAX_BATCH_BYTES {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                record.write(&mut batch);
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
        // Taken with or without a log: every request's time is counted.
        let at = Instant::now();
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
            }
        });
        AccessLogFuture {
            inner: self.inner.call(request),
            at,
            started,
        }
    }
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
    HeaderValue::from_bytes(&new_id()).unwrap_or(HeaderValue::from_static("-"))
}

/// A new request id: this thread's random prefix and its count, in hex.
fn new_id() -> [u8; 16] {
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
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`].
    #[derive(Debug)]
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        at: Instant,
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
        if let Ok(response) = &result {
            let total = this.at.elapsed();
            let upstream = response.extensions().get::<UpstreamTime>().map(|t| t.0);
            super::observe::record_request(total, upstream.is_some());
            if let Some(started) = this.started.take() {
                started.write(response, total, upstream);
            }
        }
        Poll::Ready(result)
    }
}

impl Started {
    /// Queues this request's record. The line is formatted by the writer
    /// thread: a worker only copies the fields' bytes.
    fn write<B: Body>(self, response: &Response<B>, total: Duration, upstream: Option<Duration>) {
        let id_made;
        let id: &[u8] = match &self.id {
            Some(id) => id.as_bytes(),
            None => match response.extensions().get::<RequestId>() {
                Some(RequestId(forwarded)) => forwarded.as_bytes(),
                None => {
                    id_made = new_id();
                    &id_made
                }
            },
        };
        let record = Record {
            status: response.status().as_u16(),
            version: self.version,
            bytes: response.body().size_hint().exact(),
            upstream,
            total,
            client: self.peer.as_deref().map(str::as_bytes),
            method: self.method.as_str().as_bytes(),
            target: self
                .target
                .path_and_query()
                .map_or(&b"/"[..], |pq| pq.as_str().as_bytes()),
            cache_status: response
                .headers()
                .get("cache-status")
                .map(HeaderValue::as_bytes),
            id,
            user_agent: self.user_agent.as_ref().map(HeaderValue::as_bytes),
        };
        self.logger.append(&record);
    }
}

/// A request's fields as a worker queues them: numbers, then byte strings, each
/// with its length (`u16::MAX`: absent).
struct Record<'a> {
    status: u16,
    version: http::Version,
    bytes: Option<u64>,
    upstream: Option<Duration>,
    total: Duration,
    client: Option<&'a [u8]>,
    method: &'a [u8],
    target: &'a [u8],
    cache_status: Option<&'a [u8]>,
    id: &'a [u8],
    user_agent: Option<&'a [u8]>,
}

const ABSENT: u16 = u16::MAX;
const NUMBERS: usize = 2 + 1 + 8 * 3;

impl<'a> Record<'a> {
    fn strings(&self) -> [Option<&'a [u8]>; 6] {
        [
            self.client,
            Some(self.method),
            Some(self.target),
            self.cache_status,
            Some(self.id),
            self.user_agent,
        ]
    }

    fn len(&self) -> usize {
        NUMBERS
            + self
                .strings()
                .iter()
                .map(|s| 2 + s.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }

    fn write(&self, out: &mut Vec<u8>) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.push(match self.version {
            http::Version::HTTP_09 => 9,
            http::Version::HTTP_10 => 10,
            http::Version::HTTP_2 => 20,
            http::Version::HTTP_3 => 30,
            _ => 11,
        });
        out.extend_from_slice(&self.bytes.unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(&self.upstream.map_or(u64::MAX, micros).to_le_bytes());
        out.extend_from_slice(&micros(self.total).to_le_bytes());
        for string in self.strings() {
            match string {
                // Longer fields are cut: a line stays a line.
                Some(bytes) => {
                    let bytes = &bytes[..bytes.len().min(usize::from(ABSENT) - 1)];
                    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&ABSENT.to_le_bytes()),
            }
        }
    }

    /// The next record of `input`, which it advances past it.
    fn read(input: &mut &'a [u8]) -> Option<Self> {
        fn take<'b>(input: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
            let (head, rest) = (input.get(..n)?, input.get(n..)?);
            *input = rest;
            Some(head)
        }
        fn number(input: &mut &[u8]) -> Option<u64> {
            Some(u64::from_le_bytes(take(input, 8)?.try_into().ok()?))
        }
        fn string<'b>(input: &mut &'b [u8]) -> Option<Option<&'b [u8]>> {
            let len = u16::from_le_bytes(take(input, 2)?.try_into().ok()?);
            if len == ABSENT {
                return Some(None);
            }
            take(input, usize::from(len)).map(Some)
        }
        let status = u16::from_le_bytes(take(input, 2)?.try_into().ok()?);
        let version = match take(input, 1)?[0] {
            9 => http::Version::HTTP_09,
            10 => http::Version::HTTP_10,
            20 => http::Version::HTTP_2,
            30 => http::Version::HTTP_3,
            _ => http::Version::HTTP_11,
        };
        let present = |n: u64| (n != u64::MAX).then_some(n);
        let bytes = present(number(input)?);
        let upstream = present(number(input)?).map(Duration::from_micros);
        let total = Duration::from_micros(number(input)?);
        Some(Self {
            status,
            version,
            bytes,
            upstream,
            total,
            client: string(input)?,
            method: string(input)?.unwrap_or_default(),
            target: string(input)?.unwrap_or_default(),
            cache_status: string(input)?,
            id: string(input)?.unwrap_or_default(),
            user_agent: string(input)?,
        })
    }

    /// The record as a line's fields (bytes that are not UTF-8 replaced).
    fn line(&self) -> Line<'a> {
        let text = |b: &'a [u8]| String::from_utf8_lossy(b);
        Line {
            client: self.client.map(text),
            method: text(self.method),
            target: text(self.target),
            version: self.version,
            status: self.status,
            bytes: self.bytes,
            cache_status: self.cache_status.map(text),
            upstream: self.upstream,
            total: self.total,
            id: text(self.id),
            user_agent: self.user_agent.map(text),
        }
    }
}

/// One access line's fields.
struct Line<'a> {
    client: Option<Cow<'a, str>>,
    method: Cow<'a, str>,
    target: Cow<'a, str>,
    version: http::Version,
    status: u16,
    bytes: Option<u64>,
    cache_status: Option<Cow<'a, str>>,
    upstream: Option<Duration>,
    total: Duration,
    id: Cow<'a, str>,
    user_agent: Option<Cow<'a, str>>,
}

impl Line<'_> {
    fn write(&self, format: LogFormat, out: &mut String) {
        match format {
            LogFormat::Text => self.text(out),
            LogFormat::Json => self.json(out),
        }
    }

    /// Written piece by piece, numbers with `itoa`: `write!` costs several
    /// times more, on every request.
    fn text(&self, out: &mut String) {
        let mut numbers = itoa::Buffer::new();
        out.push_str(self.client.as_deref().unwrap_or("-"));
        out.push_str(" \"");
        out.push_str(&self.method);
        out.push(' ');
        escape_into(out, &self.target);
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
        escape_into(out, self.cache_status.as_deref().unwrap_or("-"));
        out.push_str("\" upstream=");
        match self.upstream {
            Some(upstream) => seconds(out, upstream),
            None => out.push('-'),
        }
        out.push_str(" total=");
        seconds(out, self.total);
        out.push_str(" id=");
        escape_into(out, &self.id);
        out.push_str(" ua=\"");
        escape_into(out, self.user_agent.as_deref().unwrap_or("-"));
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

/// `value` with `"`, `\\` and control characters escaped, so that a line is
/// always one line and its quoted fields always end where they should.
fn escape_into(out: &mut String, value: &str) {
    let plain = |b: u8| b != b'"' && b != b'\\' && !b.is_ascii_control() && b < 0x80;
    if value.bytes().all(plain) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
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
    fn a_record_reads_back_as_written() {
        let record = Record {
            status: 304,
            version: http::Version::HTTP_2,
            bytes: None,
            upstream: Some(Duration::from_micros(1_234)),
            total: Duration::from_micros(5_678),
            client: Some(b"10.0.0.1"),
            method: b"GET",
            target: b"/a?b=c",
            cache_status: None,
            id: b"abc",
            user_agent: Some(b"\xffua"),
        };
        let mut batch = Vec::new();
        record.write(&mut batch);
        record.write(&mut batch);
        assert_eq!(batch.len(), 2 * record.len());
        let mut input = &batch[..];
        for _ in 0..2 {
            let read = Record::read(&mut input).expect("a record");
            assert_eq!(
                (read.status, read.version, read.bytes),
                (304, http::Version::HTTP_2, None)
            );
            assert_eq!((read.upstream, read.total), (record.upstream, record.total));
            assert_eq!(
                (read.client, read.target, read.cache_status),
                (record.client, record.target, None)
            );
            let mut line = String::new();
            read.line().write(LogFormat::Text, &mut line);
            assert_eq!(
                line,
                "10.0.0.1 \"GET /a?b=c HTTP/2.0\" 304 - \"-\" upstream=0.001234 total=0.005678 id=abc ua=\"\u{fffd}ua\""
            );
        }
        assert!(Record::read(&mut input).is_none(), "nothing left");
    }

    #[test]
    fn quoted_fields_cannot_break_a_line() {
        let mut out = String::new();
        let line = Line {
            client: None,
            method: "GET".into(),
            target: "/a\"b\nc".into(),
            version: http::Version::HTTP_11,
            status: 200,
            bytes: Some(5),
            cache_status: Some("revalidate; hit".into()),
            upstream: None,
            total: Duration::from_micros(41),
            id: "i".into(),
            user_agent: Some("ua\"x".into()),
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
