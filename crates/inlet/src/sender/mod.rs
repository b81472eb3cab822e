//! The outbound sender: claims due sends from the store, paces them through
//! the shared limiter, calls the Graph API and records each outcome.
//!
//! - [`graph`]: the Graph API client (answer / not sent / ambiguous).
//! - [`intake`]: stores the commands other systems append to
//!   `{prefix}outgoing.command`.
//! - [`limiter`]: the rate limiter shared by every sender process (Redis,
//!   atomic Lua) or in-process (one process, no Redis).
//! - this file: [`Sender`], the loop. Each round claims the heads of their
//!   (sender, recipient) queues (so per-recipient order holds across
//!   processes), sends them concurrently, and records: accepted (with the
//!   timeline message), requeued (throttle, pacing, transient error with
//!   jittered backoff), final (permanent error, window closed, retries
//!   exhausted), deferred (131049: set aside once, out of the recipient's
//!   queue) or unknown (answer lost). Housekeeping turns sends orphaned
//!   by a dead process into `unknown`, settles unknowns from status
//!   webhooks or by policy, finishes broadcasts, closes open AI drafts
//!   whose window closed or that expired, and lifts an app's halt once its
//!   token changed.

pub mod graph;
pub mod intake;
pub mod limiter;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, AuditRecord};
use crate::backoff::Backoff;
use crate::config::{Settings, UnknownPolicy};
use crate::envelope::Source;
use crate::model::{Channel, ContactRef, Direction, NormalizedItem, NormalizedMessage};
use crate::outbound::rate::{pair_backoff_ms, Grant};
use crate::outbound::{window, wire, ErrorClass, GraphError, MessageType, RecipientKind};
use crate::plan::WritePlan;
use crate::store::outbound::{now_ms, state, Finish, Halt, OutboundRecord};
use crate::store::{Store, StoreError};

use graph::{token_fingerprint, Accepted, GraphClient, SendError};
use limiter::SendLimiter;

/// Sends in flight at once per sender process (distinct recipients).
const CONCURRENCY: usize = 32;
/// How often housekeeping runs.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Why the sender stopped.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The Graph client could not be built.
    #[error(transparent)]
    Client(#[from] graph::ClientError),
}

/// One sender process's loop.
pub struct Sender {
    store: Store,
    limiter: Arc<dyn SendLimiter>,
    graph: GraphClient,
    uploader: crate::media::upload::Uploader,
    settings: Arc<Settings>,
    owner: String,
    audit: Option<Audit>,
}

impl Sender {
    /// A sender named `owner` (unique per process: it holds claims).
    pub fn new(
        store: Store,
        limiter: Arc<dyn SendLimiter>,
        settings: Arc<Settings>,
        owner: String,
        audit: Option<Audit>,
    ) -> Result<Self, SenderError> {
        Ok(Self {
            graph: GraphClient::new(&settings.graph)?,
            uploader: crate::media::upload::Uploader::new(store.clone(), settings.clone())
                .map_err(|e| SenderError::Client(graph::ClientError::from(e)))?,
            store,
            limiter,
            settings,
            owner,
            audit,
        })
    }

    /// Starts the sender on its own task.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Runs until `shutdown`: claims, sends, records. Sends in flight finish
    /// before it returns; claimed but unsent rows are left to their lease.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut last_housekeeping = std::time::Instant::now() - HOUSEKEEPING;
        tracing::info!(owner = %this.owner, "outbound sender running");
        while !shutdown.is_cancelled() {
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = std::time::Instant::now();
                if let Err(e) = this.housekeeping().await {
                    tracing::warn!(error = %e, "outbound housekeeping failed");
                }
            }
            let cfg = &this.settings.outbound;
            let claimed = this
                .store
                .outbound()
                .claim(
                    &this.owner,
                    now_ms(),
                    cfg.lease.as_millis() as i64,
                    i64::from(cfg.claim_batch),
                )
                .await;
            let rows = match claimed {
                Ok(rows) => {
                    backoff.reset();
                    rows
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "outbound claim failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(cfg.poll) => {}
                }
                continue;
            }
            futures_util::stream::iter(rows)
                .for_each_concurrent(CONCURRENCY, |row| {
                    let this = this.clone();
                    async move {
                        let id = row.id.clone();
                        if let Err(e) = this.process(row).await {
                            tracing::warn!(outbound_id = %id, error = %e, "outbound send not recorded; its lease will expire");
                        }
                    }
                })
                .await;
        }
        tracing::info!(owner = %this.owner, "outbound sender stopped");
    }

    fn audit(
        &self,
        row: &OutboundRecord,
        step: &str,
        extra: impl FnOnce(AuditRecord) -> AuditRecord,
    ) {
        metrics::counter!("inlet_outbound_steps_total", "step" => step.to_string()).increment(1);
        let Some(audit) = &self.audit else { return };
        let mut record = AuditRecord::new("outbound")
            .origin(row.spec.channel.as_str(), &row.tenant)
            .outcome(step)
            .with("outbound_id", row.id.clone())
            .with("recipient", crate::audit::id_ref(&row.spec.to))
            .with("type", row.spec.message_type.as_str())
            .with("attempts", row.attempts);
        if let Ok(trace) = row.trace_id.parse() {
            record = record.trace(trace);
        }
        if let Some(b) = &row.broadcast_id {
            record = record.with("broadcast_id", b.clone());
        }
        audit.write(extra(record));
    }

    fn token_for(&self, sender: &str) -> (String, Option<SecretString>) {
        match self.settings.sending_app(sender) {
            Some(app) => (
                app.tenant.clone(),
                app.access_token.as_ref().and_then(|t| t.current()),
            ),
            None => (String::new(), None),
        }
    }

    /// Sends one claimed row and records the outcome.
    async fn process(&self, mut row: OutboundRecord) -> Result<(), StoreError> {
        let cfg = &self.settings.outbound;
        let out = self.store.outbound();
        let spec = row.spec.clone();

        // The 24-hour window: refused locally, not sent to fail with 131047.
        if spec.channel == Channel::Whatsapp && window::requires_window(&spec) {
            let last = out
                .last_inbound(&row.tenant, spec.channel.as_str(), &spec.from, &spec.to)
                .await?;
            let margin = chrono::Duration::from_std(cfg.window_margin).unwrap_or_default();
            if !window::is_open(last, chrono::Utc::now(), margin) {
                let error = json!({"reason": "window_closed", "detail": "no message from the recipient in the last 24 hours: send a template"});
                let finish = Finish::Final {
                    status: state::NEEDS_TEMPLATE,
                    error_class: Some(ErrorClass::NeedsTemplate.as_str().into()),
                    error,
                };
                if out.finish(&row.id, &self.owner, &finish).await? {
                    self.audit(&row, "failed", |r| r.reason("needs_template"));
                }
                return Ok(());
            }
        }

        let (tenant, token) = self.token_for(&spec.from);
        let Some(token) = token else {
            // No token: halt the app (its sends stay queued) until one is
            // configured.
            let halt = Halt {
                tenant: if tenant.is_empty() {
                    row.tenant.clone()
                } else {
                    tenant
                },
                error_class: ErrorClass::AuthHalt.as_str().into(),
                error: json!({"reason": "no_access_token", "detail": format!("no access token configured for sender {}", spec.from)}),
                token_fingerprint: String::new(),
                halted_ms: now_ms(),
            };
            out.halt(&halt).await?;
            self.requeue(&row, now_ms(), "halted", None).await?;
            return Ok(());
        };

        // Rate: the sender's bucket (waiting here keeps the claim), the
        // recipient's pacer (requeued: other recipients go meanwhile).
        let media = spec.message_type.is_media();
        loop {
            let grant = match self.limiter.acquire(&spec.from, &spec.to, media).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "limiter unavailable; send deferred");
                    self.requeue(&row, now_ms() + 1000, "deferred", None)
                        .await?;
                    return Ok(());
                }
            };
            match grant {
                Grant::Now => break,
                Grant::PairWait(ms) => {
                    self.requeue(&row, now_ms() + ms, "paced", None).await?;
                    return Ok(());
                }
                Grant::SenderWait(ms) => {
                    if ms as u128 * 2 > cfg.lease.as_millis() {
                        self.requeue(&row, now_ms() + ms, "deferred", None).await?;
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(ms.max(1) as u64)).await;
                }
            }
        }

        let lease = cfg.lease.as_millis() as i64;
        if !out
            .begin_send(&row.id, &self.owner, now_ms(), lease)
            .await?
        {
            return Ok(()); // lost the claim (lease expired meanwhile)
        }
        row.attempts += 1;
        self.audit(&row, "sending", |r| r);
        // Media named by `path`/`url`: uploaded (or its cached id reused)
        // and sent by id. The upload counts as this attempt; it runs under
        // the `sending` lease, so an upload slower than `outbound.lease_ms`
        // turns the send `unknown` (settled by its status webhook or the
        // unknown policy, like any answer that came late).
        let spec = if crate::media::upload::needs_upload(&spec) {
            match self.uploader.prepare(&spec, &token).await {
                Ok(ready) => ready,
                Err(crate::media::upload::UploadError::Fetch(
                    crate::media::graph::FetchError::Graph(e),
                )) => return self.graph_error(&row, &token, *e).await,
                Err(e) => {
                    let error = json!({"reason": e.reason(), "detail": e.to_string()});
                    return if e.is_transient() {
                        self.transient(&row, ErrorClass::Transient, error).await
                    } else {
                        metrics::counter!("inlet_media_uploads_total", "outcome" => "refused")
                            .increment(1);
                        self.final_failure(&row, state::FAILED, ErrorClass::PayloadPermanent, error)
                            .await
                    };
                }
            }
        } else {
            spec
        };
        let request = wire::graph_request(&spec, &row.id);
        let started = std::time::Instant::now();
        let result = self.graph.send(&request, &token).await;
        metrics::histogram!("inlet_outbound_graph_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(accepted) => self.accepted(&row, accepted).await,
            Err(SendError::Ambiguous(why)) => {
                let finish = Finish::Unknown {
                    error: json!({"reason": "answer_lost", "detail": why}),
                };
                if out.finish(&row.id, &self.owner, &finish).await? {
                    metrics::counter!("inlet_outbound_sends_total", "outcome" => "unknown", "class" => "none").increment(1);
                    self.audit(&row, "unknown", |r| r.reason("answer_lost"));
                }
                Ok(())
            }
            Err(SendError::NotSent(e)) => {
                let error = json!({"reason": "not_sent", "detail": e.to_string()});
                self.transient(&row, ErrorClass::Transient, error).await
            }
            Err(SendError::Graph(e)) => self.graph_error(&row, &token, e).await,
        }
    }

    async fn accepted(&self, row: &OutboundRecord, a: Accepted) -> Result<(), StoreError> {
        let mut answered = row.clone();
        answered.contact_wa_id.clone_from(&a.wa_id);
        let plan = timeline_plan(&answered, &a.message_id);
        let finish = Finish::Accepted {
            provider_message_id: a.message_id.clone(),
            wa_id: a.wa_id.clone(),
            held: a.held(),
            plan: Box::new(plan),
        };
        if self
            .store
            .outbound()
            .finish(&row.id, &self.owner, &finish)
            .await?
        {
            metrics::counter!("inlet_outbound_sends_total", "outcome" => "sent", "class" => "none")
                .increment(1);
            let latency = (now_ms() - row.created_ms).max(0) as f64 / 1000.0;
            metrics::histogram!("inlet_outbound_accept_seconds").record(latency);
            self.audit(row, "sent", |r| r.with("held", a.held()));
        }
        Ok(())
    }

    async fn requeue(
        &self,
        row: &OutboundRecord,
        due_ms: i64,
        note: &'static str,
        error: Option<(&ErrorClass, serde_json::Value)>,
    ) -> Result<bool, StoreError> {
        let finish = Finish::Requeue {
            due_ms,
            note,
            error_class: error.as_ref().map(|(c, _)| c.as_str().to_string()),
            error: error.map(|(_, e)| e),
            refund_attempt: matches!(note, "throttled" | "halted"),
        };
        self.store
            .outbound()
            .finish(&row.id, &self.owner, &finish)
            .await
    }

    async fn final_failure(
        &self,
        row: &OutboundRecord,
        status: &'static str,
        class: ErrorClass,
        error: serde_json::Value,
    ) -> Result<(), StoreError> {
        let finish = Finish::Final {
            status,
            error_class: Some(class.as_str().into()),
            error,
        };
        if self
            .store
            .outbound()
            .finish(&row.id, &self.owner, &finish)
            .await?
        {
            metrics::counter!("inlet_outbound_sends_total", "outcome" => status, "class" => class.as_str()).increment(1);
            let step = if status == state::DEAD_LETTERED {
                "dead_lettered"
            } else {
                "failed"
            };
            self.audit(row, step, |r| r.reason(class.as_str()));
        }
        Ok(())
    }

    async fn transient(
        &self,
        row: &OutboundRecord,
        class: ErrorClass,
        error: serde_json::Value,
    ) -> Result<(), StoreError> {
        let cfg = &self.settings.outbound;
        if row.attempts >= cfg.max_attempts as i32 {
            return self
                .final_failure(row, state::DEAD_LETTERED, class, error)
                .await;
        }
        let delay = retry_delay(cfg.backoff_base, cfg.backoff_cap, row.attempts as u32);
        if self
            .requeue(
                row,
                now_ms() + delay.as_millis() as i64,
                "retried",
                Some((&class, error)),
            )
            .await?
        {
            metrics::counter!("inlet_outbound_sends_total", "outcome" => "retried", "class" => class.as_str()).increment(1);
            self.audit(row, "retried", |r| {
                r.reason(class.as_str())
                    .with("retry_in_ms", delay.as_millis() as u64)
            });
        }
        Ok(())
    }

    async fn graph_error(
        &self,
        row: &OutboundRecord,
        token: &SecretString,
        e: GraphError,
    ) -> Result<(), StoreError> {
        let class = e.class();
        let error = json!({
            "http_status": e.http_status,
            "code": e.code,
            "subcode": e.subcode,
            "message": e.message,
            "details": e.details,
            "fbtrace_id": e.fbtrace_id,
        });
        let spec = &row.spec;
        let out = self.store.outbound();
        if class.pauses_broadcast() {
            if let Some(b) = &row.broadcast_id {
                if out.set_broadcast_paused(b, Some(class.as_str())).await? {
                    tracing::warn!(broadcast_id = %b, class = class.as_str(), "broadcast paused");
                }
            }
        }
        match class {
            ErrorClass::ThrottleSender | ErrorClass::ThrottleApp => {
                let pause = self.settings.outbound.limits.throttle_pause_ms;
                if let Err(le) = self.limiter.throttled(&spec.from, pause).await {
                    tracing::warn!(error = %le, "limiter could not record a throttle");
                }
                metrics::counter!("inlet_outbound_sends_total", "outcome" => "throttled", "class" => class.as_str()).increment(1);
                self.audit(row, "retried", |r| r.reason(class.as_str()));
                self.requeue(row, now_ms() + pause, "throttled", Some((&class, error)))
                    .await?;
                Ok(())
            }
            ErrorClass::ThrottlePair => {
                let wait = pair_backoff_ms(1000, row.attempts.max(1) as u32);
                if let Err(le) = self
                    .limiter
                    .pair_throttled(&spec.from, &spec.to, wait)
                    .await
                {
                    tracing::warn!(error = %le, "limiter could not record a pair throttle");
                }
                metrics::counter!("inlet_outbound_sends_total", "outcome" => "throttled", "class" => class.as_str()).increment(1);
                self.audit(row, "retried", |r| r.reason(class.as_str()));
                self.requeue(row, now_ms() + wait, "throttled", Some((&class, error)))
                    .await?;
                Ok(())
            }
            ErrorClass::AuthHalt | ErrorClass::AccountHalt => {
                let (tenant, _) = self.token_for(&spec.from);
                let halt = Halt {
                    tenant: if tenant.is_empty() {
                        row.tenant.clone()
                    } else {
                        tenant
                    },
                    error_class: class.as_str().into(),
                    error: error.clone(),
                    token_fingerprint: token_fingerprint(token),
                    halted_ms: now_ms(),
                };
                out.halt(&halt).await?;
                metrics::counter!("inlet_outbound_halts_total", "class" => class.as_str())
                    .increment(1);
                tracing::error!(tenant = %halt.tenant, code = e.code, "sending halted for this app: configure a new access token");
                self.audit(row, "halted", |r| {
                    r.reason(class.as_str()).with("code", e.code)
                });
                self.requeue(row, now_ms(), "halted", Some((&class, error)))
                    .await?;
                Ok(())
            }
            ErrorClass::QualityStop if row.broadcast_id.is_some() => {
                // The broadcast is paused; this send waits with it.
                self.requeue(row, now_ms(), "throttled", Some((&class, error)))
                    .await?;
                Ok(())
            }
            // 131049 (per-user marketing cap): Meta's advice is not to
            // retry soon. Set aside once for `deferred_retry`, out of the
            // recipient's queue; a second 131049 is final.
            ErrorClass::RecipientDeferred
                if row.error_class.as_deref() != Some(ErrorClass::RecipientDeferred.as_str()) =>
            {
                let retry = self.settings.outbound.deferred_retry;
                let finish = Finish::Defer {
                    due_ms: now_ms() + retry.as_millis() as i64,
                    error_class: class.as_str().into(),
                    error,
                };
                if out.finish(&row.id, &self.owner, &finish).await? {
                    metrics::counter!("inlet_outbound_sends_total", "outcome" => "deferred", "class" => class.as_str()).increment(1);
                    self.audit(row, "deferred", |r| {
                        r.reason(class.as_str())
                            .with("retry_in_ms", retry.as_millis() as u64)
                    });
                }
                Ok(())
            }
            ErrorClass::Transient => self.transient(row, class, error).await,
            ErrorClass::NeedsTemplate => {
                self.final_failure(row, state::NEEDS_TEMPLATE, class, error)
                    .await
            }
            c if c.dead_letters() => {
                self.final_failure(row, state::DEAD_LETTERED, c, error)
                    .await
            }
            c => self.final_failure(row, state::FAILED, c, error).await,
        }
    }

    /// Orphaned sends → unknown; unknowns settled; broadcasts finished;
    /// halts lifted when the app's token changed.
    async fn housekeeping(&self) -> Result<(), StoreError> {
        let cfg = &self.settings.outbound;
        let out = self.store.outbound();
        let now = now_ms();
        let orphaned = out.expire_sending(now).await?;
        if !orphaned.is_empty() {
            tracing::warn!(
                count = orphaned.len(),
                "sends in flight of a stopped sender are now unknown"
            );
        }
        let released = out.release_deferred(now).await?;
        if released > 0 {
            tracing::info!(released, "deferred sends queued again");
        }
        let (settled, resent, failed) = out
            .settle_unknown(
                now,
                cfg.unknown_deadline.as_millis() as i64,
                cfg.unknown_policy_reply == UnknownPolicy::Resend,
                cfg.unknown_policy_broadcast == UnknownPolicy::Resend,
            )
            .await?;
        if settled + resent + failed > 0 {
            tracing::info!(settled, resent, failed, "unknown sends settled");
        }
        // Accepted → delivered latency, once per send, from the status
        // webhooks joined back to it.
        for d in out.record_deliveries(1000).await? {
            let latency = (d.delivered_ms - d.accepted_ms).max(0) as f64 / 1000.0;
            metrics::histogram!("inlet_outbound_delivered_seconds").record(latency);
        }
        out.finish_broadcasts(now).await?;
        // Open AI drafts whose window closed (WhatsApp) or that nobody
        // reviewed in time.
        let (opened_after, created_before) = crate::outbound::draft::close_thresholds(
            now,
            cfg.window_margin.as_millis() as i64,
            self.settings.drafts.expire_after.as_millis() as i64,
        );
        let closed = self
            .store
            .drafts()
            .close_drafts(now, opened_after, created_before)
            .await?;
        if closed.needs_template + closed.expired > 0 {
            tracing::info!(
                needs_template = closed.needs_template,
                expired = closed.expired,
                "open drafts closed"
            );
            metrics::counter!("inlet_drafts_changed_total", "status" => "needs_template")
                .increment(closed.needs_template);
            metrics::counter!("inlet_drafts_changed_total", "status" => "expired")
                .increment(closed.expired);
        }
        let stats = out.outbound_stats().await?;
        for (sender, n) in &stats.queued_by_sender {
            metrics::gauge!("inlet_outbound_queued", "sender" => sender.clone()).set(*n as f64);
            if let Ok(Some(tokens)) = self.limiter.tokens(sender).await {
                metrics::gauge!("inlet_outbound_tokens", "sender" => sender.clone()).set(tokens);
            }
        }
        metrics::gauge!("inlet_outbound_halted").set(stats.halts.len() as f64);
        let dead = stats
            .by_status
            .get(state::DEAD_LETTERED)
            .copied()
            .unwrap_or(0);
        metrics::gauge!("inlet_dlq_size", "where" => "outbound").set(dead as f64);
        for halt in out.halts().await? {
            let current = self
                .settings
                .apps
                .iter()
                .find(|a| a.tenant == halt.tenant)
                .and_then(|a| a.access_token.as_ref())
                .and_then(|t| t.current());
            if let Some(token) = current {
                if token_fingerprint(&token) != halt.token_fingerprint
                    && out.lift_halt(&halt.tenant).await?
                {
                    tracing::info!(tenant = %halt.tenant, "new access token: sending resumed");
                    if let Some(audit) = &self.audit {
                        audit.write(
                            AuditRecord::new("outbound")
                                .origin("graph", &halt.tenant)
                                .outcome("resumed")
                                .reason("new access token"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Full-jitter exponential delay of the `attempt`-th retry.
fn retry_delay(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = Backoff::new(base, cap).ceiling(attempt);
    ceiling
        .mul_f64(fastrand::f64())
        .max(Duration::from_millis(1))
}

/// The recipient as a contact: on WhatsApp a phone number (`wa_id`) or a
/// BSUID (`user_id`), plus the `wa_id` Meta answered with, so the store
/// links both to one person.
fn contact_of(row: &OutboundRecord) -> ContactRef {
    let spec = &row.spec;
    if spec.channel != Channel::Whatsapp {
        return ContactRef::by_id(spec.to.clone(), None);
    }
    let (wa_id, user_id) = match spec.recipient_kind {
        RecipientKind::Bsuid => (row.contact_wa_id.clone(), Some(spec.to.clone())),
        _ => (Some(spec.to.clone()), None),
    };
    ContactRef::whatsapp(wa_id, user_id, None, None, None)
        .unwrap_or_else(|| ContactRef::by_id(spec.to.clone(), None))
}

/// The timeline row of an accepted send: an outbound message of the
/// recipient's conversation with the sender.
pub fn timeline_plan(row: &OutboundRecord, provider_message_id: &str) -> WritePlan {
    let spec = &row.spec;
    let source = match spec.channel {
        Channel::Whatsapp => Source::Whatsapp,
        Channel::Messenger => Source::Facebook,
        Channel::Instagram => Source::Instagram,
    };
    let details = match spec.message_type {
        MessageType::Template => json!({"outbound_id": row.id, "template": spec.content}),
        MessageType::Text => json!({"outbound_id": row.id}),
        _ => json!({"outbound_id": row.id, "content": spec.content}),
    };
    let message = NormalizedMessage {
        channel: spec.channel,
        account_id: spec.from.clone(),
        business_id: spec.from.clone(),
        provider_message_id: provider_message_id.to_string(),
        direction: Direction::Outbound,
        contact: contact_of(row),
        kind: "message".into(),
        message_type: spec.message_type.as_str().into(),
        text: spec.timeline_text(),
        media: Vec::new(),
        reply_to: spec.reply_to.clone(),
        forwarded: false,
        referral: None,
        details,
        sent_at: chrono::Utc::now(),
    };
    let trace = row
        .trace_id
        .parse()
        .unwrap_or_else(|_| uuid::Uuid::now_v7());
    WritePlan::build_local(
        &row.tenant,
        source,
        trace,
        vec![NormalizedItem::Message(message)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_jittered_below_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_millis(1000);
        for attempt in 1..10 {
            let d = retry_delay(base, cap, attempt);
            assert!(d <= cap, "{d:?}");
            assert!(d <= base * (1 << (attempt - 1)), "{d:?} at {attempt}");
        }
    }
}
