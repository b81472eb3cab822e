//! Pure reading of Graph answers for the sync: insight rows (money as exact
//! micro-units, counts as integers: Meta sends every number as a string)
//! and Messenger/Instagram conversation messages as normalized history
//! messages.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::model::{Channel, ContactRef, Direction, NormalizedMessage};
use crate::store::sync::InsightRow;
pub use crate::store::sync::{micros_text, money_micros};

/// A count sent as a string or a number.
fn count(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An insights row Meta documents otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("insights row: {0}")]
pub struct BadRow(pub String);

/// One row of `act_…/insights?level=campaign&time_increment=1`; `Err` names
/// what is wrong with it.
pub fn insight_row(account: &str, v: &Value) -> Result<InsightRow, BadRow> {
    let bad = |s: String| BadRow(s);
    let campaign_id = text(v, "campaign_id").ok_or_else(|| bad("no campaign_id".into()))?;
    let date = text(v, "date_start").ok_or_else(|| bad("no date_start".into()))?;
    if chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_err() {
        return Err(bad(format!("date_start {date:?} is not a date")));
    }
    let spend = match v.get("spend") {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) => {
            money_micros(s).ok_or_else(|| bad(format!("spend {s:?} is not a decimal amount")))?
        }
        Some(other) => return Err(bad(format!("spend {other} is not a decimal string"))),
    };
    Ok(InsightRow {
        account_id: account.to_string(),
        campaign_id,
        date,
        campaign_name: text(v, "campaign_name"),
        currency: text(v, "account_currency"),
        spend_micros: spend,
        impressions: count(v.get("impressions")).unwrap_or(0),
        clicks: count(v.get("clicks")).unwrap_or(0),
    })
}

/// Graph's `created_time` (`2026-11-20T09:00:00+0000`, or RFC 3339).
pub fn graph_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A participant (`from`, or an element of `to.data`).
fn participant(v: &Value) -> Option<ContactRef> {
    Some(ContactRef {
        external_id: text(v, "id")?,
        name: text(v, "name").or_else(|| text(v, "username")),
        wa_id: None,
        user_id: None,
        parent_user_id: None,
        username: text(v, "username"),
        former_user_id: None,
    })
}

/// One message of `GET /{conversation-id}/messages?fields=id,created_time,
/// from,to,message` as a history message of `business_id` (the Page, or
/// the Instagram professional account): inbound when someone else sent it,
/// outbound (the business's reply) when the business did.
pub fn history_message(
    channel: Channel,
    page_id: &str,
    business_id: &str,
    v: &Value,
) -> Option<NormalizedMessage> {
    let id = text(v, "id")?;
    let sent_at = graph_time(v.get("created_time")?.as_str()?)?;
    let from = participant(v.get("from")?)?;
    let (direction, contact) = if from.external_id == business_id {
        let to = v
            .get("to")
            .and_then(|t| t.get("data"))
            .and_then(Value::as_array)?
            .iter()
            .filter_map(participant)
            .find(|p| p.external_id != business_id)?;
        (Direction::Outbound, to)
    } else {
        (Direction::Inbound, from)
    };
    let body = text(v, "message");
    Some(NormalizedMessage {
        channel,
        account_id: page_id.to_string(),
        business_id: business_id.to_string(),
        provider_message_id: id,
        direction,
        contact,
        kind: "message".into(),
        message_type: if body.is_some() {
            "text"
        } else {
            "attachments"
        }
        .into(),
        text: body,
        media: Vec::new(),
        reply_to: None,
        forwarded: false,
        referral: None,
        details: json!({"history": true, "backfill": true}),
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact() {
        assert_eq!(money_micros("5339.5"), Some(5_339_500_000));
        assert_eq!(money_micros("0.07"), Some(70_000));
        assert_eq!(money_micros("12"), Some(12_000_000));
        assert_eq!(money_micros("12."), Some(12_000_000));
        assert_eq!(money_micros(".5"), Some(500_000));
        assert_eq!(money_micros("0.123456"), Some(123_456));
        assert_eq!(money_micros("1.2500000"), Some(1_250_000));
        // What floats get wrong: 0.1 + 0.2.
        assert_eq!(
            money_micros("0.1").unwrap() + money_micros("0.2").unwrap(),
            money_micros("0.3").unwrap()
        );
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "1.1234567",
            "abc",
            "1,5",
            "99999999999999999",
        ] {
            assert_eq!(money_micros(bad), None, "{bad}");
        }
        assert_eq!(micros_text(5_339_500_000), "5339.5");
        assert_eq!(micros_text(70_000), "0.07");
        assert_eq!(micros_text(12_000_000), "12");
        assert_eq!(micros_text(-1_500_000), "-1.5");
    }

    #[test]
    fn an_insight_row_from_meta_strings() {
        let v = json!({"account_id": "1234", "campaign_id": "238400", "campaign_name": "Winter sale",
            "spend": "5339.5", "impressions": "361324", "clicks": "1200", "account_currency": "EUR",
            "date_start": "2026-12-06", "date_stop": "2026-12-06"});
        let r = insight_row("act_1234", &v).unwrap();
        assert_eq!(r.spend_micros, 5_339_500_000);
        assert_eq!(r.impressions, 361_324);
        assert_eq!(r.clicks, 1200);
        assert_eq!(r.currency.as_deref(), Some("EUR"));
        assert_eq!(r.date, "2026-12-06");
        assert!(insight_row("act_1", &json!({"campaign_id": "1", "date_start": "x"})).is_err());
        assert!(insight_row(
            "act_1",
            &json!({"campaign_id": "1", "date_start": "2026-12-06", "spend": 1.5})
        )
        .is_err());
        assert!(insight_row("act_1", &json!({"date_start": "2026-12-06"})).is_err());
    }

    #[test]
    fn conversation_messages_become_history_in_both_directions() {
        let inbound = json!({"id": "m_1", "created_time": "2026-11-20T09:00:00+0000",
            "from": {"name": "Pat Doe", "email": "1254@facebook.com", "id": "1254"},
            "to": {"data": [{"name": "Shop", "email": "1000@facebook.com", "id": "1000"}]},
            "message": "Is it in stock?"});
        let m = history_message(Channel::Messenger, "1000", "1000", &inbound).unwrap();
        assert_eq!(m.direction, Direction::Inbound);
        assert_eq!(m.contact.external_id, "1254");
        assert_eq!(m.contact.name.as_deref(), Some("Pat Doe"));
        assert_eq!(m.sent_at.to_rfc3339(), "2026-11-20T09:00:00+00:00");
        assert!(m.is_history());
        let reply = json!({"id": "m_2", "created_time": "2026-11-20T09:01:00+0000",
            "from": {"name": "Shop", "id": "1000"},
            "to": {"data": [{"name": "Pat Doe", "id": "1254"}]}, "message": "Yes"});
        let r = history_message(Channel::Messenger, "1000", "1000", &reply).unwrap();
        assert_eq!(r.direction, Direction::Outbound);
        assert_eq!(r.contact.external_id, "1254");
        let ig = json!({"id": "aWdfZ", "created_time": "2026-11-20T09:02:00+0000",
            "from": {"username": "pat.doe", "id": "5555"},
            "to": {"data": [{"username": "shop", "id": "1784"}]}});
        let i = history_message(Channel::Instagram, "1000", "1784", &ig).unwrap();
        assert_eq!(i.contact.username.as_deref(), Some("pat.doe"));
        assert_eq!(i.message_type, "attachments");
        assert!(
            history_message(Channel::Messenger, "1000", "1000", &json!({"id": "m_3"})).is_none()
        );
    }
}
