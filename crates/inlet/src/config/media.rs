//! The `[media]` section: where downloaded media is stored (the local data
//! directory or an S3-compatible bucket), the size limit per media type,
//! and the media consumer's concurrency and retries.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, non_empty, positive, ConfigError};

#[derive(Debug, Deserialize)]
pub(super) struct RawMedia {
    enabled: bool,
    storage: String,
    concurrency: usize,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
    read_timeout_ms: u64,
    upload_cache_days: u32,
    #[serde(default)]
    upload_dir: Option<PathBuf>,
    max_bytes: RawMaxBytes,
    s3: RawS3,
}

#[derive(Debug, Deserialize)]
struct RawMaxBytes {
    image: u64,
    audio: u64,
    video: u64,
    document: u64,
    sticker: u64,
    file: u64,
}

#[derive(Debug, Deserialize)]
struct RawS3 {
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    region: String,
    #[serde(default)]
    prefix: Option<String>,
    allow_http: bool,
}

/// Size limits per media type, in bytes (`[media.max_bytes]`). Inbound
/// files above the limit are recorded as failed (`too_large`) without
/// being stored; outbound files above it are refused before any upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxBytes {
    /// `image`.
    pub image: u64,
    /// `audio` (voice notes too).
    pub audio: u64,
    /// `video`.
    pub video: u64,
    /// `document`.
    pub document: u64,
    /// `sticker`.
    pub sticker: u64,
    /// Anything else (Messenger/Instagram `file` attachments, …).
    pub file: u64,
}

impl MaxBytes {
    /// The limit of a media kind (`image`, `video`, …; unknown kinds get
    /// the `file` limit).
    pub fn of(&self, kind: &str) -> u64 {
        match kind {
            "image" => self.image,
            "audio" => self.audio,
            "video" => self.video,
            "document" => self.document,
            "sticker" => self.sticker,
            _ => self.file,
        }
    }
}

/// Where media bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaStorageKind {
    /// `{data_dir}/media/` (the default).
    Local,
    /// An S3-compatible bucket (a deployment across machines).
    S3(S3Settings),
}

/// `[media.s3]`: the bucket. Credentials come from the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
/// environment variables (or the instance's role), never from this file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint of an S3-compatible service (MinIO, R2, Ceph); `None` = AWS.
    pub endpoint: Option<String>,
    /// Region (`us-east-1`; S3-compatible services often ignore it).
    pub region: String,
    /// Key prefix inside the bucket (`media/`).
    pub prefix: String,
    /// Allow a plain-http endpoint (a local MinIO).
    pub allow_http: bool,
}

/// `[media]`: the media pipeline.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Whether inbound media is downloaded (jobs are queued either way).
    pub enabled: bool,
    /// Where bytes are stored.
    pub storage: MediaStorageKind,
    /// Downloads in flight at once per process: the media consumer's own
    /// limit, apart from the text pipeline.
    pub concurrency: usize,
    /// Attempts for transient failures before the job is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (full jitter, doubling).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Longest wait for the next bytes of a download (a stalled transfer
    /// fails as transient; a slow but moving one is never cut).
    pub read_timeout: Duration,
    /// How long an uploaded media id is reused for the same file and
    /// sender (Meta keeps uploads 30 days).
    pub upload_cache: Duration,
    /// Directory outbound `path`s are relative to (`None`: `{data_dir}/uploads`).
    pub upload_dir: Option<PathBuf>,
    /// Size limits per type.
    pub max_bytes: MaxBytes,
}

impl MediaSettings {
    /// The directory of locally stored media under `data_dir`.
    pub fn local_dir(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join("media")
    }

    /// The directory outbound `"path"` media is read from.
    pub fn upload_root(&self, data_dir: &std::path::Path) -> PathBuf {
        self.upload_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("uploads"))
    }
}

impl RawMedia {
    pub(super) fn validate(self) -> Result<MediaSettings, ConfigError> {
        let storage = match self.storage.trim() {
            "local" => MediaStorageKind::Local,
            "s3" => {
                let bucket = non_empty(self.s3.bucket).ok_or_else(|| {
                    invalid("media.s3.bucket", "must be set when media.storage = \"s3\"")
                })?;
                let endpoint = non_empty(self.s3.endpoint);
                if let Some(e) = &endpoint {
                    if !(e.starts_with("https://") || e.starts_with("http://")) {
                        return Err(invalid(
                            "media.s3.endpoint",
                            format!("{e:?} is not an http(s) URL"),
                        ));
                    }
                    if e.starts_with("http://") && !self.s3.allow_http {
                        return Err(invalid(
                            "media.s3.endpoint",
                            "is plain http: set media.s3.allow_http = true to allow it",
                        ));
                    }
                }
                MediaStorageKind::S3(S3Settings {
                    bucket,
                    endpoint,
                    region: self.s3.region.trim().to_string(),
                    prefix: non_empty(self.s3.prefix).unwrap_or_default(),
                    allow_http: self.s3.allow_http,
                })
            }
            other => {
                return Err(invalid(
                    "media.storage",
                    format!("{other:?} is not local or s3"),
                ))
            }
        };
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(invalid("media.concurrency", "must be between 1 and 256"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("media.max_attempts", "must be at least 1"));
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(invalid(
                "media.backoff_cap_ms",
                "must not be smaller than media.backoff_base_ms",
            ));
        }
        // Meta keeps an upload 30 days: reuse it for less than that.
        if self.upload_cache_days >= 30 {
            return Err(invalid(
                "media.upload_cache_days",
                "must be below 30 (Meta deletes uploaded media after 30 days)",
            ));
        }
        let m = &self.max_bytes;
        for (key, v) in [
            ("media.max_bytes.image", m.image),
            ("media.max_bytes.audio", m.audio),
            ("media.max_bytes.video", m.video),
            ("media.max_bytes.document", m.document),
            ("media.max_bytes.sticker", m.sticker),
            ("media.max_bytes.file", m.file),
        ] {
            positive(key, v)?;
        }
        let ms = Duration::from_millis;
        Ok(MediaSettings {
            enabled: self.enabled,
            storage,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            backoff_base: ms(positive("media.backoff_base_ms", self.backoff_base_ms)?),
            backoff_cap: ms(self.backoff_cap_ms),
            read_timeout: ms(positive("media.read_timeout_ms", self.read_timeout_ms)?),
            upload_cache: Duration::from_secs(u64::from(self.upload_cache_days) * 86_400),
            upload_dir: self.upload_dir.filter(|p| !p.as_os_str().is_empty()),
            max_bytes: MaxBytes {
                image: m.image,
                audio: m.audio,
                video: m.video,
                document: m.document,
                sticker: m.sticker,
                file: m.file,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{MediaStorageKind, Settings};

    fn load(extra: &[(&str, &str)]) -> Result<Settings, crate::config::ConfigError> {
        crate::config::load_for_test(extra)
    }

    #[test]
    fn defaults_are_local_with_meta_limits() {
        let s = load(&[]).unwrap();
        assert_eq!(s.media.storage, MediaStorageKind::Local);
        assert_eq!(s.media.max_bytes.of("image"), 5 * 1024 * 1024);
        assert_eq!(s.media.max_bytes.of("sticker"), 512_000);
        assert_eq!(s.media.max_bytes.of("share"), s.media.max_bytes.file);
        assert!(s.media.upload_cache < std::time::Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn bad_media_settings_name_their_key() {
        let key = |extra: &[(&str, &str)]| match load(extra) {
            Err(crate::config::ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        };
        assert_eq!(key(&[("INLET_MEDIA__STORAGE", "s3")]), "media.s3.bucket");
        assert_eq!(key(&[("INLET_MEDIA__STORAGE", "ftp")]), "media.storage");
        assert_eq!(
            key(&[("INLET_MEDIA__UPLOAD_CACHE_DAYS", "30")]),
            "media.upload_cache_days"
        );
        assert_eq!(
            key(&[("INLET_MEDIA__MAX_BYTES__VIDEO", "0")]),
            "media.max_bytes.video"
        );
        assert_eq!(
            key(&[
                ("INLET_MEDIA__STORAGE", "s3"),
                ("INLET_MEDIA__S3__BUCKET", "b"),
                ("INLET_MEDIA__S3__ENDPOINT", "http://127.0.0.1:9000"),
            ]),
            "media.s3.endpoint"
        );
        let s3 = load(&[
            ("INLET_MEDIA__STORAGE", "s3"),
            ("INLET_MEDIA__S3__BUCKET", "inlet"),
            ("INLET_MEDIA__S3__ENDPOINT", "http://127.0.0.1:9000"),
            ("INLET_MEDIA__S3__ALLOW_HTTP", "true"),
        ])
        .unwrap();
        assert!(matches!(s3.media.storage, MediaStorageKind::S3(ref b) if b.bucket == "inlet"));
    }
}
