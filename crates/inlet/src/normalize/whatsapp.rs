//! WhatsApp Cloud API (`object = whatsapp_business_account`).
//!
//! `entry[].changes[]` with `field = "messages"` carry `value.messages[]`
//! (inbound messages) and `value.statuses[]` (receipts for outbound
//! messages). Every other field (template status updates, quality updates,
//! account updates…) becomes an unsupported [`PageChange`](crate::model::PageChange)
//! named after the field. Timestamps are Unix seconds, as strings or numbers.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{bool_at, id_at, int_of, object_of, present, secs_at, string_at, text_at, EntryCtx};
use crate::model::{
    Channel, ContactRef, DeliveryStatus, Direction, MediaRef, NormalizedItem, NormalizedMessage,
    ProviderError, StatusUpdate,
};

/// Normalizes one `entry[]` of a WhatsApp body.
pub(super) fn entry(entry: &Value, out: &mut Vec<NormalizedItem>) {
    let ctx = EntryCtx::new(Channel::Whatsapp, entry);
    if !entry.is_object() {
        out.push(ctx.unsupported("entry", entry.clone(), None));
        return;
    }
    match entry.get("changes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(changes)) => {
            for change in changes {
                self::change(&ctx, change, out);
            }
        }
        Some(other) => out.push(ctx.unsupported("changes", other.clone(), None)),
    }
}

/// One `changes[]` element.
fn change(ctx: &EntryCtx, change: &Value, out: &mut Vec<NormalizedItem>) {
    let field = string_at(change, "field");
    match (field.as_deref(), change.get("value")) {
        (Some("messages"), Some(value @ Value::Object(_))) => messages_value(ctx, value, out),
        (Some("smb_message_echoes"), Some(value @ Value::Object(_)))
            if matches!(value.get("message_echoes"), Some(Value::Array(_))) =>
        {
            echoes_value(ctx, value, out)
        }
        (field, value) => {
            let field = field.unwrap_or("changes");
            let at = value.and_then(|v| secs_at(v, "timestamp"));
            let value = value.cloned().unwrap_or_else(|| change.clone());
            out.push(ctx.unsupported(field, value, at));
        }
    }
}

/// The `value` of a `messages` change: messages first, then statuses.
fn messages_value(ctx: &EntryCtx, value: &Value, out: &mut Vec<NormalizedItem>) {
    let business_id = value
        .get("metadata")
        .and_then(|m| id_at(m, "phone_number_id"))
        .unwrap_or_else(|| ctx.account_id.clone());
    let contacts = contact_names(value.get("contacts"));
    let mut seen = false;

    match value.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(messages)) => {
            seen = true;
            for msg in messages {
                out.push(message(ctx, &business_id, &contacts, msg));
            }
        }
        Some(other) => {
            seen = true;
            out.push(ctx.unsupported("messages", other.clone(), None));
        }
    }
    match value.get("statuses") {
        None | Some(Value::Null) => {}
        Some(Value::Array(statuses)) => {
            seen = true;
            for st in statuses {
                out.push(status(ctx, &business_id, &contacts, st));
            }
        }
        Some(other) => {
            seen = true;
            out.push(ctx.unsupported("statuses", other.clone(), None));
        }
    }
    if !seen {
        // Neither messages nor statuses (e.g. a value-level `errors` array):
        // keep it rather than let it vanish.
        out.push(ctx.unsupported("messages", value.clone(), secs_at(value, "timestamp")));
    }
}

/// One `value.contacts[]` entry: whichever identifiers it carries, and the
/// profile name and username.
#[derive(Debug, Clone, Default)]
struct ContactEntry {
    wa_id: Option<String>,
    user_id: Option<String>,
    parent_user_id: Option<String>,
    username: Option<String>,
    name: Option<String>,
}

/// `value.contacts[]`, built once per change so lookups stay cheap on big
/// batches. An entry is found by any identifier it carries (the first entry
/// for an identifier wins).
#[derive(Debug, Default)]
struct Contacts {
    entries: Vec<ContactEntry>,
    by_id: HashMap<String, usize>,
}

fn contact_names(contacts: Option<&Value>) -> Contacts {
    let mut out = Contacts::default();
    if let Some(Value::Array(contacts)) = contacts {
        for contact in contacts.iter().filter(|c| c.is_object()) {
            let profile = contact.get("profile");
            let entry = ContactEntry {
                wa_id: id_at(contact, "wa_id"),
                user_id: id_at(contact, "user_id"),
                parent_user_id: id_at(contact, "parent_user_id"),
                username: profile.and_then(|p| id_at(p, "username")),
                name: profile.and_then(|p| text_at(p, "name")),
            };
            let index = out.entries.len();
            for id in [&entry.wa_id, &entry.user_id, &entry.parent_user_id]
                .into_iter()
                .flatten()
            {
                out.by_id.entry(id.clone()).or_insert(index);
            }
            out.entries.push(entry);
        }
    }
    out
}

impl Contacts {
    /// The entry naming any of `ids`; else the only entry, when there is
    /// exactly one and `ids` is empty (a sender known only from `contacts`).
    fn find(&self, ids: &[&Option<String>]) -> Option<&ContactEntry> {
        let known: Vec<&String> = ids.iter().filter_map(|id| id.as_ref()).collect();
        if known.is_empty() {
            return match self.entries.as_slice() {
                [only] => Some(only),
                _ => None,
            };
        }
        known
            .iter()
            .find_map(|id| self.by_id.get(*id))
            .and_then(|i| self.entries.get(*i))
    }

    /// The contact of a message or status: the identifiers the item carries,
    /// completed from its `contacts[]` entry. `None` when neither carries any.
    fn resolve(
        &self,
        wa_id: Option<String>,
        user_id: Option<String>,
        parent_user_id: Option<String>,
    ) -> Option<ContactRef> {
        let entry = self
            .find(&[&wa_id, &user_id, &parent_user_id])
            .cloned()
            .unwrap_or_default();
        ContactRef::whatsapp(
            wa_id.or(entry.wa_id),
            user_id.or(entry.user_id),
            parent_user_id.or(entry.parent_user_id),
            entry.username,
            entry.name,
        )
    }
}

/// One `value.messages[]` element. A message needs an `id` and a sender
/// known by any identifier (`from`, `from_user_id`, `from_parent_user_id`,
/// or its `contacts[]` entry); otherwise it becomes an unsupported page
/// change (field `messages`) carrying it verbatim.
fn message(ctx: &EntryCtx, business_id: &str, contacts: &Contacts, msg: &Value) -> NormalizedItem {
    let sender = contacts.resolve(
        id_at(msg, "from"),
        id_at(msg, "from_user_id"),
        id_at(msg, "from_parent_user_id"),
    );
    message_of(
        ctx,
        business_id,
        sender,
        Direction::Inbound,
        "messages",
        msg,
    )
}

/// The `value` of an `smb_message_echoes` change (Business-app
/// coexistence): `message_echoes[]`, messages a person sent from the
/// WhatsApp Business app on the same number. They are outbound messages of
/// the customer's conversation (`to`), marked `details.sent_from =
/// "business_app"`, so the timeline shows both sides.
fn echoes_value(ctx: &EntryCtx, value: &Value, out: &mut Vec<NormalizedItem>) {
    let business_id = value
        .get("metadata")
        .and_then(|m| id_at(m, "phone_number_id"))
        .unwrap_or_else(|| ctx.account_id.clone());
    let Some(Value::Array(echoes)) = value.get("message_echoes") else {
        return;
    };
    for echo in echoes {
        let customer = ContactRef::whatsapp(id_at(echo, "to"), None, None, None, None);
        let mut item = message_of(
            ctx,
            &business_id,
            customer,
            Direction::Outbound,
            "smb_message_echoes",
            echo,
        );
        if let NormalizedItem::Message(m) = &mut item {
            if let Value::Object(details) = &mut m.details {
                details.insert("sent_from".to_owned(), Value::String("business_app".into()));
            }
        }
        out.push(item);
    }
}

/// A message of `contact` in `direction`; without an `id` or a contact, an
/// unsupported page change of `field` carrying it verbatim.
fn message_of(
    ctx: &EntryCtx,
    business_id: &str,
    contact: Option<ContactRef>,
    direction: Direction,
    field: &str,
    msg: &Value,
) -> NormalizedItem {
    let timestamp = secs_at(msg, "timestamp");
    let (Some(id), Some(contact)) = (id_at(msg, "id"), contact) else {
        return ctx.unsupported(field, msg.clone(), timestamp);
    };
    let mut m = NormalizedMessage {
        channel: ctx.channel,
        account_id: ctx.account_id.clone(),
        business_id: business_id.to_owned(),
        provider_message_id: id,
        direction,
        contact,
        kind: "message".to_owned(),
        message_type: "unsupported".to_owned(),
        text: None,
        media: Vec::new(),
        reply_to: None,
        forwarded: false,
        referral: present(msg, "referral"),
        details: Value::Object(Map::new()),
        sent_at: ctx.at(timestamp),
    };

    let known = string_at(msg, "type").is_some_and(|ty| fill_type(&mut m, &ty, msg));
    if known {
        if let (Some(errors), Value::Object(details)) = (present(msg, "errors"), &mut m.details) {
            details.insert("errors".to_owned(), errors);
        }
    } else {
        m.kind = "message".to_owned();
        m.message_type = "unsupported".to_owned();
        m.text = None;
        m.media.clear();
        m.reply_to = None;
        m.details = object_of([
            ("raw", Some(msg.clone())),
            (
                "errors",
                Some(present(msg, "errors").unwrap_or_else(|| Value::Array(Vec::new()))),
            ),
        ]);
    }

    if let Some(context) = msg.get("context").filter(|c| c.is_object()) {
        if m.reply_to.is_none() {
            m.reply_to = id_at(context, "id");
        }
        m.forwarded = bool_at(context, "forwarded") || bool_at(context, "frequently_forwarded");
        if let (Some(product), Value::Object(details)) =
            (present(context, "referred_product"), &mut m.details)
        {
            details.insert("referred_product".to_owned(), product);
        }
    }
    NormalizedItem::Message(m)
}

/// Fills the type-specific parts of `m`. Returns `false` when the type is
/// unknown or its payload is not usable (then the caller marks the message
/// unsupported with the raw JSON).
fn fill_type(m: &mut NormalizedMessage, ty: &str, msg: &Value) -> bool {
    let payload = msg.get(ty);
    match ty {
        "text" => {
            let Some(text @ Value::Object(_)) = payload else {
                return false;
            };
            m.message_type = "text".to_owned();
            m.text = text_at(text, "body");
        }
        "image" | "video" | "document" | "audio" | "sticker" => {
            let Some(media @ Value::Object(_)) = payload else {
                return false;
            };
            m.message_type = ty.to_owned();
            m.text = text_at(media, "caption");
            m.media.push(MediaRef {
                kind: ty.to_owned(),
                media_id: id_at(media, "id"),
                url: text_at(media, "url"),
                mime_type: text_at(media, "mime_type"),
                sha256: text_at(media, "sha256"),
                filename: text_at(media, "filename"),
            });
            m.details = match ty {
                "audio" => object_of([("voice", present(media, "voice"))]),
                "sticker" => object_of([("animated", present(media, "animated"))]),
                _ => Value::Object(Map::new()),
            };
        }
        "location" => {
            let Some(location @ Value::Object(_)) = payload else {
                return false;
            };
            m.message_type = "location".to_owned();
            m.details = location.clone();
        }
        "contacts" => {
            let Some(cards @ Value::Array(_)) = payload else {
                return false;
            };
            m.message_type = "contacts".to_owned();
            m.details = object_of([("contacts", Some(cards.clone()))]);
        }
        "interactive" => {
            let Some(interactive @ Value::Object(_)) = payload else {
                return false;
            };
            let Some(sub_type) = string_at(interactive, "type") else {
                return false;
            };
            let Some(reply @ Value::Object(_)) = interactive.get(&sub_type) else {
                return false;
            };
            match sub_type.as_str() {
                "button_reply" | "list_reply" => {
                    m.text = text_at(reply, "title");
                    m.details = object_of([
                        ("id", present(reply, "id")),
                        ("title", present(reply, "title")),
                        ("description", present(reply, "description")),
                    ]);
                }
                // WhatsApp Flows reply: keep the reply (with `response_json`).
                "nfm_reply" => {
                    m.text = text_at(reply, "body");
                    m.details = reply.clone();
                }
                _ => return false,
            }
            m.message_type = format!("interactive.{sub_type}");
        }
        "button" => {
            let Some(button @ Value::Object(_)) = payload else {
                return false;
            };
            m.message_type = "button".to_owned();
            m.text = text_at(button, "text");
            m.details = object_of([("payload", present(button, "payload"))]);
        }
        "order" => {
            let Some(order @ Value::Object(_)) = payload else {
                return false;
            };
            m.message_type = "order".to_owned();
            m.text = text_at(order, "text");
            m.details = order.clone();
        }
        "reaction" => {
            let Some(reaction @ Value::Object(_)) = payload else {
                return false;
            };
            m.kind = "reaction".to_owned();
            m.message_type = "reaction".to_owned();
            // An empty emoji means the reaction was removed: no text.
            m.text = text_at(reaction, "emoji");
            m.reply_to = id_at(reaction, "message_id");
            m.details = object_of([
                ("emoji", present(reaction, "emoji")),
                ("message_id", present(reaction, "message_id")),
            ]);
        }
        "system" => {
            let Some(system @ Value::Object(_)) = payload else {
                return false;
            };
            m.kind = "system".to_owned();
            m.message_type = match text_at(system, "type") {
                Some(sub_type) => format!("system.{sub_type}"),
                None => "system".to_owned(),
            };
            m.text = text_at(system, "body");
            m.details = system.clone();
            // The user's BSUID changed: the contact moves to the new one
            // and keeps the old one linked (its history stays theirs).
            if m.message_type == "system.user_changed_user_id" {
                if let Some(new) = id_at(system, "user_id") {
                    if m.contact.user_id.as_deref() != Some(new.as_str()) {
                        m.contact.former_user_id = m.contact.user_id.replace(new);
                    }
                }
                if let Some(parent) = id_at(system, "parent_user_id") {
                    m.contact.parent_user_id = Some(parent);
                }
            }
        }
        _ => return false,
    }
    true
}

/// One `value.statuses[]` element. A status needs an `id` and a known
/// `status`; the recipient is whichever identifier it carries
/// (`recipient_id`, `recipient_user_id`, `recipient_parent_user_id` — or
/// `parent_recipient_user_id` —, its `contacts[]` entry), possibly none (a
/// failed status of a message sent by BSUID-less phone carries only the
/// phone). Otherwise it becomes an unsupported page change (field
/// `statuses`) carrying it verbatim.
fn status(ctx: &EntryCtx, business_id: &str, contacts: &Contacts, st: &Value) -> NormalizedItem {
    let timestamp = secs_at(st, "timestamp");
    let parsed =
        string_at(st, "status").and_then(|s| DeliveryStatus::parse(&s.to_ascii_lowercase()));
    let (Some(id), Some(status)) = (id_at(st, "id"), parsed) else {
        return ctx.unsupported("statuses", st.clone(), timestamp);
    };
    let contact = contacts
        .resolve(
            id_at(st, "recipient_id"),
            id_at(st, "recipient_user_id"),
            id_at(st, "recipient_parent_user_id").or_else(|| id_at(st, "parent_recipient_user_id")),
        )
        .unwrap_or_default();
    NormalizedItem::Status(StatusUpdate {
        channel: ctx.channel,
        account_id: ctx.account_id.clone(),
        business_id: business_id.to_owned(),
        provider_message_id: Some(id),
        contact,
        status,
        at: ctx.at(timestamp),
        watermark: None,
        errors: provider_errors(st.get("errors")),
        conversation: present(st, "conversation"),
        pricing: present(st, "pricing"),
        callback_data: text_at(st, "biz_opaque_callback_data"),
    })
}

/// `errors[]` as [`ProviderError`]s (non-objects skipped; a missing code is 0).
fn provider_errors(errors: Option<&Value>) -> Vec<ProviderError> {
    let Some(Value::Array(errors)) = errors else {
        return Vec::new();
    };
    errors
        .iter()
        .filter(|e| e.is_object())
        .map(|e| ProviderError {
            code: e.get("code").and_then(int_of).unwrap_or(0),
            title: text_at(e, "title"),
            detail: e
                .get("error_data")
                .and_then(|d| text_at(d, "details"))
                .or_else(|| text_at(e, "message")),
        })
        .collect()
}
