//! Where media bytes live: [`MediaStorage`], keyed by content
//! ([`super::content_key`]: the same file is kept once however many
//! messages carry it).
//!
//! - [`LocalStorage`] (default, `media.storage = "local"`): files under
//!   `{data_dir}/media/`. A download is written to `{data_dir}/media/tmp/`,
//!   fsynced, and renamed into place (same filesystem, so the rename is
//!   atomic), then the directory is fsynced: a reader sees the whole file
//!   or none.
//! - [`ObjectStorage`] (`media.storage = "s3"`): any `object_store` store;
//!   [`from_settings`] builds an S3-compatible one from `[media.s3]`. The
//!   verified temp file is streamed up in parts (multipart upload), never
//!   read into memory, and a reader sees the object only once it completed.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

use crate::config::{MediaSettings, MediaStorageKind, Settings};

/// A stream of stored bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Local file system.
    #[error("media storage: {0}")]
    Io(#[from] std::io::Error),
    /// The object store.
    #[error("media object store: {0}")]
    Object(#[from] object_store::Error),
    /// No object under that key.
    #[error("no stored media under that key")]
    NotFound,
    /// The storage could not be set up from the configuration.
    #[error("media storage configuration: {0}")]
    Config(String),
}

/// Stored media, by content key.
pub trait MediaStorage: Send + Sync + 'static {
    /// `local` or `s3` (metrics, logs).
    fn name(&self) -> &'static str;
    /// Where downloads are written before they are stored (local disk).
    fn temp_dir(&self) -> &Path;
    /// Whether an object exists under `key`.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;
    /// Stores the complete, fsynced, verified file `file` under `key` and
    /// removes `file`. Storing a key that exists keeps the existing object
    /// (content-addressed: it is the same bytes).
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    /// The size of the object under `key`.
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StorageError>>;
    /// Streams the bytes of `range` (the whole object when `None`). The
    /// range must lie inside the object and not be empty.
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<ByteStream, StorageError>>;
}

/// Shared storage handle.
pub type Storage = Arc<dyn MediaStorage>;

/// The storage `[media]` configures, under `data_dir` for local files and
/// temp files.
pub fn from_settings(settings: &Settings) -> Result<Storage, StorageError> {
    build(&settings.media, &settings.data_dir)
}

fn build(media: &MediaSettings, data_dir: &Path) -> Result<Storage, StorageError> {
    let root = MediaSettings::local_dir(data_dir);
    match &media.storage {
        MediaStorageKind::Local => Ok(Arc::new(LocalStorage::new(root)?)),
        MediaStorageKind::S3(s3) => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_allow_http(s3.allow_http);
            if !s3.region.is_empty() {
                builder = builder.with_region(&s3.region);
            }
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let store = builder
                .build()
                .map_err(|e| StorageError::Config(e.to_string()))?;
            Ok(Arc::new(ObjectStorage::new(
                Arc::new(store),
                "s3",
                &s3.prefix,
                root.join("tmp"),
            )?))
        }
    }
}

/// Files under a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    temp: PathBuf,
}

impl LocalStorage {
    /// Storage under `root` (created), temp files in `root/tmp` (leftovers
    /// of a crashed download are removed).
    pub fn new(root: PathBuf) -> Result<Self, StorageError> {
        let temp = root.join("tmp");
        std::fs::create_dir_all(&temp)?;
        clear_temp(&temp);
        Ok(Self { root, temp })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// Temp files older than this are leftovers of a process that died (a
/// live download touches its file at least every `media.read_timeout`).
const TEMP_LEFTOVER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes temp files a previous process left behind (downloads cut
/// short), sparing recent ones: another process sharing the data directory
/// may be writing them.
fn clear_temp(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TEMP_LEFTOVER);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn not_found(e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound
    } else {
        StorageError::Io(e)
    }
}

impl MediaStorage for LocalStorage {
    fn name(&self) -> &'static str {
        "local"
    }

    fn temp_dir(&self) -> &Path {
        &self.temp
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move { Ok(tokio::fs::try_exists(self.path(key)).await?) })
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let target = self.path(key);
            let dir = target
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone());
            tokio::fs::create_dir_all(&dir).await?;
            if tokio::fs::try_exists(&target).await? {
                tokio::fs::remove_file(file).await?;
                return Ok(());
            }
            tokio::fs::rename(file, &target).await?;
            // The rename is durable once the directory is.
            let dir_handle = tokio::fs::File::open(&dir).await?;
            dir_handle.sync_all().await?;
            Ok(())
        })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            Ok(tokio::fs::metadata(self.path(key))
                .await
                .map_err(not_found)?
                .len())
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<ByteStream, StorageError>> {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut file = tokio::fs::File::open(self.path(key))
                .await
                .map_err(not_found)?;
            let stream: ByteStream = match range {
                None => tokio_util::io::ReaderStream::new(file).boxed(),
                Some(r) => {
                    file.seek(std::io::SeekFrom::Start(r.start)).await?;
                    tokio_util::io::ReaderStream::new(file.take(r.end - r.start)).boxed()
                }
            };
            Ok(stream)
        })
    }
}

/// Objects in an `object_store` store (S3-compatible in production, the
/// in-memory store in tests), under a key prefix.
#[derive(Debug)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    name: &'static str,
    prefix: String,
    temp: PathBuf,
}

impl ObjectStorage {
    /// Storage in `store` under `prefix`, downloads staged in `temp`
    /// (created; leftovers removed).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        name: &'static str,
        prefix: &str,
        temp: PathBuf,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&temp)?;
        clear_temp(&temp);
        Ok(Self {
            store,
            name,
            prefix: prefix.trim_matches('/').to_string(),
            temp,
        })
    }

    /// An in-memory object store (`object_store::memory::InMemory`):
    /// the S3 code path without a server, for tests and trials.
    pub fn in_memory(temp: PathBuf) -> Result<Self, StorageError> {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            "memory",
            "media",
            temp,
        )
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        if self.prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{}/{key}", self.prefix))
        }
    }
}

fn object_error(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        other => StorageError::Object(other),
    }
}

impl MediaStorage for ObjectStorage {
    fn name(&self) -> &'static str {
        self.name
    }

    fn temp_dir(&self) -> &Path {
        &self.temp
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            match self.store.head(&self.path(key)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            if !self.exists(key).await? {
                let mut source = tokio::fs::File::open(file).await?;
                // Multipart upload in bounded parts; the object appears
                // only when the upload completes.
                let mut writer =
                    object_store::buffered::BufWriter::new(self.store.clone(), self.path(key));
                if let Err(e) = tokio::io::copy(&mut source, &mut writer).await {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
                writer.shutdown().await?;
            }
            tokio::fs::remove_file(file).await?;
            Ok(())
        })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            Ok(self
                .store
                .head(&self.path(key))
                .await
                .map_err(object_error)?
                .size)
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<ByteStream, StorageError>> {
        Box::pin(async move {
            let options = object_store::GetOptions {
                range: range.map(object_store::GetRange::Bounded),
                ..Default::default()
            };
            let result = self
                .store
                .get_opts(&self.path(key), options)
                .await
                .map_err(object_error)?;
            Ok(result.into_stream().map_err(std::io::Error::other).boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: ByteStream) -> Vec<u8> {
        s.try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await
        .unwrap()
    }

    /// The contract every backend keeps: put once, read whole and ranged,
    /// a second put of the same key keeps the object and removes the file.
    async fn contract(storage: &dyn MediaStorage) {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let key = super::super::content_key(&"ab".repeat(32));
        assert!(!storage.exists(&key).await.unwrap());
        assert!(matches!(
            storage.size(&key).await,
            Err(StorageError::NotFound)
        ));
        let temp = storage.temp_dir().join("download-1");
        std::fs::write(&temp, &bytes).unwrap();
        storage.put_file(&key, &temp).await.unwrap();
        assert!(!temp.exists(), "the temp file is consumed");
        assert!(storage.exists(&key).await.unwrap());
        assert_eq!(storage.size(&key).await.unwrap(), bytes.len() as u64);
        assert_eq!(
            collect(storage.read(&key, None).await.unwrap()).await,
            bytes
        );
        assert_eq!(
            collect(storage.read(&key, Some(10..1010)).await.unwrap()).await,
            bytes[10..1010]
        );
        // The same content again: kept once, the new temp file removed.
        let again = storage.temp_dir().join("download-2");
        std::fs::write(&again, &bytes).unwrap();
        storage.put_file(&key, &again).await.unwrap();
        assert!(!again.exists());
        assert_eq!(
            collect(storage.read(&key, None).await.unwrap()).await,
            bytes
        );
        assert!(matches!(
            storage.read("cd/missing", None).await.err(),
            Some(StorageError::NotFound)
        ));
    }

    #[tokio::test]
    async fn local_directory_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path().join("media")).unwrap();
        contract(&storage).await;
        // Content-addressed layout on disk.
        assert!(dir
            .path()
            .join("media")
            .join(super::super::content_key(&"ab".repeat(32)))
            .is_file());
    }

    #[tokio::test]
    async fn object_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(object_store::memory::InMemory::new());
        let storage =
            ObjectStorage::new(memory.clone(), "memory", "media/", dir.path().join("tmp")).unwrap();
        contract(&storage).await;
        // Under the prefix.
        let listed: Vec<_> = memory.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].location.as_ref().starts_with("media/ab/"));
    }

    #[test]
    fn leftover_temp_files_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("media");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("tmp/cut-short"), b"partial").unwrap();
        std::fs::write(root.join("tmp/in-progress"), b"partial").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(root.join("tmp/cut-short"))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        LocalStorage::new(root.clone()).unwrap();
        assert!(!root.join("tmp/cut-short").exists());
        assert!(
            root.join("tmp/in-progress").exists(),
            "another process's download"
        );
    }

    #[test]
    fn s3_needs_a_bucket_and_builds_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let mut media = test_media();
        media.storage = MediaStorageKind::S3(crate::config::S3Settings {
            bucket: "inlet-media".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            prefix: "media".into(),
            allow_http: true,
        });
        let storage = build(&media, dir.path()).unwrap();
        assert_eq!(storage.name(), "s3");
    }

    fn test_media() -> MediaSettings {
        let default =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml");
        let dir = tempfile::tempdir().unwrap();
        crate::config::Settings::load_from(
            Some(&default),
            [(
                "INLET_DATA_DIR".to_string(),
                dir.path().to_string_lossy().into_owned(),
            )],
        )
        .unwrap()
        .media
    }
}
