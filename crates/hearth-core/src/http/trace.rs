//! Request spans and metrics. A span records the method and the matched route
//! template, never the raw URI: query strings and path segments can hold
//! tokens and 3PIDs. Methods and routes come from closed sets, so neither
//! logs nor metric labels grow with what clients invent.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::{Method, Request as HttpRequest};
use std::time::Instant;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

/// The route template, or `unmatched`: the templates are the services'
/// own, a finite set whatever paths clients send.
fn route<B>(request: &HttpRequest<B>) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// The method as a label: one of HTTP's registered methods, else `other`.
/// Each distinct label value is a new time series held for the process's
/// life, so invented methods must not become labels.
pub(super) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

fn make_span<B>(request: &HttpRequest<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %method_label(request.method()),
        route = %route(request),
        client_ip = tracing::field::Empty,
    )
}

type MakeSpan = fn(&HttpRequest<axum::body::Body>) -> tracing::Span;

/// Responses, failed or not, at `debug`. A 5xx is not by itself worth an
/// error line: a 502 may only mean a client named a homeserver that does
/// not answer. Whatever produces a 5xx logs its cause at its own level
/// (`MatrixError::internal` at `error`, timeouts at `warn`).
pub(super) fn layer()
-> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, MakeSpan, (), DefaultOnResponse> {
    TraceLayer::new_for_http()
        .make_span_with(make_span as MakeSpan)
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG))
}

/// Counts requests and their latency by route, method and status.
pub(super) async fn metrics(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route(&request);
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("hearth_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("hearth_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}
