//! A body whose every poll is told to a watcher: how the proxy follows a body's
//! progress (the bytes an access line counts, whether a client takes its
//! response, how far an upload has gone) with one wrapper type for all.
//!
//! ```text
//! struct Counted(u64);
//! impl<D: bytes::Buf> BodyWatcher<D> for Counted {
//!     fn polled<E>(&mut self, polled: &Poll<Option<Result<Frame<D>, E>>>) {
//!         if let Poll::Ready(Some(Ok(frame))) = polled {
//!             self.0 += frame.data_ref().map_or(0, |d| d.remaining() as u64);
//!         }
//!     }
//! }
//! let body = WatchedBody::new(body, Counted(0));
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// What a [`WatchedBody`] tells of its body.
pub trait BodyWatcher<D> {
    /// The body was polled and answered `polled`.
    fn polled<E>(&mut self, polled: &Poll<Option<Result<Frame<D>, E>>>);
}

pin_project_lite::pin_project! {
    /// `inner`, whose polls `watcher` sees.
    pub struct WatchedBody<B, W> {
        #[pin]
        inner: B,
        watcher: W,
    }
}

impl<B, W> WatchedBody<B, W> {
    /// `inner`, watched by `watcher`.
    pub fn new(inner: B, watcher: W) -> Self {
        Self { inner, watcher }
    }
}

impl<B, W> std::fmt::Debug for WatchedBody<B, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedBody").finish_non_exhaustive()
    }
}

impl<B: Body, W: BodyWatcher<B::Data>> Body for WatchedBody<B, W> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        this.watcher.polled(&polled);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
