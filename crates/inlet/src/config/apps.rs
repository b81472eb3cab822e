//! `[[apps]]` and the default app (`app_secret`, `app_secret_file`,
//! `verify_token`, `tenant`): every Meta app's secrets, verify token,
//! tenant, sources and sending identity.
//!
//! With nothing configured at all, the default app's secret is the
//! development secret in `{data_dir}/dev-app-secret`; validation only names
//! the file, [`super::Settings::prepare`] reads or creates it.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::outbound::{self, TokenSource};
use super::{invalid, non_empty, ConfigError, StringList};
use crate::envelope::Source;
use crate::signature::SigningKey;

/// File of the generated development secret, in the data directory.
pub const DEV_SECRET_FILE: &str = "dev-app-secret";

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

#[derive(Debug, Deserialize)]
pub(super) struct RawApp {
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

/// The top-level keys of the default app.
pub(super) struct DefaultApp {
    pub(super) tenant: String,
    pub(super) app_secret: StringList,
    pub(super) app_secret_file: Option<PathBuf>,
    pub(super) verify_token: Option<String>,
    /// `graph.access_token`, validated.
    pub(super) access_token: Option<TokenSource>,
}

/// The apps, default app first, and the development secret's file when the
/// default app is to use it.
pub(super) fn validate(
    raw: Vec<RawApp>,
    default: DefaultApp,
    data_dir: &Path,
) -> Result<(Vec<AppSettings>, Option<PathBuf>), ConfigError> {
    let mut apps = Vec::new();
    for (i, app) in raw.into_iter().enumerate() {
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

    let mut default_secrets = default.app_secret.into_vec();
    if let Some(path) = &default.app_secret_file {
        default_secrets.extend(read_secret_file("app_secret_file", path)?);
    }
    let verify_token = non_empty(default.verify_token).map(SecretString::from);
    // Nothing configured: a newcomer running the embedded default. The
    // default app takes a random local secret (never a well-known one), so
    // the gateway starts and `inlet sign` can sign test payloads; `prepare`
    // reads or creates it.
    let generated_secret =
        (default_secrets.is_empty() && apps.is_empty()).then(|| data_dir.join(DEV_SECRET_FILE));
    if !default_secrets.is_empty() || generated_secret.is_some() {
        apps.insert(
            0,
            AppSettings {
                tenant: default.tenant,
                secrets: default_secrets
                    .into_iter()
                    .map(SecretString::from)
                    .collect(),
                verify_token,
                sources: Vec::new(),
                access_token: default.access_token,
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
    Ok((apps, generated_secret))
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
