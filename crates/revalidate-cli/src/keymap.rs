//! The key and invalidation map of a configuration: `revalidate routes` (how each
//! route keys, keeps, tags and purges) and `revalidate explain` (what the cache
//! does with one request). `explain` asks [`Routes::explain`], which runs the
//! cache's own steps, so what it prints is the key the proxy uses.
//!
//! ```
//! use revalidate_cli::keymap::{Asked, explain_text};
//! use revalidate_cli::serve::parse;
//!
//! let config = parse("[[routes]]\npath = \"/users/{id}\"\ntags = [\"user:{id}\"]\n", "x.toml").unwrap();
//! let asked = Asked::parse("GET", "http://api.test/users/7", &[], None).unwrap();
//! let text = explain_text(&config, &asked);
//! assert!(text.contains("api.test/users/7"), "{text}");
//! assert!(text.contains("user:7"), "{text}");
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use revalidate_cache::{Decision, Explanation, InvalidationRule, Purge, RoutePolicy, Template};
use serde_json::{Value, json};

use crate::serve::ServeConfig;
use crate::serve::request_check::refusal;

/// Width the text output keeps to.
const WIDTH: usize = 100;
/// Width of the label column.
const LABEL: usize = 12;

/// Methods whose purges `explain` shows for a read, besides those the route's
/// rules name.
const WRITES: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// What every successful write purges besides its route's rules.
const ALWAYS: &str = "Every successful write (any method but GET, HEAD, OPTIONS, TRACE) also \
                      purges its own URL and the same-origin URLs of its response's Location \
                      and Content-Location.";

/// Appends `label` and `value`, the value wrapped at [`WIDTH`] under itself.
fn field(out: &mut String, indent: usize, label: &str, value: &str) {
    let start = indent + LABEL;
    let mut line = format!("{:indent$}{label:<w$}", "", w = LABEL);
    if line.len() > start {
        line.push(' ');
    }
    let mut first = true;
    for word in value.split(' ') {
        let fits = line.len() + 1 + word.len() <= WIDTH;
        if !first && !fits {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(start);
        } else if !first {
            line.push(' ');
        }
        line.push_str(word);
        first = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Seconds, whole when they are.
fn seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

fn template_strings(templates: &[Template]) -> Vec<&str> {
    templates.iter().map(Template::as_str).collect()
}

/// How a policy builds the key, in words.
fn key_recipe(policy: &RoutePolicy, version: Option<&Template>) -> String {
    let mut parts = vec!["host".to_string(), "normalized path".to_string()];
    let query = &policy.query;
    parts.push(match (query.sort, query.drop.is_empty()) {
        (false, true) => "query as sent".into(),
        (true, true) => "query sorted".into(),
        (false, false) => format!("query dropping {}", list(&query.drop)),
        (true, false) => format!("query sorted, dropping {}", list(&query.drop)),
    });
    for name in &policy.key_headers {
        parts.push(format!("header {name}"));
    }
    for cookie in &policy.key_cookies {
        parts.push(format!("cookie {cookie}"));
    }
    if let Some(header) = &policy.user_scope {
        parts.push(format!("user scope (a hash of {header})"));
    }
    if let Some(version) = version {
        parts.push(format!("version counter {}", version.as_str()));
    }
    parts.join(", ")
}

/// The policy's overrides of freshness, in words (`None`: the upstream's own).
fn freshness(policy: &RoutePolicy) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(cc) = &policy.cache_control {
        parts.push(format!("cache_control \"{cc}\""));
    }
    for (name, value) in [
        ("default_ttl", policy.default_ttl),
        ("stale_while_revalidate", policy.stale_while_revalidate),
        ("stale_if_error", policy.stale_if_error),
    ] {
        if let Some(value) = value {
            parts.push(format!("{name} {}", duration(value)));
        }
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn response_options(policy: &RoutePolicy) -> Option<String> {
    let mut parts = Vec::new();
    if policy.add_etag {
        parts.push("add_etag");
    }
    if policy.allow_set_cookie {
        parts.push("allow_set_cookie");
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn strings(items: &[String]) -> Vec<&str> {
    items.iter().map(String::as_str).collect()
}

/// `urls a, b; prefixes c; tags d`, for what is not empty.
fn purge_words(urls: &[&str], prefixes: &[&str], tags: &[&str]) -> String {
    let mut parts = Vec::new();
    for (name, items) in [("urls", urls), ("prefixes", prefixes), ("tags", tags)] {
        if !items.is_empty() {
            parts.push(format!("{name} {}", list(items)));
        }
    }
    if parts.is_empty() {
        "nothing more".into()
    } else {
        parts.join("; ")
    }
}

fn rule_words(rule: &InvalidationRule) -> String {
    let methods = if rule.methods.is_empty() {
        "every write".to_string()
    } else {
        list(&rule.methods.iter().map(Method::as_str).collect::<Vec<_>>())
    };
    let words = purge_words(
        &template_strings(&rule.urls),
        &template_strings(&rule.prefixes),
        &template_strings(&rule.tags),
    );
    format!("{methods} -> {words}")
}

fn policy_text(
    out: &mut String,
    policy: &RoutePolicy,
    version: Option<&Template>,
    on_write: &[InvalidationRule],
) {
    if policy.bypass {
        field(
            out,
            2,
            "bypass",
            "forwarded as is: never looked up or stored",
        );
    } else {
        field(out, 2, "key", &key_recipe(policy, version));
        field(
            out,
            2,
            "freshness",
            &freshness(policy).unwrap_or_else(|| "as the upstream's Cache-Control says".into()),
        );
        if let Some(options) = response_options(policy) {
            field(out, 2, "response", &options);
        }
        if !policy.tags.is_empty() {
            field(out, 2, "tags", &list(&template_strings(&policy.tags)));
        }
    }
    for (i, rule) in on_write.iter().enumerate() {
        field(
            out,
            2,
            if i == 0 { "on write" } else { "" },
            &rule_words(rule),
        );
    }
}

/// `revalidate routes`: each route in match order, then `[defaults]`.
pub fn routes_text(config: &ServeConfig) -> String {
    let mut out = String::new();
    for (i, route) in config.routes.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", i + 1, route.pattern.as_str());
        let version = config.versions.get(route.pattern.as_str());
        policy_text(&mut out, &route.policy, version, &route.on_write);
        out.push('\n');
    }
    out.push_str("defaults (every path no route matches)\n");
    policy_text(&mut out, config.routes.policy(None), None, &[]);
    out.push('\n');
    field(&mut out, 0, "note", ALWAYS);
    out
}

fn policy_json(policy: &RoutePolicy, version: Option<&Template>) -> Value {
    json!({
        "key": {
            "query": { "sort": policy.query.sort, "drop": policy.query.drop },
            "headers": policy.key_headers.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
            "cookies": policy.key_cookies,
            "user_scope": policy.user_scope.as_ref().map(HeaderName::as_str),
            "version": version.map(Template::as_str),
        },
        "bypass": policy.bypass,
        "cache_control": policy.cache_control.as_ref().map(ToString::to_string),
        "default_ttl": policy.default_ttl.map(seconds),
        "stale_while_revalidate": policy.stale_while_revalidate.map(seconds),
        "stale_if_error": policy.stale_if_error.map(seconds),
        "add_etag": policy.add_etag,
        "allow_set_cookie": policy.allow_set_cookie,
        "tags": template_strings(&policy.tags),
    })
}

/// `revalidate routes --json` (its shape is in docs/key-map.md).
pub fn routes_json(config: &ServeConfig) -> Value {
    let routes: Vec<Value> = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let version = config.versions.get(route.pattern.as_str());
            let mut value = json!({
                "number": i + 1,
                "pattern": route.pattern.as_str(),
                "invalidate": route.on_write.iter().map(|rule| json!({
                    "methods": rule.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                    "urls": template_strings(&rule.urls),
                    "prefixes": template_strings(&rule.prefixes),
                    "tags": template_strings(&rule.tags),
                })).collect::<Vec<_>>(),
            });
            merge(&mut value, policy_json(&route.policy, version));
            value
        })
        .collect();
    json!({
        "routes": routes,
        "defaults": policy_json(config.routes.policy(None), None),
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// One request to explain, checked.
#[derive(Debug)]
pub struct Asked {
    request: Request<Empty<Bytes>>,
    url: String,
    vary: Vec<HeaderName>,
}

impl Asked {
    /// The request `curl -X method -H header… url` sends: in origin form, with
    /// `Host` from the URL unless a header sets it. `vary` is a response's
    /// `Vary` (comma-separated names), for the secondary key. The error is one
    /// line that says what is wrong.
    pub fn parse(
        method: &str,
        url: &str,
        headers: &[String],
        vary: Option<&str>,
    ) -> Result<Self, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{method:?} is not an HTTP method"))?;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let http = matches!(uri.scheme_str(), Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
        let Some(authority) = uri.authority().filter(|_| http) else {
            return Err(format!(
                "{url:?} is not an http:// or https:// URL, such as http://api.test/users/1"
            ));
        };
        let mut request = Request::new(Empty::new());
        *request.method_mut() = method;
        *request.uri_mut() = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|e| format!("{url:?}: {e}"))?;
        let fields = request.headers_mut();
        for header in headers {
            let Some((name, value)) = header.split_once(':') else {
                return Err(format!("-H {header:?}: expected 'Name: value'"));
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("-H {header:?}: {:?} is not a header name", name.trim()))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("-H {header:?}: the value is not a valid field value"))?;
            fields.append(name, value);
        }
        if !fields.contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| format!("{url:?}: the host is not a valid Host value"))?;
            fields.insert(HOST, host);
        }
        let vary = vary
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("--vary: {name:?} is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            request,
            url: url.to_string(),
            vary,
        })
    }

    fn method(&self) -> &Method {
        self.request.method()
    }

    fn copy(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.request.method().clone();
        *request.uri_mut() = self.request.uri().clone();
        *request.headers_mut() = self.request.headers().clone();
        request
    }
}

/// The purges of a successful write, by groups of methods that purge alike:
/// `asked` alone when it is a write, else every common write method and those
/// the route's rules name.
fn purge_groups(
    config: &ServeConfig,
    explained: &Explanation<'_>,
    asked: &Method,
) -> Vec<(Vec<Method>, Purge)> {
    let mut methods: Vec<Method> = if explained.purge_on_write(asked).is_some() {
        vec![asked.clone()]
    } else {
        let mut methods = WRITES.to_vec();
        let named = explained
            .route_index()
            .and_then(|i| config.routes.iter().nth(i))
            .into_iter()
            .flat_map(|route| route.on_write.iter().flat_map(|rule| rule.methods.iter()));
        for method in named {
            if !methods.contains(method) {
                methods.push(method.clone());
            }
        }
        methods
    };
    let mut groups: Vec<(Vec<Method>, Purge)> = Vec::new();
    for method in methods.drain(..) {
        let Some(mut purge) = explained.purge_on_write(&method) else {
            continue;
        };
        // A rule may name the target itself again: each is shown once.
        for names in [&mut purge.urls, &mut purge.prefixes, &mut purge.tags] {
            let mut seen = std::collections::HashSet::new();
            names.retain(|name| seen.insert(name.clone()));
        }
        match groups.iter_mut().find(|(_, p)| *p == purge) {
            Some((group, _)) => group.push(method),
            None => groups.push((vec![method], purge)),
        }
    }
    groups
}

/// The version counter of the matched route, rendered, for a keyed request.
fn version_key(config: &ServeConfig, explained: &Explanation<'_>) -> Option<String> {
    explained.key()?;
    let template = config.versions.get(explained.pattern()?)?;
    template.render(explained.params())
}

fn lookup_words(decision: &Decision, method: &Method) -> String {
    match decision {
        Decision::Keyed(_) => "yes: looked up, and stored, under the key below".into(),
        Decision::Write => format!("no: {method} is a write, forwarded; a success purges (below)"),
        Decision::RouteBypass => "no: the route bypasses the cache (forwarded as is)".into(),
        Decision::InvalidHost => {
            "no: the host is not host[:port], so no key is made (forwarded, not stored)".into()
        }
        Decision::NotAPath => {
            "no: the target is not a path, so no key is made (forwarded, not stored)".into()
        }
        _ => "no".into(),
    }
}

fn lookup_token(decision: &Decision) -> &'static str {
    match decision {
        Decision::Keyed(_) => "keyed",
        Decision::Write => "write",
        Decision::RouteBypass => "bypass",
        Decision::InvalidHost => "invalid-host",
        Decision::NotAPath => "not-a-path",
        _ => "forwarded",
    }
}

/// `revalidate explain`.
pub fn explain_text(config: &ServeConfig, asked: &Asked) -> String {
    let mut out = String::new();
    let method = asked.method();
    let _ = writeln!(out, "{method} {}", asked.url);
    if let Some(refused) = refusal(&asked.request) {
        let status = refused.status();
        field(
            &mut out,
            0,
            "refused",
            &format!("{status}: {}", refused.as_str()),
        );
        return out;
    }
    let explained = config.routes.explain(asked.copy());
    let route = match (explained.route_index(), explained.pattern()) {
        (Some(i), Some(pattern)) => {
            let params: Vec<String> = explained
                .params()
                .iter()
                .map(|(name, value)| format!("{name} = {value}"))
                .collect();
            if params.is_empty() {
                format!("{}. {pattern}", i + 1)
            } else {
                format!("{}. {pattern} ({})", i + 1, params.join(", "))
            }
        }
        _ => "none: the defaults apply".into(),
    };
    field(&mut out, 0, "route", &route);
    field(
        &mut out,
        0,
        "target",
        &format!("{} (forwarded upstream as this)", explained.target()),
    );
    field(
        &mut out,
        0,
        "lookup",
        &lookup_words(explained.decision(), method),
    );
    if let Some(key) = explained.key() {
        let mut lines = key.split('\n');
        field(&mut out, 0, "key", lines.next().unwrap_or(""));
        for line in lines {
            field(&mut out, 0, "", &format!("+ {line}"));
        }
        if let Some(version) = version_key(config, &explained) {
            field(
                &mut out,
                0,
                "",
                &format!("+ x:v<N>, N the counter {version} in Redis when the request comes"),
            );
        }
        if asked.vary.is_empty() {
            field(
                &mut out,
                0,
                "secondary",
                "none; a response with Vary is stored per value of the fields it names \
                 (--vary NAMES shows this request's)",
            );
        } else {
            for (i, (name, value)) in explained.secondary(&asked.vary).into_iter().enumerate() {
                let value = value.map_or("(absent)".to_string(), |v| format!("{v:?}"));
                field(
                    &mut out,
                    0,
                    if i == 0 { "secondary" } else { "" },
                    &format!("{name}: {value}"),
                );
            }
        }
        let tags = explained.tags();
        let tags = if tags.is_empty() {
            "none from the route".to_string()
        } else {
            list(tags)
        };
        field(
            &mut out,
            0,
            "tags",
            &format!("{tags} (and the response's Surrogate-Key and Cache-Tag)"),
        );
        let policy = config.routes.policy(
            explained
                .route_index()
                .and_then(|i| config.routes.iter().nth(i)),
        );
        field(
            &mut out,
            0,
            "freshness",
            &freshness(policy).unwrap_or_else(|| "as the upstream's Cache-Control says".into()),
        );
    }
    let groups = purge_groups(config, &explained, method);
    let heading = if explained.decision() == &Decision::Write {
        format!("a successful {method} purges:")
    } else {
        "a successful write to this URL purges:".into()
    };
    field(&mut out, 0, "on write", &heading);
    for (methods, purge) in &groups {
        let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
        let words = purge_words(
            &strings(&purge.urls),
            &strings(&purge.prefixes),
            &strings(&purge.tags),
        );
        field(&mut out, 0, "", &format!("{} -> {words}", names.join(", ")));
    }
    field(
        &mut out,
        0,
        "",
        "and the same-origin URLs of the response's Location and Content-Location",
    );
    out
}

/// `revalidate explain --json` (its shape is in docs/key-map.md).
pub fn explain_json(config: &ServeConfig, asked: &Asked) -> Value {
    let method = asked.method();
    if let Some(refused) = refusal(&asked.request) {
        return json!({
            "method": method.as_str(),
            "url": asked.url,
            "lookup": "refused",
            "refused": { "status": refused.status().as_u16(), "detail": refused.as_str() },
        });
    }
    let explained = config.routes.explain(asked.copy());
    let route = explained.pattern().map(|pattern| {
        json!({
            "number": explained.route_index().map(|i| i + 1),
            "pattern": pattern,
            "params": explained.params().iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })
    });
    let keyed = explained.key().is_some();
    let secondary: std::collections::BTreeMap<String, Option<String>> = explained
        .secondary(&asked.vary)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    let purges: Vec<Value> = purge_groups(config, &explained, method)
        .into_iter()
        .map(|(methods, purge)| {
            json!({
                "methods": methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                "urls": purge.urls,
                "prefixes": purge.prefixes,
                "tags": purge.tags,
            })
        })
        .collect();
    json!({
        "method": method.as_str(),
        "url": asked.url,
        "route": route,
        "target": explained.target(),
        "lookup": lookup_token(explained.decision()),
        "key": explained.key(),
        "version": version_key(config, &explained),
        "secondary": keyed.then_some(secondary),
        "tags": if keyed { explained.tags().to_vec() } else { Vec::new() },
        "purges": purges,
    })
}
