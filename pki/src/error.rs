//! Errors of issuing certificates and reading or writing PKI files. Verification has its own
//! enum, [`crate::VerifyError`], one variant per rule.

use crate::spiffe_id::{IdError, SpiffeId, TrustDomain};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid SPIFFE ID {value:?}")]
    Id {
        value: String,
        #[source]
        source: IdError,
    },
    #[error("{id} is not in the authority's trust domain {authority}")]
    WrongTrustDomain {
        id: SpiffeId,
        authority: TrustDomain,
    },
    #[error("{id} is outside the intermediate's scope {scope}")]
    OutsideScope { id: SpiffeId, scope: SpiffeId },
    #[error("an SVID needs a path below the trust domain, {0} has none")]
    NoPath(SpiffeId),
    #[error("only a root CA signs intermediates; this authority is {0}")]
    NotRoot(SpiffeId),
    #[error("the lifetime must be a positive duration that fits the calendar")]
    BadLifetime,
    #[error("the authority {id} is not valid at the time of issue")]
    AuthorityNotValid { id: SpiffeId },
    #[error("failed to generate a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the WireGuard key binding could not be written into the certificate")]
    Binding,
    #[error("not PEM")]
    Pem(#[source] pem::PemError),
    #[error("no {0} PEM block")]
    NoPemBlock(&'static str),
    #[error("unexpected PEM block {found:?} where {expected} was expected")]
    UnexpectedPemBlock {
        found: String,
        expected: &'static str,
    },
    #[error("malformed certificate #{index}")]
    Certificate { index: usize },
    #[error("{0}")]
    NotAnAuthority(&'static str),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("unusable private key")]
    PrivateKey(#[source] rcgen::Error),
    #[error("the bundle has no root")]
    EmptyBundle,
    #[error("the bundle names no trust domain (no root has a `spiffe://` URI SAN)")]
    BundleWithoutTrustDomain,
    #[error("the bundle's roots name different trust domains ({0} and {1})")]
    BundleMixedTrustDomains(TrustDomain, TrustDomain),
    #[error("bundle certificate #{0} is not a CA")]
    BundleNotCa(usize),
    #[error("not a WireGuard key (expected 32 bytes in base64, as `wg genkey` writes)")]
    WireGuardKey,
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
