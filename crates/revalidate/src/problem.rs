//! Problem details for HTTP APIs (RFC 9457): the body of every error this crate emits.
//!
//! ```
//! use http::StatusCode;
//! use revalidate::Problem;
//!
//! let response = Problem::new(StatusCode::PRECONDITION_REQUIRED)
//!     .detail("this route requires If-Match")
//!     .to_response();
//! assert_eq!(response.status(), 428);
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
//! assert_eq!(body["status"], 428);
//! assert_eq!(body["title"], "Precondition Required");
//! ```

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

/// The media type of problem details (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem: status, title, and an optional human-readable detail.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// A URI reference naming the problem type; `about:blank` when omitted.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// An explanation specific to this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    /// A problem titled with the status code's reason phrase.
    pub fn new(status: StatusCode) -> Self {
        Self {
            problem_type: None,
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: None,
        }
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the problem type URI.
    pub fn problem_type(mut self, uri: impl Into<String>) -> Self {
        self.problem_type = Some(uri.into());
        self
    }

    /// The status as a `StatusCode`.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The serialized JSON body.
    pub fn to_body(&self) -> Bytes {
        // Serializing plain strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A complete `application/problem+json` response.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.to_body());
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}
