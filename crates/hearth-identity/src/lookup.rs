//! Hashed association lookup (spec "Association lookup", MSC2134).
//!
//! Every association is hashed once per pepper into `identity_lookup_hashes`;
//! a lookup is then an index probe per address, never a hash per stored
//! association. The pepper rotates every `pepper_rotation`; rotation
//! rebuilds the index for the new pepper in one transaction, keyed by the
//! rotation epoch so instances sharing a database agree on one pepper.

use crate::IdentityState;
use crate::threepid::{EMAIL, MSISDN};
use axum::extract::State;
use hearth_auth::TermsAccepted;
use hearth_core::config::Duration;
use hearth_core::storage::{Backend, Database};
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

const SHA256: &str = "sha256";
const NONE: &str = "none";
/// Rows per multi-row INSERT while rebuilding the index, and addresses per
/// `IN (...)` probe: well under SQLite's bound-parameter limit.
const BATCH: usize = 500;

/// The spec's sha256 lookup hash: URL-safe unpadded base64 of
/// SHA-256(`"<address> <medium> <pepper>"`).
pub(crate) fn lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    let digest = Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
    hearth_core::base64::encode_url_safe(digest)
}

fn new_pepper() -> String {
    // 32 alphanumerics (MSC2134's pepper grammar) carry over 190 bits.
    hearth_core::random::string(32, hearth_core::random::ALPHANUMERIC)
}

/// The current pepper.
pub(crate) async fn current_pepper(db: &Database) -> Result<Option<String>, MatrixError> {
    let row = sqlx::query("SELECT pepper FROM identity_peppers ORDER BY epoch DESC LIMIT 1")
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|r| r.try_get("pepper")).transpose()?)
}

/// Rotates the pepper when the current one is from an earlier epoch (or
/// there is none yet), rebuilding the lookup index. Returns the current
/// pepper either way. Safe to call from several instances at once.
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
    let current =
        sqlx::query("SELECT epoch, pepper FROM identity_peppers ORDER BY epoch DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(row) = &current {
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
        return current_pepper(db)
            .await?
            .ok_or_else(|| MatrixError::internal("pepper vanished during rotation"));
    }
    let associations = sqlx::query("SELECT medium, address, mxid FROM identity_associations")
        .fetch_all(&mut *tx)
        .await?;
    for chunk in associations.chunks(BATCH) {
        let mut sql = String::from(
            "INSERT INTO identity_lookup_hashes (pepper, hash, medium, address, mxid) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 5;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            let medium: String = row.try_get("medium")?;
            let address: String = row.try_get("address")?;
            let mxid: String = row.try_get("mxid")?;
            query = query
                .bind(pepper.clone())
                .bind(lookup_hash(&address, &medium, &pepper))
                .bind(medium)
                .bind(address)
                .bind(mxid);
        }
        query.execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM identity_lookup_hashes WHERE pepper <> $1")
        .bind(&pepper)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM identity_peppers WHERE epoch < $1")
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        associations = associations.len(),
        "rotated the lookup pepper"
    );
    Ok(pepper)
}

/// Adds one association to the index under the current pepper, inside the
/// caller's transaction.
pub(crate) async fn index_association(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    medium: &str,
    address: &str,
    mxid: &str,
) -> Result<(), MatrixError> {
    let pepper: Option<String> =
        sqlx::query("SELECT pepper FROM identity_peppers ORDER BY epoch DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("pepper"))
            .transpose()?;
    sqlx::query("DELETE FROM identity_lookup_hashes WHERE medium = $1 AND address = $2")
        .bind(medium)
        .bind(address)
        .execute(&mut **tx)
        .await?;
    if let Some(pepper) = pepper {
        sqlx::query(
            "INSERT INTO identity_lookup_hashes (pepper, hash, medium, address, mxid) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&pepper)
        .bind(lookup_hash(address, medium, &pepper))
        .bind(medium)
        .bind(address)
        .bind(mxid)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The current pepper, made on first use if the background task has not
/// made one yet.
async fn pepper(state: &IdentityState) -> Result<String, MatrixError> {
    match current_pepper(&state.db).await? {
        Some(p) => Ok(p),
        None => rotate_pepper_if_due(&state.db, state.config.pepper_rotation).await,
    }
}

fn algorithms(state: &IdentityState) -> Vec<&'static str> {
    if state.config.allow_plaintext_lookup {
        vec![SHA256, NONE]
    } else {
        vec![SHA256]
    }
}

/// `GET /hash_details`.
pub(crate) async fn hash_details(
    State(state): State<IdentityState>,
    _: TermsAccepted,
) -> Result<Json<Value>, MatrixError> {
    let pepper = pepper(&state).await?;
    Ok(Json(
        json!({ "lookup_pepper": pepper, "algorithms": algorithms(&state) }),
    ))
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
    Json(request): Json<LookupRequest>,
) -> Result<Json<Value>, MatrixError> {
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
    let pepper = pepper(&state).await?;
    if pepper != request.pepper {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode("M_INVALID_PEPPER"),
            "Unknown or invalid pepper: fetch /hash_details again",
        )
        .with("algorithm", algorithm)
        .with("lookup_pepper", pepper));
    }
    let mappings = if algorithm == SHA256 {
        by_hash(&state.db, &request.pepper, &request.addresses).await?
    } else {
        by_plaintext(&state.db, &request.addresses).await?
    };
    Ok(Json(json!({ "mappings": mappings })))
}

async fn by_hash(
    db: &Database,
    pepper: &str,
    hashes: &[String],
) -> Result<Map<String, Value>, MatrixError> {
    let mut mappings = Map::new();
    for chunk in hashes.chunks(BATCH) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT hash, mxid FROM identity_lookup_hashes WHERE pepper = $1 AND hash IN ({})",
            placeholders.join(",")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pepper);
        for hash in chunk {
            query = query.bind(hash.as_str());
        }
        for row in query.fetch_all(db.pool()).await? {
            let hash: String = row.try_get("hash")?;
            let mxid: String = row.try_get("mxid")?;
            mappings.insert(hash, Value::String(mxid));
        }
    }
    Ok(mappings)
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
            "SELECT mxid FROM identity_associations WHERE medium = $1 AND address = $2",
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
