//! `GET /api/leads` and `GET /api/leads/{lead_id}`: the Lead Ads leads as
//! the store keeps them (see [`crate::store::leads`]), behind the API's
//! bearer token. The answers (name, email, phone, `field_data`) are
//! personal data: they are served, never logged.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::api::{error, no_store, store_error, store_of, ApiQuery};
use super::AppState;
use crate::store::leads::{state, LeadFilter};

/// Query of `GET /api/leads`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/leads", tag = "leads",
    params(("status" = Option<String>, Query, description = "pending, fetched, failed, dead_lettered or discarded"),
        ("limit" = Option<i64>, Query, description = "1..=1000, default 100")),
    responses((status = 200, description = "{leads: [...]}, newest first: ids, answers (field_data, name, email, phone), contact_id, status, error", body = Object),
        (status = 400, description = "unknown status, or a malformed query parameter", body = super::api::ApiError),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError), (status = 404, description = "API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn list_leads(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Response {
    if let Some(s) = &q.status {
        if !state::ALL.contains(&s.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("status {s:?} is not one of {}", state::ALL.join(", ")),
            );
        }
    }
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let filter = LeadFilter {
        status: q.status,
        lead_id: None,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    match store.leads().leads(&filter).await {
        Ok(list) => Json(json!({ "leads": list })).into_response(),
        Err(e) => store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/leads/{lead_id}", tag = "leads",
    params(("lead_id" = String, Path, description = "Meta's lead id (leadgen_id)")),
    responses((status = 200, description = "one lead", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError),
        (status = 404, description = "no such lead, or API disabled (no token configured)", body = super::api::ApiError),
        (status = 503, description = "the store is unreachable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub(super) async fn get_lead(
    State(state): State<AppState>,
    Path(lead_id): Path<String>,
) -> Response {
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let filter = LeadFilter {
        status: None,
        lead_id: Some(lead_id.clone()),
        limit: 1,
    };
    match store.leads().leads(&filter).await {
        Ok(list) => match list.into_iter().next() {
            Some(lead) => Json(lead).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no lead {lead_id}"),
            ),
        },
        Err(e) => store_error(&e),
    }
}
