//! JSONL audit log: one line per processing step, shared by every service.
//!
//! Files are `{data_dir}/audit/{service}-{YYYY-MM-DD}.jsonl` (UTC), appended
//! with one `write` per line (`O_APPEND`, so lines never interleave) and
//! rotated by date. A line holds identifiers and outcomes, never a body, a
//! secret or a full phone number: contacts are masked with [`mask_id`] and
//! provider message ids are stored only as [`id_ref`] hashes. [`query`]
//! reads the files back (`inlet audit trace|tail`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::format_ts;

pub mod query;

/// One audit line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Time of the step (RFC 3339, µs).
    pub ts: String,
    /// Trace id of the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Uuid>,
    /// Service that wrote the line (`gateway`, `worker`, `cli`).
    pub service: String,
    /// Step: received, rejected, enqueued, direct, dead_lettered, dequeued,
    /// normalized, stored, retried, cached, mode, replayed, …
    pub stage: String,
    /// Webhook source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `ok`, `error`, `duplicate`, …
    pub outcome: String,
    /// Why (rejections, failures): a short code or error text, never data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Duration of the step in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Extra identifiers (counts, masked ids, id refs, mode).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl AuditRecord {
    /// The webhook source of the line: its `source` field, or the `source`
    /// extra of lines written before the delivery had one (rejections,
    /// handshakes).
    pub fn webhook_source(&self) -> Option<&str> {
        self.source
            .as_deref()
            .or_else(|| self.extra.get("source").and_then(|v| v.as_str()))
    }

    /// A line for `stage` with outcome `ok`, stamped now.
    pub fn new(stage: &str) -> Self {
        Self {
            ts: format_ts(Utc::now()),
            stage: stage.to_string(),
            outcome: "ok".into(),
            ..Self::default()
        }
    }

    /// Sets the trace id.
    pub fn trace(mut self, trace_id: Uuid) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// Sets source and tenant.
    pub fn origin(mut self, source: &str, tenant: &str) -> Self {
        self.source = Some(source.to_string());
        self.tenant = Some(tenant.to_string());
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.to_string();
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the duration.
    pub fn duration(mut self, d: std::time::Duration) -> Self {
        self.duration_us = Some(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self
    }

    /// Adds an extra field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Parsed timestamp of the line.
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.ts)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

struct OpenFile {
    date: NaiveDate,
    file: File,
}

struct Inner {
    service: String,
    dir: PathBuf,
    current: Mutex<Option<OpenFile>>,
}

/// Handle to a service's audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("service", &self.inner.service)
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl Audit {
    /// Audit log of `service` in `dir` (created if needed).
    pub fn new(dir: impl Into<PathBuf>, service: &str) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                service: service.to_string(),
                dir,
                current: Mutex::new(None),
            }),
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Name of the service writing.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Appends one line. An audit write failure is reported through tracing
    /// and a metric but never fails the step being audited.
    pub fn write(&self, mut record: AuditRecord) {
        record.service.clone_from(&self.inner.service);
        if let Err(e) = self.append(&record) {
            metrics::counter!("inlet_audit_write_errors_total").increment(1);
            tracing::error!(error = %e, stage = %record.stage, "audit write failed");
        }
    }

    /// Appends several lines with one `write` (the per-event lines of a
    /// batch). Same failure handling as [`Audit::write`].
    pub fn write_all(&self, records: impl IntoIterator<Item = AuditRecord>) {
        let mut lines = Vec::new();
        let mut first_stage = None;
        for mut record in records {
            record.service.clone_from(&self.inner.service);
            first_stage.get_or_insert_with(|| record.stage.clone());
            if let Err(e) = serde_json::to_writer(&mut lines, &record) {
                tracing::error!(error = %e, stage = %record.stage, "audit line not serialized");
                continue;
            }
            lines.push(b'\n');
        }
        if lines.is_empty() {
            return;
        }
        if let Err(e) = self.append_bytes(&lines) {
            metrics::counter!("inlet_audit_write_errors_total").increment(1);
            tracing::error!(error = %e, stage = ?first_stage, "audit write failed");
        }
    }

    fn append(&self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.append_bytes(&line)
    }

    /// Appends whole lines with one `write_all` on the day's file.
    fn append_bytes(&self, line: &[u8]) -> std::io::Result<()> {
        let today = Utc::now().date_naive();
        let mut guard = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.as_ref().map(|f| f.date) != Some(today) {
            let path = self.inner.dir.join(file_name(&self.inner.service, today));
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            *guard = Some(OpenFile { date: today, file });
        }
        match guard.as_mut() {
            Some(open) => open.file.write_all(line),
            None => Ok(()),
        }
    }
}

/// A duration in microseconds (the unit of `duration_us`) for people:
/// `850µs`, `12.3ms`, `1.204s`, `10m00s`.
pub fn format_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else if us < 120_000_000 {
        format!("{:.3}s", us as f64 / 1_000_000.0)
    } else {
        let s = us / 1_000_000;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// [`format_us`] of a number of seconds (negative reads as zero).
pub fn format_secs(s: f64) -> String {
    format_us((s.max(0.0) * 1_000_000.0) as u64)
}

/// `{service}-{YYYY-MM-DD}.jsonl`.
pub fn file_name(service: &str, date: NaiveDate) -> String {
    format!("{service}-{}.jsonl", date.format("%Y-%m-%d"))
}

/// Masks an identifier that may be a phone number: keeps the first 4 and last
/// 2 characters (`1555*****11`). Short ids are fully masked.
pub fn mask_id(id: &str) -> String {
    crate::model::mask(id)
}

/// Short stable reference to a provider id (first 16 hex chars of its
/// SHA-256). WhatsApp message ids embed the customer's number, so audit lines
/// carry this instead; `inlet audit trace` hashes a given id the same way.
pub fn id_ref(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..8])
}

/// Reads every audit line from every file in `dir` (all services, all days),
/// skipping lines that do not parse. Sorted by timestamp.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        out.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok()),
        );
    }
    out.sort_by(|a, b| a.ts.cmp(&b.ts));
    Ok(out)
}

/// Deletes audit files whose date is older than `days` days. Returns how many
/// were removed.
pub fn prune(dir: &Path, days: u32) -> std::io::Result<usize> {
    if days == 0 {
        return Ok(0);
    }
    let cutoff = Utc::now().date_naive() - chrono::Days::new(u64::from(days));
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".jsonl") else {
            continue;
        };
        let Some(date) = stem
            .rsplit_once('-')
            .and_then(|_| stem.get(stem.len().saturating_sub(10)..))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        else {
            continue;
        };
        if date < cutoff {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_us(850), "850µs");
        assert_eq!(format_us(12_345), "12.3ms");
        assert_eq!(format_us(1_204_000), "1.204s");
        assert_eq!(format_us(600_000_000), "10m00s");
        assert_eq!(format_secs(-1.0), "0µs");
        assert_eq!(format_secs(0.5), "500.0ms");
    }

    #[test]
    fn the_source_of_early_lines_is_their_extra() {
        let r = AuditRecord::new("rejected").with("source", "instagram");
        assert_eq!(r.webhook_source(), Some("instagram"));
        let r = AuditRecord::new("received").origin("whatsapp", "t");
        assert_eq!(r.webhook_source(), Some("whatsapp"));
        assert_eq!(AuditRecord::new("mode").webhook_source(), None);
    }

    #[test]
    fn writes_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path(), "gateway").unwrap();
        let trace = Uuid::now_v7();
        audit.write(
            AuditRecord::new("received")
                .trace(trace)
                .origin("whatsapp", "t"),
        );
        audit.write(
            AuditRecord::new("rejected")
                .outcome("error")
                .reason("signature_missing"),
        );
        let lines = read_all(dir.path()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].service, "gateway");
        assert_eq!(lines[0].trace_id, Some(trace));
        assert_eq!(lines[1].reason.as_deref(), Some("signature_missing"));
        let name = file_name("gateway", Utc::now().date_naive());
        assert!(dir.path().join(name).exists());
    }

    #[test]
    fn a_batch_of_lines_is_appended_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path(), "worker").unwrap();
        audit.write(AuditRecord::new("first"));
        let traces: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        audit.write_all(
            traces
                .iter()
                .map(|t| AuditRecord::new("stored").trace(*t).with("batch", 50)),
        );
        audit.write_all(Vec::new());
        let text = std::fs::read_to_string(
            dir.path()
                .join(file_name("worker", Utc::now().date_naive())),
        )
        .unwrap();
        let lines: Vec<AuditRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 51);
        assert_eq!(lines[0].stage, "first");
        for (line, trace) in lines[1..].iter().zip(&traces) {
            assert_eq!(line.service, "worker");
            assert_eq!(line.stage, "stored");
            assert_eq!(line.trace_id, Some(*trace));
        }
    }

    #[test]
    fn masking_hides_phone_numbers() {
        assert_eq!(mask_id("15550001111"), "1555*****11");
        assert_eq!(mask_id("123"), "***");
        assert_eq!(id_ref("wamid.X").len(), 16);
        assert_eq!(id_ref("wamid.X"), id_ref("wamid.X"));
    }

    #[test]
    fn prune_removes_old_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let old = Utc::now().date_naive() - chrono::Days::new(40);
        std::fs::write(dir.path().join(file_name("worker", old)), "{}\n").unwrap();
        let today = file_name("worker", Utc::now().date_naive());
        std::fs::write(dir.path().join(&today), "{}\n").unwrap();
        assert_eq!(prune(dir.path(), 30).unwrap(), 1);
        assert!(dir.path().join(today).exists());
    }
}
