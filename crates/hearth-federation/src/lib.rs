//! Talking to other Matrix servers: server-name resolution, the federation
//! HTTPS client, X-Matrix request authentication, and remote server keys.
//!
//! Layers, bottom up: [`guard`] decides which addresses may be dialled,
//! [`connect`] dials one endpoint with TLS and bounds the exchange in time and
//! size, [`resolve`] turns a server name into endpoints per the spec,
//! [`client`] puts them together, [`xmatrix`] signs and verifies requests and
//! [`keys`] fetches and caches the keys that verification needs. [`outbound`]
//! sends requests to URLs through the same connector.

pub mod client;
pub mod config;
pub mod connect;
pub mod guard;
pub mod keys;
pub mod outbound;
pub mod resolve;
pub mod xmatrix;

pub use client::{FederationClient, FederationError};
pub use config::FederationConfig;
pub use keys::{KeyStore, SCHEMA};
pub use outbound::{Outbound, Target};

use std::future::Future;
use std::pin::Pin;

/// A boxed future, for the object-safe traits test doubles implement.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
