//! Signing a member record with the SVID key, and the rules a received one must pass.

use super::record::{MemberRecord, RecordError};
use isthmus_catalog::limits::{MAX_CERT_LEN, MAX_CHAIN_CERTS};
use isthmus_catalog::OpaqueMember;
use isthmus_pki::signing::{Context, SignatureError, SvidSigner};
use isthmus_pki::{Bundle, IdKind, SpiffeId, VerifyError};
use std::time::SystemTime;

/// What a member record signature is over: `"isthmus-member-v1" || 0x00 || record bytes`.
pub const MEMBER_CONTEXT: Context = Context::new("isthmus-member-v1");

/// Why a member record was refused (or could not be signed); one variant per rule, checked in
/// this order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    #[error("malformed member record")]
    Record(#[source] RecordError),
    #[error("member SVID refused")]
    Chain(#[source] VerifyError),
    #[error("record names {record}, its SVID {svid}")]
    IdentityMismatch { record: SpiffeId, svid: SpiffeId },
    #[error("{0} is not a gateway identity")]
    NotAGateway(SpiffeId),
    #[error("the record's WireGuard key is not the one its SVID binds")]
    WgKeyNotBound,
    #[error("member record signature refused")]
    Signature(#[source] SignatureError),
    #[error("the SVID chain exceeds the sync message limits")]
    ChainTooLarge,
    #[error("{0} is not this gateway's identity")]
    NotOwnRecord(SpiffeId),
}

impl MemberError {
    /// A stable kebab-case name of the broken rule, for logs and metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Record(_) => "malformed-record",
            Self::Chain(e) => e.rule(),
            Self::IdentityMismatch { .. } => "identity-mismatch",
            Self::NotAGateway(_) => "not-a-gateway",
            Self::WgKeyNotBound => "wg-key-not-bound",
            Self::Signature(_) => "bad-record-signature",
            Self::ChainTooLarge => "chain-too-large",
            Self::NotOwnRecord(_) => "not-own-record",
        }
    }
}

/// Encodes `record` and signs it with the SVID key; `chain` is the SVID chain (DER, leaf
/// first), whose leaf must carry the signer's key.
pub fn sign_record(
    record: &MemberRecord,
    signer: &SvidSigner,
    chain: &[Vec<u8>],
) -> Result<OpaqueMember, MemberError> {
    let leaf = chain
        .first()
        .ok_or(MemberError::Chain(VerifyError::EmptyChain))?;
    if chain.len() > MAX_CHAIN_CERTS || chain.iter().any(|c| c.len() > MAX_CERT_LEN) {
        return Err(MemberError::ChainTooLarge);
    }
    signer.check_leaf(leaf).map_err(MemberError::Signature)?;
    let bytes = record.encode().map_err(MemberError::Record)?;
    let signature = signer
        .sign(MEMBER_CONTEXT, &bytes)
        .map_err(MemberError::Signature)?;
    Ok(OpaqueMember {
        record: bytes,
        chain: chain.to_vec(),
        signature,
    })
}

/// A record that passed [`verify_member`], with the signed bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMember {
    opaque: OpaqueMember,
    record: MemberRecord,
    cluster: String,
    not_after: SystemTime,
}

impl VerifiedMember {
    pub fn record(&self) -> &MemberRecord {
        &self.record
    }
    pub fn id(&self) -> &SpiffeId {
        &self.record.spiffe_id
    }
    /// The cluster of the gateway ID, `<c>` in `spiffe://<td>/cluster/<c>/gateway/<n>`.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }
    /// The SVID chain's earliest expiry: the record is void after it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// The signed form, as it is gossiped on.
    pub fn opaque(&self) -> &OpaqueMember {
        &self.opaque
    }
}

/// Checks a received record: it decodes; its chain verifies against `bundle` at `now`; the
/// SVID names the record's identity, which is a gateway's; the SVID binds the record's
/// WireGuard key; and the SVID's key signed the record.
pub fn verify_member(
    opaque: &OpaqueMember,
    bundle: &Bundle,
    now: SystemTime,
) -> Result<VerifiedMember, MemberError> {
    let record = MemberRecord::decode(&opaque.record).map_err(MemberError::Record)?;
    let svid =
        isthmus_pki::verify(&opaque.chain, bundle, now, None, None).map_err(MemberError::Chain)?;
    if *svid.id() != record.spiffe_id {
        return Err(MemberError::IdentityMismatch {
            record: record.spiffe_id,
            svid: svid.id().clone(),
        });
    }
    let IdKind::Gateway { cluster, .. } = record.spiffe_id.kind() else {
        return Err(MemberError::NotAGateway(record.spiffe_id));
    };
    let cluster = cluster.to_owned();
    if *svid.wg_public_key() != record.wg_public_key {
        return Err(MemberError::WgKeyNotBound);
    }
    // The chain verified, so it has a leaf.
    let leaf = opaque.chain.first().map_or(&[][..], Vec::as_slice);
    isthmus_pki::verify_signature(leaf, MEMBER_CONTEXT, &opaque.record, &opaque.signature)
        .map_err(MemberError::Signature)?;
    Ok(VerifiedMember {
        opaque: opaque.clone(),
        record,
        cluster,
        not_after: svid.not_after(),
    })
}
