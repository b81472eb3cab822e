//! Shared harness of the integration test suite.
//!
//! Tests talk to the real Redis and Postgres. Each test gets its own stream
//! prefix, its own data directory and (when it asks) its own Postgres
//! database, so tests run in parallel without seeing each other. A missing
//! service fails the test with a message saying how to start it; nothing is
//! skipped silently.
//!
//! Service locations: `INLET_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and `INLET_TEST_DATABASE_URL` (an admin
//! connection, default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use inlet::audit::AuditRecord;
use inlet::config::Settings;
use inlet::queue::StreamEntry;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod cluster;
pub mod graph;
pub mod marketing;

/// The app secret every test gateway accepts first.
pub const SECRET: &str = "test-secret-0123456789";
/// A second accepted secret (rotation).
pub const SECRET_2: &str = "rotated-secret-abcdef";
/// The handshake token.
pub const VERIFY_TOKEN: &str = "verify-token-xyz";

/// Redis URL of the test environment.
pub fn redis_url() -> String {
    std::env::var("INLET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Admin Postgres URL of the test environment.
pub fn pg_admin_url() -> String {
    std::env::var("INLET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Panics with a clear message when Redis is not reachable.
pub async fn require_redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "this test needs Redis at {url} (set INLET_TEST_REDIS_URL): {e}. \
             Start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
        ),
        Err(_) => panic!("this test needs Redis at {url}: connection timed out"),
    }
}

/// A fresh Postgres database for one test, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    /// Connection URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Creates a uniquely named database (and prunes ones that earlier,
    /// crashed runs left behind for more than two hours).
    pub async fn create() -> TestDb {
        let admin = pg_admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => panic!(
                "this test needs Postgres at {admin} (set INLET_TEST_DATABASE_URL): {e}. \
                 Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            ),
        };
        let now = chrono::Utc::now().timestamp();
        let stale: Vec<(String,)> =
            sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'inlet_t_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for (name,) in stale {
            let ts = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok());
            if ts.is_some_and(|t| now - t > 7200) {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        let name = format!(
            "inlet_t_{now}_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin.clone());
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Drops the database (terminating connections).
    pub async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A port on which nothing listens (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Builder of test settings: defaults from `config/default.toml`, a temp data
/// directory, a unique stream prefix, known secrets, port 0.
pub struct TestConfig {
    /// Environment-style overrides (`INLET_*`).
    pub env: HashMap<String, String>,
    /// Data directory (kept alive by the guard).
    pub data_dir: tempfile::TempDir,
    /// Unique Redis key prefix.
    pub prefix: String,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// Defaults: Redis from the environment, no database URL (SQLite under
    /// the data dir), two secrets, the verify token, port 0.
    pub fn new() -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let prefix = format!("test:{}:", Uuid::new_v4().simple());
        let mut env = HashMap::new();
        env.insert("INLET_LISTEN".into(), "127.0.0.1:0".into());
        env.insert(
            "INLET_DATA_DIR".into(),
            data_dir.path().to_string_lossy().into_owned(),
        );
        env.insert("INLET_STREAM_PREFIX".into(), prefix.clone());
        env.insert("INLET_REDIS_URL".into(), redis_url());
        env.insert("INLET_APP_SECRET".into(), format!("{SECRET},{SECRET_2}"));
        env.insert("INLET_VERIFY_TOKEN".into(), VERIFY_TOKEN.into());
        env.insert("INLET_API_TOKEN".into(), "api-token".into());
        env.insert("INLET_WORKER__BLOCK_MS".into(), "200".into());
        // Tests wait for files to converge: keep the summary's limit short.
        env.insert("INLET_CACHE__SUMMARY_INTERVAL_MS".into(), "300".into());
        env.insert("INLET_WORKER__BACKOFF_BASE_MS".into(), "20".into());
        env.insert("INLET_REDIS__PROBE_INTERVAL_MS".into(), "200".into());
        env.insert("INLET_REDIS__TIMEOUT_MS".into(), "500".into());
        // Media downloads only where a test points Graph at the mock
        // (tests/media.rs): fixtures carry real-looking CDN URLs, and tests
        // never reach the internet.
        env.insert("INLET_MEDIA__ENABLED".into(), "false".into());
        // Lead fetches likewise (tests/leads.rs) for the leadgen fixture.
        env.insert("INLET_LEADS__ENABLED".into(), "false".into());
        // And whatever still calls the Graph API (a send, a sync) reaches a
        // closed loopback port unless the test points it at its mock.
        env.insert(
            "INLET_GRAPH__BASE_URL".into(),
            format!("http://127.0.0.1:{}", closed_port()),
        );
        // Every test worker gets its own metrics port.
        env.insert("INLET_WORKER__METRICS_LISTEN".into(), "127.0.0.1:0".into());
        Self {
            env,
            data_dir,
            prefix,
        }
    }

    /// Sets an override.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_string(), value.into());
        self
    }

    /// Validated settings.
    pub fn settings(&self) -> Settings {
        let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let mut settings =
            Settings::load_from(Some(&default), self.env.clone()).expect("test settings are valid");
        settings
            .prepare()
            .expect("the test data dir can be prepared");
        settings
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.data_dir.path()
    }
}

/// A gateway running in-process on a random port.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// Configuration it runs with.
    pub config: TestConfig,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// HTTP client.
    pub client: reqwest::Client,
    /// The running service.
    pub running: Option<inlet::service::RunningGateway>,
}

impl TestGateway {
    /// Starts a gateway with `config`.
    pub async fn start(config: TestConfig) -> TestGateway {
        inlet::telemetry::init_test_tracing();
        let shutdown = CancellationToken::new();
        let running = inlet::service::start_gateway(config.settings(), shutdown.clone())
            .await
            .expect("gateway starts");
        let addr = running.addr;
        TestGateway {
            base: format!("http://{addr}"),
            addr,
            config,
            shutdown,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            running: Some(running),
        }
    }

    /// POSTs `body` to `/webhooks/{source}` signed with `secret`.
    pub async fn post_signed(&self, source: &str, body: &[u8], secret: &str) -> reqwest::Response {
        let sig = inlet::signature::sign(body, secret.as_bytes());
        self.post(source, body, Some(&sig)).await
    }

    /// POSTs every fixture, signed, to its source and expects 200 for each.
    pub async fn post_all_fixtures(&self) {
        for (name, body) in fixtures() {
            let res = self.post_signed(source_of(&name), &body, SECRET).await;
            assert_eq!(res.status(), 200, "{name}");
        }
    }

    /// POSTs `bodies` to `/webhooks/whatsapp`, each signed, from `lanes`
    /// concurrent tasks (lane k sends bodies k, k + lanes, …), and expects
    /// 200 for each.
    pub async fn post_concurrently(&self, lanes: usize, bodies: Vec<Vec<u8>>) {
        let bodies = std::sync::Arc::new(bodies);
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let client = self.client.clone();
            let url = format!("{}/webhooks/whatsapp", self.base);
            let bodies = bodies.clone();
            tasks.spawn(async move {
                for body in bodies.iter().skip(lane).step_by(lanes) {
                    let sig = inlet::signature::sign(body, SECRET.as_bytes());
                    let res = client
                        .post(&url)
                        .header("x-hub-signature-256", sig)
                        .body(body.clone())
                        .send()
                        .await
                        .expect("request sent");
                    assert_eq!(res.status(), 200);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("a posting lane panicked");
        }
    }

    /// POSTs with an explicit (or no) signature header.
    pub async fn post(&self, source: &str, body: &[u8], sig: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/{source}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = sig {
            req = req.header("x-hub-signature-256", sig);
        }
        req.send().await.expect("request sent")
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent")
    }

    /// The store the gateway uses in direct mode.
    pub fn store(&self) -> inlet::store::Store {
        self.running.as_ref().expect("running").store.clone()
    }

    /// Every audit line written so far (all services sharing the data dir).
    pub fn audit(&self) -> Vec<AuditRecord> {
        inlet::audit::read_all(&self.config.dir().join("audit")).expect("audit readable")
    }

    /// Entries of a stream under this gateway's prefix.
    pub async fn stream(&self, name: &str) -> Vec<StreamEntry> {
        read_stream(&self.config.prefix, name).await
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = r.wait().await;
        }
    }

    /// Stops the gateway and hands back its configuration (the data
    /// directory lives on), for a restart.
    pub async fn stop_keeping_config(mut self) -> TestConfig {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = r.wait().await;
        }
        self.config
    }
}

/// Every entry of `{prefix}{name}`.
pub async fn read_stream(prefix: &str, name: &str) -> Vec<StreamEntry> {
    let queue = queue(prefix).await;
    queue.range(name, "-", 1_000_000).await.expect("XRANGE")
}

/// A queue client bound to `prefix`.
pub async fn queue(prefix: &str) -> inlet::queue::RedisQueue {
    require_redis().await;
    inlet::queue::RedisQueue::connect(&redis_url(), prefix, Duration::from_secs(2), 0)
        .await
        .expect("redis connect")
}

/// Deletes every key under `prefix`.
/// Takes up to `n` new entries of `stream` as consumer `consumer` of
/// `group` through the shared consumer protocol, as a worker would, and
/// returns the batch (drop it to leave the entries pending on that name, as
/// a crashed or wedged consumer does).
pub async fn take(
    queue: &inlet::queue::RedisQueue,
    stream: &str,
    group: &str,
    consumer: &str,
    n: usize,
) -> inlet::queue::Batch {
    let mut c = inlet::queue::GroupConsumer::connect(
        queue,
        inlet::queue::ConsumerConfig {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            count: n,
            block: Duration::ZERO,
            claim_idle: Duration::ZERO,
        },
    )
    .await
    .expect("consumer group");
    c.next_batch().await.expect("read entries")
}

pub async fn cleanup_prefix(prefix: &str) {
    let mut conn = require_redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// The fixtures shipped with the suite: `(file name, exact bytes)`.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir();
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// One fixture's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// `tests/fixtures/meta`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meta")
}

/// The webhook source a fixture is posted to, from its name prefix.
pub fn source_of(fixture: &str) -> &'static str {
    if fixture.starts_with("wa_") {
        "whatsapp"
    } else if fixture.starts_with("ig_") {
        "instagram"
    } else {
        "facebook"
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker running in-process.
pub struct TestWorker {
    /// Stops it.
    pub shutdown: CancellationToken,
    /// The running service.
    pub running: inlet::service::RunningWorker,
}

impl TestWorker {
    /// Starts a worker with the settings of `config`.
    pub async fn start(config: &TestConfig) -> TestWorker {
        Self::start_with(config.settings()).await
    }

    /// Starts a worker with explicit settings.
    pub async fn start_with(settings: Settings) -> TestWorker {
        inlet::telemetry::init_test_tracing();
        let shutdown = CancellationToken::new();
        let running = inlet::service::start_worker(settings, shutdown.clone())
            .await
            .expect("worker starts");
        TestWorker { shutdown, running }
    }

    /// The worker's store.
    pub fn store(&self) -> inlet::store::Store {
        self.running.store.clone()
    }

    /// Stops it, letting the current batch finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await;
    }
}

/// Waits until `store` holds `n` raw events.
pub async fn wait_raw_events(store: &inlet::store::Store, n: i64) {
    eventually(
        Duration::from_secs(30),
        &format!("{n} raw events stored"),
        || async {
            let c = store.counts().await.ok()?;
            (c.raw_events >= n).then_some(())
        },
    )
    .await;
}

/// What the fixtures README says each fixture normalizes to, for the items
/// stored as messages: (fixture, kind, direction, contact, message type,
/// text).
/// One row of [`MESSAGE_EXPECTATIONS`].
pub type Expectation = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// Expected stored messages per fixture.
pub const MESSAGE_EXPECTATIONS: &[Expectation] = &[
    (
        "wa_text.json",
        "message",
        "inbound",
        "15550001111",
        "text",
        Some("Hi, is the blue kettle still in stock?"),
    ),
    (
        "wa_image.json",
        "message",
        "inbound",
        "15550001111",
        "image",
        Some("This is the scratch on the lid"),
    ),
    (
        "wa_audio.json",
        "message",
        "inbound",
        "15550001111",
        "audio",
        None,
    ),
    (
        "wa_video.json",
        "message",
        "inbound",
        "15550001111",
        "video",
        Some("Unboxing clip"),
    ),
    (
        "wa_document.json",
        "message",
        "inbound",
        "15550001111",
        "document",
        Some("Invoice for order 4471"),
    ),
    (
        "wa_sticker.json",
        "message",
        "inbound",
        "15550001111",
        "sticker",
        None,
    ),
    (
        "wa_location.json",
        "message",
        "inbound",
        "15550001111",
        "location",
        None,
    ),
    (
        "wa_contacts.json",
        "message",
        "inbound",
        "15550001111",
        "contacts",
        None,
    ),
    (
        "wa_interactive_button_reply.json",
        "message",
        "inbound",
        "15550001111",
        "interactive.button_reply",
        Some("Yes, confirm"),
    ),
    (
        "wa_interactive_list_reply.json",
        "message",
        "inbound",
        "15550001111",
        "interactive.list_reply",
        Some("Tuesday 10:00"),
    ),
    (
        "wa_button.json",
        "message",
        "inbound",
        "15550001111",
        "button",
        Some("Stop promotions"),
    ),
    (
        "wa_reaction.json",
        "reaction",
        "inbound",
        "15550001111",
        "reaction",
        Some("👍"),
    ),
    (
        "wa_order.json",
        "message",
        "inbound",
        "15550001111",
        "order",
        Some("Please gift wrap"),
    ),
    (
        "wa_system.json",
        "system",
        "inbound",
        "15550001111",
        "system.user_changed_number",
        Some("User Ana Testerman changed from 15550001111 to 15550001112"),
    ),
    (
        "wa_unsupported.json",
        "message",
        "inbound",
        "15550001111",
        "unsupported",
        None,
    ),
    (
        "wa_text_with_referral.json",
        "message",
        "inbound",
        "15550001111",
        "text",
        Some("Hi! I saw your ad about the winter sale"),
    ),
    (
        "wa_bsuid_phone_only.json",
        "message",
        "inbound",
        "15550005555",
        "text",
        Some("Hello, is the shop open on Sunday?"),
    ),
    (
        "wa_bsuid_phone_and_user_id.json",
        "message",
        "inbound",
        "15550005555",
        "text",
        Some("And do you have gift cards?"),
    ),
    (
        "wa_bsuid_user_id_only.json",
        "message",
        "inbound",
        "15550005555",
        "text",
        Some("I hid my number, it is still me"),
    ),
    (
        "wa_bsuid_user_changed_user_id.json",
        "system",
        "inbound",
        "15550005555",
        "system.user_changed_user_id",
        Some("User Elif Sample changed their business-scoped user ID"),
    ),
    (
        "wa_smb_echo.json",
        "message",
        "outbound",
        "15550005555",
        "text",
        Some("Welcome! We open at 10 on Sundays."),
    ),
    (
        "fb_message_text.json",
        "message",
        "inbound",
        "4000000000000004",
        "text",
        Some("Hello! What are your opening hours?"),
    ),
    (
        "fb_message_attachment.json",
        "message",
        "inbound",
        "4000000000000004",
        "attachments",
        None,
    ),
    (
        "fb_postback.json",
        "postback",
        "inbound",
        "4000000000000004",
        "postback",
        Some("Get Started"),
    ),
    (
        "fb_reaction.json",
        "reaction",
        "inbound",
        "4000000000000004",
        "reaction",
        Some("❤️"),
    ),
    (
        "fb_echo.json",
        "message",
        "outbound",
        "4000000000000004",
        "text",
        Some("We are open 9am-6pm, Monday to Saturday."),
    ),
    (
        "fb_referral.json",
        "referral",
        "inbound",
        "4000000000000004",
        "referral",
        None,
    ),
    (
        "ig_message_text.json",
        "message",
        "inbound",
        "6000000000000007",
        "text",
        Some("hey! do you ship to Portugal?"),
    ),
    (
        "ig_message_attachment.json",
        "message",
        "inbound",
        "6000000000000007",
        "attachments",
        None,
    ),
    (
        "ig_reaction.json",
        "reaction",
        "inbound",
        "6000000000000007",
        "reaction",
        Some("❤️"),
    ),
    (
        "wa_history.json",
        "message",
        "inbound",
        "15550006666",
        "text",
        Some("Do you deliver on Saturdays?"),
    ),
    (
        "wa_group_message.json",
        "message",
        "inbound",
        "15550001111",
        "text",
        Some("Has anyone descaled the blue kettle?"),
    ),
    (
        "ig_story_reply.json",
        "message",
        "inbound",
        "6000000000000007",
        "text",
        Some("love this look 🔥"),
    ),
];

/// Checks that `store` holds every fixture as the fixtures README describes
/// (after every fixture was ingested once).
pub async fn assert_fixture_rows(store: &inlet::store::Store) {
    use inlet::model::NormalizedItem;
    for (name, kind, direction, contact, mtype, text) in MESSAGE_EXPECTATIONS {
        let items = inlet::normalize::normalize(&fixture(name)).expect(name);
        let Some(NormalizedItem::Message(m)) = items.first() else {
            panic!("{name}: first item is not a message");
        };
        let row = store
            .message_by_provider_id(&m.provider_message_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: message stored"));
        assert_eq!(row.kind, *kind, "{name}: kind");
        assert_eq!(row.direction, *direction, "{name}: direction");
        assert_eq!(row.contact_external_id, *contact, "{name}: contact");
        assert_eq!(row.message_type, *mtype, "{name}: type");
        assert_eq!(row.text.as_deref(), *text, "{name}: text");
    }
    let ana = store
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ana.contact_name.as_deref(), Some("Ana Testerman"));
    let image = store
        .message_by_provider_id(
            &match inlet::normalize::normalize(&fixture("wa_image.json"))
                .unwrap()
                .remove(0)
            {
                NormalizedItem::Message(m) => m.provider_message_id,
                _ => unreachable!(),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(image.media[0]["media_id"], "910000000000002");
    assert_eq!(image.media[0]["mime_type"], "image/jpeg");

    // Statuses: sent, delivered, read of the same id → read; failed with its code.
    let sent_id = "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMTAA";
    let cur = store
        .current_status("default", sent_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.status, "read");
    let failed_id = "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMTEA";
    let cur = store
        .current_status("default", failed_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.status, "failed");
    assert_eq!(cur.errors[0]["code"], 131047);

    // wa_batch_multi: 3 messages (Ana twice, Bruno once) and 3 statuses.
    for id in [
        "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAxOAA=",
        "wamid.HBgLMTU1NTAwMDIyMjIVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAxOQA=",
        "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAyMAA=",
    ] {
        assert!(
            store.message_by_provider_id(id).await.unwrap().is_some(),
            "{id}"
        );
    }
    let bruno = store
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDIyMjIVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAxOQA=")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bruno.contact_name.as_deref(), Some("Bruno Fakeman"));
    assert_eq!(
        bruno.text.as_deref(),
        Some("Hello, I need help with my return")
    );

    // One person (Elif) first by phone, then phone and BSUID, then BSUID
    // only: one contact, one conversation; the read by BSUID is stored.
    let mut elif = Vec::new();
    for name in [
        "wa_bsuid_phone_only.json",
        "wa_bsuid_phone_and_user_id.json",
        "wa_bsuid_user_id_only.json",
    ] {
        let Some(NormalizedItem::Message(m)) = inlet::normalize::normalize(&fixture(name))
            .unwrap()
            .into_iter()
            .next()
        else {
            panic!("{name}: a message");
        };
        elif.push(
            store
                .message_by_provider_id(&m.provider_message_id)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        elif.windows(2)
            .all(|w| w[0].conversation_id == w[1].conversation_id),
        "one conversation for one person"
    );
    let read = store
        .current_status(
            "default",
            "wamid.HBgLMTU1NTAwMDU1NTUVAgARGBJCMEIwMDAwMDAwMDAwMDAwNTQA",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.status, "read");

    assert_identity_fixture_rows(store).await;

    let counts = store.counts().await.unwrap();
    let files = fixtures().len() as i64;
    assert_eq!(counts.raw_events, files, "one raw event per delivery");
    // One first message per expectation + 3 more in the batch, 2 more in the
    // history, 1 more in the group.
    assert_eq!(
        counts.messages,
        MESSAGE_EXPECTATIONS.len() as i64 + 3 + 2 + 1
    );
    // wa sent/delivered/read/failed (4) + batch (3) + fb delivery (2 mids) + fb read (1)
    // + the read by BSUID (1) + the unknown `deleted` (1) + 2 to the group.
    assert_eq!(counts.statuses, 14);
    // leadgen + feed comment + history declined + 2 address-book entries +
    // user_id_update + business username + user preference + group
    // lifecycle, 2 participants changes, settings, status.
    assert_eq!(counts.page_changes, 13);
    assert_eq!(counts.dead_letters, 0);
}

/// The rows of the WhatsApp 2026 fixtures (issue 15): history, address
/// book, BSUID change, groups, unknown statuses.
pub async fn assert_identity_fixture_rows(store: &inlet::store::Store) {
    use inlet::model::NormalizedItem;
    let first_id = |name: &str| match inlet::normalize::normalize(&fixture(name))
        .unwrap()
        .remove(0)
    {
        NormalizedItem::Message(m) => m.provider_message_id,
        other => panic!("{name}: {other:?}"),
    };
    // History: imported with the original time, marked, in Gita's
    // conversation, named from the address book.
    let history = store
        .message_by_provider_id(&first_id("wa_history.json"))
        .await
        .unwrap()
        .expect("history imported");
    assert_eq!(history.details["history"], true);
    assert_eq!(history.sent_at.timestamp(), 1_795_161_600);
    assert_eq!(history.contact_name.as_deref(), Some("Gita Example"));
    let placeholder = store
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDY2NjYVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDA2MwA=")
        .await
        .unwrap()
        .expect("placeholder stored");
    assert_eq!(placeholder.message_type, "unsupported");
    assert_eq!(placeholder.details["type"], "media_placeholder");

    // Group: both messages in one conversation (not Ana's 1:1), each by
    // its sender.
    let ana_direct = store
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=")
        .await
        .unwrap()
        .unwrap();
    let in_group = store
        .message_by_provider_id(&first_id("wa_group_message.json"))
        .await
        .unwrap()
        .unwrap();
    let bruno_in_group = store
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDIyMjIVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDA3MgA=")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(in_group.conversation_id, ana_direct.conversation_id);
    assert_eq!(in_group.conversation_id, bruno_in_group.conversation_id);
    assert_eq!(bruno_in_group.contact_external_id, "15550002222");
    let page = store
        .read_model()
        .conversation_page(in_group.conversation_id, 10)
        .await
        .unwrap()
        .expect("group conversation");
    let group = page.conversation.group.expect("a group conversation");
    assert_eq!(group.subject.as_deref(), Some("Kettle owners & friends"));
    let mut members: Vec<&str> = group
        .participants
        .iter()
        .map(|p| p.external_id.as_str())
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        ["15550001111", "15550003333"],
        "Bruno left, Chidi joined"
    );
    let contacts = store.read_model().contacts(1000).await.unwrap();
    assert!(
        !contacts.iter().any(|c| c.external_id == group.id),
        "a group is not a contact"
    );

    // Statuses to the group, per message; the unknown `deleted` is kept
    // but never regresses `read`.
    for (id, status) in [
        (
            "wamid.HBgLMTU1NTAwMDk5OTkVAgARGBJCMEIwMDAwMDAwMDAwMDAwNzMA",
            "delivered",
        ),
        (
            "wamid.HBgLMTU1NTAwMDk5OTkVAgARGBJCMEIwMDAwMDAwMDAwMDAwNzQA",
            "read",
        ),
    ] {
        let cur = store.current_status("default", id).await.unwrap().unwrap();
        assert_eq!(cur.status, status);
    }
    let elif_contacts: Vec<_> = contacts
        .iter()
        .filter(|c| c.external_id == "15550005555")
        .collect();
    assert_eq!(elif_contacts.len(), 1);
    assert_eq!(elif_contacts[0].display, "@elif.sample");
    assert!(
        contacts.iter().all(|c| !c.external_id.starts_with("US.")),
        "every BSUID (old and new) is linked to its person's contact"
    );
}

/// A TCP forwarder on a local port that a test can switch off (refusing
/// connections and cutting open ones) and on again: a service outage on
/// demand, for Postgres or Redis.
pub struct Flaky {
    /// The local port clients use.
    pub port: u16,
    upstream: String,
    gate: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Flaky {
    /// Forwards a new local port to `upstream` (`host:port`), switched on.
    pub async fn start(upstream: &str) -> Flaky {
        let (gate, _) = tokio::sync::watch::channel(true);
        let flaky = Flaky {
            port: closed_port(),
            upstream: upstream.to_string(),
            gate: std::sync::Arc::new(gate),
            task: std::sync::Mutex::new(None),
        };
        flaky.up().await;
        flaky
    }

    /// Starts accepting and forwarding.
    pub async fn up(&self) {
        self.gate.send_replace(true);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let upstream = self.upstream.clone();
        let gate = self.gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let mut closed = gate.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = closed.wait_for(|on| !on) => {}
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops accepting and cuts every forwarded connection.
    pub async fn down(&self) {
        self.gate.send_replace(false);
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Rewrites `url` (`scheme://user@host:port/db`) to go through this
    /// forwarder.
    pub fn route(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("url with scheme");
        let (auth_host, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (auth, _) = auth_host
            .rsplit_once('@')
            .map_or(("", auth_host), |(a, h)| (a, h));
        let auth = if auth.is_empty() {
            String::new()
        } else {
            format!("{auth}@")
        };
        format!("{scheme}://{auth}127.0.0.1:{}/{path}", self.port)
    }
}

/// `host:port` of a URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_string()
}

/// Runs an `inlet` CLI command in-process with `settings`; returns exit
/// success and the output.
pub async fn cli(settings: Settings, args: &[&str]) -> (bool, String) {
    use clap::Parser;
    let mut argv = vec!["inlet"];
    argv.extend_from_slice(args);
    let parsed = inlet_cli::Cli::try_parse_from(argv).expect("valid CLI arguments");
    let mut out = Vec::new();
    let ok = match inlet_cli::run_with(parsed, settings, &mut out).await {
        Ok(code) => code == std::process::ExitCode::SUCCESS,
        Err(e) => {
            out.extend_from_slice(format!("error: {e:#}").as_bytes());
            false
        }
    };
    (ok, String::from_utf8_lossy(&out).into_owned())
}

/// Test-only conveniences on settings.
pub trait SettingsExt {
    /// The same settings with another worker consumer name.
    fn clone_with_consumer(self, name: &str) -> Settings;
}

impl SettingsExt for Settings {
    fn clone_with_consumer(mut self, name: &str) -> Settings {
        self.worker.consumer_name = Some(name.to_string());
        self
    }
}

/// Set in the environment of a [`ChildWorker`] process.
pub const CHILD_WORKER_ENV: &str = "INLET_TEST_CHILD_WORKER";

/// A worker in a process of its own, so a test can SIGKILL it: the test
/// binary itself, re-run with only its child entry (an `#[ignore]`d test
/// that calls [`run_child_worker`]) and the settings of a [`TestConfig`] as
/// `INLET_*` variables.
pub struct ChildWorker {
    child: tokio::process::Child,
}

impl ChildWorker {
    /// Starts the test binary's `entry` test as a worker process with the
    /// settings of `config` plus `extra`.
    pub fn spawn(config: &TestConfig, entry: &str, extra: &[(&str, &str)]) -> ChildWorker {
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = tokio::process::Command::new(exe)
            .args([
                entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&config.env)
            .envs(extra.iter().copied())
            .env(CHILD_WORKER_ENV, "1")
            .env("INLET_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker process starts");
        ChildWorker { child }
    }

    /// SIGTERM: the service's graceful shutdown (in-flight work finishes).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM sent");
    }

    /// Waits for the process to end; whether it exited successfully.
    pub async fn wait(mut self) -> bool {
        self.child
            .wait()
            .await
            .expect("the process ended")
            .success()
    }

    /// SIGKILL: no shutdown, no batch finished, leases left behind.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        let status = self.child.wait().await.expect("the worker process ended");
        assert!(!status.success(), "the worker was killed, not stopped");
    }
}

/// The body of a child entry test: runs a gateway on the settings in the
/// environment until SIGTERM (graceful) or SIGKILL. Does nothing outside a
/// [`ChildWorker`] process.
pub async fn run_child_gateway() {
    if std::env::var_os(CHILD_WORKER_ENV).is_none() {
        return;
    }
    inlet::telemetry::init_test_tracing();
    let mut settings = Settings::load().expect("the child gateway's settings are valid");
    settings
        .prepare()
        .expect("the child gateway's data dir can be prepared");
    let shutdown = inlet::telemetry::shutdown_signal();
    let running = inlet::service::start_gateway(settings, shutdown)
        .await
        .expect("the child gateway starts");
    let _ = running.wait().await;
}

/// The body of a child entry test: runs a worker on the settings in the
/// environment until the process is killed or signalled. Does nothing
/// outside a [`ChildWorker`] process.
pub async fn run_child_worker() {
    if std::env::var_os(CHILD_WORKER_ENV).is_none() {
        return;
    }
    inlet::telemetry::init_test_tracing();
    let mut settings = Settings::load().expect("the child worker's settings are valid");
    settings
        .prepare()
        .expect("the child worker's data dir can be prepared");
    let shutdown = inlet::telemetry::shutdown_signal();
    let running = inlet::service::start_worker(settings, shutdown)
        .await
        .expect("the child worker starts");
    running.wait().await;
}

/// A `redis-server` on a loopback `port`, persisting to AOF with
/// `appendfsync always` in `dir` (so a SIGKILLed one restarted there has
/// every write it acknowledged), output discarded, killed with its handle.
/// Add arguments (cluster mode) before spawning.
pub fn redis_server(port: u16, dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A redis-server of the test's own (so it can be killed), persisting to
/// AOF with `appendfsync always` (the compose setting) in a temp directory,
/// restarted on the same port.
pub struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    /// Starts one on a free loopback port and waits until it answers.
    pub async fn start() -> OwnRedis {
        let mut r = OwnRedis {
            port: closed_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.up().await;
        r
    }

    /// (Re)starts it on its port and directory (its AOF is read back).
    pub async fn up(&mut self) {
        let child = redis_server(self.port, self.dir.path())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let url = self.url();
        eventually(
            Duration::from_secs(20),
            "own redis-server answers",
            || async {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            },
        )
        .await;
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
