//! `[federation]`: how Hearth reaches other Matrix servers.

use hearth_core::config::{ByteSize, Duration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Extra PEM CA certificates trusted beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Name servers (`ip:port`) to resolve with instead of the system's.
    pub dns_servers: Vec<SocketAddr>,
    /// Dial private, loopback and link-local addresses found through DNS.
    pub allow_private_addresses: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_size: ByteSize,
    /// Fixed destinations per server name, for private federations and tests.
    pub overrides: BTreeMap<String, ServerOverride>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            dns_servers: Vec::new(),
            allow_private_addresses: false,
            connect_timeout: Duration::secs(5),
            request_timeout: Duration::secs(10),
            max_response_size: ByteSize(1 << 20),
            overrides: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOverride {
    /// `https://host:port` or `http://host:port`. The certificate must still
    /// be valid for the server name; `Host` is the server name.
    pub url: String,
}
