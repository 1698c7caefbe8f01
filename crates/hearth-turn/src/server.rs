//! Listeners, relay sockets and the tasks that move packets between them.
//!
//! Each UDP listener address is opened once per worker with SO_REUSEPORT,
//! so the kernel spreads clients over sockets by 4-tuple and every core
//! reads its own socket. A worker is a thread with a runtime of its own: a
//! client's Allocate lands on one worker, whose runtime then runs the
//! allocation's tasks (reading its relay socket and its socket connected to
//! the client), so a relayed packet never crosses threads. TCP and TLS
//! clients are served on the main runtime.

use crate::alloc::{Allocation, ClientLink, FiveTuple, Table, Transport, lock};
use crate::auth::Authenticator;
use crate::config::{Config, RelayAddr};
use crate::handler::{self, Outcome};
use crate::policy::PeerPolicy;
use crate::stats::{self, Relayed};
use crate::stun::{self, Builder, Class, attr, method};
use crate::udp::{HEADROOM, UdpSocket, register, with_batch};
use crate::{TurnError, stream};
use hearth_core::tls::ServerCert;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Socket buffers large enough to ride out scheduling hiccups at a few
/// hundred thousand packets per second (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`).
const LISTENER_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 256 << 10;
/// How often a client's own socket checks whether it still serves an
/// allocation (see [`client_to_relay`]).
const CLIENT_LINGER: Duration = Duration::from_secs(30);
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
    reservations: Mutex<HashMap<u64, (std::net::UdpSocket, SocketAddr, Instant)>>,
}

fn random_u64() -> u64 {
    let mut b = [0; 8];
    getrandom::fill(&mut b).expect("the OS random number generator works");
    u64::from_be_bytes(b)
}

fn udp_socket(
    addr: SocketAddr,
    reuse_port: bool,
    buffer: usize,
) -> io::Result<std::net::UdpSocket> {
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
            let socket = register(socket).ok()?;
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
        let socket = register(socket).ok()?;
        Some((Arc::new(socket), advertised, None))
    }

    /// The link for a new allocation. A UDP client gets a socket of its
    /// own, bound to the listener's address with SO_REUSEPORT and connected
    /// to the client: the kernel then delivers that client's datagrams to
    /// it, so each client has its own receive buffer and reader, and one
    /// busy client cannot overflow the listener that every newcomer shares.
    /// A client that allocates again over that socket keeps it. When that
    /// socket cannot be made, the listener's serves.
    pub(crate) fn client_link(self: &Arc<Self>, five: FiveTuple, link: &ClientLink) -> ClientLink {
        if let ClientLink::Udp(_) = link
            && let Ok(socket) = connected_udp(five.server, five.client)
        {
            let socket = Arc::new(socket);
            tokio::spawn(client_to_relay(self.clone(), five, socket.clone()));
            return ClientLink::Connected(socket);
        }
        link.clone()
    }

    /// Starts the allocation's relay task, then makes it visible.
    pub(crate) fn start_relay(self: &Arc<Self>, allocation: Arc<Allocation>) {
        let task = tokio::spawn(relay_to_client(self.clone(), allocation.clone()));
        allocation.add_task(task.abort_handle());
        self.table.insert(allocation);
    }

    /// Whether client data may go to `peer` now: a live permission (and,
    /// for this server's own addresses, a relay port) and bandwidth left.
    pub(crate) fn may_send(
        &self,
        allocation: &Allocation,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> bool {
        let mut state = lock(&allocation.state);
        match state.permission(peer.ip(), now) {
            Some(p) if !p.relay_ports_only || self.is_relay_port(peer.port()) => {}
            _ => {
                drop(state);
                stats::dropped(stats::Drop::NoPermission);
                return false;
            }
        }
        if let Some(bucket) = &mut state.bucket
            && !bucket.take(len, now)
        {
            drop(state);
            stats::dropped(stats::Drop::Bandwidth);
            return false;
        }
        true
    }

    /// The peer and payload of a ChannelData message from a client, if it
    /// may be relayed (RFC 8656 §12.5).
    pub(crate) fn channel_target<'a>(
        &self,
        allocation: &Allocation,
        data: &'a [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let payload = data.get(4..4 + len)?;
        let now = Instant::now();
        let peer = {
            let state = lock(&allocation.state);
            state.channel_by_number(number, now)?.peer
        };
        self.may_send(allocation, peer, len, now)
            .then_some((peer, payload))
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
    socket.get_ref().send_to(data, to).is_ok()
}

/// Sends a frame to the client without waiting: a client that does not
/// keep up loses relayed data, as it would over UDP.
fn to_client(link: &ClientLink, client: SocketAddr, frame: &[u8]) -> bool {
    match link {
        ClientLink::Udp(socket) => send_now(socket, frame, client),
        // No address: the kernel then uses the socket's cached route.
        ClientLink::Connected(socket) => socket.get_ref().send(frame).is_ok(),
        ClientLink::Stream(tx) => tx.try_send(frame.to_vec()).is_ok(),
    }
}

/// Reads one allocation's relay socket and forwards what its permissions
/// let through: as ChannelData when the peer has a channel, else as a
/// Data indication (RFC 8656 §11.3, §12.6).
async fn relay_to_client(shared: Arc<Shared>, allocation: Arc<Allocation>) {
    let relayed = Relayed::to_client();
    loop {
        let Ok(mut ready) = allocation.relay.readable().await else {
            return;
        };
        with_batch(|batch| {
            batch.drain(&mut ready, |buf, n, peer| {
                if let Some(peer) = peer {
                    forward_to_client(&shared, &allocation, buf, n, peer, &relayed);
                }
            });
        });
    }
}

fn forward_to_client(
    shared: &Shared,
    allocation: &Allocation,
    buf: &mut [u8],
    n: usize,
    peer: SocketAddr,
    relayed: &Relayed,
) {
    let now = Instant::now();
    let channel = {
        let mut state = lock(&allocation.state);
        if state.permission(peer.ip(), now).is_none() {
            drop(state);
            stats::dropped(stats::Drop::NoPermission);
            return;
        }
        if let Some(bucket) = &mut state.bucket
            && !bucket.take(n, now)
        {
            drop(state);
            stats::dropped(stats::Drop::Bandwidth);
            return;
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
    if sent {
        relayed.add(n);
    }
    if shared.log_client_ips {
        tracing::trace!(client = %allocation.five.client, %peer, bytes = n, "relayed to client");
    }
}

fn connected_udp(local: SocketAddr, client: SocketAddr) -> io::Result<UdpSocket> {
    let socket = udp_socket(local, true, RELAY_BUFFER)?;
    socket.connect(client)?;
    register(socket)
}

/// Reads a client's own socket: ChannelData for its allocation, and STUN
/// handled as the listener would, without awaiting.
///
/// The socket outlives the allocation by up to two `CLIENT_LINGER`s, while
/// it is read: until it is closed the kernel delivers the client's
/// datagrams to it, so a request that races the allocation's deletion, or a
/// new Allocate, is answered rather than lost unread.
async fn client_to_relay(shared: Arc<Shared>, five: FiveTuple, socket: Arc<UdpSocket>) {
    let relayed = Relayed::to_peer();
    let link = ClientLink::Connected(socket.clone());
    let mut allocation: Option<Arc<Allocation>> = None;
    // One timer for the reader's life, reset rather than made per read.
    let linger = tokio::time::sleep(CLIENT_LINGER);
    tokio::pin!(linger);
    loop {
        let ready = tokio::select! {
            biased;
            ready = socket.readable() => ready,
            () = &mut linger => {
                if shared.table.get(&five).is_none() {
                    return;
                }
                linger.as_mut().reset(tokio::time::Instant::now() + CLIENT_LINGER);
                continue;
            }
        };
        let Ok(mut ready) = ready else {
            return;
        };
        with_batch(|batch| {
            batch.drain(&mut ready, |buf, n, _| {
                let data = &buf[HEADROOM..HEADROOM + n];
                if n < 4 || !stun::is_channel_data(data[0]) {
                    handle_stun(&shared, data, five, &link, &relayed);
                    return;
                }
                if !allocation.as_ref().is_some_and(|a| a.is_alive()) {
                    allocation = shared.table.get(&five);
                }
                relay_channel_data(&shared, allocation.as_deref(), data, &relayed);
            });
        });
    }
}

/// One UDP listener socket's loop.
async fn udp_worker(shared: Arc<Shared>, socket: Arc<UdpSocket>, local: SocketAddr) {
    let link = ClientLink::Udp(socket.clone());
    let relayed = Relayed::to_peer();
    // This worker's view of the table: with SO_REUSEPORT the same client
    // always lands here, so it is looked up in the shared table once.
    let mut cache: HashMap<SocketAddr, Arc<Allocation>> = HashMap::new();
    let mut pruned = Instant::now();
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        with_batch(|batch| {
            batch.drain(&mut ready, |buf, n, client| {
                let Some(client) = client else {
                    return;
                };
                let data = &buf[HEADROOM..HEADROOM + n];
                let five = FiveTuple {
                    transport: Transport::Udp,
                    client,
                    server: local,
                };
                if n < 4 || !stun::is_channel_data(data[0]) {
                    handle_stun(&shared, data, five, &link, &relayed);
                    return;
                }
                let allocation = match cache.get(&client) {
                    Some(a) if a.is_alive() => Some(a.clone()),
                    _ => shared.table.get(&five).inspect(|a| {
                        cache.insert(client, a.clone());
                    }),
                };
                relay_channel_data(&shared, allocation.as_deref(), data, &relayed);
            });
        });
        if pruned.elapsed() > Duration::from_secs(1) {
            cache.retain(|_, a| a.is_alive());
            pruned = Instant::now();
        }
    }
}

/// Relays a ChannelData message from a client to its channel's peer; from
/// a client without an allocation it is dropped.
fn relay_channel_data(
    shared: &Shared,
    allocation: Option<&Allocation>,
    data: &[u8],
    relayed: &Relayed,
) {
    let Some(allocation) = allocation else {
        stats::dropped(stats::Drop::NoAllocation);
        return;
    };
    if let Some((peer, payload)) = shared.channel_target(allocation, data)
        && send_now(&allocation.relay, payload, peer)
    {
        relayed.add(payload.len());
    }
}

/// Handles a STUN message from a UDP client: the answer goes back over
/// `link`, a Send indication's data to its peer.
fn handle_stun(
    shared: &Arc<Shared>,
    data: &[u8],
    five: FiveTuple,
    link: &ClientLink,
    relayed: &Relayed,
) {
    match handler::handle(shared, data, five, link) {
        Outcome::Reply(reply) => {
            to_client(link, five.client, &reply);
        }
        Outcome::Relay {
            allocation,
            peer,
            data,
        } => {
            if send_now(&allocation.relay, data, peer) {
                relayed.add(data.len());
            }
        }
        Outcome::Nothing => {}
    }
}

/// A running TURN server's sockets, bound but not yet served.
#[derive(Debug)]
pub struct Server {
    pub(crate) shared: Arc<Shared>,
    /// Per worker, one socket for every UDP listener address.
    udp: Vec<Vec<(SocketAddr, std::net::UdpSocket)>>,
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
        // Each UDP worker is a thread with a runtime of its own: an
        // allocation's tasks run where its Allocate was handled, and no
        // packet wakes another thread or waits on a shared run queue.
        let (stop_udp, udp_stopped) = tokio::sync::watch::channel(false);
        let mut udp_threads = Vec::new();
        for (i, sockets) in self.udp.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(TurnError::Worker)?;
            let sockets = {
                let _registering = runtime.enter();
                sockets
                    .into_iter()
                    .map(|(local, socket)| Ok((local, Arc::new(register(socket)?))))
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(TurnError::Worker)?
            };
            let shared = shared.clone();
            let mut stopped = udp_stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("turn-udp-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        for (local, socket) in sockets {
                            tokio::spawn(udp_worker(shared.clone(), socket, local));
                        }
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                    // Dropping the runtime ends every task on it, the
                    // allocations' included.
                })
                .map_err(TurnError::Worker)?;
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
        let _ = stop_udp.send(true);
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
