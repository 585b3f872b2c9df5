//! Our side of `[members]`: the table of signed records, what signs our own record, and the
//! refusals counted by rule. Plain state owned by [`super::Mesh`]; no locks, no I/O.

use super::records::{
    sign_record, verify_member, Change, MemberPeer, MemberRecord, MemberTable, OpaqueMember,
};
use crate::config::{IdentityConfig, MembersConfig};
use crate::keys::PublicKey;
use isthmus_catalog::DigestEntry;
use isthmus_pki::{Bundle, SpiffeId, SvidSigner};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

/// Why membership cannot sign or set our own record.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("[members] needs interface.svid_key_file")]
    NoKeyFile,
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not the SVID's private key: {reason}")]
    NotAKey { path: PathBuf, reason: String },
    #[error("{key} does not match the SVID in {svid}")]
    WrongKey { key: PathBuf, svid: PathBuf },
    #[error("the SVID chain is empty")]
    EmptyChain,
    #[error("signing our member record: {0}")]
    Sign(String),
    #[error("our own member record does not verify: {0}")]
    Verify(#[source] super::records::MemberError),
    #[error("our own member record refused: {0}")]
    Refused(#[source] super::records::MemberError),
}

/// What signs our record: the SVID's key and chain, replaced on rotation.
struct Signing {
    signer: SvidSigner,
    chain: Vec<Vec<u8>>,
    bundle: Bundle,
}

fn signing(identity: &IdentityConfig) -> Result<Signing, SigningError> {
    let path = identity
        .svid_key_file
        .as_ref()
        .ok_or(SigningError::NoKeyFile)?;
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Read {
        path: path.clone(),
        source,
    })?;
    let signer = SvidSigner::from_pem(&text).map_err(|e| SigningError::NotAKey {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let leaf = identity.chain.first().ok_or(SigningError::EmptyChain)?;
    signer
        .check_leaf(leaf)
        .map_err(|_| SigningError::WrongKey {
            key: path.clone(),
            svid: identity.svid_file.clone(),
        })?;
    Ok(Signing {
        signer,
        chain: identity.chain.clone(),
        bundle: identity.bundle.clone(),
    })
}

/// What a received batch of records changed.
#[derive(Debug, Default)]
pub struct Received {
    /// Members added, updated or gone: the peers must be re-applied.
    pub changed: bool,
    /// Identities whose leaving record was accepted.
    pub left: Vec<SpiffeId>,
    /// Records of members new to us that came from their owner: the one gateway that meets a
    /// newcomer first-hand introduces it to its other peers (one hop, O(N) messages).
    pub introduced: Vec<OpaqueMember>,
}

/// Membership state of a gateway with `[members]`.
pub struct Members {
    pub config: MembersConfig,
    table: MemberTable,
    signing: Signing,
    /// Records refused, by rule.
    refused: BTreeMap<&'static str, u64>,
    /// Signature verifications done (records not already held).
    verifications: u64,
}

impl Members {
    pub fn new(config: &MembersConfig, identity: &IdentityConfig) -> Result<Self, SigningError> {
        Ok(Self {
            config: config.clone(),
            table: MemberTable::new(identity.id.clone(), config.table),
            signing: signing(identity)?,
            refused: BTreeMap::new(),
            verifications: 0,
        })
    }

    /// From a signer in memory (the simulations).
    #[cfg(test)]
    pub(crate) fn from_signer(
        config: MembersConfig,
        own: SpiffeId,
        signer: SvidSigner,
        chain: Vec<Vec<u8>>,
        bundle: Bundle,
    ) -> Self {
        Self {
            table: MemberTable::new(own, config.table),
            config,
            signing: Signing {
                signer,
                chain,
                bundle,
            },
            refused: BTreeMap::new(),
            verifications: 0,
        }
    }

    /// After a rotation: sign with the new SVID and verify against the new bundle.
    pub fn set_identity(&mut self, identity: &IdentityConfig) -> Result<(), SigningError> {
        self.signing = signing(identity)?;
        Ok(())
    }

    /// Signs and sets our record (`leaving` on shutdown) with a new generation; returns it.
    pub fn sign_own(
        &mut self,
        wg_public_key: &PublicKey,
        mesh_addr: IpAddr,
        leaving: bool,
        now: SystemTime,
    ) -> Result<OpaqueMember, SigningError> {
        let record = MemberRecord {
            spiffe_id: self.table.own_id().clone(),
            wg_public_key: *wg_public_key.as_bytes(),
            endpoint: self.config.endpoint,
            join_endpoint: self.config.join_endpoint,
            mesh_addr,
            prefixes: self.config.prefixes.clone(),
            generation: self.table.next_generation(now),
            leaving,
        };
        let opaque = sign_record(&record, &self.signing.signer, &self.signing.chain)
            .map_err(|e| SigningError::Sign(e.to_string()))?;
        let verified =
            verify_member(&opaque, &self.signing.bundle, now).map_err(SigningError::Verify)?;
        self.table
            .set_own(verified)
            .map_err(SigningError::Refused)?;
        Ok(opaque)
    }

    /// Verifies and merges records `sender` sent (its identity is the session's).
    pub fn receive(
        &mut self,
        sender: &SpiffeId,
        records: &[OpaqueMember],
        now: SystemTime,
    ) -> Received {
        let mut out = Received::default();
        for opaque in records {
            if self.table.holds(opaque) {
                continue;
            }
            self.verifications += 1;
            let member = match verify_member(opaque, &self.signing.bundle, now) {
                Ok(m) => m,
                Err(e) => {
                    *self.refused.entry(e.rule()).or_default() += 1;
                    tracing::warn!(error = %e, rule = e.rule(), "member record refused");
                    continue;
                }
            };
            let id = member.id().clone();
            let generation = member.record().generation;
            match self.table.insert(member, now) {
                Change::New => {
                    tracing::debug!(member = %id, generation, "new mesh member");
                    out.changed = true;
                    if id == *sender {
                        out.introduced.push(opaque.clone());
                    }
                }
                Change::Updated => {
                    tracing::debug!(member = %id, generation, "member record updated");
                    out.changed = true;
                }
                Change::Left => {
                    tracing::debug!(member = %id, "mesh member left");
                    out.changed = true;
                    out.left.push(id);
                }
                Change::Unchanged | Change::Stale => {}
                Change::Conflict => {
                    *self.refused.entry("conflict").or_default() += 1;
                    tracing::debug!(member = %id, generation, "conflicting records");
                    tracing::warn!(generation, "two different member records of one generation: two gateways share an identity (tunctl status counts member_conflict); keeping the first");
                }
            }
        }
        out
    }

    /// Drops records past their lifetime (and tombstones past theirs); whether any went.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        self.table.expire(now)
    }

    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        self.table.needs_refresh(now)
    }

    pub fn peers(&self, now: SystemTime) -> Vec<MemberPeer> {
        self.table.peers(now)
    }

    /// Every record held, ours first.
    pub fn gossip(&self) -> Vec<OpaqueMember> {
        self.table.gossip()
    }

    pub fn digest(&self) -> Vec<DigestEntry> {
        self.table.digest()
    }

    pub fn newer_than(&self, digest: &[DigestEntry]) -> Vec<OpaqueMember> {
        self.table.newer_than(digest)
    }

    pub fn lacks(&self, digest: &[DigestEntry]) -> bool {
        self.table.lacks(digest)
    }

    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.table.poll_timeout()
    }

    pub fn refused(&self) -> &BTreeMap<&'static str, u64> {
        &self.refused
    }

    pub fn verifications(&self) -> u64 {
        self.verifications
    }
}
