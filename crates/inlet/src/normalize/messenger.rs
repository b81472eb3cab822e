//! Messenger (`object = page`) and Instagram (`object = instagram`).
//!
//! `entry[].messaging[]` and `entry[].standby[]` (events seen while another
//! app owns the thread, treated the same) carry one event each: `message`
//! (and its echo), `postback`, `delivery`, `read`, `reaction`, `referral`.
//! Anything else (handovers, optins, account linking, edits…) becomes an
//! unsupported page change with field `messaging.<key>`. `entry[].changes[]`
//! go to [`super::changes`]. Timestamps are Unix milliseconds; the account
//! and business id are both `entry[].id`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{bool_at, changes, id_at, millis_at, object_of, present, synth_id, text_at, EntryCtx};
use crate::model::{
    Channel, ContactRef, DeliveryStatus, Direction, MediaRef, NormalizedItem, NormalizedMessage,
    StatusUpdate,
};

/// Normalizes one `entry[]` of a Messenger or Instagram body: messaging
/// events, then standby events, then changes.
pub(super) fn entry(channel: Channel, entry: &Value, out: &mut Vec<NormalizedItem>) {
    let ctx = EntryCtx::new(channel, entry);
    if !entry.is_object() {
        out.push(ctx.unsupported("entry", entry.clone(), None));
        return;
    }
    for key in ["messaging", "standby"] {
        match entry.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(events)) => {
                for ev in events {
                    event(&ctx, ev, out);
                }
            }
            Some(other) => out.push(ctx.unsupported(key, other.clone(), None)),
        }
    }
    match entry.get("changes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for change in items {
                out.push(changes::page_change(&ctx, change));
            }
        }
        Some(other) => out.push(ctx.unsupported("changes", other.clone(), None)),
    }
}

/// What every messaging event shares.
struct Event<'a> {
    ctx: &'a EntryCtx,
    raw: &'a Value,
    /// `sender.id` (the customer, or the page for echoes).
    sender: Option<String>,
    /// `recipient.id` (the page, or the customer for echoes).
    recipient: Option<String>,
    /// `timestamp`, falling back to the entry time, then the epoch.
    at: DateTime<Utc>,
}

impl Event<'_> {
    /// The business endpoint: `entry[].id`, else the page-side id.
    fn business_id(&self, page_side: Option<&String>) -> String {
        if self.ctx.account_id.is_empty() {
            page_side.cloned().unwrap_or_default()
        } else {
            self.ctx.account_id.clone()
        }
    }

    /// The whole event as an unsupported page change, field `messaging.<key>`.
    fn unsupported(&self, key: &str) -> NormalizedItem {
        self.ctx
            .unsupported(&format!("messaging.{key}"), self.raw.clone(), Some(self.at))
    }

    /// A deterministic provider id for events Meta gives none.
    fn synth(&self, business_id: &str, sender: &str, kind: &str, payload: &Value) -> String {
        synth_id(
            &[
                self.ctx.channel.as_str(),
                business_id,
                sender,
                &self.at.timestamp_millis().to_string(),
                kind,
            ],
            Some(payload),
        )
    }

    /// An inbound message-like item from the sender, to fill in further.
    fn inbound(
        &self,
        sender: &str,
        provider_message_id: String,
        kind: &str,
        message_type: &str,
    ) -> NormalizedMessage {
        NormalizedMessage {
            channel: self.ctx.channel,
            account_id: self.ctx.account_id.clone(),
            business_id: self.business_id(self.recipient.as_ref()),
            provider_message_id,
            direction: Direction::Inbound,
            contact: ContactRef::by_id(sender.to_owned(), None),
            kind: kind.to_owned(),
            message_type: message_type.to_owned(),
            text: None,
            media: Vec::new(),
            reply_to: None,
            forwarded: false,
            referral: None,
            details: Value::Object(Map::new()),
            sent_at: self.at,
        }
    }

    /// A receipt from the sender (the customer).
    fn status(
        &self,
        sender: &str,
        provider_message_id: Option<String>,
        status: DeliveryStatus,
        watermark: Option<DateTime<Utc>>,
    ) -> NormalizedItem {
        NormalizedItem::Status(StatusUpdate {
            channel: self.ctx.channel,
            account_id: self.ctx.account_id.clone(),
            business_id: self.business_id(self.recipient.as_ref()),
            provider_message_id,
            contact: ContactRef::by_id(sender.to_owned(), None),
            status,
            at: self.at,
            watermark,
            errors: Vec::new(),
            conversation: None,
            pricing: None,
            callback_data: None,
            raw_status: None,
        })
    }
}

/// One `messaging[]` / `standby[]` element (a delivery may yield several
/// items).
fn event(ctx: &EntryCtx, raw: &Value, out: &mut Vec<NormalizedItem>) {
    let Some(obj) = raw.as_object() else {
        out.push(ctx.unsupported("messaging", raw.clone(), None));
        return;
    };
    let ev = Event {
        ctx,
        raw,
        sender: raw.get("sender").and_then(|s| id_at(s, "id")),
        recipient: raw.get("recipient").and_then(|r| id_at(r, "id")),
        at: ctx.at(millis_at(raw, "timestamp")),
    };
    let item = if let Some(message) = obj.get("message") {
        self::message(&ev, message)
    } else if let Some(postback) = obj.get("postback") {
        self::postback(&ev, postback)
    } else if let Some(delivery) = obj.get("delivery") {
        self::delivery(&ev, delivery, out);
        return;
    } else if let Some(read) = obj.get("read") {
        self::read(&ev, read)
    } else if let Some(reaction) = obj.get("reaction") {
        self::reaction(&ev, reaction)
    } else if let Some(referral) = obj.get("referral") {
        self::referral(&ev, referral)
    } else {
        let key = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "sender" | "recipient" | "timestamp"))
            .map_or("unknown", String::as_str);
        ev.unsupported(key)
    };
    out.push(item);
}

/// `message` (inbound) or its echo (`is_echo: true`, outbound).
fn message(ev: &Event<'_>, msg: &Value) -> NormalizedItem {
    if !msg.is_object() {
        return ev.unsupported("message");
    }
    let echo = bool_at(msg, "is_echo");
    let (customer, page_side) = if echo {
        (ev.recipient.as_ref(), ev.sender.as_ref())
    } else {
        (ev.sender.as_ref(), ev.recipient.as_ref())
    };
    let (Some(customer), Some(mid)) = (customer, id_at(msg, "mid")) else {
        return ev.unsupported("message");
    };

    let mut m = ev.inbound(customer, mid, "message", "text");
    m.business_id = ev.business_id(page_side);
    m.text = text_at(msg, "text");
    m.reply_to = msg.get("reply_to").and_then(|r| id_at(r, "mid"));
    m.referral = present(msg, "referral").or_else(|| present(ev.raw, "referral"));

    let mut details = Map::new();
    if echo {
        m.direction = Direction::Outbound;
        if let Some(app_id) = present(msg, "app_id") {
            details.insert("app_id".to_owned(), app_id);
        }
        if let Some(metadata) = present(msg, "metadata") {
            details.insert("metadata".to_owned(), metadata);
        }
    }
    if let Some(story) = msg.get("reply_to").and_then(|r| present(r, "story")) {
        details.insert("story".to_owned(), story);
    }

    let attachments: Vec<&Value> = msg
        .get("attachments")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|a| a.is_object()).collect())
        .unwrap_or_default();
    let quick_reply = msg.get("quick_reply").filter(|q| q.is_object());

    m.message_type = if bool_at(msg, "is_deleted") {
        "deleted"
    } else if bool_at(msg, "is_unsupported") {
        details.insert("raw".to_owned(), msg.clone());
        "unsupported"
    } else if let Some(quick_reply) = quick_reply {
        if let Some(payload) = present(quick_reply, "payload") {
            details.insert("payload".to_owned(), payload);
        }
        "quick_reply"
    } else if !attachments.is_empty() {
        "attachments"
    } else if m.text.is_some() {
        "text"
    } else {
        details.insert("raw".to_owned(), msg.clone());
        "unsupported"
    }
    .to_owned();
    m.media = attachments
        .into_iter()
        .map(|a| MediaRef {
            kind: text_at(a, "type").unwrap_or_else(|| "unknown".to_owned()),
            media_id: None,
            url: a.get("payload").and_then(|p| text_at(p, "url")),
            mime_type: None,
            sha256: None,
            filename: None,
        })
        .collect();
    m.details = Value::Object(details);
    NormalizedItem::Message(m)
}

/// `postback`: a button tap.
fn postback(ev: &Event<'_>, postback: &Value) -> NormalizedItem {
    let (Some(sender), true) = (ev.sender.as_ref(), postback.is_object()) else {
        return ev.unsupported("postback");
    };
    let business_id = ev.business_id(ev.recipient.as_ref());
    let id = id_at(postback, "mid")
        .unwrap_or_else(|| ev.synth(&business_id, sender, "postback", postback));
    let mut m = ev.inbound(sender, id, "postback", "postback");
    m.text = text_at(postback, "title");
    m.referral = present(postback, "referral");
    m.details = object_of([("payload", present(postback, "payload"))]);
    NormalizedItem::Message(m)
}

/// `delivery`: one delivered status per `mids[]`, or one watermark-only
/// status when there are none.
fn delivery(ev: &Event<'_>, delivery: &Value, out: &mut Vec<NormalizedItem>) {
    let (Some(sender), true) = (ev.sender.as_ref(), delivery.is_object()) else {
        out.push(ev.unsupported("delivery"));
        return;
    };
    let watermark = millis_at(delivery, "watermark");
    let mids: Vec<String> = delivery
        .get("mids")
        .and_then(Value::as_array)
        .map(|mids| {
            mids.iter()
                .filter_map(|mid| match mid {
                    Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if mids.is_empty() {
        out.push(ev.status(sender, None, DeliveryStatus::Delivered, watermark));
        return;
    }
    out.extend(
        mids.into_iter()
            .map(|mid| ev.status(sender, Some(mid), DeliveryStatus::Delivered, watermark)),
    );
}

/// `read`: everything up to the watermark was read.
fn read(ev: &Event<'_>, read: &Value) -> NormalizedItem {
    let (Some(sender), true) = (ev.sender.as_ref(), read.is_object()) else {
        return ev.unsupported("read");
    };
    ev.status(
        sender,
        id_at(read, "mid"),
        DeliveryStatus::Read,
        millis_at(read, "watermark"),
    )
}

/// `reaction`: react / unreact on a message.
fn reaction(ev: &Event<'_>, reaction: &Value) -> NormalizedItem {
    let (Some(sender), true) = (ev.sender.as_ref(), reaction.is_object()) else {
        return ev.unsupported("reaction");
    };
    let business_id = ev.business_id(ev.recipient.as_ref());
    // The payload includes `action`, so an unreact never collides with the
    // react it undoes.
    let id = ev.synth(&business_id, sender, "reaction", reaction);
    let mut m = ev.inbound(sender, id, "reaction", "reaction");
    m.text = text_at(reaction, "emoji");
    m.reply_to = id_at(reaction, "mid");
    m.details = object_of([
        ("reaction", present(reaction, "reaction")),
        ("emoji", present(reaction, "emoji")),
        ("action", present(reaction, "action")),
    ]);
    NormalizedItem::Message(m)
}

/// `referral`: the customer came through an m.me link, ad or QR code.
fn referral(ev: &Event<'_>, referral: &Value) -> NormalizedItem {
    let (Some(sender), true) = (ev.sender.as_ref(), referral.is_object()) else {
        return ev.unsupported("referral");
    };
    let business_id = ev.business_id(ev.recipient.as_ref());
    let id = ev.synth(&business_id, sender, "referral", referral);
    let mut m = ev.inbound(sender, id, "referral", "referral");
    m.referral = Some(referral.clone());
    NormalizedItem::Message(m)
}
