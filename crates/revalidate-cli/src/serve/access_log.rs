//! The access log: one line per request, in text or JSON, written off the
//! request path.
//!
//! Each line has the client's address, the time the request's head was read (UTC,
//! to the millisecond), the method, path and query, the status,
//! the body bytes, `Cache-Status`, the upstream's time (when the upstream was
//! asked), the total time, the request id and the user agent. The request id is
//! the client's `X-Request-Id` when it sent a usable one, otherwise one made here;
//! the upstream receives it on every request forwarded to it.
//!
//! Lines are batched per worker thread and written by a thread of their own
//! every 10 ms: a slow disk or terminal never blocks a worker, and lines that do
//! not fit are dropped and counted ([`AccessLogger::dropped`]) instead.
//!
//! With or without a log, the layer times every request (head to response head)
//! into `revalidate_request_duration_seconds` ([`super::observe`]): it is the
//! outermost layer, the one place every request passes through.
//!
//! ```text
//! 127.0.0.1 [2026-12-03T08:17:42.123Z] "GET /users/1?fields=name HTTP/1.1" 200 48 "revalidate; hit; ttl=29" upstream=- total=0.000041 id=5f3a9c0e00000001 ua="curl/8.5.0"
//! ```

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::USER_AGENT;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tower::{Layer, Service};

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

/// Where access lines go, and how they are written. Copied freely: it is a
/// reference to state that lives as long as the process.
///
/// Each worker thread appends its records to a batch of its own (a lock no other
/// thread takes but the writer, every [`FLUSH_EVERY`]); a writer thread formats
/// the batches' records and moves the lines to the sink. Written here rather than
/// with `tracing_appender::non_blocking`, whose channel hands each line to the
/// writer thread and wakes it: measured, a fifth of a hit's cost at 150,000 lines
/// a second, where batches of compact records cost a few percent.
#[derive(Clone, Copy)]
pub struct AccessLogger {
    /// Leaked once per logger (one per process, a few in tests), so that a
    /// request holds it without touching a reference count that every core shares.
    shared: &'static Batches,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("format", &self.shared.format)
            .finish_non_exhaustive()
    }
}

/// How often the writer thread moves the batches to the sink. Often, so that
/// each turn is short: on a core the workers share with it, the requests wait
/// while it formats, and a turn of several milliseconds (a twentieth of a second
/// of lines at 100,000 a second) shows in the latency tail.
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// The most a thread's batch holds before new lines are dropped (and counted):
/// a sink slower than the traffic loses lines, it never stalls a worker.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One thread's records, waiting for the writer thread.
type Batch = Arc<Mutex<Vec<u8>>>;

/// The batches of every thread that wrote a line, and what was dropped.
#[derive(Debug)]
struct Batches {
    all: Mutex<Vec<Batch>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    format: LogFormat,
    clock: Anchor,
}

/// The wall clock as the TSC (quanta) tells it: a worker turns the instant it
/// already took into a time with a subtraction, where asking the system for the
/// time costs a call on every request. The writer corrects what the two clocks
/// drift apart (NTP, a clock set by hand) when it formats a batch.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    wall: u64,
    instant: quanta::Instant,
}

impl Anchor {
    fn now() -> Self {
        Self {
            wall: micros_since_epoch(std::time::SystemTime::now()),
            instant: quanta::Instant::now(),
        }
    }

    /// `at`, in microseconds since the Unix epoch, as this anchor tells it.
    fn micros(&self, at: quanta::Instant) -> u64 {
        let since = at.saturating_duration_since(self.instant);
        self.wall
            .saturating_add(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// How far the wall clock is now ahead of what this anchor tells.
    fn drift(&self) -> i64 {
        let told = self.micros(quanta::Instant::now());
        let wall = micros_since_epoch(std::time::SystemTime::now());
        i64::try_from(i128::from(wall) - i128::from(told)).unwrap_or(0)
    }
}

fn micros_since_epoch(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Batches {
    /// Moves every batch's records to `sink`, formatted.
    fn drain(
        &self,
        sink: &mut impl std::io::Write,
        spare: &mut Vec<u8>,
        lines: &mut Vec<u8>,
        time: &mut TimeText,
    ) {
        time.drift = self.clock.drift();
        let all: Vec<Batch> = lock(&self.all).clone();
        for batch in all {
            std::mem::swap(&mut *lock(&batch), spare);
            let mut records = &spare[..];
            while let Some(record) = Record::read(&mut records) {
                record.format(self.format, time, lines);
                lines.push(b'\n');
            }
            spare.clear();
            let _ = sink.write_all(lines);
            lines.clear();
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
    shared: Option<&'static Batches>,
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
        let shared: &'static Batches = Box::leak(Box::new(Batches {
            all: Mutex::default(),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            format,
            clock: Anchor::now(),
        }));
        let thread = std::thread::Builder::new()
            .name("revalidate-access-log".into())
            .spawn(move || {
                let mut sink = std::io::BufWriter::with_capacity(64 * 1024, sink);
                let (mut spare, mut lines) = (Vec::new(), Vec::with_capacity(64 * 1024));
                let mut time = TimeText::default();
                while !shared.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    shared.drain(&mut sink, &mut spare, &mut lines, &mut time);
                }
                shared.drain(&mut sink, &mut spare, &mut lines, &mut time);
            })
            .ok();
        let guard = FlushOnDrop {
            shared: Some(shared),
            thread,
        };
        (Self { shared }, guard)
    }

    /// Lines dropped because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Appends a record to this thread's batch.
    fn append(self, record: &Record<'_>) {
        thread_local! {
            static MINE: RefCell<Option<(usize, Batch)>> = const { RefCell::new(None) };
        }
        // Several loggers may live in one process (tests): a thread's batch
        // belongs to the logger that made it.
        let owner = std::ptr::from_ref(self.shared) as usize;
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
    type Response = S::Response;
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
            Started {
                logger,
                peer: self.peer,
                method: request.method().clone(),
                fields: Fields::copy(target, user_agent, id),
                version: request.version(),
            }
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

#[derive(Debug)]
struct Started {
    logger: AccessLogger,
    peer: Option<IpAddr>,
    method: http::Method,
    fields: Fields,
    version: http::Version,
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`].
    #[derive(Debug)]
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        at: quanta::Instant,
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
                started.write(response, *this.at, total, upstream);
            }
        }
        Poll::Ready(result)
    }
}

/// A request's target, user agent and id (when the client sent a usable one),
/// copied. Copied rather than cloned: a clone of a request's bytes shares
/// hyper's read buffer, which hyper must then replace rather than reuse for the
/// connection's next request, and the last clone's drop frees it.
#[derive(Debug)]
struct Fields {
    bytes: Vec<u8>,
    target: usize,
    user_agent: Option<usize>,
    id: Option<usize>,
}

impl Fields {
    fn copy(target: &[u8], user_agent: Option<&[u8]>, id: Option<&[u8]>) -> Self {
        let len = |s: Option<&[u8]>| s.map_or(0, <[u8]>::len);
        let mut bytes = Vec::with_capacity(target.len() + len(user_agent) + len(id));
        bytes.extend_from_slice(target);
        bytes.extend_from_slice(user_agent.unwrap_or_default());
        bytes.extend_from_slice(id.unwrap_or_default());
        Self {
            bytes,
            target: target.len(),
            user_agent: user_agent.map(<[u8]>::len),
            id: id.map(<[u8]>::len),
        }
    }

    fn target(&self) -> &[u8] {
        &self.bytes[..self.target]
    }

    fn user_agent(&self) -> Option<&[u8]> {
        let start = self.target;
        self.user_agent.map(|len| &self.bytes[start..start + len])
    }

    fn id(&self) -> Option<&[u8]> {
        let start = self.target + self.user_agent.unwrap_or(0);
        self.id.map(|len| &self.bytes[start..start + len])
    }
}

impl Started {
    /// Queues this request's record. The line is formatted by the writer
    /// thread: a worker only copies the fields' bytes.
    fn write<B: Body>(
        self,
        response: &Response<B>,
        at: quanta::Instant,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let id = match self.fields.id() {
            Some(id) => Id::Text(id),
            None => match response.extensions().get::<RequestId>() {
                Some(RequestId(forwarded)) => Id::Text(forwarded.as_bytes()),
                None => Id::Made(new_id()),
            },
        };
        let record = Record {
            time: self.logger.shared.clock.micros(at),
            status: response.status().as_u16(),
            version: self.version,
            bytes: response.body().size_hint().exact(),
            upstream,
            total,
            client: self.peer,
            method: self.method.as_str().as_bytes(),
            target: self.fields.target(),
            cache_status: cache_status(response.headers()),
            id,
            user_agent: self.fields.user_agent(),
        };
        self.logger.append(&record);
    }
}

/// A request id as a record carries it: the client's or the upstream client's
/// text, or a number made here (formatted by the writer thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id<'a> {
    Text(&'a [u8]),
    Made(u64),
}

/// A request's fields as a worker queues them: numbers, the client's address,
/// then byte strings, each with its length (`u16::MAX`: absent).
#[derive(Debug)]
struct Record<'a> {
    /// When the request's head was read, in microseconds since the Unix epoch.
    time: u64,
    status: u16,
    version: http::Version,
    bytes: Option<u64>,
    upstream: Option<Duration>,
    total: Duration,
    client: Option<IpAddr>,
    method: &'a [u8],
    target: &'a [u8],
    cache_status: Option<&'a [u8]>,
    id: Id<'a>,
    user_agent: Option<&'a [u8]>,
}

const ABSENT: u16 = u16::MAX;
/// Status, version, three numbers, the client's tag and address, the id's tag
/// and number, the time.
const FIXED: usize = 2 + 1 + 8 * 3 + 1 + 16 + 1 + 8 + 8;

impl<'a> Record<'a> {
    fn strings(&self) -> [Option<&'a [u8]>; 5] {
        let id = match self.id {
            Id::Text(text) => Some(text),
            Id::Made(_) => None,
        };
        [
            Some(self.method),
            Some(self.target),
            self.cache_status,
            id,
            self.user_agent,
        ]
    }

    fn len(&self) -> usize {
        FIXED
            + self
                .strings()
                .iter()
                .map(|s| 2 + s.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }

    fn write(&self, out: &mut Vec<u8>) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        // The fixed part is laid out on the stack, at offsets known when compiled,
        // and appended in one copy.
        let mut fixed = [0u8; FIXED];
        fixed[0..2].copy_from_slice(&self.status.to_le_bytes());
        fixed[2] = match self.version {
            http::Version::HTTP_09 => 9,
            http::Version::HTTP_10 => 10,
            http::Version::HTTP_2 => 20,
            http::Version::HTTP_3 => 30,
            _ => 11,
        };
        fixed[3..11].copy_from_slice(&self.bytes.unwrap_or(u64::MAX).to_le_bytes());
        fixed[11..19].copy_from_slice(&self.upstream.map_or(u64::MAX, micros).to_le_bytes());
        fixed[19..27].copy_from_slice(&micros(self.total).to_le_bytes());
        let (tag, address) = match self.client {
            None => (0, [0; 16]),
            Some(IpAddr::V4(v4)) => (4, v4.to_ipv6_mapped().octets()),
            Some(IpAddr::V6(v6)) => (6, v6.octets()),
        };
        fixed[27] = tag;
        fixed[28..44].copy_from_slice(&address);
        let (tag, made) = match self.id {
            Id::Text(_) => (0, 0),
            Id::Made(made) => (1, made),
        };
        fixed[44] = tag;
        fixed[45..53].copy_from_slice(&made.to_le_bytes());
        fixed[53..61].copy_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&fixed);
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
        fn string<'b>(input: &mut &'b [u8]) -> Option<Option<&'b [u8]>> {
            let (len, rest) = input.split_first_chunk::<2>()?;
            let len = u16::from_le_bytes(*len);
            if len == ABSENT {
                *input = rest;
                return Some(None);
            }
            let (value, rest) = rest.split_at_checked(usize::from(len))?;
            *input = rest;
            Some(Some(value))
        }
        // The fixed part in one piece, read at the offsets `write` put it at.
        let (fixed, rest) = input.split_first_chunk::<FIXED>()?;
        *input = rest;
        let number = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&fixed[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let present = |n: u64| (n != u64::MAX).then_some(n);
        let version = match fixed[2] {
            9 => http::Version::HTTP_09,
            10 => http::Version::HTTP_10,
            20 => http::Version::HTTP_2,
            30 => http::Version::HTTP_3,
            _ => http::Version::HTTP_11,
        };
        let mut octets = [0; 16];
        octets.copy_from_slice(&fixed[28..44]);
        let v6 = std::net::Ipv6Addr::from(octets);
        let client = match fixed[27] {
            4 => v6.to_ipv4_mapped().map(IpAddr::V4),
            6 => Some(IpAddr::V6(v6)),
            _ => None,
        };
        let method = string(input)?.unwrap_or_default();
        let target = string(input)?.unwrap_or_default();
        let cache_status = string(input)?;
        let id = match (fixed[44], string(input)?) {
            (1, _) => Id::Made(number(45)),
            (_, text) => Id::Text(text.unwrap_or_default()),
        };
        Some(Self {
            time: number(53),
            status: u16::from_le_bytes([fixed[0], fixed[1]]),
            version,
            bytes: present(number(3)),
            upstream: present(number(11)).map(Duration::from_micros),
            total: Duration::from_micros(number(19)),
            client,
            method,
            target,
            cache_status,
            id,
            user_agent: string(input)?,
        })
    }

    /// Appends the line (without its end) in `format`.
    fn format(&self, format: LogFormat, time: &mut TimeText, out: &mut Vec<u8>) {
        match format {
            LogFormat::Text => self.text(time, out),
            LogFormat::Json => self.json(time, out),
        }
    }

    /// Written byte by byte, numbers with `itoa`: `write!` costs several times
    /// more, and the writer thread formats every request's line.
    fn text(&self, time: &mut TimeText, out: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        match self.client {
            Some(client) => push_ip(out, client),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" [");
        time.push(out, self.time);
        out.extend_from_slice(b"] \"");
        // A method is a token (`http::Method` holds no other): nothing to escape.
        out.extend_from_slice(self.method);
        out.push(b' ');
        escape_into(out, self.target);
        out.push(b' ');
        out.extend_from_slice(version_str(self.version).as_bytes());
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(numbers.format(self.status).as_bytes());
        out.push(b' ');
        match self.bytes {
            Some(bytes) => out.extend_from_slice(numbers.format(bytes).as_bytes()),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" \"");
        escape_into(out, self.cache_status.unwrap_or(b"-"));
        out.extend_from_slice(b"\" upstream=");
        match self.upstream {
            Some(upstream) => seconds(out, upstream),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" total=");
        seconds(out, self.total);
        out.extend_from_slice(b" id=");
        match self.id {
            Id::Text(text) => escape_into(out, text),
            Id::Made(made) => out.extend_from_slice(&hex_id(made)),
        }
        out.extend_from_slice(b" ua=\"");
        escape_into(out, self.user_agent.unwrap_or(b"-"));
        out.push(b'"');
    }

    /// Written field by field, as `text` is, with serde_json escaping the
    /// strings: building a `serde_json::Value` first costs ten times more per line.
    fn json(&self, time: &mut TimeText, out: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        time.push(out, self.time);
        out.extend_from_slice(b"\",\"client\":");
        match self.client {
            Some(client) => {
                out.push(b'"');
                push_ip(out, client);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json_string(out, Some(self.method));
        out.extend_from_slice(b",\"target\":");
        json_string(out, Some(self.target));
        out.extend_from_slice(b",\"version\":\"");
        out.extend_from_slice(version_str(self.version).as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        out.extend_from_slice(numbers.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        match self.bytes {
            Some(bytes) => out.extend_from_slice(numbers.format(bytes).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cache_status\":");
        json_string(out, self.cache_status);
        // Seconds with six decimals are JSON numbers as they are.
        out.extend_from_slice(b",\"upstream_seconds\":");
        match self.upstream {
            Some(upstream) => seconds(out, upstream),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"total_seconds\":");
        seconds(out, self.total);
        out.extend_from_slice(b",\"request_id\":");
        match self.id {
            Id::Text(text) => json_string(out, Some(text)),
            Id::Made(made) => {
                out.push(b'"');
                out.extend_from_slice(&hex_id(made));
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"user_agent\":");
        json_string(out, self.user_agent);
        out.push(b'}');
    }
}

/// `value` as a JSON string (escaped by serde_json; bytes that are not UTF-8
/// become U+FFFD), or `null`.
fn json_string(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// The writer's clock: the correction it applies to records' times (see
/// [`Anchor`]), and the text of the last second it wrote, formatted once per
/// second (the milliseconds are written per line).
#[derive(Debug, Default)]
struct TimeText {
    drift: i64,
    second: Option<u64>,
    text: [u8; 19],
}

impl TimeText {
    /// The last second humantime formats (the end of year 9999).
    const LAST: u64 = 253_402_300_799;

    /// Appends `micros` (since the Unix epoch) as RFC 3339 UTC with milliseconds:
    /// `2026-12-03T08:17:42.123Z`.
    fn push(&mut self, out: &mut Vec<u8>, micros: u64) {
        let micros = micros.saturating_add_signed(self.drift);
        let second = (micros / 1_000_000).min(Self::LAST);
        if self.second != Some(second) {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(second);
            let formatted = humantime::format_rfc3339_seconds(at).to_string();
            // `YYYY-MM-DDTHH:MM:SS`, without its `Z`.
            self.text.copy_from_slice(&formatted.as_bytes()[..19]);
            self.second = Some(second);
        }
        let millis = u16::try_from(micros % 1_000_000 / 1_000).unwrap_or(0);
        let digit = |n: u16| b'0' + (n % 10) as u8;
        // Laid out on the stack and appended in one copy.
        let mut text = [0; 24];
        text[..19].copy_from_slice(&self.text);
        text[19..].copy_from_slice(&[
            b'.',
            digit(millis / 100),
            digit(millis / 10),
            digit(millis),
            b'Z',
        ]);
        out.extend_from_slice(&text);
    }
}

/// An address as text: IPv4 octets written with `itoa`, IPv6 by the standard
/// library.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut numbers = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(numbers.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `duration` in seconds with six decimals, formatted as integers (a float's
/// formatting costs several times more, on every request), from the seconds and
/// the microseconds apart: `as_micros` is a `u128`, whose division is a library
/// call. The decimals are laid out on the stack and appended in one copy.
fn seconds(out: &mut Vec<u8>, duration: Duration) {
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(numbers.format(duration.as_secs()).as_bytes());
    let mut fraction = *b".000000";
    let mut micros = duration.subsec_micros();
    for digit in fraction[1..].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&fraction);
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

/// Whether a byte is written as `\xNN` (or `\"`, `\\`): controls, `"`, `\`, and
/// bytes beyond ASCII, as nginx escapes them, so that a line is always one line
/// of ASCII and its quoted fields always end where they should.
const fn escaped(b: u8) -> bool {
    b < 0x20 || b >= 0x7f || b == b'"' || b == b'\\'
}

/// [`escaped`] for every byte: one load per byte where the test is four
/// comparisons, on every field of every line.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = escaped(b as u8);
        b += 1;
    }
    table
};

/// Appends `value`, escaped (see [`escaped`]); runs of plain bytes are copied
/// whole.
fn escape_into(out: &mut Vec<u8>, value: &[u8]) {
    // Most values hold nothing to escape. One pass with no early exit tells so
    // for the whole value, which is then copied in one piece.
    if !value
        .iter()
        .fold(false, |any, &b| any | ESCAPED[usize::from(b)])
    {
        out.extend_from_slice(value);
        return;
    }
    let mut rest = value;
    while let Some(at) = rest.iter().position(|&b| ESCAPED[usize::from(b)]) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => {
                let digits = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    digits[usize::from(b >> 4)],
                    digits[usize::from(b & 0xf)],
                ]);
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
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
    fn a_line_is_timed_by_the_wall_clock_the_writer_reads() {
        let anchor = Anchor::now();
        let wall = micros_since_epoch(std::time::SystemTime::now());
        let told = anchor.micros(quanta::Instant::now());
        assert!(told.abs_diff(wall) < 1_000_000, "{told} vs {wall}");
        // An anchor an hour behind the wall clock (as after the clock was set
        // forward) measures a drift of an hour, which the writer adds.
        let behind = Anchor {
            wall: anchor.wall - 3_600_000_000,
            ..anchor
        };
        let drift = behind.drift();
        assert!(drift.abs_diff(3_600_000_000) < 1_000_000, "{drift}");
        // The writer adds what the clocks drifted apart: a clock set back an hour
        // moves the lines' times with it.
        let mut time = TimeText {
            drift: -3_600_000_000,
            ..TimeText::default()
        };
        let mut out = Vec::new();
        time.push(&mut out, 1_796_290_262_123_456);
        time.push(&mut out, u64::MAX);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-03T08:31:02.123Z9999-12-31T23:59:59.551Z"
        );
    }

    #[test]
    fn durations_are_written_in_seconds_with_six_decimals() {
        let mut out = Vec::new();
        for micros in [0, 41, 1_000_001, 12_345_678] {
            seconds(&mut out, Duration::from_micros(micros));
            out.push(b' ');
        }
        assert_eq!(out, b"0.000000 0.000041 1.000001 12.345678 ");
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

    #[test]
    fn a_record_reads_back_as_written() {
        let records = [
            Record {
                time: 1_796_286_662_123_456,
                status: 304,
                version: http::Version::HTTP_2,
                bytes: None,
                upstream: Some(Duration::from_micros(1_234)),
                total: Duration::from_micros(5_678),
                client: Some("10.0.0.1".parse().unwrap()),
                method: b"GET",
                target: b"/a?b=c",
                cache_status: None,
                id: Id::Text(b"abc"),
                user_agent: Some(b"\xffua"),
            },
            Record {
                time: 1_796_286_663_000_500,
                status: 200,
                version: http::Version::HTTP_11,
                bytes: Some(5),
                upstream: None,
                total: Duration::from_micros(41),
                client: Some("::1".parse().unwrap()),
                method: b"HEAD",
                target: b"/",
                cache_status: Some(b"revalidate; hit"),
                id: Id::Made(0x0123_4567_89ab_cdef),
                user_agent: None,
            },
        ];
        let mut batch = Vec::new();
        for record in &records {
            record.write(&mut batch);
        }
        assert_eq!(batch.len(), records.iter().map(Record::len).sum::<usize>());
        let mut input = &batch[..];
        let (mut lines, mut time) = (Vec::new(), TimeText::default());
        for record in &records {
            let read = Record::read(&mut input).expect("a record");
            assert_eq!(
                (read.time, read.status, read.version, read.bytes),
                (record.time, record.status, record.version, record.bytes)
            );
            assert_eq!((read.upstream, read.total), (record.upstream, record.total));
            assert_eq!(
                (read.client, read.target, read.cache_status, read.id),
                (record.client, record.target, record.cache_status, record.id)
            );
            read.format(LogFormat::Text, &mut time, &mut lines);
            lines.push(b'\n');
        }
        assert!(Record::read(&mut input).is_none(), "nothing left");
        let mut json = |record: &Record<'_>| {
            let mut out = Vec::new();
            record.format(LogFormat::Json, &mut time, &mut out);
            serde_json::from_slice::<serde_json::Value>(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
        };
        assert_eq!(
            json(&records[0]),
            serde_json::json!({
                "time": "2026-12-03T08:31:02.123Z", "client": "10.0.0.1", "method": "GET",
                "target": "/a?b=c", "version": "HTTP/2.0", "status": 304, "bytes": null,
                "cache_status": null, "upstream_seconds": 0.001234, "total_seconds": 0.005678,
                "request_id": "abc", "user_agent": "\u{fffd}ua",
            })
        );
        assert_eq!(
            json(&records[1]),
            serde_json::json!({
                "time": "2026-12-03T08:31:03.000Z", "client": "::1", "method": "HEAD",
                "target": "/", "version": "HTTP/1.1", "status": 200, "bytes": 5,
                "cache_status": "revalidate; hit", "upstream_seconds": null,
                "total_seconds": 0.000041, "request_id": "0123456789abcdef", "user_agent": null,
            })
        );
        // A record cut short anywhere reads as none, never as a wrong one.
        let first = records[0].len();
        for cut in 0..first {
            assert!(Record::read(&mut &batch[..cut]).is_none(), "cut at {cut}");
        }
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "10.0.0.1 [2026-12-03T08:31:02.123Z] \"GET /a?b=c HTTP/2.0\" 304 - \"-\" upstream=0.001234 total=0.005678 id=abc ua=\"\\xffua\"\n\
             ::1 [2026-12-03T08:31:03.000Z] \"HEAD / HTTP/1.1\" 200 5 \"revalidate; hit\" upstream=- total=0.000041 id=0123456789abcdef ua=\"-\"\n"
        );
    }

    #[test]
    fn quoted_fields_cannot_break_a_line() {
        let record = Record {
            time: 1_796_286_662_999_999,
            status: 200,
            version: http::Version::HTTP_11,
            bytes: Some(5),
            upstream: None,
            total: Duration::from_micros(41),
            client: None,
            method: b"GET",
            target: b"/a\"b\nc\\d",
            cache_status: Some(b"revalidate; hit"),
            id: Id::Text(b"i"),
            user_agent: Some("ua\"x\u{e9}".as_bytes()),
        };
        let (mut out, mut time) = (Vec::new(), TimeText::default());
        record.format(LogFormat::Text, &mut time, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "- [2026-12-03T08:31:02.999Z] \"GET /a\\\"b\\x0ac\\\\d HTTP/1.1\" 200 5 \"revalidate; hit\" upstream=- total=0.000041 id=i ua=\"ua\\\"x\\xc3\\xa9\""
        );
        let mut out = Vec::new();
        record.format(LogFormat::Json, &mut time, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["time"], "2026-12-03T08:31:02.999Z");
        assert_eq!(parsed["target"], "/a\"b\nc\\d");
        assert_eq!(parsed["status"], 200);
        assert_eq!(parsed["user_agent"], "ua\"x\u{e9}");
    }
}
