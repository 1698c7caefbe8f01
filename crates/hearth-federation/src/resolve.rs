//! Server-name resolution, per the Server-Server API's "Resolving server
//! names": IP literals, explicit ports, `.well-known/matrix/server` with its
//! caching rules, SRV `_matrix-fed._tcp` then `_matrix._tcp`, then port 8448.

use crate::BoxFuture;
use crate::connect::{Destination, Dns, SrvTarget};
use hearth_core::ids::{Host, ServerName};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_PORT: u16 = 8448;
/// Synapse's constants (`well_known_resolver.py`), within the spec's bounds.
const WELL_KNOWN_DEFAULT_CACHE: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_MAX_CACHE: Duration = Duration::from_secs(48 * 3600);
const WELL_KNOWN_MIN_CACHE: Duration = Duration::from_secs(5 * 60);
const WELL_KNOWN_INVALID_CACHE: Duration = Duration::from_secs(3600);
const WELL_KNOWN_FIRST_BACKOFF: Duration = Duration::from_secs(2 * 60);
/// Hostnames whose `.well-known` answer (or failure) is remembered. Names
/// come from requests (X-Matrix origins, OpenID servers), so without a
/// bound anyone could grow the cache by inventing them; past this the
/// least recently used is forgotten and, if asked again, fetched again.
const WELL_KNOWN_CACHE_ENTRIES: usize = 4096;

/// What fetching `https://<hostname>/.well-known/matrix/server` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WellKnownFetch {
    /// An HTTP response after redirects: status, body, `Cache-Control` max-age.
    Response {
        status: u16,
        body: Vec<u8>,
        max_age: Option<Duration>,
    },
    /// No response at all: DNS, connection, TLS or timeout failure.
    Unreachable,
}

/// Fetches `.well-known/matrix/server` documents.
pub trait WellKnownSource: Send + Sync {
    fn fetch(&self, hostname: &str) -> BoxFuture<'_, WellKnownFetch>;
}

#[derive(Debug, Clone)]
struct CachedWellKnown {
    delegated: Option<ServerName>,
    expires: Instant,
    failures: u32,
}

/// Resolves server names to [`Destination`]s, caching `.well-known`.
#[derive(Clone)]
pub struct Resolver {
    dns: Arc<dyn Dns>,
    well_known: Arc<dyn WellKnownSource>,
    cache: Arc<Mutex<LruCache<String, CachedWellKnown>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(dns: Arc<dyn Dns>, well_known: Arc<dyn WellKnownSource>) -> Self {
        Self {
            dns,
            well_known,
            cache: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(WELL_KNOWN_CACHE_ENTRIES).expect("not zero"),
            ))),
        }
    }

    pub async fn resolve(&self, server: &ServerName) -> Destination {
        // Steps 1 and 2: an IP literal or an explicit port needs no lookup.
        if let Host::Ip(_) = server.host() {
            return direct(server, server.as_str());
        }
        if server.port().is_some() {
            return direct(server, server.as_str());
        }
        let hostname = server.hostname();
        // Step 3: delegation through .well-known.
        if let Some(delegated) = self.delegation(&hostname).await {
            if matches!(delegated.host(), Host::Ip(_)) || delegated.port().is_some() {
                return direct(&delegated, delegated.as_str());
            }
            return self.srv_or_default(&delegated.hostname()).await;
        }
        // Steps 4 to 6.
        self.srv_or_default(&hostname).await
    }

    /// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then 8448.
    /// `Host` and the certificate name stay the hostname, never the target.
    async fn srv_or_default(&self, hostname: &str) -> Destination {
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let name = format!("{prefix}.{hostname}");
            match self.dns.srv(&name).await {
                Ok(records) if !records.is_empty() => {
                    let endpoints = order_srv(records);
                    if endpoints.is_empty() {
                        // A lone "." target: the service is decidedly absent.
                        break;
                    }
                    return Destination {
                        endpoints,
                        tls_name: hostname.to_owned(),
                        host_header: hostname.to_owned(),
                        plain_http: false,
                        trusted: false,
                    };
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "SRV lookup failed"),
            }
        }
        Destination {
            endpoints: vec![(hostname.to_owned(), DEFAULT_PORT)],
            tls_name: hostname.to_owned(),
            host_header: hostname.to_owned(),
            plain_http: false,
            trusted: false,
        }
    }

    /// The delegated server name from `.well-known`, cached per the spec.
    async fn delegation(&self, hostname: &str) -> Option<ServerName> {
        let now = Instant::now();
        let previous = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(hostname).cloned()
        };
        if let Some(entry) = &previous
            && entry.expires > now
        {
            return entry.delegated.clone();
        }
        let fetched = self.well_known.fetch(hostname).await;
        let entry = match fetched {
            WellKnownFetch::Response {
                status: 200,
                body,
                max_age,
            } => match parse_well_known(&body) {
                Some(delegated) => CachedWellKnown {
                    delegated: Some(delegated),
                    expires: now
                        + max_age
                            .unwrap_or(WELL_KNOWN_DEFAULT_CACHE)
                            .clamp(WELL_KNOWN_MIN_CACHE, WELL_KNOWN_MAX_CACHE),
                    failures: 0,
                },
                None => invalid(now),
            },
            WellKnownFetch::Response { .. } => invalid(now),
            WellKnownFetch::Unreachable => {
                // Back off exponentially, up to the one hour the spec allows.
                let failures = previous.map_or(0, |p| p.failures) + 1;
                let backoff = WELL_KNOWN_FIRST_BACKOFF
                    .saturating_mul(1 << (failures - 1).min(10))
                    .min(WELL_KNOWN_INVALID_CACHE);
                CachedWellKnown {
                    delegated: None,
                    expires: now + backoff,
                    failures,
                }
            }
        };
        let delegated = entry.delegated.clone();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(hostname.to_owned(), entry);
        delegated
    }
}

fn invalid(now: Instant) -> CachedWellKnown {
    CachedWellKnown {
        delegated: None,
        expires: now + WELL_KNOWN_INVALID_CACHE,
        failures: 0,
    }
}

/// A destination that needs no SRV lookup: the name's own host and port.
fn direct(name: &ServerName, host_header: &str) -> Destination {
    Destination {
        endpoints: vec![(name.hostname(), name.port().unwrap_or(DEFAULT_PORT))],
        tls_name: name.hostname(),
        host_header: host_header.to_owned(),
        plain_http: false,
        trusted: false,
    }
}

/// The body is JSON whatever its Content-Type; `m.server` must be a string
/// that is a valid server name.
fn parse_well_known(body: &[u8]) -> Option<ServerName> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ServerName::parse(value.get("m.server")?.as_str()?).ok()
}

/// Lowest priority first; within a priority, heavier weight first. A single
/// "." target means the service is not offered.
fn order_srv(mut records: Vec<SrvTarget>) -> Vec<(String, u16)> {
    records.retain(|r| !r.target.is_empty() && r.target != ".");
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    records.into_iter().map(|r| (r.target, r.port)).collect()
}

/// Reads `max-age` from a `Cache-Control` header value.
pub fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, secs) = directive.trim().split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| secs.trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io;
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct FakeDns {
        srv: HashMap<String, Vec<SrvTarget>>,
    }

    impl Dns for FakeDns {
        fn srv(&self, name: &str) -> BoxFuture<'_, io::Result<Vec<SrvTarget>>> {
            let found = self.srv.get(name).cloned().unwrap_or_default();
            Box::pin(async move { Ok(found) })
        }
        fn ip(&self, _: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    struct FakeWellKnown {
        answers: HashMap<String, WellKnownFetch>,
        calls: AtomicUsize,
    }

    impl WellKnownSource for FakeWellKnown {
        fn fetch(&self, hostname: &str) -> BoxFuture<'_, WellKnownFetch> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answers
                .get(hostname)
                .cloned()
                .unwrap_or(WellKnownFetch::Response {
                    status: 404,
                    body: Vec::new(),
                    max_age: None,
                });
            Box::pin(async move { answer })
        }
    }

    fn srv(target: &str, port: u16, priority: u16, weight: u16) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port,
            target: target.to_owned(),
        }
    }

    fn well_known(body: &str) -> WellKnownFetch {
        WellKnownFetch::Response {
            status: 200,
            body: body.as_bytes().to_vec(),
            max_age: None,
        }
    }

    fn resolver(
        srv: &[(&str, Vec<SrvTarget>)],
        wk: &[(&str, WellKnownFetch)],
    ) -> (Resolver, Arc<FakeWellKnown>) {
        let dns = FakeDns {
            srv: srv
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        let wk = Arc::new(FakeWellKnown {
            answers: wk
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            calls: AtomicUsize::new(0),
        });
        (Resolver::new(Arc::new(dns), wk.clone()), wk)
    }

    async fn resolve(r: &Resolver, name: &str) -> Destination {
        r.resolve(&ServerName::parse(name).unwrap()).await
    }

    fn dest(endpoints: &[(&str, u16)], tls: &str, host: &str) -> Destination {
        Destination {
            endpoints: endpoints
                .iter()
                .map(|(h, p)| ((*h).to_owned(), *p))
                .collect(),
            tls_name: tls.to_owned(),
            host_header: host.to_owned(),
            plain_http: false,
            trusted: false,
        }
    }

    /// Step 1: IP literal, with and without port; no lookups at all.
    #[tokio::test]
    async fn ip_literals() {
        let (r, wk) = resolver(&[], &[]);
        assert_eq!(
            resolve(&r, "1.2.3.4").await,
            dest(&[("1.2.3.4", 8448)], "1.2.3.4", "1.2.3.4")
        );
        assert_eq!(
            resolve(&r, "[2001:db8::1]:8000").await,
            dest(
                &[("2001:db8::1", 8000)],
                "2001:db8::1",
                "[2001:db8::1]:8000"
            )
        );
        assert_eq!(wk.calls.load(Ordering::SeqCst), 0);
    }

    /// Step 2: hostname with explicit port; Host keeps the port.
    #[tokio::test]
    async fn explicit_port() {
        let (r, wk) = resolver(&[], &[]);
        assert_eq!(
            resolve(&r, "example.org:8008").await,
            dest(&[("example.org", 8008)], "example.org", "example.org:8008")
        );
        assert_eq!(wk.calls.load(Ordering::SeqCst), 0);
    }

    /// Step 3.1: delegation to an IP literal.
    #[tokio::test]
    async fn well_known_to_ip() {
        let (r, _) = resolver(
            &[],
            &[("example.org", well_known(r#"{"m.server":"5.6.7.8"}"#))],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(&[("5.6.7.8", 8448)], "5.6.7.8", "5.6.7.8")
        );
    }

    /// Step 3.2: delegated hostname with port.
    #[tokio::test]
    async fn well_known_with_port() {
        let (r, _) = resolver(
            &[(
                "_matrix-fed._tcp.matrix.example.org",
                vec![srv("ignored", 1, 0, 0)],
            )],
            &[(
                "example.org",
                well_known(r#"{"m.server":"matrix.example.org:443"}"#),
            )],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                &[("matrix.example.org", 443)],
                "matrix.example.org",
                "matrix.example.org:443"
            )
        );
    }

    /// Step 3.3: delegated hostname without port, `_matrix-fed` SRV; Host and
    /// the certificate name are the delegated hostname, not the SRV target.
    #[tokio::test]
    async fn well_known_then_matrix_fed_srv() {
        let (r, _) = resolver(
            &[
                (
                    "_matrix-fed._tcp.hs.example.org",
                    vec![
                        srv("b.example.net", 8449, 10, 0),
                        srv("a.example.net", 8448, 5, 0),
                    ],
                ),
                (
                    "_matrix._tcp.hs.example.org",
                    vec![srv("legacy.example.net", 1, 0, 0)],
                ),
            ],
            &[(
                "example.org",
                well_known(r#"{"m.server":"hs.example.org"}"#),
            )],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                &[("a.example.net", 8448), ("b.example.net", 8449)],
                "hs.example.org",
                "hs.example.org"
            )
        );
    }

    /// Step 3.4: the deprecated `_matrix._tcp` record after delegation.
    #[tokio::test]
    async fn well_known_then_legacy_srv() {
        let (r, _) = resolver(
            &[(
                "_matrix._tcp.hs.example.org",
                vec![srv("legacy.example.net", 9000, 0, 0)],
            )],
            &[(
                "example.org",
                well_known(r#"{"m.server":"hs.example.org"}"#),
            )],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                &[("legacy.example.net", 9000)],
                "hs.example.org",
                "hs.example.org"
            )
        );
    }

    /// Step 3.5: delegated hostname, no SRV: port 8448.
    #[tokio::test]
    async fn well_known_without_srv() {
        let (r, _) = resolver(
            &[],
            &[(
                "example.org",
                well_known(r#"{"m.server":"hs.example.org"}"#),
            )],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                &[("hs.example.org", 8448)],
                "hs.example.org",
                "hs.example.org"
            )
        );
    }

    /// Steps 4 and 5: no usable .well-known, then SRV on the hostname itself.
    #[tokio::test]
    async fn srv_without_well_known() {
        let (r, _) = resolver(
            &[(
                "_matrix-fed._tcp.example.org",
                vec![srv("fed.example.org", 443, 0, 0)],
            )],
            &[],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(&[("fed.example.org", 443)], "example.org", "example.org")
        );
        let (r, _) = resolver(
            &[(
                "_matrix._tcp.example.org",
                vec![srv("old.example.org", 8000, 0, 0)],
            )],
            &[],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(&[("old.example.org", 8000)], "example.org", "example.org")
        );
    }

    /// Step 6: nothing at all: the hostname on 8448. A "." SRV target means
    /// the service is absent and falls through to the same default.
    #[tokio::test]
    async fn plain_hostname() {
        let (r, _) = resolver(
            &[("_matrix-fed._tcp.example.org", vec![srv(".", 0, 0, 0)])],
            &[],
        );
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(&[("example.org", 8448)], "example.org", "example.org")
        );
    }

    /// Invalid .well-known answers (bad JSON, wrong types, non-200, an
    /// invalid server name) are all "no delegation".
    #[tokio::test]
    async fn invalid_well_known_is_ignored() {
        for body in [
            WellKnownFetch::Response {
                status: 500,
                body: br#"{"m.server":"x.org"}"#.to_vec(),
                max_age: None,
            },
            well_known("not json"),
            well_known(r#"{"m.server":42}"#),
            well_known(r#"{"other":"x.org"}"#),
            well_known(r#"{"m.server":"bad name!"}"#),
            WellKnownFetch::Unreachable,
        ] {
            let (r, _) = resolver(&[], &[("example.org", body)]);
            assert_eq!(
                resolve(&r, "example.org").await,
                dest(&[("example.org", 8448)], "example.org", "example.org")
            );
        }
    }

    /// Results are cached, successful or not: a second resolution does not
    /// fetch again.
    #[tokio::test]
    async fn well_known_is_cached() {
        let (r, wk) = resolver(
            &[],
            &[(
                "example.org",
                well_known(r#"{"m.server":"hs.example.org:443"}"#),
            )],
        );
        resolve(&r, "example.org").await;
        resolve(&r, "example.org").await;
        assert_eq!(wk.calls.load(Ordering::SeqCst), 1);
        resolve(&r, "missing.org").await;
        resolve(&r, "missing.org").await;
        assert_eq!(wk.calls.load(Ordering::SeqCst), 2);
    }

    /// Issue 10 item 8: 3,000 invented origins grew memory by 0.8 MB. The
    /// cache keeps at most its bound, dropping the least recently used, so
    /// a name in use stays cached through a spray of invented ones.
    #[tokio::test]
    async fn the_cache_is_bounded_and_keeps_names_in_use() {
        let (r, wk) = resolver(
            &[],
            &[(
                "example.org",
                well_known(r#"{"m.server":"hs.example.org:443"}"#),
            )],
        );
        resolve(&r, "example.org").await;
        for i in 0..WELL_KNOWN_CACHE_ENTRIES + 500 {
            resolve(&r, &format!("invented{i}.test")).await;
            if i % 1000 == 0 {
                resolve(&r, "example.org").await;
            }
        }
        let held = r.cache.lock().unwrap().len();
        assert_eq!(held, WELL_KNOWN_CACHE_ENTRIES);
        let calls = wk.calls.load(Ordering::SeqCst);
        resolve(&r, "example.org").await;
        assert_eq!(wk.calls.load(Ordering::SeqCst), calls, "still cached");
    }

    #[test]
    fn reads_max_age() {
        assert_eq!(
            cache_max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cache_max_age("no-store"), None);
    }
}
