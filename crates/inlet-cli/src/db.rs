//! `inlet db partitions|maintain`: the time partitions of the store's
//! growing tables (Postgres: `raw_events`, `messages`, `message_statuses`,
//! `event_log`) and the daily retention and partition job, run by hand.
//! The library lists and decides ([`inlet::store::partitions`]); this file
//! formats.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use inlet::config::Settings;
use inlet::store::partitions::{Maintenance, MaintenanceReport, PartitionChange, PartitionInfo};
use serde_json::json;

use crate::open_store;

/// `inlet db …`
#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Every partition of the partitioned tables with its range, estimated
    /// rows and size on disk (Postgres; SQLite's tables are plain).
    Partitions,
    /// Run the retention and partition job now (the workers run it daily
    /// and at start): create the partitions ahead, drop expired ones,
    /// delete old idempotency records.
    Maintain,
}

/// Runs `inlet db …`.
pub async fn db(
    action: DbAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    match action {
        DbAction::Partitions => {
            let parts = store.partitions().await.context("listing partitions")?;
            if json {
                writeln!(out, "{}", json!({ "partitions": parts }))?;
            } else if parts.is_empty() {
                writeln!(
                    out,
                    "no partitioned tables ({}; Postgres partitions its growing tables)",
                    store.backend()
                )?;
            } else {
                write!(out, "{}", partitions_table(&parts))?;
            }
        }
        DbAction::Maintain => {
            let job = Maintenance::from_settings(settings, chrono::Utc::now());
            let report = store
                .maintain(&job)
                .await
                .context("running the retention and partition job")?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&report)?)?;
            } else {
                write!(out, "{}", maintenance_text(&report))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes for people: `512 B`, `1.5 MiB`.
fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A range's end for people: the day when it is midnight UTC.
fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    if t == chrono::DateTime::<chrono::Utc>::MIN_UTC {
        "MINVALUE".into()
    } else if t == chrono::DateTime::<chrono::Utc>::MAX_UTC {
        "MAXVALUE".into()
    } else if t.time() == chrono::NaiveTime::MIN {
        t.format("%Y-%m-%d").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

fn partitions_table(parts: &[PartitionInfo]) -> String {
    let mut s = format!(
        "{:<18} {:<34} {:<21} {:<21} {:>12} {:>10}\n",
        "table", "partition", "from", "to", "rows (est.)", "size"
    );
    for p in parts {
        let (from, to) = match p.range {
            Some(r) => (time(r.from), time(r.to)),
            None => ("DEFAULT".into(), String::new()),
        };
        s.push_str(&format!(
            "{:<18} {:<34} {:<21} {:<21} {:>12} {:>10}\n",
            p.table,
            p.partition,
            from,
            to,
            p.rows_estimate,
            size(p.bytes)
        ));
    }
    s
}

fn change_line(verb: &str, c: &PartitionChange) -> String {
    format!(
        "{verb:<8} {:<34} {} .. {}\n",
        c.partition,
        time(c.range.from),
        time(c.range.to)
    )
}

fn maintenance_text(r: &MaintenanceReport) -> String {
    let mut s = String::new();
    for c in &r.created {
        s.push_str(&change_line("created", c));
    }
    for c in &r.dropped {
        s.push_str(&change_line("dropped", c));
    }
    for c in &r.kept_unrelayed {
        s.push_str(&change_line("kept", c));
        s.push_str("         (expired, but holds events the relay has not passed yet)\n");
    }
    for (table, rows) in r.default_rows.iter().filter(|(_, n)| *n > 0) {
        s.push_str(&format!(
            "warning  {table}_default holds {rows} rows outside every partition\n"
        ));
    }
    s.push_str(&format!(
        "{} partitions created, {} dropped; rows deleted: {} raw events, {} idempotency records, \
         {} event keys; {} moved out of default partitions\n",
        r.created.len(),
        r.dropped.len(),
        r.raw_events_deleted,
        r.processed_events_deleted,
        r.event_keys_deleted,
        r.moved_from_default
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use inlet::store::partitions::Range;

    fn t(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn sizes_and_times_read_easily() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536 * 1024), "1.5 MiB");
        assert_eq!(time(t("2026-11-01T00:00:00Z")), "2026-11-01");
        assert_eq!(time(t("2026-11-01T12:30:00Z")), "2026-11-01T12:30:00Z");
    }

    #[test]
    fn the_report_names_each_change_and_default_rows() {
        let change = PartitionChange {
            table: "messages".into(),
            partition: "messages_p20270301".into(),
            range: Range {
                from: t("2027-03-01T00:00:00Z"),
                to: t("2027-04-01T00:00:00Z"),
            },
        };
        let text = maintenance_text(&MaintenanceReport {
            created: vec![change],
            default_rows: vec![("raw_events".into(), 3), ("messages".into(), 0)],
            ..MaintenanceReport::default()
        });
        assert!(
            text.contains("created  messages_p20270301                 2027-03-01 .. 2027-04-01"),
            "{text}"
        );
        assert!(text.contains("raw_events_default holds 3 rows"), "{text}");
        assert!(!text.contains("messages_default"), "{text}");
        assert!(text.contains("1 partitions created, 0 dropped"), "{text}");
    }
}
