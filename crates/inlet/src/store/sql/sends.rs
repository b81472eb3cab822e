//! The outbound tables: sends, their history, broadcasts, halts (see
//! [`crate::store::outbound`] for the states and their guards).

use std::collections::BTreeMap;

use sqlx::{QueryBuilder, Row};

use super::{classify, for_each_backend, Backend, SqlStore, CHUNK};
use crate::events::{Event, Operation, Phase};
use crate::outbound::draft::{Action, SendOutcome};
use crate::outbound::{BroadcastSpec, SendSpec};
use crate::store::outbound::{
    state, BroadcastRecord, Delivered, Finish, Halt, HistoryEntry, NewBroadcast, NewSend,
    OutboundRecord, OutboundStats, OutboundStore, WithHistory,
};
use crate::store::StoreError;
use futures_util::future::BoxFuture;

const COLUMNS: &str = "o.seq, o.id, o.tenant, o.spec, o.broadcast_id, o.status, o.attempts, o.due_ms, \
 o.provider_message_id, o.contact_wa_id, o.error_class, o.error, o.trace_id, o.created_ms, o.updated_ms, \
 o.accepted_ms, s.status AS delivery_status";

const FROM: &str =
    " FROM outbound_messages o LEFT JOIN message_status_current s ON s.tenant = o.tenant \
 AND s.channel = o.channel AND s.provider_message_id = o.provider_message_id";

/// States in which a send still occupies its (sender, recipient) queue.
const OPEN: &str = "('queued', 'claimed', 'sending', 'unknown')";

fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse_json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn bad_row(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Rejected(format!("unreadable {what} row: {e}"))
}

/// The event of a send that ended in failure (`message.failed.create`).
fn failed_event(
    id: &str,
    tenant: &str,
    trace: &str,
    status: &str,
    error: &serde_json::Value,
) -> Event {
    let mut e = Event::new(
        "message",
        Phase::Failed,
        Operation::Create,
        &format!("outbound/{id}"),
        tenant,
        Some(trace.to_string()),
        "outbound",
        serde_json::json!({"outbound_id": id, "status": status}),
    );
    e.error = Some(json_text(error));
    e
}

/// Visible status counts of a group of rows (see
/// [`OutboundRecord::visible_status`]).
fn visible(stored: &str, delivery: Option<&str>) -> String {
    match (delivery, stored) {
        (Some(d), state::ACCEPTED | state::HELD | state::UNKNOWN) => d.to_string(),
        _ => stored.to_string(),
    }
}

macro_rules! impl_sends {
    ($db:ty) => {
        impl SqlStore<$db> {
            fn outbound_from_row(row: &<$db as sqlx::Database>::Row) -> Result<OutboundRecord, StoreError> {
                let get = |e: sqlx::Error| bad_row("outbound_messages", e);
                let spec_text: String = row.try_get("spec").map_err(get)?;
                let spec: SendSpec =
                    serde_json::from_str(&spec_text).map_err(|e| bad_row("outbound_messages", e))?;
                Ok(OutboundRecord {
                    seq: row.try_get("seq").map_err(get)?,
                    id: row.try_get("id").map_err(get)?,
                    tenant: row.try_get("tenant").map_err(get)?,
                    spec,
                    broadcast_id: row.try_get("broadcast_id").map_err(get)?,
                    status: row.try_get("status").map_err(get)?,
                    attempts: row.try_get("attempts").map_err(get)?,
                    due_ms: row.try_get("due_ms").map_err(get)?,
                    provider_message_id: row.try_get("provider_message_id").map_err(get)?,
                    contact_wa_id: row.try_get("contact_wa_id").map_err(get)?,
                    error_class: row.try_get("error_class").map_err(get)?,
                    error: parse_json(row.try_get("error").map_err(get)?),
                    trace_id: row.try_get("trace_id").map_err(get)?,
                    created_ms: row.try_get("created_ms").map_err(get)?,
                    updated_ms: row.try_get("updated_ms").map_err(get)?,
                    accepted_ms: row.try_get("accepted_ms").map_err(get)?,
                    delivery_status: row.try_get("delivery_status").map_err(get)?,
                })
            }

            /// Runs a `SELECT COLUMNS FROM …` query into records.
            async fn fetch_records(&self, mut qb: QueryBuilder<'_, $db>) -> Result<Vec<OutboundRecord>, StoreError> {
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter().map(Self::outbound_from_row).collect()
            }

            async fn select_outbound<'e, E>(executor: E, id: &str) -> Result<Option<OutboundRecord>, StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let mut qb = QueryBuilder::<$db>::new("SELECT ");
                qb.push(COLUMNS).push(FROM).push(" WHERE o.id = ").push_bind(id.to_string());
                let row = qb.build().fetch_optional(executor).await.map_err(classify)?;
                row.as_ref().map(Self::outbound_from_row).transpose()
            }

            async fn insert_sends(
                tx: &mut sqlx::Transaction<'_, $db>,
                sends: &[NewSend],
                now: i64,
                returning: bool,
            ) -> Result<Vec<String>, StoreError> {
                let mut inserted = Vec::new();
                for chunk in sends.chunks(CHUNK / 2) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO outbound_messages (id, tenant, channel, sender_id, recipient, recipient_kind, \
                         message_type, spec, idempotency_key, broadcast_id, status, attempts, due_ms, trace_id, \
                         created_ms, updated_ms) ",
                    );
                    qb.push_values(chunk, |mut b, s| {
                        let kind = serde_json::to_value(s.spec.recipient_kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        b.push_bind(s.id.clone())
                            .push_bind(s.tenant.clone())
                            .push_bind(s.spec.channel.as_str())
                            .push_bind(s.spec.from.clone())
                            .push_bind(s.spec.to.clone())
                            .push_bind(kind)
                            .push_bind(s.spec.message_type.as_str())
                            .push_bind(serde_json::to_string(&s.spec).unwrap_or_default())
                            .push_bind(s.spec.idempotency_key.clone())
                            .push_bind(s.broadcast_id.clone())
                            .push_bind(state::QUEUED)
                            .push_bind(0_i32)
                            .push_bind(now)
                            .push_bind(s.trace_id.clone())
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    if returning {
                        qb.push(" RETURNING id");
                        for row in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                            inserted.push(row.try_get::<String, _>("id").map_err(classify)?);
                        }
                    } else {
                        qb.build().execute(&mut **tx).await.map_err(classify)?;
                    }
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO outbound_history (outbound_id, status, at_ms, detail) ",
                    );
                    qb.push_values(chunk, |mut b, s| {
                        b.push_bind(s.id.clone())
                            .push_bind(state::QUEUED)
                            .push_bind(now)
                            .push_bind(None::<String>);
                    });
                    // Only the history of rows this call inserted.
                    if returning && inserted.is_empty() {
                        continue;
                    }
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                Ok(inserted)
            }

            /// Stores a command inside the caller's transaction (see
            /// [`OutboundStore::enqueue`]): the send approved with a draft
            /// is stored in the approval's transaction.
            pub(super) async fn enqueue_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                send: &NewSend,
                now: i64,
            ) -> Result<(OutboundRecord, bool), StoreError> {
                let inserted = Self::insert_sends(tx, std::slice::from_ref(send), now, true).await?;
                let created = !inserted.is_empty();
                if created {
                    let fields = BTreeMap::from([
                        ("id".to_string(), send.id.clone()),
                        ("tenant".to_string(), send.tenant.clone()),
                        ("trace_id".to_string(), send.trace_id.clone()),
                        ("command".to_string(), serde_json::to_string(&send.spec).unwrap_or_default()),
                    ]);
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) VALUES (");
                    qb.push_bind(crate::streams::OUTGOING_COMMAND)
                        .push(", ")
                        .push_bind(super::fields_text(&fields))
                        .push(", ")
                        .push_bind(chrono::Utc::now())
                        .push(")");
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                // The stored row: this one, or the one holding the id or
                // the idempotency key.
                let mut qb = QueryBuilder::<$db>::new("SELECT ");
                qb.push(COLUMNS).push(FROM).push(" WHERE o.id = ").push_bind(send.id.clone());
                if let Some(key) = &send.spec.idempotency_key {
                    qb.push(" OR (o.tenant = ")
                        .push_bind(send.tenant.clone())
                        .push(" AND o.idempotency_key = ")
                        .push_bind(key.clone())
                        .push(")");
                }
                qb.push(" ORDER BY o.seq LIMIT 1");
                let row = qb.build().fetch_one(&mut **tx).await.map_err(classify)?;
                let record = Self::outbound_from_row(&row)?;
                Ok((record, created))
            }

            /// Runs an `UPDATE … RETURNING id` and writes one history entry
            /// (`status`, `detail`) for each row it changed; returns their ids.
            async fn update_with_history(
                tx: &mut sqlx::Transaction<'_, $db>,
                mut update: QueryBuilder<'_, $db>,
                status: &str,
                now: i64,
                detail: &serde_json::Value,
            ) -> Result<Vec<String>, StoreError> {
                let ids: Vec<String> = update
                    .build()
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(classify)?
                    .iter()
                    .map(|r| r.try_get::<String, _>("id"))
                    .collect::<Result<_, _>>()
                    .map_err(classify)?;
                for id in &ids {
                    Self::history_in(tx, id, status, now, Some(detail)).await?;
                }
                Ok(ids)
            }

            async fn history_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: &str,
                status: &str,
                now: i64,
                detail: Option<&serde_json::Value>,
            ) -> Result<(), StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO outbound_history (outbound_id, status, at_ms, detail) VALUES (",
                );
                qb.push_bind(id.to_string())
                    .push(", ")
                    .push_bind(status.to_string())
                    .push(", ")
                    .push_bind(now)
                    .push(", ")
                    .push_bind(detail.map(json_text))
                    .push(")");
                qb.build().execute(&mut **tx).await.map_err(classify)?;
                Ok(())
            }

            async fn broadcast_counts(
                &self,
                id: &str,
            ) -> Result<BTreeMap<String, i64>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT o.status AS status, s.status AS delivery_status, count(*) AS n",
                );
                qb.push(FROM)
                    .push(" WHERE o.broadcast_id = ")
                    .push_bind(id.to_string())
                    .push(" GROUP BY o.status, s.status");
                let mut counts = BTreeMap::new();
                for row in qb.build().fetch_all(&self.pool).await.map_err(classify)? {
                    let stored: String = row.try_get("status").map_err(classify)?;
                    let delivery: Option<String> = row.try_get("delivery_status").map_err(classify)?;
                    let n: i64 = row.try_get("n").map_err(classify)?;
                    *counts.entry(visible(&stored, delivery.as_deref())).or_insert(0) += n;
                }
                Ok(counts)
            }

            fn broadcast_from_row(
                row: &<$db as sqlx::Database>::Row,
                counts: BTreeMap<String, i64>,
            ) -> Result<BroadcastRecord, StoreError> {
                let get = |e: sqlx::Error| bad_row("broadcasts", e);
                Ok(BroadcastRecord {
                    id: row.try_get("id").map_err(get)?,
                    tenant: row.try_get("tenant").map_err(get)?,
                    channel: row.try_get("channel").map_err(get)?,
                    from: row.try_get("sender_id").map_err(get)?,
                    template: parse_json(row.try_get("template").map_err(get)?)
                        .unwrap_or(serde_json::Value::Null),
                    total: i64::from(row.try_get::<i32, _>("total").map_err(get)?),
                    duplicates: i64::from(row.try_get::<i32, _>("duplicates").map_err(get)?),
                    status: row.try_get("status").map_err(get)?,
                    paused_reason: row.try_get("paused_reason").map_err(get)?,
                    counts,
                    created_ms: row.try_get("created_ms").map_err(get)?,
                    finished_ms: row.try_get("finished_ms").map_err(get)?,
                    trace_id: row.try_get("trace_id").map_err(get)?,
                })
            }

            async fn select_broadcast(&self, id: &str) -> Result<Option<BroadcastRecord>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new("SELECT * FROM broadcasts WHERE id = ");
                qb.push_bind(id.to_string());
                let Some(row) = qb.build().fetch_optional(&self.pool).await.map_err(classify)? else {
                    return Ok(None);
                };
                let counts = self.broadcast_counts(id).await?;
                Self::broadcast_from_row(&row, counts).map(Some)
            }
        }

        impl OutboundStore for SqlStore<$db> {
            fn enqueue<'a>(
                &'a self,
                send: &'a NewSend,
            ) -> BoxFuture<'a, Result<(OutboundRecord, bool), StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let now = crate::store::outbound::now_ms();
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let (record, created) = Self::enqueue_in(&mut tx, send, now).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok((record, created))
                })
            }

            fn create_broadcast<'a>(
                &'a self,
                broadcast: &'a NewBroadcast,
                sends: &'a [NewSend],
            ) -> BoxFuture<'a, Result<(BroadcastRecord, bool), StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let now = crate::store::outbound::now_ms();
                    let spec: &BroadcastSpec = &broadcast.spec;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO broadcasts (id, tenant, channel, sender_id, template, total, duplicates, status, \
                         idempotency_key, trace_id, created_ms, updated_ms) VALUES (",
                    );
                    qb.push_bind(broadcast.id.clone())
                        .push(", ")
                        .push_bind(broadcast.tenant.clone())
                        .push(", ")
                        .push_bind(spec.channel.as_str())
                        .push(", ")
                        .push_bind(spec.from.clone())
                        .push(", ")
                        .push_bind(json_text(&spec.template))
                        .push(", ")
                        .push_bind(spec.recipients.len() as i32)
                        .push(", ")
                        .push_bind(spec.duplicates as i32)
                        .push(", 'running', ")
                        .push_bind(spec.idempotency_key.clone())
                        .push(", ")
                        .push_bind(broadcast.trace_id.clone())
                        .push(", ")
                        .push_bind(now)
                        .push(", ")
                        .push_bind(now)
                        .push(") ON CONFLICT DO NOTHING RETURNING id");
                    let created = qb.build().fetch_optional(&mut *tx).await.map_err(classify)?.is_some();
                    let id = if created {
                        Self::insert_sends(&mut tx, sends, now, false).await?;
                        broadcast.id.clone()
                    } else {
                        let mut qb = QueryBuilder::<$db>::new("SELECT id FROM broadcasts WHERE id = ");
                        qb.push_bind(broadcast.id.clone());
                        if let Some(key) = &spec.idempotency_key {
                            qb.push(" OR (tenant = ")
                                .push_bind(broadcast.tenant.clone())
                                .push(" AND idempotency_key = ")
                                .push_bind(key.clone())
                                .push(")");
                        }
                        let row = qb.build().fetch_one(&mut *tx).await.map_err(classify)?;
                        row.try_get("id").map_err(classify)?
                    };
                    tx.commit().await.map_err(classify)?;
                    let record = self
                        .select_broadcast(&id)
                        .await?
                        .ok_or_else(|| StoreError::Rejected(format!("broadcast {id} vanished")))?;
                    Ok((record, created))
                })
            }

            fn outbound<'a>(
                &'a self,
                id: &'a str,
            ) -> BoxFuture<'a, Result<Option<WithHistory>, StoreError>> {
                Box::pin(async move {
                    let Some(record) = Self::select_outbound(&self.pool, id).await? else {
                        return Ok(None);
                    };
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT status, at_ms, detail FROM outbound_history WHERE outbound_id = ",
                    );
                    qb.push_bind(id.to_string()).push(" ORDER BY id");
                    let mut history = Vec::new();
                    for row in qb.build().fetch_all(&self.pool).await.map_err(classify)? {
                        history.push(HistoryEntry {
                            status: row.try_get("status").map_err(classify)?,
                            at_ms: row.try_get("at_ms").map_err(classify)?,
                            detail: parse_json(row.try_get("detail").map_err(classify)?),
                        });
                    }
                    Ok(Some((record, history)))
                })
            }

            fn outbound_recent(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboundRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(COLUMNS).push(FROM).push(" ORDER BY o.seq DESC LIMIT ").push_bind(limit);
                    self.fetch_records(qb).await
                })
            }

            fn claim<'a>(
                &'a self,
                owner: &'a str,
                now_ms: i64,
                lease_ms: i64,
                limit: i64,
            ) -> BoxFuture<'a, Result<Vec<OutboundRecord>, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET status = 'claimed', lease_owner = ");
                    qb.push_bind(owner.to_string())
                        .push(", lease_until_ms = ")
                        .push_bind(now_ms + lease_ms)
                        .push(", updated_ms = ")
                        .push_bind(now_ms)
                        // Only `queued` rows, walked in `(status, seq)` index
                        // order so the scan stops after `limit` heads however
                        // long the backlog: an OR with expired claims here
                        // made the planner filter and sort the whole backlog
                        // on every claim (a 10,000-send broadcast stalled).
                        // Expired claims go back to `queued` in housekeeping
                        // (`expire_sending`).
                        .push(" WHERE seq IN (SELECT o.seq FROM outbound_messages o WHERE o.status = 'queued' AND o.due_ms <= ")
                        .push_bind(now_ms)
                        .push(" AND NOT EXISTS (SELECT 1 FROM outbound_messages p WHERE p.sender_id = o.sender_id \
                               AND p.recipient = o.recipient AND p.seq < o.seq AND p.status IN ")
                        .push(OPEN)
                        .push(") AND NOT EXISTS (SELECT 1 FROM outbound_halts h WHERE h.tenant = o.tenant) \
                               AND (o.broadcast_id IS NULL OR EXISTS (SELECT 1 FROM broadcasts b \
                               WHERE b.id = o.broadcast_id AND b.status = 'running')) ORDER BY o.seq LIMIT ")
                        .push_bind(limit)
                        .push(if d.name == "postgres" { " FOR UPDATE OF o SKIP LOCKED" } else { "" })
                        .push(") RETURNING seq");
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let seqs: Vec<i64> = qb
                        .build()
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?
                        .iter()
                        .map(|r| r.try_get::<i64, _>("seq"))
                        .collect::<Result<_, _>>()
                        .map_err(classify)?;
                    tx.commit().await.map_err(classify)?;
                    if seqs.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(COLUMNS).push(FROM).push(" WHERE o.seq IN (");
                    let mut sep = qb.separated(", ");
                    for s in &seqs {
                        sep.push_bind(*s);
                    }
                    qb.push(") AND o.lease_owner = ")
                        .push_bind(owner.to_string())
                        .push(" ORDER BY o.seq");
                    self.fetch_records(qb).await
                })
            }

            fn begin_send<'a>(
                &'a self,
                id: &'a str,
                owner: &'a str,
                now_ms: i64,
                lease_ms: i64,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "UPDATE outbound_messages SET status = 'sending', attempts = attempts + 1, lease_until_ms = ",
                    );
                    qb.push_bind(now_ms + lease_ms)
                        .push(", updated_ms = ")
                        .push_bind(now_ms)
                        .push(" WHERE id = ")
                        .push_bind(id.to_string())
                        .push(" AND lease_owner = ")
                        .push_bind(owner.to_string())
                        .push(" AND status = 'claimed' RETURNING attempts");
                    let Some(row) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                        return Ok(false);
                    };
                    let attempt: i32 = row.try_get("attempts").map_err(classify)?;
                    Self::history_in(&mut tx, id, state::SENDING, now_ms, Some(&serde_json::json!({"attempt": attempt}))).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                })
            }

            fn finish<'a>(
                &'a self,
                id: &'a str,
                owner: &'a str,
                finish: &'a Finish,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let now = crate::store::outbound::now_ms();
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET updated_ms = ");
                    qb.push_bind(now);
                    let (status, detail): (&str, Option<serde_json::Value>) = match finish {
                        Finish::Accepted { provider_message_id, wa_id, held, .. } => {
                            let status = if *held { state::HELD } else { state::ACCEPTED };
                            qb.push(", status = ")
                                .push_bind(status)
                                .push(", provider_message_id = ")
                                .push_bind(provider_message_id.clone())
                                .push(", contact_wa_id = ")
                                .push_bind(wa_id.clone())
                                .push(", accepted_ms = ")
                                .push_bind(now)
                                .push(", error = NULL, error_class = NULL, lease_owner = NULL, lease_until_ms = NULL");
                            (status, None)
                        }
                        Finish::Requeue { due_ms, note, error_class, error, refund_attempt } => {
                            if *refund_attempt {
                                qb.push(", attempts = CASE WHEN status = 'sending' AND attempts > 0 THEN attempts - 1 ELSE attempts END");
                            }
                            qb.push(", status = 'queued', due_ms = ")
                                .push_bind(*due_ms)
                                .push(", error_class = ")
                                .push_bind(error_class.clone())
                                .push(", error = ")
                                .push_bind(error.as_ref().map(json_text))
                                .push(", lease_owner = NULL, lease_until_ms = NULL");
                            let mut detail = serde_json::json!({"due_ms": due_ms});
                            if let Some(c) = error_class {
                                detail["error_class"] = serde_json::json!(c);
                            }
                            if let Some(e) = error {
                                detail["error"] = e.clone();
                            }
                            (note, Some(detail))
                        }
                        Finish::Defer { due_ms, error_class, error } => {
                            qb.push(", status = 'deferred', due_ms = ")
                                .push_bind(*due_ms)
                                .push(", error_class = ")
                                .push_bind(error_class.clone())
                                .push(", error = ")
                                .push_bind(json_text(error))
                                .push(", lease_owner = NULL, lease_until_ms = NULL");
                            (state::DEFERRED, Some(serde_json::json!({"due_ms": due_ms, "error_class": error_class, "error": error})))
                        }
                        Finish::Final { status, error_class, error } => {
                            qb.push(", status = ")
                                .push_bind(*status)
                                .push(", error_class = ")
                                .push_bind(error_class.clone())
                                .push(", error = ")
                                .push_bind(json_text(error))
                                .push(", lease_owner = NULL, lease_until_ms = NULL");
                            let mut detail = serde_json::json!({"error": error});
                            if let Some(c) = error_class {
                                detail["error_class"] = serde_json::json!(c);
                            }
                            (status, Some(detail))
                        }
                        Finish::Unknown { error } => {
                            qb.push(", status = 'unknown', error = ")
                                .push_bind(json_text(error));
                            (state::UNKNOWN, Some(serde_json::json!({"error": error})))
                        }
                    };
                    qb.push(" WHERE id = ")
                        .push_bind(id.to_string())
                        .push(" AND lease_owner = ")
                        .push_bind(owner.to_string())
                        .push(" AND status IN ('claimed', 'sending', 'unknown') RETURNING tenant, trace_id, broadcast_id");
                    let Some(row) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                        return Ok(false);
                    };
                    let tenant: String = row.try_get("tenant").map_err(classify)?;
                    let trace: String = row.try_get("trace_id").map_err(classify)?;
                    let broadcast: Option<String> = row.try_get("broadcast_id").map_err(classify)?;
                    Self::history_in(&mut tx, id, status, now, detail.as_ref()).await?;
                    // An approved draft follows its send (broadcast sends
                    // have no draft).
                    if let (None, Some(outcome)) = (&broadcast, SendOutcome::of_send_state(status)) {
                        let class = match finish {
                            Finish::Final { error_class, .. } => error_class.clone(),
                            _ => None,
                        };
                        self.drafts_of_sends_in(&mut tx, &[id.to_string()], Action::SendEnded(outcome), class, now)
                            .await?;
                    }
                    match finish {
                        Finish::Accepted { plan, .. } => {
                            self.write_plan_in(&mut tx, plan).await?;
                        }
                        Finish::Final { status, error, .. } => {
                            let event = failed_event(id, &tenant, &trace, status, error);
                            if self.filter.allows(&event.entity) {
                                Self::log_events(&mut tx, &[event]).await?;
                            }
                        }
                        _ => {}
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                })
            }

            fn expire_sending(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET status = 'unknown', updated_ms = ");
                    qb.push_bind(now_ms)
                        .push(", lease_owner = NULL, error = '{\"reason\":\"sender_lost\"}' WHERE status = 'sending' AND lease_until_ms < ")
                        .push_bind(now_ms)
                        .push(" RETURNING id");
                    // Claimed but never begun (the process stopped or was
                    // too slow): nothing left, so back to the queue. Rows
                    // another process is updating are left for the next round.
                    let mut requeue = QueryBuilder::<$db>::new("UPDATE outbound_messages SET status = 'queued', lease_owner = NULL, lease_until_ms = NULL, updated_ms = ");
                    requeue
                        .push_bind(now_ms)
                        .push(" WHERE seq IN (SELECT seq FROM outbound_messages WHERE status = 'claimed' AND lease_until_ms < ")
                        .push_bind(now_ms)
                        .push(if d.name == "postgres" { " FOR UPDATE SKIP LOCKED" } else { "" })
                        .push(")");
                    requeue.build().execute(&mut *tx).await.map_err(classify)?;
                    let detail = serde_json::json!({"reason": "the sending process stopped with the request in flight"});
                    let ids = Self::update_with_history(&mut tx, qb, state::UNKNOWN, now_ms, &detail).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(ids)
                })
            }

            fn settle_unknown(
                &self,
                now_ms: i64,
                deadline_ms: i64,
                resend_replies: bool,
                resend_broadcasts: bool,
            ) -> BoxFuture<'_, Result<(u64, u64, u64), StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    // A status webhook joined the provider id back (callback
                    // data): Meta has it.
                    let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET status = 'accepted', accepted_ms = ");
                    qb.push_bind(now_ms)
                        .push(", updated_ms = ")
                        .push_bind(now_ms)
                        .push(", error = NULL WHERE status = 'unknown' AND provider_message_id IS NOT NULL RETURNING id");
                    let detail = serde_json::json!({"reason": "a status webhook carried this send's id"});
                    let settled = Self::update_with_history(&mut tx, qb, "settled", now_ms, &detail).await?;
                    self.drafts_of_sends_in(&mut tx, &settled, Action::SendEnded(SendOutcome::Accepted), None, now_ms)
                        .await?;
                    let mut failed_replies = Vec::new();
                    let mut resent = 0;
                    let mut failed = 0;
                    for (broadcasts, resend) in [(false, resend_replies), (true, resend_broadcasts)] {
                        let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET updated_ms = ");
                        qb.push_bind(now_ms);
                        if resend {
                            qb.push(", status = 'queued', due_ms = ").push_bind(now_ms).push(", lease_owner = NULL");
                        } else {
                            qb.push(
                                ", status = 'failed', error_class = 'unknown_outcome', \
                                 error = '{\"reason\":\"unknown_outcome\"}', lease_owner = NULL",
                            );
                        }
                        qb.push(" WHERE status = 'unknown' AND provider_message_id IS NULL AND updated_ms < ")
                            .push_bind(now_ms - deadline_ms)
                            .push(if broadcasts { " AND broadcast_id IS NOT NULL" } else { " AND broadcast_id IS NULL" })
                            .push(" RETURNING id, tenant, trace_id");
                        let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                        for row in rows {
                            let id: String = row.try_get("id").map_err(classify)?;
                            if resend {
                                resent += 1;
                                let detail = serde_json::json!({"reason": "no status webhook before the deadline; policy resend"});
                                Self::history_in(&mut tx, &id, "resend", now_ms, Some(&detail)).await?;
                            } else {
                                failed += 1;
                                if !broadcasts {
                                    failed_replies.push(id.clone());
                                }
                                let error = serde_json::json!({"reason": "unknown_outcome"});
                                Self::history_in(&mut tx, &id, state::FAILED, now_ms, Some(&error)).await?;
                                let tenant: String = row.try_get("tenant").map_err(classify)?;
                                let trace: String = row.try_get("trace_id").map_err(classify)?;
                                let event = failed_event(&id, &tenant, &trace, state::FAILED, &error);
                                if self.filter.allows(&event.entity) {
                                    Self::log_events(&mut tx, &[event]).await?;
                                }
                            }
                        }
                    }
                    self.drafts_of_sends_in(
                        &mut tx,
                        &failed_replies,
                        Action::SendEnded(SendOutcome::Failed),
                        Some("unknown_outcome".into()),
                        now_ms,
                    )
                    .await?;
                    tx.commit().await.map_err(classify)?;
                    Ok((settled.len() as u64, resent, failed))
                })
            }

            fn last_inbound<'a>(
                &'a self,
                tenant: &'a str,
                channel: &'a str,
                business_id: &'a str,
                contact: &'a str,
            ) -> BoxFuture<'a, Result<Option<chrono::DateTime<chrono::Utc>>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT m.sent_at FROM messages m JOIN conversations c ON c.id = m.conversation_id \
                         JOIN contacts k ON k.id = c.contact_id WHERE m.tenant = ",
                    );
                    qb.push_bind(tenant.to_string())
                        .push(" AND m.channel = ")
                        .push_bind(channel.to_string())
                        .push(" AND c.business_id = ")
                        .push_bind(business_id.to_string())
                        .push(" AND k.external_id = ")
                        .push_bind(contact.to_string())
                        .push(" AND m.direction = 'inbound' ORDER BY m.sent_at DESC LIMIT 1");
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.map(|r| r.try_get("sent_at")).transpose().map_err(classify)
                })
            }

            fn halt<'a>(&'a self, halt: &'a Halt) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO outbound_halts (tenant, error_class, error, token_fingerprint, halted_ms) VALUES (",
                    );
                    qb.push_bind(halt.tenant.clone())
                        .push(", ")
                        .push_bind(halt.error_class.clone())
                        .push(", ")
                        .push_bind(json_text(&halt.error))
                        .push(", ")
                        .push_bind(halt.token_fingerprint.clone())
                        .push(", ")
                        .push_bind(halt.halted_ms)
                        .push(") ON CONFLICT (tenant) DO NOTHING");
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(())
                })
            }

            fn lift_halt<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM outbound_halts WHERE tenant = ");
                    qb.push_bind(tenant.to_string());
                    Ok(qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected() > 0)
                })
            }

            fn halts(&self) -> BoxFuture<'_, Result<Vec<Halt>, StoreError>> {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT tenant, error_class, error, token_fingerprint, halted_ms FROM outbound_halts ORDER BY tenant",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            Ok(Halt {
                                tenant: r.try_get("tenant")?,
                                error_class: r.try_get("error_class")?,
                                error: parse_json(r.try_get("error")?).unwrap_or(serde_json::Value::Null),
                                token_fingerprint: r.try_get("token_fingerprint")?,
                                halted_ms: r.try_get("halted_ms")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn broadcast<'a>(
                &'a self,
                id: &'a str,
            ) -> BoxFuture<'a, Result<Option<BroadcastRecord>, StoreError>> {
                Box::pin(self.select_broadcast(id))
            }

            fn broadcasts(&self, limit: i64) -> BoxFuture<'_, Result<Vec<BroadcastRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT * FROM broadcasts ORDER BY created_ms DESC, id DESC LIMIT ");
                    qb.push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    let mut out = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let id: String = row.try_get("id").map_err(classify)?;
                        let counts = self.broadcast_counts(&id).await?;
                        out.push(Self::broadcast_from_row(row, counts)?);
                    }
                    Ok(out)
                })
            }

            fn set_broadcast_paused<'a>(
                &'a self,
                id: &'a str,
                paused: Option<&'a str>,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let now = crate::store::outbound::now_ms();
                    let mut qb = QueryBuilder::<$db>::new("UPDATE broadcasts SET updated_ms = ");
                    qb.push_bind(now);
                    match paused {
                        Some(reason) => {
                            qb.push(", status = 'paused', paused_reason = ")
                                .push_bind(reason.to_string())
                                .push(" WHERE status = 'running'");
                        }
                        None => {
                            qb.push(", status = 'running', paused_reason = NULL WHERE status = 'paused'");
                        }
                    }
                    qb.push(" AND id = ").push_bind(id.to_string());
                    Ok(qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected() > 0)
                })
            }

            fn record_deliveries(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Delivered>, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT o.id, o.accepted_ms, s.at FROM outbound_messages o JOIN message_status_current s \
                         ON s.tenant = o.tenant AND s.channel = o.channel AND s.provider_message_id = o.provider_message_id \
                         WHERE o.delivered_ms IS NULL AND o.status IN ('accepted', 'held') \
                         AND s.status IN ('delivered', 'read') LIMIT ",
                    );
                    qb.push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    let mut out = Vec::with_capacity(rows.len());
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    for row in rows {
                        let id: String = row.try_get("id").map_err(classify)?;
                        let accepted: Option<i64> = row.try_get("accepted_ms").map_err(classify)?;
                        let at: chrono::DateTime<chrono::Utc> = row.try_get("at").map_err(classify)?;
                        let delivered = at.timestamp_millis();
                        let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET delivered_ms = ");
                        qb.push_bind(delivered)
                            .push(" WHERE id = ")
                            .push_bind(id.clone())
                            .push(" AND delivered_ms IS NULL");
                        let changed = qb.build().execute(&mut *tx).await.map_err(classify)?.rows_affected();
                        if changed == 1 {
                            out.push(Delivered { id, accepted_ms: accepted.unwrap_or(delivered), delivered_ms: delivered });
                        }
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(out)
                })
            }

            fn release_deferred(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE outbound_messages SET status = 'queued', updated_ms = ");
                    qb.push_bind(now_ms)
                        .push(" WHERE status = 'deferred' AND due_ms <= ")
                        .push_bind(now_ms)
                        .push(" RETURNING id");
                    let detail = serde_json::json!({"reason": "deferred_retry"});
                    let ids = Self::update_with_history(&mut tx, qb, state::QUEUED, now_ms, &detail).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(ids.len() as u64)
                })
            }

            fn finish_broadcasts(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE broadcasts SET status = 'finished', finished_ms = ");
                    qb.push_bind(now_ms)
                        .push(", updated_ms = ")
                        .push_bind(now_ms)
                        .push(
                            " WHERE status = 'running' AND NOT EXISTS (SELECT 1 FROM outbound_messages o \
                             WHERE o.broadcast_id = broadcasts.id AND (o.status = 'deferred' OR o.status IN ",
                        )
                        .push(OPEN)
                        .push("))");
                    Ok(qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected())
                })
            }

            fn outbound_stats(&self) -> BoxFuture<'_, Result<OutboundStats, StoreError>> {
                Box::pin(async move {
                    let mut stats = OutboundStats::default();
                    let rows = sqlx::query("SELECT status, count(*) AS n FROM outbound_messages GROUP BY status")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?;
                    for r in rows {
                        stats.by_status.insert(r.try_get("status").map_err(classify)?, r.try_get("n").map_err(classify)?);
                    }
                    let rows = sqlx::query(
                        "SELECT sender_id, count(*) AS n FROM outbound_messages WHERE status IN ('queued', 'claimed') \
                         GROUP BY sender_id",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(classify)?;
                    for r in rows {
                        stats
                            .queued_by_sender
                            .insert(r.try_get("sender_id").map_err(classify)?, r.try_get("n").map_err(classify)?);
                    }
                    let rows = sqlx::query("SELECT status, count(*) AS n FROM broadcasts GROUP BY status")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?;
                    for r in rows {
                        stats.broadcasts.insert(r.try_get("status").map_err(classify)?, r.try_get("n").map_err(classify)?);
                    }
                    stats.halts = self.halts().await?;
                    Ok(stats)
                })
            }

            fn outbound_dead(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboundRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(COLUMNS)
                        .push(FROM)
                        .push(" WHERE o.status = ")
                        .push_bind(state::DEAD_LETTERED)
                        .push(" ORDER BY o.seq LIMIT ")
                        .push_bind(limit);
                    self.fetch_records(qb).await
                })
            }

            fn revive_send<'a>(
                &'a self,
                id: &'a str,
                now_ms: i64,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "UPDATE outbound_messages SET status = 'queued', attempts = 0, lease_owner = NULL, \
                         lease_until_ms = NULL, due_ms = ",
                    );
                    qb.push_bind(now_ms)
                        .push(", updated_ms = ")
                        .push_bind(now_ms)
                        .push(" WHERE id = ")
                        .push_bind(id.to_string())
                        .push(" AND status = ")
                        .push_bind(state::DEAD_LETTERED)
                        .push(" RETURNING broadcast_id, error_class");
                    let Some(row) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                        return Ok(false);
                    };
                    let broadcast: Option<String> = row.try_get("broadcast_id").map_err(classify)?;
                    let class: Option<String> = row.try_get("error_class").map_err(classify)?;
                    let detail = serde_json::json!({"from": "dlq", "error_class": class});
                    Self::history_in(&mut tx, id, "replayed", now_ms, Some(&detail)).await?;
                    Self::history_in(&mut tx, id, state::QUEUED, now_ms, None).await?;
                    if broadcast.is_none() {
                        self.drafts_of_sends_in(&mut tx, &[id.to_string()], Action::SendRevived, None, now_ms)
                            .await?;
                    }
                    if let Some(b) = broadcast {
                        let mut qb = QueryBuilder::<$db>::new(
                            "UPDATE broadcasts SET status = 'running', finished_ms = NULL, updated_ms = ",
                        );
                        qb.push_bind(now_ms)
                            .push(" WHERE status = 'finished' AND id = ")
                            .push_bind(b);
                        qb.build().execute(&mut *tx).await.map_err(classify)?;
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                })
            }

            fn discard_dead<'a>(
                &'a self,
                ids: &'a [String],
                now_ms: i64,
            ) -> BoxFuture<'a, Result<u64, StoreError>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(0);
                    }
                    let d = <$db as Backend>::DIALECT;
                    let mut tx = self.pool.begin_with(d.write_begin).await.map_err(classify)?;
                    let mut n = 0;
                    for chunk in ids.chunks(CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "UPDATE outbound_messages SET status = 'failed', error_class = 'discarded', updated_ms = ",
                        );
                        qb.push_bind(now_ms).push(" WHERE status = ").push_bind(state::DEAD_LETTERED).push(" AND id IN (");
                        let mut sep = qb.separated(", ");
                        for id in chunk {
                            sep.push_bind(id.clone());
                        }
                        qb.push(") RETURNING id");
                        let detail = serde_json::json!({"error_class": "discarded", "reason": "removed from the DLQ"});
                        let done = Self::update_with_history(&mut tx, qb, state::FAILED, now_ms, &detail).await?;
                        n += done.len() as u64;
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(n)
                })
            }
        }
    };
}

for_each_backend!(impl_sends);
