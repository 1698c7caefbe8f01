//! Remote server keys: fetched from the origin's `/_matrix/key/v2/server`,
//! checked to be self-signed by the server they name, kept for as long as
//! they are valid (never longer than seven days, per room v5's rule), and
//! used to verify X-Matrix requests.
//!
//! One [`KeyStore`] per process serves every service. Verified responses
//! are stored in the database, so a restart (or another instance on the
//! same PostgreSQL) does not fetch them again; a bounded in-memory layer in
//! front saves the round trip for servers seen recently.

use crate::client::{FederationClient, FederationError};
use crate::xmatrix::{self, Destination, XMatrix, XMatrixError};
use hearth_core::canonical_json;
use hearth_core::ids::ServerName;
use hearth_core::keys::VerifyKey;
use hearth_core::signed_json;
use hearth_core::storage::{Database, Migration, Schema, StorageError};
use hearth_core::time::now_ms;
use lru::LruCache;
use serde_json::Value;
use sqlx::Row;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The federation crate's tables: other servers' verified keys.
pub static SCHEMA: Schema = Schema {
    component: "federation",
    depends_on: &[&hearth_core::storage::SCHEMA],
    migrations: &[Migration {
        description: "remote server keys",
        sql: include_str!("../migrations/0001_server_keys.sql"),
    }],
};

/// Servers whose keys, failures and refetches are remembered in memory.
const MEMORY_ENTRIES: usize = 10_000;

/// Servers MUST use the lesser of `valid_until_ts` and seven days ahead.
pub const MAX_KEY_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

/// A verified Server Keys object.
#[derive(Debug, Clone)]
pub struct ServerKeys {
    pub server_name: ServerName,
    pub verify_keys: BTreeMap<String, VerifyKey>,
    /// Key id to (key, `expired_ts`).
    pub old_verify_keys: BTreeMap<String, (VerifyKey, i64)>,
    /// As served; see [`ServerKeys::usable_until`] for the capped value.
    pub valid_until_ts: i64,
    pub fetched_ts: i64,
    /// The object exactly as received, signatures included.
    pub raw: Value,
}

impl ServerKeys {
    /// The time until which `verify_keys` may be used.
    pub fn usable_until(&self) -> i64 {
        self.valid_until_ts
            .min(self.fetched_ts.saturating_add(MAX_KEY_VALIDITY_MS))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error("key response for {server} is invalid: {reason}")]
    Invalid { server: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("fetching keys from {0} failed recently; not retrying yet")]
    BackingOff(String),
}

impl KeyFetchError {
    /// The origin could not be reached (as opposed to answering with keys
    /// that do not verify): the case for asking an upstream notary.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Federation(_) | Self::BackingOff(_))
    }
}

/// Parses a Server Keys object and checks it is signed by `expected` with
/// one of its own `verify_keys`.
pub fn verify_server_keys(
    raw: Value,
    expected: &ServerName,
    fetched_ts: i64,
) -> Result<ServerKeys, KeyFetchError> {
    let invalid = |reason: String| KeyFetchError::Invalid {
        server: expected.to_string(),
        reason,
    };
    // Floats or duplicate keys cannot be canonical, so the signature could
    // not have been made over what we see.
    canonical_json::to_string(&raw).map_err(|e| invalid(e.to_string()))?;
    let server_name = raw
        .get("server_name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no server_name".to_owned()))?;
    if server_name != expected.as_str() {
        return Err(invalid(format!("it names {server_name:?}")));
    }
    let valid_until_ts = raw
        .get("valid_until_ts")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid("no valid_until_ts".to_owned()))?;
    let parse_key = |id: &str, entry: &Value| {
        entry
            .get("key")
            .and_then(Value::as_str)
            .and_then(|k| VerifyKey::from_base64(k).ok())
            .ok_or_else(|| invalid(format!("key {id} is not an ed25519 key")))
    };
    let mut verify_keys = BTreeMap::new();
    for (id, entry) in raw
        .get("verify_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("no verify_keys".to_owned()))?
    {
        if id.starts_with("ed25519:") {
            verify_keys.insert(id.clone(), parse_key(id, entry)?);
        }
    }
    let mut old_verify_keys = BTreeMap::new();
    if let Some(old) = raw.get("old_verify_keys").and_then(Value::as_object) {
        for (id, entry) in old {
            if id.starts_with("ed25519:") {
                let expired_ts = entry
                    .get("expired_ts")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| invalid(format!("old key {id} has no expired_ts")))?;
                old_verify_keys.insert(id.clone(), (parse_key(id, entry)?, expired_ts));
            }
        }
    }
    signed_json::verify_json(
        &raw,
        expected.as_str(),
        verify_keys.iter().map(|(id, k)| (id.as_str(), k)),
    )
    .map_err(|e| invalid(e.to_string()))?;
    Ok(ServerKeys {
        server_name: expected.clone(),
        verify_keys,
        old_verify_keys,
        valid_until_ts,
        fetched_ts,
        raw,
    })
}

/// After a refetch for an unknown key id, the same server is not asked
/// again for this long: random key ids in forged requests must not turn
/// into a fetch each. It is also the first backoff after a failed fetch.
const REFETCH_BACKOFF: Duration = Duration::from_secs(30);

/// Backoff after failures doubles from [`REFETCH_BACKOFF`] up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Consecutive failed fetches from one server, and when the last one was.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn backoff(self) -> Duration {
        let doublings = self.count.saturating_sub(1).min(16);
        REFETCH_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }
}

#[derive(Debug)]
struct Cache {
    keys: LruCache<ServerName, Arc<ServerKeys>>,
    failed: LruCache<ServerName, Failures>,
    /// When this server was last refetched because a key id was unknown.
    refetched: LruCache<ServerName, Instant>,
    /// One gate per server being fetched, so concurrent callers share one
    /// fetch (entries go when the fetch ends).
    in_flight: std::collections::HashMap<ServerName, Arc<Gate>>,
}

/// Callers queue at the gate; `fetches` tells a caller whether a fetch
/// finished while it waited, whose result it then takes.
#[derive(Debug, Default)]
struct Gate {
    turn: tokio::sync::Mutex<()>,
    fetches: std::sync::atomic::AtomicU64,
}

/// Fetches, verifies and keeps other servers' keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyStore {
    client: FederationClient,
    db: Database,
    cache: Arc<Mutex<Cache>>,
}

impl KeyStore {
    pub fn new(client: FederationClient, db: Database) -> Self {
        let size = NonZeroUsize::new(MEMORY_ENTRIES).expect("not zero");
        Self {
            client,
            db,
            cache: Arc::new(Mutex::new(Cache {
                keys: LruCache::new(size),
                failed: LruCache::new(size),
                refetched: LruCache::new(size),
                in_flight: std::collections::HashMap::new(),
            })),
        }
    }

    /// The client the keys are fetched with.
    pub fn client(&self) -> &FederationClient {
        &self.client
    }

    /// `server`'s keys, usable until at least `minimum_valid_until_ts`:
    /// from memory or the database when they hold such, else straight from
    /// the origin.
    pub async fn server_keys(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: i64,
    ) -> Result<Arc<ServerKeys>, KeyFetchError> {
        let too_short = |keys: &ServerKeys| KeyFetchError::Invalid {
            server: server.to_string(),
            reason: format!("its keys are valid only until {}", keys.usable_until()),
        };
        if let Some(keys) = self.known(server, minimum_valid_until_ts).await? {
            if keys.usable_until() >= minimum_valid_until_ts {
                return Ok(keys);
            }
            // Fetched moments ago and still too short: asking again now
            // would only get the same answer.
            if now_ms() - keys.fetched_ts < REFETCH_BACKOFF.as_millis() as i64 {
                return Err(too_short(&keys));
            }
        }
        let keys = self.fetch_origin(server).await?;
        if keys.usable_until() < minimum_valid_until_ts {
            return Err(too_short(&keys));
        }
        Ok(keys)
    }

    /// The keys known for `server` without asking anyone: from memory,
    /// else from the database (another instance may have fetched them).
    /// They may be expired.
    pub async fn cached(
        &self,
        server: &ServerName,
    ) -> Result<Option<Arc<ServerKeys>>, KeyFetchError> {
        if let Some(keys) = self.cache().keys.get(server).cloned() {
            return Ok(Some(keys));
        }
        Ok(self.load(server).await?.map(|keys| self.remember(keys)))
    }

    /// Like [`KeyStore::cached`], but when memory holds keys too short-lived
    /// for `minimum_valid_until_ts`, the database is asked for newer ones
    /// another instance may have fetched.
    async fn known(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: i64,
    ) -> Result<Option<Arc<ServerKeys>>, KeyFetchError> {
        let Some(keys) = self.cached(server).await? else {
            return Ok(None);
        };
        if keys.usable_until() >= minimum_valid_until_ts {
            return Ok(Some(keys));
        }
        Ok(match self.load(server).await? {
            Some(stored) if stored.fetched_ts > keys.fetched_ts => Some(self.remember(stored)),
            _ => Some(keys),
        })
    }

    /// Keeps keys verified by other means (an upstream notary's answer,
    /// whose origin signature was checked) as if fetched from the origin.
    pub async fn insert(&self, keys: ServerKeys) -> Result<Arc<ServerKeys>, KeyFetchError> {
        self.store(&keys).await?;
        Ok(self.remember(keys))
    }

    fn remember(&self, keys: ServerKeys) -> Arc<ServerKeys> {
        let keys = Arc::new(keys);
        let mut cache = self.cache();
        let newer = cache
            .keys
            .peek(&keys.server_name)
            .is_none_or(|known| known.fetched_ts <= keys.fetched_ts);
        if newer {
            cache.keys.put(keys.server_name.clone(), keys.clone());
            keys
        } else {
            cache.keys.get(&keys.server_name).cloned().unwrap_or(keys)
        }
    }

    /// The stored response for `server`, checked again: the database is
    /// shared, and a row that no longer verifies is not trusted.
    async fn load(&self, server: &ServerName) -> Result<Option<ServerKeys>, KeyFetchError> {
        let row = sqlx::query(
            "SELECT response, fetched_ts FROM federation_server_keys WHERE server_name = $1",
        )
        .bind(server.as_str())
        .fetch_optional(self.db.pool())
        .await
        .map_err(StorageError::from)?;
        let Some(row) = row else { return Ok(None) };
        let response: String = row.try_get("response").map_err(StorageError::from)?;
        let fetched_ts: i64 = row.try_get("fetched_ts").map_err(StorageError::from)?;
        let parsed = canonical_json::parse(response.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|raw| verify_server_keys(raw, server, fetched_ts).map_err(|e| e.to_string()));
        match parsed {
            Ok(keys) => Ok(Some(keys)),
            Err(e) => {
                tracing::warn!(%server, error = %e, "a stored key response no longer verifies; ignoring it");
                Ok(None)
            }
        }
    }

    /// Keeps a verified response, unless a newer one is already stored.
    async fn store(&self, keys: &ServerKeys) -> Result<(), KeyFetchError> {
        // Verified objects are canonical already (`verify_server_keys`).
        let response =
            canonical_json::to_string(&keys.raw).map_err(|e| KeyFetchError::Invalid {
                server: keys.server_name.to_string(),
                reason: e.to_string(),
            })?;
        sqlx::query(
            "INSERT INTO federation_server_keys (server_name, response, fetched_ts, valid_until_ts)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (server_name) DO UPDATE SET
                 response = excluded.response,
                 fetched_ts = excluded.fetched_ts,
                 valid_until_ts = excluded.valid_until_ts
             WHERE federation_server_keys.fetched_ts <= excluded.fetched_ts",
        )
        .bind(keys.server_name.as_str())
        .bind(response)
        .bind(keys.fetched_ts)
        .bind(keys.valid_until_ts)
        .execute(self.db.pool())
        .await
        .map_err(StorageError::from)?;
        Ok(())
    }

    /// The current key `key_id` of `server`, valid now. An id missing from
    /// the cache triggers one refetch, so key rotation is noticed at once.
    async fn current_key(&self, server: &ServerName, key_id: &str) -> Result<VerifyKey, String> {
        let keys = self
            .server_keys(server, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(key) = keys.verify_keys.get(key_id) {
            return Ok(*key);
        }
        let recently = self
            .cache()
            .refetched
            .get(server)
            .is_some_and(|t| t.elapsed() < REFETCH_BACKOFF);
        if !recently {
            self.cache().refetched.put(server.clone(), Instant::now());
            let keys = self.fetch_origin(server).await.map_err(|e| e.to_string())?;
            if let Some(key) = keys.verify_keys.get(key_id)
                && keys.usable_until() >= now_ms()
            {
                return Ok(*key);
            }
        }
        Err(format!("{server} has no current key {key_id}"))
    }

    /// Fetches `server`'s keys from the server itself, verifies and keeps
    /// them. Concurrent calls for one server share one fetch; after
    /// failures the server is left alone for a doubling backoff.
    pub async fn fetch_origin(
        &self,
        server: &ServerName,
    ) -> Result<Arc<ServerKeys>, KeyFetchError> {
        use std::sync::atomic::Ordering;
        let gate = self
            .cache()
            .in_flight
            .entry(server.clone())
            .or_default()
            .clone();
        let seen = gate.fetches.load(Ordering::SeqCst);
        let result = {
            let _turn = gate.turn.lock().await;
            if gate.fetches.load(Ordering::SeqCst) == seen {
                let result = self.fetch_once(server).await;
                gate.fetches.fetch_add(1, Ordering::SeqCst);
                result
            } else {
                // Fetched while this caller waited: that answer is ours.
                match self.cache().keys.get(server) {
                    Some(keys) => Ok(keys.clone()),
                    None => Err(KeyFetchError::BackingOff(server.to_string())),
                }
            }
        };
        let mut cache = self.cache();
        // Ours and the map's: nobody else is waiting at this gate.
        if Arc::strong_count(&gate) <= 2 {
            cache.in_flight.remove(server);
        }
        result
    }

    async fn fetch_once(&self, server: &ServerName) -> Result<Arc<ServerKeys>, KeyFetchError> {
        if let Some(failures) = self.cache().failed.get(server).copied()
            && failures.last.elapsed() < failures.backoff()
        {
            return Err(KeyFetchError::BackingOff(server.to_string()));
        }
        let fetched_ts = now_ms();
        let result = match self.client.get_json(server, "/_matrix/key/v2/server").await {
            Ok(raw) => verify_server_keys(raw, server, fetched_ts),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(keys) => {
                self.store(&keys).await?;
                self.cache().failed.pop(server);
                Ok(self.remember(keys))
            }
            Err(e) => {
                let mut cache = self.cache();
                let count = cache.failed.peek(server).map_or(0, |f| f.count) + 1;
                cache.failed.put(
                    server.clone(),
                    Failures {
                        count,
                        last: Instant::now(),
                    },
                );
                Err(e)
            }
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies an X-Matrix request meant for `ours` and returns its origin.
    /// The signing key must be one of the origin's current keys, valid now.
    pub async fn verify_request(
        &self,
        authorization: &str,
        method: &str,
        uri: &str,
        content: Option<&Value>,
        ours: &Destination,
    ) -> Result<ServerName, XMatrixError> {
        let header = XMatrix::parse(authorization)?;
        xmatrix::check_destination(&header, ours)?;
        let key = self
            .current_key(&header.origin, &header.key)
            .await
            .map_err(XMatrixError::Signature)?;
        let mut json = xmatrix::request_json(method, uri, &header.origin, ours, content);
        json["signatures"] =
            serde_json::json!({ header.origin.as_str(): { header.key.as_str(): header.sig } });
        signed_json::verify_json(&json, header.origin.as_str(), [(header.key.as_str(), &key)])
            .map_err(|e| XMatrixError::Signature(e.to_string()))?;
        Ok(header.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::keys::SigningKey;
    use serde_json::json;

    fn keys_object(key: &SigningKey, name: &str, valid_until_ts: i64) -> Value {
        let mut raw = json!({
            "server_name": name,
            "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
            "old_verify_keys": { "ed25519:old": { "key": key.public_key_base64(), "expired_ts": 5 } },
            "valid_until_ts": valid_until_ts,
        });
        signed_json::sign_json(&mut raw, name, key).unwrap();
        raw
    }

    #[test]
    fn accepts_self_signed_keys_and_caps_validity_at_seven_days() {
        let key = SigningKey::generate();
        let name = ServerName::parse("hs.example").unwrap();
        let keys = verify_server_keys(
            keys_object(&key, "hs.example", canonical_json::MAX_SAFE_INTEGER),
            &name,
            1_000,
        )
        .unwrap();
        assert_eq!(keys.verify_keys.len(), 1);
        assert_eq!(keys.old_verify_keys["ed25519:old"].1, 5);
        assert_eq!(keys.usable_until(), 1_000 + MAX_KEY_VALIDITY_MS);
        let short =
            verify_server_keys(keys_object(&key, "hs.example", 2_000), &name, 1_000).unwrap();
        assert_eq!(short.usable_until(), 2_000);
    }

    #[test]
    fn rejects_keys_for_another_server_unsigned_or_tampered() {
        let key = SigningKey::generate();
        let name = ServerName::parse("hs.example").unwrap();
        let other = keys_object(&key, "evil.example", 10);
        assert!(verify_server_keys(other, &name, 0).is_err());

        let mut unsigned = keys_object(&key, "hs.example", 10);
        unsigned.as_object_mut().unwrap().remove("signatures");
        assert!(verify_server_keys(unsigned, &name, 0).is_err());

        let mut tampered = keys_object(&key, "hs.example", 10);
        tampered["valid_until_ts"] = json!(11);
        assert!(verify_server_keys(tampered, &name, 0).is_err());

        // Signed by a key that is not among its own verify_keys.
        let stranger = SigningKey::generate();
        let mut foreign = keys_object(&key, "hs.example", 10);
        foreign.as_object_mut().unwrap().remove("signatures");
        signed_json::sign_json(&mut foreign, "hs.example", &stranger).unwrap();
        assert!(verify_server_keys(foreign, &name, 0).is_err());
    }
}
