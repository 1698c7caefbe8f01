//! Metrics through the `metrics` facade. Label values come from the
//! closed sets below, so the series count stays fixed whatever clients send.

use metrics::{Counter, counter, gauge};

/// Why a request was refused; the `reason` label of
/// `turn_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No MESSAGE-INTEGRITY yet: the 401 challenge every client gets first.
    Challenge,
    StaleNonce,
    WrongCredentials,
    ExpiredCredentials,
    Quota,
    PeerDenied,
    /// 437: no allocation, or another one on the 5-tuple.
    Mismatch,
    /// 441: a request for an allocation made under another username.
    WrongUser,
    BadRequest,
    Unsupported,
    Capacity,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Challenge => "challenge",
            Self::StaleNonce => "stale_nonce",
            Self::WrongCredentials => "wrong_credentials",
            Self::ExpiredCredentials => "expired_credentials",
            Self::Quota => "quota",
            Self::PeerDenied => "peer_denied",
            Self::Mismatch => "allocation_mismatch",
            Self::WrongUser => "wrong_user",
            Self::BadRequest => "bad_request",
            Self::Unsupported => "unsupported",
            Self::Capacity => "capacity",
        }
    }
}

pub(crate) fn refused(reason: Refusal) {
    counter!("turn_refusals_total", "reason" => reason.label()).increment(1);
}

pub(crate) fn allocation_created(transport: &'static str) {
    counter!("turn_allocations_total", "transport" => transport).increment(1);
}

pub(crate) fn set_allocations(n: usize) {
    gauge!("turn_allocations").set(n as f64);
}

/// Relay counters for one direction, fetched once per task or worker so
/// the hot path pays at most an atomic add, not a registry lookup.
#[derive(Debug, Clone)]
pub(crate) struct Relayed {
    packets: Counter,
    bytes: Counter,
}

impl Relayed {
    pub(crate) fn to_peer() -> Self {
        Self {
            packets: counter!("turn_relayed_packets_total", "direction" => "to_peer"),
            bytes: counter!("turn_relayed_bytes_total", "direction" => "to_peer"),
        }
    }

    pub(crate) fn to_client() -> Self {
        Self {
            packets: counter!("turn_relayed_packets_total", "direction" => "to_client"),
            bytes: counter!("turn_relayed_bytes_total", "direction" => "to_client"),
        }
    }

    pub(crate) fn add(&self, bytes: usize) {
        self.packets.increment(1);
        self.bytes.increment(bytes as u64);
    }

    pub(crate) fn add_many(&self, packets: u64, bytes: u64) {
        if packets > 0 {
            self.packets.increment(packets);
            self.bytes.increment(bytes);
        }
    }
}

/// Datagrams and frames dropped without an answer, by reason.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Drop {
    /// Not STUN or ChannelData, or malformed.
    Garbage,
    /// ChannelData or Send from a 5-tuple with no allocation.
    NoAllocation,
    /// No live permission or channel for the peer.
    NoPermission,
    Bandwidth,
}

pub(crate) fn dropped(reason: Drop) {
    let label = match reason {
        Drop::Garbage => "garbage",
        Drop::NoAllocation => "no_allocation",
        Drop::NoPermission => "no_permission",
        Drop::Bandwidth => "bandwidth",
    };
    counter!("turn_dropped_total", "reason" => label).increment(1);
}
