//! Which `incoming.raw` shard a delivery goes to (`redis.raw_shards`).
//!
//! The gateway spreads deliveries over N raw streams so that N Redis
//! Cluster slots (N masters) share the ingest load, while one conversation's
//! deliveries stay in one stream and keep their order. The shard is
//! `hash(tenant, business account, conversation key) % N`, read from the
//! first event of the body by a partial parse that skips everything else:
//!
//! - WhatsApp: the phone number id, and the group id, else the contact's
//!   phone number (`wa_id`, `from`, `recipient_id`, an echo's `to`), else
//!   their BSUID (`user_id`, `from_user_id`, `recipient_user_id`);
//! - Messenger and Instagram: the page or account id and the other party of
//!   the first messaging event (the recipient of an echo);
//! - page changes (leads, comments) and bodies that do not parse: the
//!   account only, so a malformed body still has a stable shard.
//!
//! A batch that mixes conversations goes whole to the shard of its first
//! one; what matters is that one conversation never spreads over two.
//! Pure: no I/O.

use serde::Deserialize;

use crate::envelope::RawEvent;

/// The routing key of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteKey<'a> {
    /// Business account: phone number id, page id or Instagram account id.
    pub account: &'a str,
    /// The conversation within it (empty when the body has none).
    pub conversation: &'a str,
}

#[derive(Deserialize, Default)]
struct Body<'a> {
    #[serde(borrow, default)]
    entry: Vec<Entry<'a>>,
}

#[derive(Deserialize, Default)]
struct Entry<'a> {
    #[serde(borrow, default)]
    id: Option<&'a str>,
    #[serde(borrow, default)]
    changes: Vec<Change<'a>>,
    #[serde(borrow, default)]
    messaging: Vec<Messaging<'a>>,
}

#[derive(Deserialize, Default)]
struct Change<'a> {
    #[serde(borrow, default)]
    value: Value<'a>,
}

#[derive(Deserialize, Default)]
struct Value<'a> {
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    contacts: Vec<Party<'a>>,
    #[serde(borrow, default)]
    messages: Vec<Party<'a>>,
    #[serde(borrow, default)]
    statuses: Vec<Party<'a>>,
    #[serde(borrow, default)]
    message_echoes: Vec<Party<'a>>,
}

#[derive(Deserialize, Default)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    phone_number_id: Option<&'a str>,
}

/// Every field that can name the other party of a WhatsApp conversation.
#[derive(Deserialize, Default)]
struct Party<'a> {
    #[serde(borrow, default)]
    group_id: Option<&'a str>,
    #[serde(borrow, default)]
    wa_id: Option<&'a str>,
    #[serde(borrow, default)]
    from: Option<&'a str>,
    #[serde(borrow, default)]
    recipient_id: Option<&'a str>,
    #[serde(borrow, default)]
    to: Option<&'a str>,
    #[serde(borrow, default)]
    user_id: Option<&'a str>,
    #[serde(borrow, default)]
    from_user_id: Option<&'a str>,
    #[serde(borrow, default)]
    recipient_user_id: Option<&'a str>,
}

impl<'a> Party<'a> {
    /// The phone number first (a message with both stays where the
    /// phone-only deliveries of the same person go), else the BSUID. An
    /// echo's `from` is the business itself, so its `to` comes first.
    fn person(&self, echo: bool) -> Option<&'a str> {
        let phone = if echo {
            self.to.or(self.wa_id)
        } else {
            self.wa_id.or(self.from).or(self.recipient_id).or(self.to)
        };
        phone
            .or(self.user_id)
            .or(self.from_user_id)
            .or(self.recipient_user_id)
    }
}

#[derive(Deserialize, Default)]
struct Messaging<'a> {
    #[serde(borrow, default)]
    sender: Option<Id<'a>>,
    #[serde(borrow, default)]
    recipient: Option<Id<'a>>,
}

#[derive(Deserialize, Default)]
struct Id<'a> {
    #[serde(borrow, default)]
    id: Option<&'a str>,
}

impl<'a> Value<'a> {
    fn conversation(&self) -> Option<&'a str> {
        let all = || {
            self.messages
                .iter()
                .map(|p| (p, false))
                .chain(self.message_echoes.iter().map(|p| (p, true)))
                .chain(self.statuses.iter().map(|p| (p, false)))
        };
        all()
            .find_map(|(p, _)| p.group_id)
            .or_else(|| all().find_map(|(p, echo)| p.person(echo)))
            .or_else(|| self.contacts.iter().find_map(|c| c.person(false)))
    }
}

impl<'a> Entry<'a> {
    fn route(&self) -> RouteKey<'a> {
        let account = self.id.unwrap_or_default();
        if let Some(change) = self.changes.first() {
            let v = &change.value;
            return RouteKey {
                account: v
                    .metadata
                    .as_ref()
                    .and_then(|m| m.phone_number_id)
                    .unwrap_or(account),
                conversation: v.conversation().unwrap_or_default(),
            };
        }
        let conversation = self
            .messaging
            .first()
            .and_then(|m| {
                let sender = m.sender.as_ref().and_then(|s| s.id);
                let recipient = m.recipient.as_ref().and_then(|r| r.id);
                // The other party: the recipient when the account itself
                // sent it (an echo), else the sender.
                if sender == Some(account) {
                    recipient
                } else {
                    sender.or(recipient)
                }
            })
            .unwrap_or_default();
        RouteKey {
            account,
            conversation,
        }
    }
}

/// The routing key of a webhook body (empty parts when it has none).
pub fn route_key(body: &[u8]) -> RouteKey<'_> {
    serde_json::from_slice::<Body<'_>>(body)
        .ok()
        .and_then(|b| b.entry.into_iter().next())
        .map(|e| e.route())
        .unwrap_or_default()
}

/// A stable hash of (tenant, account, conversation): CRC-32C of the three,
/// separated so that ("ab", "c") and ("a", "bc") differ. Stable across
/// versions and processes (gateways on different machines agree).
pub fn route_hash(tenant: &str, key: &RouteKey<'_>) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut digest = CRC.digest();
    digest.update(tenant.as_bytes());
    digest.update(&[0]);
    digest.update(key.account.as_bytes());
    digest.update(&[0]);
    digest.update(key.conversation.as_bytes());
    digest.finalize()
}

/// The shard (0..`shards`) of a delivery. One shard: always 0, without
/// parsing the body.
pub fn shard_of(event: &RawEvent, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let key = route_key(&event.body);
    route_hash(&event.tenant, &key) as usize % shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Source;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/meta")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn key_of(name: &str) -> (String, String) {
        let body = fixture(name);
        let k = route_key(&body);
        (k.account.to_string(), k.conversation.to_string())
    }

    #[test]
    fn whatsapp_messages_and_their_receipts_share_a_key() {
        let text = key_of("wa_text.json");
        assert_eq!(text.0, "200000000000002");
        assert!(!text.1.is_empty());
        // A delivered receipt of a message to the same person.
        let status = key_of("wa_status_delivered.json");
        assert_eq!(status.0, text.0);
        assert_eq!(status.1, "15550001111");
    }

    #[test]
    fn whatsapp_prefers_the_phone_then_the_bsuid() {
        assert_eq!(
            key_of("wa_bsuid_phone_and_user_id.json").1,
            "15550005555",
            "a message with both goes where the phone-only ones go"
        );
        assert_eq!(
            key_of("wa_bsuid_status_read.json").1,
            "US.10000000000000000055"
        );
    }

    #[test]
    fn whatsapp_groups_and_echoes() {
        assert_eq!(
            key_of("wa_group_message.json").1,
            "Y2FwaV9ncm91cDoxNTU1MDAwOTk5OToxMjAzNjMwMDAwMDAwMDAwMDE="
        );
        // The echo's conversation is the customer it was sent to.
        assert_eq!(key_of("wa_smb_echo.json").1, "15550005555");
    }

    #[test]
    fn messenger_and_instagram_use_the_other_party() {
        let echo = key_of("fb_echo.json");
        assert_eq!(echo, ("300000000000003".into(), "4000000000000004".into()));
        let inbound = key_of("fb_message_text.json");
        assert_eq!(inbound.0, "300000000000003");
        assert_eq!(inbound.1, echo.1, "inbound and echo share a conversation");
        assert_eq!(
            key_of("ig_message_text.json"),
            ("17841400000000006".into(), "6000000000000007".into())
        );
    }

    #[test]
    fn page_changes_and_garbage_route_by_account_only() {
        let lead = key_of("fb_leadgen.json");
        assert!(!lead.0.is_empty());
        assert_eq!(lead.1, "");
        assert_eq!(route_key(b"not json"), RouteKey::default());
        assert_eq!(route_key(b"{\"entry\":[]}"), RouteKey::default());
    }

    #[test]
    fn the_shard_is_stable_and_spreads() {
        let event = |body: Vec<u8>| RawEvent::new(Source::Whatsapp, "acme", body.into());
        let a = event(fixture("wa_text.json"));
        assert_eq!(shard_of(&a, 1), 0);
        assert_eq!(shard_of(&a, 3), shard_of(&a.clone(), 3));
        // Known value: a change of the hash would move conversations
        // between shards on upgrade, so it is pinned.
        let k = RouteKey {
            account: "200000000000002",
            conversation: "15550001111",
        };
        assert_eq!(route_hash("acme", &k), 2_714_287_505);
        assert_ne!(
            route_hash("acme", &k),
            route_hash(
                "acme2",
                &RouteKey {
                    account: "00000000000002",
                    ..k.clone()
                }
            )
        );
        // Many conversations spread over every shard.
        let mut seen = [0usize; 3];
        for i in 0..300 {
            let phone = format!("1555000{i:04}");
            let key = RouteKey {
                account: "200000000000002",
                conversation: &phone,
            };
            seen[route_hash("acme", &key) as usize % 3] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "uneven spread: {seen:?}");
    }
}
