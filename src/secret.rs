//! Secrets: a value type whose `Debug` never shows its content, and the cipher that keeps
//! secrets (signing keys, destination credentials) encrypted at rest, and the rotating
//! per-stream secrets a destination kind may keep.
//!
//! A cipher holds the node's secret key and any previous keys (during a rotation of the secret
//! key). It seals with its first key and opens a value with whichever key authenticates it, so
//! sealed values need no key id. The store records which key is current (`KEY_CHECK` sealed
//! with it); nodes seal with that one (see [`Cipher::current_for`]).

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
    #[error(
        "`{setting}` must be base64 of exactly 32 bytes, such as the output of `head -c 32 /dev/urandom | base64`"
    )]
    BadSetting { setting: String },
    #[error("could not read or create the secret key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a stored secret could not be decrypted: wrong secret key, or corrupted data")]
    Decrypt,
    #[error(
        "the store's secrets are now sealed with a secret key this node does not have (the key \
         was rotated): restart this node with the new `secret_key`"
    )]
    NotCurrent,
}

/// The known plain text the store seals with its current key, to tell which key that is.
pub const KEY_CHECK: &[u8] = b"herald key check";

/// XChaCha20-Poly1305 with a random 24-byte nonce per value; stored as nonce || ciphertext.
/// Seals with the first of its keys; opens with any of them.
#[derive(Clone)]
pub struct Cipher {
    keys: Vec<XChaCha20Poly1305>,
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
            keys: vec![XChaCha20Poly1305::new(key.into())],
        }
    }

    /// This cipher, also able to open values sealed with `previous` keys.
    pub fn with_previous(mut self, previous: impl IntoIterator<Item = Cipher>) -> Cipher {
        self.keys.extend(previous.into_iter().flat_map(|c| c.keys));
        self
    }

    /// Reads an existing key file; unlike [`Cipher::load_or_create`], never makes one.
    pub fn load(path: &Path) -> Result<Cipher, CipherError> {
        let text = std::fs::read_to_string(path).map_err(|source| CipherError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_base64(&text)
    }

    /// The key check for this cipher's first key, to record it as the store's current key.
    pub fn seal_check(&self) -> Vec<u8> {
        self.encrypt(KEY_CHECK)
    }

    /// Whether `sealed` was sealed with this cipher's first key (the one it seals with).
    pub fn seals(&self, sealed: &[u8]) -> bool {
        open_with(&self.keys[0], sealed).is_ok()
    }

    /// This cipher sealing with the key that opens the store's key check `check` (its
    /// current key), the other keys kept for opening; `NotCurrent` if none of them does.
    pub fn current_for(&self, check: &[u8]) -> Result<Cipher, CipherError> {
        self.sealing_with(|key| open_with(key, check).is_ok_and(|plain| plain == KEY_CHECK))
            .ok_or(CipherError::NotCurrent)
    }

    /// This cipher sealing with the key `sealed` was sealed with, if it holds that key.
    pub fn sealing_for_value(&self, sealed: &[u8]) -> Option<Cipher> {
        self.sealing_with(|key| open_with(key, sealed).is_ok())
    }

    fn sealing_with(&self, chosen: impl Fn(&XChaCha20Poly1305) -> bool) -> Option<Cipher> {
        let at = self.keys.iter().position(chosen)?;
        let mut keys = self.keys.clone();
        keys[..=at].rotate_right(1);
        Some(Cipher { keys })
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
        let sealed = self.keys[0]
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.keys
            .iter()
            .find_map(|key| open_with(key, sealed).ok())
            .ok_or(CipherError::Decrypt)
    }
}

fn open_with(key: &XChaCha20Poly1305, sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
    if sealed.len() < 24 {
        return Err(CipherError::Decrypt);
    }
    let (nonce, ciphertext) = sealed.split_at(24);
    key.decrypt(XNonce::from_slice(nonce), ciphertext)
        .map_err(|_| CipherError::Decrypt)
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
    fn previous_keys_open_and_the_current_key_seals() {
        let (old, new) = (Cipher::from_key(&[1; 32]), Cipher::from_key(&[2; 32]));
        let sealed_old = old.encrypt(b"a");
        let both = new.clone().with_previous([old.clone()]);
        assert_eq!(both.decrypt(&sealed_old).unwrap(), b"a");
        assert!(both.seals(&both.encrypt(b"b")) && !both.seals(&sealed_old));
        // The store says the old key is current: seal with it, still open both.
        let sealing = both.current_for(&old.seal_check()).unwrap();
        assert!(old.decrypt(&sealing.encrypt(b"c")).is_ok());
        assert_eq!(sealing.decrypt(&new.encrypt(b"d")).unwrap(), b"d");
        assert!(matches!(
            old.current_for(&new.seal_check()),
            Err(CipherError::NotCurrent)
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
