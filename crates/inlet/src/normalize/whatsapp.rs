//! WhatsApp Cloud API (`object = whatsapp_business_account`).
//!
//! `entry[].changes[]` by `field`:
//! - `messages`: `value.messages[]` (inbound messages, group messages with
//!   `group_id`) and `value.statuses[]` (receipts for outbound messages, to
//!   a user or a group). Any message with an id and a sender known by any
//!   identifier is a message; any status with an id and a status is a
//!   status (unknown status names are kept as [`DeliveryStatus::Unknown`]).
//! - `smb_message_echoes` (coexistence): messages sent from the WhatsApp
//!   Business app, outbound messages marked `details.sent_from`.
//! - `history` (coexistence onboarding): past messages of each thread,
//!   imported with their original times and marked `details.history`; a
//!   declined share is a `history` page change.
//! - `smb_app_state_sync`: address-book entries, page changes of kind
//!   `contact` that update the contact.
//! - `user_id_update`: a user's new BSUID, a page change of kind
//!   `user_id_update` whose contact keeps the old one linked.
//! - `business_username_update(s)`, `user_preferences`: typed page changes
//!   (`business_username`, `user_preference`).
//! - `group_lifecycle_update`, `group_participants_update`,
//!   `group_settings_update`, `group_status_update`: page changes of kinds
//!   `group_lifecycle`, … carrying a [`GroupChange`] (subject, participants
//!   who joined or left).
//!
//! Every other field (template status updates, quality updates, account
//! updates…) becomes an unsupported [`PageChange`] named after the field.
//! Timestamps are Unix seconds, as strings or numbers.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{
    bool_at, id_at, id_of, int_of, object_of, present, secs_at, string_at, synth_id, text_at,
    EntryCtx,
};
use crate::model::{
    Channel, ContactRef, DeliveryStatus, Direction, GroupChange, MediaRef, NormalizedItem,
    NormalizedMessage, PageChange, ProviderError, StatusUpdate,
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
        (Some("history"), Some(value @ Value::Object(_)))
            if matches!(value.get("history"), Some(Value::Array(_))) =>
        {
            history_value(ctx, value, out)
        }
        (Some(field @ "smb_app_state_sync"), Some(value @ Value::Object(_)))
            if matches!(value.get("state_sync"), Some(Value::Array(_))) =>
        {
            each_of(ctx, field, value, "state_sync", out, state_sync)
        }
        (Some(field @ "user_id_update"), Some(value @ Value::Object(_)))
            if matches!(value.get("user_id_update"), Some(Value::Array(_))) =>
        {
            each_of(ctx, field, value, "user_id_update", out, user_id_update)
        }
        (Some(field @ "user_preferences"), Some(value @ Value::Object(_)))
            if matches!(value.get("user_preferences"), Some(Value::Array(_))) =>
        {
            each_of(ctx, field, value, "user_preferences", out, user_preference)
        }
        (
            Some(field @ ("business_username_update" | "business_username_updates")),
            Some(value @ Value::Object(_)),
        ) => out.push(business_username(ctx, field, value)),
        (
            Some(
                field @ ("group_lifecycle_update"
                | "group_participants_update"
                | "group_settings_update"
                | "group_status_update"),
            ),
            Some(value @ Value::Object(_)),
        ) if matches!(value.get("groups"), Some(Value::Array(_))) => {
            each_of(ctx, field, value, "groups", out, group_event)
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
    let business_id = business_of(ctx, value);
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
    let business_id = business_of(ctx, value);
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
        // Meta's type name is kept beside the raw object.
        m.details = object_of([
            ("type", present(msg, "type")),
            ("raw", Some(msg.clone())),
            (
                "errors",
                Some(present(msg, "errors").unwrap_or_else(|| Value::Array(Vec::new()))),
            ),
        ]);
    }

    if let (Some(group), Value::Object(details)) = (id_at(msg, "group_id"), &mut m.details) {
        details.insert("group_id".to_owned(), Value::String(group));
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

/// One `value.statuses[]` element. A status needs an `id` and a `status`
/// (a name Inlet does not know is [`DeliveryStatus::Unknown`], Meta's name
/// kept); the recipient is whichever identifier it carries (`recipient_id`,
/// `recipient_user_id`, `recipient_parent_user_id` — or
/// `parent_recipient_user_id` —, its `contacts[]` entry), possibly none (a
/// failed status of a message sent by BSUID-less phone carries only the
/// phone); with `recipient_type: group`, `recipient_id` is the group id.
/// Otherwise it becomes an unsupported page change (field `statuses`)
/// carrying it verbatim.
fn status(ctx: &EntryCtx, business_id: &str, contacts: &Contacts, st: &Value) -> NormalizedItem {
    let timestamp = secs_at(st, "timestamp");
    let name = id_at(st, "status").map(|s| s.trim().to_ascii_lowercase());
    let (Some(id), Some(name)) = (id_at(st, "id"), name) else {
        return ctx.unsupported("statuses", st.clone(), timestamp);
    };
    let (status, raw_status) = match DeliveryStatus::parse(&name) {
        Some(known) => (known, None),
        None => (DeliveryStatus::Unknown, Some(name)),
    };
    let contact = if string_at(st, "recipient_type").as_deref() == Some("group") {
        id_at(st, "recipient_id")
            .map(|group| ContactRef::group(group, None))
            .unwrap_or_default()
    } else {
        contacts
            .resolve(
                id_at(st, "recipient_id"),
                id_at(st, "recipient_user_id"),
                id_at(st, "recipient_parent_user_id")
                    .or_else(|| id_at(st, "parent_recipient_user_id")),
            )
            .unwrap_or_default()
    };
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
        raw_status,
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

/// The business phone number id of a change's `value` (`metadata`), else
/// the account id.
fn business_of(ctx: &EntryCtx, value: &Value) -> String {
    value
        .get("metadata")
        .and_then(|m| id_at(m, "phone_number_id"))
        .unwrap_or_else(|| ctx.account_id.clone())
}

/// Normalizes each element of `value[key]` (an array) with `one`; an
/// element it cannot read becomes an unsupported page change of `field`.
fn each_of(
    ctx: &EntryCtx,
    field: &str,
    value: &Value,
    key: &str,
    out: &mut Vec<NormalizedItem>,
    one: fn(&EntryCtx, &str, &Value, &Value) -> Option<NormalizedItem>,
) {
    let Some(Value::Array(items)) = value.get(key) else {
        return;
    };
    for item in items {
        let at = secs_at(item, "timestamp")
            .or_else(|| item.get("metadata").and_then(|m| secs_at(m, "timestamp")));
        out.push(
            one(ctx, field, value, item)
                .unwrap_or_else(|| ctx.unsupported(field, item.clone(), at)),
        );
    }
}

/// A typed WhatsApp page change of `field` and `kind` (no verb, author,
/// text or group: callers set what they have with struct update syntax).
fn typed_change(
    ctx: &EntryCtx,
    field: &str,
    kind: &str,
    external_id: String,
    at: Option<chrono::DateTime<chrono::Utc>>,
    value: &Value,
) -> PageChange {
    PageChange {
        channel: ctx.channel,
        account_id: ctx.account_id.clone(),
        field: field.to_owned(),
        kind: kind.to_owned(),
        verb: None,
        external_id,
        from: None,
        text: None,
        occurred_at: ctx.at(at),
        value: value.clone(),
        group: None,
    }
}

/// The `value` of a `history` change (coexistence onboarding): chunks of
/// past chats, `history[].threads[].messages[]`. Each message is imported
/// with its original time, marked `details.history = true` (with Meta's
/// `history_context.status` and the chunk's `phase` / `chunk_order`), so it
/// is not counted as new activity. A message `from` the business (or with
/// a `to`, an echo of the app) is outbound; the customer is the thread.
/// A chunk with `errors` (the business declined to share) is a `history`
/// page change with verb `declined`.
fn history_value(ctx: &EntryCtx, value: &Value, out: &mut Vec<NormalizedItem>) {
    let business_id = business_of(ctx, value);
    // `display_phone_number` may be formatted (`+1 555-000-9999`): compare
    // digits.
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let business_phone = value
        .get("metadata")
        .and_then(|m| id_at(m, "display_phone_number"))
        .map(|p| digits(&p))
        .filter(|p| !p.is_empty());
    let Some(Value::Array(chunks)) = value.get("history") else {
        return;
    };
    for chunk in chunks {
        let meta = chunk.get("metadata");
        if let Some(errors @ Value::Array(_)) = chunk.get("errors") {
            let external_id = synth_id(
                &[ctx.channel.as_str(), &ctx.account_id, "history"],
                Some(chunk),
            );
            out.push(NormalizedItem::PageChange(PageChange {
                verb: Some("declined".to_owned()),
                text: provider_errors(Some(errors))
                    .first()
                    .and_then(|e| e.title.clone()),
                ..typed_change(ctx, "history", "history", external_id, None, chunk)
            }));
            continue;
        }
        let Some(Value::Array(threads)) = chunk.get("threads") else {
            out.push(ctx.unsupported("history", chunk.clone(), None));
            continue;
        };
        for thread in threads {
            let thread_id = id_at(thread, "id");
            let Some(Value::Array(messages)) = thread.get("messages") else {
                out.push(ctx.unsupported("history", thread.clone(), None));
                continue;
            };
            for msg in messages {
                let from = id_at(msg, "from");
                let to = id_at(msg, "to");
                let outbound = to.is_some()
                    || (business_phone.is_some()
                        && from.as_deref().map(digits) == business_phone
                        && from != thread_id);
                let customer_id = if outbound {
                    thread_id.clone().or(to)
                } else {
                    thread_id.clone().or(from.clone())
                };
                let (phone, bsuid) = match customer_id {
                    Some(id) if id.contains('.') => (None, Some(id)),
                    other => (other, None),
                };
                let (phone, bsuid, parent) = if outbound {
                    (phone, bsuid, None)
                } else {
                    (
                        phone.or_else(|| from.filter(|f| !f.contains('.'))),
                        bsuid.or_else(|| id_at(msg, "from_user_id")),
                        id_at(msg, "from_parent_user_id"),
                    )
                };
                let contact = ContactRef::whatsapp(phone, bsuid, parent, None, None);
                let direction = if outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                let mut item = message_of(ctx, &business_id, contact, direction, "history", msg);
                if let NormalizedItem::Message(m) = &mut item {
                    if let Value::Object(details) = &mut m.details {
                        details.insert("history".to_owned(), Value::Bool(true));
                        if let Some(status) = msg
                            .get("history_context")
                            .and_then(|c| present(c, "status"))
                        {
                            details.insert("history_status".to_owned(), status);
                        }
                        for key in ["phase", "chunk_order"] {
                            if let Some(v) = meta.and_then(|m| present(m, key)) {
                                details.insert(format!("history_{key}"), v);
                            }
                        }
                    }
                }
                out.push(item);
            }
        }
    }
}

/// One `state_sync[]` element of `smb_app_state_sync`: an address-book
/// entry of the WhatsApp Business app (`type: contact`), added or edited
/// (`action: add`, which updates the contact's name) or removed
/// (`remove`, kept as a record; the contact and its history stay). Kind
/// `contact`, external id `{phone}/{timestamp}` (each edit is its own
/// change).
fn state_sync(ctx: &EntryCtx, field: &str, _value: &Value, item: &Value) -> Option<NormalizedItem> {
    if string_at(item, "type").as_deref() != Some("contact") {
        return None;
    }
    let contact = item.get("contact")?;
    let phone = id_at(contact, "phone_number").or_else(|| id_at(contact, "wa_id"));
    let name = text_at(contact, "full_name").or_else(|| text_at(contact, "first_name"));
    let person = ContactRef::whatsapp(
        phone,
        id_at(contact, "user_id"),
        id_at(contact, "parent_user_id"),
        contact.get("profile").and_then(|p| id_at(p, "username")),
        name.clone(),
    )?;
    let at = item.get("metadata").and_then(|m| secs_at(m, "timestamp"));
    let stamp = item
        .get("metadata")
        .and_then(|m| string_at(m, "timestamp"))
        .unwrap_or_default();
    let external_id = format!("{}/{stamp}", person.external_id);
    Some(NormalizedItem::PageChange(PageChange {
        verb: text_at(item, "action"),
        from: Some(person),
        text: name,
        ..typed_change(ctx, field, "contact", external_id, at, item)
    }))
}

/// A `{previous, current}` pair (or a plain string, taken as current).
fn previous_current(value: Option<&Value>) -> (Option<String>, Option<String>) {
    match value {
        Some(v @ Value::Object(_)) => (id_at(v, "previous"), id_at(v, "current")),
        Some(v) => (None, id_of(v)),
        None => (None, None),
    }
}

/// One `user_id_update[]` element: a user's BSUID changed
/// (`user_id.previous` → `user_id.current`, likewise `parent_user_id`).
/// Kind `user_id_update`; its contact has the new BSUID and keeps the old
/// one linked (`former_user_id`), so the contact moves, history kept.
fn user_id_update(
    ctx: &EntryCtx,
    field: &str,
    value: &Value,
    item: &Value,
) -> Option<NormalizedItem> {
    let (previous, current) = previous_current(item.get("user_id"));
    let (_, parent) = previous_current(item.get("parent_user_id"));
    let current = current?;
    let contacts = contact_names(value.get("contacts"));
    let wa_id = id_at(item, "wa_id");
    let entry = contacts
        .find(&[&wa_id, &Some(current.clone()), &previous])
        .cloned()
        .unwrap_or_default();
    let mut person = ContactRef::whatsapp(
        wa_id.or(entry.wa_id),
        Some(current.clone()),
        parent.or(entry.parent_user_id),
        entry.username,
        entry.name,
    )?;
    if previous.as_deref() != Some(current.as_str()) {
        person.former_user_id = previous.clone();
    }
    let external_id = format!("{}->{current}", previous.as_deref().unwrap_or("-"));
    Some(NormalizedItem::PageChange(PageChange {
        from: Some(person),
        ..typed_change(
            ctx,
            field,
            "user_id_update",
            external_id,
            secs_at(item, "timestamp"),
            item,
        )
    }))
}

/// One `user_preferences[]` element: a user stopped or resumed marketing
/// messages. Kind `user_preference`, verb the preference (`stop`,
/// `resume`), text Meta's description, from the user.
fn user_preference(
    ctx: &EntryCtx,
    field: &str,
    value: &Value,
    item: &Value,
) -> Option<NormalizedItem> {
    let contacts = contact_names(value.get("contacts"));
    let person = contacts.resolve(
        id_at(item, "wa_id"),
        id_at(item, "user_id"),
        id_at(item, "parent_user_id"),
    )?;
    let preference = text_at(item, "value");
    let stamp = string_at(item, "timestamp").unwrap_or_default();
    let category = string_at(item, "category").unwrap_or_default();
    let external_id = format!("{}/{category}/{stamp}", person.external_id);
    Some(NormalizedItem::PageChange(PageChange {
        verb: preference,
        from: Some(person),
        text: text_at(item, "detail"),
        ..typed_change(
            ctx,
            field,
            "user_preference",
            external_id,
            secs_at(item, "timestamp"),
            item,
        )
    }))
}

/// A `business_username_update(s)` value: the business's username was
/// approved, reserved or deleted. Kind `business_username`, verb the
/// status, text the username.
fn business_username(ctx: &EntryCtx, field: &str, value: &Value) -> NormalizedItem {
    let external_id = synth_id(&[ctx.channel.as_str(), &ctx.account_id, field], Some(value));
    NormalizedItem::PageChange(PageChange {
        verb: text_at(value, "status"),
        text: text_at(value, "username"),
        ..typed_change(
            ctx,
            field,
            "business_username",
            external_id,
            secs_at(value, "timestamp"),
            value,
        )
    })
}

/// A participant of `added_participants[]` / `removed_participants[]`:
/// an object with whichever identifiers it carries (or a bare id); none
/// when it failed (`errors`).
fn participant(p: &Value) -> Option<ContactRef> {
    match p {
        Value::Object(_) => {
            if p.get("errors").is_some_and(|e| !e.is_null()) {
                return None;
            }
            let user_id = id_at(p, "user_id").or_else(|| id_at(p, "recipient_user_id"));
            let parent =
                id_at(p, "parent_user_id").or_else(|| id_at(p, "parent_recipient_user_id"));
            let wa_id =
                id_at(p, "wa_id").or_else(|| id_at(p, "input").filter(|i| !i.contains('.')));
            let profile = p.get("profile");
            ContactRef::whatsapp(
                wa_id,
                user_id,
                parent,
                profile.and_then(|pr| id_at(pr, "username")),
                profile.and_then(|pr| text_at(pr, "name")),
            )
        }
        other => {
            let id = id_of(other)?;
            if id.contains('.') {
                ContactRef::whatsapp(None, Some(id), None, None, None)
            } else {
                ContactRef::whatsapp(Some(id), None, None, None, None)
            }
        }
    }
}

fn participants(item: &Value, key: &str) -> Vec<ContactRef> {
    match item.get(key) {
        Some(Value::Array(list)) => list.iter().filter_map(participant).collect(),
        _ => Vec::new(),
    }
}

/// A subject the event sets: `subject` (creation), or the `group_subject`
/// setting (a string, or an object whose `text` applied unless
/// `update_successful` is false).
fn subject_of(item: &Value) -> Option<String> {
    let failed = item.get("errors").is_some_and(|e| !e.is_null());
    match item.get("group_subject") {
        Some(Value::Object(_)) => {
            let setting = item.get("group_subject")?;
            if setting.get("update_successful") == Some(&Value::Bool(false)) {
                return None;
            }
            text_at(setting, "text")
        }
        Some(_) => text_at(item, "group_subject"),
        None if failed => None,
        None => text_at(item, "subject"),
    }
}

/// One `groups[]` element of a group webhook. Kind `group_lifecycle`,
/// `group_participants`, `group_settings` or `group_status` (the field
/// without `_update`), verb Meta's `type` (`group_create`,
/// `group_participants_add`, …), external id `{group_id}/{request_id or
/// timestamp}`, and a [`GroupChange`]: the subject it sets, participants
/// added or joining and removed or leaving.
fn group_event(ctx: &EntryCtx, field: &str, value: &Value, item: &Value) -> Option<NormalizedItem> {
    let group_id = id_at(item, "group_id")?;
    let kind = field.trim_end_matches("_update");
    let verb = text_at(item, "type");
    let subject = subject_of(item);
    let stamp = id_at(item, "request_id")
        .or_else(|| string_at(item, "timestamp"))
        .unwrap_or_default();
    let group = GroupChange {
        business_id: business_of(ctx, value),
        group_id: group_id.clone(),
        subject: subject.clone(),
        joined: participants(item, "added_participants"),
        left: participants(item, "removed_participants"),
    };
    let from = item.get("initiated_by").and_then(participant);
    Some(NormalizedItem::PageChange(PageChange {
        verb,
        from,
        text: subject,
        group: Some(group),
        ..typed_change(
            ctx,
            field,
            kind,
            format!("{group_id}/{stamp}"),
            secs_at(item, "timestamp"),
            item,
        )
    }))
}
