//! HTTP-dates (RFC 9110 §5.6.7): all three forms accepted, IMF-fixdate produced,
//! compared at one-second resolution.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

/// A point in time with one-second resolution, as HTTP carries it.
///
/// ```
/// use revalidate::HttpDate;
///
/// let imf: HttpDate = "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap();
/// let rfc850: HttpDate = "Sunday, 06-Nov-94 08:49:37 GMT".parse().unwrap();
/// let asctime: HttpDate = "Sun Nov  6 08:49:37 1994".parse().unwrap();
/// assert_eq!(imf, rfc850);
/// assert_eq!(imf, asctime);
/// assert_eq!(asctime.to_string(), "Sun, 06 Nov 1994 08:49:37 GMT");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpDate {
    /// Seconds since the Unix epoch.
    secs: u64,
}

/// The reason an HTTP-date could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHttpDate;

impl fmt::Display for InvalidHttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid HTTP-date (RFC 9110 §5.6.7)")
    }
}

impl std::error::Error for InvalidHttpDate {}

impl HttpDate {
    /// The date of `time`, truncated to the second. Times before 1970 clamp to the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { secs }
    }

    /// The date `secs` seconds after the Unix epoch.
    pub fn from_unix_secs(secs: u64) -> Self {
        Self { secs }
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(self) -> u64 {
        self.secs
    }

    /// This date as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.secs)
    }

    /// Parses any of the three HTTP-date forms from raw field bytes.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(super::entity_tag::trim_ows(bytes)).ok()?;
        httpdate::parse_http_date(text)
            .ok()
            .map(Self::from_system_time)
    }

    /// Reads a date field that must appear exactly once with a valid date.
    ///
    /// RFC 9110 §13.1.3/§13.1.4: a recipient ignores a date field that is invalid or
    /// has more than one member, so both yield `None`.
    pub fn from_headers(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(first.as_bytes())
    }

    /// The IMF-fixdate form as a header value.
    pub fn to_header_value(self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("IMF-fixdate is ASCII")
    }
}

impl fmt::Debug for HttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for HttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&httpdate::fmt_http_date(self.to_system_time()))
    }
}

impl std::str::FromStr for HttpDate {
    type Err = InvalidHttpDate;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes()).ok_or(InvalidHttpDate)
    }
}

impl From<SystemTime> for HttpDate {
    fn from(time: SystemTime) -> Self {
        Self::from_system_time(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::IF_MODIFIED_SINCE;
    use proptest::prelude::*;

    #[test]
    fn compares_at_one_second_resolution() {
        let base = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let later_same_second = base + Duration::from_millis(999);
        assert_eq!(
            HttpDate::from_system_time(base),
            HttpDate::from_system_time(later_same_second)
        );
        assert!(HttpDate::from_system_time(base + Duration::from_secs(1)) > HttpDate::from(base));
    }

    #[test]
    fn a_list_of_dates_is_ignored() {
        let mut headers = HeaderMap::new();
        headers.append(
            IF_MODIFIED_SINCE,
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT"
                .parse()
                .unwrap(),
        );
        assert_eq!(HttpDate::from_headers(&headers, &IF_MODIFIED_SINCE), None);

        let mut two_lines = HeaderMap::new();
        for _ in 0..2 {
            two_lines.append(
                IF_MODIFIED_SINCE,
                "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
            );
        }
        assert_eq!(HttpDate::from_headers(&two_lines, &IF_MODIFIED_SINCE), None);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert!(bad.parse::<HttpDate>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = HttpDate::parse(&bytes);
        }

        #[test]
        fn formatted_dates_parse_back(secs in 0u64..253_402_300_799) {
            let date = HttpDate::from_unix_secs(secs);
            prop_assert_eq!(date.to_string().parse::<HttpDate>(), Ok(date));
        }
    }
}
