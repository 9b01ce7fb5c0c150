//! A client connection's socket with its waits bounded: a request head must arrive
//! whole within the header timeout (slowloris), and a connection with no request in
//! flight may sit idle only for the keep-alive timeout. When a bound passes, reads
//! fail with `TimedOut` and hyper closes the connection.
//!
//! hyper's own `header_read_timeout` starts when a connection begins to wait for a
//! head, so one value would bound both the idle time between requests and the head
//! itself; nginx and HAProxy bound them separately, and so does this.
//!
//! The hit path pays no clock read for it: reads and writes set a flag, the service
//! counts requests started and finished, and one timer per connection ticks at a
//! quarter of the shorter bound and looks at what happened since its last tick. A
//! bound is thus enforced within a quarter of itself (a 60 s keep-alive closes
//! after 45 to 60 s of silence).
//!
//! ```text
//! let activity = Activity::new();
//! let io = TokioIo::new(BoundedIo::new(stream, activity.clone(), header_timeout, keepalive_timeout));
//! // the service calls activity.started() and drops the guard when it answered
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How many ticks a bound spans.
const TICKS_PER_BOUND: u32 = 4;

/// The requests of one connection, counted by its service.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts a request whose head has arrived; the guard counts it finished when
    /// dropped (its response future is done, or was dropped with its stream).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.finished.load(Ordering::Relaxed),
        )
    }
}

/// A request in flight on its connection (see [`Activity::start`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The rest of a request head whose first bytes came in when the service had
    /// started this many requests (a new connection waits for its first head).
    Head { after: u64, ticks: u32 },
    /// Nothing: the connection is idle between requests.
    Idle { ticks: u32 },
    /// The service: a request is in flight, no bound applies.
    Service,
}

pin_project_lite::pin_project! {
    /// `inner`, whose reads fail once a request head or an idle spell outlasts its
    /// bound.
    pub(crate) struct BoundedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        tick: Pin<Box<Sleep>>,
        period: Duration,
        header_ticks: u32,
        idle_ticks: u32,
        waiting: Waiting,
        // Bytes moved since the last tick.
        moved: bool,
    }
}

impl<T> BoundedIo<T> {
    pub(crate) fn new(
        inner: T,
        activity: Arc<Activity>,
        header_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> Self {
        let period = header_timeout.min(keepalive_timeout) / TICKS_PER_BOUND;
        let ticks = |bound: Duration| {
            u32::try_from(bound.as_nanos().div_ceil(period.as_nanos().max(1))).unwrap_or(u32::MAX)
        };
        Self {
            inner,
            activity,
            tick: Box::pin(tokio::time::sleep(period)),
            period,
            header_ticks: ticks(header_timeout),
            idle_ticks: ticks(keepalive_timeout),
            // A connection that sends nothing at all is held to the header bound.
            waiting: Waiting::Head { after: 0, ticks: 0 },
            moved: false,
        }
    }
}

impl<T> BoundedIo<T> {
    /// What a tick of the timer found: `Err` when a bound has passed.
    fn on_tick(
        waiting: &mut Waiting,
        moved: &mut bool,
        (started, finished): (u64, u64),
        (header_ticks, idle_ticks): (u32, u32),
    ) -> io::Result<()> {
        let busy = started != finished;
        *waiting = match *waiting {
            _ if busy => Waiting::Service,
            // The head that was awaited has reached the service since.
            Waiting::Head { after, .. } if started != after => Waiting::Idle { ticks: 0 },
            Waiting::Head { after, ticks } => Waiting::Head {
                after,
                ticks: ticks + 1,
            },
            Waiting::Service => Waiting::Idle { ticks: 0 },
            Waiting::Idle { .. } if *moved => Waiting::Idle { ticks: 0 },
            Waiting::Idle { ticks } => Waiting::Idle { ticks: ticks + 1 },
        };
        *moved = false;
        match *waiting {
            Waiting::Head { ticks, .. } if ticks >= header_ticks => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request head did not arrive in time",
            )),
            Waiting::Idle { ticks } if ticks >= idle_ticks => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was idle too long",
            )),
            _ => Ok(()),
        }
    }
}

impl<T: AsyncRead> AsyncRead for BoundedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                *this.moved = true;
                let (started, finished) = this.activity.counts();
                let new_head = match *this.waiting {
                    Waiting::Head { after, .. } => after != started,
                    Waiting::Idle { .. } | Waiting::Service => true,
                };
                if new_head && started == finished {
                    *this.waiting = Waiting::Head {
                        after: started,
                        ticks: 0,
                    };
                }
            }
            return polled;
        }
        while this.tick.as_mut().poll(cx).is_ready() {
            Self::on_tick(
                this.waiting,
                this.moved,
                this.activity.counts(),
                (*this.header_ticks, *this.idle_ticks),
            )?;
            let next = Instant::now() + *this.period;
            this.tick.as_mut().reset(next);
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
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            *this.moved = true;
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
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            *this.moved = true;
        }
        written
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
