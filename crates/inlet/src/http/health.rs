//! `/healthz` (the process is up), `/readyz` (can events be kept right now,
//! and in which mode) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::ingest::Mode;

/// Always 200 while the process serves requests.
pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 when an event posted now would be kept (Redis up, or direct mode with
/// a reachable store), else 503. The body names the mode and each dependency.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ingest = &state.ingest;
    let redis_up = if ingest.redis_configured() {
        if ingest.mode() == Mode::Queue {
            ingest.probe().await
        } else {
            false
        }
    } else {
        false
    };
    let store = ingest.store_ready().await;
    let mode = ingest.mode();
    let ready = redis_up || store == Some(true);
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "mode": mode.as_str(),
        "redis": if !ingest.redis_configured() { "not_configured" } else if redis_up { "up" } else { "down" },
        "store": match store { None => "not_configured", Some(true) => "up", Some(false) => "down" },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
