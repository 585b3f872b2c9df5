//! Peers named by SPIFFE identity: which are joined (and with which WireGuard key), which are
//! still pending and why. A Noise join (`crate::identity`) proves the peer holds the WireGuard
//! key its SVID binds; only then does the peer become a keyed [`PeerConfig`] for the engine.
//!
//! This is plain state: the daemon feeds it join outcomes and the time, and asks it for the
//! keyed peers.
//!
//! Rotation: when a joined peer joins again with a different key (it rotated), the old key is
//! kept as *retiring* for the grace period: it may still handshake and send, so traffic on the
//! old session continues until the peer switches, and it is refused once the grace period ends
//! ([`Membership::expire`]).

use crate::config::{Expected, IdentityPeerConfig, PeerConfig};
use crate::identity::{JoinedPeer, PeerVerifier, VerifiedPeer, VerifyError};
use crate::keys::PublicKey;
use isthmus_pki::{Bundle, SpiffeId};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use std::time::SystemTime;

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
    ) -> Result<VerifiedPeer, VerifyError> {
        // A pattern ("any gateway of cluster c") is checked after the chain verified.
        let pattern = expected.filter(|e| e.contains('*'));
        let expected = match expected.filter(|e| !e.is_empty() && !e.contains('*')) {
            Some(e) => Some(SpiffeId::new(e).map_err(|source| VerifyError::Expected {
                expected: e.to_string(),
                source,
            })?),
            None => None,
        };
        let verified = isthmus_pki::verify(
            chain,
            &self.bundle,
            now,
            expected.as_ref(),
            Some(remote_static),
        )
        .map_err(VerifyError::Chain)?;
        if let Some(p) = pattern {
            if !crate::identity::id_matches(p, verified.id().as_str()) {
                return Err(VerifyError::WrongIdentity {
                    id: verified.id().clone(),
                    pattern: p.to_string(),
                });
            }
        } else if expected.is_none() && !self.accept.iter().any(|a| a.matches(verified.id())) {
            return Err(VerifyError::NotAPeer {
                id: verified.id().clone(),
            });
        }
        Ok(VerifiedPeer {
            id: verified.id().clone(),
            not_after: verified.not_after(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Pending {
        last_error: Option<String>,
    },
    Joined {
        key: PublicKey,
        id: SpiffeId,
        not_after: SystemTime,
        wg_endpoint: Option<SocketAddr>,
        /// Where the peer is reached through the tunnel (it said so in the join).
        mesh_addr: Option<IpAddr>,
    },
}

/// An old key of a peer that rotated, accepted until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retiring {
    pub key: PublicKey,
    pub until: SystemTime,
}

/// A slot's name that stays while the slot exists (indices move when slots come and go).
pub type SlotId = u64;

#[derive(Debug, Clone)]
pub struct Slot {
    pub id: SlotId,
    pub config: IdentityPeerConfig,
    pub state: SlotState,
    /// Join again although joined: our key or SVID changed and the peer must learn it.
    pub rejoin: bool,
    /// The peer's previous keys during their grace period.
    pub retiring: Vec<Retiring>,
    /// Not in the file: a gateway of the trust domain joined us (`[members]`). Kept across
    /// reloads, removed when the member leaves or its SVID expires.
    pub dynamic: bool,
}

/// A joined slot as a keyed peer, with what the control plane needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedSlot {
    pub peer: PeerConfig,
    pub id: SpiffeId,
    pub mesh_addr: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub struct Membership {
    pub slots: Vec<Slot>,
    /// How long a rotated peer's old key keeps working.
    pub grace: Duration,
    /// Accept joins from any gateway of the trust domain (`[members]`), as dynamic slots
    /// with this keepalive.
    pub accept_any_gateway: Option<Option<u16>>,
    next_id: SlotId,
}

/// A pending (or re-joining) peer for the connector: where to join it and whom to expect.
#[derive(Debug, Clone)]
pub struct JoinTarget {
    pub slot: SlotId,
    /// Through the tunnel first (a re-join after our rotation), then the underlay.
    pub addrs: Vec<SocketAddr>,
    pub expected: Expected,
}

/// What `tunctl peers` shows of a peer by identity, beside the engine's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityRow {
    /// The engine runs this key: its identity and SVID expiry.
    Keyed {
        key: PublicKey,
        spiffe_id: SpiffeId,
        not_after: SystemTime,
        /// Rotated away: the old key is accepted until then; the slot's name.
        retiring_until: Option<(SystemTime, String)>,
    },
    /// Named in the file, not joined (yet, or any more).
    Pending {
        name: String,
        endpoint: Option<SocketAddr>,
        reason: PendingReason,
        allowed_ips: Vec<ipnet::IpNet>,
        persistent_keepalive: Option<u16>,
        spiffe_id: Option<SpiffeId>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingReason {
    Joining,
    WaitingForPeer,
    Refused(String),
}

impl Membership {
    pub fn new(configs: &[IdentityPeerConfig], grace: Duration) -> Self {
        let mut m = Self {
            slots: Vec::new(),
            grace,
            accept_any_gateway: None,
            next_id: 0,
        };
        m.reconfigure(configs);
        m
    }

    /// Takes a new set of peer configs; a peer whose expected identity is unchanged keeps its
    /// joined state.
    pub fn reconfigure(&mut self, configs: &[IdentityPeerConfig]) {
        let old = std::mem::take(&mut self.slots);
        for c in configs {
            let previous = old
                .iter()
                .find(|s| !s.dynamic && s.config.expected == c.expected);
            let id = match previous {
                Some(p) => p.id,
                None => self.fresh_id(),
            };
            self.slots.push(Slot {
                id,
                config: c.clone(),
                state: previous
                    .map(|s| s.state.clone())
                    .unwrap_or(SlotState::Pending { last_error: None }),
                rejoin: previous.is_some_and(|s| s.rejoin),
                retiring: previous.map(|s| s.retiring.clone()).unwrap_or_default(),
                dynamic: false,
            });
        }
        // A gateway that joined us by itself stays, unless the file now names it.
        for slot in old.into_iter().filter(|s| s.dynamic) {
            let named = match &slot.state {
                SlotState::Joined { id, .. } => configs.iter().any(|c| c.expected.matches(id)),
                SlotState::Pending { .. } => true,
            };
            if !named {
                self.slots.push(slot);
            }
        }
    }

    /// A joined gateway left the mesh (its signed leaving record came): a slot it filled by
    /// joining us goes; a configured one waits for it to join again.
    pub fn left(&mut self, id: &SpiffeId) {
        let is_it = |s: &Slot| matches!(&s.state, SlotState::Joined { id: j, .. } if j == id);
        self.slots.retain(|s| !(s.dynamic && is_it(s)));
        for slot in self.slots.iter_mut().filter(|s| is_it(s)) {
            slot.state = SlotState::Pending {
                last_error: Some("left the mesh".into()),
            };
            slot.rejoin = false;
        }
    }

    /// The slot a join from `id` fills: a configured one expecting it, or else, when any
    /// gateway of the trust domain may join, a new dynamic one.
    fn slot_for(&mut self, id: &SpiffeId) -> Option<usize> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| !s.dynamic && s.config.expected.matches(id))
        {
            return Some(i);
        }
        if let Some(i) = self.slots.iter().position(|s| {
            s.dynamic && matches!(&s.state, SlotState::Joined { id: j, .. } if j == id)
        }) {
            return Some(i);
        }
        let keepalive = self.accept_any_gateway?;
        if !Expected::AnyGateway.matches(id) {
            return None;
        }
        let slot_id = self.fresh_id();
        self.slots.push(Slot {
            id: slot_id,
            config: IdentityPeerConfig {
                name: Some(super::merge::short_name(id)),
                expected: Expected::Id(id.clone()),
                endpoint: None,
                join_endpoint: None,
                allowed_ips: Vec::new(),
                persistent_keepalive: keepalive,
                preshared_key: None,
            },
            state: SlotState::Pending { last_error: None },
            rejoin: false,
            retiring: Vec::new(),
            dynamic: true,
        });
        Some(self.slots.len() - 1)
    }

    /// Records a finished join (its chain verified by the join's verifier); returns the slot it
    /// filled, or `None` if no slot expects it (the verifier refuses those, so this only
    /// happens after a reload raced the join). A peer that joined before with another key
    /// rotated: its old key retires for the grace period.
    pub fn joined(&mut self, peer: &JoinedPeer, now: SystemTime) -> Option<SlotId> {
        let id = peer.joined.peer_id.clone();
        let i = self.slot_for(&id)?;
        let grace = self.grace;
        let slot = &mut self.slots[i];
        let key = PublicKey::from_bytes(peer.joined.remote_static);
        let previous_endpoint = match &slot.state {
            SlotState::Joined {
                key: old,
                wg_endpoint,
                ..
            } => {
                if *old != key && !grace.is_zero() {
                    slot.retiring.push(Retiring {
                        key: *old,
                        until: now + grace,
                    });
                }
                *wg_endpoint
            }
            SlotState::Pending { .. } => None,
        };
        slot.retiring.retain(|r| r.key != key);
        slot.rejoin = false;
        slot.state = SlotState::Joined {
            key,
            id,
            not_after: peer.joined.not_after,
            // A join through the tunnel comes from a mesh address: keep the endpoint we had.
            wg_endpoint: slot
                .config
                .endpoint
                .or(peer.joined.endpoint_hint)
                .or(previous_endpoint),
            mesh_addr: peer.joined.mesh_addr,
        };
        Some(slot.id)
    }

    /// Ends grace periods and SVIDs that are over at `now`: retiring keys are dropped, and a
    /// peer whose SVID expired goes back to pending so it is joined again (and picks up a
    /// renewed SVID). Returns whether the keyed peers changed.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        let before = self.slots.len();
        // A dynamic slot has nobody to join again: it goes with its SVID.
        self.slots.retain(|s| {
            !(s.dynamic
                && matches!(&s.state, SlotState::Joined { not_after, .. } if *not_after <= now))
        });
        let mut changed = self.slots.len() != before;
        for slot in &mut self.slots {
            let before = slot.retiring.len();
            slot.retiring.retain(|r| r.until > now);
            changed |= slot.retiring.len() != before;
            if let SlotState::Joined { not_after, id, .. } = &slot.state {
                if *not_after <= now {
                    tracing::debug!(peer = %id, "peer SVID expired");
                    tracing::warn!(peer = %slot.config.display_name(), "peer SVID expired; its key is removed until it joins again");
                    slot.state = SlotState::Pending {
                        last_error: Some("peer SVID expired".into()),
                    };
                    changed = true;
                }
            }
        }
        changed
    }

    /// When [`Membership::expire`] next has something to do: a grace period or an SVID ending.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.slots
            .iter()
            .flat_map(|slot| {
                let svid = match &slot.state {
                    SlotState::Joined { not_after, .. } => Some(*not_after),
                    SlotState::Pending { .. } => None,
                };
                slot.retiring.iter().map(|r| r.until).chain(svid)
            })
            .min()
    }

    /// Whether every slot marked for a re-join that was joined has re-joined (a rotation may
    /// switch the data plane to the new key).
    pub fn rejoins_done(&self) -> bool {
        !self
            .slots
            .iter()
            .any(|s| s.rejoin && matches!(s.state, SlotState::Joined { .. }))
    }

    /// Whether any peer is joined (so a rotation has someone to tell first).
    pub fn any_joined(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Joined { .. }))
    }

    /// A join of slot `slot` failed; a slot gone meanwhile (a reload) is ignored.
    pub fn failed(&mut self, slot: SlotId, reason: String) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == slot) {
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
                } if *not_after > now => Some(s.peer_config(*key, *wg_endpoint)),
                _ => None,
            })
            .collect()
    }

    /// The joined peers as keyed peers, with their identities and mesh addresses.
    pub fn joined_slots(&self, now: SystemTime) -> Vec<JoinedSlot> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Joined {
                    key,
                    id,
                    not_after,
                    wg_endpoint,
                    mesh_addr,
                } if *not_after > now => Some(JoinedSlot {
                    peer: s.peer_config(*key, *wg_endpoint),
                    id: id.clone(),
                    mesh_addr: *mesh_addr,
                }),
                _ => None,
            })
            .collect()
    }

    /// Old keys still in their grace period, for the engine beside the keyed peers.
    pub fn retiring_peers(&self, now: SystemTime) -> Vec<PeerConfig> {
        self.slots
            .iter()
            .flat_map(|s| {
                let endpoint = match &s.state {
                    SlotState::Joined { wg_endpoint, .. } => *wg_endpoint,
                    SlotState::Pending { .. } => s.config.endpoint,
                };
                s.retiring
                    .iter()
                    .filter(move |r| r.until > now)
                    .map(move |r| s.peer_config(r.key, endpoint))
            })
            .collect()
    }

    /// Every slot as `tunctl peers` shows it: the identity of each key it installed (and of
    /// its retiring keys), or why it has none.
    pub fn identities(&self) -> Vec<IdentityRow> {
        let mut rows = Vec::new();
        for slot in &self.slots {
            match &slot.state {
                SlotState::Joined {
                    key, id, not_after, ..
                } => {
                    rows.push(IdentityRow::Keyed {
                        key: *key,
                        spiffe_id: id.clone(),
                        not_after: *not_after,
                        retiring_until: None,
                    });
                    for r in &slot.retiring {
                        rows.push(IdentityRow::Keyed {
                            key: r.key,
                            spiffe_id: id.clone(),
                            not_after: *not_after,
                            retiring_until: Some((r.until, slot.config.display_name())),
                        });
                    }
                }
                SlotState::Pending { last_error } => rows.push(IdentityRow::Pending {
                    name: slot.config.display_name(),
                    endpoint: slot.config.endpoint,
                    reason: match (last_error, slot.config.join_endpoint) {
                        (Some(e), _) => PendingReason::Refused(e.clone()),
                        (None, Some(_)) => PendingReason::Joining,
                        (None, None) => PendingReason::WaitingForPeer,
                    },
                    allowed_ips: slot.config.allowed_ips.clone(),
                    persistent_keepalive: slot.config.persistent_keepalive,
                    spiffe_id: match &slot.config.expected {
                        Expected::Id(id) => Some(id.clone()),
                        Expected::Cluster(_) | Expected::AnyGateway => None,
                    },
                }),
            }
        }
        rows
    }

    /// The slots to join now: pending ones with a join endpoint, and joined ones marked for
    /// a re-join (through the tunnel at their mesh address first). `own_join_port` is used
    /// where the file gives no join endpoint.
    pub fn join_targets(&self, own_join_port: u16) -> Vec<JoinTarget> {
        self.slots
            .iter()
            .filter(|s| s.rejoin || !matches!(s.state, SlotState::Joined { .. }))
            .filter_map(|s| {
                let port = s.config.join_endpoint.map_or(own_join_port, |e| e.port());
                let through_tunnel = match &s.state {
                    SlotState::Joined { mesh_addr, .. } if s.rejoin => *mesh_addr,
                    _ => None,
                }
                .map(|a| SocketAddr::new(a, port));
                let addrs: Vec<SocketAddr> = through_tunnel
                    .into_iter()
                    .chain(s.config.join_endpoint)
                    .collect();
                (!addrs.is_empty()).then(|| JoinTarget {
                    slot: s.id,
                    addrs,
                    expected: s.config.expected.clone(),
                })
            })
            .collect()
    }

    fn fresh_id(&mut self) -> SlotId {
        self.next_id += 1;
        self.next_id
    }
}

impl Slot {
    fn peer_config(&self, key: PublicKey, endpoint: Option<SocketAddr>) -> PeerConfig {
        PeerConfig {
            name: Some(self.config.display_name()),
            public_key: key,
            preshared_key: self.config.preshared_key,
            endpoint,
            allowed_ips: self.config.allowed_ips.clone(),
            persistent_keepalive: self.config.persistent_keepalive,
        }
    }
}

#[cfg(test)]
mod tests;
