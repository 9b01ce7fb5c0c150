//! The `Cache-Status` response field (RFC 9211).
//!
//! ```
//! use revalidate_cache::status::CacheStatus;
//!
//! let status = CacheStatus::hit(Some(42));
//! assert_eq!(status.to_string(), "revalidate; hit; ttl=42");
//! let miss = CacheStatus::forward("uri-miss").stored();
//! assert_eq!(miss.to_string(), "revalidate; fwd=uri-miss; stored");
//! ```

use std::fmt;

use http::{HeaderName, HeaderValue};

/// The field name.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// One cache's entry in `Cache-Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    hit: bool,
    fwd: Option<&'static str>,
    fwd_status: Option<u16>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    detail: Option<&'static str>,
}

impl CacheStatus {
    /// Served from the cache without going upstream.
    pub fn hit(ttl: Option<i64>) -> Self {
        Self {
            hit: true,
            ttl,
            ..Self::default()
        }
    }

    /// Forwarded upstream, for `reason`: `bypass`, `method`, `uri-miss`,
    /// `vary-miss`, `miss`, `request` or `stale`.
    pub fn forward(reason: &'static str) -> Self {
        Self {
            fwd: Some(reason),
            ..Self::default()
        }
    }

    /// The status the upstream answered.
    pub fn fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }

    /// The remaining freshness, in seconds (negative when stale).
    pub fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The response was stored.
    pub fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// The request was collapsed with another one's fetch.
    pub fn collapsed(mut self) -> Self {
        self.collapsed = true;
        self
    }

    /// Extra detail, e.g. `stale-while-revalidate`.
    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Whether this was a hit.
    pub fn is_hit(&self) -> bool {
        self.hit
    }

    /// The field value.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("ascii")
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("revalidate")?;
        if self.hit {
            f.write_str("; hit")?;
        }
        if let Some(fwd) = self.fwd {
            write!(f, "; fwd={fwd}")?;
        }
        if let Some(status) = self.fwd_status {
            write!(f, "; fwd-status={status}")?;
        }
        if let Some(ttl) = self.ttl {
            write!(f, "; ttl={ttl}")?;
        }
        if self.stored {
            f.write_str("; stored")?;
        }
        if self.collapsed {
            f.write_str("; collapsed")?;
        }
        if let Some(detail) = self.detail {
            write!(f, "; detail={detail}")?;
        }
        Ok(())
    }
}
