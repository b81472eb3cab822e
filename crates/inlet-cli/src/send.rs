//! `inlet send`, `inlet broadcasts …`, `inlet outbound status`: the send
//! side from the terminal. Commands are stored directly (the same
//! validation and bookkeeping as `POST /api/messages`); the sender of a
//! worker (or of a Redis-less gateway) sends them.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use inlet::config::Settings;
use inlet::http::outbound::{broadcast_view, message_view};
use inlet::outbound::SendSpec;
use inlet::store::outbound::NewSend;
use serde_json::{json, Map, Value};

/// What `inlet send` sends.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Recipient: phone number, BSUID, PSID or IGSID.
    #[arg(long)]
    pub to: String,
    /// Sending phone number id / Page id (default: the only sender listed
    /// in the apps' `senders`).
    #[arg(long, env = "INLET_SEND_FROM")]
    pub from: Option<String>,
    /// whatsapp, facebook or instagram.
    #[arg(long, default_value = "whatsapp")]
    pub channel: String,
    /// A text message (free-form: needs the 24-hour window on WhatsApp).
    #[arg(long, conflicts_with = "template")]
    pub text: Option<String>,
    /// An approved template by name.
    #[arg(long)]
    pub template: Option<String>,
    /// The template's language code.
    #[arg(long, default_value = "en_US")]
    pub lang: String,
    /// Idempotency key: the same key again returns the same message.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `inlet broadcasts …`
#[derive(Debug, Subcommand)]
pub enum BroadcastsAction {
    /// Newest broadcasts with their counts.
    List,
    /// One broadcast.
    Show {
        /// Broadcast id.
        id: String,
    },
    /// Stop dispatching it (sends in flight finish).
    Pause {
        /// Broadcast id.
        id: String,
    },
    /// Continue a paused broadcast.
    Resume {
        /// Broadcast id.
        id: String,
    },
}

/// `inlet outbound …`
#[derive(Debug, Subcommand)]
pub enum OutboundAction {
    /// Sends per state, waiting sends per sender, halted apps, broadcasts.
    Status,
    /// Recent sends, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One send with its history.
    Show {
        /// Outbound id.
        id: String,
    },
}

fn sender_of(settings: &Settings, from: Option<String>) -> anyhow::Result<String> {
    if let Some(f) = from {
        return Ok(f);
    }
    let listed: Vec<&String> = settings
        .apps
        .iter()
        .flat_map(|a| a.senders.iter())
        .collect();
    match listed.as_slice() {
        [one] => Ok((*one).clone()),
        _ => anyhow::bail!("--from is required (the phone number id or Page id to send from)"),
    }
}

/// `inlet send`.
pub async fn send(
    args: SendArgs,
    settings: &Settings,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let from = sender_of(settings, args.from)?;
    let mut body = Map::new();
    body.insert("channel".into(), json!(args.channel));
    body.insert("from".into(), json!(from));
    body.insert("to".into(), json!(args.to));
    match (&args.text, &args.template) {
        (Some(text), None) => {
            body.insert("type".into(), json!("text"));
            body.insert("text".into(), json!({"body": text}));
        }
        (None, Some(name)) => {
            body.insert("type".into(), json!("template"));
            body.insert(
                "template".into(),
                json!({"name": name, "language": {"code": args.lang}}),
            );
        }
        _ => anyhow::bail!("give --text or --template"),
    }
    if let Some(k) = &args.idempotency_key {
        body.insert("idempotency_key".into(), json!(k));
    }
    let spec =
        SendSpec::from_object(&body).map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.detail))?;
    let store = crate::open_store(settings).await?;
    let tenant = settings
        .sending_app(&spec.from)
        .map(|a| a.tenant.clone())
        .unwrap_or_else(|| "default".into());
    let trace = uuid::Uuid::now_v7();
    let send = NewSend {
        id: uuid::Uuid::now_v7().to_string(),
        tenant,
        spec,
        broadcast_id: None,
        trace_id: trace.to_string(),
    };
    let (record, created) = store
        .outbound()
        .enqueue(&send)
        .await
        .context("storing the message")?;
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"id": record.id, "status": record.visible_status(), "created": created})
        )?;
    } else if created {
        writeln!(
            out,
            "queued {} (trace {trace}); `inlet outbound show {}` follows it",
            record.id, record.id
        )?;
    } else {
        writeln!(
            out,
            "already stored as {} ({})",
            record.id,
            record.visible_status()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `show` of one record: its JSON view (one line with `--json`, else
/// pretty), or `missing` and exit status 1.
pub(crate) fn show_record(
    out: &mut dyn Write,
    json_out: bool,
    view: Option<Value>,
    missing: &str,
) -> anyhow::Result<ExitCode> {
    let Some(v) = view else {
        writeln!(out, "{missing}")?;
        return Ok(ExitCode::from(1));
    };
    let text = if json_out {
        v.to_string()
    } else {
        serde_json::to_string_pretty(&v)?
    };
    writeln!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
}

fn print(out: &mut dyn Write, json_out: bool, v: &Value, text: String) -> anyhow::Result<()> {
    if json_out {
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

fn counts_line(v: &Value) -> String {
    v["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `inlet broadcasts …`.
pub async fn broadcasts(
    action: BroadcastsAction,
    settings: &Settings,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(settings).await?;
    let o = store.outbound();
    match action {
        BroadcastsAction::List => {
            let list = o.broadcasts(50).await.context("reading broadcasts")?;
            let views: Vec<Value> = list.iter().map(broadcast_view).collect();
            if json_out {
                writeln!(out, "{}", Value::Array(views))?;
            } else if views.is_empty() {
                writeln!(out, "no broadcasts yet")?;
            } else {
                for v in &views {
                    writeln!(
                        out,
                        "{}  {:<8} {} recipients  {}",
                        v["id"].as_str().unwrap_or(""),
                        v["status"].as_str().unwrap_or(""),
                        v["total"],
                        counts_line(v)
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BroadcastsAction::Show { id } => {
            match o.broadcast(&id).await.context("reading the broadcast")? {
                Some(b) => {
                    let v = broadcast_view(&b);
                    let text = format!(
                    "broadcast {}: {} ({} recipients, {} duplicates dropped)\n  {}\n  finished: {}",
                    b.id,
                    b.status,
                    b.total,
                    b.duplicates,
                    counts_line(&v),
                    v["finished_at"].as_str().unwrap_or("not yet")
                );
                    print(out, json_out, &v, text)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    writeln!(out, "no broadcast {id}")?;
                    Ok(ExitCode::from(1))
                }
            }
        }
        BroadcastsAction::Pause { id } => pause(o, &id, true, json_out, out).await,
        BroadcastsAction::Resume { id } => pause(o, &id, false, json_out, out).await,
    }
}

async fn pause(
    o: &dyn inlet::store::outbound::OutboundStore,
    id: &str,
    paused: bool,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let changed = o
        .set_broadcast_paused(id, paused.then_some("operator"))
        .await
        .context("updating the broadcast")?;
    let status = o.broadcast(id).await?.map(|b| b.status);
    let v = json!({"id": id, "changed": changed, "status": status});
    let text = match (&status, changed) {
        (None, _) => format!("no broadcast {id}"),
        (Some(s), true) => format!("broadcast {id} is now {s}"),
        (Some(s), false) => format!("broadcast {id} is {s}; nothing changed"),
    };
    print(out, json_out, &v, text)?;
    Ok(if status.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `inlet outbound …`.
pub async fn outbound(
    action: OutboundAction,
    settings: &Settings,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(settings).await?;
    let o = store.outbound();
    match action {
        OutboundAction::Status => {
            let stats = o
                .outbound_stats()
                .await
                .context("reading the outbound tables")?;
            if json_out {
                writeln!(out, "{}", serde_json::to_value(&stats)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let verdict = if stats.halts.is_empty() {
                "sending"
            } else {
                "HALTED"
            };
            writeln!(out, "outbound: {verdict}")?;
            let states: Vec<String> = stats
                .by_status
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(
                out,
                "  sends: {}",
                if states.is_empty() {
                    "none yet".into()
                } else {
                    states.join(", ")
                }
            )?;
            for (sender, n) in &stats.queued_by_sender {
                writeln!(out, "  waiting for {sender}: {n}")?;
            }
            for h in &stats.halts {
                writeln!(
                    out,
                    "  halted app {} ({}): {} — configure a new access token; sending resumes by itself",
                    h.tenant,
                    h.error_class,
                    h.error.get("message").or_else(|| h.error.get("detail")).and_then(Value::as_str).unwrap_or("")
                )?;
            }
            let b: Vec<String> = stats
                .broadcasts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if !b.is_empty() {
                writeln!(out, "  broadcasts: {}", b.join(", "))?;
            }
            Ok(if stats.halts.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        OutboundAction::List { limit } => {
            let rows = o.outbound_recent(limit).await.context("reading sends")?;
            let views: Vec<Value> = rows.iter().map(|r| message_view(r, None)).collect();
            if json_out {
                writeln!(out, "{}", Value::Array(views))?;
            } else if views.is_empty() {
                writeln!(out, "no sends yet")?;
            } else {
                for r in &rows {
                    writeln!(
                        out,
                        "{}  {:<14} {:<9} {} attempts {}",
                        r.id,
                        r.visible_status(),
                        r.spec.message_type.as_str(),
                        inlet::audit::mask_id(&r.spec.to),
                        r.attempts
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OutboundAction::Show { id } => {
            let found = o.outbound(&id).await.context("reading the send")?;
            let view = found.map(|(r, history)| message_view(&r, Some(&history)));
            show_record(out, json_out, view, &format!("no outbound message {id}"))
        }
    }
}
