//! The trusted key server (Server-Server API "Retrieving server keys").
//!
//! - `server` publishes this server's own keys at `/_matrix/key/v2/server`.
//! - `query` answers `/_matrix/key/v2/query` for any server: from a fresh
//!   cache entry, else from the origin itself, else (only when the origin
//!   cannot be reached) from the upstream notaries the operator trusts,
//!   else from the last entry it has, however stale. Every key it returns
//!   was verified, carries the origin's signature and gains ours.
//!
//! Keys live in the process's shared [`KeyStore`] (in the database, so a
//! restart or another instance on the same PostgreSQL keeps them); the
//! notary keeps a bounded layer of copies already signed by this server, so
//! a cached answer costs no signing. Servers asked about recently are
//! refreshed ahead of expiry by a background task.

mod config;
mod query;
mod server;
mod upstream;

pub use config::{Config, Upstream};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use hearth_core::ids::ServerName;
use hearth_core::keys::KeyRing;
use hearth_core::storage::Schema;
use hearth_core::time::now_ms;
use hearth_federation::KeyStore;
use hearth_federation::keys::ServerKeys;
use hearth_service::{BoxFuture, Context, HttpPolicy, Parts, Routes, Service, ServiceError, Task};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

/// Servers whose signed copies and last query times are kept in memory.
const MEMORY_ENTRIES: usize = 10_000;
/// How often the refresh task looks for entries about to go stale.
const REFRESH_EVERY: StdDuration = StdDuration::from_secs(30);
/// After the origin answered, a key id it did not list is not asked for
/// again for this long: random key ids must not turn into a fetch each.
const UNKNOWN_KEY_ID_BACKOFF_MS: i64 = 30_000;
/// Origins fetched at once for one query.
const CONCURRENT_FETCHES: usize = 16;

/// What the notary's routes need.
#[derive(Debug)]
pub struct Notary {
    pub server_name: ServerName,
    pub keys: KeyRing,
    pub config: Config,
    store: KeyStore,
    upstream: Vec<upstream::Notary>,
    memory: Mutex<Memory>,
}

#[derive(Debug)]
struct Memory {
    /// Responses as served: the origin's object with our signatures added,
    /// made once per fetched response.
    signed: LruCache<ServerName, Arc<Signed>>,
    /// When each server was last asked about, for the refresh task.
    asked: LruCache<ServerName, i64>,
    /// Our own keys as served, and when they were made.
    own: Option<(i64, Bytes)>,
}

/// One server's keys as served.
#[derive(Debug)]
struct Signed {
    keys: Arc<ServerKeys>,
    json: Bytes,
}

/// The router state: a cheap handle on [`Notary`].
pub type NotaryState = Arc<Notary>;

impl Notary {
    pub fn new(
        server_name: ServerName,
        keys: KeyRing,
        config: Config,
        store: KeyStore,
    ) -> Result<Self, ServiceError> {
        let upstream = config
            .upstream
            .iter()
            .enumerate()
            .map(|(i, u)| upstream::Notary::parse(u, i))
            .collect::<Result<_, _>>()
            .map_err(ServiceError::Config)?;
        let size = NonZeroUsize::new(MEMORY_ENTRIES).expect("not zero");
        Ok(Self {
            server_name,
            keys,
            config,
            store,
            upstream,
            memory: Mutex::new(Memory {
                signed: LruCache::new(size),
                asked: LruCache::new(size),
                own: None,
            }),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The notary's tables are the shared key store's.
pub static SCHEMA: &Schema = &hearth_federation::SCHEMA;

impl Service for Config {
    fn name(&self) -> &'static str {
        "notary"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn schema(&self) -> &'static Schema {
        SCHEMA
    }

    fn check(&self, _: &ServerName) -> Result<(), ServiceError> {
        for (i, u) in self.upstream.iter().enumerate() {
            upstream::Notary::parse(u, i).map_err(ServiceError::Config)?;
        }
        Ok(())
    }

    fn build<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Parts, ServiceError>> {
        Box::pin(async move {
            let notary = Arc::new(Notary::new(
                ctx.server_name.clone(),
                ctx.keys.clone(),
                self.clone(),
                ctx.remote_keys.clone(),
            )?);
            let mut summary =
                vec!["notary    /_matrix/key/v2/server, /_matrix/key/v2/query".to_owned()];
            if !notary.upstream.is_empty() {
                let names: Vec<String> = notary
                    .upstream
                    .iter()
                    .map(|u| u.server_name.to_string())
                    .collect();
                summary.push(format!(
                    "notary    upstream when an origin is unreachable: {}",
                    names.join(", ")
                ));
            }
            Ok(Parts {
                routes: Some(Routes {
                    router: router(notary.clone()),
                    policy: HttpPolicy::from_http(&ctx.http),
                }),
                tasks: vec![Task::new(
                    "notary refresh",
                    run_refresh(notary, ctx.shutdown.wait()),
                )],
                summary,
                advice: Vec::new(),
                // Keys, upstreams and cache bounds are read at start.
                reload: None,
            })
        })
    }
}

pub fn router(state: NotaryState) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server::get_server_key))
        .route("/_matrix/key/v2/query", post(query::query_keys))
        .route("/_matrix/key/v2/query/{server_name}", get(query::get_keys))
        .with_state(state)
}

/// Refreshes, ahead of expiry, the servers asked about within
/// `refresh_window`, so a homeserver asking again finds them fresh.
pub async fn run_refresh(state: NotaryState, shutdown: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        refresh_due(&state, now_ms()).await;
    }
}

/// One round of the refresh task at time `now`: every server asked about
/// within `refresh_window` whose entry passes half its life before the next
/// round is fetched again. Returns how many were.
pub async fn refresh_due(state: &NotaryState, now: i64) -> usize {
    let window = state.config.refresh_window.as_millis_i64();
    let recent: Vec<ServerName> = state
        .memory()
        .asked
        .iter()
        .filter(|(_, asked)| now - **asked < window)
        .map(|(server, _)| server.clone())
        .collect();
    let mut refreshed = 0;
    for server in recent {
        let due = match state.store.cached(&server).await {
            Ok(Some(keys)) => query::refresh_at(&keys) <= now + REFRESH_EVERY.as_millis() as i64,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "reading cached keys failed");
                false
            }
        };
        if due && query::fetch(state, &server, &[], now).await.is_some() {
            refreshed += 1;
        }
    }
    refreshed
}
