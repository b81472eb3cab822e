//! The Graph media calls: `GET /{media-id}` (a short-lived download URL and
//! Meta's description of the file), the download itself — streamed chunk
//! by chunk into a temp file, hashed and counted on the way, cut off at the
//! size limit, never held in memory — and the multipart upload of outbound
//! media (`POST /{phone-number-id}/media`), streamed from the file.
//!
//! The bearer token goes only to Graph and to the download URL Meta gave
//! for a WhatsApp media id; Messenger and Instagram attachment URLs are
//! fetched without it (they are signed CDN links, and a token must never
//! reach a third-party host).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::{Digest, DownloadStatus};
use crate::config::{GraphSettings, MediaSettings};
use crate::outbound::{ErrorClass, GraphError};

/// What `GET /{media-id}` says about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    /// Download URL (valid about 5 minutes; needs the bearer token).
    pub url: String,
    /// MIME type.
    pub mime_type: Option<String>,
    /// SHA-256 (hex).
    pub sha256: Option<String>,
    /// Size in bytes.
    pub file_size: Option<u64>,
}

impl MediaInfo {
    /// Parses the answer of `GET /{media-id}`
    /// (`{messaging_product, url, mime_type, sha256, file_size, id}`;
    /// `file_size` as a number or a string).
    pub fn from_body(body: &[u8]) -> Option<MediaInfo> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let file_size = match v.get("file_size") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Some(MediaInfo {
            url: text("url").filter(|u| u.starts_with("https://") || u.starts_with("http://"))?,
            mime_type: text("mime_type"),
            sha256: text("sha256"),
            file_size,
        })
    }
}

/// A media call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Graph answered `GET /{media-id}` or the upload with an error.
    #[error("graph error: {0}")]
    Graph(Box<GraphError>),
    /// The download URL is no longer valid (401/403/404/410).
    #[error("download URL expired (HTTP {0})")]
    Expired(u16),
    /// The download was refused for good (another 4xx, a redirect).
    #[error("download refused (HTTP {0})")]
    Refused(u16),
    /// The download failed in a way worth retrying (408, 429, 5xx).
    #[error("download failed (HTTP {0})")]
    Unavailable(u16),
    /// The connection failed or stalled.
    #[error("transport: {0}")]
    Transport(String),
    /// The file is larger than the limit of its type.
    #[error("larger than the limit of {limit} bytes (at least {size})")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// Bytes announced or received before the cut.
        size: u64,
    },
    /// A 2xx answer that is not what Graph documents.
    #[error("unreadable answer: {0}")]
    Answer(String),
    /// The temp file could not be written.
    #[error("temp file: {0}")]
    Io(#[from] std::io::Error),
}

impl FetchError {
    /// Whether a later attempt may succeed. Auth and throttle errors count
    /// as transient: a new token or a pause fixes them, and the job is kept
    /// (retried, then dead-lettered for a replay) rather than failed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Graph(e) => matches!(
                e.class(),
                ErrorClass::Transient
                    | ErrorClass::ThrottleSender
                    | ErrorClass::ThrottlePair
                    | ErrorClass::ThrottleApp
                    | ErrorClass::AuthHalt
                    | ErrorClass::Unclassified
            ),
            FetchError::Unavailable(_) | FetchError::Transport(_) | FetchError::Io(_) => true,
            FetchError::Expired(_)
            | FetchError::Refused(_)
            | FetchError::TooLarge { .. }
            | FetchError::Answer(_) => false,
        }
    }

    /// Reason code recorded on the message when this error fails a job.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Graph(_) => "graph_error",
            FetchError::Expired(_) => "url_expired",
            FetchError::Refused(_) => "download_refused",
            FetchError::Unavailable(_) => "download_unavailable",
            FetchError::Transport(_) => "transport",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Answer(_) => "unreadable_answer",
            FetchError::Io(_) => "temp_file",
        }
    }
}

fn transport(e: reqwest::Error) -> FetchError {
    FetchError::Transport(e.to_string())
}

/// A downloaded file in the temp directory: removed when dropped unless
/// [`kept`](Self::keep) (the storage took it).
#[derive(Debug)]
pub struct Downloaded {
    path: PathBuf,
    /// SHA-256 of the bytes.
    pub sha256: Digest,
    /// Size.
    pub bytes: u64,
    /// The download's `Content-Type`.
    pub content_type: Option<String>,
    keep: bool,
}

impl Downloaded {
    /// The temp file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the file over (it is no longer removed on drop).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a temp file being written unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The media client.
#[derive(Debug, Clone)]
pub struct MediaClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    read_timeout: Duration,
}

impl MediaClient {
    /// A client for `[graph]` and `[media]`. Graph calls have the whole-request
    /// timeout of `[graph]`; downloads and uploads only a connect timeout and
    /// `media.read_timeout` between chunks (a large file may take minutes).
    pub fn new(graph: &GraphSettings, media: &MediaSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(graph.connect_timeout)
            .read_timeout(media.read_timeout)
            // A redirect would carry the bearer token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("inlet/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: format!("{}/{}", graph.base_url, graph.version),
            timeout: graph.timeout,
            read_timeout: media.read_timeout,
        })
    }

    /// `GET /{media-id}?phone_number_id=…`: a fresh download URL.
    pub async fn info(
        &self,
        media_id: &str,
        phone_number_id: &str,
        token: &SecretString,
    ) -> Result<MediaInfo, FetchError> {
        let response = self
            .http
            .get(format!("{}/{media_id}", self.base))
            .query(&[("phone_number_id", phone_number_id)])
            .bearer_auth(token.expose_secret())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(FetchError::Graph(Box::new(GraphError::from_body(
                status.as_u16(),
                &body,
            ))));
        }
        MediaInfo::from_body(&body).ok_or_else(|| {
            FetchError::Answer(format!("HTTP {status} from GET media id without a url"))
        })
    }

    /// Downloads `url` into a new file of `temp_dir`, with the bearer token
    /// when given, refusing more than `limit` bytes (from `Content-Length`
    /// before reading, else when the count passes it). The file is fsynced
    /// before this returns.
    pub async fn download(
        &self,
        url: &str,
        token: Option<&SecretString>,
        limit: u64,
        temp_dir: &Path,
    ) -> Result<Downloaded, FetchError> {
        let mut request = self.http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose_secret());
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        match DownloadStatus::of(status) {
            DownloadStatus::Ok => {}
            DownloadStatus::Expired => return Err(FetchError::Expired(status)),
            DownloadStatus::Transient => return Err(FetchError::Unavailable(status)),
            DownloadStatus::Refused => return Err(FetchError::Refused(status)),
        }
        if let Some(len) = response.content_length().filter(|l| *l > limit) {
            return Err(FetchError::TooLarge { limit, size: len });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let path = temp_dir.join(uuid::Uuid::now_v7().simple().to_string());
        let mut guard = TempGuard(Some(path.clone()));
        let mut file = tokio::fs::File::create(&path).await?;
        let mut hasher = sha2::Sha256::new();
        let mut bytes: u64 = 0;
        loop {
            let chunk = tokio::time::timeout(self.read_timeout, response.chunk())
                .await
                .map_err(|_| FetchError::Transport("download stalled".into()))?
                .map_err(transport)?;
            let Some(chunk) = chunk else { break };
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(FetchError::TooLarge { limit, size: bytes });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        guard.0 = None;
        Ok(Downloaded {
            path,
            sha256: hasher.finalize().into(),
            bytes,
            content_type,
            keep: false,
        })
    }

    /// `POST /{phone-number-id}/media` (multipart: `messaging_product`,
    /// `type`, `file` streamed from `file`); returns Meta's media id.
    pub async fn upload(
        &self,
        phone_number_id: &str,
        file: &Path,
        mime_type: &str,
        file_name: &str,
        token: &SecretString,
    ) -> Result<String, FetchError> {
        let source = tokio::fs::File::open(file).await?;
        let len = source.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(source));
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(file_name.to_string())
            .mime_str(mime_type)
            .map_err(|e| FetchError::Answer(format!("MIME type {mime_type:?}: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_string())
            .part("file", part);
        let response = self
            .http
            .post(format!("{}/{phone_number_id}/media", self.base))
            .bearer_auth(token.expose_secret())
            .multipart(form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(FetchError::Graph(Box::new(GraphError::from_body(
                status.as_u16(),
                &body,
            ))));
        }
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| {
                FetchError::Answer(format!("HTTP {status} from the upload without an id"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_info_as_graph_documents_it() {
        // Shape of Meta's "Retrieve media URL" answer (see
        // tests/fixtures/meta/README.md).
        let body = br#"{"messaging_product":"whatsapp","url":"https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=910000000000002&ext=1&hash=ATt","mime_type":"image/jpeg","sha256":"aaf1e5cd8b0b5c3ce2b1fcf0c6b4ac2b0d9dba1c6b4f6d2a4f1e0b3a2c1d0e9f","file_size":303833,"id":"910000000000002"}"#;
        let info = MediaInfo::from_body(body).unwrap();
        assert!(info.url.starts_with("https://lookaside.fbsbx.com/"));
        assert_eq!(info.mime_type.as_deref(), Some("image/jpeg"));
        assert_eq!(info.file_size, Some(303_833));
        assert!(super::super::parse_digest(info.sha256.as_deref().unwrap()).is_some());
        let string_size = br#"{"url":"https://x/y","file_size":"12"}"#;
        assert_eq!(
            MediaInfo::from_body(string_size).unwrap().file_size,
            Some(12)
        );
        assert!(MediaInfo::from_body(br#"{"id":"1"}"#).is_none());
        assert!(MediaInfo::from_body(br#"{"url":"file:///etc/passwd"}"#).is_none());
    }

    #[test]
    fn what_is_worth_retrying() {
        assert!(FetchError::Unavailable(503).is_transient());
        assert!(FetchError::Transport("reset".into()).is_transient());
        assert!(!FetchError::Expired(404).is_transient());
        assert!(!FetchError::TooLarge { limit: 1, size: 2 }.is_transient());
        let throttled =
            GraphError::from_body(400, br#"{"error":{"code":130429,"message":"rate"}}"#);
        assert!(FetchError::Graph(Box::new(throttled)).is_transient());
        let bad_id = GraphError::from_body(
            400,
            br#"{"error":{"code":100,"message":"Invalid parameter"}}"#,
        );
        assert!(!FetchError::Graph(Box::new(bad_id)).is_transient());
    }
}
