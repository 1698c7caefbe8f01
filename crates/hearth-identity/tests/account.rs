//! Accounts, terms and the unauthenticated endpoints of the Identity
//! Service API (spec "Authentication", "Terms of service", "API version
//! check", "Status check", "Key management"; MSC2140), driven through the
//! router in-process on every database backend, with the fake homeserver
//! of `tests/common` vouching for users over OpenID.

mod common;

use axum::Router;
use axum::routing::get;
use common::{
    HOMESERVER, Harness, PUBLIC_BASE_URL, TERMS_URL, TestResponse, backends, test_config,
};
use hearth_auth::{PolicyConfig, PolicyLanguage};
use hearth_core::ids::{ServerName, UserId};
use hearth_core::keys::{KeyVersion, SigningKey};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

const ALICE: &str = "@alice:hs.test";

/// The OpenID credentials `/openid/request_token` would give, for
/// `matrix_server_name`.
fn credentials(access_token: &str, matrix_server_name: &str) -> Value {
    json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "matrix_server_name": matrix_server_name,
        "expires_in": 3600,
    })
}

fn assert_error(response: &TestResponse, status: StatusCode, errcode: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.errcode(), errcode, "{}", response.text());
}

/// A config whose one policy is the file `file`, served by Hearth.
fn file_policy_config(file: &Path, version: &str) -> hearth_identity::Config {
    let mut config = test_config();
    let mut languages = BTreeMap::new();
    languages.insert(
        "en".to_owned(),
        PolicyLanguage {
            name: "Terms of service".to_owned(),
            url: None,
            file: Some(file.to_owned()),
        },
    );
    config.auth.terms.policies.clear();
    config.auth.terms.policies.insert(
        "tos".to_owned(),
        PolicyConfig {
            version: version.to_owned(),
            languages,
        },
    );
    config
}

/// The URL Hearth gives a document it serves itself.
fn served_url(id: &str, version: &str, lang: &str) -> String {
    format!("{PUBLIC_BASE_URL}/_hearth/terms/identity/{id}/{version}/{lang}")
}

/// What the service holds about `user_id` (`hearth identity export`).
async fn accepted_terms(h: &Harness, user_id: &str) -> Vec<String> {
    let export = hearth_identity::export(&h.state, &UserId::parse(user_id).unwrap())
        .await
        .unwrap();
    let mut urls: Vec<String> = export["account"]["accepted_terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    urls.sort();
    urls
}

/// Spec "POST /account/register" (MSC2140): OpenID credentials the user's
/// homeserver vouches for (`/_matrix/federation/v1/openid/userinfo`) give
/// `token`, and, as Sydent answers and older Element reads, the same value
/// as `access_token`; the token then identifies the user at `GET /account`.
#[tokio::test]
async fn register_returns_token_and_legacy_access_token() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let response = h
            .post("/account/register", None, credentials("alice", HOMESERVER))
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let body = response.json();
        let token = body["token"].as_str().unwrap();
        assert!(!token.is_empty());
        assert_eq!(body["access_token"], body["token"]);
        h.accept_terms(token).await;
        let account = h.get("/account", Some(token)).await;
        assert_eq!(account.status, StatusCode::OK, "{}", account.text());
        assert_eq!(account.json(), json!({"user_id": ALICE}));

        // Each registration is a token of its own.
        let second = h.register("alice").await;
        assert_ne!(second, token);
    }
}

/// MSC2140 registration fails with 401 `M_UNAUTHORIZED` when the
/// homeserver refuses the OpenID token (ma1sd#73's symptom), and the
/// service hands out no token.
#[tokio::test]
async fn register_refused_by_the_homeserver_is_unauthorized() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let response = h
            .post(
                "/account/register",
                None,
                credentials("bad-token", HOMESERVER),
            )
            .await;
        assert_error(&response, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        assert!(response.json().get("token").is_none());
    }
}

/// A homeserver can vouch only for its own users: `userinfo` from
/// `liar.test` naming `@alice:hs.test` is 401 `M_UNAUTHORIZED` (Sydent
/// checks the same: the `sub`'s server must be `matrix_server_name`).
#[tokio::test]
async fn register_refuses_a_user_of_another_server() {
    for (db, dir) in backends().await {
        let liar = Router::new().route(
            "/_matrix/federation/v1/openid/userinfo",
            get(|| async { axum::Json(json!({"sub": ALICE})) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, liar).await.unwrap() });
        let h = Harness::start_with(
            db,
            dir,
            test_config(),
            SigningKey::generate(),
            &[("liar.test", &url)],
        )
        .await;
        let response = h
            .post("/account/register", None, credentials("alice", "liar.test"))
            .await;
        assert_error(&response, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        server.abort();
    }
}

/// `identity.auth.allowed_homeservers`: users of other homeservers are
/// refused with 403 `M_FORBIDDEN`; users of a listed one register.
#[tokio::test]
async fn allowed_homeservers_refuse_other_homeservers() {
    for (db, dir) in backends().await {
        let mut config = test_config();
        config.auth.allowed_homeservers = vec![ServerName::parse("other.test").unwrap()];
        let refusing = Harness::start(db.clone(), None, config).await;
        let response = refusing
            .post("/account/register", None, credentials("alice", HOMESERVER))
            .await;
        assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");

        let mut config = test_config();
        config.auth.allowed_homeservers = vec![
            ServerName::parse("other.test").unwrap(),
            ServerName::parse(HOMESERVER).unwrap(),
        ];
        let allowing = Harness::start(db, dir, config).await;
        allowing.register("alice").await;
    }
}

/// Spec "GET /account": `{user_id}` once the terms are accepted (403
/// `M_TERMS_NOT_SIGNED` before, which is how Element learns it must show
/// them); a missing or unknown token is 401 `M_UNAUTHORIZED`; the token
/// may also come as `?access_token=`, which Synapse still sends (to
/// `/hash_details`).
#[tokio::test]
async fn get_account_needs_a_token_and_the_terms() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        assert_error(
            &h.get("/account", None).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
        assert_error(
            &h.get("/account", Some("no-such-token")).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
        let token = h.register("alice").await;
        assert_error(
            &h.get("/account", Some(&token)).await,
            StatusCode::FORBIDDEN,
            "M_TERMS_NOT_SIGNED",
        );
        h.accept_terms(&token).await;
        assert_eq!(
            h.get("/account", Some(&token)).await.json(),
            json!({"user_id": ALICE})
        );
        let by_query = h.get(&format!("/account?access_token={token}"), None).await;
        assert_eq!(by_query.status, StatusCode::OK, "{}", by_query.text());
        assert_eq!(by_query.json(), json!({"user_id": ALICE}));
        assert_error(
            &h.get("/account?access_token=no-such-token", None).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
    }
}

/// Spec "POST /account/logout": `{}` (with or without a body, and without
/// accepted terms), after which the token is unknown (401
/// `M_UNAUTHORIZED` on `GET /account`); logging out an unknown token is
/// 401 `M_UNKNOWN_TOKEN`, and no token 401 `M_UNAUTHORIZED`. Other tokens
/// of the same user keep working.
#[tokio::test]
async fn logout_invalidates_only_that_token() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let token = h.user("alice").await;
        let other = h.register("alice").await;
        let logout = "/_matrix/identity/v2/account/logout";

        let done = h.request(Method::POST, logout, Some(&token), None).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text());
        assert_eq!(done.json(), json!({}));
        assert_error(
            &h.get("/account", Some(&token)).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
        assert_error(
            &h.request(Method::POST, logout, Some(&token), None).await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
        assert_error(
            &h.post("/account/logout", Some("never-issued"), json!({}))
                .await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
        assert_error(
            &h.request(Method::POST, logout, None, None).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );

        // The user's other token, terms not accepted through it: still
        // valid, and it logs out with a JSON body too.
        assert_eq!(
            h.get("/account", Some(&other)).await.json(),
            json!({"user_id": ALICE})
        );
        let done = h.post("/account/logout", Some(&other), json!({})).await;
        assert_eq!(done.json(), json!({}));
    }
}

/// Spec "GET /terms" (MSC2140): `{policies: {<id>: {version, <lang>:
/// {name, url}}}}`, without auth.
#[tokio::test]
async fn get_terms_has_the_spec_shape() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let terms = h.get("/terms", None).await;
        assert_eq!(terms.status, StatusCode::OK, "{}", terms.text());
        assert_eq!(
            terms.json(),
            json!({"policies": {"privacy_policy": {
                "version": "1",
                "en": {"name": "Privacy policy", "url": TERMS_URL},
            }}})
        );
    }
}

/// Spec "POST /terms": acceptance is recorded by URL, and clients send
/// every URL in `m.accepted_terms`, so URLs that are not documents of a
/// current policy (another service's, an older version's) are ignored and
/// accept nothing; it needs a token (401) but never the terms.
#[tokio::test]
async fn post_terms_ignores_urls_of_other_services_and_old_versions() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let token = h.register("alice").await;
        assert_error(
            &h.post("/terms", None, json!({"user_accepts": [TERMS_URL]}))
                .await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
        let foreign = [
            format!("{PUBLIC_BASE_URL}/_hearth/terms/integrations/privacy_policy/1/en"),
            "https://is.test/terms/privacy-0-en.html".to_owned(),
            "https://other-is.example/terms.html".to_owned(),
        ];
        let ignored = h
            .post("/terms", Some(&token), json!({"user_accepts": foreign}))
            .await;
        assert_eq!(ignored.status, StatusCode::OK, "{}", ignored.text());
        assert_eq!(ignored.json(), json!({}));
        assert_error(
            &h.get("/account", Some(&token)).await,
            StatusCode::FORBIDDEN,
            "M_TERMS_NOT_SIGNED",
        );
        assert!(accepted_terms(&h, ALICE).await.is_empty());

        // Mixed with a current URL, only that one is recorded.
        let mut urls = foreign.to_vec();
        urls.push(TERMS_URL.to_owned());
        h.post("/terms", Some(&token), json!({"user_accepts": urls}))
            .await;
        assert_eq!(accepted_terms(&h, ALICE).await, [TERMS_URL]);
        assert_eq!(h.get("/account", Some(&token)).await.status, StatusCode::OK);
    }
}

/// MSC2140: a new version of a policy asks every user again (403
/// `M_TERMS_NOT_SIGNED` with the same token, after a restart with the
/// changed config on the same database); accepting the old version's URL
/// again does not do, the new one's does.
#[tokio::test]
async fn a_new_policy_version_asks_again() {
    for (db, dir) in backends().await {
        let files = tempfile::tempdir().unwrap();
        let file = files.path().join("tos.html");
        std::fs::write(&file, "<h1>Terms</h1>").unwrap();
        let v1 = Harness::start(db.clone(), None, file_policy_config(&file, "1")).await;
        let token = v1.user("alice").await;
        assert_eq!(
            v1.get("/account", Some(&token)).await.status,
            StatusCode::OK
        );
        drop(v1);

        let v2 = Harness::start(db, dir, file_policy_config(&file, "2")).await;
        assert_error(
            &v2.get("/account", Some(&token)).await,
            StatusCode::FORBIDDEN,
            "M_TERMS_NOT_SIGNED",
        );
        let terms = v2.get("/terms", None).await.json();
        assert_eq!(terms["policies"]["tos"]["version"], "2");
        let new_url = served_url("tos", "2", "en");
        assert_eq!(terms["policies"]["tos"]["en"]["url"], new_url.as_str());

        let old = v2
            .post(
                "/terms",
                Some(&token),
                json!({"user_accepts": [served_url("tos", "1", "en")]}),
            )
            .await;
        assert_eq!(old.status, StatusCode::OK);
        assert_error(
            &v2.get("/account", Some(&token)).await,
            StatusCode::FORBIDDEN,
            "M_TERMS_NOT_SIGNED",
        );
        v2.post("/terms", Some(&token), json!({"user_accepts": [new_url]}))
            .await;
        assert_eq!(
            v2.get("/account", Some(&token)).await.json(),
            json!({"user_id": ALICE})
        );
    }
}

/// A policy configured as a `file` is served by Hearth at
/// `/_hearth/terms/identity/{id}/{version}/{lang}` as `text/html`, the URL
/// `GET /terms` lists under `public_base_url`; other versions, languages
/// or services are 404 `M_NOT_FOUND`.
#[tokio::test]
async fn file_policies_are_served_as_html() {
    for (db, dir) in backends().await {
        let files = tempfile::tempdir().unwrap();
        let file = files.path().join("tos.html");
        let html = "<!doctype html><title>Terms</title><p>Be nice.</p>";
        std::fs::write(&file, html).unwrap();
        let h = Harness::start(db, dir, file_policy_config(&file, "3")).await;
        let terms = h.get("/terms", None).await.json();
        let url = served_url("tos", "3", "en");
        assert_eq!(
            terms,
            json!({"policies": {"tos": {
                "version": "3",
                "en": {"name": "Terms of service", "url": url},
            }}})
        );

        let path = url.strip_prefix(PUBLIC_BASE_URL).unwrap();
        let document = h.request(Method::GET, path, None, None).await;
        assert_eq!(document.status, StatusCode::OK, "{}", document.text());
        assert!(
            document
                .header("content-type")
                .unwrap()
                .starts_with("text/html"),
            "{:?}",
            document.header("content-type")
        );
        assert_eq!(document.text(), html);

        for missing in [
            "/_hearth/terms/identity/tos/2/en",
            "/_hearth/terms/identity/tos/3/fr",
            "/_hearth/terms/identity/privacy/3/en",
        ] {
            let response = h.request(Method::GET, missing, None, None).await;
            assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        }
        // Each service mounts only its own namespace; another's is not ours.
        let other = h
            .public_request(Method::GET, "/_hearth/terms/integrations/tos/3/en")
            .await;
        assert_error(&other, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");

        // Accepting the served URL accepts the policy.
        let token = h.register("alice").await;
        h.post("/terms", Some(&token), json!({"user_accepts": [url]}))
            .await;
        assert_eq!(h.get("/account", Some(&token)).await.status, StatusCode::OK);
    }
}

/// Spec "GET /_matrix/identity/versions" (`{versions}`, v1.1 and later
/// being the v2-only API) and "GET /_matrix/identity/v2" (`{}`, Element's
/// autodiscovery check), both without auth.
#[tokio::test]
async fn versions_and_status_have_the_spec_shapes() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let versions = h
            .request(Method::GET, "/_matrix/identity/versions", None, None)
            .await;
        assert_eq!(versions.status, StatusCode::OK, "{}", versions.text());
        let body = versions.json();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        let list = body["versions"].as_array().unwrap();
        assert!(list.contains(&json!("v1.1")), "{body}");
        for version in list {
            let version = version.as_str().unwrap();
            let minor = version.strip_prefix("v1.").expect("a v1.x version");
            assert!(minor.parse::<u32>().is_ok(), "{version}");
        }

        let status = h.get("", None).await;
        assert_eq!(status.status, StatusCode::OK, "{}", status.text());
        assert_eq!(status.json(), json!({}));
    }
}

/// Spec 1.4: the v1 API was removed in v1.1 and Hearth serves none of it,
/// so its paths are unknown endpoints, 404 `M_UNRECOGNIZED` as the binary
/// serves them; a known path with the wrong method is 405
/// `M_UNRECOGNIZED`.
#[tokio::test]
async fn no_v1_endpoint_answers() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        for (method, path) in [
            (Method::GET, "/_matrix/identity/api/v1"),
            (
                Method::GET,
                "/_matrix/identity/api/v1/lookup?medium=email&address=a@b.c",
            ),
            (Method::POST, "/_matrix/identity/api/v1/bulk_lookup"),
            (Method::POST, "/_matrix/identity/api/v1/3pid/bind"),
            (Method::GET, "/_matrix/identity/api/v1/pubkey/ed25519:0"),
            (
                Method::POST,
                "/_matrix/identity/api/v1/validate/msisdn/requestToken",
            ),
        ] {
            let response = h.public_request(method, path).await;
            assert_error(&response, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
        }
        let wrong_method = h
            .public_request(Method::GET, "/_matrix/identity/v2/lookup")
            .await;
        assert_error(
            &wrong_method,
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
        );
    }
}

/// Spec "GET /pubkey/{keyId}": our key id gives `{public_key}`, the
/// signing key's public half in unpadded base64; any other id is 404
/// `M_NOT_FOUND` (Sydent's only id, `ed25519:0`, included, since Hearth's
/// key has another).
#[tokio::test]
async fn pubkey_serves_our_key_only() {
    for (db, dir) in backends().await {
        let key = SigningKey::from_seed(KeyVersion::parse("k1").unwrap(), [3; 32]);
        let h = Harness::start_with(db, dir, test_config(), key.clone(), &[]).await;
        let response = h.get("/pubkey/ed25519:k1", None).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(
            response.json(),
            json!({"public_key": key.public_key_base64()})
        );
        let public_key = response.json()["public_key"].as_str().unwrap().to_owned();
        assert!(!public_key.ends_with('='));
        assert_eq!(hearth_core::base64::decode(&public_key).unwrap().len(), 32);
        for unknown in ["ed25519:k2", "ed25519:0", "curve25519:k1"] {
            let response = h.get(&format!("/pubkey/{unknown}"), None).await;
            assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        }
    }
}

/// Percent-encodes a query value (`+`, `/` and `=` included).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A signing key whose public key uses `+` or `/` in standard base64, so
/// the URL-safe form differs.
fn key_with_both_alphabets() -> SigningKey {
    (0u8..=255)
        .map(|seed| SigningKey::from_seed(KeyVersion::parse("k1").unwrap(), [seed; 32]))
        .find(|k| k.public_key_base64().contains(['+', '/']))
        .expect("some seed gives a key with + or /")
}

/// Spec "GET /pubkey/isvalid": `{valid: true}` for our long-term key in
/// the standard or the URL-safe alphabet (the spec allows either in
/// `public_keys`), padded or not; `{valid: false}` for any other key.
#[tokio::test]
async fn pubkey_isvalid_accepts_both_alphabets() {
    for (db, dir) in backends().await {
        let key = key_with_both_alphabets();
        let h = Harness::start_with(db, dir, test_config(), key.clone(), &[]).await;
        let standard = key.public_key_base64();
        let url_safe = standard.replace('+', "-").replace('/', "_");
        assert_ne!(standard, url_safe);
        let padded = format!("{standard}=");
        for (public_key, valid) in [
            (standard.as_str(), true),
            (url_safe.as_str(), true),
            (padded.as_str(), true),
            (&SigningKey::generate().public_key_base64()[..], false),
            ("not-a-key", false),
        ] {
            let response = h
                .get(
                    &format!("/pubkey/isvalid?public_key={}", encode(public_key)),
                    None,
                )
                .await;
            assert_eq!(response.status, StatusCode::OK, "{}", response.text());
            assert_eq!(response.json(), json!({"valid": valid}), "{public_key}");
        }
        // Our long-term key is no ephemeral invite key.
        let response = h
            .get(
                &format!("/pubkey/ephemeral/isvalid?public_key={}", encode(&standard)),
                None,
            )
            .await;
        assert_eq!(response.json(), json!({"valid": false}));
    }
}

/// Spec 1.1 "Errors": every error is a JSON `{errcode, error}`, so a
/// missing required query parameter (`public_key` of `/pubkey/isvalid`
/// and `/pubkey/ephemeral/isvalid`, `sid` and `client_secret` of
/// `/3pid/getValidated3pid`) is 400 `M_MISSING_PARAMS`, the spec's code
/// for it (Sydent's `get_args`), not a plain-text body.
#[tokio::test]
async fn missing_query_parameters_are_matrix_errors() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let token = h.user("alice").await;
        for path in [
            "/pubkey/isvalid",
            "/pubkey/ephemeral/isvalid",
            "/3pid/getValidated3pid?sid=abc",
        ] {
            let response = h.get(path, Some(&token)).await;
            assert!(
                response
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("application/json")),
                "{path}: {:?} {}",
                response.header("content-type"),
                response.text()
            );
            assert_error(&response, StatusCode::BAD_REQUEST, "M_MISSING_PARAMS");
        }
    }
}
