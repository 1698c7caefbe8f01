//! Token-bucket rate limiting per key (a client address by default). Excess
//! requests get 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.

use super::ClientIp;
use crate::MatrixError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets idle long enough to be full again are dropped once the map holds
/// this many, so memory stays bounded under a spray of addresses.
const PURGE_AT: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A keyed token bucket: `burst` requests at once, refilled at `per_second`.
/// `per_second = 0` turns the limiter off.
#[derive(Debug)]
pub struct RateLimiter<K = IpAddr> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_second: u32, burst: u32) -> Arc<Self> {
        Arc::new(Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PURGE_AT {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.duration_since(b.updated) < full_after);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

/// Middleware limiting each client address. Requests without a known address
/// (in-process calls) are not limited.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request.extensions().get::<ClientIp>().and_then(|c| c.0);
    if let Some(ip) = ip
        && let Err(wait) = limiter.check(&ip)
    {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        return MatrixError::limit_exceeded(ms).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::<u8>::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check_at(&1, t0).unwrap();
        }
        let wait = limiter.check_at(&1, t0).unwrap_err();
        assert_eq!(wait.as_millis(), 100);
        // Other keys have their own bucket.
        limiter.check_at(&2, t0).unwrap();
        limiter
            .check_at(&1, t0 + Duration::from_millis(100))
            .unwrap();
        assert!(
            limiter
                .check_at(&1, t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let limiter = RateLimiter::<u8>::new(0, 1);
        for _ in 0..100 {
            limiter.check(&1).unwrap();
        }
    }
}
