//! Config section types shared by every service, and the value types config
//! files use: human-readable durations and sizes, and secrets that may come
//! from files.

use crate::Redacted;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A duration written as `"250ms"`, `"30s"`, `"5m"`, `"24h"` or `"7d"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"30s\" or \"24h\""))?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "invalid duration unit in {s:?}: use ms, s, m, h or d"
                ));
            }
        };
        n.checked_mul(ms)
            .map(|ms| Self(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration {s:?} is too long"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A size in bytes written as `"64KiB"`, `"1MiB"` or a plain integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: usize = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected e.g. \"64KiB\" or \"1MiB\""))?;
        let unit_size = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => {
                return Err(format!(
                    "invalid size unit in {s:?}: use B, KiB, MiB or GiB"
                ));
            }
        };
        n.checked_mul(unit_size)
            .map(Self)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Text(String),
                    Number(u64),
                }
                let text = match Raw::deserialize(d)? {
                    Raw::Text(t) => t,
                    Raw::Number(n) => {
                        return Err(serde::de::Error::custom(format!(
                            "expected a string with a unit, such as \"{n}s\" or \"{n}B\""
                        )));
                    }
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Duration);
string_serde!(ByteSize);

/// A secret config value. Never shown by `Debug`; serialized as a
/// placeholder so printing a config cannot leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub Redacted<String>);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Resolves a secret given either inline (`key`) or as a file (`key_file`).
/// The file's trailing newline is dropped, as `echo secret > file` leaves one.
pub fn resolve_secret(
    name: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!("set either `{name}` or `{name}_file`, not both")),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("`{name}_file` {}: {e}", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Ok(Some(Secret(Redacted::new(text.to_owned()))))
        }
        (None, None) => Ok(None),
    }
}

/// `[http]`: the public listener that serves every HTTP service by path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub bind: Vec<SocketAddr>,
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    pub max_body_size: ByteSize,
    pub request_timeout: Duration,
    pub trusted_proxies: Vec<IpAddr>,
    pub log_client_ips: bool,
    /// Requests one client address may have in progress at once; 0: no cap.
    pub max_requests_in_progress_per_client: u32,
    pub rate_limit: RateLimitConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: vec![SocketAddr::from(([127, 0, 0, 1], 8090))],
            tls_certificate: None,
            tls_private_key: None,
            max_body_size: ByteSize(1 << 20),
            request_timeout: Duration::secs(30),
            trusted_proxies: Vec::new(),
            log_client_ips: false,
            max_requests_in_progress_per_client: 64,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// `[http.rate_limit]`: a token bucket per client address.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 100,
        }
    }
}

/// `[admin]`: `/health` and `/metrics`, meant for loopback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub bind: Addresses,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: Addresses(vec![SocketAddr::from(([127, 0, 0, 1], 8091))]),
        }
    }
}

/// Listening addresses: a list, as `http.bind` takes, or one address, as
/// `admin.bind` took before it took a list too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Addresses(pub Vec<SocketAddr>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "an address such as \"127.0.0.1:8091\", or a list of them"
        )]
        enum Raw {
            One(SocketAddr),
            Many(Vec<SocketAddr>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(addr) => Self(vec![addr]),
            Raw::Many(addrs) => Self(addrs),
        })
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
    pub busy_timeout: Duration,
    pub sqlite_synchronous: crate::storage::SqliteSynchronous,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            max_connections: 10,
            busy_timeout: Duration::secs(5),
            sqlite_synchronous: crate::storage::SqliteSynchronous::Full,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_round_trip() {
        for s in ["250ms", "30s", "5m", "2h", "7d"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
        assert_eq!("90s".parse::<Duration>().unwrap().0.as_secs(), 90);
        assert_eq!("24h".parse::<Duration>().unwrap().to_string(), "1d");
        assert!("5 minutes".parse::<Duration>().is_err());
        assert!("h".parse::<Duration>().is_err());
        for s in ["512B", "64KiB", "1MiB", "2GiB"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("1MB".parse::<ByteSize>().is_err());
    }

    /// Issue 10 item 17: `admin.bind` takes a list like `http.bind`, and
    /// still one address, as configs written before say it.
    #[test]
    fn admin_bind_takes_one_address_or_a_list() {
        let one: AdminConfig = serde_json::from_str(r#"{"bind": "127.0.0.1:1"}"#).unwrap();
        assert_eq!(one.bind.0, vec!["127.0.0.1:1".parse().unwrap()]);
        let many: AdminConfig =
            serde_json::from_str(r#"{"bind": ["127.0.0.1:1", "[::1]:2"]}"#).unwrap();
        assert_eq!(many.bind.0.len(), 2);
        assert!(serde_json::from_str::<AdminConfig>(r#"{"bind": 5}"#).is_err());
    }

    #[test]
    fn secrets_come_inline_or_from_a_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "hunter2\n").unwrap();
        let got = resolve_secret("x", None, Some(&file)).unwrap().unwrap();
        assert_eq!(got.expose(), "hunter2");
        let inline = Secret(Redacted::new("a".into()));
        assert!(resolve_secret("x", Some(&inline), Some(&file)).is_err());
        let missing = resolve_secret("x", None, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.contains("x_file"));
        assert_eq!(format!("{inline:?}"), "[redacted]");
    }
}
