//! AI drafts with human approval: the operations the drafts API and
//! `inlet drafts` share (create, approve, reject), over the store's
//! [`crate::store::drafts::DraftStore`] and the pure rules of
//! [`crate::outbound::draft`].
//!
//! An approval is checked first (status, version, the channel's text rules,
//! the WhatsApp 24-hour window) so a refusal says why; the store's one
//! conditional update, which also stores the send, stays the authority: of
//! two reviewers approving at once, one gets the send and the other a
//! conflict. A closed window turns the draft into `needs_template` instead
//! of queueing a send the sender would refuse.

use chrono::Utc;
use uuid::Uuid;

use crate::config::Settings;
use crate::model::Channel;
use crate::outbound::draft::{
    check_approval, outbound_id, reply_spec, Action, ApproveRequest, DraftRequest, DraftStatus,
    Refusal, ReplyTarget,
};
use crate::outbound::{window, Invalid};
use crate::store::drafts::{Approval, Approved, Change, Created, DraftRecord, NewDraft};
use crate::store::outbound::{NewSend, OutboundRecord};
use crate::store::{Store, StoreError};

/// Why a draft operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    /// No draft with that id.
    #[error("no draft {0}")]
    NotFound(String),
    /// The request is wrong; the field is named.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The draft is not in a state (or at the version) the action needs.
    #[error("{refusal}")]
    Refused {
        /// Why.
        refusal: Refusal,
        /// The draft as it is.
        draft: Box<DraftRecord>,
    },
    /// The WhatsApp 24-hour window has closed: the draft is now
    /// `needs_template` and nothing was queued.
    #[error("the customer-service window has closed: only a template can be sent now")]
    NeedsTemplate(Box<DraftRecord>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DraftError {
    /// Stable machine code (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            DraftError::NotFound(_) => "not_found",
            DraftError::Invalid(e) => e.code,
            DraftError::Refused { refusal, .. } => refusal.code(),
            DraftError::NeedsTemplate(_) => "needs_template",
            DraftError::Store(_) => "store_unavailable",
        }
    }
}

fn field_error(field: &str, detail: String) -> Invalid {
    Invalid {
        code: "invalid_field",
        field: field.to_string(),
        detail: format!("`{field}`: {detail}"),
    }
}

/// The reply target of a stored draft.
pub fn target_of(d: &DraftRecord) -> Result<ReplyTarget, StoreError> {
    Ok(ReplyTarget {
        channel: Channel::parse(&d.channel).ok_or_else(|| {
            StoreError::Rejected(format!(
                "draft {} has unknown channel {:?}",
                d.id, d.channel
            ))
        })?,
        business_id: d.business_id.clone(),
        contact: d.contact_external_id.clone(),
    })
}

fn status_of(d: &DraftRecord) -> Result<DraftStatus, StoreError> {
    DraftStatus::parse(&d.status).ok_or_else(|| {
        StoreError::Rejected(format!("draft {} has unknown status {:?}", d.id, d.status))
    })
}

/// Stores a new `pending` draft (`draft.after.create`).
pub async fn create(
    store: &Store,
    request: DraftRequest,
    actor: &str,
    trace: Uuid,
) -> Result<DraftRecord, DraftError> {
    let draft = NewDraft {
        id: Uuid::now_v7().to_string(),
        conversation_id: request.conversation_id,
        text: request.text,
        author: request.author,
        reply_to: request.reply_to,
        trace_id: trace.to_string(),
        actor: actor.to_string(),
    };
    match store.drafts().create_draft(&draft).await? {
        Created::Draft(d) => Ok(*d),
        Created::NoConversation => Err(field_error(
            "conversation_id",
            format!("no conversation {}", draft.conversation_id),
        )
        .into()),
        Created::NoSuchMessage => Err(field_error(
            "reply_to",
            "is not an inbound message of this conversation".into(),
        )
        .into()),
        Created::Invalid(e) => Err(e.into()),
    }
}

/// The refusal that explains why an approval found nothing to update.
fn conflict(current: Option<Box<DraftRecord>>, id: &str, request: &ApproveRequest) -> DraftError {
    let Some(draft) = current else {
        return DraftError::NotFound(id.to_string());
    };
    let refusal = status_of(&draft)
        .ok()
        .and_then(|s| check_approval(s, draft.version, request.version, request.force).err())
        // Checked fine now, so another change came and went meanwhile.
        .unwrap_or(Refusal::VersionMismatch {
            current: draft.version,
            given: request.version,
        });
    DraftError::Refused { refusal, draft }
}

/// Approves a draft: checks it, then one conditional update that also
/// stores its send (id derived from the draft), with
/// `draft.after.approve`. Returns the approved draft and its send.
pub async fn approve(
    store: &Store,
    settings: &Settings,
    id: &str,
    request: &ApproveRequest,
    actor: &str,
    trace: Uuid,
) -> Result<(DraftRecord, OutboundRecord), DraftError> {
    let drafts = store.drafts();
    let draft = drafts
        .draft(id)
        .await?
        .ok_or_else(|| DraftError::NotFound(id.to_string()))?;
    if let Err(refusal) = check_approval(
        status_of(&draft)?,
        draft.version,
        request.version,
        request.force,
    ) {
        return Err(DraftError::Refused {
            refusal,
            draft: Box::new(draft),
        });
    }
    let text = request.text.as_deref().unwrap_or(&draft.text);
    let quote = draft
        .quote_anchor
        .then_some(draft.anchor_provider_id.as_deref())
        .flatten();
    let spec = reply_spec(&target_of(&draft)?, text, quote)?;
    if window::requires_window(&spec) {
        let last = store
            .outbound()
            .last_inbound(&draft.tenant, spec.channel.as_str(), &spec.from, &spec.to)
            .await?;
        let margin =
            chrono::Duration::from_std(settings.outbound.window_margin).unwrap_or_default();
        if !window::is_open(last, Utc::now(), margin) {
            let change = Change {
                draft_id: draft.id.clone(),
                action: Action::WindowClosed,
                version: Some(request.version),
                reason: Some("window_closed".into()),
                actor: actor.to_string(),
            };
            return Err(match drafts.change_draft(&change).await? {
                Some(closed) => DraftError::NeedsTemplate(Box::new(closed)),
                None => conflict(drafts.draft(id).await?.map(Box::new), id, request),
            });
        }
    }
    let approval = Approval {
        draft_id: draft.id.clone(),
        version: request.version,
        force: request.force,
        edited_text: request.text.clone().filter(|t| *t != draft.text),
        send: NewSend {
            id: outbound_id(&draft.id),
            tenant: draft.tenant.clone(),
            spec,
            broadcast_id: None,
            trace_id: trace.to_string(),
        },
        actor: actor.to_string(),
    };
    match drafts.approve_draft(&approval).await? {
        Approved::Queued(d, send) => Ok((*d, *send)),
        Approved::Conflict(current) => Err(conflict(current, id, request)),
    }
}

/// Rejects a pending or stale draft (`draft.after.reject`).
pub async fn reject(
    store: &Store,
    id: &str,
    reason: &str,
    actor: &str,
) -> Result<DraftRecord, DraftError> {
    let drafts = store.drafts();
    let change = Change {
        draft_id: id.to_string(),
        action: Action::Reject,
        version: None,
        reason: Some(reason.to_string()),
        actor: actor.to_string(),
    };
    if let Some(d) = drafts.change_draft(&change).await? {
        return Ok(d);
    }
    match drafts.draft(id).await? {
        None => Err(DraftError::NotFound(id.to_string())),
        Some(d) => {
            // Not rejectable, or changed between the update and this read.
            let status = status_of(&d)?;
            let refusal = status
                .apply(Action::Reject)
                .err()
                .unwrap_or(Refusal::InvalidState(status));
            Err(DraftError::Refused {
                refusal,
                draft: Box::new(d),
            })
        }
    }
}
