//! `GET /_matrix/key/v2/server` (Server-Server API, "Publishing Keys").

use axum::body::Body;
use hearth_core::canonical_json;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyRing, OldVerifyKey, SigningKey};
use hearth_core::time::now_ms;
use hearth_federation::keys::verify_server_keys;
use hearth_notary::{Config, Notary, router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;

async fn get_keys(notary: Notary) -> serde_json::Value {
    let response = router(Arc::new(notary))
        .oneshot(
            Request::get("/_matrix/key/v2/server")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    canonical_json::parse(&bytes).expect("the response is canonical-JSON compatible")
}

/// Every current key is listed and signs the object; retired keys appear in
/// `old_verify_keys` with their `expired_ts`; `valid_until_ts` lies
/// `key_refresh_interval` ahead, like Synapse's `key_refresh_interval`.
#[tokio::test]
async fn publishes_current_and_old_keys_self_signed() {
    let name = ServerName::parse("hearth.example").unwrap();
    let keys = vec![SigningKey::generate(), SigningKey::generate()];
    let old = OldVerifyKey {
        key_id: "ed25519:a_old".to_owned(),
        key: SigningKey::generate().public_key_base64(),
        expired_ts: 1_600_000_000_000,
    };
    let before = now_ms();
    let (db, _dir) = hearth_core::storage::testing::sqlite(&hearth_federation::SCHEMA).await;
    let client = hearth_federation::FederationClient::new(
        &hearth_federation::FederationConfig::default(),
        hearth_testkit::federation::fake_dns(&[]),
        None,
    )
    .unwrap();
    let notary = Notary::new(
        name.clone(),
        KeyRing {
            current: keys.clone(),
            old: vec![old.clone()],
        },
        Config::default(),
        hearth_federation::KeyStore::new(client, db),
    )
    .unwrap();
    let body = get_keys(notary).await;

    let verified = verify_server_keys(body.clone(), &name, now_ms()).unwrap();
    assert_eq!(verified.verify_keys.len(), 2);
    for key in &keys {
        assert_eq!(
            verified.verify_keys[&key.key_id()].to_base64(),
            key.public_key_base64()
        );
        assert!(body["signatures"]["hearth.example"][key.key_id()].is_string());
    }
    assert_eq!(body["old_verify_keys"]["ed25519:a_old"]["key"], old.key);
    assert_eq!(
        body["old_verify_keys"]["ed25519:a_old"]["expired_ts"],
        old.expired_ts
    );
    let day = 24 * 3600 * 1000;
    let valid_until = body["valid_until_ts"].as_i64().unwrap();
    assert!(valid_until >= before + day && valid_until <= now_ms() + day);
}
