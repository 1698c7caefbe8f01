//! The notary (Server-Server API "Querying Keys Through Another Server")
//! with peers nobody here wrote:
//!
//! 1. Hearth fetches a running Synapse's keys and serves them; Synapse's own
//!    key library (`signedjson`) verifies the answer against Synapse's key
//!    and Hearth's published key. Once that Synapse is stopped, Hearth still
//!    serves the keys it holds.
//! 2. A second Synapse whose `trusted_key_servers` names Hearth verifies a
//!    request from the first through Hearth: it cannot reach the first
//!    Synapse's federation port itself (plain HTTP, where Synapse requires
//!    TLS), so only the notary can have given it the key.
//! 3. Server discovery for real: a DNS server (Debian's dnsmasq) serving SRV
//!    and A records, a `.well-known` server on port 443, and an origin that
//!    serves keys only on the port the SRV record names.

use hearth_core::http::serve;
use hearth_core::time::now_ms;
use hearth_e2e::{
    Hearth, HttpClient, PY_VERIFY_SIGNED_JSON, Site, Synapse, TestCertificate, free_port,
    python_ok, wait_until,
};
use hearth_testkit::federation::TestCa;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const QUERY: &str = "/_matrix/key/v2/query";
const PASSWORD: &str = "correct horse battery staple";

/// Synapse with no notary of its own, whose first key id is returned.
fn synapse_alone(extra: Value) -> Synapse {
    let mut overrides = json!({
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
    });
    if let (Some(o), Some(e)) = (overrides.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Synapse::start(&overrides)
}

fn key_id(synapse: &Synapse) -> String {
    let keys = synapse.client().get("/_matrix/key/v2/server", None).json();
    keys["verify_keys"]
        .as_object()
        .and_then(|k| k.keys().next().cloned())
        .expect("Synapse publishes a key")
}

/// `POST /query` for `server`'s `key_id`, valid until `minimum`.
fn query(client: &HttpClient, server: &str, key_id: &str, minimum: i64) -> Vec<Value> {
    let response = client.post(
        QUERY,
        None,
        &json!({"server_keys": {server: {key_id: {"minimum_valid_until_ts": minimum}}}}),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["server_keys"]
        .as_array()
        .expect("a server_keys array")
        .clone()
}

/// `signedjson.verify_signed_json` of `object` for `server` with the keys in
/// the Synapse-format key file `key_file`.
fn signedjson_verifies(object: &Value, server: &str, key_file: &std::path::Path) {
    let key_file = key_file.to_str().expect("a UTF-8 path");
    let out = python_ok(
        PY_VERIFY_SIGNED_JSON,
        &[server, key_file],
        object.to_string().as_bytes(),
    );
    assert!(out.contains("verified"), "{out}");
}

#[test]
fn serves_a_running_synapses_keys_and_keeps_them_when_it_stops() {
    let synapse = synapse_alone(json!({}));
    let key_id = key_id(&synapse);
    let site = Site::new();
    let hearth_name = format!("localhost:{}", site.public_addr().port());
    let config = format!(
        "server_name = \"{hearth_name}\"\n[federation.overrides.\"{}\"]\nurl = \"{}\"\n",
        synapse.server_name(),
        synapse.url()
    );
    let path = site.write_file("hearth.toml", &config);
    let hearth = site.start(&["--config", path.to_str().unwrap(), "notary"]);
    let client = HttpClient::plain(hearth.public_addr());

    let answer = query(&client, synapse.server_name(), &key_id, now_ms());
    assert_eq!(answer.len(), 1, "{answer:?}\n{}", hearth.log());
    assert_eq!(answer[0]["server_name"], synapse.server_name());
    signedjson_verifies(
        &answer[0],
        synapse.server_name(),
        &synapse.signing_key_path(),
    );
    signedjson_verifies(
        &answer[0],
        &hearth_name,
        &site.data_dir().join("signing.key"),
    );

    let server_name = synapse.server_name().to_owned();
    drop(synapse);
    // Asking for more validity than it holds makes Hearth try the origin,
    // which is gone: the keys it holds are still served, stale or not.
    let far = now_ms() + 30 * 24 * 3_600_000;
    let stale = query(&client, &server_name, &key_id, far);
    assert_eq!(stale, answer, "{}", hearth.log());
    assert_eq!(query(&client, &server_name, &key_id, now_ms()), answer);
    let metrics = hearth.admin_get("/metrics").text();
    assert!(
        metrics.contains("hearth_notary_stale_served_total"),
        "{metrics}"
    );
}

#[test]
fn a_second_synapse_verifies_the_first_through_hearth() {
    let certs = tempfile::tempdir().unwrap();
    let cert = TestCertificate::localhost(certs.path());
    let ca = cert.ca.display().to_string();
    let loopback = json!(["127.0.0.1", "::1"]);

    // The first Synapse federates over plain HTTP, which no Synapse will
    // dial; it reaches the second over TLS under the test CA.
    let first = synapse_alone(json!({
        "federation_custom_ca_list": [ca],
        "ip_range_whitelist": loopback,
    }));

    // Hearth: HTTPS under the test CA, reaching the first Synapse through an
    // override.
    let site = Site::new();
    let hearth_name = format!("localhost:{}", site.public_addr().port());
    let config = format!(
        r#"server_name = "{hearth_name}"
[http]
tls_certificate = "{}"
tls_private_key = "{}"
[federation.overrides."{}"]
url = "{}"
"#,
        cert.certificate.display(),
        cert.private_key.display(),
        first.server_name(),
        first.url()
    );
    let path = site.write_file("hearth.toml", &config);
    let hearth = site.start(&["--config", path.to_str().unwrap(), "notary"]);
    let to_hearth = HttpClient::https(hearth.public_addr(), "localhost", cert.client_config());
    let own = to_hearth.get("/_matrix/key/v2/server", None).json();
    let (hearth_key_id, hearth_key) = own["verify_keys"]
        .as_object()
        .and_then(|k| k.iter().next())
        .map(|(id, k)| (id.clone(), k["key"].clone()))
        .expect("Hearth publishes a key");

    let second = Synapse::start_tls(
        &json!({
            "trusted_key_servers": [{
                "server_name": hearth_name,
                "verify_keys": {hearth_key_id: hearth_key},
            }],
            "federation_custom_ca_list": [ca],
            "ip_range_whitelist": loopback,
        }),
        &cert,
    );
    let bob = second.user_id("bob");
    second.register_user("bob", PASSWORD);

    // The first Synapse asks the second for bob's profile, signing with its
    // key; the second needs that key to accept the request.
    let alice = first.user("alice", PASSWORD);
    let profile = first
        .client()
        .get(&format!("/_matrix/client/v3/profile/{bob}"), Some(&alice));
    assert_eq!(
        profile.status,
        200,
        "{}\n--- Hearth ---\n{}\n--- second Synapse ---\n{}",
        profile.text(),
        hearth.log(),
        second.logs()
    );
    let metrics = hearth.admin_get("/metrics").text();
    assert!(
        metrics.contains("hearth_notary_origin_fetches_total{outcome=\"ok\"}"),
        "the second Synapse did not ask Hearth:\n{metrics}"
    );
}

/// dnsmasq on a loopback port, serving the records `args` add; killed on
/// drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(records: &[String]) -> Self {
        let program: PathBuf = std::env::var_os("HEARTH_TEST_DNSMASQ")
            .map_or_else(|| PathBuf::from("/usr/sbin/dnsmasq"), PathBuf::from);
        assert!(
            program.is_file(),
            "{} not found: run the suite with `cargo xtask test`, which installs dnsmasq-base",
            program.display()
        );
        let port = free_port();
        let child = Command::new(&program)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--pid-file",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut dns = Self { child, port };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::UdpSocket::bind("127.0.0.1:0").is_ok_and(|s| {
                // A query for a record it holds answers once it is up.
                let query = dns_query("origin.hearth.test");
                s.set_read_timeout(Some(Duration::from_millis(200))).is_ok()
                    && s.send_to(&query, ("127.0.0.1", port)).is_ok()
                    && s.recv(&mut [0; 512]).is_ok()
            })
        });
        assert!(up, "dnsmasq did not answer: {:?}", dns.child.try_wait());
        dns
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal DNS query for `name`'s A record.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Spec "Resolving server names", steps 3 and 3.3: `origin.hearth.test` has
/// no port, so its `.well-known` on port 443 delegates to
/// `delegated.hearth.test`, whose `_matrix-fed._tcp` SRV record names
/// `keys.hearth.test` and the one port where the origin serves its keys, with
/// a certificate for `delegated.hearth.test` (never the SRV target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_server_names_through_real_dns_and_well_known() {
    let ca = TestCa::new();
    // The origin listens where its site says; the SRV record points there.
    let origin_site = Site::new();
    let origin_port = origin_site.public_addr().port();
    let dns = Dnsmasq::start(&[
        "--host-record=origin.hearth.test,127.0.0.1".to_owned(),
        "--host-record=delegated.hearth.test,127.0.0.1".to_owned(),
        "--host-record=keys.hearth.test,127.0.0.1".to_owned(),
        format!("--srv-host=_matrix-fed._tcp.delegated.hearth.test,keys.hearth.test,{origin_port}"),
    ]);

    // `.well-known/matrix/server` on 127.0.0.1:443, certificate for the
    // origin's name.
    let well_known = tokio::net::TcpListener::bind("127.0.0.1:443")
        .await
        .expect("binding port 443 (the suite runs as root)");
    let router = axum::Router::new().route(
        "/.well-known/matrix/server",
        axum::routing::get(|| async { axum::Json(json!({"m.server": "delegated.hearth.test"})) }),
    );
    tokio::spawn(serve(
        ca.listener(well_known, "origin.hearth.test"),
        router,
        std::future::pending::<()>(),
    ));

    // The origin: a Hearth named origin.hearth.test serving its keys only
    // on the SRV port, with a certificate for the delegated name.
    let origin_cert = ca.certificate("delegated.hearth.test");
    let origin_config = format!(
        r#"server_name = "origin.hearth.test"
[http]
tls_certificate = "{}"
tls_private_key = "{}"
"#,
        origin_cert.certificate.display(),
        origin_cert.private_key.display()
    );
    let path = origin_site.write_file("hearth.toml", &origin_config);
    let origin: Hearth = tokio::task::block_in_place(|| {
        origin_site.start(&["--config", path.to_str().unwrap(), "notary"])
    });

    // The notary resolves through dnsmasq and trusts the test CA; its debug
    // log tells each resolution step when this fails.
    let site = Site::new().with_env(
        "HEARTH_LOG__FILTER",
        "info,hearth_federation=debug,hearth_notary=debug",
    );
    let config = format!(
        r#"server_name = "notary.hearth.test"
[federation]
dns_servers = ["127.0.0.1:{}"]
ca_file = "{}"
allow_private_addresses = true
"#,
        dns.port,
        ca.path().display()
    );
    let path = site.write_file("hearth.toml", &config);
    let notary =
        tokio::task::block_in_place(|| site.start(&["--config", path.to_str().unwrap(), "notary"]));
    let answer = tokio::task::block_in_place(|| {
        HttpClient::plain(notary.public_addr()).get(&format!("{QUERY}/origin.hearth.test"), None)
    });
    assert_eq!(answer.status, 200, "{}", answer.text());
    let keys = answer.json()["server_keys"].clone();
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(1),
        "{keys}\n--- notary ---\n{}\n--- origin ---\n{}",
        notary.log(),
        origin.log()
    );
    let key_file = origin_site.data_dir().join("signing.key");
    tokio::task::block_in_place(|| {
        signedjson_verifies(&keys[0], "origin.hearth.test", &key_file);
    });
}
