//! One measured exchange: a GET on the shared keep-alive client, its response read whole.

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one exchange may take before it counts as an error: a stalled
/// endpoint then slows the run down instead of hanging it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The client every request of a run goes through. hyper-util's legacy client adds
/// nothing but `Host`, never decompresses and keeps connections alive, so what is
/// counted is what the endpoint sends to any plain HTTP client.
#[derive(Clone, Debug)]
pub(crate) struct BenchClient {
    inner: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

/// A response as received, with its size on the wire and its latency.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The status line, the header lines and the blank line that ends them.
    pub(crate) head_bytes: u64,
    /// From sending the request to the last byte of the body.
    pub(crate) latency: Duration,
}

impl Exchange {
    /// The head and the body: what the endpoint sent for this request.
    pub(crate) fn wire_bytes(&self) -> u64 {
        self.head_bytes + self.body.len() as u64
    }

    /// The first value of `name` as text, if it is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why an exchange has no response.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Connecting, sending or reading the head failed.
    Client(hyper_util::client::legacy::Error),
    /// The body broke off.
    Body(hyper::Error),
    /// No complete response within [`EXCHANGE_TIMEOUT`].
    Timeout,
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The legacy client's own message ("client error (Connect)") names no
            // cause; its sources do ("tcp connect error: Connection refused").
            Self::Client(error) => f.write_str(&causes(error)),
            Self::Body(error) => write!(f, "the body broke off: {}", causes(error)),
            Self::Timeout => write!(
                f,
                "no complete response within {}s",
                EXCHANGE_TIMEOUT.as_secs()
            ),
        }
    }
}

impl StdError for ExchangeError {}

/// The error's sources, innermost last, on one line; the error itself only when
/// it has no source.
fn causes(error: &(dyn StdError + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

impl BenchClient {
    /// A client for http URLs and, with `tls`, https URLs checked against the
    /// system's roots.
    pub(crate) fn new(tls: bool) -> std::io::Result<Self> {
        // The trust `revalidate serve` gives https:// upstreams. Without https
        // URLs no roots are read, so a machine without a CA bundle can still
        // measure http endpoints.
        let config = if tls {
            crate::serve::tls::upstream_config(None).map_err(std::io::Error::other)?
        } else {
            crate::serve::tls::no_roots_config()
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { inner })
    }

    /// A GET of `uri` with exactly `headers` (and `Host`), read whole.
    pub(crate) async fn get(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Exchange, ExchangeError> {
        let mut request = Request::get(uri.clone())
            .body(Empty::new())
            .expect("a GET of a parsed URI");
        *request.headers_mut() = headers.clone();
        let started = Instant::now();
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(ExchangeError::Client)?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(ExchangeError::Body)?
                .to_bytes();
            let reason = parts
                .extensions
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes().len())
                .unwrap_or_else(|| parts.status.canonical_reason().unwrap_or("").len());
            Ok(Exchange {
                head_bytes: head_bytes(parts.version, reason, &parts.headers),
                status: parts.status,
                headers: parts.headers,
                body,
                latency: started.elapsed(),
            })
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(ExchangeError::Timeout))
    }
}

/// The bytes of an HTTP/1.x head: `HTTP/1.1 200 OK` CRLF, then `name: value` CRLF
/// for each field, then CRLF. The parser drops the whitespace around values and
/// lower-cases names, which keeps their length; obsolete line folding (RFC 9112
/// §5.2) is the only spelling counted shorter than sent.
pub(crate) fn head_bytes(version: Version, reason_len: usize, headers: &HeaderMap) -> u64 {
    let version_len = if version == Version::HTTP_2 || version == Version::HTTP_3 {
        "HTTP/2".len()
    } else {
        "HTTP/1.1".len()
    };
    // "HTTP/1.1" SP "200" SP reason CRLF
    let status_line = version_len + 1 + 3 + 1 + reason_len + 2;
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    (status_line + fields + 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_count_the_status_line_fields_and_the_blank_line() {
        let mut headers = HeaderMap::new();
        headers.insert("etag", "\"v1\"".parse().unwrap());
        headers.insert("content-length", "2".parse().unwrap());
        let sent = "HTTP/1.1 200 OK\r\netag: \"v1\"\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(head_bytes(Version::HTTP_11, 2, &headers), sent.len() as u64);
    }
}
