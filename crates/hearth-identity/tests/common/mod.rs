//! Shared helpers for the identity service's tests:
//!
//! - [`Harness`]: an `IdentityState` on a test database, its router driven
//!   in-process, and a fake homeserver (plain HTTP on 127.0.0.1) that
//!   answers OpenID `userinfo` for `hs.test` and records every request, so
//!   `POST /account/register` hands out real tokens;
//! - [`SmtpCapture`]: a real SMTP server (PyPI `aiosmtpd`) writing each mail
//!   into a Maildir, and [`Mail`] to read them;
//! - [`backends`]: every database this run covers (SQLite always,
//!   PostgreSQL when `HEARTH_TEST_POSTGRES` is set).
//!
//! Nothing leaves the machine: DNS answers nothing, and `hs.test` is an
//! override to the fake homeserver.

#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::get;
use hearth_core::ids::ServerName;
use hearth_core::keys::SigningKey;
use hearth_core::storage::{Database, testing};
use hearth_federation::client::Origin;
use hearth_federation::config::ServerOverride;
use hearth_federation::{FederationClient, FederationConfig};
use hearth_identity::{Config, IdentityState, SmsSender, SmtpTls};
pub(crate) use hearth_testkit::{FakeHomeserver, Mail, SmtpCapture, sha256_lookup_hash};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The identity server's name, and its `public_base_url` is `https://is.test`.
pub(crate) const SERVER_NAME: &str = "is.test";
pub(crate) const PUBLIC_BASE_URL: &str = "https://is.test";
/// The homeserver whose users register; the fake one serves it.
pub(crate) const HOMESERVER: &str = "hs.test";
/// The one terms document of [`test_config`].
pub(crate) const TERMS_URL: &str = "https://is.test/terms/privacy-1-en.html";
pub(crate) const BRAND: &str = "Hearth Test";

/// Every database backend of this run, each fresh and migrated. Keep the
/// directory guard alive as long as the database.
pub(crate) async fn backends() -> Vec<(Database, Option<tempfile::TempDir>)> {
    testing::all(&hearth_identity::SCHEMA).await
}

/// The shared context the binary would build, signing as `server_name`
/// with `key`.
pub(crate) fn context(
    server_name: &str,
    key: SigningKey,
    db: Database,
    federation: FederationClient,
) -> hearth_service::Context {
    context_with_ring(
        server_name,
        hearth_core::keys::KeyRing {
            current: vec![key],
            old: Vec::new(),
        },
        db,
        federation,
    )
}

/// [`context`] with retired keys too.
pub(crate) fn context_with_ring(
    server_name: &str,
    ring: hearth_core::keys::KeyRing,
    db: Database,
    federation: FederationClient,
) -> hearth_service::Context {
    hearth_service::Context::new(
        ServerName::parse(server_name).unwrap(),
        ring,
        db,
        federation,
        hearth_core::config::HttpConfig::default(),
        std::env::temp_dir(),
        hearth_service::Shutdown::new().1,
    )
}

/// A config for tests: one terms policy (`TERMS_URL`), links under
/// `PUBLIC_BASE_URL`, SMTP without TLS to a closed port (point it at an
/// [`SmtpCapture`] with [`SmtpCapture::configure`]), the `log` SMS sender.
pub(crate) fn test_config() -> Config {
    let mut config = Config {
        public_base_url: Some(PUBLIC_BASE_URL.to_owned()),
        ..Config::default()
    };
    config.auth.terms = hearth_testkit::privacy_policy("Privacy policy", TERMS_URL);
    config.email.smtp_host = "127.0.0.1".to_owned();
    // Nothing listens on the discard port here: sends fail until a
    // capture server is configured.
    config.email.smtp_port = 9;
    config.email.smtp_tls = SmtpTls::None;
    config.email.from = format!("{BRAND} <noreply@{SERVER_NAME}>");
    config.email.brand = BRAND.to_owned();
    config.sms.sender = SmsSender::Log;
    config
}

pub(crate) use hearth_testkit::TestResponse;

/// The identity service on a test database, with a fake homeserver.
#[derive(Debug)]
pub(crate) struct Harness {
    pub(crate) state: IdentityState,
    pub(crate) homeserver: FakeHomeserver,
    router: Router,
    _db_dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// Builds the service with `hearth_identity::build`, a new signing key
    /// (also the federation origin, for signed requests) and `config`.
    pub(crate) async fn start(
        db: Database,
        db_dir: Option<tempfile::TempDir>,
        config: Config,
    ) -> Self {
        Self::start_with(db, db_dir, config, SigningKey::generate(), &[]).await
    }

    /// One request through the router. `token` goes in `Authorization:
    /// Bearer`; `body` is sent as JSON.
    pub(crate) async fn request(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&body).unwrap())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        TestResponse::read(response).await
    }

    /// `GET /_matrix/identity/v2<path>`.
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> TestResponse {
        self.request(
            Method::GET,
            &format!("/_matrix/identity/v2{path}"),
            token,
            None,
        )
        .await
    }

    /// `POST /_matrix/identity/v2<path>` with a JSON body.
    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.request(
            Method::POST,
            &format!("/_matrix/identity/v2{path}"),
            token,
            Some(body),
        )
        .await
    }

    /// `POST /account/register` as `@<localpart>:hs.test`: the service token.
    pub(crate) async fn register(&self, localpart: &str) -> String {
        let response = self
            .post(
                "/account/register",
                None,
                json!({
                    "access_token": localpart,
                    "token_type": "Bearer",
                    "matrix_server_name": HOMESERVER,
                    "expires_in": 3600,
                }),
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        response.json()["token"].as_str().unwrap().to_owned()
    }

    /// `POST /terms` accepting every document `GET /terms` lists.
    pub(crate) async fn accept_terms(&self, token: &str) {
        let terms = self.get("/terms", None).await.json();
        let urls: Vec<Value> = terms["policies"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|policy| policy.as_object().unwrap().values())
            .filter_map(|lang| lang.get("url").cloned())
            .collect();
        let response = self
            .post("/terms", Some(token), json!({ "user_accepts": urls }))
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    }

    /// A registered user who accepted the terms: their token.
    pub(crate) async fn user(&self, localpart: &str) -> String {
        let token = self.register(localpart).await;
        self.accept_terms(&token).await;
        token
    }
}

/// The query parameters of a URL, decoded.
pub(crate) fn query_params(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

// ---------------------------------------------------------------------------
// Added for the lookup, account, unbind and Sydent import tests.

impl Harness {
    /// Like [`Harness::start`], but signing with `signing_key` and with
    /// extra federation overrides (server name, base URL); an override for
    /// [`HOMESERVER`] replaces the fake homeserver's.
    pub(crate) async fn start_with(
        db: Database,
        db_dir: Option<tempfile::TempDir>,
        config: Config,
        signing_key: SigningKey,
        overrides: &[(&str, &str)],
    ) -> Self {
        let ring = hearth_core::keys::KeyRing {
            current: vec![signing_key],
            old: Vec::new(),
        };
        Self::start_with_ring(db, db_dir, config, ring, overrides).await
    }

    /// Like [`Harness::start_with`], with this server's keys as the binary
    /// loads them: current (the first signs) and retired.
    pub(crate) async fn start_with_ring(
        db: Database,
        db_dir: Option<tempfile::TempDir>,
        config: Config,
        ring: hearth_core::keys::KeyRing,
        overrides: &[(&str, &str)],
    ) -> Self {
        let signing_key = ring.current[0].clone();
        let homeserver = FakeHomeserver::start(HOMESERVER);
        let server_name = ServerName::parse(SERVER_NAME).unwrap();
        let mut federation = FederationConfig::default();
        federation.overrides.insert(
            HOMESERVER.to_owned(),
            ServerOverride {
                url: homeserver.url(),
            },
        );
        for (name, url) in overrides {
            federation.overrides.insert(
                (*name).to_owned(),
                ServerOverride {
                    url: (*url).to_owned(),
                },
            );
        }
        let federation = FederationClient::new(
            &federation,
            hearth_testkit::federation::fake_dns(&[]),
            Some(Origin {
                server_name: server_name.clone(),
                key: signing_key.clone(),
            }),
        )
        .unwrap();
        let ctx = context_with_ring(server_name.as_str(), ring, db, federation);
        let state = hearth_identity::build(&config, &ctx)
            .unwrap_or_else(|e| panic!("the identity service builds: {e}"));
        Self {
            router: hearth_identity::router(state.clone()),
            state,
            homeserver,
            _db_dir: db_dir,
        }
    }

    /// Any request through the router, headers as given.
    pub(crate) async fn send(&self, request: Request<Body>) -> TestResponse {
        TestResponse::read(self.router.clone().oneshot(request).await.unwrap()).await
    }

    /// A request through the router wrapped as the binary serves it
    /// (`hearth_core::http::public_app` with the default `[http]`), so the
    /// spec's fallbacks for unknown paths and methods apply.
    pub(crate) async fn public_request(&self, method: Method, uri: &str) -> TestResponse {
        let http = hearth_core::config::HttpConfig::default();
        let app = hearth_core::http::public_app(
            [(
                self.router.clone(),
                hearth_core::http::HttpPolicy::from_http(&http),
            )],
            &http,
        );
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        TestResponse::read(app.oneshot(request).await.unwrap()).await
    }
}

/// The `GET submitToken` link of a validation mail, if it has one
/// (under whatever `public_base_url`).
pub(crate) fn validation_link(mail: &Mail) -> Option<String> {
    mail.part("text/plain")?
        .split_whitespace()
        .find(|word| {
            word.starts_with("https://")
                && word.contains("/_matrix/identity/v2/validate/email/submitToken?")
        })
        .map(str::to_owned)
}

/// Validates `address` for the user of `token` through the spec's flow:
/// `requestToken`, the token from the mail `smtp` receives, `POST
/// submitToken`. Returns the sid.
pub(crate) async fn validate_email(
    h: &Harness,
    smtp: &SmtpCapture,
    token: &str,
    address: &str,
    client_secret: &str,
) -> String {
    let requested = h
        .post(
            "/validate/email/requestToken",
            Some(token),
            json!({"client_secret": client_secret, "email": address, "send_attempt": 1}),
        )
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.text());
    let sid = requested.json()["sid"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        let found = smtp.mails().iter().find_map(|mail| {
            let params = query_params(&validation_link(mail)?);
            (params.get("sid") == Some(&sid)).then(|| params["token"].clone())
        });
        if let Some(code) = found {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "no validation mail for {address}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let submitted = h
        .post(
            "/validate/email/submitToken",
            Some(token),
            json!({"sid": sid, "client_secret": client_secret, "token": code}),
        )
        .await;
    assert_eq!(submitted.json(), json!({"success": true}));
    sid
}

/// Validates `address` (see [`validate_email`]) and binds it to `mxid`,
/// the user of `token`. Returns the sid.
pub(crate) async fn bind_email(
    h: &Harness,
    smtp: &SmtpCapture,
    token: &str,
    mxid: &str,
    address: &str,
    client_secret: &str,
) -> String {
    let sid = validate_email(h, smtp, token, address, client_secret).await;
    let bound = h
        .post(
            "/3pid/bind",
            Some(token),
            json!({"sid": sid, "client_secret": client_secret, "mxid": mxid}),
        )
        .await;
    assert_eq!(bound.status, StatusCode::OK, "{}", bound.text());
    assert_eq!(bound.json()["mxid"], mxid);
    sid
}

/// RFC 4648 §5 base64 without padding.
pub(crate) fn base64_url_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The current pepper, from `GET /hash_details` as the user of `token`.
pub(crate) async fn lookup_pepper(h: &Harness, token: &str) -> String {
    let details = h.get("/hash_details", Some(token)).await;
    assert_eq!(details.status, StatusCode::OK, "{}", details.text());
    details.json()["lookup_pepper"].as_str().unwrap().to_owned()
}

/// A `sha256` lookup of `(address, medium)` pairs as a client makes it
/// (`/hash_details`, then `/lookup`): the mxid each pair maps to, if any.
pub(crate) async fn lookup_mxids(
    h: &Harness,
    token: &str,
    threepids: &[(&str, &str)],
) -> Vec<Option<String>> {
    let pepper = lookup_pepper(h, token).await;
    let hashes: Vec<String> = threepids
        .iter()
        .map(|(address, medium)| sha256_lookup_hash(address, medium, &pepper))
        .collect();
    let response = h
        .post(
            "/lookup",
            Some(token),
            json!({"algorithm": "sha256", "pepper": pepper, "addresses": hashes}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let mappings = response.json()["mappings"].clone();
    hashes
        .iter()
        .map(|hash| {
            mappings
                .get(hash)
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// A homeserver's key server on 127.0.0.1 over plain HTTP, for X-Matrix:
/// `GET /_matrix/key/v2/server` answers `name`'s key, self-signed and
/// valid for an hour; OpenID `userinfo` answers like [`FakeHomeserver`]'s,
/// for users of `name`, so it can stand in for [`HOMESERVER`].
#[derive(Debug)]
pub(crate) struct FakeKeyServer {
    pub(crate) url: String,
    pub(crate) name: ServerName,
    pub(crate) key: SigningKey,
    key_requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct KeyServerState {
    name: ServerName,
    key: SigningKey,
    key_requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeKeyServer {
    pub(crate) async fn start(name: &str, key: SigningKey) -> Self {
        let name = ServerName::parse(name).unwrap();
        let key_requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let state = Arc::new(KeyServerState {
            name: name.clone(),
            key: key.clone(),
            key_requests: key_requests.clone(),
        });
        let app = Router::new()
            .route("/_matrix/key/v2/server", get(server_keys))
            .route(
                "/_matrix/federation/v1/openid/userinfo",
                get(key_server_userinfo),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            name,
            key,
            key_requests,
            task,
        }
    }

    /// How many times its keys were fetched.
    pub(crate) fn key_requests(&self) -> usize {
        self.key_requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FakeKeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server_keys(State(state): State<Arc<KeyServerState>>) -> axum::Json<Value> {
    state
        .key_requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut keys = json!({
        "server_name": state.name.as_str(),
        "verify_keys": { state.key.key_id(): { "key": state.key.public_key_base64() } },
        "old_verify_keys": {},
        "valid_until_ts": hearth_core::time::now_ms() + 3_600_000,
    });
    hearth_core::signed_json::sign_json(&mut keys, state.name.as_str(), &state.key).unwrap();
    axum::Json(keys)
}

async fn key_server_userinfo(
    State(state): State<Arc<KeyServerState>>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    match query.get("access_token") {
        Some(token) if !token.starts_with("bad") => (
            StatusCode::OK,
            axum::Json(json!({ "sub": format!("@{token}:{}", state.name) })),
        ),
        _ => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Access token unknown"})),
        ),
    }
}

/// Points an identity config at an [`SmtpCapture`], without TLS.
pub(crate) trait ConfigureSmtp {
    fn configure(&self, config: &mut Config);
}

impl ConfigureSmtp for SmtpCapture {
    fn configure(&self, config: &mut Config) {
        config.email.smtp_host = "127.0.0.1".to_owned();
        config.email.smtp_port = self.port();
        config.email.smtp_tls = SmtpTls::None;
    }
}
