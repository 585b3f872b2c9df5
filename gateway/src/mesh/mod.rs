//! The one owner of the peer set: who our peers are, with which key, prefixes and identity,
//! from every source — peers by key in the file, peers by identity that joined us or that we
//! joined (Noise), and, with `[members]`, gateways learned from signed member records.
//!
//! [`Mesh`] is plain state with no I/O, no locks and no clock of its own: the daemon holds it
//! behind one lock, feeds it events with `now` (joins, join failures, member records and
//! digests from sync sessions, reloads, rotations, the expiry timer) and, after each event that
//! changed something, applies [`Mesh::desired`] in one place (engine, kernel routes, the
//! control plane's directory and routes) and records it with [`Mesh::set_applied`]. What to
//! send to other gateways comes back as [`Outgoing`] messages.
//!
//! # Time
//!
//! `now` is wall-clock time ([`SystemTime`]) here because everything timed in this module is
//! a protocol's wall-clock time: SVID validity, record generations (Unix milliseconds) and
//! rotation grace periods compared across gateways. Nothing here reads a clock.
//!
//! # Gossip (`[members]`)
//!
//! Records cross each session once, not on every change (O(N) messages and signature
//! verifications per membership change in a mesh of N, not O(N²)):
//! - our own record, when we sign it (start, refresh, rotation, leaving), goes to every
//!   session;
//! - a session that opens sends a [`MembersDigest`] (identity and generation of every record
//!   held); the receiver answers with the records the sender lacks;
//! - a record of a member new to us that came from that member itself is passed on to every
//!   other session (the gateway a newcomer joined introduces it; receivers pass nothing on);
//! - now and then the control plane sends a digest asking for a reply to one random session
//!   (anti-entropy), which repairs anything lost.

pub mod directory;
pub mod joined;
pub mod members;
pub mod merge;
pub mod records;

#[cfg(test)]
mod model;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testing;

pub use directory::{Directory, DirectoryReader, MeshPeer, PeerDirectory};

use crate::config::{Config, Expected, PeerConfig};
use crate::identity::JoinedPeer;
use crate::keys::PublicKey;
use ipnet::IpNet;
use isthmus_catalog::{DigestEntry, MembersDigest, OpaqueMember, SyncMessage};
use isthmus_pki::SpiffeId;
use joined::{IdentityRow, JoinTarget, Membership, SlotId};
use members::{Members, SigningError};
use merge::{Learned, Merged};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// Which sync sessions a message goes to, by the peer's mesh address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    All,
    AllBut(IpAddr),
    One(IpAddr),
}

impl Target {
    /// Whether the session with the peer at `addr` sends it.
    pub fn includes(&self, addr: IpAddr) -> bool {
        match self {
            Target::All => true,
            Target::AllBut(a) => *a != addr,
            Target::One(a) => *a == addr,
        }
    }
}

/// A membership message for the control plane to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Target,
    pub msg: SyncMessage,
}

/// What a sync session received for the mesh.
#[derive(Debug, Clone)]
pub enum Input {
    Records(Vec<OpaqueMember>),
    Digest(MembersDigest),
}

/// A message from the control plane to the mesh: what a session with `from` received.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub from: MeshPeer,
    pub input: Input,
}

/// `records` as `Members` messages of at most the catalog's limit each.
pub fn members_messages(to: Target, records: &[OpaqueMember]) -> Vec<Outgoing> {
    records
        .chunks(isthmus_catalog::limits::MAX_MEMBERS)
        .map(|c| Outgoing {
            to,
            msg: SyncMessage::Members(c.to_vec()),
        })
        .collect()
}

/// What the file says beside the peers by identity.
#[derive(Debug, Clone, Default)]
struct FilePeers {
    /// Peers by key.
    configured: Vec<PeerConfig>,
    /// Prefixes that are ours: our mesh addresses and `[members] prefixes`.
    own: Vec<IpNet>,
    mesh_addrs: Vec<IpAddr>,
    /// Keepalive for members learned from records.
    keepalive: Option<u16>,
}

impl FilePeers {
    fn from_config(cfg: &Config) -> Self {
        let mesh_addrs: Vec<IpAddr> = cfg.interface.addresses.iter().map(|a| a.addr()).collect();
        let mut own: Vec<IpNet> = mesh_addrs.iter().copied().map(IpNet::from).collect();
        if let Some(m) = &cfg.members {
            own.extend(m.prefixes.iter().copied());
        }
        Self {
            configured: cfg.peers.clone(),
            own,
            mesh_addrs,
            keepalive: cfg.members.as_ref().and_then(|m| m.persistent_keepalive),
        }
    }
}

/// What [`Mesh::expire`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Keys or members went: apply.
    pub changed: bool,
    /// Our record is due to be re-signed ([`Mesh::publish_own`]).
    pub refresh_due: bool,
}

/// The peer set's owner (see the module docs).
pub struct Mesh {
    file: FilePeers,
    joined: Membership,
    members: Option<Members>,
    applied: Merged,
}

impl Mesh {
    /// From a validated configuration; fails when `[members]` is on and our record cannot be
    /// signed (missing or wrong SVID key).
    pub fn new(cfg: &Config) -> Result<Self, SigningError> {
        let members = match (&cfg.members, &cfg.identity) {
            (Some(m), Some(identity)) => Some(Members::new(m, identity)?),
            _ => None,
        };
        let grace = cfg
            .identity
            .as_ref()
            .map_or(std::time::Duration::ZERO, |i| i.rotation_grace);
        let mut joined = Membership::new(&cfg.identity_peers, grace);
        joined.accept_any_gateway = cfg.members.as_ref().map(|m| m.persistent_keepalive);
        Ok(Self {
            file: FilePeers::from_config(cfg),
            joined,
            members,
            applied: Merged::default(),
        })
    }

    /// A gateway with `[members]` and no peers in its file (the simulations).
    #[cfg(test)]
    pub(crate) fn with_members(members: Members, mesh_addr: IpAddr) -> Self {
        let mut own = vec![IpNet::from(mesh_addr)];
        own.extend(members.config.prefixes.iter().copied());
        let keepalive = members.config.persistent_keepalive;
        // As `Mesh::new` with `[members]`: any gateway of the trust domain may join.
        let mut joined = Membership::new(&[], std::time::Duration::ZERO);
        joined.accept_any_gateway = Some(keepalive);
        Self {
            file: FilePeers {
                own,
                mesh_addrs: vec![mesh_addr],
                keepalive,
                ..FilePeers::default()
            },
            joined,
            members: Some(members),
            applied: Merged::default(),
        }
    }

    /// Verifications of member records so far.
    #[cfg(test)]
    pub(crate) fn verifications(&self) -> u64 {
        self.members.as_ref().map_or(0, Members::verifications)
    }

    /// A reloaded file: its peers by key and by identity (a peer whose expected identity is
    /// unchanged keeps its joined state) and the rotation grace period.
    pub fn reconfigure(&mut self, cfg: &Config) {
        let grace = cfg
            .identity
            .as_ref()
            .map_or(self.joined.grace, |i| i.rotation_grace);
        // Addresses and `[members]` need a restart: keep the running ones.
        self.set_file_peers(cfg.peers.clone(), cfg.identity_peers.clone(), grace);
    }

    /// The file's peers by key and by identity, and the rotation grace period.
    pub fn set_file_peers(
        &mut self,
        configured: Vec<PeerConfig>,
        identity_peers: Vec<crate::config::IdentityPeerConfig>,
        grace: std::time::Duration,
    ) {
        self.joined.reconfigure(&identity_peers);
        self.joined.grace = grace;
        self.file.configured = configured;
    }

    /// A join finished (its chain verified); the slot it filled, if any still expects it.
    pub fn joined(&mut self, peer: &JoinedPeer, now: SystemTime) -> Option<SlotId> {
        self.joined.joined(peer, now)
    }

    pub fn join_failed(&mut self, slot: SlotId, reason: String) {
        self.joined.failed(slot, reason);
    }

    pub fn join_targets(&self, own_join_port: u16) -> Vec<JoinTarget> {
        self.joined.join_targets(own_join_port)
    }

    /// Whom the join listener accepts: the configured peers by identity and, with
    /// `[members]`, any gateway of the trust domain.
    pub fn accepted(&self) -> Vec<Expected> {
        self.joined
            .slots
            .iter()
            .filter(|s| !s.dynamic)
            .map(|s| s.config.expected.clone())
            .chain(self.joined.accept_any_gateway.map(|_| Expected::AnyGateway))
            .collect()
    }

    /// Our key or SVID changed: every joined peer must join again to learn it.
    pub fn mark_rejoin_all(&mut self) {
        self.joined.mark_rejoin_all();
    }

    pub fn rejoins_done(&self) -> bool {
        self.joined.rejoins_done()
    }

    pub fn any_joined(&self) -> bool {
        self.joined.any_joined()
    }

    /// After a rotation: our record is signed with the new SVID from now on.
    pub fn set_identity(
        &mut self,
        identity: &crate::config::IdentityConfig,
    ) -> Result<(), SigningError> {
        match &mut self.members {
            Some(m) => m.set_identity(identity),
            None => Ok(()),
        }
    }

    /// Signs our member record (a leaving one on shutdown) and returns it for every session.
    /// Nothing without `[members]` or a mesh address.
    pub fn publish_own(
        &mut self,
        key: &PublicKey,
        leaving: bool,
        now: SystemTime,
    ) -> Result<Vec<Outgoing>, SigningError> {
        let (Some(members), Some(addr)) = (&mut self.members, self.file.mesh_addrs.first()) else {
            return Ok(Vec::new());
        };
        let own = members.sign_own(key, *addr, leaving, now)?;
        Ok(members_messages(Target::All, &[own]))
    }

    /// Records a session with `from` received. Returns whether the peer set may have changed
    /// (apply) and what to pass on.
    pub fn receive(
        &mut self,
        from: &MeshPeer,
        records: &[OpaqueMember],
        now: SystemTime,
    ) -> (bool, Vec<Outgoing>) {
        let Some(members) = &mut self.members else {
            return (false, Vec::new());
        };
        let received = members.receive(&from.spiffe_id, records, now);
        for id in &received.left {
            self.joined.left(id);
        }
        let out = members_messages(Target::AllBut(from.addr), &received.introduced);
        (received.changed, out)
    }

    /// A digest a session with `from` received: the records it lacks and, if asked and we
    /// lack some of its records, our digest.
    pub fn digest_received(&self, from: &MeshPeer, digest: &MembersDigest) -> Vec<Outgoing> {
        let Some(members) = &self.members else {
            return Vec::new();
        };
        let to = Target::One(from.addr);
        let mut out = members_messages(to, &members.newer_than(&digest.entries));
        if digest.reply && members.lacks(&digest.entries) {
            out.push(Outgoing {
                to,
                msg: SyncMessage::MembersDigest(MembersDigest {
                    reply: false,
                    entries: members.digest(),
                }),
            });
        }
        out
    }

    /// Every record held as identity and generation (empty without `[members]`).
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.members
            .as_ref()
            .map(Members::digest)
            .unwrap_or_default()
    }

    /// Ends grace periods, expired SVIDs and member records past their lifetime.
    pub fn expire(&mut self, now: SystemTime) -> Expired {
        let mut changed = self.joined.expire(now);
        let mut refresh_due = false;
        if let Some(members) = &mut self.members {
            refresh_due = members.needs_refresh(now);
            // Nothing of the table is due yet (joined peers may have been; this keeps the
            // table from being walked for them).
            if members.poll_timeout().is_none_or(|t| t > now) {
                return Expired {
                    changed,
                    refresh_due,
                };
            }
            // Installed members whose record is no longer fresh: their owner stopped
            // re-signing it (it died without leaving).
            let fresh: Vec<SpiffeId> = members
                .peers(now)
                .into_iter()
                .map(|p| p.spiffe_id)
                .collect();
            let lapsed: Vec<SpiffeId> = self
                .applied
                .members
                .iter()
                .map(|(_, id, _)| id.clone())
                .filter(|id| !fresh.contains(id))
                .collect();
            changed |= members.expire(now);
            for id in &lapsed {
                tracing::debug!(member = %id, "member record not renewed in time: the member is gone");
                self.joined.left(id);
            }
            if !lapsed.is_empty() {
                tracing::warn!(
                    members = lapsed.len(),
                    "member records not renewed in time: those members are gone"
                );
                changed = true;
            }
        }
        Expired {
            changed,
            refresh_due,
        }
    }

    /// The peer set every source yields at `now` (see [`merge::merge`]).
    pub fn desired(&self, now: SystemTime) -> Merged {
        let slots: Vec<_> = self.joined.slots.iter().map(|s| s.config.clone()).collect();
        let learned = self.members.as_ref().map(|m| Learned {
            members: m.peers(now),
            keepalive: self.file.keepalive,
        });
        merge::merge(
            &self.file.own,
            &self.file.configured,
            &slots,
            self.joined.joined_slots(now),
            learned,
        )
    }

    /// Old keys still in their grace period, for the engine beside [`Mesh::desired`].
    pub fn retiring(&self, now: SystemTime) -> Vec<PeerConfig> {
        self.joined.retiring_peers(now)
    }

    /// Records what was applied; returns the prefix refusals that are new since the last one.
    pub fn set_applied(&mut self, merged: Merged) -> Vec<(String, IpNet, String)> {
        let new: Vec<_> = merged
            .refused
            .iter()
            .filter(|r| !self.applied.refused.contains(r))
            .cloned()
            .collect();
        self.applied = merged;
        new
    }

    /// The peer set last applied.
    pub fn applied(&self) -> &Merged {
        &self.applied
    }

    pub fn mesh_addrs(&self) -> &[IpAddr] {
        &self.file.mesh_addrs
    }

    /// The identity of every key applied, and every peer by identity without one, for
    /// `tunctl peers`: peers by identity first, then members learned from records.
    pub fn identities(&self) -> Vec<IdentityRow> {
        let mut rows = self.joined.identities();
        rows.extend(
            self.applied
                .members
                .iter()
                .map(|(key, id, not_after)| IdentityRow::Keyed {
                    key: *key,
                    spiffe_id: id.clone(),
                    not_after: *not_after,
                    retiring_until: None,
                }),
        );
        rows
    }

    /// Members with a live record, and records refused by rule (`[members]` only).
    pub fn members_status(
        &self,
        now: SystemTime,
    ) -> Option<(Vec<SpiffeId>, BTreeMap<&'static str, u64>)> {
        let m = self.members.as_ref()?;
        Some((
            m.peers(now).into_iter().map(|p| p.spiffe_id).collect(),
            m.refused().clone(),
        ))
    }

    /// When [`Mesh::expire`] has something to do next: a grace period or an SVID of a joined
    /// peer ending, a member record lapsing, our own record due for re-signing.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        let members = self.members.as_ref().and_then(Members::poll_timeout);
        self.joined.poll_timeout().into_iter().chain(members).min()
    }
}
