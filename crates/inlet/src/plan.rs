//! The write plan: what one batch of deliveries turns into, row by row, before
//! any SQL runs. Pure and deterministic, so the dedup and status-folding rules
//! are unit-tested here and both SQL backends execute the same plan.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::RawEvent;
use crate::model::{
    Channel, ContactRef, DeliveryStatus, GroupChange, IdentityKind, NormalizedItem,
    NormalizedMessage, PageChange, ProviderError, StatusUpdate,
};

/// Namespace of deterministic event ids (UUIDv5 of tenant + item identity).
pub const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1e_7c2d_4b0f_4e8a_9c35_2f0d_8e1b_a7c4);

/// The deterministic id of a normalized item of a tenant: the same provider
/// message/status/change always gets the same id, whichever delivery carried
/// it.
pub fn event_id(tenant: &str, item: &NormalizedItem) -> Uuid {
    Uuid::new_v5(
        &EVENT_NAMESPACE,
        format!("{tenant}/{}", item.identity()).as_bytes(),
    )
}

/// One delivery and what it normalized to.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The raw event (kept in `raw_events`).
    pub event: RawEvent,
    /// Its normalized items.
    pub items: Vec<NormalizedItem>,
}

/// Key of a contact row.
pub type ContactKey = (String, Channel, String);
/// Key of a conversation row: tenant, channel, business id, contact key.
pub type ConversationKey = (String, Channel, String, ContactKey);

/// One identifier of a contact: (kind, value).
pub type Identity = (IdentityKind, String);

/// A contact upsert: one person, with every identifier the batch links to
/// them (the store links them all to one contact row).
#[derive(Debug, Clone, PartialEq)]
pub struct ContactRow {
    /// (tenant, channel, external id): the key the batch knows the person
    /// by, and the external id a new contact row is created with.
    pub key: ContactKey,
    /// Every identifier of the person seen in the batch, sorted.
    pub identities: Vec<Identity>,
    /// Latest known WhatsApp phone number.
    pub wa_id: Option<String>,
    /// Latest known BSUID.
    pub user_id: Option<String>,
    /// Latest known parent BSUID.
    pub parent_user_id: Option<String>,
    /// Latest known username.
    pub username: Option<String>,
    /// Latest known name.
    pub name: Option<String>,
    /// Earliest activity in the batch.
    pub first_seen: DateTime<Utc>,
    /// Latest activity in the batch.
    pub last_seen: DateTime<Utc>,
    /// Whether the batch saw the person active (a live message). Without
    /// it (history imports, address-book syncs, BSUID changes, group
    /// membership, a group's own row) an existing contact keeps its
    /// first/last seen times; a new one takes the batch's.
    pub active: bool,
}

/// A conversation upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    /// Its key.
    pub key: ConversationKey,
    /// Earliest message in the batch.
    pub started: DateTime<Utc>,
    /// Latest message in the batch.
    pub last: DateTime<Utc>,
    /// A WhatsApp group conversation: the group id (its contact is the
    /// group's own row, its participants are people).
    pub group_id: Option<String>,
    /// The group's subject set by the latest change of the batch, and when.
    pub subject: Option<(String, DateTime<Utc>)>,
}

/// A participant of a group conversation: joined (a message, an add or a
/// join) or left, as of `at` (a later change wins).
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantRow {
    /// The group conversation.
    pub conversation: ConversationKey,
    /// The person.
    pub contact: ContactKey,
    /// In the group (`false`: left or removed).
    pub active: bool,
    /// When that was last known.
    pub at: DateTime<Utc>,
}

/// A message insert.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// Tenant.
    pub tenant: String,
    /// The message.
    pub message: NormalizedMessage,
    /// Conversation it belongs to.
    pub conversation: ConversationKey,
    /// Who sent it: the conversation's contact, or in a group the
    /// participant who wrote it.
    pub sender: ContactKey,
    /// Trace id of the delivery that carried it first in this batch.
    pub trace_id: Uuid,
}

/// A status history insert.
#[derive(Debug, Clone)]
pub struct StatusRow {
    /// Tenant.
    pub tenant: String,
    /// Identity of the receipt (dedup key).
    pub key: String,
    /// The receipt.
    pub status: StatusUpdate,
    /// Trace id.
    pub trace_id: Uuid,
}

/// The folded current status of one provider message id within the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentStatusRow {
    /// Tenant.
    pub tenant: String,
    /// Channel.
    pub channel: Channel,
    /// Provider message id.
    pub provider_message_id: String,
    /// Winning status.
    pub status: DeliveryStatus,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Its errors.
    pub errors: Vec<ProviderError>,
}

/// A page change insert.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    /// Tenant.
    pub tenant: String,
    /// Identity (dedup key).
    pub key: String,
    /// The change.
    pub change: PageChange,
    /// Trace id.
    pub trace_id: Uuid,
}

/// An outbox entry: published to `stream` after commit.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Stream name (without prefix).
    pub stream: String,
    /// Field map.
    pub fields: BTreeMap<String, String>,
}

/// Everything one batch writes, deduplicated and ordered by key (a stable
/// lock order, so concurrent workers do not deadlock each other).
#[derive(Debug, Clone, Default)]
pub struct WritePlan {
    /// Tenants seen.
    pub tenants: Vec<String>,
    /// Raw deliveries.
    pub raw: Vec<RawEvent>,
    /// Contact upserts.
    pub contacts: Vec<ContactRow>,
    /// Conversation upserts.
    pub conversations: Vec<ConversationRow>,
    /// Group participant upserts.
    pub participants: Vec<ParticipantRow>,
    /// Message inserts.
    pub messages: Vec<MessageRow>,
    /// Status history inserts.
    pub statuses: Vec<StatusRow>,
    /// Current-status upserts (receipts naming a message id).
    pub current: Vec<CurrentStatusRow>,
    /// Watermark receipts (no message id): applied to the conversation's
    /// outbound messages sent up to the watermark.
    pub watermarks: Vec<StatusRow>,
    /// Page change inserts.
    pub changes: Vec<ChangeRow>,
    /// Outbox entries (normalized stream).
    pub outbox: Vec<OutboxRow>,
}

impl WritePlan {
    /// The plan of items Inlet produced itself (an outbound message once
    /// Meta accepted it): contacts, conversations, messages and their
    /// events, but no raw event, since none was received.
    pub fn build_local(
        tenant: &str,
        source: crate::envelope::Source,
        trace_id: Uuid,
        items: Vec<NormalizedItem>,
    ) -> WritePlan {
        let mut event = RawEvent::new(source, tenant, bytes::Bytes::new());
        event.trace_id = trace_id;
        let mut plan = WritePlan::build(&[Delivery { event, items }]);
        plan.raw.clear();
        plan
    }

    /// Builds the plan of a batch.
    pub fn build(deliveries: &[Delivery]) -> WritePlan {
        let mut plan = WritePlan::default();
        let mut tenants = std::collections::BTreeSet::new();
        let mut acc = Rows::default();
        let mut messages: BTreeMap<(String, Channel, String), MessageRow> = BTreeMap::new();
        let mut statuses: BTreeMap<(String, String), StatusRow> = BTreeMap::new();
        let mut current: BTreeMap<(String, Channel, String), CurrentStatusRow> = BTreeMap::new();
        let mut watermarks: BTreeMap<(String, String), StatusRow> = BTreeMap::new();
        let mut changes: BTreeMap<(String, String), ChangeRow> = BTreeMap::new();
        let mut seen_raw = std::collections::HashSet::new();
        let people = People::of(deliveries);

        for delivery in deliveries {
            let ev = &delivery.event;
            let tenant = ev.tenant.clone();
            tenants.insert(tenant.clone());
            if seen_raw.insert(ev.trace_id) {
                plan.raw.push(ev.clone());
            }
            for item in &delivery.items {
                plan.outbox.push(OutboxRow {
                    stream: crate::streams::INCOMING_NORMALIZED.to_string(),
                    fields: BTreeMap::from([
                        ("event_id".into(), event_id(&tenant, item).to_string()),
                        ("trace_id".into(), ev.trace_id.to_string()),
                        ("tenant".into(), tenant.clone()),
                        ("type".into(), item.kind_name().to_string()),
                        (
                            "data".into(),
                            serde_json::to_string(item).unwrap_or_else(|_| "null".into()),
                        ),
                    ]),
                });
                match item {
                    NormalizedItem::Message(m) => {
                        let Some(person) = people.of_contact(&tenant, m.channel, &m.contact) else {
                            continue;
                        };
                        // A history import is not activity of the person.
                        let sender = acc.person(person, m.sent_at, !m.is_history());
                        let conv_key = match m.group_id() {
                            Some(group) => {
                                let group =
                                    acc.group_contact(&tenant, m.channel, group, None, m.sent_at);
                                let key = acc.conversation(
                                    (tenant.clone(), m.channel, m.business_id.clone(), group),
                                    m.group_id(),
                                    m.sent_at,
                                );
                                acc.participant(&key, &sender, true, m.sent_at);
                                key
                            }
                            None => acc.conversation(
                                (
                                    tenant.clone(),
                                    m.channel,
                                    m.business_id.clone(),
                                    sender.clone(),
                                ),
                                None,
                                m.sent_at,
                            ),
                        };
                        messages
                            .entry((tenant.clone(), m.channel, m.provider_message_id.clone()))
                            .or_insert_with(|| MessageRow {
                                tenant: tenant.clone(),
                                message: m.clone(),
                                conversation: conv_key,
                                sender,
                                trace_id: ev.trace_id,
                            });
                    }
                    NormalizedItem::Status(s) => {
                        let row = StatusRow {
                            tenant: tenant.clone(),
                            key: item.identity(),
                            status: s.clone(),
                            trace_id: ev.trace_id,
                        };
                        match &s.provider_message_id {
                            Some(pmid) => {
                                let k = (tenant.clone(), s.channel, pmid.clone());
                                // Unknown statuses are history only: they
                                // never become (nor regress) the current one.
                                let cur = current.get(&k).map(|c| (c.status, c.at));
                                if s.status.supersedes(s.at, cur) {
                                    current.insert(
                                        k,
                                        CurrentStatusRow {
                                            tenant: tenant.clone(),
                                            channel: s.channel,
                                            provider_message_id: pmid.clone(),
                                            status: s.status,
                                            at: s.at,
                                            errors: s.errors.clone(),
                                        },
                                    );
                                }
                                statuses
                                    .entry((tenant.clone(), row.key.clone()))
                                    .or_insert(row);
                            }
                            None => {
                                watermarks
                                    .entry((tenant.clone(), row.key.clone()))
                                    .or_insert(row);
                            }
                        }
                    }
                    NormalizedItem::PageChange(c) => {
                        if let Some(person) = c
                            .updated_contact()
                            .and_then(|p| people.of_contact(&tenant, c.channel, p))
                        {
                            acc.person(person, c.occurred_at, false);
                        }
                        if let Some(g) = &c.group {
                            acc.group_change(&people, &tenant, c.channel, g, c.occurred_at);
                        }
                        let key = item.identity();
                        changes
                            .entry((tenant.clone(), key.clone()))
                            .or_insert(ChangeRow {
                                tenant: tenant.clone(),
                                key,
                                change: c.clone(),
                                trace_id: ev.trace_id,
                            });
                    }
                }
            }
        }
        plan.tenants = tenants.into_iter().collect();
        plan.contacts = acc.contacts.into_values().collect();
        plan.conversations = acc.conversations.into_values().collect();
        plan.participants = acc.participants.into_values().collect();
        plan.messages = messages.into_values().collect();
        plan.statuses = statuses.into_values().collect();
        plan.current = current.into_values().collect();
        plan.watermarks = watermarks.into_values().collect();
        plan.changes = changes.into_values().collect();
        plan
    }
}

/// Contacts, conversations and group participants of a batch, folded by
/// key as items add to them.
#[derive(Default)]
struct Rows {
    contacts: BTreeMap<ContactKey, ContactRow>,
    conversations: BTreeMap<ConversationKey, ConversationRow>,
    participants: BTreeMap<(ConversationKey, ContactKey), ParticipantRow>,
}

impl Rows {
    /// The contact row of `person`, seen at `at` (`active`: a live
    /// message); returns its key.
    fn person(&mut self, person: &Person, at: DateTime<Utc>, active: bool) -> ContactKey {
        let key = person.key.clone();
        self.contact(
            key.clone(),
            person.identities.clone(),
            &person.contact,
            at,
            active,
        );
        key
    }

    fn contact(
        &mut self,
        key: ContactKey,
        identities: Vec<Identity>,
        c: &ContactRef,
        at: DateTime<Utc>,
        active: bool,
    ) {
        let row = self
            .contacts
            .entry(key.clone())
            .or_insert_with(|| ContactRow {
                key,
                identities,
                wa_id: c.wa_id.clone(),
                user_id: c.user_id.clone(),
                parent_user_id: c.parent_user_id.clone(),
                username: c.username.clone(),
                name: c.name.clone(),
                first_seen: at,
                last_seen: at,
                active,
            });
        if row.active == active {
            row.first_seen = row.first_seen.min(at);
            row.last_seen = row.last_seen.max(at);
        } else if active {
            // Live activity decides the times once there is any.
            row.first_seen = at;
            row.last_seen = at;
            row.active = true;
        }
    }

    /// The contact row standing for a WhatsApp group; returns its key.
    fn group_contact(
        &mut self,
        tenant: &str,
        channel: Channel,
        group_id: &str,
        subject: Option<&str>,
        at: DateTime<Utc>,
    ) -> ContactKey {
        let key: ContactKey = (tenant.to_owned(), channel, group_id.to_owned());
        let group = ContactRef::group(group_id.to_owned(), subject.map(str::to_owned));
        self.contact(
            key.clone(),
            vec![(IdentityKind::GroupId, group_id.to_owned())],
            &group,
            at,
            false,
        );
        if let (Some(subject), Some(row)) = (subject, self.contacts.get_mut(&key)) {
            row.name = Some(subject.to_owned());
        }
        key
    }

    /// The conversation `key` (of a group when `group_id` is given), with
    /// activity at `at`; returns its key.
    fn conversation(
        &mut self,
        key: ConversationKey,
        group_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> ConversationKey {
        let conv = self
            .conversations
            .entry(key.clone())
            .or_insert_with(|| ConversationRow {
                key: key.clone(),
                started: at,
                last: at,
                group_id: group_id.map(str::to_owned),
                subject: None,
            });
        conv.started = conv.started.min(at);
        conv.last = conv.last.max(at);
        key
    }

    fn participant(
        &mut self,
        conv: &ConversationKey,
        contact: &ContactKey,
        active: bool,
        at: DateTime<Utc>,
    ) {
        let row = self
            .participants
            .entry((conv.clone(), contact.clone()))
            .or_insert_with(|| ParticipantRow {
                conversation: conv.clone(),
                contact: contact.clone(),
                active,
                at,
            });
        if at >= row.at {
            row.active = active;
            row.at = at;
        }
    }

    /// A group webhook: the group's conversation (subject), who joined and
    /// who left.
    fn group_change(
        &mut self,
        people: &People,
        tenant: &str,
        channel: Channel,
        g: &GroupChange,
        at: DateTime<Utc>,
    ) {
        let group = self.group_contact(tenant, channel, &g.group_id, g.subject.as_deref(), at);
        let key = self.conversation(
            (tenant.to_owned(), channel, g.business_id.clone(), group),
            Some(&g.group_id),
            at,
        );
        if let Some(conv) = self.conversations.get_mut(&key) {
            if let Some(subject) = &g.subject {
                if conv.subject.as_ref().is_none_or(|(_, t)| at >= *t) {
                    conv.subject = Some((subject.clone(), at));
                }
            }
        }
        for (list, active) in [(&g.joined, true), (&g.left, false)] {
            for p in list {
                if let Some(person) = people.of_contact(tenant, channel, p) {
                    let contact = self.person(person, at, false);
                    self.participant(&key, &contact, active, at);
                }
            }
        }
    }
}

/// One person of a batch: what the batch knows of them, merged over every
/// item whose contact shares an identifier with another's.
#[derive(Debug, Clone)]
struct Person {
    key: ContactKey,
    identities: Vec<Identity>,
    contact: ContactRef,
}

/// The people of a batch: contacts of messages, of contact-updating page
/// changes and group participants, grouped by shared identifiers
/// (union-find), so a phone-only, a phone-and-BSUID and a BSUID-only
/// message of one person plan one contact.
struct People {
    /// (tenant, channel, identity) → index into `people`.
    index: BTreeMap<(String, Channel, Identity), usize>,
    people: Vec<Person>,
}

impl People {
    fn of(deliveries: &[Delivery]) -> People {
        // Union-find over the message contacts of the batch, in batch order.
        let mut refs: Vec<(String, Channel, &ContactRef)> = Vec::new();
        for d in deliveries {
            for item in &d.items {
                match item {
                    NormalizedItem::Message(m) => {
                        refs.push((d.event.tenant.clone(), m.channel, &m.contact));
                    }
                    NormalizedItem::PageChange(c) => {
                        let group = c.group.iter().flat_map(|g| g.joined.iter().chain(&g.left));
                        for p in c.updated_contact().into_iter().chain(group) {
                            refs.push((d.event.tenant.clone(), c.channel, p));
                        }
                    }
                    NormalizedItem::Status(_) => {}
                }
            }
        }
        let mut parent: Vec<usize> = (0..refs.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut first: BTreeMap<(String, Channel, Identity), usize> = BTreeMap::new();
        for (i, (tenant, channel, c)) in refs.iter().enumerate() {
            for id in c.identities() {
                match first.get(&(tenant.clone(), *channel, id.clone())) {
                    Some(&j) => {
                        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                        if a != b {
                            parent[a.max(b)] = a.min(b);
                        }
                    }
                    None => {
                        first.insert((tenant.clone(), *channel, id), i);
                    }
                }
            }
        }
        // Merge each group, later items overriding earlier ones.
        let mut merged: BTreeMap<usize, (String, Channel, ContactRef, Vec<Identity>)> =
            BTreeMap::new();
        for (i, (tenant, channel, c)) in refs.iter().enumerate() {
            let r = root(&mut parent, i);
            let entry = merged
                .entry(r)
                .or_insert_with(|| (tenant.clone(), *channel, ContactRef::default(), Vec::new()));
            let acc = &mut entry.2;
            acc.external_id.clone_from(&c.external_id);
            for (mine, theirs) in [
                (&mut acc.name, &c.name),
                (&mut acc.wa_id, &c.wa_id),
                (&mut acc.user_id, &c.user_id),
                (&mut acc.parent_user_id, &c.parent_user_id),
                (&mut acc.username, &c.username),
                (&mut acc.former_user_id, &c.former_user_id),
            ] {
                if theirs.is_some() {
                    mine.clone_from(theirs);
                }
            }
            entry.3.extend(c.identities());
        }
        let mut people = Vec::new();
        let mut by_root = BTreeMap::new();
        for (r, (tenant, channel, mut contact, mut identities)) in merged {
            identities.sort();
            identities.dedup();
            if channel == Channel::Whatsapp {
                if let Some(canonical) = contact
                    .wa_id
                    .clone()
                    .or_else(|| contact.user_id.clone())
                    .or_else(|| contact.parent_user_id.clone())
                {
                    contact.external_id = canonical;
                }
            }
            by_root.insert(r, people.len());
            people.push(Person {
                key: (tenant, channel, contact.external_id.clone()),
                identities,
                contact,
            });
        }
        let mut index = BTreeMap::new();
        for (key, i) in first {
            let r = root(&mut parent, i);
            index.insert(key, by_root[&r]);
        }
        People { index, people }
    }

    /// The person `contact` (of a message of the batch) belongs to.
    fn of_contact(&self, tenant: &str, channel: Channel, contact: &ContactRef) -> Option<&Person> {
        let id = contact.identities().into_iter().next()?;
        let i = self.index.get(&(tenant.to_owned(), channel, id))?;
        self.people.get(*i)
    }
}

/// JSON of provider errors, as stored.
pub fn errors_json(errors: &[ProviderError]) -> Value {
    serde_json::to_value(errors).unwrap_or(Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn delivery(name: &str) -> Delivery {
        let path = format!(
            "{}/../../tests/fixtures/meta/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(path).unwrap();
        let items = crate::normalize::normalize(&body).unwrap();
        Delivery {
            event: RawEvent::new(crate::envelope::Source::Whatsapp, "t", Bytes::from(body)),
            items,
        }
    }

    #[test]
    fn redelivered_items_are_planned_once() {
        let a = delivery("wa_text.json");
        let b = delivery("wa_text.json");
        let plan = WritePlan::build(&[a, b]);
        assert_eq!(plan.raw.len(), 2, "each delivery is kept");
        assert_eq!(plan.messages.len(), 1);
        assert_eq!(plan.contacts.len(), 1);
        assert_eq!(plan.conversations.len(), 1);
        assert_eq!(plan.contacts[0].name.as_deref(), Some("Ana Testerman"));
    }

    #[test]
    fn statuses_fold_forward_within_a_batch() {
        let plan = WritePlan::build(&[
            delivery("wa_status_read.json"),
            delivery("wa_status_sent.json"),
            delivery("wa_status_delivered.json"),
        ]);
        assert_eq!(plan.statuses.len(), 3, "history keeps every receipt");
        assert_eq!(plan.current.len(), 1);
        assert_eq!(plan.current[0].status, DeliveryStatus::Read);
    }

    #[test]
    fn batch_multi_plans_two_conversations_for_ana_and_bruno() {
        let plan = WritePlan::build(&[delivery("wa_batch_multi.json")]);
        assert_eq!(plan.messages.len(), 3);
        assert_eq!(plan.contacts.len(), 2);
        assert_eq!(plan.conversations.len(), 2);
        assert_eq!(plan.statuses.len(), 3);
        assert_eq!(plan.outbox.len(), 6);
    }

    #[test]
    fn phone_then_both_then_bsuid_only_plan_one_contact_and_conversation() {
        let plan = WritePlan::build(&[
            delivery("wa_bsuid_user_id_only.json"),
            delivery("wa_bsuid_phone_only.json"),
            delivery("wa_bsuid_phone_and_user_id.json"),
        ]);
        assert_eq!(plan.messages.len(), 3);
        assert_eq!(plan.contacts.len(), 1, "{:?}", plan.contacts);
        assert_eq!(plan.conversations.len(), 1);
        let c = &plan.contacts[0];
        assert_eq!(c.key.2, "15550005555", "keyed by phone whatever the order");
        assert_eq!(c.user_id.as_deref(), Some("US.10000000000000000055"));
        assert_eq!(
            c.parent_user_id.as_deref(),
            Some("US.ENT.10000000000000000056")
        );
        assert_eq!(c.username.as_deref(), Some("elif.sample"));
        assert_eq!(
            c.identities,
            vec![
                (IdentityKind::WaId, "15550005555".to_owned()),
                (IdentityKind::UserId, "US.10000000000000000055".to_owned()),
                (
                    IdentityKind::ParentUserId,
                    "US.ENT.10000000000000000056".to_owned()
                ),
            ]
        );
        assert!(plan
            .messages
            .iter()
            .all(|m| m.conversation == plan.conversations[0].key));
    }

    #[test]
    fn people_with_no_shared_identifier_stay_apart() {
        let plan = WritePlan::build(&[
            delivery("wa_bsuid_user_id_only.json"),
            delivery("wa_text.json"),
        ]);
        assert_eq!(plan.contacts.len(), 2);
        assert_eq!(plan.conversations.len(), 2);
    }

    #[test]
    fn group_messages_plan_one_group_conversation_keyed_by_the_group() {
        let plan = WritePlan::build(&[delivery("wa_group_message.json")]);
        assert_eq!(plan.messages.len(), 2);
        assert_eq!(plan.conversations.len(), 1, "one group conversation");
        let conv = &plan.conversations[0];
        let group = "Y2FwaV9ncm91cDoxNTU1MDAwOTk5OToxMjAzNjMwMDAwMDAwMDAwMDE=";
        assert_eq!(conv.group_id.as_deref(), Some(group));
        assert_eq!(conv.key.3 .2, group, "keyed by the group's own row");
        let senders: Vec<&str> = plan.messages.iter().map(|m| m.sender.2.as_str()).collect();
        assert_eq!(senders, ["15550001111", "15550002222"]);
        assert!(plan.messages.iter().all(|m| m.conversation == conv.key));
        assert_eq!(plan.participants.len(), 2, "participants = senders");
        assert!(plan.participants.iter().all(|p| p.active));
        let group_row = plan
            .contacts
            .iter()
            .find(|c| c.key.2 == group)
            .expect("group row");
        assert_eq!(
            group_row.identities,
            vec![(IdentityKind::GroupId, group.to_owned())]
        );
        assert!(!group_row.active);
    }

    #[test]
    fn group_changes_set_subject_and_participants_latest_first() {
        let plan = WritePlan::build(&[
            delivery("wa_group_settings.json"),
            delivery("wa_group_lifecycle.json"),
            delivery("wa_group_participants.json"),
            delivery("wa_group_message.json"),
        ]);
        assert_eq!(plan.conversations.len(), 1);
        let (subject, _) = plan.conversations[0].subject.clone().expect("subject");
        assert_eq!(subject, "Kettle owners & friends", "the later change wins");
        let state: Vec<(&str, bool)> = plan
            .participants
            .iter()
            .map(|p| (p.contact.2.as_str(), p.active))
            .collect();
        assert!(state.contains(&("15550001111", true)));
        assert!(
            state.contains(&("15550002222", false)),
            "Bruno left after writing"
        );
        assert!(state.contains(&("15550003333", true)), "Chidi joined");
    }

    #[test]
    fn history_and_address_book_are_not_activity() {
        let plan = WritePlan::build(&[
            delivery("wa_history.json"),
            delivery("wa_smb_app_state_sync.json"),
        ]);
        assert_eq!(plan.messages.len(), 3);
        assert!(plan.messages.iter().all(|m| m.message.is_history()));
        let gita: Vec<&ContactRow> = plan
            .contacts
            .iter()
            .filter(|c| c.key.2 == "15550006666")
            .collect();
        assert_eq!(
            gita.len(),
            1,
            "one person from history and the address book"
        );
        assert!(!gita[0].active);
        assert_eq!(gita[0].name.as_deref(), Some("Gita Example"));
        assert!(
            !plan.contacts.iter().any(|c| c.key.2 == "15550007777"),
            "a removed address-book entry creates no contact"
        );
    }

    #[test]
    fn user_id_update_links_the_old_and_new_bsuid_to_one_person() {
        let plan = WritePlan::build(&[
            delivery("wa_bsuid_user_id_only.json"),
            delivery("wa_user_id_update.json"),
        ]);
        assert_eq!(plan.contacts.len(), 1, "{:?}", plan.contacts);
        let c = &plan.contacts[0];
        assert_eq!(
            c.user_id.as_deref(),
            Some("US.10000000000000000058"),
            "moved"
        );
        assert!(c
            .identities
            .contains(&(IdentityKind::UserId, "US.10000000000000000055".to_owned())));
        assert!(c.active, "the message made it active");
    }

    #[test]
    fn unknown_statuses_are_history_only() {
        let plan = WritePlan::build(&[
            delivery("wa_status_read.json"),
            delivery("wa_status_unknown.json"),
        ]);
        assert_eq!(plan.statuses.len(), 2);
        assert_eq!(plan.current.len(), 1);
        assert_eq!(plan.current[0].status, DeliveryStatus::Read);
        let plan = WritePlan::build(&[delivery("wa_status_unknown.json")]);
        assert!(plan.current.is_empty(), "never the current status");
    }

    #[test]
    fn event_ids_are_deterministic_per_tenant() {
        let d = delivery("wa_text.json");
        let item = &d.items[0];
        assert_eq!(event_id("t", item), event_id("t", item));
        assert_ne!(event_id("t", item), event_id("u", item));
    }
}
