//! Property tests: the normalizer never panics, on arbitrary JSON, on
//! Meta-shaped envelopes with arbitrary entries, on mutated fixtures and on
//! arbitrary bytes; and [`check_shape`] always agrees with [`normalize`].

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

use super::tests::{same_verdict, FIXTURES};
use super::{check_shape, normalize};

/// Keys (and string values) that steer arbitrary JSON into the code paths.
const VOCAB: &[&str] = &[
    "object",
    "entry",
    "id",
    "time",
    "changes",
    "field",
    "value",
    "messages",
    "statuses",
    "metadata",
    "phone_number_id",
    "contacts",
    "wa_id",
    "profile",
    "name",
    "from",
    "timestamp",
    "type",
    "text",
    "body",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "caption",
    "mime_type",
    "sha256",
    "filename",
    "voice",
    "animated",
    "location",
    "interactive",
    "button_reply",
    "list_reply",
    "nfm_reply",
    "title",
    "description",
    "button",
    "payload",
    "order",
    "reaction",
    "emoji",
    "message_id",
    "system",
    "context",
    "forwarded",
    "frequently_forwarded",
    "referral",
    "errors",
    "code",
    "error_data",
    "details",
    "status",
    "sent",
    "delivered",
    "read",
    "failed",
    "recipient_id",
    "conversation",
    "pricing",
    "messaging",
    "standby",
    "sender",
    "recipient",
    "message",
    "mid",
    "is_echo",
    "app_id",
    "attachments",
    "url",
    "quick_reply",
    "reply_to",
    "story",
    "is_deleted",
    "is_unsupported",
    "postback",
    "delivery",
    "mids",
    "watermark",
    "action",
    "leadgen",
    "leadgen_id",
    "created_time",
    "feed",
    "item",
    "verb",
    "comment_id",
    "post_id",
    "comment",
    "unsupported",
];

const OBJECTS: &[&str] = &["whatsapp_business_account", "page", "instagram"];

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(VOCAB).prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-2_000_000_000_000_i64..2_000_000_000_000).prop_map(Value::from),
        select(VOCAB).prop_map(|s| Value::String(s.to_owned())),
        "-?[0-9]{1,20}(\\.[0-9]{1,3})?".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

/// Arbitrary JSON of bounded depth, biased towards Meta's vocabulary.
fn arb_json(depth: u32) -> BoxedStrategy<Value> {
    arb_leaf()
        .prop_recursive(depth, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((arb_key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A valid envelope (`object` string, `entry` array) with arbitrary entries.
fn arb_envelope() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            4 => select(OBJECTS).prop_map(str::to_owned),
            1 => "[a-z_]{0,10}",
        ],
        prop::collection::vec(arb_json(7), 0..4),
    )
        .prop_map(|(object, entries)| json!({ "object": object, "entry": entries }))
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Every node's path, except the root and the envelope's `object` / `entry`
/// themselves (their elements and contents are fair game).
fn paths(root: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        let children: Vec<(Seg, &Value)> = match v {
            Value::Object(map) => map.iter().map(|(k, c)| (Seg::Key(k.clone()), c)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, c)| (Seg::Idx(i), c))
                .collect(),
            _ => Vec::new(),
        };
        for (seg, child) in children {
            prefix.push(seg);
            out.push(prefix.clone());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut out);
    out.retain(|p| {
        !(p.len() == 1 && matches!(&p[0], Seg::Key(k) if k == "object" || k == "entry"))
    });
    out
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Idx(i) => v.get_mut(*i),
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, Value),
    Delete(Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), arb_json(3)).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

fn apply(root: &mut Value, mutation: &Mutation) {
    let all = paths(root);
    if all.is_empty() {
        return;
    }
    match mutation {
        Mutation::Replace(i, value) => {
            let path: &Vec<Seg> = i.get(&all);
            if let Some(node) = node_mut(root, path) {
                *node = value.clone();
            }
        }
        Mutation::Delete(i) => {
            let path: &Vec<Seg> = i.get(&all);
            let Some((last, parent)) = path.split_last() else {
                return;
            };
            match (node_mut(root, parent), last) {
                (Some(Value::Object(map)), Seg::Key(k)) => {
                    map.remove(k);
                }
                (Some(Value::Array(items)), Seg::Idx(i)) if *i < items.len() => {
                    items.remove(*i);
                }
                _ => {}
            }
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Never write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_json_never_panics(value in arb_json(5)) {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        prop_assert!(same_verdict(&bytes));
    }

    #[test]
    fn arbitrary_envelopes_normalize(value in arb_envelope()) {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        prop_assert!(check_shape(&bytes).is_ok());
        let items = normalize(&bytes);
        prop_assert!(items.is_ok(), "{:?}", items);
        let again = normalize(&bytes);
        prop_assert_eq!(items.ok(), again.ok());
    }

    #[test]
    fn mutated_fixtures_normalize(
        fixture in select(FIXTURES),
        mutations in prop::collection::vec(arb_mutation(), 1..6),
    ) {
        let (name, bytes) = fixture;
        let mut value: Value = serde_json::from_slice(bytes).unwrap_or_default();
        for mutation in &mutations {
            apply(&mut value, mutation);
        }
        let mutated = serde_json::to_vec(&value).unwrap_or_default();
        prop_assert!(check_shape(&mutated).is_ok(), "{}", name);
        let items = normalize(&mutated);
        prop_assert!(items.is_ok(), "{}: {:?}", name, items);
        let items = items.unwrap_or_default();
        // Items always serialize (no non-finite numbers or the like).
        prop_assert!(serde_json::to_vec(&items).is_ok());
        prop_assert_eq!(Some(items), normalize(&mutated).ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(same_verdict(&bytes));
    }

    #[test]
    fn byte_edited_fixtures_never_panic(
        fixture in select(FIXTURES),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = fixture.1.to_vec();
        for (i, b) in &edits {
            let at = i.index(bytes.len());
            if let Some(slot) = bytes.get_mut(at) {
                *slot = *b;
            }
        }
        prop_assert!(same_verdict(&bytes));
    }
}

/// The sender identifiers of a WhatsApp message.
const SENDER_IDS: [&str; 3] = ["from", "from_user_id", "from_parent_user_id"];
/// The identifiers of a `contacts[]` entry.
const CONTACT_IDS: [&str; 3] = ["wa_id", "user_id", "parent_user_id"];

/// One random edit of a message's identifiers: which sender fields to
/// strip (bit mask; one present field is always kept), whether to swap
/// `from` and `from_user_id`, which `contacts[]` identifiers to strip.
#[derive(Debug, Clone, Copy)]
struct IdEdit {
    strip: u8,
    swap: bool,
    strip_contact: u8,
}

fn arb_id_edit() -> impl Strategy<Value = IdEdit> {
    (any::<u8>(), any::<bool>(), any::<u8>()).prop_map(|(strip, swap, strip_contact)| IdEdit {
        strip,
        swap,
        strip_contact,
    })
}

/// Applies `edit` to one message object, keeping at least one sender
/// identifier of its own.
fn edit_sender(m: &mut serde_json::Map<String, Value>, edit: IdEdit) {
    if edit.swap {
        let from = m.remove("from");
        let user = m.remove("from_user_id");
        if let Some(v) = user {
            m.insert("from".into(), v);
        }
        if let Some(v) = from {
            m.insert("from_user_id".into(), v);
        }
    }
    let present: Vec<&str> = SENDER_IDS
        .iter()
        .copied()
        .filter(|k| m.get(*k).is_some())
        .collect();
    let Some(keep) = present
        .get(usize::from(edit.strip) % present.len().max(1))
        .copied()
    else {
        return;
    };
    for (bit, key) in SENDER_IDS.iter().enumerate() {
        if *key != keep && edit.strip & (1 << bit) != 0 {
            m.remove(*key);
        }
    }
}

/// Every message-like and status item of a WhatsApp body, edited in turn
/// with `edits` (cycled): `messages[]` senders and `contacts[]` entries,
/// history messages (`from`, the thread id stays), statuses' recipient
/// fields.
fn edit_identifiers(root: &mut Value, edits: &[IdEdit]) {
    let mut n = 0usize;
    let mut next = || {
        let e = edits[n % edits.len()];
        n += 1;
        e
    };
    for entry in root["entry"].as_array_mut().into_iter().flatten() {
        for change in entry["changes"].as_array_mut().into_iter().flatten() {
            let value = &mut change["value"];
            for msg in value["messages"].as_array_mut().into_iter().flatten() {
                if let Value::Object(m) = msg {
                    edit_sender(m, next());
                }
            }
            for contact in value["contacts"].as_array_mut().into_iter().flatten() {
                let edit = next();
                if let Value::Object(c) = contact {
                    for (bit, key) in CONTACT_IDS.iter().enumerate() {
                        if edit.strip_contact & (1 << bit) != 0 {
                            c.remove(*key);
                        }
                    }
                    if edit.strip_contact & 8 != 0 {
                        if let Some(Value::Object(p)) = c.get_mut("profile") {
                            p.remove("username");
                        }
                    }
                }
            }
            for st in value["statuses"].as_array_mut().into_iter().flatten() {
                let edit = next();
                if let Value::Object(s) = st {
                    for (bit, key) in [
                        "recipient_id",
                        "recipient_user_id",
                        "recipient_parent_user_id",
                    ]
                    .iter()
                    .enumerate()
                    {
                        if edit.strip & (1 << bit) != 0 {
                            s.remove(*key);
                        }
                    }
                }
            }
            for chunk in value["history"].as_array_mut().into_iter().flatten() {
                for thread in chunk["threads"].as_array_mut().into_iter().flatten() {
                    for msg in thread["messages"].as_array_mut().into_iter().flatten() {
                        let edit = next();
                        if let (Value::Object(m), true) = (msg, edit.swap) {
                            m.remove("from");
                        }
                    }
                }
            }
        }
    }
}

fn whatsapp_fixtures() -> Vec<(&'static str, &'static [u8])> {
    FIXTURES
        .iter()
        .copied()
        .filter(|(name, _)| name.starts_with("wa_"))
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// Stripping or swapping identifier fields of every WhatsApp fixture
    /// (as long as a message keeps one identifier of its own) never turns
    /// a message or a status into anything else.
    #[test]
    fn stripped_or_swapped_identifiers_never_unmake_a_message(
        fixture in select(whatsapp_fixtures()),
        edits in prop::collection::vec(arb_id_edit(), 1..8),
    ) {
        use crate::model::NormalizedItem;
        let (name, bytes) = fixture;
        let count = |items: &[NormalizedItem]| {
            (
                items.iter().filter(|i| matches!(i, NormalizedItem::Message(_))).count(),
                items.iter().filter(|i| matches!(i, NormalizedItem::Status(_))).count(),
            )
        };
        let original = count(&normalize(bytes).unwrap_or_default());
        let mut root: Value = serde_json::from_slice(bytes).unwrap_or_default();
        edit_identifiers(&mut root, &edits);
        let edited = normalize(&serde_json::to_vec(&root).unwrap_or_default());
        prop_assert!(edited.is_ok(), "{}", name);
        prop_assert_eq!(count(&edited.unwrap_or_default()), original, "{}: {:?}", name, edits);
    }
}
