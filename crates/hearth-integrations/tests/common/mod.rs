//! Shared helpers for the integration manager's service tests: the service
//! built with `hearth_integrations::build` on each test database, wrapped
//! in the shared HTTP layers (`public_app`, so CORS and the Matrix fallbacks
//! are what the binary serves), and driven in-process; a fake homeserver on
//! 127.0.0.1 vouches for OpenID tokens of `hs.test`, and a page server
//! serves pages for `title_lookup`. Nothing leaves the machine: DNS knows
//! only `pages.test` (127.0.0.1), and `hs.test` is a federation override.

#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyRing, SigningKey};
use hearth_core::storage::{Database, testing};
use hearth_federation::config::ServerOverride;
use hearth_federation::{FederationClient, FederationConfig};
use hearth_integrations::{Config, IntegrationsState, TitleLookupConfig};
use hearth_service::Service;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

pub(crate) const SERVER_NAME: &str = "im.test";
pub(crate) const PUBLIC_BASE_URL: &str = "https://im.test";
pub(crate) const HOMESERVER: &str = "hs.test";
/// A name the test DNS maps to 127.0.0.1, for page servers.
pub(crate) const PAGES_HOST: &str = "pages.test";
pub(crate) const TERMS_URL: &str = "https://im.test/terms/im-privacy-1-en.html";

/// Every database backend of this run, fresh and migrated.
pub(crate) async fn backends() -> Vec<(Database, Option<tempfile::TempDir>)> {
    testing::all(&hearth_integrations::SCHEMA).await
}

/// One policy (`TERMS_URL`), the default catalog plus a Jitsi domain.
pub(crate) fn test_config() -> Config {
    let mut config = Config {
        public_base_url: Some(PUBLIC_BASE_URL.to_owned()),
        ..Config::default()
    };
    config.auth.terms = hearth_testkit::privacy_policy("Integration manager privacy", TERMS_URL);
    config.widgets.jitsi_domain = Some("meet.example.org".to_owned());
    config
}

/// Serves `app` on a free loopback port: its base URL.
pub(crate) async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

pub(crate) use hearth_testkit::TestResponse;

/// The service on a test database with a fake homeserver.
#[derive(Debug)]
pub(crate) struct Harness {
    pub(crate) state: IntegrationsState,
    app: Router,
    _homeserver: hearth_testkit::FakeHomeserver,
    _db_dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// Built through the service contract (`Service::build` on the shared
    /// context, then `public_app` with the policy it asks for), as the
    /// binary does. Title lookups may reach loopback when `allow_private`
    /// (so a local page server stands in for the web); otherwise the
    /// guard applies.
    pub(crate) async fn start(
        db: Database,
        db_dir: Option<tempfile::TempDir>,
        config: Config,
        allow_private: bool,
    ) -> Self {
        let homeserver = hearth_testkit::FakeHomeserver::start(HOMESERVER);
        let mut federation = FederationConfig {
            allow_private_addresses: allow_private,
            ..FederationConfig::default()
        };
        federation.overrides.insert(
            HOMESERVER.to_owned(),
            ServerOverride {
                url: homeserver.url(),
            },
        );
        let dns = hearth_testkit::federation::fake_dns(&[PAGES_HOST]);
        let federation = FederationClient::new(&federation, dns, None).unwrap();
        let http = hearth_core::config::HttpConfig::default();
        let ctx = hearth_service::Context::new(
            ServerName::parse(SERVER_NAME).unwrap(),
            KeyRing {
                current: vec![SigningKey::generate()],
                old: Vec::new(),
            },
            db,
            federation,
            http.clone(),
            std::env::temp_dir(),
            hearth_service::Shutdown::new().1,
        );
        let state = hearth_integrations::build(&config, &ctx)
            .unwrap_or_else(|e| panic!("the integration manager builds: {e}"));
        let parts = config
            .build(&ctx)
            .await
            .unwrap_or_else(|e| panic!("the integration manager builds: {e}"));
        let routes = parts.routes.expect("the integration manager serves HTTP");
        // The router of `state` under the policy the service asks for, so a
        // test's direct calls (export, forget) and its requests share one
        // service, caches included, as in one process.
        let app = hearth_core::http::public_app(
            [(hearth_integrations::router(state.clone()), routes.policy)],
            &http,
        );
        Self {
            state,
            app,
            _homeserver: homeserver,
            _db_dir: db_dir,
        }
    }

    /// A harness per backend with [`test_config`].
    pub(crate) async fn all() -> Vec<Self> {
        let mut harnesses = Vec::new();
        for (db, dir) in backends().await {
            harnesses.push(Self::start(db, dir, test_config(), false).await);
        }
        harnesses
    }

    /// One request; `token` goes in `Authorization: Bearer`.
    pub(crate) async fn request(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(body.unwrap_or_else(Body::empty)).unwrap())
            .await
            .unwrap();
        TestResponse::read(response).await
    }

    pub(crate) async fn get(&self, uri: &str) -> TestResponse {
        self.request(Method::GET, uri, None, None).await
    }

    pub(crate) async fn post(&self, uri: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.request(
            Method::POST,
            uri,
            token,
            Some(Body::from(serde_json::to_vec(&body).unwrap())),
        )
        .await
    }

    /// `POST /api/register?v=1.1` as `@<localpart>:hs.test`, as Element
    /// does it: the `scalar_token`.
    pub(crate) async fn register(&self, localpart: &str) -> String {
        let response = self
            .post("/api/register?v=1.1", None, openid(localpart))
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        response.json()["scalar_token"].as_str().unwrap().to_owned()
    }

    /// `POST /_matrix/integrations/v1/terms` accepting the one policy, as
    /// matrix-js-sdk's `agreeToTerms` sends it.
    pub(crate) async fn accept_terms(&self, token: &str) {
        let response = self
            .post(
                "/_matrix/integrations/v1/terms",
                Some(token),
                json!({ "user_accepts": [TERMS_URL] }),
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({}));
    }

    /// A registered user who accepted the terms: their token.
    pub(crate) async fn user(&self, localpart: &str) -> String {
        let token = self.register(localpart).await;
        self.accept_terms(&token).await;
        token
    }
}

/// What `/openid/request_token` gives `@<localpart>:hs.test`.
pub(crate) fn openid(localpart: &str) -> Value {
    json!({
        "access_token": localpart,
        "token_type": "Bearer",
        "matrix_server_name": HOMESERVER,
        "expires_in": 3600,
    })
}

/// Bounds for title lookups in tests: short, and small pages.
pub(crate) fn small_lookups() -> TitleLookupConfig {
    TitleLookupConfig {
        timeout: hearth_core::config::Duration(std::time::Duration::from_secs(2)),
        max_page_size: hearth_core::config::ByteSize(4096),
    }
}
