//! `[leads]`: the Lead Ads consumer — whether `leadgen` webhooks are
//! followed by `GET /{leadgen_id}`, how many fetches run at once, and the
//! retries of transient failures. The token of a lead is the Page's: the
//! app that lists the Page id in `senders` (see [`super::Settings::sending_app`]).

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[leads]`.
#[derive(Debug, Clone)]
pub struct LeadSettings {
    /// Whether leads are fetched (jobs are queued either way; with false
    /// the leads stay `pending`).
    pub enabled: bool,
    /// Fetches in flight at once per process.
    pub concurrency: usize,
    /// Attempts for transient failures before the lead is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (full jitter, doubling).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawLeads {
    enabled: bool,
    concurrency: usize,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
}

impl RawLeads {
    pub(super) fn validate(self) -> Result<LeadSettings, ConfigError> {
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(invalid("leads.concurrency", "must be between 1 and 256"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("leads.max_attempts", "must be at least 1"));
        }
        if self.backoff_base_ms == 0 {
            return Err(invalid("leads.backoff_base_ms", "must be greater than 0"));
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(invalid(
                "leads.backoff_cap_ms",
                "must not be smaller than leads.backoff_base_ms",
            ));
        }
        Ok(LeadSettings {
            enabled: self.enabled,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_cap: Duration::from_millis(self.backoff_cap_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Settings;

    fn load(extra: &[(&str, &str)]) -> Result<Settings, crate::config::ConfigError> {
        crate::config::load_for_test(extra)
    }

    #[test]
    fn defaults_fetch_leads_with_media_like_retries() {
        let s = load(&[]).unwrap();
        assert!(s.leads.enabled);
        assert_eq!(s.leads.concurrency, 4);
        assert_eq!(s.leads.max_attempts, 5);
        assert_eq!(s.leads.backoff_base, Duration::from_secs(1));
        assert_eq!(s.leads.backoff_cap, Duration::from_secs(60));
    }

    #[test]
    fn bad_lead_settings_name_their_key() {
        let key = |extra: &[(&str, &str)]| match load(extra) {
            Err(crate::config::ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        };
        assert_eq!(
            key(&[("INLET_LEADS__CONCURRENCY", "0")]),
            "leads.concurrency"
        );
        assert_eq!(
            key(&[("INLET_LEADS__MAX_ATTEMPTS", "0")]),
            "leads.max_attempts"
        );
        assert_eq!(
            key(&[("INLET_LEADS__BACKOFF_CAP_MS", "10")]),
            "leads.backoff_cap_ms"
        );
    }
}
