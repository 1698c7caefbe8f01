//! A UDP worker: one thread, one epoll instance, no async runtime.
//!
//! It reads its own socket of each UDP listener (SO_REUSEPORT spreads
//! clients over the workers by 4-tuple) and the sockets of every
//! allocation made through them: the relay socket, and the socket
//! connected to the client. Each readiness event is served in place, the
//! reads and the sends they cause, with no task to wake or poll:
//! a runtime's readiness and task machinery was most of what the relay
//! spent in user space (decision 0005).
//!
//! A listener, which every new client shares, is registered edge-triggered
//! and read a `recvmmsg` batch at a time: one that fills a batch is read
//! again before the thread next sleeps, after the other ready sockets had
//! their turn; one that comes back short is drained, and its next datagram
//! raises a new edge. An allocation's sockets carry one flow each and
//! mostly hold a single datagram when ready, so they are registered
//! level-triggered and read one datagram per readiness: cheaper than a
//! batch or a second read to see the queue empty, and what is left is
//! reported again by the next wait.

use crate::alloc::{Allocation, ClientLink, FiveTuple, Transport};
use crate::handler::{self, Outcome};
use crate::server::{Shared, forward_to_client, relay_channel_data, send_now, to_client};
use crate::stats::Relayed;
use crate::stun;
use crate::udp::{BATCH, Batch, HEADROOM};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// How often the worker drops what is dead and publishes its counts.
const TICK: Duration = Duration::from_secs(1);
/// How long a client's own socket outlives its allocation, at least.
const CLIENT_LINGER: Duration = Duration::from_secs(30);

enum Entry {
    /// Readable (at end of stream) once the server stops.
    Stop(UnixStream),
    /// This worker's socket of one UDP listener address.
    Listener {
        local: SocketAddr,
        link: ClientLink,
        /// This worker's view of the table: with SO_REUSEPORT the same
        /// client always lands here, so it is looked up in the shared
        /// table once.
        cache: HashMap<SocketAddr, Arc<Allocation>>,
    },
    /// A client's own socket (`Shared::client_link`): ChannelData for its
    /// allocation, and STUN handled as the listener would.
    ///
    /// It is read until no allocation has held it for `CLIENT_LINGER`:
    /// until it is closed the kernel delivers the client's datagrams to it,
    /// so a request that races the allocation's deletion, or a new
    /// Allocate, is answered rather than lost unread.
    Client {
        five: FiveTuple,
        link: ClientLink,
        allocation: Option<Arc<Allocation>>,
        /// When an allocation was last seen holding it.
        held: Instant,
    },
    /// An allocation's relay socket, until the allocation dies.
    Relay(Arc<Allocation>),
}

impl Entry {
    fn socket(&self) -> Option<&UdpSocket> {
        match self {
            Self::Stop(_) => None,
            Self::Listener { link, .. } | Self::Client { link, .. } => match link {
                ClientLink::Udp(socket) | ClientLink::Connected(socket) => Some(socket),
                ClientLink::Stream(_) => None,
            },
            Self::Relay(allocation) => Some(&allocation.relay),
        }
    }
}

/// Relayed packets and bytes counted on the worker, published each tick:
/// an atomic add per packet on counters both workers share would bounce
/// their cache line between the cores.
#[derive(Default)]
struct Tally {
    to_peer: (u64, u64),
    to_client: (u64, u64),
}

impl Tally {
    fn sent_to_peer(&mut self, bytes: usize) {
        self.to_peer.0 += 1;
        self.to_peer.1 += bytes as u64;
    }

    fn sent_to_client(&mut self, bytes: usize) {
        self.to_client.0 += 1;
        self.to_client.1 += bytes as u64;
    }

    fn publish(&mut self, to_peer: &Relayed, to_client: &Relayed) {
        let Self {
            to_peer: (peer_packets, peer_bytes),
            to_client: (client_packets, client_bytes),
        } = std::mem::take(self);
        to_peer.add_many(peer_packets, peer_bytes);
        to_client.add_many(client_packets, client_bytes);
    }
}

/// The epoll instance and the tokens of its entries.
struct Registry {
    epoll: Epoll,
    /// Tokens freed by a tick, to reuse.
    free: Vec<usize>,
    /// One past the highest token given out.
    next: usize,
    /// Entries registered while another is served, with their tokens:
    /// stored once it is served.
    pending: Vec<(usize, Entry)>,
}

impl Registry {
    fn register(&mut self, entry: Entry) -> io::Result<()> {
        let token = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        let added = match &entry {
            Entry::Stop(stream) => self
                .epoll
                .add(stream, EpollEvent::new(EpollFlags::EPOLLIN, token as u64)),
            other => match other.socket() {
                Some(socket) => {
                    let flags = if matches!(other, Entry::Listener { .. }) {
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLET
                    } else {
                        EpollFlags::EPOLLIN
                    };
                    self.epoll.add(socket, EpollEvent::new(flags, token as u64))
                }
                None => Err(Errno::EINVAL),
            },
        };
        match added {
            Ok(()) => {
                self.pending.push((token, entry));
                Ok(())
            }
            Err(e) => {
                self.free.push(token);
                Err(e.into())
            }
        }
    }
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    registry: Registry,
    /// Indexed by the epoll token.
    entries: Vec<Option<Entry>>,
    /// Entries whose last read filled a batch.
    again: Vec<usize>,
    tally: Tally,
}

impl Worker {
    /// A worker reading `listeners` until `stop`'s peer closes.
    pub(crate) fn new(
        shared: Arc<Shared>,
        listeners: Vec<(SocketAddr, UdpSocket)>,
        stop: UnixStream,
    ) -> io::Result<Self> {
        let mut registry = Registry {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            free: Vec::new(),
            next: 0,
            pending: Vec::new(),
        };
        registry.register(Entry::Stop(stop))?;
        for (local, socket) in listeners {
            registry.register(Entry::Listener {
                local,
                link: ClientLink::Udp(Arc::new(socket)),
                cache: HashMap::new(),
            })?;
        }
        let mut worker = Self {
            shared,
            registry,
            entries: Vec::new(),
            again: Vec::new(),
            tally: Tally::default(),
        };
        worker.store_pending();
        Ok(worker)
    }

    fn store_pending(&mut self) {
        for (token, entry) in self.registry.pending.drain(..) {
            if token >= self.entries.len() {
                self.entries.resize_with(token + 1, || None);
            }
            self.entries[token] = Some(entry);
        }
    }

    /// Serves until the server stops; then every socket it reads closes
    /// with it (an allocation's own once the table lets it go).
    pub(crate) fn run(mut self) {
        let to_peer = Relayed::to_peer();
        let to_client = Relayed::to_client();
        let mut events = vec![EpollEvent::empty(); EVENTS];
        // Made here: its headers point into itself, so it stays on the
        // thread that reads with it.
        let mut batch = Batch::new();
        let mut next_tick = Instant::now() + TICK;
        'serving: loop {
            let wait = if self.again.is_empty() {
                // Rounded up, so the tick is never waited for in a spin.
                let left = next_tick.saturating_duration_since(Instant::now());
                u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX)
            } else {
                0
            };
            let ready = match self.registry.epoll.wait(&mut events, wait) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "TURN UDP worker stopped: epoll failed");
                    break;
                }
            };
            let again = std::mem::take(&mut self.again);
            let tokens = events[..ready].iter().map(|e| e.data() as usize);
            for token in tokens.chain(again) {
                if !self.serve(&mut batch, token) {
                    break 'serving;
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                self.tally.publish(&to_peer, &to_client);
                next_tick = now + TICK;
            }
        }
        self.tally.publish(&to_peer, &to_client);
    }

    /// Reads the entry `token` (a batch from a listener, a datagram from an
    /// allocation's socket) and handles what came. Returns false once the
    /// server stops.
    fn serve(&mut self, batch: &mut Batch, token: usize) -> bool {
        let Self {
            shared,
            registry,
            entries,
            again,
            tally,
        } = self;
        let Some(Some(entry)) = entries.get_mut(token) else {
            return true;
        };
        let Some(socket) = entry.socket() else {
            return false;
        };
        if let Entry::Relay(allocation) = &*entry
            && !allocation.is_alive()
        {
            // Deleted: no longer read, and closed at the next tick.
            let _ = registry.epoll.delete(socket.as_fd());
            return true;
        }
        let listener = matches!(entry, Entry::Listener { .. });
        let received = if listener {
            batch.receive(socket)
        } else {
            batch.receive_one(socket)
        };
        let count = match received {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // Another error (an ICMP unreachable on a connected socket) is
            // reported once, and what is queued behind it is read next.
            Err(_) => {
                if listener {
                    again.push(token);
                }
                return true;
            }
        };
        if listener && count == BATCH {
            again.push(token);
        }
        for i in 0..count {
            let (buf, n, from) = batch.datagram(i);
            match entry {
                Entry::Stop(_) => {}
                Entry::Listener { local, link, cache } => {
                    let Some(client) = from else {
                        continue;
                    };
                    let five = FiveTuple {
                        transport: Transport::Udp,
                        client,
                        server: *local,
                    };
                    let data = &buf[HEADROOM..HEADROOM + n];
                    if n < 4 || !stun::is_channel_data(data[0]) {
                        handle_stun(shared, data, five, link, registry, tally);
                        continue;
                    }
                    let allocation = match cache.get(&client) {
                        Some(a) if a.is_alive() => Some(a.clone()),
                        _ => shared.table.get(&five).inspect(|a| {
                            cache.insert(client, a.clone());
                        }),
                    };
                    if let Some(bytes) = relay_channel_data(shared, allocation.as_deref(), data) {
                        tally.sent_to_peer(bytes);
                    }
                }
                Entry::Client {
                    five,
                    link,
                    allocation,
                    ..
                } => {
                    let data = &buf[HEADROOM..HEADROOM + n];
                    if n < 4 || !stun::is_channel_data(data[0]) {
                        handle_stun(shared, data, *five, link, registry, tally);
                        continue;
                    }
                    let allocation = shared.table.current(allocation, five);
                    if let Some(bytes) = relay_channel_data(shared, allocation, data) {
                        tally.sent_to_peer(bytes);
                    }
                }
                Entry::Relay(allocation) => {
                    if let Some(peer) = from
                        && forward_to_client(shared, allocation, buf, n, peer)
                    {
                        tally.sent_to_client(n);
                    }
                }
            }
        }
        self.store_pending();
        true
    }

    /// Drops the sockets of dead allocations, and clients' own sockets
    /// that no allocation has held for `CLIENT_LINGER`.
    fn tick(&mut self, now: Instant) {
        for (token, slot) in self.entries.iter_mut().enumerate() {
            let dead = match slot {
                Some(Entry::Relay(allocation)) => !allocation.is_alive(),
                Some(Entry::Client {
                    five,
                    allocation,
                    held,
                    ..
                }) => {
                    if allocation.as_ref().is_some_and(|a| !a.is_alive()) {
                        *allocation = None;
                    }
                    if self.shared.table.get(five).is_some() {
                        *held = now;
                    }
                    now.duration_since(*held) >= CLIENT_LINGER
                }
                Some(Entry::Listener { cache, .. }) => {
                    cache.retain(|_, a| a.is_alive());
                    false
                }
                Some(Entry::Stop(_)) | None => false,
            };
            if dead && let Some(entry) = slot.take() {
                if let Some(socket) = entry.socket() {
                    // Others may still hold the socket (the table until
                    // it lets the allocation go), so closing it here would
                    // not unregister it.
                    let _ = self.registry.epoll.delete(socket.as_fd());
                }
                self.registry.free.push(token);
            }
        }
        let entries = &self.entries;
        self.again.retain(|&token| entries[token].is_some());
    }
}

/// Handles a STUN message from a UDP client: the answer goes back over
/// `link`, a Send indication's data to its peer. A new allocation's
/// sockets are registered with this worker, then it is published.
fn handle_stun(
    shared: &Arc<Shared>,
    data: &[u8],
    five: FiveTuple,
    link: &ClientLink,
    registry: &mut Registry,
    tally: &mut Tally,
) {
    match handler::handle(shared, data, five, link) {
        Outcome::Reply(reply) => {
            to_client(link, five.client, &reply);
        }
        Outcome::Allocated { reply, allocation } => {
            let new_client_socket = match &allocation.link {
                ClientLink::Connected(socket) => {
                    !matches!(link, ClientLink::Connected(s) if Arc::ptr_eq(s, socket))
                }
                _ => false,
            };
            let registered = if new_client_socket {
                registry.register(Entry::Client {
                    five,
                    link: allocation.link.clone(),
                    allocation: Some(allocation.clone()),
                    held: Instant::now(),
                })
            } else {
                Ok(())
            }
            .and_then(|()| registry.register(Entry::Relay(allocation.clone())));
            if let Err(e) = registered {
                shared.abandon(&allocation, &e);
                return;
            }
            // What arrives before the worker next waits stays queued in
            // the sockets, and the next wait reports it.
            shared.publish(allocation);
            to_client(link, five.client, &reply);
        }
        Outcome::Relay {
            allocation,
            peer,
            data,
        } => {
            if send_now(&allocation.relay, data, peer) {
                tally.sent_to_peer(data.len());
            }
        }
        Outcome::Nothing => {}
    }
}
