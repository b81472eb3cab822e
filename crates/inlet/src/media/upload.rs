//! Outbound media: `POST /api/messages` with `"image": {"path": …}` (a file
//! under `media.upload_dir`) or `{"url": …}` (a URL Inlet fetches) is
//! uploaded to WhatsApp (`POST /{phone-number-id}/media`) and sent by id.
//!
//! - [`check_local`]: what the API checks before storing the command — the
//!   file exists, is a regular file, within `media.max_bytes` of its type
//!   (the type itself is checked with the body, from the extension).
//! - [`Uploader::prepare`]: what the sender does right before the send —
//!   the same checks again (the file may have changed), a URL downloaded
//!   into a temp file within the limit and its `Content-Type` checked, the
//!   file's SHA-256, then the media id cached for this (sender, digest) if
//!   one was uploaded less than `media.upload_cache_days` ago (Meta keeps
//!   uploads 30 days), else the upload. The command's `path`/`url` becomes
//!   `id`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::AsyncReadExt;

use super::graph::{FetchError, MediaClient};
use crate::config::Settings;
use crate::outbound::request::{upload_mime, upload_mime_allowed, upload_path};
use crate::outbound::SendSpec;
use crate::store::media::Upload;
use crate::store::outbound::now_ms;
use crate::store::{Store, StoreError};

/// Why outbound media could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file or URL is not acceptable (missing, too large, wrong type):
    /// nothing was uploaded.
    #[error("{field}: {detail}")]
    Refused {
        /// The body field (`image.path`).
        field: String,
        /// Why.
        detail: String,
    },
    /// Fetching the URL or uploading failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The upload cache could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UploadError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Refused { .. } => false,
            UploadError::Fetch(e) => e.is_transient(),
            UploadError::Store(e) => e.is_transient(),
        }
    }

    /// Reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            UploadError::Refused { .. } => "media_refused",
            UploadError::Fetch(e) => e.reason(),
            UploadError::Store(_) => "store",
        }
    }
}

fn refused(field: String, detail: impl Into<String>) -> UploadError {
    UploadError::Refused {
        field,
        detail: detail.into(),
    }
}

/// Where a command's media comes from, when Inlet uploads it.
enum Source<'a> {
    Path(&'a str),
    Url(&'a str),
}

fn source(spec: &SendSpec) -> Option<Source<'_>> {
    if !spec.message_type.is_media() {
        return None;
    }
    let text = |k: &str| spec.content.get(k).and_then(Value::as_str);
    text("path")
        .map(Source::Path)
        .or_else(|| text("url").map(Source::Url))
}

/// Whether the command names media Inlet uploads (`path` or `url`).
pub fn needs_upload(spec: &SendSpec) -> bool {
    source(spec).is_some()
}

/// The file a `path` names, checked: relative, inside the upload
/// directory, a regular file within the type's limit. Returns it and its
/// size.
fn local_file(
    settings: &Settings,
    spec: &SendSpec,
    path: &str,
) -> Result<(PathBuf, u64), UploadError> {
    let field = format!("{}.path", spec.message_type.as_str());
    upload_path(path).map_err(|why| refused(field.clone(), why))?;
    let file = settings.media.upload_root(&settings.data_dir).join(path);
    let meta = std::fs::metadata(&file)
        .map_err(|e| refused(field.clone(), format!("cannot read {path:?}: {e}")))?;
    if !meta.is_file() {
        return Err(refused(field, format!("{path:?} is not a file")));
    }
    let limit = settings.media.max_bytes.of(spec.message_type.as_str());
    if meta.len() > limit {
        return Err(refused(
            field,
            format!(
                "{} bytes is over the {} limit of {limit} bytes (media.max_bytes)",
                meta.len(),
                spec.message_type.as_str()
            ),
        ));
    }
    if meta.len() == 0 {
        return Err(refused(field, "the file is empty"));
    }
    Ok((file, meta.len()))
}

/// The API's checks of a command's `path` media before it is stored: the
/// file exists and is within its type's limit. `Ok` for anything else.
pub fn check_local(settings: &Settings, spec: &SendSpec) -> Result<(), UploadError> {
    match source(spec) {
        Some(Source::Path(p)) => local_file(settings, spec, p).map(|_| ()),
        _ => Ok(()),
    }
}

async fn sha256_of(file: &Path) -> Result<String, std::io::Error> {
    let mut f = tokio::fs::File::open(file).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Uploads outbound media for the sender.
pub struct Uploader {
    store: Store,
    client: MediaClient,
    settings: Arc<Settings>,
    temp: PathBuf,
}

impl Uploader {
    /// An uploader recording its uploads in `store`.
    pub fn new(store: Store, settings: Arc<Settings>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: MediaClient::new(&settings.graph, &settings.media)?,
            temp: crate::config::MediaSettings::local_dir(&settings.data_dir).join("tmp"),
            store,
            settings,
        })
    }

    /// The command ready to send: `path`/`url` media replaced by the id of
    /// an upload (cached or new); other commands unchanged.
    pub async fn prepare(
        &self,
        spec: &SendSpec,
        token: &SecretString,
    ) -> Result<SendSpec, UploadError> {
        let Some(src) = source(spec) else {
            return Ok(spec.clone());
        };
        let t = spec.message_type;
        let limit = self.settings.media.max_bytes.of(t.as_str());
        // The file to upload: the named one, or the URL's bytes in a temp
        // file (removed when `_download` drops).
        let (file, name, mime, sha256, bytes, _download) = match src {
            Source::Path(p) => {
                let (file, bytes) = local_file(&self.settings, spec, p)?;
                let mime = upload_mime(t, p)
                    .ok_or_else(|| refused(format!("{}.path", t.as_str()), "type not accepted"))?;
                let sha = sha256_of(&file).await.map_err(FetchError::Io)?;
                let name = file_name(p);
                (file, name, mime, sha, bytes, None)
            }
            Source::Url(u) => {
                tokio::fs::create_dir_all(&self.temp)
                    .await
                    .map_err(FetchError::Io)?;
                let field = format!("{}.url", t.as_str());
                let d = match self.client.download(u, None, limit, &self.temp).await {
                    Ok(d) => d,
                    Err(e @ FetchError::TooLarge { .. }) => {
                        return Err(refused(field, e.to_string()))
                    }
                    Err(e @ (FetchError::Expired(_) | FetchError::Refused(_))) => {
                        return Err(refused(field, e.to_string()))
                    }
                    Err(e) => return Err(e.into()),
                };
                let path_part = u.split(['?', '#']).next().unwrap_or(u);
                let mime = d
                    .content_type
                    .as_deref()
                    .and_then(|c| upload_mime_allowed(t, c))
                    .or_else(|| upload_mime(t, path_part))
                    .ok_or_else(|| {
                        refused(
                            field.clone(),
                            format!(
                                "the URL's type ({}) is not one WhatsApp takes as {}",
                                d.content_type.as_deref().unwrap_or("unknown"),
                                t.as_str()
                            ),
                        )
                    })?;
                if d.bytes == 0 {
                    return Err(refused(field, "the URL returned no bytes"));
                }
                let sha = hex::encode(d.sha256);
                (
                    d.path().to_path_buf(),
                    file_name(path_part),
                    mime,
                    sha,
                    d.bytes,
                    Some(d),
                )
            }
        };
        let media = self.store.media();
        let fresh_after = now_ms() - self.settings.media.upload_cache.as_millis() as i64;
        let id = match media
            .cached_upload(&spec.from, &sha256, fresh_after)
            .await?
        {
            Some(id) => {
                metrics::counter!("inlet_media_uploads_total", "outcome" => "cached").increment(1);
                id
            }
            None => {
                let id = self
                    .client
                    .upload(&spec.from, &file, mime, &name, token)
                    .await?;
                metrics::counter!("inlet_media_uploads_total", "outcome" => "uploaded")
                    .increment(1);
                media
                    .remember_upload(&Upload {
                        sender: spec.from.clone(),
                        sha256,
                        media_id: id.clone(),
                        mime_type: mime.to_string(),
                        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                        uploaded_ms: now_ms(),
                    })
                    .await?;
                id
            }
        };
        let mut ready = spec.clone();
        if let Some(obj) = ready.content.as_object_mut() {
            obj.remove("path");
            obj.remove("url");
            obj.insert("id".into(), Value::String(id));
        }
        Ok(ready)
    }
}

/// The last path segment (the upload's file name), `file` when empty.
fn file_name(path: &str) -> String {
    path.rsplit(['/', '\\'])
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("file")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_the_last_segment() {
        assert_eq!(file_name("catalog/kettle.jpg"), "kettle.jpg");
        assert_eq!(file_name("https://x.example/a/b/clip.mp4"), "clip.mp4");
        assert_eq!(file_name("https://x.example/"), "file");
    }
}
