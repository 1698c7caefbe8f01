//! Moving from Sydent (`hearth_identity::import_sydent`): a SQLite file
//! with Sydent's schema (as its `sqlitedb.py` migrations leave it at
//! schema v8: bindings with a nullable `mxid` and `lookup_hash`, invites
//! with `valid_until_ts`, ephemeral keys, plus the tables that are not
//! imported) is built here row by row, imported into every database
//! backend, and checked through the router. A separate end-to-end test
//! imports a database a real Sydent made; this one pins the mapping.

mod common;

use common::ConfigureSmtp;

use common::{
    Harness, SmtpCapture, backends, bind_email, lookup_mxids, lookup_pepper, test_config,
};
use hearth_core::keys::{KeyVersion, SigningKey};
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use hearth_identity::{SydentImport, import_sydent};
use http::StatusCode;
use serde_json::{Value, json};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use std::path::{Path, PathBuf};

const HOUR_MS: i64 = 3600 * 1000;
/// Sydent signs associations valid for 100 years.
const CENTURY_MS: i64 = 100 * 365 * 24 * HOUR_MS;
const BOUND_TS: i64 = 1_600_000_000_000;

/// Sydent's tables at schema v8 (`sydent/db/*.sql` then the migrations
/// in `sqlitedb.py`).
const SYDENT_SCHEMA: &[&str] = &[
    "CREATE TABLE local_threepid_associations (id integer primary key autoincrement, \
     medium varchar(16) not null, address varchar(256) not null, mxid varchar(256), \
     ts integer, notBefore bigint, notAfter bigint, lookup_hash VARCHAR(256))",
    "CREATE UNIQUE INDEX local_threepid_medium_address on local_threepid_associations(medium, address)",
    "CREATE INDEX lookup_hash_medium on local_threepid_associations (lookup_hash, medium)",
    "CREATE TABLE global_threepid_associations (id integer primary key autoincrement, \
     medium varchar(16) not null, address varchar(256) not null, mxid varchar(256) not null, \
     ts integer not null, notBefore bigint not null, notAfter integer not null, \
     originServer varchar(255) not null, originId integer not null, sgAssoc text not null, \
     lookup_hash VARCHAR(256))",
    "CREATE TABLE invite_tokens (id integer primary key, medium varchar(16) not null, \
     address varchar(256) not null, room_id varchar(256) not null, sender varchar(256) not null, \
     token varchar(256) not null, received_ts bigint, sent_ts bigint, origin_id integer, \
     origin_server text, valid_until_ts INTEGER)",
    "CREATE INDEX invite_token_medium_address on invite_tokens(medium, address)",
    "CREATE TABLE ephemeral_public_keys(id integer primary key, public_key varchar(256) not null, \
     verify_count bigint default 0, persistence_ts bigint, origin_server text, origin_id integer)",
    "CREATE UNIQUE INDEX ephemeral_public_keys_index on ephemeral_public_keys(public_key)",
    "CREATE TABLE hashing_metadata (id integer primary key, lookup_pepper varchar(256))",
    "CREATE TABLE accounts(user_id TEXT NOT NULL PRIMARY KEY, created_ts BIGINT NOT NULL, consent_version TEXT)",
    "CREATE TABLE tokens(token TEXT NOT NULL PRIMARY KEY, user_id TEXT NOT NULL)",
    "CREATE TABLE accepted_terms_urls(user_id TEXT NOT NULL, url TEXT NOT NULL)",
    "PRAGMA user_version = 8",
];

/// A Sydent database file being written.
struct Sydent {
    pool: AnyPool,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sydent {
    async fn create() -> Self {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sydent.db");
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        for statement in SYDENT_SCHEMA {
            sqlx::query(*statement).execute(&pool).await.unwrap();
        }
        Self {
            pool,
            path,
            _dir: dir,
        }
    }

    /// A row of `local_threepid_associations`; `mxid: None` is how older
    /// Sydent recorded a removed binding (timestamps nulled too).
    async fn binding(&self, medium: &str, address: &str, mxid: Option<&str>, ts: i64) {
        let (not_before, not_after) = match mxid {
            Some(_) => (Some(ts), Some(ts + CENTURY_MS)),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore, notAfter, lookup_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(medium)
        .bind(address)
        .bind(mxid)
        .bind(ts)
        .bind(not_before)
        .bind(not_after)
        .bind("c3lkZW50LWhhc2g")
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn invite(
        &self,
        address: &str,
        token: &str,
        received_ts: i64,
        valid_until_ts: Option<i64>,
    ) {
        sqlx::query(
            "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts, sent_ts, valid_until_ts)
             VALUES ('email', $1, '!room:hs.test', '@alice:hs.test', $2, $3, $3, $4)",
        )
        .bind(address)
        .bind(token)
        .bind(received_ts)
        .bind(valid_until_ts)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn ephemeral_key(&self, public_key: &str, persistence_ts: i64) {
        sqlx::query(
            "INSERT INTO ephemeral_public_keys (public_key, verify_count, persistence_ts) VALUES ($1, 2, $2)",
        )
        .bind(public_key)
        .bind(persistence_ts)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn execute(&self, sql: &'static str) {
        sqlx::query(sql).execute(&self.pool).await.unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Two ephemeral keys as Sydent hands them out (URL-safe unpadded
/// base64), chosen so their standard forms differ.
fn ephemeral_keys() -> Vec<(String, String)> {
    (0u8..=255)
        .map(|seed| {
            SigningKey::from_seed(KeyVersion::parse("0").unwrap(), [seed; 32]).public_key_base64()
        })
        .filter(|standard| standard.contains(['+', '/']))
        .take(2)
        .map(|standard| {
            let url_safe = standard.replace('+', "-").replace('/', "_");
            (url_safe, standard)
        })
        .collect()
}

/// The Sydent database of most tests: live bindings (one with an
/// upper-case email, one phone), a removed binding, two unusable rows,
/// invites (pending, pending with a deadline, expired, for bound
/// addresses), two ephemeral keys, and rows in tables not imported.
async fn sample_sydent() -> Sydent {
    let now = now_ms();
    let s = Sydent::create().await;
    s.binding(
        "email",
        "alice@example.org",
        Some("@alice:hs.test"),
        BOUND_TS,
    )
    .await;
    s.binding(
        "email",
        "Bob@Example.ORG",
        Some("@bob:hs.test"),
        BOUND_TS + 1,
    )
    .await;
    s.binding(
        "msisdn",
        "447700900123",
        Some("@carol:hs.test"),
        BOUND_TS + 2,
    )
    .await;
    s.binding("email", "deleted@example.org", None, BOUND_TS + 3)
        .await;
    s.binding("email", "not an email", Some("@dave:hs.test"), BOUND_TS + 4)
        .await;
    s.binding("email", "erin@example.org", Some("erin"), BOUND_TS + 5)
        .await;

    s.invite("Invitee@Example.org", "tok-pending", now - HOUR_MS, None)
        .await;
    s.invite(
        "later@example.org",
        "tok-later",
        now - HOUR_MS,
        Some(now + HOUR_MS),
    )
    .await;
    s.invite(
        "expired@example.org",
        "tok-expired",
        now - 48 * HOUR_MS,
        Some(now - HOUR_MS),
    )
    .await;
    s.invite("BOB@example.org", "tok-bound", now - HOUR_MS, None)
        .await;
    s.invite("alice@example.org", "tok-bound-too", now - HOUR_MS, None)
        .await;

    for (url_safe, _) in ephemeral_keys() {
        s.ephemeral_key(&url_safe, now - HOUR_MS).await;
    }

    s.execute(
        "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore, notAfter, originServer, originId, sgAssoc)
         VALUES ('email', 'peer-only@example.org', '@frank:peer.test', 1, 1, 2, 'peer.test', 7, '{}')",
    )
    .await;
    s.execute("INSERT INTO hashing_metadata (id, lookup_pepper) VALUES (1, 'sydentPepper')")
        .await;
    s.execute("INSERT INTO accounts (user_id, created_ts, consent_version) VALUES ('@alice:hs.test', 1, '1')")
        .await;
    s.execute("INSERT INTO tokens (token, user_id) VALUES ('sydent-token', '@alice:hs.test')")
        .await;
    s
}

async fn rows(db: &Database, sql: &str, columns: &[&str]) -> Vec<Vec<Value>> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| {
                    row.try_get::<String, _>(*c)
                        .map(Value::from)
                        .or_else(|_| row.try_get::<i64, _>(*c).map(Value::from))
                        .unwrap_or_else(|e| panic!("{c}: {e}"))
                })
                .collect()
        })
        .collect()
}

async fn associations(db: &Database) -> Vec<Vec<Value>> {
    rows(
        db,
        "SELECT medium, address, mxid, ts, not_before, not_after FROM identity_associations ORDER BY medium, address",
        &["medium", "address", "mxid", "ts", "not_before", "not_after"],
    )
    .await
}

async fn invites(db: &Database) -> Vec<Vec<Value>> {
    rows(
        db,
        "SELECT token, medium, address, room_id, sender, created_ts FROM identity_invites ORDER BY token",
        &["token", "medium", "address", "room_id", "sender", "created_ts"],
    )
    .await
}

async fn keys(db: &Database) -> Vec<Vec<Value>> {
    rows(
        db,
        "SELECT public_key FROM identity_ephemeral_keys ORDER BY public_key",
        &["public_key"],
    )
    .await
}

/// What the import brings over: live local bindings (email addresses
/// case-folded as MSC2265 and Sydent's `casefold_db.py` do, timestamps
/// kept), not removed ones (`mxid` NULL) nor unusable rows (counted as
/// skipped); invites still valid for addresses not yet bound; every
/// ephemeral key, in the standard alphabet. Replicated
/// (`global_threepid_associations`), hashing, account and token rows are
/// not imported.
#[tokio::test]
async fn import_brings_over_bindings_invites_and_keys() {
    for (db, _dir) in backends().await {
        let sydent = sample_sydent().await;
        let report = import_sydent(&db, sydent.path()).await.unwrap();
        assert_eq!(
            report,
            SydentImport {
                associations: 3,
                invites: 2,
                ephemeral_keys: 2,
                skipped: 2,
            }
        );
        let century = |ts: i64| json!(ts + CENTURY_MS);
        assert_eq!(
            associations(&db).await,
            [
                vec![
                    json!("email"),
                    json!("alice@example.org"),
                    json!("@alice:hs.test"),
                    json!(BOUND_TS),
                    json!(BOUND_TS),
                    century(BOUND_TS),
                ],
                vec![
                    json!("email"),
                    json!("bob@example.org"),
                    json!("@bob:hs.test"),
                    json!(BOUND_TS + 1),
                    json!(BOUND_TS + 1),
                    century(BOUND_TS + 1),
                ],
                vec![
                    json!("msisdn"),
                    json!("447700900123"),
                    json!("@carol:hs.test"),
                    json!(BOUND_TS + 2),
                    json!(BOUND_TS + 2),
                    century(BOUND_TS + 2),
                ],
            ]
        );
        let invites = invites(&db).await;
        let summary: Vec<(&str, &str)> = invites
            .iter()
            .map(|r| (r[0].as_str().unwrap(), r[2].as_str().unwrap()))
            .collect();
        assert_eq!(
            summary,
            [
                ("tok-later", "later@example.org"),
                ("tok-pending", "invitee@example.org"),
            ]
        );
        for invite in &invites {
            assert_eq!(invite[1], "email");
            assert_eq!(invite[3], "!room:hs.test");
            assert_eq!(invite[4], "@alice:hs.test");
            assert!(invite[5].as_i64().unwrap() < now_ms() - HOUR_MS / 2);
        }
        let mut expected_keys: Vec<Vec<Value>> = ephemeral_keys()
            .into_iter()
            .map(|(_, standard)| vec![json!(standard)])
            .collect();
        expected_keys.sort_by_key(|k| k[0].as_str().unwrap().to_owned());
        assert_eq!(keys(&db).await, expected_keys);

        let missing = import_sydent(&db, Path::new("/nonexistent/sydent.db")).await;
        assert!(missing.is_err());
    }
}

/// After an import, lookups (spec "Association lookup") find the imported
/// bindings under their canonical addresses, whether the pepper existed
/// before the import or not; removed, replicated-only and non-canonical
/// addresses find nothing. `GET /pubkey/ephemeral/isvalid` accepts the
/// imported invite keys in either alphabet, as Synapse checks
/// `key_validity_url` for invites Sydent stored. Sydent's tokens are not
/// carried over: clients register again.
#[tokio::test]
async fn imported_bindings_and_keys_are_served() {
    for (db, dir) in backends().await {
        let h = Harness::start(db.clone(), dir, test_config()).await;
        let token = h.user("zoe").await;
        let pepper_before = lookup_pepper(&h, &token).await;
        assert_ne!(pepper_before, "sydentPepper");
        let sydent = sample_sydent().await;
        import_sydent(&db, sydent.path()).await.unwrap();
        // A running instance picks up changes made elsewhere (here, the
        // import) within a second.
        wait_for_binding(&h, &token, ("alice@example.org", "email")).await;

        assert_eq!(
            lookup_mxids(
                &h,
                &token,
                &[
                    ("alice@example.org", "email"),
                    ("bob@example.org", "email"),
                    ("447700900123", "msisdn"),
                    ("Bob@Example.ORG", "email"),
                    ("deleted@example.org", "email"),
                    ("peer-only@example.org", "email"),
                    ("erin@example.org", "email"),
                ],
            )
            .await,
            [
                Some("@alice:hs.test".to_owned()),
                Some("@bob:hs.test".to_owned()),
                Some("@carol:hs.test".to_owned()),
                None,
                None,
                None,
                None,
            ]
        );
        assert_eq!(lookup_pepper(&h, &token).await, pepper_before);

        for (url_safe, standard) in ephemeral_keys() {
            for form in [url_safe, standard] {
                let encoded = hearth_core::http::percent_encode(&form);
                let response = h
                    .get(
                        &format!("/pubkey/ephemeral/isvalid?public_key={encoded}"),
                        None,
                    )
                    .await;
                assert_eq!(response.status, StatusCode::OK, "{}", response.text());
                assert_eq!(response.json(), json!({"valid": true}), "{form}");
            }
        }
        let other = SigningKey::generate().public_key_base64();
        let response = h
            .get(
                &format!(
                    "/pubkey/ephemeral/isvalid?public_key={}",
                    hearth_core::http::percent_encode(&other)
                ),
                None,
            )
            .await;
        assert_eq!(response.json(), json!({"valid": false}));

        let sydent_token = h.get("/account", Some("sydent-token")).await;
        assert_eq!(sydent_token.status, StatusCode::UNAUTHORIZED);
        assert_eq!(sydent_token.errcode(), "M_UNAUTHORIZED");
    }
}

/// "The import can be run again": a second run changes nothing (same
/// bindings, invites, keys and lookup index) and brings no invite or key
/// twice.
#[tokio::test]
async fn importing_again_changes_nothing() {
    for (db, dir) in backends().await {
        let sydent = sample_sydent().await;
        import_sydent(&db, sydent.path()).await.unwrap();
        let h = Harness::start(db.clone(), dir, test_config()).await;
        let token = h.user("zoe").await;
        let threepids = [
            ("alice@example.org", "email"),
            ("bob@example.org", "email"),
            ("447700900123", "msisdn"),
        ];
        let found = lookup_mxids(&h, &token, &threepids).await;
        assert!(found.iter().all(Option::is_some), "{found:?}");
        let before = (associations(&db).await, invites(&db).await, keys(&db).await);

        let again = import_sydent(&db, sydent.path()).await.unwrap();
        assert_eq!((again.invites, again.ephemeral_keys), (0, 0), "{again:?}");
        assert_eq!(
            (associations(&db).await, invites(&db).await, keys(&db).await),
            before
        );
        assert_eq!(lookup_mxids(&h, &token, &threepids).await, found);
    }
}

/// Sydent before MSC2265 could hold one address in two cases, bound to
/// different users; its `casefold_db.py` keeps the most recent binding,
/// and so does the import (whatever the row order).
#[tokio::test]
async fn case_duplicates_keep_the_most_recent_binding() {
    for (db, _dir) in backends().await {
        let sydent = Sydent::create().await;
        sydent
            .binding(
                "email",
                "dup@example.org",
                Some("@new:hs.test"),
                BOUND_TS + 10,
            )
            .await;
        sydent
            .binding("email", "DUP@Example.org", Some("@old:hs.test"), BOUND_TS)
            .await;
        sydent
            .binding(
                "email",
                "Other@Example.org",
                Some("@old:hs.test"),
                BOUND_TS + 20,
            )
            .await;
        sydent
            .binding(
                "email",
                "other@example.org",
                Some("@new:hs.test"),
                BOUND_TS + 30,
            )
            .await;
        import_sydent(&db, sydent.path()).await.unwrap();
        let bound: Vec<(String, String)> = associations(&db)
            .await
            .into_iter()
            .map(|r| {
                (
                    r[1].as_str().unwrap().to_owned(),
                    r[2].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            bound,
            [
                ("dup@example.org".to_owned(), "@new:hs.test".to_owned()),
                ("other@example.org".to_owned(), "@new:hs.test".to_owned()),
            ]
        );
    }
}

/// Imported invites are live: when the invitee binds the address
/// (`/3pid/bind`), the `onbind` callback for Sydent's invite token is
/// queued for the invitee's homeserver (Server-Server API "Third-party
/// invites") and the pending invite is gone.
#[tokio::test]
async fn an_imported_invite_is_delivered_on_bind() {
    for (db, dir) in backends().await {
        let sydent = sample_sydent().await;
        import_sydent(&db, sydent.path()).await.unwrap();
        let smtp = SmtpCapture::start();
        let mut config = test_config();
        smtp.configure(&mut config);
        let h = Harness::start(db.clone(), dir, config).await;
        let invitee = h.user("invitee").await;
        bind_email(
            &h,
            &smtp,
            &invitee,
            "@invitee:hs.test",
            "invitee@example.org",
            "s1",
        )
        .await;
        let outbox = rows(
            &db,
            "SELECT destination, body FROM identity_onbind_outbox",
            &["destination", "body"],
        )
        .await;
        assert_eq!(outbox.len(), 1, "{outbox:?}");
        assert_eq!(outbox[0][0], "hs.test");
        let body: Value = serde_json::from_str(outbox[0][1].as_str().unwrap()).unwrap();
        assert_eq!(body["invites"][0]["token"], "tok-pending");
        assert_eq!(body["invites"][0]["room_id"], "!room:hs.test");
        assert_eq!(body["invites"][0]["sender"], "@alice:hs.test");
        let left: Vec<String> = invites(&db)
            .await
            .into_iter()
            .map(|r| r[0].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(left, ["tok-later"]);
    }
}

/// Polls lookups until `threepid` is found, for at most five seconds.
async fn wait_for_binding(h: &Harness, token: &str, threepid: (&str, &str)) {
    for _ in 0..50 {
        if lookup_mxids(h, token, &[threepid]).await[0].is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{threepid:?} was not found within five seconds");
}
