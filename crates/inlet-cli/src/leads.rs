//! `inlet leads list|show|refetch`: the leads Lead Ads webhooks announced,
//! as the store keeps them. A refetch puts a lead back to `pending` and
//! queues a `lead.fetch` job in one transaction; a running worker (or a
//! Redis-less gateway) fetches it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use inlet::audit::AuditRecord;
use inlet::config::Settings;
use inlet::store::leads::{state, LeadFilter, LeadRecord};
use serde_json::{json, Value};

/// `inlet leads …`
#[derive(Debug, Subcommand)]
pub enum LeadsAction {
    /// Leads, newest first (with the name, email and phone: an operator's
    /// explicit request).
    List {
        /// Only this status (pending, fetched, failed, dead_lettered).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One lead with its answers and, when it failed, the Graph error.
    Show {
        /// Meta's lead id (leadgen_id).
        lead_id: String,
    },
    /// Fetch a lead again: back to pending, a new lead.fetch job queued.
    Refetch {
        /// Meta's lead id (leadgen_id).
        lead_id: String,
    },
}

/// A lead as the CLI (and the API) shows it.
pub fn lead_view(r: &LeadRecord) -> Value {
    serde_json::to_value(r).unwrap_or_else(|_| json!({}))
}

async fn find(store: &inlet::store::Store, lead_id: &str) -> anyhow::Result<Option<LeadRecord>> {
    let filter = LeadFilter {
        lead_id: Some(lead_id.to_string()),
        limit: 1,
        ..LeadFilter::default()
    };
    Ok(store
        .leads()
        .leads(&filter)
        .await
        .context("reading leads")?
        .into_iter()
        .next())
}

/// `inlet leads …`.
pub async fn leads(
    action: LeadsAction,
    settings: &Settings,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(settings).await?;
    match action {
        LeadsAction::List { status, limit } => {
            if let Some(s) = &status {
                if !state::ALL.contains(&s.as_str()) {
                    anyhow::bail!("--status {s:?} is not one of {}", state::ALL.join(", "));
                }
            }
            let filter = LeadFilter {
                status,
                lead_id: None,
                limit: limit.max(1),
            };
            let list = store
                .leads()
                .leads(&filter)
                .await
                .context("reading leads")?;
            if json_out {
                let views: Vec<Value> = list.iter().map(lead_view).collect();
                writeln!(out, "{}", Value::Array(views))?;
            } else if list.is_empty() {
                writeln!(out, "no leads")?;
            } else {
                for l in &list {
                    writeln!(out, "{}", crate::render::lead_line(l))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LeadsAction::Show { lead_id } => {
            let view = find(&store, &lead_id).await?.map(|l| lead_view(&l));
            crate::send::show_record(out, json_out, view, &format!("no lead {lead_id}"))
        }
        LeadsAction::Refetch { lead_id } => {
            let Some(lead) = find(&store, &lead_id).await? else {
                writeln!(out, "no lead {lead_id}")?;
                return Ok(ExitCode::from(1));
            };
            let queued = store
                .leads()
                .requeue_lead(&lead.tenant, &lead.lead_id)
                .await
                .context("queueing the lead")?;
            crate::cli_audit(settings)?.write(
                AuditRecord::new("lead")
                    .origin("facebook", &lead.tenant)
                    .outcome(if queued { "requeued" } else { "not_found" })
                    .with("lead_id", lead.lead_id.clone())
                    .with("page_id", lead.page_id.clone())
                    .with("previous", lead.status.clone()),
            );
            if json_out {
                writeln!(
                    out,
                    "{}",
                    json!({"lead_id": lead.lead_id, "queued": queued, "previous": lead.status})
                )?;
            } else if queued {
                writeln!(
                    out,
                    "lead {} ({}) is pending again; a lead.fetch job is queued",
                    lead.lead_id, lead.status
                )?;
            } else {
                writeln!(out, "no lead {lead_id}")?;
            }
            Ok(if queued {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
