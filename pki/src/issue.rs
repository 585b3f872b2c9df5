//! Issuing X509-SVIDs bound to a WireGuard static key.

use crate::binding;
use crate::ca::{base_params, Authority};
use crate::error::Error;
use crate::pem_io;
use crate::spiffe_id::{IdKind, SpiffeId};
use crate::x509;
use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::time::{Duration, SystemTime};

/// 24 hours.
pub const DEFAULT_SVID_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An SVID fresh from [`Authority::issue`]: its chain (leaf first, then the intermediate if an
/// intermediate signed it; never the root) and its own ECDSA P-256 private key.
pub struct IssuedSvid {
    id: SpiffeId,
    chain: Vec<Vec<u8>>,
    key: KeyPair,
    not_after: SystemTime,
}

impl std::fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedSvid {
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }
    pub fn chain_pem(&self) -> String {
        pem_io::certs_to_pem(&self.chain)
    }
    /// PKCS#8 DER of the SVID's private key.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
    /// PKCS#8 PEM of the SVID's private key; write it with [`pem_io::write_private`].
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl Authority {
    /// Issues an X509-SVID for `id` with `wg_public_key` signed into it, valid from
    /// `now - BACKDATE` for `lifetime` (cut at the authority's own expiry).
    ///
    /// The leaf follows X509-SVID §4 and §5: exactly one URI SAN, CA:false, key usage
    /// digitalSignature only, extended key usage serverAuth + clientAuth. Refuses an `id` outside
    /// the authority's trust domain, a bare trust domain ID, and, for an intermediate, an `id`
    /// outside its cluster.
    pub fn issue(
        &self,
        id: &SpiffeId,
        wg_public_key: &[u8; 32],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedSvid, Error> {
        if !id.is_member_of(&self.trust_domain()) {
            return Err(Error::WrongTrustDomain {
                id: id.clone(),
                authority: self.trust_domain(),
            });
        }
        if id.kind() == IdKind::TrustDomain {
            return Err(Error::NoPath(id.clone()));
        }
        if !self.is_root() && !id.is_under(self.id()) {
            return Err(Error::OutsideScope {
                id: id.clone(),
                scope: self.id().clone(),
            });
        }
        let window = self.window_for(now, lifetime)?;
        let not_after = SystemTime::from(window.not_after);
        let cn = id.segments().last().unwrap_or_default().to_owned();
        let unit = id.cluster().unwrap_or("edge");
        let mut params = base_params(id, Some(unit), &cn, &window)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.custom_extensions = vec![binding::placeholder_extension(wg_public_key)];

        let key = KeyPair::generate().map_err(Error::Generate)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(Error::Generate)?;
        let leaf = binding::patch(cert.der()).ok_or(Error::Binding)?;
        // The signer patched the TBS it signed; make sure the bytes we hand out are those.
        let parent = x509::parse(self.cert_der()).ok_or(Error::Certificate { index: 1 })?;
        let parsed = x509::parse(&leaf).ok_or(Error::Binding)?;
        let signed = parsed.verify_signature(Some(parent.public_key())).is_ok();
        if !signed || x509::wg_binding(&parsed) != x509::Binding::Key(*wg_public_key) {
            return Err(Error::Binding);
        }
        drop(parsed);

        let mut chain = vec![leaf];
        chain.extend(self.chain_tail());
        Ok(IssuedSvid {
            id: id.clone(),
            chain,
            key,
            not_after,
        })
    }
}
