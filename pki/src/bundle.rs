//! A trust bundle: the root CAs of one trust domain (SPIFFE Trust Domain and Bundle spec).
//! Several roots may stand side by side while a root is being replaced.

use crate::error::Error;
use crate::pem_io;
use crate::spiffe_id::{IdKind, SpiffeId, TrustDomain};
use crate::x509;

#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    roots: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Bundle {
    /// Roots for an explicitly named trust domain; each must parse and be a CA.
    pub fn new(trust_domain: TrustDomain, roots: Vec<Vec<u8>>) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::EmptyBundle);
        }
        for (index, der) in roots.iter().enumerate() {
            let cert = x509::parse(der).ok_or(Error::Certificate { index })?;
            if !x509::is_ca(&cert) {
                return Err(Error::BundleNotCa(index));
            }
        }
        Ok(Self {
            trust_domain,
            roots,
        })
    }

    /// Roots whose URI SANs (`spiffe://<td>`, as [`crate::Authority::root`] writes) name the
    /// trust domain; roots without one are accepted if another names it.
    pub fn from_roots(roots: Vec<Vec<u8>>) -> Result<Self, Error> {
        let mut found: Option<TrustDomain> = None;
        for (index, der) in roots.iter().enumerate() {
            let cert = x509::parse(der).ok_or(Error::Certificate { index })?;
            let uris = x509::uri_sans(&cert).unwrap_or_default();
            let named = uris
                .iter()
                .filter_map(|uri| SpiffeId::new(uri).ok())
                .find(|id| id.kind() == IdKind::TrustDomain);
            if let Some(id) = named {
                let td = id.trust_domain();
                match &found {
                    Some(first) if *first != td => {
                        return Err(Error::BundleMixedTrustDomains(first.clone(), td))
                    }
                    _ => found = Some(td),
                }
            }
        }
        let td = found.ok_or(Error::BundleWithoutTrustDomain)?;
        Self::new(td, roots)
    }

    /// [`Bundle::from_roots`] over every certificate of a PEM bundle file's text.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        Self::from_roots(pem_io::certs_from_pem(text)?)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    pub fn to_pem(&self) -> String {
        pem_io::certs_to_pem(&self.roots)
    }
}
