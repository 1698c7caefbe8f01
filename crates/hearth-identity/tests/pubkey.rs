//! Spec "Key management": `GET /pubkey/{keyId}` and `GET
//! /pubkey/isvalid` for this server's long-term keys, current and retired.

mod common;

use common::{Harness, backends, test_config};
use hearth_core::keys::{KeyRing, OldVerifyKey, SigningKey};
use http::StatusCode;

/// Issue 11 item 8. "The response should always be the same, provided the
/// key exists": a key retired by `hearth keys generate` or an import still
/// answers at `/pubkey/{keyId}` and is valid at `/pubkey/isvalid`, so
/// invites and associations signed before the rotation still check. A key
/// that never was ours is 404 `M_NOT_FOUND` and not valid.
#[tokio::test]
async fn retired_keys_stay_valid() {
    for (db, dir) in backends().await {
        let current = SigningKey::generate();
        let retired = SigningKey::generate();
        let stranger = SigningKey::generate();
        let ring = KeyRing {
            current: vec![current.clone()],
            old: vec![OldVerifyKey {
                key_id: retired.key_id(),
                key: retired.public_key_base64(),
                expired_ts: 1,
            }],
        };
        let h = Harness::start_with_ring(db, dir, test_config(), ring, &[]).await;
        for key in [&current, &retired] {
            let r = h.get(&format!("/pubkey/{}", key.key_id()), None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json()["public_key"], key.public_key_base64());
            // Synapse sends the key as the invite event has it; URL-safe
            // clients send the other alphabet.
            let url_safe = key.public_key_base64().replace('+', "-").replace('/', "_");
            for form in [
                hearth_core::http::percent_encode(&key.public_key_base64()),
                url_safe,
            ] {
                let r = h
                    .get(&format!("/pubkey/isvalid?public_key={form}"), None)
                    .await;
                assert_eq!(r.json()["valid"], true, "{form}");
            }
        }
        let r = h.get(&format!("/pubkey/{}", stranger.key_id()), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.errcode(), "M_NOT_FOUND");
        let stranger_key = hearth_core::http::percent_encode(&stranger.public_key_base64());
        let r = h
            .get(&format!("/pubkey/isvalid?public_key={stranger_key}"), None)
            .await;
        assert_eq!(r.json()["valid"], false);
    }
}
