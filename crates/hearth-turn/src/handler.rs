//! STUN and TURN request processing, the same for every transport:
//! RFC 8489 §6.3 and §9.2 (authentication), RFC 8656 §7–§12.

use crate::alloc::{Allocation, Bucket, ClientLink, FiveTuple, State};
use crate::auth::Lookup;
use crate::policy::Verdict;
use crate::server::Shared;
use crate::stats::{self, Refusal};
use crate::stun::{Builder, Class, Message, attr, is_valid_channel, method};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SOFTWARE: &[u8] = concat!("hearth ", env!("CARGO_PKG_VERSION")).as_bytes();
/// RFC 8656 §7.2: the default allocation lifetime.
const DEFAULT_LIFETIME: u32 = 600;
const UDP: u8 = 17;

/// What the transport should do with a message.
#[derive(Debug)]
pub(crate) enum Outcome<'a> {
    Reply(Vec<u8>),
    /// A new allocation, with the success response: the transport starts
    /// reading its sockets and publishes it (`Shared::publish`), then
    /// sends the response.
    Allocated {
        reply: Vec<u8>,
        allocation: Arc<Allocation>,
    },
    /// A Send indication's payload, for the relay socket.
    Relay {
        allocation: Arc<Allocation>,
        peer: SocketAddr,
        data: &'a [u8],
    },
    Nothing,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Ends a response: SOFTWARE, MESSAGE-INTEGRITY when the request was
/// authenticated, FINGERPRINT when the request carried one.
fn seal(b: &mut Builder, req: &Message<'_>, key: Option<&[u8; 16]>) -> Vec<u8> {
    b.attr(attr::SOFTWARE, SOFTWARE);
    if let Some(key) = key {
        b.integrity(key);
    }
    if req.has(attr::FINGERPRINT) {
        b.fingerprint();
    }
    b.finish()
}

fn error(req: &Message<'_>, code: u16, reason: &str, key: Option<&[u8; 16]>) -> Vec<u8> {
    let mut b = Builder::new(Class::Error, req.method, &req.txid);
    b.error(code, reason);
    seal(&mut b, req, key)
}

fn refuse(
    why: Refusal,
    req: &Message<'_>,
    code: u16,
    reason: &str,
    key: Option<&[u8; 16]>,
) -> Outcome<'static> {
    stats::refused(why);
    Outcome::Reply(error(req, code, reason, key))
}

pub(crate) struct Authed {
    key: [u8; 16],
    username: String,
    quota_user: String,
    expired: bool,
}

/// RFC 8489 §9.2.4, in its order. Challenges (401, 438) carry REALM and a
/// fresh NONCE and no MESSAGE-INTEGRITY.
fn authenticate(shared: &Shared, req: &Message<'_>, client: IpAddr) -> Result<Authed, Vec<u8>> {
    let now = now_secs();
    let challenge = |code: u16, reason: &str, why: Refusal| {
        stats::refused(why);
        let mut b = Builder::new(Class::Error, req.method, &req.txid);
        b.error(code, reason)
            .attr(attr::REALM, shared.auth.realm().as_bytes())
            .attr(attr::NONCE, shared.auth.nonce(now, client).as_bytes());
        seal(&mut b, req, None)
    };
    if !req.has(attr::MESSAGE_INTEGRITY) {
        return Err(challenge(401, "Unauthenticated", Refusal::Challenge));
    }
    let (Some(username), Some(_realm), Some(nonce)) = (
        req.get_str(attr::USERNAME),
        req.get(attr::REALM),
        req.get_str(attr::NONCE),
    ) else {
        stats::refused(Refusal::BadRequest);
        return Err(error(req, 400, "Bad Request", None));
    };
    if !shared.auth.nonce_is_fresh(nonce, now, client) {
        return Err(challenge(438, "Stale Nonce", Refusal::StaleNonce));
    }
    // An expired REST username still has a key: requests on an
    // allocation made before expiry are decided by the caller.
    let (key, quota_user, expired) = match shared.auth.lookup(username, now) {
        Lookup::Key { key, quota_user } => (key, quota_user, false),
        Lookup::Expired { key, quota_user } => (key, quota_user, true),
        Lookup::Unknown => {
            return Err(challenge(401, "Unauthenticated", Refusal::WrongCredentials));
        }
    };
    if req.check_integrity(&key) != Some(true) {
        return Err(challenge(401, "Unauthenticated", Refusal::WrongCredentials));
    }
    Ok(Authed {
        key,
        username: username.to_owned(),
        quota_user,
        expired,
    })
}

/// Handles one STUN message from a client.
pub(crate) fn handle<'a>(
    shared: &Arc<Shared>,
    raw: &'a [u8],
    five: FiveTuple,
    link: &ClientLink,
) -> Outcome<'a> {
    let Some(req) = Message::parse(raw) else {
        stats::dropped(stats::Drop::Garbage);
        return Outcome::Nothing;
    };
    // A FINGERPRINT that does not match means this is not STUN at all
    // (RFC 8489 §7.3): drop silently.
    if req.check_fingerprint() == Some(false) {
        stats::dropped(stats::Drop::Garbage);
        return Outcome::Nothing;
    }
    match (req.class, req.method) {
        (Class::Request, method::BINDING) => binding(&req, five),
        (Class::Indication, method::SEND) => send(shared, &req, five),
        (
            Class::Request,
            method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND,
        ) => turn_request(shared, &req, five, link),
        (Class::Request, _) => refuse(Refusal::BadRequest, &req, 400, "Bad Request", None),
        // Binding indications are keepalives; responses are not ours.
        _ => Outcome::Nothing,
    }
}

fn binding<'a>(req: &Message<'_>, five: FiveTuple) -> Outcome<'a> {
    let unknown = req.unknown_required();
    if !unknown.is_empty() {
        return Outcome::Reply(unknown_attributes(req, &unknown, None));
    }
    let mut b = Builder::new(Class::Success, method::BINDING, &req.txid);
    b.xor_address(attr::XOR_MAPPED_ADDRESS, five.client);
    Outcome::Reply(seal(&mut b, req, None))
}

fn unknown_attributes(req: &Message<'_>, unknown: &[u16], key: Option<&[u8; 16]>) -> Vec<u8> {
    stats::refused(Refusal::Unsupported);
    let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
    let mut b = Builder::new(Class::Error, req.method, &req.txid);
    b.error(420, "Unknown Attribute")
        .attr(attr::UNKNOWN_ATTRIBUTES, &list);
    seal(&mut b, req, key)
}

fn turn_request<'a>(
    shared: &Arc<Shared>,
    req: &Message<'_>,
    five: FiveTuple,
    link: &ClientLink,
) -> Outcome<'a> {
    let auth = match authenticate(shared, req, five.client.ip()) {
        Ok(auth) => auth,
        Err(reply) => return Outcome::Reply(reply),
    };
    let key = &auth.key;
    let unknown = req.unknown_required();
    if !unknown.is_empty() {
        return Outcome::Reply(unknown_attributes(req, &unknown, Some(key)));
    }
    if req.method == method::ALLOCATE {
        return allocate(shared, req, five, link, &auth);
    }
    // RFC 8656 §5: other requests need the 5-tuple's allocation (437),
    // made under the same username (441).
    let Some(allocation) = shared.table.get(&five) else {
        return refuse(
            Refusal::Mismatch,
            req,
            437,
            "Allocation Mismatch",
            Some(key),
        );
    };
    if allocation.username != auth.username {
        return refuse(Refusal::WrongUser, req, 441, "Wrong Credentials", Some(key));
    }
    // `auth.expired` needs no check here: the username matches the
    // allocation's, which was authorised while the credential was valid,
    // and refusing now would cut calls at the credential's expiry.
    match req.method {
        method::REFRESH => refresh(shared, req, &allocation, key),
        method::CREATE_PERMISSION => create_permission(shared, req, &allocation, key),
        _ => channel_bind(shared, req, &allocation, key),
    }
}

/// RFC 8656 §7.2 and §7.3: max(default, min(requested, maximum)), with
/// the default capped by a shorter configured maximum.
fn lifetime(shared: &Shared, requested: Option<u32>) -> u32 {
    let max = shared.max_lifetime;
    let default = DEFAULT_LIFETIME.min(max);
    requested.map_or(default, |r| r.min(max).max(default))
}

fn allocate<'a>(
    shared: &Arc<Shared>,
    req: &Message<'_>,
    five: FiveTuple,
    link: &ClientLink,
    auth: &Authed,
) -> Outcome<'a> {
    let key = Some(&auth.key);
    if let Some(existing) = shared.table.get(&five) {
        // A retransmission of the request that made it gets the same answer.
        if existing.txid == req.txid && existing.username == auth.username {
            return Outcome::Reply(existing.response.clone());
        }
        return refuse(Refusal::Mismatch, req, 437, "Allocation Mismatch", key);
    }
    if auth.expired {
        return Outcome::Reply({
            stats::refused(Refusal::ExpiredCredentials);
            let mut b = Builder::new(Class::Error, req.method, &req.txid);
            b.error(401, "Unauthenticated")
                .attr(attr::REALM, shared.auth.realm().as_bytes())
                .attr(
                    attr::NONCE,
                    shared.auth.nonce(now_secs(), five.client.ip()).as_bytes(),
                );
            seal(&mut b, req, None)
        });
    }
    match req.get(attr::REQUESTED_TRANSPORT) {
        Some(v) if v.len() == 4 && v[0] == UDP => {}
        Some(v) if v.len() == 4 => {
            return refuse(
                Refusal::Unsupported,
                req,
                442,
                "Unsupported Transport Protocol",
                key,
            );
        }
        _ => return refuse(Refusal::BadRequest, req, 400, "Bad Request", key),
    }
    let token = req.get(attr::RESERVATION_TOKEN);
    let even_port = req.get(attr::EVEN_PORT);
    let family = req.get(attr::REQUESTED_ADDRESS_FAMILY);
    let additional = req.has(attr::ADDITIONAL_ADDRESS_FAMILY);
    if token.is_some() && (even_port.is_some() || family.is_some() || additional)
        || family.is_some() && additional
        || token.is_some_and(|t| t.len() != 8)
        || even_port.is_some_and(|e| e.len() != 1)
    {
        return refuse(Refusal::BadRequest, req, 400, "Bad Request", key);
    }
    let ipv6 = match family {
        None => false,
        Some([0x01, ..]) => false,
        Some([0x02, ..]) => true,
        Some(_) => {
            return refuse(
                Refusal::Unsupported,
                req,
                440,
                "Address Family not Supported",
                key,
            );
        }
    };
    if let Err(quota) = shared.table.reserve(&auth.quota_user) {
        if shared.log_client_ips {
            tracing::info!(client = %five.client, ?quota, "TURN allocation quota reached");
        } else {
            tracing::info!(?quota, "TURN allocation quota reached");
        }
        return refuse(Refusal::Quota, req, 486, "Allocation Quota Reached", key);
    }
    let relay = match token {
        Some(token) => {
            shared.take_reservation(u64::from_be_bytes(token.try_into().unwrap_or_default()))
        }
        None => {
            let Some(relay) = shared.relays.iter().find(|r| r.bind.is_ipv6() == ipv6) else {
                shared.table.release(&auth.quota_user);
                return refuse(
                    Refusal::Unsupported,
                    req,
                    440,
                    "Address Family not Supported",
                    key,
                );
            };
            let reserve = even_port.is_some_and(|e| e[0] & 0x80 != 0);
            shared.bind_relay(relay, even_port.is_some(), reserve)
        }
    };
    let Some((socket, relayed, reservation)) = relay else {
        shared.table.release(&auth.quota_user);
        return refuse(Refusal::Capacity, req, 508, "Insufficient Capacity", key);
    };
    let seconds = lifetime(shared, req.get_u32(attr::LIFETIME));
    let mut b = Builder::new(Class::Success, method::ALLOCATE, &req.txid);
    b.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
        .u32(attr::LIFETIME, seconds);
    if let Some(token) = reservation {
        b.attr(attr::RESERVATION_TOKEN, &token.to_be_bytes());
    }
    b.xor_address(attr::XOR_MAPPED_ADDRESS, five.client);
    let response = seal(&mut b, req, key);
    let now = Instant::now();
    let state = State {
        expires: now + Duration::from_secs(u64::from(seconds)),
        permissions: Vec::new(),
        channels: Vec::new(),
        bucket: (shared.bandwidth != 0).then(|| Bucket::new(shared.bandwidth, now)),
    };
    let allocation = Arc::new(Allocation::new(
        five,
        auth.username.clone(),
        auth.quota_user.clone(),
        socket,
        relayed,
        shared.client_link(five, link),
        req.txid,
        response.clone(),
        state,
    ));
    Outcome::Allocated {
        reply: response,
        allocation,
    }
}

fn refresh<'a>(
    shared: &Shared,
    req: &Message<'_>,
    allocation: &Allocation,
    key: &[u8; 16],
) -> Outcome<'a> {
    // RFC 8656 §7.3: a family that is not the allocation's is 443.
    if let Some(family) = req.get(attr::REQUESTED_ADDRESS_FAMILY) {
        let ipv6 = allocation.relayed.is_ipv6();
        if family.first() != Some(if ipv6 { &0x02 } else { &0x01 }) {
            return refuse(
                Refusal::BadRequest,
                req,
                443,
                "Peer Address Family Mismatch",
                Some(key),
            );
        }
    }
    let requested = req.get_u32(attr::LIFETIME);
    let seconds = if requested == Some(0) {
        shared.table.remove(&allocation.five);
        stats::set_allocations(shared.table.len());
        0
    } else {
        let seconds = lifetime(shared, requested);
        crate::alloc::lock(&allocation.state).expires =
            Instant::now() + Duration::from_secs(u64::from(seconds));
        seconds
    };
    let mut b = Builder::new(Class::Success, method::REFRESH, &req.txid);
    b.u32(attr::LIFETIME, seconds);
    Outcome::Reply(seal(&mut b, req, Some(key)))
}

/// The policy's answer for a peer, with 403 and 443 as RFC 8656 §10.2 and
/// §12.2 give them. `port` is checked for this server's own addresses.
fn vet_peer(
    shared: &Shared,
    allocation: &Allocation,
    peer: SocketAddr,
    port_known: bool,
) -> Result<bool, (Refusal, u16, &'static str)> {
    let relay_ports_only = match shared.policy.check(peer.ip()) {
        Verdict::Allowed => false,
        Verdict::OwnRelay => {
            if port_known && !shared.is_relay_port(peer.port()) {
                return Err((Refusal::PeerDenied, 403, "Forbidden"));
            }
            true
        }
        Verdict::Denied => return Err((Refusal::PeerDenied, 403, "Forbidden")),
    };
    if peer.is_ipv6() != allocation.relayed.is_ipv6() {
        return Err((Refusal::BadRequest, 443, "Peer Address Family Mismatch"));
    }
    Ok(relay_ports_only)
}

fn log_denied(shared: &Shared, allocation: &Allocation, peer: SocketAddr) {
    if shared.log_client_ips {
        tracing::info!(client = %allocation.five.client, %peer, "TURN peer refused by policy");
    } else {
        tracing::debug!("TURN peer refused by policy");
    }
}

/// RFC 8656 §10.2: every XOR-PEER-ADDRESS is installed, or none is.
fn create_permission<'a>(
    shared: &Shared,
    req: &Message<'_>,
    allocation: &Allocation,
    key: &[u8; 16],
) -> Outcome<'a> {
    let mut peers = Vec::new();
    for a in req
        .attributes()
        .filter(|a| a.kind == attr::XOR_PEER_ADDRESS)
    {
        let Some(peer) = crate::stun::decode_xor_address(a.value, &req.txid) else {
            return refuse(Refusal::BadRequest, req, 400, "Bad Request", Some(key));
        };
        match vet_peer(shared, allocation, peer, false) {
            Ok(relay_ports_only) => peers.push((peer.ip(), relay_ports_only)),
            Err((why, code, reason)) => {
                if code == 403 {
                    log_denied(shared, allocation, peer);
                }
                return refuse(why, req, code, reason, Some(key));
            }
        }
    }
    if peers.is_empty() {
        return refuse(Refusal::BadRequest, req, 400, "Bad Request", Some(key));
    }
    let now = Instant::now();
    let mut state = crate::alloc::lock(&allocation.state);
    for (ip, relay_ports_only) in peers {
        if !state.permit(ip, relay_ports_only, now) {
            drop(state);
            return refuse(
                Refusal::Capacity,
                req,
                508,
                "Insufficient Capacity",
                Some(key),
            );
        }
    }
    drop(state);
    let mut b = Builder::new(Class::Success, method::CREATE_PERMISSION, &req.txid);
    Outcome::Reply(seal(&mut b, req, Some(key)))
}

/// RFC 8656 §12.2.
fn channel_bind<'a>(
    shared: &Shared,
    req: &Message<'_>,
    allocation: &Allocation,
    key: &[u8; 16],
) -> Outcome<'a> {
    let number = req
        .get(attr::CHANNEL_NUMBER)
        .filter(|v| v.len() == 4)
        .map(|v| u16::from_be_bytes([v[0], v[1]]));
    let peer = req.get_xor_address(attr::XOR_PEER_ADDRESS);
    let (Some(number), Some(peer)) = (number, peer) else {
        return refuse(Refusal::BadRequest, req, 400, "Bad Request", Some(key));
    };
    if !is_valid_channel(number) {
        return refuse(Refusal::BadRequest, req, 400, "Bad Request", Some(key));
    }
    let relay_ports_only = match vet_peer(shared, allocation, peer, true) {
        Ok(r) => r,
        Err((why, code, reason)) => {
            if code == 403 {
                log_denied(shared, allocation, peer);
            }
            return refuse(why, req, code, reason, Some(key));
        }
    };
    let now = Instant::now();
    let mut state = crate::alloc::lock(&allocation.state);
    if !state.can_bind(number, peer, now) {
        drop(state);
        return refuse(Refusal::BadRequest, req, 400, "Bad Request", Some(key));
    }
    // A binding installs or refreshes the peer's permission too.
    if !state.bind(number, peer, now) || !state.permit(peer.ip(), relay_ports_only, now) {
        drop(state);
        return refuse(
            Refusal::Capacity,
            req,
            508,
            "Insufficient Capacity",
            Some(key),
        );
    }
    drop(state);
    let mut b = Builder::new(Class::Success, method::CHANNEL_BIND, &req.txid);
    Outcome::Reply(seal(&mut b, req, Some(key)))
}

/// RFC 8656 §11.2: Send indications need an allocation and a permission;
/// anything wrong is dropped silently.
fn send<'a>(shared: &Shared, req: &Message<'a>, five: FiveTuple) -> Outcome<'a> {
    let Some(allocation) = shared.table.get(&five) else {
        stats::dropped(stats::Drop::NoAllocation);
        return Outcome::Nothing;
    };
    let (Some(peer), Some(data)) = (
        req.get_xor_address(attr::XOR_PEER_ADDRESS),
        req.get(attr::DATA),
    ) else {
        stats::dropped(stats::Drop::Garbage);
        return Outcome::Nothing;
    };
    if !shared.may_send(&allocation, peer, data.len(), Instant::now()) {
        return Outcome::Nothing;
    }
    Outcome::Relay {
        allocation,
        peer,
        data,
    }
}
