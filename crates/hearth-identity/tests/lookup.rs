//! Hashed association lookup (spec "Association lookup", MSC2134): `GET
//! /hash_details` and `POST /lookup`, the pepper and its rotation
//! (`hearth_identity::rotate_pepper_if_due`), driven through the router
//! in-process on every database backend. Bindings are made through the
//! real validation flow (a real SMTP server, aiosmtpd, catches the mails),
//! or, for bulk data, inserted as rows of `identity_associations`.
//!
//! Hashes are computed by the tests themselves (`common::sha256_lookup_hash`),
//! as a client would, never by the server's code.

mod common;

use common::ConfigureSmtp;

use common::{
    Harness, SmtpCapture, TestResponse, backends, bind_email, lookup_mxids, lookup_pepper,
    sha256_lookup_hash, test_config, validate_email,
};
use hearth_core::config::Duration as ConfigDuration;
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use hearth_identity::Config;
use http::StatusCode;
use serde_json::json;
use sqlx::Row;

const ALICE: &str = "@alice:hs.test";
const BOB: &str = "@bob:hs.test";
const DAY_MS: i64 = 24 * 3600 * 1000;

async fn smtp_harness(
    db: Database,
    dir: Option<tempfile::TempDir>,
    change: impl FnOnce(&mut Config),
) -> (Harness, SmtpCapture) {
    let smtp = SmtpCapture::start();
    let mut config = test_config();
    smtp.configure(&mut config);
    change(&mut config);
    (Harness::start(db, dir, config).await, smtp)
}

async fn lookup(
    h: &Harness,
    token: &str,
    algorithm: &str,
    pepper: &str,
    addresses: &[String],
) -> TestResponse {
    h.post(
        "/lookup",
        Some(token),
        json!({"algorithm": algorithm, "pepper": pepper, "addresses": addresses}),
    )
    .await
}

fn assert_error(response: &TestResponse, status: StatusCode, errcode: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.errcode(), errcode, "{}", response.text());
}

/// Inserts bindings as rows, as an import or another instance would have
/// written them; they are indexed by the next pepper rotation only.
async fn insert_associations(db: &Database, rows: &[(String, String, String)]) {
    let ts = now_ms();
    for chunk in rows.chunks(100) {
        let mut sql = String::from(
            "INSERT INTO identity_associations (medium, address, mxid, ts, not_before, not_after) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 3;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, {ts}, {ts}, {ts})",
                b + 1,
                b + 2,
                b + 3
            ));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (medium, address, mxid) in chunk {
            query = query
                .bind(medium.clone())
                .bind(address.clone())
                .bind(mxid.clone());
        }
        query.execute(db.pool()).await.unwrap();
    }
}

async fn count(db: &Database, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

/// Makes the current pepper one from the previous rotation epoch, as it
/// is once `pepper_rotation` has passed since it was made. (The rotation
/// period is at least a minute and the epoch comes from the clock, so this
/// is the seam that lets a test cross an epoch without waiting.)
async fn age_current_pepper(db: &Database) {
    let done =
        sqlx::query("UPDATE identity_peppers SET epoch = epoch - 1, created_ts = created_ts - $1")
            .bind(DAY_MS)
            .execute(db.pool())
            .await
            .unwrap();
    assert_eq!(done.rows_affected(), 1, "one current pepper");
}

/// The test's own hash function against the spec's examples (Identity
/// Service API, "Client behaviour", pepper `matrixrocks`).
#[test]
fn the_spec_examples_hold_for_the_tests_hash() {
    assert_eq!(
        sha256_lookup_hash("alice@example.com", "email", "matrixrocks"),
        "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
    );
    assert_eq!(
        sha256_lookup_hash("bob@example.com", "email", "matrixrocks"),
        "LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8"
    );
    assert_eq!(
        sha256_lookup_hash("18005552067", "msisdn", "matrixrocks"),
        "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I"
    );
}

/// Spec "GET /hash_details": needs a token (401 `M_UNAUTHORIZED`) and the
/// terms (403 `M_TERMS_NOT_SIGNED`); gives `lookup_pepper` (MSC2134:
/// `[a-zA-Z0-9]+`), the same until rotation, and `algorithms` of just
/// `sha256` by default. Synapse's `?access_token=` works here.
#[tokio::test]
async fn hash_details_gives_the_pepper_and_sha256() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        assert_error(
            &h.get("/hash_details", None).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
        let token = h.register("alice").await;
        assert_error(
            &h.get("/hash_details", Some(&token)).await,
            StatusCode::FORBIDDEN,
            "M_TERMS_NOT_SIGNED",
        );
        h.accept_terms(&token).await;
        let details = h.get("/hash_details", Some(&token)).await;
        assert_eq!(details.status, StatusCode::OK, "{}", details.text());
        let body = details.json();
        assert_eq!(body["algorithms"], json!(["sha256"]));
        let pepper = body["lookup_pepper"].as_str().unwrap();
        assert!(!pepper.is_empty());
        assert!(
            pepper.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{pepper}"
        );
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");

        let synapse = h
            .get(&format!("/hash_details?access_token={token}"), None)
            .await;
        assert_eq!(synapse.status, StatusCode::OK, "{}", synapse.text());
        assert_eq!(synapse.json(), body);
    }
}

/// With `allow_plaintext_lookup`, `/hash_details` offers `none` beside
/// `sha256`.
#[tokio::test]
async fn hash_details_offers_none_when_allowed() {
    for (db, dir) in backends().await {
        let mut config = test_config();
        config.allow_plaintext_lookup = true;
        let h = Harness::start(db, dir, config).await;
        let token = h.user("alice").await;
        let body = h.get("/hash_details", Some(&token)).await.json();
        assert_eq!(body["algorithms"], json!(["sha256", "none"]));
    }
}

/// Spec "POST /lookup" with `sha256` (spec 1.3): each hash of a bound
/// address maps to its mxid, keyed by the hash as sent; unbound addresses,
/// another medium, and addresses not in canonical form (lookups are
/// case-sensitive) are omitted.
#[tokio::test]
async fn lookup_maps_bound_addresses_to_mxids() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        // The pepper exists before the bindings: each bind indexes itself.
        let pepper = lookup_pepper(&h, &alice).await;
        bind_email(&h, &smtp, &alice, ALICE, "Alice@Example.org", "s1").await;
        bind_email(&h, &smtp, &bob, BOB, "bob@example.org", "s2").await;

        let alice_hash = sha256_lookup_hash("alice@example.org", "email", &pepper);
        let bob_hash = sha256_lookup_hash("bob@example.org", "email", &pepper);
        let addresses = vec![
            alice_hash.clone(),
            sha256_lookup_hash("carol@example.org", "email", &pepper),
            bob_hash.clone(),
            sha256_lookup_hash("Alice@Example.org", "email", &pepper),
            sha256_lookup_hash("alice@example.org", "msisdn", &pepper),
            sha256_lookup_hash("alice@example.org", "email", "another-pepper"),
            "not a hash at all".to_owned(),
        ];
        let response = lookup(&h, &alice, "sha256", &pepper, &addresses).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(
            response.json(),
            json!({"mappings": {alice_hash: ALICE, bob_hash: BOB}})
        );

        let none: Vec<String> = Vec::new();
        let empty = lookup(&h, &alice, "sha256", &pepper, &none).await;
        assert_eq!(empty.json(), json!({"mappings": {}}));
    }
}

/// Lookups find associations that were in the database before the first
/// pepper (imported, or bound before any `/hash_details`): the first
/// rotation indexes them all, in batches, so a large set maps in full.
#[tokio::test]
async fn the_first_pepper_indexes_existing_associations_in_bulk() {
    for (db, dir) in backends().await {
        let rows: Vec<(String, String, String)> = (0..1_200)
            .map(|i| {
                if i % 3 == 0 {
                    (
                        "msisdn".to_owned(),
                        format!("4477009{i:05}"),
                        format!("@phone{i}:hs.test"),
                    )
                } else {
                    (
                        "email".to_owned(),
                        format!("user{i}@example.org"),
                        format!("@user{i}:hs.test"),
                    )
                }
            })
            .collect();
        insert_associations(&db, &rows).await;
        let h = Harness::start(db.clone(), dir, test_config()).await;
        let token = h.user("alice").await;
        let pepper = lookup_pepper(&h, &token).await;

        let mut addresses: Vec<String> = rows
            .iter()
            .map(|(medium, address, _)| sha256_lookup_hash(address, medium, &pepper))
            .collect();
        addresses.push(sha256_lookup_hash("user1200@example.org", "email", &pepper));
        let response = lookup(&h, &token, "sha256", &pepper, &addresses).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let mappings = response.json()["mappings"].as_object().unwrap().clone();
        assert_eq!(mappings.len(), 1_200);
        for ((_, _, mxid), hash) in rows.iter().zip(&addresses) {
            assert_eq!(mappings[hash], mxid.as_str());
        }
    }
}

/// Spec "POST /lookup": a pepper other than the current one is 400
/// `M_INVALID_PEPPER`, carrying the current `lookup_pepper` (as Sydent
/// does) so the client can retry without looping.
#[tokio::test]
async fn a_stale_pepper_is_refused_with_the_current_one() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let token = h.user("alice").await;
        let pepper = lookup_pepper(&h, &token).await;
        let hash = vec![sha256_lookup_hash("alice@example.org", "email", "old")];
        let refused = lookup(&h, &token, "sha256", "old", &hash).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "M_INVALID_PEPPER");
        assert_eq!(refused.json()["lookup_pepper"], pepper.as_str());
        let empty = lookup(&h, &token, "sha256", "", &hash).await;
        assert_error(&empty, StatusCode::BAD_REQUEST, "M_INVALID_PEPPER");
    }
}

/// Spec 1.3 `none`: refused (400 `M_INVALID_PARAM`, as an unknown
/// algorithm is) unless `allow_plaintext_lookup`; then entries are
/// `"<address> <medium>"`, matched as given, and the pepper must still be
/// the current one.
#[tokio::test]
async fn plaintext_lookup_only_when_allowed() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db.clone(), None, |_| {}).await;
        let alice = h.user("alice").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        let pepper = lookup_pepper(&h, &alice).await;
        let plain = vec![
            "alice@example.org email".to_owned(),
            "Alice@example.org email".to_owned(),
            "bob@example.org email".to_owned(),
            "alice@example.org msisdn".to_owned(),
        ];
        assert_error(
            &lookup(&h, &alice, "none", &pepper, &plain).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
        assert_error(
            &lookup(&h, &alice, "md5", &pepper, &plain).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
        drop(h);

        let mut config = test_config();
        config.allow_plaintext_lookup = true;
        let h = Harness::start(db, dir, config).await;
        let response = lookup(&h, &alice, "none", &pepper, &plain).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(
            response.json(),
            json!({"mappings": {"alice@example.org email": ALICE}})
        );
        assert_error(
            &lookup(&h, &alice, "none", "stale", &plain).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PEPPER",
        );
        assert_error(
            &lookup(&h, &alice, "sha1", &pepper, &plain).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
}

/// `max_lookup_addresses` (Sydent's `address_lookup_limit`): more
/// addresses in one lookup is 400 `M_TOO_LARGE`; exactly the limit is
/// answered.
#[tokio::test]
async fn more_than_max_lookup_addresses_is_too_large() {
    for (db, dir) in backends().await {
        let mut config = test_config();
        config.max_lookup_addresses = 3;
        let h = Harness::start(db, dir, config).await;
        let token = h.user("alice").await;
        let pepper = lookup_pepper(&h, &token).await;
        let addresses: Vec<String> = (0..4)
            .map(|i| sha256_lookup_hash(&format!("u{i}@example.org"), "email", &pepper))
            .collect();
        assert_error(
            &lookup(&h, &token, "sha256", &pepper, &addresses).await,
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
        );
        let response = lookup(&h, &token, "sha256", &pepper, &addresses[..3]).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    }
}

/// Spec 1.2: `POST /lookup` needs a token (401 `M_UNAUTHORIZED`) and the
/// terms (403 `M_TERMS_NOT_SIGNED`).
#[tokio::test]
async fn lookup_requires_a_token_and_the_terms() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let alice = h.user("alice").await;
        let pepper = lookup_pepper(&h, &alice).await;
        let body = json!({"algorithm": "sha256", "pepper": pepper, "addresses": []});
        assert_error(
            &h.post("/lookup", None, body.clone()).await,
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
        );
        let bob = h.register("bob").await;
        assert_error(
            &h.post("/lookup", Some(&bob), body).await,
            StatusCode::FORBIDDEN,
            "M_TERMS_NOT_SIGNED",
        );
    }
}

/// Spec "POST /3pid/unbind": "future calls to /lookup for any of the
/// session's 3pids will not return the removed association" — hashed or
/// plain-text.
#[tokio::test]
async fn unbinding_removes_the_mapping() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |c| c.allow_plaintext_lookup = true).await;
        let alice = h.user("alice").await;
        let sid = bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        bind_email(&h, &smtp, &alice, ALICE, "alice@work.example", "s2").await;
        let threepids = [
            ("alice@example.org", "email"),
            ("alice@work.example", "email"),
        ];
        assert_eq!(
            lookup_mxids(&h, &alice, &threepids).await,
            [Some(ALICE.to_owned()), Some(ALICE.to_owned())]
        );

        let unbound = h
            .post(
                "/3pid/unbind",
                None,
                json!({
                    "sid": sid,
                    "client_secret": "s1",
                    "mxid": ALICE,
                    "threepid": {"medium": "email", "address": "alice@example.org"},
                }),
            )
            .await;
        assert_eq!(unbound.status, StatusCode::OK, "{}", unbound.text());
        assert_eq!(
            lookup_mxids(&h, &alice, &threepids).await,
            [None, Some(ALICE.to_owned())]
        );
        let pepper = lookup_pepper(&h, &alice).await;
        let plain = vec!["alice@example.org email".to_owned()];
        assert_eq!(
            lookup(&h, &alice, "none", &pepper, &plain).await.json(),
            json!({"mappings": {}})
        );
    }
}

/// Spec "POST /3pid/bind": binding an address someone else had bound
/// replaces the association (one binding per 3PID), and lookups map it to
/// the new user.
#[tokio::test]
async fn rebinding_an_address_maps_it_to_the_new_user() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db.clone(), dir, |_| {}).await;
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        lookup_pepper(&h, &alice).await;
        bind_email(&h, &smtp, &alice, ALICE, "shared@example.org", "s1").await;
        let threepid = [("shared@example.org", "email")];
        assert_eq!(
            lookup_mxids(&h, &alice, &threepid).await,
            [Some(ALICE.to_owned())]
        );
        bind_email(&h, &smtp, &bob, BOB, "shared@example.org", "s2").await;
        assert_eq!(
            lookup_mxids(&h, &alice, &threepid).await,
            [Some(BOB.to_owned())]
        );
    }
}

/// MSC2134 rotation: within the rotation period the pepper stays; in a
/// new epoch `rotate_pepper_if_due` makes a new one and the index is
/// rebuilt for it, so the old pepper is refused (400 `M_INVALID_PEPPER` naming the
/// new one) and the new one finds the same mappings, bound through the
/// API and inserted alike; later bindings are indexed under it.
#[tokio::test]
async fn rotation_refuses_the_old_pepper_and_keeps_the_mappings() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db.clone(), dir, |_| {}).await;
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        let every = h.state.config.pepper_rotation;
        let first = lookup_pepper(&h, &alice).await;
        assert_eq!(
            hearth_identity::rotate_pepper_if_due(&db, every)
                .await
                .unwrap(),
            first,
            "not due within the period"
        );
        bind_email(&h, &smtp, &alice, ALICE, "alice@example.org", "s1").await;
        insert_associations(
            &db,
            &[(
                "msisdn".to_owned(),
                "447700900123".to_owned(),
                "@carol:hs.test".to_owned(),
            )],
        )
        .await;

        age_current_pepper(&db).await;
        let second = hearth_identity::rotate_pepper_if_due(&db, every)
            .await
            .unwrap();
        assert_ne!(second, first);
        // A client that learnt the new pepper from another instance is
        // answered at once; `/hash_details` here follows within a second,
        // as instances agree on binds.
        let fresh = vec![sha256_lookup_hash("alice@example.org", "email", &second)];
        let answered = lookup(&h, &alice, "sha256", &second, &fresh).await;
        assert_eq!(answered.status, StatusCode::OK, "{}", answered.text());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(lookup_pepper(&h, &alice).await, second);
        assert_eq!(
            hearth_identity::rotate_pepper_if_due(&db, every)
                .await
                .unwrap(),
            second
        );

        let old = vec![sha256_lookup_hash("alice@example.org", "email", &first)];
        let refused = lookup(&h, &alice, "sha256", &first, &old).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "M_INVALID_PEPPER");
        assert_eq!(refused.json()["lookup_pepper"], second.as_str());

        bind_email(&h, &smtp, &bob, BOB, "bob@example.org", "s2").await;
        assert_eq!(
            lookup_mxids(
                &h,
                &alice,
                &[
                    ("alice@example.org", "email"),
                    ("447700900123", "msisdn"),
                    ("bob@example.org", "email"),
                ]
            )
            .await,
            [
                Some(ALICE.to_owned()),
                Some("@carol:hs.test".to_owned()),
                Some(BOB.to_owned())
            ]
        );
        assert_eq!(count(&db, "SELECT COUNT(*) FROM identity_peppers").await, 1);
    }
}

/// `rotate_pepper_if_due` is "safe to call from several instances at
/// once": concurrent calls on one database, on a fresh database and when
/// the pepper is due, all succeed and agree on one pepper, indexed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_agree_on_one_pepper() {
    for (db, _dir) in backends().await {
        insert_associations(
            &db,
            &(0..50)
                .map(|i| {
                    (
                        "email".to_owned(),
                        format!("u{i}@example.org"),
                        format!("@u{i}:hs.test"),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .await;
        let every = ConfigDuration::secs(3600);
        for round in 0..2 {
            if round == 1 {
                age_current_pepper(&db).await;
            }
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    let db = db.clone();
                    tokio::spawn(
                        async move { hearth_identity::rotate_pepper_if_due(&db, every).await },
                    )
                })
                .collect();
            let mut peppers = Vec::new();
            for call in calls {
                let pepper = call.await.unwrap().unwrap_or_else(|e| {
                    panic!(
                        "{:?}, round {round}: a concurrent rotation failed: {e:?}",
                        db.backend()
                    )
                });
                peppers.push(pepper);
            }
            assert!(
                peppers.iter().all(|p| p == &peppers[0]),
                "{:?}, round {round}: {peppers:?}",
                db.backend()
            );
            assert_eq!(count(&db, "SELECT COUNT(*) FROM identity_peppers").await, 1);
            let stored: String = sqlx::query("SELECT pepper FROM identity_peppers")
                .fetch_one(db.pool())
                .await
                .unwrap()
                .try_get("pepper")
                .unwrap();
            assert_eq!(stored, peppers[0]);
        }
    }
}

/// MSC2134 "servers SHOULD rotate": lengthening `pepper_rotation` must not
/// stop rotation. A pepper made two days ago by an instance rotating
/// every minute is overdue under a 24 h period and is replaced.
#[tokio::test]
async fn lengthening_the_rotation_period_still_rotates() {
    for (db, _dir) in backends().await {
        let made = now_ms() - 2 * DAY_MS;
        sqlx::query("INSERT INTO identity_peppers (epoch, pepper, created_ts) VALUES ($1, $2, $3)")
            .bind(made / 60_000)
            .bind("madeByAOneMinuteRotation")
            .bind(made)
            .execute(db.pool())
            .await
            .unwrap();
        let pepper = hearth_identity::rotate_pepper_if_due(&db, ConfigDuration::secs(24 * 3600))
            .await
            .unwrap();
        assert_ne!(
            pepper, "madeByAOneMinuteRotation",
            "a two-day-old pepper survives a 24 h rotation period"
        );
    }
}

/// Spec "Establishing associations": validating a 3PID publishes nothing;
/// only `/3pid/bind` makes it visible to lookups.
#[tokio::test]
async fn validating_without_binding_maps_nothing() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        validate_email(&h, &smtp, &alice, "alice@example.org", "s1").await;
        assert_eq!(
            lookup_mxids(&h, &alice, &[("alice@example.org", "email")]).await,
            [None]
        );
    }
}

/// Issue 11 item 10. The spec (appendix "3PID Types") case-folds email
/// addresses, so `Strauß@Example.com` is `strauss@example.com`, and that
/// canonical form is what is stored; Element hashes `toLowerCase()`
/// (`strauß@example.com`). A binding is found by both, on this instance
/// and on another one sharing the database, while the address as typed is
/// not (lookups are case-sensitive). When the same canonical address is
/// bound again from its ASCII spelling, the old lower-cased form stops
/// matching; an unbind removes every form.
#[tokio::test]
async fn non_ascii_addresses_are_found_hashed_both_ways() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db.clone(), dir, |_| {}).await;
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        let sid = bind_email(&h, &smtp, &alice, ALICE, "Strauß@Example.com", "cf1").await;
        let stored = h
            .get(
                &format!("/3pid/getValidated3pid?sid={sid}&client_secret=cf1"),
                Some(&alice),
            )
            .await
            .json();
        assert_eq!(stored["address"], "strauss@example.com");
        assert_eq!(
            smtp.mails()[0].header("X-RcptTo"),
            Some("strauss@example.com")
        );

        let forms = [
            ("strauss@example.com", "email"),
            ("strauß@example.com", "email"),
            ("Strauß@Example.com", "email"),
        ];
        let found = lookup_mxids(&h, &bob, &forms).await;
        let alice_id = Some(ALICE.to_owned());
        assert_eq!(found, [alice_id.clone(), alice_id.clone(), None]);

        // Another instance builds its index from the database.
        let other = Harness::start(db.clone(), None, test_config()).await;
        let carol = other.user("carol").await;
        assert_eq!(
            lookup_mxids(&other, &carol, &forms).await,
            [alice_id.clone(), alice_id, None]
        );

        // Bob binds the same canonical address, typed in ASCII.
        bind_email(&h, &smtp, &bob, BOB, "strauss@example.com", "cf2").await;
        let bob_id = Some(BOB.to_owned());
        assert_eq!(
            lookup_mxids(&h, &bob, &forms[..2]).await,
            [bob_id.clone(), None]
        );
        // The other instance follows within a second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(
            lookup_mxids(&other, &carol, &forms[..2]).await,
            [bob_id, None]
        );
    }
}
