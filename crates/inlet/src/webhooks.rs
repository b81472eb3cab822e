//! Outgoing webhooks: the built-in subscriber that POSTs events to the
//! endpoints listed in `event_subscriptions`.
//!
//! Requests are signed the Standard Webhooks way (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`). Each subscription is delivered to
//! independently (one failing receiver never holds up another), retried on
//! the configured schedule, made idempotent through `processed_events`, and
//! disabled after too many consecutive failed events. The `slack` format
//! turns an event into a Slack incoming-webhook message instead.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::RwLock;

use crate::bus::{Handler, HandlerError};
use crate::events::{Event, Phase};
use crate::store::events::Subscription;
use crate::store::Store;

/// A new random secret in the Standard Webhooks format (`whsec_` + base64).
pub fn generate_secret() -> String {
    let bytes: Vec<u8> = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .copied()
        .collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn key_bytes(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<signature>` for a message id, unix timestamp and body.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes(secret)).expect("any key length");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Verifies a `webhook-signature` header (space-separated list of
/// `v1,<sig>`), as a receiver would.
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let expected = sign(secret, msg_id, timestamp, body);
    header.split(' ').any(|candidate| {
        candidate.len() == expected.len()
            && candidate
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// The Slack incoming-webhook message for an event: a one-line summary
/// with ids and types, never message text.
pub fn slack_message(event: &Event) -> serde_json::Value {
    let d = &event.data;
    let field = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let mut detail = match event.entity.as_str() {
        "message" => format!(
            "{} {} {} from {}",
            field("channel"),
            field("direction"),
            field("message_type"),
            match field("contact_display") {
                "" => crate::audit::mask_id(field("contact")),
                shown => shown.to_owned(),
            }
        ),
        "message_status" => format!("{} {}", field("channel"), field("status")),
        "page_change" => format!("{} {} {}", field("channel"), field("field"), field("kind")),
        "subscription" => format!("subscription {}", field("name")),
        _ => String::new(),
    };
    if let Some(e) = &event.error {
        detail.push_str(&format!(" — error: {e}"));
    }
    let icon = match event.phase {
        Phase::Failed => ":rotating_light:",
        _ => ":incoming_envelope:",
    };
    json!({
        "text": format!("{icon} *{}* {} (tenant {}, trace {})", event.event_type, detail.trim(), event.tenant_id, event.trace_id.as_deref().unwrap_or("-")),
    })
}

/// Outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx.
    Ok(u16),
    /// Non-2xx or transport error.
    Failed(String),
}

/// Every attempt to deliver an event to a subscription failed.
#[derive(Debug, thiserror::Error)]
#[error("{subscription}: {last}")]
struct WebhookFailed {
    /// The subscription's name.
    subscription: String,
    /// The last attempt's outcome.
    last: String,
}

/// The outgoing-webhook subscriber.
pub struct WebhookHandler {
    store: Store,
    client: reqwest::Client,
    schedule: Vec<Duration>,
    disable_after: i32,
    cache: RwLock<(std::time::Instant, Arc<Vec<Subscription>>)>,
}

impl WebhookHandler {
    /// Delivers with `schedule` delays between attempts; disables a
    /// subscription after `disable_after` consecutive failed events.
    pub fn new(store: Store, schedule: Vec<Duration>, disable_after: u32) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("inlet-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            store,
            client,
            schedule,
            disable_after: i32::try_from(disable_after).unwrap_or(i32::MAX),
            cache: RwLock::new((
                std::time::Instant::now() - Duration::from_secs(3600),
                Arc::new(Vec::new()),
            )),
        })
    }

    async fn subscriptions(&self) -> Arc<Vec<Subscription>> {
        {
            let cached = self.cache.read().await;
            if cached.0.elapsed() < Duration::from_secs(2) {
                return cached.1.clone();
            }
        }
        match self.store.event_log().subscriptions().await {
            Ok(subs) => {
                let subs = Arc::new(subs.into_iter().filter(|s| s.active).collect::<Vec<_>>());
                *self.cache.write().await = (std::time::Instant::now(), subs.clone());
                subs
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not load subscriptions; using the cached list");
                self.cache.read().await.1.clone()
            }
        }
    }

    /// One POST of `event` to `sub`.
    pub async fn attempt(&self, sub: &Subscription, event: &Event) -> Delivery {
        let (body, headers) = if sub.format == "slack" {
            (
                serde_json::to_vec(&slack_message(event)).unwrap_or_default(),
                Vec::new(),
            )
        } else {
            let body = serde_json::to_vec(event).unwrap_or_default();
            let id = match &event.replay {
                Some(r) => format!("{}_{r}", event.id),
                None => event.id.to_string(),
            };
            let ts = chrono::Utc::now().timestamp();
            let sig = sign(&sub.secret, &id, ts, &body);
            (
                body,
                vec![
                    ("webhook-id", id),
                    ("webhook-timestamp", ts.to_string()),
                    ("webhook-signature", sig),
                ],
            )
        };
        let mut req = self
            .client
            .post(&sub.url)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(res) if res.status().is_success() => Delivery::Ok(res.status().as_u16()),
            Ok(res) => Delivery::Failed(format!("HTTP {}", res.status().as_u16())),
            Err(e) => Delivery::Failed(e.without_url().to_string()),
        }
    }

    async fn deliver_to(&self, sub: &Subscription, event: &Event) -> Result<(), WebhookFailed> {
        let handler = format!("webhook:{}", sub.id);
        let key = match &event.replay {
            Some(r) => format!("{}#replay:{r}", event.id),
            None => event.id.to_string(),
        };
        let log = self.store.event_log();
        if log.is_processed(&key, &handler).await.unwrap_or(false) {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 0..=self.schedule.len() {
            if attempt > 0 {
                tokio::time::sleep(self.schedule[attempt - 1]).await;
            }
            match self.attempt(sub, event).await {
                Delivery::Ok(_) => {
                    metrics::counter!("inlet_webhook_deliveries_total", "outcome" => "ok")
                        .increment(1);
                    let _ = self.store.mark_processed(&key, &handler).await;
                    let _ = log.record_delivery(sub.id, true, self.disable_after).await;
                    return Ok(());
                }
                Delivery::Failed(e) => {
                    metrics::counter!("inlet_webhook_deliveries_total", "outcome" => "retry")
                        .increment(1);
                    last = e;
                }
            }
        }
        metrics::counter!("inlet_webhook_deliveries_total", "outcome" => "failed").increment(1);
        let attempts = i32::try_from(self.schedule.len() + 1).unwrap_or(i32::MAX);
        let _ = log.record_failure(event, &handler, attempts, &last).await;
        match log.record_delivery(sub.id, false, self.disable_after).await {
            Ok(true) => {
                tracing::warn!(subscription = %sub.name, "subscription disabled after persistent failures");
                self.cache.write().await.0 = std::time::Instant::now() - Duration::from_secs(3600);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not record delivery outcome"),
        }
        Err(WebhookFailed {
            subscription: sub.name.clone(),
            last,
        })
    }
}

impl Handler for WebhookHandler {
    fn name(&self) -> &str {
        "webhooks"
    }

    fn wants(&self, event: &Event) -> bool {
        event.phase != Phase::Before
    }

    // Idempotency is tracked per subscription inside `handle`.
    fn idempotent(&self) -> bool {
        false
    }

    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            // Subscription changes are events too, and arrive in order before
            // the events committed after them: drop the cached list so a new
            // subscription gets everything from its creation on.
            if event.entity == "subscription" {
                self.cache.write().await.0 = std::time::Instant::now() - Duration::from_secs(3600);
            }
            let subs = self.subscriptions().await;
            let wanted: Vec<&Subscription> = subs.iter().filter(|s| s.wants(event)).collect();
            // Concurrently: a slow or failing receiver does not delay others.
            let results =
                futures_util::future::join_all(wanted.iter().map(|s| self.deliver_to(s, event)))
                    .await;
            // Failures are recorded per subscription; the handler itself
            // succeeded in dispatching, so the bus does not retry everyone.
            for r in results.into_iter().filter_map(Result::err) {
                tracing::debug!(error = %r, "webhook delivery failed");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Operation;

    #[test]
    fn standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's reference tests.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, ts, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(verify(
            secret,
            id,
            ts,
            body,
            "v1,bad v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!verify(
            secret,
            id,
            ts + 1,
            body,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
    }

    #[test]
    fn generated_secrets_round_trip() {
        let s = generate_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(key_bytes(&s).len(), 32);
    }

    #[test]
    fn slack_messages_carry_no_text() {
        let e = Event::new(
            "message",
            Phase::After,
            Operation::Create,
            "k",
            "t",
            None,
            "meta:whatsapp",
            json!({"channel": "whatsapp", "direction": "inbound", "message_type": "text", "contact": "15550001111", "text": "secret words"}),
        );
        let m = slack_message(&e).to_string();
        assert!(m.contains("message.after.create"));
        assert!(!m.contains("secret words"));
        assert!(!m.contains("15550001111"));
    }
}
