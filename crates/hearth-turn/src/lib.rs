//! TURN/STUN for Matrix VoIP (RFC 8656 over RFC 8489), with the TURN REST
//! credentials Synapse hands out (`turn_shared_secret`).
//!
//! The binary calls [`Config::check`] for `hearth config check`,
//! [`Server::bind`] at start-up (every listener opens there, so errors
//! surface before anything serves), [`Server::run`] to serve until
//! shutdown, and [`Config::credentials`] for `hearth turn credentials`.

mod alloc;
mod auth;
mod config;
mod handler;
mod policy;
mod server;
mod stats;
mod stream;
mod stun;
#[cfg(test)]
mod tests;

pub use auth::{Credentials, rest_credentials, rest_password};
pub use config::Config;
pub use policy::{Cidr, DEFAULT_DENIED};
pub use server::{LocalAddrs, Server};

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
}
