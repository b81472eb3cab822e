//! The normalized domain model: what every Meta webhook is turned into.
//!
//! These types are the contract between the pure normalizer
//! ([`crate::normalize`]) and everything that stores or publishes events. They
//! carry no I/O and no tenant: the tenant comes from the delivery envelope.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The messaging product an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// WhatsApp Cloud API (`object = whatsapp_business_account`).
    Whatsapp,
    /// Facebook Messenger and Page events (`object = page`).
    Messenger,
    /// Instagram messaging (`object = instagram`).
    Instagram,
}

impl Channel {
    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Messenger => "messenger",
            Channel::Instagram => "instagram",
        }
    }

    /// Parses the stored name back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "whatsapp" => Some(Channel::Whatsapp),
            "messenger" => Some(Channel::Messenger),
            "instagram" => Some(Channel::Instagram),
            _ => None,
        }
    }
}

/// Who sent a message, seen from the business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Customer → business.
    Inbound,
    /// Business → customer (echoes, and the messages statuses refer to).
    Outbound,
}

impl Direction {
    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Delivery state of an outbound message.
///
/// Ordering is the forward order `sent < delivered < read`; `failed` is
/// handled by [`DeliveryStatus::supersedes`], not by rank alone. A status
/// Meta sends that Inlet does not know (`deleted`, `played`, …) is
/// [`DeliveryStatus::Unknown`]: kept in the history under Meta's name
/// ([`StatusUpdate::raw_status`]), never a message's current status, so it
/// never regresses a known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Accepted by Meta.
    Sent,
    /// Reached the customer's device.
    Delivered,
    /// Seen by the customer.
    Read,
    /// Could not be delivered (errors attached).
    Failed,
    /// A status name Inlet does not know; the name is in
    /// [`StatusUpdate::raw_status`].
    Unknown,
}

impl DeliveryStatus {
    /// Every status that can be a message's current status, in rank order
    /// after `failed` ([`DeliveryStatus::Unknown`] never is).
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Failed,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
    ];

    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Unknown => "unknown",
        }
    }

    /// Parses the stored (or Meta) name of a known status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sent" => Some(DeliveryStatus::Sent),
            "delivered" => Some(DeliveryStatus::Delivered),
            "read" => Some(DeliveryStatus::Read),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }

    /// Forward rank on the happy path: sent 1, delivered 2, read 3
    /// (failed 0: it is not on that path and is decided by [`Self::supersedes`];
    /// unknown -1: below everything).
    pub fn rank(self) -> i32 {
        match self {
            DeliveryStatus::Unknown => -1,
            DeliveryStatus::Failed => 0,
            DeliveryStatus::Sent => 1,
            DeliveryStatus::Delivered => 2,
            DeliveryStatus::Read => 3,
        }
    }

    /// Whether `self` (happening at `at`) may replace `current` (which
    /// happened at `current_at`) as a message's current status.
    ///
    /// Statuses only move forward on sent < delivered < read, whatever order
    /// Meta delivers them in. `failed` never undoes `read`; it replaces `sent`,
    /// and replaces `delivered` unless the delivery happened later. Nothing
    /// undoes `failed` except a `read`, or a `delivered` that happened after
    /// the failure. An unknown status never becomes the current one (and
    /// any known status replaces one, should it be current). The stores
    /// implement this same table in SQL (`tests/status_order.rs` checks
    /// that both agree on every pair).
    pub fn supersedes(
        self,
        at: DateTime<Utc>,
        current: Option<(DeliveryStatus, DateTime<Utc>)>,
    ) -> bool {
        use DeliveryStatus::*;
        if self == Unknown {
            return false;
        }
        let Some((current, current_at)) = current else {
            return true;
        };
        match (self, current) {
            (_, Unknown) => true,
            (Read, Read) => false,
            (Read, _) => true,
            (Sent, _) => false,
            (_, Read) => false,
            (Failed, Sent) => true,
            (Failed, Delivered) => at >= current_at,
            (Failed, Failed) => false,
            (Delivered, Failed) => at > current_at,
            (new, cur) => new.rank() > cur.rank(),
        }
    }
}

/// The customer side of a conversation.
///
/// A WhatsApp user may be known by several identifiers, each optional: the
/// phone number (`wa_id`), the business-scoped user id (BSUID, `user_id`),
/// the parent BSUID (`parent_user_id`) and a `username`. `external_id` is the
/// one a contact row is created with (the phone number when present — as
/// before BSUIDs, so existing rows and phone-first people keep their key
/// whatever the batching —, else the BSUID, else the parent BSUID, else the
/// username); the store links every identifier to one contact (see
/// [`ContactRef::identities`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactRef {
    /// Channel-scoped id: WhatsApp BSUID or `wa_id`, Messenger PSID,
    /// Instagram IGSID, or a page commenter's user id.
    pub external_id: String,
    /// Display name when the payload carries one (WhatsApp profile name,
    /// commenter name).
    pub name: Option<String>,
    /// WhatsApp phone number (`wa_id`, `from`, `recipient_id`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    /// WhatsApp business-scoped user id (`user_id`, `from_user_id`,
    /// `recipient_user_id`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// WhatsApp parent BSUID (`parent_user_id`, `from_parent_user_id`), when
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// WhatsApp username (`profile.username`), when given. Shown instead of
    /// a phone number; not a stable key (users may change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The BSUID the user had before (a `user_changed_user_id` system
    /// message): still linked to the contact, so its history stays theirs,
    /// while `user_id` is the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub former_user_id: Option<String>,
}

/// The kind of a contact identifier, as stored in `contact_identities.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// The channel's single id (Messenger PSID, Instagram IGSID).
    Id,
    /// WhatsApp phone number.
    WaId,
    /// WhatsApp business-scoped user id.
    UserId,
    /// WhatsApp parent business-scoped user id.
    ParentUserId,
    /// WhatsApp username, used as a key only when nothing else is known.
    Username,
    /// WhatsApp group id: the contact row standing for a group, which its
    /// group conversation belongs to.
    GroupId,
}

impl IdentityKind {
    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Id => "id",
            IdentityKind::WaId => "wa_id",
            IdentityKind::UserId => "user_id",
            IdentityKind::ParentUserId => "parent_user_id",
            IdentityKind::Username => "username",
            IdentityKind::GroupId => "group_id",
        }
    }
}

impl ContactRef {
    /// A contact known by one channel id (Messenger, Instagram, commenters).
    pub fn by_id(external_id: String, name: Option<String>) -> Self {
        ContactRef {
            external_id,
            name,
            ..ContactRef::default()
        }
    }

    /// A WhatsApp contact from whichever identifiers a payload carries;
    /// `None` when it carries none. `external_id` is the phone number when
    /// present, else the BSUID, else the parent BSUID, else the username.
    pub fn whatsapp(
        wa_id: Option<String>,
        user_id: Option<String>,
        parent_user_id: Option<String>,
        username: Option<String>,
        name: Option<String>,
    ) -> Option<Self> {
        let external_id = wa_id
            .clone()
            .or_else(|| user_id.clone())
            .or_else(|| parent_user_id.clone())
            .or_else(|| username.clone())?;
        Some(ContactRef {
            external_id,
            name,
            wa_id,
            user_id,
            parent_user_id,
            username,
            former_user_id: None,
        })
    }

    /// The contact row standing for a WhatsApp group (its group
    /// conversation's contact): keyed by the group id, named after its
    /// subject.
    pub fn group(group_id: String, subject: Option<String>) -> Self {
        ContactRef {
            external_id: group_id,
            name: subject,
            ..ContactRef::default()
        }
    }

    /// How a contact is shown where a full phone number or BSUID must not
    /// appear (audit lines, cache and API `display`): `@username` when
    /// known, else the masked phone number, else the masked BSUID (or
    /// other id).
    pub fn display(&self) -> String {
        display_of(
            self.username.as_deref(),
            self.wa_id.as_deref(),
            &self.external_id,
        )
    }

    /// The identifiers the store links to one contact, in a stable order.
    /// WhatsApp: phone, BSUID and parent BSUID (the username only when none
    /// of them is known: usernames change hands). Other channels: the id.
    pub fn identities(&self) -> Vec<(IdentityKind, String)> {
        let mut out = Vec::new();
        if let Some(v) = &self.wa_id {
            out.push((IdentityKind::WaId, v.clone()));
        }
        for v in [&self.user_id, &self.former_user_id].into_iter().flatten() {
            out.push((IdentityKind::UserId, v.clone()));
        }
        if let Some(v) = &self.parent_user_id {
            out.push((IdentityKind::ParentUserId, v.clone()));
        }
        if out.is_empty() {
            match &self.username {
                Some(v) if self.external_id == *v => out.push((IdentityKind::Username, v.clone())),
                _ => out.push((IdentityKind::Id, self.external_id.clone())),
            }
        }
        out
    }
}

/// How a contact is shown without its full phone number or BSUID:
/// `@username`, else the masked phone number (`1555*****55`), else the
/// masked id. Shared by [`ContactRef::display`] and the read side, which
/// has the same three columns.
pub fn display_of(username: Option<&str>, wa_id: Option<&str>, external_id: &str) -> String {
    match (username, wa_id) {
        (Some(u), _) if !u.is_empty() => format!("@{}", u.trim_start_matches('@')),
        (_, Some(phone)) if !phone.is_empty() => mask(phone),
        _ => mask(external_id),
    }
}

/// Keeps the first 4 and last 2 characters of an identifier
/// (`1555*****55`, `US.1**************18`); short ids are fully masked.
pub fn mask(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 6))
}

/// A media object attached to a message (downloaded later by id or URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaRef {
    /// `image`, `audio`, `video`, `document`, `sticker`, `file`, …
    pub kind: String,
    /// WhatsApp media id (Messenger/Instagram give a URL instead).
    pub media_id: Option<String>,
    /// Download URL (Messenger/Instagram attachments).
    pub url: Option<String>,
    /// MIME type as sent by Meta.
    pub mime_type: Option<String>,
    /// Base64 SHA-256 as sent by WhatsApp, checked after download.
    pub sha256: Option<String>,
    /// Original file name (documents).
    pub filename: Option<String>,
}

impl MediaRef {
    /// Kinds whose bytes Inlet downloads and keeps: WhatsApp's image,
    /// audio, video, document and sticker; Messenger/Instagram attachments
    /// of type image, audio, video and file.
    pub const DOWNLOADABLE: [&'static str; 6] =
        ["image", "audio", "video", "document", "sticker", "file"];

    /// Whether the media pipeline downloads this attachment: a kind of
    /// [`Self::DOWNLOADABLE`] with a media id or a URL to fetch it by.
    pub fn is_downloadable(&self) -> bool {
        Self::DOWNLOADABLE.contains(&self.kind.as_str())
            && (self.media_id.is_some() || self.url.is_some())
    }
}

/// One message (or message-like event: reaction, postback, referral, system
/// notice) in a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedMessage {
    /// Product the message came through.
    pub channel: Channel,
    /// `entry[].id`: WABA id, Page id or Instagram account id.
    pub account_id: String,
    /// The business endpoint the conversation is with: WhatsApp
    /// `phone_number_id`, otherwise the Page / Instagram account id.
    pub business_id: String,
    /// Provider message id (`wamid…`, `mid`). Synthesized deterministically
    /// for events without one (postbacks, referrals) so redelivery dedups.
    pub provider_message_id: String,
    /// Inbound or outbound (echo).
    pub direction: Direction,
    /// The customer.
    pub contact: ContactRef,
    /// Coarse kind: `message`, `reaction`, `system`, `postback`, `referral`.
    pub kind: String,
    /// Fine type: `text`, `image`, `interactive.button_reply`,
    /// `system.user_changed_number`, `attachments`, `unsupported`, …
    pub message_type: String,
    /// Text body, caption, button title, reaction emoji, system notice body.
    pub text: Option<String>,
    /// Attached media.
    pub media: Vec<MediaRef>,
    /// Message this one replies or reacts to (`context.id`, `reply_to.mid`,
    /// reaction target).
    pub reply_to: Option<String>,
    /// WhatsApp `context.forwarded` / `frequently_forwarded`.
    pub forwarded: bool,
    /// Ad / link referral, verbatim.
    pub referral: Option<Value>,
    /// Type-specific details (location, contacts, order items, interactive
    /// ids, button payload, reaction action, per-message errors, story
    /// reference) and, for unsupported types, the raw message JSON.
    pub details: Value,
    /// When the provider says the message was sent.
    pub sent_at: DateTime<Utc>,
}

impl NormalizedMessage {
    /// The WhatsApp group the message was sent in (`group_id`, kept in
    /// `details.group_id`): the message belongs to the group's
    /// conversation, its `contact` is the sender.
    pub fn group_id(&self) -> Option<&str> {
        self.details
            .get("group_id")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
    }

    /// Whether the message was imported from a `history` webhook
    /// (`details.history = true`): a past message, which is not new
    /// activity (analytics, unread counts).
    pub fn is_history(&self) -> bool {
        self.details.get("history").and_then(Value::as_bool) == Some(true)
    }
}

/// A provider error attached to a failed status or unsupported message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderError {
    /// Numeric Meta error code (e.g. 131047).
    pub code: i64,
    /// Short title.
    pub title: Option<String>,
    /// Longer message / `error_data.details`.
    pub detail: Option<String>,
}

/// A delivery/read receipt for an outbound message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Product the receipt came through.
    pub channel: Channel,
    /// `entry[].id`.
    pub account_id: String,
    /// Business endpoint (see [`NormalizedMessage::business_id`]).
    pub business_id: String,
    /// The message the receipt is for. `None` for Messenger/Instagram read
    /// receipts that carry only a watermark.
    pub provider_message_id: Option<String>,
    /// The customer (WhatsApp `recipient_id`, Messenger sender PSID).
    pub contact: ContactRef,
    /// New status.
    pub status: DeliveryStatus,
    /// When the status happened.
    pub at: DateTime<Utc>,
    /// Messenger watermark: every message sent before it has this status.
    pub watermark: Option<DateTime<Utc>>,
    /// Errors (failed statuses).
    pub errors: Vec<ProviderError>,
    /// WhatsApp `conversation` object, verbatim.
    pub conversation: Option<Value>,
    /// WhatsApp `pricing` object, verbatim.
    pub pricing: Option<Value>,
    /// WhatsApp `biz_opaque_callback_data`: what the sender put in the
    /// request (Inlet's outbound id), returned on sent/delivered/read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_data: Option<String>,
    /// Meta's name of a status Inlet does not know ([`DeliveryStatus::Unknown`]:
    /// `deleted`, `played`, …), as stored in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_status: Option<String>,
}

impl StatusUpdate {
    /// The status as stored in the history: Meta's name for an unknown
    /// status, else the known name.
    pub fn status_name(&self) -> &str {
        match (&self.raw_status, self.status) {
            (Some(raw), DeliveryStatus::Unknown) => raw,
            (_, known) => known.as_str(),
        }
    }
}

/// A non-message event on an account: Page `changes` (leadgen, feed), and
/// anything the normalizer does not model (kept verbatim as `unsupported`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageChange {
    /// Product the change came through.
    pub channel: Channel,
    /// `entry[].id`.
    pub account_id: String,
    /// `changes[].field` (`leadgen`, `feed`, …) or, for unmodelled messaging
    /// events, `messaging.<key>`.
    pub field: String,
    /// `lead`, `comment`, `post`, `reaction`, … or `unsupported`.
    pub kind: String,
    /// `add`, `edited`, `remove`, … when present.
    pub verb: Option<String>,
    /// Stable id of the thing changed (leadgen id, comment id, post id), or a
    /// deterministic hash of the raw value when there is none.
    pub external_id: String,
    /// Who caused it (commenter), when known.
    pub from: Option<ContactRef>,
    /// Comment / post text.
    pub text: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The `value` object (or messaging event) verbatim.
    pub value: Value,
    /// What a WhatsApp group webhook (`group_*`) changes in the group's
    /// conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupChange>,
}

impl PageChange {
    /// The contact this change updates, when it is one of the kinds that
    /// update contacts: an address-book entry added or edited in the
    /// WhatsApp Business app (`contact`, verb `add`) and a BSUID change
    /// (`user_id_update`). Other changes only name who caused them.
    pub fn updated_contact(&self) -> Option<&ContactRef> {
        match (self.kind.as_str(), self.verb.as_deref()) {
            ("contact", Some("add")) | ("user_id_update", _) => self.from.as_ref(),
            _ => None,
        }
    }
}

/// What a WhatsApp group webhook changes in the group's conversation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupChange {
    /// The business phone number id the group belongs to.
    pub business_id: String,
    /// The group id.
    pub group_id: String,
    /// The group's subject, when the change sets it (creation, settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Participants who joined (or were added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<ContactRef>,
    /// Participants who left (or were removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<ContactRef>,
}

/// One normalized item; a single webhook body yields any number of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum NormalizedItem {
    /// A message (or reaction/postback/referral/system notice).
    Message(NormalizedMessage),
    /// A delivery/read/failed receipt (or one of a status Inlet does not
    /// know).
    Status(StatusUpdate),
    /// A page change or unmodelled event.
    PageChange(PageChange),
}

impl NormalizedItem {
    /// Deterministic identity of the item, independent of delivery: the same
    /// provider message / status / change always yields the same key. Used for
    /// downstream event ids and dedup.
    pub fn identity(&self) -> String {
        match self {
            NormalizedItem::Message(m) => format!(
                "message/{}/{}/{}",
                m.channel.as_str(),
                m.business_id,
                m.provider_message_id
            ),
            NormalizedItem::Status(s) => format!(
                "status/{}/{}/{}/{}/{}",
                s.channel.as_str(),
                s.business_id,
                s.provider_message_id.as_deref().unwrap_or("-"),
                s.status_name(),
                s.watermark
                    .or(Some(s.at))
                    .map(|t| t.timestamp_millis())
                    .unwrap_or_default()
            ),
            NormalizedItem::PageChange(c) => format!(
                "change/{}/{}/{}/{}/{}",
                c.channel.as_str(),
                c.account_id,
                c.field,
                c.external_id,
                c.verb.as_deref().unwrap_or("-")
            ),
        }
    }

    /// Short name of the item kind: `message`, `status` or `page_change`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            NormalizedItem::Message(_) => "message",
            NormalizedItem::Status(_) => "status",
            NormalizedItem::PageChange(_) => "page_change",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_moves_forward_only() {
        use DeliveryStatus::*;
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        assert!(Delivered.supersedes(t(2), Some((Sent, t(1)))));
        assert!(Read.supersedes(t(3), Some((Delivered, t(2)))));
        assert!(!Sent.supersedes(t(1), Some((Delivered, t(2)))));
        assert!(!Delivered.supersedes(t(2), Some((Read, t(3)))));
        assert!(
            !Sent.supersedes(t(9), Some((Read, t(3)))),
            "by order, not arrival"
        );
        assert!(
            !Failed.supersedes(t(9), Some((Read, t(3)))),
            "failed never undoes read"
        );
        assert!(
            Read.supersedes(t(1), Some((Failed, t(5)))),
            "read clears failed"
        );
        assert!(Failed.supersedes(t(2), Some((Sent, t(1)))));
        assert!(Failed.supersedes(t(5), Some((Delivered, t(2)))));
        assert!(!Failed.supersedes(t(1), Some((Delivered, t(2)))));
        assert!(
            Delivered.supersedes(t(6), Some((Failed, t(5)))),
            "later delivery clears failed"
        );
        assert!(!Delivered.supersedes(t(4), Some((Failed, t(5)))));
        assert!(!Sent.supersedes(t(6), Some((Failed, t(5)))));
        assert!(Sent.supersedes(t(1), None));
    }

    #[test]
    fn all_lists_every_status_once() {
        use DeliveryStatus::*;
        // A new variant fails to compile here until it is listed in ALL.
        let listed = |s: DeliveryStatus| match s {
            Sent | Delivered | Read | Failed => DeliveryStatus::ALL.contains(&s),
            Unknown => !DeliveryStatus::ALL.contains(&s),
        };
        assert!(DeliveryStatus::ALL.iter().all(|s| listed(*s)));
        assert!(listed(Unknown));
        assert_eq!(DeliveryStatus::ALL.len(), 4);
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryStatus::parse("unknown"), None);
        assert_eq!(DeliveryStatus::parse("deleted"), None);
    }

    #[test]
    fn unknown_statuses_never_become_current_nor_regress_a_known_one() {
        use DeliveryStatus::*;
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        assert!(!Unknown.supersedes(t(1), None));
        for known in DeliveryStatus::ALL {
            assert!(!Unknown.supersedes(t(9), Some((known, t(1)))));
            assert!(known.supersedes(t(1), Some((Unknown, t(9)))));
        }
    }
}
