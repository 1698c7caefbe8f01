//! Identifiers parsed once at the edge, so an invalid one cannot travel further.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A server name per the spec appendix "Server Name":
/// `hostname [ ":" port ]`, where hostname is an IPv4 literal, a bracketed
/// IPv6 literal or a DNS name of `[A-Za-z0-9.-]`, at most 255 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName {
    full: String,
    host: Host,
    port: Option<u16>,
}

/// The hostname part of a server name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server name {0:?}")]
pub struct InvalidServerName(String);

impl ServerName {
    pub fn parse(s: &str) -> Result<Self, InvalidServerName> {
        let bad = || InvalidServerName(s.to_owned());
        let (host_part, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip6, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip = Ipv6Addr::from_str(ip6).map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':').ok_or_else(bad)?).ok_or_else(bad)?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(parse_port(p).ok_or_else(bad)?)),
                None => (s, None),
            };
            let host = if let Ok(ip) = Ipv4Addr::from_str(host) {
                Host::Ip(IpAddr::V4(ip))
            } else if !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                Host::Dns(host.to_owned())
            } else {
                return Err(bad());
            };
            (host, port)
        };
        Ok(Self {
            full: s.to_owned(),
            host: host_part,
            port,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The hostname as written, without brackets or port: for TLS names and DNS.
    pub fn hostname(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Dns(name) => name.clone(),
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

impl FromStr for ServerName {
    type Err = InvalidServerName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}

impl Serialize for ServerName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for ServerName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A user ID, `@localpart:server_name` (spec appendix "User Identifiers").
/// The localpart is checked loosely, as historical user IDs may hold any
/// printable ASCII except `:`; the server name strictly.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId {
    full: String,
    server_name: ServerName,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid user ID {0:?}")]
pub struct InvalidUserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, InvalidUserId> {
        let bad = || InvalidUserId(s.to_owned());
        if s.len() > 255 {
            return Err(bad());
        }
        let (localpart, server) = s
            .strip_prefix('@')
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(bad)?;
        if localpart.is_empty() || !localpart.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(bad());
        }
        let server_name = ServerName::parse(server).map_err(|_| bad())?;
        Ok(Self {
            full: s.to_owned(),
            server_name,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        let u = UserId::parse("@alice:example.org:8448").unwrap();
        assert_eq!(u.server_name().as_str(), "example.org:8448");
        assert_eq!(
            UserId::parse("@Al.ice=_/+:localhost").unwrap().as_str(),
            "@Al.ice=_/+:localhost"
        );
        for bad in [
            "alice:example.org",
            "@:example.org",
            "@alice",
            "@al ice:x.org",
            "@a:bad name",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_appendix_examples_parse() {
        for ok in [
            "matrix.org",
            "matrix.org:8888",
            "1.2.3.4",
            "1.2.3.4:1234",
            "[1234:5678::abcd]",
            "[1234:5678::abcd]:5678",
            "localhost:8008",
        ] {
            assert_eq!(ServerName::parse(ok).unwrap().as_str(), ok);
        }
        let v6 = ServerName::parse("[::1]:8448").unwrap();
        assert_eq!(v6.host(), &Host::Ip("::1".parse().unwrap()));
        assert_eq!(v6.port(), Some(8448));
        assert_eq!(v6.hostname(), "::1");
    }

    #[test]
    fn rejects_what_the_grammar_forbids() {
        for bad in [
            "",
            "example.org:",
            "example.org:99999",
            "example.org:+80",
            "exa mple.org",
            "example_org",
            "[::1",
            "[not-ip]:80",
            "::1",
            "@user:example.org",
            &"a".repeat(256),
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
