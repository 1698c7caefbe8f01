//! `hearth identity export` and `forget` (GDPR access and erasure): what is
//! held about a user, and that erasing it leaves nothing a lookup, a token
//! or a pending invite could still reveal.

mod common;

use common::ConfigureSmtp;

use common::*;
use http::StatusCode;
use serde_json::json;

const ALICE: &str = "@alice:hs.test";

/// Export lists the user's bindings (with the lower-cased form kept for
/// lookups when it differs from the case-folded address), the invites they
/// sent and their account (tokens, accepted terms); forget erases all of
/// it, both lookup forms included, and the user's token stops working.
/// Other users' data is untouched.
#[tokio::test]
async fn export_then_forget_a_user() {
    for (db, dir) in backends().await {
        let smtp = SmtpCapture::start();
        let mut config = test_config();
        smtp.configure(&mut config);
        let h = Harness::start(db.clone(), dir, config).await;
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        bind_email(&h, &smtp, &alice, ALICE, "Alice.Strauß@example.org", "s1").await;
        bind_email(&h, &smtp, &bob, "@bob:hs.test", "bob@example.org", "s2").await;
        let invited = h
            .post(
                "/store-invite",
                Some(&alice),
                json!({
                    "medium": "email",
                    "address": "friend@example.org",
                    "room_id": "!room:hs.test",
                    "sender": ALICE,
                }),
            )
            .await;
        assert_eq!(invited.status, StatusCode::OK, "{}", invited.text());

        let user = hearth_core::ids::UserId::parse(ALICE).unwrap();
        let exported = hearth_identity::export(&h.state, &user).await.unwrap();
        assert_eq!(exported["user_id"], ALICE);
        assert_eq!(exported["associations"][0]["medium"], "email");
        assert_eq!(
            exported["associations"][0]["address"],
            "alice.strauss@example.org"
        );
        assert_eq!(
            exported["associations"][0]["lookup_alias"],
            "alice.strauß@example.org"
        );
        assert_eq!(exported["associations"].as_array().unwrap().len(), 1);
        assert_eq!(
            exported["pending_invites_sent"][0]["address"],
            "friend@example.org"
        );
        assert_eq!(exported["account"]["active_tokens"], 1);
        assert_eq!(exported["account"]["accepted_terms"], json!([TERMS_URL]));

        hearth_identity::forget(&h.state, &user).await.unwrap();

        let after = hearth_identity::export(&h.state, &user).await.unwrap();
        assert_eq!(after["associations"], json!([]));
        assert_eq!(after["pending_invites_sent"], json!([]));
        assert_eq!(after["account"]["active_tokens"], 0);
        assert_eq!(after["account"]["accepted_terms"], json!([]));
        let refused = h.get("/account", Some(&alice)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        // Other instances learn of the erasure through the change log; this
        // one too, within a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let found = lookup_mxids(
                &h,
                &bob,
                &[
                    ("alice.strauss@example.org", "email"),
                    ("alice.strauß@example.org", "email"),
                    ("bob@example.org", "email"),
                ],
            )
            .await;
            if found == [None, None, Some("@bob:hs.test".to_owned())] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{found:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
