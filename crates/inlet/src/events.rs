//! Write events: `{entity}.{phase}.{operation}` records of every store write.
//!
//! Phases are `before` (about to write; delivered in-process only), `after`
//! (committed; appended to the immutable `event_log` in the same transaction
//! as the data and relayed to `{prefix}events`) and `failed` (the write was
//! rolled back; logged in a transaction of its own). This module is pure: it
//! derives the events of a write plan and its results, and owns their wire
//! format on the events stream ([`outbox_row`], [`parse_event`]). The one
//! place that emits them is the store's write path ([`crate::store::sql`]).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::plan::{event_id as item_event_id, OutboxRow, WritePlan, EVENT_NAMESPACE};
use crate::streams::EVENTS;

/// Version of the event payload layout.
pub const SCHEMA_VERSION: i32 = 1;

/// A word of an event type that no [`Phase`] or [`Operation`] spells
/// (an event log row written by a newer version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event {what} {value:?}")]
pub struct UnknownWord {
    /// `phase` or `operation`.
    pub what: &'static str,
    /// The word.
    pub value: String,
}

/// Declares a closed set of wire words: the enum, its `ALL`, `as_str`,
/// `Display` and `FromStr`. Serde spells the variants the same way.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word in event types, the event log and JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;

            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(UnknownWord {
                        what: $what,
                        value: other.to_string(),
                    }),
                }
            }
        }
    };
}

words!(
    /// The phase of a write: the middle word of an event type.
    Phase, "phase", {
        /// About to write; delivered in-process only.
        Before = "before",
        /// Committed; logged and relayed.
        After = "after",
        /// Rolled back, or a send that ended in failure.
        Failed = "failed",
        /// A test delivery (`inlet subscriptions test`), never logged.
        Test = "test",
    }
);

words!(
    /// What a write did: the last word of an event type.
    Operation, "operation", {
        /// A new row.
        Create = "create",
        /// A changed row.
        Update = "update",
        /// A removed row.
        Delete = "delete",
        /// Created or changed (contacts, conversations).
        Upsert = "upsert",
        /// Switched on (subscriptions).
        Activate = "activate",
        /// Switched off (subscriptions).
        Deactivate = "deactivate",
        /// Approved by a person (drafts).
        Approve = "approve",
        /// Rejected by a person (drafts).
        Reject = "reject",
        /// The test delivery's operation (`subscription.test.ping`).
        Ping = "ping",
    }
);

/// One write event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Deterministic where the write is (the same write always yields the
    /// same id, so redeliveries do not fire twice).
    pub id: Uuid,
    /// `{entity}.{phase}.{operation}`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Entity written: contact, conversation, message, message_status,
    /// page_change, subscription, draft.
    pub entity: String,
    /// before / after / failed (see [`Phase`]).
    pub phase: Phase,
    /// create / update / delete / upsert / … (see [`Operation`]).
    pub operation: Operation,
    /// What was written (input).
    pub data: Value,
    /// What the write returned (ids), for `after`.
    pub result: Option<Value>,
    /// Why it failed, for `failed`.
    pub error: Option<String>,
    /// Who caused the write: `meta:{source}` for webhooks, `cli`, `api`.
    pub actor: String,
    /// Tenant.
    pub tenant_id: String,
    /// Trace id of the delivery behind the write.
    pub trace_id: Option<String>,
    /// Groups events of one cause (the trace id, or a replay id).
    pub correlation_id: Option<String>,
    /// When the event was produced.
    pub timestamp: DateTime<Utc>,
    /// Payload layout version.
    pub schema_version: i32,
    /// Set when an operator re-delivers logged events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
}

impl Event {
    /// A new event; the id is derived from `key` (deterministic).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        entity: &str,
        phase: Phase,
        operation: Operation,
        key: &str,
        tenant: &str,
        trace_id: Option<String>,
        actor: &str,
        data: Value,
    ) -> Self {
        let event_type = format!("{entity}.{phase}.{operation}");
        Self {
            id: Uuid::new_v5(
                &EVENT_NAMESPACE,
                format!("{event_type}/{tenant}/{key}").as_bytes(),
            ),
            event_type,
            entity: entity.into(),
            phase,
            operation,
            data,
            result: None,
            error: None,
            actor: actor.into(),
            tenant_id: tenant.into(),
            correlation_id: trace_id.clone(),
            trace_id,
            timestamp: crate::envelope::now(),
            schema_version: SCHEMA_VERSION,
            replay: None,
        }
    }

    /// Whether the event type matches a pattern: `*` matches one segment,
    /// a trailing `*` or `**` matches the rest (`message.after.*`,
    /// `*.failed.*`, `message.**`).
    pub fn matches(&self, pattern: &str) -> bool {
        type_matches(&self.event_type, pattern)
    }
}

/// Pattern match of an event type (see [`Event::matches`]).
pub fn type_matches(event_type: &str, pattern: &str) -> bool {
    let pattern = pattern.trim();
    if pattern == "*" || pattern == "**" {
        return true;
    }
    let mut parts = event_type.split('.');
    let mut segments = pattern.split('.').peekable();
    while let Some(p) = segments.next() {
        if p == "**" {
            return true;
        }
        match parts.next() {
            // A trailing `*` takes this segment and the rest (`draft.*`).
            Some(_) if p == "*" && segments.peek().is_none() => return true,
            Some(part) if p == "*" || p == part => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

/// The outbox row that relays `event` to [`EVENTS`]: its wire format on the
/// stream (`event_id`, `type`, and the event as JSON in `event`).
pub fn outbox_row(event: &Event) -> OutboxRow {
    OutboxRow {
        stream: EVENTS.to_string(),
        fields: BTreeMap::from([
            ("event_id".to_string(), event.id.to_string()),
            ("type".to_string(), event.event_type.clone()),
            (
                "event".to_string(),
                serde_json::to_string(event).unwrap_or_else(|_| "null".into()),
            ),
        ]),
    }
}

/// Parses the `event` field of an outbox entry or stream entry.
pub fn parse_event(json: &str) -> Option<Event> {
    serde_json::from_str(json).ok()
}

/// Receives events in process, fire and forget (the in-memory bus).
pub trait EventSink: Send + Sync + 'static {
    /// Hands events over; never blocks the caller.
    fn emit(&self, events: Vec<Event>);
}

/// Which events are produced, from `[events]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Master switch.
    pub enabled: bool,
    /// Entities whose events are switched off.
    pub disabled_entities: HashSet<String>,
}

impl Default for EventFilter {
    fn default() -> Self {
        Self {
            enabled: true,
            disabled_entities: HashSet::new(),
        }
    }
}

impl EventFilter {
    /// Whether events of `entity` are produced.
    pub fn allows(&self, entity: &str) -> bool {
        self.enabled && !self.disabled_entities.contains(entity)
    }
}

/// What the SQL write reported back, per kind of row.
#[derive(Debug, Clone, Default)]
pub struct WriteResults {
    /// Contact key → row id.
    pub contacts: BTreeMap<(String, String, String), i64>,
    /// Conversation (tenant, channel, business id, contact id) → row id.
    pub conversations: BTreeMap<(String, String, String, i64), i64>,
    /// Provider ids of messages newly inserted (tenant, channel, id).
    pub new_messages: HashSet<(String, String, String)>,
    /// Status keys newly inserted (tenant, key).
    pub new_statuses: HashSet<(String, String)>,
    /// Current statuses that changed: (tenant, channel, provider id) → status.
    pub current_changed: BTreeMap<(String, String, String), String>,
    /// Change keys newly inserted (tenant, key).
    pub new_changes: HashSet<(String, String)>,
}

fn actor_of(plan: &WritePlan, trace: Uuid) -> String {
    plan.raw
        .iter()
        .find(|r| r.trace_id == trace)
        .map(|r| format!("meta:{}", r.source.as_str()))
        .unwrap_or_else(|| "pipeline".into())
}

/// The `before` events of a plan (one per row about to be written).
pub fn before_events(plan: &WritePlan, filter: &EventFilter) -> Vec<Event> {
    planned(plan, filter, Phase::Before, None)
}

/// The `failed` events of a plan whose transaction was rolled back.
pub fn failed_events(plan: &WritePlan, filter: &EventFilter, error: &str) -> Vec<Event> {
    planned(plan, filter, Phase::Failed, Some(error))
}

fn planned(
    plan: &WritePlan,
    filter: &EventFilter,
    phase: Phase,
    error: Option<&str>,
) -> Vec<Event> {
    let mut out = Vec::new();
    let first_trace = plan.raw.first().map(|r| r.trace_id);
    let mut push = |entity: &str,
                    op: Operation,
                    key: String,
                    tenant: &str,
                    trace: Option<Uuid>,
                    data: Value| {
        if !filter.allows(entity) {
            return;
        }
        let actor = trace
            .map(|t| actor_of(plan, t))
            .unwrap_or_else(|| "pipeline".into());
        // Failed events of each attempt are distinct facts.
        let key = match (phase, trace) {
            (Phase::Failed, Some(t)) => format!("{key}/{t}"),
            _ => key,
        };
        let mut e = Event::new(
            entity,
            phase,
            op,
            &key,
            tenant,
            trace.map(|t| t.to_string()),
            &actor,
            data,
        );
        e.error = error.map(String::from);
        out.push(e);
    };
    for c in &plan.contacts {
        push(
            "contact",
            Operation::Upsert,
            format!(
                "{}/{}/{}",
                c.key.1.as_str(),
                c.key.2,
                c.last_seen.timestamp_millis()
            ),
            &c.key.0,
            first_trace,
            json!({"channel": c.key.1, "external_id": c.key.2, "name": c.name}),
        );
    }
    for m in &plan.messages {
        push(
            "message",
            Operation::Create,
            format!(
                "{}/{}",
                m.message.channel.as_str(),
                m.message.provider_message_id
            ),
            &m.tenant,
            Some(m.trace_id),
            message_data(&m.message),
        );
    }
    for s in plan.statuses.iter().chain(&plan.watermarks) {
        push(
            "message_status",
            Operation::Create,
            s.key.clone(),
            &s.tenant,
            Some(s.trace_id),
            status_data(&s.status),
        );
    }
    for c in &plan.changes {
        push(
            "page_change",
            Operation::Create,
            c.key.clone(),
            &c.tenant,
            Some(c.trace_id),
            change_data(&c.change),
        );
    }
    out
}

fn message_data(m: &crate::model::NormalizedMessage) -> Value {
    json!({
        "channel": m.channel,
        "provider_message_id": m.provider_message_id,
        "direction": m.direction,
        "contact": m.contact.external_id,
        "contact_display": m.contact.display(),
        "group_id": m.group_id(),
        "history": m.is_history(),
        "kind": m.kind,
        "message_type": m.message_type,
        "text": m.text,
        "media": m.media,
        "reply_to": m.reply_to,
        "sent_at": m.sent_at,
    })
}

fn status_data(s: &crate::model::StatusUpdate) -> Value {
    json!({
        "channel": s.channel,
        "provider_message_id": s.provider_message_id,
        "contact": s.contact.external_id,
        "status": s.status_name(),
        "at": s.at,
        "watermark": s.watermark,
        "errors": s.errors,
    })
}

fn change_data(c: &crate::model::PageChange) -> Value {
    json!({
        "channel": c.channel,
        "field": c.field,
        "kind": c.kind,
        "verb": c.verb,
        "external_id": c.external_id,
        "text": c.text,
        "occurred_at": c.occurred_at,
    })
}

/// The `after` events of a committed write: only rows that were really
/// created or changed fire (a redelivered message does not fire again).
pub fn after_events(plan: &WritePlan, results: &WriteResults, filter: &EventFilter) -> Vec<Event> {
    let mut out = Vec::new();
    let first_trace = plan.raw.first().map(|r| r.trace_id);
    let actor = |trace: Uuid| actor_of(plan, trace);
    if filter.allows("contact") {
        for c in &plan.contacts {
            let key = (
                c.key.0.clone(),
                c.key.1.as_str().to_string(),
                c.key.2.clone(),
            );
            let Some(id) = results.contacts.get(&key) else {
                continue;
            };
            let mut e = Event::new(
                "contact",
                Phase::After,
                Operation::Upsert,
                &format!("{}/{}/{}", key.1, key.2, c.last_seen.timestamp_millis()),
                &c.key.0,
                first_trace.map(|t| t.to_string()),
                &first_trace.map(actor).unwrap_or_default(),
                json!({"channel": key.1, "external_id": key.2, "name": c.name}),
            );
            e.result = Some(json!({"id": id}));
            out.push(e);
        }
    }
    if filter.allows("conversation") {
        for c in &plan.conversations {
            let contact_key = (
                c.key.3 .0.clone(),
                c.key.3 .1.as_str().to_string(),
                c.key.3 .2.clone(),
            );
            let Some(contact_id) = results.contacts.get(&contact_key) else {
                continue;
            };
            let key = (
                c.key.0.clone(),
                c.key.1.as_str().to_string(),
                c.key.2.clone(),
                *contact_id,
            );
            let Some(id) = results.conversations.get(&key) else {
                continue;
            };
            let mut e = Event::new(
                "conversation",
                Phase::After,
                Operation::Upsert,
                &format!("{id}/{}", c.last.timestamp_millis()),
                &c.key.0,
                first_trace.map(|t| t.to_string()),
                &first_trace.map(actor).unwrap_or_default(),
                json!({"channel": key.1, "business_id": key.2, "contact_id": contact_id, "last_message_at": c.last}),
            );
            e.result = Some(json!({"id": id}));
            out.push(e);
        }
    }
    if filter.allows("message") {
        for m in &plan.messages {
            let key = (
                m.tenant.clone(),
                m.message.channel.as_str().to_string(),
                m.message.provider_message_id.clone(),
            );
            if !results.new_messages.contains(&key) {
                continue;
            }
            let item = crate::model::NormalizedItem::Message(m.message.clone());
            let mut e = Event::new(
                "message",
                Phase::After,
                Operation::Create,
                "",
                &m.tenant,
                Some(m.trace_id.to_string()),
                &actor(m.trace_id),
                message_data(&m.message),
            );
            // Same id as the normalized-stream entry of this message.
            e.id = item_event_id(&m.tenant, &item);
            e.result = Some(json!({"provider_message_id": key.2}));
            out.push(e);
        }
    }
    if filter.allows("message_status") {
        for s in plan.statuses.iter().chain(&plan.watermarks) {
            if !results
                .new_statuses
                .contains(&(s.tenant.clone(), s.key.clone()))
            {
                continue;
            }
            out.push(Event::new(
                "message_status",
                Phase::After,
                Operation::Create,
                &s.key,
                &s.tenant,
                Some(s.trace_id.to_string()),
                &actor(s.trace_id),
                status_data(&s.status),
            ));
        }
        for ((tenant, channel, pmid), status) in &results.current_changed {
            let trace = plan
                .statuses
                .iter()
                .find(|s| s.status.provider_message_id.as_deref() == Some(pmid.as_str()))
                .map(|s| s.trace_id)
                .or(first_trace);
            let mut e = Event::new(
                "message_status",
                Phase::After,
                Operation::Update,
                &format!("{channel}/{pmid}/{status}"),
                tenant,
                trace.map(|t| t.to_string()),
                &trace.map(actor).unwrap_or_default(),
                json!({"channel": channel, "provider_message_id": pmid, "status": status}),
            );
            e.result = Some(json!({"current_status": status}));
            out.push(e);
        }
    }
    if filter.allows("page_change") {
        for c in &plan.changes {
            if !results
                .new_changes
                .contains(&(c.tenant.clone(), c.key.clone()))
            {
                continue;
            }
            out.push(Event::new(
                "page_change",
                Phase::After,
                Operation::Create,
                &c.key,
                &c.tenant,
                Some(c.trace_id.to_string()),
                &actor(c.trace_id),
                change_data(&c.change),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        assert!(type_matches("message.after.create", "message.after.*"));
        assert!(type_matches("message.after.create", "*.after.create"));
        assert!(type_matches("message.after.create", "message.**"));
        assert!(type_matches("message.after.create", "*"));
        assert!(!type_matches("message.after.create", "message.failed.*"));
        assert!(!type_matches("message.after.create", "message.after"));
        assert!(!type_matches(
            "message_status.after.create",
            "message.after.*"
        ));
        // A trailing `*` matches the rest, at least one segment.
        assert!(type_matches("draft.after.create", "draft.*"));
        assert!(type_matches("draft.after.approve", "draft.after.*"));
        assert!(!type_matches("draft", "draft.*"));
        assert!(!type_matches("drafts.after.create", "draft.*"));
        assert!(type_matches("message.failed.create", "*.failed.*"));
    }

    #[test]
    fn ids_are_deterministic() {
        let a = Event::new(
            "contact",
            Phase::After,
            Operation::Upsert,
            "k",
            "t",
            None,
            "cli",
            Value::Null,
        );
        let b = Event::new(
            "contact",
            Phase::After,
            Operation::Upsert,
            "k",
            "t",
            None,
            "cli",
            Value::Null,
        );
        assert_eq!(a.id, b.id);
        let c = Event::new(
            "contact",
            Phase::After,
            Operation::Upsert,
            "k",
            "u",
            None,
            "cli",
            Value::Null,
        );
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn words_serialize_as_they_are_spelled_in_types() {
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), json!(p.as_str()));
            assert_eq!(p.as_str().parse::<Phase>(), Ok(*p));
            assert_eq!(
                serde_json::from_value::<Phase>(json!(p.as_str())).unwrap(),
                *p
            );
        }
        for o in Operation::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), json!(o.as_str()));
            assert_eq!(o.as_str().parse::<Operation>(), Ok(*o));
            assert_eq!(
                serde_json::from_value::<Operation>(json!(o.as_str())).unwrap(),
                *o
            );
        }
        let words = |all: &[&str]| all.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Phase::ALL.iter().map(Phase::to_string).collect::<Vec<_>>(),
            words(&["before", "after", "failed", "test"])
        );
        assert_eq!(
            Operation::ALL
                .iter()
                .map(Operation::to_string)
                .collect::<Vec<_>>(),
            words(&[
                "create",
                "update",
                "delete",
                "upsert",
                "activate",
                "deactivate",
                "approve",
                "reject",
                "ping"
            ])
        );
        assert_eq!(
            "approved".parse::<Operation>(),
            Err(UnknownWord {
                what: "operation",
                value: "approved".into()
            })
        );
        assert!("After".parse::<Phase>().is_err());
    }

    #[test]
    fn the_wire_format_is_unchanged() {
        let mut e = Event::new(
            "draft",
            Phase::After,
            Operation::Approve,
            "k",
            "t",
            Some("trace".into()),
            "api",
            json!({"id": 1}),
        );
        e.timestamp = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(e.event_type, "draft.after.approve");
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(wire["type"], "draft.after.approve");
        assert_eq!(wire["entity"], "draft");
        assert_eq!(wire["phase"], "after");
        assert_eq!(wire["operation"], "approve");
        let row = outbox_row(&e);
        let back = parse_event(&row.fields["event"]).unwrap();
        assert_eq!(back, e);
        // A line written before phase and operation were enums reads back.
        let old = r#"{"id":"0190b1d4-0000-7000-8000-000000000000","type":"message.failed.create",
            "entity":"message","phase":"failed","operation":"create","data":null,"result":null,
            "error":"x","actor":"outbound","tenant_id":"t","trace_id":null,"correlation_id":null,
            "timestamp":"2026-12-07T10:00:00Z","schema_version":1}"#;
        let old = parse_event(old).unwrap();
        assert_eq!(
            (old.phase, old.operation),
            (Phase::Failed, Operation::Create)
        );
    }

    #[test]
    fn filter_switches_entities_off() {
        let mut f = EventFilter::default();
        assert!(f.allows("message"));
        f.disabled_entities.insert("contact".into());
        assert!(!f.allows("contact"));
        f.enabled = false;
        assert!(!f.allows("message"));
    }
}
