//! `POST /_matrix/key/v2/query` and `GET /_matrix/key/v2/query/{serverName}`
//! (Server-Server API "Querying Keys Through Another Server"), in-process
//! through the notary's router, against origins that are real TLS servers in
//! this process (`hearth_testkit::federation`).

use axum::body::Body;
use hearth_core::canonical_json;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyRing, SigningKey, VerifyKey};
use hearth_core::signed_json::verify_json;
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use hearth_federation::client::Origin;
use hearth_federation::{FederationClient, FederationConfig, KeyStore};
use hearth_notary::{Config, Notary, Upstream, router};
use hearth_testkit::federation::{
    FakeDns, KeyServer, TestCa, bind, fake_dns, key_server, keys_object, name, signing_key, spawn,
};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const NOTARY: &str = "notary.test";

/// A notary named `NOTARY` whose federation client reaches `hosts` on
/// loopback through the test CA.
struct Harness {
    notary: Arc<Notary>,
    key: SigningKey,
    db: Database,
    _dir: tempfile::TempDir,
}

fn client(ca: &TestCa, dns: &Arc<FakeDns>) -> FederationClient {
    let config = FederationConfig {
        ca_file: Some(ca.path()),
        allow_private_addresses: true,
        request_timeout: hearth_core::config::Duration::secs(2),
        ..FederationConfig::default()
    };
    let origin = Origin {
        server_name: name(NOTARY),
        key: signing_key("notary", 9),
    };
    FederationClient::new(&config, dns.clone(), Some(origin)).unwrap()
}

impl Harness {
    async fn start(ca: &TestCa, hosts: &[&str], config: Config) -> Self {
        let (db, dir) = hearth_core::storage::testing::sqlite(&hearth_federation::SCHEMA).await;
        Self::on(ca, hosts, config, db, dir)
    }

    fn on(
        ca: &TestCa,
        hosts: &[&str],
        config: Config,
        db: Database,
        dir: tempfile::TempDir,
    ) -> Self {
        let key = signing_key("notary", 9);
        let store = KeyStore::new(client(ca, &fake_dns(hosts)), db.clone());
        let ring = KeyRing {
            current: vec![key.clone()],
            old: Vec::new(),
        };
        let notary = Notary::new(name(NOTARY), ring, config, store).unwrap();
        Self {
            notary: Arc::new(notary),
            key,
            db,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value, Vec<u8>) {
        let response = router(self.notary.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = canonical_json::parse(&bytes).unwrap_or(Value::Null);
        (status, json, bytes.to_vec())
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value, Vec<u8>) {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn post(&self, body: Value) -> (StatusCode, Value, Vec<u8>) {
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri("/_matrix/key/v2/query")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    /// Asks for `server`'s keys by POST with key ids, valid until `minimum`.
    async fn query(
        &self,
        server: &ServerName,
        key_ids: &[&str],
        minimum: Option<i64>,
    ) -> Vec<Value> {
        let criteria: serde_json::Map<String, Value> = key_ids
            .iter()
            .map(|id| {
                let c = minimum.map_or(json!({}), |m| json!({ "minimum_valid_until_ts": m }));
                ((*id).to_owned(), c)
            })
            .collect();
        let (status, body, _) = self
            .post(json!({ "server_keys": { server.as_str(): criteria } }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["server_keys"].as_array().unwrap().clone()
    }
}

/// The usual scene: a CA, an origin `origin.test:<port>` publishing key
/// `k1`, and a notary that reaches it.
async fn one_origin() -> (TestCa, SigningKey, ServerName, KeyServer, Harness) {
    let ca = TestCa::new();
    let key = signing_key("k1", 1);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    let h = Harness::start(&ca, &["origin.test"], Config::default()).await;
    (ca, key, origin, server, h)
}

/// Checks an answer carries the origin's signature by `origin_key` and the
/// notary's by `notary_key`, and nobody else's.
fn assert_signed_by(
    object: &Value,
    origin: &ServerName,
    origin_key: &SigningKey,
    notary_key: &SigningKey,
) {
    let origin_verify = origin_key.verify_key();
    verify_json(
        object,
        origin.as_str(),
        [(origin_key.key_id().as_str(), &origin_verify)],
    )
    .expect("the origin's self-signature is kept");
    let notary_verify = notary_key.verify_key();
    verify_json(
        object,
        NOTARY,
        [(notary_key.key_id().as_str(), &notary_verify)],
    )
    .expect("the notary signed it");
    let signers: Vec<&String> = object["signatures"].as_object().unwrap().keys().collect();
    assert_eq!(signers.len(), 2, "{signers:?}");
}

/// Spec: the notary returns the origin's keys with the origin's signature and
/// its own added; a second query within half the keys' lifetime is answered
/// from the cache, with the same bytes (signed once, not per request).
#[tokio::test]
async fn fetches_from_the_origin_signs_and_caches() {
    let (_ca, key, origin, server, h) = one_origin().await;

    let answer = h.query(&origin, &["ed25519:k1"], None).await;
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0]["server_name"], origin.as_str());
    assert_signed_by(&answer[0], &origin, &key, &h.key);

    let (_, _, first) = h.post(json!({"server_keys": {origin.as_str(): {}}})).await;
    let (_, _, second) = h.post(json!({"server_keys": {origin.as_str(): {}}})).await;
    assert_eq!(first, second);
    assert_eq!(server.fetches(), 1);

    // GET asks for every key of one server.
    let (status, body, _) = h.get(&format!("/_matrix/key/v2/query/{origin}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["server_keys"][0], answer[0]);
    assert_eq!(server.fetches(), 1);
}

/// Spec: "If no key IDs are given to be queried, the notary server should
/// query for all keys" — unlike Synapse, an all-keys query for a server
/// never seen fetches it; and "If no servers are given, the notary server
/// must return an empty server_keys array".
#[tokio::test]
async fn all_keys_queries_fetch_and_empty_queries_answer_empty() {
    let (_ca, _key, origin, server, h) = one_origin().await;
    let (status, body, _) = h.get(&format!("/_matrix/key/v2/query/{origin}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["server_keys"].as_array().unwrap().len(), 1);
    assert_eq!(server.fetches(), 1);

    let (status, body, _) = h.post(json!({"server_keys": {}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"server_keys": []}));
}

/// `minimum_valid_until_ts` beyond what the cache holds makes the notary ask
/// the origin again; keys that expired, or lie beyond the seven-day cap, are
/// still returned as the origin signed them (the requester decides).
#[tokio::test]
async fn minimum_valid_until_ts_refetches_and_expired_keys_are_returned_as_signed() {
    let (ca, key, origin, server, h) = one_origin().await;
    h.query(&origin, &["ed25519:k1"], None).await;

    let later = now_ms() + 2 * 3_600_000;
    server.publish(keys_object(
        origin.as_str(),
        &key,
        &key,
        now_ms() + 10 * 3_600_000,
    ));
    let answer = h.query(&origin, &["ed25519:k1"], Some(later)).await;
    assert_eq!(server.fetches(), 2);
    assert!(answer[0]["valid_until_ts"].as_i64().unwrap() >= later);

    let (expired, expired_server) = key_server(&ca, "expired.test", &key, &key).await;
    expired_server.publish(keys_object(expired.as_str(), &key, &key, 1_000));
    let h = Harness::start(&ca, &["expired.test"], Config::default()).await;
    let answer = h.query(&expired, &["ed25519:k1"], None).await;
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0]["valid_until_ts"], 1_000);
}

/// A key that does not verify is never returned: unsigned, signed by a key
/// not among its own, or naming another server.
#[tokio::test]
async fn unverified_keys_are_never_returned() {
    let ca = TestCa::new();
    let key = signing_key("k1", 1);
    let stranger = signing_key("k1", 2);
    let (origin, server) = key_server(&ca, "origin.test", &key, &stranger).await;
    let h = Harness::start(&ca, &["origin.test"], Config::default()).await;
    assert!(h.query(&origin, &["ed25519:k1"], None).await.is_empty());

    let mut unsigned = keys_object(origin.as_str(), &key, &key, now_ms() + 3_600_000);
    unsigned.as_object_mut().unwrap().remove("signatures");
    server.publish(unsigned);
    let h = Harness::start(&ca, &["origin.test"], Config::default()).await;
    assert!(h.query(&origin, &["ed25519:k1"], None).await.is_empty());

    server.publish(keys_object("other.test", &key, &key, now_ms() + 3_600_000));
    let h = Harness::start(&ca, &["origin.test"], Config::default()).await;
    assert!(h.query(&origin, &["ed25519:k1"], None).await.is_empty());
}

/// A retired key in `old_verify_keys` answers a query for its id from the
/// cache; a key id the origin does not list is not refetched at once.
#[tokio::test]
async fn old_verify_keys_and_unknown_key_ids_are_answered_from_the_cache() {
    let ca = TestCa::new();
    let key = signing_key("k2", 1);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    let old = signing_key("k1", 3);
    let mut object = json!({
        "server_name": origin.as_str(),
        "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
        "old_verify_keys": { old.key_id(): { "key": old.public_key_base64(), "expired_ts": 1_000 } },
        "valid_until_ts": now_ms() + 3_600_000,
    });
    hearth_core::signed_json::sign_json(&mut object, origin.as_str(), &key).unwrap();
    server.publish(object);
    let h = Harness::start(&ca, &["origin.test"], Config::default()).await;
    let answer = h.query(&origin, &["ed25519:k2"], None).await;
    assert_eq!(
        answer[0]["old_verify_keys"]["ed25519:k1"]["expired_ts"],
        1_000
    );
    h.query(&origin, &["ed25519:k1"], None).await;
    h.query(&origin, &["ed25519:nope"], None).await;
    assert_eq!(server.fetches(), 1);
}

/// Bounded queries: too many servers or key ids is 413 `M_TOO_LARGE`; an
/// invalid server name is 400 `M_INVALID_PARAM`; a body without
/// `server_keys` is 400 `M_BAD_JSON`.
#[tokio::test]
async fn queries_are_bounded_and_checked() {
    let ca = TestCa::new();
    let config = Config {
        max_servers_per_query: 2,
        max_key_ids_per_server: 2,
        ..Config::default()
    };
    let h = Harness::start(&ca, &[], config).await;
    let (status, body, _) = h
        .post(json!({"server_keys": {"a.test": {}, "b.test": {}, "c.test": {}}}))
        .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("M_TOO_LARGE"))
    );
    let (status, body, _) = h
        .post(
            json!({"server_keys": {"a.test": {"ed25519:1": {}, "ed25519:2": {}, "ed25519:3": {}}}}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("M_TOO_LARGE"))
    );
    let (status, body, _) = h.post(json!({"server_keys": {"bad name": {}}})).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
    let (status, body, _) = h.post(json!({"servers": {}})).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_BAD_JSON"))
    );
    let (status, body, _) = h
        .send(
            Request::get("/_matrix/key/v2/query/a.test?minimum_valid_until_ts=soon")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
}

/// Concurrent queries for one server share one fetch (single-flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_share_one_fetch() {
    let ca = TestCa::new();
    let key = signing_key("k1", 1);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    server.slow_down(Duration::from_millis(300));
    let h = Arc::new(Harness::start(&ca, &["origin.test"], Config::default()).await);
    let queries: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            let origin = origin.clone();
            tokio::spawn(async move { h.query(&origin, &["ed25519:k1"], None).await })
        })
        .collect();
    for query in queries {
        assert_eq!(query.await.unwrap().len(), 1);
    }
    assert_eq!(server.fetches(), 1);
}

/// An unreachable origin gets a backoff, not a fetch per request; the last
/// keys held are served however stale ("notary servers should continue to
/// return the last response they received").
#[tokio::test]
async fn unreachable_origins_back_off_and_stale_keys_are_served() {
    let (ca, key, origin, server, h) = one_origin().await;
    let fresh = h.query(&origin, &["ed25519:k1"], None).await;
    server.go_down();
    let beyond = now_ms() + 30 * 24 * 3_600_000;
    for _ in 0..3 {
        let stale = h.query(&origin, &["ed25519:k1"], Some(beyond)).await;
        assert_eq!(stale, fresh);
    }
    assert_eq!(server.fetches(), 2, "one fetch, then backoff");

    let (never, never_server) = key_server(&ca, "never.test", &key, &key).await;
    never_server.go_down();
    let h = Harness::start(&ca, &["never.test"], Config::default()).await;
    assert!(h.query(&never, &["ed25519:k1"], None).await.is_empty());
    assert!(h.query(&never, &["ed25519:k1"], None).await.is_empty());
    assert_eq!(never_server.fetches(), 1);
}

/// Servers asked about recently are fetched again before their entry passes
/// half its life, so the homeserver's next query finds it fresh; servers
/// nobody asked about within `refresh_window` are left alone.
#[tokio::test]
async fn recently_asked_servers_are_refreshed_ahead_of_expiry() {
    let (_ca, _key, origin, server, h) = one_origin().await;
    h.query(&origin, &["ed25519:k1"], None).await;
    let now = now_ms();
    assert_eq!(
        hearth_notary::refresh_due(&h.notary, now).await,
        0,
        "not due yet"
    );
    assert_eq!(server.fetches(), 1);
    // The origin's keys last an hour: past half an hour they are due.
    let later = now + 40 * 60_000;
    assert_eq!(hearth_notary::refresh_due(&h.notary, later).await, 1);
    assert_eq!(server.fetches(), 2);
    // Asked about more than `refresh_window` (an hour) ago: left alone.
    let much_later = now + 2 * 3_600_000;
    assert_eq!(hearth_notary::refresh_due(&h.notary, much_later).await, 0);
    assert_eq!(server.fetches(), 2);
}

/// The cache is the database: a new notary on the same database (a restart,
/// or another instance) answers without fetching.
#[tokio::test]
async fn a_restart_keeps_the_cache() {
    let (ca, _key, origin, server, h) = one_origin().await;
    let first = h.query(&origin, &["ed25519:k1"], None).await;
    let Harness { db, _dir, .. } = h;
    let restarted = Harness::on(&ca, &["origin.test"], Config::default(), db, _dir);
    assert_eq!(restarted.query(&origin, &["ed25519:k1"], None).await, first);
    assert_eq!(server.fetches(), 1);
}

/// A query for the notary's own name is answered from its own keys.
#[tokio::test]
async fn its_own_name_is_answered_from_its_own_keys() {
    let ca = TestCa::new();
    let h = Harness::start(&ca, &[], Config::default()).await;
    let answer = h.query(&name(NOTARY), &[], None).await;
    assert_eq!(answer.len(), 1);
    let verify = h.key.verify_key();
    verify_json(&answer[0], NOTARY, [(h.key.key_id().as_str(), &verify)]).unwrap();
    assert_eq!(
        answer[0]["verify_keys"][h.key.key_id()]["key"],
        h.key.public_key_base64()
    );
}

/// Only when the origin cannot be reached are upstream notaries asked; their
/// answer counts only when signed by a configured key, and the origin's
/// signature is checked too. Their signatures are not passed on.
#[tokio::test]
async fn upstream_notaries_are_asked_only_for_unreachable_origins() {
    let ca = TestCa::new();
    let key = signing_key("k1", 1);
    let (origin, origin_server) = key_server(&ca, "origin.test", &key, &key).await;

    // The upstream: another notary over TLS that has the origin's keys.
    let (tcp, port) = bind().await;
    let upstream_name = name(&format!("upstream.test:{port}"));
    let upstream_key = SigningKey::generate();
    let (db, dir) = hearth_core::storage::testing::sqlite(&hearth_federation::SCHEMA).await;
    let upstream = Arc::new(
        Notary::new(
            upstream_name.clone(),
            KeyRing {
                current: vec![upstream_key.clone()],
                old: Vec::new(),
            },
            Config::default(),
            KeyStore::new(client(&ca, &fake_dns(&["origin.test"])), db),
        )
        .unwrap(),
    );
    spawn(ca.listener(tcp, "upstream.test"), router(upstream));
    let _upstream_db = dir;

    let configured = |verify: &SigningKey| Config {
        upstream: vec![Upstream {
            server_name: upstream_name.to_string(),
            verify_keys: BTreeMap::from([(verify.key_id(), verify.public_key_base64())]),
        }],
        ..Config::default()
    };
    // The notary itself cannot resolve origin.test: only the upstream can.
    let h = Harness::start(&ca, &["upstream.test"], configured(&upstream_key)).await;
    let answer = h.query(&origin, &["ed25519:k1"], None).await;
    assert_eq!(answer.len(), 1);
    assert_signed_by(&answer[0], &origin, &key, &h.key);
    assert_eq!(origin_server.fetches(), 1, "fetched once, by the upstream");

    // An upstream whose signature does not match the configured key is not
    // trusted.
    let wrong = SigningKey::generate();
    let h = Harness::start(&ca, &["upstream.test"], configured(&wrong)).await;
    assert!(h.query(&origin, &["ed25519:k1"], None).await.is_empty());

    // A reachable origin is asked directly, never the upstream.
    let h = Harness::start(
        &ca,
        &["origin.test", "upstream.test"],
        configured(&upstream_key),
    )
    .await;
    h.query(&origin, &["ed25519:k2"], None).await;
    assert_eq!(origin_server.fetches(), 2);
}

/// The signature check the answer's consumers rely on: it is over the
/// object exactly as served, with `VerifyKey` from its own listing.
#[test]
fn verify_key_round_trips() {
    let key = SigningKey::generate();
    assert_eq!(
        VerifyKey::from_base64(&key.public_key_base64()).unwrap(),
        key.verify_key()
    );
}
