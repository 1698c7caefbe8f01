//! The Prometheus recorder behind the admin listener's `/metrics`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns the handle that renders it.
/// Later calls (tests, a second listener) share the first recorder.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ])
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then our
            // handle renders nothing, which tests notice.
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(
                "hearth_http_requests_total",
                "Public HTTP requests by route template, method and status"
            );
            metrics::describe_histogram!(
                "hearth_http_request_duration_seconds",
                metrics::Unit::Seconds,
                "Time to answer a public HTTP request, by route template"
            );
            metrics::describe_counter!(
                "hearth_config_reloads_total",
                "Config reloads on SIGHUP, by outcome (ok, or error: nothing was applied)"
            );
            for outcome in ["ok", "error"] {
                metrics::counter!("hearth_config_reloads_total", "outcome" => outcome).absolute(0);
            }
            // A series from the start, so a scrape before the first request
            // already tells the scraper which build it watches.
            metrics::describe_gauge!("hearth_build_info", "The running build of Hearth");
            metrics::gauge!("hearth_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    /// Issue 10 item 13: `/metrics` says something before any request.
    #[test]
    fn a_fresh_recorder_renders_the_build_info() {
        let text = super::install().render();
        assert!(
            text.contains(&format!(
                "hearth_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }
}
