//! The read model: the queries behind the JSON cache and the read API.
//!
//! [`ReadModel`] is implemented for [`SqlStore`] on Postgres and SQLite from
//! one body of SQL, like the write side in [`super::sql`]; what differs (how
//! a timestamp becomes a UTC day, the lowest timestamp, how a read sees one
//! snapshot) comes from the backend's [`Dialect`]. Everything the
//! analytics need is fetched as small aggregates; the KPIs themselves are
//! computed by pure code in [`crate::cache::analytics`].

use chrono::{DateTime, Duration, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use super::sql::{classify, for_each_backend, Backend, Dialect, SqlStore};
use super::StoreError;
use crate::model::display_of;

/// The customer of a conversation (or, for a WhatsApp group, the group),
/// as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactBrief {
    /// Contact row id.
    pub id: i64,
    /// Channel-scoped id (wa_id, BSUID, PSID, IGSID, group id).
    pub external_id: String,
    /// Display name, when known.
    pub name: Option<String>,
    /// WhatsApp username, when known.
    #[serde(default)]
    pub username: Option<String>,
    /// How to show the contact without its phone number or BSUID:
    /// `@username`, else the masked phone number, else the masked id
    /// ([`crate::model::display_of`]).
    #[serde(default)]
    pub display: String,
}

/// A WhatsApp group conversation: the group and who is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group id.
    pub id: String,
    /// Its latest subject, when a group webhook set one.
    pub subject: Option<String>,
    /// Participants in the group now (senders, people added or joining,
    /// minus those removed or leaving).
    pub participants: Vec<ContactBrief>,
}

/// The latest message of a conversation, as a preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagePreview {
    /// Message row id.
    pub id: i64,
    /// Provider id.
    pub provider_message_id: String,
    /// `inbound` / `outbound`.
    pub direction: String,
    /// Coarse kind.
    pub kind: String,
    /// Fine type.
    pub message_type: String,
    /// The text shortened to [`PREVIEW_CHARS`] characters, or `[type]` for a
    /// message without text.
    pub preview: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}

/// The latest outbound message of a conversation and its current status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundState {
    /// Message row id.
    pub id: i64,
    /// Provider id.
    pub provider_message_id: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Current status (`sent`, `delivered`, `read`, `failed`), when any
    /// receipt arrived.
    pub status: Option<String>,
    /// When that status happened.
    pub status_at: Option<DateTime<Utc>>,
}

/// One conversation as listed in `conversations.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// Conversation row id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// `whatsapp`, `messenger`, `instagram`.
    pub channel: String,
    /// The business endpoint (WhatsApp phone number id, Page or IG account).
    pub business_id: String,
    /// The customer (for a group conversation, the group's own row).
    pub contact: ContactBrief,
    /// Set for a WhatsApp group conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupInfo>,
    /// First message.
    pub started_at: DateTime<Utc>,
    /// Latest message (last activity).
    pub last_activity_at: DateTime<Utc>,
    /// Latest message.
    pub last_message: Option<MessagePreview>,
    /// Inbound messages after the latest outbound one (messages imported
    /// from a `history` webhook never count).
    pub unread_count: i64,
    /// Latest outbound message and its current status.
    pub last_outbound: Option<OutboundState>,
}

/// One message of a conversation file, with its current status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationMessage {
    /// Message row id.
    pub id: i64,
    /// Provider id.
    pub provider_message_id: String,
    /// `inbound` / `outbound`.
    pub direction: String,
    /// Coarse kind.
    pub kind: String,
    /// Fine type.
    pub message_type: String,
    /// Text, caption, title, emoji.
    pub text: Option<String>,
    /// Media references.
    pub media: serde_json::Value,
    /// Replied-to provider id.
    pub reply_to: Option<String>,
    /// Forwarded flag.
    pub forwarded: bool,
    /// Ad / link referral.
    pub referral: Option<serde_json::Value>,
    /// Type-specific details.
    pub details: serde_json::Value,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Current delivery status, when receipts exist.
    pub status: Option<String>,
    /// When that status happened.
    pub status_at: Option<DateTime<Utc>>,
    /// Provider errors of a `failed` status.
    pub status_errors: Option<serde_json::Value>,
    /// Download state of each attachment Inlet keeps (`pending`,
    /// `stored` with digest, size and MIME type, `failed` with a reason):
    /// served by `GET /api/media/{id}?index=N` once stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_state: Vec<MediaState>,
}

/// The download state of one attachment, as the conversation file shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaState {
    /// Position in the message's `media` array.
    pub index: i32,
    /// `pending`, `stored`, `failed` or `dead_lettered`.
    pub state: String,
    /// Hex SHA-256 of the stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Stored size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One contact as listed in `contacts.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactSummary {
    /// Contact row id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Channel.
    pub channel: String,
    /// Channel-scoped id.
    pub external_id: String,
    /// Display name, when known.
    pub name: Option<String>,
    /// WhatsApp username, when known.
    #[serde(default)]
    pub username: Option<String>,
    /// `@username`, else the masked phone number, else the masked id.
    #[serde(default)]
    pub display: String,
    /// First activity.
    pub first_seen_at: DateTime<Utc>,
    /// Latest activity.
    pub last_seen_at: DateTime<Utc>,
}

/// Messages of one UTC day, channel and direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayChannelCount {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Channel.
    pub channel: String,
    /// Direction.
    pub direction: String,
    /// Messages.
    pub count: i64,
}

/// A conversation's first inbound message and the first outbound after it.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstResponse {
    /// Conversation row id.
    pub conversation_id: i64,
    /// First inbound message.
    pub first_inbound_at: DateTime<Utc>,
    /// First outbound message after it, if any.
    pub first_outbound_at: Option<DateTime<Utc>>,
}

/// The aggregates the analytics summary is computed from, for the window
/// `[from, now]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryRows {
    /// Messages sent in the window, by day, channel and direction.
    pub messages_per_day: Vec<DayChannelCount>,
    /// Current statuses whose time falls in the window: (status, count).
    pub outbound_statuses: Vec<(String, i64)>,
    /// Errors of `failed` current statuses in the window: (errors JSON, how
    /// many rows carry exactly these errors).
    pub failure_errors: Vec<(serde_json::Value, i64)>,
    /// Conversations whose first inbound message falls in the window.
    pub first_responses: Vec<FirstResponse>,
    /// Conversations with a message in `[now - 24 h, now]`.
    pub active_24h: i64,
    /// Conversations with a message in `[now - 7 d, now]`.
    pub active_7d: i64,
    /// Contacts first seen in the window, by day.
    pub new_contacts_per_day: Vec<(String, i64)>,
    /// Leads in the window (page changes of kind `lead`, with the form and
    /// campaign of their fetched lead when known): (day, form, campaign,
    /// count).
    pub leads_per_day: Vec<(String, Option<String>, Option<String>, i64)>,
    /// Leads in the window, and those whose contact has a conversation.
    pub lead_conversions: (i64, i64),
    /// Ad spend in the window: (date, currency, campaign id, micro-units),
    /// from the synced ad insights.
    pub ad_spend: Vec<(String, Option<String>, String, i64)>,
}

/// Receipts stored after a cursor, mapped to the conversation they concern.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusChanges {
    /// `(status row id, conversation id)`; the conversation is `None` for a
    /// receipt of a contact without a conversation.
    pub rows: Vec<(i64, Option<i64>)>,
}

/// Characters kept in a [`MessagePreview`].
pub const PREVIEW_CHARS: usize = 120;

/// The preview text of a message.
pub fn preview(text: Option<&str>, message_type: &str) -> String {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) if t.chars().count() > PREVIEW_CHARS => {
            let mut s: String = t.chars().take(PREVIEW_CHARS - 1).collect();
            s.push('…');
            s
        }
        Some(t) => t.to_string(),
        None => format!("[{message_type}]"),
    }
}

/// Queries of the read side. Every method is one or a few round trips.
pub trait ReadModel: Send + Sync {
    /// The most recently active conversations, newest first.
    fn conversations(
        &self,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<ConversationSummary>, StoreError>>;
    /// One conversation and its latest `limit` messages (oldest first), read
    /// from one snapshot so the header (unread count, last message) and the
    /// timeline always agree; `None` when the conversation does not exist.
    fn conversation_page(
        &self,
        id: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Option<ConversationPage>, StoreError>>;
    /// The most recently seen contacts, newest first.
    fn contacts(&self, limit: i64) -> BoxFuture<'_, Result<Vec<ContactSummary>, StoreError>>;
    /// The aggregates of the analytics summary over `[from, now]`.
    fn summary_rows(
        &self,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<SummaryRows, StoreError>>;
    /// Highest receipt row id (0 when there is none).
    fn max_status_id(&self) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// Receipts with an id above `after`, oldest first, at most `limit`.
    fn status_changes(
        &self,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<StatusChanges, StoreError>>;
}

/// The conversation list query. A conversation without outbound messages
/// compares with the dialect's lowest timestamp. Unread = inbound messages
/// after the newest outbound one (one index lookup and one range count with
/// `messages_direction_timeline`).
fn conversation_select(d: &Dialect) -> String {
    format!(
        "SELECT v.id, v.tenant, v.channel, v.business_id, v.started_at, v.group_id, v.subject, \
 v.last_message_at, c.id AS contact_id, c.external_id AS contact_external_id, c.name AS contact_name, \
 c.username AS contact_username, c.wa_id AS contact_wa_id, \
 (SELECT count(*) FROM messages i WHERE i.conversation_id = v.id AND i.direction = 'inbound' \
   AND NOT i.history AND i.sent_at > COALESCE((SELECT max(o.sent_at) FROM messages o WHERE o.conversation_id = v.id \
     AND o.direction = 'outbound'), {floor})) AS unread_count, \
 (SELECT m.id FROM messages m WHERE m.conversation_id = v.id \
   ORDER BY m.sent_at DESC, m.id DESC LIMIT 1) AS last_message_id, \
 (SELECT m.id FROM messages m WHERE m.conversation_id = v.id AND m.direction = 'outbound' \
   ORDER BY m.sent_at DESC, m.id DESC LIMIT 1) AS last_outbound_id \
 FROM conversations v JOIN contacts c ON c.id = v.contact_id",
        floor = d.min_timestamp
    )
}

const STATUS_JOIN: &str = " LEFT JOIN message_status_current s ON s.tenant = m.tenant \
 AND s.channel = m.channel AND s.provider_message_id = m.provider_message_id";

/// A conversation with its latest messages, as one consistent read.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationPage {
    /// The conversation as listed.
    pub conversation: ConversationSummary,
    /// Its latest messages, oldest first.
    pub messages: Vec<ConversationMessage>,
}

/// A conversation row before its last messages are attached.
struct ConversationHead {
    summary: ConversationSummary,
    last_message_id: Option<i64>,
    last_outbound_id: Option<i64>,
}

/// A message row with its status, as fetched for previews.
struct PreviewRow {
    id: i64,
    provider_message_id: String,
    direction: String,
    kind: String,
    message_type: String,
    text: Option<String>,
    sent_at: DateTime<Utc>,
    status: Option<String>,
    status_at: Option<DateTime<Utc>>,
}

fn attach(heads: Vec<ConversationHead>, rows: Vec<PreviewRow>) -> Vec<ConversationSummary> {
    let by_id: std::collections::HashMap<i64, PreviewRow> =
        rows.into_iter().map(|r| (r.id, r)).collect();
    heads
        .into_iter()
        .map(|h| {
            let mut s = h.summary;
            s.last_message =
                h.last_message_id
                    .and_then(|id| by_id.get(&id))
                    .map(|r| MessagePreview {
                        id: r.id,
                        provider_message_id: r.provider_message_id.clone(),
                        direction: r.direction.clone(),
                        kind: r.kind.clone(),
                        message_type: r.message_type.clone(),
                        preview: preview(r.text.as_deref(), &r.message_type),
                        sent_at: r.sent_at,
                    });
            s.last_outbound =
                h.last_outbound_id
                    .and_then(|id| by_id.get(&id))
                    .map(|r| OutboundState {
                        id: r.id,
                        provider_message_id: r.provider_message_id.clone(),
                        sent_at: r.sent_at,
                        status: r.status.clone(),
                        status_at: r.status_at,
                    });
            s
        })
        .collect()
}

macro_rules! impl_read_model {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// A read-only transaction whose queries all see one snapshot.
            async fn snapshot(&self) -> Result<sqlx::Transaction<'static, $db>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(classify)?;
                let snapshot = <$db as Backend>::DIALECT.snapshot;
                if !snapshot.is_empty() {
                    sqlx::query(snapshot)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                Ok(tx)
            }

            /// Fills each message's `media_state` from `message_media`.
            async fn attach_media_state(
                tx: &mut sqlx::Transaction<'static, $db>,
                messages: &mut [ConversationMessage],
            ) -> Result<(), StoreError> {
                if messages.is_empty() {
                    return Ok(());
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT message_id, idx, state, sha256, bytes, mime_type, reason FROM message_media \
                     WHERE message_id IN (",
                );
                let mut sep = qb.separated(", ");
                for m in messages.iter() {
                    sep.push_bind(m.id);
                }
                qb.push(") ORDER BY message_id, idx");
                let rows = qb.build().fetch_all(&mut **tx).await.map_err(classify)?;
                let mut by_message: std::collections::HashMap<i64, Vec<MediaState>> =
                    std::collections::HashMap::new();
                for r in rows {
                    let id: i64 = r.try_get("message_id").map_err(classify)?;
                    by_message.entry(id).or_default().push(MediaState {
                        index: r.try_get("idx").map_err(classify)?,
                        state: r.try_get("state").map_err(classify)?,
                        sha256: r.try_get("sha256").map_err(classify)?,
                        bytes: r.try_get("bytes").map_err(classify)?,
                        mime_type: r.try_get("mime_type").map_err(classify)?,
                        reason: r.try_get("reason").map_err(classify)?,
                    });
                }
                for m in messages.iter_mut() {
                    if let Some(states) = by_message.remove(&m.id) {
                        m.media_state = states;
                    }
                }
                Ok(())
            }

            async fn conversation_heads(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: Option<i64>,
                limit: i64,
            ) -> Result<Vec<ConversationSummary>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(conversation_select(<$db as Backend>::DIALECT));
                if let Some(id) = id {
                    qb.push(" WHERE v.id = ").push_bind(id);
                }
                qb.push(" ORDER BY v.last_message_at DESC, v.id DESC LIMIT ")
                    .push_bind(limit);
                let rows = qb.build().fetch_all(&mut *conn).await.map_err(classify)?;
                let mut heads = rows
                    .iter()
                    .map(|r| {
                        let external_id: String = r.try_get("contact_external_id")?;
                        let username: Option<String> = r.try_get("contact_username")?;
                        let wa_id: Option<String> = r.try_get("contact_wa_id")?;
                        let group_id: Option<String> = r.try_get("group_id")?;
                        Ok(ConversationHead {
                            summary: ConversationSummary {
                                id: r.try_get("id")?,
                                tenant: r.try_get("tenant")?,
                                channel: r.try_get("channel")?,
                                business_id: r.try_get("business_id")?,
                                contact: ContactBrief {
                                    id: r.try_get("contact_id")?,
                                    display: display_of(username.as_deref(), wa_id.as_deref(), &external_id),
                                    external_id,
                                    name: r.try_get("contact_name")?,
                                    username,
                                },
                                group: match group_id {
                                    Some(id) => Some(GroupInfo {
                                        id,
                                        subject: r.try_get("subject")?,
                                        participants: Vec::new(),
                                    }),
                                    None => None,
                                },
                                started_at: r.try_get("started_at")?,
                                last_activity_at: r.try_get("last_message_at")?,
                                last_message: None,
                                unread_count: r.try_get("unread_count")?,
                                last_outbound: None,
                            },
                            last_message_id: r.try_get("last_message_id")?,
                            last_outbound_id: r.try_get("last_outbound_id")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(classify)?;
                Self::attach_participants(&mut *conn, &mut heads).await?;
                let ids: Vec<i64> = heads
                    .iter()
                    .flat_map(|h| [h.last_message_id, h.last_outbound_id])
                    .flatten()
                    .collect();
                let mut previews = Vec::new();
                for chunk in ids.chunks(400) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT m.id, m.provider_message_id, m.direction, m.kind, m.message_type, m.text, \
                         m.sent_at, s.status AS status, s.at AS status_at FROM messages m",
                    );
                    qb.push(STATUS_JOIN).push(" WHERE m.id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    let rows = qb.build().fetch_all(&mut *conn).await.map_err(classify)?;
                    let chunk_rows = rows
                        .iter()
                        .map(|r| {
                            Ok(PreviewRow {
                                id: r.try_get("id")?,
                                provider_message_id: r.try_get("provider_message_id")?,
                                direction: r.try_get("direction")?,
                                kind: r.try_get("kind")?,
                                message_type: r.try_get("message_type")?,
                                text: r.try_get("text")?,
                                sent_at: r.try_get("sent_at")?,
                                status: r.try_get("status")?,
                                status_at: r.try_get("status_at")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(classify)?;
                    previews.extend(chunk_rows);
                }
                Ok(attach(heads, previews))
            }

            /// Fills the participants of the group conversations among
            /// `heads` (one query per 400 groups).
            async fn attach_participants(
                conn: &mut <$db as sqlx::Database>::Connection,
                heads: &mut [ConversationHead],
            ) -> Result<(), StoreError> {
                let groups: Vec<i64> = heads
                    .iter()
                    .filter(|h| h.summary.group.is_some())
                    .map(|h| h.summary.id)
                    .collect();
                let mut by_conversation: std::collections::HashMap<i64, Vec<ContactBrief>> =
                    std::collections::HashMap::new();
                for chunk in groups.chunks(400) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT p.conversation_id, c.id, c.external_id, c.name, c.username, c.wa_id \
                         FROM conversation_participants p JOIN contacts c ON c.id = p.contact_id \
                         WHERE p.active AND p.conversation_id IN (",
                    );
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    qb.push(") ORDER BY p.conversation_id, c.id");
                    for r in qb.build().fetch_all(&mut *conn).await.map_err(classify)? {
                        let brief = (|| {
                            let external_id: String = r.try_get("external_id")?;
                            let username: Option<String> = r.try_get("username")?;
                            let wa_id: Option<String> = r.try_get("wa_id")?;
                            Ok::<_, sqlx::Error>((
                                r.try_get::<i64, _>("conversation_id")?,
                                ContactBrief {
                                    id: r.try_get("id")?,
                                    display: display_of(username.as_deref(), wa_id.as_deref(), &external_id),
                                    external_id,
                                    name: r.try_get("name")?,
                                    username,
                                },
                            ))
                        })()
                        .map_err(classify)?;
                        by_conversation.entry(brief.0).or_default().push(brief.1);
                    }
                }
                for h in heads.iter_mut() {
                    if let Some(group) = &mut h.summary.group {
                        group.participants = by_conversation.remove(&h.summary.id).unwrap_or_default();
                    }
                }
                Ok(())
            }

            async fn day_counts(
                &self,
                table_expr: &str,
                day_column: &str,
                filter: &str,
                from: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> Result<Vec<(String, i64)>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new("SELECT ");
                qb.push(<$db as Backend>::DIALECT.day(day_column))
                    .push(" AS day, count(*) AS n FROM ")
                    .push(table_expr)
                    .push(" WHERE ")
                    .push(filter)
                    .push(day_column)
                    .push(" >= ")
                    .push_bind(from)
                    .push(" AND ")
                    .push(day_column)
                    .push(" <= ")
                    .push_bind(now)
                    .push(" GROUP BY 1 ORDER BY 1");
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("day")?, r.try_get("n")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(classify)
            }

            async fn active_since(
                &self,
                since: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> Result<i64, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT count(DISTINCT conversation_id) AS n FROM messages WHERE NOT history AND sent_at >= ",
                );
                qb.push_bind(since).push(" AND sent_at <= ").push_bind(now);
                let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                row.try_get("n").map_err(classify)
            }
        }

        impl ReadModel for SqlStore<$db> {
            fn conversations(
                &self,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<ConversationSummary>, StoreError>> {
                Box::pin(async move {
                    let mut tx = self.snapshot().await?;
                    let list = Self::conversation_heads(&mut tx, None, limit).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(list)
                })
            }

            fn conversation_page(
                &self,
                id: i64,
                limit: i64,
            ) -> BoxFuture<'_, Result<Option<ConversationPage>, StoreError>> {
                Box::pin(async move {
                    let mut tx = self.snapshot().await?;
                    let Some(conversation) =
                        Self::conversation_heads(&mut tx, Some(id), 1).await?.into_iter().next()
                    else {
                        return Ok(None);
                    };
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT m.id, m.provider_message_id, m.direction, m.kind, m.message_type, m.text, \
                         m.media, m.reply_to, m.forwarded, m.referral, m.details, m.sent_at, \
                         s.status AS status, s.at AS status_at, s.errors AS status_errors FROM messages m",
                    );
                    qb.push(STATUS_JOIN)
                        .push(" WHERE m.conversation_id = ")
                        .push_bind(id)
                        .push(" ORDER BY m.sent_at DESC, m.id DESC LIMIT ")
                        .push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    let mut out = rows
                        .iter()
                        .map(|r| {
                            let status: Option<String> = r.try_get("status")?;
                            let errors: Option<Json<serde_json::Value>> = r.try_get("status_errors")?;
                            Ok(ConversationMessage {
                                id: r.try_get("id")?,
                                provider_message_id: r.try_get("provider_message_id")?,
                                direction: r.try_get("direction")?,
                                kind: r.try_get("kind")?,
                                message_type: r.try_get("message_type")?,
                                text: r.try_get("text")?,
                                media: r.try_get::<Json<serde_json::Value>, _>("media")?.0,
                                reply_to: r.try_get("reply_to")?,
                                forwarded: r.try_get("forwarded")?,
                                referral: r
                                    .try_get::<Option<Json<serde_json::Value>>, _>("referral")?
                                    .map(|j| j.0),
                                details: r.try_get::<Json<serde_json::Value>, _>("details")?.0,
                                sent_at: r.try_get("sent_at")?,
                                status_at: r.try_get("status_at")?,
                                status_errors: errors
                                    .map(|j| j.0)
                                    .filter(|_| status.as_deref() == Some("failed")),
                                status,
                                media_state: Vec::new(),
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(classify)?;
                    out.reverse();
                    Self::attach_media_state(&mut tx, &mut out).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(Some(ConversationPage {
                        conversation,
                        messages: out,
                    }))
                })
            }

            fn contacts(&self, limit: i64) -> BoxFuture<'_, Result<Vec<ContactSummary>, StoreError>> {
                Box::pin(async move {
                    // A group's own row is not a contact of anyone.
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT id, tenant, channel, external_id, name, username, wa_id, first_seen_at, last_seen_at \
                         FROM contacts c WHERE NOT EXISTS (SELECT 1 FROM contact_identities g \
                           WHERE g.contact_id = c.id AND g.kind = 'group_id') \
                         ORDER BY last_seen_at DESC, id DESC LIMIT ",
                    );
                    qb.push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            let external_id: String = r.try_get("external_id")?;
                            let username: Option<String> = r.try_get("username")?;
                            let wa_id: Option<String> = r.try_get("wa_id")?;
                            Ok(ContactSummary {
                                id: r.try_get("id")?,
                                tenant: r.try_get("tenant")?,
                                channel: r.try_get("channel")?,
                                display: display_of(username.as_deref(), wa_id.as_deref(), &external_id),
                                external_id,
                                name: r.try_get("name")?,
                                username,
                                first_seen_at: r.try_get("first_seen_at")?,
                                last_seen_at: r.try_get("last_seen_at")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn summary_rows(
                &self,
                from: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> BoxFuture<'_, Result<SummaryRows, StoreError>> {
                Box::pin(async move {
                    let mut out = SummaryRows::default();

                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(<$db as Backend>::DIALECT.day("sent_at"))
                        .push(" AS day, channel, direction, count(*) AS n FROM messages WHERE NOT history AND sent_at >= ")
                        .push_bind(from)
                        .push(" AND sent_at <= ")
                        .push_bind(now)
                        .push(" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    out.messages_per_day = rows
                        .iter()
                        .map(|r| {
                            Ok(DayChannelCount {
                                date: r.try_get("day")?,
                                channel: r.try_get("channel")?,
                                direction: r.try_get("direction")?,
                                count: r.try_get("n")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)?;

                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT status, count(*) AS n FROM message_status_current WHERE at >= ",
                    );
                    qb.push_bind(from)
                        .push(" AND at <= ")
                        .push_bind(now)
                        .push(" GROUP BY status ORDER BY status");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    out.outbound_statuses = rows
                        .iter()
                        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)?;

                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT errors, count(*) AS n FROM message_status_current \
                         WHERE status = 'failed' AND at >= ",
                    );
                    qb.push_bind(from)
                        .push(" AND at <= ")
                        .push_bind(now)
                        .push(" GROUP BY errors");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    out.failure_errors = rows
                        .iter()
                        .map(|r| {
                            Ok((
                                r.try_get::<Json<serde_json::Value>, _>("errors")?.0,
                                r.try_get("n")?,
                            ))
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)?;

                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT f.conversation_id, f.first_in, \
                         (SELECT min(o.sent_at) FROM messages o WHERE o.conversation_id = f.conversation_id \
                           AND o.direction = 'outbound' AND o.sent_at > f.first_in) AS first_out \
                         FROM (SELECT conversation_id, min(sent_at) AS first_in FROM messages \
                           WHERE direction = 'inbound' AND NOT history GROUP BY conversation_id) f \
                         WHERE f.first_in >= ",
                    );
                    qb.push_bind(from)
                        .push(" AND f.first_in <= ")
                        .push_bind(now)
                        .push(" ORDER BY f.conversation_id");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    out.first_responses = rows
                        .iter()
                        .map(|r| {
                            Ok(FirstResponse {
                                conversation_id: r.try_get("conversation_id")?,
                                first_inbound_at: r.try_get("first_in")?,
                                first_outbound_at: r.try_get("first_out")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)?;

                    out.active_24h = self.active_since(now - Duration::hours(24), now).await?;
                    out.active_7d = self.active_since(now - Duration::days(7), now).await?;
                    // A contact is new on the day of its first live message
                    // (history imports, address-book entries and group
                    // members who never wrote are not new activity).
                    out.new_contacts_per_day = self
                        .day_counts(
                            "(SELECT contact_id, min(sent_at) AS first_seen_at FROM messages \
                             WHERE NOT history GROUP BY contact_id) f",
                            "first_seen_at",
                            "",
                            from,
                            now,
                        )
                        .await?;
                    // A lead counts from its webhook; its form and campaign
                    // come from the fetched lead (the webhook's form until
                    // then).
                    let leads_from = "FROM page_changes pc LEFT JOIN leads l ON l.tenant = pc.tenant \
                         AND l.lead_id = pc.external_id WHERE pc.kind = 'lead' AND pc.occurred_at >= ";
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(<$db as Backend>::DIALECT.day("pc.occurred_at"))
                        .push(" AS day, l.form_id AS form_id, l.campaign_id AS campaign_id, count(*) AS n ")
                        .push(leads_from)
                        .push_bind(from)
                        .push(" AND pc.occurred_at <= ")
                        .push_bind(now)
                        .push(" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    out.leads_per_day = rows
                        .iter()
                        .map(|r| Ok((r.try_get("day")?, r.try_get("form_id")?, r.try_get("campaign_id")?, r.try_get("n")?)))
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT count(*) AS total, CAST(COALESCE(sum(CASE WHEN l.contact_id IS NOT NULL AND EXISTS \
                         (SELECT 1 FROM conversations c WHERE c.contact_id = l.contact_id) THEN 1 ELSE 0 END), 0) AS BIGINT) AS converted ",
                    );
                    qb.push(leads_from)
                        .push_bind(from)
                        .push(" AND pc.occurred_at <= ")
                        .push_bind(now);
                    let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                    out.lead_conversions = (
                        row.try_get("total").map_err(classify)?,
                        row.try_get("converted").map_err(classify)?,
                    );
                    // Insight dates are the ad account's own days: the
                    // window's days, compared as text.
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT date, currency, campaign_id, CAST(sum(spend_micros) AS BIGINT) AS spend FROM ad_insights WHERE date >= ",
                    );
                    qb.push_bind(from.format("%Y-%m-%d").to_string())
                        .push(" AND date <= ")
                        .push_bind(now.format("%Y-%m-%d").to_string())
                        .push(" GROUP BY date, currency, campaign_id ORDER BY date, currency, campaign_id");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    out.ad_spend = rows
                        .iter()
                        .map(|r| {
                            Ok((
                                r.try_get("date")?,
                                r.try_get("currency")?,
                                r.try_get("campaign_id")?,
                                r.try_get::<i64, _>("spend")?,
                            ))
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)?;
                    Ok(out)
                })
            }

            fn max_status_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
                Box::pin(async move {
                    let row = sqlx::query("SELECT COALESCE(max(id), 0) AS n FROM message_statuses")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(classify)?;
                    row.try_get("n").map_err(classify)
                })
            }

            fn status_changes(
                &self,
                after: i64,
                limit: i64,
            ) -> BoxFuture<'_, Result<StatusChanges, StoreError>> {
                Box::pin(async move {
                    // A receipt of a stored message belongs to that message's
                    // conversation (whichever identifier the receipt names the
                    // recipient by: phone, BSUID, group). Otherwise (watermark
                    // receipts carry no message id) it names the contact and
                    // the business endpoint, which is a conversation's key.
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT s.id AS id, COALESCE(m.conversation_id, v.id) AS conversation_id \
                         FROM message_statuses s \
                         LEFT JOIN messages m ON m.tenant = s.tenant AND m.channel = s.channel \
                           AND m.provider_message_id = s.provider_message_id \
                         LEFT JOIN contacts c ON c.tenant = s.tenant AND c.channel = s.channel \
                           AND c.external_id = s.contact_external_id \
                         LEFT JOIN conversations v ON v.tenant = s.tenant AND v.channel = s.channel \
                           AND v.business_id = s.business_id AND v.contact_id = c.id \
                         WHERE s.id > ",
                    );
                    qb.push_bind(after).push(" ORDER BY s.id LIMIT ").push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    Ok(StatusChanges {
                        rows: rows
                            .iter()
                            .map(|r| Ok((r.try_get("id")?, r.try_get("conversation_id")?)))
                            .collect::<Result<_, sqlx::Error>>()
                            .map_err(classify)?,
                    })
                })
            }
        }
    };
}

for_each_backend!(impl_read_model);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_shorten_long_text_and_name_typeless_messages() {
        assert_eq!(preview(Some("  hi  "), "text"), "hi");
        assert_eq!(preview(None, "image"), "[image]");
        assert_eq!(preview(Some(""), "sticker"), "[sticker]");
        let long = "x".repeat(500);
        let p = preview(Some(&long), "text");
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
        assert!(p.ends_with('…'));
    }
}
