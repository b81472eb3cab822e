//! The Graph request of a validated send: path and JSON body, per channel.
//!
//! - WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages` with
//!   `messaging_product: "whatsapp"`, `recipient_type: "individual"`, the
//!   recipient as `to` (phone number) or `recipient` (business-scoped user
//!   id: in `to` Meta answers 200 and silently drops the message — chatwoot
//!   `recipient_params`), `type` and the object named after it, `context`
//!   for replies, and the outbound id in `biz_opaque_callback_data`, which
//!   Meta returns untouched in the status webhooks (the join back when the
//!   send's own answer was lost). Source: Cloud API overview and messages
//!   reference; BSUID API changes page.
//! - Messenger and Instagram Send API: `POST /{version}/{page_id}/messages`
//!   with `recipient: {id}`, `messaging_type` (`RESPONSE`, or
//!   `MESSAGE_TAG` with `tag`) and `message` (`text`, `attachment` with a
//!   `payload` URL or `attachment_id`, `quick_replies`). Source: Messenger
//!   Send API reference.

use serde_json::{json, Map, Value};

use super::request::{MessageType, RecipientKind, SendSpec};
use crate::model::Channel;

/// Longest `biz_opaque_callback_data` Meta keeps (bytes).
pub const MAX_CALLBACK_DATA: usize = 256;

/// The Graph call of one send: path below `{base_url}/{version}` and body.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphRequest {
    /// `/{sender}/messages`.
    pub path: String,
    /// JSON body.
    pub body: Value,
}

/// Builds the Graph request for `spec`; `outbound_id` goes into
/// `biz_opaque_callback_data` on WhatsApp.
pub fn graph_request(spec: &SendSpec, outbound_id: &str) -> GraphRequest {
    let body = match spec.channel {
        Channel::Whatsapp => whatsapp_body(spec, outbound_id),
        Channel::Messenger | Channel::Instagram => messenger_body(spec),
    };
    GraphRequest {
        path: format!("/{}/messages", spec.from),
        body,
    }
}

fn whatsapp_body(spec: &SendSpec, outbound_id: &str) -> Value {
    let mut body = Map::new();
    body.insert("messaging_product".into(), json!("whatsapp"));
    body.insert("recipient_type".into(), json!("individual"));
    let field = match spec.recipient_kind {
        RecipientKind::Bsuid => "recipient",
        RecipientKind::Phone | RecipientKind::ScopedId => "to",
    };
    body.insert(field.into(), json!(spec.to));
    body.insert("type".into(), json!(spec.message_type.as_str()));
    let mut content = spec.content.clone();
    if spec.message_type == MessageType::Template {
        // Meta's template examples give the language a deterministic policy.
        if let Some(lang) = content.get_mut("language").and_then(Value::as_object_mut) {
            lang.entry("policy")
                .or_insert_with(|| json!("deterministic"));
        }
    }
    body.insert(spec.message_type.as_str().into(), content);
    if let Some(reply_to) = &spec.reply_to {
        body.insert("context".into(), json!({"message_id": reply_to}));
    }
    if outbound_id.len() <= MAX_CALLBACK_DATA {
        body.insert("biz_opaque_callback_data".into(), json!(outbound_id));
    }
    Value::Object(body)
}

fn messenger_body(spec: &SendSpec) -> Value {
    let c = &spec.content;
    let message = match spec.message_type {
        MessageType::Text => json!({"text": c.get("body").cloned().unwrap_or(Value::Null)}),
        MessageType::Image | MessageType::Audio | MessageType::Video | MessageType::Document => {
            let kind = match spec.message_type {
                MessageType::Document => "file",
                other => other.as_str(),
            };
            let payload = match (c.get("id"), c.get("link")) {
                (Some(id), _) => json!({"attachment_id": id}),
                (None, Some(url)) => json!({"url": url, "is_reusable": true}),
                (None, None) => json!({}),
            };
            json!({"attachment": {"type": kind, "payload": payload}})
        }
        MessageType::Interactive => {
            let replies: Vec<Value> = c
                .pointer("/action/buttons")
                .and_then(Value::as_array)
                .map(|buttons| {
                    buttons
                        .iter()
                        .map(|b| {
                            json!({
                                "content_type": "text",
                                "title": b.pointer("/reply/title").cloned().unwrap_or(Value::Null),
                                "payload": b.pointer("/reply/id").cloned().unwrap_or(Value::Null),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "text": c.pointer("/body/text").cloned().unwrap_or(Value::Null),
                "quick_replies": replies,
            })
        }
        // Rejected at validation for these channels; kept total.
        MessageType::Template | MessageType::Reaction => c.clone(),
    };
    let mut body = Map::new();
    body.insert("recipient".into(), json!({"id": spec.to}));
    match &spec.tag {
        Some(tag) => {
            body.insert("messaging_type".into(), json!("MESSAGE_TAG"));
            body.insert("tag".into(), json!(tag));
        }
        None => {
            body.insert("messaging_type".into(), json!("RESPONSE"));
        }
    }
    body.insert("message".into(), message);
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> SendSpec {
        SendSpec::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn whatsapp_phone_numbers_go_in_to_and_bsuids_in_recipient() {
        let phone = spec(
            json!({"channel": "whatsapp", "from": "200000000000002", "to": "15550001111",
            "type": "text", "text": {"body": "hi"}}),
        );
        let r = graph_request(&phone, "0190-out");
        assert_eq!(r.path, "/200000000000002/messages");
        assert_eq!(r.body["to"], "15550001111");
        assert!(r.body.get("recipient").is_none());
        assert_eq!(r.body["messaging_product"], "whatsapp");
        assert_eq!(r.body["recipient_type"], "individual");
        assert_eq!(r.body["text"]["body"], "hi");
        assert_eq!(r.body["biz_opaque_callback_data"], "0190-out");

        let bsuid = spec(json!({"channel": "whatsapp", "from": "200000000000002",
            "to": "US.13491208655302741918", "type": "text", "text": {"body": "hi"}}));
        let r = graph_request(&bsuid, "0190-out");
        assert_eq!(r.body["recipient"], "US.13491208655302741918");
        assert!(
            r.body.get("to").is_none(),
            "a BSUID in `to` is dropped by Meta"
        );
    }

    #[test]
    fn replies_carry_context_and_templates_a_policy() {
        let s = spec(
            json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "template",
            "template": {"name": "order_update", "language": {"code": "en_US"}}, "reply_to": "wamid.A"}),
        );
        let r = graph_request(&s, "id");
        assert_eq!(r.body["context"]["message_id"], "wamid.A");
        assert_eq!(r.body["template"]["language"]["policy"], "deterministic");
        assert_eq!(r.body["template"]["name"], "order_update");
    }

    #[test]
    fn messenger_and_instagram_use_the_send_api_shape() {
        let s = spec(
            json!({"channel": "facebook", "from": "300000000000003", "to": "4000000000000004",
            "type": "text", "text": {"body": "We are open"}}),
        );
        let r = graph_request(&s, "id");
        assert_eq!(r.path, "/300000000000003/messages");
        assert_eq!(
            r.body,
            json!({"recipient": {"id": "4000000000000004"},
            "messaging_type": "RESPONSE", "message": {"text": "We are open"}})
        );

        let s = spec(
            json!({"channel": "instagram", "from": "5", "to": "6000000000000007",
            "type": "image", "image": {"link": "https://example.com/a.jpg"}, "tag": "HUMAN_AGENT"}),
        );
        let r = graph_request(&s, "id");
        assert_eq!(r.body["messaging_type"], "MESSAGE_TAG");
        assert_eq!(r.body["tag"], "HUMAN_AGENT");
        assert_eq!(r.body["message"]["attachment"]["type"], "image");
        assert_eq!(
            r.body["message"]["attachment"]["payload"]["url"],
            "https://example.com/a.jpg"
        );

        let s = spec(
            json!({"channel": "facebook", "from": "5", "to": "4000000000000004",
            "type": "document", "document": {"id": "987"}}),
        );
        let r = graph_request(&s, "id");
        assert_eq!(r.body["message"]["attachment"]["type"], "file");
        assert_eq!(
            r.body["message"]["attachment"]["payload"]["attachment_id"],
            "987"
        );

        let s = spec(
            json!({"channel": "facebook", "from": "5", "to": "4000000000000004",
            "type": "interactive", "interactive": {"type": "button", "body": {"text": "Confirm?"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]}}}),
        );
        let r = graph_request(&s, "id");
        assert_eq!(r.body["message"]["text"], "Confirm?");
        assert_eq!(
            r.body["message"]["quick_replies"][0],
            json!({"content_type": "text", "title": "Yes", "payload": "yes"})
        );
    }
}
