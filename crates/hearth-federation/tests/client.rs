//! The federation client against real servers in this process: TLS servers
//! on 127.0.0.1 with certificates from a throwaway CA, and a fake DNS that
//! sends test names there. Nothing leaves the machine.
//!
//! `.well-known` delegation needs a server on port 443 and is not covered
//! here; the resolution rules are unit-tested in `resolve.rs`.

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use hearth_core::config::{ByteSize, Duration as ConfigDuration};
use hearth_core::ids::ServerName;
use hearth_core::time::now_ms;
use hearth_federation::client::Origin;
use hearth_federation::config::ServerOverride;
use hearth_federation::connect::ConnectError;
use hearth_federation::keys::KeyFetchError;
use hearth_federation::xmatrix::{Destination, XMatrixError, sign_request};
use hearth_federation::{FederationClient, FederationConfig, FederationError, KeyStore};
use serde_json::{Value, json};
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use hearth_testkit::federation::*;

// ---------------------------------------------------------------------------
// Helpers: clients (the CA, servers and DNS are `hearth_testkit::federation`).

fn config(ca: Option<&TestCa>, allow_private_addresses: bool) -> FederationConfig {
    FederationConfig {
        ca_file: ca.map(TestCa::path),
        allow_private_addresses,
        ..FederationConfig::default()
    }
}

fn client_as(
    config: &FederationConfig,
    dns: &Arc<FakeDns>,
    origin: Option<Origin>,
) -> FederationClient {
    FederationClient::new(config, dns.clone(), origin).unwrap()
}

fn client(config: &FederationConfig, dns: &Arc<FakeDns>) -> FederationClient {
    let origin = Origin {
        server_name: name("client.test"),
        key: signing_key("client", 1),
    };
    client_as(config, dns, Some(origin))
}

/// The connection-level error inside a federation error.
fn connect_error(result: Result<Value, FederationError>) -> ConnectError {
    match result {
        Err(FederationError::Connect { cause, .. }) => cause,
        other => panic!("expected a connection error, got {other:?}"),
    }
}

/// The rustls error behind a TLS failure.
fn tls_cause(error: &ConnectError) -> &rustls::Error {
    match error {
        ConnectError::Tls { cause, .. } => cause
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {cause:?}")),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

/// Answers any request with what it saw: method, request target, `Host`.
fn echo_router() -> Router {
    async fn echo(method: Method, OriginalUri(uri): OriginalUri, headers: HeaderMap) -> Response {
        let host = headers
            .get(http::header::HOST)
            .map(|h| h.to_str().unwrap().to_owned());
        axum::Json(json!({"method": method.as_str(), "uri": uri.to_string(), "host": host}))
            .into_response()
    }
    Router::new().fallback(any(echo))
}

// ---------------------------------------------------------------------------
// TLS, Host and addresses.

/// Server-Server API, "Resolving server names" step 2 (explicit port: no
/// lookup but the hostname's address, `Host` is `hostname:port`) and "TLS"
/// (the certificate must be valid for the hostname, trusted through an
/// extra CA file).
#[tokio::test]
async fn explicit_port_sends_host_with_port_over_verified_tls() {
    let ca = TestCa::new();
    let port = tls_server(&ca, "hs.test", echo_router()).await;
    let dns = fake_dns(&["hs.test"]);
    let client = client(&config(Some(&ca), true), &dns);

    let server = name(&format!("hs.test:{port}"));
    let answer = client
        .get_json(&server, "/_matrix/federation/v1/version?x=1")
        .await
        .unwrap();
    assert_eq!(
        answer,
        json!({
            "method": "GET",
            "uri": "/_matrix/federation/v1/version?x=1",
            "host": format!("hs.test:{port}"),
        })
    );
    // An explicit port means no SRV lookup, only the address of the host.
    assert_eq!(dns.asked(), vec!["hs.test".to_owned()]);
}

/// Requests to one destination reuse an idle connection: one TCP and TLS
/// handshake for many requests.
#[tokio::test]
async fn connections_to_one_destination_are_reused() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    let ca = TestCa::new();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    let router = Router::new().route(
        "/peer",
        get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(peer);
                axum::Json(json!({}))
            }
        }),
    );
    let port = tls_server(&ca, "hs.test", router).await;
    let client = client(&config(Some(&ca), true), &fake_dns(&["hs.test"]));
    let server = name(&format!("hs.test:{port}"));
    for _ in 0..5 {
        client.get_json(&server, "/peer").await.unwrap();
        // Give the connection a moment to be ready again, as between
        // real requests.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peers = peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 5);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one connection served every request: {peers:?}"
    );
}

/// Server-Server API, "TLS": the certificate must be valid for the server's
/// hostname; one for another name (same trusted CA) is refused.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    let port = tls_server(&ca, "other.test", echo_router()).await;
    let dns = fake_dns(&["hs.test"]);
    let client = client(&config(Some(&ca), true), &dns);

    let error = connect_error(
        client
            .get_json(&name(&format!("hs.test:{port}")), "/")
            .await,
    );
    assert!(
        matches!(
            tls_cause(&error),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{error:?}"
    );
}

/// Server-Server API, "TLS": for an IP literal server name the certificate
/// is checked against its IP address entries.
#[tokio::test]
async fn an_ip_literal_is_checked_against_the_certificate_ip() {
    let ca = TestCa::new();
    let good = tls_server(&ca, "127.0.0.1", echo_router()).await;
    let bad = tls_server(&ca, "hs.test", echo_router()).await;
    let dns = fake_dns(&[]);
    let client = client(&config(Some(&ca), true), &dns);

    let answer = client
        .get_json(&name(&format!("127.0.0.1:{good}")), "/")
        .await
        .unwrap();
    assert_eq!(answer["host"], format!("127.0.0.1:{good}"));

    let error = connect_error(
        client
            .get_json(&name(&format!("127.0.0.1:{bad}")), "/")
            .await,
    );
    assert!(
        matches!(tls_cause(&error), rustls::Error::InvalidCertificate(_)),
        "{error:?}"
    );
    assert!(
        dns.asked().is_empty(),
        "IP literals need no DNS: {:?}",
        dns.asked()
    );
}

/// Server-Server API, "TLS": only trusted CAs; the test CA is trusted only
/// through `federation.ca_file`.
#[tokio::test]
async fn without_ca_file_the_test_ca_is_not_trusted() {
    let ca = TestCa::new();
    let port = tls_server(&ca, "hs.test", echo_router()).await;
    let dns = fake_dns(&["hs.test"]);
    let client = client(&config(None, true), &dns);

    let error = connect_error(
        client
            .get_json(&name(&format!("hs.test:{port}")), "/")
            .await,
    );
    assert!(
        matches!(
            tls_cause(&error),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}

/// Hearth's private-address guard (outside the spec, against SSRF): with
/// `allow_private_addresses = false`, loopback is refused however it is
/// spelled (a DNS answer, an IPv4 literal, an IPv4-mapped IPv6 literal),
/// before any connection is made.
#[tokio::test]
async fn private_addresses_are_refused_without_connecting() {
    let ca = TestCa::new();
    let (spy, port) = bind().await;
    let dns = fake_dns(&["hs.test"]);

    // Allowed, the client does reach the socket (which then hangs up).
    let allowed = client(&config(Some(&ca), true), &dns);
    let server = name(&format!("hs.test:{port}"));
    let (result, peer) = tokio::join!(allowed.get_json(&server, "/"), async {
        let (stream, peer) = spy.accept().await.unwrap();
        drop(stream);
        peer
    });
    assert!(peer.ip().is_loopback());
    let error = connect_error(result);
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");

    let refused = client(&config(Some(&ca), false), &dns);
    for server in [
        format!("hs.test:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ] {
        let error = connect_error(refused.get_json(&name(&server), "/").await);
        assert!(
            matches!(&error, ConnectError::ForbiddenAddress(host) if *host == server),
            "{server}: {error:?}"
        );
        // Had the client connected, its connection would be queued before
        // this probe's.
        let probe = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let (_, peer) = spy.accept().await.unwrap();
        assert_eq!(peer, probe.local_addr().unwrap(), "{server} was dialled");
    }
}

/// `federation.overrides` (for private federations and tests): the named
/// URL is used as is, even on loopback with the guard on, over plain HTTP,
/// and `Host` is still the server name. It opens no other way in.
#[tokio::test]
async fn a_plain_http_override_is_reached_with_the_server_name_as_host() {
    let port = plain_server(echo_router()).await;
    let dns = fake_dns(&["localhost"]);
    let mut config = config(None, false);
    config.overrides.insert(
        "localhost:8008".to_owned(),
        ServerOverride {
            url: format!("http://127.0.0.1:{port}"),
        },
    );
    let client = client(&config, &dns);

    let answer = client
        .get_json(&name("localhost:8008"), "/_matrix/key/v2/server")
        .await
        .unwrap();
    assert_eq!(answer["host"], "localhost:8008");
    assert_eq!(answer["uri"], "/_matrix/key/v2/server");
    assert!(dns.asked().is_empty(), "{:?}", dns.asked());

    // The same address under another name is still refused.
    let error = connect_error(
        client
            .get_json(&name(&format!("127.0.0.1:{port}")), "/")
            .await,
    );
    assert!(
        matches!(error, ConnectError::ForbiddenAddress(_)),
        "{error:?}"
    );
}

/// `federation.overrides` with `https`: the certificate must still be valid
/// for the server name ("TLS"), not for the override's address.
#[tokio::test]
async fn an_https_override_checks_the_certificate_for_the_server_name() {
    let ca = TestCa::new();
    let good = tls_server(&ca, "hs.test", echo_router()).await;
    let bad = tls_server(&ca, "127.0.0.1", echo_router()).await;
    let dns = fake_dns(&[]);
    let mut config = config(Some(&ca), false);
    for (server, port) in [("hs.test", good), ("bad.test", bad)] {
        config.overrides.insert(
            server.to_owned(),
            ServerOverride {
                url: format!("https://127.0.0.1:{port}"),
            },
        );
    }
    let client = client(&config, &dns);

    let answer = client.get_json(&name("hs.test"), "/").await.unwrap();
    assert_eq!(answer["host"], "hs.test");

    let error = connect_error(client.get_json(&name("bad.test"), "/").await);
    assert!(
        matches!(tls_cause(&error), rustls::Error::InvalidCertificate(_)),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------
// Limits and errors.

/// A JSON string of exactly `len` bytes.
fn json_of_len(len: usize) -> Vec<u8> {
    let mut body = vec![b'a'; len];
    body[0] = b'"';
    body[len - 1] = b'"';
    body
}

/// `max_response_size`: bodies over the limit are refused whether announced
/// by `Content-Length` or streamed chunked (even endless); at the limit is fine.
#[tokio::test]
async fn responses_over_max_response_size_are_refused() {
    const LIMIT: usize = 1024;
    let router = Router::new()
        .route(
            "/fixed/{len}",
            get(|Path(len): Path<usize>| async move { json_of_len(len) }),
        )
        .route(
            "/chunked/{len}",
            get(|Path(len): Path<usize>| async move {
                let chunks: Vec<io::Result<Vec<u8>>> = json_of_len(len)
                    .chunks(100)
                    .map(|c| Ok(c.to_vec()))
                    .collect();
                Body::from_stream(stream::iter(chunks))
            }),
        )
        .route(
            "/endless",
            get(|| async {
                Body::from_stream(stream::repeat_with(|| {
                    io::Result::Ok(Bytes::from_static(&[b' '; 512]))
                }))
            }),
        );
    let ca = TestCa::new();
    let port = tls_server(&ca, "hs.test", router).await;
    let dns = fake_dns(&["hs.test"]);
    let mut config = config(Some(&ca), true);
    config.max_response_size = ByteSize(LIMIT);
    let client = client(&config, &dns);
    let server = name(&format!("hs.test:{port}"));

    for kind in ["fixed", "chunked"] {
        let at_limit = client
            .get_json(&server, &format!("/{kind}/{LIMIT}"))
            .await
            .unwrap();
        assert_eq!(at_limit.as_str().map(str::len), Some(LIMIT - 2), "{kind}");

        let over = client
            .get_json(&server, &format!("/{kind}/{}", LIMIT + 1))
            .await;
        assert!(
            matches!(connect_error(over), ConnectError::TooLarge(LIMIT)),
            "{kind}"
        );
    }
    let endless = client.get_json(&server, "/endless").await;
    assert!(matches!(
        connect_error(endless),
        ConnectError::TooLarge(LIMIT)
    ));
}

/// `request_timeout` bounds the whole exchange: a server slow to answer,
/// and one that sends headers then stalls in the body, both time out
/// promptly.
#[tokio::test]
async fn slow_servers_time_out_promptly() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "{}"
            }),
        )
        .route(
            "/stall",
            get(|| async {
                let first = stream::once(async { io::Result::Ok(Bytes::from_static(b"{")) });
                Body::from_stream(first.chain(stream::pending()))
            }),
        );
    let ca = TestCa::new();
    let port = tls_server(&ca, "hs.test", router).await;
    let dns = fake_dns(&["hs.test"]);
    let mut config = config(Some(&ca), true);
    config.request_timeout = ConfigDuration(TIMEOUT);
    let client = client(&config, &dns);
    let server = name(&format!("hs.test:{port}"));

    for path in ["/slow", "/stall"] {
        let started = Instant::now();
        let result = client.get_json(&server, path).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(connect_error(result), ConnectError::Timeout),
            "{path}"
        );
        assert!(
            elapsed >= TIMEOUT && elapsed < Duration::from_secs(3),
            "{path} took {elapsed:?}"
        );
    }
}

/// Server-Server API, "API standards": errors are non-2xx with a Matrix
/// error body, which the caller gets with the status; a 2xx that is not
/// JSON is an error too.
#[tokio::test]
async fn error_statuses_carry_the_matrix_error_body() {
    let router = Router::new()
        .route(
            "/missing",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"errcode": "M_NOT_FOUND", "error": "No such room"})),
                )
            }),
        )
        .route(
            "/gateway",
            get(|| async { (StatusCode::BAD_GATEWAY, "<html>oops</html>") }),
        )
        .route("/text", get(|| async { "hello" }));
    let ca = TestCa::new();
    let port = tls_server(&ca, "hs.test", router).await;
    let dns = fake_dns(&["hs.test"]);
    let client = client(&config(Some(&ca), true), &dns);
    let server = name(&format!("hs.test:{port}"));

    match client.get_json(&server, "/missing").await {
        Err(FederationError::Status {
            server: s,
            status,
            body,
        }) => {
            assert_eq!(s, server.as_str());
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(
                body,
                json!({"errcode": "M_NOT_FOUND", "error": "No such room"})
            );
        }
        other => panic!("{other:?}"),
    }
    match client.get_json(&server, "/gateway").await {
        Err(FederationError::Status { status, body, .. }) => {
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert_eq!(body, Value::Null);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.get_json(&server, "/text").await,
        Err(FederationError::NotJson { .. })
    ));
}

// ---------------------------------------------------------------------------
// Server keys and X-Matrix.

/// A key store that reaches the test servers, on a fresh SQLite database
/// (kept for as long as the test runs).
async fn key_store(ca: &TestCa, hosts: &[&str]) -> (KeyStore, tempfile::TempDir) {
    let (db, dir) = hearth_core::storage::testing::sqlite(&hearth_federation::SCHEMA).await;
    let store = KeyStore::new(client(&config(Some(ca), true), &fake_dns(hosts)), db);
    (store, dir)
}

/// Server-Server API, "Retrieving server keys" (`GET /_matrix/key/v2/server`):
/// the object is self-signed by a key it lists, and is cached while valid.
#[tokio::test]
async fn server_keys_are_fetched_verified_and_cached() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    let (store, _db) = key_store(&ca, &["origin.test"]).await;

    let keys = store.server_keys(&origin, now_ms()).await.unwrap();
    assert_eq!(keys.server_name, origin);
    assert_eq!(
        keys.verify_keys.keys().collect::<Vec<_>>(),
        vec!["ed25519:k1"]
    );
    assert_eq!(
        keys.verify_keys["ed25519:k1"].to_base64(),
        key.public_key_base64()
    );
    let again = store.server_keys(&origin, now_ms()).await.unwrap();
    assert!(Arc::ptr_eq(&keys, &again));
    assert_eq!(server.fetches(), 1);
}

/// The verified response is kept in the database: a new store on the same
/// database (a restart, or another instance) answers without fetching.
#[tokio::test]
async fn server_keys_survive_a_restart_in_the_database() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    let (db, _dir) = hearth_core::storage::testing::sqlite(&hearth_federation::SCHEMA).await;
    let fresh_store = || {
        KeyStore::new(
            client(&config(Some(&ca), true), &fake_dns(&["origin.test"])),
            db.clone(),
        )
    };
    let first = fresh_store().server_keys(&origin, now_ms()).await.unwrap();
    let restarted = fresh_store().server_keys(&origin, now_ms()).await.unwrap();
    assert_eq!(restarted.raw, first.raw);
    assert_eq!(server.fetches(), 1);

    // Keys too short-lived for the caller, fetched moments ago: asking the
    // origin again now would get the same answer, so it is not asked.
    let later = restarted.usable_until() + 1;
    assert!(fresh_store().server_keys(&origin, later).await.is_err());
    assert_eq!(server.fetches(), 1);
}

/// Server-Server API, "Retrieving server keys": an object not signed by one
/// of its own keys, or naming another server, is refused.
#[tokio::test]
async fn server_keys_not_self_signed_are_refused() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (store, _db) = key_store(&ca, &["evil.test"]).await;

    // Signed by a stranger's key, under its own id and under ours.
    for signer in [signing_key("other", 8), signing_key("k1", 8)] {
        let (evil, _) = key_server(&ca, "evil.test", &key, &signer).await;
        let result = store.server_keys(&evil, now_ms()).await;
        assert!(
            matches!(&result, Err(KeyFetchError::Invalid { server, .. }) if *server == evil.as_str()),
            "{result:?}"
        );
    }

    let (evil, server) = key_server(&ca, "evil.test", &key, &key).await;
    server.publish(keys_object("origin.test", &key, &key, an_hour_from_now()));
    let result = store.server_keys(&evil, now_ms()).await;
    assert!(
        matches!(result, Err(KeyFetchError::Invalid { .. })),
        "{result:?}"
    );
}

/// Server-Server API, "Request Authentication": an X-Matrix header made by
/// `sign_request` verifies for a homeserver (`destination`) and an identity
/// server (`destination_is`), with and without a body.
#[tokio::test]
async fn x_matrix_requests_verify_against_fetched_keys() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    let (store, _db) = key_store(&ca, &["origin.test"]).await;
    let content =
        json!({"mxid": "@alice:origin.test", "threepid": {"medium": "email", "address": "a@b.c"}});

    for ours in [
        Destination::Server(name("dest.test")),
        Destination::IdentityServer(name("is.test")),
    ] {
        for (method, uri, content) in [
            ("POST", "/_matrix/identity/v2/3pid/unbind", Some(&content)),
            (
                "GET",
                "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab",
                None,
            ),
        ] {
            let header = sign_request(&key, &origin, &ours, method, uri, content).unwrap();
            let verified = store
                .verify_request(&header, method, uri, content, &ours)
                .await;
            assert_eq!(verified, Ok(origin.clone()), "{ours:?} {method} {uri}");
        }
    }
    assert_eq!(server.fetches(), 1, "keys are fetched once and cached");
}

/// Server-Server API, "Request Authentication": the signature covers method,
/// URI, body and destination; a header for another destination, or made with
/// a key the origin does not publish, is refused.
#[tokio::test]
async fn x_matrix_requests_that_do_not_match_are_refused() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (origin, _server) = key_server(&ca, "origin.test", &key, &key).await;
    let (store, _db) = key_store(&ca, &["origin.test"]).await;
    let uri = "/_matrix/federation/v1/send/txn1";
    let content = json!({"pdus": [], "edus": []});
    let dest = Destination::Server(name("dest.test"));
    let is = Destination::IdentityServer(name("is.test"));
    let header = sign_request(&key, &origin, &dest, "PUT", uri, Some(&content)).unwrap();
    let is_header = sign_request(&key, &origin, &is, "POST", uri, Some(&content)).unwrap();

    let signature_error = |result: Result<ServerName, XMatrixError>| {
        assert!(
            matches!(result, Err(XMatrixError::Signature(_))),
            "{result:?}"
        );
    };
    // A tampered body, method or URI.
    let tampered = json!({"pdus": [], "edus": [{"edu_type": "m.typing"}]});
    signature_error(
        store
            .verify_request(&header, "PUT", uri, Some(&tampered), &dest)
            .await,
    );
    signature_error(store.verify_request(&header, "PUT", uri, None, &dest).await);
    signature_error(
        store
            .verify_request(&header, "POST", uri, Some(&content), &dest)
            .await,
    );
    signature_error(
        store
            .verify_request(
                &header,
                "PUT",
                "/_matrix/federation/v1/send/txn2",
                Some(&content),
                &dest,
            )
            .await,
    );
    // Another destination: named in the header, or only in the signed JSON.
    let elsewhere = Destination::Server(name("elsewhere.test"));
    assert_eq!(
        store
            .verify_request(&header, "PUT", uri, Some(&content), &elsewhere)
            .await,
        Err(XMatrixError::WrongDestination("dest.test".to_owned()))
    );
    let other_is = Destination::IdentityServer(name("other-is.test"));
    signature_error(
        store
            .verify_request(&is_header, "POST", uri, Some(&content), &other_is)
            .await,
    );
    // A homeserver signature is not an identity server one.
    signature_error(
        store
            .verify_request(
                &header,
                "PUT",
                uri,
                Some(&content),
                &Destination::IdentityServer(name("dest.test")),
            )
            .await,
    );
    // A key id the origin does not publish, and our key id with another key.
    for wrong in [signing_key("k2", 7), signing_key("k1", 9)] {
        let forged = sign_request(&wrong, &origin, &dest, "PUT", uri, Some(&content)).unwrap();
        signature_error(
            store
                .verify_request(&forged, "PUT", uri, Some(&content), &dest)
                .await,
        );
    }
    // And the genuine request still passes.
    assert_eq!(
        store
            .verify_request(&header, "PUT", uri, Some(&content), &dest)
            .await,
        Ok(origin)
    );
}

/// Server-Server API, "Request Authentication" with "Retrieving server
/// keys": a request from a server whose published keys are not self-signed
/// is refused even though the header's signature matches the listed key.
#[tokio::test]
async fn x_matrix_from_a_server_with_badly_signed_keys_is_refused() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (evil, _) = key_server(&ca, "evil.test", &key, &signing_key("other", 8)).await;
    let (store, _db) = key_store(&ca, &["evil.test"]).await;
    let dest = Destination::Server(name("dest.test"));
    let header = sign_request(&key, &evil, &dest, "GET", "/x", None).unwrap();

    let result = store
        .verify_request(&header, "GET", "/x", None, &dest)
        .await;
    assert!(
        matches!(result, Err(XMatrixError::Signature(_))),
        "{result:?}"
    );
}

/// What the destination server in the `send_signed` test knows.
#[derive(Clone)]
struct Destined {
    me: ServerName,
    keys: KeyStore,
}

/// Verifies the X-Matrix header like a homeserver would, and echoes the
/// authenticated origin and body.
async fn authenticated_echo(
    State(d): State<Destined>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content: Option<Value> = (!body.is_empty()).then(|| serde_json::from_slice(&body).unwrap());
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .map_or("", |v| v.to_str().unwrap());
    let uri = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let ours = Destination::Server(d.me.clone());
    match d
        .keys
        .verify_request(authorization, method.as_str(), uri, content.as_ref(), &ours)
        .await
    {
        Ok(origin) => {
            axum::Json(json!({"origin": origin.as_str(), "content": content})).into_response()
        }
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"errcode": "M_UNAUTHORIZED", "error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Server-Server API, "Request Authentication", end to end: one server
/// (`origin.test`, serving its keys) calls `send_signed` to another
/// (`dest.test`), which fetches the origin's keys and verifies the header.
#[tokio::test]
async fn send_signed_is_verified_by_the_destination() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (origin, key_server) = key_server(&ca, "origin.test", &key, &key).await;

    let (tcp, dest_port) = bind().await;
    let dest = name(&format!("dest.test:{dest_port}"));
    let (keys, _db) = key_store(&ca, &["origin.test"]).await;
    let destined = Destined {
        me: dest.clone(),
        keys,
    };
    let router = Router::new()
        .fallback(any(authenticated_echo))
        .with_state(destined);
    spawn(ca.listener(tcp, "dest.test"), router);

    let dns = fake_dns(&["dest.test"]);
    let config = config(Some(&ca), true);
    let sender = client_as(
        &config,
        &dns,
        Some(Origin {
            server_name: origin.clone(),
            key: key.clone(),
        }),
    );
    let content = json!({"pdus": [], "edus": [], "origin": origin.as_str()});
    let answer = sender
        .send_signed(
            &dest,
            Method::PUT,
            "/_matrix/federation/v1/send/t1?a=b",
            Some(&content),
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        json!({"origin": origin.as_str(), "content": content})
    );
    let answer = sender
        .send_signed(&dest, Method::GET, "/_matrix/federation/v1/version", None)
        .await
        .unwrap();
    assert_eq!(answer, json!({"origin": origin.as_str(), "content": null}));
    assert_eq!(key_server.fetches(), 1);

    // The same origin name with a key it does not publish is refused.
    let impostor = client_as(
        &config,
        &dns,
        Some(Origin {
            server_name: origin.clone(),
            key: signing_key("k1", 9),
        }),
    );
    match impostor
        .send_signed(&dest, Method::GET, "/_matrix/federation/v1/version", None)
        .await
    {
        Err(FederationError::Status { status, body, .. }) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["errcode"], "M_UNAUTHORIZED");
        }
        other => panic!("{other:?}"),
    }

    // Without a signing key there is nothing to sign with.
    let anonymous = client_as(&config, &dns, None);
    assert!(matches!(
        anonymous.send_signed(&dest, Method::GET, "/", None).await,
        Err(FederationError::NoSigningKey)
    ));
}

/// Server-Server API, "Request Authentication": the key must be valid now.
/// A server publishing keys whose `valid_until_ts` has passed is refused,
/// and a failed fetch is not repeated for every request.
#[tokio::test]
async fn x_matrix_with_expired_keys_is_refused_without_refetch_storms() {
    let ca = TestCa::new();
    let key = signing_key("k1", 7);
    let (origin, server) = key_server(&ca, "origin.test", &key, &key).await;
    server.publish(keys_object(origin.as_str(), &key, &key, now_ms() - 60_000));
    let (store, _db) = key_store(&ca, &["origin.test"]).await;
    let ours = Destination::Server(name("dest.test"));
    let header = sign_request(&key, &origin, &ours, "GET", "/x", None).unwrap();
    for _ in 0..3 {
        let verified = store
            .verify_request(&header, "GET", "/x", None, &ours)
            .await;
        assert!(
            matches!(verified, Err(XMatrixError::Signature(_))),
            "{verified:?}"
        );
    }
    assert_eq!(server.fetches(), 1);
}

/// Key rotation (Synapse fetches again when a key id is unknown): after the
/// origin switches from k1 to k2, a request signed with k2 verifies at once,
/// through one refetch; an unknown id does not refetch again right away.
#[tokio::test]
async fn x_matrix_notices_key_rotation() {
    let ca = TestCa::new();
    let k1 = signing_key("k1", 7);
    let k2 = signing_key("k2", 8);
    let (origin, server) = key_server(&ca, "origin.test", &k1, &k1).await;
    let (store, _db) = key_store(&ca, &["origin.test"]).await;
    let ours = Destination::Server(name("dest.test"));
    let with_k1 = sign_request(&k1, &origin, &ours, "GET", "/x", None).unwrap();
    assert_eq!(
        store
            .verify_request(&with_k1, "GET", "/x", None, &ours)
            .await,
        Ok(origin.clone())
    );

    server.publish(keys_object(origin.as_str(), &k2, &k2, an_hour_from_now()));
    let with_k2 = sign_request(&k2, &origin, &ours, "GET", "/x", None).unwrap();
    assert_eq!(
        store
            .verify_request(&with_k2, "GET", "/x", None, &ours)
            .await,
        Ok(origin.clone())
    );
    assert_eq!(server.fetches(), 2);

    let k3 = signing_key("k3", 9);
    let with_k3 = sign_request(&k3, &origin, &ours, "GET", "/x", None).unwrap();
    assert!(
        store
            .verify_request(&with_k3, "GET", "/x", None, &ours)
            .await
            .is_err()
    );
    assert_eq!(
        server.fetches(),
        2,
        "a second unknown id within the backoff is not fetched"
    );
}
