//! AI drafts with human approval, the pure part: the states of a draft and
//! the one table of how each action moves them, the outbound id an approval
//! derives from the draft, the send a draft becomes, and the request bodies
//! of the drafts API. The store applies every transition as one conditional
//! statement whose guard is read from [`DraftStatus::sources`], so the SQL
//! and this table cannot disagree.
//!
//! The loop (research notes, "Human-in-the-loop AI drafts"): a model writes
//! a reply to a conversation, anchored to the inbound message it answers; a
//! reviewer approves it (possibly edited), rejects it, or it goes stale when
//! the customer writes again before anyone approved it (the reviewer then
//! decides: `force`, or a new draft). Approving queues exactly one send,
//! whose id is derived from the draft, in the same transaction; the draft
//! then follows that send (`sent`, or why it failed).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::request::{Invalid, SendSpec};
use crate::model::Channel;

/// Namespace of the outbound ids derived from draft ids (UUIDv5).
pub const DRAFT_SEND_NAMESPACE: Uuid = Uuid::from_u128(0x3f9d_1c6e_8a27_4b51_b0e4_7d2a_c91f_5e08);

/// Longest accepted `author` (a model name, a service, a person).
pub const MAX_AUTHOR: usize = 200;
/// Longest accepted rejection reason.
pub const MAX_REASON: usize = 1000;

/// Where a draft is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftStatus {
    /// Waiting for a reviewer.
    Pending,
    /// Approved: its send is queued.
    Approved,
    /// Meta accepted its send.
    Sent,
    /// A reviewer rejected it.
    Rejected,
    /// The customer wrote again after the anchor; approval needs `force`.
    Stale,
    /// Nobody reviewed it in time (`drafts.expire_after_ms`).
    Expired,
    /// The WhatsApp 24-hour window closed: only a template can go now.
    NeedsTemplate,
    /// Its send failed for good (permanent error, retries used up).
    Failed,
}

impl DraftStatus {
    /// Every status.
    pub const ALL: [DraftStatus; 8] = [
        DraftStatus::Pending,
        DraftStatus::Approved,
        DraftStatus::Sent,
        DraftStatus::Rejected,
        DraftStatus::Stale,
        DraftStatus::Expired,
        DraftStatus::NeedsTemplate,
        DraftStatus::Failed,
    ];

    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            DraftStatus::Pending => "pending",
            DraftStatus::Approved => "approved",
            DraftStatus::Sent => "sent",
            DraftStatus::Rejected => "rejected",
            DraftStatus::Stale => "stale",
            DraftStatus::Expired => "expired",
            DraftStatus::NeedsTemplate => "needs_template",
            DraftStatus::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The statuses `action` applies to (the guard of its SQL statement).
    pub fn sources(action: Action) -> Vec<DraftStatus> {
        Self::ALL
            .into_iter()
            .filter(|s| s.apply(action).is_ok())
            .collect()
    }

    /// The stored names of [`DraftStatus::sources`].
    pub fn source_names(action: Action) -> Vec<&'static str> {
        Self::sources(action)
            .into_iter()
            .map(Self::as_str)
            .collect()
    }

    /// What `action` makes of a draft in this status, or why it cannot.
    ///
    /// | from | action | to |
    /// |---|---|---|
    /// | pending | approve | approved |
    /// | stale | approve with `force` | approved |
    /// | pending, stale | reject | rejected |
    /// | pending | a newer inbound message | stale |
    /// | pending, stale | the window closed | needs_template |
    /// | pending, stale | not reviewed in time | expired |
    /// | approved | its send ended | sent / failed / needs_template |
    /// | failed | its send replayed from the DLQ | approved |
    ///
    /// Everything else is refused: `sent`, `rejected`, `expired` and
    /// `needs_template` are final.
    pub fn apply(self, action: Action) -> Result<DraftStatus, Refusal> {
        use DraftStatus as S;
        match (self, action) {
            (S::Pending, Action::Approve { .. }) => Ok(S::Approved),
            (S::Stale, Action::Approve { force: true }) => Ok(S::Approved),
            (S::Stale, Action::Approve { force: false }) => Err(Refusal::NeedsForce),
            (S::Pending | S::Stale, Action::Reject) => Ok(S::Rejected),
            (S::Pending, Action::NewerInbound) => Ok(S::Stale),
            (S::Pending | S::Stale, Action::WindowClosed) => Ok(S::NeedsTemplate),
            (S::Pending | S::Stale, Action::Expire) => Ok(S::Expired),
            (S::Approved, Action::SendEnded(outcome)) => Ok(outcome.draft_status()),
            (S::Failed, Action::SendRevived) => Ok(S::Approved),
            (from, _) => Err(Refusal::InvalidState(from)),
        }
    }
}

impl std::fmt::Display for DraftStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to a draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A reviewer approves it (`force`: also when stale).
    Approve {
        /// Approve a stale draft anyway.
        force: bool,
    },
    /// A reviewer rejects it.
    Reject,
    /// An inbound message newer than the anchor arrived.
    NewerInbound,
    /// The customer-service window closed before approval.
    WindowClosed,
    /// Nobody reviewed it within `drafts.expire_after_ms`.
    Expire,
    /// The send of an approved draft reached a final state.
    SendEnded(SendOutcome),
    /// The dead-lettered send of a failed draft was replayed.
    SendRevived,
}

impl Action {
    /// The status the action leads to (the same from each of its sources).
    pub fn target(self) -> Option<DraftStatus> {
        DraftStatus::sources(self)
            .first()
            .and_then(|s| s.apply(self).ok())
    }

    /// The operation of its `draft.after.*` event.
    pub fn operation(self) -> &'static str {
        match self {
            Action::Approve { .. } => "approve",
            Action::Reject => "reject",
            _ => "update",
        }
    }
}

/// How the send of an approved draft ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Meta accepted it (also: held for quality assessment).
    Accepted,
    /// Refused locally: the 24-hour window had closed.
    NeedsTemplate,
    /// A permanent error, or retries used up.
    Failed,
}

impl SendOutcome {
    /// The draft status this outcome leads to.
    pub fn draft_status(self) -> DraftStatus {
        match self {
            SendOutcome::Accepted => DraftStatus::Sent,
            SendOutcome::NeedsTemplate => DraftStatus::NeedsTemplate,
            SendOutcome::Failed => DraftStatus::Failed,
        }
    }

    /// The outcome a stored send state means, if it is final
    /// ([`crate::store::outbound::state`] names; `queued`, `sending`,
    /// `unknown`, … are not).
    pub fn of_send_state(state: &str) -> Option<SendOutcome> {
        match state {
            "accepted" | "held" => Some(SendOutcome::Accepted),
            "needs_template" => Some(SendOutcome::NeedsTemplate),
            "failed" | "dead_lettered" => Some(SendOutcome::Failed),
            _ => None,
        }
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The draft is in a state the action does not apply to.
    #[error("the draft is {0}")]
    InvalidState(DraftStatus),
    /// The draft is stale: a newer inbound message arrived after its anchor.
    #[error("a newer message arrived after the draft's anchor: approve with \"force\": true, or write a new draft")]
    NeedsForce,
    /// The reviewer saw another version.
    #[error("the draft is at version {current}, not {given}")]
    VersionMismatch {
        /// The draft's version.
        current: i32,
        /// The version the reviewer approved.
        given: i32,
    },
}

impl Refusal {
    /// Stable machine code (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidState(_) => "invalid_state",
            Refusal::NeedsForce => "stale",
            Refusal::VersionMismatch { .. } => "version_conflict",
        }
    }
}

/// Whether a reviewer's approval of `version` (with `force`) applies to a
/// draft at `status` and `current` version: the same check the store's
/// conditional update makes, to answer with the reason.
pub fn check_approval(
    status: DraftStatus,
    current: i32,
    given: i32,
    force: bool,
) -> Result<(), Refusal> {
    status.apply(Action::Approve { force })?;
    if current != given {
        return Err(Refusal::VersionMismatch { current, given });
    }
    Ok(())
}

/// The outbound id of a draft's send: derived from the draft id, so a
/// second approval can never queue a second send (the id is unique).
pub fn outbound_id(draft_id: &str) -> String {
    Uuid::new_v5(&DRAFT_SEND_NAMESPACE, draft_id.as_bytes()).to_string()
}

/// Housekeeping limits at `now_ms`: a WhatsApp draft whose conversation
/// has no inbound message after the first value has a closed window (the
/// 24 hours less `margin_ms`, as [`super::window::is_open`] decides); an
/// open draft created before the second value is expired.
pub fn close_thresholds(now_ms: i64, margin_ms: i64, expire_after_ms: i64) -> (i64, i64) {
    let window = super::window::WINDOW.num_milliseconds();
    (now_ms - window + margin_ms, now_ms - expire_after_ms)
}

/// Who a draft answers: the conversation's business endpoint and contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTarget {
    /// Channel of the conversation.
    pub channel: Channel,
    /// Phone number id / Page id / Instagram account id (the sender).
    pub business_id: String,
    /// The contact's channel id (phone number, BSUID, PSID, IGSID).
    pub contact: String,
}

/// The send a draft becomes: a text to the conversation's contact from its
/// business endpoint, quoting `quote` (a WhatsApp provider message id) when
/// given. Validated exactly as `POST /api/messages` validates; a bad text
/// is reported as field `text`.
pub fn reply_spec(
    target: &ReplyTarget,
    text: &str,
    quote: Option<&str>,
) -> Result<SendSpec, Invalid> {
    let mut body = Map::new();
    body.insert("channel".into(), json!(target.channel.as_str()));
    body.insert("from".into(), json!(target.business_id));
    body.insert("to".into(), json!(target.contact));
    body.insert("type".into(), json!("text"));
    body.insert("text".into(), json!({"body": text}));
    if let (Some(q), Channel::Whatsapp) = (quote, target.channel) {
        body.insert("reply_to".into(), json!(q));
    }
    SendSpec::from_object(&body).map_err(|mut e| {
        if e.field.starts_with("text") {
            e.field = "text".into();
            e.detail = e.detail.replacen("`text.body`", "`text`", 1);
        }
        e
    })
}

fn invalid(code: &'static str, field: &str, detail: &str) -> Invalid {
    Invalid {
        code,
        field: field.to_string(),
        detail: format!("`{field}`: {detail}"),
    }
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid("invalid_body", "body", &format!("is not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(invalid("invalid_body", "body", "must be a JSON object")),
    }
}

/// A required or optional string of 1 to `max` characters.
fn text_field(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
    required: bool,
) -> Result<Option<String>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) if required => Err(invalid("missing_field", field, "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            let n = s.chars().count();
            if n == 0 || n > max {
                Err(invalid(
                    "invalid_field",
                    field,
                    &format!("must be a string of 1 to {max} characters"),
                ))
            } else {
                Ok(Some(s.to_string()))
            }
        }
        Some(_) => Err(invalid("invalid_field", field, "must be a string")),
    }
}

/// `POST /api/drafts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftRequest {
    /// The conversation answered.
    pub conversation_id: i64,
    /// The proposed reply (checked against the channel's text rules when the
    /// conversation is known).
    pub text: String,
    /// Who wrote it: a model name, a service.
    pub author: String,
    /// Provider id of the inbound message it answers (default: the latest
    /// inbound message of the conversation); the send quotes it.
    pub reply_to: Option<String>,
}

impl DraftRequest {
    /// Parses and checks a body.
    pub fn parse(body: &[u8]) -> Result<DraftRequest, Invalid> {
        let obj = body_object(body)?;
        let conversation_id = match obj.get("conversation_id") {
            None | Some(Value::Null) => {
                return Err(invalid("missing_field", "conversation_id", "is required"))
            }
            Some(v) => v.as_i64().filter(|id| *id > 0).ok_or_else(|| {
                invalid(
                    "invalid_field",
                    "conversation_id",
                    "must be a conversation id (a positive integer)",
                )
            })?,
        };
        // The channel's own limit (4096 on WhatsApp, 2000 on Messenger) is
        // checked by `reply_spec` once the conversation is known.
        let text = match obj.get("text") {
            None | Some(Value::Null) => {
                return Err(invalid("missing_field", "text", "is required"))
            }
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => {
                return Err(invalid(
                    "invalid_field",
                    "text",
                    "must be a non-empty string",
                ))
            }
        };
        let author = text_field(&obj, "author", MAX_AUTHOR, true)?.unwrap_or_default();
        let reply_to = text_field(&obj, "reply_to", 512, false)?;
        Ok(DraftRequest {
            conversation_id,
            text,
            author,
            reply_to,
        })
    }
}

/// `POST /api/drafts/{id}/approve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproveRequest {
    /// The version the reviewer saw.
    pub version: i32,
    /// The reviewer's edit of the text, if any.
    pub text: Option<String>,
    /// Approve even when stale.
    pub force: bool,
}

impl ApproveRequest {
    /// Parses and checks a body.
    pub fn parse(body: &[u8]) -> Result<ApproveRequest, Invalid> {
        let obj = body_object(body)?;
        let version = match obj.get("version") {
            None | Some(Value::Null) => {
                return Err(invalid("missing_field", "version", "is required"))
            }
            Some(v) => v
                .as_i64()
                .filter(|v| *v >= 1)
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| {
                    invalid(
                        "invalid_field",
                        "version",
                        "must be the draft's version (a positive integer)",
                    )
                })?,
        };
        let text = match obj.get("text") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "invalid_field",
                    "text",
                    "must be a non-empty string",
                ))
            }
        };
        let force = match obj.get("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("invalid_field", "force", "must be true or false")),
        };
        Ok(ApproveRequest {
            version,
            text,
            force,
        })
    }
}

/// `POST /api/drafts/{id}/reject`: the reason.
pub fn parse_reject(body: &[u8]) -> Result<String, Invalid> {
    let obj = body_object(body)?;
    Ok(text_field(&obj, "reason", MAX_REASON, true)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use DraftStatus as S;

    #[test]
    fn approval_moves_only_pending_drafts_and_stale_ones_with_force() {
        assert_eq!(
            S::Pending.apply(Action::Approve { force: false }),
            Ok(S::Approved)
        );
        assert_eq!(
            S::Pending.apply(Action::Approve { force: true }),
            Ok(S::Approved)
        );
        assert_eq!(
            S::Stale.apply(Action::Approve { force: false }),
            Err(Refusal::NeedsForce)
        );
        assert_eq!(
            S::Stale.apply(Action::Approve { force: true }),
            Ok(S::Approved)
        );
        for s in [
            S::Approved,
            S::Sent,
            S::Rejected,
            S::Expired,
            S::NeedsTemplate,
            S::Failed,
        ] {
            assert_eq!(
                s.apply(Action::Approve { force: true }),
                Err(Refusal::InvalidState(s)),
                "{s}"
            );
        }
        assert_eq!(
            S::source_names(Action::Approve { force: false }),
            ["pending"]
        );
        assert_eq!(
            S::source_names(Action::Approve { force: true }),
            ["pending", "stale"]
        );
    }

    #[test]
    fn only_pending_drafts_go_stale_and_only_open_ones_close() {
        assert_eq!(S::source_names(Action::NewerInbound), ["pending"]);
        assert_eq!(S::source_names(Action::Reject), ["pending", "stale"]);
        assert_eq!(S::source_names(Action::WindowClosed), ["pending", "stale"]);
        assert_eq!(S::source_names(Action::Expire), ["pending", "stale"]);
        assert_eq!(S::Pending.apply(Action::NewerInbound), Ok(S::Stale));
        assert_eq!(S::Stale.apply(Action::WindowClosed), Ok(S::NeedsTemplate));
        assert_eq!(S::Pending.apply(Action::Expire), Ok(S::Expired));
        assert_eq!(S::Stale.apply(Action::Reject), Ok(S::Rejected));
        assert_eq!(Action::Reject.target(), Some(S::Rejected));
        assert_eq!(Action::NewerInbound.target(), Some(S::Stale));
        assert_eq!(Action::Approve { force: true }.target(), Some(S::Approved));
        assert_eq!(
            Action::SendEnded(SendOutcome::NeedsTemplate).target(),
            Some(S::NeedsTemplate)
        );
        assert_eq!(Action::Reject.operation(), "reject");
        assert_eq!(Action::Expire.operation(), "update");
        assert_eq!(
            S::Approved.apply(Action::Reject),
            Err(Refusal::InvalidState(S::Approved))
        );
    }

    #[test]
    fn an_approved_draft_follows_its_send() {
        let ended = |state: &str| {
            SendOutcome::of_send_state(state).map(|o| S::Approved.apply(Action::SendEnded(o)))
        };
        assert_eq!(ended("accepted"), Some(Ok(S::Sent)));
        assert_eq!(ended("held"), Some(Ok(S::Sent)));
        assert_eq!(ended("needs_template"), Some(Ok(S::NeedsTemplate)));
        assert_eq!(ended("failed"), Some(Ok(S::Failed)));
        assert_eq!(ended("dead_lettered"), Some(Ok(S::Failed)));
        for open in ["queued", "claimed", "sending", "unknown"] {
            assert_eq!(ended(open), None, "{open} is not final");
        }
        let outcome = Action::SendEnded(SendOutcome::Accepted);
        assert_eq!(S::source_names(outcome), ["approved"]);
        // A replayed dead letter puts the draft back to approved.
        assert_eq!(S::source_names(Action::SendRevived), ["failed"]);
        assert_eq!(S::Failed.apply(Action::SendRevived), Ok(S::Approved));
    }

    #[test]
    fn final_states_take_no_action() {
        let actions = [
            Action::Approve { force: true },
            Action::Reject,
            Action::NewerInbound,
            Action::WindowClosed,
            Action::Expire,
            Action::SendEnded(SendOutcome::Accepted),
            Action::SendRevived,
        ];
        for s in [S::Sent, S::Rejected, S::Expired, S::NeedsTemplate] {
            for a in actions {
                assert!(s.apply(a).is_err(), "{s} must refuse {a:?}");
            }
        }
    }

    #[test]
    fn the_version_must_be_the_current_one() {
        assert_eq!(check_approval(S::Pending, 1, 1, false), Ok(()));
        assert_eq!(
            check_approval(S::Pending, 2, 1, false),
            Err(Refusal::VersionMismatch {
                current: 2,
                given: 1
            })
        );
        assert_eq!(
            check_approval(S::Stale, 2, 2, false),
            Err(Refusal::NeedsForce)
        );
        assert_eq!(check_approval(S::Stale, 2, 2, true), Ok(()));
        assert_eq!(
            check_approval(S::Approved, 2, 2, true).unwrap_err().code(),
            "invalid_state"
        );
    }

    #[test]
    fn housekeeping_closes_the_window_as_the_gate_does() {
        let now = 1_800_000_000_000_i64;
        let margin = 600_000;
        let (opened_after, created_before) = close_thresholds(now, margin, 7 * 86_400_000);
        assert_eq!(created_before, now - 7 * 86_400_000);
        let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap();
        let margin_d = chrono::Duration::milliseconds(margin);
        // A last message just after the threshold: open; at it: closed.
        assert!(crate::outbound::window::is_open(
            Some(at(opened_after + 1)),
            at(now),
            margin_d
        ));
        assert!(!crate::outbound::window::is_open(
            Some(at(opened_after)),
            at(now),
            margin_d
        ));
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        assert_eq!(S::parse("pending_review"), None);
    }

    #[test]
    fn the_send_id_is_derived_from_the_draft() {
        let a = outbound_id("0193a3c4-0000-7000-8000-000000000001");
        assert_eq!(a, outbound_id("0193a3c4-0000-7000-8000-000000000001"));
        assert_ne!(a, outbound_id("0193a3c4-0000-7000-8000-000000000002"));
        assert!(crate::outbound::request::is_outbound_id(&a));
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }

    #[test]
    fn a_draft_becomes_a_validated_text_send() {
        let wa = ReplyTarget {
            channel: Channel::Whatsapp,
            business_id: "106540352242922".into(),
            contact: "15550001111".into(),
        };
        let spec = reply_spec(&wa, "Yes, in stock.", Some("wamid.X")).unwrap();
        assert_eq!(spec.to, "15550001111");
        assert_eq!(spec.from, "106540352242922");
        assert_eq!(spec.content["body"], "Yes, in stock.");
        assert_eq!(spec.reply_to.as_deref(), Some("wamid.X"));
        assert_eq!(spec.idempotency_key, None);
        let bsuid = ReplyTarget {
            contact: "US.13491208655302741918".into(),
            ..wa.clone()
        };
        assert_eq!(
            reply_spec(&bsuid, "hi", None).unwrap().recipient_kind,
            crate::outbound::RecipientKind::Bsuid
        );
        // Messenger has no quoted replies: the quote is dropped, not refused.
        let fb = ReplyTarget {
            channel: Channel::Messenger,
            business_id: "300000000000003".into(),
            contact: "4000000000000004".into(),
        };
        assert_eq!(reply_spec(&fb, "hi", Some("m_1")).unwrap().reply_to, None);
        // Too long for Messenger (2000), fine for WhatsApp (4096).
        let long = "x".repeat(3000);
        let e = reply_spec(&fb, &long, None).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("invalid_field", "text"));
        assert!(e.detail.starts_with("`text`"), "{}", e.detail);
        assert!(reply_spec(&wa, &long, None).is_ok());
    }

    #[test]
    fn request_bodies_name_the_wrong_field() {
        let ok = DraftRequest::parse(
            br#"{"conversation_id": 7, "text": "Sure!", "author": "gpt-4o", "reply_to": "wamid.A"}"#,
        )
        .unwrap();
        assert_eq!(ok.conversation_id, 7);
        assert_eq!(ok.reply_to.as_deref(), Some("wamid.A"));
        let field = |body: &str| DraftRequest::parse(body.as_bytes()).unwrap_err().field;
        assert_eq!(field(r#"{"text": "a", "author": "m"}"#), "conversation_id");
        assert_eq!(
            field(r#"{"conversation_id": "7", "text": "a", "author": "m"}"#),
            "conversation_id"
        );
        assert_eq!(field(r#"{"conversation_id": 7, "author": "m"}"#), "text");
        assert_eq!(
            field(r#"{"conversation_id": 7, "text": "  ", "author": "m"}"#),
            "text"
        );
        assert_eq!(field(r#"{"conversation_id": 7, "text": "a"}"#), "author");
        assert_eq!(field("[]"), "body");

        let a =
            ApproveRequest::parse(br#"{"version": 2, "text": "edited", "force": true}"#).unwrap();
        assert_eq!(
            a,
            ApproveRequest {
                version: 2,
                text: Some("edited".into()),
                force: true
            }
        );
        assert!(!ApproveRequest::parse(br#"{"version": 1}"#).unwrap().force);
        let field = |body: &str| ApproveRequest::parse(body.as_bytes()).unwrap_err().field;
        assert_eq!(field("{}"), "version");
        assert_eq!(field(r#"{"version": 0}"#), "version");
        assert_eq!(field(r#"{"version": 1, "force": "yes"}"#), "force");
        assert_eq!(field(r#"{"version": 1, "text": ""}"#), "text");

        assert_eq!(
            parse_reject(br#"{"reason": "tone"}"#).unwrap(),
            "tone".to_string()
        );
        assert_eq!(parse_reject(b"{}").unwrap_err().field, "reason");
    }
}
