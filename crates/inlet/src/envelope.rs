//! The delivery envelope: one verified webhook POST, exactly as received, with
//! the metadata the gateway attached (trace id, source, tenant, time,
//! selected headers). This is what travels through `{prefix}incoming.raw`,
//! what `raw_events` keeps for replay, and what the pipeline consumes.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the stream entry layout, written as field `v`.
pub const ENVELOPE_VERSION: &str = "1";

/// Request headers worth keeping with the raw event (never secrets).
pub const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-hub-signature-256",
    "x-forwarded-for",
    "x-request-id",
];

/// The webhook path a delivery came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `/webhooks/whatsapp`
    Whatsapp,
    /// `/webhooks/facebook` (Messenger and Page events)
    Facebook,
    /// `/webhooks/instagram`
    Instagram,
}

impl Source {
    /// Every source, for routing and contract tests.
    pub const ALL: [Source; 3] = [Source::Whatsapp, Source::Facebook, Source::Instagram];

    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Whatsapp => "whatsapp",
            Source::Facebook => "facebook",
            Source::Instagram => "instagram",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "whatsapp" => Some(Source::Whatsapp),
            "facebook" => Some(Source::Facebook),
            "instagram" => Some(Source::Instagram),
            _ => None,
        }
    }
}

/// One verified delivery, body bytes unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// UUIDv7 assigned at receipt; follows the event everywhere.
    pub trace_id: Uuid,
    /// Path it arrived on.
    pub source: Source,
    /// Tenant of the app whose secret verified it.
    pub tenant: String,
    /// Receipt time at the gateway.
    pub received_at: DateTime<Utc>,
    /// Selected request headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The exact bytes Meta signed.
    pub body: Bytes,
}

/// Why a stream entry could not be read back as a [`RawEvent`].
#[derive(Debug, thiserror::Error)]
#[error("malformed stream entry: {0}")]
pub struct EnvelopeError(pub String);

impl RawEvent {
    /// A new envelope with a fresh UUIDv7 trace id, received now.
    pub fn new(source: Source, tenant: impl Into<String>, body: Bytes) -> Self {
        Self {
            trace_id: Uuid::now_v7(),
            source,
            tenant: tenant.into(),
            received_at: now(),
            headers: Vec::new(),
            body,
        }
    }

    /// Stream fields, in a stable order: `v`, `trace_id`, `source`, `tenant`,
    /// `received_at` (RFC 3339, µs), `headers` (JSON object), `body` (bytes).
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        vec![
            ("v", ENVELOPE_VERSION.as_bytes().to_vec()),
            ("trace_id", self.trace_id.to_string().into_bytes()),
            ("source", self.source.as_str().as_bytes().to_vec()),
            ("tenant", self.tenant.as_bytes().to_vec()),
            ("received_at", format_ts(self.received_at).into_bytes()),
            (
                "headers",
                serde_json::to_vec(&headers).unwrap_or_else(|_| b"{}".to_vec()),
            ),
            ("body", self.body.to_vec()),
        ]
    }

    /// Rebuilds an envelope from stream fields (see [`RawEvent::to_fields`]).
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, EnvelopeError> {
        let mut trace_id = None;
        let mut source = None;
        let mut tenant = None;
        let mut received_at = None;
        let mut headers = Vec::new();
        let mut body = None;
        for (name, value) in fields {
            let text = || {
                std::str::from_utf8(value)
                    .map_err(|_| EnvelopeError(format!("field {name} is not UTF-8")))
            };
            match name {
                "trace_id" => {
                    trace_id = Some(
                        Uuid::parse_str(text()?)
                            .map_err(|e| EnvelopeError(format!("trace_id: {e}")))?,
                    )
                }
                "source" => {
                    source = Some(
                        Source::parse(text()?)
                            .ok_or_else(|| EnvelopeError(format!("unknown source {value:?}")))?,
                    )
                }
                "tenant" => tenant = Some(text()?.to_string()),
                "received_at" => {
                    received_at = Some(
                        DateTime::parse_from_rfc3339(text()?)
                            .map_err(|e| EnvelopeError(format!("received_at: {e}")))?
                            .with_timezone(&Utc),
                    )
                }
                "headers" => {
                    let map: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(value)
                            .map_err(|e| EnvelopeError(format!("headers: {e}")))?;
                    headers = map
                        .into_iter()
                        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                        .collect();
                }
                "body" => body = Some(Bytes::copy_from_slice(value)),
                _ => {}
            }
        }
        let missing = |f: &str| EnvelopeError(format!("field {f} missing"));
        Ok(Self {
            trace_id: trace_id.ok_or_else(|| missing("trace_id"))?,
            source: source.ok_or_else(|| missing("source"))?,
            tenant: tenant.ok_or_else(|| missing("tenant"))?,
            received_at: received_at.ok_or_else(|| missing("received_at"))?,
            headers,
            body: body.ok_or_else(|| missing("body"))?,
        })
    }

    /// A header kept with the event.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The current time at the precision Inlet keeps (microseconds), so a
/// timestamp survives a round trip through the stream and the store.
pub fn now() -> DateTime<Utc> {
    use chrono::DurationRound;
    let t = Utc::now();
    t.duration_trunc(chrono::TimeDelta::microseconds(1))
        .unwrap_or(t)
}

/// RFC 3339 with microseconds and `Z`, the one timestamp format Inlet writes.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_with_exact_body() {
        let body = Bytes::from_static(b"{\"object\":\"page\",\n \"entry\":[]}\xff");
        let mut ev = RawEvent::new(Source::Instagram, "acme", body.clone());
        ev.headers
            .push(("content-type".into(), "application/json".into()));
        let fields = ev.to_fields();
        let back = RawEvent::from_fields(fields.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.body, body);
        assert_eq!(back.header("content-type"), Some("application/json"));
    }

    #[test]
    fn missing_field_is_an_error() {
        let err = RawEvent::from_fields([("trace_id", &b"nope"[..])]).unwrap_err();
        assert!(err.to_string().contains("trace_id"));
        let id = Uuid::now_v7().to_string();
        let err = RawEvent::from_fields([("trace_id", id.as_bytes())]).unwrap_err();
        assert!(err.to_string().contains("missing"));
    }
}
