//! Helpers for `bench/run.sh`: the objects served by the benchmark origin and
//! by the bare hyper server, and a minimal HTTP/1.1 accept loop.
//!
//! `/obj/N` is a 5120-byte body that differs per `N`, served with
//! `Cache-Control: public, max-age=3600`, a strong `ETag` and
//! `Content-Type: application/octet-stream`; `If-None-Match` gets a 304.

// Only the binaries name an unsafe symbol (jemalloc's options); the libraries never.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    AGE, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderName, HeaderValue, IF_NONE_MATCH,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Size of every object's body, in bytes.
pub const BODY_LEN: usize = 5120;

/// `Cache-Control` sent with every object.
pub const CACHE_CONTROL_VALUE: &str = "public, max-age=3600";

/// `Content-Type` sent with every object.
pub const CONTENT_TYPE_VALUE: &str = "application/octet-stream";

/// The body of `/obj/{n}`: a first line naming the object, then a filler
/// pattern that depends on `n`, [`BODY_LEN`] bytes in all.
pub fn body(n: u64) -> Bytes {
    // Exact capacity: `Bytes::from(Vec)` keeps the whole allocation alive.
    let mut out = Vec::with_capacity(BODY_LEN);
    out.extend_from_slice(format!("object {n}\n").as_bytes());
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < BODY_LEN {
        // xorshift64: cheap, deterministic, different for every n.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(b'a' + (state % 26) as u8);
    }
    out.truncate(BODY_LEN);
    Bytes::from(out)
}

/// The strong entity tag of `/obj/{n}`, quotes included.
pub fn etag(n: u64) -> String {
    format!("\"obj-{n}-v1\"")
}

/// The `N` of a path `/obj/N`, if that is what the path is.
pub fn object_number(path: &str) -> Option<u64> {
    let digits = path.strip_prefix("/obj/")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, `*` matches).
pub fn if_none_match(header: &HeaderValue, etag: &str) -> bool {
    let Ok(value) = header.to_str() else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The object's response: 304 when `If-None-Match` matches, else 200 with the body.
pub fn object_response<B>(
    req: &Request<B>,
    body: Bytes,
    etag: HeaderValue,
) -> Response<Full<Bytes>> {
    let not_modified = req
        .headers()
        .get(IF_NONE_MATCH)
        .is_some_and(|v| if_none_match(v, etag.to_str().unwrap_or_default()));
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (StatusCode::OK, body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL_VALUE));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_VALUE));
    headers.insert(ETAG, etag);
    response
}

/// What `bench-bare` holds: the body and `ETag` of `/obj/0` .. `/obj/{objects-1}`,
/// computed once.
pub fn bare_table(objects: u64) -> Vec<(Bytes, HeaderValue)> {
    (0..objects)
        .map(|n| {
            let tag = HeaderValue::from_str(&etag(n)).expect("an ETag is a valid header value");
            (body(n), tag)
        })
        .collect()
}

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What revalidate sends on a hit of an object stored with `max-age=3600` a
/// second or two before.
const HIT: &str = "revalidate; hit; ttl=3598";

/// `bench-bare`'s answer from its table: the bytes of a revalidate hit (the
/// origin's fields plus a fixed `Age` and a `Cache-Status` of the same length as
/// the cache's), or `None` for a path that names no object in it.
pub fn bare_answer<B>(
    req: &Request<B>,
    table: &[(Bytes, HeaderValue)],
) -> Option<Response<Full<Bytes>>> {
    let n = usize::try_from(object_number(req.uri().path())?).ok()?;
    let (body, tag) = table.get(n)?;
    let mut response = object_response(req, body.clone(), tag.clone());
    let headers = response.headers_mut();
    headers.insert(AGE, HeaderValue::from_static("1"));
    headers.insert(CACHE_STATUS.clone(), HeaderValue::from_static(HIT));
    Some(response)
}

/// 404 for anything but `/obj/N`.
pub fn not_found() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// The value of `--listen ADDR` in the process arguments.
pub fn listen_arg(program: &str) -> SocketAddr {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr] if flag == "--listen" => addr.parse().unwrap_or_else(|e| {
            eprintln!("{program}: bad address {addr:?}: {e}");
            std::process::exit(2)
        }),
        _ => {
            eprintln!("usage: {program} --listen ADDR");
            std::process::exit(2)
        }
    }
}

/// Accept HTTP/1.1 connections on `addr` forever, answering each request with `handler`.
pub async fn serve<F, Fut>(program: &str, addr: SocketAddr, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    println!("{program}: listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("{program}: accept: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            // Client resets are routine under load; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_differ_and_have_the_right_size() {
        assert_eq!(body(0).len(), BODY_LEN);
        assert_eq!(body(99_999).len(), BODY_LEN);
        assert_ne!(body(1), body(2));
        assert_eq!(body(7), body(7));
    }

    #[test]
    fn paths_and_validators() {
        assert_eq!(object_number("/obj/42"), Some(42));
        assert_eq!(object_number("/obj/"), None);
        assert_eq!(object_number("/obj/4x"), None);
        assert_eq!(object_number("/other/1"), None);
        let tag = etag(3);
        assert!(if_none_match(
            &HeaderValue::from_static("\"obj-3-v1\""),
            &tag
        ));
        assert!(if_none_match(
            &HeaderValue::from_static("\"x\", W/\"obj-3-v1\""),
            &tag
        ));
        assert!(if_none_match(&HeaderValue::from_static("*"), &tag));
        assert!(!if_none_match(
            &HeaderValue::from_static("\"obj-4-v1\""),
            &tag
        ));
    }
}
