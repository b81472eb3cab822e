//! The `[graph]` and `[outbound]` sections and the send-side keys of
//! `[[apps]]`: where Meta's Graph API is, which token sends for which
//! sender, and the sender's rates, retries and ambiguity policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{invalid, non_empty, positive, ConfigError};
use crate::outbound::rate::Limits;

#[derive(Debug, Deserialize)]
pub(super) struct RawGraph {
    base_url: String,
    version: String,
    timeout_ms: u64,
    connect_timeout_ms: u64,
    usage_slow_at_pct: f64,
    usage_max_delay_ms: u64,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    access_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawOutbound {
    enabled: bool,
    rate_per_second: f64,
    #[serde(default)]
    burst: Option<f64>,
    media_rate_per_second: f64,
    pair_interval_ms: u64,
    pair_burst: u32,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
    throttle_pause_ms: u64,
    recovery_ms: u64,
    lease_ms: u64,
    unknown_deadline_ms: u64,
    deferred_retry_ms: u64,
    unknown_policy_reply: String,
    unknown_policy_broadcast: String,
    window_margin_ms: u64,
    grant_margin_ms: u64,
    claim_batch: u32,
    poll_ms: u64,
    token_reload_ms: u64,
}

/// Where an access token comes from. A file is re-read while the service
/// runs (see [`TokenSource::current`]), so a rotated token takes effect
/// without a restart and resumes a sender halted on an auth error.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Given inline (environment or config file).
    Inline(SecretString),
    /// Read from this file (trimmed) whenever asked.
    File(PathBuf),
}

impl TokenSource {
    /// The token now; `None` when the file is missing or empty.
    pub fn current(&self) -> Option<SecretString> {
        match self {
            TokenSource::Inline(s) => Some(s.clone()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
        }
    }
}

/// `[graph]`: the Graph API endpoint shared by every Graph call.
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// `https://graph.facebook.com` (tests: a loopback mock).
    pub base_url: String,
    /// `v23.0`.
    pub version: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connect timeout (a send that failed to connect was never sent).
    pub connect_timeout: Duration,
    /// Token of the default app (`INLET_GRAPH__ACCESS_TOKEN`).
    pub access_token: Option<TokenSource>,
    /// How reads (leads, sync) slow down as Meta's usage headers rise.
    pub pacing: crate::outbound::usage::Pacing,
}

/// What to do with a send whose answer was lost and no status webhook
/// settled it before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Send again once (the recipient may get it twice).
    Resend,
    /// Record it as failed with reason `unknown_outcome` (never twice).
    Fail,
}

impl UnknownPolicy {
    fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "resend" => Ok(UnknownPolicy::Resend),
            "fail" => Ok(UnknownPolicy::Fail),
            other => Err(invalid(key, format!("{other:?} is not resend or fail"))),
        }
    }

    /// Stored / displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownPolicy::Resend => "resend",
            UnknownPolicy::Fail => "fail",
        }
    }
}

/// `[outbound]`: the sender.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Whether workers (or a Redis-less gateway) run the sender.
    pub enabled: bool,
    /// Rates per sender and recipient.
    pub limits: Limits,
    /// Attempts for transient failures before the DLQ.
    pub max_attempts: u32,
    /// First retry delay (full jitter, doubling).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// How long a claimed send is reserved for its sender process.
    pub lease: Duration,
    /// How long an `unknown` send waits for a status webhook.
    pub unknown_deadline: Duration,
    /// How long a send Meta declined with 131049 (per-user marketing cap)
    /// waits before its one more try.
    pub deferred_retry: Duration,
    /// Policy for unsettled unknown replies (single messages).
    pub unknown_policy_reply: UnknownPolicy,
    /// Policy for unsettled unknown broadcast sends.
    pub unknown_policy_broadcast: UnknownPolicy,
    /// Safety margin inside the 24-hour window.
    pub window_margin: Duration,
    /// Sends claimed per round trip.
    pub claim_batch: u32,
    /// How often an idle sender looks for due sends.
    pub poll: Duration,
    /// How often token files are re-read.
    pub token_reload: Duration,
}

pub(super) fn token_source(
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<TokenSource>, ConfigError> {
    match (non_empty(inline), file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            "set either access_token or access_token_file, not both",
        )),
        (Some(t), None) => Ok(Some(TokenSource::Inline(SecretString::from(t)))),
        (None, Some(path)) if !path.as_os_str().is_empty() => {
            check_readable(key, &path)?;
            Ok(Some(TokenSource::File(path)))
        }
        _ => Ok(None),
    }
}

fn check_readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

impl RawGraph {
    pub(super) fn validate(self) -> Result<GraphSettings, ConfigError> {
        let base_url = self.base_url.trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(
                "graph.base_url",
                format!("{base_url:?} is not an http(s) URL"),
            ));
        }
        let version = self.version.trim().to_string();
        let well_formed = version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(a, b)| {
                !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && !b.is_empty()
                    && b.bytes().all(|c| c.is_ascii_digit())
            });
        if !well_formed {
            return Err(invalid(
                "graph.version",
                format!("{version:?} is not a Graph version such as v23.0"),
            ));
        }
        Ok(GraphSettings {
            base_url,
            version,
            timeout: Duration::from_millis(positive("graph.timeout_ms", self.timeout_ms)?),
            connect_timeout: Duration::from_millis(positive(
                "graph.connect_timeout_ms",
                self.connect_timeout_ms,
            )?),
            pacing: crate::outbound::usage::Pacing {
                slow_at_pct: if (0.0..=100.0).contains(&self.usage_slow_at_pct) {
                    self.usage_slow_at_pct
                } else {
                    return Err(invalid(
                        "graph.usage_slow_at_pct",
                        format!("{} is not a percentage (0 to 100)", self.usage_slow_at_pct),
                    ));
                },
                max_delay: Duration::from_millis(self.usage_max_delay_ms),
            },
            access_token: token_source(
                "graph.access_token",
                self.access_token,
                self.access_token_file,
            )?,
        })
    }
}

impl RawOutbound {
    pub(super) fn validate(self) -> Result<OutboundSettings, ConfigError> {
        let rate = self.rate_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid("outbound.rate_per_second", "must be a number > 0"));
        }
        let burst = self.burst.filter(|b| *b > 0.0).unwrap_or(rate);
        if !burst.is_finite() || burst < 1.0 {
            return Err(invalid("outbound.burst", "must be at least 1 (0 = rate)"));
        }
        let media_rate = self.media_rate_per_second;
        if !(media_rate.is_finite() && media_rate > 0.0) {
            return Err(invalid(
                "outbound.media_rate_per_second",
                "must be a number > 0",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("outbound.max_attempts", "must be at least 1"));
        }
        if self.pair_burst == 0 {
            return Err(invalid("outbound.pair_burst", "must be at least 1"));
        }
        if self.claim_batch == 0 || self.claim_batch > 1000 {
            return Err(invalid(
                "outbound.claim_batch",
                "must be between 1 and 1000",
            ));
        }
        if self.grant_margin_ms >= 1000 {
            return Err(invalid(
                "outbound.grant_margin_ms",
                "must be below 1000 (a second of rate kept off the burst leaves none)",
            ));
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(invalid(
                "outbound.backoff_cap_ms",
                "must not be smaller than outbound.backoff_base_ms",
            ));
        }
        let ms = |v: u64| Duration::from_millis(v);
        Ok(OutboundSettings {
            enabled: self.enabled,
            limits: Limits {
                rate,
                // A grant and the request it pays for are a database write
                // apart: keep `grant_margin_ms` of rate off the burst so requests
                // that leave late do not add up past rate + burst in any
                // second at Meta's end.
                burst: (burst - rate * self.grant_margin_ms as f64 / 1000.0).max(1.0),
                media_rate,
                media_burst: (burst * media_rate / rate).max(1.0),
                pair_interval_ms: self.pair_interval_ms as i64,
                pair_burst: i64::from(self.pair_burst),
                throttle_pause_ms: self.throttle_pause_ms as i64,
                recovery_ms: self.recovery_ms.max(1) as i64,
                min_factor: 0.1,
            },
            max_attempts: self.max_attempts,
            backoff_base: ms(positive("outbound.backoff_base_ms", self.backoff_base_ms)?),
            backoff_cap: ms(self.backoff_cap_ms),
            lease: ms(positive("outbound.lease_ms", self.lease_ms)?),
            unknown_deadline: ms(self.unknown_deadline_ms),
            deferred_retry: ms(positive(
                "outbound.deferred_retry_ms",
                self.deferred_retry_ms,
            )?),
            unknown_policy_reply: UnknownPolicy::parse(
                "outbound.unknown_policy_reply",
                &self.unknown_policy_reply,
            )?,
            unknown_policy_broadcast: UnknownPolicy::parse(
                "outbound.unknown_policy_broadcast",
                &self.unknown_policy_broadcast,
            )?,
            window_margin: ms(self.window_margin_ms),
            claim_batch: self.claim_batch,
            poll: ms(positive("outbound.poll_ms", self.poll_ms)?),
            token_reload: ms(positive("outbound.token_reload_ms", self.token_reload_ms)?),
        })
    }
}
