//! One access line, formatted as text (the [parent module](super) shows one) or
//! as JSON:
//!
//! ```text
//! {"time":"2026-12-03T08:17:42.123Z","client":"127.0.0.1","method":"GET","target":"/users/1","version":"HTTP/1.1","status":200,"bytes":48,"cache_status":"revalidate; hit; ttl=29","upstream_seconds":null,"total_seconds":0.000041,"request_id":"5f3a9c0e00000001","user_agent":"curl/8.5.0"}
//! ```

use std::net::IpAddr;
use std::time::Duration;

use super::{LogFormat, hex_id};

/// A request id as a line carries it: the client's or the upstream client's
/// text, or a number made here (written in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Id<'a> {
    Text(&'a [u8]),
    Made(u64),
}

/// A request's fields, as its line shows them.
#[derive(Debug)]
pub(super) struct Line<'a> {
    /// When the request's head was read (for a head refused before the service
    /// saw it, when it was refused), in microseconds since the Unix epoch, before
    /// the clocks' drift is added.
    pub(super) time: u64,
    pub(super) status: u16,
    /// None for a head refused before any layer saw it (400, 408, 414, 431).
    pub(super) request: Option<RequestLine<'a>>,
    pub(super) bytes: Option<u64>,
    pub(super) upstream: Option<Duration>,
    /// From the head to the body's end; unknown for a refused head.
    pub(super) total: Option<Duration>,
    pub(super) client: Option<IpAddr>,
    pub(super) cache_status: Option<&'a [u8]>,
    pub(super) id: Id<'a>,
    pub(super) user_agent: Option<&'a [u8]>,
}

/// What a request's first line said.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestLine<'a> {
    pub(super) method: &'a [u8],
    pub(super) target: &'a [u8],
    pub(super) version: http::Version,
}

/// What a thread's lines remember from one to the next: the time's text and the
/// last client's.
#[derive(Debug, Default)]
pub(super) struct LineWriter {
    time: TimeText,
    client: ClientText,
}

impl LineWriter {
    /// How far the wall clock has drifted from the logger's, in microseconds:
    /// added to the times of the lines to come.
    pub(super) fn set_drift(&mut self, drift: i64) {
        self.time.drift = drift;
    }

    /// Appends `line` (without its end) in `format`.
    pub(super) fn write(&mut self, line: &Line<'_>, format: LogFormat, out: &mut Vec<u8>) {
        match format {
            LogFormat::Text => line.text(self, out),
            LogFormat::Json => line.json(self, out),
        }
    }
}

impl Line<'_> {
    /// Written byte by byte, numbers with `itoa`: `write!` costs several times
    /// more, and a line is formatted for every request.
    fn text(&self, writer: &mut LineWriter, out: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        match self.client {
            Some(client) => writer.client.push(out, client),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" [");
        writer.time.push(out, self.time);
        out.extend_from_slice(b"] \"");
        match self.request {
            Some(request) => {
                // A method is a token (`http::Method` holds no other): nothing to
                // escape.
                out.extend_from_slice(request.method);
                out.push(b' ');
                escape_into(out, request.target);
                out.push(b' ');
                out.extend_from_slice(version_str(request.version).as_bytes());
            }
            // As nginx writes a request it could not read.
            None => out.push(b'-'),
        }
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(numbers.format(self.status).as_bytes());
        out.push(b' ');
        match self.bytes {
            Some(bytes) => out.extend_from_slice(numbers.format(bytes).as_bytes()),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" \"");
        escape_into(out, self.cache_status.unwrap_or(b"-"));
        out.extend_from_slice(b"\" upstream=");
        match self.upstream {
            Some(upstream) => seconds(out, upstream),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" total=");
        match self.total {
            Some(total) => seconds(out, total),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" id=");
        match self.id {
            Id::Text(text) => escape_into(out, text),
            Id::Made(made) => out.extend_from_slice(&hex_id(made)),
        }
        out.extend_from_slice(b" ua=\"");
        escape_into(out, self.user_agent.unwrap_or(b"-"));
        out.push(b'"');
    }

    /// Written field by field, as `text` is, with serde_json escaping the
    /// strings: building a `serde_json::Value` first costs ten times more per line.
    fn json(&self, writer: &mut LineWriter, out: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        writer.time.push(out, self.time);
        out.extend_from_slice(b"\",\"client\":");
        match self.client {
            Some(client) => {
                out.push(b'"');
                writer.client.push(out, client);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json_string(out, self.request.map(|r| r.method));
        out.extend_from_slice(b",\"target\":");
        json_string(out, self.request.map(|r| r.target));
        out.extend_from_slice(b",\"version\":");
        match self.request {
            Some(request) => {
                out.push(b'"');
                out.extend_from_slice(version_str(request.version).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(numbers.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        match self.bytes {
            Some(bytes) => out.extend_from_slice(numbers.format(bytes).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cache_status\":");
        json_string(out, self.cache_status);
        // Seconds with six decimals are JSON numbers as they are.
        out.extend_from_slice(b",\"upstream_seconds\":");
        match self.upstream {
            Some(upstream) => seconds(out, upstream),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"total_seconds\":");
        match self.total {
            Some(total) => seconds(out, total),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_id\":");
        match self.id {
            Id::Text(text) => json_string(out, Some(text)),
            Id::Made(made) => {
                out.push(b'"');
                out.extend_from_slice(&hex_id(made));
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"user_agent\":");
        json_string(out, self.user_agent);
        out.push(b'}');
    }
}

/// `value` as a JSON string (escaped by serde_json; bytes that are not UTF-8
/// become U+FFFD), or `null`.
fn json_string(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A thread's clock for its lines: the correction it applies to their times
/// (the drift the writer thread measured), and the text of the last second it
/// wrote, formatted once per second (the milliseconds are written per line).
#[derive(Debug, Default)]
struct TimeText {
    drift: i64,
    second: Option<u64>,
    text: [u8; 19],
}

impl TimeText {
    /// The last second humantime formats (the end of year 9999).
    const LAST: u64 = 253_402_300_799;

    /// Appends `micros` (since the Unix epoch) as RFC 3339 UTC with milliseconds:
    /// `2026-12-03T08:17:42.123Z`.
    fn push(&mut self, out: &mut Vec<u8>, micros: u64) {
        let micros = micros.saturating_add_signed(self.drift);
        let second = (micros / 1_000_000).min(Self::LAST);
        if self.second != Some(second) {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(second);
            let formatted = humantime::format_rfc3339_seconds(at).to_string();
            // `YYYY-MM-DDTHH:MM:SS`, without its `Z`.
            self.text.copy_from_slice(&formatted.as_bytes()[..19]);
            self.second = Some(second);
        }
        let millis = u16::try_from(micros % 1_000_000 / 1_000).unwrap_or(0);
        let digit = |n: u16| b'0' + (n % 10) as u8;
        // Laid out on the stack and appended in one copy.
        let mut text = [0; 24];
        text[..19].copy_from_slice(&self.text);
        text[19..].copy_from_slice(&[
            b'.',
            digit(millis / 100),
            digit(millis / 10),
            digit(millis),
            b'Z',
        ]);
        out.extend_from_slice(&text);
    }
}

/// The last client address a thread wrote, as text: a keep-alive connection's
/// requests come one after the other, and each line would otherwise format the
/// same address again.
#[derive(Debug, Default)]
struct ClientText {
    ip: Option<IpAddr>,
    text: Vec<u8>,
}

impl ClientText {
    /// Appends `ip` as text: IPv4 octets written with `itoa`, IPv6 by the
    /// standard library.
    fn push(&mut self, out: &mut Vec<u8>, ip: IpAddr) {
        if self.ip != Some(ip) {
            self.text.clear();
            match ip {
                IpAddr::V4(v4) => {
                    let mut numbers = itoa::Buffer::new();
                    for (i, octet) in v4.octets().into_iter().enumerate() {
                        if i > 0 {
                            self.text.push(b'.');
                        }
                        self.text
                            .extend_from_slice(numbers.format(octet).as_bytes());
                    }
                }
                IpAddr::V6(v6) => {
                    use std::io::Write as _;
                    let _ = write!(self.text, "{v6}");
                }
            }
            self.ip = Some(ip);
        }
        out.extend_from_slice(&self.text);
    }
}

/// `duration` in seconds with six decimals, formatted as integers (a float's
/// formatting costs several times more, on every request), from the seconds and
/// the microseconds apart: `as_micros` is a `u128`, whose division is a library
/// call. The decimals are laid out on the stack and appended in one copy.
fn seconds(out: &mut Vec<u8>, duration: Duration) {
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(numbers.format(duration.as_secs()).as_bytes());
    let mut fraction = *b".000000";
    let mut micros = duration.subsec_micros();
    for digit in fraction[1..].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&fraction);
}

/// The protocol as a request line names it.
fn version_str(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Whether a byte is written as `\xNN` (or `\"`, `\\`): controls, `"`, `\`, and
/// bytes beyond ASCII, as nginx escapes them, so that a line is always one line
/// of ASCII and its quoted fields always end where they should.
const fn escaped(b: u8) -> bool {
    b < 0x20 || b >= 0x7f || b == b'"' || b == b'\\'
}

/// [`escaped`] for every byte: one load per byte where the test is four
/// comparisons, on every field of every line. (Comparisons without branches
/// compile to vector code, which counts more instructions on values as short as
/// a path or a user agent.)
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = escaped(b as u8);
        b += 1;
    }
    table
};

/// Appends `value`, escaped (see [`escaped`]); runs of plain bytes are copied
/// whole.
fn escape_into(out: &mut Vec<u8>, value: &[u8]) {
    // Most values hold nothing to escape. One pass with no early exit tells so
    // for the whole value, which is then copied in one piece.
    if !value
        .iter()
        .fold(false, |any, &b| any | ESCAPED[usize::from(b)])
    {
        out.extend_from_slice(value);
        return;
    }
    let mut rest = value;
    while let Some(at) = rest.iter().position(|&b| ESCAPED[usize::from(b)]) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => {
                let digits = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    digits[usize::from(b >> 4)],
                    digits[usize::from(b & 0xf)],
                ]);
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_rfc3339_with_milliseconds_and_the_drift_added() {
        // A clock set back an hour moves the lines' times with it.
        let mut time = TimeText {
            drift: -3_600_000_000,
            ..TimeText::default()
        };
        let mut out = Vec::new();
        time.push(&mut out, 1_796_290_262_123_456);
        time.push(&mut out, u64::MAX);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-03T08:31:02.123Z9999-12-31T23:59:59.551Z"
        );
    }

    #[test]
    fn durations_are_written_in_seconds_with_six_decimals() {
        let mut out = Vec::new();
        for micros in [0, 41, 1_000_001, 12_345_678] {
            seconds(&mut out, Duration::from_micros(micros));
            out.push(b' ');
        }
        assert_eq!(out, b"0.000000 0.000041 1.000001 12.345678 ");
    }

    #[test]
    fn a_client_is_written_as_its_own_address_after_another() {
        let mut client = ClientText::default();
        let mut out = Vec::new();
        for ip in ["10.0.0.1", "10.0.0.1", "::1", "10.0.0.2", "2001:db8::7"] {
            client.push(&mut out, ip.parse().unwrap());
            out.push(b' ');
        }
        assert_eq!(out, b"10.0.0.1 10.0.0.1 ::1 10.0.0.2 2001:db8::7 ");
    }

    fn lines() -> [Line<'static>; 2] {
        [
            Line {
                time: 1_796_286_662_123_456,
                status: 304,
                request: Some(RequestLine {
                    method: b"GET",
                    target: b"/a?b=c",
                    version: http::Version::HTTP_2,
                }),
                bytes: None,
                upstream: Some(Duration::from_micros(1_234)),
                total: Some(Duration::from_micros(5_678)),
                client: Some("10.0.0.1".parse().unwrap()),
                cache_status: None,
                id: Id::Text(b"abc"),
                user_agent: Some(b"\xffua"),
            },
            Line {
                time: 1_796_286_663_000_500,
                status: 200,
                request: Some(RequestLine {
                    method: b"HEAD",
                    target: b"/",
                    version: http::Version::HTTP_11,
                }),
                bytes: Some(5),
                upstream: None,
                total: Some(Duration::from_micros(41)),
                client: Some("::1".parse().unwrap()),
                cache_status: Some(b"revalidate; hit"),
                id: Id::Made(0x0123_4567_89ab_cdef),
                user_agent: None,
            },
        ]
    }

    #[test]
    fn a_text_line_has_every_field_in_place() {
        let mut writer = LineWriter::default();
        let mut out = Vec::new();
        for line in &lines() {
            writer.write(line, LogFormat::Text, &mut out);
            out.push(b'\n');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 [2026-12-03T08:31:02.123Z] \"GET /a?b=c HTTP/2.0\" 304 - \"-\" upstream=0.001234 total=0.005678 id=abc ua=\"\\xffua\"\n\
             ::1 [2026-12-03T08:31:03.000Z] \"HEAD / HTTP/1.1\" 200 5 \"revalidate; hit\" upstream=- total=0.000041 id=0123456789abcdef ua=\"-\"\n"
        );
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let mut writer = LineWriter::default();
        let mut json = |line: &Line<'_>| {
            let mut out = Vec::new();
            writer.write(line, LogFormat::Json, &mut out);
            serde_json::from_slice::<serde_json::Value>(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
        };
        let [first, second] = lines();
        assert_eq!(
            json(&first),
            serde_json::json!({
                "time": "2026-12-03T08:31:02.123Z", "client": "10.0.0.1", "method": "GET",
                "target": "/a?b=c", "version": "HTTP/2.0", "status": 304, "bytes": null,
                "cache_status": null, "upstream_seconds": 0.001234, "total_seconds": 0.005678,
                "request_id": "abc", "user_agent": "\u{fffd}ua",
            })
        );
        assert_eq!(
            json(&second),
            serde_json::json!({
                "time": "2026-12-03T08:31:03.000Z", "client": "::1", "method": "HEAD",
                "target": "/", "version": "HTTP/1.1", "status": 200, "bytes": 5,
                "cache_status": "revalidate; hit", "upstream_seconds": null,
                "total_seconds": 0.000041, "request_id": "0123456789abcdef", "user_agent": null,
            })
        );
    }

    /// `line` as text and as parsed JSON.
    fn formatted(line: &Line<'_>) -> (String, serde_json::Value) {
        let (mut text, mut json) = (Vec::new(), Vec::new());
        LineWriter::default().write(line, LogFormat::Text, &mut text);
        LineWriter::default().write(line, LogFormat::Json, &mut json);
        let json = serde_json::from_slice(&json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        (String::from_utf8(text).unwrap(), json)
    }

    #[test]
    fn a_refused_head_shows_what_is_unknown_as_such() {
        let line = Line {
            time: 1_796_286_662_123_456,
            status: 431,
            request: None,
            bytes: Some(0),
            upstream: None,
            total: None,
            client: Some("10.0.0.1".parse().unwrap()),
            cache_status: None,
            id: Id::Made(1),
            user_agent: None,
        };
        let (text, json) = formatted(&line);
        assert_eq!(
            text,
            "10.0.0.1 [2026-12-03T08:31:02.123Z] \"-\" 431 0 \"-\" upstream=- total=- id=0000000000000001 ua=\"-\""
        );
        assert_eq!(
            json,
            serde_json::json!({
                "time": "2026-12-03T08:31:02.123Z", "client": "10.0.0.1", "method": null,
                "target": null, "version": null, "status": 431, "bytes": 0,
                "cache_status": null, "upstream_seconds": null, "total_seconds": null,
                "request_id": "0000000000000001", "user_agent": null,
            })
        );
    }

    #[test]
    fn exactly_controls_quotes_backslashes_and_non_ascii_are_escaped() {
        for b in 0..=u8::MAX {
            let plain = (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\';
            assert_eq!(ESCAPED[usize::from(b)], !plain, "{b:#04x}");
        }
    }

    #[test]
    fn quoted_fields_cannot_break_a_line() {
        let line = Line {
            time: 1_796_286_662_999_999,
            status: 200,
            request: Some(RequestLine {
                method: b"GET",
                target: b"/a\"b\nc\\d",
                version: http::Version::HTTP_11,
            }),
            bytes: Some(5),
            upstream: None,
            total: Some(Duration::from_micros(41)),
            client: None,
            cache_status: Some(b"revalidate; hit"),
            id: Id::Text(b"i"),
            user_agent: Some("ua\"x\u{e9}".as_bytes()),
        };
        let (text, parsed) = formatted(&line);
        assert_eq!(
            text,
            "- [2026-12-03T08:31:02.999Z] \"GET /a\\\"b\\x0ac\\\\d HTTP/1.1\" 200 5 \"revalidate; hit\" upstream=- total=0.000041 id=i ua=\"ua\\\"x\\xc3\\xa9\""
        );
        assert_eq!(parsed["time"], "2026-12-03T08:31:02.999Z");
        assert_eq!(parsed["target"], "/a\"b\nc\\d");
        assert_eq!(parsed["status"], 200);
        assert_eq!(parsed["user_agent"], "ua\"x\u{e9}");
    }
}
