//! What a run measured, and its three renderings: the terminal table, the JSON
//! file (`--json`) and the self-contained HTML page (`--report`).

use std::fmt::Write as _;

use serde::Serialize;

use super::diagnose::{Validator, Warning};
use super::measure::{Mode, ModeFigures};

/// Everything a run measured; `docs/bench.md` documents it as the JSON schema.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The version of `revalidate` that measured.
    pub version: &'static str,
    /// `--requests`: requests per URL and mode.
    pub requests_per_mode: usize,
    /// `--concurrency`: tasks sending them at once.
    pub concurrency: usize,
    /// The names (never the values) of the headers sent with `-H`.
    pub headers: Vec<String>,
    /// `--via`, if given.
    pub via: Option<String>,
    /// Whether Ctrl-C stopped the load: the figures are then those measured so far.
    pub interrupted: bool,
    /// One entry per URL measured, in the order given.
    pub urls: Vec<UrlReport>,
    /// Every warning of every URL.
    pub warnings: Vec<Warning>,
}

/// The figures of one URL.
#[derive(Debug, Clone, Serialize)]
pub struct UrlReport {
    /// The URL as given.
    pub url: String,
    /// The validator the conditional mode sent, if the endpoint gave one.
    pub validator: Option<Validator>,
    /// One entry per mode measured.
    pub modes: Vec<ModeFigures>,
    /// The best mode compared with `full`, when both were measured.
    pub savings: Option<Savings>,
}

/// What the mode with the fewest bytes per request saves compared with `full`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Savings {
    /// That mode.
    pub mode: Mode,
    /// Wire bytes per request saved, in percent of `full`'s.
    pub bandwidth_percent: f64,
    /// Median latency saved, in percent of `full`'s.
    pub latency_p50_percent: f64,
}

impl Savings {
    /// The one line the table and the report print.
    pub fn line(&self) -> String {
        format!(
            "bandwidth saved {:.1}%, latency saved {:.1}% (p50), with {} vs full",
            self.bandwidth_percent,
            self.latency_p50_percent,
            self.mode.as_str()
        )
    }
}

impl Report {
    /// The table for a terminal: under 100 columns, one block per URL, then the
    /// warnings.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for url in &self.urls {
            let _ = writeln!(out, "{}", url.url);
            let _ = writeln!(
                out,
                "  {:<16}{:>8} {:<14}{:>11}{:>11}{:>8}{:>8}{:>8}{:>9}",
                "mode",
                "requests",
                "statuses",
                "body B/req",
                "wire B/req",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "req/s"
            );
            for m in &url.modes {
                let _ = writeln!(
                    out,
                    "  {:<16}{:>8} {:<14}{:>11.1}{:>11.1}{:>8.2}{:>8.2}{:>8.2}{:>9.0}",
                    m.mode.as_str(),
                    m.requests,
                    statuses(m),
                    m.body_bytes_per_request,
                    m.wire_bytes_per_request,
                    m.latency_ms.p50,
                    m.latency_ms.p95,
                    m.latency_ms.p99,
                    m.requests_per_second
                );
            }
            match &url.savings {
                Some(savings) => {
                    let _ = writeln!(out, "  {}", savings.line());
                }
                None => {
                    let _ = writeln!(out, "  no savings to compare: only `full` was measured");
                }
            }
            out.push('\n');
        }
        if self.interrupted {
            out.push_str("interrupted: the figures are those measured before Ctrl-C\n");
        }
        for warning in &self.warnings {
            let _ = writeln!(
                out,
                "warning: {} [{}]: {}",
                warning.url,
                warning.kind.as_str(),
                warning.message
            );
        }
        out
    }

    /// The figures as pretty-printed JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report is plain data")
    }

    /// One self-contained HTML page: inline CSS and inline SVG, nothing fetched.
    pub fn html(&self) -> String {
        let mut out = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>revalidate bench</title>\n<style>\n",
        );
        out.push_str(CSS);
        out.push_str("</style>\n</head>\n<body>\n<h1>revalidate bench</h1>\n");
        let _ = writeln!(
            out,
            "<p class=\"meta\">{} requests per URL and mode, concurrency {}{}{}{}</p>",
            self.requests_per_mode,
            self.concurrency,
            self.via
                .as_deref()
                .map(|v| format!(", via {}", escape(v)))
                .unwrap_or_default(),
            if self.headers.is_empty() {
                String::new()
            } else {
                format!(", headers: {}", escape(&self.headers.join(", ")))
            },
            if self.interrupted {
                " — interrupted: the figures are those measured before Ctrl-C"
            } else {
                ""
            },
        );
        for url in &self.urls {
            let _ = writeln!(out, "<section>\n<h2>{}</h2>", escape(&url.url));
            if let Some(savings) = &url.savings {
                let _ = writeln!(out, "<p class=\"savings\">{}</p>", escape(&savings.line()));
            }
            out.push_str(
                "<table>\n<tr><th>mode</th><th>requests</th><th>statuses</th>\
                 <th>body B/req</th><th>wire B/req</th><th>p50 ms</th><th>p95 ms</th>\
                 <th>p99 ms</th><th>req/s</th></tr>\n",
            );
            for m in &url.modes {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td>\
                     <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.0}</td></tr>",
                    m.mode.as_str(),
                    m.requests,
                    escape(&statuses(m)),
                    m.body_bytes_per_request,
                    m.wire_bytes_per_request,
                    m.latency_ms.p50,
                    m.latency_ms.p95,
                    m.latency_ms.p99,
                    m.requests_per_second
                );
            }
            out.push_str("</table>\n<div class=\"charts\">\n");
            let rows = |f: &dyn Fn(&ModeFigures) -> [f64; 2]| -> Vec<(&'static str, [f64; 2])> {
                url.modes.iter().map(|m| (m.mode.as_str(), f(m))).collect()
            };
            out.push_str(&bar_chart(
                "Bytes per request",
                ["body", "wire"],
                &rows(&|m| [m.body_bytes_per_request, m.wire_bytes_per_request]),
                "B",
            ));
            out.push_str(&bar_chart(
                "Latency",
                ["p50", "p99"],
                &rows(&|m| [m.latency_ms.p50, m.latency_ms.p99]),
                "ms",
            ));
            out.push_str("</div>\n</section>\n");
        }
        if !self.warnings.is_empty() {
            out.push_str("<h2>Warnings</h2>\n<ul class=\"warnings\">\n");
            for w in &self.warnings {
                let _ = writeln!(
                    out,
                    "<li><code>{}</code> {}: {}</li>",
                    w.kind.as_str(),
                    escape(&w.url),
                    escape(&w.message)
                );
            }
            out.push_str("</ul>\n");
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

/// `200×198 503×2`: the status counts of a mode, in code order.
fn statuses(m: &ModeFigures) -> String {
    let mut text: Vec<String> = m
        .status
        .iter()
        .map(|(code, n)| format!("{code}×{n}"))
        .collect();
    if m.errors > 0 {
        text.push(format!("err×{}", m.errors));
    }
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.join(" ")
    }
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;\
padding:0 1em;color:#1d2430}\nh1{font-size:1.5em}h2{font-size:1.1em;word-break:break-all}\n\
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;text-align:right;\
border-bottom:1px solid #dde}th:first-child,td:first-child{text-align:left}\n\
.meta{color:#556}.savings{font-weight:600;color:#16643a}\n\
.charts{display:flex;flex-wrap:wrap;gap:1.5em}.warnings li{margin:.3em 0}\n\
svg text{font:12px system-ui,sans-serif;fill:#1d2430}\n";

/// The two series' colours: the first (body, p50) dark, the second (wire, p99) light.
const COLOURS: [&str; 2] = ["#2f6db5", "#9cc1ea"];

/// A horizontal grouped bar chart: one group of two bars per mode. Written by
/// hand: a few rectangles and labels need no plotting crate, and the page stays
/// one file that opens offline.
fn bar_chart(title: &str, series: [&str; 2], rows: &[(&str, [f64; 2])], unit: &str) -> String {
    const WIDTH: f64 = 460.0;
    const LABEL: f64 = 115.0;
    const VALUE: f64 = 80.0;
    const BAR: f64 = 14.0;
    const GROUP: f64 = 2.0 * BAR + 10.0;
    const TOP: f64 = 44.0;
    let max = rows
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max);
    let span = WIDTH - LABEL - VALUE;
    let height = TOP + GROUP * rows.len() as f64 + 6.0;
    let mut svg = format!(
        "<svg role=\"img\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\">\
         \n<title>{}</title>\n<text x=\"0\" y=\"16\" style=\"font-weight:600\">{}</text>\n",
        escape(title),
        escape(title)
    );
    for (i, name) in series.iter().enumerate() {
        let x = LABEL + i as f64 * 90.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"24\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"33\">{}</text>",
            COLOURS[i],
            x + 14.0,
            escape(name)
        );
    }
    for (row, (label, values)) in rows.iter().enumerate() {
        let y = TOP + row as f64 * GROUP;
        let _ = writeln!(
            svg,
            "<text x=\"0\" y=\"{:.1}\">{}</text>",
            y + BAR + 4.0,
            escape(label)
        );
        for (i, value) in values.iter().enumerate() {
            let w = if max > 0.0 { value / max * span } else { 0.0 };
            let by = y + i as f64 * BAR;
            let _ = writeln!(
                svg,
                "<rect x=\"{LABEL}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{} {unit}</text>",
                BAR - 2.0,
                COLOURS[i],
                LABEL + w + 4.0,
                by + BAR - 3.0,
                number(*value)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A figure with as many decimals as its size deserves.
fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Text made safe for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn bars_scale_to_the_largest_value() {
        let svg = bar_chart("t", ["a", "b"], &[("full", [100.0, 50.0])], "B");
        assert!(svg.contains("width=\"265.0\""), "{svg}");
        assert!(svg.contains("width=\"132.5\""), "{svg}");
    }
}
