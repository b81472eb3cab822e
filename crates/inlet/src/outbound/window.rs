//! The customer-service window: a user's message opens (or refreshes) a
//! 24-hour window in which any message may be sent; outside it WhatsApp
//! takes only approved templates and answers a free-form send with 131047
//! (Cloud API send-messages page). The business's own messages do not
//! refresh it (YCloud service-messages). Webhooks arrive late, so a window
//! that looks open may already have closed: the gate keeps a safety margin
//! and refuses locally instead of spending a call on a certain 131047.

use chrono::{DateTime, Duration, Utc};

use super::request::SendSpec;
use crate::model::Channel;

/// Meta's window length.
pub const WINDOW: Duration = Duration::hours(24);

/// Whether the send needs an open window: free-form WhatsApp messages do.
/// (Messenger and Instagram sends carry their own `messaging_type`/`tag`
/// and Meta enforces their windows; see the README.)
pub fn requires_window(spec: &SendSpec) -> bool {
    spec.channel == Channel::Whatsapp && spec.is_free_form()
}

/// Whether a window opened by the user's last inbound message at
/// `last_inbound` is still open at `now`, `margin` before it really closes.
pub fn is_open(last_inbound: Option<DateTime<Utc>>, now: DateTime<Utc>, margin: Duration) -> bool {
    match last_inbound {
        Some(at) => now < at + WINDOW - margin,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_closes_a_margin_before_24_hours() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let margin = Duration::minutes(10);
        assert!(is_open(Some(at), at + Duration::hours(1), margin));
        assert!(is_open(
            Some(at),
            at + Duration::minutes(23 * 60 + 49),
            margin
        ));
        assert!(!is_open(
            Some(at),
            at + Duration::minutes(23 * 60 + 50),
            margin
        ));
        assert!(!is_open(Some(at), at + Duration::hours(25), margin));
        assert!(!is_open(None, at, margin), "no inbound message: no window");
    }

    #[test]
    fn only_free_form_whatsapp_needs_it() {
        let spec = |v: serde_json::Value| SendSpec::parse(v.to_string().as_bytes()).unwrap();
        let text = spec(
            serde_json::json!({"channel": "whatsapp", "from": "1", "to": "15550001111",
            "type": "text", "text": {"body": "hi"}}),
        );
        let template = spec(
            serde_json::json!({"channel": "whatsapp", "from": "1", "to": "15550001111",
            "type": "template", "template": {"name": "t", "language": {"code": "en"}}}),
        );
        let fb = spec(
            serde_json::json!({"channel": "facebook", "from": "1", "to": "4000000000000004",
            "type": "text", "text": {"body": "hi"}}),
        );
        assert!(requires_window(&text));
        assert!(!requires_window(&template));
        assert!(!requires_window(&fb));
    }
}
