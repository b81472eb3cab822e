//! `inlet drafts list|show|approve|reject`: AI drafts from the terminal,
//! through the same operations as the drafts API (`inlet::drafts`): an
//! approval is one conditional update that also queues the send, so the
//! CLI and a dashboard approving at once send one message.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use inlet::config::Settings;
use inlet::drafts::DraftError;
use inlet::http::drafts::{draft_view, draft_with_send};
use inlet::outbound::draft::{ApproveRequest, DraftStatus};
use inlet::store::drafts::DraftFilter;
use serde_json::{json, Value};

/// `inlet drafts …`
#[derive(Debug, Subcommand)]
pub enum DraftsAction {
    /// Drafts, newest first.
    List {
        /// Only this status (pending, approved, sent, rejected, stale,
        /// expired, needs_template, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only this conversation.
        #[arg(long)]
        conversation: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One draft with its text, and its send once approved.
    Show {
        /// Draft id.
        id: String,
    },
    /// Approve a draft: its send is queued (once).
    #[command(disable_version_flag = true)]
    Approve {
        /// Draft id.
        id: String,
        /// The version you reviewed (`inlet drafts show` prints it).
        #[arg(long)]
        version: i32,
        /// Send this text instead of the draft's.
        #[arg(long)]
        text: Option<String>,
        /// Approve although a newer message arrived (stale).
        #[arg(long)]
        force: bool,
    },
    /// Reject a pending or stale draft.
    Reject {
        /// Draft id.
        id: String,
        /// Why (kept with the draft).
        #[arg(long)]
        reason: String,
    },
}

/// Prints a refusal; exit status 1.
fn refused(e: DraftError, json_out: bool, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if let DraftError::Store(s) = e {
        return Err(s).context("the store failed");
    }
    let draft = match &e {
        DraftError::Refused { draft, .. } | DraftError::NeedsTemplate(draft) => {
            Some(draft_view(draft))
        }
        _ => None,
    };
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"code": e.code(), "detail": e.to_string(), "draft": draft})
        )?;
    } else {
        writeln!(out, "not done ({}): {e}", e.code())?;
        if let Some(d) = draft {
            writeln!(
                out,
                "  the draft is {} at version {}",
                d["status"].as_str().unwrap_or(""),
                d["version"]
            )?;
        }
    }
    Ok(ExitCode::from(1))
}

fn line(v: &Value) -> String {
    let text: String = v["final_text"]
        .as_str()
        .or(v["text"].as_str())
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    format!(
        "{}  {:<14} v{:<3} conv {:<5} {:<20} {}",
        v["id"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["version"],
        v["conversation_id"],
        v["author"].as_str().unwrap_or(""),
        text
    )
}

/// `inlet drafts …`.
pub async fn drafts(
    action: DraftsAction,
    settings: &Settings,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(settings).await?;
    match action {
        DraftsAction::List {
            status,
            conversation,
            limit,
        } => {
            if let Some(s) = &status {
                if DraftStatus::parse(s).is_none() {
                    anyhow::bail!(
                        "--status {s:?} is not one of {}",
                        DraftStatus::ALL.map(DraftStatus::as_str).join(", ")
                    );
                }
            }
            let filter = DraftFilter {
                status,
                conversation_id: conversation,
                limit: limit.max(1),
            };
            let list = store
                .drafts()
                .drafts(&filter)
                .await
                .context("reading drafts")?;
            let views: Vec<Value> = list.iter().map(draft_view).collect();
            if json_out {
                writeln!(out, "{}", Value::Array(views))?;
            } else if views.is_empty() {
                writeln!(out, "no drafts")?;
            } else {
                for v in &views {
                    writeln!(out, "{}", line(v))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DraftsAction::Show { id } => {
            let view = draft_with_send(&store, &id)
                .await
                .context("reading the draft")?;
            crate::send::show_record(out, json_out, view, &format!("no draft {id}"))
        }
        DraftsAction::Approve {
            id,
            version,
            text,
            force,
        } => {
            let request = ApproveRequest {
                version,
                text: text.filter(|t| !t.trim().is_empty()),
                force,
            };
            let trace = uuid::Uuid::now_v7();
            match inlet::drafts::approve(&store, settings, &id, &request, "cli", trace).await {
                Ok((d, send)) => {
                    if json_out {
                        writeln!(
                            out,
                            "{}",
                            json!({"id": d.id, "status": d.status, "version": d.version, "outbound_id": send.id})
                        )?;
                    } else {
                        writeln!(
                            out,
                            "approved {} (version {}); send {} queued, `inlet outbound show {}` follows it",
                            d.id, d.version, send.id, send.id
                        )?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e, json_out, out),
            }
        }
        DraftsAction::Reject { id, reason } => {
            let reason = reason.trim();
            if reason.is_empty() {
                anyhow::bail!("--reason must not be empty");
            }
            match inlet::drafts::reject(&store, &id, reason, "cli").await {
                Ok(d) => {
                    if json_out {
                        writeln!(out, "{}", draft_view(&d))?;
                    } else {
                        writeln!(out, "rejected {} (version {})", d.id, d.version)?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e, json_out, out),
            }
        }
    }
}
