//! Cache keys: the normalized target URI (RFC 9111 §4.1, RFC 3986 §6.2.2) plus route
//! key additions, and the secondary key from `Vary` (§4.1).
//!
//! The cache forwards the normalized target too, so normalizing must give a URI
//! that the upstream resolves to the same resource: escapes of unreserved
//! characters are decoded, `.` and `..` segments removed (RFC 3986 §5.2.4, as the
//! upstream itself would resolve them, and as nginx does before it matches a
//! location), so that `/static/%2e%2e/me` is routed and keyed as `/me`.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Query normalization of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryRules {
    /// Sort parameters by name (stable for equal names).
    pub sort: bool,
    /// Parameter names to drop; a trailing `*` matches a prefix (`utm_*`).
    pub drop: Vec<String>,
}

impl QueryRules {
    fn drops(&self, name: &str) -> bool {
        self.drop
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §6.2.2: uppercase percent-encodings, decode unreserved characters.
fn normalize_percent(input: &str, out: &mut String) {
    let mut rest = input;
    // Most targets have no escapes: text is copied in runs, up to each `%`.
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let bytes = &rest.as_bytes()[at..];
        let escape = (bytes.len() >= 3)
            .then(|| Some((hex_value(bytes[1])?, hex_value(bytes[2])?)))
            .flatten();
        let Some((high, low)) = escape else {
            // A `%` that starts no escape stands for itself: written as one, so that
            // normalizing a normalized target changes nothing (purges normalize the
            // paths they are given, which may come from keys).
            out.push_str("%25");
            rest = &rest[at + 1..];
            continue;
        };
        let decoded = high * 16 + low;
        if is_unreserved(decoded) {
            out.push(decoded as char);
        } else {
            out.push('%');
            out.push(bytes[1].to_ascii_uppercase() as char);
            out.push(bytes[2].to_ascii_uppercase() as char);
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
}

/// The path and query of a request target, normalized for use as a key.
pub(crate) fn normalize_target(path_and_query: &str, rules: &QueryRules) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = String::with_capacity(path_and_query.len() + 1);
    push_normalized_path(path, &mut out);
    push_normalized_query(query, rules, &mut out);
    out
}

/// Appends a path, percent-encodings normalized and dot segments removed (`/` when
/// empty).
pub(crate) fn push_normalized_path(path: &str, out: &mut String) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    let start = out.len();
    normalize_percent(path, out);
    // Most paths have no dot segment: only those are rebuilt.
    if has_dot_segment(&out[start..]) {
        let resolved = remove_dot_segments(&out[start..]);
        out.truncate(start);
        // As an empty path is: `..` alone resolves to nothing.
        out.push_str(if resolved.is_empty() { "/" } else { &resolved });
    }
}

/// Whether a path has a `.` or `..` segment. Byte by byte: this runs on every
/// request, and almost every path has none.
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // `contains` on bytes is a vectorized search: most paths end here.
    if !bytes.contains(&b'.') {
        return false;
    }
    bytes.iter().enumerate().any(|(at, &b)| {
        b == b'.'
            && (at == 0 || bytes[at - 1] == b'/')
            && match bytes.get(at + 1) {
                None | Some(b'/') => true,
                Some(b'.') => matches!(bytes.get(at + 2), None | Some(b'/')),
                Some(_) => false,
            }
    })
}

/// RFC 3986 §5.2.4 for a path that starts with `/` (an origin-form target's, or
/// what the http crate gives for another form): `.` segments go, each `..` takes
/// the segment before it, and none climbs above the root. A final `.` or `..`
/// leaves the path ending in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut pieces = path.split('/').peekable();
    let leading = path.starts_with('/');
    if leading {
        pieces.next();
    }
    while let Some(segment) = pieces.next() {
        let last = pieces.peek().is_none();
        match segment {
            "." | ".." => {
                if segment == ".." {
                    segments.pop();
                }
                if last {
                    segments.push("");
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut resolved = String::with_capacity(path.len());
    if leading {
        resolved.push('/');
    }
    resolved.push_str(&segments.join("/"));
    resolved
}

/// Appends `?` and a query normalized by `rules` (nothing when there is no query,
/// or when the rules leave nothing of it).
pub(crate) fn push_normalized_query(query: Option<&str>, rules: &QueryRules, out: &mut String) {
    let Some(query) = query else {
        return;
    };
    if !rules.sort && rules.drop.is_empty() {
        // The common case needs no list of parameters.
        out.push('?');
        let mut first = true;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            if !first {
                out.push('&');
            }
            first = false;
            normalize_percent(param, out);
        }
        return;
    }
    // Names are compared once normalized: `%62` sorts, and is dropped, as `b`.
    fn name(param: &str) -> &str {
        param.split('=').next().unwrap_or("")
    }
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|param| {
            let mut normalized = String::with_capacity(param.len());
            normalize_percent(param, &mut normalized);
            normalized
        })
        .filter(|p| !rules.drops(name(p)))
        .collect();
    if rules.sort {
        params.sort_by(|a, b| name(a).cmp(name(b)));
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
}

/// The request's values for the fields a response varies on, normalized so that
/// equivalent requests match (§4.1: combined lines, whitespace around commas).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Secondary {
    /// The response's `Vary` field names.
    pub names: Vec<HeaderName>,
    /// The request's value of each (absent: `None`).
    pub values: Vec<Option<String>>,
}

impl Secondary {
    /// Whether `request` selects this variant.
    pub(crate) fn matches(&self, request: &HeaderMap) -> bool {
        // Field by field: no key is built (most responses vary on nothing, and
        // this runs on every hit).
        self.names.len() == self.values.len()
            && self
                .names
                .iter()
                .zip(&self.values)
                .all(|(name, stored)| request_value(name, request) == *stored)
    }
}

/// The field names of a response's `Vary`; `None` for `Vary: *`, which never matches.
pub(crate) fn vary_names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in response.get_all(http::header::VARY) {
        // A Vary that is not even ASCII cannot be matched safely: treat it as `*`.
        for member in value.to_str().ok()?.split(',') {
            let member = member.trim();
            if member == "*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(member.as_bytes())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The secondary key of `request` for the `names` a response varies on.
pub(crate) fn secondary(names: &[HeaderName], request: &HeaderMap) -> Secondary {
    Secondary {
        names: names.to_vec(),
        values: names
            .iter()
            .map(|name| request_value(name, request))
            .collect(),
    }
}

/// The request's normalized value of one field a response varies on.
fn request_value(name: &HeaderName, request: &HeaderMap) -> Option<String> {
    let value = combined(request.get_all(name).iter());
    if UNORDERED_CASELESS.contains(&name.as_str()) {
        value.map(|v| sorted_lowercase_members(&v))
    } else {
        value
    }
}

/// Fields whose members are case-insensitive tokens whose order carries no meaning
/// beyond their weights, so `en, FR` and `fr, en` select the same variant.
const UNORDERED_CASELESS: [&str; 2] = ["accept-language", "accept-encoding"];

fn sorted_lowercase_members(value: &str) -> String {
    let mut members: Vec<String> = value
        .split(',')
        .map(|m| {
            m.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty())
        .collect();
    members.sort();
    members.join(", ")
}

fn combined<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<String> {
    let mut out: Option<String> = None;
    for value in values {
        let text = String::from_utf8_lossy(value.as_bytes());
        for member in text.split(',') {
            let member = member.split_whitespace().collect::<Vec<_>>().join(" ");
            let out = out.get_or_insert_with(String::new);
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&member);
        }
    }
    out
}

/// The normalized target within a primary key: after the host (which holds no
/// `/`), up to the first key addition (after a `\n`, which no target holds).
pub(crate) fn target_of(primary: &str) -> &str {
    let end = primary.find('\n').unwrap_or(primary.len());
    let keyed = &primary[..end];
    keyed.find('/').map_or("", |at| &keyed[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_s_target_ends_where_its_additions_begin() {
        assert_eq!(target_of("a.test/x/y?q=1"), "/x/y?q=1");
        assert_eq!(target_of("a.test:8080/\nh:accept=text/html"), "/");
        // A key with no path before its additions has no target, whatever the
        // additions hold.
        assert_eq!(target_of("a.test*\nh:accept=text/html"), "");
        assert_eq!(target_of(""), "");
    }

    #[test]
    fn percent_encoding_is_normalized() {
        let none = QueryRules::default();
        assert_eq!(normalize_target("/a%2fb%7E%41", &none), "/a%2Fb~A");
        assert_eq!(normalize_target("/x?q=%7e", &none), "/x?q=~");
        assert_eq!(normalize_target("/bad%zz%4", &none), "/bad%25zz%254");
        assert_eq!(normalize_target("/%%41%", &none), "/%25A%25");
        // Decoding cannot make a new escape out of a lone `%` and what follows.
        assert_eq!(normalize_target("/%%34%31", &none), "/%2541");
        // Sorting and dropping compare names once normalized.
        let rules = QueryRules {
            sort: true,
            drop: vec!["utm_*".into()],
        };
        assert_eq!(
            normalize_target("/?%62=1&a=2&utm%5Fx=3", &rules),
            "/?a=2&b=1"
        );
        assert_eq!(normalize_target("/%7e%7E/%2f%2F", &none), "/~~/%2F%2F");
        for (path, dotted) in [
            ("/a.b/c", false),
            ("/.a/..b/", false),
            ("/.", true),
            ("/a/../b", true),
            ("..", true),
            ("/a/./", true),
            ("/...", false),
        ] {
            assert_eq!(has_dot_segment(path), dotted, "{path}");
        }
        // Dot segments are resolved, escaped or not, and never climb above the root.
        assert_eq!(normalize_target("/static/%2e%2e/me", &none), "/me");
        assert_eq!(
            normalize_target("/a/./b/../c?x=/../y", &none),
            "/a/c?x=/../y"
        );
        assert_eq!(normalize_target("/../../a", &none), "/a");
        assert_eq!(normalize_target("/a/b/..", &none), "/a/");
        assert_eq!(normalize_target("/a/.", &none), "/a/");
        assert_eq!(normalize_target("/..", &none), "/");
        assert_eq!(
            normalize_target("/a/..b/.c/%2E%2E%2Fd", &none),
            "/a/..b/.c/..%2Fd"
        );
        // A target the http crate accepts with bytes beyond ASCII keeps them as they are.
        let uri: http::Uri = "/caf\u{e9}%C3%A9".parse().unwrap();
        assert_eq!(normalize_target(uri.path(), &none), "/caf\u{e9}%C3%A9");
    }

    /// Escapes decoded, the query sorted and dropped, an empty target is `/`.
    #[test]
    fn the_target_is_normalized() {
        let rules = QueryRules {
            sort: true,
            drop: vec!["utm_*".into()],
        };
        assert_eq!(
            normalize_target("/a/%7euser?b=2&utm_source=x&a=1", &rules),
            "/a/~user?a=1&b=2"
        );
        assert_eq!(normalize_target("", &QueryRules::default()), "/");
    }

    proptest::proptest! {
        #[test]
        fn normalizing_twice_changes_nothing(
            // Escapes of hex digits, lone `%`s and bytes beyond ASCII are the cases
            // where decoding could make, or re-encode, something new.
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "%", "%34", "%31", "%3", "%41", "%7e", "%2F", "%25", "a", "B", "/",
                    "?", "=", "&", "utm_x", "\u{e9}", ".", "..", "%2e", "%2E.",
                ]),
                0..12,
            ),
            sort in proptest::bool::ANY,
        ) {
            let target = pieces.concat();
            let rules = QueryRules { sort, drop: vec!["utm_*".into()] };
            let once = normalize_target(&target, &rules);
            proptest::prop_assert_eq!(normalize_target(&once, &rules), once);
        }
    }

    #[test]
    fn query_order_is_kept_unless_sorted() {
        assert_eq!(
            normalize_target("/x?b=1&a=2", &QueryRules::default()),
            "/x?b=1&a=2"
        );
        let sort = QueryRules {
            sort: true,
            drop: vec![],
        };
        assert_eq!(normalize_target("/x?b=1&a=2&a=1", &sort), "/x?a=2&a=1&b=1");
        let drop = QueryRules {
            sort: false,
            drop: vec!["utm_*".into(), "fbclid".into()],
        };
        assert_eq!(normalize_target("/x?utm_a=1&fbclid=2", &drop), "/x");
        // An empty query differs from none unless rules rewrite it.
        assert_eq!(normalize_target("/x?", &QueryRules::default()), "/x?");
    }

    #[test]
    fn vary_secondary_keys() {
        let mut response = HeaderMap::new();
        response.append("vary", "Accept-Encoding, accept-language".parse().unwrap());
        let names = vary_names(&response).unwrap();
        assert_eq!(names.len(), 2);
        let mut a = HeaderMap::new();
        a.append("accept-encoding", "gzip,  br".parse().unwrap());
        let mut b = HeaderMap::new();
        b.append("accept-encoding", "gzip".parse().unwrap());
        b.append("accept-encoding", "br".parse().unwrap());
        assert_eq!(secondary(&names, &a), secondary(&names, &b));
        assert_ne!(secondary(&names, &a), secondary(&names, &HeaderMap::new()));
        let mut c = HeaderMap::new();
        c.append("accept-encoding", "BR, gzip".parse().unwrap());
        assert_eq!(
            secondary(&names, &a),
            secondary(&names, &c),
            "order and case do not matter"
        );
        response.append("vary", "*".parse().unwrap());
        assert_eq!(vary_names(&response), None);
    }
}
