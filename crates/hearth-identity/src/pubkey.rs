//! Spec "Key management": the long-term keys and the ephemeral invite keys.
//!
//! Retired long-term keys stay known here: invites and associations signed
//! before a rotation must still check ("The response should always be the
//! same, provided the key exists").

use crate::IdentityState;
use axum::extract::{Path, State};
use hearth_core::http::Query;
use hearth_core::{Json, MatrixError};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Serialize)]
pub(crate) struct PublicKeyResponse {
    public_key: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct ValidResponse {
    valid: bool,
}

/// `GET /pubkey/{keyId}`: current or retired.
pub(crate) async fn get_public_key(
    State(state): State<IdentityState>,
    Path(key_id): Path<String>,
) -> Result<Json<PublicKeyResponse>, MatrixError> {
    state
        .own_keys
        .public_key(&key_id)
        .map(|public_key| Json(PublicKeyResponse { public_key }))
        .ok_or_else(|| MatrixError::not_found("The public key was not found"))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PublicKeyQuery {
    public_key: String,
}

/// Keys arrive in the standard or the URL-safe alphabet, padded or not.
pub(crate) fn normalise_key(key: &str) -> String {
    key.trim_end_matches('=')
        .replace('-', "+")
        .replace('_', "/")
}

/// `GET /pubkey/isvalid`: whether this is one of our long-term keys,
/// current or retired.
pub(crate) async fn is_valid(
    State(state): State<IdentityState>,
    Query(query): Query<PublicKeyQuery>,
) -> Json<ValidResponse> {
    let key = normalise_key(&query.public_key);
    let ring = &state.own_keys;
    let valid = ring.current.iter().any(|k| k.public_key_base64() == key)
        || ring.old.iter().any(|k| normalise_key(&k.key) == key);
    Json(ValidResponse { valid })
}

/// `GET /pubkey/ephemeral/isvalid`: whether we handed out this invite key.
pub(crate) async fn ephemeral_is_valid(
    State(state): State<IdentityState>,
    Query(query): Query<PublicKeyQuery>,
) -> Result<Json<ValidResponse>, MatrixError> {
    let row = sqlx::query("SELECT 1 AS found FROM identity_ephemeral_keys WHERE public_key = $1")
        .bind(normalise_key(&query.public_key))
        .fetch_optional(state.db.pool())
        .await?;
    let valid = row
        .map(|r| r.try_get::<i32, _>("found"))
        .transpose()?
        .is_some();
    Ok(Json(ValidResponse { valid }))
}
