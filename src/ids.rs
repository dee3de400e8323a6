//! Identifiers. Every row Herald creates gets a prefixed id (`evt_`, `est_`, `dlv_`, `ten_`,
//! `tok_`) so a stray id in a log says what it names; secrets get prefixes too (`hrd_`, `whsec_`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// `len` characters of base62, from rejection-sampled random bytes (no modulo bias).
pub fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>() {
            // 248 = 4 * 62: bytes at or above it would favour the first characters.
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A time-sortable unique id: `evt_01JD...` (ULID: 48 bits of milliseconds, 80 random bits).
/// Ids made in the same millisecond are unique but not ordered among themselves.
pub fn sortable(prefix: &str, now_ms: i64) -> String {
    let random = u128::from_le_bytes(random_bytes::<16>());
    format!(
        "{prefix}{}",
        ulid::Ulid::from_parts(now_ms.max(0) as u64, random)
    )
}

pub fn event_id(now_ms: i64) -> String {
    sortable("evt_", now_ms)
}

pub fn delivery_id(now_ms: i64) -> String {
    sortable("dlv_", now_ms)
}

pub fn stream_id() -> String {
    format!("est_{}", random_base62(22))
}

pub fn token_id() -> String {
    format!("tok_{}", random_base62(22))
}

/// A bearer token secret: 32 base62 characters, about 190 bits.
pub fn api_token_secret() -> String {
    format!("hrd_{}", random_base62(32))
}

/// A Standard Webhooks signing secret: `whsec_` and 32 random bytes in padded base64.
pub fn signing_secret() -> String {
    format!("whsec_{}", STANDARD.encode(random_bytes::<32>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_has_requested_length_and_alphabet() {
        let s = random_base62(100);
        assert_eq!(s.len(), 100);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_base62(22), random_base62(22));
    }

    #[test]
    fn sortable_ids_sort_by_creation_time() {
        let a = event_id(1_700_000_000_000);
        let b = event_id(1_700_000_000_001);
        assert!(a < b, "{a} should sort before {b}");
        assert!(a.starts_with("evt_") && a.len() == 30);
    }

    #[test]
    fn signing_secret_decodes_to_32_bytes() {
        let s = signing_secret();
        let key = STANDARD.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
    }
}
