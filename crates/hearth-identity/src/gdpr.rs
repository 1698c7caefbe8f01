//! What the service holds about one user: exported on request, erased on
//! request (`hearth identity export|forget`).

use crate::IdentityState;
use hearth_core::MatrixError;
use hearth_core::ids::UserId;
use serde_json::{Value, json};
use sqlx::Row;

/// Everything held about `user_id`, as JSON.
pub async fn export(state: &IdentityState, user_id: &UserId) -> Result<Value, MatrixError> {
    let pool = state.db.pool();
    let associations = sqlx::query(
        "SELECT medium, address, lookup_alias, ts FROM identity_associations
         WHERE mxid = $1 ORDER BY ts",
    )
    .bind(user_id.as_str())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let mut association = json!({
            "medium": r.try_get::<String, _>("medium")?,
            "address": r.try_get::<String, _>("address")?,
            "bound_ts": r.try_get::<i64, _>("ts")?,
        });
        // The address lower-cased, kept for lookups where it differs.
        if let Some(alias) = r.try_get::<Option<String>, _>("lookup_alias")? {
            association["lookup_alias"] = Value::String(alias);
        }
        Ok(association)
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let invites = sqlx::query(
        "SELECT medium, address, room_id, created_ts FROM identity_invites WHERE sender = $1 ORDER BY created_ts",
    )
    .bind(user_id.as_str())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(json!({
            "medium": r.try_get::<String, _>("medium")?,
            "address": r.try_get::<String, _>("address")?,
            "room_id": r.try_get::<String, _>("room_id")?,
            "created_ts": r.try_get::<i64, _>("created_ts")?,
        }))
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(json!({
        "user_id": user_id,
        "associations": associations,
        "pending_invites_sent": invites,
        "account": state.auth.export(user_id).await?,
    }))
}

/// Erases every binding, pending invite sent, token and terms acceptance of
/// `user_id`, and any undelivered `onbind` callback about it.
pub async fn forget(state: &IdentityState, user_id: &UserId) -> Result<(), MatrixError> {
    let mut tx = state.db.pool().begin().await?;
    // Tell every instance's lookup index, then remove the bindings.
    sqlx::query(
        "INSERT INTO identity_lookup_changes (medium, address, lookup_alias, mxid, ts)
         SELECT medium, address, lookup_alias, NULL, $2 FROM identity_associations WHERE mxid = $1",
    )
    .bind(user_id.as_str())
    .bind(hearth_core::time::now_ms())
    .execute(&mut *tx)
    .await?;
    for sql in [
        "DELETE FROM identity_associations WHERE mxid = $1",
        "DELETE FROM identity_invites WHERE sender = $1",
    ] {
        sqlx::query(sql)
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    // The outbox holds JSON bodies; the user appears as `"mxid":"<id>"`.
    let needle = format!(
        "%{}%",
        serde_json::to_string(&json!({ "mxid": user_id }))
            .unwrap_or_default()
            .trim_start_matches('{')
            .trim_end_matches('}')
    );
    sqlx::query("DELETE FROM identity_onbind_outbox WHERE body LIKE $1")
        .bind(needle)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.auth.forget(user_id).await
}
