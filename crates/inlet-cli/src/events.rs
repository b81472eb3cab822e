//! `inlet subscriptions …` and `inlet events …`: outgoing-webhook
//! subscriptions, event statistics, failed events and replays.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use inlet::config::Settings;
use inlet::events::{Event, Operation, Phase};
use serde_json::json;

/// `inlet subscriptions …`
#[derive(Debug, Subcommand)]
pub enum SubscriptionsAction {
    /// Add an endpoint that receives signed POSTs of matching events.
    Add {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Endpoint URL (a Slack incoming-webhook URL with --format slack).
        #[arg(long)]
        url: String,
        /// Comma-separated event type patterns, e.g. 'message.after.*,*.failed.*'.
        #[arg(long)]
        events: String,
        /// Signing secret (whsec_…); generated when omitted and printed once.
        #[arg(long, hide_env_values = true)]
        secret: Option<String>,
        /// `standard` (Standard Webhooks JSON) or `slack`.
        #[arg(long, default_value = "standard")]
        format: String,
    },
    /// List subscriptions (secrets are not shown).
    List,
    /// Stop sending to a subscription.
    Disable {
        /// Its name.
        name: String,
    },
    /// Start sending again (resets the failure count).
    Enable {
        /// Its name.
        name: String,
    },
    /// Send a signed test event now and print the receiver's answer.
    Test {
        /// Its name.
        name: String,
    },
}

/// `inlet events …`
#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Counts per event type per day.
    Stats {
        /// Days back from today.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Failed write events and handlers that gave up.
    Failed {
        /// At most this many of each.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Re-deliver logged events to subscribers (marked as a replay, so
    /// handler deduplication does not swallow them).
    Replay {
        /// From (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        from: String,
        /// To, exclusive (YYYY-MM-DD or RFC 3339); default now.
        #[arg(long)]
        to: Option<String>,
        /// Only event types matching this pattern (e.g. 'message.after.*').
        #[arg(long = "type")]
        event_type: Option<String>,
    },
}

async fn store(settings: &Settings) -> anyhow::Result<inlet::store::Store> {
    let store = inlet::store::from_settings(settings)
        .await
        .context("opening the store")?;
    store.ping().await.context("the store is unreachable")?;
    Ok(store)
}

/// Runs `inlet subscriptions …`.
pub async fn subscriptions(
    action: SubscriptionsAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = store(settings).await?;
    let log = store.event_log();
    match action {
        SubscriptionsAction::Add {
            name,
            url,
            events,
            secret,
            format,
        } => {
            if !matches!(format.as_str(), "standard" | "slack") {
                bail!("--format must be standard or slack");
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url must be an http(s) URL");
            }
            let generated = secret.is_none();
            let secret = secret.unwrap_or_else(inlet::webhooks::generate_secret);
            let sub = log
                .add_subscription(&name, &url, &events, &secret, &format)
                .await
                .context("adding the subscription")?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({"subscription": sub, "secret": if generated { Some(&secret) } else { None }})
                )?;
            } else {
                writeln!(
                    out,
                    "added subscription {} (id {}) for {}",
                    sub.name, sub.id, sub.event_types
                )?;
                if generated {
                    writeln!(out, "signing secret (shown once): {secret}")?;
                }
            }
        }
        SubscriptionsAction::List => {
            let subs = log.subscriptions().await?;
            if json {
                writeln!(out, "{}", serde_json::to_value(&subs)?)?;
            } else if subs.is_empty() {
                writeln!(out, "no subscriptions")?;
            } else {
                for s in subs {
                    writeln!(
                        out,
                        "{:<4} {:<20} {:<8} {:<9} fails {:<3} {}  [{}]{}",
                        s.id,
                        s.name,
                        s.format,
                        if s.active { "active" } else { "disabled" },
                        s.consecutive_failures,
                        s.url,
                        s.event_types,
                        s.disabled_reason
                            .map(|r| format!("  ({r})"))
                            .unwrap_or_default()
                    )?;
                }
            }
        }
        SubscriptionsAction::Disable { name } => {
            if !log
                .set_subscription_active(&name, false, Some("disabled by operator"))
                .await?
            {
                bail!("no subscription named {name:?}");
            }
            writeln!(out, "disabled {name}")?;
        }
        SubscriptionsAction::Enable { name } => {
            if !log.set_subscription_active(&name, true, None).await? {
                bail!("no subscription named {name:?}");
            }
            writeln!(out, "enabled {name}")?;
        }
        SubscriptionsAction::Test { name } => {
            let subs = log.subscriptions().await?;
            let sub = subs
                .iter()
                .find(|s| s.name == name)
                .with_context(|| format!("no subscription named {name:?}"))?;
            let handler = inlet::webhooks::WebhookHandler::new(store.clone(), Vec::new(), u32::MAX);
            let event = Event::new(
                "subscription",
                Phase::Test,
                Operation::Ping,
                &uuid::Uuid::now_v7().to_string(),
                "system",
                None,
                "cli",
                json!({"name": sub.name, "message": "test event from `inlet subscriptions test`"}),
            );
            let outcome = handler.attempt(sub, &event).await;
            let ok = matches!(outcome, inlet::webhooks::Delivery::Ok(_));
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({"ok": ok, "outcome": format!("{outcome:?}")})
                )?;
            } else {
                writeln!(out, "{}: {outcome:?}", sub.name)?;
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `inlet events …`.
pub async fn events(
    action: EventsAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = store(settings).await?;
    let log = store.event_log();
    match action {
        EventsAction::Stats { days } => {
            let since = chrono::Utc::now().date_naive()
                - chrono::Days::new(u64::from(days.saturating_sub(1)));
            let since = since.and_hms_opt(0, 0, 0).context("midnight")?.and_utc();
            let stats = log.event_stats(since).await?;
            if json {
                writeln!(out, "{}", serde_json::to_value(&stats)?)?;
            } else if stats.is_empty() {
                writeln!(out, "no events in the last {days} days")?;
            } else {
                for s in stats {
                    writeln!(out, "{}  {:<36} {:>8}", s.day, s.event_type, s.count)?;
                }
            }
        }
        EventsAction::Failed { limit } => {
            let failed = log
                .logged_events(None, None, Some(Phase::Failed), 0, limit)
                .await?;
            let handlers = log.handler_failures(limit).await?;
            if json {
                let failed: Vec<_> = failed.into_iter().map(|(_, e)| e).collect();
                writeln!(
                    out,
                    "{}",
                    json!({"failed_events": failed, "handler_failures": handlers})
                )?;
            } else {
                writeln!(out, "failed write events: {}", failed.len())?;
                for (_, e) in &failed {
                    writeln!(
                        out,
                        "  {}  {:<30} trace {}  {}",
                        inlet::envelope::format_ts(e.timestamp),
                        e.event_type,
                        e.trace_id.as_deref().unwrap_or("-"),
                        e.error.as_deref().unwrap_or("")
                    )?;
                }
                writeln!(out, "handler failures: {}", handlers.len())?;
                for h in &handlers {
                    writeln!(
                        out,
                        "  {}  {:<20} {:<30} x{}  {}",
                        inlet::envelope::format_ts(h.failed_at),
                        h.handler,
                        h.event_type,
                        h.attempts,
                        h.error
                    )?;
                }
            }
        }
        EventsAction::Replay {
            from,
            to,
            event_type,
        } => {
            let from = crate::parse_time(&from)?;
            let to = to.as_deref().map(crate::parse_time).transpose()?;
            let replay = uuid::Uuid::now_v7().to_string();
            let mut after = 0;
            let mut n = 0;
            loop {
                let page = log.logged_events(Some(from), to, None, after, 500).await?;
                let Some((last, _)) = page.last() else { break };
                after = *last;
                let events: Vec<Event> = page
                    .into_iter()
                    .map(|(_, mut e)| {
                        e.replay = Some(replay.clone());
                        e
                    })
                    .filter(|e| event_type.as_deref().is_none_or(|p| e.matches(p)))
                    .collect();
                n += events.len();
                log.enqueue_events(&events).await?;
            }
            if json {
                writeln!(out, "{}", json!({"replayed": n, "replay_id": replay}))?;
            } else {
                writeln!(out, "queued {n} events for re-delivery (replay {replay})")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
