//! Allocations and the table that finds them by 5-tuple.
//!
//! The table is sharded so lookups from different cores rarely meet on a
//! lock, and listener workers keep their own cache of it besides. Each
//! allocation's mutable state (permissions, channels, lifetime, bandwidth)
//! sits behind its own lock, touched by whatever reads its client and its
//! relay socket: for a UDP client, one worker thread; for a TCP or TLS
//! client, that connection's task and the relay socket's.

use crate::stun::TransactionId;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// RFC 8656 §9: permissions last exactly 300 s.
pub(crate) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: channel bindings last 10 minutes.
pub(crate) const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §12: after a binding expires, its number and peer stay
/// reserved for 5 minutes.
pub(crate) const CHANNEL_QUARANTINE: Duration = Duration::from_secs(300);
/// Limits that keep one allocation's state small; exceeding them is 508.
pub(crate) const MAX_PERMISSIONS: usize = 64;
pub(crate) const MAX_CHANNELS: usize = 64;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State stays consistent across a panic (every update is one
    // assignment), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// Client address, server address and transport (RFC 8656 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FiveTuple {
    pub(crate) transport: Transport,
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
}

/// How data reaches the client: a datagram from the listener socket the
/// client used, or from a socket of its allocation's own connected to it,
/// or a frame queued to its TCP/TLS connection's writer.
#[derive(Debug, Clone)]
pub(crate) enum ClientLink {
    Udp(Arc<UdpSocket>),
    Connected(Arc<UdpSocket>),
    Stream(mpsc::Sender<Vec<u8>>),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Permission {
    pub(crate) ip: IpAddr,
    pub(crate) expires: Instant,
    /// Set for this server's own private relay addresses: only the relay
    /// port range may be reached through them.
    pub(crate) relay_ports_only: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub(crate) number: u16,
    pub(crate) peer: SocketAddr,
    pub(crate) expires: Instant,
}

/// A token bucket holding one second of the configured rate.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    pub(crate) fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) expires: Instant,
    pub(crate) permissions: Vec<Permission>,
    pub(crate) channels: Vec<Channel>,
    pub(crate) bucket: Option<Bucket>,
}

impl State {
    /// The live permission for `ip`, if any.
    pub(crate) fn permission(&self, ip: IpAddr, now: Instant) -> Option<&Permission> {
        self.permissions
            .iter()
            .find(|p| p.ip == ip && p.expires > now)
    }

    pub(crate) fn channel_by_number(&self, number: u16, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    pub(crate) fn channel_by_peer(&self, peer: SocketAddr, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Installs or refreshes a permission. False when the table is full.
    pub(crate) fn permit(&mut self, ip: IpAddr, relay_ports_only: bool, now: Instant) -> bool {
        let expires = now + PERMISSION_LIFETIME;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            p.relay_ports_only = relay_ports_only;
            return true;
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= MAX_PERMISSIONS {
            return false;
        }
        self.permissions.push(Permission {
            ip,
            expires,
            relay_ports_only,
        });
        true
    }

    /// Whether `number` may be (re)bound to `peer` now: RFC 8656 §12.2
    /// forbids binding a number to a second peer, or a peer to a second
    /// number, while a binding or its 5-minute aftermath lasts.
    pub(crate) fn can_bind(&self, number: u16, peer: SocketAddr, now: Instant) -> bool {
        self.channels.iter().all(|c| {
            let reserved = c.expires + CHANNEL_QUARANTINE > now;
            !reserved || (c.number == number) == (c.peer == peer)
        })
    }

    /// Binds or refreshes. False when the table is full.
    pub(crate) fn bind(&mut self, number: u16, peer: SocketAddr, now: Instant) -> bool {
        let expires = now + CHANNEL_LIFETIME;
        if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
            c.peer = peer;
            c.expires = expires;
            return true;
        }
        self.channels
            .retain(|c| c.expires + CHANNEL_QUARANTINE > now);
        if self.channels.len() >= MAX_CHANNELS {
            return false;
        }
        self.channels.push(Channel {
            number,
            peer,
            expires,
        });
        true
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels
            .retain(|c| c.expires + CHANNEL_QUARANTINE > now);
    }
}

#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) five: FiveTuple,
    pub(crate) username: String,
    pub(crate) quota_user: String,
    pub(crate) relay: Arc<UdpSocket>,
    /// The address advertised in XOR-RELAYED-ADDRESS.
    pub(crate) relayed: SocketAddr,
    pub(crate) link: ClientLink,
    /// The Allocate transaction and its success response, resent as is
    /// when that request is retransmitted (RFC 8656 §7.2).
    pub(crate) txid: TransactionId,
    pub(crate) response: Vec<u8>,
    pub(crate) alive: AtomicBool,
    pub(crate) state: Mutex<State>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Allocation {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        five: FiveTuple,
        username: String,
        quota_user: String,
        relay: Arc<UdpSocket>,
        relayed: SocketAddr,
        link: ClientLink,
        txid: TransactionId,
        response: Vec<u8>,
        state: State,
    ) -> Self {
        Self {
            five,
            username,
            quota_user,
            relay,
            relayed,
            link,
            txid,
            response,
            alive: AtomicBool::new(true),
            state: Mutex::new(state),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Ties a task to the allocation: it is aborted when the allocation
    /// goes. (A UDP worker instead drops a dead allocation's sockets on
    /// its next tick.)
    pub(crate) fn add_task(&self, task: AbortHandle) {
        lock(&self.tasks).push(task);
    }

    fn kill(&self) {
        self.alive.store(false, Ordering::Relaxed);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Why an allocation could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaError {
    User,
    Total,
}

const SHARDS: usize = 64;

#[derive(Debug)]
pub(crate) struct Table {
    shards: Vec<Mutex<HashMap<FiveTuple, Arc<Allocation>>>>,
    users: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    user_quota: usize,
    total_quota: usize,
}

impl Table {
    pub(crate) fn new(user_quota: usize, total_quota: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            users: Mutex::default(),
            total: AtomicUsize::new(0),
            user_quota,
            total_quota,
        }
    }

    fn shard(&self, five: &FiveTuple) -> &Mutex<HashMap<FiveTuple, Arc<Allocation>>> {
        let mut h = DefaultHasher::new();
        five.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    pub(crate) fn get(&self, five: &FiveTuple) -> Option<Arc<Allocation>> {
        lock(self.shard(five)).get(five).cloned()
    }

    /// The live allocation for `five`, through a reader's `cached` copy,
    /// which is looked up again only once it has died.
    pub(crate) fn current<'a>(
        &self,
        cached: &'a mut Option<Arc<Allocation>>,
        five: &FiveTuple,
    ) -> Option<&'a Allocation> {
        if !cached.as_ref().is_some_and(|a| a.is_alive()) {
            *cached = self.get(five);
        }
        cached.as_deref()
    }

    pub(crate) fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a quota slot for `user` before the relay socket is bound;
    /// `release` gives it back if the allocation then fails.
    pub(crate) fn reserve(&self, user: &str) -> Result<(), QuotaError> {
        let mut users = lock(&self.users);
        if self.total_quota != 0 && self.total.load(Ordering::Relaxed) >= self.total_quota {
            return Err(QuotaError::Total);
        }
        let count = users.entry(user.to_owned()).or_default();
        if self.user_quota != 0 && *count >= self.user_quota {
            if *count == 0 {
                users.remove(user);
            }
            return Err(QuotaError::User);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn release(&self, user: &str) {
        let mut users = lock(&self.users);
        if let Some(count) = users.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                users.remove(user);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds an allocation whose quota slot is already reserved.
    pub(crate) fn insert(&self, allocation: Arc<Allocation>) {
        lock(self.shard(&allocation.five)).insert(allocation.five, allocation);
    }

    pub(crate) fn remove(&self, five: &FiveTuple) -> bool {
        let removed = lock(self.shard(five)).remove(five);
        match removed {
            Some(a) => {
                a.kill();
                self.release(&a.quota_user);
                true
            }
            None => false,
        }
    }

    /// Drops expired allocations, permissions and channels. Returns how
    /// many allocations expired.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut expired = Vec::new();
        for shard in &self.shards {
            lock(shard).retain(|_, a| {
                let mut state = lock(&a.state);
                if state.expires <= now {
                    expired.push(a.clone());
                    return false;
                }
                state.prune(now);
                true
            });
        }
        for a in &expired {
            a.kill();
            self.release(&a.quota_user);
        }
        expired.len()
    }

    /// Removes every allocation (shutdown).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            for (_, a) in lock(shard).drain() {
                a.kill();
                self.release(&a.quota_user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn state(now: Instant) -> State {
        State {
            expires: now + Duration::from_secs(600),
            permissions: Vec::new(),
            channels: Vec::new(),
            bucket: None,
        }
    }

    /// RFC 8656 §9: a permission lasts 300 s and is refreshed, not
    /// duplicated, by a second CreatePermission.
    #[test]
    fn permissions_last_300_seconds_and_refresh() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(s.permit(ip, false, t0));
        assert!(s.permission(ip, t0 + Duration::from_secs(299)).is_some());
        assert!(s.permission(ip, t0 + Duration::from_secs(300)).is_none());
        assert!(s.permit(ip, false, t0 + Duration::from_secs(200)));
        assert_eq!(s.permissions.len(), 1);
        assert!(s.permission(ip, t0 + Duration::from_secs(499)).is_some());
    }

    /// RFC 8656 §12.2: a number cannot move to another peer, nor a peer to
    /// another number, until 5 minutes after the binding expired.
    #[test]
    fn channel_rebinding_rules() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let (p1, p2) = (addr("198.51.100.1:5000"), addr("198.51.100.2:5000"));
        assert!(s.can_bind(0x4000, p1, t0));
        assert!(s.bind(0x4000, p1, t0));
        assert!(s.can_bind(0x4000, p1, t0), "refresh is allowed");
        assert!(!s.can_bind(0x4000, p2, t0), "number taken by another peer");
        assert!(!s.can_bind(0x4001, p1, t0), "peer taken by another number");
        assert!(s.can_bind(0x4001, p2, t0));
        let expired = t0 + CHANNEL_LIFETIME;
        assert!(s.channel_by_number(0x4000, expired).is_none());
        assert!(!s.can_bind(0x4000, p2, expired), "quarantined");
        let free = expired + CHANNEL_QUARANTINE;
        assert!(s.can_bind(0x4000, p2, free));
    }

    #[test]
    fn quotas_count_per_user_and_in_total() {
        let t = Table::new(2, 3);
        assert_eq!(t.reserve("a"), Ok(()));
        assert_eq!(t.reserve("a"), Ok(()));
        assert_eq!(t.reserve("a"), Err(QuotaError::User));
        assert_eq!(t.reserve("b"), Ok(()));
        assert_eq!(t.reserve("c"), Err(QuotaError::Total));
        t.release("a");
        assert_eq!(t.reserve("c"), Ok(()));
        assert_eq!(t.len(), 3);
        assert!(lock(&t.users).values().all(|&n| n > 0));
    }

    #[test]
    fn bucket_limits_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert!(b.take(1000, t0));
        assert!(!b.take(1, t0));
        assert!(b.take(500, t0 + Duration::from_millis(500)));
        assert!(!b.take(100, t0 + Duration::from_millis(500)));
    }
}
