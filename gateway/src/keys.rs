//! WireGuard keys in the `wg genkey` / `wg pubkey` text form (standard base64 of 32 bytes).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

/// Why a key string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("decodes to {0} bytes, a WireGuard key is 32")]
    Length(usize),
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))
}

/// A peer's X25519 static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn try_from_base64(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(Self)
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    pub fn to_dalek(&self) -> DalekPublic {
        DalekPublic::from(self.0)
    }
    /// The first characters of the base64 form, as `wg` and logs show a key.
    pub fn short(&self) -> String {
        self.to_base64()[..8].to_string()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// The interface's X25519 static private key. Never printed.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    pub fn try_from_base64(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(|b| Self(StaticSecret::from(b)))
    }
    pub fn generate() -> Self {
        Self(StaticSecret::random_from_rng(rand_core::OsRng))
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&self.0).to_bytes())
    }
    pub fn secret(&self) -> &StaticSecret {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_derivation() {
        let k = PrivateKey::generate();
        let again = PrivateKey::try_from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.public_key(), again.public_key());
        let p = PublicKey::try_from_base64(&k.public_key().to_base64()).unwrap();
        assert_eq!(p, k.public_key());
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(PublicKey::try_from_base64("!!!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::try_from_base64("AAAA"), Err(KeyError::Length(3)));
    }

    #[test]
    fn known_vector_matches_wg_pubkey() {
        // `echo 'YAnm5P3Lzzi3kZ5xmJ+0y2ibs8dNvk7UfXCeptvBbVk=' | wg pubkey`
        let k =
            PrivateKey::try_from_base64("YAnm5P3Lzzi3kZ5xmJ+0y2ibs8dNvk7UfXCeptvBbVk=").unwrap();
        assert_eq!(
            k.public_key().to_base64(),
            "GoKOHKmMnVDs1HlV8C09+3O8llMmkEQGWeuCgowTf0g="
        );
    }
}
