//! Page / Instagram `entry[].changes[]` and entries of unknown objects.
//!
//! - `leadgen` → kind `lead`, external id `leadgen_id`.
//! - `feed` → kind `value.item` (`comment`, `post`, `reaction`, …), verb
//!   `value.verb`, external id the comment or post id (for reactions and
//!   likes, `<target id>/<item>/<reactor id>`), author `value.from`, text
//!   `value.message`.
//! - anything else → kind `unsupported`, value verbatim.
//!
//! `created_time` is Unix seconds.

use serde_json::Value;

use super::{id_at, secs_at, string_at, synth_id, text_at, EntryCtx};
use crate::model::{Channel, ContactRef, NormalizedItem, PageChange};

/// One `changes[]` element of a Page or Instagram entry.
pub(super) fn page_change(ctx: &EntryCtx, change: &Value) -> NormalizedItem {
    let field = string_at(change, "field");
    match (field.as_deref(), change.get("value")) {
        (Some("leadgen"), Some(value @ Value::Object(_))) => leadgen(ctx, value),
        (Some("feed"), Some(value @ Value::Object(_))) => feed(ctx, value),
        (field, value) => {
            let field = field.unwrap_or("changes");
            let at = value.and_then(|v| secs_at(v, "created_time"));
            let value = value.cloned().unwrap_or_else(|| change.clone());
            ctx.unsupported(field, value, at)
        }
    }
}

/// A lead form submission.
fn leadgen(ctx: &EntryCtx, value: &Value) -> NormalizedItem {
    let external_id = id_at(value, "leadgen_id").unwrap_or_else(|| hashed(ctx, "leadgen", value));
    NormalizedItem::PageChange(PageChange {
        channel: ctx.channel,
        account_id: ctx.account_id.clone(),
        field: "leadgen".to_owned(),
        kind: "lead".to_owned(),
        verb: None,
        external_id,
        from: None,
        text: None,
        occurred_at: ctx.at(secs_at(value, "created_time")),
        value: value.clone(),
        group: None,
    })
}

/// A Page feed change: comment, post, reaction, like, share, …
fn feed(ctx: &EntryCtx, value: &Value) -> NormalizedItem {
    let item = text_at(value, "item");
    let from = value
        .get("from")
        .and_then(|f| Some(ContactRef::by_id(id_at(f, "id")?, text_at(f, "name"))));
    let target = id_at(value, "comment_id").or_else(|| id_at(value, "post_id"));
    let external_id = match item.as_deref() {
        // A reaction has no id of its own: target + who reacted (the verb —
        // add / edit / remove — is part of the item identity already).
        Some(kind @ ("reaction" | "like")) => match (&target, &from) {
            (Some(target), Some(from)) => format!("{target}/{kind}/{}", from.external_id),
            _ => hashed(ctx, "feed", value),
        },
        _ => target
            .or_else(|| id_at(value, "photo_id"))
            .or_else(|| id_at(value, "video_id"))
            .unwrap_or_else(|| hashed(ctx, "feed", value)),
    };
    NormalizedItem::PageChange(PageChange {
        channel: ctx.channel,
        account_id: ctx.account_id.clone(),
        field: "feed".to_owned(),
        kind: item.unwrap_or_else(|| "unsupported".to_owned()),
        verb: text_at(value, "verb"),
        external_id,
        from,
        text: text_at(value, "message"),
        occurred_at: ctx.at(secs_at(value, "created_time")),
        value: value.clone(),
        group: None,
    })
}

/// A deterministic external id for a change without one.
fn hashed(ctx: &EntryCtx, field: &str, value: &Value) -> String {
    synth_id(&[ctx.channel.as_str(), &ctx.account_id, field], Some(value))
}

/// One entry of a body whose `object` the normalizer does not know: a single
/// unsupported change on [`Channel::Messenger`] (the generic Graph API
/// channel), field `object.<object>`, carrying the whole entry.
pub(super) fn unsupported_object(object: &str, entry: &Value) -> NormalizedItem {
    let ctx = EntryCtx::new(Channel::Messenger, entry);
    ctx.unsupported(&format!("object.{object}"), entry.clone(), None)
}
