//! The key and invalidation map: `revalidate routes`, `revalidate explain` and the
//! admin API's `GET /entries`, checked against what the proxy stores.

mod support;

use std::net::SocketAddr;
use std::process::Output;

use axum::Router;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use revalidate_cli::keymap::{Asked, explain_json};
use revalidate_cli::serve::admin::{AdminState, router as admin_router};
use revalidate_cli::serve::server::ClientLimits;
use revalidate_cli::serve::{UpstreamClient, parse, proxy};
use serde_json::Value;
use support::proxy::{request, send, spawn, spawn_proxy};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../revalidate.example.toml");

/// A small configuration with every part of a key and of a write rule.
const SMALL: &str = r#"
[defaults]
query = { sort = true }

[[routes]]
path = "/users/{id}"
version = "user:{id}"
key_headers = ["accept-language"]
key_cookies = ["region"]
query = { sort = true, drop = ["utm_*"] }
tags = ["user:{id}", "users"]
default_ttl = "1m"
stale_if_error = "90s"
allow_set_cookie = true

[[routes.invalidate]]
methods = ["PUT", "DELETE"]
urls = ["/users"]
prefixes = ["/users/{id}/"]
tags = ["user:{id}"]

[[routes]]
path = "/me"
user_scope = "authorization"
cache_control = "private, max-age=5"

[[routes]]
path = "/items/*"
tags = ["items"]

[[routes]]
path = "/keyed"
user_scope = "x-api-key"
"#;

fn revalidate(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_revalidate"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("REVALIDATE_CONFIG")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn small_config() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), SMALL).unwrap();
    file
}

#[test]
fn routes_are_listed_in_match_order_then_the_defaults() {
    let text = stdout(&revalidate(&["routes", "--config", EXAMPLE]));
    let headings: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty() && !l.starts_with("note"))
        .collect();
    assert_eq!(
        headings,
        [
            "1. /users/{id}",
            "2. /users",
            "3. /me",
            "4. /static/*",
            "5. /admin/*",
            "defaults (every path no route matches)"
        ]
    );
    for expected in [
        "  tags        user:{id}, users",
        "  on write    PUT, PATCH, DELETE -> urls /users/{id}, /users; tags user:{id}",
        "  key         host, normalized path, query as sent, user scope (a hash of authorization)",
        "  key         host, normalized path, query as sent, header accept-language",
        "  freshness   cache_control \"public, max-age=2\", stale_if_error 5m",
        "  bypass      forwarded as is: never looked up or stored",
        "  key         host, normalized path, query sorted, dropping utm_*, fbclid",
    ] {
        assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
    }
    for line in text.lines() {
        assert!(line.len() <= 100, "wider than 100 columns: {line}");
    }
}

#[test]
fn routes_as_json_name_every_part_of_the_key_and_the_writes() {
    let example: Value = serde_json::from_str(&stdout(&revalidate(&[
        "routes", "--config", EXAMPLE, "--json",
    ])))
    .unwrap();
    assert_eq!(example["routes"].as_array().unwrap().len(), 5);
    assert_eq!(example["routes"][4]["bypass"], true);
    assert_eq!(example["routes"][2]["key"]["user_scope"], "authorization");
    assert_eq!(
        example["defaults"]["key"]["query"]["drop"],
        serde_json::json!(["utm_*", "fbclid"])
    );

    let small = small_config();
    let path = small.path().to_str().unwrap();
    let json: Value = serde_json::from_str(&stdout(&revalidate(&[
        "routes", "--config", path, "--json",
    ])))
    .unwrap();
    let users = &json["routes"][0];
    assert_eq!(
        users,
        &serde_json::json!({
            "number": 1,
            "pattern": "/users/{id}",
            "key": {
                "query": { "sort": true, "drop": ["utm_*"] },
                "headers": ["accept-language"],
                "cookies": ["region"],
                "user_scope": null,
                "version": "user:{id}",
            },
            "bypass": false,
            "cache_control": null,
            "default_ttl": 60,
            "stale_while_revalidate": null,
            "stale_if_error": 90,
            "add_etag": false,
            "allow_set_cookie": true,
            "tags": ["user:{id}", "users"],
            "invalidate": [{
                "methods": ["PUT", "DELETE"],
                "urls": ["/users"],
                "prefixes": ["/users/{id}/"],
                "tags": ["user:{id}"],
            }],
        })
    );
    assert_eq!(json["routes"][1]["cache_control"], "private, max-age=5");
    assert_eq!(json["defaults"]["key"]["query"]["sort"], true);
    assert!(json["defaults"].get("pattern").is_none());
}

#[test]
fn explain_tells_the_route_key_tags_and_purges() {
    let small = small_config();
    let path = small.path().to_str().unwrap();
    let text = stdout(&revalidate(&[
        "explain",
        "--config",
        path,
        "-H",
        "Accept-Language: fr",
        "-H",
        "Cookie: region=eu; x=1",
        "http://API.test/users/%34%32?utm_source=x&b=2&a=1",
    ]));
    for expected in [
        "route       1. /users/{id} (id = 42)",
        "target      /users/42?a=1&b=2 (forwarded upstream as this)",
        "key         api.test/users/42?a=1&b=2",
        "            + h:accept-language=fr",
        "            + c:region=eu",
        "            + x:v<N>, N the counter user:42 in Redis when the request comes",
        "tags        user:42, users (and the response's Surrogate-Key and Cache-Tag)",
        "            PUT, DELETE -> urls /users/42?a=1&b=2, /users; prefixes /users/42/; tags user:42",
        "            POST, PATCH -> urls /users/42?a=1&b=2",
    ] {
        assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
    }

    let put: Value = serde_json::from_str(&stdout(&revalidate(&[
        "explain",
        "--config",
        path,
        "-X",
        "put",
        "--json",
        "http://api.test/users/7",
    ])))
    .unwrap();
    assert_eq!(put["lookup"], "write");
    assert_eq!(put["key"], Value::Null);
    assert_eq!(
        put["purges"],
        serde_json::json!([{
            "methods": ["PUT"],
            "urls": ["/users/7", "/users"],
            "prefixes": ["/users/7/"],
            "tags": ["user:7"],
        }])
    );

    let me = |credential: &str| -> Value {
        serde_json::from_str(&stdout(&revalidate(&[
            "explain",
            "--config",
            path,
            "--json",
            "-H",
            &format!("Authorization: Bearer {credential}"),
            "--vary",
            "Accept-Encoding",
            "http://api.test/me",
        ])))
        .unwrap()
    };
    let (a, b) = (me("a"), me("b"));
    let key = a["key"].as_str().unwrap();
    assert!(key.starts_with("api.test/me\nu:"), "{key}");
    assert!(
        !key.contains("Bearer"),
        "the credential stays out of the key"
    );
    assert_ne!(a["key"], b["key"]);
    assert_eq!(a["route"]["pattern"], "/me");
    assert_eq!(
        a["secondary"],
        serde_json::json!({ "accept-encoding": null })
    );

    let bypass: Value = serde_json::from_str(&stdout(&revalidate(&[
        "explain",
        "--config",
        EXAMPLE,
        "--json",
        "http://api.test/admin/x",
    ])))
    .unwrap();
    assert_eq!(bypass["lookup"], "bypass");
    assert_eq!(bypass["route"]["params"]["*"], "x");
}

#[test]
fn bad_input_is_one_line_on_stderr_and_exit_2() {
    let bad_toml = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_toml.path(), "[[routes]]\npath = \"users\"\n").unwrap();
    let bad = bad_toml.path().to_str().unwrap();
    for args in [
        &["routes", "--config", "/nonexistent/revalidate.toml"][..],
        &["routes", "--config", bad, "--json"],
        &["explain", "--config", bad, "http://a.test/"],
        &[
            "explain",
            "--config",
            EXAMPLE,
            "-H",
            "no colon",
            "http://a.test/",
        ],
        &[
            "explain",
            "--config",
            EXAMPLE,
            "-H",
            "bad name: x",
            "http://a.test/",
        ],
        &[
            "explain",
            "--config",
            EXAMPLE,
            "-H",
            "x: \u{7f}",
            "http://a.test/",
        ],
        &["explain", "--config", EXAMPLE, "ftp://a.test/x"],
        &["explain", "--config", EXAMPLE, "/users/1"],
        &[
            "explain",
            "--config",
            EXAMPLE,
            "-X",
            "GE T",
            "http://a.test/",
        ],
        &[
            "explain",
            "--config",
            EXAMPLE,
            "--vary",
            "a b",
            "http://a.test/",
        ],
    ] {
        let output = revalidate(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("revalidate: "), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// An origin whose every response is cacheable, tagged by `Surrogate-Key` when
/// the request asks for it (`X-Tag`), and varies on Accept-Encoding or on what
/// the request names (`X-Vary`).
fn origin() -> Router {
    async fn any(headers: HeaderMap, uri: axum::http::Uri) -> impl IntoResponse {
        let tag = headers
            .get("x-tag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let vary = headers
            .get("x-vary")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("accept-encoding")
            .to_string();
        (
            [
                ("cache-control", "public, max-age=60".to_string()),
                ("etag", "\"e1\"".to_string()),
                ("surrogate-key", tag),
                ("vary", vary),
            ],
            format!("body of {uri}"),
        )
    }
    Router::new().fallback(get(any))
}

/// The proxy over [`origin`] with `config`, and its admin API with `token`.
async fn start(config: &str, token: Option<&str>) -> (SocketAddr, SocketAddr) {
    let (origin, _) = spawn(origin()).await;
    let config = parse(config, "t.toml").unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin}"), &config).unwrap();
    let (app, cache) = proxy(&config, upstream).unwrap();
    let addr = spawn_proxy(app, ClientLimits::default()).await;
    let (admin, _) = spawn(admin_router(AdminState {
        cache,
        token: token.map(str::to_string),
        metrics: None,
        live: None,
    }))
    .await;
    (addr, admin)
}

async fn entries(admin: SocketAddr, query: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let reply = send(admin, "GET", &format!("/entries{query}"), &headers, "").await;
    let json = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

fn keys(listing: &Value) -> Vec<&str> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn entries_are_listed_by_prefix_and_tag_with_a_bounded_limit() {
    let (proxy, admin) = start(
        SMALL.replace("version = \"user:{id}\"\n", "").as_str(),
        None,
    )
    .await;
    for (path, headers) in [
        ("/users/1", &[("accept-language", "fr")][..]),
        ("/users/2", &[]),
        ("/items/a", &[("x-tag", "blue")]),
        ("/items/b", &[("x-tag", "green")]),
        ("/other", &[]),
    ] {
        let reply = request(proxy, "GET", path, headers).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    let host = proxy.to_string();
    let (status, all) = entries(admin, "", None).await;
    assert_eq!(status, 200);
    assert_eq!(all["truncated"], false);
    assert_eq!(
        keys(&all),
        [
            format!("{host}/items/a"),
            format!("{host}/items/b"),
            format!("{host}/other"),
            format!("{host}/users/1\nh:accept-language=fr\nc:region="),
            format!("{host}/users/2\nh:accept-language=\nc:region="),
        ]
    );
    let first = &all["entries"][0];
    assert_eq!(first["path"], "/items/a");
    assert_eq!(first["status"], 200);
    assert_eq!(first["size"], "body of /items/a".len());
    assert_eq!(first["etag"], "\"e1\"");
    assert_eq!(first["tags"], serde_json::json!(["blue", "items"]));
    assert_eq!(first["soft_purged"], false);
    assert_eq!(
        first["vary"],
        serde_json::json!({ "accept-encoding": null })
    );
    let ttl = first["ttl"].as_i64().unwrap();
    assert!((59..=60).contains(&ttl), "{first}");
    assert!(first["age"].as_u64().unwrap() <= 1);

    let (_, users) = entries(admin, "?prefix=/users/", None).await;
    assert_eq!(keys(&users).len(), 2);
    assert!(keys(&users).iter().all(|k| k.contains("/users/")));
    let (_, green) = entries(admin, "?tag=green", None).await;
    assert_eq!(keys(&green), [format!("{host}/items/b")]);
    let (_, items) = entries(admin, "?tag=items&prefix=/items/a", None).await;
    assert_eq!(keys(&items), [format!("{host}/items/a")]);
    let (_, two) = entries(admin, "?limit=2", None).await;
    assert_eq!(
        (keys(&two).len(), &two["truncated"]),
        (2, &Value::Bool(true))
    );
    let (_, five) = entries(admin, "?limit=5", None).await;
    assert_eq!(five["truncated"], false);

    // A soft purge shows.
    let purge = send(
        admin,
        "POST",
        "/purge",
        &[("content-type", "application/json")],
        r#"{"tags": ["green"], "soft": true}"#,
    )
    .await;
    assert_eq!(purge.status, 200);
    let (_, green) = entries(admin, "?tag=green", None).await;
    assert_eq!(green["entries"][0]["soft_purged"], true);
    assert!(green["entries"][0]["ttl"].as_i64().unwrap() <= 0);

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?prefix=users",
        "?colour=red",
        "?tag=",
    ] {
        let reply = send(admin, "GET", &format!("/entries{bad}"), &[], "").await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
}

#[tokio::test]
async fn entries_never_show_credentials() {
    let (proxy, admin) = start(
        SMALL.replace("version = \"user:{id}\"\n", "").as_str(),
        None,
    )
    .await;
    let vary = ("x-vary", "authorization, cookie, x-api-key, accept");
    for (path, api_key) in [("/keyed", "secret-3"), ("/other", "shown")] {
        let headers = [
            ("authorization", "Bearer secret-1"),
            ("cookie", "session=secret-2"),
            ("x-api-key", api_key),
            ("accept", "text/plain"),
            vary,
        ];
        assert_eq!(request(proxy, "GET", path, &headers).await.status, 200);
    }
    let reply = send(admin, "GET", "/entries", &[], "").await;
    assert!(!reply.body.contains("secret"), "{}", reply.body);
    let listing: Value = serde_json::from_str(&reply.body).unwrap();
    let keyed = &listing["entries"][0];
    assert_eq!(keyed["path"], "/keyed");
    assert_eq!(
        keyed["vary"],
        serde_json::json!({
            "authorization": "(redacted)",
            "cookie": "(redacted)",
            "x-api-key": "(redacted)",
            "accept": "text/plain",
        })
    );
    // Only the route that scopes on it hides x-api-key.
    assert_eq!(listing["entries"][1]["vary"]["x-api-key"], "shown");
}

#[tokio::test]
async fn entries_need_the_admin_token_when_one_is_set() {
    let (proxy, admin) = start("", Some("s3cret")).await;
    request(proxy, "GET", "/x", &[]).await;
    let (status, _) = entries(admin, "", None).await;
    assert_eq!(status, 401);
    let (status, _) = entries(admin, "", Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, listing) = entries(admin, "", Some("s3cret")).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&listing), [format!("{proxy}/x")]);
}

/// Through the whole proxy (request check, cache, per-route ETags): what
/// `explain` says is the key is the key `/entries` lists for the stored response.
#[tokio::test]
async fn the_explained_key_is_the_key_the_proxy_stored_under() {
    let config = SMALL.replace("version = \"user:{id}\"\n", "");
    let (proxy, admin) = start(&config, None).await;
    let parsed = parse(&config, "t.toml").unwrap();
    let cases: [(&str, &[&str]); 5] = [
        (
            "/users/%34%32?utm_source=x&b=2&a=1",
            &["Accept-Language: fr", "Cookie: region=eu"],
        ),
        ("/users/7/./../8", &[]),
        ("/me", &["Authorization: Bearer a"]),
        ("/items/x/y?b&a", &["Accept-Encoding: gzip"]),
        ("/other?z=1&a=2", &[]),
    ];
    for (target, headers) in cases {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|h| {
                let (name, value) = h.split_once(':').unwrap();
                (name, value.trim())
            })
            .collect();
        let reply = request(proxy, "GET", target, &pairs).await;
        assert_eq!(reply.status, 200, "{target}");
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        let asked = Asked::parse(
            "GET",
            &format!("http://{proxy}{target}"),
            &headers,
            Some("accept-encoding"),
        )
        .unwrap();
        let explained = explain_json(&parsed, &asked);
        let key = explained["key"].as_str().expect("keyed");
        let (_, listing) = entries(admin, "?limit=1000", None).await;
        let stored = listing["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("{target}: {key:?} not among {:?}", keys(&listing)));
        assert_eq!(stored["path"], explained["target"], "{target}");
        assert_eq!(stored["vary"], explained["secondary"], "{target}");
        let route_tags = explained["tags"].as_array().unwrap();
        assert!(
            route_tags
                .iter()
                .all(|t| stored["tags"].as_array().unwrap().contains(t)),
            "{target}: {stored}"
        );
    }
}
