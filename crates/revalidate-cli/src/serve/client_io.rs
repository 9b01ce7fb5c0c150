//! A client connection's socket with its waits bounded: a request head must arrive
//! whole within the header timeout (slowloris), a connection with no request in
//! flight may sit idle only for the keep-alive timeout, and a client that stops
//! taking its response (its socket buffer full, or, over HTTP/2, a flow-control
//! window it does not open) may hold it up only for the send timeout. When a
//! bound passes, the read or write fails with `TimedOut` and hyper closes the
//! connection.
//!
//! hyper's own `header_read_timeout` starts when a connection begins to wait for a
//! head, so one value would bound both the idle time between requests and the head
//! itself; nginx and HAProxy bound them separately, and so does this. An HTTP/2
//! connection (known by its preface, or by ALPN under TLS) has no head to wait
//! for: only the idle and send bounds apply to it.
//!
//! The hit path pays no clock read for it: reads and writes set flags, the service
//! counts requests started and finished (a request is in flight until its response
//! body is done), and one timer per connection ticks at a quarter of the shortest
//! bound and looks at what happened since its last tick. A bound thus passes
//! between one tick before it and itself (with the defaults, a 60 s keep-alive
//! closes after 52.5 to 60 s of silence).
//!
//! The same counters tell whether a client that closes its side cut a head short,
//! which the access log writes as a 400 ([`Activity::closed_mid_head`]; under TLS
//! the decrypted stream is watched for it, [`EndWatched`]).
//!
//! ```text
//! let activity = Activity::new();
//! let io = TokioIo::new(BoundedIo::new(stream, activity.clone(), bounds));
//! // the service holds `activity.start()` from a request's head to its body's end
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How many ticks the shortest bound spans.
const TICKS_PER_BOUND: u32 = 4;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4); no HTTP/1 request
/// starts with `PRI `.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The bounds of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// For a request head, from its first byte (or the connection's start).
    pub(crate) header: Duration,
    /// For silence with no request in flight.
    pub(crate) idle: Duration,
    /// For writes the client does not take.
    pub(crate) send: Duration,
}

/// The requests of one connection, counted by its service.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
    /// Response bodies that hyper owes a poll: their head went out, or they last
    /// gave it data, and it has not asked for more since.
    owed: AtomicU64,
    /// Whether hyper asked a response body for more since the last tick.
    taken: AtomicBool,
    /// Whether the client closed its side in the middle of a head (noted by
    /// [`BoundedIo`] over plain TCP, by [`EndWatched`] under TLS).
    closed_mid_head: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts a request whose head has arrived; the guard counts it finished when
    /// dropped (with its response body, or with the request's future if it is
    /// dropped first).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlight {
            activity: self.clone(),
            owed: false,
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.finished.load(Ordering::Relaxed),
        )
    }

    /// Whether the client closed its side in the middle of a head: after bytes
    /// that came with no request in flight, and before the service was called
    /// for them (see [`EndWatched`]).
    pub(crate) fn closed_mid_head(&self) -> bool {
        self.closed_mid_head.load(Ordering::Relaxed)
    }

    /// A read that gave nothing answered `read`: when that is the client's close,
    /// notes whether it cut a head short, given `head_begun` (see
    /// [`HeadBegun`]). A close while a response is still going out (its body
    /// handed to hyper whole) comes with no request in flight too, but with no
    /// bytes since that request began.
    // Cold: it runs at a connection's end, and stays out of the read path it sits on.
    #[cold]
    fn note_end(&self, read: &io::Result<()>, buf: &ReadBuf<'_>, head_begun: HeadBegun) {
        let closed = match read {
            Ok(()) => buf.remaining() > 0,
            Err(error) => is_client_close(error.kind()),
        };
        if closed {
            let (started, finished) = self.counts();
            let mid_head = started == finished && head_begun.0 == Some(started);
            self.closed_mid_head.store(mid_head, Ordering::Relaxed);
        }
    }

    /// Whether a response body waits for hyper to come back for it, and whether
    /// hyper came back for any since the last call.
    fn bodies(&self) -> (bool, bool) {
        (
            self.owed.load(Ordering::Relaxed) > 0,
            self.taken.swap(false, Ordering::Relaxed),
        )
    }
}

/// A request in flight on its connection (see [`Activity::start`]).
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    /// Whether its response body is owed a poll (see [`Activity::bodies`]).
    owed: bool,
}

impl InFlight {
    /// Its response head is going out: hyper owes the body a poll.
    pub(crate) fn responding(&mut self) {
        self.owe(true);
    }

    /// hyper polled the response body, which answered `polled`: another poll is
    /// owed after data, none while the body waits for its own source or is done.
    pub(crate) fn body_polled<T>(&mut self, polled: &Poll<Option<T>>) {
        self.activity.taken.store(true, Ordering::Relaxed);
        self.owe(matches!(polled, Poll::Ready(Some(_))));
    }

    fn owe(&mut self, owed: bool) {
        if owed != self.owed {
            self.owed = owed;
            if owed {
                self.activity.owed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.activity.owed.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.owe(false);
        self.activity.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The requests the service had started when bytes last came in with none in
/// flight: those bytes began a head, which is cut short if the client closes
/// before the service starts another request.
#[derive(Debug, Default, Clone, Copy)]
struct HeadBegun(Option<u64>);

impl HeadBegun {
    /// Bytes came in, when the service had started and finished these requests.
    fn on_bytes(&mut self, (started, finished): (u64, u64)) {
        if started == finished {
            self.0 = Some(started);
        }
    }
}

/// Whether a read's error is the client's closing: rustls's `UnexpectedEof` for
/// a socket closed without the TLS close. A reset is not counted: hyper gives a
/// reset read in a request body to the body, and a reset write that follows
/// ends the connection with the same kind of error, which would then be taken
/// for a head cut short.
pub(crate) fn is_client_close(kind: io::ErrorKind) -> bool {
    kind == io::ErrorKind::UnexpectedEof
}

/// The bound that closed a connection: the error its read or write failed with
/// (`TimedOut`) carries it, so that the connection's end can say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoundPassed {
    /// A request head did not arrive whole in time (or, on a new connection, at
    /// all).
    Head,
    /// No request came in the keep-alive timeout.
    Idle,
    /// The client's socket took none of its response in the send timeout.
    ClientNotReading,
    /// The client took none of a response body (over HTTP/2: opened no window).
    ClientNotTaking,
}

impl BoundPassed {
    /// The bound that `error` (the connection's end, through hyper's error and
    /// the socket's) says passed, if one did.
    pub(crate) fn in_error(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        std::iter::successors(Some(error), |error| error.source())
            .filter_map(|error| error.downcast_ref::<io::Error>()?.get_ref())
            .find_map(|inner| inner.downcast_ref::<Self>().copied())
    }
}

impl std::fmt::Display for BoundPassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Head => "the request head did not arrive in time",
            Self::Idle => "the connection was idle too long",
            Self::ClientNotReading => "the client stopped reading its response",
            Self::ClientNotTaking => "the client stopped taking its response",
        })
    }
}

impl std::error::Error for BoundPassed {}

impl From<BoundPassed> for io::Error {
    fn from(bound: BoundPassed) -> Self {
        Self::new(io::ErrorKind::TimedOut, bound)
    }
}

/// What the connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The rest of a request head whose first bytes came in when the service had
    /// started this many requests (a new connection waits for its first head).
    Head { after: u64, ticks: u32 },
    /// Nothing: the connection is idle between requests, for about this many ticks.
    Idle { ticks: u32 },
    /// The service: a request is in flight.
    Service,
}

/// The connection's state between ticks.
#[derive(Debug)]
struct Watch {
    waiting: Waiting,
    /// `None` until the first bytes tell.
    http2: Option<bool>,
    /// Bytes moved either way since the last tick.
    moved: bool,
    /// Bytes written since the last tick.
    wrote: bool,
    /// The last write could not proceed.
    write_blocked: bool,
    /// Ticks in a row with writes blocked and nothing written.
    send_stalled: u32,
    /// Ticks in a row with a response body owed a poll, none taken, and nothing
    /// written.
    body_stalled: u32,
    /// Bytes of the HTTP/2 preface the first reads matched so far.
    preface_seen: usize,
    /// Whether the bytes read here are TLS's: the decrypted stream notes the
    /// client's close instead ([`EndWatched`]).
    under_tls: bool,
    header_ticks: u32,
    idle_ticks: u32,
    send_ticks: u32,
}

impl Watch {
    /// What a tick of the timer found: `Err` when a bound has passed.
    fn on_tick(
        &mut self,
        (started, finished): (u64, u64),
        (owed, taken): (bool, bool),
    ) -> io::Result<()> {
        let busy = started != finished;
        // The tick that first sees the connection idle counts as one: the idleness
        // began at most a period before it.
        self.waiting = match self.waiting {
            _ if busy => Waiting::Service,
            Waiting::Head { after, .. } if started != after => Waiting::Idle { ticks: 1 },
            Waiting::Head { after, ticks } => Waiting::Head {
                after,
                ticks: ticks + 1,
            },
            Waiting::Service => Waiting::Idle { ticks: 1 },
            Waiting::Idle { .. } if self.moved => Waiting::Idle { ticks: 1 },
            Waiting::Idle { ticks } => Waiting::Idle { ticks: ticks + 1 },
        };
        // Likewise a write that blocked after bytes went out in this period.
        self.send_stalled = match (self.write_blocked, self.wrote) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => self.send_stalled + 1,
        };
        // A body that gave hyper data and is not asked for more: the client holds
        // the response up without a write blocking (an HTTP/2 stream whose window
        // it does not open). Over HTTP/1 a write is the body's progress too (hyper
        // asks for more once its buffer is out); over HTTP/2 it may be anything
        // (a PING's answer, another stream), and a reader, however slow, that
        // takes data frees capacity, for which hyper asks the body again.
        let progressed = taken || (self.wrote && self.http2 != Some(true));
        self.body_stalled = match (owed, progressed) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => self.body_stalled + 1,
        };
        self.moved = false;
        self.wrote = false;
        if self.send_stalled >= self.send_ticks {
            return Err(BoundPassed::ClientNotReading.into());
        }
        if self.body_stalled >= self.send_ticks {
            return Err(BoundPassed::ClientNotTaking.into());
        }
        match self.waiting {
            Waiting::Head { ticks, .. } if ticks >= self.header_ticks => {
                Err(BoundPassed::Head.into())
            }
            Waiting::Idle { ticks } if ticks >= self.idle_ticks => Err(BoundPassed::Idle.into()),
            _ => Ok(()),
        }
    }

    /// Bytes came in: they may start a request head.
    fn on_read(&mut self, bytes: &[u8], (started, finished): (u64, u64)) {
        self.moved = true;
        if self.http2.is_none() {
            // The preface may come in several reads: each goes on where the last
            // stopped.
            let rest = &HTTP2_PREFACE[self.preface_seen..];
            let seen = bytes.len().min(rest.len());
            if bytes[..seen] != rest[..seen] {
                self.http2 = Some(false);
            } else if seen == rest.len() {
                self.speaks_http2();
            } else {
                // Too few bytes to tell, all of them the preface's: asked again.
                self.preface_seen += seen;
            }
        }
        if self.http2 == Some(true) {
            return;
        }
        let new_head = match self.waiting {
            Waiting::Head { after, .. } => after != started,
            Waiting::Idle { .. } | Waiting::Service => true,
        };
        if new_head && started == finished {
            self.waiting = Waiting::Head {
                after: started,
                ticks: 0,
            };
        }
    }

    /// Where the last head began. The head being waited for began when the
    /// service had started `after` requests; on a new connection, which waits
    /// for its first head from the start, bytes may not have come yet, but a
    /// close then leaves hyper nothing to call cut short.
    fn head_begun(&self) -> HeadBegun {
        match self.waiting {
            Waiting::Head { after, .. } => HeadBegun(Some(after)),
            Waiting::Idle { .. } | Waiting::Service => HeadBegun(None),
        }
    }

    /// The connection speaks HTTP/2: no request head to wait for.
    fn speaks_http2(&mut self) {
        self.http2 = Some(true);
        self.waiting = Waiting::Idle { ticks: 0 };
    }

    fn on_write(&mut self, written: &Poll<io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.moved = true;
                self.wrote = true;
                self.write_blocked = false;
            }
            Poll::Pending => self.write_blocked = true,
            Poll::Ready(_) => self.write_blocked = false,
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner`, whose reads and writes fail once a request head, an idle spell or
    /// a blocked write outlasts its bound.
    pub(crate) struct BoundedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        timer: Timer,
        watch: Watch,
    }
}

impl<T> BoundedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, bounds: Bounds) -> Self {
        let period = bounds.header.min(bounds.idle).min(bounds.send) / TICKS_PER_BOUND;
        let ticks = |bound: Duration| {
            u32::try_from(bound.as_nanos().div_ceil(period.as_nanos().max(1)))
                .unwrap_or(u32::MAX)
                .max(1)
        };
        Self {
            inner,
            activity,
            timer: Timer {
                tick: Box::pin(tokio::time::sleep(period)),
                period,
                registered: None,
            },
            watch: Watch {
                // A connection that sends nothing at all is held to the header bound.
                waiting: Waiting::Head { after: 0, ticks: 0 },
                http2: None,
                moved: false,
                wrote: false,
                write_blocked: false,
                send_stalled: 0,
                body_stalled: 0,
                preface_seen: 0,
                under_tls: false,
                header_ticks: ticks(bounds.header),
                idle_ticks: ticks(bounds.idle),
                send_ticks: ticks(bounds.send),
            },
        }
    }
}

impl<T> BoundedIo<T> {
    /// Tells that the bytes read here are TLS's, and the protocol the connection
    /// speaks, known from ALPN.
    pub(crate) fn set_under_tls(&mut self, http2: bool) {
        self.watch.under_tls = true;
        if http2 {
            self.watch.speaks_http2();
        } else {
            self.watch.http2 = Some(false);
        }
    }
}

/// The connection's timer, ticking every period.
#[derive(Debug)]
struct Timer {
    tick: Pin<Box<Sleep>>,
    period: Duration,
    /// The waker the timer holds until it fires.
    registered: Option<Waker>,
}

impl Timer {
    /// Runs the ticks that are due; `Err` when a bound has passed. Called whenever
    /// the connection waits on its socket, so that the timer wakes its task.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        watch: &mut Watch,
        activity: &Activity,
    ) -> io::Result<()> {
        // The timer keeps the waker it was polled with until it fires: polled again
        // at every wait, it would only register the same waker again.
        let same_waker = self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if same_waker && !self.tick.is_elapsed() {
            return Ok(());
        }
        // Unconstrained: with the task's cooperative budget spent, a timer's poll
        // returns `Pending` without keeping the waker, and it would never wake the
        // connection again (the check above skips it).
        while Pin::new(&mut tokio::task::unconstrained(self.tick.as_mut()))
            .poll(cx)
            .is_ready()
        {
            watch.on_tick(activity.counts(), activity.bodies())?;
            self.tick.as_mut().reset(Instant::now() + self.period);
        }
        if !same_waker {
            self.registered = Some(cx.waker().clone());
        }
        Ok(())
    }
}

impl<T: AsyncRead> AsyncRead for BoundedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.watch
                    .on_read(&buf.filled()[before..], this.activity.counts());
            }
            Poll::Pending => {
                this.timer.poll(cx, this.watch, this.activity)?;
            }
            // Nothing read: an end, or an error (see `EndWatched`).
            Poll::Ready(ref read) if !this.watch.under_tls => {
                this.activity.note_end(read, buf, this.watch.head_begun());
            }
            Poll::Ready(_) => {}
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for BoundedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = this.inner.poll_write(cx, buf);
        this.watch.on_write(&written);
        if written.is_pending() {
            this.timer.poll(cx, this.watch, this.activity)?;
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = this.inner.poll_write_vectored(cx, bufs);
        this.watch.on_write(&written);
        if written.is_pending() {
            this.timer.poll(cx, this.watch, this.activity)?;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let flushed = this.inner.poll_flush(cx);
        if flushed.is_pending() {
            this.watch.write_blocked = true;
            this.timer.poll(cx, this.watch, this.activity)?;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A TLS connection's decrypted stream, as hyper reads it, noting when the
    /// client closes its side in the middle of a head
    /// ([`Activity::closed_mid_head`]; [`BoundedIo`] notes it over plain TCP).
    /// hyper ends an HTTP/1 connection with the same error when the client
    /// closes after part of a head, during a request, or while a response is
    /// still going out; only the first is a request without a line of its own.
    /// Above TLS, because the bytes below are encrypted, and a client that ends
    /// TLS (close_notify) ends the stream hyper reads before its socket closes;
    /// not over plain TCP, where it would cost every read a layer. (An HTTP/2
    /// connection over TLS is known by ALPN, which RFC 9113 §3.3 requires, and
    /// gets no such line.)
    pub(crate) struct EndWatched<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        head_begun: HeadBegun,
    }
}

impl<T> EndWatched<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            head_begun: HeadBegun::default(),
        }
    }
}

impl<T: AsyncRead> AsyncRead for EndWatched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let Poll::Ready(read) = &polled {
            if buf.filled().len() > before {
                this.head_begun.on_bytes(this.activity.counts());
            } else {
                this.activity.note_end(read, buf, *this.head_begun);
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for EndWatched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const HEADER: Duration = Duration::from_secs(4);
    const IDLE: Duration = Duration::from_secs(8);
    const SEND: Duration = Duration::from_secs(12);
    const PERIOD: Duration = Duration::from_secs(1);

    fn connection() -> (DuplexStream, BoundedIo<DuplexStream>, Arc<Activity>) {
        let (client, server) = tokio::io::duplex(4096);
        let activity = Activity::new();
        let bounds = Bounds {
            header: HEADER,
            idle: IDLE,
            send: SEND,
        };
        let io = BoundedIo::new(server, activity.clone(), bounds);
        (client, io, activity)
    }

    /// Reads until the bound closes the connection: how long that took, and the
    /// bound its error names.
    async fn until_closed(io: &mut BoundedIo<DuplexStream>) -> (Duration, Option<BoundPassed>) {
        let started = Instant::now();
        let mut buffer = [0; 64];
        loop {
            match io.read(&mut buffer).await {
                Ok(0) => panic!("the client closed"),
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                    return (started.elapsed(), BoundPassed::in_error(&error));
                }
            }
        }
    }

    /// How long the bound took to close the connection.
    async fn time_to_close(io: &mut BoundedIo<DuplexStream>) -> Duration {
        until_closed(io).await.0
    }

    /// The bound that closed the connection, as the connection's end finds it.
    async fn closed_by(io: &mut BoundedIo<DuplexStream>) -> Option<BoundPassed> {
        until_closed(io).await.1
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_held_to_the_header_bound() {
        let (_client, mut io, _) = connection();
        let lasted = time_to_close(&mut io).await;
        assert!(lasted > HEADER - PERIOD && lasted <= HEADER, "{lasted:?}");
    }

    /// The error that closes a connection names the bound that passed.
    #[tokio::test(start_paused = true)]
    async fn the_error_names_the_bound_that_passed() {
        let (_client, mut io, _) = connection();
        assert_eq!(closed_by(&mut io).await, Some(BoundPassed::Head));

        let (mut client, mut io, _) = connection();
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(closed_by(&mut io).await, Some(BoundPassed::Head));

        // A request, answered: from then on the connection is idle, until the
        // next head's first bytes.
        let answered = || async {
            let (mut client, mut io, activity) = connection();
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut buffer = [0; 64];
            assert!(io.read(&mut buffer).await.unwrap() > 0);
            drop(activity.start());
            (client, io)
        };
        let (_client, mut io) = answered().await;
        assert_eq!(closed_by(&mut io).await, Some(BoundPassed::Idle));
        let (mut client, mut io) = answered().await;
        let mut buffer = [0; 64];
        let idle = tokio::time::timeout(PERIOD * 2, io.read(&mut buffer)).await;
        assert!(idle.is_err(), "idle, not yet closed");
        client.write_all(b"GET /next HT").await.unwrap();
        assert_eq!(closed_by(&mut io).await, Some(BoundPassed::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_held_to_the_header_bound() {
        let (mut client, mut io, _) = connection();
        tokio::spawn(async move {
            while client.write_all(b"G").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let lasted = time_to_close(&mut io).await;
        assert!(
            lasted <= HEADER,
            "bytes keep coming, the head never ends: {lasted:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_bound_applies_while_a_request_is_in_flight_then_idle_counts() {
        let (mut client, mut io, activity) = connection();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buffer = [0; 64];
        assert!(io.read(&mut buffer).await.unwrap() > 0);
        let in_flight = activity.start();
        let waited = tokio::time::timeout(IDLE * 3, io.read(&mut buffer)).await;
        assert!(
            waited.is_err(),
            "a slow upstream is not the client's idleness"
        );
        drop(in_flight);
        // The response goes out; from then on the connection is idle.
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let lasted = time_to_close(&mut io).await;
        let period = HEADER / TICKS_PER_BOUND;
        assert!(
            lasted > IDLE - period * 2 && lasted <= IDLE + period,
            "{lasted:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_every_so_often_keeps_the_connection_open() {
        let (mut client, mut io, activity) = connection();
        let server = tokio::spawn(async move {
            let mut buffer = [0; 64];
            loop {
                match io.read(&mut buffer).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => drop(activity.start()),
                    Err(error) => return Err(error),
                }
            }
        });
        for _ in 0..10 {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tokio::time::sleep(IDLE / 2).await;
        }
        drop(client);
        server
            .await
            .unwrap()
            .expect("40 s with a request every 4 s: never cut off");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_held_to_the_send_bound() {
        let (_client, mut io, activity) = connection();
        let _in_flight = activity.start();
        let started = Instant::now();
        // The duplex buffer (4 KiB) fills and nobody reads it.
        let error = loop {
            if let Err(error) = io.write_all(&[b'x'; 1024]).await {
                break error;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let lasted = started.elapsed();
        assert!(lasted > SEND - PERIOD && lasted <= SEND, "{lasted:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_streams_are_not_a_head() {
        let (mut client, mut io, _) = connection();
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let server = tokio::spawn(async move { time_to_close(&mut io).await });
        // Window updates and pings, no stream: well past the header bound, the
        // connection is only idle when they stop.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            client.write_all(b"ping").await.unwrap();
        }
        let lasted = server.await.unwrap();
        assert!(
            lasted > Duration::from_secs(10) + IDLE - PERIOD,
            "{lasted:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_preface_in_two_reads_is_known() {
        let (mut client, mut io, _) = connection();
        let mut buffer = [0; 64];
        for piece in [&b"PRI * HT"[..], b"TP/2.0\r\n\r\nSM\r\n\r\n"] {
            client.write_all(piece).await.unwrap();
            assert_eq!(io.read(&mut buffer).await.unwrap(), piece.len());
        }
        assert_eq!(io.watch.http2, Some(true));
        assert_eq!(io.watch.waiting, Waiting::Idle { ticks: 0 });
    }

    /// A response body that gave hyper data and is never asked for more, while
    /// nothing is written (an HTTP/2 stream whose window the client keeps shut),
    /// is held to the send bound; one that waits for its own source (a slow
    /// upstream) is not the client's doing.
    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_does_not_take_is_held_to_the_send_bound() {
        let (_client, mut io, activity) = connection();
        io.set_under_tls(true);
        let mut in_flight = activity.start();
        in_flight.responding();
        in_flight.body_polled(&Poll::<Option<()>>::Pending);
        let mut buffer = [0; 64];
        let waited = tokio::time::timeout(SEND * 3, io.read(&mut buffer)).await;
        assert!(waited.is_err(), "the body waits for its source: no bound");
        in_flight.body_polled(&Poll::Ready(Some(())));
        let lasted = time_to_close(&mut io).await;
        assert!(lasted > SEND - PERIOD && lasted <= SEND, "{lasted:?}");
    }

    /// Over HTTP/2, bytes the connection writes (the answers to a client's
    /// PINGs, say) are not the stalled body's progress.
    #[tokio::test(start_paused = true)]
    async fn http2_pings_do_not_keep_a_stalled_response_open() {
        let (mut client, mut io, activity) = connection();
        io.set_under_tls(true);
        let mut in_flight = activity.start();
        in_flight.responding();
        in_flight.body_polled(&Poll::Ready(Some(())));
        tokio::spawn(async move {
            let mut buffer = [0; 64];
            while client.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
        });
        let started = Instant::now();
        let closed = async {
            loop {
                // A PING's answer every half second.
                if let Err(error) = io.write_all(b"pong").await {
                    return error;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut buffer = [0; 64];
                if let Ok(Err(error)) =
                    tokio::time::timeout(Duration::from_millis(1), io.read(&mut buffer)).await
                {
                    return error;
                }
            }
        };
        let error = tokio::time::timeout(SEND * 3, closed)
            .await
            .expect("the pings kept the stalled response open");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let lasted = started.elapsed();
        assert!(lasted <= SEND + PERIOD, "{lasted:?}");
    }

    /// A client's close cuts a head short only when bytes came with no request
    /// in flight and no request started since: not during a request, and not
    /// after one whose response is still going out. Over plain TCP (the bounded
    /// socket) and under TLS (the decrypted stream); an end of stream, or a
    /// read's error that is a close (`UnexpectedEof`), and no other (a reset).
    #[tokio::test]
    async fn a_close_cuts_a_head_short_only_between_requests() {
        /// How the connection stands when the client closes.
        #[derive(Debug, Clone, Copy)]
        enum Before {
            /// Part of a head came, nothing else.
            HeadBegun,
            /// A head came and became a request, which is in flight.
            InFlight,
            /// A head came and became a request, which finished.
            Finished,
        }
        /// A stream that gives `head`, then fails with `kind` (or ends).
        struct Scripted(Option<&'static [u8]>, Option<io::ErrorKind>);
        impl AsyncRead for Scripted {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if let Some(head) = self.0.take() {
                    buf.put_slice(head);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(self.1.map_or(Ok(()), |kind| Err(kind.into())))
            }
        }
        async fn closes(
            mut io: impl AsyncRead + Unpin,
            activity: &Arc<Activity>,
            before: Before,
        ) -> bool {
            assert!(io.read(&mut [0; 64]).await.unwrap() > 0);
            let in_flight = match before {
                Before::HeadBegun => None,
                Before::InFlight => Some(activity.start()),
                Before::Finished => {
                    drop(activity.start());
                    None
                }
            };
            let _ = io.read(&mut [0; 64]).await;
            drop(in_flight);
            activity.closed_mid_head()
        }
        let head = &b"GET / HT"[..];
        for before in [Before::HeadBegun, Before::InFlight, Before::Finished] {
            let expected = matches!(before, Before::HeadBegun);
            let (mut client, plain, activity) = connection();
            client.write_all(head).await.unwrap();
            drop(client);
            assert_eq!(
                closes(plain, &activity, before).await,
                expected,
                "plain, {before:?}"
            );
            for end in [None, Some(io::ErrorKind::UnexpectedEof)] {
                let activity = Activity::new();
                let decrypted = EndWatched::new(Scripted(Some(head), end), activity.clone());
                assert_eq!(
                    closes(decrypted, &activity, before).await,
                    expected,
                    "TLS, {before:?}, {end:?}"
                );
            }
        }
        let activity = Activity::new();
        let reset = Scripted(Some(head), Some(io::ErrorKind::ConnectionReset));
        assert!(
            !closes(
                EndWatched::new(reset, activity.clone()),
                &activity,
                Before::HeadBegun
            )
            .await
        );
    }
}
