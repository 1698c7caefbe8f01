//! Service tests: a real [`Server`] on loopback sockets, driven by a small
//! TURN client written against RFC 8656 (not against this server's code
//! paths: it uses only the codec).

use crate::auth::{long_term_key, rest_password};
use crate::stun::{Builder, Class, Message, TransactionId, attr, method};
use crate::{Config, Server};
use hearth_core::config::Secret;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

const SECRET: &str = "test secret";
const REALM: &str = "test.realm";
const WAIT: Duration = Duration::from_secs(5);

fn config() -> Config {
    Config {
        realm: Some(REALM.into()),
        shared_secret: Some(Secret(SECRET.to_owned().into())),
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Vec::new(),
        relay_ip: vec!["127.0.0.1".parse().unwrap()],
        // The test peers live on loopback, which the deny list refuses.
        allowed_peer_ips: vec!["127.0.0.1".parse().unwrap()],
        workers: 2,
        ..Config::default()
    }
}

struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    _stop: oneshot::Sender<()>,
}

fn start(config: Config) -> Running {
    let server = Server::bind(&config).unwrap();
    let addrs = server.local_addrs();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        udp: addrs.udp[0],
        tcp: addrs.tcp[0],
        tls: addrs.tls.first().copied(),
        _stop: stop,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rest_user(user: &str, valid_for: i64) -> (String, String) {
    let expiry = now() as i64 + valid_for;
    let username = format!("{expiry}:{user}");
    let password = rest_password(SECRET, &username);
    (username, password)
}

fn txid() -> TransactionId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut t = [0u8; 12];
    t[4..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    t
}

/// One parsed response, owned.
#[derive(Debug)]
struct Response {
    raw: Vec<u8>,
}

impl Response {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.raw).expect("a STUN message")
    }

    fn class(&self) -> Class {
        self.msg().class
    }

    fn code(&self) -> Option<u16> {
        let v = self.msg().get(attr::ERROR_CODE)?;
        Some(u16::from(v[2]) * 100 + u16::from(v[3]))
    }

    fn xor(&self, kind: u16) -> Option<SocketAddr> {
        self.msg().get_xor_address(kind)
    }
}

/// The client side of the transport: a UDP socket or a TCP stream.
enum Wire {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Wire {
    async fn send(&mut self, frame: &[u8]) {
        match self {
            Self::Udp(s, server) => {
                s.send_to(frame, *server).await.unwrap();
            }
            Self::Tcp(s) => s.write_all(frame).await.unwrap(),
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            match self {
                Self::Udp(s, _) => {
                    let mut buf = vec![0u8; 65536];
                    let n = s.recv(&mut buf).await.unwrap();
                    buf.truncate(n);
                    buf
                }
                Self::Tcp(s) => {
                    let mut header = [0u8; 4];
                    s.read_exact(&mut header).await.unwrap();
                    let len = crate::stream::frame_len(header).expect("a valid frame");
                    let mut frame = header.to_vec();
                    frame.resize(len, 0);
                    s.read_exact(&mut frame[4..]).await.unwrap();
                    frame
                }
            }
        })
        .await
        .expect("an answer in time")
    }
}

struct Client {
    wire: Wire,
    username: String,
    password: String,
    nonce: Option<String>,
}

impl Client {
    async fn udp(server: SocketAddr, (username, password): (String, String)) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(server).await.unwrap();
        Self {
            wire: Wire::Udp(socket, server),
            username,
            password,
            nonce: None,
        }
    }

    async fn tcp(server: SocketAddr, (username, password): (String, String)) -> Self {
        Self {
            wire: Wire::Tcp(TcpStream::connect(server).await.unwrap()),
            username,
            password,
            nonce: None,
        }
    }

    fn key(&self) -> [u8; 16] {
        long_term_key(&self.username, REALM, &self.password)
    }

    /// Sends a request, authenticated once a nonce is known, and answers
    /// one 401/438 challenge by retrying with the nonce it carries, as RFC
    /// 8489 §9.2.3 has clients do.
    async fn request(&mut self, m: u16, build: impl Fn(&mut Builder)) -> Response {
        for _ in 0..2 {
            let t = txid();
            let raw = self.build(m, &t, &build);
            self.wire.send(&raw).await;
            let response = self.response_to(&t).await;
            let code = response.code();
            if matches!(code, Some(401 | 438)) && self.nonce.is_none() || code == Some(438) {
                self.nonce = response.msg().get_str(attr::NONCE).map(str::to_owned);
                continue;
            }
            return response;
        }
        panic!("challenged twice");
    }

    fn build(&self, m: u16, t: &TransactionId, build: &impl Fn(&mut Builder)) -> Vec<u8> {
        let mut b = Builder::new(Class::Request, m, t);
        build(&mut b);
        if let Some(nonce) = &self.nonce {
            b.attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(&self.key());
        }
        b.fingerprint().finish()
    }

    /// The next STUN message with this transaction id, skipping data.
    async fn response_to(&mut self, t: &TransactionId) -> Response {
        loop {
            let raw = self.wire.recv().await;
            if Message::parse(&raw).is_some_and(|m| &m.txid == t) {
                return Response { raw };
            }
        }
    }

    async fn allocate(&mut self) -> SocketAddr {
        let r = self
            .request(method::ALLOCATE, |b| {
                b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
            })
            .await;
        assert_eq!(r.class(), Class::Success, "{:?}", r.code());
        assert_eq!(r.msg().check_integrity(&self.key()), Some(true));
        r.xor(attr::XOR_RELAYED_ADDRESS).unwrap()
    }

    /// A Refresh with lifetime 0, which deletes the allocation (RFC 8656
    /// §7.3).
    async fn delete(&mut self) -> Response {
        self.request(method::REFRESH, |b| {
            b.u32(attr::LIFETIME, 0);
        })
        .await
    }

    async fn permit(&mut self, peers: &[SocketAddr]) -> Response {
        self.request(method::CREATE_PERMISSION, |b| {
            for p in peers {
                b.xor_address(attr::XOR_PEER_ADDRESS, *p);
            }
        })
        .await
    }

    async fn bind(&mut self, channel: u16, peer: SocketAddr) -> Response {
        self.request(method::CHANNEL_BIND, |b| {
            b.u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .await
    }
}

async fn peer() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

async fn recv_from(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, s.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// RFC 8489 §7.3.1: a Binding request gets the reflexive address in
/// XOR-MAPPED-ADDRESS, with no authentication.
#[tokio::test]
async fn binding_reflects_the_client_address() {
    let server = start(config());
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let t = txid();
    let req = Builder::new(Class::Request, method::BINDING, &t)
        .fingerprint()
        .finish();
    socket.send_to(&req, server.udp).await.unwrap();
    let (raw, _) = recv_from(&socket).await;
    let r = Response { raw };
    assert_eq!(r.class(), Class::Success);
    assert_eq!(
        r.xor(attr::XOR_MAPPED_ADDRESS),
        Some(socket.local_addr().unwrap())
    );
    assert_eq!(r.msg().check_fingerprint(), Some(true));
}

/// RFC 8489 §9.2.4: no MESSAGE-INTEGRITY → 401 with REALM and NONCE; a
/// wrong password → 401 (never 400); an expired REST username → 401.
#[tokio::test]
async fn allocate_is_challenged_and_bad_credentials_get_401() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let t = txid();
    let raw = c.build(method::ALLOCATE, &t, &|b: &mut Builder| {
        b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    c.wire.send(&raw).await;
    let r = c.response_to(&t).await;
    assert_eq!(r.code(), Some(401));
    assert_eq!(r.msg().get_str(attr::REALM), Some(REALM));
    assert!(r.msg().get(attr::NONCE).is_some());
    assert!(r.msg().get(attr::MESSAGE_INTEGRITY).is_none());

    let (username, _) = rest_user("@alice:test", 60);
    let mut wrong = Client::udp(server.udp, (username, "not the password".into())).await;
    let r = wrong
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        })
        .await;
    assert_eq!(r.code(), Some(401));

    let mut expired = Client::udp(server.udp, rest_user("@alice:test", -1)).await;
    let r = expired
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        })
        .await;
    assert_eq!(r.code(), Some(401));

    let mut unknown = Client::udp(server.udp, ("mallory".into(), "x".into())).await;
    let r = unknown
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        })
        .await;
    assert_eq!(r.code(), Some(401));
}

/// RFC 8489 §9.2.4: a nonce the server did not issue (or issued too long
/// ago) is 438 with a fresh NONCE.
#[tokio::test]
async fn foreign_nonce_is_stale() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    c.nonce = Some(format!("{:016x}{}", now(), "00".repeat(12)));
    let t = txid();
    let raw = c.build(method::ALLOCATE, &t, &|b: &mut Builder| {
        b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    c.wire.send(&raw).await;
    let r = c.response_to(&t).await;
    assert_eq!(r.code(), Some(438));
    assert_ne!(
        r.msg().get_str(attr::NONCE),
        c.nonce.as_deref(),
        "a new nonce"
    );
}

/// The whole relay path over UDP: Send and Data indications, then a
/// channel both ways (RFC 8656 §11, §12).
#[tokio::test]
async fn relays_through_indications_and_channels() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let relayed = c.allocate().await;
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    let (peer, peer_addr) = peer().await;

    // Without a permission nothing passes, either way.
    let t = txid();
    let send = Builder::new(Class::Indication, method::SEND, &t)
        .xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
        .attr(attr::DATA, b"too early")
        .finish();
    c.wire.send(&send).await;

    let r = c.permit(&[peer_addr]).await;
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    let t = txid();
    let send = Builder::new(Class::Indication, method::SEND, &t)
        .xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
        .attr(attr::DATA, b"on time")
        .finish();
    c.wire.send(&send).await;
    let (got, from) = recv_from(&peer).await;
    assert_eq!(
        got, b"on time",
        "the Send before the permission was dropped"
    );
    assert_eq!(from, relayed);

    peer.send_to(b"hello client", relayed).await.unwrap();
    let raw = c.wire.recv().await;
    let data = Message::parse(&raw).unwrap();
    assert_eq!((data.class, data.method), (Class::Indication, method::DATA));
    assert_eq!(
        data.get_xor_address(attr::XOR_PEER_ADDRESS),
        Some(peer_addr)
    );
    assert_eq!(data.get(attr::DATA), Some(&b"hello client"[..]));

    let r = c.bind(0x4001, peer_addr).await;
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    let mut frame = vec![0x40, 0x01, 0x00, 0x05];
    frame.extend_from_slice(b"chan!");
    c.wire.send(&frame).await;
    let (got, _) = recv_from(&peer).await;
    assert_eq!(got, b"chan!");
    peer.send_to(b"back", relayed).await.unwrap();
    let raw = c.wire.recv().await;
    assert_eq!(raw, [0x40, 0x01, 0x00, 0x04, b'b', b'a', b'c', b'k']);
}

/// RFC 8656 §7.2: a retransmitted Allocate gets the same success, not
/// 437; another Allocate on the same 5-tuple is 437.
#[tokio::test]
async fn retransmitted_allocate_gets_the_same_answer() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let relayed = c.allocate().await;
    let t = txid();
    let raw = c.build(method::ALLOCATE, &t, &|b: &mut Builder| {
        b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    c.wire.send(&raw).await;
    let first = c.response_to(&t).await;
    assert_eq!(first.code(), Some(437));
    c.wire.send(&raw).await;
    let again = c.response_to(&t).await;
    assert_eq!(again.code(), Some(437));

    let mut d = Client::udp(server.udp, rest_user("@bob:test", 60)).await;
    // A challenged Refresh teaches the client a nonce (and there is no
    // allocation to refresh yet).
    assert_eq!(d.request(method::REFRESH, |_| {}).await.code(), Some(437));
    let t = txid();
    let raw = d.build(method::ALLOCATE, &t, &|b: &mut Builder| {
        b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    d.wire.send(&raw).await;
    let one = d.response_to(&t).await;
    d.wire.send(&raw).await;
    let two = d.response_to(&t).await;
    assert_eq!(one.class(), Class::Success);
    assert_eq!(one.raw, two.raw);
    assert_ne!(one.xor(attr::XOR_RELAYED_ADDRESS), Some(relayed));
}

/// RFC 8656 §5: a request on an allocation under another username is 441.
#[tokio::test]
async fn other_username_on_an_allocation_gets_441() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    c.allocate().await;
    let (username, password) = rest_user("@mallory:test", 60);
    c.username = username;
    c.password = password;
    let r = c.request(method::REFRESH, |_| {}).await;
    assert_eq!(r.code(), Some(441));
}

/// RFC 8656 §7.2/§7.3 lifetimes: max(600, min(requested, 3600)); zero
/// deletes the allocation, after which requests are 437.
#[tokio::test]
async fn lifetimes_follow_rfc_8656() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    c.allocate().await;
    for (asked, granted) in [
        (Some(7200), 3600),
        (Some(30), 600),
        (None, 600),
        (Some(1800), 1800),
    ] {
        let r = c
            .request(method::REFRESH, |b| {
                if let Some(asked) = asked {
                    b.u32(attr::LIFETIME, asked);
                }
            })
            .await;
        assert_eq!(r.msg().get_u32(attr::LIFETIME), Some(granted), "{asked:?}");
    }
    let r = c.delete().await;
    assert_eq!(r.msg().get_u32(attr::LIFETIME), Some(0));
    let (_, peer_addr) = peer().await;
    assert_eq!(c.permit(&[peer_addr]).await.code(), Some(437));
    c.allocate().await;
}

/// After a Refresh with lifetime 0 (RFC 8656 §7.3), the client's next
/// requests come to the socket the server connected to it. They are
/// answered at once, not lost unread, and an allocation made again over
/// that socket relays ChannelData both ways.
#[tokio::test]
async fn allocating_again_after_deletion_relays() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    c.allocate().await;
    let (peer, peer_addr) = peer().await;
    for round in 0..3 {
        let r = c.delete().await;
        assert_eq!(r.class(), Class::Success, "round {round}");
        assert_eq!(c.permit(&[peer_addr]).await.code(), Some(437));
        let relayed = c.allocate().await;
        assert_eq!(c.permit(&[peer_addr]).await.class(), Class::Success);
        assert_eq!(c.bind(0x4001, peer_addr).await.class(), Class::Success);
        c.wire.send(&[0x40, 0x01, 0x00, 0x02, b'h', b'i']).await;
        assert_eq!(recv_from(&peer).await, (b"hi".to_vec(), relayed));
        peer.send_to(b"yo", relayed).await.unwrap();
        assert_eq!(c.wire.recv().await, [0x40, 0x01, 0x00, 0x02, b'y', b'o']);
    }
}

/// A deleted allocation's relay port is given back: the UDP worker that
/// read it closes it at its next tick, so churn cannot drain the range.
#[tokio::test]
async fn a_deleted_allocation_frees_its_relay_port() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let relayed = c.allocate().await;
    assert!(
        std::net::UdpSocket::bind(relayed).is_err(),
        "held while allocated"
    );
    let r = c.delete().await;
    assert_eq!(r.class(), Class::Success);
    tokio::time::timeout(WAIT, async {
        while std::net::UdpSocket::bind(relayed).is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the relay port is free again");
}

/// Per-user and total quotas answer 486 (RFC 8656 §7.2 step 10).
#[tokio::test]
async fn quotas_answer_486() {
    let server = start(Config {
        user_quota: 2,
        total_quota: 3,
        ..config()
    });
    for _ in 0..2 {
        let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
        c.allocate().await;
    }
    // Renewed credentials of the same user share the quota.
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 120)).await;
    let r = c
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        })
        .await;
    assert_eq!(r.code(), Some(486));
    let mut b = Client::udp(server.udp, rest_user("@bob:test", 60)).await;
    b.allocate().await;
    let mut carol = Client::udp(server.udp, rest_user("@carol:test", 60)).await;
    let r = carol
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        })
        .await;
    assert_eq!(r.code(), Some(486));
}

/// RFC 8656 §10.2 / §12.2 let the server refuse peers with 403; every
/// default range and every IPv6 embedding of a private IPv4 address is
/// refused, on CreatePermission and ChannelBind alike.
#[tokio::test]
async fn denied_peers_get_403() {
    let server = start(Config {
        allowed_peer_ips: Vec::new(),
        ..config()
    });
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    c.allocate().await;
    let denied = [
        "0.0.0.0:5000",
        "0.1.2.3:5000",
        "10.0.0.1:5000",
        "100.64.0.1:5000",
        "127.0.0.2:5000",
        "169.254.169.254:80",
        "172.16.0.1:5000",
        "192.0.0.1:5000",
        "192.0.2.1:5000",
        "192.88.99.1:5000",
        "192.168.1.1:5000",
        "198.18.0.1:5000",
        "198.51.100.1:5000",
        "203.0.113.1:5000",
        "224.0.0.1:5000",
        "240.0.0.1:5000",
        "255.255.255.255:5000",
        "[::]:5000",
        "[::1]:5000",
        "[::ffff:127.0.0.1]:5000",
        "[::ffff:10.0.0.1]:5000",
        "[::127.0.0.1]:5000",
        "[64:ff9b::7f00:1]:5000",
        "[64:ff9b:1::a00:1]:5000",
        "[100::1]:5000",
        "[2001::1]:5000",
        "[2001:db8::1]:5000",
        "[2002:7f00:1::]:5000",
        "[fc00::1]:5000",
        "[fe80::1]:5000",
        "[ff02::1]:5000",
    ];
    for peer in denied {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(
            c.permit(&[peer]).await.code(),
            Some(403),
            "permission {peer}"
        );
        assert_eq!(
            c.bind(0x4000, peer).await.code(),
            Some(403),
            "channel {peer}"
        );
    }
    // One denied address spoils the request, and installs nothing.
    let public: SocketAddr = "8.8.8.8:5000".parse().unwrap();
    let mixed = c.permit(&[public, "10.0.0.1:1".parse().unwrap()]).await;
    assert_eq!(mixed.code(), Some(403));
    // Public peers are fine, and every address in one request is installed.
    let r = c.permit(&[public, "1.1.1.1:53".parse().unwrap()]).await;
    assert_eq!(r.class(), Class::Success);
    // The server's own (loopback) relay address: only toward relay ports.
    assert_eq!(
        c.bind(0x4002, "127.0.0.1:22".parse().unwrap()).await.code(),
        Some(403)
    );
    let own = c.bind(0x4002, "127.0.0.1:50000".parse().unwrap()).await;
    assert_eq!(own.class(), Class::Success, "{:?}", own.code());
}

/// RFC 8656 §10.2: CreatePermission installs every XOR-PEER-ADDRESS.
#[tokio::test]
async fn create_permission_installs_every_peer() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let relayed = c.allocate().await;
    let (p1, a1) = peer().await;
    let s2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Both peers share 127.0.0.1: permissions are per IP (RFC 8656 §9),
    // so check the second attribute's effect with two Sends.
    let r = c.permit(&[a1, s2.local_addr().unwrap()]).await;
    assert_eq!(r.class(), Class::Success);
    for (sock, addr) in [(&p1, a1), (&s2, s2.local_addr().unwrap())] {
        let t = txid();
        let send = Builder::new(Class::Indication, method::SEND, &t)
            .xor_address(attr::XOR_PEER_ADDRESS, addr)
            .attr(attr::DATA, b"x")
            .finish();
        c.wire.send(&send).await;
        let (got, from) = recv_from(sock).await;
        assert_eq!((got.as_slice(), from), (&b"x"[..], relayed));
    }
}

/// Garbage datagrams, truncated ChannelData and unknown channels are
/// dropped; the allocation next to them keeps working.
#[tokio::test]
async fn garbage_does_not_harm_allocations() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let _ = c.allocate().await;
    let (peer, peer_addr) = peer().await;
    assert_eq!(c.bind(0x4000, peer_addr).await.class(), Class::Success);
    let noise = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![0x40, 0x00, 0xff, 0xff, 1, 2],
        vec![0x00, 0x01, 0x00, 0x08],
        vec![0x80; 1500],
    ];
    for n in 0..200u32 {
        junk.push(n.to_be_bytes().repeat(n as usize % 40));
    }
    for j in &junk {
        noise.send_to(j, server.udp).await.unwrap();
        c.wire.send(j).await;
    }
    // A channel that is not bound, and ChannelData shorter than it says.
    c.wire.send(&[0x40, 0x09, 0x00, 0x01, 0xaa]).await;
    c.wire.send(&[0x40, 0x00, 0x00, 0x09, 0xaa]).await;
    c.wire.send(&[0x40, 0x00, 0x00, 0x02, b'o', b'k']).await;
    let (got, _) = recv_from(&peer).await;
    assert_eq!(got, b"ok");
}

/// RFC 8489 §14: an unknown comprehension-required attribute is 420
/// listing it; DONT-FRAGMENT counts as unknown (RFC 8656 §7.2 step 4).
#[tokio::test]
async fn unknown_required_attributes_get_420() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let r = c
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24).attr(0x001a, &[]);
        })
        .await;
    assert_eq!(r.code(), Some(420));
    assert_eq!(
        r.msg().get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x1a][..])
    );
    let r = c
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 6 << 24);
        })
        .await;
    assert_eq!(r.code(), Some(442), "TCP relays are RFC 6062, not served");
}

/// RFC 8656 §7.2 EVEN-PORT with R: an even relay port, and a token that
/// a second Allocate redeems for the next port.
#[tokio::test]
async fn even_port_reservation() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let r = c
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::EVEN_PORT, &[0x80]);
        })
        .await;
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    let port = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    let token = r.msg().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    let mut d = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    let r = d
        .request(method::ALLOCATE, |b| {
            b.u32(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::RESERVATION_TOKEN, &token);
        })
        .await;
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(), port + 1);
}

/// TURN over TCP: the same exchanges framed on a stream, ChannelData
/// padded to four bytes both ways (RFC 8656 §12.5), and the allocation
/// gone with the connection.
#[tokio::test]
async fn relays_over_tcp() {
    let server = start(config());
    let mut c = Client::tcp(server.tcp, rest_user("@alice:test", 60)).await;
    let relayed = c.allocate().await;
    let (peer, peer_addr) = peer().await;
    assert_eq!(c.bind(0x4abc, peer_addr).await.class(), Class::Success);
    c.wire
        .send(&[0x4a, 0xbc, 0x00, 0x03, b'a', b'b', b'c', 0])
        .await;
    let (got, _) = recv_from(&peer).await;
    assert_eq!(got, b"abc");
    peer.send_to(b"hello", relayed).await.unwrap();
    let frame = c.wire.recv().await;
    assert_eq!(
        frame,
        [0x4a, 0xbc, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]
    );
    drop(c);
    // With the connection gone, the relay port closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = UdpSocket::bind(relayed).await;
    assert!(again.is_ok(), "relay port released");
}

/// TURN over TLS with a certificate from files.
#[tokio::test]
async fn relays_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let server = start(Config {
        tls: vec!["127.0.0.1:0".parse().unwrap()],
        tls_cert_file: Some(cert_file),
        tls_key_file: Some(key_file),
        ..config()
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let tcp = TcpStream::connect(server.tls.unwrap()).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let t = txid();
    let req = Builder::new(Class::Request, method::BINDING, &t).finish();
    tls.write_all(&req).await.unwrap();
    let mut raw = vec![0u8; 20];
    tls.read_exact(&mut raw).await.unwrap();
    let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    raw.resize(20 + len, 0);
    tls.read_exact(&mut raw[20..]).await.unwrap();
    let r = Response { raw };
    assert_eq!(r.class(), Class::Success);
    assert!(r.xor(attr::XOR_MAPPED_ADDRESS).is_some());
}

/// Stateless nonces: a flood of unauthenticated Allocates from many
/// source ports creates no allocation and no per-client state.
#[tokio::test]
async fn unauthenticated_flood_leaves_no_state() {
    let config = config();
    let server = Server::bind(&config).unwrap();
    let shared = server.shared.clone();
    let udp = server.local_addrs().udp[0];
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..2000 {
        let t = txid();
        let req = Builder::new(Class::Request, method::ALLOCATE, &t)
            .u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .finish();
        socket.send_to(&req, udp).await.unwrap();
    }
    let t = txid();
    let req = Builder::new(Class::Request, method::BINDING, &t).finish();
    socket.send_to(&req, udp).await.unwrap();
    loop {
        let (raw, _) = recv_from(&socket).await;
        if Message::parse(&raw).is_some_and(|m| m.txid == t) {
            break;
        }
    }
    assert_eq!(shared.table.len(), 0);
    assert_eq!(shared.reservation_count(), 0);
}

/// RFC 8656 §12.2: a ChannelBind outside the channel range is 400. The
/// range accepted is RFC 5766's, which RFC 5766 clients still use.
#[tokio::test]
async fn channel_numbers_outside_the_range_get_400() {
    let server = start(config());
    let mut c = Client::udp(server.udp, rest_user("@alice:test", 60)).await;
    c.allocate().await;
    let (_peer, peer_addr) = peer().await;
    for bad in [0x0000, 0x3fff, 0x8000, 0xffff] {
        assert_eq!(c.bind(bad, peer_addr).await.code(), Some(400), "{bad:#x}");
    }
    assert_eq!(c.bind(0x7fff, peer_addr).await.class(), Class::Success);
}
