//! The load generator: `concurrency` workers, each on its own keep-alive
//! HTTP/1.1 connection, sending `/lookup` batches back to back (a closed
//! loop: a new request as soon as the last is answered). Every answer is
//! checked: status 200, every bound address mapped to its user, no absent
//! address mapped.
//!
//! A run warms up first; throughput and latency count only the requests
//! answered inside the measured window after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::client::{Client, parse};
use super::data::{Hashes, mxid};

pub(crate) const LOOKUP: &str = "/_matrix/identity/v2/lookup";
/// After a failed request a worker pauses, so a dead server is not hammered
/// in a tight loop until the window ends.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What one run sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) concurrency: usize,
    /// Addresses per request: half bound, half absent.
    pub(crate) batch: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
}

/// The server under load.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
    pub(crate) pepper: String,
}

#[derive(Debug)]
pub(crate) struct Outcome {
    /// Requests answered correctly inside the measured window.
    pub(crate) requests: usize,
    pub(crate) measured: Duration,
    /// Latencies of those requests, sorted.
    latencies: Vec<Duration>,
}

impl Outcome {
    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.measured.as_secs_f64()
    }

    /// The nearest-rank percentile, `p` in (0, 1].
    pub(crate) fn percentile(&self, p: f64) -> Option<Duration> {
        let rank = (p * self.latencies.len() as f64).ceil() as usize;
        self.latencies.get(rank.checked_sub(1)?).copied()
    }
}

/// Runs `plan` against `target`, which holds the associations `hashes` was
/// made for. Fails when any request failed or was answered wrongly.
pub(crate) async fn run(target: &Target, hashes: Arc<Hashes>, plan: Plan) -> Result<Outcome> {
    let from = Instant::now() + plan.warmup;
    let shared = Arc::new(Shared {
        target: target.clone(),
        hashes,
        batch: plan.batch,
        from,
        until: from + plan.measure,
    });
    let mut workers = JoinSet::new();
    for seed in 0..plan.concurrency {
        workers.spawn(worker(shared.clone(), seed as u64));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(log) = workers.join_next().await {
        let log = log.context("a load worker panicked")?;
        latencies.extend(log.latencies);
        errors += log.errors;
        first_error = first_error.or(log.first_error);
    }
    if let Some(error) = first_error {
        bail!("{errors} lookup request(s) failed; the first: {error:#}");
    }
    latencies.sort_unstable();
    Ok(Outcome {
        requests: latencies.len(),
        measured: plan.measure,
        latencies,
    })
}

/// What every worker reads.
#[derive(Debug)]
struct Shared {
    target: Target,
    hashes: Arc<Hashes>,
    batch: usize,
    /// The measured window: after the warm-up, until the end of the run.
    from: Instant,
    until: Instant,
}

/// One request's addresses, and which associations it must find.
#[derive(Debug)]
struct Batch {
    body: Bytes,
    /// The bound associations asked for, sorted and distinct.
    bound: Vec<usize>,
}

#[derive(Debug, Default)]
struct WorkerLog {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<anyhow::Error>,
}

async fn worker(shared: Arc<Shared>, seed: u64) -> WorkerLog {
    let mut client = Client::new(shared.target.addr, &shared.target.token);
    // A fixed seed per worker: every run, and every server, gets the same
    // sequence of addresses.
    let mut rng = SplitMix64(seed);
    let mut log = WorkerLog::default();
    while Instant::now() < shared.until {
        let batch = shared.batch(&mut rng);
        let sent = Instant::now();
        let answer = client.post(LOOKUP, batch.body.clone()).await;
        let answered = Instant::now();
        match answer.and_then(|(status, body)| shared.check(status, &body, &batch)) {
            Ok(()) if (shared.from..=shared.until).contains(&answered) => {
                log.latencies.push(answered - sent);
            }
            Ok(()) => {}
            Err(error) => {
                log.errors += 1;
                log.first_error.get_or_insert(error);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    log
}

impl Shared {
    /// A new batch: bound and absent addresses drawn at random, so no two
    /// requests are alike and no cache sees the same batch twice.
    fn batch(&self, rng: &mut SplitMix64) -> Batch {
        // Rounded up, so a batch of one (issue 10's per-request overhead)
        // is a lookup that finds someone.
        let bound_count = self.batch.div_ceil(2);
        let absent_count = self.batch - bound_count;
        let mut bound: Vec<usize> = (0..bound_count)
            .map(|_| rng.below(self.hashes.bound.len()))
            .collect();
        let absent = (0..absent_count).map(|_| rng.below(self.hashes.absent.len()));
        let addresses: Vec<&str> = bound
            .iter()
            .map(|&i| self.hashes.bound[i].as_str())
            .chain(absent.map(|i| self.hashes.absent[i].as_str()))
            .collect();
        let body = json!({
            "algorithm": "sha256",
            "pepper": self.target.pepper,
            "addresses": addresses,
        });
        bound.sort_unstable();
        bound.dedup();
        Batch {
            body: Bytes::from(body.to_string()),
            bound,
        }
    }

    /// Whether the answer maps exactly the bound addresses, each to its user.
    fn check(&self, status: StatusCode, body: &[u8], batch: &Batch) -> Result<()> {
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            bail!("status {status}: {text}");
        }
        let answer = parse(body)?;
        let mappings = answer
            .get("mappings")
            .and_then(Value::as_object)
            .context("the answer has no `mappings` object")?;
        for &i in &batch.bound {
            let found = mappings.get(&self.hashes.bound[i]).and_then(Value::as_str);
            if found != Some(mxid(i).as_str()) {
                bail!("association {i} maps to {found:?}, not {}", mxid(i));
            }
        }
        if mappings.len() != batch.bound.len() {
            bail!(
                "{} mappings for {} bound addresses: absent addresses were found",
                mappings.len(),
                batch.bound.len()
            );
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to
/// pick addresses; a crate would be one more dependency for nothing.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; the modulo bias is nil for n far below 2^64.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, SplitMix64};
    use std::time::Duration;

    #[test]
    fn percentiles_are_nearest_rank() {
        let outcome = Outcome {
            requests: 100,
            measured: Duration::from_secs(10),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(outcome.percentile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(outcome.percentile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(outcome.percentile(1.0), Some(Duration::from_millis(100)));
        assert!((outcome.per_second() - 10.0).abs() < 1e-9);
        let empty = Outcome {
            requests: 0,
            measured: Duration::from_secs(1),
            latencies: Vec::new(),
        };
        assert_eq!(empty.percentile(0.5), None);
    }

    #[test]
    fn random_picks_stay_in_range() {
        let mut rng = SplitMix64(0);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        // The first output for seed 0, from the reference implementation.
        assert_eq!(SplitMix64(0).next(), 0xe220_a839_7b1d_cdaf);
    }
}
