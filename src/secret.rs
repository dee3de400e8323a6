//! Secrets: a value type whose `Debug` never shows its content, and the cipher that keeps
//! secrets (signing keys, destination credentials) encrypted at rest, and the rotating
//! per-stream secrets a destination kind may keep.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::ids::random_bytes;

/// A secret string. Serialises as itself (for encrypted storage only); never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret a stream keeps beside its destination's configuration, sealed at rest, that can
/// be rotated with an overlap (a webhook's signing secret). The store keeps these without
/// knowing what they are for; the destination kind gives them meaning. A rotated-out secret
/// keeps an `expires_at`.
#[derive(Debug, Clone)]
pub struct StreamSecret {
    pub secret: Secret,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
}

#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("the secret key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("could not read or create the secret key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a stored secret could not be decrypted: wrong secret key, or corrupted data")]
    Decrypt,
}

/// XChaCha20-Poly1305 with a random 24-byte nonce per value; stored as nonce || ciphertext.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<key redacted>)")
    }
}

impl Cipher {
    pub fn from_base64(key: &str) -> Result<Cipher, CipherError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| CipherError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CipherError::BadKey)?;
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &[u8; 32]) -> Cipher {
        Cipher {
            aead: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Reads the key file, creating it (mode 0600) with a fresh key if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Cipher, CipherError> {
        let io_err = |source| CipherError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_bytes::<32>();
                write_private(path, STANDARD.encode(key).as_bytes()).map_err(io_err)?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = random_bytes::<24>();
        let mut out = nonce.to_vec();
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < 24 {
            return Err(CipherError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        self.aead
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| CipherError::Decrypt)
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_tampering() {
        let cipher = Cipher::from_key(&[7; 32]);
        let sealed = cipher.encrypt(b"whsec_abc");
        assert_ne!(&sealed[24..], b"whsec_abc");
        assert_eq!(cipher.decrypt(&sealed).unwrap(), b"whsec_abc");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(cipher.decrypt(&tampered).is_err());
        assert!(Cipher::from_key(&[8; 32]).decrypt(&sealed).is_err());
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let sealed = Cipher::load_or_create(&path).unwrap().encrypt(b"x");
        assert_eq!(
            Cipher::load_or_create(&path)
                .unwrap()
                .decrypt(&sealed)
                .unwrap(),
            b"x"
        );
        assert!(matches!(
            Cipher::from_base64("c2hvcnQ="),
            Err(CipherError::BadKey)
        ));
    }

    #[test]
    fn debug_never_shows_the_value() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2")),
            "Secret(<redacted>)"
        );
    }
}
