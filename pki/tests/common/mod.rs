//! Fixtures shared by the pki test binaries: a fixed clock, a trust domain with a root and two
//! cluster intermediates, WireGuard keys, and a raw rcgen builder for certificates the issuing
//! API refuses to make.

#![allow(dead_code, reason = "each test binary uses a different part")]

use isthmus_pki::{Authority, Bundle, SpiffeId, TrustDomain};
use rcgen::{
    CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

pub const DAY: Duration = Duration::from_secs(86_400);
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// 2030-03-17T17:46:40Z: every test runs at this instant, whatever the machine's clock says.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

pub fn td() -> TrustDomain {
    TrustDomain::new("isthmus.local").unwrap()
}

pub struct Pki {
    pub root: Authority,
    pub east: Authority,
    pub west: Authority,
    pub bundle: Bundle,
}

impl Pki {
    pub fn new(td: &TrustDomain) -> Self {
        let root = Authority::root(td, now() - YEAR, 10 * YEAR).unwrap();
        let east = root.intermediate("east", now() - 30 * DAY, YEAR).unwrap();
        let west = root.intermediate("west", now() - 30 * DAY, YEAR).unwrap();
        let bundle = Bundle::new(td.clone(), vec![root.cert_der().to_vec()]).unwrap();
        Self {
            root,
            east,
            west,
            bundle,
        }
    }
}

pub fn gateway(cluster: &str, node: &str) -> SpiffeId {
    SpiffeId::gateway(&td(), cluster, node).unwrap()
}

/// A WireGuard key pair: (private, public), as `wg genkey | wg pubkey` would make.
pub fn wg_keypair() -> ([u8; 32], [u8; 32]) {
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
    let public = x25519_dalek::PublicKey::from(&secret);
    (secret.to_bytes(), public.to_bytes())
}

/// Everything about a hand-made certificate; [`Raw::leaf`] starts from a well-formed X509-SVID.
#[derive(Clone)]
pub struct Raw {
    pub uris: Vec<String>,
    pub is_ca: IsCa,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub extensions: Vec<CustomExtension>,
}

impl Raw {
    pub fn leaf(uri: &str) -> Self {
        Self {
            uris: vec![uri.to_owned()],
            is_ca: IsCa::ExplicitNoCa,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now() - DAY,
            not_after: now() + DAY,
            extensions: Vec::new(),
        }
    }

    pub fn ca(uri: &str, path_len: u8) -> Self {
        Self {
            is_ca: IsCa::Ca(rcgen::BasicConstraints::Constrained(path_len)),
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            extended_key_usages: Vec::new(),
            ..Self::leaf(uri)
        }
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.subject_alt_names = self
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
            .collect();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test {}", self.uris.join(" ")));
        params.is_ca = self.is_ca;
        params.key_usages = self.key_usages.clone();
        params.extended_key_usages = self.extended_key_usages.clone();
        params.not_before = offset(self.not_before);
        params.not_after = offset(self.not_after);
        params.custom_extensions = self.extensions.clone();
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// Signed by `signer`'s key (an [`Authority`] made by the crate).
    pub fn signed_by(&self, signer: &Authority) -> Vec<u8> {
        self.signed_by_raw(signer.cert_der(), &signer.key_pem()).0
    }

    /// Signed by any certificate and PKCS#8 PEM key; returns the DER and the new key's PEM, so
    /// a hand-made CA can sign in turn.
    pub fn signed_by_raw(&self, issuer_der: &[u8], issuer_key_pem: &str) -> (Vec<u8>, String) {
        let issuer_key = KeyPair::from_pem(issuer_key_pem).unwrap();
        let issuer = Issuer::from_ca_cert_der(&issuer_der.into(), issuer_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = self.params().signed_by(&key, &issuer).unwrap();
        (cert.der().to_vec(), key.serialize_pem())
    }
}

fn offset(t: SystemTime) -> OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap()).unwrap()
}
