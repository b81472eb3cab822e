//! The JSON cache: read-optimized files under `{data_dir}/cache/`, rebuilt
//! from the database.
//!
//! | file | content |
//! |---|---|
//! | `conversations.json` | the most recently active conversations (`cache.conversations_limit`) with contact, channel, last message preview, last activity, unread count and the current status of the last outbound message |
//! | `conversations/{id}.json` | one conversation and its latest messages (`cache.messages_limit`, oldest first) with their statuses |
//! | `contacts.json` | the most recently seen contacts ([`CONTACTS_LIMIT`]) with channel ids, names, first/last seen |
//! | `analytics/summary.json` | KPIs computed here, not by readers (see [`analytics`]) |
//!
//! Every file is a pure function of the database (and, for the summary, of
//! "now"), so losing the directory is harmless: [`Cache::rebuild_all`] or a
//! read API miss writes it again. Files are replaced atomically
//! ([`write_atomic`]: temp file in the same directory, fsync, rename, fsync of
//! the directory), so a reader never sees a partial document.
//!
//! Writers: the cache-sync consumer ([`sync`]) rewrites the files named by
//! `cache.sync` jobs, coalesced; the scheduled full rebuild; the read API on
//! a miss or a stale file. Within a process, writes of one file are
//! serialized, so an older build never replaces a newer one; across processes
//! the next job, the TTL refresh or the rebuild converge.

pub mod analytics;
pub mod sync;

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::CacheSettings;
use crate::store::read::{
    ContactSummary, ConversationMessage, ConversationPage, ConversationSummary,
};
use crate::store::{Store, StoreError};

/// Contacts listed in `contacts.json` (most recently seen first).
pub const CONTACTS_LIMIT: i64 = 10_000;

/// Receipt rows re-examined behind the newest one seen, so receipts that
/// committed out of id order (concurrent workers) are not missed.
const STATUS_SLACK: i64 = 2_000;
/// Receipt rows fetched per page when looking for changed statuses.
const STATUS_PAGE: i64 = 5_000;
/// Lock stripes serializing writes of one file within a process.
const STRIPES: usize = 64;

/// One cache file, as named by a `cache.sync` job's `key` field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKey {
    /// `conversations.json` (job key `conversations`).
    Conversations,
    /// `conversations/{id}.json` (job key `conversation:{id}`).
    Conversation(i64),
    /// `contacts.json` (job key `contacts`).
    Contacts,
    /// `analytics/summary.json` (job key `summary`).
    Summary,
}

impl CacheKey {
    /// Parses a job key.
    pub fn parse(job: &str) -> Option<Self> {
        match job.trim() {
            "conversations" => Some(CacheKey::Conversations),
            "contacts" => Some(CacheKey::Contacts),
            "summary" => Some(CacheKey::Summary),
            other => other
                .strip_prefix("conversation:")
                .and_then(|id| id.parse().ok())
                .map(CacheKey::Conversation),
        }
    }

    /// The job key (inverse of [`CacheKey::parse`]).
    pub fn job(&self) -> String {
        match self {
            CacheKey::Conversations => "conversations".into(),
            CacheKey::Conversation(id) => format!("conversation:{id}"),
            CacheKey::Contacts => "contacts".into(),
            CacheKey::Summary => "summary".into(),
        }
    }

    /// The file's path relative to the cache directory.
    pub fn relative_path(&self) -> PathBuf {
        match self {
            CacheKey::Conversations => PathBuf::from("conversations.json"),
            CacheKey::Conversation(id) => Path::new("conversations").join(format!("{id}.json")),
            CacheKey::Contacts => PathBuf::from("contacts.json"),
            CacheKey::Summary => Path::new("analytics").join("summary.json"),
        }
    }

    /// The kind of file (label of `inlet_cache_rewrites_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            CacheKey::Conversations => "conversations",
            CacheKey::Conversation(_) => "conversation",
            CacheKey::Contacts => "contacts",
            CacheKey::Summary => "summary",
        }
    }

    fn kind_index(&self) -> usize {
        match self {
            CacheKey::Conversations => 0,
            CacheKey::Conversation(_) => 1,
            CacheKey::Contacts => 2,
            CacheKey::Summary => 3,
        }
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.job())
    }
}

/// `conversations.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationsDoc {
    /// Most recently active first.
    pub conversations: Vec<ConversationSummary>,
}

/// `conversations/{id}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationDoc {
    /// The conversation, as in the list.
    pub conversation: ConversationSummary,
    /// Its latest messages, oldest first.
    pub messages: Vec<ConversationMessage>,
}

/// `contacts.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactsDoc {
    /// Most recently seen first.
    pub contacts: Vec<ContactSummary>,
}

/// A cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file could not be written.
    #[error("cache file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A document could not be encoded.
    #[error("encoding a cache document: {0}")]
    Encode(#[from] serde_json::Error),
}

impl CacheError {
    /// Whether the database was unreachable (a retry may succeed).
    pub fn is_transient(&self) -> bool {
        matches!(self, CacheError::Store(e) if e.is_transient())
    }
}

/// Some files of a batch could not be rewritten.
#[derive(Debug)]
pub struct ApplyError {
    /// The keys to retry.
    pub failed: BTreeSet<CacheKey>,
    /// The first error.
    pub error: CacheError,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cache files not rewritten: {}",
            self.failed.len(),
            self.error
        )
    }
}

/// What a full rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RebuildReport {
    /// Files written.
    pub written: usize,
    /// Conversation files removed (their conversation no longer exists).
    pub removed: usize,
}

/// Remembers which receipts were already turned into conversation rewrites.
#[derive(Debug, Default)]
struct StatusCursor {
    floor: i64,
    seen: BTreeSet<i64>,
}

/// The cache directory and its writer; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    store: Store,
    conversations_limit: i64,
    messages_limit: i64,
    ttl: Duration,
    stripes: Vec<tokio::sync::Mutex<()>>,
    rewrites: [AtomicU64; 4],
    refreshing: std::sync::Mutex<HashSet<CacheKey>>,
    status_cursor: tokio::sync::Mutex<Option<StatusCursor>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache in `dir` (usually `settings.cache_dir()`) over `store`.
    pub fn new(dir: impl Into<PathBuf>, store: Store, settings: &CacheSettings) -> Self {
        let clamp = |n: usize| i64::try_from(n.max(1)).unwrap_or(i64::MAX);
        Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                store,
                conversations_limit: clamp(settings.conversations_limit),
                messages_limit: clamp(settings.messages_limit),
                ttl: settings.ttl,
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                rewrites: Default::default(),
                refreshing: std::sync::Mutex::new(HashSet::new()),
                status_cursor: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The store the files are built from.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Age after which a served file is refreshed in the background.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Absolute path of a file.
    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.inner.dir.join(key.relative_path())
    }

    /// How often files of `kind` (`conversations`, `conversation`,
    /// `contacts`, `summary`) were rewritten by this cache handle.
    pub fn rewrites(&self, kind: &str) -> u64 {
        [
            CacheKey::Conversations,
            CacheKey::Conversation(0),
            CacheKey::Contacts,
            CacheKey::Summary,
        ]
        .iter()
        .find(|k| k.kind() == kind)
        .map_or(0, |k| {
            self.inner.rewrites[k.kind_index()].load(Ordering::Relaxed)
        })
    }

    /// Rewrites of every file by this cache handle.
    pub fn rewrites_total(&self) -> u64 {
        self.inner
            .rewrites
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The document of `key` as built from the database now (`now` is the
    /// summary's reference time); `None` for a conversation that does not
    /// exist. Nothing is written.
    pub async fn build(
        &self,
        key: &CacheKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let read = self.inner.store.read_model();
        let bytes = match key {
            CacheKey::Conversations => encode(&ConversationsDoc {
                conversations: read.conversations(self.inner.conversations_limit).await?,
            })?,
            CacheKey::Conversation(id) => {
                let Some(ConversationPage {
                    conversation,
                    messages,
                }) = read
                    .conversation_page(*id, self.inner.messages_limit)
                    .await?
                else {
                    return Ok(None);
                };
                encode(&ConversationDoc {
                    conversation,
                    messages,
                })?
            }
            CacheKey::Contacts => encode(&ContactsDoc {
                contacts: read.contacts(CONTACTS_LIMIT).await?,
            })?,
            CacheKey::Summary => encode(&analytics::summary(read, now).await?)?,
        };
        Ok(Some(bytes))
    }

    /// Rebuilds one file from the database and replaces it atomically (a
    /// conversation that no longer exists has its file removed). Returns the
    /// bytes written.
    pub async fn refresh(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        self.refresh_at(key, Utc::now()).await
    }

    /// [`Cache::refresh`] with an explicit "now" for the summary.
    pub async fn refresh_at(
        &self,
        key: &CacheKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        // Build and write under the file's lock: a build that started later
        // (newer data) is never overwritten by one that started earlier.
        let _guard = self.stripe(key).lock().await;
        let path = self.path(key);
        match self.build(key, now).await? {
            Some(bytes) => {
                let (p, b) = (path.clone(), bytes.clone());
                tokio::task::spawn_blocking(move || write_atomic(&p, &b))
                    .await
                    .map_err(|e| CacheError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(e),
                    })?
                    .map_err(|source| CacheError::Io { path, source })?;
                self.inner.rewrites[key.kind_index()].fetch_add(1, Ordering::Relaxed);
                metrics::counter!("inlet_cache_rewrites_total", "file" => key.kind()).increment(1);
                Ok(Some(bytes))
            }
            None => {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(CacheError::Io { path, source }),
                }
                Ok(None)
            }
        }
    }

    /// Rewrites every file in `keys` once. A batch that names the
    /// conversation list also rewrites the conversation files whose messages
    /// received receipts since the last batch (receipts name no
    /// conversation in their cache job). Keys that failed are returned for a
    /// retry; the others are done.
    pub async fn apply(&self, keys: &BTreeSet<CacheKey>) -> Result<usize, ApplyError> {
        let mut keys = keys.clone();
        if keys.contains(&CacheKey::Conversations) {
            match self.status_touched().await {
                Ok(ids) => keys.extend(ids.into_iter().map(CacheKey::Conversation)),
                Err(e) => {
                    return Err(ApplyError {
                        failed: keys,
                        error: e.into(),
                    })
                }
            }
        }
        let mut failed = BTreeSet::new();
        let mut first_error = None;
        let mut done = 0;
        for key in &keys {
            match self.refresh(key).await {
                Ok(_) => done += 1,
                Err(e) => {
                    metrics::counter!("inlet_cache_errors_total", "file" => key.kind())
                        .increment(1);
                    failed.insert(key.clone());
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(done),
            Some(error) => Err(ApplyError { failed, error }),
        }
    }

    /// Rewrites everything from the database: the lists, the summary (as of
    /// `now`), the files of the listed conversations and every conversation
    /// file already on disk. Files of other conversations are written by the
    /// read API on demand.
    pub async fn rebuild_all(&self, now: DateTime<Utc>) -> Result<RebuildReport, CacheError> {
        let mut report = RebuildReport::default();
        let list = self.refresh_at(&CacheKey::Conversations, now).await?;
        report.written += 1;
        for key in [CacheKey::Contacts, CacheKey::Summary] {
            self.refresh_at(&key, now).await?;
            report.written += 1;
        }
        let mut ids: BTreeSet<i64> = self.existing_conversation_files().await;
        if let Some(bytes) = list {
            let doc: ConversationsDoc = serde_json::from_slice(&bytes)?;
            ids.extend(doc.conversations.iter().map(|c| c.id));
        }
        for id in ids {
            match self.refresh_at(&CacheKey::Conversation(id), now).await? {
                Some(_) => report.written += 1,
                None => report.removed += 1,
            }
        }
        let dir = self.inner.dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_stale_temp_files(&dir)).await;
        metrics::counter!("inlet_cache_rebuilds_total").increment(1);
        Ok(report)
    }

    /// A file's bytes and modification time, if it exists.
    pub async fn read(&self, key: &CacheKey) -> std::io::Result<Option<(Vec<u8>, SystemTime)>> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let modified = file.metadata()?.modified()?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes)?;
            Ok(Some((bytes, modified)))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Refreshes `key` in a background task, unless a refresh of it is
    /// already running in this process. Failures are logged (the stale file
    /// keeps being served).
    pub fn refresh_in_background(&self, key: CacheKey) {
        {
            let mut running = self
                .inner
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !running.insert(key.clone()) {
                return;
            }
        }
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cache.refresh(&key).await {
                tracing::debug!(error = %e, key = %key, "background cache refresh failed");
            }
            cache
                .inner
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    fn stripe(&self, key: &CacheKey) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.inner.stripes[(h.finish() as usize) % STRIPES]
    }

    async fn existing_conversation_files(&self) -> BTreeSet<i64> {
        let dir = self.inner.dir.join("conversations");
        tokio::task::spawn_blocking(move || {
            std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".json"))
                                .and_then(|id| id.parse().ok())
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    }

    /// Conversations whose messages got receipts since the last call.
    async fn status_touched(&self) -> Result<BTreeSet<i64>, StoreError> {
        let read = self.inner.store.read_model();
        let mut guard = self.inner.status_cursor.lock().await;
        if guard.is_none() {
            // First call: look back a little, so receipts stored just
            // before this process started are covered too.
            let max = read.max_status_id().await?;
            *guard = Some(StatusCursor {
                floor: (max - STATUS_SLACK).max(0),
                seen: BTreeSet::new(),
            });
        }
        let Some(cursor) = guard.as_mut() else {
            return Ok(BTreeSet::new());
        };
        let mut touched = BTreeSet::new();
        let mut after = cursor.floor;
        loop {
            let page = read.status_changes(after, STATUS_PAGE).await?;
            let n = page.rows.len();
            for (id, conversation) in page.rows {
                after = after.max(id);
                if cursor.seen.insert(id) {
                    touched.extend(conversation);
                }
            }
            if (n as i64) < STATUS_PAGE {
                break;
            }
        }
        if let Some(&newest) = cursor.seen.iter().next_back() {
            cursor.floor = cursor.floor.max(newest - STATUS_SLACK);
            let floor = cursor.floor;
            cursor.seen = cursor.seen.split_off(&(floor + 1));
        }
        Ok(touched)
    }
}

fn encode<T: Serialize>(doc: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec(doc)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replaces `path` with `bytes` atomically: writes a temp file in the same
/// directory, fsyncs it, renames it over `path` and fsyncs the directory. A
/// concurrent reader sees the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cache".into());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Removes temp files a crashed writer left behind (older than an hour).
fn remove_stale_temp_files(dir: &Path) {
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    for sub in [
        dir.to_path_buf(),
        dir.join("conversations"),
        dir.join("analytics"),
    ] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if name.starts_with('.') && name.ends_with(".tmp") && old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_round_trip() {
        for key in [
            CacheKey::Conversations,
            CacheKey::Conversation(42),
            CacheKey::Contacts,
            CacheKey::Summary,
        ] {
            assert_eq!(CacheKey::parse(&key.job()), Some(key.clone()));
        }
        assert_eq!(CacheKey::parse("conversation:x"), None);
        assert_eq!(CacheKey::parse("nonsense"), None);
        assert_eq!(
            CacheKey::Conversation(7).relative_path(),
            Path::new("conversations/7.json")
        );
        assert_eq!(
            CacheKey::Summary.relative_path(),
            Path::new("analytics/summary.json")
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.json");
        write_atomic(&path, b"{\"a\":1}").unwrap();
        write_atomic(&path, b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":2}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.json")]);
    }
}
