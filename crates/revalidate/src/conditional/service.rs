use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;
use twox_hash::{XxHash3_64, XxHash3_128};

use super::source::ValidatorSource;
use crate::body::{BoxError, ResponseBody};
use crate::not_modified::not_modified_headers;
use crate::policy::{CachePolicy, Scope};
use crate::precondition::{Evaluation, MalformedPrecondition, Preconditions, is_get_or_head};
use crate::problem::Problem;
use crate::validators::{EntityTag, EntityTagMatch, Validators};

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) policy: CachePolicy,
    pub(crate) weak_etags: bool,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) require_if_match: bool,
    pub(crate) ignore_preconditions_when_missing: bool,
}

/// Middleware that gives responses entity tags and answers conditional requests.
/// Built by [`ConditionalLayer`](super::ConditionalLayer).
#[derive(Debug, Clone)]
pub struct Conditional<S, V> {
    inner: S,
    config: Arc<Config>,
    source: V,
}

impl<S, V> Conditional<S, V> {
    pub(crate) fn new(inner: S, config: Arc<Config>, source: V) -> Self {
        Self {
            inner,
            config,
            source,
        }
    }
}

type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

impl<S, V, ReqBody, ResBody> Service<Request<ReqBody>> for Conditional<S, V>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    V: ValidatorSource,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let (parts, body) = request.into_parts();

        let preconditions = match Preconditions::from_request(&parts.method, &parts.headers) {
            Ok(p) => p,
            Err(MalformedPrecondition { field }) => {
                let problem = Problem::new(StatusCode::BAD_REQUEST).detail(format!(
                    "the {field} field is malformed: expected `*` or a comma-separated list of \
                     quoted entity tags such as \"v1\" or W/\"v1\""
                ));
                return ready(problem_response(&problem, None));
            }
        };
        if config.require_if_match
            && !is_get_or_head(&parts.method)
            && parts.method != Method::OPTIONS
            && preconditions.if_match.is_none()
        {
            let problem = Problem::new(StatusCode::PRECONDITION_REQUIRED).detail(
                "this resource requires a conditional request: send If-Match with the ETag \
                 you last read",
            );
            return ready(problem_response(&problem, None));
        }
        let scope = config.policy.scope_of(&parts.headers);
        let exchange = Exchange {
            inner,
            config,
            preconditions,
            scope,
        };
        match self.source.lookup(&parts) {
            Some(lookup) => Box::pin(exchange.validators_first(parts, body, lookup)),
            None => Box::pin(exchange.content_hash(parts, body)),
        }
    }
}

fn ready<B, E: Send + 'static>(response: Response<ResponseBody<B>>) -> ResponseFuture<B, E>
where
    B: Send + 'static,
{
    Box::pin(std::future::ready(Ok(response)))
}

/// One request on its way through the layer.
struct Exchange<S> {
    inner: S,
    config: Arc<Config>,
    preconditions: Preconditions,
    scope: Option<Scope>,
}

impl<S> Exchange<S> {
    fn scoped(&self, tag: EntityTag) -> EntityTag {
        match &self.scope {
            Some(scope) => scope.mix_into(&tag),
            None => tag,
        }
    }

    /// Validators from a lookup made before the handler: 304 and 412 without
    /// calling it.
    async fn validators_first<ReqBody, ResBody, Fut>(
        mut self,
        mut parts: Parts,
        body: ReqBody,
        lookup: Fut,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        Fut: Future<Output = Option<Validators>>,
    {
        let current = lookup.await.map(|mut v| {
            v.etag = v.etag.map(|tag| self.scoped(tag));
            v
        });
        let safe = is_get_or_head(&parts.method);
        // RFC 9110 §13.2.1: a GET of a missing resource would be 404, so its
        // preconditions are ignored; an unsafe method may create it, so they count
        // unless the route says its writes never create.
        let may_create = !safe && !self.config.ignore_preconditions_when_missing;
        let evaluate = !self.preconditions.is_empty() && (current.is_some() || may_create);
        if evaluate {
            match self.preconditions.evaluate(&parts.method, current.as_ref()) {
                Evaluation::NotModified => {
                    // Built directly as the 304's header set (RFC 9110 §15.4.5).
                    let mut headers = HeaderMap::with_capacity(4);
                    if let Some(v) = &current {
                        v.write_to(&mut headers);
                        if v.etag.is_some() {
                            headers.remove(LAST_MODIFIED);
                        }
                    }
                    self.config.policy.decorate(&mut headers);
                    let mut response = Response::new(ResponseBody::empty());
                    *response.status_mut() = StatusCode::NOT_MODIFIED;
                    *response.headers_mut() = headers;
                    return Ok(response);
                }
                Evaluation::PreconditionFailed => {
                    return Ok(precondition_failed(current.as_ref()));
                }
                Evaluation::Proceed { honor_range } => {
                    if !honor_range {
                        parts.headers.remove(RANGE);
                    }
                }
            }
        }
        let response = self.inner.call(Request::from_parts(parts, body)).await?;
        let (mut head, body) = response.into_parts();
        if let Some(tag) = EntityTag::from_headers(&head.headers) {
            head.headers
                .insert(ETAG, self.scoped(tag).to_header_value());
        } else if safe
            && head.status.is_success()
            && let Some(v) = &current
        {
            v.write_to(&mut head.headers);
        }
        if safe && head.status.is_success() {
            self.config.policy.decorate(&mut head.headers);
        }
        Ok(Response::from_parts(head, ResponseBody::streaming(body)))
    }

    /// Validators from the response: hash the buffered body, then evaluate.
    async fn content_hash<ReqBody, ResBody>(
        mut self,
        mut parts: Parts,
        body: ReqBody,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<BoxError>,
    {
        let method = parts.method.clone();
        if !is_get_or_head(&method) {
            // The write has happened by the time a body exists to hash, so unsafe
            // methods are left to the handler's own checks (or to `validators`).
            let response = self.inner.call(Request::from_parts(parts, body)).await?;
            let (mut head, body) = response.into_parts();
            if let Some(tag) = EntityTag::from_headers(&head.headers) {
                head.headers
                    .insert(ETAG, self.scoped(tag).to_header_value());
            }
            return Ok(Response::from_parts(head, ResponseBody::streaming(body)));
        }
        // HEAD is answered as GET so both carry the same validators (RFC 9110 §9.3.2).
        let is_head = method == Method::HEAD;
        if is_head {
            parts.method = Method::GET;
        }
        // If-Range cannot be checked before the handler: serving the whole
        // representation is always allowed (RFC 9110 §14.2).
        if self.preconditions.if_range.is_some() {
            parts.headers.remove(RANGE);
        }
        let response = self.inner.call(Request::from_parts(parts, body)).await?;
        let (mut head, body) = response.into_parts();
        if !head.status.is_success() {
            return Ok(Response::from_parts(head, ResponseBody::streaming(body)));
        }

        let mut validators = Validators::from_headers(&head.headers);
        let hashable = head.status == StatusCode::OK
            && validators.etag.is_none()
            && body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= self.config.max_buffered_bytes as u64);
        let payload = if hashable {
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    return Ok(Response::from_parts(
                        head,
                        ResponseBody::failed(error.into()),
                    ));
                }
            };
            let tag = content_tag(&head.headers, &bytes);
            validators.etag = Some(if self.config.weak_etags {
                tag.into_weak()
            } else {
                tag
            });
            Payload::Buffered(bytes)
        } else {
            Payload::Streaming(body)
        };
        validators.etag = validators.etag.map(|tag| self.scoped(tag));
        validators.write_to(&mut head.headers);
        self.config.policy.decorate(&mut head.headers);

        // Too large or streaming with no validator of the handler's: nothing to compare.
        let comparable = validators.etag.is_some() || validators.last_modified.is_some();
        if comparable && head.status == StatusCode::OK && !self.preconditions.is_empty() {
            self.preconditions.if_none_match = self
                .preconditions
                .if_none_match
                .take()
                .map(with_coding_suffixes_removed);
            match self.preconditions.evaluate(&method, Some(&validators)) {
                Evaluation::NotModified => return Ok(not_modified(&head.headers)),
                Evaluation::PreconditionFailed => {
                    return Ok(precondition_failed(Some(&validators)));
                }
                Evaluation::Proceed { .. } => {}
            }
        }
        let body = match payload {
            Payload::Buffered(bytes) if is_head => {
                head.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                ResponseBody::empty()
            }
            Payload::Buffered(bytes) => ResponseBody::full(bytes),
            Payload::Streaming(body) => head_or(is_head, &mut head.headers, body),
        };
        Ok(Response::from_parts(head, body))
    }
}

enum Payload<B> {
    Buffered(Bytes),
    Streaming(B),
}

/// The body to send: the handler's, or for HEAD nothing, with the GET's length
/// where it is known.
fn head_or<B: Body>(is_head: bool, headers: &mut HeaderMap, body: B) -> ResponseBody<B> {
    if !is_head {
        return ResponseBody::streaming(body);
    }
    if let Some(len) = body.size_hint().exact() {
        headers
            .entry(CONTENT_LENGTH)
            .or_insert(HeaderValue::from(len));
    }
    ResponseBody::empty()
}

/// A strong tag over the body and the fields that distinguish representations of
/// one resource, so a gzip and an identity body never share a strong tag.
fn content_tag(headers: &HeaderMap, body: &[u8]) -> EntityTag {
    // The fields hash into the seed, so the body is hashed in one pass by the
    // one-shot (SIMD) path rather than through a streaming state.
    let mut fields = Vec::with_capacity(64);
    for name in [CONTENT_TYPE, CONTENT_ENCODING, CONTENT_LANGUAGE] {
        for value in headers.get_all(name) {
            fields.extend_from_slice(value.as_bytes());
            fields.push(b'\n');
        }
        fields.push(0);
    }
    let seed = XxHash3_64::oneshot(&fields);
    let hash = XxHash3_128::oneshot_with_seed(seed, body);
    EntityTag::strong(hex128(hash)).expect("hex is etagc")
}

/// Lowercase hex of a 128-bit hash, without going through `fmt`.
pub(crate) fn hex128(hash: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, byte) in hash.to_be_bytes().iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

/// Content codings that compressors outside this layer append to a tag (Apache's
/// `mod_deflate` sends `"tag-gzip"`). Clients echo those back; matching them to the
/// identity tag avoids the bug of Rails #17573, where such tags never yield a 304.
const CODING_SUFFIXES: [&[u8]; 4] = [b"-gzip", b"-br", b"-zstd", b"-deflate"];

fn with_coding_suffixes_removed(list: EntityTagMatch) -> EntityTagMatch {
    let EntityTagMatch::Tags(mut tags) = list else {
        return list;
    };
    let stripped: Vec<EntityTag> = tags
        .iter()
        .filter_map(|tag| {
            let opaque = tag.opaque();
            let suffix = CODING_SUFFIXES.iter().find(|s| opaque.ends_with(s))?;
            EntityTag::strong(&opaque[..opaque.len() - suffix.len()]).ok()
        })
        .collect();
    tags.extend(stripped);
    EntityTagMatch::Tags(tags)
}

fn not_modified<B>(headers_of_200: &HeaderMap) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.headers_mut() = not_modified_headers(headers_of_200);
    response
}

fn precondition_failed<B>(current: Option<&Validators>) -> Response<ResponseBody<B>> {
    let detail = match current.and_then(|v| v.etag.as_ref()) {
        Some(tag) => format!("the resource has changed; its current ETag is {tag}"),
        None => "the resource does not match the request's preconditions".to_string(),
    };
    let problem = Problem::new(StatusCode::PRECONDITION_FAILED).detail(detail);
    problem_response(&problem, current)
}

fn problem_response<B>(
    problem: &Problem,
    current: Option<&Validators>,
) -> Response<ResponseBody<B>> {
    let (mut head, body) = problem.to_response().into_parts();
    if let Some(v) = current {
        v.write_to(&mut head.headers);
    }
    Response::from_parts(head, ResponseBody::full(body))
}
