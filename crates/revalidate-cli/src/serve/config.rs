//! The `revalidate serve` configuration file (TOML), checked whole at start: an
//! invalid file is refused with its path, line, column and the reason.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use http::{HeaderName, Method};
use revalidate::CacheControl;
use revalidate_cache::QueryRules;
use revalidate_cache::{
    CacheConfig, InvalidationRule, Pattern, Route, RoutePolicy, Routes, Template,
};
use serde::Deserialize;
use toml::Spanned;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Cache limits.
    #[serde(default)]
    pub cache: CacheSection,
    /// Limits on client connections.
    #[serde(default)]
    pub client: ClientSection,
    /// Upstream settings.
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// `[redis]`.
    #[serde(default)]
    pub redis: RedisSection,
    /// The policy of paths no route matches.
    #[serde(default)]
    pub defaults: RouteSection,
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Memory budget for stored responses (body + header bytes).
    pub max_bytes: ByteSize,
    /// Largest body stored.
    pub max_object_bytes: ByteSize,
    /// How long coalesced requests wait for the leader.
    #[serde(with = "humantime_serde")]
    pub coalesce_timeout: Duration,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::mib(256),
            max_object_bytes: ByteSize::mib(8),
            coalesce_timeout: Duration::from_secs(10),
        }
    }
}

/// The longest timeout, interval or lease the configuration takes.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest freshness or stale window a route sets: the largest delta-seconds
/// a cache has to keep (RFC 9111 §1.2.2), which `max-age` cannot exceed either.
const MAX_LIFETIME: Duration = Duration::from_secs(1 << 31);

/// Client connections served at once when `[client] max_connections` is unset and
/// the file limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// `[client]`: how long the proxy waits for its clients, and how many it serves.
///
/// The defaults are those of nginx or tighter, since the proxy fronts an API
/// rather than browsers on slow links.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// Time allowed for a request head, from its first byte (nginx
    /// `client_header_timeout`: 60 s).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a connection may sit idle between requests (nginx `keepalive_timeout`:
    /// 75 s).
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Longest pause between two pieces of a request body (nginx
    /// `client_body_timeout`: 60 s); the request then gets 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest time a response write may wait for the client to read (nginx
    /// `send_timeout`: 60 s); the connection is then closed.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Client connections served at once; beyond, new connections wait in the
    /// listen queue. Unset: as many as the process's file limit allows, up to
    /// [`DEFAULT_MAX_CONNECTIONS`]; set, lowered (with a warning) to what it allows.
    pub max_connections: Option<usize>,
    /// After SIGTERM, time allowed for requests in flight before the remaining
    /// connections are closed (`0s` closes them at once).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Forward request headers whose names contain `_`. Off by default, as in
    /// nginx (`underscores_in_headers`): CGI and WSGI servers read `X_Forwarded_Host`
    /// as `X-Forwarded-Host`, so a spelling the proxy does not know would reach the
    /// application.
    pub forward_underscored_headers: bool,
    /// Whether clients reach the proxy over TLS (`--tls-cert`), which forwarded
    /// requests state as `X-Forwarded-Proto: https`. Not read from the file.
    #[serde(skip)]
    pub tls: bool,
}

impl Default for ClientSection {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_connections: None,
            drain_timeout: Duration::from_secs(30),
            forward_underscored_headers: false,
            tls: false,
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// Time allowed for the upstream's response head.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time allowed to open a connection to the upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection to the upstream is kept: shorter than
    /// the upstream's own keep-alive timeout (Node and uvicorn: 5 s), so that the
    /// upstream never closes one under a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest pause between two pieces of the upstream's response body (nginx
    /// `proxy_read_timeout`: 60 s); the client's connection is then closed and
    /// nothing is stored.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Request bodies of idempotent requests up to this size are held, so that
    /// the request can be sent again when a pooled connection turns out closed.
    pub retry_body_bytes: ByteSize,
    /// The name this proxy gives itself in `Via` (RFC 9110 §7.6.3), on the
    /// requests it forwards and the responses it returns; empty: no `Via`.
    pub via: String,
    /// The upstream servers (`http://` or `https://`, each with an optional base
    /// path), when `--upstream` does not name them.
    pub servers: Vec<String>,
    /// How requests are spread over the servers.
    pub balance: Balance,
    /// Consecutive failures (no connection, no response head in time, a reset)
    /// after which a server is taken out of the rotation (nginx `max_fails`).
    pub max_fails: u32,
    /// How long a server that failed `max_fails` times stays out (nginx
    /// `fail_timeout`); it is then tried again.
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// For `https://` servers: a PEM file of authorities trusted besides the
    /// system's roots (`--upstream-ca`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Active health checks; none unless set.
    pub health: Option<HealthSection>,
}

/// How requests are spread over several upstream servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// To the server with the fewest requests in flight, taking turns among
    /// equals (Envoy's and nginx's `least_conn`): an API's slow requests (a
    /// report, a cold cache) pile up on one server under round robin, while this
    /// sends new work where it finishes.
    #[default]
    LeastOutstanding,
    /// Each server in turn.
    RoundRobin,
}

/// `[upstream.health]`: each server is asked `GET path` every `interval`; a
/// server whose answer is not 2xx or 3xx within `timeout` is out of the
/// rotation until one is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// The path asked, e.g. `/health`.
    pub path: String,
    /// Time between two checks of a server.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for an answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            path: "/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(4),
            body_timeout: Duration::from_secs(60),
            retry_body_bytes: ByteSize::kib(64),
            via: "revalidate".into(),
            servers: Vec::new(),
            balance: Balance::default(),
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            ca_file: None,
            health: None,
        }
    }
}

/// `[[routes]]` and `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The path pattern (`/users/{id}`, `/static/*`); not used in `[defaults]`.
    pub path: Option<Spanned<String>>,
    /// Forward only, never cache.
    #[serde(default)]
    pub bypass: bool,
    /// Replaces the upstream's Cache-Control.
    pub cache_control: Option<Spanned<String>>,
    /// Freshness for responses that state none.
    #[serde(default, with = "humantime_serde::option")]
    pub default_ttl: Option<Duration>,
    /// Overrides stale-while-revalidate.
    #[serde(default, with = "humantime_serde::option")]
    pub stale_while_revalidate: Option<Duration>,
    /// Overrides stale-if-error.
    #[serde(default, with = "humantime_serde::option")]
    pub stale_if_error: Option<Duration>,
    /// Add a content ETag where the upstream sends none.
    #[serde(default)]
    pub add_etag: bool,
    /// Request headers added to the key.
    #[serde(default)]
    pub key_headers: Vec<Spanned<String>>,
    /// Cookie names added to the key.
    #[serde(default)]
    pub key_cookies: Vec<String>,
    /// Query normalization.
    #[serde(default)]
    pub query: QuerySection,
    /// Credential header for user-scoped keys (e.g. "authorization").
    pub user_scope: Option<Spanned<String>>,
    /// Tags for every stored response, templated from path parameters.
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    /// Store responses that set cookies (without the cookies).
    #[serde(default)]
    pub allow_set_cookie: bool,
    /// What writes to this route invalidate.
    #[serde(default)]
    pub invalidate: Vec<InvalidateSection>,
    /// A version counter in Redis (`"user:{id}"`) that the app bumps on every
    /// write: the proxy answers conditional requests from it and keys what it
    /// stores by it.
    pub version: Option<Spanned<String>>,
}

/// `query = { sort = true, drop = ["utm_*"] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySection {
    /// Sort parameters.
    #[serde(default)]
    pub sort: bool,
    /// Parameters to drop (`utm_*` matches a prefix).
    #[serde(default)]
    pub drop: Vec<String>,
}

/// `[[routes.invalidate]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateSection {
    /// Methods that trigger it; empty means every unsafe method.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// URLs to purge.
    #[serde(default)]
    pub urls: Vec<Spanned<String>>,
    /// Prefixes to purge.
    #[serde(default)]
    pub prefixes: Vec<Spanned<String>>,
    /// Tags to purge.
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
}

/// `[redis]`: Redis as a tier shared by every instance (off unless `url` or
/// `cluster` is set, here or with `--redis` / `--redis-cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://host:port[/db]`: one server.
    pub url: Option<String>,
    /// `["redis://host:port", …]`: nodes of a Redis Cluster (any of them).
    pub cluster: Vec<String>,
    /// For `rediss://`: a PEM file of the authorities to trust instead of the
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key, so that several services can share one Redis.
    pub namespace: String,
    /// The longest a Redis command may take before it counts as failed (the
    /// request then goes on without Redis).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an instance cut off from the invalidation bus keeps serving its
    /// local tier, and so (with a quarter more) the longest a purge waits for an
    /// instance that does not acknowledge it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            cluster: Vec::new(),
            ca_file: None,
            namespace: "revalidate:".into(),
            timeout: Duration::from_millis(50),
            lease: Duration::from_millis(500),
        }
    }
}

/// Whether `url` names a Redis this build can reach.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Err(format!("{url:?} is not a redis:// or rediss:// URL"));
    }
    redis_url_parses(url)
}

fn redis_url_parses(url: &str) -> Result<(), String> {
    revalidate_cache::store::RedisConfig::new(url)
        .check()
        .map_err(|e| format!("{url:?}: {e}"))
}

impl RedisSection {
    /// Whether Redis is configured at all.
    pub fn is_set(&self) -> bool {
        self.url.is_some() || !self.cluster.is_empty()
    }
}

/// A configuration ready to run.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Cache limits.
    pub cache: CacheConfig,
    /// Memory budget.
    pub max_bytes: u64,
    /// Limits on client connections.
    pub client: ClientSection,
    /// Upstream timeouts and retries.
    pub upstream: UpstreamSection,
    /// The shared tier, if any.
    pub redis: RedisSection,
    /// Routes.
    pub routes: Routes,
    /// The version counter of each versioned route, by its path pattern.
    pub versions: HashMap<String, Template>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        parse("", "<defaults>").expect("the empty configuration is valid")
    }
}

/// Why a configuration was refused: `file:line:column: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub reason: String,
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 1,
        column: 1,
        reason: format!("cannot read the file: {e}"),
    })?;
    parse(&text, &file)
}

/// Parses and checks configuration text.
pub fn parse(text: &str, file: &str) -> Result<ServeConfig, ConfigError> {
    let error_at = |offset: usize, reason: String| {
        let (line, column) = position(text, offset);
        ConfigError {
            file: file.to_string(),
            line,
            column,
            reason,
        }
    };
    let raw: FileConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        error_at(offset, e.message().trim().to_string())
    })?;
    if raw.defaults.path.is_some() {
        let offset = raw.defaults.path.as_ref().map_or(0, |p| p.span().start);
        return Err(error_at(
            offset,
            "[defaults] applies to every unmatched path and takes no `path`".into(),
        ));
    }
    // Every wait and interval, bounded below (a zero timeout fails every request,
    // a zero interval stops the health checker) and above: deadlines are computed
    // by adding to the clock, and a bound keeps every sum in range.
    let health = raw.upstream.health.as_ref();
    for (name, value) in [
        ("[cache] coalesce_timeout", Some(raw.cache.coalesce_timeout)),
        ("[client] header_timeout", Some(raw.client.header_timeout)),
        (
            "[client] keepalive_timeout",
            Some(raw.client.keepalive_timeout),
        ),
        ("[client] body_timeout", Some(raw.client.body_timeout)),
        ("[client] send_timeout", Some(raw.client.send_timeout)),
        ("[upstream] timeout", Some(raw.upstream.timeout)),
        (
            "[upstream] connect_timeout",
            Some(raw.upstream.connect_timeout),
        ),
        ("[upstream] idle_timeout", Some(raw.upstream.idle_timeout)),
        ("[upstream] body_timeout", Some(raw.upstream.body_timeout)),
        ("[upstream] fail_timeout", Some(raw.upstream.fail_timeout)),
        ("[upstream.health] interval", health.map(|h| h.interval)),
        ("[upstream.health] timeout", health.map(|h| h.timeout)),
        ("[redis] timeout", Some(raw.redis.timeout)),
        ("[redis] lease", Some(raw.redis.lease)),
    ] {
        let Some(value) = value else { continue };
        if value.is_zero() {
            return Err(error_at(0, format!("{name} must be longer than 0s")));
        }
        if value > MAX_WAIT {
            return Err(error_at(0, format!("{name} must be at most 365d")));
        }
    }
    if raw.client.drain_timeout > MAX_WAIT {
        return Err(error_at(
            0,
            "[client] drain_timeout must be at most 365d".into(),
        ));
    }
    if raw.upstream.max_fails == 0 {
        return Err(error_at(
            0,
            "[upstream] max_fails must be at least 1".into(),
        ));
    }
    if let Some(health) = &raw.upstream.health
        && (!health.path.starts_with('/')
            || health.path.parse::<http::uri::PathAndQuery>().is_err())
    {
        return Err(error_at(
            0,
            format!(
                "[upstream.health] path {:?} must be a path starting with '/' (percent-encode spaces and the like)",
                health.path
            ),
        ));
    }
    for server in &raw.upstream.servers {
        super::balance::Server::parse(server)
            .map_err(|e| error_at(0, format!("[upstream] servers: {e}")))?;
    }
    if raw.client.max_connections == Some(0) {
        return Err(error_at(
            0,
            "[client] max_connections must be at least 1".into(),
        ));
    }
    if let Some(url) = &raw.redis.url {
        check_redis_url(url).map_err(|reason| error_at(0, format!("[redis] url: {reason}")))?;
    }
    for url in &raw.redis.cluster {
        check_redis_url(url).map_err(|reason| error_at(0, format!("[redis] cluster: {reason}")))?;
    }
    if !raw.upstream.via.is_empty()
        && !raw
            .upstream
            .via
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b))
    {
        return Err(error_at(
            0,
            format!(
                "[upstream] via {:?} must be a token or host[:port] (RFC 9110 §7.6.3)",
                raw.upstream.via
            ),
        ));
    }
    if raw.redis.namespace.contains(['{', '}']) {
        return Err(error_at(
            0,
            "[redis] namespace may not contain { or } (they would make one hash tag of every key)"
                .into(),
        ));
    }
    if raw.redis.url.is_some() && !raw.redis.cluster.is_empty() {
        return Err(error_at(
            0,
            "[redis] takes `url` (one server) or `cluster` (its nodes), not both".into(),
        ));
    }
    if raw.cache.max_object_bytes.as_u64() > raw.cache.max_bytes.as_u64() {
        return Err(error_at(
            0,
            "[cache] max_object_bytes cannot exceed max_bytes".into(),
        ));
    }
    let default = policy(&raw.defaults, None, &error_at)?;
    let mut routes = Vec::new();
    let mut versions = HashMap::new();
    if let Some(version) = &raw.defaults.version {
        return Err(error_at(
            version.span().start,
            "[defaults] takes no `version`: a version belongs to a route's resources".into(),
        ));
    }
    for section in &raw.routes {
        let Some(path) = &section.path else {
            return Err(error_at(
                0,
                "every [[routes]] needs a `path`, such as \"/users/{id}\"".into(),
            ));
        };
        let pattern =
            Pattern::parse(path.get_ref()).map_err(|e| error_at(path.span().start, e.0))?;
        let policy = policy(section, Some(&pattern), &error_at)?;
        if let Some(version) = &section.version {
            let template = template(version, Some(&pattern), &error_at)?;
            versions
                .entry(pattern.as_str().to_string())
                .or_insert(template);
        }
        let on_write = section
            .invalidate
            .iter()
            .map(|rule| invalidation(rule, &pattern, &error_at))
            .collect::<Result<_, _>>()?;
        routes.push(Route {
            pattern,
            policy,
            on_write,
        });
    }
    Ok(ServeConfig {
        cache: CacheConfig {
            max_object_bytes: usize::try_from(raw.cache.max_object_bytes.as_u64())
                .unwrap_or(usize::MAX),
            coalesce_timeout: raw.cache.coalesce_timeout,
            invalidation_horizon: raw.upstream.timeout * 2 + Duration::from_secs(1),
            ..CacheConfig::default()
        },
        max_bytes: raw.cache.max_bytes.as_u64(),
        client: raw.client,
        upstream: raw.upstream,
        redis: raw.redis,
        routes: Routes::new(routes, default),
        versions,
    })
}

type ErrorAt<'a> = dyn Fn(usize, String) -> ConfigError + 'a;

fn header_name(value: &Spanned<String>, error_at: &ErrorAt<'_>) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(value.get_ref().as_bytes()).map_err(|_| {
        error_at(
            value.span().start,
            format!("{:?} is not a header name", value.get_ref()),
        )
    })
}

fn template(
    value: &Spanned<String>,
    pattern: Option<&Pattern>,
    error_at: &ErrorAt<'_>,
) -> Result<Template, ConfigError> {
    let parsed = Template::parse(value.get_ref()).map_err(|e| error_at(value.span().start, e.0))?;
    for name in parsed.names() {
        let known = pattern.is_some_and(|p| {
            p.param_names().any(|n| n == name) || (name == "*" && p.as_str().ends_with('*'))
        });
        if !known {
            return Err(error_at(
                value.span().start,
                format!(
                    "{{{name}}} in {:?} is not a parameter of the route's path",
                    value.get_ref()
                ),
            ));
        }
    }
    Ok(parsed)
}

fn policy(
    section: &RouteSection,
    pattern: Option<&Pattern>,
    error_at: &ErrorAt<'_>,
) -> Result<RoutePolicy, ConfigError> {
    let cache_control = match &section.cache_control {
        Some(value) => {
            let cc = CacheControl::parse_str(value.get_ref());
            if cc.is_empty() {
                return Err(error_at(
                    value.span().start,
                    format!("cache_control {:?} has no known directive", value.get_ref()),
                ));
            }
            Some(cc)
        }
        None => None,
    };
    for (name, value) in [
        ("default_ttl", section.default_ttl),
        ("stale_while_revalidate", section.stale_while_revalidate),
        ("stale_if_error", section.stale_if_error),
    ] {
        if value.is_some_and(|v| v > MAX_LIFETIME) {
            let at = section.path.as_ref().map_or(0, |p| p.span().start);
            return Err(error_at(
                at,
                format!("{name} must be at most 2147483648s (RFC 9111's longest delta-seconds)"),
            ));
        }
    }
    Ok(RoutePolicy {
        bypass: section.bypass,
        cache_control,
        default_ttl: section.default_ttl,
        stale_while_revalidate: section.stale_while_revalidate,
        stale_if_error: section.stale_if_error,
        key_headers: section
            .key_headers
            .iter()
            .map(|h| header_name(h, error_at))
            .collect::<Result<_, _>>()?,
        key_cookies: section.key_cookies.clone(),
        query: QueryRules {
            sort: section.query.sort,
            drop: section.query.drop.clone(),
        },
        user_scope: section
            .user_scope
            .as_ref()
            .map(|h| header_name(h, error_at))
            .transpose()?,
        tags: section
            .tags
            .iter()
            .map(|t| template(t, pattern, error_at))
            .collect::<Result<_, _>>()?,
        allow_set_cookie: section.allow_set_cookie,
        add_etag: section.add_etag,
        // The version counter is part of the key (`versioned`): a new template
        // must drop what was stored under the old one.
        key_part: section.version.as_ref().map(|v| v.get_ref().clone()),
    })
}

fn invalidation(
    section: &InvalidateSection,
    pattern: &Pattern,
    error_at: &ErrorAt<'_>,
) -> Result<InvalidationRule, ConfigError> {
    let methods = section
        .methods
        .iter()
        .map(|m| {
            let method =
                Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                    error_at(m.span().start, format!("{:?} is not a method", m.get_ref()))
                })?;
            if method == Method::GET || method == Method::HEAD {
                return Err(error_at(
                    m.span().start,
                    format!("{method} is safe: only writes invalidate"),
                ));
            }
            Ok(method)
        })
        .collect::<Result<_, _>>()?;
    let templates = |values: &[Spanned<String>]| -> Result<Vec<Template>, ConfigError> {
        values
            .iter()
            .map(|t| template(t, Some(pattern), error_at))
            .collect()
    };
    Ok(InvalidationRule {
        methods,
        urls: templates(&section.urls)?,
        prefixes: templates(&section.prefixes)?,
        tags: templates(&section.tags)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotated_example_is_valid() {
        let text = include_str!("../../../../revalidate.example.toml");
        let config = parse(text, "revalidate.example.toml").unwrap();
        assert!(config.routes.iter().count() >= 3);
    }

    /// Every TOML example in the README and the guides parses.
    #[test]
    fn the_documented_examples_are_valid() {
        for (file, text) in [
            ("README.md", include_str!("../../../../README.md")),
            (
                "docs/configuration.md",
                include_str!("../../../../docs/configuration.md"),
            ),
            (
                "docs/shared-tier.md",
                include_str!("../../../../docs/shared-tier.md"),
            ),
            (
                "docs/proxy-guide.md",
                include_str!("../../../../docs/proxy-guide.md"),
            ),
        ] {
            let blocks: Vec<&str> = text
                .split("```toml\n")
                .skip(1)
                .filter_map(|rest| rest.split("```").next())
                .collect();
            assert!(!blocks.is_empty(), "{file} shows a configuration");
            for block in blocks {
                if let Err(e) = parse(block, file) {
                    panic!("{file}: {e}\n{block}");
                }
            }
        }
    }

    fn error(text: &str) -> ConfigError {
        parse(text, "test.toml").unwrap_err()
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        let e = error("[cache]\nmax_bytes = \"lots\"\n");
        assert_eq!((e.line, e.file.as_str()), (2, "test.toml"));
        let e = error("[[routes]]\npath = \"users\"\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("must start with '/'"), "{e}");
        let e = error("[[routes]]\npath = \"/users/{id}\"\ntags = [\"user:{uid}\"]\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("{uid}"), "{e}");
        let e = error("[[routes]]\npath = \"/a\"\ncolour = \"blue\"\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("unknown field"), "{e}");
        let e = error("[[routes]]\npath = \"/a\"\n[[routes.invalidate]]\nmethods = [\"GET\"]\n");
        assert_eq!(e.line, 4);
        let e = error("[[routes]]\npath = \"/a\"\nkey_headers = [\"bad header\"]\n");
        assert_eq!(e.line, 3);
        let e = error("[upstream]\ntimeout = \"soon\"\n");
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
    }

    /// A health check's path that is not one would make every probe fail, and
    /// every server look down.
    #[test]
    fn a_health_path_must_be_a_path() {
        for bad in ["health", "/health check", "/health\\t"] {
            let e = error(&format!("[upstream.health]\npath = \"{bad}\"\n"));
            assert!(e.reason.contains("must be a path"), "{bad}: {e}");
        }
        assert!(
            parse(
                "[upstream.health]\npath = \"/health%20check?full=1\"\n",
                "t"
            )
            .is_ok()
        );
    }

    /// A wait of zero, or one so long that a deadline computed from it would not
    /// fit the clock, is refused for every setting instead of failing (or
    /// panicking) at run time.
    #[test]
    fn every_wait_is_bounded_on_both_sides() {
        let longest = "10000000000000000000s";
        for (section, name) in [
            ("cache", "coalesce_timeout"),
            ("client", "header_timeout"),
            ("client", "keepalive_timeout"),
            ("client", "body_timeout"),
            ("client", "send_timeout"),
            ("upstream", "timeout"),
            ("upstream", "connect_timeout"),
            ("upstream", "idle_timeout"),
            ("upstream", "body_timeout"),
            ("upstream", "fail_timeout"),
            ("upstream.health", "interval"),
            ("upstream.health", "timeout"),
            ("redis", "timeout"),
            ("redis", "lease"),
        ] {
            for (value, reason) in [("0s", "longer than 0s"), (longest, "at most 365d")] {
                let e = error(&format!("[{section}]\n{name} = \"{value}\"\n"));
                assert!(e.reason.contains(reason), "{section} {name} = {value}: {e}");
            }
            let text = format!("[{section}]\n{name} = \"365d\"\n");
            assert!(parse(&text, "t").is_ok(), "{text}");
        }
        let e = error(&format!("[client]\ndrain_timeout = \"{longest}\"\n"));
        assert!(e.reason.contains("at most 365d"), "{e}");
        assert!(parse("[client]\ndrain_timeout = \"0s\"\n", "t").is_ok());
        for name in ["default_ttl", "stale_while_revalidate", "stale_if_error"] {
            let e = error(&format!(
                "[[routes]]\npath = \"/a\"\n{name} = \"{longest}\"\n"
            ));
            assert!(e.reason.contains("2147483648s"), "{name}: {e}");
            assert_eq!(e.line, 2, "{name}");
            let text = format!("[defaults]\n{name} = \"68y\"\n");
            assert!(parse(&text, "t").is_ok(), "{text}");
        }
    }
}
