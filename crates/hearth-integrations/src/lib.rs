//! Element-compatible integration manager. The endpoints arrive with the
//! integration-manager issue; for now the crate holds the `[integrations]` config section so the
//! binary, the example config and `hearth integrations` are already shaped for it.

use serde::{Deserialize, Serialize};

/// `[integrations]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Off until the service is built: nothing is served for it yet.
    pub enabled: bool,
}
