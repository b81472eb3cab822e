//! The cache-first read API (`/api/*`), protected by
//! `Authorization: Bearer $INLET_API_TOKEN`.
//!
//! | endpoint | file |
//! |---|---|
//! | `GET /api/conversations` | `conversations.json` |
//! | `GET /api/conversations/{id}/messages` | `conversations/{id}.json` |
//! | `GET /api/contacts` | `contacts.json` |
//! | `GET /api/analytics/summary` | `analytics/summary.json` |
//! | `GET /api/events/stats?days=7` | event counts per type per day (database) |
//! | `GET /api/events/failed?limit=50` | failed write events and handler failures (database) |
//! | `GET /api/dlq?limit=50` | dead letters (stream and store), oldest first |
//! | `GET /api/dlq/{id}?body=true` | one dead letter (`body` adds the raw body) |
//! | `POST /api/dlq/{id}/replay` | replays it; the letter is removed once the replay is durable |
//! | `GET /api/media/{message_id}` | an attachment's stored bytes ([`super::media`]) |
//! | `GET /api/events/stream` | Server-Sent Events of the event log ([`super::drafts`]) |
//! | `/api/drafts…` | AI drafts with human approval ([`super::drafts`]) |
//! | `GET /api/openapi.json` | the OpenAPI 3.1 document ([`ApiDoc`], committed as `docs/openapi.json`) |
//!
//! The DLQ endpoints use [`crate::dlq::Dlq`], the same code as `inlet dlq`:
//! a replay goes into the raw stream when Redis is up, else through the
//! pipeline in-process, and the letter is deleted only after that succeeded.
//!
//! A request is served from the cache file. A file older than `cache.ttl` is
//! served as is and refreshed in the background; a missing file is built from
//! the database, written and served. So while the database is down, cached
//! data is still served. Responses carry a strong `ETag` (hash of the bytes)
//! and `If-None-Match` gives 304. `X-Inlet-Cache` says `hit`, `stale` or
//! `miss`. Errors are JSON `{"code", "detail"}`: 401 `unauthorized` (no or
//! wrong token), 404 `api_disabled` (no token configured), 404 `not_found`,
//! 400 `bad_request`, 503 `store_unavailable` (a miss while the database is
//! down), 503 `dlq_unavailable` (Redis or the store failed while reading the
//! DLQ), 422 `replay_rejected` (processing refused the replayed event again),
//! 409 `conflict` (the send is no longer dead-lettered), 503 `replay_failed`
//! (Redis or the store failed; in each case the letter is kept). A malformed
//! query parameter is a 400 `bad_request` too.

use std::time::SystemTime;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::cache::{CacheError, CacheKey};
use crate::dlq::{Dlq, DlqError, DlqId, DlqItem, DlqView, ReplayError};
use crate::events::Phase;

/// The `/api` routes, behind the bearer-token check.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/conversations", get(conversations))
        .route(
            "/api/conversations/{id}/messages",
            get(conversation_messages),
        )
        .route("/api/contacts", get(contacts))
        .route("/api/analytics/summary", get(summary))
        .route("/api/events/stats", get(event_stats))
        .route("/api/events/failed", get(events_failed))
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/dlq", get(dlq_list))
        .route("/api/dlq/{id}", get(dlq_show))
        .route("/api/dlq/{id}/replay", post(dlq_replay))
        .route("/api/messages", post(super::outbound::send_message))
        .route("/api/messages/{id}", get(super::outbound::get_message))
        .route("/api/media/{id}", get(super::media::get_media))
        .route(
            "/api/broadcasts",
            post(super::outbound::create_broadcast)
                .get(super::outbound::list_broadcasts)
                // 100,000 recipients do not fit the default 2 MiB.
                .layer(axum::extract::DefaultBodyLimit::max(16 << 20)),
        )
        .route("/api/broadcasts/{id}", get(super::outbound::get_broadcast))
        .route(
            "/api/broadcasts/{id}/pause",
            post(super::outbound::pause_broadcast),
        )
        .route(
            "/api/broadcasts/{id}/resume",
            post(super::outbound::resume_broadcast),
        )
        .route(
            "/api/drafts",
            post(super::drafts::create_draft).get(super::drafts::list_drafts),
        )
        .route("/api/drafts/{id}", get(super::drafts::get_draft))
        .route(
            "/api/drafts/{id}/approve",
            post(super::drafts::approve_draft),
        )
        .route("/api/drafts/{id}/reject", post(super::drafts::reject_draft))
        .route("/api/events/stream", get(super::drafts::event_stream))
        .route("/api/leads", get(super::leads::list_leads))
        .route("/api/leads/{lead_id}", get(super::leads::get_lead))
        .route("/api", get(unknown))
        .route("/api/{*rest}", get(unknown))
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (status, Json(json!({"code": code, "detail": detail.into()}))).into_response()
}

/// `axum::extract::Query` whose rejection is the API's JSON error (400
/// `bad_request`) rather than axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(ApiQuery(q)),
            Err(rejection) => Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.body_text(),
            )),
        }
    }
}

async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.settings.api_token else {
        return error(
            StatusCode::NOT_FOUND,
            "api_disabled",
            "the read API is disabled: set INLET_API_TOKEN to enable it",
        );
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        });
    match given {
        Some(g)
            if crate::signature::constant_time_eq(
                g.as_bytes(),
                token.expose_secret().as_bytes(),
            ) =>
        {
            next.run(req).await
        }
        _ => {
            metrics::counter!("inlet_api_requests_total", "file" => "none", "outcome" => "unauthorized").increment(1);
            let mut res = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token (Authorization: Bearer <INLET_API_TOKEN>)",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"inlet\""),
            );
            res
        }
    }
}

#[utoipa::path(get, path = "/api/conversations", tag = "read",
    responses((status = 200, description = "conversations.json (cache document; ETag, X-Inlet-Cache)", content_type = "application/json"),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "not cached and the store is unreachable", body = ApiError)),
    security(("bearer" = [])))]
async fn conversations(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, CacheKey::Conversations, &headers).await
}

#[utoipa::path(get, path = "/api/conversations/{id}/messages", tag = "read", params(("id" = i64, Path, description = "conversation id")),
    responses((status = 200, description = "conversations/{id}.json (cache document; ETag, X-Inlet-Cache)", content_type = "application/json"),
        (status = 304, description = "If-None-Match matched"),
        (status = 400, description = "not a conversation id", body = ApiError),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "not cached and the store is unreachable", body = ApiError)),
    security(("bearer" = [])))]
async fn conversation_messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match id.parse::<i64>() {
        Ok(id) if id > 0 => serve(&state, CacheKey::Conversation(id), &headers).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{id:?} is not a conversation id"),
        ),
    }
}

#[utoipa::path(get, path = "/api/contacts", tag = "read",
    responses((status = 200, description = "contacts.json (cache document; ETag, X-Inlet-Cache)", content_type = "application/json"),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "not cached and the store is unreachable", body = ApiError)),
    security(("bearer" = [])))]
async fn contacts(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, CacheKey::Contacts, &headers).await
}

#[utoipa::path(get, path = "/api/analytics/summary", tag = "read",
    responses((status = 200, description = "analytics/summary.json (cache document; ETag, X-Inlet-Cache)", content_type = "application/json"),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "not cached and the store is unreachable", body = ApiError)),
    security(("bearer" = [])))]
async fn summary(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, CacheKey::Summary, &headers).await
}

/// Query of the events endpoints.
#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    days: Option<u32>,
    limit: Option<i64>,
}

/// 503: this gateway has no store attached.
pub(super) fn no_store() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "no store attached",
    )
}

/// The gateway's store (through its cache), when it has one.
pub(super) fn store_of(state: &AppState) -> Option<&crate::store::Store> {
    state.cache.as_ref().map(|c| c.store())
}

/// A store failure: 503 when it may pass (retry), else 500.
pub(super) fn store_error(e: &crate::store::StoreError) -> Response {
    let status = if e.is_transient() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(status, "store_unavailable", e.to_string())
}

/// Epoch milliseconds as RFC 3339 (`None` out of range).
pub(super) fn ms_to_rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

#[utoipa::path(get, path = "/api/events/stats", tag = "events",
    params(("days" = Option<u32>, Query, description = "days back, 1..=366, default 7")),
    responses((status = 200, description = "event counts per type per day", content_type = "application/json"),
        (status = 400, description = "a malformed query parameter", body = ApiError),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "store unavailable", body = ApiError)),
    security(("bearer" = [])))]
async fn event_stats(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Response {
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let days = q.days.unwrap_or(7).clamp(1, 366);
    let since = (chrono::Utc::now().date_naive() - chrono::Days::new(u64::from(days - 1)))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or_else(chrono::Utc::now);
    match store.event_log().event_stats(since).await {
        Ok(stats) => Json(json!({"days": days, "stats": stats})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
    }
}

#[utoipa::path(get, path = "/api/events/failed", tag = "events",
    params(("limit" = Option<i64>, Query, description = "1..=1000, default 50")),
    responses((status = 200, description = "failed write events and handler failures", content_type = "application/json"),
        (status = 400, description = "a malformed query parameter", body = ApiError),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "store unavailable", body = ApiError)),
    security(("bearer" = [])))]
async fn events_failed(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Response {
    let Some(store) = store_of(&state) else {
        return no_store();
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let log = store.event_log();
    let failed = log
        .logged_events(None, None, Some(Phase::Failed), 0, limit)
        .await;
    let handlers = log.handler_failures(limit).await;
    match (failed, handlers) {
        (Ok(failed), Ok(handlers)) => {
            let failed: Vec<_> = failed.into_iter().map(|(_, e)| e).collect();
            Json(json!({"failed_events": failed, "handler_failures": handlers})).into_response()
        }
        (Err(e), _) | (_, Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
    }
}

/// A JSON error: every non-2xx answer of the API.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// Machine-readable code (`unauthorized`, `not_found`, …).
    pub code: String,
    /// What went wrong, for a human.
    pub detail: String,
}

/// `GET /api/dlq`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DlqList {
    /// Letters from the stream, then from the store, oldest first.
    pub dead_letters: Vec<DlqView>,
    /// How many are waiting in each place.
    pub total: DlqTotals,
}

/// Dead letters waiting, by place.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DlqTotals {
    /// In the `{prefix}dlq` stream.
    pub stream: u64,
    /// In the store's `dead_letters` table.
    pub store: u64,
    /// Dead-lettered outbound sends (`out-ID`).
    pub outbound: u64,
    /// Dead-lettered media downloads (`media-M-I`).
    pub media: u64,
    /// Dead-lettered lead fetches (`lead-ID`).
    pub leads: u64,
}

/// `POST /api/dlq/{id}/replay`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The letter replayed (and removed).
    pub replayed: String,
    /// Trace id of the event.
    pub trace_id: uuid::Uuid,
}

/// The OpenAPI 3.1 document of the API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Inlet API", description = "Cache-first read API and dead-letter queue of the Inlet gateway. Every endpoint needs `Authorization: Bearer $INLET_API_TOKEN`."),
    paths(conversations, conversation_messages, contacts, summary, event_stats, events_failed, dlq_list, dlq_show, dlq_replay, openapi_json,
        super::outbound::send_message, super::outbound::get_message, super::outbound::create_broadcast, super::outbound::list_broadcasts,
        super::outbound::get_broadcast, super::outbound::pause_broadcast, super::outbound::resume_broadcast,
        super::drafts::create_draft, super::drafts::list_drafts, super::drafts::get_draft, super::drafts::approve_draft,
        super::drafts::reject_draft, super::drafts::event_stream, super::media::get_media,
        super::leads::list_leads, super::leads::get_lead),
    components(schemas(ApiError, DlqList, DlqTotals, Replayed, DlqView, super::outbound::Queued, super::outbound::BroadcastQueued, super::outbound::InvalidBody,
        super::drafts::DraftCreated, super::drafts::DraftApproved, super::drafts::DraftConflict)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served and as committed in `docs/openapi.json` (pretty
/// JSON, trailing newline).
pub fn openapi_document() -> String {
    let doc = <ApiDoc as utoipa::OpenApi>::openapi();
    let mut text = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "this document", content_type = "application/json"),
        (status = 401, description = "missing or wrong bearer token", body = ApiError)),
    security(("bearer" = [])))]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(openapi_document).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Query of the DLQ endpoints.
#[derive(Debug, serde::Deserialize)]
struct DlqQuery {
    limit: Option<usize>,
    body: Option<bool>,
}

/// The DLQ over this gateway's Redis connection (when up) and store.
async fn dlq_of(state: &AppState) -> Dlq {
    Dlq::new(
        state.ingest.queue().await,
        state.cache.as_ref().map(|c| c.store().clone()),
        state.audit.clone(),
    )
}

fn dlq_error(e: &DlqError) -> Response {
    tracing::warn!(error = %e, "DLQ access failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "dlq_unavailable",
        format!("the dead-letter queue could not be read: {e}"),
    )
}

/// Why one letter could not be looked up.
enum LetterError {
    BadId(String),
    NotFound(DlqId),
    Dlq(DlqError),
}

impl IntoResponse for LetterError {
    fn into_response(self) -> Response {
        match self {
            LetterError::BadId(raw) => error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{raw:?} is not a dead-letter id ({})", DlqId::FORMS),
            ),
            LetterError::NotFound(id) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead letter {id}"),
            ),
            LetterError::Dlq(e) => dlq_error(&e),
        }
    }
}

/// Finds one letter.
async fn find_letter(dlq: &Dlq, raw: &str) -> Result<DlqItem, LetterError> {
    let id = DlqId::parse(raw).ok_or_else(|| LetterError::BadId(raw.to_string()))?;
    match dlq.get(&id).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => Err(LetterError::NotFound(id)),
        Err(e) => Err(LetterError::Dlq(e)),
    }
}

#[utoipa::path(get, path = "/api/dlq", tag = "dlq",
    params(("limit" = Option<usize>, Query, description = "per place, 1..=1000, default 50"),
        ("body" = Option<bool>, Query, description = "include raw bodies")),
    responses((status = 200, description = "dead letters, oldest first", body = DlqList),
        (status = 400, description = "a malformed query parameter", body = ApiError),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "Redis or the store failed", body = ApiError)),
    security(("bearer" = [])))]
async fn dlq_list(State(state): State<AppState>, ApiQuery(q): ApiQuery<DlqQuery>) -> Response {
    let dlq = dlq_of(&state).await;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (items, len) = match (dlq.list(limit).await, dlq.len().await) {
        (Ok(items), Ok(len)) => (items, len),
        (Err(e), _) | (_, Err(e)) => return dlq_error(&e),
    };
    let with_body = q.body.unwrap_or(false);
    Json(DlqList {
        dead_letters: items.iter().map(|i| i.view(with_body)).collect(),
        total: DlqTotals {
            stream: len.stream,
            store: len.store,
            outbound: len.outbound,
            media: len.media,
            leads: len.leads,
        },
    })
    .into_response()
}

#[utoipa::path(get, path = "/api/dlq/{id}", tag = "dlq",
    params(("id" = String, Path, description = "stream entry id (1700000000000-0), db-N, out-ID (outbound send), media-M-I (media download) or lead-ID (lead fetch)"),
        ("body" = Option<bool>, Query, description = "include the raw body")),
    responses((status = 200, description = "one dead letter", body = DlqView),
        (status = 400, description = "not a dead-letter id, or a malformed query parameter", body = ApiError),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 503, description = "Redis or the store failed", body = ApiError)),
    security(("bearer" = [])))]
async fn dlq_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DlqQuery>,
) -> Response {
    let dlq = dlq_of(&state).await;
    match find_letter(&dlq, &id).await {
        Ok(item) => Json(item.view(q.body.unwrap_or(false))).into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(post, path = "/api/dlq/{id}/replay", tag = "dlq",
    params(("id" = String, Path, description = "stream entry id (1700000000000-0), db-N, out-ID (outbound send), media-M-I (media download) or lead-ID (lead fetch)")),
    responses((status = 200, description = "replayed; the letter is removed", body = Replayed),
        (status = 400, description = "not a dead-letter id", body = ApiError),
        (status = 401, description = "missing or wrong bearer token", body = ApiError), (status = 404, description = "API disabled (no token configured)", body = ApiError),
        (status = 409, description = "the outbound send is no longer dead-lettered", body = ApiError),
        (status = 422, description = "processing rejected the event again (not JSON, not Meta's shape); the letter is kept", body = ApiError),
        (status = 503, description = "the replay failed (the letter is kept) or Redis/the store failed", body = ApiError)),
    security(("bearer" = [])))]
async fn dlq_replay(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let dlq = dlq_of(&state).await;
    let item = match find_letter(&dlq, &id).await {
        Ok(item) => item,
        Err(e) => return e.into_response(),
    };
    match dlq.replay(&item).await {
        Ok(()) => Json(Replayed {
            replayed: item.id.to_string(),
            trace_id: item.letter.event.trace_id,
        })
        .into_response(),
        Err(e @ DlqError::Replay(_, ReplayError::Dead { .. })) => {
            // Processing refused the event again (not JSON, not Meta's
            // shape): retrying cannot help, so this is no server error.
            tracing::info!(error = %e, "DLQ replay rejected");
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "replay_rejected",
                format!("{e}; the dead letter is kept"),
            )
        }
        Err(e @ DlqError::Replay(_, ReplayError::NotDead(_))) => {
            error(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        Err(e @ DlqError::Replay(..)) => {
            tracing::warn!(error = %e, "DLQ replay failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay_failed",
                format!("{e}; the dead letter is kept"),
            )
        }
        Err(e) => dlq_error(&e),
    }
}

async fn unknown() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

/// Serves one cache file: hit, stale (served, refreshed in the background)
/// or miss (built from the database).
async fn serve(state: &AppState, key: CacheKey, headers: &HeaderMap) -> Response {
    let Some(cache) = &state.cache else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache_unavailable",
            "this gateway has no cache",
        );
    };
    let outcome = |o: &'static str| {
        metrics::counter!("inlet_api_requests_total", "file" => key.kind(), "outcome" => o)
            .increment(1);
    };
    match cache.read(&key).await {
        Ok(Some((bytes, modified))) => {
            let age = SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default();
            let state = if age > cache.ttl() {
                cache.refresh_in_background(key.clone());
                "stale"
            } else {
                "hit"
            };
            outcome(state);
            respond(bytes, headers, state)
        }
        Ok(None) => match cache.refresh(&key).await {
            Ok(Some(bytes)) => {
                outcome("miss");
                respond(bytes, headers, "miss")
            }
            Ok(None) => {
                outcome("not_found");
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no {}", key.job().replace(':', " ")),
                )
            }
            Err(e) => {
                outcome("error");
                cache_error(&e)
            }
        },
        Err(e) => {
            outcome("error");
            tracing::warn!(error = %e, key = %key, "reading a cache file failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cache_read_failed",
                "the cache file could not be read",
            )
        }
    }
}

fn cache_error(e: &CacheError) -> Response {
    if e.is_transient() {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "not cached yet and the database is unreachable; retry later",
        )
    } else {
        tracing::warn!(error = %e, "building a cache file failed");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cache_build_failed",
            "the cache file could not be built",
        )
    }
}

/// The strong entity tag of a document.
pub fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// Whether an `If-None-Match` header value matches `tag` (weak comparison,
/// as RFC 9110 prescribes for `If-None-Match`).
fn none_match(header: &str, tag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

fn respond(bytes: Vec<u8>, headers: &HeaderMap, cache_state: &'static str) -> Response {
    let tag = etag(&bytes);
    let matched = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &tag));
    let common = [
        (header::ETAG, tag),
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (
            header::HeaderName::from_static("x-inlet-cache"),
            cache_state.to_string(),
        ),
    ];
    if matched {
        (StatusCode::NOT_MODIFIED, common).into_response()
    } else {
        (
            StatusCode::OK,
            common,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_weak_tags_and_star() {
        let tag = etag(b"{}");
        assert!(none_match(&tag, &tag));
        assert!(none_match(&format!("\"x\", W/{tag}"), &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("\"other\"", &tag));
        assert_ne!(etag(b"{}"), etag(b"[]"));
    }
}
