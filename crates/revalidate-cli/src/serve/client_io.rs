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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const HEADER: Duration = Duration::from_secs(4);
    const IDLE: Duration = Duration::from_secs(8);

    fn connection() -> (DuplexStream, BoundedIo<DuplexStream>, Arc<Activity>) {
        let (client, server) = tokio::io::duplex(4096);
        let activity = Activity::new();
        let io = BoundedIo::new(server, activity.clone(), HEADER, IDLE);
        (client, io, activity)
    }

    /// Reads until the bound closes the connection; how long that took.
    async fn time_to_close(io: &mut BoundedIo<DuplexStream>) -> Duration {
        let started = Instant::now();
        let mut buffer = [0; 64];
        loop {
            match io.read(&mut buffer).await {
                Ok(0) => panic!("the client closed"),
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                    return started.elapsed();
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_held_to_the_header_bound() {
        let (_client, mut io, _) = connection();
        let lasted = time_to_close(&mut io).await;
        assert!(lasted > HEADER * 3 / 4 && lasted <= HEADER, "{lasted:?}");
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
}
