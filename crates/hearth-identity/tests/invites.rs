//! Third-party invites (Identity Service API "Invitation storage" and
//! "Ephemeral invitation signing", Server-Server API "Third-party invites"
//! `onbind`), in-process through `hearth_identity::router`, on SQLite and,
//! when `HEARTH_TEST_POSTGRES` is set, PostgreSQL.
//!
//! Peers: a fake homeserver of this file's own (an in-process axum server
//! reached through a federation override) that answers OpenID `userinfo`
//! and receives `onbind`, checking each body and failing on demand, which
//! the shared `common::FakeHomeserver` does not; and the shared SMTP
//! capture (`common::SmtpCapture`, aiosmtpd) that the invite mails go to.

mod common;

use common::ConfigureSmtp;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::{get, post, put};
use common::{Mail, SmtpCapture};
use hearth_core::config::Duration as ConfigDuration;
use hearth_core::http::percent_encode;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyVersion, SigningKey, VerifyKey};
use hearth_core::signed_json::verify_json;
use hearth_core::storage::Database;
use hearth_federation::client::Origin;
use hearth_federation::config::ServerOverride;
use hearth_federation::{FederationClient, FederationConfig};
use hearth_identity::{IdentityState, OutboxSettings};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const IS_NAME: &str = common::SERVER_NAME;
const HS_NAME: &str = common::HOMESERVER;
const BASE: &str = "/_matrix/identity/v2";
const ALICE: &str = "@alice:hs.test";
const BOB: &str = "@bob:hs.test";

// ---------------------------------------------------------------------------
// Backends

/// Runs `case` on every backend of this run (`common::backends`: a fresh
/// SQLite file, and a fresh PostgreSQL schema when configured).
async fn on_every_backend<F, Fut>(case: F)
where
    F: Fn(Backend) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (db, dir) in common::backends().await {
        let sqlite_url = dir
            .as_ref()
            .map(|d| hearth_core::storage::default_sqlite_url(d.path()));
        case(Backend {
            db,
            sqlite_url,
            _dir: dir,
        })
        .await;
    }
}

mod every_backend {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_invite_answers_the_spec_shape_with_valid_keys() {
        super::on_every_backend(super::store_invite_answers_the_spec_shape_with_valid_keys).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_invite_refuses_what_the_spec_and_sydent_refuse() {
        super::on_every_backend(super::store_invite_refuses_what_the_spec_and_sydent_refuse).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_invite_limits_each_sender() {
        super::on_every_backend(super::store_invite_limits_each_sender).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_invite_takes_back_an_invite_whose_mail_failed() {
        super::on_every_backend(super::store_invite_takes_back_an_invite_whose_mail_failed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invite_mail_links_only_to_the_configured_client_and_signing_works() {
        super::on_every_backend(
            super::invite_mail_links_only_to_the_configured_client_and_signing_works,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_ed25519_refuses_unknown_tokens() {
        super::on_every_backend(super::sign_ed25519_refuses_unknown_tokens).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binding_an_invited_address_delivers_onbind() {
        super::on_every_backend(super::binding_an_invited_address_delivers_onbind).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binding_without_invites_queues_nothing() {
        super::on_every_backend(super::binding_without_invites_queues_nothing).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn onbind_is_retried_after_a_failure() {
        super::on_every_backend(super::onbind_is_retried_after_a_failure).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn onbind_outbox_survives_a_restart() {
        super::on_every_backend(super::onbind_outbox_survives_a_restart).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn onbind_is_dropped_after_the_retry_window() {
        super::on_every_backend(super::onbind_is_dropped_after_the_retry_window).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_workers_deliver_each_callback_once() {
        super::on_every_backend(super::concurrent_workers_deliver_each_callback_once).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_invite_limits_are_atomic_and_configurable() {
        super::on_every_backend(super::store_invite_limits_are_atomic_and_configurable).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invite_mails_are_capped_per_recipient() {
        super::on_every_backend(super::invite_mails_are_capped_per_recipient).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invite_template_receives_every_field() {
        super::on_every_backend(super::invite_template_receives_every_field).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn onbind_falls_back_to_put_and_remembers_it() {
        super::on_every_backend(super::onbind_falls_back_to_put_and_remembers_it).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_invite_knows_bindings_stored_before_case_folding() {
        super::on_every_backend(super::store_invite_knows_bindings_stored_before_case_folding)
            .await;
    }
}

struct Backend {
    db: Database,
    /// Set for SQLite, so a "restart" can open the file anew.
    sqlite_url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// A new pool on the same database, as a restarted process would open.
    async fn reopen(&self) -> Database {
        match &self.sqlite_url {
            Some(url) => {
                let db = Database::connect(url, 4, Duration::from_secs(5))
                    .await
                    .expect("SQLite reopens");
                db.migrate(&hearth_identity::SCHEMA)
                    .await
                    .expect("migrations are a no-op");
                db
            }
            // The PostgreSQL schema is only reachable through this pool.
            None => self.db.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The fake homeserver

/// `hs.test`: vouches for OpenID tokens (the token is the localpart) and
/// receives `onbind`, checking each body and answering 500 while
/// `failures_left` is positive.
#[derive(Clone)]
struct Homeserver {
    inner: Arc<HsInner>,
    url: String,
}

struct HsInner {
    /// POSTs to `onbind` refused with 405, as by a PUT-only ruma server.
    post_refusals: AtomicUsize,
    is_key: VerifyKey,
    is_key_id: String,
    failures_left: AtomicUsize,
    /// Every onbind request, in order, with its body check.
    requests: Mutex<Vec<(Value, Result<(), String>)>>,
}

impl Homeserver {
    /// `put_only`: `onbind` is routed for PUT only, as ruma-based servers
    /// (Conduit, conduwuit, tuwunel) route it after the OpenAPI.
    async fn start(is_key: &SigningKey, put_only: bool) -> Self {
        let inner = Arc::new(HsInner {
            post_refusals: AtomicUsize::new(0),
            is_key: is_key.verify_key(),
            is_key_id: is_key.key_id(),
            failures_left: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let onbind_route = if put_only {
            put(onbind).post(refuse_post)
        } else {
            post(onbind)
        };
        let app = Router::new()
            .route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
            .route("/_matrix/federation/v1/3pid/onbind", onbind_route)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { inner, url }
    }

    fn fail_next(&self, n: usize) {
        self.inner.failures_left.store(n, Ordering::SeqCst);
    }

    fn requests(&self) -> Vec<(Value, Result<(), String>)> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The bodies it accepted (answered 200).
    fn delivered(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(_, check)| check.is_ok())
            .map(|(body, _)| body)
            .collect()
    }

    async fn wait_for_requests(&self, n: usize) -> Vec<(Value, Result<(), String>)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "the homeserver saw {} onbind requests, expected {n}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn userinfo(Query(query): Query<HashMap<String, String>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match query.get("access_token") {
        Some(token) => axum::Json(json!({ "sub": format!("@{token}:{HS_NAME}") })).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn refuse_post(State(hs): State<Arc<HsInner>>) -> StatusCode {
    hs.post_refusals.fetch_add(1, Ordering::SeqCst);
    StatusCode::METHOD_NOT_ALLOWED
}

async fn onbind(
    State(hs): State<Arc<HsInner>>,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let failing = hs
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let check = if failing {
        Err("answered 500 on purpose".to_owned())
    } else {
        check_onbind(&body, &hs.is_key_id, &hs.is_key)
    };
    let status = match (&check, failing) {
        (_, true) => StatusCode::INTERNAL_SERVER_ERROR,
        (Ok(()), false) => StatusCode::OK,
        (Err(_), false) => StatusCode::BAD_REQUEST,
    };
    hs.requests.lock().unwrap().push((body, check));
    (status, axum::Json(json!({})))
}

/// What Synapse's `On3pidBindServlet` and `exchange_third_party_invite`
/// rely on, plus the fields Sydent sends: the association with `invites`,
/// each invite's `signed` verifiable with the identity server's key.
fn check_onbind(body: &Value, key_id: &str, key: &VerifyKey) -> Result<(), String> {
    let str_field = |v: &Value, name: &str| -> Result<String, String> {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{name} missing or not a string"))
    };
    if str_field(body, "medium")? != "email" {
        return Err("medium is not email".into());
    }
    let mxid = str_field(body, "mxid")?;
    let address = str_field(body, "address")?;
    for name in ["ts", "not_before", "not_after"] {
        body.get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("{name} missing"))?;
    }
    verify_json(body, IS_NAME, [(key_id, key)]).map_err(|e| format!("association: {e}"))?;
    let invites = body
        .get("invites")
        .and_then(Value::as_array)
        .filter(|i| !i.is_empty())
        .ok_or("invites missing or empty")?;
    for invite in invites {
        for name in ["medium", "address", "mxid", "room_id", "sender", "token"] {
            str_field(invite, name)?;
        }
        if str_field(invite, "mxid")? != mxid || str_field(invite, "address")? != address {
            return Err("an invite is for another 3PID or user".into());
        }
        let signed = invite.get("signed").ok_or("signed missing")?;
        if str_field(signed, "mxid")? != mxid
            || str_field(signed, "token")? != str_field(invite, "token")?
        {
            return Err("signed does not match its invite".into());
        }
        let fields: Vec<&String> = signed.as_object().unwrap().keys().collect();
        if fields != ["mxid", "signatures", "token"] {
            return Err(format!("signed holds {fields:?}"));
        }
        verify_json(signed, IS_NAME, [(key_id, key)]).map_err(|e| format!("signed: {e}"))?;
    }
    Ok(())
}

/// An address no other test uses, so mails are told apart.
fn unique_address(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{name}.{n}.{}@example.org", hearth_core::random::hex::<4>())
}

// ---------------------------------------------------------------------------
// The identity server

struct Env {
    state: IdentityState,
    app: Router,
    hs: Homeserver,
    key: SigningKey,
    smtp: Arc<SmtpCapture>,
}

/// A change to the test config.
type Configure = Box<dyn Fn(&mut hearth_identity::Config)>;

#[derive(Default)]
struct Options {
    /// Changes to the config, after the others.
    configure: Option<Configure>,
    /// The homeserver takes `onbind` by PUT only.
    onbind_put_only: bool,
    web_client_location: Option<String>,
    onbind_retry_for: Option<ConfigDuration>,
    /// Leave SMTP at `common::test_config`'s closed port.
    smtp_down: bool,
}

fn is_key() -> SigningKey {
    SigningKey::from_seed(KeyVersion::parse("is1").unwrap(), [7; 32])
}

/// The shared test config (`common::test_config`: terms, SMTP without
/// TLS), pointed at `smtp`, with a trailing `/` on `public_base_url` that
/// links must not double.
fn build(db: Database, hs: &Homeserver, smtp: &SmtpCapture, options: &Options) -> IdentityState {
    let key = is_key();
    let mut config = common::test_config();
    config.public_base_url = Some(format!("{}/", common::PUBLIC_BASE_URL));
    if !options.smtp_down {
        smtp.configure(&mut config);
    }
    config
        .invites
        .web_client_location
        .clone_from(&options.web_client_location);
    if let Some(retry_for) = options.onbind_retry_for {
        config.invites.onbind_retry_for = retry_for;
    }
    if let Some(configure) = &options.configure {
        configure(&mut config);
    }
    let federation = FederationClient::new(
        &FederationConfig {
            overrides: BTreeMap::from([(
                HS_NAME.to_owned(),
                ServerOverride {
                    url: hs.url.clone(),
                },
            )]),
            request_timeout: ConfigDuration::secs(5),
            ..FederationConfig::default()
        },
        hearth_testkit::federation::fake_dns(&[]),
        Some(Origin {
            server_name: ServerName::parse(IS_NAME).unwrap(),
            key: key.clone(),
        }),
    )
    .unwrap();
    hearth_identity::build(&config, &common::context(IS_NAME, key, db, federation)).unwrap()
}

async fn env(db: Database, options: Options) -> Env {
    let key = is_key();
    let hs = Homeserver::start(&key, options.onbind_put_only).await;
    let smtp = Arc::new(SmtpCapture::start());
    let state = build(db, &hs, &smtp, &options);
    Env {
        app: hearth_identity::router(state.clone()),
        state,
        hs,
        key,
        smtp,
    }
}

/// Test pacing: polls and backoff in tens of milliseconds.
fn fast() -> OutboxSettings {
    OutboxSettings {
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        lease: Duration::from_secs(30),
    }
}

/// A running outbox worker, stopped when dropped.
struct Worker(
    Option<tokio::sync::oneshot::Sender<()>>,
    tokio::task::JoinHandle<()>,
);

impl Worker {
    fn start(state: &IdentityState) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hearth_identity::run_outbox_with(
            state.clone(),
            fast(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self(Some(stop), task)
    }

    async fn stop(mut self) {
        let _ = self.0.take().unwrap().send(());
        (&mut self.1).await.unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl Env {
    /// The mails captured so far for `to`.
    fn mails_to(&self, to: &str) -> Vec<Mail> {
        self.smtp
            .mails()
            .into_iter()
            .filter(|m| m.header("to").is_some_and(|h| h.contains(to)))
            .collect()
    }

    /// The latest mail for `to`, waiting for it 10 s at most.
    async fn wait_for_mail(&self, to: &str) -> Mail {
        self.wait_for_mail_where(to, |_| true).await
    }

    /// The latest mail for `to` that `wanted` accepts, waiting for it 10 s
    /// at most.
    async fn wait_for_mail_where(&self, to: &str, wanted: impl Fn(&Mail) -> bool) -> Mail {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(mail) = self.mails_to(to).into_iter().rfind(|m| wanted(m)) {
                return mail;
            }
            assert!(Instant::now() < deadline, "no such mail arrived for {to}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.app, method, uri, token, body).await
    }

    /// Registers `localpart` through OpenID and accepts the terms.
    async fn user(&self, localpart: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{BASE}/account/register"),
                None,
                Some(json!({
                    "access_token": localpart,
                    "token_type": "Bearer",
                    "matrix_server_name": HS_NAME,
                    "expires_in": 3600,
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{BASE}/terms"),
                Some(&token),
                Some(json!({ "user_accepts": [common::TERMS_URL] })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        token
    }

    async fn store_invite(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("{BASE}/store-invite"),
            Some(token),
            Some(body),
        )
        .await
    }

    /// Binds `address` to the token's user (`mxid`) the way a client
    /// does: `requestToken`, the code from the validation mail,
    /// `submitToken`, then `/3pid/bind`.
    async fn bind(&self, token: &str, mxid: &str, address: &str) -> Value {
        let client_secret = format!("secret{:08x}", rand_u32());
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{BASE}/validate/email/requestToken"),
                Some(token),
                Some(
                    json!({ "client_secret": client_secret, "email": address, "send_attempt": 1 }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let sid = body["sid"].as_str().unwrap().to_owned();
        let mail = self
            .wait_for_mail_where(address, |m| {
                m.text().contains("/validate/email/submitToken?")
            })
            .await;
        let link = mail
            .text()
            .split_whitespace()
            .find(|w| w.contains("/validate/email/submitToken?"))
            .unwrap()
            .to_owned();
        let params = common::query_params(&link);
        assert_eq!(params["sid"], sid);
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{BASE}/validate/email/submitToken"),
                Some(token),
                Some(
                    json!({ "sid": sid, "client_secret": client_secret, "token": params["token"] }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["success"], true, "{body}");
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{BASE}/3pid/bind"),
                Some(token),
                Some(json!({ "sid": sid, "client_secret": client_secret, "mxid": mxid })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn outbox_rows(&self) -> Vec<(i64, i64)> {
        sqlx::query("SELECT id, attempts FROM identity_onbind_outbox ORDER BY id")
            .fetch_all(self.state.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.try_get("id").unwrap(), r.try_get("attempts").unwrap()))
            .collect()
    }

    async fn count(&self, table: &str) -> i64 {
        count(&self.state.db, table).await
    }
}

async fn count(db: &Database, table: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM {table}"
    )))
    .fetch_one(db.pool())
    .await
    .unwrap()
    .try_get("n")
    .unwrap()
}

fn rand_u32() -> u32 {
    u32::from_be_bytes(hearth_core::random::bytes())
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// What Synapse sends to `/store-invite` (`handlers/identity.py`
/// `ask_id_server_for_third_party_invite`).
fn invite_body(address: &str, room: &str) -> Value {
    json!({
        "medium": "email",
        "address": address,
        "room_id": format!("!{room}:hs.test"),
        "room_alias": format!("#{room}:hs.test"),
        "room_avatar_url": "mxc://hs.test/avatar",
        "room_join_rules": "invite",
        "room_name": format!("The {room} room"),
        "sender": ALICE,
        "sender_display_name": "Alice",
        "sender_avatar_url": "mxc://hs.test/alice",
        "some_future_key": {"nested": true},
    })
}

fn url_safe(key: &str) -> String {
    key.replace('+', "-").replace('/', "_")
}

fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The query parameters of a URL (or of a fragment's query), decoded.
fn query_params(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

async fn is_valid(env: &Env, path: &str, key: &str) -> bool {
    let (status, body) = env
        .call(
            Method::GET,
            &format!("{BASE}{path}?public_key={}", query_encode(key)),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["valid"].as_bool().unwrap()
}

// ---------------------------------------------------------------------------
// Cases

/// Spec `POST /store-invite` (v1.7 response format): `token` of
/// `[0-9a-zA-Z.=_-]`, `public_keys` = [long-term, ephemeral] with their
/// `key_validity_url`s, a redacted `display_name`, and the legacy
/// `public_key` Synapse falls back to. Spec "Key management": both
/// `isvalid` endpoints accept the keys in the standard and the URL-safe
/// alphabet. The invitee gets a mail naming the room and, with no web
/// client configured, no link.
async fn store_invite_answers_the_spec_shape_with_valid_keys(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    let address = unique_address("Invitee");
    // The address is canonicalised before it is stored and mailed.
    let (status, body) = env
        .store_invite(&alice, invite_body(&address.to_uppercase(), "books"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let token = body["token"].as_str().unwrap();
    assert!(!token.is_empty() && token.len() <= 255);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".=_-".contains(&b)),
        "{token}"
    );

    let keys = body["public_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{body}");
    let long_term = keys[0]["public_key"].as_str().unwrap();
    let ephemeral = keys[1]["public_key"].as_str().unwrap();
    assert_eq!(long_term, env.key.public_key_base64());
    assert_eq!(body["public_key"], long_term, "legacy public_key");
    assert_ne!(ephemeral, long_term);
    assert_eq!(
        keys[0]["key_validity_url"],
        "https://is.test/_matrix/identity/v2/pubkey/isvalid"
    );
    assert_eq!(
        keys[1]["key_validity_url"],
        "https://is.test/_matrix/identity/v2/pubkey/ephemeral/isvalid"
    );
    let (local, domain) = address.split_once('@').unwrap();
    assert_eq!(
        body["display_name"],
        format!("{}...@{}...", &local[..3].to_lowercase(), &domain[..3]),
        "the canonical address, redacted as Sydent does"
    );

    // Both keys check out where their key_validity_url says, in both
    // alphabets (a key of random bytes has `+` or `/` often enough; the
    // URL-safe form is checked either way).
    for key in [long_term.to_owned(), url_safe(long_term)] {
        assert!(is_valid(&env, "/pubkey/isvalid", &key).await, "{key}");
        assert!(
            !is_valid(&env, "/pubkey/ephemeral/isvalid", &key).await,
            "{key}"
        );
    }
    for key in [ephemeral.to_owned(), url_safe(ephemeral)] {
        assert!(
            is_valid(&env, "/pubkey/ephemeral/isvalid", &key).await,
            "{key}"
        );
        assert!(!is_valid(&env, "/pubkey/isvalid", &key).await, "{key}");
    }
    let stranger = SigningKey::generate().public_key_base64();
    assert!(!is_valid(&env, "/pubkey/ephemeral/isvalid", &stranger).await);

    // The invite is stored under the canonical address.
    let stored =
        sqlx::query("SELECT address, room_id, sender FROM identity_invites WHERE token = $1")
            .bind(token)
            .fetch_one(env.state.db.pool())
            .await
            .unwrap();
    assert_eq!(
        stored.try_get::<String, _>("address").unwrap(),
        address.to_lowercase()
    );
    assert_eq!(
        stored.try_get::<String, _>("room_id").unwrap(),
        "!books:hs.test"
    );
    assert_eq!(stored.try_get::<String, _>("sender").unwrap(), ALICE);

    let mail = env.wait_for_mail(&address.to_lowercase()).await;
    assert!(
        mail.header("subject").unwrap().contains("The books room"),
        "{:?}",
        mail.header("subject")
    );
    for part in [mail.text(), mail.html()] {
        assert!(part.contains("The books room"), "{part}");
        assert!(part.contains(ALICE), "{part}");
        assert!(
            !part.contains("#/room/"),
            "no link without a configured client: {part}"
        );
        assert!(!part.contains("sign-ed25519"), "{part}");
    }
}

/// Spec `POST /store-invite` errors: 400 `M_THREEPID_IN_USE` with `mxid`
/// for a bound address (whatever its case), 400 `M_UNRECOGNIZED` for a
/// medium other than email; Sydent v2: 403 `M_UNAUTHORIZED` when `sender`
/// is not the token's user; MSC2140: 401 without a token and 403
/// `M_TERMS_NOT_SIGNED` before the terms are accepted. None sends a mail.
async fn store_invite_refuses_what_the_spec_and_sydent_refuse(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let address = unique_address("bound");
    env.bind(&bob, BOB, &address).await;

    let (status, body) = env
        .store_invite(&alice, invite_body(&address.to_uppercase(), "books"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_IN_USE");
    assert_eq!(body["mxid"], BOB);

    let other = unique_address("fresh");
    let mut msisdn = invite_body("447700900000", "books");
    msisdn["medium"] = json!("msisdn");
    let (status, body) = env.store_invite(&alice, msisdn).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");

    // Bob may not invite in Alice's name.
    let (status, body) = env.store_invite(&bob, invite_body(&other, "books")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    let mut incomplete = invite_body(&other, "books");
    incomplete.as_object_mut().unwrap().remove("room_id");
    let (status, body) = env.store_invite(&alice, incomplete).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Spec "Standard error response": a missing parameter.
    assert_eq!(body["errcode"], "M_MISSING_PARAMS");

    let (status, body) = env
        .call(
            Method::POST,
            &format!("{BASE}/store-invite"),
            None,
            Some(invite_body(&other, "books")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A registered user who has not accepted the terms.
    let (_, registered) = env
        .call(
            Method::POST,
            &format!("{BASE}/account/register"),
            None,
            Some(json!({"access_token": "carol", "token_type": "Bearer", "matrix_server_name": HS_NAME})),
        )
        .await;
    let carol = registered["token"].as_str().unwrap();
    let mut as_carol = invite_body(&other, "books");
    as_carol["sender"] = json!("@carol:hs.test");
    let (status, body) = env.store_invite(carol, as_carol).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_TERMS_NOT_SIGNED");

    assert_eq!(env.count("identity_invites").await, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(env.mails_to(&other).is_empty());
    assert_eq!(env.mails_to(&address).len(), 1, "only the validation mail");
}

/// Sydent rate-limits store-invite per sender (`email.ratelimit_sender`):
/// the eleventh invite in an hour is 429 `M_LIMIT_EXCEEDED` with
/// `retry_after_ms`; other senders are not affected.
async fn store_invite_limits_each_sender(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    for i in 0..10 {
        let (status, body) = env
            .store_invite(
                &alice,
                invite_body(&unique_address("many"), &format!("r{i}")),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "invite {i}: {body}");
    }
    let (status, body) = env
        .store_invite(&alice, invite_body(&unique_address("many"), "r10"))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    let retry = body["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 3_600_000, "{retry}");

    let bob = env.user("bob").await;
    let mut as_bob = invite_body(&unique_address("other"), "r0");
    as_bob["sender"] = json!(BOB);
    let (status, body) = env.store_invite(&bob, as_bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Spec: store-invite "generates an email ... sent to the `address`";
/// when that mail cannot be sent the answer is 500 `M_EMAIL_SEND_ERROR`
/// (Sydent's status) and nothing of the invite is left: no pending invite,
/// and the ephemeral key is not listed as valid.
async fn store_invite_takes_back_an_invite_whose_mail_failed(backend: Backend) {
    let env = env(
        backend.db,
        Options {
            smtp_down: true,
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let (status, body) = env
        .store_invite(&alice, invite_body(&unique_address("unreachable"), "books"))
        .await;
    // Spec `requestToken` lists `M_EMAIL_SEND_ERROR` under 400.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EMAIL_SEND_ERROR");
    assert_eq!(env.count("identity_invites").await, 0);
    assert_eq!(env.count("identity_ephemeral_keys").await, 0);
}

/// Sydent's invite mail carries a link to the web client with a `signurl`
/// holding the token and the ephemeral private key (Element's
/// `ThreepidInviteStore`). Hearth links only to the configured client: a
/// request's `org.matrix.web_client_location` (Synapse's
/// `email.invite_client_location`) is used only under it. Spec
/// `POST /sign-ed25519`: with that private key, the identity server signs
/// `{mxid, sender, token}`, verifiable with the ephemeral public key that
/// store-invite returned (as Synapse checks `third_party_signed` against
/// the `m.room.third_party_invite` event's `public_keys`).
async fn invite_mail_links_only_to_the_configured_client_and_signing_works(backend: Backend) {
    let env = env(
        backend.db,
        Options {
            web_client_location: Some("https://chat.example.org".to_owned()),
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;

    // A client location elsewhere is ignored...
    let evil = unique_address("evil");
    let mut body = invite_body(&evil, "books");
    body["org.matrix.web_client_location"] = json!("https://chat.example.org.evil.test");
    let (status, _) = env.store_invite(&alice, body).await;
    assert_eq!(status, StatusCode::OK);
    let mail = env.wait_for_mail(&evil).await;
    assert!(
        !mail.text().contains("evil.test") && !mail.html().contains("evil.test"),
        "{}",
        mail.text()
    );
    assert!(
        mail.text().contains("https://chat.example.org/#/room/"),
        "{}",
        mail.text()
    );

    // ...one under the configured location is used.
    let address = unique_address("linked");
    let mut body = invite_body(&address, "books");
    body["org.matrix.web_client_location"] = json!("https://chat.example.org/beta");
    let (status, stored) = env.store_invite(&alice, body).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let mail = env.wait_for_mail(&address).await;
    let link = mail
        .text()
        .split_whitespace()
        .find(|w| w.contains("#/room/"))
        .unwrap_or_else(|| panic!("no link in {}", mail.text()))
        .to_owned();
    assert!(
        link.starts_with("https://chat.example.org/beta/#/room/%23books%3Ahs.test?"),
        "{link}"
    );
    let params = query_params(&link);
    assert_eq!(params["email"], address);
    assert_eq!(params["room_name"], "The books room");
    assert_eq!(params["inviter_name"], "Alice");
    let sign_url = &params["signurl"];
    assert!(
        sign_url.starts_with("https://is.test/_hearth/identity/v1/sign-ed25519?"),
        "{sign_url}"
    );
    let sign = query_params(sign_url);
    let token = stored["token"].as_str().unwrap();
    assert_eq!(sign["token"], token);
    let private_key = &sign["private_key"];

    // The spec call: everything in the body.
    let (status, signed) = env
        .call(
            Method::POST,
            &format!("{BASE}/sign-ed25519"),
            Some(&bob),
            Some(json!({"mxid": BOB, "token": token, "private_key": private_key})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    assert_eq!(signed["mxid"], BOB);
    assert_eq!(signed["sender"], ALICE);
    assert_eq!(signed["token"], token);
    let ephemeral =
        VerifyKey::from_base64(stored["public_keys"][1]["public_key"].as_str().unwrap()).unwrap();
    let signatures = signed["signatures"][IS_NAME].as_object().unwrap();
    assert_eq!(signatures.len(), 1, "{signed}");
    let key_id = signatures.keys().next().unwrap();
    assert!(key_id.starts_with("ed25519:"), "{key_id}");
    verify_json(&signed, IS_NAME, [(key_id.as_str(), &ephemeral)])
        .expect("signed with the ephemeral key");
    // Not with the long-term key.
    assert!(verify_json(&signed, IS_NAME, [(key_id.as_str(), &env.key.verify_key())]).is_err());

    // The signurl itself, as matrix-js-sdk's `joinRoom(room, {inviteSignUrl})`
    // POSTs it: `mxid` added to the query, no body, no token (decision 0006).
    let path = sign_url.strip_prefix("https://is.test").unwrap();
    let mailed = format!("{path}&mxid={}", percent_encode(BOB));
    let (status, again) = env.call(Method::POST, &mailed, None, None).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["mxid"], BOB);
    assert_eq!(again["sender"], ALICE);
    assert_eq!(again["token"], token);
    verify_json(&again, IS_NAME, [(key_id.as_str(), &ephemeral)]).unwrap();

    // Only with the private key handed out with this invite: the token is
    // public (the state key of `m.room.third_party_invite`).
    let other_key = hearth_core::base64::encode_url_safe([7u8; 32]);
    let forged = format!(
        "/_hearth/identity/v1/sign-ed25519?token={}&private_key={other_key}&mxid={}",
        percent_encode(token),
        percent_encode(BOB)
    );
    let (status, body) = env.call(Method::POST, &forged, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (status, body) = env.call(Method::POST, path, None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAMS");

    // v2 `/sign-ed25519` stays as the spec has it: the query is not read,
    // the body must hold all three.
    let (status, body) = env
        .call(
            Method::POST,
            &format!(
                "{BASE}/sign-ed25519?token={}&private_key={}",
                percent_encode(token),
                percent_encode(private_key)
            ),
            Some(&bob),
            Some(json!({"mxid": BOB})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAMS");

    // Signing needs the terms like every authenticated endpoint.
    let (status, body) = env
        .call(
            Method::POST,
            &format!("{BASE}/sign-ed25519"),
            None,
            Some(json!({"mxid": BOB, "token": token, "private_key": private_key})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// Spec `POST /sign-ed25519`: 404 `M_UNRECOGNIZED` "Didn't recognize
/// token" for a token store-invite never issued; a malformed private key
/// or a missing parameter is a 400.
async fn sign_ed25519_refuses_unknown_tokens(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let bob = env.user("bob").await;
    let private_key = hearth_core::base64::encode([9u8; 32]);
    let (status, body) = env
        .call(
            Method::POST,
            &format!("{BASE}/sign-ed25519"),
            Some(&bob),
            Some(json!({"mxid": BOB, "token": "nope", "private_key": private_key})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    assert_eq!(body["error"], "Didn't recognize token");

    let (status, body) = env
        .call(
            Method::POST,
            &format!("{BASE}/sign-ed25519"),
            Some(&bob),
            Some(json!({"mxid": BOB, "token": "nope", "private_key": "not base64!"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = env
        .call(
            Method::POST,
            &format!("{BASE}/sign-ed25519"),
            Some(&bob),
            Some(json!({"mxid": BOB, "token": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAMS");
}

/// Spec "Invitation storage" and Server-Server "Third-party invites": once
/// the invited address is bound, the identity server POSTs `onbind` to the
/// invitee's homeserver with what Sydent sends (the signed association plus
/// `invites`, each with `signed` = `{mxid, token}` signed by the long-term
/// key that store-invite listed first in `public_keys`). The callback is
/// queued in the bind's transaction and the invites are then gone.
async fn binding_an_invited_address_delivers_onbind(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let address = unique_address("bob");
    let mut tokens = Vec::new();
    let mut long_term = None;
    for room in ["books", "films"] {
        let (status, body) = env.store_invite(&alice, invite_body(&address, room)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["token"].as_str().unwrap().to_owned());
        long_term = Some(
            body["public_keys"][0]["public_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // An invite to someone else stays pending.
    let (status, _) = env
        .store_invite(&alice, invite_body(&unique_address("carol"), "books"))
        .await;
    assert_eq!(status, StatusCode::OK);

    let association = env.bind(&bob, BOB, &address).await;
    assert_eq!(
        env.outbox_rows().await.len(),
        1,
        "one callback for one homeserver"
    );
    assert_eq!(
        env.count("identity_invites").await,
        1,
        "the bound address's invites are consumed"
    );

    let worker = Worker::start(&env.state);
    let requests = env.hs.wait_for_requests(1).await;
    let (body, check) = &requests[0];
    check
        .as_ref()
        .expect("the homeserver accepts the onbind body");
    assert_eq!(body["medium"], "email");
    assert_eq!(body["address"], address);
    assert_eq!(body["mxid"], BOB);
    for field in ["ts", "not_before", "not_after"] {
        assert_eq!(
            body[field], association[field],
            "{field} as in the bind answer"
        );
    }
    let invites = body["invites"].as_array().unwrap();
    let mut sent: Vec<&str> = invites
        .iter()
        .map(|i| i["token"].as_str().unwrap())
        .collect();
    sent.sort_unstable();
    tokens.sort();
    assert_eq!(sent, tokens);
    for invite in invites {
        assert_eq!(invite["medium"], "email");
        assert_eq!(invite["sender"], ALICE);
        assert!(
            ["!books:hs.test", "!films:hs.test"].contains(&invite["room_id"].as_str().unwrap())
        );
        // What Synapse's event auth does with `third_party_signed`: verify
        // with the public key from the third-party invite event.
        let key = VerifyKey::from_base64(long_term.as_deref().unwrap()).unwrap();
        for key_id in invite["signed"]["signatures"][IS_NAME]
            .as_object()
            .unwrap()
            .keys()
        {
            verify_json(&invite["signed"], IS_NAME, [(key_id.as_str(), &key)]).unwrap();
        }
    }

    // Delivered once, then removed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.outbox_rows().await.is_empty() {
        assert!(Instant::now() < deadline, "the delivered row stays queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.hs.requests().len(), 1);
    worker.stop().await;

    // The tokens are consumed: signing with them is refused.
    let (status, _) = env
        .call(
            Method::POST,
            &format!("{BASE}/sign-ed25519"),
            Some(&bob),
            Some(json!({"mxid": BOB, "token": tokens[0], "private_key": hearth_core::base64::encode([1u8; 32])})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A bind with no invite waiting queues no `onbind` (Synapse does nothing
/// with an empty `invites`).
async fn binding_without_invites_queues_nothing(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let bob = env.user("bob").await;
    env.bind(&bob, BOB, &unique_address("lonely")).await;
    assert!(env.outbox_rows().await.is_empty());
}

/// Sydent retries `onbind` with exponential backoff; so does the outbox: a
/// homeserver answering 500 twice gets the same body a third time, and the
/// row's attempts count the failures meanwhile.
async fn onbind_is_retried_after_a_failure(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let address = unique_address("retry");
    let (status, _) = env
        .store_invite(&alice, invite_body(&address, "books"))
        .await;
    assert_eq!(status, StatusCode::OK);
    env.hs.fail_next(2);
    env.bind(&bob, BOB, &address).await;

    let worker = Worker::start(&env.state);
    let requests = env.hs.wait_for_requests(3).await;
    assert!(requests[0].1.is_err() && requests[1].1.is_err());
    requests[2]
        .1
        .as_ref()
        .expect("the third attempt is accepted");
    assert_eq!(requests[0].0, requests[2].0, "the same body is sent again");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.outbox_rows().await.is_empty() {
        assert!(Instant::now() < deadline, "the delivered row stays queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    assert_eq!(env.hs.requests().len(), 3);
}

/// The outbox is durable: a callback that failed before a "restart" (a new
/// state and a new pool on the same database, with a new worker) is
/// delivered afterwards.
async fn onbind_outbox_survives_a_restart(backend: Backend) {
    let first = env(backend.db.clone(), Options::default()).await;
    let alice = first.user("alice").await;
    let bob = first.user("bob").await;
    let address = unique_address("restart");
    let (status, _) = first
        .store_invite(&alice, invite_body(&address, "books"))
        .await;
    assert_eq!(status, StatusCode::OK);
    first.hs.fail_next(usize::MAX);
    first.bind(&bob, BOB, &address).await;
    let worker = Worker::start(&first.state);
    first.hs.wait_for_requests(1).await;
    // The worker records the failure a moment after the homeserver saw it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.outbox_rows().await.iter().all(|row| row.1 == 0) {
        assert!(Instant::now() < deadline, "the failure is never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    let rows = first.outbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].1 >= 1, "the failure was counted: {rows:?}");
    let hs = first.hs.clone();
    let smtp = first.smtp.clone();
    drop(first);

    // The homeserver is back; a new process starts on the same database.
    hs.fail_next(0);
    let db = backend.reopen().await;
    let state = build(db.clone(), &hs, &smtp, &Options::default());
    let before = hs.requests().len();
    let worker = Worker::start(&state);
    let requests = hs.wait_for_requests(before + 1).await;
    requests
        .last()
        .unwrap()
        .1
        .as_ref()
        .expect("delivered after the restart");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&db, "identity_onbind_outbox").await > 0 {
        assert!(Instant::now() < deadline, "the delivered row stays queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    assert_eq!(hs.delivered().len(), 1);
}

/// `identity.invites.onbind_retry_for` bounds the retries: past it, a
/// failing callback is dropped (with a warning) instead of retried.
async fn onbind_is_dropped_after_the_retry_window(backend: Backend) {
    let env = env(
        backend.db,
        Options {
            onbind_retry_for: Some(ConfigDuration(Duration::ZERO)),
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let address = unique_address("dropped");
    let (status, _) = env
        .store_invite(&alice, invite_body(&address, "books"))
        .await;
    assert_eq!(status, StatusCode::OK);
    env.hs.fail_next(usize::MAX);
    env.bind(&bob, BOB, &address).await;
    let worker = Worker::start(&env.state);
    env.hs.wait_for_requests(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.outbox_rows().await.is_empty() {
        assert!(Instant::now() < deadline, "the expired row is not dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;
    assert_eq!(env.hs.requests().len(), 1, "no retry after the window");
}

/// Several instances may share a database: rows are claimed before they
/// are sent, so two workers deliver each callback exactly once.
async fn concurrent_workers_deliver_each_callback_once(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    let second = build(
        env.state.db.clone(),
        &env.hs,
        &env.smtp,
        &Options::default(),
    );
    let workers = [Worker::start(&env.state), Worker::start(&second)];
    let users = ["bob", "carol", "dave", "erin", "frank"];
    for user in users {
        let token = env.user(user).await;
        let address = unique_address(user);
        let (status, _) = env
            .store_invite(&alice, invite_body(&address, "books"))
            .await;
        assert_eq!(status, StatusCode::OK);
        env.bind(&token, &format!("@{user}:hs.test"), &address)
            .await;
    }
    env.hs.wait_for_requests(users.len()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.outbox_rows().await.is_empty() {
        assert!(Instant::now() < deadline, "rows stay queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for worker in workers {
        worker.stop().await;
    }
    let mut mxids: Vec<String> = env
        .hs
        .delivered()
        .iter()
        .map(|b| b["mxid"].as_str().unwrap().to_owned())
        .collect();
    mxids.sort();
    let mut expected: Vec<String> = users.iter().map(|u| format!("@{u}:hs.test")).collect();
    expected.sort();
    assert_eq!(mxids, expected, "each callback exactly once");
}

/// `n` store-invites at once, each by `token` for `body(i)`: the statuses.
async fn store_invites_at_once(
    env: &Env,
    token: &str,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<StatusCode> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = env.app.clone();
        let (token, body) = (token.to_owned(), body(i));
        set.spawn(async move {
            call(
                &app,
                Method::POST,
                &format!("{BASE}/store-invite"),
                Some(&token),
                Some(body),
            )
            .await
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = set.join_next().await {
        let (status, body) = done.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status} {body}"
        );
        statuses.push(status);
    }
    statuses
}

/// Issue 10 item 2 and issue 11 item 11: the per-sender cap is read from
/// `invites.per_sender_limit`, and counting and storing are one step, so
/// 50 simultaneous invites let exactly the cap through, each with a mail.
async fn store_invite_limits_are_atomic_and_configurable(backend: Backend) {
    let env = env(
        backend.db,
        Options {
            configure: Some(Box::new(|c| {
                c.invites.per_sender_limit = 12;
                c.invites.per_recipient_limit = 0;
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let statuses = store_invites_at_once(&env, &alice, 50, |i| {
        invite_body(&format!("busy{i}.{}@example.org", rand_u32()), "busy")
    })
    .await;
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(accepted, 12, "{statuses:?}");
    assert_eq!(env.count("identity_invites").await, 12);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = env
        .smtp
        .mails()
        .iter()
        .filter(|m| m.header("to").is_some_and(|to| to.contains("busy")))
        .count();
    assert_eq!(mails, 12, "one mail per accepted invite");
}

/// Issue 10 item 2: invite mails to one address are capped
/// (`invites.per_recipient_limit`), like validation mails, and the cap
/// holds under 50 simultaneous invites.
async fn invite_mails_are_capped_per_recipient(backend: Backend) {
    let env = env(
        backend.db,
        Options {
            configure: Some(Box::new(|c| c.invites.per_sender_limit = 0)),
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let address = unique_address("popular");
    let statuses = store_invites_at_once(&env, &alice, 50, |i| {
        invite_body(&address, &format!("r{i}"))
    })
    .await;
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(accepted, 5, "the default cap: {statuses:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.mails_to(&address).len(), 5);
    // Another address is not affected.
    let (status, body) = env
        .store_invite(&alice, invite_body(&unique_address("quiet"), "r0"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Issue 10 item 9 (spec: the identity server "generates an email
/// containing all of this data"): every field of the store-invite request,
/// extra keys included, and the token, the ephemeral private key and the
/// signing URL reach the invite template. The default template names the
/// inviter, the room, its kind and its join rule.
async fn invite_template_receives_every_field(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let fields = [
        "medium",
        "address",
        "room_id",
        "sender",
        "room_alias",
        "room_avatar_url",
        "room_join_rules",
        "room_name",
        "room_type",
        "sender_display_name",
        "sender_avatar_url",
        "org.matrix.web_client_location",
    ];
    let mut template = String::new();
    for field in fields {
        template.push_str(&format!("{field}={{{{ request[\"{field}\"] }}}}\n"));
    }
    for field in [
        "room_name",
        "sender_avatar_url",
        "inviter_name",
        "room_avatar",
        "token",
        "ephemeral_private_key",
        "sign_url",
        "invite_link",
    ] {
        template.push_str(&format!("top.{field}={{{{ {field} }}}}\n"));
    }
    template.push_str("extra={{ some_future_key.nested }}\n");
    std::fs::write(dir.path().join("invite.txt"), template).unwrap();
    let path = dir.path().to_owned();
    let env = env(
        backend.db,
        Options {
            configure: Some(Box::new(move |c| {
                c.email.templates_dir = Some(path.clone());
                c.invites.web_client_location = Some("https://chat.example.org".to_owned());
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let address = unique_address("templated");
    let mut body = invite_body(&address, "books");
    body["room_type"] = json!("m.space");
    body["room_join_rules"] = json!("public");
    body["org.matrix.web_client_location"] = json!("https://chat.example.org/beta");
    let (status, stored) = env.store_invite(&alice, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let mail = env.wait_for_mail(&address).await;
    let printed: HashMap<&str, &str> = mail
        .text()
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    for field in fields {
        let expected = body[field].as_str().unwrap();
        assert_eq!(
            printed.get(field),
            Some(&expected),
            "{field}: {}",
            mail.text()
        );
    }
    assert_eq!(printed["top.room_name"], "The books room");
    assert_eq!(printed["top.sender_avatar_url"], "mxc://hs.test/alice");
    assert_eq!(printed["top.inviter_name"], "Alice");
    assert_eq!(printed["top.room_avatar"], "mxc://hs.test/avatar");
    assert_eq!(printed["top.token"], stored["token"].as_str().unwrap());
    // Jinja prints booleans its own way.
    assert_eq!(printed["extra"], "True");
    // The mailed private key is the ephemeral key's.
    let seed = hearth_core::base64::decode(
        &printed["top.ephemeral_private_key"]
            .replace('-', "+")
            .replace('_', "/"),
    )
    .unwrap();
    let key = SigningKey::from_seed(KeyVersion::parse("0").unwrap(), seed.try_into().unwrap());
    assert_eq!(
        key.public_key_base64(),
        stored["public_keys"][1]["public_key"].as_str().unwrap()
    );
    let sign = query_params(printed["top.sign_url"]);
    assert_eq!(sign["token"], stored["token"].as_str().unwrap());
    assert!(printed["top.invite_link"].contains("signurl="));

    // The built-in HTML template (not overridden) uses them.
    let html = mail.html();
    for expected in [
        "Alice",
        ALICE,
        "The books room",
        "space",
        "public",
        "signurl",
    ] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
}

/// Issue 11 item 4: the Server-Server API's OpenAPI says `PUT
/// /3pid/onbind` and ruma-based servers route only PUT, while the prose,
/// Sydent and Synapse use POST. Against a PUT-only receiver the callback is
/// POSTed, refused with 405, sent again at once by PUT, and the next one
/// to that server goes straight by PUT.
async fn onbind_falls_back_to_put_and_remembers_it(backend: Backend) {
    let env = env(
        backend.db,
        Options {
            onbind_put_only: true,
            ..Options::default()
        },
    )
    .await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let worker = Worker::start(&env.state);
    for (n, name) in ["first", "second"].into_iter().enumerate() {
        let address = unique_address(name);
        let (status, body) = env.store_invite(&alice, invite_body(&address, name)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        env.bind(&bob, BOB, &address).await;
        let requests = env.hs.wait_for_requests(n + 1).await;
        let (body, check) = &requests[n];
        check.as_ref().expect("the PUT body is the onbind body");
        assert_eq!(body["address"], address);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.outbox_rows().await.is_empty() {
        assert!(Instant::now() < deadline, "a delivered row stays queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    assert_eq!(
        env.hs.inner.post_refusals.load(Ordering::SeqCst),
        1,
        "only the first callback tried POST"
    );
    assert_eq!(env.hs.requests().len(), 2);
}

/// Issue 11 item 10: bindings made before addresses were case-folded are
/// stored lower-cased (`strauß@…`, not `strauss@…`). An invite to that
/// address in any case is still `M_THREEPID_IN_USE` with the bound `mxid`
/// (spec `/store-invite`), not a second, mailed invite.
async fn store_invite_knows_bindings_stored_before_case_folding(backend: Backend) {
    let env = env(backend.db, Options::default()).await;
    let alice = env.user("alice").await;
    sqlx::query(
        "INSERT INTO identity_associations (medium, address, mxid, ts, not_before, not_after)
         VALUES ('email', 'old.strauß@example.org', $1, 1, 1, 2)",
    )
    .bind(BOB)
    .execute(env.state.db.pool())
    .await
    .unwrap();
    let (status, body) = env
        .store_invite(&alice, invite_body("Old.Strauß@Example.org", "books"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_IN_USE");
    assert_eq!(body["mxid"], BOB);
}
