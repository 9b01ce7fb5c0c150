//! The header set of a 304 response (RFC 9110 §15.4.5).
//!
//! ```
//! use http::HeaderMap;
//! use revalidate::not_modified_headers;
//!
//! let mut ok = HeaderMap::new();
//! ok.insert("etag", "\"v1\"".parse().unwrap());
//! ok.insert("content-type", "application/json".parse().unwrap());
//! ok.insert("content-length", "5120".parse().unwrap());
//! let headers = not_modified_headers(&ok);
//! assert_eq!(headers["etag"], "\"v1\"");
//! assert!(!headers.contains_key("content-type"));
//! assert!(!headers.contains_key("content-length"));
//! ```

use http::HeaderMap;
use http::header::{CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY};

/// The fields a 304 must repeat from the 200 it stands for.
const KEPT: [http::HeaderName; 7] = [
    ETAG,
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    EXPIRES,
    VARY,
    LAST_MODIFIED,
];

/// Picks, from the headers a 200 would carry, those a 304 must carry: ETag,
/// Cache-Control, Content-Location, Date, Expires and Vary, plus Last-Modified only
/// when there is no ETag (the "guiding cache updates" exception of §15.4.5).
/// Representation metadata such as Content-Type and Content-Length is dropped: a
/// Content-Length on a 304 would have to equal the 200's and adds nothing.
pub fn not_modified_headers(ok: &HeaderMap) -> HeaderMap {
    // Room for two more: a cache adds Age and Cache-Status.
    let mut out = HeaderMap::with_capacity(KEPT.len() + 2);
    let has_etag = ok.contains_key(ETAG);
    // One pass over the 200's fields (comparing standard names is cheap) rather
    // than a lookup per kept name: a cache answers many 304s.
    for (name, value) in ok {
        if KEPT.contains(name) && !(name == LAST_MODIFIED && has_etag) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}
