//! The routes of the sample users API.

use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State, rejection::PathRejection};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LOCATION, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use revalidate::{
    CacheControl, ConditionalLayer, EntityTag, EntityTagMatch, HttpDate, Problem, Validators,
    from_extractors,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::store::{Expected, Fields, User, UserStore, WriteOutcome};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The router of the users API over `store`.
pub fn router(store: UserStore) -> Router {
    let revalidate_always = || CacheControl::new().no_cache();

    Router::new()
        .route(
            "/users",
            get(list_users).post(create_user).route_layer(
                ConditionalLayer::new()
                    .validators(from_extractors(store.clone(), collection_validators))
                    .cache_control(revalidate_always()),
            ),
        )
        .route(
            "/users/{id}",
            get(get_user)
                .put(update_user::<NewUser>)
                .patch(update_user::<UserPatch>)
                .delete(delete_user)
                .route_layer(
                    ConditionalLayer::new()
                        .validators(from_extractors(store.clone(), member_validators))
                        .cache_control(revalidate_always())
                        .require_if_match()
                        .ignore_preconditions_when_missing(),
                )
                // Outside the conditional layer: a bad id is a 400 before any lookup.
                .layer(middleware::from_fn(require_numeric_id)),
        )
        .route(
            "/me",
            get(get_me).route_layer(
                ConditionalLayer::new()
                    .validators(from_extractors(store.clone(), me_validators))
                    .user_scoped()
                    .cache_control(CacheControl::new().private().no_cache()),
            ),
        )
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no route matches this path") })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this resource",
            )
        })
        .with_state(store)
}

// The validator sources: each runs before its handler, so a matching
// `If-None-Match` (or a stale `If-Match`) is answered without calling it.

async fn collection_validators(State(store): State<UserStore>) -> Option<Validators> {
    let version = store.collection_version().await.ok()?;
    Some(Validators::new().etag(collection_etag(version)))
}

async fn member_validators(
    (Path(id), State(store)): (Path<String>, State<UserStore>),
) -> Option<Validators> {
    let (version, updated_at) = store.validators(canonical_id(&id)?).await.ok()??;
    Some(user_validators(version, updated_at))
}

async fn me_validators(
    (State(store), headers): (State<UserStore>, HeaderMap),
) -> Option<Validators> {
    let (version, updated_at) = store.validators(bearer_user_id(&headers)?).await.ok()??;
    Some(user_validators(version, updated_at))
}

fn collection_etag(version: i64) -> EntityTag {
    EntityTag::strong(format!("c{version}")).expect("ascii")
}

fn user_etag(version: i64) -> EntityTag {
    EntityTag::strong(format!("v{version}")).expect("ascii")
}

fn last_modified(updated_at_micros: i64) -> HttpDate {
    HttpDate::from_system_time(UNIX_EPOCH + Duration::from_micros(updated_at_micros.max(0) as u64))
}

fn user_validators(version: i64, updated_at: i64) -> Validators {
    Validators::versioned(version.max(0) as u64, last_modified(updated_at))
}

/// `Authorization: Bearer <user id>`: the demo's stand-in for a real credential.
fn bearer_user_id(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(())?;
    canonical_id(token.trim())
}

/// A user id written as a canonical decimal number: digits, no sign, no leading
/// zero. `+1`, `01` and `1e3` name no user: were they read as 1, each spelling
/// would be a cache key of its own that writes to `/users/1` never purge.
fn canonical_id(text: &str) -> Option<i64> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    canonical.then(|| text.parse().ok()).flatten()
}

/// An error answered as `application/problem+json` (RFC 9457). Boxed: it travels
/// in every handler's `Result`.
#[derive(Debug)]
pub struct ApiError(Box<ErrorParts>);

#[derive(Debug)]
struct ErrorParts {
    problem: Problem,
    headers: HeaderMap,
}

impl ApiError {
    fn with_header(mut self, name: axum::http::HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }
}

fn problem(status: StatusCode, detail: impl Into<String>) -> ApiError {
    ApiError(Box::new(ErrorParts {
        problem: Problem::new(status).detail(detail),
        headers: HeaderMap::new(),
    }))
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "database error");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ErrorParts { problem, headers } = *self.0;
        let mut response = problem.to_response().map(Body::from);
        response.headers_mut().extend(headers);
        response
    }
}

fn user_response(status: StatusCode, user: &User) -> Response {
    let mut response = (status, axum::Json(user)).into_response();
    user_validators(user.version, user.updated_at).write_to(response.headers_mut());
    response
}

async fn require_numeric_id(request: Request, next: Next) -> Response {
    let id = request.uri().path().strip_prefix("/users/").unwrap_or("");
    match canonical_id(id) {
        Some(_) => next.run(request).await,
        None => problem(
            StatusCode::BAD_REQUEST,
            format!("user id must be a positive integer in decimal, not {id:?}"),
        )
        .into_response(),
    }
}

fn user_id(path: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    path.map(|Path(id)| id).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "user id must be a positive integer",
        )
    })
}

async fn list_users(State(store): State<UserStore>) -> Result<Response, ApiError> {
    // The version is read before the list: a concurrent write can only make the
    // body newer than its tag, which costs a later full response, never a stale 304.
    let version = store.collection_version().await?;
    let users = store.list().await?;
    let mut response = axum::Json(users).into_response();
    response
        .headers_mut()
        .insert(ETAG, collection_etag(version).to_header_value());
    Ok(response)
}

async fn get_user(
    State(store): State<UserStore>,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = user_id(path)?;
    match store.get(id).await? {
        Some(user) => Ok(user_response(StatusCode::OK, &user)),
        None => Err(problem(
            StatusCode::NOT_FOUND,
            format!("no user with id {id}"),
        )),
    }
}

async fn get_me(State(store): State<UserStore>, headers: HeaderMap) -> Result<Response, ApiError> {
    let unauthorized = || {
        problem(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <user id>",
        )
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    };
    let id = bearer_user_id(&headers).ok_or_else(unauthorized)?;
    let user = store.get(id).await?.ok_or_else(unauthorized)?;
    Ok(user_response(StatusCode::OK, &user))
}

/// The body of POST and PUT.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    email: String,
}

/// The body of PATCH (JSON merge patch of the two writable fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    name: Option<String>,
    email: Option<String>,
}

fn validate(name: Option<&str>, email: Option<&str>) -> Result<(), ApiError> {
    if let Some(name) = name
        && (name.trim().is_empty() || name.chars().count() > 200)
    {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 200 characters",
        ));
    }
    if let Some(email) = email {
        let valid = email.len() <= 320
            && email
                .split_once('@')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty());
        if !valid {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "email must look like name@domain",
            ));
        }
    }
    Ok(())
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`], refusing anything else with a problem.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !json {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        ));
    }
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes: Bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Err(too_large()),
        Err(_) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|error| {
        let status = if error.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        problem(status, format!("invalid JSON body: {error}"))
    })
}

async fn create_user(
    State(store): State<UserStore>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let new: NewUser = json_body(&parts.headers, body).await?;
    validate(Some(&new.name), Some(&new.email))?;
    let user = store.create(&new.name, &new.email).await?;
    let mut response = user_response(StatusCode::CREATED, &user);
    let location = HeaderValue::from_str(&format!("/users/{}", user.id)).expect("ascii");
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

/// The versions named by `If-Match`; the layer has already refused a missing or
/// malformed field. Tags that are not ours (`"x"`, weak ones) match nothing.
fn expected_versions(headers: &HeaderMap) -> Expected {
    match EntityTagMatch::from_headers(headers, &axum::http::header::IF_MATCH) {
        Ok(Some(EntityTagMatch::Tags(tags))) => Expected::Versions(
            tags.iter()
                .filter(|t| !t.is_weak())
                .filter_map(|t| {
                    std::str::from_utf8(t.opaque().strip_prefix(b"v")?)
                        .ok()?
                        .parse()
                        .ok()
                })
                .collect(),
        ),
        Ok(Some(EntityTagMatch::Any)) => Expected::Any,
        _ => Expected::Versions(Vec::new()),
    }
}

fn write_failed<T>(id: i64, outcome: WriteOutcome<T>) -> ApiError {
    match outcome {
        WriteOutcome::Stale(current) => {
            let detail = format!(
                "user {id} has changed; its current ETag is \"v{}\"",
                current.version
            );
            problem(StatusCode::PRECONDITION_FAILED, detail)
                .with_header(ETAG, user_etag(current.version).to_header_value())
        }
        _ => problem(StatusCode::NOT_FOUND, format!("no user with id {id}")),
    }
}

/// PUT (a whole [`NewUser`]) and PATCH (a [`UserPatch`]): read the body as `T`, then
/// write it guarded by If-Match.
async fn update_user<T>(
    State(store): State<UserStore>,
    path: Result<Path<i64>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError>
where
    T: DeserializeOwned + Into<Fields>,
{
    let id = user_id(path)?;
    let (parts, body) = request.into_parts();
    let fields: Fields = json_body::<T>(&parts.headers, body).await?.into();
    validate(fields.name.as_deref(), fields.email.as_deref())?;
    match store
        .update(id, &expected_versions(&parts.headers), &fields)
        .await?
    {
        WriteOutcome::Done(user) => Ok(user_response(StatusCode::OK, &user)),
        other => Err(write_failed(id, other)),
    }
}

impl From<NewUser> for Fields {
    fn from(new: NewUser) -> Self {
        Fields {
            name: Some(new.name),
            email: Some(new.email),
        }
    }
}

impl From<UserPatch> for Fields {
    fn from(patch: UserPatch) -> Self {
        Fields {
            name: patch.name,
            email: patch.email,
        }
    }
}

async fn delete_user(
    State(store): State<UserStore>,
    path: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = user_id(path)?;
    match store.delete(id, &expected_versions(&headers)).await? {
        WriteOutcome::Done(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(write_failed(id, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_ids() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_user_id(&headers), None);
        headers.insert(AUTHORIZATION, "Bearer 7".parse().unwrap());
        assert_eq!(bearer_user_id(&headers), Some(7));
        headers.insert(AUTHORIZATION, "bearer  12 ".parse().unwrap());
        assert_eq!(bearer_user_id(&headers), Some(12));
        headers.insert(AUTHORIZATION, "Basic 7".parse().unwrap());
        assert_eq!(bearer_user_id(&headers), None);
    }

    #[test]
    fn if_match_versions() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "if-match",
            "\"v3\", W/\"v4\", \"x\", \"v9\"".parse().unwrap(),
        );
        assert_eq!(expected_versions(&headers), Expected::Versions(vec![3, 9]));
        headers.insert("if-match", "*".parse().unwrap());
        assert_eq!(expected_versions(&headers), Expected::Any);
        headers.remove("if-match");
        assert_eq!(
            expected_versions(&headers),
            Expected::Versions(vec![]),
            "no If-Match matches nothing"
        );
    }
}
