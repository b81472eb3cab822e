//! Fixture-driven tests: one per file in `tests/fixtures/meta/` (expectations
//! from its README), plus determinism and malformed-body tests.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{check_shape, normalize, NormalizeError};
use crate::model::{
    Channel, DeliveryStatus, Direction, IdentityKind, NormalizedItem, NormalizedMessage,
    PageChange, StatusUpdate,
};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/meta/",
                $name,
                ".json"
            )) as &[u8],
        )
    };
}

/// Every fixture, by file stem.
pub(super) const FIXTURES: &[(&str, &[u8])] = &[
    fixture!("fb_delivery"),
    fixture!("fb_echo"),
    fixture!("fb_feed_comment"),
    fixture!("fb_leadgen"),
    fixture!("fb_message_attachment"),
    fixture!("fb_message_text"),
    fixture!("fb_postback"),
    fixture!("fb_reaction"),
    fixture!("fb_read"),
    fixture!("fb_referral"),
    fixture!("ig_message_attachment"),
    fixture!("ig_message_text"),
    fixture!("ig_reaction"),
    fixture!("ig_story_reply"),
    fixture!("wa_audio"),
    fixture!("wa_batch_multi"),
    fixture!("wa_bsuid_phone_and_user_id"),
    fixture!("wa_bsuid_phone_only"),
    fixture!("wa_bsuid_status_read"),
    fixture!("wa_bsuid_user_changed_user_id"),
    fixture!("wa_bsuid_user_id_only"),
    fixture!("wa_business_username_update"),
    fixture!("wa_button"),
    fixture!("wa_contacts"),
    fixture!("wa_document"),
    fixture!("wa_group_lifecycle"),
    fixture!("wa_group_message"),
    fixture!("wa_group_participants"),
    fixture!("wa_group_settings"),
    fixture!("wa_group_status"),
    fixture!("wa_group_status_update"),
    fixture!("wa_history"),
    fixture!("wa_history_declined"),
    fixture!("wa_image"),
    fixture!("wa_interactive_button_reply"),
    fixture!("wa_interactive_list_reply"),
    fixture!("wa_location"),
    fixture!("wa_order"),
    fixture!("wa_reaction"),
    fixture!("wa_smb_app_state_sync"),
    fixture!("wa_smb_echo"),
    fixture!("wa_status_delivered"),
    fixture!("wa_status_failed"),
    fixture!("wa_status_read"),
    fixture!("wa_status_sent"),
    fixture!("wa_status_unknown"),
    fixture!("wa_sticker"),
    fixture!("wa_system"),
    fixture!("wa_text"),
    fixture!("wa_text_with_referral"),
    fixture!("wa_unsupported"),
    fixture!("wa_user_id_update"),
    fixture!("wa_user_preferences"),
    fixture!("wa_video"),
];

fn body(name: &str) -> &'static [u8] {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn items(name: &str) -> Vec<NormalizedItem> {
    normalize(body(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn message(item: &NormalizedItem) -> &NormalizedMessage {
    match item {
        NormalizedItem::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn status(item: &NormalizedItem) -> &StatusUpdate {
    match item {
        NormalizedItem::Status(s) => s,
        other => panic!("expected a status, got {other:?}"),
    }
}

fn change(item: &NormalizedItem) -> &PageChange {
    match item {
        NormalizedItem::PageChange(c) => c,
        other => panic!("expected a page change, got {other:?}"),
    }
}

fn only(name: &str) -> NormalizedItem {
    let mut items = items(name);
    assert_eq!(items.len(), 1, "{name}: {items:#?}");
    items.remove(0)
}

fn only_message(name: &str) -> NormalizedMessage {
    message(&only(name)).clone()
}

fn secs(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or_else(|| panic!("bad secs {s}"))
}

fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(|| panic!("bad millis {ms}"))
}

const WABA: &str = "100000000000001";
const PHONE_ID: &str = "200000000000002";
const ANA: &str = "15550001111";
const PAGE: &str = "300000000000003";
const PSID: &str = "4000000000000004";
const IG: &str = "17841400000000006";
const IGSID: &str = "6000000000000007";

/// The common part of every inbound WhatsApp message from Ana.
fn assert_wa_inbound(m: &NormalizedMessage, kind: &str, message_type: &str, text: Option<&str>) {
    assert_eq!(m.channel, Channel::Whatsapp);
    assert_eq!(m.account_id, WABA);
    assert_eq!(m.business_id, PHONE_ID);
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.contact.external_id, ANA);
    assert_eq!(m.kind, kind);
    assert_eq!(m.message_type, message_type);
    assert_eq!(m.text.as_deref(), text);
    assert!(m.provider_message_id.starts_with("wamid."));
    assert!(!m.forwarded);
}

/// The common part of a WhatsApp media message.
fn assert_wa_media(m: &NormalizedMessage, kind: &str, media_id: &str, mime: &str) {
    assert_eq!(m.media.len(), 1, "{:?}", m.media);
    let media = &m.media[0];
    assert_eq!(media.kind, kind);
    assert_eq!(media.media_id.as_deref(), Some(media_id));
    assert_eq!(media.mime_type.as_deref(), Some(mime));
    assert!(media.sha256.is_some());
    assert_eq!(media.url, None);
}

// ---------------------------------------------------------------------------
// WhatsApp

#[test]
fn wa_text() {
    let m = only_message("wa_text");
    assert_wa_inbound(
        &m,
        "message",
        "text",
        Some("Hi, is the blue kettle still in stock?"),
    );
    assert_eq!(m.contact.name.as_deref(), Some("Ana Testerman"));
    assert_eq!(
        m.provider_message_id,
        "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA="
    );
    assert_eq!(m.sent_at, secs(1_795_165_200));
    assert_eq!(m.sent_at.to_rfc3339(), "2026-11-20T09:00:00+00:00");
    assert!(m.media.is_empty());
    assert_eq!(m.reply_to, None);
    assert_eq!(m.referral, None);
    assert_eq!(m.details, json!({}));
}

#[test]
fn wa_image() {
    let m = only_message("wa_image");
    assert_wa_inbound(
        &m,
        "message",
        "image",
        Some("This is the scratch on the lid"),
    );
    assert_eq!(m.contact.name.as_deref(), Some("Ana Testerman"));
    assert_wa_media(&m, "image", "910000000000002", "image/jpeg");
    assert_eq!(m.media[0].filename, None);
}

#[test]
fn wa_audio() {
    let m = only_message("wa_audio");
    assert_wa_inbound(&m, "message", "audio", None);
    assert_wa_media(&m, "audio", "910000000000003", "audio/mpeg");
    assert_eq!(m.details, json!({ "voice": false }));
}

#[test]
fn wa_video() {
    let m = only_message("wa_video");
    assert_wa_inbound(&m, "message", "video", Some("Unboxing clip"));
    assert_wa_media(&m, "video", "910000000000004", "video/mp4");
}

#[test]
fn wa_document() {
    let m = only_message("wa_document");
    assert_wa_inbound(&m, "message", "document", Some("Invoice for order 4471"));
    assert_wa_media(&m, "document", "910000000000005", "application/pdf");
    assert_eq!(m.media[0].filename.as_deref(), Some("invoice-4471.pdf"));
}

#[test]
fn wa_sticker() {
    let m = only_message("wa_sticker");
    assert_wa_inbound(&m, "message", "sticker", None);
    assert_wa_media(&m, "sticker", "910000000000006", "image/webp");
    assert_eq!(m.details, json!({ "animated": false }));
}

#[test]
fn wa_location() {
    let m = only_message("wa_location");
    assert_wa_inbound(&m, "message", "location", None);
    assert!(m.media.is_empty());
    assert_eq!(m.details["latitude"], json!(40.7411));
    assert_eq!(m.details["longitude"], json!(-73.9897));
    assert_eq!(m.details["name"], json!("Fixture Hardware Store"));
    assert_eq!(m.details["address"], json!("123 Example Ave, Springfield"));
}

#[test]
fn wa_contacts() {
    let m = only_message("wa_contacts");
    assert_wa_inbound(&m, "message", "contacts", None);
    let cards = m.details["contacts"].as_array().expect("contacts array");
    assert_eq!(cards.len(), 1);
    assert_eq!(cards[0]["name"]["formatted_name"], json!("Dana Q. Example"));
    assert_eq!(cards[0]["phones"][0]["phone"], json!("+1 555-000-4444"));
    assert_eq!(cards[0]["phones"][0]["wa_id"], json!("15550004444"));
    assert_eq!(cards[0]["phones"][1]["phone"], json!("+1 555-000-4445"));
}

#[test]
fn wa_interactive_button_reply() {
    let m = only_message("wa_interactive_button_reply");
    assert_wa_inbound(
        &m,
        "message",
        "interactive.button_reply",
        Some("Yes, confirm"),
    );
    assert_eq!(
        m.details,
        json!({ "id": "confirm_order_4471", "title": "Yes, confirm" })
    );
    assert_eq!(
        m.reply_to.as_deref(),
        Some("wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMDkA")
    );
}

#[test]
fn wa_interactive_list_reply() {
    let m = only_message("wa_interactive_list_reply");
    assert_wa_inbound(
        &m,
        "message",
        "interactive.list_reply",
        Some("Tuesday 10:00"),
    );
    assert_eq!(
        m.details,
        json!({
            "id": "slot_tue_1000",
            "title": "Tuesday 10:00",
            "description": "Springfield branch, 30 min"
        })
    );
    assert!(m.reply_to.is_some());
}

#[test]
fn wa_button() {
    let m = only_message("wa_button");
    assert_wa_inbound(&m, "message", "button", Some("Stop promotions"));
    assert_eq!(m.details, json!({ "payload": "STOP_PROMOS" }));
    assert_eq!(
        m.reply_to.as_deref(),
        Some("wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMEIA")
    );
}

#[test]
fn wa_reaction() {
    let m = only_message("wa_reaction");
    assert_wa_inbound(&m, "reaction", "reaction", Some("👍"));
    let target = "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMEMA";
    assert_eq!(m.reply_to.as_deref(), Some(target));
    assert_eq!(m.details, json!({ "emoji": "👍", "message_id": target }));
}

#[test]
fn wa_order() {
    let m = only_message("wa_order");
    assert_wa_inbound(&m, "message", "order", Some("Please gift wrap"));
    assert_eq!(m.details["catalog_id"], json!("700000000000008"));
    let items = m.details["product_items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["product_retailer_id"], json!("SKU-KETTLE-BLUE"));
    assert_eq!(items[0]["quantity"], json!(1));
    assert_eq!(items[0]["item_price"], json!(39.99));
    assert_eq!(items[0]["currency"], json!("USD"));
    assert_eq!(items[1]["product_retailer_id"], json!("SKU-MUG-SET-4"));
    assert_eq!(items[1]["quantity"], json!(2));
    assert_eq!(items[1]["item_price"], json!(12.5));
}

#[test]
fn wa_system() {
    let m = only_message("wa_system");
    assert_wa_inbound(
        &m,
        "system",
        "system.user_changed_number",
        Some("User Ana Testerman changed from 15550001111 to 15550001112"),
    );
    assert_eq!(m.contact.name, None, "no contacts array in this fixture");
    assert_eq!(m.details["wa_id"], json!("15550001112"));
    assert_eq!(m.details["type"], json!("user_changed_number"));
}

#[test]
fn wa_unsupported() {
    let m = only_message("wa_unsupported");
    assert_wa_inbound(&m, "message", "unsupported", None);
    assert_eq!(m.details["raw"]["type"], json!("unsupported"));
    assert_eq!(m.details["raw"]["id"], json!(m.provider_message_id));
    assert_eq!(m.details["errors"][0]["code"], json!(131051));
}

#[test]
fn wa_text_with_referral() {
    let m = only_message("wa_text_with_referral");
    assert_wa_inbound(
        &m,
        "message",
        "text",
        Some("Hi! I saw your ad about the winter sale"),
    );
    let referral = m.referral.as_ref().expect("referral");
    assert_eq!(referral["source_type"], json!("ad"));
    assert_eq!(referral["source_id"], json!("120200000000000010"));
    assert_eq!(referral["headline"], json!("Chat with us on WhatsApp"));
    assert!(referral["ctwa_clid"].is_string());
}

const SENT_WAMID: &str = "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMTAA";

fn assert_wa_status(s: &StatusUpdate, id: &str, recipient: &str, st: DeliveryStatus) {
    assert_eq!(s.channel, Channel::Whatsapp);
    assert_eq!(s.provider_message_id.as_deref(), Some(id));
    assert_eq!(s.contact.external_id, recipient);
    assert_eq!(s.status, st);
    assert_eq!(s.watermark, None);
}

#[test]
fn wa_status_sent() {
    let item = only("wa_status_sent");
    let s = status(&item);
    assert_wa_status(s, SENT_WAMID, ANA, DeliveryStatus::Sent);
    assert_eq!(s.account_id, WABA);
    assert_eq!(s.business_id, PHONE_ID);
    assert_eq!(s.at, secs(1_795_166_100));
    assert!(s.errors.is_empty());
    let conversation = s.conversation.as_ref().expect("conversation");
    assert_eq!(conversation["expiration_timestamp"], json!("1795252500"));
    let pricing = s.pricing.as_ref().expect("pricing");
    assert_eq!(pricing["pricing_model"], json!("PMP"));
    assert_eq!(pricing["category"], json!("utility"));
}

#[test]
fn wa_status_delivered() {
    let item = only("wa_status_delivered");
    let s = status(&item);
    assert_wa_status(s, SENT_WAMID, ANA, DeliveryStatus::Delivered);
    let conversation = s.conversation.as_ref().expect("conversation");
    assert!(conversation.get("expiration_timestamp").is_none());
    assert!(s.pricing.is_some());
}

#[test]
fn wa_status_read() {
    let item = only("wa_status_read");
    let s = status(&item);
    assert_wa_status(s, SENT_WAMID, ANA, DeliveryStatus::Read);
    assert_eq!(s.conversation, None);
    assert_eq!(s.pricing, None);
}

#[test]
fn wa_status_failed() {
    let item = only("wa_status_failed");
    let s = status(&item);
    assert_wa_status(
        s,
        "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMTEA",
        ANA,
        DeliveryStatus::Failed,
    );
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].code, 131_047);
    assert_eq!(s.errors[0].title.as_deref(), Some("Re-engagement message"));
    assert!(s.errors[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.starts_with("Message failed to send because more than 24 hours")));
}

#[test]
fn wa_batch_multi() {
    let items = items("wa_batch_multi");
    assert_eq!(items.len(), 6, "{items:#?}");
    let kinds: Vec<&str> = items.iter().map(NormalizedItem::kind_name).collect();
    assert_eq!(
        kinds,
        ["message", "message", "message", "status", "status", "status"]
    );

    let first = message(&items[0]);
    assert_wa_inbound(
        first,
        "message",
        "text",
        Some("First question: do you ship to Canada?"),
    );
    assert_eq!(first.contact.name.as_deref(), Some("Ana Testerman"));

    let second = message(&items[1]);
    assert_eq!(second.contact.external_id, "15550002222");
    assert_eq!(second.contact.name.as_deref(), Some("Bruno Fakeman"));
    assert_eq!(
        second.text.as_deref(),
        Some("Hello, I need help with my return")
    );
    assert_eq!(second.business_id, PHONE_ID);

    let third = message(&items[2]);
    assert_wa_inbound(third, "message", "image", None);
    assert_eq!(third.media[0].media_id.as_deref(), Some("910000000000020"));

    let expected = [
        ("15550003333", DeliveryStatus::Sent, Some("marketing")),
        ("15550002222", DeliveryStatus::Delivered, Some("service")),
        (ANA, DeliveryStatus::Read, None),
    ];
    for (item, (recipient, st, category)) in items[3..].iter().zip(expected) {
        let s = status(item);
        assert_eq!(s.account_id, "100000000000009");
        assert_eq!(s.business_id, "200000000000007");
        assert_eq!(s.contact.external_id, recipient);
        assert_eq!(s.status, st);
        assert_eq!(
            s.pricing.as_ref().and_then(|p| p["category"].as_str()),
            category
        );
    }
}

// ---------------------------------------------------------------------------
// Messenger

fn assert_fb_inbound(m: &NormalizedMessage, kind: &str, message_type: &str, text: Option<&str>) {
    assert_eq!(m.channel, Channel::Messenger);
    assert_eq!(m.account_id, PAGE);
    assert_eq!(m.business_id, PAGE);
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.contact.external_id, PSID);
    assert_eq!(m.contact.name, None);
    assert_eq!(m.kind, kind);
    assert_eq!(m.message_type, message_type);
    assert_eq!(m.text.as_deref(), text);
}

#[test]
fn fb_message_text() {
    let m = only_message("fb_message_text");
    assert_fb_inbound(
        &m,
        "message",
        "text",
        Some("Hello! What are your opening hours?"),
    );
    assert_eq!(
        m.provider_message_id,
        "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDAxLWludmVudGVk"
    );
    assert_eq!(m.sent_at, millis(1_795_166_400_123));
    assert_eq!(m.details, json!({}));
}

#[test]
fn fb_message_attachment() {
    let m = only_message("fb_message_attachment");
    assert_fb_inbound(&m, "message", "attachments", None);
    assert_eq!(m.media.len(), 2);
    assert_eq!(m.media[0].kind, "image");
    assert!(m.media[0]
        .url
        .as_deref()
        .is_some_and(|u| u.contains("fixture_000002_n.jpg")));
    assert_eq!(m.media[1].kind, "file");
    assert!(m.media[1]
        .url
        .as_deref()
        .is_some_and(|u| u.contains("fixture_receipt.pdf")));
    assert!(m.media.iter().all(|media| media.media_id.is_none()));
}

#[test]
fn fb_postback() {
    let m = only_message("fb_postback");
    assert_fb_inbound(&m, "postback", "postback", Some("Get Started"));
    assert_eq!(
        m.provider_message_id,
        "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDAzLWludmVudGVk"
    );
    assert_eq!(m.details, json!({ "payload": "GET_STARTED" }));
}

#[test]
fn fb_postback_without_mid_gets_a_stable_synthetic_id() {
    let mut v: Value = serde_json::from_slice(body("fb_postback")).expect("json");
    if let Some(pb) = v["entry"][0]["messaging"][0]["postback"].as_object_mut() {
        pb.remove("mid");
    }
    let bytes = serde_json::to_vec(&v).expect("serialize");
    let a = normalize(&bytes).expect("ok");
    let b = normalize(&bytes).expect("ok");
    assert_eq!(a, b);
    let id = &message(&a[0]).provider_message_id;
    assert!(
        id.starts_with("synth:") && id.len() == "synth:".len() + 32,
        "{id}"
    );
}

#[test]
fn fb_delivery() {
    let items = items("fb_delivery");
    assert_eq!(items.len(), 2, "{items:#?}");
    let mids = [
        "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDA0LWludmVudGVk",
        "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDA1LWludmVudGVk",
    ];
    for (item, mid) in items.iter().zip(mids) {
        let s = status(item);
        assert_eq!(s.channel, Channel::Messenger);
        assert_eq!(s.business_id, PAGE);
        assert_eq!(s.status, DeliveryStatus::Delivered);
        assert_eq!(s.provider_message_id.as_deref(), Some(mid));
        assert_eq!(s.contact.external_id, PSID);
        assert_eq!(s.watermark, Some(millis(1_795_166_579_123)));
        assert_eq!(s.at, millis(1_795_166_580_123));
    }
}

#[test]
fn fb_read() {
    let item = only("fb_read");
    let s = status(&item);
    assert_eq!(s.status, DeliveryStatus::Read);
    assert_eq!(s.provider_message_id, None);
    assert_eq!(s.contact.external_id, PSID);
    assert_eq!(s.watermark, Some(millis(1_795_166_639_123)));
}

#[test]
fn fb_reaction() {
    let m = only_message("fb_reaction");
    assert_fb_inbound(&m, "reaction", "reaction", Some("❤️"));
    assert_eq!(
        m.reply_to.as_deref(),
        Some("m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDA2LWludmVudGVk")
    );
    assert_eq!(
        m.details,
        json!({ "reaction": "love", "emoji": "❤️", "action": "react" })
    );
    assert!(m.provider_message_id.starts_with("synth:"));
}

#[test]
fn fb_unreact_does_not_collide_with_react() {
    let react = only_message("fb_reaction");
    let mut v: Value = serde_json::from_slice(body("fb_reaction")).expect("json");
    v["entry"][0]["messaging"][0]["reaction"] = json!({
        "action": "unreact",
        "mid": "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDA2LWludmVudGVk"
    });
    let bytes = serde_json::to_vec(&v).expect("serialize");
    let items = normalize(&bytes).expect("ok");
    let unreact = message(&items[0]);
    assert_eq!(unreact.text, None);
    assert_eq!(unreact.details["action"], json!("unreact"));
    assert_ne!(unreact.provider_message_id, react.provider_message_id);
}

#[test]
fn fb_echo() {
    let m = only_message("fb_echo");
    assert_eq!(m.direction, Direction::Outbound);
    assert_eq!(m.contact.external_id, PSID);
    assert_eq!(m.business_id, PAGE);
    assert_eq!(m.kind, "message");
    assert_eq!(m.message_type, "text");
    assert_eq!(
        m.text.as_deref(),
        Some("We are open 9am-6pm, Monday to Saturday.")
    );
    assert_eq!(m.details["app_id"], json!(500_000_000_000_005_u64));
    assert_eq!(m.details["metadata"], json!("agent:42"));
}

#[test]
fn fb_referral() {
    let m = only_message("fb_referral");
    assert_fb_inbound(&m, "referral", "referral", None);
    assert_eq!(
        m.referral,
        Some(json!({ "ref": "winter_promo_qr", "source": "SHORTLINK", "type": "OPEN_THREAD" }))
    );
    assert!(m.provider_message_id.starts_with("synth:"));
}

#[test]
fn fb_leadgen() {
    let item = only("fb_leadgen");
    let c = change(&item);
    assert_eq!(c.channel, Channel::Messenger);
    assert_eq!(c.account_id, PAGE);
    assert_eq!(c.field, "leadgen");
    assert_eq!(c.kind, "lead");
    assert_eq!(c.external_id, "810000000000013");
    assert_eq!(c.occurred_at, secs(1_795_166_879));
    assert_eq!(c.value["form_id"], json!("800000000000012"));
    assert_eq!(c.value["ad_id"], json!("120200000000000011"));
    assert_eq!(c.from, None);
    assert_eq!(c.text, None);
}

#[test]
fn fb_feed_comment() {
    let item = only("fb_feed_comment");
    let c = change(&item);
    assert_eq!(c.field, "feed");
    assert_eq!(c.kind, "comment");
    assert_eq!(c.verb.as_deref(), Some("add"));
    assert_eq!(c.external_id, "900000000000015_910000000000016");
    let from = c.from.as_ref().expect("from");
    assert_eq!(from.external_id, "7000000000000014");
    assert_eq!(from.name.as_deref(), Some("Erin Sampleton"));
    assert_eq!(c.text.as_deref(), Some("Does this come in green?"));
    assert_eq!(c.occurred_at, secs(1_795_166_939));
    assert_eq!(c.value["post_id"], json!("300000000000003_900000000000015"));
}

// ---------------------------------------------------------------------------
// Instagram

fn assert_ig_inbound(m: &NormalizedMessage, kind: &str, message_type: &str, text: Option<&str>) {
    assert_eq!(m.channel, Channel::Instagram);
    assert_eq!(m.account_id, IG);
    assert_eq!(m.business_id, IG);
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.contact.external_id, IGSID);
    assert_eq!(m.kind, kind);
    assert_eq!(m.message_type, message_type);
    assert_eq!(m.text.as_deref(), text);
}

#[test]
fn ig_message_text() {
    let m = only_message("ig_message_text");
    assert_ig_inbound(&m, "message", "text", Some("hey! do you ship to Portugal?"));
    assert!(m.provider_message_id.starts_with("aWdfbWVzc2FnZV9pdGVt"));
}

#[test]
fn ig_message_attachment() {
    let m = only_message("ig_message_attachment");
    assert_ig_inbound(&m, "message", "attachments", None);
    assert_eq!(m.media.len(), 1);
    assert_eq!(m.media[0].kind, "image");
    assert!(m.media[0]
        .url
        .as_deref()
        .is_some_and(|u| u.contains("asset_id=17900000000000017")));
}

#[test]
fn ig_reaction() {
    let m = only_message("ig_reaction");
    assert_ig_inbound(&m, "reaction", "reaction", Some("❤️"));
    assert_eq!(m.details["action"], json!("react"));
    assert_eq!(m.details["reaction"], json!("love"));
    assert!(m.reply_to.as_deref().is_some_and(|r| r.starts_with("aWdf")));
}

#[test]
fn ig_story_reply() {
    let m = only_message("ig_story_reply");
    assert_ig_inbound(&m, "message", "text", Some("love this look 🔥"));
    assert_eq!(m.details["story"]["id"], json!("17900000000000018"));
    assert_eq!(m.reply_to, None);
}

// ---------------------------------------------------------------------------
// Cross-cutting

#[test]
fn every_fixture_file_is_covered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/meta");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = FIXTURES.iter().map(|(n, _)| (*n).to_owned()).collect();
    known.sort();
    assert_eq!(on_disk, known);
}

#[test]
fn fixtures_pass_check_shape() {
    for (name, bytes) in FIXTURES {
        assert!(check_shape(bytes).is_ok(), "{name}");
    }
}

#[test]
fn normalization_is_deterministic() {
    for (name, bytes) in FIXTURES {
        let a = normalize(bytes).expect("ok");
        let b = normalize(bytes).expect("ok");
        assert_eq!(a, b, "{name}");
        let ids_a: Vec<String> = a.iter().map(NormalizedItem::identity).collect();
        let ids_b: Vec<String> = b.iter().map(NormalizedItem::identity).collect();
        assert_eq!(ids_a, ids_b, "{name}");
    }
}

#[test]
fn synthesized_ids_ignore_key_order_and_are_pinned() {
    // Same event with the referral's keys in another order: same id.
    let body_a = br#"{"object":"page","entry":[{"id":"1","time":5,"messaging":[{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1000,"referral":{"ref":"a","source":"SHORTLINK","type":"OPEN_THREAD"}}]}]}"#;
    let body_b = br#"{"entry":[{"messaging":[{"referral":{"type":"OPEN_THREAD","source":"SHORTLINK","ref":"a"},"timestamp":1000,"recipient":{"id":"1"},"sender":{"id":"2"}}],"time":5,"id":"1"}],"object":"page"}"#;
    let a = normalize(body_a).expect("ok");
    let b = normalize(body_b).expect("ok");
    assert_eq!(a, b);
    // Pinned so that a change to the hashing scheme (which would break dedup
    // of redelivered events across versions) is noticed.
    let id = &message(&a[0]).provider_message_id;
    assert_eq!(
        id,
        &super::synth_id(
            &["messenger", "1", "2", "1000", "referral"],
            Some(&json!({"ref":"a","source":"SHORTLINK","type":"OPEN_THREAD"})),
        )
    );
    assert_eq!(id.len(), 38);
    // A different timestamp gives a different id.
    let body_c = String::from_utf8_lossy(body_a).replace("1000", "1001");
    let c = normalize(body_c.as_bytes()).expect("ok");
    assert_ne!(&message(&c[0]).provider_message_id, id);
}

/// Whether `check_shape` and `normalize` agree on `bytes` (same error variant).
pub(super) fn same_verdict(bytes: &[u8]) -> bool {
    matches!(
        (check_shape(bytes), normalize(bytes)),
        (Ok(()), Ok(_))
            | (
                Err(NormalizeError::NotJson(_)),
                Err(NormalizeError::NotJson(_))
            )
            | (
                Err(NormalizeError::NotMetaShape(_)),
                Err(NormalizeError::NotMetaShape(_))
            )
    )
}

#[test]
fn malformed_bodies() {
    for bytes in [
        &b""[..],
        b"not json",
        b"{",
        b"{\"object\":\"page\",\"entry\":[]} x",
        b"\xff",
    ] {
        assert!(
            matches!(normalize(bytes), Err(NormalizeError::NotJson(_))),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(same_verdict(bytes));
    }
    for bytes in [
        &b"[]"[..],
        b"{}",
        b"{\"object\":1,\"entry\":[]}",
        b"{\"object\":\"page\"}",
        b"{\"object\":\"page\",\"entry\":{}}",
        b"{\"entry\":[]}",
        b"null",
        b"\"page\"",
        b"[\"page\", []]",
    ] {
        assert!(
            matches!(normalize(bytes), Err(NormalizeError::NotMetaShape(_))),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(same_verdict(bytes), "{:?}", String::from_utf8_lossy(bytes));
    }
    // Things `IgnoredAny` would skip but a full parse rejects: both say NotJson.
    for bytes in [
        &b"{\"object\":\"page\",\"entry\":[1e999]}"[..],
        b"{\"object\":\"page\",\"entry\":[\"\xff\"]}",
        b"{\"object\":\"page\",\"entry\":[\"\\ud800\"]}",
    ] {
        assert!(matches!(
            check_shape(bytes),
            Err(NormalizeError::NotJson(_))
        ));
        assert!(same_verdict(bytes));
    }
    // Duplicate keys: the last one wins in both.
    assert!(same_verdict(
        b"{\"object\":1,\"object\":\"page\",\"entry\":[]}"
    ));
    assert!(check_shape(b"{\"object\":1,\"object\":\"page\",\"entry\":[]}").is_ok());
    assert!(same_verdict(
        b"{\"object\":\"page\",\"object\":1,\"entry\":[]}"
    ));
    // Empty batch is fine.
    assert_eq!(
        normalize(b"{\"object\":\"page\",\"entry\":[]}").expect("ok"),
        vec![]
    );
}

#[test]
fn unknown_object_yields_one_unsupported_change_per_entry() {
    let items = normalize(br#"{"object":"user","entry":[{"id":"9","time":1795166940,"changes":[{"field":"name"}]},7]}"#)
        .expect("ok");
    assert_eq!(items.len(), 2);
    let c = change(&items[0]);
    assert_eq!(c.channel, Channel::Messenger);
    assert_eq!(c.kind, "unsupported");
    assert_eq!(c.field, "object.user");
    assert_eq!(c.account_id, "9");
    assert_eq!(c.occurred_at, secs(1_795_166_940));
    assert!(c.external_id.starts_with("synth:"));
    assert_eq!(change(&items[1]).value, json!(7));
}

#[test]
fn bad_parts_do_not_drop_good_items() {
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [
            "not an entry",
            {
                "id": 100000000000001_u64,
                "changes": [
                    42,
                    { "field": "message_template_status_update",
                      "value": { "event": "APPROVED", "message_template_id": 1 } },
                    { "field": "messages", "value": {
                        "metadata": { "phone_number_id": 200000000000002_u64 },
                        "messages": [
                            { "from": "15550001111", "timestamp": "1795165200", "type": "text",
                              "text": { "body": "no id" } },
                            { "from": 15550001111_u64, "id": "wamid.ok", "timestamp": 1795165200,
                              "type": "text", "text": { "body": "good" },
                              "context": { "id": "wamid.prev", "frequently_forwarded": true } },
                            { "from": "15550001111", "id": "wamid.t", "type": "text", "text": "flat" },
                            { "from": "15550001111", "id": "wamid.x", "type": "new_thing",
                              "new_thing": {} }
                        ],
                        "statuses": [
                            { "id": "wamid.s", "recipient_id": "1", "status": "deleted" },
                            { "id": "wamid.s", "recipient_id": "1", "status": "sent",
                              "timestamp": "oops", "errors": [ { "code": "131000" }, 5 ] }
                        ]
                    } }
                ]
            }
        ]
    });
    let items = normalize(&serde_json::to_vec(&body).expect("ser")).expect("ok");
    let kinds: Vec<&str> = items.iter().map(NormalizedItem::kind_name).collect();
    assert_eq!(
        kinds,
        [
            "page_change", // entry not an object
            "page_change", // change not an object
            "page_change", // template status update
            "page_change", // message without id
            "message",
            "message", // text not an object → unsupported
            "message", // unknown type → unsupported
            "status",  // unknown status, kept as such
            "status",
        ]
    );
    assert_eq!(change(&items[0]).field, "entry");
    assert_eq!(change(&items[2]).field, "message_template_status_update");
    assert_eq!(change(&items[2]).kind, "unsupported");
    assert_eq!(change(&items[3]).field, "messages");
    assert_eq!(change(&items[3]).value["text"]["body"], json!("no id"));
    let good = message(&items[4]);
    assert_eq!(good.account_id, "100000000000001");
    assert_eq!(good.business_id, "200000000000002");
    assert_eq!(good.contact.external_id, "15550001111");
    assert_eq!(good.text.as_deref(), Some("good"));
    assert_eq!(good.reply_to.as_deref(), Some("wamid.prev"));
    assert!(good.forwarded);
    assert_eq!(good.sent_at, secs(1_795_165_200));
    let flat = message(&items[5]);
    assert_eq!(flat.message_type, "unsupported");
    assert_eq!(flat.details["raw"]["text"], json!("flat"));
    assert_eq!(
        flat.sent_at,
        DateTime::<Utc>::UNIX_EPOCH,
        "no timestamp, no entry time"
    );
    assert_eq!(message(&items[6]).message_type, "unsupported");
    assert_eq!(message(&items[6]).details["type"], "new_thing");
    assert_eq!(status(&items[7]).status, DeliveryStatus::Unknown);
    assert_eq!(status(&items[7]).status_name(), "deleted");
    let s = status(&items[8]);
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].code, 131_000);
}

#[test]
fn messenger_unknown_events_and_standby() {
    let body = json!({
        "object": "page",
        "entry": [{
            "id": "300000000000003",
            "time": 1795166580200_u64,
            "messaging": [
                { "sender": { "id": "1" }, "recipient": { "id": "300000000000003" },
                  "timestamp": 1795166580123_u64, "pass_thread_control": { "new_owner_app_id": "2" } },
                { "sender": { "id": "1" }, "recipient": { "id": "300000000000003" },
                  "delivery": { "watermark": 1795166579123_u64 } },
                { "recipient": { "id": "300000000000003" }, "message": { "mid": "m_1", "text": "x" } },
                { "sender": { "id": "1" }, "message": { "mid": "m_2", "is_deleted": true } }
            ],
            "standby": [
                { "sender": { "id": "1" }, "recipient": { "id": "300000000000003" },
                  "timestamp": 1, "message": { "mid": "m_3", "quick_reply": { "payload": "P" }, "text": "Yes" } }
            ]
        }]
    });
    let items = normalize(&serde_json::to_vec(&body).expect("ser")).expect("ok");
    assert_eq!(items.len(), 5, "{items:#?}");
    let handover = change(&items[0]);
    assert_eq!(handover.field, "messaging.pass_thread_control");
    assert_eq!(handover.kind, "unsupported");
    assert_eq!(handover.occurred_at, millis(1_795_166_580_123));
    let delivery = status(&items[1]);
    assert_eq!(delivery.provider_message_id, None);
    assert_eq!(delivery.watermark, Some(millis(1_795_166_579_123)));
    assert_eq!(
        delivery.at,
        millis(1_795_166_580_200),
        "falls back to entry time (ms)"
    );
    assert_eq!(change(&items[2]).field, "messaging.message");
    assert_eq!(message(&items[3]).message_type, "deleted");
    let quick = message(&items[4]);
    assert_eq!(quick.message_type, "quick_reply");
    assert_eq!(quick.text.as_deref(), Some("Yes"));
    assert_eq!(quick.details, json!({ "payload": "P" }));
}

#[test]
fn feed_reaction_and_unknown_change() {
    let body = json!({
        "object": "page",
        "entry": [{
            "id": "300000000000003",
            "time": 1795166940,
            "changes": [
                { "field": "feed", "value": { "item": "reaction", "verb": "add",
                  "post_id": "3_9", "reaction_type": "like",
                  "from": { "id": "7", "name": "E" }, "created_time": 1795166939 } },
                { "field": "feed", "value": { "item": "post", "verb": "add", "post_id": "3_10",
                  "message": "hello" } },
                { "field": "mention", "value": { "post_id": "3_11" } }
            ]
        }]
    });
    let items = normalize(&serde_json::to_vec(&body).expect("ser")).expect("ok");
    assert_eq!(items.len(), 3);
    let reaction = change(&items[0]);
    assert_eq!(reaction.kind, "reaction");
    assert_eq!(reaction.external_id, "3_9/reaction/7");
    let post = change(&items[1]);
    assert_eq!(post.kind, "post");
    assert_eq!(post.external_id, "3_10");
    assert_eq!(post.text.as_deref(), Some("hello"));
    assert_eq!(
        post.occurred_at,
        secs(1_795_166_940),
        "entry time in seconds"
    );
    let mention = change(&items[2]);
    assert_eq!(mention.field, "mention");
    assert_eq!(mention.kind, "unsupported");
}

// ---------------------------------------------------------------------------
// WhatsApp identities: phone, BSUID, parent BSUID, username.

const ELIF_PHONE: &str = "15550005555";
const ELIF_BSUID: &str = "US.10000000000000000055";
const ELIF_PARENT: &str = "US.ENT.10000000000000000056";

#[test]
fn wa_bsuid_phone_only_is_keyed_by_phone() {
    let m = only_message("wa_bsuid_phone_only");
    assert_eq!(m.contact.external_id, ELIF_PHONE);
    assert_eq!(m.contact.wa_id.as_deref(), Some(ELIF_PHONE));
    assert_eq!(m.contact.user_id, None);
    assert_eq!(m.contact.name.as_deref(), Some("Elif Sample"));
}

#[test]
fn wa_bsuid_phone_and_user_id_carries_both_and_the_username() {
    let m = only_message("wa_bsuid_phone_and_user_id");
    assert_eq!(m.contact.external_id, ELIF_PHONE);
    assert_eq!(m.contact.wa_id.as_deref(), Some(ELIF_PHONE));
    assert_eq!(m.contact.user_id.as_deref(), Some(ELIF_BSUID));
    assert_eq!(m.contact.username.as_deref(), Some("elif.sample"));
}

#[test]
fn wa_bsuid_user_id_only_is_a_message_keyed_by_bsuid() {
    let m = only_message("wa_bsuid_user_id_only");
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.message_type, "text");
    assert_eq!(m.text.as_deref(), Some("I hid my number, it is still me"));
    assert_eq!(m.contact.external_id, ELIF_BSUID);
    assert_eq!(m.contact.wa_id, None);
    assert_eq!(m.contact.user_id.as_deref(), Some(ELIF_BSUID));
    assert_eq!(m.contact.parent_user_id.as_deref(), Some(ELIF_PARENT));
    assert_eq!(m.contact.username.as_deref(), Some("elif.sample"));
    assert_eq!(m.contact.name.as_deref(), Some("Elif Sample"));
}

#[test]
fn wa_bsuid_status_by_recipient_user_id_is_a_status() {
    let s = status(&only("wa_bsuid_status_read")).clone();
    assert_eq!(s.status, DeliveryStatus::Read);
    assert_eq!(s.contact.external_id, ELIF_BSUID);
    assert_eq!(s.contact.user_id.as_deref(), Some(ELIF_BSUID));
    assert_eq!(s.contact.username.as_deref(), Some("elif.sample"));
}

#[test]
fn a_status_without_any_recipient_is_still_a_status() {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"metadata": {"phone_number_id": "2"},
        "statuses": [{"id": "wamid.X", "status": "failed", "timestamp": "1795170000",
                      "errors": [{"code": 131047}]}]}}]}]});
    let items = normalize(&serde_json::to_vec(&body).expect("ser")).expect("ok");
    let s = status(&items[0]);
    assert_eq!(s.status, DeliveryStatus::Failed);
    assert_eq!(s.contact.external_id, "");
}

/// Every `messages[]` item of every WhatsApp fixture, its sender's
/// identifier fields stripped or swapped (as long as one identifier is
/// left), still normalizes to a message.
#[test]
fn stripping_or_swapping_sender_identifiers_never_unmakes_a_message() {
    type Edit = fn(&mut serde_json::Map<String, Value>);
    let edits: &[(&str, Edit)] = &[
        ("phone only", |m| {
            if m.get("from").is_some() {
                m.remove("from_user_id");
                m.remove("from_parent_user_id");
            }
        }),
        ("bsuid instead of phone", |m| {
            if let Some(from) = m.remove("from") {
                m.entry("from_user_id")
                    .or_insert(json!(format!("US.{}", from.as_str().unwrap_or("1"))));
            }
        }),
        ("parent bsuid only", |m| {
            let id = m
                .remove("from_user_id")
                .or_else(|| m.remove("from"))
                .unwrap_or(json!("9"));
            m.insert(
                "from_parent_user_id".into(),
                json!(format!("US.ENT.{}", id.as_str().unwrap_or("9"))),
            );
        }),
        ("swapped", |m| {
            let from = m.remove("from");
            let user = m.remove("from_user_id");
            if let Some(v) = from.clone().or(user.clone()) {
                m.insert("from_user_id".into(), v);
            }
            if let Some(v) = user.or(from) {
                m.insert("from".into(), v);
            }
        }),
    ];
    let count = |items: &[NormalizedItem]| {
        items
            .iter()
            .filter(|i| matches!(i, NormalizedItem::Message(_)))
            .count()
    };
    for (name, bytes) in FIXTURES.iter().filter(|(n, _)| n.starts_with("wa_")) {
        let original = count(&normalize(bytes).expect(name));
        for (what, edit) in edits {
            let mut root: Value = serde_json::from_slice(bytes).expect(name);
            for entry in root["entry"].as_array_mut().into_iter().flatten() {
                for change in entry["changes"].as_array_mut().into_iter().flatten() {
                    for msg in change["value"]["messages"]
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                    {
                        if let Value::Object(m) = msg {
                            edit(m);
                        }
                    }
                }
            }
            let edited = normalize(&serde_json::to_vec(&root).expect("ser")).expect(name);
            assert_eq!(count(&edited), original, "{name}: {what}");
        }
    }
}

#[test]
fn wa_user_changed_user_id_moves_the_contact_to_the_new_bsuid() {
    let m = only_message("wa_bsuid_user_changed_user_id");
    assert_eq!(m.message_type, "system.user_changed_user_id");
    assert_eq!(
        m.contact.user_id.as_deref(),
        Some("US.10000000000000000057")
    );
    assert_eq!(m.contact.former_user_id.as_deref(), Some(ELIF_BSUID));
    let ids = m.contact.identities();
    assert!(ids.contains(&(IdentityKind::UserId, ELIF_BSUID.to_owned())));
}

#[test]
fn wa_smb_echo_is_an_outbound_message_sent_from_the_app() {
    let m = only_message("wa_smb_echo");
    assert_eq!(m.direction, Direction::Outbound);
    assert_eq!(m.contact.external_id, ELIF_PHONE);
    assert_eq!(
        m.text.as_deref(),
        Some("Welcome! We open at 10 on Sundays.")
    );
    assert_eq!(m.details["sent_from"], "business_app");
}

// ---------------------------------------------------------------------------
// WhatsApp 2026: coexistence, BSUID updates, groups, unknown statuses

const GITA: &str = "15550006666";
const GROUP: &str = "Y2FwaV9ncm91cDoxNTU1MDAwOTk5OToxMjAzNjMwMDAwMDAwMDAwMDE=";

#[test]
fn wa_history_imports_past_messages_marked_as_history() {
    let items = items("wa_history");
    assert_eq!(items.len(), 3);
    let inbound = message(&items[0]);
    assert_eq!(inbound.direction, Direction::Inbound);
    assert_eq!(inbound.contact.external_id, GITA);
    assert_eq!(
        inbound.text.as_deref(),
        Some("Do you deliver on Saturdays?")
    );
    assert_eq!(inbound.sent_at, secs(1_795_161_600), "original time");
    assert!(inbound.is_history());
    assert_eq!(inbound.details["history_status"], "read");
    assert_eq!(inbound.details["history_phase"], 0);
    let reply = message(&items[1]);
    assert_eq!(reply.direction, Direction::Outbound, "from the business");
    assert_eq!(reply.contact.external_id, GITA, "the thread's customer");
    assert!(reply.is_history());
    let placeholder = message(&items[2]);
    assert_eq!(placeholder.message_type, "unsupported");
    assert_eq!(
        placeholder.details["type"], "media_placeholder",
        "Meta's type kept"
    );
    assert_eq!(
        placeholder.details["raw"]["id"],
        json!(placeholder.provider_message_id)
    );
    assert!(placeholder.is_history());
}

#[test]
fn history_messages_from_the_business_are_outbound_without_a_to() {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{
    "field": "history", "value": {
        "metadata": {"display_phone_number": "+1 555-000-9999", "phone_number_id": PHONE_ID},
        "history": [{"metadata": {"phase": 1}, "threads": [{"id": GITA, "messages": [
            {"from": "15550009999", "id": "wamid.H1", "timestamp": "1795161600",
             "type": "text", "text": {"body": "From the shop"}},
            {"id": "wamid.H2", "timestamp": "1795161660", "type": "text",
             "text": {"body": "No sender field"}}
        ]}]}]}}]}]});
    let items = normalize(&serde_json::to_vec(&body).expect("ser")).expect("ok");
    let shop = message(&items[0]);
    assert_eq!(shop.direction, Direction::Outbound);
    assert_eq!(shop.contact.external_id, GITA);
    let bare = message(&items[1]);
    assert_eq!(bare.direction, Direction::Inbound, "the thread's user");
    assert_eq!(bare.contact.external_id, GITA);
}

#[test]
fn wa_history_declined_is_a_typed_change() {
    let c = change(&only("wa_history_declined")).clone();
    assert_eq!((c.field.as_str(), c.kind.as_str()), ("history", "history"));
    assert_eq!(c.verb.as_deref(), Some("declined"));
}

#[test]
fn wa_smb_app_state_sync_updates_contacts() {
    let items = items("wa_smb_app_state_sync");
    assert_eq!(items.len(), 2);
    let added = change(&items[0]);
    assert_eq!(
        (added.kind.as_str(), added.verb.as_deref()),
        ("contact", Some("add"))
    );
    let person = added.updated_contact().expect("an add updates the contact");
    assert_eq!(person.wa_id.as_deref(), Some(GITA));
    assert_eq!(person.name.as_deref(), Some("Gita Example"));
    let removed = change(&items[1]);
    assert_eq!(removed.verb.as_deref(), Some("remove"));
    assert_eq!(
        removed.updated_contact(),
        None,
        "a removal keeps the contact as it is"
    );
    assert_eq!(
        removed.from.as_ref().map(|f| f.external_id.as_str()),
        Some("15550007777")
    );
}

#[test]
fn wa_user_id_update_moves_the_contact_to_the_new_bsuid() {
    let c = change(&only("wa_user_id_update")).clone();
    assert_eq!(c.kind, "user_id_update");
    let person = c.updated_contact().expect("updates the contact");
    assert_eq!(person.user_id.as_deref(), Some("US.10000000000000000058"));
    assert_eq!(person.former_user_id.as_deref(), Some(ELIF_BSUID));
    assert_eq!(person.parent_user_id.as_deref(), Some(ELIF_PARENT));
    assert!(person
        .identities()
        .contains(&(IdentityKind::UserId, ELIF_BSUID.to_owned())));
}

#[test]
fn wa_business_username_and_user_preferences_are_typed_changes() {
    let c = change(&only("wa_business_username_update")).clone();
    assert_eq!(c.field, "business_username_updates");
    assert_eq!(c.kind, "business_username");
    assert_eq!(c.verb.as_deref(), Some("approved"));
    assert_eq!(c.text.as_deref(), Some("kettle.shop"));
    let p = change(&only("wa_user_preferences")).clone();
    assert_eq!(p.kind, "user_preference");
    assert_eq!(p.verb.as_deref(), Some("stop"));
    assert_eq!(p.from.as_ref().and_then(|f| f.wa_id.as_deref()), Some(ANA));
    assert_eq!(
        p.from.as_ref().and_then(|f| f.name.as_deref()),
        Some("Ana Testerman")
    );
    assert_eq!(p.updated_contact(), None);
}

#[test]
fn wa_group_messages_name_their_group_and_sender() {
    let items = items("wa_group_message");
    assert_eq!(items.len(), 2);
    for (item, sender, name) in [
        (&items[0], ANA, "Ana Testerman"),
        (&items[1], "15550002222", "Bruno Fakeman"),
    ] {
        let m = message(item);
        assert_eq!(m.group_id(), Some(GROUP));
        assert_eq!(m.contact.wa_id.as_deref(), Some(sender));
        assert_eq!(m.contact.name.as_deref(), Some(name));
    }
}

#[test]
fn wa_group_webhooks_are_typed_changes_with_subject_and_participants() {
    let created = change(&only("wa_group_lifecycle")).clone();
    assert_eq!(
        (created.kind.as_str(), created.verb.as_deref()),
        ("group_lifecycle", Some("group_create"))
    );
    let g = created.group.expect("a group change");
    assert_eq!(
        (g.group_id.as_str(), g.business_id.as_str()),
        (GROUP, PHONE_ID)
    );
    assert_eq!(g.subject.as_deref(), Some("Kettle owners club"));

    let items = items("wa_group_participants");
    let added = change(&items[0]).group.clone().expect("group");
    assert_eq!(added.joined.len(), 1);
    assert_eq!(added.joined[0].wa_id.as_deref(), Some("15550003333"));
    let left = change(&items[1]).group.clone().expect("group");
    assert_eq!(left.left[0].wa_id.as_deref(), Some("15550002222"));
    assert_eq!(change(&items[1]).kind, "group_participants");

    let settings = change(&only("wa_group_settings")).clone();
    assert_eq!(settings.kind, "group_settings");
    assert_eq!(
        settings.group.and_then(|g| g.subject).as_deref(),
        Some("Kettle owners & friends")
    );
    let status = change(&only("wa_group_status_update")).clone();
    assert_eq!(
        (status.kind.as_str(), status.verb.as_deref()),
        ("group_status", Some("group_suspend"))
    );
}

#[test]
fn a_failed_subject_update_sets_no_subject() {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{
        "field": "group_settings_update", "value": {"metadata": {"phone_number_id": PHONE_ID},
        "groups": [{"group_id": "G1", "type": "group_settings_update", "timestamp": "1795164600",
            "group_subject": {"text": "Nope", "update_successful": false}}]}}]}]});
    let items = normalize(&serde_json::to_vec(&body).expect("ser")).expect("ok");
    assert_eq!(
        change(&items[0]).group.as_ref().map(|g| g.subject.clone()),
        Some(None)
    );
}

#[test]
fn wa_group_statuses_are_per_message_and_name_the_group() {
    let items = items("wa_group_status");
    assert_eq!(items.len(), 2);
    let s = status(&items[0]);
    assert_eq!(s.status, DeliveryStatus::Delivered);
    assert_eq!(s.contact.external_id, GROUP);
    assert_eq!(s.contact.wa_id, None, "a group id is not a phone number");
    assert_ne!(s.provider_message_id, status(&items[1]).provider_message_id);
}

#[test]
fn unknown_status_names_are_kept_as_unknown_statuses() {
    let s = status(&only("wa_status_unknown")).clone();
    assert_eq!(s.status, DeliveryStatus::Unknown);
    assert_eq!(s.raw_status.as_deref(), Some("deleted"));
    assert_eq!(s.status_name(), "deleted");
    assert!(only("wa_status_unknown").identity().contains("/deleted/"));
}
