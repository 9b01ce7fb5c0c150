//! Requests the proxy refuses before any cache lookup or upstream call: framing
//! and targets that RFC 9112 makes the client's error, or that a reverse proxy
//! has no business forwarding. Each is answered with a problem (RFC 9457) and
//! never reaches the upstream.
//!
//! | Request | Answer | Why |
//! |---|---|---|
//! | `CONNECT` | 501 | the proxy does not open tunnels |
//! | a target that is not a path: `*` (`OPTIONS *` included) | 400 | a server-wide request names no resource to forward (RFC 9112 §3.2.4) |
//! | an absolute target that is not `http://` or `https://` | 400 | no other scheme is served |
//! | HTTP/1.1 without `Host`, any version with several, or an invalid one | 400 | RFC 9112 §3.2 |
//! | a transfer coding other than `chunked` | 501 | RFC 9112 §6.1: codings the proxy cannot decode |
//!
//! ```
//! use revalidate_cli::serve::request_check::{Refusal, refusal};
//!
//! use http_body_util::Empty;
//!
//! let request = http::Request::get("/users/1").header("host", "api.test").body(Empty::<bytes::Bytes>::new()).unwrap();
//! assert_eq!(refusal(&request), None);
//! let request = http::Request::get("/users/1").body(Empty::<bytes::Bytes>::new()).unwrap();
//! assert_eq!(refusal(&request), Some(Refusal::MissingHost));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::header::{CONNECTION, HOST, HeaderValue, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use revalidate::{Problem, ResponseBody};
use tower::Service;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `CONNECT`.
    Tunnel,
    /// A target whose path is not absolute: the asterisk form `*`, or what an
    /// HTTP/2 request may carry in `:path`.
    NotAPath,
    /// An absolute target whose scheme is neither `http` nor `https`.
    ForeignScheme,
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// More than one `Host` line.
    SeveralHosts,
    /// A `Host`, or a target's authority, that is not `host[:port]`.
    InvalidHost,
    /// A transfer coding other than `chunked`.
    UnknownCoding,
}

impl Refusal {
    /// The status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Tunnel | Self::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
            Self::NotAPath
            | Self::ForeignScheme
            | Self::MissingHost
            | Self::SeveralHosts
            | Self::InvalidHost => StatusCode::BAD_REQUEST,
        }
    }

    /// What the problem's `detail` says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tunnel => "CONNECT is not supported: the proxy does not open tunnels",
            Self::NotAPath => "the target names no path to forward (such as *)",
            Self::ForeignScheme => "only http:// and https:// targets are served",
            Self::MissingHost => "an HTTP/1.1 request needs a Host header",
            Self::SeveralHosts => "a request carries one Host header, not several",
            Self::InvalidHost => "the Host header (or the target's authority) is not host[:port]",
            Self::UnknownCoding => "the only transfer coding accepted is chunked",
        }
    }

    fn response<B>(self) -> Response<ResponseBody<B>> {
        let mut response = Problem::new(self.status())
            .detail(self.as_str())
            .to_response()
            .map(ResponseBody::full);
        // A client that sends such requests is not one to keep a connection for,
        // and its body, if any, was never read (nginx closes after a 400 too).
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// Why `request` is refused, if it is.
pub fn refusal<B: http_body::Body>(request: &Request<B>) -> Option<Refusal> {
    refusal_after(request, &mut Vec::new())
}

/// [`refusal`], knowing that `valid_host` (empty at first) passed the check
/// before: a connection's requests name the same host, and it is checked once.
/// Updated when another valid host comes.
fn refusal_after<B: http_body::Body>(
    request: &Request<B>,
    valid_host: &mut Vec<u8>,
) -> Option<Refusal> {
    if request.method() == Method::CONNECT {
        return Some(Refusal::Tunnel);
    }
    let uri = request.uri();
    // Whatever the form (HTTP/2 gives every request a scheme), a forwarded target
    // is a path: `*` and `OPTIONS *` name none (RFC 9112 §3.2.4).
    if !uri.path().starts_with('/') {
        return Some(Refusal::NotAPath);
    }
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Some(Refusal::ForeignScheme);
    }
    if uri
        .authority()
        .is_some_and(|a| !is_host_and_port(a.as_str().as_bytes()))
    {
        return Some(Refusal::InvalidHost);
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => return Some(Refusal::MissingHost),
        (None, _) => {}
        (Some(_), Some(_)) => return Some(Refusal::SeveralHosts),
        // An empty `valid_host` is none: an empty Host is checked (and refused).
        (Some(host), None) if valid_host.is_empty() || host.as_bytes() != valid_host.as_slice() => {
            if !is_host_and_port(host.as_bytes()) {
                return Some(Refusal::InvalidHost);
            }
            valid_host.clear();
            valid_host.extend_from_slice(host.as_bytes());
        }
        (Some(_), None) => {}
    }
    // Only a request with a body has a coding to check; most have none.
    if request.body().is_end_stream() {
        return None;
    }
    let mut codings = request.headers().get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let only_chunked = codings.next().is_none()
            && first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        if !only_chunked {
            return Some(Refusal::UnknownCoding);
        }
    }
    None
}

/// `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a bracketed IP
/// literal or a non-empty registered name or IPv4 address, then an optional port
/// up to 65535.
fn is_host_and_port(value: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let literal_ok = !literal.is_empty() && literal.iter().all(|&b| IP_LITERAL[usize::from(b)]);
        match &rest[end + 1..] {
            [] => (literal_ok, &[][..]),
            [b':', port @ ..] => (literal_ok, port),
            _ => return false,
        }
    } else {
        // One pass, as this runs on every request: name bytes up to one `:`.
        let mut colon = None;
        for (at, &b) in value.iter().enumerate() {
            if b == b':' {
                if colon.replace(at).is_some() {
                    return false;
                }
            } else if !REG_NAME[usize::from(b)] {
                return false;
            }
        }
        match colon {
            Some(at) => (at > 0, &value[at + 1..]),
            None => (!value.is_empty(), &[][..]),
        }
    };
    // An empty port is allowed (RFC 3986 §3.2.3); a present one fits in 16 bits.
    host_ok
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65_535
}

/// Bytes of a registered name or IPv4 address: unreserved, sub-delims and `%` of
/// pct-encoded (RFC 3986 §3.2.2). A table: this runs on every request.
static REG_NAME: [bool; 256] = byte_table(b"-._~%!$&'()*+,;=");

/// Bytes of an IP literal between brackets: IPv6 (hex digits, `:`, `.` of an
/// embedded IPv4) or IPvFuture's `v`.
static IP_LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_hexdigit() || c == b':' || c == b'.' || c == b'v' || c == b'V';
        b += 1;
    }
    table
};

/// ASCII letters and digits, and `extra`.
const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// `inner`, behind the refusals of [`refusal`].
#[derive(Debug, Clone)]
pub struct RequestCheck<S> {
    inner: S,
    /// The last `Host` that passed the check.
    valid_host: Vec<u8>,
}

impl<S> RequestCheck<S> {
    /// Checks requests before `inner` sees them.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            valid_host: Vec::new(),
        }
    }
}

impl<S, B> Service<Request<Body>> for RequestCheck<S>
where
    S: Service<Request<Body>, Response = Response<ResponseBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CheckFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match refusal_after(&request, &mut self.valid_host) {
            Some(refusal) => {
                tracing::debug!(method = %request.method(), uri = %request.uri(), reason = refusal.as_str(), "request refused");
                CheckFuture {
                    state: CheckState::Refused {
                        response: Some(refusal.response()),
                    },
                }
            }
            None => CheckFuture {
                state: CheckState::Passed {
                    future: self.inner.call(request),
                },
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestCheck`].
    pub struct CheckFuture<F, R> {
        #[pin]
        state: CheckState<F, R>,
    }
}

pin_project_lite::pin_project! {
    #[project = CheckProjection]
    enum CheckState<F, R> {
        Refused { response: Option<R> },
        Passed { #[pin] future: F },
    }
}

impl<F, R, E> Future for CheckFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            CheckProjection::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            CheckProjection::Passed { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> Option<Refusal> {
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        // A body: the coding is only checked where one can follow.
        refusal(&builder.body(String::from("x")).unwrap())
    }

    #[test]
    fn hosts_follow_rfc_9112() {
        use Refusal::*;
        let v11 = Version::HTTP_11;
        /// Request headers, the version, and what is expected of them.
        type Case<'a> = (&'a [(&'a str, &'a str)], Version, Option<Refusal>);
        let cases: [Case<'_>; 17] = [
            (&[("host", "api.test")], v11, None),
            (&[("host", "api.test:8080")], v11, None),
            (&[("host", "127.0.0.1:80")], v11, None),
            (&[("host", "[::1]:8080")], v11, None),
            (&[("host", "[::1]")], v11, None),
            (&[], v11, Some(MissingHost)),
            (&[], Version::HTTP_10, None),
            (&[], Version::HTTP_2, None),
            (
                &[("host", "a.test"), ("host", "b.test")],
                v11,
                Some(SeveralHosts),
            ),
            (&[("host", "")], v11, Some(InvalidHost)),
            (&[("host", "a b")], v11, Some(InvalidHost)),
            (&[("host", "user@a.test")], v11, Some(InvalidHost)),
            (&[("host", "a.test:80x")], v11, Some(InvalidHost)),
            (&[("host", "a.test:65536")], v11, Some(InvalidHost)),
            (&[("host", "a:b:80")], v11, Some(InvalidHost)),
            (&[("host", ":80")], v11, Some(InvalidHost)),
            (&[("host", "a.test/x")], v11, Some(InvalidHost)),
        ];
        for (headers, version, expected) in cases {
            assert_eq!(
                check("GET", "/", version, headers),
                expected,
                "{headers:?} {version:?}"
            );
        }
    }

    #[test]
    fn targets_and_methods_a_reverse_proxy_does_not_forward() {
        let host = [("host", "api.test")];
        let v11 = Version::HTTP_11;
        assert_eq!(
            check("CONNECT", "api.test:443", v11, &host),
            Some(Refusal::Tunnel)
        );
        assert_eq!(check("GET", "*", v11, &host), Some(Refusal::NotAPath));
        assert_eq!(check("OPTIONS", "*", v11, &host), Some(Refusal::NotAPath));
        assert_eq!(
            check("GET", "ftp://api.test/x", v11, &host),
            Some(Refusal::ForeignScheme)
        );
        assert_eq!(
            check("GET", "http://user@api.test/x", v11, &host),
            Some(Refusal::InvalidHost)
        );
        assert_eq!(check("GET", "http://api.test/x", v11, &host), None);
        assert_eq!(check("GET", "https://api.test/x", v11, &host), None);
        assert_eq!(check("OPTIONS", "/x", v11, &host), None);
        // HTTP/2 requests carry a scheme and authority: `*` is still no path.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(http::uri::Authority::from_static("api.test"));
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("*"));
        let request = Request::builder()
            .method("OPTIONS")
            .uri(http::Uri::from_parts(parts).unwrap())
            .version(Version::HTTP_2)
            .body(String::new())
            .unwrap();
        assert_eq!(refusal(&request), Some(Refusal::NotAPath));
    }

    #[test]
    fn a_host_checked_once_per_connection_is_checked_again_when_it_changes() {
        let mut valid = Vec::new();
        let get = |host: &str| {
            Request::get("/")
                .header("host", host)
                .body(String::new())
                .unwrap()
        };
        assert_eq!(refusal_after(&get("a.test"), &mut valid), None);
        assert_eq!(valid, b"a.test");
        assert_eq!(refusal_after(&get("a.test"), &mut valid), None);
        assert_eq!(
            refusal_after(&get("a b"), &mut valid),
            Some(Refusal::InvalidHost)
        );
        assert_eq!(valid, b"a.test", "only valid hosts are remembered");
    }

    #[test]
    fn only_chunked_is_a_known_coding() {
        let v11 = Version::HTTP_11;
        let with = |te: &str| {
            check(
                "POST",
                "/",
                v11,
                &[("host", "a"), ("transfer-encoding", te)],
            )
        };
        assert_eq!(with("chunked"), None);
        assert_eq!(with("Chunked "), None);
        assert_eq!(with("gzip, chunked"), Some(Refusal::UnknownCoding));
        assert_eq!(with("chunked, chunked"), Some(Refusal::UnknownCoding));
        let two = check(
            "POST",
            "/",
            v11,
            &[
                ("host", "a"),
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(two, Some(Refusal::UnknownCoding));
        // Without a body, there is nothing to decode.
        let request = Request::post("/")
            .header("host", "a")
            .header("transfer-encoding", "gzip")
            .body(String::new())
            .unwrap();
        assert_eq!(refusal(&request), None);
    }
}
