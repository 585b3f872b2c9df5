//! The X.509 extension that binds a WireGuard X25519 static public key to an X509-SVID.
//!
//! ```text
//! id-isthmus-wireguard-key OBJECT IDENTIFIER ::= { joint-iso-itu-t(2) uuid(25)
//!     21575763037261933591132214288724593818 }   -- UUID 103b573f-5dd5-4c91-b49b-eb1b2ba50c9a
//! WireGuardPublicKey ::= OCTET STRING (SIZE (32)) -- RFC 7748 X25519 public key, as `wg pubkey`
//! ```
//!
//! The extension is non-critical, so SPIFFE libraries and TLS stacks that do not know it still
//! accept the SVID; only our verifier insists on it.
//!
//! rcgen writes OID arcs as `u64`, and a UUID arc (X.667) is 128 bits, so issuance writes a
//! placeholder OID whose DER encoding has exactly the same length (`2.25.<u64>.<u64>`) and
//! swaps in the real OID bytes just before the issuer signs the TBSCertificate
//! ([`PatchingSigner`]). Equal lengths mean no enclosing DER length changes.

use rcgen::{CustomExtension, PublicKeyData, SignatureAlgorithm, SigningKey};

/// The UUID of the binding's OID arc, `103b573f-5dd5-4c91-b49b-eb1b2ba50c9a`.
pub const WIREGUARD_KEY_UUID: u128 = 0x103b_573f_5dd5_4c91_b49b_eb1b_2ba5_0c9a;
/// The binding extension's OID in dotted form: `2.25.<WIREGUARD_KEY_UUID in decimal>`.
pub const WIREGUARD_KEY_OID: &str = "2.25.21575763037261933591132214288724593818";

/// Never appears in an issued certificate: rcgen writes it, [`PatchingSigner`] replaces it.
const PLACEHOLDER_ARCS: [u64; 4] = [2, 25, 3_057_122_250_344_560_574, 1_250_702_495_788_791_286];

/// Base-128 big-endian with continuation bits (X.690 §8.19.2).
fn encode_arc(mut value: u128, out: &mut Vec<u8>) {
    let mut digits = vec![(value & 0x7f) as u8];
    value >>= 7;
    while value != 0 {
        digits.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.extend(digits.iter().rev());
}

/// The full OID TLV (tag 0x06, length, content) for arcs `2.25.<rest…>`.
fn oid_tlv(rest: &[u128]) -> Vec<u8> {
    let mut content = vec![2 * 40 + 25]; // X.690 §8.19.4: first two arcs as 40*X+Y
    for &arc in rest {
        encode_arc(arc, &mut content);
    }
    let mut tlv = vec![0x06, u8::try_from(content.len()).expect("short OID")];
    tlv.extend(content);
    tlv
}

/// DER of [`WIREGUARD_KEY_OID`] without tag and length, as x509-parser's `Oid::as_bytes` shows it.
pub(crate) fn oid_content() -> Vec<u8> {
    oid_tlv(&[WIREGUARD_KEY_UUID]).split_off(2)
}

fn real_tlv() -> Vec<u8> {
    oid_tlv(&[WIREGUARD_KEY_UUID])
}

fn placeholder_tlv() -> Vec<u8> {
    oid_tlv(&[
        u128::from(PLACEHOLDER_ARCS[2]),
        u128::from(PLACEHOLDER_ARCS[3]),
    ])
}

/// The extension as rcgen writes it (placeholder OID, real content).
pub(crate) fn placeholder_extension(wg_public_key: &[u8; 32]) -> CustomExtension {
    let mut content = vec![0x04, 32];
    content.extend_from_slice(wg_public_key);
    CustomExtension::from_oid_content(&PLACEHOLDER_ARCS, content)
}

/// Parses the extension's value (the contents of `extnValue`).
pub(crate) fn decode_value(value: &[u8]) -> Option<[u8; 32]> {
    match value {
        [0x04, 32, key @ ..] => key.try_into().ok(),
        _ => None,
    }
}

/// Replaces the one placeholder OID in `der` by the real one; `None` unless there is exactly one.
pub(crate) fn patch(der: &[u8]) -> Option<Vec<u8>> {
    let (from, to) = (placeholder_tlv(), real_tlv());
    debug_assert_eq!(from.len(), to.len());
    let mut hits = der
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from);
    let (at, _) = hits.next()?;
    if hits.next().is_some() {
        return None;
    }
    let mut out = der.to_vec();
    out[at..at + to.len()].copy_from_slice(&to);
    Some(out)
}

/// Signs the TBSCertificate with the placeholder replaced; the caller then applies [`patch`]
/// to the finished certificate, which yields exactly the bytes that were signed.
pub(crate) struct PatchingSigner<'a>(pub(crate) &'a rcgen::KeyPair);

impl PublicKeyData for PatchingSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(self.0)
    }
}

impl SigningKey for PatchingSigner<'_> {
    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // Without exactly one placeholder the certificate would be signed as written and the
        // caller's `patch` fails; either way nothing half-patched is produced.
        let tbs = patch(tbs).unwrap_or_else(|| tbs.to_vec());
        self.0.sign(&tbs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_is_the_uuid_in_decimal_and_placeholder_fits() {
        assert_eq!(
            WIREGUARD_KEY_OID,
            format!("2.25.{WIREGUARD_KEY_UUID}"),
            "documented OID matches the UUID"
        );
        assert_eq!(placeholder_tlv().len(), real_tlv().len());
        assert_ne!(placeholder_tlv(), real_tlv());
    }

    #[test]
    fn patch_needs_exactly_one_placeholder() {
        let p = placeholder_tlv();
        assert_eq!(patch(b"no placeholder here"), None);
        let twice = [p.clone(), p.clone()].concat();
        assert_eq!(patch(&twice), None);
        let once = [b"ab".to_vec(), p, b"cd".to_vec()].concat();
        assert_eq!(
            patch(&once).unwrap(),
            [b"ab".to_vec(), real_tlv(), b"cd".to_vec()].concat()
        );
    }

    #[test]
    fn value_round_trip() {
        let ext = placeholder_extension(&[7; 32]);
        assert_eq!(decode_value(ext.content()), Some([7; 32]));
        assert_eq!(decode_value(&[0x04, 31]), None);
        assert_eq!(decode_value(&[0x04, 32, 1]), None);
    }
}
