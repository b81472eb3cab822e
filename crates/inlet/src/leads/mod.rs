//! Lead Ads: a `leadgen` webhook carries ids only, so every newly stored
//! lead is fetched from Graph and kept with its answers.
//!
//! - this file: the pure rules — the job on `{prefix}lead.fetch`, the Graph
//!   call's fields, reading Graph's answer (`field_data` → name, email,
//!   phone; the phone's digits for the contact link);
//! - [`fetch`]: one job from start to end — skip what is already final,
//!   `GET /{leadgen_id}` with the Page's token, record; transient errors
//!   retry with backoff, then the lead is dead-lettered; a permission or
//!   request error is recorded `failed` with the Graph error;
//! - [`consumer`]: who runs jobs — the `leads` consumer group in workers
//!   (queue mode) and an in-process sink in the gateway (direct mode).
//!
//! The store side (`leads` rows queued with their page change, outcomes,
//! `lead.after.create`) is [`crate::store::leads`].

pub mod consumer;
pub mod fetch;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::store::leads::FetchedLead;

/// The fields asked of `GET /{leadgen_id}` (Graph's default set is only
/// `id` and `created_time`).
pub const FIELDS: &str =
    "id,created_time,field_data,ad_id,adset_id,campaign_id,form_id,is_organic,platform";

/// One lead job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeadJob {
    /// Meta's lead id (`leadgen_id`).
    pub lead_id: String,
    /// The Page (picks the token).
    pub page_id: String,
    /// Tenant.
    pub tenant: String,
}

impl LeadJob {
    /// Reads a job from its fields (`lead_id`, `page_id`, `tenant`; see
    /// [`crate::store::leads::lead_job`]). `None` when unreadable.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let (mut lead_id, mut page_id, mut tenant) = (None, None, None);
        for (k, v) in fields {
            match k {
                "lead_id" => lead_id = Some(v.to_string()),
                "page_id" => page_id = Some(v.to_string()),
                "tenant" => tenant = Some(v.to_string()),
                _ => {}
            }
        }
        Some(LeadJob {
            lead_id: lead_id.filter(|id| !id.is_empty())?,
            page_id: page_id.unwrap_or_default(),
            tenant: tenant?,
        })
    }
}

/// Whether a lead id can go into a Graph path as it is (Meta's ids are
/// digits; anything else — a hashed id of a webhook without `leadgen_id` —
/// is not fetched).
pub fn is_graph_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit())
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first non-empty value of the `field_data` entry named one of
/// `names` (Meta's standard questions are lower-case `full_name`,
/// `email`, `phone_number`, …; custom questions keep their own names).
pub fn field(field_data: &Value, names: &[&str]) -> Option<String> {
    let entries = field_data.as_array()?;
    names.iter().find_map(|name| {
        entries
            .iter()
            .filter(|e| {
                e.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
            })
            .find_map(|e| {
                e.get("values")?
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::trim)
                    .find(|s| !s.is_empty())
                    .map(str::to_string)
            })
    })
}

/// The name of a lead: `full_name`, else `first_name` and `last_name`.
pub fn name_of(field_data: &Value) -> Option<String> {
    field(field_data, &["full_name", "name"]).or_else(|| {
        let parts: Vec<String> = [
            field(field_data, &["first_name"]),
            field(field_data, &["last_name"]),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    })
}

/// The digits of a phone number as WhatsApp writes a `wa_id` (country
/// code, no `+`, no separators); `None` when too short to be one.
pub fn phone_digits(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches("00").to_string();
    (digits.len() >= 8 && digits.len() <= 15).then_some(digits)
}

/// Graph's `created_time` (`2026-11-20T09:00:00+0000`; RFC 3339 also read).
pub fn graph_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Reads the answer of `GET /{leadgen_id}?fields=…`.
pub fn parse_lead(answer: &Value) -> FetchedLead {
    let field_data = answer
        .get("field_data")
        .filter(|f| f.is_array())
        .cloned()
        .unwrap_or_else(|| Value::Array(Vec::new()));
    let phone = field(&field_data, &["phone_number", "phone", "work_phone_number"]);
    FetchedLead {
        form_id: text(answer, "form_id"),
        ad_id: text(answer, "ad_id"),
        adset_id: text(answer, "adset_id"),
        campaign_id: text(answer, "campaign_id"),
        is_organic: match answer.get("is_organic") {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        },
        platform: text(answer, "platform"),
        created_time: answer
            .get("created_time")
            .and_then(Value::as_str)
            .and_then(graph_time),
        name: name_of(&field_data),
        email: field(&field_data, &["email", "work_email"]),
        phone_digits: phone.as_deref().and_then(phone_digits),
        phone,
        field_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jobs_read_back_from_their_fields() {
        let row = crate::store::leads::lead_job("acme", "810000000000013", "300000000000003");
        let job = LeadJob::from_fields(row.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(
            job,
            Some(LeadJob {
                lead_id: "810000000000013".into(),
                page_id: "300000000000003".into(),
                tenant: "acme".into(),
            })
        );
        assert_eq!(LeadJob::from_fields([("lead_id", "1")]), None);
        assert_eq!(
            LeadJob::from_fields([("lead_id", ""), ("tenant", "t")]),
            None
        );
    }

    #[test]
    fn a_full_answer_is_read_into_columns() {
        let answer = json!({
            "id": "810000000000013",
            "created_time": "2026-11-20T09:00:00+0000",
            "field_data": [
                {"name": "full_name", "values": ["Ada Lovelace"]},
                {"name": "email", "values": ["ada@example.com"]},
                {"name": "phone_number", "values": ["+1 555-010-0999"]},
                {"name": "which_model?", "values": ["kettle_2000"]}
            ],
            "ad_id": "120200000000000011",
            "adset_id": "120200000000000010",
            "campaign_id": "120200000000000009",
            "form_id": "800000000000012",
            "is_organic": false,
            "platform": "fb"
        });
        let lead = parse_lead(&answer);
        assert_eq!(lead.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(lead.email.as_deref(), Some("ada@example.com"));
        assert_eq!(lead.phone.as_deref(), Some("+1 555-010-0999"));
        assert_eq!(lead.phone_digits.as_deref(), Some("15550100999"));
        assert_eq!(lead.form_id.as_deref(), Some("800000000000012"));
        assert_eq!(lead.adset_id.as_deref(), Some("120200000000000010"));
        assert_eq!(lead.campaign_id.as_deref(), Some("120200000000000009"));
        assert_eq!(lead.is_organic, Some(false));
        assert_eq!(lead.platform.as_deref(), Some("fb"));
        assert_eq!(
            lead.created_time,
            Some("2026-11-20T09:00:00Z".parse().unwrap())
        );
        assert_eq!(lead.field_data, answer["field_data"], "kept verbatim");
    }

    #[test]
    fn names_come_from_first_and_last_when_there_is_no_full_name() {
        let fd = json!([
            {"name": "first_name", "values": ["Grace"]},
            {"name": "LAST_NAME", "values": [" Hopper "]}
        ]);
        assert_eq!(name_of(&fd).as_deref(), Some("Grace Hopper"));
        let only_first = json!([{"name": "first_name", "values": ["Grace"]}]);
        assert_eq!(name_of(&only_first).as_deref(), Some("Grace"));
        assert_eq!(name_of(&json!([])), None);
    }

    #[test]
    fn organic_leads_and_odd_answers_leave_columns_empty() {
        let lead = parse_lead(&json!({
            "id": "1",
            "field_data": [
                {"name": "email", "values": []},
                {"name": "email", "values": ["", "second@example.com"]},
                {"name": "phone_number", "values": ["12"]}
            ],
            "is_organic": true
        }));
        assert_eq!(lead.ad_id, None, "organic leads have no ad");
        assert_eq!(lead.is_organic, Some(true));
        assert_eq!(lead.email.as_deref(), Some("second@example.com"));
        assert_eq!(lead.phone.as_deref(), Some("12"));
        assert_eq!(lead.phone_digits, None, "too short for a wa_id");
        assert_eq!(lead.name, None);
        let empty = parse_lead(&json!({"id": "2", "field_data": "not a list"}));
        assert_eq!(empty.field_data, json!([]));
    }

    #[test]
    fn phone_digits_look_like_wa_ids() {
        assert_eq!(
            phone_digits("+44 20 7946 0958").as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            phone_digits("0044 20 7946 0958").as_deref(),
            Some("442079460958")
        );
        assert_eq!(phone_digits("(555) 0100"), None);
        assert_eq!(phone_digits("1234567890123456"), None);
    }

    #[test]
    fn only_numeric_ids_reach_a_graph_path() {
        assert!(is_graph_id("810000000000013"));
        assert!(!is_graph_id("../me"));
        assert!(!is_graph_id("h:abc"));
        assert!(!is_graph_id(""));
    }

    #[test]
    fn graph_times_are_read() {
        assert_eq!(
            graph_time("2026-11-20T10:00:00+0100"),
            Some("2026-11-20T09:00:00Z".parse().unwrap())
        );
        assert!(graph_time("2026-11-20T09:00:00Z").is_some());
        assert_eq!(graph_time("yesterday"), None);
    }
}
