//! The send API (`/api/messages`, `/api/broadcasts`), behind the same bearer
//! token as the read API.
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /api/messages` | validate, store (durable first), 202 `{id, status}` |
//! | `GET /api/messages/{id}` | state, provider id, attempts, error, history |
//! | `POST /api/broadcasts` | one template to up to 100,000 recipients, stored as a plan |
//! | `GET /api/broadcasts` | newest broadcasts with counts |
//! | `GET /api/broadcasts/{id}` | counts per status, `finished_at` |
//! | `POST /api/broadcasts/{id}/pause`, `/resume` | stop / continue dispatching |
//!
//! A command is stored before anything is sent; the sender (worker, or a
//! Redis-less gateway) sends it. The same `idempotency_key` returns the
//! stored id (409 `idempotency_conflict` when the body differs). Every
//! response carries `X-Trace-Id`; a 400 names the field
//! (`{code, field, detail}`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::api::{error, ms_to_rfc3339, no_store, store_error, store_of};
use super::AppState;
use crate::audit::AuditRecord;
use crate::outbound::{BroadcastSpec, Invalid, SendSpec};
use crate::store::outbound::{
    BroadcastRecord, HistoryEntry, NewBroadcast, NewSend, OutboundRecord,
};

/// 202 answer of `POST /api/messages`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// Outbound id.
    pub id: String,
    /// `queued` (or the current status when the idempotency key existed).
    pub status: String,
}

/// 202 answer of `POST /api/broadcasts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BroadcastQueued {
    /// Broadcast id.
    pub id: String,
    /// `running`, `paused`, `finished`.
    pub status: String,
    /// Recipients planned (after removing duplicates).
    pub total: i64,
    /// Duplicates removed.
    pub duplicates: i64,
}

/// 400 answer: which field is wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvalidBody {
    /// `missing_field`, `invalid_field`, `unsupported`, `invalid_body`, ...
    pub code: String,
    /// The field (JSON path).
    pub field: String,
    /// What is wrong.
    pub detail: String,
}

fn invalid(e: Invalid) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(InvalidBody {
            code: e.code.to_string(),
            field: e.field,
            detail: e.detail,
        }),
    )
        .into_response()
}

fn with_trace(mut res: Response, trace: &Uuid) -> Response {
    if let Ok(v) = HeaderValue::from_str(&trace.to_string()) {
        res.headers_mut().insert("x-trace-id", v);
    }
    res
}

fn tenant_for(state: &AppState, from: &str) -> String {
    state
        .settings
        .sending_app(from)
        .map(|a| a.tenant.clone())
        .unwrap_or_else(|| "default".into())
}

/// The JSON view of a send.
pub fn message_view(r: &OutboundRecord, history: Option<&[HistoryEntry]>) -> Value {
    let mut v = json!({
        "id": r.id,
        "status": r.visible_status(),
        "state": r.status,
        "channel": r.spec.channel.as_str(),
        "from": r.spec.from,
        "to": r.spec.to,
        "type": r.spec.message_type.as_str(),
        "provider_message_id": r.provider_message_id,
        "attempts": r.attempts,
        "broadcast_id": r.broadcast_id,
        "trace_id": r.trace_id,
        "created_at": ms_to_rfc3339(r.created_ms),
        "updated_at": ms_to_rfc3339(r.updated_ms),
        "accepted_at": r.accepted_ms.and_then(ms_to_rfc3339),
    });
    if let Some(e) = &r.error {
        v["error"] = json!({"class": r.error_class, "detail": e});
    }
    if let Some(h) = history {
        v["history"] = h
            .iter()
            .map(|e| json!({"status": e.status, "at": ms_to_rfc3339(e.at_ms), "detail": e.detail}))
            .collect();
    }
    v
}

/// The JSON view of a broadcast.
pub fn broadcast_view(b: &BroadcastRecord) -> Value {
    json!({
        "id": b.id,
        "status": b.status,
        "paused_reason": b.paused_reason,
        "channel": b.channel,
        "from": b.from,
        "template": b.template,
        "total": b.total,
        "duplicates": b.duplicates,
        "counts": b.counts,
        "created_at": ms_to_rfc3339(b.created_ms),
        "finished_at": b.finished_ms.and_then(ms_to_rfc3339),
        "trace_id": b.trace_id,
    })
}

#[utoipa::path(post, path = "/api/messages", tag = "send",
    request_body(content = Object, description = "{channel, from, to, type, <type>: {...}, reply_to?, idempotency_key?}", content_type = "application/json"),
    responses((status = 202, description = "stored; the sender sends it", body = Queued),
        (status = 400, description = "invalid body: the field is named", body = InvalidBody),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 409, description = "idempotency key reused with a different body", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable; nothing was stored", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn send_message(State(state): State<AppState>, body: Bytes) -> Response {
    let trace = Uuid::now_v7();
    let res = send_message_inner(&state, &body, trace).await;
    with_trace(res, &trace)
}

async fn send_message_inner(state: &AppState, body: &[u8], trace: Uuid) -> Response {
    let spec = match SendSpec::parse(body) {
        Ok(s) => s,
        Err(e) => {
            metrics::counter!("inlet_outbound_requests_total", "outcome" => "invalid").increment(1);
            state.audit.write(
                AuditRecord::new("outbound")
                    .trace(trace)
                    .outcome("rejected")
                    .reason(format!("{}: {}", e.code, e.field)),
            );
            return invalid(e);
        }
    };
    // Media Inlet uploads: the file is checked before the command is kept.
    if let Err(e) = crate::media::upload::check_local(&state.settings, &spec) {
        metrics::counter!("inlet_outbound_requests_total", "outcome" => "invalid").increment(1);
        metrics::counter!("inlet_media_uploads_total", "outcome" => "refused").increment(1);
        let (field, detail) = match e {
            crate::media::upload::UploadError::Refused { field, detail } => (field, detail),
            other => (spec.message_type.as_str().to_string(), other.to_string()),
        };
        return invalid(crate::outbound::Invalid {
            code: "invalid_field",
            detail: format!("`{field}`: {detail}"),
            field,
        });
    }
    let store = match store_of(state) {
        Some(s) => s,
        None => return no_store(),
    };
    let tenant = tenant_for(state, &spec.from);
    let send = NewSend {
        id: Uuid::now_v7().to_string(),
        tenant: tenant.clone(),
        spec: spec.clone(),
        broadcast_id: None,
        trace_id: trace.to_string(),
    };
    match store.outbound().enqueue(&send).await {
        Ok((record, created)) => {
            if !created && record.spec != spec {
                metrics::counter!("inlet_outbound_requests_total", "outcome" => "conflict")
                    .increment(1);
                return error(
                    StatusCode::CONFLICT,
                    "idempotency_conflict",
                    format!(
                        "idempotency_key was used for message {} with a different body",
                        record.id
                    ),
                );
            }
            let outcome = if created { "queued" } else { "duplicate" };
            metrics::counter!("inlet_outbound_requests_total", "outcome" => outcome).increment(1);
            state.audit.write(
                AuditRecord::new("outbound")
                    .trace(trace)
                    .origin(spec.channel.as_str(), &tenant)
                    .outcome(outcome)
                    .with("outbound_id", record.id.clone())
                    .with("recipient", crate::audit::id_ref(&spec.to))
                    .with("type", spec.message_type.as_str()),
            );
            (
                StatusCode::ACCEPTED,
                Json(Queued {
                    id: record.id.clone(),
                    status: record.visible_status().to_string(),
                }),
            )
                .into_response()
        }
        Err(e) => {
            metrics::counter!("inlet_outbound_requests_total", "outcome" => "unavailable")
                .increment(1);
            store_error(&e)
        }
    }
}

#[utoipa::path(get, path = "/api/messages/{id}", tag = "send",
    params(("id" = String, Path, description = "outbound id")),
    responses((status = 200, description = "{id, status, provider_message_id, attempts, error?, history}", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such message, or API disabled", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn get_message(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let store = match store_of(&state) {
        Some(s) => s,
        None => return no_store(),
    };
    match store.outbound().outbound(&id).await {
        Ok(Some((record, history))) => Json(message_view(&record, Some(&history))).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no outbound message {id}"),
        ),
        Err(e) => store_error(&e),
    }
}

#[utoipa::path(post, path = "/api/broadcasts", tag = "send",
    request_body(content = Object, description = "{channel: whatsapp, from, template: {...}, recipients: [...], idempotency_key?}", content_type = "application/json"),
    responses((status = 202, description = "planned; dispatched at the sender's rate", body = BroadcastQueued),
        (status = 400, description = "invalid body: the field is named", body = InvalidBody),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable; nothing was stored", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn create_broadcast(State(state): State<AppState>, body: Bytes) -> Response {
    let trace = Uuid::now_v7();
    let res = create_broadcast_inner(&state, &body, trace).await;
    with_trace(res, &trace)
}

async fn create_broadcast_inner(state: &AppState, body: &[u8], trace: Uuid) -> Response {
    let spec = match BroadcastSpec::parse(body) {
        Ok(s) => s,
        Err(e) => {
            state.audit.write(
                AuditRecord::new("outbound")
                    .trace(trace)
                    .outcome("rejected")
                    .reason(format!("{}: {}", e.code, e.field)),
            );
            return invalid(e);
        }
    };
    let store = match store_of(state) {
        Some(s) => s,
        None => return no_store(),
    };
    let tenant = tenant_for(state, &spec.from);
    let (broadcast, sends) = NewBroadcast::plan(spec, &tenant, &trace.to_string());
    match store.outbound().create_broadcast(&broadcast, &sends).await {
        Ok((record, created)) => {
            state.audit.write(
                AuditRecord::new("outbound")
                    .trace(trace)
                    .origin(&record.channel, &tenant)
                    .outcome(if created {
                        "broadcast_created"
                    } else {
                        "duplicate"
                    })
                    .with("broadcast_id", record.id.clone())
                    .with("recipients", record.total),
            );
            (
                StatusCode::ACCEPTED,
                Json(BroadcastQueued {
                    id: record.id,
                    status: record.status,
                    total: record.total,
                    duplicates: record.duplicates,
                }),
            )
                .into_response()
        }
        Err(e) => store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/broadcasts", tag = "send",
    responses((status = 200, description = "newest broadcasts first, with counts", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn list_broadcasts(State(state): State<AppState>) -> Response {
    let store = match store_of(&state) {
        Some(s) => s,
        None => return no_store(),
    };
    match store.outbound().broadcasts(50).await {
        Ok(list) => {
            Json(json!({"broadcasts": list.iter().map(broadcast_view).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/broadcasts/{id}", tag = "send",
    params(("id" = String, Path, description = "broadcast id")),
    responses((status = 200, description = "counts per status and finished_at", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such broadcast, or API disabled", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn get_broadcast(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let store = match store_of(&state) {
        Some(s) => s,
        None => return no_store(),
    };
    match store.outbound().broadcast(&id).await {
        Ok(Some(b)) => Json(broadcast_view(&b)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no broadcast {id}"),
        ),
        Err(e) => store_error(&e),
    }
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> Response {
    let store = match store_of(state) {
        Some(s) => s,
        None => return no_store(),
    };
    let out = store.outbound();
    let changed = match out
        .set_broadcast_paused(id, paused.then_some("operator"))
        .await
    {
        Ok(c) => c,
        Err(e) => return store_error(&e),
    };
    match out.broadcast(id).await {
        Ok(Some(b)) => {
            if changed {
                state.audit.write(
                    AuditRecord::new("outbound")
                        .origin(&b.channel, &b.tenant)
                        .outcome(if paused {
                            "broadcast_paused"
                        } else {
                            "broadcast_resumed"
                        })
                        .with("broadcast_id", b.id.clone()),
                );
                Json(broadcast_view(&b)).into_response()
            } else {
                error(
                    StatusCode::CONFLICT,
                    "invalid_state",
                    format!("broadcast {id} is {}", b.status),
                )
            }
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no broadcast {id}"),
        ),
        Err(e) => store_error(&e),
    }
}

#[utoipa::path(post, path = "/api/broadcasts/{id}/pause", tag = "send",
    params(("id" = String, Path, description = "broadcast id")),
    responses((status = 200, description = "paused", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such broadcast, or API disabled", body = super::api::ApiError),
        (status = 409, description = "not running", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn pause_broadcast(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    set_paused(&state, &id, true).await
}

#[utoipa::path(post, path = "/api/broadcasts/{id}/resume", tag = "send",
    params(("id" = String, Path, description = "broadcast id")),
    responses((status = 200, description = "running again", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "no such broadcast, or API disabled", body = super::api::ApiError),
        (status = 409, description = "not paused", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn resume_broadcast(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    set_paused(&state, &id, false).await
}
