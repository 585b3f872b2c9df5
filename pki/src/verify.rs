//! Verifying an X509-SVID chain against a trust bundle, with the time passed in.
//!
//! Rules, in the order they are checked (the first broken one is reported):
//! 1. the chain is 1 to [`MAX_CHAIN_LEN`] well-formed certificates (a copy of a bundle root at
//!    its end is dropped);
//! 2. each certificate is signed by the next, and the last by a root of the bundle;
//! 3. every certificate of the path, the root included, is within its validity window;
//! 4. no certificate of the chain has a critical extension we do not enforce (RFC 5280 §4.2);
//! 5. signing certificates are CAs with keyCertSign whose pathLen allows the path
//!    (X509-SVID §4.1, §4.3; RFC 5280 §4.2.1.9);
//! 6. the leaf has exactly one URI SAN, a valid SPIFFE ID with a path, is not a CA, lacks
//!    keyCertSign and cRLSign, and has digitalSignature (X509-SVID §2, §4.1, §4.3, §5);
//! 7. the leaf's trust domain is the bundle's;
//! 8. each intermediate names its cluster scope `spiffe://<td>/cluster/<c>` as its one URI SAN,
//!    and the leaf lies under it;
//! 9. the leaf is the expected identity, when one is given;
//! 10. the leaf carries the WireGuard key binding, equal to the given key when one is given.

use crate::bundle::Bundle;
use crate::spiffe_id::{IdError, IdKind, SpiffeId, TrustDomain};
use crate::x509::{self, Binding};
use crate::{pem_io, rfc3339};
use std::fmt;
use std::time::SystemTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};

/// Longer chains are refused before any signature is checked.
pub const MAX_CHAIN_LEN: usize = 8;

/// Which certificate of a path a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPosition {
    Leaf,
    /// A signing certificate in the presented chain, by its index (the leaf is 0).
    Intermediate(usize),
    /// The bundle root the chain leads to.
    Root,
}

impl fmt::Display for CertPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Leaf => f.write_str("the leaf"),
            Self::Intermediate(i) => write!(f, "chain certificate #{i}"),
            Self::Root => f.write_str("the root"),
        }
    }
}

fn position(index: usize) -> CertPosition {
    match index {
        0 => CertPosition::Leaf,
        i => CertPosition::Intermediate(i),
    }
}

/// The rule an SVID broke. [`VerifyError::rule`] gives each a stable short name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("the chain is empty")]
    EmptyChain,
    #[error("the chain has {0} certificates, at most {MAX_CHAIN_LEN} are accepted")]
    ChainTooLong(usize),
    #[error("{0} is not a well-formed X.509 certificate")]
    Malformed(CertPosition),
    #[error("{0} is not signed by the certificate after it")]
    BadSignature(CertPosition),
    #[error("the chain does not lead to a root of the bundle")]
    UnknownRoot,
    #[error("{cert} is not valid before {}", rfc3339(*not_before))]
    NotYetValid {
        cert: CertPosition,
        not_before: SystemTime,
    },
    #[error("{cert} expired at {}", rfc3339(*not_after))]
    Expired {
        cert: CertPosition,
        not_after: SystemTime,
    },
    #[error("{cert} has a critical extension {oid} that is not understood")]
    UnknownCriticalExtension { cert: CertPosition, oid: String },
    #[error("{0} signs a certificate but is not a CA")]
    IssuerNotCa(CertPosition),
    #[error("{0} signs a certificate but lacks keyCertSign")]
    IssuerCannotSignCerts(CertPosition),
    #[error("{0} allows fewer intermediates below it (pathLen) than the chain has")]
    PathLenExceeded(CertPosition),
    #[error("the leaf has no URI SAN")]
    NoUriSan,
    #[error("the leaf has {0} URI SANs, an X509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("the leaf's URI SAN {uri:?} is not a SPIFFE ID")]
    InvalidSpiffeId {
        uri: String,
        #[source]
        source: IdError,
    },
    #[error("the leaf's SPIFFE ID {0} has no path")]
    LeafIdWithoutPath(SpiffeId),
    #[error("the leaf is a CA")]
    LeafIsCa,
    #[error("the leaf has keyCertSign or cRLSign")]
    LeafCanSignCerts,
    #[error("the leaf lacks digitalSignature")]
    LeafMissingDigitalSignature,
    #[error("{id} is not in the bundle's trust domain {bundle}")]
    WrongTrustDomain { id: SpiffeId, bundle: TrustDomain },
    #[error("{0} has no cluster scope (one URI SAN spiffe://<td>/cluster/<c>)")]
    IntermediateNotScoped(CertPosition),
    #[error("{id} is outside {scope}, the only scope its intermediate may sign under")]
    IntermediateOutsideCluster { id: SpiffeId, scope: SpiffeId },
    #[error("presented {presented}, expected {expected}")]
    WrongIdentity {
        expected: SpiffeId,
        presented: SpiffeId,
    },
    #[error("the SVID binds no WireGuard key")]
    KeyNotBound,
    #[error("the SVID's WireGuard key binding is malformed")]
    MalformedKeyBinding,
    #[error("the SVID binds WireGuard key {bound}, not {presented}")]
    KeyMismatch { bound: String, presented: String },
}

impl VerifyError {
    /// A stable kebab-case name of the broken rule, for logs, metrics and `tunctl`.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::EmptyChain => "empty-chain",
            Self::ChainTooLong(_) => "chain-too-long",
            Self::Malformed(_) => "malformed-certificate",
            Self::BadSignature(_) => "bad-signature",
            Self::UnknownRoot => "unknown-root",
            Self::NotYetValid { .. } => "not-yet-valid",
            Self::Expired { .. } => "expired",
            Self::UnknownCriticalExtension { .. } => "unknown-critical-extension",
            Self::IssuerNotCa(_) => "issuer-not-ca",
            Self::IssuerCannotSignCerts(_) => "issuer-cannot-sign-certs",
            Self::PathLenExceeded(_) => "path-len-exceeded",
            Self::NoUriSan => "no-uri-san",
            Self::MultipleUriSans(_) => "multiple-uri-sans",
            Self::InvalidSpiffeId { .. } => "invalid-spiffe-id",
            Self::LeafIdWithoutPath(_) => "leaf-id-without-path",
            Self::LeafIsCa => "leaf-is-ca",
            Self::LeafCanSignCerts => "leaf-can-sign-certs",
            Self::LeafMissingDigitalSignature => "leaf-missing-digital-signature",
            Self::WrongTrustDomain { .. } => "wrong-trust-domain",
            Self::IntermediateNotScoped(_) => "intermediate-not-scoped",
            Self::IntermediateOutsideCluster { .. } => "intermediate-outside-cluster",
            Self::WrongIdentity { .. } => "wrong-identity",
            Self::KeyNotBound => "key-not-bound",
            Self::MalformedKeyBinding => "malformed-key-binding",
            Self::KeyMismatch { .. } => "key-mismatch",
        }
    }
}

/// What a verified SVID proves: this identity holds this WireGuard key until `not_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    id: SpiffeId,
    wg_public_key: [u8; 32],
    not_after: SystemTime,
    scope: Option<SpiffeId>,
}

impl VerifiedSvid {
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }
    /// The WireGuard X25519 static public key the CA bound to the identity.
    pub fn wg_public_key(&self) -> &[u8; 32] {
        &self.wg_public_key
    }
    /// The earliest expiry on the path (leaf, intermediate, root): verify again before then.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// The cluster scope of the intermediate that signed the leaf; `None` when a root did.
    pub fn intermediate_scope(&self) -> Option<&SpiffeId> {
        self.scope.as_ref()
    }
}

/// Verifies `chain` (DER, leaf first) against `bundle` at `now`; see the module docs for the
/// rules. `expected` pins the identity, `wg_key` the WireGuard public key the peer uses.
pub fn verify<C: AsRef<[u8]>>(
    chain: &[C],
    bundle: &Bundle,
    now: SystemTime,
    expected: Option<&SpiffeId>,
    wg_key: Option<&[u8; 32]>,
) -> Result<VerifiedSvid, VerifyError> {
    // Rule 1.
    if chain.is_empty() {
        return Err(VerifyError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(VerifyError::ChainTooLong(chain.len()));
    }
    let mut ders: Vec<&[u8]> = chain.iter().map(AsRef::as_ref).collect();
    if ders.len() > 1
        && bundle
            .roots()
            .iter()
            .any(|r| r.as_slice() == ders[ders.len() - 1])
    {
        ders.pop();
    }
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, der)| x509::parse(der).ok_or(VerifyError::Malformed(position(i))))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = &certs[0];

    // Rule 2.
    for (i, pair) in certs.windows(2).enumerate() {
        if pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .is_err()
        {
            return Err(VerifyError::BadSignature(position(i)));
        }
    }
    let top = &certs[certs.len() - 1];
    let roots: Vec<X509Certificate<'_>> = bundle
        .roots()
        .iter()
        .filter_map(|r| x509::parse(r))
        .collect();
    let root = roots
        .iter()
        .find(|root| top.verify_signature(Some(root.public_key())).is_ok())
        .ok_or(VerifyError::UnknownRoot)?;

    // Rule 3.
    let now_secs = x509::unix_secs(now);
    let path = certs
        .iter()
        .enumerate()
        .map(|(i, c)| (position(i), c))
        .chain(std::iter::once((CertPosition::Root, root)));
    let mut not_after = SystemTime::UNIX_EPOCH;
    for (n, (cert, c)) in path.enumerate() {
        let validity = c.validity();
        if validity.not_before.timestamp() > now_secs {
            return Err(VerifyError::NotYetValid {
                cert,
                not_before: x509::system_time(validity.not_before),
            });
        }
        if validity.not_after.timestamp() < now_secs {
            return Err(VerifyError::Expired {
                cert,
                not_after: x509::system_time(validity.not_after),
            });
        }
        let end = x509::system_time(validity.not_after);
        not_after = if n == 0 { end } else { not_after.min(end) };
    }

    // Rule 4.
    for (i, cert) in certs.iter().enumerate() {
        check_critical_extensions(cert, position(i))?;
    }

    // Rule 5: certificate i signs i-1, with i-1 intermediates below it; the root has all of
    // the chain's intermediates below it.
    for (i, cert) in certs.iter().enumerate().skip(1) {
        check_signing_cert(cert, position(i), i - 1)?;
    }
    if let Ok(Some(bc)) = root.basic_constraints() {
        if bc
            .value
            .path_len_constraint
            .is_some_and(|n| (n as usize) < certs.len() - 1)
        {
            return Err(VerifyError::PathLenExceeded(CertPosition::Root));
        }
    }

    // Rule 6.
    let id = check_leaf(leaf)?;

    // Rule 7.
    if !id.is_member_of(bundle.trust_domain()) {
        return Err(VerifyError::WrongTrustDomain {
            id,
            bundle: bundle.trust_domain().clone(),
        });
    }

    // Rule 8.
    let mut scope = None;
    for (i, cert) in certs.iter().enumerate().skip(1) {
        let cluster_scope = intermediate_scope(cert, bundle.trust_domain())
            .ok_or(VerifyError::IntermediateNotScoped(position(i)))?;
        if !id.is_under(&cluster_scope) {
            return Err(VerifyError::IntermediateOutsideCluster {
                id,
                scope: cluster_scope,
            });
        }
        scope.get_or_insert(cluster_scope);
    }

    // Rule 9.
    if let Some(expected) = expected {
        if *expected != id {
            return Err(VerifyError::WrongIdentity {
                expected: expected.clone(),
                presented: id,
            });
        }
    }

    // Rule 10.
    let bound = match x509::wg_binding(leaf) {
        Binding::Absent => return Err(VerifyError::KeyNotBound),
        Binding::Malformed => return Err(VerifyError::MalformedKeyBinding),
        Binding::Key(key) => key,
    };
    if let Some(presented) = wg_key {
        if *presented != bound {
            return Err(VerifyError::KeyMismatch {
                bound: pem_io::wg_key_to_base64(&bound),
                presented: pem_io::wg_key_to_base64(presented),
            });
        }
    }

    Ok(VerifiedSvid {
        id,
        wg_public_key: bound,
        not_after,
        scope,
    })
}

/// RFC 5280 §4.2: a certificate with a critical extension the verifier does not process must
/// be refused. We process basic constraints, key usage, extended key usage and SANs; our
/// binding extension is understood whether or not it is marked critical.
fn check_critical_extensions(
    cert: &X509Certificate<'_>,
    at: CertPosition,
) -> Result<(), VerifyError> {
    let binding = crate::binding::oid_content();
    let understood = [
        &OID_X509_EXT_BASIC_CONSTRAINTS,
        &OID_X509_EXT_KEY_USAGE,
        &OID_X509_EXT_EXTENDED_KEY_USAGE,
        &OID_X509_EXT_SUBJECT_ALT_NAME,
    ];
    for ext in cert.extensions().iter().filter(|e| e.critical) {
        if !understood.iter().any(|oid| **oid == ext.oid)
            && ext.oid.as_bytes() != binding.as_slice()
        {
            return Err(VerifyError::UnknownCriticalExtension {
                cert: at,
                oid: ext.oid.to_id_string(),
            });
        }
    }
    Ok(())
}

fn check_signing_cert(
    cert: &X509Certificate<'_>,
    at: CertPosition,
    intermediates_below: usize,
) -> Result<(), VerifyError> {
    let bc = match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => bc.value,
        Ok(_) => return Err(VerifyError::IssuerNotCa(at)),
        Err(_) => return Err(VerifyError::Malformed(at)),
    };
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        Ok(_) => return Err(VerifyError::IssuerCannotSignCerts(at)),
        Err(_) => return Err(VerifyError::Malformed(at)),
    }
    if bc
        .path_len_constraint
        .is_some_and(|n| (n as usize) < intermediates_below)
    {
        return Err(VerifyError::PathLenExceeded(at));
    }
    Ok(())
}

fn check_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, VerifyError> {
    let uris = x509::uri_sans(leaf).ok_or(VerifyError::Malformed(CertPosition::Leaf))?;
    let uri = match uris.as_slice() {
        [] => return Err(VerifyError::NoUriSan),
        [uri] => *uri,
        more => return Err(VerifyError::MultipleUriSans(more.len())),
    };
    let id = SpiffeId::new(uri).map_err(|source| VerifyError::InvalidSpiffeId {
        uri: uri.to_owned(),
        source,
    })?;
    if id.kind() == IdKind::TrustDomain {
        return Err(VerifyError::LeafIdWithoutPath(id));
    }
    match leaf.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(VerifyError::LeafIsCa),
        Ok(_) => {}
        Err(_) => return Err(VerifyError::Malformed(CertPosition::Leaf)),
    }
    let ku = match leaf.key_usage() {
        Ok(ku) => ku.map(|ku| ku.value),
        Err(_) => return Err(VerifyError::Malformed(CertPosition::Leaf)),
    };
    if ku.is_some_and(|ku| ku.key_cert_sign() || ku.crl_sign()) {
        return Err(VerifyError::LeafCanSignCerts);
    }
    if !ku.is_some_and(|ku| ku.digital_signature()) {
        return Err(VerifyError::LeafMissingDigitalSignature);
    }
    Ok(id)
}

/// The one URI SAN of an intermediate, if it is a cluster scope in `td`.
fn intermediate_scope(cert: &X509Certificate<'_>, td: &TrustDomain) -> Option<SpiffeId> {
    let uris = x509::uri_sans(cert)?;
    let [uri] = uris.as_slice() else {
        return None;
    };
    let id = SpiffeId::new(uri).ok()?;
    (matches!(id.kind(), IdKind::ClusterScope { .. }) && id.is_member_of(td)).then_some(id)
}
