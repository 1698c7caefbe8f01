//! TURN/STUN for Matrix VoIP. The listeners arrive with the TURN
//! issue; for now the crate holds the `[turn]` config section so the
//! binary, the example config and `hearth turn` are already shaped for it.

use serde::{Deserialize, Serialize};

/// `[turn]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Off until the service is built: nothing is served for it yet.
    pub enabled: bool,
}
