//! Writes: the batch write (one transaction from a [`WritePlan`], with its
//! write events), logged events, dead letters, idempotency records, pruning.
//!
//! A batch is written in one transaction: raw events, contacts and
//! conversations (atomic upserts on unique keys, so concurrent deliveries
//! converge), messages and receipts (insert-or-ignore on provider ids; on
//! Postgres the key tables of migration 0015 hold those keys across time
//! partitions, so a redelivery months later is still ignored), the
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
use crate::model::DeliveryStatus;
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

/// The newest inbound message this write stored in each conversation:
/// (conversation id, sent at in epoch ms, provider id). Redeliveries (rows
/// that existed) are not new.
fn newer_inbound(
    plan: &WritePlan,
    results: &WriteResults,
    conversation_ids: &HashMap<ConversationKey, i64>,
) -> Vec<(i64, i64, String)> {
    let mut newest: HashMap<i64, (i64, String)> = HashMap::new();
    for m in &plan.messages {
        let msg = &m.message;
        if msg.direction != crate::model::Direction::Inbound {
            continue;
        }
        let key = (
            m.tenant.clone(),
            msg.channel.as_str().to_string(),
            msg.provider_message_id.clone(),
        );
        let Some(conv) = conversation_ids.get(&m.conversation) else {
            continue;
        };
        if !results.new_messages.contains(&key) {
            continue;
        }
        let sent = msg.sent_at.timestamp_millis();
        let slot = newest.entry(*conv).or_insert((sent, key.2.clone()));
        if sent > slot.0 {
            *slot = (sent, key.2);
        }
    }
    let mut out: Vec<_> = newest.into_iter().map(|(c, (t, p))| (c, t, p)).collect();
    out.sort_unstable();
    out
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
                let mut tx = self.pool.begin().await.map_err(classify)?;
                let report = self.write_plan_in(&mut tx, plan).await?;
                tx.commit().await.map_err(classify)?;
                Ok(report)
            }

            /// Writes one plan inside a transaction the caller commits.
            pub(super) async fn write_plan_in(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                plan: &WritePlan,
            ) -> Result<WriteReport, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let now = Utc::now();
                let mut report = WriteReport::default();
                let mut results = WriteResults::default();

                if !plan.tenants.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO tenants (name, created_at) ");
                    qb.push_values(&plan.tenants, |mut b, t| {
                        b.push_bind(t).push_bind(now);
                    });
                    qb.push(" ON CONFLICT (name) DO NOTHING");
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
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
                    // No conflict target: on Postgres the key of a partitioned table
                    // includes its partition key (trace_id, received_at), and
                    // messages, receipts and events are deduplicated across
                    // partitions by their key tables (migration 0015).
                    qb.push(" ON CONFLICT DO NOTHING");
                    report.raw_new += qb.build().execute(&mut **tx).await.map_err(classify)?.rows_affected();
                }

                let mut merged_away = Vec::new();
                let contact_ids = self.write_contacts(tx, plan, &mut results, &mut merged_away).await?;
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
                        "INSERT INTO conversations (tenant, channel, business_id, contact_id, started_at, last_message_at, \
                         group_id, subject, subject_at) ",
                    );
                    qb.push_values(chunk.iter().zip(&ids), |mut b, (c, id)| {
                        b.push_bind(&c.key.0)
                            .push_bind(c.key.1.as_str())
                            .push_bind(&c.key.2)
                            .push_bind(*id)
                            .push_bind(c.started)
                            .push_bind(c.last)
                            .push_bind(&c.group_id)
                            .push_bind(c.subject.as_ref().map(|(s, _)| s.clone()))
                            .push_bind(c.subject.as_ref().map(|(_, at)| *at));
                    });
                    // A group's subject: the one set last (by its change's
                    // time), whatever order the changes arrive in.
                    let newer_subject = "excluded.subject_at IS NOT NULL AND (conversations.subject_at IS NULL \
                         OR excluded.subject_at >= conversations.subject_at)";
                    qb.push(format!(
                        " ON CONFLICT (tenant, channel, business_id, contact_id) DO UPDATE SET \
                         started_at = {least}(conversations.started_at, excluded.started_at), \
                         last_message_at = {greatest}(conversations.last_message_at, excluded.last_message_at), \
                         group_id = COALESCE(conversations.group_id, excluded.group_id), \
                         subject = CASE WHEN {newer_subject} THEN excluded.subject ELSE conversations.subject END, \
                         subject_at = CASE WHEN {newer_subject} THEN excluded.subject_at ELSE conversations.subject_at END \
                         RETURNING id, contact_id, business_id",
                        least = d.least,
                        greatest = d.greatest,
                    ));
                    let rows = qb.build().fetch_all(&mut **tx).await.map_err(classify)?;
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
                // Conversation files show their contact: a contact written
                // without a conversation of this plan (an address-book name,
                // a BSUID change, a merge) touches its conversations too,
                // and a conversation folded into another by a merge is gone.
                let covered: std::collections::HashSet<i64> =
                    plan.conversations.iter().filter_map(|c| contact_ids.get(&c.key.3).copied()).collect();
                let uncovered: Vec<i64> =
                    report.contact_ids.iter().copied().filter(|id| !covered.contains(id)).collect();
                for chunk in uncovered.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new("SELECT id FROM conversations WHERE contact_id IN (");
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    qb.push(")");
                    for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                        report.conversation_ids.push(row.try_get("id").map_err(classify)?);
                    }
                }
                report.conversation_ids.extend(merged_away);
                report.conversation_ids.sort_unstable();
                report.conversation_ids.dedup();

                let mut new_message_ids: HashMap<(String, String, String), i64> = HashMap::new();

                for chunk in plan.messages.chunks(CHUNK) {
                    let ids = chunk
                        .iter()
                        .map(|m| {
                            let conv = conversation_ids.get(&m.conversation).copied().ok_or_else(|| {
                                StoreError::Rejected("conversation missing after upsert".into())
                            })?;
                            Ok((conv, contact_id(&m.sender)?))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO messages (tenant, channel, conversation_id, contact_id, provider_message_id, \
                         direction, kind, message_type, text, media, reply_to, forwarded, referral, details, \
                         sent_at, trace_id, stored_at, history) ",
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
                            .push_bind(now)
                            .push_bind(m.is_history());
                    });
                    qb.push(" ON CONFLICT DO NOTHING RETURNING id, tenant, channel, provider_message_id");
                    for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                        report.messages_new += 1;
                        let key: (String, String, String) = (
                            row.try_get("tenant").map_err(classify)?,
                            row.try_get("channel").map_err(classify)?,
                            row.try_get("provider_message_id").map_err(classify)?,
                        );
                        new_message_ids.insert(key.clone(), row.try_get("id").map_err(classify)?);
                        results.new_messages.insert(key);
                    }
                }
                // Attachments of new inbound messages: `pending` rows and
                // their jobs on media.processing, with the message.
                let media_jobs =
                    Self::queue_media_jobs(tx, &plan.messages, &new_message_ids, now).await?;

                // Group participants: one row per (conversation, person);
                // the later change wins. Two planned people may have turned
                // out to be one contact (merged above): keep the latest.
                let mut participants: HashMap<(i64, i64), (bool, DateTime<Utc>)> = HashMap::new();
                for p in &plan.participants {
                    let conv = conversation_ids.get(&p.conversation).copied().ok_or_else(|| {
                        StoreError::Rejected("conversation missing after upsert".into())
                    })?;
                    let who = contact_id(&p.contact)?;
                    let slot = participants.entry((conv, who)).or_insert((p.active, p.at));
                    if p.at >= slot.1 {
                        *slot = (p.active, p.at);
                    }
                }
                let mut participants: Vec<_> = participants.into_iter().collect();
                participants.sort_unstable_by_key(|(k, _)| *k);
                for chunk in participants.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO conversation_participants (conversation_id, contact_id, active, at) ",
                    );
                    qb.push_values(chunk, |mut b, ((conv, who), (active, at))| {
                        b.push_bind(*conv).push_bind(*who).push_bind(*active).push_bind(*at);
                    });
                    qb.push(
                        " ON CONFLICT (conversation_id, contact_id) DO UPDATE SET active = excluded.active, \
                         at = excluded.at WHERE excluded.at >= conversation_participants.at",
                    );
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }

                for chunk in plan.statuses.chunks(CHUNK).chain(plan.watermarks.chunks(CHUNK)) {
                    for key in self.insert_status_history(tx, chunk, now).await? {
                        report.statuses_new += 1;
                        results.new_statuses.insert(key);
                    }
                }

                // Status webhooks of Inlet's own sends carry its outbound id
                // (`biz_opaque_callback_data`): join the provider id back to
                // the send, also when the Graph answer was lost.
                for row in &plan.statuses {
                    if let (Some(cb), Some(pmid)) =
                        (&row.status.callback_data, &row.status.provider_message_id)
                    {
                        let mut qb = QueryBuilder::<$db>::new(
                            "UPDATE outbound_messages SET provider_message_id = ",
                        );
                        qb.push_bind(pmid)
                            .push(" WHERE id = ")
                            .push_bind(cb)
                            .push(" AND tenant = ")
                            .push_bind(&row.tenant)
                            .push(" AND provider_message_id IS NULL");
                        qb.build().execute(&mut **tx).await.map_err(classify)?;
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
                    for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
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
                for w in plan.watermarks.iter().filter(|w| w.status.status != DeliveryStatus::Unknown) {
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
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
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
                    for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                        report.changes_new += 1;
                        results.new_changes.insert((
                            row.try_get("tenant").map_err(classify)?,
                            row.try_get("change_key").map_err(classify)?,
                        ));
                    }
                }

                // Leads announced by new `leadgen` changes: `pending` rows
                // and their jobs on lead.fetch, with the change (a
                // redelivered webhook stores no new change: no job).
                let lead_jobs =
                    Self::queue_lead_jobs(tx, &plan.changes, &results.new_changes, now).await?;

                // Cache jobs name what changed; written with the data, so a
                // crash between commit and publish cannot lose them.
                let mut outbox = plan.outbox.clone();
                if !plan.raw.is_empty() || !plan.messages.is_empty() {
                    outbox.extend(cache_jobs(&report));
                }
                outbox.extend(media_jobs);
                outbox.extend(lead_jobs);
                // `after` events: appended to the log in this transaction; the
                // relay publishes them from the log by its cursor.
                let mut events = after_events(plan, &results, &self.filter);
                // Pending drafts of conversations that got a newer inbound
                // message are stale now, in this transaction (see
                // `store::drafts`).
                let newer = newer_inbound(plan, &results, &conversation_ids);
                events.extend(self.stale_drafts_in(tx, &newer).await?);
                Self::log_events(tx, &events).await?;
                for chunk in outbox.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) ");
                    qb.push_values(chunk, |mut b, o| {
                        b.push_bind(&o.stream)
                            .push_bind(fields_text(&o.fields))
                            .push_bind(now);
                    });
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }

                Ok(report)
            }

            /// Contacts of a batch, one per person whatever identifiers
            /// each item carried: a person already known by any identifier
            /// is upserted under that contact's row, a new one under the
            /// plan's key; then every identifier is linked
            /// (`contact_identities`, insert-or-ignore on its unique key).
            /// When an identifier turns out to belong to another contact
            /// (two deliveries raced, or a phone-only and a BSUID-only
            /// contact meet in one webhook), the newer contact is merged
            /// into the older one, so one person stays one contact.
            async fn write_contacts(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                plan: &WritePlan,
                results: &mut WriteResults,
                merged_away: &mut Vec<i64>,
            ) -> Result<HashMap<ContactKey, i64>, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let mut contact_ids: HashMap<ContactKey, i64> = HashMap::new();
                if plan.contacts.is_empty() {
                    return Ok(contact_ids);
                }
                let known = Self::identity_owners(tx, plan).await?;
                // Upsert each person under the external id of the oldest
                // contact that already owns one of its identifiers.
                let targets: Vec<String> = plan
                    .contacts
                    .iter()
                    .map(|c| {
                        c.identities
                            .iter()
                            .filter_map(|(kind, value)| {
                                known.get(&(c.key.0.clone(), c.key.1.as_str().to_owned(), kind.as_str().to_owned(), value.clone()))
                            })
                            .min_by_key(|(id, _)| *id)
                            .map(|(_, external_id)| external_id.clone())
                            .unwrap_or_else(|| c.key.2.clone())
                    })
                    .collect();
                let mut by_external: HashMap<(String, String, String), i64> = HashMap::new();
                let rows: Vec<_> = plan.contacts.iter().zip(&targets).collect();
                // People seen active (a live message) move their first/last
                // seen times; the others (history, address book, BSUID
                // changes, groups) only set them on a new row.
                for active in [true, false] {
                    let seen = if active {
                        format!(
                            "first_seen_at = {least}(contacts.first_seen_at, excluded.first_seen_at), \
                             last_seen_at = {greatest}(contacts.last_seen_at, excluded.last_seen_at)",
                            least = d.least,
                            greatest = d.greatest,
                        )
                    } else {
                        "first_seen_at = contacts.first_seen_at".to_owned()
                    };
                    let these: Vec<_> = rows.iter().filter(|(c, _)| c.active == active).collect();
                    for chunk in these.chunks(CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "INSERT INTO contacts (tenant, channel, external_id, name, wa_id, user_id, parent_user_id, \
                             username, first_seen_at, last_seen_at) ",
                        );
                        qb.push_values(chunk, |mut b, (c, target)| {
                            b.push_bind(&c.key.0)
                                .push_bind(c.key.1.as_str())
                                .push_bind(*target)
                                .push_bind(&c.name)
                                .push_bind(&c.wa_id)
                                .push_bind(&c.user_id)
                                .push_bind(&c.parent_user_id)
                                .push_bind(&c.username)
                                .push_bind(c.first_seen)
                                .push_bind(c.last_seen);
                        });
                        qb.push(format!(
                            " ON CONFLICT (tenant, channel, external_id) DO UPDATE SET \
                             name = COALESCE(excluded.name, contacts.name), \
                             wa_id = COALESCE(excluded.wa_id, contacts.wa_id), \
                             user_id = COALESCE(excluded.user_id, contacts.user_id), \
                             parent_user_id = COALESCE(excluded.parent_user_id, contacts.parent_user_id), \
                             username = COALESCE(excluded.username, contacts.username), {seen} \
                             RETURNING id, tenant, channel, external_id",
                        ));
                        for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                            by_external.insert(
                                (
                                    row.try_get("tenant").map_err(classify)?,
                                    row.try_get("channel").map_err(classify)?,
                                    row.try_get("external_id").map_err(classify)?,
                                ),
                                row.try_get("id").map_err(classify)?,
                            );
                        }
                    }
                }
                for (c, target) in &rows {
                    let id = by_external
                        .get(&(c.key.0.clone(), c.key.1.as_str().to_owned(), (*target).clone()))
                        .copied()
                        .ok_or_else(|| StoreError::Rejected(format!("contact {:?} missing after upsert", c.key)))?;
                    contact_ids.insert(c.key.clone(), id);
                }

                // Link every identifier; the unique key decides who owns it.
                let links: Vec<(&String, &'static str, &'static str, &String, i64)> = plan
                    .contacts
                    .iter()
                    .flat_map(|c| {
                        let id = contact_ids.get(&c.key).copied().unwrap_or_default();
                        c.identities
                            .iter()
                            .map(move |(kind, value)| (&c.key.0, c.key.1.as_str(), kind.as_str(), value, id))
                    })
                    .collect();
                for chunk in links.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO contact_identities (tenant, channel, kind, value, contact_id) ",
                    );
                    qb.push_values(chunk, |mut b, (tenant, channel, kind, value, id)| {
                        b.push_bind(*tenant)
                            .push_bind(*channel)
                            .push_bind(*kind)
                            .push_bind(*value)
                            .push_bind(*id);
                    });
                    qb.push(" ON CONFLICT (tenant, channel, kind, value) DO NOTHING");
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }

                // Whoever owns an identifier of a person now is that person.
                let owners = Self::identity_owners(tx, plan).await?;
                for c in &plan.contacts {
                    let Some(mine) = contact_ids.get(&c.key).copied() else {
                        continue;
                    };
                    let mut ids: Vec<i64> = c
                        .identities
                        .iter()
                        .filter_map(|(kind, value)| {
                            owners
                                .get(&(c.key.0.clone(), c.key.1.as_str().to_owned(), kind.as_str().to_owned(), value.clone()))
                                .map(|(id, _)| *id)
                        })
                        .chain([mine])
                        .collect();
                    ids.sort_unstable();
                    ids.dedup();
                    let survivor = ids[0];
                    for loser in ids.into_iter().skip(1) {
                        merged_away.extend(Self::merge_contact(tx, loser, survivor).await?);
                        for id in contact_ids.values_mut() {
                            if *id == loser {
                                *id = survivor;
                            }
                        }
                    }
                }
                for c in &plan.contacts {
                    if let Some(id) = contact_ids.get(&c.key) {
                        results
                            .contacts
                            .insert((c.key.0.clone(), c.key.1.as_str().to_string(), c.key.2.clone()), *id);
                    }
                }
                Ok(contact_ids)
            }

            /// Which contact (id, external id) owns each identifier of the
            /// plan's contacts that is already linked.
            async fn identity_owners(
                tx: &mut sqlx::Transaction<'_, $db>,
                plan: &WritePlan,
            ) -> Result<HashMap<(String, String, String, String), (i64, String)>, StoreError> {
                let wanted: Vec<(&String, &'static str, &'static str, &String)> = plan
                    .contacts
                    .iter()
                    .flat_map(|c| {
                        c.identities
                            .iter()
                            .map(move |(kind, value)| (&c.key.0, c.key.1.as_str(), kind.as_str(), value))
                    })
                    .collect();
                let mut out = HashMap::new();
                for chunk in wanted.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT i.tenant, i.channel, i.kind, i.value, i.contact_id, c.external_id \
                         FROM contact_identities i JOIN contacts c ON c.id = i.contact_id \
                         WHERE (i.tenant, i.channel, i.kind, i.value) IN (VALUES ",
                    );
                    let mut sep = qb.separated(", ");
                    for (tenant, channel, kind, value) in chunk {
                        sep.push("(")
                            .push_bind_unseparated(*tenant)
                            .push_unseparated(", ")
                            .push_bind_unseparated(*channel)
                            .push_unseparated(", ")
                            .push_bind_unseparated(*kind)
                            .push_unseparated(", ")
                            .push_bind_unseparated(*value)
                            .push_unseparated(")");
                    }
                    qb.push(")");
                    for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                        out.insert(
                            (
                                row.try_get("tenant").map_err(classify)?,
                                row.try_get("channel").map_err(classify)?,
                                row.try_get("kind").map_err(classify)?,
                                row.try_get("value").map_err(classify)?,
                            ),
                            (
                                row.try_get("contact_id").map_err(classify)?,
                                row.try_get("external_id").map_err(classify)?,
                            ),
                        );
                    }
                }
                Ok(out)
            }

            /// Merges contact `loser` into `survivor`: its conversations
            /// (folded into the survivor's conversation with the same
            /// business endpoint, if any), messages, identifiers, and the
            /// details only it knew; then deletes it. History is kept.
            /// Returns the loser's conversations that were folded (and
            /// deleted).
            async fn merge_contact(
                tx: &mut sqlx::Transaction<'_, $db>,
                loser: i64,
                survivor: i64,
            ) -> Result<Vec<i64>, StoreError> {
                let d = <$db as Backend>::DIALECT;
                // Lock the loser's rows first: a concurrent write that is
                // adding a message to them finishes before we move messages
                // (so we see it); one that starts later fails its foreign
                // key once we commit, which is transient, and its retry
                // finds the survivor.
                for table in ["conversations", "contacts"] {
                    let column = if table == "contacts" { "id" } else { "contact_id" };
                    let mut qb = QueryBuilder::<$db>::new(format!("SELECT id FROM {table} WHERE {column} = "));
                    qb.push_bind(loser).push(d.for_update);
                    qb.build().fetch_all(&mut **tx).await.map_err(classify)?;
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT l.id AS loser_conv, s.id AS survivor_conv, l.started_at, l.last_message_at \
                     FROM conversations l JOIN conversations s ON s.tenant = l.tenant AND s.channel = l.channel \
                     AND s.business_id = l.business_id AND s.contact_id = ",
                );
                qb.push_bind(survivor).push(" WHERE l.contact_id = ").push_bind(loser);
                let pairs = qb.build().fetch_all(&mut **tx).await.map_err(classify)?;
                let mut folded = Vec::with_capacity(pairs.len());
                for row in pairs {
                    let l: i64 = row.try_get("loser_conv").map_err(classify)?;
                    folded.push(l);
                    let s: i64 = row.try_get("survivor_conv").map_err(classify)?;
                    let started: DateTime<Utc> = row.try_get("started_at").map_err(classify)?;
                    let last: DateTime<Utc> = row.try_get("last_message_at").map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE messages SET conversation_id = ");
                    qb.push_bind(s).push(" WHERE conversation_id = ").push_bind(l);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                    Self::move_participants(tx, "conversation_id", l, s).await?;
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "UPDATE conversations SET started_at = {}(started_at, ",
                        d.least
                    ));
                    qb.push_bind(started)
                        .push(format!("), last_message_at = {}(last_message_at, ", d.greatest))
                        .push_bind(last)
                        .push(") WHERE id = ")
                        .push_bind(s);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE drafts SET conversation_id = ");
                    qb.push_bind(s).push(" WHERE conversation_id = ").push_bind(l);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM conversations WHERE id = ");
                    qb.push_bind(l);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                Self::move_participants(tx, "contact_id", loser, survivor).await?;
                for table in ["conversations", "messages", "contact_identities"] {
                    let mut qb = QueryBuilder::<$db>::new(format!("UPDATE {table} SET contact_id = "));
                    qb.push_bind(survivor).push(" WHERE contact_id = ").push_bind(loser);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT name, wa_id, user_id, parent_user_id, username, first_seen_at, last_seen_at \
                     FROM contacts WHERE id = ",
                );
                qb.push_bind(loser);
                let old = qb.build().fetch_optional(&mut **tx).await.map_err(classify)?;
                if let Some(old) = old {
                    let text = |col: &str| old.try_get::<Option<String>, _>(col).map_err(classify);
                    let first: DateTime<Utc> = old.try_get("first_seen_at").map_err(classify)?;
                    let last: DateTime<Utc> = old.try_get("last_seen_at").map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE contacts SET ");
                    for (i, col) in ["name", "wa_id", "user_id", "parent_user_id", "username"].into_iter().enumerate() {
                        if i > 0 {
                            qb.push(", ");
                        }
                        qb.push(format!("{col} = COALESCE({col}, ")).push_bind(text(col)?).push(")");
                    }
                    qb.push(format!(", first_seen_at = {}(first_seen_at, ", d.least))
                        .push_bind(first)
                        .push(format!("), last_seen_at = {}(last_seen_at, ", d.greatest))
                        .push_bind(last)
                        .push(") WHERE id = ")
                        .push_bind(survivor);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM contacts WHERE id = ");
                    qb.push_bind(loser);
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                tracing::info!(loser, survivor, "contacts merged: identifiers of one person");
                Ok(folded)
            }

            /// Moves group participant rows from `from` to `to` in `column`
            /// (`contact_id` or `conversation_id`); where both are there
            /// already, the row moved is dropped for the one kept.
            async fn move_participants(
                tx: &mut sqlx::Transaction<'_, $db>,
                column: &str,
                from: i64,
                to: i64,
            ) -> Result<(), StoreError> {
                let other = if column == "contact_id" { "conversation_id" } else { "contact_id" };
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "DELETE FROM conversation_participants WHERE {column} = "
                ));
                qb.push_bind(from).push(format!(
                    " AND {other} IN (SELECT {other} FROM conversation_participants WHERE {column} = "
                ));
                qb.push_bind(to).push(")");
                qb.build().execute(&mut **tx).await.map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new(format!("UPDATE conversation_participants SET {column} = "));
                qb.push_bind(to).push(format!(" WHERE {column} = ")).push_bind(from);
                qb.build().execute(&mut **tx).await.map_err(classify)?;
                Ok(())
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
                        .push_bind(s.status_name())
                        .push_bind(s.at)
                        .push_bind(s.watermark)
                        .push_bind(Json(errors_json(&s.errors)))
                        .push_bind(s.conversation.as_ref().map(Json))
                        .push_bind(s.pricing.as_ref().map(Json))
                        .push_bind(row.trace_id.to_string())
                        .push_bind(now);
                });
                qb.push(" ON CONFLICT DO NOTHING RETURNING tenant, status_key");
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
            pub(super) async fn log_events(
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
                            .push_bind(e.phase.as_str())
                            .push_bind(e.operation.as_str())
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
                    qb.push(" ON CONFLICT DO NOTHING");
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
