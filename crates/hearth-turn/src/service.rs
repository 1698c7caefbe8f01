//! The TURN service as the binary sees it ([`hearth_service::Service`]).

use crate::stream::tls_files;
use crate::{Config, Server, TurnError};
use hearth_core::config::Secret;
use hearth_core::ids::ServerName;
use hearth_core::storage::Schema;
use hearth_core::tls::ServerCert;
use hearth_service::{BoxFuture, Context, Parts, Prepared, Reload, Service, ServiceError, Task};
use std::net::IpAddr;
use std::sync::Arc;

/// TURN keeps nothing in the database.
pub static SCHEMA: Schema = Schema {
    component: "turn",
    depends_on: &[],
    migrations: &[],
};

fn service_error(e: TurnError) -> ServiceError {
    match e {
        TurnError::Config(m) => ServiceError::Config(m),
        other => ServiceError::Start(other.to_string()),
    }
}

/// Addresses clients on the internet cannot reach.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local(),
    }
}

impl Config {
    /// What production still needs, for the start-up summary.
    fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        if !self.tls_enabled() {
            advice.push(
                "turn: set tls_cert_file and tls_key_file so clients behind \
                 HTTPS-only firewalls can use turns:"
                    .to_owned(),
            );
        }
        if let Ok(relays) = self.relay_addrs() {
            for r in relays.iter().filter(|r| is_private(r.advertised)) {
                advice.push(format!(
                    "turn: relays are advertised as private address {}; set external_ip \
                     to the public address",
                    r.advertised
                ));
            }
        }
        advice
    }
}

impl Service for Config {
    fn name(&self) -> &'static str {
        "turn"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn check(&self, _server_name: &ServerName) -> Result<(), ServiceError> {
        Config::check(self).map_err(service_error)
    }

    fn build<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Parts, ServiceError>> {
        Box::pin(async move {
            let mut config = self.clone();
            // Synapse's guide makes the realm the server name.
            config
                .realm
                .get_or_insert_with(|| ctx.server_name.as_str().to_owned());
            let server = Server::bind(&config).map_err(service_error)?;
            let summary = server.summary();
            let reload = TurnReload {
                cert: server.tls_cert(),
                secret: config.secret().map_err(service_error)?,
            };
            let shutdown = ctx.shutdown.wait();
            let run = async move {
                if let Err(e) = server.run(shutdown).await {
                    tracing::error!(error = %e, "TURN server stopped");
                }
            };
            Ok(Parts {
                routes: None,
                tasks: vec![Task::new("turn", run)],
                summary,
                advice: config.advice(),
                reload: Some(Box::new(reload)),
            })
        })
    }
}

/// On reload TURN reads its certificate files again for the TLS listeners
/// it opened; the rest of its section (listeners, secret, relays, quotas)
/// needs a restart, and so does turning TLS on or off.
#[derive(Debug)]
struct TurnReload {
    cert: Option<Arc<ServerCert>>,
    /// The secret in use, to tell when `shared_secret_file` now holds
    /// another: the key did not change, its file did.
    secret: Option<Secret>,
}

impl Reload for TurnReload {
    fn keys(&self) -> &'static [&'static str] {
        &["tls_cert_file", "tls_key_file"]
    }

    fn prepare(&self, new: &dyn Service) -> Result<Prepared, ServiceError> {
        let new: &Config = hearth_service::section(new)?;
        let files = match (&new.tls_cert_file, &new.tls_key_file) {
            (Some(cert), Some(key)) if new.tls_enabled() => Some(tls_files(cert, key)),
            _ => None,
        };
        let mut prepared = match (&self.cert, files) {
            (Some(running), Some(files)) => {
                let key = ServerCert::read(&files)
                    .map_err(|e| ServiceError::Config(format!("tls_cert_file: {e}")))?;
                let running = running.clone();
                Prepared::new(vec!["TLS certificate".to_owned()], move || {
                    running.replace(key);
                })
            }
            (None, None) => Prepared::new(Vec::new(), || {}),
            _ => {
                let mut prepared = Prepared::new(Vec::new(), || {});
                prepared.needs_restart.push("turn.tls_cert_file".to_owned());
                prepared
            }
        };
        if new.secret().map_err(service_error)? != self.secret {
            let key = match new.shared_secret_file {
                Some(_) => "turn.shared_secret_file",
                None => "turn.shared_secret",
            };
            prepared.needs_restart.push(key.to_owned());
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// A self-signed `localhost` certificate in `dir`: its files and DER.
    fn certificate(dir: &std::path::Path, name: &str) -> (Config, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let config = Config {
            shared_secret: Some(Secret("s".to_owned().into())),
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: vec!["127.0.0.1:0".parse().unwrap()],
            tls_cert_file: Some(cert_file),
            tls_key_file: Some(key_file),
            relay_ip: vec!["127.0.0.1".parse().unwrap()],
            ..Config::default()
        };
        (config, cert.cert.der().to_vec())
    }

    /// The certificate a new TLS handshake with `addr` presents, trusting
    /// `roots`.
    async fn presented(addr: std::net::SocketAddr, roots: &[&[u8]]) -> Vec<u8> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.to_vec().into()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// SIGHUP with renewed files: nothing changes until the reload is
    /// committed, then new TURN-over-TLS handshakes get the new certificate.
    /// Files that do not load fail the prepare step; turning TLS off, or a
    /// secret file holding another secret, is named for a restart.
    #[tokio::test]
    async fn a_reload_swaps_the_tls_certificate_for_new_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let (config, old) = certificate(dir.path(), "old");
        let (renewed, new) = certificate(dir.path(), "new");
        let server = Server::bind(&config).unwrap();
        let addr = server.local_addrs().tls[0];
        let reload = TurnReload {
            cert: server.tls_cert(),
            secret: config.secret().unwrap(),
        };
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let roots = [old.as_slice(), new.as_slice()];
        assert_eq!(presented(addr, &roots).await, old);

        let prepared = reload.prepare(&renewed).unwrap();
        assert_eq!(presented(addr, &roots).await, old);
        assert_eq!(prepared.commit(), ["TLS certificate"]);
        assert_eq!(presented(addr, &roots).await, new);

        let broken = Config {
            tls_key_file: config.tls_cert_file.clone(),
            ..renewed.clone()
        };
        assert!(reload.prepare(&broken).is_err());
        let off = Config {
            tls_cert_file: None,
            tls_key_file: None,
            ..renewed.clone()
        };
        assert_eq!(
            reload.prepare(&off).unwrap().needs_restart,
            ["turn.tls_cert_file"]
        );
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "another\n").unwrap();
        let rotated = Config {
            shared_secret: None,
            shared_secret_file: Some(secret_file),
            ..renewed
        };
        assert_eq!(
            reload.prepare(&rotated).unwrap().needs_restart,
            ["turn.shared_secret_file"]
        );
    }
}
