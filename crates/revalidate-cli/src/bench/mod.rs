//! `revalidate bench`: measures what conditional requests and a cache save on an
//! HTTP API, and diagnoses the mistakes that keep them from saving anything.
//!
//! For each URL it sends `--requests` GETs per mode from `--concurrency` tasks on
//! keep-alive connections: `full` (unconditional), `conditional` (the validator
//! the endpoint gave, sent back), and with `--via` the same path through a cache
//! (`via-hit`, `via-conditional`). It counts statuses, body and wire bytes per
//! request, latency percentiles and requests per second, and compares the best
//! mode with `full`. Before the load, a few requests check the endpoint's
//! validators, `Vary` and `Cache-Control` ([`WarningKind`]). `docs/bench.md`
//! describes the method and the JSON schema.
//!
//! ```no_run
//! # async fn run() -> Result<(), revalidate_cli::bench::BenchError> {
//! use clap::Parser;
//! use revalidate_cli::bench::{BenchArgs, run_until};
//!
//! let args = BenchArgs::try_parse_from([
//!     "bench", "--requests", "100", "-H", "Authorization: Bearer 1",
//!     "http://127.0.0.1:8080/users/1",
//! ])
//! .expect("valid arguments");
//! let mut table = Vec::new();
//! let report = run_until(&args, std::future::pending(), &mut table).await?;
//! for url in &report.urls {
//!     if let Some(savings) = &url.savings {
//!         println!("{}: {}", url.url, savings.line());
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod diagnose;
mod measure;
mod report;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use client::BenchClient;
pub use diagnose::{Validator, Warning, WarningKind};
pub use measure::{Latency, Mode, ModeFigures};
pub use report::{Report, Savings, UrlReport};

/// Measure what 304s and a cache save on an HTTP API, and diagnose its headers.
///
/// Sends full, conditional and (with --via) cached GETs to each URL; prints bytes,
/// latency and req/s per mode, and warnings about ETag, Vary and Cache-Control
/// mistakes (docs/bench.md).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// The endpoints to measure (http:// or https://).
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Requests per URL and mode.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Requests in flight at once (each on its own keep-alive connection).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// A header sent with every request, `Name: value` (repeatable), e.g.
    /// `-H 'Authorization: Bearer TOKEN'`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A cache in front of the same API (e.g. `revalidate serve`): each URL's path
    /// and query are also measured on this base URL.
    #[arg(long, value_name = "PROXY_BASE_URL")]
    pub via: Option<String>,
    /// Write the figures and warnings as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one self-contained HTML page (tables and charts) to FILE.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

/// Why a run could not measure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A URL that is not http(s) with a host, or a `--via` base that is not.
    #[error("{0}")]
    InvalidUrl(String),
    /// A `-H` argument that is not `Name: value`.
    #[error("{0}")]
    InvalidHeader(String),
    /// An output file that cannot be created or written.
    #[error("{0}")]
    Output(String),
    /// A URL (or the `--via` cache) that did not answer its first request.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why, on one line.
        reason: String,
    },
    /// The TLS client could not be set up (no system roots for https URLs).
    #[error("cannot set up TLS for https URLs: {0}")]
    Tls(std::io::Error),
}

impl BenchError {
    /// Whether the invocation is at fault (exit code 2) rather than the network.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl(_) | Self::InvalidHeader(_) | Self::Output(_)
        )
    }
}

/// The arguments, checked.
struct Plan {
    targets: Vec<(String, Uri)>,
    headers: HeaderMap,
    via: Option<String>,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Self, BenchError> {
        let targets = args
            .urls
            .iter()
            .map(|url| Ok((url.clone(), parse_url(url, "URL")?)))
            .collect::<Result<Vec<_>, BenchError>>()?;
        let mut headers = HeaderMap::new();
        for line in &args.headers {
            let (name, value) = parse_header(line)?;
            headers.append(name, value);
        }
        let via = match &args.via {
            Some(base) => {
                parse_url(base, "--via")?;
                Some(base.trim_end_matches('/').to_owned())
            }
            None => None,
        };
        Ok(Self {
            targets,
            headers,
            via,
        })
    }

    /// `uri`'s path and query on the `--via` base.
    fn via_uri(&self, uri: &Uri) -> Option<Uri> {
        let base = self.via.as_ref()?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{base}{path}").parse().ok()
    }

    fn needs_tls(&self) -> bool {
        let https = |uri: &Uri| uri.scheme_str() == Some("https");
        self.targets.iter().any(|(_, uri)| https(uri))
            || self
                .via
                .as_deref()
                .is_some_and(|v| v.starts_with("https://"))
    }
}

fn parse_url(text: &str, what: &str) -> Result<Uri, BenchError> {
    let invalid = |why: &str| BenchError::InvalidUrl(format!("{what} {text}: {why}"));
    let uri: Uri = text
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(invalid(&format!("scheme {other} is not http or https"))),
        None => return Err(invalid("not an absolute http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(uri)
}

fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), BenchError> {
    let invalid = |why: &str| BenchError::InvalidHeader(format!("-H '{line}': {why}"));
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| invalid("expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| invalid("the name is not a valid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| invalid("the value holds a control character"))?;
    Ok((name, value))
}

/// Runs the bench as the command does: Ctrl-C stops the load, the table and the
/// warnings go to stdout, the progress bar to stderr (on a terminal only), and
/// the JSON and HTML files are written.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let ctrl_c = async {
        // Without a signal handler there is nothing to wait for, not a stop.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    run_until(args, ctrl_c, &mut std::io::stdout()).await
}

/// [`run`], stopped by `stop` instead of Ctrl-C and printing to `out`. A stop
/// keeps what was measured: the table and the files show it, marked interrupted.
pub async fn run_until(
    args: &BenchArgs,
    stop: impl Future<Output = ()> + Send + 'static,
    out: &mut (dyn Write + Send),
) -> Result<Report, BenchError> {
    let plan = Plan::new(args)?;
    // Created before the load: a path that cannot be written fails in a second,
    // not after minutes of measuring.
    let json = args
        .json
        .as_ref()
        .map(|p| create(p, "--json"))
        .transpose()?;
    let html = args
        .report
        .as_ref()
        .map(|p| create(p, "--report"))
        .transpose()?;
    let client = BenchClient::new(plan.needs_tls()).map_err(BenchError::Tls)?;
    let (stopper, stopped) = watch::channel(false);
    let signal = tokio::spawn(async move {
        stop.await;
        let _ = stopper.send(true);
    });
    let result = measure_all(&plan, args, &client, &stopped).await;
    signal.abort();
    let report = result?;

    let _ = out.write_all(report.table().as_bytes());
    let _ = out.flush();
    if let Some((path, mut file)) = json {
        write(&mut file, &path, "--json", report.json().as_bytes())?;
    }
    if let Some((path, mut file)) = html {
        write(&mut file, &path, "--report", report.html().as_bytes())?;
    }
    Ok(report)
}

async fn measure_all(
    plan: &Plan,
    args: &BenchArgs,
    client: &BenchClient,
    stopped: &watch::Receiver<bool>,
) -> Result<Report, BenchError> {
    let unreachable = |url: &str, error: client::ExchangeError| BenchError::Unreachable {
        url: url.to_owned(),
        reason: error.to_string(),
    };
    let requests = args.requests as usize;
    let concurrency = args.concurrency as usize;
    // Every URL is checked before any load: an unreachable one fails the run at
    // once instead of after the others were measured.
    let mut diagnoses = Vec::with_capacity(plan.targets.len());
    for (url, uri) in &plan.targets {
        let diagnosis = diagnose::diagnose(client, url, uri, &plan.headers)
            .await
            .map_err(|e| unreachable(url, e))?;
        diagnoses.push(diagnosis);
    }

    let modes_per_url = if plan.via.is_some() { 4 } else { 2 };
    let progress = progress_bar((plan.targets.len() * modes_per_url * requests) as u64);
    let mut report = Report {
        version: env!("CARGO_PKG_VERSION"),
        requests_per_mode: requests,
        concurrency,
        headers: plan
            .headers
            .keys()
            .map(|name| name.as_str().to_owned())
            .collect(),
        via: plan.via.clone(),
        interrupted: false,
        urls: Vec::new(),
        warnings: Vec::new(),
    };
    for ((url, uri), diagnosis) in plan.targets.iter().zip(diagnoses) {
        report.warnings.extend(diagnosis.warnings);
        let mut modes = Vec::new();
        let mut planned: Vec<(Mode, Uri, HeaderMap)> =
            vec![(Mode::Full, uri.clone(), plan.headers.clone())];
        match &diagnosis.validator {
            Some(validator) => planned.push((
                Mode::Conditional,
                uri.clone(),
                validator.conditional(&plan.headers),
            )),
            None => progress.inc(requests as u64),
        }
        if let Some(via) = plan.via_uri(uri) {
            // The fill: the cache stores the answer the via modes then measure.
            let fill = client
                .get(&via, &plan.headers)
                .await
                .map_err(|e| unreachable(&via.to_string(), e))?;
            planned.push((Mode::ViaHit, via.clone(), plan.headers.clone()));
            match (diagnose::Validator::of(&fill), &diagnosis.validator) {
                (Some(validator), _) => {
                    planned.push((
                        Mode::ViaConditional,
                        via,
                        validator.conditional(&plan.headers),
                    ));
                }
                (None, Some(_)) => {
                    report.warnings.push(Warning {
                        url: url.clone(),
                        kind: WarningKind::ViaNoValidator,
                        message: format!(
                            "the endpoint gives a validator but {via} answered without one: \
                             the cache drops ETag and Last-Modified, so its clients cannot \
                             revalidate; the via-conditional mode is skipped"
                        ),
                    });
                    progress.inc(requests as u64);
                }
                (None, None) => progress.inc(requests as u64),
            }
        }
        for (mode, target, headers) in planned {
            if *stopped.borrow() {
                break;
            }
            progress.set_message(format!("{} {}", mode.as_str(), url));
            let figures = measure::load(
                client,
                mode,
                &target,
                &headers,
                (requests, concurrency),
                stopped,
                &progress,
            )
            .await;
            modes.push(figures);
        }
        let savings = measure::best_savings(&modes).map(|(mode, bandwidth, latency)| Savings {
            mode,
            bandwidth_percent: bandwidth,
            latency_p50_percent: latency,
        });
        report.urls.push(UrlReport {
            url: url.clone(),
            validator: diagnosis.validator,
            modes,
            savings,
        });
    }
    progress.finish_and_clear();
    report.interrupted = *stopped.borrow();
    Ok(report)
}

/// A bar on stderr when it is a terminal; hidden otherwise, so logs and pipes
/// get no control codes.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec:>9} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(total).with_style(style)
}

fn create(path: &PathBuf, flag: &str) -> Result<(PathBuf, std::fs::File), BenchError> {
    std::fs::File::create(path)
        .map(|file| (path.clone(), file))
        .map_err(|e| BenchError::Output(format!("{flag} {}: {e}", path.display())))
}

fn write(
    file: &mut std::fs::File,
    path: &std::path::Path,
    flag: &str,
    bytes: &[u8],
) -> Result<(), BenchError> {
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(|e| BenchError::Output(format!("{flag} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_name_colon_value() {
        let (name, value) = parse_header("Authorization:  Bearer x ").unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer x");
        assert!(parse_header("bad header").unwrap_err().is_usage());
        assert!(parse_header("bad name: x").is_err());
    }

    #[test]
    fn urls_are_absolute_http_or_https() {
        assert!(parse_url("http://127.0.0.1:8080/users/1", "URL").is_ok());
        assert!(parse_url("https://example.com", "URL").is_ok());
        let ftp = parse_url("ftp://x", "URL").unwrap_err();
        assert_eq!(
            ftp.to_string(),
            "URL ftp://x: scheme ftp is not http or https"
        );
        assert!(parse_url("example.com/x", "URL").is_err());
        assert!(parse_url("/users/1", "URL").is_err());
    }

    #[test]
    fn via_keeps_the_path_and_query() {
        let args = BenchArgs {
            urls: vec!["http://a:1/users/1?x=2".into()],
            requests: 1,
            concurrency: 1,
            headers: vec![],
            via: Some("http://cache:2/".into()),
            json: None,
            report: None,
        };
        let plan = Plan::new(&args).unwrap();
        let via = plan.via_uri(&plan.targets[0].1).unwrap();
        assert_eq!(via.to_string(), "http://cache:2/users/1?x=2");
    }
}
