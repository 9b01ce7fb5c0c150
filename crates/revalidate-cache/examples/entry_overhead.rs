//! Measures what the in-memory store costs per entry beyond the body bytes.
//!
//! `cargo run --release -p revalidate-cache --example entry_overhead [ENTRIES] [BODY_BYTES]`
//!
//! Stores ENTRIES responses (default 100,000 of 5 KiB) with realistic headers
//! through the cache layer's store and reports resident memory before and after.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use revalidate_cache::entry::{StoredResponse, Timing, Variants};
use revalidate_cache::key::Secondary;
use revalidate_cache::{MemoryStore, Store};

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
    let before = rss_bytes();
    let now = SystemTime::now();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("cache-control", "public, max-age=3600".parse().unwrap());
    headers.insert("date", "Mon, 23 Nov 2026 12:00:00 GMT".parse().unwrap());
    headers.insert("content-length", body_len.into());
    for i in 0..entries {
        let mut h = headers.clone();
        h.insert("etag", format!("\"{i:016x}\"").parse().unwrap());
        let mut body = vec![b'x'; body_len];
        body[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let timing = Timing::fresh_for(Duration::from_secs(3600), now);
        let path = format!("/obj/{i}");
        let entry = StoredResponse::new(
            StatusCode::OK,
            h,
            Bytes::from(body),
            timing,
            Secondary::default(),
            vec![],
            Arc::from(path.as_str()),
        );
        let variants = Variants::new(vec![], vec![Arc::new(entry)]);
        store.put(format!("127.0.0.1{path}"), variants).await;
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
