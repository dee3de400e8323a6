//! Which secret key a store's secrets are sealed with, and the rotation to a new one, common
//! to both stores. The store's `settings` keep `key_check` (a known value sealed with the
//! current key) and, after a rotation, `retired_key_check` (the same with the key it
//! replaced), so a node started with only the old key is told the key was rotated. Nodes read
//! `key_check` in every transaction that seals, so once a rotation has recorded the new key no
//! node seals with the old one again; the rotation then re-seals the older values in batches.

use crate::secret::Cipher;

use super::{StoreError, StoreResult};

/// Rows re-sealed in one transaction of a rotation: short, so the writers wait little.
pub const ROTATION_BATCH: usize = 200;

/// What `herald rotate-secret-key` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Whether this run recorded the new key as current (false: an earlier run had).
    pub recorded: bool,
    /// Values re-sealed with the new key: stream destinations, then stream secrets.
    pub destinations: u64,
    pub stream_secrets: u64,
    /// False when the run stopped at its limit of batches, with values left to re-seal.
    pub finished: bool,
}

/// `cipher`, sealing with the store's current key (the one `check` is sealed with), or the
/// reason this node cannot use the store.
pub fn current_key(
    cipher: &Cipher,
    check: &[u8],
    retired: Option<&[u8]>,
    store: &str,
) -> StoreResult<Cipher> {
    cipher.current_for(check).map_err(|_| {
        let rotated = retired.is_some_and(|retired| cipher.current_for(retired).is_ok());
        let reason = if rotated {
            "its secret key was rotated (`herald rotate-secret-key`) and this node has only the \
             previous key: set `secret_key` (HERALD_SECRET_KEY) to the new key, keeping the old \
             one in `previous_secret_keys` until every node has the new one"
        } else {
            "its secrets were sealed with a different secret key: every node must use the same \
             `secret_key` (HERALD_SECRET_KEY), the one the first node used (or the key file of \
             the data directory the store came from)"
        };
        StoreError::Open {
            path: store.into(),
            reason: reason.into(),
        }
    })
}

/// The key to record for a store that has no key check yet: the one an existing sealed value
/// opens with (a store from before key checks), else the node's own.
pub fn initial_key(cipher: &Cipher, existing: Option<&[u8]>) -> StoreResult<Vec<u8>> {
    match existing {
        None => Ok(cipher.seal_check()),
        Some(sealed) => match cipher.sealing_for_value(sealed) {
            Some(sealing) => Ok(sealing.seal_check()),
            None => Err(StoreError::Open {
                path: "the store".into(),
                reason: "its secrets were sealed with a different secret key: start Herald \
                         with the `secret_key` it used before"
                    .into(),
            }),
        },
    }
}

/// Whether the configured keys open `sealed`: the rotation checks every value before it
/// records anything, so a key missing from `previous_secret_keys` changes nothing.
pub fn opens(cipher: &Cipher, sealed: &[u8], store: &str) -> StoreResult<()> {
    if cipher.seals(sealed) || cipher.decrypt(sealed).is_ok() {
        return Ok(());
    }
    Err(StoreError::Open {
        path: store.into(),
        reason: "a stored secret opens with none of the configured keys (an earlier rotation \
                 may not have finished): add the key it was sealed with to \
                 `previous_secret_keys`; nothing was changed"
            .into(),
    })
}

/// The rotation's work on one sealed value: `None` if already sealed with the new key.
pub fn reseal(cipher: &Cipher, sealed: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    if cipher.seals(sealed) {
        return Ok(None);
    }
    let plain = cipher.decrypt(sealed).map_err(|_| {
        StoreError::Corrupt(
            "a stored secret opens with none of the configured keys: add the key it was sealed \
             with to `previous_secret_keys`"
                .into(),
        )
    })?;
    Ok(Some(cipher.encrypt(&plain)))
}
