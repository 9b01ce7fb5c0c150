//! RFC 9111 semantics of the cache layer, each rule with a test that fails without it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use revalidate_cache::{Clock, RoutePolicy, Routes, Store};
use support::{Harness, Origin, response};

const MAX_AGE_60: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("etag", "\"v1\"")];

#[tokio::test]
async fn miss_then_hit_with_age_then_revalidation_freshens() {
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "body"));
    let first = h.get("/a", &[]).await;
    assert_eq!(
        first.cache_status(),
        "revalidate; fwd=uri-miss; fwd-status=200; stored"
    );
    assert!(
        !first.headers.contains_key("age"),
        "straight from an upstream that sent no Age: none"
    );
    h.advance(10);
    let second = h.get("/a", &[]).await;
    assert_eq!(second.cache_status(), "revalidate; hit; ttl=50");
    assert_eq!(second.header("age"), "10");
    assert_eq!(second.body, "body");
    assert_eq!(h.origin.calls(), 1);

    // Stale: a conditional request upstream; its 304 freshens the entry.
    h.advance(60);
    h.origin.set(|req, _| {
        assert_eq!(req.headers()["if-none-match"], "\"v1\"");
        response(
            304,
            &[
                ("cache-control", "max-age=30"),
                ("etag", "\"v1\""),
                ("x-new", "1"),
            ],
            "",
        )
    });
    let third = h.get("/a", &[]).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.body, "body");
    assert_eq!(
        third.cache_status(),
        "revalidate; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(
        third.header("x-new"),
        "1",
        "headers are updated from the 304"
    );
    assert_eq!(third.header("cache-control"), "max-age=30");
    assert!(
        !third.headers.contains_key("age"),
        "just validated with the origin, whose 304 sent no Age"
    );
    h.advance(3);
    let fourth = h.get("/a", &[]).await;
    assert_eq!(fourth.cache_status(), "revalidate; hit; ttl=27");
    assert_eq!(fourth.header("age"), "3");
    assert_eq!(h.origin.calls(), 2);
}

/// The memory store, counting its lookups, and able to refuse to answer at once
/// (as a network tier would): then every request takes the path through
/// `Store::get`, which must answer exactly as the one for stores that can.
#[derive(Clone)]
struct WrappedStore {
    inner: revalidate_cache::MemoryStore,
    at_once: bool,
    lookups: Arc<AtomicUsize>,
}

impl WrappedStore {
    fn new(at_once: bool) -> Self {
        Self {
            inner: revalidate_cache::MemoryStore::new(1 << 20),
            at_once,
            lookups: Arc::default(),
        }
    }

    /// Lookups since the last call.
    fn lookups(&self) -> usize {
        self.lookups.swap(0, Ordering::SeqCst)
    }
}

impl Store for WrappedStore {
    async fn get(&self, primary: &str) -> Option<revalidate_cache::store::Variants> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.get(primary).await
    }

    fn get_now(&self, primary: &str) -> revalidate_cache::LookupNow {
        if !self.at_once {
            return revalidate_cache::LookupNow::Unknown;
        }
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.get_now(primary)
    }

    async fn put(
        &self,
        primary: String,
        variants: revalidate_cache::store::Variants,
        since: revalidate_cache::store::FetchMark,
    ) -> bool {
        self.inner.put(primary, variants, since).await
    }

    async fn purge(&self, purge: &revalidate_cache::Purge) -> usize {
        self.inner.purge(purge).await
    }

    fn usage(&self) -> revalidate_cache::StoreUsage {
        self.inner.usage()
    }
}

/// A cache on `store` in front of `origin`, with a mock clock.
fn cache_on(
    store: WrappedStore,
    origin: &Origin,
) -> (
    revalidate_cache::Cache<WrappedStore>,
    support::Service<WrappedStore>,
    revalidate_cache::MockClock,
) {
    use tower::Layer;
    let clock = revalidate_cache::MockClock::new();
    let cache = revalidate_cache::Cache::builder(store)
        .clock(clock.clone())
        .build();
    let service = cache
        .layer()
        .layer(tower::util::BoxCloneSyncService::new(origin.service()));
    (cache, service, clock)
}

#[tokio::test]
async fn a_store_that_cannot_answer_at_once_serves_the_same_hits() {
    let origin = Origin::fixed(200, MAX_AGE_60, "body");
    let (cache, service, clock) = cache_on(WrappedStore::new(false), &origin);
    let miss = support::send(&service, "GET", "/a", &[]).await;
    assert!(!miss.hit());
    clock.advance(Duration::from_secs(10));
    let hit = support::send(&service, "GET", "/a", &[]).await;
    assert_eq!(hit.cache_status(), "revalidate; hit; ttl=50");
    assert_eq!(hit.header("age"), "10");
    assert_eq!(hit.body, "body");
    let not_modified = support::send(&service, "GET", "/a", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    // Request directives still decide: too old for this client, so it goes upstream.
    let too_old = support::send(&service, "GET", "/a", &[("cache-control", "max-age=5")]).await;
    assert!(!too_old.hit(), "{}", too_old.cache_status());
    assert_eq!(origin.calls(), 2);
    assert_eq!(cache.stats().hits, 2);
}

#[tokio::test]
async fn a_request_the_store_cannot_answer_at_once_reads_it_once() {
    let origin = Origin::fixed(200, MAX_AGE_60, "body");
    let store = WrappedStore::new(true);
    let (_cache, service, clock) = cache_on(store.clone(), &origin);
    // Storing reads the key once more, to merge the new variant with the others.
    support::send(&service, "GET", "/a", &[]).await;
    assert_eq!(store.lookups(), 2, "a miss, stored");
    support::send(&service, "GET", "/a", &[]).await;
    assert_eq!(store.lookups(), 1, "a fresh hit");
    clock.advance(Duration::from_secs(61));
    let stale = support::send(&service, "GET", "/a", &[]).await;
    assert!(!stale.hit());
    assert_eq!(store.lookups(), 2, "a stale entry, revalidated and stored");
}

#[tokio::test]
async fn freshness_precedence_s_maxage_then_max_age_then_expires() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "max-age=100, s-maxage=5")],
        "x",
    ));
    h.get("/", &[]).await;
    h.advance(6);
    assert!(
        !h.get("/", &[]).await.hit(),
        "s-maxage wins for a shared cache"
    );

    let h = Harness::new(Origin::new(|_, _| {
        let date = revalidate::HttpDate::from_unix_secs(1_700_000_000).to_string();
        let expires = revalidate::HttpDate::from_unix_secs(1_700_000_030).to_string();
        response(200, &[("date", &date), ("expires", &expires)], "x")
    }));
    h.get("/", &[]).await;
    h.advance(29);
    assert!(h.get("/", &[]).await.hit());
    h.advance(2);
    assert!(!h.get("/", &[]).await.hit());
}

#[tokio::test]
async fn what_is_never_stored() {
    for headers in [
        &[("cache-control", "no-store, max-age=60")][..],
        &[("cache-control", "private, max-age=60")],
        &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
        &[("cache-control", "max-age=60"), ("vary", "*")],
        &[],
    ] {
        let h = Harness::new(Origin::new(move |_, _| response(201, headers, "x")));
        h.get("/", &[]).await;
        h.get("/", &[]).await;
        assert_eq!(h.origin.calls(), 2, "{headers:?}");
    }
    // A 400 (a malformed request's error) is never stored for everyone, even with max-age.
    let h = Harness::new(Origin::fixed(400, MAX_AGE_60, "bad"));
    h.get("/", &[]).await;
    h.get("/", &[]).await;
    assert_eq!(h.origin.calls(), 2);
}

#[tokio::test]
async fn must_understand_overrides_no_store_for_known_statuses() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "no-store, must-understand, max-age=60")],
        "x",
    ));
    h.get("/", &[]).await;
    assert!(h.get("/", &[]).await.hit());
}

#[tokio::test]
async fn authorization_requires_explicit_shareability() {
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "x"));
    h.get("/", &[("authorization", "Bearer a")]).await;
    h.get("/", &[("authorization", "Bearer a")]).await;
    assert_eq!(h.origin.calls(), 2);
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        let h = Harness::new(Origin::new(move |_, _| {
            response(200, &[("cache-control", cc)], "x")
        }));
        h.get("/", &[("authorization", "Bearer a")]).await;
        assert!(h.get("/", &[]).await.hit(), "{cc}");
    }
}

#[tokio::test]
async fn set_cookie_allowed_by_route_is_stored_without_the_cookie() {
    let policy = RoutePolicy {
        allow_set_cookie: true,
        ..RoutePolicy::default()
    };
    let h = Harness::with_routes(
        Origin::fixed(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "sid=secret"),
            ],
            "x",
        ),
        Routes::new(vec![], policy),
    );
    let first = h.get("/", &[]).await;
    assert_eq!(
        first.header("set-cookie"),
        "sid=secret",
        "the client that caused it gets its cookie"
    );
    let second = h.get("/", &[]).await;
    assert!(second.hit());
    assert_eq!(
        second.header("set-cookie"),
        "",
        "never replayed to another client"
    );
}

#[tokio::test]
async fn vary_selects_variants_and_star_never_matches() {
    let h = Harness::new(Origin::new(|req, _| {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            &lang,
        )
    }));
    assert_eq!(h.get("/", &[("accept-language", "en")]).await.body, "en");
    let fr = h.get("/", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "fr");
    assert!(fr.cache_status().contains("fwd=vary-miss"));
    assert_eq!(h.get("/", &[("accept-language", "en")]).await.body, "en");
    assert!(h.get("/", &[("accept-language", "fr")]).await.hit());
    assert_eq!(h.origin.calls(), 2);
}

#[tokio::test]
async fn head_is_served_from_a_stored_get_and_a_head_miss_fills_it() {
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "twelve bytes"));
    let head = h.send("HEAD", "/", &[]).await;
    assert_eq!(head.body, "");
    assert_eq!(head.header("content-length"), "12");
    let get = h.get("/", &[]).await;
    assert!(get.hit());
    assert_eq!(get.body, "twelve bytes");
    assert!(h.send("HEAD", "/", &[]).await.hit());
    assert_eq!(h.origin.calls(), 1);
}

#[tokio::test]
async fn conditional_hits_in_a_row_carry_their_own_age_once() {
    // From the second on, a thread answers from its copy of the entry and the 304
    // fields it keeps: each answer still gets its own Age and Cache-Status.
    let fields = &[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("content-type", "text/plain"),
    ];
    let h = Harness::new(Origin::fixed(200, fields, "body"));
    h.get("/", &[]).await;
    for age in [0, 5, 10, 15] {
        let nm = h.get("/", &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(nm.status, 304);
        assert_eq!(nm.header("age"), age.to_string());
        assert_eq!(
            nm.cache_status(),
            format!("revalidate; hit; ttl={}", 60 - age)
        );
        for name in ["age", "cache-status", "etag", "cache-control"] {
            assert_eq!(nm.headers.get_all(name).iter().count(), 1, "{name}");
        }
        assert!(!nm.headers.contains_key("content-type"));
        h.advance(5);
    }
    assert_eq!(h.origin.calls(), 1);
}

#[tokio::test]
async fn a_clients_conditional_request_is_answered_from_the_cache() {
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "body"));
    h.get("/", &[]).await;
    let nm = h.get("/", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304);
    assert_eq!(nm.body, "");
    assert_eq!(nm.header("etag"), "\"v1\"");
    assert!(nm.hit());
    let full = h.get("/", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(full.status, 200);
    assert_eq!(h.origin.calls(), 1);
    // On a miss, the client's validators are not sent upstream: the cache wants a
    // full response to store.
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "body"));
    let first = h.get("/", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, 304);
    assert!(!h.origin.last_request().contains_key("if-none-match"));
    assert_eq!(h.get("/", &[]).await.body, "body");
}

#[tokio::test]
async fn request_directives() {
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "x"));
    let miss = h.get("/", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(miss.status, 504);
    assert_eq!(h.origin.calls(), 0);
    h.get("/", &[]).await;
    h.advance(20);
    assert!(
        !h.get("/", &[("cache-control", "max-age=10")]).await.hit(),
        "too old for the client"
    );
    h.advance(20);
    assert!(
        !h.get("/", &[("cache-control", "min-fresh=50")]).await.hit(),
        "not fresh enough for the client"
    );
    assert!(
        !h.get("/", &[("cache-control", "no-cache")]).await.hit(),
        "must validate"
    );
    h.advance(100);
    let stale = h.get("/", &[("cache-control", "max-stale=200")]).await;
    assert!(stale.hit());
    assert!(stale.cache_status().contains("detail=max-stale"));
    let calls = h.origin.calls();
    assert_eq!(
        h.get("/", &[("cache-control", "only-if-cached")])
            .await
            .status,
        504
    );
    assert_eq!(h.origin.calls(), calls);
}

#[tokio::test]
async fn no_cache_and_must_revalidate_responses() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "no-cache"), ("etag", "\"n\"")],
        "x",
    ));
    h.get("/", &[]).await;
    h.origin.set(|_, _| response(304, &[("etag", "\"n\"")], ""));
    let again = h.get("/", &[]).await;
    assert_eq!(again.body, "x");
    assert!(again.cache_status().contains("fwd-status=304"));
    assert_eq!(h.origin.calls(), 2, "no-cache: validated on every use");

    let h = Harness::new(Origin::fixed(500, &[], "down"));
    h.origin.set(|_, n| {
        if n == 1 {
            response(
                200,
                &[(
                    "cache-control",
                    "max-age=1, must-revalidate, stale-if-error=600",
                )],
                "ok",
            )
        } else {
            response(500, &[], "down")
        }
    });
    h.get("/", &[]).await;
    h.advance(5);
    assert_eq!(
        h.get("/", &[("cache-control", "max-stale")]).await.status,
        500,
        "must-revalidate: never stale"
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_target_and_same_origin_locations() {
    let h = Harness::new(Origin::new(|req, _| match req.method().as_str() {
        "POST" => response(
            201,
            &[
                ("location", "/items/2"),
                ("content-location", "http://elsewhere.test/items"),
            ],
            "",
        ),
        "DELETE" => response(500, &[], ""),
        _ => response(200, &[("cache-control", "max-age=600")], req.uri().path()),
    }));
    for path in ["/items", "/items/2"] {
        h.get(path, &[]).await;
        assert!(h.get(path, &[]).await.hit());
    }
    let post = h.send("POST", "/items", &[]).await;
    assert_eq!(post.cache_status(), "revalidate; fwd=method");
    assert!(!h.get("/items", &[]).await.hit(), "target URI invalidated");
    assert!(
        !h.get("/items/2", &[]).await.hit(),
        "same-origin Location invalidated"
    );
    // An error response invalidates nothing.
    h.send("DELETE", "/items", &[]).await;
    assert!(h.get("/items", &[]).await.hit());
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let h = Harness::new(Origin::new(|_, n| {
        response(
            200,
            &[("cache-control", "max-age=10, stale-while-revalidate=60")],
            &format!("v{n}"),
        )
    }));
    *h.origin.delay.lock().unwrap() = Duration::from_millis(100);
    assert_eq!(h.get("/", &[]).await.body, "v1");
    h.advance(20);
    let replies = futures_join(&h, 5).await;
    for r in &replies {
        assert_eq!(r.body, "v1", "stale served at once");
        assert!(r.cache_status().contains("detail=stale-while-revalidate"));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.origin.calls(), 2, "exactly one background refresh");
    let fresh = h.get("/", &[]).await;
    assert_eq!(fresh.body, "v2");
    assert!(fresh.hit());
}

async fn futures_join(h: &Harness, n: usize) -> Vec<support::Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let service = h.service.clone();
            tokio::spawn(async move { support::send(&service, "GET", "/", &[]).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn stale_if_error_serves_stale_within_its_window() {
    let h = Harness::new(Origin::new(|_, n| {
        if n == 1 {
            response(
                200,
                &[("cache-control", "max-age=10, stale-if-error=60")],
                "good",
            )
        } else {
            response(503, &[], "down")
        }
    }));
    h.get("/", &[]).await;
    h.advance(30);
    let stale = h.get("/", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, "good");
    assert!(stale.cache_status().contains("detail=stale-if-error"));
    h.advance(60);
    assert_eq!(
        h.get("/", &[]).await.status,
        503,
        "past the window the error stands"
    );
}

#[tokio::test]
async fn route_overrides_ttl_and_stale_windows() {
    let policy = RoutePolicy {
        default_ttl: Some(Duration::from_secs(30)),
        stale_if_error: Some(Duration::from_secs(300)),
        ..RoutePolicy::default()
    };
    let h = Harness::with_routes(
        Origin::new(|_, n| {
            if n == 1 {
                response(200, &[], "x")
            } else {
                response(502, &[], "")
            }
        }),
        Routes::new(vec![], policy),
    );
    h.get("/", &[]).await;
    h.advance(29);
    assert!(h.get("/", &[]).await.hit());
    h.advance(100);
    assert_eq!(h.get("/", &[]).await.body, "x", "route stale-if-error");
}

#[tokio::test]
async fn key_headers_and_query_rules_from_the_route() {
    let policy = RoutePolicy {
        key_headers: vec![HeaderName::from_static("x-tenant")],
        query: revalidate_cache::QueryRules {
            sort: true,
            drop: vec!["utm_*".into()],
        },
        ..RoutePolicy::default()
    };
    let h = Harness::with_routes(
        Origin::new(|req, _| {
            let tenant = req
                .headers()
                .get("x-tenant")
                .map_or("", |v| v.to_str().unwrap())
                .to_string();
            response(200, &[("cache-control", "max-age=60")], &tenant)
        }),
        Routes::new(vec![], policy),
    );
    h.get("/p?b=1&a=2&utm_source=x", &[("x-tenant", "acme")])
        .await;
    assert!(h.get("/p?a=2&b=1", &[("x-tenant", "acme")]).await.hit());
    let other = h.get("/p?a=2&b=1", &[("x-tenant", "globex")]).await;
    assert!(!other.hit());
    assert_eq!(other.body, "globex");
}

#[tokio::test]
async fn unkeyed_headers_cannot_poison_the_cache() {
    // An origin that reflects X-Forwarded-Host into the body, as many frameworks do
    // when building absolute links: the cache must not let one client's header
    // reach another client through a stored response... unless it is in the key.
    let h = Harness::new(Origin::new(|req, _| {
        let host = req
            .headers()
            .get("x-forwarded-host")
            .map_or("origin.test", |v| v.to_str().unwrap())
            .to_string();
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "X-Forwarded-Host"),
            ],
            &format!("<a href=//{host}/>"),
        )
    }));
    h.get("/", &[("x-forwarded-host", "evil.test")]).await;
    let victim = h.get("/", &[]).await;
    assert_eq!(victim.body, "<a href=//origin.test/>");
}

#[tokio::test]
async fn a_response_of_no_later_use_is_shared_but_not_stored() {
    // Heuristically cacheable status, but no freshness, no validator, no stale window.
    let h = Harness::new(Origin::fixed(200, &[], "x"));
    let first = h.get("/", &[]).await;
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert!(h.cache.store().get("origin.test/").await.is_none());
    // With a validator it is worth keeping: it can be revalidated.
    let h = Harness::new(Origin::fixed(200, &[("etag", "\"v\"")], "x"));
    assert!(h.get("/", &[]).await.cache_status().contains("stored"));
}

#[tokio::test]
async fn any_final_status_with_explicit_freshness_is_stored() {
    for status in [299, 303, 404, 500, 503, 599] {
        let h = Harness::new(Origin::new(move |_, _| {
            response(status, &[("cache-control", "max-age=60")], "x")
        }));
        h.get("/", &[]).await;
        assert!(h.get("/", &[]).await.hit(), "{status}");
    }
    // must-understand with a status this cache does not know: never stored.
    let h = Harness::new(Origin::fixed(
        599,
        &[("cache-control", "max-age=60, must-understand")],
        "x",
    ));
    h.get("/", &[]).await;
    assert!(!h.get("/", &[]).await.hit());
    // Without explicit freshness, a 500 is not stored.
    let h = Harness::new(Origin::fixed(
        500,
        &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
        "x",
    ));
    h.get("/", &[]).await;
    assert!(!h.get("/", &[]).await.hit());
}

#[tokio::test]
async fn the_upstreams_age_passes_through_and_grows_in_the_cache() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "max-age=60"), ("age", "10")],
        "x",
    ));
    let first = h.get("/", &[]).await;
    assert_eq!(
        first.header("age"),
        "10",
        "straight from the upstream: its own Age"
    );
    h.advance(5);
    let second = h.get("/", &[]).await;
    assert_eq!(second.header("age"), "15");
    assert_eq!(second.cache_status(), "revalidate; hit; ttl=45");
}

#[tokio::test]
async fn a_304_without_age_restarts_the_age_from_its_arrival() {
    let h = Harness::new(Origin::fixed(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("age", "10"),
        ],
        "x",
    ));
    h.get("/", &[]).await;
    h.advance(55);
    h.origin.set(|_, _| response(304, MAX_AGE_60, ""));
    let validated = h.get("/", &[]).await;
    assert_eq!(
        validated.cache_status(),
        "revalidate; fwd=stale; fwd-status=304; stored"
    );
    assert!(
        !validated.headers.contains_key("age"),
        "validated by the origin for this request: the 200's Age no longer applies"
    );
    h.advance(3);
    let hit = h.get("/", &[]).await;
    assert_eq!(hit.header("age"), "3");
    assert_eq!(hit.cache_status(), "revalidate; hit; ttl=57");
}

#[tokio::test]
async fn an_invalid_date_is_replaced_so_freshness_works() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "max-age=60"), ("date", "foo")],
        "x",
    ));
    h.get("/", &[]).await;
    assert!(h.get("/", &[]).await.hit());
}

#[tokio::test]
async fn ranges_are_served_from_a_stored_complete_response() {
    let h = Harness::new(Origin::fixed(200, MAX_AGE_60, "0123456789"));
    let first = h.get("/", &[("range", "bytes=2-4")]).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (206, "234"),
        "a miss fetches the whole and serves the range"
    );
    assert_eq!(first.header("content-range"), "bytes 2-4/10");
    assert_eq!(
        h.origin.last_request()["range"],
        "bytes=2-4",
        "the range is asked for; an origin that ignores it fills the cache"
    );
    let suffix = h.get("/", &[("range", "bytes=-3")]).await;
    assert_eq!((suffix.status, suffix.body.as_str()), (206, "789"));
    assert!(suffix.hit());
    let open = h.get("/", &[("range", "bytes=8-")]).await;
    assert_eq!(open.body, "89");
    let beyond = h.get("/", &[("range", "bytes=20-30")]).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), "bytes */10");
    // If-Range that no longer matches, or several ranges: the whole representation.
    let stale_if_range = h
        .get("/", &[("range", "bytes=0-1"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(
        (stale_if_range.status, stale_if_range.body.as_str()),
        (200, "0123456789")
    );
    let matching = h
        .get("/", &[("range", "bytes=0-1"), ("if-range", "\"v1\"")])
        .await;
    assert_eq!((matching.status, matching.body.as_str()), (206, "01"));
    let several = h.get("/", &[("range", "bytes=0-1,4-5")]).await;
    assert_eq!(several.status, 200);
    assert_eq!(h.origin.calls(), 1);
}

#[tokio::test]
async fn route_defaults_never_make_errors_cacheable_and_fetches_carry_no_framing() {
    let policy = RoutePolicy {
        default_ttl: Some(Duration::from_secs(60)),
        cache_control: Some(
            revalidate::CacheControl::new()
                .public()
                .max_age(Duration::from_secs(60)),
        ),
        ..RoutePolicy::default()
    };
    let h = Harness::with_routes(Origin::fixed(503, &[], "down"), Routes::new(vec![], policy));
    h.get("/", &[("content-length", "10")]).await;
    assert!(!h.origin.last_request().contains_key("content-length"));
    assert!(
        !h.get("/", &[]).await.hit(),
        "a 503 is not stored under the route's defaults"
    );
    assert_eq!(h.origin.calls(), 2);
}

#[tokio::test]
async fn a_vary_that_is_not_ascii_is_treated_as_star() {
    let h = Harness::new(Origin::new(|_, _| {
        let mut r = response(200, &[("cache-control", "max-age=60")], "x");
        r.headers_mut().insert(
            "vary",
            http::HeaderValue::from_bytes(b"accept-\xe9").unwrap(),
        );
        r
    }));
    h.get("/", &[]).await;
    assert!(!h.get("/", &[]).await.hit());
}

/// RFC 9111 §3.3: a 206 to a forwarded Range is stored as a part and answers the
/// ranges it holds; other requests go upstream (`fwd=partial`).
#[tokio::test]
async fn partial_content_is_stored_and_answers_the_ranges_it_holds() {
    let h = Harness::new(Origin::new(|request, _| {
        match request.headers().get("range").map(|r| r.to_str().unwrap()) {
            Some("bytes=-5") => response(
                206,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 5-9/10"),
                ],
                "56789",
            ),
            Some(other) => panic!("unexpected range {other}"),
            None => response(200, MAX_AGE_60, "0123456789"),
        }
    }));
    let first = h.get("/", &[("range", "bytes=-5")]).await;
    assert_eq!((first.status, first.body.as_str()), (206, "56789"));
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    for (range, body, content_range) in [
        ("bytes=-5", "56789", "bytes 5-9/10"),
        ("bytes=6-8", "678", "bytes 6-8/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-1", "9", "bytes 9-9/10"),
    ] {
        let reply = h.get("/", &[("range", range)]).await;
        assert_eq!((reply.status, reply.body.as_str()), (206, body), "{range}");
        assert!(reply.hit(), "{range}");
        assert_eq!(reply.header("content-range"), content_range);
        assert_eq!(reply.header("content-length"), body.len().to_string());
    }
    assert_eq!(h.origin.calls(), 1);
    // A part never answers a request for the whole: that is fetched, and replaces it.
    let whole = h.get("/", &[]).await;
    assert_eq!((whole.status, whole.body.as_str()), (200, "0123456789"));
    assert!(
        whole.cache_status().contains("fwd=partial"),
        "{}",
        whole.cache_status()
    );
    assert!(!h.origin.last_request().contains_key("range"));
    let again = h.get("/", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (again.status, again.body.as_str(), again.hit()),
        (206, "01", true)
    );
    assert_eq!(h.origin.calls(), 2);
}

/// A 206 whose Content-Range does not describe its body is passed on but never
/// stored; neither is a 206 to a request without Range.
#[tokio::test]
async fn inconsistent_or_unasked_partial_content_is_not_stored() {
    let h = Harness::new(Origin::fixed(
        206,
        &[
            ("cache-control", "max-age=60"),
            ("content-range", "bytes 0-9/10"),
        ],
        "short",
    ));
    let first = h.get("/", &[("range", "bytes=0-9")]).await;
    assert_eq!(first.status, 206);
    assert!(!first.cache_status().contains("stored"));
    assert!(!h.get("/", &[("range", "bytes=0-9")]).await.hit());

    // A consistent part, but sent to a request that asked for the whole.
    let h = Harness::new(Origin::fixed(
        206,
        &[
            ("cache-control", "max-age=60"),
            ("content-range", "bytes 0-4/10"),
        ],
        "short",
    ));
    let unasked = h.get("/", &[]).await;
    assert_eq!(unasked.status, 206, "passed on as it came");
    assert!(!unasked.cache_status().contains("stored"));
    let ranged = h.get("/", &[("range", "bytes=0-4")]).await;
    assert!(!ranged.hit(), "nothing was stored to answer it");
    assert_eq!(h.origin.calls(), 2);
}

/// Waiting requests share a leader's part only for the bytes it holds; the others
/// fetch again together (one more upstream request, not one each).
#[tokio::test]
async fn a_part_is_shared_only_with_waiters_whose_range_it_holds() {
    let h = Harness::new(Origin::new(|request, _| {
        match request.headers().get("range").map(|r| r.to_str().unwrap()) {
            Some("bytes=0-4") => response(
                206,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-4/10"),
                ],
                "01234",
            ),
            _ => response(200, MAX_AGE_60, "0123456789"),
        }
    }));
    *h.origin.delay.lock().unwrap() = Duration::from_millis(50);
    let leader = h.get("/", &[("range", "bytes=0-4")]);
    let held = h.get("/", &[("range", "bytes=1-2")]);
    let whole = h.get("/", &[]);
    let other = h.get("/", &[("range", "bytes=6-7")]);
    let (leader, held, whole, other) = tokio::join!(leader, held, whole, other);
    assert_eq!((leader.status, leader.body.as_str()), (206, "01234"));
    assert_eq!((held.status, held.body.as_str()), (206, "12"));
    assert!(held.cache_status().contains("collapsed"));
    assert_eq!((whole.status, whole.body.as_str()), (200, "0123456789"));
    assert_eq!((other.status, other.body.as_str()), (206, "67"));
    assert_eq!(
        h.origin.calls(),
        2,
        "the part, then the whole once for both others"
    );
}

/// RFC 9111 §5.1: of an `Age` list, the first member counts.
#[tokio::test]
async fn the_first_member_of_an_age_list_counts() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
        "old",
    ));
    h.get("/", &[]).await;
    assert!(!h.get("/", &[]).await.hit(), "already 7200 s old: stale");
}

/// RFC 9111 §4.3.2: without Last-Modified, If-Modified-Since is evaluated against
/// the stored response's Date.
#[tokio::test]
async fn if_modified_since_uses_the_stored_date_without_last_modified() {
    let h = Harness::new(Origin::fixed(200, &[("cache-control", "max-age=600")], "x"));
    h.get("/", &[]).await;
    let now = revalidate::HttpDate::from_system_time(h.clock.now()).to_string();
    let before = revalidate::HttpDate::from_system_time(h.clock.now() - Duration::from_secs(3000))
        .to_string();
    let later = h.get("/", &[("if-modified-since", &now)]).await;
    assert_eq!((later.status, later.hit()), (304, true));
    let earlier = h.get("/", &[("if-modified-since", &before)]).await;
    assert_eq!(
        earlier.status, 200,
        "the stored response is newer than the date"
    );
    assert_eq!(h.origin.calls(), 1);
}

/// RFC 9111 §5.2.2.4 and §5.2.2.7: fields named by a qualified `no-cache` or
/// `private` are never stored, but the response that was fetched for a client
/// still carries them to that client.
#[tokio::test]
async fn qualified_fields_reach_the_requester_but_are_not_stored() {
    let h = Harness::new(Origin::fixed(
        200,
        &[
            ("cache-control", "max-age=60, no-cache=\"a\", private=\"b\""),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ],
        "x",
    ));
    let first = h.get("/", &[]).await;
    assert_eq!(
        (first.header("a"), first.header("b"), first.header("c")),
        ("1", "2", "3")
    );
    let second = h.get("/", &[]).await;
    assert!(second.hit());
    assert_eq!(
        (second.header("a"), second.header("b"), second.header("c")),
        ("", "", "3")
    );
}

/// A `KeyPart` set by a layer in front of the cache keys requests apart.
#[tokio::test]
async fn a_key_part_keys_requests_apart() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let h = Harness::new(Origin::new(|_, n| {
        support::response(200, &[("cache-control", "max-age=60")], &format!("v{n}"))
    }));
    let get = |part: &'static str| {
        let mut request = http::Request::get("http://origin.test/k")
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        request
            .extensions_mut()
            .insert(revalidate_cache::KeyPart(part.into()));
        let service = h.service.clone();
        async move {
            let response = service.oneshot(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    assert_eq!(get("v1").await, "v1");
    assert_eq!(get("v1").await, "v1", "a hit under the same part");
    assert_eq!(get("v2").await, "v2", "another part misses");
    assert_eq!(h.origin.calls(), 2);
}

/// Every response that is not stored says why in `Cache-Status` (RFC 9211
/// `detail`), and the reasons are counted.
#[tokio::test]
async fn why_a_response_is_not_stored_is_named_and_counted() {
    let bypass = revalidate_cache::Route {
        pattern: revalidate_cache::routes::Pattern::parse("/bypass/*").unwrap(),
        policy: RoutePolicy {
            bypass: true,
            ..RoutePolicy::default()
        },
        on_write: Vec::new(),
    };
    let h = Harness::with_routes(
        Origin::fixed(200, MAX_AGE_60, "x"),
        Routes::new(vec![bypass], RoutePolicy::default()),
    );
    type Fields = &'static [(&'static str, &'static str)];
    let cases: [(Fields, Fields, &str); 5] = [
        (&[("cache-control", "no-store")], &[], "no-store"),
        (&[("cache-control", "private, max-age=60")], &[], "private"),
        (
            &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
            &[],
            "set-cookie",
        ),
        (
            &[("cache-control", "max-age=60"), ("vary", "*")],
            &[],
            "vary-star",
        ),
        (
            &[("cache-control", "max-age=60")],
            &[("authorization", "Bearer 1")],
            "authorization",
        ),
    ];
    for (i, (response_headers, request_headers, reason)) in cases.into_iter().enumerate() {
        let headers: Vec<(String, String)> = response_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.origin.set(move |_, _| {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            response(200, &headers, "x")
        });
        let reply = h.get(&format!("/{i}"), request_headers).await;
        assert_eq!(
            reply.cache_status(),
            format!("revalidate; fwd=uri-miss; fwd-status=200; detail={reason}")
        );
    }
    let bypassed = h.get("/bypass/a", &[]).await;
    assert_eq!(
        bypassed.cache_status(),
        "revalidate; fwd=bypass; detail=route-bypass"
    );
    let counted: std::collections::HashMap<&str, u64> = h
        .cache
        .not_stored()
        .into_iter()
        .map(|(why, n)| (why.token(), n))
        .collect();
    for reason in [
        "no-store",
        "private",
        "set-cookie",
        "vary-star",
        "authorization",
        "route-bypass",
    ] {
        assert_eq!(counted[reason], 1, "{reason}: {counted:?}");
    }
    assert_eq!(counted["too-large"], 0);
}
