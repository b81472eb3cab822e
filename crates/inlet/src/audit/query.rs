//! Reading the audit trail back: what `inlet audit trace` and `inlet audit
//! tail` print.
//!
//! Every service appends to its own daily file (`gateway-…`, `worker-…`,
//! `cli-…`), so one event's steps are spread over several files. This module
//! merges them in time order, filters them, finds the traces of a provider
//! message id through the `refs` hashes of `normalized` lines, and follows
//! the files as they grow. It only reads; the CLI formats what it returns.

use std::collections::VecDeque;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::{id_ref, AuditRecord};

/// Which lines to keep. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only this trace.
    pub trace: Option<Uuid>,
    /// Only these stages (`received`, `normalized`, …).
    pub stages: Vec<String>,
    /// Only these webhook sources.
    pub sources: Vec<String>,
    /// Only these outcomes (`ok`, `error`, `duplicate`, …).
    pub outcomes: Vec<String>,
    /// Only lines written by these services (`gateway`, `worker`, `cli`).
    pub services: Vec<String>,
}

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let listed = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        };
        (self.trace.is_none() || record.trace_id == self.trace)
            && listed(&self.stages, Some(&record.stage))
            && listed(&self.sources, record.webhook_source())
            && listed(&self.outcomes, Some(&record.outcome))
            && listed(&self.services, Some(&record.service))
    }

    /// Cheap test on the raw line before it is parsed: a trace filter
    /// discards almost every line without JSON decoding.
    fn may_match(&self, line: &str) -> bool {
        match &self.trace {
            Some(t) => line.contains(&t.to_string()),
            None => true,
        }
    }
}

/// An audit file and what its name says about it.
#[derive(Debug, Clone)]
struct LogFile {
    path: PathBuf,
    /// The UTC day of `{service}-{YYYY-MM-DD}.jsonl`; `None` for other names.
    date: Option<NaiveDate>,
}

fn list_files(dir: &Path) -> std::io::Result<Vec<LogFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files: Vec<LogFile> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|path| {
            let date = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.get(s.len().saturating_sub(10)..))
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            LogFile { path, date }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// One line, if it passes `keep` (checked on the raw text, before
/// parsing) and `filter`.
fn parse_line(line: &[u8], keep: &dyn Fn(&str) -> bool, filter: &Filter) -> Option<AuditRecord> {
    let line = std::str::from_utf8(line).ok()?;
    if line.trim().is_empty() || !filter.may_match(line) || !keep(line) {
        return None;
    }
    serde_json::from_str::<AuditRecord>(line)
        .ok()
        .filter(|r| filter.matches(r))
}

/// Parses the complete lines of `bytes` that pass `keep` and `filter`.
fn parse_lines(
    bytes: &[u8],
    keep: &dyn Fn(&str) -> bool,
    filter: &Filter,
    out: &mut Vec<AuditRecord>,
) {
    out.extend(
        bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| parse_line(line, keep, filter)),
    );
}

/// Streams the complete lines among the first `limit` bytes of a file (the
/// whole file for `None`) that pass `keep` and `filter` into `sink`, one
/// line in memory at a time: daily files can be large. A last line without
/// its newline is still being written and is left for later.
fn scan_file(
    path: &Path,
    limit: Option<u64>,
    keep: &dyn Fn(&str) -> bool,
    filter: &Filter,
    sink: &mut dyn FnMut(AuditRecord),
) -> std::io::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Removed by retention meanwhile: nothing to read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file.take(limit.unwrap_or(u64::MAX)));
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        if let Some(record) = parse_line(&line[..line.len() - 1], keep, filter) {
            sink(record);
        }
    }
}

/// Sorts lines by their timestamp. The sort is stable, so lines of one file
/// with the same timestamp keep the order they were written in.
pub fn sort_by_time(records: &mut [AuditRecord]) {
    records.sort_by_cached_key(|r| r.timestamp().unwrap_or(DateTime::<Utc>::MIN_UTC));
}

/// Every line of every file in `dir` passing `filter`, in time order.
pub fn read_filtered(dir: &Path, filter: &Filter) -> std::io::Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    for file in list_files(dir)? {
        scan_file(&file.path, None, &|_| true, filter, &mut |r| out.push(r))?;
    }
    sort_by_time(&mut out);
    Ok(out)
}

/// One delivery's steps across every service, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The trace id.
    pub trace_id: Uuid,
    /// Its audit lines, oldest first.
    pub steps: Vec<AuditRecord>,
}

impl Trace {
    /// Time of the first step.
    pub fn started(&self) -> Option<DateTime<Utc>> {
        self.steps.first().and_then(AuditRecord::timestamp)
    }

    /// Microseconds from the first step to `step`.
    pub fn offset_us(&self, step: &AuditRecord) -> Option<i64> {
        let start = self.started()?;
        (step.timestamp()? - start).num_microseconds()
    }

    /// Microseconds from the first step to the last.
    pub fn total_us(&self) -> Option<i64> {
        self.steps.last().and_then(|s| self.offset_us(s))
    }
}

/// The steps of each trace in `ids`, in one pass over the files. Traces
/// without any line are left out; the result follows the order of `ids`.
pub fn traces(dir: &Path, ids: &[Uuid]) -> std::io::Result<Vec<Trace>> {
    let wanted: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let keep = |line: &str| wanted.iter().any(|id| line.contains(id.as_str()));
    let mut lines = Vec::new();
    for file in list_files(dir)? {
        scan_file(&file.path, None, &keep, &Filter::default(), &mut |r| {
            lines.push(r)
        })?;
    }
    sort_by_time(&mut lines);
    let mut by_trace: HashMap<Uuid, Vec<AuditRecord>> = HashMap::new();
    for line in lines {
        if let Some(t) = line.trace_id.filter(|t| ids.contains(t)) {
            by_trace.entry(t).or_default().push(line);
        }
    }
    Ok(ids
        .iter()
        .filter_map(|id| {
            by_trace.remove(id).map(|steps| Trace {
                trace_id: *id,
                steps,
            })
        })
        .collect())
}

/// The steps of one trace (empty when the logs have none).
pub fn trace(dir: &Path, trace_id: Uuid) -> std::io::Result<Trace> {
    Ok(traces(dir, &[trace_id])?.pop().unwrap_or(Trace {
        trace_id,
        steps: Vec::new(),
    }))
}

/// What `inlet audit trace` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceQuery {
    /// A trace id (UUID).
    Trace(Uuid),
    /// A provider message id (`wamid.…`, `m_…`, `mid.…`) or the 16-hex
    /// [`id_ref`] of one, as it appears in audit lines.
    ProviderId(String),
}

impl TraceQuery {
    /// A UUID is a trace id; anything else a provider message id.
    pub fn parse(s: &str) -> Self {
        match Uuid::parse_str(s.trim()) {
            Ok(id) => TraceQuery::Trace(id),
            Err(_) => TraceQuery::ProviderId(s.trim().to_string()),
        }
    }
}

/// The references a provider id is logged under: its [`id_ref`], and the
/// argument itself when it already is one (16 lower-case hex digits).
fn refs_of(provider_id: &str) -> Vec<String> {
    let mut refs = vec![id_ref(provider_id)];
    if provider_id.len() == 16
        && provider_id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        refs.push(provider_id.to_string());
    }
    refs
}

/// Trace ids whose `normalized` lines list `provider_id` (hashed with
/// [`id_ref`]) in their `refs`, oldest first. Every delivery of the id is
/// found, redeliveries included.
pub fn traces_of_provider_id(dir: &Path, provider_id: &str) -> std::io::Result<Vec<Uuid>> {
    let refs = refs_of(provider_id);
    let keep = |line: &str| refs.iter().any(|r| line.contains(r.as_str()));
    let filter = Filter {
        stages: vec!["normalized".into()],
        ..Filter::default()
    };
    let mut lines = Vec::new();
    for file in list_files(dir)? {
        scan_file(&file.path, None, &keep, &filter, &mut |r| lines.push(r))?;
    }
    sort_by_time(&mut lines);
    let mut seen = HashSet::new();
    Ok(lines
        .iter()
        .filter(|l| {
            l.extra
                .get("refs")
                .and_then(|v| v.as_array())
                .is_some_and(|a| {
                    a.iter()
                        .any(|r| r.as_str().is_some_and(|r| refs.iter().any(|x| x == r)))
                })
        })
        .filter_map(|l| l.trace_id)
        .filter(|t| seen.insert(*t))
        .collect())
}

/// Follows the audit files of a directory: remembers how far each file has
/// been read, returns only complete new lines, notices new files (a new day,
/// a service writing for the first time) and files truncated or removed by
/// retention.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    offsets: HashMap<PathBuf, u64>,
    /// Bytes after the last newline of a file, waiting for the rest.
    partial: HashMap<PathBuf, Vec<u8>>,
}

impl Follower {
    /// A follower positioned at the current end of every file.
    pub fn at_end(dir: &Path) -> std::io::Result<Self> {
        let mut offsets = HashMap::new();
        for file in list_files(dir)? {
            let len = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
            offsets.insert(file.path, len);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            offsets,
            partial: HashMap::new(),
        })
    }

    /// The last `n` lines passing `filter` written before the follower's
    /// starting point, in time order. Reads the newest days first and stops
    /// once it has enough, so old files are not read for a short tail.
    pub fn tail(&self, filter: &Filter, n: usize) -> std::io::Result<Vec<AuditRecord>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut by_day: BTreeMap<Option<NaiveDate>, Vec<LogFile>> = BTreeMap::new();
        for file in list_files(&self.dir)? {
            if self.offsets.contains_key(&file.path) {
                by_day.entry(file.date).or_default().push(file);
            }
        }
        let mut collected: Vec<AuditRecord> = Vec::new();
        // Newest day first; files without a date in their name are read last.
        for (_, files) in by_day.into_iter().rev() {
            let mut day = Vec::new();
            for file in files {
                // Each file is in time order: its last `n` matching lines
                // are all it can contribute. A line cut by the starting
                // point belongs to what follows.
                let mut last: VecDeque<AuditRecord> = VecDeque::with_capacity(n.min(1024));
                let limit = self.offsets.get(&file.path).copied();
                scan_file(&file.path, limit, &|_| true, filter, &mut |r| {
                    if last.len() == n {
                        last.pop_front();
                    }
                    last.push_back(r);
                })?;
                day.extend(last);
            }
            day.append(&mut collected);
            collected = day;
            if collected.len() >= n {
                break;
            }
        }
        sort_by_time(&mut collected);
        let skip = collected.len().saturating_sub(n);
        Ok(collected.split_off(skip))
    }

    /// Complete lines passing `filter` written since the last poll (or
    /// since the starting point), in time order.
    pub fn poll(&mut self, filter: &Filter) -> std::io::Result<Vec<AuditRecord>> {
        let files = list_files(&self.dir)?;
        let present: HashSet<&PathBuf> = files.iter().map(|f| &f.path).collect();
        self.offsets.retain(|p, _| present.contains(p));
        self.partial.retain(|p, _| present.contains(p));
        let mut out = Vec::new();
        for file in &files {
            let len = match std::fs::metadata(&file.path) {
                Ok(m) => m.len(),
                Err(_) => continue,
            };
            let mut offset = self.offsets.get(&file.path).copied().unwrap_or(0);
            if len < offset {
                // Truncated or replaced: start over.
                offset = 0;
                self.partial.remove(&file.path);
            }
            if len == offset {
                continue;
            }
            let mut f = match std::fs::File::open(&file.path) {
                Ok(f) => f,
                Err(_) => continue,
            };
            f.seek(SeekFrom::Start(offset))?;
            let mut chunk = Vec::new();
            f.take(len - offset).read_to_end(&mut chunk)?;
            self.offsets
                .insert(file.path.clone(), offset + chunk.len() as u64);
            let mut bytes = self.partial.remove(&file.path).unwrap_or_default();
            bytes.extend_from_slice(&chunk);
            match bytes.iter().rposition(|b| *b == b'\n') {
                Some(i) => {
                    let rest = bytes.split_off(i + 1);
                    if !rest.is_empty() {
                        self.partial.insert(file.path.clone(), rest);
                    }
                    parse_lines(&bytes, &|_| true, filter, &mut out);
                }
                None => {
                    self.partial.insert(file.path.clone(), bytes);
                }
            }
        }
        sort_by_time(&mut out);
        Ok(out)
    }
}

/// The last `n` lines passing `filter` across every file, in time order.
pub fn tail(dir: &Path, filter: &Filter, n: usize) -> std::io::Result<Vec<AuditRecord>> {
    Follower::at_end(dir)?.tail(filter, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{file_name, Audit};

    fn line(ts: &str, service: &str, stage: &str, trace: Uuid) -> String {
        let mut r = AuditRecord::new(stage).trace(trace).origin("whatsapp", "t");
        r.ts = ts.into();
        r.service = service.into();
        serde_json::to_string(&r).unwrap() + "\n"
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()
    }

    #[test]
    fn trace_merges_services_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = Uuid::now_v7();
        let other = Uuid::now_v7();
        std::fs::write(
            dir.path().join(file_name("worker", day())),
            line("2024-05-01T10:00:00.000300Z", "worker", "dequeued", t)
                + &line("2024-05-01T10:00:00.000500Z", "worker", "stored", t)
                + &line("2024-05-01T10:00:00.000600Z", "worker", "stored", other),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(file_name("gateway", day())),
            line("2024-05-01T10:00:00.000100Z", "gateway", "received", t)
                + &line("2024-05-01T10:00:00.000200Z", "gateway", "enqueued", t),
        )
        .unwrap();
        let trace = trace(dir.path(), t).unwrap();
        let stages: Vec<&str> = trace.steps.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["received", "enqueued", "dequeued", "stored"]);
        assert_eq!(trace.offset_us(&trace.steps[3]), Some(400));
        assert_eq!(trace.total_us(), Some(400));
    }

    #[test]
    fn provider_ids_are_found_through_their_refs() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path(), "worker").unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        audit.write(
            AuditRecord::new("normalized")
                .trace(a)
                .with("refs", vec![id_ref("wamid.ONE"), id_ref("wamid.TWO")]),
        );
        audit.write(
            AuditRecord::new("normalized")
                .trace(b)
                .with("refs", vec![id_ref("wamid.TWO")]),
        );
        assert_eq!(
            traces_of_provider_id(dir.path(), "wamid.TWO").unwrap(),
            [a, b]
        );
        assert_eq!(traces_of_provider_id(dir.path(), "wamid.ONE").unwrap(), [a]);
        assert_eq!(
            traces_of_provider_id(dir.path(), &id_ref("wamid.ONE")).unwrap(),
            [a]
        );
        assert!(traces_of_provider_id(dir.path(), "wamid.NONE")
            .unwrap()
            .is_empty());
        assert_eq!(TraceQuery::parse(&a.to_string()), TraceQuery::Trace(a));
    }

    #[test]
    fn tail_filters_and_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path(), "gateway").unwrap();
        for i in 0..5 {
            audit.write(
                AuditRecord::new("received")
                    .trace(Uuid::now_v7())
                    .origin(if i % 2 == 0 { "whatsapp" } else { "facebook" }, "t")
                    .with("i", i),
            );
            audit.write(AuditRecord::new("rejected").outcome("error"));
        }
        let filter = Filter {
            sources: vec!["whatsapp".into()],
            ..Filter::default()
        };
        let lines = tail(dir.path(), &filter, 2).unwrap();
        let is: Vec<i64> = lines
            .iter()
            .map(|l| l.extra["i"].as_i64().unwrap())
            .collect();
        assert_eq!(is, [2, 4]);
        let errors = Filter {
            outcomes: vec!["error".into()],
            ..Filter::default()
        };
        assert_eq!(tail(dir.path(), &errors, 100).unwrap().len(), 5);
        assert!(tail(dir.path(), &errors, 0).unwrap().is_empty());
    }

    #[test]
    fn tail_reads_older_days_when_the_newest_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let t = Uuid::now_v7();
        let yesterday = day().pred_opt().unwrap();
        std::fs::write(
            dir.path().join(file_name("gateway", yesterday)),
            line("2024-04-30T23:59:59.000000Z", "gateway", "received", t),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(file_name("worker", day())),
            line("2024-05-01T00:00:01.000000Z", "worker", "stored", t),
        )
        .unwrap();
        let lines = tail(dir.path(), &Filter::default(), 5).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].stage, "received");
        assert_eq!(
            tail(dir.path(), &Filter::default(), 1).unwrap()[0].stage,
            "stored"
        );
    }

    #[test]
    fn follower_returns_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path(), "gateway").unwrap();
        audit.write(AuditRecord::new("received"));
        let mut follower = Follower::at_end(dir.path()).unwrap();
        assert!(follower.poll(&Filter::default()).unwrap().is_empty());
        assert_eq!(follower.tail(&Filter::default(), 10).unwrap().len(), 1);

        audit.write(AuditRecord::new("enqueued"));
        // A new service's file appears, with a half-written line.
        let worker = dir
            .path()
            .join(file_name("worker", Utc::now().date_naive()));
        let full = line(
            "2999-01-01T00:00:00.000000Z",
            "worker",
            "stored",
            Uuid::now_v7(),
        );
        let (head, rest) = full.split_at(20);
        std::fs::write(&worker, head).unwrap();
        let got = follower.poll(&Filter::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].stage, "enqueued");

        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&worker)
            .unwrap()
            .write_all(rest.as_bytes())
            .unwrap();
        let got = follower.poll(&Filter::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].stage, "stored");
        assert!(follower.poll(&Filter::default()).unwrap().is_empty());
    }

    #[test]
    fn half_written_lines_are_left_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let t = Uuid::now_v7();
        let full = line("2024-05-01T10:00:00.000100Z", "gateway", "received", t);
        let next = line("2024-05-01T10:00:00.000200Z", "gateway", "enqueued", t);
        std::fs::write(
            dir.path().join(file_name("gateway", day())),
            format!("{full}{}", &next[..30]),
        )
        .unwrap();
        let lines = tail(dir.path(), &Filter::default(), 10).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(trace(dir.path(), t).unwrap().steps.len(), 1);
    }
}
