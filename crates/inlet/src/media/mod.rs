//! The media pipeline: every inbound image, audio, video, document and
//! sticker (WhatsApp media ids; Messenger/Instagram attachment URLs) is
//! downloaded, verified and kept; outbound media is uploaded once per
//! (sender, file) and sent by id.
//!
//! - this file: the pure rules — the job on `{prefix}media.processing`,
//!   digests (webhooks give SHA-256 in base64, `GET /{media-id}` in hex:
//!   digests are compared, never strings), content addresses, limits;
//! - [`storage`]: where bytes live — [`storage::MediaStorage`], with the
//!   local directory (default) and an S3-compatible bucket (`object_store`);
//! - [`graph`]: the Graph media calls — `GET /{media-id}`, the streaming
//!   download into a temp file (hashed and counted on the way, never held
//!   in memory), the multipart upload;
//! - [`fetch`]: one job from start to end — skip what is already final,
//!   resolve the URL, download, verify, store, record; a dead URL gets one
//!   fresh `GET /{media-id}`; transient errors retry with backoff, then the
//!   DLQ;
//! - [`consumer`]: who runs jobs — the `media` consumer group in workers
//!   (queue mode) and an in-process sink in the gateway (direct mode), each
//!   with its own concurrency limit so big files never delay text;
//! - [`upload`]: outbound media (`"image": {"path"|"url"}`): local checks,
//!   the upload cache, the upload.

pub mod consumer;
pub mod fetch;
pub mod graph;
pub mod storage;
pub mod upload;

use base64::Engine as _;

/// One media job: an attachment of a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaJob {
    /// Message row id.
    pub message_id: i64,
    /// Position in the message's `media` array.
    pub index: i32,
    /// Tenant.
    pub tenant: String,
}

impl MediaJob {
    /// Reads a job from its fields (`message_id`, `index`, `tenant`; see
    /// [`crate::store::media::media_job`]). `None` when unreadable.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let (mut message_id, mut index, mut tenant) = (None, None, None);
        for (k, v) in fields {
            match k {
                "message_id" => message_id = v.parse().ok(),
                "index" => index = v.parse().ok(),
                "tenant" => tenant = Some(v.to_string()),
                _ => {}
            }
        }
        Some(MediaJob {
            message_id: message_id.filter(|id: &i64| *id > 0)?,
            index: index.filter(|i: &i32| *i >= 0)?,
            tenant: tenant?,
        })
    }
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Reads a SHA-256 digest written as hex (64 digits: `GET /{media-id}`) or
/// base64 (standard or URL-safe, padded or not: webhooks). `None` when it
/// is neither.
pub fn parse_digest(text: &str) -> Option<Digest> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(t).ok()?.try_into().ok();
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(t).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

/// Why downloaded bytes are not the file Meta described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// A digest Meta gave is not a SHA-256 in hex or base64.
    #[error("the expected sha256 {0:?} is neither hex nor base64 of 32 bytes")]
    Unreadable(String),
    /// The bytes hash to something else.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// Expected digest (hex).
        expected: String,
        /// Digest of the bytes (hex).
        actual: String,
    },
}

impl DigestError {
    /// Reason code recorded on the message.
    pub fn reason(&self) -> &'static str {
        match self {
            DigestError::Unreadable(_) => "sha256_unreadable",
            DigestError::Mismatch { .. } => "sha256_mismatch",
        }
    }
}

/// Checks the digest of the bytes against every digest Meta gave (the
/// webhook's and `GET /{media-id}`'s; either may be missing — Messenger and
/// Instagram give none).
pub fn check_digest<'a>(
    actual: &Digest,
    expected: impl IntoIterator<Item = &'a str>,
) -> Result<(), DigestError> {
    for e in expected {
        let want = parse_digest(e).ok_or_else(|| DigestError::Unreadable(e.to_string()))?;
        if &want != actual {
            return Err(DigestError::Mismatch {
                expected: hex::encode(want),
                actual: hex::encode(actual),
            });
        }
    }
    Ok(())
}

/// The storage key of content with this hex digest: `ab/abcdef…` (two
/// levels keep directories small).
pub fn content_key(sha256_hex: &str) -> String {
    let prefix = sha256_hex.get(..2).unwrap_or("00");
    format!("{prefix}/{sha256_hex}")
}

/// Whether a hex digest is well formed (64 lower-case hex digits): storage
/// keys are built only from these, so no path can escape the media root.
pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a download's HTTP status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadStatus {
    /// 2xx: the bytes follow.
    Ok,
    /// 401 / 403 / 404 / 410: the URL expired (WhatsApp URLs live 5
    /// minutes): get a fresh one, do not retry this one.
    Expired,
    /// 408 / 429 / 5xx: try again later.
    Transient,
    /// Any other status: refused for good.
    Refused,
}

impl DownloadStatus {
    /// Classifies an HTTP status of a download.
    pub fn of(status: u16) -> Self {
        match status {
            200..=299 => DownloadStatus::Ok,
            401 | 403 | 404 | 410 => DownloadStatus::Expired,
            408 | 429 | 500..=599 => DownloadStatus::Transient,
            _ => DownloadStatus::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn sha(bytes: &[u8]) -> Digest {
        sha2::Sha256::digest(bytes).into()
    }

    #[test]
    fn jobs_read_back_from_their_fields() {
        let row = crate::store::media::media_job(42, 1, "acme");
        let job = MediaJob::from_fields(row.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(
            job,
            Some(MediaJob {
                message_id: 42,
                index: 1,
                tenant: "acme".into()
            })
        );
        assert_eq!(MediaJob::from_fields([("message_id", "x")]), None);
        assert_eq!(
            MediaJob::from_fields([("message_id", "0"), ("index", "0"), ("tenant", "t")]),
            None
        );
    }

    #[test]
    fn hex_and_base64_of_one_digest_are_the_same_digest() {
        let d = sha(b"kettle lid photo");
        let hex = hex::encode(d);
        let b64 = base64::engine::general_purpose::STANDARD.encode(d);
        assert_eq!(parse_digest(&hex), Some(d));
        assert_eq!(parse_digest(&hex.to_uppercase()), Some(d));
        assert_eq!(parse_digest(&b64), Some(d));
        assert_eq!(parse_digest(b64.trim_end_matches('=')), Some(d));
        assert!(check_digest(&d, [hex.as_str(), b64.as_str()]).is_ok());
    }

    #[test]
    fn a_different_file_or_a_broken_digest_is_refused() {
        let d = sha(b"the file we got");
        let other =
            base64::engine::general_purpose::STANDARD.encode(sha(b"the file Meta described"));
        let err = check_digest(&d, [other.as_str()]).unwrap_err();
        assert_eq!(err.reason(), "sha256_mismatch");
        // The fixture's digest is base64 of 32 bytes, just not of these bytes.
        let fixture = "aW52ZW50ZWQtc2hhMjU2LWRpZ2VzdC0wMDAyLXh4eHg=";
        assert!(parse_digest(fixture).is_some());
        assert_eq!(
            check_digest(&d, [fixture]).unwrap_err().reason(),
            "sha256_mismatch"
        );
        assert_eq!(
            check_digest(&d, ["not a digest"]).unwrap_err().reason(),
            "sha256_unreadable"
        );
        assert!(parse_digest("abcd").is_none(), "too short for SHA-256");
    }

    #[test]
    fn no_expected_digest_accepts_the_bytes() {
        assert!(check_digest(&sha(b"messenger attachment"), []).is_ok());
    }

    #[test]
    fn content_keys_fan_out_by_the_first_byte() {
        let hex = hex::encode(sha(b"x"));
        assert!(is_hex_digest(&hex));
        assert_eq!(content_key(&hex), format!("{}/{hex}", &hex[..2]));
        assert!(!is_hex_digest("../../etc/passwd"));
        assert!(!is_hex_digest(&hex.to_uppercase()));
    }

    #[test]
    fn download_statuses() {
        assert_eq!(DownloadStatus::of(200), DownloadStatus::Ok);
        assert_eq!(DownloadStatus::of(206), DownloadStatus::Ok);
        for s in [401, 403, 404, 410] {
            assert_eq!(DownloadStatus::of(s), DownloadStatus::Expired, "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert_eq!(DownloadStatus::of(s), DownloadStatus::Transient, "{s}");
        }
        assert_eq!(DownloadStatus::of(400), DownloadStatus::Refused);
        assert_eq!(DownloadStatus::of(301), DownloadStatus::Refused);
    }
}
