//! Request spans and metrics. A span records the method and the matched route
//! template, never the raw URI: query strings and path segments can hold
//! tokens and 3PIDs.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::Request as HttpRequest;
use std::time::Instant;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

fn route<B>(request: &HttpRequest<B>) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

fn make_span<B>(request: &HttpRequest<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route(request),
        client_ip = tracing::field::Empty,
    )
}

type MakeSpan = fn(&HttpRequest<axum::body::Body>) -> tracing::Span;

pub(super) fn layer()
-> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, MakeSpan, (), DefaultOnResponse> {
    TraceLayer::new_for_http()
        .make_span_with(make_span as MakeSpan)
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
}

/// Counts requests and their latency by route, method and status.
pub(super) async fn metrics(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route(&request);
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("hearth_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("hearth_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}
