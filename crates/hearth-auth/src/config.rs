//! Config shared by services that use this crate: `[<service>.auth]`.

use hearth_core::ids::ServerName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Homeservers whose users may register; empty means any.
    pub allowed_homeservers: Vec<ServerName>,
    pub terms: TermsConfig,
}

/// The policies users must accept, by policy id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TermsConfig {
    pub policies: BTreeMap<String, PolicyConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Changing the version asks every user to accept again, provided the
    /// new version's documents have new URLs (acceptance is recorded by URL,
    /// as clients send it); file-served documents get versioned URLs.
    pub version: String,
    /// By language code (`en`, `fr`, ...).
    pub languages: BTreeMap<String, PolicyLanguage>,
}

/// One language of a policy: a document elsewhere (`url`) or a file that
/// Hearth serves itself (`file`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLanguage {
    pub name: String,
    pub url: Option<String>,
    pub file: Option<PathBuf>,
}
