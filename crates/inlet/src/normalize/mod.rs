//! Pure normalization of Meta webhook bodies into [`crate::model`] items.
//!
//! The gateway calls [`check_shape`] right after signature verification (a
//! cheap gate: is this a Meta webhook at all?), and the worker calls
//! [`normalize`] to turn a stored body into [`NormalizedItem`]s.
//!
//! Both functions are pure and deterministic: no clock, no I/O, no
//! randomness. Normalizing the same bytes twice yields equal items, and ids the
//! normalizer has to invent (postbacks, reactions and referrals without a
//! provider id, unsupported changes) are hashes of the event's content.
//!
//! # Robustness
//! Only a body that is not JSON ([`NormalizeError::NotJson`]) or not a Meta
//! webhook envelope — a JSON object with a string `object` and an array
//! `entry` ([`NormalizeError::NotMetaShape`]) — is an error. Everything inside
//! the envelope is read defensively from a [`serde_json::Value`]: wrong types,
//! missing ids, unknown objects, fields, message types or messaging events
//! never panic and never drop the other items of the batch. Whatever cannot be
//! modelled becomes an item that carries the raw JSON: a message with
//! `message_type = "unsupported"` (raw JSON in `details.raw`), or a
//! [`PageChange`] with `kind = "unsupported"`.
//!
//! # Dispatch on `object`
//! - `whatsapp_business_account` → [`Channel::Whatsapp`] (`entry[].changes[]`),
//!   see the `whatsapp` submodule.
//! - `page` → [`Channel::Messenger`] and `instagram` → [`Channel::Instagram`]
//!   (`entry[].messaging[]`, `entry[].standby[]` and `entry[].changes[]`), see
//!   the `messenger` and `changes` submodules.
//! - anything else → one unsupported [`PageChange`] per entry, with channel
//!   [`Channel::Messenger`] (the model has no "unknown" channel; Messenger is
//!   the generic Graph API / Page channel) and field `object.<object>`.
//!
//! # Conventions
//! - A missing `entry[].id` gives an empty `account_id`; WhatsApp falls back
//!   to `account_id` when `metadata.phone_number_id` is missing, and
//!   Messenger/Instagram to the page-side id of the event when `entry[].id`
//!   is missing.
//! - Missing or unreadable timestamps fall back to `entry[].time` (seconds or
//!   milliseconds, told apart by magnitude), then to the Unix epoch.
//! - Ids accept JSON strings or numbers; empty strings count as missing.

mod changes;
mod messenger;
mod whatsapp;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::model::{Channel, NormalizedItem, PageChange};

/// Why a body cannot be normalized at all (goes to the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// The body is not valid JSON (syntax error, truncated, invalid UTF-8,
    /// nesting too deep, number out of range, trailing bytes).
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not a Meta webhook envelope: not an object, or
    /// missing a string `object` or an array `entry`.
    #[error("not a Meta webhook: {0}")]
    NotMetaShape(String),
}

/// Cheap check used by the gateway after signature verification: the body is
/// a valid JSON object with a string `object` and an array `entry`.
///
/// No `Value` tree is built: the body is walked once with borrowing visitors
/// that keep nothing. The walk validates the whole body with the same
/// strictness as [`normalize`]'s full parse (UTF-8, number ranges, nesting
/// limit, trailing bytes), so a body accepted here is never rejected by
/// [`normalize`], and the two always agree on the error variant.
pub fn check_shape(body: &[u8]) -> Result<(), NormalizeError> {
    match serde_json::from_slice::<Shape>(body) {
        Ok(Shape::Object { object, entry }) => shape_verdict(object, entry),
        Ok(Shape::NotObject(kind)) => Err(NormalizeError::NotMetaShape(format!(
            "top level is {kind}, not an object"
        ))),
        Err(err) if err.is_data() => Err(NormalizeError::NotMetaShape(err.to_string())),
        Err(err) => Err(NormalizeError::NotJson(err.to_string())),
    }
}

/// Normalizes a whole webhook body into items, in body order (entries, then
/// changes / messaging events, then messages before statuses).
///
/// Never panics on any input. Unknown objects, fields, message types and
/// messaging events become items (message type `unsupported` with the raw
/// JSON in `details`, or a [`PageChange`] with kind `unsupported`), never
/// errors. Only non-JSON and non-Meta-shaped bodies are errors.
pub fn normalize(body: &[u8]) -> Result<Vec<NormalizedItem>, NormalizeError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|err| NormalizeError::NotJson(err.to_string()))?;
    let Value::Object(root) = root else {
        return Err(NormalizeError::NotMetaShape(format!(
            "top level is {}, not an object",
            json_kind(&root)
        )));
    };
    let object = root.get("object").map(JsonKind::of);
    let entry = root.get("entry").map(JsonKind::of);
    shape_verdict(object, entry)?;
    let (Some(Value::String(object)), Some(Value::Array(entries))) =
        (root.get("object"), root.get("entry"))
    else {
        return Err(NormalizeError::NotMetaShape(
            "missing string `object` or array `entry`".to_owned(),
        ));
    };

    let mut out = Vec::new();
    match object.as_str() {
        "whatsapp_business_account" => {
            for entry in entries {
                whatsapp::entry(entry, &mut out);
            }
        }
        "page" => {
            for entry in entries {
                messenger::entry(Channel::Messenger, entry, &mut out);
            }
        }
        "instagram" => {
            for entry in entries {
                messenger::entry(Channel::Instagram, entry, &mut out);
            }
        }
        other => {
            for entry in entries {
                out.push(changes::unsupported_object(other, entry));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Envelope check without a Value tree.

/// The JSON type of a value, as far as the envelope check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonKind {
    fn of(value: &Value) -> Self {
        match value {
            Value::Null => JsonKind::Null,
            Value::Bool(_) => JsonKind::Bool,
            Value::Number(_) => JsonKind::Number,
            Value::String(_) => JsonKind::String,
            Value::Array(_) => JsonKind::Array,
            Value::Object(_) => JsonKind::Object,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "a boolean",
            JsonKind::Number => "a number",
            JsonKind::String => "a string",
            JsonKind::Array => "an array",
            JsonKind::Object => "an object",
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    JsonKind::of(value).name()
}

/// Shared by [`check_shape`] and [`normalize`] so both say the same thing.
fn shape_verdict(object: Option<JsonKind>, entry: Option<JsonKind>) -> Result<(), NormalizeError> {
    let not_meta = |why: String| Err(NormalizeError::NotMetaShape(why));
    match object {
        None => return not_meta("missing `object`".to_owned()),
        Some(JsonKind::String) => {}
        Some(kind) => return not_meta(format!("`object` is {}, not a string", kind.name())),
    }
    match entry {
        None => not_meta("missing `entry`".to_owned()),
        Some(JsonKind::Array) => Ok(()),
        Some(kind) => not_meta(format!("`entry` is {}, not an array", kind.name())),
    }
}

/// What [`check_shape`] learns from one pass over the body. Duplicate keys
/// behave like `serde_json::Value` (the last one wins).
enum Shape {
    Object {
        object: Option<JsonKind>,
        entry: Option<JsonKind>,
    },
    NotObject(&'static str),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut object = None;
        let mut entry = None;
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                TopKey::Object => object = Some(map.next_value::<Kinded>()?.0),
                TopKey::Entry => entry = Some(map.next_value::<Kinded>()?.0),
                TopKey::Other => {
                    map.next_value::<Kinded>()?;
                }
            }
        }
        Ok(Shape::Object { object, entry })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Shape, A::Error> {
        KindVisitor.visit_seq(seq)?;
        Ok(Shape::NotObject(JsonKind::Array.name()))
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::NotObject(JsonKind::Null.name()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::NotObject(JsonKind::Bool.name()))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::NotObject(JsonKind::Number.name()))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::NotObject(JsonKind::Number.name()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::NotObject(JsonKind::Number.name()))
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::NotObject(JsonKind::String.name()))
    }
}

/// A top-level key of the envelope.
enum TopKey {
    Object,
    Entry,
    Other,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<TopKey, E> {
                Ok(match key {
                    "object" => TopKey::Object,
                    "entry" => TopKey::Entry,
                    _ => TopKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, validated with the same strictness as `serde_json::Value`
/// (`deserialize_any` parses numbers and strings fully, unlike `IgnoredAny`,
/// which skips them without checking ranges or UTF-8), but not kept: only its
/// [`JsonKind`] is.
struct Kinded(JsonKind);

impl<'de> Deserialize<'de> for Kinded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor).map(Kinded)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = JsonKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<JsonKind, E> {
        Ok(JsonKind::Null)
    }

    fn visit_none<E>(self) -> Result<JsonKind, E> {
        Ok(JsonKind::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<JsonKind, E> {
        Ok(JsonKind::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<JsonKind, E> {
        Ok(JsonKind::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<JsonKind, E> {
        Ok(JsonKind::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<JsonKind, E> {
        Ok(JsonKind::Number)
    }

    fn visit_str<E>(self, _: &str) -> Result<JsonKind, E> {
        Ok(JsonKind::String)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonKind, A::Error> {
        while seq.next_element::<Kinded>()?.is_some() {}
        Ok(JsonKind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonKind, A::Error> {
        while map.next_entry::<Kinded, Kinded>()?.is_some() {}
        Ok(JsonKind::Object)
    }
}

// ---------------------------------------------------------------------------
// Defensive readers over `serde_json::Value`.

/// A string-ish field: a JSON string, or a number rendered as a string.
fn string_at(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An id field: like [`string_at`], but an empty (or blank) string is missing.
fn id_at(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(id_of)
}

/// An id value: a non-blank JSON string, or a number rendered as a string.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
    .filter(|s| !s.trim().is_empty())
}

/// A non-empty text field (string or number).
fn text_at(value: &Value, key: &str) -> Option<String> {
    string_at(value, key).filter(|s| !s.is_empty())
}

/// `true` only for a JSON `true` (or the string `"true"`).
fn bool_at(value: &Value, key: &str) -> bool {
    match value.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// A present, non-null field, cloned.
fn present(value: &Value, key: &str) -> Option<Value> {
    value.get(key).filter(|v| !v.is_null()).cloned()
}

/// An integer from a JSON number or a numeric string. Fractions are
/// truncated; out-of-range floats saturate (never panics).
fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

/// Unix seconds (WhatsApp timestamps, Page `created_time`).
fn secs_at(value: &Value, key: &str) -> Option<DateTime<Utc>> {
    value
        .get(key)
        .and_then(int_of)
        .and_then(|s| DateTime::from_timestamp(s, 0))
}

/// Unix milliseconds (Messenger / Instagram timestamps and watermarks).
fn millis_at(value: &Value, key: &str) -> Option<DateTime<Utc>> {
    value
        .get(key)
        .and_then(int_of)
        .and_then(DateTime::from_timestamp_millis)
}

/// `entry[].time`, which is milliseconds on messaging entries and seconds on
/// Page `changes` entries: anything of magnitude ≥ 1e11 (year 5138 in seconds,
/// 1973 in milliseconds) is taken as milliseconds.
fn entry_time(entry: &Value) -> Option<DateTime<Utc>> {
    const MILLIS_THRESHOLD: i64 = 100_000_000_000;
    let t = entry.get("time").and_then(int_of)?;
    if t >= MILLIS_THRESHOLD || t <= -MILLIS_THRESHOLD {
        DateTime::from_timestamp_millis(t)
    } else {
        DateTime::from_timestamp(t, 0)
    }
}

/// A JSON object built from the given entries, skipping `None`s.
fn object_of<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect::<Map<String, Value>>(),
    )
}

// ---------------------------------------------------------------------------
// Deterministic synthesized ids.

/// `"synth:"` + the first 32 hex digits of the SHA-256 of a canonical string
/// made of the length-prefixed `parts` and the canonical JSON of `payload`
/// (object keys sorted, whatever the map implementation).
fn synth_id(parts: &[&str], payload: Option<&Value>) -> String {
    let mut canonical = String::new();
    for part in parts {
        canonical.push_str(&part.len().to_string());
        canonical.push(':');
        canonical.push_str(part);
        canonical.push('|');
    }
    if let Some(payload) = payload {
        canonical_json(payload, &mut canonical);
    }
    let digest = Sha256::digest(canonical.as_bytes());
    let hash = hex::encode(digest);
    format!("synth:{}", hash.get(..32).unwrap_or(&hash))
}

/// Writes `value` as compact JSON with object keys sorted.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Per-entry context.

/// What every item of one `entry[]` shares.
struct EntryCtx {
    channel: Channel,
    /// `entry[].id`, empty when missing.
    account_id: String,
    /// `entry[].time`, the fallback for missing timestamps.
    time: Option<DateTime<Utc>>,
}

impl EntryCtx {
    fn new(channel: Channel, entry: &Value) -> Self {
        EntryCtx {
            channel,
            account_id: id_at(entry, "id").unwrap_or_default(),
            time: entry_time(entry),
        }
    }

    /// `at`, else the entry time, else the Unix epoch.
    fn at(&self, at: Option<DateTime<Utc>>) -> DateTime<Utc> {
        at.or(self.time).unwrap_or_default()
    }

    /// A `kind = "unsupported"` [`PageChange`] carrying `value` verbatim, with
    /// an external id hashed from the channel, account, field and value.
    fn unsupported(&self, field: &str, value: Value, at: Option<DateTime<Utc>>) -> NormalizedItem {
        let external_id = synth_id(
            &[self.channel.as_str(), &self.account_id, field],
            Some(&value),
        );
        NormalizedItem::PageChange(PageChange {
            channel: self.channel,
            account_id: self.account_id.clone(),
            field: field.to_owned(),
            kind: "unsupported".to_owned(),
            verb: None,
            external_id,
            from: None,
            text: None,
            occurred_at: self.at(at),
            value,
            group: None,
        })
    }
}
