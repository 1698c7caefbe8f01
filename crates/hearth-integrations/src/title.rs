//! Fetching a user-given page for `widgets/title_lookup`, and finding its
//! title. The URL comes from a user, so every hop (redirects included)
//! goes through the federation crate's address guard, and the whole fetch
//! is bounded in time and size. [`PageFetcher::fetch`] is the only place
//! that touches the network.

use crate::config::TitleLookupConfig;
use bytes::Bytes;
use hearth_federation::connect::{
    ConnectError, Connector, ConnectorSettings, Destination, Dns, root_store,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("only http and https URLs can be looked up")]
    Scheme,
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("the page answered {0}")]
    Status(StatusCode),
    #[error("too many redirects")]
    Redirects,
    #[error("timed out")]
    Timeout,
}

impl FetchError {
    /// Whether the URL itself is refused, as opposed to the page failing.
    pub(crate) fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::Scheme | Self::Connect(ConnectError::ForbiddenAddress(_))
        )
    }
}

/// Fetches pages, refusing private addresses unless built for tests.
#[derive(Debug, Clone)]
pub struct PageFetcher {
    connector: Connector,
    timeout: Duration,
}

impl PageFetcher {
    /// `allow_private` is for tests whose pages live on loopback.
    pub fn new(
        dns: Arc<dyn Dns>,
        config: &TitleLookupConfig,
        allow_private: bool,
    ) -> Result<Self, String> {
        let connector = Connector::new(
            dns,
            root_store(None)?,
            ConnectorSettings {
                allow_private,
                connect_timeout: config.timeout.0,
                request_timeout: config.timeout.0,
                max_response_size: config.max_page_size.0,
            },
        );
        Ok(Self {
            connector,
            timeout: config.timeout.0,
        })
    }

    /// The body of `url` after at most three redirects, each hop guarded.
    pub(crate) async fn fetch(&self, url: &Url) -> Result<Bytes, FetchError> {
        tokio::time::timeout(self.timeout, self.follow(url.clone()))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn follow(&self, mut url: Url) -> Result<Bytes, FetchError> {
        for _ in 0..=MAX_REDIRECTS {
            let destination = destination(&url)?;
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            let request = Request::get(path)
                .header(http::header::ACCEPT, "text/html")
                .header(http::header::USER_AGENT, "Hearth title lookup")
                .body(Full::new(Bytes::new()))
                .map_err(|_| FetchError::Scheme)?;
            let response = self.connector.send(&destination, request).await?;
            if response.status.is_redirection() {
                url = response
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or(FetchError::Status(response.status))?;
                continue;
            }
            if !response.status.is_success() {
                return Err(FetchError::Status(response.status));
            }
            return Ok(response.body);
        }
        Err(FetchError::Redirects)
    }
}

fn destination(url: &Url) -> Result<Destination, FetchError> {
    let plain_http = match url.scheme() {
        "https" => false,
        "http" => true,
        _ => return Err(FetchError::Scheme),
    };
    let host = url.host_str().ok_or(FetchError::Scheme)?.to_owned();
    let port = url.port_or_known_default().ok_or(FetchError::Scheme)?;
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    Ok(Destination {
        endpoints: vec![(host.clone(), port)],
        tls_name: host,
        host_header,
        plain_http,
        trusted: false,
    })
}

/// The page's title: `og:title` when present (what previews show), else
/// `<title>`; entities decoded, whitespace collapsed, at most 200
/// characters.
pub(crate) fn find_title(html: &[u8]) -> Option<String> {
    let html = String::from_utf8_lossy(html);
    let lower = html.to_ascii_lowercase();
    let raw = og_title(&html, &lower).or_else(|| {
        let open = lower.find("<title")?;
        let start = open + lower[open..].find('>')? + 1;
        let end = start + lower[start..].find("</title")?;
        Some(html[start..end].to_owned())
    })?;
    let decoded = decode_entities(&raw);
    let collapsed = decoded.split_whitespace().collect::<Vec<_>>().join(" ");
    let title: String = collapsed.chars().take(200).collect();
    (!title.is_empty()).then_some(title)
}

fn og_title(html: &str, lower: &str) -> Option<String> {
    let mut from = 0;
    while let Some(at) = lower[from..].find("<meta") {
        let start = from + at;
        let end = start + lower[start..].find('>')?;
        let tag = &html[start..end];
        let tag_lower = &lower[start..end];
        if tag_lower.contains("property=\"og:title\"") || tag_lower.contains("property='og:title'")
        {
            return attribute(tag, tag_lower, "content");
        }
        from = end;
    }
    None
}

fn attribute(tag: &str, tag_lower: &str, name: &str) -> Option<String> {
    let at = tag_lower.find(&format!("{name}="))? + name.len() + 1;
    let quote = tag[at..].chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let rest = &tag[at + 1..];
    Some(rest[..rest.find(quote)?].to_owned())
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_title_element_and_decodes_it() {
        let html =
            b"<html><HEAD><Title lang=en>\n  Caf&eacute; &amp; Tea &#8211; &#x41;\n</TITLE></head>";
        assert_eq!(find_title(html).unwrap(), "Caf&eacute; & Tea \u{2013} A");
    }

    #[test]
    fn prefers_og_title() {
        let html = br#"<title>Site</title><meta name="x"><meta property="og:title" content="The &quot;real&quot; one">"#;
        assert_eq!(find_title(html).unwrap(), "The \"real\" one");
    }

    #[test]
    fn no_title_is_none_and_long_titles_are_cut() {
        assert_eq!(find_title(b"<p>nothing</p>"), None);
        assert_eq!(find_title(b"<title>  </title>"), None);
        let long = format!("<title>{}</title>", "x".repeat(500));
        assert_eq!(find_title(long.as_bytes()).unwrap().len(), 200);
    }

    #[test]
    fn destinations_follow_the_url() {
        let d = destination(&Url::parse("http://example.org:8080/a?b").unwrap()).unwrap();
        assert_eq!(d.endpoints, vec![("example.org".to_owned(), 8080)]);
        assert_eq!(d.host_header, "example.org:8080");
        assert!(d.plain_http && !d.trusted);
        let d = destination(&Url::parse("https://example.org/").unwrap()).unwrap();
        assert_eq!(d.endpoints, vec![("example.org".to_owned(), 443)]);
        assert!(!d.plain_http);
        assert!(matches!(
            destination(&Url::parse("ftp://example.org/").unwrap()),
            Err(FetchError::Scheme)
        ));
    }
}
