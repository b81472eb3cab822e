//! The processing pipeline shared by the worker (queue mode) and the gateway
//! (direct mode): normalize each delivery, store the batch in one
//! transaction with retries, and decide the fate of every event.
//!
//! One implementation, two callers. A processing error is never success:
//! a malformed body is dead-lettered at once; a transient store failure is
//! retried with exponential backoff and, after the last attempt, reported
//! back so the caller dead-letters (worker) or refuses with 503 (direct); a
//! batch the database rejects is split so one bad event cannot take the
//! others down with it. Every step is audited with its trace id.

use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use crate::audit::{id_ref, Audit, AuditRecord};
use crate::backoff::Backoff;
use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::model::NormalizedItem;
use crate::normalize::{normalize, NormalizeError};
use crate::plan::Delivery;
use crate::store::{Store, StoreError, WriteReport};

/// How transient store failures are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub base: Duration,
    /// Multiplier per further attempt.
    pub factor: f64,
}

impl RetryPolicy {
    /// Longest delay before attempt `attempt` (2-based: the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2);
        let secs =
            self.base.as_secs_f64() * self.factor.powi(i32::try_from(exp).unwrap_or(i32::MAX));
        Duration::from_secs_f64(secs.min(60.0))
    }

    /// The jittered delays of a batch's retries: each is drawn from
    /// `[0, delay(n)]` (full jitter, so workers hit by one outage do not
    /// retry in lock-step), capped at a minute.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.base, Duration::from_secs(60)).with_factor(self.factor)
    }

    /// The worker's policy from settings.
    pub fn from_settings(w: &crate::config::WorkerSettings) -> Self {
        Self {
            max_attempts: w.max_attempts,
            base: w.backoff_base,
            factor: w.backoff_factor,
        }
    }
}

/// What happened to a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Trace ids durably stored.
    pub stored: Vec<Uuid>,
    /// Events to dead-letter (malformed, rejected by the store, or
    /// transient failure after the last attempt when the caller asked for
    /// that).
    pub dead: Vec<DeadLetter>,
    /// Events not kept because the store stayed unavailable (direct mode
    /// answers 503 for these).
    pub unavailable: Vec<(RawEvent, StoreError)>,
    /// Aggregate of what was written.
    pub report: WriteReport,
}

/// What to do with events whose store writes kept failing transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Turn them into dead letters (worker: keep the stream moving).
    DeadLetter,
    /// Hand them back as unavailable (direct mode: 503, Meta retries).
    GiveBack,
}

/// Normalize + store, with auditing.
#[derive(Clone)]
pub struct Pipeline {
    store: Store,
    audit: Audit,
    stage: &'static str,
}

impl Pipeline {
    /// A pipeline writing to `store`, auditing as `stage` (`worker` or
    /// `direct`) in the given log.
    pub fn new(store: Store, audit: Audit, stage: &'static str) -> Self {
        Self {
            store,
            audit,
            stage,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Processes a batch of deliveries end to end.
    pub async fn process(
        &self,
        events: Vec<RawEvent>,
        policy: &RetryPolicy,
        on_exhausted: OnExhausted,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let mut deliveries = Vec::with_capacity(events.len());
        let mut lines = Vec::with_capacity(events.len());
        for event in events {
            let started = Instant::now();
            match normalize(&event.body) {
                Ok(items) => {
                    lines.push(
                        self.line("normalized", &event)
                            .duration(started.elapsed())
                            .with("items", items.len())
                            .with("refs", item_refs(&items))
                            .with("contacts", item_contacts(&items)),
                    );
                    deliveries.push(Delivery { event, items });
                }
                Err(e) => {
                    let reason = match e {
                        NormalizeError::NotJson(_) => "not_json",
                        NormalizeError::NotMetaShape(_) => "not_meta_shape",
                    };
                    metrics::counter!("inlet_events_malformed_total").increment(1);
                    outcome
                        .dead
                        .push(self.letter(event, reason, e.to_string(), 1));
                }
            }
        }
        // One write for the batch's lines (written before the store is
        // tried, as each event's would be).
        self.audit.write_all(lines);
        if deliveries.is_empty() {
            return outcome;
        }
        self.store_with_retry(deliveries, policy, on_exhausted, &mut outcome)
            .await;
        outcome
    }

    async fn store_with_retry(
        &self,
        deliveries: Vec<Delivery>,
        policy: &RetryPolicy,
        on_exhausted: OnExhausted,
        outcome: &mut BatchOutcome,
    ) {
        let mut attempt = 1;
        let mut backoff = policy.backoff();
        loop {
            let started = Instant::now();
            match self.store.write(&deliveries).await {
                Ok(report) => {
                    let elapsed = started.elapsed();
                    metrics::histogram!("inlet_store_batch_seconds", "stage" => self.stage)
                        .record(elapsed.as_secs_f64());
                    metrics::counter!("inlet_messages_stored_total").increment(report.messages_new);
                    metrics::counter!("inlet_statuses_stored_total").increment(report.statuses_new);
                    metrics::counter!("inlet_page_changes_stored_total")
                        .increment(report.changes_new);
                    self.audit.write_all(deliveries.iter().map(|d| {
                        self.line("stored", &d.event)
                            .duration(elapsed)
                            .with("batch", deliveries.len())
                            .with("attempt", attempt)
                    }));
                    outcome
                        .stored
                        .extend(deliveries.iter().map(|d| d.event.trace_id));
                    merge(&mut outcome.report, report);
                    return;
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!("inlet_store_retries_total", "stage" => self.stage)
                        .increment(1);
                    if attempt >= policy.max_attempts {
                        tracing::error!(error = %e, attempts = attempt, "store unavailable; giving up on batch");
                        for d in deliveries {
                            match on_exhausted {
                                OnExhausted::DeadLetter => outcome.dead.push(self.letter(
                                    d.event,
                                    "transient_exhausted",
                                    e.to_string(),
                                    attempt,
                                )),
                                OnExhausted::GiveBack => outcome
                                    .unavailable
                                    .push((d.event, StoreError::Unavailable(e.to_string()))),
                            }
                        }
                        return;
                    }
                    let delay = backoff.next_delay();
                    self.audit.write_all(deliveries.iter().map(|d| {
                        self.line("retried", &d.event)
                            .outcome("error")
                            .reason(e.to_string())
                            .with("attempt", attempt)
                            .with("next_delay_ms", delay.as_millis() as u64)
                    }));
                    tracing::warn!(error = %e, attempt, ?delay, "store unavailable; retrying batch");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    // The database refused the data. Split the batch so only
                    // the offending events are dead-lettered.
                    if deliveries.len() == 1 {
                        let d = deliveries.into_iter().next().expect("one delivery");
                        tracing::error!(error = %e, trace_id = %d.event.trace_id, "store rejected event");
                        outcome.dead.push(self.letter(
                            d.event,
                            "store_rejected",
                            e.to_string(),
                            attempt,
                        ));
                        return;
                    }
                    tracing::warn!(error = %e, size = deliveries.len(), "store rejected batch; isolating");
                    for d in deliveries {
                        Box::pin(self.store_with_retry(vec![d], policy, on_exhausted, outcome))
                            .await;
                    }
                    return;
                }
            }
        }
    }

    fn line(&self, stage: &str, event: &RawEvent) -> AuditRecord {
        AuditRecord::new(stage)
            .trace(event.trace_id)
            .origin(event.source.as_str(), &event.tenant)
            .with("by", self.stage)
    }

    /// Builds a dead letter and audits it.
    pub fn letter(
        &self,
        event: RawEvent,
        reason: &str,
        error: String,
        attempts: u32,
    ) -> DeadLetter {
        self.audit.write(
            self.line("dead_lettered", &event)
                .outcome("error")
                .reason(format!("{reason}: {error}"))
                .with("attempts", attempts),
        );
        metrics::counter!("inlet_dead_letters_total", "reason" => reason.to_string()).increment(1);
        DeadLetter {
            event,
            reason: reason.to_string(),
            error,
            attempts,
            stage: self.stage.to_string(),
            failed_at: Utc::now(),
        }
    }
}

fn merge(into: &mut WriteReport, from: WriteReport) {
    into.raw_new += from.raw_new;
    into.messages_new += from.messages_new;
    into.statuses_new += from.statuses_new;
    into.changes_new += from.changes_new;
    into.conversation_ids.extend(from.conversation_ids);
    into.conversation_ids.sort_unstable();
    into.conversation_ids.dedup();
    into.contact_ids.extend(from.contact_ids);
    into.contact_ids.sort_unstable();
    into.contact_ids.dedup();
}

/// Hashed references of the provider ids in a delivery, so `inlet audit
/// trace <provider id>` can find the trace without the ids (which embed phone
/// numbers) appearing in the log.
fn item_refs(items: &[NormalizedItem]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            NormalizedItem::Message(m) => Some(id_ref(&m.provider_message_id)),
            NormalizedItem::Status(s) => s.provider_message_id.as_deref().map(id_ref),
            NormalizedItem::PageChange(c) => Some(id_ref(&c.external_id)),
        })
        .collect()
}

/// The contacts of a delivery as audit lines show them: `@username`, else
/// the masked phone number, else a BSUID's hashed reference
/// (`bsuid:<id_ref>`) — never a full phone number or BSUID.
fn item_contacts(items: &[NormalizedItem]) -> Vec<String> {
    let mut out: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            NormalizedItem::Message(m) => Some(&m.contact),
            NormalizedItem::Status(s) => Some(&s.contact),
            NormalizedItem::PageChange(c) => c.from.as_ref(),
        })
        .filter(|c| !c.external_id.is_empty())
        .map(audit_contact)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One contact as an audit line shows it (see [`item_contacts`]).
fn audit_contact(c: &crate::model::ContactRef) -> String {
    match (
        &c.username,
        &c.wa_id,
        c.user_id.as_ref().or(c.parent_user_id.as_ref()),
    ) {
        (Some(_), _, _) | (None, Some(_), _) => c.display(),
        (None, None, Some(bsuid)) => format!("bsuid:{}", id_ref(bsuid)),
        (None, None, None) => crate::audit::mask_id(&c.external_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_show_contacts_by_username_or_masked_phone_never_in_full() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/meta/wa_bsuid_user_id_only.json"
        ))
        .unwrap();
        let items = normalize(&body).unwrap();
        assert_eq!(item_contacts(&items), vec!["@elif.sample".to_owned()]);
        let phone = crate::model::ContactRef::whatsapp(
            Some("15550005555".into()),
            Some("US.10000000000000000055".into()),
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(audit_contact(&phone), "1555*****55");
        let bsuid = crate::model::ContactRef::whatsapp(
            None,
            Some("US.10000000000000000055".into()),
            None,
            None,
            None,
        )
        .unwrap();
        let shown = audit_contact(&bsuid);
        assert_eq!(
            shown,
            format!("bsuid:{}", id_ref("US.10000000000000000055"))
        );
        assert!(!shown.contains("10000000000000000055"));
    }

    #[test]
    fn backoff_grows_exponentially() {
        let p = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            factor: 3.0,
        };
        assert_eq!(p.delay(2), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(300));
        assert_eq!(p.delay(4), Duration::from_millis(900));
    }
}
