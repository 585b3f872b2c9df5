//! Certificate authorities: a trust domain's root, and per-cluster intermediates whose URI SAN
//! `spiffe://<td>/cluster/<c>` is the scope they may sign under (enforced by
//! [`crate::verify`], since X.509 name constraints cannot express a URI path prefix).

use crate::binding::PatchingSigner;
use crate::error::Error;
use crate::pem_io;
use crate::spiffe_id::{IdKind, SpiffeId, TrustDomain};
use crate::x509;
use rand_core::{OsRng, RngCore as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// Ten years.
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// One year.
pub const DEFAULT_INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start this long before the time of issue, so a peer whose clock is a little
/// behind does not see a fresh certificate as not yet valid.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// A root or intermediate CA: its certificate and signing key (ECDSA P-256).
pub struct Authority {
    cert_der: Vec<u8>,
    key: KeyPair,
    id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A self-signed root for `td`: CA, pathLen 1, keyCertSign + cRLSign, URI SAN
    /// `spiffe://<td>` (X509-SVID §4.1 allows a signing certificate to carry one).
    pub fn root(td: &TrustDomain, now: SystemTime, lifetime: Duration) -> Result<Self, Error> {
        let id = td.id();
        let window = Window::new(now, lifetime, None)?;
        let tag = hex_tag(4);
        let mut params = base_params(&id, None, &format!("Isthmus root CA {tag} {td}"), &window)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let cert = params.self_signed(&key).map_err(Error::Generate)?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// An intermediate for `cluster`, signed by this root: CA, pathLen 0, keyCertSign +
    /// cRLSign, URI SAN `spiffe://<td>/cluster/<cluster>`. It expires no later than the root.
    pub fn intermediate(
        &self,
        cluster: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, Error> {
        if !self.is_root() {
            return Err(Error::NotRoot(self.id.clone()));
        }
        let id =
            SpiffeId::cluster_scope(&self.trust_domain(), cluster).map_err(|source| Error::Id {
                value: cluster.to_owned(),
                source,
            })?;
        let window = self.window_for(now, lifetime)?;
        let cn = format!("Isthmus CA {} cluster {cluster}", hex_tag(4));
        let mut params = base_params(&id, None, &cn, &window)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(Error::Generate)?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Loads an authority from its certificate (the first CERTIFICATE block of `cert_pem`) and
    /// its PKCS#8 private key. Refuses a certificate that is not a CA, that names neither a
    /// trust domain nor a cluster scope, or whose public key is not the key's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert = pem_io::certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or(Error::NoPemBlock("CERTIFICATE"))?;
        let key = pem_io::key_from_pem(key_pem)?;
        Self::from_parts(cert, key)
    }

    fn from_parts(cert_der: Vec<u8>, key: KeyPair) -> Result<Self, Error> {
        let cert = x509::parse(&cert_der).ok_or(Error::Certificate { index: 0 })?;
        if !x509::is_ca(&cert) {
            return Err(Error::NotAnAuthority("the certificate is not a CA"));
        }
        let uris = x509::uri_sans(&cert).unwrap_or_default();
        let id = match uris.as_slice() {
            [uri] => SpiffeId::new(uri).ok(),
            _ => None,
        }
        .filter(|id| matches!(id.kind(), IdKind::TrustDomain | IdKind::ClusterScope { .. }))
        .ok_or(Error::NotAnAuthority(
            "the certificate's URI SAN is neither spiffe://<td> nor spiffe://<td>/cluster/<c>",
        ))?;
        if cert.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(Error::KeyMismatch);
        }
        let not_before = x509::system_time(cert.validity().not_before);
        let not_after = x509::system_time(cert.validity().not_after);
        drop(cert);
        Ok(Self {
            cert_der,
            key,
            id,
            not_before,
            not_after,
        })
    }

    /// `spiffe://<td>` for a root, `spiffe://<td>/cluster/<c>` for an intermediate.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn trust_domain(&self) -> TrustDomain {
        self.id.trust_domain()
    }

    pub fn is_root(&self) -> bool {
        self.id.kind() == IdKind::TrustDomain
    }

    /// The cluster an intermediate is limited to; `None` for a root.
    pub fn cluster(&self) -> Option<&str> {
        self.id.cluster()
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        pem_io::certs_to_pem(&[&self.cert_der])
    }

    /// PKCS#8 PEM of the signing key; write it with [`pem_io::write_private`].
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The certificates an SVID signed by this authority carries after its leaf: none for a
    /// root (peers hold it in their bundle), this intermediate otherwise.
    pub(crate) fn chain_tail(&self) -> Vec<Vec<u8>> {
        if self.is_root() {
            Vec::new()
        } else {
            vec![self.cert_der.clone()]
        }
    }

    /// An rcgen issuer whose signer swaps the key-binding placeholder before signing.
    pub(crate) fn issuer(&self) -> Result<Issuer<'static, PatchingSigner<'_>>, Error> {
        Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), PatchingSigner(&self.key))
            .map_err(Error::Generate)
    }

    /// The validity window of a certificate this authority signs, cut at its own expiry.
    pub(crate) fn window_for(&self, now: SystemTime, lifetime: Duration) -> Result<Window, Error> {
        if now < self.not_before || now > self.not_after {
            return Err(Error::AuthorityNotValid {
                id: self.id.clone(),
            });
        }
        Window::new(now, lifetime, Some(self.not_after))
    }
}

/// A certificate's notBefore/notAfter, in whole seconds.
pub(crate) struct Window {
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl Window {
    fn new(now: SystemTime, lifetime: Duration, cap: Option<SystemTime>) -> Result<Self, Error> {
        if lifetime.is_zero() {
            return Err(Error::BadLifetime);
        }
        let start = now.checked_sub(BACKDATE).ok_or(Error::BadLifetime)?;
        let mut end = now.checked_add(lifetime).ok_or(Error::BadLifetime)?;
        if let Some(cap) = cap {
            end = end.min(cap);
        }
        Ok(Self {
            not_before: whole_seconds(start)?,
            not_after: whole_seconds(end)?,
        })
    }
}

fn whole_seconds(t: SystemTime) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(x509::unix_secs(t)).map_err(|_| Error::BadLifetime)
}

/// Parameters every certificate shares: one URI SAN, a random 128-bit serial (RFC 5280
/// §4.1.2.2 wants it unique per CA), the window, and the authority key identifier.
pub(crate) fn base_params(
    id: &SpiffeId,
    unit: Option<&str>,
    common_name: &str,
    window: &Window,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        id.as_str().try_into().map_err(Error::Generate)?,
    )];
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Isthmus");
    if let Some(unit) = unit {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, unit);
    }
    // X.520 ub-common-name: at most 64 characters (all ASCII here: SPIFFE IDs are).
    let common_name = &common_name[..common_name.len().min(64)];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, and no leading zero byte to strip
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = window.not_before;
    params.not_after = window.not_after;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn hex_tag(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
