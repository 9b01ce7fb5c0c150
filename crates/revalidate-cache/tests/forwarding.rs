//! What the cache forwards is what it keys: the upstream receives the normalized
//! target, so no spelling of a URL can make the origin answer for another resource
//! than the one its response is stored under.

mod support;

use proptest::prelude::*;
use revalidate_cache::{Pattern, Purge, QueryRules, Route, RoutePolicy, Routes};
use support::{Harness, Origin};

fn rules() -> QueryRules {
    QueryRules {
        sort: true,
        drop: vec!["utm_*".into()],
    }
}

/// `/users/{id}` sorts its query and drops `utm_*`; other paths keep theirs.
fn harness() -> Harness {
    let route = Route {
        pattern: Pattern::parse("/users/{id}").unwrap(),
        policy: RoutePolicy {
            query: rules(),
            ..RoutePolicy::default()
        },
        on_write: vec![],
    };
    let origin = Origin::new(|request, _| {
        let target = request.uri().path_and_query().unwrap().as_str().to_string();
        support::response(200, &[("cache-control", "max-age=600")], &target)
    });
    Harness::with_routes(origin, Routes::new(vec![route], RoutePolicy::default()))
}

#[tokio::test]
async fn a_percent_encoded_path_is_forwarded_as_keyed() {
    let h = harness();
    let reply = h.get("/%75sers/3", &[("cache-control", "no-cache")]).await;
    assert_eq!(h.origin.last_target(), "/users/3");
    assert_eq!(reply.body, "/users/3", "the origin answered for /users/3");
    let hit = h.get("/users/3", &[]).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, "/users/3");
}

/// `/static/%2e%2e/me` once matched a `/static/*` route (and its policy) while the
/// origin resolved it to `/me`: web cache deception. The dot segments are resolved
/// before routing, keying and forwarding.
#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_forwarding() {
    let h = harness();
    h.get("/x/%2e%2e/users/./3?b=1&utm_a=2&a=1", &[]).await;
    assert_eq!(
        h.origin.last_target(),
        "/users/3?a=1&b=1",
        "routed as /users/{{id}}"
    );
    h.get("/a/../..", &[]).await;
    assert_eq!(h.origin.last_target(), "/");
}

#[tokio::test]
async fn dropped_parameters_never_reach_the_origin() {
    let h = harness();
    // An origin that splits on `;` would read a=2 in the parameter the key drops.
    h.get("/users/1?a=1&utm_source=x;a=2", &[]).await;
    assert_eq!(h.origin.last_target(), "/users/1?a=1");
    assert_eq!(h.get("/users/1?a=1", &[]).await.body, "/users/1?a=1");
}

#[tokio::test]
async fn writes_and_bypassed_requests_are_forwarded_normalized_too() {
    let h = harness();
    h.send("PUT", "/%75sers/3?utm_x=1&b=2&a=1", &[]).await;
    assert_eq!(h.origin.last_target(), "/users/3?a=1&b=2");
    h.send("OPTIONS", "/x/%7e", &[]).await;
    assert_eq!(h.origin.last_target(), "/x/~");
}

/// One path segment or query piece: plain text, escapes of unreserved and reserved
/// characters in both cases, a bare `%`, `;`, `=`, names the route drops and dot
/// segments, escaped or not.
fn piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "users",
        "3",
        "%75",
        "%2F",
        "%2f",
        "%7e",
        "%7E",
        "~",
        "%",
        "%zz",
        ";",
        "a=1",
        "a=2",
        "b=",
        "utm_source=x",
        "utm_",
        "%61=1",
        "=",
        "&",
        "?",
        "%3B",
        "%26",
    ])
    .prop_map(str::to_string)
}

fn target() -> impl Strategy<Value = String> {
    let path = prop::collection::vec(piece(), 0..5).prop_map(|pieces| {
        let pieces: Vec<String> = pieces.into_iter().filter(|p| !p.contains('?')).collect();
        format!("/{}", pieces.join("/"))
    });
    let query = prop::option::of(prop::collection::vec(piece(), 0..6));
    (
        prop::bool::ANY.prop_map(|users| if users { "/users/7" } else { "" }),
        path,
        query,
    )
        .prop_map(|(users, path, query)| {
            let path = if users.is_empty() {
                path
            } else {
                users.to_string()
            };
            match query {
                Some(query) => format!("{path}?{}", query.concat()),
                None => path,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the client's spelling, the target the upstream receives normalizes
    /// to itself, and its response is stored under exactly that key: a purge of
    /// the received target removes the one stored entry, and the client's own
    /// spelling then misses.
    #[test]
    fn the_forwarded_target_is_the_stored_key(target in target()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let h = harness();
            let reply = h.get(&target, &[]).await;
            prop_assert_eq!(reply.status, 200);
            let received = h.origin.last_target();
            prop_assert_eq!(&reply.body, &received, "the client got the origin's answer for what it received");
            prop_assert!(h.get(&target, &[]).await.hit(), "stored under the client's key");
            // Sent as the client's target, the received one is forwarded unchanged:
            // it is already normalized, under the same route.
            h.get(&received, &[("cache-control", "no-cache")]).await;
            prop_assert_eq!(h.origin.last_target(), received.clone());
            prop_assert_eq!(h.cache.purge(&Purge::urls([received.as_str()])).await, 1);
            prop_assert!(!h.get(&target, &[]).await.hit(), "the purge named the stored key");
            Ok(())
        })?;
    }
}
