//! The dead letter: an event that could not be processed, and its wire
//! format on the `{prefix}dlq` stream. Pure data, below the store and the
//! queue (both keep letters); inspection and replay are in [`crate::dlq`].

use chrono::{DateTime, Utc};

use crate::envelope::{format_ts, EnvelopeError, RawEvent};

/// Stage of a letter written by the intake of `{prefix}outgoing.command`: a
/// command it could not read or store. Its body is the command as it was on
/// the stream; a replay puts it back there.
pub const INTAKE_STAGE: &str = "intake";

/// An event that could not be processed, with everything needed to replay it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The delivery as received.
    pub event: RawEvent,
    /// Short reason code: `not_json`, `not_meta_shape`, `malformed_entry`,
    /// `transient_exhausted`, `store_rejected`, …
    pub reason: String,
    /// Error text (never contains the body).
    pub error: String,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// Stage that gave up (`gateway`, `worker`, `direct`).
    pub stage: String,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// Stream fields: the envelope fields plus reason, error, attempts, stage
    /// and failed_at.
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut fields = self.event.to_fields();
        fields.push(("reason", self.reason.clone().into_bytes()));
        fields.push(("error", self.error.clone().into_bytes()));
        fields.push(("attempts", self.attempts.to_string().into_bytes()));
        fields.push(("stage", self.stage.clone().into_bytes()));
        fields.push(("failed_at", format_ts(self.failed_at).into_bytes()));
        fields
    }

    /// Reads a dead letter back from stream fields (see [`Self::to_fields`]).
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, EnvelopeError> {
        let fields: Vec<(&str, &[u8])> = fields.into_iter().collect();
        let event = RawEvent::from_fields(fields.iter().copied())?;
        let text = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let failed_at = text("failed_at")
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(event.received_at);
        Ok(Self {
            event,
            reason: text("reason").unwrap_or_default(),
            error: text("error").unwrap_or_default(),
            attempts: text("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
            stage: text("stage").unwrap_or_default(),
            failed_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::envelope::Source;

    fn letter() -> DeadLetter {
        DeadLetter {
            event: RawEvent::new(Source::Whatsapp, "t1", Bytes::from_static(b"{\"x\":1}")),
            reason: "not_meta_shape".into(),
            error: "no entry array".into(),
            attempts: 3,
            stage: "worker".into(),
            failed_at: DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    fn owned(fields: &[(&'static str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn fields_round_trip() {
        let l = letter();
        let fields = owned(&l.to_fields());
        let back = DeadLetter::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn missing_letter_fields_fall_back() {
        let l = letter();
        let envelope_only = owned(&l.event.to_fields());
        let back = DeadLetter::from_fields(
            envelope_only
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice())),
        )
        .unwrap();
        assert_eq!(back.reason, "");
        assert_eq!(back.attempts, 0);
        assert_eq!(back.failed_at, l.event.received_at);
    }

    #[test]
    fn a_broken_envelope_is_an_error() {
        let fields = [("reason", b"x".as_slice())];
        assert!(DeadLetter::from_fields(fields).is_err());
    }
}
