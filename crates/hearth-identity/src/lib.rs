//! Matrix Identity Service API v2. The endpoints arrive with the identity
//! issue; for now the crate holds the `[identity]` config section so the
//! binary, the example config and `hearth identity` are already shaped for it.

use serde::{Deserialize, Serialize};

/// `[identity]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { enabled: true }
    }
}
