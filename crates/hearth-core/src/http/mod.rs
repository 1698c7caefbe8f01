//! The HTTP plumbing every listener shares: Matrix error fallbacks, CORS,
//! body limits, rate limits, request spans and metrics, and the server loop
//! with TLS and graceful shutdown.

mod client_ip;
mod cors;
mod json;
mod query;
mod rate_limit;
mod serve;
mod trace;

pub use client_ip::{ClientIp, ClientIpPolicy};
pub use cors::cors;
pub use json::Json;
pub use query::Query;
pub use rate_limit::{RateLimiter, rate_limit};
pub use serve::{Listener, TlsFiles, load_tls, serve};

use crate::MatrixError;
use crate::config::HttpConfig;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;

/// Wraps the routers of the enabled services into the public application:
/// spec fallbacks for unknown paths and methods, then every shared layer.
pub fn public_app(routes: Router, config: &HttpConfig) -> Router {
    let policy = Arc::new(ClientIpPolicy {
        trusted_proxies: config.trusted_proxies.clone(),
        log_client_ips: config.log_client_ips,
    });
    let limiter = RateLimiter::new(config.rate_limit.per_second, config.rate_limit.burst);
    let timeout = config.request_timeout.0;
    routes
        .fallback(|| async { MatrixError::unrecognized() })
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed() })
        // Innermost first: a panic becomes a Matrix error that every outer
        // layer (CORS, metrics, the request span) still sees.
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(MatrixError::internal("handler panicked"))
        }))
        .layer(DefaultBodyLimit::max(config.max_body_size.0))
        .layer(middleware::from_fn_with_state(limiter, rate_limit))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(middleware::from_fn(trace::metrics))
        // Inside the span, so the client address can be recorded in it.
        .layer(middleware::from_fn_with_state(policy, client_ip::resolve))
        .layer(trace::layer())
        .layer(middleware::from_fn(cors))
}

/// Encodes everything but RFC 3986 unreserved characters, for query values.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Bounds a handler's time, so no request holds a connection forever.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(MatrixError::new(
            http::StatusCode::GATEWAY_TIMEOUT,
            crate::ErrCode::UNKNOWN,
            "The request took too long",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            super::percent_encode("#a:b.c/~_- +="),
            "%23a%3Ab.c%2F~_-%20%2B%3D"
        );
    }
}
