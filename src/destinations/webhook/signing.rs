//! Standard Webhooks signatures (spec 1.0): HMAC-SHA256 over `{id}.{timestamp}.{body}` with
//! the base64-decoded part of a `whsec_` secret, sent as `v1,<base64>`; during a rotation one
//! token per active key, separated by single spaces.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::secret::Secret;

pub const SECRET_PREFIX: &str = "whsec_";

/// A decoded signing key, ready for HMAC-SHA256 (ring's, which uses the CPU's SHA
/// extensions where it has them).
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64 of 24 to 64 bytes>`.
    pub fn parse(secret: &Secret) -> Result<SigningKey, String> {
        let encoded = secret.expose().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            format!("a signing secret starts with `{SECRET_PREFIX}` followed by base64")
        })?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| "the signing secret after `whsec_` is not valid base64".to_string())?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("a signing secret must decode to 24 to 64 bytes".into());
        }
        Ok(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = ring::hmac::Context::with_key(&self.0);
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.sign().as_ref()))
    }
}

/// The `webhook-signature` header value: one `v1,` token per key.
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a SigningKey>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.into_iter()
        .map(|key| key.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks reference libraries.
    #[test]
    fn matches_the_spec_test_vector() {
        let key =
            SigningKey::parse(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotation_sends_one_token_per_key() {
        let a = SigningKey::parse(&Secret::new(crate::ids::signing_secret())).unwrap();
        let b = SigningKey::parse(&Secret::new(crate::ids::signing_secret())).unwrap();
        let header = signature_header(&[a.clone(), b], "msg_1", 1, b"{}");
        let tokens: Vec<_> = header.split(' ').collect();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0], a.sign("msg_1", 1, b"{}"));
        assert!(tokens.iter().all(|t| t.starts_with("v1,")));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for bad in ["abc", "whsec_!!!", "whsec_c2hvcnQ="] {
            assert!(SigningKey::parse(&Secret::new(bad)).is_err(), "{bad}");
        }
    }
}
