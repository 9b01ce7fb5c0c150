//! What the cache does with one request, told by the steps it takes itself: the
//! route, the key, the tags and the purges come from [`prepare`](super::prepare),
//! the primary key and the write invalidation of the service, so an explanation
//! cannot drift from what the cache does.

use http::{HeaderMap, HeaderName, Method, Request, Uri};

use crate::key::secondary;
use crate::routes::{Params, RouteId, Routes};
use crate::store::Purge;

use super::invalidate::{invalidates, normalized_purge, write_purge};
use super::{Bypass, Prepared, prepare};

/// Whether, and under which key, the cache looks a request up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// A GET or HEAD looked up, and stored, under this primary key: the host
    /// (lowercased) and the normalized target, then one line per key addition,
    /// each after a `\n`: `h:name=value` (a key header, values joined by `,`),
    /// `c:name=value` (a key cookie), `u:` and a 128-bit hash of the user scope's
    /// credential, `x:` and a [`KeyPart`](crate::KeyPart) (a version).
    Keyed(String),
    /// Neither GET nor HEAD: forwarded, and a success purges what
    /// [`Explanation::purge_on_write`] says.
    Write,
    /// The route says `bypass`: forwarded, never looked up or stored.
    RouteBypass,
    /// The host (`Host`, or the target's authority) is not `host[:port]`: no key
    /// is made, the request is forwarded and its response not stored.
    InvalidHost,
    /// The target is not a path (`*`, as in `OPTIONS *`): no key is made, the
    /// request is forwarded and its response not stored.
    NotAPath,
}

/// What the cache does with one request: see [`Routes::explain`].
#[derive(Debug, Clone)]
pub struct Explanation<'a> {
    routes: &'a Routes,
    route: RouteId,
    pattern: Option<String>,
    params: Params,
    uri: Uri,
    headers: HeaderMap,
    decision: Decision,
    tags: Vec<String>,
}

impl Routes {
    /// What a cache with these routes does with `request`: which route it takes,
    /// the target it forwards and keys, whether and under which key it is looked
    /// up, the tags a stored response gets, and what a write to it purges. The
    /// same functions the cache runs compute it. A [`KeyPart`](crate::KeyPart) in
    /// the request's extensions is part of the key, as in the cache.
    ///
    /// ```
    /// use revalidate_cache::{Decision, Pattern, QueryRules, Route, RoutePolicy, Routes, Template};
    ///
    /// let policy = RoutePolicy {
    ///     query: QueryRules { sort: true, drop: vec!["utm_*".into()] },
    ///     tags: vec![Template::parse("user:{id}").unwrap()],
    ///     ..RoutePolicy::default()
    /// };
    /// let route = Route { pattern: Pattern::parse("/users/{id}").unwrap(), policy, on_write: vec![] };
    /// let routes = Routes::new(vec![route], RoutePolicy::default());
    /// let request = http::Request::get("http://API.test/users/%34%32?b=2&utm_x=1&a=1").body(()).unwrap();
    /// let explained = routes.explain(request);
    /// assert_eq!(explained.pattern(), Some("/users/{id}"));
    /// assert_eq!(explained.target(), "/users/42?a=1&b=2");
    /// assert_eq!(explained.decision(), &Decision::Keyed("api.test/users/42?a=1&b=2".into()));
    /// assert_eq!(explained.tags(), ["user:42"]);
    /// ```
    pub fn explain<B: Default>(&self, request: Request<B>) -> Explanation<'_> {
        let (route, params, uri, headers, decision) = match prepare(self, request) {
            Prepared::Write {
                parts,
                route,
                params,
                ..
            } => (route, params, parts.uri, parts.headers, Decision::Write),
            Prepared::Bypass {
                request,
                why,
                route,
                params,
            } => {
                let decision = match why {
                    Bypass::InvalidHost => Decision::InvalidHost,
                    Bypass::NotAPath => Decision::NotAPath,
                    Bypass::Route => Decision::RouteBypass,
                };
                let (parts, _) = request.into_parts();
                (route, params, parts.uri, parts.headers, decision)
            }
            Prepared::Read(read) => {
                let decision = Decision::Keyed(read.primary.key);
                (
                    read.route,
                    read.params,
                    read.head.uri,
                    read.head.headers,
                    decision,
                )
            }
        };
        let tags = self
            .policy(self.get(route))
            .tags_for(&params)
            .collect::<Vec<_>>();
        Explanation {
            routes: self,
            route,
            pattern: self.get(route).map(|r| r.pattern.as_str().to_string()),
            params,
            uri,
            headers,
            decision,
            tags,
        }
    }
}

impl Explanation<'_> {
    /// The position of the matched route among [`Routes::iter`]; `None`: no route
    /// matches, the default policy applies.
    pub fn route_index(&self) -> Option<usize> {
        self.route.0
    }

    /// The matched route's pattern.
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_deref()
    }

    /// The parameters the pattern captured (`*` for what a final `*` matched).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The normalized target (path and query): what is forwarded upstream, and
    /// what URL and prefix purges name.
    pub fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }

    /// Whether, and under which key, it is looked up.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The primary key, when it is looked up.
    pub fn key(&self) -> Option<&str> {
        match &self.decision {
            Decision::Keyed(key) => Some(key),
            _ => None,
        }
    }

    /// The route's tags, rendered with the parameters; a stored response gets
    /// these and those of its own `Surrogate-Key` and `Cache-Tag` fields.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The secondary key of the request for a response whose `Vary` names
    /// `vary`: the request's value of each field, normalized as the cache
    /// compares them (lines combined; `Accept-Encoding` and `Accept-Language`
    /// members lowercased and sorted); `None` for a field it does not carry.
    pub fn secondary(&self, vary: &[HeaderName]) -> Vec<(HeaderName, Option<String>)> {
        let secondary = secondary(vary, &self.headers);
        secondary.names.into_iter().zip(secondary.values).collect()
    }

    /// What a successful `method` on this URL purges (paths normalized as the
    /// store holds them), besides the same-origin `Location` and
    /// `Content-Location` of its response; `None` for a method that purges
    /// nothing (GET, HEAD, OPTIONS, TRACE).
    pub fn purge_on_write(&self, method: &Method) -> Option<Purge> {
        if !invalidates(method) {
            return None;
        }
        let route = self.routes.get(self.route);
        let purge = write_purge(self.routes, route, &self.params, method, &self.uri);
        Some(normalized_purge(self.routes, &purge).into_owned())
    }
}
