//! Listeners, relay sockets and the tasks that move packets between them.
//!
//! Each UDP listener address is opened once per worker with SO_REUSEPORT,
//! so the kernel spreads clients over sockets by 4-tuple and every core
//! reads its own socket. A worker ([`crate::worker`]) is a thread with an
//! epoll loop of its own: a client's Allocate lands on one worker, which
//! then reads the allocation's sockets too (its relay socket and its socket
//! connected to the client), so a relayed packet never crosses threads. TCP
//! and TLS clients are served on the main runtime.

use crate::alloc::{Allocation, ClientLink, FiveTuple, State, Table, lock};
use crate::auth::Authenticator;
use crate::config::{Config, RelayAddr};
use crate::policy::PeerPolicy;
use crate::stats;
use crate::stun::{self, Builder, Class, attr, method};
use crate::udp::HEADROOM;
use crate::worker::Worker;
use crate::{TurnError, stream};
use hearth_core::tls::ServerCert;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Socket buffers large enough to ride out scheduling hiccups at a few
/// hundred thousand packets per second (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`).
const LISTENER_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 256 << 10;
/// RFC 8656 §14.9: an EVEN-PORT reservation is held at least 30 s.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
const REALM_FALLBACK: &str = "hearth";

/// State every task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) auth: Authenticator,
    pub(crate) policy: PeerPolicy,
    pub(crate) relays: Vec<RelayAddr>,
    pub(crate) min_port: u16,
    pub(crate) max_port: u16,
    pub(crate) max_lifetime: u32,
    /// Bytes per second per allocation; 0 for no cap.
    pub(crate) bandwidth: u64,
    pub(crate) table: Table,
    pub(crate) log_client_ips: bool,
    /// EVEN-PORT R-bit reservations: token → (socket, advertised, expiry).
    reservations: Mutex<HashMap<u64, (UdpSocket, SocketAddr, Instant)>>,
}

fn random_u64() -> u64 {
    let mut b = [0; 8];
    getrandom::fill(&mut b).expect("the OS random number generator works");
    u64::from_be_bytes(b)
}

fn udp_socket(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // So `[::]:3478` and `0.0.0.0:3478` can both be bound.
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: the kernel clamps to its maximum, and a smaller buffer
    // only means earlier loss under bursts.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Shared {
    pub(crate) fn is_relay_port(&self, port: u16) -> bool {
        (self.min_port..=self.max_port).contains(&port)
    }

    /// Binds a relay socket on a random port of the range: an even one if
    /// asked, with the next port reserved for a later Allocate if `reserve`
    /// (RFC 8656 §7.2 steps for EVEN-PORT).
    pub(crate) fn bind_relay(
        &self,
        relay: &RelayAddr,
        even: bool,
        reserve: bool,
    ) -> Option<(Arc<UdpSocket>, SocketAddr, Option<u64>)> {
        let span = u32::from(self.max_port - self.min_port) + 1;
        let start = (random_u64() % u64::from(span)) as u32;
        for i in 0..span.min(128) {
            let mut port = self.min_port as u32 + (start + i) % span;
            if even && port % 2 == 1 {
                port -= 1;
                if port < u32::from(self.min_port) {
                    continue;
                }
            }
            let port = port as u16;
            let Ok(socket) = udp_socket(SocketAddr::new(relay.bind, port), false, RELAY_BUFFER)
            else {
                continue;
            };
            let token = if reserve {
                if port == self.max_port {
                    continue;
                }
                let next = SocketAddr::new(relay.bind, port + 1);
                let Ok(spare) = udp_socket(next, false, RELAY_BUFFER) else {
                    continue;
                };
                let token = random_u64();
                let advertised = SocketAddr::new(relay.advertised, port + 1);
                lock(&self.reservations).insert(
                    token,
                    (spare, advertised, Instant::now() + RESERVATION_LIFETIME),
                );
                Some(token)
            } else {
                None
            };
            return Some((
                Arc::new(socket),
                SocketAddr::new(relay.advertised, port),
                token,
            ));
        }
        None
    }

    /// The socket a RESERVATION-TOKEN holds; `None` (508) when unknown.
    pub(crate) fn take_reservation(
        &self,
        token: u64,
    ) -> Option<(Arc<UdpSocket>, SocketAddr, Option<u64>)> {
        let (socket, advertised, expires) = lock(&self.reservations).remove(&token)?;
        if expires <= Instant::now() {
            return None;
        }
        Some((Arc::new(socket), advertised, None))
    }

    /// The link for a new allocation. A UDP client gets a socket of its
    /// own, bound to the listener's address with SO_REUSEPORT and connected
    /// to the client: the kernel then delivers that client's datagrams to
    /// it, so each client has its own receive buffer and reader, and one
    /// busy client cannot overflow the listener that every newcomer shares.
    /// A client that allocates again over that socket keeps it. When that
    /// socket cannot be made, the listener's serves. The worker that
    /// handled the Allocate reads the new socket.
    pub(crate) fn client_link(&self, five: FiveTuple, link: &ClientLink) -> ClientLink {
        if let ClientLink::Udp(_) = link
            && let Ok(socket) = connected_udp(five.server, five.client)
        {
            return ClientLink::Connected(Arc::new(socket));
        }
        link.clone()
    }

    /// Drops a new allocation whose sockets could not be read, and its
    /// quota slot; its success response is never sent, so the client's
    /// retransmission tries again.
    pub(crate) fn abandon(&self, allocation: &Allocation, error: &io::Error) {
        tracing::warn!(%error, "TURN allocation abandoned: its sockets cannot be read");
        self.table.release(&allocation.quota_user);
    }

    /// Makes a new allocation visible, once its sockets are being read.
    pub(crate) fn publish(&self, allocation: Arc<Allocation>) {
        let transport = allocation.five.transport.label();
        self.table.insert(allocation);
        stats::allocation_created(transport);
        stats::set_allocations(self.table.len());
    }

    /// Whether client data may go to `peer` now: a live permission (and,
    /// for this server's own addresses, a relay port) and bandwidth left.
    /// Counts a refusal.
    pub(crate) fn may_send(
        &self,
        allocation: &Allocation,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> bool {
        let verdict = self.admit(&mut lock(&allocation.state), peer, len, now);
        verdict.map_err(stats::dropped).is_ok()
    }

    /// [`Shared::may_send`] under the caller's lock of the state; the
    /// refusal is returned, to be counted once the lock is released.
    fn admit(
        &self,
        state: &mut State,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Result<(), stats::Drop> {
        match state.permission(peer.ip(), now) {
            Some(p) if !p.relay_ports_only || self.is_relay_port(peer.port()) => {}
            _ => return Err(stats::Drop::NoPermission),
        }
        if let Some(bucket) = &mut state.bucket
            && !bucket.take(len, now)
        {
            return Err(stats::Drop::Bandwidth);
        }
        Ok(())
    }

    /// The peer and payload of a ChannelData message from a client, if it
    /// may be relayed (RFC 8656 §12.5). One lock of the state serves the
    /// channel lookup and the checks.
    pub(crate) fn channel_target<'a>(
        &self,
        allocation: &Allocation,
        data: &'a [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let payload = data.get(4..4 + len)?;
        let now = Instant::now();
        let verdict = {
            let mut state = lock(&allocation.state);
            let peer = state.channel_by_number(number, now)?.peer;
            self.admit(&mut state, peer, len, now).map(|()| peer)
        };
        verdict
            .map_err(stats::dropped)
            .ok()
            .map(|peer| (peer, payload))
    }

    #[cfg(test)]
    pub(crate) fn reservation_count(&self) -> usize {
        lock(&self.reservations).len()
    }

    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        if self.table.sweep(now) > 0 {
            stats::set_allocations(self.table.len());
        }
        lock(&self.reservations).retain(|_, (_, _, expires)| *expires > now);
    }
}

/// Sends a datagram now or not at all: a full send buffer drops it, as the
/// network would, so nothing waits for writability (see [`crate::udp`]).
pub(crate) fn send_now(socket: &UdpSocket, data: &[u8], to: SocketAddr) -> bool {
    socket.send_to(data, to).is_ok()
}

/// Sends a frame to the client without waiting: a client that does not
/// keep up loses relayed data, as it would over UDP.
pub(crate) fn to_client(link: &ClientLink, client: SocketAddr, frame: &[u8]) -> bool {
    match link {
        ClientLink::Udp(socket) => send_now(socket, frame, client),
        // No address: the kernel then uses the socket's cached route.
        ClientLink::Connected(socket) => socket.send(frame).is_ok(),
        ClientLink::Stream(tx) => tx.try_send(frame.to_vec()).is_ok(),
    }
}

/// Forwards a datagram from `peer`, read into `buf` at `HEADROOM` with
/// length `n`, to the allocation's client if its permissions let it
/// through: as ChannelData when the peer has a channel, else as a Data
/// indication (RFC 8656 §11.3, §12.6). Returns whether it was sent.
pub(crate) fn forward_to_client(
    shared: &Shared,
    allocation: &Allocation,
    buf: &mut [u8],
    n: usize,
    peer: SocketAddr,
) -> bool {
    let now = Instant::now();
    let channel = {
        let mut state = lock(&allocation.state);
        if state.permission(peer.ip(), now).is_none() {
            drop(state);
            stats::dropped(stats::Drop::NoPermission);
            return false;
        }
        if let Some(bucket) = &mut state.bucket
            && !bucket.take(n, now)
        {
            drop(state);
            stats::dropped(stats::Drop::Bandwidth);
            return false;
        }
        state.channel_by_peer(peer, now).map(|c| c.number)
    };
    let sent = match channel {
        Some(number) => {
            buf[..2].copy_from_slice(&number.to_be_bytes());
            buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            let mut end = HEADROOM + n;
            // RFC 8656 §12.5: over streams, ChannelData is padded to 4.
            if matches!(allocation.link, ClientLink::Stream(_)) {
                let padded = HEADROOM + stun::padded(n);
                buf[end..padded].fill(0);
                end = padded;
            }
            to_client(&allocation.link, allocation.five.client, &buf[..end])
        }
        None => {
            let mut txid = [0u8; 12];
            txid[..8].copy_from_slice(&random_u64().to_be_bytes());
            let frame = Builder::new(Class::Indication, method::DATA, &txid)
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
                .attr(attr::DATA, &buf[HEADROOM..HEADROOM + n])
                .finish();
            to_client(&allocation.link, allocation.five.client, &frame)
        }
    };
    if shared.log_client_ips {
        tracing::trace!(client = %allocation.five.client, %peer, bytes = n, "relayed to client");
    }
    sent
}

fn connected_udp(local: SocketAddr, client: SocketAddr) -> io::Result<UdpSocket> {
    let socket = udp_socket(local, true, RELAY_BUFFER)?;
    socket.connect(client)?;
    Ok(socket)
}

/// Relays a ChannelData message from a client to its channel's peer; from
/// a client without an allocation it is dropped. Returns the bytes sent.
pub(crate) fn relay_channel_data(
    shared: &Shared,
    allocation: Option<&Allocation>,
    data: &[u8],
) -> Option<usize> {
    let Some(allocation) = allocation else {
        stats::dropped(stats::Drop::NoAllocation);
        return None;
    };
    let (peer, payload) = shared.channel_target(allocation, data)?;
    send_now(&allocation.relay, payload, peer).then_some(payload.len())
}

/// A running TURN server's sockets, bound but not yet served.
#[derive(Debug)]
pub struct Server {
    pub(crate) shared: Arc<Shared>,
    /// Per worker, one socket for every UDP listener address.
    udp: Vec<Vec<(SocketAddr, UdpSocket)>>,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    tls_cert: Option<Arc<ServerCert>>,
}

/// Binds one listener address; the unspecified IPv6 address on a host
/// without IPv6 is skipped, as the defaults list it.
fn optional_bind<T>(
    addr: SocketAddr,
    what: &'static str,
    bind: impl FnOnce() -> io::Result<T>,
) -> Result<Option<T>, TurnError> {
    match bind() {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && matches!(
                    e.kind(),
                    io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported
                )
                || e.raw_os_error() == Some(97) =>
        {
            tracing::warn!(%addr, "no IPv6 on this host; TURN {what} listener skipped");
            Ok(None)
        }
        Err(source) => Err(TurnError::Bind { what, addr, source }),
    }
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl Server {
    /// Checks the config and opens every listener. Needs no runtime; the
    /// sockets are served by [`Server::run`].
    pub fn bind(config: &Config) -> Result<Self, TurnError> {
        config.check()?;
        let secret = config.secret()?.map(|s| s.expose().to_owned());
        let realm = config
            .realm
            .clone()
            .unwrap_or_else(|| REALM_FALLBACK.to_owned());
        let users = config
            .users
            .iter()
            .map(|(name, password)| (name.clone(), password.expose().to_owned()));
        let relays = config.relay_addrs()?;
        let own: Vec<IpAddr> = relays.iter().flat_map(|r| [r.bind, r.advertised]).collect();
        let shared = Arc::new(Shared {
            auth: Authenticator::new(realm, secret, users),
            policy: PeerPolicy::new(&config.allowed_peer_ips, &config.denied_peer_ips, own),
            relays,
            min_port: config.min_port,
            max_port: config.max_port,
            max_lifetime: u32::try_from(config.max_lifetime.0.as_secs()).unwrap_or(u32::MAX),
            bandwidth: config.max_bandwidth.0 as u64,
            table: Table::new(config.user_quota, config.total_quota),
            log_client_ips: config.log_client_ips,
            reservations: Mutex::default(),
        });
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut udp: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
        for &addr in &config.udp {
            // Port 0 must resolve to one port shared by all the workers.
            let Some(first) =
                optional_bind(addr, "udp", || udp_socket(addr, true, LISTENER_BUFFER))?
            else {
                continue;
            };
            let local = first.local_addr().map_err(|source| TurnError::Bind {
                what: "udp",
                addr,
                source,
            })?;
            udp[0].push((local, first));
            for worker in &mut udp[1..] {
                let socket =
                    udp_socket(local, true, LISTENER_BUFFER).map_err(|source| TurnError::Bind {
                        what: "udp",
                        addr,
                        source,
                    })?;
                worker.push((local, socket));
            }
        }
        // No UDP listener: no worker threads either.
        udp.retain(|sockets| !sockets.is_empty());
        let mut tcp = Vec::new();
        for &addr in &config.tcp {
            tcp.extend(optional_bind(addr, "tcp", || tcp_listener(addr))?);
        }
        let mut tls = Vec::new();
        let tls_cert = if config.tls_enabled() {
            let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
                return Err(TurnError::Config(
                    "set both `tls_cert_file` and `tls_key_file`".into(),
                ));
            };
            let tls_cert = stream::load_tls(cert, key)?;
            for &addr in &config.tls {
                tls.extend(optional_bind(addr, "tls", || tcp_listener(addr))?);
            }
            Some(tls_cert)
        } else {
            None
        };
        Ok(Self {
            shared,
            udp,
            tcp,
            tls,
            tls_cert,
        })
    }

    /// The TLS listeners' certificate, which a reload may replace.
    pub fn tls_cert(&self) -> Option<Arc<ServerCert>> {
        self.tls_cert.clone()
    }

    /// The bound UDP, TCP and TLS addresses (ports resolved).
    pub fn local_addrs(&self) -> LocalAddrs {
        let addr = |l: &std::net::TcpListener| l.local_addr().ok();
        LocalAddrs {
            udp: self
                .udp
                .first()
                .map(|sockets| sockets.iter().map(|(a, _)| *a).collect())
                .unwrap_or_default(),
            tcp: self.tcp.iter().filter_map(addr).collect(),
            tls: self.tls.iter().filter_map(addr).collect(),
        }
    }

    /// Lines for the start-up summary; no secrets.
    pub fn summary(&self) -> Vec<String> {
        let a = self.local_addrs();
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = vec![format!(
            "turn: udp [{}] tcp [{}] tls [{}]",
            list(&a.udp),
            list(&a.tcp),
            list(&a.tls)
        )];
        for r in &self.shared.relays {
            lines.push(format!(
                "turn: relays on {} ports {}-{}, advertised as {}",
                r.bind, self.shared.min_port, self.shared.max_port, r.advertised
            ));
        }
        lines
    }

    /// Serves until `shutdown` resolves, then closes every allocation.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), TurnError> {
        let shared = self.shared;
        let mut tasks = JoinSet::new();
        // Each UDP worker is a thread with an epoll loop of its own: an
        // allocation's sockets are read where its Allocate was handled, and
        // no packet wakes another thread or waits on a shared run queue.
        // Each stops when its end of `stops` closes.
        let mut stops = Vec::new();
        let mut udp_threads = Vec::new();
        for (i, sockets) in self.udp.into_iter().enumerate() {
            let (stop, stopped) = UnixStream::pair().map_err(TurnError::Worker)?;
            let worker =
                Worker::new(shared.clone(), sockets, stopped).map_err(TurnError::Worker)?;
            let thread = std::thread::Builder::new()
                .name(format!("turn-udp-{i}"))
                .spawn(move || worker.run())
                .map_err(TurnError::Worker)?;
            stops.push(stop);
            udp_threads.push(thread);
        }
        let tls = self.tls_cert.as_ref().map(stream::tls_acceptor);
        let listeners = self
            .tcp
            .into_iter()
            .map(|l| (l, None))
            .chain(self.tls.into_iter().map(|l| (l, tls.clone())));
        for (listener, acceptor) in listeners {
            let addr = listener.local_addr().map_err(|source| TurnError::Bind {
                what: "tcp",
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|source| TurnError::Bind {
                    what: "tcp",
                    addr,
                    source,
                })?;
            tasks.spawn(stream::accept_loop(shared.clone(), listener, acceptor));
        }
        let sweeper = shared.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeper.sweep();
            }
        });
        shutdown.await;
        tasks.shutdown().await;
        drop(stops);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in udp_threads {
                let _ = thread.join();
            }
        })
        .await;
        shared.table.clear();
        stats::set_allocations(0);
        Ok(())
    }
}

/// Where a bound [`Server`] listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddrs {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}
