//! Configuration: the built-in defaults (`config/default.toml`, compiled in),
//! then the file named by `INLET_CONFIG`,
//! then `INLET_*` environment variables, validated once at startup.
//!
//! Top-level keys map to `INLET_<KEY>` (`INLET_REDIS_URL`), nested ones use a
//! double underscore (`INLET_WORKER__BATCH_SIZE`). Secrets are wrapped in
//! [`SecretString`] so they never reach a log line. Every validation error
//! names the key and says what is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::envelope::Source;
use crate::signature::SigningKey;

mod outbound;
pub use outbound::{GraphSettings, OutboundSettings, TokenSource, UnknownPolicy};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The files or environment could not be read or parsed.
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is present but wrong.
    #[error("configuration key `{key}`: {problem}")]
    Invalid {
        /// Key as written in the TOML file (env: `INLET_` + upper case).
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// Fully validated settings shared (behind an `Arc`) by every service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Gateway listen address (`INLET_LISTEN`).
    pub listen: SocketAddr,
    /// Redis URL; `None` means no Redis (direct mode) (`INLET_REDIS_URL`).
    pub redis_url: Option<String>,
    /// `postgres://…` or `sqlite://…`; defaults to a SQLite file under the
    /// data directory (`INLET_DATABASE_URL`).
    pub database_url: String,
    /// Directory for audit logs, cache files and the embedded database.
    pub data_dir: PathBuf,
    /// Prefix of every Redis key (`INLET_STREAM_PREFIX`).
    pub stream_prefix: String,
    /// Bearer token protecting `/api/*` (`INLET_API_TOKEN`).
    pub api_token: Option<SecretString>,
    /// Meta apps: secrets, verify token and tenant of each.
    pub apps: Vec<AppSettings>,
    /// Whether the default app's secret was generated for local use.
    pub generated_secret: Option<PathBuf>,
    /// HTTP limits and proxies.
    pub http: HttpSettings,
    /// Redis client behaviour.
    pub redis: RedisSettings,
    /// Worker behaviour.
    pub worker: WorkerSettings,
    /// Audit log behaviour.
    pub audit: AuditSettings,
    /// Cache and analytics behaviour.
    pub cache: CacheSettings,
    /// Connections in the database pool.
    pub database_max_connections: u32,
    /// Days `raw_events` are kept for replay (0 = forever).
    pub raw_events_retention_days: u32,
    /// Days handler idempotency records are kept (0 = forever).
    pub processed_events_retention_days: u32,
    /// Event bus behaviour.
    pub events: EventSettings,
    /// `[graph]`: the Graph API endpoint and the default app's token.
    pub graph: GraphSettings,
    /// `[outbound]`: the sender.
    pub outbound: OutboundSettings,
    /// `[drafts]`: AI drafts waiting for approval.
    pub drafts: DraftSettings,
}

/// AI drafts (`[drafts]`).
#[derive(Debug, Clone)]
pub struct DraftSettings {
    /// Open (pending or stale) drafts nobody reviewed within this long
    /// become `expired`.
    pub expire_after: Duration,
}

/// Event bus behaviour (`[events]`).
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Which write events are produced.
    pub filter: crate::events::EventFilter,
    /// Longest a handler may take per event.
    pub handler_timeout: Duration,
    /// Attempts per handler and event before it is recorded as failed.
    pub handler_max_attempts: u32,
    /// First retry delay of a handler (doubles each attempt).
    pub handler_backoff: Duration,
    /// Delays between outgoing-webhook attempts (its length + 1 attempts).
    pub webhook_retry_schedule: Vec<Duration>,
    /// Consecutive failed events after which a subscription is disabled.
    pub webhook_disable_after: u32,
    /// `GET /api/events/stream`: how often the event log is read for new
    /// rows.
    pub stream_poll: Duration,
    /// Interval of the stream's heartbeat comment lines.
    pub stream_heartbeat: Duration,
    /// Events that may wait for one stream client.
    pub stream_buffer: usize,
    /// A stream client that takes none of its waiting events for this long
    /// is disconnected (it resumes with `Last-Event-ID`).
    pub stream_stall: Duration,
}

/// One Meta app (one `X-Hub-Signature-256` secret set) and its tenant.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Tenant every event signed by this app belongs to.
    pub tenant: String,
    /// Accepted secrets (several during rotation).
    pub secrets: Vec<SecretString>,
    /// Token expected in the GET handshake.
    pub verify_token: Option<SecretString>,
    /// Sources this app may post to; empty means all.
    pub sources: Vec<Source>,
    /// Graph access token this app sends with (`access_token` /
    /// `access_token_file`; the default app: `graph.access_token`).
    pub access_token: Option<TokenSource>,
    /// Phone number ids / Page ids / Instagram account ids this app sends
    /// from (`senders`); the default app sends for any other sender.
    pub senders: Vec<String>,
}

impl AppSettings {
    /// Prepared HMAC keys, one per secret.
    pub fn signing_keys(&self) -> Vec<SigningKey> {
        self.secrets
            .iter()
            .map(|s| SigningKey::new(s.expose_secret().as_bytes()))
            .collect()
    }
}

/// HTTP limits.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest accepted webhook body; larger → 413.
    pub max_body_bytes: usize,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Largest accepted total size of request headers; larger → 431.
    pub max_header_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// Redis client behaviour.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Connect timeout and per-command response timeout.
    pub timeout: Duration,
    /// How often the gateway probes Redis while in direct mode.
    pub probe_interval: Duration,
    /// Approximate cap on derived streams (normalized, cache jobs) so they
    /// cannot grow without bound. The raw stream and the DLQ are never capped.
    pub derived_stream_maxlen: usize,
}

/// Worker behaviour.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Entries per `XREADGROUP`.
    pub batch_size: usize,
    /// Consumer loops in one worker process, each with a batch in flight, so
    /// one batch is read and normalized while another commits.
    pub concurrency: usize,
    /// How long one `XREADGROUP` blocks waiting for entries.
    pub block: Duration,
    /// Pending entries idle this long are reclaimed from dead consumers.
    pub claim_idle: Duration,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Multiplier between retry delays.
    pub backoff_factor: f64,
    /// Consumer name; defaults to host name + process id.
    pub consumer_name: Option<String>,
    /// Apply migrations when the worker starts.
    pub migrate_on_start: bool,
    /// Address of the worker's `/metrics` + `/healthz` listener; `None` =
    /// no listener (and no stream sampler in the worker).
    pub metrics_listen: Option<SocketAddr>,
}

/// Audit log behaviour.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Files older than this many days are removed by the worker (0 = keep).
    pub retention_days: u32,
}

/// Cache and analytics behaviour.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Conversations kept in `conversations.json`.
    pub conversations_limit: usize,
    /// Messages kept per `conversations/{id}.json`.
    pub messages_limit: usize,
    /// Window in which cache jobs for the same key are coalesced.
    pub coalesce_window: Duration,
    /// A cache file older than this is served and refreshed in background.
    pub ttl: Duration,
    /// Interval of the full rebuild (0 = never).
    pub rebuild_interval: Duration,
    /// Least time between two rewrites of `analytics/summary.json` by the
    /// cache-sync consumers (its queries scan the last 30 days, so during a
    /// backlog it is not recomputed every coalescing window); 0 = no limit.
    pub summary_interval: Duration,
}

/// `config/default.toml`, compiled in: the first configuration layer. The
/// file in the repository stays the documented reference of every key.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

impl Settings {
    /// The Redis key for a stream or set, with the configured prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.stream_prefix, name)
    }

    /// Path of the audit directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }

    /// Path of the cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// The app that sends for `sender` (a phone number id or Page id): the
    /// one listing it in `senders`, else the first app without a `senders`
    /// list that has a token, else the default app.
    pub fn sending_app(&self, sender: &str) -> Option<&AppSettings> {
        self.apps
            .iter()
            .find(|a| a.senders.iter().any(|s| s == sender))
            .or_else(|| {
                self.apps
                    .iter()
                    .find(|a| a.senders.is_empty() && a.access_token.is_some())
            })
            .or_else(|| self.apps.first())
    }

    /// Whether the store is Postgres.
    pub fn uses_postgres(&self) -> bool {
        self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://")
    }

    /// Loads settings from the built-in defaults ([`DEFAULT_TOML`], compiled
    /// in, so a binary starts from any directory), the file in
    /// `INLET_CONFIG`, and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(None, env)
    }

    /// Loads settings from the built-in defaults, then `default_file` when
    /// given (a layer over them), then `INLET_CONFIG` and `env`: what
    /// [`Settings::load`] does, without touching the process environment
    /// (tests build their settings this way).
    pub fn load_from(
        default_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("INLET_"))
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = default_file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        if let Some(path) = env.get("INLET_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let env_source = config::Environment::with_prefix("INLET")
            .prefix_separator("_")
            .separator("__")
            .source(Some(
                env.into_iter()
                    .filter(|(k, _)| k != "INLET_CONFIG" && k != "INLET_LOG")
                    .collect(),
            ));
        let raw: RawSettings = builder.add_source(env_source).build()?.try_deserialize()?;
        raw.validate()
    }
}

/// A list given either as a TOML array or as a comma-separated string (the
/// form environment variables use).
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum StringList {
    #[default]
    Empty,
    One(String),
    Many(Vec<String>),
}

impl StringList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringList::Empty => Vec::new(),
            StringList::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            StringList::Many(v) => v
                .into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawSettings {
    listen: String,
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default)]
    database_url: Option<String>,
    data_dir: PathBuf,
    stream_prefix: String,
    #[serde(default)]
    app_secret: StringList,
    #[serde(default)]
    app_secret_file: Option<PathBuf>,
    #[serde(default)]
    verify_token: Option<String>,
    #[serde(default)]
    api_token: Option<String>,
    #[serde(default = "default_tenant")]
    tenant: String,
    #[serde(default)]
    apps: Vec<RawApp>,
    http: RawHttp,
    redis: RawRedis,
    worker: RawWorker,
    audit: RawAudit,
    cache: RawCache,
    database: RawDatabase,
    events: RawEvents,
    graph: outbound::RawGraph,
    outbound: outbound::RawOutbound,
    drafts: RawDrafts,
}

#[derive(Debug, Deserialize)]
struct RawDrafts {
    expire_after_ms: u64,
}

#[derive(Debug, Deserialize)]
struct RawEvents {
    enabled: bool,
    #[serde(default)]
    disabled_entities: StringList,
    handler_timeout_ms: u64,
    handler_max_attempts: u32,
    handler_backoff_ms: u64,
    #[serde(default)]
    webhook_retry_schedule_ms: StringList,
    webhook_disable_after: u32,
    stream_poll_ms: u64,
    stream_heartbeat_ms: u64,
    stream_buffer: usize,
    stream_stall_ms: u64,
}

#[derive(Debug, Deserialize)]
struct RawDatabase {
    max_connections: u32,
    raw_events_retention_days: u32,
    processed_events_retention_days: u32,
}

fn default_tenant() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
struct RawApp {
    tenant: String,
    #[serde(default)]
    secrets: StringList,
    #[serde(default)]
    secrets_file: Option<PathBuf>,
    #[serde(default)]
    verify_token: Option<String>,
    #[serde(default)]
    sources: StringList,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    access_token_file: Option<PathBuf>,
    #[serde(default)]
    senders: StringList,
}

#[derive(Debug, Deserialize)]
struct RawHttp {
    max_body_bytes: usize,
    request_timeout_ms: u64,
    max_header_bytes: usize,
    #[serde(default)]
    trusted_proxies: StringList,
}

#[derive(Debug, Deserialize)]
struct RawRedis {
    timeout_ms: u64,
    probe_interval_ms: u64,
    derived_stream_maxlen: usize,
}

#[derive(Debug, Deserialize)]
struct RawWorker {
    batch_size: usize,
    concurrency: usize,
    block_ms: u64,
    claim_idle_ms: u64,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_factor: f64,
    #[serde(default)]
    consumer_name: Option<String>,
    migrate_on_start: bool,
    #[serde(default)]
    metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawAudit {
    retention_days: u32,
}

#[derive(Debug, Deserialize)]
struct RawCache {
    conversations_limit: usize,
    messages_limit: usize,
    coalesce_window_ms: u64,
    ttl_ms: u64,
    rebuild_interval_s: u64,
    summary_interval_ms: u64,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn read_secret_file(key: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(StringList::One(text.replace('\n', ",")).into_vec())
}

fn parse_sources(key: &str, list: StringList) -> Result<Vec<Source>, ConfigError> {
    list.into_vec()
        .iter()
        .map(|s| {
            Source::parse(s).ok_or_else(|| {
                invalid(
                    key,
                    format!("unknown source {s:?} (whatsapp, facebook, instagram)"),
                )
            })
        })
        .collect()
}

fn positive(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

impl RawSettings {
    fn validate(self) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = self.listen.trim().parse().map_err(|e| {
            invalid(
                "listen",
                format!("{:?} is not a host:port address: {e}", self.listen),
            )
        })?;

        let redis_url = non_empty(self.redis_url);
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
        }

        if self.stream_prefix.is_empty() || self.stream_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "stream_prefix",
                "must be non-empty and contain no spaces",
            ));
        }

        std::fs::create_dir_all(&self.data_dir).map_err(|source| ConfigError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;

        let database_url = match non_empty(self.database_url) {
            Some(url) => {
                let ok = ["postgres://", "postgresql://", "sqlite:"]
                    .iter()
                    .any(|p| url.starts_with(p));
                if !ok {
                    return Err(invalid(
                        "database_url",
                        "must start with postgres://, postgresql:// or sqlite:",
                    ));
                }
                url
            }
            None => format!("sqlite://{}", self.data_dir.join("inlet.db").display()),
        };

        let mut apps = Vec::new();
        for (i, app) in self.apps.into_iter().enumerate() {
            let key = format!("apps[{i}]");
            if app.tenant.trim().is_empty() {
                return Err(invalid(&format!("{key}.tenant"), "must not be empty"));
            }
            let mut secrets = app.secrets.into_vec();
            if let Some(path) = &app.secrets_file {
                secrets.extend(read_secret_file(&format!("{key}.secrets_file"), path)?);
            }
            if secrets.is_empty() {
                return Err(invalid(
                    &format!("{key}.secrets"),
                    "at least one secret is required",
                ));
            }
            apps.push(AppSettings {
                tenant: app.tenant,
                secrets: secrets.into_iter().map(SecretString::from).collect(),
                verify_token: non_empty(app.verify_token).map(SecretString::from),
                sources: parse_sources(&format!("{key}.sources"), app.sources)?,
                access_token: outbound::token_source(
                    &format!("{key}.access_token"),
                    app.access_token,
                    app.access_token_file,
                )?,
                senders: app.senders.into_vec(),
            });
        }

        let mut default_secrets = self.app_secret.into_vec();
        if let Some(path) = &self.app_secret_file {
            default_secrets.extend(read_secret_file("app_secret_file", path)?);
        }
        let verify_token = non_empty(self.verify_token).map(SecretString::from);
        let graph = self.graph.validate()?;
        let outbound = self.outbound.validate()?;
        let mut generated_secret = None;
        if default_secrets.is_empty() && apps.is_empty() {
            // Nothing configured: a newcomer running the embedded default.
            // Generate a random local secret (never a well-known one) so the
            // gateway starts and `inlet sign` can sign test payloads.
            let path = self.data_dir.join("dev-app-secret");
            default_secrets.push(load_or_create_dev_secret(&path)?);
            generated_secret = Some(path);
        }
        if !default_secrets.is_empty() {
            apps.insert(
                0,
                AppSettings {
                    tenant: self.tenant.clone(),
                    secrets: default_secrets
                        .into_iter()
                        .map(SecretString::from)
                        .collect(),
                    verify_token,
                    sources: Vec::new(),
                    access_token: graph.access_token.clone(),
                    senders: Vec::new(),
                },
            );
        } else if verify_token.is_some() {
            return Err(invalid(
                "verify_token",
                "set without app_secret: the default app needs a secret",
            ));
        }
        let mut tenants = std::collections::HashSet::new();
        for app in &apps {
            if !tenants.insert(app.tenant.as_str()) {
                return Err(invalid(
                    "apps",
                    format!("tenant {:?} is listed twice", app.tenant),
                ));
            }
        }

        let trusted_proxies = self
            .http
            .trusted_proxies
            .into_vec()
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "http.trusted_proxies",
                            format!("{p:?} is neither an IP address nor a CIDR"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be greater than 0"));
        }
        if self.worker.batch_size == 0 || self.worker.batch_size > 10_000 {
            return Err(invalid("worker.batch_size", "must be between 1 and 10000"));
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 64 {
            return Err(invalid("worker.concurrency", "must be between 1 and 64"));
        }
        if self.worker.max_attempts == 0 {
            return Err(invalid("worker.max_attempts", "must be at least 1"));
        }
        if !(self.worker.backoff_factor >= 1.0 && self.worker.backoff_factor.is_finite()) {
            return Err(invalid("worker.backoff_factor", "must be a number >= 1"));
        }
        let worker_metrics_listen = non_empty(self.worker.metrics_listen)
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        "worker.metrics_listen",
                        format!("{a:?} is not a host:port address (empty = off): {e}"),
                    )
                })
            })
            .transpose()?;

        Ok(Settings {
            listen,
            redis_url,
            database_url,
            data_dir: self.data_dir,
            stream_prefix: self.stream_prefix,
            api_token: non_empty(self.api_token).map(SecretString::from),
            apps,
            generated_secret,
            http: HttpSettings {
                max_body_bytes: self.http.max_body_bytes,
                request_timeout: Duration::from_millis(positive(
                    "http.request_timeout_ms",
                    self.http.request_timeout_ms,
                )?),
                max_header_bytes: self.http.max_header_bytes,
                trusted_proxies,
            },
            redis: RedisSettings {
                timeout: Duration::from_millis(positive(
                    "redis.timeout_ms",
                    self.redis.timeout_ms,
                )?),
                probe_interval: Duration::from_millis(positive(
                    "redis.probe_interval_ms",
                    self.redis.probe_interval_ms,
                )?),
                derived_stream_maxlen: self.redis.derived_stream_maxlen,
            },
            worker: WorkerSettings {
                batch_size: self.worker.batch_size,
                concurrency: self.worker.concurrency,
                block: Duration::from_millis(self.worker.block_ms),
                claim_idle: Duration::from_millis(positive(
                    "worker.claim_idle_ms",
                    self.worker.claim_idle_ms,
                )?),
                max_attempts: self.worker.max_attempts,
                backoff_base: Duration::from_millis(self.worker.backoff_base_ms),
                backoff_factor: self.worker.backoff_factor,
                consumer_name: non_empty(self.worker.consumer_name),
                migrate_on_start: self.worker.migrate_on_start,
                metrics_listen: worker_metrics_listen,
            },
            audit: AuditSettings {
                retention_days: self.audit.retention_days,
            },
            database_max_connections: self.database.max_connections.max(1),
            raw_events_retention_days: self.database.raw_events_retention_days,
            processed_events_retention_days: self.database.processed_events_retention_days,
            events: EventSettings {
                filter: crate::events::EventFilter {
                    enabled: self.events.enabled,
                    disabled_entities: self
                        .events
                        .disabled_entities
                        .into_vec()
                        .into_iter()
                        .collect(),
                },
                handler_timeout: Duration::from_millis(positive(
                    "events.handler_timeout_ms",
                    self.events.handler_timeout_ms,
                )?),
                handler_max_attempts: self.events.handler_max_attempts.max(1),
                handler_backoff: Duration::from_millis(self.events.handler_backoff_ms),
                webhook_retry_schedule: self
                    .events
                    .webhook_retry_schedule_ms
                    .into_vec()
                    .iter()
                    .map(|v| {
                        v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                            invalid(
                                "events.webhook_retry_schedule_ms",
                                format!("{v:?} is not a number of milliseconds"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
                webhook_disable_after: self.events.webhook_disable_after.max(1),
                stream_poll: Duration::from_millis(positive(
                    "events.stream_poll_ms",
                    self.events.stream_poll_ms,
                )?),
                stream_heartbeat: Duration::from_millis(positive(
                    "events.stream_heartbeat_ms",
                    self.events.stream_heartbeat_ms,
                )?),
                stream_buffer: usize::try_from(positive(
                    "events.stream_buffer",
                    self.events.stream_buffer as u64,
                )?)
                .unwrap_or(usize::MAX),
                stream_stall: Duration::from_millis(positive(
                    "events.stream_stall_ms",
                    self.events.stream_stall_ms,
                )?),
            },
            cache: CacheSettings {
                conversations_limit: self.cache.conversations_limit,
                messages_limit: self.cache.messages_limit,
                coalesce_window: Duration::from_millis(self.cache.coalesce_window_ms),
                ttl: Duration::from_millis(self.cache.ttl_ms),
                rebuild_interval: Duration::from_secs(self.cache.rebuild_interval_s),
                summary_interval: Duration::from_millis(self.cache.summary_interval_ms),
            },
            graph,
            outbound,
            drafts: DraftSettings {
                expire_after: Duration::from_millis(positive(
                    "drafts.expire_after_ms",
                    self.drafts.expire_after_ms,
                )?),
            },
        })
    }
}

fn load_or_create_dev_secret(path: &Path) -> Result<String, ConfigError> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let secret = format!("dev-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(path, format!("{secret}\n")).map_err(|source| ConfigError::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml")
    }

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut env: Vec<(String, String)> =
            vec![("INLET_DATA_DIR".into(), dir.to_string_lossy().into_owned())];
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::load_from(Some(&default_file()), env)
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let s = load(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.redis_url, None);
        assert!(s.database_url.starts_with("sqlite://"));
        assert_eq!(s.stream_prefix, "inlet:");
        assert_eq!(s.http.max_body_bytes, 1024 * 1024);
        assert!(s.generated_secret.is_some(), "a local secret is generated");
        assert_eq!(s.apps.len(), 1);
        assert_eq!(
            s.worker.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9091")
        );
    }

    #[test]
    fn empty_worker_metrics_listen_turns_it_off() {
        let s = load(&[
            ("INLET_WORKER__METRICS_LISTEN", ""),
            ("INLET_APP_SECRET", "x"),
        ])
        .unwrap();
        assert_eq!(s.worker.metrics_listen, None);
        let s = load(&[("INLET_WORKER__METRICS_LISTEN", "0.0.0.0:9100")]).unwrap();
        assert_eq!(s.worker.metrics_listen.unwrap().port(), 9100);
    }

    #[test]
    fn env_overrides_and_secret_lists() {
        let s = load(&[
            ("INLET_LISTEN", "0.0.0.0:9000"),
            ("INLET_REDIS_URL", "redis://127.0.0.1:6379"),
            ("INLET_APP_SECRET", "one, two"),
            ("INLET_VERIFY_TOKEN", "tok"),
            ("INLET_WORKER__BATCH_SIZE", "7"),
            ("INLET_HTTP__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1"),
        ])
        .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(s.apps[0].secrets.len(), 2);
        assert_eq!(s.apps[0].secrets[1].expose_secret(), "two");
        assert_eq!(s.worker.batch_size, 7);
        assert_eq!(s.http.trusted_proxies.len(), 2);
        assert!(s.generated_secret.is_none());
    }

    #[test]
    fn empty_redis_url_means_no_redis() {
        let s = load(&[("INLET_REDIS_URL", ""), ("INLET_APP_SECRET", "x")]).unwrap();
        assert_eq!(s.redis_url, None);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("INLET_LISTEN", "nonsense", "listen"),
            ("INLET_REDIS_URL", "http://x", "redis_url"),
            ("INLET_DATABASE_URL", "mysql://x", "database_url"),
            ("INLET_WORKER__BATCH_SIZE", "0", "worker.batch_size"),
            ("INLET_WORKER__CONCURRENCY", "0", "worker.concurrency"),
            (
                "INLET_WORKER__METRICS_LISTEN",
                "9091",
                "worker.metrics_listen",
            ),
            (
                "INLET_HTTP__TRUSTED_PROXIES",
                "not-an-ip",
                "http.trusted_proxies",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(&[(var, value), ("INLET_APP_SECRET", "x")]).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{key}`")),
                "{var}: {err}"
            );
        }
    }

    #[test]
    fn several_apps_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apps.toml");
        std::fs::write(
            &file,
            r#"
[[apps]]
tenant = "acme"
secrets = ["a1", "a2"]
verify_token = "acme-token"

[[apps]]
tenant = "globex"
secrets = ["g1"]
sources = ["instagram"]
"#,
        )
        .unwrap();
        let s = load(&[("INLET_CONFIG", file.to_str().unwrap())]).unwrap();
        assert_eq!(s.apps.len(), 2);
        assert_eq!(s.apps[0].tenant, "acme");
        assert_eq!(s.apps[1].sources, vec![Source::Instagram]);
        assert!(s.generated_secret.is_none());
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[("INLET_APP_SECRET", "super-secret-value")]).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-value"));
    }
}
