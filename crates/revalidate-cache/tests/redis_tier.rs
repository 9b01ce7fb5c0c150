//! Two tiers against a real Redis: instances share what one fetched, a purge
//! through one reaches every local tier before it returns, a response fetched
//! before a purge is stored nowhere after it, and a Redis that is down or lost
//! never fails a request.

#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use revalidate_cache::store::{RedisStore, Tiered};
use revalidate_cache::{Cache, MemoryStore, Purge, Store};
use support::{Origin, Reply, Upstream};
use tower::Layer;

const LEASE: Duration = Duration::from_millis(300);

/// One instance of a service: its own local tier, the shared Redis namespace.
struct Instance {
    cache: Cache<Tiered>,
    store: Tiered,
    service: support::Service<Tiered>,
}

impl Instance {
    async fn start(origin: &Origin, url: &str, namespace: &str) -> Self {
        let store = tiered(url, namespace);
        let cache = Cache::builder(store.clone()).build();
        let upstream = Upstream::new(origin.service());
        let service = cache.layer().layer(upstream);
        let instance = Self {
            cache,
            store,
            service,
        };
        instance.wait_until_trusted().await;
        instance
    }

    async fn wait_until_trusted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.store.status().trusted {
            assert!(Instant::now() < deadline, "the bus never caught up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn get(&self, path: &str) -> Reply {
        support::send(&self.service, "GET", path, &[]).await
    }
}

fn tiered(url: &str, namespace: &str) -> Tiered {
    let shared = RedisStore::open(support::redis::config(url, namespace)).expect("a valid URL");
    Tiered::start(MemoryStore::new(16 << 20), shared, LEASE)
}

fn shared_store(url: &str, namespace: &str) -> RedisStore {
    let mut config = support::redis::config(url, namespace);
    config.timeout = Duration::from_secs(1);
    RedisStore::open(config).expect("a valid URL")
}

/// Waits until Redis holds `primary` (stores to Redis run in the background).
async fn wait_for_redis(url: &str, namespace: &str, primary: &str) {
    let store = shared_store(url, namespace);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get(primary).await.is_none() {
        assert!(Instant::now() < deadline, "{primary} never reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn versioned_origin() -> Origin {
    Origin::new(|_, n| {
        support::response(200, &[("cache-control", "max-age=600")], &format!("v{n}"))
    })
}

#[tokio::test]
async fn a_miss_that_another_instance_filled_is_served_from_redis_on_a_server() {
    a_miss_that_another_instance_filled_is_served_from_redis(support::redis::url()).await;
}

#[tokio::test]
async fn a_miss_that_another_instance_filled_is_served_from_redis_on_a_cluster() {
    a_miss_that_another_instance_filled_is_served_from_redis(support::redis::cluster_urls()).await;
}

async fn a_miss_that_another_instance_filled_is_served_from_redis(url: String) {
    let (url, ns) = (url, support::redis::namespace("fill"));
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, &ns).await;
    let b = Instance::start(&origin, &url, &ns).await;
    assert_eq!(a.get("/x").await.body, "v1");
    wait_for_redis(&url, &ns, "origin.test/x").await;
    let from_redis = b.get("/x").await;
    assert!(from_redis.hit(), "{}", from_redis.cache_status());
    assert_eq!(from_redis.body, "v1");
    assert_eq!(origin.calls(), 1, "one upstream fetch for both instances");
    // And B's own tier now has it.
    assert!(b.get("/x").await.hit());
}

#[tokio::test]
async fn after_a_purge_through_one_instance_no_instance_serves_the_old_body_on_a_server() {
    after_a_purge_through_one_instance_no_instance_serves_the_old_body(support::redis::url()).await;
}

#[tokio::test]
async fn after_a_purge_through_one_instance_no_instance_serves_the_old_body_on_a_cluster() {
    after_a_purge_through_one_instance_no_instance_serves_the_old_body(
        support::redis::cluster_urls(),
    )
    .await;
}

async fn after_a_purge_through_one_instance_no_instance_serves_the_old_body(url: String) {
    let (url, ns) = (url, support::redis::namespace("ryw"));
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, &ns).await;
    let b = Instance::start(&origin, &url, &ns).await;
    let c = Instance::start(&origin, &url, &ns).await;
    let mut waits = Vec::new();
    for round in 0..20 {
        let path = format!("/r{round}");
        let first = a.get(&path).await.body;
        wait_for_redis(&url, &ns, &format!("origin.test{path}")).await;
        for instance in [&b, &c] {
            assert_eq!(instance.get(&path).await.body, first, "filled from Redis");
            assert!(instance.get(&path).await.hit(), "and held locally");
        }
        let started = Instant::now();
        assert!(a.cache.purge(&Purge::urls([path.as_str()])).await >= 1);
        waits.push(started.elapsed());
        // Requests that start after the purge returned: none gets the old body.
        for instance in [&b, &c, &a] {
            let reply = instance.get(&path).await;
            assert_ne!(reply.body, first, "{path}: {}", reply.cache_status());
        }
    }
    waits.sort();
    eprintln!(
        "purge acknowledged by 3 instances: p50 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    assert!(
        waits[waits.len() - 1] < LEASE,
        "every instance acknowledged in time"
    );
}

#[tokio::test]
async fn a_write_through_one_instance_is_seen_by_the_others_at_once_on_a_server() {
    a_write_through_one_instance_is_seen_by_the_others_at_once(support::redis::url()).await;
}

#[tokio::test]
async fn a_write_through_one_instance_is_seen_by_the_others_at_once_on_a_cluster() {
    a_write_through_one_instance_is_seen_by_the_others_at_once(support::redis::cluster_urls())
        .await;
}

async fn a_write_through_one_instance_is_seen_by_the_others_at_once(url: String) {
    let (url, ns) = (url, support::redis::namespace("write"));
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, &ns).await;
    let b = Instance::start(&origin, &url, &ns).await;
    let old = a.get("/users/1").await.body;
    wait_for_redis(&url, &ns, "origin.test/users/1").await;
    assert!(b.get("/users/1").await.hit());
    let put = support::send(&a.service, "PUT", "/users/1", &[]).await;
    assert_eq!(put.status, 200);
    let after = b.get("/users/1").await;
    assert_ne!(after.body, old, "{}", after.cache_status());
}

#[tokio::test]
async fn a_response_fetched_before_a_purge_is_stored_in_neither_tier_on_a_server() {
    a_response_fetched_before_a_purge_is_stored_in_neither_tier(support::redis::url()).await;
}

#[tokio::test]
async fn a_response_fetched_before_a_purge_is_stored_in_neither_tier_on_a_cluster() {
    a_response_fetched_before_a_purge_is_stored_in_neither_tier(support::redis::cluster_urls())
        .await;
}

async fn a_response_fetched_before_a_purge_is_stored_in_neither_tier(url: String) {
    let (url, ns) = (url, support::redis::namespace("race"));
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, &ns).await;
    let b = Instance::start(&origin, &url, &ns).await;
    *origin.delay.lock().unwrap() = Duration::from_millis(300);
    let slow = {
        let service = b.service.clone();
        tokio::spawn(async move { support::send(&service, "GET", "/y", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.cache.purge(&Purge::urls(["/y"])).await;
    let fetched_before = slow.await.unwrap();
    assert_eq!(fetched_before.body, "v1", "its own client still gets it");
    *origin.delay.lock().unwrap() = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        shared_store(&url, &ns).get("origin.test/y").await.is_none(),
        "not in Redis"
    );
    let again = b.get("/y").await;
    assert!(!again.hit(), "not in B's tier: {}", again.cache_status());
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn redis_down_never_fails_a_request() {
    let origin = versioned_origin();
    let a = {
        let store = tiered(&support::redis::nothing_listening(), "down:");
        let cache = Cache::builder(store.clone()).build();
        let service = cache.layer().layer(Upstream::new(origin.service()));
        Instance {
            cache,
            store,
            service,
        }
    };
    for _ in 0..3 {
        let started = Instant::now();
        let reply = a.get("/z").await;
        assert_eq!(reply.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "bounded by the timeout"
        );
    }
    let status = a.store.status();
    assert!(!status.redis_up && !status.trusted, "{status:?}");
    assert!(
        a.cache.purge(&Purge::urls(["/z"])).await <= 1,
        "a purge still returns"
    );
}

#[tokio::test]
async fn missed_purges_drop_the_local_tier() {
    let (url, ns) = (support::redis::url(), support::redis::namespace("gap"));
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, &ns).await;
    a.get("/g").await;
    assert!(a.get("/g").await.hit());
    let drops = a.store.status().drops;
    // A purge numbered past the next one: some were trimmed from the stream.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let number: u64 = redis::cmd("INCRBY")
        .arg(format!("{{{ns}bus}}purges"))
        .arg(2)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{{{ns}bus}}bus"))
        .arg("*")
        .arg("number")
        .arg(number)
        .arg("purge")
        .arg(r#"{"tags":["unrelated"]}"#)
        .query_async(&mut connection)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.store.status().drops == drops {
        assert!(Instant::now() < deadline, "the gap was not noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a.store.usage().entries, 0, "the local tier was dropped");
}

/// An instance that is alive (its heartbeat is fresh) but has not applied a
/// purge holds the purge back until its lease has surely run out.
#[tokio::test]
async fn a_purge_waits_for_a_live_instance_until_its_lease_ends() {
    let (url, ns) = (support::redis::url(), support::redis::namespace("lagging"));
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, &ns).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    // A heartbeat in Redis's own time, as a lagging instance would leave it.
    let beat = redis::Script::new(
        "local t = redis.call('TIME') \
         redis.call('HSET', KEYS[1], 'lagging', t[1] * 1000 + math.floor(t[2] / 1000)) return 1",
    );
    let mut invocation = beat.prepare_invoke();
    invocation.key(format!("{{{ns}bus}}beats"));
    let _: u8 = invocation.invoke_async(&mut connection).await.unwrap();
    let started = Instant::now();
    a.cache.purge(&Purge::urls(["/anything"])).await;
    let waited = started.elapsed();
    assert!(waited >= LEASE, "returned after {waited:?}");
    assert!(waited < LEASE * 2, "bounded: {waited:?}");
}

/// Redis stops mid-traffic and comes back: requests never fail, the local tier
/// is not served while the bus is cut off, a purge made meanwhile is sent when
/// Redis returns, and the instances serve their local tiers again.
#[tokio::test]
async fn redis_lost_and_back() {
    let port = support::redis::free_port_for_server();
    let url = format!("redis://127.0.0.1:{port}");
    let server = support::redis::start_server(port);
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, "lost:").await;
    let b = Instance::start(&origin, &url, "lost:").await;
    a.get("/l").await;
    wait_for_redis(&url, "lost:", "origin.test/l").await;
    assert!(b.get("/l").await.hit());
    assert!(b.get("/l").await.hit(), "in B's own tier");

    server.stop();
    let deadline = Instant::now() + LEASE * 3;
    while b.store.status().trusted {
        assert!(Instant::now() < deadline, "B still trusts its local tier");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = origin.calls();
    let reply = b.get("/l").await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.hit(),
        "the local tier is not served: {}",
        reply.cache_status()
    );
    assert_eq!(origin.calls(), calls + 1);
    a.cache.purge(&Purge::tags(["never-stored"])).await;

    let _server = support::redis::start_server(port);
    a.wait_until_trusted().await;
    b.wait_until_trusted().await;
    // A's purge from the outage reached the bus once Redis was back.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let announced: Option<u64> = redis::cmd("GET")
        .arg("{lost:bus}purges")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        announced,
        Some(1),
        "the purge made while Redis was down was sent"
    );
    let again = b.get("/m").await;
    assert_eq!(again.status, 200);
    assert!(b.get("/m").await.hit(), "B serves its local tier again");
}

/// Redis alone as the store: prefix, tag and soft purges act on what it holds.
#[tokio::test]
async fn purges_by_prefix_tag_and_soft_in_redis_on_a_server() {
    purges_by_prefix_tag_and_soft_in_redis(support::redis::url()).await;
}

#[tokio::test]
async fn purges_by_prefix_tag_and_soft_in_redis_on_a_cluster() {
    purges_by_prefix_tag_and_soft_in_redis(support::redis::cluster_urls()).await;
}

async fn purges_by_prefix_tag_and_soft_in_redis(url: String) {
    let (url, ns) = (url, support::redis::namespace("alone"));
    let origin = Origin::new(|request, n| {
        let tag = if request.uri().path().starts_with("/t/") {
            "tagged"
        } else {
            "other"
        };
        support::response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"e\""),
                ("surrogate-key", tag),
            ],
            &format!("v{n}"),
        )
    });
    let store = shared_store(&url, &ns);
    let cache = Cache::builder(store.clone()).build();
    let service = cache.layer().layer(Upstream::new(origin.service()));
    let get = |path: &'static str| support::send(&service, "GET", path, &[]);
    for path in ["/p/1", "/p/2", "/q", "/t/1"] {
        get(path).await;
        assert!(get(path).await.hit(), "{path} stored in Redis");
    }
    assert_eq!(cache.purge(&Purge::prefixes(["/p/"])).await, 2);
    assert!(!get("/p/1").await.hit() && !get("/p/2").await.hit());
    assert!(get("/q").await.hit(), "outside the prefix");
    assert_eq!(cache.purge(&Purge::tags(["tagged"])).await, 1);
    assert!(!get("/t/1").await.hit());
    assert_eq!(cache.purge(&Purge::urls(["/q"]).soft()).await, 1);
    let revalidated = get("/q").await;
    assert!(
        revalidated.cache_status().contains("fwd=stale"),
        "a soft purge revalidates: {}",
        revalidated.cache_status()
    );
}

/// On a cluster, entries are spread over its masters (by their group's hash
/// tag), and everything a script touches lies in one slot: nothing fails with
/// CROSSSLOT.
#[tokio::test]
async fn entries_spread_over_the_cluster_masters() {
    let urls = support::redis::cluster_urls();
    let ns = support::redis::namespace("spread");
    let store = shared_store(&urls, &ns);
    let origin = versioned_origin();
    let cache = Cache::builder(store.clone()).build();
    let service = cache.layer().layer(Upstream::new(origin.service()));
    for i in 0..64 {
        let path = format!("/s/{i}");
        support::send(&service, "GET", &path, &[("surrogate-key", "")]).await;
        assert!(
            support::send(&service, "GET", &path, &[]).await.hit(),
            "{path} stored"
        );
    }
    let mut holding = 0;
    for url in urls.split(',') {
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{ns}g*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        holding += usize::from(!keys.is_empty());
    }
    assert!(holding >= 2, "entries on {holding} of 3 masters");
    assert_eq!(
        cache.purge(&Purge::prefixes(["/s/"])).await,
        64,
        "every group purged"
    );
}

/// `rediss://`: TLS to Redis, trusting the authority given; without it the
/// certificate is refused and nothing falls back to plain text.
#[tokio::test]
async fn tls_to_redis_with_the_authority_given() {
    let server = support::redis::start_tls_server();
    let ns = support::redis::namespace("tls");
    let origin = versioned_origin();
    let mut config = support::redis::config(&server.url, &ns);
    config.timeout = Duration::from_secs(2);
    config.ca_pem = Some(server.ca_pem.clone());
    let store = RedisStore::open(config).unwrap();
    let cache = Cache::builder(store.clone()).build();
    let service = cache.layer().layer(Upstream::new(origin.service()));
    support::send(&service, "GET", "/tls", &[]).await;
    assert!(
        support::send(&service, "GET", "/tls", &[]).await.hit(),
        "stored over TLS"
    );
    assert!(store.is_up());

    // The system's roots do not know the authority: every command fails.
    let mut untrusting = support::redis::config(&server.url, &ns);
    untrusting.timeout = Duration::from_secs(2);
    let untrusting = RedisStore::open(untrusting).unwrap();
    assert!(untrusting.get("origin.test/tls").await.is_none());
    assert!(!untrusting.is_up());
}

/// A Redis that stalls for a third of the lease does not slow
/// hits from the local tier: they never wait for Redis.
#[tokio::test]
async fn a_slow_redis_never_slows_local_hits() {
    let port = support::redis::free_port_for_server();
    let url = format!("redis://127.0.0.1:{port}");
    let _server = support::redis::start_server(port);
    let origin = versioned_origin();
    let a = Instance::start(&origin, &url, "slow:").await;
    a.get("/h").await;
    assert!(a.get("/h").await.hit());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let pause = LEASE / 3;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(u64::try_from(pause.as_millis()).unwrap())
        .query_async(&mut connection)
        .await
        .unwrap();
    // Counted rather than timed, so that a busy machine cannot fail it: a hit
    // that waited for Redis would take the command timeout (50 ms), so no more
    // than a few would fit in the pause.
    let started = Instant::now();
    let mut hits = 0;
    while started.elapsed() < pause {
        assert!(a.get("/h").await.hit(), "still served from the local tier");
        hits += 1;
    }
    assert!(hits >= 20, "{hits} hits during a {pause:?} stall");
}
