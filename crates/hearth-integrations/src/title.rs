//! Fetching a user-given page for `widgets/title_lookup`, and finding its
//! title. The URL comes from a user, so every hop (redirects included)
//! goes through the shared guarded client (`hearth_federation::Outbound`:
//! address guard, time and size bounds), never as a trusted destination;
//! the whole lookup has its own time bound on top. [`PageFetcher::fetch`]
//! is the only place that touches the network.

use crate::config::TitleLookupConfig;
use bytes::Bytes;
use hearth_federation::connect::ConnectError;
use hearth_federation::guard;
use hearth_federation::outbound::{Outbound, OutboundError, Target};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::net::IpAddr;
use std::time::Duration;
use url::Url;

const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("only http and https URLs can be looked up")]
    Scheme,
    #[error("{0}")]
    Outbound(#[from] OutboundError),
    #[error("the page answered {0}")]
    Status(StatusCode),
    #[error("too many redirects")]
    Redirects,
    #[error("the page is larger than {0} bytes")]
    TooLarge(usize),
    #[error("timed out")]
    Timeout,
    #[error("private, loopback and link-local addresses are not looked up")]
    PrivateAddress,
}

impl FetchError {
    /// Whether the URL itself is refused, as opposed to the page failing.
    pub(crate) fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::Scheme
                | Self::PrivateAddress
                | Self::Outbound(
                    OutboundError::BadUrl(_)
                        | OutboundError::Connect(ConnectError::ForbiddenAddress(_))
                )
        )
    }
}

/// Fetches pages through the guarded outbound client.
#[derive(Debug, Clone)]
pub struct PageFetcher {
    outbound: Outbound,
    timeout: Duration,
    max_size: usize,
}

impl PageFetcher {
    pub fn new(outbound: Outbound, config: &TitleLookupConfig) -> Self {
        Self {
            outbound,
            timeout: config.timeout.0,
            max_size: config.max_page_size.0,
        }
    }

    /// The body of `url` after at most three redirects, each hop guarded.
    pub(crate) async fn fetch(&self, url: &Url) -> Result<Bytes, FetchError> {
        tokio::time::timeout(self.timeout, self.follow(url.clone()))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn follow(&self, mut url: Url) -> Result<Bytes, FetchError> {
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(FetchError::Scheme);
            }
            // The operator may let the shared client reach private
            // addresses (`federation.allow_private_addresses`, for private
            // federations); a user's URL naming a private IP outright is
            // refused all the same.
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if literal.is_some_and(guard::is_forbidden) {
                return Err(FetchError::PrivateAddress);
            }
            // A user's URL: never trusted past the private-address guard.
            let target = Target::parse(url.as_str(), false)?;
            let mut headers = HeaderMap::new();
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/html"));
            let response = self
                .outbound
                .send(Method::GET, &target, headers, Bytes::new())
                .await?;
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
            if response.body.len() > self.max_size {
                return Err(FetchError::TooLarge(self.max_size));
            }
            return Ok(response.body);
        }
        Err(FetchError::Redirects)
    }
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
}
