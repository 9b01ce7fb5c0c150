//! Measures the shared tier: bytes Redis holds per stored response, and how
//! long a purge takes to reach every instance.
//!
//! `cargo run --release -p revalidate-cache --features redis --example redis_tier -- [REDIS_URL[,URL…]] [ENTRIES] [BODY_BYTES]`
//!
//! Stores ENTRIES responses (default 10,000 of 5 KiB) through the cache layer
//! into Redis (in a namespace of its own, deleted afterwards) and sums Redis's
//! `MEMORY USAGE` of every key it made (entries and indexes). Then starts three
//! instances (each a local tier over that Redis) and times 1,000 purges made
//! through one of them: each returns once the other two applied it to their
//! local tiers. Several URLs name the nodes of a Redis Cluster (sizes are then
//! not read).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use revalidate_cache::store::{RedisConfig, RedisStore, Tiered};
use revalidate_cache::{Cache, MemoryStore, Purge};
use tower::{Layer, ServiceExt, service_fn};

/// The keys of `namespace` on a server.
async fn keys_of(
    connection: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("*{namespace}*"))
        .query_async(connection)
        .await
        .unwrap_or_default()
}

/// Bytes Redis uses for every key of `namespace` (`MEMORY USAGE`: the value,
/// the key and Redis's own overhead), and how many keys there are.
async fn namespace_bytes(url: &str, namespace: &str) -> (u64, usize) {
    let client = redis::Client::open(url).expect("a redis:// URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys = keys_of(&mut connection, namespace).await;
    let mut bytes = 0;
    for key in &keys {
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut connection)
            .await
            .unwrap_or(None);
        bytes += usage.unwrap_or(0);
    }
    (bytes, keys.len())
}

async fn delete_namespace(url: &str, namespace: &str) {
    let client = redis::Client::open(url).expect("a redis:// URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for chunk in keys_of(&mut connection, namespace).await.chunks(1000) {
        let _: Result<u64, _> = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await;
    }
}

/// One server, or a cluster when `url` lists its nodes separated by commas.
fn store(url: &str, namespace: &str) -> RedisStore {
    let mut config = if url.contains(',') {
        RedisConfig::cluster(url.split(','))
    } else {
        RedisConfig::new(url)
    };
    config.namespace = namespace.into();
    config.timeout = Duration::from_secs(1);
    RedisStore::open(config).expect("redis:// URLs")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let entries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let body_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5 * 1024);
    let namespace = format!("sizing:{}:", std::process::id());
    let cluster = url.contains(',');

    let origin = service_fn(move |request: Request<Full<Bytes>>| async move {
        let mut body = vec![b'x'; body_len];
        let path = request.uri().path().as_bytes();
        let n = path.len().min(body_len);
        body[..n].copy_from_slice(&path[..n]);
        let response = Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "public, max-age=3600")
            .header("etag", format!("\"{:016x}\"", body.len()))
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    let cache = Cache::builder(store(&url, &namespace)).build();
    let service = cache.layer().layer(origin);
    for i in 0..entries {
        let request = Request::get(format!("http://127.0.0.1/obj/{i}"))
            .body(Full::default())
            .expect("a valid request");
        drop(service.clone().oneshot(request).await);
    }
    if !cluster {
        let (bytes, keys) = namespace_bytes(&url, &namespace).await;
        let per_entry = bytes as f64 / entries as f64;
        println!("redis keys:                {keys} for {entries} entries (with the indexes)");
        println!("redis bytes per entry:     {per_entry:.0} ({body_len}-byte bodies)");
        println!(
            "beyond the body:           {:.0}",
            per_entry - body_len as f64
        );
    }

    let lease = Duration::from_millis(500);
    let instances: Vec<Tiered> = (0..3)
        .map(|_| Tiered::start(MemoryStore::new(64 << 20), store(&url, &namespace), lease))
        .collect();
    while !instances.iter().all(|i| i.status().trusted) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let writer = Cache::builder(instances[0].clone()).build();
    let mut waits = Vec::new();
    for i in 0..1000 {
        let started = Instant::now();
        writer.purge(&Purge::urls([format!("/obj/{i}")])).await;
        waits.push(started.elapsed());
    }
    waits.sort();
    let at = |q: f64| waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)];
    println!(
        "purge applied by 3 instances: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        waits[waits.len() - 1]
    );

    // Simultaneous misses of one key, spread over the three instances: each
    // instance coalesces its own, so the upstream sees about one per instance.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let services: Vec<_> = instances
        .iter()
        .map(|instance| {
            let calls = calls.clone();
            let slow = service_fn(move |_: Request<Full<Bytes>>| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let response = Response::builder()
                        .header("cache-control", "public, max-age=60")
                        .body(Full::new(Bytes::from_static(b"shared")))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            Cache::builder(instance.clone()).build().layer().layer(slow)
        })
        .collect();
    let mut misses = tokio::task::JoinSet::new();
    for i in 0..60 {
        let service = services[i % services.len()].clone();
        misses.spawn(async move {
            let request = Request::get("http://127.0.0.1/simultaneous")
                .body(Full::default())
                .expect("a valid request");
            drop(service.oneshot(request).await);
        });
    }
    while misses.join_next().await.is_some() {}
    println!(
        "60 simultaneous misses on 3 instances: {} upstream fetches",
        calls.load(std::sync::atomic::Ordering::SeqCst)
    );
    if !cluster {
        delete_namespace(&url, &namespace).await;
    }
}
