//! The HTTP plumbing every listener shares: Matrix error fallbacks, CORS,
//! body limits, rate limits, request spans and metrics, and the server loop
//! with TLS and graceful shutdown.

mod client_ip;
mod concurrency;
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
pub use serve::{Listener, serve, tls_acceptor};

use crate::MatrixError;
use crate::config::{ByteSize, Duration as ConfigDuration, HttpConfig, RateLimitConfig};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;

/// The limits one service's routes run under: body size, handler time and
/// a request rate per client address.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    pub max_body_size: ByteSize,
    pub request_timeout: ConfigDuration,
    pub rate_limit: RateLimitConfig,
}

impl HttpPolicy {
    /// The `[http]` defaults, from which each service's policy starts.
    pub fn from_http(config: &HttpConfig) -> Self {
        Self {
            max_body_size: config.max_body_size,
            request_timeout: config.request_timeout,
            rate_limit: config.rate_limit,
        }
    }

    /// Wraps `routes`; services with the same rate share one bucket per
    /// client (`limiters`), so a client's budget is not multiplied by the
    /// number of services.
    fn apply(
        &self,
        routes: Router,
        limiters: &mut Vec<(RateLimitConfig, Arc<RateLimiter>)>,
    ) -> Router {
        let limiter = match limiters.iter().find(|(c, _)| *c == self.rate_limit) {
            Some((_, limiter)) => limiter.clone(),
            None => {
                let limiter = RateLimiter::new(self.rate_limit.per_second, self.rate_limit.burst);
                limiters.push((self.rate_limit, limiter.clone()));
                limiter
            }
        };
        routes
            .layer(DefaultBodyLimit::max(self.max_body_size.0))
            .layer(middleware::from_fn_with_state(limiter, rate_limit))
            .layer(middleware::from_fn_with_state(
                self.request_timeout.0,
                request_timeout,
            ))
    }
}

/// The public application: each service's routes under its own policy
/// (unknown paths under the `[http]` one), the spec fallbacks for unknown
/// paths and methods, then the layers every request passes: panic catching,
/// metrics, the client address, the request span and CORS (which the spec
/// asks of every endpoint).
pub fn public_app(
    services: impl IntoIterator<Item = (Router, HttpPolicy)>,
    config: &HttpConfig,
) -> Router {
    let client_ips = Arc::new(ClientIpPolicy {
        trusted_proxies: config.trusted_proxies.clone(),
        log_client_ips: config.log_client_ips,
    });
    let mut limiters = Vec::new();
    // Unknown paths count too: scanning is not free.
    let unrecognized = HttpPolicy::from_http(config).apply(
        Router::new().fallback(|| async { MatrixError::unrecognized() }),
        &mut limiters,
    );
    services
        .into_iter()
        .fold(Router::new(), |app, (routes, policy)| {
            app.merge(policy.apply(routes, &mut limiters))
        })
        .fallback_service(unrecognized)
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed() })
        // A panic becomes a Matrix error that every outer layer (CORS,
        // metrics, the request span) still sees.
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(MatrixError::internal("handler panicked"))
        }))
        // Inside the client address, which it keys on; inside metrics, so
        // refusals are counted.
        .layer(middleware::from_fn_with_state(
            concurrency::InFlight::new(config.max_requests_in_progress_per_client),
            concurrency::limit,
        ))
        .layer(middleware::from_fn(trace::metrics))
        // Inside the span, so the client address can be recorded in it.
        .layer(middleware::from_fn_with_state(
            client_ips,
            client_ip::resolve,
        ))
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
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
            axum::response::IntoResponse::into_response(MatrixError::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                crate::ErrCode::UNKNOWN,
                "The request took too long",
            ))
        }
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
