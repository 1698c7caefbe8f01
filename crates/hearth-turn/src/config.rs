//! The `[turn]` config section.

use crate::TurnError;
use crate::auth::{Credentials, rest_credentials};
use crate::policy::Cidr;
use hearth_core::config::{ByteSize, Duration, Secret, resolve_secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::SystemTime;

/// `[turn]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Off by default: TURN cannot run without a shared secret to check
    /// Synapse's credentials against.
    pub enabled: bool,
    /// The REALM of long-term credentials; the server name when unset.
    pub realm: Option<String>,
    /// The TURN REST secret shared with Synapse (`turn_shared_secret`).
    pub shared_secret: Option<Secret>,
    pub shared_secret_file: Option<PathBuf>,
    /// Fixed username → password pairs, for testing.
    pub users: BTreeMap<String, Secret>,
    /// UDP listeners (STUN and TURN).
    pub udp: Vec<SocketAddr>,
    /// TCP listeners (RFC 8656 framing over a stream).
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners; opened only when `tls_cert_file` and `tls_key_file`
    /// are set.
    pub tls: Vec<SocketAddr>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Local addresses relay sockets bind to, at most one per family.
    /// Empty: the address of the default route, IPv4 then IPv6.
    pub relay_ip: Vec<IpAddr>,
    /// Public addresses advertised for relays behind NAT, at most one per
    /// family; each stands in for the `relay_ip` of its family.
    pub external_ip: Vec<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    /// Longest allocation lifetime a client may ask for.
    pub max_lifetime: Duration,
    /// Concurrent allocations per user (0: unlimited).
    pub user_quota: usize,
    /// Concurrent allocations in all (0: unlimited).
    pub total_quota: usize,
    /// Bytes per second one allocation may relay, both ways (0: unlimited).
    pub max_bandwidth: ByteSize,
    /// Peers allowed even when the deny list covers them.
    pub allowed_peer_ips: Vec<Cidr>,
    /// Peers denied on top of the built-in list.
    pub denied_peer_ips: Vec<Cidr>,
    /// URIs handed out with credentials; derived from the listeners and
    /// the advertised address when empty.
    pub uris: Vec<String>,
    /// How long credentials from `hearth turn credentials` last.
    pub credential_lifetime: Duration,
    /// Sockets per UDP listener, each read by its own task (0: one per CPU).
    pub workers: usize,
    pub log_client_ips: bool,
}

impl Default for Config {
    fn default() -> Self {
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        Self {
            enabled: false,
            realm: None,
            shared_secret: None,
            shared_secret_file: None,
            users: BTreeMap::new(),
            udp: vec![SocketAddr::new(v4, 3478), SocketAddr::new(v6, 3478)],
            tcp: vec![SocketAddr::new(v4, 3478), SocketAddr::new(v6, 3478)],
            tls: vec![SocketAddr::new(v4, 5349), SocketAddr::new(v6, 5349)],
            tls_cert_file: None,
            tls_key_file: None,
            relay_ip: Vec::new(),
            external_ip: Vec::new(),
            min_port: 49152,
            max_port: 65535,
            max_lifetime: Duration::secs(3600),
            // Synapse's coturn guide: 4 streams per video call, 3 calls.
            user_quota: 12,
            total_quota: 1200,
            max_bandwidth: ByteSize(0),
            allowed_peer_ips: Vec::new(),
            denied_peer_ips: Vec::new(),
            uris: Vec::new(),
            credential_lifetime: Duration::secs(3600),
            workers: 0,
            log_client_ips: false,
        }
    }
}

/// A relay family: where relay sockets bind and what is advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayAddr {
    pub(crate) bind: IpAddr,
    pub(crate) advertised: IpAddr,
}

impl Config {
    /// The shared secret, from the config or its file.
    pub fn secret(&self) -> Result<Option<Secret>, TurnError> {
        resolve_secret(
            "shared_secret",
            self.shared_secret.as_ref(),
            self.shared_secret_file.as_deref(),
        )
        .map_err(TurnError::Config)
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_cert_file.is_some() && !self.tls.is_empty()
    }

    /// Everything `hearth config check` can tell without binding sockets.
    pub fn check(&self) -> Result<(), TurnError> {
        let bad = |m: String| Err(TurnError::Config(m));
        let secret = self.secret()?;
        if secret.is_none() && self.users.is_empty() {
            return bad(
                "set `shared_secret` or `shared_secret_file` (Synapse's `turn_shared_secret`), \
                 or `enabled = false`"
                    .into(),
            );
        }
        if secret.is_some_and(|s| s.expose().is_empty()) {
            return bad("`shared_secret` is empty".into());
        }
        if self.min_port < 1024 || self.min_port > self.max_port {
            return bad(format!(
                "relay ports {}..={} must lie within 1024..=65535, min before max (RFC 8656 §7.2)",
                self.min_port, self.max_port
            ));
        }
        for (name, list) in [
            ("relay_ip", &self.relay_ip),
            ("external_ip", &self.external_ip),
        ] {
            if list.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || list.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                return bad(format!("`{name}` takes at most one address per family"));
            }
            if list.iter().any(|ip| ip.is_unspecified()) {
                return bad(format!(
                    "`{name}` must be concrete addresses, not 0.0.0.0 or ::"
                ));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad("set both `tls_cert_file` and `tls_key_file`, or neither".into());
        }
        if self.udp.is_empty() && self.tcp.is_empty() && !self.tls_enabled() {
            return bad("no listener: set `udp`, `tcp` or `tls`".into());
        }
        if self.max_lifetime.0.as_secs() == 0 {
            return bad("`max_lifetime` must be at least 1s".into());
        }
        Ok(())
    }

    /// The relay address of each family this server relays for.
    pub(crate) fn relay_addrs(&self) -> Result<Vec<RelayAddr>, TurnError> {
        let mut binds = self.relay_ip.clone();
        if binds.is_empty() {
            binds.extend(default_route_ip("192.0.2.1:9"));
            binds.extend(default_route_ip("[2001:db8::1]:9"));
        }
        if binds.is_empty() {
            return Err(TurnError::Config(
                "no default route to find a relay address from; set `relay_ip`".into(),
            ));
        }
        Ok(binds
            .into_iter()
            .map(|bind| RelayAddr {
                bind,
                advertised: self
                    .external_ip
                    .iter()
                    .copied()
                    .find(|e| e.is_ipv4() == bind.is_ipv4())
                    .unwrap_or(bind),
            })
            .collect())
    }

    /// The URIs to hand out: `uris` when set, else one per listener kind
    /// on the advertised address of the first relay family.
    pub fn client_uris(&self) -> Vec<String> {
        if !self.uris.is_empty() {
            return self.uris.clone();
        }
        let Some(host) = self
            .external_ip
            .first()
            .copied()
            .or_else(|| self.relay_addrs().ok()?.first().map(|r| r.advertised))
        else {
            return Vec::new();
        };
        let host = match host {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut uris = Vec::new();
        if let Some(a) = self.udp.first() {
            uris.push(format!("turn:{host}:{}?transport=udp", a.port()));
        }
        if let Some(a) = self.tcp.first() {
            uris.push(format!("turn:{host}:{}?transport=tcp", a.port()));
        }
        if let (true, Some(a)) = (self.tls_enabled(), self.tls.first()) {
            uris.push(format!("turns:{host}:{}?transport=tcp", a.port()));
        }
        uris
    }

    /// `hearth turn credentials --user`: what Synapse would hand out.
    pub fn credentials(&self, user_id: &str, now: SystemTime) -> Result<Credentials, TurnError> {
        let secret = self.secret()?.ok_or_else(|| {
            TurnError::Config("credentials need `shared_secret` or `shared_secret_file`".into())
        })?;
        Ok(rest_credentials(
            secret.expose(),
            user_id,
            self.credential_lifetime.0,
            now,
            self.client_uris(),
        ))
    }
}

/// The local address the kernel would send from toward `probe`. A UDP
/// connect sends nothing.
fn default_route_ip(probe: &str) -> Option<IpAddr> {
    let probe: SocketAddr = probe.parse().ok()?;
    let any = if probe.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_section_parses_and_defaults_hold() {
        let c: Config = toml::from_str(
            r#"
            shared_secret = "s"
            udp = ["127.0.0.1:3478"]
            relay_ip = ["127.0.0.1"]
            external_ip = ["203.0.113.7"]
            allowed_peer_ips = ["10.0.0.1", "192.168.0.0/16"]
            max_lifetime = "30m"
            max_bandwidth = "1MiB"
            [users]
            alice = "wonderland"
            "#,
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.min_port, 49152);
        assert_eq!(c.user_quota, 12);
        assert_eq!(c.max_bandwidth, ByteSize(1 << 20));
        let relays = c.relay_addrs().unwrap();
        assert_eq!(relays.len(), 1);
        assert_eq!(
            relays[0].advertised,
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.client_uris(),
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:203.0.113.7:3478?transport=tcp"
            ]
        );
        assert!(toml::from_str::<Config>("nope = 1").is_err());
    }

    #[test]
    fn check_refuses_a_server_without_credentials() {
        let err = Config::default().check().unwrap_err().to_string();
        assert!(err.contains("shared_secret"), "{err}");
    }

    #[test]
    fn check_refuses_bad_ports_and_addresses() {
        let base = Config {
            shared_secret: Some(Secret("s".to_owned().into())),
            ..Config::default()
        };
        base.check().unwrap();
        let low = Config {
            min_port: 80,
            ..base.clone()
        };
        assert!(low.check().is_err());
        let two = Config {
            relay_ip: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            ..base.clone()
        };
        assert!(two.check().is_err());
        let half_tls = Config {
            tls_cert_file: Some("cert.pem".into()),
            ..base
        };
        assert!(half_tls.check().is_err());
    }

    #[test]
    fn secret_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let c = Config {
            shared_secret_file: Some(path),
            ..Config::default()
        };
        assert_eq!(c.secret().unwrap().unwrap().expose(), "from-file");
        let creds = c.credentials("@a:b", SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(creds.username, "3600:@a:b");
        assert_eq!(
            creds.password,
            crate::auth::rest_password("from-file", "3600:@a:b")
        );
    }
}
