//! The auth and terms layer shared by the identity service and the
//! integration manager (MSC2140 for both, MSC1961 for the latter):
//!
//! - accounts come from the homeserver's OpenID token, checked through the
//!   federation client at `/_matrix/federation/v1/openid/userinfo`;
//! - service tokens are random, handed out once and stored as SHA-256 hashes;
//! - terms policies come from config, and a user must accept every current
//!   policy before any endpoint that requires terms answers;
//! - the [`Authenticated`] and [`TermsAccepted`] extractors enforce both.

mod config;
mod extract;
mod openid;
mod routes;
mod store;
mod terms;

pub use config::{AuthConfig, PolicyConfig, PolicyLanguage, TermsConfig};
pub use extract::{Authenticated, TermsAccepted};
pub use openid::OpenIdCredentials;
pub use routes::{accept_terms, get_account, get_terms, logout};
pub use terms::Terms;

use axum::Router;
use axum::extract::FromRef;
use hearth_core::MatrixError;
use hearth_core::ids::{ServerName, UserId};
use hearth_core::storage::{Database, Migration, Schema};
use hearth_federation::FederationClient;
use std::sync::Arc;

/// The auth crate's tables: service tokens and accepted terms.
pub static SCHEMA: Schema = Schema {
    component: "auth",
    depends_on: &[&hearth_core::storage::SCHEMA],
    migrations: &[Migration {
        description: "service tokens and accepted terms",
        sql: include_str!("../migrations/0001_tokens_and_terms.sql"),
    }],
};

/// One service's auth: its own tokens, its own policies.
#[derive(Debug, Clone)]
pub struct Auth(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    service: &'static str,
    db: Database,
    federation: FederationClient,
    terms: Terms,
    allowed_homeservers: Vec<ServerName>,
    query_token_names: &'static [&'static str],
}

impl Auth {
    /// `service` namespaces tokens and acceptances ("identity",
    /// "integrations"); `query_token_names` lists the query parameters that
    /// may carry a token besides the `Authorization` header.
    pub fn new(
        service: &'static str,
        db: Database,
        federation: FederationClient,
        config: &AuthConfig,
        public_base_url: &str,
        query_token_names: &'static [&'static str],
    ) -> Result<Self, String> {
        Ok(Self(Arc::new(Inner {
            service,
            db,
            federation,
            terms: Terms::new(service, &config.terms, public_base_url)?,
            allowed_homeservers: config.allowed_homeservers.clone(),
            query_token_names,
        })))
    }

    pub fn terms(&self) -> &Terms {
        &self.0.terms
    }

    /// The route serving this service's policy documents, under its own
    /// name, so that several services' routes never overlap.
    pub fn terms_document_route<S>(&self) -> Router<S>
    where
        Auth: FromRef<S>,
        S: Clone + Send + Sync + 'static,
    {
        Router::new().route(
            &format!(
                "/_hearth/terms/{}/{{id}}/{{version}}/{{lang}}",
                self.0.service
            ),
            axum::routing::get(routes::terms_document),
        )
    }

    /// Exchanges OpenID credentials for a new service token
    /// (`POST /account/register`).
    pub async fn register(
        &self,
        credentials: &OpenIdCredentials,
    ) -> Result<(UserId, String), MatrixError> {
        let user_id = openid::userinfo(&self.0.federation, credentials).await?;
        if !self.0.allowed_homeservers.is_empty()
            && !self.0.allowed_homeservers.contains(user_id.server_name())
        {
            return Err(MatrixError::forbidden(
                "This homeserver is not allowed to use this service",
            ));
        }
        let token = store::new_token();
        store::insert_token(&self.0.db, self.0.service, &token, &user_id).await?;
        tracing::info!(service = self.0.service, "account registered");
        Ok((user_id, token))
    }

    /// What is held about `user_id`: how many tokens, which policies accepted.
    pub async fn export(&self, user_id: &UserId) -> Result<serde_json::Value, MatrixError> {
        let tokens = store::count_tokens(&self.0.db, self.0.service, user_id).await?;
        let accepted = store::accepted_urls(&self.0.db, self.0.service, user_id).await?;
        Ok(serde_json::json!({ "active_tokens": tokens, "accepted_terms": accepted }))
    }

    /// Erases every token and acceptance held for `user_id`.
    pub async fn forget(&self, user_id: &UserId) -> Result<(), MatrixError> {
        store::forget(&self.0.db, self.0.service, user_id).await
    }
}
