//! `inlet-bench media`: peak memory of one large inbound media download.
//!
//! Starts a mock Graph API on loopback that describes one video
//! (`GET /{version}/{media-id}`: url, sha256, file_size) and serves it
//! (`GET /download/{media-id}`) in 64 KiB chunks generated on the fly (the
//! bench holds no copy either), starts an `inlet-gateway` binary in direct
//! mode (no Redis, SQLite in a temp directory) pointed at it, reads the
//! gateway's peak resident set (`VmHWM` of `/proc/{pid}/status`) once it is
//! up, posts a signed WhatsApp video webhook whose digest matches, waits until
//! `GET /api/media/1` serves the stored file, and reads `VmHWM` again. The
//! difference is what downloading, hashing and storing the file cost in
//! memory at the peak: bounded by the chunk size and the HTTP buffers,
//! whatever the file's size.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use sha2::Digest as _;
use tokio::process::Command;
use tokio::time::{sleep, Instant};

const CHUNK: usize = 64 * 1024;
const MEDIA_ID: &str = "910000000000004";
const WAMID: &str = "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwNAA=";

/// What `inlet-bench media` runs.
pub struct MediaConfig {
    pub gateway_bin: PathBuf,
    pub size: usize,
    pub fixture: PathBuf,
    pub timeout: Duration,
}

/// The measurement.
pub struct MediaReport {
    pub bytes: usize,
    pub hwm_before_kib: u64,
    pub hwm_after_kib: u64,
    pub wall: Duration,
}

impl MediaReport {
    pub fn to_text(&self) -> String {
        format!(
            "inlet-bench media: {:.1} MiB stored in {:.2} s ({:.0} MiB/s); gateway peak RSS {:.1} MiB before, {:.1} MiB after (+{:.1} MiB)",
            self.bytes as f64 / 1048576.0,
            self.wall.as_secs_f64(),
            self.bytes as f64 / 1048576.0 / self.wall.as_secs_f64().max(1e-9),
            self.hwm_before_kib as f64 / 1024.0,
            self.hwm_after_kib as f64 / 1024.0,
            self.hwm_after_kib.saturating_sub(self.hwm_before_kib) as f64 / 1024.0,
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "bytes": self.bytes,
            "seconds": self.wall.as_secs_f64(),
            "peak_rss_before_kib": self.hwm_before_kib,
            "peak_rss_after_kib": self.hwm_after_kib,
            "peak_rss_growth_kib": self.hwm_after_kib.saturating_sub(self.hwm_before_kib),
        })
        .to_string()
    }
}

/// Chunk `i` of the generated file (deterministic, incompressible).
fn chunk(i: usize, size: usize) -> bytes::Bytes {
    let len = CHUNK.min(size - i * CHUNK);
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    bytes::Bytes::from(out)
}

struct Mock {
    size: usize,
    sha_hex: String,
    base: String,
}

async fn info(State(m): State<Arc<Mock>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "messaging_product": "whatsapp",
        "url": format!("{}/download/{MEDIA_ID}", m.base),
        "mime_type": "video/mp4",
        "sha256": m.sha_hex,
        "file_size": m.size,
        "id": MEDIA_ID,
    }))
}

async fn download(State(m): State<Arc<Mock>>, Path(_id): Path<String>) -> Response {
    let size = m.size;
    let chunks = size.div_ceil(CHUNK);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |i| Ok::<_, std::io::Error>(chunk(i, size))),
    );
    Response::builder()
        .header("content-type", "video/mp4")
        .header("content-length", size)
        .body(Body::from_stream(stream))
        .expect("response")
}

/// Peak resident set of a process, KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs one measurement.
pub async fn run(cfg: &MediaConfig) -> anyhow::Result<MediaReport> {
    let mut hasher = sha2::Sha256::new();
    for i in 0..cfg.size.div_ceil(CHUNK) {
        hasher.update(chunk(i, cfg.size));
    }
    let digest = hasher.finalize();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let mock = Arc::new(Mock {
        size: cfg.size,
        sha_hex: digest.iter().map(|b| format!("{b:02x}")).collect(),
        base: format!("http://{addr}"),
    });
    let app = axum::Router::new()
        .route("/download/{id}", get(download))
        .route("/{version}/{id}", get(info))
        .with_state(mock);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let data_dir = std::env::temp_dir().join(format!("inlet-bench-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(&cfg.gateway_bin)
        .env("INLET_LISTEN", format!("127.0.0.1:{port}"))
        .env("INLET_REDIS_URL", "")
        .env("INLET_DATA_DIR", &data_dir)
        .env("INLET_APP_SECRET", "bench-secret")
        .env("INLET_API_TOKEN", "bench-token")
        .env("INLET_GRAPH__BASE_URL", format!("http://{addr}"))
        .env("INLET_GRAPH__ACCESS_TOKEN", "bench-graph-token")
        .env("INLET_MEDIA__MAX_BYTES__VIDEO", (cfg.size + 1).to_string())
        .env("INLET_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", cfg.gateway_bin.display()))?;
    let pid = child.id().context("gateway pid")?;
    let client = reqwest::Client::new();
    let up = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if up.elapsed() > Duration::from_secs(60) {
            bail!("inlet-gateway did not become ready within 60 s");
        }
        sleep(Duration::from_millis(50)).await;
    }
    // Settle after start (migrations, cache rebuild) before the baseline.
    sleep(Duration::from_secs(1)).await;
    let before = peak_rss_kib(pid)?;

    let text = std::fs::read_to_string(&cfg.fixture)
        .with_context(|| format!("reading {}", cfg.fixture.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    let body = text.replace("aW52ZW50ZWQtc2hhMjU2LWRpZ2VzdC0wMDA0LXh4eHg=", &b64);
    if body == text || !body.contains(WAMID) {
        bail!("{} is not the wa_video.json fixture", cfg.fixture.display());
    }
    let sig = inlet::signature::sign(body.as_bytes(), b"bench-secret");
    let started = Instant::now();
    let res = client
        .post(format!("{base}/webhooks/whatsapp"))
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("webhook answered {}", res.status());
    }
    loop {
        let r = client
            .head(format!("{base}/api/media/1"))
            .bearer_auth("bench-token")
            .send()
            .await?;
        if r.status().is_success() {
            let len: Option<usize> = r
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            if len != Some(cfg.size) {
                bail!("stored {len:?} bytes, expected {}", cfg.size);
            }
            break;
        }
        if started.elapsed() > cfg.timeout {
            bail!("the video was not stored within {:?}", cfg.timeout);
        }
        sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let after = peak_rss_kib(pid)?;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(MediaReport {
        bytes: cfg.size,
        hwm_before_kib: before,
        hwm_after_kib: after,
        wall,
    })
}
