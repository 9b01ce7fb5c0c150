//! `bench-bare --listen ADDR [--objects N]`: the ceiling. The bytes and headers
//! of `/obj/0` .. `/obj/{N-1}` (default 100,000) are computed once at start and
//! served straight from memory, with no cache logic in between.
//!
//! Its answers are the bytes of a revalidate hit: the origin's fields plus a fixed
//! `Age` and `Cache-Status` of the same length as the cache's, so the comparison
//! is of the work around those bytes.

use std::sync::Arc;

use revalidate_bench::{bare_answer, bare_table, not_found, serve};

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
    let table = Arc::new(bare_table(objects));
    tokio::runtime::Runtime::new()?.block_on(serve("bench-bare", addr, move |req| {
        let table = Arc::clone(&table);
        async move { bare_answer(&req, &table).unwrap_or_else(not_found) }
    }))
}
