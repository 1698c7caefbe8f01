//! Which peers a client may relay to (RFC 8656 §10.2, §12.2 let a server
//! refuse with 403). The default deny list is a superset of the one
//! Synapse's coturn guide recommends, and denies whole address families
//! that embed an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)
//! rather than decoding them: that is the bypass class behind
//! CVE-2020-26262 and CVE-2026-27624.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `fe80::/10`, or a single address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `None` when the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid address block {s:?}: expected e.g. \"10.0.0.0/8\" or \"::1\"");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
    }
}

const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
    let [a, b, c, d, e, f, g, h] = segments;
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
        prefix,
    }
}

/// Peers refused unless allow-listed. Each line names its registry entry.
pub const DEFAULT_DENIED: &[Cidr] = &[
    v4(0, 0, 0, 0, 8),                     // "this network"; 0.0.0.0 reaches loopback
    v4(10, 0, 0, 0, 8),                    // private (RFC 1918)
    v4(100, 64, 0, 0, 10),                 // shared address space / CGNAT (RFC 6598)
    v4(127, 0, 0, 0, 8),                   // loopback
    v4(169, 254, 0, 0, 16),                // link-local, cloud metadata
    v4(172, 16, 0, 0, 12),                 // private (RFC 1918)
    v4(192, 0, 0, 0, 24),                  // IETF protocol assignments
    v4(192, 0, 2, 0, 24),                  // documentation TEST-NET-1
    v4(192, 88, 99, 0, 24),                // 6to4 relay anycast
    v4(192, 168, 0, 0, 16),                // private (RFC 1918)
    v4(198, 18, 0, 0, 15),                 // benchmarking
    v4(198, 51, 100, 0, 24),               // documentation TEST-NET-2
    v4(203, 0, 113, 0, 24),                // documentation TEST-NET-3
    v4(224, 0, 0, 0, 4),                   // multicast
    v4(240, 0, 0, 0, 4),                   // reserved, and broadcast
    v6([0; 8], 96),                        // ::, ::1 and IPv4-compatible (deprecated)
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), // IPv4-mapped
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), // IPv4-translated (SIIT)
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), // NAT64 well-known prefix
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // NAT64 local-use
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),  // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments, Teredo
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), // 6to4
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation (RFC 9637)
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),  // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),  // multicast
];

/// What the policy says about one peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// One of this server's own relay addresses that the deny list would
    /// refuse (a private or loopback relay address): allowed, but only
    /// toward the relay port range, so a client cannot use it to reach
    /// other services on the host.
    OwnRelay,
    Denied,
}

#[derive(Debug, Clone)]
pub(crate) struct PeerPolicy {
    allowed: Vec<Cidr>,
    denied: Vec<Cidr>,
    own: Vec<IpAddr>,
}

impl PeerPolicy {
    pub(crate) fn new(allowed: &[Cidr], extra_denied: &[Cidr], own: Vec<IpAddr>) -> Self {
        let mut denied = DEFAULT_DENIED.to_vec();
        denied.extend_from_slice(extra_denied);
        Self {
            allowed: allowed.to_vec(),
            denied,
            own,
        }
    }

    pub(crate) fn check(&self, ip: IpAddr) -> Verdict {
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Verdict::Allowed;
        }
        if !self.denied.iter().any(|c| c.contains(ip)) {
            return Verdict::Allowed;
        }
        if self.own.contains(&ip) {
            Verdict::OwnRelay
        } else {
            Verdict::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PeerPolicy {
        PeerPolicy::new(&[], &[], Vec::new())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Every entry of Synapse's recommended coturn list
    /// (docs/setup/turn/coturn.md), first and last address of each range.
    #[test]
    fn synapse_recommended_ranges_are_denied_at_both_ends() {
        let ranges = [
            ("10.0.0.0", "10.255.255.255"),
            ("192.168.0.0", "192.168.255.255"),
            ("172.16.0.0", "172.31.255.255"),
            ("0.0.0.0", "0.255.255.255"),
            ("100.64.0.0", "100.127.255.255"),
            ("127.0.0.0", "127.255.255.255"),
            ("169.254.0.0", "169.254.255.255"),
            ("192.0.0.0", "192.0.0.255"),
            ("192.0.2.0", "192.0.2.255"),
            ("192.88.99.0", "192.88.99.255"),
            ("198.18.0.0", "198.19.255.255"),
            ("198.51.100.0", "198.51.100.255"),
            ("203.0.113.0", "203.0.113.255"),
            ("240.0.0.0", "255.255.255.255"),
            // no-multicast-peers
            ("224.0.0.0", "239.255.255.255"),
            ("::1", "::1"),
            ("64:ff9b::", "64:ff9b::ffff:ffff"),
            ("::ffff:0.0.0.0", "::ffff:255.255.255.255"),
            ("100::", "100::ffff:ffff:ffff:ffff"),
            ("2001::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("2002::", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ];
        let p = policy();
        for (first, last) in ranges {
            assert_eq!(p.check(ip(first)), Verdict::Denied, "{first}");
            assert_eq!(p.check(ip(last)), Verdict::Denied, "{last}");
        }
    }

    /// CVE-2020-26262 (0.0.0.0, ::, ::1) and CVE-2026-27624 (IPv4-mapped
    /// IPv6), plus the other IPv6 spellings of an IPv4 loopback or private
    /// address.
    #[test]
    fn every_embedding_of_a_denied_ipv4_address_is_denied() {
        let p = policy();
        for s in [
            "0.0.0.0",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",                          // IPv4-compatible
            "::ffff:0:127.0.0.1",                   // IPv4-translated (SIIT)
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b:1::a00:1",                     // local-use NAT64
            "2002:7f00:1::",                        // 6to4 of 127.0.0.1
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo
            "2001:db8::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
        ] {
            assert_eq!(p.check(ip(s)), Verdict::Denied, "{s}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let p = policy();
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert_eq!(p.check(ip(s)), Verdict::Allowed, "{s}");
        }
    }

    #[test]
    fn allow_list_overrides_and_extra_denies_add() {
        let p = PeerPolicy::new(
            &["127.0.0.1".parse().unwrap(), "10.1.0.0/16".parse().unwrap()],
            &["8.8.8.0/24".parse().unwrap()],
            Vec::new(),
        );
        assert_eq!(p.check(ip("127.0.0.1")), Verdict::Allowed);
        assert_eq!(p.check(ip("127.0.0.2")), Verdict::Denied);
        assert_eq!(p.check(ip("10.1.2.3")), Verdict::Allowed);
        assert_eq!(p.check(ip("10.2.0.1")), Verdict::Denied);
        assert_eq!(p.check(ip("8.8.8.8")), Verdict::Denied);
    }

    #[test]
    fn own_relay_address_is_allowed_toward_relay_ports_only() {
        let p = PeerPolicy::new(&[], &[], vec![ip("10.0.0.5")]);
        assert_eq!(p.check(ip("10.0.0.5")), Verdict::OwnRelay);
        assert_eq!(p.check(ip("10.0.0.6")), Verdict::Denied);
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!(!"0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("::1")));
    }
}
