//! Per-route cache policy, selected by path patterns such as `/users/{id}` and
//! `/static/*`, with templates (`user:{id}`) filled from the matched parameters.
//!
//! ```
//! use revalidate_cache::routes::{Pattern, Template};
//!
//! let pattern = Pattern::parse("/users/{id}").unwrap();
//! let params = pattern.matches("/users/42").unwrap();
//! assert_eq!(Template::parse("user:{id}").unwrap().render(&params).unwrap(), "user:42");
//! assert!(pattern.matches("/users/42/posts").is_none());
//! assert!(Pattern::parse("/static/*").unwrap().matches("/static/css/site.css").is_some());
//! ```

use std::time::Duration;

use http::{HeaderName, Method};
use revalidate::CacheControl;

pub use crate::key::QueryRules;

/// Parameters captured by a pattern.
pub type Params = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A path pattern: literal segments, `{name}` for one segment, a final `*` for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
    rest: bool,
}

/// Why a pattern or template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Parses a pattern; it must start with `/`.
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        let Some(path) = source.strip_prefix('/') else {
            return Err(PatternError(format!(
                "route pattern {source:?} must start with '/'"
            )));
        };
        let mut segments = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(PatternError(format!(
                        "in {source:?}, '*' may only end a pattern"
                    )));
                }
                rest = true;
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(PatternError(format!(
                        "in {source:?}, parameter {{{name}}} needs a name of letters, digits or '_'"
                    )));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}', '*']) {
                return Err(PatternError(format!(
                    "in {source:?}, segment {part:?} mixes text with '{{', '}}' or '*'"
                )));
            } else {
                segments.push(Segment::Literal((*part).to_string()));
            }
        }
        Ok(Self {
            source: source.to_string(),
            segments,
            rest,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The text every path it matches starts with: its literal segments up to
    /// the first parameter (`/users/` for `/users/{id}`, `/` for `/{tenant}/x`).
    pub fn literal_prefix(&self) -> String {
        let mut prefix = String::from("/");
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => {
                    if !prefix.ends_with('/') {
                        prefix.push('/');
                    }
                    prefix.push_str(literal);
                }
                Segment::Param(_) => break,
            }
        }
        let open = self.rest || self.segments.iter().any(|s| matches!(s, Segment::Param(_)));
        if open && !prefix.ends_with('/') {
            prefix.push('/');
        }
        prefix
    }

    /// Names of the parameters it captures.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a path (without query), returning the captured parameters.
    pub fn matches(&self, path: &str) -> Option<Params> {
        let path = path.strip_prefix('/')?;
        let mut parts = path.split('/');
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        if self.rest {
            let remainder: Vec<&str> = parts.collect();
            params.push(("*".to_string(), remainder.join("/")));
            return Some(params);
        }
        parts.next().is_none().then_some(params)
    }
}

/// Text with `{name}` placeholders, e.g. `user:{id}` or `/users/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<(bool, String)>,
}

impl Template {
    /// Parses a template.
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| PatternError(format!("template {source:?} has an unclosed '{{'")))?;
            if open > 0 {
                pieces.push((false, rest[..open].to_string()));
            }
            pieces.push((true, rest[open + 1..close].to_string()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push((false, rest.to_string()));
        }
        Ok(Self {
            source: source.to_string(),
            pieces,
        })
    }

    /// Placeholder names used.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pieces
            .iter()
            .filter(|(p, _)| *p)
            .map(|(_, n)| n.as_str())
    }

    /// Fills the placeholders; `None` if one has no value.
    pub fn render(&self, params: &Params) -> Option<String> {
        let mut out = String::new();
        for (placeholder, text) in &self.pieces {
            if *placeholder {
                out.push_str(&params.iter().find(|(k, _)| k == text)?.1);
            } else {
                out.push_str(text);
            }
        }
        Some(out)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// What a route's writes invalidate.
#[derive(Debug, Clone, Default)]
pub struct InvalidationRule {
    /// Methods that trigger it (e.g. PUT, PATCH, DELETE).
    pub methods: Vec<Method>,
    /// Exact URLs to purge.
    pub urls: Vec<Template>,
    /// Prefixes to purge.
    pub prefixes: Vec<Template>,
    /// Tags to purge.
    pub tags: Vec<Template>,
}

/// How the cache treats one route.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Never look up or store (forward only).
    pub bypass: bool,
    /// Replaces the upstream's `Cache-Control` on every response of the route.
    pub cache_control: Option<CacheControl>,
    /// Freshness for responses that state none (like Varnish's `default_ttl`).
    pub default_ttl: Option<Duration>,
    /// Overrides the response's `stale-while-revalidate`.
    pub stale_while_revalidate: Option<Duration>,
    /// Overrides the response's `stale-if-error`.
    pub stale_if_error: Option<Duration>,
    /// Request headers added to the key.
    pub key_headers: Vec<HeaderName>,
    /// Cookie names whose values are added to the key.
    pub key_cookies: Vec<String>,
    /// Query normalization.
    pub query: QueryRules,
    /// A credential header: responses are keyed per credential (and may be
    /// `private`), so no user is ever served another's.
    pub user_scope: Option<HeaderName>,
    /// Tags given to every stored response of the route.
    pub tags: Vec<Template>,
    /// Store responses that set cookies (the cookies themselves are never stored).
    pub allow_set_cookie: bool,
    /// Whether the proxy adds a content ETag to responses that have none.
    pub add_etag: bool,
    /// What the [`KeyPart`] that a layer in front of the cache adds to the
    /// route's requests is made from (for `revalidate serve`, the version
    /// counter's template). The cache does not key by it, only compares it: a
    /// [`Cache::reconfigured`](crate::Cache::reconfigured) that changes it drops
    /// the route's entries, as for any other change of the key recipe.
    pub key_part: Option<String>,
}

impl RoutePolicy {
    /// The tags it gives a response stored under a route matched with `params`
    /// (the response's own `Surrogate-Key` and `Cache-Tag` are added to them).
    pub fn tags_for<'a>(&'a self, params: &'a Params) -> impl Iterator<Item = String> + 'a {
        self.tags.iter().filter_map(|t| t.render(params))
    }
}

/// A pattern with its policy and write invalidations.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path pattern.
    pub pattern: Pattern,
    /// Its policy.
    pub policy: RoutePolicy,
    /// What its writes invalidate.
    pub on_write: Vec<InvalidationRule>,
}

/// A part of the cache key that a layer in front of the cache adds to a request
/// (as a request extension): responses stored for one value are never served for
/// another. `revalidate serve` puts a route's version counter in it, so that a
/// bump keys every later request apart from what was stored before it.
///
/// ```
/// use revalidate_cache::KeyPart;
///
/// let mut request = http::Request::get("/users/1").body(()).unwrap();
/// request.extensions_mut().insert(KeyPart("v7".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPart(pub String);

/// Which route a target resolved to, by position among the routes (`None`: none,
/// the default policy applies). See [`Routes::resolve_id`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RouteId(pub(crate) Option<usize>);

impl RouteId {
    /// The route's position among the routes (`None`: the default policy).
    pub(crate) fn index(self) -> Option<usize> {
        self.0
    }
}

/// Routes in order; the first match wins, else the default policy applies.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
    default: RoutePolicy,
}

impl Routes {
    /// Routes with a fallback policy.
    pub fn new(routes: Vec<Route>, default: RoutePolicy) -> Self {
        Self { routes, default }
    }

    /// The route for a path and its parameters; `None` selects the default policy.
    pub fn resolve(&self, path: &str) -> (Option<&Route>, Params) {
        let (id, params) = self.resolve_id(path);
        (self.get(id), params)
    }

    /// The policy for a resolved route.
    pub fn policy<'a>(&'a self, route: Option<&'a Route>) -> &'a RoutePolicy {
        route.map_or(&self.default, |r| &r.policy)
    }

    /// The route for a request's path as it arrived (escapes of unreserved
    /// characters decoded, dot segments resolved first, as the cache does), and its
    /// parameters: what a layer in front of or behind the cache must use to agree
    /// with it on the route.
    pub fn resolve_request_path(&self, path: &str) -> (Option<&Route>, Params) {
        let mut normalized = String::with_capacity(path.len());
        crate::key::push_normalized_path(path, &mut normalized);
        self.resolve(&normalized)
    }

    /// [`Routes::resolve`], naming the route by its position, so that a request
    /// can carry it from one step to the next without borrowing the routes.
    pub(crate) fn resolve_id(&self, path: &str) -> (RouteId, Params) {
        for (index, route) in self.routes.iter().enumerate() {
            if let Some(params) = route.pattern.matches(path) {
                return (RouteId(Some(index)), params);
            }
        }
        (RouteId(None), Vec::new())
    }

    /// The route `id` names (`None`: the default policy applies).
    pub(crate) fn get(&self, id: RouteId) -> Option<&Route> {
        id.0.and_then(|index| self.routes.get(index))
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// How many routes there are (the default policy aside).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes (only the default policy).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// What a cache must drop when its routes become `next`: the paths of every
    /// route whose key recipe or tags differ (or that appears or goes), since
    /// their stored responses would be found under keys the new recipe does not
    /// make, or be missed by the new routes' invalidations. `None` when nothing
    /// changed that way. Paths are named by their pattern's literal prefix, so the
    /// purge may take more than it must, never less; a changed default policy or
    /// a new order of the routes takes everything.
    pub(crate) fn changed_keys(&self, next: &Routes) -> Option<crate::store::Purge> {
        let everything = || Some(crate::store::Purge::prefixes(["/"]));
        if !same_keys(&self.default, &next.default) {
            return everything();
        }
        let find = |routes: &'_ [Route], pattern: &Pattern| {
            routes.iter().position(|r| r.pattern == *pattern)
        };
        let kept_order = |from: &[Route], to: &[Route]| -> Vec<String> {
            from.iter()
                .filter(|r| find(to, &r.pattern).is_some())
                .map(|r| r.pattern.as_str().to_string())
                .collect()
        };
        if kept_order(&self.routes, &next.routes) != kept_order(&next.routes, &self.routes) {
            return everything();
        }
        let mut prefixes: Vec<String> = Vec::new();
        for route in &self.routes {
            let same = find(&next.routes, &route.pattern)
                .is_some_and(|at| same_keys(&route.policy, &next.routes[at].policy));
            if !same {
                prefixes.push(route.pattern.literal_prefix());
            }
        }
        for route in &next.routes {
            if find(&self.routes, &route.pattern).is_none() {
                prefixes.push(route.pattern.literal_prefix());
            }
        }
        prefixes.sort();
        prefixes.dedup();
        (!prefixes.is_empty()).then(|| crate::store::Purge::prefixes(prefixes))
    }
}

/// Whether two policies key and tag what they store alike (and both store).
fn same_keys(a: &RoutePolicy, b: &RoutePolicy) -> bool {
    a.bypass == b.bypass
        && a.key_headers == b.key_headers
        && a.key_cookies == b.key_cookies
        && a.query == b.query
        && a.user_scope == b.user_scope
        && a.tags == b.tags
        && a.key_part == b.key_part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern::parse("/users/{id}/posts/{post}").unwrap();
        assert_eq!(
            p.matches("/users/1/posts/2").unwrap(),
            vec![("id".into(), "1".into()), ("post".into(), "2".into())]
        );
        assert!(p.matches("/users//posts/2").is_none());
        assert!(p.matches("/users/1/posts").is_none());
        let root = Pattern::parse("/").unwrap();
        assert!(root.matches("/").is_some());
        let all = Pattern::parse("/*").unwrap();
        assert!(all.matches("/anything/at/all").is_some());
        for bad in ["users", "/a/*/b", "/a/{}", "/a/x{id}", "/a/{i-d}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_prefixes() {
        for (pattern, prefix) in [
            ("/users/{id}", "/users/"),
            ("/users", "/users"),
            ("/static/*", "/static/"),
            ("/{tenant}/x", "/"),
            ("/", "/"),
            ("/a/b/{c}/d", "/a/b/"),
        ] {
            assert_eq!(Pattern::parse(pattern).unwrap().literal_prefix(), prefix);
        }
    }

    fn route(pattern: &str, policy: RoutePolicy) -> Route {
        Route {
            pattern: Pattern::parse(pattern).unwrap(),
            policy,
            on_write: Vec::new(),
        }
    }

    #[test]
    fn changed_keys_name_the_routes_whose_recipe_changed() {
        let plain = RoutePolicy::default();
        let by_lang = RoutePolicy {
            key_headers: vec![HeaderName::from_static("accept-language")],
            ..RoutePolicy::default()
        };
        let tagged = RoutePolicy {
            tags: vec![Template::parse("user:{id}").unwrap()],
            ..RoutePolicy::default()
        };
        let old = Routes::new(
            vec![
                route("/users/{id}", plain.clone()),
                route("/posts", plain.clone()),
            ],
            plain.clone(),
        );
        let prefixes = |next: &Routes| old.changed_keys(next).map(|p| p.prefixes);

        // The same recipe with another TTL: nothing to drop.
        let ttl = RoutePolicy {
            default_ttl: Some(Duration::from_secs(9)),
            ..RoutePolicy::default()
        };
        let same = Routes::new(
            vec![route("/users/{id}", ttl), route("/posts", plain.clone())],
            plain.clone(),
        );
        assert_eq!(prefixes(&same), None);
        let versioned = RoutePolicy {
            key_part: Some("user:{id}".into()),
            ..RoutePolicy::default()
        };
        // A key header, tags, or a key part, on one route: that route's paths.
        for changed in [by_lang.clone(), tagged, versioned] {
            let next = Routes::new(
                vec![
                    route("/users/{id}", changed),
                    route("/posts", plain.clone()),
                ],
                plain.clone(),
            );
            assert_eq!(prefixes(&next), Some(vec!["/users/".to_string()]));
        }
        // A route gone and one new: both their paths.
        let swapped = Routes::new(
            vec![
                route("/users/{id}", plain.clone()),
                route("/tags/*", plain.clone()),
            ],
            plain.clone(),
        );
        assert_eq!(
            prefixes(&swapped),
            Some(vec!["/posts".to_string(), "/tags/".to_string()])
        );
        // Another order, or another default recipe: everything.
        let reordered = Routes::new(
            vec![
                route("/posts", plain.clone()),
                route("/users/{id}", plain.clone()),
            ],
            plain.clone(),
        );
        assert_eq!(prefixes(&reordered), Some(vec!["/".to_string()]));
        let default_changed = Routes::new(old.routes.clone(), by_lang);
        assert_eq!(prefixes(&default_changed), Some(vec!["/".to_string()]));
    }

    #[test]
    fn templates() {
        let t = Template::parse("/users/{id}?v={v}").unwrap();
        let params = vec![
            ("id".to_string(), "9".to_string()),
            ("v".to_string(), "2".to_string()),
        ];
        assert_eq!(t.render(&params).unwrap(), "/users/9?v=2");
        assert_eq!(t.render(&vec![]), None);
        assert!(Template::parse("user:{id").is_err());
    }
}
