//! Who runs media jobs (`media.concurrency` at a time, so large downloads
//! never hold up the text pipeline): [`MediaConsumer`] in every worker
//! (the `media` group on `{prefix}media.processing`) and [`LocalMediaSink`]
//! in a direct-mode gateway, both the shared job runners of [`crate::jobs`]
//! driving a [`MediaFetcher`]. Pending attachments whose jobs died with a
//! previous process are resumed at start (the `pending` rows are the
//! durable record).

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::fetch::{JobOutcome, MediaFetcher};
use super::MediaJob;
use crate::jobs::{JobConsumer, JobRunner, LocalJobSink};
use crate::store::StoreError;
use crate::streams::{MEDIA_GROUP, MEDIA_PROCESSING};

/// The queue-mode media consumer of one worker.
pub type MediaConsumer = JobConsumer<MediaFetcher>;

/// Direct mode: runs the `media.processing` outbox entries in-process, at
/// most `media.concurrency` at once, each attachment once at a time.
pub type LocalMediaSink = LocalJobSink<MediaFetcher>;

impl JobRunner for MediaFetcher {
    type Job = MediaJob;
    type Key = (i64, i32);
    const STREAM: &'static str = MEDIA_PROCESSING;
    const GROUP: &'static str = MEDIA_GROUP;
    const WHAT: &'static str = "media";

    fn parse<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<MediaJob> {
        MediaJob::from_fields(fields)
    }

    fn key(job: &MediaJob) -> (i64, i32) {
        (job.message_id, job.index)
    }

    fn run<'a>(
        &'a self,
        job: &'a MediaJob,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.run_job(job, shutdown).await? != JobOutcome::Interrupted) })
    }

    fn pending(&self, limit: i64) -> BoxFuture<'_, Result<Vec<MediaJob>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .store()
                .media()
                .pending_media(limit)
                .await?
                .into_iter()
                .map(|(message_id, index)| MediaJob {
                    message_id,
                    index,
                    tenant: String::new(),
                })
                .collect())
        })
    }
}
