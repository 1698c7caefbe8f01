//! Tokens and acceptances in the shared database. Tokens are stored as
//! SHA-256 hashes: a leaked database holds no usable token.

use crate::cache::Change;
use hearth_core::MatrixError;
use hearth_core::base64;
use hearth_core::ids::UserId;
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// A new random token: 32 bytes, URL-safe so it travels in query strings.
pub(crate) fn new_token() -> String {
    hearth_core::random::token::<32>()
}

/// The token as stored, and as the cache knows it.
pub(crate) fn hash(token: &str) -> String {
    base64::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) async fn insert_token(
    db: &Database,
    service: &str,
    token: &str,
    user_id: &UserId,
) -> Result<(), MatrixError> {
    sqlx::query(
        "INSERT INTO service_tokens (token_hash, service, user_id, created_ts) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash(token))
    .bind(service)
    .bind(user_id.as_str())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The user a token (by its [`hash`]) belongs to. Looking up by hash
/// compares nothing secret in application code, so timing reveals nothing
/// of the token.
pub(crate) async fn token_user(
    db: &Database,
    service: &str,
    token_hash: &str,
) -> Result<Option<UserId>, MatrixError> {
    let row =
        sqlx::query("SELECT user_id FROM service_tokens WHERE token_hash = $1 AND service = $2")
            .bind(token_hash)
            .bind(service)
            .fetch_optional(db.pool())
            .await?;
    row.map(|r| {
        let user_id: String = r.try_get("user_id")?;
        UserId::parse(&user_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    })
    .transpose()
    .map_err(MatrixError::from)
}

/// Deletes a token (by its [`hash`]) and, in the same transaction, tells
/// the other instances' caches.
pub(crate) async fn delete_token(
    db: &Database,
    service: &str,
    token_hash: &str,
) -> Result<bool, MatrixError> {
    let mut tx = db.pool().begin().await?;
    let done = sqlx::query("DELETE FROM service_tokens WHERE token_hash = $1 AND service = $2")
        .bind(token_hash)
        .bind(service)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    record_change(&mut tx, service, Some(token_hash), None).await?;
    tx.commit().await?;
    Ok(true)
}

async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    service: &str,
    token_hash: Option<&str>,
    user_id: Option<&str>,
) -> Result<(), MatrixError> {
    sqlx::query(
        "INSERT INTO auth_changes (service, token_hash, user_id, ts) VALUES ($1, $2, $3, $4)",
    )
    .bind(service)
    .bind(token_hash)
    .bind(user_id)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn changes_since(
    db: &Database,
    service: &str,
    seq: i64,
) -> Result<Vec<Change>, MatrixError> {
    let rows = sqlx::query(
        "SELECT seq, token_hash, user_id FROM auth_changes WHERE service = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(service)
    .bind(seq)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Change {
                seq: r.try_get("seq")?,
                token_hash: r.try_get("token_hash")?,
                user_id: r.try_get("user_id")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(MatrixError::from)
}

pub(crate) async fn newest_change(db: &Database) -> Result<i64, MatrixError> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM auth_changes")
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get("seq")?)
}

/// Deletes changes every instance has had time to read.
pub(crate) async fn prune_changes(
    db: &Database,
    retention: std::time::Duration,
) -> Result<(), MatrixError> {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    sqlx::query("DELETE FROM auth_changes WHERE ts < $1")
        .bind(now_ms().saturating_sub(retention))
        .execute(db.pool())
        .await?;
    Ok(())
}

pub(crate) async fn count_tokens(
    db: &Database,
    service: &str,
    user_id: &UserId,
) -> Result<i64, MatrixError> {
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM service_tokens WHERE service = $1 AND user_id = $2")
            .bind(service)
            .bind(user_id.as_str())
            .fetch_one(db.pool())
            .await?;
    Ok(row.try_get("n")?)
}

pub(crate) async fn accepted_urls(
    db: &Database,
    service: &str,
    user_id: &UserId,
) -> Result<Vec<String>, MatrixError> {
    let rows = sqlx::query("SELECT url FROM accepted_terms WHERE service = $1 AND user_id = $2")
        .bind(service)
        .bind(user_id.as_str())
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| r.try_get("url").map_err(MatrixError::from))
        .collect()
}

pub(crate) async fn accept_urls(
    db: &Database,
    service: &str,
    user_id: &UserId,
    urls: &[&str],
) -> Result<(), MatrixError> {
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    for url in urls {
        sqlx::query(
            "INSERT INTO accepted_terms (service, user_id, url, accepted_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (service, user_id, url) DO NOTHING",
        )
        .bind(service)
        .bind(user_id.as_str())
        .bind(*url)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn forget(
    db: &Database,
    service: &str,
    user_id: &UserId,
) -> Result<(), MatrixError> {
    let mut tx = db.pool().begin().await?;
    for table in ["service_tokens", "accepted_terms"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE service = $1 AND user_id = $2"
        )))
        .bind(service)
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await?;
    }
    record_change(&mut tx, service, None, Some(user_id.as_str())).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_url_safe_and_hashed() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(hash(&a), a);
        assert_eq!(hash(&a), hash(&a));
    }
}
