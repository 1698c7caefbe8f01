//! Hashed association lookup (spec "Association lookup", MSC2134).
//!
//! Lookups are answered from an in-memory index: every binding hashed under
//! the current pepper, so a request costs one map probe per address, never
//! a hash per stored binding nor a database query per address.
//!
//! The pepper lives in the database, one row per rotation epoch, so
//! instances sharing a database agree on it. Each instance builds its index
//! from `identity_associations` when it sees a new pepper, and follows
//! binds and unbinds (its own at once, other instances' within a second)
//! through `identity_lookup_changes`, a short log written in the same
//! transaction as each change. `/hash_details` hands out the pepper of the
//! index this instance has loaded, so a client never gets a pepper its
//! lookups would be refused for.

use crate::IdentityState;
use crate::params::Body;
use crate::threepid::{EMAIL, MSISDN};
use axum::extract::State;
use futures_util::TryStreamExt;
use hearth_auth::TermsAccepted;
use hearth_core::config::Duration;
use hearth_core::storage::{Backend, Database};
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const SHA256: &str = "sha256";
const NONE: &str = "none";

fn new_pepper() -> String {
    // 32 alphanumerics (MSC2134's pepper grammar) carry over 190 bits.
    hearth_core::random::string(32, hearth_core::random::ALPHANUMERIC)
}

/// Rotates the pepper when the current one is from an earlier epoch (or
/// there is none yet); each instance's index follows on its next refresh.
/// Returns the current pepper either way. Safe to call from several
/// instances at once.
pub async fn rotate_pepper_if_due(db: &Database, every: Duration) -> Result<String, MatrixError> {
    let every_ms = every.as_millis_i64().max(60_000);
    // The epoch is the start of the current period in ms, so it still
    // compares right after the operator changes the period.
    let epoch = now_ms() / every_ms * every_ms;
    // SQLite: take the write lock up front, or two instances that both
    // read the old pepper deadlock on upgrading their read locks.
    let mut tx = match db.backend() {
        Backend::Sqlite => db.pool().begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => db.pool().begin().await?,
    };
    let latest =
        sqlx::query("SELECT epoch, pepper FROM identity_peppers ORDER BY epoch DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(row) = &latest {
        let current_epoch: i64 = row.try_get("epoch")?;
        if current_epoch >= epoch {
            return Ok(row.try_get("pepper")?);
        }
    }
    let pepper = new_pepper();
    let inserted = sqlx::query(
        "INSERT INTO identity_peppers (epoch, pepper, created_ts) VALUES ($1, $2, $3)
         ON CONFLICT (epoch) DO NOTHING",
    )
    .bind(epoch)
    .bind(&pepper)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        // Another instance rotated first; use its pepper.
        tx.rollback().await?;
        return current(db)
            .await?
            .ok_or_else(|| MatrixError::internal("pepper vanished during rotation"));
    }
    sqlx::query("DELETE FROM identity_peppers WHERE epoch < $1")
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!("rotated the lookup pepper");
    Ok(pepper)
}

/// Records that the binding of a 3PID changed (`mxid` `None`: removed),
/// with the address's lower-cased alias if it has one, inside the caller's
/// transaction, for every instance's index to follow.
pub(crate) async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    medium: &str,
    address: &str,
    lookup_alias: Option<&str>,
    mxid: Option<&str>,
) -> Result<(), MatrixError> {
    sqlx::query(
        "INSERT INTO identity_lookup_changes (medium, address, lookup_alias, mxid, ts)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(medium)
    .bind(address)
    .bind(lookup_alias)
    .bind(mxid)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Changes older than this are pruned; an instance that has not refreshed
/// for half of it rebuilds its index instead of reading changes.
const CHANGE_RETENTION_MS: i64 = 3600 * 1000;
/// How stale an instance may be about other instances' binds.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Changes re-read behind the last one applied: PostgreSQL hands out
/// sequence numbers before commit, so a lower one can appear late.
/// Re-applying in order is harmless, since each change states the result.
const CHANGE_LOOKBACK: i64 = 1000;

type Digest32 = [u8; 32];

#[derive(Debug, Default)]
struct Snapshot {
    /// False until the first build.
    built: bool,
    pepper: String,
    /// The last change applied.
    seq: i64,
    refreshed: Option<std::time::Instant>,
    mxids: HashMap<Digest32, Arc<str>>,
}

/// This instance's lookup index (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LookupIndex {
    snapshot: RwLock<Snapshot>,
    /// Serialises refreshes; lookups meanwhile use the current snapshot.
    refreshing: tokio::sync::Mutex<()>,
}

fn digest(address: &str, medium: &str, pepper: &str) -> Digest32 {
    Sha256::digest(format!("{address} {medium} {pepper}").as_bytes()).into()
}

/// The hashes a binding is found by: its stored address; for email also
/// the lower-cased form Element hashes (`lookup_alias`) and the case-folded
/// one the spec names (which differs from the stored address only for
/// bindings stored lower-cased, before addresses were case-folded).
fn keys(medium: &str, address: &str, lookup_alias: Option<&str>, pepper: &str) -> Vec<Digest32> {
    let mut keys = vec![digest(address, medium, pepper)];
    if medium == EMAIL {
        keys.extend(lookup_alias.map(|alias| digest(alias, medium, pepper)));
        if !address.is_ascii() {
            let folded = crate::threepid::case_fold(address);
            if folded != address {
                keys.push(digest(&folded, medium, pepper));
            }
        }
    }
    keys
}

fn put(mxids: &mut HashMap<Digest32, Arc<str>>, keys: Vec<Digest32>, mxid: Option<&str>) {
    let mxid: Option<Arc<str>> = mxid.map(Arc::from);
    for key in keys {
        match &mxid {
            Some(mxid) => mxids.insert(key, mxid.clone()),
            None => mxids.remove(&key),
        };
    }
}

impl LookupIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies this instance's own change at once, after its commit.
    pub(crate) fn apply(
        &self,
        medium: &str,
        address: &str,
        lookup_alias: Option<&str>,
        mxid: Option<&str>,
    ) {
        let mut snapshot = self.write();
        let keys = keys(medium, address, lookup_alias, &snapshot.pepper);
        put(&mut snapshot.mxids, keys, mxid);
    }

    /// Brings the index up to date and returns the pepper it is built for.
    /// Within a second of the last refresh the index answers as it is, with
    /// no database query, unless the caller `expected` another pepper (a
    /// rotation another instance made, which is then checked at once);
    /// otherwise a new pepper in the database means a rebuild, and other
    /// instances' changes are read.
    pub(crate) async fn refresh(
        &self,
        state: &IdentityState,
        expected: Option<&str>,
    ) -> Result<String, MatrixError> {
        {
            let s = self.read();
            if s.built
                && s.refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY)
                && expected.is_none_or(|p| p == s.pepper)
            {
                return Ok(s.pepper.clone());
            }
        }
        let pepper = match current(&state.db).await? {
            Some(pepper) => pepper,
            None => rotate_pepper_if_due(&state.db, state.config.pepper_rotation).await?,
        };
        let fresh = |s: &Snapshot| {
            s.built
                && s.pepper == pepper
                && s.refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY)
        };
        if fresh(&self.read()) {
            return Ok(pepper);
        }
        let _guard = self.refreshing.lock().await;
        let (current, refreshed, seq) = {
            let s = self.read();
            if fresh(&s) {
                return Ok(pepper);
            }
            (s.built && s.pepper == pepper, s.refreshed, s.seq)
        };
        let stale =
            refreshed.is_none_or(|t| t.elapsed().as_millis() as i64 > CHANGE_RETENTION_MS / 2);
        if !current || stale {
            return self.rebuild(&state.db, pepper).await;
        }
        let changes = changes_since(&state.db, seq - CHANGE_LOOKBACK).await?;
        let mut snapshot = self.write();
        for change in &changes {
            let keys = keys(
                &change.medium,
                &change.address,
                change.lookup_alias.as_deref(),
                &snapshot.pepper,
            );
            put(&mut snapshot.mxids, keys, change.mxid.as_deref());
            snapshot.seq = snapshot.seq.max(change.seq);
        }
        snapshot.refreshed = Some(std::time::Instant::now());
        Ok(pepper)
    }

    /// Hashes every binding under `pepper`, off the lock, then swaps the new
    /// index in. Changes made while it reads are applied after.
    async fn rebuild(&self, db: &Database, pepper: String) -> Result<String, MatrixError> {
        let started = std::time::Instant::now();
        let seq = max_seq(db).await?;
        // Streamed, so only the index itself is held, not every row.
        let mut rows =
            sqlx::query("SELECT medium, address, lookup_alias, mxid FROM identity_associations")
                .fetch(db.pool());
        let mut mxids = HashMap::new();
        while let Some(row) = rows.try_next().await? {
            let medium: String = row.try_get("medium")?;
            let address: String = row.try_get("address")?;
            let alias: Option<String> = row.try_get("lookup_alias")?;
            let mxid: String = row.try_get("mxid")?;
            let keys = keys(&medium, &address, alias.as_deref(), &pepper);
            put(&mut mxids, keys, Some(&mxid));
        }
        drop(rows);
        for change in changes_since(db, seq - CHANGE_LOOKBACK).await? {
            let keys = keys(
                &change.medium,
                &change.address,
                change.lookup_alias.as_deref(),
                &pepper,
            );
            put(&mut mxids, keys, change.mxid.as_deref());
        }
        let seq = max_seq(db).await?.max(seq);
        let associations = mxids.len();
        *self.write() = Snapshot {
            built: true,
            pepper: pepper.clone(),
            seq,
            refreshed: Some(std::time::Instant::now()),
            mxids,
        };
        tracing::info!(
            associations,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built the lookup index for the current pepper"
        );
        Ok(pepper)
    }

    fn mappings(&self, pepper: &str, hashes: &[String]) -> Option<Map<String, Value>> {
        let snapshot = self.read();
        if snapshot.pepper != pepper {
            return None;
        }
        let mut mappings = Map::new();
        for hash in hashes {
            // A hash of another length, or not base64, is bound to nobody.
            let mut bytes = [0u8; 33];
            let key = hearth_core::base64::decode_url_safe_into(hash, &mut bytes)
                .ok()
                .filter(|&n| n == 32)
                .and_then(|_| Digest32::try_from(&bytes[..32]).ok());
            if let Some(mxid) = key.and_then(|k| snapshot.mxids.get(&k)) {
                mappings.insert(hash.clone(), Value::String(mxid.to_string()));
            }
        }
        Some(mappings)
    }
}

/// The current pepper: the newest epoch's.
async fn current(db: &Database) -> Result<Option<String>, MatrixError> {
    let row = sqlx::query("SELECT pepper FROM identity_peppers ORDER BY epoch DESC LIMIT 1")
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|r| r.try_get("pepper")).transpose()?)
}

struct Change {
    seq: i64,
    medium: String,
    address: String,
    lookup_alias: Option<String>,
    mxid: Option<String>,
}

async fn changes_since(db: &Database, seq: i64) -> Result<Vec<Change>, MatrixError> {
    let rows = sqlx::query(
        "SELECT seq, medium, address, lookup_alias, mxid FROM identity_lookup_changes
         WHERE seq > $1 ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Change {
                seq: r.try_get("seq")?,
                medium: r.try_get("medium")?,
                address: r.try_get("address")?,
                lookup_alias: r.try_get("lookup_alias")?,
                mxid: r.try_get("mxid")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(MatrixError::from)
}

async fn max_seq(db: &Database) -> Result<i64, MatrixError> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM identity_lookup_changes")
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get("seq")?)
}

/// Deletes changes every instance has had time to read.
pub(crate) async fn prune_changes(db: &Database) -> Result<(), MatrixError> {
    sqlx::query("DELETE FROM identity_lookup_changes WHERE ts < $1")
        .bind(now_ms() - CHANGE_RETENTION_MS)
        .execute(db.pool())
        .await?;
    Ok(())
}

fn algorithms(state: &IdentityState) -> Vec<&'static str> {
    if state.config.allow_plaintext_lookup {
        vec![SHA256, NONE]
    } else {
        vec![SHA256]
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct HashDetails {
    lookup_pepper: String,
    algorithms: Vec<&'static str>,
}

/// `GET /hash_details`.
pub(crate) async fn hash_details(
    State(state): State<IdentityState>,
    _: TermsAccepted,
) -> Result<Json<HashDetails>, MatrixError> {
    let lookup_pepper = state.index.refresh(&state, None).await?;
    Ok(Json(HashDetails {
        lookup_pepper,
        algorithms: algorithms(&state),
    }))
}

#[derive(Serialize)]
pub(crate) struct LookupResponse {
    mappings: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LookupRequest {
    algorithm: String,
    pepper: String,
    addresses: Vec<String>,
}

/// `POST /lookup`: mappings for the addresses that are bound; the others
/// are simply absent.
pub(crate) async fn lookup(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    Body(request): Body<LookupRequest>,
) -> Result<Json<LookupResponse>, MatrixError> {
    if request.addresses.len() > state.config.max_lookup_addresses {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::TOO_LARGE,
            format!(
                "At most {} addresses may be looked up at once",
                state.config.max_lookup_addresses
            ),
        ));
    }
    let algorithm = request.algorithm.as_str();
    if !algorithms(&state).contains(&algorithm) {
        return Err(MatrixError::invalid_param(format!(
            "Unsupported algorithm {algorithm:?}"
        )));
    }
    let pepper = state.index.refresh(&state, Some(&request.pepper)).await?;
    if pepper != request.pepper {
        return Err(invalid_pepper(algorithm, &pepper));
    }
    let mappings = if algorithm == SHA256 {
        // A rotation between the two reads is one more M_INVALID_PEPPER.
        state
            .index
            .mappings(&pepper, &request.addresses)
            .ok_or_else(|| invalid_pepper(algorithm, &pepper))?
    } else {
        by_plaintext(&state.db, &request.addresses).await?
    };
    Ok(Json(LookupResponse { mappings }))
}

fn invalid_pepper(algorithm: &str, pepper: &str) -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        ErrCode::INVALID_PEPPER,
        "Unknown or invalid pepper: fetch /hash_details again",
    )
    .with("algorithm", algorithm)
    .with("lookup_pepper", pepper)
}

/// `none`: entries are `"<address> <medium>"`; the address is matched as
/// given, like hashed lookups, which are case-sensitive too.
async fn by_plaintext(
    db: &Database,
    entries: &[String],
) -> Result<Map<String, Value>, MatrixError> {
    let mut mappings = Map::new();
    for entry in entries {
        let Some((address, medium)) = entry.rsplit_once(' ') else {
            return Err(MatrixError::invalid_param(
                "Plain-text lookups are \"<address> <medium>\"",
            ));
        };
        if medium != EMAIL && medium != MSISDN {
            continue;
        }
        let row = sqlx::query(
            "SELECT mxid FROM identity_associations
             WHERE medium = $1 AND (address = $2 OR lookup_alias = $2)",
        )
        .bind(medium)
        .bind(address)
        .fetch_optional(db.pool())
        .await?;
        if let Some(row) = row {
            mappings.insert(entry.clone(), Value::String(row.try_get("mxid")?));
        }
    }
    Ok(mappings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's examples (Identity Service API, "Client behaviour"), with
    /// the pepper `matrixrocks`.
    #[test]
    fn spec_hash_examples() {
        let lookup_hash = |address: &str, medium: &str, pepper: &str| {
            hearth_core::base64::encode_url_safe(digest(address, medium, pepper))
        };
        assert_eq!(
            lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
        assert_eq!(
            lookup_hash("bob@example.com", "email", "matrixrocks"),
            "LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8"
        );
        assert_eq!(
            lookup_hash("18005552067", "msisdn", "matrixrocks"),
            "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I"
        );
    }

    #[test]
    fn peppers_are_long_and_alphanumeric() {
        let p = new_pepper();
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(p, new_pepper());
    }
}
