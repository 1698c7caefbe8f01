//! Hearth's foundation, shared by every service: config section types, storage,
//! signing keys, canonical and signed JSON, the Matrix error type and the HTTP
//! layers every listener uses.

pub mod base64;
pub mod canonical_json;
pub mod config;
pub mod error;
pub mod http;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod random;
pub mod redact;
pub mod signed_json;
pub mod storage;
pub mod templates;
pub mod time;
pub mod tls;

pub use error::{ErrCode, MatrixError};
pub use http::Json;
pub use redact::Redacted;
