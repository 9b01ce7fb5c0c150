//! Coalescing, invalidation (URL, prefix, tag, soft, race-safe), the memory budget
//! and user isolation.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderName;
use revalidate_cache::{CacheConfig, Pattern, Purge, Route, RoutePolicy, Routes, Store, Template};
use support::{Harness, Origin, response, send};
use tower::Layer;

async fn burst(
    h: &Harness,
    n: usize,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<support::Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let service = h.service.clone();
            tokio::spawn(async move { send(&service, "GET", path, headers).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_100_misses_sends_one_request_upstream() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "max-age=60")],
        "shared",
    ));
    *h.origin.delay.lock().unwrap() = Duration::from_millis(200);
    let replies = burst(&h, 100, "/hot", &[]).await;
    assert_eq!(h.origin.calls(), 1);
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.body == "shared")
    );
    let collapsed = replies
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
        .count();
    assert_eq!(collapsed, 99);
    assert_eq!(h.cache.stats().coalesced, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_on_an_unshareable_response_go_upstream_at_once() {
    let h = Harness::new(Origin::fixed(200, &[("cache-control", "private")], "mine"));
    *h.origin.delay.lock().unwrap() = Duration::from_millis(300);
    let started = Instant::now();
    let replies = burst(&h, 20, "/private", &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(h.origin.calls(), 20, "each goes upstream on its own");
    assert!(replies.iter().all(|r| r.body == "mine"));
    // One leader round trip, then all 19 in parallel: about 2 delays, never 20.
    assert!(
        elapsed < Duration::from_millis(1500),
        "waiters were queued: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_leader_never_strands_its_waiters() {
    let h = Harness::new(Origin::fixed(200, &[("cache-control", "max-age=60")], "ok"));
    *h.origin.delay.lock().unwrap() = Duration::from_millis(300);
    let service = h.service.clone();
    let leader = tokio::spawn(async move { send(&service, "GET", "/c", &[]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let service = h.service.clone();
    let follower = tokio::spawn(async move { send(&service, "GET", "/c", &[]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let reply = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("not stranded")
        .unwrap();
    assert_eq!(reply.body, "ok");
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag() {
    let h = Harness::new(Origin::new(|req, _| {
        let path = req.uri().path().to_string();
        let tags = if path.starts_with("/users/1") {
            "user:1 users"
        } else {
            "other"
        };
        response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("surrogate-key", tags),
                ("cache-tag", "all"),
            ],
            &path,
        )
    }));
    for p in [
        "/users/1",
        "/users/1/posts",
        "/users/2",
        "/static/a.css",
        "/static/b.css",
    ] {
        h.get(p, &[]).await;
    }
    assert_eq!(h.cache.purge(&Purge::tags(["user:1"])).await, 2);
    assert!(!h.get("/users/1", &[]).await.hit());
    assert!(!h.get("/users/1/posts", &[]).await.hit());
    assert!(h.get("/users/2", &[]).await.hit());

    assert_eq!(h.cache.purge(&Purge::prefixes(["/static/"])).await, 2);
    assert!(!h.get("/static/a.css", &[]).await.hit());
    assert_eq!(h.cache.purge(&Purge::urls(["/users/2"])).await, 1);
    assert!(!h.get("/users/2", &[]).await.hit());
    // Tags are not shown to clients.
    assert_eq!(h.get("/users/2", &[]).await.header("surrogate-key"), "");
}

#[tokio::test]
async fn soft_purge_marks_stale_and_revalidates_on_next_use() {
    let h = Harness::new(Origin::fixed(
        200,
        &[("cache-control", "max-age=600"), ("etag", "\"e\"")],
        "x",
    ));
    h.get("/s", &[]).await;
    assert_eq!(h.cache.purge(&Purge::urls(["/s"]).soft()).await, 1);
    h.origin.set(|req, _| {
        assert_eq!(req.headers()["if-none-match"], "\"e\"");
        response(
            304,
            &[("cache-control", "max-age=600"), ("etag", "\"e\"")],
            "",
        )
    });
    let after = h.get("/s", &[]).await;
    assert_eq!(after.body, "x");
    assert!(after.cache_status().contains("fwd=stale; fwd-status=304"));
    assert!(h.get("/s", &[]).await.hit());
}

#[tokio::test]
async fn tag_purge_cost_follows_the_entries_it_names() {
    let h = Harness::new(Origin::new(|req, _| {
        let path = req.uri().path().to_string();
        let tag = if path == "/one" { "rare" } else { "common" };
        response(
            200,
            &[("cache-control", "max-age=600"), ("surrogate-key", tag)],
            "x",
        )
    }));
    for i in 0..2000 {
        h.get(&format!("/n{i}"), &[]).await;
    }
    h.get("/one", &[]).await;
    // The index answers with exactly the named entries: no scan of 2000 others.
    assert_eq!(h.cache.purge(&Purge::tags(["rare"])).await, 1);
    assert!(h.get("/n5", &[]).await.hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_began_before_a_purge_is_never_stored_after_it() {
    // The origin answers only when the test says so: the purge lands while the
    // fetch is in flight.
    let gate = Arc::new(tokio::sync::Notify::new());
    let origin = Origin::fixed(
        200,
        &[("cache-control", "max-age=600"), ("surrogate-key", "t")],
        "old",
    );
    let h = Harness::new(origin.clone());
    let service = {
        let gate = gate.clone();
        let inner = origin.service();
        tower::util::BoxCloneSyncService::new(tower::ServiceExt::and_then(inner, move |resp| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok(resp)
            }
        }))
    };
    let gated = tower::Layer::layer(&h.cache.layer(), service);
    let inflight = tokio::spawn(async move { send(&gated, "GET", "/r", &[]).await });
    while origin.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.cache.purge(&Purge::tags(["t"])).await;
    gate.notify_one();
    let reply = inflight.await.unwrap();
    assert_eq!(reply.body, "old", "the requester still gets its answer");
    assert!(!reply.cache_status().contains("stored"));
    let next = h.get("/r", &[]).await;
    assert!(!next.hit(), "nothing from before the purge was stored");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn memory_budget_is_enforced_on_real_bytes() {
    let body = "x".repeat(5 * 1024);
    let h = Harness::build(
        Origin::new(move |_, _| response(200, &[("cache-control", "max-age=600")], &body)),
        Routes::default(),
        1024 * 1024,
    );
    for i in 0..600 {
        h.get(&format!("/o{i}"), &[]).await;
    }
    let usage = h.cache.usage();
    assert!(usage.bytes <= 1024 * 1024, "{usage:?}");
    assert!(usage.evictions > 0, "{usage:?}");
    assert!(usage.entries < 600 && usage.entries > 100, "{usage:?}");
}

#[tokio::test]
async fn route_tags_and_write_invalidation_rules() {
    let route = Route {
        pattern: Pattern::parse("/users/{id}").unwrap(),
        policy: RoutePolicy {
            tags: vec![Template::parse("user:{id}").unwrap()],
            ..RoutePolicy::default()
        },
        on_write: vec![revalidate_cache::InvalidationRule {
            methods: vec![http::Method::PUT],
            urls: vec![Template::parse("/users").unwrap()],
            tags: vec![Template::parse("user:{id}").unwrap()],
            ..Default::default()
        }],
    };
    let list = Route {
        pattern: Pattern::parse("/users").unwrap(),
        policy: RoutePolicy::default(),
        on_write: vec![],
    };
    let h = Harness::with_routes(
        Origin::new(|req, _| {
            if req.method() == http::Method::PUT {
                response(200, &[], "")
            } else {
                response(200, &[("cache-control", "max-age=600")], "x")
            }
        }),
        Routes::new(vec![route, list], RoutePolicy::default()),
    );
    h.get("/users/7", &[]).await;
    h.get("/users", &[]).await;
    h.get("/users/8", &[]).await;
    assert_eq!(
        h.cache.purge(&Purge::tags(["user:8"])).await,
        1,
        "route tags are templated"
    );
    h.get("/users/8", &[]).await;
    h.send("PUT", "/users/7", &[]).await;
    assert!(!h.get("/users/7", &[]).await.hit());
    assert!(!h.get("/users", &[]).await.hit());
    assert!(h.get("/users/8", &[]).await.hit());
}

/// Routes where `/me` is keyed per `Authorization` credential.
fn user_scoped_me() -> Routes {
    let policy = RoutePolicy {
        user_scope: Some(HeaderName::from_static("authorization")),
        ..RoutePolicy::default()
    };
    let me = Route {
        pattern: Pattern::parse("/me").unwrap(),
        policy,
        on_write: vec![],
    };
    Routes::new(vec![me], RoutePolicy::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_user_ever_receives_another_users_response() {
    let h = Harness::with_routes(
        Origin::new(|req, _| {
            let who = req
                .headers()
                .get("authorization")
                .map_or("anonymous", |v| v.to_str().unwrap())
                .to_string();
            // Private, and identical for everyone but the name: the worst case.
            response(
                200,
                &[("cache-control", "private, max-age=600")],
                &format!("profile of {who}"),
            )
        }),
        user_scoped_me(),
    );
    *h.origin.delay.lock().unwrap() = Duration::from_millis(2);
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let service = h.service.clone();
            tokio::spawn(async move {
                let user = format!("Bearer user{}", (i * 7919) % 23);
                let reply = send(&service, "GET", "/me", &[("authorization", &user)]).await;
                (user, reply)
            })
        })
        .collect();
    for t in tasks {
        let (user, reply) = t.await.unwrap();
        assert_eq!(reply.body, format!("profile of {user}"));
    }
    let calls = h.origin.calls();
    assert!(
        (23..=46).contains(&calls),
        "per-user entries are reused: {calls} upstream calls for 23 users"
    );
    assert!(
        h.cache.store().get("origin.test/me").await.is_none(),
        "never stored unkeyed"
    );
}

#[tokio::test]
async fn a_user_scoped_route_without_the_credential_stores_nothing_private() {
    let h = Harness::with_routes(
        Origin::new(|req, _| {
            let cookie = req
                .headers()
                .get("cookie")
                .map_or("-", |v| v.to_str().unwrap())
                .to_string();
            response(
                200,
                &[("cache-control", "private, max-age=600")],
                &format!("page of {cookie}"),
            )
        }),
        user_scoped_me(),
    );
    assert_eq!(
        h.get("/me", &[("cookie", "sid=A")]).await.body,
        "page of sid=A"
    );
    assert_eq!(
        h.get("/me", &[("cookie", "sid=B")]).await.body,
        "page of sid=B"
    );
    assert_eq!(h.origin.calls(), 2);
}

#[tokio::test]
async fn a_304_never_stores_its_set_cookie_and_keeps_the_tags() {
    let headers: &[(&str, &str)] = &[
        ("cache-control", "max-age=10"),
        ("etag", "\"e\""),
        ("surrogate-key", "product:42"),
    ];
    let cookie_304 = |_: &_, _| {
        response(
            304,
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"e\""),
                ("set-cookie", "sid=A2"),
            ],
            "",
        )
    };

    // By default a 304 that sets a cookie does not refresh the shared entry.
    let h = Harness::new(Origin::new(move |_, _| response(200, headers, "x")));
    h.get("/p", &[]).await;
    h.advance(20);
    h.origin.set(cookie_304);
    let revalidated = h.get("/p", &[("cookie", "sid=A")]).await;
    assert_eq!(
        revalidated.header("set-cookie"),
        "sid=A2",
        "the client that caused it gets its cookie"
    );
    assert!(!revalidated.cache_status().contains("stored"));

    // Where the route allows cookies, the entry is refreshed without the cookie.
    let policy = RoutePolicy {
        allow_set_cookie: true,
        ..RoutePolicy::default()
    };
    let h = Harness::with_routes(
        Origin::new(move |_, _| response(200, headers, "x")),
        Routes::new(vec![], policy),
    );
    h.get("/p", &[]).await;
    h.advance(20);
    h.origin.set(cookie_304);
    assert_eq!(h.get("/p", &[]).await.header("set-cookie"), "sid=A2");
    let other = h.get("/p", &[]).await;
    assert!(other.hit());
    assert_eq!(other.header("set-cookie"), "", "never replayed");
    // The entry kept its Surrogate-Key tag through the revalidation.
    assert_eq!(h.cache.purge(&Purge::tags(["product:42"])).await, 1);
}

#[tokio::test]
async fn route_rules_apply_to_the_normalized_path() {
    let route = Route {
        pattern: Pattern::parse("/users/{id}").unwrap(),
        policy: RoutePolicy {
            tags: vec![Template::parse("user:{id}").unwrap()],
            ..RoutePolicy::default()
        },
        on_write: vec![],
    };
    let h = Harness::with_routes(
        Origin::fixed(200, &[("cache-control", "max-age=600")], "x"),
        Routes::new(vec![route], RoutePolicy::default()),
    );
    h.get("/users/%31", &[]).await;
    assert_eq!(h.cache.purge(&Purge::tags(["user:1"])).await, 1, "%31 is 1");
}

#[tokio::test]
async fn purged_urls_are_normalized_like_keys() {
    let h = Harness::new(Origin::fixed(200, &[("cache-control", "max-age=600")], "x"));
    h.get("/a/~user", &[]).await;
    assert_eq!(h.cache.purge(&Purge::urls(["/a/%7euser"])).await, 1);
    h.get("/b/~x/1", &[]).await;
    assert_eq!(h.cache.purge(&Purge::prefixes(["/b/%7Ex/"])).await, 1);
}

/// After a reconfiguration that changes a route's key recipe or tags, a
/// request the old configuration still serves (it arrived before the swap)
/// stores nothing: it would be stored by the old recipe, where the new
/// configuration's purges do not find it. Here the new recipe tags `/items/{id}`
/// with `item:{id}`; an untagged entry stored after the reconfiguration would
/// outlive the purge of its tag and be served stale.
#[tokio::test]
async fn a_cache_whose_key_recipe_changed_stores_nothing_more() {
    let routes = |tags: &[&str]| {
        let route = Route {
            pattern: Pattern::parse("/items/{id}").unwrap(),
            policy: RoutePolicy {
                tags: tags.iter().map(|t| Template::parse(t).unwrap()).collect(),
                ..RoutePolicy::default()
            },
            on_write: vec![],
        };
        Routes::new(vec![route], RoutePolicy::default())
    };
    let h = Harness::with_routes(
        Origin::new(|_, n| response(200, &[("cache-control", "max-age=600")], &format!("v{n}"))),
        routes(&[]),
    );
    // A reload that changes no recipe, then one that adds the tag: the first
    // generation is as old as the second.
    let (same, _) = h
        .cache
        .reconfigured(routes(&[]), CacheConfig::default())
        .await;
    let (next, _) = same
        .reconfigured(routes(&["item:{id}"]), CacheConfig::default())
        .await;
    let old = h.get("/items/1", &[]).await;
    assert_eq!(old.body, "v1", "the old configuration still answers");
    next.purge(&Purge::tags(["item:1"])).await;
    let upstream = tower::util::BoxCloneSyncService::new(h.origin.service());
    let new_service = next.layer().layer(upstream);
    let after_purge = send(&new_service, "GET", "/items/1", &[]).await;
    assert_eq!(after_purge.body, "v2", "{}", after_purge.cache_status());
}
