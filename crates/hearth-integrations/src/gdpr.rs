//! What the integration manager holds about one user: its tokens and
//! accepted terms (in `hearth-auth`) and its widgets' asset states;
//! exported and erased on request (for `hearth integrations export|forget`).
//! Widgets themselves live in room state and account data, not here.

use crate::IntegrationsState;
use hearth_core::MatrixError;
use hearth_core::ids::UserId;
use serde_json::{Value, json};
use sqlx::Row;

/// Everything held about `user_id`, as JSON.
pub async fn export(state: &IntegrationsState, user_id: &UserId) -> Result<Value, MatrixError> {
    let assets = sqlx::query(
        "SELECT widget_type, widget_id, state, updated_ts FROM integrations_assets_state
         WHERE user_id = $1 ORDER BY updated_ts, widget_type, widget_id",
    )
    .bind(user_id.as_str())
    .fetch_all(state.db.pool())
    .await?
    .iter()
    .map(|r| {
        Ok(json!({
            "widget_type": r.try_get::<String, _>("widget_type")?,
            "widget_id": r.try_get::<String, _>("widget_id")?,
            "state": r.try_get::<String, _>("state")?,
            "updated_ts": r.try_get::<i64, _>("updated_ts")?,
        }))
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(json!({
        "user_id": user_id,
        "widget_assets": assets,
        "account": state.auth.export(user_id).await?,
    }))
}

/// Erases every token, acceptance and asset state held for `user_id`.
pub async fn forget(state: &IntegrationsState, user_id: &UserId) -> Result<(), MatrixError> {
    sqlx::query("DELETE FROM integrations_assets_state WHERE user_id = $1")
        .bind(user_id.as_str())
        .execute(state.db.pool())
        .await?;
    state.auth.forget(user_id).await
}
