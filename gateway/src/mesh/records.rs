//! Mesh membership by gossip: given one seed, a gateway learns every other gateway from
//! records their owners signed, and installs each as a WireGuard peer directly (a full mesh
//! with no broker). A member that leaves, or stops refreshing its record, disappears from
//! every peer.
//!
//! # Records
//!
//! A [`MemberRecord`] (identity, WireGuard key, endpoints, mesh address, prefixes,
//! generation, leaving) is encoded canonically (a versioned binary layout, see `mesh/records/record.rs`) and signed with the owner's SVID
//! key ([`sign_record`]); it travels as an [`OpaqueMember`] with the SVID chain, in
//! `SyncMessage::Members`. Anyone may relay it; only its owner can have made it.
//! [`verify_member`] accepts it when the chain verifies against the trust bundle, names the
//! record's identity (a gateway's) and binds the record's WireGuard key, and the leaf's key
//! signed the record. A verified member's key may therefore be installed without a Noise join:
//! the CA already bound it to the identity.
//!
//! # Contract for the owner ([`super::Mesh`])
//!
//! - At start, and whenever [`MemberTable::needs_refresh`] says so or the SVID, endpoints or
//!   prefixes change: build our record with generation [`MemberTable::next_generation`], sign
//!   it ([`sign_record`], the [`SvidSigner`](isthmus_pki::SvidSigner) loaded from `svid.key`),
//!   verify it like a peer's and [`MemberTable::set_own`] it, then send it to every peer.
//! - When a control session opens, send [`MemberTable::digest`]; answer a peer's digest with
//!   [`MemberTable::newer_than`] (and, if asked and [`MemberTable::lacks`] says so, our digest).
//! - For each received record: skip it if [`MemberTable::holds`] it, else
//!   [`verify_member`] at `now` and [`MemberTable::insert`]. On `New`/`Updated`/`Left`,
//!   reconcile the WireGuard peers with [`MemberTable::peers`] (allowed IPs: the prefixes plus
//!   the mesh address as a host route). A `New` record that came from its owner is passed on
//!   to the other peers. `Conflict` deserves a warning: two gateways share an identity.
//! - Sleep until [`MemberTable::poll_timeout`], then call [`MemberTable::expire`] (reconcile
//!   peers if it returns true) and refresh our record if due.
//! - On a deliberate shutdown: sign our record again with `leaving: true` and a new
//!   generation, set it, and send it to every peer before closing.
//!
//! Time is passed in everywhere; wall-clock time, because generations and certificate validity
//! are wall-clock. Gateways' clocks must agree to within [`TableConfig::max_clock_skew`].

mod record;
mod signed;
mod table;

#[cfg(test)]
mod tests;

pub use isthmus_catalog::OpaqueMember;
pub use record::{
    generation_time, unix_ms, MemberRecord, RecordError, MAX_PREFIXES, MAX_RECORD_LEN,
    RECORD_VERSION,
};
pub use signed::{sign_record, verify_member, MemberError, VerifiedMember, MEMBER_CONTEXT};
pub use table::{Change, MemberPeer, MemberTable, TableConfig};
