//! The members a gateway knows, merged from gossip by generation.

use super::record::MemberRecord;
use super::record::{generation_time, unix_ms};
use super::signed::{MemberError, VerifiedMember};
pub use crate::config::TableConfig;
use ipnet::IpNet;
use isthmus_catalog::{DigestEntry, OpaqueMember};
use isthmus_pki::SpiffeId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

/// What [`MemberTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A member that was not a peer now is: install it.
    New,
    /// A peer's record was replaced by a newer one: update it.
    Updated,
    /// A leaving record was accepted: the member is no longer a peer (if it was) and the
    /// tombstone is kept and gossiped.
    Left,
    /// The record is the one held.
    Unchanged,
    /// Refused: older than the one held, too old or too far in the future, removed by the
    /// operator, expired, or our own identity (we are the only author of our record).
    Stale,
    /// Same generation, different bytes: the identity signed two records, as two gateways
    /// sharing one SVID would. The one held is kept.
    Conflict,
}

/// A member to install as a WireGuard peer. Its key is bound to its identity by the signed
/// SVID, so no join is needed before installing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPeer {
    pub spiffe_id: SpiffeId,
    pub cluster: String,
    pub wg_public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub join_endpoint: Option<SocketAddr>,
    pub mesh_addr: IpAddr,
    pub prefixes: Vec<IpNet>,
    pub generation: u64,
    /// The SVID's expiry: remove the peer then, unless a newer record arrived.
    pub not_after: SystemTime,
}

#[derive(Debug, Clone)]
enum Slot {
    /// A live member or, when its record is leaving, a tombstone.
    Member(Box<VerifiedMember>),
    /// Removed by the operator: records of this identity up to `generation` are refused until
    /// `until`.
    Removed { generation: u64, until: SystemTime },
}

/// Every member this gateway knows, keyed by SPIFFE ID, plus its own record.
///
/// Merge rule: per identity, the highest generation wins; a record is accepted only while it
/// is fresh (signed at most `member_ttl` ago, or `tombstone_ttl` for a leaving one, and not
/// beyond the allowed skew ahead) and its SVID valid. Since every table applies the same rule
/// to the same signed records, tables that saw the same records agree, in whatever order they
/// saw them.
#[derive(Debug)]
pub struct MemberTable {
    own_id: SpiffeId,
    own: Option<VerifiedMember>,
    /// The highest generation of our own identity seen from others (a previous run).
    own_seen: u64,
    slots: BTreeMap<SpiffeId, Slot>,
    config: TableConfig,
    conflicts: u64,
}

impl MemberTable {
    pub fn new(own_id: SpiffeId, config: TableConfig) -> Self {
        let floor = config.member_ttl.saturating_add(config.max_clock_skew);
        let config = TableConfig {
            tombstone_ttl: config.tombstone_ttl.max(floor),
            ..config
        };
        Self {
            own_id,
            own: None,
            own_seen: 0,
            slots: BTreeMap::new(),
            config,
            conflicts: 0,
        }
    }

    pub fn own_id(&self) -> &SpiffeId {
        &self.own_id
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Our own record, as last set.
    pub fn own(&self) -> Option<&VerifiedMember> {
        self.own.as_ref()
    }

    /// The generation to sign our next record with: now in milliseconds, and above every
    /// generation of ours seen so far, including a previous run's gossiped back to us.
    pub fn next_generation(&self, now: SystemTime) -> u64 {
        let held = self.own.as_ref().map_or(0, |o| o.record().generation);
        unix_ms(now)
            .max(held.saturating_add(1))
            .max(self.own_seen.saturating_add(1))
    }

    /// Sets our own record (verified, so a wrong key or chain shows here, not at every peer).
    /// Refuses another identity's record; a generation not above the held one is `Stale`.
    pub fn set_own(&mut self, member: VerifiedMember) -> Result<Change, MemberError> {
        if *member.id() != self.own_id {
            return Err(MemberError::NotOwnRecord(member.id().clone()));
        }
        let change = match &self.own {
            Some(held) if held.record().generation >= member.record().generation => {
                return Ok(Change::Stale)
            }
            _ if member.record().leaving => Change::Left,
            Some(held) if !held.record().leaving => Change::Updated,
            _ => Change::New,
        };
        self.own = Some(member);
        Ok(change)
    }

    /// True when our own record should be re-signed with a new generation: there is none, or
    /// a refresh interval has passed since it was signed. Never for a leaving record.
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        let Some(own) = &self.own else {
            return true;
        };
        if own.record().leaving {
            return false;
        }
        deadline(own.record().generation, self.config.refresh_interval())
            .is_none_or(|due| due <= now)
    }

    /// True when a record with exactly these bytes is held: receiving it again would change
    /// nothing, so its verification can be skipped. One lookup by identity (the record's bytes
    /// are decoded, not verified, to find it).
    pub fn holds(&self, opaque: &OpaqueMember) -> bool {
        let Ok(record) = MemberRecord::decode(&opaque.record) else {
            return false;
        };
        self.get(&record.spiffe_id)
            .is_some_and(|m| m.opaque().record == opaque.record)
    }

    /// Every record held (ours, live members and tombstones) as identity and generation, for
    /// a `MembersDigest`.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.held()
            .map(|m| DigestEntry {
                id: m.id().as_str().as_bytes().to_vec(),
                generation: m.record().generation,
            })
            .collect()
    }

    /// The records held that a peer with this digest lacks or holds an older generation of:
    /// what to send it.
    pub fn newer_than(&self, digest: &[DigestEntry]) -> Vec<OpaqueMember> {
        let theirs: BTreeMap<&[u8], u64> = digest
            .iter()
            .map(|e| (e.id.as_slice(), e.generation))
            .collect();
        self.held()
            .filter(|m| {
                theirs
                    .get(m.id().as_str().as_bytes())
                    .is_none_or(|g| *g < m.record().generation)
            })
            .map(|m| m.opaque().clone())
            .collect()
    }

    /// Whether a peer with this digest holds a record we lack or hold older (other than of our
    /// own identity, which only we sign): ask it with our digest.
    pub fn lacks(&self, digest: &[DigestEntry]) -> bool {
        digest.iter().any(|e| {
            let Ok(id) = std::str::from_utf8(&e.id) else {
                return false;
            };
            let Ok(id) = SpiffeId::new(id) else {
                return false;
            };
            if id == self.own_id {
                return false;
            }
            match self.slots.get(&id) {
                Some(Slot::Member(m)) => m.record().generation < e.generation,
                Some(Slot::Removed { generation, .. }) => *generation < e.generation,
                None => true,
            }
        })
    }

    fn held(&self) -> impl Iterator<Item = &VerifiedMember> + '_ {
        let others = self.slots.values().filter_map(|s| match s {
            Slot::Member(m) => Some(&**m),
            Slot::Removed { .. } => None,
        });
        self.own.iter().chain(others)
    }

    /// Merges a verified record received from a peer.
    pub fn insert(&mut self, member: VerifiedMember, now: SystemTime) -> Change {
        let record = member.record();
        let generation = record.generation;
        if record.spiffe_id == self.own_id {
            self.own_seen = self.own_seen.max(generation);
            return Change::Stale;
        }
        if !self.is_fresh(&member, now) || !self.is_signed_in_the_past(generation, now) {
            return Change::Stale;
        }
        let was_peer = match self.slots.get(&record.spiffe_id) {
            Some(Slot::Removed {
                generation: up_to,
                until,
            }) if generation <= *up_to && now <= *until => return Change::Stale,
            Some(Slot::Member(held)) => {
                let held_generation = held.record().generation;
                if generation < held_generation {
                    return Change::Stale;
                }
                if generation == held_generation {
                    if held.opaque().record == member.opaque().record {
                        return Change::Unchanged;
                    }
                    self.conflicts += 1;
                    return Change::Conflict;
                }
                !held.record().leaving
            }
            Some(Slot::Removed { .. }) | None => false,
        };
        let change = match (record.leaving, was_peer) {
            (true, _) => Change::Left,
            (false, true) => Change::Updated,
            (false, false) => Change::New,
        };
        self.slots
            .insert(record.spiffe_id.clone(), Slot::Member(Box::new(member)));
        change
    }

    /// An operator removed `id`: it stops being a peer now, and its records signed up to now
    /// (or up to the held one, if later) are refused for `tombstone_ttl`, so gossip of them
    /// does not bring it back. A record it signs later is accepted. Local to this gateway.
    /// Returns whether it was a peer.
    pub fn remove(&mut self, id: &SpiffeId, now: SystemTime) -> bool {
        let (was_peer, held) = match self.slots.get(id) {
            Some(Slot::Member(m)) => (!m.record().leaving, m.record().generation),
            Some(Slot::Removed { generation, .. }) => (false, *generation),
            None => (false, 0),
        };
        let until = now.checked_add(self.config.tombstone_ttl).unwrap_or(now);
        self.slots.insert(
            id.clone(),
            Slot::Removed {
                generation: held.max(unix_ms(now)),
                until,
            },
        );
        was_peer
    }

    /// Drops members whose SVID expired or whose record was not refreshed within
    /// `member_ttl`, tombstones older than `tombstone_ttl` and past removals. Returns whether
    /// [`MemberTable::peers`] lost a member.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        let before = self.live().count();
        let config = self.config;
        self.slots.retain(|_, slot| match slot {
            Slot::Member(m) if m.record().leaving => {
                deadline(m.record().generation, config.tombstone_ttl).is_some_and(|d| now <= d)
            }
            Slot::Member(m) => fresh(m, config.member_ttl, now),
            Slot::Removed { until, .. } => now <= *until,
        });
        self.live().count() != before
    }

    /// The members to have as WireGuard peers at `now`, by SPIFFE ID.
    pub fn peers(&self, now: SystemTime) -> Vec<MemberPeer> {
        self.live()
            .filter(|m| fresh(m, self.config.member_ttl, now))
            .map(|m| {
                let r = m.record();
                MemberPeer {
                    spiffe_id: r.spiffe_id.clone(),
                    cluster: m.cluster().to_owned(),
                    wg_public_key: r.wg_public_key,
                    endpoint: r.endpoint,
                    join_endpoint: r.join_endpoint,
                    mesh_addr: r.mesh_addr,
                    prefixes: r.prefixes.clone(),
                    generation: r.generation,
                    not_after: m.not_after(),
                }
            })
            .collect()
    }

    /// Every record to send in a `Members` message: ours, every live member's and every
    /// tombstone, by SPIFFE ID after ours. Call [`MemberTable::expire`] first. More than
    /// `isthmus_catalog::limits::MAX_MEMBERS` must be split over several messages.
    pub fn gossip(&self) -> Vec<OpaqueMember> {
        self.held().map(|m| m.opaque().clone()).collect()
    }

    /// The record held for `id` (live or leaving), ours included.
    pub fn get(&self, id: &SpiffeId) -> Option<&VerifiedMember> {
        if *id == self.own_id {
            return self.own.as_ref();
        }
        match self.slots.get(id) {
            Some(Slot::Member(m)) => Some(m),
            _ => None,
        }
    }

    /// How many times an identity presented two different records of one generation.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// When [`MemberTable::expire`] or a refresh of our own record is next due: sleep until
    /// then.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        let config = self.config;
        let slots = self.slots.values().filter_map(|slot| match slot {
            Slot::Member(m) if m.record().leaving => {
                deadline(m.record().generation, config.tombstone_ttl)
            }
            Slot::Member(m) => {
                deadline(m.record().generation, config.member_ttl).map(|d| d.min(m.not_after()))
            }
            Slot::Removed { until, .. } => Some(*until),
        });
        let refresh = self
            .own
            .as_ref()
            .filter(|o| !o.record().leaving)
            .and_then(|o| deadline(o.record().generation, config.refresh_interval()));
        slots.chain(refresh).min()
    }

    fn live(&self) -> impl Iterator<Item = &VerifiedMember> + '_ {
        self.slots.values().filter_map(|s| match s {
            Slot::Member(m) if !m.record().leaving => Some(&**m),
            _ => None,
        })
    }

    fn is_fresh(&self, member: &VerifiedMember, now: SystemTime) -> bool {
        if member.record().leaving {
            member.not_after() >= now
                && deadline(member.record().generation, self.config.tombstone_ttl)
                    .is_some_and(|d| now <= d)
        } else {
            fresh(member, self.config.member_ttl, now)
        }
    }

    fn is_signed_in_the_past(&self, generation: u64, now: SystemTime) -> bool {
        let horizon = now.checked_add(self.config.max_clock_skew).unwrap_or(now);
        generation_time(generation).is_some_and(|t| t <= horizon)
    }
}

/// A live record is fresh while its SVID is valid and it is younger than `ttl`.
fn fresh(member: &VerifiedMember, ttl: Duration, now: SystemTime) -> bool {
    member.not_after() >= now && deadline(member.record().generation, ttl).is_some_and(|d| now <= d)
}

/// `ttl` after the generation was signed.
fn deadline(generation: u64, ttl: Duration) -> Option<SystemTime> {
    generation_time(generation)?.checked_add(ttl)
}
