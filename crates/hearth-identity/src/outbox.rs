//! The `onbind` outbox: callbacks queued by binds (`identity_onbind_outbox`)
//! and delivered to homeservers by [`run_outbox`], with exponential backoff
//! for `identity.invites.onbind_retry_for`.
//!
//! Several instances may share the database: a worker claims a row before
//! sending it by moving its `next_attempt_ts` forward by a lease, with a
//! compare-and-set on the old value, so one instance sends at a time. A
//! worker that dies mid-send leaves the row to be retried when the lease
//! runs out.
//!
//! The callback is a POST, as the spec's prose says, Sydent sends it and
//! Synapse and Dendrite serve it (`On3pidBindServlet`, `REQUIRE_AUTH =
//! False`). The Server-Server API's OpenAPI says PUT, and ruma-based
//! servers (Conduit, conduwuit, tuwunel) route only PUT: a 404 or 405 to
//! one method is retried at once with the other, and the method that worked
//! is remembered per destination ([`Methods`]). The shared federation
//! client sends an unsigned body only by POST, so the PUT carries an
//! X-Matrix signature, which the spec's unauthenticated endpoint ignores.

use crate::IdentityState;
use hearth_core::MatrixError;
use hearth_core::ids::ServerName;
use hearth_core::time::now_ms;
use hearth_federation::FederationError;
use http::{Method, StatusCode};
use serde_json::Value;
use sqlx::Row;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const ONBIND_PATH: &str = "/_matrix/federation/v1/3pid/onbind";
/// Rows claimed per round; a full round is followed by another at once.
const BATCH: i64 = 32;
/// After a wake-up, polls this often for [`FAST_POLL_FOR`]: the bind that
/// woke us may commit a moment after it queued its row.
const FAST_POLL: Duration = Duration::from_millis(100);
const FAST_POLL_FOR: Duration = Duration::from_secs(2);

/// Destinations known to take `onbind` only by PUT. Bounded: past
/// [`Methods::MAX`] entries it starts afresh, costing one 404 or 405 each.
#[derive(Debug, Default)]
pub(crate) struct Methods(Mutex<HashMap<String, Method>>);

impl Methods {
    const MAX: usize = 10_000;

    fn get(&self, destination: &ServerName) -> Method {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(destination.as_str())
            .cloned()
            .unwrap_or(Method::POST)
    }

    fn set(&self, destination: &ServerName, method: Method) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if method == Method::POST {
            map.remove(destination.as_str());
            return;
        }
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(destination.as_str().to_owned(), method);
    }
}

/// Sends one callback by `method`.
async fn send(
    state: &IdentityState,
    destination: &ServerName,
    method: &Method,
    body: &Value,
) -> Result<Value, FederationError> {
    if method == Method::PUT {
        state
            .federation
            .send_signed(destination, Method::PUT, ONBIND_PATH, Some(body))
            .await
    } else {
        state
            .federation
            .post_json(destination, ONBIND_PATH, body)
            .await
    }
}

/// POST or PUT, whichever the destination is known to take; on 404 or
/// 405 the other one at once, remembered if it works.
async fn send_either(
    state: &IdentityState,
    destination: &ServerName,
    body: &Value,
) -> Result<Value, FederationError> {
    let first = state.onbind_methods.get(destination);
    let result = send(state, destination, &first, body).await;
    let unrouted = matches!(
        &result,
        Err(FederationError::Status { status, .. })
            if *status == StatusCode::NOT_FOUND || *status == StatusCode::METHOD_NOT_ALLOWED
    );
    if !unrouted {
        return result;
    }
    let other = if first == Method::POST {
        Method::PUT
    } else {
        Method::POST
    };
    let retried = send(state, destination, &other, body).await;
    if matches!(retried, Ok(_) | Err(FederationError::NotJson { .. })) {
        tracing::info!(%destination, method = %other, "onbind is taken by this method here");
        state.onbind_methods.set(destination, other);
    }
    retried
}

/// How the worker paces itself. [`Default`] is what production uses; tests
/// shorten it.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// How often the table is polled for due rows.
    pub poll_interval: Duration,
    /// The wait after the first failure; it doubles per failure...
    pub backoff_base: Duration,
    /// ...up to this.
    pub backoff_cap: Duration,
    /// How long a claimed row is left to its sender before another worker
    /// may take it; longer than any request lasts.
    pub lease: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(3600),
            lease: Duration::from_secs(300),
        }
    }
}

/// Wakes workers in this process: each holds its own receiver, so no
/// wake-up is lost while a worker is busy.
fn wake_channel() -> &'static watch::Sender<()> {
    static WAKE: OnceLock<watch::Sender<()>> = OnceLock::new();
    WAKE.get_or_init(|| watch::channel(()).0)
}

/// Asks the workers to look at the outbox now rather than at their next
/// poll.
pub(crate) fn wake() {
    wake_channel().send_modify(|()| {});
}

/// Queues `body` for `destination` inside the caller's transaction, due now.
pub(crate) async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    destination: &ServerName,
    body: &Value,
) -> Result<(), MatrixError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO identity_onbind_outbox (destination, body, attempts, next_attempt_ts, created_ts)
         VALUES ($1, $2, 0, $3, $3)",
    )
    .bind(destination.as_str())
    .bind(body.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    wake();
    Ok(())
}

/// Delivers queued `onbind` callbacks until `shutdown` resolves. Sends in
/// flight at shutdown are abandoned; their rows are retried (by any
/// instance) once their lease runs out.
pub async fn run_outbox(state: IdentityState, shutdown: impl Future<Output = ()>) {
    run_outbox_with(state, OutboxSettings::default(), shutdown).await;
}

/// [`run_outbox`] with explicit pacing.
pub async fn run_outbox_with(
    state: IdentityState,
    settings: OutboxSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut woken = wake_channel().subscribe();
    tokio::pin!(shutdown);
    let mut fast_until: Option<Instant> = None;
    loop {
        let round = tokio::select! {
            () = &mut shutdown => return,
            round = deliver_due(&state, &settings) => round,
        };
        let full = match round {
            Ok(claimed) => claimed >= BATCH,
            Err(e) => {
                tracing::warn!(error = %e, "reading the onbind outbox failed; will retry");
                false
            }
        };
        if full {
            continue;
        }
        let wait = match fast_until {
            Some(until) if Instant::now() < until => FAST_POLL.min(settings.poll_interval),
            _ => settings.poll_interval,
        };
        tokio::select! {
            () = &mut shutdown => return,
            changed = woken.changed() => {
                if changed.is_ok() {
                    fast_until = Some(Instant::now() + FAST_POLL_FOR);
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[derive(Debug)]
struct Entry {
    id: i64,
    destination: String,
    body: String,
    attempts: i64,
    next_attempt_ts: i64,
    created_ts: i64,
}

/// One round: claims the due rows and sends them all at once. Returns how
/// many rows were due.
async fn deliver_due(state: &IdentityState, settings: &OutboxSettings) -> Result<i64, MatrixError> {
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT id, destination, body, attempts, next_attempt_ts, created_ts
         FROM identity_onbind_outbox WHERE next_attempt_ts <= $1
         ORDER BY next_attempt_ts, id LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(state.db.pool())
    .await?;
    let due = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let mut sends = tokio::task::JoinSet::new();
    let mut failed = None;
    for row in rows {
        match claim(state, settings, &row, now).await {
            Ok(Some(entry)) => {
                let state = state.clone();
                let settings = settings.clone();
                sends.spawn(async move {
                    if let Err(e) = deliver(&state, &settings, &entry).await {
                        tracing::warn!(error = %e, "recording an onbind attempt failed; the lease will expire");
                    }
                });
            }
            // Another worker took it.
            Ok(None) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Sends already under way finish even when claiming failed.
    while sends.join_next().await.is_some() {}
    failed.map_or(Ok(due), Err)
}

/// Takes `row` for this worker by moving its due time a lease ahead,
/// provided no other worker moved it first.
async fn claim(
    state: &IdentityState,
    settings: &OutboxSettings,
    row: &sqlx::any::AnyRow,
    now: i64,
) -> Result<Option<Entry>, MatrixError> {
    let entry = Entry {
        id: row.try_get("id")?,
        destination: row.try_get("destination")?,
        body: row.try_get("body")?,
        attempts: row.try_get("attempts")?,
        next_attempt_ts: row.try_get("next_attempt_ts")?,
        created_ts: row.try_get("created_ts")?,
    };
    let claimed = sqlx::query(
        "UPDATE identity_onbind_outbox SET next_attempt_ts = $1
         WHERE id = $2 AND next_attempt_ts = $3",
    )
    .bind(now + millis(settings.lease))
    .bind(entry.id)
    .bind(entry.next_attempt_ts)
    .execute(state.db.pool())
    .await?;
    Ok((claimed.rows_affected() == 1).then_some(entry))
}

/// Sends one claimed row, then deletes it or schedules its next attempt.
async fn deliver(
    state: &IdentityState,
    settings: &OutboxSettings,
    entry: &Entry,
) -> Result<(), MatrixError> {
    let destination = ServerName::parse(&entry.destination);
    let body = serde_json::from_str::<Value>(&entry.body);
    let (Ok(destination), Ok(body)) = (destination, body) else {
        tracing::error!(id = entry.id, "dropping an unreadable onbind outbox row");
        return delete(state, entry.id).await;
    };
    let result = send_either(state, &destination, &body).await;
    match result {
        // A 2xx whose body is not JSON was still received.
        Ok(_) | Err(FederationError::NotJson { .. }) => {
            tracing::info!(%destination, attempts = entry.attempts + 1, "onbind callback delivered");
            delete(state, entry.id).await
        }
        Err(e) => {
            let attempts = entry.attempts + 1;
            let now = now_ms();
            let retry_for = state.config.invites.onbind_retry_for.as_millis_i64();
            if now.saturating_sub(entry.created_ts) >= retry_for {
                tracing::warn!(
                    %destination,
                    attempts,
                    error = %e,
                    "giving up on an onbind callback: the invites it carries are lost"
                );
                return delete(state, entry.id).await;
            }
            let delay = backoff(settings, attempts);
            tracing::info!(
                %destination,
                attempts,
                retry_in_ms = delay,
                error = %e,
                "onbind callback failed; will retry"
            );
            sqlx::query(
                "UPDATE identity_onbind_outbox SET attempts = $1, next_attempt_ts = $2 WHERE id = $3",
            )
            .bind(attempts)
            .bind(now + delay)
            .bind(entry.id)
            .execute(state.db.pool())
            .await?;
            Ok(())
        }
    }
}

async fn delete(state: &IdentityState, id: i64) -> Result<(), MatrixError> {
    sqlx::query("DELETE FROM identity_onbind_outbox WHERE id = $1")
        .bind(id)
        .execute(state.db.pool())
        .await?;
    Ok(())
}

/// Milliseconds to wait after the `attempts`-th failure: the base, doubled
/// per earlier failure, capped.
fn backoff(settings: &OutboxSettings, attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 32)).unwrap_or(32);
    let delay = millis(settings.backoff_base).saturating_mul(1_i64 << doublings);
    delay.min(millis(settings.backoff_cap)).max(1)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let settings = OutboxSettings::default();
        let delays: Vec<i64> = (1..=11).map(|n| backoff(&settings, n)).collect();
        assert_eq!(
            delays,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600].map(|s| s * 1000)
        );
        assert_eq!(backoff(&settings, 1000), 3_600_000);
    }
}
