//! `X-Hub-Signature-256` verification: HMAC-SHA256 of the exact raw body.
//!
//! Meta signs every POST with the app secret. Verification runs on the raw
//! bytes before anything parses them, fails closed on every malformed header,
//! compares in constant time, and accepts any of several secrets (rotation,
//! several apps mapped to tenants).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Every variant means 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("signature header missing")]
    Missing,
    /// Header does not start with `sha256=`.
    #[error("signature header lacks the sha256= prefix")]
    BadPrefix,
    /// Hex digest is not 64 characters.
    #[error("signature digest has the wrong length")]
    BadLength,
    /// Digest is not hexadecimal.
    #[error("signature digest is not hex")]
    BadHex,
    /// Well-formed, but no configured secret produces it.
    #[error("signature does not match any configured secret")]
    Mismatch,
}

impl SignatureError {
    /// Short stable reason used in metrics labels and audit lines.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::BadPrefix => "signature_bad_prefix",
            SignatureError::BadLength => "signature_bad_length",
            SignatureError::BadHex => "signature_bad_hex",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// A prepared HMAC key: the key schedule is computed once, cloned per check.
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
}

impl SigningKey {
    /// Prepares a key from an app secret.
    pub fn new(secret: &[u8]) -> Self {
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Self { mac }
    }

    fn digest(&self, body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, body: &[u8], expected: &[u8; 32]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(expected).is_ok()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Parses a header value `sha256=<64 hex>` into the 32 digest bytes.
pub fn parse_header(value: Option<&[u8]>) -> Result<[u8; 32], SignatureError> {
    let value = value.ok_or(SignatureError::Missing)?;
    let hex_part = value
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::BadPrefix)?;
    if hex_part.len() != 64 {
        return Err(SignatureError::BadLength);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| SignatureError::BadHex)?;
    Ok(out)
}

/// Verifies `header` against `body` with each key; returns the index of the
/// first key that matches. Every key is tried with a constant-time compare.
pub fn verify<'k>(
    body: &[u8],
    header: Option<&[u8]>,
    keys: impl IntoIterator<Item = &'k SigningKey>,
) -> Result<usize, SignatureError> {
    let expected = parse_header(header)?;
    keys.into_iter()
        .position(|key| key.verify(body, &expected))
        .ok_or(SignatureError::Mismatch)
}

/// Compares two secrets (tokens) without leaking, through timing, where they
/// differ or how long they are: both sides are hashed, then compared without
/// early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest;
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The `X-Hub-Signature-256` value Meta would send for `body`.
pub fn sign(body: &[u8], secret: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(SigningKey::new(secret).digest(body))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"object":"page","entry":[]}"#;

    #[test]
    fn sign_matches_known_vector() {
        // echo -n 'The quick brown fox jumps over the lazy dog' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"The quick brown fox jumps over the lazy dog", b"key"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn accepts_any_configured_secret() {
        let keys = [SigningKey::new(b"old"), SigningKey::new(b"new")];
        let header = sign(BODY, b"new");
        assert_eq!(verify(BODY, Some(header.as_bytes()), &keys), Ok(1));
        let header = sign(BODY, b"old");
        assert_eq!(verify(BODY, Some(header.as_bytes()), &keys), Ok(0));
    }

    #[test]
    fn fails_closed_on_every_malformed_header() {
        let keys = [SigningKey::new(b"s")];
        let good = sign(BODY, b"s");
        let cases: &[(Option<&[u8]>, SignatureError)] = &[
            (None, SignatureError::Missing),
            (Some(b""), SignatureError::BadPrefix),
            (Some(b"sha1=abc"), SignatureError::BadPrefix),
            (Some(&good.as_bytes()[7..]), SignatureError::BadPrefix),
            (Some(b"sha256="), SignatureError::BadLength),
            (Some(&good.as_bytes()[..70]), SignatureError::BadLength),
            (
                Some(b"sha256=zz00000000000000000000000000000000000000000000000000000000000000"),
                SignatureError::BadHex,
            ),
        ];
        for (header, want) in cases {
            assert_eq!(verify(BODY, *header, &keys), Err(*want), "{header:?}");
        }
    }

    #[test]
    fn one_changed_byte_fails() {
        let keys = [SigningKey::new(b"s")];
        let header = sign(BODY, b"s");
        let mut body = BODY.to_vec();
        body[3] ^= 1;
        assert_eq!(
            verify(&body, Some(header.as_bytes()), &keys),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(BODY, Some(header.as_bytes()), &[SigningKey::new(b"other")]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn constant_time_eq_compares_content() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let keys = [SigningKey::new(b"s")];
        let header = sign(BODY, b"s");
        let upper = format!("sha256={}", header[7..].to_uppercase());
        assert_eq!(verify(BODY, Some(upper.as_bytes()), &keys), Ok(0));
    }
}
