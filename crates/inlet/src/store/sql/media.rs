//! The media tables (see [`crate::store::media`]): download state per
//! attachment, queued with its message; outcomes with their cache job;
//! the outbound upload cache.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use super::{classify, fields_text, for_each_backend, SqlStore, CHUNK};
use crate::model::{Direction, MediaRef};
use crate::plan::{MessageRow, OutboxRow};
use crate::store::media::{
    media_job, state, MediaOutcome, MediaRecord, MediaStore, MediaTarget, Upload,
};
use crate::store::StoreError;

const RECORD_COLUMNS: &str =
    "message_id, idx, tenant, state, kind, sha256, bytes, mime_type, reason, \
 error, attempts, updated_ms";

/// The attachments of newly stored inbound messages that the media
/// pipeline downloads: (message id, index, tenant, kind). `new_ids` maps
/// (tenant, channel, provider id) of the messages this write inserted to
/// their row ids; redelivered messages are not in it, so they queue
/// nothing.
pub(super) fn downloads<'a>(
    messages: &'a [MessageRow],
    new_ids: &'a HashMap<(String, String, String), i64>,
) -> Vec<(i64, i32, &'a str, &'a str)> {
    let mut out = Vec::new();
    for row in messages {
        let m = &row.message;
        if m.direction != Direction::Inbound {
            continue;
        }
        let key = (
            row.tenant.clone(),
            m.channel.as_str().to_string(),
            m.provider_message_id.clone(),
        );
        let Some(&id) = new_ids.get(&key) else {
            continue;
        };
        for (i, media) in m.media.iter().enumerate() {
            if media.is_downloadable() {
                out.push((id, i as i32, row.tenant.as_str(), media.kind.as_str()));
            }
        }
    }
    out
}

macro_rules! impl_media {
    ($db:ty) => {
        impl SqlStore<$db> {
            fn media_record_of(r: &<$db as sqlx::Database>::Row) -> Result<MediaRecord, sqlx::Error> {
                Ok(MediaRecord {
                    message_id: r.try_get("message_id")?,
                    index: r.try_get("idx")?,
                    tenant: r.try_get("tenant")?,
                    state: r.try_get("state")?,
                    kind: r.try_get("kind")?,
                    sha256: r.try_get("sha256")?,
                    bytes: r.try_get("bytes")?,
                    mime_type: r.try_get("mime_type")?,
                    reason: r.try_get("reason")?,
                    error: r.try_get("error")?,
                    attempts: r.try_get("attempts")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            }

            /// Inserts the `pending` rows of new inbound attachments inside
            /// the batch's transaction; returns their jobs for the outbox.
            pub(super) async fn queue_media_jobs(
                tx: &mut sqlx::Transaction<'_, $db>,
                messages: &[MessageRow],
                new_ids: &HashMap<(String, String, String), i64>,
                now: DateTime<Utc>,
            ) -> Result<Vec<OutboxRow>, StoreError> {
                let rows = downloads(messages, new_ids);
                let now_ms = now.timestamp_millis();
                for chunk in rows.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO message_media (message_id, idx, tenant, state, kind, attempts, created_ms, updated_ms) ",
                    );
                    qb.push_values(chunk, |mut b, (id, idx, tenant, kind)| {
                        b.push_bind(*id)
                            .push_bind(*idx)
                            .push_bind(*tenant)
                            .push_bind(state::PENDING)
                            .push_bind(*kind)
                            .push_bind(0i32)
                            .push_bind(now_ms)
                            .push_bind(now_ms);
                    });
                    qb.push(" ON CONFLICT (message_id, idx) DO NOTHING");
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                Ok(rows
                    .iter()
                    .map(|(id, idx, tenant, _)| media_job(*id, *idx, tenant))
                    .collect())
            }

            async fn insert_outbox(
                tx: &mut sqlx::Transaction<'_, $db>,
                rows: &[OutboxRow],
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) ");
                qb.push_values(rows, |mut b, o| {
                    b.push_bind(&o.stream)
                        .push_bind(fields_text(&o.fields))
                        .push_bind(now);
                });
                qb.build().execute(&mut **tx).await.map_err(classify)?;
                Ok(())
            }
        }

        impl MediaStore for SqlStore<$db> {
            fn media_target(
                &self,
                message_id: i64,
                index: i32,
            ) -> BoxFuture<'_, Result<Option<MediaTarget>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT m.id, m.tenant, m.channel, v.business_id, m.media, a.state, a.attempts \
                         FROM message_media a JOIN messages m ON m.id = a.message_id \
                         JOIN conversations v ON v.id = m.conversation_id WHERE a.message_id = ",
                    );
                    qb.push_bind(message_id).push(" AND a.idx = ").push_bind(index);
                    let Some(r) = qb.build().fetch_optional(&self.pool).await.map_err(classify)? else {
                        return Ok(None);
                    };
                    let media: Json<Vec<MediaRef>> = r.try_get("media").map_err(classify)?;
                    let Some(media) = media.0.into_iter().nth(index.max(0) as usize) else {
                        return Err(StoreError::Rejected(format!(
                            "message {message_id} has no media at index {index}"
                        )));
                    };
                    Ok(Some(MediaTarget {
                        message_id,
                        index,
                        tenant: r.try_get("tenant").map_err(classify)?,
                        channel: r.try_get("channel").map_err(classify)?,
                        business_id: r.try_get("business_id").map_err(classify)?,
                        media,
                        state: r.try_get("state").map_err(classify)?,
                        attempts: r.try_get("attempts").map_err(classify)?,
                    }))
                })
            }

            fn media_record(
                &self,
                message_id: i64,
                index: i32,
            ) -> BoxFuture<'_, Result<Option<MediaRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "SELECT {RECORD_COLUMNS} FROM message_media WHERE message_id = "
                    ));
                    qb.push_bind(message_id).push(" AND idx = ").push_bind(index);
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.map(|r| Self::media_record_of(&r)).transpose().map_err(classify)
                })
            }

            fn record_media(
                &self,
                message_id: i64,
                index: i32,
                outcome: MediaOutcome,
                now_ms: i64,
            ) -> BoxFuture<'_, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE message_media SET updated_ms = ");
                    qb.push_bind(now_ms);
                    match &outcome {
                        MediaOutcome::Stored { sha256, bytes, mime_type } => {
                            qb.push(", state = ")
                                .push_bind(state::STORED)
                                .push(", sha256 = ")
                                .push_bind(sha256)
                                .push(", bytes = ")
                                .push_bind(*bytes)
                                .push(", mime_type = ")
                                .push_bind(mime_type)
                                .push(", reason = NULL, error = NULL, attempts = attempts + 1");
                        }
                        MediaOutcome::Failed { reason, error } | MediaOutcome::DeadLettered { reason, error } => {
                            let st = if matches!(outcome, MediaOutcome::Failed { .. }) {
                                state::FAILED
                            } else {
                                state::DEAD_LETTERED
                            };
                            qb.push(", state = ")
                                .push_bind(st)
                                .push(", reason = ")
                                .push_bind(reason)
                                .push(", error = ")
                                .push_bind(error)
                                .push(", attempts = attempts + 1");
                        }
                        MediaOutcome::Retrying { error } => {
                            qb.push(", error = ")
                                .push_bind(error)
                                .push(", attempts = attempts + 1");
                        }
                    }
                    qb.push(" WHERE message_id = ")
                        .push_bind(message_id)
                        .push(" AND idx = ")
                        .push_bind(index)
                        .push(" AND state = ")
                        .push_bind(state::PENDING);
                    let changed = qb.build().execute(&mut *tx).await.map_err(classify)?.rows_affected() > 0;
                    if changed && !matches!(outcome, MediaOutcome::Retrying { .. }) {
                        // The conversation file shows the media state.
                        let mut qb = QueryBuilder::<$db>::new("SELECT conversation_id FROM messages WHERE id = ");
                        qb.push_bind(message_id);
                        if let Some(r) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? {
                            let conversation: i64 = r.try_get("conversation_id").map_err(classify)?;
                            let job = OutboxRow {
                                stream: crate::streams::CACHE_SYNC.to_string(),
                                fields: BTreeMap::from([(
                                    "key".to_string(),
                                    format!("conversation:{conversation}"),
                                )]),
                            };
                            Self::insert_outbox(&mut tx, &[job], Utc::now()).await?;
                        }
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(changed)
                })
            }

            fn pending_media(&self, limit: i64) -> BoxFuture<'_, Result<Vec<(i64, i32)>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT message_id, idx FROM message_media WHERE state = ");
                    qb.push_bind(state::PENDING)
                        .push(" ORDER BY updated_ms, message_id, idx LIMIT ")
                        .push_bind(limit);
                    qb.build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?
                        .iter()
                        .map(|r| Ok((r.try_get("message_id")?, r.try_get("idx")?)))
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn dead_media(&self, limit: i64) -> BoxFuture<'_, Result<Vec<MediaRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "SELECT {RECORD_COLUMNS} FROM message_media WHERE state = "
                    ));
                    qb.push_bind(state::DEAD_LETTERED)
                        .push(" ORDER BY updated_ms, message_id, idx LIMIT ")
                        .push_bind(limit);
                    qb.build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?
                        .iter()
                        .map(Self::media_record_of)
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn requeue_media(
                &self,
                message_id: i64,
                index: i32,
                now_ms: i64,
            ) -> BoxFuture<'_, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE message_media SET state = ");
                    qb.push_bind(state::PENDING)
                        .push(", attempts = 0, reason = NULL, error = NULL, updated_ms = ")
                        .push_bind(now_ms)
                        .push(" WHERE message_id = ")
                        .push_bind(message_id)
                        .push(" AND idx = ")
                        .push_bind(index)
                        .push(" AND state IN (")
                        .push_bind(state::FAILED)
                        .push(", ")
                        .push_bind(state::DEAD_LETTERED)
                        .push(") RETURNING tenant");
                    let row = qb.build().fetch_optional(&mut *tx).await.map_err(classify)?;
                    let Some(row) = row else {
                        return Ok(false);
                    };
                    let tenant: String = row.try_get("tenant").map_err(classify)?;
                    Self::insert_outbox(&mut tx, &[media_job(message_id, index, &tenant)], Utc::now()).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                })
            }

            fn discard_dead_media<'a>(
                &'a self,
                ids: &'a [(i64, i32)],
                now_ms: i64,
            ) -> BoxFuture<'a, Result<u64, StoreError>> {
                Box::pin(async move {
                    let mut n = 0;
                    for (message_id, index) in ids {
                        let mut qb = QueryBuilder::<$db>::new("UPDATE message_media SET state = ");
                        qb.push_bind(state::FAILED)
                            .push(", reason = 'discarded', updated_ms = ")
                            .push_bind(now_ms)
                            .push(" WHERE message_id = ")
                            .push_bind(*message_id)
                            .push(" AND idx = ")
                            .push_bind(*index)
                            .push(" AND state = ")
                            .push_bind(state::DEAD_LETTERED);
                        n += qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                    }
                    Ok(n)
                })
            }

            fn cached_upload<'a>(
                &'a self,
                sender: &'a str,
                sha256: &'a str,
                not_before_ms: i64,
            ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT media_id FROM media_uploads WHERE sender = ");
                    qb.push_bind(sender)
                        .push(" AND sha256 = ")
                        .push_bind(sha256)
                        .push(" AND uploaded_ms >= ")
                        .push_bind(not_before_ms);
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.map(|r| r.try_get("media_id")).transpose().map_err(classify)
                })
            }

            fn remember_upload<'a>(&'a self, u: &'a Upload) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO media_uploads (sender, sha256, media_id, mime_type, bytes, uploaded_ms) ",
                    );
                    qb.push_values([u], |mut b, u| {
                        b.push_bind(&u.sender)
                            .push_bind(&u.sha256)
                            .push_bind(&u.media_id)
                            .push_bind(&u.mime_type)
                            .push_bind(u.bytes)
                            .push_bind(u.uploaded_ms);
                    });
                    qb.push(" ON CONFLICT (sender, sha256) DO UPDATE SET media_id = excluded.media_id, \
                              mime_type = excluded.mime_type, bytes = excluded.bytes, uploaded_ms = excluded.uploaded_ms");
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(())
                })
            }
        }
    };
}

for_each_backend!(impl_media);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::WritePlan;

    fn plan(names: &[&str]) -> WritePlan {
        super::super::fixture_plan(crate::envelope::Source::Whatsapp, names)
    }

    fn all_new(plan: &WritePlan) -> HashMap<(String, String, String), i64> {
        plan.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    (
                        m.tenant.clone(),
                        m.message.channel.as_str().to_string(),
                        m.message.provider_message_id.clone(),
                    ),
                    i as i64 + 1,
                )
            })
            .collect()
    }

    #[test]
    fn new_inbound_attachments_get_jobs_and_nothing_else_does() {
        let p = plan(&[
            "wa_image.json",
            "wa_text.json",
            "wa_sticker.json",
            "fb_message_attachment.json",
            "fb_echo.json",
        ]);
        let new = all_new(&p);
        let jobs = downloads(&p.messages, &new);
        let kinds: Vec<&str> = jobs.iter().map(|j| j.3).collect();
        assert!(kinds.contains(&"image"));
        assert!(kinds.contains(&"sticker"));
        assert!(kinds.contains(&"file"), "Messenger attachments: {kinds:?}");
        assert!(
            jobs.iter().all(
                |(id, _, _, _)| p.messages[(*id - 1) as usize].message.direction
                    == Direction::Inbound
            ),
            "echoes of the business's own messages are not downloaded"
        );
        // A redelivery inserts nothing new: no job.
        assert!(downloads(&p.messages, &HashMap::new()).is_empty());
    }
}
