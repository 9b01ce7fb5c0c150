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
            .or_else(|| parse_layout_leniently(text.as_bytes()).map(Self::from_unix_secs))
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

const WEEKDAYS: [&[u8; 3]; 7] = [b"mon", b"tue", b"wed", b"thu", b"fri", b"sat", b"sun"];
const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) or asctime (`Sun Nov  6 08:49:37
/// 1994`) in their exact layouts, but with names in any case and the weekday not
/// checked against the date, as RFC 9110 §5.6.7 allows recipients to accept. The
/// `httpdate` crate refuses both; everything else it refuses stays refused here.
fn parse_layout_leniently(b: &[u8]) -> Option<u64> {
    let lower = |range: std::ops::Range<usize>| -> Option<[u8; 3]> {
        let s = b.get(range)?;
        Some([
            s[0].to_ascii_lowercase(),
            s[1].to_ascii_lowercase(),
            s[2].to_ascii_lowercase(),
        ])
    };
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = b.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let (day, month, year, time) = match b.len() {
        29 if b[3] == b','
            && b[4] == b' '
            && b[7] == b' '
            && b[11] == b' '
            && b[16] == b' '
            && b[25] == b' ' =>
        {
            if &lower(26..29)? != b"gmt" {
                return None;
            }
            (number(5..7)?, lower(8..11)?, number(12..16)?, 17)
        }
        24 if b[3] == b' ' && b[7] == b' ' && b[10] == b' ' && b[19] == b' ' => {
            let day = if b[8] == b' ' {
                number(9..10)?
            } else {
                number(8..10)?
            };
            (day, lower(4..7)?, number(20..24)?, 11)
        }
        _ => return None,
    };
    let weekday = lower(0..3)?;
    if !WEEKDAYS.iter().any(|w| **w == weekday) || b[time + 2] != b':' || b[time + 5] != b':' {
        return None;
    }
    let month = MONTHS.iter().position(|m| **m == month)? as u64 + 1;
    let (hour, minute, second) = (
        number(time..time + 2)?,
        number(time + 3..time + 5)?,
        number(time + 6..time + 8)?,
    );
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), years from 1970.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
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
    fn names_in_any_case_and_a_wrong_weekday_are_accepted() {
        let expected: HttpDate = "Mon, 08 Aug 2050 02:00:00 GMT".parse().unwrap();
        for variant in [
            "Thu, 08 Aug 2050 02:00:00 GMT",
            "mon, 08 aug 2050 02:00:00 gmt",
            "MON, 08 AUG 2050 02:00:00 GMT",
            "Thu Aug  8 02:00:00 2050",
        ] {
            assert_eq!(variant.parse::<HttpDate>(), Ok(expected), "{variant}");
        }
        // Layout errors stay errors.
        for bad in [
            "Mon 08 Aug 2050 02:00:00 GMT",
            "Mon, 08 Aug 2050 2:00:00 GMT",
            "Mon, 08 Aug 2050 02:00:00 UTC",
            "Mon,  08 Aug 2050 02:00:00 GMT",
            "Mon, 08 Aug 50 02:00:00 GMT",
            "Xyz, 08 Aug 2050 02:00:00 GMT",
        ] {
            assert!(bad.parse::<HttpDate>().is_err(), "{bad}");
        }
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
