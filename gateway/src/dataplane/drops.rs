//! Why packets were dropped, counted without locks or allocation on the packet path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A packet from the TUN device whose destination no peer's allowed prefixes cover.
    NoRoute,
    /// The peer for the destination has no known endpoint yet.
    NoEndpoint,
    /// An inner source address outside the sending peer's allowed prefixes.
    SourceNotAllowed,
    /// A datagram that is not a well-formed WireGuard message.
    Malformed,
    /// A message for a receiver index or static key that belongs to no peer.
    UnknownPeer,
    /// Authentication failed (bad MAC, bad AEAD tag, wrong key).
    AuthFailed,
    /// A counter already seen or too old (WireGuard paper §5.4.6).
    Replay,
    /// A handshake refused because this gateway is under load (cookie sent instead).
    UnderLoad,
    /// A handshake message that does not fit the session state (stale, wrong index, old timestamp).
    HandshakeRejected,
    /// The inner packet is not IPv4/IPv6 or is truncated.
    BadInnerPacket,
    /// The kernel refused to send the datagram.
    SendFailed,
    /// The TUN device refused the packet.
    TunWriteFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::SourceNotAllowed,
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::AuthFailed,
        DropReason::Replay,
        DropReason::UnderLoad,
        DropReason::HandshakeRejected,
        DropReason::BadInnerPacket,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replay => "replay",
            DropReason::UnderLoad => "under_load",
            DropReason::HandshakeRejected => "handshake_rejected",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn add(&self, reason: DropReason, n: u64) {
        self.0[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self, reason: DropReason) {
        self.add(reason, 1);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }

    /// Every reason with its count, zeros included, so dashboards see stable series.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), self.get(*r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_all() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let c = DropCounters::default();
        c.inc(DropReason::Replay);
        c.add(DropReason::NoRoute, 3);
        let s = c.snapshot();
        assert_eq!(s["replay"], 1);
        assert_eq!(s["no_route"], 3);
        assert_eq!(s.len(), DropReason::ALL.len());
    }
}
