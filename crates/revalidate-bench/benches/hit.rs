//! A cache hit's cost in process, over one URL and over many, beside the bare
//! lookup that `bench-bare` does: the user-space half of `bench/run.sh`'s hit
//! scenarios, without the sockets and the load generator that make those noisy.
//!
//! Run with `cargo bench -p revalidate-bench --bench hit`. Every key is stored
//! first; each iteration then asks for the next URL of a fixed random sequence
//! over the keys, so with many keys a hit reads memory that is not in the CPU's
//! caches, as it does on the proxy under load. Both sides answer the same bytes:
//! the origin's fields plus `Age` and `Cache-Status`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::header::HeaderValue;
use http::{Request, Uri};
use http_body_util::Full;
use revalidate_bench::{bare_answer, bare_table, body, etag, object_number, object_response};
use revalidate_cache::{Cache, MemoryStore};
use tower::{Layer, Service, ServiceExt, service_fn};

// The proxy's allocator and its options (see `revalidate-cli/src/main.rs`), so
// that the entries lie in memory as they do there. Without huge pages:
// `_RJEM_MALLOC_CONF=thp:default,metadata_thp:disabled cargo bench ...`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// SAFETY: jemalloc reads this C string once, at its start, and never writes it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 31] = b"thp:always,metadata_thp:always\0";

/// Numbers of distinct URLs: one hot URL, `bench/run.sh`'s 10,000, and ten times more.
const KEY_COUNTS: [u64; 3] = [1, 10_000, 100_000];

/// Least length of the random sequence of URLs the iterations cycle through.
const MIN_SEQUENCE_LEN: usize = 1 << 16;

/// The URIs of a fixed pseudo-random sequence over `/obj/0` .. `/obj/{keys-1}`:
/// shuffled rounds of every key, so that each key is asked for as often as any
/// other, however many keys there are, and the sequence holds at least
/// [`MIN_SEQUENCE_LEN`] of them.
fn sequence(keys: u64) -> Vec<Uri> {
    // xorshift64: deterministic, so both sides see the same sequence.
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let keys = usize::try_from(keys).unwrap();
    let rounds = MIN_SEQUENCE_LEN.div_ceil(keys);
    let mut order: Vec<usize> = (0..keys).collect();
    let mut uris = Vec::with_capacity(rounds * keys);
    for _ in 0..rounds {
        // Fisher-Yates.
        for i in (1..keys).rev() {
            let j = usize::try_from(random() % (i as u64 + 1)).unwrap();
            order.swap(i, j);
        }
        let round = order.iter().map(|n| format!("http://bench/obj/{n}"));
        uris.extend(round.map(|uri| uri.parse::<Uri>().unwrap()));
    }
    uris
}

fn get(uri: &Uri) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::default());
    *request.uri_mut() = uri.clone();
    request
}

/// Polls a future that is ready at once (a hit, the bare lookup) to its output.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a hit should be answered without waiting"),
    }
}

fn hits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("hit");
    for keys in KEY_COUNTS {
        let uris = sequence(keys);

        let origin = service_fn(|request: Request<Full<Bytes>>| async move {
            let n = object_number(request.uri().path()).unwrap();
            let tag = HeaderValue::from_str(&etag(n)).unwrap();
            Ok::<_, Infallible>(object_response(&request, body(n), tag))
        });
        let cache = Cache::builder(MemoryStore::new(2 << 30)).build();
        let mut proxy = cache.layer().layer(origin);
        runtime.block_on(async {
            for n in 0..keys {
                let uri: Uri = format!("http://bench/obj/{n}").parse().unwrap();
                let response = proxy.ready().await.unwrap().call(get(&uri)).await.unwrap();
                assert_eq!(response.status(), 200);
            }
        });
        // Every key is stored (none evicted) and is a hit.
        assert_eq!(cache.usage().entries, keys);
        let answer = ready(proxy.call(get(&uris[0]))).unwrap();
        let status = answer.headers()["cache-status"].to_str().unwrap();
        assert!(status.starts_with("revalidate; hit;"), "{status}");
        let misses = cache.stats().misses;
        let mut next = 0;
        group.bench_function(BenchmarkId::new("revalidate", keys), |b| {
            b.iter(|| {
                next = (next + 1) % uris.len();
                let response = ready(proxy.call(get(&uris[next]))).unwrap();
                black_box(response)
            })
        });
        assert_eq!(
            cache.stats().misses,
            misses,
            "every timed request was a hit"
        );

        // `bench-bare`'s handler: a table lookup and the same fields.
        let table = bare_table(keys);
        let mut bare = service_fn(|request: Request<Full<Bytes>>| {
            let response = bare_answer(&request, &table).expect("every key is in the table");
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let mut next = 0;
        group.bench_function(BenchmarkId::new("bare", keys), |b| {
            b.iter(|| {
                next = (next + 1) % uris.len();
                black_box(ready(bare.call(get(&uris[next]))).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hits);
criterion_main!(benches);
