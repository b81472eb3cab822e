//! `[sync]`: the scheduled Graph sync (hourly ad insights, conversation
//! backfill of configured pages). Intervals are durations such as `"1h"`,
//! `"30m"`, `"90s"`, `"1d"` (or a number of seconds).

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, StringList};

/// A page whose Messenger or Instagram conversations are backfilled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPage {
    /// Page id (for Instagram: the Page linked to the professional
    /// account).
    pub page_id: String,
    /// `messenger` or `instagram`.
    pub platform: String,
}

/// The scheduled sync (`[sync]`).
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Run the scheduler (in workers, and in a Redis-less gateway).
    pub enabled: bool,
    /// Ad accounts (`act_…`) whose campaign insights are fetched.
    pub ad_accounts: Vec<String>,
    /// Between two insights runs of one account.
    pub insights_interval: Duration,
    /// Pages whose conversations are backfilled on schedule.
    pub conversation_pages: Vec<BackfillPage>,
    /// Between two backfills of one page.
    pub conversations_interval: Duration,
    /// How far back a scheduled backfill reaches.
    pub conversations_since: Duration,
    /// How long a run's lease lasts without renewal (renewed every page).
    pub lease: Duration,
    /// How often the scheduler looks for a due sync.
    pub tick: Duration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawSync {
    enabled: bool,
    #[serde(default)]
    ad_accounts: StringList,
    insights_interval: DurationText,
    #[serde(default)]
    conversation_pages: StringList,
    conversations_interval: DurationText,
    conversations_since: DurationText,
    lease: DurationText,
    tick: DurationText,
}

/// A duration as text (`"1h"`) or seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

impl DurationText {
    fn parse(&self, key: &str) -> Result<Duration, ConfigError> {
        let d = match self {
            DurationText::Seconds(s) => Some(Duration::from_secs(*s)),
            DurationText::Text(t) => parse_duration(t),
        }
        .ok_or_else(|| {
            invalid(
                key,
                "is not a duration such as \"90s\", \"30m\", \"1h\" or \"1d\"",
            )
        })?;
        if d.is_zero() {
            return Err(invalid(key, "must be longer than 0"));
        }
        Ok(d)
    }
}

/// `"250ms"`, `"90s"`, `"30m"`, `"1h"`, `"1d"`, or plain seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000)?,
        "ms" => n,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

impl RawSync {
    pub(super) fn validate(self) -> Result<SyncSettings, ConfigError> {
        let ad_accounts = self
            .ad_accounts
            .into_vec()
            .into_iter()
            .map(|a| {
                let a = a.trim().to_string();
                let digits = a.strip_prefix("act_").unwrap_or(&a);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(invalid(
                        "sync.ad_accounts",
                        format!("{a:?} is not an ad account id such as \"act_1234567890\""),
                    ));
                }
                Ok(format!("act_{digits}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let conversation_pages = self
            .conversation_pages
            .into_vec()
            .into_iter()
            .map(|p| {
                let (page, platform) = match p.trim().split_once(':') {
                    Some((page, platform)) => {
                        (page.trim().to_string(), platform.trim().to_string())
                    }
                    None => (p.trim().to_string(), "messenger".to_string()),
                };
                if page.is_empty()
                    || !page.bytes().all(|c| c.is_ascii_digit())
                    || !matches!(platform.as_str(), "messenger" | "instagram")
                {
                    return Err(invalid(
                        "sync.conversation_pages",
                        format!("{p:?} is not \"<page id>\" or \"<page id>:instagram\""),
                    ));
                }
                Ok(BackfillPage {
                    page_id: page,
                    platform,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SyncSettings {
            enabled: self.enabled,
            ad_accounts,
            insights_interval: self.insights_interval.parse("sync.insights_interval")?,
            conversation_pages,
            conversations_interval: self
                .conversations_interval
                .parse("sync.conversations_interval")?,
            conversations_since: self.conversations_since.parse("sync.conversations_since")?,
            lease: self.lease.parse("sync.lease")?,
            tick: self.tick.parse("sync.tick")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1 h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("-1h"), None);
    }
}
