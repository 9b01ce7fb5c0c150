//! Validators: entity tags and last-modified dates (RFC 9110 §8.8).
//!
//! ```
//! use revalidate::{EntityTag, HttpDate, Validators};
//!
//! let v = Validators::new()
//!     .etag(EntityTag::strong("v3").unwrap())
//!     .last_modified(HttpDate::from_unix_secs(1_700_000_000));
//! let mut headers = http::HeaderMap::new();
//! v.write_to(&mut headers);
//! assert_eq!(headers["etag"], "\"v3\"");
//! assert_eq!(headers["last-modified"], "Tue, 14 Nov 2023 22:13:20 GMT");
//! ```

mod entity_tag;
mod http_date;

pub(crate) use entity_tag::trim_ows;
pub use entity_tag::{EntityTag, EntityTagMatch, InvalidEntityTag};
pub use http_date::{HttpDate, InvalidHttpDate};

use http::HeaderMap;
use http::header::{ETAG, LAST_MODIFIED};

/// The validators of a selected representation: what conditional requests are
/// evaluated against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The current entity tag, if the resource has one.
    pub etag: Option<EntityTag>,
    /// The last modification date, if the resource has one.
    pub last_modified: Option<HttpDate>,
}

impl Validators {
    /// Validators with neither an entity tag nor a date.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the entity tag.
    pub fn etag(mut self, etag: EntityTag) -> Self {
        self.etag = Some(etag);
        self
    }

    /// Sets the last modification date.
    pub fn last_modified(mut self, date: impl Into<HttpDate>) -> Self {
        self.last_modified = Some(date.into());
        self
    }

    /// The validators of a row with a version counter and a modification time, in
    /// one call: the strong tag `"v{version}"` and `Last-Modified` (to the second,
    /// as HTTP-dates are). What a validator source returns for a versioned record.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use revalidate::Validators;
    ///
    /// let v = Validators::versioned(7, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    /// assert_eq!(v.etag.unwrap().to_string(), "\"v7\"");
    /// assert_eq!(v.last_modified.unwrap().unix_secs(), 1_700_000_000);
    /// ```
    pub fn versioned(version: u64, updated_at: impl Into<HttpDate>) -> Self {
        Self {
            // A `v` and digits are always a valid opaque tag.
            etag: EntityTag::strong(format!("v{version}")).ok(),
            last_modified: Some(updated_at.into()),
        }
    }

    /// Reads the `ETag` and `Last-Modified` of a response.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            etag: EntityTag::from_headers(headers),
            last_modified: HttpDate::from_headers(headers, &LAST_MODIFIED),
        }
    }

    /// Writes `ETag` and `Last-Modified` into `headers`, replacing what was there.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        if let Some(etag) = &self.etag {
            headers.insert(ETAG, etag.to_header_value());
        }
        if let Some(date) = self.last_modified {
            headers.insert(LAST_MODIFIED, date.to_header_value());
        }
    }
}
