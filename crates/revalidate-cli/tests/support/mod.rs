//! Test support: a client for the users router, and real databases.
#![allow(dead_code, unreachable_pub)]

pub mod operator;
pub mod postgres;
pub mod proxy;
/// A real Redis, the same harness as the cache crate's tests.
#[path = "../../../revalidate-cache/tests/support/redis.rs"]
pub mod redis;
pub mod scenarios;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use revalidate_cli::demo::{UserStore, router};
use tower::ServiceExt;

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// Asserts an RFC 9457 problem with this status.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/problem+json");
        assert_eq!(self.json()["status"], status);
    }
}

/// The users API, driven in process.
#[derive(Clone)]
pub struct Api {
    pub app: Router,
    pub store: UserStore,
}

impl Api {
    pub async fn connect(url: &str) -> Self {
        let store = UserStore::connect(url).await.expect("database");
        Self {
            app: router(store.clone()),
            store,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = self
            .app
            .clone()
            .oneshot(builder.body(body.into()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes().to_vec(),
        }
    }

    pub async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", uri, headers, Body::empty()).await
    }

    /// A JSON write with optional If-Match.
    pub async fn write(
        &self,
        method: &str,
        uri: &str,
        if_match: Option<&str>,
        json: &str,
    ) -> Reply {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(tag) = if_match {
            headers.push(("if-match", tag));
        }
        self.send(method, uri, &headers, json.to_string()).await
    }
}

/// A fresh SQLite database in a temporary directory (kept alive by the guard).
pub async fn sqlite() -> (Api, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    (Api::connect(&url).await, dir)
}
