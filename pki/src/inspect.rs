//! What a certificate says, read without trusting it (for `tunctl pki inspect`).

use crate::error::Error;
use crate::spiffe_id::SpiffeId;
use crate::x509::{self, Binding};
use std::time::SystemTime;

/// One certificate, as read; nothing here has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// RFC 4514 form, e.g. `CN=gw-1, OU=east, O=Isthmus`.
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex.
    pub serial: String,
    pub uri_sans: Vec<String>,
    /// The SPIFFE ID when the certificate has exactly one URI SAN and it is valid.
    pub spiffe_id: Option<SpiffeId>,
    pub is_ca: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The bound WireGuard public key, if the binding extension is present and well-formed.
    pub wg_public_key: Option<[u8; 32]>,
    pub self_signed: bool,
}

/// Describes each certificate of `certs` (DER) in order.
pub fn inspect<C: AsRef<[u8]>>(certs: &[C]) -> Result<Vec<CertInfo>, Error> {
    certs
        .iter()
        .enumerate()
        .map(|(index, der)| {
            let cert = x509::parse(der.as_ref()).ok_or(Error::Certificate { index })?;
            let uri_sans: Vec<String> = x509::uri_sans(&cert)
                .unwrap_or_default()
                .into_iter()
                .map(str::to_owned)
                .collect();
            let spiffe_id = match uri_sans.as_slice() {
                [uri] => SpiffeId::new(uri).ok(),
                _ => None,
            };
            let wg_public_key = match x509::wg_binding(&cert) {
                Binding::Key(key) => Some(key),
                Binding::Absent | Binding::Malformed => None,
            };
            Ok(CertInfo {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                serial: cert.raw_serial_as_string().replace(':', ""),
                uri_sans,
                spiffe_id,
                is_ca: x509::is_ca(&cert),
                not_before: x509::system_time(cert.validity().not_before),
                not_after: x509::system_time(cert.validity().not_after),
                wg_public_key,
                self_signed: cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok(),
            })
        })
        .collect()
}
