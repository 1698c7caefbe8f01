//! Server certificates from PEM files, replaceable while listeners run: a
//! reload swaps in the new chain and key, new handshakes present it, and
//! connections already open keep the session they negotiated. The public
//! HTTP listener and TURN's TLS listener share this one type.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Certificate chain and key files for a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// The certificate a listener presents, behind an atomic swap.
#[derive(Debug)]
pub struct ServerCert(ArcSwap<CertifiedKey>);

impl ServerCert {
    /// Reads and checks the files (see [`ServerCert::read`]).
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self(ArcSwap::new(Self::read(files)?))))
    }

    /// Reads the chain and key without touching any listener: the first
    /// half of a reload. The key must be the certificate's.
    pub fn read(files: &TlsFiles) -> Result<Arc<CertifiedKey>, String> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
        let cert_pem = read(&files.certificate)?;
        let key_pem = read(&files.private_key)?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", files.certificate.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate found",
                files.certificate.display()
            ));
        }
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| format!("{}: {e}", files.private_key.display()))?
            .ok_or_else(|| format!("{}: no private key found", files.private_key.display()))?;
        let key = CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| {
                format!(
                    "{} with {}: {e}",
                    files.certificate.display(),
                    files.private_key.display()
                )
            })?;
        Ok(Arc::new(key))
    }

    /// Presents `key` from the next handshake on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }

    /// A server config presenting this certificate, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A self-signed certificate for `localhost`, written into `dir` as
    /// `name`.
    fn write_cert(dir: &Path, name: &str) -> (TlsFiles, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let files = TlsFiles {
            certificate: dir.join(format!("{name}.pem")),
            private_key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.certificate, cert.cert.pem()).unwrap();
        std::fs::write(&files.private_key, cert.signing_key.serialize_pem()).unwrap();
        (files, cert.cert.der().to_vec())
    }

    /// Accepts one connection at a time on a thread, speaking TLS with
    /// `config` and echoing one byte; the port.
    fn echo_server(config: Arc<rustls::ServerConfig>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let config = config.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp.unwrap());
                    let mut byte = [0];
                    while tls.read_exact(&mut byte).is_ok() {
                        if tls.write_all(&byte).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

    /// Connects trusting the certificates `roots` (self-signed), and
    /// exchanges a byte, so the handshake is done.
    fn connect(port: u16, roots: &[&[u8]]) -> Client {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.to_vec().into()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let mut client =
            rustls::StreamOwned::new(conn, TcpStream::connect(("127.0.0.1", port)).unwrap());
        echo(&mut client);
        client
    }

    fn echo(client: &mut Client) {
        client.write_all(b"x").unwrap();
        let mut byte = [0];
        client.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    fn presented(client: &Client) -> Vec<u8> {
        client.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// After `replace`, a new handshake presents the new certificate, and a
    /// connection made before goes on with the old one.
    #[test]
    fn new_handshakes_present_the_replaced_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (old_files, old_der) = write_cert(dir.path(), "old.example");
        let (new_files, new_der) = write_cert(dir.path(), "new.example");
        let cert = ServerCert::load(&old_files).unwrap();
        let port = echo_server(cert.server_config(&[]));

        let roots = [old_der.as_slice(), new_der.as_slice()];
        let mut before = connect(port, &roots);
        assert_eq!(presented(&before), old_der);
        cert.replace(ServerCert::read(&new_files).unwrap());
        assert_eq!(presented(&connect(port, &roots)), new_der);
        echo(&mut before);
        assert_eq!(presented(&before), old_der);
    }

    /// What a reload must refuse before swapping anything.
    #[test]
    fn unreadable_or_mismatched_files_are_refused_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = write_cert(dir.path(), "a.example");
        let (b, _) = write_cert(dir.path(), "b.example");
        let mismatched = TlsFiles {
            certificate: a.certificate.clone(),
            private_key: b.private_key.clone(),
        };
        let err = ServerCert::read(&mismatched).unwrap_err();
        assert!(err.contains("a.example.pem"), "{err}");

        std::fs::write(&a.certificate, "not a certificate").unwrap();
        let err = ServerCert::read(&a).unwrap_err();
        assert!(err.contains("no certificate found"), "{err}");

        let missing = TlsFiles {
            certificate: dir.path().join("missing.pem"),
            private_key: b.private_key,
        };
        let err = ServerCert::read(&missing).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
