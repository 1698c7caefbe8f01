//! Asset state per widget: what `widgets/set_assets_state` records. Element
//! calls it with `state=disable` when the user removes their sticker
//! picker, so that the picker's assets stop being offered; a later sticker
//! picker reads this back before offering packs.

use hearth_core::MatrixError;
use hearth_core::ids::UserId;
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use sqlx::Row;

pub(crate) async fn set_state(
    db: &Database,
    user_id: &UserId,
    widget_type: &str,
    widget_id: &str,
    state: &str,
) -> Result<(), MatrixError> {
    sqlx::query(
        "INSERT INTO integrations_assets_state (user_id, widget_type, widget_id, state, updated_ts)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, widget_type, widget_id)
         DO UPDATE SET state = excluded.state, updated_ts = excluded.updated_ts",
    )
    .bind(user_id.as_str())
    .bind(widget_type)
    .bind(widget_id)
    .bind(state)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The recorded state of one widget's assets; `None` when never set.
pub async fn get_state(
    db: &Database,
    user_id: &UserId,
    widget_type: &str,
    widget_id: &str,
) -> Result<Option<String>, MatrixError> {
    let row = sqlx::query(
        "SELECT state FROM integrations_assets_state
         WHERE user_id = $1 AND widget_type = $2 AND widget_id = $3",
    )
    .bind(user_id.as_str())
    .bind(widget_type)
    .bind(widget_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| r.try_get("state")).transpose()?)
}
