//! Spec "Key management": the long-term key and the ephemeral invite keys.

use crate::IdentityState;
use axum::extract::{Path, State};
use hearth_core::http::Query;
use hearth_core::{Json, MatrixError};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

/// `GET /pubkey/{keyId}`.
pub(crate) async fn get_public_key(
    State(state): State<IdentityState>,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    if key_id == state.signing_key.key_id() {
        Ok(Json(
            json!({ "public_key": state.signing_key.public_key_base64() }),
        ))
    } else {
        Err(MatrixError::not_found("The public key was not found"))
    }
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

/// `GET /pubkey/isvalid`: whether this is our current long-term key.
pub(crate) async fn is_valid(
    State(state): State<IdentityState>,
    Query(query): Query<PublicKeyQuery>,
) -> Json<Value> {
    let valid = normalise_key(&query.public_key) == state.signing_key.public_key_base64();
    Json(json!({ "valid": valid }))
}

/// `GET /pubkey/ephemeral/isvalid`: whether we handed out this invite key.
pub(crate) async fn ephemeral_is_valid(
    State(state): State<IdentityState>,
    Query(query): Query<PublicKeyQuery>,
) -> Result<Json<Value>, MatrixError> {
    let row = sqlx::query("SELECT 1 AS found FROM identity_ephemeral_keys WHERE public_key = $1")
        .bind(normalise_key(&query.public_key))
        .fetch_optional(state.db.pool())
        .await?;
    let valid = row
        .map(|r| r.try_get::<i32, _>("found"))
        .transpose()?
        .is_some();
    Ok(Json(json!({ "valid": valid })))
}
