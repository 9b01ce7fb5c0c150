//! Answers built from a stored response (fresh hits, 304s and 412s to the
//! client's own preconditions, HEAD) and from a live one that was not stored.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use revalidate::{
    CacheControl, Evaluation, HttpDate, Preconditions, Problem, Validators, not_modified_headers,
};

use crate::answer_fields::{AnswerKind, answer_fields};
use crate::entry::StoredResponse;
use crate::headers::age_value;
use crate::shared::Shared;
use crate::stats::Outcome;
use crate::status::{CACHE_STATUS, CacheStatus, ForwardReason};
use crate::store::Store;
use revalidate::{BoxError, ResponseBody as CacheBody};

use super::head::RequestHead;
use super::range::{ByteRange, held_range};

pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

pub(super) fn delta(s: u32) -> Duration {
    Duration::from_secs(s.into())
}

pub(super) fn with_header<B>(mut response: Response<B>, status: &CacheStatus) -> Response<B> {
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), status.to_header_value());
    response
}

pub(super) fn gateway_timeout<B>(detail: &str) -> Response<CacheBody<B>> {
    let (parts, body) = Problem::new(StatusCode::GATEWAY_TIMEOUT)
        .detail(detail)
        .to_response()
        .into_parts();
    let response = Response::from_parts(parts, CacheBody::full(body));
    with_header(
        response,
        &CacheStatus::forward(ForwardReason::Request).detail("only-if-cached"),
    )
}

pub(super) fn precondition_failed<B>(current: &Validators) -> Response<CacheBody<B>> {
    let (mut parts, body) = Problem::new(StatusCode::PRECONDITION_FAILED)
        .detail("the stored representation does not match the request's preconditions")
        .to_response()
        .into_parts();
    current.write_to(&mut parts.headers);
    Response::from_parts(parts, CacheBody::full(body))
}

impl<St: Store> Shared<St> {
    /// The answer from a stored response that is fresh enough for the request's
    /// directives (RFC 9111 §4.2, §5.2.1); `None` when it must be revalidated or
    /// served stale.
    pub(super) fn fresh_answer<B>(
        &self,
        head: &RequestHead,
        request_cc: &CacheControl,
        entry: &StoredResponse,
        now: SystemTime,
    ) -> Option<Response<CacheBody<B>>> {
        let ttl = entry.ttl(now)?;
        let fresh_enough = !request_cc.no_cache
            && request_cc
                .max_age
                .is_none_or(|m| entry.age(now) <= delta(m))
            && request_cc.min_fresh.is_none_or(|m| ttl >= delta(m));
        fresh_enough.then(|| {
            let status = CacheStatus::hit(Some(secs(ttl)));
            self.respond_stored(head, entry, status, Outcome::Hit, now)
        })
    }

    /// A response built from a stored entry, answering the client's own conditional
    /// request from the stored validators (§4.3.2), with its age at `now` (the time
    /// its freshness was judged at: one clock read per hit).
    pub(super) fn respond_stored<B>(
        &self,
        head: &RequestHead,
        entry: &StoredResponse,
        status: CacheStatus,
        outcome: Outcome,
        now: SystemTime,
    ) -> Response<CacheBody<B>> {
        self.stats.outcome(outcome);
        if outcome.is_from_store() {
            self.stats.spared_upstream(entry.body.len());
            self.traffic.served_from_store(head.route.index());
        }
        let age = age_value(entry.age(now).as_secs());

        let mut honor_range = true;
        if entry.status.is_success()
            && head.carried.conditional.any_precondition()
            && let Some(evaluation) = self.evaluate_preconditions(head, entry)
        {
            match evaluation {
                Evaluation::NotModified => {
                    self.stats.client_status(304);
                    self.stats.bytes(0, entry.body.len() as u64);
                    let mut response = Response::new(CacheBody::empty());
                    *response.status_mut() = StatusCode::NOT_MODIFIED;
                    *response.headers_mut() = answer_fields(
                        entry,
                        AnswerKind::NotModified,
                        age,
                        status.to_header_value(),
                    );
                    return response;
                }
                Evaluation::PreconditionFailed => {
                    self.stats.client_status(412);
                    return with_header(precondition_failed(&entry.validators()), &status);
                }
                Evaluation::Proceed { honor_range: honor } => honor_range = honor,
            }
        }
        let mut headers = answer_fields(entry, AnswerKind::Whole, age, status.to_header_value());
        let range = head
            .range()
            .filter(|_| honor_range && head.method == Method::GET);
        if let Some(part) = entry.part()
            && let Some((first, last)) = range.and_then(|r| held_range(r, part))
        {
            return self.respond_part(headers, entry, part, first, last);
        }
        if entry.status == StatusCode::OK
            && let Some(range) = range.and_then(|r| ByteRange::parse(r.as_bytes()))
        {
            return self.respond_range(headers, entry, range);
        }
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = entry.status;
        if head.method == Method::HEAD {
            headers
                .entry(CONTENT_LENGTH)
                .or_insert(HeaderValue::from(entry.body.len()));
            self.stats.bytes(0, entry.body.len() as u64);
        } else {
            *response.body_mut() = CacheBody::full(entry.body.clone());
            self.stats
                .bytes(entry.body.len() as u64, entry.body.len() as u64);
        }
        *response.headers_mut() = headers;
        response
    }

    /// How the request's preconditions evaluate against a stored response (RFC
    /// 9110 §13.2.2); `None` when it has none, or when they are malformed (a
    /// malformed `If-Match` voids them all, as `Preconditions::from_fields` says).
    pub(super) fn evaluate_preconditions(
        &self,
        head: &RequestHead,
        entry: &StoredResponse,
    ) -> Option<Evaluation> {
        if let Some(tag) = entry.etag_bytes()
            && Preconditions::if_none_match_echoes_field(
                &head.method,
                &head.headers,
                head.carried.conditional,
                tag,
            )
        {
            return Some(Evaluation::NotModified);
        }
        let preconditions =
            Preconditions::from_fields(&head.method, &head.headers, head.carried.conditional)
                .ok()
                .filter(|p| !p.is_empty())?;
        let validators = entry.validators();
        let mut evaluation = preconditions.evaluate(&head.method, Some(&validators));
        // RFC 9111 §4.3.2: without Last-Modified, If-Modified-Since is evaluated
        // against the stored response's Date (or when it was received).
        if let (Evaluation::Proceed { .. }, None, None, Some(since)) = (
            &evaluation,
            &preconditions.if_none_match,
            validators.last_modified,
            preconditions.if_modified_since,
        ) && revalidate::is_get_or_head(&head.method)
            && entry
                .date()
                .unwrap_or_else(|| HttpDate::from_system_time(entry.response_time()))
                <= since
        {
            evaluation = Evaluation::NotModified;
        }
        Some(evaluation)
    }

    /// A response that was not stored, with the client's conditional request
    /// evaluated against its own validators.
    pub(super) fn respond_live<B>(
        &self,
        head: &RequestHead,
        mut response: Response<CacheBody<B>>,
        status: CacheStatus,
        outcome: Outcome,
    ) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        self.stats.outcome(outcome);
        response
            .headers_mut()
            .insert(CACHE_STATUS.clone(), status.to_header_value());
        let length = response.body().size_hint().exact().unwrap_or(0);
        if response.status() == StatusCode::OK
            && head.carried.conditional.any_precondition()
            && let Ok(preconditions) =
                Preconditions::from_fields(&head.method, &head.headers, head.carried.conditional)
            && !preconditions.is_empty()
        {
            let validators = Validators::from_headers(response.headers());
            if (validators.etag.is_some() || validators.last_modified.is_some())
                && preconditions.evaluate(&head.method, Some(&validators))
                    == Evaluation::NotModified
            {
                self.stats.client_status(304);
                self.stats.bytes(0, length);
                let headers = not_modified_headers(response.headers());
                let mut not_modified = Response::new(CacheBody::empty());
                *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
                *not_modified.headers_mut() = headers;
                not_modified
                    .headers_mut()
                    .insert(CACHE_STATUS.clone(), status.to_header_value());
                return not_modified;
            }
        }
        if head.method == Method::HEAD {
            if let Some(len) = response.body().size_hint().exact() {
                response
                    .headers_mut()
                    .entry(CONTENT_LENGTH)
                    .or_insert(HeaderValue::from(len));
            }
            *response.body_mut() = CacheBody::empty();
            self.stats.bytes(0, length);
        } else {
            self.stats.bytes(length, length);
        }
        response
    }
}
