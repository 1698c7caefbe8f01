//! Spec "API Version check" and "Status check".

use hearth_core::Json;
use serde::Serialize;

/// The newest spec release whose Identity Service API this server follows.
const NEWEST_MINOR: u32 = 19;

#[derive(Debug, Serialize)]
pub(crate) struct Versions {
    versions: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Status {}

/// `GET /_matrix/identity/versions`: every spec release from v1.1 (the
/// first without the v1 API) to the newest one followed; the Identity
/// Service API changed only compatibly between them.
pub(crate) async fn versions() -> Json<Versions> {
    let versions = (1..=NEWEST_MINOR)
        .map(|minor| format!("v1.{minor}"))
        .collect();
    Json(Versions { versions })
}

/// `GET /_matrix/identity/v2`: an empty object when the service is up.
pub(crate) async fn status() -> Json<Status> {
    Json(Status {})
}
