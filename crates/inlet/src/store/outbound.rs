//! The outbound side of the store: commands to send, their history,
//! broadcasts and halted apps. The rows are the sender's source of truth:
//! a command is stored (unique on its id and on its tenant's idempotency
//! key) before Meta is called, every state change is one statement guarded
//! by the state it leaves (so two senders can never both send one row), and
//! the head of each (sender, recipient) queue is the only row of that pair
//! that can be claimed (per-recipient order).
//!
//! States: `queued` → `claimed` (reserved by one sender process under a
//! lease) → `sending` (the request is about to leave) → `accepted` / `held`
//! (Meta answered with a message id) or `failed` / `dead_lettered` /
//! `needs_template`; a throttled or transiently failed send goes back to
//! `queued` with a later `due_ms`. A `sending` row whose lease ran out (its
//! process died with the request in flight) becomes `unknown`: a status
//! webhook carrying its id settles it, else the per-kind policy after the
//! deadline (see [`crate::config::UnknownPolicy`]). Status webhooks then move
//! the message on `sent < delivered < read` (the read side joins them).

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use super::StoreError;
use crate::outbound::SendSpec;
use crate::plan::WritePlan;

/// States a send can be in before Meta's status webhooks take over.
pub mod state {
    /// Stored, waiting for its turn (also after a retryable failure).
    pub const QUEUED: &str = "queued";
    /// Reserved by one sender process (lease), not yet sent.
    pub const CLAIMED: &str = "claimed";
    /// The request is leaving; a crash now makes the outcome unknown.
    pub const SENDING: &str = "sending";
    /// Meta accepted it and returned a message id.
    pub const ACCEPTED: &str = "accepted";
    /// Accepted but held for quality assessment (template pacing).
    pub const HELD: &str = "held";
    /// The answer was lost; waiting for a status webhook or the deadline.
    pub const UNKNOWN: &str = "unknown";
    /// Declined by Meta for now (131049, per-user marketing cap): waits
    /// until its due time apart from the recipient's queue (later
    /// messages to the recipient go meanwhile), then is queued once more.
    pub const DEFERRED: &str = "deferred";
    /// Final failure (permanent error or unknown outcome by policy).
    pub const FAILED: &str = "failed";
    /// Retries exhausted or unclassified error: in the DLQ.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// Refused locally: a free-form message outside the 24-hour window.
    pub const NEEDS_TEMPLATE: &str = "needs_template";
    /// States no sender will touch again.
    pub const FINAL: [&str; 4] = [FAILED, DEAD_LETTERED, NEEDS_TEMPLATE, ACCEPTED];
}

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An accepted send's first delivery, as [`OutboundStore::record_deliveries`]
/// stamps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Outbound id.
    pub id: String,
    /// When Meta accepted it (epoch ms).
    pub accepted_ms: i64,
    /// Time of its first delivered/read status (epoch ms).
    pub delivered_ms: i64,
}

/// A command to store.
#[derive(Debug, Clone)]
pub struct NewSend {
    /// Outbound id (UUIDv7, or derived from the broadcast and recipient).
    pub id: String,
    /// Tenant (of the sending app).
    pub tenant: String,
    /// What to send.
    pub spec: SendSpec,
    /// Broadcast it belongs to.
    pub broadcast_id: Option<String>,
    /// Trace id of the request that queued it.
    pub trace_id: String,
}

/// A stored send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundRecord {
    /// Queue position (global, increasing).
    pub seq: i64,
    /// Outbound id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// The validated command.
    pub spec: SendSpec,
    /// Broadcast it belongs to.
    pub broadcast_id: Option<String>,
    /// State (see [`state`]).
    pub status: String,
    /// Requests sent to Meta so far.
    pub attempts: i32,
    /// Not before (epoch ms).
    pub due_ms: i64,
    /// Meta's message id, once accepted.
    pub provider_message_id: Option<String>,
    /// `contacts[].wa_id` Meta answered with.
    pub contact_wa_id: Option<String>,
    /// Error class of the last failure.
    pub error_class: Option<String>,
    /// Last error (Graph error fields or a local reason).
    pub error: Option<Value>,
    /// Trace id.
    pub trace_id: String,
    /// Stored at (epoch ms).
    pub created_ms: i64,
    /// Last change (epoch ms).
    pub updated_ms: i64,
    /// Accepted by Meta at (epoch ms).
    pub accepted_ms: Option<i64>,
    /// Latest status webhook (`sent`, `delivered`, `read`, `failed`).
    pub delivery_status: Option<String>,
}

impl OutboundRecord {
    /// The status a client sees: the webhook status once one arrived for an
    /// accepted (or unknown) send, else the stored state.
    pub fn visible_status(&self) -> &str {
        match (&self.delivery_status, self.status.as_str()) {
            (Some(d), state::ACCEPTED | state::HELD | state::UNKNOWN) => d,
            _ => &self.status,
        }
    }
}

/// One step of a send's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// State entered (or `retried`, `throttled`, ...).
    pub status: String,
    /// When (epoch ms).
    pub at_ms: i64,
    /// Details (error, attempt, wait).
    pub detail: Option<Value>,
}

/// How one send ended (or paused) after it was claimed.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Meta accepted it. `plan` writes the timeline message.
    Accepted {
        /// Meta's message id.
        provider_message_id: String,
        /// `contacts[].wa_id`.
        wa_id: Option<String>,
        /// `held_for_quality_assessment`.
        held: bool,
        /// The timeline message (messages row, events, cache).
        plan: Box<WritePlan>,
    },
    /// Back to the queue, not before `due_ms` (retry or throttle).
    Requeue {
        /// Not before.
        due_ms: i64,
        /// History entry (`retried`, `throttled`, `deferred`).
        note: &'static str,
        /// Error class, when an error caused it.
        error_class: Option<String>,
        /// The error.
        error: Option<Value>,
        /// The attempt does not count (throttles, halts): only transient
        /// failures use up `outbound.max_attempts`.
        refund_attempt: bool,
    },
    /// Set aside until `due_ms` (131049): out of the recipient's queue
    /// order, queued again by [`OutboundStore::release_deferred`].
    Defer {
        /// Not before.
        due_ms: i64,
        /// Error class.
        error_class: String,
        /// The error.
        error: Value,
    },
    /// Final: failed / dead_lettered / needs_template.
    Final {
        /// The state.
        status: &'static str,
        /// Error class.
        error_class: Option<String>,
        /// The error.
        error: Value,
    },
    /// The request may have left and no answer came: `unknown`.
    Unknown {
        /// What happened (timeout after send, ...).
        error: Value,
    },
}

/// A new broadcast: its plan is stored with every recipient's send.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    /// Broadcast id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// The validated request.
    pub spec: crate::outbound::BroadcastSpec,
    /// Trace id.
    pub trace_id: String,
}

impl NewBroadcast {
    /// Plans a broadcast: a new id, and one send per recipient whose id is
    /// derived from the broadcast id and the recipient (UUIDv5), so a
    /// recipient is planned once and a status webhook joins back to it.
    pub fn plan(
        spec: crate::outbound::BroadcastSpec,
        tenant: &str,
        trace_id: &str,
    ) -> (NewBroadcast, Vec<NewSend>) {
        let id = uuid::Uuid::now_v7();
        let sends = spec
            .recipients
            .iter()
            .map(|(to, kind)| NewSend {
                id: uuid::Uuid::new_v5(&id, to.as_bytes()).to_string(),
                tenant: tenant.to_string(),
                spec: SendSpec {
                    channel: spec.channel,
                    from: spec.from.clone(),
                    to: to.clone(),
                    recipient_kind: *kind,
                    message_type: crate::outbound::MessageType::Template,
                    content: spec.template.clone(),
                    reply_to: None,
                    tag: None,
                    idempotency_key: None,
                },
                broadcast_id: Some(id.to_string()),
                trace_id: trace_id.to_string(),
            })
            .collect();
        let broadcast = NewBroadcast {
            id: id.to_string(),
            tenant: tenant.to_string(),
            spec,
            trace_id: trace_id.to_string(),
        };
        (broadcast, sends)
    }
}

/// A stored broadcast with its counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BroadcastRecord {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Channel.
    pub channel: String,
    /// Sender.
    pub from: String,
    /// The template, frozen at creation.
    pub template: Value,
    /// Recipients planned.
    pub total: i64,
    /// Duplicates dropped at creation.
    pub duplicates: i64,
    /// `running`, `paused`, `finished`.
    pub status: String,
    /// Why it is paused.
    pub paused_reason: Option<String>,
    /// Sends per visible status.
    pub counts: std::collections::BTreeMap<String, i64>,
    /// Created (epoch ms).
    pub created_ms: i64,
    /// Finished (epoch ms): every send reached a final state.
    pub finished_ms: Option<i64>,
    /// Trace id.
    pub trace_id: String,
}

/// An app whose sending stopped on an auth or account error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Halt {
    /// Tenant of the app.
    pub tenant: String,
    /// `auth_halt` / `account_halt`.
    pub error_class: String,
    /// The Graph error.
    pub error: Value,
    /// Fingerprint of the token that failed.
    pub token_fingerprint: String,
    /// When (epoch ms).
    pub halted_ms: i64,
}

/// Queue figures for `inlet outbound status` and the gauges.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboundStats {
    /// Sends per stored state.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Waiting sends (queued or claimed) per sender.
    pub queued_by_sender: std::collections::BTreeMap<String, i64>,
    /// Halted apps.
    pub halts: Vec<Halt>,
    /// Broadcasts running / paused.
    pub broadcasts: std::collections::BTreeMap<String, i64>,
}

/// A send with its history.
pub type WithHistory = (OutboundRecord, Vec<HistoryEntry>);

/// Outbound storage.
pub trait OutboundStore: Send + Sync {
    /// Stores a command (with its `queued` history and an
    /// `outgoing.command` outbox entry) unless its id or idempotency key
    /// exists; returns the stored row and whether it was new.
    fn enqueue<'a>(
        &'a self,
        send: &'a NewSend,
    ) -> BoxFuture<'a, Result<(OutboundRecord, bool), StoreError>>;
    /// Stores a broadcast and all its sends in one transaction (or returns
    /// the existing one of the same idempotency key, and false).
    fn create_broadcast<'a>(
        &'a self,
        broadcast: &'a NewBroadcast,
        sends: &'a [NewSend],
    ) -> BoxFuture<'a, Result<(BroadcastRecord, bool), StoreError>>;
    /// A send and its history.
    fn outbound<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WithHistory>, StoreError>>;
    /// Newest sends first.
    fn outbound_recent(&self, limit: i64)
        -> BoxFuture<'_, Result<Vec<OutboundRecord>, StoreError>>;
    /// Reserves up to `limit` due sends for `owner` until `now + lease`:
    /// queued rows (expired claims are requeued by [`Self::expire_sending`]) that head their
    /// (sender, recipient) queue, of apps not halted and broadcasts not
    /// paused, oldest first.
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<OutboundRecord>, StoreError>>;
    /// `claimed` → `sending` (attempts + 1) if `owner` still holds it.
    fn begin_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        now_ms: i64,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Records how a claimed or sending row ended; false if `owner` no
    /// longer held it.
    fn finish<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        finish: &'a Finish,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// `sending` rows whose lease ran out become `unknown`; returns them.
    /// `claimed` rows whose lease ran out (never begun) go back to `queued`.
    fn expire_sending(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// Settles `unknown` rows from status webhooks (by provider id or
    /// callback data), then applies the policy to those older than the
    /// deadline: `resend_replies` / `resend_broadcasts` requeue them, else
    /// they fail with `unknown_outcome`. Returns (settled, resent, failed).
    fn settle_unknown(
        &self,
        now_ms: i64,
        deadline_ms: i64,
        resend_replies: bool,
        resend_broadcasts: bool,
    ) -> BoxFuture<'_, Result<(u64, u64, u64), StoreError>>;
    /// Time of the latest inbound message from `contact` to `business_id`.
    fn last_inbound<'a>(
        &'a self,
        tenant: &'a str,
        channel: &'a str,
        business_id: &'a str,
        contact: &'a str,
    ) -> BoxFuture<'a, Result<Option<chrono::DateTime<chrono::Utc>>, StoreError>>;
    /// Halts an app (idempotent: the first error is kept).
    fn halt<'a>(&'a self, halt: &'a Halt) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Lifts an app's halt.
    fn lift_halt<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Current halts.
    fn halts(&self) -> BoxFuture<'_, Result<Vec<Halt>, StoreError>>;
    /// A broadcast with counts.
    fn broadcast<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<BroadcastRecord>, StoreError>>;
    /// Newest broadcasts first.
    fn broadcasts(&self, limit: i64) -> BoxFuture<'_, Result<Vec<BroadcastRecord>, StoreError>>;
    /// Pauses (with a reason) or resumes a broadcast; false if unknown or
    /// already finished.
    fn set_broadcast_paused<'a>(
        &'a self,
        id: &'a str,
        paused: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Accepted sends whose first `delivered` (or `read`) status arrived:
    /// stamps each with the status time (once) and returns up to `limit`
    /// of them.
    fn record_deliveries(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Delivered>, StoreError>>;
    /// Deferred sends whose time came are queued again (in their old
    /// place: ahead of what was queued for the recipient meanwhile);
    /// returns how many.
    fn release_deferred(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Marks broadcasts whose sends are all final as finished.
    fn finish_broadcasts(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Queue figures.
    fn outbound_stats(&self) -> BoxFuture<'_, Result<OutboundStats, StoreError>>;
    /// Dead-lettered sends (the outbound part of `inlet dlq`), oldest first.
    fn outbound_dead(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboundRecord>, StoreError>>;
    /// A dead-lettered send goes back to the queue (`dead_lettered` →
    /// `queued`, attempts reset, due now; history `replayed`, `queued`); a
    /// finished broadcast it belongs to runs again. False if it is not
    /// dead-lettered (already replayed, or never was).
    fn revive_send<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Dead-lettered sends an operator gave up on become `failed` with error
    /// class `discarded` (the row and its history stay); returns how many.
    fn discard_dead<'a>(
        &'a self,
        ids: &'a [String],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}
