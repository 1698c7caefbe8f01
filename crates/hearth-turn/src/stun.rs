//! STUN message codec (RFC 8489) with the TURN attributes of RFC 8656.
//!
//! Parsing borrows the datagram; building writes into one `Vec`. Only what a
//! TURN server needs is here: no client-side transaction logic.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub(crate) const MAGIC_COOKIE: u32 = 0x2112_a442;
pub(crate) const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Methods (RFC 8489 §18.2, RFC 8656 §17).
pub(crate) mod method {
    pub(crate) const BINDING: u16 = 0x001;
    pub(crate) const ALLOCATE: u16 = 0x003;
    pub(crate) const REFRESH: u16 = 0x004;
    pub(crate) const SEND: u16 = 0x006;
    pub(crate) const DATA: u16 = 0x007;
    pub(crate) const CREATE_PERMISSION: u16 = 0x008;
    pub(crate) const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18).
pub(crate) mod attr {
    pub(crate) const MAPPED_ADDRESS: u16 = 0x0001;
    pub(crate) const USERNAME: u16 = 0x0006;
    pub(crate) const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub(crate) const ERROR_CODE: u16 = 0x0009;
    pub(crate) const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
    pub(crate) const CHANNEL_NUMBER: u16 = 0x000c;
    pub(crate) const LIFETIME: u16 = 0x000d;
    pub(crate) const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub(crate) const DATA: u16 = 0x0013;
    pub(crate) const REALM: u16 = 0x0014;
    pub(crate) const NONCE: u16 = 0x0015;
    pub(crate) const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub(crate) const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub(crate) const EVEN_PORT: u16 = 0x0018;
    pub(crate) const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub(crate) const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub(crate) const RESERVATION_TOKEN: u16 = 0x0022;
    pub(crate) const PRIORITY: u16 = 0x0024;
    pub(crate) const USE_CANDIDATE: u16 = 0x0025;
    pub(crate) const SOFTWARE: u16 = 0x8022;
    pub(crate) const FINGERPRINT: u16 = 0x8028;
    #[cfg(test)]
    pub(crate) const ICE_CONTROLLED: u16 = 0x8029;
    pub(crate) const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
}

/// Comprehension-required attributes (type < 0x8000) this server
/// understands; any other one in a request earns a 420 (RFC 8489 §14).
/// DONT-FRAGMENT is deliberately absent: RFC 8656 §7.2 step 4 says a
/// server that does not support it treats it as unknown.
pub(crate) fn is_understood(t: u16) -> bool {
    use attr::*;
    t >= 0x8000
        || matches!(
            t,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
        )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Self::Request => 0b00,
            Self::Indication => 0b01,
            Self::Success => 0b10,
            Self::Error => 0b11,
        }
    }
}

/// The 14-bit message type interleaves the class bits C0/C1 into the
/// method (RFC 8489 §5, figure 3).
fn message_type(class: Class, method: u16) -> u16 {
    let c = class.bits();
    (method & 0x000f)
        | ((method & 0x0070) << 1)
        | ((method & 0x0f80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

fn split_type(t: u16) -> (Class, u16) {
    let method = (t & 0x000f) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0f80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (class, method)
}

pub(crate) type TransactionId = [u8; 12];

/// A parsed message borrowing its bytes. Construction checks the header,
/// the length and that attributes tile the body exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    raw: &'a [u8],
    pub(crate) class: Class,
    pub(crate) method: u16,
    pub(crate) txid: TransactionId,
}

/// One attribute: type, value and the offset of its header in the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attribute<'a> {
    pub(crate) kind: u16,
    pub(crate) value: &'a [u8],
    pub(crate) offset: usize,
}

impl<'a> Message<'a> {
    /// Parses one whole STUN message. `None` for anything else, including a
    /// message without the magic cookie (RFC 3489 clients are not served).
    pub(crate) fn parse(raw: &'a [u8]) -> Option<Self> {
        if raw.len() < HEADER_LEN || raw[0] & 0xc0 != 0 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        if len % 4 != 0 || raw.len() != HEADER_LEN + len {
            return None;
        }
        if u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) != MAGIC_COOKIE {
            return None;
        }
        let (class, method) = split_type(u16::from_be_bytes([raw[0], raw[1]]));
        let mut txid = [0; 12];
        txid.copy_from_slice(&raw[8..20]);
        let msg = Self {
            raw,
            class,
            method,
            txid,
        };
        // Walk once so later lookups can trust the framing.
        let mut at = HEADER_LEN;
        while at < raw.len() {
            let vlen = usize::from(u16::from_be_bytes([*raw.get(at + 2)?, *raw.get(at + 3)?]));
            at += 4 + padded(vlen);
            if at > raw.len() {
                return None;
            }
        }
        Some(msg)
    }

    /// Every attribute in order, including those after MESSAGE-INTEGRITY.
    pub(crate) fn all_attributes(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        let raw = self.raw;
        let mut at = HEADER_LEN;
        std::iter::from_fn(move || {
            if at + 4 > raw.len() {
                return None;
            }
            let kind = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let vlen = usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]]));
            let value = &raw[at + 4..at + 4 + vlen];
            let attribute = Attribute {
                kind,
                value,
                offset: at,
            };
            at += 4 + padded(vlen);
            Some(attribute)
        })
    }

    /// The attributes a receiver acts on: RFC 8489 §14.5 says everything
    /// after MESSAGE-INTEGRITY except FINGERPRINT is ignored.
    pub(crate) fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        let mut done = false;
        self.all_attributes().filter(move |a| {
            if done {
                return false;
            }
            if a.kind == attr::MESSAGE_INTEGRITY {
                done = true;
            }
            true
        })
    }

    pub(crate) fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.kind == kind).map(|a| a.value)
    }

    pub(crate) fn has(&self, kind: u16) -> bool {
        self.get(kind).is_some()
    }

    pub(crate) fn get_u32(&self, kind: u16) -> Option<u32> {
        self.get(kind)
            .and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)))
    }

    pub(crate) fn get_str(&self, kind: u16) -> Option<&'a str> {
        self.get(kind).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub(crate) fn get_xor_address(&self, kind: u16) -> Option<SocketAddr> {
        self.get(kind)
            .and_then(|v| decode_xor_address(v, &self.txid))
    }

    /// Comprehension-required attributes this server does not know.
    pub(crate) fn unknown_required(&self) -> Vec<u16> {
        self.attributes()
            .map(|a| a.kind)
            .filter(|&t| !is_understood(t))
            .collect()
    }

    /// Checks MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1 over the message
    /// up to the attribute, with the length field as if the message ended
    /// right after it. `None` when there is no MESSAGE-INTEGRITY.
    pub(crate) fn check_integrity(&self, key: &[u8]) -> Option<bool> {
        let mi = self
            .all_attributes()
            .find(|a| a.kind == attr::MESSAGE_INTEGRITY)?;
        if mi.value.len() != 20 {
            return Some(false);
        }
        let mut mac = hmac_sha1(key);
        let length = u16::try_from(mi.offset + 24 - HEADER_LEN).ok()?;
        mac.update(&self.raw[..2]);
        mac.update(&length.to_be_bytes());
        mac.update(&self.raw[4..mi.offset]);
        Some(mac.verify_slice(mi.value).is_ok())
    }

    /// Checks FINGERPRINT (RFC 8489 §14.7). `None` when absent.
    pub(crate) fn check_fingerprint(&self) -> Option<bool> {
        let fp = self
            .all_attributes()
            .find(|a| a.kind == attr::FINGERPRINT)?;
        let value = u32::from_be_bytes(fp.value.try_into().ok()?);
        Some(crc32(&self.raw[..fp.offset]) ^ FINGERPRINT_XOR == value)
    }
}

pub(crate) fn padded(len: usize) -> usize {
    (len + 3) & !3
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Decodes an XOR-*-ADDRESS value (RFC 8489 §14.2).
pub(crate) fn decode_xor_address(v: &[u8], txid: &TransactionId) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            IpAddr::V4(Ipv4Addr::from(x))
        }
        (0x02, 20) => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(txid);
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Builds one message. Attributes are appended in call order; the length
/// field is kept current so MESSAGE-INTEGRITY and FINGERPRINT can be added
/// last.
#[derive(Debug)]
pub(crate) struct Builder {
    buf: Vec<u8>,
    txid: TransactionId,
}

impl Builder {
    pub(crate) fn new(class: Class, method: u16, txid: &TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        Self { buf, txid: *txid }
    }

    fn set_length(&mut self) {
        let len = u16::try_from(self.buf.len() - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub(crate) fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).expect("STUN attributes are under 64 KiB");
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .resize(self.buf.len() + padded(value.len()) - value.len(), 0);
        self.set_length();
        self
    }

    pub(crate) fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    pub(crate) fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let mut v = Vec::with_capacity(20);
        v.push(0);
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(0x01);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            }
            IpAddr::V6(ip) => {
                v.push(0x02);
                v.extend_from_slice(&port.to_be_bytes());
                let mut mask = [0u8; 16];
                mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                mask[4..].copy_from_slice(&self.txid);
                v.extend(ip.octets().iter().zip(mask).map(|(a, b)| a ^ b));
            }
        }
        self.attr(kind, &v)
    }

    /// ERROR-CODE (RFC 8489 §14.8): class and number, then the reason.
    pub(crate) fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    pub(crate) fn integrity(&mut self, key: &[u8]) -> &mut Self {
        // The length must already count the MESSAGE-INTEGRITY attribute.
        let len = u16::try_from(self.buf.len() + 24 - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = hmac_sha1(key);
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY, &tag)
    }

    pub(crate) fn fingerprint(&mut self) -> &mut Self {
        let len = u16::try_from(self.buf.len() + 8 - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32(&self.buf) ^ FINGERPRINT_XOR;
        self.u32(attr::FINGERPRINT, crc)
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// CRC-32 as zlib computes it (ISO-HDLC, reflected 0xEDB88320), which is
/// what FINGERPRINT uses. The table is built at compile time.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// ChannelData (RFC 8656 §12.4): a 4-byte header, channel number then
/// length, in front of the application data.
pub(crate) fn is_channel_data(first: u8) -> bool {
    first & 0xc0 == 0x40
}

/// Channel numbers a client may bind. RFC 8656 §12 narrows RFC 5766's
/// 0x4000–0x7FFF to 0x4000–0x4FFF, but RFC 5766 clients still pick from
/// the whole range (coturn's own `turnutils_uclient` does), and the
/// reservation only matters for demultiplexing on the client's side
/// (RFC 7983), so the wider range is accepted: see
/// docs/decisions/0005-turn-engine.md.
pub(crate) fn is_valid_channel(n: u16) -> bool {
    (0x4000..=0x7fff).contains(&n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const SHORT_TERM: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    // RFC 5769 §2.1.
    const REQUEST: &str =
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74
        002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020
        000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
    // RFC 5769 §2.2.
    const RESPONSE_V4: &str =
        "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
        002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
    // RFC 5769 §2.3.
    const RESPONSE_V6: &str =
        "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
        002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9
        00080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c";
    // RFC 5769 §2.4.
    const LONG_TERM: &str = "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b90000
        0015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f726700
        00080014f67024656dd64a3e02b8e0712e85c9a28ca89666";

    #[test]
    fn rfc5769_2_1_sample_request() {
        let raw = hex(REQUEST);
        assert_eq!(raw.len(), 108);
        let m = Message::parse(&raw).unwrap();
        assert_eq!((m.class, m.method), (Class::Request, method::BINDING));
        assert_eq!(m.get_str(attr::SOFTWARE), Some("STUN test client"));
        assert_eq!(m.get_u32(attr::PRIORITY), Some(0x6e00_01ff));
        assert_eq!(
            m.get(attr::ICE_CONTROLLED),
            Some(&hex("932ff9b151263b36")[..])
        );
        assert_eq!(m.get_str(attr::USERNAME), Some("evtj:h6vY"));
        assert_eq!(m.check_integrity(SHORT_TERM), Some(true));
        assert_eq!(m.check_integrity(b"wrong"), Some(false));
        assert_eq!(m.check_fingerprint(), Some(true));
    }

    #[test]
    fn rfc5769_2_2_ipv4_response() {
        let raw = hex(RESPONSE_V4);
        assert_eq!(raw.len(), 80);
        let m = Message::parse(&raw).unwrap();
        assert_eq!((m.class, m.method), (Class::Success, method::BINDING));
        assert_eq!(
            m.get_xor_address(attr::XOR_MAPPED_ADDRESS),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(m.check_integrity(SHORT_TERM), Some(true));
        assert_eq!(m.check_fingerprint(), Some(true));
    }

    #[test]
    fn rfc5769_2_3_ipv6_response() {
        let raw = hex(RESPONSE_V6);
        assert_eq!(raw.len(), 92);
        let m = Message::parse(&raw).unwrap();
        assert_eq!(
            m.get_xor_address(attr::XOR_MAPPED_ADDRESS),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
        assert_eq!(m.check_integrity(SHORT_TERM), Some(true));
        assert_eq!(m.check_fingerprint(), Some(true));
    }

    #[test]
    fn rfc5769_2_4_long_term_request() {
        let raw = hex(LONG_TERM);
        assert_eq!(raw.len(), 116);
        let m = Message::parse(&raw).unwrap();
        assert_eq!(m.get_str(attr::USERNAME), Some("マトリックス"));
        assert_eq!(m.get_str(attr::NONCE), Some("f//499k954d6OL34oL9FSTvy64sA"));
        assert_eq!(m.get_str(attr::REALM), Some("example.org"));
        // SASLprep maps the RFC's password to "TheMatrIX" (RFC 5769 §2.4).
        let key = crate::auth::long_term_key("マトリックス", "example.org", "TheMatrIX");
        assert_eq!(key.to_vec(), hex("e8ca7ad59d5eb0518e312911d2dab2a9"));
        assert_eq!(m.check_integrity(&key), Some(true));
        assert_eq!(m.check_fingerprint(), None);
    }

    /// The builder must reproduce the RFC 5769 §2.2 response byte for byte,
    /// which proves the length handling of MESSAGE-INTEGRITY and FINGERPRINT.
    #[test]
    fn builder_reproduces_rfc5769_2_2_and_2_3() {
        for (vector, addr, addr_len) in [
            (RESPONSE_V4, "192.0.2.1:32853", 12),
            (
                RESPONSE_V6,
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
                24,
            ),
        ] {
            let raw = hex(vector);
            let txid: TransactionId = raw[8..20].try_into().unwrap();
            let built = Builder::new(Class::Success, method::BINDING, &txid)
                .attr(attr::SOFTWARE, b"test vector")
                .xor_address(attr::XOR_MAPPED_ADDRESS, addr.parse().unwrap())
                .integrity(SHORT_TERM)
                .fingerprint()
                .finish();
            // The RFC pads SOFTWARE with a space where we pad with zero
            // (RFC 8489 §14 lets padding be any value), so byte 35 and the
            // HMAC and CRC over it differ; everything else must match.
            assert_eq!(built.len(), raw.len());
            let m = Message::parse(&built).unwrap();
            assert_eq!(m.check_integrity(SHORT_TERM), Some(true));
            assert_eq!(m.check_fingerprint(), Some(true));
            assert_eq!(built[..35], raw[..35]);
            assert_eq!(built[36..36 + addr_len], raw[36..36 + addr_len]);
        }
    }

    #[test]
    fn truncated_and_misframed_messages_are_rejected() {
        let raw = hex(REQUEST);
        for cut in [0, 19, 20, 50, 107] {
            assert!(Message::parse(&raw[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad_len = raw.clone();
        bad_len[3] = 0x5c; // claims 4 more bytes than there are
        assert!(Message::parse(&bad_len).is_none());
        let mut bad_attr = raw.clone();
        bad_attr[23] = 0xff; // SOFTWARE claims to run past the end
        assert!(Message::parse(&bad_attr).is_none());
        let mut no_cookie = raw;
        no_cookie[4] = 0;
        assert!(Message::parse(&no_cookie).is_none());
    }

    #[test]
    fn message_type_round_trips_every_class() {
        for class in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            for m in [
                method::BINDING,
                method::ALLOCATE,
                method::CHANNEL_BIND,
                0xfff,
            ] {
                assert_eq!(split_type(message_type(class, m)), (class, m));
            }
        }
        // RFC 8489 §5: a Binding success response is 0x0101.
        assert_eq!(message_type(Class::Success, method::BINDING), 0x0101);
        assert_eq!(message_type(Class::Error, method::ALLOCATE), 0x0113);
    }

    /// RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY other than
    /// FINGERPRINT are ignored.
    #[test]
    fn attributes_after_integrity_are_ignored() {
        let txid = [7; 12];
        let raw = Builder::new(Class::Request, method::REFRESH, &txid)
            .u32(attr::LIFETIME, 600)
            .integrity(b"key")
            .u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .finish();
        let m = Message::parse(&raw).unwrap();
        assert_eq!(m.get_u32(attr::LIFETIME), Some(600));
        assert_eq!(m.get(attr::REQUESTED_TRANSPORT), None);
        assert_eq!(m.check_integrity(b"key"), Some(true));
    }

    /// ChannelData is told from STUN by its first two bits (RFC 8656
    /// §12), which covers every number a client may bind.
    #[test]
    fn channel_numbers_and_demultiplexing() {
        for n in [0x4000u16, 0x4fff, 0x5000, 0x7fff] {
            assert!(is_valid_channel(n), "{n:#x}");
            assert!(is_channel_data(n.to_be_bytes()[0]));
        }
        for n in [0x0000u16, 0x3fff, 0x8000, 0xffff] {
            assert!(!is_valid_channel(n), "{n:#x}");
        }
        assert!(!is_channel_data(0x00) && !is_channel_data(0x80) && !is_channel_data(0xc0));
    }

    #[test]
    fn crc32_matches_zlib() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
