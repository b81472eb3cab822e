//! The intake of `{prefix}outgoing.command`: other systems (a CRM, an AI
//! service) may queue sends by appending to the stream instead of calling
//! `POST /api/messages`. The intake reads it through the shared consumer
//! protocol (group `sender-intake`), stores each command exactly as the API
//! would (idempotent on its id and its idempotency key) and acknowledges
//! the entry only once the command is stored; the sender then sends it from
//! the store like any other.
//!
//! Entry fields:
//! - `command` (required): the JSON body of `POST /api/messages`, or the
//!   stored form the API publishes (a serialized [`SendSpec`]).
//! - `id` (optional): the outbound id; without it the id is derived from the
//!   entry id, so a redelivered entry is stored once.
//! - `tenant` (optional): else the tenant of the app sending from `from`.
//! - `trace_id` (optional): else a new one.
//!
//! Every command the API stores is published here too (through the outbox);
//! the intake finds it stored and only acknowledges it. A command that
//! cannot be read, or whose idempotency key was used for another body, is a
//! dead letter (stage `intake`, reason `invalid_command` or
//! `idempotency_conflict`) with an audit line and a metric: nothing appended
//! is dropped silently.

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{Audit, AuditRecord};
use crate::backoff::{Backoff, Streak};
use crate::dlq::letter::{DeadLetter, INTAKE_STAGE};
use crate::envelope::{RawEvent, Source};
use crate::model::Channel;
use crate::outbound::SendSpec;
use crate::queue::{ConsumerConfig, GroupConsumer, RedisQueue, StreamEntry};
use crate::store::outbound::NewSend;
use crate::store::Store;
use crate::streams::{OUTGOING_COMMAND, OUTGOING_GROUP};

/// Entries per read.
const READ_COUNT: usize = 100;

/// Namespace of outbound ids derived from stream entry ids (UUIDv5).
const ENTRY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_4d3b_5e8f_9a0b_1c2d_3e4f_5a6b);

/// Why an entry is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// No `command` field.
    #[error("the entry has no `command` field")]
    NoCommand,
    /// `command` is not a valid send.
    #[error("`command` is not a valid send: {0}")]
    Invalid(String),
    /// A field other than `command` is malformed.
    #[error("field `{0}` is malformed: {1}")]
    BadField(&'static str, String),
}

impl IntakeError {
    /// Dead-letter reason.
    pub fn reason(&self) -> &'static str {
        "invalid_command"
    }
}

/// Reads one entry into the command to store. `tenant_of` names the tenant
/// of a sending id when the entry gives none.
pub fn parse_entry(
    entry: &StreamEntry,
    tenant_of: &dyn Fn(&str) -> Option<String>,
) -> Result<NewSend, IntakeError> {
    let body = entry.field("command").ok_or(IntakeError::NoCommand)?;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| IntakeError::Invalid(format!("not JSON: {e}")))?;
    let stored_form = value.get("recipient_kind").is_some() && value.get("content").is_some();
    let spec = if stored_form {
        serde_json::from_value::<SendSpec>(value)
            .map_err(|e| IntakeError::Invalid(e.to_string()))?
    } else {
        SendSpec::parse(body).map_err(|e| IntakeError::Invalid(e.detail))?
    };
    let id = match entry.text("id").filter(|s| !s.is_empty()) {
        Some(id) => {
            if !crate::outbound::request::is_outbound_id(&id) {
                return Err(IntakeError::BadField(
                    "id",
                    "at most 200 letters, digits, '-' or '_'".into(),
                ));
            }
            id
        }
        None => Uuid::new_v5(&ENTRY_NAMESPACE, entry.id.as_bytes()).to_string(),
    };
    let trace_id = match entry.text("trace_id").filter(|s| !s.is_empty()) {
        Some(t) => t
            .parse::<Uuid>()
            .map_err(|e| IntakeError::BadField("trace_id", e.to_string()))?
            .to_string(),
        None => Uuid::now_v7().to_string(),
    };
    let tenant = entry
        .text("tenant")
        .filter(|s| !s.is_empty())
        .or_else(|| tenant_of(&spec.from))
        .unwrap_or_else(|| "default".into());
    Ok(NewSend {
        id,
        tenant,
        spec,
        broadcast_id: None,
        trace_id,
    })
}

/// The source a letter of this channel is shown under.
fn source_of(channel: Option<Channel>) -> Source {
    match channel {
        Some(Channel::Messenger) => Source::Facebook,
        Some(Channel::Instagram) => Source::Instagram,
        _ => Source::Whatsapp,
    }
}

/// The consumer of `outgoing.command` in one worker process.
pub struct CommandIntake {
    queue: RedisQueue,
    store: Store,
    audit: Audit,
    settings: std::sync::Arc<crate::config::Settings>,
    consumer: String,
}

impl CommandIntake {
    /// An intake named `consumer` in group `sender-intake`.
    pub fn new(
        queue: RedisQueue,
        store: Store,
        audit: Audit,
        settings: std::sync::Arc<crate::config::Settings>,
        consumer: String,
    ) -> Self {
        Self {
            queue,
            store,
            audit,
            settings,
            consumer,
        }
    }

    /// Runs until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut streak = Streak::new("command intake", Backoff::infrastructure());
        let config = ConsumerConfig {
            stream: OUTGOING_COMMAND.into(),
            group: OUTGOING_GROUP.into(),
            consumer: self.consumer.clone(),
            count: READ_COUNT,
            block: self.settings.worker.block,
            claim_idle: self.settings.worker.claim_idle,
        };
        let mut consumer = loop {
            match GroupConsumer::connect(&self.queue, config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    if !streak
                        .failed("creating the intake group", &e, &shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        };
        streak.recovered();
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = consumer.next_batch() => b,
            };
            let batch = match batch {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => b,
                Err(e) => {
                    streak.failed("reading commands", &e, &shutdown).await;
                    continue;
                }
            };
            let mut failed = None;
            for entry in batch.entries() {
                if let Err(e) = self.take(entry).await {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                // Unacknowledged: re-read first after the backoff; storing
                // is idempotent, so the entries already stored are not
                // stored twice.
                Some(e) => {
                    drop(batch);
                    streak.failed("storing commands", &e, &shutdown).await;
                }
                None => {
                    if let Err(e) = batch.ack_delete().await {
                        tracing::warn!(error = %e, "acknowledging commands failed");
                    }
                    streak.recovered();
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "command intake stopped");
    }

    /// Stores one entry's command, or dead-letters it. An error is an
    /// infrastructure failure: the entry stays unacknowledged.
    async fn take(&self, entry: &StreamEntry) -> Result<(), TakeError> {
        let tenant_of = |from: &str| self.settings.sending_app(from).map(|a| a.tenant.clone());
        let send = match parse_entry(entry, &tenant_of) {
            Ok(s) => s,
            Err(e) => return self.reject(entry, e.reason(), &e.to_string(), None).await,
        };
        let (record, created) = self.store.outbound().enqueue(&send).await?;
        if !created && record.spec != send.spec {
            let detail = format!(
                "the id or idempotency_key of this command was used for message {} with a different body",
                record.id
            );
            return self
                .reject(
                    entry,
                    "idempotency_conflict",
                    &detail,
                    Some(send.spec.channel),
                )
                .await;
        }
        let outcome = if created { "queued" } else { "duplicate" };
        metrics::counter!("inlet_outbound_intake_total", "outcome" => outcome).increment(1);
        if created {
            let mut record_line = AuditRecord::new("outbound")
                .origin(send.spec.channel.as_str(), &send.tenant)
                .outcome(outcome)
                .with("outbound_id", record.id.clone())
                .with("recipient", crate::audit::id_ref(&send.spec.to))
                .with("type", send.spec.message_type.as_str())
                .with("via", "stream");
            if let Ok(t) = send.trace_id.parse() {
                record_line = record_line.trace(t);
            }
            self.audit.write(record_line);
        }
        Ok(())
    }

    async fn reject(
        &self,
        entry: &StreamEntry,
        reason: &str,
        error: &str,
        channel: Option<Channel>,
    ) -> Result<(), TakeError> {
        let tenant = entry.text("tenant").unwrap_or_default();
        let body = entry.field("command").unwrap_or_default().to_vec();
        let mut event = RawEvent::new(source_of(channel), tenant.clone(), body.into());
        if let Some(t) = entry.text("trace_id").and_then(|t| t.parse().ok()) {
            event.trace_id = t;
        }
        let letter = DeadLetter {
            event,
            reason: reason.to_string(),
            error: error.to_string(),
            attempts: 1,
            stage: INTAKE_STAGE.into(),
            failed_at: chrono::Utc::now(),
        };
        self.queue.dead_letter(&letter).await?;
        metrics::counter!("inlet_outbound_intake_total", "outcome" => "invalid").increment(1);
        tracing::warn!(entry = %entry.id, reason, "command from outgoing.command dead-lettered");
        self.audit.write(
            AuditRecord::new("outbound")
                .trace(letter.event.trace_id)
                .origin(letter.event.source.as_str(), &tenant)
                .outcome("rejected")
                .reason(reason)
                .with("via", "stream")
                .with("entry", entry.id.clone()),
        );
        Ok(())
    }
}

/// Storing or dead-lettering a command failed (the entry is kept).
#[derive(Debug, thiserror::Error)]
enum TakeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            id: id.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    const TEXT: &str = r#"{"channel":"whatsapp","from":"106540352242922","to":"+16505551234","type":"text","text":{"body":"hi"}}"#;

    fn no_tenant(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_api_body_becomes_a_send_with_an_id_derived_from_the_entry() {
        let e = entry("1700000000000-0", &[("command", TEXT)]);
        let a = parse_entry(&e, &no_tenant).unwrap();
        let b = parse_entry(&e, &no_tenant).unwrap();
        assert_eq!(a.id, b.id, "a redelivered entry keeps its id");
        assert_eq!(a.spec.to, "16505551234");
        assert_eq!(a.tenant, "default");
        let other =
            parse_entry(&entry("1700000000000-1", &[("command", TEXT)]), &no_tenant).unwrap();
        assert_ne!(a.id, other.id);
    }

    #[test]
    fn the_stored_form_and_given_fields_are_kept() {
        let spec = SendSpec::parse(TEXT.as_bytes()).unwrap();
        let stored = serde_json::to_string(&spec).unwrap();
        let trace = Uuid::now_v7().to_string();
        let e = entry(
            "1-0",
            &[
                ("command", &stored),
                ("id", "abc-1"),
                ("tenant", "acme"),
                ("trace_id", &trace),
            ],
        );
        let s = parse_entry(&e, &no_tenant).unwrap();
        assert_eq!((s.id.as_str(), s.tenant.as_str()), ("abc-1", "acme"));
        assert_eq!(s.trace_id, trace);
        assert_eq!(s.spec, spec);
        let by_sender =
            parse_entry(&entry("1-0", &[("command", TEXT)]), &|_| Some("t9".into())).unwrap();
        assert_eq!(by_sender.tenant, "t9");
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        assert_eq!(
            parse_entry(&entry("1-0", &[("id", "x")]), &no_tenant).unwrap_err(),
            IntakeError::NoCommand
        );
        let e = parse_entry(&entry("1-0", &[("command", "{")]), &no_tenant).unwrap_err();
        assert!(matches!(e, IntakeError::Invalid(_)), "{e}");
        let no_to = r#"{"channel":"whatsapp","from":"1","type":"text","text":{"body":"hi"}}"#;
        let e = parse_entry(&entry("1-0", &[("command", no_to)]), &no_tenant).unwrap_err();
        assert!(e.to_string().contains("`to`"), "{e}");
        let e = parse_entry(
            &entry("1-0", &[("command", TEXT), ("id", "a b")]),
            &no_tenant,
        )
        .unwrap_err();
        assert!(matches!(e, IntakeError::BadField("id", _)), "{e}");
        let e = parse_entry(
            &entry("1-0", &[("command", TEXT), ("trace_id", "nope")]),
            &no_tenant,
        )
        .unwrap_err();
        assert!(matches!(e, IntakeError::BadField("trace_id", _)), "{e}");
    }

    #[test]
    fn letters_are_shown_under_their_channel() {
        assert_eq!(source_of(Some(Channel::Messenger)), Source::Facebook);
        assert_eq!(source_of(Some(Channel::Instagram)), Source::Instagram);
        assert_eq!(source_of(None), Source::Whatsapp);
    }
}
