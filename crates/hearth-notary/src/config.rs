//! `[notary]`: this server's published keys and the key queries it answers.

use hearth_core::config::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub enabled: bool,
    /// How far ahead `valid_until_ts` of our own keys lies, like Synapse's
    /// `key_refresh_interval`.
    pub key_refresh_interval: Duration,
    /// Most servers one `POST /_matrix/key/v2/query` may name.
    pub max_servers_per_query: usize,
    /// Most key ids one server's criteria may name.
    pub max_key_ids_per_server: usize,
    /// Servers queried within this window are refreshed ahead of expiry, so
    /// homeservers asking for them never wait on a fetch.
    pub refresh_window: Duration,
    /// Notaries asked only when an origin cannot be reached. None by default:
    /// Hearth then never contacts a third party for keys.
    pub upstream: Vec<Upstream>,
    /// Keep upstream notaries' signatures on the keys stored from them.
    /// Responses never carry them either way, so they do not reveal whom
    /// this server trusts (Synapse issue #8441).
    pub keep_upstream_signatures: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            key_refresh_interval: Duration::secs(24 * 3600),
            max_servers_per_query: 1000,
            max_key_ids_per_server: 50,
            refresh_window: Duration::secs(3600),
            upstream: Vec::new(),
            keep_upstream_signatures: false,
        }
    }
}

/// An upstream notary, as Synapse's `trusted_key_servers` entries name one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub server_name: String,
    /// Key id to unpadded base64 public key. Its answers must be signed by
    /// at least one of these.
    pub verify_keys: BTreeMap<String, String>,
}
