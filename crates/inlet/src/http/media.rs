//! `GET /api/media/{message_id}`: the stored bytes of a message's
//! attachment (`?index=N` for the N-th, default the first), streamed from
//! the media storage with `Content-Type` (Meta's MIME type), a strong
//! `ETag` (the content's SHA-256), `If-None-Match` → 304 and single byte
//! ranges (`Range: bytes=…` → 206, or 416 outside the file). 404 until the
//! file is stored (the answer's detail and `X-Inlet-Media-State` say why:
//! `pending`, `failed`, `dead_lettered`).

use std::ops::Range;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::{error, ApiQuery};
use super::AppState;
use crate::media::storage::StorageError;
use crate::media::{content_key, is_hex_digest};
use crate::store::media::state;

/// What a `Range` header asks of a file of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: the whole file, 200. Malformed headers and
    /// multi-range requests are answered this way, as RFC 9110 allows.
    Full,
    /// One satisfiable range (end exclusive), 206.
    Partial(Range<u64>),
    /// Outside the file, 416.
    Unsatisfiable,
}

/// Parses `Range: bytes=first-last | first- | -suffix` against `len`.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if first.is_empty() {
        // Suffix: the last n bytes.
        return match num(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(len.saturating_sub(n)..len),
            None => RangeRequest::Full,
        };
    }
    let Some(start) = num(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        len
    } else {
        match num(last) {
            Some(l) if l >= start => l.saturating_add(1).min(len),
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial(start..end)
    }
}

/// Query of the media endpoint.
#[derive(Debug, serde::Deserialize)]
pub struct MediaQuery {
    index: Option<i32>,
}

fn counted(outcome: &'static str, res: Response) -> Response {
    metrics::counter!("inlet_media_requests_total", "outcome" => outcome).increment(1);
    res
}

#[utoipa::path(get, path = "/api/media/{message_id}", tag = "media",
    params(("message_id" = i64, Path, description = "message row id (`id` in the conversation file)"),
        ("index" = Option<i32>, Query, description = "which attachment of the message, default 0")),
    responses((status = 200, description = "the stored bytes, with the attachment's own Content-Type (ETag = SHA-256, Accept-Ranges)", content_type = "*/*"),
        (status = 206, description = "the requested byte range (Content-Range)", content_type = "*/*"),
        (status = 304, description = "If-None-Match matched"),
        (status = 400, description = "not a message id, or a malformed query", body = super::api::ApiError),
        (status = 401, description = "missing or wrong bearer token", body = super::api::ApiError),
        (status = 404, description = "no such attachment, or not stored yet (X-Inlet-Media-State: pending, failed, dead_lettered)", body = super::api::ApiError),
        (status = 416, description = "range outside the file"),
        (status = 503, description = "store or media storage unavailable", body = super::api::ApiError)),
    security(("bearer" = [])))]
pub async fn get_media(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MediaQuery>,
    headers: HeaderMap,
) -> Response {
    let (Ok(message_id), index) = (id.parse::<i64>(), q.index.unwrap_or(0)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{id:?} is not a message id"),
        );
    };
    if message_id <= 0 || index < 0 {
        return error(StatusCode::BAD_REQUEST, "bad_request", "ids are positive");
    }
    let (Some(cache), Some(storage)) = (&app.cache, &app.media) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "no media storage attached",
        );
    };
    let record = match cache.store().media().media_record(message_id, index).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return counted(
                "not_found",
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("message {message_id} has no attachment {index}"),
                ),
            )
        }
        Err(e) => {
            return counted(
                "error",
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                ),
            )
        }
    };
    let sha = record.sha256.clone().unwrap_or_default();
    if record.state != state::STORED || !is_hex_digest(&sha) {
        let detail = match &record.reason {
            Some(reason) => format!("the attachment is {} ({reason})", record.state),
            None => format!("the attachment is {}", record.state),
        };
        let mut res = error(StatusCode::NOT_FOUND, "not_found", detail);
        if let Ok(v) = HeaderValue::from_str(&record.state) {
            res.headers_mut().insert("x-inlet-media-state", v);
        }
        return counted("not_stored", res);
    }
    let etag = format!("\"{sha}\"");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let key = content_key(&sha);
    let len = match storage.size(&key).await {
        Ok(len) => len,
        Err(StorageError::NotFound) => {
            tracing::warn!(message_id, index, "stored media missing from the storage");
            return counted(
                "missing",
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the stored file is missing",
                ),
            );
        }
        Err(e) => {
            return counted(
                "error",
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                ),
            )
        }
    };
    let mut base = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, max-age=86400");
    if matches {
        return counted(
            "not_modified",
            base.status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap_or_default(),
        );
    }
    let mime = record
        .mime_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    base = base.header(header::CONTENT_TYPE, mime);
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, read, outcome) = match range {
        RangeRequest::Unsatisfiable => {
            return counted(
                "unsatisfiable",
                base.status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .unwrap_or_default(),
            );
        }
        RangeRequest::Partial(r) => {
            base = base.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, Some(r), "partial")
        }
        RangeRequest::Full => (StatusCode::OK, None, "served"),
    };
    let length = read.as_ref().map_or(len, |r| r.end - r.start);
    // An empty file has nothing to read (object stores refuse empty ranges).
    let body = if length == 0 {
        Body::empty()
    } else {
        match storage.read(&key, read).await {
            Ok(stream) => Body::from_stream(stream),
            Err(e) => {
                return counted(
                    "error",
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        e.to_string(),
                    ),
                )
            }
        }
    };
    counted(
        outcome,
        base.status(status)
            .header(header::CONTENT_LENGTH, length)
            .body(body)
            .map(IntoResponse::into_response)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let p = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(parse_range(None, 1000), RangeRequest::Full);
        assert_eq!(p("bytes=0-99"), RangeRequest::Partial(0..100));
        assert_eq!(p("bytes=100-"), RangeRequest::Partial(100..1000));
        assert_eq!(p("bytes=-10"), RangeRequest::Partial(990..1000));
        assert_eq!(p("bytes=-5000"), RangeRequest::Partial(0..1000));
        assert_eq!(
            p("bytes=990-5000"),
            RangeRequest::Partial(990..1000),
            "clamped"
        );
        assert_eq!(p("bytes=999-999"), RangeRequest::Partial(999..1000));
        assert_eq!(p("bytes=1000-"), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=-0"), RangeRequest::Unsatisfiable);
        // Ignored (whole file): malformed, reversed, multiple, other units.
        assert_eq!(p("bytes=9-1"), RangeRequest::Full);
        assert_eq!(p("bytes=a-b"), RangeRequest::Full);
        assert_eq!(p("bytes=0-1,5-6"), RangeRequest::Full);
        assert_eq!(p("items=0-1"), RangeRequest::Full);
        assert_eq!(p("bytes=+1-2"), RangeRequest::Full);
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
    }
}
