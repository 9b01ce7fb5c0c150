//! The response body of the layers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

/// The error type of [`ResponseBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The response body of this crate's layers (and of `revalidate-cache`): bytes
    /// in memory (a buffered or stored body, a problem, nothing for 304 and HEAD), or
    /// the inner service's body streamed through, possibly after bytes already read
    /// while trying to buffer it.
    pub struct ResponseBody<B> {
        prefix: Option<Bytes>,
        #[pin]
        rest: Option<B>,
        error: Option<BoxError>,
    }
}

impl<B> ResponseBody<B> {
    /// A whole body in memory.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            prefix: (!bytes.is_empty()).then_some(bytes),
            rest: None,
            error: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self {
            prefix: None,
            rest: None,
            error: None,
        }
    }

    /// The inner service's body, streamed through untouched.
    pub fn streaming(body: B) -> Self {
        Self {
            prefix: None,
            rest: Some(body),
            error: None,
        }
    }

    /// `prefix` (already read), then the rest of `body`.
    pub fn prefixed(prefix: Bytes, body: B) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest: Some(body),
            error: None,
        }
    }

    /// A body that fails at once with `error`: how a body error met while
    /// buffering reaches the server, as it would have without the layer.
    pub fn failed(error: BoxError) -> Self {
        Self {
            prefix: None,
            rest: None,
            error: Some(error),
        }
    }
}

impl<B> Body for ResponseBody<B>
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
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => rest.poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.error.is_none()
            && self.prefix.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + prefix);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + prefix);
                }
                out
            }
        }
    }
}

/// Why [`collect_up_to`] gave no whole body.
#[derive(Debug)]
pub enum Uncollected<B> {
    /// The body is longer than the limit: the bytes read so far, and the body,
    /// unread from there on (a [`ResponseBody::prefixed`] sends both on).
    TooLarge(Bytes, B),
    /// The body failed.
    Failed(BoxError),
}

/// Reads `body` whole if it fits in `limit` bytes; trailers are dropped. A body
/// whose size hint already exceeds the limit is not read at all.
///
/// ```
/// # tokio_test_block_on(async {
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use revalidate::body::{Uncollected, collect_up_to};
///
/// let whole = collect_up_to(Full::new(Bytes::from("hello")), 5).await.unwrap();
/// assert_eq!(whole, "hello");
/// let Err(Uncollected::TooLarge(read, _rest)) = collect_up_to(Full::new(Bytes::from("hello")), 4).await else {
///     panic!("over the limit");
/// };
/// assert!(read.is_empty(), "its size hint said so: nothing read");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub async fn collect_up_to<B>(mut body: B, limit: usize) -> Result<Bytes, Uncollected<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(Uncollected::TooLarge(Bytes::new(), body));
    }
    let expected = body.size_hint().exact().unwrap_or(0).min(limit as u64) as usize;
    let mut collected = BytesMut::with_capacity(expected);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Uncollected::Failed(e.into()))?;
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
            if collected.len() > limit {
                return Err(Uncollected::TooLarge(collected.freeze(), body));
            }
        }
    }
    Ok(collected.freeze())
}
