//! `monitoring/alerts.yml` and `monitoring/grafana-dashboard.json` read metrics
//! the proxy emits: every `revalidate_*` name they use is in the `/metrics`
//! exposition of a proxy (with a real Prometheus recorder and a real Redis as the
//! shared tier) after traffic of every kind, and every family has its `# HELP`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::operator::{CONFIG, drive_traffic, start};
use support::proxy::request;

/// Every `revalidate_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("revalidate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The family a sample name belongs to (a histogram's `_bucket`, `_sum` and
/// `_count` belong to the histogram).
fn family<'a>(name: &'a str, exposition: &str) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && exposition.contains(&format!("# TYPE {base} histogram\n"))
        {
            return base;
        }
    }
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exposed_with_help() {
    // As `revalidate serve` does at start (once per process: this is the only
    // test of this binary).
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    revalidate_cli::serve::observe::describe_metrics();
    let url = support::redis::url();
    let namespace = support::redis::namespace("monitoring");
    let config = format!(
        "{CONFIG}\n[redis]\nurl = \"{url}\"\nnamespace = \"{namespace}\"\nlease = \"300ms\"\n"
    );
    let operated = start(&config, None, Some(handle)).await;
    drive_traffic(&operated).await;
    let scraped = request(operated.admin, "GET", "/metrics", &[]).await;
    assert_eq!(scraped.status, 200);
    let exposition = scraped.body;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitoring");
    let mut used = BTreeSet::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() > 5, "{file} names {names:?}");
        used.extend(names);
    }
    for name in &used {
        let sample = exposition.lines().any(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        });
        assert!(sample, "{name} is not in /metrics:\n{exposition}");
        let family = family(name, &exposition);
        assert!(
            exposition.contains(&format!("# HELP {family} ")),
            "{family} has no # HELP:\n{exposition}"
        );
    }

    // Every family exposed has its help, and names its unit last.
    let families: Vec<(&str, &str)> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    assert!(families.len() >= 25, "{exposition}");
    for (name, kind) in families {
        assert!(
            exposition.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP:\n{exposition}"
        );
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
        for unit in ["bytes", "seconds"] {
            if name.contains(unit) {
                assert!(
                    name.ends_with(&format!("_{unit}"))
                        || name.ends_with(&format!("_{unit}_total")),
                    "{name}: the unit goes last, before _total"
                );
            }
        }
    }
    assert!(
        exposition.contains(&format!(
            "revalidate_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{exposition}"
    );
    // What the traffic did is what the metrics say.
    for line in [
        "revalidate_upstream_failures_total{kind=\"timeout\"} 1",
        "revalidate_cache_not_stored_total{reason=\"no-store\"} 1",
        "revalidate_cache_purges_total 1",
        "revalidate_route_requests_total{route=\"/items/{id}\"} 9",
    ] {
        assert!(
            exposition.lines().any(|l| l == line),
            "{line} in\n{exposition}"
        );
    }
    assert!(
        exposition.contains(
            "revalidate_request_duration_seconds_bucket{served_by=\"cache\",le=\"+Inf\"} "
        )
    );
}
