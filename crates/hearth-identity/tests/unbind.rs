//! `POST /3pid/unbind` (spec "Establishing associations", and §1.6 of the
//! reference: the two auth modes), driven through the router in-process on
//! every database backend:
//!
//! - with the `sid` and `client_secret` of a validated session for the
//!   same 3PID (MSC1915);
//! - signed with X-Matrix by the homeserver that owns `mxid`, exactly as
//!   Synapse's `build_auth_headers(destination=None, destination_is=...)`
//!   signs it: `destination_is` in the signed JSON, no `destination` in the
//!   header. The homeservers are `common::FakeKeyServer`s, plain HTTP on
//!   loopback reached through federation overrides, serving
//!   `/_matrix/key/v2/server`.
//!
//! Bindings are made through the real validation flow (aiosmtpd catches
//! the mails).

mod common;

use common::ConfigureSmtp;

use axum::body::Body;
use common::{
    FakeKeyServer, HOMESERVER, Harness, SERVER_NAME, SmtpCapture, TestResponse, backends,
    bind_email, lookup_mxids, test_config, validate_email,
};
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyVersion, SigningKey};
use hearth_core::storage::Database;
use hearth_federation::xmatrix::{Destination, XMatrix, sign_request};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

const ALICE: &str = "@alice:hs.test";
const UNBIND: &str = "/_matrix/identity/v2/3pid/unbind";

/// The identity server, its SMTP capture, and the key servers of
/// `hs.test` (which also vouches for its users over OpenID) and of
/// `other.test`. Keep every field alive: the servers stop when dropped.
struct Env {
    h: Harness,
    smtp: SmtpCapture,
    hs: FakeKeyServer,
    other: FakeKeyServer,
}

async fn env(db: Database, dir: Option<tempfile::TempDir>) -> Env {
    let hs = FakeKeyServer::start(
        HOMESERVER,
        SigningKey::from_seed(KeyVersion::parse("hs1").unwrap(), [1; 32]),
    )
    .await;
    let other = FakeKeyServer::start(
        "other.test",
        SigningKey::from_seed(KeyVersion::parse("other1").unwrap(), [2; 32]),
    )
    .await;
    let smtp = SmtpCapture::start();
    let mut config = test_config();
    smtp.configure(&mut config);
    let h = Harness::start_with(
        db,
        dir,
        config,
        SigningKey::generate(),
        &[(HOMESERVER, &hs.url), ("other.test", &other.url)],
    )
    .await;
    Env { h, smtp, hs, other }
}

fn body(address: &str) -> Value {
    json!({"mxid": ALICE, "threepid": {"medium": "email", "address": address}})
}

/// The `Authorization` header Synapse sends: signed by `key` as `origin`
/// for this identity server (`destination_is`), over `content`.
fn synapse_header(key: &SigningKey, origin: &str, content: &Value) -> String {
    sign_request(
        key,
        &ServerName::parse(origin).unwrap(),
        &Destination::IdentityServer(ServerName::parse(SERVER_NAME).unwrap()),
        "POST",
        UNBIND,
        Some(content),
    )
    .unwrap()
}

async fn unbind(h: &Harness, body: &Value, authorization: Option<&str>) -> TestResponse {
    let mut request = Request::post(UNBIND).header("content-type", "application/json");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    h.send(
        request
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    )
    .await
}

async fn bound_to(db: &Database, address: &str) -> Option<String> {
    sqlx::query("SELECT mxid FROM identity_associations WHERE medium = 'email' AND address = $1")
        .bind(address)
        .fetch_optional(db.pool())
        .await
        .unwrap()
        .map(|row| row.try_get("mxid").unwrap())
}

fn assert_forbidden(response: &TestResponse) {
    assert_eq!(
        response.status,
        StatusCode::FORBIDDEN,
        "{}",
        response.text()
    );
    assert_eq!(response.errcode(), "M_FORBIDDEN", "{}", response.text());
}

/// Auth mode 2 (MSC1915): the `sid` and `client_secret` of a validated
/// session for the same medium and address remove the binding: `{}`, and
/// lookups no longer find it.
#[tokio::test]
async fn unbind_with_the_session_of_that_3pid() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs: _hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        let sid = bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        let mut request = body("alice@example.org");
        request["sid"] = json!(sid);
        request["client_secret"] = json!("s1");
        let response = unbind(&h, &request, None).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({}));
        assert_eq!(bound_to(&db, "alice@example.org").await, None);
        assert_eq!(
            lookup_mxids(&h, &alice, &[("alice@example.org", "email")]).await,
            [None]
        );
    }
}

/// Auth mode 2 proves ownership of one 3PID only: a validated session for
/// another address, an unvalidated session, or a wrong `client_secret` is
/// 403 `M_FORBIDDEN`, and the binding stays.
#[tokio::test]
async fn a_session_for_another_3pid_is_forbidden() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs: _hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        let sid = bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        let other = validate_email(&h, &smtp, &alice, "mallory@example.org", "s2").await;
        let unvalidated = h
            .post(
                "/validate/email/requestToken",
                Some(&alice),
                json!({"client_secret": "s3", "email": "alice@example.org", "send_attempt": 1}),
            )
            .await
            .json()["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        for (sid, secret) in [
            (other.as_str(), "s2"),
            (unvalidated.as_str(), "s3"),
            (sid.as_str(), "not-the-secret"),
        ] {
            let mut request = body("alice@example.org");
            request["sid"] = json!(sid);
            request["client_secret"] = json!(secret);
            assert_forbidden(&unbind(&h, &request, None).await);
        }
        assert_eq!(
            bound_to(&db, "alice@example.org").await.as_deref(),
            Some(ALICE)
        );
    }
}

/// Spec §1.6: without either auth mode (no signature; `sid` without
/// `client_secret`), unbind is 403 `M_FORBIDDEN`.
#[tokio::test]
async fn unbind_without_auth_is_forbidden() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs: _hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        let sid = bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        assert_forbidden(&unbind(&h, &body("alice@example.org"), None).await);
        let mut sid_only = body("alice@example.org");
        sid_only["sid"] = json!(sid);
        assert_forbidden(&unbind(&h, &sid_only, None).await);
        assert_eq!(
            bound_to(&db, "alice@example.org").await.as_deref(),
            Some(ALICE)
        );
    }
}

/// Auth mode 1, as Synapse unbinds on `/account/3pid/delete` and
/// deactivation: `{mxid, threepid}` signed with X-Matrix by the mxid's
/// homeserver, `destination_is` = this server's name in the signed JSON
/// and no `destination` in the header; Hearth fetches the homeserver's
/// keys, and the binding is gone.
#[tokio::test]
async fn xmatrix_from_the_mxids_homeserver_unbinds() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        let content = body("alice@example.org");
        let header = synapse_header(&hs.key, HOMESERVER, &content);
        let parsed = XMatrix::parse(&header).unwrap();
        assert_eq!(parsed.destination, None, "{header}");
        assert_eq!(parsed.origin.as_str(), HOMESERVER);

        let response = unbind(&h, &content, Some(&header)).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({}));
        assert!(hs.key_requests() >= 1);
        assert_eq!(bound_to(&db, "alice@example.org").await, None);
        assert_eq!(
            lookup_mxids(&h, &alice, &[("alice@example.org", "email")]).await,
            [None]
        );
    }
}

/// Sydent's rule: only the homeserver of `mxid` may unbind it. A request
/// validly signed by `other.test` (its keys fetched and checked) for a
/// user of `hs.test` is 403 `M_FORBIDDEN`.
#[tokio::test]
async fn xmatrix_from_another_server_is_forbidden() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs: _hs,
            other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        let content = body("alice@example.org");
        let header = synapse_header(&other.key, "other.test", &content);
        assert_forbidden(&unbind(&h, &content, Some(&header)).await);
        assert!(other.key_requests() >= 1, "other.test's keys were checked");
        assert_eq!(
            bound_to(&db, "alice@example.org").await.as_deref(),
            Some(ALICE)
        );
    }
}

/// X-Matrix covers the body, the path and the identity server: a body
/// other than the signed one, a signature for another identity server
/// (`destination_is`), a header naming another `destination`, a key the
/// homeserver does not publish, or a forged signature are all 403
/// `M_FORBIDDEN`, and nothing is unbound.
#[tokio::test]
async fn xmatrix_that_does_not_verify_is_forbidden() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@work.example", "s2").await;
        let content = body("alice@example.org");
        let origin = ServerName::parse(HOMESERVER).unwrap();

        // Signed for one address, sent for the other.
        let signed_for_work = synapse_header(&hs.key, HOMESERVER, &body("alice@work.example"));
        assert_forbidden(&unbind(&h, &content, Some(&signed_for_work)).await);

        // Signed for another identity server.
        let elsewhere = sign_request(
            &hs.key,
            &origin,
            &Destination::IdentityServer(ServerName::parse("other-is.test").unwrap()),
            "POST",
            UNBIND,
            Some(&content),
        )
        .unwrap();
        assert_forbidden(&unbind(&h, &content, Some(&elsewhere)).await);

        // A correct signature, but a header naming another destination.
        let mut header = XMatrix::parse(&synapse_header(&hs.key, HOMESERVER, &content)).unwrap();
        header.destination = Some(ServerName::parse("other-is.test").unwrap());
        assert_forbidden(&unbind(&h, &content, Some(&header.to_header())).await);

        // Signed for another path.
        let other_path = sign_request(
            &hs.key,
            &origin,
            &Destination::IdentityServer(ServerName::parse(SERVER_NAME).unwrap()),
            "POST",
            "/_matrix/identity/v2/3pid/bind",
            Some(&content),
        )
        .unwrap();
        assert_forbidden(&unbind(&h, &content, Some(&other_path)).await);

        // A key hs.test does not publish.
        let stranger = SigningKey::from_seed(KeyVersion::parse("hs2").unwrap(), [9; 32]);
        let unknown_key = synapse_header(&stranger, HOMESERVER, &content);
        assert_forbidden(&unbind(&h, &content, Some(&unknown_key)).await);

        // The published key id with someone else's signature.
        let mut forged = XMatrix::parse(&synapse_header(&hs.key, HOMESERVER, &content)).unwrap();
        forged.sig = XMatrix::parse(&synapse_header(
            &SigningKey::from_seed(KeyVersion::parse("hs1").unwrap(), [8; 32]),
            HOMESERVER,
            &content,
        ))
        .unwrap()
        .sig;
        assert_forbidden(&unbind(&h, &content, Some(&forged.to_header())).await);

        for address in ["alice@example.org", "alice@work.example"] {
            assert_eq!(bound_to(&db, address).await.as_deref(), Some(ALICE));
        }
        // The refusals were the signatures' fault: the right one works.
        let right = synapse_header(&hs.key, HOMESERVER, &content);
        assert_eq!(unbind(&h, &content, Some(&right)).await.json(), json!({}));
        assert_eq!(bound_to(&db, "alice@example.org").await, None);
    }
}

/// Sydent's `removeBinding` and the spec: unbinding what is not bound is
/// no error, `{}`, with either auth mode.
#[tokio::test]
async fn unbinding_what_is_not_bound_is_ok() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let content = body("never-bound@example.org");
        let header = synapse_header(&hs.key, HOMESERVER, &content);
        let response = unbind(&h, &content, Some(&header)).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({}));

        let alice = h.user("alice").await;
        let sid = validate_email(&h, &smtp, &alice, "validated@example.org", "s1").await;
        let mut request = body("validated@example.org");
        request["sid"] = json!(sid);
        request["client_secret"] = json!("s1");
        let response = unbind(&h, &request, None).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({}));
        assert_eq!(
            sqlx::query("SELECT COUNT(*) AS n FROM identity_associations")
                .fetch_one(db.pool())
                .await
                .unwrap()
                .try_get::<i64, _>("n")
                .unwrap(),
            0
        );
    }
}

/// The spec's OpenAPI lists Bearer auth for `/3pid/unbind`, so a client
/// following it sends `Authorization: Bearer <token>` beside `sid` and
/// `client_secret`. Sydent checks `sid`/`client_secret` first whenever
/// they are present (`ThreePidUnbindServlet`), so the session alone
/// decides: the binding is removed.
#[tokio::test]
async fn a_session_unbinds_even_beside_a_bearer_token() {
    for (db, dir) in backends().await {
        let Env {
            h,
            smtp,
            hs: _hs,
            other: _other,
        } = env(db.clone(), dir).await;
        let alice = h.user("alice").await;
        let sid = bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        let mut request = body("alice@example.org");
        request["sid"] = json!(sid);
        request["client_secret"] = json!("s1");
        let response = unbind(&h, &request, Some(&format!("Bearer {alice}"))).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({}));
        assert_eq!(bound_to(&db, "alice@example.org").await, None);
    }
}

/// Synapse signs `destination_is` with the `id_server` its client named,
/// the host of the `m.identity_server` base URL, which is Hearth's
/// `public_base_url` ("the base URL clients and homeservers use for this
/// service"), not necessarily `server_name` (Sydent#512 is this mismatch).
/// Both names are this identity server, so both are accepted.
#[tokio::test]
async fn xmatrix_for_the_public_base_url_host_unbinds() {
    for (db, dir) in backends().await {
        let hs = FakeKeyServer::start(
            HOMESERVER,
            SigningKey::from_seed(KeyVersion::parse("hs1").unwrap(), [1; 32]),
        )
        .await;
        let smtp = SmtpCapture::start();
        let mut config = test_config();
        smtp.configure(&mut config);
        config.public_base_url = Some("https://identity.is.test".to_owned());
        let h = Harness::start_with(
            db.clone(),
            dir,
            config,
            SigningKey::generate(),
            &[(HOMESERVER, &hs.url)],
        )
        .await;
        let alice = h.user("alice").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@work.example", "s2").await;
        let origin = ServerName::parse(HOMESERVER).unwrap();

        // Signed for `server_name`.
        let content = body("alice@work.example");
        let header = synapse_header(&hs.key, HOMESERVER, &content);
        let response = unbind(&h, &content, Some(&header)).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(bound_to(&db, "alice@work.example").await, None);

        // Signed for the host clients and Synapse know it by.
        let content = body("alice@example.org");
        let header = sign_request(
            &hs.key,
            &origin,
            &Destination::IdentityServer(ServerName::parse("identity.is.test").unwrap()),
            "POST",
            UNBIND,
            Some(&content),
        )
        .unwrap();
        let response = unbind(&h, &content, Some(&header)).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(bound_to(&db, "alice@example.org").await, None);
    }
}

/// Hardening (issue 10 item 3): `/3pid/unbind` takes no token, so what
/// fetching the origin's keys runs into (DNS, the address guard, another
/// server's status and body) must not come back to the caller: one generic
/// 403 `M_FORBIDDEN`, whatever the cause, naming neither the host nor the
/// failure.
#[tokio::test]
async fn key_fetch_failures_do_not_reach_the_caller() {
    for (db, dir) in backends().await {
        let env = env(db, dir).await;
        let key = SigningKey::from_seed(KeyVersion::parse("k1").unwrap(), [9; 32]);
        let mut answers = Vec::new();
        // No DNS for this origin; and one whose key server answers 404.
        for origin in ["internal-db.corp.test", "other.test"] {
            let content = json!({
                "mxid": format!("@alice:{origin}"),
                "threepid": {"medium": "email", "address": "a@example.org"},
            });
            let header = synapse_header(&key, origin, &content);
            let response = unbind(&env.h, &content, Some(&header)).await;
            assert_forbidden(&response);
            let text = response.text();
            for leak in [
                "corp",
                "DNS",
                "dns",
                "other.test",
                "404",
                "resolve",
                "answered",
            ] {
                assert!(!text.contains(leak), "{leak} in {text}");
            }
            answers.push(response.json());
        }
        assert_eq!(answers[0], answers[1], "one generic error");
    }
}
