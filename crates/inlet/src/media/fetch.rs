//! One media job from start to end ([`MediaFetcher::run_job`]):
//!
//! 1. the attachment's row: already `stored`, `failed` or `dead_lettered`
//!    → nothing to do (a redelivered job never downloads twice);
//! 2. the URL: the webhook's (Graph v24+ WhatsApp webhooks and every
//!    Messenger/Instagram attachment carry one), else `GET /{media-id}`;
//!    a size Meta announces above the type's limit fails at once;
//! 3. the download, streamed into a temp file; an expired URL (401, 403,
//!    404, 410) gets one fresh `GET /{media-id}`, never a retry of the dead
//!    link;
//! 4. the digest against every SHA-256 Meta gave (webhook base64, Graph
//!    hex), and the size against Graph's `file_size`;
//! 5. the file into storage under its digest, then `stored` on the message
//!    (digest, size, MIME type).
//!
//! A mismatch, an oversize file or a refused download is recorded as
//! `failed` with its reason and nothing is stored. Transient errors (network,
//! Graph 5xx or throttling, storage) are retried with full-jitter backoff up
//! to `media.max_attempts`, then recorded `dead_lettered` (the DLQ shows it,
//! a replay queues it again).

use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::graph::{FetchError, MediaClient, MediaInfo};
use super::storage::{Storage, StorageError};
use super::{check_digest, content_key, DigestError, MediaJob};
use crate::audit::{Audit, AuditRecord};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::store::media::{state, MediaOutcome, MediaTarget};
use crate::store::outbound::now_ms;
use crate::store::{Store, StoreError};

/// Why one attempt did not store the file.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A Graph or download call failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The bytes are not the file Meta described.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// Graph's `file_size` and the downloaded size differ.
    #[error("size mismatch: Graph said {expected} bytes, got {actual}")]
    Size {
        /// `file_size`.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The storage could not keep the file.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No access token is configured for the business number.
    #[error("no access token configured for phone number id {0}")]
    NoToken(String),
    /// Neither a media id nor a URL to fetch.
    #[error("the attachment has neither a media id nor a URL")]
    Nothing,
}

impl AttemptError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            AttemptError::Fetch(e) => e.is_transient(),
            AttemptError::Storage(_) | AttemptError::NoToken(_) => true,
            AttemptError::Digest(_) | AttemptError::Size { .. } | AttemptError::Nothing => false,
        }
    }

    /// Reason code recorded on the message.
    pub fn reason(&self) -> &'static str {
        match self {
            AttemptError::Fetch(e) => e.reason(),
            AttemptError::Digest(e) => e.reason(),
            AttemptError::Size { .. } => "size_mismatch",
            AttemptError::Storage(_) => "storage",
            AttemptError::NoToken(_) => "no_access_token",
            AttemptError::Nothing => "no_source",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Downloaded, verified, stored, recorded.
    Stored,
    /// Already final (redelivery) or no such row: nothing done.
    Skipped,
    /// Recorded as failed (reason on the row).
    Failed,
    /// Retries used up: recorded as dead-lettered.
    DeadLettered,
    /// Shut down between retries: the job stays pending (redelivered).
    Interrupted,
}

impl JobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Stored => "stored",
            JobOutcome::Skipped => "skipped",
            JobOutcome::Failed => "failed",
            JobOutcome::DeadLettered => "dead_lettered",
            JobOutcome::Interrupted => "interrupted",
        }
    }
}

/// Runs media jobs: Graph, download, verify, store, record.
pub struct MediaFetcher {
    store: Store,
    storage: Storage,
    client: MediaClient,
    settings: Arc<Settings>,
    audit: Option<Audit>,
}

/// The media client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("media client: {0}")]
pub struct FetcherError(#[from] reqwest::Error);

impl MediaFetcher {
    /// A fetcher writing to `store` and `storage`.
    pub fn new(
        store: Store,
        storage: Storage,
        settings: Arc<Settings>,
        audit: Option<Audit>,
    ) -> Result<Self, FetcherError> {
        Ok(Self {
            client: MediaClient::new(&settings.graph, &settings.media)?,
            store,
            storage,
            settings,
            audit,
        })
    }

    /// The store it records in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn token_for(&self, business_id: &str) -> Option<SecretString> {
        self.settings
            .sending_app(business_id)
            .and_then(|app| app.access_token.as_ref())
            .and_then(|t| t.current())
    }

    /// Runs one job to its end (see the module doc). An error is the
    /// store's: the outcome could not be recorded, the job must be retried.
    pub async fn run_job(
        &self,
        job: &MediaJob,
        shutdown: &CancellationToken,
    ) -> Result<JobOutcome, StoreError> {
        let media = self.store.media();
        let Some(target) = media.media_target(job.message_id, job.index).await? else {
            tracing::warn!(
                message_id = job.message_id,
                index = job.index,
                "media job for an unknown attachment"
            );
            return Ok(self.finish(job, None, JobOutcome::Skipped, None));
        };
        if state::FINAL.contains(&target.state.as_str()) {
            return Ok(self.finish(job, Some(&target), JobOutcome::Skipped, None));
        }
        let cfg = &self.settings.media;
        let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap);
        let mut attempts = u32::try_from(target.attempts).unwrap_or(0);
        loop {
            let started = Instant::now();
            let result = self.attempt(&target).await;
            metrics::histogram!("inlet_media_download_seconds")
                .record(started.elapsed().as_secs_f64());
            attempts += 1;
            let (outcome, record) = match result {
                Ok(stored) => (JobOutcome::Stored, stored),
                Err(e) if !e.is_transient() => (
                    JobOutcome::Failed,
                    MediaOutcome::Failed {
                        reason: e.reason().to_string(),
                        error: e.to_string(),
                    },
                ),
                Err(e) if attempts >= cfg.max_attempts => (
                    JobOutcome::DeadLettered,
                    MediaOutcome::DeadLettered {
                        reason: e.reason().to_string(),
                        error: e.to_string(),
                    },
                ),
                Err(e) => {
                    metrics::counter!("inlet_media_jobs_total", "outcome" => "retried")
                        .increment(1);
                    tracing::info!(message_id = job.message_id, index = job.index, attempts, error = %e, "media download failed; retrying");
                    media
                        .record_media(
                            job.message_id,
                            job.index,
                            MediaOutcome::Retrying {
                                error: e.to_string(),
                            },
                            now_ms(),
                        )
                        .await?;
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            return Ok(self.finish(job, Some(&target), JobOutcome::Interrupted, None));
                        }
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            };
            let reason = match &record {
                MediaOutcome::Failed { reason, .. } | MediaOutcome::DeadLettered { reason, .. } => {
                    Some(reason.clone())
                }
                _ => None,
            };
            let changed = media
                .record_media(job.message_id, job.index, record, now_ms())
                .await?;
            let outcome = if changed {
                outcome
            } else {
                JobOutcome::Skipped
            };
            return Ok(self.finish(job, Some(&target), outcome, reason));
        }
    }

    fn finish(
        &self,
        job: &MediaJob,
        target: Option<&MediaTarget>,
        outcome: JobOutcome,
        reason: Option<String>,
    ) -> JobOutcome {
        metrics::counter!("inlet_media_jobs_total", "outcome" => outcome.as_str()).increment(1);
        if let Some(audit) = &self.audit {
            let mut record = AuditRecord::new("media")
                .outcome(outcome.as_str())
                .with("message_id", job.message_id)
                .with("index", job.index);
            if let Some(t) = target {
                record = record
                    .origin(&t.channel, &t.tenant)
                    .with("kind", t.media.kind.clone());
            }
            if let Some(r) = reason {
                record = record.reason(r);
            }
            audit.write(record);
        }
        outcome
    }

    /// One attempt: URL, download (one refresh of an expired URL), verify,
    /// store. Returns the outcome to record.
    async fn attempt(&self, target: &MediaTarget) -> Result<MediaOutcome, AttemptError> {
        let m = &target.media;
        let limit = self.settings.media.max_bytes.of(&m.kind);
        let whatsapp = target.channel == "whatsapp";
        // The token goes only to Graph and to WhatsApp media URLs.
        let token = if whatsapp {
            Some(
                self.token_for(&target.business_id)
                    .ok_or_else(|| AttemptError::NoToken(target.business_id.clone()))?,
            )
        } else {
            None
        };
        let mut info: Option<MediaInfo> = None;
        let mut url = match (&m.url, &m.media_id, &token) {
            (Some(u), _, _) => u.clone(),
            (None, Some(id), Some(token)) => {
                let i = self.client.info(id, &target.business_id, token).await?;
                let u = i.url.clone();
                info = Some(i);
                u
            }
            _ => return Err(AttemptError::Nothing),
        };
        let mut refreshed = false;
        let downloaded = loop {
            if let Some(size) = info.as_ref().and_then(|i| i.file_size) {
                if size > limit {
                    return Err(FetchError::TooLarge { limit, size }.into());
                }
            }
            match self
                .client
                .download(&url, token.as_ref(), limit, self.storage.temp_dir())
                .await
            {
                Ok(d) => break d,
                Err(FetchError::Expired(status)) if !refreshed => {
                    let (Some(id), Some(token)) = (&m.media_id, &token) else {
                        return Err(FetchError::Expired(status).into());
                    };
                    // A dead link is never retried: ask Graph for a new one.
                    refreshed = true;
                    metrics::counter!("inlet_media_url_refreshes_total").increment(1);
                    let i = self.client.info(id, &target.business_id, token).await?;
                    url = i.url.clone();
                    info = Some(i);
                }
                Err(e) => return Err(e.into()),
            }
        };
        let expected = [
            m.sha256.as_deref(),
            info.as_ref().and_then(|i| i.sha256.as_deref()),
        ];
        check_digest(&downloaded.sha256, expected.into_iter().flatten())?;
        if let Some(size) = info.as_ref().and_then(|i| i.file_size) {
            if size != downloaded.bytes {
                return Err(AttemptError::Size {
                    expected: size,
                    actual: downloaded.bytes,
                });
            }
        }
        let sha256 = hex::encode(downloaded.sha256);
        let bytes = downloaded.bytes;
        let mime_type = info
            .and_then(|i| i.mime_type)
            .or_else(|| m.mime_type.clone())
            .or_else(|| downloaded.content_type.clone());
        let temp = downloaded.keep();
        if let Err(e) = self.storage.put_file(&content_key(&sha256), &temp).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e.into());
        }
        metrics::counter!("inlet_media_bytes_total").increment(bytes);
        Ok(MediaOutcome::Stored {
            sha256,
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            mime_type,
        })
    }
}
