//! `GET /entries?prefix=…&tag=…&limit=…`: the stored responses, each with its key,
//! status, size, age, freshness left, tags, validators and soft-purge mark. The
//! listing is bounded (`limit`, 100 by default, at most 1,000; `truncated` says
//! when more matched) and taken in one short snapshot of the store's index: a
//! hit never waits for it.

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use revalidate_cache::EntryFilter;
use serde::Deserialize;
use serde_json::json;

use super::{AdminState, problem};

/// Entries listed when `limit` is not given.
pub(super) const DEFAULT_LIMIT: usize = 100;
/// The most entries one request lists.
pub(super) const MAX_LIMIT: usize = 1000;

/// The query string, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    prefix: Option<String>,
    tag: Option<String>,
    limit: Option<String>,
}

/// What the query string asks for, or what is wrong with it (a 400).
fn filter(uri: &Uri) -> Result<(EntryFilter, usize), String> {
    let bad = |detail: &str| detail.to_string();
    let Query(params) = Query::<Params>::try_from_uri(uri).map_err(|e| {
        bad(&format!(
            "expected ?prefix=/path&tag=name&limit=1..{MAX_LIMIT} (each optional): {}",
            e.body_text()
        ))
    })?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(bad(&format!(
                    "limit {text:?} is not a number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    if let Some(prefix) = &params.prefix
        && !prefix.starts_with('/')
    {
        return Err(bad(&format!(
            "prefix {prefix:?} is not a path starting with '/'"
        )));
    }
    if params.tag.as_deref() == Some("") {
        return Err(bad("tag is empty"));
    }
    let filter = EntryFilter {
        prefix: params.prefix,
        tag: params.tag,
    };
    Ok((filter, limit))
}

/// `GET /entries`.
pub(super) async fn list(State(state): State<AdminState>, uri: Uri) -> Response {
    let (filter, limit) = match filter(&uri) {
        Ok(asked) => asked,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
    };
    match state.cache().entries(&filter, limit) {
        Some(listing) => axum::Json(json!({
            "entries": listing.entries,
            "truncated": listing.truncated,
            "limit": limit,
        }))
        .into_response(),
        None => problem(
            StatusCode::NOT_IMPLEMENTED,
            "this store cannot list its entries",
        ),
    }
}
