//! Precomputed KPIs: `analytics/summary.json`.
//!
//! The worker computes them so readers never aggregate. "Now" is a
//! parameter, so the same database always gives the same summary for the
//! same reference time (tests use a fixed one). The window is the last
//! [`WINDOW_DAYS`] UTC days: from midnight [`WINDOW_DAYS`]` - 1` days before
//! today up to now, inclusive.
//!
//! - `messages_per_day`: messages sent in the window, per UTC day, channel
//!   and direction (days without messages are left out).
//! - `outbound`: current statuses ([`message_status_current`]) whose time is
//!   in the window: counts, and the delivery rate (delivered or read), read
//!   rate and failure rate over their total, rounded to 4 decimals (`null`
//!   when there are none).
//! - `first_response`: per conversation whose first inbound message is in
//!   the window, the time from that message to the first outbound message
//!   after it (when that happened by now); median in seconds, number of
//!   answered and unanswered conversations.
//! - `active_conversations`: conversations with a message in the last 24 h
//!   and 7 days.
//! - `top_failure_codes`: error codes of failed current statuses in the
//!   window, most frequent first (each message counts a code once).
//! - `new_contacts_per_day`.
//! - `leads_per_day`: leads (page changes of kind `lead`) per day, form and
//!   campaign (those of the fetched lead; `null` until it is fetched, and
//!   the campaign for organic leads).
//! - `cost_per_lead`: per campaign and currency, the spend of the window
//!   over its leads of the window (`null` without leads).
//! - `lead_to_conversation_rate`: leads of the window whose contact has a
//!   conversation, over the leads of the window (`null` without leads).
//! - `ad_spend_per_day`: spend of the synced ad insights per day and
//!   currency, summed exactly (micro-units), as decimal strings.
//!
//! [`message_status_current`]: crate::store::read::SummaryRows::outbound_statuses

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::read::{ReadModel, SummaryRows};
use crate::store::StoreError;

/// Length of the analytics window, in UTC days (today included).
pub const WINDOW_DAYS: i64 = 30;
/// Failure codes listed in `top_failure_codes`.
pub const TOP_FAILURE_CODES: usize = 10;

/// `analytics/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The reference time ("now") the KPIs are computed for.
    pub generated_at: DateTime<Utc>,
    /// The window.
    pub window: Window,
    /// Messages per day, channel and direction.
    pub messages_per_day: Vec<MessagesPerDay>,
    /// Outbound delivery KPIs.
    pub outbound: Outbound,
    /// First-response time.
    pub first_response: FirstResponseStats,
    /// Active conversations.
    pub active_conversations: Active,
    /// Most frequent failure codes.
    pub top_failure_codes: Vec<FailureCode>,
    /// Contacts first seen per day.
    pub new_contacts_per_day: Vec<DayCount>,
    /// Leads captured per day, form and campaign.
    pub leads_per_day: Vec<LeadDay>,
    /// Cost per lead, per campaign and currency.
    pub cost_per_lead: Vec<CampaignCost>,
    /// Leads whose contact has a conversation, over all leads (4 decimals).
    pub lead_to_conversation_rate: Option<f64>,
    /// Ad spend per day and currency (synced ad insights; the ad account's
    /// days), as exact decimal strings.
    pub ad_spend_per_day: Vec<DaySpend>,
}

/// Leads of one day, form and campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadDay {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Lead form, when known.
    pub form_id: Option<String>,
    /// Campaign, when known (fetched, not organic).
    pub campaign_id: Option<String>,
    /// Leads.
    pub count: i64,
}

/// A campaign's spend and leads in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignCost {
    /// Campaign.
    pub campaign_id: String,
    /// Currency of the spend (ISO 4217), when known.
    pub currency: Option<String>,
    /// Spend in the window, a decimal string.
    pub spend: String,
    /// Leads of the campaign in the window.
    pub leads: i64,
    /// spend / leads, a decimal string (micro-unit precision, rounded half
    /// up); `null` without leads.
    pub cost_per_lead: Option<String>,
}

/// Ad spend of one day in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySpend {
    /// `YYYY-MM-DD` (the ad account's time zone).
    pub date: String,
    /// Currency as the account reports it (ISO 4217), when known.
    pub currency: Option<String>,
    /// Spend, a decimal string (`"5339.5"`): exact, never a float.
    pub spend: String,
}

/// The analytics window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Its length in days.
    pub days: i64,
    /// Start (midnight UTC).
    pub from: DateTime<Utc>,
    /// End ("now").
    pub to: DateTime<Utc>,
}

/// Messages of one day, channel and direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesPerDay {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Channel.
    pub channel: String,
    /// `inbound` / `outbound`.
    pub direction: String,
    /// Messages.
    pub count: i64,
}

/// A count on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Count.
    pub count: i64,
}

/// Outbound delivery KPIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    /// Outbound messages with a current status in the window.
    pub total: i64,
    /// Currently `sent`.
    pub sent: i64,
    /// Currently `delivered`.
    pub delivered: i64,
    /// Currently `read`.
    pub read: i64,
    /// Currently `failed`.
    pub failed: i64,
    /// (delivered + read) / total.
    pub delivery_rate: Option<f64>,
    /// read / total.
    pub read_rate: Option<f64>,
    /// failed / total.
    pub failure_rate: Option<f64>,
}

/// First-response time KPIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstResponseStats {
    /// Median in seconds over answered conversations.
    pub median_seconds: Option<f64>,
    /// Conversations answered.
    pub answered: usize,
    /// Conversations not answered (yet).
    pub unanswered: usize,
}

/// Active conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    /// With a message in the last 24 hours.
    pub last_24h: i64,
    /// With a message in the last 7 days.
    pub last_7d: i64,
}

/// One failure code and how many failed messages carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCode {
    /// Meta error code.
    pub code: i64,
    /// Its title, as Meta sent it.
    pub title: Option<String>,
    /// Failed messages with it.
    pub count: i64,
}

/// Start of the window ending at `now`: midnight UTC, `WINDOW_DAYS - 1` days
/// before `now`'s day.
pub fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() - Duration::days(WINDOW_DAYS - 1))
        .and_time(NaiveTime::MIN)
        .and_utc()
}

/// Reads the aggregates and computes the summary for `now`.
pub async fn summary(read: &dyn ReadModel, now: DateTime<Utc>) -> Result<Summary, StoreError> {
    let from = window_start(now);
    let rows = read.summary_rows(from, now).await?;
    Ok(compute(&rows, from, now))
}

/// The summary of `rows` (fetched for `[from, now]`). Pure.
pub fn compute(rows: &SummaryRows, from: DateTime<Utc>, now: DateTime<Utc>) -> Summary {
    let mut messages_per_day: Vec<MessagesPerDay> = rows
        .messages_per_day
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| MessagesPerDay {
            date: r.date.clone(),
            channel: r.channel.clone(),
            direction: r.direction.clone(),
            count: r.count,
        })
        .collect();
    messages_per_day.sort_by(|a, b| {
        (&a.date, &a.channel, &a.direction).cmp(&(&b.date, &b.channel, &b.direction))
    });

    let status = |name: &str| {
        rows.outbound_statuses
            .iter()
            .filter(|(s, _)| s == name)
            .map(|(_, n)| *n)
            .sum::<i64>()
    };
    let (sent, delivered, read, failed) = (
        status("sent"),
        status("delivered"),
        status("read"),
        status("failed"),
    );
    let total: i64 = rows.outbound_statuses.iter().map(|(_, n)| *n).sum();
    let rate = |n: i64| (total > 0).then(|| round4(n as f64 / total as f64));

    let mut response_seconds: Vec<f64> = Vec::new();
    let mut unanswered = 0;
    for r in &rows.first_responses {
        match r.first_outbound_at.filter(|o| *o <= now) {
            Some(out) => {
                response_seconds.push((out - r.first_inbound_at).num_milliseconds() as f64 / 1000.0)
            }
            None => unanswered += 1,
        }
    }

    Summary {
        generated_at: now,
        window: Window {
            days: WINDOW_DAYS,
            from,
            to: now,
        },
        messages_per_day,
        outbound: Outbound {
            total,
            sent,
            delivered,
            read,
            failed,
            delivery_rate: rate(delivered + read),
            read_rate: rate(read),
            failure_rate: rate(failed),
        },
        first_response: FirstResponseStats {
            median_seconds: median(&mut response_seconds),
            answered: response_seconds.len(),
            unanswered,
        },
        active_conversations: Active {
            last_24h: rows.active_24h,
            last_7d: rows.active_7d,
        },
        top_failure_codes: failure_codes(&rows.failure_errors),
        new_contacts_per_day: day_counts(&rows.new_contacts_per_day),
        leads_per_day: rows
            .leads_per_day
            .iter()
            .map(|(date, form, campaign, n)| LeadDay {
                date: date.clone(),
                form_id: form.clone(),
                campaign_id: campaign.clone(),
                count: *n,
            })
            .collect(),
        cost_per_lead: cost_per_lead(&rows.ad_spend, &rows.leads_per_day),
        lead_to_conversation_rate: match rows.lead_conversions {
            (0, _) => None,
            (total, converted) => Some(round4(converted as f64 / total as f64)),
        },
        ad_spend_per_day: spend_per_day(&rows.ad_spend),
    }
}

/// Spend over leads per (campaign, currency); campaigns with leads but no
/// spend show a spend of 0.
fn cost_per_lead(
    spend: &[(String, Option<String>, String, i64)],
    leads: &[(String, Option<String>, Option<String>, i64)],
) -> Vec<CampaignCost> {
    let mut by_campaign: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, campaign, n) in leads {
        if let Some(c) = campaign {
            *by_campaign.entry(c).or_default() += n;
        }
    }
    let mut costs: BTreeMap<(&str, Option<&str>), i64> = BTreeMap::new();
    for (_, currency, campaign, micros) in spend {
        *costs.entry((campaign, currency.as_deref())).or_default() += micros;
    }
    for c in by_campaign.keys() {
        if !costs.keys().any(|(k, _)| k == c) {
            costs.insert((c, None), 0);
        }
    }
    costs
        .into_iter()
        .map(|((campaign, currency), micros)| {
            let leads = by_campaign.get(campaign).copied().unwrap_or(0);
            CampaignCost {
                campaign_id: campaign.to_string(),
                currency: currency.map(str::to_string),
                spend: crate::store::sync::micros_text(micros),
                leads,
                cost_per_lead: (leads > 0)
                    .then(|| crate::store::sync::micros_text((micros + leads / 2) / leads)),
            }
        })
        .collect()
}

/// Sums campaign spend per (day, currency).
fn spend_per_day(rows: &[(String, Option<String>, String, i64)]) -> Vec<DaySpend> {
    let mut by: BTreeMap<(&str, Option<&str>), i64> = BTreeMap::new();
    for (date, currency, _, micros) in rows {
        *by.entry((date, currency.as_deref())).or_default() += micros;
    }
    by.into_iter()
        .map(|((date, currency), micros)| DaySpend {
            date: date.to_string(),
            currency: currency.map(str::to_string),
            spend: crate::store::sync::micros_text(micros),
        })
        .collect()
}

/// Median of `values` (mean of the two middle ones for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn day_counts(rows: &[(String, i64)]) -> Vec<DayCount> {
    let mut by_day: BTreeMap<&str, i64> = BTreeMap::new();
    for (day, n) in rows {
        *by_day.entry(day.as_str()).or_default() += n;
    }
    by_day
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(date, count)| DayCount {
            date: date.to_string(),
            count,
        })
        .collect()
}

/// Counts codes over groups of identical error arrays; a message counts
/// each of its codes once.
fn failure_codes(groups: &[(serde_json::Value, i64)]) -> Vec<FailureCode> {
    let mut codes: BTreeMap<i64, (Option<String>, i64)> = BTreeMap::new();
    for (errors, n) in groups {
        let mut seen = std::collections::BTreeSet::new();
        for e in errors.as_array().into_iter().flatten() {
            let code = match &e["code"] {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            let Some(code) = code else { continue };
            if !seen.insert(code) {
                continue;
            }
            let entry = codes.entry(code).or_insert((None, 0));
            entry.1 += n;
            if let Some(title) = e["title"].as_str() {
                // The smallest title wins, so the order rows arrive in does
                // not change the document.
                if !matches!(entry.0.as_deref(), Some(t) if t <= title) {
                    entry.0 = Some(title.to_string());
                }
            }
        }
    }
    let mut list: Vec<FailureCode> = codes
        .into_iter()
        .map(|(code, (title, count))| FailureCode { code, title, count })
        .collect();
    list.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    list.truncate(TOP_FAILURE_CODES);
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::read::{DayChannelCount, FirstResponse};
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn window_starts_at_midnight_twenty_nine_days_back() {
        assert_eq!(
            window_start(at("2026-11-30T15:20:00Z")),
            at("2026-11-01T00:00:00Z")
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn compute_rates_responses_and_codes() {
        let now = at("2026-11-20T12:00:00Z");
        let rows = SummaryRows {
            messages_per_day: vec![
                DayChannelCount {
                    date: "2026-11-20".into(),
                    channel: "whatsapp".into(),
                    direction: "inbound".into(),
                    count: 2,
                },
                DayChannelCount {
                    date: "2026-11-19".into(),
                    channel: "messenger".into(),
                    direction: "outbound".into(),
                    count: 1,
                },
            ],
            outbound_statuses: vec![
                ("delivered".into(), 1),
                ("failed".into(), 1),
                ("read".into(), 2),
            ],
            failure_errors: vec![
                (
                    json!([{"code": 131047, "title": "Re-engagement message"}]),
                    1,
                ),
                (json!([{"code": 131026}, {"code": 131026}]), 2),
            ],
            first_responses: vec![
                FirstResponse {
                    conversation_id: 1,
                    first_inbound_at: at("2026-11-20T10:00:00Z"),
                    first_outbound_at: Some(at("2026-11-20T10:01:00Z")),
                },
                FirstResponse {
                    conversation_id: 2,
                    first_inbound_at: at("2026-11-20T10:00:00Z"),
                    first_outbound_at: Some(at("2026-11-20T10:03:00Z")),
                },
                FirstResponse {
                    conversation_id: 3,
                    first_inbound_at: at("2026-11-20T11:00:00Z"),
                    // After "now": not known yet.
                    first_outbound_at: Some(at("2026-11-20T13:00:00Z")),
                },
            ],
            active_24h: 2,
            active_7d: 3,
            new_contacts_per_day: vec![("2026-11-20".into(), 2)],
            leads_per_day: vec![
                ("2026-11-19".into(), Some("f1".into()), Some("c1".into()), 3),
                ("2026-11-20".into(), Some("f1".into()), None, 1),
            ],
            lead_conversions: (4, 1),
            ad_spend: vec![
                (
                    "2026-11-19".into(),
                    Some("EUR".into()),
                    "c1".into(),
                    100_000,
                ),
                (
                    "2026-11-19".into(),
                    Some("EUR".into()),
                    "c2".into(),
                    200_000,
                ),
                (
                    "2026-11-19".into(),
                    Some("USD".into()),
                    "c3".into(),
                    1_000_000,
                ),
                (
                    "2026-11-20".into(),
                    Some("EUR".into()),
                    "c1".into(),
                    5_339_500_000,
                ),
            ],
        };
        let s = compute(&rows, window_start(now), now);
        // 0.1 + 0.2 is 0.3 here, per currency.
        let spend: Vec<_> = s
            .ad_spend_per_day
            .iter()
            .map(|d| (d.date.as_str(), d.currency.as_deref(), d.spend.as_str()))
            .collect();
        assert_eq!(
            spend,
            vec![
                ("2026-11-19", Some("EUR"), "0.3"),
                ("2026-11-19", Some("USD"), "1"),
                ("2026-11-20", Some("EUR"), "5339.5"),
            ]
        );
        // 5339.6 over 3 leads, to the micro-unit; no leads, no cost.
        let cpl: Vec<_> = s
            .cost_per_lead
            .iter()
            .map(|c| {
                (
                    c.campaign_id.as_str(),
                    c.spend.as_str(),
                    c.leads,
                    c.cost_per_lead.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            cpl,
            vec![
                ("c1", "5339.6", 3, Some("1779.866667")),
                ("c2", "0.2", 0, None),
                ("c3", "1", 0, None),
            ]
        );
        assert_eq!(s.lead_to_conversation_rate, Some(0.25));
        assert_eq!(s.leads_per_day[1].campaign_id, None);
        assert_eq!(s.messages_per_day[0].date, "2026-11-19");
        assert_eq!(s.outbound.total, 4);
        assert_eq!(s.outbound.delivery_rate, Some(0.75));
        assert_eq!(s.outbound.read_rate, Some(0.5));
        assert_eq!(s.outbound.failure_rate, Some(0.25));
        assert_eq!(s.first_response.median_seconds, Some(120.0));
        assert_eq!(s.first_response.answered, 2);
        assert_eq!(s.first_response.unanswered, 1);
        assert_eq!(
            s.top_failure_codes,
            vec![
                FailureCode {
                    code: 131026,
                    title: None,
                    count: 2
                },
                FailureCode {
                    code: 131047,
                    title: Some("Re-engagement message".into()),
                    count: 1
                },
            ]
        );
        assert_eq!(s.new_contacts_per_day.len(), 1);
        assert_eq!(s.leads_per_day.len(), 2);
    }

    #[test]
    fn no_outbound_means_null_rates() {
        let now = at("2026-11-20T12:00:00Z");
        let s = compute(&SummaryRows::default(), window_start(now), now);
        assert_eq!(s.outbound.delivery_rate, None);
        assert_eq!(s.first_response.median_seconds, None);
        assert!(s.leads_per_day.is_empty());
        assert!(s.cost_per_lead.is_empty());
        assert_eq!(s.lead_to_conversation_rate, None);
    }
}
