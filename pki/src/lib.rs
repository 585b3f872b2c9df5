//! Isthmus identity: SPIFFE IDs, X509-SVID issue and verification, and the binding of a
//! WireGuard static key to an SVID.
//!
//! # Contract
//!
//! - Identities are [`SpiffeId`]s, validated once by the SPIFFE ID spec; gateways are
//!   `spiffe://<td>/cluster/<cluster>/gateway/<node>`, edge nodes `spiffe://<td>/edge/<name>`.
//! - A trust domain has a root [`Authority`] and, optionally, one intermediate per cluster. An
//!   intermediate's one URI SAN, `spiffe://<td>/cluster/<c>`, is the only scope it may sign
//!   under; [`verify`] enforces that (X.509 name constraints cannot express a URI path
//!   prefix, so stock verifiers such as `openssl verify` do not). Edge identities sit outside
//!   every cluster, so only a root signs them.
//! - [`Authority::issue`] writes an X509-SVID whose WireGuard key binding is signed by the CA.
//!   The caller generates the WireGuard key pair and keeps the private half.
//! - [`verify`] takes the time as an argument and never reads a clock; the caller passes
//!   `SystemTime::now()` in production and a fixed time in tests. A peer's WireGuard key may be
//!   installed only after `verify` returned `Ok` with that key as `wg_key` and the identity the
//!   caller expected as `expected`, and only until [`VerifiedSvid::not_after`].
//! - Every refusal names its rule: [`VerifyError`] has one variant per rule, and
//!   [`VerifyError::rule`] a stable name for it.
//!
//! # The key binding
//!
//! The CA signs the WireGuard key into the SVID: a **non-critical** X.509 extension carries the
//! 32-byte X25519 public key as an `OCTET STRING`, under
//! OID **`2.25.21575763037261933591132214288724593818`** ([`WIREGUARD_KEY_OID`]), the X.667
//! UUID arc for UUID `103b573f-5dd5-4c91-b49b-eb1b2ba50c9a`, which needs no registration.
//!
//! Chosen over "signed by the SVID key" because it needs no second signature format, no extra
//! message in the join, and cannot be replayed apart from the certificate: a key and an identity
//! are bound exactly when a CA of the bundle said so, for exactly the SVID's lifetime. Being
//! non-critical, the extension leaves the SVID a standard X509-SVID: the `spiffe` crate and
//! `openssl verify -x509_strict` accept it and ignore the binding (see `tests/interop.rs`).
//! The price is that a new WireGuard key needs a new SVID, which is what rotation does anyway
//! (keys rotate with the SVID).
//!
//! # Certificates
//!
//! | | root | intermediate | SVID (leaf) |
//! |---|---|---|---|
//! | URI SAN | `spiffe://<td>` | `spiffe://<td>/cluster/<c>` | the SPIFFE ID, exactly one |
//! | basic constraints | CA, pathLen 1 | CA, pathLen 0 | CA:false |
//! | key usage | keyCertSign, cRLSign | keyCertSign, cRLSign | digitalSignature |
//! | extended key usage | — | — | serverAuth, clientAuth |
//! | default lifetime | 10 years | 1 year | 24 hours |
//!
//! Every key pair is ECDSA P-256; an SVID's key pair is its own, separate from the WireGuard
//! key. Certificates start [`BACKDATE`] before the time of issue and never outlive their
//! issuer. A chain is the leaf, then the intermediate if one signed it; never the root.

#![forbid(unsafe_code)]

mod binding;
mod bundle;
mod ca;
mod error;
mod inspect;
mod issue;
pub mod pem_io;
pub mod signing;
mod spiffe_id;
mod verify;
mod x509;

pub use binding::{WIREGUARD_KEY_OID, WIREGUARD_KEY_UUID};
pub use bundle::Bundle;
pub use ca::{Authority, BACKDATE, DEFAULT_INTERMEDIATE_LIFETIME, DEFAULT_ROOT_LIFETIME};
pub use error::Error;
pub use inspect::{inspect, CertInfo};
pub use issue::{IssuedSvid, DEFAULT_SVID_LIFETIME};
pub use signing::{verify_signature, Context, SignatureError, SvidSigner};
pub use spiffe_id::{IdError, IdKind, SpiffeId, TrustDomain, MAX_ID_LEN, MAX_TRUST_DOMAIN_LEN};
pub use verify::{verify, CertPosition, VerifiedSvid, VerifyError, MAX_CHAIN_LEN};

/// `2025-01-31T12:00:00Z`: how certificate times are shown in errors and by `tunctl`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(x509::unix_secs(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
