//! The media side of the store: the download state of each attachment of
//! an inbound message (`message_media`, one row per message and position in
//! its `media` array) and the ids of outbound uploads (`media_uploads`).
//!
//! A row is written `pending` in the same transaction as its new message,
//! together with the job on `{prefix}media.processing` (outbox); the media
//! consumer then records `stored` (digest, size, MIME type), `failed` (a
//! reason: digest mismatch, too large, expired) or `dead_lettered`
//! (transient errors outlasted the retries). Recording an outcome queues
//! the conversation's cache rewrite in the same transaction, so the cache
//! shows the media state.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::MediaRef;
use crate::plan::OutboxRow;

/// States of an attachment's download.
pub mod state {
    /// Queued, not yet downloaded (also between retries).
    pub const PENDING: &str = "pending";
    /// Downloaded, verified and stored.
    pub const STORED: &str = "stored";
    /// Refused for good (digest mismatch, too large, gone): nothing stored.
    pub const FAILED: &str = "failed";
    /// Transient errors outlasted the retries (in the DLQ; a replay
    /// queues it again).
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// States the consumer will not touch again (a replay may).
    pub const FINAL: [&str; 3] = [STORED, FAILED, DEAD_LETTERED];
}

/// The outbox row of one media job: fields `message_id`, `index`, `tenant`.
pub fn media_job(message_id: i64, index: i32, tenant: &str) -> OutboxRow {
    OutboxRow {
        stream: crate::streams::MEDIA_PROCESSING.to_string(),
        fields: BTreeMap::from([
            ("message_id".to_string(), message_id.to_string()),
            ("index".to_string(), index.to_string()),
            ("tenant".to_string(), tenant.to_string()),
        ]),
    }
}

/// Everything the consumer needs to fetch one attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaTarget {
    /// Message row id.
    pub message_id: i64,
    /// Position in the message's `media` array.
    pub index: i32,
    /// Tenant.
    pub tenant: String,
    /// Channel (`whatsapp`, `facebook`, `instagram`).
    pub channel: String,
    /// Business endpoint (WhatsApp phone number id: picks the token).
    pub business_id: String,
    /// The attachment as the webhook described it.
    pub media: MediaRef,
    /// Current state (see [`state`]).
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
}

/// The recorded state of one attachment (API, cache, DLQ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Message row id.
    pub message_id: i64,
    /// Position in the message's `media` array.
    pub index: i32,
    /// Tenant.
    pub tenant: String,
    /// State (see [`state`]).
    pub state: String,
    /// Media kind (`image`, `video`, …).
    pub kind: String,
    /// Hex SHA-256 of the stored bytes (their storage key).
    pub sha256: Option<String>,
    /// Stored size.
    pub bytes: Option<i64>,
    /// MIME type (Meta's, else the webhook's).
    pub mime_type: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Error detail.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// Last change (epoch ms).
    pub updated_ms: i64,
}

/// An outcome to record.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaOutcome {
    /// Stored under its digest.
    Stored {
        /// Hex SHA-256.
        sha256: String,
        /// Size in bytes.
        bytes: i64,
        /// MIME type.
        mime_type: Option<String>,
    },
    /// Refused for good; nothing stored.
    Failed {
        /// Short reason code.
        reason: String,
        /// Detail.
        error: String,
    },
    /// A transient failure; another attempt follows.
    Retrying {
        /// Detail.
        error: String,
    },
    /// Transient failures outlasted the retries.
    DeadLettered {
        /// Short reason code.
        reason: String,
        /// Detail.
        error: String,
    },
}

/// The media tables.
pub trait MediaStore: Send + Sync {
    /// The attachment a job names, with its message's routing data.
    fn media_target(
        &self,
        message_id: i64,
        index: i32,
    ) -> BoxFuture<'_, Result<Option<MediaTarget>, StoreError>>;
    /// The recorded state of one attachment.
    fn media_record(
        &self,
        message_id: i64,
        index: i32,
    ) -> BoxFuture<'_, Result<Option<MediaRecord>, StoreError>>;
    /// Records an outcome unless the row is already in a final state (the
    /// first outcome wins; a redelivered job cannot undo `stored`), and
    /// queues the conversation's cache rewrite in the same transaction.
    /// False when nothing changed.
    fn record_media(
        &self,
        message_id: i64,
        index: i32,
        outcome: MediaOutcome,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Pending attachments, oldest first (direct mode resumes them at
    /// start: their in-process jobs died with the previous process).
    fn pending_media(&self, limit: i64) -> BoxFuture<'_, Result<Vec<(i64, i32)>, StoreError>>;
    /// Dead-lettered attachments, oldest first.
    fn dead_media(&self, limit: i64) -> BoxFuture<'_, Result<Vec<MediaRecord>, StoreError>>;
    /// Puts a dead-lettered (or failed) attachment back to `pending` with
    /// fresh attempts and queues its job, in one transaction. False when
    /// there is no such row or it is stored.
    fn requeue_media(
        &self,
        message_id: i64,
        index: i32,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Gives dead-lettered attachments up: `failed` with reason
    /// `discarded` (the DLQ's remove and purge). Returns how many were
    /// dead-lettered.
    fn discard_dead_media<'a>(
        &'a self,
        ids: &'a [(i64, i32)],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// An uploaded media id of `sender` for the file with this digest,
    /// uploaded at or after `not_before_ms`.
    fn cached_upload<'a>(
        &'a self,
        sender: &'a str,
        sha256: &'a str,
        not_before_ms: i64,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// Remembers an upload (replacing an older one of the same file).
    fn remember_upload<'a>(&'a self, upload: &'a Upload) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// An outbound upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// Phone number id it was uploaded for.
    pub sender: String,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Meta's media id.
    pub media_id: String,
    /// MIME type.
    pub mime_type: String,
    /// Size.
    pub bytes: i64,
    /// When (epoch ms).
    pub uploaded_ms: i64,
}
