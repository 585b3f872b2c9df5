//! Peers named by SPIFFE identity: which are joined (and with which WireGuard key), which are
//! still pending and why. A Noise join (`crate::identity`) proves the peer holds the WireGuard
//! key its SVID binds; only then does the peer become a keyed [`PeerConfig`] for the engine.
//!
//! This is plain state: the daemon feeds it join outcomes and asks it for the keyed peers.

use crate::admin::proto::{PeerInfo, PeerState};
use crate::config::{Expected, IdentityPeerConfig, PeerConfig};
use crate::identity::{JoinedPeer, PeerVerifier};
use crate::keys::PublicKey;
use isthmus_pki::{Bundle, SpiffeId};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Verifies join chains against the trust bundle; as responder, accepts only identities some
/// configured peer expects.
pub struct PkiVerifier {
    pub bundle: Bundle,
    pub accept: Vec<Expected>,
}

impl PeerVerifier for PkiVerifier {
    fn verify(
        &self,
        chain: &[Vec<u8>],
        remote_static: &[u8; 32],
        expected: Option<&str>,
        now: SystemTime,
    ) -> Result<String, String> {
        // An initiator joining "any gateway of cluster c" names no identity.
        let expected = match expected.filter(|e| !e.is_empty()) {
            Some(e) => {
                Some(SpiffeId::new(e).map_err(|err| format!("expected identity {e:?}: {err}"))?)
            }
            None => None,
        };
        let verified = isthmus_pki::verify(
            chain,
            &self.bundle,
            now,
            expected.as_ref(),
            Some(remote_static),
        )
        .map_err(|e| format!("{e} [{}]", e.rule()))?;
        if expected.is_none() && !self.accept.iter().any(|a| a.matches(verified.id())) {
            return Err(format!(
                "{} is not a configured peer of this gateway [not-a-peer]",
                verified.id().as_str()
            ));
        }
        Ok(verified.id().as_str().to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Pending {
        last_error: Option<String>,
    },
    Joined {
        key: PublicKey,
        id: String,
        not_after: SystemTime,
        wg_endpoint: Option<SocketAddr>,
    },
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub config: IdentityPeerConfig,
    pub state: SlotState,
    /// Join again although joined: our key or SVID changed and the peer must learn it.
    pub rejoin: bool,
}

#[derive(Debug, Default)]
pub struct Membership {
    pub slots: Vec<Slot>,
}

impl Membership {
    pub fn new(configs: &[IdentityPeerConfig]) -> Self {
        let mut m = Self::default();
        m.reconfigure(configs);
        m
    }

    /// Takes a new set of peer configs; a peer whose expected identity is unchanged keeps its
    /// joined state.
    pub fn reconfigure(&mut self, configs: &[IdentityPeerConfig]) {
        let old = std::mem::take(&mut self.slots);
        for c in configs {
            let state = old
                .iter()
                .find(|s| s.config.expected == c.expected)
                .map(|s| s.state.clone())
                .unwrap_or(SlotState::Pending { last_error: None });
            self.slots.push(Slot {
                config: c.clone(),
                state,
                rejoin: false,
            });
        }
    }

    /// Records a finished join; returns the slot it filled, or `None` if no slot expects it
    /// (the verifier refuses those, so this only happens after a reload raced the join).
    pub fn joined(&mut self, peer: &JoinedPeer, bundle: &Bundle, now: SystemTime) -> Option<usize> {
        let verified = isthmus_pki::verify(
            &peer.joined.remote_chain,
            bundle,
            now,
            None,
            Some(&peer.joined.remote_static),
        )
        .ok()?;
        let i = self
            .slots
            .iter()
            .position(|s| s.config.expected.matches(verified.id()))?;
        let slot = &mut self.slots[i];
        slot.rejoin = false;
        slot.state = SlotState::Joined {
            key: PublicKey::from_bytes(peer.joined.remote_static),
            id: verified.id().as_str().to_string(),
            not_after: verified.not_after(),
            wg_endpoint: slot.config.endpoint.or(peer.joined.endpoint_hint),
        };
        Some(i)
    }

    pub fn failed(&mut self, i: usize, reason: String) {
        if let Some(slot) = self.slots.get_mut(i) {
            if let SlotState::Pending { last_error } = &mut slot.state {
                *last_error = Some(reason);
            }
        }
    }

    pub fn mark_rejoin_all(&mut self) {
        for s in &mut self.slots {
            s.rejoin = true;
        }
    }

    /// Whether slot `i` needs a join: not joined yet, or marked for a re-join.
    pub fn wants_join(&self, i: usize) -> bool {
        self.slots
            .get(i)
            .is_some_and(|s| s.rejoin || !matches!(s.state, SlotState::Joined { .. }))
    }

    pub fn is_joined(&self, i: usize) -> bool {
        matches!(
            self.slots.get(i).map(|s| &s.state),
            Some(SlotState::Joined { .. })
        )
    }

    /// The joined peers as keyed peers for the engine.
    pub fn keyed_peers(&self, now: SystemTime) -> Vec<PeerConfig> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Joined {
                    key,
                    not_after,
                    wg_endpoint,
                    ..
                } if *not_after > now => Some(PeerConfig {
                    name: Some(s.config.display_name()),
                    public_key: *key,
                    preshared_key: s.config.preshared_key,
                    endpoint: *wg_endpoint,
                    allowed_ips: s.config.allowed_ips.clone(),
                    persistent_keepalive: s.config.persistent_keepalive,
                }),
                _ => None,
            })
            .collect()
    }

    /// Adds identity columns to the engine's peer rows, and a row for every pending peer.
    pub fn annotate(&self, rows: &mut Vec<PeerInfo>, now: SystemTime) {
        for slot in &self.slots {
            match &slot.state {
                SlotState::Joined {
                    key, id, not_after, ..
                } => {
                    if let Some(row) = rows.iter_mut().find(|r| r.public_key == key.to_base64()) {
                        row.spiffe_id = Some(id.clone());
                        row.svid_expires_unix_ms = Some(unix_ms(*not_after));
                        row.verified = true;
                        if *not_after <= now {
                            row.status = PeerState::Error;
                            row.status_reason = Some("peer SVID expired".into());
                        }
                    }
                }
                SlotState::Pending { last_error } => rows.push(PeerInfo {
                    public_key: String::new(),
                    name: Some(slot.config.display_name()),
                    endpoint: slot.config.endpoint.map(|e| e.to_string()),
                    status: if last_error.is_some() {
                        PeerState::Error
                    } else {
                        PeerState::Connecting
                    },
                    status_reason: Some(match last_error {
                        Some(e) => format!("join refused: {e}"),
                        None => match slot.config.join_endpoint {
                            Some(_) => "joining".to_string(),
                            None => "waiting for the peer to join".to_string(),
                        },
                    }),
                    last_handshake_unix_ms: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_wire_bytes: 0,
                    tx_wire_bytes: 0,
                    rx_packets: 0,
                    tx_packets: 0,
                    handshakes: 0,
                    allowed_ips: slot
                        .config
                        .allowed_ips
                        .iter()
                        .map(|n| n.to_string())
                        .collect(),
                    persistent_keepalive: slot.config.persistent_keepalive,
                    dropped: Default::default(),
                    spiffe_id: match &slot.config.expected {
                        Expected::Id(id) => Some(id.as_str().to_string()),
                        Expected::Cluster(_) => None,
                    },
                    svid_expires_unix_ms: None,
                    verified: false,
                }),
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
