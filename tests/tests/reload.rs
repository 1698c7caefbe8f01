//! Reloading on SIGHUP, on the real binary (issue 12: "It reloads config on
//! SIGHUP where that is safe: TLS certificates, terms, the widget catalog,
//! logging"): what is swapped in, what keeps running as it was, and a
//! broken config that changes nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_e2e::{
    FakeHomeserver, Hearth, HttpClient, HttpResponse, Site, TestCertificate, wait_until,
};
use serde_json::json;

const TERMS: &str = "/_matrix/identity/v2/terms";
const ACCOUNT: &str = "/_matrix/identity/v2/account";
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

fn policy_url(version: &str) -> String {
    format!("https://localhost/privacy-{version}.html")
}

/// The config under test: TLS from `tls`, one identity policy at
/// `version`, the integration manager's Jitsi at `jitsi`, and `log_filter`.
fn config(homeserver: &str, tls: &Path, version: &str, jitsi: &str, log_filter: &str) -> String {
    format!(
        r#"[http]
tls_certificate = {cert:?}
tls_private_key = {key:?}

[log]
filter = "{log_filter}"

[federation.overrides."hs.test"]
url = "{homeserver}"

[identity.auth.terms.policies.privacy]
version = "{version}"
[identity.auth.terms.policies.privacy.languages.en]
name = "Privacy"
url = "{url}"

[integrations.widgets]
jitsi_domain = "{jitsi}"
"#,
        cert = tls.join("cert.pem"),
        key = tls.join("key.pem"),
        url = policy_url(version),
    )
}

/// One TLS connection kept open across requests (HTTP/1.1 keep-alive).
struct KeepAlive(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl KeepAlive {
    fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        let tcp = TcpStream::connect(addr).expect("connecting");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ClientConnection::new(tls, "localhost".try_into().unwrap()).unwrap();
        Self(rustls::StreamOwned::new(conn, tcp))
    }

    /// GET `path` on this connection: the status and the body.
    fn get(&mut self, path: &str) -> (u16, serde_json::Value) {
        write!(self.0, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        self.0.flush().unwrap();
        let mut reader = BufReader::new(&mut self.0);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

fn terms_version(response: &HttpResponse) -> String {
    response.json()["policies"]["privacy"]["version"]
        .as_str()
        .unwrap_or_else(|| panic!("no policy version in {}", response.text()))
        .to_owned()
}

/// Sends SIGHUP and waits for the reload's outcome line, the `n`th
/// ("config reloaded" or "config reload failed") in the log.
fn reload(hearth: &Hearth, n: usize) {
    hearth.hangup();
    let done = wait_until(RELOAD_TIMEOUT, || {
        let log = hearth.log();
        log.matches("config reloaded").count() + log.matches("config reload failed").count() >= n
    });
    assert!(done, "no reload outcome logged:\n{}", hearth.log());
}

fn copy_certificate(from: &Path, to: &Path) {
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// One reload swaps in a renewed certificate (new handshakes get it, a
/// connection already open goes on), new terms (a user who accepted only
/// the old version must accept again), a new widget catalog and a new log
/// filter, and names a changed key that needs a restart. A broken config,
/// or a certificate file that does not parse, then changes nothing, and
/// the process goes on serving what it served.
#[test]
fn sighup_reloads_certificates_terms_catalog_and_log_filter() {
    let homeserver = FakeHomeserver::start("hs.test");
    let site = Site::new();
    let tls: PathBuf = site.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let first = TestCertificate::localhost(&tls);
    let renewed_dir = site.path().join("renewed");
    std::fs::create_dir(&renewed_dir).unwrap();
    let renewed = TestCertificate::localhost(&renewed_dir);
    let hs = homeserver.url();
    let file = site.write_file(
        "hearth.toml",
        &config(&hs, &tls, "1", "meet-one.example.org", "info"),
    );
    let hearth = site.start(&["--config", file.to_str().unwrap(), "serve"]);
    let old_client = HttpClient::https(hearth.public_addr(), "localhost", first.client_config());
    let new_client = HttpClient::https(hearth.public_addr(), "localhost", renewed.client_config());

    let mut kept = KeepAlive::open(hearth.public_addr(), first.client_config());
    let (status, terms) = kept.get(TERMS);
    assert_eq!(
        (status, &terms["policies"]["privacy"]["version"]),
        (200, &json!("1"))
    );

    let registered = old_client.post(
        "/_matrix/identity/v2/account/register",
        None,
        &homeserver.openid_credentials("alice"),
    );
    assert_eq!(registered.status, 200, "{}", registered.text());
    let token = registered.json()["token"].as_str().unwrap().to_owned();
    let accept = |client: &HttpClient, version: &str| {
        let accepted = client.post(
            TERMS,
            Some(&token),
            &json!({"user_accepts": [policy_url(version)]}),
        );
        assert_eq!(accepted.status, 200, "{}", accepted.text());
    };
    accept(&old_client, "1");
    assert_eq!(old_client.get(ACCOUNT, Some(&token)).status, 200);
    let jitsi = old_client.get("/widgets/jitsi", None);
    assert!(
        jitsi.text().contains("meet-one.example.org"),
        "{}",
        jitsi.text()
    );
    let before = hearth.log();
    assert!(!before.contains("finished processing request"), "{before}");

    // Renewed certificate, policy version 2, another Jitsi, responses
    // logged, and one key that waits for a restart.
    copy_certificate(&renewed_dir, &tls);
    let mut text = config(
        &hs,
        &tls,
        "2",
        "meet-two.example.org",
        "info,tower_http=debug",
    );
    text = text.replace("[http]\n", "[http]\nrequest_timeout = \"20s\"\n");
    std::fs::write(&file, text).unwrap();
    reload(&hearth, 1);
    let log = hearth.log();
    assert!(
        log.contains(
            "config reloaded: http TLS certificate, log filter, identity terms, \
             integrations terms, integrations widget catalog"
        ),
        "{log}"
    );
    assert!(
        log.contains("need a restart") && log.contains("http.request_timeout"),
        "{log}"
    );

    // New handshakes present the renewed certificate: only its CA is
    // trusted by `new_client`, and the old CA no longer gets through (with
    // a fresh session cache: a resumed session skips the certificate).
    assert_eq!(terms_version(&new_client.get(TERMS, None)), "2");
    let fresh = HttpClient::https(hearth.public_addr(), "localhost", first.client_config());
    assert!(fresh.try_request("GET", TERMS, None, None).is_err());
    // The connection opened before goes on, and sees the new terms.
    let (status, terms) = kept.get(TERMS);
    assert_eq!(
        (status, &terms["policies"]["privacy"]["version"]),
        (200, &json!("2"))
    );

    // Alice accepted version 1 only: she must accept version 2.
    let refused = new_client.get(ACCOUNT, Some(&token));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["errcode"], "M_TERMS_NOT_SIGNED");
    accept(&new_client, "2");
    assert_eq!(new_client.get(ACCOUNT, Some(&token)).status, 200);

    let jitsi = new_client.get("/widgets/jitsi", None);
    assert!(
        jitsi.text().contains("meet-two.example.org"),
        "{}",
        jitsi.text()
    );
    assert!(
        hearth.log().contains("finished processing request"),
        "{}",
        hearth.log()
    );

    // A config that does not parse: an error, and nothing changes.
    std::fs::write(&file, "[integrations.widgets\n").unwrap();
    reload(&hearth, 2);
    // A good config, but a certificate file that does not parse: nothing
    // changes either, not even the catalog, which alone would have loaded.
    std::fs::write(
        &file,
        config(
            &hs,
            &tls,
            "3",
            "meet-three.example.org",
            "info,tower_http=debug",
        ),
    )
    .unwrap();
    std::fs::write(tls.join("cert.pem"), "not a certificate").unwrap();
    reload(&hearth, 3);
    let log = hearth.log();
    assert_eq!(log.matches("config reload failed").count(), 2, "{log}");
    assert!(log.contains("no certificate found"), "{log}");
    assert_eq!(terms_version(&new_client.get(TERMS, None)), "2");
    let jitsi = new_client.get("/widgets/jitsi", None);
    assert!(
        jitsi.text().contains("meet-two.example.org"),
        "{}",
        jitsi.text()
    );

    let metrics = hearth.admin_get("/metrics").text();
    for line in [
        "hearth_config_reloads_total{outcome=\"ok\"} 1",
        "hearth_config_reloads_total{outcome=\"error\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(!hearth.log().contains(&token), "a token reached the log");
}
