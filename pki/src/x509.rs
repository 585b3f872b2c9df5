//! Small readers over x509-parser shared by loading, verification and inspection.

use crate::binding;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

/// Parses one DER certificate; trailing bytes make it malformed.
pub(crate) fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

/// The URI SANs; `None` when the SAN extension is duplicated or unparseable.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Option<Vec<&'a str>> {
    let san = cert.subject_alternative_name().ok()?;
    Some(san.map_or_else(Vec::new, |san| {
        san.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect()
    }))
}

/// What a certificate says about a WireGuard key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    Absent,
    Malformed,
    Key([u8; 32]),
}

pub(crate) fn wg_binding(cert: &X509Certificate<'_>) -> Binding {
    let oid = binding::oid_content();
    let mut found = cert
        .extensions()
        .iter()
        .filter(|ext| ext.oid.as_bytes() == oid.as_slice());
    match (found.next(), found.next()) {
        (None, _) => Binding::Absent,
        (Some(ext), None) => {
            binding::decode_value(ext.value).map_or(Binding::Malformed, Binding::Key)
        }
        (Some(_), Some(_)) => Binding::Malformed,
    }
}

pub(crate) fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// Seconds since the epoch, negative before it; X.509 times have whole seconds.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

pub(crate) fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}
