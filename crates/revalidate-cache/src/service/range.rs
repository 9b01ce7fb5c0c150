//! Byte ranges (RFC 9110 §14) answered from stored responses and stored parts
//! (RFC 9111 §3.3).

use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::entry::{Part, StoredResponse};
use crate::shared::Shared;
use crate::store::Store;
use revalidate::ResponseBody as CacheBody;

use super::head::RequestHead;

/// Whether a stored part holds the single range a GET asks for (without If-Range,
/// whose answer may need the whole representation).
pub(super) fn holds_requested_range(head: &RequestHead, part: Option<Part>) -> bool {
    let Some(part) = part else {
        return false;
    };
    head.method == Method::GET
        && head.range().and_then(|r| held_range(r, part)).is_some()
        && !head.has_if_range()
}

/// The byte positions a `Range` value asks for, when it is one range that `part`
/// holds.
pub(super) fn held_range(range: &HeaderValue, part: Part) -> Option<(u64, u64)> {
    ByteRange::parse(range.as_bytes())?
        .resolve(part.complete)
        .filter(|&(first, last)| part.holds(first, last))
}

/// One range of `Range: bytes=…`; several ranges are served whole (a 200), which
/// RFC 9110 §14.2 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    pub(super) fn parse(value: &[u8]) -> Option<Self> {
        let spec = std::str::from_utf8(value)
            .ok()?
            .trim()
            .strip_prefix("bytes=")?
            .trim();
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match (first.trim(), last.trim()) {
            ("", suffix) => Some(Self::Suffix(number(suffix)?)),
            (first, "") => Some(Self::From(number(first)?, None)),
            (first, last) => {
                let (first, last) = (number(first)?, number(last)?);
                (first <= last).then_some(Self::From(first, Some(last)))
            }
        }
    }

    /// The inclusive byte positions within `len`, or `None` if unsatisfiable.
    pub(super) fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            Self::From(first, _) if first >= len => None,
            Self::From(first, last) => Some((first, last.map_or(len - 1, |l| l.min(len - 1)))),
            Self::Suffix(0) => None,
            Self::Suffix(n) => Some((len.saturating_sub(n), len.checked_sub(1)?)),
        }
    }
}

impl<St: Store> Shared<St> {
    /// A single byte range of a stored complete response (RFC 9110 §14): 206, or
    /// 416 when it lies outside the representation.
    pub(super) fn respond_range<B>(
        &self,
        mut headers: HeaderMap,
        entry: &StoredResponse,
        range: ByteRange,
    ) -> Response<CacheBody<B>> {
        let len = entry.body.len() as u64;
        let mut response = Response::new(CacheBody::empty());
        match range.resolve(len) {
            Some((first, last)) => {
                let slice = entry.body.slice(first as usize..=last as usize);
                self.stats.bytes(slice.len() as u64, slice.len() as u64);
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                headers.insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")).expect("ascii"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(slice.len()));
                *response.body_mut() = CacheBody::full(slice);
            }
            None => {
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                headers.insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            }
        }
        *response.headers_mut() = headers;
        response
    }

    /// Bytes `first..=last` from a stored part (a 206).
    pub(super) fn respond_part<B>(
        &self,
        mut headers: HeaderMap,
        entry: &StoredResponse,
        part: Part,
        first: u64,
        last: u64,
    ) -> Response<CacheBody<B>> {
        let start = (first - part.first) as usize;
        let end = (last - part.first) as usize;
        let slice = entry.body.slice(start..=end);
        self.stats.bytes(slice.len() as u64, slice.len() as u64);
        headers.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {first}-{last}/{}", part.complete))
                .expect("ascii"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(slice.len()));
        let mut response = Response::new(CacheBody::full(slice));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        *response.headers_mut() = headers;
        response
    }
}
