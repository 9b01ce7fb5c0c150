//! Measures what the in-memory store costs per entry beyond the body bytes.
//!
//! `cargo run --release -p revalidate-cache --example entry_overhead [ENTRIES] [BODY_BYTES]`
//!
//! Sends ENTRIES misses (default 100,000 of 5 KiB) with realistic headers through
//! the cache layer, so that each response is stored as a proxy stores it, and
//! reports resident memory before and after. It allocates with jemalloc, as the
//! `revalidate` binary does: what an entry costs depends on the allocator's size
//! classes and per-allocation headers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use revalidate_cache::{Cache, MemoryStore, Store};
use tower::{Layer, ServiceExt, service_fn};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let body_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5 * 1024);
    let store = MemoryStore::new(u64::MAX / 2);
    let origin = service_fn(move |request: Request<Full<Bytes>>| async move {
        let i: u64 = request
            .uri()
            .path()
            .trim_start_matches("/obj/")
            .parse()
            .unwrap_or(0);
        let mut body = vec![b'x'; body_len];
        body[..8].copy_from_slice(&i.to_le_bytes());
        let response = Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "public, max-age=3600")
            .header("date", "Mon, 23 Nov 2026 12:00:00 GMT")
            .header("content-length", body_len)
            .header("etag", format!("\"{i:016x}\""))
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    let cache = Cache::builder(store.clone()).build();
    let service = cache.layer().layer(origin);
    let before = rss_bytes();
    for i in 0..entries {
        let request = Request::get(format!("http://127.0.0.1/obj/{i}"))
            .body(Full::default())
            .expect("a valid request");
        let response = service.clone().oneshot(request).await.expect("infallible");
        // The answer is dropped unread: the stored copy is what is measured.
        drop(response);
    }
    let after = rss_bytes();
    let usage = store.usage();
    let per_entry = (after - before) as f64 / entries as f64;
    println!("entries stored:            {}", usage.entries);
    println!("body bytes per entry:      {body_len}");
    println!("RSS growth per entry:      {per_entry:.0} bytes");
    println!(
        "overhead beyond the body:  {:.0} bytes per entry",
        per_entry - body_len as f64
    );
    println!(
        "budget charged per entry:  {} bytes",
        usage.bytes / usage.entries.max(1)
    );
}
