//! The auth and terms layer shared by the identity service and the
//! integration manager (MSC2140 for both, MSC1961 for the latter):
//!
//! - accounts come from the homeserver's OpenID token, checked through the
//!   federation client at `/_matrix/federation/v1/openid/userinfo`;
//! - service tokens are random, handed out once and stored as SHA-256 hashes;
//! - terms policies come from config, and a user must accept every current
//!   policy before any endpoint that requires terms answers;
//! - the [`Authenticated`] and [`TermsAccepted`] extractors enforce both.

mod cache;
mod config;
mod extract;
mod openid;
mod routes;
mod store;
mod terms;

pub use config::{AuthConfig, PolicyConfig, PolicyLanguage, TermsConfig};
pub use extract::{Authenticated, TermsAccepted};
pub use openid::OpenIdCredentials;
pub use routes::{Account, Empty, accept_terms, get_account, get_terms, logout};
pub use terms::Terms;

use arc_swap::ArcSwap;
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
    migrations: &[
        Migration {
            description: "service tokens and accepted terms",
            sql: include_str!("../migrations/0001_tokens_and_terms.sql"),
        },
        Migration {
            description: "change log of logouts and erasures, for caches",
            sql: include_str!("../migrations/0002_auth_changes.sql"),
        },
    ],
};

/// One service's auth: its own tokens, its own policies.
#[derive(Debug, Clone)]
pub struct Auth(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    service: &'static str,
    db: Database,
    federation: FederationClient,
    /// Replaced as a whole on reload; requests read the current one.
    terms: ArcSwap<Terms>,
    /// Where served policy documents live, for terms built on reload.
    public_base_url: String,
    allowed_homeservers: Vec<ServerName>,
    query_token_names: &'static [&'static str],
    cache: cache::Cache,
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
            terms: ArcSwap::from_pointee(Terms::new(service, &config.terms, public_base_url)?),
            public_base_url: public_base_url.to_owned(),
            allowed_homeservers: config.allowed_homeservers.clone(),
            query_token_names,
            cache: cache::Cache::new(),
        })))
    }

    /// The user `token` belongs to, from memory when this instance has
    /// seen it since the last logout it heard of.
    pub(crate) async fn token_user(&self, token: &str) -> Result<Option<UserId>, MatrixError> {
        let hash = store::hash(token);
        let asked = self.0.cache.refresh(&self.0.db, self.0.service).await?;
        if let Some(user_id) = self.0.cache.token(&hash) {
            return Ok(Some(user_id));
        }
        let user_id = store::token_user(&self.0.db, self.0.service, &hash).await?;
        if let Some(user_id) = &user_id {
            self.0.cache.keep_token(asked, hash, user_id.clone());
        }
        Ok(user_id)
    }

    /// Whether `user_id` accepted every current policy; once true, from
    /// memory.
    pub(crate) async fn terms_accepted(&self, user_id: &UserId) -> Result<bool, MatrixError> {
        if self.terms().is_empty() {
            return Ok(true);
        }
        let asked = self.0.cache.refresh(&self.0.db, self.0.service).await?;
        if self.0.cache.accepted(user_id) {
            return Ok(true);
        }
        // Read after `asked`: terms replaced since then also moved the
        // cache's generation, so an answer about older terms is not kept.
        let terms = self.terms();
        let accepted = store::accepted_urls(&self.0.db, self.0.service, user_id).await?;
        let all = terms.all_accepted(&accepted);
        if all {
            self.0.cache.keep_accepted(asked, user_id.clone());
        }
        Ok(all)
    }

    /// Invalidates `token` here and, through the change log, everywhere.
    /// False when it was not a token of this service.
    pub(crate) async fn delete_token(&self, token: &str) -> Result<bool, MatrixError> {
        let hash = store::hash(token);
        let deleted = store::delete_token(&self.0.db, self.0.service, &hash).await?;
        self.0.cache.drop_token(&hash);
        Ok(deleted)
    }

    /// The current policies.
    pub fn terms(&self) -> Arc<Terms> {
        self.0.terms.load_full()
    }

    /// Checks and builds policies from `config` for this service, changing
    /// nothing: the first half of a reload.
    pub fn new_terms(&self, config: &TermsConfig) -> Result<Terms, String> {
        Terms::new(self.0.service, config, &self.0.public_base_url)
    }

    /// Serves `terms` from now on. Acceptances held in memory were of the
    /// old policies, so they are dropped: a user who accepted only an older
    /// version must accept again (MSC2140), and one who accepted the current
    /// version is found in the database as before.
    pub fn replace_terms(&self, terms: Terms) {
        self.0.terms.store(Arc::new(terms));
        self.0.cache.drop_acceptances();
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

    /// Erases every token and acceptance held for `user_id`, here and,
    /// through the change log, in every instance's cache.
    pub async fn forget(&self, user_id: &UserId) -> Result<(), MatrixError> {
        store::forget(&self.0.db, self.0.service, user_id).await?;
        self.0.cache.drop_user(user_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyConfig, PolicyLanguage, TermsConfig};
    use hearth_federation::BoxFuture;
    use hearth_federation::connect::{Dns, SrvTarget};
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    /// No test here reaches another server.
    struct NoDns;

    impl Dns for NoDns {
        fn srv(&self, _: &str) -> BoxFuture<'_, std::io::Result<Vec<SrvTarget>>> {
            Box::pin(async { Err(std::io::Error::other("no DNS in these tests")) })
        }
        fn ip(&self, _: &str) -> BoxFuture<'_, std::io::Result<Vec<IpAddr>>> {
            Box::pin(async { Err(std::io::Error::other("no DNS in these tests")) })
        }
    }

    const POLICY_URL: &str = "https://example.org/privacy-1.html";

    /// One policy, "privacy", at `version`, with the document at `url`.
    fn privacy_policy(version: &str, url: &str) -> TermsConfig {
        let mut terms = TermsConfig::default();
        terms.policies.insert(
            "privacy".to_owned(),
            PolicyConfig {
                version: version.to_owned(),
                languages: [(
                    "en".to_owned(),
                    PolicyLanguage {
                        name: "Privacy".to_owned(),
                        url: Some(url.to_owned()),
                        file: None,
                    },
                )]
                .into(),
            },
        );
        terms
    }

    /// One instance's auth for the identity service, with one policy.
    fn instance(db: &Database) -> Auth {
        let federation = FederationClient::new(
            &hearth_federation::FederationConfig::default(),
            Arc::new(NoDns),
            None,
        )
        .unwrap();
        let config = AuthConfig {
            allowed_homeservers: Vec::new(),
            terms: privacy_policy("1", POLICY_URL),
        };
        Auth::new(
            "identity",
            db.clone(),
            federation,
            &config,
            "https://is",
            &[],
        )
        .unwrap()
    }

    fn alice() -> UserId {
        UserId::parse("@alice:example.org").unwrap()
    }

    async fn token_for(db: &Database, user_id: &UserId) -> String {
        let token = store::new_token();
        store::insert_token(db, "identity", &token, user_id)
            .await
            .unwrap();
        token
    }

    /// Polls until `done` holds, for at most 1.5 s; how long it took.
    async fn within_a_second<F: std::future::Future<Output = bool>>(
        mut done: impl FnMut() -> F,
    ) -> Duration {
        let start = Instant::now();
        while !done().await {
            assert!(
                start.elapsed() < Duration::from_millis(1500),
                "instances still disagree after {:?}",
                start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// Issue 10 item 10: a request with a known token and accepted terms
    /// costs no database query. Proven with the database closed: the
    /// answers still come, from memory.
    #[tokio::test]
    async fn known_tokens_and_acceptances_are_answered_from_memory() {
        for (db, _dir) in hearth_core::storage::testing::all(&crate::SCHEMA).await {
            let auth = instance(&db);
            let token = token_for(&db, &alice()).await;
            store::accept_urls(&db, "identity", &alice(), &[POLICY_URL])
                .await
                .unwrap();
            assert_eq!(auth.token_user(&token).await.unwrap(), Some(alice()));
            assert!(auth.terms_accepted(&alice()).await.unwrap());
            db.close().await;
            assert_eq!(auth.token_user(&token).await.unwrap(), Some(alice()));
            assert!(auth.terms_accepted(&alice()).await.unwrap());
        }
    }

    /// Reloaded terms (SIGHUP) are what `GET /terms` shows from then on, and
    /// an acceptance held in memory for the old version no longer counts:
    /// the user must accept the new version (MSC2140), and then does.
    #[tokio::test]
    async fn replaced_terms_ask_users_of_the_old_version_again() {
        let (db, _dir) = hearth_core::storage::testing::sqlite(&crate::SCHEMA).await;
        let auth = instance(&db);
        store::accept_urls(&db, "identity", &alice(), &[POLICY_URL])
            .await
            .unwrap();
        assert!(auth.terms_accepted(&alice()).await.unwrap());

        let v2_url = "https://example.org/privacy-2.html";
        let v2 = auth.new_terms(&privacy_policy("2", v2_url)).unwrap();
        // Prepared, not applied: nothing changed yet.
        assert_eq!(
            auth.terms().to_json()["policies"]["privacy"]["version"],
            "1"
        );
        auth.replace_terms(v2);
        assert_eq!(
            auth.terms().to_json()["policies"]["privacy"]["version"],
            "2"
        );
        assert!(!auth.terms_accepted(&alice()).await.unwrap());
        assert!(auth.terms().is_current_url(v2_url));
        store::accept_urls(&db, "identity", &alice(), &[v2_url])
            .await
            .unwrap();
        assert!(auth.terms_accepted(&alice()).await.unwrap());

        let mut bad = privacy_policy("3", v2_url);
        bad.policies.get_mut("privacy").unwrap().languages.clear();
        let err = auth.new_terms(&bad).unwrap_err();
        assert!(
            err.contains("identity.auth.terms.policies.privacy"),
            "{err}"
        );
    }

    /// Issue 10 item 10: instances sharing a database agree within a
    /// second after a logout on one of them, as lookups follow binds.
    #[tokio::test]
    async fn a_logout_elsewhere_is_honoured_within_a_second() {
        for (db, _dir) in hearth_core::storage::testing::all(&crate::SCHEMA).await {
            let (here, there) = (instance(&db), instance(&db));
            let token = token_for(&db, &alice()).await;
            assert_eq!(here.token_user(&token).await.unwrap(), Some(alice()));
            assert!(there.delete_token(&token).await.unwrap());
            // The instance that logged out knows at once.
            assert_eq!(there.token_user(&token).await.unwrap(), None);
            within_a_second(|| async { here.token_user(&token).await.unwrap().is_none() }).await;
        }
    }

    /// An erasure elsewhere (`hearth identity forget`) takes the user's
    /// tokens and acceptances from every instance within a second.
    #[tokio::test]
    async fn an_erasure_elsewhere_is_honoured_within_a_second() {
        for (db, _dir) in hearth_core::storage::testing::all(&crate::SCHEMA).await {
            let (here, there) = (instance(&db), instance(&db));
            let token = token_for(&db, &alice()).await;
            store::accept_urls(&db, "identity", &alice(), &[POLICY_URL])
                .await
                .unwrap();
            assert_eq!(here.token_user(&token).await.unwrap(), Some(alice()));
            assert!(here.terms_accepted(&alice()).await.unwrap());
            there.forget(&alice()).await.unwrap();
            within_a_second(|| async {
                here.token_user(&token).await.unwrap().is_none()
                    && !here.terms_accepted(&alice()).await.unwrap()
            })
            .await;
        }
    }

    /// Refusals are never cached: a token or an acceptance made on
    /// another instance counts here at once.
    #[tokio::test]
    async fn new_tokens_and_acceptances_count_at_once_everywhere() {
        for (db, _dir) in hearth_core::storage::testing::all(&crate::SCHEMA).await {
            let here = instance(&db);
            let token = store::new_token();
            assert_eq!(here.token_user(&token).await.unwrap(), None);
            assert!(!here.terms_accepted(&alice()).await.unwrap());
            store::insert_token(&db, "identity", &token, &alice())
                .await
                .unwrap();
            store::accept_urls(&db, "identity", &alice(), &[POLICY_URL])
                .await
                .unwrap();
            assert_eq!(here.token_user(&token).await.unwrap(), Some(alice()));
            assert!(here.terms_accepted(&alice()).await.unwrap());
        }
    }

    /// Issue 10 item 6: a 64 KiB OpenID token gave 502 and an ERROR line,
    /// as the homeserver refused the URL it made. Fields sent on are
    /// bounded: the client's mistake is its 400, and nothing is sent.
    #[tokio::test]
    async fn an_oversized_openid_token_is_the_clients_400() {
        let (db, _dir) = hearth_core::storage::testing::sqlite(&crate::SCHEMA).await;
        let auth = instance(&db);
        let credentials: OpenIdCredentials = serde_json::from_value(serde_json::json!({
            "access_token": "a".repeat(openid::MAX_ACCESS_TOKEN_LEN + 1),
            "token_type": "Bearer",
            "matrix_server_name": "example.org",
            "expires_in": 3600,
        }))
        .unwrap();
        let err = auth.register(&credentials).await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err.errcode, hearth_core::ErrCode::INVALID_PARAM, "{err}");
    }

    /// A log line writer into a shared buffer, for the test below.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 10 item 6: every failed `/account/register` was logged at
    /// ERROR. A homeserver that does not answer was named by the client:
    /// `info` at most, and never the token.
    #[tokio::test]
    async fn an_unreachable_homeserver_is_logged_at_info_at_most() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let (db, _dir) = hearth_core::storage::testing::sqlite(&crate::SCHEMA).await;
        let auth = instance(&db);
        // Only what registering logs.
        let _guard = tracing::subscriber::set_default(subscriber);
        let credentials: OpenIdCredentials = serde_json::from_value(serde_json::json!({
            "access_token": "SECRETOPENIDTOKEN",
            "matrix_server_name": "nowhere.example.org",
        }))
        .unwrap();
        let err = auth.register(&credentials).await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_GATEWAY, "{err}");
        let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("could not reach the homeserver"), "{log}");
        for level in ["WARN", "ERROR"] {
            assert!(!log.contains(level), "{log}");
        }
        assert!(!log.contains("SECRETOPENIDTOKEN"), "{log}");
    }
}
