//! Configuration: the built-in defaults (`config/default.toml`, compiled in),
//! then the file named by `INLET_CONFIG`,
//! then `INLET_*` environment variables, validated once at startup.
//!
//! Top-level keys map to `INLET_<KEY>` (`INLET_REDIS_URL`), nested ones use a
//! double underscore (`INLET_WORKER__BATCH_SIZE`). Secrets are wrapped in
//! [`SecretString`] so they never reach a log line. Every validation error
//! names the key and says what is wrong.
//!
//! Loading ([`Settings::load`]) reads and validates, and changes nothing on
//! disk; [`Settings::prepare`] is the separate step with side effects
//! (creating the data directory, generating the development secret).
//!
//! One file per section, each with its raw (as read) and validated form:
//! [`http`](mod@http) (`listen`, `[http]`), [`redis`](mod@redis)
//! (`redis_url`, `stream_prefix`, `[redis]`), [`store`](mod@store)
//! (`database_url`, `[database]`), [`worker`](mod@worker),
//! [`cache`](mod@cache), [`audit`](mod@audit), [`events`](mod@events),
//! [`apps`](mod@apps) (`[[apps]]` and the default app), [`drafts`](mod@drafts), [`sync`](mod@sync), [`spool`](mod@spool), `leads` (`[leads]`), `media` (`[media]`), `outbound`
//! (`[graph]`, `[outbound]`); [`prepare`](mod@prepare) holds the side effects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

pub mod apps;
pub mod audit;
pub mod cache;
pub mod drafts;
pub mod events;
pub mod http;
mod leads;
mod media;
mod outbound;
pub mod prepare;
pub mod redis;
pub mod spool;
pub mod store;
pub mod sync;
pub mod worker;

pub use apps::{AppSettings, DEV_SECRET_FILE};
pub use audit::AuditSettings;
pub use cache::CacheSettings;
pub use drafts::DraftSettings;
pub use events::EventSettings;
pub use http::HttpSettings;
pub use leads::LeadSettings;
pub use media::{MaxBytes, MediaSettings, MediaStorageKind, S3Settings};
pub use outbound::{GraphSettings, OutboundSettings, TokenSource, UnknownPolicy};
pub use redis::RedisSettings;
pub use spool::SpoolSettings;
pub use store::{PartitionInterval, PartitionSettings};
pub use sync::{BackfillPage, SyncSettings};
pub use worker::WorkerSettings;

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
    /// The data directory could not be prepared ([`Settings::prepare`]).
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
    /// Set when nothing configures a secret: the default app then uses the
    /// development secret in this file, which [`Settings::prepare`] reads
    /// or generates (until then the default app has no secret).
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
    /// Days `event_log` rows are kept (0 = forever; Postgres drops whole
    /// partitions, SQLite keeps its log).
    pub event_log_retention_days: u32,
    /// Time partitions of Postgres' growing tables.
    pub partitions: PartitionSettings,
    /// Event bus behaviour.
    pub events: EventSettings,
    /// `[graph]`: the Graph API endpoint and the default app's token.
    pub graph: GraphSettings,
    /// `[outbound]`: the sender.
    pub outbound: OutboundSettings,
    /// `[media]`: downloads, storage, uploads.
    pub media: MediaSettings,
    /// `[drafts]`: AI drafts waiting for approval.
    pub drafts: DraftSettings,
    /// `[leads]`: the Lead Ads consumer.
    pub leads: LeadSettings,
    /// `[sync]`: scheduled Graph sync (ad insights, conversation backfill).
    pub sync: SyncSettings,
    /// `[spool]`: the gateway's local spool.
    pub spool: SpoolSettings,
}

/// `config/default.toml`, compiled in: the first configuration layer. The
/// file in the repository stays the documented reference of every key.
pub const DEFAULT_TOML: &str = include_str!("../../../../config/default.toml");

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
    /// `INLET_CONFIG`, and the process environment. Creates nothing: call
    /// [`Settings::prepare`] before serving.
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
    apps: Vec<apps::RawApp>,
    http: http::RawHttp,
    redis: redis::RawRedis,
    worker: worker::RawWorker,
    audit: audit::RawAudit,
    cache: cache::RawCache,
    database: store::RawDatabase,
    events: events::RawEvents,
    graph: outbound::RawGraph,
    outbound: outbound::RawOutbound,
    media: media::RawMedia,
    drafts: drafts::RawDrafts,
    leads: leads::RawLeads,
    sync: sync::RawSync,
    spool: spool::RawSpool,
}

fn default_tenant() -> String {
    "default".into()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn positive(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

impl RawSettings {
    /// Every section's validation, in the order of the file; reads secret
    /// files, writes nothing.
    fn validate(self) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = http::listen(&self.listen)?;
        let redis_url = redis::redis_url(self.redis_url, self.redis.cluster())?;
        let stream_prefix = redis::stream_prefix(self.stream_prefix)?;
        let database = self.database.validate(self.database_url, &self.data_dir)?;
        let graph = self.graph.validate()?;
        let outbound = self.outbound.validate()?;
        let media = self.media.validate()?;
        let (apps, generated_secret) = apps::validate(
            self.apps,
            apps::DefaultApp {
                tenant: self.tenant,
                app_secret: self.app_secret,
                app_secret_file: self.app_secret_file,
                verify_token: self.verify_token,
                access_token: graph.access_token.clone(),
            },
            &self.data_dir,
        )?;
        Ok(Settings {
            listen,
            redis_url,
            database_url: database.url,
            data_dir: self.data_dir,
            stream_prefix,
            api_token: non_empty(self.api_token).map(SecretString::from),
            apps,
            generated_secret,
            http: self.http.validate()?,
            redis: self.redis.validate()?,
            worker: self.worker.validate()?,
            audit: self.audit.validate(),
            database_max_connections: database.max_connections,
            raw_events_retention_days: database.raw_events_retention_days,
            processed_events_retention_days: database.processed_events_retention_days,
            event_log_retention_days: database.event_log_retention_days,
            partitions: database.partitions,
            events: self.events.validate()?,
            cache: self.cache.validate(),
            graph,
            outbound,
            media,
            drafts: self.drafts.validate()?,
            leads: self.leads.validate()?,
            sync: self.sync.validate()?,
            spool: self.spool.validate()?,
        })
    }
}

/// Settings from the embedded defaults plus `extra` environment variables,
/// with a throwaway data directory (loading writes nothing): the config
/// sections' tests.
#[cfg(test)]
pub(crate) fn load_for_test(extra: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![(
        "INLET_DATA_DIR".to_string(),
        dir.path().to_string_lossy().into_owned(),
    )];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_from(None, env)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::envelope::Source;

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
        assert!(s.generated_secret.is_some(), "a local secret is to be used");
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
    fn cluster_takes_seed_nodes_and_shards() {
        let s = load(&[
            (
                "INLET_REDIS_URL",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
            ),
            ("INLET_REDIS__CLUSTER", "true"),
            ("INLET_REDIS__RAW_SHARDS", "3"),
            ("INLET_APP_SECRET", "x"),
        ])
        .unwrap();
        assert!(s.redis.cluster);
        assert_eq!(s.redis.raw_shards, 3);
        let plain = load(&[("INLET_APP_SECRET", "x")]).unwrap();
        assert!(!plain.redis.cluster);
        assert_eq!(plain.redis.raw_shards, 1);
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
            (
                "INLET_REDIS_URL",
                "redis://a:7000,redis://b:7001",
                "redis_url",
            ),
            ("INLET_REDIS__RAW_SHARDS", "0", "redis.raw_shards"),
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
    fn loading_creates_nothing_and_prepare_creates_the_dev_secret() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("data");
        let env = || {
            vec![(
                "INLET_DATA_DIR".to_string(),
                data_dir.to_string_lossy().into_owned(),
            )]
        };
        let mut s = Settings::load_from(Some(&default_file()), env()).unwrap();
        assert!(!data_dir.exists(), "loading created {}", data_dir.display());
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "loading wrote nothing anywhere"
        );
        assert_eq!(s.generated_secret, Some(data_dir.join(DEV_SECRET_FILE)));
        assert!(s.apps[0].secrets.is_empty(), "not read before prepare");
        assert!(!s.is_prepared());

        s.prepare().unwrap();
        assert!(s.is_prepared());
        let secret = s.apps[0].secrets[0].expose_secret().to_string();
        assert!(secret.starts_with("dev-") && secret.len() > 20, "{secret}");
        let file = std::fs::read_to_string(data_dir.join(DEV_SECRET_FILE)).unwrap();
        assert_eq!(file.trim(), secret);

        // Preparing again (another process, a restart) keeps the secret.
        let mut again = Settings::load_from(Some(&default_file()), env()).unwrap();
        again.prepare().unwrap();
        again.prepare().unwrap();
        assert_eq!(again.apps[0].secrets.len(), 1);
        assert_eq!(again.apps[0].secrets[0].expose_secret(), secret);
    }

    #[test]
    fn prepare_creates_the_data_dir_but_no_secret_when_one_is_configured() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("a/b");
        let env = vec![
            (
                "INLET_DATA_DIR".to_string(),
                data_dir.to_string_lossy().into_owned(),
            ),
            ("INLET_APP_SECRET".to_string(), "configured".to_string()),
        ];
        let mut s = Settings::load_from(Some(&default_file()), env).unwrap();
        assert!(s.is_prepared(), "a configured secret needs no preparing");
        assert!(!data_dir.exists());
        s.prepare().unwrap();
        assert!(data_dir.is_dir());
        assert!(!data_dir.join(DEV_SECRET_FILE).exists());
        assert_eq!(s.apps[0].secrets[0].expose_secret(), "configured");
    }

    #[test]
    fn an_unusable_data_dir_is_a_prepare_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let env = vec![(
            "INLET_DATA_DIR".to_string(),
            file.to_string_lossy().into_owned(),
        )];
        let mut s = Settings::load_from(Some(&default_file()), env).unwrap();
        let err = s.prepare().unwrap_err();
        assert!(matches!(err, ConfigError::DataDir { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[("INLET_APP_SECRET", "super-secret-value")]).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-value"));
    }
}
