//! `bench-bare --listen ADDR [--objects N]`: the ceiling. The bytes and headers
//! of `/obj/0` .. `/obj/{N-1}` (default 100,000) are computed once at start and
//! served straight from memory, with no cache logic in between.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
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
                Some((body, tag)) => object_response(&req, body.clone(), tag.clone()),
                None => not_found(),
            }
        }
    }))
}
