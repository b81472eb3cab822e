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
//! DLQ), 503 `replay_failed` (the letter is kept).

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
use crate::dlq::{Dlq, DlqError, DlqId, DlqItem};

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
        .route("/api/dlq", get(dlq_list))
        .route("/api/dlq/{id}", get(dlq_show))
        .route("/api/dlq/{id}/replay", post(dlq_replay))
        .route("/api", get(unknown))
        .route("/api/{*rest}", get(unknown))
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (status, Json(json!({"code": code, "detail": detail.into()}))).into_response()
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

async fn conversations(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, CacheKey::Conversations, &headers).await
}

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

async fn contacts(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, CacheKey::Contacts, &headers).await
}

async fn summary(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, CacheKey::Summary, &headers).await
}

/// Query of the events endpoints.
#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    days: Option<u32>,
    limit: Option<i64>,
}

fn no_store() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "no store attached",
    )
}

async fn event_stats(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> Response {
    let Some(store) = state.cache.as_ref().map(|c| c.store()) else {
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

async fn events_failed(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> Response {
    let Some(store) = state.cache.as_ref().map(|c| c.store()) else {
        return no_store();
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let log = store.event_log();
    let failed = log
        .logged_events(None, None, Some("failed"), 0, limit)
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
                format!("{raw:?} is not a dead-letter id (1700000000000-0 or db-N)"),
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

async fn dlq_list(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<DlqQuery>,
) -> Response {
    let dlq = dlq_of(&state).await;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (items, len) = match (dlq.list(limit).await, dlq.len().await) {
        (Ok(items), Ok(len)) => (items, len),
        (Err(e), _) | (_, Err(e)) => return dlq_error(&e),
    };
    let with_body = q.body.unwrap_or(false);
    let views: Vec<_> = items.iter().map(|i| i.view(with_body)).collect();
    Json(json!({
        "dead_letters": views,
        "total": {"stream": len.0, "store": len.1},
    }))
    .into_response()
}

async fn dlq_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<DlqQuery>,
) -> Response {
    let dlq = dlq_of(&state).await;
    match find_letter(&dlq, &id).await {
        Ok(item) => Json(item.view(q.body.unwrap_or(false))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn dlq_replay(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let dlq = dlq_of(&state).await;
    let item = match find_letter(&dlq, &id).await {
        Ok(item) => item,
        Err(e) => return e.into_response(),
    };
    match dlq.replay(&item).await {
        Ok(()) => Json(json!({
            "replayed": item.id.to_string(),
            "trace_id": item.letter.event.trace_id,
        }))
        .into_response(),
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
