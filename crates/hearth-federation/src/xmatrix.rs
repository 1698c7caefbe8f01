//! X-Matrix request authentication (Server-Server API, "Request
//! Authentication"): the origin signs `{method, uri, origin, destination,
//! content}` and sends `Authorization: X-Matrix origin=...,destination=...,
//! key=...,sig=...`. Identity servers receive the same with `destination_is`
//! in the signed JSON, as Synapse sends on `/3pid/unbind`.

use hearth_core::ids::ServerName;
use hearth_core::keys::SigningKey;
use hearth_core::signed_json::{self, SignatureError};
use serde_json::{Map, Value};

/// Who the request is for, and so which field the signed JSON carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A homeserver or notary: `destination`.
    Server(ServerName),
    /// An identity server: `destination_is`.
    IdentityServer(ServerName),
}

/// A parsed `Authorization: X-Matrix ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: ServerName,
    pub destination: Option<ServerName>,
    pub key: String,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XMatrixError {
    #[error("the Authorization header is not X-Matrix")]
    NotXMatrix,
    #[error("the X-Matrix header lacks `{0}`")]
    Missing(&'static str),
    #[error("the X-Matrix header is malformed: {0}")]
    Malformed(String),
    #[error("the request is for {0}, not this server")]
    WrongDestination(String),
    #[error("signature check failed: {0}")]
    Signature(String),
}

impl XMatrix {
    /// Parses per RFC 9110 §11.4: a case-insensitive scheme, then auth-params
    /// with case-insensitive names in any order, quoted or token values
    /// (tokens may hold colons, as older Synapse sends), unknown names ignored.
    pub fn parse(header: &str) -> Result<Self, XMatrixError> {
        let header = header.trim_start();
        let (scheme, rest) = header.split_once(' ').ok_or(XMatrixError::NotXMatrix)?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err(XMatrixError::NotXMatrix);
        }
        let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
        for (name, value) in auth_params(rest)? {
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key,
                "sig" => &mut sig,
                _ => continue,
            };
            *slot = Some(value);
        }
        let server =
            |s: String| ServerName::parse(&s).map_err(|e| XMatrixError::Malformed(e.to_string()));
        Ok(Self {
            origin: server(origin.ok_or(XMatrixError::Missing("origin"))?)?,
            destination: destination.map(server).transpose()?,
            key: key.ok_or(XMatrixError::Missing("key"))?,
            sig: sig.ok_or(XMatrixError::Missing("sig"))?,
        })
    }

    /// Formats as the spec advises senders to: lower-case names, quoted
    /// values, no spaces after commas.
    pub fn to_header(&self) -> String {
        let mut header = format!("X-Matrix origin=\"{}\"", self.origin);
        if let Some(destination) = &self.destination {
            header.push_str(&format!(",destination=\"{destination}\""));
        }
        header.push_str(&format!(",key=\"{}\",sig=\"{}\"", self.key, self.sig));
        header
    }
}

fn auth_params(mut rest: &str) -> Result<Vec<(String, String)>, XMatrixError> {
    let malformed = |why: &str| XMatrixError::Malformed(why.to_owned());
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Ok(params);
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| malformed("a parameter has no value"))?;
        let name = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(malformed("unterminated escape")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err(malformed("unterminated quoted value")),
                }
            };
            rest = &quoted[end + 1..];
            value
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let value = rest[..end].trim().to_owned();
            rest = &rest[end..];
            value
        };
        params.push((name, value));
    }
}

/// The JSON object an X-Matrix signature covers.
pub fn request_json(
    method: &str,
    uri: &str,
    origin: &ServerName,
    destination: &Destination,
    content: Option<&Value>,
) -> Value {
    let mut object = Map::new();
    object.insert("method".to_owned(), method.into());
    object.insert("uri".to_owned(), uri.into());
    object.insert("origin".to_owned(), origin.as_str().into());
    match destination {
        Destination::Server(name) => object.insert("destination".to_owned(), name.as_str().into()),
        Destination::IdentityServer(name) => {
            object.insert("destination_is".to_owned(), name.as_str().into())
        }
    };
    if let Some(content) = content {
        object.insert("content".to_owned(), content.clone());
    }
    Value::Object(object)
}

/// Signs a request and returns the `Authorization` header value.
pub fn sign_request(
    key: &SigningKey,
    origin: &ServerName,
    destination: &Destination,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> Result<String, SignatureError> {
    let mut json = request_json(method, uri, origin, destination, content);
    signed_json::sign_json(&mut json, origin.as_str(), key)?;
    let sig = signed_json::signatures_of(&json, origin.as_str())?
        .get(&key.key_id())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let header_destination = match destination {
        Destination::Server(name) => Some(name.clone()),
        Destination::IdentityServer(_) => None,
    };
    Ok(XMatrix {
        origin: origin.clone(),
        destination: header_destination,
        key: key.key_id(),
        sig,
    }
    .to_header())
}

/// Checks the header's `destination` against ours. Its absence is accepted,
/// as the spec asks of recipients; a mismatch is refused.
pub fn check_destination(header: &XMatrix, ours: &Destination) -> Result<(), XMatrixError> {
    let ours = match ours {
        Destination::Server(name) | Destination::IdentityServer(name) => name,
    };
    match &header.destination {
        Some(theirs) if theirs != ours => Err(XMatrixError::WrongDestination(theirs.to_string())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::keys::KeyVersion;
    use serde_json::json;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn parses_the_spec_example_and_lenient_forms() {
        let h = XMatrix::parse(
            r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#,
        )
        .unwrap();
        assert_eq!(h.origin, name("origin.hs.example.com"));
        assert_eq!(h.destination, Some(name("destination.hs.example.com")));
        assert_eq!(h.key, "ed25519:key1");
        assert_eq!(h.sig, "ABCDEF...");

        // Any case, any order, unquoted values with colons, unknown params.
        let h = XMatrix::parse(
            r#"x-matrix Sig="a\"b", KEY=ed25519:k, extra="x", Origin=hs.example:8448"#,
        )
        .unwrap();
        assert_eq!(h.origin, name("hs.example:8448"));
        assert_eq!(h.destination, None);
        assert_eq!(h.key, "ed25519:k");
        assert_eq!(h.sig, "a\"b");
    }

    #[test]
    fn rejects_other_schemes_and_missing_params() {
        assert_eq!(XMatrix::parse("Bearer abc"), Err(XMatrixError::NotXMatrix));
        assert_eq!(
            XMatrix::parse(r#"X-Matrix origin="a.org",key="ed25519:1""#),
            Err(XMatrixError::Missing("sig"))
        );
        assert!(matches!(
            XMatrix::parse(r#"X-Matrix origin="a.org,key="#),
            Err(XMatrixError::Malformed(_))
        ));
        assert!(matches!(
            XMatrix::parse(r#"X-Matrix origin="not a name",key="k",sig="s""#),
            Err(XMatrixError::Malformed(_))
        ));
    }

    #[test]
    fn signed_header_verifies_against_the_request_json() {
        let key = SigningKey::from_seed(KeyVersion::parse("a_test").unwrap(), [7; 32]);
        let content =
            json!({"mxid": "@a:hs.example", "threepid": {"medium": "email", "address": "a@b.c"}});
        for destination in [
            Destination::Server(name("dest.example")),
            Destination::IdentityServer(name("is.example")),
        ] {
            let header = sign_request(
                &key,
                &name("hs.example"),
                &destination,
                "POST",
                "/_matrix/identity/v2/3pid/unbind",
                Some(&content),
            )
            .unwrap();
            let parsed = XMatrix::parse(&header).unwrap();
            check_destination(&parsed, &destination).unwrap();
            let mut json = request_json(
                "POST",
                "/_matrix/identity/v2/3pid/unbind",
                &parsed.origin,
                &destination,
                Some(&content),
            );
            json["signatures"] = json!({"hs.example": {parsed.key.clone(): parsed.sig.clone()}});
            let vk = key.verify_key();
            signed_json::verify_json(&json, "hs.example", [(parsed.key.as_str(), &vk)]).unwrap();
        }
    }

    #[test]
    fn a_mismatched_destination_is_refused() {
        let header = XMatrix {
            origin: name("a.org"),
            destination: Some(name("elsewhere.org")),
            key: "ed25519:1".into(),
            sig: "x".into(),
        };
        assert_eq!(
            check_destination(&header, &Destination::Server(name("me.org"))),
            Err(XMatrixError::WrongDestination("elsewhere.org".into()))
        );
    }
}
