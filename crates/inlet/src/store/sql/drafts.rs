//! The drafts table (see [`crate::store::drafts`] for the guarantees): every
//! change is one `UPDATE … WHERE status IN (sources of the action)`, with
//! its `draft.after.*` event logged in the same transaction. Also the two
//! hooks other writes call inside their own transactions: the write path
//! (a newer inbound message makes pending drafts stale) and the sender's
//! bookkeeping (an approved draft follows its send).

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::json;
use sqlx::{QueryBuilder, Row};

use super::{classify, for_each_backend, Backend, SqlStore, CHUNK};
use crate::events::{Event, Operation, Phase};
use crate::model::Channel;
use crate::outbound::draft::{reply_spec, Action, DraftStatus, ReplyTarget};
use crate::store::drafts::{
    Approval, Approved, Change, Closed, Created, DraftFilter, DraftRecord, DraftStore, NewDraft,
};
use crate::store::outbound::now_ms;
use crate::store::StoreError;

/// Columns read back as a [`DraftRecord`].
const COLUMNS: &str = "id, tenant, conversation_id, channel, business_id, contact_external_id, \
 anchor_message_id, anchor_provider_id, anchor_sent_ms, quote_anchor, text, final_text, author, status, \
 version, outbound_id, forced, reason, trace_id, created_ms, updated_ms, approved_ms";

/// The `draft.after.{operation}` event of a draft as it now is. The key
/// includes the version, so each change is its own event (and a retried
/// transaction logs it once).
pub(crate) fn draft_event(operation: Operation, d: &DraftRecord, actor: &str) -> Event {
    let mut e = Event::new(
        "draft",
        Phase::After,
        operation,
        &format!("{}/{}", d.id, d.version),
        &d.tenant,
        Some(d.trace_id.clone()),
        actor,
        json!({
            "id": d.id,
            "conversation_id": d.conversation_id,
            "channel": d.channel,
            "status": d.status,
            "version": d.version,
            "author": d.author,
            "text": d.send_text(),
            "edited": d.final_text.is_some(),
            "reply_to": d.anchor_provider_id,
            "outbound_id": d.outbound_id,
            "forced": d.forced,
            "reason": d.reason,
        }),
    );
    e.result = Some(json!({"id": d.id, "status": d.status, "version": d.version}));
    e
}

/// The guard of an action: `status IN ('a', 'b')` (names are constants of
/// [`DraftStatus`], never input).
fn status_in(action: Action) -> String {
    let names: Vec<String> = DraftStatus::source_names(action)
        .into_iter()
        .map(|n| format!("'{n}'"))
        .collect();
    format!("status IN ({})", names.join(", "))
}

fn target(action: Action) -> Result<&'static str, StoreError> {
    action
        .target()
        .map(DraftStatus::as_str)
        .ok_or_else(|| StoreError::Rejected(format!("no draft status follows {action:?}")))
}

macro_rules! impl_drafts {
    ($db:ty) => {
        impl SqlStore<$db> {
            fn draft_from_row(row: &<$db as sqlx::Database>::Row) -> Result<DraftRecord, StoreError> {
                let get = |e: sqlx::Error| StoreError::Rejected(format!("unreadable drafts row: {e}"));
                Ok(DraftRecord {
                    id: row.try_get("id").map_err(get)?,
                    tenant: row.try_get("tenant").map_err(get)?,
                    conversation_id: row.try_get("conversation_id").map_err(get)?,
                    channel: row.try_get("channel").map_err(get)?,
                    business_id: row.try_get("business_id").map_err(get)?,
                    contact_external_id: row.try_get("contact_external_id").map_err(get)?,
                    anchor_message_id: row.try_get("anchor_message_id").map_err(get)?,
                    anchor_provider_id: row.try_get("anchor_provider_id").map_err(get)?,
                    anchor_sent_ms: row.try_get("anchor_sent_ms").map_err(get)?,
                    quote_anchor: row.try_get("quote_anchor").map_err(get)?,
                    text: row.try_get("text").map_err(get)?,
                    final_text: row.try_get("final_text").map_err(get)?,
                    author: row.try_get("author").map_err(get)?,
                    status: row.try_get("status").map_err(get)?,
                    version: row.try_get("version").map_err(get)?,
                    outbound_id: row.try_get("outbound_id").map_err(get)?,
                    forced: row.try_get("forced").map_err(get)?,
                    reason: row.try_get("reason").map_err(get)?,
                    trace_id: row.try_get("trace_id").map_err(get)?,
                    created_ms: row.try_get("created_ms").map_err(get)?,
                    updated_ms: row.try_get("updated_ms").map_err(get)?,
                    approved_ms: row.try_get("approved_ms").map_err(get)?,
                })
            }

            async fn select_draft<'e, E>(executor: E, id: &str) -> Result<Option<DraftRecord>, StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let mut qb = QueryBuilder::<$db>::new("SELECT ");
                qb.push(COLUMNS).push(" FROM drafts WHERE id = ").push_bind(id.to_string());
                let row = qb.build().fetch_optional(executor).await.map_err(classify)?;
                row.as_ref().map(Self::draft_from_row).transpose()
            }

            /// Logs the events of changed drafts, honouring the event filter.
            async fn log_draft_events(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                operation: Operation,
                drafts: &[DraftRecord],
                actor: &str,
            ) -> Result<(), StoreError> {
                if drafts.is_empty() || !self.filter.allows("draft") {
                    return Ok(());
                }
                let events: Vec<Event> = drafts.iter().map(|d| draft_event(operation, d, actor)).collect();
                Self::log_events(tx, &events).await
            }

            /// Write-path hook: pending drafts of each conversation whose
            /// anchor is not newer than the newest inbound message just
            /// stored, `(conversation, sent at ms, provider id)`, become
            /// `stale`. Returns their events (the caller logs them with the
            /// write's own). The write upserted each conversation row
            /// first, which serializes it with draft creation (see
            /// `insert_draft`).
            pub(super) async fn stale_drafts_in(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                newer: &[(i64, i64, String)],
            ) -> Result<Vec<Event>, StoreError> {
                let action = Action::NewerInbound;
                let mut stale = Vec::new();
                let now = now_ms();
                for chunk in newer.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new("WITH v (v_conversation, v_sent_ms, v_message) AS (VALUES ");
                    let mut sep = qb.separated(", ");
                    for (conversation, sent_ms, message) in chunk {
                        sep.push("(")
                            .push_bind_unseparated(*conversation)
                            .push_unseparated(", ")
                            .push_bind_unseparated(*sent_ms)
                            .push_unseparated(", ")
                            .push_bind_unseparated(message.clone())
                            .push_unseparated(")");
                    }
                    qb.push(") UPDATE drafts SET status = ")
                        .push_bind(target(action)?)
                        .push(", version = version + 1, updated_ms = ")
                        .push_bind(now)
                        .push(", reason = 'newer inbound message ' || v_message FROM v WHERE conversation_id = v_conversation AND ")
                        .push(status_in(action))
                        .push(" AND (anchor_sent_ms IS NULL OR anchor_sent_ms <= v_sent_ms) RETURNING ")
                        .push(COLUMNS);
                    for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                        stale.push(Self::draft_from_row(&row)?);
                    }
                }
                if stale.is_empty() || !self.filter.allows("draft") {
                    return Ok(Vec::new());
                }
                metrics::counter!("inlet_drafts_changed_total", "status" => "stale").increment(stale.len() as u64);
                Ok(stale.iter().map(|d| draft_event(Operation::Update, d, "pipeline")).collect())
            }

            /// Sender hook: the approved drafts of these sends take `action`
            /// (their send ended, or was replayed from the DLQ), inside the
            /// transaction that recorded it.
            pub(super) async fn drafts_of_sends_in(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                outbound_ids: &[String],
                action: Action,
                reason: Option<String>,
                now: i64,
            ) -> Result<(), StoreError> {
                let to = target(action)?;
                for chunk in outbound_ids.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE drafts SET status = ");
                    qb.push_bind(to)
                        .push(", version = version + 1, updated_ms = ")
                        .push_bind(now)
                        .push(", reason = ")
                        .push_bind(reason.clone())
                        .push(" WHERE ")
                        .push(status_in(action))
                        .push(" AND outbound_id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.clone());
                    }
                    qb.push(") RETURNING ").push(COLUMNS);
                    let changed = qb
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?
                        .iter()
                        .map(Self::draft_from_row)
                        .collect::<Result<Vec<_>, _>>()?;
                    if !changed.is_empty() {
                        metrics::counter!("inlet_drafts_changed_total", "status" => to).increment(changed.len() as u64);
                    }
                    self.log_draft_events(tx, Operation::Update, &changed, "outbound").await?;
                }
                Ok(())
            }

            /// Creates a draft under the conversation's row lock (the write
            /// path takes it too, by upserting the conversation): a message
            /// stored meanwhile is seen here as the anchor, or sees the
            /// draft and marks it stale.
            async fn insert_draft(&self, draft: &NewDraft) -> Result<Created, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT tenant, channel, business_id, contact_id FROM conversations WHERE id = ",
                );
                qb.push_bind(draft.conversation_id).push(d.for_update);
                let Some(conv) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                    return Ok(Created::NoConversation);
                };
                let tenant: String = conv.try_get("tenant").map_err(classify)?;
                let channel: String = conv.try_get("channel").map_err(classify)?;
                let business_id: String = conv.try_get("business_id").map_err(classify)?;
                let contact_id: i64 = conv.try_get("contact_id").map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new("SELECT external_id FROM contacts WHERE id = ");
                qb.push_bind(contact_id);
                let contact: String = qb
                    .build()
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(classify)?
                    .try_get("external_id")
                    .map_err(classify)?;
                let target = ReplyTarget {
                    channel: Channel::parse(&channel)
                        .ok_or_else(|| StoreError::Rejected(format!("conversation with unknown channel {channel:?}")))?,
                    business_id: business_id.clone(),
                    contact: contact.clone(),
                };
                if let Err(e) = reply_spec(&target, &draft.text, draft.reply_to.as_deref()) {
                    return Ok(Created::Invalid(e));
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT id, provider_message_id, sent_at FROM messages WHERE conversation_id = ",
                );
                qb.push_bind(draft.conversation_id).push(" AND direction = 'inbound'");
                match &draft.reply_to {
                    Some(pmid) => {
                        qb.push(" AND tenant = ")
                            .push_bind(tenant.clone())
                            .push(" AND channel = ")
                            .push_bind(channel.clone())
                            .push(" AND provider_message_id = ")
                            .push_bind(pmid.clone());
                    }
                    None => {
                        qb.push(" ORDER BY sent_at DESC, id DESC LIMIT 1");
                    }
                }
                let anchor = qb.build().fetch_optional(&mut *tx).await.map_err(classify)?;
                if anchor.is_none() && draft.reply_to.is_some() {
                    return Ok(Created::NoSuchMessage);
                }
                let (anchor_id, anchor_pmid, anchor_ms) = match &anchor {
                    Some(row) => {
                        let sent: DateTime<Utc> = row.try_get("sent_at").map_err(classify)?;
                        (
                            Some(row.try_get::<i64, _>("id").map_err(classify)?),
                            Some(row.try_get::<String, _>("provider_message_id").map_err(classify)?),
                            Some(sent.timestamp_millis()),
                        )
                    }
                    None => (None, None, None),
                };
                let now = now_ms();
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO drafts (id, tenant, conversation_id, channel, business_id, contact_external_id, \
                     anchor_message_id, anchor_provider_id, anchor_sent_ms, quote_anchor, text, author, status, \
                     version, trace_id, created_ms, updated_ms) ",
                );
                qb.push_values([draft], |mut b, n| {
                    b.push_bind(n.id.clone())
                        .push_bind(tenant.clone())
                        .push_bind(n.conversation_id)
                        .push_bind(channel.clone())
                        .push_bind(business_id.clone())
                        .push_bind(contact.clone())
                        .push_bind(anchor_id)
                        .push_bind(anchor_pmid.clone())
                        .push_bind(anchor_ms)
                        .push_bind(n.reply_to.is_some())
                        .push_bind(n.text.clone())
                        .push_bind(n.author.clone())
                        .push_bind(DraftStatus::Pending.as_str())
                        .push_bind(1_i32)
                        .push_bind(n.trace_id.clone())
                        .push_bind(now)
                        .push_bind(now);
                });
                qb.push(" RETURNING ").push(COLUMNS);
                let row = qb.build().fetch_one(&mut *tx).await.map_err(classify)?;
                let record = Self::draft_from_row(&row)?;
                self.log_draft_events(&mut tx, Operation::Create, std::slice::from_ref(&record), &draft.actor)
                    .await?;
                tx.commit().await.map_err(classify)?;
                Ok(Created::Draft(Box::new(record)))
            }

            /// One conditional update (status and version) and the send, in
            /// one transaction.
            async fn apply_approval(&self, a: &Approval) -> Result<Approved, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let action = Action::Approve { force: a.force };
                let now = now_ms();
                let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new("UPDATE drafts SET forced = (status = 'stale'), status = ");
                qb.push_bind(target(action)?)
                    .push(", version = version + 1, final_text = ")
                    .push_bind(a.edited_text.clone())
                    .push(", outbound_id = ")
                    .push_bind(a.send.id.clone())
                    .push(", approved_ms = ")
                    .push_bind(now)
                    .push(", updated_ms = ")
                    .push_bind(now)
                    .push(" WHERE id = ")
                    .push_bind(a.draft_id.clone())
                    .push(" AND version = ")
                    .push_bind(a.version)
                    .push(" AND ")
                    .push(status_in(action))
                    .push(" RETURNING ")
                    .push(COLUMNS);
                let Some(row) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                    tx.rollback().await.map_err(classify)?;
                    let current = Self::select_draft(&self.pool, &a.draft_id).await?;
                    return Ok(Approved::Conflict(current.map(Box::new)));
                };
                let record = Self::draft_from_row(&row)?;
                let (send, created) = Self::enqueue_in(&mut tx, &a.send, now).await?;
                if !created {
                    // The derived id is taken: this draft's send exists.
                    tx.rollback().await.map_err(classify)?;
                    let current = Self::select_draft(&self.pool, &a.draft_id).await?;
                    return Ok(Approved::Conflict(current.map(Box::new)));
                }
                self.log_draft_events(&mut tx, Operation::Approve, std::slice::from_ref(&record), &a.actor)
                    .await?;
                tx.commit().await.map_err(classify)?;
                Ok(Approved::Queued(Box::new(record), Box::new(send)))
            }

            async fn apply_change(&self, c: &Change) -> Result<Option<DraftRecord>, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let now = now_ms();
                let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new("UPDATE drafts SET status = ");
                qb.push_bind(target(c.action)?)
                    .push(", version = version + 1, updated_ms = ")
                    .push_bind(now)
                    .push(", reason = ")
                    .push_bind(c.reason.clone())
                    .push(" WHERE id = ")
                    .push_bind(c.draft_id.clone())
                    .push(" AND ")
                    .push(status_in(c.action));
                if let Some(v) = c.version {
                    qb.push(" AND version = ").push_bind(v);
                }
                qb.push(" RETURNING ").push(COLUMNS);
                let Some(row) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                    return Ok(None);
                };
                let record = Self::draft_from_row(&row)?;
                let operation: Operation = c
                    .action
                    .operation()
                    .parse()
                    .map_err(|e: crate::events::UnknownWord| StoreError::Rejected(e.to_string()))?;
                self.log_draft_events(&mut tx, operation, std::slice::from_ref(&record), &c.actor)
                    .await?;
                tx.commit().await.map_err(classify)?;
                Ok(Some(record))
            }

            async fn close_open_drafts(
                &self,
                now: i64,
                window_opened_after_ms: i64,
                created_before_ms: i64,
            ) -> Result<Closed, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let opened_after = DateTime::<Utc>::from_timestamp_millis(window_opened_after_ms)
                    .ok_or_else(|| StoreError::Rejected(format!("bad time {window_opened_after_ms}")))?;
                let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                let window = Action::WindowClosed;
                let mut qb = QueryBuilder::<$db>::new("UPDATE drafts SET status = ");
                qb.push_bind(target(window)?)
                    .push(", version = version + 1, updated_ms = ")
                    .push_bind(now)
                    .push(", reason = 'window_closed' WHERE ")
                    .push(status_in(window))
                    .push(
                        " AND channel = 'whatsapp' AND NOT EXISTS (SELECT 1 FROM messages m \
                         WHERE m.conversation_id = drafts.conversation_id AND m.direction = 'inbound' AND m.sent_at > ",
                    )
                    .push_bind(opened_after)
                    .push(") RETURNING ")
                    .push(COLUMNS);
                let closed = qb
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(classify)?
                    .iter()
                    .map(Self::draft_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                self.log_draft_events(&mut tx, Operation::Update, &closed, "housekeeping").await?;
                let expire = Action::Expire;
                let mut qb = QueryBuilder::<$db>::new("UPDATE drafts SET status = ");
                qb.push_bind(target(expire)?)
                    .push(", version = version + 1, updated_ms = ")
                    .push_bind(now)
                    .push(", reason = 'not_reviewed' WHERE ")
                    .push(status_in(expire))
                    .push(" AND created_ms < ")
                    .push_bind(created_before_ms)
                    .push(" RETURNING ")
                    .push(COLUMNS);
                let expired = qb
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(classify)?
                    .iter()
                    .map(Self::draft_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                self.log_draft_events(&mut tx, Operation::Update, &expired, "housekeeping").await?;
                tx.commit().await.map_err(classify)?;
                Ok(Closed {
                    needs_template: closed.len() as u64,
                    expired: expired.len() as u64,
                })
            }
        }

        impl DraftStore for SqlStore<$db> {
            fn create_draft<'a>(&'a self, draft: &'a NewDraft) -> BoxFuture<'a, Result<Created, StoreError>> {
                Box::pin(self.insert_draft(draft))
            }

            fn draft<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DraftRecord>, StoreError>> {
                Box::pin(Self::select_draft(&self.pool, id))
            }

            fn drafts<'a>(&'a self, filter: &'a DraftFilter) -> BoxFuture<'a, Result<Vec<DraftRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(COLUMNS).push(" FROM drafts WHERE 1 = 1");
                    if let Some(status) = &filter.status {
                        qb.push(" AND status = ").push_bind(status.clone());
                    }
                    if let Some(c) = filter.conversation_id {
                        qb.push(" AND conversation_id = ").push_bind(c);
                    }
                    qb.push(" ORDER BY seq DESC LIMIT ").push_bind(filter.limit.max(1));
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter().map(Self::draft_from_row).collect()
                })
            }

            fn approve_draft<'a>(&'a self, approval: &'a Approval) -> BoxFuture<'a, Result<Approved, StoreError>> {
                Box::pin(self.apply_approval(approval))
            }

            fn change_draft<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Option<DraftRecord>, StoreError>> {
                Box::pin(self.apply_change(change))
            }

            fn close_drafts(
                &self,
                now_ms: i64,
                window_opened_after_ms: i64,
                created_before_ms: i64,
            ) -> BoxFuture<'_, Result<Closed, StoreError>> {
                Box::pin(self.close_open_drafts(now_ms, window_opened_after_ms, created_before_ms))
            }
        }
    };
}

for_each_backend!(impl_drafts);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_read_from_the_transition_table() {
        assert_eq!(
            status_in(Action::Approve { force: true }),
            "status IN ('pending', 'stale')"
        );
        assert_eq!(status_in(Action::NewerInbound), "status IN ('pending')");
        assert_eq!(target(Action::Reject).unwrap(), "rejected");
    }
}
