//! The sample users API on SQLite, the embedded default.

mod support;

use axum::body::Body;
use support::{scenarios, sqlite};

#[tokio::test]
async fn crud_flow() {
    let (api, _dir) = sqlite().await;
    scenarios::crud_flow(&api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_puts_one_winner() {
    let (api, _dir) = sqlite().await;
    scenarios::concurrent_puts(&api).await;
    scenarios::concurrent_store_updates(&api).await;
}

#[tokio::test]
async fn collection_etag() {
    let (api, _dir) = sqlite().await;
    scenarios::collection_etag(&api).await;
}

#[tokio::test]
async fn seeding_is_idempotent() {
    let (api, _dir) = sqlite().await;
    assert_eq!(api.store.seed().await.unwrap(), 3);
    assert_eq!(api.store.seed().await.unwrap(), 0);
    let list = api.get("/users", &[]).await.json();
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn me_is_user_scoped_and_private() {
    let (api, _dir) = sqlite().await;
    api.store.seed().await.unwrap();
    let anonymous = api.get("/me", &[]).await;
    anonymous.assert_problem(401);
    assert_eq!(anonymous.header("www-authenticate"), "Bearer");
    api.get("/me", &[("authorization", "Bearer 999")])
        .await
        .assert_problem(401);

    let one = api.get("/me", &[("authorization", "Bearer 1")]).await;
    let two = api.get("/me", &[("authorization", "Bearer 2")]).await;
    assert_eq!(one.json()["id"], 1);
    assert_eq!(two.json()["id"], 2);
    // Both users are at version 1: unscoped, their tags would be equal.
    assert_ne!(one.header("etag"), two.header("etag"));
    assert_eq!(one.header("cache-control"), "private, no-cache");
    assert_eq!(one.header("vary"), "authorization");

    let revalidated = api
        .get(
            "/me",
            &[
                ("authorization", "Bearer 1"),
                ("if-none-match", one.header("etag")),
            ],
        )
        .await;
    assert_eq!(revalidated.status, 304);
    let crossed = api
        .get(
            "/me",
            &[
                ("authorization", "Bearer 2"),
                ("if-none-match", one.header("etag")),
            ],
        )
        .await;
    assert_eq!(crossed.status, 200);
    assert_eq!(crossed.json()["id"], 2);
}

/// Bad input: a 4xx problem, never a 500, and nothing changes.
#[tokio::test]
async fn bad_input_is_refused_with_problems_and_changes_nothing() {
    let (api, _dir) = sqlite().await;
    api.store.seed().await.unwrap();
    let before = api.get("/users", &[]).await;

    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Body,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/users/1",
            vec![("content-type", "application/json"), ("if-match", "\"v1\"")],
            Body::from("{\"name\":"),
            400,
        ),
        (
            "PUT",
            "/users/1",
            vec![("content-type", "application/json"), ("if-match", "\"v1\"")],
            Body::from(r#"{"name":"A","email":"a@b.c","admin":true}"#),
            422,
        ),
        (
            "PATCH",
            "/users/1",
            vec![("content-type", "application/json"), ("if-match", "\"v1\"")],
            Body::from(r#"{"name":7}"#),
            422,
        ),
        (
            "PATCH",
            "/users/1",
            vec![("content-type", "application/json"), ("if-match", "\"v1\"")],
            Body::from(r#"{"email":"nope"}"#),
            422,
        ),
        (
            "PATCH",
            "/users/1",
            vec![("content-type", "application/json"), ("if-match", "\"v1\"")],
            Body::from(r#"{"name":"  "}"#),
            422,
        ),
        (
            "POST",
            "/users",
            vec![("content-type", "application/json")],
            Body::from(format!(
                r#"{{"name":"{}","email":"a@b.c"}}"#,
                "x".repeat(70_000)
            )),
            413,
        ),
        (
            "POST",
            "/users",
            vec![("content-type", "text/plain")],
            Body::from(r#"{"name":"A","email":"a@b.c"}"#),
            415,
        ),
        (
            "POST",
            "/users",
            vec![],
            Body::from(r#"{"name":"A","email":"a@b.c"}"#),
            415,
        ),
        ("GET", "/users/abc", vec![], Body::empty(), 400),
        ("GET", "/users/-1", vec![], Body::empty(), 400),
        // One spelling per user: others would be cache keys of their own.
        ("GET", "/users/+1", vec![], Body::empty(), 400),
        ("GET", "/users/01", vec![], Body::empty(), 400),
        ("GET", "/users/1e3", vec![], Body::empty(), 400),
        ("GET", "/users/0", vec![], Body::empty(), 400),
        (
            "DELETE",
            "/users/+1",
            vec![("if-match", "\"v1\"")],
            Body::empty(),
            400,
        ),
        (
            "PUT",
            "/users/99999999999999999999",
            vec![("content-type", "application/json"), ("if-match", "\"v1\"")],
            Body::from("{}"),
            400,
        ),
        (
            "PUT",
            "/users/1",
            vec![("content-type", "application/json"), ("if-match", "v1")],
            Body::from(r#"{"name":"A","email":"a@b.c"}"#),
            400,
        ),
        (
            "DELETE",
            "/users/1",
            vec![("if-match", "\"v1\" \"v2\"")],
            Body::empty(),
            400,
        ),
        (
            "PUT",
            "/users/1",
            vec![
                ("content-type", "application/json"),
                ("if-none-match", "bad"),
            ],
            Body::from(r#"{"name":"A","email":"a@b.c"}"#),
            400,
        ),
        ("POST", "/users/1", vec![], Body::empty(), 405),
        ("GET", "/nowhere", vec![], Body::empty(), 404),
    ];
    for (method, uri, headers, body, status) in cases {
        let reply = api.send(method, uri, &headers, body).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {uri}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.assert_problem(status);
    }
    // A streamed body over the limit, with no Content-Length to refuse it early.
    let chunks =
        (0..80).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 1024])));
    let streamed = api
        .send(
            "POST",
            "/users",
            &[("content-type", "application/json")],
            Body::from_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    streamed.assert_problem(413);

    let after = api.get("/users", &[]).await;
    assert_eq!(
        before.header("etag"),
        after.header("etag"),
        "no write happened"
    );
    assert_eq!(before.body, after.body);
}
