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
        Self::with_rate(f64::from(per_second), burst)
    }

    /// `burst` at once, then one more every `period`, as Sydent limits mail
    /// per address. A zero burst or period turns the limiter off.
    pub fn per_period(burst: u32, period: Duration) -> Arc<Self> {
        let rate = if burst == 0 || period.is_zero() {
            0.0
        } else {
            1.0 / period.as_secs_f64()
        };
        Self::with_rate(rate, burst)
    }

    fn with_rate(per_second: f64, burst: u32) -> Arc<Self> {
        Arc::new(Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now(), true)
    }

    /// Whether `key` has a token, without taking it: for work that is
    /// refused early but only counted once it is really done.
    pub fn ready(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now(), false)
    }

    fn check_at(&self, key: &K, now: Instant, take: bool) -> Result<(), Duration> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PURGE_AT {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.duration_since(b.updated) < full_after);
        }
        let tokens = buckets.get(key).map_or(self.burst, |b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            (b.tokens + elapsed * self.per_second).min(self.burst)
        });
        if tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second));
        }
        if take {
            buckets.insert(
                key.clone(),
                Bucket {
                    tokens: tokens - 1.0,
                    updated: now,
                },
            );
        }
        Ok(())
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
            limiter.check_at(&1, t0, true).unwrap();
        }
        let wait = limiter.check_at(&1, t0, true).unwrap_err();
        assert_eq!(wait.as_millis(), 100);
        // Other keys have their own bucket.
        limiter.check_at(&2, t0, true).unwrap();
        limiter
            .check_at(&1, t0 + Duration::from_millis(100), true)
            .unwrap();
        assert!(
            limiter
                .check_at(&1, t0 + Duration::from_millis(100), true)
                .is_err()
        );
    }

    #[test]
    fn per_period_allows_a_burst_then_one_per_period_and_ready_takes_nothing() {
        let limiter = RateLimiter::<u8>::per_period(2, Duration::from_secs(300));
        let t0 = Instant::now();
        limiter.check_at(&1, t0, false).unwrap();
        limiter.check_at(&1, t0, true).unwrap();
        limiter.check_at(&1, t0, true).unwrap();
        assert_eq!(limiter.check_at(&1, t0, false).unwrap_err().as_secs(), 300);
        let later = t0 + Duration::from_secs(300);
        limiter.check_at(&1, later, true).unwrap();
        assert!(limiter.check_at(&1, later, true).is_err());
        let off = RateLimiter::<u8>::per_period(0, Duration::from_secs(300));
        for _ in 0..10 {
            off.check(&1).unwrap();
        }
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let limiter = RateLimiter::<u8>::new(0, 1);
        for _ in 0..100 {
            limiter.check(&1).unwrap();
        }
    }
}
