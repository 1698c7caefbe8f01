//! Federation peers in this process: TLS servers on 127.0.0.1 with
//! certificates from a throwaway CA, a fake DNS that sends test names
//! there, and key servers that publish what a test tells them to.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hearth_core::http::{Listener, serve, tls_acceptor};
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyVersion, SigningKey};
use hearth_core::signed_json::sign_json;
use hearth_core::time::now_ms;
use hearth_core::tls::{ServerCert, TlsFiles};
use hearth_federation::BoxFuture;
use hearth_federation::connect::{Dns, SrvTarget};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A throwaway CA; its certificate is `ca.pem` in a temporary directory.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Hearth test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `cert_name` only (a DNS name or an IP address),
    /// signed by this CA, and its key, written as PEM files.
    pub fn certificate(&self, cert_name: &str) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![cert_name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let files = TlsFiles {
            certificate: self.dir.path().join(format!("{cert_name}.crt")),
            private_key: self.dir.path().join(format!("{cert_name}.key")),
        };
        std::fs::write(&files.certificate, cert.pem()).unwrap();
        std::fs::write(&files.private_key, key.serialize_pem()).unwrap();
        files
    }

    /// A TLS listener on `tcp` with a [`TestCa::certificate`] for
    /// `cert_name`.
    pub fn listener(&self, tcp: TcpListener, cert_name: &str) -> Listener {
        Listener {
            tcp,
            tls: Some(tls_acceptor(
                &ServerCert::load(&self.certificate(cert_name)).unwrap(),
            )),
        }
    }
}

/// A listening socket on 127.0.0.1 and its port, for servers that must know
/// their own server name before they start.
pub async fn bind() -> (TcpListener, u16) {
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    (tcp, port)
}

pub fn spawn(listener: Listener, router: Router) {
    tokio::spawn(serve(listener, router, std::future::pending::<()>()));
}

/// Serves `router` over TLS with a certificate for `cert_name`; the port.
pub async fn tls_server(ca: &TestCa, cert_name: &str, router: Router) -> u16 {
    let (tcp, port) = bind().await;
    spawn(ca.listener(tcp, cert_name), router);
    port
}

/// Serves `router` over plain HTTP; the port.
pub async fn plain_server(router: Router) -> u16 {
    let (tcp, port) = bind().await;
    spawn(Listener { tcp, tls: None }, router);
    port
}

/// Maps every known name to 127.0.0.1, has no SRV records, and remembers
/// which names were looked up.
#[derive(Debug, Default)]
pub struct FakeDns {
    hosts: Vec<String>,
    asked: Mutex<Vec<String>>,
}

pub fn fake_dns(hosts: &[&str]) -> Arc<FakeDns> {
    Arc::new(FakeDns {
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        asked: Mutex::default(),
    })
}

impl FakeDns {
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Dns for FakeDns {
    fn srv(&self, name: &str) -> BoxFuture<'_, io::Result<Vec<SrvTarget>>> {
        self.asked.lock().unwrap().push(format!("SRV {name}"));
        Box::pin(async { Ok(Vec::new()) })
    }

    fn ip(&self, host: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        self.asked.lock().unwrap().push(host.to_owned());
        let known = self.hosts.iter().any(|h| h == host);
        Box::pin(async move {
            if known {
                Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"))
            }
        })
    }
}

pub fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

pub fn signing_key(version: &str, seed: u8) -> SigningKey {
    SigningKey::from_seed(KeyVersion::parse(version).unwrap(), [seed; 32])
}

/// A Server Keys object for `server` listing `listed`, signed by `signer`.
pub fn keys_object(
    server: &str,
    listed: &SigningKey,
    signer: &SigningKey,
    valid_until_ts: i64,
) -> Value {
    let mut keys = json!({
        "server_name": server,
        "verify_keys": { listed.key_id(): { "key": listed.public_key_base64() } },
        "old_verify_keys": {},
        "valid_until_ts": valid_until_ts,
    });
    sign_json(&mut keys, server, signer).unwrap();
    keys
}

pub fn an_hour_from_now() -> i64 {
    now_ms() + 3_600_000
}

/// Serves `/_matrix/key/v2/server` with whatever object is published,
/// counting fetches.
#[derive(Debug, Clone, Default)]
pub struct KeyServer {
    published: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    /// How long each answer takes, and whether it is a 503 instead.
    delay: Arc<Mutex<std::time::Duration>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl KeyServer {
    pub fn router(&self) -> Router {
        async fn server_keys(State(s): State<KeyServer>) -> axum::response::Response {
            use axum::response::IntoResponse;
            s.fetches.fetch_add(1, Ordering::SeqCst);
            let delay = *s.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if s.down.load(Ordering::SeqCst) {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            axum::Json(s.published.lock().unwrap().clone()).into_response()
        }
        Router::new()
            .route("/_matrix/key/v2/server", get(server_keys))
            .with_state(self.clone())
    }

    pub fn publish(&self, keys: Value) {
        *self.published.lock().unwrap() = keys;
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Answers only after `delay`.
    pub fn slow_down(&self, delay: std::time::Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Answers 503, as a server behind a proxy whose backend is down.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }
}

/// Starts a key server for `<host>:<port>` over TLS, publishing keys listing
/// `listed` signed by `signer`; its server name and handle.
pub async fn key_server(
    ca: &TestCa,
    host: &str,
    listed: &SigningKey,
    signer: &SigningKey,
) -> (ServerName, KeyServer) {
    let (tcp, port) = bind().await;
    let server = name(&format!("{host}:{port}"));
    let keys = KeyServer::default();
    keys.publish(keys_object(
        server.as_str(),
        listed,
        signer,
        an_hour_from_now(),
    ));
    spawn(ca.listener(tcp, host), keys.router());
    (server, keys)
}
