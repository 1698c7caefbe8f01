//! Dialling one destination: DNS through the pluggable [`Dns`], the address
//! guard, TLS with the right server name, then one HTTP/1.1 exchange bounded
//! in time and size.

use crate::BoxFuture;
use crate::guard;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName as TlsName;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// An SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The DNS lookups resolution needs; hickory in production, a map in tests.
pub trait Dns: Send + Sync {
    /// SRV records for `name`; an empty list when there are none.
    fn srv(&self, name: &str) -> BoxFuture<'_, io::Result<Vec<SrvTarget>>>;
    /// A and AAAA records for `host`, following CNAMEs.
    fn ip(&self, host: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>>;
}

/// The resolver: the system's, as configured in `/etc/resolv.conf`, or the
/// name servers the operator named (`federation.dns_servers`).
#[derive(Debug)]
pub struct SystemDns(hickory_resolver::TokioResolver);

impl SystemDns {
    /// `servers` empty: the system's configuration.
    pub fn new(servers: &[SocketAddr]) -> io::Result<Self> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        let builder = if servers.is_empty() {
            hickory_resolver::TokioResolver::builder_tokio().map_err(io::Error::other)?
        } else {
            let name_servers = servers
                .iter()
                .map(|addr| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut c| {
                            c.port = addr.port();
                            c
                        })
                        .collect();
                    NameServerConfig::new(addr.ip(), true, connections)
                })
                .collect();
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
        };
        Ok(Self(builder.build().map_err(io::Error::other)?))
    }
}

impl Dns for SystemDns {
    fn srv(&self, name: &str) -> BoxFuture<'_, io::Result<Vec<SrvTarget>>> {
        let name = name.to_owned();
        Box::pin(async move {
            match self.0.srv_lookup(name).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        hickory_resolver::proto::rr::RData::SRV(srv) => Some(SrvTarget {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                        }),
                        _ => None,
                    })
                    .collect()),
                Err(e) if e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(io::Error::other(e)),
            }
        })
    }

    fn ip(&self, host: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            let lookup = self.0.lookup_ip(host).await.map_err(io::Error::other)?;
            Ok(lookup.iter().collect())
        })
    }
}

/// Where to send one request: candidate endpoints in order, the TLS name the
/// certificate must match, and the `Host` header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub endpoints: Vec<(String, u16)>,
    pub tls_name: String,
    pub host_header: String,
    /// Plain HTTP: only ever from an operator's explicit override.
    pub plain_http: bool,
    /// Operator-named destinations skip the private-address guard.
    pub trusted: bool,
}

/// The cause of each variant is part of its message, and not also its
/// `source()`: an error chain printed in full (`{:#}`) would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DNS lookup for {host} failed: {cause}")]
    Dns { host: String, cause: io::Error },
    #[error("{0} resolves only to private or loopback addresses, which are not allowed")]
    ForbiddenAddress(String),
    #[error("could not connect to {0}")]
    Connect(String),
    #[error("TLS with {name} failed: {cause}")]
    Tls { name: String, cause: io::Error },
    #[error("invalid TLS name {0:?}")]
    TlsName(String),
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("timed out")]
    Timeout,
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

/// A response: status, headers and the whole (bounded) body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Idle connections kept per destination, for how long, and for how many
/// destinations: reuse saves a TCP and TLS handshake on repeated requests
/// (onbind callbacks, upstream notaries) without holding sockets for long.
const IDLE_PER_DESTINATION: usize = 4;
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
const IDLE_DESTINATIONS: usize = 256;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Connections that answered and may serve another request, by the exact
/// destination they were dialled for (so the same guard decision holds).
type Idle = std::sync::Mutex<lru::LruCache<Destination, Vec<(Sender, std::time::Instant)>>>;

/// Dials destinations. Cheap to clone; clones share idle connections.
#[derive(Clone)]
pub struct Connector {
    dns: Arc<dyn Dns>,
    tls: TlsConnector,
    allow_private: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_response_size: usize,
    idle: Arc<Idle>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("allow_private", &self.allow_private)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Limits and trust for a [`Connector`].
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    pub allow_private: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_size: usize,
}

impl Connector {
    pub fn new(
        dns: Arc<dyn Dns>,
        roots: rustls::RootCertStore,
        settings: ConnectorSettings,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            dns,
            tls: TlsConnector::from(Arc::new(config)),
            allow_private: settings.allow_private,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            max_response_size: settings.max_response_size,
            idle: Arc::new(std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(IDLE_DESTINATIONS).expect("not zero"),
            ))),
        }
    }

    pub fn dns(&self) -> &Arc<dyn Dns> {
        &self.dns
    }

    /// Sends `request` (whose URI is the path and query only) to the first
    /// endpoint of `destination` that accepts a connection. The whole
    /// exchange, body included, is bounded by the request timeout.
    pub async fn send(
        &self,
        destination: &Destination,
        request: Request<Full<Bytes>>,
    ) -> Result<Response, ConnectError> {
        tokio::time::timeout(self.request_timeout, self.exchange(destination, request))
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    async fn exchange(
        &self,
        destination: &Destination,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response, ConnectError> {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&destination.host_header)
                .map_err(|_| ConnectError::Http("invalid Host header".to_owned()))?,
        );
        let http = |e: hyper::Error| ConnectError::Http(e.to_string());
        // An idle connection first; a request it could not send (closed
        // meanwhile) goes out on the next one, or on a new connection.
        while let Some(mut sender) = self.take_idle(destination) {
            match sender.try_send_request(request).await {
                Ok(response) => return self.read(destination, sender, response).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(http(e.into_error())),
                },
            }
        }
        let stream = self.dial(destination).await?;
        let mut sender = if destination.plain_http {
            self.handshake(stream).await?
        } else {
            let name = tls_name(&destination.tls_name)?;
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|cause| ConnectError::Tls {
                    name: destination.tls_name.clone(),
                    cause,
                })?;
            self.handshake(tls).await?
        };
        let response = sender.send_request(request).await.map_err(http)?;
        self.read(destination, sender, response).await
    }

    async fn handshake<S>(&self, stream: S) -> Result<Sender, ConnectError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Http(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "outbound connection closed with an error");
            }
        });
        Ok(sender)
    }

    /// Reads the whole body within the size limit; the connection is kept
    /// for reuse once the answer was read whole.
    async fn read(
        &self,
        destination: &Destination,
        sender: Sender,
        response: http::Response<hyper::body::Incoming>,
    ) -> Result<Response, ConnectError> {
        let (parts, body) = response.into_parts();
        if parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|len| len > self.max_response_size)
        {
            return Err(ConnectError::TooLarge(self.max_response_size));
        }
        let body = Limited::new(body, self.max_response_size)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ConnectError::TooLarge(self.max_response_size)
                } else {
                    ConnectError::Http(e.to_string())
                }
            })?
            .to_bytes();
        self.put_idle(destination, sender);
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// An idle connection to `destination` still open and ready, if any.
    fn take_idle(&self, destination: &Destination) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.get_mut(destination)?;
        while let Some((sender, since)) = senders.pop() {
            if since.elapsed() < IDLE_TIMEOUT && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, destination: &Destination, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.get_or_insert_mut(destination.clone(), Vec::new);
        senders.retain(|(s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
        if senders.len() < IDLE_PER_DESTINATION {
            senders.push((sender, std::time::Instant::now()));
        }
    }

    /// Connects to the first reachable address among the endpoints.
    async fn dial(&self, destination: &Destination) -> Result<TcpStream, ConnectError> {
        let mut candidates: Vec<SocketAddr> = Vec::new();
        let mut last_dns_error = None;
        for (host, port) in &destination.endpoints {
            let ips = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.dns.ip(host).await {
                    Ok(ips) => ips,
                    Err(cause) => {
                        last_dns_error = Some(ConnectError::Dns {
                            host: host.clone(),
                            cause,
                        });
                        continue;
                    }
                },
            };
            candidates.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, *port)));
        }
        if candidates.is_empty() {
            return Err(last_dns_error
                .unwrap_or_else(|| ConnectError::Connect(destination.host_header.clone())));
        }
        if !(self.allow_private || destination.trusted) {
            candidates.retain(|addr| !guard::is_forbidden(addr.ip()));
            if candidates.is_empty() {
                return Err(ConnectError::ForbiddenAddress(
                    destination.host_header.clone(),
                ));
            }
        }
        for addr in &candidates {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "connect failed"),
                Err(_) => tracing::debug!(%addr, "connect timed out"),
            }
        }
        Err(ConnectError::Connect(destination.host_header.clone()))
    }
}

/// DNS names get SNI; IP literals are checked against the certificate's IP
/// entries and send no SNI, as the spec's TLS section asks.
fn tls_name(name: &str) -> Result<TlsName<'static>, ConnectError> {
    let bare = name.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(TlsName::IpAddress(ip.into()));
    }
    TlsName::try_from(bare.to_owned()).map_err(|_| ConnectError::TlsName(name.to_owned()))
}

/// The system's CA roots plus the operator's extra CA file.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system bundle may hold certificates rustls cannot parse; skip them.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificate found", path.display()));
        }
    }
    Ok(roots)
}
