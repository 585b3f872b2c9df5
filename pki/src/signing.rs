//! Signatures made with an SVID's own private key, for statements a gateway makes about itself
//! (its membership record) that others check against its certificate.
//!
//! # Contract
//!
//! - The key is the SVID's ECDSA P-256 key: the PKCS#8 `PRIVATE KEY` PEM that
//!   `tunctl pki issue` writes as `svid.key` ([`SvidSigner::from_pem`]).
//! - A signature is ECDSA P-256 with SHA-256, ASN.1 DER encoded (RFC 3279 §2.2.3,
//!   `ECDSA-Sig-Value`), at most [`MAX_SIGNATURE_LEN`] bytes. `openssl dgst -sha256 -verify`
//!   checks it against the leaf's public key.
//! - What is signed is `label || 0x00 || message`, where the label names the kind of statement
//!   ([`Context`]). Labels hold no NUL byte, so two different (label, message) pairs never sign
//!   the same bytes: a signature over one kind of statement is never accepted as another.
//! - [`verify_signature`] only checks the signature against the leaf's key. Whether the leaf
//!   is trustworthy is [`crate::verify`]'s question: run it on the chain first.

use crate::x509;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

/// The longest DER ECDSA P-256 signature: a SEQUENCE of two INTEGERs of up to 33 bytes each.
pub const MAX_SIGNATURE_LEN: usize = 72;

const PRIVATE_KEY: &str = "PRIVATE KEY";

/// The kind of statement a signature is over; part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context(&'static str);

impl Context {
    /// A label such as `"isthmus-member-v1"`; version it, so a new statement format never
    /// verifies as an old one.
    ///
    /// # Panics
    ///
    /// When `label` is empty or holds a NUL byte. Define contexts as constants, so this is a
    /// compile-time error.
    pub const fn new(label: &'static str) -> Self {
        let bytes = label.as_bytes();
        assert!(!bytes.is_empty(), "a signing context needs a label");
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i] != 0, "a signing context label holds no NUL byte");
            i += 1;
        }
        Self(label)
    }

    pub const fn label(&self) -> &'static str {
        self.0
    }

    fn signed_bytes(&self, message: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + message.len());
        bytes.extend_from_slice(self.0.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(message);
        bytes
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("not PEM")]
    Pem(#[source] pem::PemError),
    #[error("unexpected PEM block {0:?} where PRIVATE KEY was expected")]
    NotAPrivateKey(String),
    #[error("not a PKCS#8 ECDSA P-256 private key")]
    KeyRejected(#[source] ring::error::KeyRejected),
    #[error("signing failed")]
    Sign,
    #[error("the certificate is not well-formed")]
    Certificate,
    #[error("the certificate's key is not an ECDSA P-256 key")]
    UnsupportedKey,
    #[error("the private key is not the certificate's")]
    KeyMismatch,
    #[error("the signature does not verify")]
    Invalid,
}

/// An SVID's private key, ready to sign.
pub struct SvidSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SvidSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidSigner").finish_non_exhaustive()
    }
}

impl SvidSigner {
    /// From the text of a PKCS#8 `PRIVATE KEY` PEM block (`svid.key`).
    pub fn from_pem(text: &str) -> Result<Self, SignatureError> {
        let block = pem::parse(text).map_err(SignatureError::Pem)?;
        if block.tag() != PRIVATE_KEY {
            return Err(SignatureError::NotAPrivateKey(block.tag().to_owned()));
        }
        Self::from_pkcs8(block.contents())
    }

    /// From PKCS#8 DER ([`crate::IssuedSvid::key_der`]).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignatureError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
            .map_err(SignatureError::KeyRejected)?;
        Ok(Self { key, rng })
    }

    /// The public key as an uncompressed SEC1 point, as a certificate's SPKI carries it.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Refuses a leaf certificate (DER) whose key is not this one: signing with the wrong
    /// key would only be noticed by every peer refusing the signature.
    pub fn check_leaf(&self, leaf_der: &[u8]) -> Result<(), SignatureError> {
        if leaf_public_key(leaf_der)? == self.public_key() {
            Ok(())
        } else {
            Err(SignatureError::KeyMismatch)
        }
    }

    /// The DER ECDSA signature of `label || 0x00 || message`.
    pub fn sign(&self, context: Context, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let signature = self
            .key
            .sign(&self.rng, &context.signed_bytes(message))
            .map_err(|_| SignatureError::Sign)?;
        Ok(signature.as_ref().to_vec())
    }
}

/// Checks that `signature` is the leaf certificate's key signing `message` in `context`.
pub fn verify_signature(
    leaf_der: &[u8],
    context: Context,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(SignatureError::Invalid);
    }
    let key = leaf_public_key(leaf_der)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(&context.signed_bytes(message), signature)
        .map_err(|_| SignatureError::Invalid)
}

/// The leaf's public key (uncompressed SEC1 point) if it is an id-ecPublicKey on P-256
/// (RFC 5480 §2.1.1).
fn leaf_public_key(leaf_der: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let cert = x509::parse(leaf_der).ok_or(SignatureError::Certificate)?;
    let spki = cert.public_key();
    let on_p256 = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && matches!(&spki.algorithm.parameters,
            Some(p) if p.tag() == Tag::Oid && p.data == OID_EC_P256.as_bytes());
    if !on_p256 {
        return Err(SignatureError::UnsupportedKey);
    }
    Ok(spki.subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, SpiffeId, TrustDomain};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const MEMBER: Context = Context::new("isthmus-member-v1");
    const OTHER: Context = Context::new("isthmus-member-v2");
    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_900_000_000)
    }

    /// (root, two gateway SVIDs: chain leaf and key PEM).
    fn svids() -> (Authority, Vec<(Vec<u8>, String)>) {
        let td = TrustDomain::new("isthmus.local").unwrap();
        let root = Authority::root(&td, now() - DAY, 365 * DAY).unwrap();
        let svids = ["gw-1", "gw-2"]
            .iter()
            .map(|node| {
                let id = SpiffeId::gateway(&td, "east", node).unwrap();
                let svid = root.issue(&id, &[7; 32], now(), DAY).unwrap();
                (svid.chain_der()[0].clone(), svid.key_pem())
            })
            .collect();
        (root, svids)
    }

    #[test]
    fn signatures_verify_only_for_their_key_message_and_context() {
        let (root, svids) = svids();
        let (leaf, key) = &svids[0];
        let (other_leaf, _) = &svids[1];
        let signer = SvidSigner::from_pem(key).unwrap();
        signer.check_leaf(leaf).unwrap();
        let message = b"generation 7".as_slice();
        let good = signer.sign(MEMBER, message).unwrap();
        assert!(good.len() <= MAX_SIGNATURE_LEN);

        let mut flipped_sig = good.clone();
        *flipped_sig.last_mut().unwrap() ^= 1;
        let mut flipped_msg = message.to_vec();
        flipped_msg[0] ^= 0x20;
        let truncated = &good[..good.len() - 1];
        // Moving the label's last byte into the message must not verify either.
        let shifted = Context::new("isthmus-member-v");

        let verifies = |cert: &[u8], context, msg: &[u8], sig: &[u8]| match verify_signature(
            cert, context, msg, sig,
        ) {
            Ok(()) => true,
            Err(SignatureError::Invalid) => false,
            Err(other) => panic!("{other}"),
        };
        assert!(verifies(leaf, MEMBER, message, &good), "good");
        assert!(!verifies(other_leaf, MEMBER, message, &good), "wrong key");
        assert!(
            !verifies(leaf, MEMBER, message, &flipped_sig),
            "flipped signature bit"
        );
        assert!(
            !verifies(leaf, MEMBER, &flipped_msg, &good),
            "flipped message bit"
        );
        assert!(!verifies(leaf, MEMBER, message, truncated), "truncated");
        assert!(!verifies(leaf, MEMBER, message, &[]), "empty");
        assert!(!verifies(leaf, OTHER, message, &good), "wrong context");
        let moved = b"1\0generation 7";
        assert!(
            !verifies(leaf, shifted, moved, &good),
            "label/message boundary"
        );
        assert!(!verifies(leaf, MEMBER, message, &[0x30; 200]), "oversized");

        // The wrong leaf for a key, a CA certificate's key, and garbage as a certificate.
        assert!(matches!(
            signer.check_leaf(other_leaf),
            Err(SignatureError::KeyMismatch)
        ));
        assert!(matches!(
            verify_signature(root.cert_der(), MEMBER, message, &good),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            verify_signature(b"not a certificate", MEMBER, message, &good),
            Err(SignatureError::Certificate)
        ));
    }

    #[test]
    fn refuses_what_is_not_a_p256_pkcs8_key() {
        let (_, svids) = svids();
        let cert_pem = crate::pem_io::certs_to_pem(&[&svids[0].0]);
        assert!(matches!(
            SvidSigner::from_pem(&cert_pem),
            Err(SignatureError::NotAPrivateKey(tag)) if tag == "CERTIFICATE"
        ));
        assert!(matches!(
            SvidSigner::from_pem("no pem here"),
            Err(SignatureError::Pem(_))
        ));
        let junk = pem::encode(&pem::Pem::new(
            PRIVATE_KEY,
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ));
        assert!(matches!(
            SvidSigner::from_pem(&junk),
            Err(SignatureError::KeyRejected(_))
        ));
        // An Ed25519 key is a valid PKCS#8 key of another algorithm.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            SvidSigner::from_pem(&ed.serialize_pem()),
            Err(SignatureError::KeyRejected(_))
        ));
    }

    #[test]
    fn a_non_p256_certificate_key_is_unsupported() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        assert!(matches!(
            verify_signature(cert.der(), MEMBER, b"m", &[0; 64]),
            Err(SignatureError::UnsupportedKey)
        ));
    }

    /// Interop: `openssl dgst -sha256 -verify` accepts our signatures with the leaf's public
    /// key, and we accept openssl's signatures made with `svid.key`; each with a negative
    /// control. Needs `openssl` (scripts/install-deps.sh).
    #[test]
    fn openssl_agrees_both_ways() {
        use std::process::Command;
        let (_, svids) = svids();
        let (leaf, key) = &svids[0];
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("leaf.pem"), crate::pem_io::certs_to_pem(&[leaf])).unwrap();
        std::fs::write(path("svid.key"), key).unwrap();
        let pubkey = Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(path("leaf.pem"))
            .output()
            .expect("openssl must be installed");
        assert!(pubkey.status.success());
        std::fs::write(path("pub.pem"), &pubkey.stdout).unwrap();

        let message = b"a membership record";
        let signed = MEMBER.signed_bytes(message);
        std::fs::write(path("signed.bin"), &signed).unwrap();
        let openssl_verifies = |sig: &[u8]| {
            std::fs::write(path("sig.der"), sig).unwrap();
            Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(path("pub.pem"))
                .arg("-signature")
                .arg(path("sig.der"))
                .arg(path("signed.bin"))
                .output()
                .unwrap()
                .status
                .success()
        };
        let signer = SvidSigner::from_pem(key).unwrap();
        let ours = signer.sign(MEMBER, message).unwrap();
        assert!(openssl_verifies(&ours), "openssl refused our signature");
        let theirs = signer.sign(OTHER, message).unwrap();
        assert!(
            !openssl_verifies(&theirs),
            "negative control: other context"
        );

        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(path("svid.key"))
            .arg(path("signed.bin"))
            .output()
            .unwrap();
        assert!(out.status.success());
        verify_signature(leaf, MEMBER, message, &out.stdout).unwrap();
        assert!(verify_signature(leaf, MEMBER, b"another record", &out.stdout).is_err());
    }
}
