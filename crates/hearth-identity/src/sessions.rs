//! 3PID validation sessions (spec "Establishing associations"): created by
//! `requestToken`, validated by `submitToken`, used by `bind`. They expire
//! `session_lifetime` after their last change.
//!
//! Tokens are never stored: each is an HMAC of the sid under a secret
//! derived from the signing key, so a resend carries the same token and a
//! stolen database validates nothing. Client secrets are stored as SHA-256
//! hashes and compared in constant time.

use hearth_core::keys::SigningKey;
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, MatrixError};
use hmac::{Hmac, KeyInit, Mac};
use http::StatusCode;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq;

/// Wrong tokens a session survives; then it must be requested afresh.
pub(crate) const MAX_FAILED_ATTEMPTS: i64 = 10;

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) sid: String,
    client_secret_hash: String,
    pub(crate) medium: String,
    pub(crate) address: String,
    /// The lower-cased address, when it differs (see `threepid::Email`).
    pub(crate) lookup_alias: Option<String>,
    /// The last attempt whose send succeeded; `None` before the first.
    pub(crate) send_attempt: Option<i64>,
    pub(crate) next_link: Option<String>,
    pub(crate) updated_ts: i64,
    pub(crate) validated_ts: Option<i64>,
    pub(crate) failed_attempts: i64,
}

impl Session {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            sid: row.try_get("sid")?,
            client_secret_hash: row.try_get("client_secret_hash")?,
            medium: row.try_get("medium")?,
            address: row.try_get("address")?,
            lookup_alias: row.try_get("lookup_alias")?,
            send_attempt: row.try_get("send_attempt")?,
            next_link: row.try_get("next_link")?,
            updated_ts: row.try_get("updated_ts")?,
            validated_ts: row.try_get("validated_ts")?,
            failed_attempts: row.try_get("failed_attempts")?,
        })
    }

    fn expired(&self, lifetime_ms: i64) -> bool {
        self.updated_ts.saturating_add(lifetime_ms) < now_ms()
    }
}

const COLUMNS: &str = "sid, client_secret_hash, medium, address, lookup_alias, send_attempt, next_link, updated_ts, validated_ts, failed_attempts";

/// What is stored of a client secret.
fn hash_secret(client_secret: &str) -> String {
    hearth_core::base64::encode(Sha256::digest(client_secret.as_bytes()))
}

/// `client_secret` and `sid` must match `[0-9a-zA-Z.=_-]`, 1 to 255 long.
pub(crate) fn check_opaque_id(name: &str, value: &str) -> Result<(), MatrixError> {
    if value.is_empty()
        || value.len() > 255
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".=_-".contains(&b))
    {
        return Err(MatrixError::invalid_param(format!(
            "{name} must be 1 to 255 characters of [0-9a-zA-Z.=_-]"
        )));
    }
    Ok(())
}

/// What `requestToken` should do with a request.
#[derive(Debug)]
pub(crate) struct Requested {
    pub(crate) session: Session,
    /// False when `send_attempt` was not higher than the last one sent: the
    /// request is a retry and nothing is sent again (spec: `send_attempt`).
    pub(crate) send: bool,
}

/// The address a session is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreePid<'a> {
    pub(crate) medium: &'a str,
    pub(crate) address: &'a str,
    pub(crate) lookup_alias: Option<&'a str>,
}

/// Finds the live session for this client secret and address, or starts a
/// new one. Records no attempt: [`record_sent`] does, once the send worked.
pub(crate) async fn request(
    db: &Database,
    threepid: ThreePid<'_>,
    client_secret: &str,
    send_attempt: i64,
    next_link: Option<&str>,
    lifetime_ms: i64,
) -> Result<Requested, MatrixError> {
    let now = now_ms();
    let secret_hash = hash_secret(client_secret);
    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identity_sessions
         WHERE medium = $1 AND address = $2 AND client_secret_hash = $3
         ORDER BY updated_ts DESC LIMIT 1"
    )))
    .bind(threepid.medium)
    .bind(threepid.address)
    .bind(&secret_hash)
    .fetch_optional(db.pool())
    .await?
    .map(|row| Session::from_row(&row))
    .transpose()?
    .filter(|s| !s.expired(lifetime_ms) && s.failed_attempts < MAX_FAILED_ATTEMPTS);
    if let Some(session) = existing {
        let send = session.send_attempt.is_none_or(|last| send_attempt > last);
        return Ok(Requested { session, send });
    }
    let session = Session {
        sid: hearth_core::random::hex::<16>(),
        client_secret_hash: secret_hash,
        medium: threepid.medium.to_owned(),
        address: threepid.address.to_owned(),
        lookup_alias: threepid.lookup_alias.map(str::to_owned),
        send_attempt: None,
        next_link: next_link.map(str::to_owned),
        updated_ts: now,
        validated_ts: None,
        failed_attempts: 0,
    };
    sqlx::query(
        "INSERT INTO identity_sessions
         (sid, client_secret_hash, medium, address, lookup_alias, send_attempt, failed_attempts, next_link, created_ts, updated_ts)
         VALUES ($1, $2, $3, $4, $5, NULL, 0, $6, $7, $7)",
    )
    .bind(&session.sid)
    .bind(&session.client_secret_hash)
    .bind(&session.medium)
    .bind(&session.address)
    .bind(&session.lookup_alias)
    .bind(next_link)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(Requested {
        session,
        send: true,
    })
}

/// Records that `send_attempt` was sent, after the send succeeded: a
/// failed send leaves the attempt open, so the client's retry of the same
/// attempt sends again (spec: `send_attempt`).
pub(crate) async fn record_sent(
    db: &Database,
    sid: &str,
    send_attempt: i64,
    next_link: Option<&str>,
) -> Result<(), MatrixError> {
    sqlx::query(
        "UPDATE identity_sessions SET send_attempt = $1, next_link = $2, updated_ts = $3
         WHERE sid = $4 AND (send_attempt IS NULL OR send_attempt < $1)",
    )
    .bind(send_attempt)
    .bind(next_link)
    .bind(now_ms())
    .bind(sid)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The token of a session: for email a long URL-safe string, for phones
/// six digits that a person can type.
pub(crate) fn token(key: &SigningKey, session: &Session) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.derive_secret("validation token"))
        .expect("HMAC takes any key length");
    mac.update(session.sid.as_bytes());
    let digest = mac.finalize().into_bytes();
    if session.medium == crate::threepid::MSISDN {
        let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 1_000_000;
        format!("{n:06}")
    } else {
        hearth_core::base64::encode_url_safe(&digest[..24])
    }
}

fn no_valid_session() -> MatrixError {
    MatrixError::new(
        StatusCode::NOT_FOUND,
        ErrCode::NO_VALID_SESSION,
        "No valid session was found matching that sid and client secret",
    )
}

fn session_expired() -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        ErrCode::SESSION_EXPIRED,
        "This validation session has expired: request a new token",
    )
}

async fn find(db: &Database, sid: &str, client_secret: &str) -> Result<Session, MatrixError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identity_sessions WHERE sid = $1"
    )))
    .bind(sid)
    .fetch_optional(db.pool())
    .await?
    .map(|row| Session::from_row(&row))
    .transpose()?
    // The client secret proves the caller started the session.
    .filter(|s| {
        bool::from(
            s.client_secret_hash
                .as_bytes()
                .ct_eq(hash_secret(client_secret).as_bytes()),
        )
    })
    .ok_or_else(no_valid_session)
}

/// `submitToken`: marks the session validated when the token is right.
/// Each check spends one of the session's [`MAX_FAILED_ATTEMPTS`] first, in
/// one conditional update, so concurrent guesses cannot check more than
/// that many between them; a right token gives its attempt back.
pub(crate) async fn submit(
    db: &Database,
    key: &SigningKey,
    sid: &str,
    client_secret: &str,
    submitted: &str,
    lifetime_ms: i64,
) -> Result<Session, MatrixError> {
    let mut session = find(db, sid, client_secret).await?;
    if session.expired(lifetime_ms) {
        return Err(session_expired());
    }
    if session.validated_ts.is_some() {
        return Ok(session);
    }
    let reserved = sqlx::query(
        "UPDATE identity_sessions SET failed_attempts = failed_attempts + 1
         WHERE sid = $1 AND failed_attempts < $2 AND validated_ts IS NULL",
    )
    .bind(sid)
    .bind(MAX_FAILED_ATTEMPTS)
    .execute(db.pool())
    .await?;
    if reserved.rows_affected() == 0 {
        // Out of attempts, or validated by a concurrent request.
        let again = find(db, sid, client_secret).await?;
        return match again.validated_ts {
            Some(_) => Ok(again),
            None => Err(session_expired()),
        };
    }
    let right = token(key, &session)
        .as_bytes()
        .ct_eq(submitted.trim().as_bytes());
    if !bool::from(right) {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::TOKEN_INCORRECT,
            "The token is incorrect",
        ));
    }
    let now = now_ms();
    sqlx::query(
        "UPDATE identity_sessions
         SET validated_ts = $1, updated_ts = $1, failed_attempts = failed_attempts - 1
         WHERE sid = $2",
    )
    .bind(now)
    .bind(sid)
    .execute(db.pool())
    .await?;
    session.validated_ts = Some(now);
    session.updated_ts = now;
    Ok(session)
}

/// A validated, unexpired session, for `getValidated3pid`, `bind` and
/// `unbind` (spec errors: 404 `M_NO_VALID_SESSION`, 400
/// `M_SESSION_NOT_VALIDATED`, 400 `M_SESSION_EXPIRED`).
pub(crate) async fn validated(
    db: &Database,
    sid: &str,
    client_secret: &str,
    lifetime_ms: i64,
) -> Result<Session, MatrixError> {
    let session = find(db, sid, client_secret).await?;
    if session.expired(lifetime_ms) {
        return Err(session_expired());
    }
    if session.validated_ts.is_none() {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::SESSION_NOT_VALIDATED,
            "This validation session has not been validated yet",
        ));
    }
    Ok(session)
}

/// Deletes sessions past their lifetime; run periodically.
pub(crate) async fn purge_expired(db: &Database, lifetime_ms: i64) -> Result<u64, MatrixError> {
    let done = sqlx::query("DELETE FROM identity_sessions WHERE updated_ts < $1")
        .bind(now_ms() - lifetime_ms)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_session_and_shaped_per_medium() {
        let key = SigningKey::generate();
        let mut session = Session {
            sid: "abc".into(),
            client_secret_hash: hash_secret("s"),
            medium: "email".into(),
            address: "a@b.c".into(),
            lookup_alias: None,
            send_attempt: Some(1),
            next_link: None,
            updated_ts: 0,
            validated_ts: None,
            failed_attempts: 0,
        };
        let email = token(&key, &session);
        assert_eq!(email, token(&key, &session));
        assert_eq!(email.len(), 32);
        session.medium = "msisdn".into();
        let sms = token(&key, &session);
        assert_eq!(sms.len(), 6);
        assert!(sms.bytes().all(|b| b.is_ascii_digit()));
        session.sid = "abd".into();
        assert_ne!(token(&key, &session), sms);
        assert!(check_opaque_id("client_secret", "Ab.=_-9").is_ok());
        assert!(check_opaque_id("client_secret", "a b").is_err());
        assert!(check_opaque_id("client_secret", "").is_err());
    }
}
