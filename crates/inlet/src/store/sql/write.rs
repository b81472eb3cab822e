//! Writes: the batch write (one transaction from a [`WritePlan`], with its
//! write events), logged events, dead letters, idempotency records, pruning.
//!
//! A batch is written in one transaction: raw events, contacts and
//! conversations (atomic upserts on unique keys, so concurrent deliveries
//! converge), messages and receipts (insert-or-ignore on provider ids), the
//! forward-only current status ([`SUPERSEDES`]), page changes, outbox entries
//! and `after` events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use super::{classify, fields_text, for_each_backend, Backend, SqlStore, CHUNK};
use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::events::{after_events, before_events, failed_events, Event, WriteResults};
use crate::model::Channel;
use crate::plan::{errors_json, ContactKey, ConversationKey, OutboxRow, StatusRow, WritePlan};
use crate::store::{StoreError, WriteReport};

/// SQL condition under which the incoming row (`excluded`) replaces the
/// current status (`message_status_current`): the same table as
/// [`crate::model::DeliveryStatus::supersedes`].
pub(crate) const SUPERSEDES: &str = "(excluded.status = 'read' AND message_status_current.status <> 'read') \
 OR (message_status_current.status <> 'read' AND ( \
   (excluded.status = 'failed' AND (message_status_current.status = 'sent' \
       OR (message_status_current.status = 'delivered' AND excluded.at >= message_status_current.at))) \
   OR (excluded.status = 'delivered' AND (message_status_current.status = 'sent' \
       OR (message_status_current.status = 'failed' AND excluded.at > message_status_current.at)))))";

/// Outbox entries for the cache-sync consumer: one per touched conversation,
/// plus the lists and the analytics summary.
fn cache_jobs(report: &WriteReport) -> Vec<OutboxRow> {
    let job = |key: String| OutboxRow {
        stream: crate::streams::CACHE_SYNC.to_string(),
        fields: std::collections::BTreeMap::from([("key".to_string(), key)]),
    };
    let mut jobs: Vec<_> = report
        .conversation_ids
        .iter()
        .map(|id| job(format!("conversation:{id}")))
        .collect();
    jobs.push(job("conversations".into()));
    if !report.contact_ids.is_empty() {
        jobs.push(job("contacts".into()));
    }
    jobs.push(job("summary".into()));
    jobs
}

fn channel_of(s: &str) -> Channel {
    Channel::parse(s).unwrap_or(Channel::Messenger)
}

/// Headers as stored: a JSON object.
pub(super) fn headers_json(event: &RawEvent) -> serde_json::Value {
    serde_json::Value::Object(
        event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

macro_rules! impl_writes {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// Writes a batch and emits its events: `before` (in process),
            /// `after` (inside the transaction, see `write_plan`), `failed`
            /// (own transaction, else in process). The one place write events
            /// are emitted.
            pub(super) async fn write_batch(&self, plan: &WritePlan) -> Result<WriteReport, StoreError> {
                if let Some(sink) = self.sink.get() {
                    let before = before_events(plan, &self.filter);
                    if !before.is_empty() {
                        sink.emit(before);
                    }
                }
                match self.write_plan(plan).await {
                    Ok(report) => Ok(report),
                    Err(e) => {
                        let failed = failed_events(plan, &self.filter, &e.to_string());
                        // An unreachable database cannot log them either:
                        // hand them to the in-process bus at once.
                        let logged = if e.is_transient() {
                            Err(StoreError::Unavailable("database unreachable".into()))
                        } else {
                            self.append_events(&failed).await
                        };
                        if let Err(log_err) = logged {
                            tracing::warn!(error = %log_err, "could not log failed events; delivering in process");
                            if let Some(sink) = self.sink.get() {
                                sink.emit(failed);
                            }
                        }
                        Err(e)
                    }
                }
            }

            /// Writes one plan in one transaction.
            async fn write_plan(&self, plan: &WritePlan) -> Result<WriteReport, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let now = Utc::now();
                let mut report = WriteReport::default();
                let mut results = WriteResults::default();
                let mut tx = self.pool.begin().await.map_err(classify)?;

                if !plan.tenants.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO tenants (name, created_at) ");
                    qb.push_values(&plan.tenants, |mut b, t| {
                        b.push_bind(t).push_bind(now);
                    });
                    qb.push(" ON CONFLICT (name) DO NOTHING");
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                }

                for chunk in plan.raw.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO raw_events (trace_id, tenant, source, received_at, headers, body, stored_at) ",
                    );
                    qb.push_values(chunk, |mut b, ev| {
                        b.push_bind(ev.trace_id.to_string())
                            .push_bind(&ev.tenant)
                            .push_bind(ev.source.as_str())
                            .push_bind(ev.received_at)
                            .push_bind(Json(headers_json(ev)))
                            .push_bind(ev.body.as_ref())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (trace_id) DO NOTHING");
                    report.raw_new += qb.build().execute(&mut *tx).await.map_err(classify)?.rows_affected();
                }

                let mut contact_ids: HashMap<ContactKey, i64> = HashMap::new();
                for chunk in plan.contacts.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO contacts (tenant, channel, external_id, name, first_seen_at, last_seen_at) ",
                    );
                    qb.push_values(chunk, |mut b, c| {
                        b.push_bind(&c.key.0)
                            .push_bind(c.key.1.as_str())
                            .push_bind(&c.key.2)
                            .push_bind(&c.name)
                            .push_bind(c.first_seen)
                            .push_bind(c.last_seen);
                    });
                    qb.push(format!(
                        " ON CONFLICT (tenant, channel, external_id) DO UPDATE SET \
                         name = COALESCE(excluded.name, contacts.name), \
                         first_seen_at = {least}(contacts.first_seen_at, excluded.first_seen_at), \
                         last_seen_at = {greatest}(contacts.last_seen_at, excluded.last_seen_at) \
                         RETURNING id, tenant, channel, external_id",
                        least = d.least,
                        greatest = d.greatest,
                    ));
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        let key: ContactKey = (
                            row.try_get("tenant").map_err(classify)?,
                            channel_of(row.try_get::<&str, _>("channel").map_err(classify)?),
                            row.try_get("external_id").map_err(classify)?,
                        );
                        let id: i64 = row.try_get("id").map_err(classify)?;
                        results
                            .contacts
                            .insert((key.0.clone(), key.1.as_str().to_string(), key.2.clone()), id);
                        contact_ids.insert(key, id);
                    }
                }
                report.contact_ids = contact_ids.values().copied().collect();
                report.contact_ids.sort_unstable();

                let contact_id = |key: &ContactKey| -> Result<i64, StoreError> {
                    contact_ids
                        .get(key)
                        .copied()
                        .ok_or_else(|| StoreError::Rejected(format!("contact {key:?} missing after upsert")))
                };
                let mut conversation_ids: HashMap<ConversationKey, i64> = HashMap::new();
                for chunk in plan.conversations.chunks(CHUNK) {
                    let ids = chunk
                        .iter()
                        .map(|c| contact_id(&c.key.3))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO conversations (tenant, channel, business_id, contact_id, started_at, last_message_at) ",
                    );
                    qb.push_values(chunk.iter().zip(&ids), |mut b, (c, id)| {
                        b.push_bind(&c.key.0)
                            .push_bind(c.key.1.as_str())
                            .push_bind(&c.key.2)
                            .push_bind(*id)
                            .push_bind(c.started)
                            .push_bind(c.last);
                    });
                    qb.push(format!(
                        " ON CONFLICT (tenant, channel, business_id, contact_id) DO UPDATE SET \
                         started_at = {least}(conversations.started_at, excluded.started_at), \
                         last_message_at = {greatest}(conversations.last_message_at, excluded.last_message_at) \
                         RETURNING id, contact_id, business_id",
                        least = d.least,
                        greatest = d.greatest,
                    ));
                    let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                    let by_contact: HashMap<(i64, String), i64> = rows
                        .iter()
                        .map(|r| {
                            Ok::<_, sqlx::Error>((
                                (r.try_get("contact_id")?, r.try_get("business_id")?),
                                r.try_get("id")?,
                            ))
                        })
                        .collect::<Result<_, _>>()
                        .map_err(classify)?;
                    for (c, cid) in chunk.iter().zip(&ids) {
                        if let Some(id) = by_contact.get(&(*cid, c.key.2.clone())) {
                            conversation_ids.insert(c.key.clone(), *id);
                            results.conversations.insert(
                                (c.key.0.clone(), c.key.1.as_str().to_string(), c.key.2.clone(), *cid),
                                *id,
                            );
                        }
                    }
                }
                report.conversation_ids = conversation_ids.values().copied().collect();
                report.conversation_ids.sort_unstable();

                for chunk in plan.messages.chunks(CHUNK) {
                    let ids = chunk
                        .iter()
                        .map(|m| {
                            let conv = conversation_ids.get(&m.conversation).copied().ok_or_else(|| {
                                StoreError::Rejected("conversation missing after upsert".into())
                            })?;
                            Ok((conv, contact_id(&m.conversation.3)?))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO messages (tenant, channel, conversation_id, contact_id, provider_message_id, \
                         direction, kind, message_type, text, media, reply_to, forwarded, referral, details, \
                         sent_at, trace_id, stored_at) ",
                    );
                    qb.push_values(chunk.iter().zip(&ids), |mut b, (row, (conv, contact))| {
                        let m = &row.message;
                        b.push_bind(&row.tenant)
                            .push_bind(m.channel.as_str())
                            .push_bind(*conv)
                            .push_bind(*contact)
                            .push_bind(&m.provider_message_id)
                            .push_bind(m.direction.as_str())
                            .push_bind(&m.kind)
                            .push_bind(&m.message_type)
                            .push_bind(&m.text)
                            .push_bind(Json(&m.media))
                            .push_bind(&m.reply_to)
                            .push_bind(m.forwarded)
                            .push_bind(m.referral.as_ref().map(Json))
                            .push_bind(Json(&m.details))
                            .push_bind(m.sent_at)
                            .push_bind(row.trace_id.to_string())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, channel, provider_message_id) DO NOTHING \
                              RETURNING tenant, channel, provider_message_id");
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        report.messages_new += 1;
                        results.new_messages.insert((
                            row.try_get("tenant").map_err(classify)?,
                            row.try_get("channel").map_err(classify)?,
                            row.try_get("provider_message_id").map_err(classify)?,
                        ));
                    }
                }

                for chunk in plan.statuses.chunks(CHUNK).chain(plan.watermarks.chunks(CHUNK)) {
                    for key in self.insert_status_history(&mut tx, chunk, now).await? {
                        report.statuses_new += 1;
                        results.new_statuses.insert(key);
                    }
                }

                for chunk in plan.current.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO message_status_current (tenant, channel, provider_message_id, status, at, errors, updated_at) ",
                    );
                    qb.push_values(chunk, |mut b, c| {
                        b.push_bind(&c.tenant)
                            .push_bind(c.channel.as_str())
                            .push_bind(&c.provider_message_id)
                            .push_bind(c.status.as_str())
                            .push_bind(c.at)
                            .push_bind(Json(errors_json(&c.errors)))
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, channel, provider_message_id) DO UPDATE SET \
                              status = excluded.status, at = excluded.at, errors = excluded.errors, \
                              updated_at = excluded.updated_at WHERE ");
                    qb.push(SUPERSEDES);
                    qb.push(" RETURNING tenant, channel, provider_message_id, status");
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        results.current_changed.insert(
                            (
                                row.try_get("tenant").map_err(classify)?,
                                row.try_get("channel").map_err(classify)?,
                                row.try_get("provider_message_id").map_err(classify)?,
                            ),
                            row.try_get("status").map_err(classify)?,
                        );
                    }
                }

                // Watermark receipts: every outbound message of that contact
                // on that business endpoint sent up to the watermark.
                for w in &plan.watermarks {
                    let s = &w.status;
                    let watermark = s.watermark.unwrap_or(s.at);
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO message_status_current (tenant, channel, provider_message_id, status, at, errors, updated_at) \
                         SELECT m.tenant, m.channel, m.provider_message_id, ",
                    );
                    qb.push_bind(s.status.as_str())
                        .push(", ")
                        .push_bind(s.at)
                        .push(", ")
                        .push_bind(Json(errors_json(&s.errors)))
                        .push(", ")
                        .push_bind(now)
                        .push(" FROM messages m JOIN contacts c ON c.id = m.contact_id \
                                JOIN conversations v ON v.id = m.conversation_id WHERE m.tenant = ")
                        .push_bind(&w.tenant)
                        .push(" AND m.channel = ")
                        .push_bind(s.channel.as_str())
                        .push(" AND c.external_id = ")
                        .push_bind(&s.contact.external_id)
                        .push(" AND v.business_id = ")
                        .push_bind(&s.business_id)
                        .push(" AND m.direction = 'outbound' AND m.sent_at <= ")
                        .push_bind(watermark)
                        .push(" ON CONFLICT (tenant, channel, provider_message_id) DO UPDATE SET \
                                status = excluded.status, at = excluded.at, errors = excluded.errors, \
                                updated_at = excluded.updated_at WHERE ")
                        .push(SUPERSEDES);
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                }

                for chunk in plan.changes.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO page_changes (tenant, channel, change_key, account_id, field, kind, verb, \
                         external_id, from_id, from_name, text, occurred_at, value, trace_id, stored_at) ",
                    );
                    qb.push_values(chunk, |mut b, row| {
                        let c = &row.change;
                        b.push_bind(&row.tenant)
                            .push_bind(c.channel.as_str())
                            .push_bind(&row.key)
                            .push_bind(&c.account_id)
                            .push_bind(&c.field)
                            .push_bind(&c.kind)
                            .push_bind(&c.verb)
                            .push_bind(&c.external_id)
                            .push_bind(c.from.as_ref().map(|f| f.external_id.clone()))
                            .push_bind(c.from.as_ref().and_then(|f| f.name.clone()))
                            .push_bind(&c.text)
                            .push_bind(c.occurred_at)
                            .push_bind(Json(&c.value))
                            .push_bind(row.trace_id.to_string())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, change_key) DO NOTHING RETURNING tenant, change_key");
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        report.changes_new += 1;
                        results.new_changes.insert((
                            row.try_get("tenant").map_err(classify)?,
                            row.try_get("change_key").map_err(classify)?,
                        ));
                    }
                }

                // Cache jobs name what changed; written with the data, so a
                // crash between commit and publish cannot lose them.
                let mut outbox = plan.outbox.clone();
                if !plan.raw.is_empty() {
                    outbox.extend(cache_jobs(&report));
                }
                // `after` events: appended to the log in this transaction; the
                // relay publishes them from the log by its cursor.
                let events = after_events(plan, &results, &self.filter);
                Self::log_events(&mut tx, &events).await?;
                for chunk in outbox.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) ");
                    qb.push_values(chunk, |mut b, o| {
                        b.push_bind(&o.stream)
                            .push_bind(fields_text(&o.fields))
                            .push_bind(now);
                    });
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                }

                tx.commit().await.map_err(classify)?;
                Ok(report)
            }

            async fn insert_status_history(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                rows: &[StatusRow],
                now: DateTime<Utc>,
            ) -> Result<Vec<(String, String)>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO message_statuses (tenant, channel, status_key, business_id, provider_message_id, \
                     contact_external_id, status, at, watermark, errors, conversation, pricing, trace_id, stored_at) ",
                );
                qb.push_values(rows, |mut b, row| {
                    let s = &row.status;
                    b.push_bind(&row.tenant)
                        .push_bind(s.channel.as_str())
                        .push_bind(&row.key)
                        .push_bind(&s.business_id)
                        .push_bind(&s.provider_message_id)
                        .push_bind(&s.contact.external_id)
                        .push_bind(s.status.as_str())
                        .push_bind(s.at)
                        .push_bind(s.watermark)
                        .push_bind(Json(errors_json(&s.errors)))
                        .push_bind(s.conversation.as_ref().map(Json))
                        .push_bind(s.pricing.as_ref().map(Json))
                        .push_bind(row.trace_id.to_string())
                        .push_bind(now);
                });
                qb.push(" ON CONFLICT (tenant, status_key) DO NOTHING RETURNING tenant, status_key");
                qb.build()
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(classify)?
                    .iter()
                    .map(|r| Ok((r.try_get("tenant")?, r.try_get("status_key")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(classify)
            }

            /// Appends events to `event_log` (ignoring ids already there).
            /// The relay publishes them from there (see `log_claim`).
            async fn log_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[Event],
            ) -> Result<(), StoreError> {
                for chunk in events.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO event_log (event_id, event_type, entity, phase, operation, tenant, trace_id, \
                         correlation_id, actor, data, result, error, schema_version, occurred_at) ",
                    );
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.id.to_string())
                            .push_bind(&e.event_type)
                            .push_bind(&e.entity)
                            .push_bind(&e.phase)
                            .push_bind(&e.operation)
                            .push_bind(&e.tenant_id)
                            .push_bind(&e.trace_id)
                            .push_bind(&e.correlation_id)
                            .push_bind(&e.actor)
                            .push_bind(Json(&e.data))
                            .push_bind(e.result.as_ref().map(Json))
                            .push_bind(&e.error)
                            .push_bind(e.schema_version)
                            .push_bind(e.timestamp);
                    });
                    qb.push(" ON CONFLICT (event_id) DO NOTHING");
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                Ok(())
            }

            /// Logs events in a transaction of their own (failed writes,
            /// subscription changes); the relay publishes them from the log.
            pub async fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await.map_err(classify)?;
                Self::log_events(&mut tx, events).await?;
                tx.commit().await.map_err(classify)
            }

            /// Logs one event (a subscription change, …), honouring the
            /// event filter.
            pub(super) async fn log_one(&self, event: &Event) -> Result<(), StoreError> {
                if !self.filter.allows(&event.entity) {
                    return Ok(());
                }
                self.append_events(std::slice::from_ref(event)).await
            }

            pub(super) async fn insert_dead_letter(&self, l: &DeadLetter) -> Result<i64, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO dead_letters (trace_id, tenant, source, received_at, headers, body, reason, \
                     error, attempts, stage, failed_at) ",
                );
                qb.push_values([l], |mut b, l| {
                    b.push_bind(l.event.trace_id.to_string())
                        .push_bind(&l.event.tenant)
                        .push_bind(l.event.source.as_str())
                        .push_bind(l.event.received_at)
                        .push_bind(Json(headers_json(&l.event)))
                        .push_bind(l.event.body.as_ref())
                        .push_bind(&l.reason)
                        .push_bind(&l.error)
                        .push_bind(i64::from(l.attempts))
                        .push_bind(&l.stage)
                        .push_bind(l.failed_at);
                });
                qb.push(" RETURNING id");
                let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                row.try_get("id").map_err(classify)
            }

            pub(super) async fn remove_dead_letters(&self, ids: &[i64]) -> Result<u64, StoreError> {
                if ids.is_empty() {
                    return Ok(0);
                }
                let mut qb = QueryBuilder::<$db>::new("DELETE FROM dead_letters WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(*id);
                }
                qb.push(")");
                Ok(qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected())
            }

            pub(super) async fn delete_older(
                &self,
                raw_before: Option<DateTime<Utc>>,
                processed_before: Option<DateTime<Utc>>,
            ) -> Result<(u64, u64), StoreError> {
                let mut raw = 0;
                if let Some(before) = raw_before {
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM raw_events WHERE received_at < ");
                    qb.push_bind(before);
                    raw = qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                }
                let mut processed = 0;
                if let Some(before) = processed_before {
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM processed_events WHERE processed_at < ");
                    qb.push_bind(before);
                    processed = qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                }
                Ok((raw, processed))
            }

            pub(super) async fn insert_processed(&self, event_id: &str, handler: &str) -> Result<bool, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO processed_events (event_id, handler, processed_at) VALUES (",
                );
                qb.push_bind(event_id)
                    .push(", ")
                    .push_bind(handler)
                    .push(", ")
                    .push_bind(Utc::now())
                    .push(") ON CONFLICT (event_id, handler) DO NOTHING");
                let n = qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                Ok(n > 0)
            }
        }
    };
}

for_each_backend!(impl_writes);
