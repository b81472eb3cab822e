//! The local spool: the last place a verified delivery can be kept when
//! neither Redis nor the store can take it, so the gateway still answers
//! 200 and nothing is lost.
//!
//! - Appends are framed records (`u32` length, `u32` CRC-32C, the envelope's
//!   stream fields) in segment files under `{data_dir}/spool/`. One writer
//!   thread group-commits: it takes every append waiting, writes them, calls
//!   `fsync` once, then answers them all; an append returns only after its
//!   record is on disk.
//! - A torn record at the end of the last segment (a crash mid-write, never
//!   acknowledged) is cut off when the spool opens.
//! - [`Spool::drain`] hands the records after the drain offset, in order, to
//!   a delivery function (Redis or the store) and moves the offset (kept in
//!   `offset`, fsynced) after each delivered record; fully drained segments
//!   are deleted. A crash between a delivery and the offset write delivers
//!   that record again: the raw event's trace id and the messages' provider
//!   ids make the store keep it once.
//! - Above `max_bytes` not yet drained, appends are refused (the gateway
//!   answers 503 and Meta retries).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::envelope::RawEvent;

/// A segment is closed (a new one started) past this size.
const SEGMENT_BYTES: u64 = 16 << 20;
/// Appends group-committed together at most.
const GROUP_MAX: usize = 512;
/// Frame header: length and CRC.
const HEADER: u64 = 8;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Taking the event would pass `spool.max_bytes`.
    #[error("spool full ({pending} of {max} bytes waiting)")]
    Full {
        /// Bytes waiting.
        pending: u64,
        /// The limit.
        max: u64,
    },
    /// Disk I/O failed.
    #[error("spool I/O at {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread has stopped.
    #[error("spool writer stopped")]
    Stopped,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the drain stands: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Position {
    segment: u64,
    offset: u64,
}

/// What is waiting in a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Bytes appended and not drained yet.
    pub pending_bytes: u64,
    /// Records appended and not drained yet (counted since the spool
    /// opened, plus those found at opening).
    pub pending_events: u64,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    /// Durable end of the log: (segment, length), published after fsync.
    end: Mutex<Position>,
    /// The drain offset.
    drained: Mutex<Position>,
    pending_bytes: AtomicU64,
    pending_events: AtomicU64,
}

struct Append {
    frame: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// The spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Append>,
    /// One drain at a time.
    draining: Arc<tokio::sync::Mutex<()>>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("segment-{n:020}.log"))
}

/// The segments in `dir`, in order.
fn segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("segment-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn read_offset(dir: &Path) -> Position {
    std::fs::read_to_string(dir.join("offset"))
        .ok()
        .and_then(|s| {
            let (a, b) = s.trim().split_once(' ')?;
            Some(Position {
                segment: a.parse().ok()?,
                offset: b.parse().ok()?,
            })
        })
        .unwrap_or_default()
}

fn write_offset(dir: &Path, pos: Position) -> Result<(), SpoolError> {
    let tmp = dir.join("offset.tmp");
    let path = dir.join("offset");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    writeln!(f, "{} {}", pos.segment, pos.offset).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(())
}

/// Encodes an envelope as one frame.
pub fn encode(event: &RawEvent) -> Vec<u8> {
    let mut payload = Vec::with_capacity(event.body.len() + 256);
    for (name, value) in event.to_fields() {
        payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
        payload.extend_from_slice(&value);
    }
    let mut frame = Vec::with_capacity(payload.len() + HEADER as usize);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&CASTAGNOLI.checksum(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Decodes a frame's payload back into an envelope.
fn decode(payload: &[u8]) -> Option<RawEvent> {
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    let mut at = 0usize;
    while at < payload.len() {
        let n = u16::from_le_bytes(payload.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2;
        let name = std::str::from_utf8(payload.get(at..at + n)?)
            .ok()?
            .to_string();
        at += n;
        let len = u32::from_le_bytes(payload.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        fields.push((name, payload.get(at..at + len)?.to_vec()));
        at += len;
    }
    RawEvent::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).ok()
}

/// Reads the frame at the reader's position: `Ok(None)` at a clean end or a
/// torn/corrupt tail (not acknowledged, so not an event).
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; HEADER as usize];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    let mut payload = vec![0u8; len];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if CASTAGNOLI.checksum(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Length of the valid frames at the start of `path`, and how many.
fn valid_prefix(path: &Path) -> Result<(u64, u64), SpoolError> {
    let f = File::open(path).map_err(io(path))?;
    let mut r = BufReader::new(f);
    let (mut len, mut n) = (0u64, 0u64);
    while let Some(p) = read_frame(&mut r).map_err(io(path))? {
        len += HEADER + p.len() as u64;
        n += 1;
    }
    Ok((len, n))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: cuts a torn tail off the last
    /// segment, counts what is waiting, starts the writer thread.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut list = segments(dir)?;
        let mut drained = read_offset(dir);
        // Segments before the drain offset are done (a crash before their
        // deletion).
        for n in list.iter().filter(|n| **n < drained.segment) {
            let p = segment_path(dir, *n);
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
        list.retain(|n| *n >= drained.segment);
        if list.is_empty() {
            let n = drained.segment.max(1);
            let p = segment_path(dir, n);
            File::create(&p)
                .map_err(io(&p))?
                .sync_all()
                .map_err(io(&p))?;
            list.push(n);
            if drained.segment != n {
                drained = Position {
                    segment: n,
                    offset: 0,
                };
                write_offset(dir, drained)?;
            }
        }
        if drained.segment < list[0] {
            // No offset yet (or an older one): start at the first segment.
            drained = Position {
                segment: list[0],
                offset: 0,
            };
            write_offset(dir, drained)?;
        }
        let (mut pending_bytes, mut pending_events) = (0u64, 0u64);
        let mut end = Position::default();
        for n in &list {
            let p = segment_path(dir, *n);
            let (valid, count) = valid_prefix(&p)?;
            let size = std::fs::metadata(&p).map_err(io(&p))?.len();
            if size > valid {
                // A torn tail: never acknowledged.
                let f = OpenOptions::new().write(true).open(&p).map_err(io(&p))?;
                f.set_len(valid).map_err(io(&p))?;
                f.sync_all().map_err(io(&p))?;
                tracing::warn!(segment = n, cut = size - valid, "spool: torn tail cut off");
            }
            let from = if *n == drained.segment {
                drained.offset.min(valid)
            } else {
                0
            };
            pending_bytes += valid - from;
            // Count the records after the offset.
            pending_events += if from == 0 {
                count
            } else {
                let f = File::open(&p).map_err(io(&p))?;
                let mut r = BufReader::new(f);
                r.seek(SeekFrom::Start(from)).map_err(io(&p))?;
                let mut k = 0;
                while read_frame(&mut r).map_err(io(&p))?.is_some() {
                    k += 1;
                }
                k
            };
            end = Position {
                segment: *n,
                offset: valid,
            };
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_bytes,
            end: Mutex::new(end),
            drained: Mutex::new(drained),
            pending_bytes: AtomicU64::new(pending_bytes),
            pending_events: AtomicU64::new(pending_events),
        });
        metrics::gauge!("inlet_spool_pending_bytes").set(pending_bytes as f64);
        let (tx, rx) = mpsc::channel::<Append>(4096);
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("inlet-spool-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(io(dir))?;
        Ok(Spool {
            shared,
            tx,
            draining: Arc::default(),
        })
    }

    /// What is waiting.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            pending_bytes: self.shared.pending_bytes.load(Ordering::Acquire),
            pending_events: self.shared.pending_events.load(Ordering::Acquire),
        }
    }

    /// Appends `event`; returns once it is on disk (fsync). `Full` past
    /// `max_bytes` waiting.
    pub async fn append(&self, event: &RawEvent) -> Result<(), SpoolError> {
        let frame = encode(event);
        let pending = self.shared.pending_bytes.load(Ordering::Acquire);
        if pending + frame.len() as u64 > self.shared.max_bytes {
            return Err(SpoolError::Full {
                pending,
                max: self.shared.max_bytes,
            });
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Append { frame, done })
            .await
            .map_err(|_| SpoolError::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SpoolError::Io {
                path: self.shared.dir.clone(),
                source,
            }),
            Err(_) => Err(SpoolError::Stopped),
        }
    }

    /// Hands every waiting record, in order, to `deliver`; stops at the
    /// first delivery that fails (the record stays first in line). Returns
    /// how many were delivered.
    pub async fn drain<F, Fut, E>(&self, mut deliver: F) -> Result<u64, SpoolError>
    where
        F: FnMut(RawEvent) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let _one = self.draining.lock().await;
        let mut delivered = 0u64;
        loop {
            let pos = *lock(&self.shared.drained);
            let end = *lock(&self.shared.end);
            if pos >= end && pos.segment == end.segment {
                return Ok(delivered);
            }
            let path = segment_path(&self.shared.dir, pos.segment);
            let limit = if pos.segment == end.segment {
                end.offset
            } else {
                u64::MAX
            };
            let frame = {
                let file = path.clone();
                tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, SpoolError> {
                    let path = file;
                    let f = File::open(&path).map_err(io(&path))?;
                    let mut r = BufReader::new(f);
                    r.seek(SeekFrom::Start(pos.offset)).map_err(io(&path))?;
                    if pos.offset >= limit {
                        return Ok(None);
                    }
                    read_frame(&mut r).map_err(io(&path))
                })
                .await
                .map_err(|e| SpoolError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })??
            };
            let Some(payload) = frame else {
                // End of a closed segment: on to the next one.
                if pos.segment < end.segment {
                    let next = Position {
                        segment: pos.segment + 1,
                        offset: 0,
                    };
                    write_offset(&self.shared.dir, next)?;
                    *lock(&self.shared.drained) = next;
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                return Ok(delivered);
            };
            let size = HEADER + payload.len() as u64;
            match decode(&payload) {
                Some(event) => {
                    let trace = event.trace_id;
                    if let Err(e) = deliver(event).await {
                        tracing::debug!(error = %e, %trace, "spool drain: delivery failed; will retry");
                        return Ok(delivered);
                    }
                }
                None => {
                    // A checksummed frame that is not an envelope cannot be
                    // written by this version; skip it, loudly.
                    tracing::error!(
                        segment = pos.segment,
                        offset = pos.offset,
                        "spool: undecodable record skipped"
                    );
                }
            }
            let next = Position {
                segment: pos.segment,
                offset: pos.offset + size,
            };
            write_offset(&self.shared.dir, next)?;
            *lock(&self.shared.drained) = next;
            let left = self.shared.pending_bytes.fetch_sub(size, Ordering::AcqRel) - size;
            self.shared.pending_events.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!("inlet_spool_pending_bytes").set(left as f64);
            metrics::counter!("inlet_spool_events_total", "outcome" => "drained").increment(1);
            delivered += 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread: group commit.
fn write_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Append>) {
    let mut end = *lock(&shared.end);
    let mut file: Option<File> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let result = (|| -> std::io::Result<u64> {
            if end.offset >= SEGMENT_BYTES {
                // Close this segment, start the next one.
                let next = segment_path(&shared.dir, end.segment + 1);
                let f = OpenOptions::new().create(true).append(true).open(&next)?;
                File::open(&shared.dir)?.sync_all()?;
                file = Some(f);
                end = Position {
                    segment: end.segment + 1,
                    offset: 0,
                };
            }
            if file.is_none() {
                let p = segment_path(&shared.dir, end.segment);
                file = Some(OpenOptions::new().create(true).append(true).open(p)?);
            }
            let f = file.as_mut().expect("opened above");
            let mut bytes = 0u64;
            for a in &group {
                f.write_all(&a.frame)?;
                bytes += a.frame.len() as u64;
            }
            f.sync_data()?;
            Ok(bytes)
        })();
        match result {
            Ok(bytes) => {
                end.offset += bytes;
                *lock(&shared.end) = end;
                let total = shared.pending_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
                shared
                    .pending_events
                    .fetch_add(group.len() as u64, Ordering::AcqRel);
                metrics::gauge!("inlet_spool_pending_bytes").set(total as f64);
                metrics::counter!("inlet_spool_events_total", "outcome" => "spooled")
                    .increment(group.len() as u64);
                for a in group {
                    let _ = a.done.send(Ok(()));
                }
            }
            Err(e) => {
                // What was written may be torn: reopen and cut back to the
                // last durable end before the next group.
                tracing::error!(error = %e, "spool write failed");
                file = None;
                let p = segment_path(&shared.dir, end.segment);
                if let Ok(f) = OpenOptions::new().write(true).open(&p) {
                    let _ = f.set_len(end.offset);
                    let _ = f.sync_all();
                }
                for a in group {
                    let _ = a
                        .done
                        .send(Err(std::io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
}

/// What waits in the spool under `dir`, read from its files (for `inlet
/// status`, without opening the spool).
pub fn inspect(dir: &Path) -> Result<SpoolStats, SpoolError> {
    if !dir.exists() {
        return Ok(SpoolStats::default());
    }
    let drained = read_offset(dir);
    let mut stats = SpoolStats::default();
    for n in segments(dir)?.into_iter().filter(|n| *n >= drained.segment) {
        let p = segment_path(dir, n);
        let f = File::open(&p).map_err(io(&p))?;
        let mut r = BufReader::new(f);
        let mut at = 0u64;
        while let Some(payload) = read_frame(&mut r).map_err(io(&p))? {
            let size = HEADER + payload.len() as u64;
            if n > drained.segment || at >= drained.offset {
                stats.pending_bytes += size;
                stats.pending_events += 1;
            }
            at += size;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Source;
    use bytes::Bytes;

    fn event(n: u32) -> RawEvent {
        RawEvent::new(
            Source::Whatsapp,
            "default",
            Bytes::from(format!("{{\"n\":{n}}}")),
        )
    }

    async fn drain_all(spool: &Spool) -> Vec<String> {
        let mut got = Vec::new();
        spool
            .drain(|e| {
                got.push(String::from_utf8(e.body.to_vec()).unwrap());
                async { Ok::<(), String>(()) }
            })
            .await
            .unwrap();
        got
    }

    #[tokio::test]
    async fn appended_events_drain_in_order_once_also_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let appends: Vec<_> = (0..50)
            .map(|n| {
                let s = spool.clone();
                tokio::spawn(async move { s.append(&event(n)).await })
            })
            .collect();
        for a in appends {
            a.await.unwrap().unwrap();
        }
        assert_eq!(spool.stats().pending_events, 50);
        assert_eq!(inspect(dir.path()).unwrap(), spool.stats());
        // A delivery that fails leaves the record first in line.
        let mut calls = 0;
        let n = spool
            .drain(|_| {
                calls += 1;
                async move {
                    if calls > 10 {
                        Err("down")
                    } else {
                        Ok(())
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(spool.stats().pending_events, 40);
        drop(spool);
        // Reopened (a restart): the 40 left, nothing again.
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.stats().pending_events, 40);
        let got = drain_all(&spool).await;
        assert_eq!(got.len(), 40);
        let mut ns: Vec<u32> = got
            .iter()
            .map(|b| b[5..b.len() - 1].parse().unwrap())
            .collect();
        ns.sort_unstable();
        assert_eq!(ns.len(), 40);
        assert_eq!(spool.stats(), SpoolStats::default());
        assert!(drain_all(&spool).await.is_empty());
        assert_eq!(inspect(dir.path()).unwrap(), SpoolStats::default());
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_a_full_spool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&event(1)).await.unwrap();
        spool.append(&event(2)).await.unwrap();
        drop(spool);
        // A crash mid-write: half a frame at the end.
        let seg = segment_path(dir.path(), 1);
        let half = &encode(&event(3))[..20];
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(half)
            .unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.stats().pending_events, 2);
        spool.append(&event(4)).await.unwrap();
        let got = drain_all(&spool).await;
        assert_eq!(got, vec!["{\"n\":1}", "{\"n\":2}", "{\"n\":4}"]);

        let small = tempfile::tempdir().unwrap();
        let one = encode(&event(1)).len() as u64;
        let spool = Spool::open(small.path(), one * 2).unwrap();
        spool.append(&event(1)).await.unwrap();
        spool.append(&event(2)).await.unwrap();
        assert!(matches!(
            spool.append(&event(3)).await,
            Err(SpoolError::Full { .. })
        ));
        drain_all(&spool).await;
        spool.append(&event(3)).await.unwrap();
    }

    #[test]
    fn frames_round_trip_and_a_flipped_bit_is_not_an_event() {
        let e = event(7);
        let mut f = encode(&e);
        let back = decode(&f[8..]).unwrap();
        assert_eq!(back, e);
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(read_frame(&mut &f[..]).unwrap().is_none());
    }
}
