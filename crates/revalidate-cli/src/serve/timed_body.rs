//! A body that must keep moving: each frame has to arrive within a bound of the
//! previous one (nginx's `client_body_timeout` and `proxy_read_timeout`), and what
//! went wrong with a client's body is recorded, so that it is answered as the
//! client's fault (400, 408) rather than blamed on the upstream.
//!
//! ```
//! # async fn run() {
//! use std::time::Duration;
//! use http_body_util::BodyExt;
//! use revalidate_cli::serve::timed_body::{BodyFault, Sender, TimedBody};
//!
//! let (body, fault) = TimedBody::new(axum::body::Body::from("x"), Duration::from_secs(30), Sender::Client);
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "x");
//! assert_eq!(fault.get(), None);
//! # }
//! ```

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use revalidate_cache::BoxError;
use tokio::time::{Instant, Sleep};

/// Who sends the body: the message of a timeout names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The client's request body.
    Client,
    /// The upstream's response body.
    Upstream,
}

/// What went wrong while reading a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// No frame arrived within the bound.
    Stalled,
    /// The body's framing or transfer failed (a malformed chunk, a reset).
    Broken,
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the {sender} sent no body data for {limit:?}")]
pub struct Stalled {
    sender: &'static str,
    limit: Duration,
}

/// Shared with the reader: what happened to the body, if anything did.
pub type FaultCell = Arc<OnceLock<BodyFault>>;

pin_project_lite::pin_project! {
    /// `inner`, failing with [`Stalled`] when no frame arrives for `limit`.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        limit: Duration,
        sender: Sender,
        // Made at the first wait, then set again at the first wait after each
        // frame: a body that arrives in one piece never arms a timer, and time the
        // reader spends elsewhere between frames (a slow client downstream) does
        // not count.
        sleep: Option<Pin<Box<Sleep>>>,
        armed: bool,
        fault: FaultCell,
    }
}

impl<B> TimedBody<B> {
    /// `inner` bounded by `limit` between frames, and the cell its fault goes to.
    pub fn new(inner: B, limit: Duration, sender: Sender) -> (Self, FaultCell) {
        let fault = FaultCell::default();
        let body = Self {
            inner,
            limit,
            sender,
            sleep: None,
            armed: false,
            fault: fault.clone(),
        };
        (body, fault)
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let _ = this.fault.set(BodyFault::Broken);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let limit = *this.limit;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if !*this.armed {
                    *this.armed = true;
                    sleep.as_mut().reset(Instant::now() + limit);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let _ = this.fault.set(BodyFault::Stalled);
                let sender = match this.sender {
                    Sender::Client => "client",
                    Sender::Upstream => "upstream",
                };
                Poll::Ready(Some(Err(Box::new(Stalled { sender, limit }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// Sends one frame, then nothing.
    struct Stalling {
        sent: bool,
    }

    impl Body for Stalling {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_sending_fails_after_the_bound() {
        let inner = Stalling { sent: false };
        let (mut body, fault) = TimedBody::new(inner, Duration::from_secs(60), Sender::Upstream);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(
            error.to_string().contains("upstream sent no body data"),
            "{error}"
        );
        assert_eq!(fault.get(), Some(&BodyFault::Stalled));
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_moves_the_deadline() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
        let (body, fault) = TimedBody::new(
            ChannelBody { receiver },
            Duration::from_secs(10),
            Sender::Client,
        );
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(8)).await;
                sender.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "xxx", "24 s in all, never 10 s between frames");
        assert_eq!(fault.get(), None);
    }

    #[tokio::test]
    async fn a_broken_body_is_recorded() {
        let inner = ErrorOnce;
        let (mut body, fault) = TimedBody::new(inner, Duration::from_secs(10), Sender::Client);
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(fault.get(), Some(&BodyFault::Broken));
    }

    struct ErrorOnce;

    impl Body for ErrorOnce {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Err(std::io::Error::other("bad chunk"))))
        }
    }

    /// Frames from a channel, ending when its senders are gone.
    struct ChannelBody {
        receiver: tokio::sync::mpsc::Receiver<Bytes>,
    }

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.receiver
                .poll_recv(cx)
                .map(|bytes| bytes.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_elsewhere_does_not_count() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
        let (mut body, _) = TimedBody::new(
            ChannelBody { receiver },
            Duration::from_secs(10),
            Sender::Upstream,
        );
        sender.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The reader is away for longer than the bound; the next frame was there.
        tokio::time::sleep(Duration::from_secs(30)).await;
        sender.send(Bytes::from_static(b"b")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let waiting = tokio::time::timeout(Duration::from_secs(5), body.frame()).await;
        assert!(
            waiting.is_err(),
            "5 s of a real wait is within the 10 s bound"
        );
        drop(sender);
    }
}
