//! Requests to URLs rather than server names: SMS gateways, upstream
//! notaries, page titles. They share the federation client's connector, so
//! the same address guard, TLS roots, and time and size bounds apply, and no
//! redirect is ever followed (a gateway cannot bounce a request elsewhere).

use crate::connect::{ConnectError, Connector, Destination, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::Full;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// Without the URL, whose path or query may hold a key.
    #[error("invalid URL: {0}")]
    BadUrl(&'static str),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A parsed `http` or `https` URL and whether the guard against private
/// addresses applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    destination: Destination,
    path_and_query: String,
}

impl Target {
    /// `allow_private` is for a URL the operator named and said lives on
    /// their own network; user-given URLs never get it.
    pub fn parse(url: &str, allow_private: bool) -> Result<Self, OutboundError> {
        let bad = OutboundError::BadUrl;
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let plain_http = match uri.scheme_str() {
            Some("https") => false,
            Some("http") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let bare = host.trim_matches(['[', ']']).to_owned();
        let default_port = if plain_http { 80 } else { 443 };
        let port = uri.port_u16().unwrap_or(default_port);
        let host_header = if port == default_port {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            destination: Destination {
                endpoints: vec![(bare.clone(), port)],
                tls_name: bare,
                host_header,
                plain_http,
                trusted: allow_private,
            },
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }

    /// Scheme, host and port, for logs (never the path: it may hold a key).
    pub fn origin(&self) -> String {
        let scheme = if self.destination.plain_http {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.destination.host_header)
    }
}

/// Sends requests to [`Target`]s. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    connector: Connector,
}

impl Outbound {
    pub fn new(connector: Connector) -> Self {
        Self { connector }
    }

    /// One request; the answer whatever its status, its body bounded.
    pub async fn send(
        &self,
        method: Method,
        target: &Target,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, OutboundError> {
        let mut request = Request::builder()
            .method(method)
            .uri(target.path_and_query.as_str())
            .header(
                http::header::USER_AGENT,
                concat!("Hearth/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| OutboundError::InvalidRequest(e.to_string()))?;
        request.headers_mut().extend(headers);
        Ok(self.connector.send(&target.destination, request).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_https_urls_for_host_tls_and_path() {
        let t = Target::parse("https://sms.example:8443/send?key=k", false).unwrap();
        assert_eq!(
            t.destination.endpoints,
            vec![("sms.example".to_owned(), 8443)]
        );
        assert_eq!(t.destination.host_header, "sms.example:8443");
        assert_eq!(t.path_and_query, "/send?key=k");
        assert!(!t.destination.plain_http && !t.destination.trusted);
        assert_eq!(t.origin(), "https://sms.example:8443");

        let t = Target::parse("http://[::1]", true).unwrap();
        assert_eq!(t.destination.endpoints, vec![("::1".to_owned(), 80)]);
        assert_eq!(t.destination.host_header, "[::1]");
        assert_eq!(t.path_and_query, "/");
        assert!(t.destination.plain_http && t.destination.trusted);

        for bad in ["ftp://x/", "nonsense", "https://user:pw@x/", "/relative"] {
            assert!(Target::parse(bad, false).is_err(), "{bad}");
        }
    }
}
