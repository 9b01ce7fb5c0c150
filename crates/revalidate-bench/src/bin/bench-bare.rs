//! `bench-bare --listen ADDR [--objects N]`: the ceiling. The bytes and headers
//! of `/obj/0` .. `/obj/{N-1}` (default 100,000) are computed once at start and
//! served straight from memory, with no cache logic in between.
//!
//! Its answers are the bytes of a revalidate hit: the origin's fields plus a fixed
//! `Age` and `Cache-Status` of the same length as the cache's, so the comparison
//! is of the work around those bytes.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{AGE, HeaderName, HeaderValue};

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// What revalidate sends on a hit of an object stored with `max-age=3600` a
/// second or two before.
const HIT: &str = "revalidate; hit; ttl=3598";
use revalidate_bench::{body, etag, not_found, object_number, object_response, serve};

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut objects: u64 = 100_000;
    if let Some(i) = args.iter().position(|a| a == "--objects") {
        let value = args.get(i + 1).and_then(|v| v.parse().ok());
        let Some(value) = value else {
            eprintln!("usage: bench-bare --listen ADDR [--objects N]");
            std::process::exit(2)
        };
        objects = value;
        args.drain(i..i + 2);
    }
    let [flag, addr] = args.as_slice() else {
        eprintln!("usage: bench-bare --listen ADDR [--objects N]");
        std::process::exit(2)
    };
    let addr = match (flag.as_str(), addr.parse()) {
        ("--listen", Ok(addr)) => addr,
        _ => {
            eprintln!("usage: bench-bare --listen ADDR [--objects N]");
            std::process::exit(2)
        }
    };
    let table: Arc<Vec<(Bytes, HeaderValue)>> = Arc::new(
        (0..objects)
            .map(|n| {
                let tag = HeaderValue::from_str(&etag(n)).expect("an ETag is a valid header value");
                (body(n), tag)
            })
            .collect(),
    );
    tokio::runtime::Runtime::new()?.block_on(serve("bench-bare", addr, move |req| {
        let table = Arc::clone(&table);
        async move {
            let entry = object_number(req.uri().path())
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| table.get(n));
            match entry {
                Some((body, tag)) => {
                    let mut response = object_response(&req, body.clone(), tag.clone());
                    let headers = response.headers_mut();
                    headers.insert(AGE, HeaderValue::from_static("1"));
                    headers.insert(CACHE_STATUS.clone(), HeaderValue::from_static(HIT));
                    response
                }
                None => not_found(),
            }
        }
    }))
}
