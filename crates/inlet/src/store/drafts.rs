//! The drafts side of the store: AI-written replies waiting for a reviewer
//! (see [`crate::outbound::draft`] for the states and the one table of
//! transitions). Every change is one conditional statement guarded by the
//! states its action applies to (and, for approvals, by the version the
//! reviewer saw), committed with its `draft.after.*` event:
//!
//! - creation reads the anchor under the conversation's row lock, which the
//!   write path of inbound messages also takes, so a message that arrives
//!   meanwhile is either the anchor or marks the new draft stale;
//! - approval moves the draft and stores its send (id derived from the
//!   draft) in one transaction: a second approval finds nothing to update;
//! - the write path marks pending drafts `stale` in the transaction that
//!   stores a newer inbound message of their conversation;
//! - the send's final state moves its draft in the transaction that records
//!   it (`finish`, settling unknown sends, DLQ replay).

use futures_util::future::BoxFuture;
use serde::Serialize;

use super::outbound::{NewSend, OutboundRecord};
use super::StoreError;
use crate::outbound::draft::Action;

/// A draft to store.
#[derive(Debug, Clone)]
pub struct NewDraft {
    /// Draft id (UUIDv7).
    pub id: String,
    /// The conversation answered.
    pub conversation_id: i64,
    /// The proposed reply.
    pub text: String,
    /// Who wrote it.
    pub author: String,
    /// Provider id of the inbound message answered (quoted by the send);
    /// `None`: the conversation's latest inbound message, not quoted.
    pub reply_to: Option<String>,
    /// Trace id of the request.
    pub trace_id: String,
    /// Who caused it (`api`, `cli`), for the event.
    pub actor: String,
}

/// A stored draft.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DraftRecord {
    /// Draft id.
    pub id: String,
    /// Tenant of the conversation.
    pub tenant: String,
    /// The conversation answered.
    pub conversation_id: i64,
    /// Its channel (`whatsapp`, `messenger`, `instagram`).
    pub channel: String,
    /// Its business endpoint (the sender).
    pub business_id: String,
    /// Its contact's channel id (the recipient).
    pub contact_external_id: String,
    /// Row id of the inbound message answered.
    pub anchor_message_id: Option<i64>,
    /// Provider id of that message.
    pub anchor_provider_id: Option<String>,
    /// When that message was sent (epoch ms).
    pub anchor_sent_ms: Option<i64>,
    /// Whether the send quotes the anchor.
    pub quote_anchor: bool,
    /// The text as written.
    pub text: String,
    /// The text as approved, when the reviewer edited it.
    pub final_text: Option<String>,
    /// Who wrote it.
    pub author: String,
    /// Status (see [`crate::outbound::draft::DraftStatus`]).
    pub status: String,
    /// Bumped by every change; an approval names the version it saw.
    pub version: i32,
    /// The send queued by its approval.
    pub outbound_id: Option<String>,
    /// Approved although stale.
    pub forced: bool,
    /// Why it left `pending` (rejection reason, newer message, send error).
    pub reason: Option<String>,
    /// Trace id of the request that created it.
    pub trace_id: String,
    /// Created (epoch ms).
    pub created_ms: i64,
    /// Last change (epoch ms).
    pub updated_ms: i64,
    /// Approved (epoch ms).
    pub approved_ms: Option<i64>,
}

impl DraftRecord {
    /// The text that is (or would be) sent.
    pub fn send_text(&self) -> &str {
        self.final_text.as_deref().unwrap_or(&self.text)
    }
}

/// What creating a draft did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// Stored, `pending`.
    Draft(Box<DraftRecord>),
    /// No conversation with that id.
    NoConversation,
    /// `reply_to` names no inbound message of that conversation.
    NoSuchMessage,
    /// The text cannot be sent on the conversation's channel (too long).
    Invalid(crate::outbound::Invalid),
}

/// An approval to apply.
#[derive(Debug, Clone)]
pub struct Approval {
    /// Draft id.
    pub draft_id: String,
    /// The version the reviewer saw.
    pub version: i32,
    /// Approve although stale.
    pub force: bool,
    /// The reviewer's edit, stored as `final_text`.
    pub edited_text: Option<String>,
    /// The send (id derived from the draft).
    pub send: NewSend,
    /// Who approved (`api`, `cli`), for the event.
    pub actor: String,
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq)]
pub enum Approved {
    /// Approved; its send is stored.
    Queued(Box<DraftRecord>, Box<OutboundRecord>),
    /// Nothing changed: another approval (or change) came first, or the
    /// draft is not approvable. The current draft, if it exists.
    Conflict(Option<Box<DraftRecord>>),
}

/// A transition to apply to one draft (reject, window closed at approval).
#[derive(Debug, Clone)]
pub struct Change {
    /// Draft id.
    pub draft_id: String,
    /// What happens (its sources guard the update; its result is the new
    /// status).
    pub action: Action,
    /// Only at this version.
    pub version: Option<i32>,
    /// Why (stored as `reason`).
    pub reason: Option<String>,
    /// Who (`api`, `cli`, `housekeeping`), for the event.
    pub actor: String,
}

/// A listing filter.
#[derive(Debug, Clone, Default)]
pub struct DraftFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this conversation.
    pub conversation_id: Option<i64>,
    /// At most this many (newest first).
    pub limit: i64,
}

/// Drafts closed by housekeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closed {
    /// Their WhatsApp window closed: `needs_template`.
    pub needs_template: u64,
    /// Not reviewed in time: `expired`.
    pub expired: u64,
}

/// Drafts storage.
pub trait DraftStore: Send + Sync {
    /// Stores a `pending` draft with its anchor and `draft.after.create`.
    fn create_draft<'a>(
        &'a self,
        draft: &'a NewDraft,
    ) -> BoxFuture<'a, Result<Created, StoreError>>;
    /// One draft.
    fn draft<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DraftRecord>, StoreError>>;
    /// Drafts matching the filter, newest first.
    fn drafts<'a>(
        &'a self,
        filter: &'a DraftFilter,
    ) -> BoxFuture<'a, Result<Vec<DraftRecord>, StoreError>>;
    /// Approves (one conditional update) and stores the send, with
    /// `draft.after.approve`, in one transaction.
    fn approve_draft<'a>(
        &'a self,
        approval: &'a Approval,
    ) -> BoxFuture<'a, Result<Approved, StoreError>>;
    /// Applies a transition if the draft is in one of its sources (and at
    /// the version, when given); `draft.after.reject` or
    /// `draft.after.update`. `None`: nothing changed.
    fn change_draft<'a>(
        &'a self,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Option<DraftRecord>, StoreError>>;
    /// Closes open drafts: WhatsApp ones with no inbound message after
    /// `window_opened_after_ms` become `needs_template`; any created before
    /// `created_before_ms` become `expired`.
    fn close_drafts(
        &self,
        now_ms: i64,
        window_opened_after_ms: i64,
        created_before_ms: i64,
    ) -> BoxFuture<'_, Result<Closed, StoreError>>;
}
