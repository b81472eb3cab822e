//! The drafts API and the event stream, behind the same bearer token as the
//! rest of `/api`.
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /api/drafts` | store a `pending` draft reply → 201 `{id, status, version}` |
//! | `GET /api/drafts?status=&conversation_id=&limit=` | drafts, newest first |
//! | `GET /api/drafts/{id}` | one draft (and its send, once approved) |
//! | `POST /api/drafts/{id}/approve` | `{version, text?, force?}`: queue its send, once |
//! | `POST /api/drafts/{id}/reject` | `{reason}` |
//! | `GET /api/events/stream` | Server-Sent Events of the event log (`type`, `conversation_id`, `Last-Event-ID`) |
//!
//! Refusals are 409 `{code, detail, draft}` with `code` `version_conflict`,
//! `stale` (approve with `force`), `invalid_state` or `needs_template`.

use std::sync::atomic::Ordering;
use std::task::Poll;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::api::{error, ms_to_rfc3339, no_store, store_error, store_of, ApiQuery};
use super::outbound::{message_view, InvalidBody};
use super::AppState;
use crate::audit::AuditRecord;
use crate::drafts::DraftError;
use crate::feed::{parse_last_event_id, FeedError, ReaderLimits, Start, StreamFilter};
use crate::outbound::draft::{parse_reject, ApproveRequest, DraftRequest, DraftStatus};
use crate::store::drafts::{DraftFilter, DraftRecord};
use crate::store::{Store, StoreError};

/// 201 answer of `POST /api/drafts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DraftCreated {
    /// Draft id.
    pub id: String,
    /// `pending`.
    pub status: String,
    /// 1.
    pub version: i32,
}

/// 200 answer of `POST /api/drafts/{id}/approve`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DraftApproved {
    /// Draft id.
    pub id: String,
    /// `approved`.
    pub status: String,
    /// The new version.
    pub version: i32,
    /// The queued send (`GET /api/messages/{outbound_id}`).
    pub outbound_id: String,
}

/// 409 answer: why the draft did not change, and how it is now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DraftConflict {
    /// `version_conflict`, `stale`, `invalid_state`, `needs_template`.
    pub code: String,
    /// What is wrong, for a human.
    pub detail: String,
    /// The draft as it is (see `GET /api/drafts/{id}`).
    #[schema(value_type = Object)]
    pub draft: Value,
}

/// The JSON view of a draft (API and `inlet drafts`).
pub fn draft_view(d: &DraftRecord) -> Value {
    json!({
        "id": d.id,
        "status": d.status,
        "version": d.version,
        "conversation_id": d.conversation_id,
        "channel": d.channel,
        "author": d.author,
        "text": d.text,
        "final_text": d.final_text,
        "reply_to": d.anchor_provider_id,
        "quoted": d.quote_anchor,
        "outbound_id": d.outbound_id,
        "forced": d.forced,
        "reason": d.reason,
        "trace_id": d.trace_id,
        "created_at": ms_to_rfc3339(d.created_ms),
        "updated_at": ms_to_rfc3339(d.updated_ms),
        "approved_at": d.approved_ms.and_then(ms_to_rfc3339),
    })
}

fn counted(action: &'static str, outcome: &'static str) {
    metrics::counter!("inlet_draft_requests_total", "action" => action, "outcome" => outcome)
        .increment(1);
}

/// The answer to a failed draft operation.
fn refused(action: &'static str, e: DraftError) -> Response {
    counted(
        action,
        match &e {
            DraftError::NotFound(_) => "not_found",
            DraftError::Invalid(_) => "invalid",
            DraftError::Refused { .. } => "conflict",
            DraftError::NeedsTemplate(_) => "needs_template",
            DraftError::Store(_) => "unavailable",
        },
    );
    let code = e.code();
    match e {
        DraftError::NotFound(id) => {
            error(StatusCode::NOT_FOUND, "not_found", format!("no draft {id}"))
        }
        DraftError::Invalid(i) => (
            StatusCode::BAD_REQUEST,
            Json(InvalidBody {
                code: i.code.to_string(),
                field: i.field,
                detail: i.detail,
            }),
        )
            .into_response(),
        DraftError::Refused { ref draft, .. } | DraftError::NeedsTemplate(ref draft) => {
            let view = draft_view(draft);
            (
                StatusCode::CONFLICT,
                Json(DraftConflict {
                    code: code.to_string(),
                    detail: e.to_string(),
                    draft: view,
                }),
            )
                .into_response()
        }
        DraftError::Store(s) => store_error(&s),
    }
}

fn audit(state: &AppState, d: &DraftRecord, outcome: &str, trace: Option<Uuid>) {
    let mut r = AuditRecord::new("draft")
        .origin(&d.channel, &d.tenant)
        .outcome(outcome)
        .with("draft_id", d.id.clone())
        .with("conversation_id", d.conversation_id)
        .with("version", d.version);
    if let Some(o) = &d.outbound_id {
        r = r.with("outbound_id", o.clone());
    }
    if let Some(t) = trace.or_else(|| d.trace_id.parse().ok()) {
        r = r.trace(t);
    }
    state.audit.write(r);
}

fn with_trace(mut res: Response, trace: &Uuid) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&trace.to_string()) {
        res.headers_mut().insert("x-trace-id", v);
    }
    res
}

fn invalid_body(e: crate::outbound::Invalid) -> Response {
    refused("create", DraftError::Invalid(e))
}

#[utoipa::path(post, path = "/api/drafts", tag = "drafts",
    request_body(content = Object, description = "{conversation_id, text, author, reply_to?}: reply_to is the provider id of the inbound message answered (default: the conversation's latest; given, the send quotes it)", content_type = "application/json"),
    responses((status = 201, description = "stored as pending; `draft.after.create` is emitted", body = DraftCreated),
        (status = 400, description = "invalid body, unknown conversation or reply_to, or a text the channel refuses: the field is named", body = InvalidBody),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable; nothing was stored", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn create_draft(State(state): State<AppState>, body: Bytes) -> Response {
    let trace = Uuid::now_v7();
    let request = match DraftRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return with_trace(invalid_body(e), &trace),
    };
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let res = match crate::drafts::create(store, request, "api", trace).await {
        Ok(d) => {
            counted("create", "created");
            audit(&state, &d, "created", Some(trace));
            (
                StatusCode::CREATED,
                Json(DraftCreated {
                    id: d.id,
                    status: d.status,
                    version: d.version,
                }),
            )
                .into_response()
        }
        Err(e) => refused("create", e),
    };
    with_trace(res, &trace)
}

/// Query of `GET /api/drafts`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    conversation_id: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/drafts", tag = "drafts",
    params(("status" = Option<String>, Query, description = "pending, approved, sent, rejected, stale, expired, needs_template or failed"),
        ("conversation_id" = Option<i64>, Query, description = "only this conversation"),
        ("limit" = Option<i64>, Query, description = "1..=1000, default 100")),
    responses((status = 200, description = "{drafts: [...]}, newest first", body = Object),
        (status = 400, description = "unknown status", body = super::api::ApiError),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn list_drafts(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Response {
    if let Some(s) = &q.status {
        if DraftStatus::parse(s).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "status {s:?} is not one of {}",
                    DraftStatus::ALL.map(DraftStatus::as_str).join(", ")
                ),
            );
        }
    }
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let filter = DraftFilter {
        status: q.status,
        conversation_id: q.conversation_id,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    match store.drafts().drafts(&filter).await {
        Ok(list) => {
            Json(json!({"drafts": list.iter().map(draft_view).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => store_error(&e),
    }
}

/// One draft with its send, when approved.
pub async fn draft_with_send(store: &Store, id: &str) -> Result<Option<Value>, StoreError> {
    let Some(d) = store.drafts().draft(id).await? else {
        return Ok(None);
    };
    let mut view = draft_view(&d);
    if let Some(o) = &d.outbound_id {
        if let Some((send, _)) = store.outbound().outbound(o).await? {
            view["send"] = message_view(&send, None);
        }
    }
    Ok(Some(view))
}

#[utoipa::path(get, path = "/api/drafts/{id}", tag = "drafts",
    params(("id" = String, Path, description = "draft id")),
    responses((status = 200, description = "the draft; `send` (its outbound message) once approved", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such draft, or API disabled", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn get_draft(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    match draft_with_send(store, &id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("no draft {id}")),
        Err(e) => store_error(&e),
    }
}

#[utoipa::path(post, path = "/api/drafts/{id}/approve", tag = "drafts",
    params(("id" = String, Path, description = "draft id")),
    request_body(content = Object, description = "{version, text?, force?}: the version the reviewer saw; an edited text; force approves a stale draft", content_type = "application/json"),
    responses((status = 200, description = "approved; its send is queued (once: the send id is derived from the draft); `draft.after.approve` is emitted", body = DraftApproved),
        (status = 400, description = "invalid body, or an edited text the channel refuses", body = InvalidBody),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such draft, or API disabled", body = super::api::ApiError),
        (status = 409, description = "not approved: version_conflict (another change or approval came first), stale (needs force), invalid_state, needs_template (the 24-hour window closed; the draft is now needs_template)", body = DraftConflict),
        (status = 503, description = "the store is unreachable; nothing changed", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn approve_draft(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let trace = Uuid::now_v7();
    let request = match ApproveRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return with_trace(refused("approve", DraftError::Invalid(e)), &trace),
    };
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let res =
        match crate::drafts::approve(store, &state.settings, &id, &request, "api", trace).await {
            Ok((d, send)) => {
                counted("approve", "approved");
                audit(&state, &d, "approved", Some(trace));
                Json(DraftApproved {
                    id: d.id,
                    status: d.status,
                    version: d.version,
                    outbound_id: send.id,
                })
                .into_response()
            }
            Err(e) => {
                if let DraftError::NeedsTemplate(d) = &e {
                    audit(&state, d, "needs_template", Some(trace));
                }
                refused("approve", e)
            }
        };
    with_trace(res, &trace)
}

#[utoipa::path(post, path = "/api/drafts/{id}/reject", tag = "drafts",
    params(("id" = String, Path, description = "draft id")),
    request_body(content = Object, description = "{reason}", content_type = "application/json"),
    responses((status = 200, description = "rejected; `draft.after.reject` is emitted", body = Object),
        (status = 400, description = "invalid body", body = InvalidBody),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such draft, or API disabled", body = super::api::ApiError),
        (status = 409, description = "not pending or stale", body = DraftConflict),
        (status = 503, description = "the store is unreachable; nothing changed", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn reject_draft(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let reason = match parse_reject(&body) {
        Ok(r) => r,
        Err(e) => return refused("reject", DraftError::Invalid(e)),
    };
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    match crate::drafts::reject(store, &id, &reason, "api").await {
        Ok(d) => {
            counted("reject", "rejected");
            audit(&state, &d, "rejected", None);
            Json(draft_view(&d)).into_response()
        }
        Err(e) => refused("reject", e),
    }
}

/// Query of `GET /api/events/stream`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct StreamQuery {
    #[serde(rename = "type")]
    types: Option<String>,
    conversation_id: Option<String>,
}

#[utoipa::path(get, path = "/api/events/stream", tag = "events",
    params(("type" = Option<String>, Query, description = "comma-separated event type patterns: `*` one segment, a trailing `*` the rest (`draft.*`)"),
        ("conversation_id" = Option<i64>, Query, description = "only events of this conversation (drafts; conversation events by their id)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "resume after this event (the `id:` of the last event received; the event log sequence)")),
    responses((status = 200, description = "text/event-stream: `id:` the event log sequence, `data:` the event as JSON; `:heartbeat` comment lines; ends when the client is too slow (reconnect with Last-Event-ID) or the gateway stops", content_type = "text/event-stream"),
        (status = 400, description = "bad filter, or a Last-Event-ID that is not in the event log", body = super::api::ApiError),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn event_stream(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(feed) = &state.feed else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stream_unavailable",
            "this gateway has no event stream",
        );
    };
    let filter = match StreamFilter::parse(q.types.as_deref(), q.conversation_id.as_deref()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let start = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => Start::Head,
        Some(Ok(raw)) => match parse_last_event_id(raw) {
            Some(seq) => Start::After(seq),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("Last-Event-ID {raw:?} is not an event id"),
                )
            }
        },
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Last-Event-ID is not text",
            )
        }
    };
    let events = &state.settings.events;
    let limits = ReaderLimits {
        buffer: events.stream_buffer,
        stall: events.stream_stall,
    };
    let reader = match feed.reader(start, filter, limits).await {
        Ok(r) => r,
        Err(e @ FeedError::UnknownEvent(_)) => {
            return error(StatusCode::BAD_REQUEST, "unknown_event_id", e.to_string())
        }
        Err(FeedError::Store(e)) => return store_error(&e),
    };
    let crate::feed::Reader {
        events: mut rx,
        too_slow,
    } = reader;
    let stream = futures_util::stream::poll_fn(move |cx| {
        // A client too slow to take its buffer is cut off at once.
        if too_slow.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(std::io::Error::other(
                "event stream client too slow",
            ))));
        }
        match rx.poll_recv(cx) {
            Poll::Ready(Some((cursor, event))) => {
                let data = serde_json::to_string(&event).unwrap_or_else(|_| "null".into());
                Poll::Ready(Some(Ok(SseEvent::default()
                    .id(cursor.seq.to_string())
                    .data(data))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    });
    let mut res = Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(events.stream_heartbeat)
                .text("heartbeat"),
        )
        .into_response();
    // nginx (config/nginx) would otherwise buffer the stream.
    res.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    res
}
