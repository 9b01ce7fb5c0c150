//! The conditional layer driven through axum with `oneshot`, plus one real server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, VARY,
};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use revalidate::{CacheControl, ConditionalLayer, EntityTag, HttpDate, Validators};
use tower::ServiceExt;

const BODY: &str = r#"{"id":1,"name":"Ada"}"#;

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response: Response<Body> = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

fn get_req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Body::empty()).unwrap()
}

fn method_req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = get_req(uri, headers);
    *request.method_mut() = method.parse().unwrap();
    request
}

fn json_app(layer: ConditionalLayer) -> Router {
    Router::new().route(
        "/r",
        get(|| async { ([(CONTENT_TYPE, "application/json")], BODY) }).layer(layer),
    )
}

#[tokio::test]
async fn content_etag_is_strong_and_answers_304_with_exact_headers() {
    let policy = CacheControl::new()
        .public()
        .max_age(Duration::from_secs(60));
    let app = json_app(
        ConditionalLayer::new()
            .cache_control(policy)
            .vary(http::header::ACCEPT),
    );
    let (status, headers, body) = send(&app, get_req("/r", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(body, BODY.as_bytes());
    let etag = headers[ETAG].to_str().unwrap().to_string();
    let tag: EntityTag = etag.parse().unwrap();
    assert!(!tag.is_weak());
    assert_eq!(tag.opaque().len(), 32, "a 128-bit hash in hex");
    assert_eq!(headers[CACHE_CONTROL], "public, max-age=60");
    assert_eq!(headers[VARY], "accept");

    let (status, nm, body) = send(&app, get_req("/r", &[("if-none-match", &etag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(nm[ETAG], etag.as_str());
    assert_eq!(nm[CACHE_CONTROL], "public, max-age=60");
    assert_eq!(nm[VARY], "accept");
    assert!(
        !nm.contains_key(CONTENT_TYPE),
        "representation metadata is not repeated"
    );
    // (axum's router adds `content-length: 0` to any empty body; hyper drops it from
    // a 304 on the wire, see `on_the_wire_a_304_has_no_content_length`.)

    // A different tag, or W/ of the same tag, behaves per weak comparison.
    let (status, ..) = send(&app, get_req("/r", &[("if-none-match", "\"nope\"")])).await;
    assert_eq!(status, 200);
    let weak = format!("W/{etag}");
    let (status, ..) = send(&app, get_req("/r", &[("if-none-match", &weak)])).await;
    assert_eq!(status, 304);
}

/// The layer itself, under plain tower with no router, emits no Content-Length on a 304.
#[tokio::test]
async fn a_bare_tower_304_has_no_content_length() {
    use tower::{Layer, service_fn};
    let handler = service_fn(|_: Request<Body>| async {
        let mut response = Response::new(Body::from(BODY));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, BODY.len().into());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, "application/json".parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    });
    let service = ConditionalLayer::new().layer(handler);
    let ok = service.clone().oneshot(get_req("/", &[])).await.unwrap();
    let etag = ok.headers()[ETAG].clone();
    let nm = service
        .oneshot(get_req("/", &[("if-none-match", etag.to_str().unwrap())]))
        .await
        .unwrap();
    assert_eq!(nm.status(), 304);
    assert!(!nm.headers().contains_key(CONTENT_LENGTH));
    assert!(!nm.headers().contains_key(CONTENT_TYPE));
    assert_eq!(nm.headers()[ETAG], etag);
    assert!(
        nm.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

#[tokio::test]
async fn head_gets_the_same_headers_as_get_and_no_body() {
    let app = json_app(ConditionalLayer::new().cache_control(CacheControl::new().no_cache()));
    let (_, get_headers, get_body) = send(&app, get_req("/r", &[])).await;
    let (status, head_headers, head_body) = send(&app, method_req("HEAD", "/r", &[])).await;
    assert_eq!(status, 200);
    assert!(head_body.is_empty());
    assert_eq!(head_headers[ETAG], get_headers[ETAG]);
    assert_eq!(head_headers[CACHE_CONTROL], get_headers[CACHE_CONTROL]);
    assert_eq!(
        head_headers[CONTENT_LENGTH],
        get_body.len().to_string().as_str()
    );
    let etag = get_headers[ETAG].to_str().unwrap();
    let (status, ..) = send(&app, method_req("HEAD", "/r", &[("if-none-match", etag)])).await;
    assert_eq!(status, 304);
}

#[tokio::test]
async fn distinct_representations_get_distinct_strong_tags() {
    let app = Router::new()
        .route(
            "/json",
            get(|| async { ([(CONTENT_TYPE, "application/json")], "same") }),
        )
        .route(
            "/text",
            get(|| async { ([(CONTENT_TYPE, "text/plain")], "same") }),
        )
        .route(
            "/gz",
            get(|| async {
                (
                    [
                        (CONTENT_TYPE, "application/json"),
                        (CONTENT_ENCODING, "gzip"),
                    ],
                    "same",
                )
            }),
        )
        .layer(ConditionalLayer::new());
    let mut tags = Vec::new();
    for uri in ["/json", "/text", "/gz"] {
        let (_, headers, _) = send(&app, get_req(uri, &[])).await;
        tags.push(headers[ETAG].clone());
    }
    assert_ne!(tags[0], tags[1]);
    assert_ne!(tags[0], tags[2]);
    assert_ne!(tags[1], tags[2]);
}

#[tokio::test]
async fn compression_outside_the_layer_still_revalidates() {
    let big = "x".repeat(4096);
    let app = Router::new()
        .route(
            "/r",
            get(move || {
                let big = big.clone();
                async move { ([(CONTENT_TYPE, "text/plain")], big) }
            }),
        )
        .layer(ConditionalLayer::new())
        .layer(tower_http::compression::CompressionLayer::new());
    let (_, identity, _) = send(&app, get_req("/r", &[])).await;
    let (_, gzipped, _) = send(&app, get_req("/r", &[("accept-encoding", "gzip")])).await;
    assert_eq!(gzipped[CONTENT_ENCODING], "gzip");
    let identity_tag = identity[ETAG].to_str().unwrap().to_string();
    let gzip_tag = gzipped[ETAG].to_str().unwrap().to_string();

    // Whatever tag the compressor let through, echoing it gets a 304, as does the
    // identity tag and the Apache-style `-gzip` suffix.
    let suffixed = format!("{}-gzip\"", identity_tag.trim_end_matches('"'));
    for tag in [identity_tag.as_str(), gzip_tag.as_str(), suffixed.as_str()] {
        let (status, ..) = send(
            &app,
            get_req("/r", &[("accept-encoding", "gzip"), ("if-none-match", tag)]),
        )
        .await;
        assert_eq!(status, 304, "If-None-Match: {tag}");
    }
}

#[tokio::test]
async fn weak_etags_on_request() {
    let app = json_app(ConditionalLayer::new().weak_etags());
    let (_, headers, _) = send(&app, get_req("/r", &[])).await;
    let tag: EntityTag = headers[ETAG].to_str().unwrap().parse().unwrap();
    assert!(tag.is_weak());
    // If-Match needs strong comparison: a weak tag never passes it.
    let (status, ..) = send(
        &app,
        get_req("/r", &[("if-match", headers[ETAG].to_str().unwrap())]),
    )
    .await;
    assert_eq!(status, 412);
}

#[tokio::test]
async fn oversized_and_streaming_bodies_pass_through_untagged() {
    let big = "y".repeat(2048);
    let app = Router::new()
        .route(
            "/big",
            get(move || {
                let big = big.clone();
                async move { big }
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks =
                    ["a", "b"].map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c)));
                Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        .layer(ConditionalLayer::new().max_buffered_bytes(1024));
    let (status, headers, body) = send(&app, get_req("/big", &[])).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 2048));
    assert!(!headers.contains_key(ETAG));
    let (status, headers, body) = send(&app, get_req("/stream", &[("if-none-match", "*")])).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"ab");
    assert!(!headers.contains_key(ETAG));
}

#[tokio::test]
async fn preconditions_are_ignored_when_the_response_would_not_be_2xx() {
    let app = Router::new()
        .route(
            "/gone",
            get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
        )
        .layer(ConditionalLayer::new());
    let (status, _, body) = send(&app, get_req("/gone", &[("if-none-match", "*")])).await;
    assert_eq!(status, 404);
    assert_eq!(body, b"no such thing");
    let (status, ..) = send(&app, get_req("/gone", &[("if-match", "\"x\"")])).await;
    assert_eq!(status, 404);
}

/// A validator-first route whose handler counts its calls.
fn counted_app(calls: Arc<AtomicUsize>, exists: bool) -> Router {
    let lookup = move |_: &Parts| async move {
        exists.then(|| {
            Validators::new()
                .etag(EntityTag::strong("v7").unwrap())
                .last_modified(HttpDate::from_unix_secs(1_700_000_000))
        })
    };
    let handler = move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if exists {
                (StatusCode::OK, BODY).into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }
    };
    let write_calls = handler.clone();
    Router::new().route(
        "/v",
        get(handler)
            .put(move || {
                let h = write_calls.clone();
                async move {
                    let _ = h().await;
                    ([(ETAG, "\"v8\"")], "updated")
                }
            })
            .layer(
                ConditionalLayer::new()
                    .validators(lookup)
                    .cache_control(CacheControl::new().private().no_cache()),
            ),
    )
}

#[tokio::test]
async fn validator_first_304_and_412_never_call_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counted_app(calls.clone(), true);

    let (status, headers, body) = send(&app, get_req("/v", &[("if-none-match", "\"v7\"")])).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(headers[ETAG], "\"v7\"");
    assert_eq!(headers[CACHE_CONTROL], "private, no-cache");
    assert!(
        !headers.contains_key(LAST_MODIFIED),
        "Last-Modified only when there is no ETag"
    );

    let since = HttpDate::from_unix_secs(1_700_000_000).to_string();
    let (status, ..) = send(&app, get_req("/v", &[("if-modified-since", &since)])).await;
    assert_eq!(status, 304);

    let (status, headers, body) =
        send(&app, method_req("PUT", "/v", &[("if-match", "\"v6\"")])).await;
    assert_eq!(status, 412);
    assert_eq!(
        headers[ETAG], "\"v7\"",
        "a 412 tells the client the current tag"
    );
    assert_eq!(headers[CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 412);

    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no handler call for 304 or 412"
    );

    // A plain GET runs the handler and gets the validators.
    let (status, headers, _) = send(&app, get_req("/v", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(headers[ETAG], "\"v7\"");
    assert_eq!(headers[LAST_MODIFIED], since.as_str());
    // A matching If-Match runs the write, whose own new tag is kept.
    let (status, headers, _) = send(&app, method_req("PUT", "/v", &[("if-match", "\"v7\"")])).await;
    assert_eq!(status, 200);
    assert_eq!(headers[ETAG], "\"v8\"");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn missing_resources_if_match_star_fails_writes_but_get_falls_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counted_app(calls.clone(), false);
    let (status, ..) = send(&app, method_req("PUT", "/v", &[("if-match", "*")])).await;
    assert_eq!(status, 412);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Create-only PUT on a missing resource proceeds.
    let (status, ..) = send(&app, method_req("PUT", "/v", &[("if-none-match", "*")])).await;
    assert_eq!(status, 200);
    // GET of a missing resource ignores preconditions: the handler's 404 stands.
    let (status, ..) = send(&app, get_req("/v", &[("if-none-match", "*")])).await;
    assert_eq!(status, 404);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let app = counted_app(Arc::new(AtomicUsize::new(0)), true);
    let (status, ..) = send(&app, method_req("PUT", "/v", &[("if-none-match", "*")])).await;
    assert_eq!(
        status, 412,
        "If-None-Match: * fails on an existing resource"
    );
}

#[tokio::test]
async fn if_range_failure_strips_range_before_the_handler() {
    let lookup =
        |_: &Parts| async { Some(Validators::new().etag(EntityTag::strong("v1").unwrap())) };
    let app = Router::new().route(
        "/r",
        get(|headers: HeaderMap| async move {
            headers
                .get(RANGE)
                .map_or("full".to_string(), |_| "partial".into())
        })
        .layer(ConditionalLayer::new().validators(lookup)),
    );
    let (_, _, body) = send(
        &app,
        get_req("/r", &[("range", "bytes=0-1"), ("if-range", "\"v1\"")]),
    )
    .await;
    assert_eq!(body, b"partial");
    let (_, _, body) = send(
        &app,
        get_req("/r", &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")]),
    )
    .await;
    assert_eq!(body, b"full", "a weak tag in If-Range never matches");
    let (_, _, body) = send(
        &app,
        get_req("/r", &[("range", "bytes=0-1"), ("if-range", "\"v0\"")]),
    )
    .await;
    assert_eq!(body, b"full");
}

#[tokio::test]
async fn require_if_match_answers_428_and_malformed_if_match_400() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/w",
        axum::routing::put(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        })
        .layer(ConditionalLayer::new().require_if_match()),
    );
    let (status, headers, body) = send(&app, method_req("PUT", "/w", &[])).await;
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(headers[CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 428);

    let (status, _, body) = send(&app, method_req("PUT", "/w", &[("if-match", "v1")])).await;
    assert_eq!(status, 400);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("if-match"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// With `route_layer`, a method the route does not serve gets axum's 405 before
/// any precondition rule: a PUT to a GET-only route is not asked for If-Match.
#[tokio::test]
async fn a_method_the_route_does_not_serve_gets_405_before_428() {
    let app = Router::new().route(
        "/price",
        get(|| async { "expensive" }).route_layer(ConditionalLayer::new().require_if_match()),
    );
    let (status, headers, _) = send(&app, method_req("PUT", "/price", &[])).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[http::header::ALLOW], "GET,HEAD");
    let (status, _, _) = send(&app, get_req("/price", &[])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn user_scoped_routes_never_share_tags_between_users() {
    let app = Router::new().route(
        "/me",
        get(|| async { "identical body" }).layer(
            ConditionalLayer::new().user_scoped().cache_control(
                CacheControl::new()
                    .public()
                    .max_age(Duration::from_secs(30)),
            ),
        ),
    );
    let (_, alice, _) = send(&app, get_req("/me", &[("authorization", "Bearer 1")])).await;
    let (_, bob, _) = send(&app, get_req("/me", &[("authorization", "Bearer 2")])).await;
    assert_ne!(alice[ETAG], bob[ETAG]);
    assert_eq!(alice[CACHE_CONTROL], "private, max-age=30");
    assert_eq!(alice[VARY], "authorization");

    let alice_tag = alice[ETAG].to_str().unwrap();
    let (status, ..) = send(
        &app,
        get_req(
            "/me",
            &[("authorization", "Bearer 2"), ("if-none-match", alice_tag)],
        ),
    )
    .await;
    assert_eq!(status, 200, "Bob cannot revalidate with Alice's tag");
    let (status, ..) = send(
        &app,
        get_req(
            "/me",
            &[("authorization", "Bearer 1"), ("if-none-match", alice_tag)],
        ),
    )
    .await;
    assert_eq!(status, 304);
}

#[tokio::test]
async fn if_modified_since_uses_handler_last_modified_in_content_mode() {
    let date = HttpDate::from_unix_secs(1_600_000_000).to_string();
    let stamped = date.clone();
    let app = Router::new().route(
        "/r",
        get(move || {
            let d = stamped.clone();
            async move { ([(LAST_MODIFIED, d)], "body") }
        })
        .layer(ConditionalLayer::new()),
    );
    let (status, ..) = send(&app, get_req("/r", &[("if-modified-since", &date)])).await;
    assert_eq!(status, 304);
    let earlier = HttpDate::from_unix_secs(1_599_999_999).to_string();
    let (status, ..) = send(&app, get_req("/r", &[("if-modified-since", &earlier)])).await;
    assert_eq!(status, 200);
}

/// Over a real socket, a 304 carries no Content-Length and no body.
#[tokio::test]
async fn on_the_wire_a_304_has_no_content_length() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = json_app(ConditionalLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (_, headers, _) = send(&json_app(ConditionalLayer::new()), get_req("/r", &[])).await;
    let etag = headers[ETAG].to_str().unwrap();

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /r HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let lower = raw.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 304"), "{raw}");
    assert!(!lower.contains("content-length"), "{raw}");
    assert!(lower.contains(&format!("etag: {}", etag.to_ascii_lowercase())));
    assert!(raw.ends_with("\r\n\r\n"), "no body after the head: {raw:?}");
}

/// A handler that sets its own ETag keeps it: the layer answers `If-None-Match`
/// from that tag with a 304 and never hashes the body (a stream here, which the
/// layer could not hash anyway).
#[tokio::test]
async fn a_handler_that_sets_its_own_etag_gets_304s_from_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new().route(
        "/r",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("a"), Ok("b")]);
                ([(ETAG, "\"from-the-handler\"")], Body::from_stream(chunks))
            }
        })
        .route_layer(ConditionalLayer::new()),
    );
    let (status, headers, body) = send(&app, get_req("/r", &[])).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ab"[..]));
    assert_eq!(headers[ETAG], "\"from-the-handler\"");
    let (status, headers, body) = send(
        &app,
        get_req("/r", &[("if-none-match", "\"from-the-handler\"")]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[ETAG], "\"from-the-handler\"");
    assert!(body.is_empty());
    let (status, ..) = send(&app, get_req("/r", &[("if-none-match", "\"other\"")])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "content mode runs the handler"
    );
}

/// One layer for the whole app (`Router::layer`): every route's responses are
/// tagged and revalidated, and what is not a success (the fallback's 404) passes
/// through untouched.
#[tokio::test]
async fn an_app_wide_layer_serves_every_route() {
    let app = Router::new()
        .route("/a", get(|| async { "first" }))
        .route("/b", get(|| async { "second" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "none") })
        .layer(ConditionalLayer::new());
    let mut tags = Vec::new();
    for path in ["/a", "/b"] {
        let (status, headers, _) = send(&app, get_req(path, &[])).await;
        assert_eq!(status, StatusCode::OK);
        let tag = headers[ETAG].to_str().unwrap().to_owned();
        let (status, ..) = send(&app, get_req(path, &[("if-none-match", &tag)])).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        tags.push(tag);
    }
    assert_ne!(tags[0], tags[1], "each representation has its own tag");
    let (status, headers, body) = send(&app, get_req("/missing", &[])).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::NOT_FOUND, &b"none"[..])
    );
    assert!(!headers.contains_key(ETAG));
}

/// Validators looked up from axum extractors: the route's path parameter and the
/// app's state, with no parsing of the request by hand.
#[cfg(feature = "axum")]
#[tokio::test]
async fn validators_from_extractors_see_the_path_and_the_state() {
    use axum::extract::{Path, State};
    use revalidate::from_extractors;

    /// The app's state: a version per user id, and how often the handler ran.
    #[derive(Clone)]
    struct AppState {
        versions: Arc<Vec<u64>>,
        calls: Arc<AtomicUsize>,
    }
    async fn lookup((Path(id), State(app)): (Path<usize>, State<AppState>)) -> Option<Validators> {
        let version = *app.versions.get(id)?;
        Some(Validators::versioned(
            version,
            HttpDate::from_unix_secs(1_700_000_000),
        ))
    }
    async fn handler(Path(id): Path<String>, State(app): State<AppState>) -> impl IntoResponse {
        app.calls.fetch_add(1, Ordering::SeqCst);
        match id.parse::<usize>() {
            Ok(id) => (StatusCode::OK, format!("user {id}")),
            Err(_) => (StatusCode::BAD_REQUEST, "not an id".to_string()),
        }
    }
    let state = AppState {
        versions: Arc::new(vec![3, 8]),
        calls: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route(
            "/users/{id}",
            get(handler).route_layer(
                ConditionalLayer::new().validators(from_extractors(state.clone(), lookup)),
            ),
        )
        .with_state(state.clone());
    let calls = || state.calls.load(Ordering::SeqCst);

    let tag = Validators::versioned(8, HttpDate::from_unix_secs(0))
        .etag
        .unwrap()
        .to_string();
    let (status, headers, _) = send(&app, get_req("/users/1", &[("if-none-match", &tag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED, "user 1 is at version 8");
    assert_eq!(headers[ETAG].to_str().unwrap(), tag);
    assert_eq!(calls(), 0, "answered before the handler");

    let (status, headers, _) = send(&app, get_req("/users/0", &[("if-none-match", &tag)])).await;
    assert_eq!(status, StatusCode::OK, "user 0 is at version 3");
    assert_ne!(headers[ETAG].to_str().unwrap(), tag);
    assert_eq!(calls(), 1);

    // A parameter the lookup's extractor rejects: the handler answers.
    let (status, _, body) = send(&app, get_req("/users/x", &[("if-none-match", &tag)])).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::BAD_REQUEST, &b"not an id"[..])
    );
    assert_eq!(calls(), 2);
}
