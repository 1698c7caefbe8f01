//! TURN/STUN for Matrix VoIP (RFC 8656 over RFC 8489), with the TURN REST
//! credentials Synapse hands out (`turn_shared_secret`).
//!
//! The binary plugs [`Config`] in as a `hearth_service::Service` (bound
//! in `build`, so a port in use fails start-up) and calls
//! [`Config::credentials`] for `hearth turn credentials --user`. Outside
//! the binary, [`Server::bind`] opens every listener and [`Server::run`]
//! serves until a shutdown future resolves.

mod alloc;
mod auth;
mod config;
mod handler;
mod policy;
mod server;
mod service;
mod stats;
mod stream;
mod stun;
#[cfg(test)]
mod tests;
mod udp;
mod worker;

pub use auth::{Credentials, rest_credentials, rest_password};
pub use config::Config;
pub use policy::{Cidr, DEFAULT_DENIED};
pub use server::{LocalAddrs, Server};
pub use service::SCHEMA;

use std::net::SocketAddr;

/// Why the TURN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("turn: {0}")]
    Config(String),
    #[error("turn: binding the {what} listener {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("turn: TLS: {0}")]
    Tls(String),
    #[error("turn: starting a UDP worker: {0}")]
    Worker(std::io::Error),
}
