//! `GET /_matrix/key/v2/server` (Server-Server API "Publishing Keys").

use crate::NotaryState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_core::MatrixError;
use hearth_core::signed_json::sign_json;
use hearth_core::time::now_ms;
use serde_json::{Map, Value, json};

/// Every current key, the retired ones, and a signature by each current key.
pub(crate) async fn get_server_key(
    State(state): State<NotaryState>,
) -> Result<Response, MatrixError> {
    Ok(json_response(own_keys(&state)?))
}

/// Our keys as served, made again once half of `key_refresh_interval` has
/// passed, so the published validity always lies at least half of it ahead
/// (as Synapse does).
pub(crate) fn own_keys(state: &NotaryState) -> Result<Bytes, MatrixError> {
    let now = now_ms();
    let interval = state.config.key_refresh_interval.as_millis_i64();
    if let Some((made, json)) = &state.memory().own
        && now - made < interval / 2
    {
        return Ok(json.clone());
    }
    let verify_keys: Map<String, Value> = state
        .keys
        .current
        .iter()
        .map(|k| (k.key_id(), json!({ "key": k.public_key_base64() })))
        .collect();
    let old_verify_keys: Map<String, Value> = state
        .keys
        .old
        .iter()
        .map(|k| {
            (
                k.key_id.clone(),
                json!({ "key": k.key, "expired_ts": k.expired_ts }),
            )
        })
        .collect();
    let mut body = json!({
        "server_name": state.server_name.as_str(),
        "verify_keys": verify_keys,
        "old_verify_keys": old_verify_keys,
        "valid_until_ts": now.saturating_add(interval),
    });
    for key in &state.keys.current {
        sign_json(&mut body, state.server_name.as_str(), key).map_err(MatrixError::internal)?;
    }
    let json =
        Bytes::from(hearth_core::canonical_json::to_string(&body).map_err(MatrixError::internal)?);
    state.memory().own = Some((now, json.clone()));
    Ok(json)
}

/// A JSON body already serialised.
pub(crate) fn json_response(body: impl Into<axum::body::Body>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}
