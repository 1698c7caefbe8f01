//! The federation client: resolve a server name, honour operator overrides,
//! send one request, and read a JSON answer. Requests can be X-Matrix signed.

use crate::config::FederationConfig;
use crate::connect::{ConnectError, Connector, ConnectorSettings, Destination, Dns, root_store};
use crate::resolve::{Resolver, WellKnownFetch, WellKnownSource, cache_max_age};
use crate::{BoxFuture, xmatrix};
use bytes::Bytes;
use hearth_core::ids::ServerName;
use hearth_core::keys::SigningKey;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The cause is in the message and not also `source()`, so a full
    /// error chain does not print it twice.
    #[error("{server}: {cause}")]
    Connect { server: String, cause: ConnectError },
    #[error("{server} answered {status}: {body}")]
    Status {
        server: String,
        status: StatusCode,
        /// The Matrix error body when there is one.
        body: Value,
    },
    #[error("{server} sent a body that is not JSON: {detail}")]
    NotJson { server: String, detail: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("signing requests needs this server's signing key")]
    NoSigningKey,
}

/// This server's identity for X-Matrix signing.
#[derive(Debug, Clone)]
pub struct Origin {
    pub server_name: ServerName,
    pub key: SigningKey,
}

/// Outbound federation requests. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct FederationClient {
    connector: Connector,
    resolver: Resolver,
    overrides: Arc<HashMap<String, Destination>>,
    origin: Option<Arc<Origin>>,
}

impl FederationClient {
    /// Builds a client from config. `dns` is the system resolver in
    /// production and a test double in tests.
    pub fn new(
        config: &FederationConfig,
        dns: Arc<dyn Dns>,
        origin: Option<Origin>,
    ) -> Result<Self, String> {
        let roots = root_store(config.ca_file.as_deref())?;
        let connector = Connector::new(
            dns.clone(),
            roots,
            ConnectorSettings {
                allow_private: config.allow_private_addresses,
                connect_timeout: config.connect_timeout.0,
                request_timeout: config.request_timeout.0,
                max_response_size: config.max_response_size.0,
            },
        );
        let overrides = config
            .overrides
            .iter()
            .map(|(name, o)| {
                let server =
                    ServerName::parse(name).map_err(|e| format!("federation.overrides: {e}"))?;
                Ok((name.clone(), override_destination(&server, &o.url)?))
            })
            .collect::<Result<HashMap<_, _>, String>>()?;
        let well_known = Arc::new(HttpsWellKnown {
            connector: connector.clone(),
        });
        Ok(Self {
            resolver: Resolver::new(dns, well_known),
            connector,
            overrides: Arc::new(overrides),
            origin: origin.map(Arc::new),
        })
    }

    /// A client for URLs on the same connector (guard, roots, bounds).
    pub fn outbound(&self) -> crate::Outbound {
        crate::Outbound::new(self.connector.clone())
    }

    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_deref()
    }

    /// Where requests for `server` go: an override, or spec resolution.
    pub async fn destination(&self, server: &ServerName) -> Destination {
        match self.overrides.get(server.as_str()) {
            Some(d) => d.clone(),
            None => self.resolver.resolve(server).await,
        }
    }

    /// An unauthenticated GET, such as `/_matrix/key/v2/server` or
    /// `/_matrix/federation/v1/openid/userinfo`.
    pub async fn get_json(
        &self,
        server: &ServerName,
        path_and_query: &str,
    ) -> Result<Value, FederationError> {
        self.send(server, Method::GET, path_and_query, None, None)
            .await
    }

    /// An unauthenticated POST, such as `/_matrix/federation/v1/3pid/onbind`
    /// (Synapse checks a signature when one is sent, so none is).
    pub async fn post_json(
        &self,
        server: &ServerName,
        path_and_query: &str,
        content: &Value,
    ) -> Result<Value, FederationError> {
        self.send(server, Method::POST, path_and_query, Some(content), None)
            .await
    }

    /// A request signed with this server's key (X-Matrix, with `destination`).
    pub async fn send_signed(
        &self,
        server: &ServerName,
        method: Method,
        path_and_query: &str,
        content: Option<&Value>,
    ) -> Result<Value, FederationError> {
        let origin = self.origin.as_ref().ok_or(FederationError::NoSigningKey)?;
        let header = xmatrix::sign_request(
            &origin.key,
            &origin.server_name,
            &xmatrix::Destination::Server(server.clone()),
            method.as_str(),
            path_and_query,
            content,
        )
        .map_err(|e| FederationError::InvalidRequest(e.to_string()))?;
        self.send(server, method, path_and_query, content, Some(header))
            .await
    }

    async fn send(
        &self,
        server: &ServerName,
        method: Method,
        path_and_query: &str,
        content: Option<&Value>,
        authorization: Option<String>,
    ) -> Result<Value, FederationError> {
        let destination = self.destination(server).await;
        let body = match content {
            Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Bytes::new(),
        };
        let mut builder = Request::builder().method(method).uri(path_and_query);
        if content.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = authorization {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| FederationError::InvalidRequest(e.to_string()))?;
        let response = self
            .connector
            .send(&destination, request)
            .await
            .map_err(|cause| FederationError::Connect {
                server: server.to_string(),
                cause,
            })?;
        let parsed: Result<Value, _> = serde_json::from_slice(&response.body);
        if !response.status.is_success() {
            return Err(FederationError::Status {
                server: server.to_string(),
                status: response.status,
                body: parsed.unwrap_or(Value::Null),
            });
        }
        parsed.map_err(|e| FederationError::NotJson {
            server: server.to_string(),
            detail: e.to_string(),
        })
    }
}

/// An override URL becomes a trusted destination: the operator named it, so
/// the private-address guard does not apply; the TLS name and `Host` stay
/// the server name's.
fn override_destination(server: &ServerName, url: &str) -> Result<Destination, String> {
    let bad = |why: &str| format!("federation.overrides.\"{server}\".url {url:?}: {why}");
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let plain_http = match uri.scheme_str() {
        Some("https") => false,
        Some("http") => true,
        _ => return Err(bad("the scheme must be https or http")),
    };
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad("give only scheme, host and port"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(if plain_http { 80 } else { 443 });
    Ok(Destination {
        endpoints: vec![(host.trim_matches(['[', ']']).to_owned(), port)],
        tls_name: server.hostname(),
        host_header: server.as_str().to_owned(),
        plain_http,
        trusted: true,
    })
}

/// Fetches `.well-known/matrix/server` over HTTPS on port 443, following up
/// to five redirects to HTTPS URLs.
struct HttpsWellKnown {
    connector: Connector,
}

impl WellKnownSource for HttpsWellKnown {
    fn fetch(&self, hostname: &str) -> BoxFuture<'_, WellKnownFetch> {
        let hostname = hostname.to_owned();
        Box::pin(async move {
            let mut host = hostname;
            let mut port = 443;
            let mut path = "/.well-known/matrix/server".to_owned();
            for _ in 0..=MAX_REDIRECTS {
                let destination = Destination {
                    endpoints: vec![(host.clone(), port)],
                    tls_name: host.clone(),
                    host_header: if port == 443 {
                        host.clone()
                    } else {
                        format!("{host}:{port}")
                    },
                    plain_http: false,
                    trusted: false,
                };
                let Ok(request) = Request::get(path.as_str()).body(Full::new(Bytes::new())) else {
                    return WellKnownFetch::Unreachable;
                };
                let response = match self.connector.send(&destination, request).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "well-known fetch failed");
                        return WellKnownFetch::Unreachable;
                    }
                };
                if response.status.is_redirection() {
                    let Some(next) = response
                        .headers
                        .get(http::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| l.parse::<http::Uri>().ok())
                    else {
                        break;
                    };
                    if let Some(next_host) = next.host() {
                        if next.scheme_str() != Some("https") {
                            break;
                        }
                        host = next_host.to_owned();
                        port = next.port_u16().unwrap_or(443);
                    }
                    path = next
                        .path_and_query()
                        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
                    continue;
                }
                let max_age = response
                    .headers
                    .get(http::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok())
                    .and_then(cache_max_age);
                return WellKnownFetch::Response {
                    status: response.status.as_u16(),
                    body: response.body.to_vec(),
                    max_age,
                };
            }
            // A redirect loop, or a redirect we will not follow, is invalid.
            WellKnownFetch::Response {
                status: 310,
                body: Vec::new(),
                max_age: None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection error's cause is told once, however the error is
    /// printed: in its message, and not again as its `source()`, which
    /// error reports (anyhow's `{:#}`, `hearth`'s exit message) append.
    #[test]
    fn a_connection_error_names_its_cause_once() {
        let error = FederationError::Connect {
            server: "example.org".into(),
            cause: ConnectError::Dns {
                host: "example.org".into(),
                cause: std::io::Error::other("no such host"),
            },
        };
        let mut report = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            report.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert_eq!(
            report,
            "example.org: DNS lookup for example.org failed: no such host"
        );
    }

    #[test]
    fn overrides_keep_the_server_name_for_host_and_tls() {
        let server = ServerName::parse("localhost:8008").unwrap();
        let d = override_destination(&server, "http://127.0.0.1:18008").unwrap();
        assert_eq!(d.endpoints, vec![("127.0.0.1".to_owned(), 18008)]);
        assert_eq!(d.host_header, "localhost:8008");
        assert_eq!(d.tls_name, "localhost");
        assert!(d.plain_http && d.trusted);
        let d = override_destination(&server, "https://[::1]").unwrap();
        assert_eq!(d.endpoints, vec![("::1".to_owned(), 443)]);
        assert!(!d.plain_http);
        for bad in ["ftp://x", "https://x/path", "nonsense"] {
            assert!(override_destination(&server, bad).is_err(), "{bad}");
        }
    }
}
