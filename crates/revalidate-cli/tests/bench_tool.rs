//! `revalidate bench` over real sockets: against the demo users API, a deliberately
//! bad origin, `revalidate serve` in front of the demo, and as a binary with bad input.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use revalidate_cli::bench::{BenchArgs, Mode, Report, WarningKind, run_until};
use revalidate_cli::serve::server::ClientLimits;
use revalidate_cli::serve::{UpstreamClient, parse, proxy};
use support::proxy::{spawn, spawn_proxy};

/// The demo users API, seeded, on a free loopback port.
async fn demo() -> (SocketAddr, tempfile::TempDir) {
    let (api, dir) = support::sqlite().await;
    api.store.seed().await.unwrap();
    let (addr, _task) = spawn(api.app.clone()).await;
    (addr, dir)
}

/// Runs the bench as the command does, stopped by `stop`; returns the report and
/// what it printed.
async fn bench_until(
    arguments: &[&str],
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Report, String) {
    let args = BenchArgs::try_parse_from(std::iter::once("bench").chain(arguments.iter().copied()))
        .unwrap();
    let mut out = Vec::new();
    let report = run_until(&args, stop, &mut out).await.unwrap();
    (report, String::from_utf8(out).unwrap())
}

async fn bench(arguments: &[&str]) -> (Report, String) {
    bench_until(arguments, std::future::pending()).await
}

fn modes(report: &Report, url: usize) -> Vec<Mode> {
    report.urls[url].modes.iter().map(|m| m.mode).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_answers_304s_and_the_files_hold_the_figures() {
    let (addr, _db) = demo().await;
    let out = tempfile::tempdir().unwrap();
    let (json, html) = (out.path().join("bench.json"), out.path().join("bench.html"));
    let url = format!("http://{addr}/users/1");
    let (report, table) = bench(&[
        "--requests",
        "60",
        "--concurrency",
        "4",
        "--json",
        json.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
        &url,
    ])
    .await;

    assert_eq!(modes(&report, 0), [Mode::Full, Mode::Conditional]);
    let [full, conditional] = &report.urls[0].modes[..] else {
        unreachable!()
    };
    assert_eq!(full.status.get(&200), Some(&60), "{table}");
    assert_eq!(conditional.status.get(&304), Some(&60), "{table}");
    assert_eq!(conditional.body_bytes_per_request, 0.0);
    assert!(full.body_bytes_per_request > 50.0, "{table}");
    assert!(conditional.wire_bytes_per_request < full.wire_bytes_per_request);
    // The demo does everything right: no warning at all, and none missing a validator.
    assert!(report.warnings.is_empty(), "{table}");
    let savings = report.urls[0].savings.unwrap();
    assert_eq!(savings.mode, Mode::Conditional);
    assert!(savings.bandwidth_percent > 20.0, "{table}");
    assert!(table.contains("bandwidth saved"), "{table}");
    assert!(table.contains("with conditional vs full"), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for field in [
        "version",
        "requests_per_mode",
        "concurrency",
        "headers",
        "via",
        "interrupted",
        "urls",
        "warnings",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    assert_eq!(json["requests_per_mode"], 60);
    assert_eq!(json["interrupted"], false);
    let entry = &json["urls"][0];
    assert_eq!(entry["url"], url);
    assert_eq!(entry["validator"]["kind"], "etag");
    assert_eq!(entry["validator"]["value"], "\"v1\"");
    assert_eq!(entry["savings"]["mode"], "conditional");
    assert!(entry["savings"]["bandwidth_percent"].is_f64());
    assert!(entry["savings"]["latency_p50_percent"].is_f64());
    let mode = &entry["modes"][1];
    assert_eq!(mode["mode"], "conditional");
    assert_eq!(mode["target"], url);
    assert_eq!(mode["requests"], 60);
    assert_eq!(mode["errors"], 0);
    assert_eq!(mode["status"]["304"], 60);
    for field in [
        "body_bytes_per_request",
        "wire_bytes_per_request",
        "requests_per_second",
    ] {
        assert!(mode[field].is_number(), "no {field} in {mode}");
    }
    for p in ["p50", "p95", "p99"] {
        assert!(mode["latency_ms"][p].as_f64().unwrap() > 0.0, "{mode}");
    }

    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg"));
    assert!(html.contains("<style>"));
    for external in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the report");
    }
}

/// An origin with one mistake per path (and two paths without any).
fn bad_origin() -> Router {
    let counter = Arc::new(AtomicU64::new(0));
    Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let tenant = header("x-tenant").unwrap_or("none").to_owned();
            let inm = header("if-none-match").map(str::to_owned);
            let matches = |tag: &str| inm.as_deref() == Some(tag);
            let body = format!("tenant {tenant}");
            let not_modified = |etag: &str, cc: &str| -> Response {
                (
                    StatusCode::NOT_MODIFIED,
                    [("etag", etag), ("cache-control", cc)],
                )
                    .into_response()
            };
            match uri.path() {
                // A timestamp-like tag, no Cache-Control, no Vary, If-None-Match ignored.
                "/bad" => ([("etag", format!("\"t{n}\""))], body).into_response(),
                "/ignores" => (
                    [
                        ("etag", "\"same\""),
                        ("cache-control", "no-cache"),
                        ("vary", "x-tenant"),
                    ],
                    body,
                )
                    .into_response(),
                // Matches only the tag without W/, as behind a proxy that weakens tags.
                "/weak" if matches("\"w\"") => not_modified("W/\"w\"", "no-cache"),
                "/weak" => (
                    [
                        ("etag", "W/\"w\""),
                        ("cache-control", "no-cache"),
                        ("vary", "x-tenant"),
                    ],
                    body,
                )
                    .into_response(),
                "/strong-changing" if matches("\"s\"") => not_modified("\"s\"", "no-cache"),
                "/strong-changing" => (
                    [("etag", "\"s\""), ("cache-control", "no-cache")],
                    format!("request {n}"),
                )
                    .into_response(),
                "/no-store" if matches("\"n\"") => not_modified("\"n\"", "no-store"),
                "/no-store" => (
                    [
                        ("etag", "\"n\""),
                        ("cache-control", "no-store"),
                        ("vary", "x-tenant"),
                    ],
                    body,
                )
                    .into_response(),
                "/none" => {
                    ([("cache-control", "no-cache"), ("vary", "x-tenant")], body).into_response()
                }
                "/good" if matches("\"g\"") => not_modified("\"g\"", "max-age=60"),
                "/good" => (
                    [
                        ("etag", "\"g\""),
                        ("cache-control", "max-age=60"),
                        ("vary", "Accept, X-Tenant"),
                    ],
                    body,
                )
                    .into_response(),
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    (
                        [("etag", "\"slow\""), ("cache-control", "no-cache")],
                        "slow",
                    )
                        .into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mistake_of_a_bad_origin_gets_its_warning_and_no_other() {
    let (addr, _task) = spawn(bad_origin()).await;
    let paths = [
        "/bad",
        "/ignores",
        "/weak",
        "/strong-changing",
        "/no-store",
        "/none",
        "/good",
    ];
    let urls: Vec<String> = paths.iter().map(|p| format!("http://{addr}{p}")).collect();
    let mut arguments = vec!["--requests", "5", "--concurrency", "2", "-H", "X-Tenant: a"];
    arguments.extend(urls.iter().map(String::as_str));
    let (report, table) = bench(&arguments).await;

    let found: BTreeSet<(String, WarningKind)> = report
        .warnings
        .iter()
        .map(|w| {
            (
                w.url
                    .trim_start_matches(&format!("http://{addr}"))
                    .to_owned(),
                w.kind,
            )
        })
        .collect();
    let expected: BTreeSet<(String, WarningKind)> = [
        ("/bad", WarningKind::UnstableEtag),
        ("/bad", WarningKind::VaryMissing),
        ("/bad", WarningKind::NoCacheControl),
        ("/ignores", WarningKind::IgnoresValidator),
        ("/weak", WarningKind::WeakEtagMatchedOnlyStrong),
        ("/strong-changing", WarningKind::StrongEtagChangingBody),
        ("/no-store", WarningKind::NoStore),
        ("/none", WarningKind::NoValidator),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_owned(), k))
    .collect();
    assert_eq!(found, expected, "{table}");
    for warning in &report.warnings {
        let line = format!("warning: {} [{}]: ", warning.url, warning.kind.as_str());
        assert!(table.contains(&line), "{line} not in {table}");
    }

    // The conditional mode shows the cost of each mistake, and is skipped without a validator.
    let by_path = |path: &str| &report.urls[paths.iter().position(|p| *p == path).unwrap()];
    let ignores = &by_path("/ignores").modes[1];
    assert_eq!(
        (ignores.mode, ignores.status.get(&200)),
        (Mode::Conditional, Some(&5))
    );
    assert_eq!(by_path("/good").modes[1].status.get(&304), Some(&5));
    assert_eq!(
        by_path("/none")
            .modes
            .iter()
            .map(|m| m.mode)
            .collect::<Vec<_>>(),
        [Mode::Full]
    );
    assert!(by_path("/none").savings.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_keeps_what_was_measured() {
    let (addr, _task) = spawn(bad_origin()).await;
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("partial.json");
    let url = format!("http://{addr}/slow");
    let stop = tokio::time::sleep(Duration::from_millis(400));
    let (report, table) = bench_until(
        &[
            "--requests",
            "10000",
            "--concurrency",
            "2",
            "--json",
            json.to_str().unwrap(),
            &url,
        ],
        stop,
    )
    .await;
    assert!(report.interrupted);
    assert!(table.contains("interrupted"), "{table}");
    let full = &report.urls[0].modes[0];
    assert!(full.requests > 0 && full.requests < 10_000, "{table}");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(written["interrupted"], true);
    assert_eq!(written["urls"][0]["modes"][0]["requests"], full.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_measures_the_same_path_through_revalidate_serve() {
    let (origin, _db) = demo().await;
    let config = parse("", "test.toml").unwrap();
    let upstream = UpstreamClient::new(&format!("http://{origin}"), &config).unwrap();
    let (app, _cache) = proxy(&config, upstream).unwrap();
    let cache = spawn_proxy(app, ClientLimits::default()).await;
    let (report, table) = bench(&[
        "--requests",
        "40",
        "--via",
        &format!("http://{cache}/"),
        &format!("http://{origin}/users/1"),
    ])
    .await;

    assert_eq!(
        modes(&report, 0),
        [
            Mode::Full,
            Mode::Conditional,
            Mode::ViaHit,
            Mode::ViaConditional
        ],
        "{table}"
    );
    let via_hit = &report.urls[0].modes[2];
    assert_eq!(via_hit.target, format!("http://{cache}/users/1"));
    assert_eq!(via_hit.status.get(&200), Some(&40), "{table}");
    assert!(via_hit.body_bytes_per_request > 50.0);
    let via_conditional = &report.urls[0].modes[3];
    assert_eq!(via_conditional.status.get(&304), Some(&40), "{table}");
    assert!(table.contains("via-hit"), "{table}");
    assert!(table.contains("via-conditional"), "{table}");
    assert!(report.warnings.is_empty(), "{table}");
}

/// The binary with `arguments`: its exit code and stderr.
fn revalidate(arguments: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_revalidate"))
        .args(arguments)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let (code, stderr) = revalidate(&["bench", "-H", "bad header", "http://127.0.0.1:1/"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("-H 'bad header'"), "{stderr}");

    let (code, stderr) = revalidate(&["bench", "ftp://x"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "revalidate: URL ftp://x: scheme ftp is not http or https\n"
    );
}

#[test]
fn an_unreachable_url_is_one_line_and_exit_1() {
    let (code, stderr) = revalidate(&["bench", "http://127.0.0.1:1/"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("revalidate: cannot reach http://127.0.0.1:1/: "),
        "{stderr}"
    );
}
