//! PEM text and the files PKI material lives in.
//!
//! Certificates and bundles are `CERTIFICATE` blocks (a chain leaf first). Private keys are
//! PKCS#8 `PRIVATE KEY` blocks; WireGuard keys are the base64 line `wg genkey` prints. Every
//! file is created new, never overwritten; private ones are created with mode 0600, so there is
//! no moment at which another user could open them.

use crate::error::Error;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

const CERTIFICATE: &str = "CERTIFICATE";
const PRIVATE_KEY: &str = "PRIVATE KEY";

fn config() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

/// Every block of `text`, each of which must be a certificate; at least one.
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, Error> {
    let blocks = pem::parse_many(text).map_err(Error::Pem)?;
    if blocks.is_empty() {
        return Err(Error::NoPemBlock(CERTIFICATE));
    }
    blocks
        .into_iter()
        .map(|block| {
            if block.tag() == CERTIFICATE {
                Ok(block.into_contents())
            } else {
                Err(Error::UnexpectedPemBlock {
                    found: block.tag().to_owned(),
                    expected: CERTIFICATE,
                })
            }
        })
        .collect()
}

pub fn certs_to_pem<C: AsRef<[u8]>>(certs: &[C]) -> String {
    let blocks: Vec<pem::Pem> = certs
        .iter()
        .map(|der| pem::Pem::new(CERTIFICATE, der.as_ref()))
        .collect();
    pem::encode_many_config(&blocks, config())
}

/// A PKCS#8 private key from its PEM block.
pub(crate) fn key_from_pem(text: &str) -> Result<rcgen::KeyPair, Error> {
    let block = pem::parse(text).map_err(Error::Pem)?;
    if block.tag() != PRIVATE_KEY {
        return Err(Error::UnexpectedPemBlock {
            found: block.tag().to_owned(),
            expected: PRIVATE_KEY,
        });
    }
    rcgen::KeyPair::try_from(block.contents()).map_err(Error::PrivateKey)
}

/// The `wg genkey` / `wg pubkey` text form of a 32-byte key, without a newline.
pub fn wg_key_to_base64(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

pub fn wg_key_from_base64(text: &str) -> Result<[u8; 32], Error> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| Error::WireGuardKey)?;
    bytes.try_into().map_err(|_| Error::WireGuardKey)
}

pub fn read_to_string(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(Error::io(path))
}

pub fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    certs_from_pem(&read_to_string(path)?)
}

/// A WireGuard key file (private or public), as `wg genkey` / `wg pubkey` write them.
pub fn read_wg_key(path: &Path) -> Result<[u8; 32], Error> {
    wg_key_from_base64(&read_to_string(path)?)
}

/// One file of a set written by [`write_new_files`].
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    /// Mode 0600 when true, 0644 otherwise.
    pub private: bool,
}

impl NewFile {
    pub fn public(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
            private: false,
        }
    }
    pub fn private(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
            private: true,
        }
    }
}

/// Creates every file or none: refuses when any of them exists, and removes the ones it made
/// if a later one fails.
pub fn write_new_files(files: &[NewFile]) -> Result<(), Error> {
    if let Some(file) = files.iter().find(|f| f.path.symlink_metadata().is_ok()) {
        return Err(Error::Exists(file.path.clone()));
    }
    for (done, file) in files.iter().enumerate() {
        let mode = if file.private { 0o600 } else { 0o644 };
        if let Err(error) = write_new(&file.path, &file.contents, mode) {
            for made in &files[..done] {
                let _ = std::fs::remove_file(&made.path);
            }
            return Err(error);
        }
    }
    Ok(())
}

/// Writes a private key file, created with mode 0600; refuses to overwrite.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_new(path, contents, 0o600)
}

/// Writes a certificate or bundle file (mode 0644); refuses to overwrite.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_new(path, contents, 0o644)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    // create_new is O_CREAT|O_EXCL: never follows or replaces an existing file or symlink, and
    // the mode applies at creation (minus the umask), so no chmod afterwards.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Exists(path.to_owned()),
            _ => Error::io(path)(e),
        })?;
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Error::io(path)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn private_files_are_owner_only_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_private(&path, b"secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(write_private(&path, b"other"), Err(Error::Exists(p)) if p == path));
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn a_set_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("b");
        std::fs::write(&existing, "keep").unwrap();
        let files = [
            NewFile::public(dir.path().join("a"), "a"),
            NewFile::private(&existing, "b"),
        ];
        assert!(matches!(write_new_files(&files), Err(Error::Exists(_))));
        assert!(!dir.path().join("a").exists());
        // A failure part-way (a missing directory) removes what was already made.
        let files = [
            NewFile::public(dir.path().join("a"), "a"),
            NewFile::private(dir.path().join("missing/c"), "c"),
        ];
        assert!(matches!(write_new_files(&files), Err(Error::Io { .. })));
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn pem_round_trip_and_refusals() {
        let text = certs_to_pem(&[b"one".to_vec(), b"two".to_vec()]);
        assert!(!text.contains('\r'));
        assert_eq!(
            certs_from_pem(&text).unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        assert!(matches!(certs_from_pem(""), Err(Error::NoPemBlock(_))));
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", b"x".to_vec()));
        assert!(matches!(
            certs_from_pem(&key),
            Err(Error::UnexpectedPemBlock { .. })
        ));
        assert!(wg_key_from_base64("AAAA").is_err());
        let k = [9u8; 32];
        assert_eq!(wg_key_from_base64(&wg_key_to_base64(&k)).unwrap(), k);
    }
}
