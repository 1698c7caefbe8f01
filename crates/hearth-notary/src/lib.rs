//! The trusted key server. So far it publishes this server's own keys at
//! `GET /_matrix/key/v2/server`, which homeservers need before they can trust
//! anything the notary signs; `/_matrix/key/v2/query` arrives with the notary
//! issue.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hearth_core::config::Duration;
use hearth_core::ids::ServerName;
use hearth_core::keys::KeyRing;
use hearth_core::signed_json::sign_json;
use hearth_core::storage::Schema;
use hearth_core::time::now_ms;
use hearth_core::{Json, MatrixError};
use hearth_service::{BoxFuture, Context, HttpPolicy, Parts, Routes, Service, ServiceError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// `[notary]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub enabled: bool,
    /// How far ahead `valid_until_ts` of our own keys lies, like Synapse's
    /// `key_refresh_interval`.
    pub key_refresh_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            key_refresh_interval: Duration::secs(24 * 3600),
        }
    }
}

/// What the notary's routes need.
#[derive(Debug)]
pub struct Notary {
    pub server_name: ServerName,
    pub keys: KeyRing,
    pub config: Config,
}

/// The router state: a cheap handle on [`Notary`].
pub type NotaryState = Arc<Notary>;

impl Service for Config {
    fn name(&self) -> &'static str {
        "notary"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn schema(&self) -> &'static Schema {
        &hearth_federation::SCHEMA
    }

    fn check(&self, _: &ServerName) -> Result<(), ServiceError> {
        Ok(())
    }

    fn build<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Parts, ServiceError>> {
        Box::pin(async move {
            let notary = Notary {
                server_name: ctx.server_name.clone(),
                keys: ctx.keys.clone(),
                config: self.clone(),
            };
            Ok(Parts {
                routes: Some(Routes {
                    router: router(Arc::new(notary)),
                    policy: HttpPolicy::from_http(&ctx.http),
                }),
                tasks: Vec::new(),
                summary: vec!["notary    /_matrix/key/v2/server".to_owned()],
                advice: Vec::new(),
            })
        })
    }
}

pub fn router(state: NotaryState) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(get_server_key))
        .with_state(state)
}

/// `GET /_matrix/key/v2/server`: every current key, the retired ones, and a
/// signature by each current key (Server-Server API "Publishing Keys").
async fn get_server_key(State(state): State<NotaryState>) -> Result<Json<Value>, MatrixError> {
    let verify_keys: Map<String, Value> = state
        .keys
        .current
        .iter()
        .map(|k| (k.key_id(), json!({ "key": k.public_key_base64() })))
        .collect();
    let old_verify_keys: Map<String, Value> = state
        .keys
        .old
        .iter()
        .map(|k| {
            (
                k.key_id.clone(),
                json!({ "key": k.key, "expired_ts": k.expired_ts }),
            )
        })
        .collect();
    let mut body = json!({
        "server_name": state.server_name.as_str(),
        "verify_keys": verify_keys,
        "old_verify_keys": old_verify_keys,
        "valid_until_ts": now_ms() + state.config.key_refresh_interval.as_millis_i64(),
    });
    for key in &state.keys.current {
        sign_json(&mut body, state.server_name.as_str(), key).map_err(MatrixError::internal)?;
    }
    Ok(Json(body))
}
