//! Spec "API Version check" and "Status check".

use hearth_core::Json;
use serde_json::{Value, json};

/// `GET /_matrix/identity/versions`: the spec versions whose v2 API this
/// server implements (v1.1 onwards dropped the v1 API).
pub(crate) async fn versions() -> Json<Value> {
    Json(
        json!({ "versions": ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13"] }),
    )
}

/// `GET /_matrix/identity/v2`: an empty object when the service is up.
pub(crate) async fn status() -> Json<Value> {
    Json(json!({}))
}
