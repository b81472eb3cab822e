//! `GET|POST /webhooks/{source}`: Meta's verify-token handshake and the
//! signed event delivery.
//!
//! The POST path is the hot path. In order: assign a trace id, refuse an
//! unknown source (404) or an oversized body (413, from `Content-Length`
//! before reading, or while reading), verify the signature over the exact raw
//! bytes (401, fail closed), check the JSON shape (a signed but malformed
//! body is acknowledged and dead-lettered: a non-200 would only make Meta
//! retry it for days), then make the event durable and only then answer 200.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tracing::Instrument;
use uuid::Uuid;

use super::AppState;
use crate::audit::AuditRecord;
use crate::dlq::letter::DeadLetter;
use crate::envelope::{RawEvent, Source, KEPT_HEADERS};
use crate::ingest::Accepted;
use crate::signature;

/// Header carrying the trace id on every webhook response.
pub const TRACE_HEADER: &str = "x-trace-id";

/// `GET /webhooks/{source}?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`
pub async fn handshake(
    State(state): State<AppState>,
    Path(source): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(source) = Source::parse(&source) else {
        return unknown_source(&state, &source, None);
    };
    let mode = params.get("hub.mode").map(String::as_str);
    let token = params.get("hub.verify_token").map(String::as_bytes);
    let matches = token.is_some_and(|given| {
        state.apps.iter().filter(|a| a.allows(source)).any(|a| {
            a.verify_token
                .as_deref()
                .is_some_and(|t| crate::signature::constant_time_eq(t.as_bytes(), given))
        })
    });
    if mode == Some("subscribe") && matches {
        metrics::counter!("inlet_gateway_handshakes_total", "source" => source.as_str(), "outcome" => "ok")
            .increment(1);
        state
            .audit
            .write(AuditRecord::new("handshake").with("source", source.as_str()));
        let challenge = params.get("hub.challenge").cloned().unwrap_or_default();
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge,
        )
            .into_response();
    }
    metrics::counter!("inlet_gateway_handshakes_total", "source" => source.as_str(), "outcome" => "forbidden")
        .increment(1);
    state.audit.write(
        AuditRecord::new("handshake")
            .outcome("rejected")
            .reason(if mode == Some("subscribe") {
                "verify_token_mismatch"
            } else {
                "bad_mode"
            })
            .with("source", source.as_str()),
    );
    StatusCode::FORBIDDEN.into_response()
}

fn unknown_source(state: &AppState, source: &str, trace_id: Option<Uuid>) -> Response {
    metrics::counter!("inlet_gateway_deliveries_total", "source" => "unknown", "outcome" => "unknown_source")
        .increment(1);
    let mut record = AuditRecord::new("rejected")
        .outcome("error")
        .reason("unknown_source")
        .with("path_source", truncate(source, 32));
    record.trace_id = trace_id;
    state.audit.write(record);
    StatusCode::NOT_FOUND.into_response()
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Largest refused body that is read and dropped before answering 413.
const DRAIN_CAP: u64 = 8 * 1024 * 1024;

async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            frame = body.frame() => match frame {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// `POST /webhooks/{source}`.
pub async fn receive(
    State(state): State<AppState>,
    Path(source): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let trace_id = Uuid::now_v7();
    let client_ip = state.client_ip(
        peer.ip(),
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
    );
    let span = tracing::info_span!("webhook", %trace_id, source = %source, tenant = tracing::field::Empty, %client_ip);
    let mut response = async {
        let Some(source) = Source::parse(&source) else {
            return unknown_source(&state, &source, Some(trace_id));
        };
        receive_inner(&state, source, trace_id, client_ip, &headers, body, started).await
    }
    .instrument(span)
    .await;
    if let Ok(v) = HeaderValue::from_str(&trace_id.to_string()) {
        response.headers_mut().insert(TRACE_HEADER, v);
    }
    response
}

#[allow(clippy::too_many_arguments)]
async fn receive_inner(
    state: &AppState,
    source: Source,
    trace_id: Uuid,
    client_ip: std::net::IpAddr,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Response {
    let limit = state.settings.http.max_body_bytes;
    let reject = |status: StatusCode, outcome: &'static str, reason: &str| {
        metrics::counter!("inlet_gateway_deliveries_total", "source" => source.as_str(), "outcome" => outcome)
            .increment(1);
        state.audit.write(
            AuditRecord::new("rejected")
                .trace(trace_id)
                .with("source", source.as_str())
                .outcome("error")
                .reason(reason.to_string())
                .with("status", status.as_u16())
                .with("client_ip", client_ip.to_string())
                .duration(started.elapsed()),
        );
        tracing::info!(status = status.as_u16(), reason, "delivery rejected");
        status.into_response()
    };

    // 413 up front when the declared length is too large: nothing is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Nothing is kept; a bounded amount is read and dropped so a proxy
        // still sending the body sees our 413 instead of a broken pipe.
        if declared.is_some_and(|n| n <= DRAIN_CAP) {
            drain(body).await;
        }
        return reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body_too_large");
    }
    // Chunked or lying bodies stop being read as soon as they pass the limit.
    let body: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return if too_large {
                reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body_too_large")
            } else {
                reject(StatusCode::BAD_REQUEST, "read_error", "body_read_error")
            };
        }
    };

    // Verify the exact bytes before anything parses them.
    let header = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    let candidates = state
        .apps
        .iter()
        .enumerate()
        .filter(|(_, app)| app.allows(source))
        .flat_map(|(i, app)| app.keys.iter().map(move |k| (i, k)))
        .collect::<Vec<_>>();
    let app_index = match signature::verify(&body, header, candidates.iter().map(|(_, k)| *k)) {
        Ok(pos) => candidates[pos].0,
        Err(e) => {
            metrics::counter!("inlet_gateway_signature_failures_total", "source" => source.as_str(), "reason" => e.reason())
                .increment(1);
            return reject(StatusCode::UNAUTHORIZED, "unauthorized", e.reason());
        }
    };
    let tenant = state.apps[app_index].tenant.clone();
    tracing::Span::current().record("tenant", tenant.as_str());

    let event = RawEvent {
        trace_id,
        source,
        tenant: tenant.clone(),
        received_at: crate::envelope::now(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (name.to_string(), v.to_string()))
            })
            .collect(),
        body,
    };
    let audit_base = || {
        AuditRecord::new("received")
            .trace(trace_id)
            .origin(source.as_str(), &tenant)
    };
    state.audit.write(
        audit_base()
            .with("bytes", event.body.len())
            .with("client_ip", client_ip.to_string()),
    );

    if let Err(shape) = crate::normalize::check_shape(&event.body) {
        let reason = match shape {
            crate::normalize::NormalizeError::NotJson(_) => "not_json",
            crate::normalize::NormalizeError::NotMetaShape(_) => "not_meta_shape",
        };
        let letter = DeadLetter {
            event,
            reason: reason.to_string(),
            error: shape.to_string(),
            attempts: 0,
            stage: "gateway".into(),
            failed_at: Utc::now(),
        };
        return match state.ingest.dead_letter(letter).await {
            Ok(()) => {
                metrics::counter!("inlet_gateway_deliveries_total", "source" => source.as_str(), "outcome" => "dead_lettered")
                    .increment(1);
                let mut rec = audit_base()
                    .outcome("dead_lettered")
                    .reason(reason)
                    .duration(started.elapsed())
                    .with("mode", state.ingest.mode().as_str());
                rec.stage = "dead_lettered".into();
                state.audit.write(rec);
                ack(started, source, "dead_lettered")
            }
            Err(e) => unavailable(state, source, trace_id, &tenant, started, &e.detail()),
        };
    }

    // The line is stamped with the moment the event was handed over: a
    // worker may dequeue it before XADD's reply is back here, and the audit
    // trail must still read enqueued → dequeued.
    let handed_over = crate::envelope::now();
    match state.ingest.accept(event).await {
        Ok(accepted) => {
            let (stage, outcome) = match &accepted {
                Accepted::Queued(_) => ("enqueued", "queued"),
                Accepted::Direct => ("direct", "direct"),
                Accepted::Spooled => ("spooled", "spooled"),
            };
            metrics::counter!("inlet_gateway_deliveries_total", "source" => source.as_str(), "outcome" => outcome)
                .increment(1);
            let mut rec = audit_base().duration(started.elapsed());
            rec.stage = stage.into();
            rec.ts = crate::envelope::format_ts(handed_over);
            if let Accepted::Queued(id) = &accepted {
                rec = rec.with("stream_id", id.as_str());
            }
            state.audit.write(rec);
            ack(started, source, outcome)
        }
        Err(e) => unavailable(state, source, trace_id, &tenant, started, &e.detail()),
    }
}

fn ack(started: Instant, source: Source, mode: &'static str) -> Response {
    metrics::histogram!("inlet_gateway_ack_seconds", "source" => source.as_str(), "mode" => mode)
        .record(started.elapsed().as_secs_f64());
    (StatusCode::OK, "EVENT_RECEIVED").into_response()
}

fn unavailable(
    state: &AppState,
    source: Source,
    trace_id: Uuid,
    tenant: &str,
    started: Instant,
    why: &str,
) -> Response {
    metrics::counter!("inlet_gateway_deliveries_total", "source" => source.as_str(), "outcome" => "unavailable")
        .increment(1);
    tracing::error!(
        error = why,
        "event could not be made durable; answering 503"
    );
    state.audit.write(
        AuditRecord::new("rejected")
            .trace(trace_id)
            .origin(source.as_str(), tenant)
            .outcome("unavailable")
            .reason(why.to_string())
            .with("status", 503)
            .duration(started.elapsed()),
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
    )
        .into_response()
}
