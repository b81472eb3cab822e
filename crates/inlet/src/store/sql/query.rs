//! Queries: raw events (replay), messages, current statuses, traces, row
//! counts and recent activity, dead letters.

use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use super::outbox::EVENTS_CURSOR;
use super::{classify, for_each_backend, SqlStore};
use crate::dlq::letter::DeadLetter;
use crate::envelope::{RawEvent, Source};
use crate::store::{
    Activity, Counts, CurrentStatus, RawFilter, StoreError, StoredDeadLetter, StoredMessage,
};

const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.channel, m.conversation_id, c.external_id AS contact_external_id, \
 c.name AS contact_name, m.provider_message_id, m.direction, m.kind, m.message_type, m.text, m.media, \
 m.reply_to, m.forwarded, m.referral, m.details, m.sent_at, m.trace_id, s.status AS status";

const MESSAGE_FROM: &str = " FROM messages m JOIN contacts c ON c.id = m.contact_id \
 LEFT JOIN message_status_current s ON s.tenant = m.tenant AND s.channel = m.channel \
 AND s.provider_message_id = m.provider_message_id";

/// Appends the `outbox` column: entries not yet relayed to Redis, outbox
/// rows plus event-log rows past the relay cursor.
fn push_unrelayed<DB: sqlx::Database>(qb: &mut QueryBuilder<'_, DB>)
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    qb.push(
        "(SELECT count(*) FROM outbox) + (SELECT count(*) FROM event_log e \
         JOIN relay_cursors r ON r.name = ",
    )
    .push_bind(EVENTS_CURSOR)
    .push(" WHERE (e.tx, e.seq) > (r.tx, r.seq)) AS outbox");
}

fn headers_from_json(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

macro_rules! impl_queries {
    ($db:ty) => {
        impl SqlStore<$db> {
            pub(super) async fn select_raw_events(
                &self,
                filter: &RawFilter,
                after: Option<Uuid>,
                limit: i64,
            ) -> Result<Vec<RawEvent>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT trace_id, tenant, source, received_at, headers, body FROM raw_events WHERE 1 = 1",
                );
                if let Some(from) = filter.from {
                    qb.push(" AND received_at >= ").push_bind(from);
                }
                if let Some(to) = filter.to {
                    qb.push(" AND received_at < ").push_bind(to);
                }
                if let Some(source) = filter.source {
                    qb.push(" AND source = ").push_bind(source.as_str());
                }
                if let Some(trace) = filter.trace_id {
                    qb.push(" AND trace_id = ").push_bind(trace.to_string());
                }
                // UUIDv7 trace ids sort by time, so they page in order.
                if let Some(after) = after {
                    qb.push(" AND trace_id > ").push_bind(after.to_string());
                }
                qb.push(" ORDER BY trace_id LIMIT ").push_bind(limit);
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter()
                    .map(Self::raw_from_row)
                    .collect::<Result<_, _>>()
                    .map_err(classify)
            }

            pub(super) async fn select_messages(
                &self,
                conversation_id: Option<i64>,
                limit: i64,
            ) -> Result<Vec<StoredMessage>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new("SELECT ");
                qb.push(MESSAGE_COLUMNS).push(MESSAGE_FROM);
                if let Some(id) = conversation_id {
                    qb.push(" WHERE m.conversation_id = ").push_bind(id);
                }
                qb.push(" ORDER BY m.sent_at DESC, m.id DESC LIMIT ").push_bind(limit);
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter()
                    .map(Self::message_from_row)
                    .collect::<Result<_, _>>()
                    .map_err(classify)
            }

            pub(super) async fn select_message_by_provider_id(
                &self,
                provider_message_id: &str,
            ) -> Result<Option<StoredMessage>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new("SELECT ");
                qb.push(MESSAGE_COLUMNS)
                    .push(MESSAGE_FROM)
                    .push(" WHERE m.provider_message_id = ")
                    .push_bind(provider_message_id)
                    .push(" ORDER BY m.id LIMIT 1");
                let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                row.as_ref()
                    .map(Self::message_from_row)
                    .transpose()
                    .map_err(classify)
            }

            pub(super) async fn select_current_status(
                &self,
                tenant: &str,
                provider_message_id: &str,
            ) -> Result<Option<CurrentStatus>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT status, at, errors FROM message_status_current WHERE tenant = ",
                );
                qb.push_bind(tenant)
                    .push(" AND provider_message_id = ")
                    .push_bind(provider_message_id);
                let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                row.map(|r| {
                    Ok(CurrentStatus {
                        status: r.try_get("status")?,
                        at: r.try_get("at")?,
                        errors: r.try_get::<Json<serde_json::Value>, _>("errors")?.0,
                    })
                })
                .transpose()
                .map_err(|e: sqlx::Error| classify(e))
            }

            pub(super) async fn select_traces_of_provider_id(
                &self,
                provider_message_id: &str,
            ) -> Result<Vec<String>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT trace_id FROM messages WHERE provider_message_id = ",
                );
                qb.push_bind(provider_message_id)
                    .push(" UNION SELECT trace_id FROM message_statuses WHERE provider_message_id = ")
                    .push_bind(provider_message_id);
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>("trace_id"))
                    .collect::<Result<_, _>>()
                    .map_err(classify)
            }

            pub(super) async fn select_counts(&self) -> Result<Counts, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT (SELECT count(*) FROM raw_events) AS raw_events, \
                     (SELECT count(*) FROM contacts) AS contacts, \
                     (SELECT count(*) FROM conversations) AS conversations, \
                     (SELECT count(*) FROM messages) AS messages, \
                     (SELECT count(*) FROM message_statuses) AS statuses, \
                     (SELECT count(*) FROM page_changes) AS page_changes, \
                     (SELECT count(*) FROM dead_letters) AS dead_letters, ",
                );
                push_unrelayed(&mut qb);
                let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                let get = |name: &str| row.try_get::<i64, _>(name).map_err(classify);
                Ok(Counts {
                    raw_events: get("raw_events")?,
                    contacts: get("contacts")?,
                    conversations: get("conversations")?,
                    messages: get("messages")?,
                    statuses: get("statuses")?,
                    page_changes: get("page_changes")?,
                    dead_letters: get("dead_letters")?,
                    outbox: get("outbox")?,
                })
            }

            pub(super) async fn select_activity(&self) -> Result<Activity, StoreError> {
                // Index-backed newest row, not max() over a cast: both
                // databases answer from raw_events_received_at.
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT (SELECT received_at FROM raw_events ORDER BY received_at DESC LIMIT 1) \
                     AS last_received_at, \
                     (SELECT count(*) FROM dead_letters) AS dead_letters, \
                     (SELECT count(*) FROM bus_pending) AS bus_pending, ",
                );
                push_unrelayed(&mut qb);
                let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                Ok(Activity {
                    last_received_at: row.try_get("last_received_at").map_err(classify)?,
                    dead_letters: row.try_get("dead_letters").map_err(classify)?,
                    outbox: row.try_get("outbox").map_err(classify)?,
                    bus_pending: row.try_get("bus_pending").map_err(classify)?,
                })
            }

            pub(super) async fn select_dead_letters(&self, limit: i64) -> Result<Vec<StoredDeadLetter>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new("SELECT * FROM dead_letters ORDER BY id LIMIT ");
                qb.push_bind(limit);
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter()
                    .map(Self::dead_letter_from_row)
                    .collect::<Result<_, _>>()
                    .map_err(classify)
            }

            fn message_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredMessage, sqlx::Error> {
                Ok(StoredMessage {
                    id: row.try_get("id")?,
                    tenant: row.try_get("tenant")?,
                    channel: row.try_get("channel")?,
                    conversation_id: row.try_get("conversation_id")?,
                    contact_external_id: row.try_get("contact_external_id")?,
                    contact_name: row.try_get("contact_name")?,
                    provider_message_id: row.try_get("provider_message_id")?,
                    direction: row.try_get("direction")?,
                    kind: row.try_get("kind")?,
                    message_type: row.try_get("message_type")?,
                    text: row.try_get("text")?,
                    media: row.try_get::<Json<serde_json::Value>, _>("media")?.0,
                    reply_to: row.try_get("reply_to")?,
                    forwarded: row.try_get("forwarded")?,
                    referral: row
                        .try_get::<Option<Json<serde_json::Value>>, _>("referral")?
                        .map(|j| j.0),
                    details: row.try_get::<Json<serde_json::Value>, _>("details")?.0,
                    sent_at: row.try_get("sent_at")?,
                    trace_id: row.try_get("trace_id")?,
                    status: row.try_get("status")?,
                })
            }

            fn dead_letter_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredDeadLetter, sqlx::Error> {
                // dead_letters keeps the envelope under raw_events' column names.
                let attempts: i64 = row.try_get("attempts")?;
                Ok(StoredDeadLetter {
                    id: row.try_get("id")?,
                    letter: DeadLetter {
                        event: Self::raw_from_row(row)?,
                        reason: row.try_get("reason")?,
                        error: row.try_get("error")?,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        stage: row.try_get("stage")?,
                        failed_at: row.try_get("failed_at")?,
                    },
                })
            }

            fn raw_from_row(row: &<$db as sqlx::Database>::Row) -> Result<RawEvent, sqlx::Error> {
                let trace: String = row.try_get("trace_id")?;
                let source: String = row.try_get("source")?;
                let headers: Json<serde_json::Value> = row.try_get("headers")?;
                let body: Vec<u8> = row.try_get("body")?;
                Ok(RawEvent {
                    trace_id: Uuid::parse_str(&trace).unwrap_or_default(),
                    source: Source::parse(&source).unwrap_or(Source::Whatsapp),
                    tenant: row.try_get("tenant")?,
                    received_at: row.try_get("received_at")?,
                    headers: headers_from_json(&headers.0),
                    body: body.into(),
                })
            }
        }
    };
}

for_each_backend!(impl_queries);
