//! The admin listener's live dashboard (`GET /`), rendered by a real browser:
//! headless Chromium loads it, its script polls `/stats`, and the figures it
//! shows are compared with `/stats`. Chromium is the Debian package `chromium`
//! (`.ci/run` installs it); `CHROMIUM` names another binary. Without one, the
//! test fails: it is never skipped.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::operator::{CONFIG, drive_traffic, start};
use support::proxy::{request, send};

/// The browser: `CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the dashboard test needs headless Chromium: install the Debian package \
         `chromium` (apt-get install -y chromium, as .ci/run does) or set CHROMIUM \
         to the browser's path"
    );
}

/// The page at `url` after its scripts ran for 5 s of virtual time.
async fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium did not finish within 90 s")
    .expect("chromium could not be started");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The opening tag of the element whose id is `id`, and its text up to the
/// next tag.
fn element<'a>(dom: &'a str, id: &str) -> (&'a str, &'a str) {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element #{id} in\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    let text_end = end + 1 + dom[end + 1..].find('<').unwrap();
    (&dom[start..=end], &dom[end + 1..text_end])
}

/// The `data-value` attribute of an opening tag.
fn data_value(tag: &str) -> &str {
    let at = tag
        .find("data-value=\"")
        .unwrap_or_else(|| panic!("no data-value in {tag}"))
        + "data-value=\"".len();
    &tag[at..at + tag[at..].find('"').unwrap()]
}

fn figure(dom: &str, id: &str) -> u64 {
    let (tag, _) = element(dom, id);
    data_value(tag)
        .parse()
        .unwrap_or_else(|e| panic!("#{id}: {e} in {tag}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_stats_says() {
    let operated = start(CONFIG, None, None).await;
    drive_traffic(&operated).await;
    let stats = request(operated.admin, "GET", "/stats", &[]).await;
    assert_eq!(stats.status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert!(stats["requests"]["hits"].as_u64().unwrap() >= 6, "{stats}");

    let dom = rendered(&format!("http://{}/", operated.admin)).await;

    assert_eq!(element(&dom, "status").1, "live, every second", "{dom}");
    assert_eq!(figure(&dom, "hits"), stats["requests"]["hits"]);
    let (tag, text) = element(&dom, "hit-ratio");
    let ratio: f64 = data_value(tag).parse().unwrap();
    assert!((ratio - stats["hit_ratio"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(text, format!("{:.1}%", 100.0 * ratio));
    assert_eq!(figure(&dom, "count-miss"), stats["requests"]["misses"]);
    assert_eq!(
        figure(&dom, "count-error"),
        stats["upstream_failures"]["timeout"]
    );
    assert_eq!(figure(&dom, "count-error"), 1);
    assert_eq!(
        figure(&dom, "origin-requests"),
        stats["origin_offload"]["requests"]
    );
    assert_eq!(
        figure(&dom, "origin-bytes"),
        stats["origin_offload"]["body_bytes"]
    );
    assert_eq!(
        figure(&dom, "client-saved"),
        stats["client_bandwidth_saved_bytes"]
    );
    assert_eq!(figure(&dom, "store-entries"), stats["store"]["entries"]);
    assert_eq!(figure(&dom, "store-bytes"), stats["store"]["bytes"]);
    assert_ne!(element(&dom, "upstream-p99").1, "–", "{dom}");

    // Top routes: each with its hit ratio, the busiest first.
    let routes = stats["top_routes"].as_array().unwrap();
    assert_eq!(routes[0]["route"], "/items/{id}");
    for route in routes.iter().filter(|r| r["requests"].as_u64() > Some(0)) {
        let name = route["route"].as_str().unwrap();
        let row_at = dom
            .find(&format!("data-route=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for {name} in\n{dom}"));
        let row = &dom[row_at..row_at + dom[row_at..].find("</tr>").unwrap()];
        let ratio_at = row.find("class=\"n hit-ratio\"").unwrap();
        let ratio: f64 = data_value(&row[ratio_at..]).parse().unwrap();
        assert!(
            (ratio - route["hit_ratio"].as_f64().unwrap()).abs() < 1e-9,
            "{row}"
        );
    }
    assert!(dom.contains("data-route=\"(default)\""), "{dom}");

    // The purge, what it named and how many entries it removed.
    let purge = &stats["recent_purges"][0];
    assert_eq!(purge["tags"][0], "item:2");
    let table_at = dom.find("id=\"purges\"").unwrap();
    let table = &dom[table_at..table_at + dom[table_at..].find("</tbody>").unwrap()];
    assert!(table.contains("<td>tag item:2</td>"), "{table}");
    assert!(table.contains("hard (removed)"), "{table}");
    assert!(
        table.contains(&format!(">{}</td>", purge["removed"])),
        "{table}"
    );
}

/// With a token, the page (which holds no data) is served without it, and the
/// data it reads is not: `/stats` needs `Authorization: Bearer`. The page keeps
/// the token in `sessionStorage` and sends it in that field, never in a URL or
/// a cookie.
#[tokio::test]
async fn the_page_is_open_and_its_data_needs_the_token() {
    let operated = start(CONFIG, Some("s3cret"), None).await;
    let page = request(operated.admin, "GET", "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.headers["content-type"].to_str().unwrap(),
        "text/html; charset=utf-8"
    );
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(page.body.contains("<title>revalidate</title>"));
    assert!(!page.body.contains("s3cret"));
    assert!(page.body.contains("\"Authorization\"] = \"Bearer \" + t"));
    assert!(page.body.contains("sessionStorage"));
    for never in [
        "localStorage",
        "document.cookie",
        "location.hash",
        "?token",
        "#token",
    ] {
        assert!(!page.body.contains(never), "the page uses {never}");
    }

    let refused = request(operated.admin, "GET", "/stats", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let allowed = request(
        operated.admin,
        "GET",
        "/stats",
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    let purge = send(
        operated.admin,
        "POST",
        "/purge",
        &[("content-type", "application/json")],
        r#"{"tags": ["items"]}"#,
    )
    .await;
    assert_eq!(purge.status, 401);
}
