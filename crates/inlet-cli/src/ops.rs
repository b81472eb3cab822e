//! `inlet status` and `inlet audit trace|tail`: thin wrappers over
//! [`inlet::status`] and [`inlet::audit::query`], which hold the logic, and
//! [`crate::render`], which formats it for a terminal.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use inlet::audit::query::{self, Filter, Follower, TraceQuery};
use inlet::audit::AuditRecord;
use inlet::config::Settings;
use uuid::Uuid;

use crate::render;

/// How often `audit tail --follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// `inlet audit …`
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Every step of one delivery, from every service's log, in time order,
    /// with each step's duration and the time since the first step.
    ///
    /// ID is a trace id (the X-Trace-Id the gateway answered with) or a
    /// provider message id (wamid…, m_…, mid…): then every delivery that
    /// carried that id is shown (found through the hashed `refs` of the
    /// `normalized` lines, and through the store when it is reachable).
    Trace {
        /// Trace id or provider message id.
        id: String,
    },
    /// The last lines of every service's audit log, merged in time order.
    Tail {
        /// How many lines to show.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
        /// Keep printing new lines as they are written (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
        /// Only these stages (comma-separated: received,normalized,…).
        #[arg(long, value_delimiter = ',')]
        stage: Vec<String>,
        /// Only these sources (whatsapp, facebook, instagram).
        #[arg(long, value_delimiter = ',')]
        source: Vec<String>,
        /// Only these outcomes (ok, error, queued, duplicate, …).
        #[arg(long, value_delimiter = ',')]
        outcome: Vec<String>,
        /// Only lines written by these services (gateway, worker, cli).
        #[arg(long, value_delimiter = ',')]
        service: Vec<String>,
        /// Only this trace id.
        #[arg(long)]
        trace: Option<Uuid>,
        /// With --follow: stop after this long (500ms, 30s, 5m, 1h).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        for_: Option<Duration>,
    },
}

/// `inlet status`: the report, and the verdict as exit status.
pub async fn status(
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let report = inlet::status::gather(settings).await;
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", render::status_report(&report))?;
    }
    Ok(ExitCode::from(report.health.verdict.exit_code()))
}

/// `inlet audit …`
pub async fn audit(
    action: AuditAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let dir = settings.audit_dir();
    match action {
        AuditAction::Trace { id } => {
            let query = TraceQuery::parse(&id);
            let by_provider_id = matches!(query, TraceQuery::ProviderId(_));
            let ids = match query {
                TraceQuery::Trace(t) => vec![t],
                TraceQuery::ProviderId(provider_id) => {
                    let mut ids = query::traces_of_provider_id(&dir, &provider_id)
                        .context("reading the audit logs")?;
                    // The store knows the delivery that stored the id even
                    // when its audit lines say nothing (pruned files).
                    if let Ok(store) = inlet::status::open_store(settings).await {
                        if let Ok(traces) = store.traces_of_provider_id(&provider_id).await {
                            ids.extend(traces.iter().filter_map(|t| Uuid::parse_str(t).ok()));
                        }
                    }
                    // UUIDv7: sorting by id is sorting by arrival.
                    ids.sort();
                    ids.dedup();
                    ids
                }
            };
            let traces = query::traces(&dir, &ids).context("reading the audit logs")?;
            if traces.is_empty() {
                if !json {
                    writeln!(out, "no audit lines for {id} in {}", dir.display())?;
                }
                return Ok(ExitCode::FAILURE);
            }
            if json {
                for step in traces.iter().flat_map(|t| &t.steps) {
                    writeln!(out, "{}", serde_json::to_string(step)?)?;
                }
            } else {
                if by_provider_id {
                    let n = ids.len();
                    let what = if n == 1 { "delivery" } else { "deliveries" };
                    writeln!(out, "{n} {what} carried {id}")?;
                    writeln!(out)?;
                }
                for (i, t) in traces.iter().enumerate() {
                    if i > 0 {
                        writeln!(out)?;
                    }
                    write!(out, "{}", render::trace(t))?;
                }
                for missing in ids
                    .iter()
                    .filter(|id| !traces.iter().any(|t| t.trace_id == **id))
                {
                    writeln!(
                        out,
                        "\ntrace {missing}: stored, but no audit lines left (retention?)"
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditAction::Tail {
            lines,
            follow,
            stage,
            source,
            outcome,
            service,
            trace,
            for_,
        } => {
            let filter = Filter {
                trace,
                stages: stage,
                sources: source,
                outcomes: outcome,
                services: service,
            };
            let mut follower = Follower::at_end(&dir).context("reading the audit logs")?;
            print_lines(&follower.tail(&filter, lines)?, json, out)?;
            if !follow {
                if for_.is_some() {
                    bail!("--for only applies with --follow");
                }
                return Ok(ExitCode::SUCCESS);
            }
            out.flush()?;
            let deadline = for_.map(|d| tokio::time::Instant::now() + d);
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => break,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
                print_lines(&follower.poll(&filter)?, json, out)?;
                out.flush()?;
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_lines(records: &[AuditRecord], json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    for r in records {
        if json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        } else {
            writeln!(out, "{}", render::audit_line(r))?;
        }
    }
    Ok(())
}

/// `500ms`, `30s`, `5m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (500ms, 30s, 5m, 1h)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
