//! The checks run on each URL before its load: which validator it gives, and the
//! mistakes that keep clients and caches from saving anything.

use http::header::{CACHE_CONTROL, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, VARY};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde::Serialize;

use super::client::{BenchClient, Exchange, ExchangeError};

/// How many identical GETs the checks compare: enough to see a tag or a body that
/// changes on every response, few enough to stay out of the figures' way.
pub(crate) const PROBES: usize = 5;

/// What a warning is about; `docs/bench.md` gives each one's meaning and fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WarningKind {
    /// Neither `ETag` nor `Last-Modified`: nothing to revalidate with.
    NoValidator,
    /// A 200 instead of a 304 to the endpoint's own current validator.
    IgnoresValidator,
    /// The `ETag` changed between identical GETs.
    UnstableEtag,
    /// A weak tag `W/"x"` is matched only when sent without `W/`.
    WeakEtagMatchedOnlyStrong,
    /// A strong tag stayed the same while the body's bytes changed.
    StrongEtagChangingBody,
    /// The body depends on a header sent with `-H` that `Vary` does not name.
    VaryMissing,
    /// No `Cache-Control` on a GET whose responses were byte-identical.
    NoCacheControl,
    /// `Cache-Control: no-store` on a GET whose responses were byte-identical.
    NoStore,
    /// The endpoint answered with a status other than 2xx.
    ErrorStatus,
    /// The cache given with `--via` answered without a validator.
    ViaNoValidator,
}

impl WarningKind {
    /// The name used in the table, the JSON and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoValidator => "no_validator",
            Self::IgnoresValidator => "ignores_validator",
            Self::UnstableEtag => "unstable_etag",
            Self::WeakEtagMatchedOnlyStrong => "weak_etag_matched_only_strong",
            Self::StrongEtagChangingBody => "strong_etag_changing_body",
            Self::VaryMissing => "vary_missing",
            Self::NoCacheControl => "no_cache_control",
            Self::NoStore => "no_store",
            Self::ErrorStatus => "error_status",
            Self::ViaNoValidator => "via_no_validator",
        }
    }
}

/// One diagnosis of one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The URL it is about, as given on the command line.
    pub url: String,
    /// What it is about.
    pub kind: WarningKind,
    /// What was seen and what to change, in one line.
    pub message: String,
}

/// The validator a conditional mode sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Validator {
    /// An entity tag, sent back in `If-None-Match`.
    Etag(String),
    /// A date, sent back in `If-Modified-Since` (when there is no tag).
    LastModified(String),
}

impl Validator {
    /// The validator a response gives: its `ETag`, else its `Last-Modified`.
    pub(crate) fn of(exchange: &Exchange) -> Option<Self> {
        exchange
            .header(ETAG.as_str())
            .map(|tag| Self::Etag(tag.to_owned()))
            .or_else(|| {
                exchange
                    .header(LAST_MODIFIED.as_str())
                    .map(|date| Self::LastModified(date.to_owned()))
            })
    }

    /// `headers` plus the conditional header that sends this validator back.
    pub(crate) fn conditional(&self, headers: &HeaderMap) -> HeaderMap {
        let mut headers = headers.clone();
        let (name, value) = match self {
            Self::Etag(tag) => (IF_NONE_MATCH, tag),
            Self::LastModified(date) => (IF_MODIFIED_SINCE, date),
        };
        // It came from a header value, so it is one.
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
        headers
    }
}

/// What the checks found on one URL.
#[derive(Debug)]
pub(crate) struct Diagnosis {
    /// The validator the conditional mode sends, if any.
    pub(crate) validator: Option<Validator>,
    pub(crate) warnings: Vec<Warning>,
}

/// Runs the checks on `url`: [`PROBES`] GETs compared with each other, one
/// conditional GET with the validator they gave (two for a weak tag), and one GET
/// without each header of `headers`. The first GET's error is the caller's: the
/// URL is unreachable.
pub(crate) async fn diagnose(
    client: &BenchClient,
    url: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Diagnosis, ExchangeError> {
    let mut probes = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        probes.push(client.get(uri, headers).await?);
    }
    let mut warnings = Vec::new();
    let mut warn = |kind, message: String| {
        warnings.push(Warning {
            url: url.to_owned(),
            kind,
            message,
        });
    };
    let first = &probes[0];
    let last = &probes[PROBES - 1];
    if !first.status.is_success() {
        warn(
            WarningKind::ErrorStatus,
            format!(
                "GET answered {}: the figures measure that answer, not the resource",
                status_text(first.status)
            ),
        );
    }

    let tags: Vec<Option<&str>> = probes.iter().map(|p| p.header("etag")).collect();
    let same_tag = tags.iter().all(|t| *t == tags[0]);
    let same_body = probes.iter().all(|p| p.body == first.body);
    if !same_tag {
        let seen: Vec<&str> = tags.iter().map(|t| t.unwrap_or("(none)")).collect();
        warn(
            WarningKind::UnstableEtag,
            format!(
                "the ETag changed across {PROBES} identical GETs ({}): a tag that changes on \
                 every response never matches, so nothing is ever answered 304; derive it from \
                 the content or a version, not a clock or a random value",
                seen.join(", ")
            ),
        );
    }
    if let Some(tag) = tags[0].filter(|t| same_tag && !same_body && !is_weak(t)) {
        warn(
            WarningKind::StrongEtagChangingBody,
            format!(
                "the strong ETag {tag} stayed the same while the body changed across \
                 {PROBES} identical GETs: a strong tag promises identical bytes (RFC 9110 \
                 §8.8.1), and range requests and caches rely on it; send W/{tag} or change \
                 the tag with the bytes"
            ),
        );
    }

    let validator = Validator::of(last);
    match &validator {
        None => warn(
            WarningKind::NoValidator,
            "no ETag and no Last-Modified: clients and caches cannot revalidate, so every \
             request transfers the whole body; the conditional modes are skipped"
                .to_owned(),
        ),
        Some(validator) => {
            if let Some(message) = check_validator(client, uri, headers, validator).await {
                warn(message.0, message.1);
            }
        }
    }

    let vary = vary_names(first);
    for name in headers.keys() {
        if !same_body || vary.iter().any(|v| v == "*" || v == name.as_str()) {
            continue;
        }
        let mut without = headers.clone();
        without.remove(name);
        let Ok(other) = client.get(uri, &without).await else {
            continue;
        };
        if other.body != first.body {
            warn(
                WarningKind::VaryMissing,
                format!(
                    "the body differs without the {name} header you sent, but Vary does not \
                     name it: a shared cache may give one caller's body to another; send \
                     `Vary: {name}` (RFC 9110 §12.5.5)"
                ),
            );
        }
    }

    let all_ok = probes.iter().all(|p| p.status == StatusCode::OK);
    if same_body && all_ok {
        match first.header(CACHE_CONTROL.as_str()) {
            None => warn(
                WarningKind::NoCacheControl,
                format!(
                    "no Cache-Control on a GET whose {PROBES} responses were byte-identical: \
                     caches then guess a lifetime (RFC 9111 §4.2.2) or keep nothing; send \
                     `Cache-Control: no-cache` (keep it, revalidate each time) or `max-age=N`"
                ),
            ),
            Some(value) if directive(value, "no-store") => warn(
                WarningKind::NoStore,
                format!(
                    "Cache-Control: {value} on a GET whose {PROBES} responses were \
                     byte-identical: no cache keeps it, so its validator saves nothing; send \
                     `no-cache` instead unless the content must not be stored"
                ),
            ),
            Some(_) => {}
        }
    }

    Ok(Diagnosis {
        validator,
        warnings,
    })
}

/// Sends `validator` back and checks for a 304. For a weak tag that gets a 200,
/// it also sends the tag without `W/`: a 304 then shows a strong comparison of
/// the opaque text, where `If-None-Match` must compare weakly (RFC 9110 §13.1.2)
/// — the trap of an application behind a proxy that weakens its tags (nginx does
/// when it compresses).
async fn check_validator(
    client: &BenchClient,
    uri: &Uri,
    headers: &HeaderMap,
    validator: &Validator,
) -> Option<(WarningKind, String)> {
    let answer = client
        .get(uri, &validator.conditional(headers))
        .await
        .ok()?;
    if answer.status == StatusCode::NOT_MODIFIED {
        return None;
    }
    // A different validator in the answer is the unstable tag, already reported.
    if Validator::of(&answer).as_ref() != Some(validator) {
        return None;
    }
    let (header, value) = match validator {
        Validator::Etag(tag) => ("If-None-Match", tag),
        Validator::LastModified(date) => ("If-Modified-Since", date),
    };
    if let Validator::Etag(tag) = validator
        && let Some(strong) = tag.strip_prefix("W/")
    {
        let strong = Validator::Etag(strong.to_owned());
        let retry = client.get(uri, &strong.conditional(headers)).await.ok()?;
        if retry.status == StatusCode::NOT_MODIFIED {
            return Some((
                WarningKind::WeakEtagMatchedOnlyStrong,
                format!(
                    "answered {} to If-None-Match: {tag} (its own ETag) but 304 to {strong_tag}: \
                     it compares the tag without W/ strongly; If-None-Match uses the weak \
                     comparison (RFC 9110 §13.1.2), so strip W/ before comparing",
                    status_text(answer.status),
                    strong_tag = &tag[2..],
                ),
            ));
        }
    }
    Some((
        WarningKind::IgnoresValidator,
        format!(
            "answered {} instead of 304 to {header}: {value}, its own current validator: \
             every revalidation transfers the whole body; evaluate the precondition before \
             building the response (RFC 9110 §13.2.2)",
            status_text(answer.status)
        ),
    ))
}

fn is_weak(tag: &str) -> bool {
    tag.starts_with("W/")
}

/// The lower-cased field names of every `Vary` line.
fn vary_names(exchange: &Exchange) -> Vec<String> {
    exchange
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether a `Cache-Control` value holds `name` (directives are case-insensitive,
/// RFC 9111 §5.2).
fn directive(value: &str, name: &str) -> bool {
    value.split(',').any(|d| {
        let d = d.trim();
        let bare = d.split_once('=').map_or(d, |(n, _)| n).trim();
        bare.eq_ignore_ascii_case(name)
    })
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_found_case_insensitively_with_or_without_arguments() {
        assert!(directive("public, No-Store", "no-store"));
        assert!(directive("no-store=\"x\"", "no-store"));
        assert!(!directive("no-cache, max-age=0", "no-store"));
    }

    #[test]
    fn a_validator_goes_back_in_its_conditional_header() {
        let headers = Validator::Etag("W/\"a\"".into()).conditional(&HeaderMap::new());
        assert_eq!(headers[IF_NONE_MATCH], "W/\"a\"");
        let date = "Tue, 01 Jan 2030 00:00:00 GMT";
        let headers = Validator::LastModified(date.into()).conditional(&HeaderMap::new());
        assert_eq!(headers[IF_MODIFIED_SINCE], date);
    }
}
