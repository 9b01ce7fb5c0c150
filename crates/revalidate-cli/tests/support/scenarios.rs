//! Behaviours of the users API, run against every database backend.

use super::Api;

/// Create, read, 304, 412, 428, update, delete.
pub async fn crud_flow(api: &Api) {
    let created = api
        .write(
            "POST",
            "/users",
            None,
            r#"{"name":"Edsger","email":"ewd@example.com"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let location = created.header("location").to_string();
    assert_eq!(created.header("etag"), "\"v1\"");
    let id = created.json()["id"].as_i64().unwrap();
    assert_eq!(location, format!("/users/{id}"));

    let read = api.get(&location, &[]).await;
    assert_eq!(read.status, 200);
    let user = read.json();
    assert_eq!(user["name"], "Edsger");
    assert_eq!(user["version"], 1);
    assert!(user["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(read.header("etag"), "\"v1\"");
    let last_modified = read.header("last-modified").to_string();

    let head = api
        .send("HEAD", &location, &[], axum::body::Body::empty())
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), "\"v1\"");
    assert_eq!(head.header("last-modified"), last_modified);
    assert_eq!(head.header("content-length"), read.body.len().to_string());

    let not_modified = api.get(&location, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), "\"v1\"");
    let since = api
        .get(&location, &[("if-modified-since", &last_modified)])
        .await;
    assert_eq!(since.status, 304);

    // Writes without If-Match are refused; nothing changes.
    api.write(
        "PUT",
        &location,
        None,
        r#"{"name":"X","email":"x@example.com"}"#,
    )
    .await
    .assert_problem(428);
    api.send("DELETE", &location, &[], axum::body::Body::empty())
        .await
        .assert_problem(428);

    let updated = api
        .write(
            "PUT",
            &location,
            Some("\"v1\""),
            r#"{"name":"Edsger W.","email":"ewd@example.com"}"#,
        )
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.header("etag"), "\"v2\"");
    assert_eq!(updated.json()["version"], 2);

    let stale = api
        .write(
            "PATCH",
            &location,
            Some("\"v1\""),
            r#"{"name":"Lost update"}"#,
        )
        .await;
    stale.assert_problem(412);
    assert_eq!(
        stale.header("etag"),
        "\"v2\"",
        "412 carries the current ETag"
    );

    let patched = api
        .write(
            "PATCH",
            &location,
            Some("\"v2\""),
            r#"{"email":"edsger@example.com"}"#,
        )
        .await;
    assert_eq!(patched.status, 200);
    let body = patched.json();
    assert_eq!(
        (
            body["name"].as_str(),
            body["email"].as_str(),
            body["version"].as_i64()
        ),
        (Some("Edsger W."), Some("edsger@example.com"), Some(3))
    );

    // A weak tag never satisfies If-Match.
    api.write("PATCH", &location, Some("W/\"v3\""), r#"{"name":"Weak"}"#)
        .await
        .assert_problem(412);

    let deleted_stale = api
        .send(
            "DELETE",
            &location,
            &[("if-match", "\"v2\"")],
            axum::body::Body::empty(),
        )
        .await;
    deleted_stale.assert_problem(412);
    let deleted = api
        .send(
            "DELETE",
            &location,
            &[("if-match", "\"v3\"")],
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(deleted.status, 204);
    api.get(&location, &[]).await.assert_problem(404);
    api.write(
        "PUT",
        &location,
        Some("\"v3\""),
        r#"{"name":"Ghost","email":"g@example.com"}"#,
    )
    .await
    .assert_problem(404);
}

/// 50 concurrent PUTs with the same If-Match: exactly one wins, the version moves by one.
pub async fn concurrent_puts(api: &Api) {
    let created = api
        .write(
            "POST",
            "/users",
            None,
            r#"{"name":"Race","email":"race@example.com"}"#,
        )
        .await;
    let location = created.header("location").to_string();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let api = api.clone();
            let location = location.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"name":"writer {i}","email":"w{i}@example.com"}}"#);
                api.write("PUT", &location, Some("\"v1\""), &body).await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status.as_u16() {
            200 => ok += 1,
            412 => assert_eq!(reply.header("etag"), "\"v2\""),
            other => panic!(
                "unexpected {other}: {:?}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
    assert_eq!(ok, 1, "exactly one writer wins");
    let after = api.get(&location, &[]).await;
    assert_eq!(
        after.json()["version"],
        2,
        "the version advanced by exactly one"
    );
}

/// The same race straight at the store, with no layer pre-check in front.
pub async fn concurrent_store_updates(api: &Api) {
    use revalidate_cli::demo::{Expected, Fields, WriteOutcome};
    let user = api
        .store
        .create("Direct", "direct@example.com")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = api.store.clone();
            tokio::spawn(async move {
                let fields = Fields {
                    name: Some(format!("n{i}")),
                    email: None,
                };
                store
                    .update(user.id, &Expected::Versions(vec![1]), &fields)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        if let WriteOutcome::Done(_) = task.await.unwrap() {
            done += 1;
        }
    }
    assert_eq!(done, 1);
    assert_eq!(api.store.get(user.id).await.unwrap().unwrap().version, 2);
}

/// The collection ETag changes on every add, change and removal.
pub async fn collection_etag(api: &Api) {
    let tag = |reply: &super::Reply| reply.header("etag").to_string();
    let first = api.get("/users", &[]).await;
    assert_eq!(first.status, 200);
    let t0 = tag(&first);
    assert_eq!(
        api.get("/users", &[("if-none-match", &t0)]).await.status,
        304
    );

    let created = api
        .write(
            "POST",
            "/users",
            None,
            r#"{"name":"New","email":"n@example.com"}"#,
        )
        .await;
    let location = created.header("location").to_string();
    let t1 = tag(&api.get("/users", &[]).await);
    assert_ne!(t0, t1, "add changes the collection tag");
    assert_eq!(
        api.get("/users", &[("if-none-match", &t0)]).await.status,
        200
    );

    api.write("PATCH", &location, Some("\"v1\""), r#"{"name":"Changed"}"#)
        .await;
    let t2 = tag(&api.get("/users", &[]).await);
    assert_ne!(t1, t2, "change changes the collection tag");

    api.send(
        "DELETE",
        &location,
        &[("if-match", "\"v2\"")],
        axum::body::Body::empty(),
    )
    .await;
    let t3 = tag(&api.get("/users", &[]).await);
    assert_ne!(t2, t3, "removal changes the collection tag");
    assert_eq!(
        api.get("/users", &[("if-none-match", &t3)]).await.status,
        304
    );
}
