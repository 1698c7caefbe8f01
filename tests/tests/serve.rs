//! `hearth serve` and the one-service commands as a process: what it writes
//! on first start, what it listens on and answers, how it stops, how config
//! layers apply, PostgreSQL, and HTTPS checked by Hearth's own federation
//! client.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hearth_core::ids::ServerName;
use hearth_core::time::now_ms;
use hearth_e2e::{Hearth, Site, http_get, own_database, postgres_url};
use hearth_federation::connect::{ConnectError, SystemDns};
use hearth_federation::keys::{ServerKeys, verify_server_keys};
use hearth_federation::{FederationClient, FederationConfig, FederationError, KeyStore};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const KEYS: &str = "/_matrix/key/v2/server";
/// How long a SIGTERM may take to stop Hearth with nothing in flight.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Fetches the server's keys and checks they are self-signed for `name`.
fn verified_keys(hearth: &Hearth, name: &str) -> ServerKeys {
    let response = hearth.get(KEYS);
    assert_eq!(response.status, 200, "{}", response.text());
    let name = ServerName::parse(name).unwrap();
    verify_server_keys(response.json(), &name, now_ms())
        .unwrap_or_else(|e| panic!("{e}: {}", response.text()))
}

/// Issue requirements for a first start on embedded defaults in an empty
/// directory: the database and a signing key appear under `./data` (key file
/// 0600, directory 0700); the start-up log names the server name, both
/// listeners and what production still needs; the keys endpoint serves
/// self-signed keys (Server-Server API "Publishing Keys"); an unknown path
/// is 404 `M_UNRECOGNIZED` with the spec's CORS headers; the admin listener
/// serves Prometheus metrics; `hearth health` reports 0 while it runs and 1
/// after SIGTERM, which stops the process cleanly within 15 s.
#[test]
fn first_start_on_defaults_serves_and_stops_on_sigterm() {
    let site = Site::new();
    let mut hearth = site.start(&["serve"]);

    // Issue 10 item 13: a scrape before any public request already shows
    // a series, so a scraper sees the target is up and which build it is.
    let metrics = hearth.admin_get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("hearth_build_info{version="),
        "{}",
        metrics.text()
    );

    let data = site.data_dir();
    assert!(data.join("hearth.db").is_file(), "no data/hearth.db");
    assert!(data.join("signing.key").is_file(), "no data/signing.key");
    assert_eq!(mode(&data.join("signing.key")), 0o600, "signing.key mode");
    assert_eq!(mode(&data), 0o700, "data dir mode");
    // Issue 10 item 4: 3PIDs, invite tokens and the pepper live here.
    for name in ["hearth.db", "hearth.db-wal", "hearth.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name} mode");
    }

    let log = hearth.log();
    for expected in [
        "\"localhost\"".to_owned(),
        format!("http://{}", site.public_addr()),
        format!("http://{}", site.admin_addr()),
        "for production".to_owned(),
        "set server_name".to_owned(),
    ] {
        assert!(
            log.contains(&expected),
            "start-up log lacks {expected:?}:\n{log}"
        );
    }

    let keys = verified_keys(&hearth, "localhost");
    assert_eq!(keys.verify_keys.len(), 1, "{}", keys.raw);
    assert!(keys.valid_until_ts > now_ms(), "{}", keys.raw);

    let unknown = hearth.get("/_matrix/no/such/endpoint");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["errcode"], "M_UNRECOGNIZED");
    assert_eq!(unknown.header("access-control-allow-origin"), Some("*"));

    let metrics = hearth.admin_get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("hearth_http_requests_total"),
        "{}",
        metrics.text()
    );

    let health = site.run(&["health"]);
    assert_eq!(
        health.code(),
        Some(0),
        "hearth health while running: {health}"
    );

    let status = hearth.stop(STOP_TIMEOUT);
    let log = hearth.log();
    assert!(status.success(), "exit after SIGTERM: {status}\n{log}");
    assert!(log.contains("stopped"), "no \"stopped\" in the log:\n{log}");

    let health = site.run(&["health"]);
    assert_eq!(health.code(), Some(1), "hearth health after stop: {health}");
    assert!(health.stderr.contains("unhealthy"), "{health}");
}

/// The signing key is made once and kept: a restart publishes the same key
/// id and public key, so homeservers' cached keys stay valid.
#[test]
fn restart_keeps_the_signing_key() {
    let site = Site::new();
    let mut first = site.start(&["serve"]);
    let before = verified_keys(&first, "localhost").verify_keys;
    assert!(first.stop(STOP_TIMEOUT).success());

    let second = site.start(&["serve"]);
    let after = verified_keys(&second, "localhost").verify_keys;
    assert_eq!(before, after);
}

/// Config layering (design: defaults < file < `HEARTH_` env with `__`
/// nesting): `HEARTH_SERVER_NAME` alone renames the server; a file given by
/// `--config` or by `HEARTH_CONFIG` applies; the environment wins over the
/// file, for top-level and nested (`HEARTH_ADMIN__BIND`) keys alike.
#[test]
fn config_layers_defaults_file_and_environment() {
    let env_only = Site::new().with_env("HEARTH_SERVER_NAME", "hearth.test");
    let hearth = env_only.start(&["serve"]);
    assert_eq!(
        verified_keys(&hearth, "hearth.test").raw["server_name"],
        "hearth.test"
    );
    drop(hearth);

    // The file also sets the admin port; the site's HEARTH_ADMIN__BIND must
    // win, or the readiness check (on the site's port) fails.
    let file_text = "server_name = \"file.test\"\n[admin]\nbind = \"127.0.0.1:1\"\n";

    let by_flag = Site::new();
    let path = by_flag.write_file("hearth.toml", file_text);
    let hearth = by_flag.start(&["--config", path.to_str().unwrap(), "serve"]);
    verified_keys(&hearth, "file.test");
    drop(hearth);

    let by_env = Site::new();
    let path = by_env.write_file("hearth.toml", file_text);
    let by_env = by_env.with_env("HEARTH_CONFIG", &path);
    let hearth = by_env.start(&["serve"]);
    verified_keys(&hearth, "file.test");
    drop(hearth);

    let overridden = Site::new();
    let path = overridden.write_file("hearth.toml", file_text);
    let overridden = overridden.with_env("HEARTH_SERVER_NAME", "env.test");
    let hearth = overridden.start(&["serve", "--config", path.to_str().unwrap()]);
    verified_keys(&hearth, "env.test");
}

/// PostgreSQL for operators who run several instances: with
/// `HEARTH_DATABASE__URL`, `hearth migrate` succeeds and is idempotent, and
/// `hearth serve` runs on it (health 200, no SQLite file made).
#[test]
fn postgres_migrate_twice_then_serve() {
    let Some(server) = postgres_url() else { return };
    let url = own_database(&server, "hearth_e2e");
    let site = Site::new().with_env("HEARTH_DATABASE__URL", &url);
    // The first run names every migration it applied, the second none.
    let out = site.run_ok(&["migrate"]);
    for applied in ["core 1", "auth 1", "federation 1", "identity 1"] {
        assert!(out.stdout.contains(&format!("applied {applied}")), "{out}");
    }
    let out = site.run_ok(&["migrate"]);
    assert!(out.stdout.contains("up to date"), "{out}");
    let hearth = site.start(&["serve"]);
    assert_eq!(hearth.admin_get("/health").status, 200);
    assert!(hearth.log().contains("PostgreSQL"), "{}", hearth.log());
    assert!(
        !site.data_dir().join("hearth.db").exists(),
        "an SQLite file was made"
    );
    verified_keys(&hearth, "localhost");
}

/// A throwaway CA, and a certificate for `localhost` signed by it; their
/// paths (CA, certificate chain, private key) in `dir`.
fn localhost_certificate(
    dir: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Hearth e2e CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf_cert.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// Homeservers reach notaries over HTTPS only (reference §7): with
/// `http.tls_certificate` and `http.tls_private_key` the public listener
/// speaks TLS, and Hearth's own federation client, trusting the test CA and
/// resolving `localhost:<port>` through the system resolver, fetches and
/// verifies the keys (`KeyStore::server_keys`). Without
/// `allow_private_addresses` the same fetch is refused, since localhost is
/// loopback.
#[tokio::test(flavor = "multi_thread")]
async fn https_listener_serves_keys_to_the_federation_client() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = localhost_certificate(certs.path());
    let site = Site::new()
        .with_env("HEARTH_HTTP__TLS_CERTIFICATE", &cert)
        .with_env("HEARTH_HTTP__TLS_PRIVATE_KEY", &key);
    // A notary signs as the name it is reached by, port included.
    let server = ServerName::parse(&format!("localhost:{}", site.public_addr().port())).unwrap();
    let site = site.with_env("HEARTH_SERVER_NAME", server.as_str());
    let hearth = tokio::task::block_in_place(|| site.start(&["serve"]));
    let log = hearth.log();
    assert!(
        log.contains(&format!("https://{}", site.public_addr())),
        "{log}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tokio::task::block_in_place(|| http_get(site.public_addr(), KEYS));
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "plain HTTP answered on the TLS listener"
    );

    let client = |allow_private_addresses| {
        let config = FederationConfig {
            ca_file: Some(ca.clone()),
            allow_private_addresses,
            ..FederationConfig::default()
        };
        FederationClient::new(&config, Arc::new(SystemDns::new(&[]).unwrap()), None).unwrap()
    };

    let (db, _dir) = hearth_core::storage::testing::sqlite(&hearth_federation::SCHEMA).await;
    let keys = KeyStore::new(client(true), db)
        .server_keys(&server, now_ms())
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", hearth.log()));
    assert_eq!(keys.raw["server_name"], server.as_str());
    assert_eq!(keys.verify_keys.len(), 1);

    let refused = client(false).get_json(&server, KEYS).await;
    assert!(
        matches!(
            refused,
            Err(FederationError::Connect {
                cause: ConnectError::ForbiddenAddress(_),
                ..
            })
        ),
        "{refused:?}"
    );
}

/// Design: "`hearth <service>` runs one alone". `hearth notary` publishes
/// the keys; `hearth identity` does not mount the notary (404
/// `M_UNRECOGNIZED`) yet stays healthy; `hearth turn` opens no public HTTP
/// listener; a disabled service, or a `serve` with nothing enabled, exits
/// with a clear error.
#[test]
fn one_service_commands_mount_only_their_service() {
    let site = Site::new();
    let notary = site.start(&["notary"]);
    verified_keys(&notary, "localhost");
    drop(notary);

    let site = Site::new();
    let identity = site.start(&["identity"]);
    let keys = identity.get(KEYS);
    assert_eq!(keys.status, 404, "{}", keys.text());
    assert_eq!(keys.json()["errcode"], "M_UNRECOGNIZED");
    assert_eq!(identity.admin_get("/health").status, 200);
    drop(identity);

    // A service with no code in this build does not pretend: it refuses to
    // run instead of serving 404s.
    // TURN is off until it has a secret; `hearth turn` says so.
    let out = Site::new().run(&["turn"]);
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("turn.enabled = false"), "{out}");
    // With one, it has no HTTP side: no public HTTP listener, while admin
    // `/health` still works.
    let site = Site::new()
        .with_env("HEARTH_TURN__ENABLED", "true")
        .with_env("HEARTH_TURN__SHARED_SECRET", "not-a-real-secret")
        .with_env("HEARTH_TURN__UDP", "[\"127.0.0.1:0\"]")
        .with_env("HEARTH_TURN__TCP", "[\"127.0.0.1:0\"]")
        .with_env("HEARTH_TURN__TLS", "[]");
    let turn = site.start(&["turn"]);
    assert_eq!(turn.admin_get("/health").status, 200);
    let public = std::net::TcpStream::connect(site.public_addr());
    assert!(
        public
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "hearth turn listens on the public port: {public:?}"
    );
    drop(turn);
    let out = site.run_ok(&["turn", "credentials", "--user", "@alice:example.org"]);
    let credentials: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        credentials["username"]
            .as_str()
            .is_some_and(|u| u.ends_with(":@alice:example.org")),
        "{out}"
    );
    // Nor does `serve` with every service turned off.
    let out = Site::new()
        .with_env("HEARTH_IDENTITY__ENABLED", "false")
        .with_env("HEARTH_NOTARY__ENABLED", "false")
        .with_env("HEARTH_INTEGRATIONS__ENABLED", "false")
        .with_env("HEARTH_TURN__ENABLED", "false")
        .run(&["serve"]);
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("no service is enabled"), "{out}");
}

/// Issue 10 item 4: with a data directory that already exists and others
/// may read (made by an installer, say), the database is still created
/// 0600 with its `-wal` and `-shm`, and the start-up log says the
/// directory is open to others.
#[test]
fn an_existing_open_data_dir_gets_a_private_database_and_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let data = site.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut hearth = site.start(&["serve"]);
    for name in ["hearth.db", "hearth.db-wal", "hearth.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name} mode");
    }
    let log = hearth.log();
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("others can read")),
        "no warning about the open data directory:\n{log}"
    );
    let status = hearth.stop(STOP_TIMEOUT);
    assert!(status.success(), "exit after SIGTERM: {status}");
}
