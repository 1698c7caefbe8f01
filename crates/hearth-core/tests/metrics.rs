//! The metrics `public_app` records, read back from the Prometheus
//! recorder behind `/metrics`. Its own test binary: the recorder is global.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use hearth_core::config::HttpConfig;
use hearth_core::http::{HttpPolicy, public_app};
use http::{Method, Request};
use std::collections::BTreeSet;
use tower::ServiceExt;

/// The series in a rendering: every sample line without its value.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' ').map(|(key, _)| key.to_owned()))
        .collect()
}

async fn send(app: &Router, method: &str, uri: &str) {
    let request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap();
}

/// Issue 10 item 1, an unauthenticated memory-growth attack: methods and
/// paths a client invents must not become label values, or every request
/// adds a series for the life of the process (2,000 requests grew
/// `/metrics` to 35 MB). Labels come from closed sets: known methods or
/// `other`, route templates or `unmatched`.
#[tokio::test]
async fn invented_methods_and_paths_add_no_series() {
    let metrics = hearth_core::metrics::install();
    let config = HttpConfig::default();
    let routes = Router::new().route("/ok", get(|| async { "ok" }));
    let app = public_app([(routes, HttpPolicy::from_http(&config))], &config);
    // One of each kind first, so the series they belong to exist.
    send(&app, "INVENTED", "/invented").await;
    send(&app, "INVENTED", "/ok").await;
    send(&app, "GET", "/invented").await;
    let before = metrics.render();
    for i in 0..1000 {
        send(&app, &format!("M{i}X"), &format!("/p{i}/q")).await;
        send(&app, &format!("N{i}Y"), "/ok").await;
    }
    let after = metrics.render();
    assert_eq!(series(&before), series(&after), "{after}");
    // Only counts and sums grew, by a few digits.
    assert!(
        after.len() < before.len() + 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains(r#"method="other""#), "{after}");
    assert!(after.contains(r#"route="unmatched""#), "{after}");
}
