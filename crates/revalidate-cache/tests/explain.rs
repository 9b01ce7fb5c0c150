//! `Routes::explain` tells the key, tags and purges the cache itself uses: each
//! test stores responses through the layer and finds them under the explained key.

mod support;

use http::{HeaderName, Method, Request};
use revalidate_cache::{
    Decision, EntryFilter, InvalidationRule, LookupNow, Pattern, QueryRules, Route, RoutePolicy,
    Routes, Store, Template,
};
use support::{Harness, Origin, response};

fn templates(sources: &[&str]) -> Vec<Template> {
    sources
        .iter()
        .map(|s| Template::parse(s).unwrap())
        .collect()
}

fn routes() -> Routes {
    let users = Route {
        pattern: Pattern::parse("/users/{id}").unwrap(),
        policy: RoutePolicy {
            key_headers: vec![HeaderName::from_static("accept-language")],
            key_cookies: vec!["region".into()],
            query: QueryRules {
                sort: true,
                drop: vec!["utm_*".into()],
            },
            tags: templates(&["user:{id}", "users"]),
            ..RoutePolicy::default()
        },
        on_write: vec![
            InvalidationRule {
                methods: vec![Method::PUT, Method::DELETE],
                urls: templates(&["/users"]),
                tags: templates(&["user:{id}"]),
                ..InvalidationRule::default()
            },
            InvalidationRule {
                methods: vec![],
                prefixes: templates(&["/users/{id}/"]),
                ..InvalidationRule::default()
            },
        ],
    };
    let me = Route {
        pattern: Pattern::parse("/me").unwrap(),
        policy: RoutePolicy {
            user_scope: Some(http::header::AUTHORIZATION),
            ..RoutePolicy::default()
        },
        on_write: vec![],
    };
    let admin = Route {
        pattern: Pattern::parse("/admin/*").unwrap(),
        policy: RoutePolicy {
            bypass: true,
            ..RoutePolicy::default()
        },
        on_write: vec![],
    };
    Routes::new(vec![users, me, admin], RoutePolicy::default())
}

/// The request the harness sends for `uri`, as `Routes::explain` takes it.
fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://origin.test{uri}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

fn harness() -> Harness {
    let origin = Origin::new(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
            "ok",
        )
    });
    Harness::with_routes(origin, routes())
}

#[tokio::test]
async fn the_explained_key_is_the_key_a_response_is_stored_under() {
    let h = harness();
    let cases: [(&str, &[(&str, &str)]); 5] = [
        (
            "/users/%34%32?utm_source=x&b=2&a=1",
            &[
                ("accept-language", "fr"),
                ("cookie", "region=eu; other=1"),
                ("accept-encoding", "GZIP, br"),
            ],
        ),
        ("/users/7/../8", &[]),
        // A key header named by Connection is hop-by-hop: the key leaves it out.
        (
            "/users/9",
            &[("connection", "accept-language"), ("accept-language", "de")],
        ),
        ("/me", &[("authorization", "Bearer a")]),
        ("/other?z=1&a=2", &[]),
    ];
    let routes = routes();
    for (uri, headers) in cases {
        let reply = h.get(uri, headers).await;
        assert!(reply.cache_status().contains("stored"), "{uri}: {reply:?}");
        let explained = routes.explain(request("GET", uri, headers));
        let Decision::Keyed(key) = explained.decision() else {
            panic!("{uri}: {:?}", explained.decision());
        };
        assert!(
            matches!(h.cache.store().get_now(key), LookupNow::Found(_)),
            "{uri}: nothing stored under {key:?}"
        );
        let listed = h
            .cache
            .entries(&EntryFilter::default(), 100)
            .unwrap()
            .entries;
        let entry = listed.iter().find(|e| e.key == *key).expect("listed");
        assert_eq!(entry.path, explained.target(), "{uri}");
        assert_eq!(entry.tags, explained.tags(), "{uri}");
        // The variant is the one the request's secondary key selects.
        let accept_encoding = HeaderName::from_static("accept-encoding");
        let secondary = explained.secondary(std::slice::from_ref(&accept_encoding));
        assert_eq!(
            entry.vary.get("accept-encoding"),
            Some(&secondary[0].1),
            "{uri}"
        );
        // And it is what the next request for the same key hits.
        assert!(h.get(uri, headers).await.hit(), "{uri}");
    }
    let first = routes.explain(request("GET", cases[0].0, cases[0].1));
    assert_eq!(
        first.key(),
        Some("origin.test/users/42?a=1&b=2\nh:accept-language=fr\nc:region=eu")
    );
    assert_eq!(first.pattern(), Some("/users/{id}"));
    assert_eq!(first.route_index(), Some(0));
    assert_eq!(first.tags(), ["user:42", "users"]);
    assert_eq!(
        first.secondary(&[HeaderName::from_static("accept-encoding")])[0].1,
        Some("br, gzip".to_string())
    );
    let hop = routes.explain(request("GET", cases[2].0, cases[2].1));
    assert_eq!(
        hop.key(),
        Some("origin.test/users/9\nh:accept-language=\nc:region=")
    );
    let me = routes.explain(request("GET", "/me", &[("authorization", "Bearer a")]));
    let other = routes.explain(request("GET", "/me", &[("authorization", "Bearer b")]));
    assert!(me.key().unwrap().contains("\nu:") && !me.key().unwrap().contains("Bearer"));
    assert_ne!(me.key(), other.key(), "one key per credential");
    assert_eq!(
        routes.explain(request("GET", "/other", &[])).route_index(),
        None
    );
}

#[tokio::test]
async fn what_a_write_is_explained_to_purge_is_what_it_purges() {
    let h = harness();
    for uri in ["/users/5", "/users/5/posts", "/users", "/users/6"] {
        h.get(uri, &[]).await;
    }
    let routes = routes();
    let explained = routes.explain(request("PUT", "/users/5?utm_x=1", &[]));
    assert_eq!(explained.decision(), &Decision::Write);
    let put = explained.purge_on_write(&Method::PUT).unwrap();
    assert_eq!(put.urls, ["/users/5", "/users"]);
    assert_eq!(put.prefixes, ["/users/5/"]);
    assert_eq!(put.tags, ["user:5"]);
    let post = explained.purge_on_write(&Method::POST).unwrap();
    assert_eq!((post.urls.len(), post.tags.len()), (1, 0), "{post:?}");
    assert!(explained.purge_on_write(&Method::OPTIONS).is_none());
    assert!(explained.purge_on_write(&Method::GET).is_none());

    h.send("PUT", "/users/5?utm_x=1", &[]).await;
    let left: Vec<String> = h
        .cache
        .entries(&EntryFilter::default(), 100)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        left,
        ["/users/6"],
        "everything the explanation named is gone"
    );
}

#[tokio::test]
async fn bypassed_and_unkeyable_requests_are_not_looked_up() {
    let routes = routes();
    let admin = routes.explain(request("GET", "/admin/x", &[]));
    assert_eq!(admin.decision(), &Decision::RouteBypass);
    assert_eq!(admin.key(), None);
    let bad_host = Request::get("/users/1")
        .header("host", "a.test/x")
        .body(())
        .unwrap();
    assert_eq!(routes.explain(bad_host).decision(), &Decision::InvalidHost);
    // `*` names no resource, so no key (which holds a path purges name).
    let asterisk = Request::get("*").header("host", "a.test").body(()).unwrap();
    assert_eq!(routes.explain(asterisk).decision(), &Decision::NotAPath);
    let head = routes.explain(request("HEAD", "/users/1", &[]));
    assert!(matches!(head.decision(), Decision::Keyed(_)));
}
